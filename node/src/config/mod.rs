//! Configuration: Docker Distribution's `config.yml` keys that apply to Berth, `REGISTRY_*`
//! environment overrides (applied in lexical order, values parsed as YAML, as Distribution
//! does), plus Berth's own `berth:` section. Unknown keys are warned about; an invalid value
//! stops the start with an error naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde::Deserialize;
use serde_norway::Value;

pub mod admin;
pub mod auth;
pub mod gc;
pub mod geo;
pub mod limits;
pub mod notifications;

pub use admin::AdminConfig;
pub use auth::AuthConfig;
pub use gc::{Gc, GcConfig};
pub use geo::{Geo, GeoConfig};
pub use limits::{Limits, LimitsConfig};
pub use notifications::{Endpoint, NotificationsConfig};

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Config format version (`0.1`).
    pub version: Option<Value>,
    /// Logging.
    pub log: LogConfig,
    /// HTTP listener.
    pub http: HttpConfig,
    /// Blob storage.
    pub storage: StorageConfig,
    /// Berth's own settings.
    pub berth: BerthConfig,
    /// Access control (`auth.htpasswd`, `auth.token`, ...), as Distribution configures it.
    pub auth: AuthConfig,
    /// Online garbage collection, as GitLab's registry configures it.
    pub gc: GcConfig,
    /// Accepted for compatibility; Berth has no Redis dependency.
    pub redis: Option<Value>,
    /// Accepted for compatibility; health checks are built in.
    pub health: Option<Value>,
    /// Webhook endpoints for the registry's events, as Distribution configures them.
    pub notifications: NotificationsConfig,
    /// Accepted for compatibility.
    pub validation: Option<Value>,
}

/// `log.*`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// error, warn, info or debug.
    pub level: Option<LogLevel>,
    /// text, json or logstash.
    pub formatter: Option<LogFormat>,
    /// Static fields added to every line.
    pub fields: BTreeMap<String, Value>,
    /// `log.accesslog`.
    pub accesslog: AccessLogConfig,
}

/// Log levels Distribution accepts.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings.
    Warn,
    /// Info.
    Info,
    /// Debug.
    Debug,
}

/// Log formats.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
    /// Treated as JSON.
    Logstash,
}

/// `log.accesslog`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogConfig {
    /// No line per request.
    pub disabled: Option<bool>,
}

/// `http.*`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// `HOST:PORT` (`:5000` means every address).
    pub addr: Option<String>,
    /// Only `tcp` is supported.
    pub net: Option<String>,
    /// Accepted for compatibility.
    pub prefix: Option<String>,
    /// Accepted for compatibility (Location headers are relative).
    pub host: Option<String>,
    /// Seeds the cluster HTTP secret on first start.
    pub secret: Option<String>,
    /// Accepted (Berth's Location headers are always relative).
    pub relativeurls: Option<bool>,
    /// How long to wait for requests to finish at shutdown.
    pub draintimeout: Option<String>,
    /// Extra response headers.
    pub headers: BTreeMap<String, Vec<String>>,
    /// TLS.
    pub tls: Option<TlsConfig>,
    /// Debug listener.
    pub debug: Option<DebugConfig>,
    /// Accepted for compatibility.
    pub http2: Option<Value>,
}

/// `http.tls.*`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub certificate: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// CA bundles for client certificates.
    pub clientcas: Vec<PathBuf>,
    /// tls1.2 or tls1.3.
    pub minimumtls: Option<String>,
    /// Accepted; rustls picks safe suites.
    pub ciphersuites: Option<Value>,
    /// Not supported (no outside network).
    pub letsencrypt: Option<Value>,
    /// Accepted for compatibility.
    pub clientauth: Option<String>,
}

/// `http.debug.*`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Listener address for `/debug/health` and metrics.
    pub addr: Option<String>,
    /// `prometheus.enabled` / `prometheus.path`.
    pub prometheus: Option<PrometheusConfig>,
}

/// `http.debug.prometheus.*`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Whether metrics are served (Berth serves them on the debug listener either way).
    pub enabled: Option<bool>,
    /// Metrics path, `/metrics` by default.
    pub path: Option<String>,
}

