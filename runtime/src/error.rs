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
    /// An input or output value is NaN or infinite.
    #[error("non-finite value in {what}: {detail}")]
    NonFinite {
        /// Which input or output.
        what: &'static str,
        /// Where (index) and what value.
        detail: String,
    },
    /// A checkpoint does not belong to this model or cannot be read/written.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// Checkpoint path.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A device failed to execute or synchronize.
    #[error("device error in {op}: {reason}")]
    Device {
        /// The operation that needed the device.
        op: &'static str,
        /// The backend's report.
        reason: String,
    },
    /// File IO failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// Shorthand for [`Error::Io`].
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Shorthand for [`Error::Checkpoint`].
    pub fn checkpoint(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Self::Checkpoint {
            path: path.display().to_string(),
            reason: reason.into(),
        }
    }

    /// Returns [`Error::NonFinite`] for the first NaN/infinite value of `values`.
    ///
    /// # Errors
    /// As described.
    pub fn check_finite(what: &'static str, values: &[f32]) -> Result<()> {
        match values.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(Self::NonFinite {
                what,
                detail: format!("index {i} is {}", values[i]),
            }),
        }
    }

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
