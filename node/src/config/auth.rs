//! `auth:`: access control as Distribution configures it. One kind at most: `htpasswd`,
//! `token`, or `none` written out to serve everyone. Anything Berth cannot honour (`silly`,
//! an unknown kind or key, a token setup without keys) stops the start with an error naming
//! the key, instead of quietly serving everyone.

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use serde::Deserialize;
use serde_norway::Value;

/// The `auth` section, kept as written; [`AuthConfig::kind`] reads it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct AuthConfig(pub Option<Value>);

/// `auth.htpasswd`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HtpasswdConfig {
    /// The Basic challenge's realm.
    pub realm: Option<String>,
    /// The bcrypt htpasswd file.
    pub path: PathBuf,
}

/// `auth.token`. With `rootcertbundle` or `jwks`, tokens come from that issuer (GitLab)
/// and `realm`, `service` and `issuer` are required; without either, Berth issues its own
/// tokens at `/jwt/auth` (`service` defaults to `container_registry`, `issuer` to `berth`,
/// `realm` to `/jwt/auth` on the host the client used).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// Where clients get tokens.
    pub realm: Option<String>,
    /// The audience tokens must name.
    pub service: Option<String>,
    /// The issuer tokens must name.
    pub issuer: Option<String>,
    /// PEM certificates whose keys sign tokens (and roots for `x5c` chains).
    pub rootcertbundle: Option<PathBuf>,
    /// A JWKS file of keys that sign tokens.
    pub jwks: Option<PathBuf>,
    /// Build the realm from the request's host instead.
    pub autoredirect: Option<bool>,
    /// The realm's path with `autoredirect`.
    pub autoredirectpath: Option<String>,
    /// Only these algorithms (`RS256`, `ES256`, ...).
    pub signingalgorithms: Option<Vec<String>>,
}

/// The configured kind of access control.
#[derive(Debug, Clone)]
pub enum AuthKind {
    /// Nothing configured: the embedded default.
    Default,
    /// `auth: {none: {}}`: everyone, on purpose.
    None,
    /// `auth.htpasswd`.
    Htpasswd(HtpasswdConfig),
    /// `auth.token` without outside keys: Berth issues tokens at `/jwt/auth`.
    Issuer(TokenConfig),
    /// `auth.token` with `rootcertbundle` and/or `jwks`: tokens come from another issuer.
    External(ExternalIssuer),
}

/// `auth.token` trusting an outside issuer, its required keys checked.
#[derive(Debug, Clone)]
pub struct ExternalIssuer {
    /// Where clients get tokens.
    pub realm: String,
    /// The audience tokens must name.
    pub service: String,
    /// The issuer tokens must name.
    pub issuer: String,
    /// Only these algorithms, if given.
    pub algorithms: Option<Vec<berth_api::auth::token::Algorithm>>,
    /// The section as written (key files, `autoredirect`).
    pub token: TokenConfig,
}

