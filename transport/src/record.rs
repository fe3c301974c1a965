//! MCAP recording: one channel per key (and message type), ROS 2 `ros2msg` schemas, message
//! encoding `cdr`, log time = the recorder's clock at arrival, publish time = the message's
//! own stamp (or the log time when it has none), zstd-compressed chunks.
//!
//! The writer finishes the open chunk every `flush_interval_ms` of recorder time, so a
//! recorder killed mid-run loses at most that much; [`crate::recording`] reads such a
//! truncated file and still yields every complete message, including the complete messages
//! at the front of a cut-off chunk.
//!
//! Samples on keys outside the key space, or whose encoding does not resolve to a known
//! type, are recorded too, on schema-less channels whose message encoding is the zenoh
//! encoding string.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Seek, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zenoh::sample::Sample;
use zenoh::{Session, Wait};

use crate::clock::Clock;
use crate::error::{Result, TransportError};
use crate::keys::parse_key;
use crate::msg::{MessageKind, Time};
use crate::pubsub::resolve_kind;

/// Chunk compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd (default).
    #[default]
    Zstd,
    /// Uncompressed chunks.
    None,
}

/// Recorder settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecorderConfig {
    /// Key prefix of the key space (decides message types).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Target uncompressed chunk size in bytes. Default 4 MiB.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: u64,
    /// Chunk compression.
    #[serde(default)]
    pub compression: Compression,
    /// Finish the open chunk at least this often (recorder clock). Default 1000 ms.
    #[serde(default = "default_flush_ms")]
    pub flush_interval_ms: u64,
    /// Samples buffered between zenoh's callback and the file writer; beyond this they are
    /// dropped (and counted) rather than blocking the sender. Default 1024.
    #[serde(default = "default_queue")]
    pub queue_capacity: usize,
    /// ROS 2 mode: record rmw_zenoh's data keys of this ROS domain as rosbag2 does, one
    /// channel per topic (`/a/b`, with its leading slash) named by its ROS 2 type, the publish
    /// time from the sample's attachment ([`McapRecorder::write_sample`]). `None`: edgevla's
    /// own key space.
    #[serde(default)]
    pub ros2_domain: Option<u32>,
}

fn default_prefix() -> String {
    crate::keys::DEFAULT_PREFIX.to_owned()
}
fn default_chunk_size() -> u64 {
    4 << 20
}
fn default_flush_ms() -> u64 {
    1000
}
fn default_queue() -> usize {
    1024
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            prefix: default_prefix(),
            chunk_size: default_chunk_size(),
            compression: Compression::Zstd,
            flush_interval_ms: default_flush_ms(),
            queue_capacity: default_queue(),
            ros2_domain: None,
        }
    }
}

/// What a recording run wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecordSummary {
    /// Messages written.
    pub messages: u64,
    /// Payload bytes written (before compression).
    pub payload_bytes: u64,
    /// Channels created.
    pub channels: usize,
    /// Samples dropped because the writer fell behind.
    pub dropped: u64,
    /// ROS 2 mode: samples not recorded because their key, type, type hash or attachment is
    /// not what rmw_zenoh sends for a type edgevla knows (each key logged once).
    pub rejected: u64,
    /// Every channel written, in channel id order (filled in by [`McapRecorder::finish`]).
    pub topics: Vec<ChannelStats>,
    /// First and last log time written, ns (filled in by [`McapRecorder::finish`]).
    #[serde(skip)]
    pub log_time_range: Option<(u64, u64)>,
}

/// One channel of a recording: its topic (the key, or in ROS 2 mode the `/topic`), its type
/// and how many messages it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelStats {
    /// Channel topic.
    pub topic: String,
    /// ROS 2 type name (`sensor_msgs/msg/CompressedImage`), or the zenoh encoding of a
    /// schema-less channel.
    pub type_name: String,
    /// The type's RIHS01 hash, when the channel has a ROS 2 type.
    pub type_hash: Option<&'static str>,
    /// Messages written on it.
    pub messages: u64,
}

