//! Wire messages: ROS 2 `sensor_msgs/CompressedImage`, `sensor_msgs/Image`,
//! `sensor_msgs/JointState`, `sensor_msgs/Imu`, `std_msgs/String` (status, instruction) and
//! edgevla's own
//! `edgevla_msgs/ActionChunk`, all as serde structs encoded with the `cdr-encoding` crate in
//! the CDR (XCDR1, "plain CDR") layout that ROS 2 puts on the wire, byte for byte.
//!
//! # Byte layout
//!
//! Every payload starts with the 4-byte encapsulation header, then the body:
//!
//! ```text
//! offset 0: 0x00 0x01   representation id CDR_LE (0x00 0x00 = CDR_BE is accepted on decode)
//! offset 2: 0x00 0x00   options (ignored on decode; some writers put padding counts here)
//! offset 4: body        fields in declaration order
//! ```
//!
//! Body rules (alignment is relative to the start of the body, i.e. payload offset 4):
//! - a primitive of size n (1, 2, 4, 8) is aligned to n; padding bytes are zero;
//! - `string`: `u32` length counting a trailing NUL, the UTF-8 bytes, the NUL;
//! - `T[]` (unbounded sequence): `u32` element count, then the elements, each aligned as its
//!   type (so a `float64[]` with at least one element is padded to 8 after the count);
//! - `T[N]` (fixed array): the N elements, no count;
//! - nested messages are inlined, with no alignment of their own;
//! - decoding allows up to 3 trailing bytes (final padding some writers add), no more.
//!
//! The bodies, field by field (`Header` = `builtin_interfaces/Time stamp` (`int32 sec`,
//! `uint32 nanosec`) + `string frame_id`):
//!
//! | message | fields |
//! |---|---|
//! | `sensor_msgs/msg/CompressedImage` | `Header header`, `string format`, `uint8[] data` |
//! | `sensor_msgs/msg/Image` | `Header header`, `uint32 height`, `uint32 width`, `string encoding`, `uint8 is_bigendian`, `uint32 step`, `uint8[] data` |
//! | `sensor_msgs/msg/JointState` | `Header header`, `string[] name`, `float64[] position`, `float64[] velocity`, `float64[] effort` |
//! | `sensor_msgs/msg/Imu` | `Header header`, `geometry_msgs/Quaternion orientation` (`float64 x, y, z, w`), `float64[9] orientation_covariance`, `geometry_msgs/Vector3 angular_velocity` (`float64 x, y, z`), `float64[9] angular_velocity_covariance`, `geometry_msgs/Vector3 linear_acceleration`, `float64[9] linear_acceleration_covariance` |
//! | `std_msgs/msg/String` | `string data` |
//! | `edgevla_msgs/msg/ActionChunk` | `builtin_interfaces/Time stamp`, `uint64 sequence`, `uint32 horizon`, `uint32 dims`, `float32[] values` (row-major `[horizon, dims]`) |
//!
//! A worked example, `CompressedImage{stamp 1.5 s, frame_id "cam0", format "jpeg", data [1,2,3]}`
//! (the unit test `compressed_image_byte_layout` checks exactly these bytes):
//!
//! ```text
//! 00 01 00 00                 encapsulation CDR_LE
//! 01 00 00 00                 stamp.sec = 1
//! 00 65 cd 1d                 stamp.nanosec = 500_000_000
//! 05 00 00 00 63 61 6d 30 00  frame_id: len 5 incl. NUL, "cam0\0"
//! 00 00 00                    pad to 4
//! 05 00 00 00 6a 70 65 67 00  format: "jpeg\0"
//! 00 00 00                    pad to 4
//! 03 00 00 00 01 02 03        data: count 3, bytes
//! ```
//!
//! An `ActionChunk` body has fixed offsets: `sec` 0, `nanosec` 4, `sequence` 8, `horizon` 16,
//! `dims` 20, value count 24, values from 28 (4-byte floats, no padding).

use std::fmt;

use byteorder::{BigEndian, LittleEndian};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Result, TransportError};

/// CDR little-endian encapsulation header, as written by [`encode`].
pub const CDR_LE_HEADER: [u8; 4] = [0x00, 0x01, 0x00, 0x00];

/// `builtin_interfaces/Time`: seconds and nanoseconds.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time {
    /// Seconds (signed, as in ROS 2).
    pub sec: i32,
    /// Nanoseconds within the second.
    pub nanosec: u32,
}

