//! Attention of a step's queries over the KV cache in host memory, read in its storage format
//! (the CPU path of [`Vla::forward_step`](crate::model::Vla::forward_step)).
//!
//! Work is split by KV head (grouped-query attention: the `n_heads / n_kv_heads` query heads of
//! one KV head are stacked into one block of query rows) and by ranges of cached tokens, one
//! rayon task each. A task walks its range in blocks of [`KEY_BLOCK`] tokens: decode the
//! block's keys and values (f32 / f16 / bf16 / int8 q8_0 / fp8 E4M3, scales included) once for
//! the whole query group, rotate the keys to their slot positions (keys are cached before
//! RoPE), score all query rows against the block as one matrix product ([`crate::gemm`]), fold
//! the block into a running softmax (max, sum: the flash-attention recurrence) and add the
//! weighted values as a second product. The step's own new tokens are the last keys, under the
//! causal mask. The tasks' partial results are merged exactly (log-sum-exp weights). Nothing
//! the size of the cache is decoded or allocated: a task's scratch is a block of keys, values
//! and scores, reused from step to step ([`AttentionScratch`]).
//!
//! The element-wise loops are plain Rust compiled inside a [`macerator`] dispatch, so they are
//! vectorized for the best instruction set the CPU has (AVX-512, AVX2 + FMA, SSE4.1, NEON) with
//! no `unsafe`. The exponential is a Cephes-style polynomial (relative error ≤ 2e-7,
//! `fast_exp_is_accurate`).

use macerator::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::gemm::{Mat, MatMut, Threads, Write, matmul};
use crate::kv::{KvRuns, KvView};
use crate::rope::RopeFrequencies;

/// Cached tokens per key block.
pub const KEY_BLOCK: usize = 256;

