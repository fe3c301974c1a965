//! The CPU path of a cached step: projections and MLPs through burn, attention through
//! [`crate::attention`] straight over the cache's storage (decoded chunk by chunk, never as a
//! whole), and no per-step tensors the size of the cache (no rotary table slice, no bias).

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::{Block, VlaConfig};
use crate::attention::{AttendInput, AttentionScratch, HostRope, attend};
use crate::error::{Error, Result};
use crate::host::float_tensor;
use crate::kv::KvCache;

/// Working state of the host path, kept by a [`super::Stream`] from step to step.
#[derive(Debug, Default)]
pub(crate) struct HostPath {
    rope: Option<HostRope>,
    scratch: AttentionScratch,
    out: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
}

impl HostPath {
    /// Whether the backend computes on the host, where the cache already is (burn's ndarray
    /// backend): then attention reads the cache in place instead of uploading a decoded copy.
    pub(crate) fn for_backend<B: Backend>(device: &B::Device) -> Option<Self> {
        B::name(device).starts_with("ndarray").then(Self::default)
    }

    /// Makes the host rotary table cover `seq_len` positions with the frequencies `seq_len`
    /// calls for (rebuilt only when they change, as the tensor path's table).
    pub(crate) fn prepare(&mut self, config: &VlaConfig, seq_len: usize) {
        let freqs = config.rope.frequencies(Some(seq_len));
        let stale = self
            .rope
            .as_ref()
            .is_none_or(|r| *r.frequencies() != freqs || r.positions() < seq_len);
        if stale {
            let span = config.context_length().max(seq_len);
            self.rope = Some(HostRope::new(freqs, span));
        }
    }
}

fn host_values<B: Backend, const D: usize>(
    t: Tensor<B, D>,
    what: &'static str,
) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| Error::shape(what, format!("{e:?}")))
}

impl<B: Backend> Block<B> {
    /// Block for new tokens on top of layer `layer` of the cache (host path); the first `store`
    /// tokens' keys and values are written into the cache's reserved block. Only tokens
    /// `queries_from..` are computed past the key/value projections (the last layer needs no
    /// outputs for tokens that are only stored).
    ///
    /// # Shapes
    /// - `x`: `[1, tq, d_model]`
    /// - output: `[1, tq - queries_from, d_model]`
    pub(super) fn forward_cached_host(
        &self,
        x: Tensor<B, 3>,
        cache: &mut KvCache,
        host: &mut HostPath,
        layer: usize,
        store: usize,
        queries_from: usize,
    ) -> Result<Tensor<B, 3>> {
        let attn = &self.self_attn;
        let (heads, kv, hd) = (attn.n_heads, attn.n_kv_heads, attn.head_dim);
        let [_, tq, d] = x.dims();
        let device = x.device();
        let past = cache.len();
        let (q, k_new, v_new) = attn.project(self.input_layernorm.forward(x.clone()));
        let rows = tq - queries_from;
        let (x, q) = if queries_from > 0 {
            (
                x.narrow(1, queries_from, rows),
                q.narrow(2, queries_from, rows),
            )
        } else {
            (x, q)
        };
        let q = host_values(q, "host attention q")?; // [heads, rows, hd]
        let k_new = host_values(k_new, "host attention k")?; // [kv, tq, hd]
        let v_new = host_values(v_new, "host attention v")?;
        let rope = host
            .rope
            .as_ref()
            .ok_or_else(|| Error::shape("host attention", "rope table not prepared"))?;
        let (keys, values) = cache.view(layer)?;
        attend(
            &AttendInput {
                q: &q,
                k_new: &k_new,
                v_new: &v_new,
                keys,
                values,
                past,
                tk_new: tq,
                q_first: queries_from,
                n_heads: heads,
                n_kv_heads: kv,
                head_dim: hd,
            },
            rope,
            &mut host.scratch,
            &mut host.out,
        )?;
        if store > 0 {
            // Head-major [kv, tq, hd] → token-major [store, kv, hd] for the cache.
            let row = kv * hd;
            for (buf, src) in [(&mut host.keys, &k_new), (&mut host.values, &v_new)] {
                buf.resize(store * row, 0.0);
                for t in 0..store {
                    for g in 0..kv {
                        buf[t * row + g * hd..t * row + (g + 1) * hd]
                            .copy_from_slice(&src[(g * tq + t) * hd..(g * tq + t + 1) * hd]);
                    }
                }
            }
            cache.write(layer, &host.keys, &host.values)?;
        }
        let out = float_tensor::<B, f32, 3>(host.out.clone(), [1, rows, heads * hd], &device);
        let x = x + attn.o_proj.forward(out);
        debug_assert_eq!(x.dims(), [1, rows, d]);
        Ok(x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x)))
    }
}
