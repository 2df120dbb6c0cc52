//! Caffe's data layers against a real Caffe: `tests/data/caffe_data.json`,
//! made by `scripts/caffe-golden/run.sh` (pycaffe 1.0.0 from Debian
//! bullseye, which decodes and resizes with OpenCV 4.5). Each case is a
//! Data or ImageData layer over the fixture images or the tiny-net LMDB
//! (crop, mean file or values, scale, resize, gray), or a WindowData layer
//! over boxes in the fixture photos (context padding, square crops,
//! mirrored windows, foreground and background sampling); for several batches
//! (past a wrap-around) the labels must be Caffe's and the data blob's
//! fingerprint (sum, sum of squares, 64 sampled values) must agree. The
//! seeded cases set Caffe's random seed, as a solver's `random_seed` does:
//! their random crops, mirrors, list shuffles (one per epoch) and ImageData
//! `rand_skip` must be the ones Caffe drew, also with two data layers
//! drawing from one generator.
mod common;
use common::golden::{assert_agree, on_both_paths, Fingerprint};
use flickr_style::caffe::model::read_net_prototxt;
use flickr_style::caffe::proto::Phase;
use flickr_style::train::layers::BuildContext;
use flickr_style::train::net::Net;
use serde::Deserialize;

#[derive(Deserialize)]
struct Case {
    name: String,
    prototxt: String,
    batches: Vec<Batch>,
    /// Seeded cases: the phase built and Caffe's random seed.
    phase: Option<String>,
    seed: Option<u64>,
    /// Files the net reads besides the fixtures (WindowData's window
    /// file), by name: written beside the net, which names them by path.
    #[serde(default)]
    files: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Batch {
    shape: Vec<usize>,
    labels: Vec<i64>,
    data: Fingerprint,
    /// The second data layer's tops (`data2`, `label2`), if any.
    shape2: Option<Vec<usize>>,
    labels2: Option<Vec<i64>>,
    data2: Option<Fingerprint>,
}

impl Batch {
    /// (top suffix, shape, labels, fingerprint) per data layer.
    fn tops(&self) -> Vec<(&str, &[usize], &[i64], &Fingerprint)> {
        let mut tops = vec![("", &self.shape[..], &self.labels[..], &self.data)];
        if let (Some(s), Some(l), Some(d)) = (&self.shape2, &self.labels2, &self.data2) {
            tops.push(("2", &s[..], &l[..], d));
        }
        tops
    }
}

/// Runs one case; returns what disagrees with Caffe.
fn check(case: &Case, dir: &std::path::Path, tensor_ops: bool) -> Vec<String> {
    let file = dir.join(format!("{}.prototxt", case.name));
    let mut prototxt = case.prototxt.clone();
    for (name, text) in &case.files {
        let path = dir.join(format!("{}_{name}", case.name));
        std::fs::write(&path, text).unwrap();
        prototxt = prototxt.replace(
            &format!("\"{name}\""),
            &format!("\"{}\"", common::slashed(&path)),
        );
    }
    std::fs::write(&file, &prototxt).unwrap();
    let def = read_net_prototxt(&file).unwrap();
    let phase = match case.phase.as_deref() {
        Some("TRAIN") => Phase::Train,
        _ => Phase::Test,
    };
    let mut ctx = BuildContext::cpu(common::fixture(""), case.seed.unwrap_or(1), phase);
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
        for (suffix, shape, labels, fingerprint) in want.tops() {
            let data = net.blob(&format!("data{suffix}")).unwrap();
            if data.dims() != shape {
                bad.push(format!(
                    "batch {b} data{suffix}: shape {:?}, Caffe {shape:?}",
                    data.dims()
                ));
                continue;
            }
            let got_labels: Vec<i64> = net
                .blob(&format!("label{suffix}"))
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|&l| l as i64)
                .collect();
            if got_labels != labels {
                bad.push(format!(
                    "batch {b} label{suffix}: {got_labels:?}, Caffe {labels:?}"
                ));
            }
            let got: Vec<f32> = data.flatten_all().unwrap().to_vec1().unwrap();
            // Pixels are integers and the transforms a multiply-add each, so
            // any real difference (a pixel off by one, another crop or
            // mirror) shows far above 1e-6.
            match fingerprint.errors(&got) {
                Ok(e) if e.sum_over_root.max(e.sum_sq).max(e.values) > 1e-6 => {
                    bad.push(format!("batch {b} data{suffix}: {e:?}"))
                }
                Ok(_) => {}
                Err(why) => bad.push(format!("batch {b} data{suffix}: {why}")),
            }
        }
    }
    bad
}

#[test]
fn data_layers_give_caffes_batches() {
    let cases: Vec<Case> = common::golden::load_cases("caffe_data.json");
    assert!(cases.len() >= 19);
    assert!(cases.iter().filter(|c| c.seed.is_some()).count() >= 12);
    assert!(
        cases
            .iter()
            .filter(|c| c.prototxt.contains("WindowData"))
            .count()
            >= 3
    );
    let dir = tempfile::tempdir().unwrap();
    let failures = on_both_paths(
        &cases,
        |c| &c.name,
        |c, tensor_ops| check(c, dir.path(), tensor_ops),
    );
    assert_agree(&failures);
}
