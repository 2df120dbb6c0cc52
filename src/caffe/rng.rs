//! Caffe's random draws, so that a seeded run picks the same crops, mirrors,
//! list orders and skips as Caffe does with the same `random_seed`.
//!
//! Caffe's generator is boost's `mt19937` (MT19937, seeded from one 32-bit
//! value). Its data layers use it three ways, reproduced here:
//! - `caffe_rng_rand()`: one raw 32-bit output (seeds and `rand_skip`);
//! - `DataTransformer::Rand(n)`: one raw output modulo `n`;
//! - `caffe::shuffle`: Fisher–Yates from the last element down, each swap
//!   partner drawn by boost's `uniform_int(0, i)`, which divides one raw
//!   output by a bucket size and redraws when the quotient passes `i`.
//!
//! Its fillers draw floats through boost (1.74, Debian bullseye's) as
//! `caffe_rng_uniform`/`_gaussian`/`_bernoulli` do, also reproduced here, so
//! that a net's initial weights are Caffe's for the same `random_seed`:
//! - uniform on `[a, b]`: `u / 2^32 * (b' - a) + a` in float arithmetic, `b'`
//!   the float after `b`, redrawn when it reaches `b'`;
//! - normal: the ziggurat with 128 layers. One output gives a layer (its low
//!   8 bits: the sign, then the layer) and a 24-bit fraction (the rest);
//!   the tail past the first layer's edge samples exponentials;
//! - exponential: the ziggurat with 256 layers, the tail a shifted repeat;
//! - Bernoulli(p): `u <= p * 2^32` in float, no draw when p is 0.
//!
//! The ziggurat tables are computed here from their definition (see
//! [`Ziggurat`]), not copied.

use rand_mt::Mt;
use std::sync::{Arc, Mutex, OnceLock};

/// A generator shared by the layers of the nets a solver builds, as Caffe's
/// one global generator is.
pub type SharedCaffeRng = Arc<Mutex<CaffeRng>>;

/// A generator seeded with `seed`, to share.
pub fn shared(seed: u32) -> SharedCaffeRng {
    Arc::new(Mutex::new(CaffeRng::new(seed)))
}

/// Locks a shared generator (a poisoned lock still holds a usable state).
pub fn lock(rng: &SharedCaffeRng) -> std::sync::MutexGuard<'_, CaffeRng> {
    rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// MT19937's state size: any 624 consecutive outputs determine the rest.
const STATE: usize = 624;

/// One MT19937 stream drawn from as Caffe draws. It remembers its seed,
/// how many outputs it gave and the last 624 of them, which is enough to
/// save it and restore it exactly ([`CaffeRng::state`]).
#[derive(Clone)]
pub struct CaffeRng {
    mt: Mt,
    seed: u32,
    drawn: u64,
    last: Box<[u32; STATE]>,
}

/// A saved [`CaffeRng`] (in a resume sidecar).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CaffeRngState {
    /// The seed it started from.
    pub seed: u32,
    /// Outputs drawn since.
    pub drawn: u64,
    /// The last (up to) 624 outputs, oldest first.
    pub last: Vec<u32>,
}

impl std::fmt::Debug for CaffeRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaffeRng")
    }
}

impl CaffeRng {
    /// A generator seeded as `Caffe::RNG(seed)` (and `Caffe::set_random_seed`).
    pub fn new(seed: u32) -> Self {
        CaffeRng {
            mt: Mt::new(seed),
            seed,
            drawn: 0,
            last: Box::new([0; STATE]),
        }
    }

    /// The next raw output (`caffe_rng_rand()`).
    pub fn next_u32(&mut self) -> u32 {
        let u = self.mt.next_u32();
        self.last[(self.drawn % STATE as u64) as usize] = u;
        self.drawn += 1;
        u
    }

    /// What [`CaffeRng::from_state`] needs to continue exactly from here.
    pub fn state(&self) -> CaffeRngState {
        let n = self.drawn.min(STATE as u64) as usize;
        let start = (self.drawn - n as u64) % STATE as u64;
        let last = (0..n)
            .map(|k| self.last[((start + k as u64) % STATE as u64) as usize])
            .collect();
        CaffeRngState {
            seed: self.seed,
            drawn: self.drawn,
            last,
        }
    }

