//! Where to connect, and from where: the `ws://` URLs, the loopback-only rule, the budget of
//! source addresses and file descriptors that N connections need, and which client goes where.
//!
//! With several targets (the processes of one chat cluster) client i goes to target i mod T,
//! and each target's own clients are spread over that target's source addresses in turn.
//!
//! A TCP connection is named by (source address, source port, destination address, destination
//! port). Towards one server port, one source address has only the ephemeral port range to give
//! (about 28,000 ports), so more clients than that must come from several source addresses.
//! On Linux all of 127.0.0.0/8 is loopback, so 127.0.0.1, 127.0.0.2, … are all ours to use.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};

/// File descriptors the generator needs besides its clients (poll, stdio, /proc reads, …).
pub const SPARE_FDS: u64 = 32;

/// Ports of each source address left alone for other programs and sockets still in TIME_WAIT.
const PORT_HEADROOM: usize = 1000;

/// The server to load.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    pub addr: SocketAddr,
    /// The `Host` header: the URL's host and port as written.
    pub host: String,
    pub path: String,
    /// A `wss://` URL.
    pub wss: bool,
    /// With `wss://`: the TLS settings, from `--ca` or `--insecure` ([`crate::tls::secure`]).
    pub tls: Option<crate::tls::Secure>,
}

/// Parses `ws://HOST[:PORT][/PATH]` or `wss://...` and resolves the host.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (rest, wss) = match (url.strip_prefix("ws://"), url.strip_prefix("wss://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err(format!("{url}: only ws:// and wss:// URLs are supported")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    // A bare host means port 80 (443 for wss://); `[::1]:8080` and `host:8080` name their own.
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:{}", if wss { 443 } else { 80 })
    } else {
        authority.to_string()
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .collect();
    // IPv4 first: the source-address spreading works on 127.0.0.0/8.
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{url}: the host has no address"))?;
    Ok(Target {
        url: url.to_string(),
        addr,
        host: authority.to_string(),
        path: path.to_string(),
        wss,
        tls: None,
    })
}

/// Parses every `--url`: at least one, none empty, no server named twice (its clients would
/// be doubled without anyone meaning it).
pub fn parse_urls(urls: &[String]) -> Result<Vec<Target>, String> {
    if urls.is_empty() {
        return Err("no --url given".into());
    }
    let mut targets: Vec<Target> = Vec::with_capacity(urls.len());
    for url in urls {
        if url.trim().is_empty() {
            return Err("an empty URL in --url".into());
        }
        let target = parse_url(url.trim())?;
        if let Some(twin) = targets
            .iter()
            .find(|t| t.addr == target.addr && t.path == target.path)
        {
            return Err(format!(
                "{} and {} name the same server ({}{})",
                twin.url, target.url, target.addr, target.path
            ));
        }
        targets.push(target);
    }
    Ok(targets)
}

/// Load is only ever aimed at this machine unless the user says otherwise.
pub fn check_local(addr: &SocketAddr, allow_remote: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        Err(format!(
            "{addr} is not a loopback address (127.0.0.0/8); pass --allow-remote to load it anyway"
        ))
    }
}

/// How many ports one source address offers, from `/proc/sys/net/ipv4/ip_local_port_range`.
pub fn ports_per_source() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| parse_port_range(&text))
        .unwrap_or(28_232) // Linux's default range, 32768–60999
}

fn parse_port_range(text: &str) -> Option<usize> {
    let mut bounds = text.split_whitespace().map(|n| n.parse::<usize>());
    let (Some(Ok(low)), Some(Ok(high))) = (bounds.next(), bounds.next()) else {
        return None;
    };
    (high >= low).then(|| high - low + 1)
}

/// Source addresses for `clients` connections when each address offers `ports` ports.
pub fn sources_needed(clients: usize, ports: usize) -> usize {
    let usable = ports.saturating_sub(PORT_HEADROOM).max(1);
    clients.div_ceil(usable).max(1)
}

/// The addresses to bind client sockets to, or an explanation of why N clients cannot fit.
///
/// An empty list means "let the kernel choose": for a non-loopback or IPv6 target, binding to
/// 127.0.0.x would make the connection impossible.
pub fn plan_sources(
    target: &SocketAddr,
    clients: usize,
    requested: Option<u8>,
) -> Result<Vec<Ipv4Addr>, String> {
    let ports = ports_per_source();
    let needed = sources_needed(clients, ports);
    let IpAddr::V4(ip) = target.ip() else {
        return single_source(clients, ports, requested);
    };
    if !ip.is_loopback() {
        return single_source(clients, ports, requested);
    }
    let count = usize::from(requested.unwrap_or(0)).max(needed);
    if count > 254 {
        return Err(format!(
            "{clients} clients need {needed} source addresses of {ports} ports; 127.0.0.1..254 is the most"
        ));
    }
    if let Some(k) = requested {
        if usize::from(k) < needed {
            return Err(format!(
                "{clients} clients need at least {needed} source addresses ({ports} ephemeral ports each), not --sources {k}"
            ));
        }
    }
    Ok((1..=count as u8)
        .map(|x| Ipv4Addr::new(127, 0, 0, x))
        .collect())
}

