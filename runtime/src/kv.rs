//! The bounded, quantized KV cache and its byte arithmetic.
//!
//! - [`KvDtype`]: storage formats — `f32`, `f16`, `bf16`, `int8` (llama.cpp q8_0: blocks of 32
//!   values along `head_dim`, scale `absmax/127` stored as f16, 34 bytes per 32 values) and
//!   `fp8` (E4M3 with a per-block f16 scale `absmax/448`, also 34 bytes per 32 values).
//! - [`KvLayout`]: bytes per token, `2 · layers · kv_heads · head_dim · bytes_per_value` plus
//!   quantization scales, and its inverse (tokens that fit a budget). `edgevla kv-plan` prints it.
//! - [`KvCache`]: preallocated storage for every layer's keys and values, token-major
//!   (`[token, kv_head, head_dim]`), holding the attention sinks (instruction tokens, kept for
//!   ever) followed by the most recent frame-steps that fit. The frame-steps live in a ring
//!   behind the sinks: evicting the oldest one moves no data (the slots are reused), and a
//!   layer's tokens read in order as at most three contiguous runs ([`KvRuns`]).
//!
//! Invariant: [`KvCache::bytes`] ≤ the byte budget after every call, and so is the storage the
//! cache allocates (its capacity is derived from the budget, never grown). A budget too small
//! for the sinks plus one frame-step is a configuration error.
//!
//! A token's slot is its place in the context (sinks first, then the frame-steps oldest
//! first), and its position for RoPE; after an eviction the retained frame-steps take the
//! slots right behind the sinks, whatever storage they occupy in the ring.
//!
//! Keys are stored **before** RoPE (StreamingLLM style). The model rotates all cached keys
//! at their current slot positions every step, so every query-key distance stays below the
//! context length. The alternative, rotated keys re-rotated on eviction (llama.cpp's K-shift), would
//! requantize every retained key of an int8/fp8 cache at every eviction (error accumulates:
//! see `kshift_requantization_drift` in the tests) and would keep keys rotated with stale
//! frequencies under dynamic NTK; the rotation it saves is a few element-wise operations per
//! cached value, small beside the attention that reads the same values (measured in
//! `benches/step.rs`).

use std::collections::VecDeque;

use float8::F8E4M3;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Values per quantization block (along `head_dim`).
pub const QUANT_BLOCK: usize = 32;
/// Bytes of one quantized block: an f16 scale plus 32 one-byte values.
pub const QUANT_BLOCK_BYTES: usize = 2 + QUANT_BLOCK;
/// Largest finite E4M3 magnitude.
const FP8_MAX: f32 = 448.0;

/// How cached keys and values are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvDtype {
    /// 4 bytes per value.
    F32,
    /// IEEE half, 2 bytes per value.
    F16,
    /// bfloat16, 2 bytes per value.
    Bf16,
    /// q8_0: 32 int8 values + one f16 scale per block (34 bytes / 32 values).
    Int8,
    /// FP8 E4M3: 32 values + one f16 scale per block (34 bytes / 32 values).
    #[serde(alias = "fp8-e4m3", alias = "fp8_e4m3")]
    Fp8,
}

impl KvDtype {
    /// All storage formats, in order of size.
    pub const ALL: [KvDtype; 5] = [Self::F32, Self::F16, Self::Bf16, Self::Int8, Self::Fp8];

