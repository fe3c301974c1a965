//! `edgevla demo`: the simulator and the node in one process, each on its own zenoh session,
//! connected over TCP loopback; and [`replay_through_node`], which drives a recording through
//! a node (stepped: deterministic, or paced).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::error::{Context as _, Error, Result};
use burn::tensor::backend::Backend;
use serde::Serialize;
use transport::clock::SystemClock;
use transport::keys::{KeySpace, Topic, parse_key};
use transport::msg::{ActionChunk, MessageKind};
use transport::record::{McapRecorder, RecordLimits, RecorderConfig, peek_stamp, record_session};
use transport::recording::Recording;
use transport::replay::{Rate, Remap, Replayer, SteppedReplay};
use transport::session::{SessionConfig, listening_peer, open};
use zenoh::Wait;

use super::sim::{EpisodeResult, SimOptions, SimReport, run_sim};
use super::stats::{LatencySummary, rss_bytes};
use super::{NodeMonitor, NodeReport, NodeSetup, run_node};

/// Two zenoh peer sessions connected over loopback: (listening, connecting).
///
/// # Errors
/// zenoh failures after a few retries (a free port can be taken between lookup and bind).
pub fn loopback_pair() -> Result<(zenoh::Session, zenoh::Session)> {
    let (a, port) = listening_peer()?;
    let b = open(&SessionConfig::peer_connecting(port))?;
    transport::session::wait_for_connections(&b, 1, Duration::from_secs(10))?;
    Ok((a, b))
}

/// Live numbers of a running demo.
#[derive(Clone, Debug, Default)]
pub struct DemoProgress {
    /// Episodes finished.
    pub episodes_done: u64,
    /// Successful ones.
    pub successes: u64,
    /// Steps published by the simulator.
    pub sim_steps: u64,
    /// The node's latest report.
    pub node: NodeReport,
}

/// Resident memory over a run, bytes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rss {
    /// After setup, before the first step.
    pub start: u64,
    /// At the end.
    pub end: u64,
    /// Largest sample (one per episode and one per 1000 steps).
    pub max: u64,
    /// One sample every [`TRACE_WINDOW`] simulator steps.
    pub trace: Vec<WindowSample>,
}

/// Simulator steps per [`WindowSample`].
pub const TRACE_WINDOW: u64 = 1000;

/// The state of a run after a window of [`TRACE_WINDOW`] simulator steps.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WindowSample {
    /// Simulator steps so far.
    pub steps: u64,
    /// Process resident set size, bytes.
    pub rss_bytes: u64,
    /// Wall time per simulator step in this window (render + encode + publish, the node's
    /// step, the action back), median and 99th percentile, milliseconds.
    pub step_p50_ms: f64,
    /// See `step_p50_ms`.
    pub step_p99_ms: f64,
    /// The node's KV cache bytes after the window's last step.
    pub cache_bytes: u64,
}

/// What a demo run produced.
#[derive(Clone, Debug, Serialize)]
pub struct DemoOutcome {
    /// Which model ran.
    pub model: String,
    /// What its actions commanded (the simulator applied them so): `joint_velocity` or
    /// `joint_target`.
    pub action: ::sim::ActionSpace,
    /// The simulator's side.
    pub sim: SimReport,
    /// The node's final report.
    pub node: NodeReport,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Process memory.
    pub rss: Rss,
    /// Messages recorded (with `record`).
    pub recorded: Option<u64>,
}

