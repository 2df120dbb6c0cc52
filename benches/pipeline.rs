//! Throughput of the data-preparation stages on a synthetic Flickr-like set:
//! N JPEGs of about 500x375 made from the fixture photos (varied crops and
//! flips), then `to-lmdb --resize 256x256` and `compute-mean` on the result,
//! and the trainer's data feeds at batch 256 (crop 227, mirror, mean file):
//! Data from that LMDB and ImageData from the JPEGs, and the LMDB fill
//! into a reused buffer that a GPU feed does; then JPEG decoding and resizing
//! alone on one thread, and `measure` on gray decodes.
//! Run with `scripts/bench-pipeline [N]`; prints a table.
mod common;
use common::make_set;
use flickr_style::pipeline::decode::ColorMode;
use flickr_style::pipeline::mat::Mat8;
use flickr_style::pipeline::mean::{compute_mean, MeanSource};
use flickr_style::pipeline::resize::resize_linear;
use flickr_style::pipeline::to_lmdb::{to_lmdb, ToLmdbOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

fn main() {
    // As the training commands do: the feeds allocate a batch tensor each time.
    flickr_style::train::memory::reuse_large_allocations();
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2000);
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let list = make_set(dir.path(), n);
    eprintln!(
        "made {n} JPEGs of 500x375 in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    if std::env::var_os("PROBE").is_some() {
        probe(dir.path());
    }
    let db = dir.path().join("db");
    let opts = ToLmdbOptions {
        root: dir.path().join("img"),
        list,
        db: db.clone(),
        resize: Some((256, 256)),
        pad: None,
        gray: false,
        shuffle: false,
        seed: 0,
        encoded: false,
        encode_type: String::new(),
        check_size: true,
        strict: true,
        force: false,
    };
    let s = to_lmdb(&opts).unwrap();
    let t = Instant::now();
    let (mean, count) = compute_mean(&MeanSource::Lmdb(db.clone())).unwrap();
    let mean_s = t.elapsed().as_secs_f64();
    mean.write_binaryproto(&dir.path().join("mean.binaryproto"))
        .unwrap();
    let lmdb_fill = reused_fill(&db, dir.path());
    let data_layer = r#"type: "Data" data_param { source: "db" batch_size: 256 backend: LMDB }"#;
    let lmdb_feed = feed_rate(dir.path(), data_layer, None);
    let warped_feed = feed_rate(
        dir.path(),
        data_layer,
        Some(flickr_style::train::augment::Augment::PLANKTON),
    );
    let jpeg_feed = feed_rate(
        dir.path(),
        r#"type: "ImageData" image_data_param { source: "list.txt" root_folder: "img/" batch_size: 256 new_height: 256 new_width: 256 shuffle: true }"#,
        None,
    );
    let (singles, decode_s, resize_s, measure_s) = single_thread_times(&dir.path().join("img"));
    let mb = count as f64 * 3.0 * 256.0 * 256.0 / 1e6;
    println!("| stage | images | seconds | images/s |");
    println!("|---|---|---|---|");
    println!(
        "| to-lmdb (JPEG 500x375 -> raw 3x256x256) | {} | {:.2} | {:.0} |",
        s.written,
        s.seconds,
        s.written as f64 / s.seconds
    );
    println!(
        "| compute-mean (raw LMDB, {mb:.0} MB of pixels) | {count} | {mean_s:.3} | {:.0} |",
        count as f64 / mean_s
    );
    for (what, (images, secs)) in [
        ("training feed: Data (raw LMDB)", lmdb_feed),
        (
            "training feed: Data (raw LMDB) + `--augment plankton`",
            warped_feed,
        ),
        (
            "raw LMDB datums into one reused batch buffer (a GPU feed's fill, no tensor)",
            lmdb_fill,
        ),
        (
            "training feed: ImageData (JPEG decode + resize 256)",
            jpeg_feed,
        ),
    ] {
        println!(
            "| {what}, batch 256, crop 227 + mirror + mean | {images} | {secs:.2} | {:.0} |",
            images as f64 / secs
        );
    }
    for (what, secs) in [
        ("JPEG decode alone (500x375 -> BGR), one thread", decode_s),
        (
            "resize alone (BGR 500x375 -> 256x256), one thread",
            resize_s,
        ),
        (
            "`measure` alone (gray 500x375: segment, moments, texture), one thread",
            measure_s,
        ),
    ] {
        println!(
            "| {what} | {singles} | {secs:.3} | {:.0} |",
            singles as f64 / secs
        );
    }
    println!("threads: {}", rayon::current_num_threads());
}

