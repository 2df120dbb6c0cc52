//! The trainer against real Caffe on the tiny CaffeNet-shaped net
//! (`../shared/caffe-ref/fixtures/tiny-net`, see its README): per-layer
//! forward blobs and parameter gradients of the first batch from pycaffe.
mod common;
use flickr_style::caffe::model::{read_caffemodel, read_net_prototxt};
use flickr_style::caffe::proto::Phase;
use flickr_style::train::layers::BuildContext;
use flickr_style::train::net::Net;
use std::path::{Path, PathBuf};

fn tiny_net(phase: Phase) -> Net {
    let dir = common::fixture("tiny-net");
    let def = read_net_prototxt(&dir.join("train_val.prototxt")).unwrap();
    let ctx = BuildContext::cpu(&dir, 1701, phase);
    let mut net = Net::new(&def, &ctx, None).unwrap();
    let init = read_caffemodel(&dir.join("snapshots/init_iter_0.caffemodel")).unwrap();
    net.copy_trained_from(&init, "init_iter_0.caffemodel")
        .unwrap();
    net
}

/// The fixture's `init_iter_0.caffemodel` is Caffe's TRAIN net filled from
/// `random_seed: 1701` (Gaussian weights, constant biases), written before
/// any step. Built from the same seed, our net's weights are those, bit for
/// bit: the fillers draw as Caffe's do, after the data layer's draw.
#[test]
fn fillers_draw_caffes_initial_weights_from_random_seed() {
    let dir = common::fixture("tiny-net");
    let def = read_net_prototxt(&dir.join("train_val.prototxt")).unwrap();
    let net = Net::new(&def, &BuildContext::cpu(&dir, 1701, Phase::Train), None).unwrap();
    let init = read_caffemodel(&dir.join("snapshots/init_iter_0.caffemodel")).unwrap();
    let caffe: Vec<Vec<f32>> = init
        .layer
        .iter()
        .flat_map(|l| l.blobs.iter().map(|b| b.data.clone()))
        .collect();
    assert_eq!(caffe.len(), net.params().len());
    let mut compared = 0;
    for (i, want) in caffe.iter().enumerate() {
        let got: Vec<f32> = net.param(i).flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got.len(), want.len(), "parameter {i}");
        let differ = got
            .iter()
            .zip(want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ,
            0,
            "parameter {i}: {differ} of {} values differ",
            want.len()
        );
        compared += want.len();
    }
    assert!(compared > 50_000, "{compared}");
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
        let (shape, want) = common::npy(&f);
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
        let err = common::rel_err(&got, &want, 1e-3);
        eprintln!("{stem}: max rel err {err:.2e}");
        assert!(err < 1e-5, "{stem}: {err}");
    }
    assert!((loss - 1.3775332).abs() < 1e-5, "{loss}");

    net.backward().unwrap();
    for i in 0..net.params().len() {
        let layer = net.param_layer_name(i).to_string();
        let idx = net.params()[i].index;
        let (_, want) = common::npy(&dir.join(format!("grads/{layer}_{idx}.npy")));
        let got = net
            .grad(i)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let err = common::rel_err(&got, &want, 1e-8);
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

use flickr_style::train::solver::Solver;

fn solver(prefix: &Path, solver_file: &str) -> Solver {
    common::solver_in(&common::fixture("tiny-net"), solver_file, prefix).unwrap()
}

fn caffe_trajectory() -> Vec<f32> {
    std::fs::read_to_string(common::fixture(
        "tiny-net/pycaffe/trajectory_full_precision.csv",
    ))
    .unwrap()
    .lines()
    .skip(1)
    .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
    .collect()
}

#[test]
fn one_sgd_step_matches_params_after_iter1() {
    let t = tempfile::tempdir().unwrap();
    let mut s = solver(&t.path().join("one"), "solver.prototxt");
    s.load_weights(&[PathBuf::from("snapshots/init_iter_0.caffemodel")])
        .unwrap();
    run_iterations(&mut s, 1);
    let dir = common::fixture("tiny-net/pycaffe/params_after_iter1");
    for i in 0..s.train.params().len() {
        let layer = s.train.param_layer_name(i).to_string();
        let idx = s.train.params()[i].index;
        let (_, want) = common::npy(&dir.join(format!("{layer}_{idx}.npy")));
        let got = s
            .train
            .param(i)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let err = common::rel_err(&got, &want, 1e-8);
        eprintln!("after step 1 {layer}_{idx}: max rel err {err:.2e}");
        assert!(err < 1e-5, "{layer}_{idx}: {err}");
    }
}

/// Runs `n` iterations through the public solve loop with max_iter = iter + n.
fn run_iterations(s: &mut Solver, n: usize) {
    let target = s.iter + n;
    s.set_max_iter(target);
    s.set_snapshot_after_train(false);
    s.solve().unwrap();
}

#[test]
fn thirty_iterations_match_caffe_and_resume_exactly() {
    let t = tempfile::tempdir().unwrap();
    let prefix = t.path().join("tiny");
    let mut s = solver(&prefix, "solver.prototxt");
    s.load_weights(&[PathBuf::from("snapshots/init_iter_0.caffemodel")])
        .unwrap();
    s.solve().unwrap();
    let want = caffe_trajectory();
    assert_eq!(s.trajectory.len(), 30);
    for ((it, got), w) in s.trajectory.iter().zip(&want) {
        let rel = (got - w).abs() / w.abs();
        assert!(rel < 1e-5, "iteration {it}: {got} vs Caffe {w} ({rel:.2e})");
    }
    // Test outputs at 0, 15 and 30 as in Caffe's log.
    let tests: Vec<(usize, f32, f32)> = s
        .test_results
        .iter()
        .map(|(it, _, r)| {
            (
                *it,
                r.iter().find(|x| x.0 == "accuracy").unwrap().1,
                r.iter().find(|x| x.0 == "loss").unwrap().1,
            )
        })
        .collect();
    let caffe = [
        (0, 0.25, 1.38594),
        (15, 0.458333, 1.27204),
        (30, 0.458333, 1.138),
    ];
    assert_eq!(tests.len(), 3);
    for ((it, acc, loss), (cit, cacc, closs)) in tests.iter().zip(caffe) {
        assert_eq!(*it, cit);
        assert!((acc - cacc).abs() < 1e-5, "test acc at {it}: {acc}");
        assert!(
            (loss - closs).abs() / closs < 1e-5,
            "test loss at {it}: {loss}"
        );
    }
    // Our iteration-30 weights match Caffe's snapshot blob for blob.
    let caffe30 = read_caffemodel(&common::fixture(
        "tiny-net/snapshots/tiny_iter_30.caffemodel",
    ))
    .unwrap();
    let ours30 = read_caffemodel(&t.path().join("tiny_iter_30.caffemodel")).unwrap();
    let mut compared = 0;
    for l in &caffe30.layer {
        if l.blobs.is_empty() {
            continue;
        }
        let o = ours30.layer.iter().find(|x| x.name() == l.name()).unwrap();
        for (a, b) in o.blobs.iter().zip(&l.blobs) {
            assert_eq!(a.dims(), b.dims());
            let err = common::rel_err(&a.values(), &b.values(), 1e-8);
            assert!(err < 1e-5, "{}: {err}", l.name());
            compared += 1;
        }
    }
    assert_eq!(compared, 12);

    // Resume from our own iteration-15 snapshot: iterations 15..29 repeat bit for bit.
    let mut r = solver(&t.path().join("resumed"), "solver.prototxt");
    r.restore(&t.path().join("tiny_iter_15.solverstate"))
        .unwrap();
    assert_eq!(r.iter, 15);
    r.solve().unwrap();
    assert_eq!(r.trajectory, s.trajectory[15..].to_vec());
    let a = std::fs::read(t.path().join("tiny_iter_30.caffemodel")).unwrap();
    let b = std::fs::read(t.path().join("resumed_iter_30.caffemodel")).unwrap();
    assert_eq!(a, b, "resumed run ends with identical weights");

    // Resume from Caffe's own iteration-15 solverstate (no sidecar) reproduces it too,
    // because 15 x 8 images is a whole number of epochs.
    let mut c = solver(&t.path().join("from_caffe"), "solver.prototxt");
    c.restore(&common::fixture(
        "tiny-net/snapshots/tiny_iter_15.solverstate",
    ))
    .unwrap();
    c.solve().unwrap();
    for ((it, got), w) in c.trajectory.iter().zip(&want[15..]) {
        assert!(
            (got - w).abs() / w.abs() < 1e-5,
            "iteration {it}: {got} vs {w}"
        );
    }
}

#[test]
fn unaligned_resume_is_exact_thanks_to_the_sidecar() {
    let t = tempfile::tempdir().unwrap();
    let mut whole = solver(&t.path().join("w"), "solver.prototxt");
    whole
        .load_weights(&[PathBuf::from("snapshots/init_iter_0.caffemodel")])
        .unwrap();
    run_iterations(&mut whole, 14);
    // max_iter 10 and snapshot 10: the snapshot is taken before Caffe's
    // extra reporting forward pass, which also consumes a batch.
    let mut first = solver(&t.path().join("u"), "solver_unaligned_first10.prototxt");
    first
        .load_weights(&[PathBuf::from("snapshots/init_iter_0.caffemodel")])
        .unwrap();
    first.solve().unwrap();
    let mut rest = solver(&t.path().join("u2"), "solver.prototxt");
    rest.restore(&t.path().join("u_iter_10.solverstate"))
        .unwrap();
    run_iterations(&mut rest, 4);
    assert_eq!(rest.trajectory, whole.trajectory[10..14].to_vec());
}

/// The GPU code path (candle tensor ops instead of the CPU kernels), run on
/// the CPU: the whole 30-iteration fixture run stays within 1e-4 of Caffe,
/// the tolerance asked of a GPU run.
#[test]
fn gpu_code_path_on_the_cpu_matches_caffe() {
    tensor_path_matches_caffe(false);
}

/// The same with the fused ops (their CPU twins here), which is what a GPU
/// net runs: checks their wrappers and the layers' fused branches.
#[test]
fn fused_gpu_code_path_on_the_cpu_matches_caffe() {
    tensor_path_matches_caffe(true);
}

/// Checks a 30-iteration loss trajectory against Caffe's, iteration by
/// iteration within `tolerance` (relative); returns the largest error.
fn max_error_vs_caffe(trajectory: &[(usize, f32)], tolerance: f32) -> f32 {
    let want = caffe_trajectory();
    assert_eq!(trajectory.len(), 30);
    let mut worst = 0f32;
    for ((it, got), w) in trajectory.iter().zip(&want) {
        let rel = (got - w).abs() / w.abs();
        worst = worst.max(rel);
        assert!(
            rel < tolerance,
            "iteration {it}: {got} vs Caffe {w} ({rel:.2e})"
        );
    }
    worst
}

/// The fixture's solver on the tensor-op (GPU) code path, run on the CPU.
fn tensor_solver(prefix: &std::path::Path, fused: bool, bf16: bool) -> Solver {
    Solver::new(&flickr_style::train::solver::SolverOptions {
        tensor_ops: true,
        fused,
        bf16,
        ..common::solver_options(&common::fixture("tiny-net"), "solver.prototxt", prefix)
    })
    .unwrap()
}

fn tensor_path_matches_caffe(fused: bool) {
    let t = tempfile::tempdir().unwrap();
    let mut s = tensor_solver(&t.path().join("tensor"), fused, false);
    assert!(s.train.uses_tensor_ops());
    assert_eq!(s.train.uses_fused(), fused);
    s.load_weights(&[PathBuf::from("snapshots/init_iter_0.caffemodel")])
        .unwrap();
    s.solve().unwrap();
    let worst = max_error_vs_caffe(&s.trajectory, 1e-4);
    eprintln!("tensor-op trajectory: max rel err {worst:.2e}");
    let last = s.test_results.last().unwrap();
    assert_eq!(last.0, 30);
    let loss = last.2.iter().find(|x| x.0 == "loss").unwrap().1;
    assert!((loss - 1.138).abs() / 1.138 < 1e-4, "test loss {loss}");
    let caffe30 = read_caffemodel(&common::fixture(
        "tiny-net/snapshots/tiny_iter_30.caffemodel",
    ))
    .unwrap();
    let ours30 = read_caffemodel(&t.path().join("tensor_iter_30.caffemodel")).unwrap();
    for l in caffe30.layer.iter().filter(|l| !l.blobs.is_empty()) {
        let o = ours30.layer.iter().find(|x| x.name() == l.name()).unwrap();
        for (a, b) in o.blobs.iter().zip(&l.blobs) {
            let err = common::rel_err(&a.values(), &b.values(), 1e-8);
            assert!(err < 1e-4, "{}: {err}", l.name());
        }
    }
}

/// bf16 keeps 8 significant bits; 30 SGD steps through bf16 products stay
/// within this of Caffe's fp32 losses (measured on the CPU: 7e-3).
const BF16_TRAJECTORY_TOLERANCE: f32 = 2e-2;

/// bf16 mixed precision (the GPU's `--bf16`; here its CPU emulation): the
/// fixture run still learns what Caffe's does, within bf16's precision,
/// and the mode is really on (the losses are not fp32's).
#[test]
fn bf16_mixed_precision_stays_close_to_caffe() {
    let t = tempfile::tempdir().unwrap();
    let mut s = tensor_solver(&t.path().join("bf16"), true, true);
    s.load_weights(&[PathBuf::from("snapshots/init_iter_0.caffemodel")])
        .unwrap();
    s.solve().unwrap();
    let worst = max_error_vs_caffe(&s.trajectory, BF16_TRAJECTORY_TOLERANCE);
    eprintln!("bf16 trajectory: max rel err {worst:.2e}");
    // fp32 paths are within ~1e-7 of Caffe; bf16 rounding shows.
    assert!(
        worst > 1e-5,
        "bf16 mode left the losses at fp32 precision ({worst:.2e})"
    );
}

#[test]
fn infogain_loss_with_the_identity_retraces_caffes_softmax_run() {
    use flickr_style::caffe::proto::BlobProto;
    // Caffe 1.0's InfogainLoss applies the softmax itself, so with H = I it is
    // SoftmaxWithLoss: the fixture's 30 iterations must come out as Caffe's.
    // With H = 2I the first loss doubles and the steps grow, so the run leaves
    // Caffe's trajectory.
    let t = tempfile::tempdir().unwrap();
    let train = |name: &str, scale: f32| -> Vec<(usize, f32)> {
        let dir = t.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let h_path = dir.join("h.binaryproto");
        let mut h = vec![0.0f32; 16];
        for k in 0..4 {
            h[k * 5] = scale;
        }
        flickr_style::caffe::write_binary(&h_path, &BlobProto::with_shape(&[1, 1, 4, 4], h))
            .unwrap();
        let solver = common::edited_net(&dir, |s| {
            s.replacen(
                "type: \"SoftmaxWithLoss\"",
                &format!(
                    "type: \"InfogainLoss\" infogain_loss_param {{ source: \"{}\" }}",
                    common::slashed(&h_path)
                ),
                1,
            )
        });
        let mut s = common::solver_in(
            &common::fixture("tiny-net"),
            solver.to_str().unwrap(),
            &dir.join("tiny"),
        )
        .unwrap();
        s.load_weights(&[PathBuf::from("snapshots/init_iter_0.caffemodel")])
            .unwrap();
        s.solve().unwrap();
        s.trajectory.clone()
    };
    let want = caffe_trajectory();
    let same = train("identity", 1.0);
    assert_eq!(same.len(), 30);
    for ((it, got), w) in same.iter().zip(&want) {
        let rel = (got - w).abs() / w.abs();
        assert!(rel < 1e-5, "iteration {it}: {got} vs Caffe {w} ({rel:.2e})");
    }
    let doubled = train("double", 2.0);
    assert!((doubled[0].1 - 2.0 * want[0]).abs() / want[0] < 1e-6);
    let last = doubled.last().unwrap().1;
    assert!((last - 2.0 * want[29]).abs() / want[29] > 1e-3, "{last}");
}

/// Caffe's other solver types on the fixture's net and data (its solver
/// with the type's usual settings): each trains (the test loss falls), its
/// `.solverstate` holds Caffe's number of history blobs, and a run resumed
/// from the iteration-15 snapshot repeats iterations 15..29 bit for bit
/// (with AdaDelta's and Adam's second history set restored). Adam also runs
/// on the tensor-op (GPU) code path, whose update must track the CPU one.
#[test]
fn every_solver_type_trains_and_resumes_exactly() {
    let dir = common::fixture("tiny-net");
    let base = std::fs::read_to_string(dir.join("solver.prototxt"))
        .unwrap()
        .replace(
            "\"train_val.prototxt\"",
            &format!("\"{}\"", common::slashed(&dir.join("train_val.prototxt"))),
        );
    let t = tempfile::tempdir().unwrap();
    let mut finals = Vec::new();
    for (ty, settings, histories) in [
        ("Nesterov", "base_lr: 0.01 momentum: 0.9", 1),
        ("AdaGrad", "base_lr: 0.01", 1),
        ("RMSProp", "base_lr: 0.001 rms_decay: 0.98", 1),
        ("AdaDelta", "base_lr: 1.0 momentum: 0.95 delta: 1e-6", 2),
        ("Adam", "base_lr: 0.001 momentum: 0.9 momentum2: 0.999", 2),
    ] {
        let text = base
            .replace("base_lr: 0.01\n", "")
            .replace("momentum: 0.9\n", "")
            + &format!("type: \"{ty}\"\n{settings}\n");
        let file = t.path().join(format!("{ty}.prototxt"));
        std::fs::write(&file, text).unwrap();
        let options = |prefix: &str, tensor_ops: bool| flickr_style::train::solver::SolverOptions {
            tensor_ops,
            ..common::solver_options(&dir, file.to_str().unwrap(), &t.path().join(prefix))
        };
        let mut s = Solver::new(&options(ty, false)).unwrap();
        s.load_weights(&[PathBuf::from("snapshots/init_iter_0.caffemodel")])
            .unwrap();
        s.solve().unwrap();
        assert_eq!(s.trajectory.len(), 30, "{ty}");
        let test_loss = |s: &Solver, i: usize| {
            s.test_results[i]
                .2
                .iter()
                .find(|x| x.0 == "loss")
                .unwrap()
                .1
        };
        let (first, last) = (test_loss(&s, 0), test_loss(&s, 2));
        eprintln!("{ty}: test loss {first} -> {last}");
        assert!(last < first - 0.005, "{ty}: test loss {first} -> {last}");

        let state_path = t.path().join(format!("{ty}_iter_15.solverstate"));
        let state: flickr_style::caffe::proto::SolverState =
            flickr_style::caffe::read_binary(&state_path, "solverstate").unwrap();
        assert_eq!(
            state.history.len(),
            histories * s.train.params().len(),
            "{ty}"
        );
        let mut r = Solver::new(&options(&format!("{ty}_resumed"), false)).unwrap();
        r.restore(&state_path).unwrap();
        r.solve().unwrap();
        assert_eq!(r.trajectory, s.trajectory[15..].to_vec(), "{ty} resumed");

        if ty == "Adam" {
            // A snapshot of another solver type has the wrong history count.
            let other = t.path().join("Nesterov_iter_15.solverstate");
            let e = Solver::new(&options("adam_from_nesterov", false))
                .unwrap()
                .restore(&other)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("Nesterov_iter_15.solverstate")
                    && e.contains("the Adam solver keeps 2 history blobs for each"),
                "{e}"
            );
            let mut g = Solver::new(&options("adam_tensor", true)).unwrap();
            assert!(g.train.uses_tensor_ops());
            g.load_weights(&[PathBuf::from("snapshots/init_iter_0.caffemodel")])
                .unwrap();
            g.solve().unwrap();
            for ((it, a), (_, b)) in g.trajectory.iter().zip(&s.trajectory) {
                assert!(
                    (a - b).abs() / b < 1e-4,
                    "Adam tensor ops at {it}: {a} vs {b}"
                );
            }
        }
        finals.push(s.trajectory[29].1);
    }
    // Five rules, five different runs.
    for (i, a) in finals.iter().enumerate() {
        assert!(finals[i + 1..].iter().all(|b| b != a), "{finals:?}");
    }
}

