//! The per-step pipeline: decode → preprocess for every camera of a step, into one reusable
//! `[n_cams, n_patches, patch_dim]` f32 buffer plus a per-camera missing mask.

use std::sync::Arc;

use crate::{
    DecodeLimits, Decoder, Encoding, FrameRef, Image, Nanos, PreprocessConfig, Preprocessor, Rig,
    Slot, Step, VisionError,
};

/// An encoded frame that owns its bytes (cheap to clone: the bytes are shared).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EncodedFrame {
    /// How `data` is encoded.
    pub encoding: Encoding,
    /// Width in pixels (raw encodings).
    pub width: u32,
    /// Height in pixels (raw encodings).
    pub height: u32,
    /// Bytes per row (raw encodings).
    pub step: u32,
    /// The bytes.
    pub data: Arc<[u8]>,
}

impl EncodedFrame {
    /// A compressed frame.
    pub fn compressed(encoding: Encoding, data: impl Into<Arc<[u8]>>) -> Self {
        Self {
            encoding,
            width: 0,
            height: 0,
            step: 0,
            data: data.into(),
        }
    }
}

/// Anything that can lend a [`FrameRef`] (what [`VisionPipeline::process_step`] takes per slot).
pub trait AsFrame {
    /// The frame's bytes and layout.
    fn as_frame(&self) -> FrameRef<'_>;
}

impl AsFrame for EncodedFrame {
    fn as_frame(&self) -> FrameRef<'_> {
        FrameRef::raw(
            self.encoding,
            self.width,
            self.height,
            self.step,
            &self.data,
        )
    }
}

impl AsFrame for FrameRef<'_> {
    fn as_frame(&self) -> FrameRef<'_> {
        *self
    }
}

impl<T: AsFrame + ?Sized> AsFrame for Arc<T> {
    fn as_frame(&self) -> FrameRef<'_> {
        (**self).as_frame()
    }
}

/// One step's model input: patches `[n_cams, n_patches, patch_dim]` (row-major f32) and the
/// missing mask `[n_cams]` (true = no frame; its patches are zero).
#[derive(Clone, Debug, PartialEq)]
pub struct StepPatches {
    n_cams: usize,
    n_patches: usize,
    patch_dim: usize,
    data: Vec<f32>,
    missing: Vec<bool>,
}

impl StepPatches {
    /// A zeroed buffer with every camera missing.
    pub fn new(n_cams: usize, config: &PreprocessConfig) -> Self {
        let (n_patches, patch_dim) = (config.n_patches(), config.patch_dim());
        Self {
            n_cams,
            n_patches,
            patch_dim,
            data: vec![0.0; n_cams * n_patches * patch_dim],
            missing: vec![true; n_cams],
        }
    }

    /// `[n_cams, n_patches, patch_dim]`.
    pub fn shape(&self) -> [usize; 3] {
        [self.n_cams, self.n_patches, self.patch_dim]
    }

    /// The patches, row-major in [`StepPatches::shape`] order (hand them to the tensor builder).
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The missing mask, one flag per camera.
    pub fn missing(&self) -> &[bool] {
        &self.missing
    }

    /// Camera `cam`'s patches, `[n_patches, patch_dim]`.
    pub fn camera(&self, cam: usize) -> Option<&[f32]> {
        let len = self.n_patches * self.patch_dim;
        self.data.get(cam * len..(cam + 1) * len)
    }

    fn camera_mut(&mut self, cam: usize) -> Option<&mut [f32]> {
        let len = self.n_patches * self.patch_dim;
        self.data.get_mut(cam * len..(cam + 1) * len)
    }
}

/// Decoders, decoded-image buffers and preprocessors for every camera, plus the output buffer;
/// nothing is allocated per step once frame sizes are stable.
#[derive(Debug)]
pub struct VisionPipeline {
    decoders: Vec<Decoder>,
    images: Vec<Image>,
    preprocessors: Vec<Preprocessor>,
    /// Stamp of the frame whose patches each camera's slot holds (to skip re-processing a held
    /// frame).
    current: Vec<Option<Nanos>>,
    out: StepPatches,
}

impl VisionPipeline {
    /// A pipeline for `n_cams` cameras.
    ///
    /// # Errors
    /// [`VisionError::Config`] when `preprocess` or `limits` is invalid.
    pub fn new(
        n_cams: usize,
        limits: &DecodeLimits,
        preprocess: &PreprocessConfig,
    ) -> Result<Self, VisionError> {
        limits.validate("decode")?;
        let pre = Preprocessor::new(preprocess.clone())?;
        Ok(Self {
            decoders: (0..n_cams).map(|_| Decoder::new(limits.clone())).collect(),
            images: vec![Image::default(); n_cams],
            preprocessors: vec![pre; n_cams],
            current: vec![None; n_cams],
            out: StepPatches::new(n_cams, preprocess),
        })
    }

    /// A pipeline for every camera of `rig`, with the rig's decode limits.
    ///
    /// # Errors
    /// As [`VisionPipeline::new`].
    pub fn for_rig(rig: &Rig, preprocess: &PreprocessConfig) -> Result<Self, VisionError> {
        Self::new(rig.n_cams(), &rig.decode, preprocess)
    }

