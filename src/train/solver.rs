//! Caffe's solver: the iteration loop (tests, display, update,
//! snapshots), the update rule of the solver type (SGD with the learning
//! rate inside the momentum history, or Nesterov, AdaGrad, RMSProp,
//! AdaDelta, Adam), and snapshots Caffe can read (`.caffemodel` + `.solverstate`)
//! plus a sidecar with what Caffe forgets (data positions, loss window), so a
//! resume continues exactly from any iteration.
use super::compute::{Compute, DeviceChoice};
use super::layers::BuildContext;
use super::log::{g, Logger};
use super::lr_policy::learning_rate;
use super::net::Net;
use super::sgd::adaptive::Rule;
use super::sgd::{sgd_update_keeping, SgdConfig};
use super::summary::WeightSources;
use crate::caffe::hdf5_snapshot;
use crate::caffe::model::{read_caffemodel, read_net_prototxt, upgrade};
use crate::caffe::proto::{
    solver_parameter::SnapshotFormat, NetParameter, Phase, SolverParameter, SolverState,
};
use crate::caffe::{prototxt, read_binary, write_binary, BlobProto};
use crate::error::{Error, IoContext, Result};
use candle_core::Tensor;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// How to run a solver.
#[derive(Clone, Debug)]
pub struct SolverOptions {
    /// The solver prototxt.
    pub solver: PathBuf,
    /// Folder that relative paths (net, sources, snapshots) are resolved from (Caffe uses the CWD).
    pub base_dir: PathBuf,
    /// Overrides the solver's snapshot_prefix.
    pub snapshot_prefix: Option<String>,
    /// Overrides the solver's max_iter.
    pub max_iter: Option<usize>,
    /// JSONL metrics file.
    pub metrics: Option<PathBuf>,
    /// Print log lines to stderr.
    pub echo: bool,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Where to train.
    pub device: DeviceChoice,
    /// Run the GPU code path (tensor ops) even on the CPU.
    pub tensor_ops: bool,
    /// With `tensor_ops` on the CPU, use the fused ops (their CPU twins).
    pub fused: bool,
    /// bf16 mixed-precision convolutions and inner products (GPU, or
    /// `tensor_ops` on the CPU); see [`crate::train::precision`].
    pub bf16: bool,
    /// Turn training images by random multiples of 90° (beyond Caffe).
    pub rotate90: bool,
    /// Warp training images by random affine maps (beyond Caffe).
    pub augment: Option<crate::train::augment::Augment>,
    /// `caffe train`'s `-level` and `-stage`: the level replaces the
    /// solver's `train_state` level and the stages join its stages. `None`
    /// keeps the solver's states as written (as pycaffe's solvers do).
    pub state: Option<crate::caffe::net_state::StateFlags>,
}

/// What Caffe does not store in a `.solverstate`, kept beside it.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Sidecar {
    iter: usize,
    /// The nets' Caffe generator (Dropout draws from it on the CPU).
    #[serde(default)]
    caffe_rng: Option<crate::caffe::rng::CaffeRngState>,
    /// The nets' C-library `rand()` (shuffled HDF5Data layers draw from it).
    #[serde(default)]
    libc_rand: Option<crate::caffe::libc_rand::LibcRandState>,
    train_states: BTreeMap<String, u64>,
    test_states: Vec<BTreeMap<String, u64>>,
    /// Values layers carry between forward passes (recurrent layers' last
    /// hidden states), by layer name; Caffe's snapshots lose them.
    #[serde(default)]
    train_carried: Carried,
    #[serde(default)]
    test_carried: Vec<Carried>,
    losses: Vec<f32>,
    smoothed_loss: f32,
}

/// Per layer name, the values it carries between forward passes.
type Carried = BTreeMap<String, Vec<Vec<f32>>>;

/// One test phase: (iteration, test net index, mean outputs by name).
pub type TestResult = (usize, usize, Vec<(String, f32)>);

