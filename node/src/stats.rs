//! Latency histograms of constant size (a node runs for days: no per-step growth) and the
//! report types the node publishes as its status.

use serde::Serialize;
use transport::pubsub::SubscriberStats;

/// A latency histogram of constant size (`hdrhistogram`, 2 significant digits: a quantile is
/// within 1% of the true value) from 1 µs to an hour; the mean, maximum and latest sample
/// are exact.
#[derive(Clone, Debug)]
pub struct LatencyHist {
    hist: hdrhistogram::Histogram<u64>,
    sum_ns: f64,
    max_ns: u64,
    last_ns: u64,
}

/// Smallest and largest durations the histogram resolves, ns (values outside are clamped).
const LOWEST_NS: u64 = 1_000;
const HIGHEST_NS: u64 = 3_600_000_000_000;

impl Default for LatencyHist {
    // Creation fails only for bounds below 1, a highest below twice the lowest or more than 5
    // significant digits; the constants are none of these.
    #[allow(clippy::expect_used)]
    fn default() -> Self {
        Self {
            hist: hdrhistogram::Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, 2)
                .expect("constant histogram bounds are valid"),
            sum_ns: 0.0,
            max_ns: 0,
            last_ns: 0,
        }
    }
}

impl LatencyHist {
    /// Records one duration.
    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns.clamp(LOWEST_NS, HIGHEST_NS));
        self.sum_ns += ns as f64;
        self.max_ns = self.max_ns.max(ns);
        self.last_ns = ns;
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The `q` quantile (0..=1) in nanoseconds (within 1%), capped at the maximum seen; 0 when
    /// empty.
    pub fn quantile_ns(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        (self.hist.value_at_quantile(q.clamp(0.0, 1.0)) as f64).min(self.max_ns as f64)
    }

    /// Summary in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        let ms = |ns: f64| ns / 1e6;
        let n = self.count();
        LatencySummary {
            count: n,
            last_ms: ms(self.last_ns as f64),
            mean_ms: if n == 0 {
                0.0
            } else {
                ms(self.sum_ns / n as f64)
            },
            p50_ms: ms(self.quantile_ns(0.5)),
            p99_ms: ms(self.quantile_ns(0.99)),
            max_ms: ms(self.max_ns as f64),
        }
    }
}

/// One stage's latency, milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// The latest sample.
    pub last_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Median (within 1%).
    pub p50_ms: f64,
    /// 99th percentile (within 1%).
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

/// The stages of one frame-step, each timed separately.
#[derive(Clone, Debug, Default)]
pub struct StageHists {
    /// Step assembled (ingest thread) → taken by the inference loop.
    pub queue: LatencyHist,
    /// Decode + preprocess of every camera.
    pub vision: LatencyHist,
    /// `Vla::forward_step` (cache eviction, attention, action head).
    pub model: LatencyHist,
    /// CDR encode + zenoh put of the action chunk.
    pub publish: LatencyHist,
    /// Step assembled → action published.
    pub total: LatencyHist,
}

impl StageHists {
    /// Summaries of every stage.
    pub fn summary(&self) -> StageLatency {
        StageLatency {
            queue: self.queue.summary(),
            vision: self.vision.summary(),
            model: self.model.summary(),
            publish: self.publish.summary(),
            total: self.total.summary(),
        }
    }
}

/// Latency per stage (see [`StageHists`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StageLatency {
    /// Waiting for the inference loop.
    pub queue: LatencySummary,
    /// Decode + preprocess.
    pub vision: LatencySummary,
    /// Model step.
    pub model: LatencySummary,
    /// Action publish.
    pub publish: LatencySummary,
    /// End to end (assembled → published).
    pub total: LatencySummary,
}

/// What the node is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// No input yet.
    #[default]
    Waiting,
    /// Producing actions.
    Running,
    /// Inputs stopped (no frame-step for `stall_ms`).
    Stalled,
    /// Shut down.
    Stopped,
}

/// The KV cache now and at its fullest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheReport {
    /// Bytes held now.
    pub bytes: u64,
    /// Largest `bytes` after any step so far.
    pub max_bytes: u64,
    /// The hard budget.
    pub budget: u64,
    /// Tokens held now (sinks included).
    pub tokens: usize,
    /// Frame-steps held now.
    pub frames: usize,
    /// Frame-steps evicted in this episode.
    pub frames_evicted: u64,
    /// Steps after which the cache held more than its budget (must stay 0).
    pub over_budget_steps: u64,
    /// The model's memory bank (models with a memory; 0 otherwise): bytes held now.
    pub memory_bytes: u64,
    /// The memory bank's byte bound.
    pub memory_budget: u64,
    /// Memory tokens (frame-steps) the bank holds now.
    pub memory_tokens: usize,
    /// Age in frame-steps of the oldest memory token held now (0 without one): at most the
    /// bank's length − 1 under a FIFO bank, more under eviction by reads.
    pub memory_oldest_age: u64,
}

/// Per-camera input counters (sync and decode).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CameraReport {
    /// Camera name.
    pub name: String,
    /// Frames that reached the synchronizer.
    pub received: u64,
    /// Frames used fresh in a step.
    pub matched: u64,
    /// Steps that reused an older frame (policy `hold`).
    pub held: u64,
    /// Steps without a frame (masked).
    pub missing: u64,
    /// Frames no step used (a newer one won, or they fell between ticks).
    pub unused: u64,
    /// Frames dropped at arrival (out of order, duplicate, too old).
    pub dropped: u64,
    /// Frames that failed to decode (the camera is masked for that step).
    pub decode_errors: u64,
}

