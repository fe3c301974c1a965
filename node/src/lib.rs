//! The on-robot node and its companions, as a library (the `edgevla` binary only parses
//! arguments and calls it): [`run_node`] joins the transport, vision and runtime crates into the
//! control loop; [`sim`] serves the memory task (the `sim` crate) as a live robot over zenoh;
//! [`demo`] runs both over loopback, and drives recordings through the node; [`soak`] is the
//! long run; [`checkpoint`] finds a checkpoint and checks its task and preprocessing against the
//! model; [`adapt`] turns wire messages into the model's inputs and its outputs into wire
//! messages. Errors are [`Error`].
//!
//! # The node's threads
//! - zenoh's callback decodes each sample into the subscriber's ring (newest N per topic): it
//!   never waits on anything below.
//! - The *ingest* thread takes messages in arrival order, feeds camera frames into the
//!   synchronizer ([`vision::StepAssembler`]), keeps recent joint states, and hands each
//!   assembled frame-step to the inference loop through a one-slot mailbox: a step the loop
//!   has not taken yet is replaced by the newer one (counted `steps_superseded`), so slow
//!   inference never backs up ingestion and always acts on the newest frames.
//! - The *inference* loop (the caller's thread) decodes and preprocesses the step's frames,
//!   runs [`Vla::forward_step`] over the rolling KV cache, publishes the action chunk
//!   (stamped with the step's tick) and, every `status_ms`, a JSON status.
//!
//! # Episodes
//! Each `std_msgs/String` on `<prefix>/<id>/instruction` starts an episode: the synchronizer
//! starts a new tick grid and the model's context is reset with the text as attention sinks.
//! Frames before any instruction run under `default_instruction`.
//!
//! # Faults, by policy
//! - A camera without a frame for a tick: the rig's `sync.missing` policy (hold the last frame
//!   up to `max_hold_ms`, then mask it); counted per camera.
//! - A frame that fails to decode: that camera is masked for the step; counted.
//! - Malformed payloads: dropped and counted by the subscriber.
//! - No camera at all for a tick: the step is not run (counted); no frame-step for `stall_ms`:
//!   state `stalled` (counted); inputs resuming bring it back to `running`.
//! - A stream whose stamps jump back by `restart_ms` or more (a restarted publisher with its
//!   own clock): the synchronizer is reset onto the new time base (counted as a restart).
//!
//! Invariants (checked in the tests): the cache never holds more than its budget
//! (`over_budget_steps` stays 0); with `clock = "joints"`, the same inputs give byte-identical
//! action messages.

pub mod adapt;
pub mod checkpoint;
pub mod config;
pub mod demo;
pub mod error;
pub mod sim;
pub mod soak;
pub mod stats;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::error::Context as _;
pub use crate::error::{Error, Result};
use burn::tensor::backend::Backend;
use runtime::model::{StepInput, Vla};
use transport::keys::{KeySpace, Topic};
use transport::msg::{ActionChunk, AnyMessage, StringMsg};
use transport::pubsub::{Publisher, Routes, StreamClass, Subscriber, SubscriberStats};
use transport::ros2::{Ros2Node, Ros2Publisher, TopicPublisher};
use vision::{EncodedFrame, PreprocessConfig, Rig, Slot, Step, StepAssembler, VisionPipeline};
use zenoh::{Session, Wait};

pub use config::{ClockMode, NodeConfig, Ros2Topics};
pub use stats::{NodeReport, NodeState};

use stats::{CameraReport, StageHists};

/// Everything the node runs with.
#[derive(Debug)]
pub struct NodeSetup<B: Backend> {
    /// Settings.
    pub config: NodeConfig,
    /// Camera rig (names, sync policy, decode limits).
    pub rig: Rig,
    /// The policy.
    pub model: Vla<B>,
    /// The image preprocessing the model was trained with (its checkpoint's, checked against
    /// its patch sizes).
    pub preprocess: PreprocessConfig,
    /// The task its checkpoint was trained on, when the checkpoint recorded it (task.toml).
    pub trained_task: Option<::sim::TaskConfig>,
    /// Where it runs.
    pub device: B::Device,
}

