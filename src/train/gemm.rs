//! A safe wrapper over the `gemm` crate (the kernel candle itself uses) for
//! strided single-precision products straight into reusable buffers, so the
//! convolution's large column matrices are neither copied nor reallocated.

use rayon::prelude::*;

/// A row-major view of a matrix inside a slice: element (i, j) is at
/// `i * row_stride + j * col_stride`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    /// Backing values.
    pub data: &'a [f32],
    /// Distance between rows.
    pub row_stride: usize,
    /// Distance between columns (1 for row-major, the row length for a transposed view).
    pub col_stride: usize,
}

impl<'a> View<'a> {
    /// A contiguous row-major `rows x cols` matrix.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        View {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a contiguous row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        View {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }

    fn check(&self, rows: usize, cols: usize) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.row_stride + (cols - 1) * self.col_stride;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// `dst (m x n, row-major) = a (m x k) * b (k x n)`, or `+=` when `accumulate`.
pub fn sgemm(m: usize, n: usize, k: usize, a: View, b: View, dst: &mut [f32], accumulate: bool) {
    sgemm_rows(m, n, k, a, b, dst, n, accumulate);
}

/// [`sgemm`] into `m` rows of `dst` that lie `dst_row_stride` apart (a block
/// of columns of a wider matrix).
#[allow(clippy::too_many_arguments)]
pub fn sgemm_rows(
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    dst: &mut [f32],
    dst_row_stride: usize,
    accumulate: bool,
) {
    a.check(m, k);
    b.check(k, n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        dst_row_stride >= n && dst.len() >= (m - 1) * dst_row_stride + n,
        "destination too small"
    );
    if k == 0 {
        if !accumulate {
            for row in dst.chunks_mut(dst_row_stride).take(m) {
                row[..n].fill(0.0);
            }
        }
        return;
    }
    let threads = rayon::current_num_threads();
    // Products too small to pay for handing out to threads (a recurrent
    // layer's per-timestep ones) stay on this one; the crate splits the
    // output, not the sums, so the values are the same either way.
    let threads = if m * n * k < SERIAL_BELOW { 1 } else { threads };
    if threads > 1 && m < SPLIT_BELOW_M && n >= threads * SPLIT_MIN_COLUMNS {
        // Few rows (a batch of 50 times a fully connected layer's weights):
        // the gemm crate's own threading gains little here, so each thread
        // takes a block of columns (fc6's input gradient at batch 50: 51-58
        // ms instead of 98-113 on two cores).
        let block = n.div_ceil(threads);
        let dst_at = dst.as_mut_ptr() as usize;
        (0..n.div_ceil(block)).into_par_iter().for_each(|i| {
            let (first, cols) = (i * block, block.min(n - i * block));
            // SAFETY: as below; each block writes only its own columns
            // `first..first + cols` of the checked destination rows, and
            // reads `b` from column `first` on, inside the checked view.
            unsafe {
                product(
                    m,
                    cols,
                    k,
                    a,
                    b.data.as_ptr().add(first * b.col_stride),
                    b,
                    (dst_at as *mut f32).add(first),
                    dst_row_stride,
                    accumulate,
                    gemm::Parallelism::None,
                )
            }
        });
        return;
    }
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the kernel touches was bounds-checked above; the
    // destination does not alias the (immutable) inputs.
    unsafe {
        product(
            m,
            n,
            k,
            a,
            b.data.as_ptr(),
            b,
            dst.as_mut_ptr(),
            dst_row_stride,
            accumulate,
            par,
        )
    }
}

/// Multiply-adds below which [`sgemm_rows`] stays on the calling thread.
const SERIAL_BELOW: usize = 1 << 21;
/// Rows below which [`sgemm_rows`] splits the columns between threads.
const SPLIT_BELOW_M: usize = 128;
/// The fewest columns per thread worth a split.
const SPLIT_MIN_COLUMNS: usize = 256;

/// The gemm crate's product of `a` and the `k x n` matrix at `b_at` with
/// `b`'s strides into `m` rows of `dst_at`, `dst_row_stride` apart.
///
/// # Safety
/// Every element the product reads or writes must lie in live memory, and
/// the destination must not alias the inputs or be written by anyone else.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b_at: *const f32,
    b: View,
    dst_at: *mut f32,
    dst_row_stride: usize,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst_at,
        1,
        dst_row_stride as isize,
        accumulate,
        a.data.as_ptr(),
        a.col_stride as isize,
        a.row_stride as isize,
        b_at,
        b.col_stride as isize,
        b.row_stride as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        par,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_rows_split_between_threads_match_a_naive_product() {
        // 5 rows by 1100 columns, sums of 400 (above the serial size): split
        // in three blocks (the last shorter),
        // into columns 2.. of a wider destination, b read transposed.
        let (m, n, k, stride) = (5, 1100, 400, 1104);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.3).cos()).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.7).sin()).collect();
        let want =
            |i: usize, j: usize| -> f32 { (0..k).map(|p| a[i * k + p] * bt[j * k + p]).sum() };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for accumulate in [false, true] {
            let mut dst = vec![1.0f32; m * stride];
            pool.install(|| {
                sgemm_rows(
                    m,
                    n,
                    k,
                    View::rows(&a, k),
                    View::transposed(&bt, k),
                    &mut dst[2..],
                    stride,
                    accumulate,
                )
            });
            for i in 0..m {
                let row = &dst[i * stride..(i + 1) * stride];
                assert_eq!((row[0], row[1]), (1.0, 1.0), "left of the block untouched");
                assert!(row[n + 2..].iter().all(|&v| v == 1.0), "right of it too");
                for j in 0..n {
                    let expect = want(i, j) + if accumulate { 1.0 } else { 0.0 };
                    assert!(
                        (row[j + 2] - expect).abs() < 1e-4 * expect.abs().max(1.0),
                        "({i}, {j})"
                    );
                }
            }
        }
    }

    #[test]
    fn matches_a_naive_product_with_transposes() {
        let (m, n, k) = (3, 4, 5);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 2.0).collect();
        let bt: Vec<f32> = (0..n * k).map(|i| (i as f32).sin()).collect(); // n x k
        let mut got = vec![1.0; m * n];
        sgemm(
            m,
            n,
            k,
            View::rows(&a, k),
            View::transposed(&bt, k),
            &mut got,
            false,
        );
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|p| a[i * k + p] * bt[j * k + p]).sum();
                assert!((got[i * n + j] - want).abs() < 1e-4);
            }
        }
        let before = got.clone();
        sgemm(
            m,
            n,
            k,
            View::rows(&a, k),
            View::transposed(&bt, k),
            &mut got,
            true,
        );
        for (g, b) in got.iter().zip(&before) {
            assert!((g - 2.0 * b).abs() < 1e-3);
        }
    }
}
