//! Sweep outputs: Wilson intervals, `cells.csv` (every cell), `results.md` (tables), and the
//! heatmaps (one per configuration; cue recall too when the policy names the cue).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::heatmap::{self, Heatmap};
use super::sweep::{Cell, EvalConfig, Recall, by_config};
use crate::error::{Error, Result};

/// z of a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// Wilson score interval of `successes` out of `n` at `z` (`(0, 1)` for `n = 0`).
pub fn wilson(successes: usize, n: usize, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n_f = n as f64;
    let p = successes as f64 / n_f;
    let z2 = z * z;
    let denom = 1.0 + z2 / n_f;
    let centre = (p + z2 / (2.0 * n_f)) / denom;
    let half = z * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The CSV header, in column order.
pub const CSV_HEADER: [&str; 19] = [
    "method",
    "kv_dtype",
    "budget",
    "recall",
    "budget_bytes",
    "cache_frames",
    "bank_steps",
    "length",
    "history",
    "depth",
    "tokens",
    "rope_factor",
    "episodes",
    "successes",
    "success_rate",
    "ci95_low",
    "ci95_high",
    "cue_correct",
    "cue_recall",
];

/// The CSV text of `cells` (one row per cell; empty fields where a value does not apply).
pub fn csv(cells: &[Cell]) -> String {
    let mut out = CSV_HEADER.join(",");
    out.push('\n');
    let opt = |v: Option<String>| v.unwrap_or_default();
    for c in cells {
        let (lo, hi) = wilson(c.successes, c.episodes, Z95);
        let row = [
            c.config.method.name().to_string(),
            c.config.dtype.name().to_string(),
            c.config.budget.label(),
            c.config.recall.name().to_string(),
            opt(c.setup.budget_bytes.map(|b| b.to_string())),
            opt(c.setup.cache_frames.map(|b| b.to_string())),
            opt(c.setup.bank_steps.map(|b| b.to_string())),
            c.length.to_string(),
            c.history.to_string(),
            format!("{}", c.depth),
            opt(c.setup.tokens.map(|b| b.to_string())),
            opt(c.setup.rope_factor.map(|f| format!("{f:.4}"))),
            c.episodes.to_string(),
            c.successes.to_string(),
            format!("{:.4}", c.success_rate()),
            format!("{lo:.4}"),
            format!("{hi:.4}"),
            opt(c.cue_correct.map(|n| n.to_string())),
            opt(c.cue_recall().map(|r| format!("{r:.4}"))),
        ];
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// What the report says about the run.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportMeta {
    /// The exact command that reproduces the run.
    pub command: String,
    /// The sweep seed.
    pub seed: u64,
    /// What was evaluated (checkpoint folder or reference policy).
    pub policy: String,
    /// Training length, frame-steps.
    pub train_length: usize,
    /// The original context RoPE factors are relative to (model policies).
    pub original_context: Option<usize>,
    /// The baseline configuration.
    pub baseline: EvalConfig,
    /// Wall time of the sweep, seconds.
    pub seconds: f64,
}

/// Summed successes, episodes and cue hits of some cells.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Tally {
    successes: usize,
    episodes: usize,
    cue: Option<usize>,
}

impl Tally {
    fn of<'a>(cells: impl IntoIterator<Item = &'a Cell>) -> Self {
        let mut t = Self::default();
        for c in cells {
            t.successes += c.successes;
            t.episodes += c.episodes;
            if let Some(n) = c.cue_correct {
                *t.cue.get_or_insert(0) += n;
            }
        }
        t
    }

    fn rate(&self) -> f64 {
        self.successes as f64 / self.episodes.max(1) as f64
    }

    fn show(&self) -> String {
        if self.episodes == 0 {
            return "-".into();
        }
        let (lo, hi) = wilson(self.successes, self.episodes, Z95);
        format!(
            "{:.0}% [{:.0}, {:.0}] ({}/{})",
            100.0 * self.rate(),
            100.0 * lo,
            100.0 * hi,
            self.successes,
            self.episodes
        )
    }

    fn show_cue(&self) -> String {
        match self.cue {
            Some(k) if self.episodes > 0 => {
                let (lo, hi) = wilson(k, self.episodes, Z95);
                format!(
                    "{:.0}% [{:.0}, {:.0}]",
                    100.0 * k as f64 / self.episodes as f64,
                    100.0 * lo,
                    100.0 * hi
                )
            }
            _ => "-".into(),
        }
    }
}

