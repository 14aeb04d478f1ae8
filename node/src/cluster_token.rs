//! The cluster token: the shared secret every gRPC call between nodes (Raft, forwarded
//! metadata, cluster administration) must carry, so that no process that merely reaches a
//! gRPC port (another local user, a pod in the same network) can read the cluster's secrets,
//! append Raft entries or change membership. Mutual TLS, when configured, authenticates the
//! transport as well; the token is checked either way.
//!
//! The node that bootstraps a cluster creates the token file (mode 0600) on first start;
//! every other node and the `berth cluster` CLI are given a copy. A token file that other
//! users can read is refused.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rand::RngCore;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The gRPC metadata key that carries the token.
pub const TOKEN_HEADER: &str = "berth-cluster-token";
/// The token file's name in the data directory when `berth.clustertokenfile` is not set.
pub const DEFAULT_FILE: &str = "cluster-token";

/// The cluster token, attached to every outgoing call and required on every incoming one.
#[derive(Clone)]
pub struct ClusterToken(Arc<MetadataValue<Ascii>>);

impl std::fmt::Debug for ClusterToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterToken(..)")
    }
}

impl ClusterToken {
    fn from_text(text: &str, path: &Path) -> anyhow::Result<Self> {
        let t = text.trim();
        if t.len() < 32 || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            bail!("{}: a cluster token is at least 32 characters of [A-Za-z0-9_-]", path.display());
        }
        Ok(ClusterToken(Arc::new(t.parse().expect("checked characters"))))
    }

    /// Reads the token file, refusing one that other users may read.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("cluster token file {}", path.display()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            bail!("cluster token file {} is readable by other users; chmod 600 it", path.display());
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::from_text(&text, path)
    }

    /// Creates a new random token file (mode 0600); fails if the file exists.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let text = hex::encode(raw);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating cluster token file {}", path.display()))?;
        f.write_all(format!("{text}\n").as_bytes())?;
        f.sync_all()?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Self::from_text(&text, path)
    }

    /// The token a node uses: `configured` or `<data_dir>/cluster-token`, created when this
    /// node founds a new cluster and the file does not exist yet.
    pub fn for_node(configured: Option<&Path>, data_dir: &Path, founds_cluster: bool) -> anyhow::Result<Self> {
        let path: PathBuf = configured.map(Path::to_path_buf).unwrap_or_else(|| data_dir.join(DEFAULT_FILE));
        if path.exists() {
            return Self::load(&path);
        }
        if founds_cluster {
            tracing::info!(path = %path.display(), "created the cluster token; give a copy to every node that joins");
            return Self::create(&path);
        }
        bail!(
            "berth.clustertokenfile: {} does not exist; a node that joins a cluster needs a copy of the cluster's token \
             (the first node's <datadir>/{DEFAULT_FILE})",
            path.display()
        )
    }

    /// The token by a node's configuration (the CLI reads it the same way): `berth.clustertoken`,
    /// the value itself, for containers given secrets as environment variables; else
    /// `berth.clustertokenfile`; else `<data_dir>/cluster-token`.
    pub fn for_config(b: &crate::config::BerthConfig, data_dir: &Path, founds_cluster: bool) -> anyhow::Result<Self> {
        match &b.clustertoken {
            Some(t) => Self::from_text(t, Path::new("berth.clustertoken")),
            None => Self::for_node(b.clustertokenfile.as_deref(), data_dir, founds_cluster),
        }
    }

    /// The server side: refuses any call without this token.
    pub fn checker(&self) -> impl Interceptor + Clone {
        let expected = self.0.clone();
        move |req: Request<()>| -> Result<Request<()>, Status> {
            match req.metadata().get(TOKEN_HEADER) {
                Some(got) if constant_time_eq(got.as_bytes(), expected.as_bytes()) => Ok(req),
                Some(_) => Err(Status::unauthenticated("wrong cluster token")),
                None => Err(Status::unauthenticated("a cluster token is required")),
            }
        }
    }
}

/// The client side: adds the token to every call.
impl Interceptor for ClusterToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut().insert(TOKEN_HEADER, (*self.0).clone());
        Ok(req)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_loaded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let joining = ClusterToken::for_node(None, dir.path(), false).unwrap_err().to_string();
        assert!(joining.contains("berth.clustertokenfile"), "{joining}");
        let t = ClusterToken::for_node(None, dir.path(), true).unwrap();
        let path = dir.path().join(DEFAULT_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let again = ClusterToken::for_node(None, dir.path(), true).unwrap();
        assert_eq!(t.0, again.0);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(ClusterToken::load(&path).unwrap_err().to_string().contains("chmod 600"));

        let mut check = t.checker();
        assert_eq!(check.call(Request::new(())).unwrap_err().code(), tonic::Code::Unauthenticated);
        let mut forged = Request::new(());
        forged.metadata_mut().insert(TOKEN_HEADER, "0".repeat(64).parse().unwrap());
        assert_eq!(check.call(forged).unwrap_err().code(), tonic::Code::Unauthenticated);
        let signed = t.clone().call(Request::new(())).unwrap();
        assert!(check.call(signed).is_ok());
    }
}
