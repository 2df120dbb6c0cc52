//! Mutated inputs are results or clear errors, never panics or crashes:
//! seeded byte-level mutations of the fixture images, the tiny net's
//! prototxt, its caffemodel and its solverstate, run in-process so that a
//! panic (or an abort) fails the test. Mutated LMDBs are covered by the unit
//! tests of `pipeline::lmdb_check`.
mod common;
use common::{edited_net, fixture, solver_in};
use flickr_style::pipeline::decode::{decode, ColorMode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One to eight edits: overwrite a byte, cut a span, or insert bytes.
/// Most land near the start, where headers live.
fn mutate(rng: &mut ChaCha8Rng, good: &[u8]) -> Vec<u8> {
    let mut b = good.to_vec();
    for _ in 0..rng.random_range(1..=8) {
        if b.len() < 4 {
            break;
        }
        let reach = if rng.random_bool(0.7) {
            b.len().min(2048)
        } else {
            b.len()
        };
        let at = rng.random_range(0..reach);
        match rng.random_range(0..10) {
            0..=5 => b[at] = rng.random(),
            6..=7 => {
                let end = (at + rng.random_range(1..64)).min(b.len());
                b.drain(at..end);
            }
            _ => {
                let n = rng.random_range(1..8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random::<u8>()).collect();
                b.splice(at..at, bytes);
            }
        }
    }
    b
}

#[test]
fn mutated_images_decode_or_fail_cleanly() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let list = std::fs::read_to_string(fixture("images/list.txt")).unwrap();
    let (mut decoded, mut refused) = (0, 0);
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap();
        let good = std::fs::read(fixture("images").join(name)).unwrap();
        for i in 0..12 {
            let bad = mutate(&mut rng, &good);
            let mode = [ColorMode::Color, ColorMode::Gray, ColorMode::Native][i % 3];
            match decode(&bad, mode) {
                Ok(m) => {
                    assert_eq!(m.data.len(), m.width * m.height * m.channels, "{name}");
                    decoded += 1;
                }
                Err(e) => {
                    assert!(!e.is_empty(), "{name}: an error says why");
                    refused += 1;
                }
            }
        }
    }
    // Both outcomes occur, so the mutations reach the decoders' checks.
    eprintln!("images: {decoded} decoded, {refused} refused");
    assert!(
        decoded > 20 && refused > 20,
        "{decoded} decoded, {refused} refused"
    );
}

/// Replaces one to three numbers of `text` with odd values.
fn swap_numbers(rng: &mut ChaCha8Rng, text: &str) -> String {
    const ODD: [&str; 9] = [
        "0",
        "-1",
        "1",
        "2",
        "7",
        "100000",
        "2147483648",
        "1e30",
        "0.5",
    ];
    let mut out = text.to_string();
    for _ in 0..rng.random_range(1..=3) {
        let b = out.as_bytes();
        let starts: Vec<usize> = (0..b.len())
            .filter(|&i| b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric()))
            .collect();
        let start = starts[rng.random_range(0..starts.len())];
        let end = (start..b.len())
            .find(|&i| !(b[i].is_ascii_digit() || b[i] == b'.'))
            .unwrap_or(b.len());
        out.replace_range(start..end, ODD[rng.random_range(0..ODD.len())]);
    }
    out
}

/// Trains up to iteration `iter` (with the solver's test phases), without
/// snapshots; a failure must say why.
fn train_to(s: &mut flickr_style::train::solver::Solver, iter: usize) {
    s.set_max_iter(iter);
    s.set_snapshot_after_train(false);
    if let Err(e) = s.solve() {
        assert!(!e.to_string().is_empty());
    }
}

#[test]
fn mutated_prototxts_build_or_fail_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut refused = 0;
    for i in 0..150 {
        // Half byte-level edits (mostly parse errors), half numbers swapped
        // for odd values (nets that parse but may not fit together).
        let solver = edited_net(t.path(), |good| {
            if i % 2 == 0 {
                String::from_utf8_lossy(&mutate(&mut rng, good.as_bytes())).into_owned()
            } else {
                swap_numbers(&mut rng, &good)
            }
        });
        match solver_in(t.path(), solver.to_str().unwrap(), &t.path().join("x")) {
            // A net that builds also trains a step or fails with a reason.
            Ok(mut s) => train_to(&mut s, 1),
            Err(e) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
        }
    }
    eprintln!("nets: {refused} of 150 refused");
    assert!(
        (50..140).contains(&refused),
        "{refused} of 150 mutated nets refused"
    );
}

