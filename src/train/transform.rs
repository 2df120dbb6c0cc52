//! Caffe's DataTransformer: crop (random in TRAIN, centred in TEST), mirror
//! (random in both phases when enabled), mean subtraction (a mean image
//! indexed at the un-mirrored source position, or per-channel values), then
//! scale — in that order.
use crate::caffe::mean_file::MeanImage;
use crate::caffe::proto::{Phase, TransformationParameter};
use crate::error::{Error, Result};
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
    seed: u64,
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
                let m = MeanImage::read_binaryproto(&resolve(f))?;
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
        })
    }

    /// Output (channels, height, width) for an input of this shape.
    pub fn out_shape(&self, c: usize, h: usize, w: usize) -> (usize, usize, usize) {
        if self.crop > 0 {
            (c, self.crop, self.crop)
        } else {
            (c, h, w)
        }
    }

    /// Transforms one CHW uint8 image; `position` (the image's global index in
    /// the feed) seeds its crop and mirror draws, so runs and resumes repeat.
    /// `context` names the image in errors.
    #[allow(clippy::too_many_arguments)] // one image: shape, pixels, position, context, output
    pub fn apply(
        &self,
        c: usize,
        h: usize,
        w: usize,
        pixels: &[u8],
        position: u64,
        context: impl Fn() -> String,
        out: &mut [f32],
    ) -> Result<()> {
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
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(position);
        // Caffe's draw order: mirror first, then the crop offsets.
        let mirror = self.mirror && rng.random_range(0..2) == 1;
        let (oh, ow) = if crop > 0 { (crop, crop) } else { (h, w) };
        let (h_off, w_off) = if crop == 0 {
            (0, 0)
        } else if self.phase == Phase::Train {
            (
                rng.random_range(0..=h - crop),
                rng.random_range(0..=w - crop),
            )
        } else {
            ((h - crop) / 2, (w - crop) / 2)
        };
        let scale = self.scale;
        // Row by row with the branches hoisted, so the inner loops vectorise;
        // each value is still (pixel - mean) * scale, as in Caffe.
        for ch in 0..c {
            let mv = match self.mean_values.len() {
                0 => 0.0,
                1 => self.mean_values[0],
                _ => self.mean_values[ch],
            };
            for y in 0..oh {
                let start = (ch * h + h_off + y) * w + w_off;
                let src = &pixels[start..start + ow];
                let dst = &mut out[(ch * oh + y) * ow..(ch * oh + y + 1) * ow];
                match (&self.mean_image, mirror) {
                    (Some((_, _, _, m)), false) => {
                        for ((d, &p), &m) in dst.iter_mut().zip(src).zip(&m[start..start + ow]) {
                            *d = (p as f32 - m) * scale;
                        }
                    }
                    (Some((_, _, _, m)), true) => {
                        for ((d, &p), &m) in
                            dst.iter_mut().rev().zip(src).zip(&m[start..start + ow])
                        {
                            *d = (p as f32 - m) * scale;
                        }
                    }
                    (None, false) => {
                        for (d, &p) in dst.iter_mut().zip(src) {
                            *d = (p as f32 - mv) * scale;
                        }
                    }
                    (None, true) => {
                        for (d, &p) in dst.iter_mut().rev().zip(src) {
                            *d = (p as f32 - mv) * scale;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
