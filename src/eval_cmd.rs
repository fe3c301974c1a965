//! `edgevla eval`: the long-context needle sweep (`eval::needle`) for a checkpoint or a
//! reference policy, with CSV / markdown / PNG outputs.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::backend::NdArray;
use burn::tensor::backend::Backend;
use clap::Args;
use eval::needle::report::{self, ReportMeta};
use eval::needle::sweep::{
    Budget, Design, HistoryBlindFactory, ModelFactory, OracleFactory, PolicyFactory, Recall,
    RopeMethod, SweepSpec, run_sweep,
};
use runtime::kv::KvDtype;
use sim::TaskConfig;

use node::checkpoint::read_named;

/// Arguments of `edgevla eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Checkpoint folder (config.toml + weights.mpk), as `edgevla train` writes it.
    #[arg(long, default_value = "models/edge-long-xl")]
    pub model: PathBuf,
    /// What drives the simulator: `model` (the checkpoint), or a reference policy that checks
    /// the harness: `oracle` (told the cue; must score 100%) or `blind` (no memory; scores at
    /// chance, 1 / n_targets). Reference policies need no checkpoint.
    #[arg(long, default_value = "model", value_parser = ["model", "oracle", "blind"])]
    pub policy: String,
    /// Task config (configs/task/*.toml, or a shipped name such as `memory`); the default is
    /// the shipped model's training task (640-step episodes; `memory-short-needle` goes with
    /// `models/edge-memory`).
    #[arg(long, default_value = "memory-long-train-xl")]
    pub task: String,
    /// Output folder: cells.csv, results.md, heatmap_*.png.
    #[arg(long, default_value = "out/eval")]
    pub out: PathBuf,
    /// A small sweep (lengths 1x and 2x the training length, depths 0/50/100%, 2 episodes,
    /// methods yarn and none, KV f32 and int8, budgets full and model); any list given
    /// explicitly still wins.
    #[arg(long)]
    pub quick: bool,
    /// Episode lengths in frame-steps (history + go phase), each at least the training length
    /// [default: the training length x 1,2,4,8,16].
    #[arg(long, value_delimiter = ',')]
    pub lengths: Option<Vec<usize>>,
    /// Cue depths, fractions of the history in [0, 1] [default: 0,0.25,0.5,0.75,1].
    #[arg(long, value_delimiter = ',')]
    pub depths: Option<Vec<f64>>,
    /// Episodes per (configuration, length, depth) cell [default: 20; --quick 2].
    #[arg(long)]
    pub episodes: Option<usize>,
    /// Sweep seed: episode seeds derive from it, the same in every configuration.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// RoPE methods, the first is the baseline: trained (the checkpoint's own), none, pi,
    /// ntk, dynamic, yarn; each built at the factor the length needs
    /// [default: yarn,trained,none,pi,ntk,dynamic].
    #[arg(long, value_delimiter = ',')]
    pub methods: Option<Vec<RopeMethod>>,
    /// KV cache formats, the first is the baseline: f32, f16, bf16, int8, fp8
    /// [default: f32,f16,int8,fp8].
    #[arg(long = "kv-dtypes", value_delimiter = ',')]
    pub kv_dtypes: Option<Vec<KvDtype>>,
    /// KV budgets, the first is the baseline: full (keep every frame-step), model (the
    /// checkpoint's kv_cache.budget_bytes), window:N (sinks + N frame-steps), or bytes
    /// [default: full,model].
    #[arg(long, value_delimiter = ',')]
    pub budgets: Option<Vec<Budget>>,
    /// Recall of evicted frame-steps by the memory bank (models with a memory), the first is
    /// the baseline: on (the checkpoint's bank), off (the bank no longer than the KV window:
    /// the ablation of the recall mechanism) [default: on].
    #[arg(long, value_delimiter = ',')]
    pub recall: Option<Vec<Recall>>,
    /// Memory tokens the memory bank keeps, instead of the checkpoint's `memory.bank_steps`
    /// (models with a memory): a run-time bound, for lengths past the trained bank.
    #[arg(long, value_name = "N")]
    pub bank_steps: Option<usize>,
    /// Which memory token a full bank evicts, instead of the checkpoint's
    /// `memory.bank_eviction`: oldest (a FIFO) or read (the least read by the readouts, all
    /// but the newest --bank-recent-steps).
    #[arg(long, value_enum)]
    pub bank_eviction: Option<BankEvictionArg>,
    /// With eviction by reads (the flag's or the checkpoint's): the newest memory tokens always kept [default: the
    /// checkpoint's `memory.bank_recent_steps`, else a tenth of the bank].
    #[arg(long, value_name = "N")]
    pub bank_recent_steps: Option<usize>,
    /// axes: vary one of method / dtype / budget / recall at a time around the baseline;
    /// grid: every combination.
    #[arg(long, default_value = "axes")]
    pub design: Design,
    /// Training length in frame-steps [default: the task's episode_steps].
    #[arg(long)]
    pub train_length: Option<usize>,
    /// Original context (tokens) that RoPE factors are relative to [default: the checkpoint
    /// RoPE's original_max_position_embeddings, else its max_position_embeddings].
    #[arg(long)]
    pub original_context: Option<usize>,
    /// Where the model runs: cpu, or cuda / cuda:N (needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Episodes run in parallel (each thread holds its own model copy and KV cache).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// No progress bar (logs a line every 10% instead).
    #[arg(long)]
    pub quiet: bool,
}

