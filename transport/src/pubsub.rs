//! Publishers and subscribers.
//!
//! A [`Subscriber`] decodes every sample in zenoh's callback and pushes it into a ring per
//! topic that keeps the newest `ring_capacity` messages (a camera that outruns the consumer
//! loses its oldest frames, counted as `dropped`); the callback never waits on the consumer,
//! so the sender is never blocked. Bad input — a payload over `max_payload_bytes`, a key
//! outside the key space, an encoding string that does not fit the key, malformed CDR or a
//! message that breaks its invariants — is counted, logged at `warn`, and dropped; later good
//! messages still arrive.
//!
//! Publishers set zenoh QoS by [`StreamClass`]: frames `CongestionControl::Drop`; actions
//! `express` + `Priority::RealTime`; telemetry (joints, status) the defaults; bulk (replays)
//! `CongestionControl::Block`. Every sample
//! carries the encoding `application/cdr;<ROS 2 type name>`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zenoh::bytes::Encoding;
use zenoh::qos::{CongestionControl, Priority};
use zenoh::sample::Sample;
use zenoh::{Session, Wait};

use crate::clock::Clock;
use crate::error::{Result, TransportError};
use crate::keys::{Topic, parse_key};
use crate::msg::{AnyMessage, MessageKind, RosMessage, encode};

/// Subscriber settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriberConfig {
    /// Messages kept per topic (per camera); older ones are dropped. Default 4.
    #[serde(default = "default_ring_capacity")]
    pub ring_capacity: usize,
    /// Payloads larger than this are dropped and counted as `oversized`. Default 16 MiB.
    #[serde(default = "default_max_payload")]
    pub max_payload_bytes: usize,
}

fn default_ring_capacity() -> usize {
    4
}

fn default_max_payload() -> usize {
    16 << 20
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        Self {
            ring_capacity: default_ring_capacity(),
            max_payload_bytes: default_max_payload(),
        }
    }
}

/// Subscriber counters at one moment. `received` counts every sample; each sample ends up
/// delivered, `dropped` (ring overflow) or in exactly one of the four error counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SubscriberStats {
    /// Samples seen.
    pub received: u64,
    /// Good messages pushed out of a full ring by newer ones.
    pub dropped: u64,
    /// Malformed CDR or broken invariants.
    pub decode_errors: u64,
    /// Encoding strings that do not fit the key.
    pub wrong_encoding: u64,
    /// Payloads over the limit.
    pub oversized: u64,
    /// Keys outside the key space.
    pub unknown_key: u64,
    /// ROS 2 mode: samples without rmw_zenoh's attachment, or with one that does not read.
    pub bad_attachment: u64,
    /// ROS 2 mode: samples whose type name or hash is not what their topic carries.
    pub type_mismatch: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    dropped: AtomicU64,
    decode_errors: AtomicU64,
    wrong_encoding: AtomicU64,
    oversized: AtomicU64,
    unknown_key: AtomicU64,
    bad_attachment: AtomicU64,
    type_mismatch: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> SubscriberStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SubscriberStats {
            received: get(&self.received),
            dropped: get(&self.dropped),
            decode_errors: get(&self.decode_errors),
            wrong_encoding: get(&self.wrong_encoding),
            oversized: get(&self.oversized),
            unknown_key: get(&self.unknown_key),
            bad_attachment: get(&self.bad_attachment),
            type_mismatch: get(&self.type_mismatch),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// One decoded message as it left the ring.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Arrival order across all topics of this subscriber (0, 1, 2, ...; dropped and bad
    /// samples leave gaps).
    pub arrival: u64,
    /// The sample's key.
    pub key: String,
    /// What the key is about.
    pub topic: Topic,
    /// The decoded message.
    pub message: AnyMessage,
    /// The subscriber clock's time at arrival, in nanoseconds.
    pub received_ns: u64,
}

