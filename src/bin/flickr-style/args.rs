//! The command line's flags: one clap struct per subcommand, each flag
//! documented for `--help`.
use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use flickr_style::caffe::mean_file::NpyDtype;
use flickr_style::inference::tta::Tta;
use flickr_style::pipeline::ilsvrc_aux;
use flickr_style::pipeline::manifest::ManifestImportOptions;
use flickr_style::pipeline::pad::{Pad, PadFill};
use flickr_style::pipeline::split::SplitOptions;
use flickr_style::train::augment::Augment;
use flickr_style::train::compute::Compute;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "flickr-style",
    version,
    about = "Caffe's fine-tune-CaffeNet-on-Flickr-Style workflow, fast and reliable"
)]
pub(crate) struct Cli {
    /// CPU threads for decoding, kernels and matrix products (default: all cores, or
    /// RAYON_NUM_THREADS when set). Fewer leave a laptop usable while it trains.
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) threads: Option<u16>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Subcommand)]
pub(crate) enum Command {
    /// The whole recipe, from data to an evaluated model.
    ///
    /// Assemble Flickr Style (or import class folders or a manifest), compute-mean, (to-lmdb),
    /// fetch CaffeNet, finetune, evaluate; also writes a deploy net. Each stage is skipped when
    /// its outputs are complete, so a rerun continues where it stopped.
    Pipeline(Box<PipelineArgs>),
    /// Select the Flickr Style subset and download it in parallel (assemble_data.py).
    Assemble(AssembleArgs),
    /// A folder-per-class dataset into train.txt, test.txt and labels.txt.
    ///
    /// ROOT/<class>/<image>, e.g. zooplankton: labels from the sorted folder names, a seeded
    /// split stratified by class.
    ImportFolders(ImportFoldersArgs),
    /// A CSV/TSV manifest into train.txt, test.txt, val.txt and labels.txt.
    ///
    /// One row per image: path, class, optional set. Split like import-folders unless a set
    /// column decides.
    ImportManifest(ImportManifestArgs),
    /// Download a model zoo caffemodel and verify its SHA-1 (download_model_binary.py).
    ///
    /// The file, URL and checksum come from DIR/readme.md's front matter.
    DownloadModel(DownloadModelArgs),
    /// Download Caffe's ILSVRC-2012 mean and synsets (get_ilsvrc_aux.sh).
    GetIlsvrcAux(GetIlsvrcAuxArgs),
    /// Convert an image list to an LMDB of Caffe Datums (convert_imageset).
    ToLmdb(ToLmdbArgs),
    /// The per-pixel mean of an LMDB or image list as mean.binaryproto (compute_image_mean).
    ComputeMean(ComputeMeanArgs),
    /// Convert a mean between NumPy .npy and Caffe .binaryproto.
    ///
    /// The direction comes from the file extensions.
    ConvertMean(ConvertMeanArgs),
    /// Class weights for imbalanced data, as InfogainLoss's matrix H.
    ///
    /// A training list's label counts as the diagonal matrix H of Caffe's InfogainLoss layer
    /// (weight proportional to count^-alpha).
    ClassWeights(ClassWeightsArgs),
    /// Regression or multi-label targets as an LMDB beside an image LMDB.
    ///
    /// A CSV of `path,value,...` rows as an LMDB of float Datums under the image records' keys,
    /// for a second Data layer feeding an EuclideanLoss or SigmoidCrossEntropyLoss.
    TargetsLmdb(TargetsLmdbArgs),
    /// A caffemodel for one-channel (gray) input.
    ///
    /// A convolution's filters summed over their input channels, so that it reads one gray
    /// channel as it read three equal ones (see `pipeline --gray`).
    GrayWeights(GrayWeightsArgs),
    /// Train or fine-tune a net from a Caffe solver prototxt (caffe train).
    ///
    /// Any of Caffe's solver types (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam).
    Finetune(FinetuneArgs),
    /// Train only the classifier on the pretrained net's features (a linear probe).
    ///
    /// One forward pass over the images, then seconds of training; writes the whole net as
    /// probe.caffemodel.
    Probe(ProbeArgs),
    /// Score a net's TEST phase with trained weights (caffe test).
    Test(TestArgs),
    /// Time a net layer by layer (caffe time).
    ///
    /// The training step, or with --phase test the forward pass.
    Time(TimeArgs),
    /// Check every layer's GPU code path against the CPU kernels (on --gpu N, or on the CPU).
    CheckOps(CheckOpsArgs),
    /// Per-class report of trained weights over the TEST data.
    ///
    /// Confusion matrix, precision, recall, F1, top-k and mean per-class accuracy.
    Evaluate(EvaluateArgs),
    /// Several evaluate reports side by side, best first.
    ///
    /// Accuracy, mean per-class accuracy, macro F1, log loss: which variant of a recipe helped.
    Compare(CompareArgs),
    /// Plot training runs as SVG (parse_log.py, plot_training_log.py).
    ///
    /// A `finetune --metrics` file or a Caffe training log; several overlaid: training and test
    /// losses, test scores, learning rate.
    #[command(override_usage = "flickr-style plot [OPTIONS] <RUN>... <OUT.svg>")]
    Plot(PlotArgs),
    /// Predict the classes of new, unlabelled images (classify.py).
    ///
    /// The net as trained (its TEST data layer says how an image becomes its input) or a deploy
    /// net with --mean; writes a CSV of the top classes.
    Classify(ClassifyArgs),
    /// Grad-CAM heat maps: where in each image the net found its class.
    ///
    /// Heat maps over the images as the net saw them, and explain.csv (class, probability, where
    /// the map peaks).
    Explain(ExplainArgs),
    /// Save blobs' values (e.g. fc7) per image as .npy, for other learners (extract_features).
    ///
    /// Of the TEST data or of image files; with --lmdb also as Caffe's extract_features LMDB.
    Features(FeaturesArgs),
    /// Write the deploy net of a trained net, for Caffe, pycaffe or OpenCV's dnn.
    ///
    /// Its TEST layers with an Input layer in place of the data layer, no label layers, a
    /// Softmax `prob`; loaded with the .caffemodel.
    Deploy(DeployArgs),
    /// Measure the object in every image of a samples.csv into measures.csv.
    ///
    /// Size, fill, elongation, Hu moments, contrast, Haralick texture, from the original files,
    /// for `fuse --measured`.
    Measure(MeasureArgs),
    /// Late fusion: whether original sizes and measurements add to the net's probabilities.
    ///
    /// Each image's original size (and measurements a manifest carries, or `measure`'s shapes
    /// and textures), by a cross-validated logistic regression on an evaluated set (evaluate
    /// --out's probabilities.csv with the dataset's samples.csv).
    Fuse(FuseArgs),
}