    /// The generator a [`CaffeRng::state`] describes: rebuilt from its last
    /// 624 outputs, or from its seed when it gave fewer. `None` when the
    /// state does not hang together.
    pub fn from_state(state: &CaffeRngState) -> Option<CaffeRng> {
        if state.last.len() as u64 != state.drawn.min(STATE as u64) {
            return None;
        }
        let mut rng = CaffeRng::new(state.seed);
        if state.drawn < STATE as u64 {
            for _ in 0..state.drawn {
                rng.next_u32();
            }
            return (rng.state() == *state).then_some(rng);
        }
        let window: [u32; STATE] = state.last.as_slice().try_into().ok()?;
        rng.mt = Mt::from(window);
        rng.drawn = state.drawn;
        for (k, &u) in window.iter().enumerate() {
            rng.last[((state.drawn - STATE as u64 + k as u64) % STATE as u64) as usize] = u;
        }
        Some(rng)
    }

    /// `DataTransformer::Rand(n)`: the next output modulo `n` (`n` > 0).
    pub fn rand(&mut self, n: u32) -> u32 {
        self.next_u32() % n.max(1)
    }

    /// boost's `uniform_int(0, max)` for `max` < 2^32: outputs fall into
    /// `max + 1` equal buckets of `floor(2^32 / (max + 1))` values; an output
    /// past the last whole bucket is drawn again.
    pub fn uniform_int(&mut self, max: u32) -> u32 {
        if max == 0 {
            return 0;
        }
        if max == u32::MAX {
            return self.next_u32();
        }
        let bucket = ((1u64 << 32) / (max as u64 + 1)) as u32;
        loop {
            let r = self.next_u32() / bucket;
            if r <= max {
                return r;
            }
        }
    }

    /// `caffe::shuffle`: for i from the last index down to 1, swap item i
    /// with item `uniform_int(0, i)`. Slices longer than 2^32 items, which
    /// Caffe's 32-bit draws cannot address, are left as they are.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        if items.len() as u64 > u32::MAX as u64 + 1 {
            return;
        }
        for i in (1..items.len()).rev() {
            let j = self.uniform_int(i as u32) as usize;
            items.swap(i, j);
        }
    }
}

/// 2^-24: the weight of a ziggurat fraction's last bit.
const FRACTION: f32 = 1.0 / 16_777_216.0;
/// 2^32 as boost converts the generator's range (2^32 - 1) to a float.
const RANGE_F32: f32 = 4_294_967_296.0;

impl CaffeRng {
    /// boost's `uniform_01<float>`: an output times 2^-32, redrawn when the
    /// conversion to float rounds it up to 1.
    pub fn uniform01_f32(&mut self) -> f32 {
        loop {
            let r = self.next_u32() as f32 * (1.0 / RANGE_F32);
            if r < 1.0 {
                return r;
            }
        }
    }

    /// `caffe_rng_uniform` for one value: uniform on `[a, b]` (`a <= b`).
    pub fn uniform_f32(&mut self, a: f32, b: f32) -> f32 {
        uniform_real(self, a, next_up(b))
    }

    /// `caffe_rng_gaussian` for one value (`sigma > 0`).
    pub fn gaussian_f32(&mut self, mean: f32, sigma: f32) -> f32 {
        self.unit_normal() * sigma + mean
    }

    /// `caffe_rng_bernoulli` with a float `p` for one value.
    pub fn bernoulli_f32(&mut self, p: f32) -> bool {
        p != 0.0 && (self.next_u32() as f32) <= p * RANGE_F32
    }

    /// `caffe_rng_bernoulli` with a double `p` (Dropout's keep
    /// probability) for one value: `u <= p * (2^32 - 1)` in double.
    pub fn bernoulli_f64(&mut self, p: f64) -> bool {
        p != 0.0 && (self.next_u32() as f64) <= p * u32::MAX as f64
    }

    /// One output split as boost splits it for a ziggurat: the low 8 bits
    /// and the upper 24 as a fraction in [0, 1).
    fn int_float_pair(&mut self) -> (usize, f32) {
        let u = self.next_u32();
        ((u & 0xff) as usize, (u >> 8) as f32 * FRACTION)
    }

