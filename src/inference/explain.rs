//! `flickr-style explain`: where in each image the net found the class it
//! gives it, as Grad-CAM maps (Selvaraju et al. 2017). For each image the
//! class score (the logit, before any softmax) is backpropagated to a
//! convolution's output A (after its ReLU, e.g. CaffeNet's conv5: 13x13);
//! each channel's gradient averaged over the positions weighs that channel,
//! and the map is the weighted sum of the channels with negatives set to 0.
//! The map, scaled to the net's input, is laid over the image the net saw
//! (the resized, centre-cropped one) as a heat map: for plankton, whether
//! the net looks at the organism or at a scale bar, a border or debris.
use super::classify::{self, ClassifyOptions};
use super::evaluate::{softmax, trained_nets, Reader, ScoreKind};
use crate::caffe::proto::Phase;
use crate::error::{Error, Result};
use crate::pipeline::mat::Mat8;
use crate::train::layers::BuildContext;
use crate::train::net::Net;
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What to explain and where the maps go.
pub struct ExplainOptions<'a> {
    /// The images and the net, prepared as `classify` prepares them (the
    /// centre view of one model: views, crops and ensembles do not apply).
    pub input: ClassifyOptions<'a>,
    /// The blob whose channels are weighed; `None`: the output of the last
    /// Convolution layer with more than one position.
    pub layer: Option<String>,
    /// The class to explain in every image; `None`: each image's best.
    pub class: Option<usize>,
    /// Class names for the table (label order; empty, or one per class).
    pub names: &'a [String],
    /// Folder for the heat maps (`<n>_<file stem>.png`; with a label that is
    /// not the explained class, the label's map beside it), `explain.csv`,
    /// and the maps at the layer's resolution as `maps.npy` (with labels,
    /// the true classes' as `label_maps.npy`), row for row.
    pub out: &'a Path,
    /// An unreadable image is an error and nothing is written (else it is
    /// skipped and listed).
    pub strict: bool,
    /// Each image's true class (from an image list): its map is drawn
    /// beside the explained class's when they differ.
    pub labels: Option<&'a HashMap<PathBuf, usize>>,
    /// Keep only the images whose best class is not their label.
    pub mistakes: bool,
    /// Set (by Ctrl-C) to stop after the current batch, writing nothing.
    pub stop: Option<Arc<AtomicBool>>,
    /// Also find the object in the net's view (as `measure` finds it: the
    /// largest region standing out from the border's level) and say how
    /// much of the map falls on it.
    pub object: bool,
}

/// One image's map.
#[derive(Clone, Debug)]
pub struct Explained {
    /// The image file.
    pub image: PathBuf,
    /// The heat map's file name in the output folder.
    pub heatmap: String,
    /// The class explained.
    pub class: usize,
    /// Its probability (`None` when the net gives neither logits nor
    /// probabilities).
    pub probability: Option<f32>,
    /// The map at the layer's resolution, scaled so its largest value is 1
    /// (all 0 where nothing speaks for the class), row-major.
    pub map: Vec<f32>,
    /// Where the map peaks, as (row, column) of the net's input.
    pub peak: (usize, usize),
    /// The share of the input where the map is at least half its peak.
    pub share: f32,
    /// The image's true class, when labels were given.
    pub label: Option<usize>,
    /// Its probability.
    pub label_probability: Option<f32>,
    /// Its map, scaled as `map` is.
    pub label_map: Option<Vec<f32>>,
    /// With `object`: the share of the net's input the object covers, and
    /// the share of the map's mass on it (above the first: the net looks at
    /// the object; below it: at the background).
    pub object: Option<(f32, f32)>,
}

/// The maps of a set of images.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The blob whose channels were weighed, and its (height, width).
    pub layer: String,
    /// Its positions.
    pub map_size: (usize, usize),
    /// The blob whose class scores were backpropagated.
    pub scores: String,
    /// Classes the net scores.
    pub classes: usize,
    /// One row per readable image, in order.
    pub rows: Vec<Explained>,
    /// Images that could not be read, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Images read (mapped or, with `mistakes`, looked at).
    pub read: usize,
}

