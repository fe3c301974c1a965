//! End-to-end tests of the `edgevla` binary: run it as a user would and check what it prints.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn edgevla(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgevla"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn edgevla: {e}"));
    if let Some(text) = stdin {
        let mut pipe = child
            .stdin
            .take()
            .unwrap_or_else(|| panic!("no stdin pipe"));
        pipe.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write stdin: {e}"));
    }
    drop(child.stdin.take());
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait edgevla: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden/rope_hf.json")
}

/// Every golden entry piped to `edgevla rope --spec -` reproduces HuggingFace's numbers
/// (inv_freq relative error ≤ 1e-6, attention_factor absolute error ≤ 1e-9).
#[test]
fn rope_cli_reproduces_golden_entries_from_stdin() {
    let path = golden_path();
    if !path.exists() {
        assert!(
            std::env::var_os("EDGEVLA_REQUIRE_SHARED").is_none(),
            "{} missing",
            path.display()
        );
        eprintln!("skipped: {} not found", path.display());
        return;
    }
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}")))
            .unwrap_or_else(|e| panic!("{e}"));
    let cases = doc["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("no cases"));
    assert_eq!(cases.len(), 30);
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let out = edgevla(&["rope", "--spec", "-"], Some(&case.to_string()));
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let got: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{name}: output not JSON: {e}"));
        let keys: Vec<&String> = got
            .as_object()
            .map(|o| o.keys().collect())
            .unwrap_or_default();
        assert_eq!(
            keys.len(),
            2,
            "{name}: exactly inv_freq and attention_factor, got {keys:?}"
        );
        let got_freq: Vec<f64> =
            serde_json::from_value(got["inv_freq"].clone()).unwrap_or_else(|e| panic!("{e}"));
        let want_freq: Vec<f64> =
            serde_json::from_value(case["inv_freq"].clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got_freq.len(), want_freq.len(), "{name}");
        for (g, w) in got_freq.iter().zip(&want_freq) {
            assert!((g - w).abs() <= 1e-6 * w.abs(), "{name}: {g} vs {w}");
        }
        let (g, w) = (
            got["attention_factor"].as_f64(),
            case["attention_factor"].as_f64(),
        );
        assert!(
            matches!((g, w), (Some(g), Some(w)) if (g - w).abs() <= 1e-9),
            "{name}: {g:?} vs {w:?}"
        );
    }
}

/// Bad specs exit non-zero with an error naming the key, and never panic.
#[test]
fn rope_cli_rejects_bad_specs_with_the_key_named() {
    let cases = [
        (
            r#"{"head_dim":64,"max_position_embeddings":4096,"rope_parameters":{"rope_type":"wat"}}"#,
            "rope_parameters.rope_type",
        ),
        (
            r#"{"head_dim":64,"max_position_embeddings":4096,"rope_parameters":{"rope_type":"linear","factor":0.25}}"#,
            "rope_parameters.factor",
        ),
        (
            r#"{"head_dim":64,"max_position_embeddings":8192,"rope_parameters":{"rope_type":"yarn","factor":2.0}}"#,
            "original_max_position_embeddings",
        ),
        (
            r#"{"head_dim":8,"max_position_embeddings":8192,"rope_parameters":{"rope_type":"longrope","short_factor":[1,1],"long_factor":[1,1,1,1],"original_max_position_embeddings":4096}}"#,
            "rope_parameters.short_factor",
        ),
        (
            r#"{"head_dim":64,"rope_theta":-1.0,"max_position_embeddings":4096}"#,
            "rope_theta",
        ),
        (
            "head_dim = \"sixty-four\"\nmax_position_embeddings = 4096\n",
            "head_dim",
        ),
        ("this is not a spec", "neither JSON"),
    ];
    for (spec, key) in cases {
        let out = edgevla(&["rope", "--spec", "-"], Some(spec));
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "accepted {spec}");
        assert!(
            stderr.contains(key),
            "stderr for {spec} should name {key}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "panic for {spec}: {stderr}");
    }
    let missing = edgevla(&["rope", "--spec", "/nonexistent/spec.toml"], None);
    assert!(!missing.status.success());
    assert!(text(&missing.stderr).contains("/nonexistent/spec.toml"));
    let unknown = edgevla(&["rope", "--preset", "yarn-1000x"], None);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown.stderr).contains("yarn-8x"),
        "lists the shipped presets"
    );
}

