//! `features`: the values of chosen blobs (say fc7) for every image of a
//! net's TEST data, what Caffe's `extract_features` tool gives, for other
//! learners (a linear classifier, a random forest with hand-made features,
//! t-SNE maps, near-duplicate search).
//!
//! Each blob goes to `<blob>.npy` (float32, one row per image, the blob's
//! per-image shape after it) and, with `lmdb`, to `<blob>_lmdb` in
//! `extract_features`' layout: keys `%010d` from 0, one Datum per image with
//! the blob's legacy channels/height/width and its values as unpacked
//! `float_data`, plus (beyond Caffe, which leaves it unset) the image's
//! label, so a Data layer can train on the features straight away.
//! `images.csv` says which image each row is. Every file is written under a
//! temporary name and renamed only when the pass completes.
//!
//! Images come from the net's TEST data layer ([`extract`]), or from image
//! files prepared as `classify` prepares them ([`extract_images`]).
mod npy_rows;
mod saver;

use super::classify::{self, ClassifyOptions};
use super::evaluate::{images_per_pass, trained_nets, use_source};
use super::tta::View;
use crate::caffe::model::read_net_prototxt;
use crate::caffe::proto::{NetParameter, Phase};
use crate::error::{Error, Result};
use crate::train::compute::Compute;
use crate::train::layers::{to_vec, BuildContext};
use saver::Saver;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What to save and where.
#[derive(Clone, Copy)]
pub struct SaveOptions<'a> {
    /// The blobs to save (their values after the whole forward pass, so an
    /// in-place ReLU's output, as Caffe's tool reads them).
    pub blobs: &'a [String],
    /// The folder for the outputs.
    pub out: &'a Path,
    /// Also write each blob as a Caffe LMDB of float Datums.
    pub lmdb: bool,
    /// Replace existing LMDBs.
    pub force: bool,
}

/// A pass over a net's TEST data.
pub struct FeatureOptions<'a> {
    /// Net prototxt; its TEST phase runs.
    pub model: &'a Path,
    /// The `--level` and `--stage` the net is opened with (Caffe's tools'
    /// `-level`/`-stage`), which pick among a file's stage-ruled layers.
    pub state: &'a crate::caffe::net_state::StateFlags,
    /// Trained weights, loaded by layer name in turn.
    pub weights: &'a [&'a Path],
    /// Where the net's relative data paths resolve.
    pub base_dir: &'a Path,
    /// Device and arithmetic.
    pub compute: &'a Compute,
    /// Another list or LMDB than the TEST data layer's (see `evaluate`).
    pub source: Option<&'a Path>,
    /// Batches to run, every row of each kept (Caffe's `num_mini_batches`);
    /// `None`: each image of the data source once.
    pub iterations: Option<usize>,
    /// Key each LMDB record by its place in a permutation of the rows drawn
    /// from this seed instead of by its row, so a Data layer (which reads in
    /// key order) sees the images shuffled; `None`: Caffe's keys, the rows.
    pub shuffle_keys: Option<u64>,
    /// Stops the pass (writing nothing) when set, as Ctrl-C does.
    pub stop: Option<Arc<AtomicBool>>,
    /// What to save.
    pub save: SaveOptions<'a>,
    /// Views of each batch saved after it (mirror images, quarter turns,
    /// warps: `Tta::views` without its first, the unchanged image), each
    /// image's rows one per view; empty: the images as the net reads them.
    pub extra_views: &'a [View],
}

/// One saved blob.
#[derive(Clone, Debug, PartialEq)]
pub struct SavedBlob {
    /// The blob's name in the net.
    pub name: String,
    /// Its shape per image (e.g. `[4096]` for fc7, `[256, 6, 6]` for pool5).
    pub shape: Vec<usize>,
    /// The `.npy` file.
    pub npy: PathBuf,
    /// The LMDB, when asked for.
    pub lmdb: Option<PathBuf>,
}

/// What a pass wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    /// Rows (images) per blob.
    pub rows: u64,
    /// The blobs, in the order asked for.
    pub blobs: Vec<SavedBlob>,
    /// `images.csv`: row, image (list path, LMDB key or file) and label.
    pub index: PathBuf,
    /// Image files that could not be read (image mode), with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

impl Features {
    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let mut s = format!("{} images\n", self.rows);
        for b in &self.blobs {
            let shape: Vec<String> = b.shape.iter().map(|d| d.to_string()).collect();
            s += &format!(
                "{}: {} values per image ({}) -> {}",
                b.name,
                b.shape.iter().product::<usize>(),
                shape.join("x"),
                b.npy.display()
            );
            if let Some(l) = &b.lmdb {
                s += &format!(", {}", l.display());
            }
            s += "\n";
        }
        s += &format!("rows: {}\n", self.index.display());
        for (p, e) in &self.failed {
            s += &format!("skipped {}: {e}\n", p.display());
        }
        s
    }
}

/// Runs the TEST net of `o.model` over its data and saves `o.save.blobs`.
pub fn extract(o: &FeatureOptions) -> Result<Features> {
    let mut def = read_net_prototxt(o.model)?;
    o.state.apply(&mut def);
    if let Some(source) = o.source {
        use_source(&mut def, source, o.model)?;
    }
    extract_from(&def, o)
}

