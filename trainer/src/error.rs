//! The trainer's error type.

/// Everything the trainer reports as an error value instead of panicking.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is missing, malformed or out of range; `key` names it.
    #[error("invalid config key `{key}`: {reason}")]
    Config {
        /// Dotted path of the key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Training diverged or a batch held a non-finite value.
    #[error("non-finite {what} at iteration {iteration}")]
    NonFinite {
        /// Which quantity.
        what: &'static str,
        /// Training iteration.
        iteration: usize,
    },
    /// The device failed during a run (an allocation failure, a panicked device thread, an
    /// error reported by a synchronization); nothing computed after it can be trusted.
    #[error("device failure at iteration {iteration}: {reason}")]
    Device {
        /// Training iteration during which it was detected.
        iteration: usize,
        /// What the backend reported.
        reason: String,
    },
    /// The model rejected its input or configuration.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// A camera rig (or a task's camera override) failed to parse or validate.
    #[error(transparent)]
    Vision(#[from] vision::VisionError),
    /// The task simulator rejected a config or an input.
    #[error(transparent)]
    Sim(#[from] sim::Error),
    /// A caller-supplied value (an action chunk, a needle depth) has the wrong shape or value.
    #[error("invalid {what}: {reason}")]
    Input {
        /// Which argument.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An output file (evaluation CSV, table, heatmap) could not be written or encoded.
    #[error("cannot write {}: {reason}", path.display())]
    Output {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        reason: String,
    },
}

impl Error {
    /// Shorthand for [`Error::Config`].
    pub fn config(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Config {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Result with the trainer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
