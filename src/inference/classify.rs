//! `classify`: a trained net's predictions for new, unlabelled images (what
//! Caffe's `classify.py` did for a deploy net). The net is the one that was
//! trained: its TEST data layer says how an image becomes the net's input
//! (resize, crop, mean, scale), and is replaced by an Input layer that this
//! module fills, so no list or LMDB is needed. Test-time views and ensembles
//! work as in [`crate::inference::evaluate`].
use super::evaluate::{trained_nets, Agreement, Reader, ScoreKind};
use super::tta::Tta;
use crate::analysis::fusion::{FromImage, Fuser};
use crate::caffe::mean_file::MeanImage;
use crate::caffe::model::read_net_prototxt;
use crate::caffe::proto::{NetParameter, Phase, TransformationParameter};
use crate::error::{Error, Result};
use crate::pipeline::decode::{read_image, ColorMode};
use crate::pipeline::mat::Mat8;
use crate::pipeline::measure::{measure, measure_file};
use crate::pipeline::pad::{fit, Pad};
use crate::train::compute::Compute;
use crate::train::layers::BuildContext;
use crate::train::net::{included, Net};
use crate::train::transform::Transformer;
use candle_core::Tensor;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// What to classify and how.
pub struct ClassifyOptions<'a> {
    /// The net as trained (e.g. the pipeline's train_val.prototxt): its TEST
    /// data layer describes the input.
    pub model: &'a Path,
    /// The `--level` and `--stage` the net is opened with (Caffe's tools'
    /// `-level`/`-stage`), which pick among a file's stage-ruled layers.
    pub state: &'a crate::caffe::net_state::StateFlags,
    /// Trained weights (see `ensemble`).
    pub weights: &'a [&'a Path],
    /// One model per weights file, probabilities averaged; else all loaded
    /// into one net in turn.
    pub ensemble: bool,
    /// Where the net's relative paths (mean file) resolve.
    pub base_dir: &'a Path,
    /// Device and arithmetic.
    pub compute: &'a Compute,
    /// The image files.
    pub images: &'a [PathBuf],
    /// (height, width) to resize to before the crop; `None`: the ImageData
    /// layer's new_height/new_width, or for a Data layer its mean image's
    /// size (else 256x256, what `to-lmdb` and the pipeline store).
    pub size: Option<(usize, usize)>,
    /// Fit and pad to that size as the training images were (`--pad-square`).
    pub pad: Option<Pad>,
    /// Read the images as gray (one channel).
    pub gray: bool,
    /// For a deploy net (an Input layer, no transform_param): the mean image
    /// to subtract (`.binaryproto` or `.npy`, of the pre-crop size).
    pub mean: Option<&'a Path>,
    /// For a deploy net: per-channel means to subtract instead.
    pub mean_values: &'a [f32],
    /// Blob of class scores; `None`: the first bottom of the net's Accuracy
    /// or loss layer.
    pub scores: Option<String>,
    /// Classes to report per image.
    pub top_k: usize,
    /// Views to average over.
    pub tta: Tta,
    /// Average over classify.py's ten crops (corners and centre, and their
    /// mirror images) instead of the centre crop; needs a crop.
    pub oversample: bool,
    /// Images per forward pass; `None`: the data layer's batch size.
    pub batch_size: Option<usize>,
    /// Late fusion of each image's probabilities with its original size
    /// (and measurements), as `fuse` fitted it.
    pub fusion: Option<&'a Fuser>,
}

impl<'a> ClassifyOptions<'a> {
    /// Options classifying `images` with `model` and `weights` and every
    /// other choice at its default: one net, the data layer's size, batch
    /// size and scores, no padding or mean override, the top 3 classes, no
    /// test-time views.
    pub fn new(
        model: &'a Path,
        weights: &'a [&'a Path],
        base_dir: &'a Path,
        compute: &'a Compute,
        images: &'a [PathBuf],
    ) -> Self {
        ClassifyOptions {
            model,
            state: &crate::caffe::net_state::DEFAULT_STATE,
            weights,
            ensemble: false,
            base_dir,
            compute,
            images,
            size: None,
            pad: None,
            gray: false,
            mean: None,
            mean_values: &[],
            scores: None,
            top_k: 3,
            tta: Tta::None,
            oversample: false,
            batch_size: None,
            fusion: None,
        }
    }
}

