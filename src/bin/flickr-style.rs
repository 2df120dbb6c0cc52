//! `flickr-style`: the command line over the `flickr_style` library. Each
//! subcommand replaces one step of Caffe's Flickr Style recipe.
use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use flickr_style::caffe::mean_file::{MeanImage, NpyDtype};
use flickr_style::pipeline::folders::FolderImportOptions;
use flickr_style::pipeline::manifest::ManifestImportOptions;
use flickr_style::pipeline::pad::{Pad, PadFill};
use flickr_style::pipeline::split::SplitOptions;
use flickr_style::pipeline::{fetch, ilsvrc_aux, mean, to_lmdb};
use flickr_style::train::augment::Augment;
use flickr_style::train::compute::{Compute, DeviceChoice};
use flickr_style::train::tta::Tta;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "flickr-style",
    version,
    about = "Caffe's fine-tune-CaffeNet-on-Flickr-Style workflow, fast and reliable"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert an image list to an LMDB of Caffe Datums (convert_imageset).
    ToLmdb(ToLmdbArgs),
    /// Compute the per-pixel mean of an LMDB or image list as mean.binaryproto (compute_image_mean).
    ComputeMean(ComputeMeanArgs),
    /// Convert a mean between NumPy .npy and Caffe .binaryproto (direction from the extensions).
    ConvertMean(ConvertMeanArgs),
    /// Select the Flickr Style subset like assemble_data.py and download it in parallel.
    Assemble(AssembleArgs),
    /// A folder-per-class dataset (ROOT/<class>/<image>, e.g. zooplankton) into train.txt, test.txt
    /// and labels.txt: labels from the sorted folder names, a seeded split stratified by class.
    ImportFolders(ImportFoldersArgs),
    /// A CSV/TSV manifest (one row per image: path, class, optional set) into train.txt, test.txt,
    /// val.txt and labels.txt, split like import-folders unless a set column decides.
    ImportManifest(ImportManifestArgs),
    /// Class weights for a class-weighted loss: a training list's label counts as the diagonal
    /// matrix H of Caffe's InfogainLoss layer (weight proportional to count^-alpha).
    ClassWeights(ClassWeightsArgs),
    /// A caffemodel for one-channel (gray) input: a convolution's filters summed over their input
    /// channels, so that it reads one gray channel as it read three equal ones (see `pipeline --gray`).
    GrayWeights(GrayWeightsArgs),
    /// Download a model zoo caffemodel named in DIR/readme.md and verify its SHA-1 (download_model_binary.py).
    DownloadModel(DownloadModelArgs),
    /// The whole recipe: assemble Flickr Style (or import class folders or a manifest),
    /// compute-mean, (to-lmdb), fetch CaffeNet, finetune, evaluate; also writes a deploy net.
    Pipeline(Box<PipelineArgs>),
    /// Train or fine-tune a net from a Caffe solver prototxt (caffe train).
    Finetune(FinetuneArgs),
    /// Score a net's TEST phase with trained weights (caffe test).
    Test(TestArgs),
    /// Per-class report of trained weights over the TEST data: confusion matrix, precision,
    /// recall, F1, top-k and mean per-class accuracy.
    Evaluate(EvaluateArgs),
    /// Predict the classes of new, unlabelled images with trained weights (classify.py): the
    /// net as trained (its TEST data layer says how an image becomes its input) or a deploy net
    /// with --mean; writes a CSV of the top classes.
    Classify(ClassifyArgs),
    /// Late fusion: whether each image's original size (and measurements a manifest carries)
    /// add to the net's probabilities, by a cross-validated logistic regression on an evaluated
    /// set (evaluate --out's probabilities.csv with the dataset's samples.csv).
    Fuse(FuseArgs),
    /// Write the deploy net of a trained net (its TEST layers with an Input layer in place of the
    /// data layer, no label layers, a Softmax `prob`), which Caffe, pycaffe and OpenCV's dnn
    /// module load with the .caffemodel.
    Deploy(DeployArgs),
    /// Time forward and backward passes, layer by layer (caffe time).
    Time(TimeArgs),
    /// Plot a `finetune --metrics` file as SVG: training and test losses, test scores, learning rate.
    Plot(PlotArgs),
    /// Check every layer's GPU code path against the CPU kernels (on --gpu N, or on the CPU).
    CheckOps(CheckOpsArgs),
    /// Download and unpack Caffe's ILSVRC-2012 aux data: ImageNet mean and synsets (get_ilsvrc_aux.sh).
    GetIlsvrcAux(GetIlsvrcAuxArgs),
}

#[derive(Args)]
struct ClassWeightsArgs {
    /// Training list (`path label` per line, e.g. train.txt from import-folders).
    list: PathBuf,
    /// The .binaryproto to write; an InfogainLoss layer reads it from
    /// `infogain_loss_param { source: ... }`.
    out: PathBuf,
    /// Number of classes (the classifier's num_output).
    #[arg(long)]
    classes: usize,
    /// Exponent: each class weighs count^-alpha, scaled so the mean weight per image is 1
    /// (1: inverse frequency, 0.5: its square root, 0: no weighting).
    #[arg(long, default_value_t = 1.0)]
    alpha: f64,
    /// Class names, one per line in label order (labels.txt), for the printed table.
    #[arg(long)]
    names: Option<PathBuf>,
}

#[derive(Args)]
struct GrayWeightsArgs {
    /// The .caffemodel to convert (e.g. bvlc_reference_caffenet.caffemodel).
    weights: PathBuf,
    /// The .caffemodel to write.
    out: PathBuf,
    /// The layer whose filters to sum: the convolution that reads the data.
    #[arg(long, default_value = "conv1")]
    layer: String,
}

#[derive(Args)]
struct FuseArgs {
    /// probabilities.csv from `evaluate --out` (or the pipeline's evaluation folder) over images
    /// the net did not train on, e.g. the test list.
    probabilities: PathBuf,
    /// samples.csv from import-folders or import-manifest (the images' original sizes and the
    /// manifest's other columns).
    #[arg(long)]
    samples: PathBuf,
    /// A numeric column of samples.csv to use as a feature too (repeatable), e.g. a manifest's
    /// area or major axis.
    #[arg(long = "feature", value_name = "COLUMN")]
    features: Vec<String>,
    /// Leave out ln(width) and ln(height): use only the --feature columns.
    #[arg(long)]
    no_size: bool,
    /// Cross-validation folds, stratified by class.
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Seed of the fold assignment.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// L2 penalty on the feature weights and class biases (keeps a small set from overfitting).
    #[arg(long, default_value_t = 1e-3)]
    l2: f64,
    /// Also write fusion.md, fusion.json (scores and the model fitted on all images) and fused.csv
    /// (out-of-fold fused probabilities) into this folder.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct ImportFoldersArgs {
    /// Dataset folder: one sub-folder of images per class (nested folders inside a class count too).
    root: PathBuf,
    /// Folder for train.txt, test.txt (absolute image paths) and labels.txt (class names in label order).
    out: PathBuf,
    /// Seed of the split and of any re-sampling (the same seed gives the same lists).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    split: SplitArgs,
}

