//! Caffe-compatible LMDB environments: a read-only, lock-free reader (CI's
//! copy of the fixtures is read-only) that refuses truncated or structurally
//! corrupt files (see the `lmdb_check` module), and a
//! writer that builds the database in a temporary folder, grows the map on
//! demand and renames it into place only when complete.
use super::lmdb_check::check_data_file;
use crate::error::{Error, IoContext, Result};
use lmdb::{Cursor, Database, Environment, EnvironmentFlags, Transaction, WriteFlags};
use std::path::{Path, PathBuf};

/// A Caffe LMDB (a folder holding `data.mdb`) opened for reading.
pub struct LmdbReader {
    env: Environment,
    db: Database,
    path: PathBuf,
}

impl LmdbReader {
    /// Opens `path` read-only without touching `lock.mdb`.
    pub fn open(path: &Path) -> Result<Self> {
        let data = path.join("data.mdb");
        std::fs::metadata(&data).map_err(|e| {
            Error::lmdb(
                path,
                format!("no readable data.mdb ({e}); is this a Caffe LMDB folder?"),
            )
        })?;
        // liblmdb trusts the page numbers and sizes in the file and would
        // crash (SIGSEGV/SIGBUS) on a truncated or corrupt one: walk its
        // structure first.
        check_data_file(&data).map_err(|m| Error::lmdb(path, m))?;
        let env = Environment::new()
            .set_flags(
                EnvironmentFlags::READ_ONLY | EnvironmentFlags::NO_LOCK | EnvironmentFlags::NO_TLS,
            )
            .set_max_readers(126)
            .open(path)
            .map_err(|e| Error::lmdb(path, format!("cannot open: {e}")))?;
        let db = env
            .open_db(None)
            .map_err(|e| Error::lmdb(path, format!("cannot open main database: {e}")))?;
        Ok(LmdbReader {
            env,
            db,
            path: path.to_path_buf(),
        })
    }

    /// The environment's folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of records.
    pub fn len(&self) -> Result<usize> {
        Ok(self
            .env
            .stat()
            .map_err(|e| Error::lmdb(&self.path, e))?
            .entries())
    }

    /// Whether the database holds no record.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Calls `f(key, value)` for every record in key order (Caffe's cursor order);
    /// stops at the first error `f` returns.
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8]) -> Result<()>) -> Result<()> {
        let txn = self
            .env
            .begin_ro_txn()
            .map_err(|e| Error::lmdb(&self.path, e))?;
        let mut cursor = txn
            .open_ro_cursor(self.db)
            .map_err(|e| Error::lmdb(&self.path, e))?;
        for item in cursor.iter_start() {
            let (k, v) =
                item.map_err(|e| Error::lmdb(&self.path, format!("corrupt record: {e}")))?;
            f(k, v)?;
        }
        Ok(())
    }

    /// Calls `f` on the value stored under `key` in place (no copy out of
    /// the memory map); `None` if there is no such key.
    pub fn with_value<R>(
        &self,
        key: &[u8],
        f: impl FnOnce(&[u8]) -> Result<R>,
    ) -> Result<Option<R>> {
        let txn = self
            .env
            .begin_ro_txn()
            .map_err(|e| Error::lmdb(&self.path, e))?;
        match txn.get(self.db, &key) {
            Ok(v) => f(v).map(Some),
            Err(lmdb::Error::NotFound) => Ok(None),
            Err(e) => Err(Error::lmdb(&self.path, e)),
        }
    }

    /// The value stored under `key`, if any.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let txn = self
            .env
            .begin_ro_txn()
            .map_err(|e| Error::lmdb(&self.path, e))?;
        match txn.get(self.db, &key) {
            Ok(v) => Ok(Some(v.to_vec())),
            Err(lmdb::Error::NotFound) => Ok(None),
            Err(e) => Err(Error::lmdb(&self.path, e)),
        }
    }

    /// Every key in order (what a sequential Data layer walks).
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.for_each(|k, _| {
            out.push(k.to_vec());
            Ok(())
        })?;
        Ok(out)
    }

    /// Reads every record into memory (small databases and tests).
    pub fn records(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        self.for_each(|k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }
}

/// Records per transaction, as `convert_imageset` commits them.
const COMMIT_RECORDS: usize = 1000;
/// Also commit once this many value bytes are pending, to bound memory.
const COMMIT_BYTES: usize = 256 << 20;
const INITIAL_MAP: usize = 1 << 30;

