//! Replay: a [`SteppedReplay`] hands out a recording's messages one at a time with keys
//! remapped (no clock, no network: the library API for deterministic tests), and a
//! [`Replayer`] republishes them over zenoh at a rate factor of the original timing, as fast
//! as possible, or one message per request on a step key.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use zenoh::bytes::Encoding;
use zenoh::{Session, Wait};

use crate::clock::Clock;
use crate::error::{Result, TransportError};
use crate::pubsub::{StreamClass, declare_raw_publisher, wait_for_match};
use crate::recording::{RecordedMessage, Recording};

/// Key remapping rules `from=to`: a key equal to `from`, or starting with `from/`, has that
/// prefix replaced by `to`. The first matching rule wins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remap {
    rules: Vec<(String, String)>,
}

impl Remap {
    /// Parses rules like `robot/a=robot/b`.
    ///
    /// # Errors
    /// [`TransportError::BadRemap`] for a rule without `=` or with an empty side.
    pub fn parse<S: AsRef<str>>(rules: &[S]) -> Result<Self> {
        fn trim(side: &str) -> &str {
            side.trim_start_matches('/').trim_end_matches('/')
        }
        let rules = rules
            .iter()
            .map(|r| {
                let r = r.as_ref();
                // A ROS 2 topic name's leading slash is dropped, as from the keys.
                match r.split_once('=') {
                    Some((from, to)) if !trim(from).is_empty() && !trim(to).is_empty() => {
                        Ok((trim(from).to_owned(), to.trim_end_matches('/').to_owned()))
                    }
                    _ => Err(TransportError::BadRemap(r.to_owned())),
                }
            })
            .collect::<Result<_>>()?;
        Ok(Self { rules })
    }

    /// The key `key` replays on. A ROS 2 topic name (a rosbag2 bag's channels: `/cam/image`)
    /// becomes the zenoh key without its leading slash (`cam/image`) before the rules apply.
    #[must_use]
    pub fn apply(&self, key: &str) -> String {
        let key = key.strip_prefix('/').unwrap_or(key);
        for (from, to) in &self.rules {
            if key == from {
                return to.clone();
            }
            if let Some(rest) = key.strip_prefix(from.as_str())
                && rest.starts_with('/')
            {
                return format!("{to}{rest}");
            }
        }
        key.to_owned()
    }
}

/// Replay pacing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// The original timing scaled by a factor (1.0 = real time, 2.0 = twice as fast).
    Factor(f64),
    /// No waiting.
    Max,
}

impl FromStr for Rate {
    type Err = TransportError;

    fn from_str(s: &str) -> Result<Self> {
        if s == "max" {
            return Ok(Self::Max);
        }
        match s.parse::<f64>() {
            Ok(f) if f.is_finite() && f > 0.0 => Ok(Self::Factor(f)),
            _ => Err(TransportError::BadRate(s.to_owned())),
        }
    }
}

/// One message as a replay hands it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayItem<'a> {
    /// Position in the replay (0-based).
    pub index: usize,
    /// The key after remapping.
    pub key: &'a str,
    /// The zenoh encoding to publish with.
    pub encoding: &'a str,
    /// The recorded message.
    pub message: &'a RecordedMessage,
    /// rmw_zenoh's attachment to send with it (a replay onto ROS 2 keys).
    pub attachment: Option<&'a [u8]>,
}

/// A recording's messages in order, one per [`SteppedReplay::next_item`]; no clock involved.
/// Two stepped replays of the same recording and remap yield identical sequences.
#[derive(Debug, Clone)]
pub struct SteppedReplay {
    messages: Vec<RecordedMessage>,
    keys: Vec<String>,
    encodings: Vec<String>,
    /// Per message: rmw_zenoh's attachment ([`SteppedReplay::ros2`]), or none.
    attachments: Vec<Option<[u8; crate::ros2::ATTACHMENT_LEN]>>,
    cursor: usize,
}

/// The zenoh encoding a recorded message is republished with.
#[must_use]
pub fn encoding_of(m: &RecordedMessage) -> String {
    match (&m.schema_name, m.message_encoding.as_str()) {
        (Some(schema), "cdr") => format!("application/cdr;{schema}"),
        (_, other) => other.to_owned(),
    }
}

impl SteppedReplay {
    /// A replay of `recording` with `remap` applied.
    #[must_use]
    pub fn new(recording: Recording, remap: &Remap) -> Self {
        let keys = recording
            .messages
            .iter()
            .map(|m| remap.apply(&m.key))
            .collect();
        let encodings = recording.messages.iter().map(encoding_of).collect();
        Self {
            attachments: vec![None; recording.messages.len()],
            messages: recording.messages,
            keys,
            encodings,
            cursor: 0,
        }
    }

