//! API keys and who is calling.
//!
//! With no key configured, auth is off and every caller may do everything (local use). With
//! keys, every task endpoint needs `Authorization: Bearer <key>`; a task records the *name*
//! of the key that created it (never the key) and is visible only to that key, while an
//! admin key may read stats and see, retry and cancel any task. Probes, `/metrics` and
//! `/openapi.json` stay open: kubelets and scrapers carry no credentials and those answers
//! hold no task data.
//!
//! Keys are compared through their SHA-256 digests with a constant-time equality, against
//! every configured key without stopping early, so neither the content nor the length of a
//! key leaks through response timing.

use std::path::Path;

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use ragpool_queue::OwnerShare;

use crate::config::AuthConfig;
use crate::error::ApiError;
use crate::state::AppState;

/// Shortest key accepted in configuration: shorter keys are guessable.
pub const MIN_KEY_LEN: usize = 16;

/// Why the key configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyConfigError {
    #[error("reading API keys from {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("API key entry {entry} of {origin}: {reason}")]
    Invalid {
        origin: String,
        entry: usize,
        reason: String,
    },
}

/// One configured key.
#[derive(Clone)]
struct KeyEntry {
    name: String,
    digest: [u8; 32],
    admin: bool,
    share: OwnerShare,
}

/// The configured keys. Empty means auth is off.
#[derive(Clone, Default)]
pub struct ApiKeys {
    entries: Vec<KeyEntry>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: digests are as good as keys for an offline guess.
        f.debug_list()
            .entries(self.entries.iter().map(|e| (&e.name, e.admin)))
            .finish()
    }
}

impl ApiKeys {
    /// Reads `--api-keys` and `--api-keys-file`.
    pub fn load(config: &AuthConfig) -> Result<ApiKeys, KeyConfigError> {
        let mut keys = ApiKeys::default();
        if let Some(inline) = &config.api_keys {
            keys.add_all(inline, "--api-keys")?;
        }
        if let Some(path) = &config.api_keys_file {
            keys.add_all(&read(path)?, &path.display().to_string())?;
        }
        if let Some(settings) = &config.api_key_settings {
            keys.apply_settings(settings, "--api-key-settings")?;
        }
        Ok(keys)
    }

    /// Applies `NAME:option:…` entries (see [`AuthConfig::api_key_settings`]) to the keys of
    /// those names.
    fn apply_settings(&mut self, text: &str, origin: &str) -> Result<(), KeyConfigError> {
        for (i, entry) in entries(text).enumerate() {
            let invalid = invalid_entry(origin, i + 1);
            let parts: Vec<&str> = entry.split(':').collect();
            let [name, options @ ..] = parts.as_slice() else {
                return Err(invalid("expected NAME:option:…"));
            };
            if options.contains(&"admin") {
                return Err(invalid("admin is set with the key itself, not here"));
            }
            let key = self
                .entries
                .iter_mut()
                .find(|e| e.name == *name)
                .ok_or_else(|| invalid(&format!("no API key is named {name:?}")))?;
            let mut share = key.share;
            for option in options.iter() {
                let (_, one) = parse_options(&[*option]).map_err(|reason| invalid(&reason))?;
                match option.split_once('=').map(|(k, _)| k) {
                    Some("weight") => share.weight = one.weight,
                    Some("maxQueued") => share.max_queued = one.max_queued,
                    Some("maxInFlight") => share.max_in_flight = one.max_in_flight,
                    _ => {}
                }
            }
            key.share = share;
        }
        Ok(())
    }

    /// Parses entries `NAME:KEY` followed by options, each after a `:` — `admin`,
    /// `weight=N`, `maxQueued=N`, `maxInFlight=N` — separated by commas or newlines; `#`
    /// starts a comment.
    pub fn parse(text: &str) -> Result<ApiKeys, KeyConfigError> {
        let mut keys = ApiKeys::default();
        keys.add_all(text, "the key list")?;
        Ok(keys)
    }

