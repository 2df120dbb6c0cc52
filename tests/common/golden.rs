//! The golden numbers of a real Caffe (made by `scripts/caffe-golden/`):
//! loading them, and comparing our blobs with their fingerprints.
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// `tests/data/<file>`, parsed.
pub fn load<T: DeserializeOwned>(file: &str) -> T {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file);
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// The cases of a golden file whose top level is `{provenance, cases}`,
/// after printing which Caffe made them.
pub fn load_cases<C: DeserializeOwned>(file: &str) -> Vec<C> {
    #[derive(Deserialize)]
    #[serde(bound = "C: DeserializeOwned")]
    struct Golden<C> {
        provenance: String,
        cases: Vec<C>,
    }
    let golden: Golden<C> = load(file);
    eprintln!("golden numbers: {}", golden.provenance);
    golden.cases
}

/// A small blob whole: an input, a parameter or an output.
#[derive(Deserialize)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A large blob in brief: its size, sum (in f64), sum of squares and the
/// values at some evenly spaced positions.
#[derive(Deserialize)]
pub struct Fingerprint {
    pub size: usize,
    pub sum: f64,
    pub sum_sq: f64,
    pub positions: Vec<usize>,
    pub values: Vec<f32>,
}

/// How far a blob is from a fingerprint.
#[derive(Clone, Copy, Debug, Default)]
pub struct Errors {
    /// The sum's error over the root of the sum of squares: sensitive to a
    /// single value gone astray.
    pub sum_over_root: f64,
    /// The sum's error per value, over the values' root mean square:
    /// tolerant of a tiny shift of every value (statistics summed in f64).
    pub sum_per_value: f64,
    /// The sum of squares' relative error.
    pub sum_sq: f64,
    /// The sampled values' largest error over the largest of them.
    pub values: f64,
}

impl Fingerprint {
    /// The errors of `got`, or what is wrong when its size differs.
    pub fn errors(&self, got: &[f32]) -> Result<Errors, String> {
        if got.len() != self.size {
            return Err(format!("{} values, Caffe {}", got.len(), self.size));
        }
        let sum: f64 = got.iter().map(|&x| f64::from(x)).sum();
        let sum_sq: f64 = got.iter().map(|&x| f64::from(x).powi(2)).sum();
        let n = self.size.max(1) as f64;
        let root = self.sum_sq.sqrt().max(1e-30);
        let largest = self
            .values
            .iter()
            .fold(1e-30f64, |m, &v| m.max(f64::from(v).abs()));
        Ok(Errors {
            sum_over_root: (sum - self.sum).abs() / root,
            sum_per_value: (sum - self.sum).abs() / (root * n.sqrt()),
            sum_sq: (sum_sq - self.sum_sq).abs() / self.sum_sq.max(1e-30),
            values: self
                .positions
                .iter()
                .zip(&self.values)
                .map(|(&p, &v)| (f64::from(got[p]) - f64::from(v)).abs() / largest)
                .fold(0.0, f64::max),
        })
    }
}

/// Fails the test with every disagreement listed, if there is any.
pub fn assert_agree(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} disagreements with Caffe:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs `check(case, tensor_ops)` for every case on both op paths (the CPU
/// kernels and the tensor ops); returns each problem as "case (path): …".
#[allow(dead_code)] // not every golden test has both paths
pub fn on_both_paths<C>(
    cases: &[C],
    name: impl Fn(&C) -> &str,
    check: impl Fn(&C, bool) -> Vec<String>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        for (label, tensor_ops) in [("cpu kernels", false), ("tensor ops", true)] {
            for problem in check(case, tensor_ops) {
                failures.push(format!("{} ({label}): {problem}", name(case)));
            }
        }
    }
    failures
}
