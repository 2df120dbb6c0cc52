//! `BlobProto` helpers: Caffe's two ways of storing a shape (legacy
//! num/channels/height/width and `shape`), float vs double data, and the
//! legacy-aware shape comparison that `CopyTrainedLayersFrom` uses.
use super::proto::{BlobProto, BlobShape};

impl BlobProto {
    /// Builds a blob with a modern `shape` and float data (what Caffe's `ToProto` writes).
    pub fn with_shape(dims: &[usize], data: Vec<f32>) -> Self {
        BlobProto {
            shape: Some(BlobShape {
                dim: dims.iter().map(|&d| d as i64).collect(),
            }),
            data,
            ..Default::default()
        }
    }

    /// Builds a blob with the legacy 4-D fields (what `compute_image_mean` writes).
    pub fn legacy_4d(num: i32, channels: i32, height: i32, width: i32, data: Vec<f32>) -> Self {
        BlobProto {
            num: Some(num),
            channels: Some(channels),
            height: Some(height),
            width: Some(width),
            data,
            ..Default::default()
        }
    }

    /// Whether any legacy dimension field is present (then it defines the shape).
    pub fn has_legacy_shape(&self) -> bool {
        self.num.is_some()
            || self.channels.is_some()
            || self.height.is_some()
            || self.width.is_some()
    }

    /// The blob's dimensions as Caffe's `FromProto` reads them.
    pub fn dims(&self) -> Vec<i64> {
        if self.has_legacy_shape() {
            vec![
                self.num() as i64,
                self.channels() as i64,
                self.height() as i64,
                self.width() as i64,
            ]
        } else {
            self.shape
                .as_ref()
                .map(|s| s.dim.clone())
                .unwrap_or_default()
        }
    }

    /// Number of elements implied by [`BlobProto::dims`].
    pub fn count(&self) -> usize {
        // Saturating: a damaged file's dimensions must not overflow.
        self.dims()
            .iter()
            .fold(1usize, |n, &d| n.saturating_mul(d.max(0) as usize))
    }

    /// The values as f32: `double_data` wins when it is non-empty, like Caffe.
    pub fn values(&self) -> Vec<f32> {
        if self.double_data.is_empty() {
            self.data.clone()
        } else {
            self.double_data.iter().map(|&v| v as f32).collect()
        }
    }

    /// Number of stored values (float or double).
    pub fn value_len(&self) -> usize {
        if self.double_data.is_empty() {
            self.data.len()
        } else {
            self.double_data.len()
        }
    }
}

/// Caffe's `Blob::ShapeEquals`: with legacy fields, compare the last four
/// axes with missing ones counting as 1 (old IP weights were 1x1xMxN);
/// otherwise the dims must be identical.
pub fn shape_equals(proto: &BlobProto, target: &[usize]) -> bool {
    if proto.has_legacy_shape() {
        if target.len() > 4 {
            return false;
        }
        let legacy = [proto.num(), proto.channels(), proto.height(), proto.width()];
        (0..4).all(|i| {
            // Axis -4+i of the target, 1 where the target has fewer axes.
            let from_end = 4 - i;
            let t = if from_end <= target.len() {
                target[target.len() - from_end] as i64
            } else {
                1
            };
            legacy[i] as i64 == t
        })
    } else {
        let dims = proto.dims();
        dims.len() == target.len() && dims.iter().zip(target).all(|(&a, &b)| a == b as i64)
    }
}

/// Formats dims like Caffe's `shape_string` ("64 3 11 11 (23232)").
pub fn shape_string(dims: &[i64]) -> String {
    // Saturating: a damaged file's dimensions must not overflow.
    let count = dims.iter().fold(1i64, |n, &d| n.saturating_mul(d));
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("{} ({count})", parts.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn legacy_shape_wins_and_compares_from_the_end() {
        let b = BlobProto::legacy_4d(1, 1, 4, 9216, vec![0.0; 4 * 9216]);
        assert_eq!(b.dims(), vec![1, 1, 4, 9216]);
        assert!(shape_equals(&b, &[4, 9216]));
        assert!(!shape_equals(&b, &[9216, 4]));
        let bias = BlobProto::legacy_4d(1, 1, 1, 4, vec![0.0; 4]);
        assert!(shape_equals(&bias, &[4]));
        assert!(!shape_equals(&bias, &[4, 1, 1, 1, 1]));
    }

    #[test]
    fn huge_or_negative_dimensions_do_not_overflow_the_count() {
        let b = BlobProto::with_shape(&[1 << 40, 1 << 40, 3], vec![]);
        assert_eq!(b.count(), usize::MAX);
        let b = BlobProto {
            shape: Some(BlobShape { dim: vec![-4, 3] }),
            ..Default::default()
        };
        assert_eq!(b.count(), 0);
    }

    #[test]
    fn modern_shape_must_match_exactly() {
        let b = BlobProto::with_shape(&[4, 2], vec![0.0; 8]);
        assert!(shape_equals(&b, &[4, 2]));
        assert!(!shape_equals(&b, &[1, 4, 2]));
    }

    #[test]
    fn double_data_wins_and_round_trips() {
        let mut b = BlobProto::with_shape(&[2], vec![9.0, 9.0]);
        b.double_data = vec![1.5, -2.0];
        let back = BlobProto::decode(b.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.values(), vec![1.5, -2.0]);
        assert_eq!(back, b);
        assert_eq!(shape_string(&back.dims()), "2 (2)");
    }
}
