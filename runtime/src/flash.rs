//! Memory-efficient attention for training (FlashAttention-2's algorithm over burn tensors).
//!
//! Under autodiff, burn 0.21 computes `attention` with the naive operation and keeps every
//! `[len, len]` probability matrix for the backward pass. [`flash_attention`] instead runs as
//! one custom autodiff operation ([`TrainAttention`]):
//!
//! - **forward**: the queries are cut into row blocks; each block is scored against the keys it
//!   may see (a causal block stops at its last visible key), softmaxed and multiplied by the
//!   values. Only the output and each row's log-sum-exp (LSE) are kept.
//! - **backward**: each block's scores are recomputed, `P = exp(S − LSE)`, and
//!   `dS = P ∘ (dP − D)` with `D = rowsum(dO ∘ O) − dLSE` gives dQ, dK and dV block by block.
//!
//! The mask is never a dense `[len, len]` tensor: [`AttentionMask`] holds each token's global
//! index and visibility group, and each block's bias `[batch, rows, keys]` is generated from
//! them on the device. Peak memory is a few score blocks of `batch · heads · rows · keys`
//! values, bounded by [`BLOCK_ELEMENTS`] (unless one row alone exceeds it).
//!
//! The operation returns the log-sum-exp beside the output and is differentiable in both, so
//! the ring kernels ([`crate::ring`]) merge partial results of the same function.
//!
//! Backends: [`TrainAttention`] is implemented for the forward-only backends edgevla runs on
//! (`NdArray<f32>`, and with the `cuda` feature `Cuda<f32, i32>` and [`CudaFused`]), whose default methods are
//! the blockwise forward and backward in burn tensor operations, and for `Autodiff<B>` over any
//! of them, where it registers the backward step.

use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Int, Tensor, TensorData, TensorPrimitive};

use crate::error::{Error, Result};
use crate::ring::Partial;

/// Target size of one block of scores, in values (`batch · heads · rows · keys`): 2^27 f32
/// values = 512 MiB; the backward pass holds about four such blocks at once.
pub const BLOCK_ELEMENTS: usize = 1 << 27;

/// Granularity of the keys a causal block reads (see `AttentionMask::key_range`).
pub const KEY_STEP: usize = 256;

/// Log-sum-exp given to a query row that sees no key (its output is zero): `ln(f32::MIN_POSITIVE)`
/// ≈ −87.3, so a merge with any block that shows the row a key gives that block all the weight.
pub fn empty_row_lse() -> f32 {
    f32::MIN_POSITIVE.ln()
}

/// Which keys each query sees, from per-token metadata (never a dense matrix).
///
/// Query `i` of episode `e` sees key `j` when (if causal) `k_index[j] ≤ q_index[i]` and either
/// the key is context (group 0) and the query is not padding (group −1), or both are in the same
/// group. With every group 0 this is plain causal attention (or full attention when not causal);
/// the training layout gives each step's readouts their own group, so later tokens never see
/// them, and instruction padding group −1.
#[derive(Clone, Debug)]
pub struct AttentionMask {
    batch: usize,
    causal: bool,
    q_index: Arc<Vec<i64>>,
    k_index: Arc<Vec<i64>>,
    q_groups: Arc<Vec<i64>>,
    k_groups: Arc<Vec<i64>>,
    window: Option<Window>,
}

/// A sliding window over steps: query `i` sees key `j` only if `k_step[j] > q_step[i] − span`.
#[derive(Clone, Debug)]
struct Window {
    q_step: Arc<Vec<i64>>,
    k_step: Arc<Vec<i64>>,
    span: i64,
}

impl AttentionMask {
    /// Causal attention of `len` queries over the same `len` keys, for `batch` episodes.
    pub fn causal(batch: usize, len: usize) -> Self {
        let index: Arc<Vec<i64>> = Arc::new((0..len as i64).collect());
        let groups = Arc::new(vec![0; batch * len]);
        Self {
            batch,
            causal: true,
            q_index: index.clone(),
            k_index: index,
            q_groups: groups.clone(),
            k_groups: groups,
            window: None,
        }
    }

