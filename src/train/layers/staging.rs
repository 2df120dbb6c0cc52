//! The host buffer a data feed fills with each batch, and the batch's trip
//! to the net's device. On the CPU the tensor takes the buffer as it is. On
//! a GPU one page-locked buffer is reused for every batch, so the copy is a
//! direct DMA (pageable memory is staged through the driver at about half
//! the speed); if pinning fails, a reused pageable buffer does the job.
//! Either way the copy runs and completes on the feed's own thread, ahead
//! of the net's use.
use crate::error::Result;
use candle_core::{Device, Tensor};

enum Buf {
    Host(Vec<f32>),
    #[cfg(feature = "cuda")]
    Pinned(candle_core::cuda_backend::cudarc::driver::PinnedHostSlice<f32>),
}

/// One batch's worth of f32 input, refilled batch after batch.
pub(super) struct Staging {
    device: Device,
    len: usize,
    buf: Buf,
}

impl Staging {
    /// A buffer of `len` values for batches bound for `device`.
    pub(super) fn new(device: &Device, len: usize) -> Self {
        Staging {
            device: device.clone(),
            len,
            buf: pinned(device, len).unwrap_or(Buf::Host(Vec::new())),
        }
    }

    /// Whether batches go through page-locked memory.
    #[cfg(test)]
    pub(super) fn is_pinned(&self) -> bool {
        !matches!(self.buf, Buf::Host(_))
    }

    /// The buffer to fill. Its old contents are unspecified: the feed
    /// overwrites every element.
    pub(super) fn buffer(&mut self) -> Result<&mut [f32]> {
        match &mut self.buf {
            Buf::Host(v) => {
                if v.len() != self.len {
                    // vec! of zeros comes from calloc: fresh zero pages,
                    // faulted in by the parallel fill rather than written
                    // twice by one thread, as resize would.
                    *v = vec![0.0; self.len];
                }
                Ok(v)
            }
            #[cfg(feature = "cuda")]
            Buf::Pinned(p) => {
                use candle_core::cuda_backend::WrapErr;
                Ok(p.as_mut_slice().w()?)
            }
        }
    }

    /// The filled buffer as a `shape` tensor plus the labels, both on the
    /// device and ready to use.
    pub(super) fn upload(
        &mut self,
        shape: (usize, usize, usize, usize),
        labels: Vec<f32>,
    ) -> Result<(Tensor, Tensor)> {
        let n = labels.len();
        let labels = Tensor::from_vec(labels, n, &self.device)?;
        let data = match &mut self.buf {
            // The CPU tensor takes the buffer; the next batch gets a fresh one.
            Buf::Host(v) if self.device.is_cpu() => {
                return Ok((
                    Tensor::from_vec(std::mem::take(v), shape, &self.device)?,
                    labels,
                ))
            }
            Buf::Host(v) => Tensor::from_slice(v, shape, &self.device)?,
            #[cfg(feature = "cuda")]
            Buf::Pinned(p) => {
                use candle_core::cuda_backend::{CudaStorage, WrapErr};
                let dev = self.device.as_cuda_device()?;
                // SAFETY: the copy below writes every element.
                let mut dst = unsafe { dev.alloc::<f32>(self.len)? };
                dev.cuda_stream().memcpy_htod(p, &mut dst).w()?;
                let storage =
                    candle_core::Storage::Cuda(CudaStorage::wrap_cuda_slice(dst, dev.clone()));
                Tensor::from_storage(storage, shape, candle_core::op::BackpropOp::none(), false)
            }
        };
        // CUDA streams are per thread: finish this thread's copies before
        // the net (another thread) reads the tensors.
        self.device.synchronize()?;
        Ok((data, labels))
    }
}

#[cfg(feature = "cuda")]
fn pinned(device: &Device, len: usize) -> Option<Buf> {
    let Device::Cuda(dev) = device else {
        return None;
    };
    // Plain page-locked memory (not write-combined: the feed's writes are
    // scattered over rows, and nothing here should read uncached memory).
    // SAFETY: the feed overwrites every element before each copy.
    unsafe {
        dev.cuda_stream()
            .context()
            .alloc_pinned_with_flags::<f32>(len, 0)
            .ok()
            .map(Buf::Pinned)
    }
}

#[cfg(not(feature = "cuda"))]
fn pinned(_device: &Device, _len: usize) -> Option<Buf> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_batch_takes_the_buffer_and_the_next_gets_a_fresh_one() {
        let mut s = Staging::new(&Device::Cpu, 2 * 3);
        assert!(!s.is_pinned());
        for round in 0..2 {
            let buf = s.buffer().unwrap();
            assert_eq!(buf.len(), 6);
            for (i, v) in buf.iter_mut().enumerate() {
                *v = (i + 10 * round) as f32;
            }
            let (data, labels) = s.upload((2, 3, 1, 1), vec![1.0, 2.0]).unwrap();
            assert_eq!(data.dims(), &[2, 3, 1, 1]);
            let got: Vec<f32> = data.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(
                got,
                (0..6).map(|i| (i + 10 * round) as f32).collect::<Vec<_>>()
            );
            assert_eq!(labels.to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        }
    }
}
