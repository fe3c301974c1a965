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
//! Layout: this file (the task's geometry, episode plans, the simulator and its expert),
//! `config.rs` (the task config), `arm.rs` (kinematics, controller), `render.rs` (cameras, ray
//! caster), `rng.rs` (SplitMix64), `error.rs`.

pub mod arm;
mod config;
mod error;
pub mod render;
pub mod rng;

pub use config::{ActionSpace, CameraOverride, PhaseValue, SceneConfig, TaskConfig};
pub use error::{Error, Result};

use config::cfg_err;

use std::ops::Range;

use vision::{Image, PixelFormat, PreprocessConfig, Preprocessor, Rig, RigConfig};

use arm::ArmState;
use render::{Prim, RenderCamera, Rgb, Shape, Stage};
use rng::SplitMix64;

/// Values per proprio vector.
pub const PROPRIO_DIM: usize = 8;

/// The proprio channels' names, in order (`JointState.name` when the simulator publishes them;
/// the node config's default `proprio` list).
pub const PROPRIO_NAMES: [&str; PROPRIO_DIM] =
    ["q1", "q2", "dq1", "dq2", "ee_x", "ee_y", "go", "phase"];
/// The random stream of the recorded expert's command noise (`expert_noise`), apart from the
/// episode's plan.
const NOISE_STREAM: u64 = 0x006E_6F69_7365; // "noise"
/// The random stream of the recorded expert's detours (`expert_detour`).
const DETOUR_STREAM: u64 = 0x6465_746F_7572; // "detour"

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

/// Heights above the table top of the drawn layers, metres.
mod layer {
    pub(super) const DISTRACTOR: f64 = 0.001;
    pub(super) const PAD: f64 = 0.002;
    pub(super) const LIGHT: f64 = 0.003;
    pub(super) const BASE: f64 = 0.03;
    pub(super) const LINK: f64 = 0.04;
    pub(super) const ELBOW: f64 = 0.041;
    pub(super) const GRIPPER: f64 = 0.05;
}

/// A validated task: the config, the render cameras and the target geometry.
#[derive(Clone, Debug)]
pub struct Task {
    config: TaskConfig,
    cameras: Vec<RenderCamera>,
    stage: Stage,
    targets: Vec<[f64; 2]>,
    q_rest: [f64; 2],
    q_targets: Vec<[f64; 2]>,
    /// `coverage[k][c]`: pixels of camera `c` on target `k`'s light.
    coverage: Vec<Vec<usize>>,
}

impl Task {
    /// Builds the task with the config's rig preset and camera overrides.
    ///
    /// # Errors
    /// As [`TaskConfig::validate`] and [`Task::with_rig`]; [`Error::Vision`] for a rig that
    /// does not validate after the overrides; [`Error::Config`] (`camera_override[i].name`)
    /// for an override naming no rig camera.
    pub fn new(config: &TaskConfig) -> Result<Self> {
        config.validate()?;
        let preset = configs::rig_preset(&config.rig)
            .ok_or_else(|| cfg_err("rig", format!("no rig preset `{}`", config.rig)))?;
        let de =
            toml::Deserializer::parse(preset.text).map_err(|e| cfg_err("rig", e.to_string()))?;
        let mut rig: RigConfig = serde_path_to_error::deserialize(de)
            .map_err(|e| cfg_err("rig", format!("{}: {}", e.path(), e.inner())))?;
        for (i, o) in config.camera_override.iter().enumerate() {
            let cam = rig
                .cameras
                .iter_mut()
                .find(|c| c.name == o.name)
                .ok_or_else(|| {
                    cfg_err(
                        &format!("camera_override[{i}].name"),
                        format!("rig `{}` has no camera `{}`", config.rig, o.name),
                    )
                })?;
            cam.extrinsics = o.extrinsics.clone();
        }
        Self::with_rig(config, &Rig::from_config(rig)?)
    }

