//! Data layers: `Data` (an LMDB of Datums) and `ImageData` (a list of image
//! files), fed by a background thread that decodes and transforms a few
//! batches ahead on all cores; and `Input` (fixed-shape placeholder).
//!
//! A feed is a deterministic function of its position (the number of images
//! consumed): LMDB records are read in key order and wrap; a `shuffle`d list
//! is reshuffled at every wrap; crop and mirror draws come a fixed number
//! per image. So the position alone restores a feed exactly on resume.
//!
//! The random choices are Caffe's own ([`crate::caffe::rng`]): a layer takes
//! its seeds (and an ImageData `rand_skip`) from the net's Caffe generator
//! in the order Caffe's layer set-up draws them, so with a solver's
//! `random_seed` a net whose data layers come first (as they do) reads the
//! very batches Caffe reads: the same list order, crops and mirrors.
use super::staging::Staging;
use super::{BackwardArgs, BuildContext, Grads, Layer};
use crate::caffe::datum::DatumRef;
use crate::caffe::proto::{data_parameter::Db, LayerParameter, Phase};
use crate::caffe::rng::CaffeRng;
use crate::error::{Error, Result};
use crate::pipeline::decode::{read_image, ColorMode};
use crate::pipeline::image_list::{read_list, ListEntry};
use crate::pipeline::lmdb_store::LmdbReader;
use crate::pipeline::resize::resize_linear;
use crate::train::transform::{ImageRef, Transformer};
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// Where images come from.
enum Source {
    /// `mode` decodes encoded datums (native channels unless force_color/force_gray).
    Lmdb {
        reader: LmdbReader,
        keys: Vec<Vec<u8>>,
        mode: ColorMode,
    },
    List {
        entries: Vec<ListEntry>,
        root: PathBuf,
        resize: Option<(usize, usize)>,
        color: bool,
        /// With `shuffle`, the seed of the list's own generator, which
        /// shuffles the list once at set-up and again at every wrap.
        shuffle: Option<u32>,
    },
}

/// A shuffled list's order in one epoch, and the generator that gives the
/// next epoch's (each shuffle reorders the previous epoch's order, as
/// Caffe's shuffles of its line vector do).
struct Epoch {
    index: u64,
    order: Vec<usize>,
    rng: CaffeRng,
}

/// A transformed batch on the net's device: (data, labels).
type Batch = (Tensor, Tensor);

impl Source {
    fn len(&self) -> usize {
        match self {
            Source::Lmdb { keys, .. } => keys.len(),
            Source::List { entries, .. } => entries.len(),
        }
    }

    /// The source index of the image at feed position `pos`; `cache` keeps
    /// the last epoch's order of a shuffled list between calls.
    fn index_at(&self, pos: u64, cache: &mut Option<Epoch>) -> usize {
        let n = self.len() as u64;
        match self {
            Source::List {
                shuffle: Some(seed),
                ..
            } => {
                let epoch = pos / n;
                if cache.as_ref().is_none_or(|c| c.index > epoch) {
                    let mut rng = CaffeRng::new(*seed);
                    let mut order: Vec<usize> = (0..n as usize).collect();
                    rng.shuffle(&mut order);
                    *cache = Some(Epoch {
                        index: 0,
                        order,
                        rng,
                    });
                }
                let c = cache.as_mut().expect("just set");
                while c.index < epoch {
                    c.rng.shuffle(&mut c.order);
                    c.index += 1;
                }
                c.order[(pos % n) as usize]
            }
            _ => (pos % n) as usize,
        }
    }

