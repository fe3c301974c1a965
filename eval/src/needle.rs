//! Long-context evaluation: a visual needle-in-a-haystack sweep over history length and cue
//! depth, run closed loop on the task simulator, for any [`Policy`].
//!
//! An episode of the sweep is a needle episode ([`Sim::needle_with_task`]): `length` frame-steps
//! in all, of which the first `history = length - reach_steps` come before the go signal and
//! hold the cue (the "needle") at fraction `depth` of them, among decoy flashes and static
//! distractors; the last `reach_steps` are the go phase, where the arm must reach the cued pad.
//! `length` is what the model's context holds at the last step (sinks + `length` frame-steps),
//! so `length = training length` is the training distribution's context size.
//!
//! Scores per cell: closed-loop success (the end effector ends on the cued pad) and, for
//! policies that name the cue (a model's cue-recall head), whether the named pad is the cued
//! one at the last step.
//!
//! Layout:
//! - this file: the [`Policy`] interface and its reference implementations ([`Oracle`]: told
//!   the cue, must score 100%; [`HistoryBlind`]: acts on the current step only, scores at
//!   chance `1 / n_targets`; [`ModelPolicy`]: a [`Vla`] over its KV cache, as on the robot),
//!   and [`run_episode`].
//! - [`sweep`]: the sweep's axes (lengths, depths, RoPE methods per length, KV dtypes, cache
//!   budgets), paired episode seeds, the parallel runner.
//! - [`report`]: Wilson intervals, the CSV of every cell, the markdown tables.
//! - [`heatmap`]: PNG heatmaps (length × depth), drawn with plotters' bitmap backend and an
//!   embedded 8×8 bitmap font (no font files, nothing fetched).

pub mod heatmap;
pub mod report;
pub mod sweep;
#[cfg(test)]
mod tests;

use burn::tensor::backend::Backend;
use runtime::kv::KvCacheConfig;
use runtime::model::{StepInput, Stream, Vla};
use vision::{PreprocessConfig, Preprocessor};

use crate::error::{Error, Result};
use sim::rng::mix64;
use sim::{PROPRIO_DIM, Sim, Step};

/// What a policy returns for one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Act {
    /// Action chunk, `horizon * ACTION_DIM` values (the simulator applies the first action).
    pub chunk: Vec<f32>,
    /// The pad the policy believes was cued, if it says (scored at the last step).
    pub cue: Option<usize>,
}

/// The arm controller a policy may use to turn a decision into a chunk: the task's expert
/// controller from the current arm state (which proprio exposes anyway). It knows nothing of
/// the cue.
#[derive(Clone, Copy, Debug)]
pub struct ArmView<'a> {
    sim: &'a Sim,
}

impl ArmView<'_> {
    /// Whether the go signal is on (proprio's `go` flag).
    pub fn go(&self) -> bool {
        self.sim.t() >= self.sim.go_step()
    }

    /// Number of target pads.
    pub fn n_targets(&self) -> usize {
        self.sim.task().targets().len()
    }

    /// The expert's chunk toward pad `k` (clamped to the last pad).
    pub fn reach_pad(&self, k: usize) -> Vec<f32> {
        let targets = self.sim.task().targets();
        let xy = targets[k.min(targets.len().saturating_sub(1))];
        self.sim.chunk_to(xy)
    }

    /// The expert's chunk that holds the rest pose.
    pub fn hold(&self) -> Vec<f32> {
        self.sim.chunk_to(self.sim.task().config().arm.rest_xy)
    }
}

/// What a policy sees at one step.
#[derive(Debug)]
pub struct Observation<'a> {
    /// Step index in the episode.
    pub t: usize,
    /// Proprio (`[q1, q2, dq1, dq2, ee_x, ee_y, go, t / total]`).
    pub proprio: [f32; PROPRIO_DIM],
    /// The rendered step (images), when [`Policy::needs_frames`]; its `expert_action` label is
    /// not for policies to read.
    pub frame: Option<&'a Step>,
    /// The arm controller.
    pub arm: ArmView<'a>,
    /// The cued pad: given only to [`Policy::privileged`] policies (the oracle).
    pub cue: Option<usize>,
}

/// A policy the needle harness can drive. One instance runs one episode at a time:
/// [`start`](Policy::start), then [`act`](Policy::act) once per step.
pub trait Policy {
    /// Whether [`Observation::frame`] must be rendered (rendering costs most of a step for
    /// policies that do not look).
    fn needs_frames(&self) -> bool {
        true
    }

    /// Whether the policy is told the cue directly ([`Observation::cue`]).
    fn privileged(&self) -> bool {
        false
    }

    /// Starts an episode with its instruction; `episode_seed` is for policies that draw
    /// random numbers (they must not learn the cue from it).
    ///
    /// # Errors
    /// Policy-specific (a model rejects an over-long instruction).
    fn start(&mut self, instruction: &str, episode_seed: u64) -> Result<()>;

    /// The action chunk for the current step.
    ///
    /// # Errors
    /// Policy-specific (missing inputs, model errors).
    fn act(&mut self, obs: &Observation<'_>) -> Result<Act>;
}

/// The oracle: told the cue, it holds the rest pose until the go signal and then runs the
/// expert controller to the cued pad. The harness is right only if it scores 100%.
#[derive(Clone, Copy, Debug, Default)]
pub struct Oracle;

impl Policy for Oracle {
    fn needs_frames(&self) -> bool {
        false
    }

    fn privileged(&self) -> bool {
        true
    }

    fn start(&mut self, _instruction: &str, _episode_seed: u64) -> Result<()> {
        Ok(())
    }