/// cos/sin of every position for the host path, laid out like [`crate::rope::RotaryTable`]
/// (`cos = [c, c]·factor`, `sin = [−s, s]·factor` over the rotated channels), f32.
#[derive(Clone, Debug)]
pub struct HostRope {
    freqs: RopeFrequencies,
    rot: usize,
    positions: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl HostRope {
    /// Table for positions `0..positions` with `freqs`.
    pub fn new(freqs: RopeFrequencies, positions: usize) -> Self {
        let half = freqs.inv_freq.len();
        let rot = 2 * half;
        let scale = freqs.attention_factor;
        let mut cos = Vec::with_capacity(positions * rot);
        let mut sin = Vec::with_capacity(positions * rot);
        for p in 0..positions {
            let start = cos.len();
            for f in &freqs.inv_freq {
                let angle = p as f64 * f;
                cos.push((angle.cos() * scale) as f32);
                sin.push((-angle.sin() * scale) as f32);
            }
            cos.extend_from_within(start..start + half);
            sin.extend_from_within(start..start + half);
            for v in &mut sin[start + half..start + rot] {
                *v = -*v;
            }
        }
        Self {
            freqs,
            rot,
            positions,
            cos,
            sin,
        }
    }

    /// The frequencies the table was built with.
    pub fn frequencies(&self) -> &RopeFrequencies {
        &self.freqs
    }

    /// Number of positions covered.
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// Rotates `x` (`head_dim` values, pre-RoPE) to position `p` into `out`, times `scale`.
    #[inline(always)]
    fn rotate(&self, p: usize, x: &[f32], scale: f32, out: &mut [f32]) {
        let (rot, half) = (self.rot, self.rot / 2);
        let (cos_a, cos_b) = self.cos[p * rot..(p + 1) * rot].split_at(half);
        let (sin_a, sin_b) = self.sin[p * rot..(p + 1) * rot].split_at(half);
        let (x_rot, x_pass) = x.split_at(rot);
        let (xa, xb) = x_rot.split_at(half);
        let (out_rot, out_pass) = out.split_at_mut(rot);
        let (oa, ob) = out_rot.split_at_mut(half);
        for ((((o, a), b), c), s) in oa.iter_mut().zip(xa).zip(xb).zip(cos_a).zip(sin_a) {
            *o = (a * c + b * s) * scale;
        }
        for ((((o, a), b), c), s) in ob.iter_mut().zip(xa).zip(xb).zip(cos_b).zip(sin_b) {
            *o = (b * c + a * s) * scale;
        }
        for (o, v) in out_pass.iter_mut().zip(x_pass) {
            *o = v * scale;
        }
    }
}

/// Working memory of one task (one KV head over one range of key blocks), reused from step to
/// step.
#[derive(Clone, Debug, Default)]
struct TaskScratch {
    /// Rotated keys of a block `[KEY_BLOCK, head_dim]`.
    k: Vec<f32>,
    /// Values of a block `[KEY_BLOCK, head_dim]`.
    v: Vec<f32>,
    /// One decoded key row `[head_dim]`.
    row: Vec<f32>,
    /// Scores, then probabilities, of the block `[rows, KEY_BLOCK]`.
    s: Vec<f32>,
    /// Running max and sum per query row.
    m: Vec<f32>,
    l: Vec<f32>,
    /// Unnormalized weighted values `[rows, head_dim]`.
    acc: Vec<f32>,
    /// A top-k bank read's first pass: every key's score `[rows, keys]` (−∞ where a row does
    /// not see the key), then per row the k-th highest score, below which keys are masked.
    all: Vec<f32>,
    threshold: Vec<f32>,
}

/// Working memory of [`attend`], reused from step to step.
#[derive(Clone, Debug, Default)]
pub struct AttentionScratch {
    /// Rotated, scaled queries grouped by KV head: `[n_kv_heads, rep · tq, head_dim]`, row
    /// `j · tq + i` is query `i` of the group's head `j`.
    q: Vec<f32>,
    /// Scaled, unrotated queries for the memory bank, grouped like `q`.
    q_bank: Vec<f32>,
    tasks: Vec<TaskScratch>,
}

/// The inputs of one layer's attention.
#[derive(Clone, Copy, Debug)]
pub struct AttendInput<'a> {
    /// Queries, pre-RoPE, token-major `[tq, n_heads · head_dim]`.
    pub q: &'a [f32],
    /// The step's keys, pre-RoPE, token-major `[tk_new, n_kv_heads · head_dim]`.
    pub k_new: &'a [f32],
    /// The step's values `[tk_new, n_kv_heads · head_dim]`.
    pub v_new: &'a [f32],
    /// This layer's cached keys (pre-RoPE) and values, `past` tokens in slot order.
    pub cached: KvRuns<'a>,
    /// Cached tokens (= slot position of the first new token).
    pub past: usize,
    /// New tokens (keys): the step's tokens at positions `past..past + tk_new`.
    pub tk_new: usize,
    /// Index of the first query among the new tokens: query `i` sits at position
    /// `past + q_first + i` and sees every cached key and new keys `0..=q_first + i`.
    pub q_first: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Head size.
    pub head_dim: usize,
    /// A memory bank attended without RoPE (models with a memory), or `None`.
    pub bank: Option<BankInput<'a>>,
}

/// The memory bank's part of a step's attention: keys (pre-RoPE, never rotated) and values of
/// the stored memory tokens, and the step's own memory token, new token `new`. That token is
/// hidden from the rotary attention; in the bank, queries from new token `new` on see it.
#[derive(Clone, Copy, Debug)]
pub struct BankInput<'a> {
    /// The bank's stored tokens, oldest first.
    pub cached: KvRuns<'a>,
    /// Index of the step's memory token among the new tokens.
    pub new: usize,
    /// The model's memory settings (the bank scores' log-length factor).
    pub config: &'a crate::model::MemoryConfig,
}

