//! Reading recordings back: a tolerant MCAP reader that yields every complete message of a
//! file, also of one cut short (a recorder that was killed, a disk that filled up).
//!
//! It walks the data section record by record (each record is `opcode: u8`,
//! `length: u64 LE`, body), parsing complete records with the `mcap` crate
//! ([`mcap::parse_record`]) and decompressing chunks (zstd or uncompressed). At the first
//! incomplete record it stops; if that record is a chunk, it streams the chunk's compressed
//! prefix through the decompressor and keeps the complete records in what comes out. The
//! summary section is not needed and not read, so a file without one reads the same.
//!
//! What "complete" means in a cut chunk: uncompressed, every message whose bytes are all in
//! the file; zstd, every message inside the zstd blocks that are complete (a block holds up
//! to 128 KiB of uncompressed records, so up to that much before the cut is lost). The
//! recorder finishes a chunk every `flush_interval_ms`, which bounds the loss either way.
//!
//! The whole file is read into memory first (bounded by `max_bytes`).

use std::collections::HashMap;
use std::io::Read;

use mcap::records::Record;

use crate::error::{Result, TransportError};

const MAGIC: &[u8; 8] = b"\x89MCAP0\r\n";
const OP_SCHEMA: u8 = 0x03;
const OP_CHANNEL: u8 = 0x04;
const OP_MESSAGE: u8 = 0x05;
const OP_CHUNK: u8 = 0x06;
const OP_FOOTER: u8 = 0x02;
const OP_DATA_END: u8 = 0x0f;

/// One recorded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedMessage {
    /// The key it was recorded from (the MCAP topic).
    pub key: String,
    /// ROS 2 type name of its schema, if the channel has one.
    pub schema_name: Option<String>,
    /// The channel's message encoding (`cdr`, or a zenoh encoding string).
    pub message_encoding: String,
    /// Per-channel sequence number.
    pub sequence: u32,
    /// When the recorder received it (ns).
    pub log_time: u64,
    /// When it was published/stamped (ns).
    pub publish_time: u64,
    /// The payload exactly as received.
    pub data: Vec<u8>,
}

/// A recording read into memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recording {
    /// Messages in log-time order (file order among equal times).
    pub messages: Vec<RecordedMessage>,
    /// Whether the data section ended properly (`DataEnd` or `Footer` seen).
    pub complete: bool,
    /// Messages recovered from a chunk that was cut short.
    pub recovered_from_partial_chunk: usize,
}

#[derive(Debug, Clone)]
struct ChannelInfo {
    topic: String,
    schema_id: u16,
    message_encoding: String,
}

#[derive(Debug, Default)]
struct Walker {
    schemas: HashMap<u16, String>,
    channels: HashMap<u16, ChannelInfo>,
    messages: Vec<RecordedMessage>,
}

/// How a walk over a record stream ended.
enum End {
    /// Ran out of bytes at a record boundary or inside a record starting at this offset.
    Cut(usize),
    /// Reached `DataEnd` or `Footer`.
    Done,
}

