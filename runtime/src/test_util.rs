//! Helpers shared by the crate's unit tests.

/// Deterministic pseudo-random values in [-1, 1) (SplitMix64), so tests need no RNG crate and
/// every run sees the same numbers.
pub(crate) fn uniform(seed: u64, n: usize) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
        })
        .collect()
}

/// [`uniform`] as f32.
pub(crate) fn uniform_f32(seed: u64, n: usize) -> Vec<f32> {
    uniform(seed, n).into_iter().map(|v| v as f32).collect()
}

/// max |a − b| / max |b|; NaN if either side holds a NaN or an infinity (so `err <= tol`
/// fails: `∞ − ∞` would otherwise vanish in the max).
pub(crate) fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    if a.iter().chain(b).any(|x| !x.is_finite()) {
        return f64::NAN;
    }
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max(f64::from((x - y).abs())));
    let scale = b.iter().fold(0.0f64, |m, y| m.max(f64::from(y.abs())));
    diff / scale
}

#[cfg(test)]
mod tests {
    use super::rel_err;

    /// The comparison fails on anything not finite, on either side, and measures the rest.
    #[test]
    fn rel_err_fails_on_nan_and_infinity() {
        assert_eq!(rel_err(&[1.0, -2.0], &[1.0, -2.0]), 0.0);
        assert!((rel_err(&[1.0, -2.5], &[1.0, -2.0]) - 0.25).abs() < 1e-12);
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert!(rel_err(&[bad, 1.0], &[0.0, 1.0]).is_nan());
            assert!(rel_err(&[0.0, 1.0], &[bad, 1.0]).is_nan());
            assert!(rel_err(&[bad, 1.0], &[bad, 1.0]).is_nan());
            // A tolerance check `err <= tol` fails on it.
            let within = rel_err(&[bad], &[bad]) <= 1e-4;
            assert!(!within);
        }
    }
}