impl Time {
    /// A time from nanoseconds since the clock's epoch (saturating at `i32::MAX` seconds).
    #[must_use]
    pub fn from_nanos(ns: u64) -> Self {
        let sec = i32::try_from(ns / 1_000_000_000).unwrap_or(i32::MAX);
        // The remainder is below 1e9 and fits u32.
        let nanosec = u32::try_from(ns % 1_000_000_000).unwrap_or(0);
        Self { sec, nanosec }
    }

    /// Nanoseconds since the epoch; negative times clamp to 0.
    #[must_use]
    pub fn as_nanos(self) -> u64 {
        let sec = u64::try_from(self.sec).unwrap_or(0);
        sec * 1_000_000_000 + u64::from(self.nanosec)
    }
}

/// `std_msgs/Header`: a stamp and a coordinate frame id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Acquisition time.
    pub stamp: Time,
    /// Coordinate frame, e.g. the camera's optical frame.
    pub frame_id: String,
}

/// `sensor_msgs/msg/CompressedImage`: an encoded (JPEG/PNG) camera frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompressedImage {
    /// Stamp and frame.
    pub header: Header,
    /// Compression format as ROS drivers write it: `jpeg`, `png`, or `rgb8; jpeg compressed bgr8`.
    pub format: String,
    /// The compressed bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// `sensor_msgs/msg/Image`: a raw camera frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Stamp and frame.
    pub header: Header,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// Pixel encoding (`rgb8`, `bgr8`, `mono8`, `mono16`, `32FC1`, ...).
    pub encoding: String,
    /// 1 if multi-byte pixel values are big-endian.
    pub is_bigendian: u8,
    /// Row length in bytes.
    pub step: u32,
    /// `step * height` bytes.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// `sensor_msgs/msg/JointState`: proprioception.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JointState {
    /// Stamp and frame.
    pub header: Header,
    /// Joint names.
    pub name: Vec<String>,
    /// Positions (rad or m); empty or one per name.
    pub position: Vec<f64>,
    /// Velocities; empty or one per name.
    pub velocity: Vec<f64>,
    /// Efforts; empty or one per name.
    pub effort: Vec<f64>,
}

/// `geometry_msgs/msg/Quaternion`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quaternion {
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
    /// z.
    pub z: f64,
    /// w (the scalar part).
    pub w: f64,
}

impl Default for Quaternion {
    /// The identity rotation (as ROS 2's message default).
    fn default() -> Self {
        Self {
            x: 0.0,
            y: 0.0,
            z: 0.0,
            w: 1.0,
        }
    }
}

/// `geometry_msgs/msg/Vector3`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Vector3 {
    /// x.
    pub x: f64,
    /// y.
    pub y: f64,
    /// z.
    pub z: f64,
}

/// `sensor_msgs/msg/Imu`: orientation, angular velocity (rad/s) and linear acceleration
/// (m/s²) with row-major 3×3 covariances. As in ROS: an all-zero covariance means "unknown";
/// element 0 set to -1 means the quantity is not provided (e.g. no orientation estimate).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Imu {
    /// Stamp and frame (the IMU's frame).
    pub header: Header,
    /// Orientation estimate.
    pub orientation: Quaternion,
    /// Its covariance (`[-1, 0, ...]` when `orientation` is not provided).
    pub orientation_covariance: [f64; 9],
    /// Angular velocity, rad/s.
    pub angular_velocity: Vector3,
    /// Its covariance.
    pub angular_velocity_covariance: [f64; 9],
    /// Linear acceleration, m/s².
    pub linear_acceleration: Vector3,
    /// Its covariance.
    pub linear_acceleration_covariance: [f64; 9],
}

/// The "not provided" covariance: element 0 is -1 (ROS `sensor_msgs/Imu` convention).
pub const COVARIANCE_NOT_PROVIDED: [f64; 9] = [-1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];

/// `std_msgs/msg/String`: the status channel carries JSON text in it, the instruction channel
/// the task's language instruction.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StringMsg {
    /// The text.
    pub data: String,
}

/// `edgevla_msgs/msg/ActionChunk`: the policy's next `horizon` actions of `dims` values each.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActionChunk {
    /// Time of the observation the chunk answers.
    pub stamp: Time,
    /// Monotone chunk counter.
    pub sequence: u64,
    /// Number of actions (rows).
    pub horizon: u32,
    /// Values per action (columns).
    pub dims: u32,
    /// Row-major `[horizon, dims]`.
    pub values: Vec<f32>,
}

/// Which message a payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    /// [`CompressedImage`].
    CompressedImage,
    /// [`Image`].
    Image,
    /// [`JointState`].
    JointState,
    /// [`Imu`].
    Imu,
    /// [`StringMsg`].
    String,
    /// [`ActionChunk`].
    ActionChunk,
}

