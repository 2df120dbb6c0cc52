//! Which classifier speaks for a net with several heads. GoogLeNet trains
//! two auxiliary classifiers beside its main one, their losses weighted 0.3
//! against its 1: reports, predictions, the deploy net and the linear probe
//! all mean the main head, the loss layer with the largest weight (the last
//! one on a tie, as the main head comes last in such nets).
use crate::caffe::proto::LayerParameter;

/// The layer types that score a classifier's output against labels.
const LOSSES: &[&str] = &["SoftmaxWithLoss", "InfogainLoss"];

/// A loss layer's weight on its first top (1 unless the net says).
fn weight(l: &LayerParameter) -> f32 {
    l.loss_weight.first().copied().unwrap_or(1.0)
}

/// Whether a layer can be a net's classifier: an InnerProduct, or a
/// Convolution (MobileNet's and SqueezeNet's 1x1 classifiers on a pooled map).
pub fn is_classifier(l: &LayerParameter) -> bool {
    matches!(l.r#type(), "InnerProduct" | "Convolution") && l.bottom.len() == 1
}

/// Layers a classifier's scores may pass through on their way to the loss
/// (SqueezeNet rectifies and globally pools its 1x1 classifier's map).
const PASS_THROUGH: &[&str] = &["ReLU", "Pooling", "Dropout", "Flatten", "Reshape"];

/// The index of the classifier behind blob `scores` as read by layer
/// `reader` of `layers`: the latest layer before it that makes the blob, or,
/// when that only passes the scores on (ReLU, Pooling, Dropout, Flatten,
/// Reshape), the classifier behind its bottom. `keep` filters the layers
/// considered (a phase).
pub fn classifier_of(
    layers: &[LayerParameter],
    scores: &str,
    reader: usize,
    keep: impl Fn(&LayerParameter) -> bool,
) -> Option<usize> {
    let (mut blob, mut before) = (scores.to_string(), reader);
    loop {
        let i = (0..before)
            .rev()
            .find(|&i| keep(&layers[i]) && layers[i].top.contains(&blob))?;
        let l = &layers[i];
        if is_classifier(l) {
            return Some(i);
        }
        if !(PASS_THROUGH.contains(&l.r#type()) && l.bottom.len() == 1) {
            return None;
        }
        blob = l.bottom[0].clone();
        before = i;
    }
}

/// A classifier's class count (its `num_output`), if it sets one.
pub fn class_count(l: &LayerParameter) -> Option<u32> {
    match l.r#type() {
        "InnerProduct" => l.inner_product_param.as_ref().map(|p| p.num_output()),
        "Convolution" => l.convolution_param.as_ref().map(|p| p.num_output()),
        _ => None,
    }
}

/// Sets a classifier's class count (its `num_output`).
pub fn set_class_count(l: &mut LayerParameter, classes: u32) {
    match l.r#type() {
        "Convolution" => {
            l.convolution_param
                .get_or_insert_with(Default::default)
                .num_output = Some(classes)
        }
        _ => {
            l.inner_product_param
                .get_or_insert_with(Default::default)
                .num_output = Some(classes)
        }
    }
}

/// The main head's loss layer among `layers`, if any has one.
pub fn main_loss<'a>(
    layers: impl IntoIterator<Item = &'a LayerParameter>,
) -> Option<&'a LayerParameter> {
    let mut best: Option<&LayerParameter> = None;
    for l in layers {
        if LOSSES.contains(&l.r#type())
            && !l.bottom.is_empty()
            && best.is_none_or(|b| weight(l) >= weight(b))
        {
            best = Some(l);
        }
    }
    best
}

/// The layer that says where a net's class scores and labels are: the
/// Accuracy layer reading the main head's scores (the first such, top-1
/// before top-5), else the main loss layer itself; in a net without a loss
/// layer, its first Accuracy layer.
pub fn scoring_layer<'a>(layers: &'a [&'a LayerParameter]) -> Option<&'a LayerParameter> {
    let accuracy = |reads: Option<&String>| {
        layers.iter().copied().find(|l| {
            l.r#type() == "Accuracy"
                && l.bottom.len() >= 2
                && reads.is_none_or(|s| &l.bottom[0] == s)
        })
    };
    match main_loss(layers.iter().copied()) {
        Some(loss) => accuracy(loss.bottom.first()).or(Some(loss)),
        None => accuracy(None),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::caffe::proto::NetParameter;

    /// A GoogLeNet-shaped net: an auxiliary head (loss weight 0.3) before
    /// the main one, each with top-1 and top-5 Accuracy layers.
    pub(crate) const TWO_HEADS: &str = r#"
layer { name: "aux/classifier" type: "InnerProduct" bottom: "mid" top: "aux/classifier" }
layer { name: "aux/loss" type: "SoftmaxWithLoss" bottom: "aux/classifier" bottom: "label" top: "aux/loss" loss_weight: 0.3 }
layer { name: "aux/top-1" type: "Accuracy" bottom: "aux/classifier" bottom: "label" top: "aux/top-1" }
layer { name: "classifier" type: "InnerProduct" bottom: "deep" top: "classifier" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "classifier" bottom: "label" top: "loss" loss_weight: 1 }
layer { name: "top-1" type: "Accuracy" bottom: "classifier" bottom: "label" top: "top-1" }
layer { name: "top-5" type: "Accuracy" bottom: "classifier" bottom: "label" top: "top-5" accuracy_param { top_k: 5 } }
"#;

    fn net(text: &str) -> NetParameter {
        crate::caffe::prototxt::parse(text, std::path::Path::new("n")).unwrap()
    }

    #[test]
    fn the_heaviest_loss_is_the_main_head() {
        let n = net(TWO_HEADS);
        assert_eq!(main_loss(&n.layer).unwrap().name(), "loss");
        let refs: Vec<&LayerParameter> = n.layer.iter().collect();
        assert_eq!(scoring_layer(&refs).unwrap().name(), "top-1");
        // Equal weights: the last loss; no Accuracy on it: the loss itself.
        let n = net(&TWO_HEADS
            .replace("loss_weight: 0.3", "")
            .replace(
                "\"top-1\" type: \"Accuracy\" bottom: \"classifier\"",
                "\"top-1\" type: \"Accuracy\" bottom: \"aux/classifier\"",
            )
            .replace(
                "\"top-5\" type: \"Accuracy\" bottom: \"classifier\"",
                "\"top-5\" type: \"Accuracy\" bottom: \"aux/classifier\"",
            ));
        let refs: Vec<&LayerParameter> = n.layer.iter().collect();
        assert_eq!(scoring_layer(&refs).unwrap().name(), "loss");
        // No loss layer (a TEST net with Accuracy only): its first Accuracy.
        let n = net(r#"layer { name: "a" type: "Accuracy" bottom: "s" bottom: "l" top: "a" }"#);
        let refs: Vec<&LayerParameter> = n.layer.iter().collect();
        assert_eq!(scoring_layer(&refs).unwrap().name(), "a");
        assert!(scoring_layer(&[]).is_none());
    }
}