/// Runs the simulator and the node over loopback until the simulator's episodes are done (or
/// `shutdown`). With `record`, every message (`<prefix>/<id>/**`) is also written to that MCAP
/// file. `progress` is called after every simulator step.
///
/// # Errors
/// Session, node or simulator failures.
pub fn run_demo<B: Backend>(
    setup: &NodeSetup<B>,
    model: &str,
    sim_options: &SimOptions,
    record: Option<&Path>,
    shutdown: &AtomicBool,
    progress: &mut dyn FnMut(&DemoProgress),
) -> Result<DemoOutcome> {
    let (node_session, sim_session) = loopback_pair()?;
    let monitor = NodeMonitor::default();
    let node_stop = AtomicBool::new(false);
    let sim_stop = AtomicBool::new(false);
    let started = Instant::now();
    let rss_start = rss_bytes().unwrap_or(0);
    let rss_max = AtomicU64::new(rss_start);
    let rss_trace = Mutex::new(Vec::new());
    let keys = KeySpace::new(&sim_options.prefix, &sim_options.robot_id)?;
    let recorder_stop = AtomicBool::new(false);
    let (node_report, sim_report, recorded) = std::thread::scope(|scope| -> Result<_> {
        let node = scope.spawn(|| run_node(&node_session, setup, &node_stop, &monitor));
        // The sim's publishers also match the recorder's subscription: start publishing only
        // once the node itself listens (or has failed, which the join below reports).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !monitor.subscribed() && !node.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let recorder = match record {
            Some(path) => {
                let (ready_tx, ready_rx) = std::sync::mpsc::channel();
                let (sim_session, keys, recorder_stop) = (&sim_session, &keys, &recorder_stop);
                let handle = scope.spawn(move || -> Result<u64> {
                    let file =
                        std::fs::File::create(path).map_err(|e| Error::io(path.display(), e))?;
                    let recorder = McapRecorder::new(
                        std::io::BufWriter::new(file),
                        RecorderConfig {
                            prefix: sim_options.prefix.clone(),
                            ..RecorderConfig::default()
                        },
                    )?;
                    let (summary, _) = record_session(
                        sim_session,
                        &keys.all(),
                        recorder,
                        Arc::new(SystemClock::new()),
                        RecordLimits::default(),
                        recorder_stop,
                        move || {
                            let _ = ready_tx.send(());
                        },
                    )?;
                    Ok(summary.messages)
                });
                // Wait for the subscription (or the thread's early failure).
                let _ = ready_rx.recv_timeout(Duration::from_secs(10));
                Some(handle)
            }
            None => None,
        };
        let state = Mutex::new(DemoProgress::default());
        // wall time per simulator step over the current window, microseconds
        let mut window = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 2)
            .map_err(|e| Error::Invalid(format!("latency histogram: {e}")))?;
        let mut last_step = Instant::now();
        let sim_clock = SystemClock::new();
        let stop_both = || shutdown.load(Ordering::SeqCst);
        let sim_result = {
            let mut on_step = |_episode: u64, _t: usize| {
                let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
                s.sim_steps += 1;
                let now = Instant::now();
                let micros =
                    u64::try_from(now.duration_since(last_step).as_micros()).unwrap_or(u64::MAX);
                window.saturating_record(micros.max(1));
                last_step = now;
                s.node = monitor.report();
                if s.sim_steps % TRACE_WINDOW == 0 {
                    let rss = rss_bytes().unwrap_or(0);
                    rss_max.fetch_max(rss, Ordering::Relaxed);
                    let ms = |q: f64| window.value_at_quantile(q) as f64 / 1000.0;
                    rss_trace
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(WindowSample {
                            steps: s.sim_steps,
                            rss_bytes: rss,
                            step_p50_ms: ms(0.5),
                            step_p99_ms: ms(0.99),
                            cache_bytes: s.node.cache.bytes,
                        });
                    window.reset();
                }
                progress(&s);
                if stop_both() {
                    sim_stop.store(true, Ordering::SeqCst);
                }
            };
            let mut on_episode = |e: &EpisodeResult| {
                let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
                s.episodes_done += 1;
                s.successes += u64::from(e.success);
                rss_max.fetch_max(rss_bytes().unwrap_or(0), Ordering::Relaxed);
            };
            run_sim(
                &sim_session,
                sim_options,
                &sim_clock,
                &sim_stop,
                &mut on_step,
                &mut on_episode,
            )
        };
        // Let the last action and status settle, then stop the node.
        std::thread::sleep(Duration::from_millis(100));
        node_stop.store(true, Ordering::SeqCst);
        if recorder.is_some() {
            // The recorder stops without draining its queue: give it time to write the last
            // messages (the final actions and status) first.
            std::thread::sleep(Duration::from_millis(500));
        }
        recorder_stop.store(true, Ordering::SeqCst);
        let node_report = node
            .join()
            .map_err(|_| Error::Worker("the node thread panicked".into()))??;
        let recorded = match recorder {
            Some(h) => Some(
                h.join()
                    .map_err(|_| Error::Worker("the recorder panicked".into()))??,
            ),
            None => None,
        };
        Ok((node_report, sim_result?, recorded))
    })?;
    let rss_end = rss_bytes().unwrap_or(0);
    Ok(DemoOutcome {
        model: model.to_owned(),
        action: sim_options.task.action,
        sim: sim_report,
        node: node_report,
        seconds: started.elapsed().as_secs_f64(),
        rss: Rss {
            start: rss_start,
            end: rss_end,
            max: rss_max.load(Ordering::Relaxed).max(rss_end),
            trace: rss_trace
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner),
        },
        recorded,
    })
}