fn single_source(
    clients: usize,
    ports: usize,
    requested: Option<u8>,
) -> Result<Vec<Ipv4Addr>, String> {
    if requested.is_some_and(|k| k > 1) {
        return Err("--sources needs an IPv4 loopback target".into());
    }
    if sources_needed(clients, ports) > 1 {
        return Err(format!(
            "{clients} clients need more ephemeral ports than one source address has ({ports})"
        ));
    }
    Ok(Vec::new())
}

/// One target and the source addresses its clients bind to.
#[derive(Debug, Clone)]
pub struct Route {
    pub target: Target,
    /// Empty: let the kernel choose.
    pub sources: Vec<Ipv4Addr>,
}

/// Client `index`'s target, and its place among that target's clients: round robin.
pub fn spread(index: u32, targets: usize) -> (usize, usize) {
    let targets = targets.max(1);
    let index = index as usize;
    (index % targets, index / targets)
}

/// How many of `clients` (dialled in order, round robin) go to target `t` of `targets`.
pub fn share(clients: usize, targets: usize, t: usize) -> usize {
    let targets = targets.max(1);
    clients / targets + usize::from(t < clients % targets)
}

/// Source addresses for each target, given that `ports` ports are taken over the run in all.
/// Ports are per destination, so each target needs only those of its own share of clients.
pub fn plan_routes(
    targets: Vec<Target>,
    ports: usize,
    requested: Option<u8>,
) -> Result<Vec<Route>, String> {
    let count = targets.len();
    targets
        .into_iter()
        .enumerate()
        .map(|(t, target)| {
            let sources =
                plan_sources(&target.addr, share(ports, count, t), requested).map_err(|e| {
                    if count > 1 {
                        format!("{}: {e}", target.url)
                    } else {
                        e
                    }
                })?;
            Ok(Route { target, sources })
        })
        .collect()
}

/// Where client `index` goes, and the source address it binds to (`None`: the kernel's
/// choice).
pub fn route_of(routes: &[Route], index: u32) -> Option<(&Route, Option<Ipv4Addr>)> {
    let (t, nth) = spread(index, routes.len());
    let route = routes.get(t)?;
    let source = (!route.sources.is_empty()).then(|| route.sources[nth % route.sources.len()]);
    Some((route, source))
}

