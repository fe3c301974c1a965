//! End-to-end tests of `edgevla eval`: `--quick` over a tiny random checkpoint writes the CSV,
//! the markdown and decodable PNG heatmaps and prints its command and seed; the oracle
//! scores 100% through the CLI; bad arguments fail with clear messages.

// Helpers outside `#[test]` functions panic on set-up failures too.
#![allow(clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

use burn::backend::NdArray;
use runtime::model::VlaConfig;

/// The tiny test model (configs/model/tiny.toml).
fn tiny_model() -> &'static str {
    configs::model_preset("tiny").expect("tiny preset").text
}

/// Training length 16 frame-steps: the quick sweep runs lengths 16 and 32.
const SHORT_TASK: &str = r#"
episode_steps = 16
cue_start = [1, 1]
cue_steps = 1
go_delay = [1, 2]
reach_steps = 11
"#;

fn setup(dir: &Path) -> (String, String) {
    let ckpt = dir.join("ckpt");
    let config = VlaConfig::from_toml(tiny_model()).expect("tiny model");
    let model = config.init::<NdArray<f32>>(&Default::default());
    runtime::checkpoint::save(&model, &ckpt).expect("save checkpoint");
    let task = dir.join("task.toml");
    std::fs::write(&task, SHORT_TASK).expect("write task");
    (
        ckpt.to_string_lossy().into_owned(),
        task.to_string_lossy().into_owned(),
    )
}

fn eval(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgevla"))
        .arg("eval")
        .args(args)
        .output()
        .expect("run edgevla")
}

#[test]
fn quick_sweep_over_a_tiny_checkpoint_writes_every_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ckpt, task) = setup(dir.path());
    let out_dir = dir.path().join("out");
    let run = eval(&[
        "--quick",
        "--model",
        &ckpt,
        "--task",
        &task,
        "--out",
        &out_dir.to_string_lossy(),
        "--seed",
        "11",
        "--jobs",
        "2",
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // The exact, fully spelled-out command and the seed.
    assert!(
        stdout.contains("command: edgevla eval --policy model"),
        "{stdout}"
    );
    assert!(
        stdout.contains("--lengths 16,32 --depths 0,0.5,1 --episodes 2 --seed 11"),
        "{stdout}"
    );
    assert!(
        stdout.contains("--methods yarn,none --kv-dtypes f32,int8 --budgets full,model"),
        "{stdout}"
    );
    assert!(stdout.contains("seed: 11"), "{stdout}");
    // Axes design: yarn/f32/full, none/f32/full, yarn/int8/full, yarn/f32/model.
    assert!(
        stdout.contains("4 configurations x 2 lengths x 3 depths x 2 episodes = 48 episodes"),
        "{stdout}"
    );

    let csv = std::fs::read_to_string(out_dir.join("cells.csv")).expect("cells.csv");
    let lines: Vec<&str> = csv.lines().collect();
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(header, eval::needle::report::CSV_HEADER);
    let column = |name: &str| header.iter().position(|h| *h == name).expect(name);
    assert_eq!(lines.len(), 1 + 4 * 2 * 3);
    for line in &lines[1..] {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), header.len(), "{line}");
        assert_eq!(
            fields[column("episodes")],
            "2",
            "2 episodes per cell: {line}"
        );
        assert_eq!(fields[column("recall")], "on", "{line}");
        let rate: f64 = fields[column("success_rate")]
            .parse()
            .expect("success rate");
        assert!((0.0..=1.0).contains(&rate));
    }
    let md = std::fs::read_to_string(out_dir.join("results.md")).expect("results.md");
    assert!(md.contains("(seed 11)") && md.contains("## Success by length x RoPE method"));
    let pngs: Vec<_> = std::fs::read_dir(&out_dir)
        .expect("out dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    assert_eq!(pngs.len(), 4 * 2, "success + cue recall per configuration");
    let (w, h) = eval::needle::heatmap::size(2, 3);
    for png in pngs {
        let img = image::open(&png).expect("decodes");
        assert_eq!((img.width(), img.height()), (w, h), "{}", png.display());
    }
}

#[test]
fn oracle_scores_every_episode_through_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, task) = setup(dir.path());
    let out_dir = dir.path().join("oracle");
    let run = eval(&[
        "--policy",
        "oracle",
        "--quick",
        "--task",
        &task,
        "--episodes",
        "10",
        "--out",
        &out_dir.to_string_lossy(),
        "--quiet",
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let csv = std::fs::read_to_string(out_dir.join("cells.csv")).expect("cells.csv");
    let successes = eval::needle::report::CSV_HEADER
        .iter()
        .position(|h| *h == "successes")
        .expect("successes column");
    for line in csv.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(
            fields[successes], "10",
            "oracle must succeed every episode: {line}"
        );
    }
}

#[test]
fn bad_arguments_fail_with_clear_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ckpt, task) = setup(dir.path());
    let out = dir.path().join("x").to_string_lossy().into_owned();

    let run = eval(&[
        "--model",
        &ckpt,
        "--task",
        &task,
        "--methods",
        "rotary",
        "--out",
        &out,
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("unknown method `rotary`"), "{err}");

    let run = eval(&[
        "--model",
        &ckpt,
        "--task",
        &task,
        "--lengths",
        "8,16",
        "--out",
        &out,
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("8 frame-steps is below the training length 16"),
        "{err}"
    );

    let run = eval(&[
        "--model",
        &ckpt,
        "--task",
        &task,
        "--kv-dtypes",
        "int4",
        "--out",
        &out,
    ]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("int4"));

    let missing = dir.path().join("nope").to_string_lossy().into_owned();
    let run = eval(&[
        "--model", &missing, "--task", &task, "--quick", "--out", &out,
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("no checkpoint there"), "{err}");

    let run = eval(&[
        "--model", &ckpt, "--task", &task, "--device", "tpu", "--out", &out,
    ]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("expected cpu, cuda or cuda:N"));
}