#[derive(Args)]
struct ImportManifestArgs {
    /// The manifest: CSV with a header row (tab-separated when it ends in .tsv or .tab).
    manifest: PathBuf,
    /// Folder for the lists (absolute image paths) and labels.txt (class names in label order).
    out: PathBuf,
    #[command(flatten)]
    columns: ManifestColumns,
    /// Seed of the split and of any re-sampling (the same seed gives the same lists).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[command(flatten)]
    split: SplitArgs,
}

/// Which manifest columns say what (import-manifest, pipeline --manifest).
#[derive(Args)]
struct ManifestColumns {
    /// Column of image paths (relative ones resolve from --manifest-root).
    #[arg(long, default_value = "path")]
    path_column: String,
    /// Column of class names (labels follow their sorted order, numeric when all are numbers).
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Column naming each row's set: train, val or test (empty: split here with --test-fraction).
    #[arg(long)]
    set_column: Option<String>,
    /// Folder relative paths resolve from [default: the manifest's folder].
    #[arg(long)]
    manifest_root: Option<PathBuf>,
}

impl ManifestColumns {
    fn options(&self, manifest: PathBuf, split: SplitOptions) -> ManifestImportOptions {
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
struct SplitArgs {
    /// Share of each class held out for test.txt (each class keeps at least one training image).
    #[arg(long, default_value_t = 0.2)]
    test_fraction: f64,
    /// Skip decoding every image (faster; unreadable images then surface in training).
    #[arg(long)]
    no_check: bool,
    /// Fail on the first unreadable image instead of skipping and listing it.
    #[arg(long, conflicts_with = "no_check")]
    strict: bool,
    /// Oversample: repeat a class's training images until it has at least N lines in train.txt.
    #[arg(long, default_value_t = 0)]
    min_train_per_class: usize,
    /// Undersample: keep at most N training images per class.
    #[arg(long)]
    max_train_per_class: Option<usize>,
    /// Tempered re-sampling of train.txt for imbalanced classes: class c gets lines in proportion
    /// to n_c^ALPHA, the total unchanged (1: as the data is, 0: every class equal, 0.5: between);
    /// applied before --max/--min-train-per-class.
    #[arg(long, value_name = "ALPHA")]
    balance_alpha: Option<f64>,
}

impl SplitArgs {
    fn options(&self, out: PathBuf, seed: u64) -> SplitOptions {
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
struct ToLmdbArgs {
    /// Folder prepended to every path in LIST (Caffe's ROOTFOLDER; keep a trailing slash or not, both work).
    root: PathBuf,
    /// Image list: one `relative/path label` per line.
    list: PathBuf,
    /// LMDB folder to create (must not exist unless --force).
    db: PathBuf,
    #[command(flatten)]
    resize: ResizeArgs,
    /// Store one-channel (grayscale) images instead of BGR.
    #[arg(long)]
    gray: bool,
    /// Shuffle the list before converting (seeded by --seed; Caffe's shuffle is unseeded).
    #[arg(long)]
    shuffle: bool,
    /// Seed for --shuffle.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Store encoded images (the original file bytes when nothing changes) instead of raw pixels.
    #[arg(long)]
    encoded: bool,
    /// Encoding for --encoded: jpg, png or bmp (default: each file's own extension).
    #[arg(long, default_value = "")]
    encode_type: String,
    /// Fail if datums differ in size.
    #[arg(long)]
    check_size: bool,
    /// Fail on the first unreadable image instead of skipping it.
    #[arg(long)]
    strict: bool,
    /// Replace DB if it exists (only once the new one is complete).
    #[arg(long)]
    force: bool,
}

/// `--resize-height/--resize-width`, shared by the commands that read images.
#[derive(Args)]
struct ResizeArgs {
    /// Resize every image to this height first (needs --resize-width too), with OpenCV's bilinear.
    #[arg(long, default_value_t = 0)]
    resize_height: usize,
    /// Resize every image to this width first (needs --resize-height too).
    #[arg(long, default_value_t = 0)]
    resize_width: usize,
    /// Keep each image's aspect ratio: scale it to fit inside the --resize size (elongated
    /// plankton are not squashed), then pad it to that size (without a size: to a square). FILL is
    /// `border` (each channel's mean over the image's edge pixels: the background) or a value
    /// 0-255. Beyond Caffe; the stored datums are plain images Caffe reads.
    #[arg(long, value_name = "FILL")]
    pad_square: Option<PadFill>,
    /// With --pad-square: never enlarge an image smaller than the target, only pad it, so the
    /// organism's size in pixels stays a signal.
    #[arg(long, requires = "pad_square")]
    no_upscale: bool,
}

impl ResizeArgs {
    /// The padding, when asked for.
    fn pad(&self) -> Option<Pad> {
        self.pad_square.map(|fill| Pad {
            fill,
            upscale: !self.no_upscale,
        })
    }

    /// `(height, width)` when both are given, `None` when neither is.
    fn get(&self) -> Result<Option<(usize, usize)>> {
        match (self.resize_height, self.resize_width) {
            (0, 0) => Ok(None),
            (h, w) if h > 0 && w > 0 => Ok(Some((h, w))),
            _ => bail!("--resize-height and --resize-width must be given together"),
        }
    }
}

#[derive(Args)]
struct ComputeMeanArgs {
    /// An LMDB folder, or an image list (then use --root and the --resize options).
    input: PathBuf,
    /// The mean.binaryproto to write.
    output: PathBuf,
    /// Root folder for an image-list INPUT.
    #[arg(long)]
    root: Option<PathBuf>,
    #[command(flatten)]
    resize: ResizeArgs,
    /// Read list images as grayscale.
    #[arg(long)]
    gray: bool,
    /// Also write the mean as a NumPy .npy (float32, shape 1xCxHxW).
    #[arg(long)]
    npy: Option<PathBuf>,
}

#[derive(Args)]
struct ConvertMeanArgs {
    /// Input: .npy or .binaryproto.
    input: PathBuf,
    /// Output: .binaryproto or .npy.
    output: PathBuf,
    /// Element type of a written .npy.
    #[arg(long, value_enum, default_value = "f4")]
    dtype: NpyDtype,
}

#[derive(Args)]
struct AssembleArgs {
    /// Number of images to select (-1 = all 80,000).
    #[arg(short = 'i', long, default_value_t = -1, allow_negative_numbers = true)]
    images: i64,
    /// NumPy seed of the selection (assemble_data.py's --seed).
    #[arg(short = 's', long, default_value_t = 0)]
    seed: u32,
    /// Keep only labels below this (0 = all 20 styles).
    #[arg(short = 'l', long, default_value_t = 0)]
    labels: i32,
    /// Concurrent downloads; 0 or negative (Caffe's --workers=-1) means the default of 128.
    #[arg(
        short = 'w',
        long,
        default_value_t = 128,
        allow_negative_numbers = true
    )]
    workers: i64,
    /// The CSV: a path or http(s) URL, gzip or plain (default: OUT/flickr_style.csv.gz, downloaded from Caffe's repository if absent).
    #[arg(long)]
    csv: Option<String>,
    /// Output folder: images/, train.txt, test.txt, manifest.jsonl.
    #[arg(long, default_value = "data/flickr_style")]
    out: PathBuf,
    /// Fetch the same URL paths from this base URL (a mirror) instead of Flickr.
    #[arg(long)]
    mirror: Option<String>,
    /// Also treat bodies with this SHA-1 as a placeholder (repeatable).
    #[arg(long)]
    placeholder_sha1: Vec<String>,
    /// Seconds allowed to connect.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Longest silence in seconds while reading a body.
    #[arg(long, default_value_t = 20.0)]
    read_timeout: f64,
    /// Longest time in seconds for one whole attempt.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Attempts per image for transient failures (timeouts, resets, 5xx, 429).
    #[arg(long, default_value_t = 4)]
    attempts: u32,
    /// First retry delay in seconds (doubled each retry, with seeded jitter).
    #[arg(long, default_value_t = 0.5)]
    backoff: f64,
    /// Largest accepted image in bytes; bigger bodies count as missing.
    #[arg(long, default_value_t = 32 << 20)]
    max_image_bytes: u64,
    /// Print the selection (id,url,label,split) and download nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct DownloadModelArgs {
    /// Model folder holding readme.md (e.g. models/bvlc_reference_caffenet).
    dir: PathBuf,
    /// Download from this URL instead of the readme's caffemodel_url (a mirror).
    #[arg(long)]
    url: Option<String>,
}

#[derive(Args)]
struct PipelineArgs {
    /// Images to select (-1 = all 80,000).
    #[arg(
        short = 'i',
        long,
        default_value_t = 2000,
        allow_negative_numbers = true
    )]
    images: i64,
    /// NumPy seed of the selection (assemble_data.py's --seed); also seeds training.
    #[arg(short = 's', long, default_value_t = 831486)]
    seed: u32,
    /// Keep only labels below this (0 = all 20 styles).
    #[arg(short = 'l', long, default_value_t = 0)]
    labels: i32,
    /// Data folder for images, lists, mean, LMDBs, snapshots and the evaluation
    /// [default: data/flickr_style, or data/<name of the --folders folder>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Train on this folder-per-class dataset (ROOT/<class>/<image>, e.g. zooplankton) instead of
    /// Flickr Style: it is split like `import-folders` does, and the classifier gets one output per class.
    #[arg(long, value_name = "ROOT", conflicts_with_all = ["csv", "mirror", "manifest"])]
    folders: Option<PathBuf>,
    /// Train on the images a CSV/TSV manifest lists instead (see `import-manifest --help`), with
    /// --path-column, --label-column, --set-column and --manifest-root.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["csv", "mirror"])]
    manifest: Option<PathBuf>,
    #[command(flatten)]
    columns: ManifestColumns,
    #[command(flatten)]
    split: SplitArgs,
    /// Class names for the evaluation report, one per line in label order (e.g. Flickr Style's
    /// style_names.txt; with --folders, labels.txt is used).
    #[arg(long)]
    names: Option<PathBuf>,
    /// The Flickr Style CSV (path or URL); default: OUT/flickr_style.csv.gz or Caffe's repository.
    #[arg(long)]
    csv: Option<String>,
    /// Fetch images from this mirror base URL instead of Flickr.
    #[arg(long)]
    mirror: Option<String>,
    /// Concurrent downloads.
    #[arg(long, default_value_t = 128)]
    workers: usize,
    /// Folder with Caffe's finetune_flickr_style train_val.prototxt and solver.prototxt.
    #[arg(long, default_value = "models/finetune_flickr_style")]
    recipe: PathBuf,
    /// Pretrained weights (default: download bvlc_reference_caffenet.caffemodel).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// URL of bvlc_reference_caffenet.caffemodel (a mirror).
    #[arg(long, default_value = flickr_style::workflow::CAFFENET_URL)]
    weights_url: String,
    /// Convert the lists to LMDBs and train from those.
    #[arg(long)]
    lmdb: bool,
    /// Fit images inside 256x256 keeping their aspect ratio and pad them with FILL (see `to-lmdb
    /// --help`); trains from LMDBs, since Caffe's ImageData layer cannot pad.
    #[arg(long, value_name = "FILL")]
    pad_square: Option<PadFill>,
    /// With --pad-square: never enlarge small images, only pad them.
    #[arg(long, requires = "pad_square")]
    no_upscale: bool,
    /// Read the images as one gray channel (plankton cameras are gray) and train a one-channel
    /// CaffeNet: conv1's filters are summed over their input channels (the same numbers as three
    /// equal channels, with a third of conv1's work and of the LMDBs), and learn with lr_mult x3
    /// and decay_mult /3, so training matches the three-channel net. Outputs are tagged _gray.
    #[arg(long)]
    gray: bool,
    /// Turn each training image by a random multiple of 90° (see `finetune --help`).
    #[arg(long)]
    rotate90: bool,
    /// Cyclic pooling (beyond Caffe; the Kaggle plankton winners' nets): a CyclicSlice layer feeds
    /// the convolutions each image in its four quarter turns and a CyclicPool layer averages them
    /// before fc6, so the net is invariant to quarter turns; four times the convolutions' work
    /// (consider a smaller --batch-size). Caffe cannot read such a net. Outputs are tagged _cyclic.
    #[arg(long)]
    cyclic: bool,
    /// Warp each training image by a random affine map (see `finetune --help`); outputs are
    /// tagged _aug<SPEC>.
    #[arg(long, value_name = "SPEC")]
    augment: Option<Augment>,
    /// Test-time augmentation for the final evaluation (see `evaluate --help`); its report goes
    /// to evaluation*_tta_<VIEWS> (e.g. _tta_dihedral, _tta_affine70).
    #[arg(long, value_name = "VIEWS", default_value = "none")]
    tta: Tta,
    /// Train with a class-weighted loss: the recipe's SoftmaxWithLoss becomes Caffe's InfogainLoss
    /// with each class weighing count^-ALPHA in train.txt (1: inverse frequency, 0.5: its square
    /// root; see `class-weights`). Outputs are tagged _cw<ALPHA>.
    #[arg(long, value_name = "ALPHA")]
    class_weights: Option<f64>,
    /// Override the nets' batch_size.
    #[arg(long)]
    batch_size: Option<u32>,
    /// Override the solver's max_iter.
    #[arg(long)]
    max_iter: Option<usize>,
    /// Override test_iter.
    #[arg(long)]
    test_iter: Option<i32>,
    /// Override test_interval.
    #[arg(long)]
    test_interval: Option<i32>,
    /// Override snapshot (iterations between snapshots).
    #[arg(long)]
    snapshot: Option<i32>,
    /// Append training metrics (JSON lines) to this file.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Fine-tune on GPU N (needs a build with `--features cuda`).
    #[arg(long)]
    gpu: Option<usize>,
    /// Let the GPU's matrix products use TF32 (see `finetune --help`).
    #[arg(long, requires = "gpu")]
    tf32: bool,
    /// bf16 mixed precision on the GPU (see `finetune --help`).
    #[arg(long, requires = "gpu")]
    bf16: bool,
}

