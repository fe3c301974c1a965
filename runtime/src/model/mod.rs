//! The streaming VLA model: tokenizer, Llama-style backbone and action head.
//!
//! - [`config`]: [`VlaConfig`], the sizes (`configs/model/*.toml`); which of its keys shape
//!   the weights ([`VlaConfig::same_architecture`]) and which are run-time settings.
//! - [`Vla`] (here): the burn module, its embeddings and heads, [`Vla::forward_full`] (a whole
//!   context at once: the reference incremental decoding must match).
//! - `layers`: the backbone blocks: RMSNorm → grouped-query attention with RoPE
//!   (`crate::rope`, any scaling; the attention factor folded into q and k through cos/sin, as
//!   HuggingFace does) → RMSNorm → SwiGLU MLP, with residuals; a final RMSNorm. Names and
//!   shapes follow HuggingFace `LlamaModel` so the backbone exports to it (`crate::checkpoint`).
//! - `stream`: [`Stream`], one episode's rolling context, stepped by a [`StepEngine`] chosen
//!   when the stream is made: `host` (the CPU engine) or `mirror` (the tensor engine and its
//!   device copy of the cache). [`Vla::start_episode`] stores the instruction as attention
//!   sinks; [`Vla::forward_step`] appends one frame-step and returns an action chunk.
//! - `train`, `memory`, `ring_train`: the training forwards (one device, with a memory bank,
//!   sharded over devices).

pub mod config;
mod host;
mod layers;
mod memory;
mod mirror;
mod rope_table;
mod stream;
mod train;

use burn::module::{Module, Param};
use burn::nn::{Linear, RmsNorm, RmsNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

pub use config::{
    ActionBins, BOS_TOKEN, BankEviction, INSTRUCTION_VOCAB, MemoryConfig, MemoryOverride, VlaConfig,
};
pub use layers::{Attention, Block, Mlp};
pub(crate) use layers::{INIT_STD, causal_bias, linear, param};
pub use stream::{MemoryEntry, StepEngine, Stream};
pub(crate) use train::{PAD_GROUP, group_ids};
pub use train::{TrainBatch, TrainOutput};

use crate::error::{Error, Result};
use crate::host::float_tensor;
use crate::rope::RotaryTable;

/// The streaming vision-language-action model.
#[derive(Module, Debug)]
pub struct Vla<B: Backend> {
    /// Linear patch embedding `[patch_dim, d_model]`.
    pub patch_embed: Linear<B>,
    /// Learned camera embedding `[n_cameras, d_model]`.
    pub camera_embed: Param<Tensor<B, 2>>,
    /// Learned patch-index embedding within a camera `[patches_per_camera, d_model]`.
    pub patch_pos_embed: Param<Tensor<B, 2>>,
    /// Replaces a missing camera's patch content `[d_model]`.
    pub missing_embed: Param<Tensor<B, 1>>,
    /// Joint vector → one token `[proprio_dim, d_model]` (with bias).
    pub proprio_embed: Linear<B>,
    /// Byte-level instruction embedding `[257, d_model]` (HuggingFace `embed_tokens`).
    pub instruction_embed: Param<Tensor<B, 2>>,
    /// Learned readout tokens `[n_readout, d_model]`.
    pub readout: Param<Tensor<B, 2>>,
    /// The learned memory token `[d_model]` that ends every frame-step, when the model has a
    /// memory (`config.memory`).
    pub memory_token: Option<Param<Tensor<B, 1>>>,
    /// Backbone blocks.
    pub layers: Vec<Block<B>>,
    /// Final norm (HuggingFace `model.norm`).
    pub norm: RmsNorm<B>,
    /// Readouts (flattened) → action chunk `[n_readout · d_model, horizon · action_dim]`.
    pub action_head: Linear<B>,
    /// Readouts (flattened) → cue-class logits `[n_readout · d_model, cue_classes]`, when
    /// `cue_classes > 0`.
    pub cue_head: Option<Linear<B>>,
    #[module(skip)]
    config: VlaConfig,
}

/// One frame-step of observations, host-side.
#[derive(Clone, Copy, Debug)]
pub struct StepInput<'a> {
    /// `[n_cameras, patches_per_camera, patch_dim]`, row-major.
    pub patches: &'a [f32],
    /// `[n_cameras]`: false marks a camera missing at this step (its patches are ignored).
    pub camera_present: &'a [bool],
    /// `[proprio_dim]`.
    pub proprio: &'a [f32],
}