/// An inception-style split: conv3 as two 16-output convolutions reading the
/// same input (norm2, whose gradient now sums over both) and a Concat
/// joining their outputs along the channels. Started from the fixture's
/// initial weights cut in two, the 30 iterations retrace Caffe's run of the
/// unsplit net, and the two halves end as Caffe's conv3.
#[test]
fn concat_of_two_branches_retraces_the_unsplit_net() {
    let t = tempfile::tempdir().unwrap();
    let conv3 = r#"layer {
  name: "conv3"
  type: "Convolution"
  bottom: "norm2"
  top: "conv3"
  param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param {
    num_output: 32"#;
    let branch = |name: &str| {
        conv3
            .replace("\"conv3\"\n", &format!("\"{name}\"\n"))
            .replace("top: \"conv3\"", &format!("top: \"{name}\""))
            .replace("num_output: 32", "num_output: 16")
    };
    let solver = common::edited_net(t.path(), |net| {
        assert!(net.contains(conv3));
        let [head, tail] = [
            &net[..net.find(conv3).unwrap()],
            &net[net.find(conv3).unwrap() + conv3.len()..],
        ];
        // The rest of conv3's layer follows once per branch.
        let rest_end = tail.find("\n}\n").unwrap() + 3;
        let (rest, after) = tail.split_at(rest_end);
        format!(
            "{head}{}{rest}{}{rest}layer {{ name: \"join\" type: \"Concat\" bottom: \"conv3a\" bottom: \"conv3b\" top: \"conv3\" }}\n{after}",
            branch("conv3a"),
            branch("conv3b")
        )
    });
    // The initial weights with conv3's filters and biases cut in two.
    let init = read_caffemodel(&common::fixture(
        "tiny-net/snapshots/init_iter_0.caffemodel",
    ))
    .unwrap();
    let mut split = init.clone();
    let whole = init.layer.iter().find(|l| l.name() == "conv3").unwrap();
    for (k, name) in ["conv3a", "conv3b"].iter().enumerate() {
        let mut l = whole.clone();
        l.name = Some(name.to_string());
        l.blobs = whole
            .blobs
            .iter()
            .map(|b| {
                let mut dims: Vec<usize> = b.dims().iter().map(|&d| d as usize).collect();
                dims[0] /= 2;
                let v = b.values();
                let half = v.len() / 2;
                flickr_style::caffe::BlobProto::with_shape(
                    &dims,
                    v[k * half..(k + 1) * half].to_vec(),
                )
            })
            .collect();
        split.layer.push(l);
    }
    let weights = t.path().join("split_init.caffemodel");
    flickr_style::caffe::write_binary(&weights, &split).unwrap();

    let mut s = common::solver_in(
        &common::fixture("tiny-net"),
        solver.to_str().unwrap(),
        &t.path().join("split"),
    )
    .unwrap();
    s.load_weights(&[weights]).unwrap();
    s.solve().unwrap();
    let worst = max_error_vs_caffe(&s.trajectory, 1e-5);
    eprintln!("split conv3: largest relative loss error vs Caffe {worst:.2e}");
    let caffe30 = read_caffemodel(&common::fixture(
        "tiny-net/snapshots/tiny_iter_30.caffemodel",
    ))
    .unwrap();
    let want = caffe30.layer.iter().find(|l| l.name() == "conv3").unwrap();
    let ours = read_caffemodel(&t.path().join("split_iter_30.caffemodel")).unwrap();
    for i in 0..2 {
        let joined: Vec<f32> = ["conv3a", "conv3b"]
            .iter()
            .flat_map(|n| ours.layer.iter().find(|l| l.name() == *n).unwrap().blobs[i].values())
            .collect();
        let err = common::rel_err(&joined, &want.blobs[i].values(), 1e-8);
        assert!(err < 1e-5, "conv3 blob {i}: {err}");
    }
}

/// The fixture's Data layer for one phase (8 images a batch, its own mean).
fn fixture_data(phase: &str) -> String {
    format!(
        r#"layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: {phase} }}
  transform_param {{ mean_file: "{0}/data/color64_mean.binaryproto" }}
  data_param {{ source: "{0}/data/color64_lmdb" batch_size: 8 backend: LMDB }} }}
"#,
        common::slashed(&common::fixture("tiny-net"))
    )
}

