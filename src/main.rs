//! The `edgevla` command line. Parsing lives in [`edgevla::cli`]; this file only calls `run`.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: CPU training allocates and frees tensors of tens of MB
/// every operation, which glibc hands back to the kernel (munmap) and faults in again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
