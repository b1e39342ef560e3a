//! Local image analysis: the facts about an image that need no model.
//!
//! Format, size, dominant colours, brightness, contrast, EXIF orientation and a perceptual
//! hash, plus a one-paragraph summary of them that can be used as text context for an answer.
//! Colour statistics are computed on a copy at most [`STATS_EDGE`] pixels on its longer side:
//! they describe proportions, which a downscaled copy keeps, and the cost stays flat however
//! large the upload.
//!
//! Brightness, contrast and colours describe what is visible: each pixel counts in proportion
//! to its alpha, so a fully transparent pixel counts not at all (not as black, which its
//! colour channels usually say). The copy is downscaled with colours premultiplied by alpha,
//! so an invisible pixel's colour does not bleed into a visible neighbour either. How much of
//! the image is transparent is reported separately, and said in the summary.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbaImage};
use serde::{Deserialize, Serialize};

use super::error::BackendError;

const STATS_EDGE: u32 = 128;
/// Largest width or height decoded; beyond this an upload is more likely an attack than a photo.
const MAX_EDGE: u32 = 16_384;
const MAX_COLORS: usize = 5;
/// Colours covering less of the image than this are noise (anti-aliased edges, compression).
const MIN_COLOR_SHARE: f64 = 0.02;
/// From this transparency on, the summary says the image is mostly transparent.
const MOSTLY_TRANSPARENT: f64 = 0.5;
/// From this transparency on, the summary says the image is partly transparent.
const PARTLY_TRANSPARENT: f64 = 0.1;

/// What the builtin backend reports about an image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageAnalysis {
    /// `png`, `jpeg`, `webp` or `gif`.
    pub format: String,
    pub width: u32,
    pub height: u32,
    /// Most common colours, most common first.
    pub dominant_colors: Vec<DominantColor>,
    /// Mean luma (Rec. 601) of the visible pixels, weighted by alpha: 0 = black, 1 = white.
    pub brightness: f64,
    /// Standard deviation of that luma, 0–1 (0 = one flat tone).
    pub contrast: f64,
    /// How see-through the image is, 0–1: one minus its mean alpha (0 = opaque, 1 = nothing
    /// visible).
    #[serde(default)]
    pub transparency: f64,
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
    /// Fraction of the visible image (pixels weighted by alpha), 0–1.
    pub share: f64,
}

/// What a decoder may allocate for an image's metadata beyond its pixels: ICC profile, text,
/// EXIF and XMP chunks, and its row buffers. It is the decoder's `max_alloc` while the header
/// is read: past it a PNG's ICC profile is dropped (however far it would inflate) and text or
/// EXIF refuses the image.
pub(crate) const METADATA_ALLOWANCE: u64 = 4 * 1024 * 1024;
/// Text chunks (`tEXt`, `zTXt`, `iTXt`) a PNG may carry. The decoder keeps each one in a
/// record of its own that costs a few hundred bytes beyond the text its limit counts; real
/// images carry a handful.
const MAX_PNG_TEXT_CHUNKS: usize = 256;

/// The memory opening a decoder on `len` bytes and reading its header may take, before any
/// pixel is decoded: a JPEG or WebP decoder's copy of the file, the metadata read before the
/// pixels (up to [`METADATA_ALLOWANCE`]) and the EXIF block handed out for the orientation (at
/// most the file).
pub(crate) fn probe_cost(len: u64) -> u64 {
    2 * len + METADATA_ALLOWANCE
}

/// The peak memory decoding and analysing `bytes` may take beyond [`probe_cost`], in bytes,
/// estimated from its header alone: the decoded pixels, what the format's decoder holds
/// besides them, the RGBA copy the statistics may need and the downscaling's intermediate
/// rows. An image wider or taller than [`MAX_EDGE`] is refused here, before any pixel is
/// decoded.
pub(crate) fn decode_cost(bytes: &[u8]) -> Result<u64, BackendError> {
    let (format, decoder) = open(bytes)?;
    Ok(Needs::of(format, &decoder).total)
}

