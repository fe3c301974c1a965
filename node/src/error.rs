//! The node's errors: one enum for everything the node, the simulator, the demo and the
//! checkpoint helpers report, each variant saying what kind of thing failed.

use std::fmt::Display;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config key with a value the node cannot use (node config, ROS 2 topics, the rig
    /// against the config).
    #[error("invalid config key `{key}`: {reason}")]
    Config {
        /// The key, dotted (`ros2.cameras.left`).
        key: String,
        /// Why.
        reason: String,
    },
    /// The model and what it is asked to run on disagree (cameras, proprio, patches, task).
    #[error("{0}")]
    Mismatch(String),
    /// A checkpoint folder named by a config that is found nowhere.
    #[error(
        "checkpoint {path} (the node config's `checkpoint`) not found: looked below the working \
         directory, in $EDGEVLA_HOME, beside the executable and in the source tree it was built \
         from; pass --model DIR, or --untrained for a random init"
    )]
    CheckpointNotFound {
        /// The configured path.
        path: String,
    },
    /// A file that cannot be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// A TOML text that does not parse into what it should be (unknown keys included).
    #[error("{what}: {error}")]
    Toml {
        /// What was read (`node config edge`, a file's path).
        what: String,
        /// The parser's message, with line and column.
        error: toml::de::Error,
    },
    /// A worker of the node or the demo (ingest, recorder, node thread) that stopped abnormally.
    #[error("{0}")]
    Worker(String),
    /// A run that cannot be carried out as asked (a soak too short to measure, a bad JPEG
    /// quality).
    #[error("{0}")]
    Invalid(String),
    /// The model.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// Images, rigs, preprocessing.
    #[error(transparent)]
    Vision(#[from] vision::VisionError),
    /// The simulator's task.
    #[error(transparent)]
    Sim(#[from] sim::Error),
    /// zenoh sessions, messages, recordings.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// zenoh itself (declaring a subscriber, a put).
    #[error("zenoh: {0}")]
    Zenoh(#[from] zenoh::Error),
    /// A JSON report or status that cannot be written.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Text formatting of a report.
    #[error("formatting: {0}")]
    Fmt(#[from] std::fmt::Error),
    /// An error with what was being done when it happened. Its message holds the whole chain
    /// (outside in), so the wrapped error is not also reported as its `source`.
    #[error("{what}: {error}")]
    Context {
        /// What was being done.
        what: String,
        /// The error.
        error: Box<Error>,
    },
}

/// The node's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An invalid value of config key `key`.
    pub fn config(key: impl Into<String>, reason: impl Display) -> Self {
        Self::Config {
            key: key.into(),
            reason: reason.to_string(),
        }
    }

    /// A file that could not be read or written.
    pub fn io(path: impl Display, error: std::io::Error) -> Self {
        Self::Io {
            path: path.to_string(),
            error,
        }
    }

    /// A TOML text (`what`) that did not parse.
    pub fn toml(what: impl Display, error: toml::de::Error) -> Self {
        Self::Toml {
            what: what.to_string(),
            error,
        }
    }
}

/// Adds what was being done to an error (`.context("KV cache")`).
pub trait Context<T> {
    /// The error wrapped in [`Error::Context`] with `what`.
    ///
    /// # Errors
    /// The wrapped error.
    fn context(self, what: impl Display) -> Result<T>;

    /// [`Context::context`] with the text made only on error.
    ///
    /// # Errors
    /// The wrapped error.
    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|e| Error::Context {
            what: what.to_string(),
            error: Box::new(e.into()),
        })
    }

    fn with_context<D: Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| Error::Context {
            what: what().to_string(),
            error: Box::new(e.into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Context nests, and the message reads outside in.
    #[test]
    fn context_reads_outside_in() {
        let inner: Result<()> = Err(Error::config("stall_ms", "must be positive"));
        let err = inner.context("node config edge").unwrap_err();
        assert_eq!(
            err.to_string(),
            "node config edge: invalid config key `stall_ms`: must be positive"
        );
        assert!(matches!(err, Error::Context { .. }));
    }
}
