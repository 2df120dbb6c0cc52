//! SVG plots of a `--metrics` file: training loss (each iteration and
//! Caffe's smoothed average), test-phase losses and scores, and the learning
//! rate, against the iteration. A resumed run appends to the same file, so a
//! repeated iteration keeps its latest record. Also the heat map of an
//! evaluation's confusion matrix.
use crate::error::{Error, IoContext, Result};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::collections::BTreeMap;
use std::path::Path;

/// One training iteration's record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainPoint {
    /// This iteration's loss.
    pub loss: f64,
    /// Caffe's running average over `average_loss` iterations.
    pub smoothed: f64,
    /// Learning rate.
    pub lr: f64,
}

/// The records of a metrics file, by iteration.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    /// Training records by iteration.
    pub train: BTreeMap<u64, TrainPoint>,
    /// Test outputs: (test net, output name) → iteration → value.
    pub tests: BTreeMap<(u64, String), BTreeMap<u64, f64>>,
}

fn number(v: &serde_json::Value, key: &str) -> std::result::Result<f64, String> {
    v.get(key)
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| format!("no number \"{key}\""))
}

/// Parses metrics JSONL text (`source` names it in errors). A last line cut
/// short (no newline: the writer was killed mid-line) is left out.
pub fn parse_metrics(text: &str, source: &Path) -> Result<Metrics> {
    let mut m = Metrics::default();
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let torn = i + 1 == lines.len();
        let bad = |message: String| Error::Line {
            path: source.to_path_buf(),
            line: i + 1,
            message,
        };
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) if torn => break,
            Err(e) => return Err(bad(format!("not a JSON record: {e}"))),
        };
        let iter = v
            .get("iter")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| bad("no \"iter\"".into()))?;
        match v.get("phase").and_then(serde_json::Value::as_str) {
            Some("train") => {
                let point = (|| {
                    Ok::<_, String>(TrainPoint {
                        loss: number(&v, "loss")?,
                        smoothed: number(&v, "smoothed_loss")?,
                        lr: number(&v, "lr")?,
                    })
                })()
                .map_err(bad)?;
                m.train.insert(iter, point);
            }
            Some("test") => {
                let net = v
                    .get("net")
                    .and_then(serde_json::Value::as_u64)
                    .unwrap_or(0);
                let outputs = v
                    .get("outputs")
                    .and_then(serde_json::Value::as_object)
                    .ok_or_else(|| bad("no \"outputs\" object".into()))?;
                for (name, value) in outputs {
                    let value = value
                        .as_f64()
                        .ok_or_else(|| bad(format!("output \"{name}\" is not a number")))?;
                    m.tests
                        .entry((net, name.clone()))
                        .or_default()
                        .insert(iter, value);
                }
            }
            other => return Err(bad(format!("unknown phase {other:?}"))),
        }
    }
    Ok(m)
}

/// Reads a metrics file written by `finetune --metrics`.
pub fn read_metrics(path: &Path) -> Result<Metrics> {
    let text = std::fs::read_to_string(path).at(path)?;
    parse_metrics(&text, path)
}

/// A padded range over the finite values (a flat series gets some height).
fn span(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if lo > hi {
        return None;
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.1
    };
    Some((lo - pad, hi + pad))
}

/// A range for a log axis over the positive finite values, a factor of 1.5
/// wider on each side.
fn log_span(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    (lo <= hi).then(|| (lo / 1.5, hi * 1.5))
}

/// A line (finite points only) to draw with its legend label.
struct Series {
    label: String,
    color: RGBColor,
    width: u32,
    points: Vec<(f64, f64)>,
    /// Draw a dot at each point (test phases are sparse).
    marks: bool,
    /// Dashed (a run's test outputs when several runs share a colour).
    dashed: bool,
}

fn series(
    label: String,
    color: RGBColor,
    width: u32,
    marks: bool,
    points: Vec<(f64, f64)>,
) -> Series {
    Series {
        label,
        color,
        width,
        points: points.into_iter().filter(|(_, y)| y.is_finite()).collect(),
        marks,
        dashed: false,
    }
}

