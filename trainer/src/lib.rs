//! edgevla trainer: the training loop and ring-sharded sequence parallelism on the `sim`
//! crate's multi-camera memory task, and the evaluation of a model on it.
//!
//! Layout:
//! - [`train`]: the single-device training loop (AdamW on the action-chunk MSE of every step).
//! - [`data`]: training batches from the task (parallel episode generation, loss weights,
//!   cue labels, a background prefetcher).
//! - [`plot`]: the loss curve of a training run as a PNG.
//! - [`eval`]: closed-loop evaluation of a model on the task's simulator.
//! - [`needle`]: the long-context sweep (needle-in-a-haystack over length × depth, RoPE
//!   methods, KV formats and budgets) for any policy, with CSV / markdown / PNG outputs.
//! - [`error`]: the crate's error type.

pub mod data;
pub mod error;
pub mod eval;
pub mod needle;
pub mod plot;
pub mod train;

pub use error::{Error, Result};
