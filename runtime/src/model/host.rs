//! The CPU path of a cached step, on host buffers from end to end.
//!
//! A [`super::Stream`] on the host engine ([`super::StepEngine::Host`], the default on burn's
//! ndarray backend, which computes on the host) keeps
//! a copy of the model's weights in the layouts this path wants ([`HostWeights`]: q/k/v
//! projections fused into one matrix, gate and up fused into another, camera and patch-index
//! embeddings pre-summed) and runs the whole step without burn tensors: embedding, per layer
//! RMSNorm → one fused projection → attention straight over the cache's storage
//! ([`crate::attention`]: decoded block by block, never as a whole) → output projection →
//! RMSNorm → fused gate/up → SwiGLU → down projection, then the final norm and the heads.
//! Matrix products go through [`crate::gemm`] on the rayon pool; element-wise loops run inside
//! a [`macerator`] dispatch (vectorized for the CPU's best instruction set). The buffers live
//! in the stream and are reused, so a step allocates nothing once the first has run, and the
//! last layer computes only the rows whose outputs are read (the readouts).
//!
//! It computes what the tensor path computes (test `tensor_path_equals_host_path`, and every
//! model test that runs on NdArray goes through it).

use burn::tensor::backend::Backend;
use macerator::{Arch, Simd, WithSimd};

use super::rope_table::RopeTableCache;
use super::{Block, StepInput, Vla, VlaConfig};
use crate::attention::{
    AttendInput, AttentionScratch, BankInput, HostRope, attend, fast_exp, sum_squares_lanes,
};
use crate::error::{Error, Result};
use crate::gemm::{Mat, MatMut, Threads, Write, matmul};
use crate::host::host_values;
use crate::kv::KvCache;

/// One backbone block's weights, row-major `[d_in, d_out]` as burn's `Linear` stores them.
#[derive(Clone, Debug)]
struct HostBlock {
    input_norm: Vec<f32>,
    /// `[d_model, (n_heads + 2 · n_kv_heads) · head_dim]`: q, k and v columns.
    qkv: Vec<f32>,
    /// `[n_heads · head_dim, d_model]`.
    o: Vec<f32>,
    post_norm: Vec<f32>,
    /// `[d_model, 2 · ffn_dim]`: gate then up columns.
    gate_up: Vec<f32>,
    /// `[ffn_dim, d_model]`.
    down: Vec<f32>,
}

