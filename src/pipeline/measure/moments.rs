//! Shape from a binary mask's moments: Hu's seven invariants (unchanged by
//! translation, scale, rotation, and but for the seventh's sign, mirroring)
//! and the elongation of the mask's inertia ellipse.

/// Normalized central moments `eta_pq` of a mask, the inputs of Hu's invariants.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Normalized {
    pub n20: f64,
    pub n02: f64,
    pub n11: f64,
    pub n30: f64,
    pub n03: f64,
    pub n21: f64,
    pub n12: f64,
}

/// Moments of the `true` pixels of a row-major `width`-wide mask, each
/// pixel a unit mass at its integer coordinates.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Moments {
    /// Pixels.
    pub m00: f64,
    /// Central second moments (sums of dx², dy², dx·dy).
    pub mu20: f64,
    pub mu02: f64,
    pub mu11: f64,
    /// Normalized central moments, `mu_pq / m00^(1 + (p+q)/2)`.
    pub eta: Normalized,
}

/// The moments of `mask`. Central moments come from a second pass over the
/// pixels' offsets from the centroid rather than from raw moments, which
/// would cancel catastrophically on large masks.
pub fn moments(mask: &[bool], width: usize) -> Moments {
    // Row by row, so no pixel pays for a division.
    let on = || {
        mask.chunks(width.max(1)).enumerate().flat_map(|(y, row)| {
            row.iter()
                .enumerate()
                .filter(|(_, &m)| m)
                .map(move |(x, _)| (x as f64, y as f64))
        })
    };
    let (mut m00, mut sx, mut sy) = (0.0, 0.0, 0.0);
    for (x, y) in on() {
        m00 += 1.0;
        sx += x;
        sy += y;
    }
    if m00 == 0.0 {
        return Moments::default();
    }
    let (cx, cy) = (sx / m00, sy / m00);
    let mut mu = [[0.0f64; 4]; 4];
    for (x, y) in on() {
        let (dx, dy) = (x - cx, y - cy);
        let (dx2, dy2) = (dx * dx, dy * dy);
        mu[2][0] += dx2;
        mu[0][2] += dy2;
        mu[1][1] += dx * dy;
        mu[3][0] += dx2 * dx;
        mu[0][3] += dy2 * dy;
        mu[2][1] += dx2 * dy;
        mu[1][2] += dx * dy2;
    }
    let eta = |p: usize, q: usize| mu[p][q] / m00.powf(1.0 + (p + q) as f64 / 2.0);
    Moments {
        m00,
        mu20: mu[2][0],
        mu02: mu[0][2],
        mu11: mu[1][1],
        eta: Normalized {
            n20: eta(2, 0),
            n02: eta(0, 2),
            n11: eta(1, 1),
            n30: eta(3, 0),
            n03: eta(0, 3),
            n21: eta(2, 1),
            n12: eta(1, 2),
        },
    }
}

/// Hu's seven moment invariants (Hu 1962, "Visual pattern recognition by
/// moment invariants").
pub fn hu(e: &Normalized) -> [f64; 7] {
    let Normalized {
        n20,
        n02,
        n11,
        n30,
        n03,
        n21,
        n12,
    } = *e;
    let (a, b) = (n30 + n12, n21 + n03);
    let (c, d) = (n30 - 3.0 * n12, 3.0 * n21 - n03);
    [
        n20 + n02,
        (n20 - n02).powi(2) + 4.0 * n11 * n11,
        c * c + d * d,
        a * a + b * b,
        c * a * (a * a - 3.0 * b * b) + d * b * (3.0 * a * a - b * b),
        (n20 - n02) * (a * a - b * b) + 4.0 * n11 * a * b,
        d * a * (a * a - 3.0 * b * b) - c * b * (3.0 * a * a - b * b),
    ]
}