    /// A replay of a recording of ROS 2 topics (a rosbag2 bag, or an MCAP whose channels are
    /// ROS 2 topic names) onto rmw_zenoh's keys in `domain`, as a robot running rmw_zenoh
    /// publishes them: each message on its topic's key with the type name and hash of its
    /// schema, and rmw_zenoh's attachment (a sequence number per topic from 1, the recorded
    /// publish time, a GID per topic). The node's ROS 2 mode subscribes to exactly these.
    ///
    /// # Errors
    /// [`TransportError::Recording`] for a message without a ROS 2 schema or with a type
    /// edgevla does not carry (its key needs the type's hash);
    /// [`TransportError::InvalidTopicName`] for a channel that is no ROS 2 topic name.
    pub fn ros2(recording: Recording, domain: u32) -> Result<Self> {
        let mut keys = Vec::with_capacity(recording.messages.len());
        let mut attachments = Vec::with_capacity(recording.messages.len());
        // Per (topic, type): its key, its GID and the last sequence number sent.
        let mut publishers: HashMap<
            (String, crate::msg::MessageKind),
            (String, [u8; crate::ros2::GID_LEN], i64),
        > = HashMap::new();
        for m in &recording.messages {
            let kind = m
                .schema_name
                .as_deref()
                .and_then(crate::msg::MessageKind::from_type_name)
                .ok_or_else(|| {
                    TransportError::Recording(format!(
                        "{}: type {} has no rmw_zenoh key here (edgevla knows {}); replay it \
                         without --ros2-domain",
                        m.key,
                        m.schema_name.as_deref().unwrap_or("(no schema)"),
                        crate::msg::MessageKind::ALL
                            .map(|k| k.type_name())
                            .join(", ")
                    ))
                })?;
            let (key, gid, sequence) = match publishers.entry((m.key.clone(), kind)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let key = crate::ros2::topic_key(domain, &m.key, kind)?;
                    let gid = crate::ros2::gid_for(&key);
                    e.insert((key, gid, 0))
                }
            };
            *sequence += 1;
            attachments.push(Some(
                crate::ros2::Attachment {
                    sequence_number: *sequence,
                    source_timestamp_ns: i64::try_from(m.publish_time).unwrap_or(i64::MAX),
                    gid: *gid,
                }
                .encode(),
            ));
            keys.push(key.clone());
        }
        let encodings = vec![Encoding::ZENOH_BYTES.to_string(); keys.len()];
        Ok(Self {
            messages: recording.messages,
            keys,
            encodings,
            attachments,
            cursor: 0,
        })
    }

    /// The next message, or `None` at the end.
    pub fn next_item(&mut self) -> Option<ReplayItem<'_>> {
        let index = self.cursor;
        let message = self.messages.get(index)?;
        self.cursor += 1;
        Some(ReplayItem {
            index,
            key: &self.keys[index],
            encoding: &self.encodings[index],
            message,
            attachment: self.attachments[index].as_ref().map(|a| a.as_slice()),
        })
    }

    /// The message [`Self::next_item`] returns next, without advancing.
    #[must_use]
    pub fn peek(&self) -> Option<&RecordedMessage> {
        self.messages.get(self.cursor)
    }

    /// Messages not yet handed out.
    #[must_use]
    pub fn remaining(&self) -> usize {
        self.messages.len() - self.cursor
    }

    /// Total messages.
    #[must_use]
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the recording holds no messages.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Back to the first message.
    pub fn rewind(&mut self) {
        self.cursor = 0;
    }

    /// Every distinct (remapped) key with its encoding, in first-appearance order.
    #[must_use]
    pub fn keys(&self) -> Vec<(String, String)> {
        let mut seen = Vec::<(String, String)>::new();
        for (k, e) in self.keys.iter().zip(&self.encodings) {
            if !seen.iter().any(|(sk, se)| sk == k && se == e) {
                seen.push((k.clone(), e.clone()));
            }
        }
        seen
    }
}

/// When a paced replay should publish the message logged at `log_time`, on a clock where the
/// replay started at `start_ns` with the first message logged at `first_log`.
#[must_use]
pub fn due_time(start_ns: u64, first_log: u64, log_time: u64, rate: Rate) -> u64 {
    match rate {
        Rate::Max => start_ns,
        Rate::Factor(f) => {
            let offset = log_time.saturating_sub(first_log) as f64 / f;
            start_ns.saturating_add(offset as u64)
        }
    }
}

/// Counts of a replay run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Messages published.
    pub published: u64,
}

/// Publishes replay items over zenoh, one publisher per (key, encoding). Replays are
/// lossless: publishers use [`StreamClass::Bulk`] (`CongestionControl::Block`), so a replay
/// at `--rate max` waits for the network rather than dropping frames as a live camera would.
#[derive(Debug)]
pub struct Replayer<'s> {
    session: &'s Session,
    publishers: HashMap<(String, String), zenoh::pubsub::Publisher<'static>>,
}

