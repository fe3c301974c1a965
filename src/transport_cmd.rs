//! `edgevla record` and `edgevla replay`: zenoh streams to MCAP and back, through the
//! `transport` crate. Shared zenoh flags come from [`ZenohArgs`]; both commands stop on
//! Ctrl-C (SIGINT/SIGTERM) and finish cleanly, and print a JSON summary on stdout.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use transport::clock::{Clock, SystemClock};
use transport::keys::replay_step_key;
use transport::record::{Compression, McapRecorder, RecordLimits, RecorderConfig, record_session};
use transport::recording::open_recording;
use transport::replay::{Rate, Remap, Replayer, SteppedReplay};
use transport::session::{Mode, SessionConfig, open};

/// zenoh session flags shared by the transport commands.
#[derive(Debug, Args)]
pub struct ZenohArgs {
    /// Session config file (JSON or TOML with `mode`, `listen`, `connect`,
    /// `multicast_scouting`, and `[tls]` / `[access_control]` for the secure profile:
    /// configs/zenoh/secure-*.toml, certificate paths relative to the file); the flags below
    /// override it.
    #[arg(long, value_name = "FILE")]
    pub zenoh_config: Option<PathBuf>,

    /// `peer` (default: no router needed) or `client` (through a zenohd router).
    #[arg(long, value_name = "MODE")]
    pub mode: Option<Mode>,

    /// Endpoint to listen on, e.g. tcp/127.0.0.1:7447 (peer only; repeatable).
    /// Default: tcp/127.0.0.1:0 (loopback, any free port).
    #[arg(long, value_name = "ENDPOINT")]
    pub listen: Vec<String>,

    /// Endpoint to connect to: a peer, or the router in client mode (repeatable).
    #[arg(long, value_name = "ENDPOINT")]
    pub connect: Vec<String>,

    /// Turn multicast scouting on (off by default).
    #[arg(long)]
    pub multicast_scouting: bool,
}

