//! Padding to a square before resizing, so elongated subjects (plankton,
//! odd-sized scans) keep their shape instead of being squashed into the
//! square input Caffe's nets take. Beyond Caffe: the padded pixels are
//! stored in the datums, so Caffe reads the result unchanged.
use super::mat::Mat8;
use std::str::FromStr;

/// The colour of the added margin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadFill {
    /// Each channel's mean over the image's outermost rows and columns: the
    /// background of a dark-field or bright-field scan without choosing.
    Border,
    /// This value in every channel (0 black, 255 white).
    Value(u8),
}

impl FromStr for PadFill {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "border" => Ok(PadFill::Border),
            v => v
                .parse::<u8>()
                .map(PadFill::Value)
                .map_err(|_| format!("{s:?} is not a pad fill: use `border` or a value 0-255")),
        }
    }
}

/// The per-channel mean of the outermost rows and columns, rounded.
fn border_mean(m: &Mat8) -> Vec<u8> {
    let (w, h, c) = (m.width, m.height, m.channels);
    let mut sums = vec![0u64; c];
    let mut count = 0u64;
    let mut add = |x: usize, y: usize| {
        let px = &m.data[(y * w + x) * c..(y * w + x + 1) * c];
        for (s, &v) in sums.iter_mut().zip(px) {
            *s += v as u64;
        }
        count += 1;
    };
    for x in 0..w {
        add(x, 0);
        if h > 1 {
            add(x, h - 1);
        }
    }
    for y in 1..h.saturating_sub(1) {
        add(0, y);
        if w > 1 {
            add(w - 1, y);
        }
    }
    sums.iter()
        .map(|&s| ((s + count / 2) / count.max(1)) as u8)
        .collect()
}

/// `m` centred on a square canvas of side max(height, width) (the extra
/// row or column, when the margin is odd, goes to the bottom or right).
pub fn pad_square(m: &Mat8, fill: PadFill) -> Mat8 {
    let (w, h, c) = (m.width, m.height, m.channels);
    if w == h {
        return m.clone();
    }
    let side = w.max(h);
    let colour = match fill {
        PadFill::Border => border_mean(m),
        PadFill::Value(v) => vec![v; c],
    };
    let mut data: Vec<u8> = colour
        .iter()
        .copied()
        .cycle()
        .take(side * side * c)
        .collect();
    let (top, left) = ((side - h) / 2, (side - w) / 2);
    for y in 0..h {
        let dst = ((top + y) * side + left) * c;
        data[dst..dst + w * c].copy_from_slice(&m.data[y * w * c..(y + 1) * w * c]);
    }
    Mat8::new(side, side, c, data)
}

/// The stored image: padded to a square when `pad` is set, then resized to
/// (height, width) when `resize` is set (what `to-lmdb` and `compute-mean` do
/// to every image, so a mean matches the datums it is for).
pub fn fit(m: Mat8, pad: Option<PadFill>, resize: Option<(usize, usize)>) -> Mat8 {
    let m = match pad {
        Some(fill) => pad_square(&m, fill),
        None => m,
    };
    match resize {
        Some((h, w)) => super::resize::resize_linear(&m, w, h),
        None => m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_gray_image_is_centred_on_its_border_mean() {
        // 4 wide, 2 high: every pixel is on the border; mean of 1..=8 is 4.5 -> 5.
        let m = Mat8::new(4, 2, 1, (1..=8).collect());
        let p = pad_square(&m, PadFill::Border);
        assert_eq!((p.width, p.height), (4, 4));
        assert_eq!(p.data, [5, 5, 5, 5, 1, 2, 3, 4, 5, 6, 7, 8, 5, 5, 5, 5]);
    }

    #[test]
    fn tall_colour_image_gets_the_value_in_every_channel() {
        // 1 wide, 3 high, BGR: margins of 1 column left and right.
        let m = Mat8::new(1, 3, 3, vec![10, 20, 30, 11, 21, 31, 12, 22, 32]);
        let p = pad_square(&m, PadFill::Value(255));
        assert_eq!((p.width, p.height), (3, 3));
        let row = |y: usize| p.data[y * 9..(y + 1) * 9].to_vec();
        assert_eq!(row(0), [255, 255, 255, 10, 20, 30, 255, 255, 255]);
        assert_eq!(row(2), [255, 255, 255, 12, 22, 32, 255, 255, 255]);
        // An odd margin puts the extra column on the right.
        let m = Mat8::new(2, 5, 1, vec![9; 10]);
        let p = pad_square(&m, PadFill::Value(0));
        assert_eq!(&p.data[..5], [0, 9, 9, 0, 0]);
    }

    #[test]
    fn square_images_are_unchanged_and_fills_parse() {
        let m = Mat8::new(2, 2, 1, vec![1, 2, 3, 4]);
        assert_eq!(pad_square(&m, PadFill::Border), m);
        assert_eq!("border".parse::<PadFill>(), Ok(PadFill::Border));
        assert_eq!("255".parse::<PadFill>(), Ok(PadFill::Value(255)));
        assert!("256".parse::<PadFill>().unwrap_err().contains("0-255"));
        assert!("white".parse::<PadFill>().is_err());
    }
}
