//! `notifications`: webhook endpoints that receive the registry's events, as Distribution
//! configures them (`notifications.endpoints`: name, disabled, url, headers, timeout,
//! threshold, backoff, ignoredmediatypes, ignore.{mediatypes,actions}).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

use super::duration_at;

/// `notifications` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// `events.includereferences`: accepted; Berth's events never list references.
    pub events: Option<serde_norway::Value>,
    /// The endpoints.
    pub endpoints: Vec<EndpointConfig>,
}

/// One endpoint as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointConfig {
    /// Names the endpoint (in metrics, and for its delivery position in the cluster state).
    pub name: String,
    /// Sends nothing (its events are not kept either).
    pub disabled: Option<bool>,
    /// Where events are POSTed.
    pub url: String,
    /// Headers sent with every request (`Authorization`, ...), each with its values.
    pub headers: BTreeMap<String, Vec<String>>,
    /// Longest wait for an answer (default 1s).
    pub timeout: Option<String>,
    /// Failures in a row after which delivery pauses for `backoff` (default 10).
    pub threshold: Option<u32>,
    /// GitLab's registry's name for `threshold` (used when `threshold` is not given).
    pub maxretries: Option<u32>,
    /// The pause (default 1s).
    pub backoff: Option<String>,
    /// Events whose target has one of these media types are not sent (Distribution's older key).
    pub ignoredmediatypes: Vec<String>,
    /// Events not sent.
    pub ignore: IgnoreConfig,
}

/// `ignore` of an endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IgnoreConfig {
    /// Target media types.
    pub mediatypes: Vec<String>,
    /// Actions (`push`, `delete`, `pull`).
    pub actions: Vec<String>,
}

/// An endpoint with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// See [`EndpointConfig::name`].
    pub name: String,
    /// See [`EndpointConfig::url`].
    pub url: String,
    /// See [`EndpointConfig::headers`].
    pub headers: Vec<(String, String)>,
    /// See [`EndpointConfig::timeout`].
    pub timeout: Duration,
    /// See [`EndpointConfig::threshold`].
    pub threshold: u32,
    /// See [`EndpointConfig::backoff`].
    pub backoff: Duration,
    /// Media types not sent (both keys).
    pub ignored_media_types: Vec<String>,
    /// Actions not sent.
    pub ignored_actions: Vec<String>,
}

impl Endpoint {
    /// The enabled endpoints, checked, naming the key of a bad value.
    pub fn from_config(c: &NotificationsConfig) -> anyhow::Result<Vec<Endpoint>> {
        let mut out: Vec<Endpoint> = Vec::new();
        for (i, e) in c.endpoints.iter().enumerate() {
            let at = |k: &str| format!("notifications.endpoints[{i}].{k}");
            if e.name.is_empty() {
                bail!("invalid configuration value at {}: an endpoint needs a name", at("name"));
            }
            if out.iter().any(|o| o.name == e.name) {
                bail!("invalid configuration value at {}: {:?} names two endpoints", at("name"), e.name);
            }
            match reqwest::Url::parse(&e.url) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                _ => bail!("invalid configuration value at {}: {:?} is not an http(s) URL", at("url"), e.url),
            }
            for (k, vs) in &e.headers {
                for v in vs {
                    if reqwest::header::HeaderName::try_from(k.as_str()).is_err() || reqwest::header::HeaderValue::try_from(v.as_str()).is_err() {
                        bail!("invalid configuration value at {}: {k:?} is not a valid header", at("headers"));
                    }
                }
            }
            if e.disabled == Some(true) {
                continue;
            }
            let threshold = e.threshold.or(e.maxretries).unwrap_or(10);
            if threshold == 0 {
                bail!("invalid configuration value at {}: must be positive", at("threshold"));
            }
            out.push(Endpoint {
                name: e.name.clone(),
                url: e.url.clone(),
                headers: e.headers.iter().flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), v.clone()))).collect(),
                timeout: duration_at(&e.timeout, &at("timeout"), Duration::from_secs(1), false)?,
                threshold,
                backoff: duration_at(&e.backoff, &at("backoff"), Duration::from_secs(1), false)?,
                ignored_media_types: e.ignoredmediatypes.iter().chain(&e.ignore.mediatypes).cloned().collect(),
                ignored_actions: e.ignore.actions.clone(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> anyhow::Result<Vec<Endpoint>> {
        Endpoint::from_config(&serde_norway::from_str::<NotificationsConfig>(yaml)?)
    }

    #[test]
    fn endpoints_as_distribution_and_gitlab_write_them() {
        let e = parse("endpoints:\n  - name: a\n    url: https://hook.example/events\n    headers: {Authorization: [secret]}\n    ignoredmediatypes: [x]\n    ignore: {mediatypes: [y], actions: [pull]}\n  - name: off\n    disabled: true\n    url: http://x\n  - name: gl\n    url: http://gl/e\n    maxretries: 3\n    timeout: 500ms\n").unwrap();
        assert_eq!(e.len(), 2, "a disabled endpoint is left out");
        assert_eq!((e[0].timeout, e[0].threshold, e[0].backoff), (Duration::from_secs(1), 10, Duration::from_secs(1)));
        assert_eq!(e[0].headers, vec![("Authorization".to_string(), "secret".to_string())]);
        assert_eq!((e[0].ignored_media_types.clone(), e[0].ignored_actions.clone()), (vec!["x".to_string(), "y".to_string()], vec!["pull".to_string()]));
        assert_eq!((e[1].threshold, e[1].timeout), (3, Duration::from_millis(500)));
        for (bad, key) in [
            ("endpoints:\n  - name: a\n    url: ftp://x\n", "endpoints[0].url"),
            ("endpoints:\n  - url: http://x\n", "endpoints[0].name"),
            ("endpoints:\n  - {name: a, url: 'http://x'}\n  - {name: a, url: 'http://y'}\n", "endpoints[1].name"),
            ("endpoints:\n  - {name: a, url: 'http://x', timeout: soon}\n", "endpoints[0].timeout"),
            ("endpoints:\n  - {name: a, url: 'http://x', threshold: 0}\n", "endpoints[0].threshold"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains(key), "{bad}: {err}");
        }
        assert!(parse("endpoints:\n  - {name: a, url: 'http://x', colour: red}\n").is_err());
    }
}
