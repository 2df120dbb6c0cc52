//! Random affine augmentation of training images (beyond Caffe): rotation
//! by any angle, log-uniform scale, shear, stretch and translation, as the
//! winning plankton classifiers used (the Kaggle Deep Sea team: rotations
//! over 0-360°, translations of ±10 px, scales 1/1.6-1.6, shear ±20°,
//! stretch 1/1.3-1.3). Organisms drift, turn and grow in any direction, so
//! every such copy is a plausible image of the same class.
//!
//! The warp is applied to the transformer's output (after crop, mirror, mean
//! subtraction and scale), about the image centre, with bilinear sampling;
//! pixels that come from outside the image are 0, which is the mean colour
//! after mean subtraction. Each image's parameters come from the random
//! stream of its position in the feed, so runs and resumes repeat.
use crate::error::{Error, Result};
use rand::Rng;
use std::fmt;
use std::str::FromStr;

/// The ranges the warp parameters are drawn from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Augment {
    /// Rotation in degrees, uniform in ±`rotate` (180: any angle).
    pub rotate: f32,
    /// Zoom factor, log-uniform in [1/`scale`, `scale`] (1: none).
    pub scale: f32,
    /// Shear angle in degrees, uniform in ±`shear`.
    pub shear: f32,
    /// Shift in pixels along each axis, uniform in ±`translate`.
    pub translate: f32,
    /// Width times s and height over s, s log-uniform in
    /// [1/`stretch`, `stretch`] (1: none).
    pub stretch: f32,
}

impl Augment {
    /// The Deep Sea team's ranges for plankton (Kaggle NDSB, 2015).
    pub const PLANKTON: Augment = Augment {
        rotate: 180.0,
        scale: 1.6,
        shear: 20.0,
        translate: 10.0,
        stretch: 1.3,
    };

    /// No warp at all: every range empty.
    pub const NONE: Augment = Augment {
        rotate: 0.0,
        scale: 1.0,
        shear: 0.0,
        translate: 0.0,
        stretch: 1.0,
    };

    /// A short name for file names: `plankton`, or the ranges that warp,
    /// e.g. `rotate180_scale1.2`.
    pub fn tag(&self) -> String {
        if *self == Augment::PLANKTON {
            return "plankton".into();
        }
        let n = Augment::NONE;
        [
            ("rotate", self.rotate, n.rotate),
            ("scale", self.scale, n.scale),
            ("shear", self.shear, n.shear),
            ("translate", self.translate, n.translate),
            ("stretch", self.stretch, n.stretch),
        ]
        .iter()
        .filter(|(_, v, none)| v != none)
        .map(|(k, v, _)| format!("{k}{v}"))
        .collect::<Vec<_>>()
        .join("_")
    }

    fn validate(self) -> std::result::Result<Self, String> {
        let ok = |v: f32, lo: f32, hi: f32| v.is_finite() && v >= lo && v <= hi;
        let checks = [
            ("rotate", ok(self.rotate, 0.0, 180.0), "0 to 180 degrees"),
            ("scale", ok(self.scale, 1.0, 4.0), "1 to 4"),
            ("shear", ok(self.shear, 0.0, 60.0), "0 to 60 degrees"),
            (
                "translate",
                ok(self.translate, 0.0, 1000.0),
                "0 to 1000 pixels",
            ),
            ("stretch", ok(self.stretch, 1.0, 4.0), "1 to 4"),
        ];
        match checks.iter().find(|c| !c.1) {
            Some((name, _, range)) => Err(format!("augment {name} must be {range}")),
            None => Ok(self),
        }
    }

    /// Draws one warp: the map from output pixel to source position.
    pub fn draw(&self, rng: &mut impl Rng) -> Warp {
        let uniform = |rng: &mut dyn rand::RngCore, r: f32| {
            if r > 0.0 {
                rng.random_range(-r..=r)
            } else {
                0.0
            }
        };
        let log_uniform = |rng: &mut dyn rand::RngCore, r: f32| {
            if r > 1.0 {
                rng.random_range(-r.ln()..=r.ln()).exp()
            } else {
                1.0
            }
        };
        // A fixed draw order, so that changing one range leaves the others'
        // draws where they were.
        let theta = uniform(rng, self.rotate).to_radians();
        let zoom = log_uniform(rng, self.scale);
        let shear = uniform(rng, self.shear).to_radians();
        let stretch = log_uniform(rng, self.stretch);
        let tx = uniform(rng, self.translate);
        let ty = uniform(rng, self.translate);
        Warp::new(theta, zoom, shear, stretch, (tx, ty))
    }
}

