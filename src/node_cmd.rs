//! `edgevla node`, `edgevla sim` and `edgevla demo`: argument parsing and output around
//! the `node` crate.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use burn::backend::NdArray;
use burn::tensor::backend::Backend;
use clap::Args;
use sim::{ActionSpace, TaskConfig};
use transport::replay::{Rate, Remap};

use crate::transport_cmd::{ZenohArgs, shutdown_flag};
use node::checkpoint::read_named;
use node::demo::{Pace, read_mcap, replay_through_node, run_demo, summary_table};
use node::sim::{CacheFrames, SimMode, SimOptions, run_sim};
use node::{ClockMode, ModelChoice, NodeConfig, NodeMonitor, run_node, setup};

/// Model and device flags shared by `node` and `demo`.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Node config: a shipped name (configs/node/) or a path.
    #[arg(long, default_value = "edge")]
    pub config: String,
    /// Checkpoint folder (config.toml + weights.mpk). Default: the config's `checkpoint`
    /// (models/edge-long-xl; a relative path is also looked for in $EDGEVLA_HOME, beside the
    /// executable and in the source tree), an error when it is found nowhere.
    #[arg(long, value_name = "DIR", conflicts_with = "untrained")]
    pub model: Option<PathBuf>,
    /// Run a seeded random init of the config's `model` instead of a checkpoint (to test the
    /// plumbing; success at chance).
    #[arg(long)]
    pub untrained: bool,
    /// cpu, or cuda / cuda:N (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl ModelArgs {
    /// The weights these flags ask for.
    pub fn choice(&self) -> ModelChoice<'_> {
        match (&self.model, self.untrained) {
            (Some(dir), _) => ModelChoice::Checkpoint(dir),
            (None, true) => ModelChoice::Untrained,
            (None, false) => ModelChoice::Configured,
        }
    }
}

/// Arguments of `edgevla node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Model, config, device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Override the config's clock: `source` (live) or `joints` (lock-step / stepped replay).
    #[arg(long, value_name = "MODE")]
    pub clock: Option<String>,
    /// zenoh session.
    #[command(flatten)]
    pub zenoh: ZenohArgs,
}

/// Arguments of `edgevla sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Robot id (keys robot/<id>/...).
    #[arg(long, default_value = "edge")]
    pub robot_id: String,
    /// Key prefix.
    #[arg(long, default_value = transport::keys::DEFAULT_PREFIX)]
    pub prefix: String,
    /// Task config: a shipped name (configs/task/) or a path; the default is the long-memory
    /// task the shipped model is evaluated on (`memory-short`: the short task of `edge-memory`).
    #[arg(long, default_value = "memory-long")]
    pub task: String,
    /// Episodes to run.
    #[arg(long, default_value_t = 10)]
    pub episodes: u64,
    /// Seed of the first episode (episode i uses seed + i).
    #[arg(long, default_value_t = 1_000_000)]
    pub seed: u64,
    /// lock-step (wait for each action: deterministic) or real-time.
    #[arg(long, default_value = "lock-step")]
    pub mode: SimMode,
    /// JPEG quality of the published frames.
    #[arg(long, default_value_t = 95)]
    pub jpeg_quality: u8,
    /// Lock-step: seconds to wait for an action before holding still.
    #[arg(long, default_value_t = 30.0)]
    pub action_timeout: f64,
    /// What the node's actions command, overriding the task's `action`: joint-velocity or
    /// joint-target, as the node's checkpoint was trained (its task.toml; the node logs it at
    /// start-up). `demo` takes it from the checkpoint itself.
    #[arg(long, value_enum)]
    pub action: Option<ActionArg>,
    /// Seconds to wait for a node to subscribe before starting.
    #[arg(long, default_value_t = 30.0)]
    pub wait_for_node: f64,
    /// zenoh session.
    #[command(flatten)]
    pub zenoh: ZenohArgs,
}

/// An action space on the command line (`sim::ActionSpace`).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ActionArg {
    /// Joint velocities (rad/s).
    JointVelocity,
    /// Joint position targets (rad).
    JointTarget,
}

impl From<ActionArg> for ActionSpace {
    fn from(a: ActionArg) -> Self {
        match a {
            ActionArg::JointVelocity => Self::JointVelocity,
            ActionArg::JointTarget => Self::JointTarget,
        }
    }
}

