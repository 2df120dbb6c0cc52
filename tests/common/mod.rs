//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

/// `../shared/caffe-ref` relative to the crate root (read-only in CI),
/// absolute on this platform (a binary cross-built for Windows keeps the
/// build machine's `/…` crate root, which Windows reads on the current drive).
pub fn caffe_ref() -> PathBuf {
    std::path::absolute(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/caffe-ref"))
        .expect("an absolute path")
}

/// `p` as a prototxt string or a list line can hold it on every platform:
/// Windows takes `/` as well as `\`, which the text format reads as escapes.
pub fn slashed(p: &Path) -> String {
    p.display().to_string().replace('\\', "/")
}

/// `../shared/caffe-ref/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    caffe_ref().join("fixtures").join(rel)
}

/// Path of the built `flickr-style` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flickr-style"))
}

/// Runs the binary with `args` in `cwd`; returns (status ok, stdout, stderr).
pub fn run(cwd: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A quiet CPU solver for `file` (relative to `dir`), snapshotting under `prefix`.
pub fn solver_in(
    dir: &std::path::Path,
    file: &str,
    prefix: &std::path::Path,
) -> flickr_style::Result<flickr_style::train::solver::Solver> {
    flickr_style::train::solver::Solver::new(&solver_options(dir, file, prefix))
}

/// The options of [`solver_in`]: the CPU kernels, no output but snapshots.
pub fn solver_options(
    dir: &std::path::Path,
    file: &str,
    prefix: &std::path::Path,
) -> flickr_style::train::solver::SolverOptions {
    flickr_style::train::solver::SolverOptions {
        solver: PathBuf::from(file),
        base_dir: dir.to_path_buf(),
        snapshot_prefix: Some(prefix.to_string_lossy().into_owned()),
        max_iter: None,
        metrics: None,
        echo: false,
        progress: false,
        device: flickr_style::train::compute::DeviceChoice::Cpu,
        tensor_ops: false,
        fused: false,
        bf16: false,
        rotate90: false,
        augment: None,
        state: None,
    }
}

pub mod golden;
pub mod http;

/// A float32 `.npy` file's shape and values.
pub fn npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let f = npyz::NpyFile::new(bytes.as_slice()).unwrap();
    let shape = f.shape().iter().map(|&d| d as usize).collect();
    (shape, f.into_vec::<f32>().unwrap())
}

/// The training losses of a `--metrics` JSONL file, iteration by iteration.
pub fn train_losses(metrics: &Path) -> Vec<f64> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["phase"] == "train")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

/// Largest |a-b| / max(largest |b|, floor) over the arrays.
pub fn rel_err(a: &[f32], b: &[f32], floor: f32) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(floor);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

/// Writes a copy of the tiny net with `edit` applied, paths made absolute.
pub fn edited_net(t: &Path, edit: impl FnOnce(String) -> String) -> PathBuf {
    let dir = fixture("tiny-net");
    let text = std::fs::read_to_string(dir.join("train_val.prototxt"))
        .unwrap()
        .replace("\"data/", &format!("\"{}/data/", slashed(&dir)));
    let net = t.join("net.prototxt");
    std::fs::write(&net, edit(text)).unwrap();
    let solver = std::fs::read_to_string(dir.join("solver.prototxt"))
        .unwrap()
        .replace("train_val.prototxt", &slashed(&net));
    std::fs::write(t.join("solver.prototxt"), solver).unwrap();
    t.join("solver.prototxt")
}

/// `to-lmdb` of the fixture images' list into `db`: raw datums resized to
/// 256x256, in list order, failing on any unreadable image.
pub fn fixture_to_lmdb_options(db: PathBuf) -> flickr_style::pipeline::to_lmdb::ToLmdbOptions {
    flickr_style::pipeline::to_lmdb::ToLmdbOptions {
        root: fixture("images"),
        list: fixture("images/list.txt"),
        db,
        resize: Some((256, 256)),
        pad: None,
        gray: false,
        shuffle: false,
        seed: 0,
        encoded: false,
        encode_type: String::new(),
        check_size: false,
        strict: true,
        force: false,
    }
}

/// `finetune` arguments for `max_iter` iterations of the tiny-net fixture
/// from Caffe's initial weights (run in the fixture's folder), snapshotting
/// under `prefix`, plus `extra`.
pub fn tiny_finetune_args<'a>(
    prefix: &'a str,
    max_iter: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "finetune",
        "--solver",
        "solver.prototxt",
        "--weights",
        "snapshots/init_iter_0.caffemodel",
        "--snapshot-prefix",
        prefix,
        "--max-iter",
        max_iter,
    ];
    args.extend_from_slice(extra);
    args
}

/// [`tiny_finetune_args`] run through the binary, writing `--metrics` to
/// `metrics`; returns what [`run`] returns.
pub fn train_tiny_cli(prefix: &Path, metrics: &Path, max_iter: usize) -> (bool, String, String) {
    let max_iter = max_iter.to_string();
    run(
        &fixture("tiny-net"),
        &tiny_finetune_args(
            prefix.to_str().unwrap(),
            &max_iter,
            &["--metrics", metrics.to_str().unwrap()],
        ),
    )
}

/// The fixture photos at 64x64 (decoded and resized as OpenCV does) as PNGs
/// `dir/<i>.png`, in colour or gray; returns their `path label` list text.
pub fn fixture_photo_pngs(dir: &Path, gray: bool) -> String {
    use flickr_style::pipeline::decode::{read_image, ColorMode};
    use flickr_style::pipeline::resize::resize_linear;
    let images = fixture("images");
    let mut list = String::new();
    for (i, line) in std::fs::read_to_string(images.join("list.txt"))
        .unwrap()
        .lines()
        .enumerate()
    {
        let (rel, label) = line.rsplit_once(' ').unwrap();
        let mode = if gray {
            ColorMode::Gray
        } else {
            ColorMode::Color
        };
        let m = resize_linear(&read_image(&images.join(rel), mode).unwrap(), 64, 64);
        let path = dir.join(format!("{i}.png"));
        if gray {
            image::GrayImage::from_raw(64, 64, m.data)
                .unwrap()
                .save(&path)
                .unwrap();
        } else {
            image::RgbImage::from_fn(64, 64, |x, y| {
                let p = &m.data[(y as usize * 64 + x as usize) * 3..][..3];
                image::Rgb([p[2], p[1], p[0]])
            })
            .save(&path)
            .unwrap();
        }
        list += &format!("{} {label}\n", path.display());
    }
    list
}
