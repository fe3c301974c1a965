//! Loopback benchmarks of the transport against raw zenoh, measured in the same run with the
//! same QoS (frames: `CongestionControl::Drop`, default priority, no express):
//!
//! - latency: ping-pong of a 100 KB frame between two peer sessions over TCP loopback,
//!   one-way latency = round trip / 2, p50 and p99 over 1000 round trips. Raw zenoh echoes
//!   the bytes in the subscriber callback (like `z_ping`/`z_pong`); edgevla decodes into the
//!   ring, a consumer thread takes the frame, re-encodes and publishes it.
//! - throughput: one publisher sending as fast as it can for 1.5 s, counting what the other
//!   session receives (raw: callbacks, like `z_pub_thr`/`z_sub_thr`; edgevla: encoded
//!   `CompressedImage`s decoded into the ring), at 8 KB, 100 KB and 1 MB payloads, with
//!   `CongestionControl::Block` (the sender is paced by the network, like `z_pub_thr`;
//!   edgevla's `StreamClass::Bulk`) and with `Drop` (edgevla's frame QoS: the sender spins,
//!   zenoh drops what the link cannot take, and edgevla pays to encode the dropped frames).
//!
//! Prints a Markdown table with edgevla/raw ratios. Run: `cargo bench -p edgevla-transport`.
//! (Not criterion: criterion reports means and medians, not p99, and cannot count what
//! arrives on the other side of a socket.)

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::Result;
use transport::clock::SystemClock;
use transport::msg::{AnyMessage, CompressedImage, Header, Time};
use transport::pubsub::{
    Publisher, StreamClass, Subscriber, SubscriberConfig, declare_raw_publisher,
};
use transport::session::{Session, SessionConfig, free_local_port, open, wait_for_connections};
use zenoh::Wait;
use zenoh::bytes::Encoding;

const TIMEOUT: Duration = Duration::from_secs(10);
const ROUND_TRIPS: usize = 1000;
const WARMUP: usize = 100;
const LOSS_TIMEOUT: Duration = Duration::from_millis(500);
const THROUGHPUT_WINDOW: Duration = Duration::from_millis(1500);

fn zerr(e: zenoh::Error) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

