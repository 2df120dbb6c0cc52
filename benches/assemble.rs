//! `assemble` throughput against a local server: N (default 2000) images of
//! the real Flickr Style selection (seed 831486), each answered after a fixed
//! latency (default 100 ms) with a ~500x375 JPEG. Prints a table per worker
//! count. Run with `scripts/bench-assemble [N] [latency_ms]`.
#[path = "../tests/common/http.rs"]
mod http;
use flickr_style::pipeline::assemble::{assemble, AssembleOptions};
use flickr_style::pipeline::decode::{read_image, ColorMode};
use flickr_style::pipeline::downloader::DownloadConfig;
use flickr_style::pipeline::flickr_csv::{read_csv, select};
use flickr_style::pipeline::resize::resize_linear;
use std::path::Path;
use std::time::Duration;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = *args.first().unwrap_or(&2000) as i64;
    let latency = Duration::from_millis(*args.get(1).unwrap_or(&100));
    let csv = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/caffe-ref/flickr_style/flickr_style.csv.gz");
    let rows = select(&read_csv(&csv).unwrap(), 831486, n, 0);
    // Distinct ~500x375 JPEGs made from the fixture photos.
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/caffe-ref/fixtures/images");
    let bodies: Vec<Vec<u8>> = [
        "animal/cat.jpg",
        "animal/fish-bike.jpg",
        "vehicle/rocket.jpg",
        "object/coffee.jpeg",
    ]
    .iter()
    .map(|p| {
        let im = read_image(&fixtures.join(p), ColorMode::Color).unwrap();
        let im = resize_linear(&im, 500, 375);
        flickr_style::pipeline::jpeg::encode(&im.data, 500, 375, 3, 90).unwrap()
    })
    .collect();
    let server = http::Server::start();
    for (i, r) in rows.iter().enumerate() {
        let rest = r.image_url.split_once("://").unwrap().1;
        let path = &rest[rest.find('/').unwrap()..];
        server.route(
            path,
            vec![http::Reply::ok(bodies[i % bodies.len()].clone()).delayed(latency)],
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("| workers | images | latency | seconds | images/s |");
    println!("|---|---|---|---|---|");
    for workers in [16, 64, 128, 256] {
        let dir = tempfile::tempdir().unwrap();
        let opts = AssembleOptions {
            csv: Some(csv.to_string_lossy().into_owned()),
            out: dir.path().to_path_buf(),
            seed: 831486,
            images: n,
            labels: 0,
            mirror: Some(server.base.clone()),
            dry_run: false,
            download: DownloadConfig {
                workers,
                ..DownloadConfig::default()
            },
        };
        let s = rt
            .block_on(assemble(&opts, std::future::pending()))
            .unwrap();
        assert_eq!(s.ok as i64, n);
        println!(
            "| {workers} | {} | {latency:?} | {:.2} | {:.0} |",
            s.ok,
            s.seconds,
            s.ok as f64 / s.seconds
        );
    }
}