/// `storage.*`: exactly one driver plus shared options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Filesystem driver.
    pub filesystem: Option<FilesystemConfig>,
    /// S3 driver.
    pub s3: Option<S3Config>,
    /// GCS driver.
    pub gcs: Option<GcsConfig>,
    /// Azure driver.
    pub azure: Option<AzureConfig>,
    /// Refused: Berth keeps acknowledged data durable.
    pub inmemory: Option<Value>,
    /// `delete.enabled`.
    pub delete: Option<Enabled>,
    /// `redirect.disable`.
    pub redirect: Option<RedirectConfig>,
    /// Accepted for compatibility (Berth caches in the state machine).
    pub cache: Option<Value>,
    /// `maintenance.uploadpurging`, `maintenance.readonly`.
    pub maintenance: MaintenanceConfig,
}

/// A block with an `enabled` flag.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Enabled {
    /// The flag.
    pub enabled: Option<bool>,
}

/// `storage.redirect`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedirectConfig {
    /// Berth never redirects; accepted for compatibility.
    pub disable: Option<bool>,
}

/// `storage.filesystem`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesystemConfig {
    /// Root directory of blob storage.
    pub rootdirectory: Option<PathBuf>,
    /// Accepted for compatibility.
    pub maxthreads: Option<Value>,
}

/// `storage.s3`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Region (required).
    pub region: Option<String>,
    /// Bucket (required).
    pub bucket: Option<String>,
    /// Access key.
    pub accesskey: Option<String>,
    /// Secret key.
    pub secretkey: Option<String>,
    /// Endpoint of an S3-compatible service.
    pub regionendpoint: Option<String>,
    /// Key prefix.
    pub rootdirectory: Option<String>,
    /// Path-style addressing.
    pub forcepathstyle: Option<bool>,
    /// Server-side encryption.
    pub encrypt: Option<bool>,
    /// https (true) or http.
    pub secure: Option<bool>,
    /// Accepted (always v4).
    pub v4auth: Option<bool>,
    /// Accepted for compatibility.
    pub chunksize: Option<Value>,
    /// Accepted for compatibility.
    pub multipartcopychunksize: Option<Value>,
    /// Accepted for compatibility.
    pub multipartcopymaxconcurrency: Option<Value>,
    /// Accepted for compatibility.
    pub multipartcopythresholdsize: Option<Value>,
    /// Accepted for compatibility.
    pub storageclass: Option<Value>,
    /// Skip TLS verification (refused).
    pub skipverify: Option<bool>,
    /// Accepted for compatibility.
    pub keyid: Option<Value>,
    /// Accepted for compatibility.
    pub loglevel: Option<Value>,
}

/// `storage.gcs`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcsConfig {
    /// Bucket.
    pub bucket: Option<String>,
    /// Service account key file.
    pub keyfile: Option<String>,
    /// Inline credentials (not supported; use keyfile).
    pub credentials: Option<Value>,
    /// Key prefix.
    pub rootdirectory: Option<String>,
    /// Accepted for compatibility.
    pub chunksize: Option<Value>,
}

/// `storage.azure`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AzureConfig {
    /// Account name.
    pub accountname: Option<String>,
    /// Account key.
    pub accountkey: Option<String>,
    /// Container.
    pub container: Option<String>,
    /// Accepted for compatibility.
    pub realm: Option<String>,
    /// Key prefix.
    pub rootdirectory: Option<String>,
}

/// `storage.maintenance`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Upload purging.
    pub uploadpurging: UploadPurging,
    /// Read-only mode.
    pub readonly: Option<Enabled>,
}

/// `storage.maintenance.uploadpurging`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadPurging {
    /// Default true.
    pub enabled: Option<bool>,
    /// Default 168h.
    pub age: Option<String>,
    /// Default 24h.
    pub interval: Option<String>,
    /// Default false.
    pub dryrun: Option<bool>,
}

