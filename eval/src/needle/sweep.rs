//! The needle sweep: which cells to run, how each cell's model is configured, and the runner.
//!
//! A cell is (RoPE method, KV dtype, cache budget, recall, length, depth), scored over `episodes`
//! needle episodes. Episode seeds depend only on the sweep seed, the length, the depth and the
//! episode index ([`episode_seed`]), so every method, dtype and budget sees the *same*
//! episodes: differences between configurations are paired, not sampling noise between
//! different episodes.
//!
//! # RoPE per length
//! A length of `L` frame-steps needs `tokens(L) = max_sink_tokens + L · tokens_per_step +
//! n_readout` positions. With the model's original (pre-extension) context `O` (its RoPE's
//! `original_max_position_embeddings` for yarn / llama3 / longrope, else its
//! `max_position_embeddings`), the factor a length needs is `s = max(1, tokens(L) / O)`, and
//! [`rope_for_length`] builds, from the model's own `rope_theta` and `head_dim`:
//! - `trained`: the checkpoint's RoPE unchanged (the baseline: what it was trained with);
//! - `none`: no scaling (plain RoPE, positions past `O` extrapolated);
//! - `pi`: linear position interpolation, every frequency divided by `s`;
//! - `ntk`: NTK-aware base change, `θ' = θ · s^(d / (d - 2))` (d = rotary dims), fixed;
//! - `dynamic`: HuggingFace's dynamic NTK with factor `s` (the base grows with the current
//!   sequence length once it passes `O`);
//! - `yarn`: YaRN with factor `s` over `O` (`beta_fast` 32, `beta_slow` 1, truncate, the
//!   attention temperature `0.1 ln s + 1`).
//!
//! Every cell's model has `context_length = tokens(L)`, so with the `full` budget the cache
//! keeps every frame-step; a smaller budget evicts the oldest frame-steps and keeps the sinks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};

use burn::module::Module;
use burn::tensor::backend::Backend;
use runtime::kv::{KvCacheConfig, KvDtype};
use runtime::model::{BankEviction, MemoryOverride, Vla, VlaConfig};
use runtime::rope::{RopeConfig, RopeScaling, YarnScaling};

use super::{HistoryBlind, ModelPolicy, Oracle, Outcome, Policy, run_episode};
use crate::error::{Error, Result};
use sim::rng::mix64;
use sim::{Sim, Task, TaskConfig};

/// How the RoPE of a cell is built for its length (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RopeMethod {
    /// The checkpoint's own RoPE, unchanged.
    Trained,
    /// No scaling.
    None,
    /// Linear position interpolation (PI).
    Pi,
    /// NTK-aware base change (static).
    Ntk,
    /// Dynamic NTK.
    Dynamic,
    /// YaRN.
    Yarn,
}

impl RopeMethod {
    /// Every method, in the order tables list them.
    pub const ALL: [RopeMethod; 6] = [
        Self::Trained,
        Self::None,
        Self::Pi,
        Self::Ntk,
        Self::Dynamic,
        Self::Yarn,
    ];

    /// Name on the command line and in outputs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Trained => "trained",
            Self::None => "none",
            Self::Pi => "pi",
            Self::Ntk => "ntk",
            Self::Dynamic => "dynamic",
            Self::Yarn => "yarn",
        }
    }
}

impl std::fmt::Display for RopeMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for RopeMethod {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "trained" => Self::Trained,
            "none" | "default" => Self::None,
            "pi" | "linear" => Self::Pi,
            "ntk" => Self::Ntk,
            "dynamic" | "dynamic-ntk" | "ntk-dynamic" => Self::Dynamic,
            "yarn" => Self::Yarn,
            other => {
                return Err(Error::Input {
                    what: "RoPE method",
                    reason: format!(
                        "unknown method `{other}`; expected one of trained, none, pi, ntk, dynamic, yarn"
                    ),
                });
            }
        })
    }
}

/// The KV cache's byte budget in a cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Budget {
    /// Room for every frame-step of the episode (keep everything).
    Full,
    /// The checkpoint's own `kv_cache.budget_bytes` (the deployed budget).
    Model,
    /// The sinks plus this many frame-steps (a sliding window, dtype-independent).
    Window(usize),
    /// A fixed number of bytes.
    Bytes(u64),
}