/// A running solver: SGD or one of Caffe's other types ([`Rule`]).
pub struct Solver {
    param: SolverParameter,
    rule: Rule,
    net_def: NetParameter,
    base_dir: PathBuf,
    /// The training net.
    pub train: Net,
    /// Test nets.
    pub tests: Vec<Net>,
    /// The Caffe generator the nets share (saved with each snapshot).
    caffe_rng: crate::caffe::rng::SharedCaffeRng,
    /// The nets' shared `rand()` (see [`BuildContext::libc_rand`]).
    libc_rand: crate::caffe::libc_rand::SharedLibcRand,
    history: Vec<Tensor>,
    /// With `snapshot_diff` under an adaptive rule: each parameter's last
    /// step (under SGD the history is the step).
    last_steps: Vec<Option<Tensor>>,
    /// Iterations done.
    pub iter: usize,
    current_step: usize,
    losses: Vec<f32>,
    smoothed_loss: f32,
    start_iter: usize,
    /// Log output.
    pub log: Logger,
    metrics: Option<std::fs::File>,
    /// When this solver was built: metrics records carry the seconds since.
    started: std::time::Instant,
    stop: Arc<AtomicBool>,
    progress: bool,
    /// Losses of every iteration run by [`Solver::solve`] (iteration, loss).
    pub trajectory: Vec<(usize, f32)>,
    /// Which layers' values came from which weights file.
    pub weight_sources: WeightSources,
    /// Whether the weight warnings were logged.
    warned: bool,
    /// Test outputs of every test phase: (iteration, net, [(name, value)]).
    pub test_results: Vec<TestResult>,
}