/// An action chunk: `horizon` actions of `action_dim` values, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct ActionChunk {
    /// Actions per chunk.
    pub horizon: usize,
    /// Values per action.
    pub action_dim: usize,
    /// `[horizon, action_dim]`.
    pub values: Vec<f32>,
}

/// What one step returns.
#[derive(Clone, Debug)]
pub struct StepOutput<B: Backend> {
    /// The action chunk.
    pub action: ActionChunk,
    /// Final-norm hidden states of the readout tokens `[1, n_readout, d_model]`.
    pub readout: Tensor<B, 3>,
    /// Cue-class logits `[cue_classes]` from the cue-recall head, if the model has one.
    pub cue_logits: Option<Vec<f32>>,
}

impl VlaConfig {
    /// Builds a randomly initialized model (normal, std 0.02; burn's backend seed decides
    /// the values).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Vla<B> {
        self.init_with_std(INIT_STD, device)
    }

    /// [`init`](Self::init) with the backend's generator seeded to `seed` first, under a
    /// process-wide lock: burn draws every initialization from one global generator per
    /// backend, so models initialized from several threads at once (parallel tests, a sweep)
    /// would otherwise take each other's numbers. The weights are a function of `seed` alone.
    pub fn init_seeded<B: Backend>(&self, seed: u64, device: &B::Device) -> Vla<B> {
        static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = INIT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        B::seed(device, seed);
        self.init::<B>(device)
    }

    /// Like [`init`](Self::init) with another standard deviation for every weight (norm
    /// weights stay 1).
    ///
    /// # Panics
    /// If `std` is negative or not finite (burn's normal sampler rejects it).
    pub fn init_with_std<B: Backend>(&self, std: f64, device: &B::Device) -> Vla<B> {
        let (d, hd) = (self.d_model, self.head_dim());
        let norm = || {
            RmsNormConfig::new(d)
                .with_epsilon(self.rms_norm_eps)
                .init(device)
        };
        let layers = (0..self.n_layers)
            .map(|_| Block {
                input_layernorm: norm(),
                self_attn: Attention {
                    q_proj: linear(d, self.n_heads * hd, false, std, device),
                    k_proj: linear(d, self.n_kv_heads * hd, false, std, device),
                    v_proj: linear(d, self.n_kv_heads * hd, false, std, device),
                    o_proj: linear(self.n_heads * hd, d, false, std, device),
                    n_heads: self.n_heads,
                    n_kv_heads: self.n_kv_heads,
                    head_dim: hd,
                },
                post_attention_layernorm: norm(),
                mlp: Mlp {
                    gate_proj: linear(d, self.ffn_dim, false, std, device),
                    up_proj: linear(d, self.ffn_dim, false, std, device),
                    down_proj: linear(self.ffn_dim, d, false, std, device),
                },
            })
            .collect();
        let model = Vla {
            patch_embed: linear(self.patch_dim, d, true, std, device),
            camera_embed: param([self.n_cameras, d], std, device),
            patch_pos_embed: param([self.patches_per_camera, d], std, device),
            missing_embed: param([d], std, device),
            proprio_embed: linear(self.proprio_dim, d, true, std, device),
            instruction_embed: param([INSTRUCTION_VOCAB, d], std, device),
            readout: param([self.n_readout, d], std, device),
            memory_token: self.memory.as_ref().map(|_| param([d], std, device)),
            layers,
            norm: norm(),
            action_head: self.action_head_layer(std, device),
            cue_head: (self.cue_classes > 0)
                .then(|| linear(self.n_readout * d, self.cue_classes, true, std, device)),
            config: self.clone(),
        };
        // burn initializes Linear weights lazily, and a clone of an uninitialized parameter
        // draws its own values: materialize every parameter now so that clones (saving,
        // exporting) see the same weights as the model.
        let skeleton = model.clone();
        skeleton.load_record(model.into_record())
    }
}

