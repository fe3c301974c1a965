//! Model tests: incremental decoding equals full recomputation (with and without eviction,
//! default RoPE and YaRN, with and without GQA); quantized caches against the f32 cache; bad
//! inputs and configs.

use burn::backend::NdArray;
use burn::tensor::backend::Backend;

use super::*;
use crate::kv::{KvCacheConfig, KvDtype, round_trip};
use crate::test_util::{rel_err, uniform_f32 as values};

type B = NdArray<f32>;

pub(crate) fn tiny_config(n_kv_heads: usize, rope: &str, dtype: &str, budget: u64) -> VlaConfig {
    let text = format!(
        r#"
        d_model = 64
        n_layers = 2
        n_heads = 2
        n_kv_heads = {n_kv_heads}
        ffn_dim = 96
        n_cameras = 2
        patches_per_camera = 3
        patch_dim = 12
        proprio_dim = 5
        max_instruction_bytes = 8
        n_readout = 2
        horizon = 3
        action_dim = 2
        [rope]
        head_dim = 32
        max_position_embeddings = 512
        rope_parameters = {rope}
        [kv_cache]
        dtype = "{dtype}"
        budget_bytes = {budget}
        "#
    );
    VlaConfig::from_toml(&text).expect("tiny config")
}

const DEFAULT_ROPE: &str = r#"{ rope_type = "default" }"#;
const YARN_ROPE: &str =
    r#"{ rope_type = "yarn", factor = 4.0, original_max_position_embeddings = 128 }"#;

struct Steps {
    patches: Vec<Vec<f32>>,
    present: Vec<Vec<bool>>,
    proprio: Vec<Vec<f32>>,
}

impl Steps {
    fn new(c: &VlaConfig, n: usize, seed: u64) -> Self {
        let patch_values = c.n_cameras * c.patches_per_camera * c.patch_dim;
        Self {
            patches: (0..n)
                .map(|i| values(seed + i as u64 * 7, patch_values))
                .collect(),
            // Camera 1 drops out every third step.
            present: (0..n)
                .map(|i| (0..c.n_cameras).map(|cam| cam != 1 || i % 3 != 2).collect())
                .collect(),
            proprio: (0..n)
                .map(|i| values(seed + 1000 + i as u64, c.proprio_dim))
                .collect(),
        }
    }

    fn get(&self, i: usize) -> StepInput<'_> {
        StepInput {
            patches: &self.patches[i],
            camera_present: &self.present[i],
            proprio: &self.proprio[i],
        }
    }
}

/// Episodes' steps laid out as a training batch wants them.
struct FlatSteps {
    steps: usize,
    patches: Vec<f32>,
    present: Vec<bool>,
    proprio: Vec<f32>,
}

impl FlatSteps {
    fn of(episodes: &[Steps], steps: usize) -> Self {
        let mut flat = Self {
            steps,
            patches: Vec::new(),
            present: Vec::new(),
            proprio: Vec::new(),
        };
        for e in episodes {
            for k in 0..steps {
                flat.patches.extend_from_slice(&e.patches[k]);
                flat.present.extend_from_slice(&e.present[k]);
                flat.proprio.extend_from_slice(&e.proprio[k]);
            }
        }
        flat
    }

    fn batch<'a>(&'a self, instructions: &'a [&'a str]) -> TrainBatch<'a> {
        TrainBatch {
            instructions,
            steps: self.steps,
            patches: &self.patches,
            camera_present: &self.present,
            proprio: &self.proprio,
        }
    }
}

fn flat(t: Tensor<B, 3>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("tensor data")
}

/// burn's random initialization draws from one global generator per backend; tests run in
/// parallel threads, so seeding and initializing happen under one lock.
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn model(c: &VlaConfig, seed: u64) -> Vla<B> {
    let _guard = INIT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let device = Default::default();
    B::seed(&device, seed);
    c.init::<B>(&device)
}

fn stream(m: &Vla<B>) -> Stream<B> {
    m.new_stream(&m.config().kv_cache, &Default::default())
        .expect("stream")
}

/// Incremental steps (f32 cache, nothing evicted) equal a full forward over the same context,
/// ≤ 1e-4 relative (max-abs) on the readout hidden states and the action chunk.
#[test]
fn incremental_equals_full_recompute() {
    let device = Default::default();
    for (rope, name) in [(DEFAULT_ROPE, "default"), (YARN_ROPE, "yarn")] {
        for kv_heads in [1, 2] {
            let c = tiny_config(kv_heads, rope, "f32", 1 << 30);
            let m = model(&c, 1);
            let steps = Steps::new(&c, 6, 42);
            let mut stream = stream(&m);
            m.start_episode("pick", &mut stream).expect("start");
            for i in 0..6 {
                let inc = m.forward_step(&steps.get(i), &mut stream).expect("step");
                let all: Vec<StepInput<'_>> = (0..=i).map(|j| steps.get(j)).collect();
                let full = m.forward_full("pick", &all, &device).expect("full");
                let e = rel_err(&flat(inc.readout), &flat(full.readout));
                let ea = rel_err(&inc.action.values, &full.action.values);
                assert!(
                    e <= 1e-4 && ea <= 1e-4,
                    "{name} kv_heads {kv_heads} step {i}: readout {e:e}, action {ea:e}"
                );
            }
            assert_eq!(stream.cache().frames(), 6);
            assert_eq!(stream.cache().sink_len(), 5);
        }
    }
}