/// Writes a new LMDB. Records go to a temporary folder beside the target;
/// [`LmdbWriter::finish`] renames it into place, so an interrupted or failed
/// run never leaves a partial database under the final name.
pub struct LmdbWriter {
    env: Option<Environment>,
    db: Database,
    staging: Option<tempfile::TempDir>,
    target: PathBuf,
    replace: bool,
    pending: Vec<(Vec<u8>, Vec<u8>)>,
    pending_bytes: usize,
    map_size: usize,
    written: usize,
}

impl LmdbWriter {
    /// Starts a database that will live at `target`. An existing `target` is an
    /// error unless `replace` is set (then it is replaced only on success).
    pub fn create(target: &Path, replace: bool) -> Result<Self> {
        if target.exists() && !replace {
            return Err(Error::lmdb(
                target,
                "already exists; remove it or pass --force to replace it",
            ));
        }
        let parent = crate::fsutil::parent_dir(target);
        std::fs::create_dir_all(&parent).at(&parent)?;
        let staging = tempfile::Builder::new()
            .prefix(".lmdb-partial-")
            .tempdir_in(&parent)
            .at(&parent)?;
        crate::fsutil::give_default_permissions(staging.path(), true)?;
        // No fsync per commit: the staging folder is synced once in `finish`
        // before it is renamed into place, which is what makes it durable.
        let env = Environment::new()
            .set_map_size(INITIAL_MAP)
            .set_flags(EnvironmentFlags::NO_SYNC | EnvironmentFlags::NO_META_SYNC)
            .open(staging.path())
            .map_err(|e| Error::lmdb(staging.path(), e))?;
        let db = env
            .open_db(None)
            .map_err(|e| Error::lmdb(staging.path(), e))?;
        Ok(LmdbWriter {
            env: Some(env),
            db,
            staging: Some(staging),
            target: target.to_path_buf(),
            replace,
            pending: Vec::new(),
            pending_bytes: 0,
            map_size: INITIAL_MAP,
            written: 0,
        })
    }

    /// Queues one record; records are committed in batches.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.pending_bytes += key.len() + value.len();
        self.pending.push((key, value));
        if self.pending.len() >= COMMIT_RECORDS || self.pending_bytes >= COMMIT_BYTES {
            self.commit()?;
        }
        Ok(())
    }

    /// Records written so far (committed or pending).
    pub fn len(&self) -> usize {
        self.written + self.pending.len()
    }

    /// Whether nothing has been written.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn commit(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let env = self.env.as_ref().expect("writer is open");
        let staging = self
            .staging
            .as_ref()
            .expect("writer is open")
            .path()
            .to_path_buf();
        loop {
            match Self::try_commit(env, self.db, &self.pending) {
                Ok(()) => break,
                Err(lmdb::Error::MapFull) => {
                    // Grow and replay the batch: the aborted transaction left nothing.
                    self.map_size *= 2;
                    env.set_map_size(self.map_size)
                        .map_err(|e| Error::lmdb(&staging, format!("cannot grow map: {e}")))?;
                }
                Err(e) => return Err(Error::lmdb(&staging, e)),
            }
        }
        self.written += self.pending.len();
        self.pending.clear();
        self.pending_bytes = 0;
        Ok(())
    }

    fn try_commit(
        env: &Environment,
        db: Database,
        batch: &[(Vec<u8>, Vec<u8>)],
    ) -> lmdb::Result<()> {
        let mut txn = env.begin_rw_txn()?;
        for (k, v) in batch {
            txn.put(db, k, v, WriteFlags::empty())?;
        }
        txn.commit()
    }

    /// Commits what is pending, closes the environment and moves it to the
    /// target path. Returns the number of records.
    pub fn finish(mut self) -> Result<usize> {
        self.commit()?;
        let env = self.env.take().expect("writer is open");
        env.sync(true).map_err(|e| Error::lmdb(&self.target, e))?;
        drop(env);
        let staging = self.staging.take().expect("writer is open");
        trim_to_used(&staging.path().join("data.mdb"))?;
        if self.target.exists() && self.replace {
            // The old copy steps aside first, and comes back if the new one
            // cannot take its place (on Windows, a folder another program
            // has open cannot be moved).
            let old = self.target.with_extension("lmdb-old");
            if old.exists() {
                std::fs::remove_dir_all(&old).at(&old)?;
            }
            std::fs::rename(&self.target, &old).at(&self.target)?;
            if let Err(e) = std::fs::rename(staging.path(), &self.target) {
                if std::fs::rename(&old, &self.target).is_err() {
                    let e = format!("{e}; the old database is now {}", old.display());
                    return Err(Error::io(&self.target, std::io::Error::other(e)));
                }
                return Err(Error::io(&self.target, e));
            }
            let _ = staging.keep();
            // The new database is in place; a copy that cannot be removed
            // (another program still reads it, as Windows then refuses) is
            // left for the user rather than failing a finished job.
            if let Err(e) = std::fs::remove_dir_all(&old) {
                crate::progress::say(format!(
                    "warning: {}: the replaced database could not be removed ({e}); \
                     delete it once nothing reads it",
                    old.display()
                ));
            }
        } else {
            std::fs::rename(staging.path(), &self.target).at(&self.target)?;
            let _ = staging.keep();
        }
        Ok(self.written)
    }
}

