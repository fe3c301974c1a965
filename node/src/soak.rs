//! The soak run (`edgevla bench soak`): one long lock-step episode of the simulator driving the
//! node over loopback zenoh, with the 1-layer `soak` model whose KV budget holds 4 frame-steps,
//! so every step from the 5th on evicts one. Every [`TRACE_WINDOW`] steps the process RSS, the
//! window's step latency (p50/p99) and the cache bytes are sampled; the verdicts say whether
//! memory stayed flat after warm-up and the cache within its budget after every step.

use std::sync::atomic::AtomicBool;

use crate::error::{Error, Result};
use burn::backend::NdArray;
use serde::Serialize;

use super::demo::{DemoProgress, TRACE_WINDOW, WindowSample, run_demo};
use super::sim::SimOptions;
use super::{ClockMode, ModelChoice, NodeConfig, setup};

/// RSS is flat when the median of the last quarter of the after-warm-up samples is within this
/// fraction of the median of their first quarter: a leak is a trend, while a single sample may
/// spike (an allocator keeping a freed buffer a while) without one.
pub const RSS_TOLERANCE: f64 = 0.05;

/// What a soak run measured.
#[derive(Clone, Debug, Serialize)]
pub struct SoakReport {
    /// Simulator steps run (one episode), to the last full window.
    pub steps: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// One sample per [`TRACE_WINDOW`] steps.
    pub samples: Vec<WindowSample>,
    /// Samples counted as warm-up (the first tenth, at least one): not in the flatness check.
    pub warmup_samples: usize,
    /// RSS of the first and last sample and the largest over the run, bytes.
    pub rss_first: u64,
    /// See `rss_first`.
    pub rss_last: u64,
    /// See `rss_first`.
    pub rss_max: u64,
    /// Largest deviation of an after-warm-up RSS sample from their median, as a fraction.
    pub rss_deviation: f64,
    /// Median RSS of the last quarter of the after-warm-up samples relative to that of their
    /// first quarter, minus one: the trend [`RSS_TOLERANCE`] bounds.
    pub rss_growth: f64,
    /// Step latency p99 of the first after-warm-up window and of the last, and the largest
    /// window p99, milliseconds.
    pub p99_first_ms: f64,
    /// See `p99_first_ms`.
    pub p99_last_ms: f64,
    /// See `p99_first_ms`.
    pub p99_max_ms: f64,
    /// The KV cache's hard budget and the most it held after any step, bytes.
    pub budget_bytes: u64,
    /// See `budget_bytes`.
    pub cache_max_bytes: u64,
    /// Steps after which the cache held more than its budget.
    pub over_budget_steps: u64,
    /// Frame-steps evicted.
    pub frames_evicted: u64,
    /// Model steps that produced an action.
    pub model_steps: u64,
    /// No RSS trend after warm-up: `rss_growth` within ±[`RSS_TOLERANCE`].
    pub rss_flat: bool,
    /// No step over budget and the cache's maximum within it.
    pub within_budget: bool,
}

/// Runs `steps` simulator steps (at least two windows) through the node with the `soak` model
/// on the CPU; `progress` is called after every step.
///
/// # Errors
/// Fewer than `2 * TRACE_WINDOW` steps, or a node / simulator failure.
pub fn run_soak(
    steps: u64,
    shutdown: &AtomicBool,
    progress: &mut dyn FnMut(&DemoProgress),
) -> Result<SoakReport> {
    if steps < 2 * TRACE_WINDOW {
        return Err(Error::Invalid(format!(
            "a soak needs at least {} steps (two samples of {TRACE_WINDOW})",
            2 * TRACE_WINDOW
        )));
    }
    let mut config = NodeConfig::load("edge")?;
    config.model = "soak".into();
    config.checkpoint = None;
    config.kv_cache = None; // the soak model's own: 4 frame-steps
    config.clock = ClockMode::Joints;
    let (node, source) =
        setup::<NdArray<f32>>(config, ModelChoice::Configured, Default::default())?;
    let task = sim::TaskConfig {
        episode_steps: usize::try_from(steps)
            .map_err(|_| Error::Invalid(format!("{steps} steps do not fit this machine")))?,
        ..sim::TaskConfig::default()
    };
    task.validate()?;
    let mut options = SimOptions::new(&node.config.robot_id, task, 1);
    options.prefix.clone_from(&node.config.prefix);
    let outcome = run_demo(&node, &source, &options, None, shutdown, progress)?;
    let samples = outcome.rss.trace;
    let steps_run = samples.last().map_or(0, |s| s.steps);
    if samples.len() < 2 {
        return Err(Error::Invalid(format!(
            "the run ended after {steps_run} steps, before two samples"
        )));
    }
    let warmup_samples = (samples.len() / 10).max(1);
    let steady = &samples[warmup_samples..];
    let rss: Vec<u64> = steady.iter().map(|s| s.rss_bytes).collect();
    let median = median_bytes(&rss);
    let rss_deviation = rss
        .iter()
        .map(|&r| (r as f64 - median).abs() / median)
        .fold(0.0, f64::max);
    let quarter = rss.len().div_ceil(4);
    let rss_growth =
        median_bytes(&rss[rss.len() - quarter..]) / median_bytes(&rss[..quarter]) - 1.0;
    let cache = &outcome.node.cache;
    let report = SoakReport {
        steps: steps_run,
        seconds: outcome.seconds,
        warmup_samples,
        rss_first: samples[0].rss_bytes,
        rss_last: samples[samples.len() - 1].rss_bytes,
        rss_max: outcome.rss.max,
        rss_deviation,
        rss_growth,
        p99_first_ms: steady[0].step_p99_ms,
        p99_last_ms: steady[steady.len() - 1].step_p99_ms,
        p99_max_ms: steady.iter().map(|s| s.step_p99_ms).fold(0.0, f64::max),
        budget_bytes: cache.budget,
        cache_max_bytes: cache.max_bytes,
        over_budget_steps: cache.over_budget_steps,
        frames_evicted: cache.frames_evicted,
        model_steps: outcome.node.steps,
        rss_flat: median > 0.0 && rss_growth.abs() <= RSS_TOLERANCE,
        within_budget: cache.over_budget_steps == 0 && cache.max_bytes <= cache.budget,
        samples,
    };
    Ok(report)
}

/// The median of `bytes` (upper middle), as a float.
fn median_bytes(bytes: &[u64]) -> f64 {
    let mut sorted = bytes.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).map_or(0.0, |&b| b as f64)
}
