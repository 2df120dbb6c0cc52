//! Caffe's fillers against a real Caffe: `tests/data/caffe_fillers.json`,
//! made by `scripts/caffe-golden/run.sh` (pycaffe 1.0.0 from Debian
//! bullseye, boost 1.74). Each case is a TRAIN net built after
//! `caffe.set_random_seed`: Gaussian (dozens of draws from the normal's
//! tail), uniform, Xavier and MSRA in each variance norm, positive_unitball,
//! sparse Gaussian, PReLU, Scale and Bias fillers, a Deconvolution, and
//! fillers drawn after a data layer's own draws. Built from the same seed,
//! every parameter blob must be Caffe's to the bit (its SHA-256).
mod common;
use common::golden::{assert_agree, on_both_paths, Fingerprint};
use flickr_style::caffe::model::read_net_prototxt;
use flickr_style::caffe::proto::Phase;
use flickr_style::train::layers::BuildContext;
use flickr_style::train::net::Net;
use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Deserialize)]
struct Case {
    name: String,
    seed: u64,
    prototxt: String,
    params: Vec<Param>,
}

#[derive(Deserialize)]
struct Param {
    layer: String,
    index: usize,
    shape: Vec<usize>,
    sha256: String,
    #[serde(flatten)]
    values: Fingerprint,
}

/// Builds one case; returns what differs from Caffe.
fn check(case: &Case, dir: &std::path::Path, tensor_ops: bool) -> Vec<String> {
    let file = dir.join(format!("{}.prototxt", case.name));
    std::fs::write(&file, &case.prototxt).unwrap();
    let def = read_net_prototxt(&file).unwrap();
    let mut ctx = BuildContext::cpu(common::fixture(""), case.seed, Phase::Train);
    ctx.tensor_ops = tensor_ops;
    let net = match Net::new(&def, &ctx, None) {
        Ok(n) => n,
        Err(e) => return vec![format!("build: {e}")],
    };
    if net.params().len() != case.params.len() {
        return vec![format!(
            "{} parameter blobs, Caffe {}",
            net.params().len(),
            case.params.len()
        )];
    }
    let mut bad = Vec::new();
    for (i, want) in case.params.iter().enumerate() {
        let what = format!("{} blob {}", want.layer, want.index);
        let t = net.param(i);
        if t.dims() != want.shape.as_slice() {
            bad.push(format!(
                "{what}: shape {:?}, Caffe {:?}",
                t.dims(),
                want.shape
            ));
            continue;
        }
        let got: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let bytes: Vec<u8> = got.iter().flat_map(|v| v.to_le_bytes()).collect();
        let hash = format!("{:x}", Sha256::digest(&bytes));
        if hash != want.sha256 {
            let differ = match want.values.errors(&got) {
                Ok(e) => format!("{e:?}"),
                Err(why) => why,
            };
            bad.push(format!("{what}: other values than Caffe's ({differ})"));
        }
    }
    bad
}

#[test]
fn fillers_draw_caffes_values_from_its_seed() {
    let cases: Vec<Case> = common::golden::load_cases("caffe_fillers.json");
    assert!(cases.len() >= 6);
    let dir = tempfile::tempdir().unwrap();
    let failures = on_both_paths(
        &cases,
        |c| &c.name,
        |c, tensor_ops| check(c, dir.path(), tensor_ops),
    );
    assert_agree(&failures);
}