#[derive(Args)]
pub(crate) struct TargetsLmdbArgs {
    /// The image LMDB (from to-lmdb or convert_imageset: keys `<index>_<path>`).
    pub(crate) images: PathBuf,
    /// The targets: one row per image, its list path then its values (a header row is allowed).
    pub(crate) targets: PathBuf,
    /// The LMDB to write.
    pub(crate) out: PathBuf,
    /// Replace an existing LMDB at OUT.
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Args)]
pub(crate) struct ClassWeightsArgs {
    /// Training list (`path label` per line, e.g. train.txt from import-folders).
    pub(crate) list: PathBuf,
    /// The .binaryproto to write; an InfogainLoss layer reads it from
    /// `infogain_loss_param { source: ... }`.
    pub(crate) out: PathBuf,
    /// Number of classes (the classifier's num_output).
    #[arg(long, value_parser = at_least_one)]
    pub(crate) classes: usize,
    /// Exponent: each class weighs count^-alpha, scaled so the mean weight per image is 1
    /// (1: inverse frequency, 0.5: its square root, 0: no weighting).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) alpha: f64,
    /// Class names, one per line in label order (labels.txt), for the printed table.
    #[arg(long)]
    pub(crate) names: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct CompareArgs {
    /// Report folders (evaluate --out, the pipeline's evaluation*), their metrics.json, or a data
    /// folder, meaning every evaluation folder in it.
    #[arg(required = true)]
    pub(crate) reports: Vec<PathBuf>,
    /// Order: macro-f1, mean-class-accuracy, accuracy, predicted-at-95 (the share of images
    /// predicted at 95% accuracy; highest first) or log-loss (lowest first).
    #[arg(long, default_value = "macro-f1")]
    pub(crate) by: flickr_style::analysis::compare::SortBy,
}

#[derive(Args)]
pub(crate) struct GrayWeightsArgs {
    /// The .caffemodel to convert (e.g. bvlc_reference_caffenet.caffemodel).
    pub(crate) weights: PathBuf,
    /// The .caffemodel to write.
    pub(crate) out: PathBuf,
    /// The layer whose filters to sum: the convolution that reads the data.
    #[arg(long, default_value = "conv1")]
    pub(crate) layer: String,
}

#[derive(Args)]
pub(crate) struct MeasureArgs {
    /// samples.csv from import-folders or import-manifest (its `path` column).
    pub(crate) samples: PathBuf,
    /// Folder that relative image paths in samples.csv start from (default: the current one).
    #[arg(long)]
    pub(crate) root: Option<PathBuf>,
    /// Where to write the measurements (default: measures.csv beside SAMPLES, where
    /// `fuse --measured` looks).
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct FuseArgs {
    /// probabilities.csv from `evaluate --out` over images the net did not train on, e.g. the test
    /// list (or the report folder holding it, such as the pipeline's evaluation folder).
    pub(crate) probabilities: PathBuf,
    /// samples.csv from import-folders or import-manifest (the images' original sizes and the
    /// manifest's other columns).
    #[arg(long)]
    pub(crate) samples: PathBuf,
    /// A numeric column of samples.csv to use as a feature too (repeatable), e.g. a manifest's
    /// area or major axis.
    #[arg(long = "feature", value_name = "COLUMN")]
    pub(crate) features: Vec<String>,
    /// Also use each object's shape and texture: measures.csv beside --samples, which
    /// `flickr-style measure samples.csv` writes (classify --fusion then measures each image
    /// itself).
    #[arg(long)]
    pub(crate) measured: bool,
    /// Like --measured, with the measurements in this file.
    #[arg(long, value_name = "MEASURES_CSV", conflicts_with = "measured")]
    pub(crate) measures: Option<PathBuf>,
    /// Leave out ln(width) and ln(height): use only the --feature columns.
    #[arg(long)]
    pub(crate) no_size: bool,
    /// Cross-validation folds, stratified by class.
    #[arg(long, default_value_t = 5)]
    pub(crate) folds: usize,
    /// Seed of the fold assignment.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// L2 penalty towards the net as it is: feature weights and class biases towards 0, the
    /// temperature towards 1 (keeps a small set from overfitting).
    #[arg(long, default_value_t = 1e-3)]
    pub(crate) l2: f64,
    /// Also write fusion.md, fusion.json (scores and the model fitted on all images) and fused.csv
    /// (out-of-fold fused probabilities) into this folder.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct ImportFoldersArgs {
    /// Dataset folder: one sub-folder of images per class (nested folders inside a class count too).
    pub(crate) root: PathBuf,
    /// Folder for train.txt, test.txt (absolute image paths), labels.txt (class names in label order) and samples.csv (each image's class, list and original size).
    pub(crate) out: PathBuf,
    /// Seed of the split and of any re-sampling (the same seed gives the same lists).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    #[command(flatten)]
    pub(crate) split: SplitArgs,
}

#[derive(Args)]
pub(crate) struct ImportManifestArgs {
    /// The manifest: CSV with a header row (tab-separated when it ends in .tsv or .tab).
    pub(crate) manifest: PathBuf,
    /// Folder for the lists (absolute image paths), labels.txt (class names in label order) and samples.csv (each image's class, list, original size and the manifest's other columns).
    pub(crate) out: PathBuf,
    #[command(flatten)]
    pub(crate) columns: ManifestColumns,
    /// Seed of the split and of any re-sampling (the same seed gives the same lists).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    #[command(flatten)]
    pub(crate) split: SplitArgs,
}

/// Which manifest columns say what (import-manifest, pipeline --manifest).
#[derive(Args)]
pub(crate) struct ManifestColumns {
    /// Column of image paths (relative ones resolve from --manifest-root).
    #[arg(long, default_value = "path")]
    pub(crate) path_column: String,
    /// Column of class names (labels follow their sorted order, numeric when all are numbers).
    #[arg(long, default_value = "label")]
    pub(crate) label_column: String,
    /// Column naming each row's set: train, val or test (empty: split here with --test-fraction).
    #[arg(long)]
    pub(crate) set_column: Option<String>,
    /// Folder relative paths resolve from [default: the manifest's folder].
    #[arg(long)]
    pub(crate) manifest_root: Option<PathBuf>,
}

impl ManifestColumns {
    pub(crate) fn options(&self, manifest: PathBuf, split: SplitOptions) -> ManifestImportOptions {
        ManifestImportOptions {
            manifest,
            root: self.manifest_root.clone(),
            path_column: self.path_column.clone(),
            label_column: self.label_column.clone(),
            set_column: self.set_column.clone(),
            split,
        }
    }
}

/// How a folder-per-class dataset is split (import-folders, pipeline --folders).
#[derive(Args)]
pub(crate) struct SplitArgs {
    /// Share of each class held out for test.txt (each class keeps at least one training image).
    #[arg(long, default_value_t = 0.2)]
    pub(crate) test_fraction: f64,
    /// Skip decoding every image (faster; unreadable images then surface in training).
    #[arg(long)]
    pub(crate) no_check: bool,
    /// Fail on the first unreadable image instead of skipping and listing it.
    #[arg(long, conflicts_with = "no_check")]
    pub(crate) strict: bool,
    /// Oversample: repeat a class's training images until it has at least N lines in train.txt.
    #[arg(long, default_value_t = 0)]
    pub(crate) min_train_per_class: usize,
    /// Undersample: keep at most N training images per class.
    #[arg(long)]
    pub(crate) max_train_per_class: Option<usize>,
    /// Tempered re-sampling of train.txt for imbalanced classes: class c gets lines in proportion
    /// to n_c^ALPHA, the total unchanged (1: as the data is, 0: every class equal, 0.5: between);
    /// applied before --max/--min-train-per-class.
    #[arg(long, value_name = "ALPHA")]
    pub(crate) balance_alpha: Option<f64>,
}

impl SplitArgs {
    pub(crate) fn options(&self, out: PathBuf, seed: u64) -> SplitOptions {
        SplitOptions {
            out,
            test_fraction: self.test_fraction,
            seed,
            check: !self.no_check,
            strict: self.strict,
            min_train_per_class: self.min_train_per_class,
            max_train_per_class: self.max_train_per_class,
            balance_alpha: self.balance_alpha,
        }
    }
}

#[derive(Args)]
pub(crate) struct ToLmdbArgs {
    /// Folder prepended to every path in LIST (Caffe's ROOTFOLDER; keep a trailing slash or not, both work).
    pub(crate) root: PathBuf,
    /// Image list: one `relative/path label` per line.
    pub(crate) list: PathBuf,
    /// LMDB folder to create (must not exist unless --force).
    pub(crate) db: PathBuf,
    #[command(flatten)]
    pub(crate) resize: ResizeArgs,
    /// Store one-channel (grayscale) images instead of BGR.
    #[arg(long)]
    pub(crate) gray: bool,
    /// Shuffle the list before converting (seeded by --seed; Caffe's shuffle is unseeded).
    #[arg(long)]
    pub(crate) shuffle: bool,
    /// Seed for --shuffle.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Store encoded images (the original file bytes when nothing changes) instead of raw pixels.
    #[arg(long)]
    pub(crate) encoded: bool,
    /// Encoding for --encoded: jpg, png or bmp (default: each file's own extension).
    #[arg(long, default_value = "")]
    pub(crate) encode_type: String,
    /// Fail if datums differ in size.
    #[arg(long)]
    pub(crate) check_size: bool,
    /// Fail on the first unreadable image instead of skipping it.
    #[arg(long)]
    pub(crate) strict: bool,
    /// Replace DB if it exists (only once the new one is complete).
    #[arg(long)]
    pub(crate) force: bool,
}

/// `--resize-height/--resize-width`, shared by the commands that read images.
#[derive(Args)]
pub(crate) struct ResizeArgs {
    /// Resize every image to this height first (needs --resize-width too), with OpenCV's bilinear.
    #[arg(long, default_value_t = 0)]
    pub(crate) resize_height: usize,
    /// Resize every image to this width first (needs --resize-height too).
    #[arg(long, default_value_t = 0)]
    pub(crate) resize_width: usize,
    /// Keep each image's aspect ratio: scale it to fit inside the --resize size (elongated
    /// plankton are not squashed), then pad it to that size (without a size: to a square). FILL is
    /// `border` (each channel's mean over the image's edge pixels: the background) or a value
    /// 0-255. Beyond Caffe; the stored datums are plain images Caffe reads.
    #[arg(long, value_name = "FILL")]
    pub(crate) pad_square: Option<PadFill>,
    /// With --pad-square: never enlarge an image smaller than the target, only pad it, so the
    /// organism's size in pixels stays a signal.
    #[arg(long, requires = "pad_square")]
    pub(crate) no_upscale: bool,
}

impl ResizeArgs {
    /// The padding, when asked for.
    pub(crate) fn pad(&self) -> Option<Pad> {
        self.pad_square.map(|fill| Pad {
            fill,
            upscale: !self.no_upscale,
        })
    }

