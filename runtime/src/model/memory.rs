//! The training forward of a model with a memory ([`super::MemoryConfig`]): what the rolling
//! cache and the memory bank show every token at run time, for a whole episode at once.
//!
//! A training sequence is `[instruction (padded), step 0: frame tokens, memory token, readouts,
//! step 1: …]`. At run time a token of step `t` attends to (one softmax over all of them):
//! - the **sinks**, at slot positions `0..S`, with its own query at its *slot* position
//!   `S + (t − first) · tokens_per_step + i`, where `first = max(0, t − window + 1)` is the
//!   oldest frame-step the cache still holds;
//! - the **window**: the frame tokens of steps `first..=t` (causal within step `t`) and, for
//!   readouts, the step's earlier readouts, all with RoPE; slot positions differ from the
//!   absolute positions used here by the same offset for query and key, so the rotary
//!   scores are equal;
//! - the **bank**: the memory tokens of steps `t − bank_steps + 1 ..= t` (its own step's
//!   from the memory token on), without RoPE.
//!
//! Here each part is one [`flash_attention`] call (the window's with a sliding window over
//! steps, so its cost grows with the window, not the episode) and the three partial results
//! are merged by their log-sum-exps ([`merge`]), which is the same softmax.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{BankEviction, Block, TrainBatch, TrainOutput, Vla, group_ids};
use crate::error::{Error, Result};
use crate::flash::{AttentionMask, TrainAttention, flash_attention};
use crate::ring::merge;
use crate::rope::RotaryTable;

/// Group of keys that no query sees (sinks and memory tokens in the window's attention).
const HIDDEN: i64 = -2;

/// Where the parts of a training sequence are.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    /// Padded instruction tokens at the start.
    sinks: usize,
    steps: usize,
    /// Tokens per step in the sequence: frame tokens, the memory token, readouts.
    chunk: usize,
    /// Frame tokens per step (the memory token's offset in a chunk).
    frame: usize,
}

/// The three attentions' masks and the two rotary tables.
struct MemoryAttention<B: Backend> {
    window: AttentionMask,
    sinks: AttentionMask,
    bank: AttentionMask,
    /// Absolute positions (queries and keys of the window, the sinks' keys).
    abs: RotaryTable<B>,
    /// Slot positions at run time (queries of the sink attention).
    rel: RotaryTable<B>,
    /// Factor on each token's bank scores `[1, 1, len, 1]` (`MemoryConfig::bank_log_scale`),
    /// or `None` when every factor is 1.
    bank_factor: Option<Tensor<B, 4>>,
    geometry: Geometry,
}

