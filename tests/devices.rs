//! Device selection and the GPU code path, as CI can check them without a
//! GPU: `check-ops` runs every layer's tensor-op path against the CPU
//! kernels, `--tensor-ops` trains through that path on the CPU, and `--gpu`
//! in a build without CUDA is a clear error that writes nothing.
mod common;
use common::{fixture, run};

#[test]
fn check_ops_passes_on_the_cpu() {
    let t = tempfile::tempdir().unwrap();
    let (ok, out, err) = run(t.path(), &["check-ops", "--seed", "3"]);
    assert!(ok, "{out}\n{err}");
    // 70 tensor-op cases (59 layers, 3 sequence layers, Filter, 2 SGD updates, the 5 other
    // solver types), 24 on the fused path, then the 13 layers with matrix products in bf16.
    assert!(out.contains("All 107 op checks passed."), "{out}");
    assert_eq!(out.matches("| ok |").count(), 107, "{out}");
    // bf16 is really on there: its rows show rounding errors fp32 has not.
    let bf16: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains("[bf16]"))
        .collect();
    assert_eq!(bf16.len(), 13, "{out}");
    for row in bf16 {
        let forward: f32 = row.split('|').nth(2).unwrap().trim().parse().unwrap();
        assert!(forward > 1e-4, "{row}");
    }
    for op in [
        "Convolution",
        "Pooling MAX",
        "Pooling AVE",
        "SPP MAX",
        "SPP AVE",
        "LRN",
        "ReLU",
        "InnerProduct",
        "CyclicSlice",
        "CyclicPool",
        "SGD update (L1)",
        "Adam update (3 steps)",
        "Concat (3 bottoms, channels)",
        "Eltwise MAX",
        "BatchNorm (batch statistics)",
        "Scale (per channel, with bias)",
        "AdaDelta update (3 steps)",
        "Dropout 0.5 (the same mask on every device) [fused]",
        "Convolution 5x5 s2 p1 +bias [fused]",
        "Pooling MAX 3x3 s2 p1, ties [fused]",
        "LRN 5 (CaffeNet) [fused]",
        "ReLU slope 0.1 [fused]",
        "SGD update (clip, iter_size, L2) [fused]",
        "Convolution 11x11 s4 (CaffeNet conv1 geometry) [bf16]",
        "InnerProduct [bf16]",
    ] {
        assert!(out.contains(op), "{op} missing from\n{out}");
    }
}

/// Two iterations of the tiny-net fixture with `extra` flags.
fn tiny_finetune<'a>(prefix: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    common::tiny_finetune_args(prefix, "2", extra)
}

#[test]
fn finetune_through_the_gpu_code_path_on_the_cpu() {
    let t = tempfile::tempdir().unwrap();
    let prefix = t.path().join("tensor");
    let (ok, _, err) = run(
        &fixture("tiny-net"),
        &tiny_finetune(prefix.to_str().unwrap(), &["--tensor-ops"]),
    );
    assert!(ok, "{err}");
    assert!(err.contains("Using CPU (tensor ops"), "{err}");
    // Caffe's first training loss and test scores, as on the CPU kernels.
    assert!(
        err.contains("Train net output #1: loss = 1.37753 (* 1 = 1.37753 loss)"),
        "{err}"
    );
    assert!(err.contains("Test net output #0: accuracy = 0.25"), "{err}");
    assert!(t.path().join("tensor_iter_2.caffemodel").exists());
}