/// A small net of the lookup and pyramid layers (Embed, Parameter,
/// BatchReindex, SPP) on DummyData, whose indices and shapes the mutations
/// push out of range.
const LOOKUP_NET: &str = r#"name: "lookup"
layer { name: "d" type: "DummyData" top: "ids" top: "order" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 } shape { dim: 4 }
    data_filler { type: "constant" value: 2 } data_filler { type: "constant" value: 1 }
    data_filler { type: "constant" value: 0 } } }
layer { name: "emb" type: "Embed" bottom: "ids" top: "vec"
  embed_param { num_output: 6 input_dim: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "free" type: "Parameter" top: "shift" parameter_param { shape { dim: 4 dim: 3 dim: 6 } } }
layer { name: "sum" type: "Eltwise" bottom: "vec" bottom: "shift" top: "s" }
layer { name: "mix" type: "BatchReindex" bottom: "s" bottom: "order" top: "m" }
layer { name: "img" type: "Reshape" bottom: "m" top: "m4" reshape_param { shape { dim: 0 dim: 2 dim: 3 dim: 3 } } }
layer { name: "spp" type: "SPP" bottom: "m4" top: "p" spp_param { pyramid_height: 2 pool: AVE } }
layer { name: "fc" type: "InnerProduct" bottom: "p" top: "fc" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"#;

/// Trains `rounds` mutations of `net` (the first unmutated, which must
/// train) for two iterations each; every failure must be an error, never
/// a panic. Returns (refused when built, failed training, trained).
fn mutate_and_train(net_text: &str, seed: u64, rounds: usize) -> (usize, usize, usize) {
    let t = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let solver = t.path().join("solver.prototxt");
    std::fs::write(
        &solver,
        "net: \"net.prototxt\"\nbase_lr: 0.1\nlr_policy: \"fixed\"\nmax_iter: 2\nrandom_seed: 1\n",
    )
    .unwrap();
    let (mut refused, mut trained, mut failed) = (0, 0, 0);
    for i in 0..rounds {
        let net = if i == 0 {
            net_text.to_string()
        } else {
            swap_numbers(&mut rng, net_text)
        };
        std::fs::write(t.path().join("net.prototxt"), &net).unwrap();
        match solver_in(t.path(), solver.to_str().unwrap(), &t.path().join("x")) {
            Ok(mut s) => {
                s.set_max_iter(2);
                s.set_snapshot_after_train(false);
                match s.solve() {
                    Ok(()) => trained += 1,
                    Err(e) => {
                        assert!(!e.to_string().is_empty());
                        failed += 1;
                    }
                }
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                refused += 1;
            }
        }
        // The unmutated net trains.
        assert!(i > 0 || trained == 1, "the unmutated net does not train");
    }
    (refused, failed, trained)
}

#[test]
fn mutated_lookup_and_pyramid_nets_build_or_fail_cleanly() {
    let (refused, failed, trained) = mutate_and_train(LOOKUP_NET, 7, 120);
    // Most mutations break the tightly coupled shapes (refused when built);
    // out-of-range indices fail the first step, naming the layer.
    eprintln!("lookup nets: {refused} of 120 refused, {failed} failed training, {trained} trained");
    assert!(
        refused >= 30 && failed >= 5 && trained >= 5,
        "{refused} refused, {failed} failed, {trained} trained"
    );
}

/// Sequences of 3 timesteps x 2 streams through an LSTM with a static
/// input and exposed hidden state, then an RNN on its output.
const RECURRENT_NET: &str = r#"name: "recurrent"
layer { name: "d" type: "DummyData" top: "x" top: "cont" top: "s" top: "h0" top: "c0" top: "label"
  dummy_data_param { shape { dim: 3 dim: 2 dim: 4 } shape { dim: 3 dim: 2 } shape { dim: 2 dim: 5 }
    shape { dim: 1 dim: 2 dim: 3 } shape { dim: 1 dim: 2 dim: 3 } shape { dim: 6 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 0.5 }
    data_filler { type: "constant" value: 0.2 } data_filler { type: "constant" value: 1 } } }
layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" bottom: "s" bottom: "h0" bottom: "c0"
  top: "h" top: "hT" top: "cT"
  recurrent_param { num_output: 3 expose_hidden: true weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "rnn" type: "RNN" bottom: "h" bottom: "cont" top: "o"
  recurrent_param { num_output: 4 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "flat" type: "Reshape" bottom: "o" top: "f" reshape_param { shape { dim: 6 dim: -1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "f" top: "fc" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "quiet" type: "Silence" bottom: "hT" bottom: "cT" }
"#;

#[test]
fn mutated_recurrent_nets_build_or_fail_cleanly() {
    let (refused, failed, trained) = mutate_and_train(RECURRENT_NET, 11, 120);
    eprintln!(
        "recurrent nets: {refused} of 120 refused, {failed} failed training, {trained} trained"
    );
    assert!(
        refused >= 30 && trained >= 5,
        "{refused} refused, {failed} failed, {trained} trained"
    );
}

/// A head behind a Filter whose selector (a Threshold of fresh Gaussian
/// draws) keeps a different number of items every pass, none at times.
const FILTER_NET: &str = r#"name: "filtered"
layer { name: "d" type: "DummyData" top: "x" top: "score" top: "label"
  dummy_data_param { shape { dim: 6 dim: 3 dim: 2 } shape { dim: 6 } shape { dim: 6 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "gaussian" std: 1 }
    data_filler { type: "constant" value: 1 } } }
layer { name: "pick" type: "Threshold" bottom: "score" top: "pick" threshold_param { threshold: 0.5 } }
layer { name: "sel" type: "Filter" bottom: "x" bottom: "label" bottom: "pick" top: "xf" top: "lf" }
layer { name: "flat" type: "Reshape" bottom: "xf" top: "f" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "f" top: "fc"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "cat" type: "Concat" bottom: "fc" bottom: "f" top: "cat" concat_param { axis: 1 } }
layer { name: "fc2" type: "InnerProduct" bottom: "cat" top: "fc2" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "lf" top: "loss"
  propagate_down: true propagate_down: false }
"#;

#[test]
fn mutated_filter_nets_build_or_fail_cleanly() {
    let (refused, failed, trained) = mutate_and_train(FILTER_NET, 13, 120);
    eprintln!("filter nets: {refused} of 120 refused, {failed} failed training, {trained} trained");
    assert!(
        refused >= 20 && trained >= 5,
        "{refused} refused, {failed} failed, {trained} trained"
    );
}

#[test]
fn mutated_weights_and_solver_states_load_or_fail_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let solver = edited_net(t.path(), |net| net);
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    let mut refused = 0;
    for (file, restore) in [
        ("tiny-net/snapshots/tiny_iter_15.caffemodel", false),
        ("tiny-net/snapshots/tiny_iter_15.solverstate", true),
    ] {
        let good = std::fs::read(fixture(file)).unwrap();
        for _ in 0..60 {
            let bad_path = t.path().join(if restore {
                "s.solverstate"
            } else {
                "w.caffemodel"
            });
            std::fs::write(&bad_path, mutate(&mut rng, &good)).unwrap();
            if restore {
                // A solverstate names its caffemodel; keep the real one beside it.
                std::fs::copy(
                    fixture("tiny-net/snapshots/tiny_iter_15.caffemodel"),
                    t.path().join("tiny_iter_15.caffemodel"),
                )
                .unwrap();
            }
            let mut s = solver_in(t.path(), solver.to_str().unwrap(), &t.path().join("x")).unwrap();
            let loaded = if restore {
                s.restore(&bad_path)
            } else {
                s.load_weights(std::slice::from_ref(&bad_path))
            };
            match loaded {
                Ok(()) => train_to(&mut s, if restore { 16 } else { 1 }),
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    refused += 1;
                }
            }
        }
    }
    eprintln!("weights and states: {refused} of 120 refused");
    assert!(refused > 40, "only {refused} of 120 mutated files refused");
}

#[test]
fn mutated_infogain_matrices_train_or_fail_cleanly() {
    use flickr_style::caffe::proto::BlobProto;
    // The tiny net with an InfogainLoss reading H; H's bytes mutated.
    let t = tempfile::tempdir().unwrap();
    let h_path = t.path().join("h.binaryproto");
    let solver = edited_net(t.path(), |s| {
        s.replacen(
            "type: \"SoftmaxWithLoss\"",
            &format!(
                "type: \"InfogainLoss\" infogain_loss_param {{ source: \"{}\" }}",
                common::slashed(&h_path)
            ),
            1,
        )
    });
    let h: Vec<f32> = (0..16)
        .map(|i| if i % 5 == 0 { 1.5 } else { 0.1 })
        .collect();
    let good = prost::Message::encode_to_vec(&BlobProto::with_shape(&[1, 1, 4, 4], h));
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut refused = 0;
    for _ in 0..60 {
        std::fs::write(&h_path, mutate(&mut rng, &good)).unwrap();
        match solver_in(
            &fixture("tiny-net"),
            solver.to_str().unwrap(),
            &t.path().join("x"),
        ) {
            Ok(mut s) => train_to(&mut s, 1),
            Err(e) => {
                assert!(e.to_string().contains("h.binaryproto"), "{e}");
                refused += 1;
            }
        }
    }
    eprintln!("infogain matrices: {refused} of 60 refused");
    assert!(
        refused > 10,
        "only {refused} of 60 mutated matrices refused"
    );
}

#[test]
fn mutated_fusion_inputs_fuse_or_fail_cleanly() {
    use flickr_style::analysis::fusion::{fuse, FuseOptions, Fuser};
    // A small evaluated set (probabilities.csv) and its samples.csv, each
    // mutated byte-wise and number-wise; then the fitted model's JSON.
    let t = tempfile::tempdir().unwrap();
    let mut probs = String::from("image,label,a,b,c\n");
    let mut samples = String::from("path,class,label,list,width,height,area\n");
    for i in 0..30 {
        let label = i % 3;
        let p = [0.2 + 0.1 * label as f64, 0.3, 0.5 - 0.1 * label as f64];
        probs += &format!("{i:08}_/d/{i}.png,{label},{},{},{}\n", p[0], p[1], p[2]);
        samples += &format!(
            "/d/{i}.png,{label},{label},test,{},{},{}\n",
            20 + 7 * label + i % 5,
            30 + i % 7,
            i * 3
        );
    }
    let o = FuseOptions {
        probabilities: t.path().join("probabilities.csv"),
        samples: t.path().join("samples.csv"),
        size: true,
        features: vec!["area".into()],
        measures: None,
        folds: 3,
        seed: 1,
        l2: 1e-3,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let (mut fused, mut refused) = (0, 0);
    for i in 0..80 {
        let (p, s) = match i % 4 {
            0 => (
                String::from_utf8_lossy(&mutate(&mut rng, probs.as_bytes())).into_owned(),
                samples.clone(),
            ),
            1 => (
                probs.clone(),
                String::from_utf8_lossy(&mutate(&mut rng, samples.as_bytes())).into_owned(),
            ),
            2 => (swap_numbers(&mut rng, &probs), samples.clone()),
            _ => (probs.clone(), swap_numbers(&mut rng, &samples)),
        };
        std::fs::write(&o.probabilities, p).unwrap();
        std::fs::write(&o.samples, s).unwrap();
        match fuse(&o) {
            Ok(f) => {
                assert!(f.fused.log_loss.is_finite(), "{f:?}");
                fused += 1;
            }
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("probabilities.csv") || e.contains("samples.csv"),
                    "{e}"
                );
                refused += 1;
            }
        }
    }
    eprintln!("fusion inputs: {fused} fused, {refused} refused");
    assert!(fused > 5 && refused > 5, "{fused} fused, {refused} refused");

    // `measure`'s file beside them, mutated the same ways.
    std::fs::write(&o.probabilities, &probs).unwrap();
    std::fs::write(&o.samples, &samples).unwrap();
    let names = flickr_style::pipeline::measure::NAMES;
    let mut measures = format!("path,{}\n", names.join(","));
    for i in 0..30 {
        let values: Vec<String> = (0..names.len())
            .map(|k| format!("{}", (i * 7 + k * 3) % 11))
            .collect();
        measures += &format!("/d/{i}.png,{}\n", values.join(","));
    }
    let measured = FuseOptions {
        measures: Some(t.path().join("measures.csv")),
        ..o.clone()
    };
    let (mut fused, mut refused) = (0, 0);
    for i in 0..40 {
        let m = if i % 2 == 0 {
            String::from_utf8_lossy(&mutate(&mut rng, measures.as_bytes())).into_owned()
        } else {
            swap_numbers(&mut rng, &measures)
        };
        std::fs::write(measured.measures.as_ref().unwrap(), m).unwrap();
        match fuse(&measured) {
            Ok(f) => {
                assert!(f.fused.log_loss.is_finite(), "{f:?}");
                fused += 1;
            }
            Err(e) => {
                assert!(
                    e.to_string().contains("measures.csv")
                        || e.to_string().contains("probabilities.csv"),
                    "{e}"
                );
                refused += 1;
            }
        }
    }
    eprintln!("measures: {fused} fused, {refused} refused");
    assert!(fused > 3 && refused > 3, "{fused} fused, {refused} refused");

    // The model file: mutated, it loads (and applies) or names itself.
    std::fs::write(&o.probabilities, &probs).unwrap();
    std::fs::write(&o.samples, &samples).unwrap();
    let out = t.path().join("out");
    fuse(&o).unwrap().write(&out).unwrap();
    let good = std::fs::read(out.join("fusion.json")).unwrap();
    let size = flickr_style::analysis::fusion::FromImage {
        size: (25, 31),
        measures: None,
    };
    let json = out.join("mutated.json");
    for _ in 0..60 {
        std::fs::write(&json, mutate(&mut rng, &good)).unwrap();
        match Fuser::load(&json, Some(&o.samples)) {
            Ok(f) => {
                let p = f.model.apply(&[0.2, 0.3, 0.5], &size, &[6.0]);
                assert!(p.iter().all(|v| v.is_finite()), "{p:?}");
            }
            Err(e) => assert!(e.to_string().contains("mutated.json"), "{e}"),
        }
    }
    // Finite but huge numbers overflow no probability.
    let mut v: serde_json::Value = serde_json::from_slice(&good).unwrap();
    v["model"]["temperature"] = serde_json::json!(1e300);
    v["model"]["bias"][0] = serde_json::json!(-1e308);
    std::fs::write(&json, v.to_string()).unwrap();
    let f = Fuser::load(&json, Some(&o.samples)).unwrap();
    let p = f.model.apply(&[0.2, 0.3, 0.5], &size, &[6.0]);
    assert!(
        p.iter().all(|v| v.is_finite()) && (p.iter().sum::<f32>() - 1.0).abs() < 1e-6,
        "{p:?}"
    );
}

#[test]
fn mutated_samples_and_images_measure_or_fail_cleanly() {
    use flickr_style::pipeline::measure::{measure_samples, MeasureOptions};
    // Twelve small gray PNGs and their samples.csv; the CSV mutated, then
    // the image files.
    let t = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(29);
    let mut samples = String::from("path,class,label,list,width,height\n");
    for i in 0..12u32 {
        let (w, h) = (9 + i, 14 - i / 2);
        let px: Vec<u8> = (0..w * h)
            .map(|k| ((k * 37 + i * 11) % 251) as u8)
            .collect();
        let p = t.path().join(format!("{i}.png"));
        image::GrayImage::from_raw(w, h, px)
            .unwrap()
            .save(&p)
            .unwrap();
        samples += &format!("{},c,0,train,{w},{h}\n", p.display());
    }
    let o = MeasureOptions {
        samples: t.path().join("samples.csv"),
        root: Default::default(),
        out: Some(t.path().join("measured.csv")),
    };
    let (mut measured, mut refused) = (0, 0);
    for i in 0..60 {
        let s = if i % 2 == 0 {
            String::from_utf8_lossy(&mutate(&mut rng, samples.as_bytes())).into_owned()
        } else {
            swap_numbers(&mut rng, &samples)
        };
        std::fs::write(&o.samples, s).unwrap();
        let _ = std::fs::remove_file(o.out.as_ref().unwrap());
        match measure_samples(&o) {
            Ok(_) => measured += 1,
            Err(e) => {
                assert!(e.to_string().contains("samples.csv"), "{e}");
                assert!(!o.out.as_ref().unwrap().exists());
                refused += 1;
            }
        }
    }
    eprintln!("measure samples: {measured} measured, {refused} refused");
    assert!(
        measured > 5 && refused > 5,
        "{measured} measured, {refused} refused"
    );
    // Damaged images: named, nothing written.
    std::fs::write(&o.samples, &samples).unwrap();
    let png = t.path().join("5.png");
    let good = std::fs::read(&png).unwrap();
    for _ in 0..30 {
        std::fs::write(&png, mutate(&mut rng, &good)).unwrap();
        let _ = std::fs::remove_file(o.out.as_ref().unwrap());
        match measure_samples(&o) {
            Ok(m) => assert_eq!(m.images, 12),
            Err(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("5.png") && e.contains("nothing was written"),
                    "{e}"
                );
                assert!(!o.out.as_ref().unwrap().exists());
            }
        }
    }
}