fn lengths_of(cells: &[Cell]) -> Vec<usize> {
    let mut v: Vec<usize> = cells.iter().map(|c| c.length).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn depths_of(cells: &[Cell]) -> Vec<f64> {
    let mut v: Vec<f64> = Vec::new();
    for c in cells {
        if !v.contains(&c.depth) {
            v.push(c.depth);
        }
    }
    v.sort_by(f64::total_cmp);
    v
}

/// The label of a configuration, `method / dtype / budget`, then ` / recall off` when the
/// recall is off.
pub fn config_label(c: &EvalConfig) -> String {
    let mut label = format!("{} / {} / {}", c.method, c.dtype, c.budget);
    if c.recall == Recall::Off {
        label.push_str(" / recall off");
    }
    label
}

/// The heatmap file name of a configuration (`kind` = `success` or `cue`).
pub fn heatmap_name(c: &EvalConfig, kind: &str) -> String {
    let budget: String = c
        .budget
        .label()
        .chars()
        .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' })
        .collect();
    let recall = if c.recall == Recall::Off {
        "_recall-off"
    } else {
        ""
    };
    format!(
        "heatmap_{kind}_{}_{}_{budget}{recall}.png",
        c.method, c.dtype
    )
}

fn length_header(lengths: &[usize], train_length: usize) -> String {
    lengths
        .iter()
        .map(|&l| {
            if train_length > 0 && l % train_length == 0 {
                format!("{l} ({}x)", l / train_length)
            } else {
                format!("{l}")
            }
        })
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The success table of `rows`, then (when the policy names the cue) their cue-recall table.
fn success_and_cue_tables(
    out: &mut String,
    first: &str,
    rows: &[(String, EvalConfig)],
    cells: &[Cell],
    lengths: &[usize],
    meta: &ReportMeta,
    has_cue: bool,
) {
    table(out, first, rows, cells, lengths, meta, Tally::show);
    if has_cue {
        let _ = writeln!(
            out,
            "Cue recall (the cue head's argmax at the last step):\n"
        );
        table(out, first, rows, cells, lengths, meta, Tally::show_cue);
    }
}

/// One table: a row per configuration of `rows` (label, config), a column per length,
/// cells aggregated over depths with `show`.
fn table(
    out: &mut String,
    first: &str,
    rows: &[(String, EvalConfig)],
    cells: &[Cell],
    lengths: &[usize],
    meta: &ReportMeta,
    show: impl Fn(&Tally) -> String,
) {
    let _ = writeln!(
        out,
        "| {first} | {} | all lengths |",
        length_header(lengths, meta.train_length)
    );
    let _ = writeln!(out, "|---|{}---|", "---|".repeat(lengths.len()));
    for (label, config) in rows {
        let mut line = format!("| {label} |");
        for &l in lengths {
            let t = Tally::of(
                cells
                    .iter()
                    .filter(|c| c.config == *config && c.length == l),
            );
            let _ = write!(line, " {} |", show(&t));
        }
        let all = Tally::of(cells.iter().filter(|c| c.config == *config));
        let _ = write!(line, " {} |", show(&all));
        let _ = writeln!(out, "{line}");
    }
    out.push('\n');
}

/// The markdown report.
pub fn markdown(cells: &[Cell], meta: &ReportMeta) -> String {
    let mut out = String::new();
    let base = meta.baseline;
    let lengths = lengths_of(cells);
    let depths = depths_of(cells);
    let episodes = cells.first().map_or(0, |c| c.episodes);
    let has_cue = cells.iter().any(|c| c.cue_correct.is_some());
    let _ = writeln!(out, "# Needle-in-a-haystack evaluation\n");
    let _ = writeln!(out, "- policy: {}", meta.policy);
    let _ = writeln!(out, "- reproduce: `{}` (seed {})", meta.command, meta.seed);
    let _ = writeln!(
        out,
        "- {episodes} episodes per (configuration, length, depth) cell; the same episode seeds in every configuration (paired); depths {}; training length {} frame-steps{}",
        depths
            .iter()
            .map(|d| format!("{:.0}%", 100.0 * d))
            .collect::<Vec<_>>()
            .join(", "),
        meta.train_length,
        meta.original_context.map_or(String::new(), |o| format!(
            "; RoPE factors relative to an original context of {o} tokens"
        ))
    );
    let _ = writeln!(
        out,
        "- cells: closed-loop success rate [Wilson 95% interval] (successes/episodes), summed over depths; length = frame-steps in the context (history + go phase)"
    );
    let _ = writeln!(out, "- sweep time: {:.1} s\n", meta.seconds);

    let groups = by_config(cells);
    let slice = |pick: &dyn Fn(&EvalConfig) -> bool| -> Vec<(String, EvalConfig)> {
        groups
            .iter()
            .filter(|(c, _)| pick(c))
            .map(|(c, _)| (config_label(c), *c))
            .collect()
    };

    let methods =
        slice(&|c| c.dtype == base.dtype && c.budget == base.budget && c.recall == base.recall);
    let _ = writeln!(
        out,
        "## Success by length x RoPE method (KV {} / budget {})\n",
        base.dtype, base.budget
    );
    success_and_cue_tables(&mut out, "method", &methods, cells, &lengths, meta, has_cue);

    let dtypes =
        slice(&|c| c.method == base.method && c.budget == base.budget && c.recall == base.recall);
    if dtypes.len() > 1 {
        let _ = writeln!(
            out,
            "## KV cache format (RoPE {} / budget {})\n",
            base.method, base.budget
        );
        table(
            &mut out,
            "kv dtype",
            &dtypes,
            cells,
            &lengths,
            meta,
            Tally::show,
        );
        let reference = Tally::of(cells.iter().filter(|c| c.config == dtypes[0].1));
        let _ = writeln!(
            out,
            "Delta vs {} over all cells (paired episodes), success points:\n",
            dtypes[0].1.dtype
        );
        for (label, config) in &dtypes[1..] {
            let t = Tally::of(cells.iter().filter(|c| c.config == *config));
            let mut line = format!(
                "- {label}: {:+.1} points",
                100.0 * (t.rate() - reference.rate())
            );
            if let (Some(a), Some(b)) = (t.cue, reference.cue) {
                let _ = write!(
                    line,
                    ", cue recall {:+.1} points",
                    100.0 * (a as f64 - b as f64) / t.episodes.max(1) as f64
                );
            }
            let _ = writeln!(out, "{line}");
        }
        out.push('\n');
    }

    let budgets =
        slice(&|c| c.method == base.method && c.dtype == base.dtype && c.recall == base.recall);
    if budgets.len() > 1 {
        let _ = writeln!(
            out,
            "## KV budget: eviction (sinks + newest frame-steps) vs keep-everything (RoPE {} / KV {})\n",
            base.method, base.dtype
        );
        table(
            &mut out,
            "budget",
            &budgets,
            cells,
            &lengths,
            meta,
            Tally::show,
        );
        let _ = writeln!(out, "Frame-steps the cache holds at most, per length:\n");
        for (label, config) in &budgets {
            let frames: Vec<String> = lengths
                .iter()
                .map(|&l| {
                    cells
                        .iter()
                        .find(|c| c.config == *config && c.length == l)
                        .and_then(|c| c.setup.cache_frames)
                        .map_or("-".into(), |f| format!("{l}: {f}"))
                })
                .collect();
            let _ = writeln!(out, "- {label}: {}", frames.join(", "));
        }
        out.push('\n');
    }

    let recalls =
        slice(&|c| c.method == base.method && c.dtype == base.dtype && c.budget == base.budget);
    if recalls.len() > 1 {
        let _ = writeln!(
            out,
            "## Recall of evicted frame-steps: memory bank on vs off (off: the bank no longer than the KV window; RoPE {} / KV {} / budget {})\n",
            base.method, base.dtype, base.budget
        );
        success_and_cue_tables(&mut out, "recall", &recalls, cells, &lengths, meta, has_cue);
    }

    // Depth x length for the best method at the baseline dtype and budget.
    if let Some((label, best)) = methods
        .iter()
        .max_by(|a, b| {
            let ta = Tally::of(cells.iter().filter(|c| c.config == a.1)).rate();
            let tb = Tally::of(cells.iter().filter(|c| c.config == b.1)).rate();
            ta.total_cmp(&tb)
        })
        .cloned()
    {
        let _ = writeln!(
            out,
            "## Depth x length, best method ({label})\n\nSuccesses / episodes per cell:\n"
        );
        let _ = writeln!(
            out,
            "| depth | {} |",
            length_header(&lengths, meta.train_length)
        );
        let _ = writeln!(out, "|---|{}", "---|".repeat(lengths.len()));
        for &d in &depths {
            let mut line = format!("| {:.0}% |", 100.0 * d);
            for &l in &lengths {
                let t = Tally::of(
                    cells
                        .iter()
                        .filter(|c| c.config == best && c.length == l && c.depth == d),
                );
                let _ = write!(line, " {}/{} |", t.successes, t.episodes);
            }
            let _ = writeln!(out, "{line}");
        }
        out.push('\n');
    }

    let _ = writeln!(out, "## Heatmaps\n");
    let _ = writeln!(
        out,
        "One PNG per configuration: columns = length (frame-steps), rows = cue depth (0% = the cue at the start of the history, top); color = rate, viridis from dark purple (0%) through teal (50%) to yellow (100%); each cell also prints its rate. Gray = no data.\n"
    );
    for (config, _) in &groups {
        let _ = write!(
            out,
            "- {}: `{}`",
            config_label(config),
            heatmap_name(config, "success")
        );
        if has_cue {
            let _ = write!(out, ", cue recall `{}`", heatmap_name(config, "cue"));
        }
        out.push('\n');
    }
    out
}

/// A per-cell value in `[0, 1]` (None: no data).
type Metric = fn(&Cell) -> Option<f64>;

/// The heatmaps of every configuration: `(file name, heatmap)`.
pub fn heatmaps(cells: &[Cell]) -> Vec<(String, Heatmap)> {
    let lengths = lengths_of(cells);
    let depths = depths_of(cells);
    let mut out = Vec::new();
    for (config, group) in by_config(cells) {
        let mut kinds: Vec<(&str, Metric)> = vec![("success", |c| Some(c.success_rate()))];
        if group.iter().any(|c| c.cue_correct.is_some()) {
            kinds.push(("cue", Cell::cue_recall));
        }
        for (kind, metric) in kinds {
            let values = depths
                .iter()
                .map(|&d| {
                    lengths
                        .iter()
                        .map(|&l| {
                            group
                                .iter()
                                .find(|c| c.length == l && c.depth == d)
                                .and_then(|c| metric(c))
                        })
                        .collect()
                })
                .collect();
            out.push((
                heatmap_name(&config, kind),
                Heatmap {
                    title: format!(
                        "{}: {}",
                        if kind == "cue" {
                            "cue recall"
                        } else {
                            "success"
                        },
                        config_label(&config)
                    ),
                    col_labels: lengths.iter().map(ToString::to_string).collect(),
                    row_labels: depths
                        .iter()
                        .map(|d| format!("{:.0}%", 100.0 * d))
                        .collect(),
                    x_label: "length".into(),
                    y_label: "depth".into(),
                    values,
                },
            ));
        }
    }
    out
}

/// Writes `cells.csv`, `results.md` and the heatmaps into `dir` (created if needed); returns
/// the paths written.
///
/// # Errors
/// [`Error::Output`] for a file that cannot be written.
pub fn write_all(dir: &Path, cells: &[Cell], meta: &ReportMeta) -> Result<Vec<PathBuf>> {
    let io = |path: &Path, e: std::io::Error| Error::Output {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut written = Vec::new();
    let csv_path = dir.join("cells.csv");
    std::fs::write(&csv_path, csv(cells)).map_err(|e| io(&csv_path, e))?;
    written.push(csv_path);
    let md_path = dir.join("results.md");
    std::fs::write(&md_path, markdown(cells, meta)).map_err(|e| io(&md_path, e))?;
    written.push(md_path);
    for (name, map) in heatmaps(cells) {
        let path = dir.join(name);
        heatmap::write_png(&map, &path)?;
        written.push(path);
    }
    Ok(written)
}