impl Budget {
    /// Label on the command line and in outputs: `full`, `model`, `window:N` or a byte count.
    pub fn label(self) -> String {
        match self {
            Self::Full => "full".into(),
            Self::Model => "model".into(),
            Self::Window(n) => format!("window:{n}"),
            Self::Bytes(b) => b.to_string(),
        }
    }

    /// Bytes of this budget for a model configured for a cell (its context already set to
    /// the cell's length) with cache format `dtype`; `trained_budget` is the checkpoint's.
    pub fn bytes(self, config: &VlaConfig, dtype: KvDtype, trained_budget: u64) -> u64 {
        let layout = runtime::kv::KvLayout {
            dtype,
            ..config.kv_layout()
        };
        match self {
            Self::Full => layout.total_bytes(config.max_cached_tokens() as u64),
            Self::Model => trained_budget,
            Self::Window(n) => {
                layout.total_bytes((config.max_sink_tokens() + n * config.tokens_per_step()) as u64)
            }
            Self::Bytes(b) => b,
        }
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

impl std::str::FromStr for Budget {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::Input {
            what: "KV budget",
            reason,
        };
        match s {
            "full" => Ok(Self::Full),
            "model" => Ok(Self::Model),
            _ => {
                if let Some(n) = s.strip_prefix("window:") {
                    let n: usize = n
                        .parse()
                        .map_err(|_| bad(format!("`{s}`: window:N takes a frame-step count")))?;
                    if n == 0 {
                        return Err(bad("window:0 holds no frame-step".into()));
                    }
                    Ok(Self::Window(n))
                } else {
                    s.parse::<u64>().map(Self::Bytes).map_err(|_| {
                        bad(format!(
                            "`{s}`: expected full, model, window:N (frame-steps) or a byte count"
                        ))
                    })
                }
            }
        }
    }
}

/// Whether a model with a memory bank may recall frame-steps the KV cache evicted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Recall {
    /// The checkpoint's memory bank as configured (`memory.bank_steps` memory tokens).
    #[default]
    On,
    /// The bank no longer than the KV window (`bank_steps = window_steps`): a memory token
    /// leaves the bank when its frame-step leaves the cache, so nothing evicted is recalled.
    /// The ablation of the recall mechanism; an error for a model without a memory.
    Off,
}

impl Recall {
    /// Name on the command line and in outputs.
    pub fn name(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
        }
    }
}

impl std::fmt::Display for Recall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Recall {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(Error::Input {
                what: "recall",
                reason: format!("unknown value `{other}`; expected on or off"),
            }),
        }
    }
}

/// One model configuration of the sweep: RoPE method, cache format, cache budget, recall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EvalConfig {
    /// RoPE method.
    pub method: RopeMethod,
    /// KV cache storage format.
    pub dtype: KvDtype,
    /// KV cache budget.
    pub budget: Budget,
    /// The memory bank's recall of evicted frame-steps (models with a memory).
    pub recall: Recall,
}

/// Which combinations of methods, dtypes and budgets to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Design {
    /// One factor at a time around the baseline (the first method, dtype, budget and recall):
    /// every method with the baseline's other settings, then every dtype, every budget and
    /// every recall setting likewise.
    Axes,
    /// Every combination.
    Grid,
}

impl std::str::FromStr for Design {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "axes" => Ok(Self::Axes),
            "grid" => Ok(Self::Grid),
            other => Err(Error::Input {
                what: "design",
                reason: format!("unknown design `{other}`; expected axes or grid"),
            }),
        }
    }
}

/// What to sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepSpec {
    /// Episode lengths in frame-steps (history + go phase), each ≥ `train_length`.
    pub lengths: Vec<usize>,
    /// Cue depths, fractions of the history in `[0, 1]`.
    pub depths: Vec<f64>,
    /// Episodes per cell.
    pub episodes: usize,
    /// Sweep seed (episode seeds derive from it).
    pub seed: u64,
    /// RoPE methods; the first is the baseline.
    pub methods: Vec<RopeMethod>,
    /// KV dtypes; the first is the baseline.
    pub dtypes: Vec<KvDtype>,
    /// KV budgets; the first is the baseline.
    pub budgets: Vec<Budget>,
    /// Recall settings; the first is the baseline.
    pub recalls: Vec<Recall>,
    /// Combinations to run.
    pub design: Design,
    /// The length (frame-steps) the model was trained at; the sweep starts there.
    pub train_length: usize,
}

