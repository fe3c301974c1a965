//! The `edgevla` command line. Parsing lives in [`edgevla::cli`]; this file only calls `run`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = edgevla::cli::Cli::parse();
    match edgevla::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
