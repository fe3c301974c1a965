//! `edgevla sim`: the trainer's memory task ([`sim::Sim`]) as a live robot over
//! zenoh.
//!
//! Per episode it publishes the instruction (`std_msgs/String` on `<prefix>/<id>/instruction`,
//! which tells the node a new episode starts), then per control step one JPEG
//! `CompressedImage` per camera (`cam/<name>`, frame_id = camera name) and a `JointState`
//! (`joints`: names `q1 q2 dq1 dq2 ee_x ee_y go phase`, the task's proprio in `position`), all
//! stamped with the step's time. Stamps run on across episodes (`start + k · period` for the
//! k-th step of the run), so they never jump back.
//!
//! Actions (`ActionChunk` on `action`) are applied closed loop:
//! - **lock-step**: after publishing step t the simulator waits for the chunk stamped with
//!   step t's time and applies its first action, so a run is deterministic and as fast as the
//!   node; a chunk that does not come within the timeout counts as missed (the arm holds still).
//! - **real time**: steps advance every period on the clock; each step applies action k of the
//!   newest chunk, k = (now − chunk stamp) / period, so a chunk computed late is executed from
//!   where the robot is now; none, or one older than its horizon, holds still (counted stale).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Context as _, Error, Result};
use image::ExtendedColorType;
use image::codecs::jpeg::JpegEncoder;
use serde::Serialize;
use sim::{ACTION_DIM, Sim, Task, TaskConfig};
use transport::clock::Clock;
use transport::keys::{KeySpace, Topic};
use transport::msg::{AnyMessage, CompressedImage, Header, JointState, StringMsg, Time};
use transport::pubsub::{Publisher, StreamClass, Subscriber, SubscriberConfig};

pub use sim::PROPRIO_NAMES;

/// How the simulator paces itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SimMode {
    /// Wait for the action of step t before publishing step t + 1 (deterministic, fast).
    LockStep,
    /// Advance every control period on the clock, whatever the node does.
    RealTime,
}

impl SimMode {
    /// Every mode, in its spelling (`lock-step`, `real-time`).
    pub const ALL: [(SimMode, &'static str); 2] = [
        (SimMode::LockStep, "lock-step"),
        (SimMode::RealTime, "real-time"),
    ];
}

impl std::str::FromStr for SimMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .iter()
            .find(|(_, name)| *name == s)
            .map(|(mode, _)| *mode)
            .ok_or_else(|| Error::Invalid(format!("unknown mode `{s}`: lock-step or real-time")))
    }
}

/// Simulator settings.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Key prefix.
    pub prefix: String,
    /// Robot id.
    pub robot_id: String,
    /// The task.
    pub task: TaskConfig,
    /// Episodes to run.
    pub episodes: u64,
    /// Seed of the first episode (episode i uses `first_seed + i`).
    pub first_seed: u64,
    /// Pacing.
    pub mode: SimMode,
    /// JPEG quality, 1-100.
    pub jpeg_quality: u8,
    /// Lock-step: how long to wait for an action.
    pub action_timeout: Duration,
    /// How long to wait for a subscriber (the node) before starting.
    pub wait_for_node: Duration,
    /// Stamp of the run's first step, ns (`None`: the clock's now).
    pub start_ns: Option<u64>,
    /// The node's KV cache as frame-steps it holds, for [`EpisodeResult::cue_evicted`]: a
    /// function of the instruction's sink tokens (`None`: not known, e.g. a remote node).
    pub cache_frames: Option<CacheFrames>,
}

/// How many frame-steps a node's KV cache holds behind `sinks` instruction tokens: its token
/// capacity less the sinks, in whole frame-steps, at most `max_frames`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheFrames {
    /// Tokens the cache holds (sinks and frame-steps).
    pub capacity: usize,
    /// Tokens per frame-step.
    pub frame_tokens: usize,
    /// Most frame-steps kept whatever the bytes allow (a memory model's window).
    pub max_frames: usize,
}

