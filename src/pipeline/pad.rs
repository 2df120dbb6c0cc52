//! Fitting images into the net's input without squashing them: scale to fit
//! inside the target (optionally never enlarging, so size stays a signal),
//! then pad to it with the background colour. Elongated subjects (plankton,
//! odd-sized scans) keep their shape, where Caffe's plain resize squashes
//! them. Beyond Caffe: the padded pixels are stored in the datums, so Caffe
//! reads the result unchanged.
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

/// How images are padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pad {
    /// The margin's colour.
    pub fill: PadFill,
    /// Whether an image smaller than the target is enlarged to fit it
    /// (`false`: only shrink, as plankifier does, so the organism's size in
    /// pixels still tells the net something).
    pub upscale: bool,
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

/// `m` centred on a `width` x `height` canvas of `colour` (an odd margin's
/// extra row or column goes to the bottom or right). The canvas must be at
/// least as large as `m`.
fn pad_to(m: &Mat8, colour: &[u8], width: usize, height: usize) -> Mat8 {
    let (w, h, c) = (m.width, m.height, m.channels);
    let mut data: Vec<u8> = colour
        .iter()
        .copied()
        .cycle()
        .take(width * height * c)
        .collect();
    let (top, left) = ((height - h) / 2, (width - w) / 2);
    for y in 0..h {
        let dst = ((top + y) * width + left) * c;
        data[dst..dst + w * c].copy_from_slice(&m.data[y * w * c..(y + 1) * w * c]);
    }
    Mat8::new(width, height, c, data)
}

fn colour(m: &Mat8, fill: PadFill) -> Vec<u8> {
    match fill {
        PadFill::Border => border_mean(m),
        PadFill::Value(v) => vec![v; m.channels],
    }
}

/// `m` centred on a square canvas of side max(height, width).
pub fn pad_square(m: &Mat8, fill: PadFill) -> Mat8 {
    if m.width == m.height {
        return m.clone();
    }
    let side = m.width.max(m.height);
    pad_to(m, &colour(m, fill), side, side)
}

/// The stored image. Without `pad`: resized to (height, width) when
/// `resize` is set, as Caffe does. With `pad` and a size: scaled (keeping
/// its aspect ratio; never enlarged unless `pad.upscale`) to fit inside it,
/// then padded to it. With `pad` alone: padded to a square. `to-lmdb` and
/// `compute-mean` both prepare images through this, so a mean matches the
/// datums it is for.
pub fn fit(m: Mat8, pad: Option<Pad>, resize: Option<(usize, usize)>) -> Mat8 {
    let resize_to = |m: &Mat8, w: usize, h: usize| {
        if (m.width, m.height) == (w, h) {
            m.clone()
        } else {
            super::resize::resize_linear(m, w, h)
        }
    };
    match (pad, resize) {
        (None, None) => m,
        (None, Some((h, w))) => resize_to(&m, w, h),
        (Some(p), None) => pad_square(&m, p.fill),
        (Some(p), Some((th, tw))) => {
            let mut scale = (tw as f64 / m.width as f64).min(th as f64 / m.height as f64);
            if !p.upscale {
                scale = scale.min(1.0);
            }
            let side =
                |v: usize, limit: usize| ((v as f64 * scale).round() as usize).clamp(1, limit);
            let (w, h) = (side(m.width, tw), side(m.height, th));
            let fill = colour(&m, p.fill);
            pad_to(&resize_to(&m, w, h), &fill, tw, th)
        }
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
    fn fitting_scales_inside_the_target_then_pads() {
        let m = Mat8::new(8, 2, 1, vec![50; 16]);
        let pad = |upscale| {
            Some(Pad {
                fill: PadFill::Value(0),
                upscale,
            })
        };
        // Shrunk by 2 to 4x1, centred on 4x4 (the odd margin's extra row below).
        let f = fit(m.clone(), pad(false), Some((4, 4)));
        assert_eq!((f.width, f.height), (4, 4));
        assert_eq!(f.data, [0, 0, 0, 0, 50, 50, 50, 50, 0, 0, 0, 0, 0, 0, 0, 0]);
        // A target larger than the image: enlarged to 16x4 only with upscale.
        let f = fit(m.clone(), pad(true), Some((16, 16)));
        assert_eq!(f.data.iter().filter(|&&v| v == 50).count(), 16 * 4);
        let f = fit(m.clone(), pad(false), Some((16, 16)));
        assert_eq!(f.data.iter().filter(|&&v| v == 50).count(), 16);
        // Without a size, a square of the long side; without padding, Caffe's resize.
        assert_eq!(fit(m.clone(), pad(false), None).height, 8);
        assert_eq!(fit(m, None, Some((3, 5))).width, 5);
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
