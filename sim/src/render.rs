//! Rendering: pinhole cameras derived from a [`vision::Rig`] and a per-pixel ray caster over
//! flat, flat-colored primitives lying in horizontal planes above the table.
//!
//! # Camera model
//! The rig describes each camera at its native resolution (640x480 for `edge-3cam`). The task
//! renders what the model sees after `vision`'s preprocessing: the centre crop to the output
//! aspect ratio followed by a resize to `image_size`. Both are affine in pixel coordinates, so
//! the render camera is the rig camera with `fx' = fx / s`, `cx' = (cx - x0) / s` (and the same
//! for y), where `(x0, y0, w, h)` is [`PreprocessConfig::crop_box`] and `s = w / width`.
//! Pixel coordinates are continuous with pixel `i` covering `[i, i + 1)`, so pixel `(i, j)` is
//! sampled along the ray through `(i + 0.5, j + 0.5)` (the convention of the preprocess's
//! resize, whose output pixel `o` is centred at source `x0 + (o + 0.5) s`).
//!
//! # Rasterization
//! Every primitive is a disc, capsule or rectangle in the plane `z = table_height + height`.
//! For each pixel the ray is intersected with each primitive's plane, highest plane first, and
//! the first primitive containing the hit point colors the pixel; below them come the table
//! top, the floor (`z = 0`) and the background (rays that hit neither). No shading, no
//! antialiasing: every primitive's color appears exactly, which the tests rely on.

use nalgebra::{Isometry3, Point3, Vector3};
use vision::{Camera, Crop, PreprocessConfig};

/// RGB8 color.
pub type Rgb = [u8; 3];

/// Background (above the horizon / beyond the floor).
pub const BACKGROUND: Rgb = [196, 204, 214];
/// Floor (`z = 0`).
pub const FLOOR: Rgb = [62, 62, 68];
/// Table top.
pub const TABLE: Rgb = [156, 116, 76];
/// The K target pads.
pub const PAD: Rgb = [214, 206, 188];
/// The arm's base.
pub const BASE: Rgb = [38, 38, 46];
/// Arm links.
pub const LINK: Rgb = [70, 92, 132];
/// The elbow joint.
pub const ELBOW: Rgb = [48, 58, 88];
/// The gripper, open (before the go phase).
pub const GRIPPER_OPEN: Rgb = [24, 24, 24];
/// The gripper, closed (go phase).
pub const GRIPPER_CLOSED: Rgb = [120, 120, 120];

/// A pinhole camera at the task's image size.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderCamera {
    /// Camera name from the rig.
    pub name: String,
    /// Image width, pixels.
    pub width: u32,
    /// Image height, pixels.
    pub height: u32,
    /// Focal length x at the render size, pixels.
    pub fx: f64,
    /// Focal length y at the render size, pixels.
    pub fy: f64,
    /// Principal point x at the render size, pixels.
    pub cx: f64,
    /// Principal point y at the render size, pixels.
    pub cy: f64,
    /// Camera pose in the world (robot) frame: maps camera coordinates to world coordinates.
    pub pose: Isometry3<f64>,
    /// World-frame ray direction of every pixel, row-major (not normalized).
    rays: Vec<Vector3<f64>>,
}

impl RenderCamera {
    /// The render camera for a rig camera at `width x height` (crop and scale as the
    /// preprocess's centre crop; see the module docs).
    pub fn from_rig(cam: &Camera, width: u32, height: u32) -> Self {
        let pre = PreprocessConfig {
            width,
            height,
            crop: Crop::Center,
            ..PreprocessConfig::default()
        };
        let (x0, y0, cw, ch) = pre.crop_box(cam.width, cam.height);
        let sx = f64::from(cw) / f64::from(width);
        let sy = f64::from(ch) / f64::from(height);
        let k = cam.intrinsics;
        let (fx, fy) = (k.fx / sx, k.fy / sy);
        let (cx, cy) = ((k.cx - f64::from(x0)) / sx, (k.cy - f64::from(y0)) / sy);
        let mut rays = Vec::with_capacity(width as usize * height as usize);
        for j in 0..height {
            for i in 0..width {
                let d = Vector3::new(
                    (f64::from(i) + 0.5 - cx) / fx,
                    (f64::from(j) + 0.5 - cy) / fy,
                    1.0,
                );
                rays.push(cam.pose.rotation * d);
            }
        }
        Self {
            name: cam.name.clone(),
            width,
            height,
            fx,
            fy,
            cx,
            cy,
            pose: cam.pose,
            rays,
        }
    }

    /// Projects a world point to continuous pixel coordinates `[u, v]` (pixel `i` covers
    /// `[i, i + 1)`); `None` behind the camera. The point may fall outside the image.
    pub fn project(&self, p: &Point3<f64>) -> Option<[f64; 2]> {
        let c = self.pose.inverse_transform_point(p);
        (c.z > 1e-9).then(|| [self.fx * c.x / c.z + self.cx, self.fy * c.y / c.z + self.cy])
    }

