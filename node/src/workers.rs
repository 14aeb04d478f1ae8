//! Background workers. Each runs until the stop signal flips.

use std::time::Duration;

use tokio::sync::watch;

use crate::storage::SiteStore;

/// Periodically removes uploads older than `age` (`storage.maintenance.uploadpurging`).
pub fn spawn_upload_purger(store: SiteStore, age: Duration, interval: Duration, dry_run: bool, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            match store.purge_uploads(age, dry_run).await {
                Ok(0) => {}
                Ok(n) if dry_run => tracing::info!(n, "upload purge (dry run) would remove uploads"),
                Ok(n) => tracing::info!(n, "purged abandoned uploads"),
                Err(e) => tracing::warn!("upload purge failed: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
        }
    });
}
