//! Backup and restore as an operator does it: `berth cluster backup` from a running cluster
//! (through a follower), a copy of the blob store taken after it, the whole cluster lost,
//! `berth restore` into a new node that founds a new cluster, two new voters joining it, and
//! every image pushed before the backup pulled back from every node with skopeo. What was
//! pushed after the backup is not there (and says 404); a damaged backup and a restore into a
//! used data directory are refused; progress shows on a terminal and nowhere else.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::{berth_command, init_tracing, push_image, require_tool, run, voter_cluster, Berth, Registry};

fn copy_dir(from: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_lost_whole_comes_back_from_a_backup_and_a_blob_copy() {
    init_tracing();
    if !require_tool("skopeo") || !require_tool("script") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("old")).unwrap();
    std::fs::create_dir_all(dir.path().join("new")).unwrap();
    let old = voter_cluster(&dir.path().join("old"), 3, &[]);
    let reg = Registry::new(&old[0].url);
    let mut before = Vec::new();
    for i in 0..5u64 {
        before.push((format!("v{i}"), push_image(&reg, "backup/app", &format!("v{i}"), 700 + i).await));
    }

    tracing::info!("backup through a follower, with a progress bar on a terminal only");
    let file = dir.path().join("registry.backup");
    let out = run(berth_command().args(["cluster", "backup", "--node", &old[1].grpc_addr, "--out"]).arg(&file));
    assert!(out.contains("written to"), "{out}");
    let piped = berth_command().args(["cluster", "backup", "--node", &old[1].grpc_addr, "--out"]).arg(dir.path().join("again.backup")).output().unwrap();
    assert!(piped.status.success() && !String::from_utf8_lossy(&piped.stderr).contains("backup ["), "no bar when stderr is not a terminal");
    let cmd = format!(
        "{} cluster backup --node {} --out {}",
        berth_tests::berth_bin().display(),
        old[1].grpc_addr,
        dir.path().join("tty.backup").display()
    );
    let tty = Command::new("script").args(["-qec", &cmd, "/dev/null"]).env("REGISTRY_BERTH_CLUSTERTOKENFILE", berth_tests::cluster_token_file()).output().unwrap();
    let shown = String::from_utf8_lossy(&tty.stdout);
    assert!(shown.contains("backup [##############################] 100%"), "{shown}");

    tracing::info!("pushed after the backup: not in the restore");
    let after = push_image(&reg, "backup/app", "late", 799).await;
    assert!(!after.is_empty());
    // Blobs are copied after the metadata backup: everything it names is in the copy.
    let blobs = dir.path().join("blobs-copy");
    copy_dir(&dir.path().join("old/blobs"), &blobs);
    drop(old);

    tracing::info!("a damaged backup and a used data directory are refused");
    let mut damaged = std::fs::read(&file).unwrap();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    std::fs::write(dir.path().join("damaged.backup"), &damaged).unwrap();
    let refused = berth_command().args(["restore", "--from"]).arg(dir.path().join("damaged.backup")).arg("--data-dir").arg(dir.path().join("x")).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("damaged"), "{}", String::from_utf8_lossy(&refused.stderr));
    let refused = berth_command().args(["restore", "--from"]).arg(&file).arg("--data-dir").arg(dir.path().join("old/node1")).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already holds Raft data"));

    tracing::info!("restore into a new node 1, which founds a new cluster; two new voters join it");
    let new = dir.path().join("new");
    let grpcs: Vec<String> = (0..3).map(|_| berth_tests::ports::free_addr()).collect();
    let join = grpcs.join(",");
    let blobs_s = blobs.to_str().unwrap().to_string();
    let env = |id: usize| -> Vec<(String, String)> {
        vec![
            ("REGISTRY_BERTH_NODEID".into(), id.to_string()),
            ("REGISTRY_BERTH_GRPCADDR".into(), grpcs[id - 1].clone()),
            ("REGISTRY_BERTH_JOIN".into(), join.clone()),
            ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY".into(), blobs_s.clone()),
        ]
    };
    let said = run(berth_command().args(["restore", "--from"]).arg(&file).arg("--data-dir").arg(new.join("node1")).envs(env(1)));
    assert!(said.contains("restored 1 repositories, 5 tags"), "{said}");
    let start = |id: usize| {
        let e = env(id);
        let e: Vec<(&str, &str)> = e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Berth::start(&new.join(format!("node{id}")), None, &e)
    };
    let nodes = vec![start(1), start(2), start(3)];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = run(berth_command().args(["cluster", "status", "--node", &nodes[0].grpc_addr]));
        if status.matches(" voter ").count() == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the new voters did not join:\n{status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    tracing::info!("every image from before the backup, from every node; the later one is gone");
    for node in &nodes {
        let reg = Registry::new(&node.url);
        for (tag, manifest) in &before {
            let (status, body) = reg.get_manifest("backup/app", tag).await.unwrap();
            assert_eq!((status.as_u16(), &body), (200, manifest), "{tag} at {}", node.url);
        }
        assert_eq!(reg.get_manifest("backup/app", "late").await.unwrap().0.as_u16(), 404);
        let work = tempfile::tempdir().unwrap();
        run(Command::new("skopeo").args(["copy", "--src-tls-verify=false"]).arg(format!("docker://{}/backup/app:v3", node.addr)).arg(format!("dir:{}", work.path().display())));
    }
    tracing::info!("the restored cluster takes new pushes");
    push_image(&Registry::new(&nodes[2].url), "backup/app", "new", 800).await;
}
