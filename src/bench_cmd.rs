//! `edgevla bench step`: times one control step of a model (default: the edge model) over a
//! cache pre-filled to N frame-steps, per cache dtype, on the CPU or a GPU; optionally full
//! recomputation for the ratio, and the hardware floor of the step (bytes over measured copy
//! bandwidth, FLOPs over the measured matmul rate).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, FloatDType, Tensor};
use clap::{Args, Subcommand};
use runtime::bench::{INSTRUCTION, Observations, StepCost, prefilled_stream};
use runtime::kv::KvDtype;
use runtime::model::{StepInput, Vla};

use node::checkpoint::{apply_rope_preset, load_model_config};

/// `edgevla bench …`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to time.
    #[command(subcommand)]
    pub command: BenchCommand,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// One control step (append a frame-step + attention over the cache + action head) over a
    /// cache pre-filled to each of --frames frame-steps, per cache dtype: median and p99.
    ///
    /// The cache budget holds exactly N frame-steps (plus the sinks), so every timed step evicts
    /// the oldest frame-step and appends one: the steady state, at a fixed context length. The
    /// pre-filled frame-steps carry synthetic keys and values (same work, seconds instead of
    /// minutes to fill). The RoPE preset (--rope, default yarn-16x: 32768 tokens) must give a
    /// context long enough for the longest --frames.
    #[command(after_help = "Examples:
  edgevla bench step --frames 16,64 --dtype f32,int8 --iters 30 --csv out/step-cpu.csv
  edgevla bench step --threads 2 --full --csv out/step-cpu.csv     # with MATMUL_NUM_THREADS=2
  edgevla bench step --device cuda:0 --iters 200 --full --csv out/step-h200.csv")]
    Step(StepArgs),

    /// A long run: one lock-step episode of --steps simulator steps through the node over
    /// loopback zenoh, with the 1-layer `soak` model whose KV budget (18,000 bytes) holds 4
    /// frame-steps, so every step evicts one. Every 1,000 steps: process RSS, the window's step
    /// latency p50/p99, cache bytes. Verdicts: RSS flat (after the first tenth, the median of
    /// the last quarter of the samples within ±5% of the first quarter's), cache never over
    /// budget; exits with an error when either fails.
    #[command(after_help = "Examples:
  edgevla bench soak                       # 100,000 steps, ~5 min on 2 cores
  edgevla bench soak --steps 5000 --json")]
    Soak(SoakArgs),
}

