//! Evaluation of policies on the task simulator (the `sim` crate): [`closed_loop`] runs a
//! model through whole episodes as on the robot and counts successes; [`needle`] is the
//! long-context needle-in-a-haystack sweep (history length × cue depth × RoPE method × KV
//! format × budget) with its reports and heatmaps. Nothing here trains: the trainer uses
//! [`closed_loop`] after a run, `edgevla eval` runs the sweep.

pub mod closed_loop;
pub mod error;
pub mod needle;

pub use error::{Error, Result};
