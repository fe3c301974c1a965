//! Key expressions: `<prefix>/<id>/cam/<name>`, `<prefix>/<id>/joints`,
//! `<prefix>/<id>/action`, `<prefix>/<id>/status`, `<prefix>/<id>/instruction`, with `prefix`
//! defaulting to `robot`.
//!
//! [`KeySpace`] builds keys for one robot; [`KeySpace::parse`] maps a received key back to a
//! [`Topic`] (any robot id under the prefix), which decides the message a key carries:
//! cameras carry `sensor_msgs/CompressedImage` (or `sensor_msgs/Image` when the sample's
//! encoding says so), joints `sensor_msgs/JointState`, action `edgevla_msgs/ActionChunk`,
//! status and instruction `std_msgs/String`.

use serde::{Deserialize, Serialize};

use crate::error::{Result, TransportError};
use crate::msg::MessageKind;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "robot";

/// `<prefix>/replay/step`: where a stepped replay takes its "next" queries by default.
#[must_use]
pub fn replay_step_key(prefix: &str) -> String {
    format!("{prefix}/replay/step")
}

/// Checks that `chunk` can stand as one key-expression chunk (no `/`, no wildcards).
///
/// # Errors
/// [`TransportError::InvalidKeyChunk`].
pub fn check_chunk(chunk: &str) -> Result<()> {
    if chunk.is_empty() || chunk.contains(['/', '*', '$', '?', '#']) {
        Err(TransportError::InvalidKeyChunk(chunk.to_owned()))
    } else {
        Ok(())
    }
}

/// The keys of one robot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpace {
    /// Key prefix, one or more chunks (`robot`, `lab/robot`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// This robot's id (one chunk).
    pub robot_id: String,
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_owned()
}

/// What a key is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Topic {
    /// A camera stream.
    Camera {
        /// Robot id.
        robot: String,
        /// Camera name.
        name: String,
    },
    /// An inertial measurement unit (`sensor_msgs/Imu`).
    Imu {
        /// Robot id.
        robot: String,
        /// IMU name.
        name: String,
    },
    /// Joint states.
    Joints {
        /// Robot id.
        robot: String,
    },
    /// Action chunks.
    Action {
        /// Robot id.
        robot: String,
    },
    /// Status text.
    Status {
        /// Robot id.
        robot: String,
    },
    /// The episode's language instruction (`std_msgs/String`); each message starts a new
    /// episode (the node resets its context and stores the text as attention sinks).
    Instruction {
        /// Robot id.
        robot: String,
    },
}

impl Topic {
    /// The message this topic carries when the sample says nothing else.
    #[must_use]
    pub fn default_kind(&self) -> MessageKind {
        match self {
            Self::Camera { .. } => MessageKind::CompressedImage,
            Self::Imu { .. } => MessageKind::Imu,
            Self::Joints { .. } => MessageKind::JointState,
            Self::Action { .. } => MessageKind::ActionChunk,
            Self::Status { .. } | Self::Instruction { .. } => MessageKind::String,
        }
    }

    /// Whether this topic may carry `kind` (cameras take compressed or raw images).
    #[must_use]
    pub fn accepts(&self, kind: MessageKind) -> bool {
        match self {
            Self::Camera { .. } => {
                matches!(kind, MessageKind::CompressedImage | MessageKind::Image)
            }
            _ => kind == self.default_kind(),
        }
    }
}

impl KeySpace {
    /// The keys of `robot_id` under `prefix`.
    ///
    /// # Errors
    /// [`TransportError::InvalidKeyChunk`] if the id or a prefix chunk is not a plain chunk.
    pub fn new(prefix: &str, robot_id: &str) -> Result<Self> {
        let ks = Self {
            prefix: prefix.to_owned(),
            robot_id: robot_id.to_owned(),
        };
        ks.validate()?;
        Ok(ks)
    }

    /// Checks the prefix and id (for a `KeySpace` that came from a config file).
    ///
    /// # Errors
    /// [`TransportError::InvalidKeyChunk`].
    pub fn validate(&self) -> Result<()> {
        for chunk in self.prefix.split('/') {
            check_chunk(chunk)?;
        }
        check_chunk(&self.robot_id)
    }

    fn base(&self) -> String {
        format!("{}/{}", self.prefix, self.robot_id)
    }

    /// `<prefix>/<id>/cam/<name>`.
    ///
    /// # Errors
    /// [`TransportError::InvalidKeyChunk`] if `name` is not a plain chunk.
    pub fn camera(&self, name: &str) -> Result<String> {
        check_chunk(name)?;
        Ok(format!("{}/cam/{name}", self.base()))
    }

    /// `<prefix>/<id>/imu/<name>`.
    ///
    /// # Errors
    /// [`TransportError::InvalidKeyChunk`] if `name` is not a plain chunk.
    pub fn imu(&self, name: &str) -> Result<String> {
        check_chunk(name)?;
        Ok(format!("{}/imu/{name}", self.base()))
    }

    /// `<prefix>/<id>/cam/*`: every camera of this robot.
    #[must_use]
    pub fn all_cameras(&self) -> String {
        format!("{}/cam/*", self.base())
    }

    /// `<prefix>/<id>/joints`.
    #[must_use]
    pub fn joints(&self) -> String {
        format!("{}/joints", self.base())
    }

