//! KV cache tests: byte arithmetic against known figures, quantization error bounds, the
//! budget invariant over long random streams, eviction order, sink retention.

use proptest::prelude::*;

use super::*;

fn layout(layers: usize, kv_heads: usize, head_dim: usize, dtype: KvDtype) -> KvLayout {
    KvLayout {
        layers,
        kv_heads,
        head_dim,
        dtype,
    }
}

#[test]
fn llama3_70b_figures() {
    // 80 layers, 8 KV heads, head_dim 128.
    let bf16 = layout(80, 8, 128, KvDtype::Bf16);
    assert_eq!(bf16.bytes_per_token(), 327_680);
    assert_eq!(bf16.total_bytes(131_072), 42_949_672_960);
    assert_eq!(bf16.scale_bytes_per_token(), 0);
    let int8 = layout(80, 8, 128, KvDtype::Int8);
    // Half of bf16 plus one f16 scale per 32 values: 163,840 + 10,240.
    assert_eq!(int8.scale_bytes_per_token(), 10_240);
    assert_eq!(int8.bytes_per_token(), 327_680 / 2 + 10_240);
    assert_eq!(layout(80, 8, 128, KvDtype::Fp8).bytes_per_token(), 174_080);
    assert_eq!(layout(80, 8, 128, KvDtype::F32).bytes_per_token(), 655_360);
    assert_eq!(bf16.tokens_for_budget(42_949_672_960), 131_072);
    assert_eq!(bf16.tokens_for_budget(42_949_672_959), 131_071);
}

#[test]
fn block_formats_need_head_dim_multiple_of_32() {
    assert!(layout(2, 2, 48, KvDtype::Int8).validate().is_err());
    assert!(layout(2, 2, 48, KvDtype::F16).validate().is_ok());
    assert!(layout(0, 2, 32, KvDtype::F32).validate().is_err());
}

/// Deterministic values: a mix of scales so blocks differ (SplitMix64 → [-1, 1] × scale).
fn data(seed: u64, n: usize) -> Vec<f32> {
    crate::test_util::uniform(seed, n)
        .into_iter()
        .enumerate()
        .map(|(i, u)| (u * [0.01, 1.0, 30.0][(i / 32) % 3]) as f32)
        .collect()
}

#[test]
fn quantization_error_within_format_bounds() {
    let x = data(3, 32 * 300);
    for dtype in KvDtype::ALL {
        let y = round_trip(dtype, &x).expect("round trip");
        for (block_x, block_y) in x.chunks(32).zip(y.chunks(32)) {
            let absmax = block_x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (a, b) in block_x.iter().zip(block_y) {
                let err = (a - b).abs();
                let bound = match dtype {
                    KvDtype::F32 => 0.0,
                    // Round to nearest: half an ulp (2^-11 relative for f16, 2^-8 for bf16).
                    KvDtype::F16 => a.abs() * 2f32.powi(-11) + 1e-7,
                    KvDtype::Bf16 => a.abs() * 2f32.powi(-8),
                    // Half a quantization step of absmax/127, plus the f16 rounding of the scale.
                    KvDtype::Int8 => absmax / 254.0 * 1.01 + absmax * 2f32.powi(-11),
                    // 3 mantissa bits: half an ulp is 2^-4 relative; subnormals step 2^-9 × scale.
                    KvDtype::Fp8 => a.abs() * 2f32.powi(-4) * 1.01 + absmax / 448.0 * 2f32.powi(-9),
                };
                assert!(
                    err <= bound,
                    "{dtype}: {a} → {b}, error {err} > bound {bound}"
                );
            }
        }
    }
}

#[test]
fn fp8_covers_its_range_and_zero_blocks() {
    let mut x = vec![0.0f32; 32];
    x[0] = 448.0;
    x[1] = -448.0;
    x[2] = 1.0;
    let y = round_trip(KvDtype::Fp8, &x).expect("round trip");
    assert_eq!((y[0], y[1], y[2]), (448.0, -448.0, 1.0));
    assert_eq!(
        round_trip(KvDtype::Int8, &[0.0; 32]).expect("round trip"),
        vec![0.0; 32]
    );
    assert_eq!(
        round_trip(KvDtype::Fp8, &[0.0; 32]).expect("round trip"),
        vec![0.0; 32]
    );
}

fn row(l: &KvLayout, token_id: usize) -> Vec<f32> {
    // Every value of a token encodes its id, exactly representable in every format but fp8/int8.
    vec![token_id as f32; l.row_values()]
}