    /// Every query sees every key.
    pub fn full(batch: usize, tq: usize, tk: usize) -> Self {
        Self {
            batch,
            causal: false,
            q_index: Arc::new(vec![0; tq]),
            k_index: Arc::new(vec![0; tk]),
            q_groups: Arc::new(vec![0; batch * tq]),
            k_groups: Arc::new(vec![0; batch * tk]),
            window: None,
        }
    }

    /// Block-causal attention with visibility groups (see the type's docs).
    ///
    /// # Shapes
    /// - `q_index`: `[tq]`, `k_index`: `[tk]` global token indices (the same for every episode)
    /// - `q_groups`: `[batch, tq]`, `k_groups`: `[batch, tk]` flattened; −1 marks padding
    ///
    /// # Errors
    /// [`Error::Shape`] if the group lists do not match the index lists and `batch`.
    pub fn grouped(
        batch: usize,
        q_index: Vec<i64>,
        q_groups: Vec<i64>,
        k_index: Vec<i64>,
        k_groups: Vec<i64>,
    ) -> Result<Self> {
        if batch == 0
            || q_groups.len() != batch * q_index.len()
            || k_groups.len() != batch * k_index.len()
        {
            return Err(Error::shape(
                "attention mask",
                format!(
                    "{batch} episodes × {} queries and {} keys need {} and {} group ids; got {} and {}",
                    q_index.len(),
                    k_index.len(),
                    batch * q_index.len(),
                    batch * k_index.len(),
                    q_groups.len(),
                    k_groups.len()
                ),
            ));
        }
        Ok(Self {
            batch,
            causal: true,
            q_index: Arc::new(q_index),
            k_index: Arc::new(k_index),
            q_groups: Arc::new(q_groups),
            k_groups: Arc::new(k_groups),
            window: None,
        })
    }

    /// Adds a sliding window over steps: query `i` (at step `q_step[i]`) sees key `j` only if
    /// `k_step[j] > q_step[i] − span`, besides the other rules. With ascending `k_step` a
    /// block of queries reads only the keys from its window's first step on (rounded down to
    /// the key step).
    ///
    /// # Errors
    /// [`Error::Shape`] if the step lists do not match the queries and keys, or `span` is 0.
    pub fn with_window(mut self, q_step: Vec<i64>, k_step: Vec<i64>, span: usize) -> Result<Self> {
        if q_step.len() != self.queries() || k_step.len() != self.keys() || span == 0 {
            return Err(Error::shape(
                "attention window",
                format!(
                    "{} query and {} key steps (span {span}) for {} queries and {} keys",
                    q_step.len(),
                    k_step.len(),
                    self.queries(),
                    self.keys()
                ),
            ));
        }
        self.window = Some(Window {
            q_step: Arc::new(q_step),
            k_step: Arc::new(k_step),
            span: span as i64,
        });
        Ok(self)
    }

    /// Number of episodes.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Number of queries.
    pub fn queries(&self) -> usize {
        self.q_index.len()
    }

    /// Number of keys.
    pub fn keys(&self) -> usize {
        self.k_index.len()
    }

    /// About how many keys one query row reads: all of them, or with a window over steps
    /// the keys of `span + 1` steps (plus a key step of rounding).
    fn keys_per_row(&self) -> usize {
        let tk = self.keys();
        match &self.window {
            Some(w) => {
                let (lo, hi) = (w.k_step.first(), w.k_step.last());
                let steps = match (lo, hi) {
                    (Some(lo), Some(hi)) if hi > lo => (hi - lo + 1) as usize,
                    _ => 1,
                };
                let per_step = tk.div_ceil(steps);
                (per_step * (w.span as usize + 1) + KEY_STEP).min(tk)
            }
            None => tk,
        }
    }