/// The Grad-CAM map of one image from the layer's values `a` and the class
/// score's gradient `g` at them, both `channels x positions`: each channel
/// weighed by its mean gradient, summed, negatives set to 0 (f64 sums).
pub fn grad_cam(a: &[f32], g: &[f32], channels: usize) -> Vec<f32> {
    relu(weighted_channels(a, g, channels))
}

/// Grad-CAM's channel sum before negatives are set to 0.
fn weighted_channels(a: &[f32], g: &[f32], channels: usize) -> Vec<f64> {
    let positions = a.len() / channels.max(1);
    let mut map = vec![0.0f64; positions];
    for (ac, gc) in a.chunks_exact(positions).zip(g.chunks_exact(positions)) {
        let alpha = gc.iter().map(|&v| f64::from(v)).sum::<f64>() / positions as f64;
        for (m, &v) in map.iter_mut().zip(ac) {
            *m += alpha * f64::from(v);
        }
    }
    map
}

fn relu(map: Vec<f64>) -> Vec<f32> {
    map.into_iter().map(|v| v.max(0.0) as f32).collect()
}

/// The Grad-CAM maps of the `images` of a batch under cyclic pooling,
/// whose layer holds each image's four quarter turns (turn-major: item
/// `k * images + i` is image `i` turned `k` times; `channels` square
/// `side x side` maps each): each turn's channel sum is turned back into
/// the image's frame, the four are added, negatives set to 0. A quarter
/// turn of an image turns its map.
pub fn cyclic_grad_cams(
    a: &[f32],
    g: &[f32],
    images: usize,
    channels: usize,
    side: usize,
) -> Vec<Vec<f32>> {
    let per = channels * side * side;
    (0..images)
        .map(|i| {
            let mut sum = vec![0.0f64; side * side];
            for k in 0..4 {
                let at = (k * images + i) * per;
                let m = weighted_channels(&a[at..at + per], &g[at..at + per], channels);
                let mut m: Vec<f32> = m.into_iter().map(|v| v as f32).collect();
                // Copy k was turned k times; 4 - k more bring it back.
                crate::train::transform::rotate_square(&mut m, side, (4 - k) as u8);
                for (s, v) in sum.iter_mut().zip(m) {
                    *s += f64::from(v);
                }
            }
            relu(sum)
        })
        .collect()
}

/// `map` (`h x w`) scaled to `oh x ow` bilinearly, pixel centres aligned
/// (as OpenCV's resize, which Grad-CAM's authors used).
pub fn upsample(map: &[f32], (h, w): (usize, usize), (oh, ow): (usize, usize)) -> Vec<f32> {
    let coord = |o: usize, n: usize, on: usize| {
        let x = ((o as f64 + 0.5) * n as f64 / on as f64 - 0.5).clamp(0.0, (n - 1) as f64);
        let i = (x.floor() as usize).min(n - 1);
        (i, (i + 1).min(n - 1), (x - i as f64) as f32)
    };
    let mut out = Vec::with_capacity(oh * ow);
    for y in 0..oh {
        let (y0, y1, fy) = coord(y, h, oh);
        for x in 0..ow {
            let (x0, x1, fx) = coord(x, w, ow);
            let at = |yy: usize, xx: usize| map[yy * w + xx];
            let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
            let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
            out.push(top * (1.0 - fy) + bottom * fy);
        }
    }
    out
}

/// The colour of a map value in [0, 1]: blue through cyan, yellow to red
/// (the "jet" ramp heat maps use), as RGB in [0, 1].
fn jet(t: f32) -> [f32; 3] {
    let ramp = |c: f32| (1.5 - (4.0 * t - c).abs()).clamp(0.0, 1.0);
    [ramp(3.0), ramp(2.0), ramp(1.0)]
}