/// Appends a block whose every value is its token id (per layer, K = id, V = −id).
fn append(cache: &mut KvCache, segment: Segment, first_id: usize, tokens: usize) {
    let l = *cache.layout();
    cache.reserve(segment, tokens).expect("reserve");
    let keys: Vec<f32> = (first_id..first_id + tokens)
        .flat_map(|id| row(&l, id))
        .collect();
    let values: Vec<f32> = keys.iter().map(|v| -v).collect();
    for layer in 0..l.layers {
        cache.write(layer, &keys, &values).expect("write");
    }
    cache.commit().expect("commit");
}

fn token_ids(cache: &KvCache, layer: usize) -> Vec<usize> {
    let (mut k, mut v) = (Vec::new(), Vec::new());
    cache.read(layer, &mut k, &mut v).expect("read");
    let n = cache.layout().row_values();
    k.chunks(n)
        .zip(v.chunks(n))
        .map(|(kr, vr)| {
            assert!(kr.iter().all(|x| *x == kr[0]) && vr.iter().all(|x| *x == -kr[0]));
            kr[0] as usize
        })
        .collect()
}

#[test]
fn evicts_oldest_frames_and_keeps_sinks() {
    let l = layout(2, 2, 32, KvDtype::F32);
    // Room for exactly 10 tokens.
    let budget = l.total_bytes(10);
    let mut cache = KvCache::new(l, budget, usize::MAX, 2, 4).expect("cache");
    assert_eq!(cache.capacity(), 10);
    append(&mut cache, Segment::Sinks, 1000, 2);
    append(&mut cache, Segment::Frame, 0, 3); // frame A: ids 0..3
    append(&mut cache, Segment::Frame, 10, 4); // frame B: ids 10..14
    assert_eq!(cache.len(), 9);
    append(&mut cache, Segment::Frame, 20, 3); // needs 12 > 10: evict A
    assert_eq!(cache.frame_lens().collect::<Vec<_>>(), vec![4, 3]);
    for layer in 0..2 {
        assert_eq!(
            token_ids(&cache, layer),
            vec![1000, 1001, 10, 11, 12, 13, 20, 21, 22]
        );
    }
    append(&mut cache, Segment::Frame, 30, 4); // 9 + 4 = 13: evict B (9 - 4 = 5, 5 + 4 = 9)
    assert_eq!(
        token_ids(&cache, 1),
        vec![1000, 1001, 20, 21, 22, 30, 31, 32, 33]
    );
    assert_eq!(
        cache.stats(),
        KvStats {
            frames_appended: 4,
            frames_evicted: 2
        }
    );
    assert!(cache.bytes() <= budget && cache.allocated_bytes() <= budget);
    // Sinks after frames, a frame larger than the cache, and a write without reserve are errors.
    assert!(cache.reserve(Segment::Sinks, 1).is_err());
    assert!(cache.reserve(Segment::Frame, 9).is_err());
    assert!(cache.write(0, &row(&l, 1), &row(&l, 1)).is_err());
    assert!(cache.commit().is_err());
    cache.reset();
    assert_eq!((cache.len(), cache.bytes(), cache.frames()), (0, 0, 0));
}

/// A frame-step cap (a memory model's window) evicts like a full budget, and the budget still
/// evicts below the cap; `capacity_for` is the capacity `new` allocates.
#[test]
fn max_frames_caps_the_frame_steps() {
    let l = layout(1, 1, 32, KvDtype::F32);
    let budget = l.total_bytes(20);
    assert_eq!(KvCache::capacity_for(&l, budget, usize::MAX), 20);
    assert_eq!(KvCache::capacity_for(&l, budget, 12), 12);
    let mut cache = KvCache::new(l, budget, usize::MAX, 2, 4)
        .expect("cache")
        .with_max_frames(2);
    assert_eq!(cache.capacity(), 20);
    append(&mut cache, Segment::Sinks, 1000, 2);
    for f in 0..4 {
        append(&mut cache, Segment::Frame, 10 * f, 2);
    }
    assert_eq!(cache.frames(), 2);
    assert_eq!(token_ids(&cache, 0), vec![1000, 1001, 20, 21, 30, 31]);
    assert_eq!(cache.stats().frames_evicted, 2);
    // Frames of 9 tokens: the budget (2 sinks + 18) allows two, then evicts before the cap.
    append(&mut cache, Segment::Frame, 40, 9);
    append(&mut cache, Segment::Frame, 50, 9);
    assert_eq!(cache.frames(), 2);
    assert_eq!(cache.frame_lens().collect::<Vec<_>>(), vec![9, 9]);
    append(&mut cache, Segment::Frame, 60, 4);
    assert_eq!(cache.frame_lens().collect::<Vec<_>>(), vec![9, 4]);
    assert!(cache.bytes() <= budget);
}