/// `berth.*`: settings Distribution does not have.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BerthConfig {
    /// Where Raft data (and, by default, blobs) live.
    pub datadir: Option<PathBuf>,
    /// This node's Raft id (default 1); never reused. `ordinal` takes it from the host name's
    /// trailing `-N` as N + 1 (a StatefulSet's pod `berth-voter-0` is node 1).
    pub nodeid: Option<NodeIdSetting>,
    /// Log entries between snapshots (default 10000; a large state waits one entry per 2 KiB
    /// of its last snapshot, up to four times this); the log is purged behind each.
    pub snapshotlogs: Option<u64>,
    /// Listener for node-to-node gRPC (default 127.0.0.1:5050); peers reach the node here.
    pub grpcaddr: Option<String>,
    /// The gRPC address other nodes reach this node at (default: `grpcaddr` as bound). Needed
    /// when `grpcaddr` is a wildcard such as `0.0.0.0:5050`, e.g. `berth-voter-0.berth-voters:5050`.
    pub advertiseaddr: Option<String>,
    /// Voters' gRPC addresses (a list or comma-separated; this node's own may be among them).
    /// A voter that is not yet a voter of the cluster asks them to add it, as a learner and
    /// then as a voter, until it is one: compose files and StatefulSets need no operator step.
    pub join: Option<AddrList>,
    /// Initialize a new one-voter cluster on first start. Default: true, except with `join`,
    /// where only node 1 founds the cluster, and only if no node in `join` already has one.
    /// A node that will be added by an operator sets false and waits.
    pub bootstrap: Option<bool>,
    /// `voter` (default: holds the Raft log and state), `learner` (holds them too but never
    /// votes: a node of a secondary site, which joins through `join` and serves reads from its
    /// own copy when the voters cannot be reached) or `frontend` (stateless; sends every
    /// metadata read and write to the voters in `peers`).
    pub role: Option<Role>,
    /// Sites: which one this node belongs to, and how content is copied between them.
    pub geo: GeoConfig,
    /// A frontend's voters: their gRPC addresses, as a list or comma-separated.
    pub peers: Option<AddrList>,
    /// Mutual TLS between nodes: every node presents a certificate signed by the cluster CA
    /// and accepts only peers that do.
    pub tls: Option<ClusterTls>,
    /// Allow plaintext gRPC on addresses other than loopback (default false). Without `tls`,
    /// a node whose gRPC traffic would leave the machine refuses to start unless this is set.
    pub insecureplaintext: Option<bool>,
    /// The file holding the cluster token that every gRPC call between nodes (and from the
    /// `berth cluster` CLI) must carry (default `<datadir>/cluster-token`). The node that
    /// bootstraps a cluster creates it (mode 0600); every other node is given a copy.
    pub clustertokenfile: Option<PathBuf>,
    /// The cluster token itself, instead of a file: for containers that receive secrets as
    /// environment variables (`REGISTRY_BERTH_CLUSTERTOKEN` from a Kubernetes Secret or a
    /// compose `.env`). At least 32 characters of `[A-Za-z0-9_-]`.
    pub clustertoken: Option<String>,
    /// Per-connection and per-request resource limits of the HTTP listener.
    pub limits: LimitsConfig,
    /// The first administrator.
    pub admin: AdminConfig,
    /// Proxies (load balancers, ingress controllers) whose `X-Forwarded-For` names the
    /// client, as addresses or CIDRs, a list or comma-separated. Login limits and the audit
    /// log then see each client instead of the proxy. Empty (the default): the peer address
    /// counts, whatever a request claims.
    pub trustedproxies: Option<AddrList>,
}

/// What a node does in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Raft member with the full state.
    #[default]
    Voter,
    /// Stateless HTTP front end.
    Frontend,
    /// Raft member with the full state that never votes (a secondary site's node).
    Learner,
}

/// `berth.nodeid`: a number, or `ordinal`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum NodeIdSetting {
    Id(u64),
    Named(String),
}

impl NodeIdSetting {
    /// The id this setting names on a host called `hostname`.
    pub fn resolve(&self, hostname: &str) -> anyhow::Result<u64> {
        match self {
            NodeIdSetting::Id(0) => bail!("invalid configuration value at berth.nodeid: node ids start at 1"),
            NodeIdSetting::Id(n) => Ok(*n),
            NodeIdSetting::Named(s) if s == "ordinal" => match hostname.rsplit_once('-').and_then(|(_, n)| n.parse::<u64>().ok()) {
                Some(n) => Ok(n + 1),
                None => bail!(
                    "invalid configuration value at berth.nodeid: `ordinal` needs a host name ending in -N \
                     (a StatefulSet pod such as berth-voter-0); this host is {hostname:?}"
                ),
            },
            NodeIdSetting::Named(s) => match s.parse::<u64>() {
                Ok(n) => NodeIdSetting::Id(n).resolve(hostname),
                Err(_) => bail!("invalid configuration value at berth.nodeid: {s:?} (a number from 1, or `ordinal`)"),
            },
        }
    }
}