/// One image's best classes, most probable first.
#[derive(Clone, Debug, PartialEq)]
pub struct Classified {
    /// The file.
    pub image: PathBuf,
    /// (class, probability, or score when the blob holds neither).
    pub top: Vec<(usize, f32)>,
    /// With several runs per image (views, models, crops): whether they all
    /// ranked the same class first.
    pub unanimous: Option<bool>,
}

/// The outcome of [`classify`].
#[derive(Debug)]
pub struct Classification {
    /// Classes the net scores.
    pub classes: usize,
    /// The readable images, in the order given.
    pub rows: Vec<Classified>,
    /// Images that could not be read, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Whether the values are probabilities.
    pub kind: ScoreKind,
}

/// How the TEST data layer turns a file into the net's input.
pub(crate) struct InputSpec {
    layer: usize,
    channels: usize,
    /// Resize (height, width); `None` keeps the image's size.
    size: Option<(usize, usize)>,
    /// The input blob's (height, width).
    out: (usize, usize),
    /// Images per forward pass.
    pub(crate) batch: usize,
    transformer: Transformer,
    /// The layer also has a labels top (fed zeros).
    label_top: bool,
}

impl InputSpec {
    /// The net input's (height, width).
    pub(crate) fn input_size(&self) -> (usize, usize) {
        self.out
    }

    /// Where the net's (centre) crop of the prepared image `m` starts, as
    /// (row, column): what of `m` the input shows.
    pub(crate) fn crop_origin(&self, m: &Mat8) -> (usize, usize) {
        let (h, w) = self.out;
        (
            m.height.saturating_sub(h) / 2,
            m.width.saturating_sub(w) / 2,
        )
    }
}

