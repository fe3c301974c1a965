//! The host attention kernel against an f64 reference (cache decoded by `KvCache::read`, RoPE
//! from the HuggingFace formula, plain softmax), and its decoders and exponential against the
//! `half` / `float8` crates and `f64::exp`.

use super::*;
use crate::kv::{KvCache, KvDtype, KvLayout, Segment};
use crate::test_util::uniform_f32;

#[test]
fn decoders_match_half_and_float8() {
    for bits in 0..=u16::MAX {
        let reference = half::f16::from_bits(bits);
        if reference.is_finite() {
            assert_eq!(
                f16_bits_to_f32(bits).to_bits(),
                reference.to_f32().to_bits(),
                "f16 {bits:#06x}"
            );
        }
    }
    for bits in 0..=u8::MAX {
        let reference = float8::F8E4M3::from_bits(bits);
        if !reference.is_nan() {
            assert_eq!(
                fp8_bits_to_f32(bits).to_bits(),
                reference.to_f32().to_bits(),
                "fp8 {bits:#04x}"
            );
        }
    }
}

/// Relative error ≤ 5e-7 over [-87, 0]; 0 below the underflow bound and for −∞.
#[test]
fn fast_exp_is_accurate() {
    let mut worst = 0.0f64;
    for k in 0..=200_000 {
        let x = -87.0 * f64::from(k) / 200_000.0;
        let got = f64::from(fast_exp(x as f32));
        let want = f64::from(x as f32).exp();
        worst = worst.max((got - want).abs() / want);
    }
    assert!(worst <= 5e-7, "worst relative error {worst:e}");
    assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(fast_exp(-100.0), 0.0);
    assert_eq!(fast_exp(0.0), 1.0);
}

struct Case {
    dtype: KvDtype,
    past: usize,
    tk: usize,
    q_first: usize,
    tq: usize,
    heads: usize,
    kv: usize,
    hd: usize,
    rot_pairs: usize,
}

/// `x` rotated to position `p` in f64 (HuggingFace: x·cos + rotate_half(x)·sin, rotate_half =
/// [−x2, x1], times the attention factor; dimensions past the rotated pairs unchanged).
fn rotate_f64(freqs: &RopeFrequencies, x: &[f64], p: usize) -> Vec<f64> {
    let half = freqs.inv_freq.len();
    let mut out = x.to_vec();
    for (c, f) in freqs.inv_freq.iter().enumerate() {
        let (sin, cos) = (p as f64 * f).sin_cos();
        let (a, b) = (x[c], x[c + half]);
        out[c] = (a * cos - b * sin) * freqs.attention_factor;
        out[c + half] = (b * cos + a * sin) * freqs.attention_factor;
    }
    out
}

