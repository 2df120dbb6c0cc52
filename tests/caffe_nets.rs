//! Whole model-zoo nets against a real Caffe: `tests/data/caffe_nets.json`,
//! made by `scripts/caffe-golden/run.sh` (pycaffe 1.0.0 from Debian
//! bullseye, CPU). GoogLeNet (both auxiliary heads) and ResNet-18 (in-place
//! BatchNorm and Scale in TRAIN mode, projection shortcuts), at 224x224 with
//! an eighth of the channels and no Dropout, batch 2. Weights and inputs
//! come from formulas both sides compute (see `nets.py`); the weighted loss,
//! every blob after the forward pass and every parameter gradient must
//! agree (sum, sum of squares, 16 sampled values each).
mod common;
use candle_core::{Device, Tensor};
use common::golden::{assert_agree, Fingerprint};
use flickr_style::caffe::model::read_net_prototxt;
use flickr_style::caffe::proto::Phase;
use flickr_style::train::layers::BuildContext;
use flickr_style::train::net::Net;
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct Golden {
    provenance: String,
    nets: Vec<GoldenNet>,
}

#[derive(Deserialize)]
struct GoldenNet {
    name: String,
    prototxt: String,
    params: Vec<Formula>,
    loss: f64,
    blobs: BTreeMap<String, Fingerprint>,
    grads: Vec<Grad>,
}

#[derive(Deserialize)]
struct Formula {
    layer: String,
    index: usize,
    offset: f64,
    amp: f64,
}

#[derive(Deserialize)]
struct Grad {
    layer: String,
    index: usize,
    #[serde(flatten)]
    print: Fingerprint,
}

/// `offset + amp * (2u - 1)` for i in 0..n, u from nets.py's 32-bit
/// integer hash of (i, k): exact on both sides.
fn formula(n: usize, offset: f64, amp: f64, k: usize) -> Vec<f32> {
    const M: u64 = 0xFFFF_FFFF;
    (0..n as u64)
        .map(|i| {
            let mut h = (i.wrapping_mul(2_654_435_761) + (k as u64 * 40503 + 12345)) & M;
            h ^= h >> 15;
            h = h.wrapping_mul(2_246_822_519) & M;
            h ^= h >> 13;
            let u = h as f64 / 4_294_967_296.0;
            (offset + amp * (2.0 * u - 1.0)) as f32
        })
        .collect()
}

/// What is wrong with `got` against a fingerprint, if anything: the sum
/// within `tol` per value of the values' root mean square (our BatchNorm
/// sums its statistics in f64, Caffe in f32: a whole channel moves by
/// 1e-7, which adds up over a large blob), the sum of squares within `tol`
/// relative, and the sampled values within `tol` of the largest of them.
fn differs(what: &str, got: &Tensor, want: &Fingerprint, tol: f64) -> Option<String> {
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    match want.errors(&got) {
        Ok(e) if e.sum_per_value.max(e.sum_sq).max(e.values) > tol => {
            Some(format!("{what}: {e:?}"))
        }
        Ok(_) => None,
        Err(why) => Some(format!("{what}: {why}")),
    }
}

fn check(g: &GoldenNet, dir: &std::path::Path, tensor_ops: bool) -> Vec<String> {
    // Deep nets sum many products in another order than Caffe's BLAS.
    const TOL: f64 = 5e-5;
    let file = dir.join(format!("{}.prototxt", g.name));
    std::fs::write(&file, &g.prototxt).unwrap();
    let def = read_net_prototxt(&file).unwrap();
    let mut ctx = BuildContext::cpu(dir, 1, Phase::Train);
    ctx.tensor_ops = tensor_ops;
    let mut net = match Net::new(&def, &ctx, None) {
        Ok(n) => n,
        Err(e) => return vec![format!("build: {e}")],
    };
    let mut bad = Vec::new();
    let find = |net: &Net, layer: &str, index: usize| {
        (0..net.params().len())
            .find(|&i| net.param_layer_name(i) == layer && net.params()[i].index == index)
    };
    if net.params().len() != g.params.len() {
        bad.push(format!(
            "{} parameter blobs, Caffe {}",
            net.params().len(),
            g.params.len()
        ));
    }
    for (k, f) in g.params.iter().enumerate() {
        let Some(i) = find(&net, &f.layer, f.index) else {
            return vec![format!("no parameter {} {}", f.layer, f.index)];
        };
        let shape = net.param(i).shape().clone();
        let values = formula(shape.elem_count(), f.offset, f.amp, k);
        net.set_param(i, Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
            .unwrap();
    }
    let side = 224;
    let data = formula(2 * 3 * side * side, 0.0, 1.0, 1000);
    let inputs = vec![
        Tensor::from_vec(data, (2, 3, side, side), &Device::Cpu).unwrap(),
        Tensor::from_vec(vec![0.0f32, 1.0], 2, &Device::Cpu).unwrap(),
    ];
    let loss = match net.forward_batch(inputs) {
        Ok(l) => f64::from(l),
        Err(e) => return vec![format!("forward: {e}")],
    };
    if (loss - g.loss).abs() / g.loss.abs() > 1e-5 {
        bad.push(format!("loss {loss}, Caffe {}", g.loss));
    }
    for (name, want) in &g.blobs {
        match net.blob(name) {
            Some(t) => bad.extend(differs(&format!("blob '{name}'"), t, want, TOL)),
            None => bad.push(format!("no blob '{name}'")),
        }
    }
    if let Err(e) = net.backward() {
        bad.push(format!("backward: {e}"));
        return bad;
    }
    for gr in &g.grads {
        let what = format!("gradient of {} {}", gr.layer, gr.index);
        match find(&net, &gr.layer, gr.index) {
            Some(i) => bad.extend(differs(&what, &net.grad(i).unwrap(), &gr.print, TOL)),
            None => bad.push(format!("no parameter for {what}")),
        }
    }
    bad
}

#[test]
fn googlenet_and_resnet18_match_caffe_forward_and_backward() {
    let golden: Golden = common::golden::load("caffe_nets.json");
    eprintln!("golden numbers: {}", golden.provenance);
    assert_eq!(golden.nets.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for g in &golden.nets {
        for (label, tensor_ops) in [("cpu kernels", false), ("tensor ops", true)] {
            for problem in check(g, dir.path(), tensor_ops) {
                failures.push(format!("{} ({label}): {problem}", g.name));
            }
        }
    }
    assert_agree(&failures);
}