    /// Builds the task for an explicit rig (the config's `rig` and `camera_override` ignored).
    ///
    /// # Errors
    /// As [`TaskConfig::validate`]; [`Error::Config`] when a target pad is seen by no camera
    /// (`scene.target_radius`) or the expert cannot reach every target from rest within
    /// `reach_steps - 1` actions (`reach_steps`).
    pub fn with_rig(config: &TaskConfig, rig: &Rig) -> Result<Self> {
        config.validate()?;
        let [w, h] = config.image_size;
        let cameras: Vec<RenderCamera> = rig
            .cameras
            .iter()
            .map(|c| RenderCamera::from_rig(c, w, h))
            .collect();
        let s = &config.scene;
        let stage = Stage {
            table_height: s.table_height,
            table: Shape::Rect {
                c: [
                    0.5 * (s.table_x[0] + s.table_x[1]),
                    0.5 * (s.table_y[0] + s.table_y[1]),
                ],
                half: [
                    0.5 * (s.table_x[1] - s.table_x[0]),
                    0.5 * (s.table_y[1] - s.table_y[0]),
                ],
            },
        };
        let k = config.n_targets;
        let arc = s.target_arc_deg.to_radians();
        let targets: Vec<[f64; 2]> = (0..k)
            .map(|i| {
                // Evenly spread, from +y (left) to -y (right).
                let a = arc * (0.5 - i as f64 / (k - 1) as f64);
                [s.target_radius * a.cos(), s.target_radius * a.sin()]
            })
            .collect();
        let arm = &config.arm;
        let q_rest = arm
            .inverse(config.arm.rest_xy)
            .ok_or_else(|| cfg_err("arm.rest_xy", "out of reach"))?;
        let q_targets = targets
            .iter()
            .map(|&t| {
                arm.inverse(t)
                    .ok_or_else(|| cfg_err("scene.target_radius", "out of reach"))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut coverage = Vec::with_capacity(k);
        for (i, &t) in targets.iter().enumerate() {
            let light = Shape::Disc {
                c: t,
                r: s.light_radius,
            };
            let cov: Vec<usize> = cameras
                .iter()
                .map(|c| render::coverage(c, &stage, &light, layer::LIGHT))
                .collect();
            if cov.iter().all(|&n| n < 4) {
                return Err(cfg_err(
                    "scene.target_radius",
                    format!(
                        "target {i} at ({:.3}, {:.3}) covers fewer than 4 pixels in every camera",
                        t[0], t[1]
                    ),
                ));
            }
            coverage.push(cov);
        }
        let task = Self {
            config: config.clone(),
            cameras,
            stage,
            targets,
            q_rest,
            q_targets,
            coverage,
        };
        for (i, &q) in task.q_targets.iter().enumerate() {
            let needed = task.steps_to_reach(q, task.targets[i]);
            if needed.is_none_or(|n| n > config.reach_steps - 1) {
                return Err(cfg_err(
                    "reach_steps",
                    format!(
                        "the expert needs {} actions to reach target {i} from rest; reach_steps {} allows {}",
                        needed.map_or("more than 1000".into(), |n| n.to_string()),
                        config.reach_steps,
                        config.reach_steps - 1
                    ),
                ));
            }
        }
        Ok(task)
    }

    /// Actions the expert needs from rest until the end effector is within tolerance of `xy`.
    fn steps_to_reach(&self, goal: [f64; 2], xy: [f64; 2]) -> Option<usize> {
        let dt = 1.0 / self.config.control_hz;
        let mut s = ArmState {
            q: self.q_rest,
            dq: [0.0; 2],
        };
        for n in 0..=1000 {
            if dist(self.config.arm.forward(s.q), xy) < self.config.success_tolerance {
                return Some(n);
            }
            s = self
                .config
                .arm
                .integrate(&s, self.config.arm.control(&s, goal), dt);
        }
        None
    }

    /// The config.
    pub fn config(&self) -> &TaskConfig {
        &self.config
    }

    /// The render cameras, in rig order.
    pub fn cameras(&self) -> &[RenderCamera] {
        &self.cameras
    }

    /// The arm's joints at its rest pose (the goal before the go step).
    pub fn q_rest(&self) -> [f64; 2] {
        self.q_rest
    }

    /// Each pad's joint goal (the arm's inverse kinematics of its centre).
    pub fn q_targets(&self) -> &[[f64; 2]] {
        &self.q_targets
    }

    /// Target pad centres `[x, y]` on the table, metres, index = target id.
    pub fn targets(&self) -> &[[f64; 2]] {
        &self.targets
    }

    /// The camera that sees target `k`'s light with the most pixels.
    pub fn cue_camera(&self, k: usize) -> usize {
        let cov = &self.coverage[k.min(self.coverage.len() - 1)];
        let mut best = 0;
        for (c, &n) in cov.iter().enumerate() {
            if n > cov[best] {
                best = c;
            }
        }
        best
    }
}

fn dist(a: [f64; 2], b: [f64; 2]) -> f64 {
    (a[0] - b[0]).hypot(a[1] - b[1])
}

/// Whether `ee_xy` is within `tolerance` metres of `target_xy`.
pub fn success(ee_xy: [f32; 2], target_xy: [f32; 2], tolerance: f32) -> bool {
    (ee_xy[0] - target_xy[0]).hypot(ee_xy[1] - target_xy[1]) < tolerance
}

/// A decoy flash: a light of another color on some pad for a while.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoy {
    /// Pad index.
    pub pad: usize,
    /// Index into [`LIGHT_COLORS`].
    pub color: usize,
    /// Steps it is lit.
    pub steps: Range<usize>,
}

/// A static distractor object.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Distractor {
    shape: Shape,
    color: Rgb,
}

