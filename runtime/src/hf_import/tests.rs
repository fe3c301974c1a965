//! Import against HuggingFace's own files: the three `hf_llama` golden cases (LlamaModel's
//! output for HuggingFace-written weights, RoPE default / YaRN 4x past the original context /
//! linear 2x), the export → import round trip (bit for bit), and the errors.

use std::path::PathBuf;

use burn::backend::NdArray;
use safetensors::SafeTensors;

use super::*;
use crate::checkpoint::export_hf;
use crate::model::causal_bias;
use crate::test_util::rel_err;

type B = NdArray<f32>;

const EDGE: &str = include_str!("../../../configs/model/edge.toml");

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden/hf_llama")
}

fn f32s(file: &SafeTensors<'_>, name: &str) -> (Vec<f32>, Vec<usize>) {
    let view = file.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (values, view.shape().to_vec())
}

fn import(dir: &Path, base: &VlaConfig) -> (Vla<B>, ImportReport) {
    let device = Default::default();
    let config = read_hf_config(dir, base).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    load_hf_weights(dir, config.init::<B>(&device), &device)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// `transformers`' `_compute_yarn_parameters` (beta_fast 32, beta_slow 1, truncate) as it runs:
/// the correction range in Python floats, every tensor operation in float32.
fn hf_f32_yarn_inv_freq(dim: usize, base: f64, factor: f32, original: f64) -> Vec<f64> {
    let correction = |rotations: f64| {
        (dim as f64 * (original / (rotations * 2.0 * std::f64::consts::PI)).ln())
            / (2.0 * base.ln())
    };
    let low = correction(32.0).floor().max(0.0);
    let high = correction(1.0).ceil().min(dim as f64 - 1.0);
    let (low, high) = (
        low as f32,
        if low == high { high + 0.001 } else { high } as f32,
    );
    (0..dim / 2)
        .map(|i| {
            let pos_freq = (base as f32).powf((2 * i) as f32 / dim as f32);
            let extrapolation = 1.0 / pos_freq;
            let interpolation = 1.0 / (factor * pos_freq);
            let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
            let extrapolation_factor = 1.0 - ramp;
            f64::from(
                interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor,
            )
        })
        .collect()
}

#[test]
fn golden_llama_backbones_match_huggingface() {
    let root = golden_dir();
    if !root.exists() {
        assert!(
            std::env::var_os("EDGEVLA_REQUIRE_SHARED").is_none(),
            "EDGEVLA_REQUIRE_SHARED is set but {} is missing",
            root.display()
        );
        eprintln!("skipped: {} not found", root.display());
        return;
    }
    let base = VlaConfig::from_toml(EDGE).expect("edge config");
    let device = Default::default();
    for case in ["default", "linear-2x", "yarn-4x"] {
        let dir = root.join(case);
        let (model, report) = import(&dir, &base);
        let c = model.config();
        assert_eq!((c.n_layers, c.d_model, c.n_kv_heads), (2, 256, 2), "{case}");
        assert_eq!(
            report.loaded.len(),
            2 * 9 + 1,
            "{case}: {:?}",
            report.loaded
        );
        assert!(!report.instruction_embedding_from_file, "vocabulary 16");
        let bytes = std::fs::read(dir.join("io.safetensors")).expect("io");
        let io = SafeTensors::deserialize(&bytes).expect("io safetensors");
        let (x, shape) = f32s(&io, "inputs_embeds");
        let (want, _) = f32s(&io, "last_hidden_state");
        let positions: Vec<i64> = io
            .tensor("position_ids")
            .expect("position_ids")
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        let t = shape[1];
        // HuggingFace computes the rotary angles in float32 (also in a float64 model), which
        // at positions in the thousands moves them by ~1e-4 rad; the reference carries that.
        let mut freqs = c.rope.frequencies(Some(c.rope.max_position_embeddings));
        let exact = freqs.table::<B>(&positions, &device).expect("table");
        if case == "yarn-4x" {
            // And its YaRN inverse frequencies are float32 arithmetic too.
            freqs.inv_freq = hf_f32_yarn_inv_freq(32, 10000.0, 4.0, 2048.0);
        }
        let table = freqs.table_hf_f32::<B>(&positions, &device).expect("table");
        let x = Tensor::<B, 3>::from_data(TensorData::new(x, [1, t, c.d_model]), &device);
        let out = model
            .backbone(x, &table, causal_bias::<B>(0, t, &device))
            .expect("backbone");
        let got = out.into_data().into_vec::<f32>().expect("values");
        let err = rel_err(&got, &want);
        let x = Tensor::<B, 3>::from_data(
            TensorData::new(f32s(&io, "inputs_embeds").0, [1, t, c.d_model]),
            &device,
        );
        let exact = model
            .backbone(x, &exact, causal_bias::<B>(0, t, &device))
            .expect("backbone")
            .into_data()
            .into_vec::<f32>()
            .expect("values");
        eprintln!(
            "{case}: with exact (f64) angles: {:e}",
            rel_err(&exact, &want)
        );
        eprintln!("{case}: relative error {err:e}");
        assert!(err <= 1e-4, "{case}: relative error {err:e}");
    }
}

#[test]
fn export_then_import_is_bit_exact() {
    let mut base = VlaConfig::from_toml(EDGE).expect("edge config");
    base.n_layers = 2;
    base.rope = crate::rope::RopeSpec::from_json(&serde_json::json!({
        "head_dim": 32,
        "max_position_embeddings": 8192,
        "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}
    }))
    .expect("rope")
    .config;
    let device = Default::default();
    let model = base.init::<B>(&device);
    let a = tempfile::tempdir().expect("tempdir");
    export_hf(&model, a.path()).expect("export");
    let config = read_hf_config(a.path(), &base).expect("config");
    assert_eq!(config, base, "the config survives the round trip");
    // Another initialization, then the file's weights.
    let other = {
        let mut c = config.clone();
        c.rms_norm_eps = base.rms_norm_eps;
        c.init_with_std::<B>(0.5, &device)
    };
    let (imported, report) = load_hf_weights(a.path(), other, &device).expect("import");
    assert!(report.instruction_embedding_from_file);
    assert!(report.unused.is_empty());
    let b = tempfile::tempdir().expect("tempdir");
    export_hf(&imported, b.path()).expect("export again");
    let first = std::fs::read(a.path().join("model.safetensors")).expect("read");
    let second = std::fs::read(b.path().join("model.safetensors")).expect("read");
    assert!(
        first == second,
        "weights differ after export → import → export"
    );
}

#[test]
fn unsupported_configs_and_tensors_are_errors_naming_them() {
    let base = VlaConfig::from_toml(EDGE).expect("edge config");
    let good = serde_json::json!({
        "model_type": "llama", "hidden_size": 256, "intermediate_size": 704,
        "num_hidden_layers": 1, "num_attention_heads": 8, "num_key_value_heads": 2,
        "max_position_embeddings": 2048, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}
    });
    assert!(config_from_hf(&good.to_string(), &base).is_ok());
    for (key, value, names) in [
        ("attention_bias", serde_json::json!(true), "attention_bias"),
        ("hidden_act", serde_json::json!("gelu"), "hidden_act"),
        ("sliding_window", serde_json::json!(512), "sliding_window"),
        ("head_dim", serde_json::json!(64), "head_dim"),
        (
            "rope_parameters",
            serde_json::json!({"rope_type": "mystery"}),
            "rope",
        ),
    ] {
        let mut bad = good.clone();
        bad[key] = value;
        let err = config_from_hf(&bad.to_string(), &base).expect_err(key);
        assert!(err.to_string().contains(names), "{key}: {err}");
    }
    let mut missing = good.clone();
    missing
        .as_object_mut()
        .expect("object")
        .remove("hidden_size");
    let err = config_from_hf(&missing.to_string(), &base).expect_err("missing");
    assert!(err.to_string().contains("hidden_size"), "{err}");
    // A file whose MLP is wider than its config says: the tensor is named.
    let mut c = base.clone();
    c.n_layers = 1;
    let device = Default::default();
    let dir = tempfile::tempdir().expect("tempdir");
    export_hf(&c.init::<B>(&device), dir.path()).expect("export");
    let mut narrow = c.clone();
    narrow.ffn_dim = 512;
    let err = load_hf_weights(dir.path(), narrow.init::<B>(&device), &device)
        .map(|_| ())
        .expect_err("shape");
    assert!(err.to_string().contains("mlp.gate_proj.weight"), "{err}");
}
