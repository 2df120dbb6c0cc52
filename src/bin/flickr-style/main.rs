//! `flickr-style`: the command line over the `flickr_style` library. Each
//! subcommand replaces one step of Caffe's Flickr Style recipe.
mod args;

use anyhow::{bail, Context, Result};
use args::*;
use clap::Parser;
use flickr_style::caffe::mean_file::{MeanImage, NpyDtype};
use flickr_style::pipeline::folders::FolderImportOptions;
use flickr_style::pipeline::pad::Pad;
use flickr_style::pipeline::{fetch, ilsvrc_aux, mean, to_lmdb};
use flickr_style::train::compute::{Compute, DeviceChoice};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Prints to stdout. When its reader has gone (`| head`), the command stops
/// quietly with success, as command-line tools do; results are printed
/// after their files are written, so nothing is lost.
macro_rules! out {
    ($($arg:tt)*) => { stdout_or_exit(format_args!($($arg)*)) };
}

/// [`out!`] with a newline.
macro_rules! outln {
    ($($arg:tt)*) => { stdout_or_exit(format_args!("{}\n", format_args!($($arg)*))) };
}

/// A line to stderr that a closed stderr cannot turn into a panic.
macro_rules! note {
    ($($arg:tt)*) => { flickr_style::progress::say(format_args!($($arg)*)) };
}

