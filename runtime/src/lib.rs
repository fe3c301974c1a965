//! edgevla runtime: the model-side numerics, generic over a burn [`Backend`](burn::tensor::backend::Backend).
//!
//! Layout:
//! - [`rope`]: rotary position embeddings with HuggingFace's scaling methods (default, linear,
//!   dynamic NTK, YaRN, llama3, LongRoPE) and their application at arbitrary positions.
//! - [`error`]: the crate's error type.
//!
//! No zenoh and no file or network IO here (checkpoint load/save excepted).

pub mod error;
pub mod rope;

pub use error::{Error, Result};
