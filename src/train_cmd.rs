//! `edgevla train`: trains the model on the synthetic memory task and writes a checkpoint.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use serde::Deserialize;
use trainer::task::{Episode, TaskConfig};
use trainer::train::{Batch, TrainConfig};

use crate::model_cmd::read_named;

/// Arguments of `edgevla train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training config (configs/training/*.toml, or a shipped name such as `edge-memory`).
    #[arg(long, default_value = "edge-memory")]
    pub config: String,
    /// Override the number of optimizer steps.
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Checkpoint folder to write (config.toml + weights.mpk).
    #[arg(long)]
    pub out: PathBuf,
    /// Where to train: cpu, or cuda / cuda:N (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// After training, drive the simulator closed loop on this many fresh episodes (seeds not
    /// used in training) and print the success rate.
    #[arg(long, default_value_t = 0)]
    pub eval_episodes: u64,
    /// No progress bar (logs a line every 10% instead).
    #[arg(long)]
    pub quiet: bool,
}

/// `configs/training/*.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainingFile {
    model: String,
    #[serde(default)]
    rope: Option<String>,
    task: String,
    batch_size: usize,
    seed: u64,
    optimizer: TrainConfig,
}

/// Episodes `seeds` as one training batch (images through the vision preprocessor).
fn episode_batch(task: &TaskConfig, seeds: impl Iterator<Item = u64>) -> Result<Batch> {
    let preprocess = vision::PreprocessConfig::default();
    let mut batch = Batch::default();
    for seed in seeds {
        let episode =
            Episode::generate(task, seed).with_context(|| format!("episode seed {seed}"))?;
        batch.steps = episode.steps.len();
        batch.instructions.push(episode.instruction.clone());
        for step in &episode.steps {
            batch.patches.extend(step.patches(&preprocess)?);
            batch
                .camera_present
                .extend(std::iter::repeat_n(true, step.images.len()));
            batch.proprio.extend_from_slice(&step.proprio);
            batch.actions.extend_from_slice(&step.expert_action);
        }
    }
    Ok(batch)
}

pub(crate) fn train(args: &TrainArgs, out: &mut impl Write) -> Result<()> {
    match args.device.as_str() {
        "cpu" => run::<Autodiff<NdArray<f32>>>(args, Default::default(), out),
        name => {
            let index = match name.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|i| i.parse::<usize>().ok())
                    .with_context(|| format!("--device {name}: expected cpu, cuda or cuda:N"))?,
                None => bail!("--device {name}: expected cpu, cuda or cuda:N"),
            };
            train_cuda(args, index, out)
        }
    }
}

#[cfg(feature = "cuda")]
fn train_cuda(args: &TrainArgs, index: usize, out: &mut impl Write) -> Result<()> {
    use burn::backend::{Cuda, cuda::CudaDevice};
    run::<Autodiff<Cuda<f32, i32>>>(args, CudaDevice { index }, out)
}

#[cfg(not(feature = "cuda"))]
fn train_cuda(_args: &TrainArgs, index: usize, _out: &mut impl Write) -> Result<()> {
    bail!(
        "--device cuda:{index}: this edgevla was built without the `cuda` feature (cargo build --release --features cuda)"
    )
}

fn run<B: AutodiffBackend>(
    args: &TrainArgs,
    device: B::Device,
    out: &mut impl Write,
) -> Result<()> {
    let text = read_named(&args.config, configs::training_preset(&args.config))?;
    let file: TrainingFile =
        toml::from_str(&text).with_context(|| format!("training config {}", args.config))?;
    let mut optimizer = file.optimizer.clone();
    if let Some(n) = args.iterations {
        optimizer.iterations = n;
    }
    optimizer.validate()?;
    if file.batch_size == 0 {
        bail!("invalid config key `batch_size`: must be ≥ 1");
    }
    let mut model_config = crate::model_cmd::load_model_config(&file.model)?;
    if let Some(name) = &file.rope {
        crate::model_cmd::apply_rope_preset(&mut model_config, name)?;
    }
    let task = TaskConfig::from_toml(&read_named(&file.task, configs::task_preset(&file.task))?)
        .with_context(|| format!("task config {}", file.task))?;

    B::seed(&device, file.seed);
    let model = model_config.init::<B>(&device);
    let batch_size = file.batch_size as u64;
    let base_seed = file.seed.wrapping_mul(1_000_003);
    let next_batch = |iteration: usize| -> trainer::Result<Batch> {
        let first = base_seed.wrapping_add(iteration as u64 * batch_size);
        episode_batch(&task, first..first + batch_size)
            .map_err(|e| trainer::Error::config("task", format!("{e:#}")))
    };
    let mut progress = crate::progress::bar(optimizer.iterations as u64, "training", args.quiet);
    let started = Instant::now();
    let (model, report) = trainer::train::train(
        model,
        &optimizer,
        next_batch,
        |iteration, loss| progress.step(iteration as u64 + 1, &format!("loss {loss:.4e}")),
        &device,
    )?;
    progress.finish();
    runtime::checkpoint::save(&model, &args.out)?;
    if args.eval_episodes > 0 {
        use burn::module::AutodiffModule;
        // Evaluation seeds start far from the training ones.
        let first = base_seed.wrapping_add(1 << 40);
        let report = trainer::eval::closed_loop(
            &model.valid(),
            &task,
            first..first + args.eval_episodes,
            &device,
        )?;
        writeln!(
            out,
            "closed-loop success: {}/{} episodes ({:.1}%; the expert reaches 100%, ignoring the cue ~25%)",
            report.successes,
            report.episodes,
            100.0 * report.success_rate()
        )?;
    }
    let first = report.losses.first().copied().unwrap_or(f64::NAN);
    let last = report.losses.last().copied().unwrap_or(f64::NAN);
    writeln!(
        out,
        "trained {} iterations in {:.1} s: loss {first:.4e} -> {last:.4e}; checkpoint {}",
        report.losses.len(),
        started.elapsed().as_secs_f64(),
        args.out.display()
    )?;
    Ok(())
}
