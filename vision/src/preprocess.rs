//! Preprocessing: optional center-crop, antialiased bilinear resize, per-channel mean/std
//! normalization and patchify into `[n_patches, patch_dim]` f32.
//!
//! # The resize
//! `fast_image_resize`'s convolution resize with its bilinear (triangle) filter, whose support
//! widens with the downscale factor so that downscaling averages every source pixel: the
//! definition of PIL's `Image.resize(size, BILINEAR, box=crop)` (and torchvision's
//! `antialias=True`). Output pixel `o` is centred at source `crop0 + (o + 0.5) * scale` with
//! weights `max(0, 1 - |i + 0.5 - centre| / max(scale, 1))` over source pixels `i` of the whole
//! frame (so taps at the crop's edges may read just outside it, as PIL does), normalized to sum
//! to 1. It works in fixed point with an 8-bit intermediate: within about one 8-bit level of
//! the exact value. Chosen by measurement over `image::imageops::resize` (5x slower here) and
//! our own fused f32 separable resize (3x slower: it lacks fast_image_resize's AVX2/NEON
//! kernels); see the README's benchmark table. Normalization is a per-channel lookup table.
//!
//! # Patch layout
//! Patches are taken row-major over the output image (patch `p` = row `p / (width / patch)`,
//! column `p % (width / patch)`); inside a patch the values run `(py, px, channel)`, i.e.
//! `patch_dim` index `(py * patch + px) * 3 + c` (ViT's `(h p1) (w p2) c -> (h w) (p1 p2 c)`).
//! Grayscale sources are replicated to three channels, each normalized with its own mean/std.

use serde::{Deserialize, Serialize};

use fast_image_resize as fr;

use crate::{Image, PixelFormat, VisionError};

/// How the source is fitted to the model's input aspect ratio.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Crop {
    /// Crop the largest centred region with the output's aspect ratio, then resize (no
    /// distortion; the sides are lost).
    #[default]
    Center,
    /// Resize the whole frame (stretches when the aspect ratios differ).
    None,
}

/// Model input geometry and normalization; a TOML table (`[preprocess]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PreprocessConfig {
    /// Model input width in pixels (a multiple of `patch_size`).
    pub width: u32,
    /// Model input height in pixels (a multiple of `patch_size`).
    pub height: u32,
    /// Square patch side in pixels.
    pub patch_size: u32,
    /// Crop mode.
    pub crop: Crop,
    /// Per-channel mean (R, G, B) on the 0..1 scale.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (R, G, B) on the 0..1 scale; positive.
    pub std: [f32; 3],
}

impl Default for PreprocessConfig {
    /// The edge model's default: 64x64 input, 16x16 patches (16 patches of 768 values), values
    /// mapped to [-1, 1] (mean 0.5, std 0.5, as SigLIP).
    fn default() -> Self {
        Self {
            width: 64,
            height: 64,
            patch_size: 16,
            crop: Crop::Center,
            mean: [0.5; 3],
            std: [0.5; 3],
        }
    }
}

