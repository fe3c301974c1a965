//! Attention of a step's queries over the KV cache in host memory, read in its storage format
//! (the CPU path of [`Vla::forward_step`](crate::model::Vla::forward_step)).
//!
//! One pass per query head over the cached keys and values in chunks of [`CHUNK`] tokens:
//! decode the chunk's keys (f32 / f16 / bf16 / int8 q8_0 / fp8 E4M3, scales included) into a
//! small scratch, rotate them at their slot positions (keys are cached before RoPE), score them
//! against the head's queries, fold the chunk into a running softmax (max, sum, weighted values:
//! the flash-attention recurrence), then the step's own new tokens with the causal mask. Nothing
//! the size of the cache is decoded or allocated: per head the scratch is `CHUNK × head_dim`
//! values plus the queries' rows, reused from step to step ([`AttentionScratch`]).
//!
//! The loops are plain Rust compiled inside a [`macerator`] dispatch, so they are vectorized for
//! the best instruction set the CPU has (AVX-512, AVX2 + FMA, SSE4.1, NEON) with no `unsafe`;
//! heads run in parallel on the rayon pool. The exponential is a Cephes-style polynomial
//! (relative error ≤ 2e-7, `fast_exp_is_accurate`).

use macerator::{Arch, Simd, WithSimd};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kv::KvView;
use crate::rope::RopeFrequencies;

/// Cached tokens per chunk.
pub const CHUNK: usize = 64;

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
        let cos = &self.cos[p * rot..(p + 1) * rot];
        let sin = &self.sin[p * rot..(p + 1) * rot];
        for c in 0..half {
            out[c] = (x[c] * cos[c] + x[c + half] * sin[c]) * scale;
            out[c + half] = (x[c + half] * cos[c + half] + x[c] * sin[c + half]) * scale;
        }
        for c in rot..x.len() {
            out[c] = x[c] * scale;
        }
    }
}

/// Per-head working memory, reused from step to step.
#[derive(Clone, Debug, Default)]
pub struct HeadScratch {
    /// Rotated, scaled queries `[tq, head_dim]`.
    q: Vec<f32>,
    /// One decoded key row `[head_dim]`, and rotated.
    key: Vec<f32>,
    rkey: Vec<f32>,
    /// Rotated keys of a chunk, transposed `[head_dim, CHUNK]`.
    kt: Vec<f32>,
    /// Values of a chunk `[CHUNK, head_dim]`.
    v: Vec<f32>,
    /// Scores / probabilities `[tq, CHUNK]`.
    s: Vec<f32>,
    /// Running max and sum per query row.
    m: Vec<f32>,
    l: Vec<f32>,
    /// Weighted values `[tq, head_dim]`; the head's output at the end.
    acc: Vec<f32>,
}

/// Working memory of [`attend`] for every head.
#[derive(Clone, Debug, Default)]
pub struct AttentionScratch {
    heads: Vec<HeadScratch>,
}

/// The inputs of one layer's attention.
#[derive(Clone, Copy, Debug)]
pub struct AttendInput<'a> {
    /// Queries, pre-RoPE, `[n_heads, tq, head_dim]`.
    pub q: &'a [f32],
    /// The step's keys, pre-RoPE, `[n_kv_heads, tk_new, head_dim]`.
    pub k_new: &'a [f32],
    /// The step's values `[n_kv_heads, tk_new, head_dim]`.
    pub v_new: &'a [f32],
    /// Cached keys (pre-RoPE) and values of this layer, `past` tokens.
    pub keys: KvView<'a>,
    /// Cached values.
    pub values: KvView<'a>,
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
    let checks = [
        (input.q.len(), tq * h * hd, "queries"),
        (input.k_new.len(), tk * row, "new keys"),
        (input.v_new.len(), tk * row, "new values"),
        (input.keys.values(), input.past * row, "cached keys"),
        (input.values.values(), input.past * row, "cached values"),
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
        || input.keys.is_block() && hd % crate::kv::QUANT_BLOCK != 0
    {
        return Err(Error::shape(
            "host attention",
            format!(
                "{tq} queries from new token {} of {tk}, {} cached, rope table of {} positions",
                input.q_first, input.past, rope.positions
            ),
        ));
    }
    scratch.heads.resize_with(h, HeadScratch::default);
    let fused = has_fma();
    scratch
        .heads
        .par_iter_mut()
        .enumerate()
        .for_each(|(head, s)| {
            let job = HeadJob {
                input,
                rope,
                head,
                tq,
                scratch: s,
            };
            if fused {
                Arch::new().dispatch(Vectorized::<Fused>(job, std::marker::PhantomData));
            } else {
                Arch::new().dispatch(Vectorized::<Split>(job, std::marker::PhantomData));
            }
        });
    out.clear();
    out.resize(tq * h * hd, 0.0);
    for (head, s) in scratch.heads.iter().enumerate() {
        for i in 0..tq {
            out[i * h * hd + head * hd..i * h * hd + (head + 1) * hd]
                .copy_from_slice(&s.acc[i * hd..(i + 1) * hd]);
        }
    }
    Ok(())
}

