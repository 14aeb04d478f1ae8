//! Sites on disk: where each piece of content is held (`placement`) and what each site still
//! lacks (`geo_missing`). Content is a digest with at least one `content_refs` row. When a
//! digest becomes content, every site that does not hold it gets a `geo_missing` row; a
//! site's `Placed` takes the row away and adds a `placement` row; garbage collection's
//! deletion of the bytes takes every row of the digest away.

use berth_proto::geo::{GeoChange, BACKFILL_DONE};
use berth_proto::{Digest, Outcome};
use redb::ReadableTable;

use super::super::tables::{bounds, key2, last_part, within};
use super::{has, DResult, Writer};

/// A `geo_missing` value: the size (0 for a manifest body) and when the content arrived.
fn missing_value(size: Option<u64>, at_ms: u64) -> [u8; 16] {
    let mut v = [0; 16];
    v[..8].copy_from_slice(&size.unwrap_or(0).to_le_bytes());
    v[8..].copy_from_slice(&at_ms.to_le_bytes());
    v
}

/// The size and arrival time a `geo_missing` value holds.
pub(in crate::disk) fn parse_missing(v: &[u8]) -> DResult<(u64, u64)> {
    if v.len() != 16 {
        return Err(super::DiskError::Format("a geo_missing value is not 16 bytes".into()));
    }
    Ok((super::blob_size(&v[..8])?, super::blob_size(&v[8..])?))
}