/// Under a budget that holds only a few frame-steps, each incremental step of a one-layer
/// model equals a full forward over the instruction plus exactly the retained steps: cached
/// keys are stored before RoPE, so compacting positions after an eviction is exact. (With
/// more layers the retained steps' deeper keys remember the evicted ones, as in any sliding
/// window cache, so only the first layer can be compared this way.)
#[test]
fn incremental_with_eviction_equals_recompute_over_retained_steps() {
    let device = Default::default();
    for rope in [DEFAULT_ROPE, YARN_ROPE] {
        let probe = tiny_config(1, rope, "f32", 1 << 30);
        // Sinks (1 + 4 bytes) + 3 frame-steps of 7 tokens.
        let budget = probe.kv_layout().total_bytes(5 + 3 * 7) / 2; // one layer: half the bytes
        let mut c = tiny_config(1, rope, "f32", budget);
        c.n_layers = 1;
        let m = model(&c, 2);
        let steps = Steps::new(&c, 9, 7);
        let mut stream = stream(&m);
        m.start_episode("open", &mut stream).expect("start");
        for i in 0..9 {
            let inc = m.forward_step(&steps.get(i), &mut stream).expect("step");
            assert!(stream.cache().bytes() <= budget);
            let kept = stream.cache().frames();
            assert_eq!(kept, (i + 1).min(3));
            let retained: Vec<StepInput<'_>> = (i + 1 - kept..=i).map(|j| steps.get(j)).collect();
            let full = m.forward_full("open", &retained, &device).expect("full");
            let e = rel_err(&flat(inc.readout), &flat(full.readout));
            assert!(e <= 1e-4, "step {i}: {e:e}");
        }
        assert_eq!(stream.cache().stats().frames_evicted, 6);
    }
}

/// The attention output with keys and values through each cache format vs the f32 values,
/// relative Frobenius error, on random and on structured inputs (smooth sinusoids plus a few
/// outlier channels, as real key activations have). Bounds: f16 1e-3, bf16 1e-2, int8 1e-2,
/// fp8 5e-2.
#[test]
fn quantized_cache_attention_error() {
    let device = Default::default();
    let c = tiny_config(1, DEFAULT_ROPE, "f32", 1 << 30);
    let m = model(&c, 3);
    let attn = &m.layers[0].self_attn;
    let (nh, kv, hd, tq, tk) = (2, 1, 32, 8, 256);
    let structured = |seed: u64| -> Vec<f32> {
        let noise = values(seed, tk * kv * hd);
        (0..tk * kv * hd)
            .map(|i| {
                let (t, ch) = (i / hd, i % hd);
                let outlier = if ch == 3 || ch == 17 { 12.0 } else { 1.0 };
                outlier * ((t as f32 * 0.05 * (ch as f32 + 1.0)).sin() + 0.1 * noise[i])
            })
            .collect()
    };
    let cases = [
        ("random", values(11, tk * kv * hd), values(12, tk * kv * hd)),
        ("structured", structured(13), structured(14)),
    ];
    let q_host = values(10, nh * tq * hd);
    for (kind, k_host, v_host) in cases {
        let tensor4 =
            |v: &[f32], shape: [usize; 4]| float_tensor::<B, f32, 4>(v.to_vec(), shape, &device);
        let q = tensor4(&q_host, [1, nh, tq, hd]);
        let bias = Tensor::<B, 3>::zeros([1, tq, tk], &device);
        let reference = flat(attn.attend(
            q.clone(),
            tensor4(&k_host, [1, kv, tk, hd]),
            tensor4(&v_host, [1, kv, tk, hd]),
            bias.clone(),
        ));
        for (dtype, bound) in [
            (KvDtype::F16, 1e-3),
            (KvDtype::Bf16, 1e-2),
            (KvDtype::Int8, 1e-2),
            (KvDtype::Fp8, 5e-2),
        ] {
            let k = tensor4(
                &round_trip(dtype, &k_host).expect("round trip"),
                [1, kv, tk, hd],
            );
            let v = tensor4(
                &round_trip(dtype, &v_host).expect("round trip"),
                [1, kv, tk, hd],
            );
            let out = flat(attn.attend(q.clone(), k, v, bias.clone()));
            let num: f64 = out
                .iter()
                .zip(&reference)
                .map(|(a, b)| f64::from(a - b).powi(2))
                .sum();
            let den: f64 = reference.iter().map(|b| f64::from(*b).powi(2)).sum();
            let e = (num / den).sqrt();
            eprintln!("{kind} {dtype}: attention output relative error {e:.2e}");
            assert!(e <= bound, "{kind} {dtype}: {e:e} > {bound:e}");
        }
    }
}

