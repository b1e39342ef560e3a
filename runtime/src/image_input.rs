//! How a task carries an image, and the rules for it, in one place for the API (which
//! checks a submission) and the executor (which decodes or fetches the image).
//!
//! A payload names its image in one of two fields: `image` (base64 bytes) or `image_url`
//! (an `https` URL the executor fetches). [`image_source`] enforces "not both";
//! [`decode_base64`] decodes the inline form within a size limit.
//!
//! An `image_url` was chosen by whoever submitted the task, and the executor runs next to
//! Redis, the model servers and the cloud metadata endpoint. So a URL must be `https`, carry
//! no credentials, and every address its host resolves to must be public: [`parse_url`]
//! checks the form (an IP-literal host, in any spelling the URL standard accepts, such as
//! `127.1` or `0x7f000001`, is judged here), [`resolve`] looks the host up and judges every
//! address with [`is_public`]. The API calls both at submission; the executor calls
//! [`resolve`] again before every request, redirects included, because a DNS answer can change
//! between the two, and connects only to the addresses it returned.
//!
//! [`is_public`] is an allow-list: an IPv4 address outside every special-purpose range, or an
//! IPv6 address in global unicast `2000::/3` outside the special ranges in it. Addresses that
//! embed an IPv4 address and reach it directly (IPv4-mapped `::ffff:a.b.c.d`, NAT64
//! `64:ff9b::a.b.c.d`) are judged by the embedded address; every other form is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use url::Host;
pub use url::Url;

/// Longest `image_url` accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;

/// The one image field a payload set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageSource<T> {
    /// `image`: base64 bytes.
    Inline(T),
    /// `image_url`: a URL to fetch.
    Url(T),
}

/// Both `image` and `image_url` were given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("give either image or image_url, not both")]
pub struct BothGiven;

/// Which image field is set: at most one may be; neither is `Ok(None)` (whether an image is
/// required depends on the kind of task).
pub fn image_source<T>(
    image: Option<T>,
    image_url: Option<T>,
) -> Result<Option<ImageSource<T>>, BothGiven> {
    match (image, image_url) {
        (Some(_), Some(_)) => Err(BothGiven),
        (Some(image), None) => Ok(Some(ImageSource::Inline(image))),
        (None, Some(url)) => Ok(Some(ImageSource::Url(url))),
        (None, None) => Ok(None),
    }
}

/// Why an inline image could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the image is empty")]
    Empty,
    #[error("the image is not valid base64: {0}")]
    BadBase64(String),
    #[error("the image is larger than {limit} bytes")]
    TooLarge { limit: usize },
}

/// Standard alphabet, padding optional: submitters' encoders differ on it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes an inline image: standard base64, padding optional, a `data:…;base64,` prefix and
/// line breaks tolerated. Input too long to fit in `max_bytes` is refused before anything is
/// allocated for it. The bytes are not checked to be an image; callers sniff or decode them.
pub fn decode_base64(encoded: &str, max_bytes: usize) -> Result<Vec<u8>, DecodeError> {
    let encoded = match encoded.split_once(";base64,") {
        Some((prefix, rest)) if prefix.starts_with("data:") => rest,
        _ => encoded,
    };
    let significant = encoded.bytes().filter(|b| !b.is_ascii_whitespace()).count();
    if significant == 0 {
        return Err(DecodeError::Empty);
    }
    // Every 4 characters decode to at most 3 bytes.
    if significant / 4 * 3 > max_bytes.saturating_add(3) {
        return Err(DecodeError::TooLarge { limit: max_bytes });
    }
    let bytes = if significant == encoded.len() {
        BASE64.decode(encoded)
    } else {
        let compact: Vec<u8> = encoded
            .bytes()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        BASE64.decode(compact)
    }
    .map_err(|e| DecodeError::BadBase64(e.to_string()))?;
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge { limit: max_bytes });
    }
    Ok(bytes)
}

/// What [`scan_base64`] learnt of an image without keeping it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// Bytes it decodes to.
    pub len: usize,
    /// Its first [`Scanned::HEAD`] bytes (all of them when shorter): enough to tell its type.
    pub head: Vec<u8>,
}

impl Scanned {
    pub const HEAD: usize = 64;
}

