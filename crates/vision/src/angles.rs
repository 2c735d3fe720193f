//! Angles of a detection from the camera's optical axis, from the camera intrinsics (pinhole + OpenCV's
//! Brown–Conrady distortion `k1 k2 p1 p2 k3`), as precision landing needs them. Pure functions.
//!
//! Conventions: angles in radians in the camera's image frame, `angle_x` positive to the right of the optical
//! axis, `angle_y` positive below it (image x right, y down), `angle = atan(normalised undistorted
//! coordinate)`. Box coordinates are continuous (pixel `i` spans `[i, i+1)`), OpenCV's intrinsics address pixel
//! centres, hence the half-pixel shift. Intrinsics calibrated at one resolution are scaled to the frame's.

use serde::Deserialize;
use thiserror::Error;

/// What is wrong with an `[intrinsics]` section (the config layer adds the file and field).
#[derive(Clone, Debug, Error, PartialEq)]
pub enum IntrinsicsError {
    #[error("fx and fy must be positive (got {fx} and {fy})")]
    Focal { fx: f64, fy: f64 },
    #[error("cx and cy must be finite")]
    Centre,
    #[error("width and height (the calibration's image size) must be set")]
    Size,
    #[error("distortion takes 4 or 5 finite coefficients [k1, k2, p1, p2(, k3)], got {0}")]
    Distortion(usize),
}

/// `[intrinsics]` in the config: a calibration (e.g. from OpenCV's `calibrateCamera`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IntrinsicsConfig {
    /// Focal lengths and principal point, pixels, at `width`×`height`.
    pub fx: f64,
    pub fy: f64,
    pub cx: f64,
    pub cy: f64,
    /// The image size the calibration was made at (frames of another size, same aspect, are scaled).
    pub width: u32,
    pub height: u32,
    /// OpenCV distortion coefficients `[k1, k2, p1, p2]` or `[k1, k2, p1, p2, k3]`; empty or absent: none.
    #[serde(default)]
    pub distortion: Vec<f64>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Intrinsics {
    fx: f64,
    fy: f64,
    cx: f64,
    cy: f64,
    width: f64,
    height: f64,
    k: [f64; 5],
}

impl Intrinsics {
    /// Validated intrinsics; `Err` names the problem (the config layer adds file and field).
    pub fn new(c: &IntrinsicsConfig) -> Result<Self, IntrinsicsError> {
        let pos = |v: f64| v.is_finite() && v > 0.0;
        if !pos(c.fx) || !pos(c.fy) {
            return Err(IntrinsicsError::Focal { fx: c.fx, fy: c.fy });
        }
        if !c.cx.is_finite() || !c.cy.is_finite() {
            return Err(IntrinsicsError::Centre);
        }
        if c.width == 0 || c.height == 0 {
            return Err(IntrinsicsError::Size);
        }
        if !matches!(c.distortion.len(), 0 | 4 | 5) || c.distortion.iter().any(|d| !d.is_finite()) {
            return Err(IntrinsicsError::Distortion(c.distortion.len()));
        }
        let mut k = [0.0; 5];
        k[..c.distortion.len()].copy_from_slice(&c.distortion);
        Ok(Self {
            fx: c.fx,
            fy: c.fy,
            cx: c.cx,
            cy: c.cy,
            width: f64::from(c.width),
            height: f64::from(c.height),
            k,
        })
    }

