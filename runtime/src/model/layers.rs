//! The backbone's layers: grouped-query attention with RoPE, the SwiGLU MLP and the block
//! around them (RMSNorm → attention → RMSNorm → MLP, with residuals), in HuggingFace
//! `LlamaModel`'s names and shapes, and their three forwards: over a whole sequence, with the
//! memory-efficient training attention, and on top of a cached context.

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::nn::{Linear, LinearConfig, RmsNorm};
use burn::tensor::activation::{silu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use crate::error::Result;
use crate::flash::{AttentionMask, TrainAttention, flash_attention};
use crate::host::float_tensor;
use crate::rope::RotaryTable;

pub(crate) const INIT_STD: f64 = 0.02;

pub(crate) fn linear<B: Backend>(
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

pub(crate) fn param<B: Backend, const D: usize>(
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
    pub(crate) n_heads: usize,
    #[module(skip)]
    pub(crate) n_kv_heads: usize,
    #[module(skip)]
    pub(crate) head_dim: usize,
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
    pub(crate) fn project(&self, h: Tensor<B, 3>) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
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
    pub(crate) fn attend(
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
    pub(crate) fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
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
    pub(crate) fn forward(
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
    pub(crate) fn forward_flash(
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
    pub(crate) fn forward_cached(
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
