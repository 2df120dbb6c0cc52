//! Caffe's DataTransformer: crop (random in TRAIN, centred in TEST), mirror
//! (random in both phases when enabled), mean subtraction (a mean image
//! indexed at the un-mirrored source position, or per-channel values), then
//! scale — in that order. Beyond Caffe, training can also turn each image by
//! a random multiple of 90° (with mirroring, all eight flips and turns of a
//! square: exact, no interpolation), which suits subjects with no natural
//! up, such as plankton, and be warped by random affine maps
//! ([`crate::train::augment`]).
use super::augment::Augment;
use crate::caffe::mean_file::MeanImage;
use crate::caffe::proto::{Phase, TransformationParameter};
use crate::caffe::rng::CaffeRng;
use crate::error::{Error, Result};
use crate::pipeline::mat::{Mat8, Pixels};
use rand::{Rng, SeedableRng};

/// A configured transformer.
#[derive(Clone, Debug)]
pub struct Transformer {
    crop: usize,
    mirror: bool,
    scale: f32,
    /// (channels, height, width, values) of the mean image.
    mean_image: Option<(usize, usize, usize, Vec<f32>)>,
    mean_values: Vec<f32>,
    phase: Phase,
    /// Seeds the draws beyond Caffe's (turns, warps), per image position.
    seed: u64,
    /// Seeds Caffe's own draws (mirror, crop offsets): see [`DrawStream`].
    caffe_seed: u32,
    /// Turn each output by a random multiple of 90° (after Caffe's steps).
    rotate90: bool,
    /// Warp each output by a random affine map (last).
    augment: Option<Augment>,
}

impl Transformer {
    /// Builds a transformer; `resolve` maps the mean file path.
    pub fn new(
        p: &TransformationParameter,
        phase: Phase,
        seed: u64,
        resolve: impl Fn(&str) -> std::path::PathBuf,
        context: &str,
    ) -> Result<Self> {
        if p.mean_file.is_some() && !p.mean_value.is_empty() {
            return Err(Error::model(
                context,
                "transform_param cannot have both mean_file and mean_value",
            ));
        }
        let mean_image = match &p.mean_file {
            Some(f) => {
                let m = MeanImage::read_binaryproto(&resolve(f)).map_err(|e| {
                    Error::model(context, format!("transform_param.mean_file: {e}"))
                })?;
                Some((m.channels, m.height, m.width, m.values_f32()))
            }
            None => None,
        };
        Ok(Transformer {
            crop: p.crop_size() as usize,
            mirror: p.mirror(),
            scale: p.scale(),
            mean_image,
            mean_values: p.mean_value.clone(),
            phase,
            seed,
            caffe_seed: seed as u32,
            rotate90: false,
            augment: None,
        })
    }

    /// Subtracts `mean` (an image of the pre-crop size) in place of the
    /// transform_param's mean, for nets that do not name theirs (deploy nets).
    pub fn with_mean_image(mut self, mean: &MeanImage) -> Self {
        self.mean_image = Some((mean.channels, mean.height, mean.width, mean.values_f32()));
        self.mean_values.clear();
        self
    }

    /// Also turns each output by a random multiple of 90°, drawn after
    /// Caffe's own draws, so the other transforms of an image are unchanged.
    /// The outputs must be square (a crop_size, or square images).
    pub fn with_rotate90(mut self, on: bool) -> Self {
        self.rotate90 = on;
        self
    }

    /// Also warps each output by a random rotation, scale, shear, stretch
    /// and shift drawn from `augment`'s ranges, after everything else (see
    /// [`crate::train::augment`]).
    pub fn with_augment(mut self, augment: Option<Augment>) -> Self {
        self.augment = augment;
        self
    }

    /// Seeds Caffe's draws (mirror, random crop) with `seed`, as Caffe seeds
    /// its transformer from one output of its global generator.
    pub fn with_caffe_seed(mut self, seed: u32) -> Self {
        self.caffe_seed = seed;
        self
    }

    /// Whether Caffe gives this transformer a generator
    /// (`DataTransformer::InitRand`): it mirrors, or crops at random.
    pub fn needs_rand(&self) -> bool {
        self.draws_per_image() > 0
    }

    /// How many outputs Caffe draws per image: one for the mirror coin
    /// (when mirroring) and two for the crop offsets (when cropping in
    /// TRAIN), whatever the image's size.
    pub fn draws_per_image(&self) -> usize {
        let crop = if self.crop > 0 && self.phase == Phase::Train {
            2
        } else {
            0
        };
        usize::from(self.mirror) + crop
    }

