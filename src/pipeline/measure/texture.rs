//! Texture inside the object: Haralick's features of the gray-level
//! co-occurrence matrix (Haralick, Shanmugam & Dinstein 1973), over pairs of
//! neighbouring object pixels only, so the background's flat field does
//! not drown the organism's texture.

/// Gray levels the co-occurrence matrix distinguishes: 256 / 8, so a
/// level is `value >> 3`.
pub const LEVELS: usize = 32;

/// Neighbour offsets (dx, dy) at distance 1: 0°, 45°, 90° and 135°. A
/// quarter turn of the image maps this set onto itself (up to sign, which a
/// symmetric matrix ignores), so their average does not change when the
/// image is turned.
const OFFSETS: [(isize, isize); 4] = [(1, 0), (1, 1), (0, 1), (-1, 1)];

/// Haralick's features, each averaged over the four directions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Texture {
    /// Σ (i-j)² P(i,j): local variation.
    pub contrast: f64,
    /// Σ (i-μ)(j-μ) P(i,j) / σ²: linear dependence of neighbours (1 where σ = 0).
    pub correlation: f64,
    /// Σ P(i,j)² (angular second moment): uniformity.
    pub energy: f64,
    /// Σ P(i,j) / (1 + (i-j)²) (inverse difference moment).
    pub homogeneity: f64,
    /// -Σ P(i,j) ln P(i,j).
    pub entropy: f64,
}

/// What a region without neighbouring pixel pairs (a single pixel, say)
/// gets: the texture of a uniform patch.
const UNIFORM: Texture = Texture {
    contrast: 0.0,
    correlation: 1.0,
    energy: 1.0,
    homogeneity: 1.0,
    entropy: 0.0,
};

/// The texture of the `mask`ed pixels of a `width` x `height` one-channel image.
pub fn texture(pixels: &[u8], mask: &[bool], width: usize, height: usize) -> Texture {
    let mut sum = [0.0f64; 5];
    let mut directions = 0;
    for (dx, dy) in OFFSETS {
        let mut counts = vec![0u64; LEVELS * LEVELS];
        let mut pairs = 0u64;
        // dy is 0 or 1 and dx -1, 0 or 1: the columns x whose neighbour
        // x + dx is in the image.
        let dy = dy as usize;
        let xs = if dx < 0 {
            1..width
        } else {
            0..width.saturating_sub(dx as usize)
        };
        for y in 0..height.saturating_sub(dy) {
            let ny = y + dy;
            for x in xs.clone() {
                let (i, j) = (y * width + x, ny * width + x.wrapping_add_signed(dx));
                if !(mask[i] && mask[j]) {
                    continue;
                }
                let (a, b) = ((pixels[i] >> 3) as usize, (pixels[j] >> 3) as usize);
                // Symmetric: each pair counted both ways.
                counts[a * LEVELS + b] += 1;
                counts[b * LEVELS + a] += 1;
                pairs += 2;
            }
        }
        if pairs == 0 {
            continue;
        }
        let t = features(&counts, pairs as f64);
        for (s, v) in sum.iter_mut().zip([
            t.contrast,
            t.correlation,
            t.energy,
            t.homogeneity,
            t.entropy,
        ]) {
            *s += v;
        }
        directions += 1;
    }
    if directions == 0 {
        return UNIFORM;
    }
    let n = directions as f64;
    Texture {
        contrast: sum[0] / n,
        correlation: sum[1] / n,
        energy: sum[2] / n,
        homogeneity: sum[3] / n,
        entropy: sum[4] / n,
    }
}

/// Haralick's features of one symmetric co-occurrence count matrix.
fn features(counts: &[u64], total: f64) -> Texture {
    let cells = || {
        counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(move |(k, &c)| ((k / LEVELS) as f64, (k % LEVELS) as f64, c as f64 / total))
    };
    // Symmetric, so the row and column marginals are the same.
    let mean: f64 = cells().map(|(i, _, p)| i * p).sum();
    let var: f64 = cells().map(|(i, _, p)| (i - mean).powi(2) * p).sum();
    let mut t = Texture {
        contrast: 0.0,
        correlation: 0.0,
        energy: 0.0,
        homogeneity: 0.0,
        entropy: 0.0,
    };
    let mut covariance = 0.0;
    for (i, j, p) in cells() {
        let d2 = (i - j) * (i - j);
        t.contrast += d2 * p;
        t.energy += p * p;
        t.homogeneity += p / (1.0 + d2);
        t.entropy -= p * p.ln();
        covariance += (i - mean) * (j - mean) * p;
    }
    t.correlation = if var > 0.0 { covariance / var } else { 1.0 };
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkerboard of levels 0 and 15 (values 0 and 120): horizontal and
    /// vertical neighbours always differ by 15 levels, diagonal ones never
    /// do. So by hand: contrast (225 + 0)/2, correlation (-1 + 1)/2,
    /// energy 0.5 (two equal cells in each direction), entropy ln 2,
    /// homogeneity (1/226 + 1)/2.
    #[test]
    fn a_checkerboard_has_the_textbook_values() {
        let (w, h) = (6, 5);
        let px: Vec<u8> = (0..w * h)
            .map(|i| if (i % w + i / w) % 2 == 0 { 0 } else { 120 })
            .collect();
        let t = texture(&px, &vec![true; w * h], w, h);
        assert!((t.contrast - 112.5).abs() < 1e-12, "{t:?}");
        assert!(t.correlation.abs() < 1e-12);
        assert!((t.energy - 0.5).abs() < 1e-12);
        assert!((t.entropy - std::f64::consts::LN_2).abs() < 1e-12);
        assert!((t.homogeneity - (1.0 / 226.0 + 1.0) / 2.0).abs() < 1e-12);
    }

    #[test]
    fn only_object_pairs_count() {
        // A flat object on a background of another level: the masked
        // texture is uniform, the whole image's would not be.
        let (w, h) = (6, 6);
        let px: Vec<u8> = (0..w * h)
            .map(|i| if (1..5).contains(&(i % w)) { 200 } else { 0 })
            .collect();
        let mask: Vec<bool> = (0..w * h).map(|i| (1..5).contains(&(i % w))).collect();
        assert_eq!(texture(&px, &mask, w, h), UNIFORM);
        assert!(texture(&px, &[true; 36], w, h).contrast > 0.0);
        // One pixel has no pairs.
        let mut one = vec![false; 36];
        one[7] = true;
        assert_eq!(texture(&px, &one, w, h), UNIFORM);
    }

    #[test]
    fn a_quarter_turn_leaves_the_texture_unchanged() {
        let (w, h) = (7, 5);
        let px: Vec<u8> = (0..w * h)
            .map(|i| ((i * 37 + i / w * 11) % 256) as u8)
            .collect();
        let mask: Vec<bool> = (0..w * h).map(|i| i % 5 != 0).collect();
        // (x, y) in the turned h-wide frame is (y, h-1-x) in the original.
        let at = |x: usize, y: usize| y * w + x;
        let turned_px: Vec<u8> = (0..w * h).map(|i| px[at(i / h, h - 1 - i % h)]).collect();
        let turned_mask: Vec<bool> = (0..w * h).map(|i| mask[at(i / h, h - 1 - i % h)]).collect();
        let (a, b) = (
            texture(&px, &mask, w, h),
            texture(&turned_px, &turned_mask, h, w),
        );
        for (x, y) in [
            (a.contrast, b.contrast),
            (a.correlation, b.correlation),
            (a.energy, b.energy),
            (a.homogeneity, b.homogeneity),
            (a.entropy, b.entropy),
        ] {
            assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
        }
    }
}