    fn unit_normal(&mut self) -> f32 {
        let t = Ziggurat::normal();
        loop {
            let (bits, r) = self.int_float_pair();
            let sign = if bits & 1 == 1 { 1.0f32 } else { -1.0 };
            let i = bits >> 1;
            let x = r * t.x[i] as f32;
            // The comparisons with the tables are in double, as boost's.
            if (x as f64) < t.x[i + 1] {
                return x * sign;
            }
            if i == 0 {
                return self.normal_tail() * sign;
            }
            let y01 = self.uniform01_f32();
            let y = t.y[i] as f32 + y01 * (t.y[i + 1] - t.y[i]) as f32;
            let (xi, yi) = (t.x[i] as f32, t.y[i] as f32);
            // Between the chord and the tangent at x[i]: which one bounds
            // the curve from above depends on the side of the inflection.
            let chord = (t.x[i] - t.x[i + 1]) as f32 * y01 - (xi - x);
            let tangent = y - (yi + (xi - x) * yi * xi);
            let (above_upper, above_lower) = if t.x[i] >= 1.0 {
                (chord, tangent)
            } else {
                (tangent, chord)
            };
            if above_upper < 0.0 && (above_lower < 0.0 || y < (-(x * x / 2.0)).exp()) {
                return x * sign;
            }
        }
    }

    /// The normal tail past the first layer's edge r: x from an
    /// exponential of rate r, kept when an exponential y has 2y > x².
    fn normal_tail(&mut self) -> f32 {
        let start = Ziggurat::normal().x[1] as f32;
        loop {
            let x = self.unit_exponential() / start;
            let y = self.unit_exponential();
            if 2.0 * y > x * x {
                return x + start;
            }
        }
    }

    fn unit_exponential(&mut self) -> f32 {
        let t = Ziggurat::exponential();
        let mut shift = 0.0f32;
        loop {
            let (i, r) = self.int_float_pair();
            let x = r * t.x[i] as f32;
            if x < t.x[i + 1] as f32 {
                return shift + x;
            }
            if i == 0 {
                // The exponential's tail is the whole shifted by r.
                shift += t.x[1] as f32;
                continue;
            }
            let y01 = self.uniform01_f32();
            let y = t.y[i] as f32 + y01 * (t.y[i + 1] - t.y[i]) as f32;
            let above_upper = (t.x[i] - t.x[i + 1]) as f32 * y01 - (t.x[i] as f32 - x);
            let (xn, yn) = (t.x[i + 1] as f32, t.y[i + 1] as f32);
            let above_lower = y - (yn + (xn - x) * yn);
            if above_upper < 0.0 && (above_lower < 0.0 || y < (-x).exp()) {
                return x + shift;
            }
        }
    }
}

/// boost's `generate_uniform_real` on `[min, max)` for a 32-bit engine.
fn uniform_real(rng: &mut CaffeRng, min: f32, max: f32) -> f32 {
    if max / 2.0 - min / 2.0 > f32::MAX / 2.0 {
        return 2.0 * uniform_real(rng, min / 2.0, max / 2.0);
    }
    loop {
        let result = rng.next_u32() as f32 / RANGE_F32 * (max - min) + min;
        if result < max {
            return result;
        }
    }
}

/// The next float above `x` (`nextafter(x, +inf)`), as Caffe widens a
/// uniform filler's closed range.
fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let bits = x.to_bits();
    f32::from_bits(if x > 0.0 { bits + 1 } else { bits - 1 })
}

/// A ziggurat's tables for a decreasing density `f` (unnormalised, f(0) =
/// 1): `n` layers of equal area `v`; `x[1] = r` is the edge of the base
/// layer (its tail beyond r included), `x[0] = v / f(r)` the width a
/// rectangle of the base layer's area would have, `x[n] = 0`, and
/// `x[i+1] = f⁻¹(f(x[i]) + v / x[i])`; `y[i] = f(x[i])` with `y[0] = 0`.
/// `r` is the edge that makes the top layer end at x = 0.
pub struct Ziggurat {
    /// Layer edges, decreasing to 0.
    pub x: Vec<f64>,
    /// The density at each edge (0 first).
    pub y: Vec<f64>,
}

