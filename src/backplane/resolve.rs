//! Where Redis is: its host name turned into an address without blocking the loop, afresh at
//! every connection attempt (so a Redis that comes back elsewhere, a restarted container or a
//! failover behind a DNS name, is found).
//!
//! Sans-I/O, like the connection: [`start`] answers at once for an IP literal, a name in the
//! hosts file, or `localhost` (the loopback, never asked of DNS: RFC 6761), or hands back a [`Lookup`] and the first query to send; the backplane sends it on
//! a UDP socket in the loop and gives the lookup each datagram ([`Lookup::on_datagram`]) and each
//! expired deadline ([`Lookup::on_timeout`]), and the lookup says what to do next ([`Step`]).
//! The DNS messages are encoded and decoded by the `simple-dns` crate.
//!
//! What is followed of `resolv.conf` is what glibc follows for a plain lookup: up to three
//! `nameserver`s (a link-local one with its `%zone`; OpenBSD's `[address]:port` form for a port
//! other than 53), `search` and `domain` (32 domains at most; one that makes a name too long is
//! skipped), `options ndots: timeout: attempts:`. IPv4 (A) is asked first, IPv6 (AAAA) when the
//! name has no IPv4 address. Not done: TCP after a truncated answer (one that still holds an
//! address is used; one without is a try without an answer), EDNS, DNSSEC, `rotate`.
//!
//! The two files are read at every resolution. They are small local files (the page cache
//! answers, in microseconds, not the network), a resolution comes at most once per connection
//! attempt (100 ms apart at the least, see `outage.rs`), and glibc's own resolver reads
//! `/etc/hosts` at every call too: so an edit to either file is followed without a restart.

use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use simple_dns::rdata::RData;
use simple_dns::{Name, Packet, PacketFlag, Question, CLASS, QCLASS, QTYPE, RCODE, TYPE};

/// The variables that point the resolver at other files than `/etc`'s: for tests (each test
/// process gets its own fake name server); they are not an operator's setting.
pub const RESOLV_CONF_VAR: &str = "MIO_CHAT_TEST_RESOLV_CONF";
pub const HOSTS_VAR: &str = "MIO_CHAT_TEST_HOSTS";

/// Bytes of either file read at most (a hosts file with a large block list is a few MiB).
const MAX_FILE: u64 = 8 << 20;
/// glibc's limits: three name servers, `ndots` up to 15. Search domains: glibc has had no limit
/// since 2.26; 32 is what Kubernetes writes at most, and keeps a hostile line from making a
/// lookup of thousands of queries.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCH: usize = 32;
const MAX_NDOTS: usize = 15;
/// glibc's defaults (`RES_TIMEOUT`, `RES_DFLRETRY`) and caps for `timeout:` and `attempts:`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_ATTEMPTS: usize = 2;
const MAX_ATTEMPTS: usize = 5;
/// A datagram larger than a plain (non-EDNS) DNS answer is cut here; it can only be hostile.
pub const MAX_DATAGRAM: usize = 512;
/// The smallest wire sizes of a question and a resource record (root name, fixed fields): a
/// header that announces more than the datagram can hold is refused before it is decoded.
const MIN_QUESTION: usize = 5;
const MIN_RECORD: usize = 11;
const HEADER: usize = 12;

/// Which files describe the resolver: `/etc/resolv.conf` and `/etc/hosts`, unless a test says
/// otherwise through [`RESOLV_CONF_VAR`] and [`HOSTS_VAR`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            hosts: PathBuf::from("/etc/hosts"),
        }
    }
}

impl ResolverConfig {
    /// The defaults, with the test variables' paths where they are set.
    pub fn from_env() -> ResolverConfig {
        let mut config = ResolverConfig::default();
        if let Some(path) = std::env::var_os(RESOLV_CONF_VAR) {
            config.resolv_conf = path.into();
        }
        if let Some(path) = std::env::var_os(HOSTS_VAR) {
            config.hosts = path.into();
        }
        config
    }
}

/// What `resolv.conf` says, as far as a lookup of one name needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<SocketAddr>,
    pub search: Vec<String>,
    pub ndots: usize,
    pub timeout: Duration,
    pub attempts: usize,
}

