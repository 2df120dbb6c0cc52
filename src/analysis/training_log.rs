//! Reads a training log in Caffe's wording — `caffe train`'s own glog
//! output, or `finetune --log`, which prints the same lines — into the
//! [`Metrics`] that [`plot`](super::plot) draws, as Caffe's `parse_log.py`
//! reads such logs. So a run trained by Caffe can be plotted beside one of
//! ours.
//!
//! The lines it reads (after an optional glog prefix `I1127 18:43:08.870 123
//! solver.cpp:239] `):
//! - `Iteration N (… iter/s, …), loss = S` (or the older `Iteration N, loss =
//!   S`): the smoothed loss Caffe displays at iteration N;
//! - `    Train net output #k: name = v (* w = wv loss)`: that iteration's
//!   outputs; the weighted loss outputs sum to its loss;
//! - `Iteration N, lr = r`: its learning rate;
//! - `Iteration N, Testing net (#t)` followed by `    Test net output #k: name
//!   = v …`: the test outputs of net t at iteration N.
//!
//! Everything else is passed over. A resumed run logs some iterations again;
//! as in a metrics file, the later record of an iteration wins.
use super::plot::{Metrics, TrainPoint};
use crate::error::{Error, IoContext, Result};
use std::collections::BTreeSet;
use std::path::Path;

/// The message of a log line: the text after glog's `I…] ` prefix, or the
/// whole line when it has none.
fn message(line: &str) -> &str {
    let b = line.as_bytes();
    let glog = b.len() > 5
        && matches!(b[0], b'I' | b'W' | b'E' | b'F')
        && b[1..5].iter().all(u8::is_ascii_digit);
    match line.find("] ") {
        Some(p) if glog => &line[p + 2..],
        _ => line,
    }
}

/// A number as C++ streams print it (`1.37753`, `4.5e-10`, `nan`, `-inf`).
fn number(s: &str) -> std::result::Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .map_err(|_| format!("{:?} is not a number", s.trim()))
}

/// One `Train/Test net output #k: name = v [(* w = wv loss)]` line's
/// name, value and weighted loss (when it is a loss output).
fn output(rest: &str) -> std::result::Result<(String, f64, Option<f64>), String> {
    let (_, assignment) = rest
        .split_once(": ")
        .ok_or_else(|| "an output line without ': '".to_string())?;
    let (name, value) = assignment
        .split_once(" = ")
        .ok_or_else(|| "an output line without ' = '".to_string())?;
    let (value, loss) = match value.split_once(" (* ") {
        Some((v, weighted)) => {
            let weighted = weighted
                .trim_end()
                .strip_suffix(" loss)")
                .and_then(|w| w.split_once(" = "))
                .ok_or_else(|| format!("a loss weight {weighted:?} not as '(* w = x loss)'"))?;
            (v, Some(number(weighted.1)?))
        }
        None => (value, None),
    };
    Ok((name.trim().to_string(), number(value)?, loss))
}

/// The display line of one training iteration, filled in by the lines
/// that follow it.
struct Pending {
    iter: u64,
    smoothed: f64,
    loss: Option<f64>,
    lr: Option<f64>,
}

impl Pending {
    /// Records the iteration.
    fn flush(self, m: &mut Metrics) {
        m.train.insert(
            self.iter,
            TrainPoint {
                loss: self.loss.unwrap_or(self.smoothed),
                smoothed: self.smoothed,
                lr: self.lr.unwrap_or(f64::NAN),
            },
        );
    }
}

/// Parses the text of a training log (`source` names it in errors). Its
/// training records take each displayed iteration's summed weighted loss
/// outputs as the loss (the smoothed loss where none are printed, as after
/// the last update) and NaN, which plots leave out, for a rate not logged.
pub fn parse_training_log(text: &str, source: &Path) -> Result<Metrics> {
    let mut m = Metrics::default();
    let mut pending: Option<Pending> = None;
    // The test net and iteration whose outputs follow, and the names seen so
    // far (a blob with several values prints its name once per value; the
    // first is kept, as the metrics file keeps it).
    let mut testing: Option<(u64, u64, BTreeSet<String>)> = None;
    for (i, line) in text.lines().enumerate() {
        let bad = |message: String| Error::Line {
            path: source.to_path_buf(),
            line: i + 1,
            message,
        };
        let msg = message(line).trim();
        if let Some(rest) = msg.strip_prefix("Iteration ") {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            let Ok(iter) = rest[..digits].parse::<u64>() else {
                continue;
            };
            let tail = &rest[digits..];
            if let Some(t) = tail.strip_prefix(", Testing net (#") {
                let net = t.trim_end_matches(')').parse::<u64>().map_err(|_| {
                    bad(format!("a test net number {t:?} not as 'Testing net (#k)'"))
                })?;
                testing = Some((iter, net, BTreeSet::new()));
                continue;
            }
            testing = None;
            if let Some(v) = tail.strip_prefix(", lr = ") {
                let lr = number(v).map_err(bad)?;
                if let Some(p) = pending.as_mut().filter(|p| p.iter == iter) {
                    p.lr = Some(lr);
                }
            } else if let Some((_, v)) = tail.split_once("loss = ") {
                if tail.starts_with(',') || tail.starts_with(" (") {
                    let smoothed = number(v).map_err(bad)?;
                    if let Some(p) = pending.take() {
                        p.flush(&mut m);
                    }
                    pending = Some(Pending {
                        iter,
                        smoothed,
                        loss: None,
                        lr: None,
                    });
                }
            }
        } else if let Some(rest) = msg.strip_prefix("Train net output #") {
            let (_, _, loss) = output(rest).map_err(bad)?;
            if let (Some(p), Some(l)) = (&mut pending, loss) {
                p.loss = Some(p.loss.unwrap_or(0.0) + l);
            }
        } else if let Some(rest) = msg.strip_prefix("Test net output #") {
            let (name, value, _) = output(rest).map_err(bad)?;
            if let Some((iter, net, seen)) = &mut testing {
                if seen.insert(name.clone()) {
                    m.tests
                        .entry((*net, name))
                        .or_default()
                        .insert(*iter, value);
                }
            }
        }
    }
    if let Some(p) = pending.take() {
        p.flush(&mut m);
    }
    Ok(m)
}

