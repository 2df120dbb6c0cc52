//! Caffe's HDF5 snapshots (`snapshot_format: HDF5`), read and written in
//! pure Rust. A `.caffemodel.h5` has a group `data` with a group per layer
//! (every layer, parameterless ones too) holding its blobs as float32
//! datasets named `0`, `1`, … in their shapes; a blob the layer shares with
//! an earlier layer (`param { name }`) is left out, as Caffe leaves it out.
//! A `.solverstate.h5` has the scalar int32 datasets `iter` and
//! `current_step`, the string `learned_net` (the model snapshot's path) and
//! a group `history` with the solver's history blobs as `0`, `1`, ….
//! Files whose name ends in `.h5` are taken as HDF5, as Caffe decides.
use super::proto::{BlobProto, LayerParameter, NetParameter, SolverState};
use crate::error::{Error, Result};
use std::path::Path;

/// A blob a layer owns as an HDF5 snapshot stores it: its number in the
/// layer, its shape and its values.
pub type NumberedBlob = (usize, Vec<usize>, Vec<f32>);

/// A layer's name and the blobs it owns.
pub type LayerBlobs = (String, Vec<NumberedBlob>);

/// Whether Caffe would read `path` as HDF5 (its name ends in `.h5`).
pub fn is_hdf5(path: &Path) -> bool {
    path.to_string_lossy().ends_with(".h5")
}

fn err(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::invalid(path.display(), what.to_string())
}

/// The value count of dataset `name` of shape `shape` in `path`, refused
/// when it passes a Caffe blob's limit (2^31 - 1) or this machine's memory:
/// checked before reading, so a damaged shape never becomes a huge allocation.
pub fn checked_count(path: &Path, name: &str, shape: &[u64]) -> Result<usize> {
    let count = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
    let n = match count {
        Some(n) if n <= i32::MAX as u64 => n,
        _ => {
            return Err(err(
                path,
                format!(
                    "dataset '{name}' of shape {shape:?} has more values than a Caffe blob holds \
                     (2^31 - 1); is the file damaged?"
                ),
            ))
        }
    };
    if let Some(limit) = crate::train::memory::machine_memory() {
        if n * 4 > limit {
            return Err(err(
                path,
                format!(
                    "dataset '{name}' needs {} but this machine has {}",
                    crate::train::memory::gib(n * 4),
                    crate::train::memory::gib(limit)
                ),
            ));
        }
    }
    Ok(n as usize)
}

/// Opens `path`, turning a parser panic (a damaged file) into an error.
fn open(path: &Path) -> Result<hdf5_pure::File> {
    let bytes = std::fs::read(path).map_err(|e| err(path, format!("cannot read: {e}")))?;
    std::panic::catch_unwind(|| hdf5_pure::File::from_bytes(bytes))
        .map_err(|_| err(path, "is damaged (its HDF5 parser failed)"))?
        .map_err(|e| err(path, format!("is not a readable HDF5 file: {e}")))
}

/// The blobs `0`, `1`, … of `group` in `path`, in order (a blob a weight
/// share left out must be the last ones: a gap is refused).
fn read_blobs(f: &hdf5_pure::File, group: &str, path: &Path) -> Result<Vec<BlobProto>> {
    let g = f
        .group(group)
        .map_err(|e| err(path, format!("no group '{group}': {e}")))?;
    let names = g
        .datasets()
        .map_err(|e| err(path, format!("group '{group}': {e}")))?;
    let mut index: Vec<usize> = names
        .iter()
        .map(|n| {
            n.parse::<usize>().map_err(|_| {
                err(
                    path,
                    format!("group '{group}' holds '{n}', not a blob number"),
                )
            })
        })
        .collect::<Result<_>>()?;
    index.sort_unstable();
    if index.iter().enumerate().any(|(i, &j)| i != j) {
        return Err(err(
            path,
            format!(
                "group '{group}' holds blobs {index:?}: a blob before the last is missing (shared \
                 with another layer), which this reader does not support"
            ),
        ));
    }
    index
        .iter()
        .map(|j| {
            let name = format!("{group}/{j}");
            let read = || -> Result<(Vec<u64>, Vec<f32>)> {
                let at = |e: hdf5_pure::Error| err(path, format!("dataset '{name}': {e}"));
                let ds = f.dataset(&name).map_err(at)?;
                let shape = ds.shape().map_err(at)?;
                checked_count(path, &name, &shape)?;
                Ok((shape, ds.read_f32().map_err(at)?))
            };
            let (shape, values) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(read))
                    .map_err(|_| err(path, format!("dataset '{name}' is damaged")))??;
            let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            if dims.iter().product::<usize>() != values.len() {
                return Err(err(path, format!("dataset '{name}' holds too few values")));
            }
            Ok(BlobProto::with_shape(&dims, values))
        })
        .collect()
}

