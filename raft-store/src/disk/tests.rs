//! The on-disk state against the in-memory model ([`RegistryState`]): after any sequence of
//! commands both give the same outcomes and answer every query alike; and what a crash, a
//! snapshot, a damaged stream and an old format do to it.

use berth_proto::identity::IdentityChange;
use berth_proto::{Command, Digest, GcItem, ManifestRecord, Query, Reference, RepoName, Request, Tag};
use openraft::{CommittedLeaderId, EntryPayload};
use proptest::prelude::*;

use super::*;
use crate::types::typ::Entry;

fn digest(i: u8) -> Digest {
    Digest::sha256_of(&[i])
}
/// Three repositories in two namespaces (`r0` holds two), so that namespace limits bite.
fn repo(i: u8) -> RepoName {
    RepoName::parse(["r0", "r0/x", "r1/y"][i as usize % 3]).unwrap()
}
fn tag(i: u8) -> Tag {
    Tag::parse(&format!("t{i}")).unwrap()
}
fn entry(index: u64, command: Command, at_ms: u64) -> Entry {
    Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(Request { command, at_ms }) }
}
fn manifest(m: u8, blobs: Vec<u8>, children: Vec<u8>, subject: Option<u8>) -> ManifestRecord {
    ManifestRecord {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        body: vec![m],
        blobs: blobs.into_iter().map(digest).collect(),
        manifests: children.into_iter().map(digest).collect(),
        subject: subject.map(digest),
        artifact_type: None,
        annotations: Default::default(),
        created_ms: m as u64,
    }
}

fn arb_command() -> impl Strategy<Value = Command> {
    let ids = |r: std::ops::Range<u8>| proptest::collection::vec(r, 0..3);
    prop_oneof![
        (0u8..3, 0u8..6).prop_map(|(r, d)| Command::LinkBlob { repo: repo(r), digest: digest(d), size: d as u64 }),
        (0u8..3, 0u8..6).prop_map(|(r, d)| Command::UnlinkBlob { repo: repo(r), digest: digest(d) }),
        (0u8..3, 10u8..14, ids(0..6), ids(10..14), proptest::option::of(10u8..14), proptest::option::of(0u8..3), any::<bool>())
            .prop_map(|(r, m, blobs, children, subject, t, stored)| {
                let (repo, digest, manifest, tag) = (repo(r), digest(m), manifest(m, blobs, children, subject), t.map(tag));
                if stored {
                    // The body is in the blob store (protocol 3); inline and stored entries mix.
                    Command::PutStoredManifest { repo, digest, manifest: ManifestRecord { body: vec![], ..manifest }, tag }
                } else {
                    Command::PutManifest { repo, digest, manifest, tag }
                }
            }),
        (0u8..3, 10u8..14).prop_map(|(r, d)| Command::DeleteManifest { repo: repo(r), digest: digest(d) }),
        (0u8..3, 0u8..3).prop_map(|(r, t)| Command::DeleteTag { repo: repo(r), tag: tag(t) }),
        (0u8..2).prop_map(|s| Command::InitHttpSecret { secret: vec![s] }),
        (0u8..3).prop_map(|u| Command::Identity(IdentityChange::CreateUser { username: format!("u{u}"), password_hash: None, admin: false })),
        (0u64..4, 0u64..3).prop_map(|(tags_per_repository, repositories_per_namespace)| Command::SetLimits(
            berth_proto::RegistryLimits { tags_per_repository, repositories_per_namespace }
        )),
        proptest::collection::vec(arb_gc_item(), 1..3).prop_map(Command::GcSweep),
        proptest::collection::vec(arb_gc_item(), 1..3).prop_map(Command::GcSweep),
        proptest::collection::vec(0u8..6, 1..3).prop_map(|d| Command::GcDeleted { digests: d.into_iter().map(digest).collect() }),
        proptest::collection::vec(arb_gc_item(), 0..4).prop_map(Command::GcEnqueue),
        arb_cleanup(),
        proptest::collection::vec(0u8..3, 0..3).prop_map(|e| Command::Notify(berth_proto::notify::NotifyChange::Endpoints(
            e.into_iter().map(|i| format!("e{i}")).collect::<std::collections::BTreeSet<_>>().into_iter().collect()
        ))),
        (0u8..4, 0u64..40).prop_map(|(e, through)| Command::Notify(berth_proto::notify::NotifyChange::Delivered { endpoint: format!("e{e}"), through })),
    ]
}