/// Memory a decode needs, from the decoder's header.
struct Needs {
    /// What the decoder allocates beside its output: its `max_alloc` for the decode.
    decoder_own: u64,
    /// Everything beyond [`probe_cost`].
    total: u64,
}

impl Needs {
    fn of(format: ImageFormat, decoder: &impl ImageDecoder) -> Needs {
        let (width, height) = decoder.dimensions();
        let color = decoder.color_type();
        let pixels = u64::from(width) * u64::from(height);
        let decoded = u64::from(color.bytes_per_pixel());
        // Held by the decoder next to its output: a progressive JPEG keeps 16-bit coefficients
        // for every sample, a lossless WebP decodes to 32-bit ARGB and converts, a GIF frame is
        // composed into an RGBA canvas.
        let per_pixel_own = match format {
            ImageFormat::Jpeg => 2 * u64::from(color.channel_count()),
            ImageFormat::WebP | ImageFormat::Gif => 4,
            _ => 0,
        };
        // `stats_copy` converts an image with alpha to RGBA8 (free if it already is).
        let rgba_copy = if color.has_alpha() && color != image::ColorType::Rgba8 {
            4
        } else {
            0
        };
        // Downscaling resamples vertically first, into 32-bit float RGBA rows.
        let resample = u64::from(width) * u64::from(STATS_EDGE) * 16;
        let decoder_own = pixels * per_pixel_own;
        Needs {
            decoder_own,
            total: pixels * (decoded + rgba_copy) + decoder_own + resample,
        }
    }
}

/// A decoder for `bytes` with its header read, allocating at most [`METADATA_ALLOWANCE`]
/// for metadata; refuses formats other than PNG, JPEG, WebP and GIF, images over
/// [`MAX_EDGE`] a side and PNGs with more than [`MAX_PNG_TEXT_CHUNKS`] text chunks.
fn open(bytes: &[u8]) -> Result<(ImageFormat, impl ImageDecoder + '_), BackendError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| BackendError::bad_input(format!("reading the image: {e}")))?;
    let format = reader
        .format()
        .filter(|f| {
            matches!(
                f,
                ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP | ImageFormat::Gif
            )
        })
        .ok_or_else(|| BackendError::bad_input("the image is not PNG, JPEG, WebP or GIF"))?;
    if format == ImageFormat::Png {
        check_png_text_chunks(bytes)?;
    }
    reader.limits(limits(METADATA_ALLOWANCE));
    let decoder = reader.into_decoder().map_err(|e| {
        BackendError::bad_input(format!("reading the {} header: {e}", name(format)))
    })?;
    Ok((format, decoder))
}

fn limits(max_alloc: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_EDGE);
    limits.max_image_height = Some(MAX_EDGE);
    limits.max_alloc = Some(max_alloc);
    limits
}

/// Refuses a PNG with more than [`MAX_PNG_TEXT_CHUNKS`] text chunks, walking the chunk
/// headers without reading their data. A malformed chunk list is left to the decoder.
fn check_png_text_chunks(bytes: &[u8]) -> Result<(), BackendError> {
    const SIGNATURE: usize = 8;
    let mut at = SIGNATURE;
    let mut texts = 0usize;
    while let Some(header) = at.checked_add(8).and_then(|end| bytes.get(at..end)) {
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let kind = &header[4..8];
        if matches!(kind, b"tEXt" | b"zTXt" | b"iTXt") {
            texts += 1;
            if texts > MAX_PNG_TEXT_CHUNKS {
                return Err(BackendError::bad_input(format!(
                    "the png image carries more than {MAX_PNG_TEXT_CHUNKS} text chunks"
                )));
            }
        }
        if kind == b"IDAT" || kind == b"IEND" {
            break;
        }
        // Length, type, data and CRC.
        at = at.saturating_add(12).saturating_add(len);
    }
    Ok(())
}

