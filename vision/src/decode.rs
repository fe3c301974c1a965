//! Frame decoding: JPEG, PNG and raw ROS-style buffers into an 8-bit [`Image`].
//!
//! JPEG goes straight through `zune-jpeg` (the decoder `image` itself wraps) into the caller's
//! reusable buffer; PNG through `image`'s PNG codec. Raw buffers follow `sensor_msgs/Image`:
//! `encoding`, `width`, `height`, `step` (bytes per row, may include padding) and `data`.
//!
//! Grayscale sources stay one channel ([`PixelFormat::Gray8`]): the preprocessor replicates the
//! channel after resizing, which is three times cheaper than expanding here. Alpha is dropped
//! (not composited). 16-bit PNGs are rounded to 8 bits.
//!
//! Every dimension and byte count is checked against [`DecodeLimits`] before anything large is
//! allocated.

use std::io::Cursor;
use std::str::FromStr;

use image::ImageDecoder;
use serde::{Deserialize, Serialize};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;

use crate::VisionError;

/// How a frame's bytes are encoded: compressed (JPEG, PNG) or a raw ROS image encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// JPEG / JFIF stream.
    Jpeg,
    /// PNG stream.
    Png,
    /// Raw, 3 bytes per pixel, R G B.
    Rgb8,
    /// Raw, 3 bytes per pixel, B G R.
    Bgr8,
    /// Raw, 4 bytes per pixel, R G B A.
    Rgba8,
    /// Raw, 4 bytes per pixel, B G R A.
    Bgra8,
    /// Raw, 1 byte per pixel, luminance.
    Mono8,
}

impl Encoding {
    /// Every encoding.
    pub const ALL: [Self; 7] = [
        Self::Jpeg,
        Self::Png,
        Self::Rgb8,
        Self::Bgr8,
        Self::Rgba8,
        Self::Bgra8,
        Self::Mono8,
    ];

    /// Bytes per pixel of a raw encoding; `None` for compressed ones.
    pub fn raw_bytes_per_pixel(self) -> Option<u32> {
        match self {
            Self::Jpeg | Self::Png => None,
            Self::Mono8 => Some(1),
            Self::Rgb8 | Self::Bgr8 => Some(3),
            Self::Rgba8 | Self::Bgra8 => Some(4),
        }
    }

    /// The name used in ROS messages and configs (`"bgr8"`, `"jpeg"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Rgb8 => "rgb8",
            Self::Bgr8 => "bgr8",
            Self::Rgba8 => "rgba8",
            Self::Bgra8 => "bgra8",
            Self::Mono8 => "mono8",
        }
    }
}

impl FromStr for Encoding {
    type Err = VisionError;

    /// Parses a ROS encoding name (`rgb8`, `bgr8`, `rgba8`, `bgra8`, `mono8`) or a compressed
    /// format (`jpeg`, `jpg`, `png`); case-insensitive.
    ///
    /// # Errors
    /// [`VisionError::UnknownEncoding`] for anything else (`16UC1`, `yuv422`, ...).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "jpeg" | "jpg" => Ok(Self::Jpeg),
            "png" => Ok(Self::Png),
            "rgb8" => Ok(Self::Rgb8),
            "bgr8" => Ok(Self::Bgr8),
            "rgba8" => Ok(Self::Rgba8),
            "bgra8" => Ok(Self::Bgra8),
            "mono8" => Ok(Self::Mono8),
            _ => Err(VisionError::UnknownEncoding(s.to_owned())),
        }
    }
}

/// A borrowed, still-encoded frame, as it arrives from a driver or the wire.
///
/// For compressed encodings `width`, `height` and `step` are ignored (the stream carries its own
/// size); for raw encodings they follow `sensor_msgs/Image`.
#[derive(Clone, Copy, Debug)]
pub struct FrameRef<'a> {
    /// How `data` is encoded.
    pub encoding: Encoding,
    /// Width in pixels (raw encodings).
    pub width: u32,
    /// Height in pixels (raw encodings).
    pub height: u32,
    /// Bytes per row including padding (raw encodings); at least `width * bytes_per_pixel`.
    pub step: u32,
    /// The bytes.
    pub data: &'a [u8],
}

