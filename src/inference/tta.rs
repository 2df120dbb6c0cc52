//! Test-time augmentation (beyond Caffe): each test image is scored under
//! several views and the class probabilities are averaged. The eight
//! symmetries of a square move pixels without interpolating, so each such
//! view is exactly an image the net could have been trained on (plankton has
//! no "up", so a net trained with `--rotate90` has seen all of them);
//! `affine:N` adds evenly spread rotations, zooms, shears, stretches and
//! shifts (the Kaggle Deep Sea team averaged 70 such quasi-random views), for
//! nets trained with `--augment`.
use crate::error::{Error, Result};
use crate::train::augment::{Affine, Augment};
use candle_core::Tensor;
use rayon::prelude::*;
use std::fmt;
use std::str::FromStr;

/// Which views of each test image are scored.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Tta {
    /// The image as the data layer gives it.
    #[default]
    None,
    /// The image and its mirror image (left-right), as Caffe's `mirror` makes.
    Mirror,
    /// The four quarter turns.
    Rot90,
    /// The four quarter turns of the image and of its mirror image.
    Dihedral,
    /// The image, then `views - 1` quasi-random warps within `ranges`, every
    /// other one of the mirror image.
    Affine {
        /// How many views, the image itself included (2 or more).
        views: u16,
        /// The ranges the warps spread over.
        ranges: Augment,
    },
}

/// The most `affine:N` views: each is a forward pass per image.
const MAX_AFFINE_VIEWS: u16 = 1000;

impl FromStr for Tta {
    type Err = String;
    /// `none`, `mirror`, `rot90`, `dihedral`, or `affine:N` (the `plankton`
    /// ranges of `--augment`) and `affine:N:RANGES` (RANGES as `--augment`
    /// takes them, e.g. `rotate=180,scale=1.2`).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Tta::None),
            "mirror" => Ok(Tta::Mirror),
            "rot90" => Ok(Tta::Rot90),
            "dihedral" => Ok(Tta::Dihedral),
            _ => match s.strip_prefix("affine:") {
                Some(rest) => {
                    let (n, ranges) = match rest.split_once(':') {
                        Some((n, r)) => (n, r.parse::<Augment>()?),
                        None => (rest, Augment::PLANKTON),
                    };
                    let views = n
                        .trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|v| (2..=MAX_AFFINE_VIEWS).contains(v))
                        .ok_or_else(|| {
                            format!(
                                "affine:{n}: the number of views must be 2 to {MAX_AFFINE_VIEWS} (the image itself is the first)"
                            )
                        })?;
                    Ok(Tta::Affine { views, ranges })
                }
                None => Err(format!(
                    "{s:?} is not a test-time augmentation: use none, mirror, rot90, dihedral or affine:N"
                )),
            },
        }
    }
}

impl fmt::Display for Tta {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Tta::None => f.write_str("none"),
            Tta::Mirror => f.write_str("mirror"),
            Tta::Rot90 => f.write_str("rot90"),
            Tta::Dihedral => f.write_str("dihedral"),
            Tta::Affine { views, ranges } if *ranges == Augment::PLANKTON => {
                write!(f, "affine:{views}")
            }
            Tta::Affine { views, ranges } => write!(f, "affine:{views}:{ranges}"),
        }
    }
}

impl Tta {
    /// The views to score, the unchanged image first.
    pub fn views(self) -> Vec<View> {
        let (mirrors, turns): (&[bool], u8) = match self {
            Tta::None => (&[false], 1),
            Tta::Mirror => (&[false, true], 1),
            Tta::Rot90 => (&[false], 4),
            Tta::Dihedral => (&[false, true], 4),
            Tta::Affine { views, ranges } => {
                return (0..views as u32)
                    .map(|k| View {
                        mirror: k % 2 == 1,
                        turns: 0,
                        warp: (k > 0).then(|| ranges.quasi_random(k)),
                    })
                    .collect()
            }
        };
        mirrors
            .iter()
            .flat_map(|&mirror| {
                (0..turns).map(move |turns| View {
                    mirror,
                    turns,
                    warp: None,
                })
            })
            .collect()
    }

    /// A short name for folder names: `dihedral`, `affine70`,
    /// `affine70_rotate180_scale1.2`.
    pub fn tag(&self) -> String {
        match self {
            Tta::Affine { views, ranges } if *ranges == Augment::PLANKTON => {
                format!("affine{views}")
            }
            Tta::Affine { views, ranges } => format!("affine{views}_{}", ranges.tag()),
            t => t.to_string(),
        }
    }

