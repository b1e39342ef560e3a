//! Fetching a task's `image_url` without letting a submitter reach inside the cluster.
//!
//! The URL comes from whoever submitted the task, and the executor runs next to Redis, the
//! model servers and the cloud metadata endpoint. So: `https` only; the host is resolved
//! here and refused if any address is loopback, private, link-local, unspecified or otherwise
//! not globally routable; the connection is pinned to the addresses that were checked (no
//! second DNS answer can swap them, and no proxy from the environment is used); redirects are followed by hand, each hop checked the same
//! way; and the body is capped while it streams.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use reqwest::Url;

use super::config::FetchConfig;
use super::error::{BackendError, kinds};

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

    /// The body at `url`, following up to five checked redirects.
    pub async fn fetch(&self, url: &str) -> Result<Vec<u8>, BackendError> {
        let mut url = Url::parse(url)
            .map_err(|e| BackendError::bad_input(format!("image_url is not a URL: {e}")))?;
        for _ in 0..=MAX_REDIRECTS {
            let response = self.request(&url).await?;
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| {
                        BackendError::bad_input(format!("{url} redirected without a location"))
                    })?;
                url = url.join(location).map_err(|e| {
                    BackendError::bad_input(format!("{url} redirected to a bad location: {e}"))
                })?;
                continue;
            }
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                return Err(BackendError::retryable(
                    kinds::FETCH_FAILED,
                    format!("fetching {url}: HTTP {status}"),
                    None,
                ));
            }
            if !status.is_success() {
                return Err(BackendError::bad_input(format!(
                    "fetching {url}: HTTP {status}"
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
        client.get(url.clone()).send().await.map_err(|e| {
            BackendError::retryable(kinds::FETCH_FAILED, format!("fetching {url}: {e}"), None)
        })
    }

    async fn read_capped(
        &self,
        mut response: reqwest::Response,
        url: &Url,
    ) -> Result<Vec<u8>, BackendError> {
        let too_large = || {
            BackendError::bad_input(format!(
                "the image at {url} is larger than {} bytes",
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
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            BackendError::retryable(kinds::FETCH_FAILED, format!("reading {url}: {e}"), None)
        })? {
            if (body.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

/// The addresses `url`'s host resolves to, if it is `https` and all of them are public.
async fn checked_addrs(url: &Url) -> Result<Vec<SocketAddr>, BackendError> {
    if url.scheme() != "https" {
        return Err(BackendError::bad_input(format!(
            "image_url must use https, not {}",
            url.scheme()
        )));
    }
    let host = url
        .host()
        .ok_or_else(|| BackendError::bad_input("image_url has no host"))?;
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match host {
        url::Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
        url::Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
        url::Host::Domain(name) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| {
                BackendError::retryable(kinds::FETCH_FAILED, format!("resolving {name}: {e}"), None)
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(BackendError::retryable(
            kinds::FETCH_FAILED,
            format!("{host} resolved to no address"),
            None,
        ));
    }
    if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(BackendError::bad_input(format!(
            "image_url host {host} resolves to {}, which is not a public address",
            bad.ip()
        )));
    }
    Ok(addrs)
}

/// Whether `ip` is a globally routable unicast address an image could legitimately live on.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT, 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, 198.18/15
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return false;
    }
    // Addresses that embed an IPv4 address reach that address: judge the embedded one.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if segments[..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated): ::a.b.c.d
        return is_public_v4(embedded_v4(segments[6], segments[7]));
    }
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64: 64:ff9b::a.b.c.d
        return is_public_v4(embedded_v4(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        // 6to4: 2002:aabb:ccdd::/48
        return is_public_v4(embedded_v4(segments[1], segments[2]));
    }
    !(ip.is_unique_local()
        || ip.is_unicast_link_local()
        || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (segments[0] == 0x2001 && segments[1] == 0x0db8) // documentation
        || (segments[0] == 0x0100 && segments[1..4] == [0, 0, 0])) // discard-only 100::/64
}

fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    let [a, b] = high.to_be_bytes();
    let [c, d] = low.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused() {
        for s in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:7f00:1::1",
            "2001:db8::1",
            "fec0::1",
        ] {
            assert!(!is_public(ip(s)), "{s} should be refused");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert!(is_public(ip(s)), "{s} should be allowed");
        }
    }

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
            "not a url",
        ] {
            let err = fetcher.fetch(url).await.unwrap_err();
            assert_eq!(err.kind(), kinds::BAD_INPUT, "{url}: {err}");
            assert!(!err.is_retryable(), "{url}");
        }
    }
}