/// [`extract`] with the net's definition given (`o.model` and `o.source`
/// only name it in messages).
pub(crate) fn extract_from(def: &NetParameter, o: &FeatureOptions) -> Result<Features> {
    let ctx = BuildContext::new(o.base_dir, 0, Phase::Test, o.compute);
    let mut net = trained_nets(def, &ctx, o.weights, false)?
        .pop()
        .expect("trained_nets makes one net without an ensemble");
    let mut saver = Saver::new(&o.save, &net, o.model)?;
    let label_layer = net
        .layer_params()
        .find(|l| matches!(l.r#type(), "Data" | "ImageData") && l.top.len() > 1)
        .map(|l| l.name().to_string());
    let images = images_per_pass(&net, o.iterations, o.model)?;
    let max_batches = o.iterations.unwrap_or(usize::MAX).max(1);
    let bar = crate::progress::bar(images.unwrap_or(0), "features");
    let (mut seen, mut batches) = (0u64, 0usize);
    while batches < max_batches && images.is_none_or(|total| seen < total) {
        stop_requested(&o.stop)?;
        net.forward()?;
        batches += 1;
        let n = saver.batch_rows(&net)?;
        let per_image = 1 + o.extra_views.len() as u64;
        if batches == 1 {
            let total = images.unwrap_or_else(|| (max_batches as u64).saturating_mul(n as u64));
            bar.set_length(total);
            if let Some(seed) = o.shuffle_keys {
                saver.keys = shuffled(total.saturating_mul(per_image), seed)?;
            }
        }
        let take = images.map_or(n, |t| ((t - seen) as usize).min(n));
        let names = net.data_batch_sources().filter(|s| s.len() == n);
        let labels = match &label_layer {
            Some(l) => net.layer_top(l, 1).map(to_vec).transpose()?,
            None => None,
        };
        saver.add(&net, take, names.as_deref(), labels.as_deref())?;
        if !o.extra_views.is_empty() {
            let batch = net.batch().ok_or_else(|| {
                Error::model(
                    o.model.display(),
                    "views of the images need one data layer reading a list or an LMDB",
                )
            })?;
            for view in o.extra_views {
                let mut viewed = batch.clone();
                viewed[0] = view.apply(&batch[0])?;
                net.forward_batch(viewed)?;
                // The same images and labels, their names marked with the view.
                let marked: Option<Vec<String>> = names
                    .as_ref()
                    .map(|ns| ns.iter().map(|s| format!("{s}#{view}")).collect());
                saver.add(&net, take, marked.as_deref(), labels.as_deref())?;
            }
        }
        seen += take as u64;
        bar.inc(take as u64);
    }
    bar.finish_and_clear();
    saver.finish(Vec::new())
}

/// Saves `save.blobs` for image files, each prepared as `classify` prepares
/// it (the trained net's TEST transform, or a deploy net's input with its
/// mean): features of new, unlabelled images. Only the plain centre view of
/// one model counts (`input`'s views, crops and ensembles do not apply).
/// Unreadable images are skipped and listed in the result; with `strict`
/// one of them is an error and nothing is written.
pub fn extract_images(
    input: &ClassifyOptions,
    save: &SaveOptions,
    strict: bool,
    stop: Option<Arc<AtomicBool>>,
) -> Result<Features> {
    if input.oversample {
        return Err(Error::model(
            input.model.display(),
            "features are saved for the centre view of each image; ten crops do not apply",
        ));
    }
    let (def, spec) = classify::input_net(input)?;
    let ctx = BuildContext::new(input.base_dir, 0, Phase::Test, input.compute);
    let mut net = trained_nets(&def, &ctx, input.weights, false)?
        .pop()
        .expect("trained_nets makes one net without an ensemble");
    let mut saver = Saver::new(save, &net, input.model)?;
    let failed = classify::batches(input, &spec, "features", |batch, _| {
        stop_requested(&stop)?;
        classify::forward_view(&mut net, &spec, &batch, 0, input)?;
        let names: Vec<String> = batch.iter().map(|(p, _)| p.display().to_string()).collect();
        saver.add(&net, batch.len(), Some(&names), None)
    })?;
    classify::refuse_unreadable(strict, &failed, input.images.len())?;
    if saver.rows == 0 {
        return Err(Error::model(
            input.model.display(),
            format!("none of the {} images could be read", input.images.len()),
        ));
    }
    saver.finish(failed)
}

/// `Err(Interrupted)` once `stop` is set.
fn stop_requested(stop: &Option<Arc<AtomicBool>>) -> Result<()> {
    match stop {
        Some(s) if s.load(Ordering::Relaxed) => Err(Error::Interrupted),
        _ => Ok(()),
    }
}

/// Each row's place in a seeded shuffle of `rows` rows.
fn shuffled(rows: u64, seed: u64) -> Result<Vec<u64>> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let n = usize::try_from(rows)
        .map_err(|_| Error::model("features", format!("{rows} rows do not fit in memory")))?;
    let mut order: Vec<u64> = (0..rows).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let mut place = vec![0u64; n];
    for (at, &row) in order.iter().enumerate() {
        place[row as usize] = at as u64;
    }
    Ok(place)
}
