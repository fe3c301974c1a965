//! [`VlaConfig`]: the model's sizes, RoPE and default KV cache, loaded from `configs/model/*.toml`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kv::{KvCacheConfig, KvLayout};
use crate::rope::RopeConfig;

/// Byte vocabulary for instruction text plus one beginning-of-instruction token.
pub const INSTRUCTION_VOCAB: usize = 257;
/// The beginning-of-instruction token id (always the first sink token).
pub const BOS_TOKEN: usize = 256;

fn is_zero(v: &usize) -> bool {
    *v == 0
}

fn default_rms_norm_eps() -> f64 {
    1e-5
}

/// Sizes and settings of the streaming VLA model. Unknown keys are errors.
///
/// The context is: a beginning-of-instruction token and the instruction's bytes (the attention
/// sinks), then per frame-step `n_cameras · patches_per_camera` patch tokens and one proprio
/// token. `n_readout` readout tokens follow each step's tokens; they attend to everything
/// before them and are never cached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VlaConfig {
    /// Residual stream width.
    pub d_model: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (grouped-query attention); divides `n_heads`.
    pub n_kv_heads: usize,
    /// SwiGLU hidden width.
    pub ffn_dim: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Cameras in the rig (each gets a learned embedding).
    pub n_cameras: usize,
    /// Patch tokens per camera per frame-step.
    pub patches_per_camera: usize,
    /// Values per flattened patch (patch_h · patch_w · channels).
    pub patch_dim: usize,
    /// Length of the joint-state vector.
    pub proprio_dim: usize,
    /// Longest instruction in bytes.
    pub max_instruction_bytes: usize,
    /// Readout tokens per step.
    pub n_readout: usize,
    /// Actions per chunk.
    pub horizon: usize,
    /// Values per action.
    pub action_dim: usize,
    /// Classes of the optional cue-recall head (0: none). It reads the same readouts as the
    /// action head and names what the history holds (for the memory task: which pad was
    /// cued); training gives it an auxiliary cross-entropy loss and evaluations read it
    /// directly.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cue_classes: usize,
    /// Largest position span (query-key distance) the model is run at; defaults to
    /// `rope.max_position_embeddings`. Dynamic NTK only changes frequencies past
    /// `rope.max_position_embeddings`, so with `rope_type = "dynamic"` set this above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_length: Option<usize>,
    /// Rotary embedding and its scaling (HuggingFace keys; `rope.head_dim` = d_model / n_heads).
    pub rope: RopeConfig,
    /// Default KV cache for this model.
    pub kv_cache: KvCacheConfig,
    /// Bounded long-term memory (see [`MemoryConfig`]); none by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryConfig>,
    /// A classification action head (see [`ActionBins`]); none by default: the head regresses
    /// the action values directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_bins: Option<ActionBins>,
}

/// A classification action head: every action value is predicted as a distribution over
/// `bins` equal bins spanning `[low, high]` (values outside are clamped to the end bins), as
/// RT-2 and OpenVLA tokenize actions. The head outputs `horizon · action_dim · bins` logits;
/// a value is decoded as the softmax-weighted mean of the bin centres within
/// [`ActionBins::DECODE_RADIUS`] bins of the most likely bin. Why: a regression head trained
/// on the squared error answers a doubt between goals with the mean of their commands, a pose
/// between them; the most likely bin is one goal's (mode-seeking), and the local mean keeps a
/// precision finer than a bin. Training uses a cross-entropy on Gaussian-smoothed bin targets
/// (HL-Gauss, Farebrother et al. 2024, σ = 0.75 bin widths).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBins {
    /// Bins per action value.
    pub bins: usize,
    /// The first bin's lower edge.
    pub low: f32,
    /// The last bin's upper edge.
    pub high: f32,
}

impl ActionBins {
    /// Bins on each side of the most likely one that a decoded value averages over.
    pub const DECODE_RADIUS: usize = 3;
    /// The target distribution's standard deviation, in bin widths.
    pub const SIGMA_BINS: f32 = 0.75;

    /// Width of one bin.
    pub fn width(&self) -> f32 {
        (self.high - self.low) / self.bins as f32
    }

    /// Centre of bin `i`.
    pub fn centre(&self, i: usize) -> f32 {
        self.low + (i as f32 + 0.5) * self.width()
    }

