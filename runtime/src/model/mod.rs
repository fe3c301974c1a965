//! The streaming VLA model: tokenizer, Llama-style backbone and action head.
//!
//! - [`config`]: [`VlaConfig`], the sizes (`configs/model/*.toml`).
//! - [`Vla`]: the burn module. [`Vla::start_episode`] stores the instruction as attention
//!   sinks in a [`Stream`]; [`Vla::forward_step`] appends one frame-step to the rolling context
//!   and returns an action chunk; [`Vla::forward_full`] recomputes a whole context at once (the
//!   reference incremental decoding must match, and the training path).
//! - Backbone blocks: RMSNorm → grouped-query attention with RoPE (`crate::rope`, any
//!   scaling; the attention factor folded into q and k through cos/sin, as HuggingFace does)
//!   → RMSNorm → SwiGLU MLP, with residuals; a final RMSNorm. Names and shapes follow
//!   HuggingFace `LlamaModel` so the backbone exports to it (`crate::checkpoint`).

pub mod config;
mod host;
mod memory;
mod mirror;

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::nn::{Linear, LinearConfig, RmsNorm, RmsNormConfig};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};

pub use config::{BOS_TOKEN, INSTRUCTION_VOCAB, MemoryConfig, VlaConfig};

use crate::error::{Error, Result};
use crate::flash::{AttentionMask, TrainAttention, flash_attention};
use crate::host::float_tensor;
use crate::kv::{KvCache, KvCacheConfig, KvLayout, Segment};
use crate::rope::{RopeFrequencies, RotaryTable};

const INIT_STD: f64 = 0.02;

fn linear<B: Backend>(
    d_in: usize,
    d_out: usize,
    bias: bool,
    std: f64,
    device: &B::Device,
) -> Linear<B> {
    LinearConfig::new(d_in, d_out)
        .with_bias(bias)
        .with_initializer(Initializer::Normal { mean: 0.0, std })
        .init(device)
}

fn param<B: Backend, const D: usize>(
    shape: [usize; D],
    std: f64,
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    Param::from_tensor(Tensor::random(
        shape,
        Distribution::Normal(0.0, std),
        device,
    ))
}

/// Grouped-query self-attention (HuggingFace `LlamaAttention` without biases).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// `[d_model, n_heads · head_dim]`
    pub q_proj: Linear<B>,
    /// `[d_model, n_kv_heads · head_dim]`
    pub k_proj: Linear<B>,
    /// `[d_model, n_kv_heads · head_dim]`
    pub v_proj: Linear<B>,
    /// `[n_heads · head_dim, d_model]`
    pub o_proj: Linear<B>,
    #[module(skip)]
    n_heads: usize,
    #[module(skip)]
    n_kv_heads: usize,
    #[module(skip)]
    head_dim: usize,
}

/// SwiGLU MLP: `down(silu(gate(x)) · up(x))`.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `[d_model, ffn_dim]`
    pub gate_proj: Linear<B>,
    /// `[d_model, ffn_dim]`
    pub up_proj: Linear<B>,
    /// `[ffn_dim, d_model]`
    pub down_proj: Linear<B>,
}

/// One pre-norm transformer block.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// Norm before attention.
    pub input_layernorm: RmsNorm<B>,
    /// Self-attention.
    pub self_attn: Attention<B>,
    /// Norm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
    /// Feed-forward.
    pub mlp: Mlp<B>,
}

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

/// A step's tokens: in the host path's residual stream (the row count), or a tensor
/// `[1, t, d_model]` for the tensor path.
enum Tokens<B: Backend> {
    Host(usize),
    Tensor(Tensor<B, 3>),
}

/// Final-norm hidden states of a step's unstored tokens: host rows `[rows, d_model]` or a
/// tensor `[1, rows, d_model]`.
enum Hidden<B: Backend> {
    Host(Vec<f32>),
    Tensor(Tensor<B, 3>),
}

/// The rolling context of one episode: the KV cache plus the rotary table it is read with.
#[derive(Debug)]
pub struct Stream<B: Backend> {
    cache: KvCache,
    /// The memory bank (models with a memory): one token per frame-step, oldest evicted first.
    bank: Option<KvCache>,
    table: Option<(RopeFrequencies, RotaryTable<B>)>,
    keys: Vec<f32>,
    values: Vec<f32>,
    /// The CPU path's state (`None` on devices that are not the host: the tensor path).
    host: Option<host::HostPath>,
    /// The tensor path's copy of the cache on the device (see [`mirror`]).
    mirror: Option<mirror::Mirror<B>>,
    device: B::Device,
}

