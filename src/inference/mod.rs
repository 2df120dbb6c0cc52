//! What a trained net is for: scoring labelled data, predicting new images,
//! explaining predictions, extracting features and deploying the net.
//!
//! - [`evaluate`]: a per-class report of trained weights over TEST data, with
//!   [`tta`]'s flipped, turned and warped views and ensembles of weights.
//! - [`classify`]: predictions for new, unlabelled images; [`explain`]: Grad-CAM
//!   maps of where the net finds a class.
//! - [`features`]: blobs' values per image as `.npy` and feature LMDBs.
//! - [`deploy`]: the deploy definition of a trained net.

pub mod classify;
pub mod deploy;
pub mod evaluate;
pub mod explain;
pub mod features;
pub mod tta;