/// A linear layer `[d_in, d_out]` with its bias.
#[derive(Clone, Debug)]
struct HostLinear {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

/// The model's weights on the host, in the layouts the host path uses.
#[derive(Clone, Debug)]
pub(crate) struct HostWeights {
    config: VlaConfig,
    patch_embed: HostLinear,
    /// Camera embedding + patch-index embedding of every patch token `[n_patches, d_model]`.
    patch_add: Vec<f32>,
    missing: Vec<f32>,
    proprio: HostLinear,
    /// `[INSTRUCTION_VOCAB, d_model]`.
    instruction: Vec<f32>,
    /// `[n_readout, d_model]`.
    readout: Vec<f32>,
    /// The memory token `[d_model]` (models with a memory).
    memory: Option<Vec<f32>>,
    blocks: Vec<HostBlock>,
    norm: Vec<f32>,
    action: HostLinear,
    cue: Option<HostLinear>,
}

fn linear<B: Backend>(l: &burn::nn::Linear<B>, what: &'static str) -> Result<HostLinear> {
    let d_out = l.weight.dims()[1];
    Ok(HostLinear {
        weight: host_values(l.weight.val(), what)?,
        bias: match &l.bias {
            Some(b) => host_values(b.val(), what)?,
            None => vec![0.0; d_out],
        },
    })
}

/// Weights `[d_in, a]` and `[d_in, b]` … side by side: `[d_in, a + b + …]`.
fn side_by_side(parts: &[Vec<f32>], d_in: usize) -> Vec<f32> {
    let widths: Vec<usize> = parts.iter().map(|p| p.len() / d_in).collect();
    let mut out = Vec::with_capacity(parts.iter().map(Vec::len).sum());
    for r in 0..d_in {
        for (p, w) in parts.iter().zip(&widths) {
            out.extend_from_slice(&p[r * w..(r + 1) * w]);
        }
    }
    out
}

impl HostWeights {
    /// Copies `model`'s weights to the host.
    ///
    /// # Errors
    /// [`Error::Shape`] if a weight cannot be read as f32.
    pub(crate) fn new<B: Backend>(model: &Vla<B>) -> Result<Self> {
        let c = model.config().clone();
        let d = c.d_model;
        let camera = host_values(model.camera_embed.val(), "camera embedding")?;
        let patch_pos = host_values(model.patch_pos_embed.val(), "patch embedding")?;
        let mut patch_add = Vec::with_capacity(c.n_cameras * c.patches_per_camera * d);
        for cam in 0..c.n_cameras {
            for p in 0..c.patches_per_camera {
                patch_add.extend(
                    camera[cam * d..(cam + 1) * d]
                        .iter()
                        .zip(&patch_pos[p * d..(p + 1) * d])
                        .map(|(a, b)| a + b),
                );
            }
        }
        let blocks = model
            .layers
            .iter()
            .map(|b: &Block<B>| {
                let a = &b.self_attn;
                Ok(HostBlock {
                    input_norm: host_values(b.input_layernorm.gamma.val(), "norm")?,
                    qkv: side_by_side(
                        &[
                            host_values(a.q_proj.weight.val(), "q_proj")?,
                            host_values(a.k_proj.weight.val(), "k_proj")?,
                            host_values(a.v_proj.weight.val(), "v_proj")?,
                        ],
                        d,
                    ),
                    o: host_values(a.o_proj.weight.val(), "o_proj")?,
                    post_norm: host_values(b.post_attention_layernorm.gamma.val(), "norm")?,
                    gate_up: side_by_side(
                        &[
                            host_values(b.mlp.gate_proj.weight.val(), "gate_proj")?,
                            host_values(b.mlp.up_proj.weight.val(), "up_proj")?,
                        ],
                        d,
                    ),
                    down: host_values(b.mlp.down_proj.weight.val(), "down_proj")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch_embed: linear(&model.patch_embed, "patch_embed")?,
            patch_add,
            missing: host_values(model.missing_embed.val(), "missing embedding")?,
            proprio: linear(&model.proprio_embed, "proprio_embed")?,
            instruction: host_values(model.instruction_embed.val(), "instruction embedding")?,
            readout: host_values(model.readout.val(), "readout")?,
            memory: model
                .memory_token
                .as_ref()
                .map(|m| host_values(m.val(), "memory token"))
                .transpose()?,
            blocks,
            norm: host_values(model.norm.gamma.val(), "norm")?,
            action: linear(&model.action_head, "action_head")?,
            cue: model
                .cue_head
                .as_ref()
                .map(|h| linear(h, "cue_head"))
                .transpose()?,
            config: c,
        })
    }
}

/// Per-step buffers, reused.
#[derive(Debug, Default)]
struct Buffers {
    /// Residual stream `[tokens, d_model]`.
    x: Vec<f32>,
    /// Normed rows `[tokens, d_model]`.
    h: Vec<f32>,
    /// Fused projections `[tokens, (n_heads + 2 · n_kv_heads) · head_dim]`.
    qkv: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Attention output `[rows, n_heads · head_dim]`.
    attn: Vec<f32>,
    /// Gate and up `[rows, 2 · ffn_dim]`, then SwiGLU `[rows, ffn_dim]`.
    gate_up: Vec<f32>,
    act: Vec<f32>,
    /// A layer's stored bank keys and the bank-read scores (`BankEviction::Read`).
    bank_keys: Vec<f32>,
    bank_scores: Vec<f32>,
}

/// A frame-step's memory token in [`HostPath::run`]: row `row` of the step goes to `bank`'s
/// reservation; with `reads`, the attention the readouts give each stored token is added
/// there (one value per stored token).
pub(crate) struct BankStep<'a> {
    pub bank: &'a mut KvCache,
    pub row: usize,
    pub reads: Option<&'a mut [f32]>,
}

/// Working state of the host path, kept by a [`super::Stream`] from step to step.
#[derive(Debug)]
pub(crate) struct HostPath {
    weights: HostWeights,
    rope: RopeTableCache<HostRope>,
    scratch: AttentionScratch,
    buf: Buffers,
}

impl HostPath {
    /// The host engine of `model`: its weights copied to the host once.
    ///
    /// # Errors
    /// [`Error::Shape`] if the weights cannot be read.
    pub(crate) fn new<B: Backend>(model: &Vla<B>) -> Result<Self> {
        Ok(Self {
            weights: HostWeights::new(model)?,
            rope: RopeTableCache::default(),
            scratch: AttentionScratch::default(),
            buf: Buffers::default(),
        })
    }