    fn add_all(&mut self, text: &str, origin: &str) -> Result<(), KeyConfigError> {
        for (i, entry) in entries(text).enumerate() {
            let invalid = invalid_entry(origin, i + 1);
            let parts: Vec<&str> = entry.split(':').collect();
            let [name, key, options @ ..] = parts.as_slice() else {
                return Err(invalid(
                    "expected NAME:KEY, then options such as :admin or :weight=2",
                ));
            };
            let (name, key) = (*name, *key);
            let (admin, share) = parse_options(options).map_err(|reason| invalid(&reason))?;
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(invalid(
                    "the name must be ASCII letters, digits, '_', '-' or '.'",
                ));
            }
            if key.len() < MIN_KEY_LEN || !key.chars().all(|c| c.is_ascii_graphic()) {
                return Err(invalid(&format!(
                    "the key must be at least {MIN_KEY_LEN} printable ASCII characters"
                )));
            }
            let digest = digest(key);
            if self.entries.iter().any(|e| e.name == name) {
                return Err(invalid(&format!("the name {name:?} is used twice")));
            }
            if self
                .entries
                .iter()
                .any(|e| bool::from(e.digest.ct_eq(&digest)))
            {
                return Err(invalid("the same key is listed twice"));
            }
            self.entries.push(KeyEntry {
                name: name.to_string(),
                digest,
                admin,
                share,
            });
        }
        Ok(())
    }

    /// True when at least one key is configured.
    pub fn enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The configured keys' names, in the order they were listed.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }

    /// The caller a presented key belongs to, if any. Looks at every entry whatever matches.
    pub fn identify(&self, presented: &str) -> Option<Caller> {
        let presented = digest(presented);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, entry) in self.entries.iter().enumerate() {
            let hit = entry.digest.ct_eq(&presented);
            // Keys are unique, so at most one entry hits; the index is selected without a
            // branch on the secret comparison.
            index.conditional_assign(&(i as u32), hit);
            found |= hit;
        }
        if !bool::from(found) {
            return None;
        }
        let entry = &self.entries[index as usize];
        Some(Caller {
            name: Some(entry.name.clone()),
            admin: entry.admin,
            share: entry.share,
        })
    }
}

/// A key entry's options: `admin`, and its share of the queues (`weight=N`, `maxQueued=N`,
/// `maxInFlight=N`; see [`OwnerShare`]).
fn parse_options(options: &[&str]) -> Result<(bool, OwnerShare), String> {
    let mut admin = false;
    let mut share = OwnerShare::default();
    for option in options {
        let number = |value: &str| -> Result<u64, String> {
            match value.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!(
                    "{option:?}: the value must be a whole number above 0"
                )),
            }
        };
        match option.split_once('=') {
            None if *option == "admin" => admin = true,
            Some(("weight", v)) => {
                share.weight = u32::try_from(number(v)?)
                    .ok()
                    .filter(|w| *w <= 1000)
                    .ok_or_else(|| format!("{option:?}: the weight must be 1 to 1000"))?;
            }
            Some(("maxQueued", v)) => share.max_queued = Some(number(v)?),
            Some(("maxInFlight", v)) => {
                share.max_in_flight = Some(
                    u32::try_from(number(v)?)
                        .map_err(|_| format!("{option:?}: the value is too large"))?,
                );
            }
            _ => {
                return Err(format!(
                    "unknown option {option:?} (expected admin, weight=N, maxQueued=N or \
                     maxInFlight=N)"
                ));
            }
        }
    }
    Ok((admin, share))
}

/// The entries of a key list or settings list: separated by commas or newlines, `#` starting
/// a comment.
fn entries(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
}

