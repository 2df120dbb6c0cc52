//! WindowData: Caffe's data layer for fine-tuning a classifier on detection
//! windows (R-CNN, Caffe's `finetune_pascal_detection` example). A window
//! file lists images and boxes in them with their class and their overlap
//! with an object:
//!
//! ```text
//! # 0            (image index, counting from 0)
//! /path/img.jpg  (prefixed with root_folder, as a string)
//! 3 480 640      (channels, height, width)
//! 2              (windows)
//! 1 0.8 10 20 200 300   (class, overlap, x1, y1, x2, y2: inclusive pixels)
//! 0 0.1 0 0 50 50
//! ```
//!
//! Windows overlapping at least `fg_threshold` are foreground (their class,
//! which must be above 0), those below `bg_threshold` background (class 0),
//! the others unused. Each batch draws `fg_fraction` of its items from the
//! foreground windows and the rest, first, from the background ones, each
//! window at random, mirrored at random with `mirror`. A window grows by
//! `context_pad` pixels of context (of the warped size) on each side, or to
//! its tightest square with `crop_mode: "square"`; the part inside the image
//! is resized (OpenCV's bilinear) to where it falls in the `crop_size`
//! square, the rest stays 0. Values are the BGR pixels minus the mean
//! (`transform_param`'s mean file, read at the crop's offset, or mean
//! values), times `window_data_param.scale`.
//!
//! The draws are Caffe's: the layer seeds its own MT19937 from the net's
//! Caffe generator at set-up, in Caffe's order, and takes one number per
//! window (its index modulo the set's size) and one for mirroring, so a
//! seeded net reads Caffe's batches. The resumable state is the number of
//! batches made (the draws are replayed).
use super::{BackwardArgs, BuildContext, Grads, Layer};
use crate::caffe::mean_file::MeanImage;
use crate::caffe::proto::{LayerParameter, Phase, WindowDataParameter};
use crate::caffe::rng::CaffeRng;
use crate::error::{Error, Result};
use crate::pipeline::decode::{read_image, ColorMode};
use crate::pipeline::mat::Mat8;
use crate::pipeline::resize::resize_linear;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One window: its image, class and inclusive box.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Window {
    image: usize,
    label: f32,
    x1: i32,
    y1: i32,
    x2: i32,
    y2: i32,
}

/// What to subtract from each value.
enum Mean {
    None,
    Values(Vec<f32>),
    /// The mean image's CHW values, its width, and the crop's offset in
    /// it (on both axes, as Caffe reads it).
    Image {
        values: Vec<f32>,
        height: usize,
        width: usize,
        off: usize,
    },
}

pub struct WindowData {
    ctx: String,
    images: Vec<PathBuf>,
    fg: Vec<Window>,
    bg: Vec<Window>,
    batch: usize,
    crop: usize,
    mirror: bool,
    context_pad: usize,
    square: bool,
    scale: f32,
    fg_fraction: f32,
    mean: Mean,
    /// The layer's own generator (Caffe's prefetch_rng_) and its seed.
    rng: CaffeRng,
    seed: u32,
    /// Batches made so far.
    made: u64,
    /// Decoded images kept with `cache_images`.
    cache: Option<Mutex<HashMap<usize, Arc<Mat8>>>>,
    device: Device,
}

/// A window file's contents: image paths (root_folder prepended), the
/// channels of the last image listed (Caffe sizes its top with them) and
/// each window with its overlap.
struct WindowFile {
    images: Vec<PathBuf>,
    channels: usize,
    windows: Vec<(Window, f32)>,
}

/// The whitespace-separated words of a window file, with errors that say
/// where the file went wrong.
struct Words<'a> {
    words: std::str::SplitWhitespace<'a>,
    path: &'a Path,
}

impl<'a> Words<'a> {
    fn bad(&self, what: String) -> Error {
        Error::invalid(self.path.display(), what)
    }