/// What one seed decided.
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    seed: u64,
    target: usize,
    color: usize,
    cue: Range<usize>,
    go_step: usize,
    total: usize,
    decoys: Vec<Decoy>,
    distractors: Vec<Distractor>,
    /// Camera dropouts: (camera, steps without its frame).
    dropouts: Vec<(usize, Range<usize>)>,
}

/// How the cue and go times are chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Timing {
    Sampled,
    Needle { depth: f64, history: usize },
}

impl Plan {
    fn sample(task: &Task, seed: u64, timing: Timing) -> Result<Self> {
        let c = &task.config;
        let mut rng = SplitMix64::new(seed, 0x7461_736B); // "task"
        let target = rng.below(c.n_targets);
        let color = rng.below(c.n_colors);
        let (cue_start, go_step, total) = match timing {
            Timing::Sampled => {
                let start = rng.inclusive(c.cue_start[0], c.cue_start[1]);
                let delay = rng.inclusive(c.go_delay[0], c.go_delay[1]);
                (start, start + c.cue_steps + delay, c.episode_steps)
            }
            Timing::Needle { depth, history } => {
                if !(depth.is_finite() && (0.0..=1.0).contains(&depth)) {
                    return Err(Error::Input {
                        what: "needle depth",
                        reason: format!("{depth} is not in [0, 1]"),
                    });
                }
                if history < c.cue_steps + 1 || history > 1_000_000 {
                    return Err(Error::Input {
                        what: "needle history",
                        reason: format!(
                            "{history} steps; needs cue_steps + 1 = {} ..= 1000000",
                            c.cue_steps + 1
                        ),
                    });
                }
                let start = (depth * (history - c.cue_steps) as f64).round() as usize;
                let start = start.min(history - c.cue_steps - 1);
                (start, history, history + c.reach_steps)
            }
        };
        let cue = cue_start..cue_start + c.cue_steps;
        let distractors = sample_distractors(task, &mut rng);
        let mut decoys = Vec::with_capacity(c.n_decoys);
        if go_step >= c.cue_steps {
            for _ in 0..c.n_decoys {
                for _ in 0..64 {
                    let start = rng.below(go_step - c.cue_steps + 1);
                    let steps = start..start + c.cue_steps;
                    if steps.start < cue.end && cue.start < steps.end {
                        continue;
                    }
                    let pad = rng.below(c.n_targets);
                    let other = rng.below(c.n_colors - 1);
                    let color = if other >= color { other + 1 } else { other };
                    decoys.push(Decoy { pad, color, steps });
                    break;
                }
            }
        }
        // Drawn last, so that tasks without dropouts keep their episodes.
        let mut dropouts = Vec::with_capacity(c.camera_dropouts);
        let n_cams = task.cameras.len();
        if go_step > cue.end && n_cams > 0 {
            for _ in 0..c.camera_dropouts {
                let camera = rng.below(n_cams);
                let length = rng.inclusive(c.dropout_steps[0], c.dropout_steps[1]);
                let start = cue.end + rng.below(go_step - cue.end);
                dropouts.push((camera, start..(start + length).min(go_step)));
            }
        }
        Ok(Self {
            seed,
            target,
            color,
            cue,
            go_step,
            total,
            decoys,
            distractors,
            dropouts,
        })
    }
}