impl<'a> FrameRef<'a> {
    /// A compressed frame (JPEG or PNG bytes).
    pub fn compressed(encoding: Encoding, data: &'a [u8]) -> Self {
        Self {
            encoding,
            width: 0,
            height: 0,
            step: 0,
            data,
        }
    }

    /// A raw frame with explicit row `step` in bytes.
    pub fn raw(encoding: Encoding, width: u32, height: u32, step: u32, data: &'a [u8]) -> Self {
        Self {
            encoding,
            width,
            height,
            step,
            data,
        }
    }
}

/// Limits applied before decoding (decompression bombs, runaway drivers).
///
/// A TOML table (`[decode]` in a rig file); every field has a default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeLimits {
    /// Largest accepted width in pixels.
    pub max_width: u32,
    /// Largest accepted height in pixels.
    pub max_height: u32,
    /// Largest accepted decoded size in bytes (the decoder's own output buffer, before any
    /// channel conversion).
    pub max_decoded_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_width: 4096,
            max_height: 4096,
            max_decoded_bytes: 64 << 20,
        }
    }
}

impl DecodeLimits {
    /// Checks that every limit is positive; `prefix` is the table's key (`decode`).
    ///
    /// # Errors
    /// [`VisionError::Config`] naming the first zero limit.
    pub fn validate(&self, prefix: &str) -> Result<(), VisionError> {
        for (name, value) in [
            ("max_width", u64::from(self.max_width)),
            ("max_height", u64::from(self.max_height)),
            ("max_decoded_bytes", self.max_decoded_bytes),
        ] {
            if value == 0 {
                return Err(VisionError::config(
                    format!("{prefix}.{name}"),
                    "must be positive",
                ));
            }
        }
        Ok(())
    }

    /// Checks a `width` x `height` image of `bytes_per_pixel` against the limits.
    ///
    /// # Errors
    /// [`VisionError::ZeroSize`], [`VisionError::TooLarge`] or [`VisionError::TooManyBytes`].
    pub fn check(&self, width: u32, height: u32, bytes_per_pixel: u32) -> Result<(), VisionError> {
        if width == 0 || height == 0 {
            return Err(VisionError::ZeroSize { width, height });
        }
        if width > self.max_width || height > self.max_height {
            return Err(VisionError::TooLarge {
                width,
                height,
                max_width: self.max_width,
                max_height: self.max_height,
            });
        }
        let bytes = u64::from(width)
            .saturating_mul(u64::from(height))
            .saturating_mul(u64::from(bytes_per_pixel));
        if bytes > self.max_decoded_bytes {
            return Err(VisionError::TooManyBytes {
                bytes,
                max_bytes: self.max_decoded_bytes,
            });
        }
        Ok(())
    }
}

/// Pixel layout of a decoded [`Image`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PixelFormat {
    /// One byte per pixel, luminance.
    Gray8,
    /// Three bytes per pixel, R G B.
    #[default]
    Rgb8,
}

impl PixelFormat {
    /// Bytes (channels) per pixel.
    pub fn channels(self) -> usize {
        match self {
            Self::Gray8 => 1,
            Self::Rgb8 => 3,
        }
    }
}

/// A decoded 8-bit image, rows packed without padding. Reused across frames: decoding into an
/// existing `Image` only reallocates when the frame is larger than any before it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    width: u32,
    height: u32,
    format: PixelFormat,
    data: Vec<u8>,
}