    /// Calls `f(pixels, label)` for source image `i`. Raw LMDB datums are
    /// read in place from the memory map (CHW); other sources are decoded
    /// into a temporary buffer first and handed over as decoded (HWC), as
    /// the transformer reads either.
    fn with_image<R>(&self, i: usize, f: impl FnOnce(ImageRef<'_>, f32) -> Result<R>) -> Result<R> {
        match self {
            Source::Lmdb { reader, keys, mode } => {
                let key = String::from_utf8_lossy(&keys[i]).into_owned();
                reader
                    .with_value(&keys[i], |value| {
                        let datum = DatumRef::parse(value).map_err(|e| {
                            Error::invalid(
                                format!("{}: record {key}", reader.path().display()),
                                format!("not a Datum: {e}"),
                            )
                        })?;
                        let label = datum.label as f32;
                        if datum.encoded {
                            // Caffe decodes with the image's own channels unless forced.
                            let m = crate::pipeline::decode::decode(datum.data, *mode).map_err(
                                |e| {
                                    Error::invalid(
                                        format!("record {key}"),
                                        format!("encoded image: {e}"),
                                    )
                                },
                            )?;
                            return f((&m).into(), label);
                        }
                        let (c, h, w, values) = datum.values(&key)?;
                        f(ImageRef::chw(c, h, w, values), label)
                    })?
                    .ok_or_else(|| Error::lmdb(reader.path(), format!("record {key} vanished")))
            }
            Source::List {
                entries,
                root,
                resize,
                color,
                ..
            } => {
                let e = &entries[i];
                let mode = if *color {
                    ColorMode::Color
                } else {
                    ColorMode::Gray
                };
                let mut m = read_image(&root.join(&e.path), mode)?;
                if let Some((h, w)) = resize {
                    m = resize_linear(&m, *w, *h);
                }
                f((&m).into(), e.label as f32)
            }
        }
    }

    /// Image `i` as its source names it: the list's path as written, or the LMDB key.
    fn name(&self, i: usize) -> String {
        match self {
            Source::Lmdb { keys, .. } => String::from_utf8_lossy(&keys[i]).into_owned(),
            Source::List { entries, .. } => entries[i].path.clone(),
        }
    }

    fn describe(&self, i: usize) -> String {
        match self {
            Source::Lmdb { reader, keys, .. } => format!(
                "{}: record {}",
                reader.path().display(),
                String::from_utf8_lossy(&keys[i])
            ),
            Source::List { entries, root, .. } => root.join(&entries[i].path).display().to_string(),
        }
    }
}

struct Feed {
    source: Arc<Source>,
    transformer: Arc<Transformer>,
    batch: usize,
    shape: (usize, usize, usize),
    prefetch: usize,
    /// Position of the feed's first image (an ImageData `rand_skip`); the
    /// image at `position` takes the crop and mirror draws of image
    /// `position - start`.
    start: u64,
    /// Position of the next batch handed to the net.
    position: u64,
    rx: Option<Receiver<Result<Batch>>>,
    /// Where batches go. The producer copies each one there itself, so a
    /// GPU's host-to-device copy overlaps the net's work instead of
    /// stalling it.
    device: Device,
}

impl Feed {
    /// Starts the background producer at the current position.
    fn start(&mut self) {
        let (tx, rx) = sync_channel(self.prefetch.max(1));
        let (source, tf) = (self.source.clone(), self.transformer.clone());
        let (batch, (c, h, w), mut pos) = (self.batch, self.shape, self.position);
        let start = self.start;
        let device = self.device.clone();
        std::thread::spawn(move || {
            let mut cache = None;
            let mut draws = tf.draw_stream();
            let per = c * h * w;
            let mut staging = Staging::new(&device, batch * per);
            loop {
                // Caffe's draws go image after image, so they are taken here,
                // in order, and the images then transform in parallel.
                let idx: Vec<(u64, usize, [u32; 3])> = (0..batch as u64)
                    .map(|k| {
                        let p = pos + k;
                        (
                            p,
                            source.index_at(p, &mut cache),
                            draws.image(p.saturating_sub(start)),
                        )
                    })
                    .collect();
                let k = draws.per_image();
                let mut labels = vec![0.0f32; batch];
                // Every element is overwritten below, so a reused buffer needs no clearing.
                let result = staging
                    .buffer()
                    .and_then(|data| data
                    .par_chunks_mut(per)
                    .zip(labels.par_iter_mut())
                    .zip(idx.par_iter())
                    .try_for_each(|((out, label), (p, i, d))| -> Result<()> {
                        let (p, i) = (*p, *i);
                        source.with_image(i, |img, l| {
                            let (ic, ih, iw) = (img.channels, img.height, img.width);
                            if tf.out_shape(ic, ih, iw) != (c, h, w) {
                                return Err(Error::model(source.describe(i), format!("image is {ic}x{ih}x{iw}, unlike the first one; resize the data (to-lmdb --resize-*) or set crop_size")));
                            }
                            tf.apply(img, &d[..k], p, || source.describe(i), out)?;
                            *label = l;
                            Ok(())
                        })
                    })
                    )
                    .and_then(|()| staging.upload((batch, c, h, w), labels));
                let failed = result.is_err();
                if tx.send(result).is_err() || failed {
                    return;
                }
                pos += batch as u64;
            }
        });
        self.rx = Some(rx);
    }

