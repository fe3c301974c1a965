//! End-to-end test of `edgevla train`: a tiny model trained for a few iterations on short
//! episodes of the memory task writes a checkpoint that `edgevla export --checkpoint` loads.

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
