//! Harness for Berth's integration tests: starts real `berth` processes on ports chosen at
//! run time, a minimal registry client for the raw protocol, image fixtures, and checks for
//! the external tools (skopeo, docker, podman) the real-client tests drive.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub mod gitlab;
pub mod ports;
pub mod suite;
pub mod tokens;

use berth_proto::Digest;
use reqwest::StatusCode;

/// Path of the `berth` binary of the current build (`BERTH_BIN` overrides); a binary older
/// than the sources fails the test instead of being tested.
pub fn berth_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| berth_chaos::binary::current_berth(Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root")))
        .clone()
}

/// The cluster token file every node and CLI call of this test process uses (made once, mode
/// 0600): the cluster plane refuses calls without it.
pub fn cluster_token_file() -> &'static Path {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = std::env::temp_dir().join(format!("berth-test-cluster-token-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).expect("token file");
        let token: String = rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect();
        f.write_all(token.as_bytes()).unwrap();
        path
    })
}

/// `berth` from the current build, with this process's cluster token.
pub fn berth_command() -> Command {
    let mut c = Command::new(berth_bin());
    c.env("REGISTRY_BERTH_CLUSTERTOKENFILE", cluster_token_file());
    c
}

/// Sets up tracing for a test (once).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("info").try_init();
}

/// True if `tool` is on PATH. In CI (`CI=true`) a missing tool fails the test instead of
/// skipping it, so a green CI never hides a test that did not run.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{tool} is required in CI but is not installed");
        }
        eprintln!("SKIP: {tool} is not installed");
    }
    found
}

/// A running `berth serve` process.
pub struct Berth {
    child: Option<Child>,
    /// Data directory (kept across restarts).
    pub data_dir: PathBuf,
    /// Config file, if any.
    pub config: Option<PathBuf>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Debug listener URL if configured.
    pub debug_url: Option<String>,
    /// Node-to-node gRPC address.
    pub grpc_addr: String,
    /// Where the process's stderr goes.
    pub log: PathBuf,
    /// The network namespace it runs in (None: the test's own, on loopback) and its address.
    place: Option<(String, String)>,
}

impl Berth {
    /// Starts a node with its data in `data_dir`, on a free loopback port.
    pub fn start(data_dir: &Path, config: Option<&Path>, env: &[(&str, &str)]) -> Berth {
        Berth::start_at(None, data_dir, config, env)
    }

    /// Starts a node inside network namespace `ns`, listening on address `ip` (see
    /// `berth_chaos::TestNet`).
    pub fn start_in(ns: &str, ip: &str, data_dir: &Path, env: &[(&str, &str)]) -> Berth {
        Berth::start_at(Some((ns.to_string(), ip.to_string())), data_dir, None, env)
    }

    fn start_at(place: Option<(String, String)>, data_dir: &Path, config: Option<&Path>, env: &[(&str, &str)]) -> Berth {
        let mut b = Berth {
            child: None,
            data_dir: data_dir.to_path_buf(),
            config: config.map(Path::to_path_buf),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            url: String::new(),
            addr: String::new(),
            debug_url: None,
            grpc_addr: String::new(),
            log: data_dir.with_extension("log"),
            place,
        };
        b.spawn(None);
        b
    }