impl VlaConfig {
    /// A fresh action head (`[n_readout · d_model] → action_head_outputs`, with bias, weights
    /// N(0, std)), not yet materialized (burn draws a Linear's weights lazily).
    fn action_head_layer<B: Backend>(&self, std: f64, device: &B::Device) -> Linear<B> {
        linear(
            self.n_readout * self.d_model,
            self.action_head_outputs(),
            true,
            std,
            device,
        )
    }
}

impl<B: Backend> Vla<B> {
    /// The model's configuration.
    pub fn config(&self) -> &VlaConfig {
        &self.config
    }

    /// Token ids of an instruction: the beginning token then its bytes.
    ///
    /// # Errors
    /// [`Error::Shape`] if the instruction is longer than `max_instruction_bytes`.
    pub fn instruction_ids(&self, instruction: &str) -> Result<Vec<i64>> {
        let bytes = instruction.as_bytes();
        if bytes.len() > self.config.max_instruction_bytes {
            return Err(Error::shape(
                "instruction",
                format!(
                    "{} bytes, the model takes at most {} (max_instruction_bytes)",
                    bytes.len(),
                    self.config.max_instruction_bytes
                ),
            ));
        }
        Ok(std::iter::once(BOS_TOKEN as i64)
            .chain(bytes.iter().map(|b| i64::from(*b)))
            .collect())
    }

    /// Instruction token embeddings.
    ///
    /// # Shapes
    /// - output: `[1, 1 + bytes, d_model]`
    fn embed_instruction(&self, ids: &[i64], device: &B::Device) -> Tensor<B, 3> {
        let ids =
            Tensor::<B, 1, Int>::from_data(TensorData::new(ids.to_vec(), [ids.len()]), device);
        self.instruction_embed.val().select(0, ids).unsqueeze::<3>()
    }

    /// Checks one step's host inputs against the config.
    fn check_step(&self, step: &StepInput<'_>) -> Result<()> {
        let c = &self.config;
        let want = c.n_cameras * c.patches_per_camera * c.patch_dim;
        if step.patches.len() != want {
            return Err(Error::shape(
                "step patches",
                format!(
                    "expected [n_cameras {}, patches_per_camera {}, patch_dim {}] = {want} values, got {}",
                    c.n_cameras,
                    c.patches_per_camera,
                    c.patch_dim,
                    step.patches.len()
                ),
            ));
        }
        if step.camera_present.len() != c.n_cameras {
            return Err(Error::shape(
                "step camera mask",
                format!(
                    "expected {} cameras, got {}",
                    c.n_cameras,
                    step.camera_present.len()
                ),
            ));
        }
        if step.proprio.len() != c.proprio_dim {
            return Err(Error::shape(
                "step proprio",
                format!(
                    "expected {} values, got {}",
                    c.proprio_dim,
                    step.proprio.len()
                ),
            ));
        }
        // Missing cameras' patches are ignored, so only present ones must be finite.
        let per_camera = c.patches_per_camera * c.patch_dim;
        for (cam, present) in step.camera_present.iter().enumerate() {
            if *present {
                Error::check_finite(
                    "step patches",
                    &step.patches[cam * per_camera..(cam + 1) * per_camera],
                )?;
            }
        }
        Error::check_finite("step proprio", step.proprio)
    }

    /// Embeds frame-steps into tokens: per step, `n_cameras · patches_per_camera` patch tokens
    /// (patch embedding, or the missing embedding, plus camera and patch-index embeddings) then
    /// one proprio token.
    ///
    /// # Shapes
    /// - `patches`: `[batch, n_cameras · patches_per_camera, patch_dim]`
    /// - `present`: `[batch, n_cameras · patches_per_camera, 1]`, 1.0 present / 0.0 missing
    /// - `proprio`: `[batch, proprio_dim]`
    /// - output: `[batch, tokens_per_step, d_model]`
    pub fn embed_step(
        &self,
        patches: Tensor<B, 3>,
        present: Tensor<B, 3>,
        proprio: Tensor<B, 2>,
    ) -> Tensor<B, 3> {
        let c = &self.config;
        let [batch, n_tokens, _] = patches.dims();
        let d = c.d_model;
        let content = self.patch_embed.forward(patches) * present.clone()
            + self.missing_embed.val().reshape([1, 1, d]) * (present.neg() + 1.0);
        let camera = self
            .camera_embed
            .val()
            .reshape([c.n_cameras, 1, d])
            .repeat_dim(1, c.patches_per_camera)
            .reshape([1, n_tokens, d]);
        let patch_pos = self
            .patch_pos_embed
            .val()
            .repeat_dim(0, c.n_cameras)
            .reshape([1, n_tokens, d]);
        let patch_tokens = content + camera + patch_pos;
        let proprio_token = self.proprio_embed.forward(proprio).reshape([batch, 1, d]);
        Tensor::cat(vec![patch_tokens, proprio_token], 1)
    }