impl ResolvConf {
    /// Parses the file's text; what is not understood is skipped, as glibc does. Without a
    /// `nameserver` line, the local one (127.0.0.1:53) is asked, as glibc does.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf {
            nameservers: Vec::new(),
            search: Vec::new(),
            ndots: 1,
            timeout: DEFAULT_TIMEOUT,
            attempts: DEFAULT_ATTEMPTS,
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") if conf.nameservers.len() < MAX_NAMESERVERS => {
                    conf.nameservers.extend(words.next().and_then(nameserver));
                }
                // The last `search` or `domain` line wins, as in glibc.
                Some("search") | Some("domain") => {
                    conf.search = words.take(MAX_SEARCH).map(domain).collect();
                }
                Some("options") => words.for_each(|option| conf.option(option)),
                _ => {}
            }
        }
        if conf.nameservers.is_empty() {
            conf.nameservers
                .push(SocketAddr::from(([127, 0, 0, 1], 53)));
        }
        conf
    }

    fn option(&mut self, option: &str) {
        let Some((name, value)) = option.split_once(':') else {
            return;
        };
        let Ok(value) = value.parse::<u64>() else {
            return;
        };
        match name {
            "ndots" => self.ndots = (value as usize).min(MAX_NDOTS),
            "timeout" => self.timeout = Duration::from_secs(value.max(1)).min(MAX_TIMEOUT),
            "attempts" => self.attempts = (value as usize).clamp(1, MAX_ATTEMPTS),
            _ => {}
        }
    }

    /// The names to ask for, in glibc's order: a name with at least `ndots` dots as it is first,
    /// then with each search domain; a shorter one with the search domains first; a name that
    /// ends with a dot only as it is. A search domain that does not make a name DNS can be
    /// asked about (too long, or not a host name) is skipped: the others, and the name itself,
    /// are still asked.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_string()];
        }
        let searched = self
            .search
            .iter()
            .map(|d| format!("{name}.{d}"))
            .filter(|candidate| is_host_name(candidate));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_string())).collect()
        }
    }
}

/// `1.2.3.4`, `::1`, `fe80::1%eth0`, or OpenBSD's `[1.2.3.4]:5353` (a name server on another
/// port than 53).
fn nameserver(word: &str) -> Option<SocketAddr> {
    match word.strip_prefix('[') {
        Some(bracketed) => {
            let (ip, port) = bracketed.split_once("]:")?;
            ip_literal(ip, port.parse().ok()?)
        }
        None => ip_literal(word, 53),
    }
}

/// An IP address as text, a link-local IPv6 one with its `%zone` (interface name or number),
/// as getaddrinfo reads it, at `port`.
fn ip_literal(text: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let (ip, zone) = text.split_once('%')?;
    let ip = ip.parse::<Ipv6Addr>().ok()?;
    Some(SocketAddrV6::new(ip, port, 0, scope_id(zone)).into())
}

/// The interface a link-local address's `%scope` names, by name or number; an unknown one is
/// no scope (0), as glibc reads it.
fn scope_id(scope: &str) -> u32 {
    if let Ok(index) = scope.parse() {
        return index;
    }
    let Ok(name) = std::ffi::CString::new(scope) else {
        return 0;
    };
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call, which only reads
    // it (0 when there is no such interface).
    unsafe { libc::if_nametoindex(name.as_ptr()) }
}

/// A host name DNS can be asked about: dot-separated labels of letters, digits, `-` and `_`
/// (the last for service names), 63 bytes each, 253 in all.
fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn domain(word: &str) -> String {
    word.trim_end_matches('.').to_string()
}

/// The address the hosts file gives `name` (the first line that names it), if any.
pub fn hosts_lookup(text: &str, name: &str) -> Option<IpAddr> {
    let name = name.trim_end_matches('.');
    text.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let ip = words.next()?.parse::<IpAddr>().ok()?;
        words
            .any(|alias| alias.eq_ignore_ascii_case(name))
            .then_some(ip)
    })
}

/// `localhost` and the names under it, which are the loopback by definition (RFC 6761): asked
/// of no name server, where a search domain could make `localhost.corp.example` of it. The
/// hosts file is read first, so its entry for `localhost` (`::1`, say) wins.
fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