/// ln of the ratio of the inertia ellipse's axes: 0 for a disc or a square,
/// growing with elongation. Each pixel is a unit square, whose own spread
/// (1/12 along each axis) keeps a one-pixel line finite.
pub fn elongation(m: &Moments) -> f64 {
    if m.m00 == 0.0 {
        return 0.0;
    }
    let own = 1.0 / 12.0;
    let (a, b, c) = (m.mu20 / m.m00 + own, m.mu02 / m.m00 + own, m.mu11 / m.m00);
    let root = ((a - b).powi(2) + 4.0 * c * c).sqrt();
    let (major, minor) = ((a + b + root) / 2.0, (a + b - root) / 2.0);
    0.5 * (major / minor.max(f64::MIN_POSITIVE)).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rectangle(w: usize, h: usize, cols: usize, rows: usize) -> Vec<bool> {
        (0..cols * rows)
            .map(|i| (1..1 + w).contains(&(i % cols)) && (2..2 + h).contains(&(i / cols)))
            .collect()
    }

    /// A filled `w` x `h` rectangle of pixels: each axis is a discrete
    /// uniform distribution, variance (n² - 1)/12, so
    /// eta20 = (w² - 1) / (12 w h) and eta02 = (h² - 1) / (12 w h); every
    /// odd moment and mu11 vanish by symmetry. Hence (derived by hand)
    /// hu1 = eta20 + eta02, hu2 = (eta20 - eta02)², hu3..hu7 = 0.
    #[test]
    fn rectangle_moments_match_the_closed_form() {
        let (w, h) = (7.0, 4.0);
        let m = moments(&rectangle(7, 4, 12, 9), 12);
        assert_eq!(m.m00, 28.0);
        let (e20, e02) = (
            (w * w - 1.0) / (12.0 * w * h),
            (h * h - 1.0) / (12.0 * w * h),
        );
        assert!((m.eta.n20 - e20).abs() < 1e-15, "{} vs {e20}", m.eta.n20);
        assert!((m.eta.n02 - e02).abs() < 1e-15);
        let hu = hu(&m.eta);
        assert!((hu[0] - (e20 + e02)).abs() < 1e-15);
        assert!((hu[1] - (e20 - e02).powi(2)).abs() < 1e-15);
        assert!(hu[2..].iter().all(|v| v.abs() < 1e-20), "{hu:?}");
        // Inertia ellipse: variances (w²-1)/12 + 1/12 = w²/12 and h²/12,
        // so the axes' ratio is w/h.
        assert!((elongation(&m) - (w / h).ln()).abs() < 1e-12);
        let square = moments(&rectangle(5, 5, 8, 8), 8);
        assert!(elongation(&square).abs() < 1e-12);
    }

    #[test]
    fn an_asymmetric_shape_keeps_its_invariants_when_turned_and_mirrored() {
        // An L with a tail: no symmetry, so every invariant is nonzero.
        let (w, h) = (9, 7);
        let on = |x: usize, y: usize| (x == 1 && y < 6) || (y == 5 && x < 7) || (x == 6 && y == 4);
        let mask: Vec<bool> = (0..w * h).map(|i| on(i % w, i / w)).collect();
        // Turned a quarter (x, y) -> (h-1-y, x) in an h-wide frame, and mirrored.
        let turned: Vec<bool> = (0..w * h)
            .map(|i| {
                let (x, y) = (i % h, i / h);
                on(y, h - 1 - x)
            })
            .collect();
        let mirrored: Vec<bool> = (0..w * h).map(|i| on(w - 1 - i % w, i / w)).collect();
        let a = hu(&moments(&mask, w).eta);
        let b = hu(&moments(&turned, h).eta);
        let c = hu(&moments(&mirrored, w).eta);
        assert!(a.iter().all(|v| v.abs() > 1e-9), "{a:?}");
        for k in 0..7 {
            assert!(
                (a[k] - b[k]).abs() <= 1e-12 * a[k].abs().max(1e-6),
                "hu{}",
                k + 1
            );
            // Mirroring flips the seventh's sign only.
            let sign = if k == 6 { -1.0 } else { 1.0 };
            assert!(
                (a[k] - sign * c[k]).abs() <= 1e-12 * a[k].abs().max(1e-6),
                "hu{}",
                k + 1
            );
        }
        let (ea, eb) = (
            elongation(&moments(&mask, w)),
            elongation(&moments(&turned, h)),
        );
        assert!((ea - eb).abs() < 1e-12 && ea > 0.0);
    }

    #[test]
    fn an_empty_mask_has_zero_moments() {
        let m = moments(&[false; 12], 4);
        assert_eq!(m, Moments::default());
        assert_eq!(elongation(&m), 0.0);
        assert_eq!(hu(&m.eta), [0.0; 7]);
    }
}
