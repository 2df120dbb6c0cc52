//! What a net's layers keep between passes, saved beside snapshots so a
//! resumed run repeats the uninterrupted one: data positions and draw
//! counts, and the values recurrent layers carry.
use super::Net;
use crate::error::{Error, Result};
use std::collections::BTreeMap;

impl Net {
    /// Resumable layer states by layer name (data positions, dropout draws).
    pub fn states(&self) -> BTreeMap<String, u64> {
        self.entries
            .iter()
            .filter_map(|e| e.layer.state().map(|s| (e.param.name().to_string(), s)))
            .collect()
    }

    /// Restores what [`Net::states`] returned.
    pub fn restore_states(&mut self, states: &BTreeMap<String, u64>) {
        for e in &mut self.entries {
            if let Some(&s) = states.get(e.param.name()) {
                e.layer.restore_state(s);
            }
        }
    }

    /// What each layer carries from one forward pass to the next (the
    /// last hidden states of recurrent layers), by layer name.
    pub fn carried(&self) -> Result<BTreeMap<String, Vec<Vec<f32>>>> {
        let mut out = BTreeMap::new();
        for e in &self.entries {
            let values = e.layer.carried()?;
            if !values.is_empty() {
                out.insert(e.param.name().to_string(), values);
            }
        }
        Ok(out)
    }

    /// Restores what [`Net::carried`] returned (read from `source`).
    pub fn restore_carried(
        &mut self,
        carried: &BTreeMap<String, Vec<Vec<f32>>>,
        source: &str,
    ) -> Result<()> {
        for e in &mut self.entries {
            if let Some(values) = carried.get(e.param.name()) {
                e.layer
                    .restore_carried(values)
                    .map_err(|why| Error::invalid(source, why.to_string()))?;
            }
        }
        Ok(())
    }
}