    /// Caffe's draws for this transformer's images, in feed order.
    pub fn draw_stream(&self) -> DrawStream {
        DrawStream {
            seed: self.caffe_seed,
            per_image: self.draws_per_image(),
            rng: CaffeRng::new(self.caffe_seed),
            next: 0,
        }
    }

    /// Output (channels, height, width) for an input of this shape.
    pub fn out_shape(&self, c: usize, h: usize, w: usize) -> (usize, usize, usize) {
        if self.crop > 0 {
            (c, self.crop, self.crop)
        } else {
            (c, h, w)
        }
    }

    /// Transforms one uint8 image (CHW or HWC). `draws` are Caffe's raw
    /// draws for it (from [`DrawStream::image`]): the mirror coin, then the
    /// crop offsets, each an output modulo its range as in Caffe's
    /// `DataTransformer::Rand`. `position` (the image's index in the feed)
    /// seeds the draws beyond Caffe's (turns, warps), so runs and resumes
    /// repeat. `context` names the image in errors.
    pub fn apply(
        &self,
        img: ImageRef<'_>,
        draws: &[u32],
        position: u64,
        context: impl Fn() -> String,
        out: &mut [f32],
    ) -> Result<()> {
        let (oh, ow) = self.check(&img, &context, out)?;
        let (h, w, crop) = (img.height, img.width, self.crop);
        if self.rotate90 && oh != ow {
            return Err(Error::model(
                context(),
                format!("turning by 90° needs square outputs, not {oh}x{ow}: set crop_size or resize to a square"),
            ));
        }
        let mut draws = draws.iter();
        let mut rand = |n: usize| draws.next().map_or(0, |&r| (r % n.max(1) as u32) as usize);
        // Caffe's draw order: the mirror coin first, then the crop offsets.
        let mirror = self.mirror && rand(2) == 1;
        let (h_off, w_off) = if crop == 0 {
            (0, 0)
        } else if self.phase == Phase::Train {
            let h_off = rand(h - crop + 1);
            (h_off, rand(w - crop + 1))
        } else {
            ((h - crop) / 2, (w - crop) / 2)
        };
        self.write(&img, (h_off, w_off), mirror, (oh, ow), out);
        if !self.rotate90 && self.augment.is_none() {
            return Ok(());
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(position);
        if self.rotate90 {
            let turns = rng.random_range(0..4u8);
            for plane in out.chunks_exact_mut(oh * ow) {
                rotate_square(plane, oh, turns);
            }
        }
        if let Some(a) = &self.augment {
            a.draw(&mut rng).apply(out, oh, ow)?;
        }
        Ok(())
    }

    /// Transforms one image with the crop at `(h_off, w_off)` and mirroring
    /// as given instead of drawn (no turns or warps): the views of
    /// `classify --oversample`.
    pub fn apply_at(
        &self,
        img: ImageRef<'_>,
        offset: (usize, usize),
        mirror: bool,
        context: impl Fn() -> String,
        out: &mut [f32],
    ) -> Result<()> {
        let (oh, ow) = self.check(&img, &context, out)?;
        if offset.0 + oh > img.height || offset.1 + ow > img.width {
            return Err(Error::model(
                context(),
                format!(
                    "a {oh}x{ow} crop at {offset:?} leaves the {}x{} image",
                    img.height, img.width
                ),
            ));
        }
        self.write(&img, offset, mirror, (oh, ow), out);
        Ok(())
    }

    /// The crop side (0: none).
    pub fn crop_size(&self) -> usize {
        self.crop
    }

    /// Checks the image, the mean and `out` against each other; returns the
    /// output (height, width).
    fn check(
        &self,
        img: &ImageRef<'_>,
        context: &impl Fn() -> String,
        out: &[f32],
    ) -> Result<(usize, usize)> {
        let (c, h, w) = (img.channels, img.height, img.width);
        if img.data.len() != c * h * w {
            return Err(Error::model(
                context(),
                format!("{} pixel values for a {c}x{h}x{w} image", img.data.len()),
            ));
        }
        if let Some((mc, mh, mw, _)) = &self.mean_image {
            if (*mc, *mh, *mw) != (c, h, w) {
                return Err(Error::model(
                    context(),
                    format!("mean is {mc}x{mh}x{mw} but the image is {c}x{h}x{w}; the mean must have the pre-crop size"),
                ));
            }
        }
        if !self.mean_values.is_empty()
            && self.mean_values.len() != 1
            && self.mean_values.len() != c
        {
            return Err(Error::model(
                context(),
                format!("{} mean_values for {c} channels", self.mean_values.len()),
            ));
        }
        let crop = self.crop;
        if crop > 0 && (crop > h || crop > w) {
            return Err(Error::model(
                context(),
                format!("crop_size {crop} is larger than the image {h}x{w}"),
            ));
        }
        let (oh, ow) = if crop > 0 { (crop, crop) } else { (h, w) };
        if out.len() != c * oh * ow {
            return Err(Error::model(
                context(),
                format!("output holds {} values, not {c}x{oh}x{ow}", out.len()),
            ));
        }
        Ok((oh, ow))
    }

    /// Writes the (oh, ow) crop at `(h_off, w_off)`, mirrored or not, minus
    /// the mean and times the scale, into `out` (checked by `check`).
    fn write(
        &self,
        img: &ImageRef<'_>,
        (h_off, w_off): (usize, usize),
        mirror: bool,
        (oh, ow): (usize, usize),
        out: &mut [f32],
    ) {
        let (c, h, w) = (img.channels, img.height, img.width);
        if img.layout == Layout::Chw && (oh, ow) == (h, w) && !mirror {
            // Whole planes in place, contiguous: one pass over the image
            // (feature Datums are thousands of 1x1 planes, where a pass per
            // row would cost more than the arithmetic). Same values.
            let uniform = self.mean_image.is_none() && self.mean_values.len() <= 1;
            if self.mean_image.is_some() || uniform {
                let mean = self.mean_image.as_ref().map(|(_, _, _, m)| &m[..]);
                let mv = self.mean_values.first().copied().unwrap_or(0.0);
                match img.data {
                    Pixels::U8(d) => row(out, d.iter(), mean, mv, self.scale, false),
                    Pixels::F32(d) => row(out, d.iter(), mean, mv, self.scale, false),
                }
                return;
            }
        }
        for ch in 0..c {
            let mv = match self.mean_values.len() {
                0 => 0.0,
                1 => self.mean_values[0],
                _ => self.mean_values[ch],
            };
            for y in 0..oh {
                // The mean image is CHW whatever the pixels' layout.
                let chw_start = (ch * h + h_off + y) * w + w_off;
                let mean = self
                    .mean_image
                    .as_ref()
                    .map(|(_, _, _, m)| &m[chw_start..chw_start + ow]);
                let dst = &mut out[(ch * oh + y) * ow..(ch * oh + y + 1) * ow];
                let hwc_start = ((h_off + y) * w + w_off) * c + ch;
                // HWC: every c-th value from the row's start; the row's length bounds the zip.
                match (img.layout, img.data) {
                    (Layout::Chw, Pixels::U8(d)) => {
                        let src = &d[chw_start..chw_start + ow];
                        row(dst, src.iter(), mean, mv, self.scale, mirror)
                    }
                    (Layout::Hwc, Pixels::U8(d)) => {
                        let src = d[hwc_start..].iter().step_by(c);
                        row(dst, src, mean, mv, self.scale, mirror)
                    }
                    (Layout::Chw, Pixels::F32(d)) => {
                        let src = &d[chw_start..chw_start + ow];
                        row(dst, src.iter(), mean, mv, self.scale, mirror)
                    }
                    (Layout::Hwc, Pixels::F32(d)) => {
                        let src = d[hwc_start..].iter().step_by(c);
                        row(dst, src, mean, mv, self.scale, mirror)
                    }
                }
            }
        }
    }
}

/// Turns a square `n` x `n` plane counter-clockwise by `turns` x 90°, in place.
pub(crate) fn rotate_square(plane: &mut [f32], n: usize, turns: u8) {
    if turns % 4 == 0 {
        return;
    }
    let src = plane.to_vec();
    for y in 0..n {
        for x in 0..n {
            let (sy, sx) = match turns % 4 {
                1 => (x, n - 1 - y),
                2 => (n - 1 - y, n - 1 - x),
                _ => (n - 1 - x, y),
            };
            plane[y * n + x] = src[sy * n + sx];
        }
    }
}

/// One output row: each value is (pixel - mean) * scale, as in Caffe (for
/// bytes and floats alike). The branches are hoisted out of the loops so
/// that the CHW case vectorises.
fn row<'a, T: Copy + Into<f32> + 'a>(
    dst: &mut [f32],
    src: impl Iterator<Item = &'a T>,
    mean: Option<&[f32]>,
    mv: f32,
    scale: f32,
    mirror: bool,
) {
    match (mean, mirror) {
        (Some(m), false) => {
            for ((d, &p), &m) in dst.iter_mut().zip(src).zip(m) {
                *d = (p.into() - m) * scale;
            }
        }
        (Some(m), true) => {
            for ((d, &p), &m) in dst.iter_mut().rev().zip(src).zip(m) {
                *d = (p.into() - m) * scale;
            }
        }
        (None, false) => {
            for (d, &p) in dst.iter_mut().zip(src) {
                *d = (p.into() - mv) * scale;
            }
        }
        (None, true) => {
            for (d, &p) in dst.iter_mut().rev().zip(src) {
                *d = (p.into() - mv) * scale;
            }
        }
    }
}

/// How an image's pixels are ordered in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Channel planes, as in a raw Datum.
    Chw,
    /// Interleaved pixels, as decoded (OpenCV's Mat).
    Hwc,
}