/// Pixel (y, x) of the view of `m` starting at `origin` (its channels),
/// the edge pixel where the view reaches past the image.
fn view_pixel(m: &Mat8, origin: (usize, usize), y: usize, x: usize) -> &[u8] {
    let (sy, sx) = (
        (origin.0 + y).min(m.height - 1),
        (origin.1 + x).min(m.width - 1),
    );
    &m.data[(sy * m.width + sx) * m.channels..][..m.channels]
}

/// The heat map over the input's view of `m` (starting at `origin`,
/// `size` pixels): half the image, half the map's colour. Returns RGB.
fn overlay(m: &Mat8, origin: (usize, usize), size: (usize, usize), heat: &[f32]) -> Vec<u8> {
    let (h, w) = size;
    let mut rgb = Vec::with_capacity(h * w * 3);
    for y in 0..h {
        for x in 0..w {
            let px = view_pixel(m, origin, y, x);
            // Mat8 holds gray, BGR or BGRA.
            let pixel = if m.channels < 3 {
                [px[0]; 3]
            } else {
                [px[2], px[1], px[0]]
            };
            let colour = jet(heat[y * w + x]);
            for (p, c) in pixel.iter().zip(colour) {
                rgb.push((0.5 * f32::from(*p) + 127.5 * c).round() as u8);
            }
        }
    }
    rgb
}

