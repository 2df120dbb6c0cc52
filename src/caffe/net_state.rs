//! Which layers of a net file are built: Caffe's `NetState` (phase, level,
//! stages) against each layer's `include`/`exclude` rules, and the `-level`
//! and `-stage` flags of Caffe's tools, which set that state. One file can
//! then hold a net's training, validation and deploy variants, as DIGITS
//! writes them (`include { stage: "deploy" }`, `exclude { stage: "deploy" }`).
use super::proto::{LayerParameter, NetParameter, NetState, NetStateRule, Phase, SolverParameter};

/// The `-level` and `-stage` flags of `caffe train`, `caffe test` and
/// `caffe time` (and the `level` and `stages` arguments of pycaffe's `Net`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateFlags {
    /// The net's level, replacing the file's own (Caffe's tools always set
    /// it, 0 unless told otherwise).
    pub level: i32,
    /// Stages added to those the file's `state` names.
    pub stages: Vec<String>,
}

/// The flags' defaults (level 0, no stages), which Caffe's tools apply
/// when none are given.
pub static DEFAULT_STATE: StateFlags = StateFlags {
    level: 0,
    stages: Vec::new(),
};

impl StateFlags {
    /// Sets the state of a net read from a file as Caffe's tools do when
    /// they open it (Caffe's `Net(file, phase, level, stages)`): the stages
    /// are added to the file's own and the level replaces the file's.
    pub fn apply(&self, def: &mut NetParameter) {
        let state = def.state.get_or_insert_with(Default::default);
        state.stage.extend(self.stages.iter().cloned());
        state.level = Some(self.level);
    }

    /// Sets a solver's training-net state as `caffe train` does: the level
    /// replaces the solver's `train_state` level and the stages are added
    /// to its stages; the test nets keep their `test_state`s.
    pub fn apply_to_solver(&self, solver: &mut SolverParameter) {
        let state = solver.train_state.get_or_insert_with(Default::default);
        state.stage.extend(self.stages.iter().cloned());
        state.level = Some(self.level);
    }
}

/// The state a net file is built in for `phase`: the file's own `state`
/// (its level and stages) with `extra` merged over it, as Caffe's solver
/// merges its `train_state`/`test_state` (the stages of both, `extra`'s
/// level where it gives one), and the phase set.
pub fn state_of(def: &NetParameter, phase: Phase, extra: Option<&NetState>) -> NetState {
    let mut state = def.state.clone().unwrap_or_default();
    if let Some(s) = extra {
        if s.level.is_some() {
            state.level = s.level;
        }
        state.stage.extend(s.stage.iter().cloned());
    }
    state.phase = Some(phase as i32);
    state
}

/// Whether `state` satisfies `rule` (Caffe's StateMeetsRule).
fn meets(state: &NetState, rule: &NetStateRule) -> bool {
    if rule.phase.is_some() && rule.phase() != state.phase() {
        return false;
    }
    if rule.min_level.is_some_and(|m| state.level() < m)
        || rule.max_level.is_some_and(|m| state.level() > m)
    {
        return false;
    }
    rule.stage.iter().all(|s| state.stage.contains(s))
        && !rule.not_stage.iter().any(|s| state.stage.contains(s))
}

/// Why `rule` does not hold in `state`, in the words Caffe logs.
fn unmet(state: &NetState, rule: &NetStateRule, layer: &str) -> Option<String> {
    let phase = |p: Phase| p as i32;
    if rule.phase.is_some() && rule.phase() != state.phase() {
        return Some(format!(
            "The NetState phase ({}) differed from the phase ({}) specified by a rule in layer {layer}",
            phase(state.phase()),
            phase(rule.phase())
        ));
    }
    // Caffe says "above" for both level bounds.
    if let Some(m) = rule.min_level.filter(|&m| state.level() < m) {
        return Some(format!(
            "The NetState level ({}) is above the min_level ({m}) specified by a rule in layer {layer}",
            state.level()
        ));
    }
    if let Some(m) = rule.max_level.filter(|&m| state.level() > m) {
        return Some(format!(
            "The NetState level ({}) is above the max_level ({m}) specified by a rule in layer {layer}",
            state.level()
        ));
    }
    if let Some(s) = rule.stage.iter().find(|s| !state.stage.contains(s)) {
        return Some(format!(
            "The NetState did not contain stage '{s}' specified by a rule in layer {layer}"
        ));
    }
    rule.not_stage
        .iter()
        .find(|s| state.stage.contains(s))
        .map(|s| {
            format!("The NetState contained a not_stage '{s}' specified by a rule in layer {layer}")
        })
}

