//! The simulator's error type.

/// Everything the simulator reports as an error value instead of panicking.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A task config value is missing, malformed or out of range; `key` names it.
    #[error("invalid config key `{key}`: {reason}")]
    Config {
        /// Dotted path of the key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A camera rig (or a task's camera override) failed to parse or validate, or an image
    /// the preprocessor rejects.
    #[error(transparent)]
    Vision(#[from] vision::VisionError),
    /// A caller-supplied value (an action chunk, a needle depth) has the wrong shape or value.
    #[error("invalid {what}: {reason}")]
    Input {
        /// Which argument.
        what: &'static str,
        /// What is wrong with it.
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

/// Result with the simulator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
