//! `deploy`: the deploy definition of a trained net, as Caffe's model zoo
//! ships beside a caffemodel (e.g. finetune_flickr_style/deploy.prototxt):
//! the TEST phase's layers with the data layer replaced by an Input layer,
//! the layers that read labels left out (and those only other heads need),
//! and a Softmax `prob` on the main classifier. Caffe, pycaffe and OpenCV's dnn module load a caffemodel with
//! it; what the data layer did to images (resize, crop, mean, scale) goes
//! into a comment at the top, since a deploy net does not carry it.
use crate::caffe::proto::{BlobShape, InputParameter, LayerParameter, NetParameter, Phase};
use crate::error::{Error, Result};
use crate::train::heads::main_loss;
use std::collections::HashMap;
use std::path::Path;

/// Layer types that read labels and so have no place in a deploy net.
const LABEL_LAYERS: &[&str] = &["Accuracy", "SoftmaxWithLoss", "InfogainLoss"];

/// The deploy net of `def` (read from `path`; its relative mean file
/// resolves against `base_dir`), with `batch` images per forward pass;
/// returns it and the comment describing its input.
pub fn deploy_net(
    def: &NetParameter,
    batch: usize,
    path: &Path,
    base_dir: &Path,
) -> Result<(NetParameter, String)> {
    let layers: Vec<&LayerParameter> =
        crate::caffe::net_state::layers_in(def, Phase::Test).collect();
    let data: Vec<&LayerParameter> = layers
        .iter()
        .copied()
        .filter(|l| matches!(l.r#type(), "Data" | "ImageData" | "WindowData" | "HDF5Data"))
        .collect();
    let [data] = data[..] else {
        return Err(Error::model(
            path.display(),
            format!(
                "a deploy net is made from one Data, ImageData, WindowData or HDF5Data layer in the TEST phase (found {})",
                data.len()
            ),
        ));
    };
    let (image_top, label_top) = (data.top.first(), data.top.get(1));
    let Some(image_top) = image_top else {
        return Err(Error::model(
            format!("layer '{}'", data.name()),
            "has no top",
        ));
    };
    let (dims, inputs) = match data.r#type() {
        "HDF5Data" => hdf5_input(data, image_top, base_dir, batch)?,
        "WindowData" => window_input(data, batch),
        _ => image_input(data, base_dir, batch)?,
    };
    let mut out = NetParameter {
        name: def.name.clone(),
        ..Default::default()
    };
    out.layer.push(LayerParameter {
        name: data.name.clone(),
        r#type: Some("Input".into()),
        top: vec![image_top.clone()],
        input_param: Some(InputParameter {
            shape: vec![BlobShape { dim: dims }],
        }),
        ..Default::default()
    });
    let Some(scores) = main_loss(layers.iter().copied()).and_then(|l| l.bottom.first().cloned())
    else {
        return Err(Error::model(
            path.display(),
            "has no SoftmaxWithLoss or InfogainLoss layer to say which blob holds the class scores",
        ));
    };
    // A Filter (training a head on the images that have its label, say)
    // has no place where every image is scored: the layers after it read
    // the blobs it filtered, whole.
    let mut unfiltered: HashMap<String, String> = HashMap::new();
    let mut filters = Vec::new();
    for l in &layers {
        if std::ptr::eq(*l, data) {
            continue;
        }
        let mut l = (*l).clone();
        for b in l.bottom.iter_mut().chain(l.top.iter_mut()) {
            if let Some(whole) = unfiltered.get(b) {
                *b = whole.clone();
            }
        }
        if l.r#type() == "Filter" {
            for (t, b) in l.top.iter().zip(&l.bottom) {
                unfiltered.insert(t.clone(), b.clone());
            }
            filters.push(l.name().to_string());
            continue;
        }
        let reads_labels = label_top.is_some_and(|t| l.bottom.contains(t));
        if LABEL_LAYERS.contains(&l.r#type()) || reads_labels {
            continue;
        }
        l.include.clear();
        l.exclude.clear();
        out.layer.push(l);
    }
    let scores = unfiltered.get(&scores).cloned().unwrap_or(scores);
    // Only what the main head's scores depend on: GoogLeNet's auxiliary
    // heads, say, have no place in a deploy net.
    let mut needed = std::collections::HashSet::from([scores.clone()]);
    let mut keep = vec![false; out.layer.len()];
    for (i, l) in out.layer.iter().enumerate().rev() {
        if l.top.iter().any(|t| needed.contains(t)) {
            keep[i] = true;
            needed.extend(l.bottom.iter().cloned());
        }
    }
    let mut keep = keep.into_iter();
    out.layer.retain(|_| keep.next().unwrap_or(false));
    out.layer.push(LayerParameter {
        name: Some("prob".into()),
        r#type: Some("Softmax".into()),
        bottom: vec![scores],
        top: vec!["prob".into()],
        ..Default::default()
    });
    let mut comment = format!(
        "# Deploy net of {} (written by flickr-style deploy).\n# Inputs: {inputs}\n",
        path.display()
    );
    let ours: Vec<&str> = out
        .layer
        .iter()
        .filter(|l| matches!(l.r#type(), "CyclicSlice" | "CyclicPool"))
        .map(|l| l.name())
        .collect();
    if !filters.is_empty() {
        comment += &format!(
            "# Filter layer(s) {} left out: every input image is scored.\n",
            filters.join(", ")
        );
    }
    if !ours.is_empty() {
        comment += &format!(
            "# Layers {} are flickr-style's own (cyclic pooling): Caffe and OpenCV cannot run this net; flickr-style classify can.\n",
            ours.join(", ")
        );
    }
    Ok((out, comment))
}

/// The Input shape and the description of a WindowData layer's inputs.
fn window_input(data: &LayerParameter, batch: usize) -> (Vec<i64>, String) {
    let tp = data.transform_param.clone().unwrap_or_default();
    let wp = data.window_data_param.clone().unwrap_or_default();
    let crop = tp.crop_size();
    let mut inputs = format!(
        "3x{crop}x{crop} image windows, made as the TEST data layer made them: warped to {crop}x{crop}"
    );
    if wp.crop_mode() == "square" {
        inputs += " as their tightest squares";
    }
    if wp.context_pad() > 0 {
        inputs += &format!(" with {} pixels of context around them", wp.context_pad());
    }
    inputs += ",";
    inputs += &mean_and_scale(&tp, wp.scale());
    (vec![batch as i64, 3, crop as i64, crop as i64], inputs)
}

/// How the pixels became values: " minus the mean …, times s; …".
fn mean_and_scale(tp: &crate::caffe::proto::TransformationParameter, scale: f32) -> String {
    let mut out = match (&tp.mean_file, tp.mean_value.is_empty()) {
        (Some(f), _) => format!(" minus the mean image {f},"),
        (None, false) => format!(" minus the channel means {:?},", tp.mean_value),
        (None, true) => String::new(),
    };
    out += &format!(" times {scale}; BGR channel order, 0-255.");
    out
}

/// The Input shape and the description of an image data layer's inputs:
/// its TEST transform's crop, else its resize or the mean image's size.
fn image_input(data: &LayerParameter, base_dir: &Path, batch: usize) -> Result<(Vec<i64>, String)> {
    let tp = data.transform_param.clone().unwrap_or_default();
    let (resize, channels) = match &data.image_data_param {
        Some(p) if data.r#type() == "ImageData" => (
            (p.new_height() > 0).then(|| (p.new_height() as usize, p.new_width() as usize)),
            if p.is_color() { 3 } else { 1 },
        ),
        _ => (None, 3),
    };
    // The mean image's (channels, height, width): the datums' shape, which
    // a Data layer does not state otherwise.
    let mean = || -> Result<Option<(usize, usize, usize)>> {
        let Some(f) = &tp.mean_file else {
            return Ok(None);
        };
        // Path::join keeps an absolute path as it is.
        let m = crate::caffe::mean_file::MeanImage::read_binaryproto(&base_dir.join(f))?;
        Ok(Some((m.channels, m.height, m.width)))
    };
    // A Data layer's images had the datums' size: the mean image's.
    // (Unreadable, it is only needed below when nothing else gives a size.)
    let (channels, resize) = match data.r#type() {
        "Data" => match mean() {
            Ok(Some((c, h, w))) => (c, Some((h, w))),
            _ => (channels, resize),
        },
        _ => (channels, resize),
    };
    // The input side: the crop, else the resized (or the mean's) size.
    let side = match (tp.crop_size(), resize) {
        (c, _) if c > 0 => (c as usize, c as usize),
        (_, Some(s)) => s,
        _ => match mean()? {
            Some((_, h, w)) => (h, w),
            None => {
                return Err(Error::model(
                    format!("layer '{}'", data.name()),
                    "neither crops nor resizes, so the input size of the deploy net is unknown",
                ))
            }
        },
    };
    let mut inputs = format!(
        "{channels}x{}x{} images, made as the TEST data layer made them:",
        side.0, side.1
    );
    if let Some((h, w)) = resize {
        inputs += &format!(" resized to {h}x{w},");
    }
    if tp.crop_size() > 0 {
        inputs += &format!(" centre crop {},", tp.crop_size());
    }
    inputs += &mean_and_scale(&tp, tp.scale());
    Ok((
        vec![batch as i64, channels as i64, side.0 as i64, side.1 as i64],
        inputs,
    ))
}