impl PreprocessConfig {
    /// Checks the geometry and normalization; `prefix` is the table's key (`preprocess`).
    ///
    /// # Errors
    /// [`VisionError::Config`] naming the first bad key: zero sizes, a size that is not a
    /// multiple of `patch_size`, a non-finite mean, a non-positive or non-finite std.
    pub fn validate(&self, prefix: &str) -> Result<(), VisionError> {
        let key = |k: &str| format!("{prefix}.{k}");
        if self.patch_size == 0 {
            return Err(VisionError::config(key("patch_size"), "must be positive"));
        }
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if v == 0 {
                return Err(VisionError::config(key(name), "must be positive"));
            }
            if v % self.patch_size != 0 {
                return Err(VisionError::config(
                    key(name),
                    format!("{v} is not a multiple of patch_size {}", self.patch_size),
                ));
            }
            if v > 4096 {
                return Err(VisionError::config(key(name), format!("{v} is over 4096")));
            }
        }
        for c in 0..3 {
            if !self.mean[c].is_finite() {
                return Err(VisionError::config(
                    format!("{prefix}.mean[{c}]"),
                    "must be finite",
                ));
            }
            if !(self.std[c].is_finite() && self.std[c] > 0.0) {
                return Err(VisionError::config(
                    format!("{prefix}.std[{c}]"),
                    format!("must be positive and finite (got {})", self.std[c]),
                ));
            }
        }
        Ok(())
    }

    /// Patches per image: `(width / patch_size) * (height / patch_size)`.
    pub fn n_patches(&self) -> usize {
        let p = self.patch_size.max(1) as usize;
        (self.width as usize / p) * (self.height as usize / p)
    }

    /// Values per patch: `patch_size * patch_size * 3`.
    pub fn patch_dim(&self) -> usize {
        let p = self.patch_size as usize;
        p * p * 3
    }

    /// The source region `(x0, y0, w, h)` that is resized, for a `src_w` x `src_h` frame.
    pub fn crop_box(&self, src_w: u32, src_h: u32) -> (u32, u32, u32, u32) {
        match self.crop {
            Crop::None => (0, 0, src_w, src_h),
            Crop::Center => {
                // Compare src_w / src_h with width / height without rounding.
                let (sw, sh) = (u64::from(src_w), u64::from(src_h));
                let (dw, dh) = (u64::from(self.width), u64::from(self.height));
                if sw * dh > sh * dw {
                    let cw = ((sh * dw + dh / 2) / dh).clamp(1, sw) as u32;
                    ((src_w - cw) / 2, 0, cw, src_h)
                } else {
                    let ch = ((sw * dh + dw / 2) / dw).clamp(1, sh) as u32;
                    (0, (src_h - ch) / 2, src_w, ch)
                }
            }
        }
    }
}

/// Turns decoded images into normalized patches; keep one per camera (it reuses the resizer's
/// buffers and its own across frames).
pub struct Preprocessor {
    config: PreprocessConfig,
    resizer: fr::Resizer,
    /// The resized image, `height * width * channels` u8.
    small: Vec<u8>,
    /// `lut[c][v]` = `(v / 255 - mean[c]) / std[c]`.
    lut: Box<[[f32; 256]; 3]>,
}

impl Clone for Preprocessor {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            resizer: fr::Resizer::new(),
            small: self.small.clone(),
            lut: self.lut.clone(),
        }
    }
}

