//! A small L-BFGS minimizer for smooth convex objectives (the fusion
//! model's), with parameters that can be held fixed.

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimizes a smooth convex function by L-BFGS (ten pairs of history)
/// with a backtracking line search; `fixed` marks parameters held where
/// they start. Written here because the model is not a stock multinomial
/// regression (one temperature shared by every class's own log-probability,
/// penalized towards 1), which linfa-logistic cannot express, and this is
/// smaller than pulling in argmin for its optimizer.
pub fn minimize(
    f: impl Fn(&[f64]) -> (f64, Vec<f64>),
    mut x: Vec<f64>,
    fixed: &[bool],
) -> Vec<f64> {
    let masked = |mut g: Vec<f64>| {
        for (v, &fix) in g.iter_mut().zip(fixed) {
            if fix {
                *v = 0.0;
            }
        }
        g
    };
    let (mut fx, g) = f(&x);
    let mut g = masked(g);
    let mut history: std::collections::VecDeque<(Vec<f64>, Vec<f64>, f64)> = Default::default();
    for _ in 0..500 {
        if g.iter().all(|v| v.abs() < 1e-9) {
            break;
        }
        // Two-loop recursion: d = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qv, yv)| *qv -= a * yv);
            alphas.push(a);
        }
        let gamma = history.back().map_or(
            1.0 / g.iter().map(|v| v * v).sum::<f64>().sqrt().max(1.0),
            |(s, y, _)| dot(s, y) / dot(y, y),
        );
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(qv, sv)| *qv += (a - b) * sv);
        }
        let mut d: Vec<f64> = q.iter().map(|v| -v).collect();
        if dot(&d, &g) >= 0.0 {
            d = g.iter().map(|v| -v).collect();
            history.clear();
        }
        let slope = dot(&d, &g);
        let mut step = 1.0;
        let mut next = None;
        for _ in 0..50 {
            let trial: Vec<f64> = x.iter().zip(&d).map(|(a, b)| a + step * b).collect();
            let (ft, gt) = f(&trial);
            if ft.is_finite() && ft <= fx + 1e-4 * step * slope {
                next = Some((trial, ft, masked(gt)));
                break;
            }
            step *= 0.5;
        }
        let Some((x_new, f_new, g_new)) = next else {
            break;
        };
        let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            if history.len() == 10 {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / sy));
        }
        let converged = (fx - f_new).abs() <= 1e-12 * (1.0 + fx.abs());
        (x, fx, g) = (x_new, f_new, g_new);
        if converged {
            break;
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f(x) = Σ a_i (x_i - c_i)² + (x_0 - x_1)²: convex, ill-conditioned
    /// (a from 1 to 1000), coupled, minimum found by hand where the
    /// gradient vanishes.
    fn quadratic(x: &[f64]) -> (f64, Vec<f64>) {
        let a = [1.0, 10.0, 100.0, 1000.0];
        let c = [1.0, -2.0, 3.0, 0.5];
        let mut f = (x[0] - x[1]).powi(2);
        let mut g = vec![2.0 * (x[0] - x[1]), -2.0 * (x[0] - x[1]), 0.0, 0.0];
        for i in 0..4 {
            f += a[i] * (x[i] - c[i]).powi(2);
            g[i] += 2.0 * a[i] * (x[i] - c[i]);
        }
        (f, g)
    }

    #[test]
    fn finds_the_minimum_of_an_ill_conditioned_quadratic() {
        let x = minimize(quadratic, vec![0.0; 4], &[false; 4]);
        // x2 and x3 sit at c; x0 and x1 solve the gradient's first two rows,
        // 4·x0 - 2·x1 = 2 and -2·x0 + 22·x1 = -40, by Cramer's rule.
        let det = 4.0 * 22.0 - 4.0;
        let (x0, x1) = (
            (2.0 * 22.0 - 2.0 * 40.0) / det,
            (4.0 * -40.0 + 2.0 * 2.0) / det,
        );
        for (got, want) in x.iter().zip([x0, x1, 3.0, 0.5]) {
            assert!((got - want).abs() < 1e-6, "{x:?}");
        }
    }

    #[test]
    fn fixed_parameters_stay_where_they_start() {
        let x = minimize(
            quadratic,
            vec![0.0, 0.0, 7.0, 0.0],
            &[false, false, true, false],
        );
        assert_eq!(x[2], 7.0);
        assert!((x[3] - 0.5).abs() < 1e-6, "{x:?}");
    }
}
