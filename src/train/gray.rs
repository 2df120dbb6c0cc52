//! One-channel nets for gray data (beyond Caffe). CaffeNet's first
//! convolution wants three channels, so gray images are usually read as
//! three equal ones; but then conv1 computes Σ_c W_c ∗ x = (Σ_c W_c) ∗ x,
//! so a net that reads one channel, with conv1's filters summed over their
//! input channels, computes the same with a third of conv1's work and of
//! the data (LMDBs, the feed).
//!
//! Training stays the same too. Each W_c receives the same gradient g, so
//! the sum moves by three times each channel's step, and the L2 decay of the
//! three adds up to the decay of the sum. Caffe's update
//! (h = μh + lr·lr_mult·(g + λ·decay_mult·W)) on the summed filters matches
//! this with lr_mult × 3 and decay_mult / 3, momentum included. Gradient
//! clipping (a norm over all gradients) is the one exception.
use crate::caffe::blob::shape_string;
use crate::caffe::proto::{BlobProto, NetParameter, ParamSpec};
use crate::error::{Error, Result};

/// The index of the Convolution layer that reads the data: the first one
/// whose bottom is the first top of a layer without bottoms.
pub fn first_conv(net: &NetParameter, context: &str) -> Result<usize> {
    let data_top = net
        .layer
        .iter()
        .find(|l| l.bottom.is_empty() && !l.top.is_empty())
        .map(|l| l.top[0].clone())
        .ok_or_else(|| Error::model(context, "has no data layer"))?;
    let reader = net
        .layer
        .iter()
        .position(|l| l.bottom.first() == Some(&data_top))
        .ok_or_else(|| Error::model(context, format!("no layer reads '{data_top}'")))?;
    let l = &net.layer[reader];
    if l.r#type() != "Convolution" {
        return Err(Error::model(
            context,
            format!(
                "'{data_top}' goes first to {} layer '{}'; a gray net needs it to feed a Convolution",
                l.r#type(),
                l.name()
            ),
        ));
    }
    if l.convolution_param.as_ref().map_or(1, |p| p.group()) != 1 {
        return Err(Error::model(
            context,
            format!("'{}' has groups; a gray net needs group 1 there", l.name()),
        ));
    }
    Ok(reader)
}

/// Rewrites a net to read one channel: ImageData layers read gray
/// (`is_color: false`), and the first convolution's weights learn with
/// lr_mult × 3 and decay_mult / 3 (see the module notes). Data layers must
/// read one-channel datums (`to-lmdb --gray`). Returns that layer's name.
pub fn gray_net(net: &mut NetParameter, context: &str) -> Result<String> {
    let i = first_conv(net, context)?;
    for l in &mut net.layer {
        if let Some(p) = l.image_data_param.as_mut() {
            p.is_color = Some(false);
        }
    }
    let conv = &mut net.layer[i];
    if conv.param.is_empty() {
        conv.param.push(ParamSpec::default());
    }
    let w = &mut conv.param[0];
    w.lr_mult = Some(w.lr_mult() * 3.0);
    w.decay_mult = Some(w.decay_mult() / 3.0);
    Ok(conv.name().to_string())
}