impl Image {
    /// Wraps packed pixel data.
    ///
    /// # Errors
    /// [`VisionError::ZeroSize`] for an empty image, [`VisionError::BufferTooShort`] when
    /// `data.len() != width * height * channels`.
    pub fn from_raw(
        width: u32,
        height: u32,
        format: PixelFormat,
        data: Vec<u8>,
    ) -> Result<Self, VisionError> {
        if width == 0 || height == 0 {
            return Err(VisionError::ZeroSize { width, height });
        }
        let row = u64::from(width) * format.channels() as u64;
        let needed = row * u64::from(height);
        if data.len() as u64 != needed {
            return Err(VisionError::BufferTooShort {
                got: data.len(),
                needed,
                height,
                step: u32::try_from(row).unwrap_or(u32::MAX),
            });
        }
        Ok(Self {
            width,
            height,
            format,
            data,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Pixel layout.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// Packed pixels, row after row, `width * channels` bytes per row.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The pixel at (`x`, `y`) as R G B (gray replicated); `None` outside the image.
    pub fn rgb(&self, x: u32, y: u32) -> Option<[u8; 3]> {
        if x >= self.width || y >= self.height {
            return None;
        }
        let c = self.format.channels();
        let i = (y as usize * self.width as usize + x as usize) * c;
        match self.format {
            PixelFormat::Gray8 => self.data.get(i).map(|&v| [v, v, v]),
            PixelFormat::Rgb8 => self.data.get(i..i + 3).map(|p| [p[0], p[1], p[2]]),
        }
    }

    /// Sets the size and format, growing the buffer if needed; returns the pixel bytes.
    fn reshape(&mut self, width: u32, height: u32, format: PixelFormat) -> &mut [u8] {
        self.width = width;
        self.height = height;
        self.format = format;
        let len = width as usize * height as usize * format.channels();
        self.data.resize(len, 0);
        &mut self.data
    }
}

/// A decoder with its limits and scratch buffers; keep one per camera and reuse it.
#[derive(Debug, Default)]
pub struct Decoder {
    limits: DecodeLimits,
    scratch: Vec<u8>,
}

impl Decoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: DecodeLimits) -> Self {
        Self {
            limits,
            scratch: Vec::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &DecodeLimits {
        &self.limits
    }

    /// Decodes `frame` into `out`, reusing `out`'s buffer.
    ///
    /// # Errors
    /// [`VisionError::ZeroSize`], [`VisionError::TooLarge`], [`VisionError::TooManyBytes`] for
    /// sizes outside the limits; [`VisionError::StepTooSmall`] / [`VisionError::BufferTooShort`]
    /// for inconsistent raw frames; [`VisionError::Jpeg`] / [`VisionError::Png`] for streams the
    /// codec rejects (truncated, corrupt, unsupported). `out` holds unspecified pixels after an
    /// error.
    pub fn decode_into(
        &mut self,
        frame: &FrameRef<'_>,
        out: &mut Image,
    ) -> Result<(), VisionError> {
        match frame.encoding {
            Encoding::Jpeg => decode_jpeg(frame.data, &self.limits, out),
            Encoding::Png => decode_png(frame.data, &self.limits, &mut self.scratch, out),
            raw => decode_raw(raw, frame, &self.limits, out),
        }
    }
}

/// Decodes one frame into a fresh [`Image`] (the fuzzing entry point).
///
/// # Errors
/// As [`Decoder::decode_into`].
pub fn decode(frame: &FrameRef<'_>, limits: &DecodeLimits) -> Result<Image, VisionError> {
    let mut out = Image::default();
    Decoder::new(limits.clone()).decode_into(frame, &mut out)?;
    Ok(out)
}

fn decode_jpeg(data: &[u8], limits: &DecodeLimits, out: &mut Image) -> Result<(), VisionError> {
    // zune's own size limits would report a generic error: let it read any header (JPEG sizes
    // are at most 65535) and apply ours before the pixels are decoded.
    let options = DecoderOptions::new_fast()
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX))
        .set_strict_mode(false);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(data), options);
    decoder
        .decode_headers()
        .map_err(|e| VisionError::Jpeg(e.to_string()))?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| VisionError::Jpeg("no frame header".into()))?;
    let (width, height) = (
        u32::try_from(width).unwrap_or(u32::MAX),
        u32::try_from(height).unwrap_or(u32::MAX),
    );
    let gray = decoder.info().is_some_and(|info| info.components == 1);
    let (format, colorspace) = if gray {
        (PixelFormat::Gray8, ColorSpace::Luma)
    } else {
        (PixelFormat::Rgb8, ColorSpace::RGB)
    };
    limits.check(width, height, format.channels() as u32)?;
    decoder.set_options(options.jpeg_set_out_colorspace(colorspace));
    let needed = decoder
        .output_buffer_size()
        .ok_or_else(|| VisionError::Jpeg("output size overflows".into()))?;
    let pixels = out.reshape(width, height, format);
    if pixels.len() != needed {
        return Err(VisionError::Jpeg(format!(
            "decoder wants {needed} bytes for {width}x{height}x{}",
            format.channels()
        )));
    }
    decoder
        .decode_into(pixels)
        .map_err(|e| VisionError::Jpeg(e.to_string()))
}

