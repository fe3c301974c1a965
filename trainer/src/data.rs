//! Training batches from the memory task: episodes generated from seeds (in parallel, one
//! thread per core), their images through the vision preprocessor, per-step loss weights and
//! cue labels; and a background producer that prepares the next batches while the current one
//! trains.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use vision::{PreprocessConfig, Preprocessor};

use crate::error::{Error, Result};
use crate::train::Batch;
use sim::{Episode, TaskConfig};

/// Per-step loss weighting of a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepWeights {
    /// Weight of the steps from the go step on (the steps whose actions depend on the cue),
    /// relative to 1 for the steps before it.
    pub go: f32,
    /// Weight of the first `onset_steps` go-phase steps instead of `go`: where the reach's
    /// direction is chosen from memory alone; later in the go phase the arm's own motion also
    /// tells where it is going, so a clone can lean on that instead of the memory.
    pub onset: f32,
    /// How many go-phase steps, from the go step, weigh `onset` (0: none).
    pub onset_steps: usize,
}

impl Default for StepWeights {
    fn default() -> Self {
        Self {
            go: 1.0,
            onset: 1.0,
            onset_steps: 0,
        }
    }
}

impl StepWeights {
    /// The loss weight of step `t` of an episode whose go step is `go_step`.
    pub fn at(&self, t: usize, go_step: usize) -> f32 {
        match t.checked_sub(go_step) {
            None => 1.0,
            Some(k) if k < self.onset_steps => self.onset,
            Some(_) => self.go,
        }
    }
}

/// One episode's part of a batch.
struct EpisodeRows {
    instruction: String,
    steps: usize,
    patches: Vec<f32>,
    proprio: Vec<f32>,
    actions: Vec<f32>,
    weights: Vec<f32>,
    cue_targets: Vec<i64>,
    camera_present: Vec<bool>,
}

fn episode_rows(
    task: &TaskConfig,
    seed: u64,
    weights: StepWeights,
    preprocess: &PreprocessConfig,
) -> Result<EpisodeRows> {
    let episode = Episode::generate(task, seed)?;
    let mut pre = Preprocessor::new(preprocess.clone())?;
    let n = episode.steps.len();
    let mut rows = EpisodeRows {
        instruction: episode.instruction.clone(),
        steps: n,
        patches: Vec::new(),
        proprio: Vec::with_capacity(n * 8),
        actions: Vec::new(),
        weights: Vec::with_capacity(n),
        cue_targets: Vec::with_capacity(n),
        camera_present: Vec::new(),
    };
    for (t, step) in episode.steps.iter().enumerate() {
        step.append_patches(&mut pre, &mut rows.patches)?;
        rows.camera_present.extend_from_slice(&step.camera_present);
        rows.proprio.extend_from_slice(&step.proprio);
        rows.actions.extend_from_slice(&step.expert_action);
        rows.weights.push(weights.at(t, episode.go_step));
        // The cued pad is knowable from the cue's first step on.
        rows.cue_targets.push(if t >= episode.cue_steps.start {
            episode.target as i64
        } else {
            -1
        });
    }
    Ok(rows)
}

/// The episodes of `seeds` as one batch, generated on all cores.
///
/// # Errors
/// Task or vision errors; [`Error::Input`] if the episodes differ in length.
pub fn episode_batch(
    task: &TaskConfig,
    seeds: &[u64],
    weights: StepWeights,
    preprocess: &PreprocessConfig,
) -> Result<Batch> {
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(seeds.len().max(1));
    let per_thread = seeds.len().div_ceil(threads.max(1)).max(1);
    let parts: Vec<Result<Vec<EpisodeRows>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = seeds
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&seed| episode_rows(task, seed, weights, preprocess))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::Input {
                        what: "episode generation",
                        reason: "a worker thread panicked".into(),
                    })
                })
            })
            .collect()
    });
    let mut batch = Batch::default();
    for part in parts {
        for rows in part? {
            if batch.instructions.is_empty() {
                batch.steps = rows.steps;
            } else if rows.steps != batch.steps {
                return Err(Error::Input {
                    what: "episode batch",
                    reason: format!(
                        "episodes of {} and {} steps cannot share a batch",
                        batch.steps, rows.steps
                    ),
                });
            }
            batch.instructions.push(rows.instruction);
            batch.patches.extend(rows.patches);
            batch.camera_present.extend(rows.camera_present);
            batch.proprio.extend(rows.proprio);
            batch.actions.extend(rows.actions);
            batch.weights.extend(rows.weights);
            batch.cue_targets.extend(rows.cue_targets);
        }
    }
    Ok(batch)
}

