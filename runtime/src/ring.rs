//! Ring attention kernels (Liu et al. 2023): the sequence is split into N shards, one per
//! device; K/V blocks travel around the ring while every device merges partial attention with
//! an exact online softmax.
//!
//! - [`block_attention`]: attention of queries over one K/V block, returning the output and the
//!   log-sum-exp of each query row.
//! - [`merge`]: the numerically stable merge of two partial results, in the form
//!   `out ← out − σ(lse_b − lse)(out − out_b)`, `lse ← lse − log σ(lse − lse_b)`.
//! - [`zigzag_split`] / [`zigzag_join`]: causal load balancing — the sequence is cut into 2N
//!   chunks and shard r holds chunks r and 2N−1−r, so every shard has the same amount of
//!   causal work.
//! - [`ring_attention`]: the ring schedule over N shards (causal). At step s shard r holds the
//!   K/V of shard (r − s) mod N, attends to the chunks it may see (earlier chunks fully, its own
//!   chunk with a causal triangle, later chunks not at all), merges, and passes the K/V on with
//!   a device-to-device copy (`Tensor::to_device`).
//!
//! Everything is ordinary burn tensor code, so gradients flow through the whole ring under an
//! autodiff backend. The shards are processed in turn by the calling thread; each shard's
//! tensors live on its own device.

use burn::tensor::Tensor;
use burn::tensor::activation::{log_sigmoid, sigmoid};
use burn::tensor::backend::Backend;

use crate::error::{Error, Result};
use crate::flash::{AttentionMask, TrainAttention, flash_attention};

/// Partial attention: output `[batch, heads, tq, head_dim]` and log-sum-exp `[batch, heads, tq, 1]`.
#[derive(Clone, Debug)]
pub struct Partial<B: Backend> {
    /// Softmax-weighted values over the keys seen so far.
    pub out: Tensor<B, 4>,
    /// log Σ exp(score) over the keys seen so far.
    pub lse: Tensor<B, 4>,
}

/// Attention of `q` over one K/V block: [`crate::flash::flash_attention`] (the memory-efficient
/// block function single-device training uses too), returning the output and the log-sum-exp
/// of each query row, both differentiable.
///
/// # Shapes
/// - `q`: `[batch, heads, tq, head_dim]`; `k`, `v`: `[batch, kv_heads, tk, head_dim]`, with
///   `kv_heads` dividing `heads` (grouped-query attention: query head h reads K/V head
///   h / (heads / kv_heads))
/// - `mask`: for `batch` × `tq` queries and `tk` keys; a row with no visible key gets a zero
///   output and a log-sum-exp of about −87 (so it only matters if no block shows it a key)
/// - output: [`Partial`] with `out` like `q` and `lse` `[batch, heads, tq, 1]`
///
/// # Errors
/// [`Error::Shape`] if `k`, `v` or `mask` do not match `q`.
pub fn block_attention<B: TrainAttention>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: &AttentionMask,
    scale: f64,
) -> Result<Partial<B>> {
    flash_attention(q, k, v, mask, scale)
}

/// Merges partial attention `b` into `a` (both over disjoint key sets of the same queries).
pub fn merge<B: Backend>(a: Partial<B>, b: Partial<B>) -> Partial<B> {
    let out = a.out.clone() - sigmoid(b.lse.clone() - a.lse.clone()) * (a.out - b.out);
    let lse = a.lse.clone() - log_sigmoid(a.lse - b.lse);
    Partial { out, lse }
}

fn merge_into<B: Backend>(acc: &mut Option<Partial<B>>, part: Partial<B>) {
    *acc = Some(match acc.take() {
        None => part,
        Some(a) => merge(a, part),
    });
}

/// Splits `x` `[batch, heads, seq, dim]` into `n` zigzag shards: shard r = chunks r and 2n−1−r
/// of 2n equal chunks, concatenated.
///
/// # Errors
/// [`Error::Shape`] if `seq` is not a positive multiple of `2n`.
pub fn zigzag_split<B: Backend>(x: Tensor<B, 4>, n: usize) -> Result<Vec<Tensor<B, 4>>> {
    let seq = x.dims()[2];
    if n == 0 || seq == 0 || !seq.is_multiple_of(2 * n) {
        return Err(Error::shape(
            "zigzag split",
            format!("sequence of {seq} tokens into 2 × {n} equal chunks"),
        ));
    }
    let c = seq / (2 * n);
    Ok((0..n)
        .map(|r| {
            Tensor::cat(
                vec![
                    x.clone().narrow(2, r * c, c),
                    x.clone().narrow(2, (2 * n - 1 - r) * c, c),
                ],
                2,
            )
        })
        .collect())
}

