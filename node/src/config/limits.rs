//! `berth.limits`: what one connection or request may hold of the node, so that idle,
//! slow or abandoned clients cannot exhaust file descriptors, memory or upload locks.

use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

use super::duration_at;

/// `berth.limits` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Time a client has to send a request's headers (default 10s).
    pub headertimeout: Option<String>,
    /// A connection with no bytes moving either way for this long is closed (default 60s):
    /// idle keep-alives, stalled downloads, half-open sockets.
    pub idletimeout: Option<String>,
    /// Open connections per listener (default 16384); further clients wait in the backlog.
    pub maxconnections: Option<usize>,
    /// Slowest upload body, in bytes per second averaged over `bodyratewindow` (default 1024).
    pub minbodyrate: Option<u64>,
    /// The window over which `minbodyrate` is averaged (default 30s).
    pub bodyratewindow: Option<String>,
    /// Free space kept on the data and blob filesystems: writes are refused (507) below it,
    /// so the Raft log never meets a full disk (default 256MiB, in bytes).
    pub diskreserve: Option<u64>,
    /// Largest manifest a push may store, in bytes (default 4194304, as Distribution; at most
    /// 33554432). A larger one is refused with 413 `SIZE_INVALID`.
    pub maxmanifestbytes: Option<usize>,
    /// Tags one repository may hold (0: no limit). A push of a new tag past it is refused
    /// with 403 `DENIED` naming this key. Kept in the cluster's state, decided in log order;
    /// the voter that starts last with this key or the next set decides both for the cluster.
    pub maxtagsperrepository: Option<u64>,
    /// Repositories one namespace (the first component of a name: `team` in `team/app`) may
    /// hold (0: no limit), like `maxtagsperrepository`.
    pub maxrepositoriespernamespace: Option<u64>,
}

/// The limits with defaults applied.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See [`LimitsConfig::headertimeout`].
    pub header_timeout: Duration,
    /// See [`LimitsConfig::idletimeout`].
    pub idle_timeout: Duration,
    /// See [`LimitsConfig::maxconnections`].
    pub max_connections: usize,
    /// See [`LimitsConfig::minbodyrate`].
    pub min_body_rate: u64,
    /// See [`LimitsConfig::bodyratewindow`].
    pub body_rate_window: Duration,
    /// See [`LimitsConfig::diskreserve`].
    pub disk_reserve: u64,
    /// See [`LimitsConfig::maxmanifestbytes`].
    pub max_manifest_bytes: usize,
    /// The cluster's registry limits, if this node's configuration sets either key
    /// ([`LimitsConfig::maxtagsperrepository`], [`LimitsConfig::maxrepositoriespernamespace`]).
    pub registry: Option<berth_proto::RegistryLimits>,
}

impl Limits {
    /// Applies defaults and checks values, naming the key of a bad one.
    pub fn from_config(c: &LimitsConfig) -> anyhow::Result<Limits> {
        let dur = |v: &Option<String>, key: &str, default: u64| duration_at(v, &format!("berth.limits.{key}"), Duration::from_secs(default), false);
        let limits = Limits {
            header_timeout: dur(&c.headertimeout, "headertimeout", 10)?,
            idle_timeout: dur(&c.idletimeout, "idletimeout", 60)?,
            max_connections: c.maxconnections.unwrap_or(16384),
            min_body_rate: c.minbodyrate.unwrap_or(1024),
            body_rate_window: dur(&c.bodyratewindow, "bodyratewindow", 30)?,
            disk_reserve: c.diskreserve.unwrap_or(256 << 20),
            max_manifest_bytes: c.maxmanifestbytes.unwrap_or(berth_proto::manifest::DEFAULT_MAX_MANIFEST_BYTES),
            registry: (c.maxtagsperrepository.is_some() || c.maxrepositoriespernamespace.is_some()).then(|| berth_proto::RegistryLimits {
                tags_per_repository: c.maxtagsperrepository.unwrap_or(0),
                repositories_per_namespace: c.maxrepositoriespernamespace.unwrap_or(0),
            }),
        };
        let most = berth_proto::manifest::MAX_MANIFEST_BYTES;
        if !(1..=most).contains(&limits.max_manifest_bytes) {
            bail!("invalid configuration value at berth.limits.maxmanifestbytes: must be between 1 and {most}");
        }
        if limits.max_connections == 0 {
            bail!("invalid configuration value at berth.limits.maxconnections: must be positive");
        }
        Ok(limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bad_values() {
        let l = Limits::from_config(&LimitsConfig::default()).unwrap();
        assert_eq!(l.header_timeout, Duration::from_secs(10));
        assert_eq!(l.max_connections, 16384);
        let bad = LimitsConfig { idletimeout: Some("0s".into()), ..Default::default() };
        assert!(Limits::from_config(&bad).unwrap_err().to_string().contains("berth.limits.idletimeout"));
        let bad = LimitsConfig { maxconnections: Some(0), ..Default::default() };
        assert!(Limits::from_config(&bad).unwrap_err().to_string().contains("berth.limits.maxconnections"));
        assert_eq!(l.max_manifest_bytes, 4 << 20);
        assert_eq!(l.registry, None);
        let some = LimitsConfig { maxtagsperrepository: Some(5), ..Default::default() };
        let want = berth_proto::RegistryLimits { tags_per_repository: 5, repositories_per_namespace: 0 };
        assert_eq!(Limits::from_config(&some).unwrap().registry, Some(want));
        let bad = LimitsConfig { maxmanifestbytes: Some(64 << 20), ..Default::default() };
        assert!(Limits::from_config(&bad).unwrap_err().to_string().contains("berth.limits.maxmanifestbytes"));
    }
}
