//! `evaluate`: one pass of a trained net over its TEST data, counted into a
//! confusion matrix, and the report files made from it. Caffe's `caffe test`
//! gives only the mean accuracy; with imbalanced classes (zooplankton, or
//! Flickr Style's 20 styles) the per-class figures are what tell a model's
//! quality.
use super::tta::Tta;
use crate::analysis::confusion::{class_name, Confusion, Summary};
use crate::caffe::model::{read_caffemodel, read_net_prototxt};
use crate::caffe::proto::Phase;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_atomic;
use crate::train::compute::Compute;
use crate::train::layers::{to_vec, BuildContext};
use crate::train::net::Net;
use candle_core::Tensor;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What to evaluate and how.
pub struct EvalOptions<'a> {
    /// Net prototxt; its TEST phase runs.
    pub model: &'a Path,
    /// The `--level` and `--stage` the net is opened with (Caffe's tools'
    /// `-level`/`-stage`), which pick among a file's stage-ruled layers.
    pub state: &'a crate::caffe::net_state::StateFlags,
    /// Trained weights, loaded by layer name in order.
    pub weights: &'a [&'a Path],
    /// Where the net's relative data paths resolve.
    pub base_dir: &'a Path,
    /// Device and arithmetic.
    pub compute: &'a Compute,
    /// Batches to run (every image of them counted); `None`: each image of
    /// the data source once.
    pub iterations: Option<usize>,
    /// Blobs holding the class scores and the labels; `None`: the bottoms of
    /// the main head's Accuracy layer, else its loss layer (see [`crate::train::heads`]).
    pub blobs: Option<(String, String)>,
    /// The k of the top-k accuracy.
    pub top_k: usize,
    /// Also count the images whose top probability reaches this (the rest
    /// would be left to a person); needs probabilities (see [`ScoreKind`]).
    pub threshold: Option<f64>,
    /// Views of each image to average the probabilities (or scores) over.
    pub tta: Tta,
    /// Evaluate on this data instead of the TEST data layer's source (say,
    /// another cruise's images): an image list for an ImageData layer (paths
    /// absolute or relative to the list's folder), an LMDB folder for a Data
    /// layer.
    pub source: Option<&'a Path>,
    /// Each weights file is its own model and their probabilities (or
    /// scores) are averaged; otherwise they are loaded into one net in turn,
    /// as Caffe's `--weights a,b` does.
    pub ensemble: bool,
}

/// What the scores blob holds, which decides what the report can say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreKind {
    /// Logits: the blob feeds a SoftmaxWithLoss or InfogainLoss layer (softmax
    /// gives probabilities).
    Logits,
    /// Probabilities: the blob is a Softmax layer's output.
    Probabilities,
    /// Anything else: only ranks mean something.
    Scores,
}

/// One image's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Where the image came from (its list path or LMDB key).
    pub image: String,
    /// True class.
    pub label: usize,
    /// Predicted class.
    pub predicted: usize,
    /// Every class's probability (softmax of logits, or the blob's own
    /// values when it holds probabilities); else raw scores.
    pub values: Vec<f32>,
}

impl Prediction {
    /// The true class's value.
    pub fn value_label(&self) -> f32 {
        self.values[self.label]
    }

    /// The predicted class's value.
    pub fn value_predicted(&self) -> f32 {
        self.values[self.predicted]
    }
}

/// The counts of one evaluation.
#[derive(Debug)]
pub struct Evaluation {
    /// (true, predicted) counts and top-k hits.
    pub confusion: Confusion,
    /// Per image, in pass order, when the data layer names its images.
    pub predictions: Option<Vec<Prediction>>,
    /// What the scores were, so whether `Prediction`'s values are probabilities.
    pub kind: ScoreKind,
    /// The blob read for class scores.
    pub scores_blob: String,
    /// The blob read for labels.
    pub label_blob: String,
    /// Images skipped because their label is the layer's `ignore_label`.
    pub ignored: u64,
    /// With several runs per image (views, an ensemble): how many images
    /// every run gave the same best class, and how many of those it was right.
    pub unanimous: Option<(u64, u64)>,
    /// Items counted per image: 1, or the positions of a per-position score
    /// map (a segmentation's pixels, a sequence's timesteps), each counted
    /// as an item with its own label.
    pub positions: usize,
}