impl Solver {
    /// Reads the solver and builds its nets.
    pub fn new(opts: &SolverOptions) -> Result<Solver> {
        // Path::join keeps an absolute path as it is.
        let solver_path = opts.base_dir.join(&opts.solver);
        let mut param: SolverParameter = prototxt::read(&solver_path)?;
        let ctx = format!("solver {}", opts.solver.display());
        let rule = Rule::from_param(&param, &ctx)?;
        // The lr policy's settings are checked before any net is built.
        learning_rate(&param, 0, &mut 0)?;
        if !matches!(param.regularization_type(), "L2" | "L1") {
            return Err(Error::model(
                &ctx,
                format!(
                    "regularization_type \"{}\" is not L1 or L2",
                    param.regularization_type()
                ),
            ));
        }
        if let Some(p) = &opts.snapshot_prefix {
            param.snapshot_prefix = Some(p.clone());
        } else if param.snapshot_prefix().is_empty() {
            let stem = opts.solver.with_extension("");
            param.snapshot_prefix = Some(stem.to_string_lossy().into_owned());
        }
        if let Some(m) = opts.max_iter {
            param.max_iter = Some(m as i32);
        }
        if let Some(flags) = &opts.state {
            flags.apply_to_solver(&mut param);
        }
        // Caffe resolves paths from the CWD; if the net is not found there but
        // is beside the solver, resolve everything from the solver's folder.
        let base_dir = match param.net.as_ref().or(param.train_net.as_ref()) {
            Some(net) => paths_base(&opts.base_dir, &solver_path, net, &ctx)?,
            None => opts.base_dir.clone(),
        };
        let (train_def, test_defs) = net_definitions(&param, &base_dir, &ctx)?;
        if test_defs.len() != param.test_iter.len() {
            return Err(Error::model(
                &ctx,
                format!(
                    "{} test nets but {} test_iter values",
                    test_defs.len(),
                    param.test_iter.len()
                ),
            ));
        }
        let seed = if param.random_seed() >= 0 {
            param.random_seed() as u64
        } else {
            0
        };
        let mut compute = Compute::for_solver(opts.device, &param)?;
        compute.tensor_ops |= opts.tensor_ops;
        compute.fused |= opts.fused && compute.tensor_ops;
        let compute = compute.with_bf16(opts.bf16)?;
        // One Caffe generator for all the nets, as Caffe has one: the test
        // nets draw (their data layers' seeds, their fillers) after the
        // training net, in Caffe's order.
        let caffe_rng = crate::caffe::rng::shared(seed as u32);
        // And one `rand()`, as Caffe's process has.
        let libc_rand = crate::caffe::libc_rand::shared();
        let build = |phase| BuildContext {
            rotate90: opts.rotate90,
            augment: opts.augment,
            caffe_rng: caffe_rng.clone(),
            libc_rand: libc_rand.clone(),
            ..BuildContext::new(&base_dir, seed, phase, &compute)
        };
        let mut log = Logger::new(opts.echo);
        let mut net = |def: &NetParameter, phase, extra: Option<&crate::caffe::proto::NetState>| {
            Net::new_logged(def, &build(phase), extra, &mut log)
        };
        let train = net(&train_def, Phase::Train, param.train_state.as_ref())?;
        let tests = test_defs
            .iter()
            .enumerate()
            .map(|(i, d)| net(d, Phase::Test, param.test_state.get(i)))
            .collect::<Result<Vec<_>>>()?;
        if compute.device.is_cpu() {
            // Each net fits alone (Net::new checks); the solver keeps them all.
            let floors: Vec<_> = std::iter::once(&train)
                .chain(&tests)
                .map(Net::memory_floor)
                .collect();
            crate::train::memory::check_fits(
                &format!("solver {}", opts.solver.display()),
                &floors,
            )?;
        }
        // Caffe's layout: one set per history the rule keeps, set after set.
        let n = train.params().len();
        let history = (0..n * rule.histories())
            .map(|i| Ok(train.param(i % n).zeros_like()?))
            .collect::<Result<Vec<_>>>()?;
        let metrics = match &opts.metrics {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .at(p)?,
            ),
            None => None,
        };
        if param.solver_mode() == crate::caffe::proto::solver_parameter::SolverMode::Gpu
            && compute.device.is_cpu()
        {
            log.info(
                "solver.rs:0",
                "solver_mode is GPU (Caffe's default) but this binary has no CUDA support: using the CPU.",
            );
        }
        log.info("solver.rs:0", &format!("Using {}", compute.describe()));
        if rule != Rule::Sgd {
            log.info("solver.rs:0", &format!("Solver type {}", rule.name()));
        }
        for (name, ty, back) in train.layer_summary() {
            if !back && ty != "Data" && ty != "ImageData" {
                log.info(
                    "net.cpp:226",
                    &format!("{name} does not need backward computation."),
                );
            }
        }
        Ok(Solver {
            param,
            rule,
            net_def: train_def,
            base_dir,
            train,
            tests,
            caffe_rng,
            libc_rand,
            history,
            last_steps: Vec::new(),
            iter: 0,
            current_step: 0,
            losses: Vec::new(),
            smoothed_loss: 0.0,
            start_iter: 0,
            log,
            metrics,
            started: std::time::Instant::now(),
            stop: Arc::new(AtomicBool::new(false)),
            progress: opts.progress,
            trajectory: Vec::new(),
            test_results: Vec::new(),
            weight_sources: WeightSources::default(),
            warned: false,
        })
    }

    /// What training will do, without doing it (`finetune --dry-run`): see
    /// [`summary::report`](super::summary::report).
    pub fn dry_run_report(&self) -> Result<String> {
        super::summary::report(
            &self.param,
            self.iter,
            &self.train,
            &self.tests,
            &self.weight_sources,
        )
    }

    /// The solver parameters in force.
    pub fn param(&self) -> &SolverParameter {
        &self.param
    }

    /// Changes max_iter (e.g. to run a few iterations at a time).
    pub fn set_max_iter(&mut self, max_iter: usize) {
        self.param.max_iter = Some(max_iter as i32);
    }

    /// Changes snapshot_after_train.
    pub fn set_snapshot_after_train(&mut self, on: bool) {
        self.param.snapshot_after_train = Some(on);
    }

    /// Uses `flag` as the stop request (e.g. one a Ctrl-C handler installed early).
    pub fn set_stop_flag(&mut self, flag: Arc<AtomicBool>) {
        self.stop = flag;
    }

    /// A flag that, once set (by a Ctrl-C handler), makes the solver snapshot and stop.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Copies weights from `.caffemodel` files by layer name, in order (`-weights a,b`).
    pub fn load_weights(&mut self, files: &[PathBuf]) -> Result<()> {
        for f in files {
            let path = self.resolve(f);
            self.log
                .info("solver.cpp:72", &format!("Finetuning from {}", f.display()));
            let src = read_caffemodel(&path)?;
            let ignored = self
                .train
                .copy_trained_from(&src, &f.display().to_string())?;
            for name in &ignored {
                self.log
                    .info("net.cpp:746", &format!("Ignoring source layer {name}"));
            }
            self.weight_sources
                .record(&f.display().to_string(), &src.layer, ignored);
            for t in &mut self.tests {
                t.copy_trained_from(&src, &f.display().to_string())?;
            }
        }
        Ok(())
    }

    /// Copies the weights the solver file names (`weights:`, each entry
    /// possibly a comma-separated list), as `caffe train` does when given
    /// neither `-weights` (which replaces them) nor `-snapshot` (which
    /// drops them).
    pub fn load_solver_weights(&mut self) -> Result<()> {
        let files: Vec<PathBuf> = self
            .param
            .weights
            .iter()
            .flat_map(|w| w.split(','))
            .filter(|w| !w.is_empty())
            .map(PathBuf::from)
            .collect();
        self.load_weights(&files)
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        // Path::join keeps an absolute path as it is.
        self.base_dir.join(p)
    }

    /// Restores a `.solverstate` (and its sidecar, if any).
    pub fn restore(&mut self, state_path: &Path) -> Result<()> {
        let full = self.resolve(state_path);
        let state: SolverState = if hdf5_snapshot::is_hdf5(&full) {
            hdf5_snapshot::read_solverstate(&full)
        } else {
            read_binary(&full, "solverstate")
        }
        .map_err(|e| crate::caffe::model::mixed_up(e, &full, ".caffemodel"))?;
        self.log.info(
            "sgd_solver.cpp:318",
            &format!(
                "Restoring previous solver status from {}",
                state_path.display()
            ),
        );
        if state.history.len() != self.history.len() {
            let n = self.train.params().len();
            let per = match self.rule.histories() {
                1 => String::new(),
                k => format!(
                    " and the {} solver keeps {k} history blobs for each",
                    self.rule.name()
                ),
            };
            return Err(Error::model(
                state_path.display(),
                format!("has {} history blobs but the net has {n} learnable parameters{per}; was it written for this net and solver type?", state.history.len()),
            ));
        }
        if let Some(learned) = &state.learned_net {
            // Caffe opens learned_net relative to the CWD; fall back to the
            // solverstate's own folder so a moved snapshot still resumes.
            let mut model = self.resolve(Path::new(learned));
            if !model.exists() {
                let beside = crate::fsutil::parent_dir(&full)
                    .join(Path::new(learned).file_name().unwrap_or_default());
                if beside.exists() {
                    model = beside;
                }
            }
            let net = read_caffemodel(&model)?;
            let ignored = self.train.copy_trained_from(&net, learned)?;
            self.weight_sources.record(learned, &net.layer, ignored);
        }
        for (i, (h, blob)) in self.history.iter_mut().zip(&state.history).enumerate() {
            if blob.count() != h.elem_count() || blob.value_len() != h.elem_count() {
                return Err(Error::model(
                    state_path.display(),
                    format!(
                        "history blob {i} has {} values, expected {}",
                        blob.value_len(),
                        h.elem_count()
                    ),
                ));
            }
            *h = Tensor::from_vec(blob.values(), h.shape(), h.device())?;
        }
        self.iter = state.iter() as usize;
        self.current_step = state.current_step() as usize;
        let sidecar_path = sidecar(&full);
        match std::fs::read_to_string(&sidecar_path) {
            Ok(text) => {
                let s: Sidecar = serde_json::from_str(&text)
                    .map_err(|e| Error::invalid(sidecar_path.display(), format!("corrupt resume sidecar: {e}")))?;
                let corrupt = |what: &str| {
                    Error::invalid(
                        sidecar_path.display(),
                        format!("corrupt resume sidecar: {what}; delete this file to resume without it (the weights and history still load, but the run will not repeat the uninterrupted one exactly)"),
                    )
                };
                if let Some(st) = &s.caffe_rng {
                    let rng = crate::caffe::rng::CaffeRng::from_state(st).ok_or_else(|| {
                        corrupt("the random generator's state does not hang together")
                    })?;
                    *crate::caffe::rng::lock(&self.caffe_rng) = rng;
                }
                self.train.restore_states(&s.train_states);
                for (t, st) in self.tests.iter_mut().zip(&s.test_states) {
                    t.restore_states(st);
                }
                let what = sidecar_path.display().to_string();
                self.train.restore_carried(&s.train_carried, &what)?;
                for (t, c) in self.tests.iter_mut().zip(&s.test_carried) {
                    t.restore_carried(c, &what)?;
                }
                // After the data layers' replays above, which draw from it.
                if let Some(st) = &s.libc_rand {
                    let rand = crate::caffe::libc_rand::LibcRand::from_state(st)
                        .ok_or_else(|| corrupt("the rand() state is malformed"))?;
                    *crate::caffe::libc_rand::lock(&self.libc_rand) = rand;
                }
                self.losses = s.losses;
                self.smoothed_loss = s.smoothed_loss;
            }
            Err(_) => self.log.info(
                "solver.rs:0",
                "No resume sidecar beside the solverstate: data layers restart at their first record, as in Caffe.",
            ),
        }
        self.start_iter = self.iter;
        Ok(())
    }

    /// Logs the train net's `debug_info` lines, if any, as Caffe's net.cpp does.
    fn log_debug_info(&mut self) {
        let lines = self.train.take_debug_info();
        self.log_net_lines(lines);
    }

    /// Logs `debug_info` lines as Caffe's net.cpp does.
    fn log_net_lines(&mut self, lines: Vec<(char, String)>) {
        for (level, line) in lines {
            let source = if line.contains("[Forward]") {
                "net.cpp:593"
            } else {
                "net.cpp:620"
            };
            self.log.at(level, source, &line);
        }
    }

    /// Runs to max_iter like Caffe's `Solver::Solve`.
    pub fn solve(&mut self) -> Result<()> {
        let max_iter = self.param.max_iter().max(0) as usize;
        self.log
            .info("solver.cpp:310", &format!("Solving {}", self.train.name));
        self.log.info(
            "solver.cpp:311",
            &format!("Learning Rate Policy: {}", self.param.lr_policy()),
        );
        // Before hours of training: a frozen layer at its random filler, or
        // weights that matched nothing (once, however often solve runs).
        if !std::mem::replace(&mut self.warned, true) {
            let rows = super::summary::layer_rows(&self.train, &self.weight_sources);
            let mut warnings = super::summary::warnings(&rows, &self.weight_sources);
            warnings.extend(super::summary::force_backward_warning(&self.train, &rows));
            for w in warnings {
                self.log.warn("solver.rs:0", &w);
            }
        }
        let bar = if self.progress {
            let b = crate::progress::bar(max_iter as u64, "train");
            b.set_position(self.iter as u64);
            Some(b)
        } else {
            None
        };
        self.log.set_bar(bar.clone());
        self.start_iter = self.iter;
        let result = self.step(max_iter, bar.as_ref());
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        self.log.set_bar(None);
        let stopped = match result {
            Ok(s) => s,
            Err(e) => return Err(self.save_after_error(e)),
        };
        let snap = self.param.snapshot().max(0) as usize;
        let just_saved = snap > 0 && self.iter % snap == 0;
        // A stop request always saves the work done, whatever snapshot_after_train says.
        if (self.param.snapshot_after_train() || stopped) && !just_saved {
            self.snapshot()?;
        }
        if stopped {
            self.log
                .info("solver.cpp:324", "Optimization stopped early.");
            return Err(Error::Interrupted);
        }
        let display = self.param.display().max(0) as usize;
        if display > 0 && self.iter % display == 0 {
            // Caffe's extra forward pass to report the loss after the last
            // update (with the last iteration's debug_info setting).
            let loss = self.train.forward()?;
            self.log_debug_info();
            self.update_smoothed_loss(loss);
            self.log.info(
                "solver.cpp:327",
                &format!("Iteration {}, loss = {}", self.iter, g(self.smoothed_loss)),
            );
        }
        let interval = self.param.test_interval().max(0) as usize;
        if interval > 0 && self.iter % interval == 0 {
            self.test_all()?;
        }
        self.log.info("solver.cpp:332", "Optimization Done.");
        Ok(())
    }

    /// After an iteration fails (an unreadable image, a vanished file, a
    /// full disk), keeps the work done since the last snapshot: the weights
    /// and history are those of the last complete update, so they are saved
    /// as that iteration's snapshot before the error is returned. Not after
    /// divergence, whose weights are of no use, nor when nothing is unsaved.
    fn save_after_error(&mut self, e: Error) -> Error {
        let snap = self.param.snapshot().max(0) as usize;
        let saved = snap > 0 && self.iter % snap == 0;
        if matches!(e, Error::Diverged { .. }) || self.iter == self.start_iter || saved {
            return e;
        }
        self.log.info(
            "solver.rs:0",
            &format!(
                "Iteration {} failed; snapshotting the weights after the last complete update",
                self.iter
            ),
        );
        match self.snapshot() {
            Ok((_, state)) => self.log.info(
                "solver.rs:0",
                &format!(
                    "Fix the problem below, then resume with --snapshot {}",
                    state.display()
                ),
            ),
            Err(snap_err) => self.log.info(
                "solver.rs:0",
                &format!("Could not save a snapshot either: {snap_err}"),
            ),
        }
        e
    }

    /// Iterations until `max_iter`; returns whether a stop was requested.
    fn step(&mut self, max_iter: usize, bar: Option<&indicatif::ProgressBar>) -> Result<bool> {
        let interval = self.param.test_interval().max(0) as usize;
        let display = self.param.display().max(0) as usize;
        let iter_size = self.param.iter_size().max(1) as usize;
        let snap = self.param.snapshot().max(0) as usize;
        let mut timer = std::time::Instant::now();
        let mut timer_iter = self.iter;
        while self.iter < max_iter {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(true);
            }
            self.train.clear_grads();
            if interval > 0
                && self.iter % interval == 0
                && (self.iter > 0 || self.param.test_initialization())
            {
                self.test_all()?;
            }
            let mut loss = 0.0f32;
            // Caffe's `debug_info`: per-layer means on the display iterations.
            let debug = self.param.debug_info() && display > 0 && self.iter % display == 0;
            self.train.set_debug_info(debug);
            for _ in 0..iter_size {
                let l = self.train.forward()?;
                if !l.is_finite() {
                    return Err(Error::Diverged {
                        iter: self.iter,
                        value: l,
                    });
                }
                self.train.backward()?;
                self.log_debug_info();
                loss += l;
            }
            loss /= iter_size as f32;
            self.trajectory.push((self.iter, loss));
            self.update_smoothed_loss(loss);
            let show = display > 0 && self.iter % display == 0;
            let rate = learning_rate(&self.param, self.iter, &mut self.current_step)?;
            let outputs = self.train.outputs()?;
            if show {
                let lapse = timer.elapsed().as_secs_f64();
                let done = (self.iter - timer_iter).max(1) as f64;
                self.log.info(
                    "solver.cpp:239",
                    &format!(
                        "Iteration {} ({:.4} iter/s, {:.3}s/{display} iters), loss = {}",
                        self.iter,
                        done / lapse.max(1e-9),
                        lapse,
                        g(self.smoothed_loss)
                    ),
                );
                let mut k = 0;
                for (name, values, w) in &outputs {
                    for v in values {
                        let extra = if *w != 0.0 {
                            format!(" (* {} = {} loss)", g(*w), g(w * v))
                        } else {
                            String::new()
                        };
                        self.log.info(
                            "solver.cpp:258",
                            &format!("    Train net output #{k}: {name} = {}{extra}", g(*v)),
                        );
                        k += 1;
                    }
                }
                self.log.info(
                    "sgd_solver.cpp:112",
                    &format!("Iteration {}, lr = {}", self.iter, g(rate)),
                );
                timer = std::time::Instant::now();
                timer_iter = self.iter;
            }
            self.write_metrics(serde_json::json!({
                "phase": "train", "iter": self.iter, "loss": loss, "smoothed_loss": self.smoothed_loss, "lr": rate,
                "elapsed_s": self.elapsed_s(),
                "outputs": outputs.iter().map(|(n, v, _)| (n.clone(), v.first().copied().unwrap_or(0.0))).collect::<BTreeMap<_, _>>(),
            }))?;
            self.apply_update(rate)?;
            self.iter += 1;
            if let Some(b) = bar {
                b.set_position(self.iter as u64);
                b.set_message(format!("loss {}", g(self.smoothed_loss)));
            }
            if snap > 0 && self.iter % snap == 0 {
                self.snapshot()?;
            }
        }
        Ok(false)
    }

    fn update_smoothed_loss(&mut self, loss: f32) {
        let window = self.param.average_loss().max(1) as usize;
        if self.losses.len() < window {
            self.losses.push(loss);
            let n = self.losses.len() as f32;
            self.smoothed_loss = (self.smoothed_loss * (n - 1.0) + loss) / n;
        } else {
            let idx = (self.iter - self.start_iter) % window;
            self.smoothed_loss += (loss - self.losses[idx]) / window as f32;
            self.losses[idx] = loss;
        }
    }

    /// Caffe's update: clip, then per parameter normalise, regularise and
    /// step by the solver type's rule (for SGD `h = momentum*h +
    /// lr*lr_mult*diff`, and `w -= h`).
    fn apply_update(&mut self, rate: f32) -> Result<()> {
        let cfg = SgdConfig {
            rule: self.rule,
            iter: self.iter,
            momentum: self.param.momentum(),
            weight_decay: self.param.weight_decay(),
            l1: self.param.regularization_type() == "L1",
            iter_size: self.param.iter_size().max(1) as usize,
            clip_gradients: self.param.clip_gradients(),
        };
        let keep =
            (self.param.snapshot_diff() && self.rule != Rule::Sgd).then_some(&mut self.last_steps);
        if let Some((norm, factor)) =
            sgd_update_keeping(&mut self.train, &mut self.history, rate, &cfg, keep)?
        {
            self.log.info(
                "solver.cpp:0",
                &format!(
                    "Gradient clipping: scaling down gradients (L2 norm {} > {}) by scale factor {}",
                    g(norm),
                    g(cfg.clip_gradients),
                    g(factor)
                ),
            );
        }
        Ok(())
    }

    /// Runs every test net for its test_iter batches and logs the mean outputs.
    pub fn test_all(&mut self) -> Result<Vec<Vec<(String, f32)>>> {
        let mut all = Vec::new();
        for ti in 0..self.tests.len() {
            self.log.info(
                "solver.cpp:347",
                &format!("Iteration {}, Testing net (#{ti})", self.iter),
            );
            self.tests[ti].share_from(&self.train)?;
            // Caffe gives its test nets the solver's debug_info (every test
            // pass prints its lines, not only on display iterations).
            self.tests[ti].set_debug_info(self.param.debug_info());
            let iters = self.param.test_iter[ti].max(0) as usize;
            let mut scores: Vec<(String, f32, f32)> = Vec::new();
            let mut loss = 0.0f32;
            for i in 0..iters {
                let l = self.tests[ti].forward()?;
                let lines = self.tests[ti].take_debug_info();
                self.log_net_lines(lines);
                loss += l;
                let mut k = 0;
                for (name, values, w) in self.tests[ti].outputs()? {
                    for v in values {
                        if i == 0 {
                            scores.push((name.clone(), v, w));
                        } else {
                            scores[k].1 += v;
                        }
                        k += 1;
                    }
                }
            }
            if self.param.test_compute_loss() && iters > 0 {
                self.log.info(
                    "solver.cpp:402",
                    &format!("Test loss: {}", g(loss / iters as f32)),
                );
            }
            let mut result = Vec::new();
            for (k, (name, sum, w)) in scores.into_iter().enumerate() {
                let mean = sum / iters.max(1) as f32;
                let extra = if w != 0.0 {
                    format!(" (* {} = {} loss)", g(w), g(w * mean))
                } else {
                    String::new()
                };
                self.log.info(
                    "solver.cpp:414",
                    &format!("    Test net output #{k}: {name} = {}{extra}", g(mean)),
                );
                result.push((name, mean));
            }
            self.write_metrics(serde_json::json!({
                "phase": "test", "iter": self.iter, "net": ti, "elapsed_s": self.elapsed_s(),
                "outputs": result.iter().cloned().collect::<BTreeMap<_, _>>(),
            }))?;
            self.test_results.push((self.iter, ti, result.clone()));
            all.push(result);
        }
        Ok(all)
    }

    /// Seconds since the solver was built, to the microsecond.
    fn elapsed_s(&self) -> f64 {
        (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e6
    }

    fn write_metrics(&mut self, v: serde_json::Value) -> Result<()> {
        if let Some(f) = &mut self.metrics {
            writeln!(f, "{v}").map_err(|e| Error::io("metrics file", e))?;
        }
        Ok(())
    }

    /// The path prefix of the snapshot at the current iteration.
    fn snapshot_name(&self, ext: &str) -> String {
        format!("{}_iter_{}{ext}", self.param.snapshot_prefix(), self.iter)
    }

    /// Writes `<prefix>_iter_N.caffemodel`, `.solverstate` (with
    /// `snapshot_format: HDF5`, `.caffemodel.h5` and `.solverstate.h5`) and
    /// the resume sidecar, each atomically.
    pub fn snapshot(&mut self) -> Result<(PathBuf, PathBuf)> {
        let hdf5 = self.param.snapshot_format() == SnapshotFormat::Hdf5;
        let ext = if hdf5 { ".h5" } else { "" };
        let model_name = self.snapshot_name(&format!(".caffemodel{ext}"));
        let state_name = self.snapshot_name(&format!(".solverstate{ext}"));
        let model_path = self.resolve(Path::new(&model_name));
        let state_path = self.resolve(Path::new(&state_name));
        // `snapshot_diff`: each blob's diff as Caffe holds it after an
        // update, the step the parameter took.
        let diffs = if self.param.snapshot_diff() {
            Some(self.last_step_values()?)
        } else {
            None
        };
        if hdf5 {
            self.log.info(
                "solver.cpp:474",
                &format!("Snapshotting to HDF5 file {model_name}"),
            );
            let diffs = match &diffs {
                Some(d) => Some(self.train.blob_values(d)?),
                None => None,
            };
            let bytes =
                hdf5_snapshot::caffemodel_bytes(&self.train.owned_blobs()?, diffs.as_deref())?;
            crate::fsutil::write_atomic(&model_path, &bytes)?;
        } else {
            self.log.info(
                "sgd_solver.cpp:273",
                &format!("Snapshotting to binary proto file {model_name}"),
            );
            write_binary(
                &model_path,
                &self.train.to_proto_with(&self.net_def, diffs.as_deref())?,
            )?;
        }
        let history = self
            .history
            .iter()
            .map(|h| {
                Ok(BlobProto::with_shape(
                    h.dims(),
                    h.flatten_all()?.to_vec1::<f32>()?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let state = SolverState {
            iter: Some(self.iter as i32),
            learned_net: Some(model_name),
            history,
            current_step: Some(self.current_step as i32),
        };
        if hdf5 {
            self.log.info(
                "sgd_solver.cpp:296",
                &format!("Snapshotting solver state to HDF5 file {state_name}"),
            );
            crate::fsutil::write_atomic(&state_path, &hdf5_snapshot::solverstate_bytes(&state)?)?;
        } else {
            self.log.info(
                "sgd_solver.cpp:290",
                &format!("Snapshotting solver state to binary proto file {state_name}"),
            );
            write_binary(&state_path, &state)?;
        }
        let side = Sidecar {
            iter: self.iter,
            caffe_rng: Some(crate::caffe::rng::lock(&self.caffe_rng).state()),
            libc_rand: Some(crate::caffe::libc_rand::lock(&self.libc_rand).state()),
            train_states: self.train.states(),
            test_states: self.tests.iter().map(|t| t.states()).collect(),
            train_carried: self.train.carried()?,
            test_carried: self.tests.iter().map(Net::carried).collect::<Result<_>>()?,
            losses: self.losses.clone(),
            smoothed_loss: self.smoothed_loss,
        };
        let text = serde_json::to_vec_pretty(&side).expect("sidecar serialises");
        crate::fsutil::write_atomic(&sidecar(&state_path), &text)?;
        Ok((model_path, state_path))
    }
}

impl Solver {
    /// Each learnable parameter's last step: the history under SGD (Caffe
    /// copies it into the diff), else what the update kept (zeros before
    /// any update).
    fn last_step_values(&self) -> Result<Vec<Tensor>> {
        (0..self.train.params().len())
            .map(|i| {
                if self.rule == Rule::Sgd {
                    return Ok(self.history[i].clone());
                }
                Ok(match self.last_steps.get(i) {
                    Some(Some(t)) => t.clone(),
                    _ => self.history[i].zeros_like()?,
                })
            })
            .collect()
    }
}

/// `x.solverstate` → `x.solverstate.resume.json`.
fn sidecar(state: &Path) -> PathBuf {
    let mut s = state.as_os_str().to_os_string();
    s.push(".resume.json");
    PathBuf::from(s)
}

/// The train and test net definitions a solver names.
fn net_definitions(
    p: &SolverParameter,
    base: &Path,
    ctx: &str,
) -> Result<(NetParameter, Vec<NetParameter>)> {
    let read = |f: &str| -> Result<NetParameter> {
        let path = base.join(f);
        read_net_prototxt(&path)
    };
    let inline = |n: &NetParameter| -> Result<NetParameter> {
        let mut n = n.clone();
        upgrade(&mut n, ctx)?;
        Ok(n)
    };
    let generic = match (&p.net, &p.net_param) {
        (Some(f), _) => Some(read(f)?),
        (None, Some(n)) => Some(inline(n)?),
        _ => None,
    };
    let train = match (&p.train_net, &p.train_net_param, &generic) {
        (Some(f), _, _) => read(f)?,
        (None, Some(n), _) => inline(n)?,
        (None, None, Some(g)) => g.clone(),
        _ => {
            return Err(Error::model(
                ctx,
                "names no net (set `net:` or `train_net:`)",
            ))
        }
    };
    let mut tests: Vec<NetParameter> = p.test_net.iter().map(|f| read(f)).collect::<Result<_>>()?;
    for n in &p.test_net_param {
        tests.push(inline(n)?);
    }
    if let Some(g) = &generic {
        let generic_instances = if !p.test_state.is_empty() {
            p.test_state.len()
        } else {
            p.test_iter.len().saturating_sub(tests.len())
        };
        for _ in 0..generic_instances {
            tests.push(g.clone());
        }
    }
    Ok((train, tests))
}

/// The folder a solver's paths start from. Caffe resolves them from the
/// folder it runs in (`base_dir`); where the `net` is not there but beside
/// the solver, they start beside the solver instead. Neither is an error
/// that says where to run.
pub(crate) fn paths_base(base_dir: &Path, solver: &Path, net: &str, ctx: &str) -> Result<PathBuf> {
    if base_dir.join(net).exists() {
        return Ok(base_dir.to_path_buf());
    }
    let solver_dir = crate::fsutil::parent_dir(solver);
    if solver_dir.join(net).exists() {
        return Ok(solver_dir);
    }
    Err(Error::model(
        ctx,
        format!(
            "net {net:?} is neither in {} nor beside the solver in {}: as in Caffe, the solver's \
             paths are relative to the folder it runs in, so run from the folder they start from \
             (for Caffe's own recipes, Caffe's root folder)",
            std::path::absolute(base_dir)
                .unwrap_or_else(|_| base_dir.to_path_buf())
                .display(),
            solver_dir.display()
        ),
    ))
}