fn input_spec(def: &NetParameter, o: &ClassifyOptions) -> Result<InputSpec> {
    let state = crate::caffe::net_state::state_of(def, Phase::Test, None);
    let data: Vec<usize> = (0..def.layer.len())
        .filter(|&i| {
            included(&def.layer[i], &state) && matches!(def.layer[i].r#type(), "Data" | "ImageData")
        })
        .collect();
    let inputs: Vec<usize> = (0..def.layer.len())
        .filter(|&i| included(&def.layer[i], &state) && def.layer[i].r#type() == "Input")
        .collect();
    match (&data[..], &inputs[..]) {
        (&[layer], _) => {
            if o.mean.is_some() || !o.mean_values.is_empty() {
                return Err(Error::model(
                    o.model.display(),
                    "the net's data layer names its own mean; --mean and --mean-value are for deploy nets",
                ));
            }
            trained_input_spec(def, layer, o)
        }
        (&[], &[layer]) => deploy_input_spec(def, layer, o),
        _ => Err(Error::model(
            o.model.display(),
            format!(
                "classify needs the net as trained (one Data or ImageData layer in its TEST phase, found {}) or a deploy net (one Input layer, found {})",
                data.len(),
                inputs.len()
            ),
        )),
    }
}

/// A deploy net's input: its Input layer's shape, images resized to the
/// mean's size (else 256x256, Caffe's convention) and centre-cropped to it.
fn deploy_input_spec(def: &NetParameter, layer: usize, o: &ClassifyOptions) -> Result<InputSpec> {
    let l = &def.layer[layer];
    let ctx = format!("layer '{}'", l.name());
    let shape: Vec<usize> = l
        .input_param
        .as_ref()
        .and_then(|p| p.shape.first())
        .map(|s| s.dim.iter().map(|&d| d.max(0) as usize).collect())
        .unwrap_or_default();
    let [batch, channels, h, w] = shape[..] else {
        return Err(Error::model(
            &ctx,
            format!(
                "its first shape is {shape:?}; classify needs images x channels x height x width"
            ),
        ));
    };
    let mean = match o.mean {
        Some(p) if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy")) => {
            Some(MeanImage::read_npy(p)?)
        }
        Some(p) => Some(MeanImage::read_binaryproto(p)?),
        None if o.mean_values.is_empty() => {
            return Err(Error::model(
                o.model.display(),
                "a deploy net does not say what mean its images had subtracted: give --mean FILE (.binaryproto or .npy) or --mean-value B,G,R",
            ))
        }
        None => None,
    };
    if let Some(m) = &mean {
        if m.channels != channels {
            return Err(Error::model(
                &ctx,
                format!("takes {channels} channels but the mean has {}", m.channels),
            ));
        }
    }
    let size = o
        .size
        .or(mean.as_ref().map(|m| (m.height, m.width)))
        .unwrap_or((256, 256));
    let crop = if size == (h, w) {
        0
    } else if h == w && size.0 >= h && size.1 >= w {
        h
    } else {
        return Err(Error::model(
            &ctx,
            format!(
                "takes {h}x{w} images, which {}x{} images can neither be nor be centre-cropped to; give --resize-height {h} --resize-width {w}",
                size.0, size.1
            ),
        ));
    };
    let tp = TransformationParameter {
        crop_size: Some(crop as u32),
        mean_value: o.mean_values.to_vec(),
        ..Default::default()
    };
    let mut transformer = Transformer::new(&tp, Phase::Test, 0, |p| p.into(), &ctx)?;
    if let Some(m) = &mean {
        if (m.height, m.width) != size {
            return Err(Error::model(
                &ctx,
                format!(
                    "the mean is {}x{} but images would be resized to {}x{}",
                    m.height, m.width, size.0, size.1
                ),
            ));
        }
        transformer = transformer.with_mean_image(m);
    }
    Ok(InputSpec {
        layer,
        channels: if o.gray { 1 } else { channels },
        size: Some(size),
        out: (h, w),
        batch: o.batch_size.unwrap_or(batch).max(1),
        transformer,
        label_top: false,
    })
}

/// A trained net's input: what its TEST data layer does to an image.
fn trained_input_spec(def: &NetParameter, layer: usize, o: &ClassifyOptions) -> Result<InputSpec> {
    let l = &def.layer[layer];
    let ctx = format!("layer '{}'", l.name());
    let mut tp = l.transform_param.clone().unwrap_or_default();
    // Mirroring at test time would make a prediction depend on the image's
    // place in the batch; `--tta mirror` averages over both instead.
    tp.mirror = Some(false);
    // Path::join keeps an absolute path as it is.
    let resolve = |p: &str| o.base_dir.join(p);
    let transformer = Transformer::new(&tp, Phase::Test, 0, resolve, &ctx)?;
    // (channels, height, width) of the mean image: the datums' shape.
    let mean = match &tp.mean_file {
        Some(f) => {
            let m = MeanImage::read_binaryproto(&resolve(f))?;
            Some((m.channels, m.height, m.width))
        }
        None => None,
    };
    let (layer_size, color, batch) = match (&l.image_data_param, &l.data_param) {
        (Some(p), _) if l.r#type() == "ImageData" => {
            let size = (p.new_height() > 0 && p.new_width() > 0)
                .then(|| (p.new_height() as usize, p.new_width() as usize));
            (size, p.is_color(), p.batch_size() as usize)
        }
        (_, d) => (
            Some(mean.map_or((256, 256), |(_, h, w)| (h, w))),
            mean.is_none_or(|(c, _, _)| c != 1),
            d.as_ref().map_or(50, |d| d.batch_size() as usize),
        ),
    };
    let channels = if o.gray || !color { 1 } else { 3 };
    let size = o.size.or(layer_size);
    let crop = tp.crop_size() as usize;
    let out = match (size, crop) {
        (_, c) if c > 0 => (c, c),
        (Some(s), _) => s,
        (None, _) => {
            return Err(Error::model(
                &ctx,
                "neither resizes nor crops, so images of different sizes cannot share a batch; give --resize-height and --resize-width",
            ))
        }
    };
    if let (Some((_, mh, mw)), Some((h, w))) = (mean, size) {
        if (mh, mw) != (h, w) {
            return Err(Error::model(
                &ctx,
                format!(
                    "its mean image is {mh}x{mw} but images would be resized to {h}x{w}; give --resize-height {mh} --resize-width {mw}"
                ),
            ));
        }
    }
    if let (Some((h, w)), true) = (size, crop > 0) {
        if crop > h || crop > w {
            return Err(Error::model(
                &ctx,
                format!("crop_size {crop} is larger than the {h}x{w} images"),
            ));
        }
    }
    Ok(InputSpec {
        layer,
        channels,
        size,
        out,
        batch: o.batch_size.unwrap_or(batch).max(1),
        transformer,
        label_top: l.top.len() > 1,
    })
}