impl CacheFrames {
    /// Frame-steps held behind `sinks` sink tokens.
    pub fn frames(&self, sinks: usize) -> usize {
        (self.capacity.saturating_sub(sinks) / self.frame_tokens.max(1)).min(self.max_frames)
    }
}

impl SimOptions {
    /// Defaults for `robot_id`: lock-step, 95% JPEG, seeds from 1 000 000 (far from training's).
    pub fn new(robot_id: &str, task: TaskConfig, episodes: u64) -> Self {
        Self {
            prefix: transport::keys::DEFAULT_PREFIX.to_owned(),
            robot_id: robot_id.to_owned(),
            task,
            episodes,
            first_seed: 1_000_000,
            mode: SimMode::LockStep,
            jpeg_quality: 95,
            action_timeout: Duration::from_secs(30),
            wait_for_node: Duration::from_secs(10),
            start_ns: Some(1_000_000_000),
            cache_frames: None,
        }
    }
}

/// One finished episode.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EpisodeResult {
    /// Episode index in the run.
    pub episode: u64,
    /// Its seed.
    pub seed: u64,
    /// The instruction sent.
    pub instruction: String,
    /// Whether the end effector ended on the target.
    pub success: bool,
    /// Steps published.
    pub steps: u64,
    /// Actions applied from the node.
    pub actions_applied: u64,
    /// Lock-step: actions that did not come in time. Real time: steps with no usable chunk.
    pub actions_missed: u64,
    /// Seconds the episode took.
    pub seconds: f64,
    /// Frame-steps from the cue's last step to the go step.
    pub cue_age_steps: u64,
    /// Whether none of the cue's frame-steps was in the node's KV cache at the go step (the
    /// cache holding the most recent frame-steps that fit, as in lock-step, where the node
    /// acts on every step); `None` when the node's cache is not known.
    pub cue_evicted: Option<bool>,
    /// At the last step: the end effector's distance to the cued pad's centre, metres.
    pub final_error_m: f64,
    /// At the last step: whether the pad nearest the end effector is the cued one (a failure
    /// with `true` is one of precision, with `false` one of memory or of reaching).
    pub at_cued_pad: bool,
    /// Before the go step: the end effector's largest distance from its rest pose, metres
    /// (the task's expert holds the arm still there, so this is how far the policy drifted).
    pub drift_before_go_m: f64,
}

/// A whole run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SimReport {
    /// Per episode.
    pub episodes: Vec<EpisodeResult>,
    /// Camera frames published.
    pub frames: u64,
    /// Action chunks received (all, including ones not applied).
    pub actions_received: u64,
}

impl SimReport {
    /// Successful episodes.
    pub fn successes(&self) -> usize {
        self.episodes.iter().filter(|e| e.success).count()
    }
}

/// Encodes an RGB8 image as JPEG.
///
/// # Errors
/// The encoder's error (a size that does not match the buffer).
pub fn jpeg(rgb: &[u8], width: u32, height: u32, quality: u8, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    JpegEncoder::new_with_quality(&mut *out, quality.clamp(1, 100))
        .encode(rgb, width, height, ExtendedColorType::Rgb8)
        .map_err(|e| Error::Invalid(format!("JPEG encode: {e}")))
}