/// The tensor path (what a GPU runs: the cache mirrored on the device, only new tokens
/// uploaded) equals the host path (burn-free: `model::host`) step by step, for every cache
/// format, through evictions (a budget of 4 frame-steps, 10 steps), a missing camera, a cache
/// touched from outside (the device copy is rebuilt) and a second episode on the same stream:
/// actions, cue logits and readouts ≤ 1e-4 relative (1e-3 with an int8/fp8 cache).
#[test]
fn tensor_path_equals_host_path() {
    for kv_heads in [1, 2] {
        for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Int8, KvDtype::Fp8] {
            let mut c = tiny_config(kv_heads, YARN_ROPE, "f32", 1 << 30);
            c.kv_cache.dtype = dtype;
            c.cue_classes = 3;
            let budget = c
                .kv_layout()
                .total_bytes((5 + 4 * c.tokens_per_step()) as u64);
            c.kv_cache.budget_bytes = budget;
            let m = model(&c, 7);
            let steps = Steps::new(&c, 10, 5);
            let mut host = stream(&m);
            let mut tensor = m
                .new_stream_with(
                    &m.config().kv_cache,
                    StepEngine::Tensor,
                    &Default::default(),
                )
                .expect("tensor stream");
            assert_eq!(
                (host.engine(), tensor.engine()),
                (StepEngine::Host, StepEngine::Tensor)
            );
            for (episode, n) in [("pick", 10), ("place", 3)] {
                m.start_episode(episode, &mut host).expect("start");
                m.start_episode(episode, &mut tensor).expect("start");
                for i in 0..n {
                    if i == 6 {
                        // The cache touched from outside (as the step benchmark fills it):
                        // the device copy is rebuilt from it.
                        let _ = tensor.cache_mut();
                    }
                    let a = m.forward_step(&steps.get(i), &mut host).expect("host step");
                    let b = m
                        .forward_step(&steps.get(i), &mut tensor)
                        .expect("tensor step");
                    let e = rel_err(&flat(b.readout), &flat(a.readout));
                    let ea = rel_err(&b.action.values, &a.action.values);
                    let (ca, cb) = (a.cue_logits.expect("cue"), b.cue_logits.expect("cue"));
                    let ec = rel_err(&cb, &ca);
                    // The paths compute the projections with different matrix kernels (last-bit
                    // differences); a key at a rounding boundary of an 8-bit format can then
                    // store one code apart (seen: 1.7e-4 on a cue logit with fp8).
                    let tol = if dtype.is_block_quantized() {
                        1e-3
                    } else {
                        1e-4
                    };
                    assert!(
                        e <= tol && ea <= tol && ec <= tol,
                        "{dtype} kv_heads {kv_heads} {episode} step {i}: readout {e:e}, action {ea:e}, cue {ec:e}"
                    );
                    assert_eq!(host.cache().len(), tensor.cache().len());
                    assert!(tensor.cache().bytes() <= budget);
                }
                if episode == "pick" {
                    assert_eq!(tensor.cache().stats().frames_evicted, 6);
                }
            }
            assert_eq!(host.cache().stats(), tensor.cache().stats());
        }
    }
}

/// A host stream holds its model's weights: a model of another architecture refuses it (an
/// error, and the cache keeps its length).
#[test]
fn stream_of_another_architecture_is_an_error() {
    let a = model(&tiny_config(1, DEFAULT_ROPE, "f32", 1 << 30), 1);
    let mut other = tiny_config(1, DEFAULT_ROPE, "f32", 1 << 30);
    other.ffn_dim = 64;
    let b = model(&other, 1);
    let mut s = stream(&a);
    a.start_episode("pick", &mut s).expect("start");
    let len = s.cache().len();
    let steps = Steps::new(a.config(), 1, 3);
    let err = b.forward_step(&steps.get(0), &mut s);
    assert!(matches!(err, Err(Error::Config { .. })), "{err:?}");
    assert_eq!(s.cache().len(), len);
    a.forward_step(&steps.get(0), &mut s).expect("own model");
}

/// End to end: the readouts after 8 steps with each cache dtype vs the f32 cache (same model).
#[test]
fn quantized_cache_model_error() {
    let device = Default::default();
    let steps_n = 8;
    let c = tiny_config(1, YARN_ROPE, "f32", 1 << 30);
    let m = model(&c, 4);
    let steps = Steps::new(&c, steps_n, 99);
    let run = |dtype: KvDtype| {
        let cache = KvCacheConfig {
            dtype,
            budget_bytes: 1 << 30,
        };
        let mut stream = m.new_stream(&cache, &device).expect("stream");
        m.start_episode("place", &mut stream).expect("start");
        let mut last = Vec::new();
        for i in 0..steps_n {
            last = flat(
                m.forward_step(&steps.get(i), &mut stream)
                    .expect("step")
                    .readout,
            );
        }
        last
    };
    let reference = run(KvDtype::F32);
    for (dtype, bound) in [
        (KvDtype::F16, 1e-3),
        (KvDtype::Bf16, 1e-2),
        (KvDtype::Int8, 1e-2),
        (KvDtype::Fp8, 5e-2),
    ] {
        let e = rel_err(&run(dtype), &reference);
        eprintln!("{dtype} cache: readout relative error after {steps_n} steps {e:.2e}");
        assert!(e <= bound, "{dtype}: {e:e}");
    }
}