    /// Host step inputs → step tokens `[1, tokens_per_step, d_model]`.
    fn step_tokens(&self, step: &StepInput<'_>, device: &B::Device) -> Tensor<B, 3> {
        let c = &self.config;
        let n = c.n_cameras * c.patches_per_camera;
        // Missing cameras' patches are zeroed (they may hold anything, NaN included); the
        // missing embedding replaces their content.
        let per_camera = c.patches_per_camera * c.patch_dim;
        let mut values = step.patches.to_vec();
        for (cam, present) in step.camera_present.iter().enumerate() {
            if !present {
                values[cam * per_camera..(cam + 1) * per_camera].fill(0.0);
            }
        }
        let patches = float_tensor(values, [1, n, c.patch_dim], device);
        let mask: Vec<f32> = step
            .camera_present
            .iter()
            .flat_map(|p| std::iter::repeat_n(if *p { 1.0 } else { 0.0 }, c.patches_per_camera))
            .collect();
        let present = float_tensor(mask, [1, n, 1], device);
        let proprio = float_tensor(step.proprio.to_vec(), [1, c.proprio_dim], device);
        self.embed_step(patches, present, proprio)
    }

    /// The readout tokens `[batch, n_readout, d_model]`.
    fn readout_tokens(&self, batch: usize) -> Tensor<B, 3> {
        let c = &self.config;
        self.readout
            .val()
            .reshape([1, c.n_readout, c.d_model])
            .repeat_dim(0, batch)
    }

    /// Readout hidden states → the action head's outputs (the chunk's values, or their bins'
    /// logits: [`VlaConfig::action_head_outputs`]).
    ///
    /// # Shapes
    /// - `readout`: `[batch, n_readout, d_model]` (after the final norm)
    /// - output: `[batch, action_head_outputs]`
    pub fn action_head(&self, readout: Tensor<B, 3>) -> Tensor<B, 2> {
        let [batch, r, d] = readout.dims();
        self.action_head.forward(readout.reshape([batch, r * d]))
    }

    /// Readout hidden states `[1, n_readout, d_model]` → the step's outputs.
    fn step_output(&self, readout: Tensor<B, 3>) -> Result<StepOutput<B>> {
        let cue_logits = match &self.cue_head {
            Some(head) => {
                let [batch, r, d] = readout.dims();
                let logits = crate::host::host_values(
                    head.forward(readout.clone().reshape([batch, r * d])),
                    "cue head",
                )?;
                Error::check_finite("model output (cue logits)", &logits)?;
                Some(logits)
            }
            None => None,
        };
        Ok(StepOutput {
            action: self.action_chunk(readout.clone())?,
            readout,
            cue_logits,
        })
    }

    fn action_chunk(&self, readout: Tensor<B, 3>) -> Result<ActionChunk> {
        let c = &self.config;
        let outputs = crate::host::host_values(self.action_head(readout), "action head")?;
        let values = c.decode_actions(&outputs);
        Error::check_finite("model output (action chunk)", &values)?;
        Ok(ActionChunk {
            horizon: c.horizon,
            action_dim: c.action_dim,
            values,
        })
    }

    /// Backbone over a whole sequence with explicit positions and attention bias (training
    /// and reference path).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`; `table`: one row or `batch` rows of `seq` positions;
    ///   `bias`: `[1 or batch, seq, seq]` additive (0 or −∞)
    /// - output: `[batch, seq, d_model]` after the final norm
    ///
    /// # Errors
    /// [`Error::Shape`] if the table does not match `x`.
    pub fn backbone(
        &self,
        x: Tensor<B, 3>,
        table: &RotaryTable<B>,
        bias: Tensor<B, 3>,
    ) -> Result<Tensor<B, 3>> {
        let mut x = x;
        for block in &self.layers {
            x = block.forward(x, table, bias.clone())?;
        }
        Ok(self.norm.forward(x))
    }

