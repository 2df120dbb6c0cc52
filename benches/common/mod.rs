//! What the benchmarks share: a synthetic Flickr-like image set.
use flickr_style::pipeline::decode::{read_image, ColorMode};
use flickr_style::pipeline::mat::Mat8;
use flickr_style::pipeline::resize::resize_linear;
use std::path::{Path, PathBuf};

pub fn fixture_images() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/caffe-ref/fixtures/images");
    let list = std::fs::read_to_string(root.join("list.txt")).expect("fixture list");
    list.lines()
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(p, _)| root.join(p))
        .collect()
}

/// `n` JPEGs of 500x375 (crops and flips of the fixture photos) in
/// `dir/img`, and their list `dir/list.txt` with labels 0..19 in turn.
pub fn make_set(dir: &Path, n: usize) -> PathBuf {
    let sources: Vec<Mat8> = fixture_images()
        .iter()
        .map(|p| read_image(p, ColorMode::Color).expect("fixture decodes"))
        .map(|im| resize_linear(&im, 560, 420))
        .collect();
    std::fs::create_dir_all(dir.join("img")).unwrap();
    let mut list = String::new();
    for i in 0..n {
        let src = &sources[i % sources.len()];
        let (x, y) = ((i * 7) % 60, (i * 13) % 45);
        let mut crop = Vec::with_capacity(500 * 375 * 3);
        for row in y..y + 375 {
            let line = &src.data[(row * 560 + x) * 3..(row * 560 + x + 500) * 3];
            if i % 2 == 1 {
                crop.extend(line.chunks_exact(3).rev().flatten());
            } else {
                crop.extend_from_slice(line);
            }
        }
        let name = format!("{i:05}.jpg");
        // libjpeg-turbo at quality 90, as most photo JPEGs are made.
        let jpeg = flickr_style::pipeline::jpeg::encode(&crop, 500, 375, 3, 90).unwrap();
        std::fs::write(dir.join("img").join(&name), jpeg).unwrap();
        list.push_str(&format!("{name} {}\n", i % 20));
    }
    let list_path = dir.join("list.txt");
    std::fs::write(&list_path, list).unwrap();
    list_path
}