    /// Name as written in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
            Self::Fp8 => "fp8",
        }
    }

    /// Whether values are stored in blocks with a scale.
    pub fn is_block_quantized(self) -> bool {
        matches!(self, Self::Int8 | Self::Fp8)
    }

    /// Bytes that `values` values take in this format (a multiple of 32 for quantized formats),
    /// and the part of it that is scales.
    fn bytes_for(self, values: u64) -> (u64, u64) {
        match self {
            Self::F32 => (4 * values, 0),
            Self::F16 | Self::Bf16 => (2 * values, 0),
            Self::Int8 | Self::Fp8 => {
                let blocks = values / QUANT_BLOCK as u64;
                (blocks * QUANT_BLOCK_BYTES as u64, blocks * 2)
            }
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvDtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            "int8" | "q8_0" => Ok(Self::Int8),
            "fp8" | "fp8-e4m3" | "fp8_e4m3" => Ok(Self::Fp8),
            other => Err(Error::config(
                "dtype",
                format!("unknown KV dtype \"{other}\"; expected f32, f16, bf16, int8 or fp8"),
            )),
        }
    }
}

/// The shape of a KV cache: what one token costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvLayout {
    /// Transformer layers.
    pub layers: usize,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Storage format.
    pub dtype: KvDtype,
}

impl KvLayout {
    /// Checks the layout can be stored (non-zero sizes; `head_dim` a multiple of 32 for the
    /// block-quantized formats).
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending key.
    pub fn validate(&self) -> Result<()> {
        for (key, v) in [
            ("layers", self.layers),
            ("kv_heads", self.kv_heads),
            ("head_dim", self.head_dim),
        ] {
            if v == 0 {
                return Err(Error::config(key, "must be ≥ 1"));
            }
        }
        let too_large = || Error::config("layers", "the layout's bytes per token overflow 64 bits");
        let values = (2 * self.layers as u64)
            .checked_mul(self.kv_heads as u64)
            .and_then(|v| v.checked_mul(self.head_dim as u64))
            .ok_or_else(too_large)?;
        values.checked_mul(4).ok_or_else(too_large)?;
        if self.dtype.is_block_quantized() && !self.head_dim.is_multiple_of(QUANT_BLOCK) {
            return Err(Error::config(
                "head_dim",
                format!(
                    "{} stores blocks of {QUANT_BLOCK} values along head_dim; {} is not a multiple of {QUANT_BLOCK}",
                    self.dtype, self.head_dim
                ),
            ));
        }
        Ok(())
    }

    /// Values of one layer's keys (or values) for one token.
    pub fn row_values(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Bytes of one layer's keys (or values) for one token.
    pub fn row_bytes(&self) -> usize {
        self.dtype.bytes_for(self.row_values() as u64).0 as usize
    }

    /// Bytes one token costs across all layers, keys and values, scales included.
    pub fn bytes_per_token(&self) -> u64 {
        2 * self.layers as u64 * self.row_bytes() as u64
    }

    /// The part of [`bytes_per_token`](Self::bytes_per_token) that is quantization scales.
    pub fn scale_bytes_per_token(&self) -> u64 {
        2 * self.layers as u64 * self.dtype.bytes_for(self.row_values() as u64).1
    }

    /// Bytes `tokens` tokens cost (saturating at `u64::MAX`; see
    /// [`checked_total_bytes`](Self::checked_total_bytes)).
    pub fn total_bytes(&self, tokens: u64) -> u64 {
        self.bytes_per_token().saturating_mul(tokens)
    }

    /// Bytes `tokens` tokens cost, `None` on overflow.
    pub fn checked_total_bytes(&self, tokens: u64) -> Option<u64> {
        self.bytes_per_token().checked_mul(tokens)
    }

    /// Tokens that fit in `budget` bytes.
    pub fn tokens_for_budget(&self, budget: u64) -> u64 {
        budget / self.bytes_per_token().max(1)
    }
}

/// One block: f16 scale (little-endian) then 32 one-byte codes.
fn encode_block(dtype: KvDtype, block: &[f32], out: &mut [u8]) {
    let absmax = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let range = if dtype == KvDtype::Int8 {
        127.0
    } else {
        FP8_MAX
    };
    let scale = f16::from_f32((absmax / range).min(f16::MAX.to_f32()));
    out[..2].copy_from_slice(&scale.to_le_bytes());
    let s = scale.to_f32();
    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
    for (v, code) in block.iter().zip(&mut out[2..]) {
        *code = match dtype {
            KvDtype::Int8 => ((v * inv).round().clamp(-127.0, 127.0) as i8) as u8,
            _ => F8E4M3::from_f32((v * inv).clamp(-FP8_MAX, FP8_MAX)).to_bits(),
        };
    }
}

fn decode_block(dtype: KvDtype, block: &[u8], out: &mut [f32]) {
    let scale = f16::from_le_bytes([block[0], block[1]]).to_f32();
    for (code, v) in block[2..].iter().zip(out) {
        *v = match dtype {
            KvDtype::Int8 => f32::from(*code as i8) * scale,
            _ => F8E4M3::from_bits(*code).to_f32() * scale,
        };
    }
}

/// Typed storage for one layer's keys or values, token-major rows.
#[derive(Clone, Debug)]
enum Storage {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    Blocks(Vec<u8>),
}

impl Storage {
    fn new(dtype: KvDtype, values: usize) -> Self {
        match dtype {
            KvDtype::F32 => Self::F32(vec![0.0; values]),
            KvDtype::F16 => Self::F16(vec![f16::ZERO; values]),
            KvDtype::Bf16 => Self::Bf16(vec![bf16::ZERO; values]),
            KvDtype::Int8 | KvDtype::Fp8 => {
                Self::Blocks(vec![0; values / QUANT_BLOCK * QUANT_BLOCK_BYTES])
            }
        }
    }

