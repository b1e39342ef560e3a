//! Refusing what a browser can be made to send on another site's behalf: cross-site request
//! forgery and DNS rebinding. One middleware, three rules, checked before anything else
//! (authentication, the submission budget, the handler):
//!
//! 1. **Host** (only with no API keys configured): the `Host` header must be an IP address,
//!    `localhost` or a name under `.localhost`, or a name in `--allowed-hosts`. A page on
//!    `evil.example` whose name the attacker re-points at the API's address (DNS rebinding)
//!    reaches the API with `Host: evil.example`, and its browser treats the answers as the
//!    page's own; an IP address or `localhost` cannot be re-pointed. With keys, a rebound
//!    page has no key, and the check stays off so that any name may reach the API.
//! 2. **Origin**, when present: it must be the API's own origin (the scheme-default or given
//!    port of the `Host` it was sent to) or one in `--allowed-origins`. Browsers send it with
//!    every cross-origin request and every `POST`.
//! 3. **A request a form cannot send**: a state-changing request (`POST`, `PUT`, `PATCH`,
//!    `DELETE`) must carry `Content-Type: application/json`, an `Authorization`
//!    header, or an `X-Ragpool-Client` header. A cross-site HTML form, or a `fetch` in
//!    `no-cors` mode, can send none of them without the browser asking the API first (a CORS
//!    preflight, which this API never grants). This covers browsers that send no `Origin`.
//!
//! A refusal is `403` with the code of the rule (`host_not_allowed`, `origin_not_allowed`,
//! `cross_site_request`) and a message that names the flag or header that would let the
//! request in.

use std::collections::HashSet;
use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderName, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// The header a non-browser client (or the dashboard) may send to say it is not a form.
pub const CLIENT_HEADER: HeaderName = HeaderName::from_static("x-ragpool-client");

/// The flags of the rules.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CrossSiteArgs {
    /// Origins (`scheme://host[:port]`, comma-separated) whose pages may call the API besides
    /// its own, e.g. a web app served elsewhere. The API sends no CORS headers: this only
    /// stops requests with such an `Origin` from being refused.
    #[arg(long, env = "RAGPOOL_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// With no API keys configured, the host names (comma-separated, no port) requests may be
    /// addressed to besides IP addresses and localhost, e.g. the API's DNS name or Service
    /// name; `*` allows every name (no DNS-rebinding protection). Unused with keys.
    #[arg(long, env = "RAGPOOL_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
}

/// The rules as configured for one server.
#[derive(Debug, Clone)]
pub struct CrossSitePolicy {
    /// Rule 1 is on (no keys are configured).
    check_host: bool,
    any_host: bool,
    allowed_hosts: HashSet<String>,
    allowed_origins: HashSet<String>,
}

impl CrossSitePolicy {
    /// The rules of `args`, with the Host rule on when `keys_enabled` is false.
    pub fn new(args: &CrossSiteArgs, keys_enabled: bool) -> Self {
        let names = |list: &[String]| -> HashSet<String> {
            list.iter()
                .map(|s| s.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        };
        let allowed_hosts = names(&args.allowed_hosts);
        CrossSitePolicy {
            check_host: !keys_enabled,
            any_host: allowed_hosts.contains("*"),
            allowed_hosts,
            allowed_origins: args
                .allowed_origins
                .iter()
                .filter_map(|o| normalized_origin(o.trim()))
                .collect(),
        }
    }

    /// Whether a request with `method` and `headers` may go on, or the refusal.
    pub fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<Authority>().ok());
        if self.check_host {
            self.check_host(host.as_ref(), headers.contains_key(header::HOST))?;
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            self.check_origin(origin.to_str().unwrap_or(""), host.as_ref())?;
        }
        if is_state_changing(method) && !cannot_come_from_a_form(headers) {
            return Err(refusal(
                "cross_site_request",
                format!(
                    "a {method} request needs Content-Type: application/json, an Authorization \
                     header or an {CLIENT_HEADER} header (any value): a cross-site form can \
                     send none of them"
                ),
            ));
        }
        Ok(())
    }

    fn check_host(&self, host: Option<&Authority>, present: bool) -> Result<(), ApiError> {
        // No Host at all (HTTP/1.0): no browser sends that.
        if !present {
            return Ok(());
        }
        let name = host.map(|h| h.host().trim_end_matches('.').to_ascii_lowercase());
        match name {
            Some(name) if self.any_host || is_fixed_name(&name) => Ok(()),
            Some(name) if self.allowed_hosts.contains(&name) => Ok(()),
            _ => Err(refusal(
                "host_not_allowed",
                "this server has no API keys, so it answers only requests addressed to an IP \
                 address, localhost or a name in --allowed-hosts (RAGPOOL_ALLOWED_HOSTS); add \
                 the name you use there, or configure API keys"
                    .to_string(),
            )),
        }
    }

    fn check_origin(&self, origin: &str, host: Option<&Authority>) -> Result<(), ApiError> {
        let allowed = normalized_origin(origin).is_some_and(|o| {
            self.allowed_origins.contains(&o) || host.is_some_and(|h| is_same_origin(&o, h))
        });
        if allowed {
            return Ok(());
        }
        Err(refusal(
            "origin_not_allowed",
            "requests from pages of another origin are refused; add that origin to \
             --allowed-origins (RAGPOOL_ALLOWED_ORIGINS) to let its pages call the API"
                .to_string(),
        ))
    }
}

