//! One-channel nets for gray data: the tiny net trained on gray photos read
//! as three equal channels, and the same net reading one channel with its
//! conv1 filters summed (`gray-weights`) and `gray_net`'s learning-rate
//! multipliers, follow the same loss trajectory and end with the same
//! filters (summed).
mod common;
use common::{edited_net, fixture, fixture_photo_pngs, run};
use flickr_style::caffe::model::{read_caffemodel, read_net_prototxt};
use flickr_style::caffe::prototxt;
use std::path::Path;

/// Gray 64x64 PNGs of the fixture photos and their list.
fn gray_photos(dir: &Path) -> std::path::PathBuf {
    let list_path = dir.join("list.txt");
    std::fs::write(&list_path, fixture_photo_pngs(dir, true)).unwrap();
    list_path
}

fn losses(metrics: &Path) -> Vec<f64> {
    std::fs::read_to_string(metrics)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["loss"].as_f64()
        })
        .collect()
}

#[test]
fn a_one_channel_net_with_summed_filters_trains_as_three_equal_channels_do() {
    let t = tempfile::tempdir().unwrap();
    let list = gray_photos(t.path());
    // The tiny net reading the gray PNGs (as three equal channels) with a
    // mean value, and conv1 learning (the fixture freezes it).
    let three = t.path().join("three");
    std::fs::create_dir(&three).unwrap();
    let solver3 = edited_net(&three, |s| {
        let lmdb = format!(
            "{}/data/color64_lmdb",
            common::slashed(&fixture("tiny-net"))
        );
        let mean = format!(
            "{}/data/color64_mean.binaryproto",
            common::slashed(&fixture("tiny-net"))
        );
        s.replace("type: \"Data\"", "type: \"ImageData\"")
            .replace(&format!("mean_file: \"{mean}\""), "mean_value: 110")
            .replace(
                &format!("data_param {{\n    source: \"{lmdb}\"\n    batch_size: 8\n    backend: LMDB\n  }}"),
                &format!("image_data_param {{ source: \"{}\" batch_size: 8 }}", common::slashed(&list)),
            )
            .replacen("param { lr_mult: 0 decay_mult: 1 }", "param { lr_mult: 1 decay_mult: 1 }", 1)
            .replacen("param { lr_mult: 0 decay_mult: 0 }", "param { lr_mult: 2 decay_mult: 0 }", 1)
    });
    let net3 = three.join("net.prototxt");
    assert!(std::fs::read_to_string(&net3)
        .unwrap()
        .contains("image_data_param"));
    // The one-channel twin, rewritten by the library.
    let one = t.path().join("one");
    std::fs::create_dir(&one).unwrap();
    let mut def = read_net_prototxt(&net3).unwrap();
    assert_eq!(
        flickr_style::train::gray::gray_net(&mut def, "net").unwrap(),
        "conv1"
    );
    let net1 = one.join("net.prototxt");
    std::fs::write(&net1, prototxt::to_string(&def)).unwrap();
    let solver1 = one.join("solver.prototxt");
    std::fs::write(
        &solver1,
        std::fs::read_to_string(&solver3)
            .unwrap()
            .replace(&common::slashed(&net3), &common::slashed(&net1)),
    )
    .unwrap();
    let init = fixture("tiny-net/snapshots/init_iter_0.caffemodel");
    let gray_init = one.join("init_gray.caffemodel");
    let (ok, _, err) = run(
        t.path(),
        &[
            "gray-weights",
            init.to_str().unwrap(),
            gray_init.to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert!(
        err.contains("conv1: 16 3 5 5 (1200) -> 16 1 5 5 (400)"),
        "{err}"
    );

    let train = |solver: &Path, weights: &Path, dir: &Path| {
        let metrics = dir.join("m.jsonl");
        let prefix = dir.join("snap");
        let (ok, _, err) = run(
            dir,
            &[
                "finetune",
                "--solver",
                solver.to_str().unwrap(),
                "--weights",
                weights.to_str().unwrap(),
                "--snapshot-prefix",
                prefix.to_str().unwrap(),
                "--max-iter",
                "20",
                "--metrics",
                metrics.to_str().unwrap(),
            ],
        );
        assert!(ok, "{err}");
        (losses(&metrics), dir.join("snap_iter_20.caffemodel"))
    };
    let (l3, w3) = train(&solver3, &init, &three);
    let (l1, w1) = train(&solver1, &gray_init, &one);
    assert_eq!(l3.len(), 20);
    assert_eq!(l1.len(), 20);
    for (i, (a, b)) in l3.iter().zip(&l1).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * a.abs().max(1.0),
            "iteration {i}: {a} vs {b}"
        );
    }
    // The loss moved, so the check compares training, not two starts.
    assert!((l3[0] - l3[19]).abs() > 1e-2, "{l3:?}");
    // conv1 learned, and the one-channel filters are the sum of the three.
    let conv1 = |w: &Path| {
        let net = read_caffemodel(w).unwrap();
        net.layer
            .iter()
            .find(|l| l.name() == "conv1")
            .unwrap()
            .blobs[0]
            .values()
    };
    let (c3, c1, c0) = (conv1(&w3), conv1(&w1), conv1(&init));
    assert_eq!((c3.len(), c1.len()), (1200, 400));
    let moved = c3
        .iter()
        .zip(&c0)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(moved > 1e-4, "conv1 moved by {moved}");
    for (k, got) in c1.iter().enumerate() {
        let (filter, j) = (k / 25, k % 25);
        let want: f32 = (0..3).map(|c| c3[filter * 75 + c * 25 + j]).sum();
        assert!((got - want).abs() < 1e-5, "weight {k}: {got} vs {want}");
    }
}
