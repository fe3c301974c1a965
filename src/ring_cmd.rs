//! `edgevla ring`: ring-attention training across devices, measured. Three parts, one table
//! each: the K/V hop (device-to-device copy bandwidth, first call and steady state), the
//! sharded training forward against the one-device forward on the same (long) batch, and the
//! training throughput at N devices with N× the sequence against one device.

use std::io::Write;
use std::time::Instant;

use anyhow::{Result, bail};
use burn::backend::{Autodiff, NdArray};
use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::Args;
use runtime::host::float_tensor;
use runtime::model::{TrainBatch, TrainOutput, Vla, VlaConfig};

/// Arguments of `edgevla ring`.
#[derive(Debug, Args)]
pub struct RingArgs {
    /// Devices of the ring: `cpu:N` (N shards on the CPU) or `cuda:0,1,2,3` (a `--features
    /// cuda` build).
    #[arg(long, default_value = "cpu:2")]
    pub devices: String,
    /// Model config (shipped name or path).
    #[arg(long, default_value = "edge")]
    pub model: String,
    /// RoPE preset covering the longest sequence (N × steps frame-steps).
    #[arg(long, default_value = "yarn-16x")]
    pub rope: String,
    /// Frame-steps per device: one device trains on `steps`, N devices on N × `steps`.
    #[arg(long, default_value_t = 64)]
    pub steps: usize,
    /// Episodes per batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed training iterations (forward + backward) per N, after two warm-up ones.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Size of the hop-bandwidth tensor, MiB.
    #[arg(long, default_value_t = 64)]
    pub hop_mib: usize,
}

pub(crate) fn ring(args: &RingArgs, out: &mut impl Write) -> Result<()> {
    let (cuda, ids) = crate::device::parse_devices(&args.devices)?;
    if cuda {
        ring_cuda(args, &ids, out)
    } else {
        let devices = vec![Default::default(); ids.len()];
        run::<Autodiff<NdArray<f32>>>(args, &devices, out)
    }
}

#[cfg(feature = "cuda")]
fn ring_cuda(args: &RingArgs, ids: &[usize], out: &mut impl Write) -> Result<()> {
    use burn::backend::Cuda;
    let devices = crate::device::cuda_devices(ids)?;
    run::<Autodiff<Cuda<f32, i32>>>(args, &devices, out)
}

#[cfg(not(feature = "cuda"))]
fn ring_cuda(_args: &RingArgs, _ids: &[usize], _out: &mut impl Write) -> Result<()> {
    bail!(
        "--devices cuda:…: this edgevla was built without the `cuda` feature (cargo build --release --features cuda)"
    )
}

/// A synthetic batch of `episodes` × `steps` frame-steps (values in [-1, 1]).
struct Synthetic {
    instructions: Vec<&'static str>,
    steps: usize,
    patches: Vec<f32>,
    present: Vec<bool>,
    proprio: Vec<f32>,
}

impl Synthetic {
    fn new(c: &VlaConfig, episodes: usize, steps: usize) -> Self {
        let wave = |n: usize, phase: f32| -> Vec<f32> {
            (0..n).map(|i| ((i as f32) * 0.731 + phase).sin()).collect()
        };
        let rows = episodes * steps;
        Self {
            instructions: (0..episodes)
                .map(|e| {
                    if e % 2 == 0 {
                        "On go, touch the pad where the red light flashed."
                    } else {
                        "On go, touch the pad where the blue light flashed."
                    }
                })
                .collect(),
            steps,
            patches: wave(rows * c.n_cameras * c.patches_per_camera * c.patch_dim, 0.0),
            present: vec![true; rows * c.n_cameras],
            proprio: wave(rows * c.proprio_dim, 1.0),
        }
    }

    fn batch(&self) -> TrainBatch<'_> {
        TrainBatch {
            instructions: &self.instructions,
            steps: self.steps,
            patches: &self.patches,
            camera_present: &self.present,
            proprio: &self.proprio,
        }
    }
}