impl<'s> Replayer<'s> {
    /// A replayer on `session`.
    #[must_use]
    pub fn new(session: &'s Session) -> Self {
        Self {
            session,
            publishers: HashMap::new(),
        }
    }

    fn publisher(
        &mut self,
        key: &str,
        encoding: &str,
    ) -> Result<&zenoh::pubsub::Publisher<'static>> {
        let id = (key.to_owned(), encoding.to_owned());
        if !self.publishers.contains_key(&id) {
            let p = declare_raw_publisher(
                self.session,
                key,
                StreamClass::Bulk,
                Encoding::from(encoding.to_owned()),
            )?;
            self.publishers.insert(id.clone(), p);
        }
        self.publishers
            .get(&id)
            .ok_or_else(|| TransportError::Zenoh {
                context: "publisher",
                message: format!("no publisher for {key}"),
            })
    }

    /// Declares the publishers of every key in `replay` and waits up to `timeout` until each
    /// has a matching subscriber. Returns the keys nobody subscribed to in time.
    ///
    /// # Errors
    /// [`TransportError::Zenoh`] if a publisher cannot be declared.
    pub fn prepare(&mut self, replay: &SteppedReplay, timeout: Duration) -> Result<Vec<String>> {
        let keys = replay.keys();
        for (k, e) in &keys {
            self.publisher(k, e)?;
        }
        let deadline = Instant::now() + timeout;
        let mut unmatched = Vec::new();
        for (k, e) in &keys {
            let left = deadline.saturating_duration_since(Instant::now());
            if wait_for_match(self.publisher(k, e)?, left).is_err() {
                unmatched.push(k.clone());
            }
        }
        Ok(unmatched)
    }

    /// Publishes one item.
    ///
    /// # Errors
    /// [`TransportError::Zenoh`].
    pub fn publish(&mut self, item: &ReplayItem<'_>) -> Result<()> {
        let payload = item.message.data.clone();
        let publisher = self.publisher(item.key, item.encoding)?;
        let put = publisher.put(payload);
        let sent = match item.attachment {
            Some(attachment) => put.attachment(attachment.to_vec()).wait(),
            None => put.wait(),
        };
        sent.map_err(|e| TransportError::zenoh("put", &e))
    }

    /// Publishes the rest of `replay` at `rate`, waiting on `clock`, until the end or
    /// `shutdown`.
    ///
    /// # Errors
    /// [`TransportError::Zenoh`].
    pub fn run_paced(
        &mut self,
        replay: &mut SteppedReplay,
        rate: Rate,
        clock: &dyn Clock,
        shutdown: &AtomicBool,
    ) -> Result<ReplayStats> {
        let mut stats = ReplayStats::default();
        let Some(first_log) = replay.peek().map(|m| m.log_time) else {
            return Ok(stats);
        };
        let start = clock.now_ns();
        while !shutdown.load(Ordering::SeqCst) {
            let Some(item) = replay.next_item() else {
                break;
            };
            clock.sleep_until_ns(due_time(start, first_log, item.message.log_time, rate));
            let (key, encoding, data) = (
                item.key.to_owned(),
                item.encoding.to_owned(),
                item.message.data.clone(),
            );
            self.publisher(&key, &encoding)?
                .put(data)
                .wait()
                .map_err(|e| TransportError::zenoh("put", &e))?;
            stats.published += 1;
        }
        Ok(stats)
    }

    /// Serves `replay` one message per query on `step_key`: each query publishes the next
    /// message, then is answered with `<index> <key> <log_time_ns>` (or `end` once every
    /// message is out). Returns at the end, on `shutdown`, or after `idle` without a query.
    ///
    /// # Errors
    /// [`TransportError::Zenoh`].
    pub fn serve_steps(
        &mut self,
        replay: &mut SteppedReplay,
        step_key: &str,
        idle: Duration,
        shutdown: &AtomicBool,
    ) -> Result<ReplayStats> {
        let queryable = self
            .session
            .declare_queryable(step_key.to_owned())
            .wait()
            .map_err(|e| TransportError::zenoh("declare queryable", &e))?;
        let mut stats = ReplayStats::default();
        let mut last = Instant::now();
        while !shutdown.load(Ordering::SeqCst) && last.elapsed() < idle {
            let query = match queryable.recv_timeout(Duration::from_millis(50)) {
                Ok(Some(q)) => q,
                Ok(None) => continue,
                Err(e) => return Err(TransportError::zenoh("step query", &e)),
            };
            last = Instant::now();
            let answer = match replay.next_item() {
                Some(item) => {
                    let text = format!("{} {} {}", item.index, item.key, item.message.log_time);
                    let (key, encoding, data) = (
                        item.key.to_owned(),
                        item.encoding.to_owned(),
                        item.message.data.clone(),
                    );
                    self.publisher(&key, &encoding)?
                        .put(data)
                        .wait()
                        .map_err(|e| TransportError::zenoh("put", &e))?;
                    stats.published += 1;
                    text
                }
                None => "end".to_owned(),
            };
            query
                .reply(step_key.to_owned(), answer.clone())
                .wait()
                .map_err(|e| TransportError::zenoh("step reply", &e))?;
            if answer == "end" {
                break;
            }
        }
        Ok(stats)
    }
}

