//! Turning a payload's `image` / `image_url` fields into image bytes, by the rules of
//! [`ragpool_runtime::image_input`] (the same ones the API checked at submission).

use ragpool_runtime::image_input::{self, DecodeError, ImageSource};

use super::error::BackendError;
use super::fetch::ImageFetcher;

/// The image a payload carries, if any: decoded from `image` or fetched from `image_url`.
/// Both set is an error; neither is `Ok(None)`.
pub(crate) async fn image_bytes(
    image: Option<&str>,
    image_url: Option<&str>,
    fetcher: &ImageFetcher,
) -> Result<Option<Vec<u8>>, BackendError> {
    match image_input::image_source(image, image_url)
        .map_err(|both| BackendError::bad_input(both.to_string()))?
    {
        Some(ImageSource::Inline(encoded)) => decode_base64(encoded, fetcher.max_bytes()).map(Some),
        Some(ImageSource::Url(url)) => fetcher.fetch(url).await.map(Some),
        None => Ok(None),
    }
}

/// The most bytes `encoded` base64 can decode to.
pub(crate) fn decoded_len(encoded: &str) -> u64 {
    (encoded.len() as u64).div_ceil(4) * 3
}

/// Decodes standard base64, tolerating a `data:…;base64,` prefix and line breaks.
pub(crate) fn decode_base64(encoded: &str, max_bytes: u64) -> Result<Vec<u8>, BackendError> {
    let max_bytes = usize::try_from(max_bytes).unwrap_or(usize::MAX);
    image_input::decode_base64(encoded, max_bytes)
        .map_err(|e: DecodeError| BackendError::bad_input(e.to_string()))
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
    fn decoded_len_bounds_the_decoded_copy() {
        for encoded in [
            "aGk=",
            "aGk",
            "aGVsbG8gd29ybGQ=",
            "data:image/png;base64,aGk=",
        ] {
            let decoded = decode_base64(encoded, 100).unwrap();
            assert!(decoded.len() as u64 <= decoded_len(encoded), "{encoded}");
        }
    }

    #[test]
    fn rejects_bad_or_oversized_input() {
        for (input, max) in [("not base64!", 100), ("", 100), ("aGVsbG8gd29ybGQ=", 4)] {
            let err = decode_base64(input, max).unwrap_err();
            assert_eq!(err.kind(), "bad_input", "{input}");
        }
    }
}