/// The blob whose map is drawn by default: the output of the last
/// Convolution layer whose output has more than one position.
fn default_layer(net: &Net) -> Option<String> {
    net.layer_params()
        .filter(|l| l.r#type() == "Convolution")
        .filter_map(|l| l.top.first())
        .filter(|t| {
            net.blob_shape(t)
                .is_some_and(|s| s.len() == 4 && s[2] * s[3] > 1)
        })
        .last()
        .cloned()
}

/// The logits behind the scores: a Softmax output's bottom, else the
/// scores blob itself.
fn logits_blob(net: &Net, reader: &Reader) -> String {
    let scores = reader.scores_blob();
    if reader.kind == ScoreKind::Probabilities {
        if let Some(b) = net
            .layer_params()
            .filter(|l| l.r#type() == "Softmax" && l.top.iter().any(|t| t == scores))
            .filter_map(|l| l.bottom.first())
            .last()
        {
            return b.clone();
        }
    }
    scores.to_string()
}

/// Computes each image's map, writes the heat maps and `explain.csv` into
/// `o.out`, and returns the maps.
pub fn explain(o: &ExplainOptions) -> Result<Explanation> {
    let input = &o.input;
    // What can be refused without the net is refused before it and its
    // weights are loaded.
    if input.oversample || input.ensemble || input.weights.len() > 1 {
        return Err(Error::model(
            input.model.display(),
            "explain maps the centre view of one model (one weights file, no ten crops)",
        ));
    }
    if o.mistakes && o.labels.is_none() {
        return Err(Error::model(
            input.model.display(),
            "keeping only the mistakes needs each image's label (an image list)",
        ));
    }
    if o.out.exists() && !o.out.is_dir() {
        return Err(Error::invalid(
            o.out.display(),
            "is a file: the heat maps need a folder",
        ));
    }
    let (mut def, spec) = classify::input_net(input)?;
    // Every layer keeps what its backward pass needs.
    def.force_backward = Some(true);
    let ctx = BuildContext::new(input.base_dir, 0, Phase::Test, input.compute);
    let mut net = trained_nets(&def, &ctx, input.weights, false)?
        .pop()
        .expect("one net without an ensemble");
    let reader = classify::scores_reader(&net, input)?;
    let seed = logits_blob(&net, &reader);
    let layer = match &o.layer {
        Some(l) => l.clone(),
        None => default_layer(&net).ok_or_else(|| {
            Error::model(
                input.model.display(),
                "has no Convolution layer with a spatial output; name the blob with --layer",
            )
        })?,
    };
    // Cyclic pooling stacks each image's four turns along the batch axis
    // up to its CyclicPool: their maps are turned back and added.
    let cyclic = net.layer_params().any(|l| l.r#type() == "CyclicSlice")
        && matches!(net.blob_shape(&layer), Some(&[n, _, h, w]) if n == 4 * spec.batch && h == w);
    let (channels, map_size) = match net.blob_shape(&layer) {
        Some(&[n, _, _, _]) if n != spec.batch && !cyclic => {
            return Err(Error::model(
                format!("blob '{layer}'"),
                format!(
                    "holds {n} items for a batch of {} images: a map needs one item per image \
                     (or, after a CyclicSlice, four square ones)",
                    spec.batch
                ),
            ))
        }
        Some(&[_, c, h, w]) => (c, (h, w)),
        Some(s) => {
            return Err(Error::model(
                format!("blob '{layer}'"),
                format!("has shape {s:?}; a map needs an N x C x H x W blob"),
            ))
        }
        None => {
            return Err(Error::model(
                input.model.display(),
                format!("has no blob '{layer}'"),
            ))
        }
    };
    let seed_shape = net
        .blob_shape(&seed)
        .ok_or_else(|| Error::model(input.model.display(), format!("has no blob '{seed}'")))?
        .to_vec();
    let classes: usize = seed_shape[1..].iter().product();
    if let Some(c) = o.class.filter(|&c| c >= classes) {
        return Err(Error::model(
            input.model.display(),
            format!("--class {c} is not one of the net's {classes} classes"),
        ));
    }
    // As `evaluate` and `classify` check them, before any map is made.
    if !o.names.is_empty() {
        super::evaluate::check_class_names(o.names, classes, "--names")?;
    }
    let size = spec.input_size();
    let label_of = |p: &Path| o.labels.and_then(|l| l.get(p).copied());
    if let Some((p, l)) = o.labels.and_then(|l| l.iter().find(|(_, &k)| k >= classes)) {
        return Err(Error::model(
            p.display(),
            format!("label {l} is not one of the net's {classes} classes"),
        ));
    }
    // Heat maps go to a staging folder beside the output as they are made,
    // and move into it when every image is done.
    let parent = crate::fsutil::parent_dir(o.out);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let staging = tempfile::Builder::new()
        .prefix(".explain-")
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    let mut rows = Vec::new();
    let failed = classify::batches(input, &spec, "explain", |batch, _| {
        if o.stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err(Error::Interrupted);
        }
        classify::forward_view(&mut net, &spec, &batch, 0, input)?;
        let (_, _, values) = reader.read_scores(&net)?;
        let logits = crate::train::layers::to_vec(net.blob(&seed).expect("forward ran"))?;
        let best: Vec<usize> = (0..batch.len())
            .map(|i| {
                let row = &logits[i * classes..(i + 1) * classes];
                // The first maximum, as Caffe's Accuracy ranks ties.
                (0..classes).fold(0, |b, k| if row[k] > row[b] { k } else { b })
            })
            .collect();
        let labels: Vec<Option<usize>> = batch.iter().map(|(p, _)| label_of(p)).collect();
        let picked: Vec<usize> = best.iter().map(|&b| o.class.unwrap_or(b)).collect();
        let kept: Vec<usize> = (0..batch.len())
            .filter(|&i| !o.mistakes || labels[i] != Some(best[i]))
            .collect();
        if kept.is_empty() {
            return Ok(());
        }
        let a = crate::train::layers::to_vec(net.blob(&layer).expect("forward ran"))?;
        let per = channels * map_size.0 * map_size.1;
        // One backward pass per set of classes: the ones explained, and
        // with labels the true ones.
        let mut maps = |classes_of: &dyn Fn(usize) -> Option<usize>| -> Result<Vec<Vec<f32>>> {
            let mut diff = vec![0.0f32; seed_shape.iter().product()];
            for &i in &kept {
                if let Some(c) = classes_of(i) {
                    diff[i * classes + c] = 1.0;
                }
            }
            let diff = Tensor::from_vec(diff, seed_shape.as_slice(), &input.compute.device)?;
            let g = crate::train::layers::to_vec(&net.blob_gradient(&seed, diff, &layer)?)?;
            let raw: Vec<Vec<f32>> = if cyclic {
                cyclic_grad_cams(&a, &g, spec.batch, channels, map_size.0)
            } else {
                (0..batch.len())
                    .map(|i| {
                        grad_cam(
                            &a[i * per..(i + 1) * per],
                            &g[i * per..(i + 1) * per],
                            channels,
                        )
                    })
                    .collect()
            };
            Ok(raw
                .into_iter()
                .map(|mut map| {
                    let top = map.iter().fold(0.0f32, |t, &v| t.max(v));
                    if top > 0.0 {
                        map.iter_mut().for_each(|v| *v /= top);
                    }
                    map
                })
                .collect())
        };
        let class_maps = maps(&|i| Some(picked[i]))?;
        let label_maps = if o.labels.is_some() {
            Some(maps(&|i| labels[i])?)
        } else {
            None
        };
        let probability = |i: usize, class: usize| match reader.kind {
            ScoreKind::Logits => Some(softmax(&logits[i * classes..(i + 1) * classes])[class]),
            ScoreKind::Probabilities => values.get(i * classes + class).copied(),
            ScoreKind::Scores => None,
        };
        for i in kept {
            let (path, m) = &batch[i];
            let class = picked[i];
            let map = class_maps[i].clone();
            let heat = upsample(&map, map_size, size);
            let peak = heat
                .iter()
                .enumerate()
                .fold(0, |b, (k, &v)| if v > heat[b] { k } else { b });
            let share = heat.iter().filter(|&&v| v >= 0.5).count() as f32 / heat.len() as f32;
            let origin = spec.crop_origin(m);
            let mut panels = vec![overlay(m, origin, size, &heat)];
            let label = labels[i];
            let label_map = match (&label_maps, label) {
                (Some(lm), Some(l)) => {
                    if l != class {
                        panels.push(overlay(m, origin, size, &upsample(&lm[i], map_size, size)));
                    }
                    Some(lm[i].clone())
                }
                _ => None,
            };
            let object = o.object.then(|| on_object(m, origin, size, &heat));
            let stem = path
                .file_stem()
                .map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
            let heatmap = format!("{:05}_{stem}.png", rows.len());
            write_png(
                &staging.path().join(&heatmap),
                &side_by_side(&panels, size),
                size,
                panels.len(),
            )?;
            rows.push(Explained {
                image: path.clone(),
                heatmap,
                class,
                probability: probability(i, class),
                map,
                peak: (peak / size.1, peak % size.1),
                share,
                label,
                label_probability: label.and_then(|l| probability(i, l)),
                label_map,
                object,
            });
        }
        Ok(())
    })?;
    classify::refuse_unreadable(o.strict, &failed, input.images.len())?;
    if rows.is_empty() && failed.len() == input.images.len() {
        return Err(Error::model(
            input.model.display(),
            format!("none of the {} images could be read", input.images.len()),
        ));
    }
    let result = Explanation {
        layer,
        map_size,
        scores: seed,
        classes,
        rows,
        read: input.images.len() - failed.len(),
        failed,
    };
    std::fs::create_dir_all(o.out).map_err(|e| Error::io(o.out, e))?;
    // The maps of an earlier run into this folder go; its table names them.
    let table = o.out.join("explain.csv");
    if let Ok(old) = csv::Reader::from_path(&table) {
        for rec in old.into_records().flatten() {
            if let Some(f) = rec.get(1).filter(|f| !f.contains(['/', '\\'])) {
                let _ = std::fs::remove_file(o.out.join(f));
            }
        }
    }
    for r in &result.rows {
        let to = o.out.join(&r.heatmap);
        std::fs::rename(staging.path().join(&r.heatmap), &to).map_err(|e| Error::io(&to, e))?;
    }
    // The maps themselves, row for row with the table, for analyses of
    // one's own (per-class averages, overlap with masks).
    let maps: Vec<&[f32]> = result.rows.iter().map(|r| r.map.as_slice()).collect();
    write_maps(&o.out.join("maps.npy"), &maps, map_size)?;
    let label_maps: Vec<&[f32]> = result
        .rows
        .iter()
        .filter_map(|r| r.label_map.as_deref())
        .collect();
    let labels_npy = o.out.join("label_maps.npy");
    if o.labels.is_some() && label_maps.len() == result.rows.len() {
        write_maps(&labels_npy, &label_maps, map_size)?;
    } else {
        let _ = std::fs::remove_file(&labels_npy);
    }
    crate::fsutil::write_atomic(&table, result.to_csv(o.names).as_bytes())?;
    Ok(result)
}

/// `maps` (each `size`, scaled to a largest value of 1) as a float32
/// `.npy` of shape (maps, height, width).
fn write_maps(path: &Path, maps: &[&[f32]], (h, w): (usize, usize)) -> Result<()> {
    use npyz::WriterBuilder;
    let io = |e: std::io::Error| Error::io(path, e);
    let mut buf = Vec::new();
    let mut out = npyz::WriteOptions::<f32>::new()
        .default_dtype()
        .shape(&[maps.len() as u64, h as u64, w as u64])
        .writer(&mut buf)
        .begin_nd()
        .map_err(io)?;
    out.extend(maps.iter().flat_map(|m| m.iter().copied()))
        .map_err(io)?;
    out.finish().map_err(io)?;
    crate::fsutil::write_atomic(path, &buf)
}

/// The share of the view (of `size` from `origin`) that the object in it
/// covers, and the share of `heat`'s mass on the object (0 for a map with
/// none): the object as `measure` finds it, on the view in one gray channel.
pub fn on_object(
    m: &Mat8,
    origin: (usize, usize),
    size: (usize, usize),
    heat: &[f32],
) -> (f32, f32) {
    let (h, w) = size;
    let mut gray = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            let px = view_pixel(m, origin, y, x);
            gray.push(if m.channels < 3 {
                px[0]
            } else {
                crate::pipeline::decode::rgb_to_gray(px[2], px[1], px[0])
            });
        }
    }
    let seg = crate::pipeline::measure::segment(&gray, w, h);
    let total: f64 = heat.iter().map(|&v| f64::from(v)).sum();
    let on: f64 = heat
        .iter()
        .zip(&seg.mask)
        .filter(|(_, &inside)| inside)
        .map(|(&v, _)| f64::from(v))
        .sum();
    let share = seg.area as f32 / (h * w) as f32;
    (
        share,
        if total > 0.0 {
            (on / total) as f32
        } else {
            0.0
        },
    )
}

