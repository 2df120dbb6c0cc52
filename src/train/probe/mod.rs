//! `probe`: train only a net's classifier on its pretrained features (a
//! "linear probe"), the fast route on a CPU: one forward pass over the
//! training and test images ([`features`](crate::inference::features)), then the
//! classifier layer alone trained by the recipe's own solver on the saved
//! features, which takes seconds where fine-tuning the whole net takes hours.
//!
//! The classifier is the InnerProduct (or, as in MobileNet, Convolution)
//! layer that feeds the net's loss; the probe net is the recipe's net from
//! that layer on (classifier, loss, accuracy, with their settings: class
//! weights, lr_mult, fillers), fed by
//! Data layers reading the feature LMDBs. Its trained layer is put back into
//! the pretrained net, which gives `probe.caffemodel`: a whole net, ready for
//! `evaluate`, `classify`, `deploy` or Caffe, or to start fine-tuning from
//! (a trained head first is the LP-FT recipe).
mod cache;
mod cut;

use super::compute::{Compute, DeviceChoice};
use super::layers::BuildContext;
use super::net::Net;
use super::solver::{Solver, SolverOptions, TestResult};
use crate::caffe::model::{read_caffemodel, read_net_prototxt};
use crate::caffe::net_state::{state_of, StateFlags};
use crate::caffe::proto::{NetParameter, Phase, SolverParameter};
use crate::caffe::{prototxt, write_binary};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::inference::features::{extract_from, FeatureOptions, Features, SaveOptions};
use crate::inference::tta::Tta;
use cache::{cached, stamp, STAMP};
use cut::{batch_size, cut, probe_net_def, reading_training_data};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// What to probe and how.
pub struct ProbeOptions<'a> {
    /// The recipe's solver prototxt (its `net` holds both phases).
    pub solver: &'a Path,
    /// Stages and level for the training net, joined to the solver's
    /// `train_state` as `finetune` joins them (the test net keeps the
    /// solver's `test_state`): for a net file whose variants are told
    /// apart by stage.
    pub state: &'a crate::caffe::net_state::StateFlags,
    /// Pretrained weights, loaded by layer name in turn.
    pub weights: &'a [&'a Path],
    /// Where relative paths resolve (Caffe: the current folder).
    pub base_dir: &'a Path,
    /// Folder for the features, the probe's net and solver, its snapshot
    /// and `probe.caffemodel`.
    pub out: &'a Path,
    /// Overrides the solver's max_iter.
    pub max_iter: Option<usize>,
    /// Where to run.
    pub device: DeviceChoice,
    /// bf16 mixed precision, for the features and the training (GPU; see
    /// [`crate::train::precision`]).
    pub bf16: bool,
    /// Run the GPU code path (tensor ops) even on the CPU, and with `fused`
    /// its fused kernels' CPU twins: for checking that path without a GPU.
    pub tensor_ops: bool,
    /// See `tensor_ops`.
    pub fused: bool,
    /// JSONL metrics of the probe's training.
    pub metrics: Option<PathBuf>,
    /// Print the solver's log lines and progress.
    pub verbose: bool,
    /// Stops training (with a snapshot) when set, as Ctrl-C does.
    pub stop: Option<Arc<AtomicBool>>,
    /// Feed the training features in a seeded shuffle (from the solver's
    /// random_seed) rather than in the order of the training data; off, the
    /// probe trains exactly as fine-tuning with every layer below the
    /// classifier frozen would on unaugmented data (tested).
    pub shuffle: bool,
    /// Train on these views of each training image too (its mirror image,
    /// its quarter turns, warps), a row of features each: the probe's data
    /// augmentation. The test images are seen once, unchanged.
    pub views: Tta,
}

/// What [`probe`] made.
#[derive(Debug)]
pub struct Probe {
    /// The pretrained net with the trained classifier: `out/probe.caffemodel`.
    pub model: PathBuf,
    /// The classifier layer trained.
    pub classifier: String,
    /// The blob it reads (the features saved).
    pub feature: String,
    /// The saved training and test features.
    pub train: Features,
    /// See `train`.
    pub test: Features,
    /// The probe's test phases (outputs over the test features).
    pub tests: Vec<TestResult>,
    /// Its training losses by iteration.
    pub trajectory: Vec<(usize, f32)>,
}