#[derive(Args)]
struct FinetuneArgs {
    /// The solver prototxt (paths inside are relative to the current folder, like Caffe, or to the solver's folder).
    #[arg(long)]
    solver: PathBuf,
    /// Pretrained .caffemodel(s) to copy weights from by layer name (comma-separated, applied in order).
    #[arg(long, value_delimiter = ',', conflicts_with = "snapshot")]
    weights: Vec<PathBuf>,
    /// Resume from this .solverstate (exactly, when its .resume.json sidecar is beside it).
    #[arg(long)]
    snapshot: Option<PathBuf>,
    /// Append per-iteration metrics to this file: a JSON line per iteration (phase, iter, loss,
    /// smoothed_loss, lr, outputs, elapsed_s = seconds since the solver started) and per test phase.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Also write the log to this file.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Override the solver's snapshot_prefix.
    #[arg(long)]
    snapshot_prefix: Option<String>,
    /// Override the solver's max_iter.
    #[arg(long)]
    max_iter: Option<usize>,
    /// Turn each training image by a random multiple of 90° after Caffe's crop and mirror (with
    /// mirroring: all eight flips and turns, exact, no interpolation), for subjects with no natural
    /// up such as plankton. Beyond Caffe; needs square inputs (a crop_size, or square images).
    #[arg(long)]
    rotate90: bool,
    /// Warp each training image by a random affine map after Caffe's steps (beyond Caffe):
    /// `plankton` (the Kaggle plankton winners' ranges: any rotation, scale 1/1.6-1.6, shear ±20°,
    /// stretch 1/1.3-1.3, shift ±10 px) or key=value pairs, e.g. `rotate=180,scale=1.2` (keys:
    /// rotate, scale, shear, translate, stretch). Bilinear; pixels from outside read the mean.
    #[arg(long, value_name = "SPEC")]
    augment: Option<Augment>,
    #[command(flatten)]
    device: DeviceArgs,
    /// Train on the CPU even if the solver says solver_mode: GPU (without
    /// --gpu, a CUDA build follows the solver's solver_mode/device_id, like Caffe).
    #[arg(long, conflicts_with = "gpu")]
    cpu: bool,
}

