//! Set-up shared by the step benchmarks (`benches/step.rs` and `edgevla bench step`): the
//! observations fed to each step, a stream pre-filled to a number of frame-steps, and the
//! work one step must do (FLOPs and bytes read), from which a hardware floor is computed.
//!
//! A benchmark stream's budget holds exactly the sinks plus `frames` frame-steps, so once
//! pre-filled every step evicts the oldest frame-step and appends one: the steady state of a
//! robot whose history fills its cache, with the context length fixed at `frames`.

use burn::tensor::backend::Backend;

use crate::error::{Error, Result};
use crate::kv::{KvCacheConfig, KvDtype, KvLayout, Segment};
use crate::model::{StepInput, Stream, Vla, VlaConfig};

/// The instruction every benchmark episode starts with (37 bytes: 38 sink tokens).
pub const INSTRUCTION: &str = "pick up the cube the light pointed at";

/// Deterministic observations for a number of distinct steps (reused cyclically).
#[derive(Clone, Debug)]
pub struct Observations {
    patches: Vec<Vec<f32>>,
    proprio: Vec<Vec<f32>>,
    present: Vec<bool>,
}

impl Observations {
    /// `n` (≥ 1) distinct steps of values in [-1, 1] for the model `c`, all cameras present.
    pub fn new(c: &VlaConfig, n: usize) -> Self {
        let values = |seed: usize, len: usize| -> Vec<f32> {
            (0..len)
                .map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0) - 1.0)
                .collect()
        };
        let n = n.max(1);
        Self {
            patches: (0..n)
                .map(|s| values(s, c.n_cameras * c.patches_per_camera * c.patch_dim))
                .collect(),
            proprio: (0..n).map(|s| values(s + 7, c.proprio_dim)).collect(),
            present: vec![true; c.n_cameras],
        }
    }

    /// Step `i` (modulo the number of distinct steps).
    pub fn step(&self, i: usize) -> StepInput<'_> {
        let i = i % self.patches.len();
        StepInput {
            patches: &self.patches[i],
            camera_present: &self.present,
            proprio: &self.proprio[i],
        }
    }
}

/// The budget that holds the longest instruction plus exactly `frames` frame-steps in `dtype`.
pub fn steady_state_budget(c: &VlaConfig, dtype: KvDtype, frames: usize) -> u64 {
    let layout = KvLayout {
        dtype,
        ..c.kv_layout()
    };
    layout.total_bytes((c.max_sink_tokens() + frames * c.tokens_per_step()) as u64)
}

/// A stream for [`INSTRUCTION`] whose cache holds `frames` frame-steps and is full (budget from
/// [`steady_state_budget`]). The instruction runs through the model; the frame-steps' keys
/// and values are synthetic (seeded values in [-1, 1]), which costs the next steps the same
/// work as real ones and fills 512 frame-steps in milliseconds instead of minutes.
///
/// # Errors
/// [`Error::Config`] if the model's context cannot hold `frames` frame-steps (use a RoPE
/// preset with a longer context); model errors from the instruction.
pub fn prefilled_stream<B: Backend>(
    model: &Vla<B>,
    dtype: KvDtype,
    frames: usize,
    device: &B::Device,
) -> Result<Stream<B>> {
    let c = model.config();
    let cache = KvCacheConfig {
        dtype,
        budget_bytes: steady_state_budget(c, dtype, frames),
    };
    let mut stream = model.new_stream(&cache, device)?;
    model.start_episode(INSTRUCTION, &mut stream)?;
    let tokens = c.tokens_per_step();
    let row = c.kv_layout().row_values();
    let mut state = 0x5EED_u64;
    let mut next = move || {
        // xorshift64*: cheap, deterministic.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        ((state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    };
    let mut keys = vec![0.0f32; tokens * row];
    let mut values = vec![0.0f32; tokens * row];
    let cache = stream.cache_mut();
    for _ in 0..frames {
        cache.reserve(Segment::Frame, tokens)?;
        for layer in 0..c.n_layers {
            keys.iter_mut().for_each(|v| *v = next());
            values.iter_mut().for_each(|v| *v = next());
            cache.write(layer, &keys, &values)?;
        }
        cache.commit()?;
    }
    if cache.frames() != frames || cache.stats().frames_evicted != 0 {
        return Err(Error::config(
            "frames",
            format!(
                "the cache kept {} of {frames} frame-steps (context {} tokens); choose a RoPE preset with a longer context",
                cache.frames(),
                c.context_length()
            ),
        ));
    }
    Ok(stream)
}

/// The work of one control step: what it must compute and read at least.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCost {
    /// Tokens in the cache before the step.
    pub cached_tokens: usize,
    /// Tokens the step runs through the backbone (one frame-step plus the readouts).
    pub step_tokens: usize,
    /// Multiply-adds × 2 of the step: tokenizer, projections, MLPs, attention scores and
    /// weighted values (each query over the cache and the new tokens up to itself), action head.
    pub flops: f64,
    /// Bytes of f32 weights the step reads (every parameter but the instruction embedding).
    pub weight_bytes: u64,
    /// Bytes of the cache the step reads (every cached key and value once, in its storage
    /// format, scales included).
    pub kv_bytes: u64,
}

