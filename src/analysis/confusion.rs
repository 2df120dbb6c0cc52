//! Classification counts and the metrics derived from them: a confusion
//! matrix, top-k hits, per-class precision/recall/F1, and the class-balanced
//! summaries that matter when classes are imbalanced (mean per-class
//! accuracy, macro F1). Ties are scored as Caffe's Accuracy layer scores
//! them, so the matrix's diagonal equals `caffe test`'s accuracy. Given class
//! probabilities it also keeps the multi-class log loss as the Kaggle
//! plankton challenge (NDSB) scored it, and how many images clear a
//! confidence threshold (predict, or abstain and leave the image to a person).
use super::abstention::{abstention, at, Abstention};
use serde::Serialize;

/// How many classes score at least as high as `label` (itself excluded):
/// Caffe's Accuracy rule, under which a prediction is in the top k when this
/// is below k, so a tie counts against the true class. `None` when the true
/// class's score is NaN, which is never a correct prediction.
pub fn rank_of_label(classes: usize, label: usize, score: impl Fn(usize) -> f32) -> Option<usize> {
    let truth = score(label);
    if truth.is_nan() {
        return None;
    }
    Some(
        (0..classes)
            .filter(|&q| q != label && score(q) >= truth)
            .count(),
    )
}

/// Counts of (true class, predicted class) and top-k hits.
#[derive(Clone, Debug, PartialEq)]
pub struct Confusion {
    classes: usize,
    /// Row-major `classes x classes`, rows are true classes.
    counts: Vec<u64>,
    top_k: usize,
    top_k_hits: u64,
    /// Sum of -ln(clipped probability of the true class), and its images.
    log_loss: (f64, u64),
    /// Confidence threshold whose coverage the summary reports.
    threshold: Option<f64>,
    /// Per image with probabilities: its predicted class's probability,
    /// whether the prediction was right and its true class, for the
    /// abstention report.
    confidence: Vec<(f64, bool, usize)>,
}

/// NDSB's clipping of probabilities before the logarithm.
const CLIP: f64 = 1e-15;

/// One class's line of the report.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ClassMetrics {
    /// Class index.
    pub class: usize,
    /// Class name (the index when no names were given).
    pub name: String,
    /// Images of this class.
    pub support: u64,
    /// Images predicted as this class.
    pub predicted: u64,
    /// Images of this class predicted as it.
    pub correct: u64,
    /// correct / predicted; `None` when the class was never predicted.
    pub precision: Option<f64>,
    /// correct / support; `None` when the class has no images.
    pub recall: Option<f64>,
    /// Harmonic mean of precision and recall (0 when the class has images
    /// but was never predicted); `None` when the class has no images.
    pub f1: Option<f64>,
    /// Intersection over union, correct / (support + predicted - correct),
    /// a segmentation's per-class score; `None` when the class was neither
    /// present nor predicted.
    pub iou: Option<f64>,
    /// Share of this class's images that the threshold for 95% accuracy
    /// (see [`Summary::abstention`]) leaves predicted, the rest going to a
    /// person; `None` without such a threshold, or when it keeps every
    /// image, or for a class without images.
    pub kept_at_95: Option<f64>,
}

/// The whole-set figures.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    /// Images counted.
    pub images: u64,
    /// Top-1 accuracy (Caffe's Accuracy layer rule).
    pub accuracy: f64,
    /// The k of `top_k_accuracy`.
    pub top_k: usize,
    /// Share of images whose class is among the k best scores.
    pub top_k_accuracy: f64,
    /// Mean of the per-class recalls over classes with images (balanced accuracy).
    pub mean_class_accuracy: f64,
    /// Mean of the per-class F1 scores over classes with images.
    pub macro_f1: f64,
    /// Mean of the per-class IoUs over the classes present or predicted
    /// (FCN's mean IU, as its score.py averages with `nanmean`).
    pub mean_iou: f64,
    /// The per-class IoUs weighted by each class's share of the items
    /// (FCN's frequency-weighted IU).
    pub frequency_weighted_iou: f64,
    /// Per class, in class order.
    pub classes: Vec<ClassMetrics>,
    /// The most frequent mistakes: (true class, predicted class, images), most first.
    pub top_confusions: Vec<(usize, usize, u64)>,
    /// Mean -ln p(true class), each row scaled to sum 1 and p clipped to
    /// [1e-15, 1 - 1e-15] (NDSB's rule); `None` without probabilities.
    pub log_loss: Option<f64>,
    /// The confidence threshold of `coverage`, when one was set.
    pub threshold: Option<f64>,
    /// Share of images whose top probability reaches the threshold.
    pub coverage: Option<f64>,
    /// Accuracy over those images.
    pub covered_accuracy: Option<f64>,
    /// Coverage and accuracy over a range of thresholds; `None` without probabilities.
    pub abstention: Option<Abstention>,
}

