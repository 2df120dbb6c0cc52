//! `compute-mean` and `convert-mean` against compute_image_mean's output
//! (`../shared/caffe-ref/fixtures/mean`, see its README).
mod common;
use common::{caffe_ref, fixture, run};
use flickr_style::caffe::mean_file::{MeanImage, NpyDtype};
use flickr_style::pipeline::mean::{compute_mean, MeanSource};

fn check_against_caffe(lmdb: &str, reference: &str, tolerance: f64) {
    let (ours, count) = compute_mean(&MeanSource::Lmdb(fixture(lmdb))).unwrap();
    assert_eq!(count, 24);
    let caffe = MeanImage::read_binaryproto(&fixture(reference)).unwrap();
    assert_eq!(
        (ours.channels, ours.height, ours.width),
        (caffe.channels, caffe.height, caffe.width)
    );
    let worst = ours
        .values_f32()
        .iter()
        .zip(&caffe.values)
        .map(|(&a, &b)| (a as f64 - b).abs())
        .fold(0.0, f64::max);
    eprintln!("{lmdb}: max |ours - caffe| = {worst}");
    assert!(worst <= tolerance, "{lmdb}: {worst}");
}

#[test]
fn mean_of_raw_and_gray_lmdbs_equals_compute_image_mean() {
    check_against_caffe("lmdb/raw256", "mean/raw256_mean.binaryproto", 0.0);
    check_against_caffe("lmdb/gray64", "mean/gray64_mean.binaryproto", 0.0);
}

#[test]
fn mean_of_encoded_lmdb_equals_compute_image_mean() {
    // Encoded datums are JPEGs, decoded by libjpeg-turbo as in OpenCV.
    check_against_caffe("lmdb/jpg256", "mean/jpg256_mean.binaryproto", 0.0);
}

#[test]
fn cli_mean_file_is_byte_identical_to_caffes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mean.binaryproto");
    let npy = dir.path().join("mean.npy");
    let (ok, stdout, stderr) = run(
        dir.path(),
        &[
            "compute-mean",
            fixture("lmdb/raw256").to_str().unwrap(),
            out.to_str().unwrap(),
            "--npy",
            npy.to_str().unwrap(),
        ],
    );
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("mean_value channel [2]: 128.428"),
        "{stdout}"
    );
    let ours = std::fs::read(&out).unwrap();
    let caffe = std::fs::read(fixture("mean/raw256_mean.binaryproto")).unwrap();
    assert_eq!(&ours[..14], &caffe[..14], "header");
    // With 24 images every sum is exact in Caffe's f32 too, so all bytes agree.
    assert_eq!(ours, caffe);
    let back = MeanImage::read_npy(&npy).unwrap();
    let reference = MeanImage::read_npy(&fixture("mean/raw256_mean.npy")).unwrap();
    assert_eq!(back, reference);
}

#[test]
fn cli_mean_of_encoded_lmdb_is_byte_identical_to_caffes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mean.binaryproto");
    let db = fixture("lmdb/jpg256");
    let (ok, _, stderr) = run(
        dir.path(),
        &["compute-mean", db.to_str().unwrap(), out.to_str().unwrap()],
    );
    assert!(ok, "{stderr}");
    let caffe = std::fs::read(fixture("mean/jpg256_mean.binaryproto")).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), caffe);
}

#[test]
fn mean_of_an_image_list_matches_the_lmdb_route() {
    let (from_list, n) = compute_mean(&MeanSource::List {
        list: fixture("images/list.txt"),
        root: fixture("images"),
        resize: Some((256, 256)),
        pad: None,
        gray: false,
    })
    .unwrap();
    assert_eq!(n, 24);
    // Decoding and resizing the sources as convert_imageset did gives the
    // same mean as the LMDB it wrote.
    let caffe = MeanImage::read_binaryproto(&fixture("mean/raw256_mean.binaryproto")).unwrap();
    assert_eq!(from_list.values_f32(), caffe.values_f32());
}

#[test]
fn list_with_mixed_sizes_names_the_offending_image() {
    let err = compute_mean(&MeanSource::List {
        list: fixture("images/list.txt"),
        root: fixture("images"),
        resize: None,
        pad: None,
        gray: false,
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("list.txt:2 (animal/cat_gray.jpg)") || err.contains("but earlier ones are"),
        "{err}"
    );
    assert!(err.contains("all must have one size"), "{err}");
}

#[test]
fn ilsvrc_mean_npy_round_trips_losslessly_through_binaryproto() {
    let dir = tempfile::tempdir().unwrap();
    let npy = caffe_ref().join("ilsvrc12/ilsvrc_2012_mean.npy");
    let bp = dir.path().join("imagenet_mean.binaryproto");
    let back = dir.path().join("back.npy");
    let (ok, _, e) = run(
        dir.path(),
        &["convert-mean", npy.to_str().unwrap(), bp.to_str().unwrap()],
    );
    assert!(ok, "{e}");
    let (ok, _, e) = run(
        dir.path(),
        &[
            "convert-mean",
            bp.to_str().unwrap(),
            back.to_str().unwrap(),
            "--dtype",
            "f8",
        ],
    );
    assert!(ok, "{e}");
    let original = MeanImage::read_npy(&npy).unwrap();
    assert_eq!(
        (original.channels, original.height, original.width),
        (3, 256, 256)
    );
    assert_eq!(MeanImage::read_npy(&back).unwrap(), original);
    let blob = MeanImage::read_binaryproto(&bp).unwrap();
    assert_eq!(blob, original);
    // The ImageNet mean is f32-exact, so it is stored as plain float data,
    // the way Caffe's own imagenet_mean.binaryproto is.
    let raw: flickr_style::caffe::BlobProto =
        flickr_style::caffe::read_binary(&bp, "mean").unwrap();
    assert!(raw.double_data.is_empty() && raw.data.len() == 3 * 256 * 256);
    let means = blob.channel_means();
    assert!(
        (means[0] - 104.0).abs() < 1.0 && (means[2] - 123.0).abs() < 1.0,
        "{means:?}"
    );
    let _ = NpyDtype::F4;
}