/// Panels of `size` placed left to right with a white 4-pixel gap, as one
/// RGB image.
fn side_by_side(panels: &[Vec<u8>], (h, w): (usize, usize)) -> Vec<u8> {
    const GAP: usize = 4;
    let width = panels.len() * w + (panels.len() - 1) * GAP;
    let mut out = vec![255u8; h * width * 3];
    for (k, p) in panels.iter().enumerate() {
        let x0 = k * (w + GAP);
        for y in 0..h {
            let row = &p[y * w * 3..(y + 1) * w * 3];
            out[(y * width + x0) * 3..][..w * 3].copy_from_slice(row);
        }
    }
    out
}

/// Writes RGB pixels of `panels` side-by-side panels of `size` as a PNG.
fn write_png(path: &Path, rgb: &[u8], (h, w): (usize, usize), panels: usize) -> Result<()> {
    use image::ImageEncoder;
    let width = panels * w + (panels - 1) * 4;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(rgb, width as u32, h as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::model(path.display(), format!("cannot encode the heat map: {e}")))?;
    std::fs::write(path, png).map_err(|e| Error::io(path, e))
}

/// The images of a labelled list (`path label` lines, paths under `root`)
/// in list order, each once, and each image's label: what `--list` hands
/// [`explain`] so it can draw the true class's map beside a mistake.
pub fn labelled_images(
    list: &Path,
    root: &Path,
) -> Result<(Vec<PathBuf>, HashMap<PathBuf, usize>)> {
    let mut labels = HashMap::new();
    let mut images = Vec::new();
    for e in crate::pipeline::image_list::read_list(list)? {
        let path = root.join(&e.path);
        let label = usize::try_from(e.label).map_err(|_| {
            Error::invalid(
                format!("{}:{}", list.display(), e.line),
                format!("label {} is negative", e.label),
            )
        })?;
        if labels.insert(path.clone(), label).is_none() {
            images.push(path);
        }
    }
    Ok((images, labels))
}

