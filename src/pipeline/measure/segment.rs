//! Finding the object in a one-channel image: the background level from the
//! border, a threshold on each pixel's distance from it, and the largest
//! connected region above that threshold (so dust specks and a scan's
//! noise do not count as the organism).

/// The smallest distance from the background that can count as object:
/// below this, an Otsu split of a blank image would cut its noise in two.
pub const MIN_CONTRAST: u8 = 8;

/// The object found in an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segmentation {
    /// The background level: the median of the outermost pixels.
    pub background: u8,
    /// Pixels at least this far from the background are candidates.
    pub threshold: u8,
    /// Row-major, `true` on the object's pixels.
    pub mask: Vec<bool>,
    /// Pixels in `mask`.
    pub area: usize,
    /// The columns and rows `mask`'s pixels lie in: (x0, y0, x1, y1), ends
    /// exclusive; empty (all 0) without an object.
    pub bounds: (usize, usize, usize, usize),
}

/// The median of the outermost rows and columns. The median rather than the
/// mean, so an organism touching the edge does not shift it.
pub fn background(pixels: &[u8], width: usize, height: usize) -> u8 {
    let mut hist = [0usize; 256];
    let mut count = 0;
    for y in 0..height {
        let row = &pixels[y * width..(y + 1) * width];
        if y == 0 || y + 1 == height {
            row.iter().for_each(|&v| hist[v as usize] += 1);
            count += width;
        } else {
            hist[row[0] as usize] += 1;
            count += 1;
            if width > 1 {
                hist[row[width - 1] as usize] += 1;
                count += 1;
            }
        }
    }
    // The lower median: the first level with at least half the pixels at or below it.
    let mut seen = 0;
    for (v, &n) in hist.iter().enumerate() {
        seen += n;
        if 2 * seen >= count {
            return v as u8;
        }
    }
    0
}

/// Otsu's threshold over a histogram: the level `t` that maximizes the
/// between-class variance of the split {<= t} / {> t}; the first such
/// level on ties. 0 for a histogram with a single level.
pub fn otsu(hist: &[usize; 256]) -> u8 {
    let total: f64 = hist.iter().sum::<usize>() as f64;
    let sum: f64 = hist
        .iter()
        .enumerate()
        .map(|(v, &n)| v as f64 * n as f64)
        .sum();
    let (mut below, mut below_sum) = (0.0, 0.0);
    let (mut best, mut best_var) = (0u8, 0.0);
    for (t, &n) in hist.iter().enumerate().take(255) {
        below += n as f64;
        below_sum += t as f64 * n as f64;
        let above = total - below;
        if below == 0.0 || above == 0.0 {
            continue;
        }
        let diff = below_sum / below - (sum - below_sum) / above;
        let var = below * above * diff * diff;
        if var > best_var {
            (best, best_var) = (t as u8, var);
        }
    }
    best
}

/// The object in `pixels` (`width` x `height`, one channel): pixels whose
/// distance from the background exceeds Otsu's threshold on those
/// distances (and at least [`MIN_CONTRAST`]), then the largest
/// 8-connected region of them (the first in raster order on ties).
pub fn segment(pixels: &[u8], width: usize, height: usize) -> Segmentation {
    let background = background(pixels, width, height);
    let distance = |v: u8| v.abs_diff(background);
    let mut hist = [0usize; 256];
    pixels.iter().for_each(|&v| hist[distance(v) as usize] += 1);
    let threshold = otsu(&hist).max(MIN_CONTRAST - 1) + 1;
    let candidate: Vec<bool> = pixels.iter().map(|&v| distance(v) >= threshold).collect();
    let (mask, area, bounds) = largest_region(&candidate, width, height);
    Segmentation {
        background,
        threshold,
        mask,
        area,
        bounds,
    }
}

/// Region bounds (x0, y0, x1, y1), ends exclusive.
type Bounds = (usize, usize, usize, usize);