    /// `(height, width)` when both are given, `None` when neither is.
    pub(crate) fn get(&self) -> Result<Option<(usize, usize)>> {
        match (self.resize_height, self.resize_width) {
            (0, 0) => Ok(None),
            (h, w) if h > 0 && w > 0 => Ok(Some((h, w))),
            _ => bail!("--resize-height and --resize-width must be given together"),
        }
    }
}

#[derive(Args)]
pub(crate) struct ComputeMeanArgs {
    /// An LMDB folder, or an image list (then use --root and the --resize options).
    pub(crate) input: PathBuf,
    /// The mean.binaryproto to write.
    pub(crate) output: PathBuf,
    /// Root folder for an image-list INPUT.
    #[arg(long)]
    pub(crate) root: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) resize: ResizeArgs,
    /// Read list images as grayscale.
    #[arg(long)]
    pub(crate) gray: bool,
    /// Also write the mean as a NumPy .npy (float32, shape 1xCxHxW).
    #[arg(long)]
    pub(crate) npy: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct ConvertMeanArgs {
    /// Input: .npy or .binaryproto.
    pub(crate) input: PathBuf,
    /// Output: .binaryproto or .npy.
    pub(crate) output: PathBuf,
    /// Element type of a written .npy.
    #[arg(long, value_enum, default_value = "f4")]
    pub(crate) dtype: NpyDtype,
}

#[derive(Args)]
pub(crate) struct AssembleArgs {
    /// Number of images to select (-1 = all 80,000).
    #[arg(short = 'i', long, default_value_t = -1, allow_negative_numbers = true)]
    pub(crate) images: i64,
    /// NumPy seed of the selection (assemble_data.py's --seed).
    #[arg(short = 's', long, default_value_t = 0)]
    pub(crate) seed: u32,
    /// Keep only labels below this (0 = all 20 styles).
    #[arg(short = 'l', long, default_value_t = 0)]
    pub(crate) labels: i32,
    /// Concurrent downloads; 0 or negative (Caffe's --workers=-1) means the default of 128.
    #[arg(
        short = 'w',
        long,
        default_value_t = 128,
        allow_negative_numbers = true
    )]
    pub(crate) workers: i64,
    /// The CSV: a path or http(s) URL, gzip or plain (default: OUT/flickr_style.csv.gz, downloaded from Caffe's repository if absent).
    #[arg(long)]
    pub(crate) csv: Option<String>,
    /// Output folder: images/, train.txt, test.txt, manifest.jsonl.
    #[arg(long, default_value = "data/flickr_style")]
    pub(crate) out: PathBuf,
    /// Fetch the same URL paths from this base URL (a mirror) instead of Flickr.
    #[arg(long)]
    pub(crate) mirror: Option<String>,
    /// Also treat bodies with this SHA-1 as a placeholder (repeatable).
    #[arg(long)]
    pub(crate) placeholder_sha1: Vec<String>,
    /// Seconds allowed to connect.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) connect_timeout: f64,
    /// Longest silence in seconds while reading a body.
    #[arg(long, default_value_t = 20.0)]
    pub(crate) read_timeout: f64,
    /// Longest time in seconds for one whole attempt.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) timeout: f64,
    /// Attempts per image for transient failures (timeouts, resets, 5xx, 429).
    #[arg(long, default_value_t = 4)]
    pub(crate) attempts: u32,
    /// First retry delay in seconds (doubled each retry, with seeded jitter).
    #[arg(long, default_value_t = 0.5)]
    pub(crate) backoff: f64,
    /// Largest accepted image in bytes; bigger bodies count as missing.
    #[arg(long, default_value_t = 32 << 20)]
    pub(crate) max_image_bytes: u64,
    /// Print the selection (id,url,label,split) and download nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Args)]
pub(crate) struct DownloadModelArgs {
    /// Model folder holding readme.md (e.g. models/bvlc_reference_caffenet).
    pub(crate) dir: PathBuf,
    /// Download from this URL instead of the readme's caffemodel_url (a mirror).
    #[arg(long)]
    pub(crate) url: Option<String>,
}

#[derive(Args)]
pub(crate) struct PipelineArgs {
    /// Images to select (-1 = all 80,000).
    #[arg(
        short = 'i',
        long,
        default_value_t = 2000,
        allow_negative_numbers = true
    )]
    pub(crate) images: i64,
    /// NumPy seed of the selection (assemble_data.py's --seed); also seeds training.
    #[arg(short = 's', long, default_value_t = 831486)]
    pub(crate) seed: u32,
    /// Keep only labels below this (0 = all 20 styles).
    #[arg(short = 'l', long, default_value_t = 0)]
    pub(crate) labels: i32,
    /// Data folder for images, lists, mean, LMDBs, snapshots and the evaluation
    /// [default: data/flickr_style, or data/<name of the --folders folder>].
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Train on this folder-per-class dataset (ROOT/<class>/<image>, e.g. zooplankton) instead of
    /// Flickr Style: it is split like `import-folders` does, and the classifier gets one output per class.
    #[arg(long, value_name = "ROOT", conflicts_with_all = ["csv", "mirror", "manifest"])]
    pub(crate) folders: Option<PathBuf>,
    /// Train on the images a CSV/TSV manifest lists instead (see `import-manifest --help`), with
    /// --path-column, --label-column, --set-column and --manifest-root.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["csv", "mirror"])]
    pub(crate) manifest: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) columns: ManifestColumns,
    #[command(flatten)]
    pub(crate) split: SplitArgs,
    /// Class names for the evaluation report, one per line in label order (e.g. Flickr Style's
    /// style_names.txt; with --folders, labels.txt is used).
    #[arg(long)]
    pub(crate) names: Option<PathBuf>,
    /// The Flickr Style CSV (path or URL); default: OUT/flickr_style.csv.gz or Caffe's repository.
    #[arg(long)]
    pub(crate) csv: Option<String>,
    /// Fetch images from this mirror base URL instead of Flickr.
    #[arg(long)]
    pub(crate) mirror: Option<String>,
    /// Concurrent downloads.
    #[arg(long, default_value_t = 128)]
    pub(crate) workers: usize,
    /// Folder with Caffe's finetune_flickr_style train_val.prototxt and solver.prototxt.
    #[arg(long, default_value = "models/finetune_flickr_style")]
    pub(crate) recipe: PathBuf,
    /// Pretrained weights (default: download bvlc_reference_caffenet.caffemodel).
    #[arg(long)]
    pub(crate) weights: Option<PathBuf>,
    /// URL of bvlc_reference_caffenet.caffemodel (a mirror).
    #[arg(long, default_value = flickr_style::workflow::CAFFENET_URL)]
    pub(crate) weights_url: String,
    /// Convert the lists to LMDBs and train from those.
    #[arg(long)]
    pub(crate) lmdb: bool,
    /// Fit images inside 256x256 keeping their aspect ratio and pad them with FILL (see `to-lmdb
    /// --help`); trains from LMDBs, since Caffe's ImageData layer cannot pad.
    #[arg(long, value_name = "FILL")]
    pub(crate) pad_square: Option<PadFill>,
    /// With --pad-square: never enlarge small images, only pad them.
    #[arg(long, requires = "pad_square")]
    pub(crate) no_upscale: bool,
    /// Read the images as one gray channel (plankton cameras are gray) and train a one-channel
    /// CaffeNet: conv1's filters are summed over their input channels (the same numbers as three
    /// equal channels, with a third of conv1's work and of the LMDBs), and learn with lr_mult x3
    /// and decay_mult /3, so training matches the three-channel net. Outputs are tagged _gray.
    #[arg(long)]
    pub(crate) gray: bool,
    /// With --folders or --manifest: measure each image's object (size, shape, texture; see
    /// `measure`) into measures.csv, so that the closing fuse command weighs them too.
    #[arg(long)]
    pub(crate) measure: bool,
    /// Turn each training image by a random multiple of 90° (see `finetune --help`).
    #[arg(long)]
    pub(crate) rotate90: bool,
    /// Cyclic pooling (beyond Caffe; the Kaggle plankton winners' nets): a CyclicSlice layer feeds
    /// the convolutions each image in its four quarter turns and a CyclicPool layer averages them
    /// before fc6, so the net is invariant to quarter turns; four times the convolutions' work
    /// (consider a smaller --batch-size). Caffe cannot read such a net. Outputs are tagged _cyclic.
    #[arg(long)]
    pub(crate) cyclic: bool,
    /// Train only the classifier, on the pretrained net's features (see `probe --help`), instead
    /// of fine-tuning the whole net: one forward pass over the images, then seconds of training,
    /// so a first model on a CPU takes minutes. With --rotate90 it trains on the features of
    /// each training image's eight flips and turns (eight forward passes). Outputs are tagged
    /// _probe.
    #[arg(long, conflicts_with = "augment")]
    pub(crate) probe: bool,
    /// Warp each training image by a random affine map (see `finetune --help`); outputs are
    /// tagged _aug<SPEC>.
    #[arg(long, value_name = "SPEC")]
    pub(crate) augment: Option<Augment>,
    /// Test-time augmentation for the final evaluation (see `evaluate --help`); its report goes
    /// to evaluation*_tta_<VIEWS> (e.g. _tta_dihedral, _tta_affine70).
    #[arg(long, value_name = "VIEWS", default_value = "none")]
    pub(crate) tta: Tta,
    /// Train with a class-weighted loss: the recipe's SoftmaxWithLoss becomes Caffe's InfogainLoss
    /// with each class weighing count^-ALPHA in train.txt (1: inverse frequency, 0.5: its square
    /// root; see `class-weights`). Outputs are tagged _cw<ALPHA>.
    #[arg(long, value_name = "ALPHA")]
    pub(crate) class_weights: Option<f64>,
    /// Override the nets' batch_size.
    #[arg(long, value_parser = at_least_one_u32)]
    pub(crate) batch_size: Option<u32>,
    /// Override the solver's max_iter.
    #[arg(long)]
    pub(crate) max_iter: Option<usize>,
    /// Override test_iter.
    #[arg(long)]
    pub(crate) test_iter: Option<i32>,
    /// Override test_interval.
    #[arg(long)]
    pub(crate) test_interval: Option<i32>,
    /// Override snapshot (iterations between snapshots).
    #[arg(long)]
    pub(crate) snapshot: Option<i32>,
    /// Append training metrics (JSON lines) to this file.
    #[arg(long)]
    pub(crate) metrics: Option<PathBuf>,
    /// Fine-tune on GPU N (needs a build with `--features cuda`).
    #[arg(long)]
    pub(crate) gpu: Option<usize>,
    /// Let the GPU's matrix products use TF32 (see `finetune --help`).
    #[arg(long, requires = "gpu")]
    pub(crate) tf32: bool,
    /// bf16 mixed precision on the GPU (see `finetune --help`).
    #[arg(long, requires = "gpu")]
    pub(crate) bf16: bool,
}

