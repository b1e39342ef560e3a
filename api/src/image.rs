//! A submission's image: the `image` / `image_url` fields, base64 decoding within the size
//! limit, the type check by magic bytes, and the `image_url` check. Only PNG, JPEG, WebP and
//! GIF are accepted; the file name or declared content type of an upload is never trusted.
//!
//! The rules shared with the executor (one field at most, base64, which URLs and addresses
//! are allowed) live in [`ragpool_runtime::image_input`]; this module maps their refusals to
//! API errors. The URL check here is the first of two: DNS answers can change between
//! submission and fetch, so the executor checks again and pins the connection.

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ragpool_runtime::image_input::{self, DecodeError, ImageSource, UrlRefused};

use crate::error::ApiError;
use crate::state::AppState;

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
    check_parts(bytes.len(), bytes, max_bytes)
}

/// Checks an image of `len` bytes that begin with `head`.
fn check_parts(len: usize, head: &[u8], max_bytes: usize) -> Result<ImageFormat, ImageError> {
    if len == 0 {
        return Err(ImageError::Empty);
    }
    if len > max_bytes {
        return Err(ImageError::TooLarge { limit: max_bytes });
    }
    sniff(head).ok_or(ImageError::UnsupportedType)
}

fn decode_error(e: DecodeError) -> ImageError {
    match e {
        DecodeError::Empty => ImageError::Empty,
        DecodeError::BadBase64(reason) => ImageError::BadBase64(reason),
        DecodeError::TooLarge { limit } => ImageError::TooLarge { limit },
    }
}

/// Checks canonical base64 (see [`is_canonical`]) as [`decode_base64`] does, a few
/// kilobytes at a time: the decoded image is never held.
fn check_canonical(encoded: &str, max_bytes: usize) -> Result<ImageFormat, ImageError> {
    let scanned = image_input::scan_base64(encoded, max_bytes).map_err(decode_error)?;
    check_parts(scanned.len, &scanned.head, max_bytes)
}

/// Decodes base64 (standard alphabet, padding optional, a `data:…;base64,` prefix and line
/// breaks tolerated) and checks the result. Oversized input is refused before decoding.
pub fn decode_base64(encoded: &str, max_bytes: usize) -> Result<Vec<u8>, ImageError> {
    let bytes = image_input::decode_base64(encoded, max_bytes).map_err(decode_error)?;
    check_bytes(&bytes, max_bytes)?;
    Ok(bytes)
}

/// The canonical encoding stored in a task payload.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// [`encode`], in the buffer that holds the bytes: an upload becomes its base64 without
/// being held twice. Reserve 4/3 of the bytes' length (plus 4) up front and the buffer is
/// not even moved.
pub fn encode_in_place(mut bytes: Vec<u8>) -> String {
    // Whole 3-byte groups per piece, so every piece but the last encodes without padding.
    const PIECE: usize = 3 * 4096;
    let len = bytes.len();
    bytes.resize(len.div_ceil(3) * 4, 0);
    let mut piece = [0u8; PIECE / 3 * 4];
    // From the last piece back: piece [a, b) encodes to [a/3*4, b/3*4), which starts at or
    // after `a`, so it only overwrites bytes already encoded; and it ends where the next
    // piece's encoding begins.
    for start in (0..len).step_by(PIECE).rev() {
        let end = (start + PIECE).min(len);
        // `piece` fits a whole piece's encoding, so this cannot fail.
        let n = STANDARD
            .encode_slice(&bytes[start..end], &mut piece)
            .unwrap_or_default();
        let at = start / 3 * 4;
        bytes[at..at + n].copy_from_slice(&piece[..n]);
    }
    // Base64 is ASCII: this takes the buffer as it is.
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Whether base64 that decoded is already [`encode`]'s form: padded, with no prefix or line
/// breaks. The decoder refuses non-zero trailing bits, so such input has one encoding only.
fn is_canonical(encoded: &str) -> bool {
    encoded.len().is_multiple_of(4)
        && encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
}

/// The checked image of a submission: canonical base64 or a checked URL.
pub struct ImageInput {
    pub image: Option<String>,
    pub image_url: Option<String>,
}

/// Checks `image` / `image_url`: at most one, and exactly one when `required`.
pub async fn image_input(
    state: &AppState,
    image: Option<String>,
    image_url: Option<String>,
    required: bool,
) -> Result<ImageInput, ApiError> {
    let source = image_input::image_source(image, image_url)
        .map_err(|both| ApiError::invalid_field(both.to_string()))?;
    match source {
        Some(ImageSource::Inline(encoded)) => {
            let max = state.limits().max_image_bytes;
            // Most clients send canonical base64 already: check it a piece at a time and keep
            // it, rather than hold the decoded image, or a second encoding, beside it.
            let image = if is_canonical(&encoded) {
                check_canonical(&encoded, max).map_err(|e| image_error(e, "image"))?;
                encoded
            } else {
                let bytes = decode_base64(&encoded, max).map_err(|e| image_error(e, "image"))?;
                encode(&bytes)
            };
            Ok(ImageInput {
                image: Some(image),
                image_url: None,
            })
        }
        Some(ImageSource::Url(url)) => Ok(ImageInput {
            image: None,
            image_url: Some(checked_url(state, &url).await?),
        }),
        None if required => Err(ApiError::missing_field("image or image_url")),
        None => Ok(ImageInput {
            image: None,
            image_url: None,
        }),
    }
}

async fn checked_url(state: &AppState, url: &str) -> Result<String, ApiError> {
    if !state.allow_image_urls() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "image_url_disabled",
            "image_url is not enabled on this server; send the image itself",
        ));
    }
    if url.trim().is_empty() {
        return Err(ApiError::empty_field("image_url"));
    }
    match check_image_url(url).await {
        Ok(url) => Ok(url.to_string()),
        Err(UrlRefused::TooLong) => Err(ApiError::too_large(
            "text_too_large",
            UrlRefused::TooLong.to_string(),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "image_url_refused",
            e.to_string(),
        )),
    }
}