    /// Starts the process; `addr` pins the port (used for restarts so URLs stay valid).
    fn spawn(&mut self, addr: Option<&str>) {
        // A first start on loopback picks its ports below the ephemeral range (see `ports`);
        // in the rare case another picker took one first, it picks again.
        for _ in 0..3 {
            if self.spawn_once(addr) {
                return;
            }
            self.grpc_addr.clear();
        }
        panic!("berth found its ports taken three times; log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
    }

    /// One start; false if a first start on loopback found a picked port taken.
    fn spawn_once(&mut self, addr: Option<&str>) -> bool {
        let mut cmd = match &self.place {
            None => Command::new(berth_bin()),
            Some((ns, _)) => berth_chaos::net::command_in(ns, berth_bin()),
        };
        cmd.env("REGISTRY_BERTH_CLUSTERTOKENFILE", cluster_token_file());
        let any_port = || match &self.place {
            None => ports::free_addr(),
            Some((_, ip)) => format!("{ip}:0"),
        };
        cmd.arg("serve").arg("--data-dir").arg(&self.data_dir);
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.env("REGISTRY_HTTP_ADDR", addr.map(str::to_string).unwrap_or_else(any_port));
        // Every node gets its own gRPC port; a restart keeps it, since peers know it.
        let grpc = if self.grpc_addr.is_empty() { any_port() } else { self.grpc_addr.clone() };
        cmd.env("REGISTRY_BERTH_GRPCADDR", grpc);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn berth");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log_path = self.log.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).unwrap();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if let Some(u) = line.strip_prefix("berth: listening on ") {
                    let _ = tx.send(("http", u.to_string()));
                }
                if let Some(u) = line.strip_prefix("berth: debug listening on ") {
                    let _ = tx.send(("debug", u.to_string()));
                }
                if let Some(u) = line.strip_prefix("berth: grpc listening on ") {
                    let _ = tx.send(("grpc", u.to_string()));
                }
            }
        });
        let want_debug = self.env.iter().any(|(k, _)| k == "REGISTRY_HTTP_DEBUG_ADDR");
        let mut url = None;
        while url.is_none() || (want_debug && self.debug_url.is_none()) {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(("http", u)) => url = Some(u),
                Ok(("grpc", u)) => self.grpc_addr = u,
                Ok((_, u)) => self.debug_url = Some(u),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                    if addr.is_none() && self.place.is_none() && log.contains("Address already in use") {
                        return false;
                    }
                    panic!("berth did not start; log:\n{log}");
                }
            }
        }
        let url = url.unwrap();
        self.addr = url.trim_start_matches("http://").trim_start_matches("https://").to_string();
        self.url = url;
        self.child = Some(child);
        true
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as an orchestrator stops a node; waits for the exit and says how long it took.
    pub fn terminate(&mut self) -> Duration {
        let Some(mut c) = self.child.take() else { return Duration::ZERO };
        let started = std::time::Instant::now();
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let _ = c.wait();
        started.elapsed()
    }

    /// Restarts on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill9();
        let addr = self.addr.clone();
        for attempt in 0..50 {
            // The ports may linger briefly after the kill.
            // (Another namespace's ports cannot be probed from here.)
            let free = |a: &str| self.place.is_some() || std::net::TcpListener::bind(a).is_ok();
            if (free(&addr) && free(&self.grpc_addr)) || attempt == 49 {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.spawn(Some(&addr));
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Peak resident memory in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `n` voters that share one blob directory under `dir` (one site): node 1 bootstraps,
/// the others join as learners and are then promoted. `env` is added to every node's.
pub fn voter_cluster(dir: &Path, n: usize, env: &[(&str, &str)]) -> Vec<Berth> {
    voter_cluster_on(None, dir, n, env)
}

/// Like `voter_cluster`, with node i on host i of `net` when one is given (its gRPC then
/// leaves loopback, so `env` must allow plaintext or configure TLS).
pub fn voter_cluster_on(net: Option<&berth_chaos::TestNet>, dir: &Path, n: usize, env: &[(&str, &str)]) -> Vec<Berth> {
    voter_cluster_with(net, dir, n, None, env)
}

/// Like `voter_cluster_on`, every node also reading the configuration file `config`.
pub fn voter_cluster_with(net: Option<&berth_chaos::TestNet>, dir: &Path, n: usize, config: Option<&Path>, env: &[(&str, &str)]) -> Vec<Berth> {
    let shared = dir.join("blobs").to_str().unwrap().to_string();
    let nodes: Vec<Berth> = (1..=n)
        .map(|id| {
            let id_s = id.to_string();
            let mut e = vec![
                ("REGISTRY_BERTH_NODEID", id_s.as_str()),
                ("REGISTRY_BERTH_BOOTSTRAP", if id == 1 { "true" } else { "false" }),
                ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", shared.as_str()),
            ];
            e.extend_from_slice(env);
            let data = dir.join(format!("node{id}"));
            match net {
                None => Berth::start(&data, config, &e),
                Some(net) => {
                    assert!(config.is_none(), "a configuration file is not passed into a test network");
                    Berth::start_in(&net.namespace(id), &net.addr(id), &data, &e)
                }
            }
        })
        .collect();
    for (i, node) in nodes.iter().enumerate().skip(1) {
        let id = (i + 1).to_string();
        berth_cluster_env(&["add-learner", "--node", &nodes[0].grpc_addr, "--id", &id, "--addr", &node.grpc_addr], env);
    }
    if n > 1 {
        let ids: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
        berth_cluster_env(&["change-membership", "--node", &nodes[0].grpc_addr, "--voters", &ids.join(",")], env);
    }
    nodes
}

/// A throwaway certificate authority made with openssl, issuing certificates for 127.0.0.1.
pub struct TestCa {
    dir: PathBuf,
    /// The CA certificate (PEM).
    pub cert: PathBuf,
    key: PathBuf,
}

impl TestCa {
    /// Creates a CA named `name` under `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let (cert, key) = (dir.join(format!("{name}-ca.pem")), dir.join(format!("{name}-ca.key")));
        let args = format!(
            "req -x509 -days 1 -subj /CN={name} -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {} -out {}",
            key.display(),
            cert.display()
        );
        run(Command::new("openssl").args(args.split_whitespace()));
        TestCa { dir: dir.to_path_buf(), cert, key }
    }

    /// Issues a certificate for 127.0.0.1 and localhost, good for servers and clients; returns
    /// (certificate, key) paths.
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key, csr, ext) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
            self.dir.join(format!("{name}.csr")),
            self.dir.join(format!("{name}.ext")),
        );
        let args = format!(
            "req -subj /CN={name} -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {} -out {}",
            key.display(),
            csr.display()
        );
        run(Command::new("openssl").args(args.split_whitespace()));
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        let args = format!(
            "x509 -req -days 1 -in {} -CA {} -CAkey {} -CAcreateserial -extfile {} -out {}",
            csr.display(),
            self.cert.display(),
            self.key.display(),
            ext.display(),
            cert.display()
        );
        run(Command::new("openssl").args(args.split_whitespace()));
        (cert, key)
    }
}