/// How [`replay_through_node`] feeds the recording.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pace {
    /// One message at a time; after each joint state, wait for the node's action stamped with
    /// it (deterministic with `clock = "joints"`).
    Stepped,
    /// At a rate of the original timing, or as fast as possible.
    Rate(Rate),
}

/// Action payloads with their stamps, in arrival order.
type StampedPayloads = Vec<(u64, Vec<u8>)>;

/// What a replay through the node produced.
#[derive(Clone, Debug)]
pub struct ReplayOutcome {
    /// Every action payload the node published, as received (CDR bytes).
    pub actions: Vec<Vec<u8>>,
    /// The node's final report.
    pub node: NodeReport,
    /// Messages replayed.
    pub published: u64,
    /// Stepped: joint states whose action did not come within the timeout.
    pub action_timeouts: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Replays the input messages of `recording` (cameras, joints, instructions of every robot
/// under the node's prefix, remapped by `remap`; recorded actions and status are skipped) into
/// a fresh node and collects the actions it publishes.
///
/// # Errors
/// Session or node failures.
pub fn replay_through_node<B: Backend>(
    setup: &NodeSetup<B>,
    mut recording: Recording,
    remap: &Remap,
    pace: Pace,
    shutdown: &AtomicBool,
) -> Result<ReplayOutcome> {
    let prefix = setup.config.prefix.clone();
    recording.messages.retain(|m| {
        matches!(
            parse_key(&prefix, &remap.apply(&m.key)),
            Ok(Topic::Camera { .. } | Topic::Joints { .. } | Topic::Instruction { .. })
        )
    });
    let keys = KeySpace::new(&prefix, &setup.config.robot_id)?;
    let (node_session, driver_session) = loopback_pair()?;
    let monitor = NodeMonitor::default();
    let node_stop = AtomicBool::new(false);
    let started = Instant::now();
    let received: Arc<Mutex<StampedPayloads>> = Arc::default();
    let sink = Arc::clone(&received);
    let _actions = driver_session
        .declare_subscriber(keys.action())
        .callback(move |sample: zenoh::sample::Sample| {
            let bytes = sample.payload().to_bytes().into_owned();
            let stamp = peek_stamp(MessageKind::ActionChunk, &bytes).map_or(0, |t| t.as_nanos());
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((stamp, bytes));
        })
        .wait()
        .context("declare action subscriber")?;
    let (node_report, published, timeouts) = std::thread::scope(|scope| -> Result<_> {
        let node = scope.spawn(|| run_node(&node_session, setup, &node_stop, &monitor));
        let drive = || -> Result<(u64, u64)> {
            let mut replay = SteppedReplay::new(recording, remap);
            let mut replayer = Replayer::new(&driver_session);
            let unmatched = replayer.prepare(&replay, Duration::from_secs(10))?;
            if !unmatched.is_empty() {
                tracing::warn!(?unmatched, "no subscriber for some replayed keys");
            }
            let mut published = 0;
            let mut timeouts = 0;
            match pace {
                Pace::Rate(rate) => {
                    let clock = SystemClock::new();
                    published = replayer
                        .run_paced(&mut replay, rate, &clock, shutdown)?
                        .published;
                }
                Pace::Stepped => {
                    while !shutdown.load(Ordering::SeqCst) {
                        let Some(item) = replay.next_item() else {
                            break;
                        };
                        replayer.publish(&item)?;
                        published += 1;
                        let joints_stamp = match parse_key(&prefix, item.key) {
                            Ok(Topic::Joints { .. }) => {
                                peek_stamp(MessageKind::JointState, &item.message.data)
                            }
                            _ => None,
                        };
                        if let Some(stamp) = joints_stamp.map(|t| t.as_nanos()) {
                            let deadline = Instant::now() + Duration::from_secs(30);
                            loop {
                                let done = received
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .iter()
                                    .rev()
                                    .any(|(s, _)| *s == stamp);
                                if done {
                                    break;
                                }
                                if Instant::now() >= deadline {
                                    timeouts += 1;
                                    break;
                                }
                                std::thread::sleep(Duration::from_micros(200));
                            }
                        }
                    }
                }
            }
            Ok((published, timeouts))
        };
        let driven = drive();
        std::thread::sleep(Duration::from_millis(300));
        node_stop.store(true, Ordering::SeqCst);
        let node_report = node
            .join()
            .map_err(|_| Error::Worker("the node thread panicked".into()))??;
        let (published, timeouts) = driven?;
        Ok((node_report, published, timeouts))
    })?;
    let actions = std::mem::take(&mut *received.lock().unwrap_or_else(PoisonError::into_inner))
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    Ok(ReplayOutcome {
        actions,
        node: node_report,
        published,
        action_timeouts: timeouts,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Reads an MCAP file or a rosbag2 bag folder in MCAP storage (up to 4 GiB).
///
/// # Errors
/// Unreadable or malformed files.
pub fn read_mcap(path: &Path) -> Result<Recording> {
    transport::recording::open_recording(path, 4 << 30)
        .with_context(|| format!("reading {}", path.display()))
}

/// Decodes an action payload (for checks and digests).
///
/// # Errors
/// Malformed CDR.
pub fn decode_action(bytes: &[u8]) -> Result<ActionChunk> {
    Ok(transport::msg::decode::<ActionChunk>(bytes)?)
}

fn mib(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn row(out: &mut String, name: &str, s: &LatencySummary) {
    let _ = writeln!(
        out,
        "| {name:<20} | {:>9.2} | {:>9.2} | {:>9.2} | {:>9.2} |",
        s.p50_ms, s.p99_ms, s.mean_ms, s.max_ms
    );
}

/// The summary table `edgevla demo` prints.
pub fn summary_table(o: &DemoOutcome) -> String {
    let n = &o.node;
    let mut out = String::new();
    let episodes = o.sim.episodes.len();
    let successes = o.sim.successes();
    let steps: u64 = o.sim.episodes.iter().map(|e| e.steps).sum();
    let missed: u64 = o.sim.episodes.iter().map(|e| e.actions_missed).sum();
    let _ = writeln!(out, "model: {}", o.model);
    let _ = writeln!(
        out,
        "episodes: {episodes}, success {successes}/{episodes} ({:.1}%; chance ≈ 25%), {steps} steps in {:.1} s ({:.1} steps/s)",
        100.0 * successes as f64 / episodes.max(1) as f64,
        o.seconds,
        steps as f64 / o.seconds.max(1e-9)
    );
    let mut ages: Vec<u64> = o.sim.episodes.iter().map(|e| e.cue_age_steps).collect();
    ages.sort_unstable();
    if let Some(&median) = ages.get(ages.len() / 2) {
        let evicted = o
            .sim
            .episodes
            .iter()
            .filter(|e| e.cue_evicted == Some(true))
            .count();
        let known = o
            .sim
            .episodes
            .iter()
            .filter(|e| e.cue_evicted.is_some())
            .count();
        let _ = writeln!(
            out,
            "cue age at the go step: median {median} frame-steps (min {}, max {}); cue out of the KV cache in {evicted}/{known} episodes",
            ages[0],
            ages[ages.len() - 1]
        );
    }
    let mut drift: Vec<f64> = o
        .sim
        .episodes
        .iter()
        .map(|e| 100.0 * e.drift_before_go_m)
        .collect();
    drift.sort_by(f64::total_cmp);
    if let (Some(median), Some(max)) = (drift.get(drift.len() / 2), drift.last()) {
        let _ = writeln!(
            out,
            "arm drift from its rest pose before the go step (the expert holds still): median {median:.1} cm, max {max:.1} cm"
        );
    }
    let failed: Vec<&EpisodeResult> = o.sim.episodes.iter().filter(|e| !e.success).collect();
    if !failed.is_empty() {
        let mut near: Vec<f64> = failed
            .iter()
            .filter(|e| e.at_cued_pad)
            .map(|e| 100.0 * e.final_error_m)
            .collect();
        near.sort_by(f64::total_cmp);
        let elsewhere = failed.len() - near.len();
        let precision = match near.get(near.len() / 2) {
            Some(median) => format!(
                "{} ended nearest the cued pad but {median:.1} cm (median) from its centre",
                near.len()
            ),
            None => "none ended nearest the cued pad".to_string(),
        };
        let _ = writeln!(
            out,
            "failures: {elsewhere} ended nearest another pad (memory or reach); {precision}"
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| stage (ms)           |       p50 |       p99 |      mean |       max |"
    );
    let _ = writeln!(
        out,
        "|----------------------|-----------|-----------|-----------|-----------|"
    );
    row(&mut out, "queue", &n.latency.queue);
    row(&mut out, "vision (decode+prep)", &n.latency.vision);
    row(&mut out, "model step", &n.latency.model);
    row(&mut out, "publish", &n.latency.publish);
    row(&mut out, "total", &n.latency.total);
    let _ = writeln!(out);
    let c = &n.cache;
    let _ = writeln!(
        out,
        "KV cache: max {} of a {} budget ({:.1}%), over budget after {} steps; {} frame-steps evicted in the last episode",
        mib(c.max_bytes),
        mib(c.budget),
        100.0 * c.max_bytes as f64 / c.budget.max(1) as f64,
        c.over_budget_steps,
        c.frames_evicted
    );
    if c.memory_budget > 0 {
        let _ = writeln!(
            out,
            "memory bank: {} of a {} bound ({} memory tokens at the end, the oldest {} frame-steps old)",
            mib(c.memory_bytes),
            mib(c.memory_budget),
            c.memory_tokens,
            c.memory_oldest_age
        );
    }
    let i = &n.input;
    let frames: u64 = i.cameras.iter().map(|c| c.received).sum();
    let dropped: u64 = i.cameras.iter().map(|c| c.dropped + c.unused).sum();
    let decode: u64 = i.cameras.iter().map(|c| c.decode_errors).sum();
    let held: u64 = i.cameras.iter().map(|c| c.held).sum();
    let missing: u64 = i.cameras.iter().map(|c| c.missing).sum();
    let _ = writeln!(
        out,
        "inputs: {frames} frames, {} joint states, {} instructions; zenoh ring drops {}, bad payloads {}",
        i.joints,
        i.instructions,
        i.subscriber.dropped,
        i.subscriber.decode_errors + i.subscriber.wrong_encoding + i.subscriber.oversized,
    );
    let _ = writeln!(
        out,
        "frames dropped/unused by sync {dropped}, held {held}, masked {missing}, decode errors {decode}; steps superseded {}, steps without cameras {}, restarts {}; actions missed by the sim {missed}",
        i.steps_superseded, i.steps_without_cameras, i.restarts,
    );
    let _ = writeln!(
        out,
        "RSS: start {}, end {}, max {}",
        mib(o.rss.start),
        mib(o.rss.end),
        mib(o.rss.max)
    );
    if o.rss.trace.len() > 1 {
        let samples: Vec<String> = o
            .rss
            .trace
            .iter()
            .map(|w| format!("{:.1}", w.rss_bytes as f64 / 1048576.0))
            .collect();
        let _ = writeln!(out, "RSS every 1000 steps (MiB): {}", samples.join(" "));
    }
    out
}
