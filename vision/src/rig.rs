//! Camera rig: which cameras a robot has, where they are, and how their frames are synced.
//!
//! A rig is a TOML file under `configs/rigs/`:
//!
//! ```toml
//! name = "euroc-stereo"
//!
//! [decode]              # optional, DecodeLimits
//! max_width = 1024
//!
//! [sync]                # optional, SyncConfig
//! rate_hz = 10.0
//! tolerance_ms = 10.0
//! missing = "hold"      # hold | skip | mask
//!
//! [[camera]]            # one table per camera; its position is the camera's index
//! name = "cam0"
//! topic = "robot/euroc/cam/cam0"
//! resolution = [752, 480]
//! rate_hz = 20.0
//! intrinsics = { fx = 458.654, fy = 457.296, cx = 367.215, cy = 248.375 }
//! # pose of the camera in the robot (body) frame: translation plus exactly one of
//! # `quaternion_wxyz` or `rotation_matrix` (row-major)
//! extrinsics = { translation = [-0.0216, -0.0647, 0.0098], quaternion_wxyz = [1.0, 0.0, 0.0, 0.0] }
//! ```
//!
//! The order of the `[[camera]]` tables is the camera index the model's camera embedding uses:
//! append new cameras at the end to keep existing indices stable. Unknown keys, non-positive
//! focal lengths, principal points outside the image, non-unit quaternions, non-rotation
//! matrices and duplicate names or topics are errors that name the key.

use std::path::Path;

use nalgebra::{
    Isometry3, Matrix3, Point2, Point3, Quaternion, Rotation3, Translation3, UnitQuaternion,
};
use serde::{Deserialize, Serialize};

use crate::{DecodeLimits, SyncConfig, VisionError};

/// Pinhole intrinsics in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intrinsics {
    /// Focal length along x, pixels (positive).
    pub fx: f64,
    /// Focal length along y, pixels (positive).
    pub fy: f64,
    /// Principal point x, pixels (inside the image).
    pub cx: f64,
    /// Principal point y, pixels (inside the image).
    pub cy: f64,
}

impl Intrinsics {
    /// The camera matrix `K`.
    pub fn matrix(&self) -> Matrix3<f64> {
        Matrix3::new(self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0)
    }

    /// Projects a point in the camera frame (z forward) to pixels; `None` behind the camera.
    pub fn project(&self, p: &Point3<f64>) -> Option<Point2<f64>> {
        (p.z > 0.0)
            .then(|| Point2::new(self.fx * p.x / p.z + self.cx, self.fy * p.y / p.z + self.cy))
    }
}

/// Camera pose in the robot frame as written in TOML.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtrinsicsConfig {
    /// Camera origin in the robot frame, metres.
    pub translation: [f64; 3],
    /// Rotation as a unit quaternion `[w, x, y, z]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quaternion_wxyz: Option<[f64; 4]>,
    /// Rotation as a row-major 3x3 matrix (camera axes in robot coordinates, as EuRoC's `T_BS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_matrix: Option<[[f64; 3]; 3]>,
}

/// One camera as written in TOML.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraConfig {
    /// Unique name (`"head_left"`).
    pub name: String,
    /// Unique transport topic / key expression the frames arrive on.
    pub topic: String,
    /// `[width, height]` in pixels.
    pub resolution: [u32; 2],
    /// Expected frame rate, Hz.
    pub rate_hz: f64,
    /// Pinhole intrinsics.
    pub intrinsics: Intrinsics,
    /// Pose in the robot frame.
    pub extrinsics: ExtrinsicsConfig,
}

/// A rig file as written in TOML; [`Rig::from_toml_str`] parses and validates it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RigConfig {
    /// Rig name.
    pub name: String,
    /// Decode limits for every camera of the rig.
    #[serde(default)]
    pub decode: DecodeLimits,
    /// Time-sync settings.
    #[serde(default)]
    pub sync: SyncConfig,
    /// Cameras, in index order.
    #[serde(rename = "camera")]
    pub cameras: Vec<CameraConfig>,
}

/// A validated camera.
#[derive(Clone, Debug, PartialEq)]
pub struct Camera {
    /// Stable index (position in the rig file), used for the model's camera embedding.
    pub index: usize,
    /// Unique name.
    pub name: String,
    /// Transport topic.
    pub topic: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Expected rate, Hz.
    pub rate_hz: f64,
    /// Pinhole intrinsics.
    pub intrinsics: Intrinsics,
    /// Camera pose in the robot frame (maps camera coordinates to robot coordinates).
    pub pose: Isometry3<f64>,
}