fn stdout_or_exit(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_fmt(args).and_then(|()| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        note!("error: writing to standard output: {e}");
        std::process::exit(2);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // Before any thread exists: rayon's pool and candle's CPU kernels
        // (which size their own work from this variable) both follow it.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n.into())
            .build_global()
        {
            note!("error: --threads {n}: {e}");
            return ExitCode::from(2);
        }
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<flickr_style::Error>()
                .is_some_and(|e| matches!(e, flickr_style::Error::Interrupted)) =>
        {
            note!("interrupted: the lists and manifest hold what finished; rerun to resume");
            ExitCode::from(130)
        }
        Err(e) => {
            note!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if matches!(
        cli.command,
        Command::Finetune(_)
            | Command::Pipeline(_)
            | Command::Test(_)
            | Command::Evaluate(_)
            | Command::Features(_)
            | Command::Probe(_)
            | Command::Classify(_)
            | Command::Explain(_)
            | Command::Time(_)
    ) {
        flickr_style::train::memory::reuse_large_allocations();
    }
    match cli.command {
        Command::ToLmdb(a) => cmd_to_lmdb(a),
        Command::ComputeMean(a) => cmd_compute_mean(a),
        Command::ConvertMean(a) => cmd_convert_mean(a),
        Command::GetIlsvrcAux(a) => cmd_get_ilsvrc_aux(a),
        Command::Assemble(a) => cmd_assemble(a),
        Command::ImportFolders(a) => cmd_import_folders(a),
        Command::ImportManifest(a) => {
            use flickr_style::pipeline::manifest::import_manifest;
            let opts = a
                .columns
                .options(a.manifest.clone(), a.split.options(a.out.clone(), a.seed));
            let s = import_manifest(&opts)
                .with_context(|| format!("import-manifest {}", a.manifest.display()))?;
            out!("{}", s.to_markdown());
            note!(
                "wrote the lists, labels.txt and samples.csv into {}",
                a.out.display()
            );
            Ok(())
        }
        Command::Finetune(a) => cmd_finetune(a),
        Command::Pipeline(a) => cmd_pipeline(*a),
        Command::Test(a) => cmd_test(a),
        Command::Evaluate(a) => cmd_evaluate(a),
        Command::Features(a) => cmd_features(a),
        Command::Probe(a) => cmd_probe(a),
        Command::Classify(a) => cmd_classify(a),
        Command::Explain(a) => cmd_explain(a),
        Command::Deploy(a) => {
            let mut def = flickr_style::caffe::model::read_net_prototxt(&a.model)?;
            a.state.flags().apply(&mut def);
            let base_dir = flickr_style::train::commands::base_dir_for(&a.model);
            let (net, comment) = flickr_style::inference::deploy::deploy_net(
                &def,
                a.batch.max(1),
                &a.model,
                &base_dir,
            )?;
            let text = comment + &flickr_style::caffe::prototxt::to_string(&net);
            flickr_style::fsutil::write_atomic(&a.out, text.as_bytes())?;
            note!("wrote {}", a.out.display());
            Ok(())
        }
        Command::Time(a) => cmd_time(a),
        Command::Plot(a) => {
            let (out, runs) = a.files.split_last().expect("clap asks for two or more");
            // The output comes last, as with cp: refuse to overwrite a run
            // named there by mistake.
            if out
                .extension()
                .is_none_or(|e| !e.eq_ignore_ascii_case("svg"))
            {
                bail!(
                    "{}: the last argument is the SVG file to write and must end in .svg \
                     (the runs to plot come before it)",
                    out.display()
                );
            }
            let runs: Vec<&Path> = runs.iter().map(PathBuf::as_path).collect();
            flickr_style::analysis::plot::plot_runs(&runs, out, a.csv.as_deref())?;
            note!("wrote {}", out.display());
            Ok(())
        }
        Command::CheckOps(a) => cmd_check_ops(a),
        Command::DownloadModel(a) => cmd_download_model(a),
        Command::ClassWeights(a) => cmd_class_weights(a),
        Command::TargetsLmdb(a) => cmd_targets_lmdb(a),
        Command::Compare(a) => {
            use flickr_style::analysis::compare::{expand, read_reports, sorted, to_markdown};
            let rows = read_reports(&expand(&a.reports)?)?;
            out!("{}", to_markdown(&sorted(rows, a.by)));
            Ok(())
        }
        Command::GrayWeights(a) => {
            let mut w = flickr_style::caffe::model::read_caffemodel(&a.weights)?;
            let (before, after) = flickr_style::train::gray::gray_weights(
                &mut w,
                &a.layer,
                &a.weights.display().to_string(),
            )?;
            flickr_style::caffe::write_binary(&a.out, &w)?;
            note!(
                "{}: {before} -> {after}; wrote {}. In the net, read one channel (is_color: false, or \
                 to-lmdb --gray) and give {}'s weights lr_mult x3 and decay_mult /3 to train as the \
                 three-channel net would",
                a.layer,
                a.out.display(),
                a.layer
            );
            Ok(())
        }
        Command::Measure(a) => {
            use flickr_style::pipeline::measure::{measure_samples, MeasureOptions};
            let m = measure_samples(&MeasureOptions {
                samples: a.samples.clone(),
                root: a.root.unwrap_or_default(),
                out: a.out,
            })
            .with_context(|| format!("measure {}", a.samples.display()))?;
            note!(
                "measured {} images into {}; fuse --measured uses them",
                m.images,
                m.out.display()
            );
            Ok(())
        }
        Command::Fuse(a) => {
            use flickr_style::analysis::fusion::{fuse, FuseOptions};
            let probabilities = if a.probabilities.is_dir() {
                a.probabilities.join("probabilities.csv")
            } else {
                a.probabilities.clone()
            };
            let f = fuse(&FuseOptions {
                probabilities,
                samples: a.samples.clone(),
                size: !a.no_size,
                features: a.features,
                measures: a.measures.or_else(|| {
                    a.measured
                        .then(|| flickr_style::pipeline::measure::measures_beside(&a.samples))
                }),
                folds: a.folds,
                seed: a.seed,
                l2: a.l2,
            })
            .with_context(|| format!("fuse {}", a.probabilities.display()))?;
            // Files first: a reader that leaves early ends the command.
            if let Some(dir) = &a.out {
                f.write(dir)?;
                note!(
                    "wrote fusion.md, fusion.json and fused.csv into {}",
                    dir.display()
                );
            }
            out!("{}", f.to_markdown());
            Ok(())
        }
    }
}

fn cmd_targets_lmdb(a: TargetsLmdbArgs) -> Result<()> {
    let w =
        flickr_style::pipeline::targets::write_targets_lmdb(&a.images, &a.targets, &a.out, a.force)
            .with_context(|| format!("targets-lmdb {}", a.targets.display()))?;
    note!(
        "wrote {} records of {} values to {}; read them beside the images with\n  layer {{ name: \"targets\" type: \"Data\" top: \"targets\" include {{ phase: TRAIN }} data_param {{ source: \"{}\" batch_size: <the images' batch_size> backend: LMDB }} }}\nand feed \"targets\" to an EuclideanLoss or SigmoidCrossEntropyLoss",
        w.records,
        w.values,
        a.out.display(),
        a.out.display()
    );
    Ok(())
}

fn cmd_class_weights(a: ClassWeightsArgs) -> Result<()> {
    use flickr_style::pipeline::class_weights::{to_markdown, write_class_weights};
    if a.classes == 0 {
        bail!("--classes must be at least 1");
    }
    let names = match &a.names {
        Some(p) => flickr_style::inference::evaluate::read_class_names(p, a.classes)?,
        None => Vec::new(),
    };
    let (counts, weights) = write_class_weights(&a.list, a.classes, a.alpha, &a.out)
        .with_context(|| format!("class-weights {}", a.list.display()))?;
    out!("{}", to_markdown(&counts, &weights, &names));
    note!(
        "wrote {}; use it in the net as\n  layer {{ name: \"loss\" type: \"InfogainLoss\" bottom: <scores> bottom: \"label\" top: \"loss\" infogain_loss_param {{ source: \"{}\" }} }}",
        a.out.display(),
        a.out.display()
    );
    Ok(())
}

fn cmd_import_folders(a: ImportFoldersArgs) -> Result<()> {
    use flickr_style::pipeline::folders::import_folders;
    let opts = FolderImportOptions {
        root: a.root.clone(),
        split: a.split.options(a.out.clone(), a.seed),
    };
    let s =
        import_folders(&opts).with_context(|| format!("import-folders {}", a.root.display()))?;
    out!("{}", s.to_markdown());
    note!(
        "wrote {}, {}, {} and {}",
        a.out.join("train.txt").display(),
        a.out.join("test.txt").display(),
        a.out.join("labels.txt").display(),
        a.out.join("samples.csv").display()
    );
    Ok(())
}

fn cmd_to_lmdb(a: ToLmdbArgs) -> Result<()> {
    let opts = to_lmdb::ToLmdbOptions {
        root: a.root,
        list: a.list,
        db: a.db.clone(),
        resize: a.resize.get()?,
        pad: a.resize.pad(),
        gray: a.gray,
        shuffle: a.shuffle,
        seed: a.seed,
        encoded: a.encoded,
        encode_type: a.encode_type,
        check_size: a.check_size,
        strict: a.strict,
        force: a.force,
    };
    let s = to_lmdb::to_lmdb(&opts).with_context(|| format!("to-lmdb into {}", a.db.display()))?;
    note!(
        "Processed {} files into {} ({} skipped) in {:.2} s, {:.0} images/s",
        s.written,
        a.db.display(),
        s.skipped.len(),
        s.seconds,
        (s.written + s.skipped.len()) as f64 / s.seconds.max(1e-9)
    );
    Ok(())
}

fn cmd_compute_mean(a: ComputeMeanArgs) -> Result<()> {
    let source = if a.input.is_dir() {
        mean::MeanSource::Lmdb(a.input.clone())
    } else {
        mean::MeanSource::List {
            list: a.input.clone(),
            root: a.root.unwrap_or_default(),
            resize: a.resize.get()?,
            pad: a.resize.pad(),
            gray: a.gray,
        }
    };
    let start = std::time::Instant::now();
    let (m, count) = mean::compute_mean(&source)
        .with_context(|| format!("computing the mean of {}", a.input.display()))?;
    m.write_binaryproto(&a.output)?;
    if let Some(npy) = &a.npy {
        m.write_npy(npy, NpyDtype::F4)?;
    }
    for (c, v) in m.channel_means().iter().enumerate() {
        outln!("mean_value channel [{c}]: {v:.6}");
    }
    note!(
        "Averaged {count} images of {}x{}x{} in {:.2} s into {}",
        m.channels,
        m.height,
        m.width,
        start.elapsed().as_secs_f64(),
        a.output.display()
    );
    Ok(())
}

fn is_npy(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

fn cmd_convert_mean(a: ConvertMeanArgs) -> Result<()> {
    if is_npy(&a.input) == is_npy(&a.output) {
        bail!(
            "{} and {} are both {}: nothing to convert (the direction comes from the names: \
             one ends in .npy, the other is the .binaryproto)",
            a.input.display(),
            a.output.display(),
            if is_npy(&a.input) {
                ".npy"
            } else {
                "binaryproto"
            }
        );
    }
    let mean = if is_npy(&a.input) {
        MeanImage::read_npy(&a.input)?
    } else {
        MeanImage::read_binaryproto(&a.input)?
    };
    if is_npy(&a.output) {
        mean.write_npy(&a.output, a.dtype)?;
    } else {
        mean.write_binaryproto(&a.output)?;
    }
    note!(
        "Wrote {} ({}x{}x{})",
        a.output.display(),
        mean.channels,
        mean.height,
        mean.width
    );
    Ok(())
}

fn cmd_get_ilsvrc_aux(a: GetIlsvrcAuxArgs) -> Result<()> {
    let sum = a.sha256.map(fetch::Checksum::Sha256);
    let s = ilsvrc_aux::get_ilsvrc_aux(
        &a.dir,
        &a.url,
        sum.as_ref(),
        &fetch::FetchOptions::default(),
    )
    .with_context(|| format!("fetching the ILSVRC aux data from {}", a.url))?;
    for f in &s.files {
        outln!("{}", f.display());
    }
    note!(
        "ImageNet mean per channel (B, G, R): {:?}; {} synsets",
        s.channel_means,
        s.synsets
    );
    Ok(())
}

fn secs(s: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(s.max(0.001))
}

/// Installs the Ctrl-C handler first thing, so an early Ctrl-C is never
/// lost: the first sets the returned flag (`what` says what happens next),
/// a second one exits at once.
fn stop_on_ctrl_c(what: &'static str) -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        note!("\n{what} (Ctrl-C again to quit now)");
    })?;
    Ok(stop)
}

fn cmd_assemble(a: AssembleArgs) -> Result<()> {
    use flickr_style::pipeline::assemble::{assemble, AssembleOptions};
    use flickr_style::pipeline::downloader::DownloadConfig;
    let stop = stop_on_ctrl_c("Stopping: writing the lists and manifest for what finished")?;
    let opts = AssembleOptions {
        csv: a.csv,
        out: a.out.clone(),
        seed: a.seed,
        images: a.images,
        labels: a.labels,
        mirror: a.mirror,
        dry_run: a.dry_run,
        download: DownloadConfig {
            workers: if a.workers > 0 {
                a.workers as usize
            } else {
                128
            },
            connect_timeout: secs(a.connect_timeout),
            read_timeout: secs(a.read_timeout),
            total_timeout: secs(a.timeout),
            attempts: a.attempts.max(1),
            backoff: secs(a.backoff),
            placeholder_sha1: a.placeholder_sha1,
            max_bytes: a.max_image_bytes,
            seed: a.seed as u64,
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = rt.block_on(assemble(&opts, async move {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }))?;
    if opts.dry_run {
        for line in &summary.selection {
            outln!("{line}");
        }
        note!(
            "Selected {} images (dry run, nothing downloaded)",
            summary.selected
        );
        return Ok(());
    }
    let missing: Vec<String> = summary
        .missing
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    note!(
        "Selected {}, {} available ({} reused), {} missing{} in {:.1} s",
        summary.selected,
        summary.ok,
        summary.reused,
        summary.selected - summary.ok,
        if missing.is_empty() {
            String::new()
        } else {
            format!(" ({})", missing.join(", "))
        },
        summary.seconds
    );
    note!(
        "Writing train/test for {} successfully downloaded images ({} train, {} test) to {}",
        summary.ok,
        summary.train,
        summary.test,
        a.out.display()
    );
    if summary.interrupted {
        return Err(flickr_style::Error::Interrupted.into());
    }
    Ok(())
}

fn cmd_download_model(a: DownloadModelArgs) -> Result<()> {
    let (path, downloaded) = flickr_style::pipeline::model_zoo::download_model(
        &a.dir,
        a.url.as_deref(),
        &fetch::FetchOptions::default(),
    )
    .with_context(|| format!("downloading the model of {}", a.dir.display()))?;
    if downloaded {
        note!("Downloaded and verified {}", path.display());
    } else {
        note!("{} is already present and verified", path.display());
    }
    Ok(())
}

fn cmd_finetune(a: FinetuneArgs) -> Result<()> {
    use flickr_style::train::solver::{Solver, SolverOptions};
    flickr_style::train::compute::set_tf32(a.device.tf32);
    let stop = stop_on_ctrl_c("Stopping after this iteration and writing a snapshot")?;
    let opts = SolverOptions {
        solver: a.solver.clone(),
        base_dir: PathBuf::from("."),
        snapshot_prefix: a.snapshot_prefix,
        max_iter: a.max_iter,
        metrics: a.metrics,
        echo: true,
        progress: true,
        device: match (a.cpu, a.device.gpu) {
            (true, _) => DeviceChoice::Cpu,
            (false, Some(n)) => DeviceChoice::Gpu(n),
            (false, None) => DeviceChoice::FromSolver,
        },
        tensor_ops: a.device.tensor_ops,
        fused: a.device.fused_ops,
        bf16: a.device.bf16,
        rotate90: a.rotate90,
        augment: a.augment,
        state: Some(a.state.flags()),
    };
    let mut solver =
        Solver::new(&opts).with_context(|| format!("setting up {}", a.solver.display()))?;
    if let Some(log) = &a.log {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log file {}", log.display()))?;
        solver.log =
            std::mem::replace(&mut solver.log, flickr_style::train::log::Logger::new(true))
                .with_file(file);
    }
    solver.set_stop_flag(stop);
    if let Some(state) = &a.snapshot {
        solver.restore(state)?;
    } else if !a.weights.is_empty() {
        solver.load_weights(&a.weights)?;
    } else {
        solver.load_solver_weights()?;
    }
    if a.dry_run {
        out!("{}", solver.dry_run_report()?);
        return Ok(());
    }
    solver.solve()?;
    Ok(())
}

fn cmd_test(a: TestArgs) -> Result<()> {
    let weights: Vec<&Path> = a.weights.iter().map(PathBuf::as_path).collect();
    let results = flickr_style::train::commands::test(
        &a.model,
        &weights,
        a.iterations,
        &a.state.flags(),
        &flickr_style::train::commands::base_dir_for(&a.model),
        &a.device.compute()?,
    )?;
    for (name, value, w) in results {
        let extra = if w != 0.0 {
            format!(
                " (* {} = {} loss)",
                flickr_style::train::log::g(w),
                flickr_style::train::log::g(w * value)
            )
        } else {
            String::new()
        };
        outln!("{name} = {}{extra}", flickr_style::train::log::g(value));
    }
    Ok(())
}

fn cmd_evaluate(a: EvaluateArgs) -> Result<()> {
    use flickr_style::inference::evaluate::{evaluate, read_class_names, EvalOptions, Report};
    let weights: Vec<&Path> = a.weights.iter().map(PathBuf::as_path).collect();
    let base_dir = flickr_style::train::commands::base_dir_for(&a.model);
    let compute = a.device.compute()?;
    let state = a.state.flags();
    let options = EvalOptions {
        model: &a.model,
        state: &state,
        weights: &weights,
        base_dir: &base_dir,
        compute: &compute,
        iterations: a.iterations,
        blobs: a.scores.zip(a.label),
        top_k: a.top_k,
        threshold: a.threshold,
        tta: a.tta,
        ensemble: a.ensemble,
        source: a.source.as_deref(),
    };
    let evaluation = evaluate(&options)?;
    let names = match &a.names {
        Some(p) => read_class_names(p, evaluation.confusion.classes())?,
        None => Vec::new(),
    };
    let report = Report {
        options: &options,
        evaluation: &evaluation,
        names: &names,
    };
    // Files first: a reader that leaves early ends the command.
    if let Some(dir) = &a.out {
        for f in report.write(dir)? {
            note!("wrote {}", f.display());
        }
    }
    out!("{}", report.markdown());
    Ok(())
}

fn cmd_features(a: FeaturesArgs) -> Result<()> {
    use flickr_style::inference::classify::ClassifyOptions;
    use flickr_style::inference::features::{extract, extract_images, FeatureOptions, SaveOptions};
    let weights: Vec<&Path> = a.weights.iter().map(PathBuf::as_path).collect();
    let base_dir = flickr_style::train::commands::base_dir_for(&a.model);
    let compute = a.device.compute()?;
    let state = a.state.flags();
    let stop = stop_on_ctrl_c("Stopping: nothing is written")?;
    let save = SaveOptions {
        blobs: &a.blobs,
        out: &a.out,
        lmdb: a.lmdb,
        force: a.force,
    };
    let saved = if a.images.is_empty() {
        if a.resize.get()?.is_some() || a.resize.pad().is_some() {
            bail!("--resize-height/--resize-width and --pad-square prepare image files; the TEST data is read as the net reads it");
        }
        extract(&FeatureOptions {
            model: &a.model,
            state: &state,
            weights: &weights,
            base_dir: &base_dir,
            compute: &compute,
            source: a.source.as_deref(),
            iterations: a.iterations,
            shuffle_keys: None,
            stop: Some(stop),
            save,
            extra_views: &[],
        })
    } else {
        let images = flickr_style::pipeline::folders::find_images(&a.images)?;
        if images.is_empty() {
            bail!("no image files found in the given folders");
        }
        let input = ClassifyOptions {
            size: a.resize.get()?,
            pad: a.resize.pad(),
            gray: a.gray,
            mean: a.mean.as_deref(),
            mean_values: &a.mean_value,
            batch_size: a.batch_size,
            state: &state,
            ..ClassifyOptions::new(&a.model, &weights, &base_dir, &compute, &images)
        };
        extract_images(&input, &save, a.strict, Some(stop))
    }
    .with_context(|| format!("features of {}", a.model.display()))?;
    out!("{}", saved.summary());
    Ok(())
}

fn cmd_probe(a: ProbeArgs) -> Result<()> {
    use flickr_style::train::probe::{probe, ProbeOptions};
    flickr_style::train::compute::set_tf32(a.device.tf32);
    let stop = stop_on_ctrl_c("Stopping after this iteration")?;
    let weights: Vec<&Path> = a.weights.iter().map(PathBuf::as_path).collect();
    let state = a.state.flags();
    let p = probe(&ProbeOptions {
        solver: &a.solver,
        state: &state,
        weights: &weights,
        base_dir: Path::new("."),
        out: &a.out,
        max_iter: a.max_iter,
        device: a.device.gpu.map_or(DeviceChoice::Cpu, DeviceChoice::Gpu),
        bf16: a.device.bf16,
        tensor_ops: a.device.tensor_ops,
        fused: a.device.fused_ops,
        metrics: a.metrics,
        verbose: true,
        stop: Some(stop),
        shuffle: true,
        views: a.views,
    })
    .with_context(|| format!("probe of {}", a.solver.display()))?;
    out!("{}", p.summary(a.views.views().len()));
    Ok(())
}

fn cmd_classify(a: ClassifyArgs) -> Result<()> {
    use flickr_style::inference::classify::{classify, ClassifyOptions};
    let images = flickr_style::pipeline::folders::find_images(&a.images)?;
    if images.is_empty() {
        bail!("no image files found in the given folders");
    }
    let weights: Vec<&Path> = a.weights.iter().map(PathBuf::as_path).collect();
    let base_dir = flickr_style::train::commands::base_dir_for(&a.model);
    let compute = a.device.compute()?;
    let state = a.state.flags();
    let fuser = a
        .fusion
        .as_deref()
        .map(|f| flickr_style::analysis::fusion::Fuser::load(f, a.samples.as_deref()))
        .transpose()?;
    let result = classify(&ClassifyOptions {
        ensemble: a.ensemble,
        scores: a.scores,
        top_k: a.top_k,
        tta: a.tta,
        oversample: a.oversample,
        fusion: fuser.as_ref(),
        ..image_input(
            &a.input, &a.model, &state, &weights, &base_dir, &compute, &images,
        )?
    })?;
    for (p, why) in &result.failed {
        note!("skipped {}: {why}", p.display());
    }
    if a.strict && !result.failed.is_empty() {
        bail!(
            "{} of {} images could not be classified (listed above); nothing was written",
            result.failed.len(),
            images.len()
        );
    }
    if result.rows.is_empty() {
        bail!("none of the {} images could be read", images.len());
    }
    let names = match &a.names {
        Some(p) => flickr_style::inference::evaluate::read_class_names(p, result.classes)?,
        None => Vec::new(),
    };
    let csv = result.to_csv(&names, a.threshold);
    note!("{}", result.summary(&names, a.threshold).trim_end());
    match &a.out {
        Some(out) => {
            flickr_style::fsutil::write_atomic(out, csv.as_bytes())?;
            note!(
                "classified {} images ({} skipped) into {}",
                result.rows.len(),
                result.failed.len(),
                out.display()
            );
        }
        None => out!("{csv}"),
    }
    Ok(())
}

/// The options of `classify` and `explain` for image files, prepared as
/// `input` says and everything else at its default.
fn image_input<'a>(
    input: &'a ImageInputArgs,
    model: &'a Path,
    state: &'a flickr_style::caffe::net_state::StateFlags,
    weights: &'a [&'a Path],
    base_dir: &'a Path,
    compute: &'a flickr_style::train::compute::Compute,
    images: &'a [PathBuf],
) -> Result<flickr_style::inference::classify::ClassifyOptions<'a>> {
    Ok(flickr_style::inference::classify::ClassifyOptions {
        size: input.resize.get()?,
        pad: input.resize.pad(),
        gray: input.gray,
        mean: input.mean.as_deref(),
        mean_values: &input.mean_value,
        batch_size: input.batch_size,
        state,
        ..flickr_style::inference::classify::ClassifyOptions::new(
            model, weights, base_dir, compute, images,
        )
    })
}

