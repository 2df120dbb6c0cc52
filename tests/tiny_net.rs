//! The trainer against real Caffe on the tiny CaffeNet-shaped net
//! (`../shared/caffe-ref/fixtures/tiny-net`, see its README): per-layer
//! forward blobs and parameter gradients of the first batch from pycaffe.
mod common;
use candle_core::Device;
use flickr_style::caffe::model::{read_caffemodel, read_net_prototxt};
use flickr_style::caffe::proto::Phase;
use flickr_style::train::layers::BuildContext;
use flickr_style::train::net::Net;
use std::path::Path;

fn npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let f = npyz::NpyFile::new(bytes.as_slice()).unwrap();
    let shape = f.shape().iter().map(|&d| d as usize).collect();
    (shape, f.into_vec::<f32>().unwrap())
}

/// Largest |a-b| / max(|b|, floor) over the arrays.
fn rel_err(a: &[f32], b: &[f32], floor: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(floor);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

fn tiny_net(phase: Phase) -> Net {
    let dir = common::fixture("tiny-net");
    let def = read_net_prototxt(&dir.join("train_val.prototxt")).unwrap();
    let ctx = BuildContext {
        base_dir: dir.clone(),
        seed: 1701,
        phase,
        device: Device::Cpu,
    };
    let mut net = Net::new(&def, &ctx, None).unwrap();
    let init = read_caffemodel(&dir.join("snapshots/init_iter_0.caffemodel")).unwrap();
    net.copy_trained_from(&init, "init_iter_0.caffemodel")
        .unwrap();
    net
}

#[test]
fn first_batch_forward_and_gradients_match_pycaffe() {
    let dir = common::fixture("tiny-net/pycaffe");
    let mut net = tiny_net(Phase::Train);
    let loss = net.forward().unwrap();
    let summary = net.layer_summary();
    let no_backward: Vec<&str> = summary
        .iter()
        .filter(|s| !s.2)
        .map(|s| s.0.as_str())
        .collect();
    // Caffe: conv1 (frozen), relu1, pool1, norm1, data and accuracy need no backward.
    assert_eq!(
        no_backward,
        ["data", "conv1", "relu1", "pool1", "norm1", "accuracy"]
    );
    let mut files: Vec<_> = std::fs::read_dir(dir.join("forward"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let stem = f.file_stem().unwrap().to_string_lossy().into_owned();
        let (_, rest) = stem.split_once('_').unwrap();
        let (layer, top) = rest.split_once("__").unwrap();
        let (shape, want) = npy(&f);
        let index = if layer == "data" && top == "label" {
            1
        } else {
            0
        };
        let got = net
            .layer_top(layer, index)
            .unwrap_or_else(|| panic!("{layer}"));
        assert_eq!(got.dims(), shape.as_slice(), "{stem}");
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let err = rel_err(&got, &want, 1e-3);
        eprintln!("{stem}: max rel err {err:.2e}");
        assert!(err < 1e-5, "{stem}: {err}");
    }
    assert!((loss - 1.3775332).abs() < 1e-5, "{loss}");

    net.backward().unwrap();
    for i in 0..net.params().len() {
        let layer = net.param_layer_name(i).to_string();
        let idx = net.params()[i].index;
        let (_, want) = npy(&dir.join(format!("grads/{layer}_{idx}.npy")));
        let got = net
            .grad(i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let err = rel_err(&got, &want, 1e-8);
        eprintln!("grad {layer}_{idx}: max rel err {err:.2e}");
        if layer == "conv1" {
            assert!(
                got.iter().all(|&v| v == 0.0),
                "frozen conv1 has no gradient"
            );
        } else {
            assert!(err < 1e-5, "grad {layer}_{idx}: {err}");
        }
    }
}