/// Softmax attention of the queries over the cache and the new tokens (causal among them),
/// written to `out` `[tq, n_heads · head_dim]` (token-major, heads concatenated).
///
/// # Errors
/// [`Error::Shape`] if the slices, views or the rope table do not match the sizes.
pub fn attend(
    input: &AttendInput<'_>,
    rope: &HostRope,
    scratch: &mut AttentionScratch,
    out: &mut Vec<f32>,
) -> Result<()> {
    let (h, kv, hd) = (input.n_heads, input.n_kv_heads, input.head_dim);
    if kv == 0 || h % kv != 0 || hd == 0 {
        return Err(Error::shape(
            "host attention",
            format!("{h} heads over {kv} KV heads of {hd}"),
        ));
    }
    let tq = input.q.len() / (h * hd);
    let row = kv * hd;
    let tk = input.tk_new;
    let mut block_format = false;
    let mut runs_fit = true;
    for run in input.cached.iter() {
        runs_fit &= run.keys.values() == run.len * row && run.values.values() == run.len * row;
        block_format |= run.keys.is_block() || run.values.is_block();
    }
    if !runs_fit {
        return Err(Error::shape(
            "host attention",
            "a cached run's keys or values do not hold its tokens",
        ));
    }
    let checks = [
        (input.q.len(), tq * h * hd, "queries"),
        (input.k_new.len(), tk * row, "new keys"),
        (input.v_new.len(), tk * row, "new values"),
        (input.cached.len(), input.past, "cached tokens"),
    ];
    for (got, want, what) in checks {
        if got != want {
            return Err(Error::shape(
                "host attention",
                format!("{what}: {got} values, expected {want}"),
            ));
        }
    }
    if input.q_first + tq > tk
        || input.past + tk > rope.positions
        || rope.rot > hd
        || block_format && hd % crate::kv::QUANT_BLOCK != 0
    {
        return Err(Error::shape(
            "host attention",
            format!(
                "{tq} queries from new token {} of {tk}, {} cached, rope table of {} positions",
                input.q_first, input.past, rope.positions
            ),
        ));
    }
    if let Some(bank) = &input.bank {
        let fits = bank
            .cached
            .iter()
            .all(|run| run.keys.values() == run.len * row && run.values.values() == run.len * row);
        if !fits || bank.new >= tk {
            return Err(Error::shape(
                "host attention",
                format!(
                    "memory bank runs do not hold their tokens, or memory token {} of {tk}",
                    bank.new
                ),
            ));
        }
    }
    let rep = h / kv;
    let rows = rep * tq;
    // Queries rotated to their positions and scaled once, grouped by KV head; for the bank,
    // scaled and not rotated.
    let scale = 1.0 / (hd as f32).sqrt();
    let bank_keys = input.bank.as_ref().map_or(0, |b| b.cached.len() + 1);
    // The bank scores' factor for a query that sees the stored memory tokens only, and for
    // one that also sees the step's own (from the memory token on).
    let bank_factors = input.bank.as_ref().map_or([1.0; 2], |b| {
        [0, 1].map(|own| b.config.bank_score_factor(b.cached.len() + own))
    });
    scratch.q.resize(kv * rows * hd, 0.0);
    if input.bank.is_some() {
        scratch.q_bank.resize(kv * rows * hd, 0.0);
    }
    for head in 0..h {
        let (g, j) = (head / rep, head % rep);
        for i in 0..tq {
            let at = (g * rows + j * tq + i) * hd;
            let src = &input.q[(i * h + head) * hd..(i * h + head + 1) * hd];
            rope.rotate(
                input.past + input.q_first + i,
                src,
                scale,
                &mut scratch.q[at..at + hd],
            );
            if let Some(bank) = &input.bank {
                let factor = bank_factors[usize::from(input.q_first + i >= bank.new)];
                for (o, x) in scratch.q_bank[at..at + hd].iter_mut().zip(src) {
                    *o = x * scale * factor;
                }
            }
        }
    }
    // Tasks: every KV head over a few contiguous ranges of key blocks (split so that the pool
    // has work even with one KV head), then one per KV head over the bank; merged below.
    let total = input.past + tk;
    let blocks = total.div_ceil(KEY_BLOCK);
    let segments = (2 * rayon::current_num_threads())
        .div_ceil(kv)
        .clamp(1, blocks.max(1));
    let per_segment = blocks.div_ceil(segments).max(1);
    let near = kv * segments;
    let bank_tasks = if input.bank.is_some() { kv } else { 0 };
    scratch
        .tasks
        .resize_with(near + bank_tasks, TaskScratch::default);
    let (queries, bank_queries) = (&scratch.q, &scratch.q_bank);
    scratch
        .tasks
        .par_iter_mut()
        .enumerate()
        .try_for_each(|(task, s)| {
            let job = if task < near {
                let (g, segment) = (task / segments, task % segments);
                let first = (segment * per_segment * KEY_BLOCK).min(total);
                let last = ((segment + 1) * per_segment * KEY_BLOCK).min(total);
                TaskJob {
                    input,
                    rope: Some(rope),
                    g,
                    keys: first..last,
                    tq,
                    q: &queries[g * rows * hd..(g + 1) * rows * hd],
                    scratch: s,
                }
            } else {
                let g = task - near;
                TaskJob {
                    input,
                    rope: None,
                    g,
                    keys: 0..bank_keys,
                    tq,
                    q: &bank_queries[g * rows * hd..(g + 1) * rows * hd],
                    scratch: s,
                }
            };
            Arch::new().dispatch(Vectorized(job))
        })?;
    // Merge the segments of each KV head: out = Σ acc_s e^(m_s − M) / Σ l_s e^(m_s − M).
    out.clear();
    out.resize(tq * h * hd, 0.0);
    for g in 0..kv {
        // The head's segments, then its bank task (`tasks` holds one only with a bank).
        let parts = scratch.tasks[g * segments..(g + 1) * segments]
            .iter()
            .chain(scratch.tasks.get(near + g));
        for r in 0..rows {
            let (j, i) = (r / tq, r % tq);
            let m = parts.clone().fold(f32::NEG_INFINITY, |m, p| m.max(p.m[r]));
            let weights = parts.clone().map(|p| {
                if p.m[r] == f32::NEG_INFINITY {
                    0.0
                } else {
                    fast_exp(p.m[r] - m)
                }
            });
            let l: f32 = parts
                .clone()
                .zip(weights.clone())
                .map(|(p, w)| p.l[r] * w)
                .sum();
            let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
            let head = g * rep + j;
            let dst = &mut out[(i * h + head) * hd..(i * h + head + 1) * hd];
            for (p, w) in parts.clone().zip(weights) {
                let w = w * inv;
                for (o, a) in dst.iter_mut().zip(&p.acc[r * hd..(r + 1) * hd]) {
                    *o += a * w;
                }
            }
        }
    }
    Ok(())
}

