//! Speed of the linear probe on Flickr Style's CaffeNet recipe (random
//! weights: the speed does not depend on them): `features` of fc7 for N
//! synthetic 500x375 JPEGs (decode, resize to 256x256, centre crop, the
//! forward pass to fc7, the .npy and LMDB writes), then the probe's
//! training of fc8_flickr on saved features at the recipe's batch size.
//! Run with `scripts/bench-probe [N]`; prints a table.
mod common;
use flickr_style::train::compute::DeviceChoice;
use flickr_style::train::probe::{probe, ProbeOptions};
use std::path::Path;
use std::time::Instant;

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().unwrap();
    let list = common::make_set(dir.path(), n);
    let recipe = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/caffe-ref/models/finetune_flickr_style");
    // Caffe's recipe reading the synthetic list in both phases, with
    // ImageNet's channel means for its mean file.
    let root = format!(
        "root_folder: \"{}/img/\" new_height: 256",
        dir.path().display()
    );
    let net = std::fs::read_to_string(recipe.join("train_val.prototxt"))
        .unwrap()
        .replace("data/flickr_style/train.txt", &list.display().to_string())
        .replace("data/flickr_style/test.txt", &list.display().to_string())
        .replace(
            "mean_file: \"data/ilsvrc12/imagenet_mean.binaryproto\"",
            "mean_value: 104 mean_value: 117 mean_value: 123",
        )
        .replace("new_height: 256", &root);
    std::fs::write(dir.path().join("train_val.prototxt"), net).unwrap();
    let iters = 2000;
    let solver = std::fs::read_to_string(recipe.join("solver.prototxt"))
        .unwrap()
        .replace(
            "models/finetune_flickr_style/train_val.prototxt",
            "train_val.prototxt",
        );
    std::fs::write(dir.path().join("solver.prototxt"), solver).unwrap();
    let run = |max_iter: usize| {
        let t = Instant::now();
        let p = probe(&ProbeOptions {
            solver: Path::new("solver.prototxt"),
            state: &flickr_style::caffe::net_state::DEFAULT_STATE,
            weights: &[],
            base_dir: dir.path(),
            out: &dir.path().join("probe"),
            max_iter: Some(max_iter),
            device: DeviceChoice::Cpu,
            bf16: false,
            tensor_ops: false,
            fused: false,
            metrics: None,
            verbose: false,
            stop: None,
            shuffle: true,
            views: flickr_style::inference::tta::Tta::None,
        })
        .unwrap();
        (p, t.elapsed().as_secs_f64())
    };
    let (p, total) = run(iters);
    // Again, with the features saved: the training (and the merge into the
    // whole net, timed alone with no iterations).
    let (_, again) = run(iters);
    let (_, merge) = run(0);
    let training = again - merge;
    let images = p.train.rows + p.test.rows;
    let features = total - again;
    println!("| what | result |\n|---|---|");
    println!(
        "| features of fc7, {images} JPEGs 500x375 (train and test lists) | {features:.1} s, {:.0} images/s |",
        images as f64 / features
    );
    println!(
        "| probe training, {iters} iterations at batch 50 (test phases included) | {training:.1} s, {:.2} ms per iteration |",
        1000.0 * training / iters as f64
    );
    println!(
        "| writing probe.caffemodel (CaffeNet built, its weights and the classifier's written) | {merge:.1} s |"
    );
    println!(
        "| threads | {} |",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
}