/// Series colours: the first for one run's training loss (or the first of
/// several runs), the others for its test outputs (or the further runs).
const COLOURS: [RGBColor; 7] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
];

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn draw_panel(
    area: &Area,
    title: &str,
    x: (f64, f64),
    lines: &[Series],
    log_y: bool,
) -> std::result::Result<(), String> {
    let values = lines.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let range = if log_y {
        log_span(values)
    } else {
        span(values)
    };
    let Some((lo, hi)) = range else {
        return Ok(());
    };
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60);
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("iteration")
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| {
                    if log_y {
                        format!("{v:.0e}")
                    } else {
                        format!("{v:.3}")
                    }
                })
                .draw()
                .map_err(e)?;
            for s in lines.iter().filter(|s| !s.points.is_empty()) {
                let style = s.color.stroke_width(s.width);
                let color = s.color;
                let points = s.points.iter().copied();
                if s.dashed {
                    chart
                        .draw_series(DashedLineSeries::new(points, 8, 5, style))
                        .map_err(e)?
                        .label(s.label.as_str())
                        .legend(move |(x, y)| {
                            let line = vec![(x, y), (x + 20, y)].into_iter();
                            DashedPathElement::new(line, 6, 3, color.stroke_width(2))
                        });
                } else {
                    chart
                        .draw_series(LineSeries::new(points, style))
                        .map_err(e)?
                        .label(s.label.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                        });
                }
                if s.marks {
                    chart
                        .draw_series(
                            s.points
                                .iter()
                                .map(|&p| Circle::new(p, 3, s.color.filled())),
                        )
                        .map_err(e)?;
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .draw()
                .map_err(e)?;
        }};
    }
    if log_y {
        draw!(builder
            .build_cartesian_2d(x.0..x.1, (lo..hi).log_scale())
            .map_err(e)?);
    } else {
        draw!(builder.build_cartesian_2d(x.0..x.1, lo..hi).map_err(e)?);
    }
    Ok(())
}

/// The plot as SVG text: a loss panel, a panel of the other test outputs
/// (accuracy) when there are any, and the learning rate (log scale when it
/// spans more than a factor of 10). One run (a name and its records) is
/// drawn with each iteration's loss and a colour per test output; several
/// runs are drawn over each other, a colour per run, their series named
/// after it.
pub fn plot_svg(runs: &[(String, Metrics)], title: &str) -> std::result::Result<String, String> {
    if runs.is_empty() {
        return Err("no runs to plot".into());
    }
    if let Some((name, _)) = runs.iter().find(|(_, m)| m.train.is_empty()) {
        return Err(if runs.len() == 1 {
            "it has no training records".into()
        } else {
            format!("{name} has no training records")
        });
    }
    let last = runs
        .iter()
        .flat_map(|(_, m)| {
            m.train
                .keys()
                .chain(m.tests.values().flat_map(|v| v.keys()))
        })
        .copied()
        .max()
        .unwrap_or(0);
    let x = (0.0, (last.max(1)) as f64);
    let several = runs.len() > 1;
    let (mut losses, mut scores, mut lr) = (Vec::new(), Vec::new(), Vec::new());
    let mut tests_drawn = 0;
    for (r, (name, m)) in runs.iter().enumerate() {
        let train = |f: fn(&TrainPoint) -> f64| -> Vec<(f64, f64)> {
            m.train.iter().map(|(&i, p)| (i as f64, f(p))).collect()
        };
        let (pre, colour) = if several {
            (format!("{name}: "), COLOURS[r % COLOURS.len()])
        } else {
            // Each iteration's loss is too noisy to overlay other runs on.
            losses.push(series(
                "train loss".into(),
                RGBColor(150, 180, 225),
                1,
                false,
                train(|p| p.loss),
            ));
            (String::new(), COLOURS[0])
        };
        losses.push(series(
            format!("{pre}train loss (smoothed)"),
            colour,
            2,
            false,
            train(|p| p.smoothed),
        ));
        for ((net, output), values) in &m.tests {
            let points: Vec<(f64, f64)> = values.iter().map(|(&i, &v)| (i as f64, v)).collect();
            let c = if several {
                colour
            } else {
                COLOURS[1 + tests_drawn % (COLOURS.len() - 1)]
            };
            tests_drawn += 1;
            let mut s = series(
                format!("{pre}test {output} (net {net})"),
                c,
                2,
                true,
                points,
            );
            s.dashed = several;
            if output.contains("loss") {
                losses.push(s);
            } else {
                scores.push(s);
            }
        }
        lr.push(series(
            format!("{pre}learning rate"),
            if several {
                colour
            } else {
                RGBColor(90, 90, 90)
            },
            2,
            false,
            train(|p| p.lr),
        ));
    }
    let (lr_lo, lr_hi) = runs
        .iter()
        .flat_map(|(_, m)| m.train.values())
        .fold((f64::INFINITY, 0.0f64), |(a, b), p| {
            (a.min(p.lr), b.max(p.lr))
        });
    let log_lr = lr_lo > 0.0 && lr_hi / lr_lo > 10.0;
    let panels = if scores.is_empty() { 2 } else { 3 };
    let (w, h) = (960u32, 300 * panels as u32 + 40);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let root = root
            .titled(title, ("sans-serif", 22))
            .map_err(|e| e.to_string())?;
        let areas = root.split_evenly((panels, 1));
        draw_panel(&areas[0], "loss", x, &losses, false)?;
        if !scores.is_empty() {
            draw_panel(&areas[1], "test outputs", x, &scores, false)?;
        }
        draw_panel(&areas[panels - 1], "learning rate", x, &lr, log_lr)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(svg)
}

