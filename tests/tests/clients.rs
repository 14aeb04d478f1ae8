//! Real clients against a real `berth`: skopeo, docker and podman push and pull images the
//! test builds itself (nothing is pulled from anywhere else).

use std::path::Path;
use std::process::Command;

use berth_tests::{init_tracing, random_bytes, require_tool, run, tar_with_file, write_oci_layout, Berth, Registry};

/// (file name, sha256 of its bytes) for every file in `dir`.
fn files(dir: &Path) -> Vec<(String, String)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().to_string(), berth_proto::Digest::sha256_of(&std::fs::read(&p).unwrap()).to_string()))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_oci_and_docker_images_byte_for_byte() {
    init_tracing();
    if !require_tool("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Berth::start(&dir.path().join("data"), None, &[]);
    let src = dir.path().join("src");
    write_oci_layout(&src, "v1", &[random_bytes(1, 300_000), random_bytes(2, 70_000)]);
    let skopeo = |args: &[&str]| run(Command::new("skopeo").args(args));
    let addr = &node.addr;

    tracing::info!("OCI image in and back out");
    skopeo(&["copy", "--preserve-digests", "--dest-tls-verify=false", &format!("oci:{}:v1", src.display()), &format!("docker://{addr}/clients/oci:v1")]);
    let back = dir.path().join("back");
    skopeo(&["copy", "--preserve-digests", "--src-tls-verify=false", &format!("docker://{addr}/clients/oci:v1"), &format!("oci:{}:v1", back.display())]);
    assert_eq!(files(&src.join("blobs/sha256")), files(&back.join("blobs/sha256")));

    tracing::info!("Docker v2s2 image in and back out");
    skopeo(&["copy", "--dest-tls-verify=false", "--format", "v2s2", &format!("oci:{}:v1", src.display()), &format!("docker://{addr}/clients/docker:v1")]);
    let raw = skopeo(&["inspect", "--tls-verify=false", "--raw", &format!("docker://{addr}/clients/docker:v1")]);
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(manifest["mediaType"], "application/vnd.docker.distribution.manifest.v2+json");
    let out = dir.path().join("dir");
    skopeo(&["copy", "--src-tls-verify=false", &format!("docker://{addr}/clients/docker:v1"), &format!("dir:{}", out.display())]);
    assert_eq!(std::fs::read_to_string(out.join("manifest.json")).unwrap().trim(), raw.trim());
    // Every layer pulled back is byte for byte what the registry acknowledged for its digest.
    for layer in manifest["layers"].as_array().unwrap() {
        let d = layer["digest"].as_str().unwrap();
        let bytes = std::fs::read(out.join(d.trim_start_matches("sha256:"))).unwrap();
        assert_eq!(berth_proto::Digest::sha256_of(&bytes).to_string(), d);
        assert_eq!(bytes.len() as u64, layer["size"].as_u64().unwrap());
    }

    tracing::info!("list tags, delete");
    skopeo(&["copy", "--dest-tls-verify=false", &format!("oci:{}:v1", src.display()), &format!("docker://{addr}/clients/oci:v2")]);
    let tags: serde_json::Value =
        serde_json::from_str(&skopeo(&["list-tags", "--tls-verify=false", &format!("docker://{addr}/clients/oci")])).unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1", "v2"]));
    skopeo(&["delete", "--tls-verify=false", &format!("docker://{addr}/clients/docker:v1")]);
    let reg = Registry::new(&node.url);
    assert_eq!(reg.get_manifest("clients/docker", "v1").await.unwrap().0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_push_rmi_pull_same_image_id() {
    init_tracing();
    if !require_tool("docker") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Berth::start(&dir.path().join("data"), None, &[]);
    let rootfs = dir.path().join("rootfs.tar");
    std::fs::write(&rootfs, tar_with_file("payload.bin", &random_bytes(5, 400_000))).unwrap();
    let local = format!("berth-test-local:{}", std::process::id());
    let remote = format!("{}/clients/docker-engine:1", node.addr);
    tracing::info!("docker import, tag, push");
    run(Command::new("docker").args(["import"]).arg(&rootfs).arg(&local));
    let id = run(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", &local]));
    run(Command::new("docker").args(["tag", &local, &remote]));
    run(Command::new("docker").args(["push", &remote]));
    tracing::info!("rmi, pull, compare");
    run(Command::new("docker").args(["rmi", &local, &remote]));
    run(Command::new("docker").args(["pull", &remote]));
    let pulled = run(Command::new("docker").args(["image", "inspect", "-f", "{{.Id}}", &remote]));
    run(Command::new("docker").args(["rmi", &remote]));
    assert_eq!(id.trim(), pulled.trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_push_and_pull() {
    init_tracing();
    if !require_tool("podman") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Berth::start(&dir.path().join("data"), None, &[]);
    let rootfs = dir.path().join("rootfs.tar");
    std::fs::write(&rootfs, tar_with_file("p.bin", &random_bytes(6, 100_000))).unwrap();
    let podman = |root: &str, args: &[&str]| {
        run(Command::new("podman")
            .arg("--storage-driver=vfs")
            .arg("--root")
            .arg(dir.path().join(root))
            .arg("--runroot")
            .arg(dir.path().join(format!("{root}-run")))
            .args(args))
    };
    let remote = format!("{}/clients/podman:1", node.addr);
    tracing::info!("podman import and push");
    podman("a", &["import", rootfs.to_str().unwrap(), "localhost/podman-test:1"]);
    podman("a", &["push", "--tls-verify=false", "localhost/podman-test:1", &remote]);
    tracing::info!("pull into a second store");
    podman("b", &["pull", "--tls-verify=false", &remote]);
    let pushed = podman("a", &["image", "inspect", "--format", "{{.ID}}", "localhost/podman-test:1"]);
    let pulled = podman("b", &["image", "inspect", "--format", "{{.ID}}", &remote]);
    assert_eq!(pushed.trim(), pulled.trim());
}