/// Borrowed pixels of one image.
#[derive(Clone, Copy, Debug)]
pub struct ImageRef<'a> {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub layout: Layout,
    pub data: Pixels<'a>,
}

impl<'a> ImageRef<'a> {
    /// Channel planes of a `channels x height x width` image (a raw Datum's
    /// pixels or float values).
    pub fn chw(channels: usize, height: usize, width: usize, data: impl Into<Pixels<'a>>) -> Self {
        ImageRef {
            channels,
            height,
            width,
            layout: Layout::Chw,
            data: data.into(),
        }
    }
}

impl<'a> From<&'a Mat8> for ImageRef<'a> {
    /// A decoded image, read in place.
    fn from(m: &'a Mat8) -> Self {
        ImageRef {
            channels: m.channels,
            height: m.height,
            width: m.width,
            layout: Layout::Hwc,
            data: Pixels::U8(&m.data),
        }
    }
}

/// Caffe's draws for one data layer's images in feed order. Caffe's
/// transformer draws from its own `mt19937` one image after another, a fixed
/// number of outputs per image ([`Transformer::draws_per_image`]), so image
/// `i`'s draws are outputs `i*k .. i*k+k` and a feed can restart anywhere.
#[derive(Clone, Debug)]
pub struct DrawStream {
    seed: u32,
    per_image: usize,
    rng: CaffeRng,
    /// The image whose draws come next.
    next: u64,
}