#[derive(Args)]
pub(crate) struct FinetuneArgs {
    /// The solver prototxt (paths inside are relative to the current folder, like Caffe, or to the solver's folder).
    #[arg(long)]
    pub(crate) solver: PathBuf,
    /// Pretrained .caffemodel(s) (or .caffemodel.h5) to copy weights from by layer name (comma-separated, applied in order); replaces the solver's own `weights:` lines, which apply otherwise.
    #[arg(long, value_delimiter = ',', conflicts_with = "snapshot")]
    pub(crate) weights: Vec<PathBuf>,
    /// Resume from this .solverstate or .solverstate.h5 (exactly, when its .resume.json sidecar is beside it); the solver's `weights:` lines are then not applied.
    #[arg(long)]
    pub(crate) snapshot: Option<PathBuf>,
    /// Append per-iteration metrics to this file: a JSON line per iteration (phase, iter, loss,
    /// smoothed_loss, lr, outputs, elapsed_s = seconds since the solver started) and per test phase.
    #[arg(long)]
    pub(crate) metrics: Option<PathBuf>,
    /// Also write the log to this file.
    #[arg(long)]
    pub(crate) log: Option<PathBuf>,
    /// Override the solver's snapshot_prefix.
    #[arg(long)]
    pub(crate) snapshot_prefix: Option<String>,
    /// Override the solver's max_iter.
    #[arg(long)]
    pub(crate) max_iter: Option<usize>,
    /// Turn each training image by a random multiple of 90° after Caffe's crop and mirror (with
    /// mirroring: all eight flips and turns, exact, no interpolation), for subjects with no natural
    /// up such as plankton. Beyond Caffe; needs square inputs (a crop_size, or square images).
    #[arg(long)]
    pub(crate) rotate90: bool,
    /// Warp each training image by a random affine map after Caffe's steps (beyond Caffe):
    /// `plankton` (the Kaggle plankton winners' ranges: any rotation, scale 1/1.6-1.6, shear ±20°,
    /// stretch 1/1.3-1.3, shift ±10 px) or key=value pairs, e.g. `rotate=180,scale=1.2` (keys:
    /// rotate, scale, shear, translate, stretch). Bilinear; pixels from outside read the mean.
    #[arg(long, value_name = "SPEC")]
    pub(crate) augment: Option<Augment>,
    #[command(flatten)]
    pub(crate) state: NetStateArgs,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
    /// Train on the CPU even if the solver says solver_mode: GPU (without
    /// --gpu, a CUDA build follows the solver's solver_mode/device_id, like Caffe).
    #[arg(long, conflicts_with = "gpu")]
    pub(crate) cpu: bool,
    /// Build the nets, read the data and copy the weights as training would, then print what the
    /// run would do and stop, writing nothing: each layer's top shape, parameters, lr_mult and
    /// where its values start (a weights file, matched by layer name, or its filler), the
    /// schedule in passes over the training data, what each test phase scores, the memory floor,
    /// and warnings (a frozen layer left at its random filler, a weights file no layer matches).
    #[arg(long, conflicts_with_all = ["metrics", "log"])]
    pub(crate) dry_run: bool,
}

