//! The crate's one error type.

use std::io;

/// Everything that can go wrong in `transport`.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A payload shorter than the 4-byte CDR encapsulation header.
    #[error("payload of {len} bytes is shorter than the 4-byte CDR encapsulation header")]
    MissingEncapsulation {
        /// Payload length in bytes.
        len: usize,
    },
    /// An encapsulation identifier other than plain CDR (big or little endian).
    #[error("unsupported CDR encapsulation {id:#06x} (expected 0x0000 CDR_BE or 0x0001 CDR_LE)")]
    UnsupportedEncapsulation {
        /// The representation identifier, big-endian as on the wire.
        id: u16,
    },
    /// The CDR body does not decode as the expected message type.
    #[error("malformed CDR for {type_name}: {message}")]
    MalformedCdr {
        /// ROS 2 type name, e.g. `sensor_msgs/msg/JointState`.
        type_name: &'static str,
        /// What the decoder reported.
        message: String,
    },
    /// The CDR body decoded but left bytes over (beyond CDR's final alignment padding).
    #[error("{type_name}: {trailing} trailing bytes after the message")]
    TrailingBytes {
        /// ROS 2 type name.
        type_name: &'static str,
        /// Number of bytes left over.
        trailing: usize,
    },
    /// A message that decoded but violates its own invariants (e.g. `values.len() != horizon * dims`).
    #[error("invalid {type_name}: {reason}")]
    InvalidMessage {
        /// ROS 2 type name.
        type_name: &'static str,
        /// Which invariant failed.
        reason: String,
    },
    /// Encoding a message failed (a length that does not fit CDR's u32, for example).
    #[error("encoding {type_name} as CDR: {message}")]
    Encode {
        /// ROS 2 type name.
        type_name: &'static str,
        /// What the encoder reported.
        message: String,
    },
    /// A ROS 2 topic name that is not fully qualified or not made of valid tokens.
    #[error("ROS 2 topic name {topic:?}: {reason}")]
    InvalidTopicName {
        /// The name as given.
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A ROS 2 sample without rmw_zenoh's attachment, or with one that does not read.
    #[error("rmw_zenoh attachment: {reason}")]
    BadAttachment {
        /// What is wrong with it.
        reason: String,
    },
    /// A ROS 2 sample whose type name or type hash is not what its topic carries.
    #[error("key {key}: type {got} does not match the topic's {expected}")]
    TypeMismatch {
        /// The sample's key expression.
        key: String,
        /// The type name and hash(es) the topic accepts.
        expected: String,
        /// The sample's type name and hash.
        got: String,
    },
    /// A sample's zenoh encoding string does not fit the message expected on its key.
    #[error("key {key}: encoding {encoding:?} does not carry a message this key accepts")]
    WrongEncoding {
        /// The sample's key expression.
        key: String,
        /// The sample's encoding string.
        encoding: String,
    },
    /// A payload larger than the configured limit.
    #[error("key {key}: payload of {len} bytes exceeds the limit of {limit} bytes")]
    Oversized {
        /// The sample's key expression.
        key: String,
        /// Payload length.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A key expression outside the edgevla key space.
    #[error("key {key:?} is not an edgevla key under prefix {prefix:?}")]
    UnknownKey {
        /// The offending key.
        key: String,
        /// The configured prefix.
        prefix: String,
    },
    /// A name that cannot be a key-expression chunk (empty, or containing `/`, `*`, `$`, `?`, `#`).
    #[error("invalid key chunk {0:?}: must be non-empty without '/', '*', '$', '?', '#'")]
    InvalidKeyChunk(String),
    /// An invalid configuration value; names the key.
    #[error("config key `{key}`: {reason}")]
    Config {
        /// The config key, e.g. `session.mode`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A zenoh call failed.
    #[error("zenoh {context}: {message}")]
    Zenoh {
        /// What we were doing.
        context: &'static str,
        /// zenoh's error text.
        message: String,
    },
    /// Writing an MCAP file failed.
    #[error("mcap: {0}")]
    Mcap(#[from] mcap::McapError),
    /// Reading a recording found something other than a (possibly truncated) MCAP file.
    #[error("recording: {0}")]
    Recording(String),
    /// A remap rule that is not `from=to`.
    #[error("remap rule {0:?} is not `from=to` with non-empty key prefixes")]
    BadRemap(String),
    /// A replay rate that is not a positive finite number or `max`.
    #[error("replay rate {0:?} must be a positive number or `max`")]
    BadRate(String),
    /// I/O failed.
    #[error("io: {0}")]
    Io(#[from] io::Error),
}

impl TransportError {
    /// Wraps a zenoh error with what we were doing.
    pub(crate) fn zenoh(context: &'static str, err: &zenoh::Error) -> Self {
        Self::Zenoh {
            context,
            message: err.to_string(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = TransportError> = std::result::Result<T, E>;
