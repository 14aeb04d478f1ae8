//! `deploy/compose/docker-compose.yml` as a user runs it: images built here from this build
//! (nothing pulled), `docker-compose up`, three voters that form the cluster by themselves,
//! two frontends behind nginx, and docker pushing and pulling through nginx, also while a
//! voter is stopped and after it comes back.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::{berth_bin, docker_push_pull, init_tracing, require_tool, run};

struct Compose {
    file: PathBuf,
    project: String,
    env: Vec<(String, String)>,
    images: Vec<String>,
}

impl Compose {
    fn cmd(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.arg("-p").arg(&self.project).arg("-f").arg(&self.file);
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    fn run(&self, args: &[&str]) -> String {
        run(self.cmd().args(args))
    }

    /// Waits until every container of the project reports healthy (nginx has no check: running).
    fn wait_healthy(&self, deadline: Duration) {
        let until = Instant::now() + deadline;
        loop {
            let ids = self.run(&["ps", "-q"]);
            let states: Vec<String> = ids
                .lines()
                .map(|id| run(Command::new("docker").args(["inspect", "-f", "{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}", id])))
                .collect();
            let ready = states.len() == 6 && states.iter().all(|s| s.contains(" running ") && (s.trim().ends_with("healthy") && !s.contains("unhealthy") || s.trim().ends_with("none")));
            if ready {
                return;
            }
            if Instant::now() > until {
                let logs = self.cmd().args(["logs", "--tail", "30"]).output().unwrap();
                panic!("not healthy: {states:?}\n{}", String::from_utf8_lossy(&logs.stdout));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        let _ = self.cmd().args(["down", "-v", "--timeout", "5"]).output();
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

fn voters_in_status(c: &Compose, voter: &str) -> String {
    let out = c.cmd().args(["exec", "-T", voter, "berth", "cluster", "status", "--node", &format!("{voter}:5050")]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn compose_up_forms_the_cluster_and_docker_pushes_through_nginx() {
    init_tracing();
    if !require_tool("docker") || !require_tool("docker-compose") || !require_tool("nginx") {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let pid = std::process::id();
    let (berth_image, nginx_image) = (format!("berth-compose-test:{pid}"), format!("berth-nginx-compose-test:{pid}"));
    let net = 20 + pid % 200;
    let mut compose = Compose {
        file: root.join("deploy/compose/docker-compose.yml"),
        project: format!("berthtest{pid}"),
        env: vec![
            ("BERTH_CLUSTER_TOKEN".into(), format!("{:064x}", pid as u128 * 0x9e3779b97f4a7c15)),
            ("BERTH_IMAGE".into(), berth_image.clone()),
            ("BERTH_NGINX_IMAGE".into(), nginx_image.clone()),
            // Any free port on loopback.
            ("BERTH_LISTEN".into(), "127.0.0.1:".into()),
            ("BERTH_SUBNET".into(), format!("172.29.{net}.0/24")),
            ("BERTH_LB_IP".into(), format!("172.29.{net}.10")),
        ],
        images: vec![],
    };
    tracing::info!("build both images from this build");
    assert_eq!(run(Command::new(root.join("deploy/image/build.sh")).arg(berth_bin()).arg(&berth_image)).trim(), berth_image);
    compose.images.push(berth_image.clone());
    assert_eq!(run(Command::new(root.join("deploy/compose/nginx/build.sh")).arg(&nginx_image)).trim(), nginx_image);
    compose.images.push(nginx_image.clone());

    tracing::info!("docker-compose up: every node healthy, three voters");
    compose.run(&["up", "-d"]);
    compose.wait_healthy(Duration::from_secs(120));
    let status = voters_in_status(&compose, "voter-3");
    assert_eq!(status.matches(" voter ").count(), 3, "{status}");
    let lb = compose.run(&["port", "nginx", "8080"]).trim().to_string();
    assert!(lb.starts_with("127.0.0.1:"), "{lb}");

    tracing::info!("docker pushes and pulls through nginx");
    let tmp = tempfile::tempdir().unwrap();
    let docker_cfg = tmp.path().join("docker");
    std::fs::create_dir_all(&docker_cfg).unwrap();
    let (pushed, pulled) = docker_push_pull(&docker_cfg, tmp.path(), 71, &format!("{lb}/compose/app:1"));
    assert_eq!(pushed, pulled);

    tracing::info!("voter-1 (the founder) stops: pushes and pulls go on; it comes back a voter");
    compose.run(&["stop", "voter-1"]);
    let (pushed, pulled) = docker_push_pull(&docker_cfg, tmp.path(), 72, &format!("{lb}/compose/app:2"));
    assert_eq!(pushed, pulled);
    compose.run(&["start", "voter-1"]);
    compose.wait_healthy(Duration::from_secs(60));
    let status = voters_in_status(&compose, "voter-1");
    assert_eq!(status.matches(" voter ").count(), 3, "{status}");
    assert!(!status.contains("leader 0"), "{status}");

    tracing::info!("JSON logs: an access line per request, naming the client behind nginx (trusted proxy)");
    let logs = compose.cmd().args(["logs", "--no-color", "frontend-1", "frontend-2"]).output().unwrap();
    let logs = String::from_utf8_lossy(&logs.stdout);
    let lines: Vec<serde_json::Value> = logs.lines().filter_map(|l| l.split_once("| ")).filter_map(|(_, j)| serde_json::from_str(j).ok()).collect();
    let put = lines
        .iter()
        .find(|v| v["target"] == "access" && v["fields"]["method"] == "PUT" && v["fields"]["status"] == 201)
        .unwrap_or_else(|| panic!("no access line for a PUT:\n{logs}"));
    let client = put["fields"]["client"].as_str().unwrap();
    assert!(client.starts_with(&format!("172.29.{net}.")) && client != format!("172.29.{net}.10"), "{put}");
}