#[test]
fn bad_inputs_are_errors_and_leave_the_cache_intact() {
    let c = tiny_config(1, DEFAULT_ROPE, "int8", 1 << 20);
    let m = model(&c, 5);
    let steps = Steps::new(&c, 2, 1);
    let mut stream = stream(&m);
    m.start_episode("go", &mut stream).expect("start");
    m.forward_step(&steps.get(0), &mut stream).expect("step");
    let len = stream.cache().len();

    let short = &steps.patches[1][..10];
    let err = m.forward_step(
        &StepInput {
            patches: short,
            ..steps.get(1)
        },
        &mut stream,
    );
    assert!(matches!(err, Err(Error::Shape { .. })), "{err:?}");
    let err = m.forward_step(
        &StepInput {
            camera_present: &[true],
            ..steps.get(1)
        },
        &mut stream,
    );
    assert!(matches!(err, Err(Error::Shape { .. })), "{err:?}");
    let mut nan = steps.proprio[1].clone();
    nan[2] = f32::NAN;
    let err = m.forward_step(
        &StepInput {
            proprio: &nan,
            ..steps.get(1)
        },
        &mut stream,
    );
    assert!(matches!(err, Err(Error::NonFinite { .. })), "{err:?}");
    let mut inf = steps.patches[1].clone();
    inf[0] = f32::INFINITY;
    let err = m.forward_step(
        &StepInput {
            patches: &inf,
            ..steps.get(1)
        },
        &mut stream,
    );
    assert!(matches!(err, Err(Error::NonFinite { .. })), "{err:?}");
    assert_eq!(
        stream.cache().len(),
        len,
        "rejected steps leave the cache as it was"
    );

    // A missing camera's patches are ignored, NaN or not.
    let missing = [false, true];
    let mut nan_missing = steps.patches[1].clone();
    nan_missing[0] = f32::NAN;
    m.forward_step(
        &StepInput {
            patches: &nan_missing,
            camera_present: &missing,
            ..steps.get(1)
        },
        &mut stream,
    )
    .expect("missing camera's NaN ignored");

    assert!(matches!(
        m.start_episode("an instruction far too long", &mut stream),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn config_errors_name_the_key() {
    let good = tiny_config(1, DEFAULT_ROPE, "f32", 1 << 20);
    let text = toml::to_string(&good).expect("serialize");
    assert_eq!(VlaConfig::from_toml(&text).expect("round trip"), good);
    let cases = [
        (
            text.replace("d_model = 64", "d_model = 64\nd_modle = 3"),
            "d_modle",
        ),
        (
            text.replace("n_kv_heads = 1", "n_kv_heads = 3"),
            "n_kv_heads",
        ),
        (
            text.replace("head_dim = 32", "head_dim = 16"),
            "rope.head_dim",
        ),
        (
            text.replace("dtype = \"f32\"", "dtype = \"int4\""),
            "kv_cache.dtype",
        ),
        (
            text.replace(
                "rope_type = \"default\"",
                "rope_type = \"yarn\"\nfactor = 2.0",
            ),
            "original_max_position_embeddings",
        ),
        (
            text.replace(
                "max_position_embeddings = 512",
                "max_position_embeddings = 12",
            ),
            "context_length",
        ),
    ];
    for (bad, key) in cases {
        let err = VlaConfig::from_toml(&bad)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains(key),
            "expected an error naming `{key}`, got `{err}`"
        );
    }
    // A budget below sinks + one step is refused when the stream is made.
    let tight = tiny_config(1, DEFAULT_ROPE, "f32", 1000);
    let m = model(&tight, 6);
    assert!(matches!(
        m.new_stream(&m.config().kv_cache, &Default::default()),
        Err(Error::Config { .. })
    ));
}

#[test]
fn shipped_edge_config_is_valid() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/model/edge.toml");
    let c = VlaConfig::from_file(&path).expect("edge config");
    assert_eq!(c.tokens_per_step(), 49);
    assert_eq!(c.kv_layout().bytes_per_token(), 816);
    // 1.5 MiB / 816 = 1927 tokens = 64 sinks + 38 frame-steps (+ 1 spare token).
    assert_eq!(
        c.kv_layout().tokens_for_budget(c.kv_cache.budget_bytes),
        1927
    );
}

/// The training forward (all steps at once, per-step readouts masked from later tokens)
/// predicts at every step what incremental inference predicts, ≤ 1e-4 relative, for a batch
/// of two episodes with different observations and instructions of different lengths (the
/// shorter one padded and masked); with a cue-recall head, its logits match too, and with a
/// classification action head its logits and the decoded values.
#[test]
fn training_forward_matches_incremental_steps() {
    let device = Default::default();
    let bins = ActionBins {
        bins: 16,
        low: -0.05,
        high: 0.05,
    };
    for (rope, cue_classes, bins) in [
        (DEFAULT_ROPE, 0, None),
        (YARN_ROPE, 3, None),
        (YARN_ROPE, 3, Some(bins)),
    ] {
        let mut c = tiny_config(1, rope, "f32", 1 << 30);
        c.cue_classes = cue_classes;
        c.action_bins = bins;
        let m = model(&c, 8);
        let steps_n = 5;
        let episodes = [Steps::new(&c, steps_n, 100), Steps::new(&c, steps_n, 200)];
        let instructions = ["pick", "drop it"];
        let flat_steps = FlatSteps::of(&episodes, steps_n);
        let batch = flat_steps.batch(&instructions);
        let out = m.forward_train(&batch, &device).expect("train forward");
        assert_eq!(out.actions.dims(), [2, steps_n, c.action_head_outputs()]);
        let host = |t: Tensor<B, 3>| t.into_data().convert::<f32>().into_vec::<f32>();
        let trained = host(out.actions).expect("data");
        let cue = out.cue_logits.map(|t| host(t).expect("cue data"));
        assert_eq!(cue.is_some(), cue_classes > 0);
        for (e, episode) in episodes.iter().enumerate() {
            let mut s = stream(&m);
            m.start_episode(instructions[e], &mut s).expect("start");
            for k in 0..steps_n {
                let step = m.forward_step(&episode.get(k), &mut s).expect("step");
                let outputs = c.action_head_outputs();
                let at = (e * steps_n + k) * outputs;
                let raw = &trained[at..at + outputs];
                // The head's raw outputs (bins' logits with a classification head) from the
                // step's readouts, then the decoded values.
                let step_raw = flat(m.action_head(step.readout.clone()).unsqueeze_dim(0));
                let err = rel_err(raw, &step_raw);
                assert!(err <= 1e-4, "episode {e} step {k}: head outputs {err:e}");
                let err = rel_err(&c.decode_actions(raw), &step.action.values);
                assert!(err <= 1e-4, "episode {e} step {k}: {err:e}");
                assert_eq!(step.action.values.len(), c.action_values());
                assert_eq!(step.cue_logits.is_some(), cue_classes > 0);
                if let (Some(cue), Some(inc)) = (&cue, &step.cue_logits) {
                    let at = (e * steps_n + k) * cue_classes;
                    let err = rel_err(&cue[at..at + cue_classes], inc);
                    assert!(err <= 1e-4, "cue logits, episode {e} step {k}: {err:e}");
                }
            }
        }
        // Over-long instructions and short inputs are errors.
        let bad = TrainBatch {
            instructions: &["pick", "far too long"],
            ..batch.clone()
        };
        assert!(matches!(
            m.forward_train(&bad, &device),
            Err(Error::Shape { .. })
        ));
        let short = TrainBatch {
            proprio: &flat_steps.proprio[1..],
            ..batch
        };
        assert!(matches!(
            m.forward_train(&short, &device),
            Err(Error::Shape { .. })
        ));
    }
}

/// The training forward (memory-efficient attention) equals the naive training forward, and
/// with the sequence sharded over N = 1, 2, 3 (CPU) devices and ring attention it equals the
/// one-device forward: actions and cue logits, and the gradients of the
/// loss for embedding, attention and head weights, ≤ 1e-5 relative (max-abs / max). Episodes
/// with instructions of different lengths; the sequence is padded to a multiple of 2N.
#[test]
fn ring_training_forward_equals_one_device() {
    use burn::backend::Autodiff;
    type AB = Autodiff<B>;
    let mut c = tiny_config(1, YARN_ROPE, "f32", 1 << 30);
    c.cue_classes = 3;
    let m = {
        let _guard = INIT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let device = Default::default();
        AB::seed(&device, 21);
        c.init::<AB>(&device)
    };
    let steps_n = 4;
    let episodes = [Steps::new(&c, steps_n, 7), Steps::new(&c, steps_n, 8)];
    let instructions = ["pick", "drop it"];
    let flat_steps = FlatSteps::of(&episodes, steps_n);
    let batch = flat_steps.batch(&instructions);
    let device: burn::tensor::Device<AB> = Default::default();
    let host = |t: Tensor<B, 2>| -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("data")
    };
    // Outputs and the gradients of a fixed linear loss of them.
    let run = |out: TrainOutput<AB>| {
        let actions = out.actions;
        let cue = out.cue_logits.expect("cue head");
        let weights = |dims: [usize; 3], seed: u64| {
            let n = dims.iter().product();
            float_tensor::<AB, f32, 3>(values(seed, n), dims, &device)
        };
        let loss = (actions.clone() * weights(actions.dims(), 1)).sum()
            + (cue.clone() * weights(cue.dims(), 2)).sum();
        let grads = loss.backward();
        let flat = |t: Tensor<AB, 3>| {
            let [a, b, d] = t.dims();
            host(t.inner().reshape([a * b, d]))
        };
        let grad = |p: &Param<Tensor<AB, 2>>| host(p.grad(&grads).expect("grad"));
        (
            flat(actions),
            flat(cue),
            vec![
                grad(&m.patch_embed.weight),
                grad(&m.instruction_embed),
                grad(&m.layers[0].self_attn.q_proj.weight),
                grad(&m.layers[1].self_attn.k_proj.weight),
                grad(&m.layers[1].mlp.down_proj.weight),
                grad(&m.action_head.weight),
            ],
        )
    };
    let (want_actions, want_cue, want_grads) =
        run(m.forward_train(&batch, &device).expect("one device"));
    // The memory-efficient attention equals the naive one (dense bias, whole-row softmax).
    let (actions, cue, grads) = run(m
        .forward_train_naive(&batch, &device)
        .expect("naive forward"));
    let err = rel_err(&want_actions, &actions);
    assert!(err <= 1e-5, "flash vs naive: actions {err:e}");
    let err = rel_err(&want_cue, &cue);
    assert!(err <= 1e-5, "flash vs naive: cue logits {err:e}");
    for (i, (g, w)) in want_grads.iter().zip(&grads).enumerate() {
        let err = rel_err(g, w);
        assert!(err <= 1e-5, "flash vs naive: gradient {i} {err:e}");
    }
    for n in 1..=3 {
        let devices = vec![device; n];
        let (actions, cue, grads) = run(m
            .forward_train_ring(&batch, &devices)
            .expect("ring forward"));
        let err = rel_err(&actions, &want_actions);
        assert!(err <= 1e-5, "N = {n}: actions {err:e}");
        let err = rel_err(&cue, &want_cue);
        assert!(err <= 1e-5, "N = {n}: cue logits {err:e}");
        for (i, (g, w)) in grads.iter().zip(&want_grads).enumerate() {
            let err = rel_err(g, w);
            assert!(err <= 1e-5, "N = {n}: gradient {i} {err:e}");
        }
    }
    assert!(m.forward_train_ring(&batch, &[]).is_err());
}

