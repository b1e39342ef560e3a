//! The Redis URL the operator itself connects to for a pool, resolved the same way the
//! executor pods get theirs: a literal URL or a Secret key, plus an optional password from a
//! Secret and the `tls` switch.
//!
//! The Redis-backed [`crate::observe::Observer`] calls [`resolve`] and connects to the
//! result (caching connections per URL).

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};

use crate::crd::{RagWorkerPool, SecretKeyRef};
use crate::observe::ObserveError;
use crate::resources::{sentinel_url, with_tls, with_userinfo};

/// Reads one key of a Secret in `namespace`.
async fn secret_value(
    client: &Client,
    namespace: &str,
    r: &SecretKeyRef,
) -> Result<String, ObserveError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = api
        .get(&r.name)
        .await
        .map_err(|e| ObserveError::Config(format!("reading Secret {namespace}/{}: {e}", r.name)))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .ok_or_else(|| {
            ObserveError::Config(format!(
                "Secret {namespace}/{} has no key {}",
                r.name, r.key
            ))
        })?;
    String::from_utf8(bytes.0.clone())
        .map(|s| s.trim_end().to_owned())
        .map_err(|_| {
            ObserveError::Config(format!(
                "Secret {namespace}/{} key {} is not UTF-8",
                r.name, r.key
            ))
        })
}

/// The Redis URL for `pool`.
pub async fn resolve(client: &Client, pool: &RagWorkerPool) -> Result<String, ObserveError> {
    let namespace = pool.namespace().unwrap_or_else(|| "default".into());
    let redis = &pool.spec.redis;
    if let Some(sentinel) = &redis.sentinel {
        let password = match &redis.password_secret_ref {
            Some(r) => Some(url_safe(
                secret_value(client, &namespace, r).await?,
                SENTINEL_SAFE,
            )?),
            None => None,
        };
        let sentinel_password = match &sentinel.password_secret_ref {
            Some(r) => Some(url_safe(
                secret_value(client, &namespace, r).await?,
                SENTINEL_SAFE,
            )?),
            None => None,
        };
        return Ok(sentinel_url(
            sentinel,
            redis.tls,
            password.as_deref(),
            sentinel_password.as_deref(),
        ));
    }
    let base = match (&redis.url, &redis.url_secret_ref) {
        (Some(url), _) => url.clone(),
        (None, Some(r)) => secret_value(client, &namespace, r).await?,
        (None, None) => {
            return Err(ObserveError::Config(
                "redis: no url and no urlSecretRef".into(),
            ));
        }
    };
    let password = match &redis.password_secret_ref {
        Some(r) => Some(secret_value(client, &namespace, r).await?),
        None => None,
    };
    compose(&base, password.as_deref(), redis.tls)
}

/// Applies TLS and the password to a base URL, exactly as the pod's environment does.
pub fn compose(base: &str, password: Option<&str>, tls: bool) -> Result<String, ObserveError> {
    let url = with_tls(base, tls);
    let Some(password) = password else {
        return Ok(url);
    };
    let password = url_safe(password.to_owned(), USERINFO_SAFE)?;
    Ok(with_userinfo(&url, &format!(":{password}")).unwrap_or(url))
}

/// Punctuation a password may hold in a URL's userinfo without escaping.
const USERINFO_SAFE: &str = "-._~!$&'()*+,;=";
/// In a Sentinel URL a password is also a query value and sits before a host list, so `&`,
/// `=` and `,` are out too.
const SENTINEL_SAFE: &str = "-._~!$'()*+;";

/// The pods get a password spliced in verbatim by Kubernetes' $(VAR) expansion, so only
/// characters that need no escaping (alphanumerics and `allowed`) can work for both.
fn url_safe(password: String, allowed: &str) -> Result<String, ObserveError> {
    let safe = password
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || allowed.contains(c));
    if !safe {
        return Err(ObserveError::Config(
            "the Redis password has characters that need URL escaping; keep the whole URL in a Secret (urlSecretRef)".into(),
        ));
    }
    Ok(password)
}

#[cfg(test)]
mod tests {
    use http::{Method, StatusCode};
    use serde_json::json;

    use super::*;
    use crate::fixtures::{Exchange, mock_api, pool, spec};

    #[test]
    fn compose_applies_tls_and_password() {
        assert_eq!(
            compose("redis://r:6379", None, false),
            Ok("redis://r:6379".into())
        );
        assert_eq!(
            compose("redis://r:6379", Some("pw"), true),
            Ok("rediss://:pw@r:6379".into())
        );
        assert!(compose("redis://r:6379", Some("p@ss/word"), false).is_err());
    }

    #[tokio::test]
    async fn resolve_builds_a_sentinel_url_with_the_data_nodes_password() {
        let mut s = spec();
        s.redis.url = None;
        s.redis.tls = true;
        s.redis.password_secret_ref = Some(SecretKeyRef {
            name: "redis".into(),
            key: "password".into(),
        });
        s.redis.sentinel = Some(crate::crd::SentinelSpec {
            master_name: "mymaster".into(),
            addresses: vec!["redis:26379".into()],
            ..Default::default()
        });
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis", "namespace": "ns"},
            "data": {"password": "cHc="}
        });
        let (client, server) = mock_api(vec![
            Exchange::new(Method::GET, "/api/v1/namespaces/ns/secrets/redis")
                .reply(StatusCode::OK, secret),
        ]);
        let url = resolve(&client, &pool(s)).await;
        assert_eq!(url, Ok("rediss+sentinel://:pw@redis:26379/mymaster".into()));
        assert_eq!(server.await.map(|seen| seen.len()).ok(), Some(1));
    }

    #[tokio::test]
    async fn resolve_reads_url_and_password_from_secrets() {
        let mut s = spec();
        s.redis.url = None;
        s.redis.url_secret_ref = Some(SecretKeyRef {
            name: "redis".into(),
            key: "url".into(),
        });
        s.redis.password_secret_ref = Some(SecretKeyRef {
            name: "redis".into(),
            key: "password".into(),
        });
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis", "namespace": "ns"},
            // "redis://r:6379\n" and "pw"
            "data": {"url": "cmVkaXM6Ly9yOjYzNzkK", "password": "cHc="}
        });
        let (client, server) = mock_api(vec![
            Exchange::new(Method::GET, "/api/v1/namespaces/ns/secrets/redis")
                .reply(StatusCode::OK, secret.clone()),
            Exchange::new(Method::GET, "/api/v1/namespaces/ns/secrets/redis")
                .reply(StatusCode::OK, secret),
        ]);
        let url = resolve(&client, &pool(s)).await;
        assert_eq!(url, Ok("redis://:pw@r:6379".into()));
        assert_eq!(server.await.map(|seen| seen.len()).ok(), Some(2));
    }
}
