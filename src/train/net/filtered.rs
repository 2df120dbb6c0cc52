//! Blobs whose number of items changes from pass to pass, behind a Filter
//! layer: which layers may read them (those that reshape before each pass,
//! as every Caffe layer does), the checks that keep the others out with a
//! clear error when the net is built, and the reshaping before a pass.
use super::{Entry, Filtered, Net};
use crate::caffe::proto::LayerParameter;
use crate::error::{Error, Result};
use crate::train::layers::Grads;
use crate::train::layers::{Layer, FOLLOW_FILTER};
use candle_core::{DType, Tensor};

impl Net {
    /// For a layer about to be added with these bottoms: what decides the
    /// number of items of its tops (`None`: the batch, fixed). Errors when
    /// the layer reads a filtered blob it cannot follow, or blobs whose item
    /// counts may differ.
    pub(super) fn follows_filter(
        &self,
        layer: &dyn Layer,
        lp: &LayerParameter,
        bottoms: &[usize],
    ) -> Result<Option<Filtered>> {
        let lctx = format!("layer '{}'", lp.name());
        let describe = |b: usize| match &self.filtered[b] {
            Some(f) => format!(
                "'{}' holds the items Filter layer '{}' keeps",
                self.blob_names[b], f.filter
            ),
            None => format!("'{}' holds the whole batch", self.blob_names[b]),
        };
        if let Some(&first) = bottoms.first() {
            if let Some(&other) = bottoms[1..]
                .iter()
                .find(|&&b| self.selector(b) != self.selector(first))
            {
                return Err(Error::model(
                    &lctx,
                    format!(
                        "reads blobs whose numbers of items can differ from pass to pass: {}, {}; filter each of them by the same selector",
                        describe(first),
                        describe(other)
                    ),
                ));
            }
        }
        if layer.type_name() == "Filter" {
            let selector = *bottoms.last().expect("a Filter has bottoms");
            return Ok(Some(Filtered {
                filter: lp.name().to_string(),
                selector,
            }));
        }
        let Some(f) = bottoms.first().and_then(|&b| self.filtered[b].clone()) else {
            return Ok(None);
        };
        if !layer.any_batch() {
            return Err(Error::model(
                &lctx,
                format!(
                    "reads '{}', whose number of items Filter layer '{}' changes from pass to pass, and {} layers cannot follow a Filter (these can: {FOLLOW_FILTER})",
                    self.blob_names[bottoms[0]],
                    f.filter,
                    layer.type_name()
                ),
            ));
        }
        Ok(Some(f))
    }

    /// The selector blob that decides blob `b`'s items (`None`: the batch).
    fn selector(&self, b: usize) -> Option<usize> {
        self.filtered[b].as_ref().map(|f| f.selector)
    }