impl AuthConfig {
    /// Reads the section; refuses every kind and key Berth cannot honour.
    pub fn kind(&self) -> anyhow::Result<AuthKind> {
        let Some(v) = &self.0 else { return Ok(AuthKind::Default) };
        let (name, params) = match v {
            Value::Null => return Ok(AuthKind::Default),
            // `REGISTRY_AUTH=htpasswd` names a kind with no parameters.
            Value::String(s) => (s.clone(), Value::Mapping(Default::default())),
            Value::Mapping(m) if m.is_empty() => return Ok(AuthKind::Default),
            Value::Mapping(m) if m.len() == 1 => {
                let (k, p) = m.iter().next().expect("one entry");
                let p = if p.is_null() { Value::Mapping(Default::default()) } else { p.clone() };
                (k.as_str().map_or_else(|| format!("{k:?}"), str::to_string), p)
            }
            Value::Mapping(m) => {
                let names: Vec<String> = m.keys().map(|k| k.as_str().map_or_else(|| format!("{k:?}"), str::to_string)).collect();
                bail!("invalid configuration value at auth: exactly one auth kind may be configured, found {}", names.join(", "))
            }
            other => bail!("invalid configuration value at auth: expected a mapping of one auth kind, got {other:?}"),
        };
        let at = |e: serde_path_to_error::Error<serde_norway::Error>| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { format!(".{path}") };
            anyhow!("invalid configuration value at auth.{name}{path}: {}", e.into_inner())
        };
        match name.as_str() {
            "none" => Ok(AuthKind::None),
            "htpasswd" => Ok(AuthKind::Htpasswd(serde_path_to_error::deserialize(params).map_err(at)?)),
            "token" => {
                let t: TokenConfig = serde_path_to_error::deserialize(params).map_err(at)?;
                let algorithms = t
                    .signingalgorithms
                    .as_ref()
                    .map(|algs| algs.iter().map(|a| berth_api::auth::token::algorithm(a)).collect::<Result<Vec<_>, _>>())
                    .transpose()
                    .map_err(|e| anyhow!("invalid configuration value at auth.token.signingalgorithms: {e}"))?;
                if t.rootcertbundle.is_none() && t.jwks.is_none() {
                    return Ok(AuthKind::Issuer(t));
                }
                let required = |key: &str, v: &Option<String>| match v.as_deref() {
                    Some(v) if !v.is_empty() => Ok(v.to_string()),
                    _ => Err(anyhow!("invalid configuration value at auth.token.{key}: required with rootcertbundle or jwks")),
                };
                Ok(AuthKind::External(ExternalIssuer {
                    realm: required("realm", &t.realm)?,
                    service: required("service", &t.service)?,
                    issuer: required("issuer", &t.issuer)?,
                    algorithms,
                    token: t,
                }))
            }
            "silly" => bail!("invalid configuration value at auth.silly: a test mode that lets any Authorization header in; Berth will not serve it"),
            other => bail!("invalid configuration value at auth.{other}: unknown auth kind (htpasswd, token or none)"),
        }
    }

    /// Checks the section.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.kind().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::AuthKind;
    use crate::config::Config;

    fn load(yaml: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yml");
        std::fs::write(&p, yaml).unwrap();
        Ok(Config::load(Some(&p), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))?.0)
    }

    #[test]
    fn what_berth_cannot_honour_stops_the_start() {
        for (yaml, key) in [
            ("auth:\n  silly:\n    realm: x\n    service: y\n", "auth.silly"),
            ("auth:\n  ldap: {}\n", "auth.ldap"),
            ("auth:\n  htpasswd:\n    realm: r\n", "auth.htpasswd"),
            ("auth:\n  htpasswd:\n    path: /x\n    pth: /y\n", "auth.htpasswd"),
            ("auth:\n  token:\n    service: container_registry\n    jwks: /k\n", "auth.token.realm"),
            (
                "auth:\n  token:\n    realm: r\n    service: s\n    issuer: i\n    jwks: /k\n    signingalgorithms: [HS256]\n",
                "auth.token.signingalgorithms",
            ),
            ("auth:\n  none: {}\n  htpasswd: {path: /x}\n", "exactly one"),
        ] {
            let e = load(yaml, &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
        let e = load("", &[("REGISTRY_AUTH", "htpasswd")]).unwrap_err().to_string();
        assert!(e.contains("auth.htpasswd"), "{e}");
    }

    #[test]
    fn kinds_are_read() {
        assert!(matches!(load("auth:\n  none: {}\n", &[]).unwrap().auth.kind().unwrap(), AuthKind::None));
        assert!(matches!(load("", &[]).unwrap().auth.kind().unwrap(), AuthKind::Default));
        let c = load("", &[("REGISTRY_AUTH_HTPASSWD_PATH", "/etc/htpasswd"), ("REGISTRY_AUTH_HTPASSWD_REALM", "r")]).unwrap();
        assert!(matches!(c.auth.kind().unwrap(), AuthKind::Htpasswd(h) if h.path.to_str() == Some("/etc/htpasswd")));
        let c = load(
            "auth:\n  token:\n    realm: https://gitlab.example.com/jwt/auth\n    service: container_registry\n    issuer: gitlab-issuer\n    rootcertbundle: /etc/gitlab/registry.crt\n",
            &[],
        )
        .unwrap();
        assert!(matches!(c.auth.kind().unwrap(), AuthKind::External(t) if t.issuer == "gitlab-issuer"));
        assert!(matches!(load("auth:\n  token: {}\n", &[]).unwrap().auth.kind().unwrap(), AuthKind::Issuer(_)));
    }
}
