//! Reports and plots made from a net's outputs, with no net in the loop.
//!
//! - [`confusion`] and [`abstention`]: per-class metrics and how abstaining
//!   at a confidence threshold pays; [`compare`]: reports side by side.
//! - [`plot`]: SVG training curves, confusion heat maps and abstention
//!   curves; [`training_log`]: Caffe-style training logs read back.
//! - [`fusion`]: whether sizes and measurements add to the net's
//!   probabilities (cross-validated late fusion, fitted by [`lbfgs`]).

pub mod abstention;
pub mod compare;
pub mod confusion;
pub mod fusion;
pub mod lbfgs;
pub mod plot;
pub mod training_log;