    /// The next word, which image `n`'s `what` must be.
    fn word(&mut self, n: usize, what: &str) -> Result<&'a str> {
        let w = self.words.next();
        w.ok_or_else(|| self.bad(format!("image {n}: the file ends before its {what}")))
    }

    /// The next word as a number.
    fn number(&mut self, n: usize, what: &str) -> Result<f64> {
        let w = self.word(n, what)?;
        w.parse::<f64>()
            .map_err(|_| self.bad(format!("image {n}: its {what} '{w}' is not a number")))
    }
}

fn read_window_file(
    path: &Path,
    root_folder: &str,
    base: &dyn Fn(&str) -> PathBuf,
) -> Result<WindowFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(path.display(), format!("cannot read the window file: {e}")))?;
    let mut words = Words {
        words: text.split_whitespace(),
        path,
    };
    let mut file = WindowFile {
        images: Vec::new(),
        channels: 0,
        windows: Vec::new(),
    };
    while let Some(hash) = words.words.next() {
        let n = file.images.len();
        if hash != "#" {
            return Err(words.bad(format!("image {n}: expected '#', found '{hash}'")));
        }
        let index = words.number(n, "index")?;
        if index != n as f64 {
            return Err(words.bad(format!(
                "image indices must count from 0 in order (Caffe looks windows' images up by it): found {index} where {n} was due"
            )));
        }
        let image = words.word(n, "path")?;
        file.images.push(base(&format!("{root_folder}{image}")));
        file.channels = words.number(n, "channels")? as usize;
        words.number(n, "height")?;
        words.number(n, "width")?;
        let count = words.number(n, "window count")?;
        if !(0.0..=1e9).contains(&count) || count.fract() != 0.0 {
            return Err(words.bad(format!("image {n}: window count {count}")));
        }
        for w in 0..count as usize {
            let mut v = [0f64; 6];
            for (slot, what) in v
                .iter_mut()
                .zip(["class", "overlap", "x1", "y1", "x2", "y2"])
            {
                *slot = words.number(n, &format!("window {w}'s {what}"))?;
            }
            let int = |x: f64| x.clamp(i32::MIN as f64, i32::MAX as f64) as i32;
            file.windows.push((
                Window {
                    image: n,
                    label: int(v[0]) as f32,
                    x1: int(v[2]),
                    y1: int(v[3]),
                    x2: int(v[4]),
                    y2: int(v[5]),
                },
                v[1] as f32,
            ));
        }
    }
    if file.images.is_empty() {
        return Err(words.bad("the window file is empty".into()));
    }
    Ok(file)
}