/// Where the scores and labels come from.
pub(crate) struct Reader {
    /// `Some(layer)`: that layer's bottoms 0 and 1; `None`: blobs by name.
    layer: Option<String>,
    scores: String,
    label: String,
    ignore_label: Option<i32>,
    /// The scores' class axis (the scoring layer's `axis`): with axes after
    /// it, or more than one before it, each position is an item (a pixel
    /// of a segmentation, a timestep of a sequence). `None` for blobs named
    /// by the user: one score vector per image.
    axis: Option<i32>,
    pub(crate) kind: ScoreKind,
}

impl Reader {
    pub(crate) fn find(
        net: &Net,
        blobs: &Option<(String, String)>,
        model: &Path,
    ) -> Result<Reader> {
        let kind = |blob: &str| {
            let feeds = |ty: &str| {
                net.layer_params()
                    .any(|l| l.r#type() == ty && l.bottom.first().is_some_and(|b| b == blob))
            };
            let made_by = |ty: &str| {
                net.layer_params()
                    .any(|l| l.r#type() == ty && l.top.iter().any(|t| t == blob))
            };
            if feeds("SoftmaxWithLoss") || feeds("InfogainLoss") {
                ScoreKind::Logits
            } else if made_by("Softmax") {
                ScoreKind::Probabilities
            } else {
                ScoreKind::Scores
            }
        };
        if let Some((scores, label)) = blobs {
            net.check_per_item(
                scores,
                "scoring each image (`deploy` writes a net without Filters, for `classify --mean`)",
            )?;
            if !label.is_empty() {
                net.check_per_item(label, "scoring each image (`deploy` writes a net without Filters, for `classify --mean`)")?;
            }
            return Ok(Reader {
                layer: None,
                scores: scores.clone(),
                label: label.clone(),
                ignore_label: None,
                axis: None,
                kind: kind(scores),
            });
        }
        let layers: Vec<_> = net.layer_params().collect();
        let layer = crate::train::heads::scoring_layer(&layers).ok_or_else(|| {
                Error::model(
                    model.display(),
                    "the TEST net has no Accuracy, SoftmaxWithLoss or InfogainLoss layer to take scores and labels from; name the blobs with --scores and --label",
                )
            })?;
        let ignore_label = match layer.r#type() {
            "Accuracy" => layer.accuracy_param.as_ref().and_then(|p| p.ignore_label),
            _ => layer.loss_param.as_ref().and_then(|p| p.ignore_label),
        };
        let axis = match layer.r#type() {
            "Accuracy" => layer.accuracy_param.as_ref().map(|p| p.axis()),
            "InfogainLoss" => layer.infogain_loss_param.as_ref().map(|p| p.axis()),
            _ => layer.softmax_param.as_ref().map(|p| p.axis()),
        };
        for blob in &layer.bottom[..2] {
            net.check_per_item(
                blob,
                "scoring each image (`deploy` writes a net without Filters, for `classify --mean`)",
            )?;
        }
        Ok(Reader {
            layer: Some(layer.name().to_string()),
            scores: layer.bottom[0].clone(),
            label: layer.bottom[1].clone(),
            ignore_label,
            axis: Some(axis.unwrap_or(1)),
            kind: kind(&layer.bottom[0]),
        })
    }

    /// The reader taking one score vector per image, whatever the scoring
    /// layer's axis (a score map is then refused).
    pub(crate) fn per_image(mut self) -> Self {
        self.axis = None;
        self
    }

    /// The blob the scores are read from.
    pub(crate) fn scores_blob(&self) -> &str {
        &self.scores
    }