fn sample_distractors(task: &Task, rng: &mut SplitMix64) -> Vec<Distractor> {
    let c = &task.config;
    let s = &c.scene;
    let mut out: Vec<(Distractor, [f64; 2], f64)> = Vec::with_capacity(c.n_distractors);
    for _ in 0..c.n_distractors {
        for _ in 0..100 {
            let size = rng.uniform(0.02, 0.04);
            let p = [
                rng.uniform(s.table_x[0] + size, s.table_x[1] - size),
                rng.uniform(s.table_y[0] + size, s.table_y[1] - size),
            ];
            let square = rng.below(2) == 1;
            let color = DISTRACTOR_COLORS[rng.below(DISTRACTOR_COLORS.len())];
            // Keep clear of the pads, the base and other distractors (corner radius √2·size).
            let clear = size * std::f64::consts::SQRT_2;
            if task
                .targets
                .iter()
                .any(|&t| dist(t, p) < s.pad_radius + clear + 0.01)
                || dist(p, [0.0, 0.0]) < 0.06 + clear
                || out.iter().any(|(_, q, r)| dist(*q, p) < r + clear + 0.01)
            {
                continue;
            }
            let shape = if square {
                Shape::Rect {
                    c: p,
                    half: [size, size],
                }
            } else {
                Shape::Disc { c: p, r: size }
            };
            out.push((Distractor { shape, color }, p, clear));
            break;
        }
    }
    out.into_iter().map(|(d, _, _)| d).collect()
}

/// One frame-step of an episode.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Time of the step, ns from the episode start (`t * period`).
    pub stamp_ns: u64,
    /// Image width, pixels.
    pub width: u32,
    /// Image height, pixels.
    pub height: u32,
    /// One RGB8 image per camera (rig order), `width * height * 3`, row-major.
    pub images: Vec<Vec<u8>>,
    /// Per camera (rig order): whether it delivered its frame this step (`false` during a
    /// camera dropout, when its image is not to be used).
    pub camera_present: Vec<bool>,
    /// `[q1, q2, dq1, dq2, ee_x, ee_y, go, t / episode_steps]` (see the module docs).
    pub proprio: [f32; PROPRIO_DIM],
    /// Expert chunk, `horizon * ACTION_DIM`, action-major: `[dq1, dq2, grip, done]` per action.
    pub expert_action: Vec<f32>,
}

impl Step {
    /// The step's images as model input: `[n_cams, n_patches, patch_dim]` f32, through
    /// `vision`'s preprocessor (crop, resize, normalize, patchify).
    ///
    /// # Errors
    /// [`Error::Vision`] for an invalid `config` or an image the preprocessor rejects.
    pub fn patches(&self, config: &PreprocessConfig) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.append_patches(&mut Preprocessor::new(config.clone())?, &mut out)?;
        Ok(out)
    }

    /// Appends [`patches`](Self::patches) to `out` with an existing preprocessor (episodes
    /// reuse one instead of building one per step).
    ///
    /// # Errors
    /// [`Error::Vision`] for an image the preprocessor rejects.
    pub fn append_patches(&self, pre: &mut Preprocessor, out: &mut Vec<f32>) -> Result<()> {
        let per = pre.output_len();
        for img in &self.images {
            let image = Image::from_raw(self.width, self.height, PixelFormat::Rgb8, img.clone())?;
            let at = out.len();
            out.resize(at + per, 0.0);
            pre.process(&image, &mut out[at..])?;
        }
        Ok(())
    }
}

/// A generated episode: the expert's run through the [`Sim`].
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    /// The seed it was generated from.
    pub seed: u64,
    /// Natural-language instruction (names the cue color).
    pub instruction: String,
    /// Frame-steps, `steps[t]` at `t * period`.
    pub steps: Vec<Step>,
    /// Target pad index (`0..n_targets`).
    pub target: usize,
    /// Target pad centre on the table, metres.
    pub target_xy: [f32; 2],
    /// Steps during which the cue is lit.
    pub cue_steps: Range<usize>,
    /// The camera that sees the cue with the most pixels.
    pub cue_camera: usize,
    /// The cue's RGB8 color.
    pub cue_color: Rgb,
    /// First step of the go phase.
    pub go_step: usize,
    /// Decoy flashes.
    pub decoys: Vec<Decoy>,
    /// Success radius, metres.
    pub success_tolerance: f32,
}

