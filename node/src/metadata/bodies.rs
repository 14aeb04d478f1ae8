//! Manifest bodies are content. The API stores each body in the blob store and then asks for
//! a `PutManifest` with the body in it (so any leader, of any version, can take it). The
//! leader, once every member reads protocol 3, makes sure the body is stored (verified and
//! durable; a stat when the API stored it already) and proposes `PutStoredManifest` without
//! it: the log and the state keep only what the indexes need. A voter answering a read fills
//! the body back in from a bounded cache of hot bodies or from the store, checking that the
//! bytes hash to the digest, so every answer, to this node's API or to a frontend of any
//! version, carries the manifest whole.

use std::sync::{Arc, Mutex};

use berth_api::{BlobError, BlobStore, MetaError};
use berth_proto::manifest::MAX_MANIFEST_BYTES;
use berth_proto::{Answer, Command, Digest, ManifestRecord};
use berth_raft_store::segments::Segments;
use futures::StreamExt;

/// Bytes of bodies held per cache segment (at most twice this in all).
pub const CACHE_BYTES: usize = 16 << 20;
/// Bodies larger than this are read from the store each time: hot manifests are small
/// (a few KiB), and a few large ones would push every small one out.
pub const CACHE_MAX_BODY: usize = 256 << 10;

/// The blob store's manifest bodies, with a cache of hot ones.
pub struct ManifestBodies {
    store: Arc<dyn BlobStore>,
    cache: Mutex<Segments<Digest, Arc<Vec<u8>>>>,
    /// Manifests this node committed as leader, by where their body went.
    committed: prometheus::IntCounterVec,
}

fn cost(body: &Arc<Vec<u8>>) -> usize {
    64 + body.len()
}

