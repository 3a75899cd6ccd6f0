//! Which address a request comes from, for the per-address limits: the TCP peer, or, only when
//! the peer is a configured trusted proxy (`INGEST_TRUSTED_PROXIES`), the nearest address in
//! `X-Forwarded-For` that is not itself a trusted proxy. A client can write anything into that
//! header, so it is never believed from a peer that is not a trusted proxy.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use ipnet::IpNet;

use crate::state::SharedState;

/// Hops of `X-Forwarded-For` looked at, nearest first; a longer chain is cut there (the
/// address where it is cut is then the client, which only a trusted proxy can have written).
const MAX_FORWARDED_HOPS: usize = 16;

/// The client's address as the per-address limits see it (see the module docs).
#[derive(Debug, Clone)]
pub struct ClientAddress(pub String);

impl FromRequestParts<SharedState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() else {
            return Ok(ClientAddress("unknown".to_owned()));
        };
        let forwarded = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok());
        let client = client_address(peer.ip(), forwarded, &state.trusted_proxies);
        Ok(ClientAddress(client.to_string()))
    }
}

/// The client behind `peer`: `peer` itself unless it is in `trusted`; then, walking the
/// `X-Forwarded-For` values (in header order, joined) from the nearest hop back, the first
/// address outside `trusted`. An entry that is not an address ends the walk at the last
/// address that was (a trusted proxy never writes one, so whatever stands before it is the
/// client's own text).
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded: impl Iterator<Item = &'a str>,
    trusted: &[IpNet],
) -> IpAddr {
    let is_trusted = |addr: &IpAddr| trusted.iter().any(|net| net.contains(addr));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = forwarded.flat_map(|value| value.split(',')).collect();
    let mut client = peer;
    for hop in hops.iter().rev().take(MAX_FORWARDED_HOPS) {
        match parse_hop(hop) {
            Some(addr) => {
                client = addr;
                if !is_trusted(&addr) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

/// One hop: an address, IPv6 possibly in brackets, possibly with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn the_header_is_ignored_from_a_peer_that_is_not_a_trusted_proxy() {
        let trusted = nets(&["10.0.0.0/8"]);
        let got = client_address(ip("203.0.113.9"), ["198.51.100.1"].into_iter(), &trusted);
        assert_eq!(got, ip("203.0.113.9"));
        let nobody = client_address(ip("10.0.0.2"), ["198.51.100.1"].into_iter(), &[]);
        assert_eq!(nobody, ip("10.0.0.2"), "no trusted proxies configured");
    }

    #[test]
    fn behind_trusted_proxies_the_nearest_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client wrote a fake first hop; the proxies appended the real one and themselves.
        let header = ["1.2.3.4, 198.51.100.7", "10.0.0.5"];
        let got = client_address(ip("10.0.0.2"), header.into_iter(), &trusted);
        assert_eq!(got, ip("198.51.100.7"));
        let v6 = client_address(ip("10.0.0.2"), ["[2001:db8::1]:4711"].into_iter(), &trusted);
        assert_eq!(v6, ip("2001:db8::1"));
    }

    #[test]
    fn garbage_or_an_all_trusted_chain_stops_at_the_last_address_seen() {
        let trusted = nets(&["10.0.0.0/8"]);
        let garbage = client_address(ip("10.0.0.2"), ["evil, 10.0.0.9"].into_iter(), &trusted);
        assert_eq!(garbage, ip("10.0.0.9"));
        let empty = client_address(ip("10.0.0.2"), std::iter::empty(), &trusted);
        assert_eq!(empty, ip("10.0.0.2"));
        let long = vec!["10.1.1.1"; 100].join(",");
        let bounded = client_address(ip("10.0.0.2"), [long.as_str()].into_iter(), &trusted);
        assert_eq!(bounded, ip("10.1.1.1"));
    }
}