/// [`decode_base64`]'s verdict on plain base64 (no prefix, no whitespace), reached by
/// decoding it a few kilobytes at a time: a large image is checked without holding its
/// decoded bytes beside it.
pub fn scan_base64(encoded: &str, max_bytes: usize) -> Result<Scanned, DecodeError> {
    if encoded.is_empty() {
        return Err(DecodeError::Empty);
    }
    if encoded.len() / 4 * 3 > max_bytes.saturating_add(3) {
        return Err(DecodeError::TooLarge { limit: max_bytes });
    }
    // Any refusal is [`decode_base64`]'s own, message included: a piece's error would
    // name an offset within the piece. Padding is only ever at the end: a piece ending in
    // `=` is not the whole's end.
    let whole = || {
        decode_base64(encoded, max_bytes).map(|bytes| Scanned {
            len: bytes.len(),
            head: bytes[..bytes.len().min(Scanned::HEAD)].to_vec(),
        })
    };
    if encoded.trim_end_matches('=').contains('=') {
        return whole();
    }
    const PIECE: usize = 16 * 1024;
    let mut buf = vec![0u8; PIECE / 4 * 3 + 3];
    let mut scanned = Scanned {
        len: 0,
        head: Vec::new(),
    };
    let bytes = encoded.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        // Whole quanta except for the last piece, which takes the rest.
        let end = if bytes.len() - at <= PIECE + 4 {
            bytes.len()
        } else {
            at + PIECE
        };
        let Ok(n) = BASE64.decode_slice(&bytes[at..end], &mut buf) else {
            return whole();
        };
        if scanned.head.len() < Scanned::HEAD {
            let take = (Scanned::HEAD - scanned.head.len()).min(n);
            scanned.head.extend_from_slice(&buf[..take]);
        }
        scanned.len += n;
        at = end;
    }
    if scanned.len == 0 {
        return Err(DecodeError::Empty);
    }
    if scanned.len > max_bytes {
        return Err(DecodeError::TooLarge { limit: max_bytes });
    }
    Ok(scanned)
}

/// Why an `image_url` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("image_url is not a valid URL: {0}")]
    Invalid(String),
    #[error("image_url must be at most {MAX_URL_LEN} bytes")]
    TooLong,
    #[error("image_url must use https, not {0}")]
    NotHttps(String),
    #[error("image_url must not carry credentials")]
    Credentials,
    /// The lookup failed or found nothing; it may pass later.
    #[error("image_url host {host} does not resolve: {reason}")]
    Unresolvable { host: String, reason: String },
    /// The message names neither the address nor its range: a submitter could otherwise map
    /// internal names to addresses one refusal at a time. [`UrlRefused::detail`] has them,
    /// for the server's own log.
    #[error("image_url host resolves to a non-public address")]
    Forbidden {
        host: String,
        addr: IpAddr,
        /// The special-purpose range `addr` is in.
        range: &'static str,
    },
}

impl UrlRefused {
    /// The refusal with everything known about it, for the server's log only: the address a
    /// host resolved to is internal information.
    pub fn detail(&self) -> String {
        match self {
            UrlRefused::Forbidden { host, addr, range } => {
                format!(
                    "image_url host {host} resolves to {addr}, which is not a public address ({range})"
                )
            }
            other => other.to_string(),
        }
    }
}

/// Parses `raw` and checks its form: at most [`MAX_URL_LEN`] bytes, `https`, no credentials,
/// a host, and an IP-literal host that is public. A domain name is not looked up here.
pub fn parse_url(raw: &str) -> Result<Url, UrlRefused> {
    if raw.len() > MAX_URL_LEN {
        return Err(UrlRefused::TooLong);
    }
    let url = Url::parse(raw).map_err(|e| UrlRefused::Invalid(e.to_string()))?;
    check_url(&url)?;
    Ok(url)
}

