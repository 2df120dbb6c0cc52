//! The whole Flickr Style recipe in one call: assemble (or import a
//! folder-per-class dataset) → compute-mean → to-lmdb (optional) → fetch
//! CaffeNet weights → finetune → evaluate. Each stage is skipped when its
//! outputs are already complete, and training resumes from its latest
//! snapshot, so an interrupted run is continued by running it again.
use crate::caffe::model::{read_caffemodel, read_net_prototxt};
use crate::caffe::proto::{
    solver_parameter::SolverMode, DataParameter, InfogainLossParameter, LayerParameter,
    NetParameter, SolverParameter,
};
use crate::caffe::{proto::data_parameter::Db, prototxt};
use crate::error::{Error, IoContext, Result};
use crate::inference::evaluate::{evaluate, read_class_names, EvalOptions, Report};
use crate::inference::tta::Tta;
use crate::pipeline::assemble::{assemble, AssembleOptions};
use crate::pipeline::class_weights::write_class_weights;
use crate::pipeline::fetch::{fetch_file, Checksum, FetchOptions};
use crate::pipeline::folders::{import_folders, FolderImportOptions};
use crate::pipeline::manifest::{import_manifest, ManifestImportOptions};
use crate::pipeline::mean::{compute_mean, MeanSource};
use crate::pipeline::measure;
use crate::pipeline::pad::{Pad, PadFill};
use crate::pipeline::split::ImportSummary;
use crate::pipeline::to_lmdb::{to_lmdb, ToLmdbOptions};
use crate::train::augment::Augment;
use crate::train::compute::{Compute, DeviceChoice};
use crate::train::gray;
use crate::train::heads;
use crate::train::solver::{Solver, SolverOptions};
use std::path::{Path, PathBuf};

/// Where Caffe's model zoo serves the reference CaffeNet weights, and their SHA-1.
pub const CAFFENET_URL: &str =
    "http://dl.caffe.berkeleyvision.org/bvlc_reference_caffenet.caffemodel";
/// SHA-1 of `bvlc_reference_caffenet.caffemodel`.
pub const CAFFENET_SHA1: &str = "4c8d77deb20ea792f84eb5e6d0a11ca0a8660a46";

/// Where the images come from.
#[derive(Clone, Debug)]
pub enum Dataset {
    /// Caffe's Flickr Style subset, downloaded (`out` is the data folder).
    FlickrStyle(AssembleOptions),
    /// A folder-per-class dataset, split into lists (`out` is the data folder);
    /// the classifier gets one output per class folder.
    Folders(FolderImportOptions),
    /// A CSV/TSV manifest, split into lists (or split as it says); the
    /// classifier gets one output per class.
    Manifest(ManifestImportOptions),
}

impl Dataset {
    /// The data folder: lists, mean, LMDBs, rewritten recipe, snapshots, evaluation.
    pub fn data_dir(&self) -> &Path {
        match self {
            Dataset::FlickrStyle(a) => &a.out,
            Dataset::Folders(f) => &f.split.out,
            Dataset::Manifest(m) => &m.split.out,
        }
    }

    /// The run's seed (selection or split, LMDB order, and the solver's
    /// random_seed when the recipe leaves it unset).
    pub fn seed(&self) -> u64 {
        match self {
            Dataset::FlickrStyle(a) => a.seed as u64,
            Dataset::Folders(f) => f.split.seed,
            Dataset::Manifest(m) => m.split.seed,
        }
    }
}

