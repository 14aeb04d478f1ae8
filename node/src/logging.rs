//! Logging: the level and format of `log:`, colours only at a terminal, and openraft's
//! repeated warnings about a peer that is down (four lines every half second for as long as
//! it is down) cut to one line per kind and peer per [`REPEAT_INTERVAL`].

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use crate::config::{Config, LogFormat, LogLevel};

/// How often the same openraft warning about the same peer is let through.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(30);
/// Kinds and peers remembered at most (a bound, whatever the cluster does).
const MAX_REMEMBERED: usize = 4096;

/// Sets up logging for `berth serve`.
pub fn init(cfg: &Config) {
    let level = match cfg.log.level.unwrap_or(LogLevel::Info) {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},openraft=warn")));
    // Colours only for a person at a terminal: files and log shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let fmt = match cfg.log.formatter {
        Some(LogFormat::Json | LogFormat::Logstash) => fmt.json().boxed(),
        _ => fmt.boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt.with_filter(Repeats::default())).init();
}

/// Lets an openraft warning through once per interval for each place it is logged from and
/// each peer it names.
#[derive(Default)]
pub struct Repeats {
    last: Mutex<HashMap<(&'static str, Option<u32>, String), Instant>>,
}

impl Repeats {
    /// True if the warning `key` was not let through within the interval before `now`.
    fn allow(&self, key: (&'static str, Option<u32>, String), now: Instant) -> bool {
        let mut last = self.last.lock().expect("repeats lock");
        if last.get(&key).is_some_and(|t| now.duration_since(*t) < REPEAT_INTERVAL) {
            return false;
        }
        if last.len() >= MAX_REMEMBERED {
            last.clear();
        }
        last.insert(key, now);
        true
    }
}

impl<S: Subscriber> Filter<S> for Repeats {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if !meta.target().starts_with("openraft") || *meta.level() > Level::WARN {
            return true;
        }
        let mut text = FieldText::default();
        event.record(&mut text);
        self.allow((meta.file().unwrap_or(meta.target()), meta.line(), peer_of(&text.0)), Instant::now())
    }
}

/// The fields of an event as text.
#[derive(Default)]
struct FieldText(String);

impl Visit for FieldText {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

/// The peer a warning is about (`target=3`, `node 3 at`), or empty.
fn peer_of(text: &str) -> String {
    for marker in ["target=", "node "] {
        if let Some(rest) = text.split(marker).nth(1) {
            let id: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if !id.is_empty() {
                return id;
            }
        }
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_and_peer_per_interval() {
        let r = Repeats::default();
        let t0 = Instant::now();
        let key = |peer: &str| ("replication.rs", Some(7), peer.to_string());
        assert!(r.allow(key("3"), t0));
        assert!(!r.allow(key("3"), t0 + Duration::from_secs(1)));
        assert!(r.allow(key("2"), t0 + Duration::from_secs(1)), "another peer");
        assert!(r.allow(("other.rs", Some(1), "3".into()), t0 + Duration::from_secs(1)), "another kind");
        assert!(r.allow(key("3"), t0 + REPEAT_INTERVAL), "again after the interval");
    }

    #[test]
    fn peers_are_found_in_openraft_messages() {
        assert_eq!(peer_of(" message=error replication to target=3 error=Unreachable node"), "3");
        assert_eq!(peer_of(" message=heartbeat error: RpcFailure: node 12 at 127.0.0.1:1: tcp connect error"), "12");
        assert_eq!(peer_of(" message=backoff mode: drain events interval=499ms"), "");
    }
}
