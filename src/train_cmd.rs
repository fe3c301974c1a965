//! `edgevla train`: trains the model on the synthetic memory task and writes a checkpoint.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::backend::{Autodiff, NdArray};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use serde::Deserialize;
use sim::TaskConfig;
use trainer::data::{Prefetch, StepWeights};
use trainer::train::{ActionLoss, Resume, TrainConfig};

use node::checkpoint::read_named;

/// Arguments of `edgevla train`.
/// Whether the CUDA backend fuses operations (burn-fusion).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Fusion {
    /// `Fusion<CubeBackend<CudaRuntime>>`.
    On,
    /// `CubeBackend<CudaRuntime>` (burn's `Cuda` as this workspace builds it).
    Off,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Training config (configs/training/*.toml, or a shipped name such as `edge-memory`)
    /// [default: with --resume, the run's own (its checkpoint's training.toml); else
    /// `edge-memory`].
    #[arg(long)]
    pub config: Option<String>,
    /// Override the number of optimizer steps.
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Override the config's batch size (episodes per iteration).
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// On CUDA: burn's operation fusion (`on`: elementwise chains compiled into one kernel;
    /// 15% less time per `edge-long` iteration on an H100) or every operation its own kernel
    /// (`off`).
    #[arg(long, value_enum, default_value_t = Fusion::On)]
    pub fusion: Fusion,
    /// Checkpoint folder to write (config.toml + weights.mpk).
    #[arg(long)]
    pub out: PathBuf,
    /// Where to train: cpu, or cuda / cuda:N (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu", conflicts_with = "devices")]
    pub device: String,
    /// Shard every sequence over several devices with ring attention: `cpu:N` (N shards on
    /// the CPU) or `cuda:0,1,2,3`. The model and optimizer live on the first.
    #[arg(long)]
    pub devices: Option<String>,
    /// After training, drive the simulator closed loop on this many fresh episodes (seeds not
    /// used in training) and print the success rate.
    #[arg(long, default_value_t = 0)]
    pub eval_episodes: u64,
    /// No progress bar (logs a line every 10% instead).
    #[arg(long)]
    pub quiet: bool,
    /// Continue the run whose checkpoint folder this is (weights, optimizer state and
    /// iterations done, as every `edgevla train` writes them) up to the config's iterations;
    /// the run's config (model, data seed, schedule) is read from the checkpoint unless
    /// --config names it.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Stop after this iteration of the schedule (the checkpoint records it; continue with
    /// --resume), e.g. to split a long run over several sessions.
    #[arg(long, value_name = "N")]
    pub stop_after: Option<usize>,
    /// Stop once this many seconds of training have passed (after the iteration running
    /// then), saving a checkpoint that --resume continues: fits a run into a time slot.
    #[arg(long, value_name = "SECONDS")]
    pub time_limit: Option<f64>,
    /// Start from the weights of this checkpoint (same architecture) with a fresh optimizer
    /// and schedule: fine-tuning, or a second stage of a recipe.
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub init: Option<PathBuf>,
}

/// What a checkpoint folder records about the run that wrote it (`train_state.toml`).
#[derive(Debug, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainState {
    /// Optimizer steps done.
    iterations_done: usize,
    /// Length of the learning-rate schedule the run was started with (the config's
    /// iterations or `--iterations`): `--resume` continues that schedule unless `--iterations`
    /// names another. Absent in checkpoints written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schedule_iterations: Option<usize>,
}

const STATE_FILE: &str = "train_state.toml";
const OPTIMIZER_STEM: &str = "optimizer"; // the recorder adds `.mpk`

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

/// A run read back for `--resume`.
struct Resumed<B: AutodiffBackend> {
    model: runtime::model::Vla<B>,
    resume: Resume<B>,
    /// Its metrics.csv so far.
    metrics: String,
    /// The schedule length it was started with, when recorded.
    schedule: Option<usize>,
}

/// The model, optimizer state, iterations done, earlier metrics and schedule length of the run
/// in `dir`.
fn load_resume<B: AutodiffBackend>(
    dir: &std::path::Path,
    config: &runtime::model::VlaConfig,
    device: &B::Device,
) -> Result<Resumed<B>> {
    let model = runtime::checkpoint::load::<B>(dir, Some(config), device)
        .with_context(|| format!("--resume {}", dir.display()))?;
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path)
        .with_context(|| format!("--resume: reading {}", state_path.display()))?;
    let state: TrainState = toml::from_str(&text)
        .with_context(|| format!("--resume: {} is not a training state", state_path.display()))?;
    let optimizer = Recorder::<B>::load(&recorder(), dir.join(OPTIMIZER_STEM), device)
        .map_err(|e| anyhow::anyhow!("--resume: optimizer state in {}: {e}", dir.display()))?;
    let metrics = std::fs::read_to_string(dir.join("metrics.csv")).unwrap_or_default();
    Ok(Resumed {
        model,
        resume: Resume {
            done: state.iterations_done,
            optimizer,
        },
        metrics,
        schedule: state.schedule_iterations,
    })
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
    /// Loss weight of the go-phase steps relative to the steps before the go signal.
    #[serde(default = "one")]
    go_step_weight: f32,
    /// Loss weight of the first `go_onset_steps` go-phase steps (default: `go_step_weight`):
    /// where the reach's direction must come from memory alone.
    #[serde(default)]
    go_onset_weight: Option<f32>,
    /// How many go-phase steps, from the go step, weigh `go_onset_weight` (default 0).
    #[serde(default)]
    go_onset_steps: usize,
    /// Noise (rad/s) on the recorded expert's executed commands (the task's `expert_noise`),
    /// for this training run's episodes only.
    #[serde(default)]
    expert_noise: Option<f64>,
    /// Probability of a detour in a recorded episode's go phase (the task's `expert_detour`),
    /// for this training run's episodes only.
    #[serde(default)]
    expert_detour: Option<f64>,
    /// The action space the model learns to command (the task's `action`): `joint_velocity`
    /// or `joint_target`; recorded in the checkpoint's task.toml.
    #[serde(default)]
    action: Option<sim::ActionSpace>,
    optimizer: TrainConfig,
}

impl TrainingFile {
    /// The training episodes' task: the named task config (a shipped name or a path) with this
    /// run's overrides (expert noise and detours, action space), validated.
    fn task_config(&self) -> Result<TaskConfig> {
        let mut task =
            TaskConfig::from_toml(&read_named(&self.task, configs::task_preset(&self.task))?)
                .with_context(|| format!("task config {}", self.task))?;
        if let Some(noise) = self.expert_noise {
            task.expert_noise = noise;
        }
        if let Some(p) = self.expert_detour {
            task.expert_detour = p;
        }
        if let Some(action) = self.action {
            task.action = action;
        }
        task.validate()?;
        Ok(task)
    }
}

fn one() -> f32 {
    1.0
}

pub(crate) fn train(args: &TrainArgs, out: &mut impl Write) -> Result<()> {
    let (cuda, ids) = match &args.devices {
        Some(list) => crate::device::parse_devices(list)?,
        None => crate::device::parse_devices(&args.device)?,
    };
    if cuda {
        train_cuda(args, &ids, out)
    } else {
        let devices = vec![Default::default(); ids.len()];
        run::<Autodiff<NdArray<f32>>>(args, devices, None, out)
    }
}

#[cfg(feature = "cuda")]
fn train_cuda(args: &TrainArgs, ids: &[usize], out: &mut impl Write) -> Result<()> {
    use burn::backend::Cuda;
    use burn::cubecl::Runtime;
    use burn::cubecl::cuda::CudaRuntime;
    let devices = crate::device::cuda_devices(ids)?;
    // cubecl-cuda sizes its largest memory page to a quarter of cuDeviceTotalMem.
    let total = devices
        .iter()
        .map(|d| 4 * CudaRuntime::client(d).properties().memory.max_page_size)
        .min();
    match args.fusion {
        Fusion::On => run::<Autodiff<runtime::flash::CudaFused>>(args, devices, total, out),
        Fusion::Off => run::<Autodiff<Cuda<f32, i32>>>(args, devices, total, out),
    }
}

/// The file beside a checkpoint holding the training config its run was started with, so that
/// `--resume` continues it without naming the config again.
const TRAINING_FILE: &str = "training.toml";

/// The training config's name (for messages) and text: `--config`, else with `--resume` the
/// checkpoint's [`TRAINING_FILE`], else the `edge-memory` preset.
fn training_text(args: &TrainArgs) -> Result<(String, String)> {
    if let Some(name) = &args.config {
        return Ok((
            name.clone(),
            read_named(name, configs::training_preset(name))?,
        ));
    }
    if let Some(dir) = &args.resume {
        let path = dir.join(TRAINING_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "--resume {}: no {TRAINING_FILE} (a checkpoint written before runs recorded their config): name it with --config",
                dir.display()
            )
        })?;
        return Ok((path.display().to_string(), text));
    }
    let name = "edge-memory";
    Ok((
        name.into(),
        read_named(name, configs::training_preset(name))?,
    ))
}

#[cfg(not(feature = "cuda"))]
fn train_cuda(_args: &TrainArgs, ids: &[usize], _out: &mut impl Write) -> Result<()> {
    Err(crate::device::no_cuda(ids.first().copied().unwrap_or(0)))
}

/// Trains on `devices`; `device_memory` (bytes per device, where known) is checked against
/// the estimate of what an iteration needs before anything is built.
fn run<B: AutodiffBackend + runtime::flash::TrainAttention>(
    args: &TrainArgs,
    devices: Vec<B::Device>,
    device_memory: Option<u64>,
    out: &mut impl Write,
) -> Result<()> {
    let Some(device) = devices.first().cloned() else {
        bail!("no device to train on");
    };
    let (config_name, text) = training_text(args)?;
    let mut file: TrainingFile =
        toml::from_str(&text).with_context(|| format!("training config {config_name}"))?;
    if let Some(n) = args.batch_size {
        file.batch_size = n;
    }
    let mut optimizer = file.optimizer.clone();
    if let Some(n) = args.iterations {
        optimizer.iterations = n;
    }
    optimizer.validate()?;
    if let Some(limit) = args.time_limit
        && !(limit.is_finite() && limit > 0.0)
    {
        bail!("--time-limit must be a positive number of seconds, got {limit}");
    }
    if file.batch_size == 0 {
        bail!("invalid config key `batch_size`: must be ≥ 1");
    }
    let mut model_config = node::checkpoint::load_model_config(&file.model)?;
    if let Some(name) = &file.rope {
        node::checkpoint::apply_rope_preset(&mut model_config, name)?;
    }
    let task = file
        .task_config()
        .with_context(|| format!("training config {config_name}"))?;

    if optimizer.cue_loss_weight > 0.0 && model_config.cue_classes == 0 {
        // The auxiliary cue loss needs the cue-recall head: one class per target pad.
        model_config.cue_classes = task.n_targets;
    }
    if !(file.go_step_weight.is_finite() && file.go_step_weight >= 0.0) {
        bail!("invalid config key `go_step_weight`: must be a finite number ≥ 0");
    }
    if let Some(w) = file.go_onset_weight
        && !(w.is_finite() && w >= 0.0)
    {
        bail!("invalid config key `go_onset_weight`: must be a finite number ≥ 0");
    }
    if model_config.action_bins.is_some() && optimizer.action_loss != ActionLoss::Mse {
        bail!(
            "invalid config key `optimizer.action_loss`: model {} has a classification action head (action_bins), trained by a cross-entropy over its bins; leave action_loss out",
            file.model
        );
    }

    if let Some(total) = device_memory {
        let need = trainer::train::memory_estimate(
            &model_config,
            file.batch_size,
            task.episode_steps,
            devices.len(),
        );
        if need > total {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            bail!(
                "a batch of {} episodes x {} frame-steps needs about {:.1} GiB per device to train, \
                 the device has {:.1} GiB: lower batch_size or episode_steps, or shard the sequence \
                 over more devices (--devices)",
                file.batch_size,
                task.episode_steps,
                gib(need),
                gib(total)
            );
        }
    }
    B::seed(&device, file.seed);
    let (model, resume, earlier_metrics) = match &args.resume {
        Some(dir) => {
            let r = load_resume::<B>(dir, &model_config, &device)?;
            if let (None, Some(n)) = (args.iterations, r.schedule) {
                optimizer.iterations = n;
            }
            (r.model, Some(r.resume), r.metrics)
        }
        None => {
            let model = match &args.init {
                Some(dir) => {
                    let (model, fresh) =
                        runtime::checkpoint::load_init::<B>(dir, &model_config, &device)
                            .with_context(|| format!("--init {}", dir.display()))?;
                    if !fresh.is_empty() {
                        println!(
                            "--init {}: starts fresh: {} (the checkpoint has none of this kind)",
                            dir.display(),
                            fresh.join(", ")
                        );
                    }
                    model
                }
                None => model_config.init::<B>(&device),
            };
            (model, None, String::new())
        }
    };
    let start = resume.as_ref().map_or(0, |r| r.done);
    let until = args
        .stop_after
        .unwrap_or(optimizer.iterations)
        .min(optimizer.iterations);
    if until <= start {
        bail!(
            "nothing to train: the run is at iteration {start} and would stop at {until} (of {})",
            optimizer.iterations
        );
    }
    let base_seed = file.seed.wrapping_mul(1_000_003);
    // Episodes are rendered on the CPU's cores a few batches ahead of the device.
    let mut prefetch = Prefetch::start(
        task.clone(),
        base_seed,
        file.batch_size,
        StepWeights {
            go: file.go_step_weight,
            onset: file.go_onset_weight.unwrap_or(file.go_step_weight),
            onset_steps: file.go_onset_steps,
        },
        start..until,
        trainer::train::LOSS_READ_EVERY + 1,
    );
    let tokens_per_batch =
        (file.batch_size * model_config.train_sequence_len(task.episode_steps)) as f64;
    let mut progress = crate::progress::bar(until as u64, "training", args.quiet);
    let started = Instant::now();
    let header = "iteration,loss,learning_rate,elapsed_s,tokens_per_s,cue_loss\n";
    // Runs saved before the cue_loss column keep their rows, with that column empty.
    let old_header = "iteration,loss,learning_rate,elapsed_s,tokens_per_s\n";
    let mut metrics = if earlier_metrics.starts_with(header) {
        earlier_metrics
    } else if let Some(rows) = earlier_metrics.strip_prefix(old_header) {
        rows.lines()
            .fold(String::from(header), |all, row| all + row + ",\n")
    } else {
        String::from(header)
    };
    let (model, report, optimizer_state) = trainer::train::train_resumable(
        model,
        &optimizer,
        resume,
        until,
        args.time_limit
            .map(|limit| started + std::time::Duration::from_secs_f64(limit)),
        |iteration| prefetch.get(iteration),
        |iteration, step| {
            let elapsed = started.elapsed().as_secs_f64();
            let rate = tokens_per_batch * (iteration + 1 - start) as f64 / elapsed.max(1e-9);
            let loss = step.total;
            let cue = step.cue.map_or(String::new(), |cue| format!("{cue:e}"));
            metrics.push_str(&format!(
                "{iteration},{loss:e},{:e},{elapsed:.3},{rate:.1},{cue}\n",
                optimizer.learning_rate_at(iteration)
            ));
            let cue = step
                .cue
                .map_or(String::new(), |cue| format!(" (cue {cue:.3})"));
            progress.step(
                iteration as u64 + 1,
                &format!("loss {loss:.4e}{cue}, {rate:.0} tokens/s"),
            );
            true
        },
        &devices,
    )?;
    progress.finish();
    let done = start + report.losses.len();
    if done < until {
        writeln!(
            out,
            "time limit reached after iteration {done} of {}: continue with --resume {}",
            optimizer.iterations,
            args.out.display()
        )?;
    }
    runtime::checkpoint::save(&model, &args.out)?;
    let preprocess = sim::training_preprocess();
    node::checkpoint::write_preprocess(&args.out, &preprocess)?;
    node::checkpoint::write_task(&args.out, &task)?;
    let training_path = args.out.join(TRAINING_FILE);
    std::fs::write(&training_path, &text)
        .with_context(|| format!("writing {}", training_path.display()))?;
    let metrics_path = args.out.join("metrics.csv");
    std::fs::write(&metrics_path, &metrics)
        .with_context(|| format!("writing {}", metrics_path.display()))?;
    Recorder::<B>::record(&recorder(), optimizer_state, args.out.join(OPTIMIZER_STEM))
        .map_err(|e| anyhow::anyhow!("writing the optimizer state: {e}"))?;
    let state = toml::to_string(&TrainState {
        iterations_done: done,
        schedule_iterations: Some(optimizer.iterations),
    })?;
    std::fs::write(args.out.join(STATE_FILE), state)
        .with_context(|| format!("writing {}", args.out.join(STATE_FILE).display()))?;
    // The curve of the whole run, earlier iterations of a resumed run included.
    let all_losses: Vec<f64> = metrics
        .lines()
        .skip(1)
        .filter_map(|line| line.split(',').nth(1)?.parse().ok())
        .collect();
    trainer::plot::write_loss_png(
        &all_losses,
        &format!("training loss: {config_name}"),
        &args.out.join("loss.png"),
    )?;
    if args.eval_episodes > 0 {
        use burn::module::AutodiffModule;
        // Evaluation seeds start far from the training ones.
        let first = base_seed.wrapping_add(1 << 40);
        let seeds = first..first + args.eval_episodes;
        let report = if model_config.memory.is_some() {
            // The memory bank runs on the host path: evaluate the saved checkpoint on the CPU.
            let cpu = Default::default();
            let host =
                runtime::checkpoint::load::<NdArray<f32>>(&args.out, Some(&model_config), &cpu)?;
            eval::closed_loop::closed_loop(&host, &task, &preprocess, seeds, &cpu)?
        } else {
            eval::closed_loop::closed_loop(&model.valid(), &task, &preprocess, seeds, &device)?
        };
        writeln!(
            out,
            "closed-loop success: {}/{} episodes ({:.1}%; the expert reaches 100%, ignoring the cue ~25%)",
            report.successes,
            report.episodes,
            100.0 * report.success_rate()
        )?;
        if let Some(hits) = report.cue_correct {
            writeln!(
                out,
                "cue recall at the last step: {hits}/{} episodes",
                report.episodes
            )?;
        }
        if let Some(hits) = report.cue_correct_at_go {
            writeln!(
                out,
                "cue recall at the go step: {hits}/{} episodes",
                report.episodes
            )?;
        }
    }
    let p = &report.phases;
    writeln!(
        out,
        "host time: {:.1} s waiting for batches, {:.1} s forward, {:.1} s backward, {:.1} s optimizer, {:.1} s waiting for the device",
        p.batch, p.forward, p.backward, p.step, p.sync
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped training config parses (unknown keys are errors), names a shipped model
    /// and task that load, and its overrides give a valid task.
    #[test]
    fn every_shipped_training_config_parses() {
        for preset in configs::TRAINING_PRESETS {
            let file: TrainingFile =
                toml::from_str(preset.text).unwrap_or_else(|e| panic!("{}: {e}", preset.name));
            node::checkpoint::load_model_config(&file.model)
                .unwrap_or_else(|e| panic!("{}: model {}: {e:#}", preset.name, file.model));
            assert!(
                configs::task_preset(&file.task).is_some(),
                "{}: no shipped task {}",
                preset.name,
                file.task
            );
            file.task_config()
                .unwrap_or_else(|e| panic!("{}: {e:#}", preset.name));
            file.optimizer
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", preset.name));
        }
        let joint_target = configs::training_preset("edge-long-target").expect("preset");
        let file: TrainingFile = toml::from_str(joint_target.text).expect("parse");
        assert_eq!(file.action, Some(sim::ActionSpace::JointTarget));
    }
}
