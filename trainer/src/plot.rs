//! The loss curve of a training run as a PNG: loss per iteration on a log scale (light) and its
//! moving average over 20 iterations (dark), with decade grid lines. Drawn like the eval's
//! heatmaps: plotters' bitmap backend for lines, `font8x8` glyphs for text, `image` for the PNG.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};
use eval::needle::heatmap::Canvas;

/// Image width, pixels.
pub const WIDTH: u32 = 520;
/// Image height, pixels.
pub const HEIGHT: u32 = 300;
const LEFT: u32 = 64;
const RIGHT: u32 = 16;
const TOP: u32 = 28;
const BOTTOM: u32 = 44;
/// Color of the raw loss.
pub const RAW: RGBColor = RGBColor(158, 188, 218);
/// Color of the moving average.
pub const AVERAGE: RGBColor = RGBColor(8, 69, 148);
const WINDOW: usize = 20;

fn err(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Output {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Writes the loss curve of `losses` (one per iteration) to `path`.
///
/// # Errors
/// [`Error::Output`] if no loss is finite and positive, or the PNG cannot be written.
pub fn write_loss_png(losses: &[f64], title: &str, path: &Path) -> Result<()> {
    let points: Vec<(usize, f64)> = losses
        .iter()
        .enumerate()
        .filter(|(_, l)| l.is_finite() && **l > 0.0)
        .map(|(i, l)| (i, l.log10()))
        .collect();
    let (Some(lo), Some(hi)) = (
        points.iter().map(|p| p.1).reduce(f64::min),
        points.iter().map(|p| p.1).reduce(f64::max),
    ) else {
        return Err(err(path, "no finite positive loss to plot"));
    };
    let (y0, mut y1) = (lo.floor(), hi.ceil());
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let n = losses.len().max(2);
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let px = |i: usize| LEFT as i32 + (i as f64 / (n - 1) as f64 * f64::from(pw)) as i32;
    let py = |v: f64| TOP as i32 + ((y1 - v) / (y1 - y0) * f64::from(ph)) as i32;
    let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        let draw = |e: DrawingAreaErrorKind<_>| err(path, format!("drawing: {e}"));
        root.fill(&WHITE).map_err(draw)?;
        let mut decade = y0;
        while decade <= y1 {
            root.draw(&PathElement::new(
                vec![(LEFT as i32, py(decade)), ((LEFT + pw) as i32, py(decade))],
                RGBColor(225, 225, 225),
            ))
            .map_err(draw)?;
            decade += 1.0;
        }
        root.draw(&PathElement::new(
            points
                .iter()
                .map(|&(i, v)| (px(i), py(v)))
                .collect::<Vec<_>>(),
            RAW,
        ))
        .map_err(draw)?;
        let average: Vec<(i32, i32)> = (0..points.len())
            .map(|k| {
                let from = k.saturating_sub(WINDOW - 1);
                let window = &points[from..=k];
                let mean = window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64;
                (px(points[k].0), py(mean))
            })
            .collect();
        root.draw(&PathElement::new(average, AVERAGE.stroke_width(2)))
            .map_err(draw)?;
        root.draw(&Rectangle::new(
            [
                (LEFT as i32, TOP as i32),
                ((LEFT + pw) as i32, (TOP + ph) as i32),
            ],
            BLACK.stroke_width(1),
        ))
        .map_err(draw)?;
        root.present().map_err(draw)?;
    }
    let mut canvas = Canvas {
        buf: &mut buf,
        w: WIDTH,
        h: HEIGHT,
    };
    let black = [0u8, 0, 0];
    canvas.text(8, 8, title, black);
    let mut decade = y0;
    while decade <= y1 {
        let label = format!("1e{decade:.0}");
        let y = py(decade).max(0) as u32;
        canvas.text(8, y.saturating_sub(4), &label, black);
        decade += 1.0;
    }
    canvas.text(LEFT, TOP + ph + 8, "0", black);
    let last = format!("{}", n - 1);
    canvas.text(
        LEFT + pw - 8 * last.len() as u32,
        TOP + ph + 8,
        &last,
        black,
    );
    canvas.text(
        LEFT,
        TOP + ph + 24,
        "iteration   light: loss, dark: 20-iteration mean",
        black,
    );
    let image = image::RgbImage::from_raw(WIDTH, HEIGHT, buf)
        .ok_or_else(|| err(path, "buffer size does not match the image"))?;
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PNG decodes at its size and holds both curves' colors; bad input is an error.
    #[test]
    fn loss_curve_png() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("loss.png");
        let losses: Vec<f64> = (0..300)
            .map(|i| 2.0 * (-(i as f64) / 60.0).exp() + 0.01 * (1.0 + (i as f64).sin()))
            .collect();
        write_loss_png(&losses, "test run", &path).expect("write");
        let image = image::open(&path).expect("decode").to_rgb8();
        assert_eq!(image.dimensions(), (WIDTH, HEIGHT));
        let has = |c: RGBColor| image.pixels().any(|p| p.0 == [c.0, c.1, c.2]);
        assert!(has(RAW) && has(AVERAGE));
        assert!(write_loss_png(&[f64::NAN, -1.0], "bad", &path).is_err());
    }
}