/// Which message a sample on `topic` with zenoh encoding string `encoding` carries.
///
/// Accepted encodings: `zenoh/bytes` (what rmw_zenoh and untyped publishers send),
/// `application/octet-stream` and `application/cdr`, each optionally with `;<type name>`.
/// Without a type name the topic's default applies.
///
/// # Errors
/// [`TransportError::WrongEncoding`] for another encoding, an unknown type name, or a type the
/// topic does not carry.
pub fn resolve_kind(key: &str, topic: &Topic, encoding: &str) -> Result<MessageKind> {
    let wrong = || TransportError::WrongEncoding {
        key: key.to_owned(),
        encoding: encoding.to_owned(),
    };
    let (base, schema) = match encoding.split_once(';') {
        Some((b, s)) => (b, Some(s)),
        None => (encoding, None),
    };
    if !matches!(
        base,
        "zenoh/bytes" | "application/cdr" | "application/octet-stream"
    ) {
        return Err(wrong());
    }
    match schema.filter(|s| !s.is_empty()) {
        None => Ok(topic.default_kind()),
        Some(name) => {
            let kind = MessageKind::from_type_name(name).ok_or_else(wrong)?;
            if topic.accepts(kind) {
                Ok(kind)
            } else {
                Err(wrong())
            }
        }
    }
}

/// The zenoh encoding edgevla publishes a kind with.
#[must_use]
pub fn encoding_for(kind: MessageKind) -> Encoding {
    Encoding::APPLICATION_CDR.with_schema(kind.type_name())
}

#[derive(Debug, Default)]
struct Rings {
    by_topic: BTreeMap<Topic, VecDeque<Received>>,
    next_arrival: u64,
}

/// How a subscriber maps keys to topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routes {
    /// edgevla's key space under `prefix` ([`parse_key`]).
    Native {
        /// The key prefix (`robot`).
        prefix: String,
    },
    /// ROS 2 topics as rmw_zenoh keys them ([`crate::ros2`]): `<domain>/<topic without its
    /// leading '/'>` → the topic; every sample must carry rmw_zenoh's attachment and a type
    /// name and hash the topic carries.
    Ros2(BTreeMap<String, Topic>),
}

impl Routes {
    /// ROS 2 routes for `(topic name, topic)` pairs in `domain`.
    ///
    /// # Errors
    /// [`TransportError::InvalidTopicName`] for a bad name.
    pub fn ros2<'a>(
        domain: u32,
        topics: impl IntoIterator<Item = (&'a str, Topic)>,
    ) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (name, topic) in topics {
            map.insert(crate::ros2::topic_base(domain, name)?, topic);
        }
        Ok(Self::Ros2(map))
    }

    /// The topic and message kind of a sample, or why it is refused.
    fn resolve(
        &self,
        key: &str,
        encoding: &str,
        attachment: Option<&[u8]>,
    ) -> Result<(Topic, MessageKind)> {
        match self {
            Self::Native { prefix } => {
                let topic = parse_key(prefix, key)?;
                let kind = resolve_kind(key, &topic, encoding)?;
                Ok((topic, kind))
            }
            Self::Ros2(map) => {
                let unknown = || TransportError::UnknownKey {
                    key: key.to_owned(),
                    prefix: "(the configured ROS 2 topics)".to_owned(),
                };
                let (base, type_name, hash) = crate::ros2::split_key(key).ok_or_else(unknown)?;
                let topic = map.get(base).ok_or_else(unknown)?.clone();
                crate::ros2::Attachment::require(attachment)?;
                let kind = MessageKind::ALL
                    .into_iter()
                    .filter(|k| topic.accepts(*k))
                    .find(|k| {
                        crate::ros2::dds_type_name(*k) == type_name
                            && crate::ros2::type_hash(*k) == hash
                    })
                    .ok_or_else(|| TransportError::TypeMismatch {
                        key: key.to_owned(),
                        expected: MessageKind::ALL
                            .into_iter()
                            .filter(|k| topic.accepts(*k))
                            .map(crate::ros2::type_suffix)
                            .collect::<Vec<_>>()
                            .join(" or "),
                        got: format!("{type_name}/{hash}"),
                    })?;
                Ok((topic, kind))
            }
        }
    }
}

/// The part of a subscriber shared with zenoh's callback.
#[derive(Debug)]
pub struct Inbox {
    routes: Routes,
    config: SubscriberConfig,
    clock: Arc<dyn Clock>,
    counters: Counters,
    rings: Mutex<Rings>,
    ready: Condvar,
}