impl ZenohArgs {
    /// The session config: the file (if any), then the flags.
    ///
    /// # Errors
    /// An unreadable or invalid config file.
    pub fn session_config(&self) -> Result<SessionConfig> {
        let mut cfg = match &self.zenoh_config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let mut cfg: SessionConfig = if path.extension().is_some_and(|e| e == "json") {
                    serde_json::from_str(&text)
                        .with_context(|| format!("parsing {}", path.display()))?
                } else {
                    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
                };
                // certificate paths are relative to the file that names them
                let dir = path.parent().unwrap_or_else(|| std::path::Path::new("."));
                cfg.tls = cfg.tls.map(|t| t.relative_to(dir));
                cfg
            }
            None => SessionConfig::default(),
        };
        if let Some(mode) = self.mode {
            cfg.mode = mode;
            if mode == Mode::Client && self.listen.is_empty() {
                cfg.listen.clear();
            }
        }
        if !self.listen.is_empty() {
            cfg.listen.clone_from(&self.listen);
        }
        if !self.connect.is_empty() {
            cfg.connect.clone_from(&self.connect);
        }
        cfg.multicast_scouting |= self.multicast_scouting;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Arguments of `edgevla record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Key expression to record [default: `robot/**`; with --ros2-domain N, `N/**`].
    #[arg(long, value_name = "KEYEXPR")]
    pub select: Option<String>,

    /// Output: an MCAP file, or with --ros2-domain a rosbag2 bag folder (created; it must not
    /// exist) holding `<folder>_0.mcap` and `metadata.yaml`.
    #[arg(long, value_name = "PATH")]
    pub out: PathBuf,

    /// ROS 2 mode: record the rmw_zenoh topics of this ROS domain as a rosbag2 bag (topics
    /// with their leading slash, ROS 2 type names, the publish time from each sample's
    /// attachment), which `ros2 bag` and rosbags open. Samples of types edgevla has no
    /// definition of, or with a wrong type hash or attachment, are counted (`rejected`), not
    /// recorded.
    #[arg(long, value_name = "DOMAIN")]
    pub ros2_domain: Option<u32>,

    /// Key prefix of the edgevla key space (decides each key's ROS 2 schema).
    #[arg(long, default_value = transport::keys::DEFAULT_PREFIX)]
    pub prefix: String,

    /// Stop after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,

    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    pub max_messages: Option<u64>,

    /// Chunk compression.
    #[arg(long, value_enum, default_value = "zstd")]
    pub compression: CompressionArg,

    /// Finish a chunk at least this often, bounding what a crash can lose (milliseconds).
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub flush_ms: u64,

    /// zenoh session.
    #[command(flatten)]
    pub zenoh: ZenohArgs,
}

/// Chunk compression on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum CompressionArg {
    /// zstd.
    Zstd,
    /// No compression.
    None,
}

/// Arguments of `edgevla replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The recording: an MCAP file (a truncated one replays every complete message) or a rosbag2
    /// bag folder in MCAP storage (its topics replay without their leading slash).
    pub file: PathBuf,

    /// Timing: a factor of the original (1.0 = as recorded, 2 = twice as fast) or `max`.
    #[arg(long, default_value = "1.0", conflicts_with = "step")]
    pub rate: Rate,

    /// Deterministic stepping: publish the next message only when a consumer queries the
    /// step key (each query is answered `<index> <key> <log_time_ns>`, or `end`).
    #[arg(long)]
    pub step: bool,

    /// Key a stepped replay takes its queries on (default `<prefix>/replay/step`).
    #[arg(long, value_name = "KEYEXPR")]
    pub step_key: Option<String>,

    /// Stepped replay gives up after this many seconds without a query.
    #[arg(long, value_name = "SECONDS", default_value_t = 300.0)]
    pub idle_timeout: f64,

    /// Replace a key prefix: `robot/a=robot/b` (repeatable; the first match wins).
    #[arg(long, value_name = "FROM=TO")]
    pub remap: Vec<String>,
    /// Replay ROS 2 topics (a rosbag2 bag) onto rmw_zenoh's keys in this ROS domain, with
    /// rmw_zenoh's attachments, as a robot running rmw_zenoh publishes them (the node's ROS 2
    /// mode listens there); without it topics replay on the native key space.
    #[arg(long, value_name = "DOMAIN", conflicts_with = "remap")]
    pub ros2_domain: Option<u32>,

    /// Key prefix of the edgevla key space (for the default step key).
    #[arg(long, default_value = transport::keys::DEFAULT_PREFIX)]
    pub prefix: String,

    /// Before publishing, wait up to this long for a subscriber on every key (seconds).
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0)]
    pub wait_subscribers: f64,

    /// Refuse recordings larger than this many bytes (the file is read into memory).
    #[arg(long, value_name = "BYTES", default_value_t = 8 << 30)]
    pub max_bytes: u64,

    /// zenoh session.
    #[command(flatten)]
    pub zenoh: ZenohArgs,
}

fn seconds(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("{what} must be a non-negative number of seconds"))
}

/// A flag that SIGINT and SIGTERM set.
pub(crate) fn shutdown_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&flag)).context("installing signal handler")?;
    }
    Ok(flag)
}

/// Runs `edgevla record`.
///
/// # Errors
/// Bad flags, a zenoh session that cannot open, or a file that cannot be written.
pub fn record(args: &RecordArgs, out: &mut impl Write) -> Result<()> {
    let session = open(&args.zenoh.session_config()?)?;
    let bag = args
        .ros2_domain
        .map(|_| transport::rosbag2::BagFolder::create(&args.out))
        .transpose()?;
    let file_path = bag.as_ref().map_or_else(
        || args.out.clone(),
        transport::rosbag2::BagFolder::mcap_path,
    );
    let file =
        File::create(&file_path).with_context(|| format!("creating {}", file_path.display()))?;
    let config = RecorderConfig {
        ros2_domain: args.ros2_domain,
        prefix: args.prefix.clone(),
        compression: match args.compression {
            CompressionArg::Zstd => Compression::Zstd,
            CompressionArg::None => Compression::None,
        },
        flush_interval_ms: args.flush_ms,
        ..RecorderConfig::default()
    };
    let recorder = McapRecorder::new(BufWriter::new(file), config)?;
    let limits = RecordLimits {
        max_messages: args.max_messages,
        max_duration_ns: args
            .duration
            .map(|d| {
                seconds(d, "--duration").map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            })
            .transpose()?,
    };
    let stop = shutdown_flag()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let select = args
        .select
        .clone()
        .unwrap_or_else(|| match args.ros2_domain {
            Some(domain) => format!("{domain}/**"),
            None => "robot/**".to_owned(),
        });
    let path = args.out.display().to_string();
    let (summary, mut writer) =
        record_session(&session, &select, recorder, clock, limits, &stop, || {
            tracing::info!(select, path, "recording");
            eprintln!("recording {select} to {path} (Ctrl-C to stop)");
        })?;
    writer.flush()?;
    drop(writer);
    if let Some(bag) = &bag {
        bag.write_metadata(&summary.topics, summary.log_time_range)
            .with_context(|| format!("writing {}/metadata.yaml", bag.dir.display()))?;
    }
    writeln!(out, "{}", serde_json::to_string(&summary)?)?;
    Ok(())
}

/// Runs `edgevla replay`.
///
/// # Errors
/// An unreadable recording, bad flags, or zenoh failures.
pub fn replay(args: &ReplayArgs, out: &mut impl Write) -> Result<()> {
    let remap = Remap::parse(&args.remap)?;
    let recording = open_recording(&args.file, args.max_bytes)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let complete = recording.complete;
    if !complete {
        eprintln!(
            "warning: {} ends early; replaying its {} complete messages",
            args.file.display(),
            recording.messages.len()
        );
    }
    let mut stepped = match args.ros2_domain {
        Some(domain) => SteppedReplay::ros2(recording, domain)?,
        None => SteppedReplay::new(recording, &remap),
    };
    let total = stepped.len();
    let session = open(&args.zenoh.session_config()?)?;
    let mut replayer = Replayer::new(&session);
    let unmatched = replayer.prepare(
        &stepped,
        seconds(args.wait_subscribers, "--wait-subscribers")?,
    )?;
    if !unmatched.is_empty() {
        tracing::info!(?unmatched, "no subscriber yet; publishing anyway");
    }
    let stop = shutdown_flag()?;
    let stats = if args.step {
        let key = args
            .step_key
            .clone()
            .unwrap_or_else(|| replay_step_key(&args.prefix));
        eprintln!("stepped replay of {total} messages: query {key} for each next message");
        replayer.serve_steps(
            &mut stepped,
            &key,
            seconds(args.idle_timeout, "--idle-timeout")?,
            &stop,
        )?
    } else {
        replayer.run_paced(&mut stepped, args.rate, &SystemClock::new(), &stop)?
    };
    if stats.published as usize != total && !args.step {
        bail!(
            "published {} of {total} messages (interrupted)",
            stats.published
        );
    }
    writeln!(
        out,
        "{}",
        serde_json::json!({"messages": total, "published": stats.published, "complete": complete})
    )?;
    Ok(())
}
