//! `deploy/local/cluster.sh` as a user runs it: 3 voters and 2 frontends behind nginx, with
//! skopeo and docker pushing and pulling through the load balancer (no session affinity, so
//! the requests of one push are spread over every node), content checked byte for byte.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_chaos::LocalCluster;
use berth_tests::{berth_bin, init_tracing, random_bytes, require_tool, run, tar_with_file, write_oci_layout};

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().to_string(), std::fs::read(&p).unwrap()))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_docker_through_the_load_balancer() {
    init_tracing();
    if !require_tool("nginx") || !require_tool("skopeo") || !require_tool("docker") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("deploy/local/cluster.sh");
    let cluster = LocalCluster::new(&script, &dir.path().join("cluster"), Some(&berth_bin()));
    cluster.up(3, 2).unwrap();
    let _down = cluster.down_on_drop();

    let nodes = cluster.nodes().unwrap();
    assert_eq!(nodes.iter().filter(|n| n.role == "voter").count(), 3);
    assert_eq!(nodes.iter().filter(|n| n.role == "frontend").count(), 2);
    let status = cluster.run(&["status"]).unwrap();
    assert!(cluster.leader().is_some(), "{status}");
    assert_eq!(status.matches(" up").count(), 5, "{status}");
    let lb = cluster.lb().unwrap();
    let host = lb.trim_start_matches("http://").to_string();

    tracing::info!("skopeo: an OCI image in through the load balancer and back out");
    let src = dir.path().join("src");
    write_oci_layout(&src, "v1", &[random_bytes(61, 900_000), random_bytes(62, 40_000), random_bytes(63, 3_000)]);
    let skopeo = |args: &[&str]| run(Command::new("skopeo").args(args));
    skopeo(&["copy", "--preserve-digests", "--dest-tls-verify=false", &format!("oci:{}:v1", src.display()), &format!("docker://{host}/lb/oci:v1")]);
    let back = dir.path().join("back");
    skopeo(&["copy", "--preserve-digests", "--src-tls-verify=false", &format!("docker://{host}/lb/oci:v1"), &format!("oci:{}:v1", back.display())]);
    assert_eq!(files(&src.join("blobs/sha256")), files(&back.join("blobs/sha256")));

    tracing::info!("a node dies; pulls through the load balancer keep working");
    let follower = nodes.iter().find(|n| n.role == "voter" && Some(n.id) != cluster.leader()).unwrap().id;
    cluster.kill(follower).unwrap();
    let again = dir.path().join("again");
    skopeo(&["copy", "--preserve-digests", "--src-tls-verify=false", &format!("docker://{host}/lb/oci:v1"), &format!("oci:{}:v1", again.display())]);
    assert_eq!(files(&src.join("blobs/sha256")), files(&again.join("blobs/sha256")));
    cluster.start(follower).unwrap();

    tracing::info!("docker: push, rmi, pull through the load balancer; same image id");
    let rootfs = dir.path().join("rootfs.tar");
    std::fs::write(&rootfs, tar_with_file("payload.bin", &random_bytes(64, 600_000))).unwrap();
    let local = format!("berth-lb-local:{}", std::process::id());
    let remote = format!("{host}/lb/docker:1");
    run(Command::new("docker").args(["import"]).arg(&rootfs).arg(&local));
    let id = run(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", &local]));
    run(Command::new("docker").args(["tag", &local, &remote]));
    run(Command::new("docker").args(["push", &remote]));
    run(Command::new("docker").args(["rmi", &local, &remote]));
    run(Command::new("docker").args(["pull", &remote]));
    let pulled = run(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", &remote]));
    run(Command::new("docker").args(["rmi", &remote]));
    assert_eq!(id.trim(), pulled.trim());
}