/// A `.caffemodel.h5` as a net whose layers carry only names and blobs
/// (what copying weights by layer name reads).
pub fn read_caffemodel(path: &Path) -> Result<NetParameter> {
    let f = open(path)?;
    let layers = f.group("data").and_then(|g| g.groups()).map_err(|e| {
        err(
            path,
            format!("has no group 'data' of layers ({e}): is it a .caffemodel.h5?"),
        )
    })?;
    let mut net = NetParameter::default();
    for name in layers {
        net.layer.push(LayerParameter {
            blobs: read_blobs(&f, &format!("data/{name}"), path)?,
            name: Some(name),
            ..Default::default()
        });
    }
    Ok(net)
}

/// A layer name as an HDF5 group name (which cannot hold `/`).
fn group_name(layer: &str) -> Result<&str> {
    if layer.is_empty() || layer.contains('/') || layer == "." {
        return Err(Error::model(
            format!("layer '{layer}'"),
            "its name cannot be an HDF5 group name (no '/'), so it cannot be snapshotted as \
             HDF5; use snapshot_format: BINARYPROTO",
        ));
    }
    Ok(layer)
}

/// The bytes of a `.caffemodel.h5` holding, per layer in net order, its
/// name and the blobs it owns as (blob number, shape, values).
pub fn caffemodel_bytes(layers: &[LayerBlobs], diffs: Option<&[LayerBlobs]>) -> Result<Vec<u8>> {
    let mut b = hdf5_pure::FileBuilder::new();
    // `data` holds the blobs layers own; `diff` (Caffe's snapshot_diff)
    // every blob's diff, shared ones too.
    for (group, layers) in [("data", Some(layers)), ("diff", diffs)] {
        let Some(layers) = layers else { continue };
        let mut top = b.create_group(group);
        for (name, blobs) in layers {
            let mut g = top.create_group(group_name(name)?);
            for (j, shape, values) in blobs {
                let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
                g.create_dataset(&j.to_string())
                    .with_f32_data(values)
                    .with_shape(&dims);
            }
            top.add_group(g.finish());
        }
        b.add_group(top.finish());
    }
    b.finish()
        .map_err(|e| Error::model("HDF5 snapshot", format!("cannot encode: {e}")))
}

/// A `.solverstate.h5`.
pub fn read_solverstate(path: &Path) -> Result<SolverState> {
    let f = open(path)?;
    let int = |name: &str| -> Result<i32> {
        f.dataset(name)
            .and_then(|d| d.read_i32())
            .map_err(|e| err(path, format!("no int dataset '{name}': {e}")))?
            .first()
            .copied()
            .ok_or_else(|| err(path, format!("dataset '{name}' is empty")))
    };
    let learned = f
        .dataset("learned_net")
        .and_then(|d| d.read_string())
        .map_err(|e| err(path, format!("no string dataset 'learned_net': {e}")))?;
    // Caffe writes the terminating NUL into the string.
    let learned = learned
        .first()
        .map(|s| s.trim_end_matches('\0').to_string())
        .unwrap_or_default();
    Ok(SolverState {
        iter: Some(int("iter")?),
        learned_net: (!learned.is_empty()).then_some(learned),
        history: read_blobs(&f, "history", path)?,
        current_step: Some(int("current_step")?),
    })
}

