//! Single layers against real Caffe: `tests/data/caffe_layers.json`, made
//! by `scripts/caffe-golden/run.sh` (pycaffe, Caffe 1.0.0 from Debian
//! bullseye, CPU, float32; its `provenance` field says which build).
//!
//! Each case is a small net (see `scripts/caffe-golden/layers.py`): the
//! inputs pass through all-zero full-shape Bias layers `dx<i>`, so their
//! parameter gradients are the gradients with respect to the inputs; the
//! layer under test is `under_test`; each of its tops is multiplied by a
//! random blob with loss weight 1, so its gradient is that blob. Every case
//! runs on the CPU kernels, on the tensor ops (the GPU's code path) and on
//! the fused kernels' CPU twins.
mod common;
use common::golden::Array;
use flickr_style::caffe::model::read_net_prototxt;
use flickr_style::caffe::proto::{BlobProto, Phase};
use flickr_style::train::layers::BuildContext;
use flickr_style::train::net::Net;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    phase: String,
    prototxt: String,
    /// Files the net reads (InfogainLoss's H), as BlobProtos.
    #[serde(default)]
    files: std::collections::BTreeMap<String, Array>,
    inputs: Vec<Array>,
    params: Vec<Array>,
    /// The parameters are what Caffe's (deterministic) fillers made.
    #[serde(default)]
    filled: bool,
    objective: f64,
    tops: Vec<Array>,
    params_after_forward: Option<Vec<Array>>,
    param_grads: Vec<Array>,
    input_grads: Vec<Array>,
}

/// The three ways a layer can compute: (label, tensor_ops, fused).
const PATHS: [(&str, bool, bool); 3] = [
    ("cpu kernels", false, false),
    ("tensor ops", true, false),
    ("fused", true, true),
];

/// Largest |got - want| over (largest |want|, 1e-3): a relative error for
/// blobs of ordinary size, an absolute one for blobs near zero.
fn err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() / scale)
        .fold(0.0, f32::max)
}

fn values(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// What is wrong with `got`, if anything.
fn compare(what: String, got: &candle_core::Tensor, want: &Array) -> Option<String> {
    const TOL: f32 = 2e-6;
    if got.dims() != want.shape.as_slice() {
        return Some(format!(
            "{what}: shape {:?}, Caffe {:?}",
            got.dims(),
            want.shape
        ));
    }
    let e = err(&values(got), &want.data);
    (e > TOL).then(|| format!("{what}: error {e:.2e}"))
}

/// Runs one case; returns what disagrees with Caffe.
fn check(case: &Case, dir: &std::path::Path, tensor_ops: bool, fused: bool) -> Vec<String> {
    let mut bad = Vec::new();
    let file = dir.join(format!("{}.prototxt", case.name));
    std::fs::write(&file, &case.prototxt).unwrap();
    for (name, a) in &case.files {
        let blob = BlobProto::with_shape(&a.shape, a.data.clone());
        flickr_style::caffe::write_binary(&dir.join(name), &blob).unwrap();
    }
    let def = read_net_prototxt(&file).unwrap();
    let phase = if case.phase == "TRAIN" {
        Phase::Train
    } else {
        Phase::Test
    };
    let mut ctx = BuildContext::cpu(dir, 1, phase);
    ctx.tensor_ops = tensor_ops;
    ctx.fused = fused;
    let mut net = match Net::new(&def, &ctx, None) {
        Ok(n) => n,
        Err(e) => return vec![format!("build: {e}")],
    };
    let under_test: Vec<usize> = (0..net.params().len())
        .filter(|&i| net.param_layer_name(i) == "under_test")
        .collect();
    if under_test.len() != case.params.len() {
        return vec![format!(
            "{} parameter blobs, Caffe {}",
            under_test.len(),
            case.params.len()
        )];
    }
    let device = candle_core::Device::Cpu;
    let tensor = |a: &Array| {
        candle_core::Tensor::from_vec(a.data.clone(), a.shape.as_slice(), &device).unwrap()
    };
    for (j, (&i, p)) in under_test.iter().zip(&case.params).enumerate() {
        if case.filled {
            bad.extend(compare(format!("parameter {j} as filled"), net.param(i), p));
        }
        net.set_param(i, tensor(p)).unwrap();
    }
    let inputs = case.inputs.iter().map(tensor).collect();
    let objective = match net.forward_batch(inputs) {
        Ok(l) => l,
        Err(e) => return vec![format!("forward: {e}")],
    };
    let tolerance = 1e-5 * case.objective.abs().max(1.0) + 1e-4;
    if (f64::from(objective) - case.objective).abs() > tolerance {
        bad.push(format!("objective {objective}, Caffe {}", case.objective));
    }
    for (k, want) in case.tops.iter().enumerate() {
        match net.layer_top("under_test", k) {
            Some(t) => bad.extend(compare(format!("top {k}"), t, want)),
            None => bad.push(format!("top {k} missing")),
        }
    }
    if let Some(after) = &case.params_after_forward {
        for (j, (&i, want)) in under_test.iter().zip(after).enumerate() {
            bad.extend(compare(
                format!("parameter {j} after forward"),
                net.param(i),
                want,
            ));
        }
    }
    if let Err(e) = net.backward() {
        bad.push(format!("backward: {e}"));
        return bad;
    }
    for (j, (&i, want)) in under_test.iter().zip(&case.param_grads).enumerate() {
        bad.extend(compare(
            format!("parameter {j} gradient"),
            &net.grad(i).unwrap(),
            want,
        ));
    }
    for (x, want) in case.input_grads.iter().enumerate() {
        let name = format!("dx{x}");
        let i = (0..net.params().len()).find(|&i| net.param_layer_name(i) == name);
        match i {
            Some(i) => bad.extend(compare(
                format!("input {x} gradient"),
                &net.grad(i).unwrap(),
                want,
            )),
            None => bad.push(format!("no layer {name}")),
        }
    }
    bad
}

/// Cases the tensor ops refuse to build, with what the error must say
/// (none now: unequal convolution strides run at stride 1 and subsample).
const TENSOR_OPS_REFUSE: [(&str, &str); 0] = [];

#[test]
fn every_layer_matches_caffe_forward_and_backward() {
    let cases: Vec<Case> = common::golden::load_cases("caffe_layers.json");
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for case in &cases {
        let refused = TENSOR_OPS_REFUSE.iter().find(|r| r.0 == case.name);
        for (label, tensor_ops, fused) in PATHS {
            let mut problems = check(case, dir.path(), tensor_ops, fused);
            if let (Some((_, why)), true) = (refused, tensor_ops) {
                match problems.as_slice() {
                    [p] if p.starts_with("build:") && p.contains(why) => problems.clear(),
                    _ => problems.push(format!("expected a refusal saying '{why}'")),
                }
            }
            for problem in problems {
                failures.push(format!("{} ({label}): {problem}", case.name));
            }
        }
    }
    common::golden::assert_agree(&failures);
}
