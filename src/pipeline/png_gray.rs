//! The gray image OpenCV gets when it reads a colour PNG with
//! `IMREAD_GRAYSCALE`: OpenCV asks libpng (1.6) for
//! `png_set_rgb_to_gray(0.299, 0.587)` and strips 16-bit samples to their
//! high byte afterwards. libpng mixes the channels in linear light when the
//! file states its gamma (a `gAMA` or `sRGB` chunk, or an `iCCP` profile it
//! recognises as sRGB), through lookup tables it builds from that gamma;
//! otherwise it mixes the stored values. This module reproduces both,
//! including libpng's fixed-point weights, rounding and table construction.

/// The weights libpng derives from (0.299, 0.587): each truncated to 15 bits
/// (`0.299 * 32768 -> 9797`, `0.587 * 32768 -> 19234`), blue takes the rest.
const WEIGHTS: (u32, u32, u32) = (9797, 19234, 32768 - 9797 - 19234);
/// libpng's gamma for sRGB (1/2.2 in units of 1e-5).
const SRGB_GAMMA: u32 = 45455;
/// libpng keeps at least 11 bits of a 16-bit sample in its gamma tables
/// when the samples are stripped to 8 bits (`PNG_MAX_GAMMA_8`).
const MAX_GAMMA_8: u32 = 11;

/// How libpng would convert one PNG's colour samples to gray.
pub(crate) struct PngGray {
    /// The file's gamma (units of 1e-5) when libpng converts in linear light.
    gamma: Option<u32>,
    /// The most significant bits of any colour channel (`sBIT`), 0 if unknown.
    significant_bits: u32,
}

impl PngGray {
    /// Reads the colour-space chunks of a PNG. Metadata libpng would reject
    /// (or a file this cannot parse; its decode reports that) means no gamma.
    pub(crate) fn for_file(png: &[u8]) -> PngGray {
        let mut gray = PngGray {
            gamma: None,
            significant_bits: 0,
        };
        let Ok(reader) = png::Decoder::new(std::io::Cursor::new(png)).read_info() else {
            return gray;
        };
        let info = reader.info();
        let file_gamma = if info.srgb.is_some()
            || info
                .icc_profile
                .as_deref()
                .is_some_and(is_known_srgb_profile)
        {
            Some(SRGB_GAMMA)
        } else {
            // libpng ignores a gamma outside this range ("out of range").
            info.gama_chunk
                .map(|g| g.into_scaled())
                .filter(|g| (16..=625_000_000).contains(g))
        };
        // The tables exist only when the file or its implied screen gamma
        // is significantly different from 1.
        gray.gamma = file_gamma.filter(|&g| significant(g) || significant(reciprocal(g)));
        if let Some(sbit) = &info.sbit {
            gray.significant_bits = sbit.iter().take(3).map(|&b| b as u32).max().unwrap_or(0);
        }
        gray
    }

    /// Gray bytes for 8-bit RGBA pixels.
    pub(crate) fn gray8(&self, rgba: &[u8]) -> Vec<u8> {
        let (wr, wg, wb) = WEIGHTS;
        let Some(gamma) = self.gamma else {
            // The weighted sum, truncated.
            return rgba
                .chunks_exact(4)
                .map(|p| ((wr * p[0] as u32 + wg * p[1] as u32 + wb * p[2] as u32) >> 15) as u8)
                .collect();
        };
        let screen = reciprocal(gamma);
        let to_linear = table8(reciprocal(gamma));
        let from_linear = table8(reciprocal(screen));
        let same = table8(reciprocal2(gamma, screen));
        rgba.chunks_exact(4)
            .map(|p| {
                if p[0] == p[1] && p[0] == p[2] {
                    same[p[0] as usize]
                } else {
                    let [r, g, b] = [p[0], p[1], p[2]].map(|v| to_linear[v as usize] as u32);
                    from_linear[((wr * r + wg * g + wb * b + (1 << 14)) >> 15) as usize]
                }
            })
            .collect()
    }