    /// OpenCV's distortion model: undistorted normalised point → distorted normalised point.
    pub fn distort(&self, x: f64, y: f64) -> (f64, f64) {
        let [k1, k2, p1, p2, k3] = self.k;
        let r2 = x * x + y * y;
        let radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3));
        (
            x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x),
            y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y,
        )
    }

    /// Inverse of [`Self::distort`] by fixed-point iteration (as OpenCV's `undistortPoints`), stopping when
    /// the step is below 1e-12 or after 50 iterations.
    pub fn undistort(&self, xd: f64, yd: f64) -> (f64, f64) {
        if self.k == [0.0; 5] {
            return (xd, yd);
        }
        let [k1, k2, p1, p2, k3] = self.k;
        let (mut x, mut y) = (xd, yd);
        for _ in 0..50 {
            let r2 = x * x + y * y;
            let radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3));
            let dx = 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x);
            let dy = p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y;
            let (nx, ny) = ((xd - dx) / radial, (yd - dy) / radial);
            let step = (nx - x).abs() + (ny - y).abs();
            (x, y) = (nx, ny);
            if step < 1e-12 {
                break;
            }
        }
        (x, y)
    }

    /// `[angle_x, angle_y]` of image point (`u`, `v`) (continuous pixel coordinates) in a `img_w`×`img_h`
    /// frame.
    pub fn angles(&self, u: f64, v: f64, img_w: u32, img_h: u32) -> [f32; 2] {
        let (sx, sy) = (f64::from(img_w) / self.width, f64::from(img_h) / self.height);
        // Continuous → OpenCV pixel-centre coordinates at the calibration resolution.
        let (uc, vc) = (u / sx - 0.5, v / sy - 0.5);
        let (xd, yd) = ((uc - self.cx) / self.fx, (vc - self.cy) / self.fy);
        let (x, y) = self.undistort(xd, yd);
        [x.atan() as f32, y.atan() as f32]
    }

    /// Angles of a box's centre.
    pub fn box_angles(&self, b: &kestrel_core::geometry::ImageBox, img_w: u32, img_h: u32) -> [f32; 2] {
        let u = (f64::from(b[0]) + f64::from(b[2])) / 2.0;
        let v = (f64::from(b[1]) + f64::from(b[3])) / 2.0;
        self.angles(u, v, img_w, img_h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cam(distortion: Vec<f64>) -> Intrinsics {
        Intrinsics::new(&IntrinsicsConfig {
            fx: 500.0,
            fy: 480.0,
            cx: 319.5,
            cy: 239.5,
            width: 640,
            height: 480,
            distortion,
        })
        .unwrap()
    }

    #[test]
    fn pinhole_angles_at_known_pixels() {
        let c = cam(vec![]);
        // The principal point (pixel centre 319.5 → continuous 320.0) is on the axis.
        assert_eq!(c.angles(320.0, 240.0, 640, 480), [0.0, 0.0]);
        // 250 px right of it with fx 500: atan(0.5); 120 px up with fy 480: -atan(0.25).
        let [ax, ay] = c.angles(570.0, 120.0, 640, 480);
        assert!((f64::from(ax) - 0.5f64.atan()).abs() < 1e-6, "{ax}");
        assert!((f64::from(ay) + 0.25f64.atan()).abs() < 1e-6, "{ay}");
        // The same point on a 1280x960 frame (calibrated at 640x480): same angles.
        let [bx, by] = c.angles(1140.0, 240.0, 1280, 960);
        assert!((bx - ax).abs() < 1e-6 && (by - ay).abs() < 1e-6, "{bx} {by}");
        // Box centre.
        assert_eq!(
            c.box_angles(
                &kestrel_core::geometry::ImageBox::new([300.0, 200.0, 340.0, 280.0]),
                640,
                480
            ),
            [0.0, 0.0]
        );
    }

    #[test]
    fn distorted_pixels_give_the_undistorted_angles() {
        // Typical wide-angle lens: strong barrel distortion plus some tangential.
        let c = cam(vec![-0.28, 0.07, 0.001, -0.0005, -0.008]);
        for &(x, y) in &[(0.0, 0.0), (0.3, -0.2), (-0.55, 0.4), (0.7, 0.5), (-0.1, 0.05)] {
            let (xd, yd) = c.distort(x, y);
            // to continuous pixels at the calibration size
            let (u, v) = (xd * 500.0 + 319.5 + 0.5, yd * 480.0 + 239.5 + 0.5);
            let [ax, ay] = c.angles(u, v, 640, 480);
            assert!((f64::from(ax) - f64::atan(x)).abs() < 1e-6, "({x},{y}): {ax}");
            assert!((f64::from(ay) - f64::atan(y)).abs() < 1e-6, "({x},{y}): {ay}");
            if (x, y) != (0.0, 0.0) {
                // and distortion matters: ignoring it would be off
                let naive = cam(vec![]).angles(u, v, 640, 480);
                assert!((f64::from(naive[0]) - f64::atan(x)).abs() > 1e-4, "({x},{y})");
            }
        }
    }

    #[test]
    fn bad_intrinsics_are_refused() {
        let mut c = IntrinsicsConfig {
            fx: 0.0,
            fy: 1.0,
            cx: 0.0,
            cy: 0.0,
            width: 1,
            height: 1,
            distortion: vec![],
        };
        assert!(Intrinsics::new(&c).unwrap_err().to_string().contains("fx"));
        c.fx = 1.0;
        c.distortion = vec![0.1, 0.2, 0.3];
        assert!(Intrinsics::new(&c).unwrap_err().to_string().contains("4 or 5"));
        c.distortion = vec![];
        c.width = 0;
        assert!(Intrinsics::new(&c).unwrap_err().to_string().contains("width"));
    }
}