/// The sweep the arguments ask for, defaults filled in.
fn spec(args: &EvalArgs, task: &TaskConfig) -> SweepSpec {
    let train_length = args.train_length.unwrap_or(task.episode_steps);
    let quick = args.quick;
    let multiples: &[usize] = if quick { &[1, 2] } else { &[1, 2, 4, 8, 16] };
    SweepSpec {
        lengths: args
            .lengths
            .clone()
            .unwrap_or_else(|| multiples.iter().map(|m| m * train_length).collect()),
        depths: args.depths.clone().unwrap_or_else(|| {
            if quick {
                vec![0.0, 0.5, 1.0]
            } else {
                vec![0.0, 0.25, 0.5, 0.75, 1.0]
            }
        }),
        episodes: args.episodes.unwrap_or(if quick { 2 } else { 20 }),
        seed: args.seed,
        methods: args.methods.clone().unwrap_or_else(|| {
            if quick {
                vec![RopeMethod::Yarn, RopeMethod::None]
            } else {
                vec![
                    RopeMethod::Yarn,
                    RopeMethod::Trained,
                    RopeMethod::None,
                    RopeMethod::Pi,
                    RopeMethod::Ntk,
                    RopeMethod::Dynamic,
                ]
            }
        }),
        dtypes: args.kv_dtypes.clone().unwrap_or_else(|| {
            if quick {
                vec![KvDtype::F32, KvDtype::Int8]
            } else {
                vec![KvDtype::F32, KvDtype::F16, KvDtype::Int8, KvDtype::Fp8]
            }
        }),
        budgets: args
            .budgets
            .clone()
            .unwrap_or_else(|| vec![Budget::Full, Budget::Model]),
        recalls: args.recall.clone().unwrap_or_else(|| vec![Recall::On]),
        design: args.design,
        train_length,
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The command line that reproduces `spec` exactly (every default spelled out).
fn command_line(args: &EvalArgs, spec: &SweepSpec, original: Option<usize>) -> String {
    let mut cmd = format!(
        "edgevla eval --policy {} --model {} --task {} --out {} --lengths {} --depths {} --episodes {} --seed {} --methods {} --kv-dtypes {} --budgets {} --recall {} --design {} --train-length {}",
        args.policy,
        args.model.display(),
        args.task,
        args.out.display(),
        join(&spec.lengths),
        join(&spec.depths),
        spec.episodes,
        spec.seed,
        join(&spec.methods),
        join(&spec.dtypes),
        join(&spec.budgets),
        join(&spec.recalls),
        match spec.design {
            Design::Axes => "axes",
            Design::Grid => "grid",
        },
        spec.train_length,
    );
    if let Some(o) = original {
        cmd.push_str(&format!(" --original-context {o}"));
    }
    if let Some(steps) = args.bank_steps {
        cmd.push_str(&format!(" --bank-steps {steps}"));
    }
    if let Some(eviction) = args.bank_eviction {
        cmd.push_str(&format!(" --bank-eviction {}", eviction.name()));
    }
    if let Some(recent) = args.bank_recent_steps {
        cmd.push_str(&format!(" --bank-recent-steps {recent}"));
    }
    cmd.push_str(&format!(" --device {} --jobs {}", args.device, args.jobs));
    cmd
}

pub(crate) fn eval(args: &EvalArgs, out: &mut impl Write) -> Result<()> {
    match crate::device::parse_device(&args.device)? {
        None => run::<NdArray<f32>>(args, Default::default(), out),
        Some(index) => eval_cuda(args, index, out),
    }
}

#[cfg(feature = "cuda")]
fn eval_cuda(args: &EvalArgs, index: usize, out: &mut impl Write) -> Result<()> {
    use burn::backend::Cuda;
    let device = crate::device::cuda_device(index)?;
    run::<Cuda<f32, i32>>(args, device, out)
}

#[cfg(not(feature = "cuda"))]
fn eval_cuda(_args: &EvalArgs, index: usize, _out: &mut impl Write) -> Result<()> {
    Err(crate::device::no_cuda(index))
}

fn run<B: Backend>(args: &EvalArgs, device: B::Device, out: &mut impl Write) -> Result<()>
where
    B::Device: Sync,
{
    let mut task =
        TaskConfig::from_toml(&read_named(&args.task, configs::task_preset(&args.task))?)
            .with_context(|| format!("task config {}", args.task))?;
    let spec = spec(args, &task);
    spec.validate(&task)?;
    let factory: Box<dyn PolicyFactory>;
    let (policy, original) = match args.policy.as_str() {
        "oracle" => {
            factory = Box::new(OracleFactory);
            ("oracle (told the cue)".to_string(), None)
        }
        "blind" => {
            factory = Box::new(HistoryBlindFactory);
            ("history-blind (no memory)".to_string(), None)
        }
        _ => {
            let Some((dir, _)) = node::checkpoint::find_checkpoint(&args.model) else {
                bail!(
                    "--model {}: no checkpoint there (config.toml + weights.mpk, as `edgevla train --out` writes)",
                    args.model.display()
                );
            };
            let model = runtime::checkpoint::load::<B>(&dir, None, &device)
                .with_context(|| format!("loading {}", dir.display()))?;
            let c = model.config();
            let cameras = sim::Task::new(&task)?.cameras().len();
            if c.n_cameras != cameras {
                bail!(
                    "--model {}: the model takes {} cameras, the task's rig `{}` has {cameras}",
                    args.model.display(),
                    c.n_cameras,
                    task.rig
                );
            }
            let mut description = format!(
                "checkpoint {} ({} layers, d_model {}, RoPE {} x{}, cue head {})",
                args.model.display(),
                c.n_layers,
                c.d_model,
                c.rope.scaling.rope_type(),
                c.rope.factor(),
                if c.cue_classes > 0 { "yes" } else { "no" }
            );
            let trained_task = node::checkpoint::model_task(Some(&dir))?;
            node::checkpoint::fit_task_to_model(c, trained_task.as_ref(), &mut task)
                .with_context(|| format!("--task {}", args.task))?;
            let preprocess = node::checkpoint::model_preprocess(Some(&dir), c)?;
            let mut f = ModelFactory::new(model, args.original_context, preprocess, &device);
            let bank = runtime::model::MemoryOverride {
                bank_steps: args.bank_steps,
                bank_eviction: args.bank_eviction.map(Into::into),
                bank_recent_steps: args.bank_recent_steps,
            };
            if bank != runtime::model::MemoryOverride::default() {
                f = f
                    .with_memory_settings(&bank)
                    .context("--bank-steps / --bank-eviction / --bank-recent-steps")?;
            }
            if let Some(m) = &f.trained_config().memory {
                let eviction = match m.bank_eviction {
                    runtime::model::BankEviction::Oldest => "the oldest".to_string(),
                    runtime::model::BankEviction::Read => {
                        format!("the least read (the newest {} kept)", m.recent_steps())
                    }
                };
                description.push_str(&format!(
                    "; memory bank of {} memory tokens, evicting {eviction}",
                    m.bank_steps
                ));
            }
            let original = f.original();
            factory = Box::new(f);
            (description, Some(original))
        }
    };
    let command = command_line(args, &spec, original);
    let configs = spec.configs()?;
    writeln!(out, "command: {command}")?;
    writeln!(out, "seed: {}", spec.seed)?;
    writeln!(
        out,
        "sweep: {} configurations x {} lengths x {} depths x {} episodes = {} episodes",
        configs.len(),
        spec.lengths.len(),
        spec.depths.len(),
        spec.episodes,
        configs.len() * spec.lengths.len() * spec.depths.len() * spec.episodes
    )?;
    out.flush()?;

    let started = Instant::now();
    let mut bar: Option<crate::progress::Progress> = None;
    let cells = run_sweep(&spec, &task, factory.as_ref(), args.jobs, &mut |p| {
        let bar = bar.get_or_insert_with(|| {
            crate::progress::bar(p.steps_total, "eval (frame-steps)", args.quiet)
        });
        bar.step(
            p.steps_done,
            &format!(
                "{}/{} episodes, {} successes",
                p.episodes_done, p.episodes_total, p.successes
            ),
        );
    })?;
    if let Some(bar) = &bar {
        bar.finish();
    }
    let seconds = started.elapsed().as_secs_f64();
    let meta = ReportMeta {
        command,
        seed: spec.seed,
        policy,
        train_length: spec.train_length,
        original_context: original,
        baseline: spec.baseline()?,
        seconds,
    };
    let written = report::write_all(&args.out, &cells, &meta)?;
    writeln!(out, "\nsuccess per configuration (all lengths and depths):")?;
    for (config, group) in eval::needle::sweep::by_config(&cells) {
        let (k, n) = group
            .iter()
            .fold((0, 0), |(k, n), c| (k + c.successes, n + c.episodes));
        let (lo, hi) = report::wilson(k, n, report::Z95);
        let cue: Option<usize> = group
            .iter()
            .map(|c| c.cue_correct)
            .try_fold(0, |acc, c| c.map(|c| acc + c));
        write!(
            out,
            "  {:<28} {k:>5}/{n:<5} {:>5.1}% [{:.1}, {:.1}]",
            report::config_label(&config),
            100.0 * k as f64 / n.max(1) as f64,
            100.0 * lo,
            100.0 * hi
        )?;
        if let Some(c) = cue {
            write!(
                out,
                "  cue recall {:.1}%",
                100.0 * c as f64 / n.max(1) as f64
            )?;
        }
        writeln!(out)?;
    }
    writeln!(out, "\n{:.1} s; wrote:", seconds)?;
    for path in written {
        writeln!(out, "  {}", path.display())?;
    }
    Ok(())
}

/// `--bank-eviction`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BankEvictionArg {
    /// The oldest memory token (a FIFO).
    Oldest,
    /// The least-read memory token, all but the newest kept.
    Read,
}

impl BankEvictionArg {
    fn name(self) -> &'static str {
        match self {
            Self::Oldest => "oldest",
            Self::Read => "read",
        }
    }
}

impl From<BankEvictionArg> for runtime::model::BankEviction {
    fn from(a: BankEvictionArg) -> Self {
        match a {
            BankEvictionArg::Oldest => Self::Oldest,
            BankEvictionArg::Read => Self::Read,
        }
    }
}