impl<B: Backend> NodeSetup<B> {
    /// What the model's actions command: its checkpoint's training task's action space (joint
    /// velocities for a checkpoint that does not say, or an untrained model). A simulator the
    /// node drives must apply them in this space.
    pub fn action(&self) -> ::sim::ActionSpace {
        self.trained_task
            .as_ref()
            .map(|t| t.action)
            .unwrap_or_default()
    }
}

/// Which weights a node runs.
#[derive(Clone, Copy, Debug)]
pub enum ModelChoice<'a> {
    /// This checkpoint folder, as given.
    Checkpoint(&'a Path),
    /// The config's `checkpoint` (a relative path is also looked for in `EDGEVLA_HOME`, beside
    /// the executable and in the source tree: [`checkpoint::find_checkpoint`]); it is an
    /// error when the config names one that is found nowhere. A config without `checkpoint`
    /// runs a seeded random init of its `model`.
    Configured,
    /// A seeded random init of the config's `model`, whatever the config's `checkpoint`
    /// (`--untrained`: for testing the plumbing; success at chance).
    Untrained,
}

/// Loads the rig, and the model `choice` names, with the config's RoPE preset. Returns the
/// setup and a line saying which model was used.
///
/// # Errors
/// Unreadable or invalid rig, model config or checkpoint; a configured checkpoint found
/// nowhere.
pub fn setup<B: Backend>(
    config: NodeConfig,
    choice: ModelChoice<'_>,
    device: B::Device,
) -> Result<(NodeSetup<B>, String)> {
    let rig_text = checkpoint::read_named(&config.rig, configs::rig_preset(&config.rig))?;
    let rig = Rig::from_toml_str(&rig_text).with_context(|| format!("rig {}", config.rig))?;
    let (found, why_untrained) = match (choice, config.checkpoint.as_deref()) {
        (ModelChoice::Checkpoint(dir), _) => (Some((dir.to_path_buf(), "")), ""),
        (ModelChoice::Untrained, _) => (None, "--untrained"),
        (ModelChoice::Configured, None) => (None, "the node config names no checkpoint"),
        (ModelChoice::Configured, Some(path)) => {
            let found = checkpoint::find_checkpoint(Path::new(path)).ok_or_else(|| {
                Error::CheckpointNotFound {
                    path: path.to_string(),
                }
            })?;
            (Some(found), "")
        }
    };
    let dir = found.as_ref().map(|(dir, _)| dir.clone());
    let (mut model, source) = match found {
        Some((dir, how)) => {
            let model = runtime::checkpoint::load::<B>(&dir, None, &device)
                .with_context(|| format!("loading checkpoint {}", dir.display()))?;
            let from = if how.is_empty() {
                String::new()
            } else {
                format!(" (found in {how})")
            };
            (model, format!("checkpoint {}{from}", dir.display()))
        }
        None => {
            let model_config = checkpoint::load_model_config(&config.model)?;
            (
                model_config.init_seeded::<B>(config.seed, &device),
                format!(
                    "UNTRAINED random init of model `{}` (seed {}): {why_untrained}",
                    config.model, config.seed
                ),
            )
        }
    };
    if !config.rope.is_empty() {
        let mut c = model.config().clone();
        checkpoint::apply_rope_preset(&mut c, &config.rope)?;
        model = model.with_rope(c.rope)?;
    }
    if let Some(memory) = &config.memory {
        model = model
            .with_memory_settings(memory)
            .map_err(|e| Error::config("memory", e.to_string()))?;
    }
    let mc = model.config();
    if mc.n_cameras != rig.n_cams() {
        return Err(Error::Mismatch(format!(
            "the model takes {} cameras, rig `{}` has {}",
            mc.n_cameras,
            rig.name,
            rig.n_cams()
        )));
    }
    if !config.proprio.is_empty() && config.proprio.len() != mc.proprio_dim {
        return Err(Error::config(
            "proprio",
            format!(
                "{} names, the model takes {} proprio values",
                config.proprio.len(),
                mc.proprio_dim
            ),
        ));
    }
    let preprocess = checkpoint::model_preprocess(dir.as_deref(), mc)?;
    let trained_task = checkpoint::model_task(dir.as_deref())?;
    Ok((
        NodeSetup {
            config,
            rig,
            model,
            preprocess,
            trained_task,
            device,
        },
        source,
    ))
}

/// One assembled frame-step handed from the ingest thread to the inference loop.
#[derive(Debug)]
struct Job {
    step: Step<EncodedFrame>,
    proprio: Vec<f32>,
    assembled: Instant,
}