/// This machine's host name (a pod's name in Kubernetes).
pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
        .unwrap_or_default()
}

/// Addresses given as a YAML list or one comma-separated string (handy in `REGISTRY_*`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(from = "ListOrString")]
pub struct AddrList(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum ListOrString {
    List(Vec<String>),
    One(String),
}

impl From<ListOrString> for AddrList {
    fn from(v: ListOrString) -> Self {
        let items = match v {
            ListOrString::List(l) => l,
            ListOrString::One(s) => s.split(',').map(str::to_string).collect(),
        };
        AddrList(items.into_iter().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect())
    }
}

/// `berth.tls`: PEM files for inter-node mutual TLS.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterTls {
    /// The cluster CA that signs every node's certificate.
    pub ca: Option<PathBuf>,
    /// This node's certificate (chain).
    pub certificate: Option<PathBuf>,
    /// This node's private key.
    pub key: Option<PathBuf>,
}

/// The duration at configuration key `key` (Go syntax), or `default` when it is absent; an
/// error names the key. Zero is refused unless `zero_ok`.
pub fn duration_at(v: &Option<String>, key: &str, default: Duration, zero_ok: bool) -> anyhow::Result<Duration> {
    let d = match v {
        Some(s) => parse_duration(s).map_err(|e| anyhow!("invalid configuration value at {key}: {e}"))?,
        None => default,
    };
    if d.is_zero() && !zero_ok {
        bail!("invalid configuration value at {key}: must be positive");
    }
    Ok(d)
}

/// Parses a Go duration such as `168h`, `1h30m`, `10s`, `500ms`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        bail!("empty duration");
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(|| anyhow!("{s:?}: missing unit"))?;
        let (num, tail) = rest.split_at(num_end);
        let value: f64 = num.parse().map_err(|_| anyhow!("{s:?} is not a duration"))?;
        let unit_end = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => bail!("{s:?}: unknown unit {unit:?} (use ns, us, ms, s, m, h)"),
        };
        total += value * secs;
        rest = tail;
    }
    Ok(Duration::from_secs_f64(total))
}

/// Applies one `REGISTRY_A_B_C=value` override to the tree, matching keys case-insensitively.
fn apply_override(root: &mut Value, path: &[String], raw: &str) {
    let value: Value = serde_norway::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    let mut node = root;
    for (i, seg) in path.iter().enumerate() {
        if !node.is_mapping() {
            *node = Value::Mapping(Default::default());
        }
        let map = node.as_mapping_mut().expect("mapping");
        let key = map
            .keys()
            .find(|k| k.as_str().is_some_and(|k| k.eq_ignore_ascii_case(seg)))
            .cloned()
            .unwrap_or_else(|| Value::String(seg.to_lowercase()));
        if i == path.len() - 1 {
            map.insert(key, value);
            return;
        }
        node = map.entry(key).or_insert(Value::Null);
    }
}