/// A 4-way InnerProduct classifier on `bottom`, its SoftmaxWithLoss and a
/// TEST-phase Accuracy against the fixture's labels.
fn classifier(bottom: &str) -> String {
    format!(
        r#"layer {{ name: "fc" type: "InnerProduct" bottom: "{bottom}" top: "fc"
  inner_product_param {{ num_output: 4 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy" include {{ phase: TEST }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }}
"#
    )
}

/// Trains `net` (prototxt text) for 30 iterations on the CPU kernels with
/// SGD at `base_lr` (momentum 0.9, weight decay 5e-4, a test at 15 and 30,
/// snapshots at 15 and 30 under `dir/prefix`), and checks that its loss
/// falls, that a resume from iteration 15 repeats the rest bit for bit, and
/// that the tensor-op (GPU) code path on the CPU stays within
/// `tolerance(iteration)` of it. Returns the CPU run.
fn train_resume_and_track(
    dir: &Path,
    net: &str,
    prefix: &str,
    base_lr: f32,
    tolerance: impl Fn(usize) -> f32,
) -> Solver {
    let fixture = common::fixture("tiny-net");
    let net_file = dir.join(format!("{prefix}.prototxt"));
    std::fs::write(&net_file, net).unwrap();
    let solver = dir.join(format!("{prefix}_solver.prototxt"));
    std::fs::write(
        &solver,
        format!(
            "net: \"{}\"\ntest_iter: 3\ntest_interval: 15\nbase_lr: {base_lr}\nlr_policy: \"fixed\"\nmomentum: 0.9\nweight_decay: 0.0005\ndisplay: 0\nmax_iter: 30\nsnapshot: 15\nrandom_seed: 7\nsolver_mode: CPU\n",
            common::slashed(&net_file)
        ),
    )
    .unwrap();
    let options = |name: &str, tensor_ops: bool| flickr_style::train::solver::SolverOptions {
        tensor_ops,
        ..common::solver_options(&fixture, solver.to_str().unwrap(), &dir.join(name))
    };
    let mut s = Solver::new(&options(prefix, false)).unwrap();
    s.solve().unwrap();
    let losses: Vec<f32> = s.trajectory.iter().map(|x| x.1).collect();
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    eprintln!(
        "{prefix}: loss {} -> {}",
        mean(&losses[..5]),
        mean(&losses[25..])
    );
    assert!(
        mean(&losses[25..]) < mean(&losses[..5]) - 0.05,
        "{losses:?}"
    );

    let mut r = Solver::new(&options(&format!("{prefix}_resumed"), false)).unwrap();
    r.restore(&dir.join(format!("{prefix}_iter_15.solverstate")))
        .unwrap();
    r.solve().unwrap();
    assert_eq!(r.trajectory, s.trajectory[15..].to_vec());
    assert_eq!(
        r.test_results.last().unwrap().2,
        s.test_results.last().unwrap().2
    );

    let mut g = Solver::new(&options(&format!("{prefix}_tensor"), true)).unwrap();
    assert!(g.train.uses_tensor_ops());
    g.solve().unwrap();
    for ((it, a), (_, b)) in g.trajectory.iter().zip(&s.trajectory) {
        assert!(
            (a - b).abs() / b < tolerance(*it),
            "tensor ops at {it}: {a} vs {b}"
        );
    }
    s
}

/// Dropout on the CPU draws Caffe's masks from the solver's shared Caffe
/// generator (`tests/caffe_solvers.rs` checks them against Caffe): a resume
/// from iteration 15 restores that generator from the sidecar and repeats
/// the rest bit for bit, and the tensor-op path on the CPU draws the same
/// masks. Three Dropout layers, one in place, at three ratios.
#[test]
fn dropout_masks_resume_exactly() {
    let t = tempfile::tempdir().unwrap();
    let net = format!(
        r#"name: "TinyDropout"
{}{}layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 8 kernel_size: 5 stride: 4 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "drop1" type: "Dropout" bottom: "conv1" top: "drop1" dropout_param {{ dropout_ratio: 0.2 }} }}
layer {{ name: "pool" type: "Pooling" bottom: "drop1" top: "pool" pooling_param {{ pool: MAX kernel_size: 3 stride: 2 }} }}
layer {{ name: "fc1" type: "InnerProduct" bottom: "pool" top: "fc1"
  inner_product_param {{ num_output: 32 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "fc1" top: "fc1" }}
layer {{ name: "drop2" type: "Dropout" bottom: "fc1" top: "fc1" }}
layer {{ name: "drop3" type: "Dropout" bottom: "fc1" top: "fc1" dropout_param {{ dropout_ratio: 0.3 }} }}
{}"#,
        fixture_data("TRAIN"),
        fixture_data("TEST"),
        classifier("fc1"),
    );
    let s = train_resume_and_track(t.path(), &net, "drop", 0.02, |_| 1e-4);
    let side: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(t.path().join("drop_iter_15.solverstate.resume.json")).unwrap(),
    )
    .unwrap();
    // Set-up draws and 15 passes' masks (8 images a pass).
    let drawn = side["caffe_rng"]["drawn"].as_u64().unwrap();
    assert!(drawn > 15 * 8 * 32 * 2, "{drawn}");
    assert_eq!(side["caffe_rng"]["last"].as_array().unwrap().len(), 624);
    assert!(!s.trajectory.is_empty());
}

/// A small residual net on the fixture's data: conv, BatchNorm, Scale and
/// ReLU, then a block (a depthwise 3x3 convolution, MobileNet's, on the CPU
/// its direct kernels; then two 3x3 convolutions with BatchNorm and
/// Scale) whose output an Eltwise SUM adds to its input (ResNet's
/// shortcut), global average pooling and a classifier. It trains; BatchNorm's blobs are left to the layer even with
/// lr_mult 1 and weight decay in the net (Caffe forces lr_mult 0), so the
/// snapshot's factor is exactly the recurrence `f = 0.999 f + 1` over the
/// 30 TRAIN passes; a resume from iteration 15 repeats the rest bit for
/// bit; and the GPU code path (tensor ops, on the CPU) tracks the CPU one.
#[test]
fn residual_net_with_batch_norm_trains_and_resumes_exactly() {
    let t = tempfile::tempdir().unwrap();
    let conv_bn = |name: &str, bottom: &str, k: u32, stride: u32, relu: bool| {
        let pad = k / 2;
        let mut s = format!(
            r#"layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"
  convolution_param {{ num_output: 8 kernel_size: {k} stride: {stride} pad: {pad} bias_term: false weight_filler {{ type: "msra" }} }} }}
layer {{ name: "{name}_bn" type: "BatchNorm" bottom: "{name}" top: "{name}"
  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 1 decay_mult: 1 }} }}