/// Sums layer `layer`'s filters (blob 0, out × in × kh × kw) over their
/// input channels, leaving out × 1 × kh × kw, so that the layer reads one
/// channel as the original read three equal ones. Returns the shapes
/// before and after; a layer that already reads one channel is left as it is.
pub fn gray_weights(
    weights: &mut NetParameter,
    layer: &str,
    context: &str,
) -> Result<(String, String)> {
    let with_weights: Vec<String> = weights
        .layer
        .iter()
        .filter(|l| !l.blobs.is_empty())
        .map(|l| l.name().to_string())
        .collect();
    let l = weights
        .layer
        .iter_mut()
        .find(|l| l.name() == layer)
        .ok_or_else(|| {
            Error::model(
                context,
                format!(
                    "has no layer '{layer}' (its layers with weights: {}; pick one with --layer)",
                    with_weights.join(", ")
                ),
            )
        })?;
    let blob = l
        .blobs
        .first_mut()
        .ok_or_else(|| Error::model(context, format!("layer '{layer}' has no weights")))?;
    let dims = blob.dims();
    let before = shape_string(&dims);
    let &[out, inputs, kh, kw] = dims.as_slice() else {
        return Err(Error::model(
            context,
            format!("layer '{layer}' has weights {before}; expected filters out x in x kh x kw"),
        ));
    };
    let values = blob.values();
    if [out, inputs, kh, kw].iter().any(|&d| d <= 0)
        || values.len() as i64 != out * inputs * kh * kw
    {
        return Err(Error::model(
            context,
            format!(
                "layer '{layer}' has weights {before} but {} values",
                values.len()
            ),
        ));
    }
    if inputs == 1 {
        return Ok((before.clone(), before));
    }
    let (inputs, plane) = (inputs as usize, (kh * kw) as usize);
    let summed: Vec<f32> = values
        .chunks(inputs * plane)
        .flat_map(|filter| {
            (0..plane).map(move |j| (0..inputs).map(|c| filter[c * plane + j]).sum::<f32>())
        })
        .collect();
    let shape = [out as usize, 1, kh as usize, kw as usize];
    *blob = BlobProto::with_shape(&shape, summed);
    Ok((before, shape_string(&blob.dims())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caffe::proto::{ConvolutionParameter, ImageDataParameter, LayerParameter};

    fn layer(name: &str, ty: &str, bottom: &[&str], top: &[&str]) -> LayerParameter {
        LayerParameter {
            name: Some(name.into()),
            r#type: Some(ty.into()),
            bottom: bottom.iter().map(|s| s.to_string()).collect(),
            top: top.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn filters_sum_over_their_input_channels() {
        // Two filters of 3 channels, 1x2 each.
        let values: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let mut conv = layer("conv1", "Convolution", &["data"], &["conv1"]);
        conv.blobs = vec![
            BlobProto::legacy_4d(2, 3, 1, 2, values),
            BlobProto::with_shape(&[2], vec![0.5, -0.5]),
        ];
        let mut w = NetParameter {
            layer: vec![conv],
            ..Default::default()
        };
        let (before, after) = gray_weights(&mut w, "conv1", "w").unwrap();
        assert_eq!(
            (before.as_str(), after.as_str()),
            ("2 3 1 2 (12)", "2 1 1 2 (4)")
        );
        // Filter 0: channels (0,1), (2,3), (4,5) → (6, 9); filter 1 → (24, 27).
        assert_eq!(w.layer[0].blobs[0].values(), [6.0, 9.0, 24.0, 27.0]);
        assert_eq!(w.layer[0].blobs[1].values(), [0.5, -0.5]);
        // Again: already one channel, unchanged.
        let again = gray_weights(&mut w, "conv1", "w").unwrap();
        assert_eq!(again.0, again.1);
        assert!(gray_weights(&mut w, "conv9", "w")
            .unwrap_err()
            .to_string()
            .contains("no layer 'conv9'"));
    }

    #[test]
    fn the_net_reads_gray_and_its_first_filters_learn_three_times_as_fast() {
        let mut data = layer("data", "ImageData", &[], &["data", "label"]);
        data.image_data_param = Some(ImageDataParameter::default());
        let mut conv = layer("conv1", "Convolution", &["data"], &["conv1"]);
        conv.param = vec![
            ParamSpec {
                lr_mult: Some(1.0),
                decay_mult: Some(1.0),
                ..Default::default()
            },
            ParamSpec {
                lr_mult: Some(2.0),
                decay_mult: Some(0.0),
                ..Default::default()
            },
        ];
        let mut net = NetParameter {
            layer: vec![data, conv, layer("relu1", "ReLU", &["conv1"], &["conv1"])],
            ..Default::default()
        };
        assert_eq!(gray_net(&mut net, "net").unwrap(), "conv1");
        assert_eq!(
            net.layer[0].image_data_param.as_ref().unwrap().is_color,
            Some(false)
        );
        let p = &net.layer[1].param;
        assert_eq!((p[0].lr_mult(), p[0].decay_mult()), (3.0, 1.0 / 3.0));
        assert_eq!((p[1].lr_mult(), p[1].decay_mult()), (2.0, 0.0));
        // No param specs: Caffe's defaults (1, 1) for the weights become (3, 1/3).
        net.layer[1].param.clear();
        gray_net(&mut net, "net").unwrap();
        let p = &net.layer[1].param;
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].lr_mult(), p[0].decay_mult()), (3.0, 1.0 / 3.0));
        // Grouped first convolutions and nets whose data goes elsewhere first are refused.
        net.layer[1].convolution_param = Some(ConvolutionParameter {
            group: Some(2),
            ..Default::default()
        });
        assert!(gray_net(&mut net, "net")
            .unwrap_err()
            .to_string()
            .contains("group 1"));
        net.layer.swap(1, 2);
        net.layer[1].bottom = vec!["data".into()];
        assert!(gray_net(&mut net, "net")
            .unwrap_err()
            .to_string()
            .contains("goes first to ReLU"));
    }
}
