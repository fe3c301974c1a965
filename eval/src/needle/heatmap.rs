//! PNG heatmaps of a metric over length (columns) × depth (rows).
//!
//! Cells, the color bar and the frame are drawn with plotters' bitmap backend into an RGB
//! buffer; text (title, tick labels, each cell's value) is blitted from `font8x8`'s public-domain
//! 8×8 bitmap glyphs. No font file is read and nothing is fetched, so the output is the same on
//! any machine (a fresh CI box without fonts included). The PNG is encoded with `image`.
//!
//! Colors: viridis (dark purple = 0, teal = 0.5, yellow = 1); a cell with no value is gray
//! and labelled `-`.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// Width of one cell, pixels.
pub const CELL_W: u32 = 64;
/// Height of one cell, pixels.
pub const CELL_H: u32 = 28;
/// Left margin (depth tick labels).
pub const LEFT: u32 = 56;
/// Top margin (title, axis name).
pub const TOP: u32 = 44;
/// Bottom margin (length ticks, axis name, color bar).
pub const BOTTOM: u32 = 76;
/// Right margin.
pub const RIGHT: u32 = 12;
/// Smallest image width (room for the title and the color bar).
pub const MIN_WIDTH: u32 = 360;

const GLYPH: u32 = 8;
const GRAY: RGBColor = RGBColor(200, 200, 200);

/// A heatmap to draw: `values[row][col]` in `[0, 1]` (`None`: no data).
#[derive(Clone, Debug, PartialEq)]
pub struct Heatmap {
    /// Title line.
    pub title: String,
    /// Column labels (lengths).
    pub col_labels: Vec<String>,
    /// Row labels (depths), top row first.
    pub row_labels: Vec<String>,
    /// Name of the column axis.
    pub x_label: String,
    /// Name of the row axis.
    pub y_label: String,
    /// Values, row-major.
    pub values: Vec<Vec<Option<f64>>>,
}

/// Image size `(width, height)` of a heatmap with `cols` columns and `rows` rows.
pub fn size(cols: usize, rows: usize) -> (u32, u32) {
    let (cols, rows) = (cols as u32, rows as u32);
    (
        (LEFT + cols * CELL_W + RIGHT).max(MIN_WIDTH),
        TOP + rows * CELL_H + BOTTOM,
    )
}

/// Viridis at `v` (clamped to `[0, 1]`).
pub fn color(v: f64) -> RGBColor {
    const STOPS: [(f64, [f64; 3]); 5] = [
        (0.0, [68.0, 1.0, 84.0]),
        (0.25, [59.0, 82.0, 139.0]),
        (0.5, [33.0, 145.0, 140.0]),
        (0.75, [94.0, 201.0, 98.0]),
        (1.0, [253.0, 231.0, 37.0]),
    ];
    let v = if v.is_finite() {
        v.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut out = STOPS[4].1;
    for pair in STOPS.windows(2) {
        let ((a, ca), (b, cb)) = (pair[0], pair[1]);
        if v <= b {
            let t = (v - a) / (b - a);
            out = [0, 1, 2].map(|i| ca[i] + t * (cb[i] - ca[i]));
            break;
        }
    }
    RGBColor(
        out[0].round() as u8,
        out[1].round() as u8,
        out[2].round() as u8,
    )
}

fn draw_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Output {
        path: path.to_path_buf(),
        reason: format!("drawing: {e}"),
    }
}