    /// How the views read in a report: their names, or for `affine:N` how
    /// many warps there are of what.
    pub fn describe(&self) -> String {
        match self {
            Tta::Affine { views, ranges } => format!(
                "the image and {} quasi-random affine warps of it and of its mirror image ({})",
                views - 1,
                if *ranges == Augment::PLANKTON {
                    "the plankton ranges".to_string()
                } else {
                    ranges.to_string()
                }
            ),
            t => t
                .views()
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// One view of an image: an optional left-right mirror, then `turns`
/// quarter turns counter-clockwise (the order training's `--rotate90`
/// applies them in), then an optional affine warp (as `--augment` warps:
/// about the centre, bilinear, the outside reading 0, the mean).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct View {
    /// Mirror left-right first.
    pub mirror: bool,
    /// Quarter turns counter-clockwise, 0-3.
    pub turns: u8,
    /// Then this warp.
    pub warp: Option<Affine>,
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match (self.mirror, self.turns % 4, self.warp.is_some()) {
            (false, 0, false) => f.write_str("identity"),
            (true, 0, _) => f.write_str("mirror"),
            (false, 0, true) => Ok(()),
            (false, t, _) => write!(f, "rot{}", 90 * t as u32),
            (true, t, _) => write!(f, "mirror+rot{}", 90 * t as u32),
        }?;
        match self.warp {
            Some(a) if self.mirror || self.turns % 4 != 0 => write!(f, "+{a}"),
            Some(a) => write!(f, "{a}"),
            None => Ok(()),
        }
    }
}

impl View {
    /// This view of a batch of images shaped (N, C, H, W); quarter turns of
    /// an image that is not square are an error.
    pub fn apply(&self, images: &Tensor) -> Result<Tensor> {
        let dims = images.dims();
        if dims.len() != 4 {
            return Err(Error::model(
                "test-time augmentation",
                format!("needs images shaped (N, C, H, W), not {dims:?}"),
            ));
        }
        let (h, w) = (dims[2], dims[3]);
        if self.turns % 2 == 1 && h != w {
            return Err(Error::model(
                "test-time augmentation",
                format!(
                    "quarter turns need square inputs, but the net's images are {h}x{w}; use --tta mirror (or crop_size)"
                ),
            ));
        }
        let reverse = |t: &Tensor, dim: usize| -> Result<Tensor> {
            let n = t.dim(dim)? as u32;
            let idx = Tensor::from_vec((0..n).rev().collect::<Vec<u32>>(), n as usize, t.device())?;
            Ok(t.index_select(&idx, dim)?)
        };
        let mut t = images.clone();
        if self.mirror {
            t = reverse(&t, 3)?;
        }
        // Counter-clockwise, out[y][x] = in[x][n-1-y]: transpose, then
        // reverse the rows; three turns reverse the columns instead.
        t = match self.turns % 4 {
            0 => t,
            1 => reverse(&t.transpose(2, 3)?.contiguous()?, 2)?,
            2 => reverse(&reverse(&t, 2)?, 3)?,
            _ => reverse(&t.transpose(2, 3)?.contiguous()?, 3)?,
        };
        let per_image: usize = dims[1..].iter().product();
        if let (Some(a), true) = (self.warp, per_image > 0) {
            // Bilinear sampling has no tensor op: warp each image on the host.
            let (dtype, device, shape) = (t.dtype(), t.device().clone(), t.dims().to_vec());
            let mut v: Vec<f32> = t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1()?;
            let warp = a.warp();
            v.par_chunks_mut(per_image)
                .try_for_each(|image| warp.apply(image, h, w))?;
            t = Tensor::from_vec(v, shape, &device)?.to_dtype(dtype)?;
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A 1x1x3x3 batch holding 0..9 row by row.
    fn square() -> Tensor {
        Tensor::from_vec(
            (0..9).map(|v| v as f32).collect::<Vec<_>>(),
            (1, 1, 3, 3),
            &Device::Cpu,
        )
        .unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn views_by_hand() {
        // 0 1 2      mirror: 2 1 0    one turn (ccw): 2 5 8
        // 3 4 5              5 4 3                    1 4 7
        // 6 7 8              8 7 6                    0 3 6
        let cases: [(bool, u8, [f32; 9]); 5] = [
            (false, 0, [0., 1., 2., 3., 4., 5., 6., 7., 8.]),
            (true, 0, [2., 1., 0., 5., 4., 3., 8., 7., 6.]),
            (false, 1, [2., 5., 8., 1., 4., 7., 0., 3., 6.]),
            (false, 2, [8., 7., 6., 5., 4., 3., 2., 1., 0.]),
            (false, 3, [6., 3., 0., 7., 4., 1., 8., 5., 2.]),
        ];
        for (mirror, turns, want) in cases {
            let v = View {
                mirror,
                turns,
                warp: None,
            };
            assert_eq!(values(&v.apply(&square()).unwrap()), want, "{v}");
        }
        // Mirror first, then a turn: the transpose.
        let v = View {
            mirror: true,
            turns: 1,
            warp: None,
        };
        assert_eq!(
            values(&v.apply(&square()).unwrap()),
            [0., 3., 6., 1., 4., 7., 2., 5., 8.]
        );
    }

    #[test]
    fn the_dihedral_views_are_eight_different_images() {
        let views = Tta::Dihedral.views();
        assert_eq!(views.len(), 8);
        assert_eq!(views[0].to_string(), "identity");
        let mut seen: Vec<Vec<f32>> = views
            .iter()
            .map(|v| values(&v.apply(&square()).unwrap()))
            .collect();
        seen.sort_by(|a, b| a.partial_cmp(b).unwrap());
        seen.dedup();
        assert_eq!(seen.len(), 8);
        assert_eq!(Tta::None.views().len(), 1);
        assert_eq!(Tta::Mirror.views().len(), 2);
        assert_eq!(Tta::Rot90.views().len(), 4);
    }

    #[test]
    fn turns_match_training_rotation_and_act_per_plane() {
        // Two images of two channels, 4x4: each plane turned on its own, the
        // same way transform.rs turns training crops.
        let data: Vec<f32> = (0..64).map(|v| v as f32).collect();
        let t = Tensor::from_vec(data.clone(), (2, 2, 4, 4), &Device::Cpu).unwrap();
        for turns in 0..4u8 {
            let got = values(
                &View {
                    mirror: false,
                    turns,
                    warp: None,
                }
                .apply(&t)
                .unwrap(),
            );
            let mut want = data.clone();
            for plane in want.chunks_mut(16) {
                crate::train::transform::rotate_square(plane, 4, turns);
            }
            assert_eq!(got, want, "{turns} turns");
        }
    }

    #[test]
    fn turns_need_a_square_and_names_parse() {
        let t = Tensor::zeros((1, 3, 4, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
        let e = View {
            mirror: false,
            turns: 1,
            warp: None,
        }
        .apply(&t)
        .unwrap_err()
        .to_string();
        assert!(e.contains("4x6"), "{e}");
        assert!(View {
            mirror: true,
            turns: 2,
            warp: None,
        }
        .apply(&t)
        .is_ok());
        for s in ["none", "mirror", "rot90", "dihedral"] {
            assert_eq!(s.parse::<Tta>().unwrap().to_string(), s);
        }
        assert!("rot45".parse::<Tta>().unwrap_err().contains("dihedral"));
    }

    #[test]
    fn affine_views_are_the_image_then_warps_alternately_mirrored() {
        let tta: Tta = "affine:5".parse().unwrap();
        assert_eq!(
            tta,
            Tta::Affine {
                views: 5,
                ranges: Augment::PLANKTON
            }
        );
        assert_eq!(
            (tta.to_string(), tta.tag()),
            ("affine:5".into(), "affine5".into())
        );
        let views = tta.views();
        assert_eq!(views.len(), 5);
        assert_eq!(views[0].to_string(), "identity");
        for (k, v) in views.iter().enumerate().skip(1) {
            assert_eq!(v.mirror, k % 2 == 1);
            assert_eq!(v.warp, Some(Augment::PLANKTON.quasi_random(k as u32)));
            assert!(v.to_string().contains("affine(rotate="), "{v}");
        }
        assert!(views[1].to_string().starts_with("mirror+affine("));
        // Each image's planes, mirrored, then warped as training warps them.
        let data: Vec<f32> = (0..2 * 3 * 5 * 7)
            .map(|v| ((v * 37) % 101) as f32)
            .collect();
        let t = Tensor::from_vec(data.clone(), (2, 3, 5, 7), &Device::Cpu).unwrap();
        let got = values(&views[1].apply(&t).unwrap());
        let mut want = data.clone();
        for row in want.chunks_mut(7) {
            row.reverse();
        }
        let warp = views[1].warp.unwrap().warp();
        for image in want.chunks_mut(3 * 35) {
            warp.apply(image, 5, 7).unwrap();
        }
        assert_eq!(got, want);
        assert_ne!(got, values(&views[2].apply(&t).unwrap()));
        // A warp of exactly a quarter turn is the exact quarter turn.
        let quarter = View {
            mirror: false,
            turns: 0,
            warp: Some(Affine {
                rotate: 90.0,
                zoom: 1.0,
                shear: 0.0,
                stretch: 1.0,
                shift: (0.0, 0.0),
            }),
        };
        let square =
            Tensor::from_vec(data[..2 * 3 * 25].to_vec(), (2, 3, 5, 5), &Device::Cpu).unwrap();
        let turned = View {
            mirror: false,
            turns: 1,
            warp: None,
        };
        for (a, b) in values(&quarter.apply(&square).unwrap())
            .iter()
            .zip(values(&turned.apply(&square).unwrap()))
        {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn affine_specs_parse_and_bad_ones_say_why() {
        let t: Tta = "affine:70:rotate=180,scale=1.2".parse().unwrap();
        let Tta::Affine { views, ranges } = t else {
            panic!("{t:?}")
        };
        assert_eq!(
            (views, ranges.rotate, ranges.scale, ranges.shear),
            (70, 180.0, 1.2, 0.0)
        );
        assert_eq!(t.to_string().parse::<Tta>().unwrap(), t);
        assert_eq!(t.tag(), "affine70_rotate180_scale1.2");
        assert!(
            t.describe().contains("69 quasi-random affine warps"),
            "{}",
            t.describe()
        );
        assert_eq!(Tta::Mirror.describe(), "identity, mirror");
        for (bad, why) in [
            ("affine:1", "2 to 1000"),
            ("affine:x", "2 to 1000"),
            ("affine:5000", "2 to 1000"),
            ("affine:8:spin=3", "unknown augment"),
            ("affine", "affine:N"),
        ] {
            let e = bad.parse::<Tta>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
