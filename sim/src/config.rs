//! The task's configuration: what a `configs/task/*.toml` file holds ([`TaskConfig`], with its
//! `[scene]` and `[arm]` tables and camera overrides), the action space and the proprio's
//! phase value, parsed with unknown keys refused and validated where no rig or geometry is
//! needed (those checks are [`crate::Task::new`]'s).

use serde::{Deserialize, Serialize};
use vision::ExtrinsicsConfig;

use crate::LIGHT_COLORS;
use crate::arm::ArmConfig;
use crate::error::{Error, Result};

/// Table and target geometry; the `[scene]` table of a task config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SceneConfig {
    /// Height of the table top above the floor (the world's `z = 0`), metres.
    pub table_height: f64,
    /// Table extent along x `[min, max]`, metres (the arm's base is at the origin).
    pub table_x: [f64; 2],
    /// Table extent along y `[min, max]`, metres.
    pub table_y: [f64; 2],
    /// Distance of the target pads from the base, metres.
    pub target_radius: f64,
    /// The pads are spread evenly over this arc (degrees), centred on +x.
    pub target_arc_deg: f64,
    /// Pad radius, metres.
    pub pad_radius: f64,
    /// Radius of the cue and decoy lights, metres (drawn on the pad).
    pub light_radius: f64,
}

impl Default for SceneConfig {
    fn default() -> Self {
        Self {
            table_height: 0.65,
            table_x: [-0.25, 1.0],
            table_y: [-0.7, 0.7],
            target_radius: 0.42,
            target_arc_deg: 110.0,
            pad_radius: 0.035,
            light_radius: 0.028,
        }
    }
}

/// Replaces one rig camera's pose for the task (the rig file stays as is).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraOverride {
    /// Name of the rig camera.
    pub name: String,
    /// Its pose in the robot frame, as in a rig file.
    pub extrinsics: ExtrinsicsConfig,
}

/// What the proprio's last value holds (see [`TaskConfig::phase`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseValue {
    /// `t / episode_steps`.
    #[default]
    Episode,
    /// Always 0.
    None,
}

/// What an action's first two values command (see [`TaskConfig::action`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionSpace {
    /// Joint velocities (rad/s), integrated by the simulator: a constant bias in a policy's
    /// command integrates into drift.
    #[default]
    JointVelocity,
    /// Joint position targets (rad) that the arm's own proportional controller (`arm.kp`,
    /// `arm.max_joint_speed`, the expert's controller) tracks: an error in the command is an
    /// error in the pose it settles at, never a drift.
    JointTarget,
}

impl ActionSpace {
    /// The TOML value.
    pub fn name(self) -> &'static str {
        match self {
            Self::JointVelocity => "joint_velocity",
            Self::JointTarget => "joint_target",
        }
    }
}

/// Task configuration; a TOML file under `configs/task/` (`memory.toml` is the default).
/// Unknown keys are errors; every key has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskConfig {
    /// Name of the camera rig preset (`configs/rigs/<name>.toml`).
    pub rig: String,
    /// Pose replacements for rig cameras.
    pub camera_override: Vec<CameraOverride>,
    /// Rendered image `[width, height]`, pixels.
    pub image_size: [u32; 2],
    /// Control (frame-step) rate, Hz.
    pub control_hz: f64,
    /// Frame-steps per episode.
    pub episode_steps: usize,
    /// First step of the cue, sampled uniformly from the inclusive range `[min, max]`.
    pub cue_start: [usize; 2],
    /// Steps the cue stays lit.
    pub cue_steps: usize,
    /// Steps from the end of the cue to the go step, inclusive range `[min, max]`.
    pub go_delay: [usize; 2],
    /// Minimum go-phase length in steps (go step included); needle episodes use exactly this.
    pub reach_steps: usize,
    /// Number of target pads K.
    pub n_targets: usize,
    /// Number of light colors in play (1..=4): the cue takes one, decoys the others.
    pub n_colors: usize,
    /// Decoy flashes (other colors, `cue_steps` long, before the go step, never during the cue).
    pub n_decoys: usize,
    /// Static distractor objects on the table.
    pub n_distractors: usize,
    /// Camera dropouts: this many times per episode, between the cue's end and the go step,
    /// one camera (drawn uniformly) delivers no frame for a number of steps drawn from
    /// `dropout_steps` (a driver that loses a camera; the node then holds and masks it).
    /// Never during the cue, so the cue stays visible. 0 (the default): none.
    pub camera_dropouts: usize,
    /// Length of a camera dropout in steps, inclusive range `[min, max]`.
    pub dropout_steps: [usize; 2],
    /// Actions per expert chunk.
    pub horizon: usize,
    /// Success radius around the target, metres.
    pub success_tolerance: f64,
    /// Training data only: standard deviation (rad/s) of Gaussian noise added to the joint
    /// commands the recorded expert executes, not to its labels. Recorded episodes then visit
    /// states off the expert's own path, each labelled with the expert's correction from there
    /// (noise injection, "DART", Laskey et al. 2017), so a cloned policy learns to recover from
    /// its own errors. 0 = the plain expert. Simulators and evaluation never add it.
    pub expert_noise: f64,
    /// Training data only: the probability that a recorded episode takes one detour in its go
    /// phase. For a number of steps drawn from `detour_steps`, starting at a step drawn from
    /// the go phase (late enough to leave `reach_steps` after it when the episode allows), the
    /// executed commands head for a uniformly random point on the pads' arc instead of the
    /// goal; the labels stay the expert's (its command from each recorded state). A clone that
    /// learned to follow its own motion after the go step (the recorded arm always heads for
    /// the right pad) then sees states where the motion points elsewhere and the label still
    /// points at the goal, so it must keep acting on what it remembers. Correlated over many
    /// steps, unlike `expert_noise`. 0 (the default): none.
    pub expert_detour: f64,
    /// Length of a detour in steps, inclusive range `[min, max]`.
    pub detour_steps: [usize; 2],
    /// What the first two values of an action command: `"joint_velocity"` (rad/s, the
    /// default) or `"joint_target"` (rad, tracked by the arm's proportional controller). The
    /// expert's labels, [`Sim::step`] and [`Sim::hold_chunk`] follow it; a checkpoint records
    /// the action space it was trained in.
    pub action: ActionSpace,
    /// The proprio's last value: `"episode"` = `t / episode_steps` (it tells a policy how long
    /// the episode is), `"none"` = always 0 (nothing in the input leaks the episode's length:
    /// the long-memory task).
    pub phase: PhaseValue,
    /// Table and targets.
    pub scene: SceneConfig,
    /// The arm.
    pub arm: ArmConfig,
}