impl Inbox {
    /// An empty inbox for keys under `prefix`.
    #[must_use]
    pub fn new(prefix: &str, config: SubscriberConfig, clock: Arc<dyn Clock>) -> Self {
        Self::with_routes(
            Routes::Native {
                prefix: prefix.to_owned(),
            },
            config,
            clock,
        )
    }

    /// An empty inbox for the keys `routes` map.
    #[must_use]
    pub fn with_routes(routes: Routes, config: SubscriberConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            routes,
            config,
            clock,
            counters: Counters::default(),
            rings: Mutex::new(Rings::default()),
            ready: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Rings> {
        self.rings.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes one sample: checks, decodes, pushes into its topic's ring. Never blocks on the
    /// consumer beyond a short lock; never fails — bad input is counted and logged.
    pub fn ingest(&self, key: &str, encoding: &str, payload: &[u8]) {
        self.ingest_sample(key, encoding, None, payload);
    }

    /// [`ingest`](Self::ingest) with the sample's attachment (ROS 2 mode reads it).
    pub fn ingest_sample(
        &self,
        key: &str,
        encoding: &str,
        attachment: Option<&[u8]>,
        payload: &[u8],
    ) {
        bump(&self.counters.received);
        match self.decode(key, encoding, attachment, payload) {
            Ok((topic, message)) => self.push(key, topic, message),
            Err(err) => {
                let counter = match &err {
                    TransportError::Oversized { .. } => &self.counters.oversized,
                    TransportError::UnknownKey { .. } => &self.counters.unknown_key,
                    TransportError::WrongEncoding { .. } => &self.counters.wrong_encoding,
                    TransportError::BadAttachment { .. } => &self.counters.bad_attachment,
                    TransportError::TypeMismatch { .. } => &self.counters.type_mismatch,
                    _ => &self.counters.decode_errors,
                };
                bump(counter);
                tracing::warn!(key, error = %err, "dropped bad sample");
            }
        }
    }

    fn decode(
        &self,
        key: &str,
        encoding: &str,
        attachment: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(Topic, AnyMessage)> {
        if payload.len() > self.config.max_payload_bytes {
            return Err(TransportError::Oversized {
                key: key.to_owned(),
                len: payload.len(),
                limit: self.config.max_payload_bytes,
            });
        }
        let (topic, kind) = self.routes.resolve(key, encoding, attachment)?;
        let message = kind.decode(payload)?;
        Ok((topic, message))
    }

    fn push(&self, key: &str, topic: Topic, message: AnyMessage) {
        let received_ns = self.clock.now_ns();
        let capacity = self.config.ring_capacity.max(1);
        let mut rings = self.lock();
        let arrival = rings.next_arrival;
        rings.next_arrival += 1;
        let ring = rings.by_topic.entry(topic.clone()).or_default();
        while ring.len() >= capacity {
            ring.pop_front();
            bump(&self.counters.dropped);
        }
        ring.push_back(Received {
            arrival,
            key: key.to_owned(),
            topic,
            message,
            received_ns,
        });
        drop(rings);
        self.ready.notify_all();
    }

    /// The counters now.
    #[must_use]
    pub fn stats(&self) -> SubscriberStats {
        self.counters.snapshot()
    }

    /// The oldest buffered message across all topics, if any.
    #[must_use]
    pub fn try_recv(&self) -> Option<Received> {
        Self::pop_oldest(&mut self.lock())
    }

    fn pop_oldest(rings: &mut Rings) -> Option<Received> {
        let topic = rings
            .by_topic
            .iter()
            .filter_map(|(t, r)| r.front().map(|m| (m.arrival, t)))
            .min_by_key(|(arrival, _)| *arrival)
            .map(|(_, t)| t.clone())?;
        rings.by_topic.get_mut(&topic)?.pop_front()
    }

    /// Waits up to `timeout` for a message; the oldest buffered one across all topics.
    #[must_use]
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Received> {
        let deadline = Instant::now() + timeout;
        let mut rings = self.lock();
        loop {
            if let Some(m) = Self::pop_oldest(&mut rings) {
                return Some(m);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            rings = self
                .ready
                .wait_timeout(rings, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Takes every buffered message of `topic`, oldest first.
    #[must_use]
    pub fn drain(&self, topic: &Topic) -> Vec<Received> {
        self.lock()
            .by_topic
            .get_mut(topic)
            .map(|r| r.drain(..).collect())
            .unwrap_or_default()
    }

    /// The newest buffered message of `topic`, left in place.
    #[must_use]
    pub fn latest(&self, topic: &Topic) -> Option<Received> {
        self.lock().by_topic.get(topic)?.back().cloned()
    }
}

/// A zenoh subscriber feeding an [`Inbox`].
#[derive(Debug)]
pub struct Subscriber {
    inbox: Arc<Inbox>,
    _subscribers: Vec<zenoh::pubsub::Subscriber<()>>,
}

impl Subscriber {
    /// Subscribes to `selector` (e.g. `robot/r1/**`) for keys under `prefix`.
    ///
    /// # Errors
    /// [`TransportError::Zenoh`] if the selector is not a key expression or zenoh refuses.
    pub fn declare(
        session: &Session,
        selector: &str,
        prefix: &str,
        config: SubscriberConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let inbox = Arc::new(Inbox::new(prefix, config, clock));
        Ok(Self {
            _subscribers: vec![feed(session, selector, &inbox)?],
            inbox,
        })
    }

    /// Subscribes to every ROS 2 topic of `routes` ([`Routes::Ros2`]), each with the selector
    /// [`crate::ros2::base_selector`] so that samples of another type arrive and are counted
    /// (`type_mismatch`) rather than never heard.
    ///
    /// # Errors
    /// [`TransportError::Zenoh`] if zenoh refuses a subscription.
    pub fn declare_ros2(
        session: &Session,
        routes: Routes,
        config: SubscriberConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let selectors: Vec<String> = match &routes {
            Routes::Ros2(map) => map
                .keys()
                .map(|base| crate::ros2::base_selector(base))
                .collect(),
            Routes::Native { prefix } => vec![format!("{prefix}/**")],
        };
        let inbox = Arc::new(Inbox::with_routes(routes, config, clock));
        let subscribers = selectors
            .iter()
            .map(|sel| feed(session, sel, &inbox))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            inbox,
            _subscribers: subscribers,
        })
    }

    /// The buffered messages and counters.
    #[must_use]
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Shorthand for `inbox().recv_timeout(timeout)`.
    #[must_use]
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Received> {
        self.inbox.recv_timeout(timeout)
    }

    /// Shorthand for `inbox().stats()`.
    #[must_use]
    pub fn stats(&self) -> SubscriberStats {
        self.inbox.stats()
    }
}

/// A zenoh subscriber on `selector` whose callback feeds `inbox` (key, encoding, attachment,
/// payload).
fn feed(
    session: &Session,
    selector: &str,
    inbox: &Arc<Inbox>,
) -> Result<zenoh::pubsub::Subscriber<()>> {
    let sink = Arc::clone(inbox);
    // Large payloads arrive in fragments; they are gathered into one reused buffer rather
    // than a fresh allocation per sample (fresh multi-megabyte allocations cost page
    // faults with glibc's malloc, see the README's benchmark notes).
    let scratch = Mutex::new(Vec::<u8>::new());
    session
        .declare_subscriber(selector.to_owned())
        .callback(move |sample: Sample| {
            let encoding = sample.encoding().to_string();
            let key = sample.key_expr().as_str();
            let attachment = sample.attachment().map(|a| a.to_bytes());
            let attachment = attachment.as_deref();
            let payload = sample.payload();
            let mut slices = payload.slices();
            match (slices.next(), slices.next()) {
                (Some(only), None) => sink.ingest_sample(key, &encoding, attachment, only),
                (None, _) => sink.ingest_sample(key, &encoding, attachment, &[]),
                (Some(first), Some(second)) => {
                    let mut buf = scratch.lock().unwrap_or_else(PoisonError::into_inner);
                    buf.clear();
                    buf.reserve(payload.len());
                    for slice in [first, second].into_iter().chain(slices) {
                        buf.extend_from_slice(slice);
                    }
                    sink.ingest_sample(key, &encoding, attachment, &buf);
                }
            }
        })
        .wait()
        .map_err(|e| TransportError::zenoh("declare subscriber", &e))
}

/// The QoS a publisher uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamClass {
    /// Camera frames: `CongestionControl::Drop` (a stale frame is worth nothing).
    Frames,
    /// Action chunks: `express` (no batching) and `Priority::RealTime`.
    Actions,
    /// Joints and status: zenoh's defaults.
    Telemetry,
    /// Lossless bulk transfer (replays): `CongestionControl::Block`, so the sender waits for
    /// the network instead of dropping.
    Bulk,
}

impl StreamClass {
    /// The class a topic's publisher uses.
    #[must_use]
    pub fn for_topic(topic: &Topic) -> Self {
        match topic {
            Topic::Camera { .. } => Self::Frames,
            Topic::Action { .. } => Self::Actions,
            Topic::Imu { .. }
            | Topic::Joints { .. }
            | Topic::Status { .. }
            | Topic::Instruction { .. } => Self::Telemetry,
        }
    }
}

/// Declares a raw zenoh publisher on `key` with `class`'s QoS and `encoding`.
///
/// # Errors
/// [`TransportError::Zenoh`].
pub fn declare_raw_publisher(
    session: &Session,
    key: &str,
    class: StreamClass,
    encoding: Encoding,
) -> Result<zenoh::pubsub::Publisher<'static>> {
    let builder = session.declare_publisher(key.to_owned()).encoding(encoding);
    let builder = match class {
        StreamClass::Frames => builder.congestion_control(CongestionControl::Drop),
        StreamClass::Actions => builder
            .express(true)
            .priority(Priority::RealTime)
            .congestion_control(CongestionControl::Drop),
        StreamClass::Telemetry => builder,
        StreamClass::Bulk => builder.congestion_control(CongestionControl::Block),
    };
    builder
        .wait()
        .map_err(|e| TransportError::zenoh("declare publisher", &e))
}

/// A typed publisher of one message type on one key.
#[derive(Debug)]
pub struct Publisher<M: RosMessage> {
    inner: zenoh::pubsub::Publisher<'static>,
    _message: std::marker::PhantomData<fn(&M)>,
}

impl<M: RosMessage> Publisher<M> {
    /// Declares a publisher of `M` on `key` with `class`'s QoS.
    ///
    /// # Errors
    /// [`TransportError::Zenoh`].
    pub fn declare(session: &Session, key: &str, class: StreamClass) -> Result<Self> {
        Ok(Self {
            inner: declare_raw_publisher(session, key, class, encoding_for(M::KIND))?,
            _message: std::marker::PhantomData,
        })
    }

    /// Encodes and sends one message.
    ///
    /// # Errors
    /// Encoding errors ([`crate::msg::encode`]) or [`TransportError::Zenoh`].
    pub fn publish(&self, msg: &M) -> Result<()> {
        let bytes = encode(msg)?;
        self.publish_encoded(bytes)
    }

    /// Sends an already-encoded payload.
    ///
    /// # Errors
    /// [`TransportError::Zenoh`].
    pub fn publish_encoded(&self, payload: Vec<u8>) -> Result<()> {
        self.inner
            .put(payload)
            .wait()
            .map_err(|e| TransportError::zenoh("put", &e))
    }

    /// Waits up to `timeout` until some subscriber matches this publisher.
    ///
    /// # Errors
    /// [`TransportError::Zenoh`] on a zenoh error or the timeout.
    pub fn wait_for_subscriber(&self, timeout: Duration) -> Result<()> {
        wait_for_match(&self.inner, timeout)
    }
}

/// Waits up to `timeout` until some subscriber matches `publisher`.
///
/// # Errors
/// [`TransportError::Zenoh`] on a zenoh error or the timeout.
pub fn wait_for_match(
    publisher: &zenoh::pubsub::Publisher<'static>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = publisher
            .matching_status()
            .wait()
            .map_err(|e| TransportError::zenoh("matching status", &e))?;
        if status.matching() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(TransportError::Zenoh {
                context: "wait for subscriber",
                message: format!(
                    "no subscriber matched {} within {timeout:?}",
                    publisher.key_expr()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::msg::{CompressedImage, Header, JointState, Time};

    fn inbox(capacity: usize, limit: usize) -> Inbox {
        Inbox::new(
            "robot",
            SubscriberConfig {
                ring_capacity: capacity,
                max_payload_bytes: limit,
            },
            Arc::new(ManualClock::new(7)),
        )
    }

    fn frame(sec: i32) -> Vec<u8> {
        encode(&CompressedImage {
            header: Header {
                stamp: Time { sec, nanosec: 0 },
                frame_id: "c".into(),
            },
            format: "jpeg".into(),
            data: vec![1, 2, 3],
        })
        .unwrap()
    }

    fn sec_of(r: &Received) -> i32 {
        r.message.stamp().unwrap().sec
    }

    #[test]
    fn ring_keeps_newest_n_per_camera_and_counts_drops() {
        let inbox = inbox(2, 1 << 20);
        for s in 0..5 {
            inbox.ingest("robot/r/cam/a", "zenoh/bytes", &frame(s));
        }
        inbox.ingest("robot/r/cam/b", "application/cdr", &frame(100));
        let stats = inbox.stats();
        assert_eq!(stats.received, 6);
        assert_eq!(stats.dropped, 3);
        let cam_a = Topic::Camera {
            robot: "r".into(),
            name: "a".into(),
        };
        assert_eq!(inbox.latest(&cam_a).map(|r| sec_of(&r)), Some(4));
        // Oldest first across topics: a/3, a/4, b/100.
        let order: Vec<i32> = std::iter::from_fn(|| inbox.try_recv())
            .map(|r| sec_of(&r))
            .collect();
        assert_eq!(order, vec![3, 4, 100]);
        assert!(inbox.recv_timeout(Duration::from_millis(1)).is_none());
    }

    #[test]
    fn bad_input_is_counted_and_good_input_still_arrives() {
        let inbox = inbox(8, 64);
        inbox.ingest("robot/r/cam/a", "zenoh/bytes", &[0, 1, 0, 0, 9]); // malformed CDR
        inbox.ingest("robot/r/cam/a", "application/json", &frame(1)); // wrong encoding
        inbox.ingest(
            "robot/r/cam/a",
            "application/cdr;sensor_msgs/msg/JointState",
            &frame(1),
        ); // type the key does not carry
        inbox.ingest("robot/r/cam/a", "zenoh/bytes", &[0; 65]); // oversized
        inbox.ingest("robot/r/lidar", "zenoh/bytes", &frame(1)); // unknown key
        inbox.ingest("elsewhere/r/joints", "zenoh/bytes", &frame(1)); // unknown prefix
        inbox.ingest("robot/r/cam/a", "zenoh/bytes", &frame(2)); // good
        let js = encode(&JointState {
            name: vec!["j".into()],
            position: vec![0.5],
            ..JointState::default()
        })
        .unwrap();
        inbox.ingest("robot/r/joints", "zenoh/bytes", &js); // good
        let stats = inbox.stats();
        assert_eq!(
            stats,
            SubscriberStats {
                received: 8,
                dropped: 0,
                decode_errors: 1,
                wrong_encoding: 2,
                oversized: 1,
                unknown_key: 2,
                bad_attachment: 0,
                type_mismatch: 0,
            }
        );
        let first = inbox.try_recv().unwrap();
        assert_eq!(sec_of(&first), 2);
        assert_eq!(first.received_ns, 7);
        assert!(matches!(
            inbox.try_recv().unwrap().message,
            AnyMessage::JointState(_)
        ));
    }

    #[test]
    fn resolves_kinds_from_encoding_and_key() {
        let cam = Topic::Camera {
            robot: "r".into(),
            name: "c".into(),
        };
        let k = |e: &str| resolve_kind("k", &cam, e);
        assert_eq!(k("zenoh/bytes").unwrap(), MessageKind::CompressedImage);
        assert_eq!(
            k("application/cdr;sensor_msgs/msg/Image").unwrap(),
            MessageKind::Image
        );
        assert!(k("text/plain").is_err());
        assert!(k("application/cdr;foo/msg/Bar").is_err());
        assert_eq!(
            encoding_for(MessageKind::ActionChunk).to_string(),
            "application/cdr;edgevla_msgs/msg/ActionChunk"
        );
    }
}
