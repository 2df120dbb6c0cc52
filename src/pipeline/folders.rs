//! Folder-per-class datasets (zooplankton collections and the like:
//! `ROOT/<class>/<image>`): labels from the sorted class folder names, the
//! images found under each, then [`split`](super::split) for the checks,
//! the seeded stratified split, re-sampling and the lists.
use super::split::{write_lists, Class, ImportSummary, SplitOptions};
use crate::error::{Error, IoContext, Result};
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
    /// Checks, split, re-sampling and where the lists go.
    pub split: SplitOptions,
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

/// The images named by `paths`: a file as it is, a folder's image files
/// (recursively, sorted, hidden ones left out), in the order given.
pub fn find_images(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let root = std::fs::canonicalize(p).at(p)?;
            let mut seen = std::collections::HashSet::from([root.clone()]);
            out.extend(images_under(p, &root, &mut 0, &mut seen)?);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(Error::invalid(p.display(), "no such file or folder"));
        }
    }
    Ok(out)
}

/// Imports the dataset at `o.root` and writes the lists into `o.split.out`.
pub fn import_folders(o: &FolderImportOptions) -> Result<ImportSummary> {
    o.split.validate()?;
    if !o.root.is_dir() {
        return Err(Error::invalid(
            o.root.display(),
            "is not a folder (expected one sub-folder of images per class)",
        ));
    }
    let root = std::path::absolute(&o.root).at(&o.root)?;
    let mut summary = ImportSummary::default();
    let mut classes = Vec::new();
    let canonical_root = std::fs::canonicalize(&root).at(&root)?;
    let mut seen = std::collections::HashSet::new();
    // The lists may be written inside the dataset (`import-folders data
    // data/lists`, or a pipeline's data folder with its heat maps there):
    // that folder is never read as a class or as images of one.
    let out = std::fs::canonicalize(&o.split.out).ok();
    if let Some(out) = &out {
        seen.insert(out.clone());
    }
    for p in entries(&root)? {
        if is_hidden(&p) || !p.is_dir() || std::fs::canonicalize(&p).ok() == out {
            summary.ignored += 1;
            continue;
        }
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| Error::invalid(p.display(), "class folder name is not valid UTF-8"))?
            .to_string();
        let files = images_under(&p, &canonical_root, &mut summary.ignored, &mut seen)?;
        classes.push(Class {
            name,
            origin: p.display().to_string(),
            images: files.into_iter().map(|f| (f, None)).collect(),
        });
    }
    if classes.is_empty() {
        return Err(Error::invalid(
            root.display(),
            "has no class folders (expected ROOT/<class>/<image>)",
        ));
    }
    write_lists(classes, &o.split, summary, &Default::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_folder_inside_the_dataset_is_never_imported() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("zoo");
        let png = |p: &Path| {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            image::GrayImage::from_pixel(4, 4, image::Luma([9]))
                .save(p)
                .unwrap();
        };
        for i in 0..3 {
            png(&root.join(format!("copepod/{i}.png")));
            png(&root.join(format!("diatom/{i}.png")));
        }
        for out in [root.join("lists"), root.join("copepod/lists")] {
            // Heat maps an earlier run left in its output folder.
            for i in 0..3 {
                png(&out.join(format!("explain/{i}.png")));
            }
            let o = FolderImportOptions {
                root: root.clone(),
                split: SplitOptions {
                    out: out.clone(),
                    test_fraction: 0.34,
                    seed: 1,
                    check: true,
                    strict: true,
                    min_train_per_class: 0,
                    max_train_per_class: None,
                    balance_alpha: None,
                },
            };
            // Twice: the second run sees the first one's files.
            for _ in 0..2 {
                let s = import_folders(&o).unwrap();
                let names: Vec<&str> = s.classes.iter().map(|c| c.name.as_str()).collect();
                assert_eq!(names, ["copepod", "diatom"]);
                let counted: usize = s.classes.iter().map(|c| c.images).sum();
                assert_eq!(counted, 6, "{out:?}");
            }
            std::fs::remove_dir_all(&out).unwrap();
        }
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
