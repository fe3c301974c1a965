//! `configs/node/*.toml`: the node's settings (see `configs/node/edge.toml` for every key).

use anyhow::{Context, Result, bail};
use runtime::kv::KvCacheConfig;
use serde::{Deserialize, Serialize};
use transport::pubsub::SubscriberConfig;

use crate::model_cmd::read_named;

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
    /// Subscriber ring.
    #[serde(default)]
    pub subscriber: SubscriberConfig,
}

fn default_prefix() -> String {
    transport::keys::DEFAULT_PREFIX.to_owned()
}
fn default_rig() -> String {
    "edge-3cam".to_owned()
}
fn default_model() -> String {
    "edge".to_owned()
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
        let config: Self = toml::from_str(text).context("node config")?;
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
                bail!("invalid config key `{key}`: must be a positive number of ms, got {v}");
            }
        }
        if self.subscriber.ring_capacity == 0 {
            bail!("invalid config key `subscriber.ring_capacity`: must be ≥ 1");
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
}