/// Starts a frontend for `voters`, sharing their blob directory under `dir`.
pub fn frontend(dir: &Path, name: &str, voters: &[Berth], env: &[(&str, &str)]) -> Berth {
    let shared = dir.join("blobs").to_str().unwrap().to_string();
    let peers: Vec<&str> = voters.iter().map(|v| v.grpc_addr.as_str()).collect();
    let peers = peers.join(",");
    let mut e = vec![
        ("REGISTRY_BERTH_ROLE", "frontend"),
        ("REGISTRY_BERTH_PEERS", peers.as_str()),
        ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", shared.as_str()),
    ];
    e.extend_from_slice(env);
    Berth::start(&dir.join(name), None, &e)
}

/// `leader N` as `berth cluster status` at `grpc` reports it; None while there is none.
pub fn cluster_leader(grpc: &str) -> Option<u64> {
    let out = berth_command().args(["cluster", "status", "--node", grpc]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("leader ")).and_then(|n| n.trim().parse().ok()).filter(|n| *n != 0)
}

/// Waits (up to 10 s) until `grpc` reports a leader other than `not`.
pub async fn wait_for_leader(grpc: &str, not: Option<u64>) -> u64 {
    for _ in 0..100 {
        if let Some(l) = cluster_leader(grpc) {
            if Some(l) != not {
                return l;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no new leader seen by {grpc}");
}

/// Waits (up to 10 s) until `grpc` reports `leader` as the leader; returns the last leader it
/// reported, for the caller to assert on.
pub async fn wait_until_leader_is(grpc: &str, leader: u64) -> Option<u64> {
    let mut seen = None;
    for _ in 0..100 {
        seen = cluster_leader(grpc);
        if seen == Some(leader) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

/// Runs `berth cluster ARGS...` and returns its standard output.
pub fn berth_cluster(args: &[&str]) -> String {
    berth_cluster_env(args, &[])
}

/// Runs `berth cluster ARGS...` with extra environment (`REGISTRY_BERTH_TLS_*`, ...).
pub fn berth_cluster_env(args: &[&str], env: &[(&str, &str)]) -> String {
    run(berth_command().arg("cluster").args(args).envs(env.iter().copied()))
}

/// A minimal client for the raw distribution protocol.
#[derive(Clone)]
pub struct Registry {
    /// Base URL.
    pub url: String,
    /// HTTP client.
    pub http: reqwest::Client,
}

/// Shorthand for test results.
pub type R<T> = anyhow::Result<T>;

impl Registry {
    /// A client for `url`. With `BENCH_AUTHORIZATION` set (benchmarks against a registry with
    /// auth), every request carries it as its `Authorization` header.
    pub fn new(url: &str) -> Self {
        let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(v) = std::env::var("BENCH_AUTHORIZATION").ok().and_then(|a| reqwest::header::HeaderValue::from_str(&a).ok()) {
            b = b.default_headers([(reqwest::header::AUTHORIZATION, v)].into_iter().collect());
        }
        Registry { url: url.to_string(), http: b.build().unwrap() }
    }

    /// Absolute URL for a path or a Location header.
    pub fn abs(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.url)
        }
    }

    /// Monolithic upload; returns the digest. Fails unless the registry answered 201.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> R<Digest> {
        let d = Digest::sha256_of(bytes);
        let r = self
            .http
            .post(self.abs(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
            .header("Content-Type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await?;
        anyhow::ensure!(r.status() == StatusCode::CREATED, "push_blob: {} {}", r.status(), r.text().await?);
        Ok(d)
    }

    /// Pushes an image manifest referencing `config` and `layers`; returns its digest.
    pub async fn push_manifest(&self, repo: &str, reference: &str, body: &[u8], media_type: &str) -> R<Digest> {
        let r = self
            .http
            .put(self.abs(&format!("/v2/{repo}/manifests/{reference}")))
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await?;
        anyhow::ensure!(r.status() == StatusCode::CREATED, "push_manifest: {} {}", r.status(), r.text().await?);
        Ok(Digest::parse(r.headers()["docker-content-digest"].to_str()?)?)
    }

    /// Fetches a blob's bytes.
    pub async fn get_blob(&self, repo: &str, d: &Digest) -> R<Vec<u8>> {
        let r = self.http.get(self.abs(&format!("/v2/{repo}/blobs/{d}"))).send().await?;
        anyhow::ensure!(r.status() == StatusCode::OK, "get_blob {d}: {}", r.status());
        Ok(r.bytes().await?.to_vec())
    }

    /// Fetches a manifest's bytes.
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> R<(StatusCode, Vec<u8>)> {
        let r = self
            .http
            .get(self.abs(&format!("/v2/{repo}/manifests/{reference}")))
            .header("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json")
            .send()
            .await?;
        Ok((r.status(), r.bytes().await?.to_vec()))
    }
}

/// Pushes a small image (config + one 5 kB layer + manifest, all from `seed`) as `repo:tag`
/// and returns the manifest bytes; panics unless every step is acknowledged.
pub async fn push_image(reg: &Registry, repo: &str, tag: &str, seed: u64) -> Vec<u8> {
    try_push_image(reg, repo, tag, seed).await.unwrap()
}

/// [`push_image`] that reports a refusal instead of failing.
pub async fn try_push_image(reg: &Registry, repo: &str, tag: &str, seed: u64) -> R<Vec<u8>> {
    let config = random_bytes(seed, 200);
    let layer = random_bytes(seed + 1, 5000);
    let cd = reg.push_blob(repo, &config).await?;
    let ld = reg.push_blob(repo, &layer).await?;
    let manifest = image_manifest((&cd, config.len()), &[(&ld, layer.len())]);
    reg.push_manifest(repo, tag, &manifest, OCI_MANIFEST).await?;
    Ok(manifest)
}

/// OCI media types used by fixtures.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// An OCI image manifest body for the given config and layers.
pub fn image_manifest(config: (&Digest, usize), layers: &[(&Digest, usize)]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0.to_string(), "size": config.1},
        "layers": layers.iter().map(|(d, s)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": s})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// Deterministic pseudo-random bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// A tar archive holding one file, usable as an uncompressed layer or a `docker import` rootfs.
pub fn tar_with_file(name: &str, content: &[u8]) -> Vec<u8> {
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    header[100..108].copy_from_slice(b"0000644\0");
    header[108..116].copy_from_slice(b"0000000\0");
    header[116..124].copy_from_slice(b"0000000\0");
    header[124..136].copy_from_slice(format!("{:011o}\0", content.len()).as_bytes());
    header[136..148].copy_from_slice(b"00000000000\0");
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|b| *b as u32).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Writes an OCI image layout at `dir` with one image tagged `tag`; returns the manifest digest.
pub fn write_oci_layout(dir: &Path, tag: &str, layer_contents: &[Vec<u8>]) -> Digest {
    write_oci_layout_created(dir, tag, layer_contents, None)
}

/// [`write_oci_layout`] with the image config's `created` time (RFC 3339) set.
pub fn write_oci_layout_created(dir: &Path, tag: &str, layer_contents: &[Vec<u8>], created: Option<&str>) -> Digest {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| {
        let d = Digest::sha256_of(b);
        std::fs::write(blobs.join(d.hex()), b).unwrap();
        (d, b.len())
    };
    let layers: Vec<(Digest, usize)> =
        layer_contents.iter().enumerate().map(|(i, c)| put(&tar_with_file(&format!("file{i}.bin"), c))).collect();
    let diff_ids: Vec<String> = layers.iter().map(|(d, _)| d.to_string()).collect();
    let mut cfg = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    if let Some(c) = created {
        cfg["created"] = serde_json::json!(c);
    }
    let cfg = serde_json::to_vec(&cfg).unwrap();
    let (cd, cs) = put(&cfg);
    let man = image_manifest((&cd, cs), &layers.iter().map(|(d, s)| (d, *s)).collect::<Vec<_>>());
    let (md, ms) = put(&man);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": md.to_string(), "size": ms,
        "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    md
}

/// Runs a command, failing with its output if it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !out.status.success() {
        panic!("{cmd:?} failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// `docker login HOST -u USER --password-stdin` with its credentials kept in `config_dir`
/// (`DOCKER_CONFIG`), so tests never touch the machine's docker login.
pub fn docker_login(config_dir: &Path, host: &str, user: &str, secret: &str) {
    use std::io::Write;
    std::fs::create_dir_all(config_dir).unwrap();
    let mut login = Command::new("docker")
        .env("DOCKER_CONFIG", config_dir)
        .args(["login", host, "-u", user, "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    login.stdin.take().unwrap().write_all(secret.as_bytes()).unwrap();
    let out = login.wait_with_output().unwrap();
    assert!(out.status.success(), "docker login: {}", String::from_utf8_lossy(&out.stderr));
}

/// docker imports a one-file image made from `seed`, pushes it as `remote`, removes it
/// locally and pulls it back, with the logins of `config_dir` (`DOCKER_CONFIG`); returns
/// the image id pushed and the one pulled.
pub fn docker_push_pull(config_dir: &Path, work: &Path, seed: u64, remote: &str) -> (String, String) {
    let rootfs = work.join(format!("rootfs-{seed}.tar"));
    std::fs::write(&rootfs, tar_with_file("payload.bin", &random_bytes(seed, 50_000))).unwrap();
    let local = format!("berth-test-local-{seed}:{}", std::process::id());
    let docker = |args: &[&str]| run(Command::new("docker").env("DOCKER_CONFIG", config_dir).args(args));
    docker(&["import", rootfs.to_str().unwrap(), &local]);
    let pushed = docker(&["image", "inspect", "-f", "{{.Id}}", &local]);
    docker(&["tag", &local, remote]);
    docker(&["push", remote]);
    docker(&["rmi", &local, remote]);
    docker(&["pull", remote]);
    let pulled = docker(&["image", "inspect", "-f", "{{.Id}}", remote]);
    docker(&["rmi", remote]);
    (pushed.trim().to_string(), pulled.trim().to_string())
}
