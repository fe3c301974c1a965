//! `edgevla import`: converts a recorded dataset folder into an edgevla MCAP recording (the
//! same channels, schemas and times `edgevla record` writes) plus a matching rig config, so
//! real data replays like any other run.
//!
//! Two layouts are read ([`Format`]), detected from the folder's files or named by `--format`:
//! - EuRoC ASL ([`euroc`]): `cam*/data.csv` + `cam*/data/<ns>.png` + `cam*/sensor.yaml`,
//!   `imu0/data.csv` + `imu0/sensor.yaml` (optionally under `mav0/`);
//! - LeRobot v2.1 episode ([`lerobot`]), as flattened in `../shared/data/g1_pick_bottle`:
//!   `<camera>/NNNNNN.jpg` frames, `episode.csv` (`timestamp_s, frame_index, state_*,
//!   action_*`), `info.json` (fps, joint names, image shapes), `tasks.jsonl` (instructions).
//!
//! Each reader turns its folder into a [`Plan`]: every message with its time, small messages
//! already CDR-encoded, frames as file paths read one at a time while writing. The plan is
//! written in time order (ties keep stream order) with [`McapRecorder::write_typed`]: log
//! time = publish time = the dataset's recorded timestamp. The MCAP goes to `<out>.partial`
//! first and is renamed when complete, so a failed import leaves no half file behind.
//!
//! Frames are passed through byte for byte as `sensor_msgs/CompressedImage` (`--images
//! compressed`, the default) or decoded into `sensor_msgs/Image` (`--images raw`); either way
//! every frame is decoded once to check it (size against the rig, corrupt files named) unless
//! `--no-verify`.

mod euroc;
mod lerobot;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;
use transport::keys::{DEFAULT_PREFIX, KeySpace};
use transport::msg::{CompressedImage, Header, Image, MessageKind, RosMessage, Time, encode};
use transport::record::{Compression, McapRecorder, RecorderConfig};
use vision::{DecodeLimits, Decoder, Encoding, FrameRef, PixelFormat};

use crate::progress;
use crate::transport_cmd::CompressionArg;

/// Arguments of `edgevla import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Dataset folder (an EuRoC ASL folder or its `mav0/`, or a LeRobot episode folder).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,

    /// Output MCAP file.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Also write the matching rig config (vision's Rig TOML) here.
    #[arg(long, value_name = "FILE")]
    pub rig_out: Option<PathBuf>,

    /// Dataset layout; detected from the folder's files when left out.
    #[arg(long, value_enum)]
    pub format: Option<Format>,

    /// Key prefix of the edgevla key space.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    pub prefix: String,

    /// Robot id in the keys (`<prefix>/<id>/cam/<name>`, ...). Default: the dataset folder's
    /// name up to its first `_`, lower-cased (`euroc_stereo` -> `euroc`, `g1_pick_bottle` ->
    /// `g1`).
    #[arg(long, value_name = "ID")]
    pub robot_id: Option<String>,

    /// Camera frames as the file bytes (`compressed`: sensor_msgs/CompressedImage, not
    /// re-encoded) or decoded pixels (`raw`: sensor_msgs/Image, mono8 or rgb8).
    #[arg(long, value_enum, default_value = "compressed")]
    pub images: ImageMode,

    /// LeRobot: leave the recorded actions out (by default they are written as one-step
    /// ActionChunks on `<prefix>/<id>/action`, where a live node would publish its own).
    #[arg(long)]
    pub no_actions: bool,

    /// LeRobot: the task (its `task_index` in tasks.jsonl) to use as the instruction when
    /// episode.csv has no `task_index` column and tasks.jsonl holds more than one task.
    #[arg(long, value_name = "INDEX")]
    pub task_index: Option<u64>,

    /// Pass frames through without decoding them first (faster; a corrupt frame then shows
    /// only when it is replayed).
    #[arg(long)]
    pub no_verify: bool,

    /// Chunk compression.
    #[arg(long, value_enum, default_value = "zstd")]
    pub compression: CompressionArg,

    /// No progress bar (logs a line every 10% instead).
    #[arg(long)]
    pub quiet: bool,
}

