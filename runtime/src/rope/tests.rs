//! RoPE tests: HuggingFace's own tables, a slow f64 reference rotation, the rotation's
//! algebraic properties, and rejection of bad specs.

use std::path::PathBuf;

use burn::backend::NdArray;
use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::test_util::uniform as values;

type B64 = NdArray<f64>;
type B32 = NdArray<f32>;

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden/rope_hf.json")
}

fn spec(value: serde_json::Value) -> Result<RopeSpec> {
    RopeSpec::from_json(&value)
}

fn config(value: serde_json::Value) -> RopeConfig {
    match spec(value) {
        Ok(s) => s.config,
        Err(e) => panic!("valid test config rejected: {e}"),
    }
}

#[test]
fn matches_huggingface_golden_tables() {
    let path = golden_path();
    if !path.exists() {
        assert!(
            std::env::var_os("EDGEVLA_REQUIRE_SHARED").is_none(),
            "EDGEVLA_REQUIRE_SHARED is set but {} is missing",
            path.display()
        );
        eprintln!("skipped: {} not found", path.display());
        return;
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad golden JSON: {e}"));
    let cases = doc["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("golden file has no `cases`"));
    assert_eq!(cases.len(), 30, "the golden file should hold 30 cases");
    let mut worst_rel = 0.0f64;
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let parsed = RopeSpec::from_json(case).unwrap_or_else(|e| panic!("{name}: {e}"));
        let freqs = parsed.frequencies();
        let expected: Vec<f64> = serde_json::from_value(case["inv_freq"].clone())
            .unwrap_or_else(|e| panic!("{name}: inv_freq: {e}"));
        assert_eq!(
            freqs.inv_freq.len(),
            expected.len(),
            "{name}: number of frequencies"
        );
        for (i, (got, want)) in freqs.inv_freq.iter().zip(&expected).enumerate() {
            let rel = (got - want).abs() / want.abs();
            worst_rel = worst_rel.max(rel);
            // Tolerance: HuggingFace computes in f32 (≤ ~6e-7 relative rounding); we compute in f64.
            assert!(
                rel <= 1e-6,
                "{name}: inv_freq[{i}] = {got}, HuggingFace {want}, rel err {rel:e}"
            );
        }
        let want_af = case["attention_factor"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}: attention_factor"));
        assert!(
            (freqs.attention_factor - want_af).abs() <= 1e-9,
            "{name}: attention_factor {} vs HuggingFace {want_af}",
            freqs.attention_factor
        );
    }
    eprintln!("30 golden cases, worst inv_freq relative error {worst_rel:e}");
}

/// Slow, independent f64 rotation of one head vector in the `rotate_half` layout.
fn reference_rotate(x: &[f64], pos: i64, freqs: &RopeFrequencies, scale: f64) -> Vec<f64> {
    let half = freqs.inv_freq.len();
    let mut out = x.to_vec();
    for (i, f) in freqs.inv_freq.iter().enumerate() {
        let (s, c) = (pos as f64 * f).sin_cos();
        out[i] = (x[i] * c - x[i + half] * s) * scale;
        out[i + half] = (x[i + half] * c + x[i] * s) * scale;
    }
    out
}

fn tensor<B: Backend>(data: &[f64], shape: [usize; 4]) -> Tensor<B, 4> {
    float_tensor::<B, f64, 4>(data.to_vec(), shape, &Default::default())
}

fn to_vec<B: Backend>(t: Tensor<B, 4>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .unwrap_or_else(|e| panic!("tensor data: {e:?}"))
}

fn yarn_partial() -> RopeConfig {
    config(json!({
        "head_dim": 32, "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
        "max_position_embeddings": 16384,
        "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}
    }))
}

fn check_against_reference<B: Backend>(tol: f64) {
    let cfg = yarn_partial();
    let freqs = cfg.frequencies(None);
    let (batch, heads, seq, hd) = (2, 3, 5, cfg.head_dim);
    let input = tensor::<B>(
        &values(7, batch * heads * seq * hd),
        [batch, heads, seq, hd],
    );
    // The reference starts from the values as the backend stores them (f32-rounded on B32).
    let x = to_vec(input.clone());
    let positions: Vec<i64> = vec![0, 1, 17, 4095, 120_000];
    let table = freqs
        .table::<B>(&positions, &Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let got = to_vec(table.apply(input).unwrap_or_else(|e| panic!("{e}")));
    for row in 0..batch * heads {
        for (t, &pos) in positions.iter().enumerate() {
            let at = (row * seq + t) * hd;
            let want = reference_rotate(&x[at..at + hd], pos, &freqs, freqs.attention_factor);
            for c in 0..hd {
                // Pass-through channels must be bit-identical to the input.
                let exact = c >= cfg.rotary_dim();
                let err = (got[at + c] - want[c]).abs();
                assert!(
                    if exact { err == 0.0 } else { err <= tol },
                    "row {row} pos {pos} ch {c}: {} vs reference {} (tol {tol:e})",
                    got[at + c],
                    want[c]
                );
            }
        }
    }
}

#[test]
fn apply_matches_f64_reference_on_f64_backend() {
    // Same f64 arithmetic in a different order: 1e-12 absolute on values of magnitude ≤ 2.
    check_against_reference::<B64>(1e-12);
}

#[test]
fn apply_matches_f64_reference_on_f32_backend() {
    // f32 storage of inputs and cos/sin: a few ulps of 1.0 (6e-8) per term.
    check_against_reference::<B32>(1e-6);
}

#[test]
fn batched_table_uses_each_rows_positions() {
    let cfg = yarn_partial();
    let freqs = cfg.frequencies(None);
    let hd = cfg.head_dim;
    let x = values(11, 2 * hd);
    let table = freqs
        .batched_table::<B64>(&[5, 900], 2, &Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let got = to_vec(
        table
            .apply(tensor::<B64>(&x, [2, 1, 1, hd]))
            .unwrap_or_else(|e| panic!("{e}")),
    );
    for (row, pos) in [(0usize, 5i64), (1, 900)] {
        let want = reference_rotate(
            &x[row * hd..(row + 1) * hd],
            pos,
            &freqs,
            freqs.attention_factor,
        );
        for c in 0..hd {
            assert!(
                (got[row * hd + c] - want[c]).abs() <= 1e-12,
                "row {row} ch {c}"
            );
        }
    }
}

fn rotate_one(freqs: &RopeFrequencies, x: &[f64], pos: i64) -> Vec<f64> {
    let hd = x.len();
    let table = freqs
        .table::<B64>(&[pos], &Default::default())
        .unwrap_or_else(|e| panic!("{e}"));
    to_vec(
        table
            .apply(tensor::<B64>(x, [1, 1, 1, hd]))
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn any_config() -> impl Strategy<Value = RopeConfig> {
    let scalings = prop_oneof![
        Just(json!({"rope_type": "default"})),
        Just(json!({"rope_type": "linear", "factor": 4.0})),
        Just(json!({"rope_type": "dynamic", "factor": 2.0})),
        Just(json!({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 2048})),
        Just(
            json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 2048})
        ),
    ];
    (
        scalings,
        prop_oneof![Just(16usize), Just(32), Just(64)],
        prop_oneof![Just(10_000.0f64), Just(500_000.0)],
    )
        .prop_map(|(params, head_dim, theta)| {
            config(json!({"head_dim": head_dim, "rope_theta": theta,
                          "max_position_embeddings": 16384, "rope_parameters": params}))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// ⟨R(m)q, R(n)k⟩ depends only on m − n. f64 backend; tolerance 1e-9 relative to |q||k|·af²
    /// (angles up to ~2e5 rad carry ~1e-11 absolute error in f64).
    #[test]
    fn dot_product_depends_only_on_position_difference(
        cfg in any_config(), seed in 0u64..1000, m in 0i64..100_000, n in 0i64..100_000, shift in 0i64..100_000,
    ) {
        let freqs = cfg.frequencies(None);
        let hd = cfg.head_dim;
        let q = values(seed, hd);
        let k = values(seed + 1, hd);
        let a = dot(&rotate_one(&freqs, &q, m), &rotate_one(&freqs, &k, n));
        let b = dot(&rotate_one(&freqs, &q, m + shift), &rotate_one(&freqs, &k, n + shift));
        let scale = dot(&q, &q).sqrt() * dot(&k, &k).sqrt() * freqs.attention_factor.powi(2);
        prop_assert!((a - b).abs() <= 1e-9 * scale, "{a} vs {b}");
        // And both equal the slow reference.
        let r = dot(&reference_rotate(&q, m, &freqs, freqs.attention_factor),
                    &reference_rotate(&k, n, &freqs, freqs.attention_factor));
        prop_assert!((a - r).abs() <= 1e-9 * scale, "{a} vs reference {r}");
    }

    /// A pure rotation preserves the vector norm; with the attention factor the rotated channels
    /// scale by exactly that factor. Tolerance 1e-12 relative (f64).
    #[test]
    fn rotation_preserves_norm(cfg in any_config(), seed in 0u64..1000, pos in -50_000i64..200_000) {
        let freqs = cfg.frequencies(None);
        let hd = cfg.head_dim;
        let x = values(seed, hd);
        let shift = freqs.shift_table::<B64>(&[pos], &Default::default()).unwrap_or_else(|e| panic!("{e}"));
        let y = to_vec(shift.apply(tensor::<B64>(&x, [1, 1, 1, hd])).unwrap_or_else(|e| panic!("{e}")));
        let (nx, ny) = (dot(&x, &x).sqrt(), dot(&y, &y).sqrt());
        prop_assert!((nx - ny).abs() <= 1e-12 * nx, "{nx} vs {ny}");
        let scaled = rotate_one(&freqs, &x, pos);
        let ns = dot(&scaled, &scaled).sqrt();
        prop_assert!((ns - freqs.attention_factor * nx).abs() <= 1e-12 * ns, "{ns} vs af·{nx}");
    }

    /// Re-rotating a key cached at p by Δ equals rotating it at p + Δ directly (K-shift).
    /// Tolerance 1e-10 absolute on entries of magnitude ≤ 2 (f64).
    #[test]
    fn rerotation_equals_direct_rotation(
        cfg in any_config(), seed in 0u64..1000, p in 0i64..100_000, delta in -100_000i64..100_000,
    ) {
        let freqs = cfg.frequencies(None);
        let hd = cfg.head_dim;
        let k = values(seed, 3 * hd);
        let device = Default::default();
        let at_p = freqs.table::<B64>(&[p, p + 1, p + 7], &device).unwrap_or_else(|e| panic!("{e}"));
        let shift = freqs.shift_table::<B64>(&[delta; 3], &device).unwrap_or_else(|e| panic!("{e}"));
        let direct = freqs.table::<B64>(&[p + delta, p + 1 + delta, p + 7 + delta], &device)
            .unwrap_or_else(|e| panic!("{e}"));
        let kt = tensor::<B64>(&k, [1, 1, 3, hd]);
        let shifted = to_vec(shift.apply(at_p.apply(kt.clone()).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}")));
        let want = to_vec(direct.apply(kt).unwrap_or_else(|e| panic!("{e}")));
        for (a, b) in shifted.iter().zip(&want) {
            prop_assert!((a - b).abs() <= 1e-10, "{a} vs {b}");
        }
    }
}

#[test]
fn dynamic_ntk_follows_sequence_length() {
    let cfg = config(json!({"head_dim": 64, "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}));
    let short = cfg.frequencies(Some(1000));
    assert_eq!(
        short.inv_freq,
        cfg.base_inv_freq(),
        "within the original context dynamic NTK is a no-op"
    );
    let long = cfg.frequencies(Some(16_384));
    // base' = θ·(2·16384/4096 − 1)^(64/62); the lowest frequency is base'^(−62/64).
    let base = 10_000.0 * 7.0f64.powf(64.0 / 62.0);
    let want = base.powf(-62.0 / 64.0);
    assert!((long.inv_freq[31] - want).abs() <= 1e-15);
}

#[test]
fn longrope_switches_factors_past_original_context() {
    let short: Vec<f64> = (0..8).map(|i| 1.0 + i as f64 * 0.1).collect();
    let long: Vec<f64> = (0..8).map(|i| 2.0 + i as f64).collect();
    let cfg = config(json!({"head_dim": 16, "max_position_embeddings": 8192,
        "rope_parameters": {"rope_type": "longrope", "short_factor": short, "long_factor": long,
                            "original_max_position_embeddings": 2048}}));
    let base = cfg.base_inv_freq();
    for (seq, ext) in [(None, &short), (Some(2048), &short), (Some(2049), &long)] {
        let f = cfg.frequencies(seq);
        for i in 0..8 {
            assert!(
                (f.inv_freq[i] - base[i] / ext[i]).abs() <= 1e-15 * base[i],
                "seq {seq:?} pair {i}"
            );
        }
        // factor defaults to 8192 / 2048 = 4: sqrt(1 + ln 4 / ln 2048).
        let want = (1.0 + 4.0f64.ln() / 2048.0f64.ln()).sqrt();
        assert!((f.attention_factor - want).abs() <= 1e-15);
    }
}

#[test]
fn interpolation_weights_span_extrapolation_to_interpolation() {
    let cfg = config(json!({"head_dim": 64, "max_position_embeddings": 32768,
        "rope_parameters": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096}}));
    let w = cfg.interpolation_weights(&cfg.frequencies(None));
    assert!(
        w[0].abs() <= 1e-12,
        "highest frequency is extrapolated, got {}",
        w[0]
    );
    assert!(
        (w[31] - 1.0).abs() <= 1e-12,
        "lowest frequency is interpolated, got {}",
        w[31]
    );
    assert!(
        w.windows(2).all(|p| p[1] >= p[0] - 1e-12),
        "weights rise monotonically: {w:?}"
    );
    let linear = config(json!({"head_dim": 64, "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "linear", "factor": 4.0}}));
    assert!(
        linear
            .interpolation_weights(&linear.frequencies(None))
            .iter()
            .all(|v| (v - 1.0).abs() < 1e-12)
    );
}

#[test]
fn toml_and_json_specs_agree_and_config_round_trips() {
    let toml_text = r#"
        name = "ignored"
        head_dim = 64
        rope_theta = 10000.0
        max_position_embeddings = 32768
        seq_len = 100
        [rope_parameters]
        rope_type = "yarn"
        factor = 8.0
        original_max_position_embeddings = 4096
        truncate = false
    "#;
    let from_toml = RopeSpec::parse(toml_text).unwrap_or_else(|e| panic!("{e}"));
    let from_json = spec(
        json!({"head_dim": 64, "rope_theta": 10000.0, "max_position_embeddings": 32768,
        "seq_len": 100, "rope_parameters": {"rope_type": "yarn", "factor": 8.0,
        "original_max_position_embeddings": 4096, "truncate": false}}),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_toml, from_json);
    let text = toml::to_string(&from_toml.config).unwrap_or_else(|e| panic!("{e}"));
    let back: RopeConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(back, from_toml.config);
}

fn rejected(value: serde_json::Value) -> String {
    match spec(value) {
        Ok(s) => panic!("accepted a bad spec: {s:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_specs_are_rejected_naming_the_key() {
    let cases = [
        (
            json!({"head_dim": 64, "max_position_embeddings": 4096, "rope_parameters": {"rope_type": "ntk-magic"}}),
            "rope_parameters.rope_type",
        ),
        (
            json!({"head_dim": 64, "max_position_embeddings": 4096, "rope_parameters": {"rope_type": "linear", "factor": 0.5}}),
            "rope_parameters.factor",
        ),
        (
            json!({"head_dim": 64, "max_position_embeddings": 4096, "rope_parameters": {"rope_type": "linear"}}),
            "rope_parameters.factor",
        ),
        (
            json!({"head_dim": 64, "max_position_embeddings": 8192, "rope_parameters": {"rope_type": "yarn", "factor": 2.0}}),
            "rope_parameters.original_max_position_embeddings",
        ),
        (
            json!({"head_dim": 64, "max_position_embeddings": 8192, "rope_parameters": {"rope_type": "llama3", "factor": 2.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0}}),
            "rope_parameters.original_max_position_embeddings",
        ),
        (
            json!({"head_dim": 16, "max_position_embeddings": 8192, "rope_parameters": {"rope_type": "longrope",
            "short_factor": vec![1.0; 8], "long_factor": vec![1.0; 8]}}),
            "rope_parameters.original_max_position_embeddings",
        ),
        (
            json!({"head_dim": 16, "max_position_embeddings": 8192, "rope_parameters": {"rope_type": "longrope",
            "short_factor": vec![1.0; 7], "long_factor": vec![1.0; 8], "original_max_position_embeddings": 2048}}),
            "rope_parameters.short_factor",
        ),
        (
            json!({"head_dim": 16, "max_position_embeddings": 8192, "rope_parameters": {"rope_type": "longrope",
            "short_factor": vec![1.0; 8], "long_factor": vec![1.0; 9], "original_max_position_embeddings": 2048}}),
            "rope_parameters.long_factor",
        ),
        (
            json!({"head_dim": 64, "rope_theta": -10000.0, "max_position_embeddings": 4096}),
            "rope_theta",
        ),
        (
            json!({"head_dim": 63, "max_position_embeddings": 4096}),
            "head_dim",
        ),
        (json!({"max_position_embeddings": 4096}), "head_dim"),
        (json!({"head_dim": 64}), "max_position_embeddings"),
        (
            json!({"head_dim": 64, "max_position_embeddings": 4096, "rope_parameters": {"rope_type": "linear", "factr": 2.0}}),
            "factr",
        ),
        (
            json!({"head_dim": 64, "max_position_embeddings": 4096, "rope_parameters": {"rope_type": "yarn", "factor": 2.0,
            "original_max_position_embeddings": 2048, "low_freq_factor": 1.0}}),
            "rope_parameters.low_freq_factor",
        ),
        (
            json!({"head_dim": 64, "max_position_embeddings": 4096, "rope_parameters": {"rope_type": "yarn", "factor": 2.0,
            "original_max_position_embeddings": 2048, "beta_fast": 1.0, "beta_slow": 2.0}}),
            "rope_parameters.beta_fast",
        ),
        (
            json!({"head_dim": 64, "rope_theta": 10000.0, "max_position_embeddings": 4096,
            "rope_parameters": {"rope_theta": 500000.0}}),
            "rope_theta",
        ),
        (
            json!({"head_dim": 64, "max_position_embeddings": 4096, "seq_len": -3}),
            "seq_len",
        ),
    ];
    for (value, key) in cases {
        let message = rejected(value.clone());
        assert!(
            message.contains(key),
            "error for {value} should name `{key}`: {message}"
        );
    }
}

#[test]
fn unparseable_text_is_an_error() {
    let err = RopeSpec::parse("{ not json = and not toml")
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|m| m.contains("neither JSON")));
}

#[test]
fn apply_rejects_mismatched_shapes() {
    let freqs = yarn_partial().frequencies(None);
    let device = Default::default();
    let table = freqs
        .table::<B32>(&[0, 1, 2], &device)
        .unwrap_or_else(|e| panic!("{e}"));
    let wrong_seq = Tensor::<B32, 4>::zeros([1, 2, 4, 32], &device);
    assert!(table.apply(wrong_seq).is_err());
    let wrong_dim = Tensor::<B32, 4>::zeros([1, 2, 3, 16], &device);
    assert!(table.apply(wrong_dim).is_err());
    let rows = freqs
        .batched_table::<B32>(&[0, 1, 2, 3], 2, &device)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        rows.apply(Tensor::<B32, 4>::zeros([3, 1, 2, 32], &device))
            .is_err()
    );
    assert!(freqs.batched_table::<B32>(&[0, 1, 2], 2, &device).is_err());
    assert!(freqs.table::<B32>(&[], &device).is_err());
}