fn has_fma() -> bool {
    #[cfg(any(target_arch = "x86_64", target_arch = "x86"))]
    {
        std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64")))]
    {
        false
    }
}

/// `a · b + c`, fused where the CPU has FMA (a library call otherwise, hence two flavours).
trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

#[derive(Debug)]
struct Fused;
#[derive(Debug)]
struct Split;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl MulAdd for Split {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

struct HeadJob<'a, 'b> {
    input: &'a AttendInput<'b>,
    rope: &'a HostRope,
    head: usize,
    tq: usize,
    scratch: &'a mut HeadScratch,
}

struct Vectorized<'a, 'b, M>(HeadJob<'a, 'b>, std::marker::PhantomData<M>);

impl<M: MulAdd> WithSimd for Vectorized<'_, '_, M> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self) {
        head_attention::<M>(self.0);
    }
}

/// exp(x) for x ≤ 0 (scores minus their running max), 0 below −87.3: Cephes' expf polynomial
/// on the reduced argument, branch-free so that it vectorizes.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let xc = x.max(-87.3);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scaled = y * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 { 0.0 } else { scaled }
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

/// Where a chunk's keys and values come from.
#[derive(Clone, Copy)]
enum Source<'a> {
    Cache(KvView<'a>, KvView<'a>),
    New(&'a [f32], &'a [f32]),
}

#[inline(always)]
fn head_attention<M: MulAdd>(job: HeadJob<'_, '_>) {
    let HeadJob {
        input,
        rope,
        head,
        tq,
        scratch: s,
    } = job;
    let (kv, hd) = (input.n_kv_heads, input.head_dim);
    let g = head / (input.n_heads / kv);
    let scale = 1.0 / (hd as f32).sqrt();
    s.q.resize(tq * hd, 0.0);
    s.key.resize(hd, 0.0);
    s.rkey.resize(hd, 0.0);
    s.kt.resize(hd * CHUNK, 0.0);
    s.v.resize(CHUNK * hd, 0.0);
    s.s.resize(tq * CHUNK, 0.0);
    s.m.clear();
    s.m.resize(tq, f32::NEG_INFINITY);
    s.l.clear();
    s.l.resize(tq, 0.0);
    s.acc.clear();
    s.acc.resize(tq * hd, 0.0);
    let q_head = &input.q[head * tq * hd..(head + 1) * tq * hd];
    for i in 0..tq {
        let p = input.past + input.q_first + i;
        rope.rotate(
            p,
            &q_head[i * hd..(i + 1) * hd],
            scale,
            &mut s.q[i * hd..(i + 1) * hd],
        );
    }
    let tk = input.tk_new;
    let new_k = &input.k_new[g * tk * hd..(g + 1) * tk * hd];
    let new_v = &input.v_new[g * tk * hd..(g + 1) * tk * hd];
    let mut start = 0;
    while start < input.past {
        let n = CHUNK.min(input.past - start);
        chunk::<M>(
            s,
            rope,
            Source::Cache(input.keys, input.values),
            (g, kv),
            start,
            n,
            tq,
            |_| n,
        );
        start += n;
    }
    let mut start = 0;
    while start < tk {
        let n = CHUNK.min(tk - start);
        let q_first = input.q_first;
        chunk::<M>(
            s,
            rope,
            Source::New(new_k, new_v),
            (g, input.past),
            start,
            n,
            tq,
            // Query i sees new keys 0..=q_first + i.
            move |i| (q_first + i + 1).saturating_sub(start).min(n),
        );
        start += n;
    }
    for i in 0..tq {
        let inv = if s.l[i] > 0.0 { 1.0 / s.l[i] } else { 0.0 };
        for a in &mut s.acc[i * hd..(i + 1) * hd] {
            *a *= inv;
        }
    }
}

