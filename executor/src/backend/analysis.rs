//! Local image analysis: the facts about an image that need no model.
//!
//! Format, size, dominant colours, brightness, contrast, EXIF orientation and a perceptual
//! hash, plus a one-paragraph summary of them that can be used as text context for an answer.
//! Colour statistics are computed on a copy at most [`STATS_EDGE`] pixels on its longer side:
//! they describe proportions, which a downscaled copy keeps, and the cost stays flat however
//! large the upload.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Cursor;

use image::{DynamicImage, ImageFormat, ImageReader, Limits, RgbaImage};
use serde::{Deserialize, Serialize};

use super::error::BackendError;

const STATS_EDGE: u32 = 128;
/// Largest width or height decoded; beyond this an upload is more likely an attack than a photo.
const MAX_EDGE: u32 = 16_384;
/// Per decode; several tasks decode at once.
const MAX_DECODE_ALLOC: u64 = 256 * 1024 * 1024;
const MAX_COLORS: usize = 5;
/// Colours covering less of the image than this are noise (anti-aliased edges, compression).
const MIN_COLOR_SHARE: f64 = 0.02;

/// What the builtin backend reports about an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageAnalysis {
    /// `png`, `jpeg`, `webp` or `gif`.
    pub format: String,
    pub width: u32,
    pub height: u32,
    /// Most common colours, most common first.
    pub dominant_colors: Vec<DominantColor>,
    /// Mean luma (Rec. 601), 0 = black, 1 = white.
    pub brightness: f64,
    /// Standard deviation of luma, 0–1 (0 = one flat tone).
    pub contrast: f64,
    /// The EXIF `Orientation` tag (1–8) when the image carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orientation: Option<u16>,
    /// A 64-bit gradient hash (dHash) as 16 hex digits: near-identical images have hashes a
    /// small Hamming distance apart.
    pub perceptual_hash: String,
    /// The facts above in one paragraph.
    pub summary: String,
}

/// One of an image's most common colours.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DominantColor {
    /// `#rrggbb`, the mean of the pixels in this colour's bucket.
    pub hex: String,
    /// A plain colour word (`red`, `dark blue`, `grey`…).
    pub name: String,
    /// Fraction of the (opaque) image, 0–1.
    pub share: f64,
}

/// Decodes and analyses `bytes`. CPU-bound: run it on the blocking pool.
pub(crate) fn analyze(bytes: &[u8]) -> Result<ImageAnalysis, BackendError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| BackendError::bad_input(format!("reading the image: {e}")))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif)) => {
            f
        }
        _ => {
            return Err(BackendError::bad_input(
                "the image is not PNG, JPEG, WebP or GIF",
            ));
        }
    };
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_EDGE);
    limits.max_image_height = Some(MAX_EDGE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| {
        BackendError::bad_input(format!("decoding the {} image: {e}", name(format)))
    })?;

    let small = image.thumbnail(STATS_EDGE, STATS_EDGE);
    let rgba = small.to_rgba8();
    let dominant_colors = dominant_colors(&rgba);
    let (brightness, contrast) = luma_stats(&rgba);
    let orientation = exif_orientation(bytes);
    let perceptual_hash = perceptual_hash(&small);

    let mut analysis = ImageAnalysis {
        format: name(format).to_owned(),
        width: image.width(),
        height: image.height(),
        dominant_colors,
        brightness: round3(brightness),
        contrast: round3(contrast),
        orientation,
        perceptual_hash,
        summary: String::new(),
    };
    analysis.summary = summary(&analysis);
    Ok(analysis)
}

fn name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "png",
        ImageFormat::Jpeg => "jpeg",
        ImageFormat::WebP => "webp",
        ImageFormat::Gif => "gif",
        _ => "unknown",
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Buckets pixels by their top three bits per channel (512 buckets), then reports the biggest
/// buckets by their mean colour. Transparent pixels are not part of any colour.
fn dominant_colors(image: &RgbaImage) -> Vec<DominantColor> {
    let mut buckets: HashMap<u16, (u64, [u64; 3])> = HashMap::new();
    let mut opaque = 0u64;
    for pixel in image.pixels() {
        let [r, g, b, a] = pixel.0;
        if a < 128 {
            continue;
        }
        opaque += 1;
        let key = (u16::from(r >> 5) << 6) | (u16::from(g >> 5) << 3) | u16::from(b >> 5);
        let entry = buckets.entry(key).or_insert((0, [0; 3]));
        entry.0 += 1;
        entry.1[0] += u64::from(r);
        entry.1[1] += u64::from(g);
        entry.1[2] += u64::from(b);
    }
    if opaque == 0 {
        return Vec::new();
    }
    let mut ranked: Vec<_> = buckets.into_iter().collect();
    ranked.sort_by(|(ka, (na, _)), (kb, (nb, _))| nb.cmp(na).then(ka.cmp(kb)));
    ranked
        .into_iter()
        .take(MAX_COLORS)
        .map(|(_, (count, sums))| {
            let mean = sums.map(|s| u8::try_from((s + count / 2) / count).unwrap_or(u8::MAX));
            DominantColor {
                hex: format!("#{:02x}{:02x}{:02x}", mean[0], mean[1], mean[2]),
                name: color_name(mean),
                share: round3(count as f64 / opaque as f64),
            }
        })
        .filter(|c| c.share >= MIN_COLOR_SHARE)
        .collect()
}