layer {{ name: "{name}_scale" type: "Scale" bottom: "{name}" top: "{name}" scale_param {{ bias_term: true }} }}
"#
        );
        if relu {
            s += &format!("layer {{ name: \"{name}_relu\" type: \"ReLU\" bottom: \"{name}\" top: \"{name}\" }}\n");
        }
        s
    };
    let net = format!(
        r#"name: "TinyResNet"
{}{}{}layer {{ name: "dw" type: "Convolution" bottom: "conv1" top: "dw"
  convolution_param {{ num_output: 8 group: 8 kernel_size: 3 pad: 1 bias_term: false weight_filler {{ type: "msra" }} }} }}
{}{}layer {{ name: "sum" type: "Eltwise" bottom: "conv1" bottom: "b2" top: "sum" }}
layer {{ name: "sum_relu" type: "ReLU" bottom: "sum" top: "sum" }}
layer {{ name: "pool" type: "Pooling" bottom: "sum" top: "pool" pooling_param {{ pool: AVE global_pooling: true }} }}
{}"#,
        fixture_data("TRAIN"),
        fixture_data("TEST"),
        conv_bn("conv1", "data", 5, 4, true),
        conv_bn("b1", "dw", 3, 1, true),
        conv_bn("b2", "b1", 3, 1, false),
        classifier("pool"),
    );
    train_resume_and_track(t.path(), &net, "res", 0.02, |_| 1e-4);

    let snap = read_caffemodel(&t.path().join("res_iter_30.caffemodel")).unwrap();
    let mut factor = 0f32;
    for _ in 0..30 {
        factor = factor * 0.999 + 1.0;
    }
    for bn in ["conv1_bn", "b1_bn", "b2_bn"] {
        let l = snap.layer.iter().find(|l| l.name() == bn).unwrap();
        assert_eq!(l.blobs.len(), 3);
        assert_eq!(l.blobs[2].values(), [factor], "{bn}");
        assert!(
            l.blobs[1].values().iter().all(|&v| v > 0.0),
            "{bn} variances"
        );
    }
}

