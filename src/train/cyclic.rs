//! Rewrites a net for cyclic pooling (beyond Caffe; see the layers in
//! `layers/cyclic.rs`): a `CyclicSlice` between the data and the first
//! convolution, so the convolutional stack sees each image in its four
//! quarter turns, and a `CyclicPool` before the first InnerProduct, which
//! averages the four back into one. The weights keep their shapes, so a
//! pretrained CaffeNet still loads; the convolutions do four times the work.
use super::gray::first_conv;
use crate::caffe::proto::{LayerParameter, NetParameter};
use crate::error::{Error, Result};

/// Inserts the two layers; returns the blobs they split after and pool
/// before (e.g. `data` and `pool5`).
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
    let fc = (conv..net.layer.len())
        .find(|&i| net.layer[i].r#type() == "InnerProduct")
        .ok_or_else(|| {
            Error::model(
                context,
                "has no InnerProduct after its convolutions to pool the four turns before",
            )
        })?;
    let features = net.layer[fc]
        .bottom
        .first()
        .cloned()
        .ok_or_else(|| Error::model(context, "its first InnerProduct has no bottom"))?;
    let layer = |name: &str, ty: &str, bottom: &str, top: &str| LayerParameter {
        name: Some(name.into()),
        r#type: Some(ty.into()),
        bottom: vec![bottom.into()],
        top: vec![top.into()],
        ..Default::default()
    };
    let (turns, pooled) = (format!("{data}_turns"), format!("{features}_pooled"));
    net.layer[fc].bottom[0] = pooled.clone();
    net.layer
        .insert(fc, layer("cyclic_pool", "CyclicPool", &features, &pooled));
    net.layer[conv].bottom[0] = turns.clone();
    net.layer
        .insert(conv, layer("cyclic_slice", "CyclicSlice", &data, &turns));
    Ok((data, features))
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