/// A file's text, up to [`MAX_FILE`] bytes; a missing or unreadable file is an empty one (glibc
/// does the same), and what is not UTF-8 is replaced (it cannot name a host then).
pub fn read_small_file(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(file) = std::fs::File::open(path) {
        let _ = file.take(MAX_FILE).read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// What [`start`] found.
#[derive(Debug)]
pub enum Start {
    /// An IP literal (a link-local one with its `%zone`), or a name in the hosts file: the
    /// address with port 0, for the caller's port.
    Found(SocketAddr),
    /// A DNS lookup is under way: send its first query.
    Query(Box<Lookup>, Datagram),
    Failed(String),
}

/// A query to send: these bytes, to this name server, on UDP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

/// What a lookup asks for next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Send(Datagram),
    Found(IpAddr),
    Failed(String),
}

/// Where `host` is: at once when it is an IP literal or in the hosts file, else by DNS.
pub fn start(host: &str, config: &ResolverConfig, now: Instant) -> Start {
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if let Some(addr) = ip_literal(bracketed.unwrap_or(host), 0) {
        return Start::Found(addr);
    }
    if let Some(ip) = hosts_lookup(&read_small_file(&config.hosts), host) {
        return Start::Found(SocketAddr::new(ip, 0));
    }
    if is_localhost(host) {
        return Start::Found(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    }
    let conf = ResolvConf::parse(&read_small_file(&config.resolv_conf));
    match Lookup::new(host, conf, now) {
        Ok((lookup, send)) => Start::Query(Box::new(lookup), send),
        Err(why) => Start::Failed(why),
    }
}

/// One DNS lookup: the candidate names in turn, A then AAAA for each, every query tried on
/// each name server `attempts` times, one query in flight at a time.
#[derive(Debug)]
pub struct Lookup {
    candidates: Vec<String>,
    candidate: usize,
    ipv6: bool,
    conf: ResolvConf,
    /// Tries of the current query so far (try `n` goes to name server `n % servers`).
    tries: usize,
    /// The query in flight: its id, where it went, when it has failed.
    id: u16,
    server: SocketAddr,
    deadline: Instant,
    /// Query ids come from here (a random start: an off-path forger must guess them).
    ids: u64,
    /// The address to keep when an answer still lists it (see [`Lookup::prefer`]).
    preferred: Option<IpAddr>,
}

impl Lookup {
    /// A lookup of `name` and its first query.
    pub fn new(name: &str, conf: ResolvConf, now: Instant) -> Result<(Lookup, Datagram), String> {
        if !is_host_name(name) {
            return Err(format!("{name:?} is not a valid host name"));
        }
        // `parse` always gives one, but the fields are public: no name server is an error.
        let Some(&server) = conf.nameservers.first() else {
            return Err("no name server to ask".into());
        };
        let candidates = conf.candidates(name);
        let mut lookup = Lookup {
            candidates,
            candidate: 0,
            ipv6: false,
            server,
            conf,
            tries: 0,
            id: 0,
            deadline: now,
            ids: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
            preferred: None,
        };
        match lookup.send(now) {
            Step::Send(send) => Ok((lookup, send)),
            Step::Failed(why) => Err(why),
            Step::Found(_) => Err("found without asking".into()),
        }
    }

    /// Keep `ip` (where Redis was found last) when an answer lists it among others: a name
    /// with several addresses, served in rotating order, would otherwise move the links at
    /// every attempt.
    pub fn prefer(&mut self, ip: IpAddr) {
        self.preferred = Some(ip);
    }

    /// When the query in flight has failed without an answer.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The name asked for now (for the log).
    pub fn asking(&self) -> &str {
        &self.candidates[self.candidate]
    }

    /// The deadline passed: the next try, or the end.
    pub fn on_timeout(&mut self, now: Instant) -> Option<Step> {
        (now >= self.deadline).then(|| self.retry(now))
    }

    /// The query in flight could not be sent, or its (connected) socket reported an error (an
    /// ICMP "port unreachable" from a name server that is not there): that try is over.
    pub fn on_error(&mut self, now: Instant) -> Step {
        self.retry(now)
    }

    /// A datagram came from `from`: `None` when it is not the answer to the query in flight
    /// (another id, another sender: ignored, the query stays in flight), else what to do next.
    pub fn on_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) -> Option<Step> {
        if from != self.server || bytes.len() < HEADER || read_u16(bytes, 0) != self.id {
            return None;
        }
        Some(match self.judge(bytes) {
            Verdict::Address(ip) => Step::Found(ip),
            Verdict::NoAddress if !self.ipv6 => {
                self.ipv6 = true;
                self.next_query(now)
            }
            Verdict::NoAddress | Verdict::NoSuchName => self.next_candidate(now),
            Verdict::Unusable => self.retry(now),
        })
    }

    fn judge(&self, bytes: &[u8]) -> Verdict {
        if !counts_fit(bytes) {
            return Verdict::Unusable;
        }
        let Ok(packet) = Packet::parse(bytes) else {
            return Verdict::Unusable;
        };
        let asked = self.candidates[self.candidate].trim_end_matches('.');
        let echoes_question = packet.questions.len() == 1
            && packet.questions[0].qtype == QTYPE::TYPE(self.qtype())
            && packet.questions[0]
                .qname
                .to_string()
                .eq_ignore_ascii_case(asked);
        if !packet.has_flags(PacketFlag::RESPONSE) || !echoes_question {
            return Verdict::Unusable;
        }
        match packet.rcode() {
            RCODE::NoError => {}
            RCODE::NameError => return Verdict::NoSuchName,
            _ => return Verdict::Unusable, // SERVFAIL, REFUSED...: another server may know
        }
        // A recursive server answers with the CNAME chain and its end; any address record in
        // the answer to our one question is the name's.
        // A few at most (a 512-byte datagram): collected, to look for the preferred one.
        let addresses: Vec<IpAddr> = packet
            .answers
            .iter()
            .filter_map(|record| match &record.rdata {
                RData::A(a) if !self.ipv6 => Some(IpAddr::V4(Ipv4Addr::from(a.address))),
                RData::AAAA(a) if self.ipv6 => Some(IpAddr::V6(Ipv6Addr::from(a.address))),
                _ => None,
            })
            .collect();
        let preferred = addresses.iter().find(|ip| Some(**ip) == self.preferred);
        match preferred.or(addresses.first()).copied() {
            Some(ip) => Verdict::Address(ip),
            // Cut at 512 bytes (no TCP here): no word on whether the name has an address.
            None if packet.has_flags(PacketFlag::TRUNCATION) => Verdict::Unusable,
            None => Verdict::NoAddress,
        }
    }

    fn qtype(&self) -> TYPE {
        if self.ipv6 {
            TYPE::AAAA
        } else {
            TYPE::A
        }
    }

    fn retry(&mut self, now: Instant) -> Step {
        self.tries += 1;
        if self.tries >= self.conf.attempts * self.conf.nameservers.len() {
            let servers: Vec<String> = self
                .conf
                .nameservers
                .iter()
                .map(|s| s.to_string())
                .collect();
            return Step::Failed(format!(
                "no usable answer for {} from {} ({} tries, {:?} each)",
                self.asking(),
                servers.join(", "),
                self.tries,
                self.conf.timeout
            ));
        }
        self.send(now)
    }

    fn next_candidate(&mut self, now: Instant) -> Step {
        if self.candidate + 1 >= self.candidates.len() {
            let tried = self.candidates.join(", ");
            return Step::Failed(format!("no address for any of {tried}"));
        }
        self.candidate += 1;
        self.ipv6 = false;
        self.next_query(now)
    }

    fn next_query(&mut self, now: Instant) -> Step {
        self.tries = 0;
        self.send(now)
    }

    /// The current query, under a new id, to the name server whose turn it is.
    fn send(&mut self, now: Instant) -> Step {
        // xorshift64: cheap and enough to keep ids unpredictable from outside the process.
        self.ids ^= self.ids << 13;
        self.ids ^= self.ids >> 7;
        self.ids ^= self.ids << 17;
        self.id = self.ids as u16;
        self.server = self.conf.nameservers[self.tries % self.conf.nameservers.len()];
        self.deadline = now + self.conf.timeout;
        match query(self.id, self.asking(), self.qtype()) {
            Ok(bytes) => Step::Send(Datagram {
                to: self.server,
                bytes,
            }),
            Err(why) => Step::Failed(why),
        }
    }
}

/// What one answer says.
enum Verdict {
    Address(IpAddr),
    /// The name exists, without an address of the type asked.
    NoAddress,
    NoSuchName,
    /// Malformed, not an answer to our question, or the server could not help.
    Unusable,
}

/// A recursive query for `name`'s records of type `qtype`.
fn query(id: u16, name: &str, qtype: TYPE) -> Result<Vec<u8>, String> {
    let name = Name::new(name).map_err(|e| format!("{name:?}: {e}"))?;
    let mut packet = Packet::new_query(id);
    packet.set_flags(PacketFlag::RECURSION_DESIRED);
    packet.questions.push(Question::new(
        name,
        qtype.into(),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    packet.build_bytes_vec().map_err(|e| e.to_string())
}

fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// The header's counts could fit in the datagram: the decoder reserves space by them, so a
/// 30-byte datagram announcing 65,535 records is refused before it costs megabytes.
fn counts_fit(bytes: &[u8]) -> bool {
    let questions = read_u16(bytes, 4) as usize;
    let records: usize = [6, 8, 10]
        .iter()
        .map(|&at| read_u16(bytes, at) as usize)
        .sum();
    questions * MIN_QUESTION + records * MIN_RECORD <= bytes.len() - HEADER
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use simple_dns::rdata::{A, AAAA, CNAME};
    use simple_dns::ResourceRecord;

    const SERVER: &str = "127.0.0.1:5353";
    const LINE: &str = "nameserver [127.0.0.1]:5353";

    fn conf(text: &str) -> ResolvConf {
        ResolvConf::parse(text)
    }

    fn lookup(name: &str, text: &str) -> (Lookup, Datagram, Instant) {
        let now = Instant::now();
        let (lookup, send) = Lookup::new(name, conf(text), now).expect("lookup");
        (lookup, send, now)
    }

    /// The answer a name server would give to `query`, with `rcode` and these records.
    fn answer(query: &[u8], rcode: RCODE, records: Vec<RData<'static>>) -> Vec<u8> {
        let asked = Packet::parse(query).expect("our query parses");
        let mut reply = Packet::new_reply(asked.id());
        *reply.rcode_mut() = rcode;
        reply.questions = asked.questions.clone();
        let owner = asked.questions[0].qname.clone();
        for rdata in records {
            let record = ResourceRecord::new(owner.clone(), CLASS::IN, 60, rdata);
            reply.answers.push(record);
        }
        reply.build_bytes_vec().expect("build")
    }

    fn a(ip: [u8; 4]) -> RData<'static> {
        RData::A(A {
            address: u32::from(Ipv4Addr::from(ip)),
        })
    }

    fn server() -> SocketAddr {
        SERVER.parse().unwrap()
    }

    #[test]
    fn resolv_conf_is_read_as_glibc_reads_it() {
        let c = conf(
            "# comment\nnameserver 10.0.0.1\nnameserver [127.0.0.1]:5353\nnameserver ::1\n\
             nameserver 10.0.0.4\nnameserver bogus\nsearch a.example b.example.\n\
             options ndots:2 timeout:1 attempts:9 rotate\n",
        );
        let expected: Vec<SocketAddr> = vec![
            "10.0.0.1:53".parse().unwrap(),
            "127.0.0.1:5353".parse().unwrap(),
            "[::1]:53".parse().unwrap(),
        ];
        assert_eq!(c.nameservers, expected, "three at most, as glibc");
        assert_eq!(c.search, ["a.example", "b.example"]);
        assert_eq!(c.ndots, 2);
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!(c.attempts, MAX_ATTEMPTS);
        assert_eq!(
            conf("").nameservers,
            ["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(conf("options timeout:0").timeout, Duration::from_secs(1));
    }

    #[test]
    fn candidates_follow_ndots_and_the_search_list() {
        let c = conf("search s.example\n");
        assert_eq!(c.candidates("redis"), ["redis.s.example", "redis"]);
        assert_eq!(
            c.candidates("redis.prod"),
            ["redis.prod", "redis.prod.s.example"]
        );
        assert_eq!(c.candidates("redis.prod."), ["redis.prod"]);
        assert_eq!(conf("").candidates("redis"), ["redis"]);
    }

    #[test]
    fn hosts_file_names_and_aliases_match_case_insensitively() {
        let hosts = "127.0.0.1 localhost\n# 10.9.9.9 redis\n10.0.0.7 cache Redis.Local # x\n\
                     10.0.0.8 redis.local\nbogus redis.local\n";
        assert_eq!(
            hosts_lookup(hosts, "redis.local"),
            Some(IpAddr::from([10, 0, 0, 7]))
        );
        assert_eq!(hosts_lookup(hosts, "redis"), None, "a comment is no entry");
        assert_eq!(
            hosts_lookup(hosts, "cache."),
            Some(IpAddr::from([10, 0, 0, 7]))
        );
        assert_eq!(hosts_lookup(hosts, "127.0.0.1"), None);
    }

    #[test]
    fn literals_need_no_lookup() {
        let config = ResolverConfig {
            resolv_conf: "/nonexistent".into(),
            hosts: "/nonexistent".into(),
        };
        let now = Instant::now();
        for (host, ip) in [
            ("10.1.2.3", IpAddr::from([10, 1, 2, 3])),
            ("::1", IpAddr::from(Ipv6Addr::LOCALHOST)),
            ("[::1]", IpAddr::from(Ipv6Addr::LOCALHOST)),
        ] {
            let at = SocketAddr::new(ip, 0);
            assert!(matches!(start(host, &config, now), Start::Found(found) if found == at));
        }
        assert!(matches!(start("redis", &config, now), Start::Query(..)));
        assert!(matches!(start("bad name!", &config, now), Start::Failed(_)));
    }

    #[test]
    fn a_link_local_literal_keeps_its_scope() {
        // `redis://[fe80::1%lo]:6379`: what getaddrinfo accepts; the zone is the interface.
        let config = ResolverConfig {
            resolv_conf: "/nonexistent".into(),
            hosts: "/nonexistent".into(),
        };
        let on_lo = SocketAddrV6::new("fe80::1".parse().unwrap(), 0, 0, 1);
        for host in ["fe80::1%lo", "[fe80::1%1]"] {
            let Start::Found(found) = start(host, &config, Instant::now()) else {
                panic!("{host} is a literal");
            };
            assert_eq!(found, SocketAddr::from(on_lo), "{host}");
        }
    }

    #[test]
    fn an_a_record_is_the_answer() {
        let (mut l, send, now) = lookup("redis.test", LINE);
        assert_eq!(send.to, server());
        let reply = answer(&send.bytes, RCODE::NoError, vec![a([127, 0, 0, 2])]);
        assert_eq!(
            l.on_datagram(server(), &reply, now),
            Some(Step::Found(IpAddr::from([127, 0, 0, 2])))
        );
    }

    #[test]
    fn the_address_in_use_is_kept_while_the_name_still_has_it() {
        // A name with several addresses comes back in rotating order: the one Redis was found
        // at last is kept while it is listed (no flapping, no "now at" line per attempt), and
        // left when it no longer is.
        let records = || vec![a([10, 0, 0, 1]), a([10, 0, 0, 2])];
        let (mut l, send, now) = lookup("redis.test", LINE);
        l.prefer(IpAddr::from([10, 0, 0, 2]));
        let reply = answer(&send.bytes, RCODE::NoError, records());
        let kept = IpAddr::from([10, 0, 0, 2]);
        assert_eq!(
            l.on_datagram(server(), &reply, now),
            Some(Step::Found(kept))
        );

        let (mut l, send, now) = lookup("redis.test", LINE);
        l.prefer(IpAddr::from([10, 0, 0, 3]));
        let reply = answer(&send.bytes, RCODE::NoError, records());
        let first = IpAddr::from([10, 0, 0, 1]);
        assert_eq!(
            l.on_datagram(server(), &reply, now),
            Some(Step::Found(first))
        );
    }

    #[test]
    fn a_cname_chain_ends_in_its_address() {
        let (mut l, send, now) = lookup("redis.test", LINE);
        let target = RData::CNAME(CNAME(Name::new_unchecked("real.test")));
        let reply = answer(&send.bytes, RCODE::NoError, vec![target, a([10, 0, 0, 9])]);
        assert_eq!(
            l.on_datagram(server(), &reply, now),
            Some(Step::Found(IpAddr::from([10, 0, 0, 9])))
        );
    }

    #[test]
    fn without_ipv4_the_ipv6_address_is_asked_for() {
        let (mut l, send, now) = lookup("redis.test", LINE);
        let nodata = answer(&send.bytes, RCODE::NoError, vec![]);
        let Some(Step::Send(second)) = l.on_datagram(server(), &nodata, now) else {
            panic!("AAAA should be asked");
        };
        let asked = Packet::parse(&second.bytes).unwrap();
        assert_eq!(asked.questions[0].qtype, QTYPE::TYPE(TYPE::AAAA));
        let six = RData::AAAA(AAAA { address: 1 });
        let reply = answer(&second.bytes, RCODE::NoError, vec![six]);
        assert_eq!(
            l.on_datagram(server(), &reply, now),
            Some(Step::Found(IpAddr::from(Ipv6Addr::LOCALHOST)))
        );
    }

    #[test]
    fn nxdomain_moves_down_the_search_list_then_fails() {
        let text = format!("{LINE}\nsearch s.example\n");
        let (mut l, send, now) = lookup("redis", &text);
        assert_eq!(l.asking(), "redis.s.example");
        let nx = answer(&send.bytes, RCODE::NameError, vec![]);
        let Some(Step::Send(second)) = l.on_datagram(server(), &nx, now) else {
            panic!("the next candidate should be asked");
        };
        assert_eq!(l.asking(), "redis");
        let nx = answer(&second.bytes, RCODE::NameError, vec![]);
        assert!(matches!(
            l.on_datagram(server(), &nx, now),
            Some(Step::Failed(_))
        ));
    }

    #[test]
    fn strangers_and_wrong_ids_are_ignored() {
        let (mut l, send, now) = lookup("redis.test", LINE);
        let reply = answer(&send.bytes, RCODE::NoError, vec![a([6, 6, 6, 6])]);
        let stranger: SocketAddr = "127.0.0.9:5353".parse().unwrap();
        assert_eq!(l.on_datagram(stranger, &reply, now), None);
        let mut forged = reply.clone();
        forged[0] ^= 0xff;
        assert_eq!(l.on_datagram(server(), &forged, now), None);
        assert_eq!(l.on_datagram(server(), &reply[..3], now), None);
    }

    #[test]
    fn an_answer_to_another_question_is_unusable() {
        let (mut l, send, now) = lookup("redis.test", LINE);
        let mut other = Packet::parse(&send.bytes).unwrap().into_reply();
        other.questions = vec![Question::new(
            Name::new_unchecked("evil.test"),
            TYPE::A.into(),
            CLASS::IN.into(),
            false,
        )];
        let bytes = other.build_bytes_vec().unwrap();
        assert!(matches!(
            l.on_datagram(server(), &bytes, now),
            Some(Step::Send(_))
        ));
    }

    #[test]
    fn timeouts_go_round_the_servers_then_fail() {
        let text =
            "nameserver [127.0.0.1]:1\nnameserver [127.0.0.1]:2\noptions attempts:2 timeout:1";
        let (mut l, first, now) = lookup("redis.test", text);
        assert_eq!(l.on_timeout(now), None, "not due yet");
        let mut sent = vec![first.to.port()];
        let at = loop {
            let at = l.deadline();
            match l.on_timeout(at) {
                Some(Step::Send(send)) => sent.push(send.to.port()),
                Some(Step::Failed(_)) => break at,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(sent, [1, 2, 1, 2]);
        assert_eq!(at, now + Duration::from_secs(4));
    }

    #[test]
    fn a_header_announcing_more_than_it_holds_is_refused_undecoded() {
        let (mut l, send, now) = lookup("redis.test", LINE);
        let mut reply = answer(&send.bytes, RCODE::NoError, vec![a([1, 2, 3, 4])]);
        assert!(counts_fit(&reply));
        reply[6] = 0xff; // 65,280 more answers than the datagram holds
        reply[7] = 0xff;
        assert!(
            !counts_fit(&reply),
            "refused before the decoder reserves room for them"
        );
        assert!(matches!(
            l.on_datagram(server(), &reply, now),
            Some(Step::Send(_))
        ));
    }

    #[test]
    fn a_server_failure_moves_to_the_next_server() {
        let text = "nameserver [127.0.0.1]:1\nnameserver [127.0.0.1]:2";
        let (mut l, send, now) = lookup("redis.test", text);
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let failure = answer(&send.bytes, RCODE::ServerFailure, vec![a([6, 6, 6, 6])]);
        let Some(Step::Send(next)) = l.on_datagram(from, &failure, now) else {
            panic!("the next server should be asked");
        };
        assert_eq!(next.to.port(), 2);
        assert_eq!(
            l.asking(),
            "redis.test",
            "the same name, not the next candidate"
        );
    }

    #[test]
    fn a_truncated_answer_without_an_address_is_no_word_on_the_name() {
        // The server could not fit the records in 512 bytes: that says nothing about whether
        // the name has an IPv4 address, so the same question is tried again (not AAAA, not the
        // next search domain, which could be someone else's name).
        let text = format!("{LINE}\nsearch s.example\noptions attempts:2\n");
        let (mut l, send, now) = lookup("redis", &text);
        let mut cut = answer(&send.bytes, RCODE::NoError, vec![]);
        cut[2] |= 0x02; // TC
        assert!(Packet::parse(&cut)
            .unwrap()
            .has_flags(PacketFlag::TRUNCATION));
        let Some(Step::Send(again)) = l.on_datagram(server(), &cut, now) else {
            panic!("the question should be asked again");
        };
        let asked = Packet::parse(&again.bytes).unwrap();
        assert_eq!(asked.questions[0].qtype, QTYPE::TYPE(TYPE::A));
        assert_eq!(l.asking(), "redis.s.example");
    }

    #[test]
    fn a_search_list_longer_than_six_is_followed() {
        // glibc has had no limit on search domains since 2.26, and Kubernetes writes up to 32.
        let domains: Vec<String> = (0..32).map(|i| format!("d{i}.example")).collect();
        let c = conf(&format!("search {} extra.example\n", domains.join(" ")));
        assert_eq!(c.search, domains, "32 at most, in order");
    }

    #[test]
    fn a_late_answer_to_an_earlier_try_is_not_taken_for_the_current_one() {
        let (mut l, first, now) = lookup("redis.test", LINE);
        let Some(Step::Send(second)) = l.on_timeout(l.deadline()) else {
            panic!("the deadline should bring a second try");
        };
        assert_ne!(
            first.bytes[..2],
            second.bytes[..2],
            "each try has its own id"
        );
        let late = answer(&first.bytes, RCODE::NoError, vec![a([6, 6, 6, 6])]);
        assert_eq!(l.on_datagram(server(), &late, now), None);
        let current = answer(&second.bytes, RCODE::NoError, vec![a([10, 0, 0, 1])]);
        assert_eq!(
            l.on_datagram(server(), &current, now),
            Some(Step::Found(IpAddr::from([10, 0, 0, 1])))
        );
    }

    #[test]
    fn a_conf_without_name_servers_is_an_error_not_a_panic() {
        let mut none = conf(LINE);
        none.nameservers.clear();
        assert!(Lookup::new("redis.test", none, Instant::now()).is_err());
    }

    #[test]
    fn a_name_that_points_at_itself_is_refused_not_followed_forever() {
        // The question's name is a compression pointer to itself (offset 12): a decoder that
        // follows pointers without bound never returns, and the loop with it. A guard thread,
        // not a sleep: the answer is expected at once.
        let (mut l, send, now) = lookup("redis.test", LINE);
        let mut reply = answer(&send.bytes, RCODE::NoError, vec![]);
        reply.truncate(HEADER);
        reply.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        let (done, verdict) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(l.on_datagram(server(), &reply, now));
        });
        let step = verdict.recv_timeout(Duration::from_secs(10));
        assert!(matches!(step, Ok(Some(Step::Send(_)))), "{step:?}");
    }

    #[test]
    fn a_search_domain_that_cannot_be_asked_is_skipped_not_fatal() {
        // A search domain too long to append, or not a host name, is passed over (as glibc
        // skips a name too long to query): the name itself is still asked.
        let long = format!("{}.example", "a".repeat(63)).repeat(4);
        let text = format!("{LINE}\nsearch {long} bad!domain ok.example\n");
        let (l, send, _) = lookup("redis", &text);
        assert_eq!(l.candidates, ["redis.ok.example", "redis"]);
        assert_eq!(send.to, server());
        let nowhere = ResolvConf::parse(&format!("search {long}"));
        assert!(Lookup::new("redis", nowhere, Instant::now()).is_ok());
        assert!(Lookup::new("bad name!", conf(LINE), Instant::now()).is_err());
    }

    #[test]
    fn localhost_is_the_loopback_without_a_hosts_entry() {
        // RFC 6761: `localhost` never goes to a name server (where a search domain could turn
        // it into `localhost.corp.example`, someone else's machine).
        let config = ResolverConfig {
            resolv_conf: "/nonexistent".into(),
            hosts: "/nonexistent".into(),
        };
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        for host in ["localhost", "LocalHost.", "redis.localhost"] {
            assert!(
                matches!(start(host, &config, Instant::now()), Start::Found(ip) if ip == loopback),
                "{host}"
            );
        }
        assert!(matches!(
            start("localhost.example", &config, Instant::now()),
            Start::Query(..)
        ));
    }

    #[test]
    fn a_link_local_name_server_keeps_its_scope() {
        let c = conf("nameserver fe80::1%1\nnameserver fe80::2%lo\nnameserver fe80::3%nosuchif0\nnameserver fe80::4%2\n");
        let scoped = |ip: &str, scope| {
            SocketAddr::from(SocketAddrV6::new(ip.parse().unwrap(), 53, 0, scope))
        };
        // By number, by interface name (the loopback is interface 1), unknown (no scope, kept
        // as glibc keeps it); and three at most.
        let expected = [
            scoped("fe80::1", 1),
            scoped("fe80::2", 1),
            scoped("fe80::3", 0),
        ];
        assert_eq!(c.nameservers, expected);
        let bracketed = conf("nameserver [fe80::1%1]:5353").nameservers;
        let port = SocketAddr::from(SocketAddrV6::new("fe80::1".parse().unwrap(), 5353, 0, 1));
        assert_eq!(bracketed, [port]);
    }

    /// The first words of `resolv.conf` and hosts lines that mean something, and some that do not
    /// (`nameserver` twice: enough of them to pass the limit of three).
    const KEYWORDS: &str = "nameserver|nameserver|search|domain|options|127.0.0.1|::1|#|;|";

    /// What follows a first word: anything, or what the parser reads (addresses, options with
    /// huge numbers, long search lists), so that the limits are reached.
    fn line_rest() -> impl Strategy<Value = String> {
        prop_oneof![
            1 => any::<String>(),
            3 => "([0-9]{1,2}\\.){3}[0-9]{1,2}|\\[::1\\]:[0-9]{1,6}|fe80::[0-9]%[a-z0-9]{0,4}",
            1 => "(ndots|timeout|attempts):[0-9]{1,25}",
            1 => "[a-z.]{1,70}( [a-z.]{1,70}){0,40}",
        ]
    }

    proptest! {
        /// Whatever bytes come back with the right id from the right server, the lookup answers
        /// with a step and never panics; the same for arbitrary resolv.conf and hosts text.
        #[test]
        fn hostile_datagrams_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..600)) {
            let (mut l, send, now) = lookup("redis.test", LINE);
            let mut bytes = send.bytes[..2].to_vec();
            bytes.extend_from_slice(&tail);
            let step = l.on_datagram(server(), &bytes, now);
            prop_assert!(step.is_some() || bytes.len() < HEADER);
        }

        #[test]
        fn mutated_answers_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let (mut l, send, now) = lookup("redis.test", LINE);
            let mut reply = answer(&send.bytes, RCODE::NoError, vec![a([1, 2, 3, 4])]);
            for (at, byte) in flips {
                let at = 2 + at % (reply.len() - 2);
                reply[at] = byte;
            }
            let _ = l.on_datagram(server(), &reply, now);
        }

        /// Lines that start with the words the parser looks for, then anything (NUL, control
        /// characters, other lines' words, long runs): the parse stays within its limits.
        #[test]
        fn any_config_text_parses(
            lines in proptest::collection::vec((KEYWORDS, line_rest()), 0..24),
            name in "[a-z.]{0,20}",
        ) {
            let text: String = lines.iter().map(|(k, rest)| format!("{k} {rest}\n")).collect();
            let c = ResolvConf::parse(&text);
            prop_assert!(!c.nameservers.is_empty() && c.nameservers.len() <= MAX_NAMESERVERS);
            prop_assert!(c.ndots <= MAX_NDOTS && (1..=MAX_ATTEMPTS).contains(&c.attempts));
            prop_assert!(c.timeout >= Duration::from_secs(1) && c.timeout <= MAX_TIMEOUT);
            prop_assert!(c.candidates(&name).len() <= MAX_SEARCH + 1);
            let _ = hosts_lookup(&text, &name);
        }
    }
}