/// Every shipped preset loads and prints a table whose rows cover rotary_dim / 2 pairs.
#[test]
fn rope_cli_prints_tables_for_every_preset() {
    let list = edgevla(&["rope", "--list-presets"], None);
    assert!(list.status.success());
    let names: Vec<String> = text(&list.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert!(names.len() >= 7, "presets: {names:?}");
    for name in &names {
        let out = edgevla(&["rope", "--preset", name, "--table"], None);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        // head_dim 32 → 16 pairs, numbered 0..15.
        let rows = stdout
            .lines()
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|t| t.parse::<usize>().is_ok())
            })
            .count();
        assert_eq!(rows, 16, "{name}:\n{stdout}");
        // The same preset file read from disk gives the same JSON as the embedded copy.
        let file =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("configs/rope/{name}.toml"));
        let from_file = edgevla(&["rope", "--spec", &file.to_string_lossy()], None);
        let from_preset = edgevla(&["rope", "--preset", name], None);
        assert!(from_file.status.success());
        assert_eq!(from_file.stdout, from_preset.stdout, "{name}");
    }
}

/// `--seq-len` changes dynamic NTK past the training context and leaves it alone within it.
#[test]
fn rope_cli_seq_len_drives_dynamic_ntk() {
    let run = |extra: &[&str]| {
        let mut args = vec!["rope", "--preset", "ntk-dynamic-4x"];
        args.extend_from_slice(extra);
        let out = edgevla(&args, None);
        assert!(out.status.success(), "{}", text(&out.stderr));
        out.stdout
    };
    let at_init = run(&[]);
    assert_eq!(run(&["--seq-len", "1024"]), at_init);
    assert_ne!(run(&["--seq-len", "8192"]), at_init);
}

