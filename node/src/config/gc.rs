//! `gc`: online garbage collection, with the keys of GitLab's container registry (its `gc:`
//! section). Berth needs no database for it: the review queue is in the Raft state.

use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

use super::duration_at;

/// `gc` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Turns both workers off (default false). Items are still queued, so turning it on later
    /// collects what became garbage meanwhile.
    pub disabled: Option<bool>,
    /// How long an item stays unreferenced before it may be swept (default 24h; `0` sweeps as
    /// soon as a worker looks). A push has this long between uploading a blob and pushing the
    /// manifest that uses it.
    pub reviewafter: Option<String>,
    /// Longest wait between two runs of a worker that keeps failing (default 24h).
    pub maxbackoff: Option<String>,
    /// Accepted for compatibility: an idle Berth worker looks at a local index, which costs
    /// nothing, so it never backs off when idle.
    pub noidlebackoff: Option<bool>,
    /// Longest time one sweep step (a Raft command) may take (default 10s).
    pub transactiontimeout: Option<String>,
    /// The manifest worker.
    pub manifests: WorkerConfig,
    /// The blob worker (blob links, then the bytes).
    pub blobs: WorkerConfig,
}

/// `gc.manifests` and `gc.blobs`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Turns this worker off (default false).
    pub disabled: Option<bool>,
    /// Pause between two runs (default 5s).
    pub interval: Option<String>,
    /// Longest time a delete in the blob store may take (`gc.blobs` only; default 5s).
    pub storagetimeout: Option<String>,
}

/// The settings with defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gc {
    /// See [`GcConfig::reviewafter`].
    pub review_after: Duration,
    /// See [`GcConfig::maxbackoff`].
    pub max_backoff: Duration,
    /// See [`GcConfig::transactiontimeout`].
    pub transaction_timeout: Duration,
    /// The manifest worker's pause, if it runs.
    pub manifests: Option<Duration>,
    /// The blob worker's pause, if it runs.
    pub blobs: Option<Duration>,
    /// See [`WorkerConfig::storagetimeout`].
    pub storage_timeout: Duration,
}

impl Gc {
    /// Applies defaults and checks values, naming the key of a bad one.
    pub fn from_config(c: &GcConfig) -> anyhow::Result<Gc> {
        let dur = |v: &Option<String>, key: &str, default: Duration, zero_ok: bool| duration_at(v, &format!("gc.{key}"), default, zero_ok);
        let off = c.disabled == Some(true);
        let worker = |w: &WorkerConfig, key: &str| -> anyhow::Result<Option<Duration>> {
            let interval = dur(&w.interval, &format!("{key}.interval"), Duration::from_secs(5), false)?;
            Ok((!off && w.disabled != Some(true)).then_some(interval))
        };
        if c.manifests.storagetimeout.is_some() {
            bail!("invalid configuration value at gc.manifests.storagetimeout: only gc.blobs deletes from storage");
        }
        Ok(Gc {
            review_after: dur(&c.reviewafter, "reviewafter", Duration::from_secs(24 * 3600), true)?,
            max_backoff: dur(&c.maxbackoff, "maxbackoff", Duration::from_secs(24 * 3600), false)?,
            transaction_timeout: dur(&c.transactiontimeout, "transactiontimeout", Duration::from_secs(10), false)?,
            manifests: worker(&c.manifests, "manifests")?,
            blobs: worker(&c.blobs, "blobs")?,
            storage_timeout: dur(&c.blobs.storagetimeout, "blobs.storagetimeout", Duration::from_secs(5), false)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_switches_and_bad_values() {
        let g = Gc::from_config(&GcConfig::default()).unwrap();
        assert_eq!(g.review_after, Duration::from_secs(86400));
        assert_eq!((g.manifests, g.blobs), (Some(Duration::from_secs(5)), Some(Duration::from_secs(5))));
        let off = GcConfig { disabled: Some(true), ..Default::default() };
        assert_eq!(Gc::from_config(&off).unwrap().blobs, None);
        let quick = GcConfig {
            reviewafter: Some("0".into()),
            manifests: WorkerConfig { disabled: Some(true), ..Default::default() },
            blobs: WorkerConfig { interval: Some("200ms".into()), ..Default::default() },
            ..Default::default()
        };
        let g = Gc::from_config(&quick).unwrap();
        assert_eq!((g.review_after, g.manifests, g.blobs), (Duration::ZERO, None, Some(Duration::from_millis(200))));
        let bad = GcConfig { blobs: WorkerConfig { interval: Some("0s".into()), ..Default::default() }, ..Default::default() };
        assert!(Gc::from_config(&bad).unwrap_err().to_string().contains("gc.blobs.interval"));
        let bad = GcConfig { reviewafter: Some("soon".into()), ..Default::default() };
        assert!(Gc::from_config(&bad).unwrap_err().to_string().contains("gc.reviewafter"));
    }
}