/// Which of a net file's rule-picked layers are built, as Caffe's tools'
/// `-level` and `-stage` flags pick them (e.g. the `deploy` or `val` variant
/// of a net DIGITS wrote as one file).
#[derive(Args)]
pub(crate) struct NetStateArgs {
    /// The net's level for its layers' `min_level`/`max_level` rules, as Caffe's `-level`: it
    /// replaces the net file's `state` level (for finetune, the solver's `train_state` level).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) level: i32,
    /// A stage for the layers' `stage`/`not_stage` rules, e.g. `--stage deploy` (repeat it or
    /// separate with commas), as Caffe's `-stage`: added to the net file's `state` stages (for
    /// finetune, to the solver's `train_state`; the test nets keep their `test_state`).
    #[arg(long = "stage", value_name = "STAGE", value_delimiter = ',')]
    pub(crate) stages: Vec<String>,
}

impl NetStateArgs {
    /// The flags for the library.
    pub(crate) fn flags(&self) -> flickr_style::caffe::net_state::StateFlags {
        flickr_style::caffe::net_state::StateFlags {
            level: self.level,
            stages: self.stages.clone(),
        }
    }
}

/// Where a net runs (finetune, test, time).
#[derive(Args)]
pub(crate) struct DeviceArgs {
    /// Run on GPU N (needs a build with `--features cuda`).
    #[arg(long)]
    pub(crate) gpu: Option<usize>,
    /// Let GPU matrix products use TF32 (faster, ~1e-3 relative error; off keeps Caffe's fp32 numbers).
    #[arg(long)]
    pub(crate) tf32: bool,
    /// bf16 mixed precision on the GPU: convolutions and inner products take bf16 inputs and
    /// accumulate in fp32; weights, the other layers and the SGD update stay fp32 (like PyTorch's
    /// autocast). For GPUs with bf16 tensor cores; products are off by a few 1e-3 relative.
    #[arg(long)]
    pub(crate) bf16: bool,
    /// Use the GPU code path (device-generic tensor ops) on the CPU: slower,
    /// for checking that path without a GPU.
    #[arg(long, hide = true, conflicts_with = "gpu")]
    pub(crate) tensor_ops: bool,
    /// With --tensor-ops, use the fused ops (their CPU twins on the CPU).
    #[arg(long, hide = true, requires = "tensor_ops")]
    pub(crate) fused_ops: bool,
}

