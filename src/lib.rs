//! The `edgevla` binary's library half: command-line definitions ([`cli`]) and the commands
//! they run. Each command module turns parsed arguments into calls into the workspace crates
//! and prints the result; nothing here is numeric code of its own.

mod bench_cmd;
mod certs_cmd;
pub mod cli;
mod device;
mod eval_cmd;
pub mod import_cmd;
mod model_cmd;
mod node_cmd;
mod progress;
mod ring_cmd;
mod rope_cmd;
mod train_cmd;
pub mod transport_cmd;

use anyhow::Result;
use tracing_subscriber::EnvFilter;

/// Runs one parsed command line.
///
/// # Errors
/// Whatever the command reports; `main` prints the chain and exits non-zero.
pub fn run(cli: cli::Cli) -> Result<()> {
    init_logging(&cli.log);
    match cli.command {
        cli::Command::Rope(args) => rope_cmd::run(&args, &mut std::io::stdout().lock()),
        cli::Command::KvPlan(args) => model_cmd::kv_plan(&args, &mut std::io::stdout().lock()),
        cli::Command::Export(args) => model_cmd::export(&args, &mut std::io::stdout().lock()),
        cli::Command::ImportWeights(args) => {
            model_cmd::import_weights(&args, &mut std::io::stdout().lock())
        }
        cli::Command::Train(args) => train_cmd::train(&args, &mut std::io::stdout().lock()),
        cli::Command::Eval(args) => eval_cmd::eval(&args, &mut std::io::stdout().lock()),
        cli::Command::Ring(args) => ring_cmd::ring(&args, &mut std::io::stdout().lock()),
        cli::Command::Bench(args) => bench_cmd::bench(&args, &mut std::io::stdout().lock()),
        cli::Command::Record(args) => transport_cmd::record(&args, &mut std::io::stdout().lock()),
        cli::Command::Replay(args) => transport_cmd::replay(&args, &mut std::io::stdout().lock()),
        cli::Command::Import(args) => import_cmd::run(&args, &mut std::io::stdout().lock()),
        cli::Command::Node(args) => node_cmd::node(&args, &mut std::io::stdout().lock()),
        cli::Command::Sim(args) => node_cmd::sim(&args, &mut std::io::stdout().lock()),
        cli::Command::Demo(args) => node_cmd::demo(&args, &mut std::io::stdout().lock()),
        cli::Command::Certs(args) => certs_cmd::certs(&args, &mut std::io::stdout().lock()),
    }
}

/// Logs go to stderr (stdout carries command output); `RUST_LOG` overrides `--log`.
fn init_logging(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("warn"));
    // A second init (tests calling `run` twice) is harmless; ignore it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
