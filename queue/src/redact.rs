//! Printing a URL without what may be a secret in it: the one rule every component uses for
//! the Redis URL, the model server's and RAG service's URLs and submitters' image URLs, in
//! errors, log lines and banners.

/// A URL (a Redis URL, a comma-separated list of them, or any `scheme://` URL) fit to print:
/// whatever may be a secret is replaced by `***`, the rest kept so that a reader can still
/// tell which server is meant. Every URL in an error, a log line or a banner goes through it.
///
/// Hidden: everything before the last `@` of each URL (user and password, however spelled:
/// percent-encoded, or with a raw `@`, `:` or `/` in the password), every query string
/// (`?password=`), and an address that is not a plain `host[:port]` (a mistyped URL such as
/// `user:pass` could be a password). Without a scheme only `host:port` is shown: a bare word
/// (`hunter2`) given where a URL belongs is as likely a password as a host name. The scheme,
/// host, port and database number stay.
pub fn redact(url: &str) -> String {
    url.split(',')
        .map(|part| redact_one(part.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let mut out = String::new();
    if let Some(scheme) = scheme {
        // A scheme is short and plain; anything else was not one.
        out.push_str(plain_or(scheme, "+-.", "***"));
        out.push_str("://");
    }
    let rest = match rest.rsplit_once('@') {
        Some((_, after)) => {
            out.push_str("***@");
            after
        }
        None => rest,
    };
    let (before_query, query) = match rest.split_once(['?', '#']) {
        Some((before, _)) => (before, true),
        None => (rest, false),
    };
    let (address, path) = match before_query.find('/') {
        Some(i) => before_query.split_at(i),
        None => (before_query, ""),
    };
    let shown = match scheme {
        Some(_) => is_plain_address(address),
        None => is_plain_address(address) && address.contains(':'),
    };
    if shown {
        out.push_str(address);
    } else {
        out.push_str("***");
    }
    out.push_str(plain_or(path, "/._-", "/***"));
    if query {
        out.push_str("?***");
    }
    out
}

/// `text` if it is only ASCII letters, digits and `also`, else `hidden`.
fn plain_or<'a>(text: &'a str, also: &str, hidden: &'a str) -> &'a str {
    if text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || also.contains(c))
    {
        text
    } else {
        hidden
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`, or nothing (a Unix socket URL).
fn is_plain_address(address: &str) -> bool {
    let (host, port) = match address.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((ip, after))
                if ip
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || ":.".contains(c)) =>
            {
                match after {
                    "" => return true,
                    _ => ("", after.strip_prefix(':').unwrap_or("x")),
                }
            }
            _ => return false,
        },
        None => match address.split_once(':') {
            Some((host, port)) => (host, port),
            None => (address, "0"),
        },
    };
    host.chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        && !port.is_empty()
        && port.chars().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_spelling_of_a_secret() {
        for (url, shown) in [
            ("redis://h:1", "redis://h:1"),
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://[::1]:6379", "redis://[::1]:6379"),
            ("redis://:secret@h:1", "redis://***@h:1"),
            ("rediss://user:secret@h/0", "rediss://***@h/0"),
            (
                "redis+cluster://:secret@h:6379",
                "redis+cluster://***@h:6379",
            ),
            ("rediss+cluster://u:secret@a:1", "rediss+cluster://***@a:1"),
            ("redis://:p%40ss%3Asecret@h:1", "redis://***@h:1"),
            ("redis://:p@ss@secret@h:1", "redis://***@h:1"),
            ("redis://u:se:cr:et@h:1", "redis://***@h:1"),
            ("redis://:se/cret@h:1/2", "redis://***@h:1/2"),
            ("redis://:se?cret@h:1", "redis://***@h:1"),
            ("redis://:se#cret@h:1", "redis://***@h:1"),
            ("redis://h:1/0?password=secret", "redis://h:1/0?***"),
            (
                "redis+unix:///tmp/r.sock?pass=secret",
                "redis+unix:///tmp/r.sock?***",
            ),
            // No scheme: a mistyped URL is still redacted.
            (":secret@h:1", "***@h:1"),
            ("user:secret@h:1", "***@h:1"),
            ("user:secret", "***"),
            ("h:1", "h:1"),
            // A bare word where a URL belongs may be the password alone.
            ("secret", "***"),
            ("hunter2secret", "***"),
            // A password with no `@` after it reads as a bad port or host.
            ("redis://user:secret", "redis://***"),
            ("redis://h:1/secret:x", "redis://h:1/***"),
            ("sec ret://h:1", "***://h:1"),
            // Backend and image URLs.
            (
                "http://user:secret@127.0.0.1:8080/complete-answer",
                "http://***@127.0.0.1:8080/complete-answer",
            ),
            (
                "https://rag:8000/v1?api_key=secret",
                "https://rag:8000/v1?***",
            ),
            ("ftp://u:secret@host/x", "ftp://***@host/x"),
            ("http://u:secret@[bad", "http://***@***"),
            (
                "https://img.example/a.png?sig=secret#x",
                "https://img.example/a.png?***",
            ),
            // Cluster seeds: each one redacted.
            (
                "redis://:secret@a:1, redis://:secret@b:2,c:3",
                "redis://***@a:1,redis://***@b:2,c:3",
            ),
        ] {
            let redacted = redact(url);
            assert_eq!(redacted, shown, "{url}");
            assert!(!redacted.contains("secret"), "{url} -> {redacted}");
        }
    }
}
