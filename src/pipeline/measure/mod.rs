//! Measurements of the object in each image (beyond Caffe): size, shape
//! and texture, computed from the original file before any resize, for
//! `fuse` to weigh against the net. The Kaggle plankton winners fused
//! image moments and Haralick texture features this way.
//!
//! `measure_samples` writes them to `measures.csv` beside a dataset's
//! `samples.csv`, one row per image.
//!
//! Every measurement is unchanged by quarter turns and mirroring, as the
//! training views are, and works on dark-field and bright-field images
//! alike: the object is whatever stands out from the border's level.
mod moments;
mod segment;
mod texture;

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::pipeline::decode::{read_image, ColorMode};
use crate::pipeline::mat::Mat8;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

pub use moments::{elongation, hu, moments, Moments};
pub use segment::{segment, Segmentation, MIN_CONTRAST};
pub use texture::{texture, Texture};

/// The measurements' column names, in [`measure`]'s order.
pub const NAMES: [&str; 17] = [
    "m_area",
    "m_fill",
    "m_elongation",
    "m_hu1",
    "m_hu2",
    "m_hu3",
    "m_hu4",
    "m_hu5",
    "m_hu6",
    "m_hu7",
    "m_contrast",
    "m_spread",
    "m_glcm_contrast",
    "m_glcm_correlation",
    "m_glcm_energy",
    "m_glcm_homogeneity",
    "m_glcm_entropy",
];

/// One image's measurements, in [`NAMES`]' order.
pub type Measures = [f64; NAMES.len()];

/// Whether `name` is one of the measurements.
pub fn is_measure(name: &str) -> bool {
    NAMES.contains(&name)
}

/// Added to |hu| before its logarithm: the invariants of real shapes lie
/// far above it, while those a symmetric shape has as zero (and compute as
/// rounding noise) all land on ln(1e-12) instead of scattering.
const HU_FLOOR: f64 = 1e-12;

/// Measures the object in a one-channel image:
///
/// - `m_area`: ln(1 + the object's pixels), its size before any resize;
/// - `m_fill`: the share of the image it covers;
/// - `m_elongation`: ln of its inertia ellipse's axis ratio;
/// - `m_hu1`..`m_hu7`: ln(|Hu invariant| + 1e-12) of its mask (the absolute
///   value, so a mirror image measures the same);
/// - `m_contrast`: its mean distance from the background level, over 255;
/// - `m_spread`: the standard deviation of its pixel values, over 255;
/// - `m_glcm_*`: Haralick's co-occurrence features inside it.
///
/// An image without an object (nothing stands out from the border) gets
/// area, fill, elongation, contrast and spread 0, the floor for every Hu
/// invariant and a uniform texture.
///
/// # Panics
///
/// When `gray` has more than one channel ([`measure_file`] decodes to one).
pub fn measure(gray: &Mat8) -> Measures {
    assert_eq!(gray.channels, 1, "measure takes one-channel images");
    let (w, h, px) = (gray.width, gray.height, &gray.data);
    let s = segment(px, w, h);
    // Everything else over the object's bounding box alone: pixels off the
    // mask count for nothing, and moments do not move with the frame.
    let (bw, bh) = (s.bounds.2 - s.bounds.0, s.bounds.3 - s.bounds.1);
    let (box_px, box_mask) = (crop(px, w, s.bounds), crop(&s.mask, w, s.bounds));
    let m = moments(&box_mask, bw);
    let hu = hu(&m.eta);
    let t = texture(&box_px, &box_mask, bw, bh);
    // Integer sums, exact: the variance n·Σv² - (Σv)² has no cancellation error.
    let (mut distance, mut sum, mut squares) = (0u64, 0u64, 0u128);
    for (&v, _) in box_px.iter().zip(&box_mask).filter(|(_, &on)| on) {
        distance += u64::from(v.abs_diff(s.background));
        sum += u64::from(v);
        squares += u128::from(v) * u128::from(v);
    }
    let n = s.area.max(1) as f64;
    let contrast = distance as f64 / n;
    let spread = ((s.area as u128 * squares - u128::from(sum) * u128::from(sum)) as f64).sqrt() / n;
    let mut out = [0.0; NAMES.len()];
    out[0] = (1.0 + s.area as f64).ln();
    out[1] = s.area as f64 / (w * h) as f64;
    out[2] = elongation(&m);
    for (o, v) in out[3..10].iter_mut().zip(hu) {
        *o = (v.abs() + HU_FLOOR).ln();
    }
    out[10] = contrast / 255.0;
    out[11] = spread / 255.0;
    out[12..].copy_from_slice(&[
        t.contrast,
        t.correlation,
        t.energy,
        t.homogeneity,
        t.entropy,
    ]);
    out
}