impl DeviceArgs {
    /// `--gpu N` or the CPU, with `--tensor-ops`; applies `--tf32`.
    pub(crate) fn compute(&self) -> Result<Compute> {
        flickr_style::train::compute::set_tf32(self.tf32);
        let mut c = match self.gpu {
            Some(n) => Compute::gpu(n)?,
            None => Compute::cpu(),
        };
        c.tensor_ops |= self.tensor_ops;
        c.fused |= self.fused_ops;
        Ok(c.with_bf16(self.bf16)?)
    }
}

#[derive(Args)]
pub(crate) struct TestArgs {
    /// Net prototxt (its TEST phase is used).
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Trained .caffemodel(s), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) weights: Vec<PathBuf>,
    /// Batches to average over.
    #[arg(long, value_parser = at_least_one, default_value_t = 50)]
    pub(crate) iterations: usize,
    #[command(flatten)]
    pub(crate) state: NetStateArgs,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
}

#[derive(Args)]
pub(crate) struct EvaluateArgs {
    /// Net prototxt (its TEST phase is used, as by `test`).
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Trained .caffemodel(s), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) weights: Vec<PathBuf>,
    /// Class names, one per line in label order (e.g. Flickr Style's style_names.txt).
    #[arg(long)]
    pub(crate) names: Option<PathBuf>,
    /// Also write report.md, confusion.csv and metrics.json into this folder.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Run this many batches instead of one pass over the TEST source.
    #[arg(long, value_parser = at_least_one)]
    pub(crate) iterations: Option<usize>,
    /// Blob of class scores (default: the first bottom of the Accuracy, SoftmaxWithLoss or InfogainLoss layer).
    #[arg(long, requires = "label")]
    pub(crate) scores: Option<String>,
    /// Blob of labels (with --scores).
    #[arg(long, requires = "scores")]
    pub(crate) label: Option<String>,
    /// The k of the top-k accuracy.
    #[arg(long, value_parser = at_least_one, default_value_t = 5)]
    pub(crate) top_k: usize,
    /// Also report how many images get a prediction whose probability reaches this (e.g. 0.6),
    /// and how accurate those are; the rest would be left to a person.
    #[arg(long, value_parser = probability)]
    pub(crate) threshold: Option<f64>,
    /// Test-time augmentation: average each image's class probabilities over these views of it:
    /// none, mirror (left-right), rot90 (the four quarter turns; square inputs) or dihedral (the
    /// eight flips and turns), exact pixel moves that suit a net trained with --rotate90 or on
    /// subjects with no natural up; or affine:N, the image and N-1 evenly spread (quasi-random)
    /// warps of it and of its mirror image within --augment's plankton ranges, or affine:N:RANGES
    /// within others (RANGES as --augment takes them), for a net trained with --augment (the
    /// Kaggle plankton winners averaged 70). Each view costs a forward pass.
    #[arg(long, value_name = "VIEWS", default_value = "none")]
    pub(crate) tta: Tta,
    /// Evaluate on other data than the TEST layer's source, e.g. another cruise's images: an image
    /// list (`path label` lines; relative paths from the list's folder) for an ImageData net, an
    /// LMDB folder for a Data net (made like the training one).
    #[arg(long)]
    pub(crate) source: Option<PathBuf>,
    /// Treat each --weights file as its own model of this net (e.g. runs with other seeds or
    /// class weights) and average their probabilities over the same test images; without it the
    /// files are loaded into one net in turn, as `caffe test --weights a,b` does.
    #[arg(long)]
    pub(crate) ensemble: bool,
    #[command(flatten)]
    pub(crate) state: NetStateArgs,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
}

#[derive(Args)]
pub(crate) struct FeaturesArgs {
    /// Image files, or folders searched recursively for images, to save features of (new,
    /// unlabelled images), each prepared as `classify` prepares it; without them, the TEST data.
    pub(crate) images: Vec<PathBuf>,
    /// Net prototxt: the net as trained (its TEST phase runs; e.g. the pipeline's
    /// train_val.prototxt) or, with images, a deploy net with --mean or --mean-value.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Trained .caffemodel(s), comma-separated, loaded in turn.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) weights: Vec<PathBuf>,
    /// Blobs to save, comma-separated (e.g. fc7 or fc6,fc7; their values after the whole forward
    /// pass, so after an in-place ReLU, as extract_features saves them).
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) blobs: Vec<String>,
    /// Folder for <blob>.npy (float32, one row per image), images.csv (which image each row is,
    /// with its label) and, with --lmdb, <blob>_lmdb.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Other data than the TEST layer's source, as for `evaluate`.
    #[arg(long, conflicts_with = "images")]
    pub(crate) source: Option<PathBuf>,
    /// Run this many batches and keep every row, as extract_features' num_mini_batches (default:
    /// each image of the source once).
    #[arg(long, value_parser = at_least_one, conflicts_with = "images")]
    pub(crate) iterations: Option<usize>,
    /// Also write each blob as an LMDB in extract_features' layout (keys %010d, float_data Datums
    /// shaped like the blob), with each image's label, so a Data layer can train on them.
    #[arg(long)]
    pub(crate) lmdb: bool,
    /// Replace existing LMDBs.
    #[arg(long, requires = "lmdb")]
    pub(crate) force: bool,
    // With images: the size before the crop, as for `classify`.
    #[command(flatten)]
    pub(crate) resize: ResizeArgs,
    /// With images: read them as one gray channel.
    #[arg(long, requires = "images")]
    pub(crate) gray: bool,
    /// With images and a deploy net: the mean image its training subtracted (see `classify`).
    #[arg(long, conflicts_with = "mean_value", requires = "images")]
    pub(crate) mean: Option<PathBuf>,
    /// With images and a deploy net: per-channel means instead (e.g. 104,117,123).
    #[arg(long, value_delimiter = ',', requires = "images")]
    pub(crate) mean_value: Vec<f32>,
    /// With images: images per forward pass (default: the data layer's batch_size).
    #[arg(long, value_parser = at_least_one, requires = "images")]
    pub(crate) batch_size: Option<usize>,
    /// With images: fail, writing nothing, if any image cannot be read (default: skip it and say so).
    #[arg(long, requires = "images")]
    pub(crate) strict: bool,
    #[command(flatten)]
    pub(crate) state: NetStateArgs,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
}