/// The attention a step's queries give each stored memory token, for the bank's
/// [`crate::model::BankEviction::Read`]: for every query row of `q` (`[rows, n_heads ·
/// head_dim]`, pre-scale) and head, the softmax over the bank (`keys`, the stored tokens
/// `[n, n_kv_heads · head_dim]`, then the step's own memory token `own` `[n_kv_heads ·
/// head_dim]`), with the bank read's scale `factor / √head_dim`; each stored token's
/// probability times `weight` is added to `out[j]` (`n` long). The own token's share is
/// dropped (it has no entry yet). The softmax is the full one, also for a model with
/// `bank_top_k` (its read masks low scores, which count here as small shares). A token whose
/// score is NaN gets a NaN read. `scores` is scratch.
///
/// # Errors
/// [`Error::Shape`] for slices that do not match the sizes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bank_reads(
    q: &[f32],
    keys: &[f32],
    own: &[f32],
    (n_heads, n_kv_heads, head_dim): (usize, usize, usize),
    factor: f32,
    weight: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) -> Result<()> {
    let (width, row) = (n_heads * head_dim, n_kv_heads * head_dim);
    let n = out.len();
    if n_kv_heads == 0
        || width == 0
        || n_heads % n_kv_heads != 0
        || !q.len().is_multiple_of(width.max(1))
        || keys.len() != n * row
        || own.len() != row
    {
        return Err(Error::shape(
            "bank reads",
            format!(
                "{} query values, {} keys of {n} tokens, own key {} for {n_heads} heads over {n_kv_heads} of {head_dim}",
                q.len(),
                keys.len(),
                own.len()
            ),
        ));
    }
    let rep = n_heads / n_kv_heads;
    let scale = factor / (head_dim as f32).sqrt();
    scores.resize(n + 1, 0.0);
    for query in q.chunks_exact(width) {
        for head in 0..n_heads {
            let g = head / rep;
            let qh = &query[head * head_dim..(head + 1) * head_dim];
            let dot = |k: &[f32]| qh.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale;
            for (s, k) in scores.iter_mut().zip(keys.chunks_exact(row)) {
                *s = dot(&k[g * head_dim..(g + 1) * head_dim]);
            }
            scores[n] = dot(&own[g * head_dim..(g + 1) * head_dim]);
            if scores.iter().any(|s| s.is_nan()) {
                // A NaN score stays a NaN read of that token (`fast_exp` would flush it to a
                // finite value); this query-head's softmax adds nothing to the others.
                for (o, s) in out.iter_mut().zip(scores.iter()) {
                    if s.is_nan() {
                        *o = f32::NAN;
                    }
                }
                continue;
            }
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut sum = 0.0;
            for s in scores.iter_mut() {
                *s = fast_exp(*s - max);
                sum += *s;
            }
            let w = weight / sum;
            for (o, s) in out.iter_mut().zip(scores.iter()) {
                *o += s * w;
            }
        }
    }
    Ok(())
}

