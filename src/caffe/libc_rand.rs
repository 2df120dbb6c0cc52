//! The C library's `rand()` as glibc computes it, and `std::random_shuffle`
//! as libstdc++ draws from it: Caffe's HDF5Data layer shuffles its files and
//! rows with `std::random_shuffle`, which reads `rand()`, never seeded by
//! Caffe (so seed 1, the same order every run, whatever `random_seed` says).
//! Matching both makes a shuffled HDF5 feed Caffe's.

/// glibc's default `rand()` generator (the TYPE_3 additive feedback
/// generator behind `random()`): an LCG fills 31 words from the seed, then
/// each word is the sum of the words 31 and 3 places back; the first 310
/// outputs are discarded; each output is a word shifted right by one.
#[derive(Clone, Debug)]
pub struct LibcRand {
    /// The last 34 words, a ring indexed by `at`.
    words: [u32; 34],
    at: usize,
}

/// A `rand()` sequence shared by the nets one process (a solver) builds,
/// as a process's C library has one.
pub type SharedLibcRand = std::sync::Arc<std::sync::Mutex<LibcRand>>;

/// A fresh process's `rand()` (as if seeded with 1), to share.
pub fn shared() -> SharedLibcRand {
    std::sync::Arc::new(std::sync::Mutex::new(LibcRand::new(1)))
}

/// Locks a shared generator (a poisoned lock still holds a usable state).
pub fn lock(rand: &SharedLibcRand) -> std::sync::MutexGuard<'_, LibcRand> {
    rand.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A generator's whole state, to save beside a snapshot.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LibcRandState {
    /// The ring of the last 34 words.
    pub words: Vec<u32>,
    /// Where the next word goes in the ring.
    pub at: usize,
}

impl LibcRand {
    /// The state to save.
    pub fn state(&self) -> LibcRandState {
        LibcRandState {
            words: self.words.to_vec(),
            at: self.at,
        }
    }

    /// The generator in a saved state (`None` if the state is malformed).
    pub fn from_state(s: &LibcRandState) -> Option<LibcRand> {
        Some(LibcRand {
            words: s.words.as_slice().try_into().ok()?,
            at: Some(s.at).filter(|&a| a < 34)?,
        })
    }

    /// The generator after `srand(seed)` (seed 0 counts as 1, as in glibc).
    pub fn new(seed: u32) -> LibcRand {
        let mut r = [0u32; 34];
        r[0] = if seed == 0 { 1 } else { seed };
        for i in 1..31 {
            // 16807 * r mod (2^31 - 1), by Schrage's method on signed words.
            let prev = r[i - 1] as i32 as i64;
            let (hi, lo) = (prev / 127_773, prev % 127_773);
            let mut word = 16_807 * lo - 2_836 * hi;
            if word < 0 {
                word += 2_147_483_647;
            }
            r[i] = word as u32;
        }
        for i in 31..34 {
            r[i] = r[i - 31];
        }
        let mut g = LibcRand { words: r, at: 0 };
        for _ in 0..310 {
            g.next_word();
        }
        g
    }

    fn next_word(&mut self) -> u32 {
        // Word k = word k-31 + word k-3; the ring holds words k-34..k-1.
        let back = |d: usize| (self.at + 34 - d) % 34;
        let w = self.words[back(31)].wrapping_add(self.words[back(3)]);
        self.words[self.at] = w;
        self.at = (self.at + 1) % 34;
        w
    }

    /// The next `rand()`: 0 to 2^31 - 1.
    pub fn rand(&mut self) -> u32 {
        self.next_word() >> 1
    }

    /// libstdc++'s `std::random_shuffle(first, last)`: for each position i
    /// from 1, swap it with position `rand() % (i + 1)`.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in 1..items.len() {
            let j = self.rand() as usize % (i + 1);
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_state_continues_the_sequence() {
        let mut g = LibcRand::new(1);
        for _ in 0..40 {
            g.rand();
        }
        let mut h = LibcRand::from_state(&g.state()).unwrap();
        let (a, b): (Vec<u32>, Vec<u32>) = (0..50).map(|_| (g.rand(), h.rand())).unzip();
        assert_eq!(a, b);
        let bad = LibcRandState {
            words: vec![1; 33],
            at: 0,
        };
        assert!(LibcRand::from_state(&bad).is_none());
        let bad = LibcRandState {
            words: vec![1; 34],
            at: 34,
        };
        assert!(LibcRand::from_state(&bad).is_none());
    }

    #[test]
    fn glibcs_first_outputs_for_seed_1() {
        // rand() of a fresh glibc process (C's classic first value).
        let mut g = LibcRand::new(1);
        let first: Vec<u32> = (0..3).map(|_| g.rand()).collect();
        assert_eq!(first, [1_804_289_383, 846_930_886, 1_681_692_777]);
        // srand(0) is srand(1).
        assert_eq!(LibcRand::new(0).rand(), 1_804_289_383);
    }

    #[test]
    fn random_shuffle_as_libstdcxx_draws_it() {
        // g++ -std=c++11: std::random_shuffle of 0..5, then of 0..13, then
        // two rand() calls (printed by one printf, which GCC evaluates
        // right to left), in a fresh process.
        let mut g = LibcRand::new(1);
        let mut a: Vec<u32> = (0..5).collect();
        g.shuffle(&mut a);
        assert_eq!(a, [4, 3, 1, 2, 0]);
        let mut b: Vec<u32> = (0..13).collect();
        g.shuffle(&mut b);
        assert_eq!(b, [9, 12, 7, 10, 8, 1, 5, 4, 3, 0, 6, 11, 2]);
        assert_eq!((g.rand(), g.rand()), (1_365_180_540, 1_540_383_426));
    }
}
