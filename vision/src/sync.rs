//! Multi-camera time sync: [`StepAssembler`] turns per-camera frame streams into one
//! [`Step`] per control tick.
//!
//! # The rules
//! - Ticks lie on a fixed grid `start + k * period` (`period = 1 / sync.rate_hz`); `start` is
//!   given ([`StepAssembler::with_start`]) or is the stamp of the first accepted frame.
//! - A frame *matches* tick `t` when `|stamp - t| <= tolerance`; a step takes, per camera, the
//!   newest matching frame. Older matching frames are *unused*.
//! - Tick `t` is decided when the caller's time (`now_ns`, given to each
//!   [`poll`](StepAssembler::poll)) reaches `t + tolerance`, or earlier when every
//!   camera has already delivered a frame stamped at or after `t + tolerance` (nothing newer can
//!   match: frames of one camera are accepted only in stamp order). This makes a replay fed as
//!   fast as possible produce the same steps as one fed in real time.
//! - A camera with no matching frame follows [`MissingPolicy`]: `hold` repeats the last frame
//!   used for it (with its age) if that is at most `max_hold_ms` old and marks it missing
//!   otherwise; `mask` marks it missing; `skip` drops the whole step.
//! - A frame is dropped and counted at arrival when its stamp is below the camera's newest
//!   accepted stamp (*out of order*), equal to it (*duplicate*), or within a window already
//!   decided (`stamp <= last decided tick + tolerance`: *too old*).
//!
//! All time comes from frame stamps and the `now_ns` each `poll` is given (no clock is held:
//! the caller owns time, live or replayed); nothing here reads the wall clock, so a replay with
//! the same frames and `poll` times yields the same steps.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::VisionError;

/// Nanoseconds on the frames' time base.
pub type Nanos = u64;

/// What to do with a camera that has no frame matching a tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingPolicy {
    /// Repeat the camera's last used frame (with its age) while it is at most `max_hold_ms`
    /// old; mark the camera missing after that.
    #[default]
    Hold,
    /// Emit no step for this tick.
    Skip,
    /// Emit the step with the camera marked missing (the model sees the mask).
    Mask,
}

/// Time-sync settings; a TOML table (`[sync]` in a rig file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Control rate: one step per `1 / rate_hz` seconds.
    pub rate_hz: f64,
    /// A frame matches a tick when its stamp is within this many milliseconds of it.
    pub tolerance_ms: f64,
    /// Missing-camera policy.
    pub missing: MissingPolicy,
    /// Oldest frame `hold` may repeat, milliseconds before the tick.
    pub max_hold_ms: f64,
    /// Frames buffered per camera; the oldest is dropped (counted unused) beyond this.
    pub max_pending: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            rate_hz: 10.0,
            tolerance_ms: 20.0,
            missing: MissingPolicy::Hold,
            max_hold_ms: 500.0,
            max_pending: 16,
        }
    }
}

impl SyncConfig {
    /// Checks the values; `prefix` is the table's key (`sync`).
    ///
    /// # Errors
    /// [`VisionError::Config`] naming the first bad key.
    pub fn validate(&self, prefix: &str) -> Result<(), VisionError> {
        let key = |k: &str| format!("{prefix}.{k}");
        if !(self.rate_hz.is_finite() && self.rate_hz > 0.0 && self.rate_hz <= 10_000.0) {
            return Err(VisionError::config(
                key("rate_hz"),
                format!("must be in (0, 10000] (got {})", self.rate_hz),
            ));
        }
        for (name, v) in [
            ("tolerance_ms", self.tolerance_ms),
            ("max_hold_ms", self.max_hold_ms),
        ] {
            if !(v.is_finite() && (0.0..=3.6e6).contains(&v)) {
                return Err(VisionError::config(
                    key(name),
                    format!("must be in [0, 3600000] (got {v})"),
                ));
            }
        }
        if self.max_pending == 0 {
            return Err(VisionError::config(key("max_pending"), "must be positive"));
        }
        Ok(())
    }

    /// The tick period in nanoseconds (rounded).
    pub fn period_ns(&self) -> Nanos {
        ((1e9 / self.rate_hz).round() as Nanos).max(1)
    }