/// One task: KV head `g`'s query rows over the keys `keys` (logical indices: cached tokens
/// `0..past`, then the new ones; or with `rope: None`, the bank's tokens, then the step's
/// memory token).
struct TaskJob<'a, 'b> {
    input: &'a AttendInput<'b>,
    rope: Option<&'a HostRope>,
    g: usize,
    keys: std::ops::Range<usize>,
    tq: usize,
    /// The group's rotated queries `[rows, head_dim]`.
    q: &'a [f32],
    scratch: &'a mut TaskScratch,
}

struct Vectorized<'a, 'b>(TaskJob<'a, 'b>);

impl WithSimd for Vectorized<'_, '_> {
    type Output = Result<()>;

    #[inline(always)]
    fn with_simd<S: Simd>(self) -> Result<()> {
        task_attention(self.0)
    }
}

/// exp(x) for x ≤ 0 (scores minus their running max), 0 below −87.3: Cephes' expf polynomial
/// on the reduced argument, branch-free so that it vectorizes.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let xc = x.max(-87.3);
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    // The rounded integer n sits in the low mantissa bits of `shifted` (an integer read of
    // the bits, not a float → int cast, so that the loop vectorizes).
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scaled = y * f32::from_bits(n_bits.wrapping_add(127) << 23);
    if x < -87.3 { 0.0 } else { scaled }
}

/// Lanes of the reductions below: independent partial results, so that the loops vectorize
/// (a single running sum or max is a dependency chain the compiler must keep in order).
const LANES: usize = 16;

/// Sum of `x` in [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Sum of squares of `x` in [`LANES`] partial sums.
#[inline(always)]
pub(crate) fn sum_squares_lanes(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v * v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Maximum of `x` (−∞ for none) in [`LANES`] partial maxima.
#[inline(always)]
fn max_lanes(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = a.max(*v);
        }
    }
    acc.iter().fold(tail, |m, v| m.max(*v))
}

/// IEEE half → f32 without branches (subnormals included; the cache stores no ∞/NaN).
#[inline(always)]
fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let magnitude = (h & 0x7fff) << 13;
    let exp = magnitude & (0x1f << 23);
    let normal = f32::from_bits(magnitude + ((127 - 15) << 23));
    let sub = f32::from_bits(magnitude + ((127 - 15 + 1) << 23)) - f32::from_bits(113 << 23);
    let v = if exp == 0 { sub } else { normal };
    f32::from_bits(v.to_bits() | ((h & 0x8000) << 16))
}

/// FP8 E4M3 → f32 without branches (the encoder never writes the NaN code).
#[inline(always)]
fn fp8_bits_to_f32(b: u8) -> f32 {
    let b = u32::from(b);
    let magnitude = (b & 0x7f) << 20;
    let exp = magnitude & (0xf << 23);
    let normal = f32::from_bits(magnitude + ((127 - 7) << 23));
    let sub = f32::from_bits(magnitude + ((127 - 7 + 1) << 23)) - f32::from_bits((127 - 6) << 23);
    let v = if exp == 0 { sub } else { normal };
    f32::from_bits(v.to_bits() | ((b & 0x80) << 24))
}

