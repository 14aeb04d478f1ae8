//! `berth geo promote` and `berth geo demote`, run on a stopped node (its data directory
//! must not be in use).
//!
//! Promotion makes a secondary site's node the one voter of a new cluster that continues from
//! the state the node had applied: the same repositories, tags, identity and sites, a new
//! cluster identity. Raft messages carry that identity and nodes take them only from their own
//! cluster, so the old primary, if it comes back as it was, can neither lead the new cluster
//! nor overwrite its log: the two stay apart until the old primary is demoted (its Raft data
//! moved aside, never deleted) and joins the new cluster as a secondary. What the old primary
//! acknowledged after the secondary's last applied entry is in that moved-aside data, not in
//! the new cluster: promotion prints how far the secondary had come.

use std::path::Path;

use anyhow::{bail, Context};
use berth_proto::geo::Promotion;
use berth_raft_store::StateMachineStore;

use crate::config::Config;
use crate::progress::{human, Unit};

/// A new cluster identity: 128 random bits, hex.
pub fn new_cluster_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Where Raft data that a promotion or a demotion replaced is kept.
fn set_aside(data_dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let raft = data_dir.join("raft");
    let aside = data_dir.join(format!("raft.superseded-{}", berth_proto::now_ms()));
    std::fs::rename(&raft, &aside).with_context(|| format!("moving {} aside", raft.display()))?;
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(aside)
}

/// Opens the Raft state in `data_dir` (which fails while a node runs on it), with every entry
/// its log holds as committed applied: a node stopped hard may have applied the last ones
/// without making that durable (the log has them; a start would apply them again).
fn open_state(data_dir: &Path) -> anyhow::Result<berth_raft_store::SharedState> {
    let dir = data_dir.join("raft").join("state");
    if !dir.join("state.redb").exists() {
        bail!("{} holds no Raft state", data_dir.display());
    }
    let sm = StateMachineStore::open(&dir).with_context(|| format!("opening {} (stop the node first)", dir.display()))?;
    let state = sm.shared();
    let log_path = data_dir.join("raft").join("log.redb");
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(async {
        use openraft::storage::{RaftLogReader, RaftLogStorage};
        let mut log = berth_raft_store::LogStore::open(&log_path).with_context(|| format!("opening {} (stop the node first)", log_path.display()))?;
        let Some(committed) = log.read_committed().await? else { return anyhow::Ok(()) };
        let next = state.small().head.last_applied.map_or(0, |l| l.index + 1);
        if committed.index < next {
            return Ok(());
        }
        let entries = log.try_get_log_entries(next..=committed.index).await?;
        if entries.first().map(|e| e.log_id.index) != Some(next) || entries.len() as u64 != committed.index + 1 - next {
            bail!("the log lacks committed entries {next}..={}: it was purged behind a state it does not match", committed.index);
        }
        let n = entries.len();
        state.apply_entries(entries)?;
        state.make_durable()?;
        tracing::info!(entries = n, "applied the committed entries the state had not kept");
        Ok(())
    })?;
    Ok(state)
}

/// `berth geo promote`: the node of `data_dir` (node `berth.nodeid` of a secondary site)
/// becomes the one voter of a new cluster holding what it had applied.
pub fn promote(cfg: &Config, data_dir: &Path) -> anyhow::Result<()> {
    let node_id = cfg.node_id()?;
    let addr = cfg.berth.advertiseaddr.clone().or_else(|| cfg.berth.grpcaddr.clone()).unwrap_or_else(|| crate::DEFAULT_GRPC_ADDR.to_string());
    let (data, applied, geo, from_cluster, totals) = {
        let state = open_state(data_dir)?;
        let mut data = Vec::new();
        state.export(&mut data).context("reading the state")?;
        let applied = state.small().head.last_applied.map_or(0, |l| l.index);
        (data, applied, state.geo(), state.cluster_id(), state.totals()?)
    };
    let Some(site) = geo.site_of(node_id).map(str::to_string) else {
        bail!("node {node_id} belongs to no site: promote a node of a secondary site (one with berth.geo.site)");
    };
    let record = &geo.sites[&site];
    let promotion = Promotion {
        site: site.clone(),
        node_id,
        from_index: applied,
        from_cluster,
        at_ms: berth_proto::now_ms(),
        missing: record.missing,
        missing_bytes: record.missing_bytes,
    };
    let aside = set_aside(data_dir)?;
    let id = new_cluster_id();
    let state = StateMachineStore::seed_from_backup(&data_dir.join("raft").join("state"), &data, node_id, &addr, &id)
        .with_context(|| format!("starting the new cluster in {}", data_dir.display()))?;
    state.begin_cluster(&id, Some(promotion.clone()))?;
    println!(
        "promoted site {site}: node {node_id} ({addr}) is the one voter of a new cluster (identity {id}) holding {} repositories and {} tags, \
         as applied up to log index {applied} of the old cluster",
        totals.0, totals.1
    );
    if promotion.missing > 0 || !record.backfilled() {
        println!(
            "this site lacked {} pieces of content ({}){}: pulls of them fail until a site that holds them is back",
            promotion.missing,
            human(promotion.missing_bytes, Unit::Bytes),
            if record.backfilled() { "" } else { ", and its backfill of older content was not done" }
        );
    } else {
        println!("this site held every piece of content it knew of");
    }
    println!("the old Raft data is kept in {}", aside.display());
    println!(
        "next: start this node as a voter (berth.role: voter); other nodes of this site run `berth geo demote` and join it; \
         the old primary's nodes, when they return, run `berth geo demote` and join as learners of their site"
    );
    Ok(())
}

/// `berth geo demote`: moves the node's Raft data aside (nothing is deleted) so that it can
/// join the promoted cluster as a learner, and says what that data held.
pub fn demote(data_dir: &Path) -> anyhow::Result<()> {
    let (applied, cluster, totals) = {
        let state = open_state(data_dir)?;
        let applied = state.small().head.last_applied.map_or(0, |l| l.index);
        (applied, state.cluster_id(), state.totals()?)
    };
    let aside = set_aside(data_dir)?;
    let name = if cluster.is_empty() { "the first cluster".to_string() } else { format!("cluster {cluster}") };
    println!(
        "moved this node's Raft data ({name}, applied up to log index {applied}: {} repositories, {} tags) to {}",
        totals.0,
        totals.1,
        aside.display()
    );
    println!(
        "what it acknowledged after the promoted site's last applied entry is not in the new cluster; \
         it stays in the directory above, for inspection. next: start this node as a learner (berth.role: learner) with berth.join naming the new cluster"
    );
    Ok(())
}
