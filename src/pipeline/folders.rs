//! Folder-per-class datasets (zooplankton collections and the like:
//! `ROOT/<class>/<image>`) into Caffe image lists: labels from the sorted
//! class folder names, a seeded split stratified by class, every image
//! decoded once to check it, and optional re-sampling of the training list
//! for heavily imbalanced classes. The test list is never re-sampled, so its
//! figures describe the data as it is.
use crate::error::{Error, IoContext, Result};
use crate::fsutil::write_if_changed;
use crate::pipeline::decode::{decode, ColorMode};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// File extensions read as images (case-insensitive).
const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "bmp", "tif", "tiff", "gif", "webp", "pgm", "ppm", "pnm", "pbm",
];

/// What to import and how to split it.
#[derive(Clone, Debug)]
pub struct FolderImportOptions {
    /// The dataset: one sub-folder per class (nested folders inside a class are searched too).
    pub root: PathBuf,
    /// Where `train.txt`, `test.txt` and `labels.txt` go.
    pub out: PathBuf,
    /// Share of each class held out for `test.txt` (each class keeps at least one training image).
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

/// One class's counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassSplit {
    /// Folder name.
    pub name: String,
    /// Usable images found.
    pub images: usize,
    /// Lines in `train.txt` (after any re-sampling).
    pub train: usize,
    /// Lines in `test.txt`.
    pub test: usize,
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
pub struct FolderImportSummary {
    /// Per class, in label order.
    pub classes: Vec<ClassSplit>,
    /// Images that failed to decode, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Files that are not images by extension, hidden entries and files
    /// directly under the root (not in a class folder).
    pub ignored: usize,
    /// Image sizes (when checked).
    pub sizes: Option<SizeStats>,
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Sorted entries of a folder.
fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v = std::fs::read_dir(dir)
        .at(dir)?
        .map(|e| e.map(|e| e.path()).at(dir))
        .collect::<Result<Vec<_>>>()?;
    v.sort();
    Ok(v)
}

/// Image files under `dir` (recursively, sorted), counting the rest in
/// `ignored`. A linked folder is followed when it leads out of the dataset
/// (`root`, canonical), once (`seen`), so links cannot count an image twice
/// or loop forever; one that leads back into the dataset is ignored.
fn images_under(
    dir: &Path,
    root: &Path,
    ignored: &mut usize,
    seen: &mut std::collections::HashSet<PathBuf>,
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in entries(dir)? {
        if is_hidden(&p) {
            *ignored += 1;
        } else if p.is_dir() {
            let linked = std::fs::symlink_metadata(&p).at(&p)?.is_symlink();
            let target = std::fs::canonicalize(&p).at(&p)?;
            if linked && target.starts_with(root) || !seen.insert(target) {
                *ignored += 1;
            } else {
                out.extend(images_under(&p, root, ignored, seen)?);
            }
        } else if is_image(&p) {
            out.push(p);
        } else {
            *ignored += 1;
        }
    }
    Ok(out)
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

/// Imports the dataset at `o.root` and writes the three lists into `o.out`.
pub fn import_folders(o: &FolderImportOptions) -> Result<FolderImportSummary> {
    if !(0.0..1.0).contains(&o.test_fraction) {
        return Err(Error::invalid(
            "--test-fraction",
            format!("{} is not in [0, 1)", o.test_fraction),
        ));
    }
    if o.balance_alpha.is_some_and(|a| !(0.0..=1.0).contains(&a)) {
        return Err(Error::invalid(
            "--balance-alpha",
            "must be between 0 (classes even) and 1 (as the data is)",
        ));
    }
    if o.max_train_per_class
        .is_some_and(|max| o.min_train_per_class > max)
    {
        return Err(Error::invalid(
            "--min-train-per-class",
            format!(
                "{} is above --max-train-per-class {}",
                o.min_train_per_class,
                o.max_train_per_class.unwrap_or(0)
            ),
        ));
    }
    if o.max_train_per_class == Some(0) {
        return Err(Error::invalid(
            "--max-train-per-class",
            "must be at least 1",
        ));
    }
    if !o.root.is_dir() {
        return Err(Error::invalid(
            o.root.display(),
            "is not a folder (expected one sub-folder of images per class)",
        ));
    }
    let root = std::path::absolute(&o.root).at(&o.root)?;
    let mut summary = FolderImportSummary::default();
    let mut classes: Vec<(String, Vec<PathBuf>)> = Vec::new();
    let canonical_root = std::fs::canonicalize(&root).at(&root)?;
    let mut seen = std::collections::HashSet::new();
    for p in entries(&root)? {
        if is_hidden(&p) || !p.is_dir() {
            summary.ignored += 1;
            continue;
        }
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::invalid(p.display(), "class folder name is not valid UTF-8"))?
            .to_string();
        let files = images_under(&p, &canonical_root, &mut summary.ignored, &mut seen)?;
        classes.push((name, files));
    }
    if classes.is_empty() {
        return Err(Error::invalid(
            root.display(),
            "has no class folders (expected ROOT/<class>/<image>)",
        ));
    }
    if o.check {
        let all: Vec<&PathBuf> = classes.iter().flat_map(|(_, f)| f).collect();
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
        let mut sizes: Option<SizeStats> = None;
        for (p, r) in all.iter().zip(checked) {
            match r {
                Ok((w, h, c)) => {
                    let s = sizes.get_or_insert(SizeStats {
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
                Err(e) if o.strict => {
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
        summary.sizes = sizes;
        for (_, files) in &mut classes {
            files.retain(|f| !bad.contains(f));
        }
    }
    if let Some((name, _)) = classes.iter().find(|(_, f)| f.is_empty()) {
        return Err(Error::invalid(
            root.join(name).display(),
            "class folder has no readable images; add some or move the folder out of the dataset \
             (labels follow the sorted folder names)",
        ));
    }
    // Each class's seeded order: held-out images first, training images after.
    let mut splits = Vec::new();
    for (name, files) in &classes {
        if name.contains('\n') {
            return Err(Error::invalid(
                root.join(name).display(),
                "class folder name contains a line break",
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(class_seed(o.seed, name));
        let mut order: Vec<&PathBuf> = files.iter().collect();
        order.shuffle(&mut rng);
        let held_out = test_count(order.len(), o.test_fraction);
        let kept = order.split_off(held_out);
        splits.push((order, kept, rng));
    }
    let natural: Vec<usize> = splits.iter().map(|(_, kept, _)| kept.len()).collect();
    let targets = train_targets(&natural, o);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    let mut labels = String::new();
    for (label, (((name, files), (held, kept, mut rng)), target)) in
        classes.iter().zip(splits).zip(targets).enumerate()
    {
        let picked = resample(&kept, target, &mut rng);
        for p in &held {
            test.push(list_line(p, label)?);
        }
        for p in &picked {
            train.push(list_line(p, label)?);
        }
        labels += name;
        labels.push('\n');
        summary.classes.push(ClassSplit {
            name: name.clone(),
            images: files.len(),
            train: picked.len(),
            test: held.len(),
        });
    }
    // Classes mixed in file order: a feed without `shuffle: true` still sees
    // every class in each stretch of batches, and a test phase that reads
    // only part of test.txt (test_iter x batch) scores a fair sample of it.
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    train.shuffle(&mut rng);
    test.shuffle(&mut rng);
    // Unchanged lists keep their times, so a rerun pipeline skips the later stages.
    write_if_changed(&o.out.join("train.txt"), train.concat().as_bytes())?;
    write_if_changed(&o.out.join("test.txt"), test.concat().as_bytes())?;
    write_if_changed(&o.out.join("labels.txt"), labels.as_bytes())?;
    Ok(summary)
}

/// Training lines per class from the classes' training images: tempered by
/// `balance_alpha` (class c gets a share proportional to n_c^alpha of the
/// same total: 1 keeps the data as it is, 0 evens the classes out), then
/// capped by `max_train_per_class` and raised to `min_train_per_class`.
/// Every class with images keeps at least one line.
fn train_targets(natural: &[usize], o: &FolderImportOptions) -> Vec<usize> {
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
    let s = p
        .to_str()
        .ok_or_else(|| Error::invalid(p.display(), "path is not valid UTF-8"))?;
    if s.contains('\n') || s.contains('\r') {
        return Err(Error::invalid(p.display(), "path contains a line break"));
    }
    Ok(format!("{s} {label}\n"))
}

impl FolderImportSummary {
    /// A Markdown table of the classes and a line on sizes and skipped files.
    pub fn to_markdown(&self) -> String {
        let mut s =
            String::from("| label | class | images | train | test |\n|---|---|---|---|---|\n");
        for (i, c) in self.classes.iter().enumerate() {
            s += &format!(
                "| {i} | {} | {} | {} | {} |\n",
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
            s += &format!("Skipped {} unreadable images:\n", self.skipped.len());
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

    #[test]
    fn image_files_by_extension() {
        assert!(is_image(Path::new("a/b.JPG")));
        assert!(is_image(Path::new("a/b.tif")));
        assert!(!is_image(Path::new("a/b.csv")));
        assert!(!is_image(Path::new("a/jpg")));
        assert!(is_hidden(Path::new("a/.DS_Store")));
    }
}