/// The class `--class` names: a class number, or one of `names` (label
/// order; `names_file` is where they came from, for the message).
pub fn class_by_number_or_name(
    class: &str,
    names: &[String],
    names_file: Option<&Path>,
) -> Result<usize> {
    if let Ok(k) = class.parse::<usize>() {
        return Ok(k);
    }
    names.iter().position(|n| n == class).ok_or_else(|| {
        let where_ = names_file.map_or(" (give --names)".to_string(), |p| {
            format!(" in {}", p.display())
        });
        Error::invalid(
            "--class",
            format!("{class:?} is neither a class number nor one of the names{where_}"),
        )
    })
}

impl Explanation {
    /// What the run found, for the console: with `--object`, how much of
    /// the map lies on the object; then the layer, the count of maps
    /// (`mistakes`: of mistakes among the `images` read) and the table.
    pub fn summary(&self, mistakes: bool, out: &Path) -> String {
        let mut s = String::new();
        let on: Vec<(f32, f32)> = self.rows.iter().filter_map(|r| r.object).collect();
        if !on.is_empty() {
            let mean = |f: fn(&(f32, f32)) -> f32| on.iter().map(f).sum::<f32>() / on.len() as f32;
            s += &format!(
                "the object covers {:.1}% of the input on average and holds {:.1}% of the map; the map \
                 is denser on the object than off it in {} of {} images\n",
                100.0 * mean(|o| o.0),
                100.0 * mean(|o| o.1),
                on.iter().filter(|o| o.1 > o.0).count(),
                on.len()
            );
        }
        let mapped = if mistakes {
            format!("{} mistakes among {} images", self.rows.len(), self.read)
        } else {
            format!("{} images", self.rows.len())
        };
        s += &format!(
            "Grad-CAM of '{}' ({}x{} positions) for the class scores in '{}': {mapped} ({} skipped) -> {}\n",
            self.layer,
            self.map_size.0,
            self.map_size.1,
            self.scores,
            self.failed.len(),
            out.join("explain.csv").display()
        );
        s
    }