impl StepCost {
    /// The cost of a step of the model `c` on top of `cached_tokens` cached tokens stored as
    /// `dtype`.
    pub fn new(c: &VlaConfig, dtype: KvDtype, cached_tokens: usize) -> Self {
        let (d, hd, ffn) = (c.d_model as f64, c.head_dim() as f64, c.ffn_dim as f64);
        let (heads, kv) = (c.n_heads as f64, c.n_kv_heads as f64);
        let t = c.tokens_per_step() + c.n_readout;
        let tf = t as f64;
        let per_layer_weights = d * heads * hd * 2.0 + d * kv * hd * 2.0 + 3.0 * d * ffn + 2.0 * d;
        let patch_tokens = (c.n_cameras * c.patches_per_camera) as f64;
        let embed_weights = c.patch_dim as f64 * d + c.proprio_dim as f64 * d;
        let head_weights = c.n_readout as f64 * d * c.action_head_outputs() as f64;
        // Keys seen by the new queries: all cached ones plus the new ones up to each query.
        let seen = tf * cached_tokens as f64 + tf * (tf + 1.0) / 2.0;
        let flops = 2.0 * tf * (per_layer_weights - 2.0 * d) * c.n_layers as f64
            + 4.0 * heads * hd * seen * c.n_layers as f64
            + 2.0 * patch_tokens * c.patch_dim as f64 * d
            + 2.0 * c.proprio_dim as f64 * d
            + 2.0 * head_weights;
        let weights = per_layer_weights * c.n_layers as f64
            + embed_weights
            + head_weights
            + (c.n_cameras + c.patches_per_camera + 1 + c.n_readout + 1) as f64 * d;
        let layout = KvLayout {
            dtype,
            ..c.kv_layout()
        };
        Self {
            cached_tokens,
            step_tokens: t,
            flops,
            weight_bytes: (weights * 4.0) as u64,
            kv_bytes: layout.total_bytes(cached_tokens as u64),
        }
    }

    /// Bytes read at least: weights plus cache.
    pub fn bytes(&self) -> u64 {
        self.weight_bytes + self.kv_bytes
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;

    use super::*;

    type B = NdArray<f32>;

    fn small() -> VlaConfig {
        VlaConfig::from_toml(
            r#"
            d_model = 64
            n_layers = 2
            n_heads = 2
            n_kv_heads = 1
            ffn_dim = 96
            n_cameras = 2
            patches_per_camera = 3
            patch_dim = 12
            proprio_dim = 5
            max_instruction_bytes = 40
            n_readout = 2
            horizon = 3
            action_dim = 2
            [rope]
            head_dim = 32
            max_position_embeddings = 512
            rope_parameters = { rope_type = "default" }
            [kv_cache]
            dtype = "int8"
            budget_bytes = 1000000
            "#,
        )
        .expect("config")
    }

    #[test]
    fn prefilled_stream_is_full_and_steps_evict_one_frame() {
        let c = small();
        let device = Default::default();
        let model = c.init::<B>(&device);
        let obs = Observations::new(&c, 3);
        let mut stream = prefilled_stream(&model, KvDtype::Int8, 5, &device).expect("stream");
        assert_eq!(stream.cache().frames(), 5);
        let before = stream.cache().len();
        for i in 0..3 {
            model.forward_step(&obs.step(i), &mut stream).expect("step");
            assert_eq!(stream.cache().frames(), 5);
            assert_eq!(stream.cache().len(), before);
            assert!(stream.cache().bytes() <= stream.cache().budget());
        }
        assert_eq!(stream.cache().stats().frames_evicted, 3);
        // A context too short for the frames is a config error.
        assert!(prefilled_stream(&model, KvDtype::Int8, 100, &device).is_err());
    }

    /// The FLOP count equals a hand count for the small model.
    #[test]
    fn step_cost_by_hand() {
        let c = small();
        let cost = StepCost::new(&c, KvDtype::F32, 10);
        let t = 7.0 + 2.0; // 2 cameras × 3 patches + proprio, 2 readouts
        let per_token_layer = 2.0 * (64.0 * 64.0 * 2.0 + 64.0 * 32.0 * 2.0 + 3.0 * 64.0 * 96.0);
        let attention = 4.0 * 2.0 * 32.0 * (t * 10.0 + t * (t + 1.0) / 2.0);
        let embed = 2.0 * 6.0 * 12.0 * 64.0 + 2.0 * 5.0 * 64.0;
        let head = 2.0 * 2.0 * 64.0 * 6.0;
        let want = 2.0 * (t * per_token_layer + attention) + embed + head;
        assert!(
            (cost.flops - want).abs() < 1e-6 * want,
            "{} vs {want}",
            cost.flops
        );
        assert_eq!(cost.kv_bytes, 10 * 2 * 2 * 32 * 4);
        assert_eq!(cost.step_tokens, 9);
    }
}
