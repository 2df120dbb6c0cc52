//! `compare`: several `evaluate --out` reports side by side (beyond Caffe).
//! A zooplankton study trains many variants of one recipe (padding, gray,
//! turns, warps, class weights, cyclic pooling, test-time views), each
//! reported in its own `evaluation_<tag>/`; this table says which helped,
//! on the class-balanced figures that matter for imbalanced data.
use super::abstention::Abstention;
use crate::error::{Error, IoContext, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The figures of one report's `metrics.json` that the table shows: a
/// subset of [`crate::analysis::confusion::Summary`], so that reports written
/// before a field was added still read.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Figures {
    /// Images evaluated.
    pub images: u64,
    /// Top-1 accuracy.
    pub accuracy: f64,
    /// The k of `top_k_accuracy`.
    pub top_k: usize,
    /// Top-k accuracy.
    pub top_k_accuracy: f64,
    /// Mean per-class accuracy.
    pub mean_class_accuracy: f64,
    /// Macro F1.
    pub macro_f1: f64,
    /// NDSB log loss, where the scores were probabilities.
    #[serde(default)]
    pub log_loss: Option<f64>,
    /// How abstaining pays, where the scores were probabilities.
    #[serde(default)]
    pub abstention: Option<Abstention>,
}

impl Figures {
    /// Share of the images predicted at the threshold that reaches 95%
    /// accuracy (`Some(0.0)` when none does); `None` without probabilities.
    pub fn predicted_at_95(&self) -> Option<f64> {
        let a = self.abstention.as_ref()?;
        let f = a.for_accuracy.iter().find(|f| f.target == 0.95)?;
        Some(f.point.map_or(0.0, |p| p.coverage))
    }
}

/// One report: its folder and figures.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The report folder (or metrics file) as given.
    pub report: PathBuf,
    /// Its figures.
    pub figures: Figures,
}

/// What the rows are ordered by, best first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortBy {
    /// Macro F1, highest first.
    #[default]
    MacroF1,
    /// Mean per-class accuracy, highest first.
    MeanClassAccuracy,
    /// Accuracy, highest first.
    Accuracy,
    /// Log loss, lowest first (reports without one last).
    LogLoss,
    /// Share of the images predicted at 95% accuracy, highest first: the
    /// variant that leaves a person the fewest to check.
    PredictedAt95,
}

impl FromStr for SortBy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "macro-f1" => Ok(SortBy::MacroF1),
            "mean-class-accuracy" => Ok(SortBy::MeanClassAccuracy),
            "accuracy" => Ok(SortBy::Accuracy),
            "log-loss" => Ok(SortBy::LogLoss),
            "predicted-at-95" => Ok(SortBy::PredictedAt95),
            _ => Err(format!(
                "{s:?}: sort by macro-f1, mean-class-accuracy, accuracy, log-loss or predicted-at-95"
            )),
        }
    }
}

/// The reports named: report folders and `metrics.json` files as they are,
/// and for a data folder (one without a `metrics.json`) every evaluation
/// folder in it.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() && !p.join("metrics.json").exists() {
            let found = find_reports(p)?;
            if found.is_empty() {
                return Err(Error::invalid(
                    p.display(),
                    "has no metrics.json and no evaluation folders with one",
                ));
            }
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Reads `metrics.json` of each report folder (or the file itself).
pub fn read_reports(reports: &[PathBuf]) -> Result<Vec<Row>> {
    reports
        .iter()
        .map(|r| {
            let file = if r.is_dir() {
                r.join("metrics.json")
            } else {
                r.clone()
            };
            let text = std::fs::read_to_string(&file).at(&file)?;
            let figures: Figures = serde_json::from_str(&text).map_err(|e| {
                Error::invalid(
                    file.display(),
                    format!("is not an evaluate metrics.json: {e}"),
                )
            })?;
            Ok(Row {
                report: r.clone(),
                figures,
            })
        })
        .collect()
}

