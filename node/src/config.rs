//! `configs/node/*.toml`: the node's settings (see `configs/node/edge.toml` for every key).

use crate::error::{Context as _, Error, Result};
use runtime::kv::KvCacheConfig;
use serde::{Deserialize, Serialize};
use transport::pubsub::SubscriberConfig;

use crate::checkpoint::read_named;

/// Where the synchronizer's "now" comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockMode {
    /// Newest input stamp + wall time since it arrived (live robots, replays at 1x).
    #[default]
    Source,
    /// The stamp of the newest joint state: a step is decided when the robot's joint state for
    /// it arrives (lock-step simulation, stepped replay; deterministic).
    Joints,
}

/// A node config file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Robot id (one key chunk).
    pub robot_id: String,
    /// Key prefix.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Camera rig: a shipped name (configs/rigs/) or a path.
    #[serde(default = "default_rig")]
    pub rig: String,
    /// Model config for a random init when no checkpoint is used: shipped name or path.
    #[serde(default = "default_model")]
    pub model: String,
    /// Checkpoint folder tried when `--model` is not given (skipped when absent).
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// RoPE preset replacing the model's own ("" = keep).
    #[serde(default)]
    pub rope: String,
    /// Seed of the random init.
    #[serde(default)]
    pub seed: u64,
    /// Time source of the synchronizer.
    #[serde(default)]
    pub clock: ClockMode,
    /// Instruction used when frames arrive before any instruction message.
    #[serde(default)]
    pub default_instruction: String,
    /// Proprio channel names, taken from `JointState.position` by name.
    #[serde(default = "default_proprio")]
    pub proprio: Vec<String>,
    /// Back-jump of a stream's stamps that counts as a publisher restart, ms.
    #[serde(default = "default_restart_ms")]
    pub restart_ms: f64,
    /// No frame-step for this long = stalled, ms.
    #[serde(default = "default_stall_ms")]
    pub stall_ms: f64,
    /// Status message period, ms.
    #[serde(default = "default_status_ms")]
    pub status_ms: f64,
    /// KV cache format and budget (default: the model's own `kv_cache`).
    #[serde(default)]
    pub kv_cache: Option<KvCacheConfig>,
    /// The memory bank's run-time settings (models with a memory; default: the model's own
    /// `[memory]`): its length in memory tokens, which one leaves when it is full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<runtime::model::MemoryOverride>,
    /// Subscriber ring.
    #[serde(default)]
    pub subscriber: SubscriberConfig,
    /// ROS 2 mode: speak rmw_zenoh's protocol on these ROS topics instead of edgevla's key
    /// space (`prefix` / `robot_id`); absent: edgevla's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ros2: Option<Ros2Topics>,
}

/// The node as a ROS 2 node (`[ros2]`): its name in the graph and the topics it reads and
/// writes. Every topic is a fully qualified ROS name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ros2Topics {
    /// `ROS_DOMAIN_ID`.
    #[serde(default)]
    pub domain_id: u32,
    /// The node's namespace.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The node's name.
    #[serde(default = "default_node_name")]
    pub node_name: String,
    /// Rig camera name → its `sensor_msgs/msg/CompressedImage` (or `Image`) topic; every camera
    /// of the rig needs one.
    pub cameras: std::collections::BTreeMap<String, String>,
    /// `sensor_msgs/msg/JointState` in.
    #[serde(default = "default_joints_topic")]
    pub joints: String,
    /// `std_msgs/msg/String` in: each message starts an episode.
    #[serde(default = "default_instruction_topic")]
    pub instruction: String,
    /// `edgevla_msgs/msg/ActionChunk` out.
    #[serde(default = "default_action_topic")]
    pub action: String,
    /// `std_msgs/msg/String` out (JSON status).
    #[serde(default = "default_status_topic")]
    pub status: String,
}

fn default_namespace() -> String {
    "/".to_owned()
}
fn default_node_name() -> String {
    "edgevla".to_owned()
}
fn default_joints_topic() -> String {
    "/joint_states".to_owned()
}
fn default_instruction_topic() -> String {
    "/edgevla/instruction".to_owned()
}
fn default_action_topic() -> String {
    "/edgevla/action".to_owned()
}
fn default_status_topic() -> String {
    "/edgevla/status".to_owned()
}

impl Ros2Topics {
    /// The node's identity in the ROS 2 graph.
    pub fn identity(&self) -> transport::ros2::NodeIdentity {
        transport::ros2::NodeIdentity {
            domain: self.domain_id,
            namespace: self.namespace.clone(),
            name: self.node_name.clone(),
            enclave: "/".to_owned(),
        }
    }

    /// Checks every name.
    ///
    /// # Errors
    /// The first bad key.
    pub fn validate(&self) -> Result<()> {
        self.identity()
            .validate()
            .context("invalid config key `ros2.namespace` or `ros2.node_name`")?;
        let named = [
            ("joints", &self.joints),
            ("instruction", &self.instruction),
            ("action", &self.action),
            ("status", &self.status),
        ];
        for (key, topic) in named.into_iter().map(|(k, t)| (k.to_owned(), t)).chain(
            self.cameras
                .iter()
                .map(|(c, t)| (format!("cameras.{c}"), t)),
        ) {
            transport::ros2::check_topic_name(topic)
                .with_context(|| format!("invalid config key `ros2.{key}`"))?;
        }
        Ok(())
    }
}