/// Middleware: refuses a request that breaks a rule of the module documentation.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state
        .cross_site()
        .check(request.method(), request.headers())
    {
        Ok(()) => next.run(request).await,
        Err(refused) => refused.into_response(),
    }
}

fn refusal(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, code, message)
}

/// The methods of the API's state-changing routes. Any other method is answered `405` by the
/// router, and a browser sends none cross-site without a preflight.
fn is_state_changing(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// A header a cross-site form or `no-cors` fetch cannot set.
fn cannot_come_from_a_form(headers: &HeaderMap) -> bool {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    json || headers.contains_key(header::AUTHORIZATION) || headers.contains_key(CLIENT_HEADER)
}

/// Names no DNS answer can re-point: IP addresses and localhost (browsers resolve
/// `localhost` and `*.localhost` to loopback themselves).
fn is_fixed_name(name: &str) -> bool {
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok() || name == "localhost" || name.ends_with(".localhost")
}

/// `scheme://host[:port]` in lowercase with the scheme's default port left out, as browsers
/// serialize an origin; `None` for `null` or anything that is not an origin.
fn normalized_origin(origin: &str) -> Option<String> {
    let url = url::Url::parse(origin).ok()?;
    match url.origin() {
        origin @ url::Origin::Tuple(..) => Some(origin.ascii_serialization()),
        url::Origin::Opaque(_) => None,
    }
}

/// Whether `origin` (normalized) names the host and port the request was sent to. The scheme
/// is not compared: behind a TLS proxy the API sees plain HTTP for an `https` origin. A
/// `Host` without a port is taken as the origin scheme's default port.
fn is_same_origin(origin: &str, host: &Authority) -> bool {
    let Ok(url) = url::Url::parse(origin) else {
        return false;
    };
    let same_name = url
        .host_str()
        .is_some_and(|name| name.eq_ignore_ascii_case(host.host()));
    let scheme_default = match url.scheme() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    };
    same_name && host.port_u16().or(scheme_default) == url.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    fn policy(keys: bool, hosts: &[&str], origins: &[&str]) -> CrossSitePolicy {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        CrossSitePolicy::new(
            &CrossSiteArgs {
                allowed_hosts: list(hosts),
                allowed_origins: list(origins),
            },
            keys,
        )
    }

    /// Keys configured, method, headers, the refusal's code.
    type Case<'a> = (bool, Method, &'a [(&'a str, &'a str)], Option<&'a str>);

    /// The one table of what each rule lets in: (keys configured, method, headers, the
    /// refusal's code or `None`).
    #[test]
    fn the_rules_by_case() {
        let json = ("content-type", "application/json; charset=utf-8");
        let form = ("content-type", "application/x-www-form-urlencoded");
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // Host, with no keys.
            (false, Method::GET, &[("host", "127.0.0.1:8080")], None),
            (false, Method::GET, &[("host", "[::1]:8080")], None),
            (false, Method::GET, &[("host", "10.1.2.3")], None),
            (false, Method::GET, &[("host", "localhost:8080")], None),
            (false, Method::GET, &[("host", "api.localhost")], None),
            (false, Method::GET, &[("host", "API.Internal:80")], None),
            (false, Method::GET, &[("host", "evil.example:8080")], Some("host_not_allowed")),
            (false, Method::GET, &[("host", "localhost.evil.example")], Some("host_not_allowed")),
            (false, Method::GET, &[("host", "127.0.0.1.nip.io")], Some("host_not_allowed")),
            (false, Method::GET, &[("host", "bad host")], Some("host_not_allowed")),
            (false, Method::GET, &[], None),
            // With keys the name is free.
            (true, Method::GET, &[("host", "evil.example")], None),
            // Origin.
            (false, Method::POST, &[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080"), json], None),
            (false, Method::POST, &[("host", "api.internal"), ("origin", "https://api.internal"), json], None),
            (false, Method::POST, &[("host", "api.internal"), ("origin", "http://api.internal:8080"), json], Some("origin_not_allowed")),
            (false, Method::POST, &[("host", "127.0.0.1:8080"), ("origin", "http://evil.example"), json], Some("origin_not_allowed")),
            (false, Method::GET, &[("host", "127.0.0.1:8080"), ("origin", "null")], Some("origin_not_allowed")),
            (false, Method::POST, &[("host", "127.0.0.1:8080"), ("origin", "https://app.example"), json], None),
            (true, Method::POST, &[("host", "evil.example"), ("origin", "http://evil.example"), ("authorization", "Bearer k")], None),
            // A request a form cannot send.
            (false, Method::POST, &[("host", "127.0.0.1"), form], Some("cross_site_request")),
            (false, Method::POST, &[("host", "127.0.0.1"), ("content-type", "multipart/form-data; boundary=x")], Some("cross_site_request")),
            (false, Method::POST, &[("host", "127.0.0.1"), ("content-type", "text/plain")], Some("cross_site_request")),
            (false, Method::POST, &[("host", "127.0.0.1")], Some("cross_site_request")),
            (false, Method::DELETE, &[("host", "127.0.0.1")], Some("cross_site_request")),
            (false, Method::POST, &[("host", "127.0.0.1"), json], None),
            (false, Method::POST, &[("host", "127.0.0.1"), ("x-ragpool-client", "cli")], None),
            (false, Method::DELETE, &[("host", "127.0.0.1"), ("x-ragpool-client", "dashboard")], None),
            (true, Method::POST, &[("authorization", "Bearer k"), form], None),
            (false, Method::GET, &[("host", "127.0.0.1"), form], None),
            // Methods no route has are the router's to refuse (405).
            (false, Method::from_bytes(b"PURGE").unwrap(), &[("host", "127.0.0.1")], None),
        ];
        let allowed = |keys| policy(keys, &["api.internal"], &["https://app.example"]);
        for (keys, method, pairs, expected) in cases {
            let got = allowed(*keys)
                .check(method, &headers(pairs))
                .err()
                .map(|e| e.code);
            assert_eq!(got, *expected, "keys {keys}, {method} {pairs:?}");
        }
    }

    #[test]
    fn a_star_allows_every_host_name() {
        let any = policy(false, &["*"], &[]);
        assert!(
            any.check(&Method::GET, &headers(&[("host", "evil.example")]))
                .is_ok()
        );
    }

    #[test]
    fn origins_are_compared_as_browsers_serialize_them() {
        assert_eq!(
            normalized_origin("HTTPS://App.Example:443"),
            Some("https://app.example".into())
        );
        assert_eq!(normalized_origin("null"), None);
        let p = policy(false, &[], &["https://App.Example:443/"]);
        let h = headers(&[
            ("host", "127.0.0.1"),
            ("origin", "https://app.example"),
            ("x-ragpool-client", "x"),
        ]);
        assert!(p.check(&Method::POST, &h).is_ok());
    }
}