impl FromStr for Augment {
    type Err = String;
    /// `plankton`, or `key=value` pairs separated by commas (keys: rotate,
    /// scale, shear, translate, stretch; the rest stay at no warp), e.g.
    /// `rotate=180,scale=1.2`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s == "plankton" {
            return Ok(Augment::PLANKTON);
        }
        let mut a = Augment::NONE;
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                format!("{part:?} is not key=value (or use the preset `plankton`)")
            })?;
            let v: f32 = value
                .trim()
                .parse()
                .map_err(|_| format!("augment {key}: {value:?} is not a number"))?;
            match key.trim() {
                "rotate" => a.rotate = v,
                "scale" => a.scale = v,
                "shear" => a.shear = v,
                "translate" => a.translate = v,
                "stretch" => a.stretch = v,
                k => {
                    return Err(format!(
                        "unknown augment {k:?}: use rotate, scale, shear, translate or stretch"
                    ))
                }
            }
        }
        if a == Augment::NONE {
            return Err(format!("augment {s:?} warps nothing"));
        }
        a.validate()
    }
}

impl fmt::Display for Augment {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "rotate={},scale={},shear={},translate={},stretch={}",
            self.rotate, self.scale, self.shear, self.translate, self.stretch
        )
    }
}

impl Augment {
    /// The `k`-th point of a low-discrepancy sequence over these ranges (the
    /// additive "R" sequence, frac(0.5 + k·g^-j) with g the root of
    /// x^7 = x + 1): evenly spread warps for test-time augmentation, the same
    /// for every run. Unlike Halton's, its early points do not line up along
    /// a diagonal in six dimensions.
    pub fn quasi_random(&self, k: u32) -> Affine {
        // Fixed-point iteration x <- (1 + x)^(1/7) converges to g.
        let g = (0..64).fold(1.0f64, |x, _| (1.0 + x).powf(1.0 / 7.0));
        let u = |j: i32| (0.5 + k as f64 * g.powi(-j)).fract() as f32;
        let uniform = |u: f32, r: f32| r * (2.0 * u - 1.0);
        let log_uniform = |u: f32, r: f32| (r.ln() * (2.0 * u - 1.0)).exp();
        Affine {
            rotate: uniform(u(1), self.rotate),
            zoom: log_uniform(u(2), self.scale),
            shear: uniform(u(3), self.shear),
            stretch: log_uniform(u(4), self.stretch),
            shift: (uniform(u(5), self.translate), uniform(u(6), self.translate)),
        }
    }
}

/// The parameters of one warp, in the units a person reads (degrees,
/// factors, pixels); see [`Warp::new`] for their meaning.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    /// Rotation in degrees, counter-clockwise as shown.
    pub rotate: f32,
    /// Zoom factor.
    pub zoom: f32,
    /// Shear in degrees.
    pub shear: f32,
    /// Width times this, height over it.
    pub stretch: f32,
    /// Shift in pixels (right, down).
    pub shift: (f32, f32),
}

impl Affine {
    /// The warp these parameters make.
    pub fn warp(&self) -> Warp {
        Warp::new(
            self.rotate.to_radians(),
            self.zoom,
            self.shear.to_radians(),
            self.stretch,
            self.shift,
        )
    }
}

impl fmt::Display for Affine {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "affine(rotate={:.1},zoom={:.3},shear={:.1},stretch={:.3},shift={:.1}/{:.1})",
            self.rotate, self.zoom, self.shear, self.stretch, self.shift.0, self.shift.1
        )
    }
}

/// One drawn warp: a source position for each output pixel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Warp {
    /// Inverse of the linear part (output offset → source offset), row-major.
    inv: [f32; 4],
    /// Shift of the output, in pixels.
    shift: (f32, f32),
}

