//! The arithmetic of a net's matrix products (convolutions and inner
//! products): fp32, Caffe's, or a bf16 mixed-precision mode for speed on
//! GPUs with bf16 tensor cores.
//!
//! The bf16 mode is what PyTorch's autocast does for these ops: the
//! product's inputs are rounded to bf16, the products accumulate in fp32
//! (cuBLAS's `CUBLAS_COMPUTE_32F`, candle's default) and the result is
//! rounded to bf16, then widened back to fp32 for everything else. Weights,
//! gradients as they reach the solver, the SGD update and every other layer
//! stay fp32, so only the products lose precision (bf16 keeps 8 significant
//! bits: about 4e-3 relative per rounding).
use crate::error::Result;
use candle_core::{DType, Tensor};

/// How matrix products compute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// fp32 throughout: Caffe's numbers (unless `--tf32` lets cuBLAS use TF32).
    #[default]
    F32,
    /// bf16 inputs and result, fp32 accumulation (see the module docs).
    Bf16,
}

/// `t` rounded to bf16 and widened back to fp32.
fn round_bf16(t: &Tensor) -> Result<Tensor> {
    Ok(t.to_dtype(DType::BF16)?.to_dtype(DType::F32)?)
}

impl Precision {
    /// `a · b` (candle's batched `matmul`), fp32 in and out.
    pub fn matmul(self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Precision::F32 => a.matmul(b)?,
            Precision::Bf16 => a
                .to_dtype(DType::BF16)?
                .matmul(&b.to_dtype(DType::BF16)?)?
                .to_dtype(DType::F32)?,
        })
    }

    /// candle's `conv2d` of `x` by kernel `k`, fp32 in and out.
    pub fn conv2d(
        self,
        x: &Tensor,
        k: &Tensor,
        pad: usize,
        stride: usize,
        dilation: usize,
        groups: usize,
    ) -> Result<Tensor> {
        Ok(match self {
            Precision::F32 => x.conv2d(k, pad, stride, dilation, groups)?,
            // candle's CPU convolution has no bf16 GEMM. Rounding the inputs
            // and the result around an fp32 convolution gives the same
            // numbers as a bf16 GEMM with fp32 accumulation (up to the order
            // of the sums), so the CPU computes what a GPU does.
            Precision::Bf16 if x.device().is_cpu() => round_bf16(&round_bf16(x)?.conv2d(
                &round_bf16(k)?,
                pad,
                stride,
                dilation,
                groups,
            )?)?,
            Precision::Bf16 => x
                .to_dtype(DType::BF16)?
                .conv2d(&k.to_dtype(DType::BF16)?, pad, stride, dilation, groups)?
                .to_dtype(DType::F32)?,
        })
    }

    /// "fp32" or "bf16".
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn ramp(shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        // Values with more than 8 significant bits, so bf16 must round them.
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * scale + 1e-3)
            .collect();
        Tensor::from_vec(v, shape.to_vec(), &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    #[test]
    fn bf16_products_are_close_to_fp32_but_rounded() {
        let (a, b) = (ramp(&[3, 17, 40], 2.0), ramp(&[3, 40, 9], 3.0));
        let exact = Precision::F32.matmul(&a, &b).unwrap();
        let mixed = Precision::Bf16.matmul(&a, &b).unwrap();
        assert_eq!(mixed.dtype(), DType::F32);
        let err = max_rel(&mixed, &exact);
        assert!(err > 1e-5 && err < 2e-2, "matmul bf16 error {err}");
        // The result itself is a bf16 value.
        let again = round_bf16(&mixed).unwrap();
        assert_eq!(max_rel(&again, &mixed), 0.0);

        let (x, k) = (ramp(&[2, 4, 11, 9], 2.0), ramp(&[6, 2, 3, 3], 1.0));
        let exact = Precision::F32.conv2d(&x, &k, 1, 2, 1, 2).unwrap();
        let mixed = Precision::Bf16.conv2d(&x, &k, 1, 2, 1, 2).unwrap();
        assert_eq!(mixed.dims(), exact.dims());
        let err = max_rel(&mixed, &exact);
        assert!(err > 1e-5 && err < 2e-2, "conv2d bf16 error {err}");
    }

    #[test]
    fn bf16_conv_matches_a_bf16_matmul_of_the_columns() {
        // A 1x1 convolution is a matrix product: the CPU's rounding
        // emulation of a bf16 convolution must agree with candle's own
        // bf16 matmul (what cuBLAS computes on a GPU).
        let (x, k) = (ramp(&[1, 5, 4, 3], 2.0), ramp(&[7, 5, 1, 1], 1.5));
        let conv = Precision::Bf16.conv2d(&x, &k, 0, 1, 1, 1).unwrap();
        let mm = Precision::Bf16
            .matmul(&k.reshape((7, 5)).unwrap(), &x.reshape((5, 12)).unwrap())
            .unwrap()
            .reshape((1, 7, 4, 3))
            .unwrap();
        assert!(max_rel(&conv, &mm) < 1e-6);
    }
}
