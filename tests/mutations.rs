//! Bad layer parameters are errors, never panics: every number in each
//! layer of the Caffe golden cases (`tests/data/caffe_layers.json`, one
//! small net per layer configuration) is replaced by 0, -1, 3, huge values
//! (past i32, past f32) and a fraction, and the net is built, run forward
//! and backward, on the CPU kernels and on the tensor ops. Each
//! variant must either work or fail with an error; a panic fails the test.
mod common;
use candle_core::{Device, Tensor};
use common::golden::Array;
use flickr_style::caffe::model::read_net_prototxt;
use flickr_style::caffe::proto::{BlobProto, Phase};
use flickr_style::train::layers::BuildContext;
use flickr_style::train::net::Net;
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    prototxt: String,
    #[serde(default)]
    files: std::collections::BTreeMap<String, Array>,
    inputs: Vec<Array>,
}

/// Byte ranges of the numbers in `line` (digits with an optional sign,
/// point and exponent).
fn numbers(line: &str) -> Vec<(usize, usize)> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts =
            b[i].is_ascii_digit() || (b[i] == b'-' && b.get(i + 1).is_some_and(u8::is_ascii_digit));
        // Not inside a name such as "conv1" or "x0".
        let in_word = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if starts && !in_word {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_digit() || matches!(b[i], b'.' | b'e' | b'-')) {
                i += 1;
            }
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

/// Builds and runs the net in `text` on the CPU kernels or the tensor ops
/// (the GPU's code path); an error is fine, a panic is not.
fn run(
    text: &str,
    case: &Case,
    dir: &std::path::Path,
    tensor_ops: bool,
) -> flickr_style::Result<()> {
    let file = dir.join("net.prototxt");
    std::fs::write(&file, text).unwrap();
    let def = read_net_prototxt(&file)?;
    let mut ctx = BuildContext::cpu(dir, 1, Phase::Train);
    ctx.tensor_ops = tensor_ops;
    let mut net = Net::new(&def, &ctx, None)?;
    let inputs = case
        .inputs
        .iter()
        .map(|a| Tensor::from_vec(a.data.clone(), a.shape.as_slice(), &Device::Cpu).unwrap())
        .collect();
    net.forward_batch(inputs)?;
    net.backward()
}

#[test]
fn every_number_of_every_layer_mutated_is_an_error_or_works() {
    let golden: Golden = common::golden::load("caffe_layers.json");
    let dir = tempfile::tempdir().unwrap();
    let mut panics = Vec::new();
    let mut tried = 0;
    // Quiet the default hook: the panics are collected and reported below.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for case in &golden.cases {
        for (name, a) in &case.files {
            let blob = BlobProto::with_shape(&a.shape, a.data.clone());
            flickr_style::caffe::write_binary(&dir.path().join(name), &blob).unwrap();
        }
        let lines: Vec<&str> = case.prototxt.lines().collect();
        let Some(at) = lines
            .iter()
            .position(|l| l.contains("name: \"under_test\""))
        else {
            continue;
        };
        for (start, end) in numbers(lines[at]) {
            for value in ["0", "-1", "3", "1000000", "0.5", "1e40", "4294967296"] {
                let mut edited = lines.clone();
                let line = format!("{}{value}{}", &lines[at][..start], &lines[at][end..]);
                edited[at] = &line;
                let text = edited.join("\n");
                for tensor_ops in [false, true] {
                    tried += 1;
                    let outcome = std::panic::catch_unwind(|| {
                        run(&text, case, dir.path(), tensor_ops).map_err(|e| e.to_string())
                    });
                    if let Err(p) = outcome {
                        let why = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        panics.push(format!(
                            "{} (tensor ops: {tensor_ops}): {line}\n    panicked: {why}",
                            case.name
                        ));
                    }
                }
            }
        }
    }
    std::panic::set_hook(hook);
    eprintln!("{tried} variants tried");
    assert!(tried > 300, "{tried}");
    assert!(
        panics.is_empty(),
        "{} of {tried} variants panicked:\n{}",
        panics.len(),
        panics.join("\n")
    );
}
