//! Fetching a task's `image_url` without letting a submitter reach inside the cluster.
//!
//! The URL comes from whoever submitted the task, and the executor runs next to Redis, the
//! model servers and the cloud metadata endpoint. Which URLs and addresses are allowed is
//! decided by [`ragpool_runtime::image_input`], the rules the API applied at submission; here
//! they are applied again at fetch time, because a DNS answer can change in between. The
//! host is resolved and judged before every request; the connection is pinned to the
//! addresses that were checked (no second DNS answer can swap them, and no proxy from the
//! environment is used); redirects are followed by hand, each hop checked the same way; and
//! the body is capped while it streams.

use std::net::SocketAddr;
use std::time::Duration;

use ragpool_runtime::image_input::{self, UrlRefused};
use reqwest::Url;

use super::config::FetchConfig;
use super::error::{BackendError, kinds};
use super::transport::{error_chain, transfer_cause};

const MAX_REDIRECTS: usize = 5;

/// Downloads images from submitter-supplied URLs, within [`FetchConfig`]'s limits.
#[derive(Debug, Clone)]
pub(crate) struct ImageFetcher {
    max_bytes: u64,
    timeout: Duration,
}

impl ImageFetcher {
    pub fn new(config: &FetchConfig) -> Self {
        Self {
            max_bytes: config.max_bytes,
            timeout: config.timeout(),
        }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The body at `url`, following up to five checked redirects. Traced as its own span;
    /// the trace context is not sent to the image's host, which is not ours.
    pub async fn fetch(&self, url: &str) -> Result<Vec<u8>, BackendError> {
        tracing::Instrument::instrument(
            self.fetch_untraced(url),
            tracing::info_span!("fetch image"),
        )
        .await
    }

    async fn fetch_untraced(&self, url: &str) -> Result<Vec<u8>, BackendError> {
        let mut url = image_input::parse_url(url).map_err(refused)?;
        for _ in 0..=MAX_REDIRECTS {
            let response = self.request(&url).await?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| {
                        BackendError::bad_input(format!(
                            "{} redirected without a location",
                            shown(&url)
                        ))
                    })?;
                url = next_hop(&url, location)?;
                continue;
            }
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                return Err(BackendError::retryable(
                    kinds::FETCH_FAILED,
                    format!("fetching the image from {}: HTTP {status}", shown(&url)),
                    None,
                ));
            }
            if !status.is_success() {
                return Err(BackendError::bad_input(format!(
                    "fetching the image from {}: HTTP {status}",
                    shown(&url)
                )));
            }
            return self.read_capped(response, &url).await;
        }
        Err(BackendError::bad_input(format!(
            "image_url redirected more than {MAX_REDIRECTS} times"
        )))
    }

    async fn request(&self, url: &Url) -> Result<reqwest::Response, BackendError> {
        let addrs = checked_addrs(url).await?;
        let mut client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the host itself, past the address check.
            .no_proxy()
            .timeout(self.timeout);
        if let Some(host) = url.host_str() {
            client = client.resolve_to_addrs(host, &addrs);
        }
        let client = client
            .build()
            .map_err(|e| BackendError::internal(format!("creating the image client: {e}")))?;
        client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| transfer_failed("fetching", url, e))
    }

    async fn read_capped(
        &self,
        mut response: reqwest::Response,
        url: &Url,
    ) -> Result<Vec<u8>, BackendError> {
        let too_large = || {
            BackendError::bad_input(format!(
                "the image from {} is larger than {} bytes",
                shown(url),
                self.max_bytes
            ))
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transfer_failed("reading", url, e))?
        {
            if (body.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// Where a redirect from `url` leads, if that is a URL an image may be fetched from. Its host
/// is resolved and judged again when it is requested.
fn next_hop(url: &Url, location: &str) -> Result<Url, BackendError> {
    let next = url.join(location).map_err(|e| {
        BackendError::bad_input(format!("{} redirected to a bad location: {e}", shown(url)))
    })?;
    image_input::check_url(&next).map_err(refused)?;
    Ok(next)
}

/// The addresses `url`'s host resolves to, if it is `https` and all of them are public.
async fn checked_addrs(url: &Url) -> Result<Vec<SocketAddr>, BackendError> {
    image_input::resolve(url).await.map_err(refused)
}

/// A failed transfer, which may pass later, named by its kind (refused, reset, timed out).
fn transfer_failed(doing: &str, url: &Url, e: reqwest::Error) -> BackendError {
    let e = e.without_url();
    tracing::debug!(host = shown(url), cause = %error_chain(&e), "{doing} an image failed");
    BackendError::retryable(
        kinds::FETCH_FAILED,
        format!(
            "{doing} the image from {}: {}",
            shown(url),
            transfer_cause(&e)
        ),
        None,
    )
}

/// How an image URL appears in an error: its host alone. The path and query string may carry
/// a signature or a token, and the submitter knows which URL they gave.
fn shown(url: &Url) -> &str {
    url.host_str().unwrap_or("the image host")
}

/// A refused URL is the submitter's mistake, except a failed lookup, which may pass later.
fn refused(e: UrlRefused) -> BackendError {
    match e {
        UrlRefused::Unresolvable { .. } => {
            BackendError::retryable(kinds::FETCH_FAILED, e.to_string(), None)
        }
        _ => BackendError::bad_input(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_https_to_public_hosts_is_fetched() {
        let fetcher = ImageFetcher::new(&FetchConfig::default());
        for url in [
            "http://example.com/a.png",
            "file:///etc/passwd",
            "https://127.0.0.1/a.png",
            "https://[::1]:8443/a.png",
            "https://169.254.169.254/latest/meta-data/",
            "https://localhost/a.png",
            "https://0x7f000001/a.png",
            "https://[64:ff9b:1::a9fe:a9fe]/a.png",
            "https://user:pw@example.com/a.png",
            "not a url",
        ] {
            let err = fetcher.fetch(url).await.unwrap_err();
            assert_eq!(err.kind(), kinds::BAD_INPUT, "{url}: {err}");
            assert!(!err.is_retryable(), "{url}");
        }
    }

    #[tokio::test]
    async fn transfer_failures_name_their_cause_and_the_host_only() {
        // Nothing listens on port 1; the top-level error alone does not say so.
        let e = reqwest::Client::new()
            .get("http://127.0.0.1:1/a.png")
            .send()
            .await
            .unwrap_err();
        let url = Url::parse("https://93.184.216.34/private/a.png?sig=secret").unwrap();
        let err = transfer_failed("fetching", &url, e);
        assert_eq!(err.kind(), kinds::FETCH_FAILED);
        assert!(err.is_retryable());
        assert_eq!(
            err.message(),
            "fetching the image from 93.184.216.34: connection refused"
        );
    }

    #[test]
    fn redirects_are_checked() {
        let from = Url::parse("https://93.184.216.34/a.png").unwrap();
        for location in [
            "http://93.184.216.34/b.png",
            "//169.254.169.254/latest/meta-data/",
            "https://127.1/b.png",
            "https://[::ffff:10.0.0.1]/b.png",
            "file:///etc/passwd",
        ] {
            let err = next_hop(&from, location).unwrap_err();
            assert_eq!(err.kind(), kinds::BAD_INPUT, "{location}: {err}");
        }
        assert_eq!(
            next_hop(&from, "/b.png").unwrap().as_str(),
            "https://93.184.216.34/b.png"
        );
        assert_eq!(
            next_hop(&from, "https://images.example.com/c.png")
                .unwrap()
                .as_str(),
            "https://images.example.com/c.png"
        );
    }
}
