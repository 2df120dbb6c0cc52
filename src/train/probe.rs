//! `probe`: train only a net's classifier on its pretrained features (a
//! "linear probe"), the fast route on a CPU: one forward pass over the
//! training and test images ([`features`](super::features)), then the
//! classifier layer alone trained by the recipe's own solver on the saved
//! features, which takes seconds where fine-tuning the whole net takes hours.
//!
//! The classifier is the InnerProduct layer that feeds the net's loss; the
//! probe net is the recipe's net from that layer on (classifier, loss,
//! accuracy, with their settings: class weights, lr_mult, fillers), fed by
//! Data layers reading the feature LMDBs. Its trained layer is put back into
//! the pretrained net, which gives `probe.caffemodel`: a whole net, ready for
//! `evaluate`, `classify`, `deploy` or Caffe, or to start fine-tuning from
//! (a trained head first is the LP-FT recipe).
use super::compute::{Compute, DeviceChoice};
use super::features::{extract_from, FeatureOptions, Features, SaveOptions, SavedBlob};
use super::layers::BuildContext;
use super::net::{included, Net};
use super::solver::{Solver, SolverOptions, TestResult};
use crate::caffe::model::{read_caffemodel, read_net_prototxt};
use crate::caffe::proto::{
    data_parameter::Db, DataParameter, LayerParameter, NetParameter, NetState, Phase,
    SolverParameter,
};
use crate::caffe::{prototxt, write_binary};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// What to probe and how.
pub struct ProbeOptions<'a> {
    /// The recipe's solver prototxt (its `net` holds both phases).
    pub solver: &'a Path,
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

/// Where the probe cuts the recipe's net.
#[derive(Debug, PartialEq)]
struct Cut {
    /// The classifier layer's index in the definition.
    classifier: usize,
    /// The blob it reads.
    feature: String,
    /// The label blob.
    label: String,
    /// The TRAIN and TEST data layers' indices.
    train_data: usize,
    test_data: usize,
}

/// Trains the classifier of `o.solver`'s net on the features of
/// `o.weights` and returns the whole net with it.
pub fn probe(o: &ProbeOptions) -> Result<Probe> {
    let solver_path = o.base_dir.join(o.solver);
    let param: SolverParameter = prototxt::read(&solver_path)?;
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
    let base = if o.base_dir.join(&net_file).exists() {
        o.base_dir.to_path_buf()
    } else {
        crate::fsutil::parent_dir(&solver_path)
    };
    let net_path = base.join(&net_file);
    // Weights resolve from the base folder, whatever folder the probe's own solver runs in.
    let weights: Vec<PathBuf> = o
        .weights
        .iter()
        .map(|w| std::path::absolute(o.base_dir.join(w)).map_err(|e| Error::io(w, e)))
        .collect::<Result<_>>()?;
    let weight_refs: Vec<&Path> = weights.iter().map(PathBuf::as_path).collect();
    let def = read_net_prototxt(&net_path)?;
    let cut = cut(&def, &net_path)?;
    let compute = Compute::for_solver(o.device, &param)?;
    std::fs::create_dir_all(o.out).map_err(|e| Error::io(o.out, e))?;
    let out = std::path::absolute(o.out).map_err(|e| Error::io(o.out, e))?;

    // The training images through the TEST transform (no random crops or
    // mirrors: each image's features once), keyed in a seeded shuffle
    // because a Data layer reads in key order.
    let blobs = [cut.feature.clone()];
    let seed = param.random_seed().max(0) as u64;
    let save = |def: &NetParameter, dir: &str, shuffle: Option<u64>| -> Result<Features> {
        let dir = out.join(dir);
        let stamp = stamp(def, &base, &weights, &cut.feature, shuffle);
        if let Some(f) = cached(&dir, &cut.feature, &stamp) {
            if o.verbose {
                eprintln!(
                    "probe: {} features of {} images are up to date",
                    dir.display(),
                    f.rows
                );
            }
            return Ok(f);
        }
        // A pass that stops part way leaves the old stamp invalid.
        let _ = std::fs::remove_file(dir.join(STAMP));
        let f = extract_from(
            def,
            &FeatureOptions {
                model: &net_path,
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
            },
        )?;
        write_atomic(&dir.join(STAMP), stamp.as_bytes())?;
        Ok(f)
    };
    if o.verbose {
        eprintln!(
            "probe: saving {} (the input of {}) for the training images",
            cut.feature,
            def.layer[cut.classifier].name()
        );
    }
    let train = save(
        &reading_training_data(&def, &cut),
        "train_features",
        o.shuffle.then_some(seed),
    )?;
    if o.verbose {
        eprintln!("probe: and for the test images");
    }
    let test = save(&def, "test_features", None)?;

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
        tensor_ops: false,
        fused: false,
        bf16: false,
        rotate90: false,
        augment: None,
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
    let mut whole = Net::new(&def, &ctx, None)?;
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

/// The file beside saved features that says what they were made from.
const STAMP: &str = "made_from.json";

/// What a feature pass depends on: the net that ran (as text), the blob,
/// the key order, and the size and time of the weights and of the files its
/// data layers read (source list or LMDB, mean file). Equal stamps mean the
/// saved features can be used again, so a rerun (a different `--max-iter`,
/// a run resumed after Ctrl-C) skips the forward pass.
fn stamp(
    def: &NetParameter,
    base: &Path,
    weights: &[PathBuf],
    blob: &str,
    shuffle: Option<u64>,
) -> String {
    let file = |p: &Path| {
        let p = if p.is_dir() {
            p.join("data.mdb")
        } else {
            p.to_path_buf()
        };
        let meta = std::fs::metadata(&p).ok();
        serde_json::json!({
            "path": p.display().to_string(),
            "bytes": meta.as_ref().map(|m| m.len()),
            "modified": meta
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos().to_string()),
        })
    };
    let mut inputs: Vec<serde_json::Value> = weights.iter().map(|w| file(w)).collect();
    for l in &def.layer {
        let source = l
            .data_param
            .as_ref()
            .and_then(|p| p.source.clone())
            .or_else(|| l.image_data_param.as_ref().and_then(|p| p.source.clone()));
        let mean = l.transform_param.as_ref().and_then(|t| t.mean_file.clone());
        for p in source.iter().chain(&mean) {
            inputs.push(file(&base.join(p)));
        }
    }
    serde_json::json!({
        "net": prototxt::to_string(def),
        "blob": blob,
        "shuffle": shuffle,
        "inputs": inputs,
    })
    .to_string()
}