/// A dataset layout `edgevla import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// EuRoC MAV "ASL" folders: per-sensor `data.csv` + `sensor.yaml`, PNG frames.
    Euroc,
    /// A LeRobot v2.1 episode: frames per camera, `episode.csv`, `info.json`, `tasks.jsonl`.
    Lerobot,
}

/// How camera frames are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageMode {
    /// `sensor_msgs/CompressedImage` with the file's bytes.
    Compressed,
    /// `sensor_msgs/Image` with the decoded pixels.
    Raw,
}

/// One camera of a plan: where its frames go and what they must look like.
#[derive(Debug, Clone)]
pub(crate) struct CameraSpec {
    /// Camera name (the rig's name and the frames' `frame_id`).
    pub name: String,
    /// Key its frames are written on.
    pub key: String,
    /// Expected `[width, height]`.
    pub resolution: [u32; 2],
    /// Nominal frame rate, Hz.
    pub rate_hz: f64,
}

/// Where one message of a plan comes from.
#[derive(Debug)]
pub(crate) enum Payload {
    /// A frame file of camera `camera` (index into [`Plan::cameras`]); `origin` names the
    /// table row that listed it, for errors.
    Frame {
        camera: usize,
        path: PathBuf,
        origin: String,
    },
    /// An encoded message written on `key` (index into [`Plan::keys`]).
    Encoded {
        key: usize,
        kind: MessageKind,
        bytes: Vec<u8>,
    },
}

/// One message to write.
#[derive(Debug)]
pub(crate) struct Item {
    /// Recorded time, ns.
    pub t_ns: u64,
    /// Stream order among equal times (cameras first, in rig order).
    pub stream: u32,
    /// What to write.
    pub payload: Payload,
}

/// A dataset read into messages to write, plus its rig.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Cameras, in rig order.
    pub cameras: Vec<CameraSpec>,
    /// Keys of the encoded (non-frame) messages.
    pub keys: Vec<String>,
    /// Every message, in any order.
    pub items: Vec<Item>,
    /// The rig config's TOML text (already validated by `vision::Rig`).
    pub rig_toml: String,
    /// Things in the folder that were not imported, and why.
    pub skipped: Vec<String>,
}

impl Plan {
    /// The index of `key` in [`Plan::keys`], adding it if new.
    pub fn key(&mut self, key: String) -> usize {
        match self.keys.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                self.keys.push(key);
                self.keys.len() - 1
            }
        }
    }

    /// Adds an encoded message.
    pub fn push<M: RosMessage>(
        &mut self,
        key: usize,
        t_ns: u64,
        stream: u32,
        msg: &M,
    ) -> Result<()> {
        let bytes = encode(msg)?;
        self.items.push(Item {
            t_ns,
            stream,
            payload: Payload::Encoded {
                key,
                kind: M::KIND,
                bytes,
            },
        });
        Ok(())
    }
}

/// What an import wrote (printed as JSON).
#[derive(Debug, Serialize)]
struct Summary {
    format: Format,
    from: String,
    out: String,
    rig: Option<String>,
    messages: u64,
    channels: usize,
    payload_bytes: u64,
    file_bytes: u64,
    /// Messages per key.
    topics: BTreeMap<String, u64>,
    first_time_ns: u64,
    last_time_ns: u64,
    skipped: Vec<String>,
    elapsed_s: f64,
}