/// The confusion matrix as an SVG heat map: a row per true class, a column
/// per predicted class, each cell shaded by its share of the row (so a rare
/// class's row is as readable as a common one's) and, up to 40 classes,
/// labelled with its count; classes named by `names` (else numbered).
pub fn confusion_svg(
    m: &crate::analysis::confusion::Confusion,
    names: &[String],
    title: &str,
) -> std::result::Result<String, String> {
    use crate::analysis::confusion::class_name;
    let n = m.classes();
    if n == 0 {
        return Err("the matrix has no classes".into());
    }
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let cell = (640 / n).clamp(4, 48) as i32;
    let labels: Vec<String> = (0..n)
        .map(|k| {
            let s = class_name(names, k);
            match s.char_indices().nth(24) {
                Some((i, _)) => format!("{}…", &s[..i]),
                None => s,
            }
        })
        .collect();
    let show_labels = n <= 80;
    let margin = if show_labels {
        12 + 7 * labels.iter().map(|l| l.chars().count()).max().unwrap_or(1) as i32
    } else {
        30
    };
    let (left, top) = (margin + 30, 60);
    let side = cell * n as i32;
    // Wide enough for the title and the legend line.
    let (w, h) = (
        (left + side + 30).max(560) as u32,
        (top + side + margin + 30) as u32,
    );
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        root.draw(&Text::new(title.to_string(), (10, 10), ("sans-serif", 18)))
            .map_err(e)?;
        root.draw(&Text::new(
            "rows: true class, columns: predicted class, shade: share of the row".to_string(),
            (10, 34),
            ("sans-serif", 12),
        ))
        .map_err(e)?;
        let font = ("sans-serif", (cell - 2).clamp(6, 12)).into_font();
        let centre = Pos::new(HPos::Center, VPos::Center);
        for (t, label) in labels.iter().enumerate() {
            let row_total: u64 = (0..n).map(|p| m.count(t, p)).sum();
            for p in 0..n {
                let count = m.count(t, p);
                let share = if row_total > 0 {
                    count as f64 / row_total as f64
                } else {
                    0.0
                };
                // White to dark blue.
                let shade = |full: f64, none: f64| (none + (full - none) * share) as u8;
                let colour = RGBColor(shade(8.0, 255.0), shade(48.0, 255.0), shade(107.0, 255.0));
                let (x, y) = (left + p as i32 * cell, top + t as i32 * cell);
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    colour.filled(),
                ))
                .map_err(e)?;
                if n <= 40 && count > 0 {
                    let ink = if share > 0.5 { &WHITE } else { &BLACK };
                    root.draw(&Text::new(
                        count.to_string(),
                        (x + cell / 2, y + cell / 2),
                        font.clone().color(ink).pos(centre),
                    ))
                    .map_err(e)?;
                }
            }
            if show_labels {
                root.draw(&Text::new(
                    label.clone(),
                    (left - 6, top + t as i32 * cell + cell / 2),
                    TextStyle::from(font.clone()).pos(Pos::new(HPos::Right, VPos::Center)),
                ))
                .map_err(e)?;
                root.draw(&Text::new(
                    label.clone(),
                    (left + t as i32 * cell + cell / 2 - 6, top + side + 6),
                    font.clone().transform(FontTransform::Rotate90),
                ))
                .map_err(e)?;
            }
        }
        root.draw(&Rectangle::new(
            [(left, top), (left + side, top + side)],
            BLACK.stroke_width(1),
        ))
        .map_err(e)?;
        root.present().map_err(e)?;
    }
    Ok(svg)
}