/// `remove_frame` against a model of the cache as a list of frames of token ids: any frame
/// leaves, the rest keep their age order across the ring's wrap, in every format (ids up to
/// rows decode to the same value in each row at int8 and fp8, near the id); `read_keys`
/// equals `read`'s keys.
#[test]
fn remove_frame_keeps_age_order() {
    for dtype in KvDtype::ALL {
        let l = layout(2, 1, 32, dtype);
        let mut cache = KvCache::new(l, l.total_bytes(11), usize::MAX, 1, 3).expect("cache");
        append(&mut cache, Segment::Sinks, 1, 1);
        let mut model: VecDeque<Vec<usize>> = Default::default();
        let mut next = 2;
        let mut rng = crate::test_util::uniform(17, 400).into_iter();
        let mut draw = |n: usize| ((rng.next().expect("draw") + 1.0) / 2.0 * n as f64) as usize;
        for _ in 0..60 {
            let tokens = 1 + draw(3).min(2);
            append(&mut cache, Segment::Frame, next, tokens);
            model.push_back((next..next + tokens).collect());
            next = if next + tokens > 14 { 2 } else { next + tokens };
            while model.iter().map(Vec::len).sum::<usize>() + 1 > cache.capacity() {
                model.pop_front();
            }
            if model.len() > 1 && draw(2) == 1 {
                let index = draw(model.len()).min(model.len() - 1);
                cache.remove_frame(index).expect("remove");
                model.remove(index);
            }
            let want: Vec<usize> = std::iter::once(1)
                .chain(model.iter().flatten().copied())
                .collect();
            let lens: Vec<usize> = model.iter().map(Vec::len).collect();
            assert_eq!(cache.frame_lens().collect::<Vec<_>>(), lens, "{dtype}");
            for layer in 0..2 {
                let (mut k, mut v, mut keys) = (Vec::new(), Vec::new(), Vec::new());
                cache.read(layer, &mut k, &mut v).expect("read");
                let ids: Vec<usize> = k
                    .chunks(32)
                    .zip(v.chunks(32))
                    .map(|(kr, vr)| {
                        assert!(kr.iter().zip(vr).all(|(a, b)| *a == kr[0] && *b == -a));
                        assert!((kr[0] - kr[0].round()).abs() < 0.05, "{dtype}: {}", kr[0]);
                        kr[0].round() as usize
                    })
                    .collect();
                assert_eq!(ids, want, "{dtype}");
                cache.read_keys(layer, &mut keys).expect("read keys");
                assert_eq!(keys, k);
            }
        }
        assert!(cache.remove_frame(cache.frames()).is_err());
        cache.reserve(Segment::Frame, 1).expect("reserve");
        assert!(cache.remove_frame(0).is_err(), "while a block is reserved");
    }
}

#[test]
fn context_limit_bounds_positions() {
    let l = layout(1, 1, 32, KvDtype::F16);
    let mut cache = KvCache::new(l, u64::MAX, 8, 2, 3).expect("cache");
    assert_eq!(cache.capacity(), 8);
    append(&mut cache, Segment::Sinks, 100, 2);
    for f in 0..20 {
        let start = cache.reserve(Segment::Frame, 3).expect("reserve");
        // The new block's last position stays below the context length.
        assert!(start + 3 <= 8, "frame {f} starts at {start}");
        cache.abort();
        append(&mut cache, Segment::Frame, f * 10, 3);
    }
    assert_eq!(
        token_ids(&cache, 0),
        vec![100, 101, 180, 181, 182, 190, 191, 192]
    );
}

