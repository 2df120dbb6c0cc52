//! `import-folders` and `import-manifest`: folder-per-class datasets and
//! CSV/TSV manifests (gray, odd sizes, imbalanced) into Caffe lists that
//! `to-lmdb` and the ImageData layer read; and
//! `--pad-square`, which keeps elongated subjects in shape; and
//! `class-weights`, the class-weighted loss for imbalanced lists.
mod common;
use common::run;
use flickr_style::pipeline::folders::{import_folders, FolderImportOptions};
use flickr_style::pipeline::image_list::read_list;
use flickr_style::pipeline::manifest::{import_manifest, ManifestImportOptions};
use flickr_style::pipeline::mean::{compute_mean, MeanSource};
use flickr_style::pipeline::pad::{Pad, PadFill};
use flickr_style::pipeline::split::SplitOptions;
use flickr_style::pipeline::to_lmdb::{to_lmdb, ToLmdbOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn gray_png(path: &Path, w: u32, h: u32, shade: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::GrayImage::from_fn(w, h, |x, y| image::Luma([shade ^ (x * 7 + y * 3) as u8]));
    img.save(path).unwrap();
}

/// copepod: 12 gray images (two in a nested folder) plus a corrupt one;
/// "diatom chain" (a space in the name): 3 colour images; larva: 1 image;
/// and files that are no images or sit outside any class folder.
fn dataset(root: &Path) {
    for i in 0..10 {
        gray_png(
            &root.join(format!("copepod/c{i:02}.png")),
            37 + i,
            53,
            i as u8,
        );
    }
    gray_png(&root.join("copepod/day2/c10.png"), 61, 29, 10);
    gray_png(&root.join("copepod/day2/c11.PNG"), 40, 40, 11);
    std::fs::write(root.join("copepod/bad.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(root.join("copepod/notes.csv"), "id,length\n").unwrap();
    std::fs::write(root.join("copepod/.DS_Store"), "x").unwrap();
    for i in 0..3u32 {
        let p = root.join(format!("diatom chain/d {i}.png"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        image::RgbImage::from_fn(20 + i, 31, |x, _| image::Rgb([x as u8, 9, 200]))
            .save(&p)
            .unwrap();
    }
    gray_png(&root.join("larva/l0.png"), 99, 17, 3);
    // A link back into the dataset is not followed (no loop, no image twice).
    #[cfg(unix)]
    std::os::unix::fs::symlink("..", root.join("larva/up")).unwrap();
    std::fs::write(root.join("README.txt"), "about this set").unwrap();
}

fn options(root: &Path, out: &Path) -> FolderImportOptions {
    tweaked(root, out, |_| {})
}

/// [`options`] with `edit` applied to the split settings.
fn tweaked(root: &Path, out: &Path, edit: impl FnOnce(&mut SplitOptions)) -> FolderImportOptions {
    let mut split = SplitOptions {
        out: out.to_path_buf(),
        test_fraction: 0.25,
        seed: 7,
        check: true,
        strict: false,
        min_train_per_class: 0,
        max_train_per_class: None,
        balance_alpha: None,
    };
    edit(&mut split);
    FolderImportOptions {
        root: root.to_path_buf(),
        split,
    }
}

/// (path, label) lines of a written list.
fn lines(path: &Path) -> Vec<(String, i32)> {
    read_list(path)
        .unwrap()
        .into_iter()
        .map(|e| (e.path, e.label))
        .collect()
}

fn paths(list: &[(String, i32)], label: i32) -> BTreeSet<String> {
    list.iter()
        .filter(|(_, l)| *l == label)
        .map(|(p, _)| p.clone())
        .collect()
}

#[test]
fn stratified_seeded_split_with_labels_from_sorted_folders() {
    let t = tempfile::tempdir().unwrap();
    let (root, out) = (t.path().join("set"), t.path().join("lists"));
    dataset(&root);
    let s = import_folders(&options(&root, &out)).unwrap();

    assert_eq!(
        std::fs::read_to_string(out.join("labels.txt")).unwrap(),
        "copepod\ndiatom chain\nlarva\n"
    );
    let counts: Vec<(&str, usize, usize, usize)> = s
        .classes
        .iter()
        .map(|c| (c.name.as_str(), c.images, c.train, c.test))
        .collect();
    // 25% held out, rounded, each class keeping a training image.
    assert_eq!(
        counts,
        [
            ("copepod", 12, 9, 3),
            ("diatom chain", 3, 2, 1),
            ("larva", 1, 1, 0)
        ]
    );
    assert_eq!(s.skipped.len(), 1);
    assert!(
        s.skipped[0].0.ends_with("copepod/bad.png"),
        "{:?}",
        s.skipped
    );
    // notes.csv, .DS_Store, README.txt, larva/up (a link only on Unix).
    assert_eq!(s.ignored, if cfg!(unix) { 4 } else { 3 });
    let z = s.sizes.clone().unwrap();
    assert_eq!(
        (z.width, z.height, z.gray, z.color),
        ((20, 99), (17, 53), 13, 3)
    );

    // Every readable image exactly once, under its folder's label, as an
    // absolute path that exists (spaces survive the list format).
    let (train, test) = (lines(&out.join("train.txt")), lines(&out.join("test.txt")));
    let mut seen = BTreeMap::new();
    for (p, l) in train.iter().chain(&test) {
        assert!(Path::new(p).is_absolute() && Path::new(p).exists(), "{p}");
        let class = Path::new(p)
            .strip_prefix(std::path::absolute(&root).unwrap())
            .unwrap()
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        assert_eq!(["copepod", "diatom chain", "larva"][*l as usize], class);
        *seen.entry(p.clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 16);
    assert!(seen.values().all(|&n| n == 1));
    // samples.csv: each image once, with its list and original size.
    let samples = std::fs::read_to_string(out.join("samples.csv")).unwrap();
    let rows: Vec<Vec<String>> = samples
        .lines()
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    assert_eq!(
        rows[0],
        ["path", "class", "label", "list", "width", "height"]
    );
    assert_eq!(rows.len(), 17);
    let in_test: BTreeSet<&str> = test.iter().map(|(p, _)| p.as_str()).collect();
    for r in &rows[1..] {
        let want = if in_test.contains(r[0].as_str()) {
            "test"
        } else {
            "train"
        };
        assert_eq!(r[3], want, "{r:?}");
    }
    let larva = rows
        .iter()
        .find(|r| r[0].ends_with("larva/l0.png"))
        .unwrap();
    assert_eq!(larva[1..], ["larva", "2", "train", "99", "17"]);
    // Both lists mix the classes rather than running class by class.
    let first_labels: BTreeSet<i32> = train[..6].iter().map(|(_, l)| *l).collect();
    assert!(first_labels.len() > 1, "{train:?}");
    let test_labels: Vec<i32> = test.iter().map(|(_, l)| *l).collect();
    assert!(!test_labels.is_sorted(), "{test_labels:?}");

    // Same seed, same files; another seed, another split.
    let out2 = t.path().join("again");
    import_folders(&options(&root, &out2)).unwrap();
    for f in ["train.txt", "test.txt", "labels.txt"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(out2.join(f)).unwrap()
        );
    }
    let out3 = t.path().join("seed8");
    import_folders(&tweaked(&root, &out3, |s| {
        s.seed = 8;
    }))
    .unwrap();
    assert_ne!(paths(&lines(&out3.join("test.txt")), 0), paths(&test, 0));

    // A new class leaves the others' splits as they were (labels shift, paths do not).
    gray_png(&root.join("amphipod/a0.png"), 10, 10, 1);
    let out4 = t.path().join("more");
    import_folders(&options(&root, &out4)).unwrap();
    assert_eq!(paths(&lines(&out4.join("test.txt")), 1), paths(&test, 0));
}

#[test]
fn resampling_for_imbalanced_classes_touches_only_the_training_list() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("set");
    dataset(&root);
    let out = t.path().join("lists");
    let s = import_folders(&tweaked(&root, &out, |s| {
        s.min_train_per_class = 5;
        s.max_train_per_class = Some(6);
    }))
    .unwrap();
    let counts: Vec<(usize, usize)> = s.classes.iter().map(|c| (c.train, c.test)).collect();
    assert_eq!(counts, [(6, 3), (5, 1), (5, 0)]);
    let train = lines(&out.join("train.txt"));
    // copepod: 6 of its 9 training images (the cap), each once; the other 3
    // are marked unused in samples.csv.
    assert_eq!(paths(&train, 0).len(), 6);
    let samples = std::fs::read_to_string(out.join("samples.csv")).unwrap();
    assert_eq!(samples.matches(",unused,").count(), 3);
    // diatom chain: its 2 training images, repeated.
    assert_eq!(paths(&train, 1).len(), 2);
    // larva: one image five times.
    assert_eq!(paths(&train, 2).len(), 1);
    assert_eq!(train.iter().filter(|(_, l)| *l == 2).count(), 5);
    // Held-out images never appear in training.
    let test = lines(&out.join("test.txt"));
    for l in 0..3 {
        assert!(paths(&train, l).is_disjoint(&paths(&test, l)));
    }
    // A floor above the cap contradicts it.
    let err = import_folders(&tweaked(&root, &out, |s| {
        s.min_train_per_class = 5;
        s.max_train_per_class = Some(4);
    }))
    .unwrap_err()
    .to_string();
    assert!(err.contains("--min-train-per-class"), "{err}");
}

#[test]
fn tempered_balancing_moves_the_training_list_towards_even_classes() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("set");
    // 64, 16 and 4 images, nothing held out.
    for (class, n) in [("a", 64), ("b", 16), ("c", 4)] {
        for i in 0..n {
            gray_png(&root.join(format!("{class}/{i:03}.png")), 6, 6, i as u8);
        }
    }
    let counts = |alpha: Option<f64>| -> Vec<usize> {
        let out = t.path().join(format!("lists{alpha:?}"));
        let s = import_folders(&tweaked(&root, &out, |s| {
            s.test_fraction = 0.0;
            s.balance_alpha = alpha;
        }))
        .unwrap();
        let train = lines(&out.join("train.txt"));
        assert_eq!(
            train.len(),
            s.classes.iter().map(|c| c.train).sum::<usize>()
        );
        s.classes.iter().map(|c| c.train).collect()
    };
    // 84 lines in all: n^1 as it is; n^0.5 = 8:4:2 of 84 = 48:24:12; n^0 = 28 each.
    assert_eq!(counts(None), [64, 16, 4]);
    assert_eq!(counts(Some(1.0)), [64, 16, 4]);
    assert_eq!(counts(Some(0.5)), [48, 24, 12]);
    assert_eq!(counts(Some(0.0)), [28, 28, 28]);
    // Oversampled classes repeat every image before any image a third time.
    let out = t.path().join("listsSome(0.0)");
    let c_lines: Vec<String> = lines(&out.join("train.txt"))
        .into_iter()
        .filter(|(_, l)| *l == 2)
        .map(|(p, _)| p)
        .collect();
    let mut per_image = BTreeMap::new();
    for p in &c_lines {
        *per_image.entry(p.clone()).or_insert(0) += 1;
    }
    assert_eq!(
        per_image.values().copied().collect::<Vec<_>>(),
        [7, 7, 7, 7]
    );
    let err = import_folders(&tweaked(&root, &t.path().join("bad"), |s| {
        s.balance_alpha = Some(1.5)
    }))
    .unwrap_err()
    .to_string();
    assert!(err.contains("--balance-alpha"), "{err}");
}

#[test]
fn unreadable_images_and_empty_classes_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("set");
    dataset(&root);
    let out = t.path().join("lists");
    let err = import_folders(&tweaked(&root, &out, |s| {
        s.strict = true;
    }))
    .unwrap_err()
    .to_string();
    assert!(err.contains("bad.png"), "{err}");
    assert!(!out.exists(), "nothing written on failure");

    // Unchecked, the corrupt file is listed like the rest.
    let s = import_folders(&tweaked(&root, &out, |s| {
        s.check = false;
    }))
    .unwrap();
    assert_eq!(s.classes[0].images, 13);
    assert!(s.sizes.is_none());

    // A class folder whose only image is unreadable.
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::write(root.join("empty/x.jpg"), b"\xff\xd8 nope").unwrap();
    let err = import_folders(&options(&root, &out))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("empty") && err.contains("no readable images"),
        "{err}"
    );

    for bad in [1.0, -0.1, f64::NAN] {
        let err = import_folders(&tweaked(&root, &out, |s| {
            s.test_fraction = bad;
        }))
        .unwrap_err()
        .to_string();
        assert!(err.contains("--test-fraction"), "{err}");
    }
    let err = import_folders(&options(&root.join("copepod/c00.png"), &out))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not a folder"), "{err}");
}

#[test]
fn cli_lists_feed_to_lmdb() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("set");
    dataset(&root);
    let (ok, stdout, err) = run(
        t.path(),
        &["import-folders", "set", "lists", "--test-fraction", "0.3"],
    );
    assert!(ok, "{err}");
    assert!(
        stdout.contains("| 1 | diatom chain | 3 | 2 | 1 |"),
        "{stdout}"
    );
    assert!(stdout.contains("12.0x"), "{stdout}");
    assert!(stdout.contains("Skipped 1 unreadable image:"), "{stdout}");
    // The lists hold absolute paths: any root folder works for to-lmdb.
    let (ok, _, err) = run(
        t.path(),
        &[
            "to-lmdb",
            "--resize-height",
            "32",
            "--resize-width",
            "32",
            "/",
            "lists/train.txt",
            "train_lmdb",
        ],
    );
    assert!(ok, "{err}");
    assert!(err.contains("Processed 11 files"), "{err}");
}