/// The net with its TEST data layer replaced by an Input layer of the same
/// tops: images of the input shape and (unused) labels.
fn with_input_layer(def: &NetParameter, spec: &InputSpec) -> NetParameter {
    let mut def = def.clone();
    let (h, w) = spec.out;
    def.layer[spec.layer] = crate::train::commands::input_layer(
        &def.layer[spec.layer],
        [spec.batch, spec.channels, h, w],
    );
    def
}

/// Decodes and resizes (or fits and pads) the image at `path` as the net's
/// input wants it, before the transformer; also returns what late fusion
/// takes from the original: its (width, height) and, when the fusion model
/// uses them, its measurements.
fn prepare(
    path: &Path,
    spec: &InputSpec,
    o: &ClassifyOptions,
) -> std::result::Result<(Mat8, FromImage), String> {
    let mode = if spec.channels == 1 {
        ColorMode::Gray
    } else {
        ColorMode::Color
    };
    let m = read_image(path, mode).map_err(|e| e.to_string())?;
    // Measured on the one-channel decode, as `measure` does: a colour net's
    // image is decoded a second time.
    let measures = match o.fusion.filter(|f| f.model.measures_images()) {
        None => None,
        Some(_) if m.channels == 1 => Some(measure(&m)),
        Some(_) => Some(measure_file(path).map_err(|e| e.to_string())?),
    };
    let original = FromImage {
        size: (m.width, m.height),
        measures,
    };
    let m = fit(m, o.pad, spec.size);
    let (_, h, w) = spec.transformer.out_shape(m.channels, m.height, m.width);
    if (h, w) != spec.out {
        return Err(format!(
            "is {}x{}, which gives a {h}x{w} input, not {}x{} (give --resize-height/--resize-width)",
            m.height, m.width, spec.out.0, spec.out.1
        ));
    }
    Ok((m, original))
}

/// Views per image with `oversample`: classify.py's ten crops, the four
/// corners and the centre, then the same mirrored.
const OVERSAMPLE_VIEWS: usize = 10;

/// Transforms view `view` of image `m` into `out`: the transformer's own
/// (centre) crop, or with `oversample` crop `view`.
fn transform_view(
    spec: &InputSpec,
    m: &Mat8,
    view: usize,
    oversample: bool,
    path: &Path,
    out: &mut [f32],
) -> Result<()> {
    let context = || path.display().to_string();
    if !oversample {
        // No draws: a mirroring TEST transform leaves the image unmirrored.
        return spec.transformer.apply(m.into(), &[], 0, context, out);
    }
    let (c, h, w) = (spec.transformer.crop_size(), m.height, m.width);
    let offsets = [
        (0, 0),
        (0, w - c),
        (h - c, 0),
        (h - c, w - c),
        ((h - c) / 2, (w - c) / 2),
    ];
    spec.transformer
        .apply_at(m.into(), offsets[view % 5], view >= 5, context, out)
}

/// Runs `net` forward on view `crop` of the images in `batch` (the centre
/// crop, or with `oversample` crop `crop`); a short batch is padded with
/// zeros.
pub(crate) fn forward_view(
    net: &mut Net,
    spec: &InputSpec,
    batch: &[(PathBuf, Mat8)],
    crop: usize,
    o: &ClassifyOptions,
) -> Result<()> {
    let per_image = spec.channels * spec.out.0 * spec.out.1;
    let mut data = vec![0.0f32; spec.batch * per_image];
    data.par_chunks_mut(per_image)
        .zip(batch.par_iter())
        .try_for_each(|(out, (p, m))| transform_view(spec, m, crop, o.oversample, p, out))?;
    let device = &o.compute.device;
    let mut tops = vec![Tensor::from_vec(
        data,
        (spec.batch, spec.channels, spec.out.0, spec.out.1),
        device,
    )?];
    if spec.label_top {
        tops.push(Tensor::zeros(spec.batch, candle_core::DType::F32, device)?);
    }
    net.forward_batch(tops)?;
    Ok(())
}

