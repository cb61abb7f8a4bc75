//! The client's address: the peer Envoy saw, and `X-Forwarded-For` believed
//! only hop by hop from configured trusted proxies.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::address::canonical;

/// Where the request came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// The peer address Envoy reports (`attributes.source.address.socketAddress`).
    pub peer: Option<IpAddr>,
    pub peer_port: Option<u32>,
    /// The client address: the peer, or the first untrusted hop of
    /// `X-Forwarded-For` walked from the right through trusted proxies.
    pub ip: Option<IpAddr>,
    /// `X-Forwarded-For` as received, entry by entry.
    pub forwarded_for: Vec<String>,
    /// How many `X-Forwarded-For` entries were walked through trusted proxies.
    pub trusted_hops: usize,
}

/// Parses one `X-Forwarded-For` entry: a bare address, or one with a port
/// (`1.2.3.4:80`, `[::1]:80`), or a bracketed IPv6 address.
pub fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = entry.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    entry
        .strip_prefix('[')
        .and_then(|e| e.strip_suffix(']'))
        .and_then(|e| e.parse::<IpAddr>().ok())
        .map(canonical)
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// Resolves the client address. The walk starts at the peer: while the
/// current hop is a trusted proxy, the entry to its left in
/// `X-Forwarded-For` is what that proxy saw, and becomes the next hop. It
/// stops at the first untrusted hop, or at an entry that is empty or does
/// not parse (a trailing or doubled comma, an obfuscated identifier,
/// garbage): nothing left of it was written by a trusted hop, so the last
/// trusted hop is the answer then.
pub fn resolve(
    peer: Option<IpAddr>,
    peer_port: Option<u32>,
    xff: Option<&str>,
    trusted: &[IpNet],
) -> Source {
    let entries: Vec<&str> = xff
        .map(|h| h.split(',').map(str::trim).collect())
        .unwrap_or_default();
    // What the policy sees: the entries as received, empty ones left out.
    let forwarded_for: Vec<String> = entries
        .iter()
        .filter(|e| !e.is_empty())
        .map(|e| (*e).to_owned())
        .collect();
    let peer = peer.map(canonical);
    let mut ip = peer;
    let mut trusted_hops = 0;
    if let Some(mut current) = peer {
        for entry in entries.iter().rev() {
            if !is_trusted(current, trusted) {
                break;
            }
            let Some(next) = parse_hop(entry) else { break };
            current = next;
            trusted_hops += 1;
        }
        ip = Some(current);
    }
    Source {
        peer,
        peer_port,
        ip,
        forwarded_for,
        trusted_hops,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn client(peer: &str, xff: Option<&str>, trusted: &[&str]) -> String {
        resolve(Some(peer.parse().unwrap()), None, xff, &nets(trusted))
            .ip
            .unwrap()
            .to_string()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_the_header_says() {
        assert_eq!(
            client("203.0.113.9", Some("10.0.0.1"), &["10.0.0.0/8"]),
            "203.0.113.9"
        );
        assert_eq!(client("203.0.113.9", Some("10.0.0.1"), &[]), "203.0.113.9");
    }

    #[test]
    fn walks_through_trusted_proxies_from_the_right() {
        let trusted = ["10.0.0.0/8", "192.168.0.0/16"];
        assert_eq!(
            client("10.0.0.2", Some("198.51.100.7, 192.168.1.1"), &trusted),
            "198.51.100.7"
        );
        // A client-supplied entry left of the first untrusted hop is never believed.
        assert_eq!(
            client(
                "10.0.0.2",
                Some("1.1.1.1, 198.51.100.7, 192.168.1.1"),
                &trusted
            ),
            "198.51.100.7"
        );
        // All hops trusted: the leftmost is the best we know.
        assert_eq!(
            client("10.0.0.2", Some("10.9.9.9, 192.168.1.1"), &trusted),
            "10.9.9.9"
        );
        assert_eq!(client("10.0.0.2", None, &trusted), "10.0.0.2");
    }

    #[test]
    fn garbage_is_never_believed() {
        let trusted = ["10.0.0.0/8"];
        assert_eq!(client("10.0.0.2", Some("not-an-ip"), &trusted), "10.0.0.2");
        assert_eq!(
            client("10.0.0.2", Some("1.2.3.4, ::zz"), &trusted),
            "10.0.0.2"
        );
        assert_eq!(client("10.0.0.2", Some(",,, "), &trusted), "10.0.0.2");
        assert_eq!(
            client("10.0.0.2", Some("\u{0}\u{ffff}"), &trusted),
            "10.0.0.2"
        );
    }

    /// Walking from the right, an entry that is empty or does not parse
    /// ends the walk: nothing left of it was written by a trusted hop.
    #[test]
    fn what_does_not_parse_ends_the_walk() {
        let trusted = ["10.0.0.0/8", "fd00::/8"];
        let long = format!("{}1.2.3.4", "0".repeat(200));
        let cases: [(&str, &str); 15] = [
            // Trailing, doubled and leading commas.
            ("6.6.6.6,", "10.0.0.2"),
            ("6.6.6.6, ", "10.0.0.2"),
            ("6.6.6.6,,10.0.0.3", "10.0.0.3"),
            ("6.6.6.6, ,10.0.0.3", "10.0.0.3"),
            (",198.51.100.7", "198.51.100.7"),
            (",10.0.0.3", "10.0.0.3"),
            // Spaces around entries are not entries.
            ("  198.51.100.7  ", "198.51.100.7"),
            // Obfuscated identifiers (RFC 7239 style) and garbage.
            ("6.6.6.6, _hidden, 10.0.0.3", "10.0.0.3"),
            ("6.6.6.6, unknown", "10.0.0.2"),
            ("6.6.6.6, 1.2.3.4:notaport", "10.0.0.2"),
            // IPv6 with and without brackets and ports.
            ("6.6.6.6, [2001:db8::1]:80", "2001:db8::1"),
            ("6.6.6.6, [2001:db8::1]", "2001:db8::1"),
            ("6.6.6.6, 2001:db8::1", "2001:db8::1"),
            ("6.6.6.6, [2001:db8::1", "10.0.0.2"),
            // Oversized.
            ("6.6.6.6, LONG", "10.0.0.2"),
        ];
        for (xff, want) in cases {
            let xff = xff.replace("LONG", &long);
            assert_eq!(client("10.0.0.2", Some(&xff), &trusted), want, "{xff:?}");
        }
    }

    #[test]
    fn ipv6_ports_and_mapped_addresses() {
        let trusted = ["10.0.0.0/8", "fd00::/8"];
        assert_eq!(
            client("::ffff:10.0.0.2", Some("2001:db8::1"), &trusted),
            "2001:db8::1"
        );
        assert_eq!(
            client("fd00::1", Some("[2001:db8::2]:443"), &trusted),
            "2001:db8::2"
        );
        assert_eq!(
            client("fd00::1", Some("198.51.100.7:5555"), &trusted),
            "198.51.100.7"
        );
        assert_eq!(
            client("10.0.0.2", Some("::ffff:198.51.100.7"), &trusted),
            "198.51.100.7"
        );
        assert_eq!(client("::ffff:203.0.113.1", None, &trusted), "203.0.113.1");
    }
}