/// A model with a memory: the training forward (window, sinks and bank as three merged
/// attentions, absolute and slot positions) equals the streaming host path step by step
/// (cache capped to the window, FIFO bank, no RoPE on the bank), ≤ 1e-4 relative, with frame-steps
/// evicted from the window and memory tokens from the bank; two instructions of different
/// lengths, default RoPE and YaRN, and with the bank's log-length scaling. A memory token
/// that is ignored would change the result:
/// zeroing the bank's contribution (a model whose memory token differs) changes the actions.
#[test]
fn memory_training_forward_matches_streaming_steps() {
    let device = Default::default();
    // Bank log-scaling at 2: factors 1 and ln 3 / ln 2 for the 2 and 3 memory tokens seen.
    for (rope, log_scale) in [
        (DEFAULT_ROPE, None),
        (YARN_ROPE, None),
        (DEFAULT_ROPE, Some(2)),
    ] {
        let mut c = tiny_config(1, rope, "f32", 1 << 30);
        c.cue_classes = 3;
        c.memory = Some(MemoryConfig {
            bank_steps: 3,
            window_steps: 2,
            bank_log_scale: log_scale,
            bank_top_k: None,
            bank_eviction: Default::default(),
            bank_recent_steps: None,
        });
        c.validate().expect("memory config");
        let m = model(&c, 11);
        let steps_n = 7;
        let episodes = [Steps::new(&c, steps_n, 300), Steps::new(&c, steps_n, 400)];
        let instructions = ["go", "drop it!"];
        let flat_steps = FlatSteps::of(&episodes, steps_n);
        let batch = flat_steps.batch(&instructions);
        let out = m.forward_train(&batch, &device).expect("train forward");
        let trained = flat(out.actions);
        let cue = flat(out.cue_logits.expect("cue logits"));
        if log_scale.is_some() {
            // The scaling is in effect: the same weights without it act differently.
            let mut plain = c.clone();
            plain.memory = plain.memory.map(|m| MemoryConfig {
                bank_log_scale: None,
                bank_top_k: None,
                bank_eviction: Default::default(),
                bank_recent_steps: None,
                ..m
            });
            let unscaled = model(&plain, 11)
                .forward_train(&batch, &device)
                .expect("forward");
            assert!(rel_err(&flat(unscaled.actions), &trained) > 1e-4);
        }
        for (e, episode) in episodes.iter().enumerate() {
            let mut s = stream(&m);
            m.start_episode(instructions[e], &mut s).expect("start");
            for k in 0..steps_n {
                let step = m.forward_step(&episode.get(k), &mut s).expect("step");
                let at = (e * steps_n + k) * c.action_values();
                let err = rel_err(&trained[at..at + c.action_values()], &step.action.values);
                assert!(
                    err <= 1e-4,
                    "{rope} {log_scale:?} episode {e} step {k}: {err:e}"
                );
                let at = (e * steps_n + k) * 3;
                let inc = step.cue_logits.expect("cue");
                let err = rel_err(&cue[at..at + 3], &inc);
                assert!(
                    err <= 1e-4,
                    "{rope} {log_scale:?} cue, episode {e} step {k}: {err:e}"
                );
                assert!(s.cache().frames() <= 2, "window");
                assert_eq!(s.memory().expect("bank").len(), (k + 1).min(3));
            }
            assert!(s.cache().stats().frames_evicted >= 5);
        }
        // The bank matters: the same model with another memory token acts differently.
        let mut other = m.clone();
        let token = other.memory_token.take().expect("memory token");
        other.memory_token = Some(token.map(|t| t * 3.0));
        let changed = flat(
            other
                .forward_train(&batch, &device)
                .expect("forward")
                .actions,
        );
        assert!(rel_err(&changed, &trained) > 1e-3);
    }
}