impl Episode {
    /// The expert episode for `seed`.
    ///
    /// # Errors
    /// As [`Task::new`].
    pub fn generate(config: &TaskConfig, seed: u64) -> Result<Self> {
        Sim::new(config, seed)?.run_expert()
    }

    /// A needle-in-a-haystack episode: `history` steps before the go step, the cue starting at
    /// fraction `depth` of them (`round(depth * (history - cue_steps))`, kept before the go
    /// step), decoys elsewhere in the history, then `reach_steps` go-phase steps.
    ///
    /// # Errors
    /// As [`Task::new`]; [`Error::Input`] for `depth` outside `[0, 1]` or `history` below
    /// `cue_steps + 1`.
    pub fn needle(config: &TaskConfig, seed: u64, depth: f64, history: usize) -> Result<Self> {
        Sim::needle(config, seed, depth, history)?.run_expert()
    }

    /// Whether `ee_xy` counts as reaching this episode's target.
    pub fn success(&self, ee_xy: [f32; 2]) -> bool {
        success(ee_xy, self.target_xy, self.success_tolerance)
    }
}

/// The closed-loop simulator: the arm state of one episode, advanced one control period per
/// [`Sim::step`] by the first action of a chunk, rendered by [`Sim::observe`].
#[derive(Clone, Debug)]
pub struct Sim {
    task: Task,
    plan: Plan,
    state: ArmState,
    t: usize,
    /// Reused primitive list.
    prims: Vec<Prim>,
}

impl Sim {
    /// The episode of `seed` at its first step.
    ///
    /// # Errors
    /// As [`Task::new`].
    pub fn new(config: &TaskConfig, seed: u64) -> Result<Self> {
        Self::from_task(Task::new(config)?, seed, Timing::Sampled)
    }

    /// A needle episode (see [`Episode::needle`]) at its first step.
    ///
    /// # Errors
    /// As [`Episode::needle`].
    pub fn needle(config: &TaskConfig, seed: u64, depth: f64, history: usize) -> Result<Self> {
        Self::from_task(Task::new(config)?, seed, Timing::Needle { depth, history })
    }

    /// A needle episode (see [`Episode::needle`]) on an already built task (saves rebuilding
    /// the task's cameras and coverage per episode in sweeps).
    ///
    /// # Errors
    /// As [`Episode::needle`].
    pub fn needle_with_task(task: Task, seed: u64, depth: f64, history: usize) -> Result<Self> {
        Self::from_task(task, seed, Timing::Needle { depth, history })
    }

    /// The episode of `seed` on an already built task (saves re-validating per episode).
    ///
    /// # Errors
    /// None today for sampled timing; the `Result` leaves room for checks of `task`.
    pub fn with_task(task: Task, seed: u64) -> Result<Self> {
        Self::from_task(task, seed, Timing::Sampled)
    }

    fn from_task(task: Task, seed: u64, timing: Timing) -> Result<Self> {
        let plan = Plan::sample(&task, seed, timing)?;
        Ok(Self {
            state: ArmState {
                q: task.q_rest,
                dq: [0.0; 2],
            },
            task,
            plan,
            t: 0,
            prims: Vec::new(),
        })
    }

    /// The task.
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// The current step index.
    pub fn t(&self) -> usize {
        self.t
    }

    /// Steps in the episode.
    pub fn total_steps(&self) -> usize {
        self.plan.total
    }

    /// Whether the current step is the episode's last (no further [`Sim::step`]).
    pub fn is_last(&self) -> bool {
        self.t + 1 >= self.plan.total
    }

    /// The target pad index.
    pub fn target(&self) -> usize {
        self.plan.target
    }

    /// The first go step.
    pub fn go_step(&self) -> usize {
        self.plan.go_step
    }

