//! Streaming: a [`Stream`] holds one episode's rolling context (the KV cache, and the memory
//! bank of a model with a memory) and the state of the [`StepEngine`] that steps it;
//! [`Vla::start_episode`] stores the instruction as attention sinks and [`Vla::forward_step`]
//! appends one frame-step and returns its action chunk.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use std::collections::VecDeque;

use super::{
    ActionChunk, BankEviction, StepInput, StepOutput, Vla, VlaConfig, causal_bias, host, mirror,
};
use crate::error::{Error, Result};
use crate::host::float_tensor;
use crate::kv::{KvCache, KvCacheConfig, KvLayout, Segment};

/// One memory token held in a stream's bank.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryEntry {
    /// The frame-step it was stored at (0 = the episode's first).
    pub step: u64,
    /// The attention the readouts of later steps gave it, summed over those steps: each step's
    /// share (averaged over layers, heads and readouts) times the number of tokens it was
    /// read among, so 1 is an even spread whatever the bank's fill; counted only under
    /// [`BankEviction::Read`].
    pub read: f64,
    /// Steps whose reads are counted in `read`.
    pub reads: u64,
}

impl MemoryEntry {
    /// Mean attention per step since it was stored (0 before its first read).
    pub fn mean_read(&self) -> f64 {
        if self.reads == 0 {
            0.0
        } else {
            self.read / self.reads as f64
        }
    }
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

/// How a stream computes its steps, chosen when the stream is made
/// ([`Vla::new_stream_with`]; [`Vla::new_stream`] takes [`StepEngine::default_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepEngine {
    /// The CPU path ([`host`]): host buffers from end to end, attention straight over the
    /// cache's storage, the weights copied once into the stream in the layouts it wants. The
    /// only engine of a model with a memory bank.
    Host,
    /// burn tensors on the stream's device, with a device copy of the cache ([`mirror`]):
    /// the path of devices that are not the host.
    Tensor,
}

impl StepEngine {
    /// The engine for `device`: [`Host`](Self::Host) on burn's ndarray backend (it computes on
    /// the host), [`Tensor`](Self::Tensor) elsewhere.
    pub fn default_for<B: Backend>(device: &B::Device) -> Self {
        if B::name(device).starts_with("ndarray") {
            Self::Host
        } else {
            Self::Tensor
        }
    }
}

/// A stream's engine and its working state.
#[derive(Debug)]
enum Path<B: Backend> {
    Host(Box<host::HostPath>),
    Tensor(mirror::TensorPath<B>),
}

/// The rolling context of one episode: the KV cache (and the memory bank of a model with a
/// memory) plus the state of the engine that steps it.
#[derive(Debug)]
pub struct Stream<B: Backend> {
    cache: KvCache,
    /// The memory bank (models with a memory): one token per frame-step, evicted as
    /// `memory.bank_eviction` says.
    bank: Option<KvCache>,
    /// The bank's tokens in its slot order: their frame-steps and reads.
    entries: VecDeque<MemoryEntry>,
    /// Frame-steps appended since the episode started.
    steps: u64,
    /// The config of the model that made the stream; a step of a model of another
    /// architecture is refused ([`VlaConfig::same_architecture`]).
    arch: VlaConfig,
    path: Path<B>,
    device: B::Device,
}

impl<B: Backend> Stream<B> {
    /// The engine this stream steps with.
    pub fn engine(&self) -> StepEngine {
        match self.path {
            Path::Host(_) => StepEngine::Host,
            Path::Tensor(_) => StepEngine::Tensor,
        }
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

    /// The bank's memory tokens (models with a memory; empty otherwise), in the bank's order:
    /// the frame-step each was stored at and its reads.
    pub fn memory_entries(&self) -> impl ExactSizeIterator<Item = &MemoryEntry> + '_ {
        self.entries.iter()
    }

    /// Frame-steps appended since the episode started.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The cache, mutable (benchmarks fill it with synthetic frame-steps). The device copy is
    /// dropped and rebuilt from the cache at the next step.
    pub(crate) fn cache_mut(&mut self) -> &mut KvCache {
        if let Path::Tensor(t) = &mut self.path {
            t.invalidate();
        }
        &mut self.cache
    }