/// The abstention curve of an evaluation as SVG: the accuracy on the images
/// predicted against the share predicted, as the confidence threshold falls
/// from the most confident image to the least, with the report's
/// thresholds marked and labelled. `images` holds each image's confidence
/// and whether it was right.
pub fn abstention_svg(images: &[(f64, bool)], title: &str) -> std::result::Result<String, String> {
    use crate::analysis::abstention::{at, curve, THRESHOLDS};
    let points: Vec<(f64, f64)> = curve(images)
        .iter()
        .filter_map(|p| p.accuracy.map(|a| (p.coverage, a)))
        .collect();
    if points.is_empty() {
        return Err("no image has probabilities".into());
    }
    let marks: Vec<(f64, f64, f64)> = THRESHOLDS
        .iter()
        .map(|&t| at(images, t))
        .filter_map(|p| p.accuracy.map(|a| (p.coverage, a, p.threshold)))
        .collect();
    let lo = points.iter().map(|p| p.1).fold(1.0f64, f64::min);
    // Some room below the lowest accuracy; 1.0 on top.
    let lo = (lo - 0.05 * (1.0 - lo).max(0.02)).max(0.0);
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..1.0f64, lo..1.0f64)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("share of images predicted (the rest go to a person)")
            .y_desc("accuracy on them")
            .x_label_formatter(&|v| format!("{:.0}%", 100.0 * v))
            .y_label_formatter(&|v| format!("{:.0}%", 100.0 * v))
            .draw()
            .map_err(e)?;
        let blue = RGBColor(31, 119, 180);
        chart
            .draw_series(LineSeries::new(points, blue.stroke_width(2)))
            .map_err(e)?;
        let font = ("sans-serif", 12).into_font();
        // Where labels went (chart units): one too close to another is left
        // out rather than drawn over it (its dot stays; the table has it).
        let mut labelled: Vec<(f64, f64)> = Vec::new();
        let near = |a: (f64, f64), b: &(f64, f64)| {
            (a.0 - b.0).abs() < 0.08 && (a.1 - b.1).abs() < 0.06 * (1.0 - lo)
        };
        for (x, y, t) in marks {
            chart
                .draw_series(std::iter::once(Circle::new((x, y), 4, BLACK.filled())))
                .map_err(e)?;
            if labelled.iter().any(|b| near((x, y), b)) {
                continue;
            }
            labelled.push((x, y));
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("p ≥ {t}"),
                    (x, y),
                    TextStyle::from(font.clone()).pos(Pos::new(HPos::Left, VPos::Top)),
                )))
                .map_err(e)?;
        }
        root.present().map_err(e)?;
    }
    Ok(svg)
}

/// Reads a run to plot: a metrics file (JSON lines, from `finetune
/// --metrics`) or, when its first line is not a JSON record, a training log
/// in Caffe's wording (see [`training_log`](super::training_log)).
pub fn read_run(path: &Path) -> Result<Metrics> {
    let bytes = std::fs::read(path).at(path)?;
    let text = String::from_utf8_lossy(&bytes);
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    let m = if first.is_some_and(|l| l.starts_with('{')) {
        parse_metrics(&text, path)?
    } else {
        super::training_log::parse_training_log(&text, path)?
    };
    if m.train.is_empty() {
        return Err(Error::invalid(
            path.display(),
            "no training records to plot: neither a metrics file from `finetune --metrics` \
             nor a training log with Caffe's 'Iteration N …, loss = …' lines",
        ));
    }
    Ok(m)
}

