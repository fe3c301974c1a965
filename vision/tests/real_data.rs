//! vision on real recordings (`../shared/data`, see its README) and on the shipped rig configs.
//!
//! Tests that need `../shared` skip with a message when it is absent, unless
//! `EDGEVLA_REQUIRE_SHARED` is set, in which case they fail.

// Test helpers (not #[test] fns themselves) may unwrap: a malformed recording should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use vision::{
    Decoder, Encoding, FrameRef, Image, MissingPolicy, Nanos, PixelFormat, PreprocessConfig, Rig,
    Slot, Step, StepAssembler, SyncConfig, VisionPipeline,
};

const MS: Nanos = 1_000_000;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `../shared/data/<sub>` or `None` (after the skip message) when absent.
fn shared(sub: &str) -> Option<PathBuf> {
    let path = repo().join("../shared/data").join(sub);
    if path.exists() {
        return Some(path);
    }
    assert!(
        std::env::var_os("EDGEVLA_REQUIRE_SHARED").is_none(),
        "EDGEVLA_REQUIRE_SHARED is set but {} is missing",
        path.display()
    );
    eprintln!("skipped: {} not found", path.display());
    None
}

/// `cam*/data.csv` of EuRoC: (stamp ns, file name).
fn euroc_frames(dir: &Path, cam: &str) -> Vec<(Nanos, PathBuf)> {
    let text = std::fs::read_to_string(dir.join(cam).join("data.csv")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (stamp, file) = l.split_once(',').unwrap();
            (
                stamp.trim().parse().unwrap(),
                dir.join(cam).join("data").join(file.trim()),
            )
        })
        .collect()
}

/// `episode.csv` of the G1 episode: frame timestamps in ns from the episode start.
fn g1_stamps(dir: &Path) -> Vec<Nanos> {
    let text = std::fs::read_to_string(dir.join("episode.csv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let secs: f64 = l.split(',').next().unwrap().parse().unwrap();
            (secs * 1e9).round() as Nanos
        })
        .collect()
}

/// The numbers inside `key: [ ... ]` of an OpenCV-style sensor.yaml.
fn yaml_numbers(text: &str, key: &str) -> Vec<f64> {
    let start = text.find(&format!("{key}:")).unwrap();
    let open = start + text[start..].find('[').unwrap();
    let close = open + text[open..].find(']').unwrap();
    text[open + 1..close]
        .split(',')
        .map(|v| v.trim().parse().unwrap())
        .collect()
}

#[test]
fn shipped_rigs_load() {
    let dir = repo().join("configs/rigs");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let rig = Rig::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        names.push(rig.name.clone());
    }
    names.sort();
    assert_eq!(names, ["edge-3cam", "euroc-stereo", "g1-head"]);
    let edge = Rig::load(dir.join("edge-3cam.toml")).unwrap();
    assert_eq!(edge.n_cams(), 3);
    assert_eq!(edge.index_of("right_wrist"), Some(2));
    // The edge model's default input: 16 patches of 768 values per camera.
    let pre = PreprocessConfig::default();
    assert_eq!((pre.n_patches(), pre.patch_dim()), (16, 768));
}

/// The euroc rig file carries sensor.yaml's calibration (tolerance 1e-12: same decimals).
#[test]
fn euroc_rig_matches_sensor_yaml() {
    let Some(dir) = shared("euroc_stereo") else {
        return;
    };
    let rig = Rig::load(repo().join("configs/rigs/euroc-stereo.toml")).unwrap();
    for cam in &rig.cameras {
        let yaml = std::fs::read_to_string(dir.join(&cam.name).join("sensor.yaml")).unwrap();
        let k = yaml_numbers(&yaml, "intrinsics");
        let i = cam.intrinsics;
        for (got, want) in [i.fx, i.fy, i.cx, i.cy].iter().zip(&k) {
            assert!((got - want).abs() < 1e-12, "{}: {got} vs {want}", cam.name);
        }
        assert_eq!(
            yaml_numbers(&yaml, "resolution"),
            [f64::from(cam.width), f64::from(cam.height)]
        );
        let t = yaml_numbers(&yaml, "data");
        let m = cam.pose.to_homogeneous();
        for r in 0..4 {
            for c in 0..4 {
                assert!(
                    (m[(r, c)] - t[r * 4 + c]).abs() < 1e-12,
                    "{} T_BS[{r}][{c}]",
                    cam.name
                );
            }
        }
    }
}