/// `BankEviction::Read`: until the bank is full nothing is evicted and the steps equal the
/// FIFO bank's; past it, every eviction takes the candidate (all but the newest
/// `bank_recent_steps`) with the lowest mean read as the stream reported it before the step,
/// the newest stay, each step's reads are a share of the bank softmax (in (0, 1]), and the
/// same inputs give the same bank (replay).
#[test]
fn read_eviction_evicts_the_least_read_memory() {
    let mut c = tiny_config(1, DEFAULT_ROPE, "f32", 1 << 30);
    c.cue_classes = 3;
    let memory = MemoryConfig {
        bank_steps: 4,
        window_steps: 2,
        bank_log_scale: None,
        bank_top_k: None,
        bank_eviction: BankEviction::Read,
        bank_recent_steps: Some(2),
    };
    c.memory = Some(memory.clone());
    c.validate().expect("memory config");
    let fifo_config = VlaConfig {
        memory: Some(MemoryConfig {
            bank_eviction: BankEviction::Oldest,
            bank_recent_steps: None,
            ..memory
        }),
        ..c.clone()
    };
    let m = model(&c, 13);
    let fifo = fifo_config
        .init::<B>(&Default::default())
        .load_record(m.clone().into_record());
    let n = 14;
    let episode = Steps::new(&c, n, 700);
    let run = |m: &Vla<B>, check: bool| {
        let mut s = stream(m);
        m.start_episode("keep", &mut s).expect("start");
        let mut actions = Vec::new();
        let mut evicted_kept = 0;
        for k in 0..n {
            let before: Vec<MemoryEntry> = s.memory_entries().copied().collect();
            let step = m.forward_step(&episode.get(k), &mut s).expect("step");
            actions.push(step.action.values);
            let after: Vec<MemoryEntry> = s.memory_entries().copied().collect();
            assert_eq!(after.len(), (k + 1).min(4));
            assert_eq!(s.memory().expect("bank").len(), after.len());
            assert_eq!(after.last().map(|e| e.step), Some(k as u64));
            if !check {
                continue;
            }
            // Reads added this step: a share of one softmax, summed over stored tokens.
            let gained: f64 = after
                .iter()
                .filter_map(|a| {
                    before
                        .iter()
                        .find(|b| b.step == a.step)
                        .map(|b| a.read - b.read)
                })
                .sum();
            // (each share is counted relative to an even spread over the tokens read)
            let even = (before.len() + 1) as f64;
            if !before.is_empty() {
                assert!(
                    gained > 0.0 && gained <= even * (1.0 + 1e-6),
                    "step {k}: {gained}"
                );
            }
            let gone: Vec<&MemoryEntry> = before
                .iter()
                .filter(|b| !after.iter().any(|a| a.step == b.step))
                .collect();
            if k < 4 {
                assert!(gone.is_empty());
                continue;
            }
            assert_eq!(gone.len(), 1, "step {k}");
            let candidates = &before[..before.len() - 2];
            let lowest = candidates
                .iter()
                .map(MemoryEntry::mean_read)
                .fold(f64::INFINITY, f64::min);
            assert_eq!(gone[0].mean_read(), lowest, "step {k}");
            assert!(candidates.iter().any(|e| e.step == gone[0].step));
            evicted_kept += usize::from(gone[0].step != before[0].step);
            // Age order is kept.
            assert!(after.windows(2).all(|w| w[0].step < w[1].step));
        }
        (
            actions,
            s.memory_entries().copied().collect::<Vec<_>>(),
            evicted_kept,
        )
    };
    let (actions, entries, not_oldest) = run(&m, true);
    let (fifo_actions, _, _) = run(&fifo, false);
    for k in 0..4 {
        assert_eq!(
            actions[k], fifo_actions[k],
            "step {k} before the bank is full"
        );
    }
    // The training forward's bank is a FIFO: it refuses episodes that would evict by reads.
    let long = Steps::new(&c, 5, 800);
    let trained = m.forward_train(
        &FlatSteps::of(&[long], 5).batch(&["keep"]),
        &Default::default(),
    );
    assert!(
        matches!(&trained, Err(Error::Config { key, .. }) if key == "memory.bank_eviction"),
        "{:?}",
        trained.as_ref().err()
    );
    let short = Steps::new(&c, 4, 800);
    m.forward_train(
        &FlatSteps::of(&[short], 4).batch(&["keep"]),
        &Default::default(),
    )
    .expect("episodes within the bank train");
    // A stream made with a 4-token bank, stepped by the same weights configured with a longer
    // bank (run-time settings, not architecture): the bank keeps its 4 tokens, evicts by reads,
    // and its entries stay those of its tokens.
    let longer = VlaConfig {
        memory: Some(MemoryConfig {
            bank_steps: 6,
            ..memory.clone()
        }),
        ..c.clone()
    }
    .init::<B>(&Default::default())
    .load_record(m.clone().into_record());
    let mut s = stream(&m);
    longer.start_episode("keep", &mut s).expect("start");
    for k in 0..8 {
        longer.forward_step(&episode.get(k), &mut s).expect("step");
        let entries: Vec<u64> = s.memory_entries().map(|e| e.step).collect();
        assert_eq!(entries.len(), s.memory().expect("bank").len());
        assert_eq!(entries.len(), (k + 1).min(4));
        assert_eq!(entries.last(), Some(&(k as u64)));
    }
    let (again, entries_again, _) = run(&m, false);
    assert_eq!((actions, entries), (again, entries_again), "replay");
    // Not a FIFO in disguise: some eviction kept an older token.
    assert!(not_oldest > 0, "every eviction took the oldest");
}