/// Projects come and go (ids are shared with users, so 1..6 hits both), and their cleanup
/// policies are saved, started, advanced and ended with times that collide.
fn arb_cleanup() -> impl Strategy<Value = Command> {
    use berth_proto::cleanup::{CleanupChange, CleanupPolicy};
    use berth_proto::identity::Visibility;
    let project = 1u64..6;
    let at = (0u64..4).prop_map(|t| t * 100);
    prop_oneof![
        (0u8..3).prop_map(|p| Command::Identity(IdentityChange::CreateProject { path: format!("p{p}"), visibility: Visibility::Private, owner: None })),
        project.clone().prop_map(|project| Command::Identity(IdentityChange::DeleteProject { project })),
        (project.clone(), any::<bool>(), proptest::option::of(at.clone())).prop_map(|(project, enabled, next_run_ms)| Command::Cleanup(CleanupChange::Set {
            project,
            policy: CleanupPolicy { enabled, ..Default::default() },
            next_run_ms
        })),
        (project.clone(), at.clone(), at.clone()).prop_map(|(project, due_ms, next_run_ms)| Command::Cleanup(CleanupChange::Start { project, due_ms, next_run_ms })),
        (project.clone(), at.clone(), 0u8..3).prop_map(|(project, started_ms, r)| Command::Cleanup(CleanupChange::Progress {
            project,
            started_ms,
            repository: format!("p{r}"),
            deleted: r as u64
        })),
        (project, at, any::<bool>()).prop_map(|(project, started_ms, failed)| Command::Cleanup(CleanupChange::Finish {
            project,
            started_ms,
            error: failed.then(|| "stopped".into())
        })),
    ]
}

fn arb_gc_item() -> impl Strategy<Value = GcItem> {
    prop_oneof![
        (0u8..3, 10u8..14).prop_map(|(r, d)| GcItem::Manifest { repo: repo(r), digest: digest(d) }),
        (0u8..3, 0u8..6).prop_map(|(r, d)| GcItem::Link { repo: repo(r), digest: digest(d) }),
        prop_oneof![0u8..6, 10u8..14].prop_map(|d| GcItem::Content { digest: digest(d) }),
    ]
}

/// Every query over the small universe the generator draws from.
fn queries() -> Vec<Query> {
    let mut q = vec![Query::HttpSecret, Query::IdentityVersion, Query::Identity, Query::GcStatus, Query::GcCollectable(all_gc_items()), Query::Cleanup, Query::NotifyStatus];
    for e in 0..4u8 {
        for n in [0, 1, 3, 1000] {
            q.push(Query::NotifyPending { endpoint: format!("e{e}"), n });
        }
    }
    let scan_points = std::iter::once(None).chain(all_gc_items().into_iter().map(Some));
    for after in scan_points {
        for n in [1, 5, 1000] {
            q.push(Query::GcScan { after: after.clone(), n });
        }
    }
    for until_ms in [0, 300_000, 2_000_000, u64::MAX] {
        for n in [0, 1, 3, 1000] {
            q.push(Query::GcDue { manifests: true, until_ms, n });
            q.push(Query::GcDue { manifests: false, until_ms, n });
        }
    }
    for n in [0, 1, 2, 100] {
        q.push(Query::Catalog { last: None, n });
        for r in 0..4u8 {
            q.push(Query::Catalog { last: Some(format!("r{r}")), n });
        }
        q.push(Query::Catalog { last: Some("q".into()), n });
    }
    for r in 0..3u8 {
        let repo = repo(r);
        for d in (0u8..6).chain(10..14) {
            q.push(Query::BlobSize { repo: repo.clone(), digest: digest(d) });
            q.push(Query::Manifest { repo: repo.clone(), reference: Reference::Digest(digest(d)) });
            q.push(Query::Referrers { repo: repo.clone(), subject: digest(d) });
        }
        for t in 0..3u8 {
            q.push(Query::Manifest { repo: repo.clone(), reference: Reference::Tag(tag(t)) });
        }
        for n in [0, 1, 2, 100] {
            q.push(Query::Blobs { repo: repo.clone(), after: None, n });
            for d in 0u8..6 {
                q.push(Query::Blobs { repo: repo.clone(), after: Some(digest(d)), n });
            }
        }
        for n in [0, 1, 2, 100] {
            q.push(Query::Tags { repo: repo.clone(), last: None, n });
            for last in ["t0", "t1", "t2", "t", "s", "u", "t1\0x"] {
                q.push(Query::Tags { repo: repo.clone(), last: Some(last.into()), n });
            }
        }
    }
    q
}

