//! `berth.admin`: the first administrator, made on the first start of a new cluster and
//! never again. There is no default password: without one nothing is made, and
//! `berth admin create-user --admin` makes one later.

use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Deserialize;

/// `berth.admin`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Login name (`root` unless given, as GitLab).
    pub username: Option<String>,
    /// The password (prefer `passwordfile` or the environment: `REGISTRY_BERTH_ADMIN_PASSWORD`).
    pub password: Option<String>,
    /// A file holding the password.
    pub passwordfile: Option<PathBuf>,
}

/// The shortest password accepted (GitLab's default minimum).
pub const MIN_PASSWORD: usize = 8;

impl AdminConfig {
    /// (username, password) if a first administrator is configured.
    pub fn credentials(&self) -> anyhow::Result<Option<(String, String)>> {
        let password = match (&self.password, &self.passwordfile) {
            (Some(_), Some(_)) => bail!("invalid configuration value at berth.admin: password and passwordfile are both set"),
            (Some(p), None) => p.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .with_context(|| format!("berth.admin.passwordfile: {}", f.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            (None, None) => return Ok(None),
        };
        if password.chars().count() < MIN_PASSWORD {
            bail!("invalid configuration value at berth.admin.password: at least {MIN_PASSWORD} characters");
        }
        Ok(Some((self.username.clone().unwrap_or_else(|| "root".into()), password)))
    }
}
