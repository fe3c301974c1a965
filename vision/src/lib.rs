//! edgevla vision: camera frames in, normalized patch arrays out. No zenoh and no burn: the
//! output is a plain `&[f32]` with its shape, from which the runtime builds its tensor.
//!
//! The path of one frame-step:
//! 1. [`StepAssembler`] (`sync`) collects timestamped frames per camera and emits one [`Step`]
//!    per control tick: per camera the newest frame within tolerance of the tick, or a held /
//!    missing slot by [`MissingPolicy`]; late, duplicate and out-of-order frames are dropped and
//!    counted. Time comes only from frame stamps and the time each `poll` is given.
//! 2. [`Decoder`] (`decode`) turns JPEG, PNG or raw ROS buffers (`rgb8`, `bgr8`, `rgba8`,
//!    `bgra8`, `mono8`, with row padding) into an 8-bit [`Image`], within [`DecodeLimits`].
//! 3. [`Preprocessor`] (`preprocess`) center-crops, resizes (antialiased bilinear), normalizes
//!    per channel and cuts the image into `[n_patches, patch_dim]` f32 in one pass.
//! 4. [`VisionPipeline`] (`pipeline`) runs 2–3 for every camera of a step into one reusable
//!    [`StepPatches`] buffer `[n_cams, n_patches, patch_dim]` plus a missing mask.
//!
//! The cameras themselves are described by a [`Rig`] (`rig`, TOML files under
//! `configs/rigs/`): names, topics, resolution, rate, pinhole intrinsics and
//! `nalgebra::Isometry3` extrinsics; a camera's position in the file is its stable index.
//!
//! Layout: `error.rs` (the crate's one error enum), `decode.rs`, `preprocess.rs`, `rig.rs`,
//! `sync.rs`, `pipeline.rs`; `tests/real_data.rs` runs on the recordings in `../shared/data`;
//! `benches/pipeline.rs` times decode + resize + patchify; `fuzz/` holds the decode fuzz target.

mod decode;
mod error;
mod pipeline;
mod preprocess;
mod rig;
mod sync;

pub use decode::{DecodeLimits, Decoder, Encoding, FrameRef, Image, PixelFormat, decode};
pub use error::VisionError;
pub use pipeline::{AsFrame, EncodedFrame, StepPatches, VisionPipeline};
pub use preprocess::{Crop, PreprocessConfig, Preprocessor};
pub use rig::{Camera, CameraConfig, ExtrinsicsConfig, Intrinsics, Rig, RigConfig};
pub use sync::{
    Admission, CameraStats, MissingPolicy, Nanos, Slot, Step, StepAssembler, SyncConfig, SyncStats,
};
