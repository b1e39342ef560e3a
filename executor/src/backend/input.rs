//! Turning a payload's `image` / `image_url` fields into image bytes.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::error::BackendError;
use super::fetch::ImageFetcher;

/// Standard alphabet; padding optional, since submitters' encoders differ on it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The image a payload carries, if any: decoded from `image` or fetched from `image_url`.
/// Both set is an error; neither is `Ok(None)`.
pub(crate) async fn image_bytes(
    image: Option<&str>,
    image_url: Option<&str>,
    fetcher: &ImageFetcher,
) -> Result<Option<Vec<u8>>, BackendError> {
    match (image, image_url) {
        (Some(_), Some(_)) => Err(BackendError::bad_input(
            "give either image or image_url, not both",
        )),
        (Some(encoded), None) => decode_base64(encoded, fetcher.max_bytes()).map(Some),
        (None, Some(url)) => fetcher.fetch(url).await.map(Some),
        (None, None) => Ok(None),
    }
}

/// Decodes standard base64, tolerating a `data:…;base64,` prefix and line breaks.
pub(crate) fn decode_base64(encoded: &str, max_bytes: u64) -> Result<Vec<u8>, BackendError> {
    let encoded = match encoded.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => encoded,
    };
    // Three bytes per four characters: refuse oversized input before allocating for it.
    if (encoded.len() as u64 / 4).saturating_mul(3) > max_bytes.saturating_add(3) {
        return Err(BackendError::bad_input(format!(
            "image is larger than {max_bytes} bytes"
        )));
    }
    let compact: String = encoded.chars().filter(|c| !c.is_whitespace()).collect();
    let bytes = BASE64
        .decode(compact.as_bytes())
        .map_err(|e| BackendError::bad_input(format!("image is not valid base64: {e}")))?;
    if bytes.is_empty() {
        return Err(BackendError::bad_input("image is empty"));
    }
    if bytes.len() as u64 > max_bytes {
        return Err(BackendError::bad_input(format!(
            "image is larger than {max_bytes} bytes"
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_padding_either_way_and_data_urls() {
        assert_eq!(decode_base64("aGk=", 10).unwrap(), b"hi");
        assert_eq!(decode_base64("aGk", 10).unwrap(), b"hi");
        assert_eq!(
            decode_base64("data:image/png;base64,aGk=", 10).unwrap(),
            b"hi"
        );
        assert_eq!(decode_base64("aG\nk=", 10).unwrap(), b"hi");
    }

    #[test]
    fn rejects_bad_or_oversized_input() {
        for (input, max) in [("not base64!", 100), ("", 100), ("aGVsbG8gd29ybGQ=", 4)] {
            let err = decode_base64(input, max).unwrap_err();
            assert_eq!(err.kind(), "bad_input", "{input}");
        }
    }
}