/// Options of the whole recipe.
#[derive(Clone, Debug)]
pub struct WorkflowOptions {
    /// The first stage's input.
    pub dataset: Dataset,
    /// Class names for the evaluation report (an imported dataset names its
    /// classes itself, in `labels.txt`).
    pub names: Option<PathBuf>,
    /// Folder with Caffe's `train_val.prototxt` and `solver.prototxt` for the recipe.
    pub recipe: PathBuf,
    /// Pretrained weights; `None` downloads the reference CaffeNet.
    pub weights: Option<PathBuf>,
    /// Where to download the reference CaffeNet from.
    pub weights_url: String,
    /// Train from LMDBs made by to-lmdb instead of decoding JPEGs every epoch.
    pub lmdb: bool,
    /// Fit images inside 256x256 keeping their aspect ratio and pad them
    /// (see [`crate::pipeline::pad::fit`]). The ImageData layer cannot pad,
    /// so this trains from LMDBs.
    pub pad: Option<Pad>,
    /// Read the images as one gray channel and train a one-channel net
    /// (see [`crate::train::gray`]): the first convolution's filters summed
    /// over their input channels, the same numbers as three equal channels
    /// with a third of the work.
    pub gray: bool,
    /// Measure each imported image's object into `measures.csv` (see
    /// [`crate::pipeline::measure`]) for late fusion; folders and manifests only.
    pub measure: bool,
    /// Turn training images by random multiples of 90° (beyond Caffe).
    pub rotate90: bool,
    /// Cyclic pooling (beyond Caffe; see [`crate::train::cyclic`]): the
    /// convolutions see each image in its four quarter turns and the
    /// classifier their mean, so the net is invariant to quarter turns.
    pub cyclic: bool,
    /// Warp training images by random affine maps (beyond Caffe).
    pub augment: Option<Augment>,
    /// Test-time augmentation of the final evaluation.
    pub tta: Tta,
    /// Train with a class-weighted loss: the recipe's SoftmaxWithLoss becomes
    /// an InfogainLoss whose weights are the training labels' counts to the
    /// power -alpha (see [`crate::pipeline::class_weights`]).
    pub class_weights: Option<f64>,
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
    /// Train only the classifier, on the pretrained net's saved features
    /// (see [`crate::train::probe`]), instead of fine-tuning the whole net.
    pub probe: bool,
}

impl WorkflowOptions {
    /// The suffix of the outputs that depend on how images are read
    /// (mean, LMDBs): padding and gray.
    fn data_tag(&self) -> String {
        let gray = if self.gray { "_gray" } else { "" };
        let Some(p) = self.pad else {
            return gray.to_string();
        };
        let fill = match p.fill {
            PadFill::Border => String::new(),
            PadFill::Value(v) => v.to_string(),
        };
        let shrink_only = if p.upscale { "" } else { "_noupscale" };
        format!("_padded{fill}{shrink_only}{gray}")
    }

    /// The suffix of the outputs that depend on how the net was trained
    /// (snapshots, evaluation): the data's, `_rot90` when turning, `_cyclic`
    /// with cyclic pooling,
    /// `_aug...` when warping, `_cw<alpha>` with class weights and `_probe`
    /// when only the classifier is trained.
    fn run_tag(&self) -> String {
        let probe = if self.probe { "_probe" } else { "" };
        format!("{}{probe}", self.model_tag())
    }

    /// [`Self::run_tag`] less `_probe`: what makes the pretrained net's
    /// features (the probe's folder is named by it).
    fn model_tag(&self) -> String {
        let turn = if self.rotate90 { "_rot90" } else { "" };
        let cyclic = if self.cyclic { "_cyclic" } else { "" };
        let warp = self
            .augment
            .map_or(String::new(), |a| format!("_aug_{}", a.tag()));
        let weighted = self
            .class_weights
            .map_or(String::new(), |a| format!("_cw{a}"));
        format!("{}{turn}{cyclic}{warp}{weighted}", self.data_tag())
    }

    /// Whether training reads LMDBs (asked for, or needed for padding).
    pub fn trains_from_lmdb(&self) -> bool {
        self.lmdb || self.pad.is_some()
    }
}

/// The commands that use the model `run` returned: `classify` for new
/// images and `explain` for the test images it gets wrong, each preparing
/// images as training did (padding, class names; `classify` also scores the
/// views the evaluation averaged, so a fusion model fitted on its
/// probabilities applies). One line each.
pub fn next_steps(opts: &WorkflowOptions, model: &Path) -> String {
    let data = opts.dataset.data_dir();
    let names = match (&opts.dataset, &opts.names) {
        (_, Some(n)) => format!(" --names {}", n.display()),
        (Dataset::FlickrStyle(_), None) => String::new(),
        _ => format!(" --names {}", data.join("labels.txt").display()),
    };
    let pad = opts.pad.map_or(String::new(), |p| {
        let fill = match p.fill {
            PadFill::Border => "border".to_string(),
            PadFill::Value(v) => v.to_string(),
        };
        let shrink = if p.upscale { "" } else { " --no-upscale" };
        format!(" --pad-square {fill}{shrink}")
    });
    let tta = if opts.tta == Tta::None {
        String::new()
    } else {
        format!(" --tta {}", opts.tta)
    };
    let net = data.join("train_val.prototxt");
    format!(
        "Classify new images with: flickr-style classify --model {} --weights {}{names}{pad}{tta} IMAGES_OR_FOLDERS\n\
         See where the net looks in the test images it gets wrong (heat maps) with: flickr-style explain --model {} --weights {}{names}{pad} --list {} --mistakes --out {}\n",
        net.display(),
        model.display(),
        net.display(),
        model.display(),
        data.join("test.txt").display(),
        data.join("explain").display()
    )
}