/// Reads a training log file (its bytes taken as UTF-8, any invalid ones
/// replaced: only Caffe's ASCII lines matter).
pub fn read_training_log(path: &Path) -> Result<Metrics> {
    let bytes = std::fs::read(path).at(path)?;
    parse_training_log(&String::from_utf8_lossy(&bytes), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "\
I20261127 18:43:08.870699 20436 solver.cpp:347] Iteration 0, Testing net (#0)
I20261127 18:43:08.917383 20436 solver.cpp:414]     Test net output #0: accuracy = 0.25
I20261127 18:43:08.917462 20436 solver.cpp:414]     Test net output #1: loss = 1.38594 (* 1 = 1.38594 loss)
I20261127 18:43:08.945159 20436 solver.cpp:239] Iteration 0 (4.51507e-10 iter/s, 0.074s/1 iters), loss = 1.37753
I20261127 18:43:08.945236 20436 solver.cpp:258]     Train net output #0: accuracy = 0.25
I20261127 18:43:08.945250 20436 solver.cpp:258]     Train net output #1: loss = 1.37753 (* 1 = 1.37753 loss)
I20261127 18:43:08.945271 20436 sgd_solver.cpp:112] Iteration 0, lr = 0.01
Iteration 1, loss = 1.5
    Train net output #0: loss = 2 (* 0.5 = 1 loss)
    Train net output #1: aux = 4 (* 0.25 = 1 loss)
Iteration 1, lr = 0.001
I1127 18:43:09 1 solver.cpp:327] Iteration 2, loss = 1.25
I1127 18:43:09 1 solver.cpp:347] Iteration 2, Testing net (#1)
I1127 18:43:09 1 solver.cpp:414]     Test net output #0: prob = 0.5
I1127 18:43:09 1 solver.cpp:414]     Test net output #1: prob = 0.25
I1127 18:43:09 1 solver.cpp:332] Optimization Done.
";

    #[test]
    fn reads_caffe_display_lr_and_test_lines() {
        let m = parse_training_log(LOG, Path::new("t.log")).unwrap();
        let p = |loss, smoothed, lr| TrainPoint { loss, smoothed, lr };
        assert_eq!(m.train[&0], p(1.37753, 1.37753, 0.01));
        // Weighted loss outputs sum to the iteration's loss; the older
        // display line without the rate is read too.
        assert_eq!(m.train[&1], p(2.0, 1.5, 0.001));
        // After the last update Caffe logs the smoothed loss alone, and no rate.
        assert_eq!((m.train[&2].loss, m.train[&2].smoothed), (1.25, 1.25));
        assert!(m.train[&2].lr.is_nan());
        assert_eq!(m.train.len(), 3);
        assert_eq!(m.tests[&(0, "accuracy".into())][&0], 0.25);
        assert_eq!(m.tests[&(0, "loss".into())][&0], 1.38594);
        // A blob of several values keeps its first, as the metrics file does.
        assert_eq!(m.tests[&(1, "prob".into())][&2], 0.5);
        assert_eq!(m.tests.len(), 3);
    }

    #[test]
    fn a_resumed_run_keeps_the_later_record() {
        let text = "Iteration 5, loss = 3\nIteration 5, lr = 0.1\nIteration 6, loss = 4\n\
                    Iteration 5, loss = 2\nIteration 5, lr = 0.2\n";
        let m = parse_training_log(text, Path::new("r.log")).unwrap();
        assert_eq!((m.train[&5].smoothed, m.train[&5].lr), (2.0, 0.2));
        assert_eq!(m.train[&6].smoothed, 4.0);
    }

    #[test]
    fn non_finite_values_parse_as_caffe_prints_them() {
        let text = "Iteration 3 (1 iter/s, 1s/1 iters), loss = nan\nIteration 3, lr = inf\n";
        let m = parse_training_log(text, Path::new("n.log")).unwrap();
        assert!(m.train[&3].smoothed.is_nan());
        assert!(m.train[&3].lr.is_infinite());
    }

    #[test]
    fn a_garbled_number_names_the_file_and_line() {
        let text = "Iteration 0, loss = 1\nIteration 1, loss = 1.2.3\n";
        let e = parse_training_log(text, Path::new("g.log"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("g.log:2:") && e.contains("1.2.3"), "{e}");
        let text = "    Train net output #0: loss = 1 (* one = 1 lost)\n";
        let e = parse_training_log(text, Path::new("g.log"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("g.log:1:") && e.contains("loss weight"),
            "{e}"
        );
    }

    #[test]
    fn other_lines_are_passed_over() {
        let text = "I1127 1 net.cpp:84] Creating Layer conv1\nIteration of doom\n\
                    Iteration 4, something else\n";
        let m = parse_training_log(text, Path::new("o.log")).unwrap();
        assert!(m.train.is_empty() && m.tests.is_empty());
    }
}