/// Every EuRoC PNG decodes to one 752x480 gray channel, identical to `image`'s own decode
/// (the reference; PNG is lossless, so tolerance 0).
#[test]
fn euroc_pngs_decode() {
    let Some(dir) = shared("euroc_stereo") else {
        return;
    };
    let mut decoder = Decoder::default();
    let mut out = Image::default();
    let mut n = 0;
    for cam in ["cam0", "cam1"] {
        for (_, path) in euroc_frames(&dir, cam) {
            let bytes = std::fs::read(&path).unwrap();
            decoder
                .decode_into(&FrameRef::compressed(Encoding::Png, &bytes), &mut out)
                .unwrap();
            assert_eq!(
                (out.width(), out.height(), out.format()),
                (752, 480, PixelFormat::Gray8)
            );
            let reference = image::load_from_memory(&bytes).unwrap().to_luma8();
            assert_eq!(
                out.data(),
                reference.as_raw().as_slice(),
                "{}",
                path.display()
            );
            n += 1;
        }
    }
    assert_eq!(n, 40);
}

/// Every G1 JPEG decodes to 640x480 RGB. Reference: `image`'s decode, which wraps the same
/// zune-jpeg decoder; we call it directly into a reused buffer, so the pixels must be identical
/// (tolerance 0).
#[test]
fn g1_jpegs_decode() {
    let Some(dir) = shared("g1_pick_bottle") else {
        return;
    };
    let mut decoder = Decoder::default();
    let mut out = Image::default();
    let (mut worst, mut total, mut count) = (0u8, 0u64, 0u64);
    for i in 0..150 {
        let bytes = std::fs::read(dir.join(format!("cam_high/{i:06}.jpg"))).unwrap();
        decoder
            .decode_into(&FrameRef::compressed(Encoding::Jpeg, &bytes), &mut out)
            .unwrap();
        assert_eq!(
            (out.width(), out.height(), out.format()),
            (640, 480, PixelFormat::Rgb8)
        );
        let reference = image::load_from_memory(&bytes).unwrap().to_rgb8();
        for (a, b) in out.data().iter().zip(reference.as_raw()) {
            let d = a.abs_diff(*b);
            worst = worst.max(d);
            total += u64::from(d);
            count += 1;
        }
    }
    let mean = total as f64 / count as f64;
    eprintln!("G1 JPEG vs image: worst {worst}, mean {mean:.6}");
    assert!(worst == 0, "worst {worst}, mean {mean}");
}

fn run(a: &mut StepAssembler<usize>, now: Nanos, steps: &mut Vec<Step<usize>>) {
    while let Some(s) = a.poll(now) {
        steps.push(s);
    }
}

/// The real stereo stamps (20 Hz, identical on both cameras) at the euroc rig's own sync
/// settings (10 Hz, ±10 ms, hold up to 200 ms), fed in stamp order with the clock at each stamp:
/// the even frames match ticks 0..9, the odd ones fall between windows (unused), and tick 10
/// (after the last frame) holds frame 18.
#[test]
fn euroc_stereo_at_10hz() {
    let Some(dir) = shared("euroc_stereo") else {
        return;
    };
    let rig = Rig::load(repo().join("configs/rigs/euroc-stereo.toml")).unwrap();
    let cams: Vec<Vec<(Nanos, PathBuf)>> = ["cam0", "cam1"]
        .iter()
        .map(|c| euroc_frames(&dir, c))
        .collect();
    assert_eq!(cams[0].len(), 20);
    let t0 = cams[0][0].0;
    let mut now: Nanos;
    let mut a = StepAssembler::new(&rig.sync, 2).unwrap();
    let mut steps = Vec::new();
    for i in 0..20 {
        for (cam, frames) in cams.iter().enumerate() {
            now = frames[i].0;
            a.push(cam, frames[i].0, i).unwrap();
            run(&mut a, now, &mut steps);
        }
    }
    now = t0 + 1010 * MS;
    run(&mut a, now, &mut steps);
    assert_eq!(steps.len(), 11);
    for (k, s) in steps.iter().enumerate().take(10) {
        assert_eq!(s.tick_ns, t0 + k as Nanos * 100 * MS);
        assert_eq!(s.slots[0].frame(), Some(&(2 * k)));
        assert_eq!(s.slots[1].frame(), Some(&(2 * k)));
    }
    assert!(
        matches!(steps[10].slots[0], Slot::Held { frame: 18, age_ns, .. } if age_ns == 100 * MS)
    );
    for st in &a.stats().cameras {
        assert_eq!(
            (st.received, st.matched, st.held, st.missing),
            (20, 10, 1, 0)
        );
        assert_eq!((st.unused, st.dropped()), (10, 0));
    }
}

