//! Where the probe cuts the recipe's net, and the nets on either side: the
//! one that saves the features of the training images, and the probe's own.
use crate::caffe::proto::{
    data_parameter::Db, DataParameter, LayerParameter, NetParameter, NetState, Phase,
};
use crate::error::{Error, Result};
use crate::train::net::included;
use std::path::Path;

/// Where the probe cuts the recipe's net.
#[derive(Debug, PartialEq)]
pub(super) struct Cut {
    /// The classifier layer's index in the definition.
    pub(super) classifier: usize,
    /// The blob it reads.
    pub(super) feature: String,
    /// The label blob.
    pub(super) label: String,
    /// The TRAIN and TEST data layers' indices.
    pub(super) train_data: usize,
    pub(super) test_data: usize,
}

/// Finds the classifier (the InnerProduct or Convolution layer whose output
/// the TRAIN net's loss reads), the blob it reads, the labels and the data
/// layers.
/// `states` are the TRAIN and TEST nets' states.
pub(super) fn cut(def: &NetParameter, net: &Path, states: [&NetState; 2]) -> Result<Cut> {
    let ctx = net.display().to_string();
    let in_phase =
        |l: &LayerParameter, p: Phase| included(l, states[usize::from(p == Phase::Test)]);
    let data = |p: Phase| {
        let found: Vec<usize> = def
            .layer
            .iter()
            .enumerate()
            .filter(|(_, l)| matches!(l.r#type(), "Data" | "ImageData") && in_phase(l, p))
            .map(|(i, _)| i)
            .collect();
        match found[..] {
            [i] if def.layer[i].top.len() == 2 => Ok(i),
            _ => Err(Error::model(
                &ctx,
                format!(
                    "the probe needs one Data or ImageData layer with a label top in the {} phase (found {}{})",
                    if p == Phase::Train { "TRAIN" } else { "TEST" },
                    found.len(),
                    if found.is_empty() && def.layer.iter().any(|l| l.include.iter().any(|r| !r.stage.is_empty() || r.min_level.is_some() || r.max_level.is_some())) {
                        "; the net's rules ask for stages or levels: give --stage/--level, or the solver's train_state/test_state"
                    } else {
                        ""
                    }
                ),
            )),
        }
    };
    let (train_data, test_data) = (data(Phase::Train)?, data(Phase::Test)?);
    if train_data == test_data {
        return Err(Error::model(
            &ctx,
            "the probe needs separate TRAIN and TEST data layers (an `include { phase: … }` on each)",
        ));
    }
    // The main head (GoogLeNet's auxiliary classifiers are not the model).
    let trained = def
        .layer
        .iter()
        .filter(|l| in_phase(l, Phase::Train) && l.bottom.len() >= 2);
    let loss = crate::train::heads::main_loss(trained)
        .and_then(|m| def.layer.iter().position(|l| std::ptr::eq(l, m)))
        .ok_or_else(|| {
            Error::model(
                &ctx,
                "has no SoftmaxWithLoss or InfogainLoss layer for the classifier to learn from",
            )
        })?;
    let scores = &def.layer[loss].bottom[0];
    let label = def.layer[loss].bottom[1].clone();
    let classifier = crate::train::heads::classifier_of(&def.layer, scores, loss, |l| {
        in_phase(l, Phase::Train)
    })
    .ok_or_else(|| {
            Error::model(
                &ctx,
                format!("the loss reads '{scores}', which no InnerProduct or Convolution layer makes; the probe trains that classifier"),
            )
        })?;
    if def.layer[train_data].top[1] != label {
        return Err(Error::model(
            &ctx,
            format!(
                "the loss reads labels from '{label}', not from the data layer's '{}'",
                def.layer[train_data].top[1]
            ),
        ));
    }
    Ok(Cut {
        classifier,
        feature: def.layer[classifier].bottom[0].clone(),
        label,
        train_data,
        test_data,
    })
}

/// `def` with its TEST data layer reading the TRAIN layer's images (list or
/// LMDB, resize and batch size) but keeping its own transform, in order.
pub(super) fn reading_training_data(def: &NetParameter, cut: &Cut) -> NetParameter {
    let mut def = def.clone();
    let train = def.layer[cut.train_data].clone();
    let test = &mut def.layer[cut.test_data];
    test.r#type = train.r#type.clone();
    test.data_param = train.data_param.map(|mut p| {
        p.rand_skip = None;
        p
    });
    test.image_data_param = train.image_data_param.map(|mut p| {
        p.shuffle = Some(false);
        p.rand_skip = None;
        p
    });
    def
}

/// A data layer's batch size.
pub(super) fn batch_size(l: &LayerParameter) -> u32 {
    match l.r#type() {
        "Data" => l.data_param.as_ref().map_or(0, |p| p.batch_size()),
        _ => l.image_data_param.as_ref().map_or(0, |p| p.batch_size()),
    }
}

/// The probe's net: Data layers reading the feature LMDBs (tops: the
/// feature and label blobs, the recipe's batch sizes), then the classifier
/// and every later layer that reads only what the probe has.
pub(super) fn probe_net_def(
    def: &NetParameter,
    cut: &Cut,
    train_db: &Path,
    test_db: &Path,
    net: &Path,
) -> Result<NetParameter> {
    let data_layer = |i: usize, db: &Path| {
        let orig = &def.layer[i];
        LayerParameter {
            name: orig.name.clone(),
            r#type: Some("Data".into()),
            top: vec![cut.feature.clone(), cut.label.clone()],
            include: orig.include.clone(),
            data_param: Some(DataParameter {
                source: Some(db.to_string_lossy().into_owned()),
                batch_size: Some(batch_size(orig)),
                backend: Some(Db::Lmdb as i32),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    let mut layers = vec![
        data_layer(cut.train_data, train_db),
        data_layer(cut.test_data, test_db),
    ];
    let mut have = vec![cut.feature.clone(), cut.label.clone()];
    for l in &def.layer[cut.classifier..] {
        if matches!(l.r#type(), "Data" | "ImageData") {
            continue;
        }
        if let Some(b) = l.bottom.iter().find(|b| !have.contains(b)) {
            // The scores' consumers are what the probe needs; a layer that
            // also reads earlier blobs cannot run on features alone.
            if l.bottom.iter().any(|b| have.contains(b) && *b != cut.label) {
                return Err(Error::model(
                    net.display(),
                    format!(
                        "layer '{}' after the classifier also reads '{b}', which the saved features do not hold",
                        l.name()
                    ),
                ));
            }
            continue;
        }
        have.extend(l.top.iter().cloned());
        layers.push(l.clone());
    }
    Ok(NetParameter {
        name: Some(format!("{}_probe", def.name())),
        layer: layers,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caffe::prototxt;

    /// The cut with each phase's own state (no solver states).
    fn cut_plain(def: &NetParameter) -> Result<Cut> {
        let state = |p| crate::caffe::net_state::state_of(def, p, None);
        cut(
            def,
            Path::new("n"),
            [&state(Phase::Train), &state(Phase::Test)],
        )
    }

    fn parse(text: &str) -> NetParameter {
        prototxt::parse(text, Path::new("net.prototxt")).unwrap()
    }

    const NET: &str = r#"
name: "n"
layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TRAIN }
  image_data_param { source: "train.txt" batch_size: 5 shuffle: true new_height: 8 new_width: 8 }
  transform_param { mirror: true crop_size: 6 } }
layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TEST }
  image_data_param { source: "test.txt" batch_size: 3 new_height: 8 new_width: 8 }
  transform_param { crop_size: 6 } }
layer { name: "fc7" type: "InnerProduct" bottom: "data" top: "fc7" inner_product_param { num_output: 4 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
  param { lr_mult: 10 } inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc8" bottom: "label" top: "accuracy" include { phase: TEST } }
"#;

    #[test]
    fn the_cut_is_at_the_classifier_that_feeds_the_loss() {
        let def = parse(NET);
        let c = cut_plain(&def).unwrap();
        assert_eq!(
            c,
            Cut {
                classifier: 4,
                feature: "fc7".into(),
                label: "label".into(),
                train_data: 0,
                test_data: 1
            }
        );
        let p = probe_net_def(&def, &c, Path::new("/t"), Path::new("/s"), Path::new("n")).unwrap();
        let names: Vec<&str> = p.layer.iter().map(|l| l.name()).collect();
        assert_eq!(names, ["data", "data", "fc8", "loss", "accuracy"]);
        assert_eq!(p.layer[0].top, ["fc7", "label"]);
        assert_eq!(p.layer[1].data_param.as_ref().unwrap().batch_size(), 3);
        assert_eq!(p.layer[1].data_param.as_ref().unwrap().source(), "/s");
        assert_eq!(p.layer[2].param[0].lr_mult(), 10.0);
        // Feature extraction of the training images: the TEST layer reads
        // the TRAIN list in order, with its own (centred) transform.
        let t = reading_training_data(&def, &c);
        let l = &t.layer[1];
        let ip = l.image_data_param.as_ref().unwrap();
        assert_eq!(
            (ip.source(), ip.shuffle(), ip.batch_size()),
            ("train.txt", false, 5)
        );
        assert!(!l.transform_param.as_ref().unwrap().mirror());
    }

    #[test]
    fn a_net_with_auxiliary_heads_is_cut_at_its_main_classifier() {
        let heads = crate::train::heads::tests::TWO_HEADS;
        let layers = NET.find("layer { name: \"fc7\"").unwrap();
        let text = format!(
            "{}{}{heads}",
            &NET[..layers],
            r#"layer { name: "c1" type: "InnerProduct" bottom: "data" top: "mid" inner_product_param { num_output: 4 } }
layer { name: "c2" type: "InnerProduct" bottom: "mid" top: "deep" inner_product_param { num_output: 4 } }
"#
        );
        let def = parse(&text);
        let c = cut_plain(&def).unwrap();
        assert_eq!(def.layer[c.classifier].name(), "classifier");
        assert_eq!(c.feature, "deep");
        let p = probe_net_def(&def, &c, Path::new("/t"), Path::new("/s"), Path::new("n")).unwrap();
        let names: Vec<&str> = p.layer.iter().map(|l| l.name()).collect();
        assert_eq!(
            names,
            ["data", "data", "classifier", "loss", "top-1", "top-5"]
        );
    }

    #[test]
    fn nets_the_probe_cannot_cut_are_named() {
        let no_ip = NET.replace(
            r#"layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
  param { lr_mult: 10 } inner_product_param { num_output: 2 } }"#,
            r#"layer { name: "fc8" type: "Sigmoid" bottom: "fc7" top: "fc8" }"#,
        );
        let e = cut_plain(&parse(&no_ip)).unwrap_err().to_string();
        assert!(
            e.contains("no InnerProduct or Convolution layer makes"),
            "{e}"
        );
        let shared = NET.replace("include { phase: TRAIN }", "").replace(
            r#"layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TEST }"#,
            r#"layer { name: "other" type: "ImageData" top: "x" top: "y" include { phase: TEST }"#,
        );
        let e = cut_plain(&parse(&shared)).unwrap_err().to_string();
        assert!(e.contains("TEST phase"), "{e}");
        let no_loss = NET.replace("SoftmaxWithLoss", "Softmax");
        let e = cut_plain(&parse(&no_loss)).unwrap_err().to_string();
        assert!(e.contains("no SoftmaxWithLoss"), "{e}");
        // A layer after the classifier that reads an earlier blob.
        let side = NET.replace(
            r#"bottom: "fc8" bottom: "label" top: "accuracy""#,
            r#"bottom: "fc8" bottom: "data" top: "accuracy""#,
        );
        let def = parse(&side);
        let c = cut_plain(&def).unwrap();
        let e = probe_net_def(&def, &c, Path::new("/t"), Path::new("/s"), Path::new("n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'accuracy'") && e.contains("'data'"), "{e}");
    }
}
