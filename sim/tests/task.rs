//! Integration tests of the `sim` crate: determinism, cue visibility, projection against an
//! independent computation, expert and cue-blind closed-loop success rates, needle episodes,
//! config errors, patches and a contact sheet.

// Helpers outside #[test] fns unwrap too (clippy.toml's test allowance covers only test fns).
#![allow(clippy::unwrap_used)]

use sim::Error;
use sim::{ACTION_DIM, Episode, LIGHT_COLORS, PROPRIO_DIM, Sim, Task, TaskConfig};
use vision::PreprocessConfig;

fn config() -> TaskConfig {
    TaskConfig::from_toml(TaskConfig::DEFAULT_TOML).unwrap()
}

fn count_color(img: &[u8], rgb: [u8; 3]) -> usize {
    img.chunks_exact(3).filter(|p| *p == rgb).count()
}

#[test]
fn same_seed_same_bytes_different_seeds_differ() {
    let c = config();
    let a = Episode::generate(&c, 7).unwrap();
    let b = Episode::generate(&c, 7).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.steps.len(), c.episode_steps);
    let step = &a.steps[0];
    assert_eq!(step.images.len(), 3);
    assert!(step.images.iter().all(|i| i.len() == 64 * 64 * 3));
    assert_eq!(step.expert_action.len(), c.horizon * ACTION_DIM);
    assert_eq!(a.steps[3].stamp_ns, 300_000_000);
    // Different seeds: different scenes (distractor positions at least) in the first frame.
    let mut differing = 0;
    for seed in 8..16 {
        let e = Episode::generate(&c, seed).unwrap();
        assert_ne!(e.steps[0].images, a.steps[0].images, "seed {seed}");
        differing += usize::from(e.target != a.target || e.cue_steps != a.cue_steps);
    }
    assert!(
        differing >= 4,
        "only {differing} of 8 seeds changed target or cue time"
    );
}

#[test]
fn cue_visible_only_during_cue_steps() {
    let c = config();
    let mut cams_used = [0usize; 3];
    for seed in 0..24 {
        let e = Episode::generate(&c, seed).unwrap();
        let name = LIGHT_COLORS.iter().find(|l| l.1 == e.cue_color).unwrap().0;
        assert!(e.instruction.contains(name), "{}", e.instruction);
        assert!(e.cue_steps.end <= e.go_step);
        cams_used[e.cue_camera] += 1;
        for d in &e.decoys {
            // Decoys are lit in other colors, before go, never during the cue.
            assert_ne!(LIGHT_COLORS[d.color].1, e.cue_color);
            assert!(d.steps.end <= e.go_step);
            assert!(d.steps.end <= e.cue_steps.start || d.steps.start >= e.cue_steps.end);
        }
        for (t, step) in e.steps.iter().enumerate() {
            for (cam, img) in step.images.iter().enumerate() {
                let n = count_color(img, e.cue_color);
                if e.cue_steps.contains(&t) && cam == e.cue_camera {
                    assert!(
                        n >= 4,
                        "seed {seed} step {t}: cue camera {cam} shows {n} cue pixels"
                    );
                } else if !e.cue_steps.contains(&t) {
                    assert_eq!(
                        n, 0,
                        "seed {seed} step {t} camera {cam}: cue color outside the cue"
                    );
                }
            }
        }
    }
    // The wrist cameras see the outer pads, the head the inner ones: more than one camera
    // carries the cue over 24 seeds.
    assert!(
        cams_used.iter().filter(|&&n| n > 0).count() >= 2,
        "{cams_used:?}"
    );
}

/// Projection of a rig camera, computed from the numbers of `configs/rigs/edge-3cam.toml` and
/// `configs/task/memory.toml` with plain arrays (no nalgebra): `p_cam = Rᵀ (p - t)`, pinhole at
/// 640x480, then the preprocess's centre crop (x0 = 80, 480x480) and resize to 64 (÷ 7.5).
fn reference_project(r: [[f64; 3]; 3], t: [f64; 3], p: [f64; 3]) -> [f64; 2] {
    let d = [p[0] - t[0], p[1] - t[1], p[2] - t[2]];
    let c: Vec<f64> = (0..3)
        .map(|j| r[0][j] * d[0] + r[1][j] * d[1] + r[2][j] * d[2])
        .collect();
    let (u, v) = (320.0 * c[0] / c[2] + 320.0, 320.0 * c[1] / c[2] + 240.0);
    [(u - 80.0) / 7.5, v / 7.5]
}