/// The class probabilities of the images in `batch` (scores when the net
/// gives neither logits nor probabilities), averaged over the crops of
/// `--oversample`, the test-time views and the nets; returns the number of
/// classes and the values, image by image.
fn score_batch(
    net: &mut Net,
    others: &mut [Net],
    reader: &Reader,
    spec: &InputSpec,
    batch: &[(PathBuf, Mat8)],
    o: &ClassifyOptions,
) -> Result<(usize, Vec<f32>, Agreement)> {
    let views = o.tta.views();
    let crops = if o.oversample { OVERSAMPLE_VIEWS } else { 1 };
    let (mut classes, mut probs) = (0, Vec::new());
    let mut agreement: Option<Agreement> = None;
    for crop in 0..crops {
        forward_view(net, spec, batch, crop, o)?;
        let (_, c, scores) = reader.read_scores(net)?;
        classes = c;
        let (p, agreed) = if views.len() > 1 || !others.is_empty() {
            super::evaluate::average_views(net, others, reader, &views, scores, c)?
        } else {
            let p: Vec<f32> = match reader.kind {
                ScoreKind::Logits => scores
                    .chunks(c)
                    .flat_map(super::evaluate::softmax)
                    .collect(),
                _ => scores,
            };
            let agreed = Agreement::new(&p, c);
            (p, agreed)
        };
        match &mut agreement {
            Some(a) => a.merge(&agreed),
            None => agreement = Some(agreed),
        }
        if probs.is_empty() {
            probs = p;
        } else {
            probs.iter_mut().zip(p).for_each(|(s, v)| *s += v);
        }
    }
    if crops > 1 {
        probs.iter_mut().for_each(|v| *v /= crops as f32);
    }
    Ok((classes, probs, agreement.expect("one crop at least")))
}

/// The net of `o.model` with its data layer replaced by an Input layer
/// fed with `o.images`, and how each image becomes that input.
pub(crate) fn input_net(o: &ClassifyOptions) -> Result<(NetParameter, InputSpec)> {
    let mut def = read_net_prototxt(o.model)?;
    o.state.apply(&mut def);
    let spec = input_spec(&def, o)?;
    Ok((with_input_layer(&def, &spec), spec))
}