    fn act(&mut self, obs: &Observation<'_>) -> Result<Act> {
        let cue = obs.cue.ok_or_else(|| Error::Input {
            what: "oracle observation",
            reason: "the harness did not pass the cue".into(),
        })?;
        let chunk = if obs.arm.go() {
            obs.arm.reach_pad(cue)
        } else {
            obs.arm.hold()
        };
        Ok(Act {
            chunk,
            cue: Some(cue),
        })
    }
}

/// A policy with no memory: it sees only the current step, where the cue is never lit during
/// the go phase, so it can only guess a pad (uniformly, from the episode seed through a hash
/// independent of the task's) and run the expert there. Success and cue recall are
/// Binomial(episodes, 1 / n_targets).
#[derive(Clone, Copy, Debug, Default)]
pub struct HistoryBlind {
    seed: u64,
}

impl Policy for HistoryBlind {
    fn needs_frames(&self) -> bool {
        false
    }

    fn start(&mut self, _instruction: &str, episode_seed: u64) -> Result<()> {
        self.seed = episode_seed;
        Ok(())
    }

    fn act(&mut self, obs: &Observation<'_>) -> Result<Act> {
        let n = obs.arm.n_targets().max(1) as u64;
        let guess = (mix64(self.seed ^ 0x626C_696E_6400_0000) % n) as usize; // "blind"
        let chunk = if obs.arm.go() {
            obs.arm.reach_pad(guess)
        } else {
            obs.arm.hold()
        };
        Ok(Act {
            chunk,
            cue: Some(guess),
        })
    }
}

/// A model driving the simulator through the streaming path (one [`Vla::forward_step`] per
/// frame-step over its KV cache), as on the robot. The cue guess is the argmax of the
/// cue-recall head, when the model has one.
#[derive(Debug)]
pub struct ModelPolicy<B: Backend> {
    model: Vla<B>,
    stream: Stream<B>,
    preprocess: Preprocessor,
    /// The current frame-step's patches (reused).
    patches: Vec<f32>,
}

impl<B: Backend> ModelPolicy<B> {
    /// The model with a fresh stream over a cache of `cache`'s format and budget, fed images
    /// preprocessed by `preprocess` (the checkpoint's own: what it was trained on).
    ///
    /// # Errors
    /// [`Error::Runtime`] if the budget cannot hold the sinks plus one frame-step;
    /// [`Error::Vision`] for an invalid `preprocess`.
    pub fn new(
        model: Vla<B>,
        cache: &KvCacheConfig,
        preprocess: PreprocessConfig,
        device: &B::Device,
    ) -> Result<Self> {
        let stream = model.new_stream(cache, device)?;
        Ok(Self {
            model,
            stream,
            preprocess: Preprocessor::new(preprocess)?,
            patches: Vec::new(),
        })
    }

    /// The model.
    pub fn model(&self) -> &Vla<B> {
        &self.model
    }

    /// The stream (its cache's bytes and eviction counters).
    pub fn stream(&self) -> &Stream<B> {
        &self.stream
    }
}

impl<B: Backend> Policy for ModelPolicy<B> {
    fn start(&mut self, instruction: &str, _episode_seed: u64) -> Result<()> {
        self.model.start_episode(instruction, &mut self.stream)?;
        Ok(())
    }

    fn act(&mut self, obs: &Observation<'_>) -> Result<Act> {
        let frame = obs.frame.ok_or_else(|| Error::Input {
            what: "model observation",
            reason: "no rendered frame".into(),
        })?;
        self.patches.clear();
        frame.append_patches(&mut self.preprocess, &mut self.patches)?;
        let out = self.model.forward_step(
            &StepInput {
                patches: &self.patches,
                camera_present: &frame.camera_present,
                proprio: &obs.proprio,
            },
            &mut self.stream,
        )?;
        Ok(Act {
            chunk: out.action.values,
            cue: out.cue_logits.map(|logits| argmax(&logits)),
        })
    }
}

/// Outcome of one episode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The end effector ended on the cued pad.
    pub success: bool,
    /// The policy's cue guess at the last step named the cued pad (`None`: it did not guess).
    pub cue_correct: Option<bool>,
    /// Its guess at the go step, before the arm moves toward the pad (`None`: no guess).
    pub cue_correct_at_go: Option<bool>,
    /// Frame-steps run.
    pub steps: usize,
}

/// Runs `policy` closed loop through the episode `sim` (from its first step to its last).
///
/// # Errors
/// The policy's errors; [`Error::Input`] for a chunk the simulator rejects.
pub fn run_episode(policy: &mut dyn Policy, mut sim: Sim, episode_seed: u64) -> Result<Outcome> {
    let info = sim.info();
    policy.start(&info.instruction, episode_seed)?;
    let needs_frames = policy.needs_frames();
    let privileged = policy.privileged();
    let steps = sim.total_steps();
    let mut cue_correct_at_go = None;
    loop {
        let frame = needs_frames.then(|| sim.observe());
        let act = policy.act(&Observation {
            t: sim.t(),
            proprio: sim.proprio(),
            frame: frame.as_ref(),
            arm: ArmView { sim: &sim },
            cue: privileged.then(|| sim.target()),
        })?;
        if sim.t() == sim.go_step() {
            cue_correct_at_go = act.cue.map(|c| c == sim.target());
        }
        if sim.is_last() {
            return Ok(Outcome {
                success: sim.success(),
                cue_correct: act.cue.map(|c| c == sim.target()),
                cue_correct_at_go,
                steps,
            });
        }
        sim.step(&act.chunk)?;
    }
}

/// Index of the largest value (the first on ties; 0 for an empty slice).
pub(crate) fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}