/// Memory models: the tensor engine (at stream creation) and the naive/full forwards refuse
/// them with a clear error; a KV budget that cannot hold the trained window is an error naming
/// the bytes.
#[test]
fn memory_model_errors() {
    let mut c = tiny_config(1, DEFAULT_ROPE, "f32", 1 << 30);
    c.memory = Some(MemoryConfig {
        bank_steps: 4,
        window_steps: 3,
        bank_log_scale: None,
        bank_top_k: None,
        bank_eviction: Default::default(),
        bank_recent_steps: None,
    });
    let m = model(&c, 12);
    let tensor = m.new_stream_with(&c.kv_cache, StepEngine::Tensor, &Default::default());
    assert!(
        matches!(&tensor, Err(Error::Config { reason, .. }) if reason.contains("host")),
        "{tensor:?}"
    );
    let small = KvCacheConfig {
        dtype: KvDtype::F32,
        budget_bytes: 12_000,
    };
    let err = m.new_stream(&small, &Default::default()).map(|_| ());
    assert!(
        matches!(&err, Err(Error::Config { reason, .. }) if reason.contains("window")),
        "{err:?}"
    );
    let mut bad = c.clone();
    bad.memory = Some(MemoryConfig {
        bank_steps: 0,
        window_steps: 3,
        bank_log_scale: None,
        bank_top_k: None,
        bank_eviction: Default::default(),
        bank_recent_steps: None,
    });
    assert!(bad.validate().is_err());
    bad.memory = Some(MemoryConfig {
        bank_steps: 4,
        window_steps: 3,
        bank_log_scale: Some(1),
        bank_top_k: None,
        bank_eviction: Default::default(),
        bank_recent_steps: None,
    });
    assert!(matches!(
        bad.validate(),
        Err(Error::Config { key, .. }) if key == "memory.bank_log_scale"
    ));
    bad.memory = Some(MemoryConfig {
        bank_steps: 4,
        window_steps: 3,
        bank_log_scale: None,
        bank_top_k: Some(0),
        bank_eviction: Default::default(),
        bank_recent_steps: None,
    });
    assert!(matches!(
        bad.validate(),
        Err(Error::Config { key, .. }) if key == "memory.bank_top_k"
    ));
    // A top-k read is a setting of the streaming path: the training forward refuses it.
    let mut sparse = c.clone();
    sparse.memory = Some(MemoryConfig {
        bank_steps: 4,
        window_steps: 3,
        bank_log_scale: None,
        bank_top_k: Some(2),
        bank_eviction: Default::default(),
        bank_recent_steps: None,
    });
    sparse.validate().expect("top-k config");
    let episodes = [Steps::new(&sparse, 3, 500)];
    let flat_steps = FlatSteps::of(&episodes, 3);
    let trained = model(&sparse, 12).forward_train(&flat_steps.batch(&["go"]), &Default::default());
    assert!(
        matches!(&trained, Err(Error::Config { key, .. }) if key == "memory.bank_top_k"),
        "{:?}",
        trained.as_ref().err()
    );
}