    /// The element units `units`.
    fn view(&self, units: std::ops::Range<usize>, fp8: bool) -> KvView<'_> {
        match self {
            Self::F32(d) => KvView::F32(&d[units]),
            Self::F16(d) => KvView::F16(&d[units]),
            Self::Bf16(d) => KvView::Bf16(&d[units]),
            Self::Blocks(d) if fp8 => KvView::Fp8(&d[units]),
            Self::Blocks(d) => KvView::Int8(&d[units]),
        }
    }

    /// Copies the `unit` element units at `from` to `to`.
    fn copy_row(&mut self, from: usize, to: usize, unit: usize) {
        match self {
            Self::F32(d) => d.copy_within(from..from + unit, to),
            Self::F16(d) => d.copy_within(from..from + unit, to),
            Self::Bf16(d) => d.copy_within(from..from + unit, to),
            Self::Blocks(d) => d.copy_within(from..from + unit, to),
        }
    }

    /// Encodes `src` into the element units starting at `first` (`src.len()` values).
    fn encode(&mut self, dtype: KvDtype, first: usize, src: &[f32]) {
        match self {
            Self::F32(d) => d[first..first + src.len()].copy_from_slice(src),
            Self::F16(d) => d[first..first + src.len()].convert_from_f32_slice(src),
            Self::Bf16(d) => d[first..first + src.len()].convert_from_f32_slice(src),
            Self::Blocks(d) => {
                let bytes = src.len() / QUANT_BLOCK * QUANT_BLOCK_BYTES;
                for (block, out) in src
                    .chunks_exact(QUANT_BLOCK)
                    .zip(d[first..first + bytes].chunks_exact_mut(QUANT_BLOCK_BYTES))
                {
                    encode_block(dtype, block, out);
                }
            }
        }
    }

    /// Decodes `dst.len()` values from the element units starting at `first`.
    fn decode(&self, dtype: KvDtype, first: usize, dst: &mut [f32]) {
        match self {
            Self::F32(v) => dst.copy_from_slice(&v[first..first + dst.len()]),
            Self::F16(v) => v[first..first + dst.len()].convert_to_f32_slice(dst),
            Self::Bf16(v) => v[first..first + dst.len()].convert_to_f32_slice(dst),
            Self::Blocks(v) => {
                let bytes = dst.len() / QUANT_BLOCK * QUANT_BLOCK_BYTES;
                for (block, out) in v[first..first + bytes]
                    .chunks_exact(QUANT_BLOCK_BYTES)
                    .zip(dst.chunks_exact_mut(QUANT_BLOCK))
                {
                    decode_block(dtype, block, out);
                }
            }
        }
    }
}

