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

/// Helpers shared by the crate's unit tests.
#[cfg(test)]
pub(crate) mod test_util {
    use burn::tensor::backend::Backend;
    use runtime::model::{Vla, VlaConfig};

    /// burn's random initialization draws from one global generator per backend and tests
    /// run in parallel threads: every test model is seeded and initialized under this lock,
    /// so each one's weights are a function of its seed alone.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A model of `config` initialized from `seed` (see [`INIT`]).
    pub(crate) fn seeded_model<B: Backend>(config: &VlaConfig, seed: u64) -> Vla<B> {
        let _guard = INIT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let device = Default::default();
        B::seed(&device, seed);
        config.init::<B>(&device)
    }
}