impl WindowData {
    pub fn new(param: &LayerParameter, ctx: &BuildContext) -> Result<Self> {
        let lctx = format!("layer '{}'", param.name());
        let p: WindowDataParameter = param
            .window_data_param
            .clone()
            .ok_or_else(|| Error::model(&lctx, "needs window_data_param"))?;
        if p.crop_size.is_some() || p.mirror.is_some() || p.mean_file.is_some() {
            return Err(Error::model(
                &lctx,
                "window_data_param's crop_size, mirror and mean_file are not read (as in Caffe 1.0): give them in transform_param",
            ));
        }
        let t = param.transform_param.clone().unwrap_or_default();
        if t.scale.is_some() || t.force_color.is_some() || t.force_gray.is_some() {
            return Err(Error::model(
                &lctx,
                "WindowData reads only crop_size, mirror, mean_file and mean_value from transform_param (its scale is window_data_param.scale)",
            ));
        }
        let crop = t.crop_size() as usize;
        if crop == 0 {
            return Err(Error::model(&lctx, "needs transform_param.crop_size > 0"));
        }
        let batch = p.batch_size() as usize;
        if batch == 0 {
            return Err(Error::model(
                &lctx,
                "needs window_data_param.batch_size > 0",
            ));
        }
        let context_pad = p.context_pad() as usize;
        if 2 * context_pad >= crop {
            return Err(Error::model(
                &lctx,
                format!("context_pad {context_pad} leaves nothing of a {crop}-pixel crop"),
            ));
        }
        let square = match p.crop_mode() {
            "warp" => false,
            "square" => true,
            other => {
                return Err(Error::model(
                    &lctx,
                    format!("crop_mode \"{other}\" is not one of \"warp\", \"square\""),
                ))
            }
        };
        let source = ctx.resolve(p.source());
        let WindowFile {
            images,
            channels,
            windows,
        } = read_window_file(&source, p.root_folder(), &|f| ctx.resolve(f))?;
        if channels != 3 {
            return Err(Error::invalid(
                source.display(),
                format!("the last image lists {channels} channels; WindowData reads colour (3), as Caffe does"),
            ));
        }
        let (mut fg, mut bg) = (Vec::new(), Vec::new());
        for (w, overlap) in windows {
            if overlap >= p.fg_threshold() {
                if w.label <= 0.0 {
                    return Err(Error::invalid(
                        source.display(),
                        format!("a foreground window of image {} has class {}; foreground classes start at 1 (0 is the background)", w.image, w.label),
                    ));
                }
                fg.push(w);
            } else if overlap < p.bg_threshold() {
                bg.push(Window { label: 0.0, ..w });
            }
        }
        let num_fg = (batch as f32 * p.fg_fraction()) as usize;
        for (set, wanted, name) in [
            (&fg, num_fg, "foreground"),
            (&bg, batch - num_fg.min(batch), "background"),
        ] {
            if wanted > 0 && set.is_empty() {
                return Err(Error::invalid(
                    source.display(),
                    format!("has no {name} window, but each batch draws {wanted}"),
                ));
            }
        }
        let mean = match (&t.mean_file, t.mean_value.as_slice()) {
            (Some(_), [_, ..]) => {
                return Err(Error::model(
                    &lctx,
                    "transform_param cannot have both mean_file and mean_value",
                ))
            }
            (Some(f), []) => {
                let m = MeanImage::read_binaryproto(&ctx.resolve(f))
                    .map_err(|e| Error::model(&lctx, format!("transform_param.mean_file: {e}")))?;
                if m.channels != 3 || m.width < crop || m.height < crop {
                    return Err(Error::model(
                        &lctx,
                        format!(
                            "the mean file is {}x{}x{}; WindowData needs 3 channels of at least the {crop}x{crop} crop",
                            m.channels, m.height, m.width
                        ),
                    ));
                }
                // Caffe offsets both axes by the width's margin.
                let off = (m.width as i64 - crop as i64) / 2;
                if off as usize + crop > m.height {
                    return Err(Error::model(
                        &lctx,
                        format!(
                            "the mean file is {}x{}: Caffe reads its {crop}x{crop} window {off} pixels in on both axes (the width's margin), past its height; use a mean image at least as tall as it is wide",
                            m.height, m.width
                        ),
                    ));
                }
                Mean::Image {
                    values: m.values_f32(),
                    height: m.height,
                    width: m.width,
                    off: off as usize,
                }
            }
            (None, []) => Mean::None,
            (None, [v]) => Mean::Values(vec![*v; 3]),
            (None, v) if v.len() == 3 => Mean::Values(v.to_vec()),
            (None, v) => {
                return Err(Error::model(
                    &lctx,
                    format!("give 1 mean_value or 3 (one per channel), not {}", v.len()),
                ))
            }
        };
        // Caffe's set-up draws: the transformer's seed, the window
        // sampler's seed (this layer's generator), the transformer's seed
        // again, the prefetch thread's seed.
        let mirror = t.mirror();
        let transformer_draws = mirror || (ctx.phase == Phase::Train && crop > 0);
        if transformer_draws {
            ctx.caffe_rng_rand();
        }
        let seed = ctx.caffe_rng_rand();
        if transformer_draws {
            ctx.caffe_rng_rand();
        }
        ctx.caffe_rng_rand();
        Ok(WindowData {
            ctx: lctx,
            images,
            fg,
            bg,
            batch,
            crop,
            mirror,
            context_pad,
            square,
            scale: p.scale(),
            fg_fraction: p.fg_fraction(),
            mean,
            rng: CaffeRng::new(seed),
            seed,
            made: 0,
            cache: p.cache_images().then(|| Mutex::new(HashMap::new())),
            device: ctx.device.clone(),
        })
    }