fn read(path: &Path) -> Result<String, KeyConfigError> {
    std::fs::read_to_string(path).map_err(|source| KeyConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Who is calling: the name of their key and whether it is an admin key. With auth off,
/// an anonymous caller with every right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The key's name; `None` with auth off.
    pub name: Option<String>,
    pub admin: bool,
    /// The key's share of the queues (the default with auth off).
    pub share: OwnerShare,
}

impl Caller {
    /// The caller when auth is off.
    pub fn anonymous() -> Caller {
        Caller {
            name: None,
            admin: true,
            share: OwnerShare::default(),
        }
    }

    /// Whether this caller may see a task created by `owner`.
    pub fn may_see(&self, owner: Option<&str>) -> bool {
        self.admin || (self.name.is_some() && self.name.as_deref() == owner)
    }

    /// Fails with 403 unless the caller holds an admin key (or auth is off).
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::forbidden("this needs an admin key"))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let keys = state.keys();
        if !keys.enabled() {
            return Ok(Caller::anonymous());
        }
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <key>"))?;
        let presented = value
            .to_str()
            .ok()
            .and_then(|v| {
                let (scheme, token) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <key>"))?;
        let caller = keys
            .identify(presented)
            .ok_or_else(|| ApiError::unauthorized("unknown API key"))?;
        if let Some(name) = &caller.name {
            tracing::Span::current().record("caller", name.as_str());
        }
        // The body extractors reserve the submission budget under the caller's key.
        parts.extensions.insert(caller.clone());
        Ok(caller)
    }
}

/// The error for entry `entry` (from 1) of the key list or settings from `origin`.
fn invalid_entry(origin: &str, entry: usize) -> impl Fn(&str) -> KeyConfigError + '_ {
    move |reason| KeyConfigError::Invalid {
        origin: origin.to_string(),
        entry,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_identifies_keys() {
        let keys = ApiKeys::parse(
            "alice:aaaaaaaaaaaaaaaa\n# a comment\nroot:rrrrrrrrrrrrrrrr:admin, bob:bbbbbbbbbbbbbbbb",
        )
        .unwrap();
        assert_eq!(keys.len(), 3);
        assert_eq!(
            keys.identify("aaaaaaaaaaaaaaaa"),
            Some(Caller {
                name: Some("alice".into()),
                admin: false,
                share: OwnerShare::default(),
            })
        );
        assert_eq!(
            keys.identify("bbbbbbbbbbbbbbbb").unwrap().name.as_deref(),
            Some("bob")
        );
        assert!(keys.identify("rrrrrrrrrrrrrrrr").unwrap().admin);
        assert_eq!(keys.identify("aaaaaaaaaaaaaaa"), None);
        assert_eq!(keys.identify(""), None);
    }

    #[test]
    fn settings_apart_from_the_keys_override_the_entries_options() {
        let config = |settings: &str| AuthConfig {
            api_keys: Some(
                "batch:aaaaaaaaaaaaaaaa:weight=2:maxQueued=5,live:bbbbbbbbbbbbbbbb".into(),
            ),
            api_keys_file: None,
            api_key_settings: Some(settings.into()),
        };
        let keys = ApiKeys::load(&config(
            "batch:maxInFlight=4:maxQueued=20000\nlive:weight=4",
        ))
        .unwrap();
        assert_eq!(
            keys.identify("aaaaaaaaaaaaaaaa").unwrap().share,
            OwnerShare {
                weight: 2,
                max_queued: Some(20000),
                max_in_flight: Some(4)
            }
        );
        assert_eq!(keys.identify("bbbbbbbbbbbbbbbb").unwrap().share.weight, 4);
        for (settings, named) in [
            ("nobody:weight=2", "no API key is named \"nobody\""),
            ("live:admin", "admin is set with the key itself"),
            ("live:weight=0", "\"weight=0\""),
            ("live:speed=3", "unknown option \"speed=3\""),
        ] {
            let e = ApiKeys::load(&config(settings)).unwrap_err().to_string();
            assert!(
                e.contains("--api-key-settings") && e.contains("entry 1") && e.contains(named),
                "{settings}: {e}"
            );
        }
    }

    #[test]
    fn keys_carry_their_share_of_the_queues() {
        let keys = ApiKeys::parse(
            "batch:aaaaaaaaaaaaaaaa:weight=1:maxQueued=10000:maxInFlight=4\n\
             live:bbbbbbbbbbbbbbbb:weight=3\n\
             root:rrrrrrrrrrrrrrrr:admin:weight=2",
        )
        .unwrap();
        let batch = keys.identify("aaaaaaaaaaaaaaaa").unwrap();
        assert_eq!(
            batch.share,
            OwnerShare {
                weight: 1,
                max_queued: Some(10000),
                max_in_flight: Some(4)
            }
        );
        assert!(!batch.admin);
        assert_eq!(keys.identify("bbbbbbbbbbbbbbbb").unwrap().share.weight, 3);
        let root = keys.identify("rrrrrrrrrrrrrrrr").unwrap();
        assert!(root.admin);
        assert_eq!(root.share.weight, 2);
        for (entry, named) in [
            ("a:aaaaaaaaaaaaaaaa:weight=0", "\"weight=0\""),
            ("a:aaaaaaaaaaaaaaaa:weight=1001", "1 to 1000"),
            ("a:aaaaaaaaaaaaaaaa:maxQueued=-1", "\"maxQueued=-1\""),
            (
                "a:aaaaaaaaaaaaaaaa:maxinflight=2",
                "unknown option \"maxinflight=2\"",
            ),
            ("a:aaaaaaaaaaaaaaaa:root", "unknown option \"root\""),
        ] {
            let e = ApiKeys::parse(entry).unwrap_err().to_string();
            assert!(e.contains("entry 1") && e.contains(named), "{entry}: {e}");
        }
    }

    #[test]
    fn refuses_bad_entries() {
        for bad in [
            "alice",
            "alice:short",
            "alice:aaaaaaaaaaaaaaaa:root",
            ":aaaaaaaaaaaaaaaa",
            "a b:aaaaaaaaaaaaaaaa",
            "a:aaaaaaaaaaaaaaaa,a:bbbbbbbbbbbbbbbb",
            "a:aaaaaaaaaaaaaaaa,b:aaaaaaaaaaaaaaaa",
        ] {
            assert!(ApiKeys::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn debug_output_hides_keys() {
        let keys = ApiKeys::parse("alice:aaaaaaaaaaaaaaaa").unwrap();
        let shown = format!("{keys:?}");
        assert!(shown.contains("alice"));
        assert!(!shown.contains("aaaa"));
    }

    #[test]
    fn visibility_rules() {
        let alice = Caller {
            name: Some("alice".into()),
            admin: false,
            share: OwnerShare::default(),
        };
        assert!(alice.may_see(Some("alice")));
        assert!(!alice.may_see(Some("bob")));
        assert!(!alice.may_see(None));
        assert!(alice.require_admin().is_err());
        assert!(Caller::anonymous().may_see(Some("bob")));
        assert!(Caller::anonymous().require_admin().is_ok());
    }
}