#[cfg(unix)]
#[test]
fn linked_folders_outside_the_dataset_are_followed_once() {
    let t = tempfile::tempdir().unwrap();
    let (root, out) = (t.path().join("set"), t.path().join("lists"));
    gray_png(&root.join("a/a0.png"), 8, 8, 0);
    gray_png(&root.join("b/b0.png"), 8, 8, 1);
    gray_png(&t.path().join("elsewhere/e0.png"), 8, 8, 2);
    std::os::unix::fs::symlink(t.path().join("elsewhere"), root.join("a/more")).unwrap();
    // The same outside folder linked twice counts once; a link to a sibling class is ignored.
    std::os::unix::fs::symlink(t.path().join("elsewhere"), root.join("a/again")).unwrap();
    std::os::unix::fs::symlink("../b", root.join("a/b_too")).unwrap();
    let s = import_folders(&options(&root, &out)).unwrap();
    let images: Vec<usize> = s.classes.iter().map(|c| c.images).collect();
    assert_eq!(images, [2, 1]);
    assert_eq!(s.ignored, 2);
}

/// One image's datum pixels, read back as the mean of a one-image LMDB.
fn datum_pixels(
    dir: &Path,
    image: &Path,
    pad: Option<Pad>,
) -> flickr_style::caffe::mean_file::MeanImage {
    std::fs::create_dir_all(dir).unwrap();
    let list = dir.join("one.txt");
    std::fs::write(&list, format!("{} 0\n", image.display())).unwrap();
    let db = dir.join(format!("db{}", pad.is_some()));
    to_lmdb(&ToLmdbOptions {
        root: PathBuf::new(),
        list,
        resize: Some((16, 16)),
        pad,
        gray: true,
        ..common::fixture_to_lmdb_options(db.clone())
    })
    .unwrap();
    compute_mean(&MeanSource::Lmdb(db)).unwrap().0
}