#[test]
fn projection_matches_independent_computation_and_render() {
    let c = config();
    let task = Task::new(&c).unwrap();
    let s3 = 0.866_025_403_784_438_7;
    let head_r = [[0.0, -0.5, s3], [-1.0, 0.0, 0.0], [0.0, -s3, -0.5]];
    let down = [[0.0, -1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, -1.0]];
    let cams = [
        (head_r, [0.05, 0.0, 1.2]),
        (down, [0.35, 0.25, 0.9]),
        (down, [0.35, -0.25, 0.9]),
    ];
    assert_eq!(task.cameras().len(), 3);
    assert_eq!(task.cameras()[0].name, "head");
    // Tolerance 1e-9 px (f64 rounding), far inside the 0.5 px the task needs.
    for (cam, (r, t)) in task.cameras().iter().zip(cams) {
        for p in [
            [0.5, 0.1, 0.7],
            [0.3, 0.2, 0.703],
            [0.4, -0.25, 0.74],
            [0.9, 0.0, 0.7],
        ] {
            let want = reference_project(r, t, p);
            let got = cam
                .project(&nalgebra::Point3::new(p[0], p[1], p[2]))
                .unwrap();
            assert!(
                (got[0] - want[0]).abs() < 1e-9 && (got[1] - want[1]).abs() < 1e-9,
                "{}: {p:?} → {got:?}, reference {want:?}",
                cam.name
            );
        }
    }
    // The renderer agrees: the centroid of the cue's pixels lies within 0.5 px of the
    // independently projected light centre (the disc is small: its perspective centroid shift
    // and the pixel-sampling error are each well under 0.5 px).
    let light_z = c.scene.table_height + 0.003;
    let mut checked = 0;
    for seed in 0..12 {
        let e = Episode::generate(&c, seed).unwrap();
        let img = &e.steps[e.cue_steps.start].images[e.cue_camera];
        let (mut n, mut su, mut sv) = (0.0, 0.0, 0.0);
        for (i, px) in img.chunks_exact(3).enumerate() {
            if px == e.cue_color {
                n += 1.0;
                su += (i % 64) as f64 + 0.5;
                sv += (i / 64) as f64 + 0.5;
            }
        }
        let (r, t) = cams[e.cue_camera];
        let p = [
            f64::from(e.target_xy[0]),
            f64::from(e.target_xy[1]),
            light_z,
        ];
        let want = reference_project(r, t, p);
        // Only discs wholly inside the image have an unbiased centroid.
        let margin = 8.0;
        if want.iter().all(|&w| w > margin && w < 64.0 - margin) {
            let (cu, cv) = (su / n, sv / n);
            println!(
                "seed {seed} cam {}: centroid ({cu:.3}, {cv:.3}) projection {want:?}",
                e.cue_camera
            );
            assert!(
                (cu - want[0]).abs() < 0.5 && (cv - want[1]).abs() < 0.5,
                "seed {seed} camera {}: centroid ({cu:.3}, {cv:.3}) vs projection {want:?}",
                e.cue_camera
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "only {checked} cue discs fully inside their camera"
    );
}

/// Runs `policy` (state → chunk) in the closed-loop simulator; true on success at the end.
fn run(sim: &mut Sim, policy: impl Fn(&Sim) -> Vec<f32>) -> bool {
    while !sim.is_last() {
        let chunk = policy(sim);
        sim.step(&chunk).unwrap();
    }
    sim.success()
}

#[test]
fn expert_succeeds_and_cue_blind_policy_is_at_chance() {
    let c = config();
    let task = Task::new(&c).unwrap();
    let pad0 = task.targets()[0];
    let (mut expert, mut blind) = (0u32, 0u32);
    let mut per_target = vec![0u32; c.n_targets];
    for seed in 0..200 {
        let mut sim = Sim::with_task(task.clone(), seed).unwrap();
        per_target[sim.target()] += 1;
        expert += u32::from(run(&mut sim, Sim::expert_chunk));
        let mut sim = Sim::with_task(task.clone(), seed).unwrap();
        let go = sim.go_step();
        // Before go it behaves as the expert (holds rest); after go it always reaches pad 0.
        blind += u32::from(run(&mut sim, |s| {
            if s.t() < go {
                s.expert_chunk()
            } else {
                s.chunk_to(pad0)
            }
        }));
    }
    let (expert, blind) = (f64::from(expert) / 200.0, f64::from(blind) / 200.0);
    println!("expert success {expert}, cue-blind success {blind}, targets {per_target:?}");
    assert!(expert >= 0.99, "expert success {expert}");
    // Chance is 1/K = 0.25; binomial sd over 200 seeds is 0.031, so [0.15, 0.35] is ±3.3 sd.
    assert!((0.15..=0.35).contains(&blind), "cue-blind success {blind}");
    assert!(per_target.iter().all(|&n| n >= 30), "{per_target:?}");
}

/// Where the arm ended: at rest every pad's distance is the plain distance from `arm.rest_xy`;
/// a run to pad k ends nearest pad k, within the tolerance of its centre.
#[test]
fn distance_to_pads_and_nearest_pad() {
    let c = config();
    let task = Task::new(&c).unwrap();
    let sim = Sim::with_task(task.clone(), 3).unwrap();
    let rest = c.arm.rest_xy;
    for (k, t) in task.targets().iter().enumerate() {
        let want = (rest[0] - t[0]).hypot(rest[1] - t[1]);
        let got = sim.distance_to_pad(k);
        assert!((got - want).abs() < 1e-6, "pad {k}: {got} vs {want}");
    }
    assert!(sim.distance_to_pad(task.targets().len()).is_infinite());
    for k in 0..task.targets().len() {
        let mut sim = Sim::with_task(task.clone(), 3).unwrap();
        let pad = task.targets()[k];
        run(&mut sim, |s| s.chunk_to(pad));
        assert_eq!(sim.nearest_pad(), k);
        assert!(sim.distance_to_pad(k) < c.success_tolerance, "pad {k}");
    }
}

/// Camera dropouts: only between the cue's end and the go step, one camera at a time per
/// dropout, lengths within `dropout_steps`; none by default; the same seed drops the same
/// frames; the rest of the episode (cue, go step, target) is that of the task without them.
#[test]
fn camera_dropouts_fall_between_cue_and_go() {
    let plain = config();
    let mut c = plain.clone();
    c.camera_dropouts = 3;
    c.dropout_steps = [2, 5];
    c.validate().unwrap();
    let mut dropped_total = 0;
    for seed in 0..8 {
        let e = Episode::generate(&c, seed).unwrap();
        let p = Episode::generate(&plain, seed).unwrap();
        assert_eq!(
            (e.go_step, e.target, e.cue_steps.clone()),
            (p.go_step, p.target, p.cue_steps.clone())
        );
        assert!(p.steps.iter().all(|s| s.camera_present.iter().all(|&x| x)));
        for (t, step) in e.steps.iter().enumerate() {
            let dropped = step.camera_present.iter().filter(|&&x| !x).count();
            if dropped > 0 {
                assert!(
                    t >= e.cue_steps.end && t < e.go_step,
                    "seed {seed} step {t}"
                );
            }
            assert_eq!(step.camera_present.len(), step.images.len());
            dropped_total += dropped;
        }
        assert_eq!(e, Episode::generate(&c, seed).unwrap(), "deterministic");
    }
    // 8 episodes x 3 dropouts of 2-5 steps (fewer where one is cut at the go step or two
    // overlap): well above none, at most 8 x 3 x 5.
    assert!((16..=120).contains(&dropped_total), "{dropped_total}");
    let mut bad = plain;
    bad.dropout_steps = [0, 3];
    assert!(bad.validate().is_err());
}

#[test]
fn proprio_and_pre_go_actions_do_not_depend_on_the_cue() {
    let c = config();
    let a = Episode::generate(&c, 1).unwrap();
    let b = (2..50)
        .map(|s| Episode::generate(&c, s).unwrap())
        .find(|e| e.target != a.target)
        .unwrap();
    let until = a.go_step.min(b.go_step);
    for t in 0..until {
        assert_eq!(a.steps[t].proprio, b.steps[t].proprio, "step {t}");
        assert_eq!(
            a.steps[t].expert_action, b.steps[t].expert_action,
            "step {t}"
        );
        assert_eq!(a.steps[t].proprio[6], 0.0);
    }
    assert_eq!(a.steps[a.go_step].proprio[6], 1.0);
    assert_eq!(a.steps[0].proprio.len(), PROPRIO_DIM);
    // The expert's final action says done (within tolerance) and the arm is there.
    let last = a.steps.last().unwrap();
    assert_eq!(last.expert_action[3], 1.0);
    assert!(a.success([last.proprio[4], last.proprio[5]]));
}

#[test]
fn needle_episodes_place_the_cue_at_depth() {
    let c = config();
    let history = 100;
    for (depth, start) in [(0.0, 0), (0.5, 49), (1.0, 96)] {
        let e = Episode::needle(&c, 3, depth, history).unwrap();
        assert_eq!(e.cue_steps, start..start + c.cue_steps, "depth {depth}");
        assert_eq!(e.go_step, history);
        assert_eq!(e.steps.len(), history + c.reach_steps);
        let last = e.steps.last().unwrap();
        assert!(
            e.success([last.proprio[4], last.proprio[5]]),
            "depth {depth}"
        );
        assert_eq!(e.decoys.len(), c.n_decoys);
    }
    let err = Episode::needle(&c, 3, 1.5, history).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Input {
                what: "needle depth",
                ..
            }
        ),
        "{err}"
    );
    let err = Episode::needle(&c, 3, 0.5, 2).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Input {
                what: "needle history",
                ..
            }
        ),
        "{err}"
    );
}

