//! The training forward with the sequence sharded over N devices (ring attention).
//!
//! The embedded batch sequence (as [`Vla::forward_train`] builds it) is padded to a multiple of
//! 2N tokens and cut into 2N chunks; device r holds chunks r and 2N − 1 − r (zigzag, so every
//! device has the same share of the causal work). Each layer runs the norms, projections, RoPE
//! and MLP on every shard's own device with that device's copy of the weights (a differentiable
//! `to_device` of the parameters, so gradients flow back to the original model), and attention
//! with [`ring_attention_with`]: K/V blocks travel around the ring and every shard merges its
//! partial results exactly. The training mask (causal; readouts seen only by themselves;
//! padding seen by nothing else) becomes one [`AttentionMask`] per (query shard, key shard) pair,
//! shared by all layers; the blocks are computed by the memory-efficient block function of
//! single-device training (`crate::flash`). Device-to-device copies start with the
//! devices idle and wait for each copy (see `ring::fenced`).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{PAD_GROUP, TrainBatch, TrainOutput, Vla, group_ids};
use crate::error::{Error, Result};
use crate::flash::{AttentionMask, TrainAttention};
use crate::ring::{Visibility, fenced, ring_attention_with, sync_all};

/// Global token indices of zigzag shard `r` of `n` over chunks of `chunk` tokens.
fn shard_tokens(r: usize, n: usize, chunk: usize) -> Vec<usize> {
    (r * chunk..(r + 1) * chunk)
        .chain((2 * n - 1 - r) * chunk..(2 * n - r) * chunk)
        .collect()
}

/// The two chunks of zigzag shard `r` of `x` `[batch, len, d]`, concatenated.
fn shard_of<B: Backend>(x: &Tensor<B, 3>, r: usize, n: usize, chunk: usize) -> Tensor<B, 3> {
    Tensor::cat(
        vec![
            x.clone().narrow(1, r * chunk, chunk),
            x.clone().narrow(1, (2 * n - 1 - r) * chunk, chunk),
        ],
        1,
    )
}