/// The checks of [`parse_url`] on a URL that is already parsed (a redirect target).
pub fn check_url(url: &Url) -> Result<(), UrlRefused> {
    // The scheme comes first: only for `https` (a "special" scheme) does the URL parser
    // read a host such as `0x7f000001` as the IPv4 address it means.
    if url.scheme() != "https" {
        return Err(UrlRefused::NotHttps(url.scheme().to_owned()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlRefused::Credentials);
    }
    match url.host() {
        None => Err(UrlRefused::Invalid("no host".into())),
        Some(Host::Ipv4(v4)) => public(url, IpAddr::V4(v4)),
        Some(Host::Ipv6(v6)) => public(url, IpAddr::V6(v6)),
        Some(Host::Domain(_)) => Ok(()),
    }
}

/// Checks `url` as [`check_url`] does, resolves its host and returns every address it
/// resolves to, if all of them are public. A client must connect only to these: resolving
/// again could give another answer.
pub async fn resolve(url: &Url) -> Result<Vec<SocketAddr>, UrlRefused> {
    check_url(url)?;
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match url.host() {
        Some(Host::Ipv4(v4)) => vec![SocketAddr::new(IpAddr::V4(v4), port)],
        Some(Host::Ipv6(v6)) => vec![SocketAddr::new(IpAddr::V6(v6), port)],
        Some(Host::Domain(name)) => tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| UrlRefused::Unresolvable {
                host: name.to_owned(),
                reason: e.to_string(),
            })?
            .collect(),
        None => return Err(UrlRefused::Invalid("no host".into())),
    };
    if addrs.is_empty() {
        return Err(UrlRefused::Unresolvable {
            host: host_of(url),
            reason: "no address".into(),
        });
    }
    // Every address must pass: a client may connect to any of them.
    for addr in &addrs {
        public(url, addr.ip())?;
    }
    Ok(addrs)
}

fn public(url: &Url, addr: IpAddr) -> Result<(), UrlRefused> {
    match non_public_range(addr) {
        None => Ok(()),
        Some(range) => {
            let host = host_of(url);
            tracing::info!(%host, %addr, range, "image_url refused: a non-public address");
            Err(UrlRefused::Forbidden { host, addr, range })
        }
    }
}

fn host_of(url: &Url) -> String {
    url.host_str().unwrap_or_default().to_owned()
}

/// Whether `addr` is a globally routable unicast address an image could legitimately be
/// fetched from.
pub fn is_public(addr: IpAddr) -> bool {
    non_public_range(addr).is_none()
}

/// The special-purpose range `addr` is in, named, or `None` for a public address.
pub fn non_public_range(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

/// IPv4 ranges that are not globally routable unicast (IANA's special-purpose registry, plus
/// multicast and the reserved block).
const NOT_PUBLIC_V4: &[(Ipv4Addr, u8, &str)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this network\" 0.0.0.0/8"),
    (Ipv4Addr::new(10, 0, 0, 0), 8, "private 10.0.0.0/8"),
    (
        Ipv4Addr::new(100, 64, 0, 0),
        10,
        "shared (CGNAT) 100.64.0.0/10",
    ),
    (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback 127.0.0.0/8"),
    (
        Ipv4Addr::new(169, 254, 0, 0),
        16,
        "link-local 169.254.0.0/16",
    ),
    (Ipv4Addr::new(172, 16, 0, 0), 12, "private 172.16.0.0/12"),
    (
        Ipv4Addr::new(192, 0, 0, 0),
        24,
        "IETF protocol assignments 192.0.0.0/24",
    ),
    (
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        "documentation 192.0.2.0/24",
    ),
    (
        Ipv4Addr::new(192, 88, 99, 0),
        24,
        "6to4 relay anycast 192.88.99.0/24",
    ),
    (Ipv4Addr::new(192, 168, 0, 0), 16, "private 192.168.0.0/16"),
    (
        Ipv4Addr::new(198, 18, 0, 0),
        15,
        "benchmarking 198.18.0.0/15",
    ),
    (
        Ipv4Addr::new(198, 51, 100, 0),
        24,
        "documentation 198.51.100.0/24",
    ),
    (
        Ipv4Addr::new(203, 0, 113, 0),
        24,
        "documentation 203.0.113.0/24",
    ),
    (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast 224.0.0.0/4"),
    (
        Ipv4Addr::new(240, 0, 0, 0),
        4,
        "reserved and broadcast 240.0.0.0/4",
    ),
];

/// IPv6 ranges that are not public, first match wins. Everything outside `2000::/3` is
/// refused anyway; those ranges are listed so that a refusal names them.
const NOT_PUBLIC_V6: &[(Ipv6Addr, u8, &str)] = &[
    (Ipv6Addr::UNSPECIFIED, 128, "unspecified ::"),
    (Ipv6Addr::LOCALHOST, 128, "loopback ::1"),
    (v6([0, 0, 0, 0, 0, 0, 0, 0]), 96, "IPv4-compatible ::/96"),
    (
        v6([0, 0, 0, 0, 0xffff, 0, 0, 0]),
        96,
        "IPv4-translated (SIIT) ::ffff:0:0:0/96",
    ),
    (
        v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0]),
        48,
        "local-use NAT64 64:ff9b:1::/48",
    ),
    (
        v6([0x100, 0, 0, 0, 0, 0, 0, 0]),
        64,
        "discard-only 100::/64",
    ),
    (v6([0x5f00, 0, 0, 0, 0, 0, 0, 0]), 16, "SRv6 SIDs 5f00::/16"),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0]),
        7,
        "unique-local fc00::/7",
    ),
    (
        v6([0xfe80, 0, 0, 0, 0, 0, 0, 0]),
        10,
        "link-local fe80::/10",
    ),
    (
        v6([0xfec0, 0, 0, 0, 0, 0, 0, 0]),
        10,
        "site-local fec0::/10",
    ),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0]), 8, "multicast ff00::/8"),
    // Inside 2000::/3.
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0]), 32, "Teredo 2001::/32"),
    (
        v6([0x2001, 0, 0, 0, 0, 0, 0, 0]),
        23,
        "IETF protocol assignments 2001::/23",
    ),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0]),
        32,
        "documentation 2001:db8::/32",
    ),
    (v6([0x2002, 0, 0, 0, 0, 0, 0, 0]), 16, "6to4 2002::/16"),
    (
        v6([0x3fff, 0, 0, 0, 0, 0, 0, 0]),
        20,
        "documentation 3fff::/20",
    ),
];