const TIME_DEF: &str = "MSG: builtin_interfaces/Time\nint32 sec\nuint32 nanosec\n";
const HEADER_DEF: &str = "MSG: std_msgs/Header\nbuiltin_interfaces/Time stamp\nstring frame_id\n";
const QUATERNION_DEF: &str =
    "MSG: geometry_msgs/Quaternion\nfloat64 x\nfloat64 y\nfloat64 z\nfloat64 w\n";
const VECTOR3_DEF: &str = "MSG: geometry_msgs/Vector3\nfloat64 x\nfloat64 y\nfloat64 z\n";
const SEPARATOR: &str =
    "================================================================================\n";

impl MessageKind {
    /// All kinds.
    pub const ALL: [Self; 6] = [
        Self::CompressedImage,
        Self::Image,
        Self::JointState,
        Self::Imu,
        Self::String,
        Self::ActionChunk,
    ];

    /// ROS 2 type name, e.g. `sensor_msgs/msg/Image`.
    #[must_use]
    pub fn type_name(self) -> &'static str {
        match self {
            Self::CompressedImage => CompressedImage::TYPE_NAME,
            Self::Image => Image::TYPE_NAME,
            Self::JointState => JointState::TYPE_NAME,
            Self::Imu => Imu::TYPE_NAME,
            Self::String => StringMsg::TYPE_NAME,
            Self::ActionChunk => ActionChunk::TYPE_NAME,
        }
    }

    /// The kind whose type name is `name` (`pkg/msg/Type`; `pkg/Type` is accepted too).
    #[must_use]
    pub fn from_type_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| {
            let full = k.type_name();
            full == name || full.replacen("/msg/", "/", 1) == name
        })
    }

    /// The message definition in MCAP's `ros2msg` schema encoding: the type's own fields, then
    /// each dependency after a line of `=` and `MSG: pkg/Type`.
    #[must_use]
    pub fn ros2msg_schema(self) -> String {
        let own = match self {
            Self::CompressedImage => "std_msgs/Header header\nstring format\nuint8[] data\n",
            Self::Image => {
                "std_msgs/Header header\nuint32 height\nuint32 width\nstring encoding\nuint8 is_bigendian\nuint32 step\nuint8[] data\n"
            }
            Self::JointState => {
                "std_msgs/Header header\nstring[] name\nfloat64[] position\nfloat64[] velocity\nfloat64[] effort\n"
            }
            Self::Imu => {
                "std_msgs/Header header\ngeometry_msgs/Quaternion orientation\nfloat64[9] orientation_covariance\ngeometry_msgs/Vector3 angular_velocity\nfloat64[9] angular_velocity_covariance\ngeometry_msgs/Vector3 linear_acceleration\nfloat64[9] linear_acceleration_covariance\n"
            }
            Self::String => "string data\n",
            Self::ActionChunk => {
                "builtin_interfaces/Time stamp\nuint64 sequence\nuint32 horizon\nuint32 dims\nfloat32[] values\n"
            }
        };
        match self {
            Self::CompressedImage | Self::Image | Self::JointState => {
                format!("{own}{SEPARATOR}{HEADER_DEF}{SEPARATOR}{TIME_DEF}")
            }
            Self::Imu => format!(
                "{own}{SEPARATOR}{HEADER_DEF}{SEPARATOR}{TIME_DEF}{SEPARATOR}{QUATERNION_DEF}{SEPARATOR}{VECTOR3_DEF}"
            ),
            Self::ActionChunk => format!("{own}{SEPARATOR}{TIME_DEF}"),
            Self::String => own.to_owned(),
        }
    }

    /// Decodes a payload of this kind into an [`AnyMessage`].
    ///
    /// # Errors
    /// As [`decode`].
    pub fn decode(self, payload: &[u8]) -> Result<AnyMessage> {
        Ok(match self {
            Self::CompressedImage => AnyMessage::CompressedImage(decode(payload)?),
            Self::Image => AnyMessage::Image(decode(payload)?),
            Self::JointState => AnyMessage::JointState(decode(payload)?),
            Self::Imu => AnyMessage::Imu(decode(payload)?),
            Self::String => AnyMessage::String(decode(payload)?),
            Self::ActionChunk => AnyMessage::ActionChunk(decode(payload)?),
        })
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_name())
    }
}

/// One decoded message of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyMessage {
    /// A compressed camera frame.
    CompressedImage(CompressedImage),
    /// A raw camera frame.
    Image(Image),
    /// Proprioception.
    JointState(JointState),
    /// Inertial measurements.
    Imu(Imu),
    /// Status or instruction text.
    String(StringMsg),
    /// An action chunk.
    ActionChunk(ActionChunk),
}