/// Runs every stage; `interrupt` is checked by the long-running ones.
pub fn run(
    opts: &WorkflowOptions,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<PathBuf> {
    let data = opts.dataset.data_dir().to_path_buf();
    let say = |m: String| {
        if opts.verbose {
            crate::progress::say(&m);
        }
    };
    if opts.probe && opts.augment.is_some() {
        return Err(Error::invalid(
            "--probe",
            "trains on features saved once per view, not on fresh random warps; drop --augment (--rotate90 gives the probe each image's eight flips and turns), or fine-tune without --probe",
        ));
    }
    // Fail before hours of downloading and importing, not at the training stage.
    if let Some(w) = &opts.weights {
        if !w.is_file() {
            return Err(Error::invalid(
                w.display(),
                "--weights: no such file (leave --weights out to download CaffeNet)",
            ));
        }
    }
    if opts.measure && matches!(opts.dataset, Dataset::FlickrStyle(_)) {
        return Err(Error::invalid(
            "--measure",
            "measures the images of --folders or --manifest datasets (Flickr Style has no samples.csv)",
        ));
    }
    // The number of classes when the dataset sets it (folders), else the recipe's.
    let classes = match &opts.dataset {
        Dataset::FlickrStyle(a) => {
            assemble_stage(a, &stop, &say)?;
            None
        }
        Dataset::Folders(f) => {
            say(format!(
                "[1/6] import-folders: {} (test fraction {}, seed {})",
                f.root.display(),
                f.split.test_fraction,
                f.split.seed
            ));
            Some(imported(import_folders(f)?, &say)?)
        }
        Dataset::Manifest(m) => {
            say(format!(
                "[1/6] import-manifest: {} (seed {})",
                m.manifest.display(),
                m.split.seed
            ));
            Some(imported(import_manifest(m)?, &say)?)
        }
    };
    let (train_list, test_list) = (data.join("train.txt"), data.join("test.txt"));
    let samples = data.join("samples.csv");
    let measures = measure::measures_beside(&samples);
    if opts.measure {
        if is_newer(&measures, &samples) {
            say("      measure: up to date".into());
        } else {
            let m = measure::measure_samples(&measure::MeasureOptions {
                samples: samples.clone(),
                root: PathBuf::new(),
                out: Some(measures.clone()),
            })?;
            say(format!(
                "      measure: {} images' size, shape and texture into {}",
                m.images,
                m.out.display()
            ));
        }
    }

    // Padded or gray images get their own mean, LMDBs, snapshots and
    // evaluation, so switching --pad-square or --gray never reuses outputs
    // made the other way.
    let tag = opts.data_tag();
    let mean = data.join(format!("mean{tag}.binaryproto"));
    if is_newer(&mean, &train_list) {
        say("[2/6] compute-mean: up to date".into());
    } else {
        say(format!(
            "[2/6] compute-mean over train.txt at 256x256{}",
            if opts.pad.is_some() {
                ", fitted and padded to squares"
            } else {
                ""
            }
        ));
        let (m, _) = compute_mean(&MeanSource::List {
            list: train_list.clone(),
            root: PathBuf::new(),
            resize: Some((256, 256)),
            pad: opts.pad,
            gray: opts.gray,
        })?;
        m.write_binaryproto(&mean)?;
    }

    let mut sources = (train_list.clone(), test_list.clone());
    if opts.trains_from_lmdb() {
        say("[3/6] to-lmdb: train and test lists at 256x256".into());
        let mut dbs = Vec::new();
        for (list, name) in [(&train_list, "train"), (&test_list, "test")] {
            let db = data.join(format!("{name}{tag}_lmdb"));
            if !is_newer(&db.join("data.mdb"), list) {
                to_lmdb(&ToLmdbOptions {
                    root: PathBuf::new(),
                    list: list.clone(),
                    db: db.clone(),
                    resize: Some((256, 256)),
                    pad: opts.pad,
                    gray: opts.gray,
                    shuffle: true,
                    seed: opts.dataset.seed(),
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
            "[3/6] to-lmdb: skipped (training reads the JPEG lists; pass --lmdb to convert)".into(),
        );
    }

    let weights = match &opts.weights {
        Some(w) => {
            say(format!("[4/6] weights: {}", w.display()));
            w.clone()
        }
        None => {
            let dest = data.join("bvlc_reference_caffenet.caffemodel");
            let sum = Checksum::Sha1(CAFFENET_SHA1.into());
            if dest.exists() && sum.digest_file(&dest)? == CAFFENET_SHA1 {
                say(
                    "[4/6] download-model: bvlc_reference_caffenet.caffemodel present and verified"
                        .into(),
                );
            } else {
                say(format!("[4/6] download-model: {}", opts.weights_url));
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
    let weights = if opts.gray {
        gray_weights_stage(opts, &data, &weights, &say)?
    } else {
        weights
    };

    say(if opts.probe {
        "[5/6] probe: the classifier alone, on the pretrained net's features".into()
    } else {
        "[5/6] finetune".into()
    });
    let (solver_path, net_path, prefix) =
        write_recipe(opts, &data, &sources, &mean, classes, &say)?;
    let max_iter = prototxt::read::<SolverParameter>(&solver_path)?
        .max_iter()
        .max(0) as usize;
    let final_model = if opts.probe {
        // The features, the probe's net and its classifier live together,
        // one folder per variant of the net.
        data.join(format!("probe{}", opts.model_tag()))
            .join("probe.caffemodel")
    } else {
        PathBuf::from(format!("{}_iter_{max_iter}.caffemodel", prefix.display()))
    };
    if final_model.exists() {
        say(format!("      already trained: {}", final_model.display()));
    } else if opts.probe {
        let p = crate::train::probe::probe(&crate::train::probe::ProbeOptions {
            solver: &solver_path,
            state: &crate::caffe::net_state::DEFAULT_STATE,
            weights: &[weights.as_path()],
            base_dir: Path::new("."),
            out: crate::fsutil::parent_dir(&final_model).as_path(),
            max_iter: None,
            device: opts.gpu.map_or(DeviceChoice::Cpu, DeviceChoice::Gpu),
            bf16: opts.bf16,
            tensor_ops: false,
            fused: false,
            metrics: opts.metrics.clone(),
            verbose: opts.verbose,
            stop: Some(stop.clone()),
            shuffle: true,
            views: if opts.rotate90 {
                crate::inference::tta::Tta::Dihedral
            } else {
                crate::inference::tta::Tta::None
            },
        })?;
        let (views, turn) = if opts.rotate90 {
            (8, " --rotate90")
        } else {
            (1, "")
        };
        say(format!(
            "      trained {} on {} of {} training images{}",
            p.classifier,
            p.feature,
            p.train.rows / views,
            if views > 1 {
                " in their eight flips and turns"
            } else {
                ""
            }
        ));
        say(format!(
            "      to fine-tune the whole net from this classifier (linear probe, then fine-tuning): flickr-style finetune --solver {} --weights {}{turn}",
            solver_path.display(),
            final_model.display()
        ));
    } else {
        train(opts, &solver_path, &prefix, &weights, &stop, &say)?;
    }

    let tta = match opts.tta {
        Tta::None => String::new(),
        t => format!("_tta_{}", t.tag()),
    };
    let report_dir = data.join(format!("evaluation{}{tta}", opts.run_tag()));
    if let Some(m) = opts.metrics.as_ref().filter(|m| m.exists()) {
        // A plot is a convenience: a metrics file it cannot read fails no run.
        let svg = report_dir.join("training.svg");
        match crate::analysis::plot::plot_metrics(m, &svg) {
            Ok(()) => say(format!("      training curves: {}", svg.display())),
            Err(e) => say(format!("      no training plot: {e}")),
        }
    }
    if is_newer(&report_dir.join("report.md"), &final_model) {
        say(format!(
            "[6/6] evaluate: up to date ({})",
            report_dir.display()
        ));
    } else {
        say(format!(
            "[6/6] evaluate {} on the test list",
            final_model.display()
        ));
        evaluate_stage(opts, &net_path, &final_model, &data, &report_dir, &say)?;
    }
    let probabilities = report_dir.join("probabilities.csv");
    if samples.exists() && probabilities.exists() {
        // Columns a manifest carried (beyond path, class, label, list, width,
        // height): the header alone says.
        let carried: Vec<String> = csv::Reader::from_path(&samples)
            .and_then(|mut r| {
                r.headers()
                    .map(|h| h.iter().skip(6).map(String::from).collect())
            })
            .unwrap_or_default();
        let measured = is_newer(&measures, &samples);
        say(format!(
            "      what the images' original sizes{} add: flickr-style fuse {} --samples {}{}",
            if measured {
                ", shapes and textures"
            } else {
                ""
            },
            probabilities.display(),
            samples.display(),
            if measured { " --measured" } else { "" },
        ));
        if !carried.is_empty() {
            let shown: Vec<&str> = carried.iter().take(8).map(String::as_str).collect();
            say(format!(
                "      (add --feature COLUMN for any of the {} columns the manifest carried into samples.csv: {}{})",
                carried.len(),
                shown.join(", "),
                if carried.len() > shown.len() { ", …" } else { "" }
            ));
        }
        if !measured {
            say(format!(
                "      (their shapes and textures too: flickr-style measure {}, then add --measured; or rerun with --measure)",
                samples.display()
            ));
        }
    }
    // Earlier runs of other variants reported beside this one: side by side.
    let reports = crate::analysis::compare::find_reports(&data)?;
    if reports.len() > 1 {
        use crate::analysis::compare::{read_reports, sorted, to_markdown, SortBy};
        say(format!(
            "      the {} reports in {} side by side, best macro F1 first (flickr-style compare {}):",
            reports.len(),
            data.display(),
            data.display()
        ));
        for line in to_markdown(&sorted(read_reports(&reports)?, SortBy::MacroF1)).lines() {
            say(format!("      {line}"));
        }
    }
    Ok(final_model)
}

/// Stage 5: fine-tune from `weights`, or resume from the latest snapshot.
fn train(
    opts: &WorkflowOptions,
    solver_path: &Path,
    prefix: &Path,
    weights: &Path,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    say: &impl Fn(String),
) -> Result<()> {
    let mut solver = Solver::new(&SolverOptions {
        solver: solver_path.to_path_buf(),
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
        rotate90: opts.rotate90,
        augment: opts.augment,
        state: None,
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
    match latest_snapshot(prefix)? {
        Some(state) => {
            say(format!("      resuming from {}", state.display()));
            solver.restore(&state)?;
        }
        None => solver.load_weights(&[weights.to_path_buf()])?,
    }
    solver.solve()
}

/// Stage 6: the per-class report of the trained weights over the test list.
fn evaluate_stage(
    opts: &WorkflowOptions,
    net_path: &Path,
    model: &Path,
    data: &Path,
    report_dir: &Path,
    say: &impl Fn(String),
) -> Result<()> {
    let compute = match opts.gpu {
        Some(n) => Compute::gpu(n)?,
        None => Compute::cpu(),
    }
    .with_bf16(opts.bf16)?;
    let options = EvalOptions {
        model: net_path,
        state: &crate::caffe::net_state::DEFAULT_STATE,
        weights: &[model],
        base_dir: Path::new("."),
        compute: &compute,
        iterations: None,
        blobs: None,
        top_k: 5,
        threshold: None,
        tta: opts.tta,
        ensemble: false,
        source: None,
    };
    let evaluation = evaluate(&options)?;
    let classes = evaluation.confusion.classes();
    let names = match (&opts.dataset, &opts.names) {
        (_, Some(p)) => read_class_names(p, classes)?,
        (Dataset::Folders(_) | Dataset::Manifest(_), None) => {
            read_class_names(&data.join("labels.txt"), classes)?
        }
        (Dataset::FlickrStyle(_), None) => Vec::new(),
    };
    let report = Report {
        options: &options,
        evaluation: &evaluation,
        names: &names,
    };
    let s = report.summary();
    report.write(report_dir)?;
    say(format!(
        "      {} test images: accuracy {:.2}%, mean per-class accuracy {:.2}%, macro F1 {:.3} ({})",
        s.images,
        100.0 * s.accuracy,
        100.0 * s.mean_class_accuracy,
        s.macro_f1,
        report_dir.join("report.md").display()
    ));
    // What abstaining buys, at the middle target: the threshold for new images.
    if let Some(f) = s.abstention.as_ref().and_then(|a| {
        a.for_accuracy
            .iter()
            .find(|f| f.target == 0.95 && f.point.is_some_and(|p| p.coverage < 1.0))
    }) {
        let p = f.point.expect("found with a point");
        say(format!(
            "      for 95% accuracy, classify with --threshold {:.4}: it predicted {:.1}% of the test images, leaving {:.1}% to a person",
            crate::analysis::abstention::printable(p.threshold),
            100.0 * p.coverage,
            100.0 * (1.0 - p.coverage)
        ));
    }
    Ok(())
}

/// Stage 1's report for imported datasets; their class count, or an error
/// when there is nothing to test on.
fn imported(s: ImportSummary, say: &impl Fn(String)) -> Result<usize> {
    let (train, test): (usize, usize) = s
        .classes
        .iter()
        .fold((0, 0), |(a, b), c| (a + c.train, b + c.test));
    say(format!(
        "      {} classes, {train} train and {test} test images, {} unreadable skipped",
        s.classes.len(),
        s.skipped.len()
    ));
    if test == 0 {
        return Err(Error::model(
            "import",
            "no test images: the recipe's test phase needs some; raise --test-fraction (or give the manifest a test set)",
        ));
    }
    if s.classes.len() < 2 {
        return Err(Error::model(
            "import",
            "one class: a classifier needs at least two (one folder, or one label in the manifest's column, per class)",
        ));
    }
    Ok(s.classes.len())
}

/// Stage 1 for Flickr Style: select and download.
fn assemble_stage(
    a: &AssembleOptions,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    say: &impl Fn(String),
) -> Result<()> {
    say(format!(
        "[1/6] assemble: {} images, seed {}",
        a.images, a.seed
    ));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io(&a.out, e))?;
    let stop_a = stop.clone();
    let summary = rt.block_on(assemble(a, async move {
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
    Ok(())
}

/// The weights with the recipe's first convolution summed over its input
/// channels, for a one-channel net; made once beside the data.
fn gray_weights_stage(
    opts: &WorkflowOptions,
    data: &Path,
    weights: &Path,
    say: &impl Fn(String),
) -> Result<PathBuf> {
    let recipe_net = opts.recipe.join("train_val.prototxt");
    let net = read_net_prototxt(&recipe_net)?;
    let conv = net.layer[gray::first_conv(&net, &recipe_net.display().to_string())?]
        .name()
        .to_string();
    let stem = weights
        .file_stem()
        .map_or("weights".into(), |s| s.to_string_lossy().into_owned());
    let out = data.join(format!("{stem}_gray.caffemodel"));
    if is_newer(&out, weights) {
        say(format!("      gray weights: {} up to date", out.display()));
        return Ok(out);
    }
    let mut w = read_caffemodel(weights)?;
    let (before, after) = gray::gray_weights(&mut w, &conv, &weights.display().to_string())?;
    crate::caffe::write_binary(&out, &w)?;
    say(format!(
        "      gray weights: {conv} {before} -> {after} in {}",
        out.display()
    ));
    Ok(out)
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
    classes: Option<usize>,
    say: &impl Fn(String),
) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| Error::io(p, e));
    let recipe_net = opts.recipe.join("train_val.prototxt");
    let mut net: NetParameter = read_net_prototxt(&recipe_net)?;
    let mut solver: SolverParameter = prototxt::read(&opts.recipe.join("solver.prototxt"))?;
    if let Some(n) = classes {
        set_class_count(&mut net, n, &recipe_net)?;
    }
    if let Some(alpha) = opts.class_weights {
        let h = data.join(format!("infogain_cw{alpha}.binaryproto"));
        let n = classifier_outputs(&net, &recipe_net)?;
        let (counts, weights) = write_class_weights(&data.join("train.txt"), n, alpha, &h)?;
        let (lo, hi) = weights
            .iter()
            .zip(&counts)
            .filter(|(_, &c)| c > 0)
            .fold((f64::MAX, 0.0f64), |(lo, hi), (&w, _)| {
                (lo.min(w), hi.max(w))
            });
        say(format!(
            "      class-weighted loss (alpha {alpha}): weights {lo:.3} to {hi:.3} in {}",
            h.display()
        ));
        weigh_loss(&mut net, &abs(&h)?, &recipe_net)?;
    }
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
        use_mean_file(l, &abs(mean)?);
        if opts.trains_from_lmdb() {
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
    if opts.gray {
        let conv = gray::gray_net(&mut net, &recipe_net.display().to_string())?;
        say(format!(
            "      one gray channel: {conv} reads it with its filters summed (lr_mult x3, decay_mult /3)"
        ));
    }
    if opts.cyclic {
        let (input, features) =
            crate::train::cyclic::cyclic_net(&mut net, &recipe_net.display().to_string())?;
        say(format!(
            "      cyclic pooling: the layers from '{input}' to '{features}' see each image in four quarter turns (four times their work)"
        ));
    }
    let net_path = data.join("train_val.prototxt");
    crate::fsutil::write_atomic(&net_path, prototxt::to_string(&net).as_bytes())?;
    // The deploy net for Caffe, pycaffe or OpenCV's dnn module.
    let (deploy, mut comment) = crate::inference::deploy::deploy_net(&net, 1, &net_path, data)?;
    if let Some(p) = opts.pad {
        let fill = match p.fill {
            PadFill::Border => "each image's edge colour".to_string(),
            PadFill::Value(v) => format!("the value {v}"),
        };
        let shrink = if p.upscale { "" } else { ", never enlarged" };
        comment += &format!(
            "# The 256x256 images were not squashed: each was fitted into 256x256 keeping its aspect ratio{shrink}, and padded with {fill} (flickr-style --pad-square).\n"
        );
    }
    crate::fsutil::write_atomic(
        &data.join("deploy.prototxt"),
        (comment + &prototxt::to_string(&deploy)).as_bytes(),
    )?;
    let snapshots = data.join("snapshots");
    std::fs::create_dir_all(&snapshots).at(&snapshots)?;
    let prefix = abs(&snapshots.join(match opts.dataset {
        Dataset::FlickrStyle(_) => format!("finetune_flickr_style{}", opts.run_tag()),
        Dataset::Folders(_) | Dataset::Manifest(_) => format!("finetune{}", opts.run_tag()),
    }))?;
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
        solver.random_seed = Some(opts.dataset.seed() as i64);
    }
    let solver_path = data.join("solver.prototxt");
    crate::fsutil::write_atomic(&solver_path, prototxt::to_string(&solver).as_bytes())?;
    Ok((abs(&solver_path)?, abs(&net_path)?, prefix))
}

/// Makes a data layer subtract the dataset's mean image. A recipe's
/// per-channel `mean_value`s (GoogLeNet's, ResNet's) give way to it, since
/// Caffe refuses both at once.
fn use_mean_file(layer: &mut LayerParameter, mean: &Path) {
    let tp = layer.transform_param.get_or_insert_with(Default::default);
    tp.mean_file = Some(mean.to_string_lossy().into_owned());
    tp.mean_value.clear();
}

/// Gives the classifier (the InnerProduct or, as in MobileNet, Convolution
/// layer whose output the loss layer scores) `classes` outputs. Its name must differ from the
/// pretrained model's layer (Flickr Style's `fc8_flickr`), so it starts
/// from its filler.
fn set_class_count(net: &mut NetParameter, classes: usize, recipe: &Path) -> Result<()> {
    let found = classifiers(net, &["SoftmaxWithLoss", "Accuracy"]);
    if found.is_empty() {
        return Err(Error::model(
            recipe.display(),
            "no InnerProduct or Convolution layer feeds the loss, so the class count cannot be set",
        ));
    }
    for i in found {
        heads::set_class_count(&mut net.layer[i], classes as u32);
    }
    Ok(())
}

/// The classifiers whose scores layers of the `readers` types read (see
/// [`heads::classifier_of`]), each once.
fn classifiers(net: &NetParameter, readers: &[&str]) -> std::collections::BTreeSet<usize> {
    net.layer
        .iter()
        .enumerate()
        .filter(|(_, l)| readers.contains(&l.r#type()))
        .filter_map(|(i, l)| heads::classifier_of(&net.layer, l.bottom.first()?, i, |_| true))
        .collect()
}

/// The num_output of the classifier layer(s) feeding the loss, which must
/// agree.
fn classifier_outputs(net: &NetParameter, recipe: &Path) -> Result<usize> {
    let outputs: std::collections::BTreeSet<u32> = classifiers(net, &["SoftmaxWithLoss"])
        .into_iter()
        .filter_map(|i| heads::class_count(&net.layer[i]))
        .collect();
    match outputs.iter().collect::<Vec<_>>().as_slice() {
        [&n] if n > 0 => Ok(n as usize),
        _ => Err(Error::model(
            recipe.display(),
            "class weights need one InnerProduct or Convolution classifier feeding a SoftmaxWithLoss layer",
        )),
    }
}

/// Turns the net's SoftmaxWithLoss layers into InfogainLoss layers reading
/// H from `h` (Caffe 1.0's InfogainLoss takes the same logits, labels,
/// loss_param and softmax axis).
fn weigh_loss(net: &mut NetParameter, h: &Path, recipe: &Path) -> Result<()> {
    let mut found = false;
    for l in net
        .layer
        .iter_mut()
        .filter(|l| l.r#type() == "SoftmaxWithLoss")
    {
        l.r#type = Some("InfogainLoss".into());
        // InfogainLoss refuses the deprecated `normalize`: say it the new way.
        if let Some(lp) = l.loss_param.as_mut() {
            if let Some(n) = lp.normalize.take() {
                use crate::caffe::proto::loss_parameter::NormalizationMode;
                if lp.normalization.is_none() {
                    lp.set_normalization(if n {
                        NormalizationMode::Valid
                    } else {
                        NormalizationMode::BatchSize
                    });
                }
            }
        }
        l.infogain_loss_param = Some(InfogainLossParameter {
            source: Some(h.to_string_lossy().into_owned()),
            axis: l.softmax_param.take().map(|p| p.axis()),
        });
        found = true;
    }
    if !found {
        return Err(Error::model(
            recipe.display(),
            "has no SoftmaxWithLoss layer to weigh by class",
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recipes_mean_values_give_way_to_the_datasets_mean_file() {
        let mut l: LayerParameter = crate::caffe::prototxt::parse(
            r#"name: "data" type: "Data" transform_param { crop_size: 224 mean_value: 104 mean_value: 117 mean_value: 123 }"#,
            Path::new("train_val.prototxt"),
        )
        .unwrap();
        use_mean_file(&mut l, Path::new("/d/mean.binaryproto"));
        let tp = l.transform_param.as_ref().unwrap();
        assert!(tp.mean_value.is_empty());
        assert_eq!(tp.mean_file(), "/d/mean.binaryproto");
        assert_eq!(tp.crop_size(), 224);
    }

    #[test]
    fn weighing_the_loss_keeps_its_settings_in_infogains_terms() {
        let text = r#"layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc" inner_product_param { num_output: 3 } }
            layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss"
                    loss_param { ignore_label: 7 normalize: false } softmax_param { axis: 1 } }"#;
        let mut net: NetParameter = prototxt::parse(text, Path::new("n")).unwrap();
        assert_eq!(classifier_outputs(&net, Path::new("n")).unwrap(), 3);
        weigh_loss(&mut net, Path::new("/h.binaryproto"), Path::new("n")).unwrap();
        let l = &net.layer[1];
        assert_eq!(l.r#type(), "InfogainLoss");
        let p = l.infogain_loss_param.as_ref().unwrap();
        assert_eq!((p.source(), p.axis()), ("/h.binaryproto", 1));
        assert!(l.softmax_param.is_none());
        let lp = l.loss_param.unwrap();
        assert_eq!(lp.ignore_label, Some(7));
        assert_eq!(lp.normalize, None);
        assert_eq!(
            lp.normalization(),
            crate::caffe::proto::loss_parameter::NormalizationMode::BatchSize
        );
        // Nothing left to weigh.
        assert!(weigh_loss(&mut net, Path::new("/h"), Path::new("n")).is_err());
        assert!(classifier_outputs(&net, Path::new("n")).is_err());
    }

    #[test]
    fn a_convolution_classifier_gets_the_class_count() {
        // MobileNet's: a 1x1 Convolution on the pooled map feeds the loss.
        let text = r#"layer { name: "pool6" type: "Pooling" bottom: "x" top: "pool6" }
            layer { name: "fc7" type: "Convolution" bottom: "pool6" top: "fc7" convolution_param { num_output: 1000 kernel_size: 1 } }
            layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc7" bottom: "label" top: "loss" }"#;
        let mut net: NetParameter = prototxt::parse(text, Path::new("n")).unwrap();
        set_class_count(&mut net, 7, Path::new("n")).unwrap();
        assert_eq!(
            net.layer[1]
                .convolution_param
                .as_ref()
                .unwrap()
                .num_output(),
            7
        );
        assert_eq!(classifier_outputs(&net, Path::new("n")).unwrap(), 7);
        // A loss fed by something else still names the problem.
        net.layer[1].r#type = Some("Pooling".into());
        let e = set_class_count(&mut net, 7, Path::new("n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no InnerProduct or Convolution layer feeds the loss"),
            "{e}"
        );
    }
}
