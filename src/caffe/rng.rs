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

use rand_mt::Mt;

/// One MT19937 stream drawn from as Caffe draws.
#[derive(Clone)]
pub struct CaffeRng(Mt);

impl std::fmt::Debug for CaffeRng {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaffeRng")
    }
}

impl CaffeRng {
    /// A generator seeded as `Caffe::RNG(seed)` (and `Caffe::set_random_seed`).
    pub fn new(seed: u32) -> Self {
        CaffeRng(Mt::new(seed))
    }

    /// The next raw output (`caffe_rng_rand()`).
    pub fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
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
