//! `edgevla import` on the real recordings in `../shared/data` (EuRoC stereo + IMU, LeRobot G1
//! episode): the MCAP read back with transport's recording reader holds every frame byte for
//! byte, every table value exactly, at the table's timestamps; the rig loads with vision's
//! loader and carries sensor.yaml's calibration; the recording replays with `edgevla replay
//! --rate max` over loopback zenoh; Python's `mcap` + `mcap-ros2-support` decode it equal.
//!
//! Skipped when `../shared` is absent, unless `EDGEVLA_REQUIRE_SHARED` is set; the Python check
//! is skipped without python3 + packages unless `EDGEVLA_REQUIRE_PYTHON=1`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use transport::clock::SystemClock;
use transport::msg::{
    ActionChunk, AnyMessage, CompressedImage, Image, Imu, JointState, MessageKind, StringMsg, Time,
    decode,
};
use transport::pubsub::{Subscriber, SubscriberConfig};
use transport::recording::{RecordedMessage, Recording, parse_recording};
use transport::session::listening_peer;

const TIMEOUT: Duration = Duration::from_secs(120);

fn data_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if dir.join("euroc_stereo").is_dir() && dir.join("g1_pick_bottle").is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var_os("EDGEVLA_REQUIRE_SHARED").is_none(),
        "EDGEVLA_REQUIRE_SHARED is set but {} is missing",
        dir.display()
    );
    eprintln!("skipped: {} not found", dir.display());
    None
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
            bail!("timed out: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `edgevla import` with `args`; `Ok(Err(stderr))` when it fails.
fn import(args: &[&str]) -> Result<std::result::Result<Value, String>> {
    let child = Command::new(env!("CARGO_BIN_EXE_edgevla"))
        .arg("import")
        .args(args)
        .arg("--quiet")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let out = wait(child, TIMEOUT)?;
    if !out.status.success() {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(Ok(serde_json::from_slice(&out.stdout)?))
}

fn import_ok(args: &[&str]) -> Result<Value> {
    import(args)?.map_err(|e| anyhow::anyhow!("import failed: {e}"))
}

fn import_err(args: &[&str]) -> Result<String> {
    match import(args)? {
        Ok(v) => bail!("import should have failed: {v}"),
        Err(e) => Ok(e),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn on_key<'a>(rec: &'a Recording, key: &str) -> Vec<&'a RecordedMessage> {
    rec.messages.iter().filter(|m| m.key == key).collect()
}

/// `(timestamp, other fields)` rows of an EuRoC `data.csv`.
fn euroc_rows(path: &Path) -> Result<Vec<(u64, Vec<String>)>> {
    std::fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut f = l.split(',').map(|x| x.trim().to_owned());
            let t = f.next().context("timestamp")?.parse()?;
            Ok((t, f.collect()))
        })
        .collect()
}

#[derive(Debug, serde::Deserialize)]
struct SensorYaml {
    intrinsics: [f64; 4],
    resolution: [u32; 2],
    rate_hz: f64,
    #[serde(rename = "T_BS")]
    t_bs: TBs,
}

#[derive(Debug, serde::Deserialize)]
struct TBs {
    data: Vec<f64>,
}

fn sensor_yaml(path: &Path) -> Result<SensorYaml> {
    let text = std::fs::read_to_string(path)?.replacen("%YAML:1.0", "", 1);
    Ok(serde_norway::from_str(&text)?)
}

/// Frames on `key` equal the files and times of `data.csv`.
fn check_euroc_camera(rec: &Recording, dir: &Path, cam: &str, raw: bool) -> Result<()> {
    let rows = euroc_rows(&dir.join(cam).join("data.csv"))?;
    let msgs = on_key(rec, &format!("robot/euroc/cam/{cam}"));
    assert_eq!(msgs.len(), rows.len(), "{cam}");
    for (m, (t, fields)) in msgs.iter().zip(&rows) {
        assert_eq!((m.log_time, m.publish_time), (*t, *t));
        let file = std::fs::read(dir.join(cam).join("data").join(&fields[0]))?;
        if raw {
            assert_eq!(m.schema_name.as_deref(), Some("sensor_msgs/msg/Image"));
            let img: Image = decode(&m.data)?;
            let want = vision::decode(
                &vision::FrameRef::compressed(vision::Encoding::Png, &file),
                &vision::DecodeLimits::default(),
            )?;
            assert_eq!((img.width, img.height), (want.width(), want.height()));
            assert_eq!(img.encoding, "mono8");
            assert_eq!(img.data, want.data());
            assert_eq!(img.header.stamp, Time::from_nanos(*t));
        } else {
            assert_eq!(
                m.schema_name.as_deref(),
                Some("sensor_msgs/msg/CompressedImage")
            );
            let img: CompressedImage = decode(&m.data)?;
            assert_eq!(img.header.stamp, Time::from_nanos(*t));
            assert_eq!(img.header.frame_id, cam);
            assert_eq!(img.format, "png");
            assert!(img.data == file, "{cam} frame at {t} differs from its file");
        }
    }
    Ok(())
}