    fn next(&mut self) -> Result<Batch> {
        if self.rx.is_none() {
            self.start();
        }
        let batch = self
            .rx
            .as_ref()
            .expect("started")
            .recv()
            .map_err(|_| Error::model("data feed", "the loader thread stopped"))??;
        self.position += self.batch as u64;
        Ok(batch)
    }
}

pub struct DataLayer {
    name: String,
    feed: Feed,
    tops: usize,
}

impl DataLayer {
    pub fn new(param: &LayerParameter, ctx: &BuildContext, seed: u64) -> Result<Self> {
        let name = param.name().to_string();
        let lctx = format!("layer '{name}'");
        let tp = param.transform_param.clone().unwrap_or_default();
        let transformer = Transformer::new(&tp, ctx.phase, seed, |p| ctx.resolve(p), &lctx)?
            .with_rotate90(ctx.rotate90 && ctx.phase == Phase::Train)
            .with_augment(ctx.augment.filter(|_| ctx.phase == Phase::Train));
        // Caffe's set-up draws from its global generator in this order: the
        // transformer's seed (drawn again below, the second one kept), a
        // shuffled list's seed, an ImageData rand_skip, the transformer's
        // seed, the prefetch thread's seed.
        if transformer.needs_rand() {
            ctx.caffe_rng_rand();
        }
        let (source, batch, prefetch, start) = if param.r#type() == "Data" {
            let dp = param
                .data_param
                .clone()
                .ok_or_else(|| Error::model(&lctx, "needs data_param"))?;
            let path = ctx.resolve(dp.source());
            if dp.backend() == Db::Leveldb && !path.join("data.mdb").exists() {
                return Err(Error::model(&lctx, format!("{} is not an LMDB; only backend: LMDB is supported (convert with `flickr-style to-lmdb`)", path.display())));
            }
            let reader = LmdbReader::open(&path)?;
            let keys = reader.keys()?;
            let mode = match (tp.force_color(), tp.force_gray()) {
                (true, true) => {
                    return Err(Error::model(
                        &lctx,
                        "force_color and force_gray cannot both be set",
                    ))
                }
                (true, false) => ColorMode::Color,
                (false, true) => ColorMode::Gray,
                _ => ColorMode::Native,
            };
            // Caffe 1.0's Data layer ignores data_param.rand_skip.
            (
                Source::Lmdb { reader, keys, mode },
                dp.batch_size() as usize,
                dp.prefetch() as usize,
                0,
            )
        } else {
            let ip = param
                .image_data_param
                .clone()
                .ok_or_else(|| Error::model(&lctx, "needs image_data_param"))?;
            let entries = read_list(&ctx.resolve(ip.source()))?;
            let resize = match (ip.new_height(), ip.new_width()) {
                (0, 0) => None,
                (h, w) if h > 0 && w > 0 => Some((h as usize, w as usize)),
                _ => {
                    return Err(Error::model(
                        &lctx,
                        "new_height and new_width must be set together",
                    ))
                }
            };
            let root = ctx.resolve(ip.root_folder());
            if entries.is_empty() {
                return Err(Error::model(&lctx, "the data source is empty"));
            }
            if entries.len() as u64 > u32::MAX as u64 {
                return Err(Error::model(
                    &lctx,
                    format!(
                        "{} images are more than Caffe's 32-bit draws can shuffle or skip",
                        entries.len()
                    ),
                ));
            }
            let shuffle = ip.shuffle().then(|| ctx.caffe_rng_rand());
            // Caffe skips a random number of lines below rand_skip.
            let skip = match ip.rand_skip() {
                0 => 0,
                r => ctx.caffe_rng_rand() % r,
            };
            if skip as usize >= entries.len() {
                return Err(Error::model(
                    &lctx,
                    format!(
                        "rand_skip drew {skip} lines to skip, but {} has only {}: set rand_skip to at most the list's length",
                        ip.source(),
                        entries.len()
                    ),
                ));
            }
            let src = Source::List {
                entries,
                root,
                resize,
                color: ip.is_color(),
                shuffle,
            };
            (src, ip.batch_size() as usize, 4, skip as u64)
        };
        if source.len() == 0 {
            return Err(Error::model(&lctx, "the data source is empty"));
        }
        if batch == 0 {
            return Err(Error::model(&lctx, "batch_size must be > 0"));
        }
        let transformer = if transformer.needs_rand() {
            transformer.with_caffe_seed(ctx.caffe_rng_rand())
        } else {
            transformer
        };
        ctx.caffe_rng_rand(); // the prefetch thread's seed
        let mut cache = None;
        let first = source.index_at(start, &mut cache);
        let (c, h, w) =
            source.with_image(first, |img, _| Ok((img.channels, img.height, img.width)))?;
        let shape = transformer.out_shape(c, h, w);
        Ok(DataLayer {
            name,
            feed: Feed {
                source: Arc::new(source),
                transformer: Arc::new(transformer),
                batch,
                shape,
                prefetch,
                start,
                position: start,
                rx: None,
                device: ctx.device.clone(),
            },
            tops: param.top.len(),
        })
    }
}