    /// Embeds the instruction tokens `ids` into the residual stream.
    pub(crate) fn embed_instruction(&mut self, ids: &[i64]) -> Result<usize> {
        let d = self.weights.config.d_model;
        let x = &mut self.buf.x;
        x.clear();
        for id in ids {
            let row = usize::try_from(*id)
                .ok()
                .filter(|i| (i + 1) * d <= self.weights.instruction.len())
                .ok_or_else(|| Error::shape("instruction", format!("token id {id}")))?;
            x.extend_from_slice(&self.weights.instruction[row * d..(row + 1) * d]);
        }
        Ok(ids.len())
    }

    /// Embeds one checked frame-step, its memory token (models with a memory) and the readout
    /// tokens into the residual stream: [`VlaConfig::step_rows`] rows.
    pub(crate) fn embed_step(&mut self, step: &StepInput<'_>) -> Result<usize> {
        let w = &self.weights;
        let c = &w.config;
        let d = c.d_model;
        let n = c.n_cameras * c.patches_per_camera;
        let mem = usize::from(w.memory.is_some());
        let rows = n + 1 + mem + c.n_readout;
        let x = &mut self.buf.x;
        x.clear();
        x.resize(rows * d, 0.0);
        // Patch tokens: content (patch embedding, or the missing embedding) + camera + index.
        matmul(
            MatMut::rows(&mut x[..n * d], n, d, d),
            Mat::rows(step.patches, n, c.patch_dim, c.patch_dim),
            Mat::rows(&w.patch_embed.weight, c.patch_dim, d, d),
            Write::Overwrite,
            Threads::Pool,
        )?;
        for (p, token) in x[..n * d].chunks_exact_mut(d).enumerate() {
            let add = &w.patch_add[p * d..(p + 1) * d];
            if step.camera_present[p / c.patches_per_camera] {
                for ((t, b), a) in token.iter_mut().zip(&w.patch_embed.bias).zip(add) {
                    *t += b + a;
                }
            } else {
                for ((t, m), a) in token.iter_mut().zip(&w.missing).zip(add) {
                    *t = m + a;
                }
            }
        }
        // The proprio token, then the readouts.
        let proprio = &mut x[n * d..(n + 1) * d];
        proprio.copy_from_slice(&w.proprio.bias);
        for (i, p) in step.proprio.iter().enumerate() {
            for (t, wv) in proprio
                .iter_mut()
                .zip(&w.proprio.weight[i * d..(i + 1) * d])
            {
                *t += p * wv;
            }
        }
        if let Some(m) = &w.memory {
            x[(n + 1) * d..(n + 2) * d].copy_from_slice(m);
        }
        x[(n + 1 + mem) * d..].copy_from_slice(&w.readout);
        Ok(rows)
    }

    /// Runs the `tokens` rows of the residual stream through the backbone on top of `cache`
    /// (a block of `store` tokens reserved at slot `past`); the first `store` rows' keys and
    /// values are written into the reservation. With a [`BankStep`], its row `m` is the
    /// step's memory token: its keys and values go to the bank's reservation, and every row
    /// attends to the bank's tokens without RoPE (row `m` itself only from row `m` on)
    /// instead of to it as a cached token. With its `reads`, the attention the readouts (the
    /// rows after the memory token) give each stored bank token, averaged over layers, heads
    /// and readouts ([`crate::attention::bank_reads`]), is added to `reads`.
    /// Returns the final-norm hidden states of the rows that are not stored and not the memory
    /// token (all rows when all are stored), `[rows, d_model]`.
    ///
    /// # Errors
    /// [`Error::Shape`] for inconsistent sizes (cache, rope table, a memory token without a
    /// bank).
    pub(crate) fn run(
        &mut self,
        config: &VlaConfig,
        cache: &mut KvCache,
        tokens: usize,
        store: usize,
        bank: Option<BankStep<'_>>,
    ) -> Result<&[f32]> {
        if bank.as_ref().is_some_and(|b| {
            b.row < store
                || b.row >= tokens
                || b.reads.as_ref().is_some_and(|r| r.len() != b.bank.len())
        }) {
            return Err(Error::shape(
                "host step",
                "a memory token needs a row after the stored ones; bank reads one value per stored token",
            ));
        }
        // The whole step runs on a thread of the rayon pool (a scope entered from outside the
        // pool moves there): its dozens of parallel regions then fork from a pool thread
        // instead of each waking the pool from outside (measured: ~15% of a short step was
        // spent in the scheduler before).
        rayon::scope(|_| self.layers(config, cache, tokens, store, bank))?;
        Ok(&self.buf.h)
    }