#[test]
fn padding_keeps_elongated_subjects_in_shape_and_the_mean_follows() {
    let t = tempfile::tempdir().unwrap();
    // A wide 64x16 "organism" (bright) on a dark background of 20.
    let img = t.path().join("wide.png");
    image::GrayImage::from_fn(64, 16, |x, y| {
        let inside = (4..60).contains(&x) && (4..12).contains(&y);
        image::Luma([if inside { 200 } else { 20 }])
    })
    .save(&img)
    .unwrap();
    let squashed = datum_pixels(t.path(), &img, None);
    let border = Some(Pad {
        fill: PadFill::Border,
        upscale: true,
    });
    let padded = datum_pixels(t.path(), &img, border);
    assert_eq!((padded.height, padded.width), (16, 16));
    let row = |m: &flickr_style::caffe::mean_file::MeanImage, y: usize| {
        m.values[y * 16..(y + 1) * 16].to_vec()
    };
    // Squashed, the organism fills the middle half of the rows; padded, the
    // 64x16 strip becomes 4 rows of 16: the top and bottom 6 rows are the
    // border fill (20) and the organism keeps its 4:1 shape.
    assert!(row(&squashed, 6).iter().any(|&v| v > 150.0));
    for y in (0..6).chain(10..16) {
        assert!(
            row(&padded, y).iter().all(|&v| v == 20.0),
            "row {y}: {:?}",
            row(&padded, y)
        );
    }
    assert!(row(&padded, 7).iter().any(|&v| v > 100.0));

    // The mean of the list, padded the same way, equals the LMDB's.
    let list = t.path().join("one.txt");
    let (from_list, _) = compute_mean(&MeanSource::List {
        list,
        root: PathBuf::new(),
        resize: Some((16, 16)),
        pad: border,
        gray: true,
    })
    .unwrap();
    assert_eq!(from_list, padded);

    let (ok, _, err) = run(
        t.path(),
        &["to-lmdb", "--pad-square", "grey", "/", "one.txt", "x_lmdb"],
    );
    assert!(!ok && err.contains("0-255"), "{err}");
    let (ok, _, err) = run(
        t.path(),
        &["to-lmdb", "--no-upscale", "/", "one.txt", "x_lmdb"],
    );
    assert!(!ok && err.contains("--pad-square"), "{err}");

    // A small 8x4 image is only padded when it may not be enlarged: its 32
    // pixels keep their size in the middle of the 16x16 canvas.
    let small = t.path().join("small.png");
    image::GrayImage::from_pixel(8, 4, image::Luma([200]))
        .save(&small)
        .unwrap();
    let kept = datum_pixels(
        &t.path().join("kept"),
        &small,
        Some(Pad {
            fill: PadFill::Value(0),
            upscale: false,
        }),
    );
    assert_eq!(kept.values.iter().filter(|&&v| v == 200.0).count(), 32);
    assert_eq!(row(&kept, 6)[4..12], [200.0; 8]);
    assert_eq!(row(&kept, 5), [0.0; 16]);
}