fn assert_same(disk: &DiskState, model: &RegistryState) -> Result<(), TestCaseError> {
    for q in queries() {
        let got = disk.answer(&q).unwrap();
        let want = model.answer(&q);
        prop_assert_eq!(&got, &want, "query {:?}", q);
    }
    // The per-repository counts (which a re-applied entry would throw off) match too.
    let tags: usize = model.repos.values().map(|r| r.tags.len()).sum();
    let manifests: usize = model.repos.values().map(|r| r.manifests.len()).sum();
    prop_assert_eq!(disk.totals().unwrap(), (model.repos.len() as u64, tags as u64, manifests as u64));
    prop_assert_eq!(disk.small().limits, model.limits);
    let (applied, membership) = disk.applied();
    prop_assert_eq!(applied, model.last_applied);
    prop_assert_eq!(membership, model.last_membership.clone());
    Ok(())
}

fn open(dir: &tempfile::TempDir) -> DiskState {
    DiskState::open(&dir.path().join("state.redb"), None).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Same outcomes, same answers, whatever the commands and however they are batched; and
    /// a snapshot of the disk state imported elsewhere answers alike too.
    #[test]
    fn disk_answers_like_the_model(cmds in proptest::collection::vec((arb_command(), 0u64..700_000), 0..60), batch in 1usize..8) {
        let dir = tempfile::tempdir().unwrap();
        let disk = open(&dir);
        let mut model = RegistryState::default();
        let mut index = 0;
        for chunk in cmds.chunks(batch) {
            let mut entries = Vec::new();
            let mut want = Vec::new();
            for (c, dt) in chunk {
                index += 1;
                // Time moves forward unevenly, so tombstones both match and expire.
                let at = index * 100_000 + dt;
                let e = entry(index, c.clone(), at);
                model.last_applied = Some(e.log_id);
                want.push(model.apply(&Request { command: c.clone(), at_ms: at }));
                entries.push(e);
            }
            let got = disk.apply_entries(entries).unwrap();
            prop_assert_eq!(got, want);
            // Manifest reads between batches fill the hot cache; the next batches must
            // invalidate what they change.
            for q in queries().into_iter().filter(|q| matches!(q, Query::Manifest { .. })) {
                prop_assert_eq!(disk.answer(&q).unwrap(), model.answer(&q), "query {:?}", q);
            }
        }
        assert_same(&disk, &model)?;
        // The newest protocol applied is recorded, and survives a reopen and a snapshot.
        let newest = cmds.iter().map(|(c, _)| c.since()).max().unwrap_or(1);
        prop_assert_eq!(disk.protocol_seen(), newest);

        let mut stream = Vec::new();
        disk.export(&mut stream).unwrap();
        let other = tempfile::tempdir().unwrap();
        let copy = open(&other);
        copy.import(stream.as_slice(), |_| {}).unwrap();
        assert_same(&copy, &model)?;
        prop_assert_eq!(copy.protocol_seen(), newest);
        drop(disk);
        prop_assert_eq!(open(&dir).protocol_seen(), newest);
    }
}