    /// The scores as (images, classes) and the labels of the last forward pass.
    fn read(&self, net: &Net) -> Result<(usize, usize, Vec<f32>, Vec<f32>)> {
        let (n, classes, scores) = self.read_scores(net)?;
        let labels = self.blob(net, 1, &self.label)?;
        if labels.elem_count() != n {
            let dims = self.blob(net, 0, &self.scores)?.dims().to_vec();
            return Err(Error::model(
                format!("blob '{}'", self.label),
                format!(
                    "holds {} labels, but '{}' (shape {dims:?}) holds {n} score vectors along axis {}; \
                     name a blob with one score vector per image (images x classes), or labels per position",
                    labels.elem_count(),
                    self.scores,
                    self.axis.unwrap_or(1)
                ),
            ));
        }
        Ok((n, classes, scores, to_vec(labels)?))
    }

    /// Bottom `i` of the reader's layer, or the blob `name`.
    fn blob<'n>(&self, net: &'n Net, i: usize, name: &str) -> Result<&'n Tensor> {
        match &self.layer {
            Some(l) => net.layer_bottom(l, i),
            None => net.blob(name),
        }
        .ok_or_else(|| Error::model(format!("blob '{name}'"), "the TEST net has no such blob"))
    }

    /// The scores of the last forward pass as (items, classes, values), an
    /// item an image, or with the class axis elsewhere than 1 or axes after
    /// it, a position (in Caffe's label order: the axes before the class
    /// axis, then those after it).
    pub(crate) fn read_scores(&self, net: &Net) -> Result<(usize, usize, Vec<f32>)> {
        let scores = self.blob(net, 0, &self.scores)?;
        let dims = scores.dims();
        let axis = match self.axis {
            Some(a) if a < 0 => a + dims.len() as i32,
            Some(a) => a,
            None => 0,
        };
        let positions = axis >= 1
            && (axis as usize) < dims.len()
            && (axis != 1 || dims[2..].iter().any(|&d| d != 1));
        if positions {
            let axis = axis as usize;
            let (outer, classes) = (dims[..axis].iter().product::<usize>(), dims[axis]);
            let inner: usize = dims[axis + 1..].iter().product();
            if outer * inner == 0 || classes == 0 {
                return Err(Error::model(
                    format!("blob '{}'", self.scores),
                    format!("has shape {dims:?}: no scores to evaluate"),
                ));
            }
            let v = to_vec(scores)?;
            let mut items = Vec::with_capacity(v.len());
            for o in 0..outer {
                for i in 0..inner {
                    items.extend((0..classes).map(|c| v[(o * classes + c) * inner + i]));
                }
            }
            return Ok((outer * inner, classes, items));
        }
        let n = dims.first().copied().unwrap_or(0);
        if dims.len() < 2 || dims[2..].iter().any(|&d| d != 1) || n == 0 || dims[1] == 0 {
            return Err(Error::model(
                format!("blob '{}'", self.scores),
                format!(
                    "has shape {dims:?}; evaluate needs one score vector per image (images x classes)"
                ),
            ));
        }
        Ok((n, dims[1], to_vec(scores)?))
    }
}