impl AnyMessage {
    /// The message's kind.
    #[must_use]
    pub fn kind(&self) -> MessageKind {
        match self {
            Self::CompressedImage(_) => MessageKind::CompressedImage,
            Self::Image(_) => MessageKind::Image,
            Self::JointState(_) => MessageKind::JointState,
            Self::Imu(_) => MessageKind::Imu,
            Self::String(_) => MessageKind::String,
            Self::ActionChunk(_) => MessageKind::ActionChunk,
        }
    }

    /// The message's stamp, if it has one.
    #[must_use]
    pub fn stamp(&self) -> Option<Time> {
        match self {
            Self::CompressedImage(m) => Some(m.header.stamp),
            Self::Image(m) => Some(m.header.stamp),
            Self::JointState(m) => Some(m.header.stamp),
            Self::Imu(m) => Some(m.header.stamp),
            Self::String(_) => None,
            Self::ActionChunk(m) => Some(m.stamp),
        }
    }

    /// The message's CDR encoding (as [`encode`] gives for the message inside).
    ///
    /// # Errors
    /// As [`encode`].
    pub fn encode(&self) -> Result<Vec<u8>> {
        match self {
            Self::CompressedImage(m) => encode(m),
            Self::Image(m) => encode(m),
            Self::JointState(m) => encode(m),
            Self::Imu(m) => encode(m),
            Self::String(m) => encode(m),
            Self::ActionChunk(m) => encode(m),
        }
    }
}

/// A message with a ROS 2 type name and a CDR layout.
pub trait RosMessage: Serialize + DeserializeOwned {
    /// ROS 2 type name (`pkg/msg/Type`).
    const TYPE_NAME: &'static str;
    /// The matching [`MessageKind`].
    const KIND: MessageKind;

    /// Checks the invariants the CDR layout cannot express.
    ///
    /// # Errors
    /// [`TransportError::InvalidMessage`] naming the broken invariant.
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// Roughly the encoded size in bytes, so the encoder allocates once (frames are large).
    fn size_hint(&self) -> usize {
        64
    }
}

fn invalid(type_name: &'static str, reason: String) -> TransportError {
    TransportError::InvalidMessage { type_name, reason }
}

impl CompressedImage {
    /// Whether `format` names PNG, as ROS drivers write it (`png`, `rgb8; png compressed`).
    #[must_use]
    pub fn is_png(&self) -> bool {
        self.format.to_ascii_lowercase().contains("png")
    }

    /// Whether `format` names JPEG (`jpeg`, `jpg`, `bgr8; jpeg compressed bgr8`).
    #[must_use]
    pub fn is_jpeg(&self) -> bool {
        let f = self.format.to_ascii_lowercase();
        f.contains("jpeg") || f.contains("jpg")
    }
}

impl RosMessage for CompressedImage {
    const TYPE_NAME: &'static str = "sensor_msgs/msg/CompressedImage";
    const KIND: MessageKind = MessageKind::CompressedImage;

    fn size_hint(&self) -> usize {
        64 + self.header.frame_id.len() + self.format.len() + self.data.len()
    }

    /// `format` must name JPEG or PNG (what `vision` decodes), as ROS drivers write it.
    fn validate(&self) -> Result<()> {
        if self.is_png() || self.is_jpeg() {
            Ok(())
        } else {
            Err(invalid(
                Self::TYPE_NAME,
                format!("format {:?} names neither jpeg nor png", self.format),
            ))
        }
    }
}

/// Bytes per pixel of the ROS 2 image encodings edgevla knows (`sensor_msgs/image_encodings.hpp`).
#[must_use]
pub fn bytes_per_pixel(encoding: &str) -> Option<u32> {
    Some(match encoding {
        "mono8" | "8UC1" | "8SC1" | "bayer_rggb8" | "bayer_bggr8" | "bayer_gbrg8"
        | "bayer_grbg8" => 1,
        "mono16" | "16UC1" | "16SC1" | "8UC2" | "yuv422" | "uyvy" | "yuyv" | "yuv422_yuy2"
        | "bayer_rggb16" | "bayer_bggr16" | "bayer_gbrg16" | "bayer_grbg16" => 2,
        "rgb8" | "bgr8" | "8UC3" | "8SC3" => 3,
        "rgba8" | "bgra8" | "8UC4" | "16UC2" | "32FC1" | "32SC1" => 4,
        "rgb16" | "bgr16" | "16UC3" => 6,
        "rgba16" | "bgra16" | "16UC4" | "32FC2" | "64FC1" => 8,
        "32FC3" => 12,
        "32FC4" | "64FC2" => 16,
        _ => return None,
    })
}

