//! End-to-end test of `edgevla train`: a tiny model trained for a few iterations on short
//! episodes of the memory task writes a checkpoint that `edgevla export --checkpoint` loads.

use std::path::Path;
use std::process::Command;

const TINY_MODEL: &str = r#"
d_model = 64
n_layers = 1
n_heads = 2
n_kv_heads = 1
ffn_dim = 64
n_cameras = 3
patches_per_camera = 16
patch_dim = 768
proprio_dim = 8
max_instruction_bytes = 63
n_readout = 1
horizon = 8
action_dim = 4
[rope]
head_dim = 32
max_position_embeddings = 1024
[kv_cache]
dtype = "int8"
budget_bytes = 1000000
"#;

const SHORT_TASK: &str = r#"
episode_steps = 16
cue_start = [1, 1]
cue_steps = 1
go_delay = [1, 2]
reach_steps = 11
"#;

#[test]
fn train_writes_a_loadable_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = dir.path().join("tiny.toml");
    let task = dir.path().join("task.toml");
    let training = dir.path().join("training.toml");
    std::fs::write(&model, TINY_MODEL).expect("write model");
    std::fs::write(&task, SHORT_TASK).expect("write task");
    std::fs::write(
        &training,
        format!(
            "model = {:?}\ntask = {:?}\nbatch_size = 2\nseed = 7\n[optimizer]\niterations = 3\nlearning_rate = 1e-3\n",
            model.display().to_string(),
            task.display().to_string()
        ),
    )
    .expect("write training");
    let out = dir.path().join("ckpt");
    let run = Command::new(env!("CARGO_BIN_EXE_edgevla"))
        .args([
            "train",
            "--config",
            &training.to_string_lossy(),
            "--out",
            &out.to_string_lossy(),
            "--quiet",
            "--eval-episodes",
            "2",
        ])
        .output()
        .expect("run edgevla train");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "train failed: {stderr}");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("trained 3 iterations"), "{stdout}");
    assert!(
        stdout.contains("closed-loop success: ") && stdout.contains("/2 episodes"),
        "{stdout}"
    );
    assert!(
        stderr.contains("training 3/3"),
        "quiet progress lines: {stderr}"
    );
    assert!(out.join("weights.mpk").exists() && out.join("config.toml").exists());
    assert!(out.join("metrics.csv").exists() && out.join("loss.png").exists());
    // The preprocessing the episodes were made with travels with the checkpoint.
    let preprocess = std::fs::read_to_string(out.join("preprocess.toml")).expect("preprocess");
    assert!(preprocess.contains("patch_size = 16"), "{preprocess}");

    let export = Command::new(env!("CARGO_BIN_EXE_edgevla"))
        .args([
            "export",
            "--model",
            &model.to_string_lossy(),
            "--checkpoint",
            &out.to_string_lossy(),
            "--out",
            &dir.path().join("hf").to_string_lossy(),
        ])
        .output()
        .expect("run edgevla export");
    assert!(
        export.status.success(),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );

    // A training config with an unknown key is refused with the key named.
    std::fs::write(
        &training,
        "model = \"edge\"\ntask = \"memory\"\nbatch_size = 1\nseed = 0\nepochs = 3\n",
    )
    .expect("write");
    let bad = Command::new(env!("CARGO_BIN_EXE_edgevla"))
        .args([
            "train",
            "--config",
            &training.to_string_lossy(),
            "--out",
            &out.to_string_lossy(),
        ])
        .output()
        .expect("run");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("epochs"));
}