/// Runs the TEST net of `o.model` over its data and counts every prediction.
pub fn evaluate(o: &EvalOptions) -> Result<Evaluation> {
    let mut def = read_net_prototxt(o.model)?;
    o.state.apply(&mut def);
    if let Some(source) = o.source {
        use_source(&mut def, source, o.model)?;
    }
    let ctx = BuildContext::new(o.base_dir, 0, Phase::Test, o.compute);
    let mut nets = trained_nets(&def, &ctx, o.weights, o.ensemble)?;
    // The first net reads the data.
    let (net, others) = nets
        .split_first_mut()
        .expect("trained_nets makes one at least");
    let reader = Reader::find(net, &o.blobs, o.model)?;
    if o.threshold.is_some() && reader.kind == ScoreKind::Scores {
        return Err(Error::model(
            format!("blob '{}'", reader.scores),
            "a confidence threshold needs probabilities: name a blob that feeds SoftmaxWithLoss or comes out of Softmax",
        ));
    }
    let images = images_per_pass(net, o.iterations, o.model)?;
    let views = o.tta.views();
    let max_batches = o.iterations.unwrap_or(usize::MAX).max(1);
    let bar = crate::progress::bar(images.unwrap_or(0), "evaluate");
    let mut confusion: Option<Confusion> = None;
    let mut predictions = Some(Vec::new());
    let (mut seen, mut ignored, mut batches) = (0u64, 0u64, 0usize);
    let mut unanimous: Option<(u64, u64)> = None;
    let mut positions = 1;
    while batches < max_batches && images.is_none_or(|total| seen < total) {
        net.forward()?;
        batches += 1;
        let (n, classes, scores, labels) = reader.read(net)?;
        // Items per image: one score vector for a classifier, else each
        // position of the image's score map (pixels, timesteps).
        let records = match net.data_batch_sources() {
            Some(s) => s.len(),
            // No named images: the scores' first axis, Caffe's batch axis.
            None => reader.blob(net, 0, &reader.scores)?.dims()[0],
        };
        if records == 0 || n % records != 0 {
            return Err(Error::model(
                format!("blob '{}'", reader.scores),
                format!("holds {n} score vectors for a batch of {records} images"),
            ));
        }
        positions = n / records;
        if positions > 1 && views.len() > 1 {
            return Err(Error::model(
                format!("blob '{}'", reader.scores),
                format!(
                    "scores {positions} positions of each image; test-time views need one score vector per image"
                ),
            ));
        }
        let averaged = match (views.len(), others.len()) {
            (1, 0) => None,
            _ => Some(average_views(
                net,
                others,
                &reader,
                &views,
                scores.clone(),
                classes,
            )?),
        };
        if averaged.is_some() && unanimous.is_none() {
            unanimous = Some((0, 0));
        }
        if images.is_none() && batches == 1 {
            bar.set_length(max_batches.saturating_mul(records) as u64);
        }
        let m = confusion.get_or_insert_with(|| {
            let m = Confusion::new(classes, o.top_k);
            match o.threshold {
                Some(t) => m.with_threshold(t),
                None => m,
            }
        });
        if m.classes() != classes {
            return Err(Error::model(
                format!("blob '{}'", reader.scores),
                "the number of classes changed between batches",
            ));
        }
        let take_images = images.map_or(records, |t| ((t - seen) as usize).min(records));
        let take = take_images * positions;
        let sources = net.data_batch_sources().filter(|s| s.len() == n);
        if sources.is_none() {
            predictions = None;
        }
        for i in 0..take {
            // Caffe reads labels as floats cast to int.
            let label = labels[i] as i32;
            if Some(label) == reader.ignore_label {
                ignored += 1;
                continue;
            }
            if label < 0 || label as usize >= classes {
                return Err(Error::model(
                    format!("blob '{}'", reader.label),
                    format!(
                        "{} {} of the pass has label {label}, outside the net's {classes} classes (0..{})",
                        if positions > 1 { "position" } else { "image" },
                        seen * positions as u64 + i as u64,
                        classes - 1
                    ),
                ));
            }
            let row = &scores[i * classes..(i + 1) * classes];
            // Ranks from the net's own scores; with views, from their
            // average probabilities (or scores).
            let (predicted, probs) = match &averaged {
                Some((a, agreement)) => {
                    if let (Some(c), Some((all, right))) = (agreement.0[i], &mut unanimous) {
                        *all += 1;
                        *right += u64::from(c == label as usize);
                    }
                    let avg = &a[i * classes..(i + 1) * classes];
                    (m.add(avg, label as usize), avg.to_vec())
                }
                None => (
                    m.add(row, label as usize),
                    match reader.kind {
                        ScoreKind::Logits => softmax(row),
                        _ => row.to_vec(),
                    },
                ),
            };
            if reader.kind != ScoreKind::Scores {
                m.add_probabilities(&probs, label as usize, predicted);
            }
            if let (Some(p), Some(names)) = (&mut predictions, &sources) {
                p.push(Prediction {
                    image: names[i].clone(),
                    label: label as usize,
                    predicted,
                    values: probs,
                });
            }
        }
        seen += take_images as u64;
        bar.inc(take_images as u64);
    }
    bar.finish_and_clear();
    Ok(Evaluation {
        confusion: confusion
            .ok_or_else(|| Error::model(o.model.display(), "no batch was evaluated"))?,
        predictions,
        kind: reader.kind,
        scores_blob: reader.scores,
        label_blob: reader.label,
        ignored,
        unanimous,
        positions,
    })
}