/// Mean and standard deviation of Rec. 601 luma, both scaled to 0–1.
fn luma_stats(image: &RgbaImage) -> (f64, f64) {
    let n = f64::from(image.width()) * f64::from(image.height());
    if n == 0.0 {
        return (0.0, 0.0);
    }
    let (mut sum, mut sum_sq) = (0.0f64, 0.0f64);
    for pixel in image.pixels() {
        let [r, g, b, _] = pixel.0;
        let y = (0.299 * f64::from(r) + 0.587 * f64::from(g) + 0.114 * f64::from(b)) / 255.0;
        sum += y;
        sum_sq += y * y;
    }
    let mean = sum / n;
    let variance = (sum_sq / n - mean * mean).max(0.0);
    (mean, variance.sqrt())
}

/// A hue word for an RGB colour, with "dark"/"light" where that helps.
fn color_name([r, g, b]: [u8; 3]) -> String {
    let (r, g, b) = (
        f64::from(r) / 255.0,
        f64::from(g) / 255.0,
        f64::from(b) / 255.0,
    );
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let chroma = max - min;
    let saturation = if max == 0.0 { 0.0 } else { chroma / max };
    if max < 0.15 {
        return "black".into();
    }
    if saturation < 0.2 {
        return match max {
            v if v > 0.9 => "white",
            v if v > 0.6 => "light grey",
            v if v > 0.3 => "grey",
            _ => "dark grey",
        }
        .into();
    }
    let hue = if max == r {
        60.0 * ((g - b) / chroma).rem_euclid(6.0)
    } else if max == g {
        60.0 * ((b - r) / chroma + 2.0)
    } else {
        60.0 * ((r - g) / chroma + 4.0)
    };
    let base = match hue {
        h if !(15.0..345.0).contains(&h) => "red",
        h if h < 45.0 => {
            if max < 0.6 {
                return "brown".into();
            }
            "orange"
        }
        h if h < 70.0 => "yellow",
        h if h < 165.0 => "green",
        h if h < 195.0 => "cyan",
        h if h < 255.0 => "blue",
        h if h < 285.0 => "purple",
        h if h < 330.0 => "magenta",
        _ => "pink",
    };
    if max < 0.45 {
        format!("dark {base}")
    } else if saturation < 0.5 && max > 0.8 {
        format!("light {base}")
    } else {
        base.into()
    }
}

/// The EXIF orientation (1–8) of a JPEG, PNG or WebP that has one.
fn exif_orientation(bytes: &[u8]) -> Option<u16> {
    let exif = exif::Reader::new()
        .read_from_container(&mut Cursor::new(bytes))
        .ok()?;
    let field = exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)?;
    let value = field.value.get_uint(0)?;
    u16::try_from(value).ok().filter(|v| (1..=8).contains(v))
}

fn orientation_text(orientation: u16) -> &'static str {
    match orientation {
        1 => "upright",
        2 => "mirrored horizontally",
        3 => "rotated 180°",
        4 => "mirrored vertically",
        5 => "mirrored and rotated 90° clockwise",
        6 => "to be rotated 90° clockwise for display",
        7 => "mirrored and rotated 90° counter-clockwise",
        8 => "to be rotated 90° counter-clockwise for display",
        _ => "unknown",
    }
}

fn perceptual_hash(image: &DynamicImage) -> String {
    let hasher = image_hasher::HasherConfig::new()
        .hash_alg(image_hasher::HashAlg::Gradient)
        .hash_size(8, 8)
        .to_hasher();
    hasher
        .hash_image(image)
        .as_bytes()
        .iter()
        .fold(String::with_capacity(16), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn summary(a: &ImageAnalysis) -> String {
    let shape = match a.width.cmp(&a.height) {
        std::cmp::Ordering::Greater => "landscape",
        std::cmp::Ordering::Less => "portrait",
        std::cmp::Ordering::Equal => "square",
    };
    let mut s = format!(
        "A {}×{} pixel {} {shape} image.",
        a.width,
        a.height,
        a.format.to_uppercase()
    );
    if a.dominant_colors.is_empty() {
        s.push_str(" It is fully transparent.");
    } else {
        let colors: Vec<String> = a
            .dominant_colors
            .iter()
            .map(|c| format!("{} {} ({:.0}%)", c.name, c.hex, c.share * 100.0))
            .collect();
        let _ = write!(s, " Dominant colours: {}.", colors.join(", "));
    }
    let tone = match a.brightness {
        b if b < 0.25 => "dark",
        b if b < 0.45 => "fairly dark",
        b if b < 0.6 => "medium",
        b if b < 0.8 => "bright",
        _ => "very bright",
    };
    let contrast = match a.contrast {
        c if c < 0.05 => "almost no",
        c if c < 0.15 => "low",
        c if c < 0.3 => "moderate",
        _ => "high",
    };
    let _ = write!(
        s,
        " It is {tone} overall (mean brightness {:.0}%) with {contrast} contrast (luma standard deviation {:.0}%).",
        a.brightness * 100.0,
        a.contrast * 100.0
    );
    if let Some(o) = a.orientation {
        let _ = write!(s, " EXIF orientation {o}: {}.", orientation_text(o));
    }
    let _ = write!(s, " Perceptual hash {}.", a.perceptual_hash);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_names() {
        for (rgb, want) in [
            ([255, 0, 0], "red"),
            ([0, 0, 255], "blue"),
            ([0, 128, 0], "green"),
            ([255, 255, 255], "white"),
            ([0, 0, 0], "black"),
            ([128, 128, 128], "grey"),
            ([255, 255, 0], "yellow"),
            ([0, 0, 90], "dark blue"),
            ([140, 80, 20], "brown"),
        ] {
            assert_eq!(color_name(rgb), want, "{rgb:?}");
        }
    }

    #[test]
    fn flat_image_has_no_contrast() {
        let img = RgbaImage::from_pixel(10, 10, image::Rgba([255, 255, 255, 255]));
        let (brightness, contrast) = luma_stats(&img);
        assert!((brightness - 1.0).abs() < 1e-9);
        assert!(contrast < 1e-6);
    }
}
