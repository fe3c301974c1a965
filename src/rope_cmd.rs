//! `edgevla rope`: RoPE frequencies for a spec, as JSON or as a table.

use std::io::{Read, Write};

use anyhow::{Context, Result, bail};
use runtime::rope::{RopeFrequencies, RopeSpec};

use crate::cli::RopeArgs;

/// The JSON `edgevla rope` prints, keys in this order.
#[derive(serde::Serialize)]
struct RopeJson<'a> {
    inv_freq: &'a [f64],
    attention_factor: f64,
}

pub(crate) fn run(args: &RopeArgs, out: &mut impl Write) -> Result<()> {
    if args.list_presets {
        for preset in configs::ROPE_PRESETS {
            writeln!(out, "{:<16} {}", preset.name, preset.path)?;
        }
        return Ok(());
    }
    let (text, origin) = match (&args.spec, &args.preset) {
        (Some(path), _) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the spec from standard input")?;
            (text, "standard input".to_string())
        }
        (Some(path), _) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("reading spec {}", path.display()))?,
            path.display().to_string(),
        ),
        (None, Some(name)) => {
            let Some(preset) = configs::rope_preset(name) else {
                let names: Vec<_> = configs::ROPE_PRESETS.iter().map(|p| p.name).collect();
                bail!(
                    "unknown preset `{name}`; shipped presets: {}",
                    names.join(", ")
                );
            };
            (preset.text.to_string(), preset.path.to_string())
        }
        (None, None) => bail!("give --spec FILE (or - for stdin) or --preset NAME; see --help"),
    };
    let mut spec = RopeSpec::parse(&text).with_context(|| format!("in spec from {origin}"))?;
    if args.seq_len.is_some() {
        spec.seq_len = args.seq_len;
    }
    let freqs = spec.frequencies();
    if args.table {
        write_table(&spec, &freqs, out)?;
    } else {
        let json = serde_json::to_string(&RopeJson {
            inv_freq: &freqs.inv_freq,
            attention_factor: freqs.attention_factor,
        })?;
        writeln!(out, "{json}")?;
    }
    Ok(())
}

fn write_table(spec: &RopeSpec, freqs: &RopeFrequencies, out: &mut impl Write) -> Result<()> {
    let cfg = &spec.config;
    let seq = spec
        .seq_len
        .map_or_else(|| "none (initialization)".to_string(), |s| s.to_string());
    writeln!(
        out,
        "rope_type {}  head_dim {}  rotary_dim {}  rope_theta {}  factor {}  max_position_embeddings {}  seq_len {}",
        cfg.scaling.rope_type(),
        cfg.head_dim,
        cfg.rotary_dim(),
        cfg.rope_theta,
        cfg.factor(),
        cfg.max_position_embeddings,
        seq
    )?;
    writeln!(out, "attention_factor {:.9}", freqs.attention_factor)?;
    writeln!(out)?;
    writeln!(
        out,
        "{:>4}  {:>14}  {:>14}  {:>16}  {:>12}",
        "pair", "inv_freq", "base inv_freq", "wavelength (tok)", "interp weight"
    )?;
    let weights = cfg.interpolation_weights(freqs);
    for (i, ((f, b), w)) in freqs
        .inv_freq
        .iter()
        .zip(cfg.base_inv_freq())
        .zip(weights)
        .enumerate()
    {
        let wavelength = std::f64::consts::TAU / f;
        writeln!(
            out,
            "{i:>4}  {f:>14.6e}  {b:>14.6e}  {wavelength:>16.1}  {w:>12.4}"
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "interp weight: 0 = frequency kept (extrapolation), 1 = divided by the full factor (interpolation)"
    )?;
    Ok(())
}