/// Inverse of [`zigzag_split`]: the shards back in sequence order (on the first shard's device).
///
/// # Errors
/// [`Error::Shape`] for no shards or shards of odd or unequal length.
pub fn zigzag_join<B: Backend>(shards: Vec<Tensor<B, 4>>) -> Result<Tensor<B, 4>> {
    let n = shards.len();
    let Some(first) = shards.first() else {
        return Err(Error::shape("zigzag join", "no shards"));
    };
    let (len, device) = (first.dims()[2], first.device());
    if !len.is_multiple_of(2) || shards.iter().any(|s| s.dims()[2] != len) {
        return Err(Error::shape(
            "zigzag join",
            "shards must have equal, even lengths",
        ));
    }
    let c = len / 2;
    let mut chunks: Vec<Option<Tensor<B, 4>>> = vec![None; 2 * n];
    let sources: Vec<B::Device> = shards.iter().map(Tensor::device).collect();
    sync_all::<B>(&sources)?;
    for (r, shard) in shards.into_iter().enumerate() {
        let shard = fenced::<B, _>(&device, || shard.to_device(&device))?;
        chunks[r] = Some(shard.clone().narrow(2, 0, c));
        chunks[2 * n - 1 - r] = Some(shard.narrow(2, c, c));
    }
    Ok(Tensor::cat(chunks.into_iter().flatten().collect(), 2))
}

/// What query shard r may see of key shard s.
#[derive(Clone, Debug)]
pub enum Visibility {
    /// Nothing: the block is skipped.
    Nothing,
    /// The keys this mask shows each query.
    Mask(AttentionMask),
}

/// Ring attention under any mask: `q[r]`, `k[r]`, `v[r]` are shard r's tensors on
/// `devices[r]`; `visibility(r, s)` says what shard r's queries may see of shard s's keys (an
/// [`AttentionMask`]). At step t shard r holds the K/V of shard (r − t) mod N, attends to
/// it, merges, and the blocks move one device along the ring. Returns shard r's output.
///
/// # Shapes
/// - `q[r]`: `[batch, heads, tq_r, head_dim]`; `k[s]`, `v[s]`: `[batch, kv_heads, tk_s, head_dim]`
///
/// # Errors
/// [`Error::Shape`] if the shard counts, devices or shapes disagree, or a shard sees no block.
pub fn ring_attention_with<B: TrainAttention>(
    q: Vec<Tensor<B, 4>>,
    k: Vec<Tensor<B, 4>>,
    v: Vec<Tensor<B, 4>>,
    devices: &[B::Device],
    scale: f64,
    mut visibility: impl FnMut(usize, usize) -> Visibility,
) -> Result<Vec<Tensor<B, 4>>> {
    let n = q.len();
    let mut acc: Vec<Option<Partial<B>>> = (0..n).map(|_| None).collect();
    ring_schedule(q.len(), k, v, devices, |r, src, k_block, v_block| {
        let mask = match visibility(r, src) {
            Visibility::Nothing => return Ok(()),
            Visibility::Mask(mask) => mask,
        };
        let part = block_attention(q[r].clone(), k_block.clone(), v_block.clone(), &mask, scale)?;
        merge_into(&mut acc[r], part);
        Ok(())
    })?;
    acc.into_iter()
        .enumerate()
        .map(|(r, a)| {
            a.map(|p| p.out)
                .ok_or_else(|| Error::shape("ring attention", format!("shard {r} saw no keys")))
        })
        .collect()
}

/// Checks that there are as many q, k and v shards as devices, and at least one.
fn check_shard_counts(q: usize, k: usize, v: usize, devices: usize) -> Result<()> {
    if q == 0 || k != q || v != q || devices != q {
        return Err(Error::shape(
            "ring attention",
            format!("{q} q, {k} k, {v} v shards on {devices} devices"),
        ));
    }
    Ok(())
}