impl<B: Backend> Stream<B> {
    /// A stream over `cache`, which [`Vla::new_stream`] sizes for the model's layout,
    /// sinks, step size and context length, with the host path's weights on the host backend.
    fn new(cache: KvCache, host: Option<host::HostPath>, device: &B::Device) -> Self {
        Self {
            cache,
            bank: None,
            table: None,
            keys: Vec::new(),
            values: Vec::new(),
            host,
            mirror: None,
            device: device.clone(),
        }
    }

    /// Runs this stream through the tensor path (the one non-host devices take) even on the
    /// host backend: tests and benchmarks compare the two paths on the CPU.
    #[doc(hidden)]
    pub fn use_tensor_path(&mut self) {
        self.host = None;
    }

    /// The cache (bytes, frames, stats).
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// The memory bank, for a model with a memory: its `len()` is the memory tokens held,
    /// `bytes()` their bytes (bounded by `budget()`).
    pub fn memory(&self) -> Option<&KvCache> {
        self.bank.as_ref()
    }

    /// The cache, mutable (benchmarks fill it with synthetic frame-steps). The device copy is
    /// dropped and rebuilt from the cache at the next step.
    pub(crate) fn cache_mut(&mut self) -> &mut KvCache {
        self.mirror = None;
        &mut self.cache
    }

    /// Rotary table for positions `0..seq_len` with the frequencies `seq_len` calls for
    /// (rebuilt only when they change: dynamic NTK past `rope.max_position_embeddings`, which
    /// needs a `context_length` above it; LongRoPE's switch to its long factors).
    fn table(&mut self, config: &VlaConfig, seq_len: usize) -> Result<RotaryTable<B>> {
        let freqs = config.rope.frequencies(Some(seq_len));
        let stale = self.table.as_ref().is_none_or(|(f, _)| *f != freqs);
        if stale {
            let span = config.context_length().max(seq_len);
            let positions: Vec<i64> = (0..span as i64).collect();
            let table = freqs.table::<B>(&positions, &self.device)?;
            self.table = Some((freqs, table));
        }
        match &self.table {
            Some((_, table)) => table.narrow(0, seq_len),
            None => Err(Error::shape("rope table", "not built")),
        }
    }
}

/// The error for a model with a memory on the tensor path: the bank runs on the host only.
fn host_only() -> Error {
    Error::config(
        "memory",
        "a model with a memory bank runs on the host (CPU) path only",
    )
}

/// Additive attention bias `[1, tq, past + tq]`: query `i` (at position `past + i`) sees keys
/// `0..=past + i`. Only the `tq × tq` block of the new tokens is uploaded; the zeros over the
/// `past` cached keys are filled on the device.
pub(crate) fn causal_bias<B: Backend>(past: usize, tq: usize, device: &B::Device) -> Tensor<B, 3> {
    let mut block = vec![0.0f32; tq * tq];
    for i in 0..tq {
        for b in &mut block[i * tq + i + 1..(i + 1) * tq] {
            *b = f32::NEG_INFINITY;
        }
    }
    let block = float_tensor(block, [1, tq, tq], device);
    if past == 0 {
        block
    } else {
        Tensor::cat(vec![Tensor::zeros([1, tq, past], device), block], 2)
    }
}

impl<B: Backend> Attention<B> {
    /// Projects `h` to queries and (pre-RoPE) keys and values.
    ///
    /// # Shapes
    /// - `h`: `[batch, seq, d_model]`
    /// - output: q `[batch, n_heads, seq, head_dim]`, k and v `[batch, n_kv_heads, seq, head_dim]`
    fn project(&self, h: Tensor<B, 3>) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [batch, seq, _] = h.dims();
        let split = |t: Tensor<B, 3>, heads: usize| {
            t.reshape([batch, seq, heads, self.head_dim])
                .swap_dims(1, 2)
        };
        (
            split(self.q_proj.forward(h.clone()), self.n_heads),
            split(self.k_proj.forward(h.clone()), self.n_kv_heads),
            split(self.v_proj.forward(h), self.n_kv_heads),
        )
    }

    /// Scaled dot-product attention with grouped K/V heads (no K/V copy: the query heads of
    /// one K/V head are folded into its query rows), then the output projection.
    ///
    /// # Shapes
    /// - `q`: `[batch, n_heads, tq, head_dim]` (rotated)
    /// - `k`, `v`: `[batch, n_kv_heads, tk, head_dim]` (k rotated)
    /// - `bias`: `[1 or batch, tq, tk]`, 0 or −∞
    /// - output: `[batch, tq, d_model]`
    fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        bias: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let [batch, _, tq, hd] = q.dims();
        let tk = k.dims()[2];
        let (kv, rep) = (self.n_kv_heads, self.n_heads / self.n_kv_heads);
        let bias_rows = bias.dims()[0];
        let q = q.reshape([batch, kv, rep * tq, hd]);
        let scores = q.matmul(k.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt()); // [batch, kv, rep·tq, tk]
        let scores =
            scores.reshape([batch, kv, rep, tq, tk]) + bias.reshape([bias_rows, 1, 1, tq, tk]);
        let probs = softmax(scores, 4).reshape([batch, kv, rep * tq, tk]);
        let out = probs.matmul(v); // [batch, kv, rep·tq, hd]
        let out = out
            .reshape([batch, self.n_heads, tq, hd])
            .swap_dims(1, 2)
            .reshape([batch, tq, self.n_heads * hd]);
        self.o_proj.forward(out)
    }
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        self.down_proj
            .forward(silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x))
    }
}