/// Arguments of `edgevla demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Model, config, device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Episodes (650 steps each with the default task).
    #[arg(long, default_value_t = 8)]
    pub episodes: u64,
    /// Seed of the first episode.
    #[arg(long, default_value_t = 1_000_000)]
    pub seed: u64,
    /// Task config: a shipped name (configs/task/) or a path; the default is the long-memory
    /// task the shipped model is evaluated on (`memory-short`: the short task of `edge-memory`).
    #[arg(long, default_value = "memory-long")]
    pub task: String,
    /// lock-step (deterministic, as fast as the model) or real-time (10 Hz, chunked actions).
    #[arg(long, default_value = "lock-step")]
    pub mode: SimMode,
    /// Also record every message to this MCAP file (replay it with --replay).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Instead of the simulator, replay this recording's cameras, joints and instructions into
    /// the node and report digests of the action messages.
    #[arg(long, value_name = "FILE", conflicts_with = "record")]
    pub replay: Option<PathBuf>,
    /// With --replay: `step` (wait for each action: deterministic), a rate such as 1.0, or max.
    #[arg(long, default_value = "step")]
    pub rate: String,
    /// With --replay: key remapping rules `from=to`.
    #[arg(long, value_name = "RULE")]
    pub remap: Vec<String>,
    /// Print the outcome as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No live progress bar.
    #[arg(long)]
    pub quiet: bool,
}

fn task_config(name: &str) -> Result<TaskConfig> {
    TaskConfig::from_toml(&read_named(name, configs::task_preset(name))?)
        .with_context(|| format!("task config {name}"))
}

/// Runs `edgevla node` until Ctrl-C; prints the final report as JSON.
pub(crate) fn node(args: &NodeArgs, out: &mut impl Write) -> Result<()> {
    let mut config = NodeConfig::load(&args.model.config)?;
    if let Some(clock) = &args.clock {
        config.clock = match clock.as_str() {
            "source" => ClockMode::Source,
            "joints" => ClockMode::Joints,
            other => bail!("--clock {other}: expected source or joints"),
        };
    }
    let session_config = args.zenoh.session_config()?;
    let shutdown = shutdown_flag()?;
    let report = match crate::device::parse_device(&args.model.device)? {
        None => node_on::<NdArray<f32>>(
            &config,
            args,
            &session_config,
            Default::default(),
            &shutdown,
        )?,
        #[cfg(feature = "cuda")]
        Some(index) => {
            let device = crate::device::cuda_device(index)?;
            node_on::<burn::backend::Cuda<f32, i32>>(
                &config,
                args,
                &session_config,
                device,
                &shutdown,
            )?
        }
        #[cfg(not(feature = "cuda"))]
        Some(index) => return Err(crate::device::no_cuda(index)),
    };
    writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    Ok(())
}

fn node_on<B: Backend>(
    config: &NodeConfig,
    args: &NodeArgs,
    session_config: &transport::session::SessionConfig,
    device: B::Device,
    shutdown: &AtomicBool,
) -> Result<node::NodeReport> {
    let (setup, source) = setup::<B>(config.clone(), args.model.choice(), device)?;
    eprintln!(
        "edgevla node: {source}; actions are {}; listening on {}/{}/**",
        setup.action().name(),
        config.prefix,
        config.robot_id
    );
    let session = transport::session::open(session_config)?;
    Ok(run_node(
        &session,
        &setup,
        shutdown,
        &NodeMonitor::default(),
    )?)
}

/// Runs `edgevla sim`: one JSON line per episode, then a summary line.
pub(crate) fn sim(args: &SimArgs, out: &mut impl Write) -> Result<()> {
    let mut task = task_config(&args.task)?;
    if let Some(action) = args.action {
        task.action = action.into();
    }
    let mut options = SimOptions::new(&args.robot_id, task, args.episodes);
    options.prefix.clone_from(&args.prefix);
    options.first_seed = args.seed;
    options.mode = args.mode;
    options.jpeg_quality = args.jpeg_quality;
    options.action_timeout = Duration::try_from_secs_f64(args.action_timeout)
        .context("--action-timeout must be a non-negative number of seconds")?;
    options.wait_for_node = Duration::try_from_secs_f64(args.wait_for_node)
        .context("--wait-for-node must be a non-negative number of seconds")?;
    if args.mode == SimMode::RealTime {
        options.start_ns = None;
    }
    let session = transport::session::open(&args.zenoh.session_config()?)?;
    let shutdown = shutdown_flag()?;
    let clock = transport::clock::SystemClock::new();
    let mut lines = Vec::new();
    let report = run_sim(
        &session,
        &options,
        &clock,
        &shutdown,
        &mut |_, _| {},
        &mut |e| {
            if let Ok(line) = serde_json::to_string(e) {
                eprintln!("{line}");
                lines.push(line);
            }
        },
    )?;
    for line in &lines {
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "{}",
        serde_json::json!({
            "episodes": report.episodes.len(),
            "successes": report.successes(),
            "frames": report.frames,
            "actions_received": report.actions_received,
        })
    )?;
    Ok(())
}

/// Runs `edgevla demo`.
pub(crate) fn demo(args: &DemoArgs, out: &mut impl Write) -> Result<()> {
    let config = NodeConfig::load(&args.model.config)?;
    let shutdown = shutdown_flag()?;
    match crate::device::parse_device(&args.model.device)? {
        None => demo_on::<NdArray<f32>>(config, args, Default::default(), &shutdown, out),
        #[cfg(feature = "cuda")]
        Some(index) => {
            let device = crate::device::cuda_device(index)?;
            demo_on::<burn::backend::Cuda<f32, i32>>(config, args, device, &shutdown, out)
        }
        #[cfg(not(feature = "cuda"))]
        Some(index) => Err(crate::device::no_cuda(index)),
    }
}