impl Ziggurat {
    /// 128 layers under exp(-x²/2): boost's normal distribution.
    pub fn normal() -> &'static Ziggurat {
        static T: OnceLock<Ziggurat> = OnceLock::new();
        T.get_or_init(|| {
            let f = |x: f64| (-x * x / 2.0).exp();
            let inv = |y: f64| (-2.0 * y.ln()).sqrt();
            // ∫_r^∞ exp(-x²/2) dx = sqrt(π/2) erfc(r / √2)
            let tail = |r: f64| {
                (std::f64::consts::PI / 2.0).sqrt() * libm::erfc(r / std::f64::consts::SQRT_2)
            };
            Ziggurat::solve(128, f, inv, tail, (2.0, 5.0))
        })
    }

    /// 256 layers under exp(-x): boost's exponential distribution.
    pub fn exponential() -> &'static Ziggurat {
        static T: OnceLock<Ziggurat> = OnceLock::new();
        T.get_or_init(|| {
            Ziggurat::solve(
                256,
                |x| (-x).exp(),
                |y| -y.ln(),
                |r| (-r).exp(),
                (5.0, 10.0),
            )
        })
    }

    /// Finds r by bisection (the top layer overshoots x = 0 for too
    /// small an r and falls short for too large a one), then the tables.
    fn solve(
        n: usize,
        f: impl Fn(f64) -> f64,
        inv: impl Fn(f64) -> f64,
        tail: impl Fn(f64) -> f64,
        (mut lo, mut hi): (f64, f64),
    ) -> Ziggurat {
        // The density at the top layer's lower edge: 1 for the right r.
        let top = |r: f64| {
            let v = r * f(r) + tail(r);
            let mut x = r;
            for _ in 1..n - 1 {
                let y = f(x) + v / x;
                if y >= 1.0 {
                    return f64::INFINITY;
                }
                x = inv(y);
            }
            f(x) + v / x
        };
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if mid <= lo || mid >= hi {
                break;
            }
            if top(mid) > 1.0 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let r = hi;
        let v = r * f(r) + tail(r);
        let mut x = vec![0.0; n + 1];
        x[0] = v / f(r);
        x[1] = r;
        for i in 1..n - 1 {
            x[i + 1] = inv(f(x[i]) + v / x[i]);
        }
        x[n] = 0.0;
        let mut y: Vec<f64> = x.iter().map(|&xi| f(xi)).collect();
        y[0] = 0.0;
        y[n] = 1.0;
        Ziggurat { x, y }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_outputs_are_mt19937s() {
        // MT19937 with the reference default seed 5489: its first output, and
        // its 10000th, which the C++ standard fixes for std::mt19937.
        let mut r = CaffeRng::new(5489);
        assert_eq!(r.next_u32(), 3_499_211_612);
        for _ in 1..9999 {
            r.next_u32();
        }
        assert_eq!(r.next_u32(), 4_123_659_995);
    }

    #[test]
    fn uniform_int_uses_whole_buckets_and_redraws_past_them() {
        // Bucket size for 0..=2 is floor(2^32 / 3) = 1431655765; the raw
        // outputs decide each value directly.
        let mut raw = CaffeRng::new(7);
        let mut dist = CaffeRng::new(7);
        for _ in 0..1000 {
            let want = loop {
                let q = raw.next_u32() / 1_431_655_765;
                if q <= 2 {
                    break q;
                }
            };
            assert_eq!(dist.uniform_int(2), want);
        }
        // 0..=1 splits the outputs in halves: the top bit.
        let mut a = CaffeRng::new(11);
        let mut b = CaffeRng::new(11);
        for _ in 0..100 {
            assert_eq!(a.uniform_int(1), b.next_u32() >> 31);
        }
    }

    #[test]
    fn a_saved_state_continues_exactly() {
        for drawn in [0usize, 5, 623, 624, 625, 2000] {
            let mut a = CaffeRng::new(99);
            for _ in 0..drawn {
                a.next_u32();
            }
            let mut b = CaffeRng::from_state(&a.state()).expect("a consistent state");
            let next: Vec<u32> = (0..1500).map(|_| a.next_u32()).collect();
            let again: Vec<u32> = (0..1500).map(|_| b.next_u32()).collect();
            assert_eq!(next, again, "after {drawn} outputs");
            assert_eq!(a.state(), b.state());
        }
        let mut bad = CaffeRng::new(1).state();
        bad.drawn = 3;
        assert!(CaffeRng::from_state(&bad).is_none());
    }

    #[test]
    fn shuffle_is_a_permutation_drawn_from_the_top() {
        let mut items: Vec<usize> = (0..50).collect();
        CaffeRng::new(3).shuffle(&mut items);
        let mut sorted = items.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(items, sorted);
        // The first swap puts item uniform_int(0, 49) last.
        let first = CaffeRng::new(3).uniform_int(49) as usize;
        assert_eq!(items[49], first);
    }
}
