//! The data-preparation subcommands run as a user would run them, in a temp
//! dir, including every kind of bad input the issue lists.
mod common;
use common::http::{Reply, Server};
use common::{caffe_ref, fixture, run};
use flickr_style::caffe::Datum;
use flickr_style::pipeline::lmdb_store::LmdbReader;
use prost::Message;
use std::path::Path;

/// A small image folder: three good fixture images plus the given extras.
fn image_dir(dir: &Path, extra: &[(&str, &[u8])]) -> String {
    std::fs::create_dir_all(dir.join("img")).unwrap();
    let mut list = String::new();
    for (i, name) in ["animal/cat.jpg", "object/camera.png", "vehicle/rocket.jpg"]
        .iter()
        .enumerate()
    {
        let file = name.replace('/', "_");
        std::fs::copy(fixture("images").join(name), dir.join("img").join(&file)).unwrap();
        list.push_str(&format!("{file} {i}\n"));
    }
    for (name, bytes) in extra {
        std::fs::write(dir.join("img").join(name), bytes).unwrap();
        list.push_str(&format!("{name} 9\n"));
    }
    list
}

fn keys(db: &Path) -> Vec<String> {
    LmdbReader::open(db)
        .unwrap()
        .records()
        .unwrap()
        .into_iter()
        .map(|(k, _)| String::from_utf8(k).unwrap())
        .collect()
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn corrupt_and_missing_images_are_skipped_and_counted() {
    let t = tempfile::tempdir().unwrap();
    let cat = std::fs::read(fixture("images/animal/cat.jpg")).unwrap();
    let mut list = image_dir(
        t.path(),
        &[
            ("truncated.jpg", &cat[..cat.len() / 3]),
            ("garbage.jpg", b"nope"),
        ],
    );
    list.push_str("does_not_exist.jpg 1\n");
    list.push_str("after.jpg 2\n");
    std::fs::copy(
        fixture("images/animal/cat_tiny.jpg"),
        t.path().join("img/after.jpg"),
    )
    .unwrap();
    std::fs::write(t.path().join("list.txt"), list).unwrap();
    let (ok, _, err) = run(
        t.path(),
        &[
            "to-lmdb",
            "img/",
            "list.txt",
            "db",
            "--resize-height",
            "32",
            "--resize-width",
            "32",
        ],
    );
    assert!(ok, "{err}");
    assert!(err.contains("warning: skipping truncated.jpg"), "{err}");
    assert!(err.contains("warning: skipping garbage.jpg"), "{err}");
    assert!(err.contains("does_not_exist.jpg"), "{err}");
    assert!(
        err.contains("Processed 4 files") && err.contains("(3 skipped)"),
        "{err}"
    );
    // Skipped lines still use up their index, like convert_imageset.
    assert_eq!(
        keys(&t.path().join("db")),
        vec![
            "00000000_animal_cat.jpg",
            "00000001_object_camera.png",
            "00000002_vehicle_rocket.jpg",
            "00000006_after.jpg"
        ]
    );
}

#[test]
fn strict_mode_fails_without_leaving_a_database() {
    let t = tempfile::tempdir().unwrap();
    let cat = std::fs::read(fixture("images/animal/cat.jpg")).unwrap();
    let list = image_dir(t.path(), &[("truncated.jpg", &cat[..cat.len() - 2000])]);
    std::fs::write(t.path().join("list.txt"), list).unwrap();
    let (ok, _, err) = run(t.path(), &["to-lmdb", "img", "list.txt", "db", "--strict"]);
    assert!(!ok);
    assert!(err.contains("truncated.jpg: cannot decode image"), "{err}");
    assert!(!t.path().join("db").exists());
    assert!(leftovers(t.path()).is_empty(), "{:?}", leftovers(t.path()));
}

#[test]
fn malformed_list_line_is_named_and_nothing_is_written() {
    let t = tempfile::tempdir().unwrap();
    let mut list = image_dir(t.path(), &[]);
    list.push_str("no-label-here\n");
    std::fs::write(t.path().join("list.txt"), list).unwrap();
    let (ok, _, err) = run(t.path(), &["to-lmdb", "img", "list.txt", "db"]);
    assert!(!ok);
    assert!(err.contains("list.txt:4: expected `path label`"), "{err}");
    assert!(!t.path().join("db").exists());
}

#[test]
fn existing_database_is_not_overwritten_without_force() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("list.txt"), image_dir(t.path(), &[])).unwrap();
    let args = [
        "to-lmdb",
        "img",
        "list.txt",
        "db",
        "--resize-height",
        "8",
        "--resize-width",
        "8",
    ];
    assert!(run(t.path(), &args).0);
    let (ok, _, err) = run(t.path(), &args);
    assert!(!ok && err.contains("already exists"), "{err}");
    let mut forced = args.to_vec();
    forced.push("--force");
    let (ok, _, err) = run(t.path(), &forced);
    assert!(ok, "{err}");
    assert_eq!(keys(&t.path().join("db")).len(), 3);
    assert!(leftovers(t.path()).is_empty());
}