impl Warp {
    /// The warp that rotates by `theta` radians (counter-clockwise as the
    /// image is shown, rows going down), after shearing by `shear` radians and
    /// scaling x by `zoom * stretch` and y by `zoom / stretch`, about the
    /// centre, then shifts by `shift` pixels.
    pub fn new(theta: f32, zoom: f32, shear: f32, stretch: f32, shift: (f32, f32)) -> Warp {
        // Forward map on (x, y) with y pointing down: a counter-clockwise
        // turn as seen is [[cos, sin], [-sin, cos]]. The inverse of
        // R * Sh * D is D^-1 * Sh^-1 * R^-1.
        let (s, c) = theta.sin_cos();
        let r_inv = [c, -s, s, c];
        let t = shear.tan();
        let sh_inv = [1.0, -t, 0.0, 1.0];
        let d_inv = [1.0 / (zoom * stretch), 0.0, 0.0, stretch / zoom];
        let mul = |a: [f32; 4], b: [f32; 4]| {
            [
                a[0] * b[0] + a[1] * b[2],
                a[0] * b[1] + a[1] * b[3],
                a[2] * b[0] + a[3] * b[2],
                a[2] * b[1] + a[3] * b[3],
            ]
        };
        Warp {
            inv: mul(d_inv, mul(sh_inv, r_inv)),
            shift,
        }
    }