impl Config {
    /// Loads `file` (if any), applies `REGISTRY_*` variables from `env`, and validates.
    /// Returns the config and the unknown keys that were ignored.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> anyhow::Result<(Config, Vec<String>)> {
        let mut tree: Value = match file {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                serde_norway::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
            }
            None => Value::Mapping(Default::default()),
        };
        if tree.is_null() {
            tree = Value::Mapping(Default::default());
        }
        let mut vars: Vec<(String, String)> =
            env.into_iter().filter(|(k, _)| k.starts_with("REGISTRY_") && k.len() > 9).collect();
        vars.sort();
        for (k, v) in vars {
            let path: Vec<String> = k["REGISTRY_".len()..].split('_').map(str::to_string).collect();
            apply_override(&mut tree, &path, &v);
        }
        Self::from_tree(tree)
    }

    fn from_tree(mut tree: Value) -> anyhow::Result<(Config, Vec<String>)> {
        // One schema: the structs below. A key they do not know is an error under `berth:`
        // (Berth's own keys, where a typo must not pass silently) and, elsewhere, a
        // Distribution key Berth does not use: removed with a warning, as Distribution does
        // with keys it does not know. Each pass finds one such key.
        let mut unknown = Vec::new();
        loop {
            match serde_path_to_error::deserialize::<_, Config>(tree.clone()) {
                Ok(cfg) => {
                    cfg.validate()?;
                    return Ok((cfg, unknown));
                }
                Err(e) => {
                    let parent = e.path().to_string();
                    let inner = e.into_inner().to_string();
                    let Some((field, expected)) = unknown_field(&inner) else {
                        bail!("invalid configuration value at {parent}: {inner}");
                    };
                    let mut at: Vec<&str> = parent.split('.').filter(|s| !s.is_empty() && *s != "?").collect();
                    if at.last() != Some(&field.as_str()) {
                        at.push(&field);
                    }
                    let key = at.join(".");
                    if at[0] == "berth" {
                        let hint = nearest(&field, &expected).map(|n| format!("; did you mean {}.{n}?", at[..at.len() - 1].join("."))).unwrap_or_default();
                        bail!("invalid configuration key {key}: Berth has no such key{hint}");
                    }
                    if unknown.contains(&key) || !remove_path(&mut tree, &at) {
                        bail!("invalid configuration value at {key}: {inner}");
                    }
                    unknown.push(key);
                }
            }
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.auth.validate()?;
        self.trusted_proxies()?;
        self.berth.admin.credentials()?;
        Limits::from_config(&self.berth.limits)?;
        Gc::from_config(&self.gc)?;
        Endpoint::from_config(&self.notifications)?;
        let s = &self.storage;
        let drivers = [s.filesystem.is_some(), s.s3.is_some(), s.gcs.is_some(), s.azure.is_some(), s.inmemory.is_some()];
        if drivers.iter().filter(|d| **d).count() > 1 {
            bail!("invalid configuration value at storage: more than one storage driver is configured");
        }
        if s.inmemory.is_some() {
            bail!("invalid configuration value at storage.inmemory: Berth does not keep blobs only in memory; use filesystem");
        }
        if let Some(s3) = &s.s3 {
            if s3.bucket.as_deref().unwrap_or("").is_empty() {
                bail!("invalid configuration value at storage.s3.bucket: required");
            }
            if s3.region.as_deref().unwrap_or("").is_empty() {
                bail!("invalid configuration value at storage.s3.region: required");
            }
            if s3.skipverify == Some(true) {
                bail!("invalid configuration value at storage.s3.skipverify: TLS verification cannot be turned off");
            }
        }
        if let Some(g) = &s.gcs {
            if g.bucket.as_deref().unwrap_or("").is_empty() {
                bail!("invalid configuration value at storage.gcs.bucket: required");
            }
        }
        if let Some(a) = &s.azure {
            if a.accountname.is_none() || a.container.is_none() {
                bail!("invalid configuration value at storage.azure: accountname and container are required");
            }
        }
        let p = &s.maintenance.uploadpurging;
        if let Some(a) = &p.age {
            parse_duration(a).map_err(|e| anyhow!("invalid configuration value at storage.maintenance.uploadpurging.age: {e}"))?;
        }
        if let Some(i) = &p.interval {
            let d = parse_duration(i)
                .map_err(|e| anyhow!("invalid configuration value at storage.maintenance.uploadpurging.interval: {e}"))?;
            if d.is_zero() {
                bail!("invalid configuration value at storage.maintenance.uploadpurging.interval: must be positive");
            }
        }
        if let Some(d) = &self.http.draintimeout {
            parse_duration(d).map_err(|e| anyhow!("invalid configuration value at http.draintimeout: {e}"))?;
        }
        if let Some(addr) = &self.http.addr {
            normalize_addr(addr).map_err(|e| anyhow!("invalid configuration value at http.addr: {e}"))?;
        }
        if let Some(net) = &self.http.net {
            if net != "tcp" {
                bail!("invalid configuration value at http.net: only tcp is supported");
            }
        }
        if let Some(tls) = &self.http.tls {
            if tls.certificate.is_some() != tls.key.is_some() {
                bail!("invalid configuration value at http.tls: certificate and key go together");
            }
            if tls.letsencrypt.is_some() {
                bail!("invalid configuration value at http.tls.letsencrypt: not supported; give certificate and key");
            }
            if let Some(m) = &tls.minimumtls {
                if !matches!(m.as_str(), "tls1.2" | "tls1.3") {
                    bail!("invalid configuration value at http.tls.minimumtls: {m:?} (use tls1.2 or tls1.3)");
                }
            }
        }
        if let Some(d) = self.http.debug.as_ref().and_then(|d| d.addr.as_ref()) {
            normalize_addr(d).map_err(|e| anyhow!("invalid configuration value at http.debug.addr: {e}"))?;
        }
        if let Some(g) = &self.berth.grpcaddr {
            normalize_addr(g).map_err(|e| anyhow!("invalid configuration value at berth.grpcaddr: {e}"))?;
        }
        if self.berth.snapshotlogs == Some(0) {
            bail!("invalid configuration value at berth.snapshotlogs: must be positive");
        }
        self.node_id()?;
        if self.berth.clustertoken.is_some() && self.berth.clustertokenfile.is_some() {
            bail!("invalid configuration value at berth.clustertoken: give the token or berth.clustertokenfile, not both");
        }
        let b = &self.berth;
        let host_port = |p: &str| p.rsplit_once(':').is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok());
        let peers = b.peers.as_ref().map(|p| p.0.as_slice()).unwrap_or_default();
        let join = b.join.as_ref().map(|p| p.0.as_slice()).unwrap_or_default();
        for (key, list) in [("peers", peers), ("join", join)] {
            if let Some(p) = list.iter().find(|p| !host_port(p)) {
                bail!("invalid configuration value at berth.{key}: {p:?} is not host:port");
            }
        }
        if let Some(a) = b.advertiseaddr.as_deref().filter(|a| !host_port(a)) {
            bail!("invalid configuration value at berth.advertiseaddr: {a:?} is not host:port");
        }
        if b.role == Some(Role::Frontend) && !join.is_empty() {
            bail!("invalid configuration value at berth.join: frontends do not join the Raft cluster; give the voters in berth.peers");
        }
        if b.role == Some(Role::Frontend) && peers.is_empty() {
            bail!("invalid configuration value at berth.peers: a frontend needs the gRPC addresses of the voters");
        }
        if b.role == Some(Role::Learner) && join.is_empty() {
            bail!("invalid configuration value at berth.join: a learner joins a cluster; give the voters' gRPC addresses");
        }
        if b.role == Some(Role::Learner) && b.bootstrap == Some(true) {
            bail!("invalid configuration value at berth.bootstrap: a learner never founds a cluster");
        }
        Geo::from_config(&b.geo)?;
        if let Some(t) = &b.tls {
            if t.ca.is_none() || t.certificate.is_none() || t.key.is_none() {
                bail!("invalid configuration value at berth.tls: ca, certificate and key are all required");
            }
        } else if b.insecureplaintext != Some(true) {
            let leaves = |a: &str| !is_loopback(a);
            let grpc_leaves = b.role != Some(Role::Frontend) && b.grpcaddr.as_deref().is_some_and(leaves);
            if grpc_leaves || peers.iter().chain(join).any(|p| leaves(p)) {
                bail!(
                    "invalid configuration value at berth.tls: node-to-node traffic leaves this machine, so it needs \
                     berth.tls (a cluster CA, certificate and key), or berth.insecureplaintext: true to send it in the clear"
                );
            }
        }
        Ok(())
    }

    /// This node's Raft id (`berth.nodeid`, default 1).
    pub fn node_id(&self) -> anyhow::Result<u64> {
        self.berth.nodeid.as_ref().map_or(Ok(1), |n| n.resolve(&hostname()))
    }

    /// Whether this voter founds a new cluster when its Raft data is empty (`berth.bootstrap`).
    pub fn founds_cluster(&self) -> anyhow::Result<bool> {
        let joins = self.berth.join.as_ref().is_some_and(|j| !j.0.is_empty());
        Ok(self.berth.role.unwrap_or_default() == Role::Voter && self.berth.bootstrap.unwrap_or(!joins || self.node_id()? == 1))
    }

    /// Whether deletes are allowed. Berth allows them unless `storage.delete.enabled: false`
    /// (Distribution's default is off; Berth's garbage collection makes deletes safe).
    pub fn delete_enabled(&self) -> bool {
        self.storage.delete.as_ref().and_then(|d| d.enabled).unwrap_or(true)
    }

    /// The proxies whose `X-Forwarded-For` is believed (`berth.trustedproxies`).
    pub fn trusted_proxies(&self) -> anyhow::Result<berth_api::client::TrustedProxies> {
        let items = self.berth.trustedproxies.as_ref().map(|l| l.0.as_slice()).unwrap_or_default();
        berth_api::client::TrustedProxies::parse(items).map_err(|e| anyhow::anyhow!("invalid configuration value at berth.trustedproxies: {e}"))
    }

    /// Whether the registry refuses writes (`storage.maintenance.readonly.enabled`).
    pub fn read_only(&self) -> bool {
        self.storage.maintenance.readonly.as_ref().and_then(|r| r.enabled).unwrap_or(false)
    }
}