/// The Input shape and description of an HDF5Data layer's inputs: rows of
/// the dataset its first top reads, in the first file its list names.
fn hdf5_input(
    data: &LayerParameter,
    top: &str,
    base_dir: &Path,
    batch: usize,
) -> Result<(Vec<i64>, String)> {
    let source = data
        .hdf5_data_param
        .as_ref()
        .map(|p| p.source().to_string())
        .unwrap_or_default();
    let row = crate::train::layers::hdf5_row_shape(&base_dir.join(&source), base_dir, top)?;
    let mut dims = vec![batch as i64];
    dims.extend(row.iter().map(|&d| d as i64));
    let shown: Vec<String> = row.iter().map(usize::to_string).collect();
    Ok((
        dims,
        format!(
            "rows of the dataset '{top}' ({}) as the TEST HDF5Data layer read them from the files {source} lists, untransformed.",
            shown.join("x")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_main_head_is_deployed_and_auxiliary_heads_are_left_out() {
        let text = format!(
            r#"layer {{ name: "data" type: "ImageData" top: "data" top: "label" include {{ phase: TEST }}
  image_data_param {{ source: "t.txt" batch_size: 2 new_height: 8 new_width: 8 }} transform_param {{ crop_size: 6 }} }}
layer {{ name: "c1" type: "Convolution" bottom: "data" top: "mid" convolution_param {{ num_output: 2 kernel_size: 3 }} }}
layer {{ name: "aux/relu" type: "ReLU" bottom: "mid" top: "aux/mid" }}
layer {{ name: "c2" type: "Convolution" bottom: "mid" top: "deep" convolution_param {{ num_output: 2 kernel_size: 3 }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "deep" top: "deep" }}
{}"#,
            crate::train::heads::tests::TWO_HEADS.replace("bottom: \"mid\"", "bottom: \"aux/mid\"")
        );
        let def: NetParameter = crate::caffe::prototxt::parse(&text, Path::new("n")).unwrap();
        let (net, _) = deploy_net(&def, 1, Path::new("n"), Path::new(".")).unwrap();
        let names: Vec<&str> = net.layer.iter().map(|l| l.name()).collect();
        assert_eq!(names, ["data", "c1", "c2", "relu2", "classifier", "prob"]);
        assert_eq!(net.layer[5].bottom, ["classifier"]);
    }

    /// A head trained behind a Filter scores every image when deployed: the
    /// Filter is left out and the layers after it (an in-place one too)
    /// read the blob it filtered.
    #[test]
    fn filters_are_left_out_and_their_blobs_read_whole() {
        let net = |filtered: bool| {
            let (select, fc, relu, loss) = if filtered {
                (
                    r#"layer { name: "select" type: "Filter" bottom: "feat" bottom: "label" bottom: "label" top: "featf" top: "labelf" }"#,
                    "featf",
                    "featf",
                    "labelf",
                )
            } else {
                ("", "feat", "feat", "label")
            };
            format!(
                r#"layer {{ name: "data" type: "ImageData" top: "data" top: "label" include {{ phase: TEST }}
  image_data_param {{ source: "t.txt" batch_size: 2 new_height: 8 new_width: 8 }} }}
layer {{ name: "feat" type: "InnerProduct" bottom: "data" top: "feat" inner_product_param {{ num_output: 4 }} }}
{select}
layer {{ name: "relu" type: "ReLU" bottom: "{relu}" top: "{relu}" }}
layer {{ name: "fc" type: "InnerProduct" bottom: "{fc}" top: "fc" inner_product_param {{ num_output: 3 }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "{loss}" top: "loss" propagate_down: true propagate_down: false }}
"#
            )
        };
        let deploy = |text: &str| {
            let def: NetParameter = crate::caffe::prototxt::parse(text, Path::new("n")).unwrap();
            deploy_net(&def, 1, Path::new("n"), Path::new(".")).unwrap()
        };
        let (want, _) = deploy(&net(false));
        let (got, comment) = deploy(&net(true));
        assert_eq!(got, want);
        assert!(
            comment.contains("Filter layer(s) select left out"),
            "{comment}"
        );
    }
}
