//! Memory-efficient attention against a naive f64 reference: outputs, log-sum-exp and the
//! gradients of q, k and v (through both the output and the LSE), for causal, full,
//! block-causal-with-readouts, GQA and fully masked rows, with several block sizes.

use burn::backend::{Autodiff, NdArray};

use super::*;
use crate::host::float_tensor;
use crate::test_util::uniform_f32;

type B = NdArray<f32>;
type AB = Autodiff<B>;

/// Relative tolerance of every comparison (f32 against f64).
const TOL: f64 = 1e-5;

/// max |a − b| / max |b|; NaN (in either) makes it NaN, and `assert_close` fails on NaN.
fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths");
    let mut diff = 0.0f64;
    let mut scale = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (f64::from(*x) - y).abs();
        if d.is_nan() {
            return f64::NAN;
        }
        diff = diff.max(d);
        scale = scale.max(y.abs());
    }
    diff / scale.max(1e-30)
}

fn assert_close(what: &str, a: &[f32], b: &[f64]) {
    let err = rel_err(a, b);
    assert!(err <= TOL, "{what}: relative error {err:e} > {TOL:e}");
}

/// Shapes and data of one case.
struct Case {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    tq: usize,
    tk: usize,
    hd: usize,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Upstream gradients of the output and of the LSE.
    g_out: Vec<f32>,
    g_lse: Vec<f32>,
    mask: AttentionMask,
}

impl Case {
    fn new(heads: usize, kv_heads: usize, hd: usize, mask: AttentionMask, seed: u64) -> Self {
        let (batch, tq, tk) = (mask.batch(), mask.queries(), mask.keys());
        let scale_up = |v: Vec<f32>| v.into_iter().map(|x| 2.0 * x).collect::<Vec<_>>();
        Self {
            batch,
            heads,
            kv_heads,
            tq,
            tk,
            hd,
            // Scores of a few units: softmax far from uniform.
            q: scale_up(uniform_f32(seed, batch * heads * tq * hd)),
            k: scale_up(uniform_f32(seed + 1, batch * kv_heads * tk * hd)),
            v: uniform_f32(seed + 2, batch * kv_heads * tk * hd),
            g_out: uniform_f32(seed + 3, batch * heads * tq * hd),
            g_lse: uniform_f32(seed + 4, batch * heads * tq),
            mask,
        }
    }