/// Class `k`'s name: `names[k]`, or its index where the names stop short.
pub fn class_name(names: &[String], k: usize) -> String {
    names.get(k).cloned().unwrap_or_else(|| k.to_string())
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

impl Confusion {
    /// An empty matrix for `classes` classes, counting top-`top_k` hits too
    /// (`top_k` is clamped to 1..=classes).
    pub fn new(classes: usize, top_k: usize) -> Self {
        Confusion {
            classes,
            counts: vec![0; classes * classes],
            top_k: top_k.clamp(1, classes.max(1)),
            top_k_hits: 0,
            log_loss: (0.0, 0),
            threshold: None,
            confidence: Vec::new(),
        }
    }

    /// Also counts the images whose top probability reaches `threshold`
    /// (see [`Confusion::add_probabilities`]).
    pub fn with_threshold(mut self, threshold: f64) -> Self {
        self.threshold = Some(threshold);
        self
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Counts one image with these class scores and true class `label`
    /// (`label < classes`, `scores.len() == classes`). The prediction is the
    /// true class when no other class scores as high; otherwise the best
    /// other class (the first of equal ones). Returns the prediction.
    pub fn add(&mut self, scores: &[f32], label: usize) -> usize {
        let c = self.classes;
        assert!(label < c && scores.len() == c, "caller checks the label");
        let rank = rank_of_label(c, label, |q| scores[q]);
        let predicted = if rank == Some(0) {
            label
        } else {
            // The best other class; NaN scores never win.
            let mut best: Option<usize> = None;
            for q in (0..c).filter(|&q| q != label && !scores[q].is_nan()) {
                if best.is_none_or(|b| scores[q] > scores[b]) {
                    best = Some(q);
                }
            }
            best.unwrap_or_else(|| (0..c).find(|&q| q != label).unwrap_or(label))
        };
        if rank.is_some_and(|r| r < self.top_k) {
            self.top_k_hits += 1;
        }
        self.counts[label * c + predicted] += 1;
        predicted
    }

    /// Adds an image's class probabilities (after [`Confusion::add`] counted
    /// it as `predicted`): its log-loss term, and its confidence for the
    /// threshold and abstention figures. Rows are scaled to sum 1 first, as
    /// NDSB did.
    pub fn add_probabilities(&mut self, probs: &[f32], label: usize, predicted: usize) {
        let sum: f64 = probs.iter().map(|&p| p.max(0.0) as f64).sum();
        let p = |k: usize| {
            if sum > 0.0 {
                (probs[k].max(0.0) as f64 / sum).clamp(CLIP, 1.0 - CLIP)
            } else {
                CLIP
            }
        };
        self.log_loss.0 -= p(label).ln();
        self.log_loss.1 += 1;
        self.confidence
            .push((p(predicted), predicted == label, label));
    }

    /// Images of class `truth` predicted as `predicted`.
    pub fn count(&self, truth: usize, predicted: usize) -> u64 {
        self.counts[truth * self.classes + predicted]
    }

    /// Per image with probabilities, in the order added: its predicted
    /// class's probability and whether the prediction was right.
    pub fn confidence(&self) -> Vec<(f64, bool)> {
        self.confidence.iter().map(|&(p, ok, _)| (p, ok)).collect()
    }

    /// Images counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Every figure of the report; `names` labels the classes (indices when
    /// shorter than the class count).
    pub fn summary(&self, names: &[String]) -> Summary {
        let c = self.classes;
        let total = self.total();
        let confidence = self.confidence();
        let abstention = (!confidence.is_empty()).then(|| abstention(&confidence));
        let at_threshold = self
            .threshold
            .filter(|_| !confidence.is_empty())
            .map(|t| at(&confidence, t));
        // The threshold for 95% accuracy, when it leaves some images out.
        let t95 = abstention.as_ref().and_then(|a| {
            a.for_accuracy
                .iter()
                .find(|f| f.target == 0.95)
                .and_then(|f| f.point)
                .filter(|p| p.coverage < 1.0)
                .map(|p| p.threshold)
        });
        let kept_at = |k: usize, t: f64| {
            let of_k = || self.confidence.iter().filter(move |e| e.2 == k);
            let n = of_k().count() as u64;
            ratio(of_k().filter(|e| e.0 >= t).count() as u64, n)
        };
        let classes: Vec<ClassMetrics> = (0..c)
            .map(|k| {
                let support: u64 = (0..c).map(|p| self.count(k, p)).sum();
                let predicted: u64 = (0..c).map(|t| self.count(t, k)).sum();
                let correct = self.count(k, k);
                let precision = ratio(correct, predicted);
                let recall = ratio(correct, support);
                let f1 = recall.map(|r| {
                    let p = precision.unwrap_or(0.0);
                    if p + r > 0.0 {
                        2.0 * p * r / (p + r)
                    } else {
                        0.0
                    }
                });
                ClassMetrics {
                    class: k,
                    name: class_name(names, k),
                    support,
                    predicted,
                    correct,
                    precision,
                    recall,
                    f1,
                    iou: ratio(correct, support + predicted - correct),
                    kept_at_95: t95.and_then(|t| kept_at(k, t)),
                }
            })
            .collect();
        let present: Vec<&ClassMetrics> = classes.iter().filter(|m| m.support > 0).collect();
        let mean = |f: fn(&ClassMetrics) -> Option<f64>| {
            if present.is_empty() {
                0.0
            } else {
                present.iter().filter_map(|m| f(m)).sum::<f64>() / present.len() as f64
            }
        };
        let mut top_confusions: Vec<(usize, usize, u64)> = (0..c)
            .flat_map(|t| (0..c).map(move |p| (t, p)))
            .filter(|&(t, p)| t != p)
            .map(|(t, p)| (t, p, self.count(t, p)))
            .filter(|&(_, _, n)| n > 0)
            .collect();
        top_confusions.sort_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        top_confusions.truncate(10);
        let ious: Vec<f64> = classes.iter().filter_map(|m| m.iou).collect();
        let mean_iou = if ious.is_empty() {
            0.0
        } else {
            ious.iter().sum::<f64>() / ious.len() as f64
        };
        let frequency_weighted_iou = classes
            .iter()
            .filter_map(|m| Some(m.iou? * ratio(m.support, total)?))
            .sum();
        Summary {
            images: total,
            mean_iou,
            frequency_weighted_iou,
            accuracy: ratio((0..c).map(|k| self.count(k, k)).sum(), total).unwrap_or(0.0),
            top_k: self.top_k,
            top_k_accuracy: ratio(self.top_k_hits, total).unwrap_or(0.0),
            mean_class_accuracy: mean(|m| m.recall),
            macro_f1: mean(|m| m.f1),
            classes,
            top_confusions,
            log_loss: (self.log_loss.1 > 0).then(|| self.log_loss.0 / self.log_loss.1 as f64),
            threshold: self.threshold,
            coverage: at_threshold.map(|p| p.coverage),
            covered_accuracy: at_threshold.and_then(|p| p.accuracy),
            abstention,
        }
    }

    /// The matrix as CSV: a header of predicted-class names, then one row per
    /// true class (its name, then its counts).
    pub fn to_csv(&self, names: &[String]) -> String {
        let name = |k: usize| class_name(names, k);
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut header = vec!["true \\ predicted".to_string()];
        header.extend((0..self.classes).map(name));
        // Writing to a Vec cannot fail.
        w.write_record(&header).expect("in memory");
        for t in 0..self.classes {
            let mut row = vec![name(t)];
            row.extend((0..self.classes).map(|p| self.count(t, p).to_string()));
            w.write_record(&row).expect("in memory");
        }
        String::from_utf8(w.into_inner().expect("in memory")).expect("UTF-8 names")
    }
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |v| format!("{:.1}", 100.0 * v))
}

impl Summary {
    /// A Markdown report: the overall figures, a table per class and the most
    /// frequent mistakes. `title` heads it.
    pub fn to_markdown(&self, title: &str) -> String {
        let mut s = format!("# {title}\n\n");
        s += &format!(
            "| images | accuracy | top-{} accuracy | mean per-class accuracy | macro F1 |\n",
            self.top_k
        );
        s += "|---|---|---|---|---|\n";
        s += &format!(
            "| {} | {:.2}% | {:.2}% | {:.2}% | {:.4} |\n\n",
            self.images,
            100.0 * self.accuracy,
            100.0 * self.top_k_accuracy,
            100.0 * self.mean_class_accuracy,
            self.macro_f1
        );
        if let Some(l) = self.log_loss {
            s += &format!(
                "Log loss {l:.4} (each image's probability of its true class, clipped to [1e-15, 1 - 1e-15] as the Kaggle plankton challenge scored it).\n"
            );
        }
        if let (Some(t), Some(c)) = (self.threshold, self.coverage) {
            s += &format!(
                "At a confidence threshold of {t}: {:.2}% of the images get a prediction, {} of them right; the rest are left for a person.\n",
                100.0 * c,
                self.covered_accuracy
                    .map_or_else(|| "none".to_string(), |a| format!("{:.2}%", 100.0 * a))
            );
        }
        if self.log_loss.is_some() || self.threshold.is_some() {
            s += "\n";
        }
        if let Some(a) = &self.abstention {
            s += &a.to_markdown();
            s += "\n";
        }
        // With a threshold for 95% accuracy, how much of each class it
        // leaves predicted: the classes a person will see most of.
        let kept = self.classes.iter().any(|m| m.kept_at_95.is_some());
        s += "| class | name | images | predicted | precision % | recall % | F1 |";
        s += if kept {
            " predicted at 95% accuracy % |\n|---|---|---|---|---|---|---|---|\n"
        } else {
            "\n|---|---|---|---|---|---|---|\n"
        };
        for m in &self.classes {
            s += &format!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                m.class,
                m.name.replace('|', "\\|"),
                m.support,
                m.predicted,
                percent(m.precision),
                percent(m.recall),
                m.f1.map_or_else(|| "–".to_string(), |f| format!("{f:.3}"))
            );
            s += &if kept {
                format!(" {} |\n", percent(m.kept_at_95))
            } else {
                "\n".to_string()
            };
        }
        if !self.top_confusions.is_empty() {
            s += "\nMost frequent mistakes:\n\n| true | predicted as | images |\n|---|---|---|\n";
            for &(t, p, n) in &self.top_confusions {
                s += &format!(
                    "| {} | {} | {n} |\n",
                    self.classes[t].name.replace('|', "\\|"),
                    self.classes[p].name.replace('|', "\\|")
                );
            }
        }
        s
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn iou_is_fcns_mean_iu_and_frequency_weighted_iu() {
        // Rows are true classes: class 2 is predicted but absent (IoU 0,
        // counted), class 3 neither (left out of the mean).
        let rows = [[3, 1, 0, 0], [0, 2, 2, 0], [0, 0, 0, 0], [0, 0, 0, 0]];
        let mut m = Confusion::new(4, 1);
        for (truth, row) in rows.iter().enumerate() {
            for (predicted, &n) in row.iter().enumerate() {
                let mut scores = [0f32; 4];
                scores[predicted] = 1.0;
                for _ in 0..n {
                    m.add(&scores, truth);
                }
            }
        }
        let s = m.summary(&[]);
        let iou: Vec<Option<f64>> = s.classes.iter().map(|c| c.iou).collect();
        assert_eq!(iou, [Some(0.75), Some(0.4), Some(0.0), None]);
        assert!((s.mean_iou - 1.15 / 3.0).abs() < 1e-12);
        assert!((s.frequency_weighted_iou - 0.575).abs() < 1e-12);
    }

    #[test]
    fn ties_count_against_the_true_class_as_in_caffe() {
        assert_eq!(rank_of_label(3, 1, |q| [0.2, 0.5, 0.1][q]), Some(0));
        assert_eq!(rank_of_label(3, 1, |q| [0.5, 0.5, 0.1][q]), Some(1));
        assert_eq!(rank_of_label(3, 2, |q| [0.5, 0.5, 0.1][q]), Some(2));
        assert_eq!(rank_of_label(3, 0, |q| [f32::NAN, 0.5, 0.1][q]), None);
        // A NaN elsewhere is never "at least as high".
        assert_eq!(rank_of_label(3, 0, |q| [0.3, f32::NAN, 0.1][q]), Some(0));

        let mut m = Confusion::new(3, 2);
        m.add(&[0.5, 0.5, 0.1], 1); // tie: counted as the other class
        m.add(&[0.5, 0.5, 0.1], 0);
        m.add(&[0.1, 0.2, 0.2], 0); // the first of the tied best others
        m.add(&[f32::NAN, 0.1, f32::NAN], 0);
        assert_eq!(m.count(1, 0), 1);
        assert_eq!(m.count(0, 1), 3);
        assert_eq!(m.total(), 4);
    }

    /// Three classes, twelve images, worked out by hand.
    #[test]
    fn metrics_of_a_hand_made_matrix() {
        let names: Vec<String> = ["cat", "dog", "fox"].map(String::from).into();
        let mut m = Confusion::new(3, 2);
        let one_hot = |best: usize, second: usize| {
            let mut s = [0.0f32; 3];
            s[best] = 2.0;
            s[second] = 1.0;
            s
        };
        // cat (6): 4 right, 1 as dog (cat second), 1 as fox (dog second).
        for _ in 0..4 {
            m.add(&one_hot(0, 1), 0);
        }
        m.add(&one_hot(1, 0), 0);
        m.add(&one_hot(2, 1), 0);
        // dog (4): 2 right, 2 as cat (dog second).
        m.add(&one_hot(1, 2), 1);
        m.add(&one_hot(1, 0), 1);
        m.add(&one_hot(0, 1), 1);
        m.add(&one_hot(0, 1), 1);
        // fox (2): both as cat (fox last).
        m.add(&one_hot(0, 1), 2);
        m.add(&one_hot(0, 1), 2);
        let s = m.summary(&names);
        assert_eq!(s.images, 12);
        assert!((s.accuracy - 6.0 / 12.0).abs() < 1e-12);
        // Top-2 misses: the cat scored third once, both foxes.
        assert!((s.top_k_accuracy - 9.0 / 12.0).abs() < 1e-12);
        let cat = &s.classes[0];
        assert_eq!((cat.support, cat.predicted, cat.correct), (6, 8, 4));
        assert!((cat.precision.unwrap() - 0.5).abs() < 1e-12);
        assert!((cat.recall.unwrap() - 4.0 / 6.0).abs() < 1e-12);
        assert!((cat.f1.unwrap() - 4.0 / 7.0).abs() < 1e-12);
        let fox = &s.classes[2];
        assert_eq!(
            (fox.support, fox.predicted, fox.precision),
            (2, 1, Some(0.0))
        );
        assert_eq!(fox.f1, Some(0.0));
        // Balanced: (4/6 + 2/4 + 0) / 3; macro F1: (4/7 + 4/7 + 0) / 3.
        assert!((s.mean_class_accuracy - (4.0 / 6.0 + 0.5) / 3.0).abs() < 1e-12);
        assert!((s.macro_f1 - (8.0 / 7.0) / 3.0).abs() < 1e-12);
        assert_eq!(s.top_confusions[0], (1, 0, 2));
        assert_eq!(s.top_confusions[1], (2, 0, 2));
        let csv = m.to_csv(&names);
        assert_eq!(
            csv,
            "true \\ predicted,cat,dog,fox\ncat,4,1,1\ndog,2,2,0\nfox,2,0,0\n"
        );
        let md = s.to_markdown("t");
        assert!(md.contains("| 12 | 50.00% | 75.00% | 38.89% |"), "{md}");
        assert!(
            md.contains("| 2 | fox | 2 | 1 | 0.0 | 0.0 | 0.000 |"),
            "{md}"
        );
    }

    #[test]
    fn log_loss_and_coverage_from_probabilities() {
        let mut m = Confusion::new(2, 1).with_threshold(0.7);
        for (probs, label) in [
            ([0.8f32, 0.2], 0),
            ([0.6, 0.4], 1),
            ([0.0, 1.0], 0),
            ([2.0, 6.0], 1),
        ] {
            let predicted = m.add(&probs, label);
            m.add_probabilities(&probs, label, predicted);
        }
        let s = m.summary(&[]);
        // -(ln 0.8 + ln 0.4 + ln 1e-15 + ln 0.75) / 4: a confident miss is
        // clipped, not infinite; the last row is scaled to sum 1.
        let want = -(0.8f64.ln() + 0.4f64.ln() + 1e-15f64.ln() + 0.75f64.ln()) / 4.0;
        assert!(
            (s.log_loss.unwrap() - want).abs() < 1e-6,
            "{:?}",
            s.log_loss
        );
        // 0.8, 1.0 and 0.75 reach 0.7 (0.6 does not); of those, the 0.8 and 0.75 ones are right.
        assert_eq!(s.threshold, Some(0.7));
        assert_eq!(s.coverage, Some(0.75));
        assert!((s.covered_accuracy.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        let md = s.to_markdown("t");
        assert!(
            md.contains("Log loss 8.9915") && md.contains("75.00% of the images"),
            "{md}"
        );
        // Without probabilities, none of it.
        let plain = Confusion::new(2, 1).summary(&[]);
        assert_eq!((plain.log_loss, plain.coverage), (None, None));
    }

    #[test]
    fn classes_without_images_are_left_out_of_the_means() {
        let mut m = Confusion::new(3, 5);
        m.add(&[1.0, 0.0, 0.0], 0);
        m.add(&[0.0, 1.0, 0.0], 0);
        let s = m.summary(&[]);
        assert_eq!(s.top_k, 3);
        assert_eq!(s.classes[1].recall, None);
        assert_eq!(s.classes[1].f1, None);
        assert_eq!(s.classes[2].precision, None);
        assert!((s.mean_class_accuracy - 0.5).abs() < 1e-12);
        assert_eq!(s.classes[2].name, "2");
    }

    /// Six images of two classes, (probabilities, true class), by
    /// confidence: .99 right, .98 right, .97 right, .6 wrong, .55 right,
    /// .52 wrong. The top three alone are 95% accurate, so that threshold
    /// is .97: it keeps 2 of class 0's 3 images and 1 of class 1's.
    pub(crate) fn six_images() -> Confusion {
        let mut m = Confusion::new(2, 1);
        for (probs, label) in [
            ([0.99f32, 0.01], 0),
            ([0.97, 0.03], 0),
            ([0.4, 0.6], 0),
            ([0.02, 0.98], 1),
            ([0.45, 0.55], 1),
            ([0.52, 0.48], 1),
        ] {
            let predicted = m.add(&probs, label);
            m.add_probabilities(&probs, label, predicted);
        }
        m
    }

    #[test]
    fn each_class_says_how_much_of_it_the_95_percent_threshold_keeps() {
        let s = six_images().summary(&[]);
        let f = s.abstention.as_ref().unwrap().for_accuracy[1];
        assert_eq!((f.target, f.point.unwrap().kept), (0.95, 3));
        let kept: Vec<Option<f64>> = s.classes.iter().map(|c| c.kept_at_95).collect();
        assert!((kept[0].unwrap() - 2.0 / 3.0).abs() < 1e-12, "{kept:?}");
        assert!((kept[1].unwrap() - 1.0 / 3.0).abs() < 1e-12, "{kept:?}");
        let md = s.to_markdown("t");
        assert!(md.contains("| F1 | predicted at 95% accuracy % |"), "{md}");
        assert!(md.contains("| 66.7 |\n"), "{md}");
        // Without probabilities there is no such column.
        let mut bare = Confusion::new(2, 1);
        bare.add(&[0.3, 0.7], 1);
        let md = bare.summary(&[]).to_markdown("t");
        assert!(md.contains("| F1 |\n"), "{md}");
    }
}
