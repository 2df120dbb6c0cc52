//! Small filesystem helpers shared by every stage.
use crate::error::{IoContext, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary sibling file that is renamed
/// into place once complete, so readers never see a partial file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir).at(&dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(&dir)
        .at(&dir)?;
    give_default_permissions(tmp.path(), false)?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| write_error(path, bytes.len(), e))?;
    tmp.persist(path)
        .map_err(|e| crate::Error::io(path, e.error))?;
    Ok(())
}

/// Like [`write_atomic`] without the fsync: safe against the process being
/// killed (the final name only ever holds a complete file), not against power
/// loss. For bulk outputs whose integrity is checked by hash anyway.
pub fn write_renamed(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(&dir)
        .at(&dir)?;
    give_default_permissions(tmp.path(), false)?;
    tmp.write_all(bytes)
        .map_err(|e| write_error(path, bytes.len(), e))?;
    tmp.persist(path)
        .map_err(|e| crate::Error::io(path, e.error))?;
    Ok(())
}

/// A failed write of `len` bytes meant for `path`, named by `path` rather than
/// the temporary file (gone with the error, and never the user's name for
/// it). A full disk says how much the file needed and that nothing changed.
fn write_error(path: &Path, len: usize, cause: std::io::Error) -> crate::Error {
    if !is_disk_full(&cause) {
        return crate::Error::io(path, cause);
    }
    let message = format!(
        "no space left on the device for this file's {:.1} MB ({cause}); \
         nothing was written to it: free some space and run again",
        len as f64 / 1e6
    );
    crate::Error::io(path, std::io::Error::other(message))
}

/// Whether a write failed for want of space. `ErrorKind::StorageFull` is
/// newer than the crate's MSRV, so the OS codes: ENOSPC, or Windows'
/// ERROR_HANDLE_DISK_FULL (39) and ERROR_DISK_FULL (112).
fn is_disk_full(e: &std::io::Error) -> bool {
    let codes: &[i32] = if cfg!(windows) {
        &[39, 112]
    } else {
        &[libc::ENOSPC]
    };
    e.raw_os_error().is_some_and(|c| codes.contains(&c))
}

/// Gives a temporary file or folder (made private, 0600/0700, by `tempfile`)
/// the permissions a plain create would have given it under the process's
/// umask, so an output renamed into place is as readable as any other file
/// the user makes (a shared dataset stays readable by the group).
pub fn give_default_permissions(path: &Path, dir: bool) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let base = if dir { 0o777 } else { 0o666 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(base & !umask()))
            .at(path)?;
    }
    #[cfg(not(unix))]
    let _ = (path, dir);
    Ok(())
}

/// The process's umask, read without changing it (Linux reports it in
/// /proc/self/status); the common 022 where that is not available.
#[cfg(unix)]
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// `path` as an image list or table writes it: UTF-8, and with `/` between
/// its parts on Windows too (which takes either), so a list made there reads
/// the same on Linux and in Caffe. `None` for a path that is not UTF-8.
pub fn list_path(path: &Path) -> Option<String> {
    let s = path.to_str()?;
    Some(if cfg!(windows) {
        s.replace('\\', "/")
    } else {
        s.to_string()
    })
}

/// The folder holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// [`write_atomic`], unless `path` already holds exactly `bytes`: an
/// unchanged file keeps its modification time, so the stages that compare
/// times with it (the mean, the LMDBs) are not redone. Returns whether it wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    write_atomic(path, bytes)?;
    Ok(true)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_full_disk_names_the_file_meant_and_its_size() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let e = write_error(Path::new("s/x_iter_10.caffemodel"), 230_000_000, full).to_string();
        assert!(
            e.starts_with("s/x_iter_10.caffemodel: no space left"),
            "{e}"
        );
        assert!(e.contains("230.0 MB") && e.contains("os error 28"), "{e}");
        assert!(e.contains("free some space and run again"), "{e}");
        let other = std::io::Error::from_raw_os_error(5);
        let e = write_error(Path::new("y"), 1, other).to_string();
        assert!(e.starts_with("y: ") && e.contains("os error 5"), "{e}");
    }

    #[test]
    fn atomic_outputs_get_the_permissions_of_a_plain_create() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("plain"), b"x").unwrap();
        write_atomic(&t.path().join("atomic"), b"x").unwrap();
        write_renamed(&t.path().join("renamed"), b"x").unwrap();
        let want = mode(&t.path().join("plain"));
        assert_eq!(mode(&t.path().join("atomic")), want);
        assert_eq!(mode(&t.path().join("renamed")), want);
        std::fs::create_dir(t.path().join("dir")).unwrap();
        let staged = tempfile::tempdir_in(t.path()).unwrap();
        give_default_permissions(staged.path(), true).unwrap();
        assert_eq!(mode(staged.path()), mode(&t.path().join("dir")));
    }
}
