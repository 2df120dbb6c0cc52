//! What a fine-tuning run will do, before it does it (`finetune --dry-run`):
//! each layer's top shapes, parameters, learning-rate multipliers and where
//! its first values come from (a weights file, matched by layer name, or its
//! filler), the schedule in passes over the data, how much of each test set
//! a test phase sees, and the classic mistakes of a recipe: a frozen layer
//! left at its random filler, weights files none of whose layers match.
use super::lr_policy::learning_rate;
use super::net::{LayerInfo, Net};
use crate::caffe::proto::{FillerParameter, LayerParameter, SolverParameter};
use crate::error::Result;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Where a net's learnable layers got their first values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightSources {
    /// Layer name → the weights file its values were copied from (the last
    /// file given that has the layer, as later files overwrite earlier ones).
    pub copied: BTreeMap<String, String>,
    /// Per weights file, its layers that the net lacks (Caffe's "Ignoring
    /// source layer"): a renamed classifier's old name, or a sign of the
    /// wrong file.
    pub ignored: Vec<(String, Vec<String>)>,
}

impl WeightSources {
    /// Records that the layers of weights file `file` were copied into a
    /// net, except `ignored` (of which only those with values are kept:
    /// Caffe's own Split layers have none).
    pub fn record(&mut self, file: &str, weights: &[LayerParameter], ignored: Vec<String>) {
        let mut unused = Vec::new();
        for l in weights.iter().filter(|l| !l.blobs.is_empty()) {
            if ignored.iter().any(|n| n == l.name()) {
                unused.push(l.name().to_string());
            } else {
                self.copied.insert(l.name().to_string(), file.to_string());
            }
        }
        self.ignored.push((file.to_string(), unused));
    }
}

/// Where one layer's parameters start.
#[derive(Clone, Debug, PartialEq)]
pub enum Start {
    /// It has no parameters.
    None,
    /// Copied from this weights file.
    Copied(String),
    /// Drawn from its fillers (described).
    Filler(String),
}

/// One layer of the summary.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerRow {
    /// Layer name.
    pub name: String,
    /// Caffe's type name.
    pub type_name: String,
    /// Shapes of its tops.
    pub tops: Vec<Vec<usize>>,
    /// Per top: whether a Filter decides its number of items (the shape
    /// is then the most it holds).
    pub filtered: Vec<bool>,
    /// Learnable values of its own (not counting the blobs it shares).
    pub params: usize,
    /// Per learnable blob, its lr_mult.
    pub lr_mults: Vec<f32>,
    /// The blobs it shares with earlier layers, e.g. `weights of 'fc7'`.
    pub shares: Vec<String>,
    /// Where the parameters start.
    pub start: Start,
    /// Whether it runs backward.
    pub backward: bool,
}

impl LayerRow {
    /// Whether its blobs are BatchNorm's running statistics, which the
    /// forward pass accumulates rather than a gradient step (Caffe fixes
    /// their lr_mult at 0).
    pub fn statistics(&self) -> bool {
        self.params > 0 && self.type_name == "BatchNorm"
    }

    /// Whether none of its learnable parameters learns (it has some, all at
    /// lr_mult 0).
    pub fn frozen(&self) -> bool {
        self.params > 0 && !self.statistics() && self.lr_mults.iter().all(|&m| m == 0.0)
    }
}

/// A filler as the prototxt would say it, e.g. `gaussian std 0.01`.
fn filler(f: &FillerParameter) -> String {
    match f.r#type() {
        "gaussian" => format!("gaussian std {}", f.std()),
        "constant" => format!("constant {}", f.value()),
        "uniform" => format!("uniform [{}, {}]", f.min(), f.max()),
        other => other.to_string(),
    }
}

/// The fillers a layer's parameters start from, as far as its definition
/// names them (the weight and bias fillers of the layer types that have
/// them; others start as their type prescribes).
fn fillers(p: &LayerParameter) -> String {
    // An unset filler is Caffe's default, constant 0.
    let named = |w: Option<&FillerParameter>, bias: bool, b: Option<&FillerParameter>| {
        let d = FillerParameter::default();
        let mut s = format!("weights {}", filler(w.unwrap_or(&d)));
        if bias {
            s += &format!(", bias {}", filler(b.unwrap_or(&d)));
        }
        s
    };
    if let Some(c) = &p.convolution_param {
        return named(
            c.weight_filler.as_ref(),
            c.bias_term(),
            c.bias_filler.as_ref(),
        );
    }
    if let Some(ip) = &p.inner_product_param {
        return named(
            ip.weight_filler.as_ref(),
            ip.bias_term(),
            ip.bias_filler.as_ref(),
        );
    }
    if let Some(e) = &p.embed_param {
        return named(
            e.weight_filler.as_ref(),
            e.bias_term(),
            e.bias_filler.as_ref(),
        );
    }
    if let Some(r) = &p.recurrent_param {
        // Every weight matrix from one filler, every bias from the other.
        return named(r.weight_filler.as_ref(), true, r.bias_filler.as_ref());
    }
    if p.r#type() == "Parameter" {
        // Caffe never fills a Parameter layer's blob.
        return "zeros".into();
    }
    "its type's defaults".into()
}