impl ManifestBodies {
    /// Bodies read from `store`, with a cache of `cache_bytes` per segment.
    pub fn new(store: Arc<dyn BlobStore>, cache_bytes: usize, registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let committed = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "berth_manifest_bodies_total",
                "Manifests proposed by this node as leader, by where the body went: the blob store, or the log entry (while a member reads no protocol 3).",
            ),
            &["body"],
        )?;
        registry.register(Box::new(committed.clone()))?;
        Ok(ManifestBodies { store, cache: Mutex::new(Segments::new(cache_bytes)), committed })
    }

    /// Counts a manifest proposed with its body in the entry.
    pub fn counted_in_entry(&self) {
        self.committed.with_label_values(&["entry"]).inc();
    }

    /// Counts a manifest proposed with its body in the store.
    pub fn counted_stored(&self) {
        self.committed.with_label_values(&["store"]).inc();
    }

    /// The body of the manifest `digest`, verified.
    pub async fn get(&self, digest: &Digest) -> Result<Arc<Vec<u8>>, MetaError> {
        if let Some(b) = self.cache.lock().unwrap().get(digest, cost) {
            return Ok(b);
        }
        let body = Arc::new(self.read(digest).await?);
        if body.len() <= CACHE_MAX_BODY {
            self.cache.lock().unwrap().insert(digest.clone(), body.clone(), cost(&body));
        }
        Ok(body)
    }

    async fn read(&self, digest: &Digest) -> Result<Vec<u8>, MetaError> {
        let unavailable = |e: BlobError| match e {
            BlobError::NotFound => MetaError::Internal(format!("the body of manifest {digest} is missing from the blob store")),
            e => MetaError::Unavailable(format!("reading the body of manifest {digest}: {e}")),
        };
        // Sized up front: one allocation of the body's size, not a doubling series of them.
        let size = self.store.stat(digest).await.map_err(unavailable)?.ok_or_else(|| unavailable(BlobError::NotFound))?;
        if size > MAX_MANIFEST_BYTES as u64 {
            return Err(MetaError::Internal(format!("the body of manifest {digest} in the blob store is larger than any manifest")));
        }
        let mut stream = self.store.read(digest, None).await.map_err(unavailable)?;
        let mut body = Vec::with_capacity(size as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| MetaError::Unavailable(format!("reading the body of manifest {digest}: {e}")))?;
            if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
                return Err(MetaError::Internal(format!("the body of manifest {digest} in the blob store is larger than any manifest")));
            }
            body.extend_from_slice(&chunk);
        }
        let actual = digest.same_algorithm_of(&body);
        if &actual != digest {
            // Never serve bytes other than the ones the digest names.
            return Err(MetaError::Internal(format!("the body of manifest {digest} in the blob store is damaged (it hashes to {actual})")));
        }
        Ok(body)
    }

    /// `command` with a manifest's body moved to the store: a `PutManifest` becomes a
    /// `PutStoredManifest` once the body is durable there. Anything else is left as it is.
    pub async fn out_of_entry(&self, command: Command) -> Result<Command, MetaError> {
        let Command::PutManifest { repo, digest, mut manifest, tag } = command else { return Ok(command) };
        if manifest.body.is_empty() {
            return Err(MetaError::Internal(format!("manifest {digest} came without its body")));
        }
        let body = bytes::Bytes::from(std::mem::take(&mut manifest.body));
        self.store.put_content(&digest, body).await.map_err(|e| match e {
            BlobError::Full(m) => MetaError::Full(m),
            BlobError::DigestMismatch { .. } => MetaError::Internal(format!("manifest {digest}: {e}")),
            e => MetaError::Unavailable(format!("storing the body of manifest {digest}: {e}")),
        })?;
        self.counted_stored();
        Ok(Command::PutStoredManifest { repo, digest, manifest, tag })
    }

    /// `record` with its body, read from the store if the state holds none.
    pub async fn fill(&self, digest: &Digest, record: Arc<ManifestRecord>) -> Result<Arc<ManifestRecord>, MetaError> {
        if !record.body.is_empty() {
            return Ok(record);
        }
        // A body not kept in the cache is moved, not copied.
        let body = Arc::try_unwrap(self.get(digest).await?).unwrap_or_else(|cached| cached.as_ref().clone());
        let record = Arc::try_unwrap(record).unwrap_or_else(|shared| shared.as_ref().clone());
        Ok(Arc::new(ManifestRecord { body, ..record }))
    }

    /// An answer with every manifest in it whole.
    pub async fn fill_answer(&self, answer: Answer) -> Result<Answer, MetaError> {
        Ok(match answer {
            Answer::Manifest(Some((digest, record))) => {
                let record = self.fill(&digest, record).await?;
                Answer::Manifest(Some((digest, record)))
            }
            Answer::Referrers(found) => {
                let mut filled = Vec::with_capacity(found.len());
                for (digest, record) in found {
                    let record = self.fill(&digest, record).await?;
                    filled.push((digest, record));
                }
                Answer::Referrers(filled)
            }
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::FsBlobStore;

    fn stored(body: &[u8]) -> Arc<ManifestRecord> {
        Arc::new(ManifestRecord {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            body: body.to_vec(),
            blobs: vec![],
            manifests: vec![],
            subject: None,
            artifact_type: None,
            annotations: Default::default(),
            created_ms: 1,
        })
    }

    #[tokio::test]
    async fn bodies_come_back_verified_and_damage_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsBlobStore::new(dir.path()).unwrap();
        let body = br#"{"schemaVersion":2}"#.to_vec();
        let digest = Digest::sha256_of(&body);
        fs.put_content(&digest, body.clone().into()).await.unwrap();
        let bodies = ManifestBodies::new(Arc::new(fs), 1 << 20, &prometheus::Registry::new()).unwrap();

        let whole = bodies.fill(&digest, stored(b"")).await.unwrap();
        assert_eq!(whole.body, body);
        // An inline body (an entry from before protocol 3) is served as it is.
        let inline = stored(b"inline");
        assert!(Arc::ptr_eq(&bodies.fill(&digest, inline.clone()).await.unwrap(), &inline));

        // Damage in the store: a digest whose file holds other bytes is refused, not served.
        let other = b"{}".to_vec();
        let wrong = Digest::sha256_of(&other);
        let path = dir.path().join("blobs/sha256").join(&wrong.hex()[..2]).join(wrong.hex());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"not the bytes").unwrap();
        let e = bodies.fill(&wrong, stored(b"")).await.unwrap_err();
        assert!(e.to_string().contains("damaged"), "{e}");
        let missing = Digest::sha256_of(b"never stored");
        let e = bodies.fill(&missing, stored(b"")).await.unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[tokio::test]
    async fn put_content_refuses_bytes_that_do_not_match_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let fs = FsBlobStore::new(dir.path()).unwrap();
        let digest = Digest::sha256_of(b"one");
        let e = fs.put_content(&digest, bytes::Bytes::from_static(b"two")).await.unwrap_err();
        assert!(matches!(e, BlobError::DigestMismatch { .. }), "{e}");
        assert_eq!(fs.stat(&digest).await.unwrap(), None);
        fs.put_content(&digest, bytes::Bytes::from_static(b"one")).await.unwrap();
        assert_eq!(fs.stat(&digest).await.unwrap(), Some(3));
        // Nothing staged is left behind.
        assert_eq!(std::fs::read_dir(dir.path().join("uploads")).unwrap().count(), 0);
    }
}