#[test]
fn euroc_imports_frames_imu_and_calibration_exactly() -> Result<()> {
    let Some(data) = data_dir() else {
        return Ok(());
    };
    let dir = data.join("euroc_stereo");
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("euroc.mcap");
    let rig_path = tmp.path().join("euroc-rig.toml");
    let summary = import_ok(&[
        "--from",
        s(&dir),
        "--out",
        s(&out),
        "--rig-out",
        s(&rig_path),
    ])?;
    assert_eq!(summary["format"], "euroc");
    let rec = parse_recording(&std::fs::read(&out)?)?;
    assert!(rec.complete);
    assert!(!out.with_extension("mcap.partial").exists());
    for cam in ["cam0", "cam1"] {
        check_euroc_camera(&rec, &dir, cam, false)?;
    }
    // IMU: every row, exact values, ROS conventions for what EuRoC lacks.
    let rows = euroc_rows(&dir.join("imu0/data.csv"))?;
    let msgs = on_key(&rec, "robot/euroc/imu/imu0");
    assert_eq!(msgs.len(), rows.len());
    let imu_yaml = std::fs::read_to_string(dir.join("imu0/sensor.yaml"))?;
    assert!(imu_yaml.contains("gyroscope_noise_density: 1.6968e-04"));
    for (m, (t, f)) in msgs.iter().zip(&rows) {
        assert_eq!(m.schema_name.as_deref(), Some("sensor_msgs/msg/Imu"));
        assert_eq!((m.log_time, m.publish_time), (*t, *t));
        let imu: Imu = decode(&m.data)?;
        let v: Vec<f64> = f.iter().map(|x| x.parse()).collect::<Result<_, _>>()?;
        let got = [
            imu.angular_velocity.x,
            imu.angular_velocity.y,
            imu.angular_velocity.z,
            imu.linear_acceleration.x,
            imu.linear_acceleration.y,
            imu.linear_acceleration.z,
        ];
        assert_eq!(got.as_slice(), v.as_slice(), "imu row at {t}");
        assert_eq!(imu.header.frame_id, "imu0");
        assert_eq!(imu.orientation_covariance[0], -1.0);
        // Gyro variance = density² · rate (tolerance: f64 rounding, 1e-12 relative).
        let want = 1.6968e-4_f64.powi(2) * 200.0;
        assert!((imu.angular_velocity_covariance[4] - want).abs() <= want * 1e-12);
    }
    assert_eq!(rec.messages.len(), 20 + 20 + rows.len());
    assert_eq!(summary["messages"], rec.messages.len());
    assert_eq!(summary["topics"]["robot/euroc/cam/cam0"], 20);
    assert!(
        rec.messages
            .windows(2)
            .all(|w| w[0].log_time <= w[1].log_time)
    );

    // The rig: vision's loader accepts it, with sensor.yaml's calibration.
    let rig = vision::Rig::load(&rig_path)?;
    let shipped = vision::Rig::load(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/rigs/euroc-stereo.toml"),
    )?;
    assert_eq!(rig.n_cams(), 2);
    for (i, cam) in ["cam0", "cam1"].into_iter().enumerate() {
        let y = sensor_yaml(&dir.join(cam).join("sensor.yaml"))?;
        let c = &rig.cameras[i];
        assert_eq!(c.name, cam);
        assert_eq!(c.topic, format!("robot/euroc/cam/{cam}"));
        let k = c.intrinsics;
        assert_eq!([k.fx, k.fy, k.cx, k.cy], y.intrinsics);
        assert_eq!([c.width, c.height], y.resolution);
        assert_eq!(c.rate_hz, y.rate_hz);
        let t = &y.t_bs.data;
        let tr = c.pose.translation.vector;
        assert_eq!([tr.x, tr.y, tr.z], [t[3], t[7], t[11]]);
        // The rotation went through a unit quaternion: equal to 1e-9.
        let r = c.pose.rotation.to_rotation_matrix();
        for row in 0..3 {
            for col in 0..3 {
                assert!((r[(row, col)] - t[row * 4 + col]).abs() < 1e-9);
            }
        }
        // Same calibration as the hand-written rig in configs/.
        assert_eq!(c.intrinsics, shipped.cameras[i].intrinsics);
        assert!(c.pose.rotation.angle_to(&shipped.cameras[i].pose.rotation) < 1e-9);
    }
    let text = std::fs::read_to_string(&rig_path)?;
    assert!(text.contains("radial-tangential"), "{text}");
    Ok(())
}

