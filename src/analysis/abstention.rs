//! Abstaining (beyond Caffe): predicting only the images whose top
//! probability clears a threshold and leaving the rest to a person, as
//! plankton surveys validate what a classifier is unsure of. From each
//! image's confidence and whether its prediction was right, this gives the
//! share of images kept and the accuracy on them at every threshold, so a
//! user can pick one (plankifier's `-thresholds 0.6`) for the accuracy
//! they need.
use serde::{Deserialize, Serialize};

/// The thresholds the report tabulates.
pub const THRESHOLDS: [f64; 7] = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99];

/// The accuracies the report finds thresholds for.
pub const TARGETS: [f64; 3] = [0.9, 0.95, 0.99];

/// Keeping the images whose confidence is at least `threshold`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The confidence an image needs to be predicted.
    pub threshold: f64,
    /// Images kept.
    pub kept: u64,
    /// Share of all images kept.
    pub coverage: f64,
    /// Accuracy on the kept images; `None` when none are kept.
    pub accuracy: Option<f64>,
}

/// The lowest threshold that reaches an accuracy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForAccuracy {
    /// The accuracy wanted on the kept images.
    pub target: f64,
    /// The threshold keeping the most images at that accuracy or better;
    /// `None` when not even the most confident images reach it.
    pub point: Option<Point>,
}

/// What the report says about abstaining.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Abstention {
    /// At each of [`THRESHOLDS`].
    pub at_thresholds: Vec<Point>,
    /// For each of [`TARGETS`].
    pub for_accuracy: Vec<ForAccuracy>,
}

/// Every distinct threshold worth trying, most confident first: for each
/// distinct confidence among `images` ((confidence, right) pairs), keeping
/// the images at least that confident.
pub fn curve(images: &[(f64, bool)]) -> Vec<Point> {
    let mut sorted: Vec<(f64, bool)> = images
        .iter()
        .copied()
        .filter(|(c, _)| !c.is_nan())
        .collect();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total = images.len() as f64;
    let mut points = Vec::new();
    let (mut kept, mut right) = (0u64, 0u64);
    for (i, &(c, ok)) in sorted.iter().enumerate() {
        kept += 1;
        right += u64::from(ok);
        // Images of equal confidence are kept or dropped together.
        if sorted.get(i + 1).is_none_or(|n| n.0 < c) {
            points.push(Point {
                threshold: c,
                kept,
                coverage: kept as f64 / total,
                accuracy: Some(right as f64 / kept as f64),
            });
        }
    }
    points
}

/// Keeping the images at least `threshold` confident.
pub fn at(images: &[(f64, bool)], threshold: f64) -> Point {
    let (kept, right) = images
        .iter()
        .filter(|(c, _)| *c >= threshold)
        .fold((0u64, 0u64), |(k, r), &(_, ok)| (k + 1, r + u64::from(ok)));
    Point {
        threshold,
        kept,
        coverage: if images.is_empty() {
            0.0
        } else {
            kept as f64 / images.len() as f64
        },
        accuracy: (kept > 0).then(|| right as f64 / kept as f64),
    }
}

/// `threshold` rounded down to 4 decimals, as reports print it: passed to
/// `--threshold`, it still keeps every image it was counted with.
pub fn printable(threshold: f64) -> f64 {
    (threshold * 1e4).floor() / 1e4
}

/// The report's figures for `images` ((confidence, right) pairs).
pub fn abstention(images: &[(f64, bool)]) -> Abstention {
    let curve = curve(images);
    Abstention {
        at_thresholds: THRESHOLDS.iter().map(|&t| at(images, t)).collect(),
        for_accuracy: TARGETS
            .iter()
            .map(|&target| ForAccuracy {
                target,
                point: curve
                    .iter()
                    .rev()
                    .find(|p| p.accuracy.is_some_and(|a| a >= target))
                    .copied(),
            })
            .collect(),
    }
}