    /// Gray bytes for 16-bit RGBA pixels: converted at 16 bits, then
    /// stripped to the high byte as OpenCV asks.
    pub(crate) fn gray16(&self, rgba: &[u16]) -> Vec<u8> {
        let (wr, wg, wb) = WEIGHTS;
        let Some(gamma) = self.gamma else {
            // The weighted sum, rounded.
            return rgba
                .chunks_exact(4)
                .map(|p| {
                    let g =
                        (wr * p[0] as u32 + wg * p[1] as u32 + wb * p[2] as u32 + (1 << 14)) >> 15;
                    (g >> 8) as u8
                })
                .collect();
        };
        let sig = self.significant_bits;
        let shift = if sig > 0 && sig < 16 { 16 - sig } else { 0 };
        let shift = shift.clamp(16 - MAX_GAMMA_8, 8);
        let screen = reciprocal(gamma);
        let to_linear = table16(shift, reciprocal(gamma));
        let from_linear = table16(shift, reciprocal(screen));
        let same = table16_to_8(shift, product2(gamma, screen));
        let at = |table: &[u16], v: u32| table[(v >> shift) as usize] as u32;
        rgba.chunks_exact(4)
            .map(|p| {
                let w = if p[0] == p[1] && p[0] == p[2] {
                    at(&same, p[0] as u32)
                } else {
                    let [r, g, b] = [p[0], p[1], p[2]].map(|v| at(&to_linear, v as u32));
                    at(&from_linear, (wr * r + wg * g + wb * b + (1 << 14)) >> 15)
                };
                (w >> 8) as u8
            })
            .collect()
    }
}

/// Whether a gamma (units of 1e-5) differs from 1 by more than libpng's 5%.
fn significant(gamma: u32) -> bool {
    !(95_000..=105_000).contains(&gamma)
}

/// `1e10 / a`, rounded: the reciprocal of a gamma in units of 1e-5.
fn reciprocal(a: u32) -> u32 {
    (1e10 / a as f64 + 0.5).floor().min(i32::MAX as f64) as u32
}

/// `1e15 / a / b`, rounded: the reciprocal of a product of gammas.
fn reciprocal2(a: u32, b: u32) -> u32 {
    (1e15 / a as f64 / b as f64 + 0.5)
        .floor()
        .min(i32::MAX as f64) as u32
}

/// `a * 1e-5 * b`, rounded: a product of gammas.
fn product2(a: u32, b: u32) -> u32 {
    (a as f64 * 1e-5 * b as f64 + 0.5)
        .floor()
        .min(i32::MAX as f64) as u32
}

/// 8-bit gamma table: `255 * (v / 255)^gamma`, rounded (identity when the
/// gamma is insignificant; 0 and 255 map to themselves).
fn table8(gamma: u32) -> [u8; 256] {
    std::array::from_fn(|v| {
        if significant(gamma) && v > 0 && v < 255 {
            (255.0 * (v as f64 / 255.0).powf(gamma as f64 * 0.00001) + 0.5).floor() as u8
        } else {
            v as u8
        }
    })
}

/// 16-bit gamma table over the top `16 - shift` bits of a sample.
fn table16(shift: u32, gamma: u32) -> Vec<u16> {
    let max = (1u32 << (16 - shift)) - 1;
    let inv_max = 1.0 / max as f64;
    (0..=max)
        .map(|ig| {
            if significant(gamma) {
                (65535.0 * (ig as f64 * inv_max).powf(gamma as f64 * 0.00001) + 0.5).floor() as u16
            } else if shift != 0 {
                ((ig * 65535 + (1 << (15 - shift))) / max) as u16
            } else {
                ig as u16
            }
        })
        .collect()
}