    fn layers(
        &mut self,
        config: &VlaConfig,
        cache: &mut KvCache,
        tokens: usize,
        store: usize,
        bank: Option<BankStep<'_>>,
    ) -> Result<()> {
        let memory = bank.as_ref().map(|b| b.row);
        let (mut bank, mut reads) = match bank {
            Some(b) => (Some(b.bank), b.reads),
            None => (None, None),
        };
        let past = cache.len();
        let c = &self.weights.config;
        let (d, heads, kv, hd, ffn) = (c.d_model, c.n_heads, c.n_kv_heads, c.head_dim(), c.ffn_dim);
        let eps = c.rms_norm_eps as f32;
        let (qw, kvw) = (heads * hd, kv * hd);
        let width = qw + 2 * kvw;
        let last = self.weights.blocks.len().saturating_sub(1);
        // Rows whose outputs are read: those after the stored ones and the memory token.
        let from = if store < tokens {
            memory.map_or(store, |m| m + 1)
        } else {
            0
        };
        let rope = self.rope.get(config, past + tokens, |freqs, span| {
            Ok(HostRope::new(freqs.clone(), span))
        })?;
        let b = &mut self.buf;
        if b.x.len() != tokens * d {
            return Err(Error::shape(
                "host step",
                "residual stream of the wrong size",
            ));
        }
        for (layer, w) in self.weights.blocks.iter().enumerate() {
            // The last layer computes outputs only for the rows that are read.
            let first = if layer == last { from } else { 0 };
            let rows = tokens - first;
            b.h.resize(tokens * d, 0.0);
            elementwise(RmsNorm {
                x: &b.x,
                gamma: &w.input_norm,
                eps,
                out: &mut b.h,
            });
            b.qkv.resize(tokens * width, 0.0);
            matmul(
                MatMut::rows(&mut b.qkv, tokens, width, width),
                Mat::rows(&b.h, tokens, d, d),
                Mat::rows(&w.qkv, d, width, width),
                Write::Overwrite,
                Threads::Pool,
            )?;
            b.q.clear();
            b.k.clear();
            b.v.clear();
            for (t, r) in b.qkv.chunks_exact(width).enumerate() {
                if t >= first {
                    b.q.extend_from_slice(&r[..qw]);
                }
                b.k.extend_from_slice(&r[qw..qw + kvw]);
                b.v.extend_from_slice(&r[qw + kvw..]);
            }
            if store > 0 {
                cache.write(layer, &b.k[..store * kvw], &b.v[..store * kvw])?;
            }
            if let (Some(bank), Some(m)) = (bank.as_deref_mut(), memory) {
                let row = m * kvw..(m + 1) * kvw;
                bank.write(layer, &b.k[row.clone()], &b.v[row])?;
            }
            if let (Some(out), Some(bank), Some(m), Some(settings)) = (
                reads.as_deref_mut(),
                bank.as_deref(),
                memory,
                &config.memory,
            ) {
                // The readouts' queries (rows after the memory token) over the stored tokens
                // and the step's own memory token.
                let readouts = tokens - m - 1;
                let weight = 1.0 / (self.weights.blocks.len() * heads * readouts.max(1)) as f32;
                bank.read_keys(layer, &mut b.bank_keys)?;
                crate::attention::bank_reads(
                    &b.q[(m + 1 - first) * qw..],
                    &b.bank_keys,
                    &b.k[m * kvw..(m + 1) * kvw],
                    (heads, kv, hd),
                    settings.bank_score_factor(bank.len() + 1),
                    weight,
                    &mut b.bank_scores,
                    out,
                )?;
            }
            let bank_input = match (bank.as_deref(), memory, &config.memory) {
                (Some(bank), Some(m), Some(settings)) => Some(BankInput {
                    cached: bank.view(layer)?,
                    new: m,
                    config: settings,
                }),
                _ => None,
            };
            attend(
                &AttendInput {
                    q: &b.q,
                    k_new: &b.k,
                    v_new: &b.v,
                    cached: cache.view(layer)?,
                    past,
                    tk_new: tokens,
                    q_first: first,
                    n_heads: heads,
                    n_kv_heads: kv,
                    head_dim: hd,
                    bank: bank_input,
                },
                rope,
                &mut self.scratch,
                &mut b.attn,
            )?;
            if first > 0 {
                b.x.drain(..first * d);
            }
            // x += attn · o; x += down(silu(gate(norm x)) · up(norm x)).
            matmul(
                MatMut::rows(&mut b.x, rows, d, d),
                Mat::rows(&b.attn, rows, qw, qw),
                Mat::rows(&w.o, qw, d, d),
                Write::Accumulate,
                Threads::Pool,
            )?;
            b.h.resize(rows * d, 0.0);
            elementwise(RmsNorm {
                x: &b.x,
                gamma: &w.post_norm,
                eps,
                out: &mut b.h[..rows * d],
            });
            b.gate_up.resize(rows * 2 * ffn, 0.0);
            matmul(
                MatMut::rows(&mut b.gate_up, rows, 2 * ffn, 2 * ffn),
                Mat::rows(&b.h, rows, d, d),
                Mat::rows(&w.gate_up, d, 2 * ffn, 2 * ffn),
                Write::Overwrite,
                Threads::Pool,
            )?;
            b.act.resize(rows * ffn, 0.0);
            elementwise(SwiGlu {
                gate_up: &b.gate_up,
                ffn,
                out: &mut b.act,
            });
            matmul(
                MatMut::rows(&mut b.x, rows, d, d),
                Mat::rows(&b.act, rows, ffn, ffn),
                Mat::rows(&w.down, ffn, d, d),
                Write::Accumulate,
                Threads::Pool,
            )?;
        }
        let rows = b.x.len() / d;
        b.h.resize(rows * d, 0.0);
        elementwise(RmsNorm {
            x: &b.x,
            gamma: &self.weights.norm,
            eps,
            out: &mut b.h,
        });
        Ok(())
    }