    /// Warps each `height` x `width` plane of `planes` (CHW) in place, with
    /// bilinear sampling; positions outside the image read 0.
    pub fn apply(&self, planes: &mut [f32], height: usize, width: usize) -> Result<()> {
        let n = height * width;
        if n == 0 || planes.len() % n != 0 {
            return Err(Error::model(
                "augment",
                format!(
                    "{} values are not whole {height}x{width} planes",
                    planes.len()
                ),
            ));
        }
        let (cx, cy) = ((width as f32 - 1.0) / 2.0, (height as f32 - 1.0) / 2.0);
        let src = planes.to_vec();
        let channels = planes.len() / n;
        let [a, b, c, d] = self.inv;
        for y in 0..height {
            let dy = y as f32 - cy - self.shift.1;
            // Source position of column x: (a*dx + b*dy + cx, c*dx + d*dy + cy)
            // with dx = x - cx - shift.x, i.e. linear in x.
            let (row_x, row_y) = (b * dy + cx, d * dy + cy);
            for x in 0..width {
                let dx = x as f32 - cx - self.shift.0;
                let (sx, sy) = (a * dx + row_x, c * dx + row_y);
                // floor() without the libm call (x86-64's baseline has no
                // rounding instruction): truncate, then step down below zero.
                // Positions past i32's range saturate, outside either way.
                let floor = |v: f32| {
                    let t = v as i32 as f32;
                    if t > v {
                        t - 1.0
                    } else {
                        t
                    }
                };
                let (x0, y0) = (floor(sx), floor(sy));
                let (fx, fy) = (sx - x0, sy - y0);
                let weights = [
                    (1.0 - fx) * (1.0 - fy),
                    fx * (1.0 - fy),
                    (1.0 - fx) * fy,
                    fx * fy,
                ];
                let at = y * width + x;
                if x0 >= 0.0 && y0 >= 0.0 && x0 + 1.0 < width as f32 && y0 + 1.0 < height as f32 {
                    // All four neighbours inside: no per-tap checks.
                    let i = y0 as usize * width + x0 as usize;
                    let taps = [i, i + 1, i + width, i + width + 1];
                    for ch in 0..channels {
                        let p = &src[ch * n..(ch + 1) * n];
                        planes[ch * n + at] =
                            taps.iter().zip(&weights).map(|(&t, &w)| w * p[t]).sum();
                    }
                } else {
                    // Near or past the edge: neighbours outside read 0.
                    let corners = [
                        (x0, y0),
                        (x0 + 1.0, y0),
                        (x0, y0 + 1.0),
                        (x0 + 1.0, y0 + 1.0),
                    ];
                    let taps = corners.map(|(xx, yy)| {
                        (xx >= 0.0 && yy >= 0.0 && xx < width as f32 && yy < height as f32)
                            .then(|| yy as usize * width + xx as usize)
                    });
                    for ch in 0..channels {
                        let p = &src[ch * n..(ch + 1) * n];
                        planes[ch * n + at] = taps
                            .iter()
                            .zip(&weights)
                            .filter_map(|(t, &w)| t.map(|t| w * p[t]))
                            .sum();
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn plane(h: usize, w: usize) -> Vec<f32> {
        (0..h * w)
            .map(|i| ((i * 7919) % 251) as f32 - 125.0)
            .collect()
    }

    #[test]
    fn no_warp_is_the_identity_bit_for_bit() {
        let p = plane(5, 7);
        let mut q = p.clone();
        Warp::new(0.0, 1.0, 0.0, 1.0, (0.0, 0.0))
            .apply(&mut q, 5, 7)
            .unwrap();
        assert_eq!(p, q);
    }

    #[test]
    fn a_quarter_turn_is_the_exact_quarter_turn_and_shifts_move_whole_pixels() {
        let p = plane(6, 6);
        let mut turned = p.clone();
        Warp::new(90f32.to_radians(), 1.0, 0.0, 1.0, (0.0, 0.0))
            .apply(&mut turned, 6, 6)
            .unwrap();
        let mut want = p.clone();
        crate::train::transform::rotate_square(&mut want, 6, 1);
        for (a, b) in turned.iter().zip(&want) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
        // Shift right by 2 and down by 1: out[y][x] = in[y-1][x-2], 0 outside.
        let mut shifted = p.clone();
        Warp::new(0.0, 1.0, 0.0, 1.0, (2.0, 1.0))
            .apply(&mut shifted, 6, 6)
            .unwrap();
        for y in 0..6 {
            for x in 0..6 {
                let want = if x >= 2 && y >= 1 {
                    p[(y - 1) * 6 + x - 2]
                } else {
                    0.0
                };
                assert_eq!(shifted[y * 6 + x], want, "({x}, {y})");
            }
        }
    }

    /// Bilinear sampling written the plain way, for comparison.
    fn reference(p: &[f32], h: usize, w: usize, warp: &Warp) -> Vec<f32> {
        let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
        let at = |x: f32, y: f32| {
            if x >= 0.0 && y >= 0.0 && x < w as f32 && y < h as f32 {
                p[y as usize * w + x as usize]
            } else {
                0.0
            }
        };
        (0..h * w)
            .map(|i| {
                let (dx, dy) = (
                    (i % w) as f32 - cx - warp.shift.0,
                    (i / w) as f32 - cy - warp.shift.1,
                );
                let sx = warp.inv[0] * dx + warp.inv[1] * dy + cx;
                let sy = warp.inv[2] * dx + warp.inv[3] * dy + cy;
                let (x0, y0) = (sx.floor(), sy.floor());
                let (fx, fy) = (sx - x0, sy - y0);
                at(x0, y0) * (1.0 - fx) * (1.0 - fy)
                    + at(x0 + 1.0, y0) * fx * (1.0 - fy)
                    + at(x0, y0 + 1.0) * (1.0 - fx) * fy
                    + at(x0 + 1.0, y0 + 1.0) * fx * fy
            })
            .collect()
    }

    #[test]
    fn sub_pixel_warps_match_plain_bilinear_sampling() {
        let p = plane(9, 11);
        for warp in [
            Warp::new(0.0, 1.0, 0.0, 1.0, (0.25, -0.5)),
            Warp::new(-0.7, 1.3, 0.2, 0.9, (-3.5, 1.25)),
            Warp::new(2.5, 0.7, -0.3, 1.2, (0.0, 0.0)),
        ] {
            let mut got = p.clone();
            warp.apply(&mut got, 9, 11).unwrap();
            for (i, (a, b)) in got.iter().zip(reference(&p, 9, 11, &warp)).enumerate() {
                assert!((a - b).abs() < 1e-3, "{warp:?} pixel {i}: {a} vs {b}");
            }
        }
    }

    #[test]
    fn zoom_keeps_the_centre_and_each_plane_is_warped_alike() {
        // Two identical planes of a 5x5 image: the centre pixel stays under a
        // zoom, and both planes come out the same.
        let p = plane(5, 5);
        let mut two = [p.clone(), p.clone()].concat();
        Warp::new(0.3, 1.4, 0.1, 1.1, (0.0, 0.0))
            .apply(&mut two, 5, 5)
            .unwrap();
        assert!((two[12] - p[12]).abs() < 1e-4);
        assert_eq!(two[..25], two[25..]);
        assert!(Warp::new(0.0, 1.0, 0.0, 1.0, (0.0, 0.0))
            .apply(&mut [0.0; 7], 2, 2)
            .is_err());
    }

    #[test]
    fn draws_stay_in_range_and_repeat_with_the_seed() {
        let a = Augment::PLANKTON;
        let mut r1 = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        for _ in 0..200 {
            let w = a.draw(&mut r1);
            assert_eq!(w, a.draw(&mut r2));
            assert!(w.shift.0.abs() <= 10.0 && w.shift.1.abs() <= 10.0);
            // |det| of the inverse is 1 / zoom^2, zoom within 1/1.6..1.6.
            let det = (w.inv[0] * w.inv[3] - w.inv[1] * w.inv[2]).abs();
            assert!(det >= 1.0 / 1.6f32.powi(2) - 1e-4 && det <= 1.6f32.powi(2) + 1e-4);
        }
        // No ranges: the identity warp.
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        assert_eq!(
            Augment::NONE.draw(&mut r),
            Warp::new(0.0, 1.0, 0.0, 1.0, (0.0, 0.0))
        );
    }

    #[test]
    fn quasi_random_warps_fill_the_ranges_evenly_and_repeat() {
        let a = Augment::PLANKTON;
        let points: Vec<Affine> = (1..=70).map(|k| a.quasi_random(k)).collect();
        assert_eq!(
            points,
            (1..=70).map(|k| a.quasi_random(k)).collect::<Vec<_>>()
        );
        for p in &points {
            assert!(p.rotate.abs() <= 180.0 && p.shear.abs() <= 20.0);
            assert!(p.zoom >= 1.0 / 1.6 - 1e-6 && p.zoom <= 1.6 + 1e-6);
            assert!(p.stretch >= 1.0 / 1.3 - 1e-6 && p.stretch <= 1.3 + 1e-6);
            assert!(p.shift.0.abs() <= 10.0 && p.shift.1.abs() <= 10.0);
        }
        // Even: each tenth of every range holds 7 of the 70 points, give or
        // take 3 (70 uniform random draws: the worst tenth of six ranges is
        // off by 6.5 on average, and never within 3 in 1000 tries).
        let unit = |p: &Affine| {
            [
                (p.rotate / 180.0 + 1.0) / 2.0,
                (p.zoom.ln() / 1.6f32.ln() + 1.0) / 2.0,
                (p.shear / 20.0 + 1.0) / 2.0,
                (p.stretch.ln() / 1.3f32.ln() + 1.0) / 2.0,
                (p.shift.0 / 10.0 + 1.0) / 2.0,
                (p.shift.1 / 10.0 + 1.0) / 2.0,
            ]
        };
        for d in 0..6 {
            let mut bins = [0; 10];
            for p in &points {
                bins[((unit(p)[d] * 10.0) as usize).min(9)] += 1;
            }
            assert!(
                bins.iter().all(|&b| (4..=10).contains(&b)),
                "dimension {d}: {bins:?}"
            );
        }
        // Pairs of dimensions are not tied to each other either: every
        // quadrant of each pair holds 17.5 ± 2.5 points (random draws: the
        // worst of the 60 quadrants is off by 8.6 on average).
        for d in 0..6 {
            for e in d + 1..6 {
                let mut q = [0; 4];
                for p in &points {
                    let u = unit(p);
                    q[usize::from(u[d] >= 0.5) * 2 + usize::from(u[e] >= 0.5)] += 1;
                }
                assert!(q.iter().all(|&n| (15..=20).contains(&n)), "{d},{e}: {q:?}");
            }
        }
        // Its warp is the one Warp::new makes from the same numbers.
        let p = points[3];
        assert_eq!(
            p.warp(),
            Warp::new(
                p.rotate.to_radians(),
                p.zoom,
                p.shear.to_radians(),
                p.stretch,
                p.shift
            )
        );
        assert!(p.to_string().starts_with("affine(rotate="), "{p}");
    }

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        assert_eq!("plankton".parse::<Augment>().unwrap(), Augment::PLANKTON);
        let a: Augment = "rotate=180, scale=1.2".parse().unwrap();
        assert_eq!((a.rotate, a.scale, a.shear), (180.0, 1.2, 0.0));
        assert_eq!(a.to_string().parse::<Augment>().unwrap(), a);
        assert_eq!(a.tag(), "rotate180_scale1.2");
        assert_eq!(Augment::PLANKTON.tag(), "plankton");
        let t: Augment = "translate=1,stretch=1.3".parse().unwrap();
        assert_eq!(t.tag(), "translate1_stretch1.3");
        for (bad, why) in [
            ("rotate", "key=value"),
            ("spin=3", "unknown augment"),
            ("scale=0.5", "scale must be 1 to 4"),
            ("rotate=x", "not a number"),
            ("scale=1", "warps nothing"),
            ("rotate=NaN", "rotate must be"),
        ] {
            let e = bad.parse::<Augment>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
