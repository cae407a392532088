//! Who the client is behind a reverse proxy: `--trusted-proxy` ranges and `X-Forwarded-For`.
//!
//! Behind nginx every TCP peer is the proxy. The proxy appends the address it saw to the
//! request's `X-Forwarded-For` chain, and the client may have put anything in front of it. So
//! the chain is believed only when the TCP peer is a trusted proxy, and only from the right:
//! walking leftwards over trusted hops, the first address that is not trusted is the client
//! (anything left of it came from the client and may be forged). Pure code, no sockets.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// An address range: `10.0.0.0/8`, `fd00::/8`, or one address (`127.0.0.1`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this range. An IPv4 address and its IPv4-mapped IPv6 form
    /// (`::ffff:10.0.0.1`, as a dual-stack listener reports it) are the same address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                same_prefix(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` bits of `a` and `b` agree.
fn same_prefix(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let whole = usize::from(prefix / 8);
    let rest = prefix % 8;
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[whole] & mask == b[whole] & mask
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr = addr
            .parse::<IpAddr>()
            .map_err(|_| format!("{s}: expected an IP address or a CIDR range like 10.0.0.0/8"))?
            .to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("{s}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The `--trusted-proxy` ranges; empty means `X-Forwarded-For` is never believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl TrustedProxies {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|range| range.contains(ip))
    }

    /// The client's address, given the TCP peer and the request's `X-Forwarded-For` chain (all
    /// its header lines joined with commas, or `None`): the right-most address of the chain that
    /// is not trusted, when the peer is trusted; the peer's otherwise. If every hop is trusted,
    /// the left-most is the client. An entry that is not an address ends the walk: nothing left
    /// of it can be checked, so the last address that could be stands.
    pub fn client(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.trusts(client) {
            return client;
        }
        for entry in forwarded_for.unwrap_or("").rsplit(',') {
            let Some(hop) = parse_hop(entry) else {
                return client;
            };
            client = hop;
            if !self.trusts(hop) {
                return hop;
            }
        }
        client
    }
}

/// One entry of an `X-Forwarded-For` chain: an address, possibly with a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:5678`), as some proxies write it.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    entry
        .parse::<SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

/// Who a connection is, for the logs: its TCP peer, or the client a trusted proxy named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    Direct(SocketAddr),
    /// From `X-Forwarded-For`, behind a trusted proxy (which gives no port).
    Forwarded(IpAddr),
}

impl Peer {
    /// Who this peer really is, once its request head is read (see [`TrustedProxies::client`]).
    pub fn forwarded(self, trusted: &TrustedProxies, forwarded_for: Option<&str>) -> Peer {
        match self {
            Peer::Direct(tcp) if trusted.trusts(tcp.ip()) => {
                Peer::Forwarded(trusted.client(tcp.ip(), forwarded_for))
            }
            other => other,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Direct(addr) => addr.fmt(f),
            Peer::Forwarded(ip) => ip.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted(ranges: &[&str]) -> TrustedProxies {
        TrustedProxies(ranges.iter().map(|r| r.parse().unwrap()).collect())
    }

    #[test]
    fn parses_addresses_and_ranges() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert!(c.contains(ip("10.200.0.1")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert_eq!(
            "127.0.0.1".parse::<Cidr>().unwrap().to_string(),
            "127.0.0.1/32"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().to_string(), "::1/128");
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fdab::1")));
        assert!(!v6.contains(ip("fe80::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let odd: Cidr = "192.168.0.0/23".parse().unwrap();
        assert!(odd.contains(ip("192.168.1.255")));
        assert!(!odd.contains(ip("192.168.2.0")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        for bad in [
            "",
            "x",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "1.2.3.4:80",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_ranges() {
        let c: Cidr = "127.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("::ffff:127.0.0.5")));
        assert!(!c.contains(ip("::1")));
        let one: Cidr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")));
    }

    #[test]
    fn the_header_counts_only_from_a_trusted_peer() {
        let proxies = trusted(&["127.0.0.1"]);
        assert_eq!(
            proxies.client(ip("192.0.2.7"), Some("203.0.113.9")),
            ip("192.0.2.7"),
            "a spoofed header from an untrusted peer is ignored"
        );
        assert_eq!(
            proxies.client(ip("127.0.0.1"), Some("203.0.113.9")),
            ip("203.0.113.9")
        );
        assert_eq!(proxies.client(ip("127.0.0.1"), None), ip("127.0.0.1"));
        assert_eq!(
            TrustedProxies::default().client(ip("127.0.0.1"), Some("203.0.113.9")),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let proxies = trusted(&["10.0.0.0/8", "127.0.0.1"]);
        let peer = ip("127.0.0.1");
        // The client wrote "1.1.1.1" itself; nginx appended what it saw.
        let chain = "1.1.1.1, 198.51.100.4, 10.0.0.2";
        assert_eq!(proxies.client(peer, Some(chain)), ip("198.51.100.4"));
        assert_eq!(
            proxies.client(peer, Some("10.0.0.3, 10.0.0.2")),
            ip("10.0.0.3")
        );
        assert_eq!(
            proxies.client(peer, Some("198.51.100.4:5123")),
            ip("198.51.100.4")
        );
        assert_eq!(
            proxies.client(peer, Some("[2001:db8::1]:443,10.0.0.1")),
            ip("2001:db8::1")
        );
        // Garbage ends the walk: the last hop that could be checked stands.
        assert_eq!(proxies.client(peer, Some("1.1.1.1, nonsense")), peer);
        assert_eq!(
            proxies.client(peer, Some("1.1.1.1, unknown, 10.0.0.9")),
            ip("10.0.0.9")
        );
        assert_eq!(proxies.client(peer, Some("")), peer);
    }

    #[test]
    fn peers_display_as_logged() {
        let proxies = trusted(&["127.0.0.1"]);
        let direct = Peer::Direct("192.0.2.7:4000".parse().unwrap());
        assert_eq!(direct.forwarded(&proxies, Some("203.0.113.9")), direct);
        assert_eq!(direct.to_string(), "192.0.2.7:4000");
        let proxied = Peer::Direct("127.0.0.1:4000".parse().unwrap());
        let client = proxied.forwarded(&proxies, Some("203.0.113.9"));
        assert_eq!(client.to_string(), "203.0.113.9");
        assert!(std::mem::size_of::<Peer>() <= std::mem::size_of::<SocketAddr>() + 4);
    }
}