/// Checks that `clients` sockets fit under the open-file limit.
pub fn check_fd_budget(clients: usize, fd_limit: u64) -> Result<(), String> {
    let needed = clients as u64 + SPARE_FDS;
    if needed > fd_limit {
        return Err(format!(
            "{clients} clients need {needed} open files, but the limit is {fd_limit} \
             (raise the hard limit with `ulimit -Hn`, or lower -n to {})",
            fd_limit.saturating_sub(SPARE_FDS)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("ws://127.0.0.1:9001/ws").unwrap();
        assert_eq!(t.addr, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(
            (t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:9001", "/ws")
        );
        let t = parse_url("ws://127.0.0.1").unwrap();
        assert_eq!((t.addr.port(), t.path.as_str()), (80, "/"));
        let t = parse_url("ws://[::1]:8080/ws").unwrap();
        assert!(t.addr.is_ipv6());
        let t = parse_url("wss://127.0.0.1/ws").unwrap();
        assert_eq!((t.addr.port(), t.wss), (443, true));
        let mut secure = vec![t];
        assert!(
            crate::tls::secure(&mut secure, None, false).is_err(),
            "--ca or --insecure"
        );
        crate::tls::secure(&mut secure, None, true).unwrap();
        assert!(secure[0].tls.is_some());
        assert!(parse_url("http://127.0.0.1/ws").is_err());
        assert!(parse_url("ws:///ws").is_err());
    }

    fn urls_of(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn several_urls() {
        let one = parse_urls(&urls_of(&["ws://127.0.0.1:9001/ws"])).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].url, "ws://127.0.0.1:9001/ws");
        let two = parse_urls(&urls_of(&[
            "ws://127.0.0.1:9001/ws",
            " ws://127.0.0.2:9002/ws",
        ]))
        .unwrap();
        let addrs: Vec<String> = two.iter().map(|t| t.addr.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:9001", "127.0.0.2:9002"]);
        assert_eq!(two[1].host, "127.0.0.2:9002");
        // The same port on another path is another endpoint; the same one twice is a mistake.
        assert!(parse_urls(&urls_of(&[
            "ws://127.0.0.1:9001/ws",
            "ws://127.0.0.1:9001/b"
        ]))
        .is_ok());
        let twice = parse_urls(&urls_of(&[
            "ws://127.0.0.1:9001/ws",
            "ws://127.0.0.1:9001/ws",
        ]));
        assert!(twice.unwrap_err().contains("the same server"));
        for bad in [
            &[][..],
            &[""],
            &["ws://127.0.0.1:1/ws", " "],
            &["ws://127.0.0.1:1/ws", "http://x"],
        ] {
            assert!(parse_urls(&urls_of(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn clients_go_round_robin() {
        let placed: Vec<(usize, usize)> = (0..7).map(|i| spread(i, 3)).collect();
        assert_eq!(
            placed,
            [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2)]
        );
        assert_eq!(spread(5, 1), (0, 5));
        assert_eq!(spread(5, 0), (0, 5), "no targets is treated as one");
        // Shares add up, and differ by at most one.
        for (clients, targets) in [(0, 1), (7, 3), (10_000, 3), (2, 5), (9, 9)] {
            let shares: Vec<usize> = (0..targets).map(|t| share(clients, targets, t)).collect();
            assert_eq!(
                shares.iter().sum::<usize>(),
                clients,
                "{clients} over {targets}"
            );
            let counted: Vec<usize> = (0..targets)
                .map(|t| {
                    (0..clients as u32)
                        .filter(|&i| spread(i, targets).0 == t)
                        .count()
                })
                .collect();
            assert_eq!(shares, counted, "{clients} over {targets}");
        }
    }

    #[test]
    fn each_target_spreads_its_own_clients_over_its_sources() {
        let target = |port: u16| parse_url(&format!("ws://127.0.0.1:{port}/ws")).unwrap();
        let routes = plan_routes(vec![target(1), target(2)], 10, Some(2)).unwrap();
        let placed: Vec<(u16, Ipv4Addr)> = (0..8)
            .map(|i| {
                let (route, source) = route_of(&routes, i).unwrap();
                (route.target.addr.port(), source.unwrap())
            })
            .collect();
        let (a, b) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
        // With two targets and two sources a global i mod 2 would give each target one source.
        assert_eq!(
            placed,
            [
                (1, a),
                (2, a),
                (1, b),
                (2, b),
                (1, a),
                (2, a),
                (1, b),
                (2, b)
            ]
        );
        assert!(route_of(&[], 0).is_none());
    }

    #[test]
    fn each_target_needs_ports_for_its_share_only() {
        let ports = ports_per_source();
        let usable = ports.saturating_sub(PORT_HEADROOM).max(1);
        let target = |port: u16| parse_url(&format!("ws://127.0.0.1:{port}/ws")).unwrap();
        // One source address per target suffices for twice what one address holds...
        let routes = plan_routes(vec![target(1), target(2)], 2 * usable, None).unwrap();
        assert!(routes.iter().all(|r| r.sources.len() == 1));
        // ...but not against a single target.
        let one = plan_routes(vec![target(1)], 2 * usable, None).unwrap();
        assert_eq!(one[0].sources.len(), 2);
        // A remote target lets the kernel choose, and errors name their target.
        let remote = parse_url("ws://10.0.0.1:80/ws").unwrap();
        let mixed = plan_routes(vec![target(1), remote.clone()], 10, None).unwrap();
        assert_eq!((mixed[0].sources.len(), mixed[1].sources.len()), (1, 0));
        let err = plan_routes(vec![target(1), remote], 10, Some(3)).unwrap_err();
        assert!(err.starts_with("ws://10.0.0.1:80/ws: "), "{err}");
    }

    #[test]
    fn only_loopback_without_permission() {
        let local: SocketAddr = "127.0.0.5:80".parse().unwrap();
        let remote: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert!(check_local(&local, false).is_ok());
        assert!(check_local(&remote, false).is_err());
        assert!(check_local(&remote, true).is_ok());
    }

    #[test]
    fn source_addresses_grow_with_n() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some(28_232));
        assert_eq!(parse_port_range("nonsense"), None);
        assert_eq!(sources_needed(1, 28_232), 1);
        assert_eq!(sources_needed(27_232, 28_232), 1);
        assert_eq!(sources_needed(27_233, 28_232), 2);
        assert_eq!(sources_needed(100_000, 28_232), 4);
        assert_eq!(
            sources_needed(10, 0),
            10,
            "a broken range still gives an answer"
        );
    }

    #[test]
    fn the_fd_budget_counts_spares() {
        assert!(check_fd_budget(19_968, 20_000).is_ok());
        let err = check_fd_budget(19_969, 20_000).unwrap_err();
        assert!(err.contains("20001 open files"), "{err}");
    }
}