/// `kv-plan --json` reproduces the Llama 3 70B figures exactly (bf16 and int8 with scales).
#[test]
fn kv_plan_json_figures() {
    let run = |dtype: &str| {
        let out = edgevla(
            &[
                "kv-plan",
                "--layers",
                "80",
                "--kv-heads",
                "8",
                "--head-dim",
                "128",
                "--tokens",
                "131072",
                "--dtype",
                dtype,
                "--json",
            ],
            None,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_else(|e| panic!("{e}"))
    };
    assert_eq!(
        run("bf16"),
        serde_json::json!({"bytes_per_token": 327_680, "total_bytes": 42_949_672_960u64, "scale_bytes": 0})
    );
    // int8: half of bf16 plus one f16 scale per 32 values (10,240 bytes/token).
    assert_eq!(
        run("int8"),
        serde_json::json!({"bytes_per_token": 174_080, "total_bytes": 22_817_013_760u64, "scale_bytes": 1_342_177_280u64})
    );
}

/// `kv-plan --model edge --budget` answers the inverse question, and bad sizes are errors.
#[test]
fn kv_plan_budget_and_errors() {
    let out = edgevla(
        &[
            "kv-plan", "--model", "edge", "--budget", "1572864", "--dtype", "int8", "--json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}"));
    // 1572864 / 816 = 1927 tokens; (1927 − 64 sinks) / 49 = 38 frame-steps.
    assert_eq!(
        v,
        serde_json::json!({"bytes_per_token": 816, "tokens": 1927, "frames": 38})
    );
    let bad = edgevla(
        &[
            "kv-plan",
            "--layers",
            "2",
            "--kv-heads",
            "2",
            "--head-dim",
            "48",
            "--tokens",
            "5",
            "--dtype",
            "int8",
        ],
        None,
    );
    assert!(!bad.status.success());
    assert!(text(&bad.stderr).contains("head_dim"));
    let unknown = edgevla(
        &[
            "kv-plan",
            "--layers",
            "2",
            "--kv-heads",
            "2",
            "--head-dim",
            "32",
            "--tokens",
            "5",
            "--dtype",
            "int4",
        ],
        None,
    );
    assert!(!unknown.status.success());
    assert!(!text(&unknown.stderr).contains("panicked"));
}

/// `edgevla import-weights`: export → import (keeping the rest from the base checkpoint) →
/// export gives the same safetensors bytes; a config key edgevla does not implement is an error
/// naming it, and nothing is written.
#[test]
fn import_weights_round_trips_and_names_bad_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let ok = |out: &Output| {
        assert!(
            out.status.success(),
            "{}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    };
    ok(&edgevla(
        &[
            "export",
            "--model",
            "edge",
            "--seed",
            "3",
            "--out",
            &path("hf"),
        ],
        None,
    ));
    ok(&edgevla(
        &[
            "export",
            "--model",
            "edge",
            "--seed",
            "4",
            "--out",
            &path("hf-other"),
        ],
        None,
    ));
    // Base: another model (seed 4) saved as a checkpoint by importing its own export.
    ok(&edgevla(
        &[
            "import-weights",
            "--hf",
            &path("hf-other"),
            "--out",
            &path("base"),
        ],
        None,
    ));
    let imported = edgevla(
        &[
            "import-weights",
            "--hf",
            &path("hf"),
            "--base",
            &path("base"),
            "--out",
            &path("ckpt"),
        ],
        None,
    );
    ok(&imported);
    assert!(text(&imported.stdout).contains("instruction embedding: from the file"));
    // The checkpoint says how its images are preprocessed (the trainer's 64x64, 16-pixel
    // patches, which fit the edge model).
    let preprocess: toml::Value = toml::from_str(
        &std::fs::read_to_string(dir.path().join("ckpt/preprocess.toml")).expect("preprocess.toml"),
    )
    .expect("TOML");
    assert_eq!(preprocess["patch_size"].as_integer(), Some(16));
    ok(&edgevla(
        &[
            "export",
            "--model",
            &path("ckpt/config.toml"),
            "--checkpoint",
            &path("ckpt"),
            "--out",
            &path("hf2"),
        ],
        None,
    ));
    let a = std::fs::read(dir.path().join("hf/model.safetensors")).expect("read");
    let b = std::fs::read(dir.path().join("hf2/model.safetensors")).expect("read");
    assert!(a == b, "export → import → export changed the weights");
    // An architecture edgevla lacks.
    let config = dir.path().join("hf/config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).expect("config")).expect("json");
    json["mlp_bias"] = serde_json::json!(true);
    std::fs::write(&config, json.to_string()).expect("write");
    let bad = edgevla(
        &["import-weights", "--hf", &path("hf"), "--out", &path("bad")],
        None,
    );
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("mlp_bias"),
        "{}",
        text(&bad.stderr)
    );
    assert!(!dir.path().join("bad").exists());
}

/// A checkpoint named by a relative path that is not below the working directory is looked for
/// in `EDGEVLA_HOME`: `eval --model models/x` run from elsewhere loads `$EDGEVLA_HOME/models/x`
/// (here a checkpoint with corrupt weights, so the error names the folder it found).
#[test]
fn relative_checkpoints_are_found_in_edgevla_home() {
    let home = tempfile::tempdir().expect("tempdir");
    let cwd = tempfile::tempdir().expect("tempdir");
    let ckpt = home.path().join("models/x");
    std::fs::create_dir_all(&ckpt).expect("mkdir");
    std::fs::write(
        ckpt.join("config.toml"),
        include_str!("../configs/model/edge.toml"),
    )
    .expect("config");
    std::fs::write(ckpt.join("weights.mpk"), b"not weights").expect("weights");
    let run = |home: Option<&std::path::Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgevla"));
        cmd.args(["eval", "--model", "models/x", "--quick", "--out"])
            .arg(cwd.path().join("out"))
            .current_dir(cwd.path());
        if let Some(h) = home {
            cmd.env("EDGEVLA_HOME", h);
        } else {
            cmd.env_remove("EDGEVLA_HOME");
        }
        cmd.output().expect("run edgevla")
    };
    let found = run(Some(home.path()));
    assert!(!found.status.success());
    let err = text(&found.stderr);
    assert!(err.contains(&ckpt.display().to_string()), "{err}");
    let missing = run(None);
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("no checkpoint there"),
        "{}",
        text(&missing.stderr)
    );
}