impl<B: Backend> Block<B> {
    /// Block over a whole sequence without cache.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`; `table`: positions for `seq` tokens; `bias`: `[1 or batch, seq, seq]`
    /// - output: `[batch, seq, d_model]`
    fn forward(
        &self,
        x: Tensor<B, 3>,
        table: &RotaryTable<B>,
        bias: Tensor<B, 3>,
    ) -> Result<Tensor<B, 3>> {
        let (q, k, v) = self
            .self_attn
            .project(self.input_layernorm.forward(x.clone()));
        let attn = self
            .self_attn
            .attend(table.apply(q)?, table.apply(k)?, v, bias);
        let x = x + attn;
        Ok(x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x)))
    }

    /// Block over whole training sequences with memory-efficient attention
    /// ([`crate::flash`]): no `[seq, seq]` score or mask tensor.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`; `table`: positions for `seq` tokens
    /// - output: `[batch, seq, d_model]`
    fn forward_flash(
        &self,
        x: Tensor<B, 3>,
        table: &RotaryTable<B>,
        mask: &AttentionMask,
    ) -> Result<Tensor<B, 3>>
    where
        B: TrainAttention,
    {
        let attn_cfg = &self.self_attn;
        let [batch, seq, _] = x.dims();
        let hd = attn_cfg.head_dim;
        let (q, k, v) = attn_cfg.project(self.input_layernorm.forward(x.clone()));
        let scale = 1.0 / (hd as f64).sqrt();
        let out = flash_attention(table.apply(q)?, table.apply(k)?, v, mask, scale)?.out; // [batch, heads, seq, hd]
        let out = out
            .swap_dims(1, 2)
            .reshape([batch, seq, attn_cfg.n_heads * hd]);
        let x = x + attn_cfg.o_proj.forward(out);
        Ok(x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x)))
    }

    /// Block for new tokens on top of layer `layer` of the cache; the first `store` new tokens'
    /// keys and values are written into the cache's reserved block.
    ///
    /// # Shapes
    /// - `x`: `[1, tq, d_model]`; `table`: positions `0..past + tq`; `bias`: `[1, tq, past + tq]`
    /// - output: `[1, tq, d_model]`
    fn forward_cached(
        &self,
        x: Tensor<B, 3>,
        cached: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
        past: usize,
        table: &RotaryTable<B>,
        bias: Tensor<B, 3>,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 4>, Tensor<B, 4>)> {
        let attn_cfg = &self.self_attn;
        let [_, tq, _] = x.dims();
        let (q, k_new, v_new) = attn_cfg.project(self.input_layernorm.forward(x.clone()));
        let (k_all, v_all) = match cached {
            Some((k_cached, v_cached)) => (
                Tensor::cat(vec![k_cached, k_new.clone()], 2),
                Tensor::cat(vec![v_cached, v_new.clone()], 2),
            ),
            None => (k_new.clone(), v_new.clone()),
        };
        let q = table.narrow(past, tq)?.apply(q)?;
        let k_all = table.apply(k_all)?;
        let attn = attn_cfg.attend(q, k_all, v_all, bias);
        let x = x + attn;
        let x = x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x));
        Ok((x, k_new, v_new))
    }
}

impl VlaConfig {
    /// Builds a randomly initialized model (normal, std 0.02; burn's backend seed decides
    /// the values).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Vla<B> {
        self.init_with_std(INIT_STD, device)
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
            action_head: linear(self.n_readout * d, self.action_values(), true, std, device),
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

impl<B: Backend> Vla<B> {
    /// The model's configuration.
    pub fn config(&self) -> &VlaConfig {
        &self.config
    }