/// The ring schedule shared by the ring variants: at step t shard r holds the K/V block of
/// shard (r − t) mod N, `attend(r, src, k_block, v_block)` does shard r's work on it, and the
/// blocks then move one device along the ring (fenced copies: [`fenced`]).
///
/// # Errors
/// [`Error::Shape`] for shard counts that disagree (`n` is the number of query shards);
/// whatever `attend` returns; [`Error::Device`] if a device fails to synchronize.
fn ring_schedule<B: Backend>(
    n: usize,
    k: Vec<Tensor<B, 4>>,
    v: Vec<Tensor<B, 4>>,
    devices: &[B::Device],
    mut attend: impl FnMut(usize, usize, &Tensor<B, 4>, &Tensor<B, 4>) -> Result<()>,
) -> Result<()> {
    check_shard_counts(n, k.len(), v.len(), devices.len())?;
    let mut held: Vec<(Tensor<B, 4>, Tensor<B, 4>)> = k.into_iter().zip(v).collect();
    for step in 0..n {
        for (r, (k_block, v_block)) in held.iter().enumerate() {
            attend(r, (r + n - step) % n, k_block, v_block)?;
        }
        if step + 1 < n {
            held = pass_along(&held, devices)?;
        }
    }
    Ok(())
}

/// Waits for the work queued on every device.
pub(crate) fn sync_all<B: Backend>(devices: &[B::Device]) -> Result<()> {
    devices.iter().try_for_each(sync_device::<B>)
}

fn sync_device<B: Backend>(device: &B::Device) -> Result<()> {
    B::sync(device).map_err(|e| Error::Device {
        op: "ring transfer",
        reason: format!("{e:?}"),
    })
}

/// Runs `copy` (device-to-device copies onto `to`) and waits for `to`.
///
/// Why the waits, from burn-cubecl 0.21 / cubecl-cuda 0.10's sources: a copy between CUDA
/// devices is queued as an NCCL send on the source's communication stream and a receive on
/// the destination's, and returns at once. The receive buffer is taken from the destination's
/// memory pool without waiting for the kernels still queued there (memory is free as soon as
/// no handle refers to it), and the source, or the contiguous temporary burn makes of a strided
/// view, may be reused before the send has read it. So a batch of copies starts with the
/// devices involved idle ([`sync_all`]), and each copy is waited for before the next: the
/// destination's compute stream waits for the receive, which completes only once the send has
/// read everything. On one CPU device `to_device` is a no-op and so are the waits.
pub(crate) fn fenced<B: Backend, T>(to: &B::Device, copy: impl FnOnce() -> T) -> Result<T> {
    let out = copy();
    sync_device::<B>(to)?;
    Ok(out)
}

/// One ring hop: shard r receives shard r − 1's K/V block on its own device.
fn pass_along<B: Backend>(
    held: &[(Tensor<B, 4>, Tensor<B, 4>)],
    devices: &[B::Device],
) -> Result<Vec<(Tensor<B, 4>, Tensor<B, 4>)>> {
    let n = held.len();
    sync_all::<B>(devices)?;
    (0..n)
        .map(|r| {
            let (k_block, v_block) = &held[(r + n - 1) % n];
            let to = &devices[r];
            Ok((
                fenced::<B, _>(to, || k_block.clone().to_device(to))?,
                fenced::<B, _>(to, || v_block.clone().to_device(to))?,
            ))
        })
        .collect()
}