/// f64 reference: softmax(q·kᵀ/√d)·v with keys rotated at their positions.
fn reference(case: &Case, freqs: &RopeFrequencies, q: &[f32], k: &[f64], v: &[f64]) -> Vec<f64> {
    let Case {
        tq,
        heads,
        kv,
        hd,
        past,
        q_first,
        ..
    } = *case;
    let total = past + case.tk;
    let rotate = |x: &[f64], p: usize| rotate_f64(freqs, x, p);
    let mut out = vec![0.0; tq * heads * hd];
    for h in 0..heads {
        let g = h / (heads / kv);
        for i in 0..tq {
            let qi: Vec<f64> = q[(i * heads + h) * hd..(i * heads + h + 1) * hd]
                .iter()
                .map(|x| f64::from(*x))
                .collect();
            let qi = rotate(&qi, past + q_first + i);
            let seen = past + q_first + i + 1;
            let scores: Vec<f64> = (0..seen.min(total))
                .map(|t| {
                    let kt = rotate(&k[(t * kv + g) * hd..(t * kv + g + 1) * hd], t);
                    qi.iter().zip(&kt).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().fold(f64::NEG_INFINITY, |m, s| m.max(*s));
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = weights.iter().sum();
            for (t, w) in weights.iter().enumerate() {
                for d in 0..hd {
                    out[i * heads * hd + h * hd + d] += w / sum * v[(t * kv + g) * hd + d];
                }
            }
        }
    }
    out
}

fn run_case(case: &Case, seed: u64) -> f64 {
    let Case {
        dtype,
        past,
        tk,
        q_first,
        tq,
        heads,
        kv,
        hd,
        rot_pairs,
    } = *case;
    let row = kv * hd;
    let freqs = RopeFrequencies {
        inv_freq: (0..rot_pairs)
            .map(|i| 10000f64.powf(-(2.0 * i as f64) / (2.0 * rot_pairs as f64)))
            .collect(),
        attention_factor: 1.2,
        head_dim: hd,
    };
    let rope = HostRope::new(freqs.clone(), past + tk);
    let layout = KvLayout {
        layers: 1,
        kv_heads: kv,
        head_dim: hd,
        dtype,
    };
    let mut cache = KvCache::new(layout, 1 << 30, 1 << 20, 0, past.max(1)).expect("cache");
    let cached_k = uniform_f32(seed, past * row);
    let cached_v = uniform_f32(seed + 1, past * row);
    if past > 0 {
        cache.reserve(Segment::Frame, past).expect("reserve");
        cache.write(0, &cached_k, &cached_v).expect("write");
        cache.commit().expect("commit");
    }
    // Reference keys/values: the cache's own decoder (KvCache::read), then the new tokens.
    let (mut k_dec, mut v_dec) = (Vec::new(), Vec::new());
    cache.read(0, &mut k_dec, &mut v_dec).expect("read");
    // New tokens, token-major like the cache.
    let new_k = uniform_f32(seed + 2, tk * row);
    let new_v = uniform_f32(seed + 3, tk * row);
    let k_all: Vec<f64> = k_dec.iter().chain(&new_k).map(|x| f64::from(*x)).collect();
    let v_all: Vec<f64> = v_dec.iter().chain(&new_v).map(|x| f64::from(*x)).collect();
    // Queries scaled up so that the softmax is peaked (the running max matters); token-major.
    let q: Vec<f32> = uniform_f32(seed + 4, heads * tq * hd)
        .iter()
        .map(|x| x * 4.0)
        .collect();
    let input = AttendInput {
        q: &q,
        k_new: &new_k,
        v_new: &new_v,
        cached: cache.view(0).expect("view"),
        past,
        tk_new: tk,
        q_first,
        n_heads: heads,
        n_kv_heads: kv,
        head_dim: hd,
        bank: None,
    };
    let mut scratch = AttentionScratch::default();
    let mut out = Vec::new();
    attend(&input, &rope, &mut scratch, &mut out).expect("attend");
    // A second call with the same scratch gives the same result.
    let mut again = Vec::new();
    attend(&input, &rope, &mut scratch, &mut again).expect("attend again");
    assert_eq!(out, again);
    let want = reference(case, &freqs, &q, &k_all, &v_all);
    // A NaN or infinity on either side fails the caller's `err <= tol` (`f64::max` would
    // drop it).
    if out.iter().any(|x| !x.is_finite()) || want.iter().any(|x| !x.is_finite()) {
        return f64::NAN;
    }
    let diff = out
        .iter()
        .zip(&want)
        .fold(0.0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
    let scale = want.iter().fold(0.0f64, |m, b| m.max(b.abs()));
    diff / scale
}

/// Every storage format, cache lengths around the key block size (one and several blocks, so
/// one and several tasks per KV head), GQA and not, partial rotary, queries that are a suffix
/// of the new tokens: ≤ 2e-6 relative (max-abs) against f64.
#[test]
fn attend_matches_f64_reference() {
    let mut seed = 10;
    for dtype in KvDtype::ALL {
        for past in [0, 1, 255, 256, 300, 1100] {
            for (heads, kv, hd, rot_pairs) in [(4, 2, 32, 16), (2, 2, 64, 8)] {
                for (tk, q_first) in [(7, 0), (70, 66), (9, 3)] {
                    let tq = tk - q_first;
                    let case = Case {
                        dtype,
                        past,
                        tk,
                        q_first,
                        tq,
                        heads,
                        kv,
                        hd,
                        rot_pairs,
                    };
                    seed += 5;
                    let err = run_case(&case, seed);
                    assert!(
                        err <= 2e-6,
                        "{dtype} past {past} heads {heads}/{kv} hd {hd} tk {tk} q_first {q_first}: {err:e}"
                    );
                }
            }
        }
    }
}

#[test]
fn mismatched_inputs_are_shape_errors() {
    let layout = KvLayout {
        layers: 1,
        kv_heads: 1,
        head_dim: 32,
        dtype: KvDtype::F32,
    };
    let cache = KvCache::new(layout, 1 << 20, 1024, 0, 4).expect("cache");
    let cached = cache.view(0).expect("view");
    let rope = HostRope::new(
        RopeFrequencies {
            inv_freq: vec![1.0; 16],
            attention_factor: 1.0,
            head_dim: 32,
        },
        8,
    );
    let q = vec![0.0; 32 * 2];
    let k = vec![0.0; 32 * 3];
    let input = AttendInput {
        q: &q,
        k_new: &k,
        v_new: &k,
        cached,
        past: 0,
        tk_new: 2,
        q_first: 0,
        n_heads: 1,
        n_kv_heads: 1,
        head_dim: 32,
        bank: None,
    };
    let mut out = Vec::new();
    let err = attend(&input, &rope, &mut AttentionScratch::default(), &mut out);
    assert!(matches!(err, Err(Error::Shape { .. })), "{err:?}");
    // A rope table too short for the positions.
    let k = vec![0.0; 32 * 2];
    let short = HostRope::new(rope.frequencies().clone(), 1);
    let input = AttendInput {
        k_new: &k,
        v_new: &k,
        ..input
    };
    let err = attend(&input, &short, &mut AttentionScratch::default(), &mut out);
    assert!(matches!(err, Err(Error::Shape { .. })), "{err:?}");
}

/// f64 reference of a step with a memory bank: one softmax over the rotary keys the query
/// sees (the step's memory token, new token `memory`, hidden from them) and the bank's keys
/// (unrotated: the stored ones, and the memory token from its own query on); with `top_k`, a
/// query that sees more than k bank keys keeps only those scoring at least its k-th highest.
#[allow(clippy::too_many_arguments)]
fn bank_reference(
    (heads, kv, hd): (usize, usize, usize),
    (past, tk, memory, banked): (usize, usize, usize, usize),
    freqs: &RopeFrequencies,
    q: &[f32],
    (k, v): (&[f64], &[f64]),
    (bank_k, bank_v): (&[f64], &[f64]),
    top_k: Option<usize>,
) -> Vec<f64> {
    let rotate = |x: &[f64], p: usize| rotate_f64(freqs, x, p);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let scale = 1.0 / (hd as f64).sqrt();
    let row = kv * hd;
    let mut out = vec![0.0; tk * heads * hd];
    for h in 0..heads {
        let g = h / (heads / kv);
        for i in 0..tk {
            let qi: Vec<f64> = q[(i * heads + h) * hd..(i * heads + h + 1) * hd]
                .iter()
                .map(|x| f64::from(*x))
                .collect();
            let qr = rotate(&qi, past + i);
            // (score, value) of every key the query attends to.
            let mut keys: Vec<(f64, &[f64])> = (0..=past + i)
                .filter(|&t| t != past + memory)
                .map(|t| {
                    let kt = rotate(&k[t * row + g * hd..t * row + (g + 1) * hd], t);
                    (
                        dot(&qr, &kt) * scale,
                        &v[t * row + g * hd..t * row + (g + 1) * hd],
                    )
                })
                .collect();
            let mut bank: Vec<(f64, &[f64])> = (0..banked)
                .map(|t| {
                    let at = t * row + g * hd;
                    (dot(&qi, &bank_k[at..at + hd]) * scale, &bank_v[at..at + hd])
                })
                .collect();
            if i >= memory {
                let at = (past + memory) * row + g * hd;
                bank.push((dot(&qi, &k[at..at + hd]) * scale, &v[at..at + hd]));
            }
            if let Some(top) = top_k.filter(|&top| bank.len() > top) {
                let mut sorted: Vec<f64> = bank.iter().map(|b| b.0).collect();
                sorted.sort_by(|a, b| b.total_cmp(a));
                bank.retain(|b| b.0 >= sorted[top - 1]);
            }
            keys.extend(bank);
            let max = keys.iter().fold(f64::NEG_INFINITY, |m, s| m.max(s.0));
            let sum: f64 = keys.iter().map(|s| (s.0 - max).exp()).sum();
            for (score, value) in keys {
                let w = (score - max).exp() / sum;
                for d in 0..hd {
                    out[(i * heads + h) * hd + d] += w * value[d];
                }
            }
        }
    }
    out
}

/// The memory bank's part of `attend` against [`bank_reference`]: banks of one and two key
/// blocks, f32 and int8 storage, every read (`bank_top_k` None, 1, 3, and more than the bank
/// holds): ≤ 2e-6 relative (max-abs), a NaN fails. A top-1 read changes the output (the
/// setting is in effect) and a k above the bank's size equals the full read.
#[test]
fn bank_read_matches_f64_reference_with_and_without_top_k() {
    let (heads, kv, hd) = (4, 2, 32);
    let (past, tk, memory) = (6, 5, 3);
    let row = kv * hd;
    let freqs = RopeFrequencies {
        inv_freq: (0..hd / 2)
            .map(|i| 10000f64.powf(-(2.0 * i as f64) / hd as f64))
            .collect(),
        attention_factor: 1.0,
        head_dim: hd,
    };
    let rope = HostRope::new(freqs.clone(), past + tk);
    let mut seed = 900;
    for dtype in [KvDtype::F32, KvDtype::Int8] {
        for banked in [40, 300] {
            seed += 10;
            let layout = KvLayout {
                layers: 1,
                kv_heads: kv,
                head_dim: hd,
                dtype,
            };
            let mut cache = KvCache::new(layout, 1 << 30, 1 << 20, 0, past).expect("cache");
            cache.reserve(Segment::Frame, past).expect("reserve");
            cache
                .write(
                    0,
                    &uniform_f32(seed, past * row),
                    &uniform_f32(seed + 1, past * row),
                )
                .expect("write");
            cache.commit().expect("commit");
            let mut bank = KvCache::new(layout, 1 << 30, 1 << 20, 0, banked).expect("bank");
            bank.reserve(Segment::Frame, banked).expect("reserve");
            bank.write(
                0,
                &uniform_f32(seed + 2, banked * row),
                &uniform_f32(seed + 3, banked * row),
            )
            .expect("write");
            bank.commit().expect("commit");
            let (mut k_dec, mut v_dec, mut bk, mut bv) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            cache.read(0, &mut k_dec, &mut v_dec).expect("read");
            bank.read(0, &mut bk, &mut bv).expect("read bank");
            let new_k = uniform_f32(seed + 4, tk * row);
            let new_v = uniform_f32(seed + 5, tk * row);
            let wide = |x: &[f32]| x.iter().map(|v| f64::from(*v)).collect::<Vec<f64>>();
            let k_all = wide(&[k_dec, new_k.clone()].concat());
            let v_all = wide(&[v_dec, new_v.clone()].concat());
            let (bk, bv) = (wide(&bk), wide(&bv));
            let q: Vec<f32> = uniform_f32(seed + 6, heads * tk * hd)
                .iter()
                .map(|x| x * 4.0)
                .collect();
            let mut outputs = Vec::new();
            for top_k in [None, Some(1), Some(3), Some(banked + 5)] {
                let config = crate::model::MemoryConfig {
                    bank_steps: banked + 1,
                    window_steps: 1,
                    bank_log_scale: None,
                    bank_top_k: top_k,
                    bank_eviction: Default::default(),
                    bank_recent_steps: None,
                };
                let input = AttendInput {
                    q: &q,
                    k_new: &new_k,
                    v_new: &new_v,
                    cached: cache.view(0).expect("view"),
                    past,
                    tk_new: tk,
                    q_first: 0,
                    n_heads: heads,
                    n_kv_heads: kv,
                    head_dim: hd,
                    bank: Some(BankInput {
                        cached: bank.view(0).expect("bank view"),
                        new: memory,
                        config: &config,
                    }),
                };
                let mut out = Vec::new();
                attend(&input, &rope, &mut AttentionScratch::default(), &mut out).expect("attend");
                let want = bank_reference(
                    (heads, kv, hd),
                    (past, tk, memory, banked),
                    &freqs,
                    &q,
                    (&k_all, &v_all),
                    (&bk, &bv),
                    top_k,
                );
                let scale = want.iter().fold(0.0f64, |m, b| m.max(b.abs()));
                let err = out
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (f64::from(*a) - b).abs() / scale)
                    .fold(0.0f64, |m, e| {
                        if e.is_nan() || m.is_nan() {
                            f64::NAN
                        } else {
                            m.max(e)
                        }
                    });
                assert!(
                    err <= 2e-6,
                    "{dtype} bank {banked} top-k {top_k:?}: {err:e}"
                );
                outputs.push(out);
            }
            let diff = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
            };
            assert!(diff(&outputs[0], &outputs[1]) > 1e-3, "top-1 in effect");
            assert_eq!(diff(&outputs[0], &outputs[3]), 0.0, "k above the bank");
        }
    }
}

/// `bank_reads` against an f64 softmax per query and head (grouped heads share a KV head):
/// the stored tokens' probabilities times the weight, added to what `out` held; the own
/// token's share is what the stored ones miss of 1. Wrong sizes are shape errors, and a NaN
/// query gives NaN reads (never a finite-looking score).
#[test]
fn bank_reads_match_f64_softmax() {
    let (h, kv, hd, n, rows) = (4, 2, 8, 5, 3);
    let q = uniform_f32(31, rows * h * hd);
    let keys = uniform_f32(32, n * kv * hd);
    let own = uniform_f32(33, kv * hd);
    let (factor, weight) = (1.7f32, 0.25f32);
    let mut out = vec![0.5f32; n];
    let mut scratch = Vec::new();
    bank_reads(
        &q,
        &keys,
        &own,
        (h, kv, hd),
        factor,
        weight,
        &mut scratch,
        &mut out,
    )
    .expect("reads");
    let mut want = vec![0.5f64; n];
    let mut own_share = 0.0;
    let scale = f64::from(factor) / (hd as f64).sqrt();
    for r in 0..rows {
        for head in 0..h {
            let g = head / (h / kv);
            let qh = &q[(r * h + head) * hd..(r * h + head + 1) * hd];
            let dot = |k: &[f32]| -> f64 {
                qh.iter()
                    .zip(&k[g * hd..(g + 1) * hd])
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum::<f64>()
                    * scale
            };
            let mut s: Vec<f64> = keys.chunks(kv * hd).map(dot).collect();
            s.push(dot(&own));
            let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = s.iter().map(|x| (x - max).exp()).sum();
            for (w, x) in want.iter_mut().zip(&s) {
                *w += f64::from(weight) * (x - max).exp() / z;
            }
            own_share += f64::from(weight) * (s[n] - max).exp() / z;
        }
    }
    for (got, w) in out.iter().zip(&want) {
        let err = (f64::from(*got) - w).abs();
        assert!(err <= 1e-5, "{got} vs {w}");
    }
    let total: f64 = out.iter().map(|x| f64::from(*x) - 0.5).sum::<f64>() + own_share;
    assert!((total - f64::from(weight) * (rows * h) as f64).abs() < 1e-4);
    for (k, o) in [(&keys[1..], &own[..]), (&keys[..], &own[1..])] {
        let bad = bank_reads(&q, k, o, (h, kv, hd), 1.0, 1.0, &mut scratch, &mut out);
        assert!(bad.is_err(), "{} keys, own {}", k.len(), o.len());
    }
    let args = (h, kv, hd);
    let mut nan_q = q.clone();
    nan_q[0] = f32::NAN;
    let mut nan_out = vec![0.0; n];
    bank_reads(
        &nan_q,
        &keys,
        &own,
        args,
        1.0,
        1.0,
        &mut scratch,
        &mut nan_out,
    )
    .expect("reads");
    assert!(nan_out.iter().all(|x| x.is_nan()), "a NaN query reads NaN");
    // A NaN key: that token's read is NaN, the others stay finite.
    let mut nan_keys = keys.clone();
    nan_keys[2 * kv * hd] = f32::NAN;
    let mut one = vec![0.0; n];
    bank_reads(&q, &nan_keys, &own, args, 1.0, 1.0, &mut scratch, &mut one).expect("reads");
    assert!(one[2].is_nan(), "{one:?}");
    assert!(one.iter().enumerate().all(|(j, x)| j == 2 || x.is_finite()));
    let empty = bank_reads(
        &q,
        &keys,
        &own,
        (h, kv, 0),
        1.0,
        1.0,
        &mut scratch,
        &mut out,
    );
    assert!(empty.is_err());
}