    /// Camera centre in the world frame.
    pub fn origin(&self) -> Point3<f64> {
        Point3::from(self.pose.translation.vector)
    }

    /// Where pixel `idx`'s ray meets the plane `z = plane_z`, if it does in front of the camera.
    fn hit(&self, idx: usize, plane_z: f64) -> Option<[f64; 2]> {
        let o = self.pose.translation.vector;
        let d = self.rays[idx];
        if d.z.abs() < 1e-12 {
            return None;
        }
        let t = (plane_z - o.z) / d.z;
        (t > 0.0).then(|| [o.x + t * d.x, o.y + t * d.y])
    }
}

/// A 2D shape in a horizontal plane.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shape {
    /// Disc: centre, radius.
    Disc {
        /// Centre `[x, y]`, metres.
        c: [f64; 2],
        /// Radius, metres.
        r: f64,
    },
    /// Segment `a`–`b` thickened by `r` (a capsule).
    Capsule {
        /// One end.
        a: [f64; 2],
        /// The other end.
        b: [f64; 2],
        /// Half-width, metres.
        r: f64,
    },
    /// Axis-aligned rectangle: centre and half extents.
    Rect {
        /// Centre.
        c: [f64; 2],
        /// Half extents `[hx, hy]`.
        half: [f64; 2],
    },
}

impl Shape {
    /// Whether `p` lies inside (boundary included).
    pub fn contains(&self, p: [f64; 2]) -> bool {
        match *self {
            Self::Disc { c, r } => (p[0] - c[0]).powi(2) + (p[1] - c[1]).powi(2) <= r * r,
            Self::Capsule { a, b, r } => {
                let (abx, aby) = (b[0] - a[0], b[1] - a[1]);
                let (apx, apy) = (p[0] - a[0], p[1] - a[1]);
                let len2 = abx * abx + aby * aby;
                let t = if len2 > 0.0 {
                    ((apx * abx + apy * aby) / len2).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                (apx - t * abx).powi(2) + (apy - t * aby).powi(2) <= r * r
            }
            Self::Rect { c, half } => {
                (p[0] - c[0]).abs() <= half[0] && (p[1] - c[1]).abs() <= half[1]
            }
        }
    }
}

/// A flat-colored shape at `height` metres above the table top.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prim {
    /// The shape.
    pub shape: Shape,
    /// Height of its plane above the table top, metres.
    pub height: f64,
    /// Its color.
    pub color: Rgb,
}

/// The static surroundings: the table top's extent and height.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Stage {
    pub(crate) table_height: f64,
    pub(crate) table: Shape,
}

/// Renders `prims` (any order; drawn highest plane first, ties in slice order) into `out`
/// (RGB8, `width * height * 3`, row-major).
pub(crate) fn render(cam: &RenderCamera, stage: &Stage, prims: &mut [Prim], out: &mut Vec<u8>) {
    prims.sort_by(|a, b| b.height.total_cmp(&a.height));
    let n = cam.width as usize * cam.height as usize;
    out.clear();
    out.reserve(n * 3);
    for idx in 0..n {
        let mut color = None;
        let mut last_h = f64::NAN;
        let mut hit = None;
        for p in prims.iter() {
            if p.height.to_bits() != last_h.to_bits() {
                last_h = p.height;
                hit = cam.hit(idx, stage.table_height + p.height);
            }
            if let Some(h) = hit
                && p.shape.contains(h)
            {
                color = Some(p.color);
                break;
            }
        }
        let color = color.unwrap_or_else(|| {
            match cam.hit(idx, stage.table_height) {
                Some(h) if stage.table.contains(h) => return TABLE,
                _ => {}
            }
            match cam.hit(idx, 0.0) {
                Some(_) => FLOOR,
                None => BACKGROUND,
            }
        });
        out.extend_from_slice(&color);
    }
}

/// How many pixels of `cam` see `shape` at `height` above the table, ignoring occlusion.
pub(crate) fn coverage(cam: &RenderCamera, stage: &Stage, shape: &Shape, height: f64) -> usize {
    (0..cam.width as usize * cam.height as usize)
        .filter(|&idx| {
            cam.hit(idx, stage.table_height + height)
                .is_some_and(|h| shape.contains(h))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capsule_and_rect_contain() {
        let cap = Shape::Capsule {
            a: [0.0, 0.0],
            b: [1.0, 0.0],
            r: 0.1,
        };
        assert!(cap.contains([0.5, 0.09]) && cap.contains([1.05, 0.0]));
        assert!(!cap.contains([0.5, 0.11]) && !cap.contains([1.11, 0.0]));
        let rect = Shape::Rect {
            c: [0.0, 0.0],
            half: [0.2, 0.1],
        };
        assert!(rect.contains([0.19, -0.09]) && !rect.contains([0.0, 0.11]));
    }
}