impl Abstention {
    /// The report's section: the table over [`THRESHOLDS`] and a line per target.
    pub fn to_markdown(&self) -> String {
        let mut s = String::from(
            "Abstaining (predict only the images whose top probability reaches a threshold; a person checks the rest):\n\n\
             | threshold | images predicted | share | accuracy on them |\n|---|---|---|---|\n",
        );
        for p in &self.at_thresholds {
            s += &format!(
                "| {} | {} | {:.1}% | {} |\n",
                p.threshold,
                p.kept,
                100.0 * p.coverage,
                p.accuracy
                    .map_or_else(|| "–".into(), |a| format!("{:.2}%", 100.0 * a))
            );
        }
        s += "\n";
        for f in &self.for_accuracy {
            s += &match f.point {
                Some(p) => format!(
                    "- {:.0}% accuracy: threshold {:.4} predicts {:.1}% of the images ({}); {:.1}% go to a person.\n",
                    100.0 * f.target,
                    printable(p.threshold),
                    100.0 * p.coverage,
                    p.kept,
                    100.0 * (1.0 - p.coverage)
                ),
                None => format!(
                    "- {:.0}% accuracy: not reached, even on the most confident images.\n",
                    100.0 * f.target
                ),
            };
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Six images: confidences 0.95 (right), 0.9 (right), 0.9 (wrong),
    /// 0.7 (right), 0.55 (wrong), 0.3 (right). By hand:
    /// p >= 0.95 keeps 1 (100%), >= 0.9 keeps 3 (2/3), >= 0.7 keeps 4 (3/4),
    /// >= 0.55 keeps 5 (3/5), >= 0.3 keeps 6 (4/6).
    const SIX: [(f64, bool); 6] = [
        (0.9, true),
        (0.3, true),
        (0.95, true),
        (0.55, false),
        (0.9, false),
        (0.7, true),
    ];

    #[test]
    fn the_curve_keeps_equal_confidences_together() {
        let c = curve(&SIX);
        let got: Vec<(f64, u64, f64)> = c
            .iter()
            .map(|p| (p.threshold, p.kept, p.accuracy.unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                (0.95, 1, 1.0),
                (0.9, 3, 2.0 / 3.0),
                (0.7, 4, 0.75),
                (0.55, 5, 0.6),
                (0.3, 6, 4.0 / 6.0)
            ]
        );
        assert_eq!(c[2].coverage, 4.0 / 6.0);
    }

    #[test]
    fn thresholds_and_targets_read_off_the_curve() {
        let a = abstention(&SIX);
        let at = |t: f64| a.at_thresholds.iter().find(|p| p.threshold == t).unwrap();
        assert_eq!((at(0.5).kept, at(0.5).accuracy), (5, Some(0.6)));
        assert_eq!((at(0.7).kept, at(0.7).accuracy), (4, Some(0.75)));
        assert_eq!((at(0.99).kept, at(0.99).accuracy), (0, None));
        // 90% and 95%: only the single most confident image; 99% too (it is right).
        for f in &a.for_accuracy {
            let p = f.point.unwrap();
            assert_eq!((p.kept, p.threshold), (1, 0.95));
        }
        // A target met further down the curve keeps more images: 75% at 0.7.
        let c = curve(&SIX);
        let best = c
            .iter()
            .rev()
            .find(|p| p.accuracy.unwrap() >= 0.75)
            .unwrap();
        assert_eq!(best.kept, 4);
        let md = a.to_markdown();
        assert!(md.contains("| 0.7 | 4 | 66.7% | 75.00% |"), "{md}");
        assert!(md.contains("- 95% accuracy: threshold 0.9500"), "{md}");
        // Nothing right: no target is reached.
        let wrong = abstention(&[(0.8, false), (0.6, false)]);
        assert!(wrong.for_accuracy.iter().all(|f| f.point.is_none()));
        assert!(wrong.to_markdown().contains("not reached"));
        // A printed threshold never exceeds the image it must keep.
        let one = abstention(&[(0.57016, true)]);
        assert!(
            one.to_markdown().contains("threshold 0.5701 "),
            "{}",
            one.to_markdown()
        );
    }

    #[test]
    fn no_images_give_an_empty_curve() {
        assert!(curve(&[]).is_empty());
        let p = at(&[], 0.5);
        assert_eq!((p.kept, p.coverage, p.accuracy), (0, 0.0, None));
    }
}