impl DrawStream {
    /// The draws of image `index` (counted from the feed's first image):
    /// `per_image` of them, the rest of the array unused. Going back
    /// restarts the generator; going forward skips the images between.
    pub fn image(&mut self, index: u64) -> [u32; 3] {
        if index < self.next {
            self.rng = CaffeRng::new(self.seed);
            self.next = 0;
        }
        for _ in 0..(index - self.next) * self.per_image as u64 {
            self.rng.next_u32();
        }
        let mut d = [0u32; 3];
        for slot in d.iter_mut().take(self.per_image) {
            *slot = self.rng.next_u32();
        }
        self.next = index + 1;
        d
    }

    /// How many of [`DrawStream::image`]'s outputs are draws.
    pub fn per_image(&self) -> usize {
        self.per_image
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Caffe's draws for image `pos` of `t`'s feed.
    fn draws(t: &Transformer, pos: u64) -> Vec<u32> {
        t.draw_stream().image(pos)[..t.draws_per_image()].to_vec()
    }

    fn transformer(text: &str, phase: Phase, mean: Option<(usize, usize, usize)>) -> Transformer {
        let p: TransformationParameter =
            crate::caffe::prototxt::parse(text, std::path::Path::new("t")).unwrap();
        let mut t = Transformer::new(&p, phase, 7, |f| f.into(), "t").unwrap();
        if let Some((c, h, w)) = mean {
            let values = (0..c * h * w).map(|i| (i % 251) as f32 * 0.5).collect();
            t.mean_image = Some((c, h, w, values));
        }
        t
    }

    /// A decoded (HWC) image gives exactly what its CHW copy gives, for
    /// every combination of crop, mirror, mean and phase.
    #[test]
    fn hwc_input_matches_chw_input() {
        let (w, h, c) = (13, 9, 3);
        let data = (0..w * h * c).map(|i| (i * 37 % 256) as u8).collect();
        let m = Mat8::new(w, h, c, data);
        let chw = m.to_chw();
        for text in [
            "",
            "mirror: true",
            "crop_size: 7 mirror: true scale: 0.5",
            "crop_size: 9 mean_value: 10 mean_value: 20 mean_value: 30",
            "crop_size: 5 mirror: true mean_value: 3",
        ] {
            for phase in [Phase::Train, Phase::Test] {
                for mean in [None, Some((c, h, w))] {
                    if mean.is_some() && text.contains("mean_value") {
                        continue;
                    }
                    let t = transformer(text, phase, mean);
                    let (oc, oh, ow) = t.out_shape(c, h, w);
                    for pos in 0..8 {
                        let mut a = vec![0f32; oc * oh * ow];
                        let mut b = a.clone();
                        let img = |layout, data| ImageRef {
                            channels: c,
                            height: h,
                            width: w,
                            layout,
                            data,
                        };
                        t.apply(
                            img(Layout::Chw, (&chw).into()),
                            &draws(&t, pos),
                            pos,
                            String::new,
                            &mut a,
                        )
                        .unwrap();
                        t.apply(
                            img(Layout::Hwc, (&m.data).into()),
                            &draws(&t, pos),
                            pos,
                            String::new,
                            &mut b,
                        )
                        .unwrap();
                        assert_eq!(a, b, "{text:?} {phase:?} mean {mean:?} position {pos}");
                    }
                }
            }
        }
    }

    /// Float values (a feature Datum's float_data) go through the same
    /// crop, mirror, mean and scale as bytes: whole-number floats give what
    /// the bytes give, and fractions are kept.
    #[test]
    fn float_values_transform_like_bytes() {
        let (c, h, w) = (2, 5, 6);
        let bytes: Vec<u8> = (0..c * h * w).map(|i| (i * 53 % 256) as u8).collect();
        let floats: Vec<f32> = bytes.iter().map(|&b| b as f32).collect();
        for text in [
            "",
            "mirror: true crop_size: 3 scale: 0.5",
            "mean_value: 3 mean_value: 1",
        ] {
            for phase in [Phase::Train, Phase::Test] {
                let t = transformer(text, phase, None);
                let (oc, oh, ow) = t.out_shape(c, h, w);
                for pos in 0..6 {
                    let run = |img: ImageRef<'_>| {
                        let mut out = vec![0f32; oc * oh * ow];
                        t.apply(img, &draws(&t, pos), pos, String::new, &mut out)
                            .unwrap();
                        out
                    };
                    assert_eq!(
                        run(ImageRef::chw(c, h, w, &bytes[..])),
                        run(ImageRef::chw(c, h, w, &floats[..])),
                        "{text:?} {phase:?} position {pos}"
                    );
                }
            }
        }
        let t = transformer("scale: 2 mean_value: 0.5", Phase::Test, None);
        let mut out = [0f32; 3];
        let v = [0.25f32, -1.5, 1e-3];
        t.apply(
            ImageRef::chw(1, 1, 3, &v[..]),
            &[],
            0,
            String::new,
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [-0.5, -4.0, (1e-3 - 0.5) * 2.0]);
    }