#[test]
fn encoded_keeps_original_bytes_and_shuffle_is_seeded() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("list.txt"), image_dir(t.path(), &[])).unwrap();
    let (ok, _, err) = run(
        t.path(),
        &[
            "to-lmdb",
            "img",
            "list.txt",
            "enc",
            "--encoded",
            "--encode-type",
            "jpg",
        ],
    );
    assert!(ok, "{err}");
    let recs = LmdbReader::open(&t.path().join("enc"))
        .unwrap()
        .records()
        .unwrap();
    let cat = Datum::decode(recs[0].1.as_slice()).unwrap();
    assert!(cat.encoded() && cat.channels.is_none());
    assert_eq!(
        cat.data(),
        std::fs::read(fixture("images/animal/cat.jpg")).unwrap()
    );
    // The PNG does not match the jpg encode type, so it is re-encoded as JPEG.
    let png = Datum::decode(recs[1].1.as_slice()).unwrap();
    assert!(png.data().starts_with(&[0xFF, 0xD8]));

    let shuffled = |name: &str, seed: &str| {
        let (ok, _, err) = run(
            t.path(),
            &[
                "to-lmdb",
                "img",
                "list.txt",
                name,
                "--shuffle",
                "--seed",
                seed,
            ],
        );
        assert!(ok, "{err}");
        keys(&t.path().join(name))
    };
    assert_eq!(shuffled("s1", "5"), shuffled("s2", "5"));
}

#[test]
fn truncated_lmdb_is_refused_with_a_clear_error() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("cut");
    std::fs::create_dir(&db).unwrap();
    let data = std::fs::read(fixture("lmdb/raw256/data.mdb")).unwrap();
    std::fs::write(db.join("data.mdb"), &data[..data.len() / 2]).unwrap();
    let (ok, _, err) = run(t.path(), &["compute-mean", "cut", "mean.binaryproto"]);
    assert!(!ok);
    assert!(err.contains("data.mdb is truncated"), "{err}");
    assert!(!t.path().join("mean.binaryproto").exists());
    // A folder that is not an LMDB at all.
    std::fs::create_dir(t.path().join("empty")).unwrap();
    let (ok, _, err) = run(t.path(), &["compute-mean", "empty", "m.binaryproto"]);
    assert!(!ok && err.contains("no readable data.mdb"), "{err}");
}

#[test]
fn datums_of_different_sizes_name_the_key() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("list.txt"), image_dir(t.path(), &[])).unwrap();
    assert!(run(t.path(), &["to-lmdb", "img", "list.txt", "db"]).0); // no resize: sizes differ
    let (ok, _, err) = run(t.path(), &["compute-mean", "db", "m.binaryproto"]);
    assert!(!ok);
    assert!(err.contains("record 00000001_object_camera.png"), "{err}");
    assert!(!t.path().join("m.binaryproto").exists());
}

/// A gzip tar holding the given files.
fn targz(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, bytes) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        builder.append_data(&mut h, name, bytes.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

#[test]
fn get_ilsvrc_aux_downloads_verifies_and_unpacks_from_a_local_server() {
    let t = tempfile::tempdir().unwrap();
    let mean = t.path().join("m.binaryproto");
    let npy = caffe_ref().join("ilsvrc12/ilsvrc_2012_mean.npy");
    assert!(
        run(
            t.path(),
            &[
                "convert-mean",
                npy.to_str().unwrap(),
                mean.to_str().unwrap()
            ]
        )
        .0
    );
    let synsets: String = (0..1000).map(|i| format!("n{i:08} thing {i}\n")).collect();
    let archive = targz(&[
        ("imagenet_mean.binaryproto", std::fs::read(&mean).unwrap()),
        ("synset_words.txt", synsets.clone().into_bytes()),
        ("synsets.txt", synsets.into_bytes()),
        ("train.txt", b"a.JPEG 0\n".to_vec()),
    ]);
    let good_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&archive));
    let server = Server::start();
    server.route("/aux.tar.gz", vec![Reply::status(503), Reply::ok(archive)]);
    server.route(
        "/bad.tar.gz",
        vec![Reply::ok(b"this is not a tarball".to_vec())],
    );
    server.route("/gone.tar.gz", vec![Reply::status(404)]);

    // Wrong checksum: error, nothing under the final name.
    let (ok, _, err) = run(
        t.path(),
        &[
            "get-ilsvrc-aux",
            "--dir",
            "bad_sum",
            "--url",
            &server.url("/aux.tar.gz"),
            "--sha256",
            &"0".repeat(64),
        ],
    );
    assert!(!ok && err.contains("SHA-256 mismatch"), "{err}");
    assert!(!t.path().join("bad_sum/caffe_ilsvrc12.tar.gz").exists());

    let (ok, stdout, err) = run(
        t.path(),
        &[
            "get-ilsvrc-aux",
            "--dir",
            "ilsvrc12",
            "--url",
            &server.url("/aux.tar.gz"),
            "--sha256",
            &good_sha,
        ],
    );
    assert!(ok, "{err}");
    assert!(stdout.contains("imagenet_mean.binaryproto"), "{stdout}");
    assert!(err.contains("1000 synsets"), "{err}");
    assert_eq!(
        std::fs::read(t.path().join("ilsvrc12/imagenet_mean.binaryproto")).unwrap(),
        std::fs::read(&mean).unwrap()
    );

    let (ok, _, err) = run(
        t.path(),
        &[
            "get-ilsvrc-aux",
            "--dir",
            "bad",
            "--url",
            &server.url("/bad.tar.gz"),
        ],
    );
    assert!(
        !ok && err.contains("not a gzip tar archive") || err.contains("corrupt archive"),
        "{err}"
    );
    assert!(!t.path().join("bad/imagenet_mean.binaryproto").exists());

    let (ok, _, err) = run(
        t.path(),
        &[
            "get-ilsvrc-aux",
            "--dir",
            "gone",
            "--url",
            &server.url("/gone.tar.gz"),
        ],
    );
    assert!(!ok && err.contains("404"), "{err}");
    assert_eq!(server.hits("/gone.tar.gz"), 1, "a 404 is not retried");
}