/// Runs the simulator on `session` until its episodes are done or `shutdown` is set; calls
/// `on_step(episode, t)` after each published step and `on_episode` after each episode.
///
/// # Errors
/// Invalid task config, zenoh failures, and no subscriber within `wait_for_node`.
pub fn run_sim(
    session: &zenoh::Session,
    options: &SimOptions,
    clock: &dyn Clock,
    shutdown: &AtomicBool,
    on_step: &mut dyn FnMut(u64, usize),
    on_episode: &mut dyn FnMut(&EpisodeResult),
) -> Result<SimReport> {
    if !(1..=100).contains(&options.jpeg_quality) {
        return Err(Error::Invalid(format!(
            "JPEG quality must be 1-100, got {}",
            options.jpeg_quality
        )));
    }
    let keys = KeySpace::new(&options.prefix, &options.robot_id)?;
    let task = Task::new(&options.task).context("task config")?;
    let names: Vec<String> = task.cameras().iter().map(|c| c.name.clone()).collect();
    // Real time: a late frame is worth nothing, so frames may be dropped under congestion.
    // Lock-step: the simulator waits for the node's action on every frame-step, so a dropped
    // frame or joint state (the joint state is the node's tick) would leave a step the node
    // never acts on; both go lossless.
    let (frame_class, joints_class) = match options.mode {
        SimMode::LockStep => (StreamClass::Bulk, StreamClass::Bulk),
        SimMode::RealTime => (StreamClass::Frames, StreamClass::Telemetry),
    };
    let cams = names
        .iter()
        .map(|n| Publisher::<CompressedImage>::declare(session, &keys.camera(n)?, frame_class))
        .collect::<transport::Result<Vec<_>>>()?;
    let joints = Publisher::<JointState>::declare(session, &keys.joints(), joints_class)?;
    // Episode starts must not be lost: lossless QoS.
    let instruction =
        Publisher::<StringMsg>::declare(session, &keys.instruction(), StreamClass::Bulk)?;
    let wall: Arc<dyn Clock> = Arc::new(transport::clock::SystemClock::new());
    let actions = Subscriber::declare(
        session,
        &keys.action(),
        &options.prefix,
        SubscriberConfig {
            ring_capacity: 64,
            ..SubscriberConfig::default()
        },
        wall,
    )?;
    for p in cams
        .iter()
        .map(|p| p as &dyn Waitable)
        .chain([&joints as &dyn Waitable, &instruction as &dyn Waitable])
    {
        p.wait(options.wait_for_node)
            .context("no node subscribed to the simulator's keys")?;
    }
    let period = options.task.period_ns();
    let start = options.start_ns.unwrap_or_else(|| clock.now_ns());
    let mut report = SimReport::default();
    let mut global_step = 0u64;
    let mut jpeg_buf = Vec::new();
    let proprio_names: Vec<String> = PROPRIO_NAMES.iter().map(|s| (*s).to_owned()).collect();
    let robot = options.robot_id.clone();
    // Real time: the newest chunk received (stamp, values).
    let mut newest: Option<(u64, Vec<f32>)> = None;
    for episode in 0..options.episodes {
        if shutdown.load(Ordering::SeqCst) {
            break;
        }
        let began = Instant::now();
        let seed = options.first_seed.wrapping_add(episode);
        let mut sim = Sim::with_task(task.clone(), seed)?;
        let info = sim.info();
        let text = info.instruction.clone();
        instruction.publish(&StringMsg { data: text.clone() })?;
        let cue_last = info.cue_steps.end.saturating_sub(1);
        let cue_age_steps = info.go_step.saturating_sub(cue_last) as u64;
        // Sinks: the beginning-of-instruction token and one per instruction byte.
        let cue_evicted = options.cache_frames.map(|c| {
            let held = c.frames(1 + text.len());
            cue_last + held <= info.go_step
        });
        let mut result = EpisodeResult {
            episode,
            seed,
            instruction: text,
            success: false,
            steps: 0,
            actions_applied: 0,
            actions_missed: 0,
            seconds: 0.0,
            cue_age_steps,
            cue_evicted,
            final_error_m: f64::NAN,
            at_cued_pad: false,
            drift_before_go_m: 0.0,
        };
        let rest = task.config().arm.rest_xy;
        loop {
            let stamp = start + global_step * period;
            if options.mode == SimMode::RealTime {
                clock.sleep_until_ns(stamp);
            }
            let step = sim.observe();
            if sim.t() < info.go_step {
                let [x, y] = sim.ee_xy();
                let drift = (f64::from(x) - rest[0]).hypot(f64::from(y) - rest[1]);
                result.drift_before_go_m = result.drift_before_go_m.max(drift);
            }
            let header = |frame_id: &str| Header {
                stamp: Time::from_nanos(stamp),
                frame_id: frame_id.to_owned(),
            };
            for (((img, publisher), name), &present) in step
                .images
                .iter()
                .zip(&cams)
                .zip(&names)
                .zip(&step.camera_present)
            {
                // A camera in a dropout delivers nothing (the node holds, then masks it).
                if !present {
                    continue;
                }
                jpeg(
                    img,
                    step.width,
                    step.height,
                    options.jpeg_quality,
                    &mut jpeg_buf,
                )?;
                publisher.publish(&CompressedImage {
                    header: header(name),
                    format: "jpeg".to_owned(),
                    data: jpeg_buf.clone(),
                })?;
                report.frames += 1;
            }
            joints.publish(&JointState {
                header: header("base"),
                name: proprio_names.clone(),
                position: step.proprio.iter().map(|&v| f64::from(v)).collect(),
                velocity: Vec::new(),
                effort: Vec::new(),
            })?;
            result.steps += 1;
            global_step += 1;
            on_step(episode, sim.t());
            let chunk: Option<Vec<f32>> = match options.mode {
                SimMode::LockStep => {
                    let deadline = Instant::now() + options.action_timeout;
                    let mut found = None;
                    while found.is_none() && !shutdown.load(Ordering::SeqCst) {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        let Some(m) = actions.recv_timeout(left.min(Duration::from_millis(50)))
                        else {
                            continue;
                        };
                        if let (Topic::Action { robot: r }, AnyMessage::ActionChunk(a)) =
                            (&m.topic, m.message)
                            && *r == robot
                        {
                            report.actions_received += 1;
                            if a.stamp.as_nanos() == stamp {
                                found = Some(a.values);
                            }
                        }
                    }
                    found
                }
                SimMode::RealTime => {
                    while let Some(m) = actions.inbox().try_recv() {
                        if let (Topic::Action { robot: r }, AnyMessage::ActionChunk(a)) =
                            (&m.topic, m.message)
                            && *r == robot
                        {
                            report.actions_received += 1;
                            let s = a.stamp.as_nanos();
                            if newest.as_ref().is_none_or(|(n, _)| s >= *n) {
                                newest = Some((s, a.values));
                            }
                        }
                    }
                    // The action for the interval starting at this step's stamp.
                    newest.as_ref().and_then(|(s, values)| {
                        let k = usize::try_from(stamp.checked_sub(*s)? / period).ok()?;
                        values
                            .get(k * ACTION_DIM..(k + 1) * ACTION_DIM)
                            .map(<[f32]>::to_vec)
                    })
                }
            };
            if sim.is_last() || shutdown.load(Ordering::SeqCst) {
                if chunk.is_some() {
                    result.actions_applied += 1;
                } else {
                    result.actions_missed += 1;
                }
                break;
            }
            let applied = match chunk {
                Some(values)
                    if values.len() >= ACTION_DIM && values[..2].iter().all(|v| v.is_finite()) =>
                {
                    result.actions_applied += 1;
                    values
                }
                _ => {
                    // Nothing (or nothing usable) for this interval: the arm holds still.
                    result.actions_missed += 1;
                    sim.hold_chunk()
                }
            };
            sim.step(&applied[..ACTION_DIM])?;
        }
        result.success = sim.success();
        result.final_error_m = sim.distance_to_pad(sim.target());
        result.at_cued_pad = sim.nearest_pad() == sim.target();
        result.seconds = began.elapsed().as_secs_f64();
        on_episode(&result);
        report.episodes.push(result);
    }
    Ok(report)
}

/// Publishers the simulator waits on before it starts.
trait Waitable {
    fn wait(&self, timeout: Duration) -> transport::Result<()>;
}

impl<M: transport::msg::RosMessage> Waitable for Publisher<M> {
    fn wait(&self, timeout: Duration) -> transport::Result<()> {
        self.wait_for_subscriber(timeout)
    }
}
