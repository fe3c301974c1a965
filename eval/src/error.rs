//! The evaluation's errors.

/// What went wrong in an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// Images and preprocessing.
    #[error(transparent)]
    Vision(#[from] vision::VisionError),
    /// The task simulator.
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

/// Result with the evaluation's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