/// The (x0, y0, x1, y1) window (ends exclusive) of a row-major
/// `width`-wide image.
fn crop<T: Copy>(v: &[T], width: usize, (x0, y0, x1, y1): (usize, usize, usize, usize)) -> Vec<T> {
    let mut out = Vec::with_capacity((x1 - x0) * (y1 - y0));
    for y in y0..y1 {
        out.extend_from_slice(&v[y * width + x0..y * width + x1]);
    }
    out
}

/// Decodes the image at `path` to one channel (as OpenCV's `imread` in
/// gray mode does) and measures it.
pub fn measure_file(path: &Path) -> Result<Measures> {
    Ok(measure(&read_image(path, ColorMode::Gray)?))
}

/// What [`measure_samples`] reads and writes.
#[derive(Clone, Debug)]
pub struct MeasureOptions {
    /// `samples.csv` from `import-folders`/`import-manifest` (a `path` column).
    pub samples: PathBuf,
    /// Prefix of relative image paths (as `to-lmdb`'s root).
    pub root: PathBuf,
    /// Where the measurements go (default: [`measures_beside`] the samples).
    pub out: Option<PathBuf>,
}

/// What [`measure_samples`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasureSummary {
    /// Images measured.
    pub images: usize,
    /// The file written.
    pub out: PathBuf,
}

/// Where the measurements of a samples file go by default: `measures.csv`
/// in its folder. A file of their own, so that re-importing a dataset
/// (which rewrites `samples.csv`) never drops them, and the pipeline can
/// tell from the times whether they are up to date.
pub fn measures_beside(samples: &Path) -> PathBuf {
    samples.with_file_name("measures.csv")
}