#[derive(Args)]
pub(crate) struct ProbeArgs {
    /// The recipe's solver prototxt (its net holds both phases; its learning rate policy,
    /// momentum, weight decay, test interval and max_iter drive the probe's training).
    #[arg(long)]
    pub(crate) solver: PathBuf,
    /// Pretrained .caffemodel(s), comma-separated, loaded in turn (e.g. CaffeNet's).
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) weights: Vec<PathBuf>,
    /// Folder for the saved features (train_features/, test_features/), the probe's net and
    /// solver, its snapshot and probe.caffemodel (the pretrained net with the trained classifier).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Also train on these views of each training image, a row of saved features each (data
    /// augmentation for the probe; the forward pass over the training images runs once per
    /// view): mirror, rot90 (square inputs), dihedral (the eight flips and turns, for subjects
    /// with no natural up) or affine:N[:RANGES], as `evaluate --tta` takes them. Test images
    /// are seen once, unchanged.
    #[arg(long, value_name = "VIEWS", default_value = "none")]
    pub(crate) views: Tta,
    /// Iterations of the probe's training instead of the solver's max_iter (each one reads a
    /// batch of saved features: milliseconds).
    #[arg(long)]
    pub(crate) max_iter: Option<usize>,
    /// Write the probe's training metrics as JSON lines (see `finetune --metrics`).
    #[arg(long)]
    pub(crate) metrics: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) state: NetStateArgs,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
}

#[derive(Args)]
pub(crate) struct ClassifyArgs {
    /// Image files, or folders searched recursively for images.
    #[arg(required = true)]
    pub(crate) images: Vec<PathBuf>,
    /// The net as trained (e.g. data/<name>/train_val.prototxt from the pipeline): its TEST data
    /// layer's transform_param (crop, mean, scale) and resize are applied to each image.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Trained .caffemodel(s), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) weights: Vec<PathBuf>,
    /// The CSV to write (one row per image: its best classes and their probabilities); default:
    /// standard output.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Class names, one per line in label order (labels.txt, or style_names.txt).
    #[arg(long)]
    pub(crate) names: Option<PathBuf>,
    /// Classes to list per image.
    #[arg(long, value_parser = at_least_one, default_value_t = 3)]
    pub(crate) top_k: usize,
    /// Add a `confident` column: whether the best class's probability reaches this.
    #[arg(long, value_parser = probability)]
    pub(crate) threshold: Option<f64>,
    /// Test-time augmentation, as for `evaluate`.
    #[arg(long, value_name = "VIEWS", default_value = "none")]
    pub(crate) tta: Tta,
    /// Average the probabilities of each --weights file as its own model, as for `evaluate`.
    #[arg(long)]
    pub(crate) ensemble: bool,
    /// Average over ten crops of each image, as classify.py does by default: the four corners and
    /// the centre, and their mirror images (instead of the centre crop; needs a crop_size).
    #[arg(long, conflicts_with = "tta")]
    pub(crate) oversample: bool,
    #[command(flatten)]
    pub(crate) input: ImageInputArgs,
    /// Blob of class scores (default: the first bottom of the Accuracy or loss layer; for a deploy
    /// net, the output of its Softmax layer).
    #[arg(long)]
    pub(crate) scores: Option<String>,
    /// Fuse each image's probabilities with its original size (and measurements) by the model in
    /// this fusion.json from `fuse --out`; `measure`'s shape and texture are measured from each
    /// image. Use the --tta/--ensemble of the evaluation it was fitted on.
    #[arg(long)]
    pub(crate) fusion: Option<PathBuf>,
    /// With --fusion, the samples file (a `path` column and the model's measurement columns) for a
    /// model that uses a manifest's measurements besides the size.
    #[arg(long, requires = "fusion")]
    pub(crate) samples: Option<PathBuf>,
    /// Fail, writing nothing, if any image cannot be read (default: skip it and say so).
    #[arg(long)]
    pub(crate) strict: bool,
    #[command(flatten)]
    pub(crate) state: NetStateArgs,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
}

/// How image files become a net's input (`classify`, `explain`).
#[derive(Args)]
pub(crate) struct ImageInputArgs {
    // Size before the crop; default: the ImageData layer's new_height/new_width, or for a Data
    // layer its mean image's size (else 256x256, what to-lmdb and the pipeline store).
    #[command(flatten)]
    pub(crate) resize: ResizeArgs,
    /// Read the images as one gray channel.
    #[arg(long)]
    pub(crate) gray: bool,
    /// For a deploy net (an Input layer, as in Caffe's model zoo): the mean image its training
    /// subtracted, .binaryproto or .npy (e.g. the ILSVRC-2012 mean); images are resized to its
    /// size and centre-cropped to the Input shape.
    #[arg(long, conflicts_with = "mean_value")]
    pub(crate) mean: Option<PathBuf>,
    /// For a deploy net: per-channel means instead (e.g. 104,117,123); images are resized to
    /// 256x256 unless --resize-height/--resize-width say otherwise.
    #[arg(long, value_delimiter = ',')]
    pub(crate) mean_value: Vec<f32>,
    /// Images per forward pass (default: the data layer's batch_size).
    #[arg(long, value_parser = at_least_one)]
    pub(crate) batch_size: Option<usize>,
}