/// Renders `map` into an RGB8 buffer of [`size`].
///
/// # Errors
/// [`Error::Output`] (naming `path`, for messages) if plotters fails or the rows are ragged.
pub fn render(map: &Heatmap, path: &Path) -> Result<Vec<u8>> {
    let rows = map.row_labels.len();
    let cols = map.col_labels.len();
    if map.values.len() != rows || map.values.iter().any(|r| r.len() != cols) {
        return Err(Error::Output {
            path: path.to_path_buf(),
            reason: format!("heatmap values are not {rows} rows of {cols}"),
        });
    }
    let (w, h) = size(cols, rows);
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
        for (r, row) in map.values.iter().enumerate() {
            for (c, value) in row.iter().enumerate() {
                let x0 = (LEFT + c as u32 * CELL_W) as i32;
                let y0 = (TOP + r as u32 * CELL_H) as i32;
                let fill = value.map_or(GRAY, color);
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + CELL_W as i32, y0 + CELL_H as i32)],
                    fill.filled(),
                ))
                .map_err(|e| draw_err(path, e))?;
                root.draw(&Rectangle::new(
                    [(x0, y0), (x0 + CELL_W as i32, y0 + CELL_H as i32)],
                    WHITE.stroke_width(1),
                ))
                .map_err(|e| draw_err(path, e))?;
            }
        }
        // Color bar: 0 → 1 left to right.
        let bar_y = (TOP + rows as u32 * CELL_H + 48) as i32;
        let bar_w = 200i32;
        for i in 0..bar_w {
            let x = LEFT as i32 + i;
            root.draw(&Rectangle::new(
                [(x, bar_y), (x + 1, bar_y + 10)],
                color(f64::from(i) / f64::from(bar_w - 1)).filled(),
            ))
            .map_err(|e| draw_err(path, e))?;
        }
        root.present().map_err(|e| draw_err(path, e))?;
    }
    let mut canvas = Canvas {
        buf: &mut buf,
        w,
        h,
    };
    let black = [0u8, 0, 0];
    canvas.text(8, 8, &map.title, black);
    canvas.text(8, TOP - 14, &format!("{} (rows)", map.y_label), black);
    for (r, label) in map.row_labels.iter().enumerate() {
        let y = TOP + r as u32 * CELL_H + (CELL_H - GLYPH) / 2;
        let x = LEFT.saturating_sub(6 + GLYPH * label.len() as u32);
        canvas.text(x, y, label, black);
    }
    let grid_bottom = TOP + rows as u32 * CELL_H;
    for (c, label) in map.col_labels.iter().enumerate() {
        let x = LEFT + c as u32 * CELL_W + (CELL_W.saturating_sub(GLYPH * label.len() as u32)) / 2;
        canvas.text(x, grid_bottom + 6, label, black);
    }
    canvas.text(
        LEFT,
        grid_bottom + 22,
        &format!("{} (columns)", map.x_label),
        black,
    );
    let bar_y = grid_bottom + 48;
    canvas.text(LEFT.saturating_sub(24), bar_y + 1, "0%", black);
    canvas.text(LEFT + 206, bar_y + 1, "100%", black);
    for (r, row) in map.values.iter().enumerate() {
        for (c, value) in row.iter().enumerate() {
            let label = value.map_or("-".to_string(), |v| format!("{:.0}%", 100.0 * v));
            let ink = match value {
                Some(v) if *v < 0.6 => [255, 255, 255],
                _ => [0, 0, 0],
            };
            let x =
                LEFT + c as u32 * CELL_W + (CELL_W.saturating_sub(GLYPH * label.len() as u32)) / 2;
            let y = TOP + r as u32 * CELL_H + (CELL_H - GLYPH) / 2;
            canvas.text(x, y, &label, ink);
        }
    }
    Ok(buf)
}

/// Renders `map` and writes it as a PNG.
///
/// # Errors
/// As [`render`]; [`Error::Output`] if the file cannot be encoded or written.
pub fn write_png(map: &Heatmap, path: &Path) -> Result<()> {
    let buf = render(map, path)?;
    let (w, h) = size(map.col_labels.len(), map.row_labels.len());
    let image = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| Error::Output {
        path: path.to_path_buf(),
        reason: "buffer size does not match the image".into(),
    })?;
    image
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| Error::Output {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// An RGB8 buffer to blit glyphs into (clipped at the edges); the heatmaps' and the trainer's
/// loss plot's text.
#[derive(Debug)]
pub struct Canvas<'a> {
    /// `w * h * 3` bytes, row-major.
    pub buf: &'a mut [u8],
    /// Width in pixels.
    pub w: u32,
    /// Height in pixels.
    pub h: u32,
}

impl Canvas<'_> {
    /// Writes `text` in 8×8 glyphs with its top-left corner at `(x, y)`.
    pub fn text(&mut self, x: u32, y: u32, text: &str, ink: [u8; 3]) {
        for (i, ch) in text.chars().enumerate() {
            let code = if ch.is_ascii() {
                ch as usize
            } else {
                '?' as usize
            };
            let glyph = font8x8::legacy::BASIC_LEGACY[code];
            let gx = x + i as u32 * GLYPH;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8u32 {
                    if bits >> col & 1 == 1 {
                        self.put(gx + col, y + row as u32, ink);
                    }
                }
            }
        }
    }

    fn put(&mut self, x: u32, y: u32, ink: [u8; 3]) {
        if x < self.w && y < self.h {
            let i = ((y * self.w + x) * 3) as usize;
            self.buf[i..i + 3].copy_from_slice(&ink);
        }
    }
}