    /// Whether query `i` of episode `e` sees key `j` (the rule, evaluated on the host).
    pub fn visible(&self, e: usize, i: usize, j: usize) -> bool {
        let (tq, tk) = (self.queries(), self.keys());
        let (gi, gj) = (self.q_groups[e * tq + i], self.k_groups[e * tk + j]);
        let in_window = self
            .window
            .as_ref()
            .is_none_or(|w| w.k_step[j] > w.q_step[i] - w.span);
        (!self.causal || self.k_index[j] <= self.q_index[i])
            && ((gj == 0 && gi != -1) || gj == gi)
            && in_window
    }

    /// The keys that queries `rows` may see, as one range: with ascending key indices a causal
    /// block needs only the keys up to its latest query, and with a window over ascending
    /// steps only those from its earliest query's window on (both rounded outwards to a multiple of
    /// `step`, [`KEY_STEP`] by default, so a long sequence's blocks share few distinct shapes: a
    /// GPU backend compiles and tunes kernels per shape); otherwise all of them. Empty when
    /// they see none.
    fn key_range(&self, rows: std::ops::Range<usize>, step: usize) -> std::ops::Range<usize> {
        let tk = self.keys();
        let step = step.max(1);
        let end = if !self.causal || !self.k_index.is_sorted() {
            tk
        } else {
            let last = self.q_index[rows.clone()]
                .iter()
                .copied()
                .max()
                .unwrap_or(i64::MIN);
            match self.k_index.partition_point(|&k| k <= last) {
                0 => 0,
                end => end.next_multiple_of(step).min(tk),
            }
        };
        let start = match &self.window {
            Some(w) if w.k_step.is_sorted() => {
                let first = w.q_step[rows].iter().copied().min().unwrap_or(i64::MAX);
                let lo = first.saturating_sub(w.span);
                let start = w.k_step.partition_point(|&s| s <= lo);
                start - start % step
            }
            _ => 0,
        };
        if start >= end { 0..0 } else { start..end }
    }

    /// The additive bias `[batch, 1, 1, rows, keys]` (0 visible, −∞ hidden) of query rows `rows`
    /// over the keys `range`, built on `device` from the index and group lists.
    fn block_bias<B: Backend>(
        &self,
        rows: std::ops::Range<usize>,
        range: std::ops::Range<usize>,
        device: &B::Device,
    ) -> Tensor<B, 5> {
        let (tq, tk, batch) = (self.queries(), self.keys(), self.batch);
        let n = rows.len();
        let keys = range.len();
        let shape = [batch, n, keys];
        let int = |values: Vec<i64>, dims: [usize; 3]| {
            Tensor::<B, 3, Int>::from_data(TensorData::new(values, dims), device).expand(shape)
        };
        let gq: Vec<i64> = (0..batch)
            .flat_map(|e| self.q_groups[e * tq + rows.start..e * tq + rows.end].iter())
            .copied()
            .collect();
        let gk: Vec<i64> = (0..batch)
            .flat_map(|e| self.k_groups[e * tk + range.start..e * tk + range.end].iter())
            .copied()
            .collect();
        let gi = int(gq, [batch, n, 1]);
        let gj = int(gk, [batch, 1, keys]);
        let context = gj
            .clone()
            .equal_elem(0)
            .bool_and(gi.clone().not_equal_elem(-1));
        let mut mask = context.bool_or(gj.equal(gi));
        if self.causal {
            let qi = int(self.q_index[rows.clone()].to_vec(), [1, n, 1]);
            let kj = int(self.k_index[range.clone()].to_vec(), [1, 1, keys]);
            mask = mask.bool_and(kj.lower_equal(qi));
        }
        if let Some(w) = &self.window {
            // k_step > q_step − span  ⇔  k_step + span > q_step
            let qs = int(w.q_step[rows].to_vec(), [1, n, 1]);
            let ks = int(
                w.k_step[range].iter().map(|s| s + w.span).collect(),
                [1, 1, keys],
            );
            mask = mask.bool_and(ks.greater(qs));
        }
        Tensor::<B, 3>::full(shape, f32::NEG_INFINITY, device)
            .mask_fill(mask, 0.0)
            .reshape([batch, 1, 1, n, keys])
    }

    /// Query-row blocks of at most `rows` rows.
    fn blocks(&self, rows: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
        let tq = self.queries();
        let rows = rows.max(1);
        (0..tq.div_ceil(rows)).map(move |b| b * rows..((b + 1) * rows).min(tq))
    }
}

