//! Caffe's data layers against a real Caffe: `tests/data/caffe_data.json`,
//! made by `scripts/caffe-golden/run.sh` (pycaffe 1.0.0 from Debian
//! bullseye, which decodes and resizes with OpenCV 4.5). Each case is one
//! TEST-phase Data or ImageData layer over the fixture images or the tiny-net
//! LMDB (crop, mean file or values, scale, resize, gray); for four batches
//! (the fourth wraps around) the labels must be Caffe's and the data blob's
//! fingerprint (sum, sum of squares, 64 sampled values) must agree.
mod common;
use common::golden::{assert_agree, Fingerprint};
use flickr_style::caffe::model::read_net_prototxt;
use flickr_style::caffe::proto::Phase;
use flickr_style::train::layers::BuildContext;
use flickr_style::train::net::Net;
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    provenance: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    prototxt: String,
    batches: Vec<Batch>,
}

#[derive(Deserialize)]
struct Batch {
    shape: Vec<usize>,
    labels: Vec<i64>,
    data: Fingerprint,
}

/// Runs one case; returns what disagrees with Caffe.
fn check(case: &Case, dir: &std::path::Path, tensor_ops: bool) -> Vec<String> {
    let file = dir.join(format!("{}.prototxt", case.name));
    std::fs::write(&file, &case.prototxt).unwrap();
    let def = read_net_prototxt(&file).unwrap();
    let mut ctx = BuildContext::cpu(common::fixture(""), 1, Phase::Test);
    ctx.tensor_ops = tensor_ops;
    let mut net = match Net::new(&def, &ctx, None) {
        Ok(n) => n,
        Err(e) => return vec![format!("build: {e}")],
    };
    let mut bad = Vec::new();
    for (b, want) in case.batches.iter().enumerate() {
        if let Err(e) = net.forward() {
            return vec![format!("batch {b}: {e}")];
        }
        let data = net.blob("data").unwrap();
        if data.dims() != want.shape.as_slice() {
            bad.push(format!(
                "batch {b}: shape {:?}, Caffe {:?}",
                data.dims(),
                want.shape
            ));
            continue;
        }
        let labels: Vec<i64> = net
            .blob("label")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|&l| l as i64)
            .collect();
        if labels != want.labels {
            bad.push(format!(
                "batch {b}: labels {labels:?}, Caffe {:?}",
                want.labels
            ));
        }
        let got: Vec<f32> = data.flatten_all().unwrap().to_vec1().unwrap();
        // Pixels are integers and the transforms a multiply-add each, so
        // any real difference (a pixel off by one) shows far above 1e-6.
        match want.data.errors(&got) {
            Ok(e) if e.sum_over_root.max(e.sum_sq).max(e.values) > 1e-6 => {
                bad.push(format!("batch {b}: {e:?}"))
            }
            Ok(_) => {}
            Err(why) => bad.push(format!("batch {b}: {why}")),
        }
    }
    bad
}

#[test]
fn data_layers_give_caffes_batches() {
    let golden: Golden = common::golden::load("caffe_data.json");
    eprintln!("golden numbers: {}", golden.provenance);
    assert!(golden.cases.len() >= 7);
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for case in &golden.cases {
        for (label, tensor_ops) in [("cpu kernels", false), ("tensor ops", true)] {
            for problem in check(case, dir.path(), tensor_ops) {
                failures.push(format!("{} ({label}): {problem}", case.name));
            }
        }
    }
    assert_agree(&failures);
}