impl Walker {
    fn record(&mut self, op: u8, body: &[u8]) -> Result<()> {
        let parsed = mcap::parse_record(op, body)?;
        match parsed {
            Record::Schema { header, .. } => {
                self.schemas.insert(header.id, header.name);
            }
            Record::Channel(c) => {
                self.channels.insert(
                    c.id,
                    ChannelInfo {
                        topic: c.topic,
                        schema_id: c.schema_id,
                        message_encoding: c.message_encoding,
                    },
                );
            }
            Record::Message { header, data } => {
                let channel = self.channels.get(&header.channel_id).ok_or_else(|| {
                    TransportError::Recording(format!(
                        "message on unknown channel {}",
                        header.channel_id
                    ))
                })?;
                self.messages.push(RecordedMessage {
                    key: channel.topic.clone(),
                    schema_name: self.schemas.get(&channel.schema_id).cloned(),
                    message_encoding: channel.message_encoding.clone(),
                    sequence: header.sequence,
                    log_time: header.log_time,
                    publish_time: header.publish_time,
                    data: data.into_owned(),
                });
            }
            Record::Chunk { header, data } => {
                let records = decompress(&header.compression, &data, header.uncompressed_size)?;
                if let End::Cut(at) = self.walk(&records)?
                    && at != records.len()
                {
                    return Err(TransportError::Recording(
                        "a complete chunk holds an incomplete record".into(),
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Walks records in `bytes` until they run out or the data section ends.
    fn walk(&mut self, bytes: &[u8]) -> Result<End> {
        let mut at = 0;
        loop {
            let Some(head) = bytes.get(at..at + 9) else {
                return Ok(End::Cut(at));
            };
            let op = head[0];
            let mut len_bytes = [0u8; 8];
            len_bytes.copy_from_slice(&head[1..9]);
            let len = usize::try_from(u64::from_le_bytes(len_bytes)).unwrap_or(usize::MAX);
            if op == OP_DATA_END || op == OP_FOOTER {
                return Ok(End::Done);
            }
            let Some(body) = (at + 9)
                .checked_add(len)
                .and_then(|end| bytes.get(at + 9..end))
            else {
                return Ok(End::Cut(at));
            };
            if matches!(op, OP_SCHEMA | OP_CHANNEL | OP_MESSAGE | OP_CHUNK) {
                self.record(op, body)?;
            }
            at += 9 + len;
        }
    }
}

/// The most a chunk may hold uncompressed. The reader allocates a chunk's declared size before
/// decompressing it, so a corrupt or hostile size must not reach the allocator (found by the
/// `mcap` fuzz target: a chunk declaring 279 GB aborted the process).
pub const MAX_CHUNK_BYTES: u64 = 1 << 30;

/// zstd cannot expand more than this (a 128 KiB block from a 4-byte RLE block).
const ZSTD_MAX_RATIO: u64 = 32_768;

fn decompress(compression: &str, data: &[u8], uncompressed_size: u64) -> Result<Vec<u8>> {
    match compression {
        "" => Ok(data.to_vec()),
        "zstd" => {
            let possible = (data.len() as u64)
                .saturating_mul(ZSTD_MAX_RATIO)
                .saturating_add(1 << 17);
            if uncompressed_size > MAX_CHUNK_BYTES.min(possible) {
                return Err(TransportError::Recording(format!(
                    "a zstd chunk of {} bytes declares {uncompressed_size} bytes uncompressed \
                     (at most {} possible, {MAX_CHUNK_BYTES} allowed): corrupt",
                    data.len(),
                    possible
                )));
            }
            let cap = usize::try_from(uncompressed_size).unwrap_or(0);
            zstd::bulk::decompress(data, cap)
                .map_err(|e| TransportError::Recording(format!("zstd chunk: {e}")))
        }
        other => Err(TransportError::Recording(format!(
            "chunk compression {other:?} is not supported (zstd or none)"
        ))),
    }
}

/// The decompressed prefix of a chunk whose record was cut short.
fn partial_chunk_records(body: &[u8]) -> Option<Vec<u8>> {
    // Chunk body: start u64, end u64, uncompressed_size u64, crc u32, compression string
    // (u32 length + bytes), records length u64, records.
    let clen = u32::from_le_bytes(body.get(28..32)?.try_into().ok()?) as usize;
    let compression = std::str::from_utf8(body.get(32..32 + clen)?).ok()?;
    let records = body.get(32 + clen + 8..)?;
    match compression {
        "" => Some(records.to_vec()),
        "zstd" => {
            let mut out = Vec::new();
            let decoder = zstd::stream::read::Decoder::new(records).ok()?;
            // Keeps what decoded before the input ran out (at most a chunk's worth).
            let _ = decoder.take(MAX_CHUNK_BYTES).read_to_end(&mut out);
            Some(out)
        }
        _ => None,
    }
}

/// Parses a recording held in memory.
///
/// ```
/// use std::io::Cursor;
/// use transport::msg::{StringMsg, encode};
/// use transport::record::{McapRecorder, RecorderConfig};
/// use transport::recording::parse_recording;
///
/// let mut rec = McapRecorder::new(Cursor::new(Vec::new()), RecorderConfig::default())?;
/// let payload = encode(&StringMsg { data: "ok".into() })?;
/// rec.write("robot/r1/status", "zenoh/bytes", &payload, 42)?;
/// let (_, out) = rec.finish()?;
/// let bytes = out.into_inner();
/// let recording = parse_recording(&bytes)?;
/// assert!(recording.complete);
/// assert_eq!(recording.messages[0].log_time, 42);
/// assert_eq!(recording.messages[0].data, payload);
/// # Ok::<(), transport::TransportError>(())
/// ```
///
/// # Errors
/// [`TransportError::Recording`] if it does not start with the MCAP magic, holds corrupt
/// records, or uses an unsupported chunk compression; [`TransportError::Mcap`] from record
/// parsing. A file that merely ends early is not an error.
pub fn parse_recording(bytes: &[u8]) -> Result<Recording> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| TransportError::Recording("not an MCAP file (bad magic)".into()))?;
    let mut walker = Walker::default();
    let mut recording = Recording::default();
    match walker.walk(rest)? {
        End::Done => recording.complete = true,
        End::Cut(at) => {
            let tail = &rest[at..];
            if tail.first() == Some(&OP_CHUNK)
                && let Some(records) = tail.get(9..).and_then(partial_chunk_records)
            {
                let before = walker.messages.len();
                // Complete records only; the cut one is dropped.
                walker.walk(&records)?;
                recording.recovered_from_partial_chunk = walker.messages.len() - before;
            }
            tracing::warn!(
                offset = at + MAGIC.len(),
                recovered = recording.recovered_from_partial_chunk,
                "recording ends early; read every complete message"
            );
        }
    }
    recording.messages = walker.messages;
    recording.messages.sort_by_key(|m| m.log_time);
    Ok(recording)
}

/// Reads a recording from `reader`, at most `max_bytes` of it.
///
/// # Errors
/// [`TransportError::Io`]; [`TransportError::Recording`] if the input exceeds `max_bytes`;
/// as [`parse_recording`].
pub fn read_recording<R: Read>(reader: R, max_bytes: u64) -> Result<Recording> {
    let mut bytes = Vec::new();
    reader
        .take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(TransportError::Recording(format!(
            "recording is larger than the {max_bytes}-byte limit"
        )));
    }
    parse_recording(&bytes)
}

/// Opens a recording at `path`: an MCAP file, or a rosbag2 bag folder (as `ros2 bag record -s
/// mcap` and `rosbags`' writer make it: `metadata.yaml` beside one or more `.mcap` files, topics
/// named with a leading slash). A bag's files are read in name order (rosbag2 numbers its
/// splits `<bag>_0.mcap`, `<bag>_1.mcap`, …) and their messages merged by log time; `max_bytes`
/// bounds the files together. The bag's `metadata.yaml` is not needed: the MCAP files carry the
/// topics, types and schemas.
///
/// # Errors
/// [`TransportError::Io`] for an unreadable path; [`TransportError::Recording`] for a folder
/// with no `.mcap` file (naming a sqlite3 bag's `.db3` files when it has them: convert those
/// with `ros2 bag convert`) or files over `max_bytes`; as [`parse_recording`].
pub fn open_recording(path: &std::path::Path, max_bytes: u64) -> Result<Recording> {
    if !path.is_dir() {
        return read_recording(std::fs::File::open(path)?, max_bytes);
    }
    let mut files = Vec::new();
    let mut db3 = 0;
    for entry in std::fs::read_dir(path)? {
        let file = entry?.path();
        match file.extension().and_then(|e| e.to_str()) {
            Some("mcap") => files.push(file),
            Some("db3") => db3 += 1,
            _ => {}
        }
    }
    if files.is_empty() {
        let hint = if db3 > 0 {
            format!(
                "; it holds {db3} sqlite3 file(s): convert the bag to MCAP storage with `ros2 bag convert`"
            )
        } else {
            String::new()
        };
        return Err(TransportError::Recording(format!(
            "{} is a folder without .mcap files (a rosbag2 bag in MCAP storage has them){hint}",
            path.display()
        )));
    }
    files.sort();
    let mut merged = Recording {
        complete: true,
        ..Recording::default()
    };
    let mut left = max_bytes;
    for file in &files {
        let size = std::fs::metadata(file)?.len();
        if size > left {
            return Err(TransportError::Recording(format!(
                "bag {} is larger than the {max_bytes}-byte limit",
                path.display()
            )));
        }
        left -= size;
        let part = read_recording(std::fs::File::open(file)?, size)?;
        merged.complete &= part.complete;
        merged.recovered_from_partial_chunk += part.recovered_from_partial_chunk;
        merged.messages.extend(part.messages);
    }
    // Stable: equal log times keep file order, then the order within a file.
    merged.messages.sort_by_key(|m| m.log_time);
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{JointState, encode};
    use crate::record::{Compression, McapRecorder, RecorderConfig};
    use std::io::Cursor;

    /// A zstd chunk whose header declares an impossible uncompressed size is an error before
    /// anything is allocated (the `mcap` fuzz target's first crash: 279 GB declared, the
    /// allocation aborted the process).
    #[test]
    fn a_chunk_declaring_an_absurd_size_is_an_error_not_an_abort() {
        let (mut bytes, _) = record(5, Compression::Zstd, 1 << 20);
        // the first record after the magic that is a chunk: its body starts with
        // message_start_time u64, message_end_time u64, uncompressed_size u64
        let mut at = MAGIC.len();
        while bytes[at] != OP_CHUNK {
            let len = u64::from_le_bytes(bytes[at + 1..at + 9].try_into().unwrap());
            at += 9 + usize::try_from(len).unwrap();
        }
        let size_at = at + 9 + 16;
        for declared in [279_172_878_546_u64, MAX_CHUNK_BYTES + 1, 1 << 26] {
            bytes[size_at..size_at + 8].copy_from_slice(&declared.to_le_bytes());
            let err = parse_recording(&bytes).unwrap_err().to_string();
            assert!(err.contains("declares"), "{declared}: {err}");
        }
    }

    fn record(n: u64, compression: Compression, chunk_size: u64) -> (Vec<u8>, Vec<Vec<u8>>) {
        record_with(n, compression, chunk_size, 0)
    }

    /// `n` JointStates with `noise` extra joints of pseudo-random (incompressible) positions.
    fn record_with(
        n: u64,
        compression: Compression,
        chunk_size: u64,
        noise: usize,
    ) -> (Vec<u8>, Vec<Vec<u8>>) {
        let config = RecorderConfig {
            chunk_size,
            compression,
            ..RecorderConfig::default()
        };
        let mut rec = McapRecorder::new(Cursor::new(Vec::new()), config).unwrap();
        let mut payloads = Vec::new();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for i in 0..n {
            let mut position = vec![i as f64, -(i as f64)];
            for _ in 0..noise {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                position.push(f64::from_bits(state >> 12 | 0x3ff0_0000_0000_0000));
            }
            let js = JointState {
                name: (0..position.len()).map(|j| format!("j{j}")).collect(),
                position,
                ..JointState::default()
            };
            let p = encode(&js).unwrap();
            rec.write("robot/r/joints", "zenoh/bytes", &p, 1000 + i)
                .unwrap();
            payloads.push(p);
        }
        (rec.finish().unwrap().1.into_inner(), payloads)
    }

    #[test]
    fn reads_a_complete_file() {
        let (bytes, payloads) = record(50, Compression::Zstd, 1024);
        let r = parse_recording(&bytes).unwrap();
        assert!(r.complete);
        assert_eq!(r.messages.len(), 50);
        for (m, p) in r.messages.iter().zip(&payloads) {
            assert_eq!(&m.data, p);
            assert_eq!(m.schema_name.as_deref(), Some("sensor_msgs/msg/JointState"));
        }
    }

    #[test]
    fn every_truncation_yields_a_prefix_of_complete_messages() {
        // One big chunk (~1.2 MB), so recovery must come from the cut chunk itself: all of
        // its complete messages when uncompressed; those in complete zstd blocks (128 KiB of
        // uncompressed data each) when compressed.
        for (compression, min_recovered) in [(Compression::None, 290), (Compression::Zstd, 150)] {
            let (bytes, payloads) = record_with(300, compression, 1 << 30, 500);
            let full = parse_recording(&bytes).unwrap();
            assert_eq!(full.messages.len(), 300);
            let mut last = 0;
            let mut best_partial = 0;
            for cut in (8..bytes.len()).step_by(bytes.len() / 200) {
                let r = parse_recording(&bytes[..cut]).unwrap();
                let n = r.messages.len();
                assert!(n >= last, "{compression:?} cut {cut}: {n} < {last}");
                for (m, p) in r.messages.iter().zip(&payloads) {
                    assert_eq!(&m.data, p);
                }
                best_partial = best_partial.max(r.recovered_from_partial_chunk);
                last = n;
            }
            assert!(
                best_partial >= min_recovered,
                "{compression:?}: recovered at most {best_partial}"
            );
        }
        // Uncompressed: a cut just after a message's last byte keeps that message.
        let (bytes, payloads) = record_with(20, Compression::None, 1 << 30, 0);
        let last = payloads.last().unwrap();
        let end = bytes
            .windows(last.len())
            .rposition(|w| w == last.as_slice())
            .unwrap()
            + last.len();
        assert_eq!(parse_recording(&bytes[..end]).unwrap().messages.len(), 20);
        assert_eq!(
            parse_recording(&bytes[..end - 1]).unwrap().messages.len(),
            19
        );
    }

    #[test]
    fn truncated_multi_chunk_file_keeps_finished_chunks() {
        let (bytes, _) = record(300, Compression::Zstd, 512);
        let r = parse_recording(&bytes[..bytes.len() * 2 / 3]).unwrap();
        assert!(!r.complete);
        assert!(r.messages.len() > 100, "{}", r.messages.len());
    }

    #[test]
    fn rejects_non_mcap_and_oversized_input() {
        assert!(parse_recording(b"hello world").is_err());
        let (bytes, _) = record(3, Compression::Zstd, 1024);
        assert!(read_recording(Cursor::new(&bytes), 10).is_err());
        assert_eq!(
            read_recording(Cursor::new(&bytes), 1 << 20)
                .unwrap()
                .messages
                .len(),
            3
        );
    }
}
