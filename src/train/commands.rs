//! The library side of `test` and `time` (Caffe's `caffe test` / `caffe time`).
use super::compute::Compute;
use super::layers::BuildContext;
use super::net::Net;
use super::sgd::{sgd_update, SgdConfig};
use crate::caffe::model::{read_caffemodel, read_net_prototxt};
use crate::caffe::net_state::StateFlags;
use crate::caffe::proto::{BlobShape, InputParameter, LayerParameter, NetParameter, Phase};
use crate::error::{Error, Result};
use std::path::Path;
use std::time::{Duration, Instant};

/// Replaces every Data/ImageData layer by an `Input` layer of the shape it
/// would produce (batch x channels x crop or new size), so a net can be
/// timed without its data.
pub fn synthetic_inputs(def: &mut NetParameter) -> Result<()> {
    for l in &mut def.layer {
        let (batch, color, h, w) = match l.r#type() {
            "Data" => {
                let d = l.data_param.clone().unwrap_or_default();
                (d.batch_size(), true, 256, 256)
            }
            "ImageData" => {
                let d = l.image_data_param.clone().unwrap_or_default();
                let (h, w) = (d.new_height(), d.new_width());
                (
                    d.batch_size(),
                    d.is_color(),
                    if h > 0 { h } else { 256 },
                    if w > 0 { w } else { 256 },
                )
            }
            _ => continue,
        };
        let crop = l.transform_param.as_ref().map_or(0, |t| t.crop_size());
        let (h, w) = if crop > 0 { (crop, crop) } else { (h, w) };
        let c = if color { 3 } else { 1 };
        *l = input_layer(l, [batch as usize, c, h as usize, w as usize]);
    }
    Ok(())
}

/// An `Input` layer in place of the data layer `data`: its name, tops and
/// phase rules, images of `image` shape (batch x channels x height x width)
/// and, when it has a second top, that many labels.
pub(crate) fn input_layer(data: &LayerParameter, image: [usize; 4]) -> LayerParameter {
    let shape = |dims: &[usize]| BlobShape {
        dim: dims.iter().map(|&d| d as i64).collect(),
    };
    let mut shapes = vec![shape(&image)];
    if data.top.len() > 1 {
        shapes.push(shape(&image[..1]));
    }
    LayerParameter {
        name: data.name.clone(),
        r#type: Some("Input".into()),
        top: data.top.clone(),
        include: data.include.clone(),
        exclude: data.exclude.clone(),
        input_param: Some(InputParameter { shape: shapes }),
        ..Default::default()
    }
}

/// Where a net's relative data paths resolve: the current folder, as in
/// Caffe, unless they only exist beside the prototxt.
pub fn base_dir_for(model: &Path) -> std::path::PathBuf {
    let here = std::path::PathBuf::from(".");
    let Ok(def) = read_net_prototxt(model) else {
        return here;
    };
    let beside = crate::fsutil::parent_dir(model);
    let sources: Vec<String> = def
        .layer
        .iter()
        .filter_map(|l| {
            l.data_param
                .as_ref()
                .and_then(|p| p.source.clone())
                .or_else(|| l.image_data_param.as_ref().and_then(|p| p.source.clone()))
                .or_else(|| l.hdf5_data_param.as_ref().and_then(|p| p.source.clone()))
        })
        .collect();
    let found = |base: &Path| !sources.is_empty() && sources.iter().all(|s| base.join(s).exists());
    if !found(&here) && found(&beside) {
        beside
    } else {
        here
    }
}

/// `caffe test`: mean of every output over `iterations` TEST batches.
pub fn test(
    model: &Path,
    weights: &[&Path],
    iterations: usize,
    state: &StateFlags,
    base_dir: &Path,
    compute: &Compute,
) -> Result<Vec<(String, f32, f32)>> {
    let mut def = read_net_prototxt(model)?;
    state.apply(&mut def);
    let mut log = crate::train::log::Logger::new(true);
    let ctx = BuildContext::new(base_dir, 0, Phase::Test, compute);
    let mut net = Net::new_logged(&def, &ctx, None, &mut log)?;
    for w in weights {
        net.copy_trained_from(&read_caffemodel(w)?, &w.display().to_string())?;
    }
    // The net's own `debug_info: true` prints its per-layer lines on every
    // pass, as `caffe test` does.
    net.set_debug_info(def.debug_info());
    let mut sums: Vec<(String, f32, f32)> = Vec::new();
    for i in 0..iterations.max(1) {
        net.forward()?;
        for (level, line) in net.take_debug_info() {
            log.at(level, "net.cpp:593", &line);
        }
        let mut k = 0;
        for (name, values, weight) in net.outputs()? {
            for v in values {
                if i == 0 {
                    sums.push((name.clone(), v, weight));
                } else {
                    sums[k].1 += v;
                }
                k += 1;
            }
        }
    }
    let n = iterations.max(1) as f32;
    Ok(sums
        .into_iter()
        .map(|(name, s, w)| (name, s / n, w))
        .collect())
}