/// A small net of the neuron and routing layers on the fixture's data: a
/// convolution with a learned PReLU, a Slice of its channels into a gate
/// (Sigmoid) and a value (TanH) multiplied back together (a gated linear
/// unit), a second convolution with Swish and a squeeze-and-excitation
/// gate (global pooling, two InnerProducts, a Sigmoid, and a Scale taking
/// the N x C gate as its second bottom, as SENet's Caffe models do), global
/// pooling, a Power and a classifier; a Silence swallows the part of a
/// second Slice nothing uses.
/// It trains, the PReLU slopes move from their 0.25 start, a resume from
/// iteration 15 repeats the rest bit for bit, and the GPU code path (tensor
/// ops, on the CPU) tracks the CPU kernels.
#[test]
fn neuron_and_slice_layers_train_and_resume_exactly() {
    let t = tempfile::tempdir().unwrap();
    let net = format!(
        r#"name: "TinyGated"
{}{}layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 16 kernel_size: 5 stride: 4 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "prelu1" type: "PReLU" bottom: "conv1" top: "conv1" param {{ lr_mult: 1 decay_mult: 0 }} }}
layer {{ name: "halves" type: "Slice" bottom: "conv1" top: "gate" top: "value" slice_param {{ axis: 1 }} }}
layer {{ name: "gate_sig" type: "Sigmoid" bottom: "gate" top: "gate" }}
layer {{ name: "value_tanh" type: "TanH" bottom: "value" top: "value" }}
layer {{ name: "glu" type: "Eltwise" bottom: "gate" bottom: "value" top: "glu" eltwise_param {{ operation: PROD }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "glu" top: "conv2"
  convolution_param {{ num_output: 12 kernel_size: 3 pad: 1 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "swish2" type: "Swish" bottom: "conv2" top: "conv2" }}
layer {{ name: "se_pool" type: "Pooling" bottom: "conv2" top: "se_pool" pooling_param {{ pool: AVE global_pooling: true }} }}
layer {{ name: "se_down" type: "InnerProduct" bottom: "se_pool" top: "se_down"
  inner_product_param {{ num_output: 4 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "se_relu" type: "ReLU" bottom: "se_down" top: "se_down" }}
layer {{ name: "se_up" type: "InnerProduct" bottom: "se_down" top: "se_up"
  inner_product_param {{ num_output: 12 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "se_gate" type: "Sigmoid" bottom: "se_up" top: "se_up" }}
layer {{ name: "se_scale" type: "Scale" bottom: "conv2" bottom: "se_up" top: "se" scale_param {{ axis: 0 }} }}
layer {{ name: "cut" type: "Slice" bottom: "se" top: "kept" top: "unused" slice_param {{ slice_point: 8 }} }}
layer {{ name: "silence" type: "Silence" bottom: "unused" }}
layer {{ name: "pool" type: "Pooling" bottom: "kept" top: "pool" pooling_param {{ pool: AVE global_pooling: true }} }}
layer {{ name: "gain" type: "Power" bottom: "pool" top: "pool" power_param {{ scale: 2 }} }}
{}"#,
        fixture_data("TRAIN"),
        fixture_data("TEST"),
        classifier("pool"),
    );
    // The paths round differently (the CPU kernels sum PReLU's slope
    // gradient in f64, candle in f32; the convolutions' sums run in other
    // orders): 1e-7 at first, growing as training feeds it back, most when
    // a value crosses a kink (measured: at most 3e-7 to iteration 21, then
    // up to 2e-4).
    train_resume_and_track(t.path(), &net, "gated", 0.03, |it| {
        if it < 20 {
            1e-5
        } else {
            1e-3
        }
    });

    let snap = read_caffemodel(&t.path().join("gated_iter_30.caffemodel")).unwrap();
    let prelu = snap.layer.iter().find(|l| l.name() == "prelu1").unwrap();
    assert_eq!(prelu.blobs.len(), 1);
    let slopes = prelu.blobs[0].values();
    assert_eq!(slopes.len(), 16);
    assert!(
        slopes.iter().any(|&v| (v - 0.25).abs() > 1e-4),
        "{slopes:?}"
    );
}

/// A multi-task net whose second head trains only on the items a Filter
/// keeps (class 3, by a Threshold on the label), and a third branch of
/// convolution, BatchNorm, Scale, PReLU, LRN and pooling only on those
/// images: the fixture's
/// batches hold 0, 0 and 6 of them in turn, so both see empty batches too
/// (which crash Caffe; here its loss and Accuracy are 0 then, and its
/// gradients zero). The net trains, a resume repeats it bit for bit, and the
/// tensor-op (GPU) path on the CPU tracks it. `tests/caffe_solvers.rs`
/// checks a Filter's numbers against Caffe itself.
#[test]
fn filtered_heads_train_on_empty_batches_and_resume_exactly() {
    let t = tempfile::tempdir().unwrap();
    let net = format!(
        r#"name: "TinyFiltered"
{}{}layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 8 kernel_size: 5 stride: 4 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool" type: "Pooling" bottom: "conv1" top: "pool" pooling_param {{ pool: AVE global_pooling: true }} }}
layer {{ name: "fc1" type: "InnerProduct" bottom: "pool" top: "fc1"
  inner_product_param {{ num_output: 16 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "relu2" type: "ReLU" bottom: "fc1" top: "fc1" }}
layer {{ name: "is3" type: "Threshold" bottom: "label" top: "is3" threshold_param {{ threshold: 2.5 }} }}
layer {{ name: "select" type: "Filter" bottom: "fc1" bottom: "label" bottom: "is3" top: "fc1f" top: "labelf" }}
layer {{ name: "flat" type: "Reshape" bottom: "fc1f" top: "flat" reshape_param {{ shape {{ dim: 0 dim: -1 }} }} }}
layer {{ name: "drop" type: "Dropout" bottom: "flat" top: "flat" dropout_param {{ dropout_ratio: 0.2 }} }}
layer {{ name: "halves" type: "Slice" bottom: "fc1f" top: "h1" top: "h2" slice_param {{ axis: 1 }} }}
layer {{ name: "mix" type: "Eltwise" bottom: "h1" bottom: "h2" top: "mix" }}
layer {{ name: "both" type: "Concat" bottom: "flat" bottom: "mix" top: "both" }}
layer {{ name: "head" type: "InnerProduct" bottom: "both" top: "head"
  inner_product_param {{ num_output: 4 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "head_loss" type: "SoftmaxWithLoss" bottom: "head" bottom: "labelf" top: "head_loss"
  loss_weight: 0.5 propagate_down: true propagate_down: false }}
layer {{ name: "head_accuracy" type: "Accuracy" bottom: "head" bottom: "labelf" top: "head_accuracy"
  include {{ phase: TEST }} }}
layer {{ name: "select_images" type: "Filter" bottom: "data" bottom: "is3" top: "dataf" }}
layer {{ name: "convf" type: "Convolution" bottom: "dataf" top: "convf"
  convolution_param {{ num_output: 4 kernel_size: 5 stride: 4 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "bnf" type: "BatchNorm" bottom: "convf" top: "convf" }}
layer {{ name: "scalef" type: "Scale" bottom: "convf" top: "convf" scale_param {{ bias_term: true }} }}
layer {{ name: "preluf" type: "PReLU" bottom: "convf" top: "convf" }}
layer {{ name: "normf" type: "LRN" bottom: "convf" top: "normf" lrn_param {{ local_size: 3 }} }}
layer {{ name: "poolf" type: "Pooling" bottom: "normf" top: "poolf" pooling_param {{ pool: MAX kernel_size: 3 stride: 2 }} }}
layer {{ name: "fcf" type: "InnerProduct" bottom: "poolf" top: "fcf"
  inner_product_param {{ num_output: 4 weight_filler {{ type: "gaussian" std: 0.01 }} }} }}
layer {{ name: "image_loss" type: "SoftmaxWithLoss" bottom: "fcf" bottom: "labelf" top: "image_loss"
  loss_weight: 0.5 propagate_down: true propagate_down: false }}
{}"#,
        fixture_data("TRAIN"),
        fixture_data("TEST"),
        classifier("fc1"),
    );
    let s = train_resume_and_track(t.path(), &net, "filtered", 0.05, |_| 1e-4);
    let test = &s.test_results.last().unwrap().2;
    let score = |name: &str| test.iter().find(|r| r.0 == name).unwrap().1;
    // Two of the three test batches have no class-3 image (accuracy 0).
    assert!(score("head_accuracy") <= 1.0 / 3.0 + 1e-6, "{test:?}");
    assert!(score("head_loss").is_finite(), "{test:?}");
    // `--dry-run` shows the most a filtered blob holds.
    let solver = t.path().join("filtered_solver.prototxt");
    let (ok, out, err) = common::run(
        &common::fixture("tiny-net"),
        &[
            "finetune",
            "--solver",
            solver.to_str().unwrap(),
            "--dry-run",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("| select | Filter | ≤8x16, ≤8 |"), "{out}");
    assert!(out.contains("| head_loss | SoftmaxWithLoss | 1 |"), "{out}");
    assert!(out.contains("≤: a Filter keeps"), "{out}");
}

/// R-CNN's fine-tuning feed: WindowData layers (TRAIN and TEST) sample
/// foreground and background boxes from the fixture photos, warped with
/// context to 24x24, mirrored, minus the mean; a small net learns their
/// classes, a resume repeats the run bit for bit (the draws replay), the
/// tensor-op path tracks it, and `deploy` gives the net an Input of the
/// windows' shape. (`tests/caffe_data.rs` checks the batches against
/// Caffe's.)
#[test]
fn window_data_feeds_a_detection_fine_tune_that_resumes_exactly() {
    let t = tempfile::tempdir().unwrap();
    let windows = t.path().join("windows.txt");
    std::fs::write(
        &windows,
        "# 0\nanimal/cat.jpg\n3 360 480\n3\n1 0.9 100 50 300 250\n0 0.1 0 0 120 100\n2 0.6 350 200 479 359\n\
         # 1\nobject/astronaut.jpg\n3 512 512\n2\n3 0.8 100 100 400 511\n0 0.2 0 300 100 511\n\
         # 2\nobject/coffee.jpeg\n3 400 600\n2\n2 0.95 150 20 450 380\n0 0.15 500 300 599 399\n",
    )
    .unwrap();
    let data = |phase: &str| {
        format!(
            r#"layer {{ name: "data" type: "WindowData" top: "data" top: "label" include {{ phase: {phase} }}
  transform_param {{ mirror: true crop_size: 24 mean_value: 104 mean_value: 117 mean_value: 123 }}
  window_data_param {{ source: "{}" root_folder: "{}/" batch_size: 8 context_pad: 2 fg_fraction: 0.5 scale: 0.02 }} }}
"#,
            common::slashed(&windows),
            common::slashed(&common::fixture("images"))
        )
    };
    let net = format!(
        r#"name: "TinyRcnn"
{}{}layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 8 kernel_size: 5 stride: 2 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool" type: "Pooling" bottom: "conv1" top: "pool" pooling_param {{ pool: AVE global_pooling: true }} }}
{}"#,
        data("TRAIN"),
        data("TEST"),
        classifier("pool"),
    );
    let s = train_resume_and_track(t.path(), &net, "rcnn", 0.1, |_| 1e-4);
    assert_eq!(s.train.blob("data").unwrap().dims(), [8, 3, 24, 24]);
    let (ok, _, err) = common::run(
        t.path(),
        &[
            "deploy",
            t.path().join("rcnn.prototxt").to_str().unwrap(),
            "deploy.prototxt",
        ],
    );
    assert!(ok, "{err}");
    let deploy = std::fs::read_to_string(t.path().join("deploy.prototxt")).unwrap();
    assert!(
        deploy.contains("dim: 3") && deploy.contains("dim: 24"),
        "{deploy}"
    );
    assert!(deploy.contains("2 pixels of context"), "{deploy}");
}

/// The tiny net as DIGITS writes nets: one file whose variants are told
/// apart by stage (`train`, `val`, `deploy`) instead of by phase, with data
/// paths made absolute.
fn all_in_one_net(dir: &Path) -> PathBuf {
    let fixture = common::fixture("tiny-net");
    let text = std::fs::read_to_string(fixture.join("train_val.prototxt"))
        .unwrap()
        .replace("\"data/", &format!("\"{}/data/", common::slashed(&fixture)))
        .replacen(
            "include { phase: TRAIN }",
            "include { stage: \"train\" }",
            1,
        )
        .replacen("include { phase: TEST }", "include { stage: \"val\" }", 1)
        .replace(
            "  top: \"accuracy\"\n",
            "  top: \"accuracy\"\n  include { stage: \"val\" }\n",
        )
        .replace(
            "  top: \"loss\"\n",
            "  top: \"loss\"\n  exclude { stage: \"deploy\" }\n",
        )
        + r#"
layer {
  name: "data" type: "Input" top: "data"
  input_param { shape { dim: 1 dim: 3 dim: 64 dim: 64 } }
  include { stage: "deploy" }
}
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" include { stage: "deploy" } }
"#;
    // The deploy Input must come first, where the data layers are.
    let (head, input) = text.split_at(
        text.find("\nlayer {\n  name: \"data\" type: \"Input\"")
            .unwrap(),
    );
    let (input, prob) = input.split_at(input.find("\nlayer { name: \"prob\"").unwrap());
    let first = head.find("layer {").unwrap();
    let net = format!(
        "{}{}\n{}{}",
        &head[..first],
        input.trim_start(),
        &head[first..],
        prob
    );
    let path = dir.join("all_in_one.prototxt");
    std::fs::write(&path, net).unwrap();
    path
}

#[test]
fn stage_flags_pick_a_variant_of_one_net_file_as_caffes_tools_do() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let net = all_in_one_net(dir);
    let fixture = common::fixture("tiny-net");
    let solver = std::fs::read_to_string(fixture.join("solver.prototxt"))
        .unwrap()
        .replace("train_val.prototxt", &common::slashed(&net))
        + "test_state { stage: \"val\" }\n";
    std::fs::write(dir.join("solver.prototxt"), solver).unwrap();
    let init = fixture.join("snapshots/init_iter_0.caffemodel");
    let trained = fixture.join("snapshots/tiny_iter_30.caffemodel");
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // `caffe train -stage train`: the stage joins the training net's state,
    // and the run retraces Caffe's (which built the same layers by phase).
    let train = |extra: &[&str]| {
        let mut args = vec![
            "finetune".to_string(),
            "--solver".into(),
            "solver.prototxt".into(),
            "--weights".into(),
            s(&init),
            "--max-iter".into(),
            "12".into(),
            "--metrics".into(),
            "m.jsonl".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::run(dir, &args)
    };
    let (ok, _, err) = train(&[]);
    assert!(!ok, "without the stage the training net has no data");
    assert!(err.contains("'data'") && err.contains("stage"), "{err}");
    // Caffe's line for each layer left out, before the error.
    assert!(
        err.contains("net.cpp:306] The NetState did not contain stage 'train' specified by a rule in layer data"),
        "{err}"
    );
    let (ok, _, err) = train(&["--stage", "train"]);
    assert!(ok, "{err}");
    let losses = common::train_losses(&dir.join("m.jsonl"));
    assert_eq!(losses.len(), 12);
    for (i, (got, want)) in losses.iter().zip(caffe_trajectory()).enumerate() {
        let rel = (got - want as f64).abs() / want as f64;
        assert!(rel < 1e-4, "iteration {i}: {got} vs Caffe's {want}");
    }
    // The test net took the solver's `test_state` (the val stage):
    // Caffe's 15th-iteration test is not reached, the first one is.
    assert!(err.contains("Test net output #0: accuracy"), "{err}");

    // `caffe test -stage val` scores as the phase-ruled file does.
    let test = |model: &Path, extra: &[&str]| {
        let mut args = vec!["test", "--model", model.to_str().unwrap()];
        args.extend_from_slice(&["--weights", trained.to_str().unwrap(), "--iterations", "3"]);
        args.extend_from_slice(extra);
        common::run(dir, &args)
    };
    let (ok, want, err) = test(&fixture.join("train_val.prototxt"), &[]);
    assert!(ok, "{err}");
    let (ok, got, err) = test(&net, &["--stage", "val"]);
    assert!(ok, "{err}");
    assert_eq!(got, want);
    assert!(got.contains("accuracy = "), "{got}");

    // `classify --stage deploy`: the deploy variant (an Input and a
    // Softmax) with the mean file gives the trained net's probabilities.
    let images = common::fixture("images/animal");
    let classify = |model: &Path, extra: &[&str]| {
        let mut args = vec!["classify", "--model", model.to_str().unwrap()];
        args.extend_from_slice(&["--weights", trained.to_str().unwrap()]);
        args.extend_from_slice(extra);
        args.push(images.to_str().unwrap());
        common::run(dir, &args)
    };
    let (ok, want, err) = classify(&fixture.join("train_val.prototxt"), &[]);
    assert!(ok, "{err}");
    let mean = fixture.join("data/color64_mean.binaryproto");
    let (ok, got, err) = classify(
        &net,
        &["--stage", "deploy", "--mean", mean.to_str().unwrap()],
    );
    assert!(ok, "{err}");
    // Equal classes; probabilities to the last digits (batch 1 against the
    // data layer's batch of 8 sums in another order).
    assert_eq!(got.lines().count(), want.lines().count());
    assert!(got.lines().count() > 1, "{got}");
    for (g, w) in got.lines().zip(want.lines()).skip(1) {
        for (i, (g, w)) in g.split(',').zip(w.split(',')).enumerate() {
            // The image, then (class, probability) pairs.
            if i % 2 == 1 || i == 0 {
                assert_eq!(g, w);
            } else {
                let (g, w): (f64, f64) = (g.parse().unwrap(), w.parse().unwrap());
                assert!((g - w).abs() < 1e-6, "{g} vs {w}");
            }
        }
    }

    // `deploy --stage val` writes the same deploy net as the phase-ruled
    // file gives, its rules gone.
    let deploy = |model: &Path, out: &str, extra: &[&str]| {
        let mut args = vec!["deploy", model.to_str().unwrap(), out];
        args.extend_from_slice(extra);
        let (ok, _, err) = common::run(dir, &args);
        assert!(ok, "{err}");
        let text = std::fs::read_to_string(dir.join(out)).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let want = deploy(&fixture.join("train_val.prototxt"), "want.prototxt", &[]);
    let got = deploy(&net, "got.prototxt", &["--stage", "val"]);
    assert_eq!(got, want);
    assert!(!got.contains("stage"), "{got}");

    // `caffe time -phase TEST -stage deploy`; the level replaces the file's.
    let (ok, out, err) = common::run(
        dir,
        &[
            "time",
            "--model",
            net.to_str().unwrap(),
            "--phase",
            "test",
            "--iterations",
            "1",
            "--stage",
            "deploy",
            "--level",
            "-1",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("| prob | Softmax |") && !out.contains("| loss |"),
        "{out}"
    );

    // `probe --stage train`: the training stage picks the data layer the
    // classifier learns from, the solver's test_state the test images, and
    // the classifier trains as it does on the phase-ruled file.
    let probe = |cwd: &Path, solver: &str, out: &str, extra: &[&str]| {
        let out = dir.join(out);
        let mut args = vec!["probe", "--solver", solver, "--weights"];
        args.extend_from_slice(&[init.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        args.extend_from_slice(&["--max-iter", "20"]);
        args.extend_from_slice(extra);
        let (ok, stdout, err) = common::run(cwd, &args);
        (ok, stdout, err, out)
    };
    let (ok, _, err, _) = probe(dir, "solver.prototxt", "probe_none", &[]);
    assert!(!ok);
    assert!(err.contains("--stage"), "{err}");
    let (ok, want, err, plain) = probe(&fixture, "solver.prototxt", "probe_phases", &[]);
    assert!(ok, "{err}");
    let (ok, got, err, staged) = probe(
        dir,
        "solver.prototxt",
        "probe_stages",
        &["--stage", "train"],
    );
    assert!(ok, "{err}");
    assert_eq!(
        got.replace(&*staged.to_string_lossy(), ""),
        want.replace(&*plain.to_string_lossy(), "")
    );
    let fc8 = |out: &Path| {
        let model = read_caffemodel(&out.join("probe.caffemodel")).unwrap();
        let l = model.layer.iter().find(|l| l.name() == "fc8").unwrap();
        l.blobs.iter().map(|b| b.values()).collect::<Vec<_>>()
    };
    assert_eq!(fc8(&staged), fc8(&plain));
}

/// Recurrent layers (an LSTM, and an RNN reading it, both feeding the
/// classifier) over the batch read as 4 timesteps of 2 streams, with
/// continuation flags of 1 everywhere, so each pass starts from the hidden
/// states the previous one ended with, as in Caffe. A resume from
/// iteration 15 repeats the rest bit for bit because the sidecar keeps
/// those states (Caffe's snapshots lose them): without them the resumed run
/// differs. (`tests/caffe_solvers.rs` checks such training against Caffe.)
#[test]
fn recurrent_nets_carry_their_hidden_state_through_a_resume() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let net = format!(
        r#"name: "TinyRecurrent"
{}{}layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 8 kernel_size: 5 stride: 4 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool" type: "Pooling" bottom: "conv1" top: "pool" pooling_param {{ pool: MAX kernel_size: 3 stride: 2 }} }}
layer {{ name: "seq" type: "Reshape" bottom: "pool" top: "seq" reshape_param {{ shape {{ dim: 4 dim: 2 dim: -1 }} }} }}
layer {{ name: "cont" type: "DummyData" top: "cont"
  dummy_data_param {{ shape {{ dim: 4 dim: 2 }} data_filler {{ type: "constant" value: 1 }} }} }}
layer {{ name: "lstm" type: "LSTM" bottom: "seq" bottom: "cont" top: "lstm"
  recurrent_param {{ num_output: 16 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "rnn" type: "RNN" bottom: "lstm" bottom: "cont" top: "rnn"
  recurrent_param {{ num_output: 16 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "both" type: "Concat" bottom: "lstm" bottom: "rnn" top: "both" concat_param {{ axis: 2 }} }}
layer {{ name: "flat" type: "Reshape" bottom: "both" top: "flat" reshape_param {{ shape {{ dim: 8 dim: -1 }} }} }}
{}"#,
        fixture_data("TRAIN"),
        fixture_data("TEST"),
        classifier("flat"),
    );
    let net_file = dir.join("rec.prototxt");
    std::fs::write(&net_file, net).unwrap();
    let solver = dir.join("rec_solver.prototxt");
    std::fs::write(
        &solver,
        format!(
            "net: \"{}\"\ntest_iter: 3\ntest_interval: 15\nbase_lr: 0.02\nlr_policy: \"fixed\"\nmomentum: 0.9\nweight_decay: 0.0005\ndisplay: 0\nmax_iter: 30\nsnapshot: 15\nrandom_seed: 7\nsolver_mode: CPU\n",
            common::slashed(&net_file)
        ),
    )
    .unwrap();
    let fixture = common::fixture("tiny-net");
    let new = |name: &str| {
        Solver::new(&common::solver_options(
            &fixture,
            solver.to_str().unwrap(),
            &dir.join(name),
        ))
        .unwrap()
    };
    // The dry run names the recurrent layers' fillers.
    let report = new("dry").dry_run_report().unwrap();
    assert!(
        report.contains("| lstm | LSTM | 4x2x16 | ")
            && report.contains("filler: weights xavier, bias constant 0 |"),
        "{report}"
    );
    let mut s = new("rec");
    s.solve().unwrap();
    let state = dir.join("rec_iter_15.solverstate");
    let resume = |name: &str| {
        let mut r = new(name);
        r.restore(&state).unwrap();
        r.solve().unwrap();
        r
    };
    let r = resume("resumed");
    assert_eq!(r.trajectory, s.trajectory[15..].to_vec());
    assert_eq!(
        r.test_results.last().unwrap().2,
        s.test_results.last().unwrap().2
    );

    let side_path = dir.join("rec_iter_15.solverstate.resume.json");
    let mut side: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&side_path).unwrap()).unwrap();
    // h and c of the LSTM, h of the RNN: 2 streams x 16 each.
    let carried = &side["train_carried"];
    assert_eq!(carried["lstm"].as_array().unwrap().len(), 2);
    assert_eq!(carried["rnn"][0].as_array().unwrap().len(), 32);
    assert_eq!(side["test_carried"][0]["lstm"].as_array().unwrap().len(), 2);
    // Without them (as from a Caffe snapshot) the states restart at zero.
    side.as_object_mut().unwrap().remove("train_carried");
    side.as_object_mut().unwrap().remove("test_carried");
    std::fs::write(&side_path, side.to_string()).unwrap();
    let cold = resume("cold");
    assert_ne!(cold.trajectory[0], s.trajectory[15]);

    // A saved state of the wrong size is refused, naming the file.
    side["train_carried"] = serde_json::json!({ "lstm": [[0.0, 1.0]] });
    std::fs::write(&side_path, side.to_string()).unwrap();
    let mut bad = new("bad");
    let err = bad.restore(&state).unwrap_err().to_string();
    assert!(
        err.contains("resume.json") && err.contains("hidden state"),
        "{err}"
    );
}