/// The features saved in `dir` when its stamp equals `stamp` and every
/// file is there.
fn cached(dir: &Path, blob: &str, stamp: &str) -> Option<Features> {
    if std::fs::read_to_string(dir.join(STAMP)).ok()? != stamp {
        return None;
    }
    let index = dir.join("images.csv");
    let rows = std::fs::read_to_string(&index)
        .ok()?
        .lines()
        .count()
        .checked_sub(1)? as u64;
    let (npy, lmdb) = std::fs::read_dir(dir).ok()?.find_map(|e| {
        let p = e.ok()?.path();
        (p.extension()? == "npy").then(|| {
            let lmdb = p
                .with_extension("")
                .as_os_str()
                .to_string_lossy()
                .into_owned()
                + "_lmdb";
            (p, PathBuf::from(lmdb))
        })
    })?;
    let file = std::fs::File::open(&npy).ok()?;
    let shape = npyz::NpyFile::new(std::io::BufReader::new(file))
        .ok()?
        .shape()
        .to_vec();
    if shape.first() != Some(&rows) || !lmdb.join("data.mdb").exists() {
        return None;
    }
    Some(Features {
        rows,
        blobs: vec![SavedBlob {
            name: blob.to_string(),
            shape: shape[1..].iter().map(|&d| d as usize).collect(),
            npy,
            lmdb: Some(lmdb),
        }],
        index,
        failed: Vec::new(),
    })
}

