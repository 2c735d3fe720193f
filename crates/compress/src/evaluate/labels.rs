//! Ground truth from disk: YOLO text labels (one file per image) and COCO instances files.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use kestrel_core::geometry::ImageBox;
use serde::Deserialize;

use super::{EvaluateError, Truth};

/// Where the YOLO label file of `image` is: `<dir>/<image stem>.txt`.
pub fn yolo_label_path(dir: &Path, image: &Path) -> PathBuf {
    let stem = image.file_stem().unwrap_or(image.as_os_str());
    dir.join(stem).with_extension("txt")
}

/// Parse a YOLO label file's text: one `class cx cy w h` line per box, the centre and size normalised to the
/// image (`0..=1`), scaled here by `width` x `height`. Blank lines are skipped; a line with another number of
/// fields, a class that is not a non-negative integer, or a coordinate that is not a finite number (or a
/// negative size) is an error naming `path` and the line. Boxes are not clipped to the image.
pub fn parse_yolo_labels(path: &Path, text: &str, width: u32, height: u32) -> Result<Vec<Truth>, EvaluateError> {
    let (w, h) = (width as f32, height as f32);
    let mut truths = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |reason: String| EvaluateError::YoloLine {
            path: path.to_path_buf(),
            line: i + 1,
            reason,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [class, rest @ ..] = fields.as_slice() else {
            continue;
        };
        if rest.len() != 4 {
            return Err(bad(format!("{} fields, expected 5: class cx cy w h", fields.len())));
        }
        let class_id: u32 = class
            .parse()
            .map_err(|_| bad(format!("class `{class}` is not a non-negative integer")))?;
        let mut v = [0.0f32; 4];
        for (slot, s) in v.iter_mut().zip(rest) {
            *slot = s
                .parse::<f32>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| bad(format!("`{s}` is not a number")))?;
        }
        let [cx, cy, bw, bh] = v;
        if bw < 0.0 || bh < 0.0 {
            return Err(bad("negative box size".into()));
        }
        truths.push(Truth {
            class_id,
            bbox: ImageBox::from_cxcywh(cx * w, cy * h, bw * w, bh * h),
            score: None,
        });
    }
    Ok(truths)
}