/// The stamp at the front of a CDR body (every stamped edgevla message starts with it).
#[must_use]
pub fn peek_stamp(kind: MessageKind, payload: &[u8]) -> Option<Time> {
    if kind == MessageKind::String {
        return None;
    }
    let head = payload.get(..12)?;
    let (sec, nanosec) = match head[1] {
        0x01 => (
            i32::from_le_bytes([head[4], head[5], head[6], head[7]]),
            u32::from_le_bytes([head[8], head[9], head[10], head[11]]),
        ),
        0x00 => (
            i32::from_be_bytes([head[4], head[5], head[6], head[7]]),
            u32::from_be_bytes([head[8], head[9], head[10], head[11]]),
        ),
        _ => return None,
    };
    Some(Time { sec, nanosec })
}

/// Writes samples into an MCAP file.
pub struct McapRecorder<W: Write + Seek> {
    writer: mcap::Writer<W>,
    config: RecorderConfig,
    schemas: HashMap<MessageKind, u16>,
    channels: HashMap<(String, String), u16>,
    stats: BTreeMap<u16, ChannelStats>,
    log_range: Option<(u64, u64)>,
    warned: HashSet<String>,
    last_flush_ns: Option<u64>,
    summary: RecordSummary,
}

impl<W: Write + Seek> std::fmt::Debug for McapRecorder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McapRecorder")
            .field("config", &self.config)
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl<W: Write + Seek> McapRecorder<W> {
    /// Starts an MCAP file (profile `ros2`) on `out`.
    ///
    /// # Errors
    /// [`TransportError::Mcap`] if the header cannot be written.
    pub fn new(out: W, config: RecorderConfig) -> Result<Self> {
        let compression = match config.compression {
            Compression::Zstd => Some(mcap::Compression::Zstd),
            Compression::None => None,
        };
        let writer = mcap::WriteOptions::new()
            .profile("ros2")
            .library(concat!("edgevla-transport ", env!("CARGO_PKG_VERSION")))
            .compression(compression)
            .chunk_size(Some(config.chunk_size))
            .create(out)?;
        Ok(Self {
            writer,
            config,
            schemas: HashMap::new(),
            channels: HashMap::new(),
            stats: BTreeMap::new(),
            log_range: None,
            warned: HashSet::new(),
            last_flush_ns: None,
            summary: RecordSummary::default(),
        })
    }

    fn channel(&mut self, key: &str, encoding: &str) -> Result<(u16, Option<MessageKind>)> {
        let kind = parse_key(&self.config.prefix, key)
            .and_then(|topic| resolve_kind(key, &topic, encoding))
            .ok();
        let id = self.channel_of(key, kind, encoding)?;
        Ok((id, kind))
    }

    /// The channel of `key` carrying `kind` (or, with no kind, the raw `encoding`).
    fn channel_of(&mut self, key: &str, kind: Option<MessageKind>, encoding: &str) -> Result<u16> {
        let label = kind.map_or_else(|| encoding.to_owned(), |k| k.type_name().to_owned());
        if let Some(&id) = self.channels.get(&(key.to_owned(), label.clone())) {
            return Ok(id);
        }
        let id = match kind {
            Some(kind) => {
                let schema = match self.schemas.get(&kind) {
                    Some(&s) => s,
                    None => {
                        let s = self.writer.add_schema(
                            kind.type_name(),
                            "ros2msg",
                            kind.ros2msg_schema().as_bytes(),
                        )?;
                        self.schemas.insert(kind, s);
                        s
                    }
                };
                self.writer
                    .add_channel(schema, key, "cdr", &BTreeMap::new())?
            }
            None => {
                tracing::debug!(key, encoding, "recording on a schema-less channel");
                self.writer
                    .add_channel(0, key, encoding, &BTreeMap::new())?
            }
        };
        self.stats.insert(
            id,
            ChannelStats {
                topic: key.to_owned(),
                type_name: label.clone(),
                type_hash: kind.map(crate::ros2::type_hash),
                messages: 0,
            },
        );
        self.channels.insert((key.to_owned(), label), id);
        self.summary.channels = self.channels.len();
        Ok(id)
    }

    /// Writes one sample as zenoh delivered it: in ROS 2 mode ([`RecorderConfig::ros2_domain`])
    /// through [`Self::write_ros2`], else through [`Self::write`].
    ///
    /// # Errors
    /// [`TransportError::Mcap`] (I/O or too many channels).
    pub fn write_sample(
        &mut self,
        key: &str,
        encoding: &str,
        payload: &[u8],
        attachment: Option<&[u8]>,
        log_time_ns: u64,
    ) -> Result<()> {
        if self.config.ros2_domain.is_some() {
            self.write_ros2(key, payload, attachment, log_time_ns)
        } else {
            self.write(key, encoding, payload, log_time_ns)
        }
    }

    /// Writes one rmw_zenoh sample on its topic's channel (`/a/b`, the type's `ros2msg`
    /// schema), publish time = the attachment's source timestamp. A sample whose key is not
    /// a data key of the recorder's domain, whose type edgevla has no definition of, whose
    /// type hash is not its type's, or whose attachment is missing or malformed is not written:
    /// it is counted in [`RecordSummary::rejected`] and its key logged once.
    ///
    /// # Errors
    /// [`TransportError::Mcap`] (I/O or too many channels).
    pub fn write_ros2(
        &mut self,
        key: &str,
        payload: &[u8],
        attachment: Option<&[u8]>,
        log_time_ns: u64,
    ) -> Result<()> {
        let routed = self.ros2_route(key, attachment);
        match routed {
            Ok((topic, kind, publish_time)) => {
                let channel_id = self.channel_of(&topic, Some(kind), "")?;
                self.write_on(channel_id, Some(kind), payload, log_time_ns, publish_time)
            }
            Err(error) => {
                self.summary.rejected += 1;
                if self.warned.insert(key.to_owned()) {
                    tracing::warn!(key, %error, "ROS 2 sample not recorded (further ones on this key are counted only)");
                }
                Ok(())
            }
        }
    }

    fn ros2_route(
        &self,
        key: &str,
        attachment: Option<&[u8]>,
    ) -> Result<(String, MessageKind, Option<u64>)> {
        let (domain, topic, kind) = crate::ros2::parse_data_key(key)?;
        if Some(domain) != self.config.ros2_domain {
            return Err(TransportError::UnknownKey {
                key: key.to_owned(),
                prefix: format!(
                    "ROS domain {} (the recorder's)",
                    self.config.ros2_domain.unwrap_or_default()
                ),
            });
        }
        let attachment = crate::ros2::Attachment::require(attachment)?;
        let publish = u64::try_from(attachment.source_timestamp_ns)
            .ok()
            .filter(|&t| t > 0);
        Ok((topic, kind, publish))
    }

    /// Writes one sample received at `log_time_ns`.
    ///
    /// # Errors
    /// [`TransportError::Mcap`] (I/O or too many channels).
    pub fn write(
        &mut self,
        key: &str,
        encoding: &str,
        payload: &[u8],
        log_time_ns: u64,
    ) -> Result<()> {
        let (channel_id, kind) = self.channel(key, encoding)?;
        self.write_on(channel_id, kind, payload, log_time_ns, None)
    }

    /// Writes one CDR message of a known `kind` on `key`, whether or not `key` is in the
    /// recorder's key space (importers of other datasets use this: the channel gets `kind`'s
    /// ROS 2 schema either way). Publish time is the message's stamp, as in [`Self::write`].
    ///
    /// # Errors
    /// [`TransportError::Mcap`] (I/O or too many channels).
    pub fn write_typed(
        &mut self,
        key: &str,
        kind: MessageKind,
        payload: &[u8],
        log_time_ns: u64,
    ) -> Result<()> {
        let channel_id = self.channel_of(key, Some(kind), "")?;
        self.write_on(channel_id, Some(kind), payload, log_time_ns, None)
    }

    fn write_on(
        &mut self,
        channel_id: u16,
        kind: Option<MessageKind>,
        payload: &[u8],
        log_time_ns: u64,
        publish_time: Option<u64>,
    ) -> Result<()> {
        let publish_time = publish_time.unwrap_or_else(|| {
            kind.and_then(|k| peek_stamp(k, payload))
                .map_or(log_time_ns, Time::as_nanos)
        });
        // Every channel has its stats from `channel_of`; its message count is the sequence.
        let stats = self
            .stats
            .get_mut(&channel_id)
            .ok_or(TransportError::Recording(format!(
                "channel {channel_id} was never created"
            )))?;
        stats.messages += 1;
        let header = mcap::records::MessageHeader {
            channel_id,
            sequence: stats.messages as u32,
            log_time: log_time_ns,
            publish_time,
        };
        self.writer.write_to_known_channel(&header, payload)?;
        self.log_range = Some(match self.log_range {
            Some((first, last)) => (first.min(log_time_ns), last.max(log_time_ns)),
            None => (log_time_ns, log_time_ns),
        });
        self.summary.messages += 1;
        self.summary.payload_bytes += payload.len() as u64;
        let last = *self.last_flush_ns.get_or_insert(log_time_ns);
        if log_time_ns.saturating_sub(last) >= self.config.flush_interval_ms * 1_000_000 {
            self.flush(log_time_ns)?;
        }
        Ok(())
    }

    /// Finishes the open chunk and flushes the output (called on a timer by the record loop).
    ///
    /// # Errors
    /// [`TransportError::Mcap`].
    pub fn flush(&mut self, now_ns: u64) -> Result<()> {
        self.writer.flush()?;
        self.last_flush_ns = Some(now_ns);
        Ok(())
    }

    /// Whether the last flush is older than the flush interval at `now_ns`.
    #[must_use]
    pub fn flush_due(&self, now_ns: u64) -> bool {
        self.last_flush_ns
            .is_some_and(|t| now_ns.saturating_sub(t) >= self.config.flush_interval_ms * 1_000_000)
    }

    /// Writes the summary and footer, returning what was written and the output.
    ///
    /// # Errors
    /// [`TransportError::Mcap`].
    pub fn finish(mut self) -> Result<(RecordSummary, W)> {
        self.writer.finish()?;
        self.summary.topics = std::mem::take(&mut self.stats).into_values().collect();
        self.summary.log_time_range = self.log_range;
        Ok((self.summary, self.writer.into_inner()))
    }
}