impl Default for TaskConfig {
    fn default() -> Self {
        let look_down = |y: f64| CameraOverride {
            name: if y > 0.0 { "left_wrist" } else { "right_wrist" }.into(),
            extrinsics: ExtrinsicsConfig {
                translation: [0.35, y, 0.9],
                quaternion_wxyz: None,
                rotation_matrix: Some([[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]),
            },
        };
        Self {
            rig: "edge-3cam".into(),
            camera_override: vec![look_down(0.25), look_down(-0.25)],
            image_size: [64, 64],
            control_hz: 10.0,
            episode_steps: 64,
            cue_start: [2, 8],
            cue_steps: 3,
            go_delay: [10, 24],
            reach_steps: 25,
            n_targets: 4,
            n_colors: 3,
            n_decoys: 2,
            n_distractors: 4,
            camera_dropouts: 0,
            dropout_steps: [2, 8],
            horizon: 8,
            success_tolerance: 0.03,
            expert_noise: 0.0,
            expert_detour: 0.0,
            detour_steps: [3, 10],
            action: ActionSpace::JointVelocity,
            phase: PhaseValue::Episode,
            scene: SceneConfig::default(),
            arm: ArmConfig::default(),
        }
    }
}

pub(crate) fn cfg_err(key: &str, reason: impl Into<String>) -> Error {
    Error::config(key, reason)
}

impl TaskConfig {
    /// The shipped default, `configs/task/memory.toml`.
    pub const DEFAULT_TOML: &'static str = include_str!("../../configs/task/memory.toml");

