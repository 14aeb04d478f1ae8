//! `berth.geo`: which site this node belongs to, and how its site's replicator copies content
//! from other sites.

use std::time::Duration;

use anyhow::{anyhow, bail};
use serde::Deserialize;

use super::duration_at;

/// `berth.geo` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeoConfig {
    /// The site: the nodes sharing this node's blob store. Unset (the default): the cluster
    /// has no sites, and nothing is replicated between stores. On a frontend: the site whose
    /// store it shares (its `peers` are that site's nodes, which fetch content through for it).
    pub site: Option<String>,
    /// Copies in flight at once (default 4).
    pub concurrency: Option<usize>,
    /// The most bytes per second this node copies from other sites, all copies together:
    /// a number with an optional unit (`KB`, `MB`, `GB`, `KiB`, `MiB`, `GiB`). Default:
    /// no limit.
    pub bandwidth: Option<String>,
    /// First wait after a failed copy, doubled at each failure (default 1s).
    pub backoff: Option<String>,
    /// Longest wait between tries of a copy that keeps failing (default 5m).
    pub maxbackoff: Option<String>,
}

/// The settings with defaults applied; `None` when the node names no site.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geo {
    /// See [`GeoConfig::site`].
    pub site: String,
    /// See [`GeoConfig::concurrency`].
    pub concurrency: usize,
    /// Bytes per second; `None` for no limit.
    pub bandwidth: Option<u64>,
    /// See [`GeoConfig::backoff`].
    pub backoff: Duration,
    /// See [`GeoConfig::maxbackoff`].
    pub max_backoff: Duration,
}

impl Geo {
    /// Checks `berth.geo`.
    pub fn from_config(c: &GeoConfig) -> anyhow::Result<Option<Geo>> {
        let Some(site) = &c.site else {
            if c.concurrency.is_some() || c.bandwidth.is_some() {
                bail!("invalid configuration value at berth.geo: replication settings need berth.geo.site");
            }
            return Ok(None);
        };
        berth_proto::geo::check_site_name(site).map_err(|e| anyhow!("invalid configuration value at berth.geo.site: {e}"))?;
        let concurrency = c.concurrency.unwrap_or(4);
        if !(1..=256).contains(&concurrency) {
            bail!("invalid configuration value at berth.geo.concurrency: 1 to 256");
        }
        let bandwidth = c.bandwidth.as_deref().map(parse_rate).transpose().map_err(|e| anyhow!("invalid configuration value at berth.geo.bandwidth: {e}"))?;
        let backoff = duration_at(&c.backoff, "berth.geo.backoff", Duration::from_secs(1), false)?;
        let max_backoff = duration_at(&c.maxbackoff, "berth.geo.maxbackoff", Duration::from_secs(300), false)?;
        Ok(Some(Geo { site: site.clone(), concurrency, bandwidth, backoff, max_backoff: max_backoff.max(backoff) }))
    }
}

/// Bytes per second from `100MiB`, `50MB`, `1048576`.
fn parse_rate(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| anyhow!("{s:?} is not a number of bytes per second"))?;
    let m: u64 = match unit.trim().trim_end_matches("/s") {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => bail!("unknown unit {other:?} (KB, MB, GB, KiB, MiB, GiB)"),
    };
    match n.checked_mul(m) {
        Some(0) => bail!("must be positive"),
        Some(v) => Ok(v),
        None => bail!("{s:?} is too large"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(yaml: &str) -> anyhow::Result<Option<Geo>> {
        Geo::from_config(&serde_norway::from_str(yaml).unwrap())
    }

    #[test]
    fn a_site_with_defaults_and_limits() {
        assert_eq!(geo("{}").unwrap(), None);
        let g = geo("site: eu-west\nbandwidth: 100MiB\nconcurrency: 8\n").unwrap().unwrap();
        assert_eq!((g.site.as_str(), g.bandwidth, g.concurrency), ("eu-west", Some(100 << 20), 8));
        assert_eq!(geo("site: a\nbandwidth: 5MB/s\n").unwrap().unwrap().bandwidth, Some(5_000_000));
        assert_eq!(geo("site: a\n").unwrap().unwrap().bandwidth, None);
        for bad in ["site: Eu\n", "site: a\nbandwidth: 0\n", "site: a\nbandwidth: 5 parsecs\n", "site: a\nconcurrency: 0\n", "bandwidth: 1MB\n"] {
            let e = geo(bad).unwrap_err();
            assert!(format!("{e:#}").contains("berth.geo"), "{bad}: {e:#}");
        }
    }
}