    /// Steps the cue is lit.
    pub fn cue_steps(&self) -> Range<usize> {
        self.plan.cue.clone()
    }

    /// The arm state.
    pub fn state(&self) -> ArmState {
        self.state
    }

    /// The end effector's position on the table, metres.
    pub fn ee_xy(&self) -> [f32; 2] {
        let p = self.task.config.arm.forward(self.state.q);
        [p[0] as f32, p[1] as f32]
    }

    /// Distance (metres) from the end effector to the centre of pad `k` (infinite for a pad
    /// the task does not have).
    pub fn distance_to_pad(&self, k: usize) -> f64 {
        let [x, y] = self.ee_xy();
        self.task.targets.get(k).map_or(f64::INFINITY, |t| {
            (f64::from(x) - t[0]).hypot(f64::from(y) - t[1])
        })
    }

    /// The pad whose centre is nearest the end effector (where the arm went).
    pub fn nearest_pad(&self) -> usize {
        (0..self.task.targets.len())
            .min_by(|&a, &b| self.distance_to_pad(a).total_cmp(&self.distance_to_pad(b)))
            .unwrap_or(0)
    }

    /// Whether the end effector is within tolerance of the target now.
    pub fn success(&self) -> bool {
        let t = self.task.targets[self.plan.target];
        success(
            self.ee_xy(),
            [t[0] as f32, t[1] as f32],
            self.task.config.success_tolerance as f32,
        )
    }

    fn go(&self) -> bool {
        self.t >= self.plan.go_step
    }

    /// The expert chunk at the current step (`horizon * ACTION_DIM`).
    pub fn expert_chunk(&self) -> Vec<f32> {
        if self.go() {
            let k = self.plan.target;
            self.chunk_toward(self.task.q_targets[k], self.task.targets[k])
        } else {
            let rest = self.task.config.arm.rest_xy;
            self.chunk_toward(self.task.q_rest, rest)
        }
    }

    /// The expert's chunk from the current state toward an arbitrary reachable point (for
    /// baselines such as "always reach pad 0"); the rest pose's chunk when `xy` is out of reach.
    pub fn chunk_to(&self, xy: [f64; 2]) -> Vec<f32> {
        match self.task.config.arm.inverse(xy) {
            Some(q) => self.chunk_toward(q, xy),
            None => self.chunk_toward(self.task.q_rest, self.task.config.arm.rest_xy),
        }
    }

    fn chunk_toward(&self, goal: [f64; 2], goal_xy: [f64; 2]) -> Vec<f32> {
        let c = &self.task.config;
        let dt = 1.0 / c.control_hz;
        let go = self.go();
        let mut s = self.state;
        let mut out = Vec::with_capacity(c.horizon * ACTION_DIM);
        for _ in 0..c.horizon {
            let cmd = c.arm.control(&s, goal);
            let near = dist(c.arm.forward(s.q), goal_xy) < c.success_tolerance;
            let joints = match c.action {
                ActionSpace::JointVelocity => cmd,
                ActionSpace::JointTarget => goal,
            };
            out.extend_from_slice(&[
                joints[0] as f32,
                joints[1] as f32,
                f32::from(u8::from(go)),
                f32::from(u8::from(go && near)),
            ]);
            s = c.arm.integrate(&s, cmd, dt);
        }
        out
    }

    /// The chunk that keeps the arm where it is, in the task's action space (zero velocity, or
    /// the current joints as the target): what a simulator applies when no action arrived.
    pub fn hold_chunk(&self) -> Vec<f32> {
        let joints = match self.task.config.action {
            ActionSpace::JointVelocity => [0.0, 0.0],
            ActionSpace::JointTarget => [self.state.q[0] as f32, self.state.q[1] as f32],
        };
        (0..self.task.config.horizon)
            .flat_map(|_| [joints[0], joints[1], 0.0, 0.0])
            .collect()
    }

    /// The joint velocity command action `joints` (its first two values) gives from the
    /// current state, in the task's action space.
    fn joint_command(&self, joints: [f64; 2]) -> [f64; 2] {
        match self.task.config.action {
            ActionSpace::JointVelocity => joints,
            ActionSpace::JointTarget => self.task.config.arm.control(&self.state, joints),
        }
    }

