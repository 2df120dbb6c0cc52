//! The whole Flickr Style recipe in one call: assemble → compute-mean →
//! to-lmdb (optional) → fetch CaffeNet weights → finetune. Each stage is
//! skipped when its outputs are already complete, and training resumes from
//! its latest snapshot, so an interrupted run is continued by running it again.
use crate::caffe::model::read_net_prototxt;
use crate::caffe::proto::{
    solver_parameter::SolverMode, DataParameter, NetParameter, SolverParameter,
};
use crate::caffe::{proto::data_parameter::Db, prototxt};
use crate::error::{Error, IoContext, Result};
use crate::pipeline::assemble::{assemble, AssembleOptions};
use crate::pipeline::fetch::{fetch_file, Checksum, FetchOptions};
use crate::pipeline::mean::{compute_mean, MeanSource};
use crate::pipeline::to_lmdb::{to_lmdb, ToLmdbOptions};
use crate::train::compute::DeviceChoice;
use crate::train::solver::{Solver, SolverOptions};
use std::path::{Path, PathBuf};

/// Where Caffe's model zoo serves the reference CaffeNet weights, and their SHA-1.
pub const CAFFENET_URL: &str =
    "http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel";
/// SHA-1 of `bvlc_reference_caffenet.caffemodel`.
pub const CAFFENET_SHA1: &str = "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46";

/// Options of the whole recipe.
#[derive(Clone, Debug)]
pub struct WorkflowOptions {
    /// The download stage (its `out` is the Flickr Style data folder).
    pub assemble: AssembleOptions,
    /// Folder with Caffe's `train_val.prototxt` and `solver.prototxt` for the recipe.
    pub recipe: PathBuf,
    /// Pretrained weights; `None` downloads the reference CaffeNet.
    pub weights: Option<PathBuf>,
    /// Where to download the reference CaffeNet from.
    pub weights_url: String,
    /// Train from LMDBs made by to-lmdb instead of decoding JPEGs every epoch.
    pub lmdb: bool,
    /// Overrides the nets' batch_size.
    pub batch_size: Option<u32>,
    /// Overrides the solver's max_iter.
    pub max_iter: Option<usize>,
    /// Overrides test_iter (for every test net).
    pub test_iter: Option<i32>,
    /// Overrides test_interval.
    pub test_interval: Option<i32>,
    /// Overrides snapshot.
    pub snapshot: Option<i32>,
    /// JSONL metrics file.
    pub metrics: Option<PathBuf>,
    /// Print progress and Caffe-style logs.
    pub verbose: bool,
    /// Train on this GPU (needs a CUDA build); `None` trains on the CPU.
    pub gpu: Option<usize>,
    /// bf16 mixed precision (GPU only; see [`crate::train::precision`]).
    pub bf16: bool,
}