    /// The same weights with a memory added (a model trained without one, as the start of a
    /// memory model's training): the memory token is drawn like a fresh model's.
    ///
    /// # Errors
    /// [`Error::Config`] if the model already has a memory or the config does not validate.
    pub fn with_memory(mut self, memory: MemoryConfig, device: &B::Device) -> Result<Self> {
        if self.config.memory.is_some() {
            return Err(Error::config("memory", "the model already has a memory"));
        }
        let mut config = self.config.clone();
        config.memory = Some(memory);
        config.validate()?;
        self.memory_token = Some(param([config.d_model], INIT_STD, device));
        self.config = config;
        Ok(self)
    }

    /// The same backbone with a fresh action head: a classification head over `bins`, or a
    /// regression head with `None` (one kind's weights do not carry over to the other).
    ///
    /// # Errors
    /// [`Error::Config`] if the model already has that head or the bins are invalid.
    pub fn with_action_head(
        mut self,
        bins: Option<ActionBins>,
        device: &B::Device,
    ) -> Result<Self> {
        if self.config.action_bins == bins {
            return Err(Error::config(
                "action_bins",
                "the model already has this action head",
            ));
        }
        let mut config = self.config.clone();
        config.action_bins = bins;
        config.validate()?;
        // Materialized (see `VlaConfig::init`): a clone of the model keeps the same head.
        let head = config.action_head_layer(INIT_STD, device);
        self.action_head = head.clone().load_record(head.into_record());
        self.config = config;
        Ok(self)
    }

    /// The same weights with another RoPE (e.g. a context-extension preset for longer
    /// histories than the model was trained on).
    ///
    /// # Errors
    /// [`Error::Config`] if the RoPE does not fit the model (head size, context).
    pub fn with_rope(mut self, rope: crate::rope::RopeConfig) -> Result<Self> {
        let mut config = self.config.clone();
        config.rope = rope;
        config.validate()?;
        self.config = config;
        Ok(self)
    }

    /// The same weights with the memory bank's run-time settings replaced by `settings`.
    ///
    /// # Errors
    /// [`Error::Config`] for a model without a memory, or settings the config rejects.
    pub fn with_memory_settings(mut self, settings: &MemoryOverride) -> Result<Self> {
        self.config = self.config.with_memory_settings(settings)?;
        Ok(self)
    }

    /// Recomputes the action for the last of `steps` from scratch: one forward over
    /// `[instruction, steps…, readouts]` with a causal mask and positions `0..n`. This is
    /// what [`forward_step`](Self::forward_step) must equal when nothing was evicted (or when
    /// `steps` are exactly the retained ones).
    ///
    /// # Errors
    /// As [`forward_step`](Self::forward_step); [`Error::Shape`] for no steps.
    pub fn forward_full(
        &self,
        instruction: &str,
        steps: &[StepInput<'_>],
        device: &B::Device,
    ) -> Result<StepOutput<B>> {
        if steps.is_empty() {
            return Err(Error::shape("forward_full", "no frame-steps"));
        }
        if self.config.memory.is_some() {
            return Err(Error::config(
                "memory",
                "forward_full recomputes a context without the memory bank",
            ));
        }
        let ids = self.instruction_ids(instruction)?;
        let mut parts = vec![self.embed_instruction(&ids, device)];
        for step in steps {
            self.check_step(step)?;
            parts.push(self.step_tokens(step, device));
        }
        parts.push(self.readout_tokens(1));
        let x = Tensor::cat(parts, 1);
        let [_, n, d] = x.dims();
        let positions: Vec<i64> = (0..n as i64).collect();
        let table = self
            .config
            .rope
            .frequencies(Some(n))
            .table::<B>(&positions, device)?;
        let hidden = self.backbone(x, &table, causal_bias::<B>(0, n, device))?;
        let r = self.config.n_readout;
        let readout = hidden.slice([0..1, n - r..n, 0..d]);
        self.step_output(readout)
    }
}

mod ring_train;

#[cfg(test)]
mod tests;