#[test]
fn euroc_raw_images_are_the_decoded_pixels() -> Result<()> {
    let Some(data) = data_dir() else {
        return Ok(());
    };
    let dir = data.join("euroc_stereo");
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("raw.mcap");
    let summary = import_ok(&[
        "--from",
        s(&dir),
        "--out",
        s(&out),
        "--format",
        "euroc",
        "--images",
        "raw",
        "--compression",
        "none",
    ])?;
    let rec = parse_recording(&std::fs::read(&out)?)?;
    check_euroc_camera(&rec, &dir, "cam1", true)?;
    assert_eq!(summary["topics"]["robot/euroc/cam/cam1"], 20);
    Ok(())
}

/// `episode.csv` as header + rows of strings.
fn episode(dir: &Path) -> Result<(Vec<String>, Vec<Vec<String>>)> {
    let text = std::fs::read_to_string(dir.join("episode.csv"))?;
    let mut lines = text.lines();
    let split = |l: &str| l.split(',').map(|x| x.trim().to_owned()).collect();
    let header = split(lines.next().context("header")?);
    Ok((header, lines.map(split).collect()))
}

#[test]
fn lerobot_imports_frames_joints_actions_and_instruction_exactly() -> Result<()> {
    let Some(data) = data_dir() else {
        return Ok(());
    };
    let dir = data.join("g1_pick_bottle");
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("g1.mcap");
    let rig_path = tmp.path().join("g1-rig.toml");
    let summary = import_ok(&[
        "--from",
        s(&dir),
        "--out",
        s(&out),
        "--rig-out",
        s(&rig_path),
    ])?;
    assert_eq!(summary["format"], "lerobot");
    let rec = parse_recording(&std::fs::read(&out)?)?;
    let (header, rows) = episode(&dir)?;
    assert_eq!(rows.len(), 150);
    let col = |name: &str| header.iter().position(|h| h == name).context("column");
    let info: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("info.json"))?)?;
    let names: Vec<String> =
        serde_json::from_value(info["features"]["observation.state"]["names"][0].clone())?;
    assert_eq!(names.len(), 26);
    let times: Vec<u64> = rows
        .iter()
        .map(|r| {
            let t: f64 = r[0].parse()?;
            Ok((t * 1e9).round() as u64)
        })
        .collect::<Result<_>>()?;

    let frames = on_key(&rec, "robot/g1/cam/cam_high");
    let joints = on_key(&rec, "robot/g1/joints");
    let actions = on_key(&rec, "robot/g1/action");
    let instruction = on_key(&rec, "robot/g1/instruction");
    assert_eq!(
        (frames.len(), joints.len(), actions.len(), instruction.len()),
        (150, 150, 150, 1)
    );
    assert_eq!(rec.messages.len(), 451);
    for (i, row) in rows.iter().enumerate() {
        let t = times[i];
        let frame_index: u64 = row[col("frame_index")?].parse()?;
        let f = frames[i];
        assert_eq!((f.log_time, f.publish_time), (t, t));
        let img: CompressedImage = decode(&f.data)?;
        assert_eq!(img.format, "jpeg");
        assert_eq!(img.header.frame_id, "cam_high");
        let file = std::fs::read(dir.join(format!("cam_high/{frame_index:06}.jpg")))?;
        assert!(
            img.data == file,
            "frame {frame_index} differs from its file"
        );

        let js: JointState = decode(&joints[i].data)?;
        assert_eq!(joints[i].log_time, t);
        assert_eq!(js.header.stamp, Time::from_nanos(t));
        assert_eq!(js.name, names);
        let want: Vec<f64> = (0..26)
            .map(|j| Ok(row[col(&format!("state_{j}"))?].parse()?))
            .collect::<Result<_>>()?;
        assert_eq!(js.position, want, "row {i}");
        assert!(js.velocity.is_empty() && js.effort.is_empty());

        let ac: ActionChunk = decode(&actions[i].data)?;
        assert_eq!(actions[i].log_time, t);
        assert_eq!((ac.horizon, ac.dims, ac.sequence), (1, 26, frame_index));
        let want: Vec<f32> = (0..26)
            .map(|j| Ok(row[col(&format!("action_{j}"))?].parse::<f64>()? as f32))
            .collect::<Result<_>>()?;
        assert_eq!(ac.values, want, "row {i}");
    }
    // The instruction comes first, at the first frame's time.
    let task: Value = serde_json::from_str(
        std::fs::read_to_string(dir.join("tasks.jsonl"))?
            .lines()
            .next()
            .context("task")?,
    )?;
    let text: StringMsg = decode(&instruction[0].data)?;
    assert_eq!(text.data, task["task"].as_str().context("task")?);
    assert_eq!(rec.messages[0].key, "robot/g1/instruction");
    assert_eq!(rec.messages[0].log_time, times[0]);
    assert_eq!(rec.messages[1].key, "robot/g1/cam/cam_high");

    let rig = vision::Rig::load(&rig_path)?;
    let cam = &rig.cameras[0];
    assert_eq!(
        (cam.name.as_str(), cam.width, cam.height),
        ("cam_high", 640, 480)
    );
    assert_eq!(cam.topic, "robot/g1/cam/cam_high");
    assert_eq!(cam.rate_hz, 30.0);
    assert_eq!([cam.intrinsics.cx, cam.intrinsics.cy], [320.0, 240.0]);
    assert!(std::fs::read_to_string(&rig_path)?.contains("NOMINAL"));

    // Without actions.
    let out2 = tmp.path().join("g1-noact.mcap");
    let summary2 = import_ok(&["--from", s(&dir), "--out", s(&out2), "--no-actions"])?;
    assert_eq!(summary2["messages"], 301);
    assert!(summary2["topics"].get("robot/g1/action").is_none());
    assert_eq!(summary["messages"], 451);
    Ok(())
}