/// Decodes token `t`, KV head `g` of a cached layer into `out` (`head_dim` values).
#[inline(always)]
fn decode_row(view: KvView<'_>, t: usize, g: usize, kv: usize, out: &mut [f32]) {
    let hd = out.len();
    let first = (t * kv + g) * hd;
    match view {
        KvView::F32(v) => out.copy_from_slice(&v[first..first + hd]),
        KvView::F16(v) => {
            for (o, x) in out.iter_mut().zip(&v[first..first + hd]) {
                *o = f16_bits_to_f32(x.to_bits());
            }
        }
        KvView::Bf16(v) => {
            for (o, x) in out.iter_mut().zip(&v[first..first + hd]) {
                *o = f32::from_bits(u32::from(x.to_bits()) << 16);
            }
        }
        KvView::Int8(bytes) | KvView::Fp8(bytes) => {
            let fp8 = matches!(view, KvView::Fp8(_));
            let block_bytes = crate::kv::QUANT_BLOCK_BYTES;
            let start = first / crate::kv::QUANT_BLOCK * block_bytes;
            let blocks = &bytes[start..start + hd / crate::kv::QUANT_BLOCK * block_bytes];
            for (block, o) in blocks
                .chunks_exact(block_bytes)
                .zip(out.chunks_exact_mut(crate::kv::QUANT_BLOCK))
            {
                let scale = f16_bits_to_f32(u16::from_le_bytes([block[0], block[1]]));
                if fp8 {
                    for (o, c) in o.iter_mut().zip(&block[2..]) {
                        *o = fp8_bits_to_f32(*c) * scale;
                    }
                } else {
                    for (o, c) in o.iter_mut().zip(&block[2..]) {
                        *o = f32::from(*c as i8) * scale;
                    }
                }
            }
        }
    }
}