/// Finds the classifier (the InnerProduct layer whose output the TRAIN
/// net's loss reads), the blob it reads, the labels and the data layers.
fn cut(def: &NetParameter, net: &Path) -> Result<Cut> {
    let ctx = net.display().to_string();
    let state = |phase: Phase| NetState {
        phase: Some(phase as i32),
        ..Default::default()
    };
    let in_phase = |l: &LayerParameter, p: Phase| included(l, &state(p));
    let data = |p: Phase| {
        let found: Vec<usize> = def
            .layer
            .iter()
            .enumerate()
            .filter(|(_, l)| matches!(l.r#type(), "Data" | "ImageData") && in_phase(l, p))
            .map(|(i, _)| i)
            .collect();
        match found[..] {
            [i] if def.layer[i].top.len() == 2 => Ok(i),
            _ => Err(Error::model(
                &ctx,
                format!(
                    "the probe needs one Data or ImageData layer with a label top in the {} phase (found {})",
                    if p == Phase::Train { "TRAIN" } else { "TEST" },
                    found.len()
                ),
            )),
        }
    };
    let (train_data, test_data) = (data(Phase::Train)?, data(Phase::Test)?);
    if train_data == test_data {
        return Err(Error::model(
            &ctx,
            "the probe needs separate TRAIN and TEST data layers (an `include { phase: … }` on each)",
        ));
    }
    let loss = def
        .layer
        .iter()
        .position(|l| {
            matches!(l.r#type(), "SoftmaxWithLoss" | "InfogainLoss")
                && in_phase(l, Phase::Train)
                && l.bottom.len() >= 2
        })
        .ok_or_else(|| {
            Error::model(
                &ctx,
                "has no SoftmaxWithLoss or InfogainLoss layer for the classifier to learn from",
            )
        })?;
    let scores = &def.layer[loss].bottom[0];
    let label = def.layer[loss].bottom[1].clone();
    let classifier = (0..loss)
        .rev()
        .find(|&i| def.layer[i].top.contains(scores) && in_phase(&def.layer[i], Phase::Train))
        .filter(|&i| def.layer[i].r#type() == "InnerProduct" && def.layer[i].bottom.len() == 1)
        .ok_or_else(|| {
            Error::model(
                &ctx,
                format!("the loss reads '{scores}', which no InnerProduct layer makes; the probe trains an InnerProduct classifier"),
            )
        })?;
    if def.layer[train_data].top[1] != label {
        return Err(Error::model(
            &ctx,
            format!(
                "the loss reads labels from '{label}', not from the data layer's '{}'",
                def.layer[train_data].top[1]
            ),
        ));
    }
    Ok(Cut {
        classifier,
        feature: def.layer[classifier].bottom[0].clone(),
        label,
        train_data,
        test_data,
    })
}

/// `def` with its TEST data layer reading the TRAIN layer's images (list or
/// LMDB, resize and batch size) but keeping its own transform, in order.
fn reading_training_data(def: &NetParameter, cut: &Cut) -> NetParameter {
    let mut def = def.clone();
    let train = def.layer[cut.train_data].clone();
    let test = &mut def.layer[cut.test_data];
    test.r#type = train.r#type.clone();
    test.data_param = train.data_param.map(|mut p| {
        p.rand_skip = None;
        p
    });
    test.image_data_param = train.image_data_param.map(|mut p| {
        p.shuffle = Some(false);
        p.rand_skip = None;
        p
    });
    def
}

/// A data layer's batch size.
fn batch_size(l: &LayerParameter) -> u32 {
    match l.r#type() {
        "Data" => l.data_param.as_ref().map_or(0, |p| p.batch_size()),
        _ => l.image_data_param.as_ref().map_or(0, |p| p.batch_size()),
    }
}

/// The probe's net: Data layers reading the feature LMDBs (tops: the
/// feature and label blobs, the recipe's batch sizes), then the classifier
/// and every later layer that reads only what the probe has.
fn probe_net_def(
    def: &NetParameter,
    cut: &Cut,
    train_db: &Path,
    test_db: &Path,
    net: &Path,
) -> Result<NetParameter> {
    let data_layer = |i: usize, db: &Path| {
        let orig = &def.layer[i];
        LayerParameter {
            name: orig.name.clone(),
            r#type: Some("Data".into()),
            top: vec![cut.feature.clone(), cut.label.clone()],
            include: orig.include.clone(),
            data_param: Some(DataParameter {
                source: Some(db.to_string_lossy().into_owned()),
                batch_size: Some(batch_size(orig)),
                backend: Some(Db::Lmdb as i32),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    let mut layers = vec![
        data_layer(cut.train_data, train_db),
        data_layer(cut.test_data, test_db),
    ];
    let mut have = vec![cut.feature.clone(), cut.label.clone()];
    for l in &def.layer[cut.classifier..] {
        if matches!(l.r#type(), "Data" | "ImageData") {
            continue;
        }
        if let Some(b) = l.bottom.iter().find(|b| !have.contains(b)) {
            // The scores' consumers are what the probe needs; a layer that
            // also reads earlier blobs cannot run on features alone.
            if l.bottom.iter().any(|b| have.contains(b) && *b != cut.label) {
                return Err(Error::model(
                    net.display(),
                    format!(
                        "layer '{}' after the classifier also reads '{b}', which the saved features do not hold",
                        l.name()
                    ),
                ));
            }
            continue;
        }
        have.extend(l.top.iter().cloned());
        layers.push(l.clone());
    }
    Ok(NetParameter {
        name: Some(format!("{}_probe", def.name())),
        layer: layers,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> NetParameter {
        prototxt::parse(text, Path::new("net.prototxt")).unwrap()
    }

    const NET: &str = r#"
name: "n"
layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TRAIN }
  image_data_param { source: "train.txt" batch_size: 5 shuffle: true new_height: 8 new_width: 8 }
  transform_param { mirror: true crop_size: 6 } }
layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TEST }
  image_data_param { source: "test.txt" batch_size: 3 new_height: 8 new_width: 8 }
  transform_param { crop_size: 6 } }
layer { name: "fc7" type: "InnerProduct" bottom: "data" top: "fc7" inner_product_param { num_output: 4 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
  param { lr_mult: 10 } inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc8" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc8" bottom: "label" top: "accuracy" include { phase: TEST } }
"#;

    #[test]
    fn the_cut_is_at_the_classifier_that_feeds_the_loss() {
        let def = parse(NET);
        let c = cut(&def, Path::new("n")).unwrap();
        assert_eq!(
            c,
            Cut {
                classifier: 4,
                feature: "fc7".into(),
                label: "label".into(),
                train_data: 0,
                test_data: 1
            }
        );
        let p = probe_net_def(&def, &c, Path::new("/t"), Path::new("/s"), Path::new("n")).unwrap();
        let names: Vec<&str> = p.layer.iter().map(|l| l.name()).collect();
        assert_eq!(names, ["data", "data", "fc8", "loss", "accuracy"]);
        assert_eq!(p.layer[0].top, ["fc7", "label"]);
        assert_eq!(p.layer[1].data_param.as_ref().unwrap().batch_size(), 3);
        assert_eq!(p.layer[1].data_param.as_ref().unwrap().source(), "/s");
        assert_eq!(p.layer[2].param[0].lr_mult(), 10.0);
        // Feature extraction of the training images: the TEST layer reads
        // the TRAIN list in order, with its own (centred) transform.
        let t = reading_training_data(&def, &c);
        let l = &t.layer[1];
        let ip = l.image_data_param.as_ref().unwrap();
        assert_eq!(
            (ip.source(), ip.shuffle(), ip.batch_size()),
            ("train.txt", false, 5)
        );
        assert!(!l.transform_param.as_ref().unwrap().mirror());
    }

    #[test]
    fn nets_the_probe_cannot_cut_are_named() {
        let no_ip = NET.replace(
            r#"layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8"
  param { lr_mult: 10 } inner_product_param { num_output: 2 } }"#,
            r#"layer { name: "fc8" type: "ReLU" bottom: "fc7" top: "fc8" }"#,
        );
        let e = cut(&parse(&no_ip), Path::new("n")).unwrap_err().to_string();
        assert!(e.contains("no InnerProduct layer makes"), "{e}");
        let shared = NET.replace("include { phase: TRAIN }", "").replace(
            r#"layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TEST }"#,
            r#"layer { name: "other" type: "ImageData" top: "x" top: "y" include { phase: TEST }"#,
        );
        let e = cut(&parse(&shared), Path::new("n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("TEST phase"), "{e}");
        let no_loss = NET.replace("SoftmaxWithLoss", "Softmax");
        let e = cut(&parse(&no_loss), Path::new("n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no SoftmaxWithLoss"), "{e}");
        // A layer after the classifier that reads an earlier blob.
        let side = NET.replace(
            r#"bottom: "fc8" bottom: "label" top: "accuracy""#,
            r#"bottom: "fc8" bottom: "data" top: "accuracy""#,
        );
        let def = parse(&side);
        let c = cut(&def, Path::new("n")).unwrap();
        let e = probe_net_def(&def, &c, Path::new("/t"), Path::new("/s"), Path::new("n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'accuracy'") && e.contains("'data'"), "{e}");
    }
}