/// Decodes and analyses `bytes`. CPU-bound: run it on the blocking pool.
pub(crate) fn analyze(bytes: &[u8]) -> Result<ImageAnalysis, BackendError> {
    let (format, mut decoder) = open(bytes)?;
    let needs = Needs::of(format, &decoder);
    decoder.set_limits(limits(needs.decoder_own)).map_err(|e| {
        BackendError::bad_input(format!("decoding the {} image: {e}", name(format)))
    })?;
    let orientation = exif_orientation(&mut decoder);
    let image = DynamicImage::from_decoder(decoder).map_err(|e| {
        BackendError::bad_input(format!("decoding the {} image: {e}", name(format)))
    })?;

    let (width, height) = (image.width(), image.height());
    let small = stats_copy(image);
    let rgba = small.to_rgba8();
    let dominant_colors = dominant_colors(&rgba);
    let luma = luma_stats(&rgba);
    let perceptual_hash = perceptual_hash(&small);

    let mut analysis = ImageAnalysis {
        format: name(format).to_owned(),
        width,
        height,
        dominant_colors,
        brightness: round3(luma.mean),
        contrast: round3(luma.deviation),
        transparency: round3(1.0 - luma.visible),
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

/// The copy statistics are computed on: at most [`STATS_EDGE`] a side (a smaller image is
/// kept as it is: enlarging it would invent colours between its pixels) and, when the image
/// has an alpha channel, with colours premultiplied by alpha, so that downscaling averages
/// what is visible.
fn stats_copy(image: DynamicImage) -> DynamicImage {
    let image = if image.color().has_alpha() {
        let mut rgba = image.into_rgba8();
        for pixel in rgba.pixels_mut() {
            let alpha = u16::from(pixel.0[3]);
            for channel in &mut pixel.0[..3] {
                *channel = premultiply(*channel, alpha);
            }
        }
        DynamicImage::ImageRgba8(rgba)
    } else {
        image
    };
    if image.width() > STATS_EDGE || image.height() > STATS_EDGE {
        image.thumbnail(STATS_EDGE, STATS_EDGE)
    } else {
        image
    }
}

fn premultiply(channel: u8, alpha: u16) -> u8 {
    u8::try_from((u16::from(channel) * alpha + 127) / 255).unwrap_or(u8::MAX)
}

/// A premultiplied pixel's colour as it was before premultiplying, and its alpha as a weight
/// 0–1. `None` for a fully transparent pixel.
fn unpremultiply([r, g, b, a]: [u8; 4]) -> Option<([f64; 3], f64)> {
    if a == 0 {
        return None;
    }
    let weight = f64::from(a) / 255.0;
    let colour = [r, g, b].map(|c| (f64::from(c) / weight).min(255.0));
    Some((colour, weight))
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Buckets the visible pixels of a premultiplied image by the top three bits of each colour
/// channel (512 buckets), each pixel weighted by its alpha, then reports the heaviest buckets
/// by their mean colour.
fn dominant_colors(image: &RgbaImage) -> Vec<DominantColor> {
    // Per bucket: total weight and the weighted sum of each channel.
    let mut buckets: HashMap<u16, (f64, [f64; 3])> = HashMap::new();
    let mut visible = 0.0f64;
    for pixel in image.pixels() {
        let Some((colour, weight)) = unpremultiply(pixel.0) else {
            continue;
        };
        visible += weight;
        let [r, g, b] = colour.map(|c| c as u8 >> 5);
        let key = (u16::from(r) << 6) | (u16::from(g) << 3) | u16::from(b);
        let entry = buckets.entry(key).or_insert((0.0, [0.0; 3]));
        entry.0 += weight;
        for (sum, c) in entry.1.iter_mut().zip(colour) {
            *sum += weight * c;
        }
    }
    if visible == 0.0 {
        return Vec::new();
    }
    let mut ranked: Vec<_> = buckets.into_iter().collect();
    ranked.sort_by(|(ka, (wa, _)), (kb, (wb, _))| wb.total_cmp(wa).then(ka.cmp(kb)));
    ranked
        .into_iter()
        .take(MAX_COLORS)
        .map(|(_, (weight, sums))| {
            let mean = sums.map(|s| (s / weight).round().clamp(0.0, 255.0) as u8);
            DominantColor {
                hex: format!("#{:02x}{:02x}{:02x}", mean[0], mean[1], mean[2]),
                name: color_name(mean),
                share: round3(weight / visible),
            }
        })
        .filter(|c| c.share >= MIN_COLOR_SHARE)
        .collect()
}

/// Luma over the visible pixels, and how much is visible.
#[derive(Debug, Clone, Copy, PartialEq)]
struct LumaStats {
    /// Mean Rec. 601 luma, 0–1, each pixel weighted by its alpha; 0 when nothing is visible.
    mean: f64,
    /// Its standard deviation, 0–1, weighted the same way.
    deviation: f64,
    /// Mean alpha, 0–1.
    visible: f64,
}

/// [`LumaStats`] of a premultiplied image.
fn luma_stats(image: &RgbaImage) -> LumaStats {
    let n = f64::from(image.width()) * f64::from(image.height());
    let (mut weight, mut sum, mut sum_sq) = (0.0f64, 0.0f64, 0.0f64);
    for pixel in image.pixels() {
        let Some(([r, g, b], w)) = unpremultiply(pixel.0) else {
            continue;
        };
        let y = (0.299 * r + 0.587 * g + 0.114 * b) / 255.0;
        weight += w;
        sum += w * y;
        sum_sq += w * y * y;
    }
    if weight == 0.0 {
        return LumaStats {
            mean: 0.0,
            deviation: 0.0,
            visible: 0.0,
        };
    }
    let mean = sum / weight;
    let variance = (sum_sq / weight - mean * mean).max(0.0);
    LumaStats {
        mean,
        deviation: variance.sqrt(),
        visible: weight / n,
    }
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

/// The EXIF orientation (1–8) of an image that has one. Only the first directory's
/// `Orientation` entry is read (the image crate's reader), however many entries or however
/// much data the EXIF block carries.
fn exif_orientation(decoder: &mut impl ImageDecoder) -> Option<u16> {
    let exif = decoder.exif_metadata().ok()??;
    Orientation::from_exif_chunk(&exif).map(|o| u16::from(o.to_exif()))
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
        let transparent = a.transparency * 100.0;
        if a.transparency >= MOSTLY_TRANSPARENT {
            let _ = write!(
                s,
                " It is mostly transparent ({transparent:.0}%); what follows describes its visible part."
            );
        } else if a.transparency >= PARTLY_TRANSPARENT {
            let _ = write!(s, " It is partly transparent ({transparent:.0}%).");
        }
        let colors: Vec<String> = a
            .dominant_colors
            .iter()
            .map(|c| format!("{} {} ({:.0}%)", c.name, c.hex, c.share * 100.0))
            .collect();
        let _ = write!(s, " Dominant colours: {}.", colors.join(", "));
        tone(&mut s, a);
    }
    if let Some(o) = a.orientation {
        let _ = write!(s, " EXIF orientation {o}: {}.", orientation_text(o));
    }
    let _ = write!(s, " Perceptual hash {}.", a.perceptual_hash);
    s
}

/// The brightness and contrast sentence.
fn tone(s: &mut String, a: &ImageAnalysis) {
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
        let stats = luma_stats(&img);
        assert!((stats.mean - 1.0).abs() < 1e-9);
        assert!(stats.deviation < 1e-6);
        assert!((stats.visible - 1.0).abs() < 1e-9);
    }

    fn png(image: RgbaImage) -> Vec<u8> {
        let mut bytes = Vec::new();
        DynamicImage::ImageRgba8(image)
            .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
            .unwrap();
        bytes
    }

    /// A 256×256 PNG, invisible except for a light grey 64×64 square at an odd offset, so
    /// downscaling mixes its edges with the invisible background.
    fn grey_square_on(background: [u8; 4]) -> Vec<u8> {
        let mut image = RgbaImage::from_pixel(256, 256, image::Rgba(background));
        for y in 33..97 {
            for x in 33..97 {
                image.put_pixel(x, y, image::Rgba([200, 200, 200, 255]));
            }
        }
        png(image)
    }

    #[test]
    fn transparent_pixels_are_not_black() {
        // Black and white invisible backgrounds must give the same answer.
        for background in [[0, 0, 0, 0], [255, 255, 255, 0]] {
            let a = analyze(&grey_square_on(background)).unwrap();
            // 1/16 of the area is visible; the mixed edges make it a little more.
            assert!(
                (0.93..=0.94).contains(&a.transparency),
                "{}",
                a.transparency
            );
            assert!((a.brightness - 0.784).abs() < 0.002, "{}", a.brightness);
            assert!(a.contrast < 0.01, "{background:?}: {}", a.contrast);
            assert_eq!(a.dominant_colors.len(), 1, "{:?}", a.dominant_colors);
            let grey = &a.dominant_colors[0];
            assert_eq!((grey.name.as_str(), grey.share), ("light grey", 1.0));
            assert_eq!(grey.hex, "#c8c8c8");
            let expected = "A 256×256 pixel PNG square image. It is mostly transparent (94%); \
                 what follows describes its visible part. Dominant colours: light grey #c8c8c8 \
                 (100%). It is bright overall (mean brightness 78%) with almost no contrast \
                 (luma standard deviation 0%).";
            assert!(a.summary.starts_with(expected), "{}", a.summary);
        }
    }

    #[test]
    fn half_visible_pixels_count_half() {
        // Black at full alpha beside white at a third of it: white is a quarter of what is
        // visible.
        let mut image = RgbaImage::from_pixel(2, 1, image::Rgba([0, 0, 0, 255]));
        image.put_pixel(1, 0, image::Rgba([255, 255, 255, 85]));
        let a = analyze(&png(image)).unwrap();
        assert_eq!(a.brightness, 0.25);
        assert_eq!(a.transparency, 0.333);
        let shares: Vec<_> = a
            .dominant_colors
            .iter()
            .map(|c| (c.name.as_str(), c.share))
            .collect();
        assert_eq!(shares, [("black", 0.75), ("white", 0.25)]);
        assert!(
            a.summary.contains("It is partly transparent (33%)."),
            "{}",
            a.summary
        );
    }

    /// A 1×1 PNG with `texts` `tEXt` chunks before its pixels.
    fn png_with_texts(texts: usize) -> Vec<u8> {
        let plain = png(RgbaImage::from_pixel(1, 1, image::Rgba([1, 2, 3, 255])));
        let (head, tail) = plain.split_at(8 + 25); // signature and IHDR
        let mut out = head.to_vec();
        for _ in 0..texts {
            let mut crc = flate2::Crc::new();
            crc.update(b"tEXtk\0");
            out.extend_from_slice(&2u32.to_be_bytes());
            out.extend_from_slice(b"tEXtk\0");
            out.extend_from_slice(&crc.sum().to_be_bytes());
        }
        out.extend_from_slice(tail);
        out
    }

    #[test]
    fn png_text_chunks_are_counted_before_decoding() {
        let a = analyze(&png_with_texts(MAX_PNG_TEXT_CHUNKS)).unwrap();
        assert_eq!((a.width, a.height), (1, 1));
        let err = analyze(&png_with_texts(MAX_PNG_TEXT_CHUNKS + 1)).unwrap_err();
        assert_eq!(err.kind(), "bad_input");
        assert!(err.message().contains("text chunks"), "{err}");
        // A chunk length running past the end stops the walk instead of overflowing.
        let mut truncated = png_with_texts(1);
        truncated[33..37].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(check_png_text_chunks(&truncated).is_ok());
    }

    #[test]
    fn fully_transparent_image() {
        let a = analyze(&png(RgbaImage::from_pixel(4, 4, image::Rgba([9, 9, 9, 0])))).unwrap();
        assert_eq!(a.transparency, 1.0);
        assert!(a.dominant_colors.is_empty());
        assert!(
            a.summary.contains("It is fully transparent."),
            "{}",
            a.summary
        );
        assert!(!a.summary.contains("brightness"), "{}", a.summary);
    }

    #[test]
    fn opaque_images_report_no_transparency() {
        let a = analyze(&png(RgbaImage::from_pixel(
            8,
            8,
            image::Rgba([200, 30, 30, 255]),
        )))
        .unwrap();
        assert_eq!(a.transparency, 0.0);
        assert!(!a.summary.contains("transparent"), "{}", a.summary);
    }
}