    /// Decodes one value's `bins` logits (see the type's docs). A non-finite logit gives a
    /// non-finite value (the step's finiteness check then refuses the output).
    pub fn decode(&self, logits: &[f32]) -> f32 {
        if logits.iter().any(|z| !z.is_finite()) {
            return f32::NAN;
        }
        let best = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap_or(0);
        let lo = best.saturating_sub(Self::DECODE_RADIUS);
        let hi = (best + Self::DECODE_RADIUS + 1).min(logits.len());
        let (mut weight, mut sum) = (0f32, 0f32);
        for (i, z) in logits.iter().enumerate().take(hi).skip(lo) {
            let w = (z - logits[best]).exp();
            weight += w;
            sum += w * self.centre(i);
        }
        sum / weight
    }

    fn validate(&self) -> Result<()> {
        if self.bins < 2 {
            return Err(Error::config("action_bins.bins", "must be ≥ 2"));
        }
        if !(self.low.is_finite() && self.high.is_finite() && self.low < self.high) {
            return Err(Error::config(
                "action_bins",
                format!(
                    "low ({}) must be below high ({}), both finite",
                    self.low, self.high
                ),
            ));
        }
        Ok(())
    }
}

/// The model's bounded long-term memory: every frame-step ends with one learned *memory
/// token*; its keys and values go to a memory bank (not to the KV cache) of `bank_steps`
/// memory tokens (the last ones, or those read most: [`BankEviction`]), which every later
/// token attends to *without* RoPE
/// (content only, so a memory reads the same at any age). The KV cache keeps at most
/// `window_steps` frame-steps (fewer if its byte budget says so), and the model is trained
/// with exactly that window, positions included: what it sees in training is what the
/// rolling cache shows it at run time, at any episode length. What a memory token holds is
/// learned from data like any other activation.
///
/// Bytes: `bank_steps` tokens at the KV cache's bytes per token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Memory tokens kept (one per frame-step); which leaves a full bank: `bank_eviction`.
    pub bank_steps: usize,
    /// Frame-steps of local context (the KV cache's window, in training and at run time).
    pub window_steps: usize,
    /// Sharper bank reads for longer banks: a token that sees `n` memory tokens has its bank
    /// scores multiplied by `max(1, ln n / ln bank_log_scale)` (the log-length attention
    /// scaling of Chiang & Cholak 2022 and Su's "entropy-invariant" softmax, here on the bank
    /// alone), so a bank longer than any seen in training keeps the softmax's entropy near its
    /// trained level instead of spreading it over more entries. Set it to the longest bank of
    /// the training episodes; `None` (the default): no scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_log_scale: Option<usize>,
    /// A sparse bank read at run time: each query keeps only its `k` highest-scoring memory
    /// tokens (ties at the k-th score kept) in the one softmax, the rest count as masked (the
    /// top-k memory read of Wu et al. 2022, Memorizing Transformers), so that a bank longer
    /// than any trained adds no mass of low-scoring entries to the softmax. A setting of the
    /// streaming host path: the training forward reads the whole bank and refuses it. `None`
    /// (the default): every memory token is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_top_k: Option<usize>,
    /// Which memory token leaves a full bank at run time (see [`BankEviction`]). Training
    /// episodes no longer than the bank never evict, so the training forward is the same
    /// under either.
    #[serde(default, skip_serializing_if = "BankEviction::is_oldest")]
    pub bank_eviction: BankEviction,
    /// With [`BankEviction::Read`]: the newest memory tokens kept whatever their reads (they
    /// have had few steps to be read); `None`: a tenth of the bank (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_recent_steps: Option<usize>,
}

/// Run-time settings of a memory bank that replace a model's own (a node config's
/// `[memory]`): they shape no weight, so a checkpoint runs under any of them. Absent keys keep
/// the model's value.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryOverride {
    /// [`MemoryConfig::bank_steps`]: memory tokens kept (the bank's bytes scale with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_steps: Option<usize>,
    /// [`MemoryConfig::bank_eviction`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_eviction: Option<BankEviction>,
    /// [`MemoryConfig::bank_recent_steps`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bank_recent_steps: Option<usize>,
}