fn cmd_explain(a: ExplainArgs) -> Result<()> {
    use flickr_style::inference::classify::ClassifyOptions;
    use flickr_style::inference::explain::{
        class_by_number_or_name, explain, labelled_images, ExplainOptions,
    };
    let (images, labels) = match &a.list {
        Some(list) => {
            let (images, labels) = labelled_images(list, &a.root.clone().unwrap_or_default())?;
            (images, Some(labels))
        }
        None => (
            flickr_style::pipeline::folders::find_images(&a.images)?,
            None,
        ),
    };
    if images.is_empty() {
        bail!("no image files found in the given folders or list");
    }
    let weights = [a.weights.as_path()];
    let base_dir = flickr_style::train::commands::base_dir_for(&a.model);
    let compute = a.device.compute()?;
    let state = a.state.flags();
    // explain checks the names against the net's classes once it is built.
    let lines = match &a.names {
        Some(p) => flickr_style::inference::evaluate::read_names(p)?,
        None => Vec::new(),
    };
    let class = a
        .class
        .as_deref()
        .map(|c| class_by_number_or_name(c, &lines, a.names.as_deref()))
        .transpose()?;
    let input = ClassifyOptions {
        scores: a.scores.clone(),
        ..image_input(
            &a.input, &a.model, &state, &weights, &base_dir, &compute, &images,
        )?
    };
    let result = explain(&ExplainOptions {
        input,
        layer: a.layer,
        class,
        names: &lines,
        out: &a.out,
        strict: a.strict,
        labels: labels.as_ref(),
        mistakes: a.mistakes,
        stop: Some(stop_on_ctrl_c("Stopping: nothing is written")?),
        object: a.object,
    })
    .with_context(|| format!("explain with {}", a.model.display()))?;
    for (p, why) in &result.failed {
        note!("skipped {}: {why}", p.display());
    }
    out!("{}", result.summary(a.mistakes, &a.out));
    Ok(())
}

