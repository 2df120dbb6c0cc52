//! A structural check of an LMDB data file before liblmdb maps it.
//!
//! liblmdb trusts the page numbers, offsets and sizes stored in the file, so
//! a corrupt `data.mdb` (a bad disk, a partial copy, a file edited by hand)
//! can make it read outside its map and kill the process with SIGSEGV or
//! SIGBUS. This walks the main database's B-tree the way a reader does and
//! checks every page number, node offset and value extent against the file
//! first, so such a file is an error that says where it is broken.
//!
//! Layout (liblmdb, 64-bit): a page starts with a 16-byte header
//! (page number u64, pad u16, flags u16, then lower/upper u16 bounds of the
//! free space, or a u32 page count for overflow pages), followed by u16
//! offsets of its nodes. A node is lo/hi/flags/key-size (u16 each), the key,
//! then the value (or, for a big value, the u64 number of the overflow page
//! that holds it); in a branch page lo/hi/flags are the child page number.
//! Pages 0 and 1 are meta pages; the one with the larger transaction id is
//! current. Pixel bytes themselves carry no checksum and are not checked.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const HEADER: usize = 16;
const NODE: usize = 8;
const P_BRANCH: u16 = 0x01;
const P_LEAF: u16 = 0x02;
const P_META: u16 = 0x08;
const F_BIGDATA: u16 = 0x01;
const MAGIC: u32 = 0xBEEF_C0DE;
const NO_ROOT: u64 = u64::MAX;
/// Deeper trees would need more entries than any file holds; a deeper walk
/// means the branch pages loop.
const MAX_DEPTH: u16 = 64;

/// Checks `data.mdb` and returns its entry count; the error says what is
/// broken and where.
pub(crate) fn check_data_file(path: &Path) -> Result<u64, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let (meta, psize) = current_meta(&mut file)?;
    let pages = meta.last_page + 1;
    if len < pages * psize {
        return Err(damaged(format!(
            "data.mdb is truncated: {len} bytes on disk but its header needs {}",
            pages * psize
        )));
    }
    let mut walk = Walk {
        file,
        psize: psize as usize,
        pages,
        entries: 0,
    };
    if meta.root != NO_ROOT {
        walk.visit(meta.root, meta.depth.min(MAX_DEPTH))
            .map_err(damaged)?;
    }
    if walk.entries != meta.entries {
        return Err(damaged(format!(
            "the header counts {} entries but the tree holds {}",
            meta.entries, walk.entries
        )));
    }
    Ok(walk.entries)
}

/// The bytes of `data.mdb` that its current meta page accounts for: its
/// pages up to the last one in use. On Windows liblmdb grows the file to the
/// whole map size (a gigabyte or more) and leaves it so; a reader opening it
/// read-only maps only what the file holds, so the rest can go.
pub(crate) fn used_len(path: &Path) -> Result<u64, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let (meta, psize) = current_meta(&mut file)?;
    Ok((meta.last_page + 1) * psize)
}

/// The current meta page (of the two, the one with the larger transaction
/// id) and the page size.
fn current_meta(file: &mut File) -> Result<(Meta, u64), String> {
    let mut head = [0u8; 160];
    read_at(file, 0, &mut head).map_err(|_| "too short for an LMDB header".to_string())?;
    let meta0 = Meta::parse(&head, 0)?;
    let psize = meta0.page_size as u64;
    if !(512..=65536).contains(&psize) || !psize.is_power_of_two() {
        return Err(format!("meta page 0 gives an invalid page size {psize}"));
    }
    read_at(file, psize, &mut head)
        .map_err(|_| "too short for its second meta page".to_string())?;
    let meta1 = Meta::parse(&head, 1)?;
    Ok((
        if meta1.txnid > meta0.txnid {
            meta1
        } else {
            meta0
        },
        psize,
    ))
}

/// What a user can do about a structurally broken file.
fn damaged(problem: String) -> String {
    format!("{problem}; the database is damaged (copy it again, or rebuild it with to-lmdb)")
}

/// The fields of a meta page the walk needs.
struct Meta {
    page_size: u32,
    depth: u16,
    entries: u64,
    root: u64,
    last_page: u64,
    txnid: u64,
}