impl Writer<'_> {
    /// True if anything links or holds `digest` (a `content_refs` row).
    fn is_content(&self, d: &str) -> DResult<bool> {
        let range = within(d);
        Ok(self.content_refs.range::<&str>(bounds(&range))?.next().is_some())
    }

    /// Called before `digest` gets a `content_refs` row: if it had none, it is new content,
    /// missing at every site that does not hold it.
    pub(super) fn content_arriving(&mut self, digest: &Digest, size: Option<u64>, at_ms: u64) -> DResult<()> {
        if self.small.geo.sites.is_empty() {
            return Ok(());
        }
        let d = digest.to_string();
        if self.is_content(&d)? {
            return Ok(());
        }
        let sites: Vec<String> = self.small.geo.sites.keys().cloned().collect();
        for site in sites {
            if has(&self.placement, &key2(&d, &site))? {
                continue;
            }
            if self.geo_missing.insert(key2(&site, &d).as_str(), missing_value(size, at_ms).as_slice())?.is_none() {
                let s = self.small.geo.sites.get_mut(&site).expect("listed");
                s.missing += 1;
                s.missing_bytes += size.unwrap_or(0);
                self.geo_changed = true;
            }
        }
        Ok(())
    }

    /// Garbage collection deleted `digest`'s bytes: no site is recorded as holding it, and no
    /// site needs it.
    pub(super) fn content_deleted(&mut self, digest: &Digest) -> DResult<()> {
        if self.small.geo.sites.is_empty() {
            return Ok(());
        }
        let d = digest.to_string();
        let range = within(&d);
        let mut held = Vec::new();
        for row in self.placement.range::<&str>(bounds(&range))? {
            held.push(last_part(row?.0.value()).to_string());
        }
        for site in held {
            self.placement.remove(key2(&d, &site).as_str())?;
            if let Some(s) = self.small.geo.sites.get_mut(&site) {
                s.held = s.held.saturating_sub(1);
            }
            self.geo_changed = true;
        }
        let sites: Vec<String> = self.small.geo.sites.keys().cloned().collect();
        for site in sites {
            if let Some(v) = self.geo_missing.remove(key2(&site, &d).as_str())? {
                let (size, _) = parse_missing(v.value())?;
                let s = self.small.geo.sites.get_mut(&site).expect("listed");
                s.missing = s.missing.saturating_sub(1);
                s.missing_bytes = s.missing_bytes.saturating_sub(size);
                self.geo_changed = true;
            }
        }
        Ok(())
    }

    /// [`berth_proto::Command::Geo`].
    pub(super) fn geo(&mut self, change: &GeoChange, at_ms: u64) -> DResult<Outcome> {
        match change {
            GeoChange::Join { site, node_id, grpc_addr } => {
                if berth_proto::geo::check_site_name(site).is_err() {
                    return Ok(Outcome::Conflict { reason: format!("invalid site name {site:?}") });
                }
                // A node belongs to one site: joining another moves it.
                let mut changed = false;
                for (name, s) in self.small.geo.sites.iter_mut() {
                    if name != site && s.nodes.remove(node_id).is_some() {
                        changed = true;
                    }
                }
                let s = self.small.geo.sites.entry(site.clone()).or_insert_with(|| {
                    changed = true;
                    berth_proto::geo::SiteRecord { added_ms: at_ms, ..Default::default() }
                });
                if s.nodes.get(node_id) != Some(grpc_addr) {
                    s.nodes.insert(*node_id, grpc_addr.clone());
                    changed = true;
                }
                self.geo_changed |= changed;
                Ok(if changed { Outcome::Done } else { Outcome::Unchanged })
            }
            GeoChange::Placed { site, digests, backfill_through } => {
                if !self.small.geo.sites.contains_key(site) {
                    return Ok(Outcome::NotFound);
                }
                let mut done = Vec::with_capacity(digests.len());
                for digest in digests {
                    let d = digest.to_string();
                    let missing = self.geo_missing.remove(key2(site, &d).as_str())?.map(|v| parse_missing(v.value()).map(|(size, _)| size)).transpose()?;
                    let s = self.small.geo.sites.get_mut(site).expect("checked");
                    if let Some(size) = missing {
                        s.missing = s.missing.saturating_sub(1);
                        s.missing_bytes = s.missing_bytes.saturating_sub(size);
                        self.geo_changed = true;
                    }
                    // Content that went meanwhile (or is going) is not recorded.
                    let wanted = !has(&self.gc_deleting, &d)? && (missing.is_some() || self.is_content(&d)?);
                    let placed = wanted && self.placement.insert(key2(&d, site).as_str(), [].as_slice())?.is_none();
                    if placed {
                        let s = self.small.geo.sites.get_mut(site).expect("checked");
                        s.held += 1;
                        s.last_placed_ms = at_ms;
                        self.geo_changed = true;
                    }
                    done.push(placed);
                }
                if let Some(through) = backfill_through {
                    let s = self.small.geo.sites.get_mut(site).expect("checked");
                    // The walk only moves forward, and ends once.
                    let ahead = match s.backfill_through.as_deref() {
                        Some(BACKFILL_DONE) => false,
                        Some(at) => through.as_str() > at,
                        None => true,
                    };
                    if ahead {
                        s.backfill_through = Some(through.clone());
                        self.geo_changed = true;
                    }
                }
                Ok(Outcome::Swept(done))
            }
            GeoChange::Lost { site, digests } => {
                if !self.small.geo.sites.contains_key(site) {
                    return Ok(Outcome::NotFound);
                }
                let mut done = Vec::with_capacity(digests.len());
                for digest in digests {
                    let d = digest.to_string();
                    let held = self.placement.remove(key2(&d, site).as_str())?.is_some();
                    let s = self.small.geo.sites.get_mut(site).expect("checked");
                    if held {
                        s.held = s.held.saturating_sub(1);
                        self.geo_changed = true;
                    }
                    let wanted = !has(&self.gc_deleting, &d)? && self.is_content(&d)?;
                    let queued = wanted && self.geo_missing.insert(key2(site, &d).as_str(), missing_value(None, at_ms).as_slice())?.is_none();
                    if queued {
                        self.small.geo.sites.get_mut(site).expect("checked").missing += 1;
                        self.geo_changed = true;
                    }
                    done.push(queued);
                }
                Ok(Outcome::Swept(done))
            }
        }
    }
}