    fn tolerance_ns(&self) -> Nanos {
        (self.tolerance_ms * 1e6).round() as Nanos
    }

    fn max_hold_ns(&self) -> Nanos {
        (self.max_hold_ms * 1e6).round() as Nanos
    }
}

/// What became of a pushed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Buffered for a coming tick.
    Accepted,
    /// Dropped: older than the camera's newest accepted frame.
    OutOfOrder,
    /// Dropped: same stamp as the camera's newest accepted frame.
    Duplicate,
    /// Dropped: its window was already decided.
    TooOld,
}

/// One camera's entry in a [`Step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot<T> {
    /// A frame matching this tick.
    Fresh {
        /// The frame's stamp.
        stamp_ns: Nanos,
        /// The frame.
        frame: T,
    },
    /// The camera's last used frame, repeated (policy `hold`).
    Held {
        /// The frame's stamp.
        stamp_ns: Nanos,
        /// `tick - stamp`; 0 when the held frame is stamped after the tick (possible only when
        /// the tolerance exceeds half the period).
        age_ns: Nanos,
        /// The frame.
        frame: T,
    },
    /// No frame (policy `mask`, or `hold` past `max_hold_ms`).
    Missing,
}

impl<T> Slot<T> {
    /// The frame, fresh or held.
    pub fn frame(&self) -> Option<&T> {
        match self {
            Self::Fresh { frame, .. } | Self::Held { frame, .. } => Some(frame),
            Self::Missing => None,
        }
    }

    /// The frame's stamp, fresh or held.
    pub fn stamp_ns(&self) -> Option<Nanos> {
        match self {
            Self::Fresh { stamp_ns, .. } | Self::Held { stamp_ns, .. } => Some(*stamp_ns),
            Self::Missing => None,
        }
    }

    /// True for [`Slot::Missing`].
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Missing)
    }
}

/// One frame-step: a slot per camera (by rig index) for one tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step<T> {
    /// Tick number `k` (`tick_ns = start + k * period`).
    pub index: u64,
    /// The tick's time.
    pub tick_ns: Nanos,
    /// One slot per camera.
    pub slots: Vec<Slot<T>>,
}

impl<T> Step<T> {
    /// Per-camera missing mask (true = no frame), as the model consumes it.
    pub fn missing_mask(&self) -> Vec<bool> {
        self.slots.iter().map(Slot::is_missing).collect()
    }
}

/// Per-camera counters. Every received frame is counted once as `out_of_order`, `duplicate`
/// or `too_old`, or else accepted; every accepted frame ends up `matched` (used fresh in a
/// step), `unused` (a newer frame won its window, it fell between windows, its step was
/// skipped, or the buffer overflowed), or is still pending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CameraStats {
    /// Frames pushed.
    pub received: u64,
    /// Frames used fresh in an emitted step.
    pub matched: u64,
    /// Steps that repeated an earlier frame.
    pub held: u64,
    /// Steps that marked the camera missing.
    pub missing: u64,
    /// Accepted frames that no step used.
    pub unused: u64,
    /// Dropped at arrival: older than the newest accepted.
    pub out_of_order: u64,
    /// Dropped at arrival: same stamp as the newest accepted.
    pub duplicate: u64,
    /// Dropped at arrival: window already decided.
    pub too_old: u64,
}

impl CameraStats {
    /// Frames dropped at arrival.
    pub fn dropped(&self) -> u64 {
        self.out_of_order + self.duplicate + self.too_old
    }
}

/// Counters of a [`StepAssembler`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Steps emitted.
    pub steps: u64,
    /// Ticks skipped (policy `skip`).
    pub skipped_steps: u64,
    /// Per camera, by index.
    pub cameras: Vec<CameraStats>,
}

#[derive(Debug)]
struct CameraState<T> {
    pending: VecDeque<(Nanos, T)>,
    newest: Option<Nanos>,
    last_used: Option<(Nanos, T)>,
}