impl Meta {
    fn parse(b: &[u8; 160], index: u64) -> Result<Meta, String> {
        let bad = |what: &str| format!("meta page {index} {what}");
        if u16le(b, 10) & P_META == 0 {
            return Err(bad("is not marked as a meta page"));
        }
        if u32le(b, 16) != MAGIC {
            return Err(bad("lacks LMDB's magic number; this is not an LMDB file"));
        }
        if u32le(b, 20) != 1 {
            return Err(bad("has an unsupported LMDB format version"));
        }
        // The free-list database's record (at 40) keeps the page size in its
        // first field; the main database's record follows at 88.
        Ok(Meta {
            page_size: u32le(b, 40),
            depth: u16le(b, 94),
            entries: u64le(b, 120),
            root: u64le(b, 128),
            last_page: u64le(b, 136),
            txnid: u64le(b, 144),
        })
    }
}

struct Walk {
    file: File,
    psize: usize,
    pages: u64,
    entries: u64,
}

impl Walk {
    /// Checks page `pgno` and, for a branch page, its children.
    fn visit(&mut self, pgno: u64, depth_left: u16) -> Result<(), String> {
        let at = |m: String| format!("page {pgno}: {m}");
        if pgno < 2 || pgno >= self.pages {
            return Err(at(format!(
                "page number outside the file's {} pages",
                self.pages
            )));
        }
        let mut page = vec![0; self.psize];
        read_at(&mut self.file, pgno * self.psize as u64, &mut page)
            .map_err(|e| at(e.to_string()))?;
        let p = &page;
        if u64le(p, 0) != pgno {
            return Err(at(format!("header says it is page {}", u64le(p, 0))));
        }
        let flags = u16le(p, 10);
        let (lower, upper) = (u16le(p, 12) as usize, u16le(p, 14) as usize);
        if lower < HEADER || lower > upper || upper > self.psize || (lower - HEADER) % 2 != 0 {
            return Err(at(format!(
                "free-space bounds {lower}..{upper} are invalid"
            )));
        }
        let offsets: Vec<usize> = (0..(lower - HEADER) / 2)
            .map(|i| u16le(p, HEADER + 2 * i) as usize)
            .collect();
        let mut children = Vec::new();
        for (i, &off) in offsets.iter().enumerate() {
            let node = |m: String| at(format!("node {i}: {m}"));
            if off < upper || off + NODE > self.psize {
                return Err(node(format!("offset {off} is outside the node area")));
            }
            let (lo, hi, nflags) = (u16le(p, off), u16le(p, off + 2), u16le(p, off + 4));
            let key_end = off + NODE + u16le(p, off + 6) as usize;
            if key_end > self.psize {
                return Err(node("key runs past the page".into()));
            }
            if flags & P_BRANCH != 0 {
                children.push(lo as u64 | (hi as u64) << 16 | (nflags as u64) << 32);
            } else if flags & P_LEAF != 0 {
                let size = lo as u64 | (hi as u64) << 16;
                if nflags & !F_BIGDATA != 0 {
                    return Err(node(
                        "duplicate-key or sub-database entries are not a Caffe LMDB layout".into(),
                    ));
                }
                if nflags & F_BIGDATA == 0 {
                    if key_end as u64 + size > self.psize as u64 {
                        return Err(node("value runs past the page".into()));
                    }
                } else {
                    if key_end + 8 > self.psize {
                        return Err(node("overflow page number runs past the page".into()));
                    }
                    let first = u64le(p, key_end);
                    self.check_overflow(first, size).map_err(node)?;
                }
                self.entries += 1;
            } else {
                return Err(at(format!(
                    "neither a branch nor a leaf page (flags {flags:#x})"
                )));
            }
        }
        if !children.is_empty() {
            if depth_left <= 1 {
                return Err(at("branch pages nest deeper than the tree's depth".into()));
            }
            for child in children {
                self.visit(child, depth_left - 1)?;
            }
        }
        Ok(())
    }

    /// A big value of `size` bytes, stored from page `first` on, must end
    /// inside the file. (Its overflow pages are not read: that would cost a
    /// disk seek per record, and liblmdb only needs the extent to be sound.)
    fn check_overflow(&self, first: u64, size: u64) -> Result<(), String> {
        let span = (HEADER as u64 + size).div_ceil(self.psize as u64);
        if first < 2 || first >= self.pages || span > self.pages - first {
            return Err(format!(
                "its {size}-byte value on overflow page {first} lies outside the file's {} pages",
                self.pages
            ));
        }
        Ok(())
    }
}

fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::lmdb_store::{LmdbReader, LmdbWriter};
    use rand::{Rng, SeedableRng};

    /// An LMDB with `n` records: small values inline, every tenth one big
    /// enough for overflow pages; 3000 records give a two-level tree.
    fn database(dir: &Path, n: usize) -> std::path::PathBuf {
        let target = dir.join("db");
        let mut w = LmdbWriter::create(&target, false).unwrap();
        for i in 0..n {
            let size = if i % 10 == 0 { 9000 } else { 40 };
            w.put(format!("{i:08}_img.jpg").into_bytes(), vec![i as u8; size])
                .unwrap();
        }
        w.finish().unwrap();
        target
    }

    /// Reads every record the way the pipeline does.
    fn read_all(db: &Path) -> crate::error::Result<usize> {
        let reader = LmdbReader::open(db)?;
        let mut n = 0;
        reader.for_each(|_, v| {
            n += v.len().min(1);
            Ok(())
        })?;
        Ok(n)
    }

    /// Writes `good` with `f` applied and returns the check's error.
    fn edit(db: &Path, good: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> String {
        let path = db.join("data.mdb");
        let mut bytes = good.to_vec();
        f(&mut bytes);
        std::fs::write(&path, bytes).unwrap();
        check_data_file(&path).unwrap_err()
    }

    #[test]
    fn sound_files_pass_with_their_entry_count() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path(), 3000);
        assert_eq!(check_data_file(&db.join("data.mdb")).unwrap(), 3000);
        assert_eq!(read_all(&db).unwrap(), 3000);
    }

    #[test]
    fn broken_structure_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path(), 40);
        let bytes = std::fs::read(db.join("data.mdb")).unwrap();
        let page = 4096;
        let meta = |b: &[u8], i: usize| u64le(b, i * page + 144);
        let current = if meta(&bytes, 1) > meta(&bytes, 0) {
            1
        } else {
            0
        };
        let root = u64le(&bytes, current * page + 128) as usize;
        // The root leaf's first node holds record 0, a big value: point it
        // past the end of the file.
        let node = root * page + u16le(&bytes, root * page + HEADER) as usize;
        let ksize = u16le(&bytes, node + 6) as usize;
        let e = edit(&db, &bytes, |b| {
            b[node + NODE + ksize..node + NODE + ksize + 8].copy_from_slice(&9999u64.to_le_bytes())
        });
        assert!(
            e.contains("overflow page 9999 lies outside the file"),
            "{e}"
        );
        let e = edit(&db, &bytes, |b| {
            b[root * page + 14..root * page + 16].fill(0)
        });
        assert!(e.contains("free-space bounds"), "{e}");
        let e = edit(&db, &bytes, |b| b.truncate(b.len() - page));
        assert!(e.contains("data.mdb is truncated"), "{e}");
        let e = edit(&db, &bytes, |b| b[current * page + 16] ^= 1);
        assert!(e.contains("magic number"), "{e}");
    }

    #[test]
    fn random_corruption_is_an_error_never_a_crash() {
        // Before this check, such edits crashed liblmdb (SIGSEGV/SIGBUS) in
        // about one case in ten; a crash here kills the test binary.
        let dir = tempfile::tempdir().unwrap();
        let db = database(dir.path(), 3000);
        let good = std::fs::read(db.join("data.mdb")).unwrap();
        // Corrupt the meta, branch and leaf pages: pixel bytes carry no
        // checksum, so edits there are not this check's business.
        let page = 4096;
        let tree: Vec<usize> = (0..good.len() / page)
            .filter(|&p| u16le(&good, p * page + 10) & (P_META | P_BRANCH | P_LEAF) != 0)
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut refused = 0;
        for _ in 0..300 {
            let mut bytes = good.clone();
            for _ in 0..rng.random_range(1..6) {
                let at = tree[rng.random_range(0..tree.len())] * page + rng.random_range(0..page);
                bytes[at] = rng.random();
            }
            std::fs::write(db.join("data.mdb"), &bytes).unwrap();
            refused += read_all(&db).is_err() as usize;
        }
        assert!(
            refused >= 10,
            "only {refused} of 300 corruptions were noticed"
        );
    }
}
