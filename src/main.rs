//! The `edgevla` command line. Parsing lives in [`edgevla::cli`]; this file only calls `run`.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: CPU training allocates and frees tensors of tens of MB
/// every operation, which glibc hands back to the kernel (munmap) and faults in again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_decommits` (`mimalloc.h`, v2 and v3: the sixth option; the Rust
/// bindings name no constant for it).
const MI_OPTION_PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;

fn main() -> ExitCode {
    // Memory that mimalloc purges is reset (MADV_FREE: the kernel takes the pages back only
    // under memory pressure) instead of decommitted (MADV_DONTNEED: every reuse faults in and
    // zeroes fresh pages). Measured on the 2-core machine, 2 iterations of `edgevla train
    // --config edge-memory-short`: 100-107 s wall with 34-39 s in the kernel (418K page faults;
    // `perf`: 28% of the samples zeroing pages) before, 80.6 s with 12.2 s (10K faults) after;
    // peak RSS 3.5 → 4.3 GB (freed pages stay counted until the kernel reclaims them).
    // SAFETY: `mi_option_set` stores an integer option; it takes no pointers and may be called
    // at any time (mimalloc reads this option at each purge).
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DECOMMITS, 0);
    }
    let cli = edgevla::cli::Cli::parse();
    match edgevla::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