/// Arguments of `edgevla bench soak`.
#[derive(Debug, Args)]
pub struct SoakArgs {
    /// Simulator steps (one episode; at least 2,000).
    #[arg(long, default_value_t = 100_000)]
    pub steps: u64,
    /// Print the report as JSON (every sample included) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Arguments of `edgevla bench step`.
#[derive(Debug, Args)]
pub struct StepArgs {
    /// cpu, or cuda / cuda:N (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Cache lengths in frame-steps.
    #[arg(long, value_delimiter = ',', default_value = "16,64,128,256,512")]
    pub frames: Vec<usize>,
    /// Cache storage formats (f32, f16, bf16, int8, fp8).
    #[arg(long, value_delimiter = ',', default_value = "f32,f16,int8,fp8", value_parser = parse_dtype)]
    pub dtype: Vec<KvDtype>,
    /// Timed steps per (frames, dtype).
    #[arg(long, default_value_t = 50)]
    pub iters: usize,
    /// Untimed steps before timing.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Also time full recomputation (`forward_full` over the same context) for the ratio.
    #[arg(long)]
    pub full: bool,
    /// Longest cache (frame-steps) for which --full runs (default: 64 on cpu, where 64 takes
    /// ~15 s per iteration, every length on cuda).
    #[arg(long)]
    pub full_max_frames: Option<usize>,
    /// Iterations of full recomputation (after one untimed).
    #[arg(long, default_value_t = 3)]
    pub full_iters: usize,
    /// Write the results as CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Threads of the CPU backend's pool (rayon). Set MATMUL_NUM_THREADS to the same number:
    /// burn-ndarray's matrix products read it.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Measure copy bandwidth and matmul rate and print each step's floor (default on cuda).
    #[arg(long)]
    pub ceilings: bool,
    /// Model config (path or shipped name).
    #[arg(long, default_value = "edge")]
    pub model: String,
    /// RoPE preset replacing the model's (the context must hold the longest --frames).
    #[arg(long, default_value = "yarn-16x")]
    pub rope: String,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn parse_dtype(s: &str) -> std::result::Result<KvDtype, String> {
    s.parse::<KvDtype>().map_err(|e| e.to_string())
}

/// Median, p99 and mean of samples in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Timing {
    median: f64,
    p99: f64,
    mean: f64,
}

impl Timing {
    fn of(samples: &mut [f64]) -> Self {
        if samples.is_empty() {
            return Self {
                median: f64::NAN,
                p99: f64::NAN,
                mean: f64::NAN,
            };
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        let median = if n % 2 == 1 {
            samples[n / 2]
        } else {
            0.5 * (samples[n / 2 - 1] + samples[n / 2])
        };
        // Nearest rank.
        let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n);
        Self {
            median,
            p99: samples[rank - 1],
            mean: samples.iter().sum::<f64>() / n as f64,
        }
    }
}

/// Measured copy bandwidth (bytes/s, read + write) and matmul rates (FLOP/s).
#[derive(Clone, Copy, Debug)]
struct Ceilings {
    bandwidth: f64,
    matmul_f32: f64,
    matmul_f16: Option<f64>,
}

/// One result row.
#[derive(Clone, Debug)]
struct Row {
    dtype: KvDtype,
    frames: usize,
    cost: StepCost,
    step: Timing,
    full: Option<Timing>,
}

pub(crate) fn bench(args: &BenchArgs, out: &mut impl Write) -> Result<()> {
    match &args.command {
        BenchCommand::Step(step) => bench_step(step, out),
        BenchCommand::Soak(soak) => bench_soak(soak, out),
    }
}

fn bench_soak(args: &SoakArgs, out: &mut impl Write) -> Result<()> {
    use node::soak::{RSS_TOLERANCE, run_soak};
    let shutdown = crate::transport_cmd::shutdown_flag()?;
    let mut bar = crate::progress::bar(args.steps, "soak", args.quiet);
    let report = run_soak(args.steps, &shutdown, &mut |p| {
        let c = &p.node.cache;
        bar.step(
            p.sim_steps,
            &format!(
                "cache {}/{} B, {} evicted, over budget {}",
                c.bytes, c.budget, c.frames_evicted, c.over_budget_steps
            ),
        );
    })?;
    bar.finish();
    let mib = |b: u64| b as f64 / 1_048_576.0;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        writeln!(
            out,
            "soak: {} steps in {:.0} s ({} model steps, {} frame-steps evicted)",
            report.steps, report.seconds, report.model_steps, report.frames_evicted
        )?;
        writeln!(
            out,
            "| steps | RSS (MiB) | step p50 (ms) | step p99 (ms) | cache (B) |"
        )?;
        writeln!(out, "|---|---|---|---|---|")?;
        let every = (report.samples.len() / 10).max(1);
        for (i, s) in report.samples.iter().enumerate() {
            if i % every == 0 || i + 1 == report.samples.len() {
                writeln!(
                    out,
                    "| {} | {:.1} | {:.2} | {:.2} | {} |",
                    s.steps,
                    mib(s.rss_bytes),
                    s.step_p50_ms,
                    s.step_p99_ms,
                    s.cache_bytes
                )?;
            }
        }
        writeln!(
            out,
            "RSS first {:.1} / last {:.1} / max {:.1} MiB; after warm-up: last quarter vs first {:+.1}% (flat: {}, tolerance ±{:.0}%), largest sample {:.1}% off the median",
            mib(report.rss_first),
            mib(report.rss_last),
            mib(report.rss_max),
            100.0 * report.rss_growth,
            report.rss_flat,
            100.0 * RSS_TOLERANCE,
            100.0 * report.rss_deviation
        )?;
        writeln!(
            out,
            "step p99: first window {:.2} ms, last {:.2} ms, max {:.2} ms",
            report.p99_first_ms, report.p99_last_ms, report.p99_max_ms
        )?;
        writeln!(
            out,
            "KV cache: max {} of {} bytes, {} steps over budget (within budget: {})",
            report.cache_max_bytes,
            report.budget_bytes,
            report.over_budget_steps,
            report.within_budget
        )?;
    }
    if !report.rss_flat || !report.within_budget {
        bail!(
            "soak failed: RSS flat {}, within budget {}",
            report.rss_flat,
            report.within_budget
        );
    }
    Ok(())
}

