//! Log lines on stderr, for people (`plain`) or for log shippers (`json`).
//!
//! Connection-level lines carry the client's `token` and `peer` address as structured fields
//! (`log`'s key-values), so one grep or one query follows a client from accept to close.

use std::io::Write;

use log::kv::{Key, Value, VisitSource};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Info lines bare (the first reads exactly `listening on HOST:PORT`), other levels prefixed
    /// with theirs, fields appended as `key=value`. Timestamps are left to journald or the shell.
    #[default]
    Plain,
    /// One JSON object per line: `ts`, `level`, `msg`, then the fields.
    Json,
}

/// Installs the logger; `RUST_LOG` sets the level (default `info`).
pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    match format {
        LogFormat::Plain => builder.format(|out, record| {
            if record.level() != log::Level::Info {
                write!(out, "{}: ", record.level().as_str().to_lowercase())?;
            }
            write!(out, "{}", record.args())?;
            record
                .key_values()
                .visit(&mut PlainFields(out))
                .map_err(std::io::Error::other)?;
            writeln!(out)
        }),
        LogFormat::Json => builder.format(|out, record| {
            let mut line = serde_json::Map::new();
            line.insert("ts".into(), out.timestamp_millis().to_string().into());
            line.insert(
                "level".into(),
                record.level().as_str().to_lowercase().into(),
            );
            line.insert("msg".into(), record.args().to_string().into());
            let mut fields = JsonFields(&mut line);
            record
                .key_values()
                .visit(&mut fields)
                .map_err(std::io::Error::other)?;
            writeln!(out, "{}", serde_json::Value::Object(line))
        }),
    };
    builder.init();
}

struct PlainFields<'a, W>(&'a mut W);

impl<'kvs, W: Write> VisitSource<'kvs> for PlainFields<'_, W> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        write!(self.0, " {key}={value}").map_err(log::kv::Error::boxed)
    }
}

struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        // Numbers stay numbers; everything else becomes its display text.
        let json = match value.to_u64() {
            Some(n) => n.into(),
            None => value.to_string().into(),
        };
        self.0.insert(key.to_string(), json);
        Ok(())
    }
}