/// The `i`th command of a long, simple history.
fn command(i: u64) -> Command {
    let t = (i % 250) as u8;
    if i % 2 == 0 {
        Command::LinkBlob { repo: repo(t), digest: digest(t), size: 3 }
    } else {
        let m = t.wrapping_add(100);
        Command::PutManifest { repo: repo(t), digest: digest(m), manifest: manifest(m, vec![t], vec![], None), tag: Some(tag(t)) }
    }
}

/// Applies entries `from..to` of that history to `disk` (and to `model`, if given).
fn fill(disk: &DiskState, model: Option<&mut RegistryState>, from: u64, to: u64) {
    let mut model = model;
    for i in from..to {
        let e = entry(i, command(i), i);
        let got = disk.apply_entries(vec![e.clone()]).unwrap();
        if let Some(m) = model.as_deref_mut() {
            m.last_applied = Some(e.log_id);
            assert_eq!(got, vec![m.apply(&Request { command: command(i), at_ms: i })]);
        }
    }
}

#[test]
fn a_reopened_state_is_what_its_last_applied_says() {
    // Commits between fsyncs may be lost in a crash, together with the last_applied that
    // names them: a reopened state may be behind, but it is exactly the state after the
    // entries it says it applied, and applying the rest of the log (as openraft does on
    // start) gives the same state as if nothing had happened. (`tests/tests/crash.rs` kills
    // a node for real.)
    let dir = tempfile::tempdir().unwrap();
    let end = DURABLE_EVERY + 37;
    let mut model = RegistryState::default();
    fill(&open(&dir), Some(&mut model), 1, end);
    let disk = open(&dir);
    let applied = disk.applied().0.unwrap().index;
    assert!((DURABLE_EVERY - 1..end).contains(&applied), "{applied}");
    fill(&disk, None, applied + 1, end);
    assert_same(&disk, &model).unwrap();
}

#[test]
fn a_damaged_or_cut_stream_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = open(&dir);
    let mut model = RegistryState::default();
    fill(&disk, Some(&mut model), 1, 50);
    let mut stream = Vec::new();
    disk.export(&mut stream).unwrap();

    let other = tempfile::tempdir().unwrap();
    let target = open(&other);
    let mut before = RegistryState::default();
    fill(&target, Some(&mut before), 1, 7);
    let mut flipped = stream.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    for bad in [&stream[..stream.len() - 1], &stream[..mid], flipped.as_slice(), b"BERTHSN3".as_slice()] {
        assert!(target.import(bad, |_| {}).is_err());
        for q in queries() {
            assert_eq!(target.answer(&q).unwrap(), before.answer(&q), "{q:?}");
        }
    }
    target.import(stream.as_slice(), |_| {}).unwrap();
    for q in queries() {
        assert_eq!(target.answer(&q).unwrap(), model.answer(&q), "{q:?}");
    }
}

#[test]
fn a_state_of_format_3_is_migrated_on_open() {
    #[derive(serde::Serialize)]
    struct StoredSnapshot {
        meta: crate::types::typ::SnapshotMeta,
        data: Vec<u8>,
    }
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut model = RegistryState::default();
    fill(&open(&scratch), Some(&mut model), 1, 40);
    model.http_secret = Some(vec![7]);
    model.node_ids_used.insert(1);
    // Format 3 had no review queue; a migrated state starts with an empty one.
    model.gc_queue.clear();
    let legacy = dir.path().join("snapshot.bin");
    let meta = crate::types::typ::SnapshotMeta { last_log_id: model.last_applied, last_membership: model.last_membership.clone(), snapshot_id: "old".into() };
    std::fs::write(&legacy, postcard::to_stdvec(&StoredSnapshot { meta, data: model.encode().unwrap() }).unwrap()).unwrap();

    let disk = DiskState::open(&dir.path().join("state.redb"), Some(&legacy)).unwrap();
    for q in queries() {
        assert_eq!(disk.answer(&q).unwrap(), model.answer(&q), "{q:?}");
    }
    assert_eq!(disk.applied().0, model.last_applied);
    assert!(disk.node_id_used(1));
    assert!(!legacy.exists(), "the old file is set aside once migrated");
    drop(disk);
    // A second start finds format 4 and does not migrate again.
    let disk = DiskState::open(&dir.path().join("state.redb"), Some(&legacy)).unwrap();
    assert_eq!(disk.applied().0, model.last_applied);
}