fn decode_png(
    data: &[u8],
    limits: &DecodeLimits,
    scratch: &mut Vec<u8>,
    out: &mut Image,
) -> Result<(), VisionError> {
    let mut codec_limits = image::Limits::default();
    // Width and height are checked below so that the error says which limit was hit.
    codec_limits.max_image_width = None;
    codec_limits.max_image_height = None;
    codec_limits.max_alloc = Some(limits.max_decoded_bytes);
    let decoder = image::codecs::png::PngDecoder::with_limits(Cursor::new(data), codec_limits)
        .map_err(|e| png_error(e, limits))?;
    let (width, height) = decoder.dimensions();
    let color = decoder.color_type();
    let bpp = u32::from(color.bytes_per_pixel());
    limits.check(width, height, bpp)?;
    let total = usize::try_from(decoder.total_bytes()).map_err(|_| VisionError::TooManyBytes {
        bytes: decoder.total_bytes(),
        max_bytes: limits.max_decoded_bytes,
    })?;
    use image::ColorType as C;
    match color {
        // Already in our layout: decode straight into the output.
        C::L8 => decoder
            .read_image(out.reshape(width, height, PixelFormat::Gray8))
            .map_err(|e| png_error(e, limits)),
        C::Rgb8 => decoder
            .read_image(out.reshape(width, height, PixelFormat::Rgb8))
            .map_err(|e| png_error(e, limits)),
        C::La8 | C::Rgba8 | C::L16 | C::La16 | C::Rgb16 | C::Rgba16 => {
            scratch.resize(total, 0);
            decoder
                .read_image(scratch)
                .map_err(|e| png_error(e, limits))?;
            convert_png(color, scratch, width, height, out);
            Ok(())
        }
        other => Err(VisionError::Png(format!(
            "unsupported color type {other:?}"
        ))),
    }
}

/// Converts PNG layouts with alpha and/or 16-bit samples into Gray8 / Rgb8.
fn convert_png(color: image::ColorType, src: &[u8], width: u32, height: u32, out: &mut Image) {
    use image::ColorType as C;
    let (format, in_channels, wide) = match color {
        C::La8 => (PixelFormat::Gray8, 2, false),
        C::Rgba8 => (PixelFormat::Rgb8, 4, false),
        C::L16 => (PixelFormat::Gray8, 1, true),
        C::La16 => (PixelFormat::Gray8, 2, true),
        C::Rgb16 => (PixelFormat::Rgb8, 3, true),
        _ => (PixelFormat::Rgb8, 4, true),
    };
    let keep = format.channels();
    let sample = if wide { 2 } else { 1 };
    let dst = out.reshape(width, height, format);
    for (px_out, px_in) in dst
        .chunks_exact_mut(keep)
        .zip(src.chunks_exact(in_channels * sample))
    {
        for (c, o) in px_out.iter_mut().enumerate() {
            *o = if wide {
                // image hands 16-bit samples over in native byte order.
                let v = u16::from_ne_bytes([px_in[2 * c], px_in[2 * c + 1]]);
                ((u32::from(v) * 255 + 32767) / 65535) as u8
            } else {
                px_in[c]
            };
        }
    }
}

fn png_error(e: image::ImageError, limits: &DecodeLimits) -> VisionError {
    match e {
        // The PNG decoder's own allocations (chunk buffers) went over the byte budget.
        image::ImageError::Limits(l) => VisionError::Png(format!(
            "over decode.max_decoded_bytes = {}: {l}",
            limits.max_decoded_bytes
        )),
        other => VisionError::Png(other.to_string()),
    }
}

