//! What the registry holds, as GitLab's API and cleanup policies see it: a project's
//! repositories, a repository's tags, a tag's details from its manifest and image config,
//! and deduplicated storage usage. Built from the `Metadata` reads and the blob store only.

use berth_proto::{Digest, Reference, RepoName, Tag};
use futures::StreamExt;
use serde_json::Value;

use crate::backend::MetaError;
use crate::Api;

/// The repositories of a project: its own path and every path below it, in name order.
pub async fn repositories_of(api: &Api, path: &str) -> Result<Vec<String>, MetaError> {
    let mut out = Vec::new();
    if let Ok(own) = RepoName::parse(path) {
        if api.meta.tags(&own, None, 1).await?.is_some() {
            out.push(path.to_string());
        }
    }
    let prefix = format!("{path}/");
    let mut last = prefix.clone();
    loop {
        let page = api.meta.catalog(Some(&last), 1000).await?;
        let full = page.len() == 1000;
        for name in page {
            if !name.starts_with(&prefix) {
                return Ok(out);
            }
            last = name.clone();
            out.push(name);
        }
        if !full {
            return Ok(out);
        }
    }
}

/// Every tag of a repository, in name order.
pub async fn all_tags(api: &Api, repo: &RepoName) -> Result<Vec<String>, MetaError> {
    let mut out: Vec<String> = Vec::new();
    loop {
        let page = api.meta.tags(repo, out.last().map(String::as_str), 1000).await?.unwrap_or_default();
        let full = page.len() == 1000;
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// Storage used by `repos`: the bytes of every blob linked into them, each blob counted once
/// however many of them link it (manifest bodies, a few KiB each, are not counted). One read
/// per thousand blobs.
pub async fn usage(api: &Api, repos: &[String]) -> Result<u64, MetaError> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for name in repos {
        let Ok(repo) = RepoName::parse(name) else { continue };
        for (d, size) in api.meta.blobs(&repo).await? {
            if seen.insert(d) {
                total += size;
            }
        }
    }
    Ok(total)
}

/// What GitLab shows of a tag, read from its manifest and its image config.
pub struct TagDetails {
    /// The manifest's digest.
    pub digest: Digest,
    /// The config's hex digest.
    pub revision: Option<String>,
    /// The config's `created`, as written there.
    pub created_at: Option<String>,
    /// The layers' bytes.
    pub total_size: Option<u64>,
}

impl TagDetails {
    /// `created_at` in ms since the epoch, if it reads.
    pub fn created_ms(&self) -> Option<u64> {
        self.created_at.as_deref().and_then(crate::iso_time::parse)
    }
}

/// A tag's details; `None` if the tag names nothing.
pub async fn details(api: &Api, repo: &RepoName, tag: &str) -> Result<Option<TagDetails>, MetaError> {
    let Ok(tag) = Tag::parse(tag) else { return Ok(None) };
    let Some((digest, record)) = api.meta.manifest(repo, &Reference::Tag(tag)).await? else { return Ok(None) };
    let manifest: Value = serde_json::from_slice(&record.body).unwrap_or(Value::Null);
    let config = manifest["config"]["digest"].as_str().and_then(|d| Digest::parse(d).ok());
    let total_size = manifest["layers"].as_array().map(|layers| layers.iter().filter_map(|l| l["size"].as_u64()).sum());
    let created_at = match &config {
        Some(c) => read_config(api, c).await.and_then(|v| v["created"].as_str().map(str::to_string)),
        None => None,
    };
    Ok(Some(TagDetails { digest, revision: config.map(|c| c.hex().to_string()), created_at, total_size }))
}

/// An image config (at most 1 MiB of JSON), if it reads.
async fn read_config(api: &Api, digest: &Digest) -> Option<Value> {
    let mut stream = api.blobs.read(digest, None).await.ok()?;
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        bytes.extend_from_slice(&chunk.ok()?);
        if bytes.len() > 1 << 20 {
            return None;
        }
    }
    serde_json::from_slice(&bytes).ok()
}
