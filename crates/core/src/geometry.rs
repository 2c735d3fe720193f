//! Points and boxes typed by the coordinate space they are in.
//!
//! A detector sees a letterboxed copy of the frame: its boxes are in *model* pixels (the network's input,
//! padding included); everything published is in *image* pixels (the frame as captured). The two are easy to
//! mix up and a mix-up is off by the letterbox's scale and padding, so each has its own type and the only
//! way from one to the other is a named transform (`Letterbox::image_box_from_model` and friends in the
//! vision crate).

use std::marker::PhantomData;
use std::ops::Index;

/// Model-input pixels: the letterboxed tensor the network sees, padding included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Model;

/// Source-image pixels: the frame as the camera (or file) delivered it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Image;

/// A point `[x, y]` in space `S`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Point<S>(pub [f32; 2], PhantomData<S>);

/// An axis-aligned box `[x1, y1, x2, y2]` in space `S`. Serialises as the bare array.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BoxXyxy<S>(pub [f32; 4], PhantomData<S>);

pub type ModelPoint = Point<Model>;
pub type ImagePoint = Point<Image>;
pub type ModelBox = BoxXyxy<Model>;
pub type ImageBox = BoxXyxy<Image>;

impl<S> Point<S> {
    pub const fn new(xy: [f32; 2]) -> Self {
        Self(xy, PhantomData)
    }
    pub fn x(&self) -> f32 {
        self.0[0]
    }
    pub fn y(&self) -> f32 {
        self.0[1]
    }
}

impl<S> BoxXyxy<S> {
    pub const fn new(xyxy: [f32; 4]) -> Self {
        Self(xyxy, PhantomData)
    }
    /// From centre and size.
    pub fn from_cxcywh(cx: f32, cy: f32, w: f32, h: f32) -> Self {
        Self::new([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0])
    }
    pub fn xyxy(&self) -> [f32; 4] {
        self.0
    }
    pub fn top_left(&self) -> Point<S> {
        Point::new([self.0[0], self.0[1]])
    }
    pub fn bottom_right(&self) -> Point<S> {
        Point::new([self.0[2], self.0[3]])
    }
    pub fn centre(&self) -> Point<S> {
        Point::new([(self.0[0] + self.0[2]) * 0.5, (self.0[1] + self.0[3]) * 0.5])
    }
    /// Area, 0 for an empty or inverted box.
    pub fn area(&self) -> f32 {
        (self.0[2] - self.0[0]).max(0.0) * (self.0[3] - self.0[1]).max(0.0)
    }
    /// Intersection over union with `other`; 0 when both are empty.
    pub fn iou(&self, other: &Self) -> f32 {
        let (a, b) = (self.0, other.0);
        let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
        let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
        let inter = w * h;
        let union = self.area() + other.area() - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }
}

impl<S> Index<usize> for BoxXyxy<S> {
    type Output = f32;
    fn index(&self, i: usize) -> &f32 {
        &self.0[i]
    }
}

impl<S> Index<usize> for Point<S> {
    type Output = f32;
    fn index(&self, i: usize) -> &f32 {
        &self.0[i]
    }
}

impl<S> serde::Serialize for BoxXyxy<S> {
    fn serialize<Z: serde::Serializer>(&self, s: Z) -> Result<Z::Ok, Z::Error> {
        self.0.serialize(s)
    }
}

impl<'de, S> serde::Deserialize<'de> for BoxXyxy<S> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <[f32; 4]>::deserialize(d).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn iou_of_known_boxes() {
        let a = ImageBox::new([0.0, 0.0, 10.0, 10.0]);
        let b = ImageBox::new([5.0, 0.0, 15.0, 10.0]);
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(ImageBox::default().iou(&ImageBox::default()), 0.0);
    }

    proptest! {
        #[test]
        fn iou_is_symmetric_and_in_unit_range(
            x in -100f32..100.0, y in -100f32..100.0, w in 0f32..50.0, h in 0f32..50.0,
            u in -100f32..100.0, v in -100f32..100.0, p in 0f32..50.0, q in 0f32..50.0,
        ) {
            let a = ModelBox::new([x, y, x + w, y + h]);
            let b = ModelBox::new([u, v, u + p, v + q]);
            let (ab, ba) = (a.iou(&b), b.iou(&a));
            prop_assert!((ab - ba).abs() < 1e-6);
            prop_assert!((0.0..=1.0 + 1e-6).contains(&ab));
        }

        #[test]
        fn centre_size_round_trips(cx in -500f32..500.0, cy in -500f32..500.0, w in 0f32..300.0, h in 0f32..300.0) {
            let b = ImageBox::from_cxcywh(cx, cy, w, h);
            let c = b.centre();
            prop_assert!((c.x() - cx).abs() < 1e-3 && (c.y() - cy).abs() < 1e-3);
            prop_assert!((b.area() - w * h).abs() <= 1e-3 * (1.0 + w * h));
        }
    }
}