impl<B: TrainAttention> Vla<B> {
    /// [`forward_train`](Self::forward_train) with the sequence sharded over `devices` and
    /// attention computed by ring attention; equal to it up to float rounding. Outputs (and
    /// the loss built from them) live on `devices[0]`.
    ///
    /// # Errors
    /// As [`forward_train`](Self::forward_train); [`Error::Shape`] for no devices.
    pub fn forward_train_ring(
        &self,
        batch: &TrainBatch<'_>,
        devices: &[B::Device],
    ) -> Result<TrainOutput<B>> {
        let n = devices.len();
        let Some(home) = devices.first() else {
            return Err(Error::shape("ring training", "no devices"));
        };
        if self.config.memory.is_some() {
            return Err(Error::config(
                "memory",
                "ring training does not support a memory bank yet (train on one device)",
            ));
        }
        let seq = self.train_sequence(batch, home)?;
        let c = &self.config;
        let [n_batch, len, d] = seq.x.dims();
        let chunk = len.div_ceil(2 * n);
        let padded = 2 * n * chunk;
        let x = if padded > len {
            Tensor::cat(
                vec![seq.x, Tensor::zeros([n_batch, padded - len, d], home)],
                1,
            )
        } else {
            seq.x
        };
        // Positions and groups per episode, padded like x (padding: group PAD, position 0).
        let mut positions = Vec::with_capacity(n_batch);
        let mut groups = Vec::with_capacity(n_batch);
        for layout in &seq.layouts {
            let mut p = layout.positions.clone();
            p.resize(padded, 0);
            let mut g = layout.groups.clone();
            g.resize(padded, PAD_GROUP);
            positions.push(p);
            groups.push(g);
        }
        let max_position = seq.padded_sinks + seq.steps * c.tokens_per_step() + c.n_readout;
        let freqs = c.rope.frequencies(Some(max_position));
        let tokens: Vec<Vec<usize>> = (0..n).map(|r| shard_tokens(r, n, chunk)).collect();
        let (heads, hd) = (c.n_heads, c.head_dim());
        let shard_len = 2 * chunk;
        let mut xs = Vec::with_capacity(n);
        let mut tables = Vec::with_capacity(n);
        // Device-to-device copies start with the devices idle and wait for each copy
        // (`ring::fenced` says why).
        sync_all::<B>(devices)?;
        for (r, device) in devices.iter().enumerate() {
            let shard = shard_of(&x, r, n, chunk);
            xs.push(fenced::<B, _>(device, || shard.to_device(device))?);
            let p: Vec<i64> = positions
                .iter()
                .flat_map(|p| tokens[r].iter().map(|&t| p[t]))
                .collect();
            tables.push(freqs.batched_table::<B>(&p, n_batch, device)?);
        }
        // What each query shard may see of each key shard (one mask per pair, shared by the
        // layers).
        let shard_groups: Vec<Vec<i64>> = (0..n)
            .map(|r| group_ids(groups.iter().flat_map(|g| tokens[r].iter().map(|&t| g[t]))))
            .collect();
        let shard_index: Vec<Vec<i64>> = tokens
            .iter()
            .map(|t| t.iter().map(|&i| i as i64).collect())
            .collect();
        let vis: Vec<Vec<Visibility>> = (0..n)
            .map(|r| {
                (0..n)
                    .map(|s| {
                        AttentionMask::grouped(
                            n_batch,
                            shard_index[r].clone(),
                            shard_groups[r].clone(),
                            shard_index[s].clone(),
                            shard_groups[s].clone(),
                        )
                        .map(Visibility::Mask)
                    })
                    .collect::<Result<_>>()
            })
            .collect::<Result<_>>()?;
        // The weights on every device (a differentiable copy; device 0's is the model itself).
        sync_all::<B>(devices)?;
        let replicas: Vec<Vla<B>> = devices
            .iter()
            .map(|device| fenced::<B, _>(device, || self.clone().to_device(device)))
            .collect::<Result<_>>()?;
        let scale = 1.0 / (hd as f64).sqrt();
        for layer in 0..c.n_layers {
            let mut qs = Vec::with_capacity(n);
            let mut ks = Vec::with_capacity(n);
            let mut vs = Vec::with_capacity(n);
            for r in 0..n {
                let block = &replicas[r].layers[layer];
                let (q, k, v) = block
                    .self_attn
                    .project(block.input_layernorm.forward(xs[r].clone()));
                qs.push(tables[r].apply(q)?);
                ks.push(tables[r].apply(k)?);
                vs.push(v);
            }
            let outs = ring_attention_with(qs, ks, vs, devices, scale, |r, s| vis[r][s].clone())?;
            for (r, out) in outs.into_iter().enumerate() {
                let block = &replicas[r].layers[layer];
                let out = out
                    .reshape([n_batch, heads, shard_len, hd])
                    .swap_dims(1, 2)
                    .reshape([n_batch, shard_len, heads * hd]);
                let h = xs[r].clone() + block.self_attn.o_proj.forward(out);
                xs[r] = h.clone() + block.mlp.forward(block.post_attention_layernorm.forward(h));
            }
        }
        // Back on the home device, in sequence order, without the padding.
        let mut chunks: Vec<Option<Tensor<B, 3>>> = (0..2 * n).map(|_| None).collect();
        let normed: Vec<Tensor<B, 3>> = xs
            .into_iter()
            .enumerate()
            .map(|(r, x)| replicas[r].norm.forward(x))
            .collect();
        sync_all::<B>(devices)?;
        for (r, x) in normed.into_iter().enumerate() {
            let h = fenced::<B, _>(home, || x.to_device(home))?;
            chunks[r] = Some(h.clone().narrow(1, 0, chunk));
            chunks[2 * n - 1 - r] = Some(h.narrow(1, chunk, chunk));
        }
        let hidden = Tensor::cat(chunks.into_iter().flatten().collect(), 1).narrow(1, 0, len);
        Ok(self.train_heads(hidden, seq.padded_sinks, seq.steps))
    }
}