impl MemoryOverride {
    /// `memory` with these settings.
    pub fn apply(&self, memory: &mut MemoryConfig) {
        if let Some(steps) = self.bank_steps {
            memory.bank_steps = steps;
        }
        if let Some(eviction) = self.bank_eviction {
            memory.bank_eviction = eviction;
        }
        if self.bank_recent_steps.is_some() {
            memory.bank_recent_steps = self.bank_recent_steps;
        }
    }
}

/// Which memory token a full bank evicts to make room for the step's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BankEviction {
    /// The oldest (a FIFO of the last `bank_steps` frame-steps).
    #[default]
    Oldest,
    /// The least read: the one, among all but the newest `bank_recent_steps`, with the lowest
    /// mean attention the step's readout queries gave it (softmax over the bank, averaged
    /// over layers, heads and readouts) since it was stored. What the model reads is learned,
    /// so what the bank keeps is too (the heavy-hitter eviction of H2O, Zhang et al. 2023,
    /// and Scissorhands, Liu et al. 2023, here on the memory bank); an old memory the policy
    /// keeps reading outlives the bank's length in frame-steps.
    Read,
}

impl BankEviction {
    fn is_oldest(&self) -> bool {
        *self == Self::Oldest
    }
}

impl MemoryConfig {
    /// The newest memory tokens that [`BankEviction::Read`] never evicts.
    pub fn recent_steps(&self) -> usize {
        self.bank_recent_steps
            .unwrap_or(self.bank_steps / 10)
            .clamp(1, self.bank_steps)
    }

    /// The factor on the bank scores of a token that sees `visible` memory tokens.
    pub fn bank_score_factor(&self, visible: usize) -> f32 {
        match self.bank_log_scale {
            Some(from) if visible > from && from >= 2 => {
                ((visible as f64).ln() / (from as f64).ln()) as f32
            }
            _ => 1.0,
        }
    }
}

/// The keys of [`VlaConfig`] that are run-time settings: they do not shape the weights, so a
/// checkpoint loads under other values of them ([`VlaConfig::same_architecture`] ignores the
/// same fields).
pub const RUN_TIME_KEYS: [&str; 3] = ["rope", "kv_cache", "context_length"];

impl VlaConfig {
    /// Whether a model of `other` has the weights of a model of `self`: every key equal but
    /// the [`RUN_TIME_KEYS`] (RoPE, context length, default cache) and the memory bank's
    /// run-time settings (all of `[memory]` but `window_steps`: the bank's length and how it
    /// is read and evicted). No copies: a stream checks
    /// it at every step.
    pub fn same_architecture(&self, other: &Self) -> bool {
        // Destructured without `..`: a new key must be sorted into architecture or run time.
        let Self {
            d_model,
            n_layers,
            n_heads,
            n_kv_heads,
            ffn_dim,
            rms_norm_eps,
            n_cameras,
            patches_per_camera,
            patch_dim,
            proprio_dim,
            max_instruction_bytes,
            n_readout,
            horizon,
            action_dim,
            cue_classes,
            context_length: _,
            rope: _,
            kv_cache: _,
            memory,
            action_bins,
        } = self;
        *d_model == other.d_model
            && *n_layers == other.n_layers
            && *n_heads == other.n_heads
            && *n_kv_heads == other.n_kv_heads
            && *ffn_dim == other.ffn_dim
            && *rms_norm_eps == other.rms_norm_eps
            && *n_cameras == other.n_cameras
            && *patches_per_camera == other.patches_per_camera
            && *patch_dim == other.patch_dim
            && *proprio_dim == other.proprio_dim
            && *max_instruction_bytes == other.max_instruction_bytes
            && *n_readout == other.n_readout
            && *horizon == other.horizon
            && *action_dim == other.action_dim
            && *cue_classes == other.cue_classes
            && memory.as_ref().map(|m| m.window_steps)
                == other.memory.as_ref().map(|m| m.window_steps)
            && *action_bins == other.action_bins
    }

    /// This config with the memory bank's run-time settings replaced by `settings`.
    ///
    /// # Errors
    /// [`Error::Config`] for a config without a memory, or settings it rejects.
    pub fn with_memory_settings(&self, settings: &MemoryOverride) -> Result<Self> {
        let mut config = self.clone();
        let Some(memory) = config.memory.as_mut() else {
            return Err(Error::config(
                "memory",
                "memory bank settings for a model without a memory bank",
            ));
        };
        settings.apply(memory);
        config.validate()?;
        Ok(config)
    }

