//! Class weights for a class-weighted loss (beyond Caffe's recipe, in
//! Caffe's own format): the label counts of a training list turned into the
//! diagonal matrix H of an InfogainLoss layer, so each image's loss counts
//! in inverse proportion to its class's frequency, tempered by an exponent.
//! Rare classes (most zooplankton taxa) then pull on the weights as hard as
//! common ones without repeating any image.
use super::image_list::read_list;
use crate::caffe::proto::BlobProto;
use crate::error::{Error, Result};
use std::path::Path;

/// Images per label in the Caffe image list at `list`, for labels
/// `0..classes`; a label outside them is an error naming its line.
pub fn label_counts(list: &Path, classes: usize) -> Result<Vec<u64>> {
    let mut counts = vec![0u64; classes];
    for e in read_list(list)? {
        match usize::try_from(e.label).ok().filter(|&l| l < classes) {
            Some(l) => counts[l] += 1,
            None => {
                return Err(Error::invalid(
                    format!("{}:{}", list.display(), e.line),
                    format!(
                        "label {} is outside the net's {classes} classes (0..{})",
                        e.label,
                        classes.saturating_sub(1)
                    ),
                ))
            }
        }
    }
    if counts.iter().all(|&n| n == 0) {
        return Err(Error::invalid(list.display(), "lists no images"));
    }
    Ok(counts)
}

/// The weight of each class: proportional to `count^-alpha` (0 leaves every
/// class at 1, 1 weighs by inverse frequency, 0.5 in between), scaled so that
/// the mean weight over the listed images is 1 and the loss keeps its scale
/// (the solver's learning rate stays right). A class with no images gets the
/// largest weight of the others: it is rarer than any of them.
pub fn class_weights(counts: &[u64], alpha: f64) -> Result<Vec<f64>> {
    if !(alpha.is_finite() && (0.0..=4.0).contains(&alpha)) {
        return Err(Error::invalid(
            "class weights",
            format!(
                "the exponent {alpha} is outside 0..=4 (0: no weighting, 1: inverse frequency)"
            ),
        ));
    }
    let raw: Vec<Option<f64>> = counts
        .iter()
        .map(|&n| (n > 0).then(|| (n as f64).powf(-alpha)))
        .collect();
    let total: u64 = counts.iter().sum();
    let weighted: f64 = counts
        .iter()
        .zip(&raw)
        .filter_map(|(&n, w)| w.map(|w| n as f64 * w))
        .sum();
    if total == 0 || weighted <= 0.0 {
        return Err(Error::invalid("class weights", "no class has any image"));
    }
    let scale = total as f64 / weighted;
    let largest = raw.iter().flatten().fold(0.0f64, |a, &w| a.max(w));
    Ok(raw.iter().map(|w| w.unwrap_or(largest) * scale).collect())
}

/// H for an InfogainLoss layer: `weights` on the diagonal, zero elsewhere,
/// as a 1x1xCxC blob (the shape Caffe's layer checks).
pub fn infogain_matrix(weights: &[f64]) -> BlobProto {
    let c = weights.len();
    let mut h = vec![0.0f32; c * c];
    for (k, &w) in weights.iter().enumerate() {
        h[k * c + k] = w as f32;
    }
    BlobProto::with_shape(&[1, 1, c, c], h)
}

/// Counts the labels of `list`, weighs them with exponent `alpha` and writes
/// H to `out` (atomically); returns the counts and weights.
pub fn write_class_weights(
    list: &Path,
    classes: usize,
    alpha: f64,
    out: &Path,
) -> Result<(Vec<u64>, Vec<f64>)> {
    let counts = label_counts(list, classes)?;
    let weights = class_weights(&counts, alpha)?;
    crate::caffe::write_binary(out, &infogain_matrix(&weights))?;
    Ok((counts, weights))
}

/// The counts and weights as a Markdown table, classes named by `names`
/// (or numbered when it is empty).
pub fn to_markdown(counts: &[u64], weights: &[f64], names: &[String]) -> String {
    let mut s = String::from("| label | class | train images | weight |\n|---:|---|---:|---:|\n");
    for (k, (n, w)) in counts.iter().zip(weights).enumerate() {
        s += &format!(
            "| {k} | {} | {n} | {w:.4} |\n",
            crate::analysis::confusion::class_name(names, k)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_frequency_keeps_the_mean_weight_at_one() {
        // 90 / 10 images: inverse frequency gives each class half the total
        // weight; the mean over the 100 images stays 1.
        let w = class_weights(&[90, 10], 1.0).unwrap();
        assert!((w[0] - 100.0 / 180.0).abs() < 1e-12, "{w:?}");
        assert!((w[1] - 100.0 / 20.0).abs() < 1e-12, "{w:?}");
        assert!((90.0 * w[0] + 10.0 * w[1] - 100.0).abs() < 1e-9);
        // Exponent 0: no weighting; 0.5: the square root of the ratio.
        assert_eq!(class_weights(&[90, 10], 0.0).unwrap(), vec![1.0, 1.0]);
        let w = class_weights(&[90, 10], 0.5).unwrap();
        assert!((w[1] / w[0] - 3.0).abs() < 1e-12, "{w:?}");
    }

    #[test]
    fn an_empty_class_gets_the_largest_weight() {
        let w = class_weights(&[40, 0, 10], 1.0).unwrap();
        assert_eq!(w[1], w[2]);
        assert!(w[2] > w[0]);
        assert!((40.0 * w[0] + 10.0 * w[2] - 50.0).abs() < 1e-9);
    }

    #[test]
    fn bad_exponents_and_lists_are_errors() {
        assert!(class_weights(&[1, 2], -1.0).is_err());
        assert!(class_weights(&[1, 2], f64::NAN).is_err());
        assert!(class_weights(&[0, 0], 1.0).is_err());
        let t = tempfile::tempdir().unwrap();
        let list = t.path().join("train.txt");
        std::fs::write(&list, "a.jpg 0\nb.jpg 1\nc.jpg 3\n").unwrap();
        let e = label_counts(&list, 3).unwrap_err().to_string();
        assert!(e.contains("train.txt:3") && e.contains("label 3"), "{e}");
        assert_eq!(label_counts(&list, 4).unwrap(), vec![1, 1, 0, 1]);
    }

    #[test]
    fn the_matrix_is_diagonal_and_square() {
        let h = infogain_matrix(&[0.5, 2.0]);
        assert_eq!(h.dims(), vec![1, 1, 2, 2]);
        assert_eq!(h.values(), vec![0.5, 0.0, 0.0, 2.0]);
    }
}
