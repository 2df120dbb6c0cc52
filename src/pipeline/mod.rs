//! Data in: the Flickr Style selection and downloads, folder-per-class
//! datasets, decoding and resizing images like OpenCV, Caffe image lists,
//! LMDB storage, and the `to-lmdb` / `compute-mean` / `class-weights` stages
//! built on them.

pub mod assemble;
pub mod class_weights;
pub mod decode;
pub mod downloader;
pub mod fetch;
pub mod flickr_csv;
pub mod folders;
pub mod ilsvrc_aux;
pub mod image_list;
pub mod jpeg;
mod lmdb_check;
pub mod lmdb_store;
pub mod manifest;
pub mod mat;
pub mod mean;
pub mod measure;
pub mod model_zoo;
pub mod numpy_rng;
pub mod pad;
mod png_gray;
pub mod resize;
pub mod split;
pub mod targets;
pub mod to_lmdb;