/// The images one pass covers: the whole source of the net's data layer
/// once (its last batch wraps round to the first images, which are then not
/// counted twice), or `None` when `iterations` whole batches are asked for.
pub(crate) fn images_per_pass(
    net: &Net,
    iterations: Option<usize>,
    model: &Path,
) -> Result<Option<u64>> {
    match (iterations, net.data_source_lens().as_slice()) {
        (Some(_), _) => Ok(None),
        (None, [(_, len)]) => Ok(Some(*len as u64)),
        (None, []) => Err(Error::model(
            model.display(),
            "the TEST net reads no list or LMDB, so its size is unknown; give --iterations",
        )),
        (None, many) => Err(Error::model(
            model.display(),
            format!(
                "the TEST net has {} data layers; give --iterations",
                many.len()
            ),
        )),
    }
}

/// Points the TEST data layer of `def` at `source`: a list for ImageData
/// (its paths resolved from the list's folder), an LMDB for Data.
pub(crate) fn use_source(
    def: &mut crate::caffe::proto::NetParameter,
    source: &Path,
    model: &Path,
) -> Result<()> {
    let state = crate::caffe::net_state::state_of(def, Phase::Test, None);
    let mut data: Vec<&mut crate::caffe::proto::LayerParameter> = def
        .layer
        .iter_mut()
        .filter(|l| {
            crate::train::net::included(l, &state) && matches!(l.r#type(), "Data" | "ImageData")
        })
        .collect();
    let [layer] = &mut data[..] else {
        return Err(Error::model(
            model.display(),
            format!(
                "a new source replaces the TEST phase's one Data or ImageData layer (found {})",
                data.len()
            ),
        ));
    };
    let absolute = std::path::absolute(source).map_err(|e| Error::io(source, e))?;
    let text = absolute.to_string_lossy().into_owned();
    match (layer.r#type(), source.is_dir()) {
        ("ImageData", false) => {
            let p = layer.image_data_param.get_or_insert_with(Default::default);
            p.source = Some(text);
            let folder = crate::fsutil::parent_dir(&absolute);
            p.root_folder = Some(format!("{}/", folder.display()));
        }
        ("Data", true) => {
            layer.data_param.get_or_insert_with(Default::default).source = Some(text);
        }
        ("ImageData", true) => {
            return Err(Error::model(
                source.display(),
                "is a folder, but the net's TEST layer reads an image list (give a list file)",
            ))
        }
        _ => {
            return Err(Error::model(
                source.display(),
                "is a file, but the net's TEST layer reads an LMDB (make one with to-lmdb, as for training)",
            ))
        }
    }
    Ok(())
}

/// The nets of `def` with trained weights: one with every file loaded in
/// turn (Caffe's `--weights a,b`), or with `ensemble` one net per file;
/// always one at least.
pub(crate) fn trained_nets(
    def: &crate::caffe::proto::NetParameter,
    ctx: &BuildContext,
    weights: &[&Path],
    ensemble: bool,
) -> Result<Vec<Net>> {
    // No weights at all: one net as its fillers make it.
    let groups: Vec<&[&Path]> = if ensemble && !weights.is_empty() {
        weights.chunks(1).collect()
    } else {
        vec![weights]
    };
    groups
        .into_iter()
        .map(|group| {
            let mut net = Net::new(def, ctx, None)?;
            for w in group {
                net.copy_trained_from(&read_caffemodel(w)?, &w.display().to_string())?;
            }
            Ok(net)
        })
        .collect()
}

/// The mean over the nets (`net`, then `others`) and `views` of each image's
/// probabilities (softmax of logits), or of its raw values when they are
/// neither; `first` holds `net`'s scores of the unchanged batch, just
/// computed. The other nets score the very tensors `net`'s data layer made.
pub(crate) fn average_views(
    net: &mut Net,
    others: &mut [Net],
    reader: &Reader,
    views: &[super::tta::View],
    first: Vec<f32>,
    classes: usize,
) -> Result<(Vec<f32>, Agreement)> {
    let batch = net.batch().ok_or_else(|| {
        Error::model(
            format!("net '{}'", net.name),
            "test-time views and ensembles need one data layer reading a list or an LMDB",
        )
    })?;
    let probabilities = |scores: Vec<f32>| -> Vec<f32> {
        match reader.kind {
            ScoreKind::Logits => scores.chunks(classes).flat_map(softmax).collect(),
            _ => scores,
        }
    };
    let mut sum = probabilities(first);
    let mut agreement = Agreement::new(&sum, classes);
    let mut runs = 1usize;
    for (k, view) in views.iter().enumerate() {
        let mut viewed = batch.clone();
        viewed[0] = view.apply(&batch[0])?;
        // The first net's unchanged batch is `first`.
        let skip = usize::from(k == 0);
        for m in std::iter::once(&mut *net)
            .chain(others.iter_mut())
            .skip(skip)
        {
            m.forward_batch(viewed.clone())?;
            let (_, _, scores) = reader.read_scores(m)?;
            let p = probabilities(scores);
            agreement.add(&p, classes);
            for (s, p) in sum.iter_mut().zip(p) {
                *s += p;
            }
            runs += 1;
        }
    }
    let n = runs as f32;
    Ok((sum.into_iter().map(|s| s / n).collect(), agreement))
}

/// Per image, the class every run (view, model or crop) ranked first, or
/// `None` once two runs disagree: the unanimity an ensemble can abstain on.
#[derive(Clone, Debug, PartialEq)]
pub struct Agreement(pub Vec<Option<usize>>);

impl Agreement {
    /// The best class of each `classes`-long row of `values` (the first of
    /// equal ones).
    pub fn new(values: &[f32], classes: usize) -> Self {
        Agreement(values.chunks(classes).map(|r| Some(best(r))).collect())
    }

    /// Adds a run: images whose best class differs lose their agreement.
    pub fn add(&mut self, values: &[f32], classes: usize) {
        self.merge(&Agreement::new(values, classes));
    }

    /// Combines with the agreement of other runs over the same images.
    pub fn merge(&mut self, other: &Agreement) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            if *a != *b {
                *a = None;
            }
        }
    }
}