/// Runs every stage; `interrupt` is checked by the long-running ones.
pub fn run(
    opts: &WorkflowOptions,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<PathBuf> {
    let data = opts.assemble.out.clone();
    let say = |m: String| {
        if opts.verbose {
            eprintln!("{m}");
        }
    };
    say(format!(
        "[1/5] assemble: {} images, seed {}",
        opts.assemble.images, opts.assemble.seed
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io(&data, e))?;
    let stop_a = stop.clone();
    let summary = rt.block_on(assemble(&opts.assemble, async move {
        while !stop_a.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }))?;
    drop(rt);
    if summary.interrupted {
        return Err(Error::Interrupted);
    }
    say(format!(
        "      {} images available ({} train, {} test)",
        summary.ok, summary.train, summary.test
    ));
    if summary.train == 0 {
        return Err(Error::model(
            "assemble",
            "no training image could be downloaded; nothing to train on",
        ));
    }
    let (train_list, test_list) = (data.join("train.txt"), data.join("test.txt"));

    let mean = data.join("mean.binaryproto");
    if is_newer(&mean, &train_list) {
        say("[2/5] compute-mean: up to date".into());
    } else {
        say("[2/5] compute-mean over train.txt at 256x256".into());
        let (m, _) = compute_mean(&MeanSource::List {
            list: train_list.clone(),
            root: PathBuf::new(),
            resize: Some((256, 256)),
            gray: false,
        })?;
        m.write_binaryproto(&mean)?;
    }

    let mut sources = (train_list.clone(), test_list.clone());
    if opts.lmdb {
        say("[3/5] to-lmdb: train and test lists at 256x256".into());
        let mut dbs = Vec::new();
        for (list, name) in [(&train_list, "train_lmdb"), (&test_list, "test_lmdb")] {
            let db = data.join(name);
            if !is_newer(&db.join("data.mdb"), list) {
                to_lmdb(&ToLmdbOptions {
                    root: PathBuf::new(),
                    list: list.clone(),
                    db: db.clone(),
                    resize: Some((256, 256)),
                    gray: false,
                    shuffle: true,
                    seed: opts.assemble.seed as u64,
                    encoded: false,
                    encode_type: String::new(),
                    check_size: false,
                    strict: false,
                    force: true,
                })?;
            }
            dbs.push(db);
        }
        sources = (dbs[0].clone(), dbs[1].clone());
    } else {
        say(
            "[3/5] to-lmdb: skipped (training reads the JPEG lists; pass --lmdb to convert)".into(),
        );
    }

    let weights = match &opts.weights {
        Some(w) => {
            say(format!("[4/5] weights: {}", w.display()));
            w.clone()
        }
        None => {
            let dest = data.join("bvlc_reference_caffenet.caffemodel");
            let sum = Checksum::Sha1(CAFFENET_SHA1.into());
            if dest.exists() && sum.digest_file(&dest)? == CAFFENET_SHA1 {
                say(
                    "[4/5] download-model: bvlc_reference_caffenet.caffemodel present and verified"
                        .into(),
                );
            } else {
                say(format!("[4/5] download-model: {}", opts.weights_url));
                fetch_file(
                    &opts.weights_url,
                    &dest,
                    Some(&sum),
                    &FetchOptions::default(),
                )?;
            }
            dest
        }
    };

    say("[5/5] finetune".into());
    let (solver_path, prefix) = write_recipe(opts, &data, &sources, &mean)?;
    let mut solver = Solver::new(&SolverOptions {
        solver: solver_path,
        base_dir: PathBuf::from("."),
        snapshot_prefix: None,
        max_iter: None,
        metrics: opts.metrics.clone(),
        echo: opts.verbose,
        progress: opts.verbose,
        device: opts.gpu.map_or(DeviceChoice::Cpu, DeviceChoice::Gpu),
        tensor_ops: false,
        fused: false,
        bf16: opts.bf16,
    })?;
    let stop_flag = solver.stop_flag();
    let watcher_stop = stop.clone();
    std::thread::spawn(move || loop {
        if watcher_stop.load(std::sync::atomic::Ordering::Relaxed) {
            stop_flag.store(true, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    });
    let max_iter = solver.param().max_iter().max(0) as usize;
    let final_model = PathBuf::from(format!("{}_iter_{max_iter}.caffemodel", prefix.display()));
    if final_model.exists() {
        say(format!("      already trained: {}", final_model.display()));
        return Ok(final_model);
    }
    match latest_snapshot(&prefix)? {
        Some(state) => {
            say(format!("      resuming from {}", state.display()));
            solver.restore(&state)?;
        }
        None => solver.load_weights(&[weights])?,
    }
    solver.solve()?;
    Ok(final_model)
}

/// Whether `out` exists and is at least as new as `input`.
fn is_newer(out: &Path, input: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    matches!((m(out), m(input)), (Some(a), Some(b)) if a >= b)
}

/// The recipe's net and solver with our data, mean and overrides; written
/// beside the data so the run can be repeated with Caffe or `finetune`.
fn write_recipe(
    opts: &WorkflowOptions,
    data: &Path,
    sources: &(PathBuf, PathBuf),
    mean: &Path,
) -> Result<(PathBuf, PathBuf)> {
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| Error::io(p, e));
    let mut net: NetParameter = read_net_prototxt(&opts.recipe.join("train_val.prototxt"))?;
    let mut solver: SolverParameter = prototxt::read(&opts.recipe.join("solver.prototxt"))?;
    for l in &mut net.layer {
        if !matches!(l.r#type(), "ImageData" | "Data") {
            continue;
        }
        let test = l
            .include
            .iter()
            .any(|r| r.phase() == crate::caffe::proto::Phase::Test);
        let source = if test { &sources.1 } else { &sources.0 };
        let batch = opts.batch_size.unwrap_or_else(|| {
            l.image_data_param
                .as_ref()
                .map(|p| p.batch_size())
                .or(l.data_param.as_ref().and_then(|p| p.batch_size))
                .unwrap_or(50)
        });
        let tp = l.transform_param.get_or_insert_with(Default::default);
        tp.mean_file = Some(abs(mean)?.to_string_lossy().into_owned());
        if opts.lmdb {
            l.r#type = Some("Data".into());
            l.image_data_param = None;
            l.data_param = Some(DataParameter {
                source: Some(abs(source)?.to_string_lossy().into_owned()),
                batch_size: Some(batch),
                backend: Some(Db::Lmdb as i32),
                ..Default::default()
            });
        } else {
            let p = l.image_data_param.get_or_insert_with(Default::default);
            p.source = Some(abs(source)?.to_string_lossy().into_owned());
            p.batch_size = Some(batch);
            p.root_folder = None;
            if p.new_height() == 0 {
                p.new_height = Some(256);
                p.new_width = Some(256);
            }
        }
    }
    let net_path = data.join("train_val.prototxt");
    crate::fsutil::write_atomic(&net_path, prototxt::to_string(&net).as_bytes())?;
    let snapshots = data.join("snapshots");
    std::fs::create_dir_all(&snapshots).at(&snapshots)?;
    let prefix = abs(&snapshots.join("finetune_flickr_style"))?;
    solver.net = Some(abs(&net_path)?.to_string_lossy().into_owned());
    solver.snapshot_prefix = Some(prefix.to_string_lossy().into_owned());
    if let Some(m) = opts.max_iter {
        solver.max_iter = Some(m as i32);
    }
    if let Some(t) = opts.test_iter {
        solver.test_iter = vec![t; solver.test_iter.len().max(1)];
    }
    if let Some(t) = opts.test_interval {
        solver.test_interval = Some(t);
    }
    if let Some(s) = opts.snapshot {
        solver.snapshot = Some(s);
    }
    // The device is this run's choice (--gpu), not the recipe's solver_mode.
    solver.set_solver_mode(if opts.gpu.is_some() {
        SolverMode::Gpu
    } else {
        SolverMode::Cpu
    });
    if let Some(g) = opts.gpu {
        solver.device_id = Some(g as i32);
    }
    if solver.random_seed() < 0 {
        solver.random_seed = Some(opts.assemble.seed as i64);
    }
    let solver_path = data.join("solver.prototxt");
    crate::fsutil::write_atomic(&solver_path, prototxt::to_string(&solver).as_bytes())?;
    Ok((abs(&solver_path)?, prefix))
}

/// The `.solverstate` with the highest iteration under `prefix`, if any.
fn latest_snapshot(prefix: &Path) -> Result<Option<PathBuf>> {
    let dir = crate::fsutil::parent_dir(prefix);
    let stem = format!(
        "{}_iter_",
        prefix.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut best: Option<(u64, PathBuf)> = None;
    for e in std::fs::read_dir(&dir).at(&dir)? {
        let name = e.at(&dir)?.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix(&stem)
            .and_then(|r| r.strip_suffix(".solverstate"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            if best.as_ref().is_none_or(|(b, _)| n > *b) {
                best = Some((n, dir.join(&name)));
            }
        }
    }
    Ok(best.map(|(_, p)| p))
}
