//! Two models' detections (or labels and a model's detections) drawn on one image, with a legend, so that
//! a person can see where they disagree.
//!
//! The reference's boxes are green, drawn as a 2-pixel ring just *outside* each box; the model's are
//! magenta, a 2-pixel ring just *inside*: two identical boxes show both colours side by side instead of one
//! hiding the other. Captions (8x8 bitmap glyphs from `font8x8`, black on the box's colour) sit above a
//! reference box and below a model box. The legend, top left, shows each colour beside its name.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use kestrel_core::geometry::ImageBox;
use kestrel_infer::detect::LabelledDetection;
use thiserror::Error;

use crate::evaluate::Truth;

/// The reference's (or the labels') colour.
pub const REFERENCE_COLOUR: Rgb<u8> = Rgb([0, 230, 0]);
/// The evaluated model's colour.
pub const MODEL_COLOUR: Rgb<u8> = Rgb([255, 0, 255]);
/// Box outline width in pixels.
pub const LINE_WIDTH: i64 = 2;
const TEXT: Rgb<u8> = Rgb([0, 0, 0]);
const LEGEND_BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const GLYPH: i64 = 8;

#[derive(Debug, Error)]
pub enum AnnotateError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot decode {path}: {source}")]
    Decode { path: PathBuf, source: image::ImageError },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: image::ImageError },
}

/// One box to draw and its caption (empty for none).
#[derive(Clone, Debug, PartialEq)]
pub struct Mark {
    pub bbox: ImageBox,
    pub caption: String,
}

impl Mark {
    /// A detection, captioned `label 0.87`.
    pub fn detection(d: &LabelledDetection) -> Self {
        Self {
            bbox: d.bbox,
            caption: format!("{} {:.2}", d.label, d.score),
        }
    }

    /// A truth, captioned with its label, and its score when it has one (a reference detection).
    pub fn truth(t: &Truth, labels: &[String]) -> Self {
        let label = kestrel_vision::labels::label_for_str(labels, t.class_id);
        Self {
            bbox: t.bbox,
            caption: match t.score {
                Some(s) => format!("{label} {s:.2}"),
                None => label.to_string(),
            },
        }
    }
}

/// Glyph scale for an image: 1 up to 599 pixels on the short side, then one more per 300.
fn scale_for(image: &RgbImage) -> i64 {
    (i64::from(image.width().min(image.height())) / 300).max(1)
}