    /// The current output.
    pub fn patches(&self) -> &StepPatches {
        &self.out
    }

    /// Decodes and preprocesses camera `cam`'s frame into its slot of the output. `stamp`
    /// identifies the frame: the same stamp as the slot already holds is not processed again.
    ///
    /// # Errors
    /// [`VisionError::CameraIndex`] for a camera outside the pipeline; any decode error. After a
    /// decode error the camera is marked missing.
    pub fn process_camera(
        &mut self,
        cam: usize,
        stamp: Option<Nanos>,
        frame: &FrameRef<'_>,
    ) -> Result<(), VisionError> {
        let n_cams = self.decoders.len();
        if cam >= n_cams {
            return Err(VisionError::CameraIndex { index: cam, n_cams });
        }
        if stamp.is_some() && self.current[cam] == stamp && !self.out.missing[cam] {
            return Ok(());
        }
        let result = self.decoders[cam]
            .decode_into(frame, &mut self.images[cam])
            .and_then(|()| {
                let out = self
                    .out
                    .camera_mut(cam)
                    .ok_or(VisionError::CameraIndex { index: cam, n_cams })?;
                self.preprocessors[cam].process(&self.images[cam], out)
            });
        match result {
            Ok(()) => {
                self.out.missing[cam] = false;
                self.current[cam] = stamp;
                Ok(())
            }
            Err(e) => {
                self.mark_missing(cam)?;
                Err(e)
            }
        }
    }

    /// Marks camera `cam` missing and zeroes its patches.
    ///
    /// # Errors
    /// [`VisionError::CameraIndex`] for a camera outside the pipeline.
    pub fn mark_missing(&mut self, cam: usize) -> Result<(), VisionError> {
        let n_cams = self.decoders.len();
        let slot = self
            .out
            .camera_mut(cam)
            .ok_or(VisionError::CameraIndex { index: cam, n_cams })?;
        slot.fill(0.0);
        self.out.missing[cam] = true;
        self.current[cam] = None;
        Ok(())
    }

    /// Processes every slot of `step` (missing slots are zeroed and masked; a held frame is not
    /// decoded again). A camera whose frame fails to decode is marked missing and its error is
    /// returned in the list, by camera index; the other cameras are still processed.
    pub fn process_step<T: AsFrame>(&mut self, step: &Step<T>) -> Vec<(usize, VisionError)> {
        let mut errors = Vec::new();
        for (cam, slot) in step.slots.iter().enumerate() {
            let result = match slot {
                Slot::Fresh { stamp_ns, frame }
                | Slot::Held {
                    stamp_ns, frame, ..
                } => self.process_camera(cam, Some(*stamp_ns), &frame.as_frame()),
                Slot::Missing => self.mark_missing(cam),
            };
            if let Err(e) = result {
                errors.push((cam, e));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_with_fresh_held_missing_and_broken_frames() {
        let cfg = PreprocessConfig {
            width: 16,
            height: 16,
            patch_size: 8,
            ..PreprocessConfig::default()
        };
        let mut p = VisionPipeline::new(4, &DecodeLimits::default(), &cfg).unwrap();
        assert_eq!(p.patches().shape(), [4, 4, 192]);
        assert_eq!(p.patches().missing(), [true; 4]);
        // A uniform 32x32 bgr8 frame of (B, G, R) = (0, 255, 51): normalized R = 51/127.5 - 1.
        let px: Vec<u8> = (0..32 * 32).flat_map(|_| [0u8, 255, 51]).collect();
        let frame = EncodedFrame {
            encoding: Encoding::Bgr8,
            width: 32,
            height: 32,
            step: 96,
            data: px.into(),
        };
        let broken = EncodedFrame::compressed(Encoding::Jpeg, vec![0xFF, 0xD8, 0xFF]);
        let step = Step {
            index: 0,
            tick_ns: 100,
            slots: vec![
                Slot::Fresh {
                    stamp_ns: 100,
                    frame: frame.clone(),
                },
                Slot::Held {
                    stamp_ns: 50,
                    age_ns: 50,
                    frame: frame.clone(),
                },
                Slot::Missing,
                Slot::Fresh {
                    stamp_ns: 90,
                    frame: broken,
                },
            ],
        };
        let errors = p.process_step(&step);
        assert_eq!(errors.len(), 1);
        assert!(matches!(errors[0], (3, VisionError::Jpeg(_))));
        let out = p.patches();
        assert_eq!(out.missing(), [false, false, true, true]);
        let want = [51.0 / 127.5 - 1.0, 1.0, -1.0];
        // Uniform input: every value equals its channel's normalized level (tolerance 1e-5).
        for (i, v) in out.camera(0).unwrap().iter().enumerate() {
            assert!((v - want[i % 3]).abs() < 1e-5, "value {i}: {v}");
        }
        assert_eq!(out.camera(0), out.camera(1));
        assert!(out.camera(2).unwrap().iter().all(|&v| v == 0.0));
        assert!(out.camera(3).unwrap().iter().all(|&v| v == 0.0));
        assert!(p.process_camera(4, None, &frame.as_frame()).is_err());
        assert!(p.mark_missing(9).is_err());
    }
}
