//! The client address used in keys and logs: the socket peer, or, when the peer is a trusted
//! proxy, the right-most `X-Forwarded-For` entry that is not itself a trusted proxy.

use crate::headers::X_FORWARDED_FOR;
use http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// Finds the client address. Entries of `X-Forwarded-For` that do not parse as IP addresses
/// stop the walk, and the last trusted hop is returned instead.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&[u8]> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    for value in values.iter().rev() {
        for entry in value.rsplit(|&b| b == b',') {
            let Some(ip) = std::str::from_utf8(entry.trim_ascii())
                .ok()
                .and_then(|s| s.parse::<IpAddr>().ok())
            else {
                return client;
            };
            client = ip;
            if !is_trusted(ip, trusted) {
                return ip;
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert("x-forwarded-for", xff.parse().unwrap());
        map
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_ip(peer, &headers("1.1.1.1"), &trusted), peer);
        assert_eq!(client_ip(peer, &headers("1.1.1.1"), &[]), peer);
    }

    #[test]
    fn trusted_peer_uses_rightmost_untrusted_entry() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let client = client_ip(peer, &headers("6.6.6.6, 203.0.113.9, 10.1.1.1"), &trusted);
        assert_eq!(client, "203.0.113.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_entry_stops_the_walk() {
        let trusted = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let client = client_ip(peer, &headers("1.2.3.4, junk, 10.2.2.2"), &trusted);
        assert_eq!(client, "10.2.2.2".parse::<IpAddr>().unwrap());
    }
}