fn manifest_options(
    manifest: &Path,
    out: &Path,
    set_column: Option<&str>,
) -> ManifestImportOptions {
    ManifestImportOptions {
        manifest: manifest.to_path_buf(),
        root: None,
        path_column: "path".into(),
        label_column: "label".into(),
        set_column: set_column.map(String::from),
        split: tweaked(Path::new("."), out, |_| {}).split,
    }
}

#[test]
fn manifests_give_classes_and_may_give_the_split() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let mut rows = String::from("objid,path,label,set,area,width,m_area\n");
    for i in 0..12 {
        let (class, set) = match i % 4 {
            0 => ("detritus", "train"),
            1 => ("copepod", "TRAIN"),
            2 => ("copepod", if i < 6 { "val" } else { "test" }),
            _ => ("detritus", "test"),
        };
        gray_png(&d.join(format!("imgs/{i}.png")), 10 + i as u32, 7, i as u8);
        rows += &format!("{i},imgs/{i}.png,{class},{set},{},{},7\n", 100 + i, i % 3);
    }
    std::fs::write(d.join("m.csv"), &rows).unwrap();
    let out = d.join("lists");
    let s = import_manifest(&manifest_options(&d.join("m.csv"), &out, Some("set"))).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("labels.txt")).unwrap(),
        "copepod\ndetritus\n"
    );
    let counts: Vec<(usize, usize, usize)> =
        s.classes.iter().map(|c| (c.train, c.val, c.test)).collect();
    assert_eq!(counts, [(3, 1, 2), (3, 0, 3)]);
    // The set column decides: image 2 (copepod, val) is in val.txt, image 3 in test.txt.
    let val = lines(&out.join("val.txt"));
    assert_eq!(val.len(), 1);
    assert!(val[0].0.ends_with("imgs/2.png") && val[0].1 == 0, "{val:?}");
    let test = lines(&out.join("test.txt"));
    assert!(test
        .iter()
        .any(|(p, l)| p.ends_with("imgs/3.png") && *l == 1));
    assert!(Path::new(&test[0].0).is_absolute());
    assert!(s
        .to_markdown()
        .contains("| label | class | images | train | val | test |"));
    // The manifest's other columns travel into samples.csv beside each
    // image (one named like a column of ours, or of `measure`, gets a prefix).
    let samples = std::fs::read_to_string(out.join("samples.csv")).unwrap();
    let mut sample_rows = samples.lines();
    assert_eq!(
        sample_rows.next().unwrap(),
        "path,class,label,list,width,height,objid,area,source_width,source_m_area"
    );
    let row5 = sample_rows
        .find(|r| r.contains("imgs/5.png"))
        .expect("image 5");
    assert!(row5.ends_with(",copepod,0,train,15,7,5,105,2,7"), "{row5}");

    // Without a set column the classes are split here, as folders are; an
    // EcoTaxa-style row of column types after the header is skipped.
    let tsv = d.join("m.tsv");
    let typed = rows.replacen('\n', "\n[f]\t[t]\t[t]\t[t]\t[f]\t[f]\t[f]\n", 1);
    std::fs::write(&tsv, typed.replace(',', "\t")).unwrap();
    let s = import_manifest(&manifest_options(&tsv, &d.join("split"), None)).unwrap();
    let counts: Vec<(usize, usize)> = s.classes.iter().map(|c| (c.train, c.test)).collect();
    assert_eq!(counts, [(4, 2), (4, 2)]);
    assert!(!d.join("split/val.txt").exists());
}