    /// The (window, mirrored) items of the next batch, drawn as Caffe draws
    /// them: background items first.
    fn draw(&mut self) -> Vec<(Window, bool)> {
        let num_fg = ((self.batch as f32 * self.fg_fraction) as usize).min(self.batch);
        let mut items = Vec::with_capacity(self.batch);
        for (set, n) in [(&self.bg, self.batch - num_fg), (&self.fg, num_fg)] {
            for _ in 0..n {
                let w = set[self.rng.next_u32() as usize % set.len()];
                let flip = self.mirror && self.rng.next_u32() % 2 == 1;
                items.push((w, flip));
            }
        }
        items
    }

    /// Image `i`, decoded as OpenCV's imread in colour (kept with cache_images).
    fn image(&self, i: usize) -> Result<Arc<Mat8>> {
        if let Some(cache) = &self.cache {
            if let Some(m) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&i) {
                return Ok(m.clone());
            }
        }
        let m = Arc::new(read_image(&self.images[i], ColorMode::Color)?);
        if let Some(cache) = &self.cache {
            cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(i, m.clone());
        }
        Ok(m)
    }

    /// One item's `3 x crop x crop` values.
    fn item(&self, w: Window, flip: bool, out: &mut [f32]) -> Result<()> {
        let img = self.image(w.image)?;
        let (cols, rows) = (img.width as i32, img.height as i32);
        let crop = self.crop as i32;
        let (mut x1, mut y1, mut x2, mut y2) = (w.x1, w.y1, w.x2, w.y2);
        let (mut size_w, mut size_h, mut pad_w, mut pad_h) = (crop, crop, 0i32, 0i32);
        if self.context_pad > 0 || self.square {
            // Caffe's float arithmetic, step by step.
            let context_scale = crop as f32 / (crop - 2 * self.context_pad as i32) as f32;
            let mut half_h = (y2 - y1 + 1) as f32 / 2.0;
            let mut half_w = (x2 - x1 + 1) as f32 / 2.0;
            let cx = x1 as f32 + half_w;
            let cy = y1 as f32 + half_h;
            if self.square {
                if half_h > half_w {
                    half_w = half_h;
                } else {
                    half_h = half_w;
                }
            }
            x1 = (cx - half_w * context_scale).round() as i32;
            x2 = (cx + half_w * context_scale).round() as i32;
            y1 = (cy - half_h * context_scale).round() as i32;
            y2 = (cy + half_h * context_scale).round() as i32;
            let (unclipped_h, unclipped_w) = (y2 - y1 + 1, x2 - x1 + 1);
            let (px1, py1) = ((-x1).max(0), (-y1).max(0));
            let (px2, py2) = ((x2 - cols + 1).max(0), (y2 - rows + 1).max(0));
            x1 += px1;
            x2 -= px2;
            y1 += py1;
            y2 -= py2;
            let scale_x = crop as f32 / unclipped_w as f32;
            let scale_y = crop as f32 / unclipped_h as f32;
            size_w = ((x2 - x1 + 1) as f32 * scale_x).round() as i32;
            size_h = ((y2 - y1 + 1) as f32 * scale_y).round() as i32;
            let px1 = (px1 as f32 * scale_x).round() as i32;
            let px2 = (px2 as f32 * scale_x).round() as i32;
            pad_h = (py1 as f32 * scale_y).round() as i32;
            pad_w = if flip { px2 } else { px1 };
            size_h = size_h.min(crop - pad_h);
            size_w = size_w.min(crop - pad_w);
        }
        let inside = 0 <= x1 && x1 <= x2 && x2 < cols && 0 <= y1 && y1 <= y2 && y2 < rows;
        if !inside || size_w <= 0 || size_h <= 0 {
            return Err(Error::invalid(
                self.images[w.image].display(),
                format!(
                    "window ({}, {})-({}, {}) of this {cols}x{rows} image leaves no region to warp{}",
                    w.x1,
                    w.y1,
                    w.x2,
                    w.y2,
                    if inside { "" } else { " (it reaches outside the image)" }
                ),
            ));
        }
        let (rw, rh) = ((x2 - x1 + 1) as usize, (y2 - y1 + 1) as usize);
        let mut region = Vec::with_capacity(rw * rh * 3);
        for y in y1 as usize..=y2 as usize {
            let row = &img.data[(y * img.width + x1 as usize) * 3..][..rw * 3];
            region.extend_from_slice(row);
        }
        let warped = resize_linear(
            &Mat8::new(rw, rh, 3, region),
            size_w as usize,
            size_h as usize,
        );
        let (cs, wd, ht) = (self.crop, warped.width, warped.height);
        out.fill(0.0);
        for h in 0..ht {
            for x in 0..wd {
                let src = if flip { wd - 1 - x } else { x };
                for c in 0..3 {
                    let pixel = f32::from(warped.data[(h * wd + src) * 3 + c]);
                    let (oy, ox) = (h + pad_h as usize, x + pad_w as usize);
                    let mean = match &self.mean {
                        Mean::None => 0.0,
                        Mean::Values(v) => v[c],
                        Mean::Image {
                            values,
                            height,
                            width,
                            off,
                        } => values[(c * height + oy + off) * width + ox + off],
                    };
                    // (x - 0) is x exactly, so no mean needs no case of its own.
                    out[(c * cs + oy) * cs + ox] = (pixel - mean) * self.scale;
                }
            }
        }
        Ok(())
    }
}