/// What a consumer of a stepped replay does: asks `step_key` for the next message and waits
/// up to `timeout` for the answer (`<index> <key> <log_time_ns>` once the message is
/// published, or `end`). Retries while no replay answers yet (a queryable just declared).
///
/// # Errors
/// [`TransportError::Zenoh`] on a zenoh error or when no answer comes within `timeout`.
pub fn request_step(session: &Session, step_key: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let replies = session
            .get(step_key.to_owned())
            .timeout(left)
            .wait()
            .map_err(|e| TransportError::zenoh("step query", &e))?;
        if let Ok(Some(reply)) = replies.recv_timeout(left) {
            let sample = reply.result().map_err(|e| TransportError::Zenoh {
                context: "step reply",
                message: format!("{e:?}"),
            })?;
            return String::from_utf8(sample.payload().to_bytes().into_owned()).map_err(|e| {
                TransportError::Zenoh {
                    context: "step reply",
                    message: e.to_string(),
                }
            });
        }
        if Instant::now() >= deadline {
            return Err(TransportError::Zenoh {
                context: "step query",
                message: format!("no answer on {step_key} within {timeout:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn remaps_prefixes_at_chunk_boundaries() {
        let r = Remap::parse(&["robot/a=robot/b", "x=y/z"]).unwrap();
        assert_eq!(r.apply("robot/a/cam/front"), "robot/b/cam/front");
        assert_eq!(r.apply("robot/a"), "robot/b");
        assert_eq!(r.apply("robot/ab/joints"), "robot/ab/joints");
        assert_eq!(r.apply("x/1"), "y/z/1");
        assert!(Remap::parse(&["nope"]).is_err());
        assert!(Remap::parse(&["=b"]).is_err());
        assert!(Remap::parse(&["/=b"]).is_err());
        // A leading slash (a ROS 2 topic name) is dropped from the rule and from the key.
        let r = Remap::parse(&["/cam=robot/cam"]).unwrap();
        assert_eq!(r.apply("/cam/image"), "robot/cam/image");
        assert_eq!(r.apply("cam/image"), "robot/cam/image");
    }

    #[test]
    fn parses_rates() {
        assert_eq!("max".parse::<Rate>().unwrap(), Rate::Max);
        assert_eq!("2.5".parse::<Rate>().unwrap(), Rate::Factor(2.5));
        for bad in ["0", "-1", "inf", "fast"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn due_times_follow_the_rate() {
        assert_eq!(due_time(100, 1000, 3000, Rate::Factor(1.0)), 2100);
        assert_eq!(due_time(100, 1000, 3000, Rate::Factor(2.0)), 1100);
        assert_eq!(due_time(100, 1000, 3000, Rate::Max), 100);
        // A manual clock jumps to each due time: the replay's pacing without real waiting.
        let clock = ManualClock::new(0);
        for log in [1000, 1500, 4000] {
            clock.sleep_until_ns(due_time(0, 1000, log, Rate::Factor(0.5)));
        }
        assert_eq!(clock.now_ns(), 6000);
    }

    fn msg(key: &str, t: u64) -> RecordedMessage {
        RecordedMessage {
            key: key.into(),
            schema_name: Some("std_msgs/msg/String".into()),
            message_encoding: "cdr".into(),
            sequence: 1,
            log_time: t,
            publish_time: t,
            data: vec![t as u8],
        }
    }

    #[test]
    fn stepped_replay_hands_out_remapped_items_in_order() {
        let rec = Recording {
            messages: vec![msg("robot/a/status", 1), msg("robot/a/status", 2)],
            complete: true,
            recovered_from_partial_chunk: 0,
        };
        let mut s = SteppedReplay::new(rec, &Remap::parse(&["robot/a=robot/b"]).unwrap());
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.keys(),
            vec![(
                "robot/b/status".to_owned(),
                "application/cdr;std_msgs/msg/String".to_owned()
            )]
        );
        let first = s.next_item().unwrap();
        assert_eq!((first.index, first.key), (0, "robot/b/status"));
        assert_eq!(s.next_item().unwrap().message.data, vec![2]);
        assert!(s.next_item().is_none());
        assert_eq!(s.remaining(), 0);
        s.rewind();
        assert_eq!(s.remaining(), 2);
    }
}