/// A run's records as CSV text, as `parse_log.py` tabulates a log: the
/// training records (`iteration,loss,smoothed_loss,lr`; a rate not logged
/// is left empty) and the test records (`iteration,net,` then each output's
/// name, a row per test phase).
pub fn to_csv(m: &Metrics) -> (String, String) {
    let cell = |v: f64| {
        if v.is_nan() {
            String::new()
        } else {
            v.to_string()
        }
    };
    let mut train = String::from("iteration,loss,smoothed_loss,lr\n");
    for (i, p) in &m.train {
        train += &format!("{i},{},{},{}\n", cell(p.loss), cell(p.smoothed), cell(p.lr));
    }
    let names: std::collections::BTreeSet<&str> = m.tests.keys().map(|(_, n)| n.as_str()).collect();
    let mut rows: BTreeMap<(u64, u64), BTreeMap<&str, f64>> = BTreeMap::new();
    for ((net, name), values) in &m.tests {
        for (&i, &v) in values {
            rows.entry((i, *net)).or_default().insert(name, v);
        }
    }
    let mut test = String::from("iteration,net");
    for n in &names {
        // Output names are blob names: no commas or quotes in practice, but
        // quote one that has them.
        if n.contains([',', '"']) {
            test += &format!(",\"{}\"", n.replace('"', "\"\""));
        } else {
            test += &format!(",{n}");
        }
    }
    test.push('\n');
    for ((i, net), values) in rows {
        test += &format!("{i},{net}");
        for n in &names {
            test.push(',');
            test += &values.get(n).map_or(String::new(), |&v| cell(v));
        }
        test.push('\n');
    }
    (train, test)
}

/// Plots one or more runs (see [`read_run`]) into the SVG file `out`
/// (written atomically), several over each other; with `csv`, also writes
/// each run's records there as `<run>.train.csv` and `<run>.test.csv` (see
/// [`to_csv`]).
pub fn plot_runs(runs: &[&Path], out: &Path, csv: Option<&Path>) -> Result<()> {
    let name = |p: &Path| {
        p.file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    };
    let names: Vec<String> = runs.iter().map(|p| name(p)).collect();
    // Runs are named by file name, or by path where file names repeat.
    let unique = names
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
        == names.len();
    let mut loaded = Vec::with_capacity(runs.len());
    for (path, short) in runs.iter().zip(&names) {
        let label = if unique {
            short.clone()
        } else {
            path.display().to_string()
        };
        loaded.push((label, read_run(path)?));
    }
    let title = loaded
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(" vs ");
    let context = runs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let svg = plot_svg(&loaded, &title)
        .map_err(|e| Error::invalid(context, format!("cannot plot: {e}")))?;
    crate::fsutil::write_atomic(out, svg.as_bytes())?;
    if let Some(dir) = csv {
        std::fs::create_dir_all(dir).at(dir)?;
        for (label, m) in &loaded {
            let stem = label.replace(['/', '\\'], "_");
            let (train, test) = to_csv(m);
            crate::fsutil::write_atomic(&dir.join(format!("{stem}.train.csv")), train.as_bytes())?;
            crate::fsutil::write_atomic(&dir.join(format!("{stem}.test.csv")), test.as_bytes())?;
        }
    }
    Ok(())
}

/// Plots the metrics file `metrics` into the SVG file `out` (written atomically).
pub fn plot_metrics(metrics: &Path, out: &Path) -> Result<()> {
    plot_runs(&[metrics], out, None)
}

#[cfg(test)]
mod tests {