/// `--bf16` is the GPU's mixed-precision mode: on the GPU code path it
/// trains (here through its CPU emulation) and says so; on the CPU kernels,
/// which are fp32, it is refused before anything is written.
#[test]
fn bf16_runs_on_the_gpu_code_path_and_is_refused_on_the_cpu_kernels() {
    let t = tempfile::tempdir().unwrap();
    let prefix = t.path().join("bf16");
    let prefix = prefix.to_str().unwrap();
    let (ok, _, err) = run(
        &fixture("tiny-net"),
        &tiny_finetune(prefix, &["--bf16", "--cpu"]),
    );
    assert!(!ok);
    assert!(err.contains("bf16 mixed precision is a GPU mode"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);

    let (ok, _, err) = run(
        &fixture("tiny-net"),
        &tiny_finetune(prefix, &["--bf16", "--tensor-ops", "--fused-ops"]),
    );
    assert!(ok, "{err}");
    assert!(err.contains("bf16 mixed precision"), "{err}");
    // Caffe's first loss is 1.37753 in fp32; bf16 products move it a little.
    let loss: f32 = err
        .lines()
        .find_map(|l| l.split("Train net output #1: loss = ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no training loss in\n{err}"));
    assert!((loss - 1.37753).abs() / 1.37753 < 2e-2, "{loss}");
    assert!(t.path().join("bf16_iter_2.caffemodel").exists());
}

#[cfg(not(feature = "cuda"))]
#[test]
fn gpu_without_cuda_support_is_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let prefix = t.path().join("gpu");
    let dir = fixture("tiny-net");
    let (ok, _, err) = run(
        &dir,
        &[
            "finetune",
            "--solver",
            "solver.prototxt",
            "--snapshot-prefix",
            prefix.to_str().unwrap(),
            "--gpu",
            "0",
        ],
    );
    assert!(!ok);
    assert!(err.contains("GPU 0"), "{err}");
    assert!(err.contains("built without CUDA support"), "{err}");
    assert!(err.contains("--features cuda"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    let out = t.path().join("pipeline");
    let recipe = common::caffe_ref().join("models/finetune_flickr_style");
    for args in [
        &["time", "--model", "train_val.prototxt", "--gpu", "1"][..],
        &["check-ops", "--gpu", "0"][..],
        // Refused before any download starts.
        &[
            "pipeline",
            "--gpu",
            "0",
            "--out",
            out.to_str().unwrap(),
            "--recipe",
            recipe.to_str().unwrap(),
        ][..],
    ] {
        let (ok, _, err) = run(&dir, args);
        assert!(!ok, "{args:?}");
        assert!(err.contains("built without CUDA support"), "{err}");
    }
    assert!(!out.exists());
}

/// The Flickr solver says `solver_mode: GPU`; a CPU build runs it on the CPU
/// and says so, like the recipe always did on CPU-only Caffe builds.
#[cfg(not(feature = "cuda"))]
#[test]
fn solver_mode_gpu_runs_on_the_cpu_in_a_cpu_build() {
    let t = tempfile::tempdir().unwrap();
    let dir = fixture("tiny-net");
    let solver = std::fs::read_to_string(dir.join("solver.prototxt")).unwrap();
    let solver = solver
        .lines()
        .filter(|l| !l.trim_start().starts_with("solver_mode"))
        .collect::<Vec<_>>()
        .join("\n")
        + "\nsolver_mode: GPU\n";
    let path = t.path().join("solver.prototxt");
    std::fs::write(&path, solver).unwrap();
    let prefix = t.path().join("s");
    let (ok, _, err) = run(
        &dir,
        &[
            "finetune",
            "--solver",
            path.to_str().unwrap(),
            "--weights",
            "snapshots/init_iter_0.caffemodel",
            "--snapshot-prefix",
            prefix.to_str().unwrap(),
            "--max-iter",
            "1",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("this binary has no CUDA support: using the CPU"),
        "{err}"
    );
    assert!(err.contains("Using CPU"), "{err}");
}

/// The tensor ops (the GPU path) build what candle's one-value convolution
/// cannot take directly: unequal strides (run at stride 1 and subsampled,
/// or for a Deconvolution its input spread), unequal dilations (the kernel
/// spread) and unequal pads (added explicitly), to the CPU kernels' shapes.
#[test]
fn gpu_path_builds_unequal_strides_dilations_and_pads() {
    use flickr_style::caffe::proto::{LayerParameter, Phase};
    use flickr_style::train::layers::{create, BuildContext};
    let layer = |text: &str| -> LayerParameter {
        flickr_style::caffe::prototxt::parse(text, std::path::Path::new("inline")).unwrap()
    };
    let ctx = |tensor_ops| BuildContext {
        tensor_ops,
        ..BuildContext::cpu(".", 1, Phase::Train)
    };
    let shape = vec![vec![1, 1, 5, 5]];
    let strided = layer(
        r#"name: "odd" type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 stride_h: 1 stride_w: 2 }"#,
    );
    for tensor_ops in [false, true] {
        let mut l = create(&strided, &ctx(tensor_ops), 0).unwrap();
        assert_eq!(l.setup(&shape).unwrap(), vec![vec![1, 2, 3, 2]]);
    }
    let padded = layer(
        r#"name: "pad" type: "Convolution" convolution_param { num_output: 2 kernel_size: 3 pad_h: 1 pad_w: 0 }"#,
    );
    let mut gpu = create(&padded, &ctx(true), 0).unwrap();
    assert_eq!(gpu.setup(&shape).unwrap(), vec![vec![1, 2, 5, 3]]);
    let dilated = layer(
        r#"name: "wide" type: "Convolution" convolution_param { num_output: 2 kernel_size: 2 dilation: 1 dilation: 2 }"#,
    );
    let mut cpu = create(&dilated, &ctx(false), 0).unwrap();
    assert_eq!(cpu.setup(&shape).unwrap(), vec![vec![1, 2, 4, 3]]);
    let mut gpu = create(&dilated, &ctx(true), 0).unwrap();
    assert_eq!(gpu.setup(&shape).unwrap(), vec![vec![1, 2, 4, 3]]);
    // A Deconvolution (tensor ops on every device) spreads its input onto
    // a stride-1 grid: Caffe's output size, stride x (input - 1) + kernel.
    let deconv = layer(
        r#"name: "up" type: "Deconvolution" convolution_param { num_output: 2 kernel_size: 3 stride_h: 1 stride_w: 2 }"#,
    );
    let mut up = create(&deconv, &ctx(false), 0).unwrap();
    assert_eq!(up.setup(&shape).unwrap(), vec![vec![1, 2, 7, 11]]);
}