#[test]
fn manifest_mistakes_are_named() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    gray_png(&d.join("a.png"), 5, 5, 1);
    gray_png(&d.join("b.png"), 5, 5, 2);
    let try_rows = |rows: &str, set: Option<&str>| {
        let m = d.join("m.csv");
        std::fs::write(&m, rows).unwrap();
        import_manifest(&manifest_options(&m, &d.join("out"), set))
            .unwrap_err()
            .to_string()
    };
    let err = try_rows("file,label\na.png,x\n", None);
    assert!(
        err.contains("\"path\"") && err.contains("file, label"),
        "{err}"
    );
    let err = try_rows(
        "path,label,set\na.png,x,train\nb.png,y,holdout\n",
        Some("set"),
    );
    assert!(
        err.contains("m.csv") && err.contains(":3") && err.contains("holdout"),
        "{err}"
    );
    let err = try_rows("path,label\na.png,x\nb.png,y\na.png,y\n", None);
    assert!(
        err.contains("listed again") && err.contains("line 2"),
        "{err}"
    );
    let err = try_rows("path,label\n", None);
    assert!(err.contains("lists no images"), "{err}");
    let err = try_rows("path,label\na.png,\n", None);
    assert!(err.contains("empty"), "{err}");
    // Numeric class names are ordered as numbers.
    let m = d.join("n.csv");
    std::fs::write(&m, "path,label\na.png,10\nb.png,9\n").unwrap();
    import_manifest(&manifest_options(&m, &d.join("n"), None)).unwrap();
    assert_eq!(
        std::fs::read_to_string(d.join("n/labels.txt")).unwrap(),
        "9\n10\n"
    );
}