    /// Applies the first action of `chunk` for one control period and advances to the next
    /// step. Only the joint velocities move the arm; `grip` and `done` are recorded by the
    /// caller, not simulated.
    ///
    /// # Errors
    /// [`Error::Input`] when `chunk` is shorter than [`ACTION_DIM`] or not a multiple of it,
    /// holds a non-finite joint command, or the episode is already at its last step.
    pub fn step(&mut self, chunk: &[f32]) -> Result<()> {
        if chunk.len() < ACTION_DIM || !chunk.len().is_multiple_of(ACTION_DIM) {
            return Err(Error::Input {
                what: "action chunk",
                reason: format!(
                    "length {} is not a positive multiple of {ACTION_DIM}",
                    chunk.len()
                ),
            });
        }
        if !(chunk[0].is_finite() && chunk[1].is_finite()) {
            return Err(Error::Input {
                what: "action chunk",
                reason: "non-finite joint command".into(),
            });
        }
        if self.is_last() {
            return Err(Error::Input {
                what: "action chunk",
                reason: format!("the episode ended at step {}", self.t),
            });
        }
        let dt = 1.0 / self.task.config.control_hz;
        let cmd = self.joint_command([f64::from(chunk[0]), f64::from(chunk[1])]);
        self.state = self.task.config.arm.integrate(&self.state, cmd, dt);
        self.t += 1;
        Ok(())
    }

    /// Proprio at the current step.
    pub fn proprio(&self) -> [f32; PROPRIO_DIM] {
        let s = &self.state;
        let ee = self.ee_xy();
        [
            s.q[0] as f32,
            s.q[1] as f32,
            s.dq[0] as f32,
            s.dq[1] as f32,
            ee[0],
            ee[1],
            f32::from(u8::from(self.go())),
            match self.task.config.phase {
                PhaseValue::Episode => self.t as f32 / self.plan.total as f32,
                PhaseValue::None => 0.0,
            },
        ]
    }

    /// Renders the current step into one RGB8 image per camera.
    pub fn render(&mut self) -> Vec<Vec<u8>> {
        let c = &self.task.config;
        let s = &c.scene;
        let arm = &c.arm;
        let t = self.t;
        let go = self.go();
        let prims = &mut self.prims;
        prims.clear();
        let elbow = arm.elbow(self.state.q);
        let ee = arm.forward(self.state.q);
        let r = 0.5 * arm.link_width;
        prims.push(Prim {
            shape: Shape::Disc { c: ee, r: 0.022 },
            height: layer::GRIPPER,
            color: if go {
                render::GRIPPER_CLOSED
            } else {
                render::GRIPPER_OPEN
            },
        });
        prims.push(Prim {
            shape: Shape::Disc {
                c: elbow,
                r: r * 1.3,
            },
            height: layer::ELBOW,
            color: render::ELBOW,
        });
        for (a, b) in [([0.0, 0.0], elbow), (elbow, ee)] {
            prims.push(Prim {
                shape: Shape::Capsule { a, b, r },
                height: layer::LINK,
                color: render::LINK,
            });
        }
        prims.push(Prim {
            shape: Shape::Disc {
                c: [0.0, 0.0],
                r: 0.05,
            },
            height: layer::BASE,
            color: render::BASE,
        });
        let light = |pad: usize, color: usize| Prim {
            shape: Shape::Disc {
                c: self.task.targets[pad],
                r: s.light_radius,
            },
            height: layer::LIGHT,
            color: LIGHT_COLORS[color].1,
        };
        if self.plan.cue.contains(&t) {
            prims.push(light(self.plan.target, self.plan.color));
        }
        for d in &self.plan.decoys {
            if d.steps.contains(&t) {
                prims.push(light(d.pad, d.color));
            }
        }
        for &p in &self.task.targets {
            prims.push(Prim {
                shape: Shape::Disc {
                    c: p,
                    r: s.pad_radius,
                },
                height: layer::PAD,
                color: render::PAD,
            });
        }
        for d in &self.plan.distractors {
            prims.push(Prim {
                shape: d.shape,
                height: layer::DISTRACTOR,
                color: d.color,
            });
        }
        self.task
            .cameras
            .iter()
            .map(|cam| {
                let mut img = Vec::new();
                render::render(cam, &self.task.stage, prims, &mut img);
                img
            })
            .collect()
    }