    /// `<prefix>/<id>/action`.
    #[must_use]
    pub fn action(&self) -> String {
        format!("{}/action", self.base())
    }

    /// `<prefix>/<id>/status`.
    #[must_use]
    pub fn status(&self) -> String {
        format!("{}/status", self.base())
    }

    /// `<prefix>/<id>/instruction`.
    #[must_use]
    pub fn instruction(&self) -> String {
        format!("{}/instruction", self.base())
    }

    /// `<prefix>/<id>/**`: everything of this robot.
    #[must_use]
    pub fn all(&self) -> String {
        format!("{}/**", self.base())
    }

    /// Maps a key of any robot under this prefix to its [`Topic`].
    ///
    /// # Errors
    /// [`TransportError::UnknownKey`] for anything else.
    pub fn parse(&self, key: &str) -> Result<Topic> {
        parse_key(&self.prefix, key)
    }
}

/// Maps `key` under `prefix` to its [`Topic`].
///
/// # Errors
/// [`TransportError::UnknownKey`] if `key` is not
/// `<prefix>/<id>/{cam/<name>,imu/<name>,joints,action,status,instruction}`.
pub fn parse_key(prefix: &str, key: &str) -> Result<Topic> {
    let unknown = || TransportError::UnknownKey {
        key: key.to_owned(),
        prefix: prefix.to_owned(),
    };
    let rest = key
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or_else(unknown)?;
    let parts: Vec<&str> = rest.split('/').collect();
    let robot = |id: &str| -> Result<String> {
        check_chunk(id).map_err(|_| unknown())?;
        Ok(id.to_owned())
    };
    match parts.as_slice() {
        [id, "cam", name] => {
            check_chunk(name).map_err(|_| unknown())?;
            Ok(Topic::Camera {
                robot: robot(id)?,
                name: (*name).to_owned(),
            })
        }
        [id, "imu", name] => {
            check_chunk(name).map_err(|_| unknown())?;
            Ok(Topic::Imu {
                robot: robot(id)?,
                name: (*name).to_owned(),
            })
        }
        [id, "joints"] => Ok(Topic::Joints { robot: robot(id)? }),
        [id, "action"] => Ok(Topic::Action { robot: robot(id)? }),
        [id, "status"] => Ok(Topic::Status { robot: robot(id)? }),
        [id, "instruction"] => Ok(Topic::Instruction { robot: robot(id)? }),
        _ => Err(unknown()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_keys() {
        let ks = KeySpace::new("robot", "r1").unwrap();
        assert_eq!(ks.camera("wrist").unwrap(), "robot/r1/cam/wrist");
        assert_eq!(ks.joints(), "robot/r1/joints");
        assert_eq!(ks.imu("imu0").unwrap(), "robot/r1/imu/imu0");
        assert_eq!(
            ks.parse("robot/r1/imu/imu0").unwrap(),
            Topic::Imu {
                robot: "r1".into(),
                name: "imu0".into()
            }
        );
        assert!(ks.imu("a/b").is_err());
        assert_eq!(ks.action(), "robot/r1/action");
        assert_eq!(ks.status(), "robot/r1/status");
        assert_eq!(ks.instruction(), "robot/r1/instruction");
        assert_eq!(
            ks.parse("robot/r1/instruction").unwrap(),
            Topic::Instruction { robot: "r1".into() }
        );
        assert_eq!(ks.all(), "robot/r1/**");
        assert_eq!(
            ks.parse("robot/r1/cam/wrist").unwrap(),
            Topic::Camera {
                robot: "r1".into(),
                name: "wrist".into()
            }
        );
        assert_eq!(
            ks.parse("robot/other/joints").unwrap(),
            Topic::Joints {
                robot: "other".into()
            }
        );
    }

    #[test]
    fn custom_prefix() {
        let ks = KeySpace::new("lab/arm", "7").unwrap();
        assert_eq!(ks.action(), "lab/arm/7/action");
        assert!(matches!(
            ks.parse("lab/arm/7/status").unwrap(),
            Topic::Status { .. }
        ));
        assert!(ks.parse("robot/7/status").is_err());
    }

    #[test]
    fn rejects_unknown_keys_and_bad_chunks() {
        let ks = KeySpace::new("robot", "r1").unwrap();
        for key in [
            "robot/r1/lidar",
            "robot/r1/cam",
            "robot/r1/cam/a/b",
            "robot",
            "robotx/r1/joints",
            "other/r1/joints",
        ] {
            assert!(
                matches!(ks.parse(key), Err(TransportError::UnknownKey { .. })),
                "{key}"
            );
        }
        assert!(ks.camera("a/b").is_err());
        assert!(ks.camera("*").is_err());
        assert!(KeySpace::new("robot", "").is_err());
        assert!(KeySpace::new("ro*bot", "x").is_err());
    }

    #[test]
    fn topics_accept_their_kinds() {
        let cam = Topic::Camera {
            robot: "r".into(),
            name: "c".into(),
        };
        assert!(cam.accepts(MessageKind::Image));
        assert!(cam.accepts(MessageKind::CompressedImage));
        assert!(!cam.accepts(MessageKind::JointState));
        let joints = Topic::Joints { robot: "r".into() };
        assert!(!joints.accepts(MessageKind::Image));
    }
}
