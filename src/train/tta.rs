//! Test-time augmentation (beyond Caffe): each test image is scored under
//! several flips and quarter turns and the class probabilities are averaged.
//! Only the eight symmetries of a square are offered: they move pixels
//! without interpolating, so each view is exactly an image the net could
//! have been trained on (plankton has no "up", so a net trained with
//! `--rotate90` has seen all of them).
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::fmt;
use std::str::FromStr;

/// Which views of each test image are scored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
}

impl FromStr for Tta {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Tta::None),
            "mirror" => Ok(Tta::Mirror),
            "rot90" => Ok(Tta::Rot90),
            "dihedral" => Ok(Tta::Dihedral),
            _ => Err(format!(
                "{s:?} is not a test-time augmentation: use none, mirror, rot90 or dihedral"
            )),
        }
    }
}

impl fmt::Display for Tta {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Tta::None => "none",
            Tta::Mirror => "mirror",
            Tta::Rot90 => "rot90",
            Tta::Dihedral => "dihedral",
        })
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
        };
        mirrors
            .iter()
            .flat_map(|&mirror| (0..turns).map(move |turns| View { mirror, turns }))
            .collect()
    }
}

/// One symmetry of the square: an optional left-right mirror, then `turns`
/// quarter turns counter-clockwise (the order training's `--rotate90`
/// applies them in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Mirror left-right first.
    pub mirror: bool,
    /// Quarter turns counter-clockwise, 0-3.
    pub turns: u8,
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match (self.mirror, self.turns % 4) {
            (false, 0) => f.write_str("identity"),
            (true, 0) => f.write_str("mirror"),
            (false, t) => write!(f, "rot{}", 90 * t as u32),
            (true, t) => write!(f, "mirror+rot{}", 90 * t as u32),
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
            let v = View { mirror, turns };
            assert_eq!(values(&v.apply(&square()).unwrap()), want, "{v}");
        }
        // Mirror first, then a turn: the transpose.
        let v = View {
            mirror: true,
            turns: 1,
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
        }
        .apply(&t)
        .unwrap_err()
        .to_string();
        assert!(e.contains("4x6"), "{e}");
        assert!(View {
            mirror: true,
            turns: 2
        }
        .apply(&t)
        .is_ok());
        for s in ["none", "mirror", "rot90", "dihedral"] {
            assert_eq!(s.parse::<Tta>().unwrap().to_string(), s);
        }
        assert!("rot45".parse::<Tta>().unwrap_err().contains("dihedral"));
    }
}