/// The index of the largest value (the first of equal ones).
fn best(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

/// Softmax of these logits (shifted by the maximum, as Caffe's Softmax layer
/// does, so large logits do not overflow).
pub(crate) fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}

/// Class names, one per line (blank lines at the end ignored); there must be
/// one per class.
pub fn read_class_names(path: &Path, classes: usize) -> Result<Vec<String>> {
    let names = read_names(path)?;
    check_class_names(&names, classes, path.display())?;
    Ok(names)
}

/// Class names, one per line, in label order (blank lines at the end
/// ignored), before the net says how many it scores.
pub fn read_names(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).at(path)?;
    Ok(text
        .trim_end()
        .lines()
        .map(|l| l.trim().to_string())
        .collect())
}

/// Refuses class names that are not one per class of the net (`context`:
/// where they came from).
pub fn check_class_names(
    names: &[String],
    classes: usize,
    context: impl std::fmt::Display,
) -> Result<()> {
    if names.len() != classes {
        return Err(Error::invalid(
            context,
            format!(
                "has {} class names, but the net scores {classes} classes (one name per line, in label order)",
                names.len()
            ),
        ));
    }
    Ok(())
}

/// Everything `metrics.json` holds.
#[derive(Serialize)]
struct JsonReport<'a> {
    model: &'a Path,
    weights: &'a [&'a Path],
    scores_blob: &'a str,
    label_blob: &'a str,
    ignored: u64,
    /// The views averaged over (`identity` alone without augmentation).
    views: Vec<String>,
    /// Whether each weights file was its own model, averaged.
    ensemble: bool,
    /// With several runs per image: images they all agreed on, and the
    /// right ones among those.
    #[serde(skip_serializing_if = "Option::is_none")]
    unanimous: Option<Unanimous>,
    #[serde(flatten)]
    summary: &'a Summary,
}

