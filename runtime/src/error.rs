//! The runtime's error type.

/// Everything the runtime reports as an error value instead of panicking.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is missing, malformed, out of range or not allowed where it stands.
    /// `key` is the dotted path of the offending key, e.g. `rope_parameters.factor`.
    #[error("invalid config key `{key}`: {reason}")]
    Config {
        /// Dotted path of the key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor or slice has the wrong shape for the operation.
    #[error("shape mismatch in {op}: {reason}")]
    Shape {
        /// The operation that rejected the input.
        op: &'static str,
        /// Expected versus received.
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

    /// Shorthand for [`Error::Shape`].
    pub fn shape(op: &'static str, reason: impl Into<String>) -> Self {
        Self::Shape {
            op,
            reason: reason.into(),
        }
    }
}

/// Result with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
