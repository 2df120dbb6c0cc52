//! Read-only views of a built net: its blobs and outputs by name, each
//! layer's tops and parameters, and the per-layer summaries `--dry-run`
//! and `time` print.
use super::{LayerInfo, Net};
use crate::caffe::proto::LayerParameter;
use crate::error::{Error, Result};
use candle_core::Tensor;

impl Net {
    /// Blob `index` of layer `layer` (a shared blob holds its owner's values).
    pub fn layer_blob(&self, layer: &str, index: usize) -> Option<&Tensor> {
        let e = self.entries.iter().find(|e| e.param.name() == layer)?;
        e.layer.params().get(index)
    }

    /// Name of the layer owning parameter `i`.
    pub fn param_layer_name(&self, i: usize) -> &str {
        self.entries[self.params[i].layer].param.name()
    }

    /// Output blobs (those no layer consumes), by name, with their loss weights.
    pub fn outputs(&self) -> Result<Vec<(String, Vec<f32>, f32)>> {
        self.outputs
            .iter()
            .map(|&id| {
                let t = self.blobs[id]
                    .as_ref()
                    .ok_or_else(|| Error::model(&self.blob_names[id], "no forward pass yet"))?;
                let w = self
                    .entries
                    .iter()
                    .find_map(|e| {
                        e.tops
                            .iter()
                            .position(|&x| x == id)
                            .map(|i| e.loss_weights[i])
                    })
                    .unwrap_or(0.0);
                Ok((
                    self.blob_names[id].clone(),
                    t.flatten_all()?.to_vec1::<f32>()?,
                    w,
                ))
            })
            .collect()
    }

    /// The current value of the blob named `name` (its last producer's output).
    pub fn blob(&self, name: &str) -> Option<&Tensor> {
        (0..self.blob_names.len())
            .rev()
            .find(|&i| self.blob_names[i] == name)
            .and_then(|i| self.blobs[i].as_ref())
    }

    /// The shape of the blob named `name`, as the net was set up (its last
    /// producer's top), without running it.
    pub fn blob_shape(&self, name: &str) -> Option<&[usize]> {
        (0..self.blob_names.len())
            .rev()
            .find(|&i| self.blob_names[i] == name)
            .map(|i| self.blob_shapes[i].as_slice())
    }

    /// The output of layer `layer`'s top `i` in the last forward pass.
    pub fn layer_top(&self, layer: &str, i: usize) -> Option<&Tensor> {
        let e = self.entries.iter().find(|e| e.param.name() == layer)?;
        self.blobs[*e.tops.get(i)?].as_ref()
    }

    /// The input blob `i` of layer `layer` in the last forward pass (what
    /// that layer read, even where a later layer rewrote the blob in place).
    pub fn layer_bottom(&self, layer: &str, i: usize) -> Option<&Tensor> {
        let e = self.entries.iter().find(|e| e.param.name() == layer)?;
        self.blobs[*e.bottoms.get(i)?].as_ref()
    }

    /// The definitions of the layers in this net (its phase's), in order.
    pub fn layer_params(&self) -> impl Iterator<Item = &LayerParameter> {
        self.entries.iter().map(|e| &e.param)
    }

    /// The image counts of the net's data layers' sources, by layer name.
    pub fn data_source_lens(&self) -> Vec<(String, usize)> {
        self.entries
            .iter()
            .filter_map(|e| Some((e.param.name().to_string(), e.layer.source_len()?)))
            .collect()
    }

    /// Where the images of the last batch came from, when the net has one
    /// data layer that knows (list paths or LMDB keys, in batch order).
    pub fn data_batch_sources(&self) -> Option<Vec<String>> {
        self.image_source()?.layer.last_batch_sources()
    }

    /// Each layer's definition, top shapes, parameters and whether it runs
    /// backward, in order (for [`summary`](crate::train::summary)).
    pub fn layer_infos(&self) -> Vec<LayerInfo<'_>> {
        self.entries
            .iter()
            .enumerate()
            .map(|(li, e)| LayerInfo {
                param: &e.param,
                type_name: e.layer.type_name(),
                tops: e
                    .tops
                    .iter()
                    .map(|&t| self.blob_shapes[t].clone())
                    .collect(),
                filtered: e.tops.iter().map(|&t| self.filtered[t].is_some()).collect(),
                param_shapes: e.layer.params().iter().map(|t| t.dims().to_vec()).collect(),
                mults: e
                    .slots
                    .iter()
                    .map(|&s| (self.params[s].lr_mult, self.params[s].decay_mult))
                    .collect(),
                shared_from: e
                    .slots
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| {
                        let p = self.params[s];
                        ((p.layer, p.index) != (li, i))
                            .then(|| (self.entries[p.layer].param.name().to_string(), p.index))
                    })
                    .collect(),
                backward: e.need_backward,
            })
            .collect()
    }

    /// Layer names with whether each runs backward (for logs and `time`).
    pub fn layer_summary(&self) -> Vec<(String, String, bool)> {
        self.entries
            .iter()
            .map(|e| {
                (
                    e.param.name().to_string(),
                    e.layer.type_name().to_string(),
                    e.need_backward,
                )
            })
            .collect()
    }
}