/// The real stereo stamps through a lossy, late link at 20 Hz (±10 ms, hold ≤ 200 ms): cam1
/// arrives 30 ms late and loses frames 5, 6, 7 and 12; its frame 15 comes 55 ms late (after
/// tick 15 was decided at 800 ms by cam0's frame 16, before tick 16's deadline at 810 ms): too
/// old; cam0 sends frame 4 twice and delivers frame 10 after frame 11.
#[test]
fn euroc_stereo_lossy_link_at_20hz() {
    let Some(dir) = shared("euroc_stereo") else {
        return;
    };
    let cams: Vec<Vec<Nanos>> = ["cam0", "cam1"]
        .iter()
        .map(|c| euroc_frames(&dir, c).into_iter().map(|f| f.0).collect())
        .collect();
    let t0 = cams[0][0];
    // (arrival, camera, frame index)
    let mut arrivals: Vec<(Nanos, usize, usize)> = Vec::new();
    for i in 0..20 {
        let s0 = cams[0][i];
        match i {
            10 => arrivals.push((cams[0][11] + 1, 0, 10)), // right after frame 11
            4 => {
                arrivals.push((s0, 0, 4));
                arrivals.push((s0, 0, 4)); // duplicate
            }
            _ => arrivals.push((s0, 0, i)),
        }
        let s1 = cams[1][i];
        match i {
            5 | 6 | 7 | 12 => {}
            15 => arrivals.push((s1 + 55 * MS, 1, 15)),
            _ => arrivals.push((s1 + 30 * MS, 1, i)),
        }
    }
    arrivals.sort();
    let cfg = SyncConfig {
        rate_hz: 20.0,
        tolerance_ms: 10.0,
        missing: MissingPolicy::Hold,
        max_hold_ms: 200.0,
        max_pending: 8,
    };
    let mut now: Nanos;
    let mut a = StepAssembler::new(&cfg, 2).unwrap().with_start(t0);
    let mut steps = Vec::new();
    for (arrival, cam, i) in arrivals {
        now = arrival;
        a.push(cam, cams[cam][i], i).unwrap();
        run(&mut a, now, &mut steps);
    }
    assert_eq!(steps.len(), 20);
    let mut held: Vec<(usize, u64, usize)> = Vec::new();
    for s in &steps {
        for (cam, slot) in s.slots.iter().enumerate() {
            if let Slot::Held { frame, .. } = slot {
                held.push((cam, s.index, *frame));
            }
        }
    }
    assert_eq!(
        held,
        [
            (1, 5, 4),
            (1, 6, 4),
            (1, 7, 4),
            (0, 10, 9),
            (1, 12, 11),
            (1, 15, 14)
        ]
    );
    let s = a.stats();
    let (c0, c1) = (&s.cameras[0], &s.cameras[1]);
    assert_eq!(
        (
            c0.received,
            c0.matched,
            c0.held,
            c0.duplicate,
            c0.out_of_order,
            c0.too_old,
            c0.unused
        ),
        (21, 19, 1, 1, 1, 0, 0)
    );
    assert_eq!(
        (
            c1.received,
            c1.matched,
            c1.held,
            c1.duplicate,
            c1.out_of_order,
            c1.too_old,
            c1.unused
        ),
        (16, 15, 5, 0, 0, 1, 0)
    );
    assert!(s.cameras.iter().all(|c| c.missing == 0));
}