/// Input-side counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InputReport {
    /// The zenoh subscriber: samples, ring overflows, malformed payloads.
    pub subscriber: SubscriberStats,
    /// Per camera, rig order.
    pub cameras: Vec<CameraReport>,
    /// Joint states received.
    pub joints: u64,
    /// Steps whose proprio came from an older joint state (none within tolerance).
    pub proprio_stale: u64,
    /// Proprio names missing from a joint state (read as 0).
    pub proprio_missing_names: u64,
    /// Joint states with a NaN or infinite value among the proprio channels: their values are
    /// dropped (the step uses the last good proprio, counted stale), their stamp still counts.
    pub proprio_non_finite: u64,
    /// Instructions received (episode starts).
    pub instructions: u64,
    /// Frame-steps assembled by the synchronizer.
    pub steps_assembled: u64,
    /// Assembled steps replaced by a newer one before inference took them (slow inference).
    pub steps_superseded: u64,
    /// Steps with no camera at all: not run (the robot gets no action for them).
    pub steps_without_cameras: u64,
    /// Publisher restarts detected (an input stamped `restart_ms` behind its stream).
    pub restarts: u64,
    /// Times the node went stalled.
    pub stalls: u64,
}

/// The node's status (published as JSON on `<prefix>/<id>/status`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeReport {
    /// State.
    pub state: NodeState,
    /// Episodes started.
    pub episodes: u64,
    /// Model steps that produced an action chunk (published, or counted in `publish_errors`).
    pub steps: u64,
    /// Steps in the current episode.
    pub episode_steps: u64,
    /// Actions per second over the last status period.
    pub rate_hz: f64,
    /// Model steps that failed (logged; no action for that step).
    pub model_errors: u64,
    /// Action chunks and status messages zenoh failed to publish (counted and logged; the
    /// node goes on with the next step).
    pub publish_errors: u64,
    /// Latency per stage.
    pub latency: StageLatency,
    /// KV cache.
    pub cache: CacheReport,
    /// Inputs.
    pub input: InputReport,
    /// zenoh links.
    pub links: LinkReport,
}

/// The node's zenoh links (sampled every 100 ms): a router or the robot's peers lost and
/// found again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LinkReport {
    /// Routers connected now (client mode: 0 or 1).
    pub routers: usize,
    /// Peers connected now.
    pub peers: usize,
    /// Times the node went from some link to none (a router restart, the robot's process gone).
    pub lost: u64,
    /// Times it went from none back to some, after a loss.
    pub regained: u64,
}

/// A change [`LinkReport::sample`] counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkChange {
    /// From some link to none.
    Lost,
    /// From none back to some, after a loss.
    Regained,
}

impl LinkReport {
    /// Takes a new sample of the link counts; counts and returns a loss or a regain.
    pub fn sample(&mut self, routers: usize, peers: usize) -> Option<LinkChange> {
        let was = self.routers + self.peers > 0;
        let is = routers + peers > 0;
        self.routers = routers;
        self.peers = peers;
        if was && !is {
            self.lost += 1;
            Some(LinkChange::Lost)
        } else if !was && is && self.lost > self.regained {
            self.regained += 1;
            Some(LinkChange::Regained)
        } else {
            None
        }
    }
}

/// Resident set size of this process in bytes (the `memory-stats` crate: the OS's own count,
/// at its page size); `None` where the platform does not say.
pub fn rss_bytes() -> Option<u64> {
    memory_stats::memory_stats().map(|m| m.physical_mem as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_samples_count_losses_and_regains() {
        let mut links = LinkReport::default();
        assert_eq!(links.sample(0, 0), None, "no link yet is not a loss");
        assert_eq!(links.sample(1, 0), None, "the first link is not a regain");
        assert_eq!(links.sample(1, 2), None);
        assert_eq!(links.sample(0, 0), Some(LinkChange::Lost));
        assert_eq!(links.sample(0, 0), None);
        assert_eq!(links.sample(0, 1), Some(LinkChange::Regained));
        assert_eq!(
            (links.lost, links.regained, links.routers, links.peers),
            (1, 1, 0, 1)
        );
    }

    /// On x86-64 Linux (4 KiB pages) the resident set agrees with /proc/self/statm's page
    /// count, within 10% (the two readings are moments apart).
    #[test]
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn rss_matches_statm() {
        let rss = rss_bytes().expect("rss on linux") as f64;
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: f64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("resident pages");
        let page = 4096.0;
        assert!(
            (rss - pages * page).abs() <= 0.1 * pages * page,
            "{rss} vs {}",
            pages * page
        );
    }

    /// Quantiles of a known distribution land within the histogram's 1% precision (asserted at
    /// 2%); mean and max exact; values outside the range are clamped, not lost.
    #[test]
    fn quantiles_within_two_percent() {
        let mut h = LatencyHist::default();
        for ms in 1..=100u64 {
            h.record(ms * 1_000_000);
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() <= 50.0 * 0.02, "{}", s.p50_ms);
        assert!((s.p99_ms - 99.0).abs() <= 99.0 * 0.02, "{}", s.p99_ms);
        assert!((s.max_ms - 100.0).abs() < 1e-9);
        assert!((s.mean_ms - 50.5).abs() < 1e-9);
        assert_eq!(LatencyHist::default().summary().p99_ms, 0.0);
        let mut edges = LatencyHist::default();
        edges.record(0);
        edges.record(u64::MAX);
        assert_eq!(edges.count(), 2);
    }
}