/// A small EuRoC copy: cam0 with its first 3 frames.
fn small_euroc(src: &Path, dst: &Path) -> Result<()> {
    let cam = dst.join("cam0");
    std::fs::create_dir_all(cam.join("data"))?;
    std::fs::copy(src.join("cam0/sensor.yaml"), cam.join("sensor.yaml"))?;
    let text = std::fs::read_to_string(src.join("cam0/data.csv"))?;
    let lines: Vec<&str> = text.lines().take(4).collect();
    std::fs::write(cam.join("data.csv"), lines.join("\n") + "\n")?;
    for line in &lines[1..] {
        let file = line.split(',').nth(1).context("file")?.trim();
        std::fs::copy(
            src.join("cam0/data").join(file),
            cam.join("data").join(file),
        )?;
    }
    Ok(())
}

#[test]
fn missing_and_corrupt_inputs_name_the_file_and_line() -> Result<()> {
    let Some(data) = data_dir() else {
        return Ok(());
    };
    let src = data.join("euroc_stereo");
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("x.mcap");
    let fresh = |name: &str| -> Result<PathBuf> {
        let d = tmp.path().join(name);
        small_euroc(&src, &d)?;
        Ok(d)
    };

    let good = fresh("good")?;
    let v = import_ok(&["--from", s(&good), "--out", s(&out)])?;
    assert_eq!(v["messages"], 3);
    std::fs::remove_file(&out)?;

    // A bad timestamp on line 3.
    let d = fresh("bad_ts")?;
    let csv = d.join("cam0/data.csv");
    let text = std::fs::read_to_string(&csv)?;
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[2] = format!("12x{}", &lines[2][3..]);
    std::fs::write(&csv, lines.join("\n"))?;
    let e = import_err(&["--from", s(&d), "--out", s(&out)])?;
    assert!(
        e.contains("cam0/data.csv:3") && e.contains("timestamp"),
        "{e}"
    );
    assert!(!out.exists() && !tmp.path().join("x.mcap.partial").exists());

    // A frame file that is missing.
    let d = fresh("missing_frame")?;
    let first = std::fs::read_dir(d.join("cam0/data"))?
        .next()
        .context("frame")??
        .path();
    std::fs::remove_file(&first)?;
    let e = import_err(&["--from", s(&d), "--out", s(&out)])?;
    assert!(e.contains("is missing") && e.contains("data.csv:"), "{e}");

    // A truncated PNG: named, with the table line that listed it.
    let d = fresh("corrupt_png")?;
    let rows = euroc_rows(&d.join("cam0/data.csv"))?;
    let png = d.join("cam0/data").join(&rows[1].1[0]);
    let bytes = std::fs::read(&png)?;
    std::fs::write(&png, &bytes[..bytes.len() / 3])?;
    let e = import_err(&["--from", s(&d), "--out", s(&out)])?;
    assert!(
        e.contains(&rows[1].1[0]) && e.contains("data.csv:3") && e.contains("decoding"),
        "{e}"
    );
    assert!(!out.exists());
    // ... and passed through with --no-verify.
    import_ok(&["--from", s(&d), "--out", s(&out), "--no-verify"])?;
    std::fs::remove_file(&out)?;

    // sensor.yaml without intrinsics; and one that is not YAML.
    let d = fresh("no_intrinsics")?;
    let y = d.join("cam0/sensor.yaml");
    let text = std::fs::read_to_string(&y)?;
    std::fs::write(
        &y,
        text.lines()
            .filter(|l| !l.starts_with("intrinsics"))
            .collect::<Vec<_>>()
            .join("\n"),
    )?;
    let e = import_err(&["--from", s(&d), "--out", s(&out)])?;
    assert!(e.contains("sensor.yaml") && e.contains("intrinsics"), "{e}");
    std::fs::write(&y, "sensor_type: camera\nresolution: [752, 480\n")?;
    let e = import_err(&["--from", s(&d), "--out", s(&out)])?;
    assert!(e.contains("sensor.yaml") && e.contains("line"), "{e}");

    // A folder of neither layout.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty)?;
    let e = import_err(&["--from", s(&empty), "--out", s(&out)])?;
    assert!(e.contains("cannot tell the layout"), "{e}");

    // LeRobot: a non-number in episode.csv, and a missing frame.
    let g1 = data.join("g1_pick_bottle");
    let d = tmp.path().join("g1");
    std::fs::create_dir_all(d.join("cam_high"))?;
    for f in ["info.json", "tasks.jsonl"] {
        std::fs::copy(g1.join(f), d.join(f))?;
    }
    let (header, rows) = episode(&g1)?;
    for i in 0..3 {
        let f = format!("cam_high/{i:06}.jpg");
        std::fs::copy(g1.join(&f), d.join(&f))?;
    }
    let mut table = vec![header.join(",")];
    table.extend(rows.iter().take(3).map(|r| r.join(",")));
    table[3] = table[3].replacen(",0.", ",zz", 1);
    std::fs::write(d.join("episode.csv"), table.join("\n"))?;
    let e = import_err(&["--from", s(&d), "--out", s(&out)])?;
    assert!(
        e.contains("episode.csv:4") && e.contains("not a number"),
        "{e}"
    );
    table[3] = rows[2].join(",");
    std::fs::write(d.join("episode.csv"), table.join("\n"))?;
    import_ok(&["--from", s(&d), "--out", s(&out)])?;
    std::fs::remove_file(d.join("cam_high/000002.jpg"))?;
    let e = import_err(&["--from", s(&d), "--out", s(&out)])?;
    assert!(
        e.contains("episode.csv:4") && e.contains("000002.jpg"),
        "{e}"
    );
    Ok(())
}