/// The largest 8-connected region of `on`, its size and its bounds.
fn largest_region(on: &[bool], width: usize, height: usize) -> (Vec<bool>, usize, Bounds) {
    // 0: not yet labelled; regions are numbered from 1 in raster order.
    let mut label = vec![0u32; on.len()];
    let (mut best, mut best_size, mut best_bounds) = (0u32, 0usize, (0, 0, 0, 0));
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..on.len() {
        if !on[start] || label[start] != 0 {
            continue;
        }
        next += 1;
        label[start] = next;
        // Coordinates on the stack, so no pixel pays for a division.
        stack.push((start % width, start / width));
        let mut size = 0;
        let mut b = (usize::MAX, usize::MAX, 0, 0);
        while let Some((x, y)) = stack.pop() {
            size += 1;
            b = (b.0.min(x), b.1.min(y), b.2.max(x + 1), b.3.max(y + 1));
            for ny in y.saturating_sub(1)..(y + 2).min(height) {
                for nx in x.saturating_sub(1)..(x + 2).min(width) {
                    let j = ny * width + nx;
                    if on[j] && label[j] == 0 {
                        label[j] = next;
                        stack.push((nx, ny));
                    }
                }
            }
        }
        if size > best_size {
            (best, best_size, best_bounds) = (next, size, b);
        }
    }
    let mask = label.iter().map(|&l| l != 0 && l == best).collect();
    (mask, best_size, best_bounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_is_the_border_median() {
        // A 4x3 image whose border is mostly 200, with one dark edge pixel
        // (the median ignores it) and a dark centre (not on the border).
        #[rustfmt::skip]
        let px = [
            200, 200, 10, 200,
            200, 0,   0,  200,
            200, 200, 200, 201,
        ];
        assert_eq!(background(&px, 4, 3), 200);
        assert_eq!(background(&[7], 1, 1), 7);
    }

    #[test]
    fn otsu_splits_two_levels_between_them() {
        let mut hist = [0usize; 256];
        hist[10] = 50;
        hist[200] = 30;
        // Every t in 10..200 gives the same split; the first is chosen.
        assert_eq!(otsu(&hist), 10);
        hist[100] = 5;
        assert_eq!(otsu(&hist), 100);
        let mut flat = [0usize; 256];
        flat[42] = 9;
        assert_eq!(otsu(&flat), 0);
    }

    #[test]
    fn the_largest_region_wins_and_specks_are_dropped() {
        // Dark background, a 3x3 object, a diagonal 2-pixel speck (one
        // region under 8-connectivity) and an isolated pixel.
        let (w, h) = (10, 8);
        let mut px = vec![5u8; w * h];
        for y in 2..5 {
            for x in 2..5 {
                px[y * w + x] = 180;
            }
        }
        px[w + 8] = 180;
        px[2 * w + 9] = 180;
        px[6 * w + 7] = 90;
        let s = segment(&px, w, h);
        assert_eq!(s.background, 5);
        assert_eq!(s.area, 9);
        assert!(s.mask[3 * w + 3] && !s.mask[w + 8] && !s.mask[6 * w + 7]);
        assert_eq!(s.bounds, (2, 2, 5, 5));
        // A blank image has no object: nothing is far enough from the background.
        let blank = segment(&[128; 64], 8, 8);
        assert_eq!((blank.area, blank.bounds), (0, (0, 0, 0, 0)));
        let noisy: Vec<u8> = (0..64).map(|i| 128 + (i % 3) as u8).collect();
        assert_eq!(segment(&noisy, 8, 8).area, 0);
    }

    #[test]
    fn bright_and_dark_backgrounds_find_the_same_object() {
        let (w, h) = (9, 9);
        let dark: Vec<u8> = (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                if (2..7).contains(&x) && (3..6).contains(&y) {
                    150 + (x * y) as u8
                } else {
                    3
                }
            })
            .collect();
        let light: Vec<u8> = dark.iter().map(|v| 255 - v).collect();
        let (a, b) = (segment(&dark, w, h), segment(&light, w, h));
        assert_eq!(a.mask, b.mask);
        assert_eq!(a.area, 15);
        assert_eq!(b.background, 252);
    }
}
