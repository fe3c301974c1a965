//! Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/): small valid inputs each
//! target's fuzzer mutates from. `cargo run --example fuzz_seeds` from the repository root.

use std::path::Path;

use anyhow::Result;
use transport::msg::{
    ActionChunk, CompressedImage, Header, Image, Imu, JointState, MessageKind, StringMsg, Time,
    encode,
};
use transport::record::{McapRecorder, RecorderConfig};
use transport::ros2::Attachment;

fn write(target: &str, name: &str, bytes: &[u8]) -> Result<()> {
    let dir = Path::new("fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)?;
    Ok(())
}

fn header(sec: i32) -> Header {
    Header {
        stamp: Time { sec, nanosec: 7 },
        frame_id: "cam".into(),
    }
}

fn main() -> Result<()> {
    // frames: byte 0 = encoding index (frame.rs), u16 LE width, height, step, then the data
    let (w, h) = (8u32, 6u32);
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
    let img = image::RgbImage::from_raw(w, h, rgb.clone()).ok_or(anyhow::anyhow!("image"))?;
    let mut jpeg = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut jpeg),
        image::ImageFormat::Jpeg,
    )?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    let frame = |enc: u8, step: u32, data: &[u8]| {
        let mut v = vec![enc];
        for x in [w, h, step] {
            v.extend_from_slice(&u16::try_from(x).unwrap_or(0).to_le_bytes());
        }
        v.extend_from_slice(data);
        v
    };
    write("frame", "jpeg", &frame(0, 0, &jpeg))?;
    write("frame", "png", &frame(1, 0, &png))?;
    write("frame", "rgb8", &frame(2, w * 3, &rgb))?;
    write("frame", "mono8", &frame(6, w, &rgb[..(w * h) as usize]))?;

    // CDR messages: byte 0 = index in MessageKind::ALL
    let messages: Vec<(MessageKind, Vec<u8>)> = vec![
        (
            MessageKind::CompressedImage,
            encode(&CompressedImage {
                header: header(1),
                format: "jpeg".into(),
                data: jpeg.clone(),
            })?,
        ),
        (
            MessageKind::Image,
            encode(&Image {
                header: header(2),
                height: h,
                width: w,
                encoding: "rgb8".into(),
                is_bigendian: 0,
                step: w * 3,
                data: rgb.clone(),
            })?,
        ),
        (
            MessageKind::JointState,
            encode(&JointState {
                header: header(3),
                name: vec!["q1".into(), "q2".into()],
                position: vec![0.5, -1.0],
                velocity: vec![0.0, 0.1],
                effort: vec![],
            })?,
        ),
        (
            MessageKind::Imu,
            encode(&Imu {
                header: header(4),
                ..Imu::default()
            })?,
        ),
        (
            MessageKind::String,
            encode(&StringMsg {
                data: "pick the red cup".into(),
            })?,
        ),
        (
            MessageKind::ActionChunk,
            encode(&ActionChunk {
                stamp: Time { sec: 5, nanosec: 0 },
                sequence: 9,
                horizon: 2,
                dims: 2,
                values: vec![0.1, 0.2, 0.3, 0.4],
            })?,
        ),
    ];
    for (kind, bytes) in &messages {
        let index = MessageKind::ALL
            .iter()
            .position(|k| k == kind)
            .ok_or(anyhow::anyhow!("kind"))?;
        let mut v = vec![u8::try_from(index)?];
        v.extend_from_slice(bytes);
        write("cdr", &format!("{kind:?}"), &v)?;
    }

    // MCAP: a small recording of every message kind
    let mut recorder =
        McapRecorder::new(std::io::Cursor::new(Vec::new()), RecorderConfig::default())?;
    for (i, (kind, bytes)) in messages.iter().enumerate() {
        recorder.write_typed(&format!("robot/r/k{i}"), *kind, bytes, 1_000 + i as u64)?;
    }
    let (_, mcap) = recorder.finish()?;
    write("mcap", "all-kinds", mcap.get_ref())?;

    // ROS 2: an attachment and a data key
    let attachment = Attachment {
        sequence_number: 3,
        source_timestamp_ns: 1_700_000_000_000_000_000,
        gid: [7; 16],
    };
    write("ros2", "attachment", &attachment.encode())?;
    let key = transport::ros2::topic_key(0, "/joint_states", MessageKind::JointState)?;
    write("ros2", "key", key.as_bytes())?;

    // configs: byte 0 = 0 node, 1 rig, 2 model, 3 task, 4 session (config.rs)
    let configs = [
        (0u8, "node-edge", "configs/node/edge.toml"),
        (1, "rig-edge-3cam", "configs/rigs/edge-3cam.toml"),
        (2, "model-edge-long", "configs/model/edge-long.toml"),
        (3, "task-memory-long", "configs/task/memory-long.toml"),
        (4, "session-secure-robot", "configs/zenoh/secure-robot.toml"),
    ];
    for (pick, name, path) in configs {
        let mut v = vec![pick];
        v.extend_from_slice(&std::fs::read(path)?);
        write("config", name, &v)?;
    }
    println!("seeds written under fuzz/corpus/");
    Ok(())
}