fn err_key(text: &str) -> String {
    match TaskConfig::from_toml(text).and_then(|c| Task::new(&c).map(|_| c)) {
        Err(Error::Config { key, .. }) => key,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn bad_configs_name_the_key() {
    let base = TaskConfig::DEFAULT_TOML;
    let cases: &[(&str, &str, &str)] = &[
        ("n_targets = 4", "n_targetz = 4", "n_targetz"),
        ("episode_steps = 64", "episode_steps = 0", "episode_steps"),
        ("cue_start = [2, 8]", "cue_start = [50, 60]", "cue_start"),
        ("go_delay = [10, 24]", "go_delay = [10, 40]", "go_delay"),
        ("go_delay = [10, 24]", "go_delay = [24, 10]", "go_delay"),
        ("n_targets = 4", "n_targets = 1", "n_targets"),
        ("n_colors = 3", "n_colors = 1", "n_decoys"),
        ("cue_steps = 3", "cue_steps = 0", "cue_steps"),
        ("kp = 3.0", "kp = 30.0", "arm.kp"),
        ("kp = 3.0", "kp = 0.3", "reach_steps"),
        (
            "target_radius = 0.42",
            "target_radius = 0.7",
            "scene.target_radius",
        ),
        (
            "table_height = 0.65",
            "table_heigth = 0.65",
            "scene.table_heigth",
        ),
        ("rig = \"edge-3cam\"", "rig = \"nope\"", "rig"),
        (
            "name = \"left_wrist\"",
            "name = \"left_wirst\"",
            "camera_override[0].name",
        ),
        (
            "image_size = [64, 64]",
            "image_size = [0, 64]",
            "image_size",
        ),
    ];
    for (from, to, want) in cases {
        assert!(base.contains(from), "pattern not in memory.toml: {from}");
        let text = base.replacen(from, to, 1);
        assert_eq!(&err_key(&text), want, "after replacing `{from}` by `{to}`");
    }
    // A rotation that is not one fails in the vision crate's validation, naming the camera.
    let text = base.replacen("[0.0, 0.0, -1.0]]", "[0.0, 0.0, 1.0]]", 1);
    let err = TaskConfig::from_toml(&text)
        .and_then(|c| Task::new(&c))
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("camera[1].extrinsics.rotation_matrix"),
        "{err}"
    );
    // The message of an unknown key names it too.
    let err = TaskConfig::from_toml("n_targetz = 4").unwrap_err();
    assert!(err.to_string().contains("n_targetz"), "{err}");
}

#[test]
fn sim_rejects_bad_chunks() {
    let mut sim = Sim::new(&config(), 0).unwrap();
    for bad in [vec![0.0; 3], vec![0.0; 6], vec![f32::NAN, 0.0, 0.0, 0.0]] {
        assert!(
            matches!(sim.step(&bad), Err(Error::Input { .. })),
            "{bad:?}"
        );
    }
    assert_eq!(sim.t(), 0);
    while !sim.is_last() {
        sim.step(&[0.0; 4]).unwrap();
    }
    assert!(matches!(sim.step(&[0.0; 4]), Err(Error::Input { .. })));
}

#[test]
fn patches_follow_the_preprocess_layout() {
    let e = Episode::generate(&config(), 5).unwrap();
    let step = &e.steps[0];
    let patches = step.patches(&PreprocessConfig::default()).unwrap();
    assert_eq!(patches.len(), 3 * 16 * 768);
    // 64x64 in, 64x64 out: the resize is the identity, so patch 0's first value is camera 0's
    // pixel (0, 0) red normalized with mean 0.5 / std 0.5 (tolerance 1e-6, f32 rounding).
    let norm = |v: u8| (f32::from(v) / 255.0 - 0.5) / 0.5;
    assert!((patches[0] - norm(step.images[0][0])).abs() < 1e-6);
    // Camera 2, patch 5 (patch row 1, column 1), (py, px) = (3, 2), green: image row 19,
    // column 18.
    let idx = 2 * 16 * 768 + 5 * 768 + (3 * 16 + 2) * 3 + 1;
    let px = step.images[2][(19 * 64 + 18) * 3 + 1];
    assert!((patches[idx] - norm(px)).abs() < 1e-6);
}

#[test]
fn contact_sheet_is_non_trivial() {
    let c = config();
    let e = Episode::generate(&c, 11).unwrap();
    let picks = [
        0,
        e.cue_steps.start,
        e.cue_steps.end,
        e.go_step,
        e.go_step + 8,
        e.steps.len() - 1,
    ];
    let (w, h, gap) = (64u32, 64u32, 2u32);
    let mut sheet = image::RgbImage::from_pixel(
        picks.len() as u32 * (w + gap),
        3 * (h + gap),
        image::Rgb([255, 255, 255]),
    );
    for (col, &t) in picks.iter().enumerate() {
        for (row, img) in e.steps[t].images.iter().enumerate() {
            for (i, px) in img.chunks_exact(3).enumerate() {
                let (x, y) = (i as u32 % w, i as u32 / w);
                let (sx, sy) = (col as u32 * (w + gap) + x, row as u32 * (h + gap) + y);
                sheet.put_pixel(sx, sy, image::Rgb([px[0], px[1], px[2]]));
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    // EDGEVLA_TASK_SHEET=path keeps the sheet for a look.
    let path = std::env::var_os("EDGEVLA_TASK_SHEET")
        .map_or_else(|| dir.path().join("sheet.png"), std::path::PathBuf::from);
    sheet.save(&path).unwrap();
    let back = image::open(&path).unwrap().to_rgb8();
    let mut colors: Vec<[u8; 3]> = back.pixels().map(|p| p.0).collect();
    colors.sort_unstable();
    colors.dedup();
    // Background, floor, table, pads, arm parts, distractors, the cue: at least 10 colors.
    assert!(colors.len() >= 10, "only {} distinct colors", colors.len());
    assert!(colors.contains(&e.cue_color));
}

/// Joint-target actions: the expert's labels are the phase's joint goal (rest pose before go,
/// the target's IK after), the same arm path as in joint-velocity space step for step, and it
/// succeeds; a constant error in the command leaves a bounded offset where the same error in
/// velocity space integrates into drift; `hold_chunk` keeps the arm still in either space.
#[test]
fn joint_target_actions_track_the_goal_without_drift() {
    use sim::ActionSpace;
    let velocity = config();
    let target = TaskConfig {
        action: ActionSpace::JointTarget,
        ..velocity.clone()
    };
    let (tv, tt) = (Task::new(&velocity).unwrap(), Task::new(&target).unwrap());
    let mut successes = 0;
    for seed in 0..50 {
        let (mut a, mut b) = (
            Sim::with_task(tv.clone(), seed).unwrap(),
            Sim::with_task(tt.clone(), seed).unwrap(),
        );
        while !a.is_last() {
            let chunk = b.expert_chunk();
            let goal = if b.t() < b.go_step() {
                tt.q_rest()
            } else {
                tt.q_targets()[b.target()]
            };
            for action in chunk.chunks(ACTION_DIM) {
                assert_eq!([action[0], action[1]], [goal[0] as f32, goal[1] as f32]);
            }
            a.step(&a.expert_chunk()).unwrap();
            b.step(&chunk).unwrap();
            let (pa, pb) = (a.proprio(), b.proprio());
            assert!(
                pa.iter().zip(&pb).all(|(x, y)| (x - y).abs() < 1e-6),
                "seed {seed} step {}: {pa:?} vs {pb:?}",
                a.t()
            );
        }
        successes += u32::from(b.success());
    }
    assert!(successes >= 49, "expert success {successes}/50");

    // A clone of the noiseless expert learns a constant for the rest phase (zero velocity, or
    // the rest pose as the target); the same 0.02 error on it for 60 steps:
    let bias = 0.02f32;
    let drift = |task: &Task| {
        let mut sim = Sim::with_task(task.clone(), 1).unwrap();
        let rest = sim.proprio();
        let learned = match task.config().action {
            ActionSpace::JointVelocity => [0.0, 0.0],
            ActionSpace::JointTarget => [task.q_rest()[0] as f32, task.q_rest()[1] as f32],
        };
        for _ in 0..60 {
            sim.step(&[learned[0] + bias, learned[1], 0.0, 0.0])
                .unwrap();
        }
        f64::from((sim.proprio()[0] - rest[0]).abs())
    };
    let (dv, dt) = (drift(&tv), drift(&tt));
    // Velocity: 60 steps x 0.1 s x 0.02 rad/s = 0.12 rad and growing; target: settles 0.02 rad
    // off the rest pose (the controller's error decays by 1 - kp dt = 0.7 per step).
    assert!((dv - 0.12).abs() < 1e-3, "velocity drift {dv}");
    assert!((dt - 0.02).abs() < 1e-3, "target offset {dt}");

    for task in [&tv, &tt] {
        let mut sim = Sim::with_task(task.clone(), 2).unwrap();
        for _ in 0..5 {
            sim.step(&sim.expert_chunk()).unwrap();
        }
        // Move off the rest pose, then hold.
        let mut away = sim.expert_chunk();
        away[0] += 0.5;
        sim.step(&away).unwrap();
        let before = sim.proprio();
        sim.step(&sim.hold_chunk()).unwrap();
        let after = sim.proprio();
        assert!(
            (before[0] - after[0]).abs() < 1e-6 && (before[1] - after[1]).abs() < 1e-6,
            "{:?}: {before:?} -> {after:?}",
            task.config().action
        );
    }
}

/// The wide-wait training preset: every episode generates; waits before the go step spread from
/// a few steps to over 200, some cues are still inside a 16-step window at the go step and some
/// are far past it; the phase value leaks nothing.
#[test]
fn wide_wait_training_preset_spreads_waits_and_cue_ages() {
    let c = TaskConfig::from_toml(configs::task_preset("memory-long-train-wide").unwrap().text)
        .unwrap();
    let (mut waits, mut ages) = (Vec::new(), Vec::new());
    for seed in 0..96 {
        let e = Episode::generate(&c, seed).unwrap();
        assert!(e.steps.iter().all(|s| s.proprio[7] == 0.0), "phase leaks");
        assert!(e.go_step + c.reach_steps <= c.episode_steps);
        waits.push(e.go_step);
        ages.push(e.go_step - (e.cue_steps.end - 1));
    }
    assert!(waits.iter().any(|&w| w < 40), "{waits:?}");
    assert!(
        waits.iter().filter(|&&w| w >= 150).count() >= 16,
        "{waits:?}"
    );
    assert!(ages.iter().filter(|&&a| a < 16).count() >= 4, "{ages:?}");
    assert!(ages.iter().filter(|&&a| a > 64).count() >= 32, "{ages:?}");
}
