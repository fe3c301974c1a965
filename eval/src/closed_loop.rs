//! Closed-loop evaluation: the model drives the task's simulator step by step through the
//! streaming path (`Vla::forward_step` over its KV cache), exactly as on the robot, and an
//! episode counts as a success when the end effector ends within tolerance of the target.
//! One episode is [`crate::needle::run_episode`] with a [`ModelPolicy`], as in the sweep.

use burn::tensor::backend::Backend;
use runtime::kv::KvCacheConfig;
use runtime::model::Vla;
use sim::{Sim, Task, TaskConfig};

use crate::error::Result;
use crate::needle::{ModelPolicy, run_episode};

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

/// Runs `model` closed loop on the episodes of `seeds`, fed images preprocessed by
/// `preprocess` (what it was trained on), with a KV cache that holds the whole context (the
/// model's cache dtype, budget = its context length).
///
/// # Errors
/// Task, vision or model errors (bad configs, an episode longer than the model's context).
pub fn closed_loop<B: Backend>(
    model: &Vla<B>,
    task_config: &TaskConfig,
    preprocess: &vision::PreprocessConfig,
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
    let mut policy = ModelPolicy::new(model.clone(), &cache, preprocess.clone(), device)?;
    let mut report = EvalReport::default();
    for seed in seeds {
        let outcome = run_episode(&mut policy, Sim::with_task(task.clone(), seed)?, seed)?;
        report.episodes += 1;
        report.successes += usize::from(outcome.success);
        if let Some(hit) = outcome.cue_correct {
            *report.cue_correct.get_or_insert(0) += usize::from(hit);
        }
        if let Some(hit) = outcome.cue_correct_at_go {
            *report.cue_correct_at_go.get_or_insert(0) += usize::from(hit);
        }
    }
    Ok(report)
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
        // The 1-layer soak model with a cache that holds whole 16-step episodes.
        let mut c = VlaConfig::from_toml(configs::model_preset("soak").expect("soak").text)
            .expect("config");
        c.rope.max_position_embeddings = 1024;
        c.kv_cache.budget_bytes = 1_000_000;
        let task = TaskConfig::from_toml(
            "episode_steps = 16\ncue_start = [1, 1]\ncue_steps = 1\ngo_delay = [1, 2]\nreach_steps = 11\n",
        )
        .expect("short task");
        let device = Default::default();
        let model = c.init_seeded::<B>(8, &Default::default());
        let a =
            closed_loop(&model, &task, &sim::training_preprocess(), 0..3, &device).expect("eval");
        let b = closed_loop(&model, &task, &sim::training_preprocess(), 0..3, &device)
            .expect("eval again");
        assert_eq!(a.episodes, 3);
        assert_eq!(a, b);
        assert!((0.0..=1.0).contains(&a.success_rate()));
    }
}