#[test]
fn budget_too_small_is_a_config_error() {
    let l = layout(6, 2, 32, KvDtype::Int8);
    // 16 sinks + 49-token frame = 65 tokens.
    let need = l.total_bytes(65);
    assert!(KvCache::new(l, need, usize::MAX, 16, 49).is_ok());
    let err = KvCache::new(l, need - 1, usize::MAX, 16, 49)
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|m| m.contains("budget_bytes")));
    assert!(
        KvCache::new(l, need, 64, 16, 49).is_err(),
        "context limit 64 < 65"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Over a long random stream of frame sizes (the ring of frame-steps wraps many times):
    /// bytes ≤ budget after every call, sinks are always retained, the retained frames are
    /// exactly the most recent ones that fit, and they read back in order.
    #[test]
    fn budget_never_exceeded_and_most_recent_frames_kept(
        dtype in prop::sample::select(KvDtype::ALL.to_vec()),
        budget_tokens in 40usize..200,
        sinks in 1usize..16,
        frames in prop::collection::vec(1usize..24, 50..300),
    ) {
        let l = layout(2, 1, 32, dtype);
        let budget = l.total_bytes(budget_tokens as u64) + 17; // not a whole number of tokens
        let mut cache = KvCache::new(l, budget, usize::MAX, sinks, 24).expect("cache");
        append(&mut cache, Segment::Sinks, 100_000, sinks);
        let mut history: Vec<(usize, usize)> = Vec::new(); // (first id, len)
        let mut next_id = 0;
        for &n in &frames {
            append(&mut cache, Segment::Frame, next_id, n);
            history.push((next_id, n));
            next_id += n;
            prop_assert!(cache.bytes() <= budget);
            prop_assert!(cache.allocated_bytes() <= budget);
            // Expected: the longest suffix of history that fits beside the sinks.
            let mut kept = Vec::new();
            let mut used = sinks;
            for &(first, len) in history.iter().rev() {
                if used + len > cache.capacity() { break; }
                used += len;
                kept.push((first, len));
            }
            kept.reverse();
            prop_assert_eq!(cache.frame_lens().collect::<Vec<_>>(), kept.iter().map(|k| k.1).collect::<Vec<_>>());
            prop_assert_eq!(cache.len(), used);
            // The view covers slots 0..len in order, in at most three runs (sinks, ring pieces).
            let runs: Vec<_> = cache.view(0).expect("view").iter().map(|r| (r.start, r.len)).collect();
            prop_assert!(runs.len() <= 3);
            let mut next = 0;
            for (start, len) in runs {
                prop_assert_eq!(start, next);
                next += len;
            }
            prop_assert_eq!(next, used);
        }
        // Contents (exact for f32/f16/bf16 on small integer ids; int8/fp8 check positions only).
        if matches!(dtype, KvDtype::F32) {
            let ids = token_ids(&cache, 1);
            prop_assert_eq!(&ids[..sinks], &(100_000..100_000 + sinks).collect::<Vec<_>>()[..]);
            let last = frames.len() - cache.frames();
            let first_kept = history[last].0;
            prop_assert_eq!(&ids[sinks..], &(first_kept..next_id).collect::<Vec<_>>()[..]);
        }
    }
}

/// Rotation of token-major rows `[kv_heads, head_dim]` by `delta` positions (rotate_half layout).
fn rotate_rows(x: &mut [f32], head_dim: usize, inv_freq: &[f64], delta: i64) {
    let half = head_dim / 2;
    for head in x.chunks_mut(head_dim) {
        for (i, f) in inv_freq.iter().enumerate() {
            let (s, c) = (delta as f64 * f).sin_cos();
            let (a, b) = (f64::from(head[i]), f64::from(head[i + half]));
            head[i] = (a * c - b * s) as f32;
            head[i + half] = (b * c + a * s) as f32;
        }
    }
}

/// The measurement behind storing pre-RoPE keys: re-rotating quantized keys at every eviction
/// (K-shift) requantizes them each time, and the error grows with the number of shifts, while
/// pre-RoPE storage quantizes each key once.
#[test]
fn kshift_requantization_drift() {
    let head_dim = 32;
    let inv_freq: Vec<f64> = (0..head_dim / 2)
        .map(|i| 10_000f64.powf(-((2 * i) as f64) / head_dim as f64))
        .collect();
    let keys = data(9, head_dim * 64);
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    for dtype in [KvDtype::Int8, KvDtype::Fp8] {
        // Key cached at position 5000, then shifted down by 49 (one frame-step) 64 times.
        let mut exact = keys.clone();
        rotate_rows(&mut exact, head_dim, &inv_freq, 5000 - 64 * 49);
        let mut shifted = keys.clone();
        rotate_rows(&mut shifted, head_dim, &inv_freq, 5000);
        shifted = round_trip(dtype, &shifted).expect("round trip");
        for _ in 0..64 {
            rotate_rows(&mut shifted, head_dim, &inv_freq, -49);
            shifted = round_trip(dtype, &shifted).expect("round trip");
        }
        let once = round_trip(dtype, &exact).expect("round trip");
        let err = |v: &[f32]| {
            let d: Vec<f32> = v.iter().zip(&exact).map(|(a, b)| a - b).collect();
            norm(&d) / norm(&exact)
        };
        let (e_shift, e_once) = (err(&shifted), err(&once));
        eprintln!(
            "{dtype}: relative key error after 64 K-shifts {e_shift:.2e}, quantized once {e_once:.2e}"
        );
        assert!(
            e_shift > 2.0 * e_once,
            "{dtype}: K-shift {e_shift:e} vs once {e_once:e}"
        );
    }
}
