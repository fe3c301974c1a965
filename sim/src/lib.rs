//! The multi-camera memory task: a procedural table-top scene with a 2-link planar arm, seen
//! by the rig's cameras, where a colored light (the cue, the "needle") flashes on one of K
//! target pads early in the episode and the arm must reach that pad after a delay.
//!
//! # Episode
//! 1. Steps `0..cue_start`: the arm holds its rest pose; K pads, static distractor objects and
//!    the arm are visible; decoy lights of *other* colors may flash on any pad.
//! 2. Steps `cue_steps` (a range of `config.cue_steps` steps): the cue light, in the color the
//!    instruction names, is lit on the target pad; then it is gone for good.
//! 3. Delay (`go_delay` steps, more decoys possible), then from `go_step` on the go phase:
//!    proprio's phase flag turns 1 and the expert moves the end effector onto the target pad.
//!
//! The cue is an object in the world, so every camera that looks at its pad sees it: with
//! `memory.toml` each pad lies in exactly one wrist camera's view and the head camera also
//! sees the two inner pads, small. [`Episode::cue_camera`] is the camera that sees it with the
//! most pixels.
//!
//! The episode succeeds when the end effector ends within `success_tolerance` of the target
//! ([`success`]). A policy that ignores the cue succeeds at chance, `1 / n_targets`.
//!
//! # Determinism
//! Everything is a function of the config and the `u64` seed: one SplitMix64 stream (`rng.rs`)
//! samples, in a fixed order, the target, the cue color, the cue start, the go delay, the
//! distractors and the decoys. No wall clock, no threads. Rendering and kinematics use `f64`
//! `sin`/`cos`/`acos`/`atan2` from the platform's libm: byte-identical on one platform; across
//! platforms pixel edges may differ by the last ulp of a ray test.
//!
//! # Observations and actions
//! - Images: one per camera, RGB8, `width * height * 3`, row-major, rendered by
//!   [`render`] from the rig's intrinsics and extrinsics (with the task's `camera_override`s),
//!   scaled to `image_size` as the preprocess's centre crop would.
//! - Proprio ([`PROPRIO_DIM`] = 8): `[q1, q2, dq1, dq2, ee_x, ee_y, go, phase]`
//!   (rad, rad/s, metres; `go` is 0 before `go_step` and 1 from it on; `phase` is
//!   `t / episode_steps`, or 0 with `phase = "none"`, [`PhaseValue`]). Nothing in it depends
//!   on the cue: before the go phase every episode's proprio is identical.
//! - Action ([`ACTION_DIM`] = 4): `[j1, j2, grip, done]`: two joint commands, the gripper
//!   command (0 open, 1 closed: closed in the go phase), and the done flag (1 when the end
//!   effector is within `success_tolerance` of the goal in the go phase). The joint commands
//!   are, by the task's [`ActionSpace`], joint velocities (rad/s, clamped to
//!   `arm.max_joint_speed`) or joint targets (rad) that the arm's proportional controller
//!   `kp (target - q)` tracks. The expert chunk at a step is `horizon` actions: that controller
//!   rolled out through the simulator's own integrator toward the goal of the current phase
//!   (rest pose before go, the IK solution of the target after), labelled with its velocity
//!   commands or with the goal itself. The expert does not anticipate the go signal, so the
//!   label is causal.
//! - [`Sim`] applies the first action of a chunk per step (receding horizon) with the same
//!   integrator, so the expert run through the simulator reproduces its own plan exactly.
//!
//! The crate uses no burn: the node's simulator, the trainer's data and the evaluation share it.
//! Layout: this file (the constants and re-exports), `task.rs` (the task's geometry),
//! `plan.rs` (episode plans), `episode.rs` (steps and episodes), `simulator.rs` (the simulator
//! and its expert), `config.rs` (the task config), `arm.rs` (kinematics, controller),
//! `render.rs` (cameras, ray caster), `rng.rs` (SplitMix64), `error.rs`.

pub mod arm;
mod config;
mod episode;
mod error;
mod plan;
pub mod render;
pub mod rng;
mod simulator;
mod task;

pub use config::{ActionSpace, CameraOverride, PhaseValue, SceneConfig, TaskConfig};
pub use episode::{Episode, Step};
pub use error::{Error, Result};
pub use plan::Decoy;
pub use simulator::Sim;
pub use task::{Task, success};

use vision::PreprocessConfig;