/// For each layer of `def` that its include rules leave out of the net in
/// `state`, the line Caffe logs about it (the first rule's reason) and the
/// source location Caffe's log gives it.
pub fn left_out(def: &NetParameter, state: &NetState) -> Vec<(&'static str, String)> {
    def.layer
        .iter()
        .filter(|l| !l.include.is_empty() && !included(l, state))
        .filter_map(|l| unmet(state, &l.include[0], l.name()))
        .map(|line| {
            let at = if line.starts_with("The NetState phase") {
                "net.cpp:296"
            } else {
                "net.cpp:306"
            };
            (at, line)
        })
        .collect()
}

/// Whether a layer belongs to the net in `state`.
pub fn included(layer: &LayerParameter, state: &NetState) -> bool {
    if layer.include.is_empty() {
        !layer.exclude.iter().any(|r| meets(state, r))
    } else {
        layer.include.iter().any(|r| meets(state, r))
    }
}

/// The layers of `def` built in `phase` (with the file's own state).
pub fn layers_in(def: &NetParameter, phase: Phase) -> impl Iterator<Item = &LayerParameter> {
    let state = state_of(def, phase, None);
    def.layer.iter().filter(move |l| included(l, &state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caffe::prototxt;

    /// A net in DIGITS' style: one file, its variants told apart by stage.
    const ALL_IN_ONE: &str = r#"
        state { stage: "file" level: 3 }
        layer { name: "train-data" type: "Input" top: "data" include { stage: "train" } }
        layer { name: "val-data" type: "Input" top: "data" include { stage: "val" } }
        layer { name: "deploy-data" type: "Input" top: "data" include { stage: "deploy" } }
        layer { name: "loss" type: "Silence" bottom: "data" exclude { stage: "deploy" } }
        layer { name: "deep" type: "Silence" bottom: "data" include { min_level: 2 } }
        layer { name: "file" type: "Silence" bottom: "data" include { stage: "file" phase: TEST } }
    "#;

    fn names(def: &NetParameter, phase: Phase) -> Vec<&str> {
        layers_in(def, phase).map(|l| l.name()).collect()
    }

    #[test]
    fn flags_add_stages_and_replace_the_level_as_caffes_tools_do() {
        let mut def: NetParameter =
            prototxt::parse(ALL_IN_ONE, std::path::Path::new("net")).unwrap();
        // The file's own state: its stage, level 3.
        assert_eq!(names(&def, Phase::Test), ["loss", "deep", "file"]);
        StateFlags {
            level: 0,
            stages: vec!["deploy".into()],
        }
        .apply(&mut def);
        // The level is replaced (0 fails min_level 2); the file's stage stays.
        assert_eq!(names(&def, Phase::Test), ["deploy-data", "file"]);
        assert_eq!(names(&def, Phase::Train), ["deploy-data"]);
    }

    #[test]
    fn layers_left_out_are_explained_in_caffes_words() {
        let def: NetParameter = prototxt::parse(ALL_IN_ONE, std::path::Path::new("net")).unwrap();
        let mut state = state_of(&def, Phase::Train, None);
        state.level = Some(1);
        let lines: Vec<String> = left_out(&def, &state).into_iter().map(|l| l.1).collect();
        assert_eq!(
            lines,
            [
                "The NetState did not contain stage 'train' specified by a rule in layer train-data",
                "The NetState did not contain stage 'val' specified by a rule in layer val-data",
                "The NetState did not contain stage 'deploy' specified by a rule in layer deploy-data",
                "The NetState level (1) is above the min_level (2) specified by a rule in layer deep",
                "The NetState phase (0) differed from the phase (1) specified by a rule in layer file",
            ]
        );
    }

    #[test]
    fn the_solver_state_merges_over_the_files() {
        let def: NetParameter = prototxt::parse(ALL_IN_ONE, std::path::Path::new("net")).unwrap();
        let val = NetState {
            stage: vec!["val".into()],
            ..Default::default()
        };
        let s = state_of(&def, Phase::Test, Some(&val));
        assert_eq!(s.stage, ["file", "val"]);
        assert_eq!(s.level(), 3);
        let mut solver = SolverParameter::default();
        StateFlags {
            level: 1,
            stages: vec!["train".into()],
        }
        .apply_to_solver(&mut solver);
        let s = state_of(&def, Phase::Train, solver.train_state.as_ref());
        let built: Vec<&str> = def
            .layer
            .iter()
            .filter(|l| included(l, &s))
            .map(|l| l.name())
            .collect();
        assert_eq!(built, ["train-data", "loss"]);
    }
}
