//! What one seed decides about an episode ([`Plan`]): target, cue color and timing, decoy
//! flashes ([`Decoy`]), static distractors and camera dropouts.

use std::ops::Range;

use crate::render::{Rgb, Shape};
use crate::rng::SplitMix64;
use crate::task::{Task, dist};
use crate::{DISTRACTOR_COLORS, Error, Result};

/// A decoy flash: a light of another color on some pad for a while.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoy {
    /// Pad index.
    pub pad: usize,
    /// Index into [`LIGHT_COLORS`](crate::LIGHT_COLORS).
    pub color: usize,
    /// Steps it is lit.
    pub steps: Range<usize>,
}

/// A static distractor object.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Distractor {
    pub(crate) shape: Shape,
    pub(crate) color: Rgb,
}

/// What one seed decided.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Plan {
    pub(crate) seed: u64,
    pub(crate) target: usize,
    pub(crate) color: usize,
    pub(crate) cue: Range<usize>,
    pub(crate) go_step: usize,
    pub(crate) total: usize,
    pub(crate) decoys: Vec<Decoy>,
    pub(crate) distractors: Vec<Distractor>,
    /// Camera dropouts: (camera, steps without its frame).
    pub(crate) dropouts: Vec<(usize, Range<usize>)>,
}

/// How the cue and go times are chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Timing {
    Sampled,
    Needle { depth: f64, history: usize },
}

impl Plan {
    pub(crate) fn sample(task: &Task, seed: u64, timing: Timing) -> Result<Self> {
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