/// `VlaConfig::same_architecture` (what a stream checks at every step) ignores exactly the
/// run-time keys, and the checkpoint loader's `architecture_difference` names the key that
/// differs.
#[test]
fn architecture_is_every_key_but_the_run_time_ones() {
    let c = tiny_config(2, DEFAULT_ROPE, "f32", 1 << 30);
    let mut run_time = c.clone();
    run_time.kv_cache.dtype = KvDtype::Int8;
    run_time.context_length = Some(4096);
    run_time.rope = tiny_config(2, YARN_ROPE, "f32", 1 << 30).rope;
    assert!(c.same_architecture(&run_time));
    assert_eq!(c.architecture_difference(&run_time), None);
    let mut other = c.clone();
    other.ffn_dim += 8;
    assert!(!c.same_architecture(&other));
    let (key, have, want) = c.architecture_difference(&other).expect("a difference");
    assert_eq!((key.as_str(), have.as_str()), ("ffn_dim", "96"), "{want}");
    let mut memory = c.clone();
    memory.memory = Some(MemoryConfig {
        bank_steps: 4,
        window_steps: 3,
        bank_log_scale: None,
        bank_top_k: None,
        bank_eviction: Default::default(),
        bank_recent_steps: None,
    });
    assert_eq!(
        c.architecture_difference(&memory).map(|d| d.0).as_deref(),
        Some("memory")
    );
    // The bank's run-time settings are not architecture; its window is.
    let mut bank = memory.clone();
    bank.memory = bank.memory.map(|m| MemoryConfig {
        bank_steps: 40,
        bank_top_k: Some(2),
        bank_log_scale: Some(8),
        bank_eviction: BankEviction::Read,
        bank_recent_steps: Some(4),
        ..m
    });
    assert!(memory.same_architecture(&bank));
    bank.memory = bank.memory.map(|m| MemoryConfig {
        window_steps: 2,
        ..m
    });
    assert_eq!(
        memory
            .architecture_difference(&bank)
            .map(|d| d.0)
            .as_deref(),
        Some("memory")
    );
}

/// A classification action head decodes a value as the local softmax mean around its most
/// likely bin: a unimodal Gaussian bump over the bins gives back its centre (within 1e-3 of
/// a bin width, off-centre between bins too), a bimodal one the larger mode's centre (the mean
/// of the modes would be far from both), a non-finite logit a NaN; bad bins are config errors.
#[test]
fn action_bins_decode_the_likeliest_mode() {
    let b = ActionBins {
        bins: 64,
        low: -2.0,
        high: 2.0,
    };
    let w = f64::from(b.width());
    // Logits of a normal density (σ = 0.75 bins) centred on `mu`, times `mass`, plus others.
    let bump = |mu: f64, mass: f64| -> Vec<f64> {
        (0..b.bins)
            .map(|i| {
                let x = f64::from(b.centre(i));
                mass * (-(x - mu).powi(2) / (2.0 * (0.75 * w).powi(2))).exp()
            })
            .collect()
    };
    let logits = |density: Vec<f64>| -> Vec<f32> {
        density.iter().map(|p| (p + 1e-12).ln() as f32).collect()
    };
    for mu in [-1.3, 0.0, 0.031, 0.7777] {
        let got = f64::from(b.decode(&logits(bump(mu, 1.0))));
        assert!(
            (got - mu).abs() < 2e-2 * w,
            "unimodal at {mu}: decoded {got}"
        );
    }
    let (a, c) = (-0.9, 0.6);
    let mix: Vec<f64> = bump(a, 0.6)
        .iter()
        .zip(bump(c, 0.4))
        .map(|(x, y)| x + y)
        .collect();
    let got = f64::from(b.decode(&logits(mix)));
    assert!(
        (got - a).abs() < 2e-2 * w,
        "bimodal: decoded {got}, modes {a} and {c}"
    );
    let mut bad = logits(bump(0.0, 1.0));
    bad[3] = f32::NAN;
    assert!(b.decode(&bad).is_nan());
    let mut c = tiny_config(1, DEFAULT_ROPE, "f32", 1 << 30);
    for (bins, low, high) in [(1, -1.0, 1.0), (8, 1.0, 1.0), (8, f32::NAN, 1.0)] {
        c.action_bins = Some(ActionBins { bins, low, high });
        assert!(
            matches!(c.validate(), Err(Error::Config { .. })),
            "{bins} {low} {high}"
        );
    }
    c.action_bins = Some(b.clone());
    assert_eq!(c.action_head_outputs(), c.action_values() * 64);
    let plain = tiny_config(1, DEFAULT_ROPE, "f32", 1 << 30);
    assert_eq!(
        plain.architecture_difference(&c).map(|d| d.0).as_deref(),
        Some("action_bins")
    );
}
