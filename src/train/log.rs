//! Caffe-style log lines (glog prefix + Caffe's wording and number format)
//! so tools that parse Caffe logs, like `parse_log.py`, keep working.
use std::io::Write;

/// Formats `v` like C++ `ostream << float` (6 significant digits, `%g`).
pub fn g(v: f32) -> String {
    let v = v as f64;
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    // %g takes its exponent from the %e form at precision 5, after rounding
    // (999999.5 -> 1e+06). Rust prints that form the same on every platform,
    // where log10 and pow of the C library differ in their last bits.
    let sci = format!("{:.5e}", v);
    let (mant, e) = sci.split_once('e').expect("exponent");
    let exp: i32 = e.parse().expect("exponent");
    // %g: scientific when the exponent is below -4 or at least the precision (6).
    if !(-4..6).contains(&exp) {
        format!(
            "{}e{}{:02}",
            trim(mant),
            if exp < 0 { '-' } else { '+' },
            exp.abs()
        )
    } else {
        trim(&format!("{:.*}", (5 - exp) as usize, v)).to_string()
    }
}

fn trim(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Writes glog-formatted INFO lines to stderr (and an optional file).
pub struct Logger {
    file: Option<std::fs::File>,
    bar: Option<indicatif::ProgressBar>,
    /// Print to stderr.
    pub echo: bool,
}

impl Logger {
    /// A logger printing to stderr.
    pub fn new(echo: bool) -> Self {
        Logger {
            file: None,
            bar: None,
            echo,
        }
    }

    /// Also append every line to `file`.
    pub fn with_file(mut self, file: std::fs::File) -> Self {
        self.file = Some(file);
        self
    }

    /// Print around this progress bar.
    pub fn set_bar(&mut self, bar: Option<indicatif::ProgressBar>) {
        self.bar = bar;
    }

    /// Logs `msg` as if from `source` (e.g. "solver.cpp:239").
    pub fn info(&mut self, source: &str, msg: &str) {
        self.line('I', source, msg);
    }

    /// Logs `msg` at glog's WARNING level.
    pub fn warn(&mut self, source: &str, msg: &str) {
        self.line('W', source, msg);
    }

    /// Logs `msg` at a glog level given by its letter (`I`, `W`, `E`).
    pub fn at(&mut self, level: char, source: &str, msg: &str) {
        self.line(level, source, msg);
    }

    fn line(&mut self, level: char, source: &str, msg: &str) {
        let now = chrono_like_now();
        let line = format!("{level}{now} {:>5} {source}] {msg}", std::process::id());
        if self.echo {
            match &self.bar {
                Some(b) => b.suspend(|| crate::progress::say(&line)),
                None => crate::progress::say(&line),
            }
        }
        if let Some(f) = &mut self.file {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// `MMDD HH:MM:SS.micros` in UTC, glog's timestamp layout.
fn chrono_like_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let days = secs / 86400;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    format!(
        "{mo:02}{d:02} {h:02}:{m:02}:{s:02}.{:06}",
        now.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    use super::g;

    #[test]
    fn formats_like_cpp_streams() {
        assert_eq!(g(1.3775332), "1.37753");
        assert_eq!(g(0.25), "0.25");
        assert_eq!(g(0.001), "0.001");
        assert_eq!(g(1e-4), "0.0001");
        assert_eq!(g(1e-5), "1e-05");
        assert_eq!(g(0.458333), "0.458333");
        assert_eq!(g(1.0), "1");
        assert_eq!(g(128.42885), "128.429");
        assert_eq!(g(1234567.0), "1.23457e+06");
        assert_eq!(g(0.0), "0");
    }

    /// Against the C library's own `%g` (what C++ streams print in Caffe's
    /// logs) over floats spread across every exponent, rounding edges among
    /// them. Unix only: Microsoft's C library prints three-digit exponents.
    #[cfg(unix)]
    #[test]
    fn agrees_with_printf_g() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut values: Vec<f32> = (0..20_000)
            .map(|_| f32::from_bits(rng.random::<u32>()))
            .filter(|v| v.is_finite())
            .collect();
        values.extend([
            9.999995e-5,
            999999.5,
            99999.95,
            0.99999949,
            -1e-4,
            1e-38,
            3.4e38,
        ]);
        let mut buf = [0u8; 64];
        for v in values {
            // SAFETY: a 64-byte buffer holds any %g of a double; the format
            // takes exactly one double.
            let n = unsafe {
                libc::snprintf(buf.as_mut_ptr().cast(), buf.len(), c"%g".as_ptr(), v as f64)
            };
            let want = std::str::from_utf8(&buf[..n as usize]).unwrap();
            assert_eq!(g(v), want, "{v:e}");
        }
    }
}
