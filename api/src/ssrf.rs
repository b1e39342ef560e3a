//! Checks a submitted `image_url` before it is queued, so the executor is never asked to
//! fetch from inside the cluster: `https` only, no credentials in the URL, and every address
//! the host resolves to must be globally routable (not loopback, private, link-local,
//! unspecified, multicast, documentation or otherwise reserved).
//!
//! This is the first of two checks: DNS answers can change between submission and fetch, so
//! the executor checks again and pins the connection to the addresses it checked.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Why a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("image_url is not a valid URL: {0}")]
    Invalid(String),
    #[error("image_url must be at most {MAX_URL_LEN} bytes")]
    TooLong,
    #[error("image_url must use https")]
    NotHttps,
    #[error("image_url must not carry credentials")]
    Credentials,
    #[error("image_url host {0} does not resolve")]
    Unresolvable(String),
    #[error("image_url host {host} resolves to {addr}, which is not a public address")]
    Forbidden { host: String, addr: IpAddr },
}

/// Checks `raw` and returns it parsed. Resolves the host name (IP literals need no lookup).
pub async fn check_image_url(raw: &str) -> Result<Url, UrlRefused> {
    if raw.len() > MAX_URL_LEN {
        return Err(UrlRefused::TooLong);
    }
    let url = Url::parse(raw).map_err(|e| UrlRefused::Invalid(e.to_string()))?;
    if url.scheme() != "https" {
        return Err(UrlRefused::NotHttps);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefused::Credentials);
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let host = url
        .host()
        .ok_or_else(|| UrlRefused::Invalid("no host".into()))?;
    let addrs: Vec<IpAddr> = match host {
        Host::Ipv4(v4) => vec![IpAddr::V4(v4)],
        Host::Ipv6(v6) => vec![IpAddr::V6(v6)],
        Host::Domain(name) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|_| UrlRefused::Unresolvable(name.to_string()))?
            .map(|sa| sa.ip())
            .collect(),
    };
    if addrs.is_empty() {
        return Err(UrlRefused::Unresolvable(host.to_string()));
    }
    // Every address must pass: a client connects to any of them.
    if let Some(bad) = addrs.into_iter().find(|a| !is_public(*a)) {
        return Err(UrlRefused::Forbidden {
            host: host.to_string(),
            addr: bad,
        });
    }
    Ok(url)
}

/// True for addresses that are globally routable unicast.
pub fn is_public(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier-grade NAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240; // reserved
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    // Addresses that carry an IPv4 address are judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let seg = ip.segments();
    if seg[0] == 0x0064 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
        // NAT64 well-known prefix 64:ff9b::/96.
        return is_public_v4(Ipv4Addr::from(
            (u32::from(seg[6]) << 16) | u32::from(seg[7]),
        ));
    }
    if seg[0] == 0x2002 {
        // 6to4: the IPv4 address follows the prefix.
        return is_public_v4(Ipv4Addr::from(
            (u32::from(seg[1]) << 16) | u32::from(seg[2]),
        ));
    }
    let refused = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || seg[0..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible (deprecated)
        || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
        || (seg[0] == 0x2001 && seg[1] == 0) // Teredo
        || (seg[0] == 0x0100 && seg[1..4] == [0, 0, 0]); // discard-only
    !refused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        let refused = [
            "127.0.0.1",
            "127.255.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0.1.2.3",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
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
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
            "fec0::1",
            "::127.0.0.1",
        ];
        for a in refused {
            assert!(!is_public(a.parse().unwrap()), "{a} was accepted");
        }
        let accepted = [
            "93.184.216.34",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ];
        for a in accepted {
            assert!(is_public(a.parse().unwrap()), "{a} was refused");
        }
    }

    #[tokio::test]
    async fn checks_urls() {
        type Expect = fn(&UrlRefused) -> bool;
        let cases: [(&str, Expect); 8] = [
            ("http://93.184.216.34/x.png", |e| *e == UrlRefused::NotHttps),
            ("ftp://93.184.216.34/x.png", |e| *e == UrlRefused::NotHttps),
            ("https://user:pw@93.184.216.34/", |e| {
                *e == UrlRefused::Credentials
            }),
            ("https://127.0.0.1/x.png", |e| {
                matches!(e, UrlRefused::Forbidden { .. })
            }),
            ("https://[::1]:8443/x.png", |e| {
                matches!(e, UrlRefused::Forbidden { .. })
            }),
            ("https://169.254.169.254/latest/meta-data", |e| {
                matches!(e, UrlRefused::Forbidden { .. })
            }),
            ("https://localhost/x.png", |e| {
                matches!(
                    e,
                    UrlRefused::Forbidden { .. } | UrlRefused::Unresolvable(_)
                )
            }),
            ("not a url", |e| matches!(e, UrlRefused::Invalid(_))),
        ];
        for (url, expected) in cases {
            let err = check_image_url(url).await.unwrap_err();
            assert!(expected(&err), "{url}: unexpected {err:?}");
        }
        let long = format!("https://93.184.216.34/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(
            check_image_url(&long).await.unwrap_err(),
            UrlRefused::TooLong
        );
        // An IP literal needs no DNS, so this runs offline.
        let ok = check_image_url("https://93.184.216.34/cat.png")
            .await
            .unwrap();
        assert_eq!(ok.host_str(), Some("93.184.216.34"));
    }
}