    #[test]
    fn confusion_heat_map_names_classes_and_counts() {
        use crate::analysis::confusion::Confusion;
        let mut m = Confusion::new(3, 1);
        // Two right for class 0, one class-1 image taken for class 2.
        m.add(&[0.9, 0.05, 0.05], 0);
        m.add(&[0.8, 0.1, 0.1], 0);
        m.add(&[0.1, 0.2, 0.7], 1);
        let names = ["copepod".to_string(), "diatom".into(), "salp".into()];
        let svg = confusion_svg(&m, &names, "t").unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for name in &names {
            assert_eq!(svg.matches(&format!("\n{name}\n")).count(), 2, "{name}");
        }
        assert!(svg.contains("\n2\n") && svg.contains("\n1\n"));
        // The full cells (a row's whole share) are the darkest blue.
        assert_eq!(svg.matches("fill=\"#08306B\"").count(), 2, "{svg}");
        // Many classes: small cells, no labels, still a picture.
        let big = Confusion::new(121, 1);
        let svg = confusion_svg(&big, &[], "plankton").unwrap();
        assert!(!svg.contains("\n120\n"));
        assert!(confusion_svg(&Confusion::new(0, 1), &[], "none").is_err());
        // Markup in a class name is escaped.
        let odd = ["a&b<c>".to_string(), "d".into(), "e".into()];
        let svg = confusion_svg(&m, &odd, "t").unwrap();
        assert!(
            !svg.contains("a&b<c>") && svg.contains("a&amp;b&lt;c&gt;"),
            "{svg}"
        );
    }

    use super::*;

    const RECORDS: &str = concat!(
        r#"{"phase":"test","iter":0,"net":0,"elapsed_s":0.1,"outputs":{"accuracy":0.25,"loss":1.4}}"#,
        "\n",
        r#"{"phase":"train","iter":0,"loss":1.5,"smoothed_loss":1.5,"lr":0.01,"elapsed_s":0.2,"outputs":{"loss":1.5}}"#,
        "\n",
        r#"{"phase":"train","iter":1,"loss":1.3,"smoothed_loss":1.4,"lr":0.01,"elapsed_s":0.3,"outputs":{"loss":1.3}}"#,
        "\n",
        "\n",
        // A resumed run repeats iteration 1: the later record counts.
        r#"{"phase":"train","iter":1,"loss":1.2,"smoothed_loss":1.35,"lr":0.001,"elapsed_s":0.1,"outputs":{"loss":1.2}}"#,
        "\n",
        r#"{"phase":"test","iter":2,"net":0,"elapsed_s":0.4,"outputs":{"accuracy":0.5,"loss":1.1}}"#,
        "\n",
        r#"{"phase":"train","iter":2,"loss":1.0,"smoo"#,
    );

    #[test]
    fn later_records_win_and_a_torn_last_line_is_left_out() {
        let m = parse_metrics(RECORDS, Path::new("m.jsonl")).unwrap();
        assert_eq!(m.train.len(), 2);
        assert_eq!(
            m.train[&1],
            TrainPoint {
                loss: 1.2,
                smoothed: 1.35,
                lr: 0.001
            }
        );
        let acc = &m.tests[&(0, "accuracy".to_string())];
        assert_eq!(
            acc.iter().map(|(&i, &v)| (i, v)).collect::<Vec<_>>(),
            [(0, 0.25), (2, 0.5)]
        );
        assert_eq!(m.tests.len(), 2);
    }