/// Checks `raw` and returns it parsed: its form, then every address its host resolves to (an
/// IP literal needs no lookup).
pub async fn check_image_url(raw: &str) -> Result<image_input::Url, UrlRefused> {
    let url = image_input::parse_url(raw)?;
    image_input::resolve(&url).await?;
    Ok(url)
}

/// The API error for a refused image.
pub fn image_error(e: ImageError, field: &str) -> ApiError {
    match e {
        ImageError::Empty => ApiError::empty_field(field),
        ImageError::BadBase64(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_base64", e.to_string())
        }
        ImageError::TooLarge { .. } => ApiError::too_large("image_too_large", e.to_string()),
        ImageError::UnsupportedType => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_image",
            e.to_string(),
        ),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn canonical_base64_is_kept_as_sent() {
        let bytes = b"\x89PNG\r\n\x1a\n and more";
        let canonical = encode(bytes);
        assert!(is_canonical(&canonical));
        for other in [
            format!("data:image/png;base64,{canonical}"),
            canonical.trim_end_matches('=').to_owned(),
            format!("{}\n{}", &canonical[..8], &canonical[8..]),
        ] {
            assert!(!is_canonical(&other), "{other}");
            assert_eq!(
                encode(&decode_base64(&other, 1024).unwrap()),
                canonical,
                "{other}"
            );
        }
    }

    #[test]
    fn encoding_in_place_is_encoding() {
        let bytes: Vec<u8> = (0..30_000u32).map(|i| (i * 31 % 256) as u8).collect();
        for len in (0..20).chain([12_287, 12_288, 12_289, 24_576, 24_577, 30_000]) {
            let mut buf = Vec::with_capacity(len / 3 * 4 + 4);
            buf.extend_from_slice(&bytes[..len]);
            let at = buf.as_ptr();
            let encoded = encode_in_place(buf);
            assert_eq!(encoded, encode(&bytes[..len]), "{len}");
            if len > 0 {
                assert_eq!(encoded.as_ptr(), at, "{len}: not moved");
            }
        }
    }

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

    #[tokio::test]
    async fn checks_urls() {
        // The address rules have their own table in the queue crate; this is the wiring.
        for (url, refused) in [
            ("http://93.184.216.34/x.png", "must use https"),
            ("https://user:pw@93.184.216.34/", "credentials"),
            ("https://[::1]:8443/x.png", "a non-public address"),
            ("https://2130706433/x.png", "a non-public address"),
            ("https://localhost/x.png", "a non-public address"),
            ("not a url", "not a valid URL"),
        ] {
            let err = check_image_url(url).await.unwrap_err().to_string();
            assert!(err.contains(refused), "{url}: {err}");
        }
        let long = format!(
            "https://93.184.216.34/{}",
            "a".repeat(image_input::MAX_URL_LEN)
        );
        assert_eq!(check_image_url(&long).await, Err(UrlRefused::TooLong));
        // An IP literal needs no DNS, so this runs offline.
        let ok = check_image_url("https://93.184.216.34/cat.png")
            .await
            .unwrap();
        assert_eq!(ok.host_str(), Some("93.184.216.34"));
    }
}