impl SweepSpec {
    /// The baseline configuration (first method, dtype, budget and recall).
    ///
    /// # Errors
    /// [`Error::Input`] if a list is empty.
    pub fn baseline(&self) -> Result<EvalConfig> {
        let empty = |what: &'static str| Error::Input {
            what,
            reason: "the list is empty".into(),
        };
        Ok(EvalConfig {
            method: *self.methods.first().ok_or_else(|| empty("methods"))?,
            dtype: *self.dtypes.first().ok_or_else(|| empty("KV dtypes"))?,
            budget: *self.budgets.first().ok_or_else(|| empty("KV budgets"))?,
            recall: *self
                .recalls
                .first()
                .ok_or_else(|| empty("recall settings"))?,
        })
    }

    /// The configurations to run, baseline first, without duplicates.
    ///
    /// # Errors
    /// As [`SweepSpec::baseline`].
    pub fn configs(&self) -> Result<Vec<EvalConfig>> {
        let base = self.baseline()?;
        let mut out: Vec<EvalConfig> = Vec::new();
        let mut push = |c: EvalConfig| {
            if !out.contains(&c) {
                out.push(c);
            }
        };
        match self.design {
            Design::Axes => {
                for &method in &self.methods {
                    push(EvalConfig { method, ..base });
                }
                for &dtype in &self.dtypes {
                    push(EvalConfig { dtype, ..base });
                }
                for &budget in &self.budgets {
                    push(EvalConfig { budget, ..base });
                }
                for &recall in &self.recalls {
                    push(EvalConfig { recall, ..base });
                }
            }
            Design::Grid => {
                for &method in &self.methods {
                    for &dtype in &self.dtypes {
                        for &budget in &self.budgets {
                            for &recall in &self.recalls {
                                push(EvalConfig {
                                    method,
                                    dtype,
                                    budget,
                                    recall,
                                });
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Checks the spec against the task.
    ///
    /// # Errors
    /// [`Error::Input`] naming the offending value: empty lists, a length below the training
    /// length or too short for the task's go phase and cue, a depth outside `[0, 1]`, zero
    /// episodes.
    pub fn validate(&self, task: &TaskConfig) -> Result<()> {
        self.baseline()?;
        if self.lengths.is_empty() {
            return Err(Error::Input {
                what: "lengths",
                reason: "the list is empty".into(),
            });
        }
        if self.depths.is_empty() {
            return Err(Error::Input {
                what: "depths",
                reason: "the list is empty".into(),
            });
        }
        if self.episodes == 0 {
            return Err(Error::Input {
                what: "episodes",
                reason: "must be at least 1".into(),
            });
        }
        let shortest = task.reach_steps + task.cue_steps + 1;
        for &length in &self.lengths {
            if length < self.train_length {
                return Err(Error::Input {
                    what: "length",
                    reason: format!(
                        "{length} frame-steps is below the training length {}: the sweep runs from the training length up (to 16x it)",
                        self.train_length
                    ),
                });
            }
            if length < shortest {
                return Err(Error::Input {
                    what: "length",
                    reason: format!(
                        "{length} frame-steps cannot hold the go phase ({} steps) after a history with the cue ({} + 1 steps)",
                        task.reach_steps, task.cue_steps
                    ),
                });
            }
        }
        for &depth in &self.depths {
            if !(depth.is_finite() && (0.0..=1.0).contains(&depth)) {
                return Err(Error::Input {
                    what: "depth",
                    reason: format!("{depth} is not a fraction in [0, 1]"),
                });
            }
        }
        Ok(())
    }
}

/// The seed of episode `episode` at (`length`, `depth`): the same for every configuration.
pub fn episode_seed(seed: u64, length: usize, depth: f64, episode: usize) -> u64 {
    let mut h = mix64(seed ^ 0x6E65_6564_6C65); // "needle"
    h = mix64(h ^ length as u64);
    h = mix64(h ^ depth.to_bits());
    mix64(h ^ episode as u64)
}

/// How a cell's policy was set up (for the CSV; `None` where it does not apply).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CellSetup {
    /// RoPE scale factor the length needed (`tokens / original context`, at least 1).
    pub rope_factor: Option<f64>,
    /// Cache budget in bytes.
    pub budget_bytes: Option<u64>,
    /// Frame-steps the cache holds at most.
    pub cache_frames: Option<usize>,
    /// Context positions the length needs.
    pub tokens: Option<usize>,
    /// Memory tokens the bank holds at most (models with a memory).
    pub bank_steps: Option<usize>,
}

/// Builds the policy of a (configuration, length).
pub trait PolicyFactory: Sync {
    /// A policy for `config` at `length` frame-steps.
    ///
    /// # Errors
    /// Factory-specific (a RoPE or budget the model rejects).
    fn build(&self, config: &EvalConfig, length: usize) -> Result<Box<dyn Policy>>;

    /// The set-up `build` uses, for the outputs.
    ///
    /// # Errors
    /// As [`PolicyFactory::build`].
    fn setup(&self, config: &EvalConfig, length: usize) -> Result<CellSetup>;
}

/// The [`Oracle`] for every cell.
#[derive(Clone, Copy, Debug, Default)]
pub struct OracleFactory;

impl PolicyFactory for OracleFactory {
    fn build(&self, _config: &EvalConfig, _length: usize) -> Result<Box<dyn Policy>> {
        Ok(Box::new(Oracle))
    }

    fn setup(&self, _config: &EvalConfig, _length: usize) -> Result<CellSetup> {
        Ok(CellSetup::default())
    }
}

/// The [`HistoryBlind`] policy for every cell.
#[derive(Clone, Copy, Debug, Default)]
pub struct HistoryBlindFactory;

impl PolicyFactory for HistoryBlindFactory {
    fn build(&self, _config: &EvalConfig, _length: usize) -> Result<Box<dyn Policy>> {
        Ok(Box::new(HistoryBlind::default()))
    }

    fn setup(&self, _config: &EvalConfig, _length: usize) -> Result<CellSetup> {
        Ok(CellSetup::default())
    }
}

/// The model's original (pre-extension) context: `original_max_position_embeddings` for
/// methods that carry one, else `max_position_embeddings`.
pub fn original_context(rope: &RopeConfig) -> usize {
    match &rope.scaling {
        RopeScaling::Yarn(y) => y.original_max_position_embeddings,
        RopeScaling::Llama3(l) => l.original_max_position_embeddings,
        RopeScaling::LongRope(l) => l.original_max_position_embeddings,
        RopeScaling::Default | RopeScaling::Linear { .. } | RopeScaling::Dynamic { .. } => {
            rope.max_position_embeddings
        }
    }
}

/// Positions a model needs for `length` frame-steps: the longest instruction, the frame-steps
/// and one step's readouts.
pub fn tokens_for_length(config: &VlaConfig, length: usize) -> usize {
    config.max_sink_tokens() + length * config.tokens_per_step() + config.n_readout
}

/// The RoPE of `method` for a context of `tokens` positions (see the module docs); `trained`
/// is the checkpoint's RoPE, `original` its original context. Returns the RoPE and its
/// scale factor.
pub fn rope_for_length(
    method: RopeMethod,
    trained: &RopeConfig,
    original: usize,
    tokens: usize,
) -> (RopeConfig, f64) {
    let original = original.max(1);
    let factor = (tokens as f64 / original as f64).max(1.0);
    let stretched = ((factor * original as f64).ceil() as usize).max(tokens);
    let plain = |theta: f64, max_position_embeddings: usize, scaling: RopeScaling| RopeConfig {
        head_dim: trained.head_dim,
        rope_theta: theta,
        partial_rotary_factor: trained.partial_rotary_factor,
        max_position_embeddings,
        scaling,
    };
    let theta = trained.rope_theta;
    let rope = match method {
        RopeMethod::Trained => trained.clone(),
        RopeMethod::None => plain(theta, original, RopeScaling::Default),
        RopeMethod::Pi => plain(theta, stretched, RopeScaling::Linear { factor }),
        RopeMethod::Ntk => {
            let d = trained.rotary_dim() as f64;
            let exponent = if d > 2.0 { d / (d - 2.0) } else { 1.0 };
            plain(
                theta * factor.powf(exponent),
                original,
                RopeScaling::Default,
            )
        }
        RopeMethod::Dynamic => plain(theta, original, RopeScaling::Dynamic { factor }),
        RopeMethod::Yarn => plain(
            theta,
            stretched,
            RopeScaling::Yarn(YarnScaling {
                factor,
                original_max_position_embeddings: original,
                beta_fast: runtime::rope::DEFAULT_BETA_FAST,
                beta_slow: runtime::rope::DEFAULT_BETA_SLOW,
                mscale: None,
                mscale_all_dim: None,
                truncate: true,
                attention_factor: None,
            }),
        ),
    };
    (rope, factor)
}

/// Builds [`ModelPolicy`]s from one loaded model: per (method, length) the same weights with
/// the method's RoPE and a context of the length's tokens; per (dtype, budget) a fresh cache.
#[derive(Debug)]
pub struct ModelFactory<B: Backend> {
    base: Mutex<Vla<B>>,
    trained: VlaConfig,
    original: usize,
    preprocess: vision::PreprocessConfig,
    device: B::Device,
}

impl<B: Backend> ModelFactory<B> {
    /// A factory over `model` (as loaded: its RoPE is the `trained` method's), whose policies
    /// feed it images preprocessed by `preprocess` (the checkpoint's own). `original`
    /// overrides the original context (default: [`original_context`] of its RoPE).
    pub fn new(
        model: Vla<B>,
        original: Option<usize>,
        preprocess: vision::PreprocessConfig,
        device: &B::Device,
    ) -> Self {
        let trained = model.config().clone();
        let original = original.unwrap_or_else(|| original_context(&trained.rope));
        Self {
            base: Mutex::new(model),
            trained,
            original,
            preprocess,
            device: device.clone(),
        }
    }

    /// The original context the factors are relative to.
    pub fn original(&self) -> usize {
        self.original
    }

    /// The model config every policy starts from (the checkpoint's, with its run-time
    /// settings as given).
    pub fn trained_config(&self) -> &VlaConfig {
        &self.trained
    }

    /// The same factory with a memory bank of `steps` memory tokens in every policy instead of
    /// the checkpoint's `memory.bank_steps`: the bank is run-time state, not weights, so a
    /// model trained on one length can be read over a longer one (recall `off` still cuts it
    /// to the KV window).
    ///
    /// # Errors
    /// [`Error::Input`] for a model without a memory; [`Error::Runtime`] if the model config
    /// rejects the length (0).
    pub fn with_bank_steps(self, steps: usize) -> Result<Self> {
        self.with_memory_settings(&MemoryOverride {
            bank_steps: Some(steps),
            ..MemoryOverride::default()
        })
    }

    /// The same factory with the memory bank's run-time settings (length, eviction) replaced
    /// in every policy: the bank is run-time state, not weights.
    ///
    /// # Errors
    /// [`Error::Input`] for a model without a memory; [`Error::Runtime`] if the model config
    /// rejects the settings.
    pub fn with_memory_settings(mut self, settings: &MemoryOverride) -> Result<Self> {
        if self.trained.memory.is_none() {
            return Err(Error::Input {
                what: "memory bank settings",
                reason: "this model has no memory bank".into(),
            });
        }
        self.trained = self.trained.with_memory_settings(settings)?;
        Ok(self)
    }

    /// The model config of a (method, recall, length), and the RoPE factor.
    ///
    /// # Errors
    /// [`Error::Runtime`] if the RoPE does not fit the model; [`Error::Input`] for recall off
    /// on a model without a memory.
    pub fn config_for(
        &self,
        method: RopeMethod,
        recall: Recall,
        length: usize,
    ) -> Result<(VlaConfig, f64)> {
        let tokens = tokens_for_length(&self.trained, length);
        let (rope, factor) = rope_for_length(method, &self.trained.rope, self.original, tokens);
        let mut config = self.trained.clone();
        config.rope = rope;
        config.context_length = Some(tokens);
        if recall == Recall::Off {
            let memory = config.memory.as_mut().ok_or_else(|| Error::Input {
                what: "recall",
                reason: "off ablates a memory bank, and this model has none".into(),
            })?;
            // A FIFO as long as the window: nothing outside the window is kept.
            memory.bank_steps = memory.bank_steps.min(memory.window_steps);
            memory.bank_eviction = BankEviction::Oldest;
            memory.bank_recent_steps = None;
        }
        config.validate()?;
        Ok((config, factor))
    }

    fn cache(&self, config: &VlaConfig, eval: &EvalConfig) -> KvCacheConfig {
        KvCacheConfig {
            dtype: eval.dtype,
            budget_bytes: eval
                .budget
                .bytes(config, eval.dtype, self.trained.kv_cache.budget_bytes),
        }
    }
}

impl<B: Backend> PolicyFactory for ModelFactory<B>
where
    B::Device: Sync,
{
    fn build(&self, config: &EvalConfig, length: usize) -> Result<Box<dyn Policy>> {
        let (model_config, _) = self.config_for(config.method, config.recall, length)?;
        let record = self
            .base
            .lock()
            .map_err(|_| Error::Input {
                what: "model",
                reason: "a worker panicked while holding the model".into(),
            })?
            .clone()
            .into_record();
        let model = model_config
            .init::<B>(&self.device)
            .load_record(record)
            .with_rope(model_config.rope.clone())?;
        let cache = self.cache(&model_config, config);
        Ok(Box::new(ModelPolicy::new(
            model,
            &cache,
            self.preprocess.clone(),
            &self.device,
        )?))
    }

    fn setup(&self, config: &EvalConfig, length: usize) -> Result<CellSetup> {
        let (model_config, factor) = self.config_for(config.method, config.recall, length)?;
        let cache = self.cache(&model_config, config);
        let layout = runtime::kv::KvLayout {
            dtype: config.dtype,
            ..model_config.kv_layout()
        };
        let capacity = usize::try_from(layout.tokens_for_budget(cache.budget_bytes))
            .unwrap_or(usize::MAX)
            .min(model_config.max_cached_tokens());
        let frames = capacity.saturating_sub(model_config.max_sink_tokens())
            / model_config.tokens_per_step();
        Ok(CellSetup {
            rope_factor: Some(factor),
            budget_bytes: Some(cache.budget_bytes),
            cache_frames: Some(frames.min(length)),
            tokens: Some(tokens_for_length(&model_config, length)),
            bank_steps: model_config.memory.as_ref().map(|m| m.bank_steps),
        })
    }
}

/// The result of one cell.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    /// The configuration.
    pub config: EvalConfig,
    /// Episode length, frame-steps.
    pub length: usize,
    /// Frame-steps before the go signal (`length - reach_steps`).
    pub history: usize,
    /// Cue depth, fraction of the history.
    pub depth: f64,
    /// How the policy was set up.
    pub setup: CellSetup,
    /// Episodes run.
    pub episodes: usize,
    /// Successful episodes.
    pub successes: usize,
    /// Episodes whose cue guess was right (`None`: the policy does not guess).
    pub cue_correct: Option<usize>,
}

impl Cell {
    /// Fraction of successful episodes.
    pub fn success_rate(&self) -> f64 {
        self.successes as f64 / self.episodes.max(1) as f64
    }

    /// Fraction of right cue guesses.
    pub fn cue_recall(&self) -> Option<f64> {
        self.cue_correct
            .map(|c| c as f64 / self.episodes.max(1) as f64)
    }
}

/// Where a sweep stands, for progress displays.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepProgress {
    /// Frame-steps run so far.
    pub steps_done: u64,
    /// Frame-steps of the whole sweep.
    pub steps_total: u64,
    /// Episodes finished.
    pub episodes_done: usize,
    /// Episodes of the whole sweep.
    pub episodes_total: usize,
    /// Successes so far.
    pub successes: usize,
}

/// One episode to run.
#[derive(Clone, Copy, Debug)]
struct Unit {
    config: usize,
    length: usize,
    depth: usize,
    episode: usize,
}

/// Runs the sweep: every configuration of `spec` × length × depth × episode, on `jobs`
/// threads (each builds its own policies; longest episodes first). Cells come back in the
/// order configuration, length, depth. The result does not depend on `jobs`.
///
/// # Errors
/// As [`SweepSpec::validate`] and [`Task::new`]; the first policy or episode error stops the
/// sweep and is returned.
pub fn run_sweep(
    spec: &SweepSpec,
    task_config: &TaskConfig,
    factory: &dyn PolicyFactory,
    jobs: usize,
    progress: &mut dyn FnMut(&SweepProgress),
) -> Result<Vec<Cell>> {
    spec.validate(task_config)?;
    let task = Task::new(task_config)?;
    let configs = spec.configs()?;
    let (n_len, n_depth) = (spec.lengths.len(), spec.depths.len());
    let mut cells = Vec::with_capacity(configs.len() * n_len * n_depth);
    for config in &configs {
        for &length in &spec.lengths {
            let setup = factory.setup(config, length)?;
            // Every (configuration, length) is built once before any episode runs, so one the
            // model rejects (a byte budget that cannot hold its memory window in a wider
            // format, say) fails now rather than after the other configurations' episodes.
            drop(factory.build(config, length)?);
            for &depth in &spec.depths {
                cells.push(Cell {
                    config: *config,
                    length,
                    history: length - task_config.reach_steps,
                    depth,
                    setup,
                    episodes: 0,
                    successes: 0,
                    cue_correct: None,
                });
            }
        }
    }
    let cell_index = |u: &Unit| (u.config * n_len + u.length) * n_depth + u.depth;
    let mut units = Vec::with_capacity(cells.len() * spec.episodes);
    for config in 0..configs.len() {
        for length in 0..n_len {
            for depth in 0..n_depth {
                for episode in 0..spec.episodes {
                    units.push(Unit {
                        config,
                        length,
                        depth,
                        episode,
                    });
                }
            }
        }
    }
    // Longest first (balances the threads); within a length, one configuration's units stay
    // together so a thread reuses its policy.
    units.sort_by_key(|u| {
        (
            std::cmp::Reverse(spec.lengths[u.length]),
            u.config,
            u.length,
        )
    });
    let steps_total: u64 = units.iter().map(|u| spec.lengths[u.length] as u64).sum();
    let mut state = SweepProgress {
        steps_done: 0,
        steps_total,
        episodes_done: 0,
        episodes_total: units.len(),
        successes: 0,
    };
    progress(&state);

    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<Result<(usize, Outcome)>>();
    let jobs = jobs.clamp(1, units.len().max(1));
    let worker = |tx: mpsc::Sender<Result<(usize, Outcome)>>| {
        let mut current: Option<((usize, usize), Box<dyn Policy>)> = None;
        while !stop.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(unit) = units.get(i) else { break };
            let result: Result<(usize, Outcome)> = (|| {
                let key = (unit.config, unit.length);
                let length = spec.lengths[unit.length];
                if current.as_ref().is_none_or(|(k, _)| *k != key) {
                    current = None; // drop the old policy (and its cache) first
                    current = Some((key, factory.build(&configs[unit.config], length)?));
                }
                let Some((_, policy)) = current.as_mut() else {
                    return Err(Error::Input {
                        what: "sweep",
                        reason: "no policy was built".into(),
                    });
                };
                let depth = spec.depths[unit.depth];
                let seed = episode_seed(spec.seed, length, depth, unit.episode);
                let history = length - task_config.reach_steps;
                let sim = Sim::needle_with_task(task.clone(), seed, depth, history)?;
                let outcome = run_episode(policy.as_mut(), sim, seed)?;
                Ok((cell_index(unit), outcome))
            })();
            let failed = result.is_err();
            if tx.send(result).is_err() || failed {
                stop.store(true, Ordering::Relaxed);
                break;
            }
        }
    };
    let worker = &worker;
    let mut first_error = None;
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let tx = tx.clone();
            scope.spawn(move || worker(tx));
        }
        drop(tx);
        for message in rx {
            match message {
                Ok((index, outcome)) => {
                    let cell = &mut cells[index];
                    cell.episodes += 1;
                    cell.successes += usize::from(outcome.success);
                    if let Some(hit) = outcome.cue_correct {
                        *cell.cue_correct.get_or_insert(0) += usize::from(hit);
                    }
                    state.steps_done += outcome.steps as u64;
                    state.episodes_done += 1;
                    state.successes += usize::from(outcome.success);
                    progress(&state);
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    if first_error.is_none() {
                        first_error = Some(e);
                    }
                }
            }
        }
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(cells)
}

/// Cells grouped by configuration (in first-seen order), for reports.
pub fn by_config(cells: &[Cell]) -> Vec<(EvalConfig, Vec<&Cell>)> {
    let mut groups: Vec<(EvalConfig, Vec<&Cell>)> = Vec::new();
    for cell in cells {
        match groups.iter_mut().find(|(c, _)| *c == cell.config) {
            Some((_, group)) => group.push(cell),
            None => groups.push((cell.config, vec![cell])),
        }
    }
    groups
}