    /// The heads over the final-norm readout rows `[n_readout, d_model]`: the action chunk
    /// values `[horizon · action_dim]` (decoded from their bins' logits with
    /// `action_bins`) and, if the model has one, the cue logits.
    pub(crate) fn heads(&self, readout: &[f32]) -> (Vec<f32>, Option<Vec<f32>>) {
        let head = |l: &HostLinear| {
            let n = l.bias.len();
            let mut out = l.bias.clone();
            for (i, r) in readout.iter().enumerate() {
                for (o, w) in out.iter_mut().zip(&l.weight[i * n..(i + 1) * n]) {
                    *o += r * w;
                }
            }
            out
        };
        (
            self.weights
                .config
                .decode_actions(&head(&self.weights.action)),
            self.weights.cue.as_ref().map(head),
        )
    }
}

/// Runs an element-wise kernel inside the CPU's best SIMD level.
fn elementwise<K: WithSimd<Output = ()>>(kernel: K) {
    Arch::new().dispatch(kernel);
}

/// `out = x / sqrt(mean(x²) + eps) · gamma` per row of `gamma.len()` values (burn's RmsNorm).
struct RmsNorm<'a> {
    x: &'a [f32],
    gamma: &'a [f32],
    eps: f32,
    out: &'a mut [f32],
}

impl WithSimd for RmsNorm<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self) {
        let d = self.gamma.len();
        for (x, out) in self.x.chunks_exact(d).zip(self.out.chunks_exact_mut(d)) {
            let sq = sum_squares_lanes(x);
            let inv = 1.0 / (sq / d as f32 + self.eps).sqrt();
            for ((o, v), g) in out.iter_mut().zip(x).zip(self.gamma) {
                *o = v * inv * g;
            }
        }
    }
}

/// `out = silu(gate) · up` per row of `[gate (ffn), up (ffn)]`.
struct SwiGlu<'a> {
    gate_up: &'a [f32],
    ffn: usize,
    out: &'a mut [f32],
}

impl WithSimd for SwiGlu<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self) {
        let ffn = self.ffn;
        for (row, out) in self
            .gate_up
            .chunks_exact(2 * ffn)
            .zip(self.out.chunks_exact_mut(ffn))
        {
            let (gate, up) = row.split_at(ffn);
            for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
                // sigmoid(g) from e = exp(−|g|) ≤ 1: 1/(1+e) for g ≥ 0, e/(1+e) below.
                let e = fast_exp(-g.abs());
                let num = if *g >= 0.0 { 1.0 } else { e };
                *o = g * (num / (1.0 + e)) * u;
            }
        }
    }
}