/// The rows of `net`, with where `sources` says its parameters start.
pub fn layer_rows(net: &Net, sources: &WeightSources) -> Vec<LayerRow> {
    net.layer_infos()
        .into_iter()
        .map(|l: LayerInfo| {
            let name = l.param.name().to_string();
            let params = l
                .param_shapes
                .iter()
                .zip(&l.shared_from)
                .filter(|(_, from)| from.is_none())
                .map(|(s, _)| s.iter().product::<usize>())
                .sum();
            let shares = l
                .shared_from
                .iter()
                .enumerate()
                .filter_map(|(i, from)| {
                    let (layer, blob) = from.as_ref()?;
                    let what = |b: usize| match b {
                        0 => "weights".to_string(),
                        1 => "bias".to_string(),
                        b => format!("blob {b}"),
                    };
                    Some(if i == *blob {
                        format!("{} of '{layer}'", what(i))
                    } else {
                        format!("{} as the {} of '{layer}'", what(i), what(*blob))
                    })
                })
                .collect();
            let start = match (params, sources.copied.get(&name)) {
                (0, _) => Start::None,
                (_, Some(file)) => Start::Copied(file.clone()),
                (_, None) => Start::Filler(fillers(l.param)),
            };
            LayerRow {
                name,
                type_name: l.type_name.to_string(),
                tops: l.tops,
                filtered: l.filtered,
                params,
                lr_mults: l.mults.iter().map(|m| m.0).collect(),
                shares,
                start,
                backward: l.backward,
            }
        })
        .collect()
}

/// The mistakes a recipe's rows show: a frozen layer that starts from its
/// filler (it stays random), and weights files of which no layer was used.
pub fn warnings(rows: &[LayerRow], sources: &WeightSources) -> Vec<String> {
    let mut out = Vec::new();
    for r in rows {
        if r.frozen() && matches!(r.start, Start::Filler(_)) {
            out.push(format!(
                "layer '{}' has lr_mult 0 but no weights file has a layer of that name: it \
                 stays at its random filler values for the whole run",
                r.name
            ));
        }
    }
    for (file, _) in &sources.ignored {
        if !sources.copied.values().any(|f| f == file) {
            out.push(format!(
                "no layer of {file} matches a layer of the net by name: nothing was copied \
                 from it (is it the weights of another net?)"
            ));
        }
    }
    out
}

/// A net with `force_backward: true` and frozen layers computes their
/// gradients every step, as Caffe does, though nothing uses them.
pub fn force_backward_warning(net: &Net, rows: &[LayerRow]) -> Option<String> {
    let frozen = rows.iter().filter(|r| r.frozen()).count();
    (net.forces_backward() && frozen > 0).then(|| {
        format!(
            "the net says force_backward: true, so its {frozen} frozen layer(s) compute gradients \
             every step that nothing uses (as in Caffe): training is slower; remove it unless \
             something reads those gradients"
        )
    })
}