/// Folds the task's key blocks into its running softmax: per block, keys decoded and rotated
/// once for the whole query group, scores as one matrix product, the online-softmax update,
/// and the weighted values as a second product.
#[inline(always)]
fn task_attention(job: TaskJob<'_, '_>) -> Result<()> {
    let TaskJob {
        input,
        rope,
        g,
        keys,
        tq,
        q,
        scratch: s,
    } = job;
    let (kv, hd) = (input.n_kv_heads, input.head_dim);
    let rows = q.len() / hd;
    s.k.resize(KEY_BLOCK * hd, 0.0);
    s.v.resize(KEY_BLOCK * hd, 0.0);
    s.row.resize(hd, 0.0);
    s.s.resize(rows * KEY_BLOCK, 0.0);
    s.m.clear();
    s.m.resize(rows, f32::NEG_INFINITY);
    s.l.clear();
    s.l.resize(rows, 0.0);
    s.acc.clear();
    s.acc.resize(rows * hd, 0.0);
    let (row, bank) = (kv * hd, input.bank.filter(|_| rope.is_none()));
    // Keys `0..past` come from `cached` (the cache, or the bank), then the new ones.
    let (past, cached, hidden) = match &bank {
        Some(b) => (b.cached.len(), b.cached, None),
        None => (
            input.past,
            input.cached,
            input.bank.map(|b| input.past + b.new),
        ),
    };
    // A top-k bank read (`MemoryConfig::bank_top_k`) over more keys than k: a first pass
    // records every score, then each row's k-th highest becomes its threshold.
    let top_k = bank
        .and_then(|b| b.config.bank_top_k)
        .filter(|&k| keys.len() > k);
    let width = keys.len();
    s.threshold.clear();
    s.threshold.resize(rows, f32::NEG_INFINITY);
    if top_k.is_some() {
        s.all.clear();
        s.all.resize(rows * width, f32::NEG_INFINITY);
    }
    // Keys of the block at `start` that query row `r` sees.
    let visible_of = |r: usize, start: usize, n: usize| {
        // Query i sees the cached keys and the new keys up to its own token (in the bank:
        // the step's memory token from that token on).
        let i = r % tq;
        let own = match bank {
            Some(b) => usize::from(input.q_first + i >= b.new),
            None => input.q_first + i + 1,
        };
        (past + own).saturating_sub(start).min(n)
    };
    for select in [true, false] {
        if select && top_k.is_none() {
            continue;
        }
        let mut runs = cached.iter().peekable();
        let mut start = keys.start;
        while start < keys.end {
            let n = KEY_BLOCK.min(keys.end - start);
            for j in 0..n {
                let t = start + j;
                let (k_out, v_out) = (
                    &mut s.k[j * hd..(j + 1) * hd],
                    &mut s.v[j * hd..(j + 1) * hd],
                );
                if t < past {
                    // The run holding slot t (slots only grow within a task).
                    while runs.peek().is_some_and(|r| r.start + r.len <= t) {
                        runs.next();
                    }
                    let Some(run) = runs.peek() else {
                        return Err(Error::shape(
                            "host attention",
                            format!("slot {t} not cached"),
                        ));
                    };
                    decode_row(run.keys, t - run.start, g, kv, &mut s.row);
                    // The selecting pass needs scores only.
                    if !select {
                        decode_row(run.values, t - run.start, g, kv, v_out);
                    }
                } else {
                    // The bank's one new key is the step's memory token.
                    let new = bank.map_or(t - past, |b| b.new);
                    let at = new * row + g * hd;
                    s.row.copy_from_slice(&input.k_new[at..at + hd]);
                    if !select {
                        v_out.copy_from_slice(&input.v_new[at..at + hd]);
                    }
                }
                match rope {
                    Some(rope) => rope.rotate(t, &s.row, 1.0, k_out),
                    None => k_out.copy_from_slice(&s.row),
                }
            }
            // Scores [rows, n] = q · kᵀ.
            matmul(
                MatMut::rows(&mut s.s, rows, n, KEY_BLOCK),
                Mat::rows(q, rows, hd, hd),
                Mat::transposed(&s.k, hd, n, hd),
                Write::Overwrite,
                Threads::One,
            )?;
            if select {
                for r in 0..rows {
                    let visible = visible_of(r, start, n);
                    let at = r * width + start - keys.start;
                    s.all[at..at + visible]
                        .copy_from_slice(&s.s[r * KEY_BLOCK..r * KEY_BLOCK + visible]);
                }
                start += n;
                continue;
            }
            for r in 0..rows {
                let visible = visible_of(r, start, n);
                let scores = &mut s.s[r * KEY_BLOCK..r * KEY_BLOCK + n];
                if let Some(h) = hidden.filter(|h| (start..start + visible).contains(h)) {
                    scores[h - start] = f32::NEG_INFINITY;
                }
                let threshold = s.threshold[r];
                if threshold > f32::NEG_INFINITY {
                    for v in &mut scores[..visible] {
                        if *v < threshold {
                            *v = f32::NEG_INFINITY;
                        }
                    }
                }
                let block_max = if visible == 0 {
                    f32::NEG_INFINITY
                } else {
                    max_lanes(&scores[..visible])
                };
                if block_max == f32::NEG_INFINITY {
                    scores.fill(0.0);
                    continue;
                }
                let m_new = s.m[r].max(block_max);
                let correction = fast_exp(s.m[r] - m_new);
                for v in &mut scores[..visible] {
                    *v = fast_exp(*v - m_new);
                }
                let sum = sum_lanes(&scores[..visible]);
                scores[visible..].fill(0.0);
                s.l[r] = s.l[r] * correction + sum;
                s.m[r] = m_new;
                for a in &mut s.acc[r * hd..(r + 1) * hd] {
                    *a *= correction;
                }
            }
            // acc += p · v.
            matmul(
                MatMut::rows(&mut s.acc, rows, hd, hd),
                Mat::rows(&s.s, rows, n, KEY_BLOCK),
                Mat::rows(&s.v, n, hd, hd),
                Write::Accumulate,
                Threads::One,
            )?;
            start += n;
        }
        if let (true, Some(k)) = (select, top_k) {
            // The k-th highest score of each row that sees more than k keys (masked keys
            // are −∞, the lowest); rows that see k or fewer keep every key.
            for (row_scores, threshold) in s.all.chunks_exact_mut(width).zip(&mut s.threshold) {
                if row_scores
                    .iter()
                    .filter(|v| **v > f32::NEG_INFINITY)
                    .count()
                    > k
                {
                    let (_, kth, _) =
                        row_scores.select_nth_unstable_by(width - k, |a, b| a.total_cmp(b));
                    *threshold = *kth;
                }
            }
        }
    }
    Ok(())
}

impl KvView<'_> {
    /// Values stored in the view.
    fn values(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F16(v) => v.len(),
            Self::Bf16(v) => v.len(),
            Self::Int8(b) | Self::Fp8(b) => {
                b.len() / crate::kv::QUANT_BLOCK_BYTES * crate::kv::QUANT_BLOCK
            }
        }
    }

    fn is_block(&self) -> bool {
        matches!(self, Self::Int8(_) | Self::Fp8(_))
    }
}

#[cfg(test)]
mod tests;