/// Assembles per-camera frames into time-synced [`Step`]s (see the module docs for the rules).
///
/// `T` is whatever the caller carries per frame (an `Arc` of encoded bytes, a decoded image);
/// it is cloned only when a frame is held.
#[derive(Debug)]
pub struct StepAssembler<T> {
    period: Nanos,
    tolerance: Nanos,
    max_hold: Nanos,
    policy: MissingPolicy,
    max_pending: usize,
    next_tick: Option<Nanos>,
    next_index: u64,
    last_decided: Option<Nanos>,
    cams: Vec<CameraState<T>>,
    stats: SyncStats,
}

/// Ticks one `poll` call decides at most (bounds the work when the clock jumps far ahead).
const MAX_TICKS_PER_POLL: usize = 1024;

impl<T: Clone> StepAssembler<T> {
    /// An assembler for `n_cams` cameras; the tick grid starts at the first accepted frame.
    ///
    /// # Errors
    /// [`VisionError::Config`] when `config` is invalid (keys prefixed `sync`) or `n_cams` is 0.
    pub fn new(config: &SyncConfig, n_cams: usize) -> Result<Self, VisionError> {
        config.validate("sync")?;
        if n_cams == 0 {
            return Err(VisionError::config(
                "camera",
                "the assembler needs at least one camera",
            ));
        }
        Ok(Self {
            period: config.period_ns(),
            tolerance: config.tolerance_ns(),
            max_hold: config.max_hold_ns(),
            policy: config.missing,
            max_pending: config.max_pending,
            next_tick: None,
            next_index: 0,
            last_decided: None,
            cams: (0..n_cams)
                .map(|_| CameraState {
                    pending: VecDeque::new(),
                    newest: None,
                    last_used: None,
                })
                .collect(),
            stats: SyncStats {
                cameras: vec![CameraStats::default(); n_cams],
                ..SyncStats::default()
            },
        })
    }

    /// Starts the tick grid at `start_ns` instead of the first accepted frame.
    pub fn with_start(mut self, start_ns: Nanos) -> Self {
        if self.last_decided.is_none() {
            self.next_tick = Some(start_ns);
        }
        self
    }

    /// Counters so far.
    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// The next tick to be decided, once the grid has started.
    pub fn next_tick_ns(&self) -> Option<Nanos> {
        self.next_tick
    }

    /// Frames buffered for camera `cam`.
    pub fn pending(&self, cam: usize) -> usize {
        self.cams.get(cam).map_or(0, |c| c.pending.len())
    }

    /// Offers a frame of camera `cam` stamped `stamp_ns`.
    ///
    /// # Errors
    /// [`VisionError::CameraIndex`] when `cam` is not a camera of this assembler. A frame that is
    /// dropped is not an error: the returned [`Admission`] says why, and the stats count it.
    pub fn push(
        &mut self,
        cam: usize,
        stamp_ns: Nanos,
        frame: T,
    ) -> Result<Admission, VisionError> {
        let n_cams = self.cams.len();
        let (Some(state), Some(stats)) = (self.cams.get_mut(cam), self.stats.cameras.get_mut(cam))
        else {
            return Err(VisionError::CameraIndex { index: cam, n_cams });
        };
        stats.received += 1;
        if let Some(newest) = state.newest {
            if stamp_ns < newest {
                stats.out_of_order += 1;
                return Ok(Admission::OutOfOrder);
            }
            if stamp_ns == newest {
                stats.duplicate += 1;
                return Ok(Admission::Duplicate);
            }
        }
        if self
            .last_decided
            .is_some_and(|t| stamp_ns <= t.saturating_add(self.tolerance))
        {
            stats.too_old += 1;
            return Ok(Admission::TooOld);
        }
        state.newest = Some(stamp_ns);
        state.pending.push_back((stamp_ns, frame));
        if state.pending.len() > self.max_pending {
            state.pending.pop_front();
            stats.unused += 1;
        }
        if self.next_tick.is_none() {
            self.next_tick = Some(stamp_ns);
        }
        Ok(Admission::Accepted)
    }

