//! `berth admin ...`: bootstrap and recovery of identity (users, passwords, tokens, the
//! token signing key) through a voter's gRPC address, authenticated by the cluster token,
//! so it works when nobody can log in anymore.

use std::io::Read as _;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use berth_api::Metadata;
use berth_proto::identity::{IdentityChange, TokenKind, TokenScope};
use berth_proto::{Command, Outcome};

use crate::cluster_token::ClusterToken;
use crate::config::Config;
use crate::metadata::frontend::RemoteMetadata;
use crate::metadata::ClusterMetadata;
use crate::peers::{MutualTls, Peers};

/// A connection to the cluster's metadata.
pub struct IdentityAdmin {
    meta: Arc<ClusterMetadata<RemoteMetadata>>,
}

/// Reads a password from stdin (one line) and checks its length.
pub fn password_from_stdin() -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s)?;
    let p = s.trim_end_matches(['\n', '\r']).to_string();
    if p.chars().count() < crate::config::admin::MIN_PASSWORD {
        bail!("the password must have at least {} characters", crate::config::admin::MIN_PASSWORD);
    }
    Ok(p)
}

impl IdentityAdmin {
    /// Connects to the voter at `node` as the configured node would.
    pub async fn connect(cfg: &Config, node: &str) -> anyhow::Result<Self> {
        let tls = cfg.berth.tls.as_ref().map(MutualTls::load).transpose()?;
        let data_dir = cfg.berth.datadir.clone().unwrap_or_else(|| crate::DEFAULT_DATA_DIR.into());
        let token = ClusterToken::for_config(&cfg.berth, &data_dir, false)?;
        let remote = RemoteMetadata::new(Peers::new(tls, token), vec![node.to_string()], &prometheus::Registry::new())?;
        let meta = Arc::new(ClusterMetadata::new(Arc::new(remote)));
        meta.refresh_identity().await.map_err(|e| anyhow!("{node}: {e}"))?;
        Ok(IdentityAdmin { meta })
    }

    async fn change(&self, c: IdentityChange) -> anyhow::Result<Outcome> {
        match self.meta.apply(Command::Identity(c)).await? {
            Outcome::Conflict { reason } => bail!("{reason}"),
            Outcome::NotFound => bail!("not found"),
            o => Ok(o),
        }
    }

    fn user_id(&self, username: &str) -> anyhow::Result<u64> {
        self.meta.identity().user_by_name(username).map(|u| u.id).ok_or_else(|| anyhow!("no user {username}"))
    }

    /// Makes a user, with a password from stdin unless `no_password`.
    pub async fn create_user(&self, username: &str, admin: bool, no_password: bool) -> anyhow::Result<()> {
        let password_hash = if no_password { None } else { Some(bcrypt::hash(password_from_stdin()?, berth_api::auth::PASSWORD_COST)?) };
        self.change(IdentityChange::CreateUser { username: username.into(), password_hash, admin }).await?;
        println!("user {username} created{}", if admin { " (administrator)" } else { "" });
        Ok(())
    }

    /// Sets a user's password (from stdin) and, if given, their admin flag.
    pub async fn set_password(&self, username: &str, admin: Option<bool>) -> anyhow::Result<()> {
        let user = self.user_id(username)?;
        let hash = bcrypt::hash(password_from_stdin()?, berth_api::auth::PASSWORD_COST)?;
        self.change(IdentityChange::UpdateUser { user, password_hash: Some(hash), admin }).await?;
        println!("password of {username} changed");
        Ok(())
    }

    /// Makes a personal access token and prints its secret (shown this once).
    pub async fn create_token(&self, username: &str, name: &str, scopes: &[String], expires_at: Option<&str>) -> anyhow::Result<()> {
        let user = self.user_id(username)?;
        let scopes = scopes
            .iter()
            .map(|s| TokenScope::parse(s).ok_or_else(|| anyhow!("unknown scope {s} (api, read_registry, write_registry)")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let expires_ms = expires_at
            .map(|e| berth_api::handlers::v4::parse_time(e).ok_or_else(|| anyhow!("--expires-at {e}: not an ISO 8601 date")))
            .transpose()?;
        let secret = berth_api::auth::issuer::new_secret("berth_pat_");
        let hash = berth_api::auth::issuer::token_hash(&secret);
        self.change(IdentityChange::CreateToken { kind: TokenKind::Personal { user }, name: name.into(), hash, scopes, expires_ms }).await?;
        println!("{secret}");
        Ok(())
    }

    /// Starts signing with a new key (made here, or read from `key_file`); the old one keeps
    /// verifying until its tokens expire.
    pub async fn rotate_signing_key(&self, key_file: Option<&std::path::Path>) -> anyhow::Result<()> {
        let (kid, pkcs8) = match key_file {
            None => berth_api::auth::signing::generate_key(),
            Some(f) => {
                let pem = std::fs::read(f).map_err(|e| anyhow!("{}: {e}", f.display()))?;
                berth_api::auth::signing::import_pem(&pem).map_err(|e| anyhow!("{}: {e}", f.display()))?
            }
        };
        // Keys retired more than an hour ago verify nothing anymore: their tokens expired.
        let before_ms = berth_proto::now_ms().saturating_sub(3_600_000);
        self.change(IdentityChange::DropRetiredKeys { before_ms }).await?;
        let alg = berth_api::auth::signing::SigningPair::from_pkcs8(&pkcs8).map(|p| p.algorithm()).unwrap_or("?");
        self.change(IdentityChange::AddSigningKey { kid: kid.clone(), pkcs8 }).await?;
        println!("tokens are now signed with key {kid} ({alg})");
        Ok(())
    }

    /// Lists users.
    pub fn users(&self) {
        for u in self.meta.identity().users.values() {
            println!("{}\t{}{}", u.id, u.username, if u.admin { "\tadmin" } else { "" });
        }
    }
}
