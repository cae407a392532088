//! Where Redis is: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, or `rediss://` for TLS (with
//! the CA of `--redis-ca`), and the commands that open each connection (AUTH, SELECT).

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;

use super::command;

pub const DEFAULT_PORT: u16 = 6379;

/// Where Redis is: `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, or `rediss://...` for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// `rediss://`: the links speak TLS, with [`RedisUrl::tls`] (set from `--redis-ca`).
    pub secure: bool,
    pub tls: Option<RedisTls>,
    pub host: String,
    pub port: u16,
    /// Sent with SELECT. Redis's pub/sub channels are shared by all databases, so this matters
    /// only to a server whose ACLs or proxies care.
    pub db: u32,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let (rest, secure) = match (url.strip_prefix("redis://"), url.strip_prefix("rediss://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(rest)) => (rest, true),
            _ => {
                return Err(format!(
                    "{url}: expected redis://HOST[:PORT][/DB] or rediss://"
                ))
            }
        };
        let (authority, db) = match rest.split_once('/') {
            Some((authority, "")) => (authority, 0),
            Some((authority, db)) => (
                authority,
                db.parse()
                    .map_err(|_| format!("{url}: the database must be a number, not {db:?}"))?,
            ),
            None => (rest, 0),
        };
        let (credentials, host_port) = match authority.rsplit_once('@') {
            Some((credentials, host_port)) => (Some(credentials), host_port),
            None => (None, authority),
        };
        let (username, password) = match credentials.map(|c| c.split_once(':')) {
            None => (None, None),
            Some(Some((user, password))) => (Some(user).filter(|u| !u.is_empty()), Some(password)),
            Some(None) => return Err(format!("{url}: expected USER:PASSWORD@ or :PASSWORD@")),
        };
        let (host, port) = split_host_port(host_port)
            .ok_or_else(|| format!("{url}: expected HOST or HOST:PORT"))?;
        Ok(RedisUrl {
            secure,
            tls: None,
            host: host.to_string(),
            port,
            db,
            username: username.map(str::to_string),
            password: password.map(str::to_string),
        })
    }

    /// `host:port`, for logs and for resolving (credentials left out).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The commands that open a connection: AUTH if there are credentials, SELECT if a
    /// database other than 0 is named. Each gets one reply.
    pub fn write_preamble(&self, out: &mut Vec<u8>) -> usize {
        let mut replies = 0;
        if let Some(password) = &self.password {
            match &self.username {
                Some(user) => command(out, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => command(out, &[b"AUTH", password.as_bytes()]),
            }
            replies += 1;
        }
        if self.db != 0 {
            command(out, &[b"SELECT", self.db.to_string().as_bytes()]);
            replies += 1;
        }
        replies
    }
}

/// The TLS settings of a `rediss://` backplane: the certificate is checked against `--redis-ca`
/// for the URL's host.
#[derive(Debug, Clone)]
pub struct RedisTls {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl PartialEq for RedisTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.name == other.name
    }
}

impl Eq for RedisTls {}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = if let Some(v6) = text.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match text.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => DEFAULT_PORT,
    };
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> RedisUrl {
        RedisUrl::parse(text).expect(text)
    }

    #[test]
    fn urls() {
        let plain = url("redis://127.0.0.1");
        assert_eq!(
            (plain.host.as_str(), plain.port, plain.db),
            ("127.0.0.1", 6379, 0)
        );
        assert_eq!(plain.password, None);
        let full = url("redis://me:s3cret@cache.internal:7000/2");
        assert_eq!(full.address(), "cache.internal:7000");
        assert_eq!(full.db, 2);
        assert_eq!(full.username.as_deref(), Some("me"));
        assert_eq!(full.password.as_deref(), Some("s3cret"));
        let password_only = url("redis://:pw@localhost:6380/");
        assert_eq!(password_only.username, None);
        assert_eq!(password_only.password.as_deref(), Some("pw"));
        assert_eq!(url("redis://[::1]:6390").address(), "[::1]:6390");
        assert_eq!(url("redis://[::1]").port, 6379);
        for bad in [
            "http://localhost",
            "redis://",
            "redis://host:port",
            "redis://host:99999",
            "redis://host/zero",
            "redis://user@host",
        ] {
            assert!(RedisUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_preamble_authenticates_and_selects_only_when_asked() {
        let mut out = Vec::new();
        assert_eq!(url("redis://localhost").write_preamble(&mut out), 0);
        assert!(out.is_empty());
        assert_eq!(url("redis://:pw@localhost/3").write_preamble(&mut out), 2);
        assert_eq!(
            out,
            b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n"
        );
    }
}