/// How many images, and seconds on one thread, to decode the first (up to)
/// 500 JPEGs of the set (files already in memory), to resize their pixels
/// to 256x256 and to measure their gray decodes: best of three.
fn single_thread_times(img: &Path) -> (usize, f64, f64, f64) {
    use flickr_style::pipeline::decode::decode;
    let mut names: Vec<PathBuf> = std::fs::read_dir(img)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    names.truncate(500);
    let files: Vec<Vec<u8>> = names.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let best = |f: &dyn Fn()| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min)
    };
    let decode_s = best(&|| {
        for f in &files {
            std::hint::black_box(decode(f, ColorMode::Color).unwrap());
        }
    });
    let mats: Vec<Mat8> = files
        .iter()
        .map(|f| decode(f, ColorMode::Color).unwrap())
        .collect();
    let resize_s = best(&|| {
        for m in &mats {
            std::hint::black_box(resize_linear(m, 256, 256));
        }
    });
    let grays: Vec<Mat8> = files
        .iter()
        .map(|f| decode(f, ColorMode::Gray).unwrap())
        .collect();
    let measure_s = best(&|| {
        for m in &grays {
            std::hint::black_box(flickr_style::pipeline::measure::measure(m));
        }
    });
    (names.len(), decode_s, resize_s, measure_s)
}

/// Images per second a data layer delivers to a net that only consumes them
/// (after one warm-up batch): (images, seconds).
fn feed_rate(
    dir: &Path,
    layer: &str,
    augment: Option<flickr_style::train::augment::Augment>,
) -> (usize, f64) {
    use flickr_style::caffe::proto::{NetParameter, Phase};
    use flickr_style::train::layers::BuildContext;
    use flickr_style::train::net::Net;
    let text = format!(
        r#"layer {{ name: "data" top: "data" top: "label" transform_param {{ mirror: true crop_size: 227 mean_file: "mean.binaryproto" }} {layer} }}"#
    );
    let def: NetParameter = flickr_style::caffe::prototxt::parse(&text, Path::new("feed")).unwrap();
    let ctx = BuildContext {
        augment,
        ..BuildContext::cpu(dir, 1, Phase::Train)
    };
    let mut net = Net::new(&def, &ctx, None).unwrap();
    net.forward().unwrap();
    let batches = 8;
    let t = Instant::now();
    for _ in 0..batches {
        net.forward().unwrap();
    }
    (batches * 256, t.elapsed().as_secs_f64())
}

#[allow(dead_code)]
fn probe(dir: &Path) {
    use flickr_style::pipeline::decode::{decode, ColorMode};
    use rayon::prelude::*;
    let files: Vec<_> = std::fs::read_dir(dir.join("img"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let bytes: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let t = Instant::now();
    let mats: Vec<_> = bytes
        .par_iter()
        .map(|b| decode(b, ColorMode::Color).unwrap())
        .collect();
    eprintln!(
        "decode: {:.0}/s",
        files.len() as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let r: Vec<_> = mats
        .par_iter()
        .map(|m| flickr_style::pipeline::resize::resize_linear(m, 256, 256))
        .collect();
    eprintln!(
        "resize: {:.0}/s",
        files.len() as f64 / t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let d: Vec<_> = r
        .par_iter()
        .map(|m| prost::Message::encode_to_vec(&flickr_style::caffe::Datum::raw(m, 1)))
        .collect();
    eprintln!(
        "datum: {:.0}/s {}",
        files.len() as f64 / t.elapsed().as_secs_f64(),
        d.len()
    );
}

/// What a GPU feed's workers do per batch: read raw datums from the LMDB
/// and transform them into one batch buffer that is reused, as the pinned
/// staging buffer is (the CPU feed above hands each batch's buffer to its
/// tensor, so it also pays for fresh pages every batch): (images, seconds).
fn reused_fill(db: &Path, dir: &Path) -> (usize, f64) {
    use flickr_style::caffe::datum::DatumRef;
    use flickr_style::caffe::proto::{Phase, TransformationParameter};
    use flickr_style::pipeline::lmdb_store::LmdbReader;
    use flickr_style::train::transform::{ImageRef, Transformer};
    use rayon::prelude::*;
    let reader = LmdbReader::open(db).unwrap();
    let keys = reader.keys().unwrap();
    let tp: TransformationParameter = flickr_style::caffe::prototxt::parse(
        r#"mirror: true crop_size: 227 mean_file: "mean.binaryproto""#,
        Path::new("transform_param"),
    )
    .unwrap();
    let tf = Transformer::new(&tp, Phase::Train, 1, |p| dir.join(p), "bench").unwrap();
    let (batch, per) = (256, 3 * 227 * 227);
    let mut buf = vec![0f32; batch * per];
    let mut pos = 0usize;
    let mut stream = tf.draw_stream();
    let mut fill = |batches: usize| {
        let t = Instant::now();
        for _ in 0..batches {
            // Caffe's draws, in order, as the feed's producer takes them.
            let draws: Vec<[u32; 3]> = (0..batch).map(|k| stream.image((pos + k) as u64)).collect();
            buf.par_chunks_mut(per).enumerate().for_each(|(k, out)| {
                let i = (pos + k) % keys.len();
                reader
                    .with_value(&keys[i], |v| {
                        let d = DatumRef::parse(v).expect("a Datum");
                        let (c, h, w, px) = d.raw_pixels("bench")?;
                        tf.apply(
                            ImageRef::chw(c, h, w, px),
                            &draws[k],
                            (pos + k) as u64,
                            String::new,
                            out,
                        )
                    })
                    .unwrap();
            });
            pos += batch;
        }
        t.elapsed().as_secs_f64()
    };
    fill(1);
    let batches = 8;
    (batches * batch, fill(batches))
}
