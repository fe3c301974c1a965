//! Command-line definitions (clap derive). Every subcommand's `--help` carries examples.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// edgevla: the on-robot runtime for vision-language-action policies that act on long
/// multi-camera histories.
#[derive(Debug, Parser)]
#[command(name = "edgevla", version, about, long_about = None)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax); `RUST_LOG` takes precedence.
    #[arg(long, global = true, default_value = "warn")]
    pub log: String,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// edgevla's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print RoPE inverse frequencies and the attention factor for a scaling spec.
    ///
    /// Prints JSON `{"inv_freq": [...], "attention_factor": x}`, or a table with --table.
    /// A spec is one entry of shared/golden/rope_hf.json (JSON or TOML): `head_dim`,
    /// `rope_theta`, `max_position_embeddings`, `rope_parameters`, `seq_len`; other keys are
    /// ignored.
    #[command(after_help = "Examples:
  edgevla rope --preset yarn-8x --table
  edgevla rope --spec configs/rope/pi-4x.toml
  edgevla rope --preset ntk-dynamic-4x --seq-len 8192
  echo '{\"head_dim\":64,\"max_position_embeddings\":4096,\"rope_parameters\":{\"rope_type\":\"linear\",\"factor\":4}}' | edgevla rope --spec -
  edgevla rope --list-presets")]
    Rope(RopeArgs),

    /// KV-cache memory planner: bytes per token and in total, per storage format, and how
    /// many tokens / frame-steps fit a byte budget.
    ///
    /// bytes = 2 · layers · kv_heads · head_dim · tokens · bytes_per_value, plus one f16 scale
    /// per 32 values for int8 (q8_0) and fp8. --json prints exactly
    /// {"bytes_per_token", "total_bytes", "scale_bytes"} (scales included in the totals).
    #[command(after_help = "Examples:
  edgevla kv-plan --layers 80 --kv-heads 8 --head-dim 128 --tokens 131072 --dtype bf16 --json
  edgevla kv-plan --layers 80 --kv-heads 8 --head-dim 128 --tokens 131072
  edgevla kv-plan --model edge --frames 38
  edgevla kv-plan --model configs/model/edge.toml --budget 1572864")]
    KvPlan(crate::model_cmd::KvPlanArgs),

    /// Export the backbone to HuggingFace safetensors + config.json (LlamaModel names).
    ///
    /// Without --checkpoint the model is a seeded random initialization. --parity-tokens N
    /// also writes parity.safetensors for tools/hf_parity.py.
    #[command(after_help = "Examples:
  edgevla export --model edge --out out/hf-edge --parity-tokens 256 --init-std 0.2
  edgevla export --model edge --rope yarn-4x --out out/hf-edge-yarn --parity-tokens 256")]
    Export(crate::model_cmd::ExportArgs),

    /// Import a HuggingFace Llama backbone (config.json + model.safetensors) into a checkpoint.
    ///
    /// The backbone's sizes, RMSNorm epsilon, RoPE and weights come from the folder; the parts
    /// edgevla adds (patch/camera/proprio/readout embeddings, heads) from --base, or a fresh
    /// seeded initialization of --model. Unsupported keys, and tensors of another name, shape
    /// or dtype, are errors naming them.
    #[command(
        name = "import-weights",
        after_help = "Examples:
  edgevla import-weights --hf path/to/llama --out out/ckpt-llama
  edgevla import-weights --hf out/hf-edge --base models/edge-memory --out out/edge-roundtrip"
    )]
    ImportWeights(crate::model_cmd::ImportWeightsArgs),

    /// Train the model on the synthetic multi-camera memory task (CPU, a GPU with a `--features
    /// cuda` build, or several devices with ring attention) and write a checkpoint folder.
    ///
    /// The training config names the model, an optional RoPE preset, the task, the batch size,
    /// the seed, step weights, expert noise and the optimizer (configs/training/). Episodes are
    /// generated from the seed, so a run is reproducible. Every checkpoint keeps the optimizer
    /// state: --stop-after / --time-limit end a run early and --resume continues it; --init
    /// starts a new schedule from a checkpoint's weights.
    #[command(after_help = "Examples:
  edgevla train --config configs/training/edge-memory.toml --iterations 10 --out /tmp/ckpt --quiet
  edgevla train --config edge-memory-short --device cuda:0 --out /tmp/stage1
  edgevla train --config edge-memory-stage2 --device cuda:0 --init /tmp/stage1 --stop-after 664 --out /tmp/stage2
  edgevla train --config edge-memory-short --device cuda:0 --time-limit 430 --out run-a
  edgevla train --config edge-memory-short --device cuda:0 --resume run-a --out run-b
  edgevla train --config edge-memory --devices cuda:0,1,2,3 --out /tmp/ring-ckpt")]
    Train(crate::train_cmd::TrainArgs),

    /// Long-context evaluation: a visual needle-in-a-haystack sweep over episode length (from
    /// the training length up to 16x) and cue depth, closed loop on the task simulator, per
    /// RoPE method (at the factor each length needs), KV cache format and budget.
    ///
    /// Writes cells.csv (every cell with a Wilson 95% interval), results.md (tables) and
    /// heatmap_*.png (length x depth) to --out, and prints the exact command and seed.
    /// --policy oracle / blind check the harness itself (100% / chance).
    #[command(after_help = "Examples:
  edgevla eval --quick --out out/eval-quick   (models/edge-long-xl, task memory-long-train-xl)
  edgevla eval --policy oracle --quick --out out/eval-oracle
  edgevla eval --methods trained --kv-dtypes int8 --budgets model --lengths 640,2560 --recall on,off
  edgevla eval --kv-dtypes f32,int8,fp8 --methods trained --budgets model --lengths 640 --episodes 48
  edgevla eval --model models/edge-memory --task memory-short-needle --methods yarn,pi,none --budgets full
  edgevla eval --device cuda:0 --jobs 8 --out out/eval-h200")]
    Eval(crate::eval_cmd::EvalArgs),

    /// Ring-attention training across devices, measured: the K/V hop bandwidth, the sharded
    /// training forward against one device, and training throughput at N devices with N× the
    /// sequence. Prints markdown tables.
    #[command(after_help = "Examples:
  edgevla ring --devices cpu:2 --model configs/model/edge.toml --steps 4 --iters 1
  edgevla ring --devices cuda:0,1,2,3 --steps 64 --batch 1 --iters 5")]
    Ring(crate::ring_cmd::RingArgs),

    /// Benchmarks: `bench step` times one control step against the cache length, per cache
    /// dtype, on the CPU or a GPU (median, p99, full recompute, hardware floor).
    #[command(after_help = "Examples:
  edgevla bench step --frames 16,64,128,256,512 --dtype f32,int8 --threads 2 --csv out/step-cpu.csv
  edgevla bench step --device cuda:0 --iters 200 --full --csv out/step-h200.csv")]
    Bench(crate::bench_cmd::BenchArgs),

    /// Record zenoh streams into an MCAP file.
    ///
    /// One channel per key with ROS 2 schemas (`ros2msg`, message encoding `cdr`), log time =
    /// arrival, publish time = the message's stamp; zstd chunks finished every --flush-ms, so
    /// a killed recorder leaves a file that still replays. Prints a JSON summary.
    #[command(after_help = "Examples:
  edgevla record --select 'robot/**' --out run.mcap
  edgevla record --select 'robot/r1/cam/*' --out cams.mcap --duration 30
  edgevla record --out run.mcap --listen tcp/127.0.0.1:7447
  edgevla record --out run.mcap --mode client --connect tcp/127.0.0.1:7447")]
    Record(crate::transport_cmd::RecordArgs),

    /// Republish an MCAP recording over zenoh.
    ///
    /// At the original timing (--rate 1.0), scaled (--rate 2), as fast as possible
    /// (--rate max), or stepped (--step: one message per query on the step key, for
    /// deterministic runs). Keys can be remapped. Prints a JSON summary.
    #[command(after_help = "Examples:
  edgevla replay run.mcap
  edgevla replay run.mcap --rate max --remap robot/a=robot/b
  edgevla replay run.mcap --step --connect tcp/127.0.0.1:7447
  z_get -s robot/replay/step      # (any zenoh client) asks for the next message")]
    Replay(crate::transport_cmd::ReplayArgs),

    /// Convert a recorded dataset folder into an MCAP recording plus a matching rig config.
    ///
    /// Reads EuRoC ASL folders (camera PNGs + data.csv + sensor.yaml, IMU CSV) and LeRobot v2.1
    /// episodes (frames + episode.csv + info.json + tasks.jsonl); the layout is detected unless
    /// --format names it. Frames pass through byte for byte (CompressedImage) or decoded
    /// (--images raw); joints, IMU, actions and the instruction become JointState, Imu,
    /// ActionChunk and String messages with the dataset's timestamps as log and publish times.
    /// Prints a JSON summary.
    #[command(after_help = "Examples:
  edgevla import --from ../shared/data/euroc_stereo --out euroc.mcap --rig-out euroc-rig.toml
  edgevla import --from ../shared/data/g1_pick_bottle --out g1.mcap --rig-out g1-rig.toml
  edgevla import --from MH_01_easy/mav0 --format euroc --robot-id mav --out mh01.mcap --quiet
  edgevla replay g1.mcap --rate max")]
    Import(crate::import_cmd::ImportArgs),

    /// The on-robot node: cameras + joints in over zenoh, time-synced frame-steps, the model
    /// over its bounded KV cache, action chunks and a JSON status out. Runs until Ctrl-C, then
    /// prints its final report as JSON.
    ///
    /// Keys: <prefix>/<id>/cam/<name> (CompressedImage or Image), joints (JointState),
    /// instruction (String: starts an episode) in; action (ActionChunk), status (String, JSON)
    /// out. The config (configs/node/) names the rig, the model, the clock and the KV cache.
    #[command(after_help = "Examples:
  edgevla node                                        # shipped config `edge`, CPU
  edgevla node --model models/edge-long-xl --listen tcp/127.0.0.1:7447
  edgevla node --config configs/node/edge.toml --clock joints --connect tcp/127.0.0.1:7447
  edgevla node --device cuda:0 --mode client --connect tcp/10.0.0.2:7447")]
    Node(crate::node_cmd::NodeArgs),

    /// The memory task as a live robot over zenoh: JPEG frames per camera and joint states per
    /// control step, the node's action chunks applied closed loop; one JSON line per episode.
    ///
    /// lock-step waits for the action of step t before publishing step t+1 (deterministic, as
    /// fast as the node); real-time steps every control period and executes action chunks.
    #[command(after_help = "Examples:
  edgevla node --clock joints --listen tcp/127.0.0.1:7447 &
  edgevla sim --connect tcp/127.0.0.1:7447 --episodes 5
  edgevla sim --connect tcp/127.0.0.1:7447 --mode real-time --episodes 2")]
    Sim(crate::node_cmd::SimArgs),

    /// Simulator + node in one process over loopback zenoh: live progress, then a summary
    /// table (success rate, latency per stage, KV cache vs budget, drops, memory).
    ///
    /// Uses models/edge-long-xl (found below the working directory, in $EDGEVLA_HOME, beside the
    /// executable or in the source tree; an error when it is nowhere: --untrained asks for a
    /// random init) on the long-memory task (650-step episodes, the cue 5-60 s before go).
    /// --record writes the run to MCAP; --replay FILE drives a recording through the node
    /// instead (stepped: deterministic) and prints a digest of the action messages.
    #[command(after_help = "Examples:
  edgevla demo
  edgevla demo --episodes 16 --json
  edgevla demo --model models/edge-memory --task memory-short   (the short task)
  edgevla demo --mode real-time --episodes 2
  edgevla demo --episodes 2 --record run.mcap && edgevla demo --replay run.mcap
  edgevla demo --replay real.mcap --rate 1.0 --config my-rig-node.toml")]
    Demo(crate::node_cmd::DemoArgs),

    /// Make a certificate authority and a certificate per role for the secure zenoh profile:
    /// mutual TLS, and access control by certificate common name (configs/zenoh/secure-*.toml,
    /// docs/security.md).
    ///
    /// Writes ca.pem, ca.key (keep it off the robot) and NAME.pem + NAME.key (owner-only) for
    /// every role; never overwrites a file.
    #[command(after_help = "Examples:
  edgevla certs --out /etc/edgevla/certs
  edgevla certs --out certs --name robot,sim --host robot.local,10.0.0.7 --days 90
  edgevla certs --out certs --reuse-ca --name logger
  edgevla node --zenoh-config configs/zenoh/secure-robot.toml")]
    Certs(crate::certs_cmd::CertsArgs),
}

/// Arguments of `edgevla rope`.
#[derive(Debug, Args)]
pub struct RopeArgs {
    /// Spec file, JSON or TOML; `-` reads standard input.
    #[arg(long, value_name = "FILE", conflicts_with = "preset")]
    pub spec: Option<PathBuf>,

    /// A shipped preset from configs/rope/ (by file stem, e.g. yarn-8x).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,

    /// Sequence length for dynamic NTK and LongRoPE (overrides the spec's `seq_len`).
    #[arg(long, value_name = "TOKENS")]
    pub seq_len: Option<usize>,

    /// Print a human-readable table (pair, frequency, wavelength, interpolation weight).
    #[arg(long)]
    pub table: bool,

    /// List the shipped presets and exit.
    #[arg(long, conflicts_with_all = ["spec", "preset"])]
    pub list_presets: bool,
}