/// Runs `edgevla import`.
///
/// # Errors
/// A folder that is neither layout, missing or corrupt files (named, with the table line),
/// frames that do not decode or do not match the rig, or an output that cannot be written.
pub fn run(args: &ImportArgs, out: &mut impl Write) -> Result<()> {
    let started = Instant::now();
    if !args.from.is_dir() {
        bail!("--from {}: not a folder", args.from.display());
    }
    let format = match args.format {
        Some(f) => f,
        None => detect(&args.from)?,
    };
    let robot_id = match &args.robot_id {
        Some(id) => id.clone(),
        None => default_robot_id(&args.from),
    };
    let keys = KeySpace::new(&args.prefix, &robot_id)
        .with_context(|| format!("--prefix {:?} / robot id {robot_id:?}", args.prefix))?;
    let options = lerobot::Options {
        actions: !args.no_actions,
        task_index: args.task_index,
    };
    let mut plan = match format {
        Format::Euroc => euroc::plan(&args.from, &keys)?,
        Format::Lerobot => lerobot::plan(&args.from, &keys, &options)?,
    };
    if plan.items.is_empty() {
        bail!("{}: no messages to import", args.from.display());
    }
    // Time order; equal times keep stream order, then table order (a stable sort).
    plan.items.sort_by_key(|item| (item.t_ns, item.stream));
    let (summary_counts, file_bytes) = write_mcap(&plan, args)?;
    if let Some(rig_out) = &args.rig_out {
        std::fs::write(rig_out, &plan.rig_toml)
            .with_context(|| format!("writing {}", rig_out.display()))?;
    }
    let (messages, channels, payload_bytes, topics) = summary_counts;
    let summary = Summary {
        format,
        from: args.from.display().to_string(),
        out: args.out.display().to_string(),
        rig: args.rig_out.as_ref().map(|p| p.display().to_string()),
        messages,
        channels,
        payload_bytes,
        file_bytes,
        topics,
        first_time_ns: plan.items.first().map_or(0, |i| i.t_ns),
        last_time_ns: plan.items.last().map_or(0, |i| i.t_ns),
        skipped: plan.skipped,
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    writeln!(out, "{}", serde_json::to_string(&summary)?)?;
    Ok(())
}

type Counts = (u64, usize, u64, BTreeMap<String, u64>);

/// Writes the plan's items (sorted) to `<out>.partial`, then renames it to `out`.
fn write_mcap(plan: &Plan, args: &ImportArgs) -> Result<(Counts, u64)> {
    let mut partial = args.out.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = write_items(plan, args, &partial);
    match result {
        Ok(counts) => {
            std::fs::rename(&partial, &args.out).with_context(|| {
                format!("renaming {} to {}", partial.display(), args.out.display())
            })?;
            let file_bytes = std::fs::metadata(&args.out)
                .with_context(|| format!("reading {}", args.out.display()))?
                .len();
            Ok((counts, file_bytes))
        }
        Err(e) => {
            // Best effort: the half-written file is of no use.
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

fn write_items(plan: &Plan, args: &ImportArgs, path: &Path) -> Result<Counts> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let config = RecorderConfig {
        prefix: args.prefix.clone(),
        compression: match args.compression {
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::None => Compression::None,
        },
        ..RecorderConfig::default()
    };
    let mut recorder = McapRecorder::new(BufWriter::new(file), config)?;
    let mut decoder = Decoder::new(DecodeLimits::default());
    let mut pixels = vision::Image::default();
    let mut topics: BTreeMap<String, u64> = BTreeMap::new();
    let total = plan.items.len() as u64;
    let mut bar = progress::bar(total, "import", args.quiet);
    let mut payload = Vec::new();
    for (done, item) in plan.items.iter().enumerate() {
        let key = match &item.payload {
            Payload::Encoded { key, kind, bytes } => {
                let key = plan.keys.get(*key).context("plan key index")?;
                recorder.write_typed(key, *kind, bytes, item.t_ns)?;
                key.as_str()
            }
            Payload::Frame {
                camera,
                path,
                origin,
            } => {
                let cam = plan.cameras.get(*camera).context("plan camera index")?;
                let kind = frame_message(
                    cam,
                    path,
                    item.t_ns,
                    args,
                    &mut decoder,
                    &mut pixels,
                    &mut payload,
                )
                .with_context(|| format!("{} (listed at {origin})", path.display()))?;
                recorder.write_typed(&cam.key, kind, &payload, item.t_ns)?;
                cam.key.as_str()
            }
        };
        *topics.entry(key.to_owned()).or_insert(0) += 1;
        let done = done as u64 + 1;
        if done.is_multiple_of(16) || done == total {
            bar.step(done, key);
        }
    }
    bar.finish();
    let (summary, mut writer) = recorder.finish()?;
    writer
        .flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((
        summary.messages,
        summary.channels,
        summary.payload_bytes,
        topics,
    ))
}

/// Reads one frame file, checks it, and encodes its message into `payload`.
fn frame_message(
    cam: &CameraSpec,
    path: &Path,
    t_ns: u64,
    args: &ImportArgs,
    decoder: &mut Decoder,
    pixels: &mut vision::Image,
    payload: &mut Vec<u8>,
) -> Result<MessageKind> {
    let data = std::fs::read(path).context("reading the frame")?;
    let encoding = sniff(&data)?;
    let header = Header {
        stamp: Time::from_nanos(t_ns),
        frame_id: cam.name.clone(),
    };
    let decode = args.images == ImageMode::Raw || !args.no_verify;
    if decode {
        decoder
            .decode_into(&FrameRef::compressed(encoding, &data), pixels)
            .context("decoding the frame")?;
        let [w, h] = cam.resolution;
        if (pixels.width(), pixels.height()) != (w, h) {
            bail!(
                "frame is {}x{}, camera {} is {w}x{h}",
                pixels.width(),
                pixels.height(),
                cam.name
            );
        }
    }
    match args.images {
        ImageMode::Compressed => {
            let msg = CompressedImage {
                header,
                format: encoding.name().to_owned(),
                data,
            };
            transport::msg::encode_into(&msg, payload)?;
            Ok(MessageKind::CompressedImage)
        }
        ImageMode::Raw => {
            let encoding = match pixels.format() {
                PixelFormat::Gray8 => Encoding::Mono8,
                PixelFormat::Rgb8 => Encoding::Rgb8,
            };
            let channels = encoding.raw_bytes_per_pixel().unwrap_or(1);
            let msg = Image {
                header,
                height: pixels.height(),
                width: pixels.width(),
                encoding: encoding.name().to_owned(),
                is_bigendian: 0,
                step: pixels.width() * channels,
                data: pixels.data().to_vec(),
            };
            transport::msg::encode_into(&msg, payload)?;
            Ok(MessageKind::Image)
        }
    }
}

/// JPEG or PNG by the file's signature.
fn sniff(data: &[u8]) -> Result<Encoding> {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if data.starts_with(PNG) {
        Ok(Encoding::Png)
    } else if data.starts_with(&[0xff, 0xd8, 0xff]) {
        Ok(Encoding::Jpeg)
    } else {
        bail!(
            "neither PNG nor JPEG (first bytes {:02x?})",
            &data[..data.len().min(8)]
        )
    }
}

/// Detects the layout from the folder's files.
fn detect(dir: &Path) -> Result<Format> {
    if dir.join("info.json").is_file() && dir.join("episode.csv").is_file() {
        return Ok(Format::Lerobot);
    }
    let root = euroc::root(dir);
    let has_sensor = std::fs::read_dir(&root)
        .with_context(|| format!("reading {}", root.display()))?
        .filter_map(std::result::Result::ok)
        .any(|e| e.path().join("sensor.yaml").is_file());
    if has_sensor {
        return Ok(Format::Euroc);
    }
    bail!(
        "{}: cannot tell the layout: expected info.json + episode.csv (LeRobot) or \
         <sensor>/sensor.yaml folders, optionally under mav0/ (EuRoC); or pass --format",
        dir.display()
    )
}

/// The folder name up to its first `_`, lower-cased, keeping `[a-z0-9-]`.
fn default_robot_id(dir: &Path) -> String {
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    // EuRoC's inner folder says nothing: use its parent's name.
    let name = if name == "mav0" {
        dir.canonicalize()
            .ok()
            .and_then(|p| {
                p.parent()
                    .and_then(|q| q.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
            })
            .unwrap_or_default()
    } else {
        name
    };
    let id: String = name
        .split('_')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    if id.is_empty() {
        "robot".to_owned()
    } else {
        id
    }
}

/// The rig name from the folder name: `euroc_stereo` -> `euroc-stereo`.
pub(crate) fn rig_name(dir: &Path) -> String {
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let name: String = name
        .chars()
        .map(|c| if c == '_' { '-' } else { c })
        .filter(|c| !c.is_control())
        .collect();
    if name.trim().is_empty() {
        "imported".to_owned()
    } else {
        name
    }
}

/// The rig's `[sync]` section for cameras stepped at `rate_hz`: tolerance a quarter frame
/// period, a missing camera held for up to two periods.
pub(crate) fn sync_section(rate_hz: f64) -> String {
    let period_ms = 1000.0 / rate_hz;
    format!(
        "[sync]\n\
         rate_hz = {}\n\
         tolerance_ms = {}\n\
         missing = \"hold\"\n\
         max_hold_ms = {}\n\
         max_pending = 8\n",
        toml_f64(rate_hz),
        toml_f64(period_ms / 4.0),
        toml_f64(period_ms * 2.0),
    )
}

/// A TOML string literal.
pub(crate) fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// An f64 as TOML (always with a `.` or exponent, shortest round-trip form).
pub(crate) fn toml_f64(v: f64) -> String {
    format!("{v:?}")
}

/// Nanoseconds from a decimal seconds string (LeRobot `timestamp_s`), rounded to the
/// nearest ns.
pub(crate) fn seconds_to_ns(text: &str) -> Result<u64> {
    let s: f64 = text
        .trim()
        .parse()
        .with_context(|| format!("{text:?} is not a number of seconds"))?;
    if !(0.0..1.8e10).contains(&s) {
        bail!("{text:?} is not a non-negative time in seconds");
    }
    // In range (checked above), so the cast neither saturates nor wraps.
    let ns = (s * 1e9).round() as u64;
    Ok(ns)
}

/// Validates rig text with vision's own loader.
pub(crate) fn check_rig(text: &str) -> Result<()> {
    vision::Rig::from_toml_str(text)
        .map(|_| ())
        .context("the generated rig config does not validate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_to_nanoseconds() {
        assert_eq!(seconds_to_ns("0.0").unwrap(), 0);
        assert_eq!(seconds_to_ns("0.03333333507180214").unwrap(), 33_333_335);
        assert_eq!(seconds_to_ns(" 1.5 ").unwrap(), 1_500_000_000);
        assert!(seconds_to_ns("-1").is_err());
        assert!(seconds_to_ns("nan").is_err());
        assert!(seconds_to_ns("x").is_err());
    }

    #[test]
    fn robot_ids_and_rig_names_come_from_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("G1_pick_bottle");
        std::fs::create_dir(&d).unwrap();
        assert_eq!(default_robot_id(&d), "g1");
        assert_eq!(rig_name(&d), "G1-pick-bottle");
        let m = dir.path().join("euroc_stereo").join("mav0");
        std::fs::create_dir_all(&m).unwrap();
        assert_eq!(default_robot_id(&m), "euroc");
        assert_eq!(default_robot_id(Path::new("/nonexistent/x")), "robot");
    }

    #[test]
    fn toml_numbers_and_strings() {
        assert_eq!(toml_f64(20.0), "20.0");
        assert_eq!(toml_f64(458.654), "458.654");
        for text in ["a\"b", "it's", "c:\\x", "plain"] {
            let doc: toml::Table = toml::from_str(&format!("x = {}", toml_str(text))).unwrap();
            assert_eq!(doc["x"].as_str(), Some(text));
        }
        assert!(sniff(b"GIF89a").is_err());
        assert_eq!(sniff(b"\xff\xd8\xff\xe0").unwrap(), Encoding::Jpeg);
    }
}