/// Where a net runs (finetune, test, time).
#[derive(Args)]
struct DeviceArgs {
    /// Run on GPU N (needs a build with `--features cuda`).
    #[arg(long)]
    gpu: Option<usize>,
    /// Let GPU matrix products use TF32 (faster, ~1e-3 relative error; off keeps Caffe's fp32 numbers).
    #[arg(long)]
    tf32: bool,
    /// bf16 mixed precision on the GPU: convolutions and inner products take bf16 inputs and
    /// accumulate in fp32; weights, the other layers and the SGD update stay fp32 (like PyTorch's
    /// autocast). For GPUs with bf16 tensor cores; products are off by a few 1e-3 relative.
    #[arg(long)]
    bf16: bool,
    /// Use the GPU code path (device-generic tensor ops) on the CPU: slower,
    /// for checking that path without a GPU.
    #[arg(long, hide = true, conflicts_with = "gpu")]
    tensor_ops: bool,
    /// With --tensor-ops, use the fused ops (their CPU twins on the CPU).
    #[arg(long, hide = true, requires = "tensor_ops")]
    fused_ops: bool,
}

impl DeviceArgs {
    /// `--gpu N` or the CPU, with `--tensor-ops`; applies `--tf32`.
    fn compute(&self) -> Result<Compute> {
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
struct TestArgs {
    /// Net prototxt (its TEST phase is used).
    #[arg(long)]
    model: PathBuf,
    /// Trained .caffemodel(s), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    weights: Vec<PathBuf>,
    /// Batches to average over.
    #[arg(long, default_value_t = 50)]
    iterations: usize,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct EvaluateArgs {
    /// Net prototxt (its TEST phase is used, as by `test`).
    #[arg(long)]
    model: PathBuf,
    /// Trained .caffemodel(s), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    weights: Vec<PathBuf>,
    /// Class names, one per line in label order (e.g. Flickr Style's style_names.txt).
    #[arg(long)]
    names: Option<PathBuf>,
    /// Also write report.md, confusion.csv and metrics.json into this folder.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run this many batches instead of one pass over the TEST source.
    #[arg(long)]
    iterations: Option<usize>,
    /// Blob of class scores (default: the first bottom of the Accuracy, SoftmaxWithLoss or InfogainLoss layer).
    #[arg(long, requires = "label")]
    scores: Option<String>,
    /// Blob of labels (with --scores).
    #[arg(long, requires = "scores")]
    label: Option<String>,
    /// The k of the top-k accuracy.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Also report how many images get a prediction whose probability reaches this (e.g. 0.6),
    /// and how accurate those are; the rest would be left to a person.
    #[arg(long)]
    threshold: Option<f64>,
    /// Test-time augmentation: average each image's class probabilities over these views of it:
    /// none, mirror (left-right), rot90 (the four quarter turns; square inputs) or dihedral (the
    /// eight flips and turns), exact pixel moves that suit a net trained with --rotate90 or on
    /// subjects with no natural up; or affine:N, the image and N-1 evenly spread (quasi-random)
    /// warps of it and of its mirror image within --augment's plankton ranges, or affine:N:RANGES
    /// within others (RANGES as --augment takes them), for a net trained with --augment (the
    /// Kaggle plankton winners averaged 70). Each view costs a forward pass.
    #[arg(long, value_name = "VIEWS", default_value = "none")]
    tta: Tta,
    /// Evaluate on other data than the TEST layer's source, e.g. another cruise's images: an image
    /// list (`path label` lines; relative paths from the list's folder) for an ImageData net, an
    /// LMDB folder for a Data net (made like the training one).
    #[arg(long)]
    source: Option<PathBuf>,
    /// Treat each --weights file as its own model of this net (e.g. runs with other seeds or
    /// class weights) and average their probabilities over the same test images; without it the
    /// files are loaded into one net in turn, as `caffe test --weights a,b` does.
    #[arg(long)]
    ensemble: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct ClassifyArgs {
    /// Image files, or folders searched recursively for images.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// The net as trained (e.g. data/<name>/train_val.prototxt from the pipeline): its TEST data
    /// layer's transform_param (crop, mean, scale) and resize are applied to each image.
    #[arg(long)]
    model: PathBuf,
    /// Trained .caffemodel(s), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    weights: Vec<PathBuf>,
    /// The CSV to write (one row per image: its best classes and their probabilities); default:
    /// standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Class names, one per line in label order (labels.txt, or style_names.txt).
    #[arg(long)]
    names: Option<PathBuf>,
    /// Classes to list per image.
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    /// Add a `confident` column: whether the best class's probability reaches this.
    #[arg(long)]
    threshold: Option<f64>,
    /// Test-time augmentation, as for `evaluate`.
    #[arg(long, value_name = "VIEWS", default_value = "none")]
    tta: Tta,
    /// Average the probabilities of each --weights file as its own model, as for `evaluate`.
    #[arg(long)]
    ensemble: bool,
    /// Average over ten crops of each image, as classify.py does by default: the four corners and
    /// the centre, and their mirror images (instead of the centre crop; needs a crop_size).
    #[arg(long, conflicts_with = "tta")]
    oversample: bool,
    // Size before the crop; default: the ImageData layer's new_height/new_width, or for a Data
    // layer its mean image's size (else 256x256, what to-lmdb and the pipeline store).
    #[command(flatten)]
    resize: ResizeArgs,
    /// Read the images as one gray channel.
    #[arg(long)]
    gray: bool,
    /// For a deploy net (an Input layer, as in Caffe's model zoo): the mean image its training
    /// subtracted, .binaryproto or .npy (e.g. the ILSVRC-2012 mean); images are resized to its
    /// size and centre-cropped to the Input shape.
    #[arg(long, conflicts_with = "mean_value")]
    mean: Option<PathBuf>,
    /// For a deploy net: per-channel means instead (e.g. 104,117,123); images are resized to
    /// 256x256 unless --resize-height/--resize-width say otherwise.
    #[arg(long, value_delimiter = ',')]
    mean_value: Vec<f32>,
    /// Blob of class scores (default: the first bottom of the Accuracy or loss layer; for a deploy
    /// net, the output of its Softmax layer).
    #[arg(long)]
    scores: Option<String>,
    /// Images per forward pass (default: the data layer's batch_size).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Fuse each image's probabilities with its original size (and measurements) by the model in
    /// this fusion.json from `fuse --out`. Use the --tta/--ensemble of the evaluation it was fitted
    /// on.
    #[arg(long)]
    fusion: Option<PathBuf>,
    /// With --fusion, the samples file (a `path` column and the model's measurement columns) for a
    /// model that uses measurements besides the size.
    #[arg(long, requires = "fusion")]
    samples: Option<PathBuf>,
    /// Fail, writing nothing, if any image cannot be read (default: skip it and say so).
    #[arg(long)]
    strict: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct DeployArgs {
    /// The net as trained (train_val.prototxt).
    model: PathBuf,
    /// The deploy.prototxt to write.
    out: PathBuf,
    /// Images per forward pass in the Input layer's shape.
    #[arg(long, default_value_t = 1)]
    batch: usize,
}

#[derive(Args)]
struct PlotArgs {
    /// The JSON-lines metrics file written by `finetune --metrics` (or `pipeline --metrics`).
    metrics: PathBuf,
    /// The SVG file to write.
    out: PathBuf,
}

#[derive(Args)]
struct TimeArgs {
    /// Net prototxt (its TRAIN phase is timed).
    #[arg(long)]
    model: PathBuf,
    /// Forward-backward passes to average.
    #[arg(long, default_value_t = 10)]
    iterations: usize,
    /// Replace Data/ImageData layers by inputs of the same shape (no data needed).
    #[arg(long)]
    synthetic: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
struct CheckOpsArgs {
    /// Check on GPU N (needs a build with `--features cuda`); without it the
    /// GPU code path runs on the CPU.
    #[arg(long)]
    gpu: Option<usize>,
    /// Seed for the random inputs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct GetIlsvrcAuxArgs {
    /// Folder to unpack into (Caffe's data/ilsvrc12).
    #[arg(long, default_value = "data/ilsvrc12")]
    dir: PathBuf,
    /// Archive URL (a mirror or a local server).
    #[arg(long, default_value = ilsvrc_aux::DEFAULT_URL)]
    url: String,
    /// Expected SHA-256 of the archive.
    #[arg(long)]
    sha256: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e)
            if e.downcast_ref::<flickr_style::Error>()
                .is_some_and(|e| matches!(e, flickr_style::Error::Interrupted)) =>
        {
            eprintln!("interrupted: the lists and manifest hold what finished; rerun to resume");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if matches!(
        cli.command,
        Command::Finetune(_)
            | Command::Pipeline(_)
            | Command::Test(_)
            | Command::Evaluate(_)
            | Command::Classify(_)
            | Command::Time(_)
    ) {
        flickr_style::train::memory::reuse_large_allocations();
    }
    match cli.command {
        Command::ToLmdb(a) => cmd_to_lmdb(a),
        Command::ComputeMean(a) => cmd_compute_mean(a),
        Command::ConvertMean(a) => cmd_convert_mean(a),
        Command::GetIlsvrcAux(a) => cmd_get_ilsvrc_aux(a),
        Command::Assemble(a) => cmd_assemble(a),
        Command::ImportFolders(a) => cmd_import_folders(a),
        Command::ImportManifest(a) => {
            use flickr_style::pipeline::manifest::import_manifest;
            let opts = a
                .columns
                .options(a.manifest.clone(), a.split.options(a.out.clone(), a.seed));
            let s = import_manifest(&opts)
                .with_context(|| format!("import-manifest {}", a.manifest.display()))?;
            print!("{}", s.to_markdown());
            eprintln!("wrote the lists and labels.txt into {}", a.out.display());
            Ok(())
        }
        Command::Finetune(a) => cmd_finetune(a),
        Command::Pipeline(a) => cmd_pipeline(*a),
        Command::Test(a) => cmd_test(a),
        Command::Evaluate(a) => cmd_evaluate(a),
        Command::Classify(a) => cmd_classify(a),
        Command::Deploy(a) => {
            let def = flickr_style::caffe::model::read_net_prototxt(&a.model)?;
            let base_dir = flickr_style::train::commands::base_dir_for(&a.model);
            let (net, comment) =
                flickr_style::train::deploy::deploy_net(&def, a.batch.max(1), &a.model, &base_dir)?;
            let text = comment + &flickr_style::caffe::prototxt::to_string(&net);
            flickr_style::fsutil::write_atomic(&a.out, text.as_bytes())?;
            eprintln!("wrote {}", a.out.display());
            Ok(())
        }
        Command::Time(a) => cmd_time(a),
        Command::Plot(a) => {
            flickr_style::train::plot::plot_metrics(&a.metrics, &a.out)?;
            eprintln!("wrote {}", a.out.display());
            Ok(())
        }
        Command::CheckOps(a) => cmd_check_ops(a),
        Command::DownloadModel(a) => cmd_download_model(a),
        Command::ClassWeights(a) => cmd_class_weights(a),
        Command::GrayWeights(a) => {
            let mut w = flickr_style::caffe::model::read_caffemodel(&a.weights)?;
            let (before, after) = flickr_style::train::gray::gray_weights(
                &mut w,
                &a.layer,
                &a.weights.display().to_string(),
            )?;
            flickr_style::caffe::write_binary(&a.out, &w)?;
            eprintln!(
                "{}: {before} -> {after}; wrote {}. In the net, read one channel (is_color: false, or \
                 to-lmdb --gray) and give {}'s weights lr_mult x3 and decay_mult /3 to train as the \
                 three-channel net would",
                a.layer,
                a.out.display(),
                a.layer
            );
            Ok(())
        }
        Command::Fuse(a) => {
            use flickr_style::train::fusion::{fuse, FuseOptions};
            let f = fuse(&FuseOptions {
                probabilities: a.probabilities.clone(),
                samples: a.samples,
                size: !a.no_size,
                features: a.features,
                folds: a.folds,
                seed: a.seed,
                l2: a.l2,
            })
            .with_context(|| format!("fuse {}", a.probabilities.display()))?;
            print!("{}", f.to_markdown());
            if let Some(dir) = &a.out {
                f.write(dir)?;
                eprintln!(
                    "wrote fusion.md, fusion.json and fused.csv into {}",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

fn cmd_class_weights(a: ClassWeightsArgs) -> Result<()> {
    use flickr_style::pipeline::class_weights::{to_markdown, write_class_weights};
    if a.classes == 0 {
        bail!("--classes must be at least 1");
    }
    let names = match &a.names {
        Some(p) => flickr_style::train::evaluate::read_class_names(p, a.classes)?,
        None => Vec::new(),
    };
    let (counts, weights) = write_class_weights(&a.list, a.classes, a.alpha, &a.out)
        .with_context(|| format!("class-weights {}", a.list.display()))?;
    print!("{}", to_markdown(&counts, &weights, &names));
    eprintln!(
        "wrote {}; use it in the net as\n  layer {{ name: \"loss\" type: \"InfogainLoss\" bottom: <scores> bottom: \"label\" top: \"loss\" infogain_loss_param {{ source: \"{}\" }} }}",
        a.out.display(),
        a.out.display()
    );
    Ok(())
}

fn cmd_import_folders(a: ImportFoldersArgs) -> Result<()> {
    use flickr_style::pipeline::folders::import_folders;
    let opts = FolderImportOptions {
        root: a.root.clone(),
        split: a.split.options(a.out.clone(), a.seed),
    };
    let s =
        import_folders(&opts).with_context(|| format!("import-folders {}", a.root.display()))?;
    print!("{}", s.to_markdown());
    eprintln!(
        "wrote {}, {} and {}",
        a.out.join("train.txt").display(),
        a.out.join("test.txt").display(),
        a.out.join("labels.txt").display()
    );
    Ok(())
}

fn cmd_to_lmdb(a: ToLmdbArgs) -> Result<()> {
    let opts = to_lmdb::ToLmdbOptions {
        root: a.root,
        list: a.list,
        db: a.db.clone(),
        resize: a.resize.get()?,
        pad: a.resize.pad(),
        gray: a.gray,
        shuffle: a.shuffle,
        seed: a.seed,
        encoded: a.encoded,
        encode_type: a.encode_type,
        check_size: a.check_size,
        strict: a.strict,
        force: a.force,
    };
    let s = to_lmdb::to_lmdb(&opts).with_context(|| format!("to-lmdb into {}", a.db.display()))?;
    eprintln!(
        "Processed {} files into {} ({} skipped) in {:.2} s, {:.0} images/s",
        s.written,
        a.db.display(),
        s.skipped.len(),
        s.seconds,
        (s.written + s.skipped.len()) as f64 / s.seconds.max(1e-9)
    );
    Ok(())
}

fn cmd_compute_mean(a: ComputeMeanArgs) -> Result<()> {
    let source = if a.input.is_dir() {
        mean::MeanSource::Lmdb(a.input.clone())
    } else {
        mean::MeanSource::List {
            list: a.input.clone(),
            root: a.root.unwrap_or_default(),
            resize: a.resize.get()?,
            pad: a.resize.pad(),
            gray: a.gray,
        }
    };
    let start = std::time::Instant::now();
    let (m, count) = mean::compute_mean(&source)
        .with_context(|| format!("computing the mean of {}", a.input.display()))?;
    m.write_binaryproto(&a.output)?;
    if let Some(npy) = &a.npy {
        m.write_npy(npy, NpyDtype::F4)?;
    }
    for (c, v) in m.channel_means().iter().enumerate() {
        println!("mean_value channel [{c}]: {v:.6}");
    }
    eprintln!(
        "Averaged {count} images of {}x{}x{} in {:.2} s into {}",
        m.channels,
        m.height,
        m.width,
        start.elapsed().as_secs_f64(),
        a.output.display()
    );
    Ok(())
}

fn is_npy(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

fn cmd_convert_mean(a: ConvertMeanArgs) -> Result<()> {
    let mean = if is_npy(&a.input) {
        MeanImage::read_npy(&a.input)?
    } else {
        MeanImage::read_binaryproto(&a.input)?
    };
    if is_npy(&a.output) {
        mean.write_npy(&a.output, a.dtype)?;
    } else {
        mean.write_binaryproto(&a.output)?;
    }
    eprintln!(
        "Wrote {} ({}x{}x{})",
        a.output.display(),
        mean.channels,
        mean.height,
        mean.width
    );
    Ok(())
}

fn cmd_get_ilsvrc_aux(a: GetIlsvrcAuxArgs) -> Result<()> {
    let sum = a.sha256.map(fetch::Checksum::Sha256);
    let s = ilsvrc_aux::get_ilsvrc_aux(
        &a.dir,
        &a.url,
        sum.as_ref(),
        &fetch::FetchOptions::default(),
    )
    .with_context(|| format!("fetching the ILSVRC aux data from {}", a.url))?;
    for f in &s.files {
        println!("{}", f.display());
    }
    eprintln!(
        "ImageNet mean per channel (B, G, R): {:?}; {} synsets",
        s.channel_means, s.synsets
    );
    Ok(())
}

fn secs(s: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(s.max(0.001))
}

/// Installs the Ctrl-C handler first thing, so an early Ctrl-C is never
/// lost: the first sets the returned flag (`what` says what happens next),
/// a second one exits at once.
fn stop_on_ctrl_c(what: &'static str) -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\n{what} (Ctrl-C again to quit now)");
    })?;
    Ok(stop)
}

fn cmd_assemble(a: AssembleArgs) -> Result<()> {
    use flickr_style::pipeline::assemble::{assemble, AssembleOptions};
    use flickr_style::pipeline::downloader::DownloadConfig;
    let stop = stop_on_ctrl_c("Stopping: writing the lists and manifest for what finished")?;
    let opts = AssembleOptions {
        csv: a.csv,
        out: a.out.clone(),
        seed: a.seed,
        images: a.images,
        labels: a.labels,
        mirror: a.mirror,
        dry_run: a.dry_run,
        download: DownloadConfig {
            workers: if a.workers > 0 {
                a.workers as usize
            } else {
                128
            },
            connect_timeout: secs(a.connect_timeout),
            read_timeout: secs(a.read_timeout),
            total_timeout: secs(a.timeout),
            attempts: a.attempts.max(1),
            backoff: secs(a.backoff),
            placeholder_sha1: a.placeholder_sha1,
            max_bytes: a.max_image_bytes,
            seed: a.seed as u64,
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = rt.block_on(assemble(&opts, async move {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }))?;
    if opts.dry_run {
        eprintln!(
            "Selected {} images (dry run, nothing downloaded)",
            summary.selected
        );
        return Ok(());
    }
    let missing: Vec<String> = summary
        .missing
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    eprintln!(
        "Selected {}, {} available ({} reused), {} missing{} in {:.1} s",
        summary.selected,
        summary.ok,
        summary.reused,
        summary.selected - summary.ok,
        if missing.is_empty() {
            String::new()
        } else {
            format!(" ({})", missing.join(", "))
        },
        summary.seconds
    );
    eprintln!(
        "Writing train/test for {} successfully downloaded images ({} train, {} test) to {}",
        summary.ok,
        summary.train,
        summary.test,
        a.out.display()
    );
    if summary.interrupted {
        return Err(flickr_style::Error::Interrupted.into());
    }
    Ok(())
}

fn cmd_download_model(a: DownloadModelArgs) -> Result<()> {
    let (path, downloaded) = flickr_style::pipeline::model_zoo::download_model(
        &a.dir,
        a.url.as_deref(),
        &fetch::FetchOptions::default(),
    )
    .with_context(|| format!("downloading the model of {}", a.dir.display()))?;
    if downloaded {
        eprintln!("Downloaded and verified {}", path.display());
    } else {
        eprintln!("{} is already present and verified", path.display());
    }
    Ok(())
}

fn cmd_finetune(a: FinetuneArgs) -> Result<()> {
    use flickr_style::train::solver::{Solver, SolverOptions};
    flickr_style::train::compute::set_tf32(a.device.tf32);
    let stop = stop_on_ctrl_c("Stopping after this iteration and writing a snapshot")?;
    let opts = SolverOptions {
        solver: a.solver.clone(),
        base_dir: PathBuf::from("."),
        snapshot_prefix: a.snapshot_prefix,
        max_iter: a.max_iter,
        metrics: a.metrics,
        echo: true,
        progress: true,
        device: match (a.cpu, a.device.gpu) {
            (true, _) => DeviceChoice::Cpu,
            (false, Some(n)) => DeviceChoice::Gpu(n),
            (false, None) => DeviceChoice::FromSolver,
        },
        tensor_ops: a.device.tensor_ops,
        fused: a.device.fused_ops,
        bf16: a.device.bf16,
        rotate90: a.rotate90,
        augment: a.augment,
    };
    let mut solver =
        Solver::new(&opts).with_context(|| format!("setting up {}", a.solver.display()))?;
    if let Some(log) = &a.log {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log file {}", log.display()))?;
        solver.log =
            std::mem::replace(&mut solver.log, flickr_style::train::log::Logger::new(true))
                .with_file(file);
    }
    solver.set_stop_flag(stop);
    if let Some(state) = &a.snapshot {
        solver.restore(state)?;
    } else if !a.weights.is_empty() {
        solver.load_weights(&a.weights)?;
    }
    solver.solve()?;
    Ok(())
}

fn cmd_test(a: TestArgs) -> Result<()> {
    let weights: Vec<&Path> = a.weights.iter().map(PathBuf::as_path).collect();
    let results = flickr_style::train::commands::test(
        &a.model,
        &weights,
        a.iterations,
        &flickr_style::train::commands::base_dir_for(&a.model),
        &a.device.compute()?,
    )?;
    for (name, value, w) in results {
        let extra = if w != 0.0 {
            format!(
                " (* {} = {} loss)",
                flickr_style::train::log::g(w),
                flickr_style::train::log::g(w * value)
            )
        } else {
            String::new()
        };
        println!("{name} = {}{extra}", flickr_style::train::log::g(value));
    }
    Ok(())
}

fn cmd_evaluate(a: EvaluateArgs) -> Result<()> {
    use flickr_style::train::evaluate::{evaluate, read_class_names, EvalOptions, Report};
    let weights: Vec<&Path> = a.weights.iter().map(PathBuf::as_path).collect();
    let base_dir = flickr_style::train::commands::base_dir_for(&a.model);
    let compute = a.device.compute()?;
    let options = EvalOptions {
        model: &a.model,
        weights: &weights,
        base_dir: &base_dir,
        compute: &compute,
        iterations: a.iterations,
        blobs: a.scores.zip(a.label),
        top_k: a.top_k,
        threshold: a.threshold,
        tta: a.tta,
        ensemble: a.ensemble,
        source: a.source.as_deref(),
    };
    let evaluation = evaluate(&options)?;
    let names = match &a.names {
        Some(p) => read_class_names(p, evaluation.confusion.classes())?,
        None => Vec::new(),
    };
    let report = Report {
        options: &options,
        evaluation: &evaluation,
        names: &names,
    };
    print!("{}", report.markdown());
    if let Some(dir) = &a.out {
        for f in report.write(dir)? {
            eprintln!("wrote {}", f.display());
        }
    }
    Ok(())
}

fn cmd_classify(a: ClassifyArgs) -> Result<()> {
    use flickr_style::train::classify::{classify, ClassifyOptions};
    let images = flickr_style::pipeline::folders::find_images(&a.images)?;
    if images.is_empty() {
        bail!("no image files found in the given folders");
    }
    let weights: Vec<&Path> = a.weights.iter().map(PathBuf::as_path).collect();
    let base_dir = flickr_style::train::commands::base_dir_for(&a.model);
    let compute = a.device.compute()?;
    let fuser = a
        .fusion
        .as_deref()
        .map(|f| flickr_style::train::fusion::Fuser::load(f, a.samples.as_deref()))
        .transpose()?;
    let result = classify(&ClassifyOptions {
        model: &a.model,
        weights: &weights,
        ensemble: a.ensemble,
        base_dir: &base_dir,
        compute: &compute,
        images: &images,
        size: a.resize.get()?,
        pad: a.resize.pad(),
        gray: a.gray,
        mean: a.mean.as_deref(),
        mean_values: &a.mean_value,
        scores: a.scores,
        top_k: a.top_k,
        tta: a.tta,
        oversample: a.oversample,
        batch_size: a.batch_size,
        fusion: fuser.as_ref(),
    })?;
    for (p, why) in &result.failed {
        eprintln!("skipped {}: {why}", p.display());
    }
    if a.strict && !result.failed.is_empty() {
        bail!(
            "{} of {} images could not be classified (listed above); nothing was written",
            result.failed.len(),
            images.len()
        );
    }
    if result.rows.is_empty() {
        bail!("none of the {} images could be read", images.len());
    }
    let names = match &a.names {
        Some(p) => flickr_style::train::evaluate::read_class_names(p, result.classes)?,
        None => Vec::new(),
    };
    let csv = result.to_csv(&names, a.threshold);
    eprint!("{}", result.summary(&names, a.threshold));
    match &a.out {
        Some(out) => {
            flickr_style::fsutil::write_atomic(out, csv.as_bytes())?;
            eprintln!(
                "classified {} images ({} skipped) into {}",
                result.rows.len(),
                result.failed.len(),
                out.display()
            );
        }
        None => print!("{csv}"),
    }
    Ok(())
}

fn cmd_time(a: TimeArgs) -> Result<()> {
    let r = flickr_style::train::commands::time(
        &a.model,
        a.iterations,
        a.synthetic,
        &flickr_style::train::commands::base_dir_for(&a.model),
        &a.device.compute()?,
    )?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    println!("| layer | type | forward ms | backward ms |");
    println!("|---|---|---|---|");
    for (name, ty, f, b) in &r.layers {
        println!("| {name} | {ty} | {:.2} | {:.2} |", ms(*f), ms(*b));
    }
    println!("Average Forward pass: {:.1} ms.", ms(r.forward));
    println!("Average Backward pass: {:.1} ms.", ms(r.backward));
    println!(
        "Average Forward-Backward: {:.1} ms.",
        ms(r.forward + r.backward)
    );
    println!("Average SGD update: {:.1} ms.", ms(r.update));
    println!(
        "Average training step (forward, backward, update): {:.1} ms ({} iterations, {} threads).",
        ms(r.forward + r.backward + r.update),
        r.iterations,
        rayon::current_num_threads()
    );
    Ok(())
}

fn cmd_check_ops(a: CheckOpsArgs) -> Result<()> {
    use flickr_style::train::op_check::{check_ops, BF16_TOLERANCE, FD_TOLERANCE, TWIN_TOLERANCE};
    let c = DeviceArgs {
        gpu: a.gpu,
        tf32: false,
        bf16: false,
        tensor_ops: true,
        fused_ops: false,
    }
    .compute()?;
    let reports = check_ops(&c, a.seed)?;
    let cudnn = if c.cudnn {
        ", then convolutions on [cudnn] in fp32 and bf16"
    } else {
        ""
    };
    println!(
        "Checking {} against the CPU kernels: tensor-op compositions, then [fused] kernels, then [bf16] mixed precision{cudnn} (max |diff| / max |CPU value|; pass: <= {TWIN_TOLERANCE:e}, bf16 <= {BF16_TOLERANCE:e}, finite differences <= {FD_TOLERANCE:e})",
        c.describe()
    );
    println!("| op | forward | backward | finite diff | result |");
    println!("|---|---|---|---|---|");
    let mut failed = 0;
    for r in &reports {
        let ok = r.passed();
        failed += usize::from(!ok);
        println!(
            "| {} | {:.1e} | {:.1e} | {:.1e} | {} |",
            r.name,
            r.forward,
            r.backward,
            r.finite_diff,
            if ok { "ok" } else { "FAILED" }
        );
    }
    if failed > 0 {
        bail!("{failed} of {} op checks failed", reports.len());
    }
    println!("All {} op checks passed.", reports.len());
    Ok(())
}

fn cmd_pipeline(a: PipelineArgs) -> Result<()> {
    use flickr_style::pipeline::assemble::AssembleOptions;
    use flickr_style::pipeline::downloader::DownloadConfig;
    use flickr_style::workflow::{run, Dataset, WorkflowOptions};
    if !a.recipe.join("train_val.prototxt").exists() {
        bail!(
            "{} has no train_val.prototxt: point --recipe at Caffe's models/finetune_flickr_style (e.g. ../shared/caffe-ref/models/finetune_flickr_style)",
            a.recipe.display()
        );
    }
    if let Some(n) = a.gpu {
        // Fail before hours of downloading, not at the training stage.
        Compute::gpu(n)?;
    }
    flickr_style::train::compute::set_tf32(a.tf32);
    // An imported dataset's data folder defaults to data/<its name>.
    let data_for = |p: &Path| -> Result<PathBuf> {
        let p = std::path::absolute(p)?;
        let name = if p.is_file() {
            p.file_stem()
        } else {
            p.file_name()
        }
        .map_or_else(|| "dataset".into(), |n| n.to_string_lossy().into_owned());
        Ok(a.out
            .clone()
            .unwrap_or_else(|| Path::new("data").join(name)))
    };
    let dataset = match (&a.folders, &a.manifest) {
        (Some(root), _) => Dataset::Folders(FolderImportOptions {
            root: root.clone(),
            split: a.split.options(data_for(root)?, a.seed as u64),
        }),
        (None, Some(m)) => Dataset::Manifest(
            a.columns
                .options(m.clone(), a.split.options(data_for(m)?, a.seed as u64)),
        ),
        (None, None) => Dataset::FlickrStyle(AssembleOptions {
            csv: a.csv,
            out: a
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("data/flickr_style")),
            seed: a.seed,
            images: a.images,
            labels: a.labels,
            mirror: a.mirror,
            dry_run: false,
            download: DownloadConfig {
                workers: a.workers.max(1),
                seed: a.seed as u64,
                ..DownloadConfig::default()
            },
        }),
    };
    let opts = WorkflowOptions {
        dataset,
        names: a.names,
        recipe: a.recipe,
        weights: a.weights,
        weights_url: a.weights_url,
        lmdb: a.lmdb,
        gray: a.gray,
        rotate90: a.rotate90,
        cyclic: a.cyclic,
        augment: a.augment,
        tta: a.tta,
        class_weights: a.class_weights,
        pad: a.pad_square.map(|fill| Pad {
            fill,
            upscale: !a.no_upscale,
        }),
        batch_size: a.batch_size,
        max_iter: a.max_iter,
        test_iter: a.test_iter,
        test_interval: a.test_interval,
        snapshot: a.snapshot,
        metrics: a.metrics,
        verbose: true,
        gpu: a.gpu,
        bf16: a.bf16,
    };
    let stop = stop_on_ctrl_c("Stopping: finishing the current step and saving progress")?;
    let what = match &opts.dataset {
        Dataset::FlickrStyle(_) => "the Flickr Style pipeline".to_string(),
        Dataset::Folders(f) => format!("the pipeline on {}", f.root.display()),
        Dataset::Manifest(m) => format!("the pipeline on {}", m.manifest.display()),
    };
    let model = run(&opts, stop).with_context(|| format!("running {what}"))?;
    eprintln!("Done: {}", model.display());
    let data = opts.dataset.data_dir();
    let names = match (&opts.dataset, &opts.names) {
        (_, Some(n)) => format!(" --names {}", n.display()),
        (Dataset::FlickrStyle(_), None) => String::new(),
        _ => format!(" --names {}", data.join("labels.txt").display()),
    };
    // Images must be prepared as the training ones were.
    let pad = opts.pad.map_or(String::new(), |p| {
        let fill = match p.fill {
            PadFill::Border => "border".to_string(),
            PadFill::Value(v) => v.to_string(),
        };
        let shrink = if p.upscale { "" } else { " --no-upscale" };
        format!(" --pad-square {fill}{shrink}")
    });
    eprintln!(
        "Classify new images with: flickr-style classify --model {} --weights {}{names}{pad} IMAGES_OR_FOLDERS",
        data.join("train_val.prototxt").display(),
        model.display()
    );
    Ok(())
}