/// Causal ring attention over zigzag shards: `q[r]`, `k[r]`, `v[r]` are shard r's tensors
/// (from [`zigzag_split`]) on `devices[r]`; returns shard r's attention output on its device.
///
/// # Shapes
/// - each shard: `[batch, heads, 2c, head_dim]` (two chunks of c tokens)
///
/// # Errors
/// [`Error::Shape`] if the shard counts, devices or shapes disagree.
pub fn ring_attention<B: TrainAttention>(
    q: Vec<Tensor<B, 4>>,
    k: Vec<Tensor<B, 4>>,
    v: Vec<Tensor<B, 4>>,
    devices: &[B::Device],
    scale: f64,
) -> Result<Vec<Tensor<B, 4>>> {
    let n = q.len();
    check_shard_counts(n, k.len(), v.len(), devices.len())?;
    let dims = q[0].dims();
    if [&q, &k, &v]
        .iter()
        .any(|s| s.iter().any(|t| t.dims() != dims))
        || !dims[2].is_multiple_of(2)
    {
        return Err(Error::shape(
            "ring attention",
            "every shard must have the same even-length shape",
        ));
    }
    let c = dims[2] / 2;
    // The two chunk indices of shard r, and its queries split per chunk.
    let chunks_of = |r: usize| [r, 2 * n - 1 - r];
    let q_chunks: Vec<[Tensor<B, 4>; 2]> = q
        .into_iter()
        .map(|t| [t.clone().narrow(2, 0, c), t.narrow(2, c, c)])
        .collect();
    let diagonal = AttentionMask::causal(dims[0], c);
    let earlier = AttentionMask::full(dims[0], c, c);
    let mut acc: Vec<[Option<Partial<B>>; 2]> = (0..n).map(|_| [None, None]).collect();
    ring_schedule(n, k, v, devices, |r, src, k_block, v_block| {
        for (qi, q_chunk) in chunks_of(r).into_iter().enumerate() {
            for (ki, k_chunk) in chunks_of(src).into_iter().enumerate() {
                // Earlier chunks are fully visible, the own chunk causally, later ones not at all.
                let mask = match k_chunk.cmp(&q_chunk) {
                    std::cmp::Ordering::Greater => continue,
                    std::cmp::Ordering::Equal => &diagonal,
                    std::cmp::Ordering::Less => &earlier,
                };
                let part = block_attention(
                    q_chunks[r][qi].clone(),
                    k_block.clone().narrow(2, ki * c, c),
                    v_block.clone().narrow(2, ki * c, c),
                    mask,
                    scale,
                )?;
                merge_into(&mut acc[r][qi], part);
            }
        }
        Ok(())
    })?;
    acc.into_iter()
        .enumerate()
        .map(|(r, [a, b])| match (a, b) {
            (Some(a), Some(b)) => Ok(Tensor::cat(vec![a.out, b.out], 2)),
            _ => Err(Error::shape(
                "ring attention",
                format!("shard {r} saw no keys"),
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::activation::softmax;

    use super::*;
    use crate::host::float_tensor;
    use crate::test_util::uniform_f32;

    type B = NdArray<f32>;
    type AB = Autodiff<B>;

    fn tensor<Bk: Backend>(seed: u64, shape: [usize; 4]) -> Tensor<Bk, 4> {
        float_tensor(
            uniform_f32(seed, shape.iter().product()),
            shape,
            &Default::default(),
        )
    }

    /// Reference: plain causal softmax attention over the whole sequence.
    fn full_attention<Bk: Backend>(
        q: Tensor<Bk, 4>,
        k: Tensor<Bk, 4>,
        v: Tensor<Bk, 4>,
        scale: f64,
    ) -> Tensor<Bk, 4> {
        let seq = q.dims()[2];
        let mut bias = vec![0.0f32; seq * seq];
        for i in 0..seq {
            for b in &mut bias[i * seq + i + 1..(i + 1) * seq] {
                *b = f32::NEG_INFINITY;
            }
        }
        let scores = q.matmul(k.swap_dims(2, 3)) * scale
            + float_tensor::<Bk, f32, 4>(bias, [1, 1, seq, seq], &Default::default());
        softmax(scores, 3).matmul(v)
    }

    fn flat<Bk: Backend>(t: Tensor<Bk, 4>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("data")
    }

    /// max |a − b|, NaN if either side holds a NaN (so `err <= tol` fails).
    fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
        if a.iter().chain(b).any(|x| x.is_nan()) {
            return f32::NAN;
        }
        a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
    }

    #[test]
    fn merge_of_two_blocks_equals_attention_over_both() {
        let (q, k, v) = (
            tensor::<B>(1, [1, 2, 5, 8]),
            tensor::<B>(2, [1, 2, 12, 8]),
            tensor::<B>(3, [1, 2, 12, 8]),
        );
        let all = |tk| AttentionMask::full(1, 5, tk);
        let whole =
            block_attention(q.clone(), k.clone(), v.clone(), &all(12), 0.35).expect("whole");
        let a = block_attention(
            q.clone(),
            k.clone().narrow(2, 0, 7),
            v.clone().narrow(2, 0, 7),
            &all(7),
            0.35,
        )
        .expect("a");
        let b = block_attention(
            q.clone(),
            k.clone().narrow(2, 7, 5),
            v.clone().narrow(2, 7, 5),
            &all(5),
            0.35,
        )
        .expect("b");
        let merged = merge(a, b);
        // f32 arithmetic in a different order: 1e-6 absolute on values of magnitude ≤ 1.
        assert!(max_abs_diff(&flat(merged.out), &flat(whole.out)) <= 1e-6);
        assert!(max_abs_diff(&flat(merged.lse), &flat(whole.lse)) <= 1e-6);
        // A causal mask of the wrong size and mismatched K/V are errors, not panics.
        assert!(
            block_attention(
                q.clone(),
                k.clone(),
                v.clone(),
                &AttentionMask::causal(1, 5),
                0.35
            )
            .is_err()
        );
        assert!(block_attention(q, k.clone(), v.narrow(2, 0, 3), &all(12), 0.35).is_err());
    }

    #[test]
    fn zigzag_round_trip_and_bad_lengths() {
        let x = tensor::<B>(4, [1, 1, 16, 3]);
        let shards = zigzag_split(x.clone(), 4).expect("split");
        assert_eq!(shards.len(), 4);
        // Shard 1 holds chunks 1 and 6 (tokens 2..4 and 12..14).
        let s1 = flat(shards[1].clone());
        let xs = flat(x.clone());
        assert_eq!(&s1[..6], &xs[6..12]);
        assert_eq!(&s1[6..], &xs[36..42]);
        assert_eq!(flat(zigzag_join(shards).expect("join")), xs);
        assert!(zigzag_split(x, 3).is_err());
    }

    /// Ring attention over N zigzag shards equals full causal attention (forward: 1e-5
    /// absolute, f32), for N = 1, 2, 3, 4.
    #[test]
    fn ring_equals_full_causal_attention() {
        let (seq, scale) = (48, 1.0 / 8f64.sqrt());
        let (q, k, v) = (
            tensor::<B>(5, [2, 3, seq, 8]),
            tensor::<B>(6, [2, 3, seq, 8]),
            tensor::<B>(7, [2, 3, seq, 8]),
        );
        let reference = flat(full_attention(q.clone(), k.clone(), v.clone(), scale));
        for n in [1, 2, 3, 4] {
            let devices = vec![Default::default(); n];
            let split = |t: &Tensor<B, 4>| zigzag_split(t.clone(), n).expect("split");
            let out =
                ring_attention(split(&q), split(&k), split(&v), &devices, scale).expect("ring");
            let joined = flat(zigzag_join(out).expect("join"));
            let err = max_abs_diff(&joined, &reference);
            assert!(err <= 1e-5, "N = {n}: {err:e}");
        }
    }

    /// Gradients through the ring (autodiff through every block and merge) equal the gradients
    /// of full causal attention: dQ, dK, dV within 1e-5 absolute (f32).
    #[test]
    fn ring_gradients_equal_full_attention_gradients() {
        let (seq, scale, n) = (32, 0.3, 4);
        let shape = [1, 2, seq, 8];
        let leaf = |seed| tensor::<AB>(seed, shape).require_grad();
        let weights = tensor::<AB>(99, shape);
        let grads_of = |ring: bool| {
            let (q, k, v) = (leaf(11), leaf(12), leaf(13));
            let out = if ring {
                let devices = vec![Default::default(); n];
                let split = |t: &Tensor<AB, 4>| zigzag_split(t.clone(), n).expect("split");
                zigzag_join(
                    ring_attention(split(&q), split(&k), split(&v), &devices, scale).expect("ring"),
                )
                .expect("join")
            } else {
                full_attention(q.clone(), k.clone(), v.clone(), scale)
            };
            let grads = (out * weights.clone()).sum().backward();
            [&q, &k, &v].map(|t| {
                let g = t.grad(&grads).expect("gradient");
                g.into_data()
                    .convert::<f32>()
                    .into_vec::<f32>()
                    .expect("data")
            })
        };
        let (ring, full) = (grads_of(true), grads_of(false));
        for (name, (a, b)) in ["dQ", "dK", "dV"].iter().zip(ring.iter().zip(&full)) {
            let err = max_abs_diff(a, b);
            assert!(err <= 1e-5, "{name}: {err:e}");
        }
    }

    #[test]
    fn mismatched_shards_are_errors() {
        let t = tensor::<B>(1, [1, 1, 8, 4]);
        let devices = vec![Default::default(); 2];
        assert!(
            ring_attention(
                vec![t.clone(), t.clone()],
                vec![t.clone()],
                vec![t.clone(), t.clone()],
                &devices,
                1.0
            )
            .is_err()
        );
        let odd = tensor::<B>(1, [1, 1, 7, 4]);
        assert!(
            ring_attention(
                vec![odd.clone()],
                vec![odd.clone()],
                vec![odd],
                &devices[..1],
                1.0
            )
            .is_err()
        );
    }
}