/// Read a YOLO label file (see [`parse_yolo_labels`]). A file that does not exist means an image with no
/// objects, as in Ultralytics' datasets (logged as a warning); any other read error is an error.
pub fn load_yolo_labels(path: &Path, width: u32, height: u32) -> Result<Vec<Truth>, EvaluateError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_yolo_labels(path, &text, width, height),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log::warn!("no labels {}: taking the image as having no objects", path.display());
            Ok(Vec::new())
        }
        Err(source) => Err(EvaluateError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[derive(Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
}

#[derive(Deserialize)]
struct CocoAnnotation {
    image_id: u64,
    category_id: u64,
    bbox: [f64; 4],
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Deserialize)]
struct CocoCategory {
    id: u64,
    name: String,
}

/// A name compared loosely: lower case, letters and digits only (`dining table` = `diningtable`).
fn normalise(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The base name of a COCO `file_name` (which may carry directories, `/` or `\` separated).
fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

/// Ground truth from a COCO instances file (`images`, `annotations`, `categories`), looked up by image file
/// name.
///
/// - Images are found by base name: `file_name`'s last path component against the image path's. Two images
///   of the file with the same base name make that name ambiguous (an error when looked up); an image that
///   the file does not list is an error.
/// - `bbox` is `[x, y, w, h]` in pixels and becomes `[x, y, x + w, y + h]`.
/// - COCO's category ids (1..=90 with gaps for COCO itself) are mapped to the model's class indices: a
///   category whose name equals one of the model's labels (compared as lower-case letters and digits, so
///   `traffic light` = `trafficlight`) is that class; any other takes its position in `categories`, which is
///   right for a file listing the model's classes in the model's order (COCO's own 80 against Darknet's names,
///   `motorcycle` = `motorbike`), and is allowed only when the file lists exactly as many categories as the
///   model has classes (or the model names none). Two categories mapped to one class are an error.
/// - Crowd annotations (`iscrowd: 1`) are dropped: there are no ignore regions here, so a detection on a
///   crowd counts as a false positive, where pycocotools would ignore it.
#[derive(Debug)]
pub struct CocoLabels {
    path: PathBuf,
    by_name: HashMap<String, Vec<Truth>>,
    ambiguous: HashSet<String>,
    /// `(category id, class index)` per category, in the file's order.
    pub categories: Vec<(u64, u32)>,
}

impl CocoLabels {
    /// Read and parse a COCO instances file; `labels` are the model's class names.
    pub fn load(path: &Path, labels: &[String]) -> Result<Self, EvaluateError> {
        let text = std::fs::read_to_string(path).map_err(|source| EvaluateError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text, labels)
    }

    /// Parse a COCO instances file's text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str, labels: &[String]) -> Result<Self, EvaluateError> {
        let file: CocoFile = serde_json::from_str(text).map_err(|source| EvaluateError::CocoJson {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |reason: String| EvaluateError::Coco {
            path: path.to_path_buf(),
            reason,
        };
        let names: Vec<String> = labels.iter().map(|l| normalise(l)).collect();
        let by_position_ok = labels.is_empty() || file.categories.len() == labels.len();
        let mut class_of = HashMap::new();
        let mut taken: HashMap<u32, &str> = HashMap::new();
        let mut categories = Vec::with_capacity(file.categories.len());
        for (position, c) in file.categories.iter().enumerate() {
            let wanted = normalise(&c.name);
            let class = match names.iter().position(|n| *n == wanted) {
                Some(i) => i,
                None if by_position_ok => {
                    log::info!(
                        "{}: category `{}` (id {}) is none of the model's labels: class {position} by its position",
                        path.display(),
                        c.name,
                        c.id
                    );
                    position
                }
                None => {
                    return Err(bad(format!(
                        "category `{}` (id {}) is none of the model's labels, and its position cannot stand in: the \
                         file lists {} categories, the model has {} classes",
                        c.name,
                        c.id,
                        file.categories.len(),
                        labels.len()
                    )))
                }
            };
            let class = u32::try_from(class).map_err(|_| bad(format!("category `{}`: too many categories", c.name)))?;
            if let Some(other) = taken.insert(class, &c.name) {
                return Err(bad(format!(
                    "categories `{other}` and `{}` both map to the model's class {class}",
                    c.name
                )));
            }
            if class_of.insert(c.id, class).is_some() {
                return Err(bad(format!("category id {} is listed twice", c.id)));
            }
            categories.push((c.id, class));
        }
        let mut by_id: HashMap<u64, Vec<Truth>> = HashMap::new();
        for a in &file.annotations {
            if a.iscrowd != 0 {
                continue;
            }
            let &class_id = class_of.get(&a.category_id).ok_or_else(|| {
                bad(format!(
                    "an annotation has category_id {}, not in `categories`",
                    a.category_id
                ))
            })?;
            let [x, y, w, h] = a.bbox;
            by_id.entry(a.image_id).or_default().push(Truth {
                class_id,
                bbox: ImageBox::new([x as f32, y as f32, (x + w) as f32, (y + h) as f32]),
                score: None,
            });
        }
        let mut by_name = HashMap::new();
        let mut ambiguous = HashSet::new();
        for img in &file.images {
            let name = base_name(&img.file_name).to_string();
            let truths = by_id.remove(&img.id).unwrap_or_default();
            if by_name.insert(name.clone(), truths).is_some() {
                ambiguous.insert(name);
            }
        }
        if let Some(id) = by_id.keys().next() {
            return Err(bad(format!("annotations refer to image_id {id}, not in `images`")));
        }
        Ok(Self {
            path: path.to_path_buf(),
            by_name,
            ambiguous,
            categories,
        })
    }

    /// The truth of `image`, found by its file name.
    pub fn truths_for(&self, image: &Path) -> Result<&[Truth], EvaluateError> {
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if self.ambiguous.contains(&name) {
            return Err(EvaluateError::Coco {
                path: self.path.clone(),
                reason: format!("several images are named {name}"),
            });
        }
        self.by_name
            .get(&name)
            .map(Vec::as_slice)
            .ok_or_else(|| EvaluateError::MissingImage {
                path: self.path.clone(),
                image: image.display().to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["person", "bicycle", "motorbike", "dining table"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    #[test]
    fn yolo_lines_scale_to_pixels() {
        let t = parse_yolo_labels(
            Path::new("a.txt"),
            "0 0.5 0.5 0.5 0.25\n\n 3 0.25 0.75 0.1 0.1 \n",
            200,
            100,
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].bbox, ImageBox::new([50.0, 37.5, 150.0, 62.5]));
        assert_eq!(t[1].class_id, 3);
        assert_eq!(t[1].score, None);
    }

    #[test]
    fn yolo_errors_name_the_file_and_line() {
        let e = parse_yolo_labels(Path::new("lab/a.txt"), "0 0.5 0.5 0.5 0.5\n1 0.5 0.5 0.5\n", 10, 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            "labels lab/a.txt, line 2: 4 fields, expected 5: class cx cy w h"
        );
        let e = parse_yolo_labels(Path::new("a.txt"), "x 0.5 0.5 0.5 0.5", 10, 10).unwrap_err();
        assert!(e.to_string().contains("class `x`"), "{e}");
        let e = parse_yolo_labels(Path::new("a.txt"), "1 0.5 nan 0.5 0.5", 10, 10).unwrap_err();
        assert!(e.to_string().contains("`nan` is not a number"), "{e}");
    }

    #[test]
    fn yolo_label_path_is_the_stem() {
        assert_eq!(
            yolo_label_path(Path::new("/l"), Path::new("/img/dog.jpg")),
            PathBuf::from("/l/dog.txt")
        );
    }

    #[test]
    fn missing_yolo_file_is_an_empty_image_but_a_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_yolo_labels(&dir.path().join("none.txt"), 10, 10)
            .unwrap()
            .is_empty());
        let e = load_yolo_labels(dir.path(), 10, 10).unwrap_err();
        assert!(matches!(e, EvaluateError::Read { .. }), "{e}");
    }

    const COCO: &str = r#"{
        "images": [{"id": 7, "file_name": "val/dog.jpg", "width": 10, "height": 10},
                   {"id": 8, "file_name": "cat.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 4, "bbox": [1, 2, 3, 4], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5]},
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 9, 9], "iscrowd": 1},
            {"id": 4, "image_id": 7, "category_id": 67, "bbox": [2, 2, 2, 2]}
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"},
                       {"id": 4, "name": "motorcycle"}, {"id": 67, "name": "diningtable"}]
    }"#;

    #[test]
    fn coco_maps_by_name_then_position() {
        let c = CocoLabels::parse(Path::new("i.json"), COCO, &labels()).unwrap();
        assert_eq!(c.categories, vec![(1, 0), (2, 1), (4, 2), (67, 3)]);
        let t = c.truths_for(Path::new("/photos/dog.jpg")).unwrap();
        assert_eq!(t.len(), 3, "the crowd is dropped");
        assert_eq!(t[0].class_id, 2);
        assert_eq!(t[0].bbox, ImageBox::new([1.0, 2.0, 4.0, 6.0]));
        assert_eq!(t[1].class_id, 0);
        assert_eq!(t[2].class_id, 3);
        assert!(c.truths_for(Path::new("cat.jpg")).unwrap().is_empty());
        let e = c.truths_for(Path::new("cow.jpg")).unwrap_err();
        assert_eq!(e.to_string(), "labels i.json have no image named cow.jpg");
    }

    #[test]
    fn coco_position_needs_as_many_categories_as_classes() {
        let mut more = labels();
        more.push("car".into());
        let e = CocoLabels::parse(Path::new("i.json"), COCO, &more).unwrap_err();
        assert!(
            e.to_string()
                .contains("category `motorcycle` (id 4) is none of the model's labels"),
            "{e}"
        );
    }

    #[test]
    fn coco_errors_name_the_file() {
        let e = CocoLabels::parse(Path::new("bad.json"), "{", &labels()).unwrap_err();
        assert!(
            e.to_string().starts_with("labels bad.json: not a COCO instances file"),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
        let clash = COCO.replace("motorcycle", "person");
        let e = CocoLabels::parse(Path::new("i.json"), &clash, &labels()).unwrap_err();
        assert!(e.to_string().contains("both map to the model's class 0"), "{e}");
        let e = CocoLabels::load(Path::new("/nonexistent/i.json"), &labels()).unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read labels /nonexistent/i.json"),
            "{e}"
        );
    }

    #[test]
    fn coco_duplicate_base_names_are_ambiguous() {
        let dup = COCO.replace("\"cat.jpg\"", "\"other/dog.jpg\"");
        let c = CocoLabels::parse(Path::new("i.json"), &dup, &labels()).unwrap();
        let e = c.truths_for(Path::new("dog.jpg")).unwrap_err();
        assert!(e.to_string().contains("several images are named dog.jpg"), "{e}");
    }
}