    /// A stream with a KV cache for this model: `cache` gives the storage format and byte
    /// budget (the model's own default is `config().kv_cache`); the context length bounds it too.
    /// On the host backend the stream also holds a copy of the weights for the host path
    /// (see [`host`]), so a stream belongs to the model that made it (or one from
    /// [`with_rope`](Self::with_rope) of it).
    ///
    /// # Errors
    /// [`Error::Config`] if the budget cannot hold the longest instruction plus one frame-step,
    /// or the format does not fit the head size.
    pub fn new_stream(&self, cache: &KvCacheConfig, device: &B::Device) -> Result<Stream<B>> {
        let c = &self.config;
        let layout = KvLayout {
            dtype: cache.dtype,
            ..c.kv_layout()
        };
        let mut kv = KvCache::new(
            layout,
            cache.budget_bytes,
            c.max_cached_tokens(),
            c.max_sink_tokens(),
            c.tokens_per_step(),
        )?;
        let host = host::HostPath::for_model(self, device)?;
        let bank = match &c.memory {
            None => None,
            Some(m) => {
                if host.is_none() {
                    return Err(host_only());
                }
                let frames = (kv.capacity() - c.max_sink_tokens()) / c.tokens_per_step();
                if frames < m.window_steps {
                    let needed = layout.total_bytes(
                        (c.max_sink_tokens() + m.window_steps * c.tokens_per_step()) as u64,
                    );
                    return Err(Error::config(
                        "kv_cache.budget_bytes",
                        format!(
                            "{} bytes hold {frames} frame-steps; this model was trained with a window of {} (memory.window_steps), which needs {needed} bytes at {}",
                            cache.budget_bytes, m.window_steps, layout.dtype
                        ),
                    ));
                }
                kv = kv.with_max_frames(m.window_steps);
                Some(KvCache::new(
                    layout,
                    c.memory_bytes(layout.dtype),
                    m.bank_steps,
                    0,
                    1,
                )?)
            }
        };
        let mut stream = Stream::new(kv, host, device);
        stream.bank = bank;
        Ok(stream)
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

    /// Readout hidden states → action chunk values.
    ///
    /// # Shapes
    /// - `readout`: `[batch, n_readout, d_model]` (after the final norm)
    /// - output: `[batch, horizon · action_dim]`
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
        let values = crate::host::host_values(self.action_head(readout), "action head")?;
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

    /// Starts an episode: empties the stream and stores the instruction as attention sinks.
    ///
    /// # Errors
    /// [`Error::Shape`] for an over-long instruction.
    pub fn start_episode(&self, instruction: &str, stream: &mut Stream<B>) -> Result<()> {
        let ids = self.instruction_ids(instruction)?;
        stream.cache.reset();
        if let Some(bank) = stream.bank.as_mut() {
            bank.reset();
        }
        let x = match stream.host.as_mut() {
            Some(host) => Tokens::Host(host.embed_instruction(&ids)?),
            None => Tokens::Tensor(self.embed_instruction(&ids, &stream.device)),
        };
        self.run_cached(x, ids.len(), Segment::Sinks, stream)?;
        Ok(())
    }

    /// Appends one frame-step to the rolling context and returns the action chunk for it.
    /// Frame-steps that no longer fit the cache's budget are evicted first (oldest first).
    ///
    /// # Errors
    /// [`Error::Shape`] for inputs of the wrong size, [`Error::NonFinite`] for NaN/∞ inputs or
    /// outputs. On error the cache holds the context as it was before the step, less any
    /// frame-steps evicted to make room.
    pub fn forward_step(
        &self,
        step: &StepInput<'_>,
        stream: &mut Stream<B>,
    ) -> Result<StepOutput<B>> {
        self.check_step(step)?;
        let x = match stream.host.as_mut() {
            Some(host) => Tokens::Host(host.embed_step(step)?),
            None if self.config.memory.is_some() => return Err(host_only()),
            None => {
                let tokens = self.step_tokens(step, &stream.device);
                Tokens::Tensor(Tensor::cat(vec![tokens, self.readout_tokens(1)], 1))
            }
        };
        let r = self.config.n_readout;
        match self.run_cached(x, self.config.tokens_per_step(), Segment::Frame, stream)? {
            Hidden::Tensor(hidden) => {
                let [_, t, d] = hidden.dims();
                self.step_output(hidden.slice([0..1, t - r..t, 0..d]))
            }
            Hidden::Host(readout) => {
                let Some(host) = stream.host.as_ref() else {
                    return Err(Error::shape("host step", "no host path"));
                };
                let (values, cue_logits) = host.heads(&readout);
                Error::check_finite("model output (action chunk)", &values)?;
                if let Some(logits) = &cue_logits {
                    Error::check_finite("model output (cue logits)", logits)?;
                }
                let c = &self.config;
                Ok(StepOutput {
                    action: ActionChunk {
                        horizon: c.horizon,
                        action_dim: c.action_dim,
                        values,
                    },
                    readout: float_tensor(readout, [1, r, c.d_model], &stream.device),
                    cue_logits,
                })
            }
        }
    }

    /// Runs the tokens `x` (`t` of them) through the backbone on top of the cache, storing the
    /// first `store` tokens as `segment`; returns the final-norm hidden states of the tokens that
    /// are not stored (the readouts), `t - store` rows, or of all `t` tokens when all are
    /// stored. The last layer computes only those tokens' outputs on the host path.
    fn run_cached(
        &self,
        x: Tokens<B>,
        store: usize,
        segment: Segment,
        stream: &mut Stream<B>,
    ) -> Result<Hidden<B>> {
        let before = stream.cache.len();
        let past = stream.cache.reserve(segment, store)?;
        // A frame-step's memory token (the token after its frame tokens) goes to the bank.
        let memory = match (segment, stream.bank.as_mut()) {
            (Segment::Frame, Some(bank)) => match bank.reserve(Segment::Frame, 1) {
                Ok(_) => Some(store),
                Err(e) => {
                    stream.cache.abort();
                    return Err(e);
                }
            },
            _ => None,
        };
        let result = (|| match (x, stream.host.as_mut()) {
            (Tokens::Host(t), Some(host)) => {
                host.check_model(&self.config)?;
                let hidden = host.run(
                    &self.config,
                    &mut stream.cache,
                    stream.bank.as_mut().filter(|_| memory.is_some()),
                    t,
                    store,
                    memory,
                )?;
                Ok(Hidden::Host(hidden.to_vec()))
            }
            (Tokens::Tensor(x), None) => {
                let [_, t, _] = x.dims();
                let table = stream.table(&self.config, past + t)?;
                let bias = causal_bias::<B>(past, t, &stream.device);
                stream.sync_mirror(before)?;
                let mut x = x;
                let mut new_kv = Vec::with_capacity(self.layers.len());
                for (layer, block) in self.layers.iter().enumerate() {
                    let cached = stream.mirror.as_ref().and_then(|m| m.layer(layer));
                    let (y, k, v) = block.forward_cached(x, cached, past, &table, bias.clone())?;
                    x = y;
                    new_kv.push((k, v));
                }
                stream.store_new(new_kv, store)?;
                let x = if store < t {
                    x.narrow(1, store, t - store)
                } else {
                    x
                };
                Ok(Hidden::Tensor(self.norm.forward(x)))
            }
            _ => Err(Error::shape(
                "stream",
                "tokens embedded for the other path (host / tensor)",
            )),
        })();
        match result {
            Ok(hidden) => {
                stream.cache.commit()?;
                if let (Some(bank), Some(_)) = (stream.bank.as_mut(), memory) {
                    bank.commit()?;
                }
                Ok(hidden)
            }
            Err(e) => {
                stream.cache.abort();
                if let (Some(bank), Some(_)) = (stream.bank.as_mut(), memory) {
                    bank.abort();
                }
                // Rebuilt from the cache at the next step.
                stream.mirror = None;
                Err(e)
            }
        }
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

/// A training batch: `batch` episodes of `steps` frame-steps each, host-side, row-major.
#[derive(Clone, Debug)]
pub struct TrainBatch<'a> {
    /// One instruction per episode (lengths may differ).
    pub instructions: &'a [&'a str],
    /// Frame-steps per episode.
    pub steps: usize,
    /// `[batch, steps, n_cameras, patches_per_camera, patch_dim]`.
    pub patches: &'a [f32],
    /// `[batch, steps, n_cameras]`.
    pub camera_present: &'a [bool],
    /// `[batch, steps, proprio_dim]`.
    pub proprio: &'a [f32],
}

/// What the training forward pass predicts at every step of every episode.
#[derive(Clone, Debug)]
pub struct TrainOutput<B: Backend> {
    /// Action chunks `[batch, steps, horizon · action_dim]`.
    pub actions: Tensor<B, 3>,
    /// Cue-class logits `[batch, steps, cue_classes]`, if the model has a cue-recall head.
    pub cue_logits: Option<Tensor<B, 3>>,
}

/// Where each token of one training sequence sits and what it may see.
pub(crate) struct TrainLayout {
    /// Position of every token (readouts share positions with the next step's first tokens,
    /// as at inference, where they are never cached).
    pub(crate) positions: Vec<i64>,
    /// Visibility group of every token (see [`visible`]).
    pub(crate) groups: Vec<usize>,
}

/// Group of instruction padding (and of any padding appended to a sequence).
pub(crate) const PAD_GROUP: usize = usize::MAX;

/// Group ids as the device sees them (`PAD_GROUP` → −1).
pub(crate) fn group_ids(groups: impl Iterator<Item = usize>) -> Vec<i64> {
    groups
        .map(|g| if g == PAD_GROUP { -1 } else { g as i64 })
        .collect()
}

/// The training attention bias `[batch, 1, tq, tk]`, built on the device: query token i (global
/// index `q_index[i]`, group `q_groups[e][i]`) sees key token j when it is not later
/// (`k_index[j] ≤ q_index[i]`) and either j is context (group 0) and i is not padding, or
/// both are in the same group (a step's readouts see each other; padding sees padding).
/// 0 where visible, −∞ elsewhere.
///
/// # Shapes
/// - `q_groups`: `[batch, tq]` (−1 for padding); `k_groups`: `[batch, tk]`
pub(crate) fn train_bias<B: Backend>(
    q_index: &[i64],
    q_groups: Vec<i64>,
    k_index: &[i64],
    k_groups: Vec<i64>,
    batch: usize,
    device: &B::Device,
) -> Tensor<B, 4> {
    let (tq, tk) = (q_index.len(), k_index.len());
    let shape = [batch, tq, tk];
    let int = |values: Vec<i64>, dims: [usize; 3]| {
        Tensor::<B, 3, Int>::from_data(TensorData::new(values, dims), device).expand(shape)
    };
    let qi = int(q_index.to_vec(), [1, tq, 1]);
    let kj = int(k_index.to_vec(), [1, 1, tk]);
    let gi = int(q_groups, [batch, tq, 1]);
    let gj = int(k_groups, [batch, 1, tk]);
    let causal = kj.lower_equal(qi);
    let context = gj
        .clone()
        .equal_elem(0)
        .bool_and(gi.clone().not_equal_elem(-1));
    let mask = causal.bool_and(context.bool_or(gj.equal(gi)));
    Tensor::<B, 3>::full(shape, f32::NEG_INFINITY, device)
        .mask_fill(mask, 0.0)
        .unsqueeze_dim(1)
}

/// Layout of a sequence whose instruction has `sinks` tokens, padded to `padded_sinks`, then
/// `steps` × (`step_tokens` step tokens, `memory` memory tokens (0 or 1), `readouts` readout
/// tokens). The memory token is context (group 0) at the position after its step's tokens;
/// the readouts follow it.
fn train_layout(
    sinks: usize,
    padded_sinks: usize,
    steps: usize,
    step_tokens: usize,
    memory: usize,
    readouts: usize,
) -> TrainLayout {
    // Group per token: 0 for context (instruction and step tokens), k + 1 for step k's
    // readouts, PAD_GROUP for instruction padding.
    let mut groups = vec![0usize; sinks];
    groups.extend(std::iter::repeat_n(PAD_GROUP, padded_sinks - sinks));
    let mut positions: Vec<i64> = (0..sinks as i64).collect();
    positions.extend(std::iter::repeat_n(0, padded_sinks - sinks));
    for k in 0..steps {
        let first = (sinks + k * step_tokens) as i64;
        positions.extend(first..first + step_tokens as i64);
        groups.extend(std::iter::repeat_n(0, step_tokens));
        let after = first + step_tokens as i64;
        positions.extend(after..after + memory as i64);
        groups.extend(std::iter::repeat_n(0, memory));
        let after = after + memory as i64;
        positions.extend(after..after + readouts as i64);
        groups.extend(std::iter::repeat_n(k + 1, readouts));
    }
    TrainLayout { positions, groups }
}

/// The embedded training sequence of a batch: `x` `[batch, len, d_model]`, one layout per
/// episode, the padded instruction length.
pub(crate) struct TrainSequence<B: Backend> {
    pub(crate) x: Tensor<B, 3>,
    pub(crate) layouts: Vec<TrainLayout>,
    pub(crate) padded_sinks: usize,
    pub(crate) steps: usize,
}

impl<B: Backend> Vla<B> {
    /// The action chunk (and cue logits) predicted at every step of every episode, in one
    /// forward pass (the training path). Each step's readouts see the instruction and the step
    /// tokens up to and including their own step, exactly as
    /// [`forward_step`](Self::forward_step) does with a cache that evicts nothing.
    ///
    /// All steps are embedded in one batched call; the sequence of an episode is
    /// `[instruction (padded), step 0 tokens, step 0 readouts, step 1 tokens, …]`.
    ///
    /// Instructions are padded to the model's longest ([`VlaConfig::max_sink_tokens`]); the
    /// padding is masked from every token and positions continue from each episode's own
    /// instruction length.
    ///
    /// # Errors
    /// [`Error::Shape`] for inputs of the wrong size or an over-long instruction,
    /// [`Error::NonFinite`] for NaN/∞ in present cameras or proprio.
    pub fn forward_train(
        &self,
        batch: &TrainBatch<'_>,
        device: &B::Device,
    ) -> Result<TrainOutput<B>>
    where
        B: TrainAttention,
    {
        if self.config.memory.is_some() {
            return self.forward_train_memory(batch, device);
        }
        let seq = self.train_sequence(batch, device)?;
        let (table, index, groups) = self.train_positions(&seq, device)?;
        let mask = AttentionMask::grouped(
            seq.layouts.len(),
            index.clone(),
            groups.clone(),
            index,
            groups,
        )?;
        let mut x = seq.x;
        for block in &self.layers {
            x = block.forward_flash(x, &table, &mask)?;
        }
        let hidden = self.norm.forward(x);
        Ok(self.train_heads(hidden, seq.padded_sinks, seq.steps))
    }