/// Cuts a closed `data.mdb` down to the pages it uses, where liblmdb left
/// it larger: on Windows it grows the file to the whole map (1 GiB at the
/// least here) to map it. Elsewhere the file already ends at its last page.
fn trim_to_used(data: &Path) -> Result<()> {
    let used = super::lmdb_check::used_len(data).map_err(|e| Error::lmdb(data, e))?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(data)
        .at(data)?;
    if file.metadata().at(data)?.len() > used {
        file.set_len(used).and_then(|()| file.sync_all()).at(data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forced_write_replaces_the_old_database_and_leaves_no_copy() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("db");
        let write = |value: u8| {
            let mut w = LmdbWriter::create(&target, true).unwrap();
            w.put(b"k".to_vec(), vec![value; 5]).unwrap();
            w.finish().unwrap()
        };
        write(1);
        // A leftover from a run that could not remove its replaced copy.
        std::fs::create_dir(dir.path().join("db.lmdb-old")).unwrap();
        assert_eq!(write(2), 1);
        let r = LmdbReader::open(&target).unwrap();
        assert_eq!(r.records().unwrap(), [(b"k".to_vec(), vec![2; 5])]);
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["db"]);
    }

    #[test]
    fn data_files_end_at_their_last_page() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("db");
        let mut w = LmdbWriter::create(&target, false).unwrap();
        for i in 0..300 {
            w.put(format!("{i:08}").into_bytes(), vec![7; 3000])
                .unwrap();
        }
        w.finish().unwrap();
        let data = target.join("data.mdb");
        let used = crate::pipeline::lmdb_check::used_len(&data).unwrap();
        assert_eq!(std::fs::metadata(&data).unwrap().len(), used);
        assert!(used > 300 * 3000, "{used}");
        // A file grown to its map, as liblmdb leaves it on Windows, is cut
        // back and still reads.
        let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
        f.set_len(64 << 20).unwrap();
        drop(f);
        trim_to_used(&data).unwrap();
        assert_eq!(std::fs::metadata(&data).unwrap().len(), used);
        let r = LmdbReader::open(&target).unwrap();
        assert_eq!(r.len().unwrap(), 300);
        assert_eq!(r.records().unwrap()[299].1, vec![7; 3000]);
    }

    #[test]
    fn write_then_read_in_key_order_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("db");
        let mut w = LmdbWriter::create(&target, false).unwrap();
        for i in (0..2500).rev() {
            w.put(format!("{i:08}").into_bytes(), vec![i as u8; 10])
                .unwrap();
        }
        assert_eq!(w.finish().unwrap(), 2500);
        let r = LmdbReader::open(&target).unwrap();
        assert_eq!(r.len().unwrap(), 2500);
        let recs = r.records().unwrap();
        assert_eq!(recs[0].0, b"00000000");
        assert_eq!(recs[2499].1, vec![2499u32 as u8; 10]);
        assert!(LmdbWriter::create(&target, false).is_err());
    }

    #[test]
    fn map_grows_past_initial_size() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("big");
        let mut w = LmdbWriter::create(&target, false).unwrap();
        w.map_size = 1 << 20; // force growth with a tiny map
        w.env.as_ref().unwrap().set_map_size(1 << 20).unwrap();
        for i in 0..64 {
            w.put(format!("{i:08}").into_bytes(), vec![7u8; 100_000])
                .unwrap();
        }
        assert_eq!(w.finish().unwrap(), 64);
        assert_eq!(LmdbReader::open(&target).unwrap().len().unwrap(), 64);
    }

    #[test]
    fn dropped_writer_leaves_nothing_under_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("db");
        let mut w = LmdbWriter::create(&target, false).unwrap();
        w.put(b"k".to_vec(), b"v".to_vec()).unwrap();
        drop(w);
        assert!(!target.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