/// Three real streams at their own rates: both EuRoC cameras (20 Hz) and the G1 head camera
/// (30 Hz, its episode stamps shifted to start 5 ms after EuRoC's), at 10 Hz ±20 ms with the
/// mask policy, over EuRoC's one second.
#[test]
fn three_real_streams_at_10hz_masked() {
    let (Some(euroc), Some(g1)) = (shared("euroc_stereo"), shared("g1_pick_bottle")) else {
        return;
    };
    let cam0: Vec<Nanos> = euroc_frames(&euroc, "cam0")
        .into_iter()
        .map(|f| f.0)
        .collect();
    let cam1: Vec<Nanos> = euroc_frames(&euroc, "cam1")
        .into_iter()
        .map(|f| f.0)
        .collect();
    let t0 = cam0[0];
    let head: Vec<Nanos> = g1_stamps(&g1)
        .into_iter()
        .map(|s| t0 + 5 * MS + s)
        .take(30)
        .collect();
    let mut frames: Vec<(Nanos, usize)> = Vec::new();
    frames.extend(cam0.iter().map(|&s| (s, 0)));
    frames.extend(cam1.iter().map(|&s| (s, 1)));
    frames.extend(head.iter().map(|&s| (s, 2)));
    frames.sort();
    let cfg = SyncConfig {
        rate_hz: 10.0,
        tolerance_ms: 20.0,
        missing: MissingPolicy::Mask,
        max_hold_ms: 0.0,
        max_pending: 8,
    };
    let mut now: Nanos;
    let mut a = StepAssembler::new(&cfg, 3).unwrap().with_start(t0);
    let mut steps = Vec::new();
    for (serial, &(stamp, cam)) in frames.iter().enumerate() {
        now = stamp;
        a.push(cam, stamp, serial).unwrap();
        run(&mut a, now, &mut steps);
    }
    now = t0 + 1020 * MS;
    run(&mut a, now, &mut steps);
    assert_eq!(steps.len(), 11);
    for s in &steps[..10] {
        assert_eq!(s.missing_mask(), [false, false, false], "tick {}", s.index);
        let head_stamp = s.slots[2].stamp_ns().unwrap();
        assert!(
            head_stamp.abs_diff(s.tick_ns + 5 * MS) < MS,
            "head frame 3k for tick k"
        );
    }
    assert_eq!(steps[10].missing_mask(), [true, true, true]);
    let st = &a.stats().cameras;
    assert_eq!((st[0].matched, st[0].unused, st[0].missing), (10, 10, 1));
    assert_eq!((st[1].matched, st[1].unused, st[1].missing), (10, 10, 1));
    assert_eq!((st[2].matched, st[2].unused, st[2].missing), (10, 20, 1));
}

/// Real stereo pairs through sync + decode + preprocess: `[2, 16, 768]` patches per step with
/// every value inside the normalized range [-1, 1] (mean 0.5, std 0.5; tolerance 1e-5).
#[test]
fn euroc_steps_become_patches() {
    let Some(dir) = shared("euroc_stereo") else {
        return;
    };
    let rig = Rig::load(repo().join("configs/rigs/euroc-stereo.toml")).unwrap();
    let mut pipeline = VisionPipeline::for_rig(&rig, &PreprocessConfig::default()).unwrap();
    let mut now: Nanos;
    let mut a = StepAssembler::new(&rig.sync, 2).unwrap();
    let mut processed = 0;
    for i in 0..20 {
        for (cam, name) in ["cam0", "cam1"].iter().enumerate() {
            let (stamp, path) = euroc_frames(&dir, name).swap_remove(i);
            let bytes = std::fs::read(path).unwrap();
            now = stamp;
            a.push(
                cam,
                stamp,
                vision::EncodedFrame::compressed(Encoding::Png, bytes),
            )
            .unwrap();
            while let Some(step) = a.poll(now) {
                let errors = pipeline.process_step(&step);
                assert!(errors.is_empty(), "{errors:?}");
                let out = pipeline.patches();
                assert_eq!(out.shape(), [2, 16, 768]);
                assert_eq!(out.missing(), [false, false]);
                assert!(
                    out.data()
                        .iter()
                        .all(|v| (-1.0 - 1e-5..=1.0 + 1e-5).contains(v))
                );
                // Gray frames: the three channels of every pixel are equal.
                assert!(out.data().chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
                assert_ne!(out.camera(0), out.camera(1), "left and right views differ");
                processed += 1;
            }
        }
    }
    assert_eq!(processed, 10);
}