    /// Naive attention in f64: (out, lse, dq, dk, dv).
    #[allow(clippy::type_complexity)]
    fn reference(&self, scale: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (b, h, kvh, tq, tk, hd) = (
            self.batch,
            self.heads,
            self.kv_heads,
            self.tq,
            self.tk,
            self.hd,
        );
        let rep = h / kvh;
        let f = |x: &[f32], i: usize| f64::from(x[i]);
        let mut out = vec![0.0; b * h * tq * hd];
        let mut lse = vec![f64::from(empty_row_lse()); b * h * tq];
        let (mut dq, mut dk, mut dv) = (
            vec![0.0; self.q.len()],
            vec![0.0; self.k.len()],
            vec![0.0; self.v.len()],
        );
        for e in 0..b {
            for head in 0..h {
                let g = head / rep;
                for i in 0..tq {
                    let qo = ((e * h + head) * tq + i) * hd;
                    let keys: Vec<usize> =
                        (0..tk).filter(|&j| self.mask.visible(e, i, j)).collect();
                    if keys.is_empty() {
                        continue;
                    }
                    let ko = |j: usize| ((e * kvh + g) * tk + j) * hd;
                    let s: Vec<f64> = keys
                        .iter()
                        .map(|&j| {
                            scale
                                * (0..hd)
                                    .map(|d| f(&self.q, qo + d) * f(&self.k, ko(j) + d))
                                    .sum::<f64>()
                        })
                        .collect();
                    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let l: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / l).collect();
                    let row = (e * h + head) * tq + i;
                    lse[row] = m + l.ln();
                    for (pj, &j) in p.iter().zip(&keys) {
                        for d in 0..hd {
                            out[qo + d] += pj * f(&self.v, ko(j) + d);
                        }
                    }
                    // Backward: dS_j = P_j (dP_j − D) + P_j · dLSE, D = dO · O.
                    let go = |d: usize| f(&self.g_out, qo + d);
                    let big_d: f64 = (0..hd).map(|d| go(d) * out[qo + d]).sum();
                    let gl = f(&self.g_lse, row);
                    for (pj, &j) in p.iter().zip(&keys) {
                        let dp: f64 = (0..hd).map(|d| go(d) * f(&self.v, ko(j) + d)).sum();
                        let ds = pj * (dp - big_d) + pj * gl;
                        for d in 0..hd {
                            dq[qo + d] += scale * ds * f(&self.k, ko(j) + d);
                            dk[ko(j) + d] += scale * ds * f(&self.q, qo + d);
                            dv[ko(j) + d] += pj * go(d);
                        }
                    }
                }
            }
        }
        (out, lse, dq, dk, dv)
    }

    /// Checks the flash forward (plain backend) and its gradients (autodiff backend) against
    /// the reference, with `block_rows` query rows per block.
    fn check(&self, block_rows: usize, what: &str) {
        for key_step in [1, 4, KEY_STEP] {
            self.check_with(
                block_rows,
                key_step,
                &format!("{what}, keys in steps of {key_step}"),
            );
        }
    }

    fn check_with(&self, block_rows: usize, key_step: usize, what: &str) {
        let scale = 1.0 / (self.hd as f64).sqrt();
        let (out, lse, dq, dk, dv) = self.reference(scale);
        let device = Default::default();
        let qs = [self.batch, self.heads, self.tq, self.hd];
        let ks = [self.batch, self.kv_heads, self.tk, self.hd];

        let plain = flash_attention_blocked::<B>(
            float_tensor(self.q.clone(), qs, &device),
            float_tensor(self.k.clone(), ks, &device),
            float_tensor(self.v.clone(), ks, &device),
            &self.mask,
            scale,
            block_rows,
            key_step,
        )
        .expect("flash forward");
        assert_close(&format!("{what}: out"), &flat(plain.out), &out);
        assert_close(&format!("{what}: lse"), &flat(plain.lse), &lse);

        let q = float_tensor::<AB, f32, 4>(self.q.clone(), qs, &device).require_grad();
        let k = float_tensor::<AB, f32, 4>(self.k.clone(), ks, &device).require_grad();
        let v = float_tensor::<AB, f32, 4>(self.v.clone(), ks, &device).require_grad();
        let part = flash_attention_blocked(
            q.clone(),
            k.clone(),
            v.clone(),
            &self.mask,
            scale,
            block_rows,
            key_step,
        )
        .expect("flash forward (autodiff)");
        assert_close(
            &format!("{what}: out (autodiff)"),
            &flat(part.out.clone()),
            &out,
        );
        let g_out = float_tensor::<AB, f32, 4>(self.g_out.clone(), qs, &device);
        let g_lse = float_tensor::<AB, f32, 4>(
            self.g_lse.clone(),
            [self.batch, self.heads, self.tq, 1],
            &device,
        );
        let loss = (part.out * g_out).sum() + (part.lse * g_lse).sum();
        let grads = loss.backward();
        let grad = |t: &Tensor<AB, 4>| flat(t.grad(&grads).expect("gradient"));
        assert_close(&format!("{what}: dq"), &grad(&q), &dq);
        assert_close(&format!("{what}: dk"), &grad(&k), &dk);
        assert_close(&format!("{what}: dv"), &grad(&v), &dv);
    }
}

fn flat<Bk: Backend>(t: Tensor<Bk, 4>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("tensor data")
}

/// The training layout: instruction (padded with group −1), then per step `step_tokens`
/// context tokens and `readouts` readouts of their own group.
fn train_mask(
    sinks: &[usize],
    padded: usize,
    steps: usize,
    step_tokens: usize,
    readouts: usize,
) -> AttentionMask {
    let mut groups = Vec::new();
    let mut len = 0;
    for &s in sinks {
        let mut g = vec![0i64; s];
        g.extend(std::iter::repeat_n(-1, padded - s));
        for k in 0..steps {
            g.extend(std::iter::repeat_n(0, step_tokens));
            g.extend(std::iter::repeat_n(k as i64 + 1, readouts));
        }
        len = g.len();
        groups.extend(g);
    }
    let index: Vec<i64> = (0..len as i64).collect();
    AttentionMask::grouped(sinks.len(), index.clone(), groups.clone(), index, groups).expect("mask")
}

#[test]
fn causal_gqa_equals_naive_for_every_block_size() {
    let case = Case::new(4, 2, 16, AttentionMask::causal(2, 37), 10);
    for rows in [1, 5, 8, 37, 64] {
        case.check(rows, &format!("causal gqa, {rows} rows per block"));
    }
}

#[test]
fn full_attention_equals_naive() {
    let case = Case::new(2, 2, 8, AttentionMask::full(1, 9, 23), 20);
    case.check(4, "full");
    case.check(9, "full, one block");
}