/// Unanimity counts in `metrics.json`.
#[derive(Serialize)]
struct Unanimous {
    images: u64,
    correct: u64,
}

/// The report of one evaluation: Markdown, the summary, and the files
/// written by [`Report::write`].
pub struct Report<'a> {
    /// What was evaluated.
    pub options: &'a EvalOptions<'a>,
    /// Its counts.
    pub evaluation: &'a Evaluation,
    /// One name per class (or empty: indices).
    pub names: &'a [String],
}

impl Report<'_> {
    /// The figures.
    pub fn summary(&self) -> Summary {
        self.evaluation.confusion.summary(self.names)
    }

    /// The Markdown report.
    pub fn markdown(&self) -> String {
        let weights: Vec<String> = self
            .options
            .weights
            .iter()
            .map(|w| w.display().to_string())
            .collect();
        let mut s = self
            .summary()
            .to_markdown(&format!("Evaluation of {}", weights.join(", ")));
        s += &format!(
            "\nNet: {} (TEST phase); scores from blob '{}', labels from blob '{}'",
            self.options.model.display(),
            self.evaluation.scores_blob,
            self.evaluation.label_blob
        );
        if self.options.ensemble && self.options.weights.len() > 1 {
            s += &format!(
                "; an ensemble: the {} weights files each score every image and their {} are averaged",
                self.options.weights.len(),
                match self.evaluation.kind {
                    ScoreKind::Scores => "scores",
                    _ => "probabilities",
                }
            );
        }
        let views = self.options.tta.views();
        if views.len() > 1 {
            let what = match self.evaluation.kind {
                ScoreKind::Scores => "scores",
                _ => "probabilities",
            };
            s += &format!(
                "; {what} averaged over {} views of each image ({})",
                views.len(),
                self.options.tta.describe()
            );
        }
        let item = if self.evaluation.positions > 1 {
            s += &format!(
                "; every position of the scores counted as an item, {} per image",
                self.evaluation.positions
            );
            "positions"
        } else {
            "images"
        };
        if self.evaluation.ignored > 0 {
            s += &format!(
                "; {} {item} with the ignore_label left out",
                self.evaluation.ignored
            );
        }
        s += ".\n";
        if self.evaluation.positions > 1 {
            let summary = self.summary();
            s += &format!(
                "\nMean IoU {:.4}, frequency-weighted IoU {:.4} (per class, the positions both true and predicted over those either; FCN's mean IU and fwIU).\n",
                summary.mean_iou, summary.frequency_weighted_iou
            );
        }
        if let Some((agreed, right)) = self.evaluation.unanimous {
            let images = self.evaluation.confusion.total();
            let pct = |a: u64, b: u64| {
                if b == 0 {
                    0.0
                } else {
                    100.0 * a as f64 / b as f64
                }
            };
            s += &format!(
                "\nAll runs (views x models) agreed on the best class for {agreed} of {images} images ({:.2}%), with accuracy {:.2}% on those; abstaining when they disagree would leave the other {} to a person.\n",
                pct(agreed, images),
                pct(right, agreed),
                images - agreed
            );
        }
        s
    }

    /// One row per image: its source, true and predicted class (names when
    /// given), whether it was right, and the two probabilities (or scores).
    fn predictions_csv(&self, predictions: &[Prediction]) -> String {
        let name = |k: usize| class_name(self.names, k);
        let what = if self.evaluation.kind == ScoreKind::Scores {
            "score"
        } else {
            "probability"
        };
        let mut w = csv::Writer::from_writer(Vec::new());
        // Writing to a Vec cannot fail.
        w.write_record([
            "image".to_string(),
            "label".into(),
            "predicted".into(),
            "correct".into(),
            format!("{what}_label"),
            format!("{what}_predicted"),
        ])
        .expect("in memory");
        for p in predictions {
            w.write_record([
                p.image.clone(),
                name(p.label),
                name(p.predicted),
                (p.label == p.predicted).to_string(),
                p.value_label().to_string(),
                p.value_predicted().to_string(),
            ])
            .expect("in memory");
        }
        String::from_utf8(w.into_inner().expect("in memory")).expect("UTF-8 names")
    }

    /// One row per image: its source, its label (the class index) and every
    /// class's probability, headed by the class names (or indices), for
    /// `fuse` and other tools that need the whole distribution.
    fn probabilities_csv(&self, predictions: &[Prediction]) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let classes = self.evaluation.confusion.classes();
        let header = ["image".to_string(), "label".into()]
            .into_iter()
            .chain((0..classes).map(|k| class_name(self.names, k)));
        // Writing to a Vec cannot fail.
        w.write_record(header).expect("in memory");
        for p in predictions {
            let row = [p.image.clone(), p.label.to_string()]
                .into_iter()
                .chain(p.values.iter().map(|v| v.to_string()));
            w.write_record(row).expect("in memory");
        }
        String::from_utf8(w.into_inner().expect("in memory")).expect("UTF-8 names")
    }

    /// Writes `report.md`, `confusion.csv` (rows: true class, columns:
    /// predicted) and its heat map `confusion.svg`, with probabilities the
    /// abstention curve `abstention.svg`, `metrics.json` and, when
    /// the data layer names its images, `predictions.csv` and (when the
    /// values are probabilities) `probabilities.csv` into `dir`, each complete
    /// or not at all.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let summary = self.summary();
        let json = JsonReport {
            model: self.options.model,
            weights: self.options.weights,
            scores_blob: &self.evaluation.scores_blob,
            label_blob: &self.evaluation.label_blob,
            ignored: self.evaluation.ignored,
            views: self
                .options
                .tta
                .views()
                .iter()
                .map(|v| v.to_string())
                .collect(),
            ensemble: self.options.ensemble,
            unanimous: self
                .evaluation
                .unanimous
                .map(|(images, correct)| Unanimous { images, correct }),
            summary: &summary,
        };
        let json = serde_json::to_string_pretty(&json)
            .map_err(|e| Error::invalid("metrics.json", e.to_string()))?;
        let mut files = vec![
            ("report.md", self.markdown()),
            (
                "confusion.csv",
                self.evaluation.confusion.to_csv(self.names),
            ),
            ("metrics.json", json + "\n"),
        ];
        let title = format!(
            "Confusion matrix: {} images, accuracy {:.2}%",
            summary.images,
            100.0 * summary.accuracy
        );
        let heat_map =
            crate::analysis::plot::confusion_svg(&self.evaluation.confusion, self.names, &title)
                .map_err(|e| Error::invalid("confusion.svg", e))?;
        files.push(("confusion.svg", heat_map));
        let confidence = self.evaluation.confusion.confidence();
        if !confidence.is_empty() {
            let title = format!(
                "Abstaining: {} images, accuracy {:.2}% when all are predicted",
                summary.images,
                100.0 * summary.accuracy
            );
            let curve = crate::analysis::plot::abstention_svg(&confidence, &title)
                .map_err(|e| Error::invalid("abstention.svg", e))?;
            files.push(("abstention.svg", curve));
        }
        if let Some(p) = &self.evaluation.predictions {
            files.push(("predictions.csv", self.predictions_csv(p)));
            if self.evaluation.kind != ScoreKind::Scores {
                files.push(("probabilities.csv", self.probabilities_csv(p)));
            }
        }
        let mut written = Vec::new();
        for (name, text) in files {
            let path = dir.join(name);
            write_atomic(&path, text.as_bytes())?;
            written.push(path);
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agreement_keeps_the_images_every_run_ranks_alike() {
        // Three images, two classes; ties go to the first class.
        let mut a = Agreement::new(&[0.9, 0.1, 0.4, 0.6, 0.5, 0.5], 2);
        assert_eq!(a.0, vec![Some(0), Some(1), Some(0)]);
        a.add(&[0.7, 0.3, 0.6, 0.4, 0.2, 0.8], 2);
        assert_eq!(a.0, vec![Some(0), None, None]);
        // Once lost, agreement does not come back.
        a.merge(&Agreement::new(&[0.9, 0.1, 0.4, 0.6, 0.5, 0.5], 2));
        assert_eq!(a.0, vec![Some(0), None, None]);
    }
}
