//! NumPy's legacy `RandomState` (MT19937), just enough to reproduce
//! `np.random.seed(s); np.random.permutation(n)` bit for bit, which is how
//! Caffe's `assemble_data.py` picks its Flickr Style subset.
//!
//! Facts reproduced: an integer seed goes through MT19937's `init_genrand`;
//! `permutation(n)` shuffles `arange(n)` with the legacy Fisher–Yates that
//! walks `i` from `n-1` down to 1 and draws `j` in `[0, i]` by masked
//! rejection sampling on 32-bit outputs.

/// MT19937 as NumPy's legacy `RandomState` seeds and steps it (the
/// `rand_mt` crate's generator, which Caffe's draws use too).
pub struct Mt19937(rand_mt::Mt);

impl Mt19937 {
    /// `np.random.seed(seed)` for an integer seed in `0..2^32`.
    pub fn new(seed: u32) -> Self {
        Mt19937(rand_mt::Mt::new(seed))
    }

    /// The next 32-bit output (`genrand_int32`).
    pub fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    /// A uniform integer in `[0, max]` by masked rejection (NumPy's `random_interval`).
    pub fn interval(&mut self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        let mut mask = max;
        for shift in [1, 2, 4, 8, 16, 32] {
            mask |= mask >> shift;
        }
        if max <= 0xffff_ffff {
            loop {
                let v = (self.next_u32() as u64) & mask;
                if v <= max {
                    return v;
                }
            }
        }
        loop {
            let hi = self.next_u32() as u64;
            let lo = self.next_u32() as u64;
            let v = ((hi << 32) | lo) & mask;
            if v <= max {
                return v;
            }
        }
    }

    /// `np.random.permutation(n)` after this generator's seeding.
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.interval(i as u64) as usize;
            p.swap(i, j);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_reference_mt19937_outputs() {
        // First outputs of genrand_int32 after init_genrand(5489), the
        // generator's published default-seed sequence.
        let mut mt = Mt19937::new(5489);
        assert_eq!(mt.next_u32(), 3_499_211_612);
        assert_eq!(mt.next_u32(), 581_869_302);
        assert_eq!(mt.next_u32(), 3_890_346_734);
    }

    #[test]
    fn permutation_matches_numpy() {
        // np.random.seed(0); np.random.permutation(10) with NumPy 2.4.
        assert_eq!(
            Mt19937::new(0).permutation(10),
            vec![2, 8, 4, 9, 1, 6, 7, 3, 0, 5]
        );
        assert_eq!(
            Mt19937::new(831486).permutation(7),
            vec![3, 6, 2, 5, 0, 1, 4]
        );
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = Mt19937::new(1).permutation(1000);
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }
}
