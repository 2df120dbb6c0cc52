//! The HDF5Data layer against a real Caffe: `tests/data/hdf5/` holds HDF5
//! files written by h5py (a gzip-compressed dataset among them, float64 and
//! int32 ones converted to f32) and `caffe_hdf5.json`, the batches pycaffe
//! 1.0.0 (Debian bullseye) read from them, made by
//! `scripts/caffe-golden/hdf5.py`: files in list order with batches that
//! straddle files and passes, and with `shuffle`, whose file and row orders
//! come from `std::random_shuffle` over the C library's `rand()`. Every
//! value of every top must be Caffe's; a resume from any position must
//! continue the same feed; bad files are named; and a net trains from
//! HDF5 files and resumes exactly.
mod common;
use common::golden::Array;
use common::run;
use flickr_style::caffe::model::read_net_prototxt;
use flickr_style::caffe::proto::Phase;
use flickr_style::train::layers::BuildContext;
use flickr_style::train::net::Net;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
struct Case {
    name: String,
    prototxt: String,
    batches: Vec<BTreeMap<String, Array>>,
}

fn folder() -> PathBuf {
    std::path::absolute(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/hdf5")).unwrap()
}

fn net(prototxt: &str, dir: &Path) -> flickr_style::Result<Net> {
    let file = dir.join("net.prototxt");
    std::fs::write(&file, prototxt).unwrap();
    let def = read_net_prototxt(&file)?;
    Net::new(&def, &BuildContext::cpu(folder(), 1, Phase::Train), None)
}

fn values(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn every_batch_is_caffes_and_a_resume_continues_the_feed() {
    let cases: Vec<Case> = common::golden::load_cases("hdf5/caffe_hdf5.json");
    assert_eq!(cases.len(), 4);
    let dir = tempfile::tempdir().unwrap();
    let mut bad = Vec::new();
    for case in &cases {
        let mut n = net(&case.prototxt, dir.path()).unwrap();
        for (b, want) in case.batches.iter().enumerate() {
            n.forward().unwrap();
            for (top, a) in want {
                let got = n.blob(top).unwrap();
                if got.dims() != a.shape.as_slice() || values(got) != a.data {
                    bad.push(format!(
                        "{} batch {b} top {top}: differs from Caffe's",
                        case.name
                    ));
                }
            }
        }
        // A net restored to any batch reads the rest as the first did.
        for from in [1, case.batches.len() / 2, case.batches.len() - 1] {
            let mut r = net(&case.prototxt, dir.path()).unwrap();
            let states = n.states();
            let delivered = states["data"] / case.batches.len() as u64 * from as u64;
            r.restore_states(&BTreeMap::from([("data".to_string(), delivered)]));
            for (b, want) in case.batches.iter().enumerate().skip(from) {
                r.forward().unwrap();
                for (top, a) in want {
                    if values(r.blob(top).unwrap()) != a.data {
                        bad.push(format!(
                            "{} resumed at {from}: batch {b} top {top}",
                            case.name
                        ));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Caffe's solver run (`solver` in caffe_hdf5.json): training and test
/// nets that both shuffle, drawing from the process's one `rand()`.
#[derive(Deserialize)]
struct SolverCase {
    net: String,
    solver: String,
    params: Vec<Array>,
    train_data: Array,
    test_data: Array,
}

/// Writes the golden solver's net and solver into `dir` (its lists and
/// files resolve from the golden folder) with `extra` solver lines.
fn golden_solver(dir: &Path, case: &SolverCase, extra: &str) -> PathBuf {
    let net = dir.join("shared_rand.prototxt");
    std::fs::write(&net, &case.net).unwrap();
    let solver = dir.join("solver.prototxt");
    let text = case
        .solver
        .replace("shared_rand.prototxt", &common::slashed(&net))
        + extra;
    std::fs::write(&solver, text).unwrap();
    solver
}

/// The test net's shuffles (when it is set up, and each time its rows run
/// out in a test pass) move the training net's feed on, as they do in
/// Caffe, whose process has one `rand()`: after 12 iterations and 4 test
/// passes the weights and both nets' last batches are Caffe's. A resume
/// from a snapshot in the middle (the shared generator and each layer's
/// orders kept in the sidecar) ends the same.
#[test]
fn shuffling_train_and_test_nets_share_one_rand_as_in_caffe() {
    #[derive(Deserialize)]
    struct Doc {
        solver: SolverCase,
    }
    let case = common::golden::load::<Doc>("hdf5/caffe_hdf5.json").solver;
    let t = tempfile::tempdir().unwrap();
    let solver = golden_solver(t.path(), &case, "snapshot: 6\n");
    let options = |prefix: &str| {
        common::solver_options(&folder(), solver.to_str().unwrap(), &t.path().join(prefix))
    };
    let check = |s: &flickr_style::train::solver::Solver, what: &str| {
        for (i, want) in case.params.iter().enumerate() {
            let got = values(s.train.param(i));
            let err = common::rel_err(&got, &want.data, 1e-6);
            assert!(
                err < 1e-5,
                "{what}: fc blob {i}: {got:?} vs Caffe's {:?}",
                want.data
            );
        }
        assert_eq!(
            values(s.train.blob("data").unwrap()),
            case.train_data.data,
            "{what}"
        );
        assert_eq!(
            values(s.tests[0].blob("data").unwrap()),
            case.test_data.data,
            "{what}"
        );
    };
    let mut s = flickr_style::train::solver::Solver::new(&options("run")).unwrap();
    s.solve().unwrap();
    check(&s, "uninterrupted");
    let mut r = flickr_style::train::solver::Solver::new(&options("resumed")).unwrap();
    r.restore(&t.path().join("run_iter_6.solverstate")).unwrap();
    r.solve().unwrap();
    check(&r, "resumed at 6");

    // Saved orders that do not fit the files are refused by name.
    let side = t.path().join("run_iter_6.solverstate.resume.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&side).unwrap()).unwrap();
    let orders = &mut v["train_carried"]["data"];
    assert_eq!(orders.as_array().unwrap().len(), 3, "{orders}");
    orders[0] = serde_json::json!([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
    std::fs::write(&side, v.to_string()).unwrap();
    let mut bad = flickr_style::train::solver::Solver::new(&options("bad")).unwrap();
    let err = bad
        .restore(&t.path().join("run_iter_6.solverstate"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("do not fit its files"), "{err}");
}

#[test]
fn bad_lists_files_and_datasets_are_named() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    let layer = |source: &str, tops: &str, extra: &str| {
        format!(
            "name: \"n\"\nlayer {{ name: \"data\" type: \"HDF5Data\" {tops} {extra} \
             hdf5_data_param {{ source: \"{source}\" batch_size: 2 }} }}\n"
        )
    };
    let error = |text: String| net(&text, p).err().expect("refused").to_string();
    let e = error(layer("missing.txt", "top: \"data\"", ""));
    assert!(
        e.contains("layer 'data'") && e.contains("missing.txt"),
        "{e}"
    );
    let e = error(layer("one.txt", "top: \"data\" top: \"nothing\"", ""));
    assert!(
        e.contains("a.h5") && e.contains("no dataset 'nothing'"),
        "{e}"
    );
    let e = error(layer(
        "one.txt",
        "top: \"data\"",
        "transform_param { scale: 0.5 }",
    ));
    assert!(e.contains("does not transform data"), "{e}");
    // A file whose rows differ in shape from the first file's.
    let odd = p.join("odd.txt");
    std::fs::write(
        &odd,
        format!(
            "{}\n{}\n",
            folder().join("a.h5").display(),
            p.join("x.h5").display()
        ),
    )
    .unwrap();
    let mut b = hdf5_pure::FileBuilder::new();
    b.create_dataset("data")
        .with_f32_data(&[0.0; 8])
        .with_shape(&[2, 4]);
    b.write(p.join("x.h5")).unwrap();
    let e = error(layer(&common::slashed(&odd), "top: \"data\"", ""));
    assert!(
        e.contains("x.h5") && e.contains("[4]") && e.contains("[2, 3]"),
        "{e}"
    );
    // Not an HDF5 file at all.
    std::fs::write(p.join("x.h5"), b"not hdf5").unwrap();
    let e = error(layer(&common::slashed(&odd), "top: \"data\"", ""));
    assert!(e.contains("x.h5") && e.contains("cannot open"), "{e}");
}

#[test]
fn a_net_trains_from_hdf5_files_and_resumes_exactly() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    let list = folder().join("three.txt");
    let net = format!(
        "name: \"fit\"\n\
         layer {{ name: \"data\" type: \"HDF5Data\" top: \"data\" top: \"label\" \
           hdf5_data_param {{ source: \"{}\" batch_size: 3 shuffle: true }} }}\n\
         layer {{ name: \"fc\" type: \"InnerProduct\" bottom: \"data\" top: \"fc\" \
           inner_product_param {{ num_output: 1 weight_filler {{ type: \"gaussian\" std: 0.1 }} }} }}\n\
         layer {{ name: \"loss\" type: \"EuclideanLoss\" bottom: \"fc\" bottom: \"label\" top: \"loss\" }}\n",
        common::slashed(&list)
    );
    std::fs::write(p.join("net.prototxt"), net).unwrap();
    std::fs::write(
        p.join("solver.prototxt"),
        format!(
            "net: \"{}\"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: \"fixed\"\nmax_iter: 40\n\
         snapshot: 20\nsnapshot_prefix: \"fit\"\ndisplay: 1\nrandom_seed: 3\nsolver_mode: CPU\n",
            common::slashed(&p.join("net.prototxt"))
        ),
    )
    .unwrap();
    // The files the list names resolve from the working folder, as in Caffe.
    let (ok, _, err) = run(
        &folder(),
        &[
            "finetune",
            "--solver",
            p.join("solver.prototxt").to_str().unwrap(),
            "--snapshot-prefix",
            p.join("fit").to_str().unwrap(),
            "--metrics",
            p.join("m.jsonl").to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    let losses = |file: &Path| -> Vec<(u64, f64)> {
        std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["phase"] == "train")
            .map(|v| (v["iter"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
            .collect()
    };
    let full = losses(&p.join("m.jsonl"));
    assert_eq!(full.len(), 40);
    let mean = |s: &[(u64, f64)]| s.iter().map(|x| x.1).sum::<f64>() / s.len() as f64;
    assert!(mean(&full[30..]) < mean(&full[..10]) / 2.0, "{full:?}");
    let (ok, _, err) = run(
        &folder(),
        &[
            "finetune",
            "--solver",
            p.join("solver.prototxt").to_str().unwrap(),
            "--snapshot",
            p.join("fit_iter_20.solverstate").to_str().unwrap(),
            "--snapshot-prefix",
            p.join("again").to_str().unwrap(),
            "--metrics",
            p.join("r.jsonl").to_str().unwrap(),
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(losses(&p.join("r.jsonl")), full[20..]);
}

#[test]
fn damaged_files_are_errors_never_a_crash() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    std::fs::write(p.join("list.txt"), "x.h5\n").unwrap();
    let text =
        "name: \"n\"\nlayer { name: \"data\" type: \"HDF5Data\" top: \"data\" top: \"label\" \
                top: \"counts\" hdf5_data_param { source: \"list.txt\" batch_size: 5 } }\n";
    std::fs::write(p.join("net.prototxt"), text).unwrap();
    let def = read_net_prototxt(&p.join("net.prototxt")).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut refused, mut read) = (0, 0);
    for name in ["a.h5", "b.h5"] {
        let good = std::fs::read(folder().join(name)).unwrap();
        for trial in 0..400 {
            let mut bytes = good.clone();
            if trial % 8 == 0 {
                bytes.truncate(next() as usize % bytes.len());
            } else {
                for _ in 0..1 + next() % 4 {
                    let i = next() as usize % bytes.len();
                    bytes[i] = next() as u8;
                }
            }
            std::fs::write(p.join("x.h5"), &bytes).unwrap();
            // Built and read through a pass: each damage is an error naming
            // the file, or values (damage in unused bytes or in the values).
            let ctx = BuildContext::cpu(p, 1, Phase::Train);
            let outcome = Net::new(&def, &ctx, None).and_then(|mut n| {
                for _ in 0..3 {
                    n.forward()?;
                }
                Ok(())
            });
            match outcome {
                Ok(()) => read += 1,
                Err(e) => {
                    let e = e.to_string();
                    assert!(e.contains("x.h5"), "{e}");
                    refused += 1;
                }
            }
        }
    }
    assert!(
        refused > 100 && read > 100,
        "{refused} refused, {read} read"
    );
}

#[test]
fn deploy_takes_the_input_shape_from_the_first_file() {
    let t = tempfile::tempdir().unwrap();
    let net = t.path().join("net.prototxt");
    std::fs::write(
        &net,
        "name: \"cls\"\n\
         layer { name: \"data\" type: \"HDF5Data\" top: \"data\" top: \"label\" \
           hdf5_data_param { source: \"three.txt\" batch_size: 4 } }\n\
         layer { name: \"fc\" type: \"InnerProduct\" bottom: \"data\" top: \"fc\" \
           inner_product_param { num_output: 5 } }\n\
         layer { name: \"loss\" type: \"SoftmaxWithLoss\" bottom: \"fc\" bottom: \"label\" top: \"loss\" }\n",
    )
    .unwrap();
    let out = t.path().join("deploy.prototxt");
    let (ok, _, err) = run(
        &folder(),
        &[
            "deploy",
            net.to_str().unwrap(),
            out.to_str().unwrap(),
            "--batch",
            "2",
        ],
    );
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("rows of the dataset 'data' (2x3)"), "{text}");
    let def = read_net_prototxt(&out).unwrap();
    let input = &def.layer[0];
    assert_eq!(input.r#type(), "Input");
    let dims = &input.input_param.as_ref().unwrap().shape[0].dim;
    assert_eq!(dims, &[2, 2, 3]);
    let types: Vec<&str> = def.layer.iter().map(|l| l.r#type()).collect();
    assert_eq!(types, ["Input", "InnerProduct", "Softmax"]);
}
