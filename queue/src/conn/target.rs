//! Where Redis is: [`RedisTarget`] and [`SentinelTarget`], parsed from URLs and printed with
//! their secrets redacted.

use std::str::FromStr;

use crate::error::{QueueError, Result};
use crate::redact::redact;

/// Where Redis is: one server, the seed nodes of a cluster, or the sentinels of a primary.
///
/// Parsed from a URL (`redis://`, `rediss://` for TLS, with `user:password@` when needed) or a
/// comma-separated list of URLs, which means a cluster. `redis+cluster://` (or
/// `rediss+cluster://`) selects cluster mode with a single seed. `redis+sentinel://` (or
/// `rediss+sentinel://`) names sentinels and a master name; see [`SentinelTarget`].
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// The URL(s) as given: the cluster seeds, the single server, or the one Sentinel URL.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// PEM root certificate(s) to trust for `rediss://` instead of the system's roots (a
    /// private CA, as in most in-cluster Redis deployments).
    pub ca_cert: Option<Vec<u8>>,
    /// Set for a `redis+sentinel://` URL: the primary is found through these sentinels.
    pub sentinel: Option<SentinelTarget>,
}

/// A primary found through Redis Sentinel, parsed from
/// `redis+sentinel://[[user]:password@]host:port[,host:port…]/<master-name>[/<db>]` (or
/// `rediss+sentinel://` for TLS to the sentinels and the data nodes).
///
/// `user:password@` are the data nodes' credentials (the primary and its replicas); the
/// sentinels get the same ones unless the query says otherwise: `?sentinel_password=…`
/// (and `&sentinel_username=…`) for sentinels with credentials of their own, an empty
/// `sentinel_password=` for sentinels without authentication. Percent-encoding is decoded in
/// every credential and the master name.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelTarget {
    /// The sentinels, `(host, port)`; any one that answers is enough.
    pub sentinels: Vec<(String, u16)>,
    /// The name the sentinels monitor the primary under (`sentinel monitor <name> …`).
    pub master_name: String,
    pub db: i64,
    pub tls: bool,
    pub username: Option<String>,
    pub password: Option<String>,
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
}

/// The credentials are left out: a target is logged and printed in errors.
impl std::fmt::Debug for SentinelTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelTarget")
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl SentinelTarget {
    /// Parses a `redis+sentinel://` or `rediss+sentinel://` URL; `None` for any other scheme.
    pub fn parse(url: &str) -> Option<Result<SentinelTarget>> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("rediss+sentinel://") {
            (true, rest)
        } else {
            return None;
        };
        Some(Self::parse_rest(tls, rest).map_err(|why| {
            QueueError::Config(format!(
                "invalid Sentinel URL {:?}: {why}; expected \
                 redis+sentinel://[[user]:password@]host:port[,host:port...]/master-name[/db]",
                redact(url)
            ))
        }))
    }

    fn parse_rest(tls: bool, rest: &str) -> std::result::Result<SentinelTarget, String> {
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        // The password may hold any character, `@` and `/` included: the address list starts
        // after the last `@`, and the path after the first `/` that follows it.
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((userinfo, rest)) => (Some(userinfo), rest),
            None => (None, rest),
        };
        let (hosts, path) = rest.split_once('/').ok_or("the master name is missing")?;
        let mut sentinels = Vec::new();
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let (name, port) = host
                .rsplit_once(':')
                .ok_or_else(|| format!("sentinel address {host:?} has no port"))?;
            let port: u16 = port
                .parse()
                .map_err(|_| format!("sentinel address {host:?} has a bad port"))?;
            let name = name.trim_start_matches('[').trim_end_matches(']');
            if name.is_empty() {
                return Err(format!("sentinel address {host:?} has no host"));
            }
            sentinels.push((name.to_string(), port));
        }
        if sentinels.is_empty() {
            return Err("no sentinel address".into());
        }
        let mut segments = path.split('/');
        let master_name = percent_decode(segments.next().unwrap_or_default())?;
        if master_name.is_empty() {
            return Err("the master name is missing".into());
        }
        let db = match segments.next() {
            None | Some("") => 0,
            Some(db) => db
                .parse()
                .map_err(|_| format!("database {db:?} is not a number"))?,
        };
        if segments.next().is_some() {
            return Err("too many path segments".into());
        }
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => {
                let (user, password) = match info.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (info, None),
                };
                let user = percent_decode(user)?;
                (
                    (!user.is_empty()).then_some(user),
                    password.map(percent_decode).transpose()?,
                )
            }
        };
        let mut target = SentinelTarget {
            sentinels,
            master_name,
            db,
            tls,
            sentinel_username: username.clone(),
            sentinel_password: password.clone(),
            username,
            password,
        };
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)?;
            match name {
                "sentinel_username" => {
                    target.sentinel_username = (!value.is_empty()).then_some(value)
                }
                "sentinel_password" => {
                    target.sentinel_password = (!value.is_empty()).then_some(value);
                    if target.sentinel_password.is_none() {
                        target.sentinel_username = None;
                    }
                }
                "" => {}
                other => return Err(format!("unknown query parameter {other:?}")),
            }
        }
        Ok(target)
    }
}

/// Decodes `%XX` escapes (a password with `@`, `:` or `/` in it must be written that way in
/// a URL).
fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a bad percent-escape")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "a percent-escape that is not UTF-8".into())
}