/// `edgevla certs` writes a CA and the default roles (keys owner-only), refuses to overwrite
/// them, adds a role with --reuse-ca, and every shipped zenoh profile (configs/zenoh/) loads
/// with those certificates: the TOML ones through edgevla's session config (TLS files checked,
/// access control rules cross-checked), the router's through zenoh's own config parser.
#[test]
fn certs_and_every_shipped_zenoh_profile_load() {
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let certs = tmp.path().join("certs");
    let certs_arg = certs.to_str().unwrap_or_else(|| panic!("utf-8 path"));
    let out = edgevla(&["certs", "--out", certs_arg], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for role in ["router", "robot", "driver", "sim", "operator", "observer"] {
        assert!(text(&out.stdout).contains(&format!("CN={role}")));
        for ext in ["pem", "key"] {
            assert!(
                certs.join(format!("{role}.{ext}")).is_file(),
                "{role}.{ext}"
            );
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.join("robot.key"))
            .unwrap_or_else(|e| panic!("{e}"))
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o077,
            0,
            "a private key is readable by others: {mode:o}"
        );
    }
    let again = edgevla(&["certs", "--out", certs_arg, "--name", "robot"], None);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("never overwritten"),
        "{}",
        text(&again.stderr)
    );
    let more = edgevla(
        &[
            "certs",
            "--out",
            certs_arg,
            "--reuse-ca",
            "--name",
            "logger",
        ],
        None,
    );
    assert!(more.status.success(), "{}", text(&more.stderr));
    assert!(certs.join("logger.pem").is_file());
    let bad = edgevla(&["certs", "--out", certs_arg, "--name", "../x"], None);
    assert!(!bad.status.success() && text(&bad.stderr).contains("--name"));

    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs/zenoh");
    let mut seen = 0;
    for entry in std::fs::read_dir(&shipped).unwrap_or_else(|e| panic!("{e}")) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let copy = tmp.path().join(&name);
        std::fs::copy(&path, &copy).unwrap_or_else(|e| panic!("copy {name}: {e}"));
        if name.ends_with(".toml") {
            let cfg = edgevla::transport_cmd::ZenohArgs {
                zenoh_config: Some(copy),
                mode: None,
                listen: vec![],
                connect: vec![],
                multicast_scouting: false,
            }
            .session_config()
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let tls = cfg.tls.as_ref().unwrap_or_else(|| panic!("{name}: no TLS"));
            assert!(tls.mutual && tls.certificate.starts_with(&certs), "{name}");
            cfg.to_zenoh()
                .unwrap_or_else(|e| panic!("{name}: zenoh refuses it: {e}"));
        } else {
            zenoh::Config::from_file(&copy).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        seen += 1;
    }
    assert_eq!(
        seen, 5,
        "the shipped profiles: robot, driver, sim, operator, router"
    );
}