/// Measures every image in a samples file and writes `path` and the
/// [`NAMES`] columns, one row per image in the samples' order, atomically:
/// an image that cannot be read is an error naming it, and nothing is
/// written.
pub fn measure_samples(o: &MeasureOptions) -> Result<MeasureSummary> {
    let file = &o.samples;
    let bad = |e: csv::Error| Error::invalid(file.display(), e.to_string());
    let mut reader = csv::Reader::from_path(file).map_err(bad)?;
    let header = reader.headers().map_err(bad)?.clone();
    let path_col = header.iter().position(|h| h == "path").ok_or_else(|| {
        Error::invalid(
            file.display(),
            "has no \"path\" column: give the samples.csv that import-folders or import-manifest wrote",
        )
    })?;
    let paths = reader
        .records()
        .map(|r| r.map(|r| r.get(path_col).unwrap_or("").to_string()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(bad)?;
    let bar = crate::progress::bar(paths.len() as u64, "measure");
    let measured: Vec<Result<Measures>> = paths
        .par_iter()
        .map(|p| {
            let m = measure_file(&o.root.join(p));
            bar.inc(1);
            m
        })
        .collect();
    bar.finish_and_clear();
    let failed: Vec<_> = measured.iter().filter_map(|m| m.as_ref().err()).collect();
    if let Some(first) = failed.first() {
        return Err(Error::invalid(
            file.display(),
            format!(
                "{} of its {} images could not be measured (nothing was written); the first: {first}",
                failed.len(),
                paths.len()
            ),
        ));
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    // Writing to a Vec cannot fail.
    w.write_record(std::iter::once("path").chain(NAMES))
        .expect("in memory");
    for (p, m) in paths.iter().zip(measured) {
        // Rust's shortest round-trip formatting keeps every bit.
        let m = m.expect("failures returned above");
        w.write_record(std::iter::once(p.clone()).chain(m.iter().map(|v| v.to_string())))
            .expect("in memory");
    }
    let out = o.out.clone().unwrap_or_else(|| measures_beside(file));
    write_atomic(&out, &w.into_inner().expect("in memory"))?;
    Ok(MeasureSummary {
        images: paths.len(),
        out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dark-field "organism": an asymmetric textured blob on a noisy
    /// black background, with a speck.
    fn organism() -> Mat8 {
        let (w, h) = (23, 17);
        let data = (0..w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f64, (i / w) as f64);
                let inside = ((x - 9.0) / 7.0).powi(2) + ((y - 8.0) / 4.0).powi(2) < 1.0
                    || (x > 14.0 && x < 19.0 && (y - 5.0).abs() < 1.5);
                let border = x == 0.0 || y == 0.0 || x as usize == w - 1 || y as usize == h - 1;
                if inside {
                    140 + ((i * 29) % 90) as u8
                } else if i == 3 * w + 2 {
                    200
                } else if border {
                    1
                } else {
                    (i % 3) as u8
                }
            })
            .collect();
        Mat8::new(w, h, 1, data)
    }

    fn turn(m: &Mat8) -> Mat8 {
        // (x, y) in the turned frame is (y, h-1-x) in the original.
        let (w, h) = (m.width, m.height);
        let data = (0..w * h)
            .map(|i| m.data[(h - 1 - i % h) * w + i / h])
            .collect();
        Mat8::new(h, w, 1, data)
    }

    fn mirror(m: &Mat8) -> Mat8 {
        let w = m.width;
        let data = (0..m.data.len())
            .map(|i| m.data[i / w * w + (w - 1 - i % w)])
            .collect();
        Mat8::new(w, m.height, 1, data)
    }

    #[test]
    fn measurements_ignore_quarter_turns_mirrors_and_inversion() {
        let m = organism();
        let a = measure(&m);
        let inverted = Mat8::new(
            m.width,
            m.height,
            1,
            m.data.iter().map(|v| 255 - v).collect(),
        );
        for (what, other) in [
            ("turned", turn(&m)),
            ("turned twice", turn(&turn(&m))),
            ("mirrored", mirror(&m)),
            ("mirrored and turned", turn(&mirror(&m))),
        ] {
            let b = measure(&other);
            for k in 0..NAMES.len() {
                assert!(
                    (a[k] - b[k]).abs() < 1e-9,
                    "{what}: {} {} vs {}",
                    NAMES[k],
                    a[k],
                    b[k]
                );
            }
        }
        // A bright-field scan of the same object: its shape and contrast
        // measure alike (its levels, and so its texture's levels, differ).
        let b = measure(&inverted);
        for k in 0..12 {
            assert!((a[k] - b[k]).abs() < 1e-9, "inverted: {}", NAMES[k]);
        }
        // The speck is not the object: the ellipse and bar are.
        assert!(a[0] > (60f64).ln() && a[1] < 0.5, "{a:?}");
        assert!(a[2] > 0.3, "elongated: {}", a[2]);
        assert!(a.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn size_and_contrast_are_what_they_say() {
        // A 6x4 block of 180 on a 20x20 field of 30.
        let data = (0..400)
            .map(|i| {
                if (5..11).contains(&(i % 20)) && (7..11).contains(&(i / 20)) {
                    180
                } else {
                    30
                }
            })
            .collect();
        let a = measure(&Mat8::new(20, 20, 1, data));
        assert!((a[0] - 25f64.ln()).abs() < 1e-12);
        assert!((a[1] - 24.0 / 400.0).abs() < 1e-12);
        assert!((a[2] - 1.5f64.ln()).abs() < 1e-12);
        assert!((a[10] - 150.0 / 255.0).abs() < 1e-12);
        assert_eq!(a[11], 0.0);
        // A flat object: a uniform texture; its symmetry: hu3..hu7 at the floor.
        assert_eq!(&a[12..], &[0.0, 1.0, 1.0, 1.0, 0.0]);
        assert!(a[5..10].iter().all(|&v| (v - HU_FLOOR.ln()).abs() < 1e-6));
    }

    #[test]
    fn thin_and_tiny_images_measure_without_trouble() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for (w, h) in [(1, 1), (1, 7), (7, 1), (2, 2), (3, 40), (40, 3)] {
            for _ in 0..20 {
                let data = (0..w * h).map(|_| rng.random::<u8>()).collect();
                let a = measure(&Mat8::new(w, h, 1, data));
                assert!(a.iter().all(|v| v.is_finite()), "{w}x{h}: {a:?}");
                assert!(a[1] <= 1.0);
            }
        }
    }

    #[test]
    fn a_blank_image_measures_as_no_object() {
        let a = measure(&Mat8::new(8, 8, 1, vec![77; 64]));
        assert_eq!(a[0], 0.0);
        assert_eq!(a[1], 0.0);
        assert_eq!(a[2], 0.0);
        assert!(a[3..10].iter().all(|&v| v == HU_FLOOR.ln()));
        assert_eq!(&a[10..], &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0]);
    }
}