/// The evaluation folders in `data`: `evaluation` and `evaluation_<tag>`
/// with a `metrics.json`, sorted by name.
pub fn find_reports(data: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(data).at(data)? {
        let path = entry.at(data)?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let is_report = name.is_some_and(|n| n == "evaluation" || n.starts_with("evaluation_"));
        if is_report && path.join("metrics.json").is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// The rows ordered by `by`, best first (ties keep their order).
pub fn sorted(mut rows: Vec<Row>, by: SortBy) -> Vec<Row> {
    let key = |r: &Row| -> f64 {
        let f = &r.figures;
        match by {
            SortBy::MacroF1 => -f.macro_f1,
            SortBy::MeanClassAccuracy => -f.mean_class_accuracy,
            SortBy::Accuracy => -f.accuracy,
            SortBy::LogLoss => f.log_loss.unwrap_or(f64::INFINITY),
            SortBy::PredictedAt95 => -f.predicted_at_95().unwrap_or(-1.0),
        }
    };
    rows.sort_by(|a, b| key(a).total_cmp(&key(b)));
    rows
}

/// A Markdown table of the rows as they come, with a note when they were
/// not all made on the same number of images.
pub fn to_markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| report | images | accuracy | top-k | mean per-class accuracy | macro F1 | log loss | predicted at 95% accuracy |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let f = &r.figures;
        s += &format!(
            "| {} | {} | {:.2}% | {:.2}% (top-{}) | {:.2}% | {:.3} | {} | {} |\n",
            r.report.display(),
            f.images,
            100.0 * f.accuracy,
            100.0 * f.top_k_accuracy,
            f.top_k,
            100.0 * f.mean_class_accuracy,
            f.macro_f1,
            f.log_loss.map_or("—".to_string(), |l| format!("{l:.4}")),
            match f.predicted_at_95() {
                None => "—".to_string(),
                Some(0.0) => "not reached".to_string(),
                Some(v) => format!("{:.1}%", 100.0 * v),
            }
        );
    }
    let mut sizes: Vec<u64> = rows.iter().map(|r| r.figures.images).collect();
    sizes.sort();
    sizes.dedup();
    if sizes.len() > 1 {
        s += "\nThe reports cover different numbers of images: they were not all made on the same test set.\n";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, f1: f64, loss: Option<f64>, images: u64) -> Row {
        Row {
            report: PathBuf::from(name),
            figures: Figures {
                images,
                accuracy: 0.5 + f1 / 10.0,
                top_k: 5,
                top_k_accuracy: 0.9,
                mean_class_accuracy: 0.4,
                macro_f1: f1,
                log_loss: loss,
                abstention: None,
            },
        }
    }

    #[test]
    fn rows_sort_best_first_and_the_table_flags_other_test_sets() {
        let rows = vec![
            row("a", 0.3, Some(1.2), 100),
            row("b", 0.5, None, 100),
            row("c", 0.4, Some(0.9), 100),
        ];
        let names = |rs: Vec<Row>| -> Vec<String> {
            rs.iter().map(|r| r.report.display().to_string()).collect()
        };
        assert_eq!(
            names(sorted(rows.clone(), SortBy::MacroF1)),
            ["b", "c", "a"]
        );
        assert_eq!(
            names(sorted(rows.clone(), SortBy::LogLoss)),
            ["c", "a", "b"]
        );
        let md = to_markdown(&rows);
        assert!(
            md.contains("| b | 100 | 55.00% | 90.00% (top-5) | 40.00% | 0.500 | — | — |"),
            "{md}"
        );
        assert!(!md.contains("different numbers"));
        let mut other = rows;
        other.push(row("d", 0.1, None, 80));
        assert!(to_markdown(&other).contains("different numbers of images"));
        assert!("f1".parse::<SortBy>().unwrap_err().contains("macro-f1"));
    }

    #[test]
    fn data_folders_expand_to_their_reports_and_bad_files_are_named() {
        let t = tempfile::tempdir().unwrap();
        let data = t.path();
        let json = r#"{"images": 8, "accuracy": 0.5, "top_k": 2, "top_k_accuracy": 0.75,
            "mean_class_accuracy": 0.5, "macro_f1": 0.4, "log_loss": 1.2, "classes": []}"#;
        for dir in [
            "evaluation",
            "evaluation_gray",
            "snapshots",
            "evaluation_empty",
        ] {
            std::fs::create_dir(data.join(dir)).unwrap();
        }
        for dir in ["evaluation", "evaluation_gray"] {
            std::fs::write(data.join(dir).join("metrics.json"), json).unwrap();
        }
        let found = expand(&[data.to_path_buf()]).unwrap();
        assert_eq!(
            found,
            [data.join("evaluation"), data.join("evaluation_gray")]
        );
        let rows = read_reports(&found).unwrap();
        assert_eq!(rows[1].figures.log_loss, Some(1.2));
        // Reports from before the abstention figures read, without them.
        assert_eq!(rows[1].figures.predicted_at_95(), None);
        let e = expand(&[data.join("snapshots")]).unwrap_err().to_string();
        assert!(
            e.contains("snapshots") && e.contains("no evaluation folders"),
            "{e}"
        );
        std::fs::write(data.join("evaluation_gray/metrics.json"), "{\"images\": 3}").unwrap();
        let e = read_reports(&found).unwrap_err().to_string();
        assert!(
            e.contains(&found[1].join("metrics.json").display().to_string())
                && e.contains("not an evaluate metrics.json"),
            "{e}"
        );
    }

    #[test]
    fn the_share_predicted_at_95_percent_reads_back_from_an_evaluation() {
        use crate::analysis::confusion::{tests::six_images, Confusion};
        // Six images whose three most confident are right: 95% accuracy
        // predicts half of them. evaluate's metrics.json holds the summary.
        let m = six_images();
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a.json"), t.path().join("b.json"));
        std::fs::write(&a, serde_json::to_string(&m.summary(&[])).unwrap()).unwrap();
        let mut worse = Confusion::new(2, 1);
        worse.add(&[0.9, 0.1], 1);
        worse.add_probabilities(&[0.9, 0.1], 1, 0);
        std::fs::write(&b, serde_json::to_string(&worse.summary(&[])).unwrap()).unwrap();
        let rows = read_reports(&[b.clone(), a.clone()]).unwrap();
        assert_eq!(rows[1].figures.predicted_at_95(), Some(0.5));
        // Not reached at all: nothing is predicted at that accuracy.
        assert_eq!(rows[0].figures.predicted_at_95(), Some(0.0));
        let best = sorted(rows, SortBy::PredictedAt95);
        assert_eq!(best[0].report, a);
        let md = to_markdown(&best);
        assert!(
            md.contains("| 50.0% |") && md.contains("| not reached |"),
            "{md}"
        );
    }
}