/// Quantizes and dequantizes `values` (a multiple of 32 for block formats) through `dtype`:
/// what a value looks like after a round trip through the cache.
///
/// # Errors
/// [`Error::Shape`] if a block format gets a length that is not a multiple of 32.
pub fn round_trip(dtype: KvDtype, values: &[f32]) -> Result<Vec<f32>> {
    if dtype.is_block_quantized() && !values.len().is_multiple_of(QUANT_BLOCK) {
        return Err(Error::shape(
            "kv round trip",
            format!(
                "{dtype} needs a multiple of {QUANT_BLOCK} values, got {}",
                values.len()
            ),
        ));
    }
    let mut storage = Storage::new(dtype, values.len());
    storage.encode(dtype, 0, values);
    let mut out = vec![0.0; values.len()];
    storage.decode(dtype, 0, &mut out);
    Ok(out)
}

/// Some of one layer's cached keys or values in their storage format (one [`KvRun`]), token-major
/// rows of `kv_heads · head_dim` values (block formats: `kv_heads · head_dim / 32` blocks of
/// an f16 scale, little-endian, then 32 codes).
#[derive(Clone, Copy, Debug)]
pub enum KvView<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// IEEE half values.
    F16(&'a [f16]),
    /// bfloat16 values.
    Bf16(&'a [bf16]),
    /// q8_0 blocks.
    Int8(&'a [u8]),
    /// FP8 E4M3 blocks.
    Fp8(&'a [u8]),
}

/// A contiguous piece of one layer's cached tokens: `len` tokens from slot (= position)
/// `start` on, keys and values in their storage format.
#[derive(Clone, Copy, Debug)]
pub struct KvRun<'a> {
    /// Slot of the run's first token.
    pub start: usize,
    /// Tokens in the run.
    pub len: usize,
    /// The run's keys (pre-RoPE).
    pub keys: KvView<'a>,
    /// The run's values.
    pub values: KvView<'a>,
}

/// One layer's cached tokens in slot order as at most three contiguous runs of storage: the
/// sinks, then the frame-steps' ring in one or two pieces.
#[derive(Clone, Copy, Debug)]
pub struct KvRuns<'a> {
    runs: [Option<KvRun<'a>>; 3],
}

impl<'a> KvRuns<'a> {
    /// The runs, in slot order, each non-empty.
    pub fn iter(&self) -> impl Iterator<Item = KvRun<'a>> + '_ {
        self.runs.iter().flatten().copied()
    }

    /// Tokens in all runs.
    pub fn len(&self) -> usize {
        self.iter().map(|r| r.len).sum()
    }

    /// Whether no token is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which part of the context a block of tokens belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Attention sinks (the instruction): kept for ever, must come before any frame-step.
    Sinks,
    /// One frame-step: evicted as a whole, oldest first.
    Frame,
}

/// Configuration of a [`KvCache`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvCacheConfig {
    /// Storage format.
    pub dtype: KvDtype,
    /// Hard bound on the cache's bytes (keys + values + scales, all layers).
    pub budget_bytes: u64,
}

/// Counters a node reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KvStats {
    /// Frame-steps appended since the last reset.
    pub frames_appended: u64,
    /// Frame-steps evicted since the last reset.
    pub frames_evicted: u64,
}

