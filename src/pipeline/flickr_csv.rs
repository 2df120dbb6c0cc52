//! The Flickr Style URL list (`index,image_url,page_url,label,_split`; gzip
//! or plain) and the subset `assemble_data.py` selects from it.
use super::numpy_rng::Mt19937;
use crate::error::{Error, IoContext, Result};
use std::io::Read;
use std::path::Path;

/// Which side of Caffe's split a row is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Goes to `train.txt`.
    Train,
    /// Goes to `test.txt`.
    Test,
}

/// One row of the CSV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StyleRow {
    /// The Flickr photo id (the CSV's index column).
    pub id: String,
    /// Where the image is.
    pub image_url: String,
    /// Style label, 0..19.
    pub label: i32,
    /// train or test.
    pub split: Split,
}

/// Parses the CSV bytes (gzip detected by its magic number); `source` names it in errors.
pub fn parse_csv(bytes: &[u8], source: &Path) -> Result<Vec<StyleRow>> {
    let mut text = Vec::new();
    let reader: Box<dyn Read + '_> = if bytes.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let mut reader = reader;
    reader
        .read_to_end(&mut text)
        .map_err(|e| Error::invalid(source.display(), format!("cannot decompress: {e}")))?;
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text.as_slice());
    let bad = |line: u64, message: String| Error::Line {
        path: source.to_path_buf(),
        line: line as usize,
        message,
    };
    let headers = csv.headers().map_err(|e| bad(1, e.to_string()))?.clone();
    let col = |name: &str| headers.iter().position(|h| h == name);
    let (Some(url_col), Some(label_col), Some(split_col)) =
        (col("image_url"), col("label"), col("_split"))
    else {
        return Err(bad(
            1,
            format!(
                "expected columns index,image_url,page_url,label,_split; found {:?}",
                headers.iter().collect::<Vec<_>>()
            ),
        ));
    };
    let mut rows = Vec::new();
    for rec in csv.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line());
            bad(line, format!("malformed CSV: {e}"))
        })?;
        let line = rec.position().map_or(0, |p| p.line());
        if rec.len() != headers.len() {
            return Err(bad(
                line,
                format!("expected {} fields, found {}", headers.len(), rec.len()),
            ));
        }
        let id = rec[0].trim().to_string();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(line, format!("index {:?} is not a Flickr id", &rec[0])));
        }
        let label: i32 = rec[label_col].trim().parse().map_err(|_| {
            bad(
                line,
                format!("label {:?} is not an integer", &rec[label_col]),
            )
        })?;
        let split = match rec[split_col].trim() {
            "train" => Split::Train,
            "test" => Split::Test,
            other => {
                return Err(bad(
                    line,
                    format!("_split {other:?} is neither train nor test"),
                ))
            }
        };
        let image_url = rec[url_col].trim().to_string();
        if !image_url.starts_with("http://") && !image_url.starts_with("https://") {
            return Err(bad(
                line,
                format!("image_url {image_url:?} is not an http(s) URL"),
            ));
        }
        rows.push(StyleRow {
            id,
            image_url,
            label,
            split,
        });
    }
    Ok(rows)
}

/// Reads the CSV at `path`.
pub fn read_csv(path: &Path) -> Result<Vec<StyleRow>> {
    let bytes = std::fs::read(path).at(path)?;
    parse_csv(&bytes, path)
}

/// The rows `assemble_data.py --seed S --images N --labels L` keeps, in its
/// order: a NumPy permutation of all rows, then `label < L` (if L > 0), then
/// the first N (if N > 0).
pub fn select(rows: &[StyleRow], seed: u32, images: i64, labels: i32) -> Vec<StyleRow> {
    let perm = Mt19937::new(seed).permutation(rows.len());
    let filtered = perm
        .into_iter()
        .map(|i| &rows[i])
        .filter(|r| labels <= 0 || r.label < labels);
    let picked: Vec<StyleRow> = if images > 0 {
        filtered.take(images as usize).cloned().collect()
    } else {
        filtered.cloned().collect()
    };
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    const CSV: &str = ",image_url,page_url,label,_split\n1,http://h/a/1_x.jpg,p,0,train\n2,http://h/a/2_x.jpg,p,3,test\n";

    #[test]
    fn parses_plain_and_gzip() {
        let rows = parse_csv(CSV.as_bytes(), Path::new("s.csv")).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[1].id.as_str(), rows[1].label, rows[1].split),
            ("2", 3, Split::Test)
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, CSV.as_bytes()).unwrap();
        assert_eq!(
            parse_csv(&gz.finish().unwrap(), Path::new("s.csv.gz")).unwrap(),
            rows
        );
    }

    #[test]
    fn malformed_rows_name_the_line() {
        let bad = format!("{CSV}3,http://h/3.jpg,p,zero,train\n");
        let e = parse_csv(bad.as_bytes(), Path::new("s.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.csv:4: label \"zero\""), "{e}");
        let bad = format!("{CSV}4,http://h/4.jpg,p,1\n");
        let e = parse_csv(bad.as_bytes(), Path::new("s.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("s.csv:4: expected 5 fields"), "{e}");
        let e = parse_csv(b"a,b\n1,2\n", Path::new("s.csv"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.csv:1: expected columns"), "{e}");
    }
}