    #[test]
    fn a_bad_line_is_named() {
        let text = RECORDS.replacen("\"iter\":1,", "\"iter\":\"one\",", 1);
        let err = parse_metrics(&text, Path::new("m.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.jsonl") && err.contains('3') && err.contains("iter"),
            "{err}"
        );
        let text = RECORDS.replacen(
            "{\"phase\":\"train\",\"iter\":0",
            "{\"phase\":\"train\" \"iter\":0",
            1,
        );
        let err = parse_metrics(&text, Path::new("m.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") || err.contains(":2"), "{err}");
        let text = RECORDS.replacen("\"smoothed_loss\":1.5,", "", 1);
        let err = parse_metrics(&text, Path::new("m.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("smoothed_loss"), "{err}");
    }

    #[test]
    fn svg_has_a_panel_per_kind_and_a_legend_entry_per_series() {
        let m = parse_metrics(RECORDS, Path::new("m.jsonl")).unwrap();
        let svg = plot_svg(&[("m".into(), m.clone())], "tiny").unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for label in [
            "train loss (smoothed)",
            "test loss (net 0)",
            "test accuracy (net 0)",
            "learning rate",
            "test outputs",
        ] {
            assert!(svg.contains(label), "{label}");
        }
        // Without test outputs other than losses, two panels.
        let mut no_scores = m.clone();
        no_scores.tests.retain(|(_, n), _| n == "loss");
        let svg = plot_svg(&[("m".into(), no_scores)], "tiny").unwrap();
        assert!(!svg.contains("test outputs"));
        assert!(plot_svg(&[("x".into(), Metrics::default())], "x").is_err());
        assert!(plot_svg(&[], "x").is_err());
        // Several runs: each series named after its run, no per-iteration loss.
        let two = [("a".to_string(), m.clone()), ("b".to_string(), m)];
        let svg = plot_svg(&two, "a vs b").unwrap();
        for label in [
            "a: train loss (smoothed)",
            "b: test accuracy (net 0)",
            "b: learning rate",
        ] {
            assert!(svg.contains(label), "{label}");
        }
        assert!(!svg.contains(">train loss<"));
    }

    #[test]
    fn csv_tables_leave_unknown_values_empty() {
        let mut m = Metrics::default();
        let p = |loss, lr| TrainPoint {
            loss,
            smoothed: loss,
            lr,
        };
        m.train.insert(0, p(2.5, 0.1));
        m.train.insert(7, p(1.25, f64::NAN));
        let test = |net: u64, name: &str, at: &[(u64, f64)]| {
            (
                (net, name.to_string()),
                at.iter().copied().collect::<BTreeMap<_, _>>(),
            )
        };
        m.tests.extend([
            test(0, "acc", &[(0, 0.5), (7, 0.75)]),
            test(1, "a,b", &[(7, 1.0)]),
        ]);
        let (train, tests) = to_csv(&m);
        assert_eq!(
            train,
            "iteration,loss,smoothed_loss,lr\n0,2.5,2.5,0.1\n7,1.25,1.25,\n"
        );
        assert_eq!(
            tests,
            "iteration,net,\"a,b\",acc\n0,0,,0.5\n7,0,,0.75\n7,1,1,\n"
        );
    }

    #[test]
    fn spans_pad_flat_and_skip_non_finite_values() {
        assert_eq!(span([2.0, f64::NAN].into_iter()), Some((1.8, 2.2)));
        assert_eq!(span([f64::INFINITY].into_iter()), None);
        assert_eq!(
            log_span([1e-2, 1e-4, 0.0, -1.0].into_iter()),
            Some((1e-4 / 1.5, 1.5e-2))
        );
        assert_eq!(log_span([0.0].into_iter()), None);
        let (lo, hi) = span([0.0, 10.0].into_iter()).unwrap();
        assert!((lo + 0.5).abs() < 1e-12 && (hi - 10.5).abs() < 1e-12);
    }

    #[test]
    fn the_abstention_curve_marks_the_report_thresholds() {
        // 0.95 right, 0.9 right, 0.8 wrong, 0.65 right, 0.4 wrong.
        let images = [
            (0.95, true),
            (0.9, true),
            (0.8, false),
            (0.65, true),
            (0.4, false),
        ];
        let svg = abstention_svg(&images, "abstaining").unwrap();
        assert!(svg.contains("abstaining") && svg.contains("accuracy on them"));
        // Thresholds that keep an image are marked (0.99 keeps none); 0.6
        // keeps what 0.5 keeps and 0.8 what 0.7 keeps, at the same places,
        // so only the first of each is labelled.
        for t in ["p ≥ 0.5", "p ≥ 0.7", "p ≥ 0.9", "p ≥ 0.95"] {
            assert!(svg.contains(t), "{t}");
        }
        for t in ["p ≥ 0.6", "p ≥ 0.8", "p ≥ 0.99"] {
            assert!(!svg.contains(t), "{t}");
        }
        assert!(abstention_svg(&[], "none").is_err());
    }
}