impl Layer for DataLayer {
    fn type_name(&self) -> &'static str {
        match *self.feed.source {
            Source::Lmdb { .. } => "Data",
            Source::List { .. } => "ImageData",
        }
    }
    fn is_data(&self) -> bool {
        true
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        if !bottom.is_empty() {
            return Err(Error::model(
                format!("layer '{}'", self.name),
                "a data layer takes no bottom",
            ));
        }
        let (c, h, w) = self.feed.shape;
        let mut tops = vec![vec![self.feed.batch, c, h, w]];
        if self.tops > 1 {
            tops.push(vec![self.feed.batch]);
        }
        Ok(tops)
    }
    fn forward(&mut self, _bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let (data, labels) = self.feed.next()?;
        let mut tops = vec![data];
        if self.tops > 1 {
            tops.push(labels);
        }
        Ok(tops)
    }
    /// The batches the producer holds beyond the top: `prefetch` waiting in
    /// the queue and one being made (a CPU tensor takes its buffer, so each
    /// is a fresh allocation), with their labels.
    fn workspace_len(&self) -> (usize, usize) {
        let (c, h, w) = self.feed.shape;
        let batch = self
            .feed
            .batch
            .saturating_mul(c.saturating_mul(h).saturating_mul(w).saturating_add(1));
        (batch.saturating_mul(self.feed.prefetch.max(1) + 1), 0)
    }
    fn state(&self) -> Option<u64> {
        Some(self.feed.position)
    }
    fn source_len(&self) -> Option<usize> {
        Some(self.feed.source.len())
    }
    fn last_batch_sources(&self) -> Option<Vec<String>> {
        let batch = self.feed.batch as u64;
        let first = self.feed.position.checked_sub(batch)?;
        let mut cache = None;
        Some(
            (first..first + batch)
                .map(|pos| {
                    self.feed
                        .source
                        .name(self.feed.source.index_at(pos, &mut cache))
                })
                .collect(),
        )
    }
    fn restore_state(&mut self, state: u64) {
        self.feed.position = state;
        self.feed.rx = None; // the producer restarts from here on the next batch
    }
    fn backward(&mut self, _a: &BackwardArgs) -> Result<Grads> {
        Ok((vec![], vec![]))
    }
}

/// `Input`: tops of fixed shapes (deploy nets), filled with zeros so `time`
/// can run a net without data.
pub struct Input {
    shapes: Vec<Vec<usize>>,
    device: Device,
}

impl Input {
    pub fn new(param: &LayerParameter, device: Device) -> Result<Self> {
        let shapes: Vec<Vec<usize>> = param
            .input_param
            .as_ref()
            .map(|p| {
                p.shape
                    .iter()
                    .map(|s| s.dim.iter().map(|&d| d as usize).collect())
                    .collect()
            })
            .unwrap_or_default();
        if shapes.is_empty() {
            return Err(Error::model(
                format!("layer '{}'", param.name()),
                "input_param needs a shape",
            ));
        }
        Ok(Input { shapes, device })
    }
}

impl Layer for Input {
    fn type_name(&self) -> &'static str {
        "Input"
    }
    fn is_data(&self) -> bool {
        true
    }
    fn setup(&mut self, _bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        Ok(self.shapes.clone())
    }
    fn forward(&mut self, _bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        self.shapes
            .iter()
            .map(|s| {
                Ok(Tensor::zeros(
                    s.as_slice(),
                    candle_core::DType::F32,
                    &self.device,
                )?)
            })
            .collect()
    }
}

