//! `edgevla kv-plan` (KV-cache memory planner) and `edgevla export` (HuggingFace export).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use node::checkpoint::{
    apply_rope_preset, load_model_config, model_preprocess_fits, write_preprocess,
};
use runtime::kv::{KvDtype, KvLayout};
use runtime::model::VlaConfig;

/// Arguments of `edgevla kv-plan`.
#[derive(Debug, Args)]
pub struct KvPlanArgs {
    /// Transformer layers (or take the sizes from --model).
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub layers: Option<usize>,
    /// Key/value heads per layer.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub kv_heads: Option<usize>,
    /// Head dimension.
    #[arg(long, required_unless_present = "model", conflicts_with = "model")]
    pub head_dim: Option<usize>,
    /// Cached tokens to size (default with --model: the most the cache may hold, the context
    /// length less the readouts; otherwise required unless --budget is given).
    #[arg(long, conflicts_with = "frames")]
    pub tokens: Option<u64>,
    /// A model config (path, or a shipped name such as `edge`).
    #[arg(long, value_name = "CONFIG")]
    pub model: Option<String>,
    /// Frame-steps to size with --model: the instruction sinks plus FRAMES frame-steps.
    #[arg(long, requires = "model")]
    pub frames: Option<u64>,
    /// Storage format: f32, f16, bf16, int8 or fp8 (default: all, in the table; the model's
    /// configured format with --json and --model).
    #[arg(long)]
    pub dtype: Option<KvDtype>,
    /// The inverse question: how many tokens (and frame-steps, with --model) fit BYTES.
    #[arg(long, value_name = "BYTES")]
    pub budget: Option<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What the plan is about: the layout minus the dtype, and the model if one was given.
struct Plan {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    model: Option<VlaConfig>,
}

impl Plan {
    fn layout(&self, dtype: KvDtype) -> KvLayout {
        KvLayout {
            layers: self.layers,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            dtype,
        }
    }
}

pub(crate) fn kv_plan(args: &KvPlanArgs, out: &mut impl Write) -> Result<()> {
    let plan = match &args.model {
        Some(name) => {
            let c = load_model_config(name)?;
            Plan {
                layers: c.n_layers,
                kv_heads: c.n_kv_heads,
                head_dim: c.head_dim(),
                model: Some(c),
            }
        }
        None => match (args.layers, args.kv_heads, args.head_dim) {
            (Some(layers), Some(kv_heads), Some(head_dim)) => Plan {
                layers,
                kv_heads,
                head_dim,
                model: None,
            },
            _ => bail!("give --layers, --kv-heads and --head-dim, or --model"),
        },
    };
    let dtypes: Vec<KvDtype> = match (args.dtype, &plan.model) {
        (Some(d), _) => vec![d],
        (None, Some(c)) if args.json => vec![c.kv_cache.dtype],
        (None, _) if args.json => bail!("--json needs --dtype (or --model, whose format is used)"),
        (None, _) => KvDtype::ALL.to_vec(),
    };
    // A format the user asked for must fit; in the all-formats table, the ones that do not
    // fit this head size are left out with a note.
    let mut skipped = Vec::new();
    let dtypes: Vec<KvDtype> = if args.dtype.is_some() || args.json {
        for &dtype in &dtypes {
            plan.layout(dtype).validate()?;
        }
        dtypes
    } else {
        let mut fitting = Vec::new();
        for dtype in dtypes {
            match plan.layout(dtype).validate() {
                Ok(()) => fitting.push(dtype),
                Err(e) => skipped.push(format!("{dtype}: {e}")),
            }
        }
        if fitting.is_empty() {
            bail!("no storage format fits: {}", skipped.join("; "));
        }
        fitting
    };
    if let Some(budget) = args.budget {
        return write_budget(&plan, &dtypes, budget, args.json, out);
    }
    let tokens = match (args.tokens, args.frames, &plan.model) {
        (Some(t), _, _) => t,
        (None, Some(f), Some(c)) => f
            .checked_mul(c.tokens_per_step() as u64)
            .and_then(|t| t.checked_add(c.max_sink_tokens() as u64))
            .with_context(|| format!("{f} frame-steps overflow a 64-bit token count"))?,
        (None, None, Some(c)) => c.max_cached_tokens() as u64,
        (None, _, None) => bail!("give --tokens (or --model with --frames, or --budget)"),
    };
    for &dtype in &dtypes {
        if plan.layout(dtype).checked_total_bytes(tokens).is_none() {
            bail!("{tokens} tokens of {dtype} overflow a 64-bit byte count");
        }
    }
    if args.json {
        let layout = plan.layout(dtypes[0]);
        let json = serde_json::json!({
            "bytes_per_token": layout.bytes_per_token(),
            "total_bytes": layout.total_bytes(tokens),
            "scale_bytes": layout.scale_bytes_per_token() * tokens,
        });
        writeln!(out, "{json}")?;
        return Ok(());
    }
    writeln!(
        out,
        "KV cache for {} layers x {} KV heads x head_dim {}, {tokens} tokens{}",
        plan.layers,
        plan.kv_heads,
        plan.head_dim,
        plan.model.as_ref().map_or(String::new(), |c| format!(
            " (instruction {} + frame-steps of {} tokens)",
            c.max_sink_tokens(),
            c.tokens_per_step()
        ))
    )?;
    writeln!(
        out,
        "{:<6} {:>16} {:>18} {:>20} {:>16}",
        "dtype", "bytes/token", "scale bytes/token", "total bytes", "total"
    )?;
    for dtype in dtypes {
        let layout = plan.layout(dtype);
        let total = layout.total_bytes(tokens);
        writeln!(
            out,
            "{:<6} {:>16} {:>18} {:>20} {:>16}",
            dtype.name(),
            layout.bytes_per_token(),
            layout.scale_bytes_per_token(),
            total,
            human_bytes(total)
        )?;
    }
    for note in skipped {
        writeln!(out, "(not shown: {note})")?;
    }
    Ok(())
}

fn write_budget(
    plan: &Plan,
    dtypes: &[KvDtype],
    budget: u64,
    json: bool,
    out: &mut impl Write,
) -> Result<()> {
    let frames = |tokens: u64| {
        plan.model.as_ref().map(|c| {
            let sinks = c.max_sink_tokens() as u64;
            let tokens = tokens.min(c.max_cached_tokens() as u64);
            tokens.saturating_sub(sinks) / c.tokens_per_step() as u64
        })
    };
    if json {
        let layout = plan.layout(dtypes[0]);
        let tokens = layout.tokens_for_budget(budget);
        let json = serde_json::json!({
            "bytes_per_token": layout.bytes_per_token(),
            "tokens": tokens,
            "frames": frames(tokens),
        });
        writeln!(out, "{json}")?;
        return Ok(());
    }
    writeln!(
        out,
        "What fits in {budget} bytes ({}):",
        human_bytes(budget)
    )?;
    writeln!(
        out,
        "{:<6} {:>16} {:>12} {:>12}",
        "dtype", "bytes/token", "tokens", "frame-steps"
    )?;
    for &dtype in dtypes {
        let layout = plan.layout(dtype);
        let tokens = layout.tokens_for_budget(budget);
        let f = frames(tokens).map_or_else(|| "-".to_string(), |f| f.to_string());
        writeln!(
            out,
            "{:<6} {:>16} {:>12} {:>12}",
            dtype.name(),
            layout.bytes_per_token(),
            tokens,
            f
        )?;
    }
    if plan.model.is_some() {
        writeln!(
            out,
            "(frame-steps: after the instruction sinks, capped by the model's context length)"
        )?;
    }
    Ok(())
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Arguments of `edgevla export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Model config (path, or a shipped name such as `edge`).
    #[arg(long, default_value = "edge")]
    pub model: String,
    /// Checkpoint folder written by the trainer (default: a seeded random initialization).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Replace the model's RoPE with a preset from configs/rope/ (e.g. yarn-4x).
    #[arg(long)]
    pub rope: Option<String>,
    /// Seed for the random initialization (without --checkpoint).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Standard deviation of the random initialization (without --checkpoint).
    #[arg(long, default_value_t = 0.02)]
    pub init_std: f64,
    /// Also write parity.safetensors: random inputs_embeds, position_ids and this model's
    /// backbone output, for tools/hf_parity.py. The value is the number of tokens.
    #[arg(long, value_name = "TOKENS")]
    pub parity_tokens: Option<usize>,
    /// Output folder (created).
    #[arg(long)]
    pub out: PathBuf,
}

pub(crate) fn export(args: &ExportArgs, out: &mut impl Write) -> Result<()> {
    use burn::backend::NdArray;
    use burn::tensor::backend::Backend;
    type B = NdArray<f32>;
    let device = Default::default();
    if !(args.init_std.is_finite() && args.init_std >= 0.0) {
        bail!(
            "--init-std must be a finite number ≥ 0, got {}",
            args.init_std
        );
    }
    let mut config = load_model_config(&args.model)?;
    if let Some(name) = &args.rope {
        apply_rope_preset(&mut config, name)?;
    }
    let model = match &args.checkpoint {
        Some(dir) => runtime::checkpoint::load::<B>(dir, Some(&config), &device)?,
        None => {
            B::seed(&device, args.seed);
            config.init_with_std::<B>(args.init_std, &device)
        }
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let written = runtime::checkpoint::export_hf(&model, &args.out)?;
    for path in &written {
        writeln!(out, "wrote {}", path.display())?;
    }
    if let Some(tokens) = args.parity_tokens {
        let path = runtime::checkpoint::write_parity_sample(
            &model, tokens, args.seed, &args.out, &device,
        )?;
        writeln!(out, "wrote {}", path.display())?;
    }
    Ok(())
}

/// Arguments of `edgevla import-weights`.
#[derive(Debug, Args)]
pub struct ImportWeightsArgs {
    /// HuggingFace folder with `config.json` and `model.safetensors` (Llama architecture, f32),
    /// as `transformers` `save_pretrained` or `edgevla export` writes it.
    #[arg(long, value_name = "DIR")]
    pub hf: PathBuf,
    /// Checkpoint whose other weights (patch, camera, proprio and readout embeddings, the
    /// heads, a memory token; the instruction embedding unless the file has edgevla's byte
    /// vocabulary) the new checkpoint keeps. Its backbone sizes must be the file's.
    #[arg(long, value_name = "DIR", conflicts_with = "model")]
    pub base: Option<PathBuf>,
    /// Without --base: the model config (path or shipped name) whose other parts are drawn
    /// fresh (seeded); its backbone sizes and RoPE are replaced by the file's.
    #[arg(long, default_value = "edge")]
    pub model: String,
    /// Seed of the fresh initialization (without --base).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Checkpoint folder to write (config.toml + weights.mpk).
    #[arg(long)]
    pub out: PathBuf,
}

pub(crate) fn import_weights(args: &ImportWeightsArgs, out: &mut impl Write) -> Result<()> {
    use burn::backend::NdArray;
    use burn::tensor::backend::Backend;
    type B = NdArray<f32>;
    let device = Default::default();
    let (base_config, base) = match &args.base {
        Some(dir) => {
            let m = runtime::checkpoint::load::<B>(dir, None, &device)
                .with_context(|| format!("--base {}", dir.display()))?;
            (m.config().clone(), Some(m))
        }
        None => (load_model_config(&args.model)?, None),
    };
    let config = runtime::hf_import::read_hf_config(&args.hf, &base_config)
        .with_context(|| format!("--hf {}", args.hf.display()))?;
    B::seed(&device, args.seed);
    let mut model = config.init::<B>(&device);
    let others = match (args.base.as_deref(), base) {
        (Some(dir), Some(m)) => {
            let c = m.config();
            let sizes = |c: &VlaConfig| (c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_dim);
            if sizes(c) != sizes(&config) {
                bail!(
                    "--base {}: backbone (d_model, layers, heads, KV heads, ffn) {:?} but the HuggingFace model has {:?}",
                    dir.display(),
                    sizes(c),
                    sizes(&config)
                );
            }
            model.patch_embed = m.patch_embed;
            model.camera_embed = m.camera_embed;
            model.patch_pos_embed = m.patch_pos_embed;
            model.missing_embed = m.missing_embed;
            model.proprio_embed = m.proprio_embed;
            model.instruction_embed = m.instruction_embed;
            model.readout = m.readout;
            model.memory_token = m.memory_token;
            model.action_head = m.action_head;
            model.cue_head = m.cue_head;
            format!("taken from {}", dir.display())
        }
        _ => format!(
            "initialized (seed {}, model config {})",
            args.seed, args.model
        ),
    };
    let (model, report) = runtime::hf_import::load_hf_weights(&args.hf, model, &device)
        .with_context(|| format!("--hf {}", args.hf.display()))?;
    runtime::checkpoint::save(&model, &args.out)?;
    // What the trainer feeds its models, when it fits this one's patches (a checkpoint of other
    // patch sizes gets no file: whatever runs it must then be told its preprocessing).
    let preprocess = sim::training_preprocess();
    if model_preprocess_fits(&preprocess, model.config()) {
        write_preprocess(&args.out, &preprocess)?;
    }
    let c = model.config();
    writeln!(
        out,
        "backbone from {}: {} layers, d_model {}, {} heads / {} KV heads, ffn {}, RoPE {} ({} tensors)",
        args.hf.display(),
        c.n_layers,
        c.d_model,
        c.n_heads,
        c.n_kv_heads,
        c.ffn_dim,
        c.rope.scaling.rope_type(),
        report.loaded.len()
    )?;
    let instruction = if report.instruction_embedding_from_file {
        "from the file (model.embed_tokens.weight)".to_string()
    } else {
        others.clone()
    };
    writeln!(out, "instruction embedding: {instruction}")?;
    writeln!(
        out,
        "patch, camera, proprio and readout embeddings, action/cue heads{}: {others}",
        if c.memory.is_some() {
            ", memory token"
        } else {
            ""
        }
    )?;
    for (name, why) in &report.unused {
        writeln!(out, "not used: {name} ({why})")?;
    }
    writeln!(out, "checkpoint {}", args.out.display())?;
    Ok(())
}