fn default_prefix() -> String {
    transport::keys::DEFAULT_PREFIX.to_owned()
}
fn default_rig() -> String {
    "edge-3cam".to_owned()
}
fn default_model() -> String {
    "edge-long-bins".to_owned()
}
fn default_proprio() -> Vec<String> {
    sim::PROPRIO_NAMES.map(str::to_owned).to_vec()
}
fn default_restart_ms() -> f64 {
    1000.0
}
fn default_stall_ms() -> f64 {
    1000.0
}
fn default_status_ms() -> f64 {
    1000.0
}

impl NodeConfig {
    /// Parses and validates a config's text.
    ///
    /// # Errors
    /// Unknown keys, wrong types, and out-of-range values (named by key).
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| Error::toml("node config", e))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a shipped config by name (configs/node/) or a file by path.
    ///
    /// # Errors
    /// As [`NodeConfig::from_toml`], or an unreadable file.
    pub fn load(name_or_path: &str) -> Result<Self> {
        let text = read_named(name_or_path, configs::node_preset(name_or_path))?;
        Self::from_toml(&text).with_context(|| format!("node config {name_or_path}"))
    }

    /// Checks ranges.
    ///
    /// # Errors
    /// The first bad key.
    pub fn validate(&self) -> Result<()> {
        transport::keys::KeySpace::new(&self.prefix, &self.robot_id)
            .context("invalid config key `robot_id` or `prefix`")?;
        for (key, v) in [
            ("restart_ms", self.restart_ms),
            ("stall_ms", self.stall_ms),
            ("status_ms", self.status_ms),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(
                    key,
                    format!("must be a positive number of ms, got {v}"),
                ));
            }
        }
        if self.subscriber.ring_capacity == 0 {
            return Err(Error::config("subscriber.ring_capacity", "must be ≥ 1"));
        }
        if let Some(ros2) = &self.ros2 {
            ros2.validate()?;
        }
        Ok(())
    }

    /// `ms` as nanoseconds.
    pub(crate) fn ns(ms: f64) -> u64 {
        (ms * 1e6).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses_and_bad_keys_are_named() {
        let c = NodeConfig::load("edge").unwrap();
        assert_eq!(c.robot_id, "edge");
        assert_eq!(c.proprio.len(), 8);
        assert_eq!(c.kv_cache.map(|k| k.budget_bytes), Some(1_572_864));
        let err = NodeConfig::from_toml("robot_id = \"a\"\nstall_ms = -1\n").unwrap_err();
        assert!(format!("{err:#}").contains("stall_ms"), "{err:#}");
        let err = NodeConfig::from_toml("robot_id = \"a\"\nbogus = 1\n").unwrap_err();
        assert!(format!("{err:#}").contains("bogus"), "{err:#}");
    }

    /// The shipped config's commented `[ros2]` example, uncommented, is a valid ROS 2 setup
    /// for the shipped rig's cameras.
    #[test]
    fn shipped_ros2_example_parses() {
        let text = configs::node_preset("edge")
            .expect("shipped node config")
            .text;
        let at = text.find("# [ros2]").expect("a commented [ros2] example");
        let example: String = text[at..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let c = NodeConfig::from_toml(&format!("{}\n{example}\n", &text[..at])).unwrap();
        let ros2 = c.ros2.expect("[ros2]");
        assert_eq!(
            ros2.cameras.keys().map(String::as_str).collect::<Vec<_>>(),
            ["head", "left_wrist", "right_wrist"]
        );
        assert_eq!(ros2.action, "/edgevla/action");
    }

    #[test]
    fn ros2_section_defaults_and_bad_names() {
        let base = "robot_id = \"a\"\n[ros2]\ncameras = { head = \"/cam/head/compressed\" }\n";
        let c = NodeConfig::from_toml(base).unwrap();
        let ros2 = c.ros2.unwrap();
        assert_eq!(
            (
                ros2.domain_id,
                ros2.node_name.as_str(),
                ros2.joints.as_str()
            ),
            (0, "edgevla", "/joint_states")
        );
        for (bad, key) in [
            ("action = \"edgevla/action\"\n", "ros2.action"),
            ("node_name = \"a/b\"\n", "ros2.node_name"),
            ("cameras = { head = \"/cam//x\" }\n", "ros2.cameras.head"),
            ("topic = \"/x\"\n", "topic"),
        ] {
            let text = format!("robot_id = \"a\"\n[ros2]\ncameras = {{ head = \"/h\" }}\n{bad}");
            let text = if bad.starts_with("cameras") {
                format!("robot_id = \"a\"\n[ros2]\n{bad}")
            } else {
                text
            };
            let err = NodeConfig::from_toml(&text).unwrap_err();
            assert!(format!("{err:#}").contains(key), "{bad}: {err:#}");
        }
    }
}