    /// [`forward_train`](Self::forward_train) with the naive attention: the dense training
    /// bias `[batch, len, len]` and softmax over whole rows (the reference the memory-efficient
    /// path is tested against).
    ///
    /// # Errors
    /// As [`forward_train`](Self::forward_train).
    pub fn forward_train_naive(
        &self,
        batch: &TrainBatch<'_>,
        device: &B::Device,
    ) -> Result<TrainOutput<B>> {
        if self.config.memory.is_some() {
            return Err(Error::config(
                "memory",
                "the naive training forward has no memory bank (use forward_train)",
            ));
        }
        let seq = self.train_sequence(batch, device)?;
        let (table, index, groups) = self.train_positions(&seq, device)?;
        let (n_batch, len) = (seq.layouts.len(), index.len());
        let bias = train_bias::<B>(&index, groups.clone(), &index, groups, n_batch, device)
            .reshape([n_batch, len, len]);
        let hidden = self.backbone(seq.x, &table, bias)?;
        Ok(self.train_heads(hidden, seq.padded_sinks, seq.steps))
    }

    /// The RoPE table of a training sequence's positions, its token indices and the
    /// visibility group of every token (as the device sees them), shared by the flash and
    /// naive training forwards.
    fn train_positions(
        &self,
        seq: &TrainSequence<B>,
        device: &B::Device,
    ) -> Result<(RotaryTable<B>, Vec<i64>, Vec<i64>)> {
        let c = &self.config;
        let len = seq.layouts[0].positions.len();
        let max_position = seq.padded_sinks + seq.steps * c.tokens_per_step() + c.n_readout;
        let positions: Vec<i64> = seq
            .layouts
            .iter()
            .flat_map(|l| l.positions.iter().copied())
            .collect();
        let table = c.rope.frequencies(Some(max_position)).batched_table::<B>(
            &positions,
            seq.layouts.len(),
            device,
        )?;
        let index: Vec<i64> = (0..len as i64).collect();
        let groups = group_ids(seq.layouts.iter().flat_map(|l| l.groups.iter().copied()));
        Ok((table, index, groups))
    }

