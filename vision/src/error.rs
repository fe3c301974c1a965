//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in `vision`: bad frames, bad configs, bad shapes.
///
/// Decoding never panics on bad input; every malformed frame ends up as one of these values.
#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    /// The encoding name is none of the supported ones.
    #[error(
        "unknown image encoding `{0}` (expected one of: jpeg, png, rgb8, bgr8, rgba8, bgra8, mono8)"
    )]
    UnknownEncoding(String),
    /// Width or height is zero.
    #[error("zero-size image ({width}x{height})")]
    ZeroSize {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// The image is wider or taller than the configured limit.
    #[error("image {width}x{height} exceeds the dimension limit {max_width}x{max_height}")]
    TooLarge {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// `decode.max_width`.
        max_width: u32,
        /// `decode.max_height`.
        max_height: u32,
    },
    /// The decoded image would need more bytes than the configured limit (decompression bomb).
    #[error(
        "decoded image needs {bytes} bytes, over the limit decode.max_decoded_bytes = {max_bytes}"
    )]
    TooManyBytes {
        /// Bytes the decoded image (or the decoder's working buffer) needs.
        bytes: u64,
        /// `decode.max_decoded_bytes`.
        max_bytes: u64,
    },
    /// A raw frame's `step` (bytes per row) is smaller than one row of pixels.
    #[error("row step {step} is smaller than one row of {row_bytes} bytes")]
    StepTooSmall {
        /// The frame's `step`.
        step: u32,
        /// `width * bytes_per_pixel`.
        row_bytes: u64,
    },
    /// A raw frame's buffer is shorter than `height` rows of `step` bytes.
    #[error("raw buffer holds {got} bytes; {height} rows of step {step} need {needed}")]
    BufferTooShort {
        /// Bytes in the buffer.
        got: usize,
        /// Bytes needed.
        needed: u64,
        /// Rows.
        height: u32,
        /// Bytes per row.
        step: u32,
    },
    /// The JPEG decoder rejected the stream (truncated, corrupt, unsupported).
    #[error("JPEG decode failed: {0}")]
    Jpeg(String),
    /// The PNG decoder rejected the stream (truncated, corrupt, unsupported).
    #[error("PNG decode failed: {0}")]
    Png(String),
    /// The resizer refused the image (not expected for images this crate decoded).
    #[error("resize failed: {0}")]
    Resize(String),
    /// A config value is invalid; `key` is its dotted path (`camera[1].intrinsics.fx`).
    #[error("config `{key}`: {message}")]
    Config {
        /// Dotted path of the offending key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A config file could not be parsed (syntax, unknown key, wrong type); `key` is the path
    /// serde reached.
    #[error("config `{key}`: {message}")]
    Parse {
        /// Dotted path of the key being read when parsing failed (`.` for the top level).
        key: String,
        /// The parser's message.
        message: String,
    },
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A camera index outside the rig.
    #[error("camera index {index} out of range: the rig has {n_cams} cameras")]
    CameraIndex {
        /// The index given.
        index: usize,
        /// Cameras in the rig.
        n_cams: usize,
    },
}

impl VisionError {
    /// Shorthand for [`VisionError::Config`].
    pub(crate) fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            key: key.into(),
            message: message.into(),
        }
    }
}