/// The bytes of a `.solverstate.h5` for `state`.
pub fn solverstate_bytes(state: &SolverState) -> Result<Vec<u8>> {
    let mut b = hdf5_pure::FileBuilder::new();
    b.create_dataset("iter")
        .with_i32_data(&[state.iter()])
        .with_shape(&[]);
    // With its NUL, as Caffe's H5LTmake_dataset_string stores it (Caffe's
    // reader copies the string up to a NUL it expects inside the value).
    let learned = format!("{}\0", state.learned_net());
    b.create_dataset("learned_net")
        .with_ascii_strings(&[learned.as_str()])
        .map_err(|e| Error::model("HDF5 snapshot", format!("learned_net: {e}")))?
        .with_shape(&[]);
    b.create_dataset("current_step")
        .with_i32_data(&[state.current_step()])
        .with_shape(&[]);
    let mut h = b.create_group("history");
    for (i, blob) in state.history.iter().enumerate() {
        let dims: Vec<u64> = blob.dims().iter().map(|&d| d.max(0) as u64).collect();
        h.create_dataset(&i.to_string())
            .with_f32_data(&blob.values())
            .with_shape(&dims);
    }
    b.add_group(h.finish());
    b.finish()
        .map_err(|e| Error::model("HDF5 snapshot", format!("cannot encode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caffemodel_and_a_solverstate_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let model = t.path().join("m.caffemodel.h5");
        let layers = vec![
            (
                "conv1".to_string(),
                vec![
                    (0, vec![2, 1, 1, 2], vec![1.0, 2.0, 3.0, 4.0]),
                    (1, vec![2], vec![0.5, -0.5]),
                ],
            ),
            ("relu1".to_string(), vec![]),
        ];
        std::fs::write(&model, caffemodel_bytes(&layers, None).unwrap()).unwrap();
        let net = read_caffemodel(&model).unwrap();
        let conv = net.layer.iter().find(|l| l.name() == "conv1").unwrap();
        assert_eq!(conv.blobs.len(), 2);
        assert_eq!(conv.blobs[0].dims(), [2, 1, 1, 2]);
        assert_eq!(conv.blobs[1].values(), [0.5, -0.5]);
        assert!(net
            .layer
            .iter()
            .any(|l| l.name() == "relu1" && l.blobs.is_empty()));

        let state = SolverState {
            iter: Some(15),
            learned_net: Some("snap_iter_15.caffemodel.h5".into()),
            history: vec![BlobProto::with_shape(&[3], vec![1.0, 2.0, 3.0])],
            current_step: Some(2),
        };
        let path = t.path().join("s.solverstate.h5");
        std::fs::write(&path, solverstate_bytes(&state).unwrap()).unwrap();
        assert_eq!(read_solverstate(&path).unwrap(), state);
        assert!(is_hdf5(&path) && !is_hdf5(Path::new("x.caffemodel")));
    }

    #[test]
    fn damaged_snapshots_are_errors_never_a_crash() {
        let layers = vec![(
            "fc".to_string(),
            vec![
                (0, vec![8, 16], vec![0.25; 128]),
                (1, vec![8], vec![1.0; 8]),
            ],
        )];
        let good = caffemodel_bytes(&layers, None).unwrap();
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.caffemodel.h5");
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut refused = 0;
        for trial in 0..600 {
            let mut bytes = good.clone();
            if trial % 8 == 0 {
                bytes.truncate(next() as usize % bytes.len());
            } else {
                for _ in 0..1 + next() % 4 {
                    let i = next() as usize % bytes.len();
                    bytes[i] = next() as u8;
                }
            }
            std::fs::write(&p, &bytes).unwrap();
            if let Err(e) = read_caffemodel(&p) {
                assert!(e.to_string().contains("x.caffemodel.h5"), "{e}");
                refused += 1;
            }
        }
        assert!(refused > 100, "{refused}");
    }

    #[test]
    fn slashes_in_layer_names_and_damaged_files_are_named() {
        let layers = vec![("inception_3a/1x1".to_string(), vec![])];
        let e = caffemodel_bytes(&layers, None).unwrap_err().to_string();
        assert!(
            e.contains("inception_3a/1x1") && e.contains("BINARYPROTO"),
            "{e}"
        );
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.caffemodel.h5");
        std::fs::write(&p, b"not an HDF5 file").unwrap();
        let e = read_caffemodel(&p).unwrap_err().to_string();
        assert!(e.contains("x.caffemodel.h5"), "{e}");
    }
}