/// `edgevla bench soak` (short): one lock-step episode through the node with eviction at every
/// step; RSS flat after warm-up and the cache never over budget (the verdicts the full 100,000-step
/// run reports in the README), a sample per 1,000 steps.
#[test]
fn bench_soak_short_run_stays_flat_and_within_budget() {
    let out = edgevla(
        &["bench", "soak", "--steps", "3000", "--json", "--quiet"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("JSON: {e}"));
    assert_eq!(report["steps"], 3000);
    assert_eq!(report["samples"].as_array().map(Vec::len), Some(3));
    assert_eq!(report["over_budget_steps"], 0);
    assert_eq!(report["within_budget"], true);
    assert_eq!(report["rss_flat"], true, "{report}");
    let evicted = report["frames_evicted"].as_u64().unwrap_or(0);
    assert!(evicted >= 2990, "evicted {evicted}: not every step evicted");
    let budget = report["budget_bytes"].as_u64().unwrap_or(0);
    let max = report["cache_max_bytes"].as_u64().unwrap_or(u64::MAX);
    assert!(budget == 18_000 && max <= budget, "{max} of {budget}");
    let too_short = edgevla(&["bench", "soak", "--steps", "10"], None);
    assert!(!too_short.status.success());
    assert!(text(&too_short.stderr).contains("at least 2000"));
}

/// Links `from` to `to` (a copy where a hard link cannot be made, e.g. across filesystems).
fn link_or_copy(from: &std::path::Path, to: &std::path::Path) {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", from.display(), to.display()));
    }
}

/// An installed binary (`<prefix>/bin/edgevla` with `<prefix>/models/edge-long-xl`) run from an
/// unrelated directory, without `EDGEVLA_HOME`, runs the shipped checkpoint found beside it, and
/// its report says so.
#[test]
fn installed_demo_finds_the_shipped_model_from_any_directory() {
    let prefix = tempfile::tempdir().expect("tempdir");
    let cwd = tempfile::tempdir().expect("tempdir");
    let bin = prefix.path().join("bin");
    let models = prefix.path().join("models/edge-long-xl");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    std::fs::create_dir_all(&models).expect("mkdir models");
    let exe = bin.join("edgevla");
    link_or_copy(std::path::Path::new(env!("CARGO_BIN_EXE_edgevla")), &exe);
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/edge-long-xl");
    for file in ["config.toml", "weights.mpk", "task.toml", "preprocess.toml"] {
        link_or_copy(&shipped.join(file), &models.join(file));
    }
    let out = Command::new(&exe)
        // The 128-step task of its training family keeps this short (the default is 650 steps).
        .args([
            "demo",
            "--task",
            "memory-long-train",
            "--episodes",
            "1",
            "--json",
            "--quiet",
        ])
        .current_dir(cwd.path())
        .env_remove("EDGEVLA_HOME")
        .output()
        .expect("run the installed edgevla");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let model = report["model"].as_str().expect("model line");
    assert!(
        model.contains(&models.display().to_string()) && model.contains("beside the executable"),
        "{model}"
    );
    assert_eq!(report["sim"]["episodes"].as_array().map(Vec::len), Some(1));
}

/// A node config whose `checkpoint` is found nowhere is an error that says where it looked and
/// what to pass; `--untrained` runs a random init instead and the report says UNTRAINED.
#[test]
fn a_missing_configured_checkpoint_is_an_error_unless_untrained_is_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        "robot_id = \"edge\"\nmodel = \"edge\"\ncheckpoint = \"models/no-such-model\"\n",
    )
    .expect("write node config");
    let config = config.to_str().expect("utf-8 path");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "demo",
            "--config",
            config,
            "--task",
            "memory-short",
            "--episodes",
            "1",
            "--json",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        Command::new(env!("CARGO_BIN_EXE_edgevla"))
            .args(&args)
            .current_dir(dir.path())
            .env_remove("EDGEVLA_HOME")
            .output()
            .expect("run edgevla")
    };
    let missing = run(&[]);
    assert!(!missing.status.success());
    let err = text(&missing.stderr);
    assert!(
        err.contains("models/no-such-model") && err.contains("--untrained"),
        "{err}"
    );
    let untrained = run(&["--untrained"]);
    assert!(untrained.status.success(), "{}", text(&untrained.stderr));
    let report: serde_json::Value = serde_json::from_slice(&untrained.stdout).expect("JSON report");
    let model = report["model"].as_str().expect("model line");
    assert!(
        model.contains("UNTRAINED") && model.contains("--untrained"),
        "{model}"
    );
    let both = run(&["--untrained", "--model", "x"]);
    assert!(!both.status.success(), "--model and --untrained together");
}
