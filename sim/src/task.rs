//! The task: the validated config, its render cameras and target geometry ([`Task`]), the
//! drawn layers' heights and the distance and success helpers.

use vision::{Rig, RigConfig};

use crate::arm::ArmState;
use crate::config::cfg_err;
use crate::render::{self, RenderCamera, Shape, Stage};
use crate::{Result, TaskConfig};

/// Heights above the table top of the drawn layers, metres.
pub(crate) mod layer {
    pub(crate) const DISTRACTOR: f64 = 0.001;
    pub(crate) const PAD: f64 = 0.002;
    pub(crate) const LIGHT: f64 = 0.003;
    pub(crate) const BASE: f64 = 0.03;
    pub(crate) const LINK: f64 = 0.04;
    pub(crate) const ELBOW: f64 = 0.041;
    pub(crate) const GRIPPER: f64 = 0.05;
}

/// A validated task: the config, the render cameras and the target geometry.
#[derive(Clone, Debug)]
pub struct Task {
    pub(crate) config: TaskConfig,
    pub(crate) cameras: Vec<RenderCamera>,
    pub(crate) stage: Stage,
    pub(crate) targets: Vec<[f64; 2]>,
    pub(crate) q_rest: [f64; 2],
    pub(crate) q_targets: Vec<[f64; 2]>,
    /// `coverage[k][c]`: pixels of camera `c` on target `k`'s light.
    coverage: Vec<Vec<usize>>,
}

impl Task {
    /// Builds the task with the config's rig preset and camera overrides.
    ///
    /// # Errors
    /// As [`TaskConfig::validate`] and [`Task::with_rig`];
    /// [`Error::Vision`](crate::Error::Vision) for a rig that does not validate after the
    /// overrides; [`Error::Config`](crate::Error::Config) (`camera_override[i].name`) for an
    /// override naming no rig camera.
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
    /// As [`TaskConfig::validate`]; [`Error::Config`](crate::Error::Config) when a target pad is
    /// seen by no camera (`scene.target_radius`) or the expert cannot reach every target from
    /// rest within `reach_steps - 1` actions (`reach_steps`).
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

pub(crate) fn dist(a: [f64; 2], b: [f64; 2]) -> f64 {
    (a[0] - b[0]).hypot(a[1] - b[1])
}

/// Whether `ee_xy` is within `tolerance` metres of `target_xy`.
pub fn success(ee_xy: [f32; 2], target_xy: [f32; 2], tolerance: f32) -> bool {
    (ee_xy[0] - target_xy[0]).hypot(ee_xy[1] - target_xy[1]) < tolerance
}