/// Where `net`'s class scores are read for new images: `o.scores`, else
/// the first bottom of its Accuracy or loss layer, else (a deploy net,
/// which has neither) its last Softmax output. Scores only: no labels.
pub(crate) fn scores_reader(net: &Net, o: &ClassifyOptions) -> Result<Reader> {
    let scoring = ["Accuracy", "SoftmaxWithLoss", "InfogainLoss"];
    let scores = o.scores.clone().or_else(|| {
        if net.layer_params().any(|l| scoring.contains(&l.r#type())) {
            return None;
        }
        net.layer_params()
            .filter(|l| l.r#type() == "Softmax")
            .last()
            .and_then(|l| l.top.first().cloned())
    });
    // One score vector per image: classify and explain name files, not
    // positions.
    Ok(Reader::find(net, &scores.map(|s| (s, String::new())), o.model)?.per_image())
}

/// With `strict`, the first unreadable image of `failed` (of `total`) as
/// the error that leaves nothing written.
pub(crate) fn refuse_unreadable(
    strict: bool,
    failed: &[(PathBuf, String)],
    total: usize,
) -> Result<()> {
    match (strict, failed.first()) {
        (true, Some((p, why))) => Err(Error::invalid(
            p.display(),
            format!(
                "{why} ({} of {total} images unreadable; nothing was written)",
                failed.len()
            ),
        )),
        _ => Ok(()),
    }
}

/// Calls `f` with each batch of readable images of `o.images` (prepared for
/// the transformer, with what late fusion takes from the originals), in
/// order; returns the images that could not be read, with the reason.
pub(crate) fn batches(
    o: &ClassifyOptions,
    spec: &InputSpec,
    what: &str,
    mut f: impl FnMut(Vec<(PathBuf, Mat8)>, Vec<FromImage>) -> Result<()>,
) -> Result<Vec<(PathBuf, String)>> {
    let bar = crate::progress::bar(o.images.len() as u64, what);
    let mut failed = Vec::new();
    let mut pending: &[PathBuf] = o.images;
    while !pending.is_empty() {
        // Fill a batch with readable images, in order.
        let mut batch: Vec<(PathBuf, Mat8)> = Vec::new();
        let mut originals = Vec::new();
        while batch.len() < spec.batch && !pending.is_empty() {
            let take = (spec.batch - batch.len()).min(pending.len());
            let (now, rest) = pending.split_at(take);
            pending = rest;
            let prepared: Vec<_> = now
                .par_iter()
                .map(|p| (p.clone(), prepare(p, spec, o)))
                .collect();
            for (p, r) in prepared {
                match r {
                    Ok((m, original)) => {
                        batch.push((p, m));
                        originals.push(original);
                    }
                    Err(e) => failed.push((p, e)),
                }
            }
            bar.inc(take as u64);
        }
        if batch.is_empty() {
            break;
        }
        f(batch, originals)?;
    }
    bar.finish_and_clear();
    Ok(failed)
}

/// Classifies `o.images` with the trained net.
pub fn classify(o: &ClassifyOptions) -> Result<Classification> {
    let (def, spec) = input_net(o)?;
    let ctx = BuildContext::new(o.base_dir, 0, Phase::Test, o.compute);
    let mut nets = trained_nets(&def, &ctx, o.weights, o.ensemble)?;
    let (net, others) = nets
        .split_first_mut()
        .expect("trained_nets makes one at least");
    // A deploy net has no Accuracy or loss layer to say where the scores
    // are: its (last) Softmax output.
    let reader = scores_reader(net, o)?;
    if o.oversample && (o.tta != Tta::None || spec.transformer.crop_size() == 0) {
        return Err(Error::model(
            o.model.display(),
            "--oversample takes ten crops of each image: the net must crop (crop_size), and it replaces --tta",
        ));
    }
    if o.fusion.is_some() && reader.kind == ScoreKind::Scores {
        return Err(Error::model(
            o.model.display(),
            "late fusion needs probabilities, but the scores blob feeds no SoftmaxWithLoss and is no Softmax output",
        ));
    }
    // Views x models x crops: more than one run leaves something to agree on.
    let runs_per_image =
        o.tta.views().len() * (1 + others.len()) * if o.oversample { OVERSAMPLE_VIEWS } else { 1 };
    let mut rows = Vec::new();
    let mut unfused = Vec::new();
    let mut classes = 0;
    let mut failed = batches(o, &spec, "classify", |batch, originals| {
        let (c, probs, agreement) = score_batch(net, others, &reader, &spec, &batch, o)?;
        if let Some(f) = o.fusion.filter(|f| f.model.classes() != c) {
            return Err(Error::model(
                o.model.display(),
                format!(
                    "the net scores {c} classes, but the fusion model was fitted for {}",
                    f.model.classes()
                ),
            ));
        }
        classes = c;
        for (i, ((path, _), original)) in batch.into_iter().zip(originals).enumerate() {
            let row = &probs[i * c..(i + 1) * c];
            let top = match o.fusion {
                Some(f) => match f.apply(&path, &original, row) {
                    Ok(fused) => top_k(&fused, o.top_k),
                    Err(e) => {
                        unfused.push((path, e));
                        continue;
                    }
                },
                None => top_k(row, o.top_k),
            };
            rows.push(Classified {
                image: path,
                top,
                unanimous: (runs_per_image > 1).then(|| agreement.0[i].is_some()),
            });
        }
        Ok(())
    })?;
    failed.extend(unfused);
    Ok(Classification {
        classes,
        rows,
        failed,
        kind: reader.kind,
    })
}

/// The `k` largest values with their classes, largest first (equal values:
/// the lower class first).
fn top_k(values: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.into_iter()
        .take(k.max(1))
        .map(|i| (i, values[i]))
        .collect()
}

impl Classification {
    /// How many images each class got as its best guess (and, with
    /// `threshold`, how many of those reach it), as a Markdown table of the
    /// classes that got any, most first.
    pub fn summary(&self, names: &[String], threshold: Option<f64>) -> String {
        let mut counts = vec![(0usize, 0usize); self.classes];
        for r in &self.rows {
            let (c, p) = r.top[0];
            counts[c].0 += 1;
            if threshold.is_some_and(|t| f64::from(p) >= t) {
                counts[c].1 += 1;
            }
        }
        let mut order: Vec<usize> = (0..self.classes).filter(|&c| counts[c].0 > 0).collect();
        order.sort_by_key(|&c| std::cmp::Reverse(counts[c].0));
        let mut s = match threshold {
            Some(t) => format!("| class | images | at least {t} |\n|---|---:|---:|\n"),
            None => "| class | images |\n|---|---:|\n".to_string(),
        };
        for c in order {
            let name = crate::analysis::confusion::class_name(names, c);
            s += &match threshold {
                Some(_) => format!("| {name} | {} | {} |\n", counts[c].0, counts[c].1),
                None => format!("| {name} | {} |\n", counts[c].0),
            };
        }
        s
    }

    /// One row per image: the file, then each of the top classes (named by
    /// `names`, else numbered) with its probability; with `threshold`, whether
    /// the first reaches it.
    pub fn to_csv(&self, names: &[String], threshold: Option<f64>) -> String {
        let what = if self.kind == ScoreKind::Scores {
            "score"
        } else {
            "probability"
        };
        let k = self.rows.first().map_or(1, |r| r.top.len());
        let mut header = vec!["image".to_string()];
        for r in 1..=k {
            header.push(format!("class_{r}"));
            header.push(format!("{what}_{r}"));
        }
        if threshold.is_some() {
            header.push("confident".into());
        }
        let unanimity = self.rows.iter().any(|r| r.unanimous.is_some());
        if unanimity {
            header.push("unanimous".into());
        }
        let mut w = csv::Writer::from_writer(Vec::new());
        // Writing to a Vec cannot fail.
        w.write_record(&header).expect("in memory");
        for row in &self.rows {
            let mut rec = vec![row.image.display().to_string()];
            for &(c, p) in &row.top {
                rec.push(crate::analysis::confusion::class_name(names, c));
                rec.push(p.to_string());
            }
            if let Some(t) = threshold {
                rec.push((f64::from(row.top[0].1) >= t).to_string());
            }
            if unanimity {
                rec.push(row.unanimous.unwrap_or(false).to_string());
            }
            w.write_record(&rec).expect("in memory");
        }
        String::from_utf8(w.into_inner().expect("in memory")).expect("UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_best_guesses_most_first() {
        let row = |c: usize, p: f32| Classified {
            image: PathBuf::from("x"),
            top: vec![(c, p)],
            unanimous: None,
        };
        let c = Classification {
            classes: 3,
            rows: vec![row(2, 0.9), row(2, 0.4), row(0, 0.7)],
            failed: vec![],
            kind: ScoreKind::Probabilities,
        };
        let names = ["a".to_string(), "b".into(), "c".into()];
        assert_eq!(
            c.summary(&names, Some(0.5)),
            "| class | images | at least 0.5 |\n|---|---:|---:|\n| c | 2 | 1 |\n| a | 1 | 1 |\n"
        );
        assert!(c.summary(&[], None).contains("| 2 | 2 |"));
    }

    #[test]
    fn top_classes_largest_first_ties_to_the_lower_class() {
        assert_eq!(
            top_k(&[0.1, 0.4, 0.1, 0.4], 3),
            vec![(1, 0.4), (3, 0.4), (0, 0.1)]
        );
        assert_eq!(top_k(&[0.3, 0.7], 5).len(), 2);
        assert_eq!(top_k(&[0.3, 0.7], 0), vec![(1, 0.7)]);
    }
}