    /// One row per image: the file, its heat map, the class explained
    /// (number and name), its probability, where the map peaks in the
    /// net's input and the share of the input at half the peak or more.
    pub fn to_csv(&self, names: &[String]) -> String {
        let labelled = self.rows.iter().any(|r| r.label.is_some());
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut header = vec![
            "image",
            "heatmap",
            "class",
            "class_name",
            "probability",
            "peak_row",
            "peak_column",
            "share_at_half_peak",
        ];
        if labelled {
            header.extend(["label", "label_name", "label_probability"]);
        }
        let object = self.rows.iter().any(|r| r.object.is_some());
        if object {
            header.extend(["object_share", "map_on_object"]);
        }
        // Writing to a Vec cannot fail.
        w.write_record(&header).expect("in memory");
        let number = |p: Option<f32>| p.map_or_else(String::new, |p| p.to_string());
        for r in &self.rows {
            let mut rec = vec![
                r.image.display().to_string(),
                r.heatmap.clone(),
                r.class.to_string(),
                crate::analysis::confusion::class_name(names, r.class),
                number(r.probability),
                r.peak.0.to_string(),
                r.peak.1.to_string(),
                format!("{:.4}", r.share),
            ];
            if labelled {
                rec.push(r.label.map_or_else(String::new, |l| l.to_string()));
                rec.push(r.label.map_or_else(String::new, |l| {
                    crate::analysis::confusion::class_name(names, l)
                }));
                rec.push(number(r.label_probability));
            }
            if object {
                let (share, on) = r.object.unwrap_or_default();
                rec.push(format!("{share:.4}"));
                rec.push(format!("{on:.4}"));
            }
            w.write_record(&rec).expect("in memory");
        }
        String::from_utf8(w.into_inner().expect("in memory")).expect("UTF-8 fields")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_is_named_by_number_or_by_name() {
        let names = ["copepod".to_string(), "diatom".to_string()];
        assert_eq!(class_by_number_or_name("7", &names, None).unwrap(), 7);
        assert_eq!(class_by_number_or_name("diatom", &names, None).unwrap(), 1);
        let e = class_by_number_or_name("krill", &names, Some(Path::new("labels.txt")));
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("\"krill\" is neither") && e.contains("labels.txt"),
            "{e}"
        );
        let e = class_by_number_or_name("krill", &[], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("(give --names)"), "{e}");
    }