impl RosMessage for Image {
    const TYPE_NAME: &'static str = "sensor_msgs/msg/Image";
    const KIND: MessageKind = MessageKind::Image;

    fn size_hint(&self) -> usize {
        64 + self.header.frame_id.len() + self.encoding.len() + self.data.len()
    }

    /// `encoding` must be a known ROS 2 encoding, `step >= width * bytes_per_pixel`, and
    /// `data.len() == step * height`.
    fn validate(&self) -> Result<()> {
        let bpp = bytes_per_pixel(&self.encoding).ok_or_else(|| {
            invalid(
                Self::TYPE_NAME,
                format!("unknown encoding {:?}", self.encoding),
            )
        })?;
        let min_step = u64::from(self.width) * u64::from(bpp);
        if u64::from(self.step) < min_step {
            return Err(invalid(
                Self::TYPE_NAME,
                format!("step {} < width {} x {bpp} bytes", self.step, self.width),
            ));
        }
        let want = u64::from(self.step) * u64::from(self.height);
        if self.data.len() as u64 != want {
            return Err(invalid(
                Self::TYPE_NAME,
                format!(
                    "data has {} bytes, step {} x height {} = {want}",
                    self.data.len(),
                    self.step,
                    self.height
                ),
            ));
        }
        Ok(())
    }
}

impl RosMessage for JointState {
    const TYPE_NAME: &'static str = "sensor_msgs/msg/JointState";
    const KIND: MessageKind = MessageKind::JointState;

    fn size_hint(&self) -> usize {
        let names: usize = self.name.iter().map(|n| n.len() + 8).sum();
        64 + self.header.frame_id.len()
            + names
            + 8 * (self.position.len() + self.velocity.len() + self.effort.len())
    }

    /// `position`, `velocity` and `effort` are each empty or one value per name.
    fn validate(&self) -> Result<()> {
        let n = self.name.len();
        for (field, len) in [
            ("position", self.position.len()),
            ("velocity", self.velocity.len()),
            ("effort", self.effort.len()),
        ] {
            if len != 0 && len != n {
                return Err(invalid(
                    Self::TYPE_NAME,
                    format!("{field} has {len} values for {n} names"),
                ));
            }
        }
        Ok(())
    }
}

impl RosMessage for Imu {
    const TYPE_NAME: &'static str = "sensor_msgs/msg/Imu";
    const KIND: MessageKind = MessageKind::Imu;

    fn size_hint(&self) -> usize {
        64 + self.header.frame_id.len() + 8 * (4 + 3 + 3 + 27)
    }
}

impl RosMessage for StringMsg {
    const TYPE_NAME: &'static str = "std_msgs/msg/String";
    const KIND: MessageKind = MessageKind::String;
}

impl RosMessage for ActionChunk {
    const TYPE_NAME: &'static str = "edgevla_msgs/msg/ActionChunk";
    const KIND: MessageKind = MessageKind::ActionChunk;

    fn size_hint(&self) -> usize {
        64 + 4 * self.values.len()
    }

    /// `values.len() == horizon * dims`.
    fn validate(&self) -> Result<()> {
        let want = u64::from(self.horizon) * u64::from(self.dims);
        if self.values.len() as u64 == want {
            Ok(())
        } else {
            Err(invalid(
                Self::TYPE_NAME,
                format!(
                    "{} values for horizon {} x dims {}",
                    self.values.len(),
                    self.horizon,
                    self.dims
                ),
            ))
        }
    }
}

/// Encodes `msg` as CDR little-endian with its encapsulation header into `buf` (cleared
/// first), so a publisher can reuse one buffer.
///
/// # Errors
/// [`TransportError::InvalidMessage`] if `msg` fails [`RosMessage::validate`];
/// [`TransportError::Encode`] if the encoder fails.
pub fn encode_into<M: RosMessage>(msg: &M, buf: &mut Vec<u8>) -> Result<()> {
    msg.validate()?;
    buf.clear();
    buf.reserve(msg.size_hint());
    buf.extend_from_slice(&CDR_LE_HEADER);
    cdr_encoding::to_writer::<M, LittleEndian, _>(&mut *buf, msg).map_err(|e| {
        TransportError::Encode {
            type_name: M::TYPE_NAME,
            message: e.to_string(),
        }
    })
}