    /// Test phase: the centred crop, mirrored or not by the position's draw.
    #[test]
    fn centred_crop_and_mirror_by_hand() {
        // 1 channel, 4x5, pixel = 10 * row + column.
        let data: Vec<u8> = (0..4)
            .flat_map(|y| (0..5).map(move |x| 10 * y + x))
            .collect();
        let t = transformer("crop_size: 2 mirror: true", Phase::Test, None);
        let img = ImageRef {
            channels: 1,
            height: 4,
            width: 5,
            layout: Layout::Hwc,
            data: Pixels::U8(&data),
        };
        let mut seen = std::collections::BTreeSet::new();
        for pos in 0..16 {
            let mut out = [0f32; 4];
            t.apply(img, &draws(&t, pos), pos, String::new, &mut out)
                .unwrap();
            seen.insert(out.map(|v| v as u8));
        }
        // Offsets ((4-2)/2, (5-2)/2) = (1, 1); both mirror draws occur.
        let expected = [[11, 12, 21, 22], [12, 11, 22, 21]];
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), expected);
    }

    /// Image i takes Caffe's outputs 3i..3i+3 (mirror, crop rows, crop
    /// columns), however the stream is walked.
    #[test]
    fn draw_stream_restarts_and_skips_to_any_image() {
        let t = transformer("mirror: true crop_size: 2", Phase::Train, None).with_caffe_seed(42);
        assert_eq!(t.draws_per_image(), 3);
        let mut raw = CaffeRng::new(42);
        let all: Vec<u32> = (0..30).map(|_| raw.next_u32()).collect();
        let mut s = t.draw_stream();
        for i in [0usize, 1, 5, 9, 2, 0, 9] {
            assert_eq!(
                s.image(i as u64),
                [all[3 * i], all[3 * i + 1], all[3 * i + 2]]
            );
        }
        // TEST crops are centred: only the mirror coin is drawn.
        let test = transformer("mirror: true crop_size: 2", Phase::Test, None);
        assert_eq!(test.draws_per_image(), 1);
        assert!(!transformer("crop_size: 2", Phase::Test, None).needs_rand());
        // A 1x4x5 image cropped to 2x2 at (raw1 % 3, raw2 % 4), mirrored on raw0 % 2.
        let data: Vec<u8> = (0..20).collect();
        let img = ImageRef::chw(1, 4, 5, &data[..]);
        for i in 0..10usize {
            let mut out = [0f32; 4];
            t.apply(img, &all[3 * i..3 * i + 3], 0, String::new, &mut out)
                .unwrap();
            let (y, x) = ((all[3 * i + 1] % 3) as usize, (all[3 * i + 2] % 4) as usize);
            let mut want = [0, 1, 5, 6].map(|o| (y * 5 + x + o) as f32);
            if all[3 * i] % 2 == 1 {
                want.swap(0, 1);
                want.swap(2, 3);
            }
            assert_eq!(out, want, "image {i}");
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let t = transformer("crop_size: 4", Phase::Train, None);
        let data = [0u8; 9];
        let img = ImageRef {
            channels: 1,
            height: 3,
            width: 3,
            layout: Layout::Chw,
            data: Pixels::U8(&data),
        };
        let e = t.apply(img, &draws(&t, 0), 0, || "img.jpg".into(), &mut [0f32; 16]);
        assert!(e.unwrap_err().to_string().contains("crop_size 4 is larger"));
        let short = ImageRef {
            data: Pixels::U8(&data[..5]),
            ..img
        };
        let t = transformer("", Phase::Train, None);
        let e = t.apply(short, &[], 0, || "img.jpg".into(), &mut [0f32; 9]);
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("5 pixel values for a 1x3x3"));
    }

    #[test]
    fn turns_by_90_degrees_cover_the_eight_flips_and_keep_caffes_draws() {
        // A 2-channel 3x3 image, no crop or mean: every output is one of the
        // 8 flips and turns of the input, each chosen per position.
        let data: Vec<u8> = (0..18).collect();
        let img = ImageRef::chw(2, 3, 3, &data[..]);
        let plain = transformer("mirror: true", Phase::Train, None);
        let turned = plain.clone().with_rotate90(true);
        let run = |t: &Transformer, pos| {
            let mut out = vec![0.0; 18];
            t.apply(img, &draws(t, pos), pos, || "t".into(), &mut out)
                .unwrap();
            out
        };
        let mut seen = std::collections::HashSet::new();
        for pos in 0..200 {
            let (a, b) = (run(&plain, pos), run(&turned, pos));
            // The turn comes after Caffe's draws: turning `a` back gives `b`
            // for one of the four turns, in both channels alike.
            let k = (0..4u8)
                .find(|&k| {
                    let mut t = a.clone();
                    t.chunks_exact_mut(9).for_each(|p| rotate_square(p, 3, k));
                    t == b
                })
                .expect("a turn of the untouched output");
            seen.insert((k, a[0] as u32 == data[2] as u32));
            assert_eq!(run(&turned, pos), b, "repeatable");
        }
        assert_eq!(seen.len(), 8, "all turns, mirrored and not: {seen:?}");
        // Counter-clockwise: the top row becomes the left column, read upwards.
        let mut p: Vec<f32> = (0..9).map(|v| v as f32).collect();
        rotate_square(&mut p, 3, 1);
        assert_eq!(p, [2.0, 5.0, 8.0, 1.0, 4.0, 7.0, 0.0, 3.0, 6.0]);
        // Non-square outputs cannot turn.
        let wide: Vec<u8> = vec![0; 6];
        let mut out = vec![0.0; 6];
        let err = turned
            .apply(
                ImageRef::chw(1, 2, 3, &wide[..]),
                &[],
                0,
                || "wide".into(),
                &mut out,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains("square"), "{err}");
    }
}