    /// Embeds a training batch (checked) into one sequence per episode.
    pub(crate) fn train_sequence(
        &self,
        batch: &TrainBatch<'_>,
        device: &B::Device,
    ) -> Result<TrainSequence<B>> {
        let c = &self.config;
        let n_batch = batch.instructions.len();
        let steps = batch.steps;
        let per_step = c.n_cameras * c.patches_per_camera * c.patch_dim;
        if n_batch == 0
            || steps == 0
            || batch.patches.len() != n_batch * steps * per_step
            || batch.camera_present.len() != n_batch * steps * c.n_cameras
            || batch.proprio.len() != n_batch * steps * c.proprio_dim
        {
            return Err(Error::shape(
                "train batch",
                format!(
                    "{n_batch} episodes × {steps} steps need {} patch values, {} camera flags and {} proprio values; got {}, {}, {}",
                    n_batch * steps * per_step,
                    n_batch * steps * c.n_cameras,
                    n_batch * steps * c.proprio_dim,
                    batch.patches.len(),
                    batch.camera_present.len(),
                    batch.proprio.len()
                ),
            ));
        }
        let ids: Vec<Vec<i64>> = batch
            .instructions
            .iter()
            .map(|text| self.instruction_ids(text))
            .collect::<Result<_>>()?;
        // Instructions are padded to the longest the model takes, so every batch of a given
        // episode length has the same shapes (a device compiles and tunes its kernels once per
        // shape); padding is masked from every token.
        let padded_sinks = c.max_sink_tokens();
        let rows = n_batch * steps;
        for at in 0..rows {
            self.check_step(&StepInput {
                patches: &batch.patches[at * per_step..(at + 1) * per_step],
                camera_present: &batch.camera_present[at * c.n_cameras..(at + 1) * c.n_cameras],
                proprio: &batch.proprio[at * c.proprio_dim..(at + 1) * c.proprio_dim],
            })?;
        }
        // Step tokens of every (episode, step) in one batched embedding; missing cameras'
        // patches are zeroed (they may hold anything), the missing embedding replaces them.
        let n_patches = c.n_cameras * c.patches_per_camera;
        let per_camera = c.patches_per_camera * c.patch_dim;
        let mut values = batch.patches.to_vec();
        for (slot, present) in batch.camera_present.iter().enumerate() {
            if !present {
                values[slot * per_camera..(slot + 1) * per_camera].fill(0.0);
            }
        }
        let mask: Vec<f32> = batch
            .camera_present
            .iter()
            .flat_map(|p| std::iter::repeat_n(if *p { 1.0 } else { 0.0 }, c.patches_per_camera))
            .collect();
        let step_tokens = self.embed_step(
            float_tensor(values, [rows, n_patches, c.patch_dim], device),
            float_tensor(mask, [rows, n_patches, 1], device),
            float_tensor(batch.proprio.to_vec(), [rows, c.proprio_dim], device),
        );
        let (tps, r, d) = (c.tokens_per_step(), c.n_readout, c.d_model);
        let chunk = c.step_rows();
        let mut parts = vec![step_tokens];
        let memory = match (&c.memory, &self.memory_token) {
            (None, _) => 0,
            (Some(_), Some(token)) => {
                parts.push(token.val().reshape([1, 1, d]).repeat_dim(0, rows));
                1
            }
            (Some(_), None) => {
                return Err(Error::config("memory", "the model has no memory token"));
            }
        };
        parts.push(self.readout_tokens(rows));
        let steps_x = Tensor::cat(parts, 1).reshape([n_batch, steps * chunk, d]);
        let instructions: Vec<Tensor<B, 3>> = ids
            .iter()
            .map(|episode_ids| {
                let x = self.embed_instruction(episode_ids, device);
                if episode_ids.len() < padded_sinks {
                    let pad = Tensor::zeros([1, padded_sinks - episode_ids.len(), d], device);
                    Tensor::cat(vec![x, pad], 1)
                } else {
                    x
                }
            })
            .collect();
        let x = Tensor::cat(vec![Tensor::cat(instructions, 0), steps_x], 1);
        let layouts: Vec<TrainLayout> = ids
            .iter()
            .map(|i| train_layout(i.len(), padded_sinks, steps, tps, memory, r))
            .collect();
        Ok(TrainSequence {
            x,
            layouts,
            padded_sinks,
            steps,
        })
    }

    /// The heads over the final hidden states `[batch, len, d_model]` of training sequences.
    pub(crate) fn train_heads(
        &self,
        hidden: Tensor<B, 3>,
        padded_sinks: usize,
        steps: usize,
    ) -> TrainOutput<B> {
        let c = &self.config;
        let [n_batch, len, d] = hidden.dims();
        let (chunk, r) = (c.step_rows(), c.n_readout);
        let rows = n_batch * steps;
        // Every step's readouts: the last `r` tokens of each step chunk.
        let readouts = hidden
            .slice([0..n_batch, padded_sinks..len, 0..d])
            .reshape([rows, chunk, d])
            .slice([0..rows, chunk - r..chunk, 0..d])
            .reshape([rows, r * d]);
        let actions =
            self.action_head
                .forward(readouts.clone())
                .reshape([n_batch, steps, c.action_values()]);
        let cue_logits = self.cue_head.as_ref().map(|head| {
            head.forward(readouts)
                .reshape([n_batch, steps, c.cue_classes])
        });
        TrainOutput {
            actions,
            cue_logits,
        }
    }
}

mod ring_train;

#[cfg(test)]
mod tests;
