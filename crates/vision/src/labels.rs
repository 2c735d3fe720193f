//! Class labels: from a names file (one label per line, Darknet/COCO style) or from the `names` metadata
//! entry that Ultralytics writes into its ONNX exports (`{0: 'person', 1: 'bicycle', …}`).

use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum LabelsError {
    #[error("cannot read labels file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("labels file {path} is empty")]
    Empty { path: PathBuf },
}

/// Read a names file: one label per line, blank lines ignored.
pub fn read_names_file(path: &Path) -> Result<Vec<String>, LabelsError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabelsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        return Err(LabelsError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(names)
}

/// Parse Ultralytics' `names` metadata: a Python dict literal of consecutive integer keys from 0 to
/// quoted strings. Returns `None` for anything else (the caller then falls back to other sources).
pub fn parse_names_metadata(text: &str) -> Option<Vec<String>> {
    let body = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut names = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once(':')?;
        if key.trim().parse::<usize>().ok()? != names.len() {
            return None;
        }
        let after = after.trim_start();
        let quote = after.chars().next().filter(|c| *c == '\'' || *c == '"')?;
        let close = after[1..].find(quote)? + 1;
        names.push(after[1..close].to_string());
        rest = after[close + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    (!names.is_empty()).then_some(names)
}

/// Label for a class id without allocating per call: the name, or `class<N>` (from a table built once, for
/// ids below 1000; `class?` beyond).
pub fn label_for_str(labels: &[String], class_id: u32) -> &str {
    match labels.get(class_id as usize) {
        Some(l) => l,
        None => unnamed(class_id),
    }
}

fn unnamed(class_id: u32) -> &'static str {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| (0..1000).map(|i| format!("class{i}")).collect());
    names.get(class_id as usize).map_or("class?", String::as_str)
}

/// Label for a class id, or `class<N>` when the list does not name it.
pub fn label_for(labels: &[String], class_id: u32) -> String {
    labels
        .get(class_id as usize)
        .cloned()
        .unwrap_or_else(|| format!("class{class_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ultralytics_names() {
        assert_eq!(
            parse_names_metadata("{0: 'person', 1: \"traffic light\", 2: 'it''s'}"),
            None,
            "a quote inside a name is not valid Python here"
        );
        assert_eq!(
            parse_names_metadata("{0: 'person', 1: \"traffic light\"}"),
            Some(vec!["person".to_string(), "traffic light".to_string()])
        );
        assert_eq!(parse_names_metadata("{0: 'a', 2: 'b'}"), None);
        assert_eq!(parse_names_metadata("{}"), None);
        assert_eq!(parse_names_metadata("[0, 1]"), None);
        assert_eq!(parse_names_metadata("{0: 'a',}"), Some(vec!["a".to_string()]));
    }

    #[test]
    fn names_file_and_fallback_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.names");
        std::fs::write(&p, "cat\n\ndog\n").unwrap();
        let names = read_names_file(&p).unwrap();
        assert_eq!(names, ["cat", "dog"]);
        assert_eq!(label_for(&names, 1), "dog");
        assert_eq!(label_for(&names, 7), "class7");
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(read_names_file(&p), Err(LabelsError::Empty { .. })));
        assert!(matches!(
            read_names_file(&dir.path().join("nope")),
            Err(LabelsError::Read { .. })
        ));
    }
}