/// `:5000` -> `0.0.0.0:5000`; checks the result parses as a socket address.
pub fn normalize_addr(addr: &str) -> anyhow::Result<std::net::SocketAddr> {
    let full = if addr.starts_with(':') { format!("0.0.0.0{addr}") } else { addr.to_string() };
    use std::net::ToSocketAddrs;
    full.to_socket_addrs()
        .map_err(|e| anyhow!("{addr:?}: {e}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr:?} resolves to no address"))
}

/// True when `addr` (`host:port`) names this machine's loopback interface; names are not
/// resolved, only `localhost` counts.
pub fn is_loopback(addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `(field, expected fields)` from serde's "unknown field `x`, expected one of `a`, `b`".
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest.split('`').skip(1).step_by(2).map(str::to_string).collect();
    Some((field.to_string(), expected))
}

/// The candidate closest to `word` by edit distance, if close enough to be a typo.
fn nearest<'a>(word: &str, candidates: &'a [String]) -> Option<&'a str> {
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    };
    candidates
        .iter()
        .map(|c| (distance(word, c), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.as_str())
}

/// Removes the key at `path`; false if there was none.
fn remove_path(node: &mut Value, path: &[&str]) -> bool {
    let Some(map) = node.as_mapping_mut() else { return false };
    let Some(key) = map.keys().find(|k| k.as_str() == Some(path[0])).cloned() else { return false };
    if path.len() == 1 {
        map.remove(&key).is_some()
    } else {
        map.get_mut(&key).is_some_and(|child| remove_path(child, &path[1..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str, env: &[(&str, &str)]) -> anyhow::Result<(Config, Vec<String>)> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yml");
        std::fs::write(&p, yaml).unwrap();
        Config::load(Some(&p), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn distribution_config_and_env_overrides() {
        let yaml = "version: 0.1\nlog:\n  level: debug\nhttp:\n  addr: :5000\n  secret: s3cr3t\n  debug:\n    addr: 127.0.0.1:5001\nstorage:\n  filesystem:\n    rootdirectory: /var/lib/registry\n  delete:\n    enabled: false\n  maintenance:\n    uploadpurging:\n      enabled: true\n      age: 168h\n      interval: 24h\n";
        let (c, unknown) = load(
            yaml,
            &[("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/somewhere"), ("REGISTRY_HTTP_ADDR", "127.0.0.1:6000"), ("PATH", "/bin")],
        )
        .unwrap();
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(c.storage.filesystem.unwrap().rootdirectory.unwrap(), PathBuf::from("/somewhere"));
        assert_eq!(c.http.addr.as_deref(), Some("127.0.0.1:6000"));
        assert_eq!(c.log.level, Some(LogLevel::Debug));
        assert!(!Config::load(None, []).unwrap().0.read_only());
    }

    #[test]
    fn unknown_keys_warn_invalid_values_fail_with_key() {
        let (_, unknown) = load("http:\n  addr: :5000\n  bogus: 1\nstorage:\n  filesystem:\n    rootdirectory: /x\n    extra: y\n", &[]).unwrap();
        assert_eq!(unknown, vec!["http.bogus".to_string(), "storage.filesystem.extra".to_string()]);
        let e = load("log:\n  level: loud\n", &[]).unwrap_err().to_string();
        assert!(e.contains("log.level"), "{e}");
        let e = load("storage:\n  delete:\n    enabled: perhaps\n", &[]).unwrap_err().to_string();
        assert!(e.contains("storage.delete.enabled"), "{e}");
        let e = load("storage:\n  maintenance:\n    uploadpurging:\n      age: soon\n", &[]).unwrap_err().to_string();
        assert!(e.contains("uploadpurging.age"), "{e}");
        let e = load("http:\n  addr: not-an-address\n", &[]).unwrap_err().to_string();
        assert!(e.contains("http.addr"), "{e}");
        let e = load("storage:\n  s3:\n    region: us-east-1\n", &[]).unwrap_err().to_string();
        assert!(e.contains("storage.s3.bucket"), "{e}");
        // A Distribution section Berth does not use warns too.
        let (_, unknown) = load("proxy:\n  remoteurl: https://registry-1.docker.io\n", &[]).unwrap();
        assert_eq!(unknown, vec!["proxy".to_string()]);
    }

    #[test]
    fn typos_in_berths_own_keys_are_errors_that_name_the_nearest_key() {
        for (yaml, env, said) in [
            ("berth:\n  nodid: 3\n", vec![], "berth.nodid: Berth has no such key; did you mean berth.nodeid?"),
            ("", vec![("REGISTRY_BERTH_NODID", "3")], "did you mean berth.nodeid?"),
            ("berth:\n  limits:\n    headertimout: 5s\n", vec![], "did you mean berth.limits.headertimeout?"),
            ("berth:\n  admin:\n    pasword: x\n", vec![], "did you mean berth.admin.password?"),
            ("berth:\n  frobnicate: 1\n", vec![], "berth.frobnicate: Berth has no such key"),
        ] {
            let e = load(yaml, &env).unwrap_err().to_string();
            assert!(e.contains(said), "{yaml} {env:?}: {e}");
        }
        assert!(!load("berth:\n  frobnicate: 1\n", &[]).unwrap_err().to_string().contains("did you mean"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("168h").unwrap(), Duration::from_secs(168 * 3600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("3 days").is_err());
    }

    #[test]
    fn node_ids_from_numbers_and_statefulset_ordinals() {
        let ordinal = NodeIdSetting::Named("ordinal".into());
        assert_eq!(ordinal.resolve("berth-voter-0").unwrap(), 1);
        assert_eq!(ordinal.resolve("berth-voter-4").unwrap(), 5);
        assert!(ordinal.resolve("laptop").unwrap_err().to_string().contains("ending in -N"));
        assert!(ordinal.resolve("berth-voter-x").is_err());
        assert_eq!(NodeIdSetting::Id(3).resolve("x").unwrap(), 3);
        assert_eq!(NodeIdSetting::Named("7".into()).resolve("x").unwrap(), 7);
        assert!(NodeIdSetting::Id(0).resolve("x").is_err());
        assert!(NodeIdSetting::Named("first".into()).resolve("x").is_err());
    }

    #[test]
    fn join_is_for_voters_and_node_1_founds() {
        let cfg = |yaml: &str| load(yaml, &[]).map(|(c, _)| c);
        let c = cfg("berth:\n  nodeid: 2\n  join: 127.0.0.1:1,127.0.0.1:2\n").unwrap();
        assert!(!c.founds_cluster().unwrap());
        let c = cfg("berth:\n  join: [127.0.0.1:1, 127.0.0.1:2]\n").unwrap();
        assert!(c.founds_cluster().unwrap(), "node 1 founds");
        assert!(cfg("berth:\n  nodeid: 2\n").unwrap().founds_cluster().unwrap(), "no join: the lone default");
        let e = cfg("berth:\n  role: frontend\n  peers: 127.0.0.1:1\n  join: 127.0.0.1:1\n").unwrap_err();
        assert!(format!("{e:#}").contains("berth.join"), "{e:#}");
        let e = cfg("berth:\n  join: nothost\n").unwrap_err();
        assert!(format!("{e:#}").contains("not host:port"), "{e:#}");
    }
}