    /// Refuses a step of a model whose weights are not the ones this stream was made for.
    fn check_model(&self, config: &VlaConfig) -> Result<()> {
        if self.arch.same_architecture(config) {
            Ok(())
        } else {
            Err(Error::config(
                "stream",
                "this stream was made by a model of another architecture (Vla::new_stream)",
            ))
        }
    }
}

/// The error for a model with a memory on the tensor engine: the bank runs on the host only.
fn host_only() -> Error {
    Error::config(
        "memory",
        "a model with a memory bank runs on the host (CPU) engine only (StepEngine::Host)",
    )
}

impl<B: Backend> Vla<B> {
    /// A stream with a KV cache for this model, stepped by the engine for `device`
    /// ([`StepEngine::default_for`]; see [`new_stream_with`](Self::new_stream_with)).
    ///
    /// # Errors
    /// As [`new_stream_with`](Self::new_stream_with).
    pub fn new_stream(&self, cache: &KvCacheConfig, device: &B::Device) -> Result<Stream<B>> {
        self.new_stream_with(cache, StepEngine::default_for::<B>(device), device)
    }

    /// A stream with a KV cache for this model, stepped by `engine`: `cache` gives the storage
    /// format and byte budget (the model's own default is `config().kv_cache`); the context
    /// length bounds it too. The host engine copies the weights into the stream once (see
    /// [`host`]), so a stream belongs to the model that made it (or one from
    /// [`with_rope`](Self::with_rope) of it); a model of another architecture is refused at
    /// every step.
    ///
    /// # Errors
    /// [`Error::Config`] if the budget cannot hold the longest instruction plus one frame-step
    /// (a model with a memory: its whole window), the format does not fit the head size, or
    /// the engine cannot run this model (a memory bank needs [`StepEngine::Host`]);
    /// [`Error::Shape`] if the weights cannot be read for the host engine.
    pub fn new_stream_with(
        &self,
        cache: &KvCacheConfig,
        engine: StepEngine,
        device: &B::Device,
    ) -> Result<Stream<B>> {
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
        let bank = match &c.memory {
            None => None,
            Some(m) => {
                if engine != StepEngine::Host {
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
        let path = match engine {
            StepEngine::Host => Path::Host(Box::new(host::HostPath::new(self)?)),
            StepEngine::Tensor => Path::Tensor(mirror::TensorPath::default()),
        };
        Ok(Stream {
            cache: kv,
            bank,
            entries: VecDeque::new(),
            steps: 0,
            arch: c.clone(),
            path,
            device: device.clone(),
        })
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
        stream.entries.clear();
        stream.steps = 0;
        stream.check_model(&self.config)?;
        let x = match &mut stream.path {
            Path::Host(host) => Tokens::Host(host.embed_instruction(&ids)?),
            Path::Tensor(_) => Tokens::Tensor(self.embed_instruction(&ids, &stream.device)),
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
        stream.check_model(&self.config)?;
        let x = match &mut stream.path {
            Path::Host(host) => Tokens::Host(host.embed_step(step)?),
            Path::Tensor(_) => {
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
                let Path::Host(host) = &stream.path else {
                    return Err(Error::shape("host step", "no host engine"));
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
        // A full bank that keeps what is read evicts its least-read token before the step's
        // reservation (which would evict the oldest).
        let by_reads = self
            .config
            .memory
            .as_ref()
            .filter(|m| m.bank_eviction == BankEviction::Read);
        if let (Segment::Frame, Some(m), Some(bank)) = (segment, by_reads, stream.bank.as_mut())
            && bank.len() >= bank.capacity()
        {
            let victim = least_read(&stream.entries, m.recent_steps());
            bank.remove_frame(victim)?;
            stream.entries.remove(victim);
        }
        let before = stream.cache.len();
        let past = stream.cache.reserve(segment, store)?;
        // A frame-step's memory token (the token after its frame tokens) goes to the bank.
        let memory = match (segment, stream.bank.as_mut()) {
            (Segment::Frame, Some(bank)) => match bank.reserve(Segment::Frame, 1) {
                Ok(_) => {
                    // The tokens the reservation evicted (the oldest) leave the entries too.
                    while stream.entries.len() > bank.len() {
                        stream.entries.pop_front();
                    }
                    Some(store)
                }
                Err(e) => {
                    stream.cache.abort();
                    return Err(e);
                }
            },
            _ => None,
        };
        let mut reads = match (memory, by_reads, stream.bank.as_ref()) {
            (Some(_), Some(_), Some(bank)) => Some(vec![0.0f32; bank.len()]),
            _ => None,
        };
        let Stream {
            cache,
            bank,
            entries,
            steps,
            path,
            device,
            ..
        } = stream;
        let result = (|| match (x, &mut *path) {
            (Tokens::Host(t), Path::Host(host)) => {
                let bank = match (bank.as_mut(), memory) {
                    (Some(bank), Some(row)) => Some(host::BankStep {
                        bank,
                        row,
                        reads: reads.as_deref_mut(),
                    }),
                    _ => None,
                };
                let hidden = host.run(&self.config, cache, t, store, bank)?;
                Ok(Hidden::Host(hidden.to_vec()))
            }
            (Tokens::Tensor(x), Path::Tensor(tensor)) => {
                let [_, t, _] = x.dims();
                let table = tensor.table(&self.config, past + t, device)?;
                let bias = causal_bias::<B>(past, t, device);
                tensor.sync(cache, before, device)?;
                let mut x = x;
                let mut new_kv = Vec::with_capacity(self.layers.len());
                for (layer, block) in self.layers.iter().enumerate() {
                    let cached = tensor.layer(layer);
                    let (y, k, v) = block.forward_cached(x, cached, past, &table, bias.clone())?;
                    x = y;
                    new_kv.push((k, v));
                }
                tensor.store_new(cache, new_kv, store, device)?;
                let x = if store < t {
                    x.narrow(1, store, t - store)
                } else {
                    x
                };
                Ok(Hidden::Tensor(self.norm.forward(x)))
            }
            _ => Err(Error::shape(
                "stream",
                "tokens embedded for the other engine (host / tensor)",
            )),
        })();
        match result {
            Ok(hidden) => {
                cache.commit()?;
                if let (Some(bank), Some(_)) = (bank.as_mut(), memory) {
                    bank.commit()?;
                    if let Some(reads) = &reads {
                        // Each share relative to an even spread over the tokens read (the
                        // stored ones and the step's own), so that a token read while the bank
                        // was filling counts no more than one read from a full bank.
                        let even = (reads.len() + 1) as f64;
                        for (entry, r) in entries.iter_mut().zip(reads) {
                            entry.read += f64::from(*r) * even;
                            entry.reads += 1;
                        }
                    }
                    entries.push_back(MemoryEntry {
                        step: *steps,
                        read: 0.0,
                        reads: 0,
                    });
                }
                if segment == Segment::Frame {
                    *steps += 1;
                }
                Ok(hidden)
            }
            Err(e) => {
                cache.abort();
                if let (Some(bank), Some(_)) = (bank.as_mut(), memory) {
                    bank.abort();
                }
                // Rebuilt from the cache at the next step.
                if let Path::Tensor(tensor) = path {
                    tensor.invalidate();
                }
                Err(e)
            }
        }
    }
}

/// The bank entry [`BankEviction::Read`] evicts: the lowest mean read among all but the
/// newest `recent` (the oldest of equals; a NaN read lowest of all); the oldest when every
/// entry is recent.
fn least_read(entries: &VecDeque<MemoryEntry>, recent: usize) -> usize {
    let candidates = entries.len().saturating_sub(recent);
    let score = |i: usize| {
        let m = entries[i].mean_read();
        if m.is_nan() { f64::NEG_INFINITY } else { m }
    };
    (0..candidates)
        .min_by(|&a, &b| score(a).total_cmp(&score(b)).then(a.cmp(&b)))
        .unwrap_or(0)
}