    /// Names the first architecture key whose value differs (as `key: a vs b`), or `None`
    /// when [`same_architecture`](Self::same_architecture) holds.
    pub fn architecture_difference(&self, other: &Self) -> Option<(String, String, String)> {
        if self.same_architecture(other) {
            return None;
        }
        // The bank's run-time settings are not architecture: compare `other` with ours.
        let mut other = other.clone();
        if let (Some(ours), Some(theirs)) = (&self.memory, &mut other.memory) {
            *theirs = MemoryConfig {
                window_steps: theirs.window_steps,
                ..ours.clone()
            };
        }
        let (a, b) = (serde_json::to_value(self), serde_json::to_value(&other));
        let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (a, b) else {
            return Some(("config".into(), "?".into(), "?".into()));
        };
        let show =
            |v: Option<&serde_json::Value>| v.map_or("nothing".to_string(), ToString::to_string);
        a.keys()
            .chain(b.keys())
            .filter(|k| !RUN_TIME_KEYS.contains(&k.as_str()))
            .find(|k| a.get(*k) != b.get(*k))
            .map(|k| (k.clone(), show(a.get(k)), show(b.get(k))))
            .or_else(|| Some(("config".into(), "?".into(), "?".into())))
    }

    /// Parses and validates a TOML config.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first bad or unknown key.
    pub fn from_toml(text: &str) -> Result<Self> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| Error::config("<toml>", e.message().to_string()))?;
        let config: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            Error::config(path, inner.message().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads and validates a TOML config file.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read, [`Error::Config`] for bad contents.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml(&text)
    }

    /// Checks the sizes fit together.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first offending key.
    pub fn validate(&self) -> Result<()> {
        for (key, v) in [
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.n_kv_heads),
            ("ffn_dim", self.ffn_dim),
            ("n_cameras", self.n_cameras),
            ("patches_per_camera", self.patches_per_camera),
            ("patch_dim", self.patch_dim),
            ("proprio_dim", self.proprio_dim),
            ("n_readout", self.n_readout),
            ("horizon", self.horizon),
            ("action_dim", self.action_dim),
        ] {
            if v == 0 {
                return Err(Error::config(key, "must be ≥ 1"));
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(Error::config(
                "n_heads",
                format!("must divide d_model ({})", self.d_model),
            ));
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(Error::config(
                "n_kv_heads",
                format!("must divide n_heads ({})", self.n_heads),
            ));
        }
        if self.rope.head_dim != self.head_dim() {
            return Err(Error::config(
                "rope.head_dim",
                format!(
                    "must equal d_model / n_heads = {}, got {}",
                    self.head_dim(),
                    self.rope.head_dim
                ),
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(Error::config(
                "rms_norm_eps",
                "must be a positive finite number",
            ));
        }
        if self.context_length == Some(0) {
            return Err(Error::config("context_length", "must be ≥ 1"));
        }
        self.kv_layout().validate().map_err(|e| match e {
            Error::Config { reason, .. } => Error::config(
                "kv_cache.dtype",
                format!("{reason} (head_dim = d_model / n_heads)"),
            ),
            other => other,
        })?;
        let step_values = self
            .n_cameras
            .checked_mul(self.patches_per_camera)
            .and_then(|n| n.checked_mul(self.patch_dim));
        if step_values.is_none() || self.context_length() > 1 << 40 {
            return Err(Error::config(
                "patches_per_camera",
                "the step or context size overflows",
            ));
        }
        if let Some(b) = &self.action_bins {
            b.validate()?;
        }
        if let Some(m) = &self.memory {
            if m.bank_steps == 0 {
                return Err(Error::config("memory.bank_steps", "must be ≥ 1"));
            }
            if m.window_steps == 0 {
                return Err(Error::config("memory.window_steps", "must be ≥ 1"));
            }
            if m.bank_log_scale.is_some_and(|from| from < 2) {
                return Err(Error::config("memory.bank_log_scale", "must be ≥ 2"));
            }
            if m.bank_top_k == Some(0) {
                return Err(Error::config("memory.bank_top_k", "must be ≥ 1"));
            }
            if m.bank_recent_steps
                .is_some_and(|r| r == 0 || r >= m.bank_steps)
            {
                return Err(Error::config(
                    "memory.bank_recent_steps",
                    format!("must be in 1..{} (below memory.bank_steps)", m.bank_steps),
                ));
            }
            let span = self.max_sink_tokens() + m.window_steps * self.tokens_per_step() + 1;
            if span + self.n_readout > self.context_length() {
                return Err(Error::config(
                    "memory.window_steps",
                    format!(
                        "{} frame-steps of {} tokens behind {} sinks exceed the context length {}",
                        m.window_steps,
                        self.tokens_per_step(),
                        self.max_sink_tokens(),
                        self.context_length()
                    ),
                ));
            }
        }
        let needed = self.max_sink_tokens() + self.tokens_per_step() + self.n_readout;
        if needed > self.context_length() {
            return Err(Error::config(
                "context_length",
                format!(
                    "{} tokens cannot hold the instruction ({}), one frame-step ({}) and the readouts ({})",
                    self.context_length(),
                    self.max_sink_tokens(),
                    self.tokens_per_step(),
                    self.n_readout
                ),
            ));
        }
        Ok(())
    }

    /// Dimension of one attention head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Tokens one frame-step adds to the context (patches of every camera + one proprio token).
    pub fn tokens_per_step(&self) -> usize {
        self.n_cameras * self.patches_per_camera + 1
    }

    /// Tokens a step runs through the model: its frame tokens, the memory token (with a
    /// memory) and the readouts. Only the frame tokens are cached.
    pub fn step_rows(&self) -> usize {
        self.tokens_per_step() + usize::from(self.memory.is_some()) + self.n_readout
    }

    /// Tokens of one training sequence of `steps` frame-steps: the padded instruction, then
    /// every step's [`step_rows`](Self::step_rows).
    pub fn train_sequence_len(&self, steps: usize) -> usize {
        self.max_sink_tokens() + steps * self.step_rows()
    }

    /// Bytes of the memory bank (0 without a memory): `bank_steps` tokens in `dtype`.
    pub fn memory_bytes(&self, dtype: crate::kv::KvDtype) -> u64 {
        self.memory.as_ref().map_or(0, |m| {
            KvLayout {
                dtype,
                ..self.kv_layout()
            }
            .total_bytes(m.bank_steps as u64)
        })
    }

    /// Most sink tokens: the beginning-of-instruction token plus the longest instruction.
    pub fn max_sink_tokens(&self) -> usize {
        1 + self.max_instruction_bytes
    }

    /// Largest position span.
    pub fn context_length(&self) -> usize {
        self.context_length
            .unwrap_or(self.rope.max_position_embeddings)
    }

    /// Most tokens the KV cache may hold: the context less one step's readouts (queries sit
    /// after the cached tokens, and their distance to the first sink must stay within the
    /// context length).
    pub fn max_cached_tokens(&self) -> usize {
        match &self.memory {
            // The step's memory token sits after its frame tokens, before the readouts.
            Some(m) => self
                .context_length()
                .saturating_sub(self.n_readout + 1)
                .min(self.max_sink_tokens() + m.window_steps * self.tokens_per_step()),
            None => self.context_length().saturating_sub(self.n_readout),
        }
    }

    /// The KV layout of this model with the configured cache dtype.
    pub fn kv_layout(&self) -> KvLayout {
        KvLayout {
            layers: self.n_layers,
            kv_heads: self.n_kv_heads,
            head_dim: self.head_dim(),
            dtype: self.kv_cache.dtype,
        }
    }

    /// Values one action chunk holds.
    pub fn action_values(&self) -> usize {
        self.horizon * self.action_dim
    }

    /// Outputs of the action head: the chunk's values, or their bins' logits with
    /// [`action_bins`](Self::action_bins).
    pub fn action_head_outputs(&self) -> usize {
        self.action_values() * self.action_bins.as_ref().map_or(1, |b| b.bins)
    }

    /// The action chunk's values from the action head's outputs (one chunk's worth).
    pub fn decode_actions(&self, outputs: &[f32]) -> Vec<f32> {
        match &self.action_bins {
            None => outputs.to_vec(),
            Some(b) => outputs.chunks(b.bins).map(|l| b.decode(l)).collect(),
        }
    }
}