/// Rows per block so that one block of scores holds about [`BLOCK_ELEMENTS`] values.
pub fn block_rows(batch: usize, heads: usize, keys: usize) -> usize {
    (BLOCK_ELEMENTS / (batch * heads * keys).max(1)).max(16)
}

/// The attention of one training call: the shapes, mask and softmax scale.
#[derive(Clone, Debug)]
pub struct FlashSpec {
    /// Which keys each query sees.
    pub mask: AttentionMask,
    /// Softmax scale (usually `1/√head_dim`).
    pub scale: f64,
    /// Query rows per block.
    pub block_rows: usize,
    /// A causal block reads its keys up to a multiple of this.
    pub key_step: usize,
}

/// A backend that runs [`flash_attention`]: a blockwise forward (and, for the forward-only
/// backends, the blockwise backward it calls). The default methods are generic burn tensor
/// code; `Autodiff<B>` overrides the forward to register the backward step.
pub trait TrainAttention: Backend {
    /// Output and log-sum-exp side by side, `[batch, heads, tq, head_dim + 1]`.
    ///
    /// # Shapes
    /// - `q`: `[batch, heads, tq, head_dim]`; `k`, `v`: `[batch, kv_heads, tk, head_dim]`
    fn flash_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        spec: &FlashSpec,
    ) -> FloatTensor<Self> {
        let (q, k, v) = (float::<Self>(q), float::<Self>(k), float::<Self>(v));
        forward_blocks(q, k, v, spec).into_primitive().tensor()
    }

    /// Gradients `(dq, dk, dv)` of [`flash_forward`](Self::flash_forward) given the gradient
    /// of its output `[batch, heads, tq, head_dim + 1]` (the last column: of the LSE).
    fn flash_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: &FlashSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dq, dk, dv) = backward_blocks(
            float::<Self>(q),
            float::<Self>(k),
            float::<Self>(v),
            float::<Self>(out),
            float::<Self>(grad),
            spec,
        );
        (
            dq.into_primitive().tensor(),
            dk.into_primitive().tensor(),
            dv.into_primitive().tensor(),
        )
    }
}

fn float<B: Backend>(t: FloatTensor<B>) -> Tensor<B, 4> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

#[cfg(feature = "ndarray")]
impl TrainAttention for burn::backend::NdArray<f32> {}

#[cfg(feature = "cuda")]
impl TrainAttention for burn::backend::Cuda<f32, i32> {}

/// The CUDA backend with burn-fusion (burn's `Cuda` is the plain `CubeBackend` here: the
/// workspace builds burn-cuda without its default features).
#[cfg(feature = "cuda")]
pub type CudaFused =
    burn_fusion::Fusion<burn_cubecl::CubeBackend<burn::cubecl::cuda::CudaRuntime, f32, i32, u8>>;

#[cfg(feature = "cuda")]
impl TrainAttention for CudaFused {}

#[derive(Debug)]
struct FlashBackward;

impl<B: TrainAttention> Backward<B, 3> for FlashBackward {
    /// q, k, v, the output (with LSE) and the spec.
    type State = (
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FloatTensor<B>,
        FlashSpec,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (q, k, v, out, spec) = ops.state;
        let (dq, dk, dv) = B::flash_backward(q, k, v, out, grad, &spec);
        for (node, g) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: TrainAttention, C: CheckpointStrategy> TrainAttention for Autodiff<B, C> {
    fn flash_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        spec: &FlashSpec,
    ) -> FloatTensor<Self> {
        match FlashBackward
            .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = B::flash_forward(
                    q.primitive.clone(),
                    k.primitive.clone(),
                    v.primitive.clone(),
                    spec,
                );
                let state = (
                    q.primitive,
                    k.primitive,
                    v.primitive,
                    out.clone(),
                    spec.clone(),
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::flash_forward(
                q.primitive,
                k.primitive,
                v.primitive,
                spec,
            )),
        }
    }
}