/// Shows the URLs [`redact`]ed: a target is logged and printed in errors.
impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field(
                "urls",
                &self.urls.iter().map(|u| redact(u)).collect::<Vec<_>>(),
            )
            .field("cluster", &self.cluster)
            .field("sentinel", &self.sentinel)
            .field("ca_cert", &self.ca_cert.as_ref().map(|pem| pem.len()))
            .finish()
    }
}

impl RedisTarget {
    /// Trusts the CA certificate(s) in the PEM file at `path` for TLS connections.
    pub fn with_ca_file(mut self, path: &std::path::Path) -> Result<Self> {
        let pem = std::fs::read(path).map_err(|e| {
            QueueError::Config(format!("reading Redis CA file {}: {e}", path.display()))
        })?;
        self.ca_cert = Some(pem);
        Ok(self)
    }

    pub(crate) fn certificates(&self) -> Option<redis::TlsCertificates> {
        self.ca_cert.as_ref().map(|pem| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
    }
}

impl FromStr for RedisTarget {
    type Err = QueueError;

    fn from_str(s: &str) -> Result<Self> {
        if let Some(sentinel) = SentinelTarget::parse(s.trim()) {
            return Ok(RedisTarget {
                urls: vec![s.trim().to_string()],
                cluster: false,
                ca_cert: None,
                sentinel: Some(sentinel?),
            });
        }
        let mut cluster = false;
        let mut urls: Vec<String> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // Later seeds of a cluster take what they leave out from the first: its scheme
            // when they give only `host:port`, its user and password when they give none (the
            // cluster client requires one login for every node), so
            // `redis://:pw@a:6379,b:6379,c:6379` names three nodes with one password.
            let inherited;
            let part = match urls.first() {
                Some(first) => {
                    inherited = inherit_login(first, part);
                    inherited.as_str()
                }
                None => part,
            };
            let url = if let Some(rest) = part.strip_prefix("redis+cluster://") {
                cluster = true;
                format!("redis://{rest}")
            } else if let Some(rest) = part.strip_prefix("rediss+cluster://") {
                cluster = true;
                format!("rediss://{rest}")
            } else {
                part.to_string()
            };
            redis::parse_redis_url(&url).ok_or_else(|| {
                QueueError::Config(format!(
                    "invalid Redis URL {:?}: expected redis://host:port, rediss://host:port or \
                     redis+sentinel://host:port[,host:port...]/master-name",
                    redact(part)
                ))
            })?;
            urls.push(url);
        }
        if urls.is_empty() {
            return Err(QueueError::Config("empty Redis URL".into()));
        }
        cluster |= urls.len() > 1;
        Ok(RedisTarget {
            urls,
            cluster,
            ca_cert: None,
            sentinel: None,
        })
    }
}

/// `seed` completed from the `first` seed of a list: its scheme when `seed` has none, and its
/// userinfo (everything before the last `@` of the authority) when `seed` has none.
fn inherit_login(first: &str, seed: &str) -> String {
    let Some((scheme, first_rest)) = first.split_once("://") else {
        return seed.to_string();
    };
    let (seed_scheme, seed_rest) = seed.split_once("://").unwrap_or((scheme, seed));
    let authority = |rest: &str| rest.split('/').next().unwrap_or_default().to_string();
    let first_authority = authority(first_rest);
    let userinfo = first_authority
        .rfind('@')
        .map(|at| &first_authority[..=at])
        .unwrap_or("");
    if authority(seed_rest).contains('@') {
        format!("{seed_scheme}://{seed_rest}")
    } else {
        format!("{seed_scheme}://{userinfo}{seed_rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_cluster_and_tls_targets() {
        let single: RedisTarget = "redis://127.0.0.1:6379".parse().unwrap();
        assert!(!single.cluster);
        let list: RedisTarget = "redis://a:1, redis://b:2".parse().unwrap();
        assert!(list.cluster);
        assert_eq!(list.urls, vec!["redis://a:1", "redis://b:2"]);
        let tagged: RedisTarget = "rediss+cluster://:pw@h:6380".parse().unwrap();
        assert!(tagged.cluster);
        assert_eq!(tagged.urls, vec!["rediss://:pw@h:6380"]);
        // Later seeds take the first one's scheme and login when they leave them out.
        let seeds: RedisTarget = "rediss+cluster://:pw@a:1,b:2, redis://u:other@c:3"
            .parse()
            .unwrap();
        assert_eq!(
            seeds.urls,
            vec![
                "rediss://:pw@a:1",
                "rediss://:pw@b:2",
                "redis://u:other@c:3"
            ]
        );
        let plain: RedisTarget = "redis://:pw@a:1,redis://b:2".parse().unwrap();
        assert_eq!(plain.urls, vec!["redis://:pw@a:1", "redis://:pw@b:2"]);
        let err = "http://nope"
            .parse::<RedisTarget>()
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid Redis URL"), "{err}");
    }

    #[test]
    fn invalid_urls_are_reported_without_their_secrets() {
        for url in [
            ":secret@h:1",
            "user:secret@h:1",
            "http://:secret@h:1",
            "redis://:secret@h:1, http://:secret@h:2",
        ] {
            let err = url.parse::<RedisTarget>().unwrap_err().to_string();
            assert!(err.contains("invalid Redis URL"), "{err}");
            assert!(!err.contains("secret"), "{url} -> {err}");
        }
    }

    #[test]
    fn debug_output_hides_passwords() {
        let target: RedisTarget = "redis://:secret@a:1,redis://:secret@b:2".parse().unwrap();
        let debug = format!("{target:?}");
        assert!(debug.contains("redis://***@a:1"), "{debug}");
        assert!(!debug.contains("secret"), "{debug}");
    }
}
