//! Labelled images (from class folders or a manifest) into Caffe image
//! lists: every image decoded once to check it, a seeded split stratified
//! by class (or the split a manifest gives), optional re-sampling of the
//! training list for heavily imbalanced classes, and `train.txt`,
//! `test.txt` (`val.txt` when a manifest has one), `labels.txt` and
//! `samples.csv` (every image once: its list, original size and any columns
//! a manifest carries). The
//! held-out lists are never re-sampled, so their figures describe the data
//! as it is.
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_if_changed;
use crate::pipeline::decode::{decode, ColorMode};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How to check, split and re-sample.
#[derive(Clone, Debug)]
pub struct SplitOptions {
    /// Where the lists go.
    pub out: PathBuf,
    /// Share of each class held out for `test.txt` (each class keeps at
    /// least one training image); not used where a manifest gives the split.
    pub test_fraction: f64,
    /// Seed of the split and of any re-sampling.
    pub seed: u64,
    /// Decode every image (unreadable ones are skipped and reported).
    pub check: bool,
    /// Fail on the first unreadable image instead of skipping it.
    pub strict: bool,
    /// Repeat a class's training images (seeded order) until it has this many; 0: off.
    pub min_train_per_class: usize,
    /// Keep at most this many training images per class (seeded choice).
    pub max_train_per_class: Option<usize>,
    /// Tempered re-sampling of the training list: class c gets a share of
    /// lines proportional to n_c^alpha (1: as it is, 0: classes even, 0.5
    /// between), the total unchanged; applied before the caps above.
    pub balance_alpha: Option<f64>,
}

/// Which list an image belongs to, where the source says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Set {
    /// `train.txt`.
    Train,
    /// `val.txt`.
    Val,
    /// `test.txt`.
    Test,
}

/// Columns of the source carried into `samples.csv` beside each image (a
/// manifest's other columns: ZooProcess measurements, features), so that
/// what a resize discards stays next to the sample for `fuse`.
#[derive(Clone, Debug, Default)]
pub struct Carried {
    /// Column names, in the source's order.
    pub names: Vec<String>,
    /// Each image's values, by its path as in the lists.
    pub values: HashMap<PathBuf, Vec<String>>,
}

/// The columns `samples.csv` always has.
const SAMPLE_COLUMNS: [&str; 6] = ["path", "class", "label", "list", "width", "height"];

/// One class: its name and its images, each with the list the source put
/// it in (`None`: split here).
#[derive(Clone, Debug)]
pub struct Class {
    /// Name, written to `labels.txt`; the label is the class's index.
    pub name: String,
    /// Where this class's images came from, for messages.
    pub origin: String,
    /// Images and their assigned sets.
    pub images: Vec<(PathBuf, Option<Set>)>,
}

/// One class's counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassSplit {
    /// Class name.
    pub name: String,
    /// Usable images found.
    pub images: usize,
    /// Lines in `train.txt` (after any re-sampling).
    pub train: usize,
    /// Lines in `test.txt`.
    pub test: usize,
    /// Lines in `val.txt`.
    pub val: usize,
}

/// Decoded sizes of the checked images.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SizeStats {
    /// Smallest and largest width.
    pub width: (usize, usize),
    /// Smallest and largest height.
    pub height: (usize, usize),
    /// Images with one channel.
    pub gray: usize,
    /// Images with three or four channels.
    pub color: usize,
}

/// What an import found and wrote.
#[derive(Clone, Debug, Default)]
pub struct ImportSummary {
    /// Per class, in label order.
    pub classes: Vec<ClassSplit>,
    /// Images that failed to decode, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Entries passed over: files that are not images, hidden entries,
    /// files outside any class folder.
    pub ignored: usize,
    /// Image sizes (when checked).
    pub sizes: Option<SizeStats>,
}