/// A backup's file and the SHA-256 it is announced with agree (the hash is taken on the way
/// out, not by reading the file again).
#[test]
fn an_exported_file_is_announced_with_its_own_sha256() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let disk = open(&dir);
    disk.apply_entries((1..=50).map(|i| entry(i, command(i), i * 1000)).collect()).unwrap();
    let (path, head, len, sha) = disk.export_file(dir.path(), "backup-1.tmp").unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len() as u64, len);
    assert_eq!(sha, hex::encode(sha2::Sha256::digest(&bytes)));
    assert_eq!(head.last_applied.map(|l| l.index), Some(50));
}

/// Every item the generator can name.
fn all_gc_items() -> Vec<GcItem> {
    let mut out = Vec::new();
    for r in 0..3u8 {
        for d in 10u8..14 {
            out.push(GcItem::Manifest { repo: repo(r), digest: digest(d) });
        }
        for d in 0u8..6 {
            out.push(GcItem::Link { repo: repo(r), digest: digest(d) });
        }
    }
    out.extend((0u8..6).chain(10..14).map(|d| GcItem::Content { digest: digest(d) }));
    out
}

/// Makes the database at `path` what a build of format 4 left: the garbage-collection tables
/// empty (no queue, no indexes), format 4 in the meta table.
fn make_format_4(path: &std::path::Path) {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    for def in [tables::CONTENT_REFS, tables::MANIFEST_PARENTS, tables::GC_QUEUE, tables::GC_DUE, tables::GC_DELETING] {
        txn.delete_table(def).unwrap();
        txn.open_table(def).unwrap();
    }
    txn.open_table(tables::META).unwrap().insert(META_FORMAT, postcard::to_stdvec(&4u32).unwrap().as_slice()).unwrap();
    txn.commit().unwrap();
}

/// What a node of format 4 sends as a snapshot of the database at `path`.
fn format_4_stream(path: &std::path::Path) -> Vec<u8> {
    let db = Database::create(path).unwrap();
    let small = load_small(&db).unwrap();
    let raw = DiskState { db, dir: path.parent().unwrap().to_path_buf(), small: RwLock::new(small), undurable: Mutex::new((0, 0)), cache: cache::HotCache::new(10, 1000) };
    let mut stream = Vec::new();
    raw.export(&mut stream).unwrap();
    stream
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// A state of format 4 (opened, or received as a snapshot stream from an older node) gets
    /// the indexes garbage collection decides with: once every item is offered to the queue,
    /// it answers like the model that had them all along.
    #[test]
    fn a_state_of_format_4_gets_its_indexes(cmds in proptest::collection::vec(arb_command(), 0..60)) {
        let cmds: Vec<Command> = cmds.into_iter().filter(|c| c.since() < 4).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let mut model = RegistryState::default();
        {
            let disk = open(&dir);
            let mut entries = Vec::new();
            for (i, c) in cmds.iter().enumerate() {
                let e = entry(i as u64 + 1, c.clone(), i as u64 * 1000);
                model.last_applied = Some(e.log_id);
                model.apply(&Request { command: c.clone(), at_ms: i as u64 * 1000 });
                entries.push(e);
            }
            disk.apply_entries(entries).unwrap();
        }
        make_format_4(&path);
        let stream = format_4_stream(&path);
        model.gc_queue.clear();
        let n = cmds.len() as u64 + 1;
        let enqueue = entry(n, Command::GcEnqueue(all_gc_items()), 5_000_000);
        model.last_applied = Some(enqueue.log_id);
        model.apply(&Request { command: Command::GcEnqueue(all_gc_items()), at_ms: 5_000_000 });

        // Opened by this build.
        let disk = open(&dir);
        disk.apply_entries(vec![enqueue.clone()]).unwrap();
        assert_same(&disk, &model)?;

        // Received from a node of format 4.
        let other = tempfile::tempdir().unwrap();
        let copy = open(&other);
        copy.import(stream.as_slice(), |_| {}).unwrap();
        copy.apply_entries(vec![enqueue]).unwrap();
        assert_same(&copy, &model)?;
    }
}