/// Bounded KV cache for all layers of one model (see the module docs).
///
/// A step uses it in three phases: [`reserve`](Self::reserve) (evicts as needed, once per
/// step), then per layer [`read`](Self::read) the cached tokens and [`write`](Self::write)
/// the new ones, then [`commit`](Self::commit). [`abort`](Self::abort) drops a reserved block
/// that was not committed.
#[derive(Clone, Debug)]
pub struct KvCache {
    layout: KvLayout,
    budget: u64,
    capacity: usize,
    /// Storage element units per token row (values, or bytes for block formats).
    unit: usize,
    keys: Vec<Storage>,
    values: Vec<Storage>,
    sinks: usize,
    frames: VecDeque<usize>,
    len: usize,
    /// Slot of the oldest frame-step token, as an offset into the ring (the slots
    /// `sinks..capacity`).
    head: usize,
    pending: Option<(Segment, usize)>,
    stats: KvStats,
    /// Most frame-steps kept, whatever the budget allows (a model's trained window).
    max_frames: usize,
}

impl KvCache {
    /// Allocates a cache whose storage never exceeds `budget` bytes nor `max_tokens` tokens
    /// (the context length: positions run from 0 to `len`, so this bounds every query-key
    /// distance). `sinks` and `max_frame_tokens` are the instruction length and the largest
    /// frame-step the caller will append; together they must fit.
    ///
    /// # Errors
    /// [`Error::Config`] if the layout is invalid or the budget (or context) is too small for
    /// the sinks plus one frame-step.
    pub fn new(
        layout: KvLayout,
        budget: u64,
        max_tokens: usize,
        sinks: usize,
        max_frame_tokens: usize,
    ) -> Result<Self> {
        layout.validate()?;
        let by_budget = layout.tokens_for_budget(budget);
        let capacity = Self::capacity_for(&layout, budget, max_tokens);
        let needed = sinks + max_frame_tokens;
        if capacity < needed {
            let per_token = layout.bytes_per_token();
            return Err(Error::config(
                "budget_bytes",
                format!(
                    "{budget} bytes hold {by_budget} tokens at {per_token} bytes/token ({}), context limit {max_tokens}; \
                     the {sinks} sink tokens plus one {max_frame_tokens}-token frame-step need {needed} tokens = {} bytes",
                    layout.dtype,
                    needed as u64 * per_token
                ),
            ));
        }
        let values = capacity * layout.row_values();
        Ok(Self {
            layout,
            budget,
            capacity,
            unit: if layout.dtype.is_block_quantized() {
                layout.row_bytes()
            } else {
                layout.row_values()
            },
            keys: (0..layout.layers)
                .map(|_| Storage::new(layout.dtype, values))
                .collect(),
            values: (0..layout.layers)
                .map(|_| Storage::new(layout.dtype, values))
                .collect(),
            sinks: 0,
            frames: VecDeque::new(),
            len: 0,
            head: 0,
            pending: None,
            stats: KvStats::default(),
            max_frames: usize::MAX,
        })
    }

    /// Tokens a cache of `layout` holds under `budget` bytes and at most `max_tokens` tokens
    /// (what [`new`](Self::new) allocates, without allocating).
    pub fn capacity_for(layout: &KvLayout, budget: u64, max_tokens: usize) -> usize {
        usize::try_from(layout.tokens_for_budget(budget))
            .unwrap_or(usize::MAX)
            .min(max_tokens)
    }

    /// Keeps at most `frames` frame-steps (≥ 1): older ones are evicted as if the budget
    /// were full.
    pub fn with_max_frames(mut self, frames: usize) -> Self {
        self.max_frames = frames.max(1);
        self
    }

    /// Most frame-steps kept (`usize::MAX` when only the budget bounds them).
    pub fn max_frames(&self) -> usize {
        self.max_frames
    }

    /// The layout (and so the byte cost per token).
    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    /// Tokens stored (sinks and frame-steps).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the stored tokens occupy (≤ [`budget`](Self::budget), always).
    pub fn bytes(&self) -> u64 {
        self.layout.total_bytes(self.len as u64)
    }

