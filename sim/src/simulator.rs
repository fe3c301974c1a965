//! The closed-loop simulator ([`Sim`]) and its expert: stepping, rendering, observations and
//! the recorded expert run.

use std::ops::Range;

use crate::arm::ArmState;
use crate::plan::{Plan, Timing};
use crate::render::{self, Prim, Shape};
use crate::rng::SplitMix64;
use crate::task::{dist, layer};
use crate::{
    ACTION_DIM, ActionSpace, Episode, Error, LIGHT_COLORS, PROPRIO_DIM, PhaseValue, Result, Step,
    Task, TaskConfig, success,
};

/// The random stream of the recorded expert's command noise (`expert_noise`), apart from the
/// episode's plan.
const NOISE_STREAM: u64 = 0x006E_6F69_7365; // "noise"
/// The random stream of the recorded expert's detours (`expert_detour`).
const DETOUR_STREAM: u64 = 0x6465_746F_7572; // "detour"

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
    pub(crate) fn run_expert(mut self) -> Result<Episode> {
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