/// Folds keys/values `start..start + n` of `source` into the running softmax. `at` is
/// `(kv head, kv heads)` for the cache, `(kv head, past)` for new tokens; `visible(i)` is how
/// many of the chunk's keys query `i` sees (a prefix).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn chunk<M: MulAdd>(
    s: &mut HeadScratch,
    rope: &HostRope,
    source: Source<'_>,
    at: (usize, usize),
    start: usize,
    n: usize,
    tq: usize,
    visible: impl Fn(usize) -> usize,
) {
    let hd = s.key.len();
    // Keys: decode, rotate to their positions, transpose into kt [hd, CHUNK].
    for j in 0..n {
        let position = match source {
            Source::Cache(keys, values) => {
                let (g, kv) = at;
                decode_row(keys, start + j, g, kv, &mut s.key);
                decode_row(values, start + j, g, kv, &mut s.v[j * hd..(j + 1) * hd]);
                start + j
            }
            Source::New(k, v) => {
                let t = start + j;
                s.key.copy_from_slice(&k[t * hd..(t + 1) * hd]);
                s.v[j * hd..(j + 1) * hd].copy_from_slice(&v[t * hd..(t + 1) * hd]);
                at.1 + t
            }
        };
        rope.rotate(position, &s.key, 1.0, &mut s.rkey);
        for (d, r) in s.rkey.iter().enumerate() {
            s.kt[d * CHUNK + j] = *r;
        }
    }
    for j in n..CHUNK {
        for d in 0..hd {
            s.kt[d * CHUNK + j] = 0.0;
        }
        s.v[j * hd..(j + 1) * hd].fill(0.0);
    }
    // Scores, two query rows at a time (each key load serves both).
    let mut i = 0;
    while i < tq {
        let rows = (tq - i).min(2);
        let mut a0 = [0.0f32; CHUNK];
        let mut a1 = [0.0f32; CHUNK];
        let q0 = &s.q[i * hd..(i + 1) * hd];
        let q1 = &s.q[(i + rows - 1) * hd..(i + rows) * hd];
        for ((k, x0), x1) in s.kt.chunks_exact(CHUNK).zip(q0).zip(q1) {
            for ((y0, y1), kj) in a0.iter_mut().zip(a1.iter_mut()).zip(k) {
                *y0 = M::mul_add(*x0, *kj, *y0);
                *y1 = M::mul_add(*x1, *kj, *y1);
            }
        }
        s.s[i * CHUNK..(i + 1) * CHUNK].copy_from_slice(&a0);
        if rows == 2 {
            s.s[(i + 1) * CHUNK..(i + 2) * CHUNK].copy_from_slice(&a1);
        }
        i += rows;
    }
    // Online softmax and weighted values.
    for i in 0..tq {
        let seen = visible(i);
        if seen == 0 {
            continue;
        }
        let row = &mut s.s[i * CHUNK..(i + 1) * CHUNK];
        let chunk_max = row[..seen].iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
        let m_new = s.m[i].max(chunk_max);
        let correction = fast_exp(s.m[i] - m_new);
        let mut sum = 0.0f32;
        for (j, v) in row.iter_mut().enumerate() {
            let e = fast_exp(*v - m_new);
            *v = if j < seen { e } else { 0.0 };
            sum += *v;
        }
        s.l[i] = s.l[i] * correction + sum;
        s.m[i] = m_new;
        let acc = &mut s.acc[i * hd..(i + 1) * hd];
        for a in acc.iter_mut() {
            *a *= correction;
        }
        for (p, v) in row[..seen].iter().zip(s.v.chunks_exact(hd)) {
            for (a, x) in acc.iter_mut().zip(v) {
                *a = M::mul_add(*p, *x, *a);
            }
        }
    }
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