#[test]
fn imported_recording_replays_over_zenoh() -> Result<()> {
    let Some(data) = data_dir() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("g1.mcap");
    import_ok(&["--from", s(&data.join("g1_pick_bottle")), "--out", s(&out)])?;
    let rec = parse_recording(&std::fs::read(&out)?)?;
    let (session, port) = listening_peer()?;
    let config = SubscriberConfig {
        ring_capacity: 1024,
        ..SubscriberConfig::default()
    };
    let sub = Subscriber::declare(
        &session,
        "robot/g1/**",
        "robot",
        config,
        Arc::new(SystemClock::new()),
    )?;
    let child = Command::new(env!("CARGO_BIN_EXE_edgevla"))
        .arg("replay")
        .arg(&out)
        .args(["--rate", "max", "--wait-subscribers", "10"])
        .args(["--connect", &format!("tcp/127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let done = wait(child, TIMEOUT)?;
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let summary: Value = serde_json::from_slice(&done.stdout)?;
    assert_eq!(summary["published"], 451);
    // Every message arrives decoded and equal to the recording: instruction, camera, joints,
    // actions.
    let mut got: BTreeMap<String, Vec<AnyMessage>> = BTreeMap::new();
    while got.values().map(Vec::len).sum::<usize>() < 451 {
        let r = sub
            .recv_timeout(Duration::from_secs(20))
            .context("replayed message did not arrive")?;
        got.entry(r.key).or_default().push(r.message);
    }
    for (key, msgs) in &got {
        let want: Vec<AnyMessage> = on_key(&rec, key)
            .iter()
            .map(|m| {
                let kind = MessageKind::from_type_name(m.schema_name.as_deref().unwrap_or(""))
                    .context("kind")?;
                Ok(kind.decode(&m.data)?)
            })
            .collect::<Result<_>>()?;
        assert_eq!(msgs.len(), want.len(), "{key}");
        if let Some(i) = (0..msgs.len()).find(|&i| msgs[i] != want[i]) {
            bail!(
                "{key} message {i}: got {:?}, recorded {:?}",
                msgs[i],
                want[i]
            );
        }
    }
    assert_eq!(got.len(), 4);
    assert_eq!(sub.stats().unknown_key, 0);
    Ok(())
}

/// Whether python3 with `modules` is usable; `Err` when required (EDGEVLA_REQUIRE_PYTHON=1).
fn python_with(modules: &str) -> Result<bool> {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var("EDGEVLA_REQUIRE_PYTHON").is_ok_and(|v| v == "1") {
        bail!("python3 with `{modules}` is required (EDGEVLA_REQUIRE_PYTHON=1) but missing");
    }
    if !ok {
        eprintln!("SKIP: python3 with `{modules}` not found (pip install mcap mcap-ros2-support)");
    }
    Ok(ok)
}

fn fields_json(m: &AnyMessage) -> Result<Value> {
    Ok(match m {
        AnyMessage::CompressedImage(x) => serde_json::to_value(x)?,
        AnyMessage::Image(x) => serde_json::to_value(x)?,
        AnyMessage::JointState(x) => serde_json::to_value(x)?,
        AnyMessage::Imu(x) => serde_json::to_value(x)?,
        AnyMessage::String(x) => serde_json::to_value(x)?,
        AnyMessage::ActionChunk(x) => serde_json::to_value(x)?,
    })
}

/// Both imports decode equal in Python's `mcap-ros2-support` (an independent CDR decoder
/// reading our `ros2msg` schemas, the new `sensor_msgs/Imu` included).
#[test]
fn imported_recordings_read_back_equal_in_python_mcap_ros2() -> Result<()> {
    let Some(data) = data_dir() else {
        return Ok(());
    };
    if !python_with("mcap, mcap_ros2")? {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    for (name, expect) in [("euroc_stereo", 251), ("g1_pick_bottle", 451)] {
        let out = tmp.path().join(format!("{name}.mcap"));
        import_ok(&["--from", s(&data.join(name)), "--out", s(&out)])?;
        let rec = parse_recording(&std::fs::read(&out)?)?;
        let mut lines = String::new();
        for m in &rec.messages {
            let schema = m.schema_name.clone().context("schema")?;
            let kind = MessageKind::from_type_name(&schema).context("kind")?;
            let line = json!({
                "key": m.key,
                "type": schema,
                "log_time": m.log_time,
                "publish_time": m.publish_time,
                "fields": fields_json(&kind.decode(&m.data)?)?,
            });
            lines.push_str(&line.to_string());
            lines.push('\n');
        }
        let expected = tmp.path().join(format!("{name}.jsonl"));
        std::fs::write(&expected, lines)?;
        let child = Command::new("python3")
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tools/mcap_check.py"))
            .arg(&out)
            .arg(&expected)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let done = wait(child, TIMEOUT)?;
        let stdout = String::from_utf8_lossy(&done.stdout);
        assert!(
            done.status.success(),
            "mcap_check.py {name}: {stdout}{}",
            String::from_utf8_lossy(&done.stderr)
        );
        assert_eq!(stdout.trim(), format!("{expect} messages equal"));
    }
    Ok(())
}
