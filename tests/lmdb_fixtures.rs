//! `to-lmdb` and the LMDB/Datum readers against LMDBs written by real Caffe
//! (`../shared/caffe-ref/fixtures/lmdb`, made by convert_imageset; see its README).
mod common;
use common::{fixture, fixture_to_lmdb_options};
use flickr_style::caffe::Datum;
use flickr_style::pipeline::lmdb_store::LmdbReader;
use flickr_style::pipeline::to_lmdb::to_lmdb;
use prost::Message;
use sha2::{Digest, Sha256};

#[derive(serde::Deserialize)]
struct Dump {
    records: Vec<Record>,
}
#[derive(serde::Deserialize)]
struct Record {
    key: String,
    channels: i32,
    height: i32,
    width: i32,
    label: i32,
    encoded: bool,
    data_sha256: String,
    value_sha256: String,
}

fn dump(name: &str) -> Dump {
    let text = std::fs::read_to_string(fixture(&format!("lmdb/{name}.records.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn reader_decodes_every_caffe_record() {
    for name in ["raw256", "jpg256", "gray64", "exif-noresize"] {
        let reader = LmdbReader::open(&fixture(&format!("lmdb/{name}"))).unwrap();
        let records = reader.records().unwrap();
        let expected = dump(name).records;
        assert_eq!(records.len(), expected.len(), "{name}");
        for ((k, v), e) in records.iter().zip(&expected) {
            assert_eq!(std::str::from_utf8(k).unwrap(), e.key);
            assert_eq!(sha(v), e.value_sha256, "{name} {}", e.key);
            let d = Datum::decode(v.as_slice()).unwrap();
            assert_eq!(d.label(), e.label);
            assert_eq!(d.encoded(), e.encoded);
            assert_eq!(sha(d.data()), e.data_sha256);
            // Re-encoding a Caffe datum gives Caffe's exact bytes back.
            assert_eq!(&d.encode_to_vec(), v, "{name} {}", e.key);
            let (c, h, w, px) = d.into_pixels(&e.key).unwrap();
            if !e.encoded {
                assert_eq!(
                    (c as i32, h as i32, w as i32),
                    (e.channels, e.height, e.width)
                );
            } else {
                assert_eq!(
                    (c, h, w),
                    (
                        if e.key.contains("gray") || px.is_empty() {
                            c
                        } else {
                            3
                        },
                        256,
                        256
                    )
                );
            }
            assert_eq!(px.len(), c * h * w);
        }
    }
}

/// Asserts that the LMDB at `ours` holds exactly the records of Caffe's
/// `caffe` fixture: same keys, and serialized values equal byte for byte.
/// On a mismatch, the per-image pixel difference says how far off it is.
fn assert_same_as_caffe(ours: &std::path::Path, caffe: &str) {
    let mine = LmdbReader::open(ours).unwrap().records().unwrap();
    let theirs = LmdbReader::open(&fixture(caffe))
        .unwrap()
        .records()
        .unwrap();
    assert_eq!(mine.len(), theirs.len());
    let mut differing = Vec::new();
    for ((mk, mv), (tk, tv)) in mine.iter().zip(&theirs) {
        assert_eq!(mk, tk);
        if mv == tv {
            continue;
        }
        let key = String::from_utf8_lossy(mk).into_owned();
        let (m, t) = (
            Datum::decode(mv.as_slice()).unwrap(),
            Datum::decode(tv.as_slice()).unwrap(),
        );
        let (a, b) = (m.data(), t.data());
        let max = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max();
        differing.push(format!(
            "{key}: label {} vs {}, {} vs {} data bytes, max pixel difference {max:?}",
            m.label(),
            t.label(),
            a.len(),
            b.len()
        ));
    }
    assert!(differing.is_empty(), "{caffe}:\n{}", differing.join("\n"));
}

#[test]
fn to_lmdb_matches_convert_imageset_raw256() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("raw256");
    let summary = to_lmdb(&fixture_to_lmdb_options(db.clone())).unwrap();
    assert_eq!(summary.written, 24);
    assert_same_as_caffe(&db, "lmdb/raw256");
}

#[test]
fn to_lmdb_matches_convert_imageset_gray64() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gray64");
    let mut o = fixture_to_lmdb_options(db.clone());
    o.gray = true;
    o.resize = Some((64, 64));
    to_lmdb(&o).unwrap();
    // --gray: JPEGs give libjpeg's luma plane, colour PNGs libpng's
    // gamma-aware conversion (the iCCP profile of chelsea.png).
    assert_same_as_caffe(&db, "lmdb/gray64");
}

#[test]
fn to_lmdb_applies_exif_orientation_without_resize() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("exif");
    let mut o = fixture_to_lmdb_options(db.clone());
    o.list = fixture("lmdb/exif-list.txt");
    o.resize = None;
    to_lmdb(&o).unwrap();
    assert_same_as_caffe(&db, "lmdb/exif-noresize");
}

#[test]
fn to_lmdb_encoded_matches_convert_imageset_jpg256() {
    // Resized images are re-encoded as cv::imencode does (libjpeg-turbo,
    // quality 95), so even the JPEG bytes are Caffe's.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jpg256");
    let mut o = fixture_to_lmdb_options(db.clone());
    o.encoded = true;
    o.encode_type = "jpg".into();
    to_lmdb(&o).unwrap();
    assert_same_as_caffe(&db, "lmdb/jpg256");
}
