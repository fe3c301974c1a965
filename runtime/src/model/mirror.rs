//! The tensor engine's state ([`super::StepEngine::Tensor`]): its rotary table and its device
//! copy of the KV cache.
//!
//! The cache ([`KvCache`](crate::kv::KvCache)) lives on the host: it owns the byte budget,
//! the format (f32 … int8/fp8) and eviction. A device that is not the host would otherwise
//! decode and upload the whole cache at every step, O(context) bytes per step. The mirror keeps
//! the decoded cache on the device instead, one `[1, kv_heads, len, head_dim]` key and value
//! tensor per layer (pre-RoPE, exactly the values the cache returns), and follows it: a step
//! appends its new tokens (one download of the new keys/values for the cache, one upload of
//! their stored, rounded values: not needed for an f32 cache) and an eviction drops the same
//! tokens on the device. Anything else (a reset, a cache changed from outside, an error
//! half-way) rebuilds it from the cache once.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::VlaConfig;
use super::rope_table::RopeTableCache;
use crate::error::{Error, Result};
use crate::host::float_tensor;
use crate::kv::{KvCache, KvDtype};
use crate::rope::RotaryTable;

/// What a stream on the tensor engine keeps from step to step.
#[derive(Debug)]
pub(crate) struct TensorPath<B: Backend> {
    /// Rotary table for the steps' positions.
    table: RopeTableCache<RotaryTable<B>>,
    /// The device copy of the cache (`None`: rebuilt from the cache at the next step).
    mirror: Option<Mirror<B>>,
    /// Host buffers for reading the cache (reused).
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl<B: Backend> Default for TensorPath<B> {
    fn default() -> Self {
        Self {
            table: RopeTableCache::default(),
            mirror: None,
            keys: Vec::new(),
            values: Vec::new(),
        }
    }
}

/// The decoded cache on the device.
#[derive(Debug)]
pub(crate) struct Mirror<B: Backend> {
    /// Tokens held (equal to the cache's length while in step).
    len: usize,
    /// Per layer, `None` while empty.
    keys: Vec<Option<Tensor<B, 4>>>,
    values: Vec<Option<Tensor<B, 4>>>,
}

impl<B: Backend> Mirror<B> {
    /// Layer `layer`'s cached keys and values, `[1, kv_heads, len, head_dim]` each.
    pub(crate) fn layer(&self, layer: usize) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        match (self.keys.get(layer), self.values.get(layer)) {
            (Some(Some(k)), Some(Some(v))) => Some((k.clone(), v.clone())),
            _ => None,
        }
    }
}

impl<B: Backend> TensorPath<B> {
    /// Drops the device copy: the next step rebuilds it from the cache (after the cache was
    /// changed from outside, or a step failed half-way).
    pub(crate) fn invalidate(&mut self) {
        self.mirror = None;
    }

