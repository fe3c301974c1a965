//! End-to-end tests of `edgevla record` and `edgevla replay` over loopback zenoh: the binary
//! runs as a child process, this test publishes/subscribes through the `transport` crate.
//! Fresh ports, no multicast, a timeout on every wait.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use transport::clock::SystemClock;
use transport::msg::{AnyMessage, CompressedImage, Header, JointState, Time, encode};
use transport::pubsub::{Publisher, StreamClass, Subscriber, SubscriberConfig};
use transport::recording::parse_recording;
use transport::replay::request_step;
use transport::session::{Session, listening_peer, wait_for_connections};

const TIMEOUT: Duration = Duration::from_secs(20);

fn edgevla() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_edgevla"));
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn wait(mut child: Child, timeout: Duration) -> Result<Output> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if Instant::now() > deadline {
            child.kill()?;
            let out = child.wait_with_output()?;
            bail!(
                "edgevla timed out: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn frame(i: i32) -> CompressedImage {
    CompressedImage {
        header: Header {
            stamp: Time { sec: i, nanosec: 1 },
            frame_id: "front".into(),
        },
        format: "jpeg".into(),
        data: vec![u8::try_from(i).unwrap_or(0); 3000],
    }
}

fn joints(i: i32) -> JointState {
    JointState {
        header: Header {
            stamp: Time { sec: i, nanosec: 2 },
            frame_id: "base".into(),
        },
        name: vec!["a".into()],
        position: vec![f64::from(i)],
        ..JointState::default()
    }
}

/// Runs `edgevla record` connected to this process's session (which listens: no port is
/// probed and released for another process to bind), publishes 5 frames + 5 joint states to
/// it, and returns the recorder's stdout.
fn record_to(path: &Path, extra: &[&str], stop_with_sigint: bool) -> Result<String> {
    let (session, port) = listening_peer()?;
    let mut cmd = edgevla();
    cmd.args(["record", "--select", "robot/a/**", "--out"])
        .arg(path)
        .args(["--connect", &format!("tcp/127.0.0.1:{port}")])
        .args(extra);
    let child = cmd.spawn()?;
    wait_for_connections(&session, 1, TIMEOUT)?;
    let cam =
        Publisher::<CompressedImage>::declare(&session, "robot/a/cam/front", StreamClass::Frames)?;
    let js = Publisher::<JointState>::declare(&session, "robot/a/joints", StreamClass::Telemetry)?;
    cam.wait_for_subscriber(TIMEOUT)?;
    js.wait_for_subscriber(TIMEOUT)?;
    for i in 0..5 {
        cam.publish(&frame(i))?;
        js.publish(&joints(i))?;
        std::thread::sleep(Duration::from_millis(20));
    }
    if stop_with_sigint {
        // Interrupt once the file holds all 10 (the recorder flushes every --flush-ms): a
        // condition waited on, not a guess at how long delivery takes.
        let deadline = Instant::now() + TIMEOUT;
        while std::fs::read(path)
            .ok()
            .and_then(|bytes| parse_recording(&bytes).ok())
            .is_none_or(|r| r.messages.len() < 10)
        {
            assert!(
                Instant::now() < deadline,
                "the recorder never wrote 10 messages"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()?;
        assert!(status.success());
    }
    let out = wait(child, TIMEOUT)?;
    if !out.status.success() {
        bail!("record failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

fn check_recording(path: &Path) -> Result<()> {
    let rec = parse_recording(&std::fs::read(path)?)?;
    assert!(rec.complete);
    let frames: Vec<_> = rec
        .messages
        .iter()
        .filter(|m| m.key == "robot/a/cam/front")
        .map(|m| m.data.clone())
        .collect();
    let want: Vec<_> = (0..5)
        .map(|i| encode(&frame(i)))
        .collect::<Result<_, _>>()?;
    assert_eq!(frames, want);
    assert_eq!(rec.messages.len(), 10);
    Ok(())
}

#[test]
fn record_stops_at_max_messages_and_writes_every_sample() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("run.mcap");
    let stdout = record_to(&path, &["--max-messages", "10", "--duration", "20"], false)?;
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(summary["messages"], 10);
    assert_eq!(summary["channels"], 2);
    check_recording(&path)
}

#[test]
fn record_finishes_the_file_on_sigint() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("run.mcap");
    let stdout = record_to(&path, &["--compression", "none", "--flush-ms", "20"], true)?;
    assert!(stdout.contains("\"messages\":10"), "{stdout}");
    check_recording(&path)
}

/// Subscribes on a fresh port to robot/b/**, runs `edgevla replay` with `args` against it,
/// and returns the subscriber, its session and the child.
fn replay_into(path: &Path, args: &[&str]) -> Result<(Subscriber, Session, Child)> {
    let (session, port) = listening_peer()?;
    let config = SubscriberConfig {
        ring_capacity: 64,
        ..SubscriberConfig::default()
    };
    let sub = Subscriber::declare(
        &session,
        "robot/b/**",
        "robot",
        config,
        Arc::new(SystemClock::new()),
    )?;
    let child = edgevla()
        .arg("replay")
        .arg(path)
        .args(["--remap", "robot/a=robot/b", "--wait-subscribers", "10"])
        .args(["--connect", &format!("tcp/127.0.0.1:{port}")])
        .args(args)
        .spawn()?;
    Ok((sub, session, child))
}

fn expected_b() -> Vec<(String, AnyMessage)> {
    (0..5)
        .flat_map(|i| {
            [
                (
                    "robot/b/cam/front".to_owned(),
                    AnyMessage::CompressedImage(frame(i)),
                ),
                (
                    "robot/b/joints".to_owned(),
                    AnyMessage::JointState(joints(i)),
                ),
            ]
        })
        .collect()
}

fn received(sub: &Subscriber, n: usize) -> Result<Vec<(String, AnyMessage)>> {
    (0..n)
        .map(|_| {
            let r = sub
                .recv_timeout(TIMEOUT)
                .context("replayed message did not arrive")?;
            Ok((r.key, r.message))
        })
        .collect()
}

#[test]
fn replay_at_max_rate_with_remap_delivers_everything() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("run.mcap");
    record_to(&path, &["--max-messages", "10", "--duration", "20"], false)?;
    let (sub, _session, child) = replay_into(&path, &["--rate", "max"])?;
    let out = wait(child, TIMEOUT)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["published"], 10);
    assert_eq!(summary["complete"], true);
    assert_eq!(received(&sub, 10)?, expected_b());
    Ok(())
}

#[test]
fn stepped_replay_publishes_one_message_per_query() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("run.mcap");
    record_to(&path, &["--max-messages", "10", "--duration", "20"], false)?;
    let (sub, session, child) = replay_into(&path, &["--step", "--idle-timeout", "20"])?;
    let mut got = Vec::new();
    for i in 0..10 {
        let answer = request_step(&session, "robot/replay/step", TIMEOUT)?;
        assert!(answer.starts_with(&format!("{i} robot/b/")), "{answer}");
        let r = sub
            .recv_timeout(TIMEOUT)
            .context("stepped message did not arrive")?;
        // Nothing beyond the one message asked for.
        assert!(sub.recv_timeout(Duration::from_millis(50)).is_none());
        got.push((r.key, r.message));
    }
    assert_eq!(request_step(&session, "robot/replay/step", TIMEOUT)?, "end");
    let out = wait(child, TIMEOUT)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(got, expected_b());
    Ok(())
}

#[test]
fn replay_of_a_truncated_recording_replays_its_complete_messages() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("run.mcap");
    record_to(
        &path,
        &["--max-messages", "10", "--compression", "none"],
        false,
    )?;
    let bytes = std::fs::read(&path)?;
    // Cut just after the last frame's payload: the summary and everything after are gone.
    let last = encode(&frame(4))?;
    let end = bytes
        .windows(last.len())
        .rposition(|w| w == last.as_slice())
        .context("frame not found")?
        + last.len();
    let cut = dir.path().join("cut.mcap");
    std::fs::write(&cut, &bytes[..end])?;
    let (sub, _session, child) = replay_into(&cut, &["--rate", "max"])?;
    let out = wait(child, TIMEOUT)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(summary["complete"], false);
    let n = summary["published"].as_u64().context("published")? as usize;
    // Frame 4 is published after joints 3 and before joints 4: 9 complete messages.
    assert_eq!(n, 9);
    assert_eq!(received(&sub, n)?, expected_b()[..9].to_vec());
    Ok(())
}

