//! Whether a CPU net fits in this machine's memory, checked when the net is
//! built, and fallible allocation of the big scratch buffers: a batch size or
//! layer size that cannot fit is a clear error naming what to change, rather
//! than an allocation abort (or the OOM killer) in the middle of a run.
use crate::error::{Error, Result};

/// Physical memory plus swap in bytes, from Linux's `/proc/meminfo` (on
/// Windows, the commit limit: memory plus page file); `None` where that is
/// unavailable (the check is then skipped).
#[cfg(not(windows))]
pub fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some(field("MemTotal:")? + field("SwapTotal:").unwrap_or(0))
}

/// Physical memory plus page file in bytes (the commit limit), from
/// `GlobalMemoryStatusEx`.
#[cfg(windows)]
pub fn machine_memory() -> Option<u64> {
    use windows_sys::Win32::System::SystemInformation::{GlobalMemoryStatusEx, MEMORYSTATUSEX};
    // SAFETY: MEMORYSTATUSEX is plain data; all zeroes is a valid value.
    let mut status: MEMORYSTATUSEX = unsafe { std::mem::zeroed() };
    status.dwLength = std::mem::size_of::<MEMORYSTATUSEX>() as u32;
    // SAFETY: `status` is a MEMORYSTATUSEX with its length set, as the call
    // requires; it writes only into it.
    let ok = unsafe { GlobalMemoryStatusEx(&mut status) } != 0;
    // Wine caches these figures and can hand a thread that asks while
    // another fills the cache zeroes (seen once under the parallel tests):
    // a zero is "unknown", and the commit limit is never below the RAM.
    let total = status.ullTotalPageFile.max(status.ullTotalPhys);
    (ok && total > 0).then_some(total)
}

/// Has glibc's malloc serve buffers of up to 1 GiB from its heap, and keep
/// them there when freed, instead of mapping each large one afresh and
/// unmapping it on free. The CPU trainer allocates every activation,
/// gradient and updated weight anew each iteration; fresh mappings cost a
/// page fault per 4 KiB touched, which was 12-17% of a CaffeNet training
/// step (ReLU and pooling at batch 50 ran 2-6x slower). The price: freed
/// memory stays with the process for the next iteration (peak RSS of that
/// step +11%). Process-wide, so the binary calls it for the training
/// commands only; a no-op off glibc.
pub fn reuse_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; glibc accepts it
    // at any time, and ignores values it cannot apply.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// `bytes` in GiB, for messages.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Fails, naming `context`, when the memory floors of nets that live
/// together (each a byte count and a breakdown) pass the machine's memory
/// and swap. Skipped where the machine's memory is unknown.
pub(crate) fn check_fits(context: &str, floors: &[(u64, String)]) -> Result<()> {
    let Some(limit) = machine_memory() else {
        return Ok(());
    };
    let total = floors.iter().map(|f| f.0).fold(0, u64::saturating_add);
    if total <= limit {
        return Ok(());
    }
    let detail: Vec<&str> = floors.iter().map(|f| f.1.as_str()).collect();
    Err(Error::model(
        context,
        format!(
            "needs at least {} ({}) but this machine has {} of memory and swap; lower batch_size",
            gib(total),
            detail.join("; "),
            gib(limit)
        ),
    ))
}

/// Resizes a scratch buffer to `len` zero-filled elements, failing with an
/// error naming `context` (a layer) when the memory cannot be had.
pub(crate) fn try_resize(buf: &mut Vec<f32>, len: usize, context: &str) -> Result<()> {
    if len > buf.len() {
        buf.try_reserve_exact(len - buf.len()).map_err(|_| {
            Error::model(
                context,
                format!(
                    "cannot allocate {} of scratch memory; lower batch_size",
                    gib(len as u64 * 4)
                ),
            )
        })?;
    }
    buf.resize(len, 0.0);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_buffers_are_errors() {
        let mut buf = Vec::new();
        try_resize(&mut buf, 16, "layer 'c'").unwrap();
        assert_eq!(buf, vec![0.0; 16]);
        let e = try_resize(&mut buf, usize::MAX / 8, "layer 'c'").unwrap_err();
        assert!(e.to_string().contains("layer 'c'"), "{e}");
        if cfg!(any(target_os = "linux", windows)) {
            assert!(machine_memory().unwrap() > 1 << 20);
        }
    }
}