/// NAT64's well-known prefix: a translator forwards `64:ff9b::a.b.c.d` to `a.b.c.d`.
const NAT64: (Ipv6Addr, u8) = (v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0]), 96);
/// Global unicast.
const GLOBAL_UNICAST: (Ipv6Addr, u8) = (v6([0x2000, 0, 0, 0, 0, 0, 0, 0]), 3);

const fn v6(s: [u16; 8]) -> Ipv6Addr {
    Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7])
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let ip = u32::from(ip);
    NOT_PUBLIC_V4
        .iter()
        .find(|(net, len, _)| {
            ip >> (32 - u32::from(*len)) == u32::from(*net) >> (32 - u32::from(*len))
        })
        .map(|(_, _, name)| *name)
}

fn in_v6(ip: Ipv6Addr, (net, len): (Ipv6Addr, u8)) -> bool {
    let shift = 128 - u32::from(len);
    u128::from(ip).checked_shr(shift).unwrap_or(0)
        == u128::from(net).checked_shr(shift).unwrap_or(0)
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // Both reach the embedded IPv4 address itself: judge that.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    if in_v6(ip, NAT64) {
        let [.., a, b, c, d] = ip.octets();
        return non_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    if let Some((_, _, name)) = NOT_PUBLIC_V6
        .iter()
        .find(|(net, len, _)| in_v6(ip, (*net, *len)))
    {
        return Some(name);
    }
    if !in_v6(ip, GLOBAL_UNICAST) {
        return Some("not global unicast (outside 2000::/3)");
    }
    None
}

#[cfg(test)]
mod tests {

    #[test]
    fn scanning_base64_agrees_with_decoding_it() {
        let long: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let encoded = base64::engine::general_purpose::STANDARD.encode(&long);
        let mut padded_inside = encoded.clone();
        padded_inside.replace_range(16 * 1024 - 2..16 * 1024, "==");
        let mut bad_byte_late = encoded.clone();
        bad_byte_late.replace_range(90_000..90_001, "!");
        for (input, max) in [
            (encoded.clone(), 200_000),
            (encoded.clone(), 99_999),
            (encoded[..16 * 1024].to_string(), 200_000),
            (encoded[..16 * 1024 + 4].to_string(), 200_000),
            (encoded[..16 * 1024 + 8].to_string(), 200_000),
            (encoded.trim_end_matches('=').to_string(), 200_000),
            (padded_inside, 200_000),
            (bad_byte_late, 200_000),
            ("aGk=".into(), 10),
            ("aGl=".into(), 10),
            ("aGk".into(), 10),
            ("====".into(), 10),
            ("".into(), 10),
            ("A".repeat(4000), 100),
        ] {
            let decoded = decode_base64(&input, max).map(|b| Scanned {
                len: b.len(),
                head: b[..b.len().min(Scanned::HEAD)].to_vec(),
            });
            assert_eq!(scan_base64(&input, max), decoded, "{} chars", input.len());
        }
    }

    use super::*;