/// Batches made ahead of the training loop on a background thread: batch `i` holds the
/// episodes `first_seed + i · batch_size ..` (so a run is reproducible and a resumed run sees
/// the same data).
#[derive(Debug)]
pub struct Prefetch {
    receiver: Receiver<Result<Batch>>,
    next: usize,
    _worker: JoinHandle<()>,
}

impl Prefetch {
    /// Starts producing batches `start..end`, at most `depth` ahead.
    pub fn start(
        task: TaskConfig,
        first_seed: u64,
        batch_size: usize,
        weights: StepWeights,
        range: std::ops::Range<usize>,
        depth: usize,
    ) -> Self {
        let (sender, receiver): (SyncSender<Result<Batch>>, _) = sync_channel(depth.max(1));
        let start = range.start;
        let worker = std::thread::spawn(move || {
            let preprocess = sim::training_preprocess();
            for i in range {
                let first = first_seed.wrapping_add((i * batch_size) as u64);
                let seeds: Vec<u64> = (0..batch_size as u64)
                    .map(|k| first.wrapping_add(k))
                    .collect();
                let batch = episode_batch(&task, &seeds, weights, &preprocess);
                if sender.send(batch).is_err() {
                    return; // the trainer stopped
                }
            }
        });
        Self {
            receiver,
            next: start,
            _worker: worker,
        }
    }

    /// Batch `iteration` (they must be asked for in order).
    ///
    /// # Errors
    /// Whatever generating it reported; [`Error::Input`] when asked out of order or past the
    /// end.
    pub fn get(&mut self, iteration: usize) -> Result<Batch> {
        if iteration != self.next {
            return Err(Error::Input {
                what: "prefetched batch",
                reason: format!("asked for batch {iteration}, the next is {}", self.next),
            });
        }
        self.next += 1;
        self.receiver.recv().map_err(|_| Error::Input {
            what: "prefetched batch",
            reason: format!("no batch {iteration}: the producer stopped"),
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short_task() -> TaskConfig {
        TaskConfig::from_toml(
            "episode_steps = 16\ncue_start = [1, 1]\ncue_steps = 1\ngo_delay = [1, 2]\nreach_steps = 11\n",
        )
        .expect("short task")
    }

    /// The parallel batch equals episodes generated one by one through `Step::patches`, and
    /// the labels follow the episode's cue and go steps.
    #[test]
    fn batch_matches_episodes_and_labels() {
        let mut task = short_task();
        task.camera_dropouts = 2;
        let seeds = [5u64, 6, 7];
        let pre = PreprocessConfig::default();
        let weights = StepWeights {
            go: 3.0,
            onset: 7.0,
            onset_steps: 2,
        };
        let batch = episode_batch(&task, &seeds, weights, &pre).expect("batch");
        assert_eq!(batch.instructions.len(), 3);
        assert_eq!(batch.steps, 16);
        let mut patches = Vec::new();
        for (e, &seed) in seeds.iter().enumerate() {
            let episode = Episode::generate(&task, seed).expect("episode");
            assert_eq!(batch.instructions[e], episode.instruction);
            for (t, step) in episode.steps.iter().enumerate() {
                patches.extend(step.patches(&pre).expect("patches"));
                let at = e * 16 + t;
                let want = match t.checked_sub(episode.go_step) {
                    None => 1.0,
                    Some(0 | 1) => 7.0,
                    Some(_) => 3.0,
                };
                assert_eq!(batch.weights[at], want, "step {t}, go {}", episode.go_step);
                let cued = t >= episode.cue_steps.start;
                let want = if cued { episode.target as i64 } else { -1 };
                assert_eq!(batch.cue_targets[at], want);
            }
        }
        assert_eq!(batch.patches, patches);
        // Cameras in a dropout are marked absent, step by step, as the episode says.
        let present: Vec<bool> = seeds
            .iter()
            .flat_map(|&seed| {
                let episode = Episode::generate(&task, seed).expect("episode");
                episode
                    .steps
                    .into_iter()
                    .flat_map(|step| step.camera_present)
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(batch.camera_present, present);
        assert!(present.iter().any(|&p| !p), "some camera dropped");
    }

    #[test]
    fn prefetch_yields_batches_in_order() {
        let task = short_task();
        let pre = PreprocessConfig::default();
        let mut prefetch = Prefetch::start(task.clone(), 100, 2, StepWeights::default(), 3..5, 1);
        assert!(prefetch.get(4).is_err());
        let mut fresh = Prefetch::start(task.clone(), 100, 2, StepWeights::default(), 3..5, 1);
        let b3 = fresh.get(3).expect("batch 3");
        let want = episode_batch(&task, &[106, 107], StepWeights::default(), &pre).expect("direct");
        assert_eq!(b3, want);
        assert!(fresh.get(4).is_ok());
        assert!(fresh.get(5).is_err());
    }
}
