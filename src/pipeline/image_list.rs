//! Caffe image lists (`path label` per line), as read by `convert_imageset`
//! and the ImageData layer: the line is split at its *last* space, so paths
//! may contain spaces. CRLF endings and trailing blanks are tolerated.
use crate::error::{Error, IoContext, Result};
use std::path::Path;

/// One usable line of a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListEntry {
    /// 1-based line number in the file, for messages.
    pub line: usize,
    /// The path exactly as written (relative to the root folder).
    pub path: String,
    /// The integer label.
    pub label: i32,
}

/// Parses list text; `source` names the file in errors. Blank lines are skipped.
pub fn parse_list(text: &str, source: &Path) -> Result<Vec<ListEntry>> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_end();
        if line.is_empty() {
            continue;
        }
        let bad = |message: String| Error::Line {
            path: source.to_path_buf(),
            line: i + 1,
            message,
        };
        let (path, label) = line
            .rsplit_once(' ')
            .ok_or_else(|| bad(format!("expected `path label`, found {line:?}")))?;
        let label: i32 = label
            .parse()
            .map_err(|_| bad(format!("label {label:?} is not an integer")))?;
        if path.is_empty() {
            return Err(bad("empty image path".into()));
        }
        out.push(ListEntry {
            line: i + 1,
            path: path.to_string(),
            label,
        });
    }
    Ok(out)
}

/// Reads and parses the list file at `path`.
pub fn read_list(path: &Path) -> Result<Vec<ListEntry>> {
    let text = std::fs::read_to_string(path).at(path)?;
    parse_list(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_last_space_and_tolerates_crlf() {
        let l = parse_list("a b/c d.jpg 3\r\nx.png 0  \n\n", Path::new("l")).unwrap();
        assert_eq!(l[0].path, "a b/c d.jpg");
        assert_eq!(l[0].label, 3);
        assert_eq!((l[1].path.as_str(), l[1].label, l[1].line), ("x.png", 0, 2));
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn malformed_lines_name_the_line() {
        let e = parse_list("ok.jpg 1\nnolabel\n", Path::new("list.txt")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "list.txt:2: expected `path label`, found \"nolabel\""
        );
        let e = parse_list("a.jpg x\n", Path::new("list.txt")).unwrap_err();
        assert!(e.to_string().contains("list.txt:1: label \"x\""));
    }
}