/// `12,345,678`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The rows as a Markdown table, then the parameter totals.
pub fn to_markdown(rows: &[LayerRow]) -> String {
    let mut s = String::from(
        "| layer | type | top shape | parameters | lr_mult | starts from | backward |\n\
         |---|---|---|---:|---|---|---|\n",
    );
    for r in rows {
        let tops = r
            .tops
            .iter()
            .zip(r.filtered.iter().chain(std::iter::repeat(&false)))
            .map(|(t, &filtered)| match t.len() {
                // A scalar (a loss, an accuracy).
                0 => "1".to_string(),
                _ => {
                    let most = if filtered { "≤" } else { "" };
                    let dims = t.iter().map(usize::to_string).collect::<Vec<_>>();
                    format!("{most}{}", dims.join("x"))
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let m = r.lr_mults.iter().map(|m| m.to_string()).collect::<Vec<_>>();
        let (params, mults) = match (r.params, r.shares.is_empty()) {
            (0, true) => (String::new(), String::new()),
            // Only shared blobs: the lr_mults the solver gives them.
            (0, false) => (String::new(), m.join(", ")),
            (n, _) => {
                let note = match (r.frozen(), r.statistics()) {
                    (true, _) => " (frozen)",
                    (_, true) => " (running statistics)",
                    _ => "",
                };
                (thousands(n), format!("{}{note}", m.join(", ")))
            }
        };
        let mut start = match &r.start {
            Start::None => String::new(),
            Start::Copied(f) => f.clone(),
            Start::Filler(f) => format!("filler: {f}"),
        };
        if !r.shares.is_empty() {
            let sep = if start.is_empty() { "" } else { "; " };
            start = format!("{start}{sep}shares the {}", r.shares.join(", the "));
        }
        let back = if r.backward { "yes" } else { "no" };
        let _ = writeln!(
            s,
            "| {} | {} | {tops} | {params} | {mults} | {start} | {back} |",
            r.name, r.type_name
        );
    }
    if rows.iter().any(|r| r.filtered.contains(&true)) {
        s.push_str(
            "\n≤: a Filter keeps some of the batch's items each pass (at most this many).\n",
        );
    }
    let total: usize = rows.iter().map(|r| r.params).sum();
    let sum = |keep: fn(&LayerRow) -> bool| -> usize {
        rows.iter().filter(|r| keep(r)).map(|r| r.params).sum()
    };
    let (frozen, statistics) = (sum(LayerRow::frozen), sum(LayerRow::statistics));
    let copied: usize = rows
        .iter()
        .filter(|r| matches!(r.start, Start::Copied(_)))
        .map(|r| r.params)
        .sum();
    let statistics = match statistics {
        0 => String::new(),
        n => format!(", {} BatchNorm statistics", thousands(n)),
    };
    let _ = writeln!(
        s,
        "\n{} parameters: {} learn, {} frozen (lr_mult 0){statistics}; {} copied from weights \
         files, {} from fillers.",
        thousands(total),
        thousands(total - frozen - sum(LayerRow::statistics)),
        thousands(frozen),
        thousands(copied),
        thousands(total - copied)
    );
    s
}

/// Images a net reads per forward pass: its first data layer's batch.
fn batch_of(rows: &[LayerRow]) -> Option<usize> {
    rows.iter()
        .find(|r| r.type_name.ends_with("Data") || r.type_name == "Input")
        .and_then(|r| r.tops.first()?.first().copied())
}

/// The learning rate over `max_iter` iterations: where it steps (fixed,
/// step and multistep policies; the first eight steps), or at five points
/// for a policy that changes it every iteration.
fn schedule(param: &SolverParameter, max_iter: usize) -> Result<String> {
    let last = max_iter.saturating_sub(1);
    let stepsize = param.stepsize().max(0) as usize;
    let (points, stepwise): (Vec<usize>, bool) = match param.lr_policy() {
        "fixed" => (vec![0], true),
        "step" if stepsize > 0 => ((0..=last).step_by(stepsize).take(9).collect(), true),
        "multistep" => {
            let steps = param.stepvalue.iter().map(|&v| v.max(0) as usize);
            (
                std::iter::once(0)
                    .chain(steps.filter(|&v| v <= last))
                    .collect(),
                true,
            )
        }
        _ => (
            vec![0, max_iter / 4, max_iter / 2, 3 * max_iter / 4, last],
            false,
        ),
    };
    let more = stepwise && points.len() > 8;
    // In iteration order: multistep advances its step state call by call.
    let mut step = 0;
    let mut shown: Vec<String> = Vec::new();
    let mut previous = None;
    for &it in points.iter().take(8) {
        let lr = learning_rate(param, it, &mut step)?;
        if stepwise && previous == Some(lr) {
            continue;
        }
        previous = Some(lr);
        let at = if stepwise { "from" } else { "at" };
        shown.push(format!("{} {at} iteration {it}", super::log::g(lr)));
    }
    if more {
        shown.push(format!(
            "then x{} every {stepsize} iterations",
            super::log::g(param.gamma())
        ));
    }
    Ok(shown.join(", "))
}

/// How a test phase of `iters` batches of `batch` covers `images`.
fn coverage(iters: usize, batch: usize, images: usize) -> String {
    let seen = iters * batch;
    let needed = images.div_ceil(batch.max(1));
    let advice = if needed * batch == images {
        format!("test_iter {needed} scores each image once")
    } else {
        // No test_iter fits exactly: Caffe's test phases wrap around, so
        // the smallest cover repeats the start of the data.
        format!(
            "test_iter {needed} scores every image, {} of them twice; `evaluate` scores each once",
            needed * batch - images
        )
    };
    let fix = format!("test_iter {iters} x batch_size {batch} = {seen}; {advice}");
    match seen.cmp(&images) {
        std::cmp::Ordering::Equal => format!("each of its {images} images once"),
        std::cmp::Ordering::Less => format!("{seen} of its {images} images ({fix})"),
        std::cmp::Ordering::Greater => format!(
            "its {images} images {:.2} times over ({fix})",
            seen as f64 / images.max(1) as f64
        ),
    }
}

/// The dry-run report of a solver about to train (from `start_iter`, when
/// resumed): the train net's table, the weights files' unused layers, the
/// schedule in passes over the training data, each test phase's coverage,
/// the nets' memory floor and the warnings.
pub fn report(
    param: &SolverParameter,
    start_iter: usize,
    train: &Net,
    tests: &[Net],
    sources: &WeightSources,
) -> Result<String> {
    let rows = layer_rows(train, sources);
    let mut s = format!("Train net '{}':\n\n{}", train.name, to_markdown(&rows));
    for (file, ignored) in &sources.ignored {
        if !ignored.is_empty() {
            let _ = writeln!(
                s,
                "{file}: its layers {} are not in the net (not used).",
                ignored.join(", ")
            );
        }
    }
    let max_iter = param.max_iter().max(0) as usize;
    let iter_size = param.iter_size().max(1) as usize;
    let _ = write!(s, "\nSchedule: {max_iter} iterations");
    // A resumed run trains what is left.
    let to_go = max_iter.saturating_sub(start_iter);
    if start_iter > 0 {
        let _ = write!(s, " (resuming at {start_iter}: {to_go} to go)");
    }
    if let Some(batch) = batch_of(&rows) {
        let per = batch * iter_size;
        let _ = write!(s, " of {per} images");
        if iter_size > 1 {
            let _ = write!(s, " ({iter_size} batches of {batch})");
        }
        if let Some((_, n)) = train.data_source_lens().first() {
            let _ = write!(
                s,
                " = {:.1} passes over the {n} training images",
                (to_go * per) as f64 / (*n).max(1) as f64
            );
            if per < *n {
                let _ = write!(s, " (one every {} iterations)", n.div_ceil(per));
            }
        }
    }
    let _ = writeln!(s, "; learning rate {}.", schedule(param, max_iter)?);
    let interval = param.test_interval().max(0) as usize;
    for (i, t) in tests.iter().enumerate() {
        let iters = param.test_iter.get(i).copied().unwrap_or(0).max(0) as usize;
        let when = if interval > 0 {
            format!("every {interval} iterations")
        } else {
            "never (test_interval 0)".into()
        };
        let _ = write!(s, "Test net #{i} ('{}'): {when}, {iters} batches", t.name);
        let rows = layer_rows(t, sources);
        if let (Some(batch), Some((_, n))) = (batch_of(&rows), t.data_source_lens().first()) {
            let _ = write!(s, " of {batch}, scoring {}", coverage(iters, batch, *n));
        }
        s.push_str(".\n");
    }
    let floor: u64 = std::iter::once(train)
        .chain(tests)
        .map(|n| n.memory_floor().0)
        .sum();
    let floor = match floor {
        f if f >= 1 << 30 => super::memory::gib(f),
        f => format!("{:.1} MiB", f as f64 / (1u64 << 20) as f64),
    };
    let _ = writeln!(
        s,
        "Memory floor of the nets: {floor} (blobs, parameters with their gradients and history, layer buffers)."
    );
    let mut warnings = warnings(&rows, sources);
    warnings.extend(force_backward_warning(train, &rows));
    if !warnings.is_empty() {
        s.push_str("\nWarnings:\n");
        for w in warnings {
            let _ = writeln!(s, "- {w}");
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, params: usize, lr: &[f32], start: Start) -> LayerRow {
        LayerRow {
            name: name.into(),
            type_name: "InnerProduct".into(),
            tops: vec![vec![2, 3]],
            filtered: vec![false],
            params,
            lr_mults: lr.to_vec(),
            shares: Vec::new(),
            start,
            backward: true,
        }
    }

    #[test]
    fn test_coverage_says_what_a_test_phase_scores() {
        assert_eq!(coverage(3, 8, 24), "each of its 24 images once");
        assert_eq!(
            coverage(100, 50, 16000),
            "5000 of its 16000 images (test_iter 100 x batch_size 50 = 5000; test_iter 320 \
             scores each image once)"
        );
        assert_eq!(
            coverage(20, 100, 19998),
            "2000 of its 19998 images (test_iter 20 x batch_size 100 = 2000; test_iter 200 \
             scores every image, 2 of them twice; `evaluate` scores each once)"
        );
        assert!(coverage(4, 8, 24).starts_with("its 24 images 1.33 times over (test_iter 4"));
    }

    #[test]
    fn the_schedule_names_the_steps_or_samples_a_smooth_policy() {
        let solver = |text: &str| -> SolverParameter {
            crate::caffe::prototxt::parse(text, std::path::Path::new("s.prototxt")).unwrap()
        };
        let step = solver("base_lr: 0.01 lr_policy: \"step\" gamma: 0.1 stepsize: 10");
        assert_eq!(
            schedule(&step, 30).unwrap(),
            "0.01 from iteration 0, 0.001 from iteration 10, 0.0001 from iteration 20"
        );
        assert!(schedule(&step, 1000)
            .unwrap()
            .ends_with("1e-09 from iteration 70, then x0.1 every 10 iterations"));
        let multi =
            solver("base_lr: 1 lr_policy: \"multistep\" gamma: 0.5 stepvalue: 5 stepvalue: 50");
        assert_eq!(
            schedule(&multi, 20).unwrap(),
            "1 from iteration 0, 0.5 from iteration 5"
        );
        let fixed = solver("base_lr: 0.1 lr_policy: \"fixed\"");
        // No iteration-by-iteration walk, however long the run.
        assert_eq!(
            schedule(&fixed, 2_000_000_000).unwrap(),
            "0.1 from iteration 0"
        );
        let poly = solver("base_lr: 1 lr_policy: \"poly\" power: 1 max_iter: 100");
        assert_eq!(
            schedule(&poly, 100).unwrap(),
            "1 at iteration 0, 0.75 at iteration 25, 0.5 at iteration 50, 0.25 at iteration 75, \
             0.01 at iteration 99"
        );
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(56_866_848), "56,866,848");
    }

    #[test]
    fn a_frozen_filler_and_an_unused_file_are_warned_of() {
        let mut sources = WeightSources::default();
        let layer = |name: &str| LayerParameter {
            name: Some(name.into()),
            blobs: vec![Default::default()],
            ..Default::default()
        };
        sources.record(
            "a.caffemodel",
            &[layer("fc7"), layer("fc8")],
            vec!["fc8".into()],
        );
        sources.record("other.caffemodel", &[layer("x")], vec!["x".into()]);
        assert_eq!(sources.copied.len(), 1);
        assert_eq!(sources.copied["fc7"], "a.caffemodel");
        let rows = [
            row("fc7", 12, &[0.0, 0.0], Start::Copied("a.caffemodel".into())),
            row(
                "fc8_new",
                6,
                &[0.0, 0.0],
                Start::Filler("weights gaussian std 0.01".into()),
            ),
            row(
                "fc9",
                6,
                &[1.0, 2.0],
                Start::Filler("weights xavier".into()),
            ),
        ];
        // BatchNorm's statistics are not learned by gradient: no warning.
        let mut bn = row(
            "bn",
            9,
            &[0.0, 0.0, 0.0],
            Start::Filler("its type's defaults".into()),
        );
        bn.type_name = "BatchNorm".into();
        assert!(!bn.frozen() && bn.statistics());
        let w = warnings(&[bn.clone()], &WeightSources::default());
        assert!(w.is_empty(), "{w:?}");
        let table = to_markdown(&[bn]);
        assert!(
            table.contains("| 0, 0, 0 (running statistics) |"),
            "{table}"
        );
        assert!(
            table.contains(
                "9 parameters: 0 learn, 0 frozen (lr_mult 0), 9 BatchNorm statistics; 0 copied"
            ),
            "{table}"
        );
        let w = warnings(&rows, &sources);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("'fc8_new'") && w[0].contains("random"),
            "{w:?}"
        );
        assert!(w[1].contains("other.caffemodel"), "{w:?}");
        let table = to_markdown(&rows);
        assert!(
            table
                .contains("| fc7 | InnerProduct | 2x3 | 12 | 0, 0 (frozen) | a.caffemodel | yes |"),
            "{table}"
        );
        assert!(table.contains("24 parameters: 6 learn, 18 frozen (lr_mult 0); 12 copied from weights files, 12 from fillers."), "{table}");
    }
}