/// Encodes `msg` as CDR little-endian with its encapsulation header.
///
/// ```
/// use transport::msg::{ActionChunk, Time, decode, encode};
///
/// let chunk = ActionChunk {
///     stamp: Time { sec: 1, nanosec: 0 },
///     sequence: 7,
///     horizon: 2,
///     dims: 1,
///     values: vec![0.5, -0.5],
/// };
/// let bytes = encode(&chunk)?;
/// assert_eq!(&bytes[..4], &[0x00, 0x01, 0x00, 0x00]); // CDR_LE encapsulation
/// assert_eq!(bytes.len(), 4 + 28 + 2 * 4);
/// assert_eq!(decode::<ActionChunk>(&bytes)?, chunk);
/// # Ok::<(), transport::TransportError>(())
/// ```
///
/// # Errors
/// As [`encode_into`].
pub fn encode<M: RosMessage>(msg: &M) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    encode_into(msg, &mut buf)?;
    Ok(buf)
}

/// Decodes a CDR payload (encapsulation header + body, little or big endian) and validates it.
///
/// # Errors
/// [`TransportError::MissingEncapsulation`], [`TransportError::UnsupportedEncapsulation`],
/// [`TransportError::MalformedCdr`] (truncated, bad UTF-8, ...),
/// [`TransportError::TrailingBytes`] (more than 3 bytes left over), or
/// [`TransportError::InvalidMessage`].
pub fn decode<M: RosMessage>(payload: &[u8]) -> Result<M> {
    let (head, body) = payload
        .split_at_checked(4)
        .ok_or(TransportError::MissingEncapsulation { len: payload.len() })?;
    let id = u16::from_be_bytes([head[0], head[1]]);
    let decoded = match id {
        0x0001 => cdr_encoding::from_bytes::<M, LittleEndian>(body),
        0x0000 => cdr_encoding::from_bytes::<M, BigEndian>(body),
        _ => return Err(TransportError::UnsupportedEncapsulation { id }),
    };
    let (msg, used) = decoded.map_err(|e| TransportError::MalformedCdr {
        type_name: M::TYPE_NAME,
        message: e.to_string(),
    })?;
    let trailing = body.len().saturating_sub(used);
    if trailing > 3 {
        return Err(TransportError::TrailingBytes {
            type_name: M::TYPE_NAME,
            trailing,
        });
    }
    msg.validate()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(sec: i32, nanosec: u32, frame: &str) -> Header {
        Header {
            stamp: Time { sec, nanosec },
            frame_id: frame.to_owned(),
        }
    }

    #[test]
    fn compressed_image_byte_layout() {
        let msg = CompressedImage {
            header: header(1, 500_000_000, "cam0"),
            format: "jpeg".into(),
            data: vec![1, 2, 3],
        };
        let bytes = encode(&msg).unwrap();
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            0x00, 0x01, 0x00, 0x00,
            0x01, 0x00, 0x00, 0x00,
            0x00, 0x65, 0xcd, 0x1d,
            0x05, 0x00, 0x00, 0x00, b'c', b'a', b'm', b'0', 0x00,
            0x00, 0x00, 0x00,
            0x05, 0x00, 0x00, 0x00, b'j', b'p', b'e', b'g', 0x00,
            0x00, 0x00, 0x00,
            0x03, 0x00, 0x00, 0x00, 1, 2, 3,
        ];
        assert_eq!(bytes, want);
        assert_eq!(decode::<CompressedImage>(&bytes).unwrap(), msg);
    }

    #[test]
    fn image_byte_layout() {
        let msg = Image {
            header: header(2, 7, "c"),
            height: 1,
            width: 2,
            encoding: "mono8".into(),
            is_bigendian: 0,
            step: 2,
            data: vec![9, 8],
        };
        let bytes = encode(&msg).unwrap();
        #[rustfmt::skip]
        let want: Vec<u8> = vec![
            0x00, 0x01, 0x00, 0x00,
            2, 0, 0, 0,   7, 0, 0, 0,
            2, 0, 0, 0, b'c', 0,  0, 0,            // frame_id "c\0" + pad
            1, 0, 0, 0,   2, 0, 0, 0,               // height, width
            6, 0, 0, 0, b'm', b'o', b'n', b'o', b'8', 0, // encoding "mono8\0"
            0,                                      // is_bigendian (offset 30)
            0,                                      // pad to 4
            2, 0, 0, 0,                             // step
            2, 0, 0, 0, 9, 8,                       // data
        ];
        assert_eq!(bytes, want);
        assert_eq!(decode::<Image>(&bytes).unwrap(), msg);
    }

    #[test]
    fn joint_state_byte_layout_pads_doubles_to_8() {
        let msg = JointState {
            header: header(0, 0, ""),
            name: vec!["j".into()],
            position: vec![1.5],
            velocity: vec![],
            effort: vec![-2.0],
        };
        let bytes = encode(&msg).unwrap();
        let mut want: Vec<u8> = vec![0x00, 0x01, 0x00, 0x00];
        want.extend([0; 8]); // stamp
        want.extend([1, 0, 0, 0, 0, 0, 0, 0]); // frame_id "" = len 1 + NUL, pad to 4 (body offset 16)
        want.extend([1, 0, 0, 0, 2, 0, 0, 0, b'j', 0]); // name: 1 string "j\0" (offset 26)
        want.extend([0, 0]); // pad to 4 (offset 28)
        want.extend([1, 0, 0, 0]); // position count (offset 32): already 8-aligned
        want.extend(1.5f64.to_le_bytes());
        want.extend([0, 0, 0, 0]); // velocity count 0: no padding follows (offset 44)
        want.extend([1, 0, 0, 0]); // effort count (offset 48)
        want.extend((-2.0f64).to_le_bytes());
        assert_eq!(bytes, want);
        assert_eq!(decode::<JointState>(&bytes).unwrap(), msg);
    }

    #[test]
    fn imu_byte_layout_fixed_arrays_and_alignment() {
        let mut cov = [0.0; 9];
        cov[0] = 0.5;
        cov[8] = 2.0;
        let msg = Imu {
            header: header(1, 2, "imu0"),
            orientation: Quaternion::default(),
            orientation_covariance: COVARIANCE_NOT_PROVIDED,
            angular_velocity: Vector3 {
                x: 0.1,
                y: -0.2,
                z: 0.3,
            },
            angular_velocity_covariance: cov,
            linear_acceleration: Vector3 {
                x: 9.0,
                y: 0.0,
                z: -3.5,
            },
            linear_acceleration_covariance: [0.0; 9],
        };
        let bytes = encode(&msg).unwrap();
        let mut want: Vec<u8> = vec![0x00, 0x01, 0x00, 0x00];
        want.extend([1, 0, 0, 0, 2, 0, 0, 0]); // stamp
        want.extend([5, 0, 0, 0, b'i', b'm', b'u', b'0', 0]); // frame_id, ends at body 17
        want.extend([0; 7]); // pad to 8 (body offset 24): the quaternion's doubles
        let f = |w: &mut Vec<u8>, v: &[f64]| v.iter().for_each(|x| w.extend(x.to_le_bytes()));
        f(&mut want, &[0.0, 0.0, 0.0, 1.0]);
        f(&mut want, &COVARIANCE_NOT_PROVIDED); // fixed array: no count
        f(&mut want, &[0.1, -0.2, 0.3]);
        f(&mut want, &cov);
        f(&mut want, &[9.0, 0.0, -3.5]);
        f(&mut want, &[0.0; 9]);
        assert_eq!(bytes.len(), 4 + 320);
        assert_eq!(bytes, want);
        assert_eq!(decode::<Imu>(&bytes).unwrap(), msg);
        assert_eq!(
            MessageKind::Imu.decode(&bytes).unwrap().stamp(),
            Some(Time { sec: 1, nanosec: 2 })
        );
        let schema = MessageKind::Imu.ros2msg_schema();
        assert!(schema.contains("\nfloat64[9] orientation_covariance\n"));
        assert!(schema.contains("MSG: geometry_msgs/Vector3\n"));
        assert_eq!(
            MessageKind::from_type_name("sensor_msgs/Imu"),
            Some(MessageKind::Imu)
        );
    }

    #[test]
    fn action_chunk_fixed_offsets() {
        let msg = ActionChunk {
            stamp: Time { sec: 3, nanosec: 4 },
            sequence: 0x0102_0304_0506_0708,
            horizon: 2,
            dims: 1,
            values: vec![0.5, -1.0],
        };
        let bytes = encode(&msg).unwrap();
        let body = &bytes[4..];
        assert_eq!(&body[0..4], &3i32.to_le_bytes());
        assert_eq!(&body[4..8], &4u32.to_le_bytes());
        assert_eq!(&body[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&body[16..20], &2u32.to_le_bytes());
        assert_eq!(&body[20..24], &1u32.to_le_bytes());
        assert_eq!(&body[24..28], &2u32.to_le_bytes());
        assert_eq!(&body[28..32], &0.5f32.to_le_bytes());
        assert_eq!(&body[32..36], &(-1.0f32).to_le_bytes());
        assert_eq!(body.len(), 36);
        assert_eq!(decode::<ActionChunk>(&bytes).unwrap(), msg);
    }

    #[test]
    fn string_round_trip_and_layout() {
        let msg = StringMsg { data: "ok".into() };
        let bytes = encode(&msg).unwrap();
        assert_eq!(bytes, vec![0, 1, 0, 0, 3, 0, 0, 0, b'o', b'k', 0]);
        assert_eq!(decode::<StringMsg>(&bytes).unwrap(), msg);
    }

    #[test]
    fn big_endian_payload_decodes() {
        // StringMsg "a" in CDR_BE.
        let bytes = [0, 0, 0, 0, 0, 0, 0, 2, b'a', 0];
        let msg: StringMsg = decode(&bytes).unwrap();
        assert_eq!(msg.data, "a");
    }

    #[test]
    fn round_trips_every_kind_through_any_message() {
        let js = JointState {
            header: header(5, 6, "base"),
            name: vec!["a".into(), "bb".into()],
            position: vec![0.1, 0.2],
            velocity: vec![1.0, 2.0],
            effort: vec![],
        };
        let bytes = encode(&js).unwrap();
        let any = MessageKind::JointState.decode(&bytes).unwrap();
        assert_eq!(any, AnyMessage::JointState(js));
        assert_eq!(any.encode().unwrap(), bytes);
        let text = AnyMessage::String(StringMsg { data: "go".into() });
        let again = MessageKind::String.decode(&text.encode().unwrap()).unwrap();
        assert_eq!(again, text);
    }

    #[test]
    fn bad_payloads_are_errors() {
        let good = encode(&CompressedImage {
            header: header(1, 2, "f"),
            format: "png".into(),
            data: vec![7; 10],
        })
        .unwrap();
        assert!(matches!(
            decode::<CompressedImage>(&good[..2]),
            Err(TransportError::MissingEncapsulation { len: 2 })
        ));
        let mut xcdr2 = good.clone();
        xcdr2[1] = 0x07;
        assert!(matches!(
            decode::<CompressedImage>(&xcdr2),
            Err(TransportError::UnsupportedEncapsulation { id: 7 })
        ));
        assert!(matches!(
            decode::<CompressedImage>(&good[..good.len() - 1]),
            Err(TransportError::MalformedCdr { .. })
        ));
        let mut long = good.clone();
        long.extend([0; 8]);
        assert!(matches!(
            decode::<CompressedImage>(&long),
            Err(TransportError::TrailingBytes { trailing: 8, .. })
        ));
        // A length field claiming more bytes than the payload has.
        let mut huge = good.clone();
        let n = huge.len();
        huge[n - 14..n - 10].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode::<CompressedImage>(&huge).is_err());
        // Wrong format string.
        let bmp = encode_unchecked(&CompressedImage {
            header: header(1, 2, "f"),
            format: "bmp".into(),
            data: vec![1],
        });
        assert!(matches!(
            decode::<CompressedImage>(&bmp),
            Err(TransportError::InvalidMessage { .. })
        ));
    }

    fn encode_unchecked<M: RosMessage>(msg: &M) -> Vec<u8> {
        let mut buf = CDR_LE_HEADER.to_vec();
        cdr_encoding::to_writer::<M, LittleEndian, _>(&mut buf, msg).unwrap();
        buf
    }

    #[test]
    fn invariants_are_checked() {
        let img = Image {
            header: Header::default(),
            height: 2,
            width: 2,
            encoding: "rgb8".into(),
            is_bigendian: 0,
            step: 6,
            data: vec![0; 11],
        };
        assert!(encode(&img).is_err());
        let mut unknown = img.clone();
        unknown.data = vec![0; 12];
        unknown.encoding = "weird".into();
        assert!(encode(&unknown).is_err());
        let ac = ActionChunk {
            horizon: 2,
            dims: 3,
            values: vec![0.0; 5],
            ..ActionChunk::default()
        };
        assert!(matches!(
            decode::<ActionChunk>(&encode_unchecked(&ac)),
            Err(TransportError::InvalidMessage { .. })
        ));
        let js = JointState {
            name: vec!["a".into()],
            position: vec![1.0, 2.0],
            ..JointState::default()
        };
        assert!(encode(&js).is_err());
    }

    #[test]
    fn schemas_name_their_dependencies() {
        let s = MessageKind::CompressedImage.ros2msg_schema();
        assert!(s.starts_with("std_msgs/Header header\n"));
        assert!(s.contains("MSG: std_msgs/Header\n"));
        assert!(s.contains("MSG: builtin_interfaces/Time\n"));
        assert_eq!(MessageKind::String.ros2msg_schema(), "string data\n");
        assert_eq!(
            MessageKind::from_type_name("sensor_msgs/Image"),
            Some(MessageKind::Image)
        );
        assert_eq!(MessageKind::from_type_name("nope/msg/X"), None);
    }

    #[test]
    fn time_nanos_round_trip() {
        let t = Time::from_nanos(12_345_678_901);
        assert_eq!(
            t,
            Time {
                sec: 12,
                nanosec: 345_678_901
            }
        );
        assert_eq!(t.as_nanos(), 12_345_678_901);
    }
}
