//! `auth:`: access control as Distribution configures it (`htpasswd`, `token`, `silly`).
//! Berth does not implement access control yet, so it fails closed: any kind of `auth` stops
//! the start with an error naming the key, instead of quietly serving everyone. Only an
//! explicit `auth: {none: {}}` says that serving everyone is meant.

use anyhow::bail;
use serde::Deserialize;
use serde_norway::Value;

/// The `auth` section: one kind of access control, keyed by its name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct AuthConfig(pub Option<Value>);

impl AuthConfig {
    /// Refuses every kind Berth cannot honour.
    pub fn validate(&self) -> anyhow::Result<()> {
        let Some(v) = &self.0 else { return Ok(()) };
        if v.is_null() {
            return Ok(());
        }
        // `REGISTRY_AUTH=htpasswd` names a kind as a plain string.
        let kinds: Vec<String> = match v {
            Value::Mapping(m) => m.keys().map(|k| k.as_str().map_or_else(|| format!("{k:?}"), str::to_string)).collect(),
            Value::String(s) => vec![s.clone()],
            other => bail!("invalid configuration value at auth: expected a mapping of one auth kind, got {other:?}"),
        };
        match kinds.as_slice() {
            [] => Ok(()),
            [only] if only == "none" => Ok(()),
            [only] => bail!(
                "invalid configuration value at auth.{only}: Berth does not implement access control yet and will \
                 not serve unauthenticated instead; remove auth.{only}, or write `auth: {{none: {{}}}}` to serve everyone"
            ),
            many => bail!("invalid configuration value at auth: exactly one auth kind may be configured, found {}", many.join(", ")),
        }
    }

    /// True when the configuration says explicitly that everyone is served.
    pub fn is_explicitly_none(&self) -> bool {
        matches!(&self.0, Some(Value::Mapping(m)) if m.len() == 1 && m.keys().next().and_then(Value::as_str) == Some("none"))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(yaml: &str, env: &[(&str, &str)]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yml");
        std::fs::write(&p, yaml).unwrap();
        Ok(Config::load(Some(&p), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))?.0)
    }

    #[test]
    fn auth_kinds_berth_cannot_honour_stop_the_start() {
        for (yaml, key) in [
            ("auth:\n  htpasswd:\n    realm: basic-realm\n    path: /etc/registry/htpasswd\n", "auth.htpasswd"),
            ("auth:\n  token:\n    realm: https://gitlab/jwt/auth\n    service: container_registry\n", "auth.token"),
            ("auth:\n  silly:\n    realm: x\n    service: y\n", "auth.silly"),
        ] {
            let e = load(yaml, &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let e = load("", &[("REGISTRY_AUTH", "htpasswd")]).unwrap_err().to_string();
        assert!(e.contains("auth.htpasswd"), "{e}");
        let e = load("", &[("REGISTRY_AUTH_HTPASSWD_PATH", "/x")]).unwrap_err().to_string();
        assert!(e.contains("auth.htpasswd"), "{e}");
        assert!(load("auth:\n  none: {}\n", &[]).unwrap().auth.is_explicitly_none());
        assert!(!load("", &[]).unwrap().auth.is_explicitly_none());
    }
}
