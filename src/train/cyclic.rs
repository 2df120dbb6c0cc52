//! Rewrites a net for cyclic pooling (beyond Caffe; see the layers in
//! `layers/cyclic.rs`): a `CyclicSlice` between the data and the first
//! convolution, so the convolutional stack sees each image in its four
//! quarter turns, and a `CyclicPool` before the first InnerProduct on each
//! path from there (one for CaffeNet, one per head for GoogLeNet), which
//! averages the four back into one. The weights keep their shapes, so a
//! pretrained CaffeNet still loads; the convolutions do four times the work.
use super::gray::first_conv;
use crate::caffe::proto::{LayerParameter, NetParameter};
use crate::error::{Error, Result};

/// Inserts the layers; returns the blob it turns and the blobs pooled
/// (e.g. `data` and `pool5`; several, comma-separated, when the net has
/// auxiliary heads: GoogLeNet pools before each head's first InnerProduct).
pub fn cyclic_net(net: &mut NetParameter, context: &str) -> Result<(String, String)> {
    if net
        .layer
        .iter()
        .any(|l| matches!(l.r#type(), "CyclicSlice" | "CyclicPool"))
    {
        return Err(Error::model(context, "already has cyclic layers"));
    }
    let conv = first_conv(net, context)?;
    let data = net.layer[conv].bottom[0].clone();
    let turns = format!("{data}_turns");
    net.layer[conv].bottom[0] = turns.clone();
    // Follow the turned blobs: what reads one makes one, until an
    // InnerProduct, before which the four turns are pooled into one.
    let mut turned = std::collections::HashSet::from([turns.clone()]);
    // Blobs made from pooled turns: joining them with turned ones again
    // (a squeeze-and-excitation gate scaling its own trunk) cannot work,
    // since the pooled side has a quarter of the images.
    let mut from_pooled = std::collections::HashSet::new();
    let mut pools: Vec<(usize, String)> = Vec::new();
    for i in conv..net.layer.len() {
        let l = &net.layer[i];
        if !l.bottom.iter().any(|b| turned.contains(b)) {
            let pooled = l.bottom.iter().any(|b| from_pooled.contains(b));
            for t in &l.top {
                turned.remove(t);
                if pooled {
                    from_pooled.insert(t.clone());
                } else {
                    from_pooled.remove(t);
                }
            }
            continue;
        }
        if let Some(b) = l.bottom.iter().find(|b| from_pooled.contains(*b)) {
            return Err(Error::model(
                context,
                format!(
                    "layer '{}' joins the quarter turns with '{b}', made from them after an InnerProduct pooled them (a squeeze-and-excitation gate?): cyclic pooling cannot turn such a net",
                    l.name()
                ),
            ));
        }
        if l.r#type() == "InnerProduct" {
            if !pools.iter().any(|(_, f)| f == &l.bottom[0]) {
                pools.push((i, l.bottom[0].clone()));
            }
            from_pooled.extend(l.top.iter().cloned());
            continue;
        }
        if matches!(
            l.r#type(),
            "SoftmaxWithLoss" | "InfogainLoss" | "Accuracy" | "Softmax"
        ) {
            return Err(Error::model(
                context,
                format!(
                    "layer '{}' would score each quarter turn apart: cyclic pooling needs an InnerProduct between the convolutions and every layer that scores",
                    l.name()
                ),
            ));
        }
        turned.extend(l.top.iter().cloned());
    }
    if pools.is_empty() {
        return Err(Error::model(
            context,
            "has no InnerProduct after its convolutions to pool the four turns before",
        ));
    }
    let layer = |name: &str, ty: &str, bottom: &str, top: &str| LayerParameter {
        name: Some(name.into()),
        r#type: Some(ty.into()),
        bottom: vec![bottom.into()],
        top: vec![top.into()],
        ..Default::default()
    };
    // From the back, so the indices before stay valid; every InnerProduct
    // reading the features reads the pooled blob.
    for (k, (at, features)) in pools.iter().enumerate().rev() {
        let pooled = format!("{features}_pooled");
        for l in &mut net.layer[*at..] {
            if l.r#type() == "InnerProduct" && l.bottom.first() == Some(features) {
                l.bottom[0] = pooled.clone();
            }
        }
        let name = match k {
            0 => "cyclic_pool".to_string(),
            _ => format!("cyclic_pool_{}", k + 1),
        };
        net.layer
            .insert(*at, layer(&name, "CyclicPool", features, &pooled));
    }
    net.layer
        .insert(conv, layer("cyclic_slice", "CyclicSlice", &data, &turns));
    let features: Vec<&str> = pools.iter().map(|(_, f)| f.as_str()).collect();
    Ok((data, features.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caffenet_gets_its_turns_before_conv1_and_pools_them_before_fc6() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/caffe-ref/models/finetune_flickr_style/train_val.prototxt");
        let mut net = crate::caffe::model::read_net_prototxt(&path).unwrap();
        let before = net.layer.len();
        assert_eq!(
            cyclic_net(&mut net, "net").unwrap(),
            ("data".to_string(), "pool5".to_string())
        );
        assert_eq!(net.layer.len(), before + 2);
        let at = |name: &str| net.layer.iter().position(|l| l.name() == name).unwrap();
        assert_eq!(at("cyclic_slice") + 1, at("conv1"));
        assert_eq!(net.layer[at("conv1")].bottom, ["data_turns"]);
        assert_eq!(at("cyclic_pool") + 1, at("fc6"));
        assert_eq!(net.layer[at("cyclic_pool")].bottom, ["pool5"]);
        assert_eq!(net.layer[at("fc6")].bottom, ["pool5_pooled"]);
        assert!(cyclic_net(&mut net, "net")
            .unwrap_err()
            .to_string()
            .contains("already has cyclic layers"));
    }

    #[test]
    fn a_squeeze_and_excitation_gate_is_refused_by_name() {
        let text = r#"layer { name: "data" type: "Input" top: "data" }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" }
layer { name: "se_pool" type: "Pooling" bottom: "c1" top: "se_pool" }
layer { name: "se_fc" type: "InnerProduct" bottom: "se_pool" top: "se_fc" }
layer { name: "se_gate" type: "Sigmoid" bottom: "se_fc" top: "se_fc" }
layer { name: "se_scale" type: "Scale" bottom: "c1" bottom: "se_fc" top: "c1s" }
layer { name: "fc" type: "InnerProduct" bottom: "c1s" top: "fc" }
"#;
        let mut net: NetParameter =
            crate::caffe::prototxt::parse(text, std::path::Path::new("n")).unwrap();
        let e = cyclic_net(&mut net, "n").unwrap_err().to_string();
        assert!(
            e.contains("layer 'se_scale'")
                && e.contains("'se_fc'")
                && e.contains("squeeze-and-excitation"),
            "{e}"
        );
    }

    #[test]
    fn each_head_pools_the_turns_before_its_first_inner_product() {
        let net = |heads: &str| -> NetParameter {
            let text = format!(
                r#"layer {{ name: "data" type: "Input" top: "data" top: "label" }}
layer {{ name: "c1" type: "Convolution" bottom: "data" top: "mid" }}
layer {{ name: "relu1" type: "ReLU" bottom: "mid" top: "mid" }}
layer {{ name: "c2" type: "Convolution" bottom: "mid" top: "deep" }}
layer {{ name: "drop" type: "Dropout" bottom: "deep" top: "deep" }}
{heads}"#
            );
            crate::caffe::prototxt::parse(&text, std::path::Path::new("n")).unwrap()
        };
        let mut n = net(crate::train::heads::tests::TWO_HEADS);
        let (data, features) = cyclic_net(&mut n, "n").unwrap();
        assert_eq!((data.as_str(), features.as_str()), ("data", "mid, deep"));
        let names: Vec<&str> = n.layer.iter().map(|l| l.name()).collect();
        assert_eq!(
            names[..7],
            [
                "data",
                "cyclic_slice",
                "c1",
                "relu1",
                "c2",
                "drop",
                "cyclic_pool"
            ]
        );
        let at = |name: &str| n.layer.iter().position(|l| l.name() == name).unwrap();
        assert_eq!(at("cyclic_pool") + 1, at("aux/classifier"));
        assert_eq!(at("cyclic_pool_2") + 1, at("classifier"));
        assert_eq!(n.layer[at("cyclic_pool_2")].bottom, ["deep"]);
        assert_eq!(n.layer[at("classifier")].bottom, ["deep_pooled"]);
        assert_eq!(n.layer[at("aux/classifier")].bottom, ["mid_pooled"]);
        // Scores straight from the convolutions would mix the turns up.
        let mut n = net(
            r#"layer { name: "loss" type: "SoftmaxWithLoss" bottom: "deep" bottom: "label" top: "loss" }"#,
        );
        let e = cyclic_net(&mut n, "n").unwrap_err().to_string();
        assert!(
            e.contains("layer 'loss' would score each quarter turn apart"),
            "{e}"
        );
    }

    #[test]
    fn gray_then_cyclic_compose_as_the_pipeline_applies_them() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/caffe-ref/models/finetune_flickr_style/train_val.prototxt");
        let mut net = crate::caffe::model::read_net_prototxt(&path).unwrap();
        crate::train::gray::gray_net(&mut net, "net").unwrap();
        cyclic_net(&mut net, "net").unwrap();
        let conv1 = net.layer.iter().find(|l| l.name() == "conv1").unwrap();
        assert_eq!(conv1.param[0].lr_mult(), 3.0);
        assert_eq!(conv1.bottom, ["data_turns"]);
        // The other way round, the gray rewrite finds the slice first and says so.
        let mut net = crate::caffe::model::read_net_prototxt(&path).unwrap();
        cyclic_net(&mut net, "net").unwrap();
        let e = crate::train::gray::gray_net(&mut net, "net")
            .unwrap_err()
            .to_string();
        assert!(e.contains("goes first to CyclicSlice"), "{e}");
    }
}