fn to_host<B: Backend>(t: Tensor<B, 3>) -> Result<Vec<f32>> {
    Ok(runtime::host::host_values(t, "ring output")?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn run<B: AutodiffBackend + runtime::flash::TrainAttention>(
    args: &RingArgs,
    devices: &[B::Device],
    out: &mut impl Write,
) -> Result<()>
where
    B::InnerBackend: runtime::flash::TrainAttention,
{
    let n_max = devices.len();
    if args.steps == 0 || args.batch == 0 || args.iters == 0 {
        bail!("--steps, --batch and --iters must be ≥ 1");
    }
    let mut config = node::checkpoint::load_model_config(&args.model)?;
    node::checkpoint::apply_rope_preset(&mut config, &args.rope)?;
    let home = &devices[0];
    B::seed(home, 0);
    let model: Vla<B> = config.init::<B>(home);

    // 1. The hop: one tensor copied device → next device around the ring.
    if n_max > 1 {
        writeln!(out, "## K/V hop (Tensor::to_device), {} MiB", args.hop_mib)?;
        writeln!(
            out,
            "| hop | first call ms | steady ms (median of 10) | GB/s |"
        )?;
        writeln!(out, "|---|---|---|---|")?;
        let values = args.hop_mib * (1 << 20) / 4;
        for r in 0..n_max {
            let (src, dst) = (&devices[r], &devices[(r + 1) % n_max]);
            let t: Tensor<B::InnerBackend, 1> = float_tensor(vec![1.0f32; values], [values], src);
            crate::device::sync::<B::InnerBackend>(&[src.clone(), dst.clone()])?;
            let started = Instant::now();
            let first = t.clone().to_device(dst);
            crate::device::sync::<B::InnerBackend>(std::slice::from_ref(dst))?;
            let first_ms = started.elapsed().as_secs_f64() * 1e3;
            drop(first);
            let mut times = Vec::new();
            for _ in 0..10 {
                let started = Instant::now();
                let copy = t.clone().to_device(dst);
                crate::device::sync::<B::InnerBackend>(std::slice::from_ref(dst))?;
                times.push(started.elapsed().as_secs_f64());
                drop(copy);
            }
            let steady = median(times);
            writeln!(
                out,
                "| {r}→{} | {first_ms:.2} | {:.3} | {:.1} |",
                (r + 1) % n_max,
                steady * 1e3,
                (values * 4) as f64 / steady / 1e9
            )?;
        }
        writeln!(out)?;
    }

    // 2. The sharded forward equals the one-device forward on the longest batch.
    let long = Synthetic::new(&config, args.batch, args.steps * n_max);
    let inner = model.clone().valid();
    let want = inner.forward_train(&long.batch(), home)?;
    let got = inner.forward_train_ring(&long.batch(), devices)?;
    let err = |a: Tensor<B::InnerBackend, 3>, b: Tensor<B::InnerBackend, 3>| -> Result<f64> {
        let (a, b) = (to_host(a)?, to_host(b)?);
        // Anything not finite is an error of NaN, which no tolerance passes (`f64::max`
        // would drop it).
        if a.iter().chain(&b).any(|x| !x.is_finite()) {
            return Ok(f64::NAN);
        }
        let scale = b.iter().fold(0.0f64, |m, y| m.max(f64::from(y.abs())));
        let diff = a
            .iter()
            .zip(&b)
            .fold(0.0f64, |m, (x, y)| m.max(f64::from((x - y).abs())));
        Ok(diff / scale.max(f64::MIN_POSITIVE))
    };
    writeln!(
        out,
        "## Ring forward vs one device ({} frame-steps, {} devices): max relative error {:.2e}\n",
        args.steps * n_max,
        n_max,
        err(got.actions, want.actions)?
    )?;

    // 3. Throughput: N devices on N × steps frame-steps vs one device on `steps`.
    writeln!(
        out,
        "## Training throughput (forward + backward), batch {}",
        args.batch
    )?;
    writeln!(
        out,
        "| devices | frame-steps | tokens | ms / iteration | tokens/s | tokens/s per device | efficiency |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|")?;
    let mut base = None;
    let mut n = 1;
    while n <= n_max {
        let data = Synthetic::new(&config, args.batch, args.steps * n);
        let shards = &devices[..n];
        let tokens = args.batch
            * (1 + data.instructions[0].len()
                + data.steps * (config.tokens_per_step() + config.n_readout));
        let mut times = Vec::new();
        for i in 0..args.iters + 2 {
            crate::device::sync::<B>(shards)?;
            let started = Instant::now();
            let TrainOutput { actions, .. } = model.forward_train_ring(&data.batch(), shards)?;
            let grads = actions.powi_scalar(2).mean().backward();
            crate::device::sync::<B>(shards)?;
            drop(grads);
            if i >= 2 {
                times.push(started.elapsed().as_secs_f64());
            }
        }
        let t = median(times);
        let rate = tokens as f64 / t;
        let per_device = rate / n as f64;
        let base_rate = *base.get_or_insert(per_device);
        writeln!(
            out,
            "| {n} | {} | {tokens} | {:.1} | {rate:.0} | {per_device:.0} | {:.2} |",
            data.steps,
            t * 1e3,
            per_device / base_rate
        )?;
        n *= 2;
    }
    writeln!(
        out,
        "\nefficiency = tokens/s per device at N devices (N× the sequence) / tokens/s of one device; attention work per token grows with the sequence, so 1.0 is not the ceiling it is for data parallelism."
    )?;
    Ok(())
}
