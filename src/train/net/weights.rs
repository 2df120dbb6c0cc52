//! Weights in and out by layer name: copying a trained net's blobs
//! (Caffe's CopyTrainedLayersFrom), sharing them with another net, and
//! writing them back as a `.caffemodel` (values, and diffs when asked).
use super::Net;
use crate::caffe::blob::{shape_equals, shape_string};
use crate::caffe::proto::NetParameter;
use crate::caffe::BlobProto;
use crate::error::{Error, Result};
use candle_core::Tensor;

impl Net {
    /// Copies weights from a trained net by layer name (Caffe's
    /// CopyTrainedLayersFrom). Returns the names of ignored source layers.
    pub fn copy_trained_from(
        &mut self,
        source: &NetParameter,
        source_name: &str,
    ) -> Result<Vec<String>> {
        let mut ignored = Vec::new();
        for src in &source.layer {
            let Some(li) = self
                .entries
                .iter()
                .position(|e| e.param.name() == src.name())
            else {
                ignored.push(src.name().to_string());
                continue;
            };
            let e = &self.entries[li];
            let target = e.layer.params();
            // An HDF5 snapshot leaves out the blobs a layer shares with an
            // earlier one (the last ones here): those come from their owner.
            let shared_rest = (src.blobs.len()..target.len()).all(|j| {
                let p = self.params[e.slots[j]];
                (p.layer, p.index) != (li, j)
            });
            if src.blobs.len() > target.len() || !shared_rest {
                return Err(Error::model(
                    format!("layer '{}'", src.name()),
                    format!(
                        "{source_name} has {} blobs for it but the net expects {}",
                        src.blobs.len(),
                        target.len()
                    ),
                ));
            }
            let mut values = Vec::with_capacity(target.len());
            for (i, (blob, t)) in src.blobs.iter().zip(target).enumerate() {
                let dims = t.dims().to_vec();
                if !shape_equals(blob, &dims) {
                    return Err(Error::model(
                        format!("layer '{}'", src.name()),
                        format!(
                            "cannot copy param {i} weights from {source_name}; shape mismatch. Source param shape is {}; target param shape is {}. To learn this layer's parameters from scratch rather than copying from a saved net, rename the layer.",
                            shape_string(&blob.dims()),
                            shape_string(&dims.iter().map(|&d| d as i64).collect::<Vec<_>>())
                        ),
                    ));
                }
                values.push((
                    e.slots[i],
                    Tensor::from_vec(blob.values(), dims, t.device())?,
                ));
            }
            // Into the blobs that share them too (as Caffe's shared memory
            // takes them): with several such layers in the file, the last wins.
            for (slot, t) in values {
                let shape = self.param(slot).shape().clone();
                self.set_param(slot, t.reshape(shape)?)?;
            }
        }
        Ok(ignored)
    }

    /// Shares parameter values with `other` by layer name (test nets use the
    /// train net's weights).
    pub fn share_from(&mut self, other: &Net) -> Result<()> {
        for e in &mut self.entries {
            if let Some(o) = other
                .entries
                .iter()
                .find(|o| o.param.name() == e.param.name())
            {
                let src = o.layer.params();
                let dst = e.layer.params_mut();
                if src.len() == dst.len()
                    && src
                        .iter()
                        .zip(dst.iter())
                        .all(|(a, b)| a.dims() == b.dims())
                {
                    dst.clone_from_slice(src);
                }
            }
        }
        // A sharing layer the other net lacks takes its owner's values.
        for i in 0..self.params.len() {
            if !self.sharers[i].is_empty() {
                self.set_param(i, self.param(i).clone())?;
            }
        }
        Ok(())
    }

    /// The net as a V2 NetParameter with every layer's blobs (a .caffemodel).
    pub fn to_proto(&self, def: &NetParameter) -> Result<NetParameter> {
        self.to_proto_with(def, None)
    }

    /// [`Net::to_proto`], with each blob's diff taken from `diffs` (one per
    /// learnable parameter; a sharer gets its owner's, as in Caffe, where
    /// they share the memory): Caffe's `snapshot_diff`.
    pub fn to_proto_with(
        &self,
        def: &NetParameter,
        diffs: Option<&[Tensor]>,
    ) -> Result<NetParameter> {
        let mut out = NetParameter {
            name: def.name.clone(),
            ..Default::default()
        };
        for e in &self.entries {
            let mut lp = e.param.clone();
            lp.phase = Some(self.phase as i32);
            lp.blobs = e
                .layer
                .params()
                .iter()
                .enumerate()
                .map(|(j, t)| {
                    let mut b = BlobProto::with_shape(t.dims(), t.flatten_all()?.to_vec1::<f32>()?);
                    if let Some(d) = diffs {
                        b.diff = d[e.slots[j]].flatten_all()?.to_vec1::<f32>()?;
                    }
                    Ok(b)
                })
                .collect::<Result<_>>()?;
            out.layer.push(lp);
        }
        Ok(out)
    }

    /// Per layer in net order, its name and every blob's `values` (one per
    /// learnable parameter, a sharer taking its owner's) as (blob number,
    /// shape, values): the `diff` group of Caffe's HDF5 `snapshot_diff`.
    pub fn blob_values(
        &self,
        values: &[Tensor],
    ) -> Result<Vec<crate::caffe::hdf5_snapshot::LayerBlobs>> {
        self.entries
            .iter()
            .map(|e| {
                let blobs = e
                    .layer
                    .params()
                    .iter()
                    .enumerate()
                    .map(|(j, t)| {
                        let v = values[e.slots[j]].flatten_all()?.to_vec1::<f32>()?;
                        Ok((j, t.dims().to_vec(), v))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((e.param.name().to_string(), blobs))
            })
            .collect()
    }

    /// Per layer in net order, its name and the blobs it owns (not those it
    /// shares with an earlier layer) as (blob number, shape, values): what
    /// Caffe's HDF5 snapshot holds.
    pub fn owned_blobs(&self) -> Result<Vec<crate::caffe::hdf5_snapshot::LayerBlobs>> {
        self.entries
            .iter()
            .enumerate()
            .map(|(li, e)| {
                let blobs = e
                    .slots
                    .iter()
                    .enumerate()
                    .filter(|&(j, &s)| (self.params[s].layer, self.params[s].index) == (li, j))
                    .map(|(j, _)| {
                        let t = &e.layer.params()[j];
                        Ok((j, t.dims().to_vec(), t.flatten_all()?.to_vec1::<f32>()?))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((e.param.name().to_string(), blobs))
            })
            .collect()
    }
}
