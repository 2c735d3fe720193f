//! What the pipeline publishes for one object: a class, a score and a box in image pixels.

use crate::geometry::ImageBox;

/// One detection in source-image pixels, after NMS. (Before NMS, in model pixels, the vision crate's
/// `yolo::Candidate`; with its label resolved for people, the inference crate's `detect::LabelledDetection`.)
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Detection {
    pub class_id: u32,
    pub score: f32,
    /// Clipped to the image.
    pub bbox: ImageBox,
}