    /// Bytes the preallocated storage occupies (≤ [`budget`](Self::budget)).
    pub fn allocated_bytes(&self) -> u64 {
        self.layout.total_bytes(self.capacity as u64)
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Most tokens the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of sink tokens.
    pub fn sink_len(&self) -> usize {
        self.sinks
    }

    /// Token counts of the retained frame-steps, oldest first.
    pub fn frame_lens(&self) -> impl ExactSizeIterator<Item = usize> + '_ {
        self.frames.iter().copied()
    }

    /// Number of retained frame-steps.
    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    /// Append/evict counters.
    pub fn stats(&self) -> KvStats {
        self.stats
    }

    /// Empties the cache (storage stays allocated).
    pub fn reset(&mut self) {
        self.sinks = 0;
        self.frames.clear();
        self.len = 0;
        self.head = 0;
        self.pending = None;
        self.stats = KvStats::default();
    }

    /// Makes room for `tokens` new tokens of `segment`, evicting the oldest frame-steps as
    /// needed, and returns the slot (= position) of the first new token. Sinks may only be
    /// reserved before any frame-step.
    ///
    /// # Errors
    /// [`Error::Shape`] for an empty block, a block that cannot fit even after evicting every
    /// frame-step, sinks after frame-steps, or a reservation while another is pending.
    pub fn reserve(&mut self, segment: Segment, tokens: usize) -> Result<usize> {
        if self.pending.is_some() {
            return Err(Error::shape(
                "kv reserve",
                "a reserved block was not committed or aborted",
            ));
        }
        if tokens == 0 {
            return Err(Error::shape("kv reserve", "empty block"));
        }
        if segment == Segment::Sinks && !self.frames.is_empty() {
            return Err(Error::shape(
                "kv reserve",
                "sink tokens must precede every frame-step",
            ));
        }
        if self.sinks + tokens > self.capacity {
            return Err(Error::shape(
                "kv reserve",
                format!(
                    "{tokens} tokens do not fit beside {} sink tokens in a {}-token cache",
                    self.sinks, self.capacity
                ),
            ));
        }
        self.evict_to_fit(segment, tokens);
        self.pending = Some((segment, tokens));
        Ok(self.len)
    }

    /// Evicts the oldest frame-steps until `tokens` more fit, and, for a new frame-step, until
    /// it makes at most `max_frames`. Nothing moves: the ring's head advances past them and
    /// their slots are reused.
    fn evict_to_fit(&mut self, segment: Segment, tokens: usize) {
        let ring = self.capacity - self.sinks;
        let frame = usize::from(segment == Segment::Frame);
        while self.len + tokens > self.capacity || self.frames.len() + frame > self.max_frames {
            let Some(n) = self.frames.pop_front() else {
                break;
            };
            self.head = (self.head + n) % ring;
            self.len -= n;
            self.stats.frames_evicted += 1;
        }
        if self.frames.is_empty() {
            self.head = 0;
        }
    }

    /// Evicts frame-step `index` (0 = the oldest held) whatever its age: the older frame-steps
    /// move up by its tokens, so the slots stay in age order and the ring's head advances as
    /// for an eviction of the oldest. For a cache read without positions (a memory bank) that
    /// keeps the entries a caller scores highest.
    ///
    /// # Errors
    /// [`Error::Shape`] while a block is reserved, or for an index past the frame-steps held.
    pub fn remove_frame(&mut self, index: usize) -> Result<()> {
        if self.pending.is_some() {
            return Err(Error::shape(
                "kv remove",
                "a reserved block was not committed or aborted",
            ));
        }
        let Some(&n) = self.frames.get(index) else {
            return Err(Error::shape(
                "kv remove",
                format!("frame-step {index} of {}", self.frames.len()),
            ));
        };
        let ring = self.capacity - self.sinks;
        let older: usize = self.frames.iter().take(index).sum();
        let unit = self.unit;
        for t in (0..older).rev() {
            let from = (self.sinks + (self.head + t) % ring) * unit;
            let to = (self.sinks + (self.head + t + n) % ring) * unit;
            for storage in self.keys.iter_mut().chain(self.values.iter_mut()) {
                storage.copy_row(from, to, unit);
            }
        }
        self.head = (self.head + n) % ring;
        self.frames.remove(index);
        self.len -= n;
        self.stats.frames_evicted += 1;
        if self.frames.is_empty() {
            self.head = 0;
        }
        Ok(())
    }