    /// Layer `layer`'s cached keys and values on the device, `None` while the cache is empty.
    pub(crate) fn layer(&self, layer: usize) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        self.mirror.as_ref().and_then(|m| m.layer(layer))
    }

    /// Rotary table for positions `0..seq_len` with the frequencies `seq_len` calls for
    /// (rebuilt only when they change: dynamic NTK past `rope.max_position_embeddings`, which
    /// needs a `context_length` above it; LongRoPE's switch to its long factors).
    pub(crate) fn table(
        &mut self,
        config: &VlaConfig,
        seq_len: usize,
        device: &B::Device,
    ) -> Result<RotaryTable<B>> {
        let table = self.table.get(config, seq_len, |freqs, span| {
            let positions: Vec<i64> = (0..span as i64).collect();
            freqs.table::<B>(&positions, device)
        })?;
        table.narrow(0, seq_len)
    }

    /// Brings the mirror up to `cache` after a reservation: `before` is the cache's length
    /// before it (a reservation may have evicted the oldest frame-steps, right behind the
    /// sinks).
    pub(crate) fn sync(
        &mut self,
        cache: &KvCache,
        before: usize,
        device: &B::Device,
    ) -> Result<()> {
        let len = cache.len();
        if let Some(m) = self.mirror.as_mut()
            && m.len == before
            && len <= before
        {
            if len < before {
                let (sinks, dropped) = (cache.sink_len(), before - len);
                for slot in m.keys.iter_mut().chain(m.values.iter_mut()) {
                    if let Some(old) = slot.take() {
                        let mut parts = Vec::with_capacity(2);
                        if sinks > 0 {
                            parts.push(old.clone().narrow(2, 0, sinks));
                        }
                        if len > sinks {
                            parts.push(old.narrow(2, sinks + dropped, len - sinks));
                        }
                        *slot = (!parts.is_empty()).then(|| Tensor::cat(parts, 2));
                    }
                }
                m.len = len;
            }
            return Ok(());
        }
        let layout = *cache.layout();
        let (layers, kv, hd) = (layout.layers, layout.kv_heads, layout.head_dim);
        let mut keys = Vec::with_capacity(layers);
        let mut values = Vec::with_capacity(layers);
        for layer in 0..layers {
            if len == 0 {
                keys.push(None);
                values.push(None);
                continue;
            }
            cache.read(layer, &mut self.keys, &mut self.values)?;
            let upload = |v: Vec<f32>| {
                float_tensor::<B, f32, 4>(v, [1, len, kv, hd], device).swap_dims(1, 2)
            };
            keys.push(Some(upload(std::mem::take(&mut self.keys))));
            values.push(Some(upload(std::mem::take(&mut self.values))));
        }
        self.mirror = Some(Mirror { len, keys, values });
        Ok(())
    }

    /// Stores the first `store` tokens of every layer's new keys and values
    /// (`[1, kv_heads, tokens, head_dim]`) in the cache's reserved block and appends what the
    /// cache holds for them to the mirror.
    pub(crate) fn store_new(
        &mut self,
        cache: &mut KvCache,
        new_kv: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
        store: usize,
        device: &B::Device,
    ) -> Result<()> {
        if store == 0 {
            return Ok(());
        }
        let layout = *cache.layout();
        let (kv, hd) = (layout.kv_heads, layout.head_dim);
        let new: Vec<Tensor<B, 4>> = new_kv
            .into_iter()
            .flat_map(|(k, v)| [k.narrow(2, 0, store), v.narrow(2, 0, store)])
            .collect();
        // One download: [2 · layers, store, kv, hd], keys and values of each layer in turn.
        let token_major: Vec<Tensor<B, 4>> =
            new.iter().map(|t| t.clone().swap_dims(1, 2)).collect();
        let host = crate::host::host_values(Tensor::cat(token_major, 0), "kv write")?;
        let n = store * kv * hd;
        for (layer, pair) in host.chunks_exact(2 * n).enumerate() {
            cache.write(layer, &pair[..n], &pair[n..])?;
        }
        let stored = if layout.dtype == KvDtype::F32 {
            // Stored exactly: the device's own values are the cache's.
            new
        } else {
            let mut rounded = vec![0.0f32; host.len()];
            for (layer, pair) in rounded.chunks_exact_mut(2 * n).enumerate() {
                let (k, v) = pair.split_at_mut(n);
                cache.read_pending(layer, k, v)?;
            }
            let count = rounded.len() / n;
            let all = float_tensor::<B, f32, 4>(rounded, [count, store, kv, hd], device);
            (0..count)
                .map(|i| all.clone().narrow(0, i, 1).swap_dims(1, 2))
                .collect()
        };
        let Some(m) = self.mirror.as_mut() else {
            return Err(Error::shape("kv mirror", "not built before the step"));
        };
        let mut stored = stored.into_iter();
        for (k_slot, v_slot) in m.keys.iter_mut().zip(m.values.iter_mut()) {
            for slot in [&mut *k_slot, &mut *v_slot] {
                let Some(t) = stored.next() else {
                    return Err(Error::shape("kv mirror", "fewer layers than the cache"));
                };
                *slot = Some(match slot.take() {
                    Some(old) => Tensor::cat(vec![old, t], 2),
                    None => t,
                });
            }
        }
        m.len += store;
        Ok(())
    }
}