#[test]
fn class_weights_cli_writes_a_diagonal_infogain_matrix() {
    // 30 / 10 / 0 / 20 images: inverse frequency scaled so the 60 images
    // average weight 1 gives 20/30, 20/10 and 20/20; the empty class takes
    // the largest weight.
    let t = tempfile::tempdir().unwrap();
    let mut list = String::new();
    for (label, n) in [(0, 30), (1, 10), (3, 20)] {
        for i in 0..n {
            list += &format!("img_{label}_{i}.png {label}\n");
        }
    }
    std::fs::write(t.path().join("train.txt"), list).unwrap();
    std::fs::write(
        t.path().join("labels.txt"),
        "copepod\ndiatom\nmysid\nsalp\n",
    )
    .unwrap();
    let (ok, stdout, err) = run(
        t.path(),
        &[
            "class-weights",
            "train.txt",
            "h.binaryproto",
            "--classes",
            "4",
            "--names",
            "labels.txt",
        ],
    );
    assert!(ok, "{err}");
    assert!(stdout.contains("| 0 | copepod | 30 | 0.6667 |"), "{stdout}");
    assert!(stdout.contains("| 1 | diatom | 10 | 2.0000 |"), "{stdout}");
    assert!(stdout.contains("| 2 | mysid | 0 | 2.0000 |"), "{stdout}");
    assert!(err.contains("type: \"InfogainLoss\""), "{err}");
    let h: flickr_style::caffe::proto::BlobProto =
        flickr_style::caffe::read_binary(&t.path().join("h.binaryproto"), "H").unwrap();
    assert_eq!(h.dims(), vec![1, 1, 4, 4]);
    let v = h.values();
    let diag: Vec<f32> = (0..4).map(|k| v[k * 5]).collect();
    let off: f32 = v.iter().sum::<f32>() - diag.iter().sum::<f32>();
    assert_eq!(off, 0.0);
    let mean = (30.0 * diag[0] + 10.0 * diag[1] + 20.0 * diag[3]) / 60.0;
    assert!((mean - 1.0).abs() < 1e-6, "{diag:?}");

    // A label the classes do not cover names its line; nothing is written.
    let (ok, _, err) = run(
        t.path(),
        &[
            "class-weights",
            "train.txt",
            "h3.binaryproto",
            "--classes",
            "3",
        ],
    );
    assert!(
        !ok && err.contains("train.txt:41") && err.contains("label 3"),
        "{err}"
    );
    assert!(!t.path().join("h3.binaryproto").exists());
}
