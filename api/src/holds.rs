//! Caps on held requests: event streams and `?wait` polls, the requests that keep a
//! connection for seconds to minutes, counted per API key and per peer address.
//!
//! The listener caps connections per peer already; a held request also takes a slot of its
//! key and of its peer here, so one tenant (from any number of addresses) or one address
//! (under any number of keys, or none) cannot hold every connection of the API and starve
//! the others. A request past either cap is answered `429 too_many_held_requests` with
//! `Retry-After` (see [`crate::error`]), before it holds anything. With auth off every caller is anonymous, so only
//! the peer cap applies.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use ragpool_runtime::http_server::{Slot, Slots};

use crate::auth::Caller;
use crate::error::ApiError;

/// The held-request counts of one API process.
#[derive(Debug, Clone)]
pub struct Holds {
    per_key: Slots<String>,
    per_peer: Slots<IpAddr>,
}

/// A held request's slots, given back when it ends (the stream is dropped or the wait
/// answered).
#[derive(Debug)]
pub struct Hold {
    _key: Option<Slot<String>>,
    _peer: Option<Slot<IpAddr>>,
}

/// The peer address of a request, as the listener recorded it; `None` for a request that did
/// not come through it (a router driven in-process).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip()),
        ))
    }
}

impl Holds {
    pub fn new(per_key: usize, per_peer: usize) -> Self {
        Holds {
            per_key: Slots::new(per_key),
            per_peer: Slots::new(per_peer),
        }
    }

    /// Slots for one held request of `caller` from `peer`, or the `429` to answer.
    pub fn try_hold(&self, caller: &Caller, peer: Peer) -> Result<Hold, ApiError> {
        let key = match &caller.name {
            Some(name) => Some(
                self.per_key
                    .try_take(name)
                    .ok_or_else(|| refused("this API key", self.per_key.cap()))?,
            ),
            None => None,
        };
        let peer = match peer.0 {
            Some(ip) => Some(
                self.per_peer
                    .try_take(&ip)
                    .ok_or_else(|| refused("this address", self.per_peer.cap()))?,
            ),
            None => None,
        };
        Ok(Hold {
            _key: key,
            _peer: peer,
        })
    }
}

/// The answer to a held request over its key's or its peer's cap.
fn refused(whose: &str, cap: usize) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_held_requests",
        format!(
            "{whose} holds {cap} event streams and ?wait requests already, the most allowed; \
             close one or try again later"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Caller {
        Caller {
            name: Some(name.into()),
            admin: false,
            share: Default::default(),
        }
    }

    #[test]
    fn a_hold_takes_a_slot_of_its_key_and_of_its_peer() {
        let holds = Holds::new(2, 3);
        let (a, b) = (
            Peer(Some(IpAddr::from([127, 0, 0, 2]))),
            Peer(Some(IpAddr::from([127, 0, 0, 3]))),
        );
        let first = holds.try_hold(&key("alice"), a).unwrap();
        let _second = holds.try_hold(&key("alice"), b).unwrap();
        let refused = holds.try_hold(&key("alice"), b).unwrap_err();
        assert_eq!(
            (refused.status, refused.code),
            (StatusCode::TOO_MANY_REQUESTS, "too_many_held_requests")
        );
        assert!(
            refused.message.contains("this API key holds 2"),
            "{}",
            refused.message
        );
        // Another key from the same address is served until the address is full.
        let _bob = holds.try_hold(&key("bob"), a).unwrap();
        let _anonymous = holds.try_hold(&Caller::anonymous(), a).unwrap();
        let refused = holds.try_hold(&key("carol"), a).unwrap_err();
        assert!(
            refused.message.contains("this address holds 3"),
            "{}",
            refused.message
        );
        // A refusal by the address gives back the key's slot it took.
        assert_eq!(holds.per_key.held_by(&"carol".to_string()), 0);
        drop(first);
        assert!(holds.try_hold(&key("carol"), b).is_ok());
        // A request from no known address is capped by its key alone.
        assert!(holds.try_hold(&key("dave"), Peer(None)).is_ok());
    }
}
