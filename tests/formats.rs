//! Caffe's protobuf formats: every upstream and fixture `.prototxt` parses,
//! real Caffe snapshots decode and re-encode byte-for-byte, and every message
//! type round-trips through our writer and reader.
mod common;
use common::{caffe_ref, fixture};
use flickr_style::caffe::proto::{BlobShape, Datum, NetParameter, SolverParameter, SolverState};
use flickr_style::caffe::{model, prototxt, read_binary, write_binary, BlobProto};
use prost::Message;
use std::path::{Path, PathBuf};

fn prototxts(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            prototxts(&p, out);
        } else if p.extension().is_some_and(|x| x == "prototxt") {
            out.push(p);
        }
    }
}

#[test]
fn every_shared_prototxt_parses() {
    let mut files = Vec::new();
    prototxts(&caffe_ref(), &mut files);
    assert!(files.len() >= 16, "found {}", files.len());
    for f in files {
        let name = f.file_name().unwrap().to_str().unwrap();
        if name.starts_with("solver") {
            let s: SolverParameter = prototxt::read(&f).unwrap_or_else(|e| panic!("{e}"));
            assert!(s.base_lr() > 0.0 || s.max_iter() == 0, "{}", f.display());
        } else {
            let net = model::read_net_prototxt(&f).unwrap_or_else(|e| panic!("{e}"));
            assert!(!net.layer.is_empty(), "{}", f.display());
            assert!(net.layer.iter().all(|l| !l.r#type().is_empty()));
        }
    }
}

#[test]
fn flickr_recipe_prototxts_have_the_expected_content() {
    let dir = caffe_ref().join("models/finetune_flickr_style");
    let net = model::read_net_prototxt(&dir.join("train_val.prototxt")).unwrap();
    let fc8 = net.layer.iter().find(|l| l.name() == "fc8_flickr").unwrap();
    assert_eq!(fc8.inner_product_param.as_ref().unwrap().num_output(), 20);
    assert_eq!(fc8.param[0].lr_mult(), 10.0);
    let conv1 = net.layer.iter().find(|l| l.name() == "conv1").unwrap();
    let c = conv1.convolution_param.as_ref().unwrap();
    assert_eq!((c.num_output(), c.kernel_size[0], c.stride[0]), (96, 11, 4));
    let solver: SolverParameter = prototxt::read(&dir.join("solver.prototxt")).unwrap();
    assert_eq!(
        (solver.base_lr(), solver.stepsize(), solver.lr_policy()),
        (0.001, 20000, "step")
    );
}

#[test]
fn malformed_prototxt_is_an_error_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.prototxt");
    std::fs::write(
        &p,
        "name: \"x\"\nlayer {\n  name: \"a\"\n  type: \"ReLU\"\n",
    )
    .unwrap();
    let e = model::read_net_prototxt(&p).unwrap_err().to_string();
    assert!(e.contains("bad.prototxt:"), "{e}");
    assert!(e.contains("end of input"), "{e}");
    std::fs::write(&p, "layer { name: \"a\" convolution_param { kernel: 3 } }").unwrap();
    let e = model::read_net_prototxt(&p).unwrap_err().to_string();
    assert!(
        e.contains("bad.prototxt:1:") && e.contains("'kernel'"),
        "{e}"
    );
    std::fs::write(&p, "layers { name: \"a\" type: NOT_A_TYPE }").unwrap();
    let e = model::read_net_prototxt(&p).unwrap_err().to_string();
    assert!(e.contains("NOT_A_TYPE"), "{e}");
}

#[test]
fn caffe_snapshots_decode_and_reencode_exactly() {
    let snap = fixture("tiny-net/snapshots");
    let bytes = std::fs::read(snap.join("tiny_iter_30.caffemodel")).unwrap();
    let net = NetParameter::decode(bytes.as_slice()).unwrap();
    assert_eq!(
        net.encode_to_vec(),
        bytes,
        "caffemodel re-encodes byte-identically"
    );
    let fc6 = net.layer.iter().find(|l| l.name() == "fc6").unwrap();
    assert_eq!(fc6.blobs[0].dims(), vec![64, 1568]);
    assert!(net.layer.iter().any(|l| l.name() == "fc8_fc8_0_split"));

    let state_bytes = std::fs::read(snap.join("tiny_iter_15.solverstate")).unwrap();
    let state = SolverState::decode(state_bytes.as_slice()).unwrap();
    assert_eq!(state.iter(), 15);
    assert_eq!(state.learned_net(), "snapshots/tiny_iter_15.caffemodel");
    assert_eq!(state.history.len(), 12, "conv1..fc8, weight and bias each");
    assert_eq!(state.current_step(), 1);
    assert_eq!(state.encode_to_vec(), state_bytes);
}

#[test]
fn v1_caffemodel_is_upgraded_on_load() {
    // Build a V1 model (as the model zoo's CaffeNet is stored) and load it.
    use flickr_style::caffe::proto::v1_layer_parameter::LayerType;
    use flickr_style::caffe::V1LayerParameter;
    let v1 = NetParameter {
        name: Some("CaffeNet".into()),
        layers: vec![V1LayerParameter {
            name: Some("fc8".into()),
            r#type: Some(LayerType::InnerProduct as i32),
            blobs: vec![
                BlobProto::legacy_4d(1, 1, 1000, 4096, vec![0.5; 4096 * 1000]),
                BlobProto::legacy_4d(1, 1, 1, 1000, vec![0.0; 1000]),
            ],
            blobs_lr: vec![1.0, 2.0],
            weight_decay: vec![1.0, 0.0],
            ..Default::default()
        }],
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v1.caffemodel");
    write_binary(&p, &v1).unwrap();
    let net = model::read_caffemodel(&p).unwrap();
    assert_eq!(net.layer[0].r#type(), "InnerProduct");
    assert!(flickr_style::caffe::blob::shape_equals(
        &net.layer[0].blobs[0],
        &[1000, 4096]
    ));
    assert_eq!(net.layer[0].param[1].decay_mult(), 0.0);
}

#[test]
fn garbage_caffemodel_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("garbage.caffemodel");
    std::fs::write(&p, b"\xff\xff\xff\xff this is not protobuf \x00\x01").unwrap();
    let e = model::read_caffemodel(&p).unwrap_err().to_string();
    assert!(
        e.contains("garbage.caffemodel: not a valid caffemodel"),
        "{e}"
    );
    // A truncated real model is rejected too.
    let good = std::fs::read(fixture("tiny-net/snapshots/init_iter_0.caffemodel")).unwrap();
    std::fs::write(&p, &good[..good.len() / 2]).unwrap();
    assert!(model::read_caffemodel(&p).is_err());
}

#[test]
fn every_message_round_trips_through_files() {
    let dir = tempfile::tempdir().unwrap();
    fn check<T: Message + Default + PartialEq + std::fmt::Debug>(
        dir: &Path,
        name: &'static str,
        msg: T,
    ) {
        let p = dir.join(name);
        write_binary(&p, &msg).unwrap();
        let back: T = read_binary(&p, name).unwrap();
        assert_eq!(back, msg, "{name}");
    }
    check(dir.path(), "datum", Datum::encoded_bytes(vec![1, 2, 3], 7));
    check(
        dir.path(),
        "blob",
        BlobProto {
            shape: Some(BlobShape { dim: vec![2, 3] }),
            data: vec![1.0; 6],
            diff: vec![0.5; 6],
            double_diff: vec![0.25; 6],
            ..Default::default()
        },
    );
    check(
        dir.path(),
        "blob_legacy",
        BlobProto::legacy_4d(1, 3, 1, 1, vec![1.0, 2.0, 3.0]),
    );
    let net = model::read_net_prototxt(
        &caffe_ref().join("models/finetune_flickr_style/train_val.prototxt"),
    )
    .unwrap();
    check(dir.path(), "net", net.clone());
    let solver: SolverParameter =
        prototxt::read(&caffe_ref().join("models/finetune_flickr_style/solver.prototxt")).unwrap();
    check(dir.path(), "solver", solver.clone());
    check(
        dir.path(),
        "state",
        SolverState {
            iter: Some(15),
            learned_net: Some("x_iter_15.caffemodel".into()),
            history: vec![BlobProto::with_shape(&[2], vec![0.1, 0.2])],
            current_step: Some(1),
        },
    );
    // And the text format round-trips too.
    let text = prototxt::to_string(&net);
    let again: NetParameter = prototxt::parse(&text, Path::new("printed")).unwrap();
    assert_eq!(again, net);
    let text = prototxt::to_string(&solver);
    assert_eq!(
        prototxt::parse::<SolverParameter>(&text, Path::new("s")).unwrap(),
        solver
    );
}