impl<B: Backend> Vla<B> {
    /// [`forward_train`](Self::forward_train) for a model with a memory (see the module docs).
    pub(crate) fn forward_train_memory(
        &self,
        batch: &TrainBatch<'_>,
        device: &B::Device,
    ) -> Result<TrainOutput<B>>
    where
        B: TrainAttention,
    {
        let c = &self.config;
        let Some(memory) = &c.memory else {
            return Err(Error::config("memory", "the model has no memory"));
        };
        if memory.bank_top_k.is_some() {
            return Err(Error::config(
                "memory.bank_top_k",
                "a run-time read of the streaming path: the training forward reads the whole bank (remove it from the training model's config)",
            ));
        }
        let seq = self.train_sequence(batch, device)?;
        if memory.bank_eviction == BankEviction::Read && seq.steps > memory.bank_steps {
            return Err(Error::config(
                "memory.bank_eviction",
                format!(
                    "\"read\" evicts by what later steps read, which the training forward (a FIFO bank) does not model: episodes of {} frame-steps need memory.bank_steps ≥ {} or \"oldest\"",
                    seq.steps, seq.steps
                ),
            ));
        }
        let n_batch = seq.layouts.len();
        let len = seq.layouts[0].positions.len();
        let geometry = Geometry {
            sinks: seq.padded_sinks,
            steps: seq.steps,
            chunk: c.step_rows(),
            frame: c.tokens_per_step(),
        };
        let g = geometry;
        // Step of every token (−1 for the instruction), the same in every episode.
        let step: Vec<i64> = (0..len)
            .map(|i| {
                if i < g.sinks {
                    -1
                } else {
                    ((i - g.sinks) / g.chunk) as i64
                }
            })
            .collect();
        let is_memory = |i: usize| i >= g.sinks && (i - g.sinks) % g.chunk == g.frame;
        let index: Vec<i64> = (0..len as i64).collect();
        // Queries keep their groups; in the window's attention the sinks and the memory tokens
        // are keys no query sees (they have attentions of their own).
        let q_groups = group_ids(seq.layouts.iter().flat_map(|l| l.groups.iter().copied()));
        let k_groups: Vec<i64> = q_groups
            .iter()
            .enumerate()
            .map(|(at, &q)| {
                let i = at % len;
                if q != -1 && (i < g.sinks || is_memory(i)) {
                    HIDDEN
                } else {
                    q
                }
            })
            .collect();
        let sink_groups: Vec<i64> = q_groups
            .chunks(len)
            .flat_map(|episode| episode[..g.sinks].iter().copied())
            .collect();
        let abs: Vec<i64> = seq
            .layouts
            .iter()
            .flat_map(|l| l.positions.iter().copied())
            .collect();
        // At run time the oldest frame-step the cache holds at a token's step sits right behind
        // the sinks (for the instruction, step −1, that is position 0: no shift).
        let window = memory.window_steps as i64;
        let rel: Vec<i64> = abs
            .iter()
            .enumerate()
            .map(|(at, &p)| p - (step[at % len] - window + 1).max(0) * g.frame as i64)
            .collect();
        let memory_index: Vec<i64> = (0..g.steps)
            .map(|k| (g.sinks + k * g.chunk + g.frame) as i64)
            .collect();
        let memory_step: Vec<i64> = (0..g.steps as i64).collect();
        let masks_window = AttentionMask::grouped(
            n_batch,
            index.clone(),
            q_groups.clone(),
            index.clone(),
            k_groups,
        )?
        .with_window(step.clone(), step.clone(), memory.window_steps)?;
        let masks_sinks = AttentionMask::grouped(
            n_batch,
            index.clone(),
            q_groups.clone(),
            index[..g.sinks].to_vec(),
            sink_groups,
        )?;
        let masks_bank = AttentionMask::grouped(
            n_batch,
            index,
            q_groups,
            memory_index,
            vec![0; n_batch * g.steps],
        )?
        .with_window(step, memory_step, memory.bank_steps)?;
        // Frequencies of the longest run-time span: the sinks, the window, the memory token and
        // the readouts (no run-time position goes further).
        let span = c.max_sink_tokens() + memory.window_steps * g.frame + 1 + c.n_readout;
        let freqs = c.rope.frequencies(Some(span));
        // A token of step t sees the memory tokens of the bank's earlier steps, and its own
        // step's from the memory token on.
        let factors: Vec<f32> = (0..len)
            .map(|i| {
                if i < g.sinks {
                    return 1.0;
                }
                let (t, within) = ((i - g.sinks) / g.chunk, (i - g.sinks) % g.chunk);
                let visible = t.min(memory.bank_steps - 1) + usize::from(within >= g.frame);
                memory.bank_score_factor(visible)
            })
            .collect();
        let bank_factor = factors
            .iter()
            .any(|&f| f != 1.0)
            .then(|| crate::host::float_tensor::<B, f32, 4>(factors, [1, 1, len, 1], device));
        let attention = MemoryAttention {
            window: masks_window,
            sinks: masks_sinks,
            bank: masks_bank,
            abs: freqs.batched_table::<B>(&abs, n_batch, device)?,
            rel: freqs.batched_table::<B>(&rel, n_batch, device)?,
            bank_factor,
            geometry,
        };
        let mut x = seq.x;
        for block in &self.layers {
            x = block.forward_memory(x, &attention)?;
        }
        let hidden = self.norm.forward(x);
        Ok(self.train_heads(hidden, seq.padded_sinks, seq.steps))
    }
}

impl<B: Backend> Block<B> {
    /// Block over training sequences of a model with a memory: the window's, the sinks' and
    /// the bank's attention merged into one softmax.
    fn forward_memory(&self, x: Tensor<B, 3>, at: &MemoryAttention<B>) -> Result<Tensor<B, 3>>
    where
        B: TrainAttention,
    {
        let a = &self.self_attn;
        let [batch, seq, _] = x.dims();
        let hd = a.head_dim;
        let g = at.geometry;
        let (q, k, v) = a.project(self.input_layernorm.forward(x.clone()));
        let kv_heads = k.dims()[1];
        let scale = 1.0 / (hd as f64).sqrt();
        let k_abs = at.abs.apply(k.clone())?;
        let window = flash_attention(
            at.abs.apply(q.clone())?,
            k_abs.clone(),
            v.clone(),
            &at.window,
            scale,
        )?;
        let sinks = flash_attention(
            at.rel.apply(q.clone())?,
            k_abs.narrow(2, 0, g.sinks),
            v.clone().narrow(2, 0, g.sinks),
            &at.sinks,
            scale,
        )?;
        // The memory tokens' keys and values, unrotated: [batch, kv_heads, steps, hd].
        let memory_tokens = |t: Tensor<B, 4>| {
            t.narrow(2, g.sinks, g.steps * g.chunk)
                .reshape([batch, kv_heads, g.steps, g.chunk, hd])
                .narrow(3, g.frame, 1)
                .reshape([batch, kv_heads, g.steps, hd])
        };
        let q = match &at.bank_factor {
            Some(f) => q * f.clone(),
            None => q,
        };
        let bank = flash_attention(q, memory_tokens(k), memory_tokens(v), &at.bank, scale)?;
        let out = merge(merge(window, sinks), bank).out;
        let out = out.swap_dims(1, 2).reshape([batch, seq, a.n_heads * hd]);
        let x = x + a.o_proj.forward(out);
        Ok(x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x)))
    }
}
