//! Addresses and networks, read one way everywhere: the trusted proxies in
//! the config, the client's address and its `X-Forwarded-For` hops, and the
//! `net.cidr_*` built-ins. The reading is Go's `net` package's, so that a
//! policy decides as it does on OPA: an IPv4-mapped IPv6 address
//! (`::ffff:10.1.2.3`) is the IPv4 address it maps, and an IPv4-mapped
//! network of prefix 96 or more (`::ffff:10.0.0.0/104`) is the IPv4 network
//! (`10.0.0.0/8`).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// An IPv4-mapped IPv6 address as the IPv4 address it maps; any other as is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// A network in CIDR notation, as Go's `IPNet.Contains` tests against it.
pub fn parse_network(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>().ok().map(as_go_reads_it)
}

/// An address (a single-host network) or a network in CIDR notation; an
/// address is tried first, as OPA's `net.ParseIP` before `net.ParseCIDR`.
pub fn parse_address_or_network(s: &str) -> Option<IpNet> {
    match s.parse::<IpAddr>() {
        Ok(ip) => Some(IpNet::from(canonical(ip))),
        Err(_) => parse_network(s),
    }
}

/// An IPv6 network whose masked address is IPv4-mapped (only possible at
/// prefix 96 or more) is that IPv4 network; any other keeps its family, so
/// that networks of different families contain nothing of each other.
fn as_go_reads_it(net: IpNet) -> IpNet {
    let IpNet::V6(v6) = net else {
        return net;
    };
    let mapped = v6.network().to_ipv4_mapped();
    match (mapped, v6.prefix_len().checked_sub(96)) {
        (Some(v4), Some(prefix)) => Ipv4Net::new(v4, prefix).map_or(net, IpNet::V4),
        _ => IpNet::V6(v6.trunc()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(net: &str, ip: &str) -> bool {
        let (Some(net), Ok(ip)) = (parse_network(net), ip.parse::<IpAddr>()) else {
            return false;
        };
        net.contains(&canonical(ip))
    }

    #[test]
    fn mapped_addresses_and_networks_read_as_ipv4() {
        assert!(contains("10.0.0.0/8", "::ffff:10.1.2.3"));
        assert!(contains("::ffff:10.0.0.0/104", "10.1.2.3"));
        assert!(!contains("::/0", "::ffff:10.1.2.3"));
        assert!(contains("::/0", "2001:db8::1"));
        // Below prefix 96 the mapping prefix is cut off: an IPv6 network,
        // which holds no IPv4 address (and certainly not all of them).
        assert!(!contains("::ffff:10.0.0.0/80", "10.1.2.3"));
        assert!(!contains("::ffff:10.0.0.0/80", "192.0.2.1"));
        assert_eq!(
            parse_address_or_network("::ffff:10.1.2.3"),
            "10.1.2.3/32".parse().ok()
        );
        assert_eq!(parse_address_or_network("not an address"), None);
    }
}