impl std::fmt::Debug for Preprocessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preprocessor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Preprocessor {
    /// A preprocessor for `config`.
    ///
    /// # Errors
    /// As [`PreprocessConfig::validate`] (keys prefixed `preprocess`).
    pub fn new(config: PreprocessConfig) -> Result<Self, VisionError> {
        config.validate("preprocess")?;
        let mut lut = Box::new([[0.0f32; 256]; 3]);
        for (c, table) in lut.iter_mut().enumerate() {
            for (v, slot) in table.iter_mut().enumerate() {
                *slot = ((v as f64 / 255.0 - f64::from(config.mean[c])) / f64::from(config.std[c]))
                    as f32;
            }
        }
        Ok(Self {
            config,
            resizer: fr::Resizer::new(),
            small: Vec::new(),
            lut,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &PreprocessConfig {
        &self.config
    }

    /// Length of the output of [`Preprocessor::process`]: `n_patches * patch_dim`.
    pub fn output_len(&self) -> usize {
        self.config.n_patches() * self.config.patch_dim()
    }

    /// Crops, resizes, normalizes and patchifies `image` into `out`
    /// (`[n_patches, patch_dim]`, row-major).
    ///
    /// # Shapes
    /// `image`: `[height, width, channels]` u8 → `out`: `[n_patches, patch_dim]` f32.
    ///
    /// # Errors
    /// [`VisionError::ZeroSize`] for an empty image; [`VisionError::BufferTooShort`] when
    /// `out.len() != output_len()` or the image's buffer does not match its size;
    /// [`VisionError::Resize`] if the resizer refuses the image.
    pub fn process(&mut self, image: &Image, out: &mut [f32]) -> Result<(), VisionError> {
        let need = self.output_len();
        if out.len() != need {
            return Err(VisionError::BufferTooShort {
                got: out.len(),
                needed: need as u64,
                height: self.config.height,
                step: u32::try_from(self.config.patch_dim()).unwrap_or(u32::MAX),
            });
        }
        let (sw, sh) = (image.width(), image.height());
        if sw == 0 || sh == 0 {
            return Err(VisionError::ZeroSize {
                width: sw,
                height: sh,
            });
        }
        let channels = image.format().channels();
        if image.data().len() != sw as usize * sh as usize * channels {
            return Err(VisionError::BufferTooShort {
                got: image.data().len(),
                needed: u64::from(sw) * u64::from(sh) * channels as u64,
                height: sh,
                step: sw.saturating_mul(channels as u32),
            });
        }
        let pixel_type = match image.format() {
            PixelFormat::Gray8 => fr::PixelType::U8,
            PixelFormat::Rgb8 => fr::PixelType::U8x3,
        };
        let (w, h) = (self.config.width, self.config.height);
        self.small.resize(w as usize * h as usize * channels, 0);
        let resize_error = |e: &dyn std::fmt::Display| VisionError::Resize(e.to_string());
        let src = fr::images::ImageRef::new(sw, sh, image.data(), pixel_type)
            .map_err(|e| resize_error(&e))?;
        let mut dst = fr::images::Image::from_slice_u8(w, h, &mut self.small, pixel_type)
            .map_err(|e| resize_error(&e))?;
        let (x0, y0, cw, ch) = self.config.crop_box(sw, sh);
        let options = fr::ResizeOptions::new()
            .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear))
            .crop(f64::from(x0), f64::from(y0), f64::from(cw), f64::from(ch));
        self.resizer
            .resize(&src, &mut dst, &options)
            .map_err(|e| resize_error(&e))?;
        match image.format() {
            PixelFormat::Gray8 => self.patchify::<1>(out),
            PixelFormat::Rgb8 => self.patchify::<3>(out),
        }
        Ok(())
    }

    /// Normalizes `self.small` (`C` channels) into patch order.
    fn patchify<const C: usize>(&self, out: &mut [f32]) {
        let p = self.config.patch_size as usize;
        let w = self.config.width as usize;
        let patches_x = w / p;
        let patch_dim = p * p * 3;
        let [r, g, b] = &*self.lut;
        for (y, row) in self.small.chunks_exact(w * C).enumerate() {
            let (py, iy) = (y / p, y % p);
            for (px, segment) in row.chunks_exact(p * C).enumerate() {
                let at = (py * patches_x + px) * patch_dim + iy * p * 3;
                for (dst, src) in out[at..at + p * 3]
                    .chunks_exact_mut(3)
                    .zip(segment.chunks_exact(C))
                {
                    let (sr, sg, sb) = if C == 1 {
                        (src[0], src[0], src[0])
                    } else {
                        (src[0], src[1], src[2])
                    };
                    dst[0] = r[usize::from(sr)];
                    dst[1] = g[usize::from(sg)];
                    dst[2] = b[usize::from(sb)];
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slow reference: PIL's `resize(size, BILINEAR, box)` definition (see the module docs)
    /// evaluated per output value in f64 as a direct 2-D sum over the whole frame (no separable
    /// passes, no fixed point, no 8-bit intermediate), normalized, then placed into patch order
    /// by the layout formula in the module docs.
    pub(crate) fn reference(image: &Image, cfg: &PreprocessConfig) -> Vec<f64> {
        let (x0, y0, cw, ch) = cfg.crop_box(image.width(), image.height());
        let (w, h, p) = (
            cfg.width as usize,
            cfg.height as usize,
            cfg.patch_size as usize,
        );
        let weights_1d =
            |src0: u32, len: u32, full: u32, n: usize, o: usize| -> Vec<(usize, f64)> {
                let scale = f64::from(len) / n as f64;
                let fs = scale.max(1.0);
                let center = f64::from(src0) + (o as f64 + 0.5) * scale;
                let mut ws: Vec<(usize, f64)> = (0..full as usize)
                    .map(|i| (i, (1.0 - ((i as f64 + 0.5 - center) / fs).abs()).max(0.0)))
                    .filter(|&(_, w)| w > 0.0)
                    .collect();
                let s: f64 = ws.iter().map(|&(_, w)| w).sum();
                ws.iter_mut().for_each(|(_, w)| *w /= s);
                ws
            };
        let mut out = vec![0.0; cfg.n_patches() * cfg.patch_dim()];
        for oy in 0..h {
            let wy = weights_1d(y0, ch, image.height(), h, oy);
            for ox in 0..w {
                let wx = weights_1d(x0, cw, image.width(), w, ox);
                for c in 0..3 {
                    let mut v = 0.0;
                    for &(sy, a) in &wy {
                        for &(sx, b) in &wx {
                            v += a * b * f64::from(image.rgb(sx as u32, sy as u32).unwrap()[c]);
                        }
                    }
                    let norm = (v / 255.0 - f64::from(cfg.mean[c])) / f64::from(cfg.std[c]);
                    let patch = (oy / p) * (w / p) + ox / p;
                    out[patch * cfg.patch_dim() + ((oy % p) * p + ox % p) * 3 + c] = norm;
                }
            }
        }
        out
    }

    fn noise_image(w: u32, h: u32, format: PixelFormat, seed: u64) -> Image {
        let mut s = seed;
        let data = (0..w as usize * h as usize * format.channels())
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (s >> 56) as u8
            })
            .collect();
        Image::from_raw(w, h, format, data).unwrap()
    }

    /// Tolerance: 1.25 8-bit levels, in normalized units (`1.25 / 255 / std`). fast_image_resize
    /// rounds to u8 after each pass (≤ 0.5 level each) and quantizes weights to fixed point
    /// (≤ 0.25 level for the widest kernels here).
    const TOL_LEVELS: f64 = 1.25;

    fn check(image: &Image, cfg: &PreprocessConfig) {
        let mut pre = Preprocessor::new(cfg.clone()).unwrap();
        let mut out = vec![f32::NAN; pre.output_len()];
        pre.process(image, &mut out).unwrap();
        let want = reference(image, cfg);
        // Error in 8-bit levels, per channel's std.
        let worst = out
            .iter()
            .zip(&want)
            .enumerate()
            .map(|(i, (&a, &b))| (f64::from(a) - b).abs() * 255.0 * f64::from(cfg.std[i % 3]))
            .fold(0.0, f64::max);
        eprintln!(
            "{}x{} -> {}x{} {:?}: worst error {worst:.3} levels",
            image.width(),
            image.height(),
            cfg.width,
            cfg.height,
            cfg.crop
        );
        assert!(
            worst <= TOL_LEVELS,
            "{}x{} {:?} -> {}x{} crop {:?}: worst error {worst:.3} levels",
            image.width(),
            image.height(),
            image.format(),
            cfg.width,
            cfg.height,
            cfg.crop
        );
        // A second call on the cached weights gives the same bits.
        let mut again = vec![0.0; out.len()];
        pre.process(image, &mut again).unwrap();
        assert_eq!(out, again);
    }

    #[test]
    fn matches_f64_reference_down_up_and_cropped() {
        let imagenet = PreprocessConfig {
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            ..PreprocessConfig::default()
        };
        let cases = [
            // (source w, h, format, output w, h, patch, crop)
            (160, 120, PixelFormat::Rgb8, 64, 64, 16, Crop::Center),
            (160, 120, PixelFormat::Rgb8, 64, 32, 16, Crop::None),
            (75, 48, PixelFormat::Gray8, 32, 32, 8, Crop::Center),
            (30, 50, PixelFormat::Rgb8, 64, 64, 16, Crop::Center), // upscale, portrait crop
            (64, 64, PixelFormat::Rgb8, 64, 64, 16, Crop::Center), // identity size
            (97, 61, PixelFormat::Rgb8, 48, 16, 8, Crop::None),    // odd ratios
        ];
        for (i, (sw, sh, f, w, h, p, crop)) in cases.into_iter().enumerate() {
            let cfg = PreprocessConfig {
                width: w,
                height: h,
                patch_size: p,
                crop,
                ..imagenet.clone()
            };
            check(&noise_image(sw, sh, f, i as u64), &cfg);
        }
    }

    /// Real frames (a G1 JPEG, a EuRoC gray PNG) against the f64 reference, same tolerance.
    #[test]
    fn real_frames_match_reference() {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
        if !data.exists() {
            assert!(
                std::env::var_os("EDGEVLA_REQUIRE_SHARED").is_none(),
                "EDGEVLA_REQUIRE_SHARED is set but {} is missing",
                data.display()
            );
            eprintln!("skipped: {} not found", data.display());
            return;
        }
        let files = [
            (crate::Encoding::Jpeg, "g1_pick_bottle/cam_high/000075.jpg"),
            (
                crate::Encoding::Png,
                "euroc_stereo/cam0/data/1403715273262142976.png",
            ),
        ];
        let imagenet = PreprocessConfig {
            width: 96,
            height: 96,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
            ..PreprocessConfig::default()
        };
        for (encoding, file) in files {
            let bytes = std::fs::read(data.join(file)).unwrap();
            let img = crate::decode(
                &crate::FrameRef::compressed(encoding, &bytes),
                &crate::DecodeLimits::default(),
            )
            .unwrap();
            check(&img, &PreprocessConfig::default());
            check(&img, &imagenet);
        }
    }

    #[test]
    fn identity_size_returns_the_pixels_normalized() {
        // 16x16 → 16x16 with one patch: weights are exactly 1, so values are exact up to f32
        // rounding of the normalization (tolerance 1e-6).
        let img = noise_image(16, 16, PixelFormat::Rgb8, 9);
        let cfg = PreprocessConfig {
            width: 16,
            height: 16,
            patch_size: 16,
            ..PreprocessConfig::default()
        };
        let mut pre = Preprocessor::new(cfg).unwrap();
        let mut out = vec![0.0; 768];
        pre.process(&img, &mut out).unwrap();
        for (i, (&got, &px)) in out.iter().zip(img.data()).enumerate() {
            let want = f32::from(px) / 127.5 - 1.0;
            assert!((got - want).abs() <= 1e-6, "value {i}: {got} vs {want}");
        }
    }

    #[test]
    fn center_crop_boxes() {
        let cfg = PreprocessConfig::default(); // square output
        assert_eq!(cfg.crop_box(640, 480), (80, 0, 480, 480));
        assert_eq!(cfg.crop_box(752, 480), (136, 0, 480, 480));
        assert_eq!(cfg.crop_box(480, 640), (0, 80, 480, 480));
        let wide = PreprocessConfig {
            width: 96,
            height: 48,
            ..cfg.clone()
        };
        assert_eq!(wide.crop_box(640, 480), (0, 80, 640, 320));
        assert_eq!(wide.crop_box(1, 1), (0, 0, 1, 1));
        let none = PreprocessConfig {
            crop: Crop::None,
            ..cfg
        };
        assert_eq!(none.crop_box(640, 480), (0, 0, 640, 480));
    }

    #[test]
    fn bad_configs_and_buffers_are_errors() {
        let bad = |c: PreprocessConfig| match Preprocessor::new(c) {
            Err(VisionError::Config { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        let d = PreprocessConfig::default;
        assert_eq!(
            bad(PreprocessConfig { width: 60, ..d() }),
            "preprocess.width"
        );
        assert_eq!(
            bad(PreprocessConfig { height: 0, ..d() }),
            "preprocess.height"
        );
        assert_eq!(
            bad(PreprocessConfig {
                patch_size: 0,
                ..d()
            }),
            "preprocess.patch_size"
        );
        assert_eq!(
            bad(PreprocessConfig {
                std: [0.5, 0.0, 0.5],
                ..d()
            }),
            "preprocess.std[1]"
        );
        assert_eq!(
            bad(PreprocessConfig {
                mean: [f32::NAN, 0.0, 0.5],
                ..d()
            }),
            "preprocess.mean[0]"
        );
        let mut pre = Preprocessor::new(d()).unwrap();
        let img = noise_image(8, 8, PixelFormat::Rgb8, 1);
        assert!(pre.process(&img, &mut [0.0; 10]).is_err());
        let mut out = vec![0.0; pre.output_len()];
        assert!(pre.process(&Image::default(), &mut out).is_err());
        // A 1x1 image stretched to 64x64 is fine (every output is that pixel).
        let one = noise_image(1, 1, PixelFormat::Rgb8, 3);
        pre.process(&one, &mut out).unwrap();
        let want = f32::from(one.data()[0]) / 127.5 - 1.0;
        assert!((out[0] - want).abs() < 1e-5);
    }

    #[test]
    fn config_parses_from_toml_and_rejects_unknown_keys() {
        let cfg: PreprocessConfig =
            toml::from_str("width = 96\nheight = 96\npatch_size = 16\ncrop = \"none\"").unwrap();
        assert_eq!(
            (cfg.width, cfg.crop, cfg.n_patches(), cfg.patch_dim()),
            (96, Crop::None, 36, 768)
        );
        let err = toml::from_str::<PreprocessConfig>("widht = 96").unwrap_err();
        assert!(err.to_string().contains("widht"), "{err}");
    }
}