#[test]
fn block_causal_with_readouts_and_padding_equals_naive() {
    // Two episodes: instructions of 3 and 5 tokens padded to 5, 4 steps of 6 tokens + 2 readouts.
    let mask = train_mask(&[3, 5], 5, 4, 6, 2);
    assert!(
        !mask.visible(0, 20, 11),
        "a later token sees an earlier step's readout"
    );
    assert!(
        mask.visible(0, 12, 11),
        "readouts of one step see each other"
    );
    assert!(!mask.visible(0, 10, 3), "context sees instruction padding");
    let case = Case::new(4, 1, 16, mask, 30);
    for rows in [3, 7, 16, 37] {
        case.check(rows, &format!("block-causal, {rows} rows per block"));
    }
}

#[test]
fn sliding_window_over_steps_equals_naive() {
    // One episode: 3 sinks, 6 steps of 4 tokens + 1 readout; a window of 2 steps (sinks at
    // step −1 drop out of it from step 1 on). Blocks then read keys from their window's start.
    let (sinks, steps, chunk) = (3usize, 6usize, 5usize);
    let mask = train_mask(&[sinks], sinks, steps, 4, 1);
    let step: Vec<i64> = (0..sinks + steps * chunk)
        .map(|i| {
            if i < sinks {
                -1
            } else {
                ((i - sinks) / chunk) as i64
            }
        })
        .collect();
    let mask = mask.with_window(step.clone(), step, 2).expect("window");
    let last = sinks + steps * chunk - 1;
    assert!(
        mask.visible(0, last, last - chunk - 1),
        "previous step in the window"
    );
    assert!(
        !mask.visible(0, last, last - 2 * chunk - 1),
        "two steps back is outside"
    );
    assert!(!mask.visible(0, sinks + chunk, 0), "sinks leave the window");
    assert!(mask.visible(0, sinks, 0), "step 0 still sees the sinks");
    let case = Case::new(4, 2, 16, mask, 50);
    for rows in [1, 4, 9, 33] {
        case.check(rows, &format!("window, {rows} rows per block"));
    }
}

#[test]
fn fully_masked_rows_get_zero_output_and_no_gradient() {
    // Queries 0..3 are padding (group −1) over keys that are all of group 2: they see nothing.
    // Queries 3..6 are of group 2 and see keys up to their index; ring-style indices (keys
    // 2..8) make the first block see no key at all.
    let mask = AttentionMask::grouped(
        1,
        vec![0, 1, 2, 3, 4, 5],
        vec![-1, -1, -1, 2, 2, 2],
        (2..8).collect(),
        vec![2; 6],
    )
    .expect("mask");
    assert!(!(0..6).any(|j| mask.visible(0, 0, j)));
    let case = Case::new(2, 1, 8, mask, 40);
    let (out, lse, ..) = case.reference(1.0 / 8f64.sqrt());
    assert!(
        out[..8].iter().all(|&x| x == 0.0),
        "masked row has an output"
    );
    assert_eq!(lse[0], f64::from(empty_row_lse()));
    for rows in [1, 2, 4, 6] {
        case.check(rows, &format!("masked rows, {rows} rows per block"));
    }
}

#[test]
fn comparison_fails_on_nan() {
    assert!(rel_err(&[f32::NAN, 1.0], &[0.0, 1.0]).is_nan());
    assert!(rel_err(&[0.0, 1.0], &[f64::NAN, 1.0]).is_nan());
    let err = rel_err(&[f32::NAN], &[1.0]);
    assert!(
        err.partial_cmp(&TOL).is_none(),
        "NaN passed the tolerance check"
    );
}

#[test]
fn mismatched_shapes_are_errors() {
    let device = Default::default();
    let q = float_tensor::<B, f32, 4>(vec![0.0; 2 * 4 * 8], [1, 2, 4, 8], &device);
    let k = float_tensor::<B, f32, 4>(vec![0.0; 3 * 4 * 8], [1, 3, 4, 8], &device);
    assert!(matches!(
        flash_attention(q.clone(), k.clone(), k, &AttentionMask::causal(1, 4), 1.0),
        Err(Error::Shape { .. })
    ));
    let k = float_tensor::<B, f32, 4>(vec![0.0; 4 * 8], [1, 1, 4, 8], &device);
    assert!(matches!(
        flash_attention(q, k.clone(), k, &AttentionMask::causal(1, 5), 1.0),
        Err(Error::Shape { .. })
    ));
    assert!(AttentionMask::grouped(2, vec![0, 1], vec![0; 3], vec![0], vec![0; 2]).is_err());
}