    /// Every address rule, as URL hosts: one row per case, `true` where it must be accepted.
    /// A row whose host is also a plain IP address is checked through [`is_public`] too.
    const HOSTS: &[(&str, bool)] = &[
        // IPv4 special-purpose ranges.
        ("127.0.0.1", false),
        ("127.255.0.1", false),
        ("10.1.2.3", false),
        ("172.16.0.1", false),
        ("172.31.255.255", false),
        ("192.168.1.1", false),
        ("169.254.169.254", false),
        ("100.64.0.1", false),
        ("100.127.255.255", false),
        ("224.0.0.1", false),
        ("239.255.255.250", false),
        ("255.255.255.255", false),
        ("0.0.0.0", false),
        ("0.1.2.3", false),
        ("192.0.0.8", false),
        ("192.0.2.1", false),
        ("198.51.100.7", false),
        ("203.0.113.9", false),
        ("198.18.0.1", false),
        ("198.19.255.255", false),
        ("192.88.99.1", false),
        ("240.0.0.1", false),
        // IPv4 spelled oddly: the URL parser reads these as 127.0.0.1 or 169.254.169.254.
        ("127.1", false),
        ("0x7f000001", false),
        ("2130706433", false),
        ("0177.0.0.1", false),
        ("0x7f.1", false),
        ("127.0.0.1.", false),
        ("\u{ff11}\u{ff12}\u{ff17}.\u{ff10}.\u{ff10}.\u{ff11}", false),
        ("0xa9fea9fe", false),
        // IPv6 special-purpose ranges.
        ("[::]", false),
        ("[::1]", false),
        ("[fe80::1]", false),
        ("[fc00::1]", false),
        ("[fd12:3456::1]", false),
        ("[fec0::1]", false),
        ("[ff02::1]", false),
        ("[100::1]", false),
        ("[2001:db8::1]", false),
        ("[3fff::1]", false),
        ("[5f00::1]", false),
        ("[2001::1]", false),
        ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]", false),
        ("[2001:2::1]", false),
        ("[2002:808:808::1]", false),
        ("[2002:7f00:1::1]", false),
        // Outside global unicast 2000::/3, unassigned.
        ("[1::1]", false),
        ("[4000::1]", false),
        ("[::2]", false),
        // IPv6 forms that embed an IPv4 address.
        ("[::ffff:127.0.0.1]", false),
        ("[::ffff:7f00:1]", false),
        ("[::ffff:10.0.0.1]", false),
        ("[::ffff:169.254.169.254]", false),
        ("[::127.0.0.1]", false),
        ("[::8.8.8.8]", false),
        ("[::ffff:0:8.8.8.8]", false),
        ("[::ffff:0:a9fe:a9fe]", false),
        ("[64:ff9b::10.0.0.1]", false),
        ("[64:ff9b::a9fe:a9fe]", false),
        ("[64:ff9b:1::a9fe:a9fe]", false),
        ("[64:ff9b:1::808:808]", false),
        // Public.
        ("8.8.8.8", true),
        ("1.1.1.1", true),
        ("93.184.216.34", true),
        ("172.32.0.1", true),
        ("100.128.0.1", true),
        ("198.20.0.1", true),
        ("[2606:4700::1111]", true),
        ("[2606:4700:4700::1111]", true),
        ("[2a00:1450:4001:80e::200e]", true),
        ("[::ffff:8.8.8.8]", true),
        ("[64:ff9b::8.8.8.8]", true),
    ];

    #[tokio::test]
    async fn address_table() {
        for &(host, accepted) in HOSTS {
            let raw = format!("https://{host}/image.png");
            // IP literals: both the form check and the lookup decide without DNS.
            let parsed = parse_url(&raw);
            let resolved = match &parsed {
                Ok(url) => resolve(url).await.map(|_| ()),
                Err(e) => Err(e.clone()),
            };
            if accepted {
                assert_eq!(resolved, Ok(()), "{host} was refused");
            } else {
                assert!(
                    matches!(resolved, Err(UrlRefused::Forbidden { .. })),
                    "{host}: {resolved:?}"
                );
            }
            if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
                assert_eq!(is_public(ip), accepted, "{ip}");
            }
        }
    }

    #[test]
    fn refusals_name_the_range_only_in_the_detail() {
        let err = parse_url("https://[64:ff9b:1::a9fe:a9fe]/").unwrap_err();
        assert_eq!(
            err.to_string(),
            "image_url host resolves to a non-public address"
        );
        assert_eq!(
            err.detail(),
            "image_url host [64:ff9b:1::a9fe:a9fe] resolves to 64:ff9b:1::a9fe:a9fe, \
             which is not a public address (local-use NAT64 64:ff9b:1::/48)"
        );
        let err = parse_url("https://0x7f000001/").unwrap_err();
        assert_eq!(
            err,
            UrlRefused::Forbidden {
                host: "127.0.0.1".into(),
                addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
                range: "loopback 127.0.0.0/8",
            }
        );
    }

    #[test]
    fn url_form() {
        type Expect = fn(&UrlRefused) -> bool;
        let cases: [(&str, Expect); 7] = [
            ("http://93.184.216.34/x.png", |e| {
                *e == UrlRefused::NotHttps("http".into())
            }),
            ("ftp://93.184.216.34/x.png", |e| {
                *e == UrlRefused::NotHttps("ftp".into())
            }),
            ("file:///etc/passwd", |e| {
                *e == UrlRefused::NotHttps("file".into())
            }),
            ("https://user:pw@93.184.216.34/", |e| {
                *e == UrlRefused::Credentials
            }),
            ("https://user@example.com/", |e| {
                *e == UrlRefused::Credentials
            }),
            ("not a url", |e| matches!(e, UrlRefused::Invalid(_))),
            ("https://", |e| matches!(e, UrlRefused::Invalid(_))),
        ];
        for (url, expected) in cases {
            let err = parse_url(url).unwrap_err();
            assert!(expected(&err), "{url}: unexpected {err:?}");
        }
        let long = format!("https://93.184.216.34/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(parse_url(&long).unwrap_err(), UrlRefused::TooLong);
        // A domain name passes the form check; the lookup judges it.
        let url = parse_url("https://images.example.com/cat.png").unwrap();
        assert_eq!(url.host_str(), Some("images.example.com"));
    }

    #[tokio::test]
    async fn resolved_addresses_are_judged() {
        // `localhost` resolves locally, to loopback only.
        let url = parse_url("https://localhost:8443/x.png").unwrap();
        let err = resolve(&url).await.unwrap_err();
        assert!(
            matches!(&err, UrlRefused::Forbidden { host, .. } if host == "localhost"),
            "{err:?}"
        );
        // What the submitter sees does not say what the name resolved to.
        let shown = err.to_string();
        assert!(!shown.contains("127.") && !shown.contains("::1"), "{shown}");
        let url = parse_url("https://93.184.216.34:8443/x.png").unwrap();
        assert_eq!(
            resolve(&url).await.unwrap(),
            vec!["93.184.216.34:8443".parse().unwrap()]
        );
    }

    #[test]
    fn one_image_field() {
        assert_eq!(
            image_source(Some("a"), None),
            Ok(Some(ImageSource::Inline("a")))
        );
        assert_eq!(
            image_source(None, Some("u")),
            Ok(Some(ImageSource::Url("u")))
        );
        assert_eq!(image_source::<&str>(None, None), Ok(None));
        assert_eq!(image_source(Some("a"), Some("u")), Err(BothGiven));
    }

    #[test]
    fn decodes_lenient_base64() {
        assert_eq!(decode_base64("aGk=", 10).unwrap(), b"hi");
        assert_eq!(decode_base64("aGk", 10).unwrap(), b"hi");
        assert_eq!(
            decode_base64("data:image/png;base64,aGk=", 10).unwrap(),
            b"hi"
        );
        assert_eq!(decode_base64("aG\r\nk=", 10).unwrap(), b"hi");
        assert_eq!(decode_base64(" aGVs\nbG8= ", 5).unwrap(), b"hello");
    }

    #[test]
    fn refuses_bad_base64() {
        assert_eq!(decode_base64("", 10), Err(DecodeError::Empty));
        assert_eq!(decode_base64(" \n", 10), Err(DecodeError::Empty));
        assert_eq!(
            decode_base64("data:image/png;base64,", 10),
            Err(DecodeError::Empty)
        );
        assert!(matches!(
            decode_base64("not base64!", 100),
            Err(DecodeError::BadBase64(_))
        ));
        assert_eq!(
            decode_base64("aGVsbG8gd29ybGQ=", 4),
            Err(DecodeError::TooLarge { limit: 4 })
        );
        // Refused by length alone, before decoding: this is not even base64.
        assert_eq!(
            decode_base64(&"!".repeat(4000), 100),
            Err(DecodeError::TooLarge { limit: 100 })
        );
        // Line breaks do not count towards the length.
        let wrapped = "aGVs\n".repeat(40);
        assert_eq!(decode_base64(&wrapped, 120).map(|b| b.len()), Ok(120));
    }
}