/// A run stopped after 2 of 4 iterations and resumed from its checkpoint (weights, optimizer
/// state, iterations done) continues where it stopped: iterations 2 and 3 have the losses of an
/// uninterrupted run (≤ 1e-4 relative); the resumed folder's metrics cover all 4. Resuming with
/// another model architecture, from a corrupt state, or past the end are clear errors.
#[test]
fn resume_continues_where_a_stopped_run_ended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.to_string_lossy().into_owned()
    };
    let model = write("tiny.toml", TINY_MODEL);
    let other_model = write(
        "other.toml",
        &TINY_MODEL.replace("ffn_dim = 64", "ffn_dim = 32"),
    );
    let task = write("task.toml", SHORT_TASK);
    let training = |model: &str| {
        format!(
            "model = {model:?}\ntask = {task:?}\nbatch_size = 2\nseed = 7\n[optimizer]\niterations = 4\nlearning_rate = 1e-3\nwarmup = 1\n"
        )
    };
    let config = write("training.toml", &training(&model));
    let other_config = write("other-training.toml", &training(&other_model));
    let out = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--quiet"];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_edgevla"))
            .args(&args)
            .output()
            .expect("run edgevla train")
    };
    let losses = |folder: &str| -> Vec<f64> {
        std::fs::read_to_string(Path::new(folder).join("metrics.csv"))
            .expect("metrics")
            .lines()
            .skip(1)
            .map(|l| l.split(',').nth(1).expect("loss").parse().expect("number"))
            .collect()
    };
    let ok = |run: std::process::Output| {
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    };
    let (whole, first, rest) = (out("whole"), out("first"), out("rest"));
    ok(train(&["--config", &config, "--out", &whole]));
    ok(train(&[
        "--config",
        &config,
        "--stop-after",
        "2",
        "--out",
        &first,
    ]));
    assert_eq!(losses(&first).len(), 2);
    ok(train(&[
        "--config", &config, "--resume", &first, "--out", &rest,
    ]));
    let (a, b) = (losses(&whole), losses(&rest));
    assert_eq!((a.len(), b.len()), (4, 4));
    for i in 0..4 {
        assert!(
            ((a[i] - b[i]) / a[i]).abs() <= 1e-4,
            "iteration {i}: {} vs {}",
            a[i],
            b[i]
        );
    }
    // A run saved before metrics.csv had its cue_loss column keeps its rows when resumed.
    let metrics_path = Path::new(&first).join("metrics.csv");
    let current = std::fs::read_to_string(&metrics_path).expect("metrics");
    let old_format: String = current
        .lines()
        .map(|l| format!("{}\n", l.rsplit_once(',').expect("columns").0))
        .collect();
    assert!(old_format.starts_with("iteration,loss,learning_rate,elapsed_s,tokens_per_s\n"));
    std::fs::write(&metrics_path, old_format).expect("write");
    let resumed_old = out("resumed_old");
    ok(train(&[
        "--config",
        &config,
        "--resume",
        &first,
        "--out",
        &resumed_old,
    ]));
    let c = losses(&resumed_old);
    assert_eq!(c.len(), 4);
    assert_eq!(c[..2], losses(&first)[..]);
    // Another architecture, a corrupt state, nothing left to do.
    let run = train(&[
        "--config",
        &other_config,
        "--resume",
        &first,
        "--out",
        &out("x"),
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("another model architecture"), "{err}");
    std::fs::write(
        Path::new(&first).join("train_state.toml"),
        "iterations = 2\n",
    )
    .expect("corrupt");
    let run = train(&["--config", &config, "--resume", &first, "--out", &out("y")]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("not a training state"), "{err}");
    let run = train(&["--config", &config, "--resume", &rest, "--out", &out("z")]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("nothing to train"), "{err}");

    // A time limit stops after the iteration running when it passes and leaves a checkpoint
    // that --resume continues to the end.
    let (limited, finished) = (out("limited"), out("finished"));
    let run = train(&[
        "--config",
        &config,
        "--time-limit",
        "1e-9",
        "--out",
        &limited,
    ]);
    let said = String::from_utf8_lossy(&run.stdout).into_owned();
    ok(run);
    assert!(
        said.contains("time limit reached after iteration 1 of 4"),
        "{said}"
    );
    assert_eq!(losses(&limited).len(), 1);
    // Without --config, --resume continues with the run's own config (its training.toml).
    assert!(Path::new(&limited).join("training.toml").exists());
    ok(train(&["--resume", &limited, "--out", &finished]));
    let c = losses(&finished);
    assert_eq!(c.len(), 4);
    assert!(((a[0] - c[0]) / a[0]).abs() <= 1e-4, "{} vs {}", a[0], c[0]);
    let run = train(&["--config", &config, "--time-limit", "0", "--out", &out("t")]);
    assert!(!run.status.success());

    // A run whose schedule was set by --iterations (3 of the config's 4), stopped early:
    // --resume without --iterations continues that schedule, not the config's.
    let (short, short_done) = (out("short"), out("short_done"));
    ok(train(&[
        "--config",
        &config,
        "--iterations",
        "3",
        "--time-limit",
        "1e-9",
        "--out",
        &short,
    ]));
    ok(train(&["--resume", &short, "--out", &short_done]));
    assert_eq!(
        losses(&short_done).len(),
        3,
        "resumed past its own schedule"
    );

    // --init starts from a checkpoint's weights with a fresh schedule: the same architecture
    // only, and not together with --resume.
    let (init, again) = (out("init"), out("again"));
    ok(train(&[
        "--config", &config, "--init", &whole, "--out", &init,
    ]));
    assert_eq!(losses(&init).len(), 4);
    ok(train(&[
        "--config", &config, "--init", &whole, "--out", &again,
    ]));
    assert_eq!(
        losses(&init),
        losses(&again),
        "--init runs are deterministic"
    );
    assert!(
        losses(&init)[0] < a[0],
        "trained weights start lower than a fresh init: {} vs {}",
        losses(&init)[0],
        a[0]
    );
    let run = train(&[
        "--config",
        &other_config,
        "--init",
        &whole,
        "--out",
        &out("w"),
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("another model architecture"), "{err}");
    let run = train(&[
        "--config",
        &config,
        "--init",
        &whole,
        "--resume",
        &first,
        "--out",
        &out("v"),
    ]);
    assert!(!run.status.success());
}