/// A database of this format written by a build that had fewer tables (the events table came
/// within format 5) gets the missing ones on open, so reads find them before any write.
#[test]
fn a_table_added_within_the_format_exists_after_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(&dir));
    {
        let db = redb::Database::create(dir.path().join("state.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(txn.delete_table(tables::EVENTS).unwrap());
        txn.commit().unwrap();
    }
    let disk = open(&dir);
    assert_eq!(disk.answer(&Query::NotifyPending { endpoint: "e".into(), n: 10 }).unwrap(), berth_proto::Answer::Events(vec![]));
    assert!(disk.events_after(0, 10).unwrap().is_empty());
}

/// Sites: new content is missing at every site until it says it holds it; a backfill walks
/// everything in digest order; garbage collection's deletion forgets the content everywhere;
/// a snapshot carries all of it.
#[test]
fn sites_track_what_each_holds_and_lacks() {
    use berth_proto::geo::{GeoChange, Placement};
    use berth_proto::{Answer, Outcome};
    let dir = tempfile::tempdir().unwrap();
    let disk = open(&dir);
    let mut index = 0;
    let mut run = |disk: &DiskState, c: Command| {
        index += 1;
        disk.apply_entries(vec![entry(index, c, 1000 + index)]).unwrap().remove(0)
    };
    let join = |site: &str, node_id| Command::Geo(GeoChange::Join { site: site.into(), node_id, grpc_addr: format!("n{node_id}:5050") });
    let placed = |site: &str, ds: &[u8], through: Option<String>| Command::Geo(GeoChange::Placed {
        site: site.into(),
        digests: ds.iter().map(|d| digest(*d)).collect(),
        backfill_through: through,
    });
    let status = |disk: &DiskState| match disk.answer(&Query::GeoStatus).unwrap() {
        Answer::Geo(g) => g,
        other => panic!("{other:?}"),
    };
    let missing = |disk: &DiskState, site: &str| match disk.answer(&Query::GeoMissing { site: site.into(), after: None, n: 100 }).unwrap() {
        Answer::Placements(p) => p,
        other => panic!("{other:?}"),
    };

    // Content from before any site is tracked by the backfill only.
    assert_eq!(run(&disk, Command::LinkBlob { repo: repo(0), digest: digest(0), size: 3 }), Outcome::Done);
    assert_eq!(run(&disk, join("a", 1)), Outcome::Done);
    assert_eq!(run(&disk, join("a", 1)), Outcome::Unchanged);
    assert_eq!(run(&disk, join("b", 2)), Outcome::Done);
    assert!(matches!(run(&disk, join("B!", 3)), Outcome::Conflict { .. }));
    assert_eq!(run(&disk, join("b", 1)), Outcome::Done, "a node moves between sites");
    assert_eq!(run(&disk, join("a", 1)), Outcome::Done);
    assert!(missing(&disk, "a").is_empty());

    // New content is missing at both sites, with blob sizes.
    run(&disk, Command::LinkBlob { repo: repo(0), digest: digest(1), size: 5 });
    run(&disk, Command::PutStoredManifest { repo: repo(0), digest: digest(10), manifest: ManifestRecord { body: vec![], ..manifest(10, vec![1], vec![], None) }, tag: None });
    // A second link of the same content is not new.
    run(&disk, Command::LinkBlob { repo: repo(2), digest: digest(1), size: 5 });
    let g = status(&disk);
    assert_eq!((g.sites["a"].missing, g.sites["a"].missing_bytes, g.sites["b"].missing), (2, 5, 2));
    assert_eq!(g.sites["b"].nodes.keys().copied().collect::<Vec<_>>(), vec![2]);
    assert_eq!(g.site_of(1), Some("a"));

    // Site a holds both; b still lacks them and can fetch them from a.
    assert_eq!(run(&disk, placed("a", &[1, 10], None)), Outcome::Swept(vec![true, true]));
    assert_eq!(run(&disk, placed("a", &[1], None)), Outcome::Swept(vec![false]), "once");
    assert_eq!(run(&disk, placed("c", &[1], None)), Outcome::NotFound);
    assert!(missing(&disk, "a").is_empty());
    let mut want = vec![
        Placement { digest: digest(1), sites: vec!["a".into()], size: Some(5), queued_ms: 1008 },
        Placement { digest: digest(10), sites: vec!["a".into()], size: None, queued_ms: 1009 },
    ];
    want.sort_by_key(|p| p.digest.to_string());
    assert_eq!(missing(&disk, "b"), want);
    let g = status(&disk);
    assert_eq!((g.sites["a"].missing, g.sites["a"].held, g.sites["a"].last_placed_ms > 0), (0, 2, true));

    // A site that turns out not to hold something lacks it again.
    let lost = Command::Geo(GeoChange::Lost { site: "a".into(), digests: vec![digest(1), digest(99)] });
    assert_eq!(run(&disk, lost), Outcome::Swept(vec![true, false]), "unknown content is not queued");
    assert_eq!(missing(&disk, "a").iter().map(|p| p.digest.clone()).collect::<Vec<_>>(), vec![digest(1)]);
    assert_eq!((status(&disk).sites["a"].held, status(&disk).sites["a"].missing), (1, 1));
    assert_eq!(run(&disk, placed("a", &[1], None)), Outcome::Swept(vec![true]));

    // The backfill walks all content in digest order, a page at a time.
    let content = |after: Option<String>, n| match disk.answer(&Query::GeoContent { after, n }).unwrap() {
        Answer::Placements(p) => p,
        other => panic!("{other:?}"),
    };
    let all = content(None, 10);
    let mut digests: Vec<String> = [0, 1, 10].iter().map(|d| digest(*d).to_string()).collect();
    digests.sort();
    assert_eq!(all.iter().map(|p| p.digest.to_string()).collect::<Vec<_>>(), digests);
    assert_eq!(all.iter().find(|p| p.digest == digest(0)).unwrap().size, Some(3));
    let first = content(None, 1);
    assert_eq!(content(Some(first[0].digest.to_string()), 10).len(), 2);
    assert_eq!(run(&disk, placed("b", &[0], Some(first[0].digest.to_string()))), Outcome::Swept(vec![true]));
    run(&disk, placed("b", &[], Some(berth_proto::geo::BACKFILL_DONE.into())));
    run(&disk, placed("b", &[], Some(digests[0].clone())));
    assert!(status(&disk).sites["b"].backfilled(), "the walk only moves forward");

    // What garbage collection deletes is forgotten everywhere.
    run(&disk, Command::UnlinkBlob { repo: repo(0), digest: digest(0) });
    assert_eq!(run(&disk, Command::GcSweep(vec![GcItem::Content { digest: digest(0) }])), Outcome::Swept(vec![true]));
    assert_eq!(run(&disk, placed("a", &[0], None)), Outcome::Swept(vec![false]), "being deleted");
    assert_eq!(run(&disk, Command::GcDeleted { digests: vec![digest(0)] }), Outcome::Swept(vec![true]));
    assert_eq!(disk.answer(&Query::GeoPlacement(digest(0))).unwrap(), Answer::Placement(None));
    assert_eq!(status(&disk).sites["b"].held, 0);
    // Pushed again, it is new content, missing where it is not recorded.
    run(&disk, Command::LinkBlob { repo: repo(0), digest: digest(0), size: 3 });
    assert_eq!(missing(&disk, "b").len(), 3);

    // A snapshot carries sites, placement and what is missing.
    let mut stream = Vec::new();
    disk.export(&mut stream).unwrap();
    let other = tempfile::tempdir().unwrap();
    let copy = open(&other);
    copy.import(stream.as_slice(), |_| {}).unwrap();
    assert_eq!(status(&copy), status(&disk));
    assert_eq!(missing(&copy, "b"), missing(&disk, "b"));
    // And so does a restart.
    drop(disk);
    let reopened = open(&dir);
    assert_eq!(missing(&reopened, "b").len(), 3);
    assert_eq!(status(&reopened), status(&copy));
}