use render::Rgb;

/// Values per proprio vector.
pub const PROPRIO_DIM: usize = 8;

/// The proprio channels' names, in order (`JointState.name` when the simulator publishes them;
/// the node config's default `proprio` list).
pub const PROPRIO_NAMES: [&str; PROPRIO_DIM] =
    ["q1", "q2", "dq1", "dq2", "ee_x", "ee_y", "go", "phase"];

/// Values per action.
pub const ACTION_DIM: usize = 4;

/// The image preprocessing the task's episodes are trained with (64x64, 16-pixel patches,
/// values in [-1, 1]); written beside every checkpoint as `preprocess.toml`, so that what runs
/// the model feeds it the same patches.
pub fn training_preprocess() -> PreprocessConfig {
    PreprocessConfig::default()
}

/// Light colors, in the order `n_colors` takes them: (name, RGB8). No other scene color
/// equals any of them.
pub const LIGHT_COLORS: [(&str, Rgb); 4] = [
    ("red", [236, 34, 34]),
    ("green", [36, 212, 72]),
    ("blue", [40, 92, 252]),
    ("yellow", [250, 214, 20]),
];

/// Colors of the static distractor objects.
pub const DISTRACTOR_COLORS: [Rgb; 5] = [
    [142, 72, 172],
    [40, 186, 196],
    [242, 132, 40],
    [240, 240, 240],
    [236, 130, 186],
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_equals_shipped_file() {
        let parsed = TaskConfig::from_toml(TaskConfig::DEFAULT_TOML).unwrap();
        assert_eq!(parsed, TaskConfig::default());
    }

    /// The long-memory task: every shipped task preset parses; with `phase = "none"` the
    /// proprio's phase value is 0 at every step (nothing tells the episode's length), and the
    /// training variant's cue always ends more than 16 frame-steps (the edge-long model's KV
    /// window) before the go step and comes early or late in the episode, while the long
    /// task's cue ages reach hundreds of steps.
    #[test]
    fn long_memory_presets_hide_the_length_and_outlast_the_window() {
        for preset in configs::TASK_PRESETS {
            TaskConfig::from_toml(preset.text).unwrap_or_else(|e| panic!("{}: {e}", preset.name));
        }
        let text = |name: &str| configs::task_preset(name).expect("preset").text;
        let train = TaskConfig::from_toml(text("memory-long-train")).unwrap();
        let long = TaskConfig::from_toml(text("memory-long")).unwrap();
        assert_eq!(train.phase, PhaseValue::None);
        assert_eq!(long.phase, PhaseValue::None);
        assert!(train.camera_dropouts > 0 && long.camera_dropouts > 0);
        for seed in 0..4 {
            let e = Episode::generate(&train, seed).unwrap();
            assert!(e.steps.iter().all(|s| s.proprio[7] == 0.0), "phase leaks");
            assert!(e.go_step - (e.cue_steps.end - 1) > 16, "seed {seed}");
            assert!(
                e.decoys
                    .iter()
                    .all(|d| LIGHT_COLORS[d.color].1 != e.cue_color && d.steps.end <= e.go_step)
            );
        }
        // The training cue comes at any time, not only while the window is still filling (a
        // model trained on early cues only learned to keep the episode's first steps).
        let starts: Vec<usize> = (0..64)
            .map(|seed| Sim::new(&train, seed).unwrap().cue_steps().start)
            .collect();
        assert!(
            starts.iter().filter(|&&s| s < 16).count() >= 8,
            "{starts:?}"
        );
        assert!(
            starts.iter().filter(|&&s| s >= 32).count() >= 16,
            "{starts:?}"
        );
        let ages: Vec<usize> = (0..64)
            .map(|seed| {
                let e = Sim::new(&long, seed).unwrap().info();
                e.go_step - (e.cue_steps.end - 1)
            })
            .collect();
        assert!(ages.iter().all(|&a| (51..=601).contains(&a)), "{ages:?}");
        assert!(ages.iter().filter(|&&a| a >= 300).count() >= 16, "{ages:?}");
    }

    /// With `expert_noise` the recorded run leaves the expert's path (deterministically per
    /// seed), and every label is still the expert's command from the state actually recorded:
    /// the first action of each chunk is `kp (goal - q)` (clamped) with `q` from that step's
    /// proprio and `goal` the rest pose before the go step, the target's IK after.
    #[test]
    fn expert_noise_perturbs_the_path_not_the_labels() {
        let mut config = TaskConfig::from_toml(
            "episode_steps = 32\ncue_start = [1, 4]\ngo_delay = [3, 8]\nreach_steps = 17\n",
        )
        .unwrap();
        let clean = Episode::generate(&config, 5).unwrap();
        config.expert_noise = 0.5;
        let noisy = Episode::generate(&config, 5).unwrap();
        assert_eq!(
            noisy,
            Episode::generate(&config, 5).unwrap(),
            "deterministic"
        );
        assert_eq!(clean.target, noisy.target);
        let moved = clean
            .steps
            .iter()
            .zip(&noisy.steps)
            .filter(|(a, b)| (a.proprio[0] - b.proprio[0]).abs() > 1e-3)
            .count();
        assert!(moved > 20, "only {moved} steps off the clean path");
        assert_labels_are_the_experts(&config, &noisy);
        config.expert_noise = -1.0;
        assert!(config.validate().is_err());
    }

    /// Every label of `episode` is the expert's command from the state recorded at its step:
    /// `kp (goal - q)` (clamped) with `q` from the proprio and `goal` the rest pose before the
    /// go step, the target's IK after.
    fn assert_labels_are_the_experts(config: &TaskConfig, episode: &Episode) {
        let arm = &config.arm;
        let task = Task::new(config).unwrap();
        let rest = arm.inverse(arm.rest_xy).unwrap();
        let target = arm.inverse(task.targets()[episode.target]).unwrap();
        for (t, step) in episode.steps.iter().enumerate() {
            let goal = if t >= episode.go_step { target } else { rest };
            let q = [f64::from(step.proprio[0]), f64::from(step.proprio[1])];
            for j in 0..2 {
                let want =
                    (arm.kp * (goal[j] - q[j])).clamp(-arm.max_joint_speed, arm.max_joint_speed);
                let got = f64::from(step.expert_action[j]);
                assert!(
                    (got - want).abs() < 1e-3,
                    "step {t} joint {j}: label {got} vs {want}"
                );
            }
        }
    }

    /// With `expert_detour = 1` every recorded run leaves the expert's path for
    /// `detour_steps` steps inside its go phase (the same path as the clean run before the go
    /// step), heading away from the target, and the labels stay the expert's commands.
    #[test]
    fn expert_detours_leave_the_path_in_the_go_phase_and_keep_the_labels() {
        let mut config = TaskConfig::from_toml(
            "episode_steps = 48\ncue_start = [1, 4]\ngo_delay = [3, 8]\nreach_steps = 17\n",
        )
        .unwrap();
        config.detour_steps = [6, 6];
        let mut detoured = 0;
        for seed in 0..16 {
            config.expert_detour = 0.0;
            let clean = Episode::generate(&config, seed).unwrap();
            config.expert_detour = 1.0;
            let detour = Episode::generate(&config, seed).unwrap();
            assert_eq!(detour, Episode::generate(&config, seed).unwrap());
            assert_labels_are_the_experts(&config, &detour);
            let off: Vec<usize> = (0..clean.steps.len())
                .filter(|&t| {
                    let (a, b) = (&clean.steps[t].proprio, &detour.steps[t].proprio);
                    (a[0] - b[0]).abs() + (a[1] - b[1]).abs() > 1e-4
                })
                .collect();
            // The path leaves right after the detour's first executed command, inside the go
            // phase; a detour toward a point next to the pad may be indistinguishable.
            if let Some(&first) = off.first() {
                assert!(first > clean.go_step, "seed {seed}: off at {first}");
                detoured += 1;
            }
        }
        assert!(detoured >= 12, "only {detoured} of 16 runs left the path");
        config.expert_detour = 1.5;
        assert!(config.validate().is_err());
        config.expert_detour = 0.5;
        config.detour_steps = [0, 3];
        assert!(config.validate().is_err());
    }

    #[test]
    fn no_scene_color_equals_a_light_color() {
        let scene = [
            render::BACKGROUND,
            render::FLOOR,
            render::TABLE,
            render::PAD,
            render::BASE,
            render::LINK,
            render::ELBOW,
            render::GRIPPER_OPEN,
            render::GRIPPER_CLOSED,
        ];
        for (_, light) in LIGHT_COLORS {
            assert!(!scene.contains(&light) && !DISTRACTOR_COLORS.contains(&light));
        }
    }
}