    #[test]
    fn a_labelled_list_gives_each_image_once_with_its_label() {
        let t = tempfile::tempdir().unwrap();
        let list = t.path().join("test.txt");
        std::fs::write(&list, "a.jpg 1\nb.jpg 0\na.jpg 1\n").unwrap();
        let (images, labels) = labelled_images(&list, Path::new("/data")).unwrap();
        assert_eq!(images, [Path::new("/data/a.jpg"), Path::new("/data/b.jpg")]);
        assert_eq!(labels[Path::new("/data/b.jpg")], 0);
        std::fs::write(&list, "a.jpg 1\nb.jpg -2\n").unwrap();
        let e = labelled_images(&list, Path::new(""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.txt:2") && e.contains("label -2 is negative"),
            "{e}"
        );
    }

    #[test]
    fn channels_weigh_by_their_mean_gradient_and_negatives_vanish() {
        // Two channels of 2 positions: channel 0 gradient mean 1, channel 1
        // mean -0.5: map = a0 - 0.5 a1, clipped at 0.
        let a = [2.0, 1.0, 2.0, 4.0];
        let g = [1.5, 0.5, -1.0, 0.0];
        assert_eq!(grad_cam(&a, &g, 2), [1.0, 0.0]);
    }

    #[test]
    fn upsampling_keeps_corners_and_interpolates_between() {
        let up = upsample(&[0.0, 1.0], (1, 2), (1, 4));
        assert_eq!(up, [0.0, 0.25, 0.75, 1.0]);
        assert_eq!(upsample(&[3.0], (1, 1), (2, 2)), [3.0; 4]);
    }

    #[test]
    fn the_maps_share_on_the_object_is_measured() {
        // A bright 4x4 square on a dark 8x8 background (a quarter of it),
        // in the view from (1, 1) of a 10x10 image.
        let mut data = vec![10u8; 100];
        for y in 3..7 {
            for x in 3..7 {
                data[y * 10 + x] = 200;
            }
        }
        let m = Mat8 {
            width: 10,
            height: 10,
            channels: 1,
            data,
        };
        let on_square: Vec<f32> = (0..64)
            .map(|i| {
                if (2..6).contains(&(i / 8)) && (2..6).contains(&(i % 8)) {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(on_object(&m, (1, 1), (8, 8), &on_square), (0.25, 1.0));
        assert_eq!(on_object(&m, (1, 1), (8, 8), &[0.5; 64]), (0.25, 0.25));
        assert_eq!(on_object(&m, (1, 1), (8, 8), &[0.0; 64]), (0.25, 0.0));
    }

    #[test]
    fn the_ramp_runs_from_blue_to_red() {
        assert_eq!(jet(0.0), [0.0, 0.0, 0.5]);
        assert_eq!(jet(0.5), [0.5, 1.0, 0.5]);
        assert_eq!(jet(1.0), [0.5, 0.0, 0.0]);
    }
}