/// libpng's 16-to-8 table for samples whose channels are equal: each entry
/// is the 8-bit level (times 257) whose gamma-corrected interval holds it.
fn table16_to_8(shift: u32, gamma: u32) -> Vec<u16> {
    let max = (1u32 << (16 - shift)) - 1;
    let correct = |v: u32| -> u32 {
        if v > 0 && v < 65535 {
            (65535.0 * (v as f64 / 65535.0).powf(gamma as f64 * 0.00001) + 0.5).floor() as u32
        } else {
            v
        }
    };
    let mut table = vec![65535u16; max as usize + 1];
    let mut last = 0usize;
    for level in 0..255u32 {
        let out = level * 257;
        let bound = ((correct(out + 128) * max + 32768) / 65535 + 1) as usize;
        while last < bound.min(table.len()) {
            table[last] = out as u16;
            last += 1;
        }
    }
    table
}

/// One of the ICC sRGB profiles libpng knows: (Adler-32, CRC-32, length,
/// MD5 from the profile header (zero when unsigned), rendering intent).
type KnownProfile = (u32, u32, u32, [u32; 4], u32);

/// The profiles libpng 1.6 treats as sRGB (two are HP/Microsoft profiles
/// it calls "known incorrect" but still treats as sRGB).
const KNOWN_SRGB_PROFILES: [KnownProfile; 7] = [
    (
        0x0a3f_d9f6,
        0x3b87_72b9,
        3048,
        [0x29f8_3dde, 0xaff2_55ae, 0x7842_fae4, 0xca83_390d],
        0,
    ),
    (
        0x4909_e5e1,
        0x427e_bb21,
        3052,
        [0xc95b_d637, 0xe95d_8a3b, 0x0df3_8f99, 0xc132_0389],
        1,
    ),
    (
        0xfd21_44a1,
        0x306f_d8ae,
        60988,
        [0xfc66_3378, 0x37e2_886b, 0xfd72_e983, 0x8228_f1b8],
        0,
    ),
    (
        0x209c_35d2,
        0xbbef_7812,
        60960,
        [0x3456_2abf, 0x994c_cd06, 0x6d2c_5721, 0xd0d6_8c5d],
        0,
    ),
    (0xa054_d762, 0x5d51_29ce, 3024, [0; 4], 1),
    (0xf784_f3fb, 0x182e_a552, 3144, [0; 4], 0),
    (0x0398_f3fc, 0xf29e_526d, 3144, [0; 4], 1),
];

/// libpng's test: the header's MD5 picks candidates; the first whose length
/// and intent match must then match by Adler-32 and CRC-32 as well.
fn is_known_srgb_profile(profile: &[u8]) -> bool {
    let be = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(
            profile.get(at..at + 4)?.try_into().ok()?,
        ))
    };
    let (Some(length), Some(intent)) = (be(0), be(64)) else {
        return false;
    };
    let Some(md5) = [84, 88, 92, 96]
        .map(be)
        .into_iter()
        .collect::<Option<Vec<_>>>()
    else {
        return false;
    };
    for (adler, crc, known_length, known_md5, known_intent) in KNOWN_SRGB_PROFILES {
        if md5 != known_md5 {
            continue;
        }
        if length == known_length && intent == known_intent {
            let Some(data) = profile.get(..length as usize) else {
                return false;
            };
            return adler32(data) == adler && crc32fast::hash(data) == crc;
        }
    }
    false
}

/// Adler-32 of `data` (zlib's checksum).
fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for chunk in data.chunks(5552) {
        for &byte in chunk {
            a += byte as u32;
            b += a;
        }
        a %= 65521;
        b %= 65521;
    }
    (b << 16) | a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_gamma_arithmetic() {
        assert_eq!(adler32(b"Wikipedia"), 0x11E6_0398);
        assert_eq!(reciprocal(SRGB_GAMMA), 219_998);
        assert!(!significant(100_000) && significant(45_455));
        let t = table8(reciprocal(SRGB_GAMMA));
        assert_eq!((t[0], t[255]), (0, 255));
        assert!(t[128] < 64, "linearising darkens the midtones: {}", t[128]);
    }
}
