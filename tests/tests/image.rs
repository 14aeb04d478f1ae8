//! The container image `deploy/image/build.sh` makes from this build's binary, pulling
//! nothing: it runs as an unprivileged user, reports healthy through its own health check,
//! and docker pushes to it and pulls from it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::{berth_bin, docker_push_pull, init_tracing, require_tool, run};

/// Removes the container and the image however the test ends.
struct Cleanup {
    container: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.container]).output();
        let _ = Command::new("docker").args(["rmi", "-f", &self.image]).output();
    }
}

#[test]
fn the_image_runs_unprivileged_reports_healthy_and_serves_docker() {
    init_tracing();
    if !require_tool("docker") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let image = format!("berth-image-test:{}", std::process::id());
    let built = run(Command::new(root.join("deploy/image/build.sh")).arg(berth_bin()).arg(&image));
    assert_eq!(built.trim(), image);
    let container = run(Command::new("docker").args(["run", "-d", "-p", "127.0.0.1::5000", "--health-interval=1s", &image])).trim().to_string();
    let _cleanup = Cleanup { container: container.clone(), image: image.clone() };

    tracing::info!("the health check (berth probe on /debug/ready) says healthy");
    let inspect = |format: &str| run(Command::new("docker").args(["inspect", "--format", format, &container])).trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while inspect("{{.State.Health.Status}}") != "healthy" {
        assert!(Instant::now() < deadline, "not healthy: {}", run(Command::new("docker").args(["logs", &container])));
        std::thread::sleep(Duration::from_millis(250));
    }

    tracing::info!("it runs as uid 65532, not root");
    let pid = inspect("{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap().split_whitespace().next().unwrap().to_string();
    assert_eq!(uid, "65532");

    tracing::info!("docker pushes to it and pulls from it");
    let port = run(Command::new("docker").args(["port", &container, "5000"]));
    let host = port.lines().next().unwrap().trim().to_string();
    let work = tempfile::tempdir().unwrap();
    let (pushed, pulled) = docker_push_pull(&work.path().join("docker-config"), work.path(), 91, &format!("{host}/image/test:1"));
    assert_eq!(pushed, pulled);
}
