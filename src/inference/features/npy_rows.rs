//! A float32 `.npy` written row by row before the number of rows is known.
use crate::error::{Error, IoContext, Result};
use crate::fsutil::give_default_permissions;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

/// A float32 `.npy` (format 1.0, C order) written row by row into a
/// temporary file, before the number of rows is known: its header is
/// reserved at a fixed length and rewritten, padded to that length, when
/// the file is finished and renamed into place.
pub(super) struct NpyRows {
    file: BufWriter<File>,
    tmp: tempfile::TempPath,
    shape: Vec<usize>,
    rows: u64,
}

impl NpyRows {
    /// Header bytes (magic to newline): room for any row count, a multiple
    /// of 64 so the data starts aligned, as NumPy writes it.
    fn header_len(shape: &[usize]) -> usize {
        let longest = Self::dict(u64::MAX, shape).len() + 1;
        (10 + longest).div_ceil(64) * 64
    }

    fn dict(rows: u64, shape: &[usize]) -> String {
        let dims: String = shape.iter().map(|d| format!("{d}, ")).collect();
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dims}), }}")
    }

    fn header(rows: u64, shape: &[usize]) -> Vec<u8> {
        let len = Self::header_len(shape);
        let mut dict = Self::dict(rows, shape);
        while dict.len() < len - 11 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut h = b"\x93NUMPY\x01\x00".to_vec();
        h.extend((dict.len() as u16).to_le_bytes());
        h.extend(dict.into_bytes());
        h
    }

    pub(super) fn create(dir: &Path, shape: &[usize]) -> Result<NpyRows> {
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .at(dir)?;
        give_default_permissions(tmp.path(), false)?;
        let (handle, tmp) = tmp.into_parts();
        let mut file = BufWriter::with_capacity(1 << 20, handle);
        file.write_all(&Self::header(0, shape)).at(&tmp)?;
        Ok(NpyRows {
            file,
            tmp,
            shape: shape.to_vec(),
            rows: 0,
        })
    }

    pub(super) fn push(&mut self, values: &[f32]) -> std::io::Result<()> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.file.write_all(&bytes)?;
        self.rows += 1;
        Ok(())
    }

    /// Writes the row count into the header, syncs and renames to `path`.
    pub(super) fn finish(self, path: &Path) -> Result<()> {
        let mut file = self
            .file
            .into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
        file.seek(SeekFrom::Start(0)).at(path)?;
        file.write_all(&Self::header(self.rows, &self.shape))
            .at(path)?;
        file.sync_all().at(path)?;
        self.tmp
            .persist(path)
            .map_err(|e| Error::io(path, e.error))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header is rewritten in place with the final row count; NumPy's
    /// format (read back here by npyz) sees the rows written, and the data
    /// starts 64-byte aligned.
    #[test]
    fn npy_rows_are_counted_when_finished() {
        let dir = tempfile::tempdir().unwrap();
        for (rows, shape) in [(0u64, vec![3usize]), (5, vec![2, 2]), (1, vec![])] {
            let mut w = NpyRows::create(dir.path(), &shape).unwrap();
            let per: usize = shape.iter().product();
            for r in 0..rows {
                let row: Vec<f32> = (0..per).map(|i| (r as usize * per + i) as f32).collect();
                w.push(&row).unwrap();
            }
            let path = dir.path().join(format!("{rows}.npy"));
            w.finish(&path).unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(NpyRows::header_len(&shape) % 64, 0);
            let f = npyz::NpyFile::new(bytes.as_slice()).unwrap();
            let want: Vec<u64> = std::iter::once(rows)
                .chain(shape.iter().map(|&d| d as u64))
                .collect();
            assert_eq!(f.shape(), want);
            let values = f.into_vec::<f32>().unwrap();
            assert_eq!(
                values,
                (0..rows as usize * per)
                    .map(|v| v as f32)
                    .collect::<Vec<_>>()
            );
        }
        // Only the finished files remain: no temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);
    }
}
