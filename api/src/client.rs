//! Who the client is: the peer address of the connection, or, when that peer is a
//! trusted proxy (`berth.trustedproxies`), the address it says it forwarded for. Login
//! limits and the audit log go by this address, so behind a load balancer each client is
//! limited on its own instead of all of them sharing the balancer's address.

use std::net::{IpAddr, SocketAddr};

use axum::http::{Extensions, HeaderMap};
use ipnet::IpNet;

/// The networks whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From CIDRs or bare addresses (`10.0.0.0/8`, `127.0.0.1`).
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<TrustedProxies, String> {
        items
            .iter()
            .map(|s| {
                let s = s.as_ref().trim();
                s.parse::<IpNet>().or_else(|_| s.parse::<IpAddr>().map(IpNet::from)).map_err(|_| format!("{s:?} is not an address or CIDR"))
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client of a connection from `peer`: walking `X-Forwarded-For` from the right
    /// (the hop nearest this node) past trusted proxies, the first address that is not
    /// one. A header from an untrusted peer is ignored: anyone can write one.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer;
        if !self.trusts(peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }

    /// The client of a request, from its extensions (the peer the server recorded) and
    /// headers.
    pub fn client_of(&self, extensions: &Extensions, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>()?.0.ip();
        Some(self.client(peer, headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(v: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in v {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let t = TrustedProxies::parse(&["10.0.0.0/8", "127.0.0.1"]).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // No proxy: the peer, whatever it claims.
        assert_eq!(t.client(ip("192.0.2.7"), &xff(&["203.0.113.1"])), ip("192.0.2.7"));
        // Through the balancer: the client it names.
        assert_eq!(t.client(ip("127.0.0.1"), &xff(&["203.0.113.1"])), ip("203.0.113.1"));
        // A client's own forged entry sits left of the real one and is not reached.
        assert_eq!(t.client(ip("127.0.0.1"), &xff(&["6.6.6.6, 203.0.113.1"])), ip("203.0.113.1"));
        // Two trusted hops, in two header lines.
        assert_eq!(t.client(ip("127.0.0.1"), &xff(&["203.0.113.1", "10.1.2.3"])), ip("203.0.113.1"));
        // Garbage stops the walk at the last good hop.
        assert_eq!(t.client(ip("127.0.0.1"), &xff(&["203.0.113.1, junk, 10.1.2.3"])), ip("10.1.2.3"));
        // No header: the proxy itself.
        assert_eq!(t.client(ip("127.0.0.1"), &HeaderMap::new()), ip("127.0.0.1"));
        // IPv4-mapped IPv6 peers match IPv4 networks.
        assert_eq!(t.client(ip("::ffff:127.0.0.1"), &xff(&["203.0.113.9"])), ip("203.0.113.9"));
        assert!(TrustedProxies::parse(&["nope"]).is_err());
        // Nothing trusted: always the peer.
        assert_eq!(TrustedProxies::default().client(ip("127.0.0.1"), &xff(&["1.2.3.4"])), ip("127.0.0.1"));
    }
}
