//! edgevla runtime: the model-side numerics, generic over a burn [`Backend`](burn::tensor::backend::Backend).
//!
//! Layout:
//! - [`rope`]: rotary position embeddings with HuggingFace's scaling methods (default, linear,
//!   dynamic NTK, YaRN, llama3, LongRoPE) and their application at arbitrary positions.
//! - [`model`]: the streaming VLA model (tokenizer, Llama-style backbone, action head, the
//!   optional memory bank).
//! - [`flash`]: memory-efficient attention for training (blockwise forward with log-sum-exp,
//!   recomputing backward; a custom autodiff operation).
//! - [`ring`]: ring attention kernels (block attention with log-sum-exp, exact merge, zigzag
//!   sharding, the causal ring schedule).
//! - [`attention`]: the CPU attention kernel over the quantized cache (decoded block by block).
//! - [`gemm`]: checked host matrix products (the `gemm` crate's kernels behind a safe API).
//! - [`bench`]: set-up shared by the step benchmarks (pre-filled streams, step cost).
//! - [`checkpoint`]: checkpoint save/load and HuggingFace safetensors export.
//! - [`hf_import`]: a HuggingFace Llama backbone (config.json + model.safetensors) into a model.
//! - [`kv`]: the bounded, quantized KV cache and its byte arithmetic.
//! - [`error`]: the crate's error type.
//!
//! No zenoh and no file or network IO here (checkpoint load/save and the HuggingFace import
//! excepted).

pub mod attention;
pub mod bench;
pub mod checkpoint;
pub mod error;
pub mod flash;
pub mod gemm;
pub mod hf_import;
pub mod host;
pub mod kv;
pub mod model;
pub mod ring;
pub mod rope;

#[cfg(test)]
mod test_util;

pub use error::{Error, Result};