impl Layer for WindowData {
    fn type_name(&self) -> &'static str {
        "WindowData"
    }
    fn is_data(&self) -> bool {
        true
    }
    fn setup(&mut self, bottom: &[Vec<usize>]) -> Result<Vec<Vec<usize>>> {
        if !bottom.is_empty() {
            return Err(Error::model(&self.ctx, "a data layer takes no bottom"));
        }
        Ok(vec![
            vec![self.batch, 3, self.crop, self.crop],
            vec![self.batch],
        ])
    }
    fn forward(&mut self, _bottom: &[Tensor], _phase: Phase) -> Result<Vec<Tensor>> {
        let items = self.draw();
        self.made += 1;
        let per = 3 * self.crop * self.crop;
        let mut data = vec![0f32; self.batch * per];
        data.par_chunks_mut(per)
            .zip(&items)
            .map(|(out, &(w, flip))| self.item(w, flip, out))
            .collect::<Result<Vec<()>>>()?;
        let labels: Vec<f32> = items.iter().map(|(w, _)| w.label).collect();
        Ok(vec![
            Tensor::from_vec(data, (self.batch, 3, self.crop, self.crop), &self.device)?,
            Tensor::from_vec(labels, self.batch, &self.device)?,
        ])
    }
    fn workspace_len(&self) -> (usize, usize) {
        (self.batch.saturating_mul(3 * self.crop * self.crop + 1), 0)
    }
    fn state(&self) -> Option<u64> {
        Some(self.made)
    }
    fn restore_state(&mut self, state: u64) {
        self.rng = CaffeRng::new(self.seed);
        self.made = 0;
        for _ in 0..state {
            self.draw();
            self.made += 1;
        }
    }
    fn backward(&mut self, _a: &BackwardArgs) -> Result<Grads> {
        Ok((vec![], vec![]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path as a prototxt string can hold it: a Windows path's
    /// backslashes would be escapes there (the lists' form has `/`).
    fn slashed(p: &Path) -> String {
        crate::fsutil::list_path(p).expect("UTF-8 test paths")
    }

    fn fixtures() -> PathBuf {
        // Absolute on this platform: a build for Windows made elsewhere
        // keeps a `/…` crate root.
        std::path::absolute(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/caffe-ref/fixtures"),
        )
        .unwrap()
    }

    /// A WindowData layer over `windows` (the window file's text) with
    /// `params` added to window_data_param.
    fn layer(dir: &Path, windows: &str, params: &str) -> Result<WindowData> {
        let file = dir.join("w.txt");
        std::fs::write(&file, windows).unwrap();
        let text = format!(
            r#"name: "w" type: "WindowData" top: "data" top: "label"
transform_param {{ mirror: true crop_size: 16 }}
window_data_param {{ source: "{}" root_folder: "{}/images/" batch_size: 4 {params} }}"#,
            slashed(&file),
            slashed(&fixtures())
        );
        let p: LayerParameter = crate::caffe::prototxt::parse(&text, Path::new("w")).unwrap();
        WindowData::new(&p, &BuildContext::cpu(dir, 5, Phase::Train))
    }

    const GOOD: &str = "# 0\nanimal/cat.jpg\n3 360 480\n3\n1 0.9 10 10 200 200\n0 0.1 0 0 50 50\n2 0.7 300 100 479 359\n";

    #[test]
    fn a_resumed_layer_draws_the_batches_that_follow() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = layer(dir.path(), GOOD, "context_pad: 2").unwrap();
        a.setup(&[]).unwrap();
        let batches: Vec<Vec<f32>> = (0..3)
            .map(|_| super::super::to_vec(&a.forward(&[], Phase::Train).unwrap()[0]).unwrap())
            .collect();
        let mut b = layer(dir.path(), GOOD, "context_pad: 2").unwrap();
        b.restore_state(a.state().unwrap() - 1);
        let last = super::super::to_vec(&b.forward(&[], Phase::Train).unwrap()[0]).unwrap();
        assert_eq!(last, batches[2]);
        assert_ne!(batches[1], batches[2]);
    }

    #[test]
    fn a_mean_image_caffe_would_read_past_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mean = MeanImage {
            channels: 3,
            height: 16,
            width: 40,
            values: vec![100.0; 3 * 16 * 40],
        };
        mean.write_binaryproto(&dir.path().join("mean.binaryproto"))
            .unwrap();
        std::fs::write(dir.path().join("w.txt"), GOOD).unwrap();
        let text = format!(
            r#"name: "w" type: "WindowData" top: "data" top: "label"
transform_param {{ crop_size: 16 mean_file: "mean.binaryproto" }}
window_data_param {{ source: "w.txt" root_folder: "{}/images/" batch_size: 2 }}"#,
            slashed(&fixtures())
        );
        let p: LayerParameter = crate::caffe::prototxt::parse(&text, Path::new("w")).unwrap();
        let err = WindowData::new(&p, &BuildContext::cpu(dir.path(), 5, Phase::Train))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("past its height"), "{err}");
    }

    #[test]
    fn bad_window_files_are_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = |windows: &str, params: &str| match layer(dir.path(), windows, params) {
            Ok(mut l) => l.forward(&[], Phase::Train).err().map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        for (windows, params, want) in [
            ("", "", "the window file is empty"),
            ("# 1\na.jpg\n3 1 1\n0\n", "", "count from 0"),
            ("% 0\n", "", "expected '#'"),
            ("# 0\na.jpg\n3 1 1\n2\n1 0.9 0 0 5\n", "", "ends before"),
            (
                "# 0\na.jpg\n3 1 1\n1\n1 high 0 0 5 5\n",
                "",
                "'high' is not a number",
            ),
            ("# 0\na.jpg\n1 1 1\n1\n0 0.1 0 0 5 5\n", "", "3"),
            ("# 0\na.jpg\n3 1 1\n1\n0 0.9 0 0 5 5\n", "", "class 0"),
            (
                "# 0\na.jpg\n3 1 1\n1\n0 0.1 0 0 5 5\n",
                "",
                "no foreground window",
            ),
            (
                "# 0\nanimal/cat.jpg\n3 1 1\n2\n1 0.9 0 0 500 50\n0 0.1 0 0 5 5\n",
                "fg_fraction: 1",
                "reaches outside",
            ),
            (GOOD, "crop_mode: \"round\"", "crop_mode"),
            (GOOD, "crop_size: 4", "transform_param"),
        ] {
            let got = err(windows, params).unwrap_or_default();
            assert!(got.contains(want), "{windows:?} {params}: {got}");
        }
        assert!(err(GOOD, "").is_none());
    }
}