fn decode_raw(
    encoding: Encoding,
    frame: &FrameRef<'_>,
    limits: &DecodeLimits,
    out: &mut Image,
) -> Result<(), VisionError> {
    let bpp = encoding
        .raw_bytes_per_pixel()
        .ok_or_else(|| VisionError::UnknownEncoding(encoding.name().into()))?;
    let (width, height, step) = (frame.width, frame.height, frame.step);
    limits.check(width, height, bpp)?;
    let row_bytes = u64::from(width) * u64::from(bpp);
    if u64::from(step) < row_bytes {
        return Err(VisionError::StepTooSmall { step, row_bytes });
    }
    // The last row need not carry its padding.
    let needed = u64::from(step) * u64::from(height - 1) + row_bytes;
    if (frame.data.len() as u64) < needed {
        return Err(VisionError::BufferTooShort {
            got: frame.data.len(),
            needed,
            height,
            step,
        });
    }
    let format = if encoding == Encoding::Mono8 {
        PixelFormat::Gray8
    } else {
        PixelFormat::Rgb8
    };
    let (row_bytes, step) = (row_bytes as usize, step as usize);
    let out_row = width as usize * format.channels();
    let dst = out.reshape(width, height, format);
    for (y, dst_row) in dst.chunks_exact_mut(out_row).enumerate() {
        let start = y * step;
        let Some(src_row) = frame.data.get(start..start + row_bytes) else {
            // Unreachable after the length check above; kept as a guard, not a panic.
            return Err(VisionError::BufferTooShort {
                got: frame.data.len(),
                needed,
                height,
                step: frame.step,
            });
        };
        match encoding {
            Encoding::Rgb8 | Encoding::Mono8 => dst_row.copy_from_slice(src_row),
            Encoding::Bgr8 => {
                for (d, s) in dst_row.chunks_exact_mut(3).zip(src_row.chunks_exact(3)) {
                    d.copy_from_slice(&[s[2], s[1], s[0]]);
                }
            }
            Encoding::Rgba8 => {
                for (d, s) in dst_row.chunks_exact_mut(3).zip(src_row.chunks_exact(4)) {
                    d.copy_from_slice(&s[..3]);
                }
            }
            Encoding::Bgra8 => {
                for (d, s) in dst_row.chunks_exact_mut(3).zip(src_row.chunks_exact(4)) {
                    d.copy_from_slice(&[s[2], s[1], s[0]]);
                }
            }
            Encoding::Jpeg | Encoding::Png => {
                return Err(VisionError::UnknownEncoding(encoding.name().into()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::ImageEncoder;

    /// A deterministic RGB test pattern (gradients + a checker) of `w` x `h`.
    fn pattern(w: u32, h: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                let checker = if (x / 8 + y / 8) % 2 == 0 { 40 } else { 0 };
                v.push((x * 255 / w.max(1)) as u8);
                v.push((y * 255 / h.max(1)) as u8);
                v.push(((x + y) % 200) as u8 + checker);
            }
        }
        v
    }

    fn encode_png(w: u32, h: u32, color: image::ExtendedColorType, data: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        image::codecs::png::PngEncoder::new(&mut buf)
            .write_image(data, w, h, color)
            .unwrap();
        buf
    }

    fn encode_jpeg(w: u32, h: u32, color: image::ExtendedColorType, data: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95)
            .write_image(data, w, h, color)
            .unwrap();
        buf
    }

    #[test]
    fn encoding_names_round_trip_and_unknown_is_an_error() {
        for e in Encoding::ALL {
            assert_eq!(e.name().parse::<Encoding>().unwrap(), e);
        }
        assert_eq!("JPG".parse::<Encoding>().unwrap(), Encoding::Jpeg);
        for bad in ["yuv422", "16UC1", "", "bayer_rggb8"] {
            match bad.parse::<Encoding>() {
                Err(VisionError::UnknownEncoding(name)) => assert_eq!(name, bad),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    /// PNG is lossless: the decoded pixels equal the generated ones exactly, for every layout.
    #[test]
    fn generated_png_round_trips_exactly() {
        use image::ExtendedColorType as X;
        let (w, h) = (37, 23);
        let rgb = pattern(w, h);
        let gray: Vec<u8> = rgb.chunks(3).map(|p| p[0] / 2 + p[1] / 2).collect();
        let rgba: Vec<u8> = rgb.chunks(3).flat_map(|p| [p[0], p[1], p[2], 77]).collect();
        let la: Vec<u8> = gray.iter().flat_map(|&g| [g, 200]).collect();
        // 16-bit: v * 257 maps back to v exactly.
        let rgb16: Vec<u8> = rgb
            .iter()
            .flat_map(|&v| (u16::from(v) * 257).to_be_bytes())
            .collect();
        let cases: [(X, &[u8], PixelFormat, &[u8]); 5] = [
            (X::Rgb8, &rgb, PixelFormat::Rgb8, &rgb),
            (X::L8, &gray, PixelFormat::Gray8, &gray),
            (X::Rgba8, &rgba, PixelFormat::Rgb8, &rgb),
            (X::La8, &la, PixelFormat::Gray8, &gray),
            (X::Rgb16, &rgb16, PixelFormat::Rgb8, &rgb),
        ];
        let mut decoder = Decoder::default();
        let mut out = Image::default();
        for (color, input, format, want) in cases {
            let png = encode_png(w, h, color, input);
            decoder
                .decode_into(&FrameRef::compressed(Encoding::Png, &png), &mut out)
                .unwrap();
            assert_eq!(
                (out.width(), out.height(), out.format()),
                (w, h, format),
                "{color:?}"
            );
            assert_eq!(out.data(), want, "{color:?}");
        }
    }

    /// JPEG is lossy: quality 95 of a smooth pattern decodes within a mean absolute error of 3
    /// levels (reference: the generated pixels); grayscale JPEGs stay one channel.
    #[test]
    fn generated_jpeg_decodes_close_to_the_source() {
        let (w, h) = (64, 48);
        let rgb = pattern(w, h);
        let jpeg = encode_jpeg(w, h, image::ExtendedColorType::Rgb8, &rgb);
        let img = decode(
            &FrameRef::compressed(Encoding::Jpeg, &jpeg),
            &DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(
            (img.width(), img.height(), img.format()),
            (w, h, PixelFormat::Rgb8)
        );
        let mae = img
            .data()
            .iter()
            .zip(&rgb)
            .map(|(&a, &b)| f64::from(a.abs_diff(b)))
            .sum::<f64>()
            / rgb.len() as f64;
        assert!(mae < 3.0, "mean abs error {mae}");

        let gray: Vec<u8> = rgb.chunks(3).map(|p| p[1]).collect();
        let jpeg = encode_jpeg(w, h, image::ExtendedColorType::L8, &gray);
        let img = decode(
            &FrameRef::compressed(Encoding::Jpeg, &jpeg),
            &DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(img.format(), PixelFormat::Gray8);
        let mae = img
            .data()
            .iter()
            .zip(&gray)
            .map(|(&a, &b)| f64::from(a.abs_diff(b)))
            .sum::<f64>()
            / gray.len() as f64;
        assert!(mae < 3.0, "gray mean abs error {mae}");
    }

    /// Builds a raw frame with `pad` junk bytes after every row.
    fn padded(src_px: &[[u8; 4]], w: u32, h: u32, bpp: usize, pad: usize) -> (Vec<u8>, u32) {
        let step = w as usize * bpp + pad;
        let mut data = vec![0xEE; step * h as usize];
        for y in 0..h as usize {
            for x in 0..w as usize {
                let p = src_px[y * w as usize + x];
                data[y * step + x * bpp..y * step + (x + 1) * bpp].copy_from_slice(&p[..bpp]);
            }
        }
        (data, step as u32)
    }

    /// Every raw encoding, with and without row padding, checked pixel by pixel: `bgr8`/`bgra8`
    /// must come out with R and B swapped back, padding bytes must never leak into pixels.
    #[test]
    fn raw_encodings_with_padding_pixel_by_pixel() {
        let (w, h) = (5u32, 4u32);
        let px: Vec<[u8; 4]> = (0..w * h)
            .map(|i| {
                let i = i as u8;
                [i, 100 + i, 200 - i, 7 * i]
            })
            .collect();
        let mut out = Image::default();
        let mut decoder = Decoder::default();
        for pad in [0usize, 1, 3, 64] {
            for enc in [
                Encoding::Rgb8,
                Encoding::Bgr8,
                Encoding::Rgba8,
                Encoding::Bgra8,
                Encoding::Mono8,
            ] {
                let bpp = enc.raw_bytes_per_pixel().unwrap() as usize;
                let (data, step) = padded(&px, w, h, bpp, pad);
                decoder
                    .decode_into(&FrameRef::raw(enc, w, h, step, &data), &mut out)
                    .unwrap();
                for y in 0..h {
                    for x in 0..w {
                        let p = px[(y * w + x) as usize];
                        // What the pixel's bytes mean under each encoding.
                        let want = match enc {
                            Encoding::Rgb8 | Encoding::Rgba8 => [p[0], p[1], p[2]],
                            Encoding::Bgr8 | Encoding::Bgra8 => [p[2], p[1], p[0]],
                            _ => [p[0], p[0], p[0]],
                        };
                        assert_eq!(out.rgb(x, y), Some(want), "{enc:?} pad {pad} at ({x},{y})");
                    }
                }
                // The last row may come without its padding.
                let trimmed = &data[..data.len() - pad];
                decoder
                    .decode_into(&FrameRef::raw(enc, w, h, step, trimmed), &mut out)
                    .unwrap();
            }
        }
    }

    #[test]
    fn bad_raw_frames_are_errors() {
        let limits = DecodeLimits {
            max_width: 100,
            max_height: 50,
            max_decoded_bytes: 100 * 50 * 3,
        };
        let data = vec![0u8; 1 << 16];
        let raw = |enc, w, h, step, len: usize| {
            decode(&FrameRef::raw(enc, w, h, step, &data[..len]), &limits)
        };
        assert!(matches!(
            raw(Encoding::Rgb8, 0, 10, 30, 300),
            Err(VisionError::ZeroSize { .. })
        ));
        assert!(matches!(
            raw(Encoding::Rgb8, 10, 0, 30, 300),
            Err(VisionError::ZeroSize { .. })
        ));
        assert!(matches!(
            raw(Encoding::Rgb8, 10, 10, 29, 300),
            Err(VisionError::StepTooSmall {
                step: 29,
                row_bytes: 30
            })
        ));
        assert!(matches!(
            raw(Encoding::Bgra8, 10, 10, 40, 399),
            Err(VisionError::BufferTooShort { needed: 400, .. })
        ));
        assert!(matches!(
            raw(Encoding::Mono8, 101, 1, 101, 101),
            Err(VisionError::TooLarge { .. })
        ));
        assert!(matches!(
            raw(Encoding::Mono8, 1, 51, 1, 51),
            Err(VisionError::TooLarge { .. })
        ));
        // Within width/height but over the byte budget: rgba8 needs 4 bytes per pixel.
        assert!(matches!(
            raw(Encoding::Rgba8, 100, 50, 400, 20000),
            Err(VisionError::TooManyBytes { bytes: 20000, .. })
        ));
        // Huge dimensions never allocate or overflow.
        let huge = DecodeLimits {
            max_width: u32::MAX,
            max_height: u32::MAX,
            max_decoded_bytes: u64::MAX,
        };
        assert!(matches!(
            decode(
                &FrameRef::raw(Encoding::Rgba8, u32::MAX, u32::MAX, u32::MAX, &data),
                &huge
            ),
            Err(VisionError::StepTooSmall { .. })
        ));
        assert!(matches!(
            decode(
                &FrameRef::raw(Encoding::Mono8, u32::MAX, u32::MAX, u32::MAX, &data),
                &huge
            ),
            Err(VisionError::BufferTooShort { .. })
        ));
    }

    #[test]
    fn bad_compressed_frames_are_errors() {
        let (w, h) = (40, 30);
        let rgb = pattern(w, h);
        let jpeg = encode_jpeg(w, h, image::ExtendedColorType::Rgb8, &rgb);
        let png = encode_png(w, h, image::ExtendedColorType::Rgb8, &rgb);
        let limits = DecodeLimits::default();
        let jpg = |d: &[u8]| decode(&FrameRef::compressed(Encoding::Jpeg, d), &limits);
        let pn = |d: &[u8]| decode(&FrameRef::compressed(Encoding::Png, d), &limits);
        // Empty, header only, truncated in the middle, garbage.
        for cut in [0, 2, 20, jpeg.len() / 2] {
            let r = jpg(&jpeg[..cut]);
            // zune-jpeg fills a truncated scan with zeros rather than failing once the headers
            // are complete; what matters is that no cut panics and short ones are errors.
            if cut < 100 {
                assert!(
                    matches!(r, Err(VisionError::Jpeg(_))),
                    "jpeg cut at {cut}: {r:?}"
                );
            }
        }
        // (A PNG missing only its IEND chunk still holds every pixel and decodes; cuts into the
        // image data must not.)
        for cut in [0, 8, 30, png.len() / 2, png.len() - 20] {
            assert!(
                matches!(pn(&png[..cut]), Err(VisionError::Png(_))),
                "png cut at {cut}"
            );
        }
        assert!(matches!(
            jpg(b"not a jpeg at all"),
            Err(VisionError::Jpeg(_))
        ));
        assert!(matches!(
            pn(b"\x89PNG\r\n\x1a\nxxxxxxxxxxxx"),
            Err(VisionError::Png(_))
        ));
        // A PNG handed over as JPEG and the other way round.
        assert!(matches!(jpg(&png), Err(VisionError::Jpeg(_))));
        assert!(matches!(pn(&jpeg), Err(VisionError::Png(_))));
        // Corrupt PNG data (bad CRC in the image data) is caught.
        let mut bad = png.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0xFF;
        assert!(pn(&bad).is_err());
        // Corrupt JPEG entropy data: an error or a (garbled) image, never a panic.
        let mut bad = jpeg.clone();
        for i in (jpeg.len() / 3..jpeg.len() - 2).step_by(7) {
            bad[i] = bad[i].wrapping_mul(31).wrapping_add(1);
        }
        let _ = jpg(&bad);
    }

    #[test]
    fn compressed_frames_over_the_limits_are_rejected_before_decoding() {
        let (w, h) = (64, 48);
        let rgb = pattern(w, h);
        let jpeg = encode_jpeg(w, h, image::ExtendedColorType::Rgb8, &rgb);
        let png = encode_png(w, h, image::ExtendedColorType::Rgb8, &rgb);
        let narrow = DecodeLimits {
            max_width: 63,
            ..DecodeLimits::default()
        };
        let small_budget = DecodeLimits {
            max_decoded_bytes: 64 * 48 * 3 - 1,
            ..DecodeLimits::default()
        };
        for (enc, data) in [(Encoding::Jpeg, &jpeg), (Encoding::Png, &png)] {
            let f = FrameRef::compressed(enc, data);
            match decode(&f, &narrow) {
                Err(VisionError::TooLarge {
                    width: 64,
                    height: 48,
                    max_width: 63,
                    ..
                }) => {}
                other => panic!("{enc:?} narrow: {other:?}"),
            }
            assert!(
                matches!(
                    decode(&f, &small_budget),
                    Err(VisionError::TooManyBytes { .. })
                ),
                "{enc:?} budget"
            );
        }
    }

    #[test]
    fn limits_validate_names_the_key() {
        let l = DecodeLimits {
            max_height: 0,
            ..DecodeLimits::default()
        };
        match l.validate("decode") {
            Err(VisionError::Config { key, .. }) => assert_eq!(key, "decode.max_height"),
            other => panic!("{other:?}"),
        }
        assert!(DecodeLimits::default().validate("decode").is_ok());
    }
}