fn bench_step(args: &StepArgs, out: &mut impl Write) -> Result<()> {
    if args.iters == 0 {
        bail!("--iters must be ≥ 1");
    }
    if let Some(n) = args.threads {
        if n == 0 {
            bail!("--threads must be ≥ 1");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("--threads: the thread pool was already started")?;
        if std::env::var("MATMUL_NUM_THREADS").ok().as_deref() != Some(&n.to_string()) {
            tracing::warn!(
                "--threads {n}: set MATMUL_NUM_THREADS={n} too (burn-ndarray's matrix products read it)"
            );
        }
    }
    match crate::device::parse_device(&args.device)? {
        None => {
            use burn::backend::NdArray;
            run::<NdArray<f32>>(args, Default::default(), "cpu", out)
        }
        Some(index) => bench_cuda(args, index, out),
    }
}

#[cfg(feature = "cuda")]
fn bench_cuda(args: &StepArgs, index: usize, out: &mut impl Write) -> Result<()> {
    use burn::backend::{Cuda, cuda::CudaDevice};
    run::<Cuda<f32, i32>>(args, CudaDevice { index }, &format!("cuda:{index}"), out)
}

#[cfg(not(feature = "cuda"))]
fn bench_cuda(_args: &StepArgs, index: usize, _out: &mut impl Write) -> Result<()> {
    Err(crate::device::no_cuda(index))
}

/// Median seconds of `iters` runs of `f` (after one untimed), each followed by a device sync.
fn time_op<B: Backend>(device: &B::Device, iters: usize, mut f: impl FnMut()) -> Result<f64> {
    f();
    crate::device::sync::<B>(std::slice::from_ref(device))?;
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        f();
        crate::device::sync::<B>(std::slice::from_ref(device))?;
        samples.push(start.elapsed().as_secs_f64());
    }
    Ok(Timing::of(&mut samples).median)
}

/// Copy bandwidth: `y = x + 1` over a large f32 tensor reads and writes every byte once.
/// Matmul rate: a square f32 (and on a GPU f16) product.
fn measure_ceilings<B: Backend>(device: &B::Device, gpu: bool) -> Result<Ceilings> {
    let (elements, n) = if gpu {
        (1usize << 28, 8192usize)
    } else {
        (1usize << 24, 1024usize)
    };
    let x = Tensor::<B, 1>::random([elements], Distribution::Default, device);
    let seconds = time_op::<B>(device, 10, || {
        let _ = x.clone() + 1.0;
    })?;
    let bandwidth = (2 * elements * 4) as f64 / seconds;
    let a = Tensor::<B, 2>::random([n, n], Distribution::Default, device);
    let b = Tensor::<B, 2>::random([n, n], Distribution::Default, device);
    let flops = 2.0 * (n as f64).powi(3);
    let seconds = time_op::<B>(device, 5, || {
        let _ = a.clone().matmul(b.clone());
    })?;
    let matmul_f32 = flops / seconds;
    let matmul_f16 = if gpu {
        let (a, b) = (a.cast(FloatDType::F16), b.cast(FloatDType::F16));
        let seconds = time_op::<B>(device, 5, || {
            let _ = a.clone().matmul(b.clone());
        })?;
        Some(flops / seconds)
    } else {
        None
    };
    Ok(Ceilings {
        bandwidth,
        matmul_f32,
        matmul_f16,
    })
}

impl Ceilings {
    /// The step's floor in ms: the larger of bytes / bandwidth and FLOPs / f32 matmul rate
    /// (the model computes in f32).
    fn floor_ms(&self, cost: &StepCost) -> (f64, f64, f64) {
        let memory = cost.bytes() as f64 / self.bandwidth * 1e3;
        let compute = cost.flops / self.matmul_f32 * 1e3;
        (memory, compute, memory.max(compute))
    }
}

