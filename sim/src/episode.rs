//! The recorded data: one frame-step ([`Step`]) and a whole expert episode ([`Episode`]).

use std::ops::Range;

use vision::{Image, PixelFormat, PreprocessConfig, Preprocessor};

use crate::render::Rgb;
use crate::{Decoy, PROPRIO_DIM, Result, Sim, TaskConfig, success};

/// One frame-step of an episode.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Time of the step, ns from the episode start (`t * period`).
    pub stamp_ns: u64,
    /// Image width, pixels.
    pub width: u32,
    /// Image height, pixels.
    pub height: u32,
    /// One RGB8 image per camera (rig order), `width * height * 3`, row-major.
    pub images: Vec<Vec<u8>>,
    /// Per camera (rig order): whether it delivered its frame this step (`false` during a
    /// camera dropout, when its image is not to be used).
    pub camera_present: Vec<bool>,
    /// `[q1, q2, dq1, dq2, ee_x, ee_y, go, t / episode_steps]` (see the module docs).
    pub proprio: [f32; PROPRIO_DIM],
    /// Expert chunk, `horizon * ACTION_DIM`, action-major: `[dq1, dq2, grip, done]` per action.
    pub expert_action: Vec<f32>,
}

impl Step {
    /// The step's images as model input: `[n_cams, n_patches, patch_dim]` f32, through
    /// `vision`'s preprocessor (crop, resize, normalize, patchify).
    ///
    /// # Errors
    /// [`Error::Vision`](crate::Error::Vision) for an invalid `config` or an image the
    /// preprocessor rejects.
    pub fn patches(&self, config: &PreprocessConfig) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        self.append_patches(&mut Preprocessor::new(config.clone())?, &mut out)?;
        Ok(out)
    }

    /// Appends [`patches`](Self::patches) to `out` with an existing preprocessor (episodes
    /// reuse one instead of building one per step).
    ///
    /// # Errors
    /// [`Error::Vision`](crate::Error::Vision) for an image the preprocessor rejects.
    pub fn append_patches(&self, pre: &mut Preprocessor, out: &mut Vec<f32>) -> Result<()> {
        let per = pre.output_len();
        for img in &self.images {
            let image = Image::from_raw(self.width, self.height, PixelFormat::Rgb8, img.clone())?;
            let at = out.len();
            out.resize(at + per, 0.0);
            pre.process(&image, &mut out[at..])?;
        }
        Ok(())
    }
}

/// A generated episode: the expert's run through the [`Sim`].
#[derive(Clone, Debug, PartialEq)]
pub struct Episode {
    /// The seed it was generated from.
    pub seed: u64,
    /// Natural-language instruction (names the cue color).
    pub instruction: String,
    /// Frame-steps, `steps[t]` at `t * period`.
    pub steps: Vec<Step>,
    /// Target pad index (`0..n_targets`).
    pub target: usize,
    /// Target pad centre on the table, metres.
    pub target_xy: [f32; 2],
    /// Steps during which the cue is lit.
    pub cue_steps: Range<usize>,
    /// The camera that sees the cue with the most pixels.
    pub cue_camera: usize,
    /// The cue's RGB8 color.
    pub cue_color: Rgb,
    /// First step of the go phase.
    pub go_step: usize,
    /// Decoy flashes.
    pub decoys: Vec<Decoy>,
    /// Success radius, metres.
    pub success_tolerance: f32,
}

impl Episode {
    /// The expert episode for `seed`.
    ///
    /// # Errors
    /// As [`Task::new`](crate::Task::new).
    pub fn generate(config: &TaskConfig, seed: u64) -> Result<Self> {
        Sim::new(config, seed)?.run_expert()
    }

    /// A needle-in-a-haystack episode: `history` steps before the go step, the cue starting at
    /// fraction `depth` of them (`round(depth * (history - cue_steps))`, kept before the go
    /// step), decoys elsewhere in the history, then `reach_steps` go-phase steps.
    ///
    /// # Errors
    /// As [`Task::new`](crate::Task::new); [`Error::Input`](crate::Error::Input) for `depth`
    /// outside `[0, 1]` or `history` below `cue_steps + 1`.
    pub fn needle(config: &TaskConfig, seed: u64, depth: f64, history: usize) -> Result<Self> {
        Sim::needle(config, seed, depth, history)?.run_expert()
    }

    /// Whether `ee_xy` counts as reaching this episode's target.
    pub fn success(&self, ee_xy: [f32; 2]) -> bool {
        success(ee_xy, self.target_xy, self.success_tolerance)
    }
}
