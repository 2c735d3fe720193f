//! Side-by-side drawings of two models' detections (to be written).