#[derive(Debug, Default)]
struct Mail {
    episode: Option<String>,
    job: Option<Job>,
    superseded: u64,
}

/// The one-slot hand-over between the ingest thread and the inference loop.
#[derive(Debug, Default)]
struct Mailbox {
    mail: Mutex<Mail>,
    ready: Condvar,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, Mail> {
        self.mail.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn post_episode(&self, instruction: String) {
        let mut m = self.lock();
        if m.job.take().is_some() {
            m.superseded += 1;
        }
        m.episode = Some(instruction);
        drop(m);
        self.ready.notify_all();
    }

    fn post_job(&self, job: Job) {
        let mut m = self.lock();
        if m.job.replace(job).is_some() {
            m.superseded += 1;
        }
        drop(m);
        self.ready.notify_all();
    }

    fn take(&self, timeout: Duration) -> (Option<String>, Option<Job>) {
        let mut m = self.lock();
        if m.episode.is_none() && m.job.is_none() {
            m = self
                .ready
                .wait_timeout(m, timeout)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        (m.episode.take(), m.job.take())
    }
}

/// Ingest-side counters shared with the inference loop's reports.
#[derive(Debug, Default, Clone)]
struct IngestCounters {
    sync: Vec<vision::CameraStats>,
    /// Sync stats of assemblers replaced at episode starts / restarts, summed.
    joints: u64,
    proprio_stale: u64,
    proprio_missing_names: u64,
    proprio_non_finite: u64,
    instructions: u64,
    steps_assembled: u64,
    steps_without_cameras: u64,
    restarts: u64,
}

fn add_camera_stats(into: &mut [vision::CameraStats], from: &[vision::CameraStats]) {
    for (a, b) in into.iter_mut().zip(from) {
        a.received += b.received;
        a.matched += b.matched;
        a.held += b.held;
        a.missing += b.missing;
        a.unused += b.unused;
        a.out_of_order += b.out_of_order;
        a.duplicate += b.duplicate;
        a.too_old += b.too_old;
    }
}

/// The ingest thread's state.
struct Ingest {
    config: NodeConfig,
    rig: Rig,
    robot_id: String,
    /// The synchronizer's time (frames' time base): the newest joint stamp plus the tolerance
    /// (clock `joints`) or the newest input stamp plus the wall time since (clock `source`).
    now_ns: u64,
    assembler: StepAssembler<EncodedFrame>,
    /// Newest stamp per stream: cameras by index, then joints.
    newest: Vec<Option<u64>>,
    /// Newest input stamp and the wall time it arrived (for the `source` clock).
    base: Option<(u64, Instant)>,
    joints: VecDeque<(u64, Vec<f32>)>,
    last_proprio: Vec<f32>,
    counters: Arc<Mutex<IngestCounters>>,
    /// Sync stats of replaced assemblers.
    retired: Vec<vision::CameraStats>,
    mailbox: Arc<Mailbox>,
    proprio_dim: usize,
    started_episode: bool,
}

impl Ingest {
    fn new_assembler(rig: &Rig) -> Result<StepAssembler<EncodedFrame>> {
        Ok(StepAssembler::new(&rig.sync, rig.n_cams())?)
    }

    /// Replaces the synchronizer (episode start, restart), keeping its counters.
    fn reset_sync(&mut self) -> Result<()> {
        add_camera_stats(&mut self.retired, &self.assembler.stats().cameras);
        self.assembler = Self::new_assembler(&self.rig)?;
        self.joints.clear();
        Ok(())
    }

    /// Checks a stream's stamp for a restart; returns whether one was detected.
    fn check_restart(&mut self, stream: usize, stamp: u64) -> Result<bool> {
        let threshold = NodeConfig::ns(self.config.restart_ms);
        let back = self
            .newest
            .get(stream)
            .copied()
            .flatten()
            .is_some_and(|n| stamp.saturating_add(threshold) <= n);
        if back {
            tracing::warn!(
                stream,
                stamp,
                "input stamps jumped back: publisher restart, resetting sync"
            );
            self.newest.iter_mut().for_each(|n| *n = None);
            self.base = None;
            // The old time base is gone: until the restarted stream's first joint state
            // (clock `joints`) or its first stamp (clock `source`) nothing is due.
            self.now_ns = 0;
            self.reset_sync()?;
            self.lock_counters().restarts += 1;
        }
        if let Some(n) = self.newest.get_mut(stream) {
            *n = Some(n.map_or(stamp, |n| n.max(stamp)));
        }
        if self.base.is_none_or(|(s, _)| stamp > s) {
            self.base = Some((stamp, Instant::now()));
        }
        Ok(back)
    }

    fn lock_counters(&self) -> MutexGuard<'_, IngestCounters> {
        self.counters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn handle(&mut self, message: transport::pubsub::Received) -> Result<()> {
        let robot_matches = |r: &str| r == self.robot_id;
        match (&message.topic, message.message) {
            (Topic::Instruction { robot }, AnyMessage::String(StringMsg { data }))
                if robot_matches(robot) =>
            {
                self.reset_sync()?;
                self.started_episode = true;
                self.lock_counters().instructions += 1;
                self.mailbox.post_episode(data);
            }
            (Topic::Camera { robot, name }, msg) if robot_matches(robot) => {
                let Some(cam) = self.rig.index_of(name) else {
                    tracing::debug!(name, "frame of a camera outside the rig");
                    return Ok(());
                };
                let (stamp, frame) = match adapt::frame(msg) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return Ok(()),
                    Err(encoding) => {
                        tracing::warn!(encoding, "unsupported raw encoding");
                        return Ok(());
                    }
                };
                self.check_restart(cam, stamp)?;
                if !self.started_episode {
                    self.started_episode = true;
                    self.mailbox
                        .post_episode(self.config.default_instruction.clone());
                }
                self.assembler.push(cam, stamp, frame)?;
            }
            (Topic::Joints { robot }, AnyMessage::JointState(js)) if robot_matches(robot) => {
                let stamp = js.header.stamp.as_nanos();
                let stream = self.rig.n_cams();
                self.check_restart(stream, stamp)?;
                let proprio = adapt::proprio(&js, &self.config.proprio, self.proprio_dim);
                let finite = proprio.is_finite();
                {
                    let mut c = self.lock_counters();
                    c.joints += 1;
                    c.proprio_missing_names += proprio.missing;
                    c.proprio_non_finite += u64::from(!finite);
                }
                if finite {
                    self.joints.push_back((stamp, proprio.values));
                    while self.joints.len() > 64 {
                        self.joints.pop_front();
                    }
                } else {
                    tracing::warn!(stamp, "joint state with a non-finite proprio value dropped");
                }
                if self.config.clock == ClockMode::Joints {
                    let tolerance = NodeConfig::ns(self.rig.sync.tolerance_ms);
                    self.now_ns = stamp.saturating_add(tolerance);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The proprio for a tick: the newest joint state stamped within tolerance after the tick
    /// or earlier; the last one used when none qualifies (counted stale).
    fn proprio_for(&mut self, tick: u64) -> Vec<f32> {
        let tolerance = NodeConfig::ns(self.rig.sync.tolerance_ms);
        let limit = tick.saturating_add(tolerance);
        let fresh = self
            .joints
            .iter()
            .rev()
            .find(|(s, _)| *s <= limit && s.saturating_add(tolerance) >= tick);
        match fresh {
            Some((_, v)) => self.last_proprio.clone_from(v),
            None => self.lock_counters().proprio_stale += 1,
        }
        self.last_proprio.clone()
    }

    /// Decides due ticks and posts the steps.
    fn poll(&mut self) {
        if self.config.clock == ClockMode::Source
            && let Some((stamp, at)) = self.base
        {
            let elapsed = u64::try_from(at.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.now_ns = stamp.saturating_add(elapsed);
        }
        while let Some(step) = self.assembler.poll(self.now_ns) {
            let all_missing = step.slots.iter().all(Slot::is_missing);
            {
                let mut c = self.lock_counters();
                c.steps_assembled += 1;
                if all_missing {
                    c.steps_without_cameras += 1;
                }
            }
            if all_missing {
                continue;
            }
            let proprio = self.proprio_for(step.tick_ns);
            self.mailbox.post_job(Job {
                step,
                proprio,
                assembled: Instant::now(),
            });
        }
        let mut sync = self.retired.clone();
        add_camera_stats(&mut sync, &self.assembler.stats().cameras);
        self.lock_counters().sync = sync;
    }
}

fn ingest_loop(mut ingest: Ingest, subscriber: &Subscriber, shutdown: &AtomicBool) -> Result<()> {
    while !shutdown.load(Ordering::SeqCst) {
        if let Some(message) = subscriber.recv_timeout(Duration::from_millis(5)) {
            ingest.handle(message)?;
            // Take everything already buffered before deciding ticks.
            while let Some(m) = subscriber.inbox().try_recv() {
                ingest.handle(m)?;
            }
        }
        ingest.poll();
    }
    Ok(())
}

/// Live view of a running node (for displays and tests).
#[derive(Debug, Clone, Default)]
pub struct NodeMonitor {
    report: Arc<Mutex<NodeReport>>,
    subscribed: Arc<AtomicBool>,
}

impl NodeMonitor {
    /// The latest report.
    pub fn report(&self) -> NodeReport {
        self.report
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, report: NodeReport) {
        *self.report.lock().unwrap_or_else(PoisonError::into_inner) = report;
    }

    /// Whether the node has subscribed to its inputs (after its model and cache are ready). A
    /// driver that publishes before this may lose messages to a node that is not listening
    /// yet, even when another subscriber (a recorder) makes its publishers look matched.
    pub fn subscribed(&self) -> bool {
        self.subscribed.load(Ordering::SeqCst)
    }
}

/// The inference loop's state.
struct Inference<'a, B: Backend> {
    setup: &'a NodeSetup<B>,
    stream: runtime::model::Stream<B>,
    pipeline: VisionPipeline,
    present: Vec<bool>,
    hists: StageHists,
    report: NodeReport,
    decode_errors: Vec<u64>,
    sequence: u64,
    episode_active: bool,
    last_step: Option<Instant>,
}

impl<B: Backend> Inference<'_, B> {
    fn start_episode(&mut self, instruction: &str) -> Result<()> {
        let max = self.setup.model.config().max_instruction_bytes;
        let mut text = instruction;
        if text.len() > max {
            let mut end = max;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            tracing::warn!(len = text.len(), max, "instruction truncated");
            text = &text[..end];
        }
        self.setup.model.start_episode(text, &mut self.stream)?;
        self.report.episodes += 1;
        self.report.episode_steps = 0;
        self.episode_active = true;
        tracing::info!(
            episode = self.report.episodes,
            instruction = text,
            "episode started"
        );
        Ok(())
    }

    fn step(&mut self, job: Job, actions: &TopicPublisher<ActionChunk>) -> Result<()> {
        let taken = Instant::now();
        self.hists
            .queue
            .record(duration_ns(taken.duration_since(job.assembled)));
        if !self.episode_active {
            let text = self.setup.config.default_instruction.clone();
            self.start_episode(&text)?;
        }
        let t0 = Instant::now();
        for (cam, err) in self.pipeline.process_step(&job.step) {
            tracing::warn!(cam, error = %err, "frame failed to decode; camera masked for this step");
            if let Some(c) = self.decode_errors.get_mut(cam) {
                *c += 1;
            }
        }
        let patches = self.pipeline.patches();
        for (p, m) in self.present.iter_mut().zip(patches.missing()) {
            *p = !m;
        }
        let t1 = Instant::now();
        self.hists.vision.record(duration_ns(t1 - t0));
        let out = self.setup.model.forward_step(
            &StepInput {
                patches: patches.data(),
                camera_present: &self.present,
                proprio: &job.proprio,
            },
            &mut self.stream,
        );
        let t2 = Instant::now();
        self.hists.model.record(duration_ns(t2 - t1));
        self.update_cache();
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                self.report.model_errors += 1;
                tracing::error!(error = %e, "model step failed; no action for this step");
                return Ok(());
            }
        };
        let msg = adapt::action_message(out.action, job.step.tick_ns, self.sequence);
        self.sequence += 1;
        if let Err(e) = actions.publish(&msg) {
            self.report.publish_errors += 1;
            tracing::error!(error = %e, "action publish failed; the robot gets no chunk for this step");
        }
        let t3 = Instant::now();
        self.hists.publish.record(duration_ns(t3 - t2));
        self.hists
            .total
            .record(duration_ns(t3.duration_since(job.assembled)));
        self.report.steps += 1;
        self.report.episode_steps += 1;
        self.last_step = Some(t3);
        Ok(())
    }

    fn update_cache(&mut self) {
        let cache = self.stream.cache();
        let c = &mut self.report.cache;
        c.bytes = cache.bytes();
        c.max_bytes = c.max_bytes.max(c.bytes);
        c.budget = cache.budget();
        c.tokens = cache.len();
        c.frames = cache.frames();
        c.frames_evicted = cache.stats().frames_evicted;
        if let Some(bank) = self.stream.memory() {
            c.memory_bytes = bank.bytes();
            c.memory_budget = bank.budget();
            c.memory_tokens = bank.len();
            // The bank's entries are in age order: the first is the oldest.
            c.memory_oldest_age = self
                .stream
                .memory_entries()
                .next()
                .map_or(0, |e| self.stream.steps().saturating_sub(e.step + 1));
        }
        if c.bytes > c.budget || c.memory_bytes > c.memory_budget {
            c.over_budget_steps += 1;
            tracing::error!(bytes = c.bytes, budget = c.budget, "KV cache over budget");
        }
    }

    fn refresh(&mut self, ingest: &IngestCounters, superseded: u64, sub: SubscriberStats) {
        let r = &mut self.report;
        r.latency = self.hists.summary();
        let i = &mut r.input;
        i.subscriber = sub;
        i.cameras = self
            .setup
            .rig
            .cameras
            .iter()
            .enumerate()
            .map(|(k, cam)| {
                let s = ingest.sync.get(k).cloned().unwrap_or_default();
                CameraReport {
                    name: cam.name.clone(),
                    received: s.received,
                    matched: s.matched,
                    held: s.held,
                    missing: s.missing,
                    unused: s.unused,
                    dropped: s.dropped(),
                    decode_errors: self.decode_errors.get(k).copied().unwrap_or(0),
                }
            })
            .collect();
        i.joints = ingest.joints;
        i.proprio_stale = ingest.proprio_stale;
        i.proprio_missing_names = ingest.proprio_missing_names;
        i.proprio_non_finite = ingest.proprio_non_finite;
        i.instructions = ingest.instructions;
        i.steps_assembled = ingest.steps_assembled;
        i.steps_superseded = superseded;
        i.steps_without_cameras = ingest.steps_without_cameras;
        i.restarts = ingest.restarts;
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The node's subscriber and publishers, in edgevla's key space or as a ROS 2 node.
struct Endpoints {
    subscriber: Subscriber,
    actions: TopicPublisher<ActionChunk>,
    status: TopicPublisher<StringMsg>,
    /// ROS 2 mode: the node's and its subscriptions' liveliness tokens (held to stay in the
    /// graph).
    _graph: Option<(Ros2Node, Vec<zenoh::liveliness::LivelinessToken>)>,
}

/// ROS 2 mode: the node announced in the graph, one subscription per topic of `ros2` (every
/// rig camera must have one) with its liveliness token, and the action and status
/// publishers.
fn ros2_endpoints(
    session: &Session,
    config: &NodeConfig,
    ros2: &Ros2Topics,
    rig: &Rig,
    clock: Arc<dyn transport::clock::Clock>,
) -> Result<Endpoints> {
    use transport::msg::MessageKind;
    use transport::ros2::{EntityKind, Qos};
    let robot = config.robot_id.clone();
    let mut topics: Vec<(&str, Topic, MessageKind, Qos)> = Vec::new();
    for camera in &rig.cameras {
        let name = &camera.name;
        let topic = ros2.cameras.get(name).ok_or_else(|| {
            Error::config(
                "ros2.cameras",
                format!("no topic for the rig's camera {name:?}"),
            )
        })?;
        topics.push((
            topic,
            Topic::Camera {
                robot: robot.clone(),
                name: name.clone(),
            },
            MessageKind::CompressedImage,
            Qos::SENSOR_DATA,
        ));
    }
    if let Some(extra) = ros2
        .cameras
        .keys()
        .find(|c| !rig.cameras.iter().any(|cam| &cam.name == *c))
    {
        return Err(Error::config(
            format!("ros2.cameras.{extra}"),
            "the rig has no camera of that name",
        ));
    }
    topics.push((
        &ros2.joints,
        Topic::Joints {
            robot: robot.clone(),
        },
        MessageKind::JointState,
        Qos::DEFAULT,
    ));
    topics.push((
        &ros2.instruction,
        Topic::Instruction { robot },
        MessageKind::String,
        Qos::DEFAULT,
    ));
    let node = Ros2Node::declare(session, ros2.identity())?;
    let routes = Routes::ros2(
        ros2.domain_id,
        topics
            .iter()
            .map(|(name, topic, _, _)| (*name, topic.clone())),
    )?;
    let subscriber = Subscriber::declare_ros2(session, routes, config.subscriber.clone(), clock)?;
    let tokens = topics
        .iter()
        .map(|(name, _, kind, qos)| {
            node.announce(session, EntityKind::Subscription, name, *kind, qos)
                .map(|(token, _)| token)
        })
        .collect::<transport::Result<Vec<_>>>()?;
    let actions = TopicPublisher::Ros2(Ros2Publisher::declare(
        session,
        &node,
        &ros2.action,
        &Qos::DEFAULT,
        StreamClass::Actions,
    )?);
    let status = TopicPublisher::Ros2(Ros2Publisher::declare(
        session,
        &node,
        &ros2.status,
        &Qos::DEFAULT,
        StreamClass::Telemetry,
    )?);
    Ok(Endpoints {
        subscriber,
        actions,
        status,
        _graph: Some((node, tokens)),
    })
}

/// How often the node samples its zenoh links ([`stats::LinkReport`]).
const LINK_SAMPLE: Duration = Duration::from_millis(100);

/// Runs the node on `session` until `shutdown` is set: subscribes to the robot's keys,
/// publishes actions and status, and returns the final report. `monitor` is updated after
/// every step and status.
///
/// # Errors
/// Setup failures (subscriptions, publishers, a cache the budget cannot hold) and a failed
/// ingest thread; bad inputs, failed model steps and failed publishes are counted, not errors.
pub fn run_node<B: Backend>(
    session: &Session,
    setup: &NodeSetup<B>,
    shutdown: &AtomicBool,
    monitor: &NodeMonitor,
) -> Result<NodeReport> {
    let config = &setup.config;
    let keys = KeySpace::new(&config.prefix, &config.robot_id)?;
    // Everything slow is prepared before subscribing (the stream copies the model's weights
    // for the host path): frames that arrive while nobody drains the subscriber's ring could
    // be superseded before the first step.
    let cache_config = config.kv_cache.unwrap_or(setup.model.config().kv_cache);
    let stream = setup
        .model
        .new_stream(&cache_config, &setup.device)
        .context("KV cache")?;
    let pipeline = VisionPipeline::for_rig(&setup.rig, &setup.preprocess)?;
    let wall: Arc<dyn transport::clock::Clock> = Arc::new(transport::clock::SystemClock::new());
    let Endpoints {
        subscriber,
        actions,
        status,
        _graph,
    } = match &config.ros2 {
        None => Endpoints {
            subscriber: Subscriber::declare(
                session,
                &keys.all(),
                &config.prefix,
                config.subscriber.clone(),
                Arc::clone(&wall),
            )?,
            actions: TopicPublisher::Native(Publisher::declare(
                session,
                &keys.action(),
                StreamClass::Actions,
            )?),
            status: TopicPublisher::Native(Publisher::declare(
                session,
                &keys.status(),
                StreamClass::Telemetry,
            )?),
            _graph: None,
        },
        Some(ros2) => ros2_endpoints(session, config, ros2, &setup.rig, Arc::clone(&wall))?,
    };
    monitor.subscribed.store(true, Ordering::SeqCst);
    let n_cams = setup.rig.n_cams();
    let mailbox = Arc::new(Mailbox::default());
    let counters = Arc::new(Mutex::new(IngestCounters {
        sync: vec![vision::CameraStats::default(); n_cams],
        ..IngestCounters::default()
    }));
    let ingest = Ingest {
        config: config.clone(),
        rig: setup.rig.clone(),
        robot_id: config.robot_id.clone(),
        assembler: Ingest::new_assembler(&setup.rig)?,
        now_ns: 0,
        newest: vec![None; n_cams + 1],
        base: None,
        joints: VecDeque::new(),
        last_proprio: vec![0.0; setup.model.config().proprio_dim],
        counters: Arc::clone(&counters),
        retired: vec![vision::CameraStats::default(); n_cams],
        mailbox: Arc::clone(&mailbox),
        proprio_dim: setup.model.config().proprio_dim,
        started_episode: false,
    };
    let mut inf = Inference {
        setup,
        stream,
        pipeline,
        present: vec![false; n_cams],
        hists: StageHists::default(),
        report: NodeReport::default(),
        decode_errors: vec![0; n_cams],
        sequence: 0,
        episode_active: false,
        last_step: None,
    };
    inf.report.cache.budget = inf.stream.cache().budget();
    // The report's input counters, from the ingest thread's and the subscriber's.
    let refresh = |inf: &mut Inference<'_, B>| {
        let ingest_counters = counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let superseded = mailbox.lock().superseded;
        inf.refresh(&ingest_counters, superseded, subscriber.stats());
    };
    let stop_ingest = AtomicBool::new(false);
    let status_every = Duration::from_nanos(NodeConfig::ns(config.status_ms));
    let stall_after = Duration::from_nanos(NodeConfig::ns(config.stall_ms));
    let result = std::thread::scope(|scope| -> Result<()> {
        let ingest_thread = std::thread::Builder::new()
            .name("edgevla-ingest".into())
            .spawn_scoped(scope, || ingest_loop(ingest, &subscriber, &stop_ingest))
            .map_err(|e| Error::io("spawning the ingest thread", e))?;
        let mut last_status = Instant::now();
        let mut last_links: Option<Instant> = None;
        let mut steps_at_status = 0u64;
        let mut outcome = Ok(());
        while !shutdown.load(Ordering::SeqCst) {
            if ingest_thread.is_finished() {
                break;
            }
            let (episode, job) = mailbox.take(Duration::from_millis(50));
            let stepped = job.is_some();
            let r = (|| -> Result<()> {
                if let Some(text) = episode {
                    inf.start_episode(&text)?;
                }
                if let Some(job) = job {
                    inf.step(job, &actions)?;
                }
                Ok(())
            })();
            if let Err(e) = r {
                outcome = Err(e);
                break;
            }
            // State.
            let now = Instant::now();
            let stalled = inf.last_step.is_some_and(|t| now - t >= stall_after);
            let state = match (inf.last_step, stalled) {
                (None, _) => NodeState::Waiting,
                (Some(_), true) => NodeState::Stalled,
                (Some(_), false) => NodeState::Running,
            };
            if state == NodeState::Stalled && inf.report.state != NodeState::Stalled {
                inf.report.input.stalls += 1;
                tracing::warn!("no frame-step for {:?}: stalled", stall_after);
            }
            inf.report.state = state;
            if last_links.is_none_or(|t| now - t >= LINK_SAMPLE) {
                let info = session.info();
                let routers = info.routers_zid().wait().count();
                let peers = info.peers_zid().wait().count();
                match inf.report.links.sample(routers, peers) {
                    Some(stats::LinkChange::Lost) => {
                        tracing::warn!("lost every zenoh link (router or peers); waiting for them");
                    }
                    Some(stats::LinkChange::Regained) => {
                        tracing::info!(routers, peers, "zenoh links back");
                    }
                    None => {}
                }
                last_links = Some(now);
            }
            let status_due = now - last_status >= status_every;
            if stepped || status_due {
                refresh(&mut inf);
            }
            if status_due {
                let secs = (now - last_status).as_secs_f64();
                inf.report.rate_hz = (inf.report.steps - steps_at_status) as f64 / secs;
                steps_at_status = inf.report.steps;
                last_status = now;
                let text = serde_json::to_string(&inf.report)?;
                if let Err(e) = status.publish(&StringMsg { data: text }) {
                    inf.report.publish_errors += 1;
                    tracing::warn!(error = %e, "status publish failed");
                }
            }
            if stepped || status_due {
                monitor.set(inf.report.clone());
            }
        }
        stop_ingest.store(true, Ordering::SeqCst);
        match ingest_thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => outcome = outcome.and(Err(e).context("ingest thread")),
            Err(_) => {
                outcome = outcome.and(Err(Error::Worker("the ingest thread panicked".into())));
            }
        }
        outcome
    });
    refresh(&mut inf);
    inf.report.state = NodeState::Stopped;
    monitor.set(inf.report.clone());
    result?;
    Ok(inf.report)
}
