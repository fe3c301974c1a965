//! Closed-loop evaluation: the model drives the task's simulator step by step through the
//! streaming path (`Vla::forward_step` over its KV cache), exactly as on the robot, and an
//! episode counts as a success when the end effector ends within tolerance of the target.

use burn::tensor::backend::Backend;
use runtime::kv::KvCacheConfig;
use runtime::model::{StepInput, Vla};
use vision::{PreprocessConfig, Preprocessor};

use crate::error::Result;
use crate::task::{Sim, Task, TaskConfig};

/// Outcome of a closed-loop evaluation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalReport {
    /// Episodes run.
    pub episodes: usize,
    /// Episodes that ended on the target.
    pub successes: usize,
    /// Episodes whose cue-recall head named the cued pad at the last step (models with a
    /// cue head only).
    pub cue_correct: Option<usize>,
    /// Episodes whose cue-recall head named the cued pad at the go step, before the arm moves
    /// toward it (what the model remembers, not what it sees the arm do).
    pub cue_correct_at_go: Option<usize>,
}

impl EvalReport {
    /// Fraction of successful episodes.
    pub fn success_rate(&self) -> f64 {
        self.successes as f64 / self.episodes.max(1) as f64
    }
}

/// Runs `model` closed loop on the episodes of `seeds`, with a KV cache that holds the whole
/// context (the model's cache dtype, budget = its context length).
///
/// # Errors
/// Task, vision or model errors (bad configs, an episode longer than the model's context).
pub fn closed_loop<B: Backend>(
    model: &Vla<B>,
    task_config: &TaskConfig,
    seeds: impl Iterator<Item = u64>,
    device: &B::Device,
) -> Result<EvalReport> {
    let c = model.config();
    let layout = c.kv_layout();
    let cache = KvCacheConfig {
        dtype: layout.dtype,
        budget_bytes: layout.total_bytes(c.max_cached_tokens() as u64),
    };
    let task = Task::new(task_config)?;
    let mut preprocess = Preprocessor::new(PreprocessConfig::default())?;
    let mut patches = Vec::new();
    let mut stream = model.new_stream(&cache, device)?;
    let mut report = EvalReport::default();
    for seed in seeds {
        let mut sim = Sim::with_task(task.clone(), seed)?;
        model.start_episode(&sim.info().instruction, &mut stream)?;
        let recalled;
        let mut recalled_at_go = None;
        loop {
            let step = sim.observe();
            patches.clear();
            step.append_patches(&mut preprocess, &mut patches)?;
            let present = vec![true; step.images.len()];
            let out = model.forward_step(
                &StepInput {
                    patches: &patches,
                    camera_present: &present,
                    proprio: &step.proprio,
                },
                &mut stream,
            )?;
            if sim.t() == sim.go_step() {
                recalled_at_go = out
                    .cue_logits
                    .as_deref()
                    .map(|logits| argmax(logits) == sim.target());
            }
            if sim.is_last() {
                recalled = out.cue_logits.map(|logits| argmax(&logits) == sim.target());
                break;
            }
            sim.step(&out.action.values)?;
        }
        report.episodes += 1;
        report.successes += usize::from(sim.success());
        if let Some(hit) = recalled {
            *report.cue_correct.get_or_insert(0) += usize::from(hit);
        }
        if let Some(hit) = recalled_at_go {
            *report.cue_correct_at_go.get_or_insert(0) += usize::from(hit);
        }
    }
    Ok(report)
}

/// Index of the largest value (the first on ties; 0 for an empty slice).
fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use runtime::model::VlaConfig;

    use super::*;

    type B = NdArray<f32>;

    /// The harness runs whole episodes through the streaming path and is deterministic: the
    /// same model and seeds give the same report.
    #[test]
    fn runs_whole_episodes_deterministically() {
        let c = VlaConfig::from_toml(
            r#"
            d_model = 64
            n_layers = 1
            n_heads = 2
            n_kv_heads = 1
            ffn_dim = 64
            n_cameras = 3
            patches_per_camera = 16
            patch_dim = 768
            proprio_dim = 8
            max_instruction_bytes = 63
            n_readout = 1
            horizon = 8
            action_dim = 4
            [rope]
            head_dim = 32
            max_position_embeddings = 1024
            [kv_cache]
            dtype = "int8"
            budget_bytes = 1000000
            "#,
        )
        .expect("tiny model");
        let task = TaskConfig::from_toml(
            "episode_steps = 16\ncue_start = [1, 1]\ncue_steps = 1\ngo_delay = [1, 2]\nreach_steps = 11\n",
        )
        .expect("short task");
        let device = Default::default();
        let model = c.init::<B>(&device);
        let a = closed_loop(&model, &task, 0..3, &device).expect("eval");
        let b = closed_loop(&model, &task, 0..3, &device).expect("eval again");
        assert_eq!(a.episodes, 3);
        assert_eq!(a, b);
        assert!((0.0..=1.0).contains(&a.success_rate()));
    }
}