fn frame(len: usize) -> CompressedImage {
    CompressedImage {
        header: Header {
            stamp: Time { sec: 1, nanosec: 2 },
            frame_id: "bench".into(),
        },
        format: "jpeg".into(),
        data: (0..len).map(|i| (i % 251) as u8).collect(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// One-way latencies in microseconds, sorted.
fn raw_latency(a: &Session, b: &Session, len: usize) -> Result<Vec<f64>> {
    let frames = StreamClass::Frames;
    let pong = declare_raw_publisher(b, "bench/raw/pong", frames, Encoding::ZENOH_BYTES)?;
    let _echo = b
        .declare_subscriber("bench/raw/ping")
        .callback(move |s| {
            let _ = pong.put(s.payload().clone()).wait();
        })
        .wait()
        .map_err(zerr)?;
    let (tx, rx) = mpsc::channel();
    let _back = a
        .declare_subscriber("bench/raw/pong")
        .callback(move |_| {
            let _ = tx.send(Instant::now());
        })
        .wait()
        .map_err(zerr)?;
    let ping = declare_raw_publisher(a, "bench/raw/ping", frames, Encoding::ZENOH_BYTES)?;
    transport::pubsub::wait_for_match(&ping, TIMEOUT)?;
    let payload = transport::msg::encode(&frame(len))?;
    let mut out = Vec::with_capacity(ROUND_TRIPS);
    let mut lost = 0;
    while out.len() < ROUND_TRIPS + WARMUP {
        while rx.try_recv().is_ok() {}
        let t0 = Instant::now();
        ping.put(payload.clone()).wait().map_err(zerr)?;
        match rx.recv_timeout(LOSS_TIMEOUT) {
            Ok(t1) => out.push((t1 - t0).as_secs_f64() * 1e6 / 2.0),
            Err(_) => lost += 1,
        }
        if lost > ROUND_TRIPS / 10 {
            anyhow::bail!("raw: {lost} round trips lost");
        }
    }
    Ok(finish(out, lost))
}

/// Drops the warm-up, sorts, and reports losses (frames use `CongestionControl::Drop`).
fn finish(mut out: Vec<f64>, lost: usize) -> Vec<f64> {
    if lost > 0 {
        eprintln!("note: {lost} round trips lost (CongestionControl::Drop) and retried");
    }
    out.drain(..WARMUP);
    out.sort_by(f64::total_cmp);
    out
}

fn edgevla_latency(a: &Session, b: &Session, len: usize) -> Result<Vec<f64>> {
    let clock = Arc::new(SystemClock::new());
    let b_sub = Subscriber::declare(
        b,
        "robot/bench/cam/ping",
        "robot",
        SubscriberConfig::default(),
        clock.clone(),
    )?;
    let pong =
        Publisher::<CompressedImage>::declare(b, "robot/bench/cam/pong", StreamClass::Frames)?;
    let a_sub = Subscriber::declare(
        a,
        "robot/bench/cam/pong",
        "robot",
        SubscriberConfig::default(),
        clock,
    )?;
    let ping =
        Publisher::<CompressedImage>::declare(a, "robot/bench/cam/ping", StreamClass::Frames)?;
    ping.wait_for_subscriber(TIMEOUT)?;
    pong.wait_for_subscriber(TIMEOUT)?;
    let msg = frame(len);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| -> Result<Vec<f64>> {
        let echo = s.spawn(|| -> Result<()> {
            while !done.load(Ordering::Relaxed) {
                if let Some(r) = b_sub.recv_timeout(Duration::from_millis(10))
                    && let AnyMessage::CompressedImage(f) = r.message
                {
                    pong.publish(&f)?;
                }
            }
            Ok(())
        });
        let mut out = Vec::with_capacity(ROUND_TRIPS + WARMUP);
        let mut lost = 0;
        let result = (|| -> Result<()> {
            while out.len() < ROUND_TRIPS + WARMUP {
                while a_sub.inbox().try_recv().is_some() {}
                let t0 = Instant::now();
                ping.publish(&msg)?;
                match a_sub.recv_timeout(LOSS_TIMEOUT) {
                    Some(_) => out.push(t0.elapsed().as_secs_f64() * 1e6 / 2.0),
                    None => lost += 1,
                }
                if lost > ROUND_TRIPS / 10 {
                    anyhow::bail!("edgevla: {lost} round trips lost");
                }
            }
            Ok(())
        })();
        done.store(true, Ordering::Relaxed);
        echo.join()
            .map_err(|_| anyhow::anyhow!("echo thread panicked"))??;
        result?;
        Ok(finish(out, lost))
    })
}

/// Messages per second received.
fn raw_throughput(a: &Session, b: &Session, len: usize, class: StreamClass) -> Result<f64> {
    let key = format!("bench/raw/thr/{len}/{class:?}");
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    let _sub = b
        .declare_subscriber(key.clone())
        .callback(move |_| {
            c.fetch_add(1, Ordering::Relaxed);
        })
        .wait()
        .map_err(zerr)?;
    let publ = declare_raw_publisher(a, &key, class, Encoding::ZENOH_BYTES)?;
    transport::pubsub::wait_for_match(&publ, TIMEOUT)?;
    let payload = zenoh::bytes::ZBytes::from(transport::msg::encode(&frame(len))?);
    run_window(
        || count.load(Ordering::Relaxed),
        || publ.put(payload.clone()).wait().map_err(zerr),
    )
}

fn edgevla_throughput(a: &Session, b: &Session, len: usize, class: StreamClass) -> Result<f64> {
    let key = format!("robot/bench/cam/thr{len}{class:?}");
    let sub = Subscriber::declare(
        b,
        &key,
        "robot",
        SubscriberConfig::default(),
        Arc::new(SystemClock::new()),
    )?;
    let publ = Publisher::<CompressedImage>::declare(a, &key, class)?;
    publ.wait_for_subscriber(TIMEOUT)?;
    let msg = frame(len);
    // A consumer drains the ring as the node would; `received` counts decoded messages.
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let _ = sub.recv_timeout(Duration::from_millis(10));
            }
        });
        let result = run_window(
            || sub.stats().received,
            || publ.publish(&msg).map_err(anyhow::Error::from),
        );
        done.store(true, Ordering::Relaxed);
        result
    })
}

/// Sends for a 300 ms warm-up, then for [`THROUGHPUT_WINDOW`]; messages received per second.
fn run_window(received: impl Fn() -> u64, mut send: impl FnMut() -> Result<()>) -> Result<f64> {
    let warm_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < warm_until {
        send()?;
    }
    let start_count = received();
    let t0 = Instant::now();
    while t0.elapsed() < THROUGHPUT_WINDOW {
        send()?;
    }
    let n = received() - start_count;
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let port = free_local_port()?;
    let a = open(&SessionConfig::peer_listening(port))?;
    let b = open(&SessionConfig::peer_connecting(port))?;
    wait_for_connections(&b, 1, TIMEOUT)?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "transport loopback benchmark: two peer sessions, TCP 127.0.0.1, {cpu}, {cores} cores"
    );
    println!();
    println!("| measurement | raw zenoh | edgevla | edgevla / raw |");
    println!("|---|---|---|---|");

    let raw = raw_latency(&a, &b, 100_000)?;
    let ours = edgevla_latency(&a, &b, 100_000)?;
    for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
        let (r, o) = (percentile(&raw, p), percentile(&ours, p));
        println!(
            "| latency 100 KB frame, {name} (µs, one-way) | {r:.0} | {o:.0} | {:.2} |",
            o / r
        );
    }
    for (class, label) in [(StreamClass::Bulk, "Block"), (StreamClass::Frames, "Drop")] {
        for (len, tag) in [(8_000, "8 KB"), (100_000, "100 KB"), (1_000_000, "1 MB")] {
            let r = raw_throughput(&a, &b, len, class)?;
            let o = edgevla_throughput(&a, &b, len, class)?;
            let mbs = |m: f64| m * len as f64 / 1e6;
            println!(
                "| throughput {tag}, {label} (msg/s; MB/s) | {r:.0}; {:.0} | {o:.0}; {:.0} | {:.2} |",
                mbs(r),
                mbs(o),
                o / r
            );
        }
    }
    Ok(())
}
