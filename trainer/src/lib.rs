//! edgevla trainer: the training loop and ring-sharded sequence parallelism on the `sim`
//! crate's multi-camera memory task (its evaluation is the `eval` crate).
//!
//! Layout:
//! - [`train`]: the single-device training loop (AdamW on the action-chunk MSE of every step).
//! - [`data`]: training batches from the task (parallel episode generation, loss weights,
//!   cue labels, a background prefetcher).
//! - [`plot`]: the loss curve of a training run as a PNG.
//! - [`error`]: the crate's error type.

pub mod data;
pub mod error;
pub mod plot;
pub mod train;

pub use error::{Error, Result};