    /// Decodes layer `layer`'s cached keys (slots `0..len`, pre-RoPE) into `keys`, resized to
    /// `len · kv_heads · head_dim`, token-major, in slot order.
    ///
    /// # Errors
    /// [`Error::Shape`] for a layer index out of range.
    pub fn read_keys(&self, layer: usize, keys: &mut Vec<f32>) -> Result<()> {
        let (k, _) = self.layer(layer)?;
        keys.resize(self.len * self.layout.row_values(), 0.0);
        self.decode_storage(k, self.pieces(), keys);
        Ok(())
    }

    /// The storage runs (first slot, token count) holding `count` tokens from logical slot
    /// `first` on: one run, or two where the ring wraps.
    fn runs(&self, first: usize, count: usize) -> [(usize, usize); 2] {
        if first < self.sinks || count == 0 {
            return [(first, count), (0, 0)];
        }
        let ring = self.capacity - self.sinks;
        let at = (self.head + first - self.sinks) % ring;
        let run = count.min(ring - at);
        [(self.sinks + at, run), (self.sinks, count - run)]
    }

    /// Decodes layer `layer`'s cached keys and values (slots `0..len`, pre-RoPE) into `keys`
    /// and `values`, each resized to `len · kv_heads · head_dim`, token-major, in slot order.
    ///
    /// # Errors
    /// [`Error::Shape`] for a layer index out of range.
    pub fn read(&self, layer: usize, keys: &mut Vec<f32>, values: &mut Vec<f32>) -> Result<()> {
        let row = self.layout.row_values();
        keys.resize(self.len * row, 0.0);
        values.resize(self.len * row, 0.0);
        self.decode_runs(layer, self.pieces(), keys, values)
    }

    /// Decodes layer `layer`'s storage runs `(first slot, tokens)`, in turn, into `keys` and
    /// `values` (token-major, as long as the runs together).
    fn decode_runs(
        &self,
        layer: usize,
        runs: impl IntoIterator<Item = (usize, usize)> + Clone,
        keys: &mut [f32],
        values: &mut [f32],
    ) -> Result<()> {
        let (k, v) = self.layer(layer)?;
        self.decode_storage(k, runs.clone(), keys);
        self.decode_storage(v, runs, values);
        Ok(())
    }

    /// Decodes `storage`'s runs `(first slot, tokens)`, in turn, into `out` (token-major, as
    /// long as the runs together).
    fn decode_storage(
        &self,
        storage: &Storage,
        runs: impl IntoIterator<Item = (usize, usize)>,
        out: &mut [f32],
    ) {
        let row = self.layout.row_values();
        let mut at = 0;
        for (first, count) in runs {
            storage.decode(
                self.layout.dtype,
                first * self.unit,
                &mut out[at * row..(at + count) * row],
            );
            at += count;
        }
    }

    /// The storage runs of the whole context in slot order: the sinks, then the frame-steps.
    fn pieces(&self) -> impl Iterator<Item = (usize, usize)> + Clone {
        let sinks = (0, self.sinks);
        let [a, b] = self.runs(self.sinks, self.len - self.sinks);
        [sinks, a, b].into_iter().filter(|(_, n)| *n > 0)
    }

