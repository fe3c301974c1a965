//! edgevla trainer: the synthetic multi-camera memory task, the training loop and ring-sharded
//! sequence parallelism.
//!
//! Not built yet: this crate holds the workspace slot for the trainer (issue 6).