/// When a recording run stops (besides the shutdown flag).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordLimits {
    /// Stop after this many messages.
    pub max_messages: Option<u64>,
    /// Stop after this much recorder-clock time, in nanoseconds.
    pub max_duration_ns: Option<u64>,
}

struct Incoming {
    key: String,
    encoding: String,
    payload: Vec<u8>,
    attachment: Option<Vec<u8>>,
    log_time_ns: u64,
}

impl Incoming {
    fn write_to<W: Write + Seek>(&self, recorder: &mut McapRecorder<W>) -> Result<()> {
        recorder.write_sample(
            &self.key,
            &self.encoding,
            &self.payload,
            self.attachment.as_deref(),
            self.log_time_ns,
        )
    }
}

/// Subscribes to `selector` and records every sample into `recorder` until `shutdown` is set
/// or a limit is reached, then finishes the file.
///
/// zenoh's callback stamps each sample with `clock` and hands it to the writer through a
/// bounded queue; when the queue is full the sample is dropped and counted, never blocking
/// the sender. `ready` is called once the subscription is declared.
///
/// # Errors
/// [`TransportError::Zenoh`] if the subscription fails; [`TransportError::Mcap`] on write errors.
pub fn record_session<W: Write + Seek>(
    session: &Session,
    selector: &str,
    mut recorder: McapRecorder<W>,
    clock: Arc<dyn Clock>,
    limits: RecordLimits,
    shutdown: &AtomicBool,
    ready: impl FnOnce(),
) -> Result<(RecordSummary, W)> {
    let (tx, rx) = mpsc::sync_channel::<Incoming>(recorder.config.queue_capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    let cb_dropped = Arc::clone(&dropped);
    let cb_clock = Arc::clone(&clock);
    let subscriber = session
        .declare_subscriber(selector.to_owned())
        .callback(move |sample: Sample| {
            let item = Incoming {
                key: sample.key_expr().as_str().to_owned(),
                encoding: sample.encoding().to_string(),
                payload: sample.payload().to_bytes().into_owned(),
                attachment: sample.attachment().map(|a| a.to_bytes().into_owned()),
                log_time_ns: cb_clock.now_ns(),
            };
            if tx.try_send(item).is_err() {
                cb_dropped.fetch_add(1, Ordering::Relaxed);
            }
        })
        .wait()
        .map_err(|e| TransportError::zenoh("declare subscriber", &e))?;
    ready();
    let start = clock.now_ns();
    let mut first_error = None;
    loop {
        if shutdown.load(Ordering::SeqCst) {
            // Ctrl-C: what zenoh already handed over is written, not lost in the queue.
            while let Ok(item) = rx.try_recv() {
                if let Err(e) = item.write_to(&mut recorder) {
                    first_error = Some(e);
                    break;
                }
            }
            break;
        }
        if limits
            .max_messages
            .is_some_and(|n| recorder.summary.messages >= n)
        {
            break;
        }
        let now = clock.now_ns();
        if limits
            .max_duration_ns
            .is_some_and(|d| now.saturating_sub(start) >= d)
        {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(item) => {
                if let Err(e) = item.write_to(&mut recorder) {
                    first_error = Some(e);
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if recorder.flush_due(now) {
                    recorder.flush(now)?;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(subscriber);
    if let Some(e) = first_error {
        return Err(e);
    }
    let (mut summary, out) = recorder.finish()?;
    summary.dropped = dropped.load(Ordering::Relaxed);
    Ok((summary, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{CompressedImage, Header, encode};
    use std::io::Cursor;

    #[test]
    fn writes_a_readable_mcap_with_schemas_and_times() {
        let mut rec =
            McapRecorder::new(Cursor::new(Vec::new()), RecorderConfig::default()).unwrap();
        let frame = encode(&CompressedImage {
            header: Header {
                stamp: Time { sec: 2, nanosec: 5 },
                frame_id: "f".into(),
            },
            format: "jpeg".into(),
            data: vec![1; 100],
        })
        .unwrap();
        rec.write("robot/a/cam/front", "zenoh/bytes", &frame, 10)
            .unwrap();
        rec.write("robot/a/cam/front", "zenoh/bytes", &frame, 20)
            .unwrap();
        rec.write("robot/a/unknown", "text/plain", b"hi", 30)
            .unwrap();
        let (summary, out) = rec.finish().unwrap();
        assert_eq!(summary.messages, 3);
        assert_eq!(summary.channels, 2);
        let bytes = out.into_inner();
        let msgs: Vec<_> = mcap::MessageStream::new(&bytes)
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].channel.topic, "robot/a/cam/front");
        assert_eq!(msgs[0].channel.message_encoding, "cdr");
        let schema = msgs[0].channel.schema.as_ref().unwrap();
        assert_eq!(schema.name, "sensor_msgs/msg/CompressedImage");
        assert_eq!(schema.encoding, "ros2msg");
        assert_eq!(msgs[0].log_time, 10);
        assert_eq!(msgs[0].publish_time, 2_000_000_005);
        assert_eq!(msgs[1].sequence, 2);
        assert_eq!(&*msgs[0].data, frame.as_slice());
        assert!(msgs[2].channel.schema.is_none());
        assert_eq!(msgs[2].channel.message_encoding, "text/plain");
        assert_eq!(msgs[2].publish_time, 30);
    }

    #[test]
    fn write_typed_gives_keys_outside_the_key_space_a_schema() {
        let mut rec =
            McapRecorder::new(Cursor::new(Vec::new()), RecorderConfig::default()).unwrap();
        let imu = encode(&crate::msg::Imu {
            header: Header {
                stamp: Time { sec: 4, nanosec: 1 },
                frame_id: "imu0".into(),
            },
            ..crate::msg::Imu::default()
        })
        .unwrap();
        rec.write_typed("robot/a/imu/imu0", MessageKind::Imu, &imu, 7)
            .unwrap();
        rec.write_typed("robot/a/imu/imu0", MessageKind::Imu, &imu, 8)
            .unwrap();
        let (summary, out) = rec.finish().unwrap();
        assert_eq!((summary.messages, summary.channels), (2, 1));
        let bytes = out.into_inner();
        let msgs: Vec<_> = mcap::MessageStream::new(&bytes)
            .unwrap()
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        let schema = msgs[0].channel.schema.as_ref().unwrap();
        assert_eq!(schema.name, "sensor_msgs/msg/Imu");
        assert_eq!(msgs[0].channel.message_encoding, "cdr");
        assert_eq!(msgs[0].publish_time, 4_000_000_001);
        assert_eq!((msgs[0].sequence, msgs[1].sequence), (1, 2));
    }

    #[test]
    fn peeks_stamps_in_both_byte_orders() {
        let le = [0, 1, 0, 0, 3, 0, 0, 0, 9, 0, 0, 0];
        assert_eq!(
            peek_stamp(MessageKind::JointState, &le),
            Some(Time { sec: 3, nanosec: 9 })
        );
        let be = [0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 9];
        assert_eq!(
            peek_stamp(MessageKind::Image, &be),
            Some(Time { sec: 3, nanosec: 9 })
        );
        assert_eq!(peek_stamp(MessageKind::String, &le), None);
        assert_eq!(peek_stamp(MessageKind::Image, &le[..5]), None);
    }
}