/// Memory-efficient attention (see the module docs) with grouped K/V heads: query head `h`
/// reads K/V head `h / (heads / kv_heads)`. Rows that see no key get a zero output and the LSE
/// [`empty_row_lse`]. Differentiable in the output and the LSE under `Autodiff`.
///
/// # Shapes
/// - `q`: `[batch, heads, tq, head_dim]`; `k`, `v`: `[batch, kv_heads, tk, head_dim]`
/// - output: [`Partial`] with `out` like `q` and `lse` `[batch, heads, tq, 1]`
///
/// # Errors
/// [`Error::Shape`] if the shapes do not agree with each other or with the mask.
pub fn flash_attention<B: TrainAttention>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttentionMask,
    scale: f64,
) -> Result<Partial<B>> {
    let [batch, heads, _, _] = q.dims();
    let rows = block_rows(batch, heads, mask.keys_per_row());
    flash_attention_blocked(q, k, v, mask, scale, rows, KEY_STEP)
}

/// [`flash_attention`] with an explicit number of query rows per block, and causal blocks
/// reading their keys up to a multiple of `key_step`.
///
/// # Errors
/// As [`flash_attention`].
pub fn flash_attention_blocked<B: TrainAttention>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttentionMask,
    scale: f64,
    block_rows: usize,
    key_step: usize,
) -> Result<Partial<B>> {
    let [batch, heads, tq, hd] = q.dims();
    let [_, kv_heads, tk, _] = k.dims();
    if kv_heads == 0
        || !heads.is_multiple_of(kv_heads)
        || k.dims() != [batch, kv_heads, tk, hd]
        || v.dims() != [batch, kv_heads, tk, hd]
        || mask.batch != batch
        || mask.queries() != tq
        || mask.keys() != tk
    {
        return Err(Error::shape(
            "flash attention",
            format!(
                "q {:?}, k {:?}, v {:?}, mask for {} × {} queries × {} keys",
                q.dims(),
                k.dims(),
                v.dims(),
                mask.batch,
                mask.queries(),
                mask.keys()
            ),
        ));
    }
    let spec = FlashSpec {
        mask: mask.clone(),
        scale,
        block_rows: block_rows.max(1),
        key_step: key_step.max(1),
    };
    let both = float::<B>(B::flash_forward(
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
        &spec,
    ));
    Ok(Partial {
        out: both.clone().narrow(3, 0, hd),
        lse: both.narrow(3, hd, 1),
    })
}

/// Scores of query rows `rows` over the keys `range` with the mask's bias, grouped:
/// `[batch, kv_heads, rep · rows, keys]`, and the grouped queries `[batch, kv_heads, rep · rows, hd]`.
fn block_scores<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    spec: &FlashSpec,
    rows: std::ops::Range<usize>,
    range: std::ops::Range<usize>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let keys = range.len();
    let [batch, heads, _, hd] = q.dims();
    let kv_heads = k.dims()[1];
    let rep = heads / kv_heads;
    let n = rows.len();
    let qb = q
        .clone()
        .narrow(2, rows.start, n)
        .reshape([batch, kv_heads, rep * n, hd]);
    let kb = k.clone().narrow(2, range.start, keys);
    let scores = qb.clone().matmul(kb.swap_dims(2, 3)) * spec.scale;
    let bias = spec.mask.block_bias::<B>(rows, range, &q.device());
    let scores = (scores.reshape([batch, kv_heads, rep, n, keys]) + bias).reshape([
        batch,
        kv_heads,
        rep * n,
        keys,
    ]);
    (scores, qb)
}