    /// The full observation of the current step, with the expert's chunk as its label.
    pub fn observe(&mut self) -> Step {
        let [width, height] = self.task.config.image_size;
        let images = self.render();
        let camera_present = (0..images.len())
            .map(|cam| {
                !self
                    .plan
                    .dropouts
                    .iter()
                    .any(|(c, steps)| *c == cam && steps.contains(&self.t))
            })
            .collect();
        Step {
            stamp_ns: self.t as u64 * self.task.config.period_ns(),
            width,
            height,
            images,
            camera_present,
            proprio: self.proprio(),
            expert_action: self.expert_chunk(),
        }
    }

    /// The episode's metadata with `steps` attached.
    fn episode(&self, steps: Vec<Step>) -> Episode {
        let (name, rgb) = LIGHT_COLORS[self.plan.color];
        let t = self.task.targets[self.plan.target];
        Episode {
            seed: self.plan.seed,
            instruction: format!("On go, touch the pad where the {name} light flashed."),
            steps,
            target: self.plan.target,
            target_xy: [t[0] as f32, t[1] as f32],
            cue_steps: self.plan.cue.clone(),
            cue_camera: self.task.cue_camera(self.plan.target),
            cue_color: rgb,
            go_step: self.plan.go_step,
            decoys: self.plan.decoys.clone(),
            success_tolerance: self.task.config.success_tolerance as f32,
        }
    }

    /// The instruction, target and timing of this episode, without steps.
    pub fn info(&self) -> Episode {
        self.episode(Vec::new())
    }

    /// The recorded run's detour (`expert_detour`): its steps and the point on the pads' arc it
    /// heads for; `None` for most episodes, or when the go phase is too short for one.
    fn sample_detour(&self) -> Option<(Range<usize>, [f64; 2])> {
        let c = &self.task.config;
        let mut rng = SplitMix64::new(self.plan.seed, DETOUR_STREAM);
        if c.expert_detour <= 0.0 || rng.unit() >= c.expert_detour {
            return None;
        }
        let len = rng.inclusive(c.detour_steps[0], c.detour_steps[1]);
        let go = self.plan.go_step;
        // The last executed command is the one at `total - 2`.
        let last_start = self.plan.total.checked_sub(len + 1)?;
        if last_start < go {
            return None;
        }
        let latest = last_start.saturating_sub(c.reach_steps).max(go);
        let start = rng.inclusive(go, latest);
        let arc = c.scene.target_arc_deg.to_radians();
        let a = rng.uniform(-0.5 * arc, 0.5 * arc);
        let r = c.scene.target_radius;
        Some((start..start + len, [r * a.cos(), r * a.sin()]))
    }

    /// Runs the expert from the current step to the end, recording every step.
    /// With `expert_noise` and `expert_detour`, the executed commands (not the recorded labels)
    /// are perturbed.
    fn run_expert(mut self) -> Result<Episode> {
        let mut steps = Vec::with_capacity(self.plan.total);
        let sigma = self.task.config.expert_noise;
        let mut noise = SplitMix64::new(self.plan.seed, NOISE_STREAM);
        let detour = self.sample_detour();
        let mut executed = Vec::new();
        loop {
            let step = self.observe();
            let last = self.is_last();
            if !last {
                match &detour {
                    Some((steps, xy)) if steps.contains(&self.t) => {
                        executed.clear();
                        executed.extend_from_slice(&self.chunk_to(*xy)[..ACTION_DIM]);
                    }
                    _ => executed.clone_from(&step.expert_action),
                }
                if sigma > 0.0 {
                    // rad/s on the velocity; on a target, the offset whose tracking command
                    // differs by that much (kp · offset).
                    let per_unit = match self.task.config.action {
                        ActionSpace::JointVelocity => 1.0,
                        ActionSpace::JointTarget => 1.0 / self.task.config.arm.kp,
                    };
                    for command in &mut executed[..2] {
                        *command += (sigma * per_unit * noise.normal()) as f32;
                    }
                }
                self.step(&executed)?;
            }
            steps.push(step);
            if last {
                break;
            }
        }
        Ok(self.episode(steps))
    }
}

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
