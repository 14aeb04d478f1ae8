//! Backup and restore of the registry metadata.
//!
//! `berth cluster backup` asks a voter for its state (everything applied so far: a
//! consistent prefix of the log) and writes it to a file: `BERTHBK1`, the SHA-256 of the
//! state, then the state as a snapshot stream (`berth_raft_store::disk::snapshot`; files of
//! format 3 and older held the whole state encoded at once, and are still read). `berth restore` turns such a file into the
//! data directory of a new one-voter cluster, which then grows by adding voters as any
//! cluster does. Blobs are not in the file: copy the blob store after taking the backup, so
//! that every blob the metadata names is in the copy.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use berth_proto::rpc::BackupRequest;
use berth_raft_store::StateMachineStore;
use sha2::Digest as _;

use crate::cluster_cli::Admin;
use crate::config::Config;
use crate::progress::{Progress, Unit};

const MAGIC: &[u8; 8] = b"BERTHBK1";

impl Admin {
    /// Writes a backup of the metadata `node` has applied to `out` (atomically: a partial
    /// file is never left under that name).
    pub async fn backup(&self, node: &str, out: &Path) -> anyhow::Result<()> {
        let mut stream = self.client(node)?.backup(BackupRequest {}).await.map_err(|s| anyhow::anyhow!("{node}: {}", s.message()))?.into_inner();
        let tmp = out.with_extension("partial");
        let mut file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        // The header's checksum is filled in once the data is complete.
        file.write_all(MAGIC)?;
        file.write_all(&[0u8; 32])?;
        let (mut hasher, mut got, mut total, mut applied, mut said) = (sha2::Sha256::new(), 0u64, 0u64, 0u64, String::new());
        let mut progress = Progress::new("backup", Unit::Bytes);
        let received = async {
            while let Some(chunk) = stream.message().await.map_err(|s| anyhow::anyhow!("{node}: {}", s.message()))? {
                if got == 0 && chunk.total > 0 {
                    total = chunk.total;
                    applied = chunk.applied_index;
                    progress.total(total);
                }
                hasher.update(&chunk.data);
                file.write_all(&chunk.data)?;
                got += chunk.data.len() as u64;
                progress.set(got);
                if !chunk.sha256.is_empty() {
                    said = chunk.sha256;
                }
            }
            anyhow::Ok(())
        };
        if let Err(e) = received.await {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        progress.finish(got);
        let sum = hasher.finalize();
        let sum_right = hex::encode(sum) == said;
        if got != total || !sum_right {
            let _ = std::fs::remove_file(&tmp);
            bail!("{node}: the backup arrived damaged ({got} of {total} bytes, checksum {})", if sum_right { "right" } else { "wrong" });
        }
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
        file.write_all(&sum)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, out)?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        println!("backup of {got} bytes (log index {applied}) written to {}", out.display());
        Ok(())
    }
}

/// The registry state in a backup file, its checksum verified.
pub fn read_backup(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() < MAGIC.len() + 32 || &bytes[..MAGIC.len()] != MAGIC {
        bail!("{} is not a Berth backup (made by `berth cluster backup`)", path.display());
    }
    let (sum, data) = bytes[MAGIC.len()..].split_at(32);
    if sha2::Sha256::digest(data).as_slice() != sum {
        bail!("{} is damaged: its checksum does not match its contents", path.display());
    }
    Ok(data.to_vec())
}

/// Makes `data_dir` (without Raft data) the first voter of a new cluster holding the backup
/// `from`: node `berth.nodeid` at `berth.advertiseaddr` (else `berth.grpcaddr`, else the
/// default gRPC address).
pub fn restore(cfg: &Config, data_dir: &Path, from: &Path) -> anyhow::Result<()> {
    let data = read_backup(from)?;
    let raft_dir = data_dir.join("raft");
    if raft_dir.exists() {
        bail!("{} already holds Raft data: restore into a new data directory", data_dir.display());
    }
    let node_id = cfg.node_id()?;
    let addr = cfg.berth.advertiseaddr.clone().or_else(|| cfg.berth.grpcaddr.clone()).unwrap_or_else(|| crate::DEFAULT_GRPC_ADDR.to_string());
    let state = StateMachineStore::seed_from_backup(&raft_dir.join("state"), &data, node_id, &addr, &crate::geo::promote::new_cluster_id())
        .with_context(|| format!("restoring into {}", data_dir.display()))?;
    let (repos, tags, _) = state.totals()?;
    println!(
        "restored {repos} repositories, {tags} tags and {} users into {} as node {node_id} ({addr}), the one voter of a new cluster",
        state.small().identity.users.len(),
        data_dir.display()
    );
    println!("next: start it (berth serve), then add voters; give it a copy of the blob store taken after the backup");
    Ok(())
}