    /// Layer `layer`'s cached keys and values (slots `0..len`, pre-RoPE) as stored, in slot
    /// order, for readers that decode as they go instead of into a full-size buffer
    /// ([`read`](Self::read)).
    ///
    /// # Errors
    /// [`Error::Shape`] for a layer index out of range.
    pub fn view(&self, layer: usize) -> Result<KvRuns<'_>> {
        let (k, v) = self.layer(layer)?;
        let fp8 = self.layout.dtype == KvDtype::Fp8;
        let mut runs = [None; 3];
        let mut start = 0;
        for (slot, (first, count)) in runs.iter_mut().zip(self.pieces()) {
            let units = first * self.unit..(first + count) * self.unit;
            *slot = Some(KvRun {
                start,
                len: count,
                keys: k.view(units.clone(), fp8),
                values: v.view(units, fp8),
            });
            start += count;
        }
        Ok(KvRuns { runs })
    }

    /// Stores layer `layer`'s keys and values for the reserved block (token-major
    /// `[tokens, kv_heads, head_dim]`, pre-RoPE).
    ///
    /// # Errors
    /// [`Error::Shape`] without a reservation, for a layer out of range, or for slices that
    /// are not `tokens · kv_heads · head_dim` long.
    pub fn write(&mut self, layer: usize, keys: &[f32], values: &[f32]) -> Result<()> {
        let tokens = self.check_pending("kv write", keys.len(), values.len())?;
        self.layer(layer)?;
        let (dtype, row) = (self.layout.dtype, self.layout.row_values());
        let mut at = 0;
        for (first, count) in self.runs(self.len, tokens) {
            if count == 0 {
                continue;
            }
            let src = at * row..(at + count) * row;
            self.keys[layer].encode(dtype, first * self.unit, &keys[src.clone()]);
            self.values[layer].encode(dtype, first * self.unit, &values[src]);
            at += count;
        }
        Ok(())
    }

    /// Decodes layer `layer`'s reserved block as [`write`](Self::write) stored it (rounded to
    /// the cache's format) into `keys` and `values`, each `tokens · kv_heads · head_dim` long,
    /// token-major.
    ///
    /// # Errors
    /// [`Error::Shape`] without a reservation, for a layer out of range, or for slices of
    /// another length.
    pub fn read_pending(&self, layer: usize, keys: &mut [f32], values: &mut [f32]) -> Result<()> {
        let tokens = self.check_pending("kv read", keys.len(), values.len())?;
        self.decode_runs(layer, self.runs(self.len, tokens), keys, values)
    }

    /// That a block is reserved and `keys` / `values` values fill it exactly.
    /// Returns the reserved block's token count.
    fn check_pending(&self, what: &'static str, keys: usize, values: usize) -> Result<usize> {
        let Some((_, tokens)) = self.pending else {
            return Err(Error::shape(what, "no reserved block"));
        };
        let want = tokens * self.layout.row_values();
        if keys != want || values != want {
            return Err(Error::shape(
                what,
                format!("expected {want} values, got {keys} keys and {values} values"),
            ));
        }
        Ok(tokens)
    }

    /// Makes the reserved block part of the context.
    ///
    /// # Errors
    /// [`Error::Shape`] without a reservation.
    pub fn commit(&mut self) -> Result<()> {
        let Some((segment, tokens)) = self.pending.take() else {
            return Err(Error::shape("kv commit", "no reserved block"));
        };
        match segment {
            Segment::Sinks => self.sinks += tokens,
            Segment::Frame => {
                self.frames.push_back(tokens);
                self.stats.frames_appended += 1;
            }
        }
        self.len += tokens;
        Ok(())
    }

    /// Drops a reserved block without storing it (frames evicted to make room stay evicted).
    pub fn abort(&mut self) {
        self.pending = None;
    }

    fn layer(&self, layer: usize) -> Result<(&Storage, &Storage)> {
        match (self.keys.get(layer), self.values.get(layer)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(Error::shape(
                "kv layer",
                format!("layer {layer} of {}", self.layout.layers),
            )),
        }
    }
}

#[cfg(test)]
mod tests;