    /// Refuses a net output whose number of items changes: `test` and the
    /// test phases average each output value over passes (Caffe would index
    /// past its sums).
    pub(super) fn check_filtered_outputs(&self) -> Result<()> {
        for &id in &self.outputs {
            if let Some(f) = &self.filtered[id] {
                return Err(Error::model(
                    format!("blob '{}'", self.blob_names[id]),
                    format!(
                        "is an output of the net and Filter layer '{}' changes its number of items from pass to pass, so its values cannot be averaged over passes; give it to a layer (a loss, or a Silence layer)",
                        f.filter
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Errors when the blob named `name` does not hold one row per image
    /// (a Filter keeps some of them): `what` says what needs the rows.
    pub fn check_per_item(&self, name: &str, what: &str) -> Result<()> {
        let found = (0..self.blob_names.len())
            .rev()
            .find(|&i| self.blob_names[i] == name);
        match found.and_then(|i| self.filtered[i].as_ref()) {
            Some(f) => Err(Error::model(
                format!("blob '{name}'"),
                format!(
                    "holds only the items Filter layer '{}' keeps, not one row per image, as {what} needs",
                    f.filter
                ),
            )),
            None => Ok(()),
        }
    }
}

/// `shape` with no items: its first axis 0 (a scalar stays a scalar).
fn no_items(shape: &[usize]) -> Vec<usize> {
    let mut s = shape.to_vec();
    if let Some(items) = s.first_mut() {
        *items = 0;
    }
    s
}

impl Entry {
    /// Before the layer runs on `bottom`: when its bottoms follow a Filter
    /// and their shapes changed since its last pass, lets it reshape. When
    /// they hold no items at all, returns the tops the layer would make
    /// (empty blobs, and 0 for a loss or an accuracy) without running it,
    /// so no kernel ever sees an empty blob (Caffe crashes on one).
    pub(super) fn follow_shapes(&mut self, bottom: &[Tensor]) -> Result<Option<Vec<Tensor>>> {
        let Some(seen) = &mut self.seen else {
            return Ok(None);
        };
        seen.empty = !bottom.is_empty() && bottom.iter().all(|t| t.elem_count() == 0);
        if seen.empty {
            // The layer is not asked to reshape to nothing: its tops are
            // its last ones with no items (a scalar stays a scalar).
            let device = bottom[0].device();
            let tops = seen
                .tops
                .iter()
                .map(|s| Ok(Tensor::zeros(no_items(s), DType::F32, device)?))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Some(tops));
        }
        if !seen.bottoms.iter().zip(bottom).all(|(s, t)| s == t.dims()) {
            let dims: Vec<Vec<usize>> = bottom.iter().map(|t| t.dims().to_vec()).collect();
            seen.tops = self.layer.reshape(&dims)?;
            seen.bottoms = dims;
        }
        Ok(None)
    }

    /// The backward pass of a layer whose last pass was empty: zeros for
    /// the bottoms and parameters asked for (what the sums over no items
    /// give); `None` when the last pass was not empty.
    pub(super) fn empty_backward(
        &self,
        param_grad: &[bool],
        device: &candle_core::Device,
    ) -> Result<Option<Grads>> {
        let Some(seen) = self.seen.as_ref().filter(|s| s.empty) else {
            return Ok(None);
        };
        let zeros =
            |shape: &[usize]| -> Result<Tensor> { Ok(Tensor::zeros(shape, DType::F32, device)?) };
        let bottoms = seen
            .bottoms
            .iter()
            .zip(&self.propagate)
            .map(|(s, &p)| p.then(|| zeros(&no_items(s))).transpose())
            .collect::<Result<Vec<_>>>()?;
        let params = self
            .layer
            .params()
            .iter()
            .zip(param_grad)
            .map(|(p, &g)| g.then(|| zeros(p.dims())).transpose())
            .collect::<Result<Vec<_>>>()?;
        Ok(Some((bottoms, params)))
    }
}

#[cfg(test)]
mod tests {
    use crate::caffe::proto::{LayerParameter, NetParameter, Phase};
    use crate::train::layers::{create, BuildContext, FOLLOW_FILTER};
    use crate::train::net::Net;

    const INPUTS: &str = r#"layer { name: "in" type: "Input" top: "x" top: "label" top: "keep"
  input_param { shape { dim: 4 dim: 2 dim: 3 dim: 3 } shape { dim: 4 } shape { dim: 4 } } }
layer { name: "select" type: "Filter" bottom: "x" bottom: "label" bottom: "keep" top: "xf" top: "labelf" }
"#;

    fn build(rest: &str) -> crate::error::Result<Net> {
        let def: NetParameter = crate::caffe::prototxt::parse(
            &format!("name: \"f\"\n{INPUTS}{rest}"),
            std::path::Path::new("f.prototxt"),
        )
        .unwrap();
        Net::new(&def, &BuildContext::cpu(".", 1, Phase::Test), None)
    }

    /// The list the errors give is the layers that say `any_batch`.
    #[test]
    fn the_listed_types_are_those_that_follow_a_filter() {
        let dir = tempfile::tempdir().unwrap();
        let h = crate::caffe::proto::BlobProto {
            data: vec![1.0; 4],
            shape: Some(crate::caffe::proto::BlobShape { dim: vec![2, 2] }),
            ..Default::default()
        };
        std::fs::write(
            dir.path().join("h.binaryproto"),
            prost::Message::encode_to_vec(&h),
        )
        .unwrap();
        let ctx = BuildContext::cpu(dir.path(), 1, Phase::Train);
        let listed: Vec<&str> = FOLLOW_FILTER
            .split(", ")
            .map(|t| t.split(' ').next().unwrap())
            .collect();
        assert!(listed.len() > 20, "{listed:?}");
        for ty in listed
            .iter()
            .chain(&["Deconvolution", "Im2col", "MVN", "HingeLoss"])
        {
            let extra = match *ty {
                "InnerProduct" => "inner_product_param { num_output: 2 }",
                "Convolution" | "Deconvolution" | "Im2col" => {
                    "convolution_param { num_output: 2 kernel_size: 1 }"
                }
                "InfogainLoss" => "infogain_loss_param { source: \"h.binaryproto\" }",
                "Clip" => "clip_param { min: 0 max: 1 }",
                "Slice" => "top: \"a\" top: \"b\"",
                _ => "",
            };
            let lp: LayerParameter = crate::caffe::prototxt::parse(
                &format!("name: \"l\" type: \"{ty}\" {extra}"),
                std::path::Path::new("l"),
            )
            .unwrap();
            let mut layer = create(&lp, &ctx, 0).unwrap();
            // Scale and Bias can tell only once they know their bottom's
            // axes (those that need two bottoms refuse this one).
            let _ = layer.setup(&[vec![2, 3, 4, 4]]);
            assert_eq!(layer.any_batch(), listed.contains(ty), "{ty}");
        }
    }

    #[test]
    fn layers_that_cannot_follow_a_filter_are_refused_by_name() {
        let err = build(
            r#"layer { name: "conv" type: "Deconvolution" bottom: "xf" top: "c" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "quiet" type: "Silence" bottom: "c" bottom: "labelf" }
"#,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("layer 'conv'"), "{err}");
        assert!(err.contains("Filter layer 'select'"), "{err}");
        assert!(
            err.contains("Deconvolution layers cannot follow a Filter"),
            "{err}"
        );
    }

    #[test]
    fn filtered_and_whole_batches_do_not_mix() {
        let err = build(
            r#"layer { name: "ip" type: "InnerProduct" bottom: "xf" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "quiet" type: "Silence" bottom: "labelf" }
"#,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("layer 'loss'"), "{err}");
        assert!(err.contains("'label' holds the whole batch"), "{err}");
    }

    #[test]
    fn a_filtered_output_is_refused_and_a_consumed_one_reshapes_each_pass() {
        let err = build("").err().unwrap().to_string();
        assert!(err.contains("is an output of the net"), "{err}");
        let mut net = build(
            r#"layer { name: "ip" type: "InnerProduct" bottom: "xf" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "labelf" top: "loss" }
"#,
        )
        .unwrap();
        assert!(net.check_per_item("ip", "evaluate").is_err());
        assert!(net.check_per_item("x", "evaluate").is_ok());
        let dev = candle_core::Device::Cpu;
        let x = candle_core::Tensor::ones((4, 2, 3, 3), candle_core::DType::F32, &dev).unwrap();
        let label = candle_core::Tensor::new(&[0f32, 1.0, 2.0, 1.0], &dev).unwrap();
        for keep in [[1.0f32, 0.0, 1.0, 1.0], [0.0; 4], [1.0; 4]] {
            let keep_t = candle_core::Tensor::new(&keep, &dev).unwrap();
            net.forward_batch(vec![x.clone(), label.clone(), keep_t])
                .unwrap();
            let kept = keep.iter().filter(|&&k| k != 0.0).count();
            assert_eq!(net.blob("ip").unwrap().dims(), [kept, 3]);
            let loss = net.blob("loss").unwrap().to_scalar::<f32>().unwrap();
            net.clear_grads();
            net.backward().unwrap();
            let dw = net.grad(0).unwrap().abs().unwrap().sum_all().unwrap();
            let dw = dw.to_scalar::<f32>().unwrap();
            // No items: a 0 loss and zero gradients, without running a kernel.
            assert_eq!(kept == 0, loss == 0.0, "{loss}");
            assert_eq!(kept == 0, dw == 0.0, "{dw}");
        }
    }
}