fn run<B: Backend>(
    args: &StepArgs,
    device: B::Device,
    device_name: &str,
    out: &mut impl Write,
) -> Result<()> {
    let gpu = device_name != "cpu";
    let mut config = load_model_config(&args.model)?;
    apply_rope_preset(&mut config, &args.rope)?;
    B::seed(&device, args.seed);
    let model: Vla<B> = config.init(&device);
    let c = model.config().clone();
    let obs = Observations::new(&c, 64);
    let threads = rayon::current_num_threads();
    let full_max = args
        .full_max_frames
        .unwrap_or(if gpu { usize::MAX } else { 64 });
    writeln!(
        out,
        "edgevla bench step: model {} + RoPE {}, device {device_name}, {threads} threads; step = {} tokens ({} frame-step + {} readouts) through {} layers + action head; cache budget = sinks + exactly N frame-steps (each step evicts one)",
        args.model,
        args.rope,
        c.tokens_per_step() + c.n_readout,
        c.tokens_per_step(),
        c.n_readout,
        c.n_layers
    )?;
    let ceilings = if args.ceilings || gpu {
        let ceilings = measure_ceilings::<B>(&device, gpu)?;
        writeln!(
            out,
            "ceilings: copy bandwidth {:.1} GB/s (read + write), matmul f32 {:.2} TFLOP/s{}",
            ceilings.bandwidth / 1e9,
            ceilings.matmul_f32 / 1e12,
            ceilings
                .matmul_f16
                .map(|r| format!(", f16 {:.2} TFLOP/s", r / 1e12))
                .unwrap_or_default()
        )?;
        Some(ceilings)
    } else {
        None
    };
    let mut rows = Vec::new();
    for &frames in &args.frames {
        let mut full: Option<Timing> = None;
        if args.full && frames <= full_max {
            let steps: Vec<StepInput<'_>> = (0..=frames).map(|i| obs.step(i)).collect();
            let mut samples = Vec::with_capacity(args.full_iters);
            for i in 0..=args.full_iters {
                let start = Instant::now();
                let output = model.forward_full(INSTRUCTION, &steps, &device)?;
                std::hint::black_box(output.action);
                if i > 0 {
                    samples.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            full = Some(Timing::of(&mut samples));
        }
        for &dtype in &args.dtype {
            let mut stream = prefilled_stream(&model, dtype, frames, &device)
                .with_context(|| format!("{frames} frame-steps, {dtype}"))?;
            let cost = StepCost::new(&c, dtype, stream.cache().len());
            let mut samples = Vec::with_capacity(args.iters);
            for i in 0..args.warmup + args.iters {
                let start = Instant::now();
                // The action chunk is read back to the host: the step is complete on any device.
                let output = model.forward_step(&obs.step(i), &mut stream)?;
                std::hint::black_box(output.action);
                if i >= args.warmup {
                    samples.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            let row = Row {
                dtype,
                frames,
                cost,
                step: Timing::of(&mut samples),
                full,
            };
            print_row(out, &row, ceilings.as_ref(), rows.is_empty())?;
            rows.push(row);
        }
    }
    if let Some(path) = &args.csv {
        write_csv(path, device_name, threads, &rows, ceilings.as_ref())?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(())
}

fn print_row(
    out: &mut impl Write,
    row: &Row,
    ceilings: Option<&Ceilings>,
    header: bool,
) -> Result<()> {
    if header {
        write!(
            out,
            "{:>6} {:>6} {:>7} {:>10} {:>10} {:>11} {:>8}",
            "frames", "dtype", "cached", "median_ms", "p99_ms", "full_ms", "full/inc"
        )?;
        if ceilings.is_some() {
            write!(out, " {:>9} {:>12}", "floor_ms", "median/floor")?;
        }
        writeln!(out)?;
    }
    let (full_ms, ratio) = match row.full {
        Some(full) => (
            format!("{:.2}", full.median),
            format!("{:.1}x", full.median / row.step.median),
        ),
        None => ("-".into(), "-".into()),
    };
    write!(
        out,
        "{:>6} {:>6} {:>7} {:>10.3} {:>10.3} {:>11} {:>8}",
        row.frames,
        row.dtype.name(),
        row.cost.cached_tokens,
        row.step.median,
        row.step.p99,
        full_ms,
        ratio
    )?;
    if let Some(ceilings) = ceilings {
        let (_, _, floor) = ceilings.floor_ms(&row.cost);
        write!(
            out,
            " {:>9.3} {:>11.1}x",
            floor,
            row.step.median / floor.max(f64::MIN_POSITIVE)
        )?;
    }
    writeln!(out)?;
    Ok(())
}

fn write_csv(
    path: &std::path::Path,
    device: &str,
    threads: usize,
    rows: &[Row],
    ceilings: Option<&Ceilings>,
) -> Result<()> {
    let mut text = String::from(
        "impl,device,threads,dtype,frames,cached_tokens,step_tokens,median_ms,p99_ms,mean_ms,full_median_ms,full_over_step,flops,weight_bytes,kv_bytes,bandwidth_gbs,matmul_tflops,floor_memory_ms,floor_compute_ms,floor_ms,median_over_floor\n",
    );
    for row in rows {
        let (full, ratio) = match row.full {
            Some(full) => (
                format!("{:.4}", full.median),
                format!("{:.3}", full.median / row.step.median),
            ),
            None => (String::new(), String::new()),
        };
        let ceiling_cols = match ceilings {
            Some(ceil) => {
                let (memory, compute, floor) = ceil.floor_ms(&row.cost);
                format!(
                    "{:.2},{:.3},{memory:.4},{compute:.4},{floor:.4},{:.2}",
                    ceil.bandwidth / 1e9,
                    ceil.matmul_f32 / 1e12,
                    row.step.median / floor
                )
            }
            None => ",,,,,".into(),
        };
        text.push_str(&format!(
            "edgevla,{device},{threads},{},{},{},{},{:.4},{:.4},{:.4},{full},{ratio},{:.0},{},{},{ceiling_cols}\n",
            row.dtype.name(),
            row.frames,
            row.cost.cached_tokens,
            row.cost.step_tokens,
            row.step.median,
            row.step.p99,
            row.step.mean,
            row.cost.flops,
            row.cost.weight_bytes,
            row.cost.kv_bytes,
        ));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_median_and_p99() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).rev().collect();
        let t = Timing::of(&mut samples);
        assert_eq!(t.median, 50.5);
        assert_eq!(t.p99, 99.0);
        assert_eq!(t.mean, 50.5);
        let t = Timing::of(&mut [3.0, 1.0, 2.0]);
        assert_eq!((t.median, t.p99), (2.0, 3.0));
    }
}