impl SplitOptions {
    /// Refuses contradictory or out-of-range settings.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.test_fraction) {
            return Err(Error::invalid(
                "--test-fraction",
                format!("{} is not in [0, 1)", self.test_fraction),
            ));
        }
        if self
            .balance_alpha
            .is_some_and(|a| !(0.0..=1.0).contains(&a))
        {
            return Err(Error::invalid(
                "--balance-alpha",
                "must be between 0 (classes even) and 1 (as the data is)",
            ));
        }
        if let Some(max) = self.max_train_per_class {
            if max == 0 {
                return Err(Error::invalid(
                    "--max-train-per-class",
                    "must be at least 1",
                ));
            }
            if self.min_train_per_class > max {
                return Err(Error::invalid(
                    "--min-train-per-class",
                    format!(
                        "{} is above --max-train-per-class {max}",
                        self.min_train_per_class
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Decodes every image; drops the unreadable ones from `classes` (or fails,
/// with `strict`) and records them and the size range in `summary`.
/// Returns each readable image's (width, height).
fn check_images(
    classes: &mut [Class],
    strict: bool,
    summary: &mut ImportSummary,
) -> Result<HashMap<PathBuf, (usize, usize)>> {
    let all: Vec<&PathBuf> = classes
        .iter()
        .flat_map(|c| c.images.iter().map(|(p, _)| p))
        .collect();
    let bar = crate::progress::bar(all.len() as u64, "checking");
    let checked: Vec<std::result::Result<(usize, usize, usize), String>> = all
        .par_iter()
        .map(|p| {
            let r = std::fs::read(p)
                .map_err(|e| e.to_string())
                .and_then(|bytes| decode(&bytes, ColorMode::Native))
                .map(|m| (m.width, m.height, m.channels));
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    let mut bad = std::collections::HashSet::new();
    let mut sizes = HashMap::new();
    for (p, r) in all.iter().zip(checked) {
        match r {
            Ok((w, h, c)) => {
                sizes.insert((*p).clone(), (w, h));
                let s = summary.sizes.get_or_insert(SizeStats {
                    width: (w, w),
                    height: (h, h),
                    ..Default::default()
                });
                s.width = (s.width.0.min(w), s.width.1.max(w));
                s.height = (s.height.0.min(h), s.height.1.max(h));
                if c == 1 {
                    s.gray += 1;
                } else {
                    s.color += 1;
                }
            }
            Err(e) if strict => {
                return Err(Error::image(
                    p.as_path(),
                    format!("{e} (without --strict, unreadable images are skipped and listed)"),
                ))
            }
            Err(e) => {
                bad.insert((*p).clone());
                summary.skipped.push(((*p).clone(), e));
            }
        }
    }
    for c in classes.iter_mut() {
        c.images.retain(|(p, _)| !bad.contains(p));
    }
    Ok(sizes)
}

/// A seed for one class: the run's seed mixed with the class name, so adding
/// or removing another class leaves this class's split unchanged.
fn class_seed(seed: u64, name: &str) -> u64 {
    let h = Sha256::digest(name.as_bytes());
    seed ^ u64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
}

/// Held-out images of a class of `n`: the rounded share, leaving at least one
/// for training.
fn test_count(n: usize, fraction: f64) -> usize {
    ((n as f64 * fraction).round() as usize).min(n.saturating_sub(1))
}

/// Training lines per class from the classes' training images: tempered by
/// `balance_alpha` (class c gets a share proportional to n_c^alpha of the
/// same total: 1 keeps the data as it is, 0 evens the classes out), then
/// capped by `max_train_per_class` and raised to `min_train_per_class`.
/// Every class with images keeps at least one line.
fn train_targets(natural: &[usize], o: &SplitOptions) -> Vec<usize> {
    let total: usize = natural.iter().sum();
    let mut t: Vec<usize> = match o.balance_alpha {
        Some(alpha) => {
            let weights: Vec<f64> = natural.iter().map(|&n| (n as f64).powf(alpha)).collect();
            let sum: f64 = weights.iter().sum();
            weights
                .iter()
                .map(|w| ((total as f64 * w / sum).round() as usize).max(1))
                .collect()
        }
        None => natural.to_vec(),
    };
    for (t, &n) in t.iter_mut().zip(natural) {
        if let Some(max) = o.max_train_per_class {
            *t = (*t).min(max);
        }
        *t = (*t).max(o.min_train_per_class);
        if n == 0 {
            *t = 0;
        }
    }
    t
}

/// `target` training lines from `kept` (already in seeded order): its first
/// `target` images, or all of them and then repeats, each round in a fresh
/// seeded order, so every image appears as evenly as the count allows.
fn resample<'a>(kept: &[&'a PathBuf], target: usize, rng: &mut ChaCha8Rng) -> Vec<&'a PathBuf> {
    if kept.is_empty() {
        return Vec::new();
    }
    let mut picked: Vec<&PathBuf> = kept.iter().copied().take(target).collect();
    while picked.len() < target {
        let mut again = kept.to_vec();
        again.shuffle(rng);
        let extra = (target - picked.len()).min(again.len());
        picked.extend_from_slice(&again[..extra]);
    }
    picked
}

/// `path label\n`; the path must survive the list format (split at the last
/// space, one line).
fn list_line(p: &Path, label: usize) -> Result<String> {
    let s = crate::fsutil::list_path(p)
        .ok_or_else(|| Error::invalid(p.display(), "path is not valid UTF-8"))?;
    if s.contains('\n') || s.contains('\r') {
        return Err(Error::invalid(p.display(), "path contains a line break"));
    }
    Ok(format!("{s} {label}\n"))
}

/// Checks, splits and re-samples `classes` (labels are their indices) and
/// writes the lists into `o.out`. `summary` may already count ignored
/// entries.
pub fn write_lists(
    mut classes: Vec<Class>,
    o: &SplitOptions,
    mut summary: ImportSummary,
    carried: &Carried,
) -> Result<ImportSummary> {
    o.validate()?;
    let sizes = if o.check {
        check_images(&mut classes, o.strict, &mut summary)?
    } else {
        HashMap::new()
    };
    if let Some(c) = classes.iter().find(|c| c.images.is_empty()) {
        return Err(Error::invalid(
            &c.origin,
            format!(
                "class '{}' has no readable images; add some or leave the class out (labels follow the sorted class names)",
                c.name
            ),
        ));
    }
    // Each class's seeded order; held-out images (test, val) and training ones.
    let mut splits = Vec::new();
    for c in &classes {
        if c.name.contains('\n') || c.name.contains('\r') {
            return Err(Error::invalid(
                &c.origin,
                "class name contains a line break",
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(class_seed(o.seed, &c.name));
        let mut order: Vec<&(PathBuf, Option<Set>)> = c.images.iter().collect();
        order.shuffle(&mut rng);
        let given = |s: Set| -> Vec<&PathBuf> {
            order
                .iter()
                .filter(|(_, set)| *set == Some(s))
                .map(|(p, _)| p)
                .collect()
        };
        let (mut test, val, mut kept) = (given(Set::Test), given(Set::Val), given(Set::Train));
        let open: Vec<&PathBuf> = order
            .iter()
            .filter(|(_, set)| set.is_none())
            .map(|(p, _)| p)
            .collect();
        let held_out = test_count(open.len(), o.test_fraction);
        test.extend_from_slice(&open[..held_out]);
        kept.extend_from_slice(&open[held_out..]);
        splits.push((test, val, kept, rng));
    }
    let natural: Vec<usize> = splits.iter().map(|(_, _, kept, _)| kept.len()).collect();
    let targets = train_targets(&natural, o);
    let (mut train, mut test, mut val) = (Vec::new(), Vec::new(), Vec::new());
    let mut labels = String::new();
    // Every image once, with its list and size: the size a resize discards
    // is a feature worth keeping for plankton.
    let mut samples: Vec<(&PathBuf, &str, usize, &str)> = Vec::new();
    for (label, ((c, (held, held_val, kept, mut rng)), target)) in
        classes.iter().zip(splits).zip(targets).enumerate()
    {
        let picked = resample(&kept, target, &mut rng);
        let in_train: std::collections::HashSet<&PathBuf> = picked.iter().copied().collect();
        for (paths, list) in [(&held, "test"), (&held_val, "val")] {
            for p in paths.iter() {
                samples.push((p, &c.name, label, list));
            }
        }
        for p in &kept {
            let list = if in_train.contains(p) {
                "train"
            } else {
                "unused"
            };
            samples.push((p, &c.name, label, list));
        }
        for (list, paths) in [
            (&mut test, &held),
            (&mut val, &held_val),
            (&mut train, &picked),
        ] {
            for p in paths {
                list.push(list_line(p, label)?);
            }
        }
        labels += &c.name;
        labels.push('\n');
        summary.classes.push(ClassSplit {
            name: c.name.clone(),
            images: c.images.len(),
            train: picked.len(),
            test: held.len(),
            val: held_val.len(),
        });
    }
    // Classes mixed in file order: a feed without `shuffle: true` still sees
    // every class in each stretch of batches, and a test phase that reads
    // only part of test.txt (test_iter x batch) scores a fair sample of it.
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    train.shuffle(&mut rng);
    test.shuffle(&mut rng);
    val.shuffle(&mut rng);
    // Unchanged lists keep their times, so a rerun pipeline skips the later stages.
    write_if_changed(&o.out.join("train.txt"), train.concat().as_bytes())?;
    write_if_changed(&o.out.join("test.txt"), test.concat().as_bytes())?;
    let val_path = o.out.join("val.txt");
    if !val.is_empty() {
        write_if_changed(&val_path, val.concat().as_bytes())?;
    } else if val_path.exists() {
        // A val.txt from an earlier import would no longer match the others.
        std::fs::remove_file(&val_path).at(&val_path)?;
    }
    write_if_changed(&o.out.join("labels.txt"), labels.as_bytes())?;
    samples.sort();
    let mut w = csv::Writer::from_writer(Vec::new());
    // Writing to a Vec cannot fail.
    // A carried column named like one of ours (or like a `measure` column,
    // which a fusion model would compute from the image instead) gets a
    // prefix, so every name means one thing.
    let carried_names = carried.names.iter().map(|n| {
        if SAMPLE_COLUMNS.contains(&n.as_str()) || super::measure::is_measure(n) {
            format!("source_{n}")
        } else {
            n.clone()
        }
    });
    w.write_record(
        SAMPLE_COLUMNS
            .iter()
            .map(|c| c.to_string())
            .chain(carried_names),
    )
    .expect("in memory");
    let no_values = vec![String::new(); carried.names.len()];
    for &(path, class, label, list) in &samples {
        // Unknown without the decode check.
        let (width, height) = sizes
            .get(path)
            .map_or((String::new(), String::new()), |(w, h)| {
                (w.to_string(), h.to_string())
            });
        // Every path is UTF-8: list_line checked it above.
        let extra = carried.values.get(path).unwrap_or(&no_values);
        w.write_record(
            [
                &crate::fsutil::list_path(path).unwrap_or_default(),
                class,
                &label.to_string(),
                list,
                &width,
                &height,
            ]
            .into_iter()
            .chain(extra.iter().map(String::as_str)),
        )
        .expect("in memory");
    }
    write_if_changed(
        &o.out.join("samples.csv"),
        &w.into_inner().expect("in memory"),
    )?;
    Ok(summary)
}

impl ImportSummary {
    /// A Markdown table of the classes and a line on sizes and skipped files.
    pub fn to_markdown(&self) -> String {
        let has_val = self.classes.iter().any(|c| c.val > 0);
        let mut s = String::from(if has_val {
            "| label | class | images | train | val | test |\n|---|---|---|---|---|---|\n"
        } else {
            "| label | class | images | train | test |\n|---|---|---|---|---|\n"
        });
        for (i, c) in self.classes.iter().enumerate() {
            let val = if has_val {
                format!(" {} |", c.val)
            } else {
                String::new()
            };
            s += &format!(
                "| {i} | {} | {} | {} |{val} {} |\n",
                c.name.replace('|', "\\|"),
                c.images,
                c.train,
                c.test
            );
        }
        let counts: Vec<usize> = self.classes.iter().map(|c| c.images).collect();
        let (lo, hi) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        s += &format!(
            "\n{} classes, {} images; the largest class has {:.1}x the images of the smallest.\n",
            self.classes.len(),
            counts.iter().sum::<usize>(),
            hi as f64 / lo.max(1) as f64
        );
        if let Some(z) = &self.sizes {
            s += &format!(
                "Sizes: width {}–{}, height {}–{}; {} gray, {} colour.\n",
                z.width.0, z.width.1, z.height.0, z.height.1, z.gray, z.color
            );
        }
        if !self.skipped.is_empty() {
            let n = self.skipped.len();
            let noun = if n == 1 { "image" } else { "images" };
            s += &format!("Skipped {n} unreadable {noun}:\n");
            for (p, e) in &self.skipped {
                s += &format!("- {}: {e}\n", p.display());
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_keeps_a_training_image() {
        assert_eq!(test_count(1, 0.5), 0);
        assert_eq!(test_count(2, 0.9), 1);
        assert_eq!(test_count(10, 0.2), 2);
        assert_eq!(test_count(7, 0.2), 1);
        assert_eq!(test_count(0, 0.2), 0);
    }
}