    /// Decides the ticks due at time `now_ns` (on the frames' time base) and returns the next
    /// emitted step, if any. Call it until it returns `None` (after pushes, and whenever time has
    /// moved). One call decides at most 1024 skipped ticks, so a time that jumps far ahead
    /// cannot stall the caller.
    pub fn poll(&mut self, now_ns: Nanos) -> Option<Step<T>> {
        for _ in 0..MAX_TICKS_PER_POLL {
            let tick = self.next_tick?;
            let window_end = tick.saturating_add(self.tolerance);
            let due = now_ns >= window_end
                || self
                    .cams
                    .iter()
                    .all(|c| c.newest.is_some_and(|n| n >= window_end));
            if !due {
                return None;
            }
            let step = self.decide(tick);
            self.last_decided = Some(tick);
            self.next_tick = Some(tick.saturating_add(self.period));
            self.next_index += 1;
            if step.is_some() {
                return step;
            }
        }
        None
    }

    /// Builds the step for `tick` (or `None` when it is skipped), consuming matched frames.
    fn decide(&mut self, tick: Nanos) -> Option<Step<T>> {
        let window_start = tick.saturating_sub(self.tolerance);
        let window_end = tick.saturating_add(self.tolerance);
        let mut slots = Vec::with_capacity(self.cams.len());
        let mut complete = true;
        for (state, stats) in self.cams.iter_mut().zip(&mut self.stats.cameras) {
            while state
                .pending
                .front()
                .is_some_and(|(s, _)| *s < window_start)
            {
                state.pending.pop_front();
                stats.unused += 1;
            }
            let mut chosen = None;
            while state.pending.front().is_some_and(|(s, _)| *s <= window_end) {
                if chosen.is_some() {
                    stats.unused += 1;
                }
                chosen = state.pending.pop_front();
            }
            let slot = match chosen {
                Some((stamp_ns, frame)) => Slot::Fresh { stamp_ns, frame },
                None => {
                    complete = false;
                    match (&self.policy, &state.last_used) {
                        (MissingPolicy::Hold, Some((stamp, frame)))
                            if tick.saturating_sub(*stamp) <= self.max_hold =>
                        {
                            Slot::Held {
                                stamp_ns: *stamp,
                                age_ns: tick.saturating_sub(*stamp),
                                frame: frame.clone(),
                            }
                        }
                        _ => Slot::Missing,
                    }
                }
            };
            slots.push(slot);
        }
        if !complete && self.policy == MissingPolicy::Skip {
            for (slot, stats) in slots.iter().zip(&mut self.stats.cameras) {
                if matches!(slot, Slot::Fresh { .. }) {
                    stats.unused += 1;
                }
            }
            self.stats.skipped_steps += 1;
            return None;
        }
        for ((slot, state), stats) in slots
            .iter()
            .zip(&mut self.cams)
            .zip(&mut self.stats.cameras)
        {
            match slot {
                Slot::Fresh { stamp_ns, frame } => {
                    stats.matched += 1;
                    state.last_used = Some((*stamp_ns, frame.clone()));
                }
                Slot::Held { .. } => stats.held += 1,
                Slot::Missing => stats.missing += 1,
            }
        }
        self.stats.steps += 1;
        Some(Step {
            index: self.next_index,
            tick_ns: tick,
            slots,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Nanos = 1_000_000;

    fn config(rate_hz: f64, tolerance_ms: f64, missing: MissingPolicy) -> SyncConfig {
        SyncConfig {
            rate_hz,
            tolerance_ms,
            missing,
            max_hold_ms: 150.0,
            max_pending: 16,
        }
    }

    #[test]
    fn two_cameras_hold_mask_skip() {
        // Camera 0 at 0, 100, 200, 300 ms; camera 1 only at 0 and 100 ms; ticks every 100 ms.
        for policy in [
            MissingPolicy::Hold,
            MissingPolicy::Mask,
            MissingPolicy::Skip,
        ] {
            let mut now: Nanos;
            let mut a = StepAssembler::new(&config(10.0, 10.0, policy), 2).unwrap();
            let mut steps = Vec::new();
            for t in [0, 100, 200, 300] {
                now = t * MS;
                a.push(0, t * MS, t).unwrap();
                if t <= 100 {
                    a.push(1, t * MS, t + 1000).unwrap();
                }
                while let Some(s) = a.poll(now) {
                    steps.push(s);
                }
            }
            now = 310 * MS;
            while let Some(s) = a.poll(now) {
                steps.push(s);
            }
            let cam1: Vec<Option<u64>> =
                steps.iter().map(|s| s.slots[1].frame().copied()).collect();
            let ticks: Vec<u64> = steps.iter().map(|s| s.tick_ns / MS).collect();
            let st = &a.stats().cameras[1];
            match policy {
                MissingPolicy::Hold => {
                    // Held at 200 (age 100 ms ≤ 150), missing at 300 (age 200 ms > 150).
                    assert_eq!(ticks, [0, 100, 200, 300]);
                    assert_eq!(cam1, [Some(1000), Some(1100), Some(1100), None]);
                    assert_eq!(
                        steps[2].slots[1],
                        Slot::Held {
                            stamp_ns: 100 * MS,
                            age_ns: 100 * MS,
                            frame: 1100
                        }
                    );
                    assert_eq!((st.matched, st.held, st.missing), (2, 1, 1));
                }
                MissingPolicy::Mask => {
                    assert_eq!(ticks, [0, 100, 200, 300]);
                    assert_eq!(cam1, [Some(1000), Some(1100), None, None]);
                    assert_eq!(steps[3].missing_mask(), [false, true]);
                    assert_eq!((st.matched, st.held, st.missing), (2, 0, 2));
                }
                MissingPolicy::Skip => {
                    assert_eq!(ticks, [0, 100]);
                    assert_eq!(a.stats().skipped_steps, 2);
                    // Camera 0's frames of the skipped ticks count as unused.
                    assert_eq!(a.stats().cameras[0].unused, 2);
                }
            }
            let indices: Vec<u64> = steps.iter().map(|s| s.index).collect();
            let from_ticks: Vec<u64> = ticks.iter().map(|t| t / 100).collect();
            assert_eq!(indices, from_ticks);
        }
    }

    #[test]
    fn drops_out_of_order_duplicate_and_too_old() {
        let mut a = StepAssembler::new(&config(10.0, 10.0, MissingPolicy::Mask), 1)
            .unwrap()
            .with_start(0);
        assert_eq!(a.push(0, 50 * MS, 1).unwrap(), Admission::Accepted);
        assert_eq!(a.push(0, 50 * MS, 2).unwrap(), Admission::Duplicate);
        assert_eq!(a.push(0, 40 * MS, 3).unwrap(), Admission::OutOfOrder);
        let now: Nanos = 120 * MS;
        let s0 = a.poll(now).unwrap(); // tick 0: nothing within ±10 ms
        assert!(s0.slots[0].is_missing());
        let s1 = a.poll(now).unwrap(); // tick 100: the 50 ms frame is outside the window
        assert!(s1.slots[0].is_missing());
        assert!(a.poll(now).is_none());
        // A frame for the decided 100 ms window arriving now is too old; 111 ms is not.
        assert_eq!(a.push(0, 105 * MS, 4).unwrap(), Admission::TooOld);
        assert_eq!(a.push(0, 111 * MS, 5).unwrap(), Admission::Accepted);
        let st = &a.stats().cameras[0];
        assert_eq!(
            (
                st.received,
                st.duplicate,
                st.out_of_order,
                st.too_old,
                st.unused,
                st.missing
            ),
            (5, 1, 1, 1, 1, 2)
        );
        assert!(matches!(
            a.push(1, 0, 0),
            Err(VisionError::CameraIndex {
                index: 1,
                n_cams: 1
            })
        ));
    }

    #[test]
    fn newest_in_window_wins_and_early_emission_needs_every_camera() {
        let now: Nanos = 0;
        let mut a = StepAssembler::new(&config(10.0, 30.0, MissingPolicy::Hold), 2)
            .unwrap()
            .with_start(100 * MS);
        for (t, v) in [(75, 1), (95, 2), (125, 3), (135, 4)] {
            a.push(0, t * MS, v).unwrap();
        }
        // Camera 0 is past the window, camera 1 has nothing: not due until the clock says so.
        assert!(a.poll(now).is_none());
        a.push(1, 131 * MS, 9).unwrap();
        let s = a.poll(now).unwrap();
        assert_eq!(
            s.slots[0],
            Slot::Fresh {
                stamp_ns: 125 * MS,
                frame: 3
            }
        );
        assert!(s.slots[1].is_missing()); // 131 is outside ±30 ms and nothing was used before
        assert_eq!(a.stats().cameras[0].unused, 2);
    }

    #[test]
    fn config_validation_names_keys() {
        let key = |c: SyncConfig| match c.validate("sync") {
            Err(VisionError::Config { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        let d = SyncConfig::default;
        assert_eq!(
            key(SyncConfig {
                rate_hz: 0.0,
                ..d()
            }),
            "sync.rate_hz"
        );
        assert_eq!(
            key(SyncConfig {
                rate_hz: f64::NAN,
                ..d()
            }),
            "sync.rate_hz"
        );
        assert_eq!(
            key(SyncConfig {
                tolerance_ms: -1.0,
                ..d()
            }),
            "sync.tolerance_ms"
        );
        assert_eq!(
            key(SyncConfig {
                max_hold_ms: f64::INFINITY,
                ..d()
            }),
            "sync.max_hold_ms"
        );
        assert_eq!(
            key(SyncConfig {
                max_pending: 0,
                ..d()
            }),
            "sync.max_pending"
        );
        assert_eq!(d().period_ns(), 100 * MS);
        assert!(StepAssembler::<u8>::new(&d(), 0).is_err());
    }

    /// A frame of the property tests: (camera, stamp, serial number).
    type F = (usize, Nanos, usize);

    /// Streams for `rates` (Hz) with per-camera phase, jitter and a random transport latency;
    /// returns (arrival time, camera, stamp) sorted by arrival.
    fn streams(
        rates: &[f64],
        phases: &[u64],
        jitter: &[u64],
        latency: &[u64],
        duration_ms: u64,
    ) -> Vec<(Nanos, usize, Nanos)> {
        let mut out = Vec::new();
        let mut li = 0;
        for (cam, (&rate, &phase)) in rates.iter().zip(phases).enumerate() {
            let period = (1e9 / rate) as u64;
            let mut k = 0u64;
            loop {
                let j = jitter[(cam * 7 + k as usize) % jitter.len()];
                let stamp = 1_000 * MS + phase * MS / 10 + k * period + j;
                if stamp > 1_000 * MS + duration_ms * MS {
                    break;
                }
                let lat = latency[li % latency.len()] * MS;
                li += 1;
                out.push((stamp + lat, cam, stamp));
                k += 1;
            }
        }
        out.sort();
        out
    }

    /// Runs an assembler over arrivals, polling after each; then advances the clock past the end.
    fn run(
        cfg: &SyncConfig,
        n_cams: usize,
        arrivals: &[(Nanos, usize, Nanos)],
        clock_follows_arrivals: bool,
    ) -> (Vec<Step<F>>, SyncStats, Vec<usize>) {
        let mut now: Nanos = 0;
        let mut a = StepAssembler::new(cfg, n_cams)
            .unwrap()
            .with_start(1_000 * MS);
        let mut steps = Vec::new();
        for (serial, &(arrival, cam, stamp)) in arrivals.iter().enumerate() {
            if clock_follows_arrivals {
                now = now.max(arrival);
            }
            a.push(cam, stamp, (cam, stamp, serial)).unwrap();
            while let Some(s) = a.poll(now) {
                steps.push(s);
            }
        }
        let end = arrivals.iter().map(|a| a.0.max(a.2)).max().unwrap_or(0) + 100 * MS;
        now = end;
        while let Some(s) = a.poll(now) {
            steps.push(s);
        }
        let pending = (0..n_cams).map(|c| a.pending(c)).collect();
        (steps, a.stats().clone(), pending)
    }

    fn policy() -> impl Strategy<Value = MissingPolicy> {
        prop_oneof![
            Just(MissingPolicy::Hold),
            Just(MissingPolicy::Skip),
            Just(MissingPolicy::Mask)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Random rates, phases, jitter, latencies, shuffles and duplicates: every emitted step
        /// obeys the rules and the counters add up.
        #[test]
        fn steps_obey_the_rules(
            rates in prop::collection::vec(5.0f64..60.0, 1..4),
            phases in prop::collection::vec(0u64..1000, 4),
            jitter in prop::collection::vec(0u64..3 * MS, 1..8),
            latency in prop::collection::vec(0u64..60, 1..16),
            swaps in prop::collection::vec((0usize..1000, 1usize..4), 0..30),
            dups in prop::collection::vec(0usize..1000, 0..10),
            rate_hz in 2.0f64..40.0,
            tolerance_ms in 0.0f64..40.0,
            missing in policy(),
            max_pending in 1usize..20,
        ) {
            let n = rates.len();
            let mut arrivals = streams(&rates, &phases, &jitter, &latency, 1500);
            let len = arrivals.len();
            for (i, d) in swaps {
                if len > 1 {
                    arrivals.swap(i % len, (i + d) % len);
                }
            }
            for i in dups {
                if len > 0 {
                    let a = arrivals[i % len];
                    arrivals.insert(i % len + 1, a);
                }
            }
            let cfg = SyncConfig { rate_hz, tolerance_ms, missing, max_hold_ms: 120.0, max_pending };
            let (steps, stats, pending) = run(&cfg, n, &arrivals, true);
            let (period, tol) = (cfg.period_ns(), cfg.tolerance_ns());
            let mut last_fresh = vec![None; n];
            let mut prev_index = None;
            let mut counts = vec![(0u64, 0u64, 0u64); n];
            for s in &steps {
                prop_assert_eq!(s.tick_ns, 1_000 * MS + s.index * period);
                if let Some(p) = prev_index {
                    prop_assert!(s.index > p);
                    if missing != MissingPolicy::Skip {
                        prop_assert_eq!(s.index, p + 1);
                    }
                }
                prev_index = Some(s.index);
                prop_assert_eq!(s.slots.len(), n);
                for (cam, slot) in s.slots.iter().enumerate() {
                    match slot {
                        Slot::Fresh { stamp_ns, frame } => {
                            prop_assert!(stamp_ns.abs_diff(s.tick_ns) <= tol);
                            prop_assert_eq!((frame.0, frame.1), (cam, *stamp_ns));
                            prop_assert!(last_fresh[cam] < Some(*stamp_ns));
                            last_fresh[cam] = Some(*stamp_ns);
                            counts[cam].0 += 1;
                        }
                        Slot::Held { stamp_ns, age_ns, frame } => {
                            prop_assert_eq!(missing, MissingPolicy::Hold);
                            prop_assert_eq!(*age_ns, s.tick_ns.saturating_sub(*stamp_ns));
                            prop_assert!(*age_ns <= 120 * MS);
                            prop_assert_eq!(Some(*stamp_ns), last_fresh[cam]);
                            prop_assert_eq!(frame.0, cam);
                            counts[cam].1 += 1;
                        }
                        Slot::Missing => {
                            prop_assert!(missing != MissingPolicy::Skip);
                            counts[cam].2 += 1;
                        }
                    }
                }
            }
            prop_assert_eq!(stats.steps, steps.len() as u64);
            for cam in 0..n {
                let st = &stats.cameras[cam];
                prop_assert_eq!((st.matched, st.held, st.missing), counts[cam]);
                let received = arrivals.iter().filter(|a| a.1 == cam).count() as u64;
                prop_assert_eq!(st.received, received);
                let accepted = received - st.dropped();
                prop_assert_eq!(accepted, st.matched + st.unused + pending[cam] as u64);
            }
        }

        /// Across-camera arrival order does not matter: any interleaving that keeps each
        /// camera's own order gives the same steps and counters, as long as the clock waits for
        /// the data (a replay fed as fast as possible). Within a camera, the frames accepted are
        /// exactly the strict running maxima of the arrival order.
        #[test]
        fn interleaving_does_not_change_steps(
            rates in prop::collection::vec(5.0f64..60.0, 2..4),
            phases in prop::collection::vec(0u64..1000, 4),
            jitter in prop::collection::vec(0u64..3 * MS, 1..8),
            keys in prop::collection::vec(any::<u32>(), 200),
            reorder in prop::collection::vec((0usize..200, 1usize..5), 0..10),
            rate_hz in 2.0f64..40.0,
            tolerance_ms in 0.0f64..40.0,
            missing in policy(),
        ) {
            let n = rates.len();
            let canonical = streams(&rates, &phases, &jitter, &[0], 1000);
            let cfg = SyncConfig { rate_hz, tolerance_ms, missing, max_hold_ms: 120.0, max_pending: 1000 };
            let (want_steps, want_stats, _) = run(&cfg, n, &canonical, false);
            // Merge the per-camera sequences in a random order.
            let mut per_cam: Vec<VecDeque<_>> = (0..n)
                .map(|c| canonical.iter().copied().filter(|a| a.1 == c).collect())
                .collect();
            let mut mixed = Vec::new();
            let mut k = 0;
            while per_cam.iter().any(|q| !q.is_empty()) {
                let live: Vec<usize> = (0..n).filter(|&c| !per_cam[c].is_empty()).collect();
                let c = live[keys[k % keys.len()] as usize % live.len()];
                k += 1;
                if let Some(a) = per_cam[c].pop_front() {
                    mixed.push(a);
                }
            }
            let strip = |steps: Vec<Step<F>>| -> Vec<(u64, Vec<Option<Nanos>>)> {
                steps.into_iter().map(|s| (s.index, s.slots.iter().map(Slot::stamp_ns).collect())).collect()
            };
            let (got_steps, got_stats, _) = run(&cfg, n, &mixed, false);
            prop_assert_eq!(strip(got_steps), strip(want_steps));
            prop_assert_eq!(&got_stats, &want_stats);

            // Now break per-camera order: accepted frames are the strict running maxima.
            let len = mixed.len();
            for (i, d) in reorder {
                if len > 1 {
                    mixed.swap(i % len, (i + d) % len);
                }
            }
            let (_, stats, _) = run(&cfg, n, &mixed, false);
            for cam in 0..n {
                let mut max = None;
                let mut records = 0u64;
                for a in mixed.iter().filter(|a| a.1 == cam) {
                    if max < Some(a.2) {
                        max = Some(a.2);
                        records += 1;
                    }
                }
                let st = &stats.cameras[cam];
                prop_assert_eq!(st.too_old, 0);
                prop_assert_eq!(st.received - st.dropped(), records);
            }
        }

        /// In-order streams at least as fast as the steps, with the tolerance at least half a
        /// camera period, decided as the data arrives (clock held back): every step between
        /// the cameras' first and last frames is complete, nothing held or missing or dropped.
        #[test]
        fn fast_enough_cameras_always_match(
            rates in prop::collection::vec(20.0f64..60.0, 1..4),
            phases in prop::collection::vec(0u64..1000, 4),
            rate_hz in 2.0f64..20.0,
            missing in policy(),
        ) {
            let n = rates.len();
            let arrivals = streams(&rates, &phases, &[0], &[0], 1000);
            // Half the slowest camera's period, plus a little rounding room.
            let tolerance_ms = 500.0 / rates.iter().cloned().fold(f64::INFINITY, f64::min) + 0.01;
            let cfg = SyncConfig { rate_hz, tolerance_ms, missing, max_hold_ms: 120.0, max_pending: 64 };
            let (steps, stats, _) = run(&cfg, n, &arrivals, false);
            // Ticks whose window lies within every camera's span of frames.
            let first = (0..n).map(|c| arrivals.iter().find(|a| a.1 == c).map_or(0, |a| a.2)).max().unwrap_or(0);
            let last = (0..n).map(|c| arrivals.iter().rev().find(|a| a.1 == c).map_or(0, |a| a.2)).min().unwrap_or(0);
            let inner: Vec<_> = steps.iter().filter(|s| s.tick_ns >= first && s.tick_ns <= last).collect();
            for s in &inner {
                prop_assert!(s.slots.iter().all(|sl| matches!(sl, Slot::Fresh { .. })), "tick {}", s.tick_ns);
            }
            prop_assert!(stats.cameras.iter().all(|c| c.dropped() == 0));
        }
    }
}