/// `DummyData`: tops of given shapes from fillers (constant 0 by default).
/// A constant top is filled once; any other filler draws new values on
/// every forward pass, each from its own seeded stream, so the layer's
/// state is its pass count.
pub struct DummyData {
    tops: Vec<(Vec<usize>, crate::caffe::proto::FillerParameter)>,
    values: Vec<Option<Tensor>>,
    seed: u64,
    calls: u64,
    name: String,
    device: Device,
}

impl DummyData {
    pub fn new(param: &LayerParameter, device: Device, seed: u64) -> Result<Self> {
        let name = param.name().to_string();
        let bad = |m: String| Error::model(format!("layer '{name}'"), m);
        let p = param.dummy_data_param.clone().unwrap_or_default();
        let n = param.top.len();
        if n == 0 {
            return Err(bad("needs at least one top".into()));
        }
        let pick = |len: usize, what: &str| -> Result<()> {
            if len == 1 || len == n {
                Ok(())
            } else {
                Err(bad(format!(
                    "{what} must be given once or once per top ({n} tops), got {len}"
                )))
            }
        };
        let shapes: Vec<Vec<usize>> = if !p.num.is_empty() {
            // Legacy 4-D num/channels/height/width, each once or per top.
            if !p.shape.is_empty() {
                return Err(bad(
                    "give either shape or num/channels/height/width, not both".into(),
                ));
            }
            for (v, what) in [
                (&p.num, "num"),
                (&p.channels, "channels"),
                (&p.height, "height"),
                (&p.width, "width"),
            ] {
                pick(v.len(), what)?;
            }
            let at = |v: &Vec<u32>, i: usize| v[if v.len() == 1 { 0 } else { i }] as usize;
            (0..n)
                .map(|i| {
                    vec![
                        at(&p.num, i),
                        at(&p.channels, i),
                        at(&p.height, i),
                        at(&p.width, i),
                    ]
                })
                .collect()
        } else {
            if p.shape.is_empty() {
                return Err(bad("dummy_data_param needs a shape".into()));
            }
            pick(p.shape.len(), "shape")?;
            (0..n)
                .map(|i| {
                    let s = &p.shape[if p.shape.len() == 1 { 0 } else { i }];
                    s.dim
                        .iter()
                        .map(|&d| {
                            usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}")))
                        })
                        .collect::<Result<Vec<usize>>>()
                })
                .collect::<Result<_>>()?
        };
        let fillers: Vec<crate::caffe::proto::FillerParameter> = match p.data_filler.len() {
            0 => vec![Default::default(); n],
            1 => vec![p.data_filler[0].clone(); n],
            k if k == n => p.data_filler.clone(),
            k => {
                return Err(bad(format!(
                    "data_filler must be given 0, 1 or {n} times, got {k}"
                )))
            }
        };
        Ok(DummyData {
            tops: shapes.into_iter().zip(fillers).collect(),
            values: vec![None; n],
            seed,
            calls: 0,
            name,
            device,
        })
    }
}

impl Layer for DummyData {
    fn type_name(&self) -> &'static str {
        "DummyData"
    }
    fn is_data(&self) -> bool {
        true
    }
    fn setup(&mut self, _bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        Ok(self.tops.iter().map(|(s, _)| s.clone()).collect())
    }
    fn forward(&mut self, _bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let ctx = format!("layer '{}'", self.name);
        let call = self.calls;
        self.calls += 1;
        for (i, ((shape, filler), slot)) in self.tops.iter().zip(&mut self.values).enumerate() {
            let constant = filler.r#type() == "constant";
            if constant && slot.is_some() {
                continue;
            }
            let seed = self.seed
                ^ (call.wrapping_add(1)).wrapping_mul(0xD6E8_FEB8_6659_FD93)
                ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            // Caffe refills from its global generator, whose position here
            // depends on everything drawn before; each refill takes its own
            // stream instead, so a run repeats and resumes.
            let mut rng = CaffeRng::new((seed ^ (seed >> 32)) as u32);
            let v = crate::train::filler::fill(filler, shape, &mut rng, &ctx)?;
            *slot = Some(Tensor::from_vec(v, shape.as_slice(), &self.device)?);
        }
        Ok(self
            .values
            .iter()
            .map(|v| v.clone().expect("filled"))
            .collect())
    }
    fn state(&self) -> Option<u64> {
        Some(self.calls)
    }
    fn restore_state(&mut self, state: u64) {
        self.calls = state;
    }
}