fn demo_on<B: Backend>(
    mut config: NodeConfig,
    args: &DemoArgs,
    device: B::Device,
    shutdown: &AtomicBool,
    out: &mut impl Write,
) -> Result<()> {
    if let Some(path) = &args.replay {
        let pace = match args.rate.as_str() {
            "step" => {
                config.clock = ClockMode::Joints;
                Pace::Stepped
            }
            rate => Pace::Rate(rate.parse::<Rate>()?),
        };
        let (setup, source) = setup::<B>(config, args.model.choice(), device)?;
        eprintln!("edgevla demo --replay: {source}");
        let recording = read_mcap(path)?;
        let outcome = replay_through_node(
            &setup,
            recording,
            &Remap::parse(&args.remap)?,
            pace,
            shutdown,
        )?;
        let digest = fnv1a(outcome.actions.iter().flatten().copied());
        let json = serde_json::json!({
            "model": source,
            "published": outcome.published,
            "actions": outcome.actions.len(),
            "actions_fnv1a64": format!("{digest:016x}"),
            "action_timeouts": outcome.action_timeouts,
            "seconds": outcome.seconds,
            "node": outcome.node,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        return Ok(());
    }
    config.clock = match args.mode {
        SimMode::LockStep => ClockMode::Joints,
        SimMode::RealTime => ClockMode::Source,
    };
    let mut sim = SimOptions::new(&config.robot_id, task_config(&args.task)?, args.episodes);
    sim.prefix.clone_from(&config.prefix);
    sim.first_seed = args.seed;
    sim.mode = args.mode;
    if args.mode == SimMode::RealTime {
        sim.start_ns = None;
    }
    let (setup, source) = setup::<B>(config, args.model.choice(), device)?;
    node::checkpoint::fit_task_to_model(
        setup.model.config(),
        setup.trained_task.as_ref(),
        &mut sim.task,
    )
    .with_context(|| format!("--task {}", args.task))?;
    if source.starts_with("UNTRAINED") {
        tracing::warn!("{source}");
        eprintln!("warning: {source}; success will be at chance level or below");
    }
    // The node's cache as frame-steps, for each episode's `cue_evicted` (the capacity its
    // stream's cache gets, computed without allocating one).
    let c = setup.model.config();
    let kv = setup.config.kv_cache.unwrap_or(c.kv_cache);
    let layout = runtime::kv::KvLayout {
        dtype: kv.dtype,
        ..c.kv_layout()
    };
    sim.cache_frames = Some(CacheFrames {
        capacity: runtime::kv::KvCache::capacity_for(
            &layout,
            kv.budget_bytes,
            c.max_cached_tokens(),
        ),
        frame_tokens: c.tokens_per_step(),
        max_frames: c.memory.as_ref().map_or(usize::MAX, |m| m.window_steps),
    });
    let total = args.episodes * sim.task.episode_steps as u64;
    let mut bar = crate::progress::bar(total, "demo", args.quiet);
    let outcome = run_demo(
        &setup,
        &source,
        &sim,
        args.record.as_deref(),
        shutdown,
        &mut |p| {
            let n = &p.node;
            bar.step(
                p.sim_steps,
                &format!(
                    "ep {}/{} ok {} | model {:.0} ms (p50 {:.0}) | cache {:.2}/{:.2} MiB, {} frames | drops {}",
                    p.episodes_done,
                    args.episodes,
                    p.successes,
                    n.latency.model.last_ms,
                    n.latency.model.p50_ms,
                    n.cache.bytes as f64 / 1048576.0,
                    n.cache.budget as f64 / 1048576.0,
                    n.cache.frames,
                    n.input.subscriber.dropped + n.input.steps_superseded,
                ),
            );
        },
    )?;
    bar.finish();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&outcome)?)?;
    } else {
        write!(out, "{}", summary_table(&outcome))?;
        if let (Some(path), Some(n)) = (&args.record, outcome.recorded) {
            writeln!(out, "recorded {n} messages to {}", path.display())?;
        }
    }
    Ok(())
}

/// FNV-1a 64 of a byte stream (a stable digest for comparing replays; the `fnv` crate's
/// hasher, one byte at a time).
pub(crate) fn fnv1a(bytes: impl Iterator<Item = u8>) -> u64 {
    use std::hash::Hasher;
    let mut hasher = fnv::FnvHasher::default();
    for b in bytes {
        hasher.write_u8(b);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    /// FNV-1a 64's published test vectors (the empty string, "a", "foobar").
    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(super::fnv1a("".bytes()), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::fnv1a("a".bytes()), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(super::fnv1a("foobar".bytes()), 0x8594_4171_f739_67e8);
    }
}