/// Per-layer timing from [`time`].
pub struct TimeReport {
    /// (layer, type, mean forward, mean backward).
    pub layers: Vec<(String, String, Duration, Duration)>,
    /// Mean forward pass.
    pub forward: Duration,
    /// Mean backward pass.
    pub backward: Duration,
    /// Mean SGD update (momentum 0.9, weight decay 5e-4, as in the recipe).
    pub update: Duration,
    /// Iterations timed.
    pub iterations: usize,
    /// The net's phase: TRAIN times the training step, TEST the forward
    /// pass alone (what `test`, `evaluate`, `features` and `classify` run).
    pub phase: Phase,
    /// Items a pass takes: the first dimension of the first layer's first
    /// top (the data layer's batch), when the net has one.
    pub batch: Option<usize>,
}

impl TimeReport {
    /// `caffe time`'s report: a Markdown table of each layer's mean forward
    /// (and in TRAIN, backward) milliseconds, then the averages, with the
    /// images a second that the batch gives (`threads`: the CPU threads).
    pub fn to_markdown(&self, threads: usize) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let rate = |d: Duration| {
            self.batch.map_or(String::new(), |b| {
                format!(", batch {b}: {:.1} images/s", b as f64 / d.as_secs_f64())
            })
        };
        let count = |n: usize, what: &str| match n {
            1 => format!("1 {what}"),
            n => format!("{n} {what}s"),
        };
        let (iterations, threads) = (
            count(self.iterations, "iteration"),
            count(threads, "thread"),
        );
        let mut s = String::new();
        if self.phase == Phase::Test {
            s += "| layer | type | forward ms |\n|---|---|---|\n";
            for (name, ty, f, _) in &self.layers {
                s += &format!("| {name} | {ty} | {:.2} |\n", ms(*f));
            }
            s += &format!(
                "Average Forward pass (TEST phase): {:.1} ms ({iterations}, {threads}{}).\n",
                ms(self.forward),
                rate(self.forward)
            );
            return s;
        }
        s += "| layer | type | forward ms | backward ms |\n|---|---|---|---|\n";
        for (name, ty, f, b) in &self.layers {
            s += &format!("| {name} | {ty} | {:.2} | {:.2} |\n", ms(*f), ms(*b));
        }
        let step = self.forward + self.backward + self.update;
        s += &format!("Average Forward pass: {:.1} ms.\n", ms(self.forward));
        s += &format!("Average Backward pass: {:.1} ms.\n", ms(self.backward));
        s += &format!(
            "Average Forward-Backward: {:.1} ms.\n",
            ms(self.forward + self.backward)
        );
        s += &format!("Average SGD update: {:.1} ms.\n", ms(self.update));
        s += &format!(
            "Average training step (forward, backward, update): {:.1} ms ({iterations}, {threads}{}).\n",
            ms(step),
            rate(step)
        );
        s
    }
}

/// `caffe time`: forward + backward `iterations` times in TRAIN phase after
/// one warm-up pass, or the forward pass alone in TEST phase (Caffe's
/// `-phase TEST`, whose backward no command runs); `synthetic` swaps data
/// layers for inputs of their shape.
pub fn time(
    model: &Path,
    iterations: usize,
    synthetic: bool,
    phase: Phase,
    state: &StateFlags,
    base_dir: &Path,
    compute: &Compute,
) -> Result<TimeReport> {
    let mut def = read_net_prototxt(model)?;
    state.apply(&mut def);
    if synthetic {
        synthetic_inputs(&mut def)?;
    }
    let ctx = BuildContext::new(base_dir, 0, phase, compute);
    let mut net = Net::new_logged(&def, &ctx, None, &mut crate::train::log::Logger::new(true))?;
    let train = phase == Phase::Train;
    net.forward()?;
    if train {
        net.backward()?;
    }
    net.enable_timing();
    let iterations = iterations.max(1);
    let (mut fwd, mut bwd, mut upd) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut history = (0..net.params().len())
        .map(|i| Ok(net.param(i).zeros_like()?))
        .collect::<Result<Vec<_>>>()?;
    let cfg = SgdConfig {
        rule: super::sgd::adaptive::Rule::Sgd,
        iter: 0,
        momentum: 0.9,
        weight_decay: 5e-4,
        l1: false,
        iter_size: 1,
        clip_gradients: -1.0,
    };
    // A GPU queues work: wait for it before reading each clock.
    let sync = || compute.device.synchronize();
    for _ in 0..iterations {
        net.clear_grads();
        sync()?;
        let t = Instant::now();
        net.forward()?;
        sync()?;
        fwd += t.elapsed();
        if !train {
            continue;
        }
        let t = Instant::now();
        net.backward()?;
        sync()?;
        bwd += t.elapsed();
        let t = Instant::now();
        sgd_update(&mut net, &mut history, 1e-3, &cfg)?;
        sync()?;
        upd += t.elapsed();
    }
    let n = iterations as u32;
    let layers = net
        .timings()
        .into_iter()
        .map(|(l, ty, f, b)| (l, ty, f / n, b / n))
        .collect();
    if fwd.is_zero() {
        return Err(Error::model(
            model.display(),
            "timing produced no measurement",
        ));
    }
    let batch = net
        .layer_params()
        .next()
        .and_then(|l| net.layer_top(l.name(), 0))
        .and_then(|t| t.dims().first().copied());
    Ok(TimeReport {
        layers,
        forward: fwd / n,
        backward: bwd / n,
        update: upd / n,
        iterations,
        phase,
        batch,
    })
}