#[test]
fn bad_flags_are_errors() -> Result<()> {
    let out = wait(
        edgevla()
            .args(["replay", "/nonexistent.mcap", "--rate", "0"])
            .spawn()?,
        TIMEOUT,
    )?;
    assert!(!out.status.success());
    let out = wait(
        edgevla()
            .args(["replay", "/nonexistent.mcap", "--remap", "nonsense"])
            .spawn()?,
        TIMEOUT,
    )?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("remap"));
    let out = wait(
        edgevla()
            .args(["record", "--out", "/tmp/x.mcap", "--mode", "client"])
            .spawn()?,
        TIMEOUT,
    )?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("session.connect"));
    Ok(())
}

#[test]
fn session_config_file_is_read_and_checked() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("zenoh.toml");
    std::fs::write(
        &good,
        "mode = \"peer\"\nlisten = [\"tcp/127.0.0.1:0\"]\nmulticast_scouting = false\n",
    )?;
    let out_path = dir.path().join("empty.mcap");
    let out = wait(
        edgevla()
            .args(["record", "--max-messages", "0", "--out"])
            .arg(&out_path)
            .arg("--zenoh-config")
            .arg(&good)
            .spawn()?,
        TIMEOUT,
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rec = parse_recording(&std::fs::read(&out_path)?)?;
    assert!(rec.complete);
    assert!(rec.messages.is_empty());

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "mdoe = \"peer\"\n")?;
    let out = wait(
        edgevla()
            .args(["record", "--out"])
            .arg(dir.path().join("x.mcap"))
            .arg("--zenoh-config")
            .arg(&bad)
            .spawn()?,
        TIMEOUT,
    )?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mdoe"));
    Ok(())
}
