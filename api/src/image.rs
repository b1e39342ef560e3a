//! Submitted images: base64 decoding within the size limit and the type check by magic
//! bytes. Only PNG, JPEG, WebP and GIF are accepted; the file name or declared content type
//! of an upload is never trusted.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Standard alphabet, padding optional: encoders differ on it.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// An accepted image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    Png,
    Jpeg,
    Webp,
    Gif,
}

/// Why an image was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("the image is empty")]
    Empty,
    #[error("the image is not valid base64: {0}")]
    BadBase64(String),
    #[error("the image is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the image is not PNG, JPEG, WebP or GIF")]
    UnsupportedType,
}

/// The format of `bytes` by its magic bytes, if it is one we accept.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    if infer::image::is_png(bytes) {
        Some(ImageFormat::Png)
    } else if infer::image::is_jpeg(bytes) {
        Some(ImageFormat::Jpeg)
    } else if infer::image::is_webp(bytes) {
        Some(ImageFormat::Webp)
    } else if infer::image::is_gif(bytes) {
        Some(ImageFormat::Gif)
    } else {
        None
    }
}

/// Checks raw image bytes (an upload).
pub fn check_bytes(bytes: &[u8], max_bytes: usize) -> Result<ImageFormat, ImageError> {
    if bytes.is_empty() {
        return Err(ImageError::Empty);
    }
    if bytes.len() > max_bytes {
        return Err(ImageError::TooLarge { limit: max_bytes });
    }
    sniff(bytes).ok_or(ImageError::UnsupportedType)
}

/// Decodes base64 (standard alphabet, padding optional, a `data:…;base64,` prefix and line
/// breaks tolerated) and checks the result. Oversized input is refused before decoding.
pub fn decode_base64(encoded: &str, max_bytes: usize) -> Result<Vec<u8>, ImageError> {
    let encoded = match encoded.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => encoded,
    };
    let compact: String;
    let encoded = if encoded.contains(['\n', '\r', ' ', '\t']) {
        compact = encoded
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        compact.as_str()
    } else {
        encoded
    };
    if encoded.is_empty() {
        return Err(ImageError::Empty);
    }
    // Every 4 characters decode to at most 3 bytes.
    if encoded.len() / 4 * 3 > max_bytes.saturating_add(3) {
        return Err(ImageError::TooLarge { limit: max_bytes });
    }
    let bytes = LENIENT
        .decode(encoded)
        .map_err(|e| ImageError::BadBase64(e.to_string()))?;
    check_bytes(&bytes, max_bytes)?;
    Ok(bytes)
}

/// The canonical encoding stored in a task payload.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest valid PNG (1×1, transparent).
    pub const PNG_1X1: &[u8] = &[
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f,
        0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00,
        0x01, 0x00, 0x00, 0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49,
        0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ];

    #[test]
    fn sniffs_the_four_formats() {
        assert_eq!(sniff(PNG_1X1), Some(ImageFormat::Png));
        assert_eq!(
            sniff(&[0xff, 0xd8, 0xff, 0xe0, 0, 0x10]),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(sniff(b"GIF89a\x01\x00\x01\x00"), Some(ImageFormat::Gif));
        assert_eq!(
            sniff(b"RIFF\x24\x00\x00\x00WEBPVP8 "),
            Some(ImageFormat::Webp)
        );
        assert_eq!(sniff(b"%PDF-1.7"), None);
        assert_eq!(sniff(b"hello world"), None);
    }

    #[test]
    fn decodes_lenient_base64() {
        let plain = encode(PNG_1X1);
        assert_eq!(decode_base64(&plain, 1024).unwrap(), PNG_1X1);
        let unpadded = plain.trim_end_matches('=');
        assert_eq!(decode_base64(unpadded, 1024).unwrap(), PNG_1X1);
        let data_url = format!("data:image/png;base64,{plain}");
        assert_eq!(decode_base64(&data_url, 1024).unwrap(), PNG_1X1);
        let wrapped = format!("{}\n{}", &plain[..20], &plain[20..]);
        assert_eq!(decode_base64(&wrapped, 1024).unwrap(), PNG_1X1);
    }

    #[test]
    fn refuses_bad_images() {
        assert_eq!(decode_base64("", 10), Err(ImageError::Empty));
        assert!(matches!(
            decode_base64("not base64!", 100),
            Err(ImageError::BadBase64(_))
        ));
        assert_eq!(
            decode_base64(&encode(b"plain text, not an image"), 100),
            Err(ImageError::UnsupportedType)
        );
        assert_eq!(
            decode_base64(&encode(PNG_1X1), 10),
            Err(ImageError::TooLarge { limit: 10 })
        );
        // Refused by length alone, before decoding.
        assert_eq!(
            decode_base64(&"A".repeat(4000), 100),
            Err(ImageError::TooLarge { limit: 100 })
        );
        assert_eq!(check_bytes(&[], 10), Err(ImageError::Empty));
    }
}