/// Fill `[x1, x2) x [y1, y2)`, clipped to the image.
fn fill(img: &mut RgbImage, x1: i64, y1: i64, x2: i64, y2: i64, c: Rgb<u8>) {
    let (w, h) = (i64::from(img.width()), i64::from(img.height()));
    for y in y1.max(0)..y2.min(h) {
        for x in x1.max(0)..x2.min(w) {
            // In range by the clipping above.
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// The ring between `[x1, x2) x [y1, y2)` and the same rectangle shrunk by `t` on each side.
fn ring(img: &mut RgbImage, [x1, y1, x2, y2]: [i64; 4], t: i64, c: Rgb<u8>) {
    fill(img, x1, y1, x2, y1 + t, c);
    fill(img, x1, y2 - t, x2, y2, c);
    fill(img, x1, y1, x1 + t, y2, c);
    fill(img, x2 - t, y1, x2, y2, c);
}

/// Text width in pixels at scale `s`.
fn text_width(text: &str, s: i64) -> i64 {
    text.chars().count() as i64 * GLYPH * s
}

/// Draw `text` with its top left at `(x, y)`, each glyph pixel an `s` x `s` square, clipped to the image.
fn text(img: &mut RgbImage, x: i64, y: i64, text: &str, s: i64, c: Rgb<u8>) {
    for (i, ch) in text.chars().enumerate() {
        let code = if ch.is_ascii() { ch as usize } else { '?' as usize };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        let gx = x + i as i64 * GLYPH * s;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..GLYPH {
                // font8x8 rows: bit 0 is the leftmost pixel.
                if bits >> col & 1 == 1 {
                    let (px, py) = (gx + col * s, y + row as i64 * s);
                    fill(img, px, py, px + s, py + s, c);
                }
            }
        }
    }
}

/// A caption on a filled background at `(x, y)`.
fn caption(img: &mut RgbImage, x: i64, y: i64, s: i64, caption: &str, background: Rgb<u8>) {
    let pad = s;
    fill(
        img,
        x,
        y,
        x + text_width(caption, s) + 2 * pad,
        y + GLYPH * s + 2 * pad,
        background,
    );
    text(img, x + pad, y + pad, caption, s, TEXT);
}

fn pixels(b: &ImageBox) -> [i64; 4] {
    b.xyxy().map(|v| v.round() as i64)
}

/// Draw `reference` and `model` on a copy of `image`, with a legend naming them `legend.0` and `legend.1`.
pub fn annotate(image: &RgbImage, reference: &[Mark], model: &[Mark], legend: (&str, &str)) -> RgbImage {
    let mut img = image.clone();
    let s = scale_for(&img);
    let t = LINE_WIDTH;
    let caption_h = GLYPH * s + 2 * s;
    let h = i64::from(img.height());
    for m in reference {
        let [x1, y1, x2, y2] = pixels(&m.bbox);
        ring(&mut img, [x1 - t, y1 - t, x2 + t, y2 + t], t, REFERENCE_COLOUR);
        if !m.caption.is_empty() {
            let y = if y1 - t - caption_h >= 0 {
                y1 - t - caption_h
            } else {
                y1
            };
            caption(&mut img, x1 - t, y, s, &m.caption, REFERENCE_COLOUR);
        }
    }
    for m in model {
        let [x1, y1, x2, y2] = pixels(&m.bbox);
        ring(&mut img, [x1, y1, x2, y2], t, MODEL_COLOUR);
        if !m.caption.is_empty() {
            let y = if y2 + caption_h <= h { y2 } else { y2.min(h) - caption_h };
            caption(&mut img, x1, y, s, &m.caption, MODEL_COLOUR);
        }
    }
    draw_legend(&mut img, s, legend);
    img
}

/// [`annotate`] with detections on both sides, captioned with label and score.
pub fn annotate_detections(
    image: &RgbImage,
    reference: &[LabelledDetection],
    model: &[LabelledDetection],
    legend: (&str, &str),
) -> RgbImage {
    let r: Vec<Mark> = reference.iter().map(Mark::detection).collect();
    let m: Vec<Mark> = model.iter().map(Mark::detection).collect();
    annotate(image, &r, &m, legend)
}

/// The legend's rectangle `[x1, y1, x2, y2)` at glyph scale `s` for these names.
fn legend_rect(s: i64, legend: (&str, &str)) -> [i64; 4] {
    let pad = 4 * s;
    let swatch = GLYPH * s;
    let longest = text_width(legend.0, s).max(text_width(legend.1, s));
    let (x, y) = (pad, pad);
    [
        x,
        y,
        x + pad + swatch + pad + longest + pad,
        y + pad + 2 * swatch + pad + pad,
    ]
}

fn draw_legend(img: &mut RgbImage, s: i64, legend: (&str, &str)) {
    let [x1, y1, x2, y2] = legend_rect(s, legend);
    let pad = 4 * s;
    let swatch = GLYPH * s;
    fill(img, x1, y1, x2, y2, LEGEND_BACKGROUND);
    ring(img, [x1, y1, x2, y2], 1, TEXT);
    for (row, (name, colour)) in [(legend.0, REFERENCE_COLOUR), (legend.1, MODEL_COLOUR)]
        .into_iter()
        .enumerate()
    {
        let y = y1 + pad + row as i64 * (swatch + pad);
        fill(img, x1 + pad, y, x1 + pad + swatch, y + swatch, colour);
        text(img, x1 + pad + swatch + pad, y, name, s, TEXT);
    }
}

/// Read and decode an image file (JPEG or PNG) as RGB.
pub fn load_rgb(path: &Path) -> Result<RgbImage, AnnotateError> {
    let bytes = std::fs::read(path).map_err(|source| AnnotateError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    image::load_from_memory(&bytes)
        .map(|i| i.to_rgb8())
        .map_err(|source| AnnotateError::Decode {
            path: path.to_path_buf(),
            source,
        })
}

/// Write an image, its format (PNG, JPEG) chosen by the file's extension.
pub fn save(image: &RgbImage, path: &Path) -> Result<(), AnnotateError> {
    image.save(path).map_err(|source| AnnotateError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GREY: Rgb<u8> = Rgb([100, 100, 100]);

    fn mark(b: [f32; 4], caption: &str) -> Mark {
        Mark {
            bbox: ImageBox::new(b),
            caption: caption.into(),
        }
    }

    #[test]
    fn boxes_have_their_colours_at_their_edges() {
        let bg = RgbImage::from_pixel(320, 240, GREY);
        let b = [100.0, 120.0, 200.0, 200.0];
        let img = annotate(&bg, &[mark(b, "")], &[mark(b, "")], ("ref", "model"));
        // Reference: the 2 pixels outside the left edge; model: the 2 inside.
        assert_eq!(*img.get_pixel(98, 160), REFERENCE_COLOUR);
        assert_eq!(*img.get_pixel(99, 160), REFERENCE_COLOUR);
        assert_eq!(*img.get_pixel(100, 160), MODEL_COLOUR);
        assert_eq!(*img.get_pixel(101, 160), MODEL_COLOUR);
        assert_eq!(*img.get_pixel(102, 160), GREY);
        assert_eq!(*img.get_pixel(150, 121), MODEL_COLOUR);
        assert_eq!(*img.get_pixel(150, 201), REFERENCE_COLOUR);
        // Inside and far away: untouched.
        assert_eq!(*img.get_pixel(150, 160), GREY);
        assert_eq!(*img.get_pixel(300, 20), GREY);
        // The input is not modified.
        assert_eq!(*bg.get_pixel(100, 160), GREY);
    }

    #[test]
    fn legend_shows_both_colours_and_text() {
        let bg = RgbImage::from_pixel(320, 240, GREY);
        let img = annotate(&bg, &[], &[], ("yolov3-tiny", "fp16"));
        let [x1, y1, x2, y2] = legend_rect(1, ("yolov3-tiny", "fp16"));
        let mut seen = std::collections::HashSet::new();
        for y in y1..y2 {
            for x in x1..x2 {
                let p = *img.get_pixel(x as u32, y as u32);
                assert_ne!(p, GREY, "legend pixel ({x}, {y}) is background");
                seen.insert(p);
            }
        }
        for c in [REFERENCE_COLOUR, MODEL_COLOUR, TEXT, LEGEND_BACKGROUND] {
            assert!(seen.contains(&c), "{c:?} missing from the legend");
        }
        assert_eq!(*img.get_pixel(x2 as u32 + 1, y1 as u32), GREY);
    }

    #[test]
    fn captions_are_drawn_and_boxes_at_the_border_are_clipped() {
        let bg = RgbImage::from_pixel(200, 100, GREY);
        let img = annotate(
            &bg,
            &[mark([150.0, 40.0, 260.0, 90.0], "dog 0.9")],
            &[mark([-5.0, 60.0, 50.0, 120.0], "cat")],
            ("a", "b"),
        );
        // The reference caption sits above its box: background of its colour with black glyph pixels.
        let strip: Vec<Rgb<u8>> = (148..200).map(|x| *img.get_pixel(x, 30)).collect();
        assert!(strip.contains(&REFERENCE_COLOUR) && strip.contains(&TEXT));
        // The model's box runs off the bottom: its caption goes inside, above the bottom edge.
        let strip: Vec<Rgb<u8>> = (0..30).map(|x| *img.get_pixel(x, 95)).collect();
        assert!(strip.contains(&MODEL_COLOUR) && strip.contains(&TEXT));
    }

    #[test]
    fn save_and_load_round_trip_png() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.png");
        let img = annotate(
            &RgbImage::from_pixel(64, 48, GREY),
            &[],
            &[mark([10.0, 10.0, 30.0, 30.0], "")],
            ("r", "m"),
        );
        save(&img, &p).unwrap();
        assert_eq!(load_rgb(&p).unwrap(), img);
        let e = load_rgb(&dir.path().join("none.png")).unwrap_err();
        assert!(e.to_string().contains("none.png"), "{e}");
    }
}