#[test]
fn counts_and_thresholds_out_of_range_are_refused_by_flag() {
    // Refused before anything is read, naming the flag: a zero count would
    // otherwise be quietly taken as 1, and a threshold above 1 predicts nothing.
    let t = tempfile::tempdir().unwrap();
    for (args, flag, why) in [
        (
            &["evaluate", "--model", "m", "--weights", "w", "--top-k", "0"][..],
            "--top-k",
            "at least 1",
        ),
        (
            &[
                "classify",
                "--model",
                "m",
                "--weights",
                "w",
                "--threshold",
                "1.5",
                "x.jpg",
            ],
            "--threshold",
            "at most 1",
        ),
        (
            &[
                "evaluate",
                "--model",
                "m",
                "--weights",
                "w",
                "--threshold",
                "0",
            ],
            "--threshold",
            "above 0",
        ),
        (
            &[
                "test",
                "--model",
                "m",
                "--weights",
                "w",
                "--iterations",
                "0",
            ],
            "--iterations",
            "at least 1",
        ),
        (
            &["time", "--model", "m", "--iterations", "0"],
            "--iterations",
            "at least 1",
        ),
        (
            &["deploy", "a", "b", "--batch", "0"],
            "--batch",
            "at least 1",
        ),
        (
            &["class-weights", "a", "b", "--classes", "0"],
            "--classes",
            "at least 1",
        ),
        (
            &["pipeline", "--batch-size", "0"],
            "--batch-size",
            "at least 1",
        ),
    ] {
        let (ok, _, err) = run(t.path(), args);
        assert!(
            !ok && err.contains(flag) && err.contains(why),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn an_empty_or_wholly_unreadable_list_writes_no_database() {
    // Caffe's convert_imageset writes an empty database that a Data layer
    // then cannot read; here it is an error naming the list.
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("empty.txt"), "").unwrap();
    let (ok, _, err) = run(t.path(), &["to-lmdb", ".", "empty.txt", "db"]);
    assert!(!ok && err.contains("empty.txt: lists no images"), "{err}");
    std::fs::write(t.path().join("bad.jpg"), b"not a jpeg").unwrap();
    std::fs::write(t.path().join("bad.txt"), "bad.jpg 0\nmissing.jpg 1\n").unwrap();
    let (ok, _, err) = run(t.path(), &["to-lmdb", ".", "bad.txt", "db"]);
    assert!(
        !ok && err.contains("none of its 2 images could be read (the first, bad.jpg: "),
        "{err}"
    );
    assert!(!t.path().join("db").exists());
    assert!(leftovers(t.path()).is_empty(), "{:?}", leftovers(t.path()));
}

#[test]
fn convert_mean_refuses_a_conversion_to_the_same_format() {
    let t = tempfile::tempdir().unwrap();
    let npy = caffe_ref().join("ilsvrc12/ilsvrc_2012_mean.npy");
    let (ok, _, err) = run(
        t.path(),
        &["convert-mean", npy.to_str().unwrap(), "copy.npy"],
    );
    assert!(!ok && err.contains("nothing to convert"), "{err}");
    assert!(
        run(
            t.path(),
            &["convert-mean", npy.to_str().unwrap(), "m.binaryproto"]
        )
        .0
    );
    let (ok, _, err) = run(t.path(), &["convert-mean", "m.binaryproto", "m.txt"]);
    assert!(!ok && err.contains("both binaryproto"), "{err}");
    assert!(!t.path().join("m.txt").exists() && !t.path().join("copy.npy").exists());
}
