//! Caffe's `debug_info` lines (per-layer value and gradient magnitudes,
//! the parameter norms) and per-layer timing for `time`.
use super::Net;
use crate::error::Result;
use std::time::Duration;

impl Net {
    /// Caffe's `debug_info` summary: the L1 and L2 norms of all learnable
    /// parameters and of their gradients.
    pub(super) fn parameter_norms(&self) -> Result<String> {
        let (mut l1, mut l2) = ([0.0f32; 2], [0.0f32; 2]);
        for i in 0..self.params.len() {
            for (k, t) in [self.param(i).clone(), self.grad(i)?].iter().enumerate() {
                l1[k] += t.abs()?.sum_all()?.to_scalar::<f32>()?;
                l2[k] += t.sqr()?.sum_all()?.to_scalar::<f32>()?;
            }
        }
        let g = crate::train::log::g;
        Ok(format!(
            "    [Backward] All net params (data, diff): L1 norm = ({}, {}); L2 norm = ({}, {})",
            g(l1[0]),
            g(l1[1]),
            g(l2[0].sqrt()),
            g(l2[1].sqrt())
        ))
    }

    /// Turns Caffe's `debug_info` lines on or off (the solver turns them on
    /// for its display iterations when the solver says `debug_info: true`).
    pub fn set_debug_info(&mut self, on: bool) {
        self.debug = on.then(Vec::new);
    }

    /// The `debug_info` lines since the last call, as (glog level, text).
    pub fn take_debug_info(&mut self) -> Vec<(char, String)> {
        self.debug.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Starts (or resets) per-layer timing.
    pub fn enable_timing(&mut self) {
        self.timing = Some(vec![(Duration::ZERO, Duration::ZERO); self.entries.len()]);
    }

    /// Per-layer (name, type, forward, backward) totals since timing was enabled.
    pub fn timings(&self) -> Vec<(String, String, Duration, Duration)> {
        let Some(t) = &self.timing else {
            return Vec::new();
        };
        self.entries
            .iter()
            .zip(t)
            .map(|(e, &(f, b))| {
                (
                    e.param.name().to_string(),
                    e.layer.type_name().to_string(),
                    f,
                    b,
                )
            })
            .collect()
    }
}