/// A validated rig.
#[derive(Clone, Debug, PartialEq)]
pub struct Rig {
    /// Rig name.
    pub name: String,
    /// Decode limits.
    pub decode: DecodeLimits,
    /// Sync settings.
    pub sync: SyncConfig,
    /// Cameras by index.
    pub cameras: Vec<Camera>,
}

impl Rig {
    /// Parses and validates a rig file's text.
    ///
    /// # Errors
    /// [`VisionError::Parse`] for TOML syntax, unknown keys and wrong types (the key path serde
    /// reached); [`VisionError::Config`] for values that fail validation (the key named).
    pub fn from_toml_str(text: &str) -> Result<Self, VisionError> {
        let de = toml::Deserializer::parse(text).map_err(|e| VisionError::Parse {
            key: ".".into(),
            message: e.to_string(),
        })?;
        let config: RigConfig =
            serde_path_to_error::deserialize(de).map_err(|e| VisionError::Parse {
                key: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        Self::from_config(config)
    }

    /// Reads, parses and validates a rig file.
    ///
    /// # Errors
    /// [`VisionError::Io`] when the file cannot be read; otherwise as [`Rig::from_toml_str`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, VisionError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| VisionError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Validates a parsed config.
    ///
    /// # Errors
    /// [`VisionError::Config`] naming the first invalid key.
    pub fn from_config(config: RigConfig) -> Result<Self, VisionError> {
        if config.name.trim().is_empty() {
            return Err(VisionError::config("name", "must not be empty"));
        }
        config.decode.validate("decode")?;
        config.sync.validate("sync")?;
        if config.cameras.is_empty() {
            return Err(VisionError::config(
                "camera",
                "a rig needs at least one [[camera]]",
            ));
        }
        let mut cameras: Vec<Camera> = Vec::with_capacity(config.cameras.len());
        for (index, cam) in config.cameras.into_iter().enumerate() {
            let key = |k: &str| format!("camera[{index}].{k}");
            if cam.name.trim().is_empty() {
                return Err(VisionError::config(key("name"), "must not be empty"));
            }
            if cam.topic.trim().is_empty() {
                return Err(VisionError::config(key("topic"), "must not be empty"));
            }
            if let Some(other) = cameras.iter().find(|c| c.name == cam.name) {
                return Err(VisionError::config(
                    key("name"),
                    format!(
                        "duplicate camera name `{}` (also camera[{}])",
                        cam.name, other.index
                    ),
                ));
            }
            if let Some(other) = cameras.iter().find(|c| c.topic == cam.topic) {
                return Err(VisionError::config(
                    key("topic"),
                    format!(
                        "duplicate topic `{}` (also camera[{}])",
                        cam.topic, other.index
                    ),
                ));
            }
            let [width, height] = cam.resolution;
            if width == 0 || height == 0 {
                return Err(VisionError::config(
                    key("resolution"),
                    "width and height must be positive",
                ));
            }
            if width > config.decode.max_width || height > config.decode.max_height {
                return Err(VisionError::config(
                    key("resolution"),
                    format!(
                        "{width}x{height} is over decode limits {}x{}",
                        config.decode.max_width, config.decode.max_height
                    ),
                ));
            }
            if !(cam.rate_hz.is_finite() && cam.rate_hz > 0.0) {
                return Err(VisionError::config(
                    key("rate_hz"),
                    format!("must be positive (got {})", cam.rate_hz),
                ));
            }
            let k = cam.intrinsics;
            for (name, v) in [("fx", k.fx), ("fy", k.fy)] {
                if !(v.is_finite() && v > 0.0) {
                    return Err(VisionError::config(
                        key(&format!("intrinsics.{name}")),
                        format!("focal length must be positive (got {v})"),
                    ));
                }
            }
            for (name, v, limit) in [("cx", k.cx, width), ("cy", k.cy, height)] {
                if !(v.is_finite() && (0.0..=f64::from(limit)).contains(&v)) {
                    return Err(VisionError::config(
                        key(&format!("intrinsics.{name}")),
                        format!("principal point {v} is outside the image (0..={limit})"),
                    ));
                }
            }
            let pose = pose(&cam.extrinsics, &key("extrinsics"))?;
            cameras.push(Camera {
                index,
                name: cam.name,
                topic: cam.topic,
                width,
                height,
                rate_hz: cam.rate_hz,
                intrinsics: k,
                pose,
            });
        }
        Ok(Self {
            name: config.name,
            decode: config.decode,
            sync: config.sync,
            cameras,
        })
    }

    /// Number of cameras.
    pub fn n_cams(&self) -> usize {
        self.cameras.len()
    }

    /// The camera called `name`.
    pub fn camera(&self, name: &str) -> Option<&Camera> {
        self.cameras.iter().find(|c| c.name == name)
    }

    /// The index of the camera called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.camera(name).map(|c| c.index)
    }

    /// The index of the camera whose frames arrive on `topic`.
    pub fn index_of_topic(&self, topic: &str) -> Option<usize> {
        self.cameras
            .iter()
            .find(|c| c.topic == topic)
            .map(|c| c.index)
    }
}

/// Builds and checks the pose; `key` is `camera[i].extrinsics`.
fn pose(e: &ExtrinsicsConfig, key: &str) -> Result<Isometry3<f64>, VisionError> {
    if e.translation.iter().any(|v| !v.is_finite()) {
        return Err(VisionError::config(
            format!("{key}.translation"),
            "must be finite",
        ));
    }
    let rotation = match (e.quaternion_wxyz, e.rotation_matrix) {
        (Some(_), Some(_)) => {
            return Err(VisionError::config(
                key,
                "give one of `quaternion_wxyz` or `rotation_matrix`, not both",
            ));
        }
        (None, None) => {
            return Err(VisionError::config(
                key,
                "missing rotation: give `quaternion_wxyz` or `rotation_matrix`",
            ));
        }
        (Some([w, x, y, z]), None) => {
            let q = Quaternion::new(w, x, y, z);
            let norm = q.norm();
            if !(norm.is_finite() && (norm - 1.0).abs() <= 1e-3) {
                return Err(VisionError::config(
                    format!("{key}.quaternion_wxyz"),
                    format!("must be a unit quaternion (norm {norm})"),
                ));
            }
            UnitQuaternion::from_quaternion(q)
        }
        (None, Some(m)) => {
            let r = Matrix3::from_fn(|i, j| m[i][j]);
            let err = (r * r.transpose() - Matrix3::identity()).abs().max();
            let det = r.determinant();
            if !(err.is_finite() && err <= 1e-6 && det > 0.0) {
                return Err(VisionError::config(
                    format!("{key}.rotation_matrix"),
                    format!(
                        "must be a rotation (max |R Rᵀ - I| = {err:e} > 1e-6 or det {det} <= 0)"
                    ),
                ));
            }
            UnitQuaternion::from_rotation_matrix(&Rotation3::from_matrix_unchecked(r))
        }
    };
    let [x, y, z] = e.translation;
    Ok(Isometry3::from_parts(Translation3::new(x, y, z), rotation))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "test"
[sync]
rate_hz = 15.0
[[camera]]
name = "left"
topic = "robot/t/cam/left"
resolution = [64, 48]
rate_hz = 30.0
intrinsics = { fx = 50.0, fy = 50.0, cx = 32.0, cy = 24.0 }
extrinsics = { translation = [0.1, 0.0, 1.2], quaternion_wxyz = [0.7071067811865476, 0.0, 0.0, 0.7071067811865476] }
[[camera]]
name = "right"
topic = "robot/t/cam/right"
resolution = [64, 48]
rate_hz = 30.0
intrinsics = { fx = 50.0, fy = 50.0, cx = 32.0, cy = 24.0 }
extrinsics = { translation = [-0.1, 0.0, 1.2], rotation_matrix = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]] }
"#;

    #[test]
    fn parses_indices_and_poses() {
        let rig = Rig::from_toml_str(GOOD).unwrap();
        assert_eq!(rig.n_cams(), 2);
        assert_eq!(rig.index_of("left"), Some(0));
        assert_eq!(rig.index_of("right"), Some(1));
        assert_eq!(rig.index_of_topic("robot/t/cam/right"), Some(1));
        assert_eq!(rig.index_of("nope"), None);
        assert!((rig.sync.rate_hz - 15.0).abs() < 1e-12);
        // Both cameras are rotated 90° about z: the quaternion and the matrix must agree
        // (tolerance 1e-12, f64 rounding).
        let (l, r) = (&rig.cameras[0].pose, &rig.cameras[1].pose);
        assert!(l.rotation.angle_to(&r.rotation) < 1e-12);
        // Camera x axis maps to robot y; the origin maps to the translation.
        let p = l * Point3::new(1.0, 0.0, 0.0);
        assert!((p - Point3::new(0.1, 1.0, 1.2)).norm() < 1e-12, "{p}");
        let k = rig.cameras[0].intrinsics;
        let px = k.project(&Point3::new(0.2, -0.1, 2.0)).unwrap();
        assert!((px - Point2::new(37.0, 21.5)).norm() < 1e-12);
        assert!(k.project(&Point3::new(0.0, 0.0, -1.0)).is_none());
        assert_eq!(k.matrix()[(0, 2)], 32.0);
    }

    fn err_key(text: &str) -> String {
        match Rig::from_toml_str(text) {
            Err(VisionError::Config { key, .. } | VisionError::Parse { key, .. }) => key,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn invalid_rigs_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "fx = 50.0, fy = 50.0, cx = 32.0",
                "fx = -1.0, fy = 50.0, cx = 32.0",
                "camera[0].intrinsics.fx",
            ),
            (
                "fx = 50.0, fy = 50.0, cx = 32.0",
                "fx = 50.0, fy = 0.0, cx = 32.0",
                "camera[0].intrinsics.fy",
            ),
            (
                "fx = 50.0, fy = 50.0, cx = 32.0",
                "fx = 50.0, fy = 50.0, cx = 99.0",
                "camera[0].intrinsics.cx",
            ),
            ("name = \"right\"", "name = \"left\"", "camera[1].name"),
            (
                "topic = \"robot/t/cam/right\"",
                "topic = \"robot/t/cam/left\"",
                "camera[1].topic",
            ),
            ("rate_hz = 15.0", "rate_hz = 0.0", "sync.rate_hz"),
            (
                "resolution = [64, 48]\nrate_hz = 30.0\nintrinsics = { fx = 50.0, fy = 50.0, cx = 32.0, cy = 24.0 }\nextrinsics = { translation = [0.1",
                "resolution = [64, 0]\nrate_hz = 30.0\nintrinsics = { fx = 50.0, fy = 50.0, cx = 32.0, cy = 24.0 }\nextrinsics = { translation = [0.1",
                "camera[0].resolution",
            ),
            (
                "quaternion_wxyz = [0.7071067811865476, 0.0, 0.0, 0.7071067811865476]",
                "quaternion_wxyz = [1.0, 1.0, 0.0, 0.0]",
                "camera[0].extrinsics.quaternion_wxyz",
            ),
            (
                "[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]",
                "[1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]",
                "camera[1].extrinsics.rotation_matrix",
            ),
            (
                "[0.0, 0.0, 1.0]] }",
                "[0.0, 0.0, 1.0]], quaternion_wxyz = [1.0, 0.0, 0.0, 0.0] }",
                "camera[1].extrinsics",
            ),
            (
                "rate_hz = 30.0\nintrinsics = { fx = 50.0, fy = 50.0, cx = 32.0, cy = 24.0 }\nextrinsics = { translation = [0.1",
                "rate_hz = 30.0\nexposure = 3\nintrinsics = { fx = 50.0, fy = 50.0, cx = 32.0, cy = 24.0 }\nextrinsics = { translation = [0.1",
                "camera[0].exposure",
            ),
            ("[sync]\nrate_hz = 15.0", "[sync]\nrate = 15.0", "sync.rate"),
            (
                "cy = 24.0 }\nextrinsics = { translation = [0.1",
                "cy = 24.0, skew = 0.0 }\nextrinsics = { translation = [0.1",
                "camera[0].intrinsics.skew",
            ),
        ];
        for (from, to, want) in cases {
            assert!(GOOD.contains(from), "test case pattern not found: {from}");
            let text = GOOD.replacen(from, to, 1);
            assert_eq!(&err_key(&text), want, "after replacing `{from}` by `{to}`");
        }
        // Unknown keys also say which key in the message.
        let err =
            Rig::from_toml_str(&GOOD.replacen("rate_hz = 30.0", "rate_hz = 30.0\nexposure = 3", 1))
                .unwrap_err();
        assert!(err.to_string().contains("exposure"), "{err}");
        assert_eq!(err_key("name = \"x\"\ncamera = []"), "camera");
        assert_eq!(err_key("name = \"\"\ncamera = []"), "name");
    }
}