fn cmd_time(a: TimeArgs) -> Result<()> {
    let r = flickr_style::train::commands::time(
        &a.model,
        a.iterations,
        a.synthetic,
        a.phase.into(),
        &a.state.flags(),
        &flickr_style::train::commands::base_dir_for(&a.model),
        &a.device.compute()?,
    )?;
    out!("{}", r.to_markdown(rayon::current_num_threads()));
    Ok(())
}

fn cmd_check_ops(a: CheckOpsArgs) -> Result<()> {
    use flickr_style::train::op_check::{check_ops, to_markdown};
    let c = DeviceArgs {
        gpu: a.gpu,
        tf32: false,
        bf16: false,
        tensor_ops: true,
        fused_ops: false,
    }
    .compute()?;
    let reports = check_ops(&c, a.seed)?;
    let (report, failed) = to_markdown(&reports, &c);
    out!("{report}");
    if failed > 0 {
        bail!("{failed} of {} op checks failed", reports.len());
    }
    Ok(())
}

fn cmd_pipeline(a: PipelineArgs) -> Result<()> {
    use flickr_style::pipeline::assemble::AssembleOptions;
    use flickr_style::pipeline::downloader::DownloadConfig;
    use flickr_style::workflow::{run, Dataset, WorkflowOptions};
    if !a.recipe.join("train_val.prototxt").exists() {
        bail!(
            "{} has no train_val.prototxt: point --recipe at Caffe's models/finetune_flickr_style (e.g. ../shared/caffe-ref/models/finetune_flickr_style)",
            a.recipe.display()
        );
    }
    if let Some(n) = a.gpu {
        // Fail before hours of downloading, not at the training stage.
        Compute::gpu(n)?;
    }
    flickr_style::train::compute::set_tf32(a.tf32);
    // An imported dataset's data folder defaults to data/<its name>.
    let data_for = |p: &Path| -> Result<PathBuf> {
        let p = std::path::absolute(p)?;
        let name = if p.is_file() {
            p.file_stem()
        } else {
            p.file_name()
        }
        .map_or_else(|| "dataset".into(), |n| n.to_string_lossy().into_owned());
        Ok(a.out
            .clone()
            .unwrap_or_else(|| Path::new("data").join(name)))
    };
    let dataset = match (&a.folders, &a.manifest) {
        (Some(root), _) => Dataset::Folders(FolderImportOptions {
            root: root.clone(),
            split: a.split.options(data_for(root)?, a.seed as u64),
        }),
        (None, Some(m)) => Dataset::Manifest(
            a.columns
                .options(m.clone(), a.split.options(data_for(m)?, a.seed as u64)),
        ),
        (None, None) => Dataset::FlickrStyle(AssembleOptions {
            csv: a.csv,
            out: a
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("data/flickr_style")),
            seed: a.seed,
            images: a.images,
            labels: a.labels,
            mirror: a.mirror,
            dry_run: false,
            download: DownloadConfig {
                workers: a.workers.max(1),
                seed: a.seed as u64,
                ..DownloadConfig::default()
            },
        }),
    };
    let opts = WorkflowOptions {
        dataset,
        names: a.names,
        recipe: a.recipe,
        weights: a.weights,
        weights_url: a.weights_url,
        lmdb: a.lmdb,
        gray: a.gray,
        measure: a.measure,
        rotate90: a.rotate90,
        cyclic: a.cyclic,
        augment: a.augment,
        tta: a.tta,
        class_weights: a.class_weights,
        pad: a.pad_square.map(|fill| Pad {
            fill,
            upscale: !a.no_upscale,
        }),
        batch_size: a.batch_size,
        max_iter: a.max_iter,
        test_iter: a.test_iter,
        test_interval: a.test_interval,
        snapshot: a.snapshot,
        metrics: a.metrics,
        verbose: true,
        gpu: a.gpu,
        bf16: a.bf16,
        probe: a.probe,
    };
    let stop = stop_on_ctrl_c("Stopping: finishing the current step and saving progress")?;
    let what = match &opts.dataset {
        Dataset::FlickrStyle(_) => "the Flickr Style pipeline".to_string(),
        Dataset::Folders(f) => format!("the pipeline on {}", f.root.display()),
        Dataset::Manifest(m) => format!("the pipeline on {}", m.manifest.display()),
    };
    let model = run(&opts, stop).with_context(|| format!("running {what}"))?;
    note!("Done: {}", model.display());
    note!(
        "{}",
        flickr_style::workflow::next_steps(&opts, &model).trim_end()
    );
    Ok(())
}