impl Probe {
    /// What was trained on what (`views`: the views of each training
    /// image, 1 for the images alone), the last test phase's outputs and
    /// where the net went, one line each.
    pub fn summary(&self, views: usize) -> String {
        let mut s = if views > 1 {
            format!(
                "trained {} on {} ({} training images in {views} views each, {} test images)\n",
                self.classifier,
                self.feature,
                self.train.rows / views as u64,
                self.test.rows
            )
        } else {
            format!(
                "trained {} on {} ({} training and {} test images)\n",
                self.classifier, self.feature, self.train.rows, self.test.rows
            )
        };
        if let Some((iter, _, outputs)) = self.tests.last() {
            let shown: Vec<String> = outputs
                .iter()
                .map(|(k, v)| format!("{k} = {v:.4}"))
                .collect();
            s += &format!("test images at iteration {iter}: {}\n", shown.join(", "));
        }
        s + &format!("the net with it: {}\n", self.model.display())
    }
}

/// Trains the classifier of `o.solver`'s net on the features of
/// `o.weights` and returns the whole net with it.
pub fn probe(o: &ProbeOptions) -> Result<Probe> {
    let solver_path = o.base_dir.join(o.solver);
    let mut param: SolverParameter = prototxt::read(&solver_path)?;
    o.state.apply_to_solver(&mut param);
    let ctx = format!("solver {}", o.solver.display());
    let net_file =
        match (&param.net, &param.train_net, &param.test_net[..]) {
            (Some(n), None, []) => n.clone(),
            _ => return Err(Error::model(
                &ctx,
                "the probe needs a solver whose `net:` holds both phases (as Caffe's recipes do)",
            )),
        };
    // Caffe resolves from the current folder; else beside the solver, as `finetune` does.
    let base = crate::train::solver::paths_base(o.base_dir, &solver_path, &net_file, &ctx)?;
    let net_path = base.join(&net_file);
    // Weights resolve from the base folder, whatever folder the probe's own solver runs in.
    let weights: Vec<PathBuf> = o
        .weights
        .iter()
        .map(|w| std::path::absolute(o.base_dir.join(w)).map_err(|e| Error::io(w, e)))
        .collect::<Result<_>>()?;
    let weight_refs: Vec<&Path> = weights.iter().map(PathBuf::as_path).collect();
    let def = read_net_prototxt(&net_path)?;
    // Each phase's layers as the solver picks them: its train_state (with
    // the flags) for the training net, its first test_state for the test
    // net, whose layers also save the features (the TEST transform).
    let train_state = state_of(&def, Phase::Train, param.train_state.as_ref());
    let test_state = state_of(&def, Phase::Test, param.test_state.first());
    let cut = cut(&def, &net_path, [&train_state, &test_state])?;
    let test_def = NetParameter {
        state: Some(test_state.clone()),
        ..def.clone()
    };
    let test_flags = StateFlags {
        level: test_state.level(),
        stages: Vec::new(),
    };
    let mut compute = Compute::for_solver(o.device, &param)?;
    compute.tensor_ops |= o.tensor_ops;
    compute.fused |= o.fused && compute.tensor_ops;
    let compute = compute.with_bf16(o.bf16)?;
    std::fs::create_dir_all(o.out).map_err(|e| Error::io(o.out, e))?;
    let out = std::path::absolute(o.out).map_err(|e| Error::io(o.out, e))?;

    // The training images through the TEST transform (no random crops or
    // mirrors: each image's features once), keyed in a seeded shuffle
    // because a Data layer reads in key order.
    let blobs = [cut.feature.clone()];
    let seed = param.random_seed().max(0) as u64;
    let save =
        |def: &NetParameter, dir: &str, shuffle: Option<u64>, views: Tta| -> Result<Features> {
            let dir = out.join(dir);
            let stamp = stamp(
                def,
                &base,
                &weights,
                &cut.feature,
                shuffle,
                &views.to_string(),
            );
            let extra_views = &views.views()[1..];
            if let Some(f) = cached(&dir, &cut.feature, &stamp) {
                if o.verbose {
                    crate::progress::say(format_args!(
                        "probe: {} features of {} images are up to date",
                        dir.display(),
                        f.rows
                    ));
                }
                return Ok(f);
            }
            // A pass that stops part way leaves the old stamp invalid.
            let _ = std::fs::remove_file(dir.join(STAMP));
            let f = extract_from(
                def,
                &FeatureOptions {
                    model: &net_path,
                    state: &test_flags,
                    weights: &weight_refs,
                    base_dir: &base,
                    compute: &compute,
                    source: None,
                    iterations: None,
                    save: SaveOptions {
                        blobs: &blobs,
                        out: &dir,
                        lmdb: true,
                        force: true,
                    },
                    shuffle_keys: shuffle,
                    stop: o.stop.clone(),
                    extra_views,
                },
            )?;
            write_atomic(&dir.join(STAMP), stamp.as_bytes())?;
            Ok(f)
        };
    if o.verbose {
        crate::progress::say(format_args!(
            "probe: saving {} (the input of {}) for the training images",
            cut.feature,
            def.layer[cut.classifier].name()
        ));
    }
    let train = save(
        &reading_training_data(&test_def, &cut),
        "train_features",
        o.shuffle.then_some(seed),
        o.views,
    )?;
    if o.verbose {
        crate::progress::say("probe: and for the test images");
    }
    let test = save(&test_def, "test_features", None, Tta::None)?;

    let probe_net = out.join("probe_net.prototxt");
    let lmdb = |f: &Features| f.blobs[0].lmdb.clone().expect("saved with an LMDB");
    let net = probe_net_def(&def, &cut, &lmdb(&train), &lmdb(&test), &net_path)?;
    write_atomic(&probe_net, prototxt::to_string(&net).as_bytes())?;
    let test_batch = batch_size(&def.layer[cut.test_data]).max(1) as u64;
    let mut sp = param.clone();
    sp.net = Some(probe_net.to_string_lossy().into_owned());
    sp.test_iter = if sp.test_iter.is_empty() {
        Vec::new()
    } else {
        vec![test.rows.div_ceil(test_batch) as i32]
    };
    sp.snapshot = Some(0);
    sp.snapshot_after_train = Some(true);
    sp.snapshot_prefix = Some(out.join("classifier").to_string_lossy().into_owned());
    if let Some(m) = o.max_iter {
        sp.max_iter = Some(m as i32);
    }
    let probe_solver = out.join("probe_solver.prototxt");
    write_atomic(&probe_solver, prototxt::to_string(&sp).as_bytes())?;

    let mut solver = Solver::new(&SolverOptions {
        solver: probe_solver.clone(),
        base_dir: out.clone(),
        snapshot_prefix: None,
        max_iter: None,
        metrics: o.metrics.clone(),
        echo: o.verbose,
        progress: o.verbose,
        device: o.device,
        tensor_ops: o.tensor_ops,
        fused: o.fused,
        bf16: o.bf16,
        rotate90: false,
        augment: None,
        state: None,
    })?;
    if let Some(stop) = &o.stop {
        solver.set_stop_flag(stop.clone());
    }
    // A classifier the pretrained weights hold (same name) starts from them,
    // as in fine-tuning; a renamed one starts from its filler.
    solver.load_weights(&weights)?;
    solver.solve()?;
    let head = out.join(format!("classifier_iter_{}.caffemodel", solver.iter));

    // The pretrained net with the trained classifier, as a snapshot of the
    // recipe's training net would hold it.
    let ctx = BuildContext::new(&base, seed, Phase::Train, &compute);
    let mut whole = Net::new(&def, &ctx, param.train_state.as_ref())?;
    for w in weight_refs.iter().copied().chain([head.as_path()]) {
        whole.copy_trained_from(&read_caffemodel(w)?, &w.display().to_string())?;
    }
    let model = out.join("probe.caffemodel");
    write_binary(&model, &whole.to_proto(&def)?)?;
    Ok(Probe {
        model,
        classifier: def.layer[cut.classifier].name().to_string(),
        feature: cut.feature,
        train,
        test,
        tests: std::mem::take(&mut solver.test_results),
        trajectory: std::mem::take(&mut solver.trajectory),
    })
}
