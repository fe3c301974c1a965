//! edgevla transport: sensor streams in and actions out over zenoh, in the wire format of
//! ROS 2, with MCAP recording and deterministic replay. No burn.
//!
//! Layout:
//! - [`msg`]: ROS 2 `sensor_msgs/CompressedImage`, `sensor_msgs/Image`,
//!   `sensor_msgs/JointState`, `std_msgs/String` and `edgevla_msgs/ActionChunk` as serde
//!   structs in CDR (the byte layout is documented there);
//! - [`keys`]: the key space `<prefix>/<id>/{cam/<name>,joints,action,status,instruction}`;
//! - [`session`]: zenoh sessions (peer on loopback without multicast by default, or client
//!   of a router) from a serde config;
//! - [`pubsub`]: typed publishers with per-stream QoS, and subscribers that decode into a
//!   ring of the newest N messages per topic and count what they drop or reject;
//! - [`record`]: MCAP recording with ROS 2 schemas; [`recording`]: reading recordings back,
//!   truncated ones included;
//! - [`replay`]: stepped replay (a library API with no clock) and republishing at a rate,
//!   as fast as possible, or one message per request;
//! - [`ros2`]: ROS 2 mode, rmw_zenoh's protocol: topic keys with type names and RIHS01 type
//!   hashes, the per-sample attachment, and the liveliness tokens of the ROS 2 graph;
//! - [`rosbag2`]: rosbag2 bag folders (`metadata.yaml` + MCAP) for ROS 2-mode recordings;
//! - [`clock`]: the injected clocks everything above takes.
//!
//! Every blocking call takes a timeout or a shutdown flag; nothing reads the wall clock but
//! [`clock::SystemClock`].

pub mod clock;
pub mod error;
pub mod keys;
pub mod msg;
pub mod pubsub;
pub mod record;
pub mod recording;
pub mod replay;
pub mod ros2;
pub mod rosbag2;
pub mod security;
pub mod session;
pub mod zenohd;

pub use error::{Result, TransportError};