/// The blockwise forward: `[batch, heads, tq, hd + 1]` (output | LSE).
fn forward_blocks<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    spec: &FlashSpec,
) -> Tensor<B, 4> {
    let [batch, heads, _, hd] = q.dims();
    let device = q.device();
    let mut parts = Vec::new();
    for rows in spec.mask.blocks(spec.block_rows) {
        let n = rows.len();
        let range = spec.mask.key_range(rows.clone(), spec.key_step);
        if range.is_empty() {
            let empty = Tensor::<B, 4>::zeros([batch, heads, n, hd], &device);
            let lse = Tensor::<B, 4>::full([batch, heads, n, 1], empty_row_lse(), &device);
            parts.push(Tensor::cat(vec![empty, lse], 3));
            continue;
        }
        let (scores, _) = block_scores(&q, &k, spec, rows, range.clone());
        // A row that sees no key (max −∞) gets max 0, output 0 and LSE ln(MIN_POSITIVE).
        let max = scores.clone().max_dim(3);
        let max = max.clone().mask_fill(max.is_inf(), 0.0);
        let p = (scores - max.clone()).exp();
        let sum = p.clone().sum_dim(3).clamp_min(f32::MIN_POSITIVE);
        let out = p.matmul(v.clone().narrow(2, range.start, range.len())) / sum.clone();
        let lse = max + sum.log();
        parts.push(Tensor::cat(vec![out, lse], 3).reshape([batch, heads, n, hd + 1]));
    }
    Tensor::cat(parts, 2)
}

/// The blockwise backward: `(dq, dk, dv)` from the gradient of `[output | LSE]`.
fn backward_blocks<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    out: Tensor<B, 4>,
    grad: Tensor<B, 4>,
    spec: &FlashSpec,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [batch, heads, tq, hd] = q.dims();
    let [_, kv_heads, tk, _] = k.dims();
    let rep = heads / kv_heads;
    let device = q.device();
    let d_out = grad.clone().narrow(3, 0, hd);
    let d_lse = grad.narrow(3, hd, 1);
    let lse = out.clone().narrow(3, hd, 1);
    // D = rowsum(dO ∘ O) − dLSE  [batch, heads, tq, 1]
    let delta = (d_out.clone() * out.narrow(3, 0, hd)).sum_dim(3) - d_lse;
    let mut dq_parts = Vec::new();
    let mut dk = Tensor::<B, 4>::zeros([batch, kv_heads, tk, hd], &device);
    let mut dv = Tensor::<B, 4>::zeros([batch, kv_heads, tk, hd], &device);
    let group = |t: Tensor<B, 4>, rows: &std::ops::Range<usize>, width: usize| {
        t.narrow(2, rows.start, rows.len())
            .reshape([batch, kv_heads, rep * rows.len(), width])
    };
    for rows in spec.mask.blocks(spec.block_rows) {
        let n = rows.len();
        let range = spec.mask.key_range(rows.clone(), spec.key_step);
        if range.is_empty() {
            dq_parts.push(Tensor::zeros([batch, heads, n, hd], &device));
            continue;
        }
        let (scores, qb) = block_scores(&q, &k, spec, rows.clone(), range.clone());
        let p = (scores - group(lse.clone(), &rows, 1)).exp(); // [b, kv, rep·n, keys]
        let dob = group(d_out.clone(), &rows, hd);
        let kb = k.clone().narrow(2, range.start, range.len());
        let vb = v.clone().narrow(2, range.start, range.len());
        let dv_part = p.clone().swap_dims(2, 3).matmul(dob.clone()); // [b, kv, keys, hd]
        let dp = dob.matmul(vb.swap_dims(2, 3));
        let ds = p * (dp - group(delta.clone(), &rows, 1));
        let dq_part = ds.clone().matmul(kb) * spec.scale;
        let dk_part = ds.swap_dims(2, 3).matmul(qb) * spec.scale;
        dq_parts.push(dq_part.reshape([batch, heads, n, hd]));
        if range == (0..tk) {
            dk = dk + dk_part;
            dv = dv + dv_part;
        } else {
            let span = [0..batch, 0..kv_heads, range, 0..hd];
            dk = dk
                .clone()
                .slice_assign(span.clone(), dk.slice(span.clone()) + dk_part);
            dv = dv
                .clone()
                .slice_assign(span.clone(), dv.slice(span) + dv_part);
        }
    }
    let dq = Tensor::cat(dq_parts, 2);
    debug_assert_eq!(dq.dims(), [batch, heads, tq, hd]);
    (dq, dk, dv)
}

#[cfg(test)]
mod tests;
