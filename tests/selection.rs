//! `assemble`'s selection equals what Caffe's assemble_data.py picks, checked
//! against vectors computed with NumPy's legacy RandomState
//! (tests/data/selection_vectors.json, made by scripts/make-selection-vectors.py
//! with NumPy 2.4.6) on the real CSV in ../shared.
mod common;
use flickr_style::pipeline::flickr_csv::{read_csv, select};

#[derive(serde::Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}
#[derive(serde::Deserialize)]
struct Case {
    seed: u32,
    images: i64,
    labels: i32,
    count: usize,
    first_ids: Vec<String>,
    last_ids: Vec<String>,
    label_histogram: Vec<usize>,
}

#[test]
fn selection_matches_numpy_for_every_reference_case() {
    let rows = read_csv(&common::caffe_ref().join("flickr_style/flickr_style.csv.gz")).unwrap();
    assert_eq!(rows.len(), 80_000);
    let v: Vectors = serde_json::from_str(include_str!("data/selection_vectors.json")).unwrap();
    for c in v.cases {
        let picked = select(&rows, c.seed, c.images, c.labels);
        assert_eq!(picked.len(), c.count, "seed {}", c.seed);
        let ids: Vec<&str> = picked.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            &ids[..c.first_ids.len()],
            c.first_ids
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice(),
            "seed {}",
            c.seed
        );
        assert_eq!(
            &ids[ids.len() - c.last_ids.len()..],
            c.last_ids
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
        );
        let mut hist = vec![0usize; 20];
        for r in &picked {
            hist[r.label as usize] += 1;
        }
        assert_eq!(hist, c.label_histogram, "seed {}", c.seed);
    }
}

#[test]
fn documented_first_ids_for_seed_831486() {
    let rows = read_csv(&common::caffe_ref().join("flickr_style/flickr_style.csv.gz")).unwrap();
    let ids: Vec<String> = select(&rows, 831486, 2000, 0)
        .into_iter()
        .take(5)
        .map(|r| r.id)
        .collect();
    assert_eq!(
        ids,
        [
            "12123529133",
            "11603781264",
            "12852147194",
            "9296163038",
            "8516303191"
        ]
    );
}
