//! A cluster run by `deploy/local/cluster.sh`: start it, find its leader, kill and restart
//! nodes, stop it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// A local cluster in one directory.
pub struct LocalCluster {
    script: PathBuf,
    /// The cluster's directory (`DIR` of cluster.sh).
    pub dir: PathBuf,
    berth_bin: Option<PathBuf>,
    env: Vec<(String, String)>,
}

/// One line of `DIR/nodes`.
#[derive(Debug, Clone)]
pub struct NodeLine {
    /// Node id.
    pub id: u64,
    /// `voter` or `frontend`.
    pub role: String,
    /// Process id.
    pub pid: u32,
    /// `127.0.0.1:PORT` of its HTTP listener.
    pub http: String,
    /// Its gRPC address, `-` for a frontend.
    pub grpc: String,
}

impl LocalCluster {
    /// A handle on the cluster in `dir`; `script` is cluster.sh, `berth_bin` the binary it runs
    /// (None: the script finds one itself).
    pub fn new(script: &Path, dir: &Path, berth_bin: Option<&Path>) -> Self {
        LocalCluster { script: script.to_path_buf(), dir: dir.to_path_buf(), berth_bin: berth_bin.map(Path::to_path_buf), env: vec![] }
    }

    /// Adds a variable to the environment of cluster.sh and so of every node it starts
    /// (`REGISTRY_AUTH_*`, ...).
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs `cluster.sh ARGS --dir DIR` and returns its output.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.script);
        cmd.args(args).arg("--dir").arg(&self.dir);
        if let Some(b) = &self.berth_bin {
            cmd.env("BERTH_BIN", b);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let out = cmd.output().with_context(|| format!("running {}", self.script.display()))?;
        if !out.status.success() {
            bail!(
                "cluster.sh {args:?} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `cluster.sh up`.
    pub fn up(&self, voters: usize, frontends: usize) -> anyhow::Result<()> {
        self.run(&["up", "--voters", &voters.to_string(), "--frontends", &frontends.to_string()]).map(drop)
    }

    /// The load balancer's URL.
    pub fn lb(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.dir.join("lb")).context("reading DIR/lb")?.trim().to_string())
    }

    /// Every node as `DIR/nodes` lists it.
    pub fn nodes(&self) -> anyhow::Result<Vec<NodeLine>> {
        let text = std::fs::read_to_string(self.dir.join("nodes")).context("reading DIR/nodes")?;
        text.lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() != 5 {
                    bail!("bad line in DIR/nodes: {l:?}");
                }
                Ok(NodeLine { id: f[0].parse()?, role: f[1].into(), pid: f[2].parse()?, http: f[3].into(), grpc: f[4].into() })
            })
            .collect()
    }

    /// The current leader per `cluster.sh status`, if there is one.
    pub fn leader(&self) -> Option<u64> {
        let out = self.run(&["status"]).ok()?;
        out.lines().find_map(|l| l.strip_prefix("leader ")).and_then(|n| n.trim().parse().ok()).filter(|n| *n != 0)
    }

    /// SIGKILL to one node.
    pub fn kill(&self, id: u64) -> anyhow::Result<()> {
        self.run(&["kill", &id.to_string()]).map(drop)
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to one node's process.
    pub fn signal(&self, id: u64, signal: &str) -> anyhow::Result<()> {
        let node = self.nodes()?.into_iter().find(|n| n.id == id).with_context(|| format!("no node {id}"))?;
        let out = std::process::Command::new("kill").arg(format!("-{signal}")).arg(node.pid.to_string()).output()?;
        if !out.status.success() {
            bail!("kill -{signal} {}: {}", node.pid, String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Restarts a node on its data and ports.
    pub fn start(&self, id: u64) -> anyhow::Result<()> {
        self.run(&["start", &id.to_string()]).map(drop)
    }

    /// `cluster.sh down`.
    pub fn down(&self) -> anyhow::Result<()> {
        self.run(&["down"]).map(drop)
    }

    /// A guard that stops the cluster when dropped, so a failing test leaves no processes.
    pub fn down_on_drop(&self) -> DownOnDrop<'_> {
        DownOnDrop(self)
    }
}

/// Stops its cluster when dropped (see [`LocalCluster::down_on_drop`]).
pub struct DownOnDrop<'a>(&'a LocalCluster);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.down();
    }
}