    /// Parses and validates a task config.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key: TOML syntax (key `.`), unknown keys and wrong types
    /// (the path serde reached), and the checks of [`TaskConfig::validate`].
    pub fn from_toml(text: &str) -> Result<Self> {
        let de = toml::Deserializer::parse(text).map_err(|e| cfg_err(".", e.to_string()))?;
        let config: Self = serde_path_to_error::deserialize(de)
            .map_err(|e| cfg_err(&e.path().to_string(), e.inner().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Control period in nanoseconds.
    pub fn period_ns(&self) -> u64 {
        (1e9 / self.control_hz).round() as u64
    }

    /// Checks the values that need no rig or geometry (those are checked by [`Task::new`]).
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad key.
    pub fn validate(&self) -> Result<()> {
        if configs::rig_preset(&self.rig).is_none() {
            return Err(cfg_err("rig", format!("no rig preset `{}`", self.rig)));
        }
        let [w, h] = self.image_size;
        if w == 0 || h == 0 || w > 1024 || h > 1024 {
            return Err(cfg_err("image_size", format!("{w}x{h} is not in 1..=1024")));
        }
        if !(self.control_hz.is_finite() && self.control_hz > 0.0 && self.control_hz <= 1000.0) {
            return Err(cfg_err("control_hz", "must be in (0, 1000]"));
        }
        if self.episode_steps == 0 {
            return Err(cfg_err("episode_steps", "must be positive"));
        }
        if self.cue_steps == 0 {
            return Err(cfg_err("cue_steps", "must be positive"));
        }
        if self.cue_start[0] > self.cue_start[1] {
            return Err(cfg_err("cue_start", "min is above max"));
        }
        if self.go_delay[0] > self.go_delay[1] {
            return Err(cfg_err("go_delay", "min is above max"));
        }
        if self.reach_steps < 2 {
            return Err(cfg_err("reach_steps", "must be at least 2"));
        }
        if self.dropout_steps[0] == 0 || self.dropout_steps[0] > self.dropout_steps[1] {
            return Err(cfg_err(
                "dropout_steps",
                "needs 1 ≤ min ≤ max (steps without a camera's frame)",
            ));
        }
        if self.camera_dropouts > 64 {
            return Err(cfg_err("camera_dropouts", "at most 64 per episode"));
        }
        let latest_go = self.cue_start[1] + self.cue_steps + self.go_delay[1];
        if latest_go + self.reach_steps > self.episode_steps {
            let key = if self.cue_start[1] + self.cue_steps + self.reach_steps > self.episode_steps
            {
                "cue_start"
            } else {
                "go_delay"
            };
            return Err(cfg_err(
                key,
                format!(
                    "the cue (up to step {}) and the go delay put the go step as late as {latest_go}; \
                     with reach_steps {} the episode needs {} steps, episode_steps is {}",
                    self.cue_start[1] + self.cue_steps,
                    self.reach_steps,
                    latest_go + self.reach_steps,
                    self.episode_steps
                ),
            ));
        }
        if !(2..=16).contains(&self.n_targets) {
            return Err(cfg_err("n_targets", "must be in 2..=16"));
        }
        if !(1..=LIGHT_COLORS.len()).contains(&self.n_colors) {
            return Err(cfg_err(
                "n_colors",
                format!("must be in 1..={}", LIGHT_COLORS.len()),
            ));
        }
        if self.n_decoys > 0 && self.n_colors < 2 {
            return Err(cfg_err("n_decoys", "decoys need n_colors >= 2"));
        }
        if self.n_decoys > 64 {
            return Err(cfg_err("n_decoys", "must be at most 64"));
        }
        if self.n_distractors > 32 {
            return Err(cfg_err("n_distractors", "must be at most 32"));
        }
        if !(1..=256).contains(&self.horizon) {
            return Err(cfg_err("horizon", "must be in 1..=256"));
        }
        if !(self.success_tolerance.is_finite() && self.success_tolerance > 0.0) {
            return Err(cfg_err("success_tolerance", "must be positive"));
        }
        if !(self.expert_noise.is_finite() && self.expert_noise >= 0.0) {
            return Err(cfg_err("expert_noise", "must be a finite number ≥ 0"));
        }
        if !(0.0..=1.0).contains(&self.expert_detour) {
            return Err(cfg_err("expert_detour", "must be a probability in [0, 1]"));
        }
        if self.detour_steps[0] < 1 || self.detour_steps[0] > self.detour_steps[1] {
            return Err(cfg_err(
                "detour_steps",
                "must be [min, max] with 1 ≤ min ≤ max",
            ));
        }
        let s = &self.scene;
        let positive = [
            ("scene.table_height", s.table_height),
            ("scene.target_radius", s.target_radius),
            ("scene.target_arc_deg", s.target_arc_deg),
            ("scene.pad_radius", s.pad_radius),
            ("scene.light_radius", s.light_radius),
            ("arm.link_lengths[0]", self.arm.link_lengths[0]),
            ("arm.link_lengths[1]", self.arm.link_lengths[1]),
            ("arm.link_width", self.arm.link_width),
            ("arm.kp", self.arm.kp),
            ("arm.max_joint_speed", self.arm.max_joint_speed),
        ];
        for (key, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(cfg_err(
                    key,
                    format!("must be positive and finite (got {v})"),
                ));
            }
        }
        if s.target_arc_deg > 180.0 {
            return Err(cfg_err("scene.target_arc_deg", "must be at most 180"));
        }
        if s.table_x[0].partial_cmp(&s.table_x[1]) != Some(std::cmp::Ordering::Less) {
            return Err(cfg_err("scene.table_x", "min must be below max"));
        }
        if s.table_y[0].partial_cmp(&s.table_y[1]) != Some(std::cmp::Ordering::Less) {
            return Err(cfg_err("scene.table_y", "min must be below max"));
        }
        if s.light_radius > s.pad_radius {
            return Err(cfg_err(
                "scene.light_radius",
                "must not exceed scene.pad_radius",
            ));
        }
        if self.arm.kp / self.control_hz > 1.0 {
            return Err(cfg_err(
                "arm.kp",
                format!(
                    "kp / control_hz = {} > 1 overshoots the goal every step",
                    self.arm.kp / self.control_hz
                ),
            ));
        }
        let [l1, l2] = self.arm.link_lengths;
        let (lo, hi) = ((l1 - l2).abs(), l1 + l2);
        let reach = |r: f64| r > lo + 1e-6 && r < hi - 1e-6;
        if !reach(s.target_radius) {
            return Err(cfg_err(
                "scene.target_radius",
                format!(
                    "{} is outside the arm's reach ({lo}, {hi})",
                    s.target_radius
                ),
            ));
        }
        if !reach(self.arm.rest_xy[0].hypot(self.arm.rest_xy[1])) {
            return Err(cfg_err(
                "arm.rest_xy",
                format!("outside the arm's reach ({lo}, {hi})"),
            ));
        }
        Ok(())
    }
}