#[derive(Args)]
pub(crate) struct ExplainArgs {
    /// Image files, or folders searched recursively for images.
    #[arg(required_unless_present = "list", conflicts_with = "list")]
    pub(crate) images: Vec<PathBuf>,
    /// The net as trained (its TEST data layer says how an image becomes its input), or a deploy
    /// net with --mean or --mean-value, as for `classify`.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Trained .caffemodel.
    #[arg(long)]
    pub(crate) weights: PathBuf,
    /// Folder for the heat maps (<n>_<image>.png: the map over the image the net saw, blue to red),
    /// explain.csv, and maps.npy (the maps at the layer's resolution, a row each).
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// The blob whose channels make the map (default: the output of the last Convolution layer
    /// with a spatial output, after its ReLU: conv5 in CaffeNet, 13x13).
    #[arg(long)]
    pub(crate) layer: Option<String>,
    /// Explain this class in every image, by number or (with --names) by name (default: each
    /// image's best class).
    #[arg(long)]
    pub(crate) class: Option<String>,
    /// Class names, one per line in label order (labels.txt, or style_names.txt).
    #[arg(long)]
    pub(crate) names: Option<PathBuf>,
    /// Instead of images: an image list (`path label` lines, e.g. the pipeline's test.txt), so each
    /// image's true class is known: where it differs from the explained one, its map is drawn
    /// beside it.
    #[arg(long)]
    pub(crate) list: Option<PathBuf>,
    /// Folder the list's relative paths start from (as Caffe's root_folder; default: the current
    /// folder).
    #[arg(long, requires = "list")]
    pub(crate) root: Option<PathBuf>,
    /// With --list: only the images the net gets wrong (its best class is not the label), each
    /// with the maps of the class it gave and of the true one.
    #[arg(long, requires = "list")]
    pub(crate) mistakes: bool,
    /// Also find the object in each image (as `measure` does: the largest region standing out
    /// from the border's level; for plankton vignettes and other single objects on a plain
    /// background) and say how much of the map falls on it: explain.csv's object_share (the input
    /// it covers) and map_on_object (the map's mass on it; above object_share, the net looks at
    /// the object rather than the background).
    #[arg(long)]
    pub(crate) object: bool,
    #[command(flatten)]
    pub(crate) input: ImageInputArgs,
    /// Blob of class scores, as for `classify`; a Softmax output's logits are used.
    #[arg(long)]
    pub(crate) scores: Option<String>,
    /// Fail, writing nothing, if any image cannot be read (default: skip it and say so).
    #[arg(long)]
    pub(crate) strict: bool,
    #[command(flatten)]
    pub(crate) state: NetStateArgs,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
}

#[derive(Args)]
pub(crate) struct DeployArgs {
    /// The net as trained (train_val.prototxt).
    pub(crate) model: PathBuf,
    /// The deploy.prototxt to write.
    pub(crate) out: PathBuf,
    /// Images per forward pass in the Input layer's shape.
    #[arg(long, value_parser = at_least_one, default_value_t = 1)]
    pub(crate) batch: usize,
    #[command(flatten)]
    pub(crate) state: NetStateArgs,
}

#[derive(Args)]
pub(crate) struct PlotArgs {
    /// The runs to plot, then the SVG file to write (its name must end in .svg). A run is the
    /// metrics file of `finetune --metrics` (or `pipeline --metrics`), or a training log in
    /// Caffe's wording: `caffe train`'s output (e.g. `caffe train ... 2>&1 | tee train.log`) or
    /// `finetune --log`'s. Several runs are drawn over each other, a colour each (e.g. Caffe's
    /// run of a recipe beside ours, or two learning rates).
    #[arg(value_name = "FILE", num_args = 2.., required = true)]
    pub(crate) files: Vec<PathBuf>,
    /// Also write each run's records as CSV into this folder (as parse_log.py does):
    /// `<run>.train.csv` (iteration, loss, smoothed_loss, lr) and `<run>.test.csv` (iteration,
    /// net, then a column per test output).
    #[arg(long, value_name = "DIR")]
    pub(crate) csv: Option<PathBuf>,
}

#[derive(Args)]
pub(crate) struct TimeArgs {
    /// Net prototxt.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// The phase to time: train (forward, backward and the SGD update) or
    /// test (the forward pass alone, as test, evaluate, features and classify run it).
    #[arg(long, value_enum, default_value_t = TimePhase::Train)]
    pub(crate) phase: TimePhase,
    /// Passes to average (forward and backward in train, forward in test).
    #[arg(long, value_parser = at_least_one, default_value_t = 10)]
    pub(crate) iterations: usize,
    /// Replace Data/ImageData layers by inputs of the same shape (no data needed).
    #[arg(long)]
    pub(crate) synthetic: bool,
    #[command(flatten)]
    pub(crate) state: NetStateArgs,
    #[command(flatten)]
    pub(crate) device: DeviceArgs,
}

/// The net phase `time` builds.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum TimePhase {
    Train,
    Test,
}

impl From<TimePhase> for flickr_style::caffe::proto::Phase {
    fn from(p: TimePhase) -> Self {
        match p {
            TimePhase::Train => Self::Train,
            TimePhase::Test => Self::Test,
        }
    }
}

#[derive(Args)]
pub(crate) struct CheckOpsArgs {
    /// Check on GPU N (needs a build with `--features cuda`); without it the
    /// GPU code path runs on the CPU.
    #[arg(long)]
    pub(crate) gpu: Option<usize>,
    /// Seed for the random inputs.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
}

#[derive(Args)]
pub(crate) struct GetIlsvrcAuxArgs {
    /// Folder to unpack into (Caffe's data/ilsvrc12).
    #[arg(long, default_value = "data/ilsvrc12")]
    pub(crate) dir: PathBuf,
    /// Archive URL (a mirror or a local server).
    #[arg(long, default_value = ilsvrc_aux::DEFAULT_URL)]
    pub(crate) url: String,
    /// Expected SHA-256 of the archive.
    #[arg(long)]
    pub(crate) sha256: Option<String>,
}

/// A count that must be at least 1 (a batch, a number of passes or classes).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// [`at_least_one`] for the flags Caffe's prototxts hold as 32-bit numbers.
fn at_least_one_u32(s: &str) -> Result<u32, String> {
    let n = at_least_one(s)?;
    u32::try_from(n).map_err(|_| format!("must be at most {}", u32::MAX))
}

/// A probability threshold: above 0 and at most 1.
fn probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if p > 0.0 && p <= 1.0 {
        Ok(p)
    } else {
        Err("a probability threshold must be above 0 and at most 1".into())
    }
}
