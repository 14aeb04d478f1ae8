//! Manifest media types and parsing: what a manifest references, its subject and artifact type.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::Digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 1 (refused).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Signed Docker schema 1 (refused).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// Largest manifest body accepted unless configured otherwise (`berth.limits.maxmanifestbytes`;
/// Distribution's limit too).
pub const DEFAULT_MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// The most `berth.limits.maxmanifestbytes` may allow: a manifest travels in one Raft entry,
/// and Raft messages between nodes are limited to 64 MiB.
pub const MAX_MANIFEST_BYTES: usize = 32 * 1024 * 1024;

/// Why a manifest body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// Not valid JSON or not a valid manifest of its type.
    #[error("{0}")]
    Invalid(String),
    /// A media type Berth does not store (schema 1, unknown types).
    #[error("{0}")]
    Unsupported(String),
}

/// A validated manifest: the facts the registry keeps about it besides the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    /// The media type it is served with.
    pub media_type: String,
    /// Blobs it references that must be present in the repository (config and layers).
    pub blobs: Vec<Digest>,
    /// Manifests it references (children of an index) that must be present.
    pub manifests: Vec<Digest>,
    /// The manifest it refers to, if any (`subject`).
    pub subject: Option<Digest>,
    /// `artifactType`, or the config media type of an image manifest, for the referrers API.
    pub artifact_type: Option<String>,
    /// Top-level annotations, shown in referrers listings.
    pub annotations: BTreeMap<String, String>,
    /// The config blob's digest for image manifests.
    pub config: Option<Digest>,
}

fn invalid(msg: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(msg.into())
}

/// Reads a descriptor's digest, checking its shape (`mediaType`, `digest`, `size`).
fn descriptor_digest(v: &Value, what: &str) -> Result<Digest, ManifestError> {
    let obj = v.as_object().ok_or_else(|| invalid(format!("{what} is not an object")))?;
    let d = obj
        .get("digest")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(format!("{what} has no digest")))?;
    let digest = Digest::parse(d).map_err(|e| invalid(format!("{what}: {e}")))?;
    match obj.get("size") {
        Some(s) if s.as_u64().is_some() => {}
        _ => return Err(invalid(format!("{what} has no valid size"))),
    }
    match obj.get("mediaType") {
        Some(Value::String(_)) => {}
        None => return Err(invalid(format!("{what} has no mediaType"))),
        _ => return Err(invalid(format!("{what} mediaType is not a string"))),
    }
    Ok(digest)
}

fn is_known(mt: &str) -> bool {
    matches!(mt, OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_LIST)
}

/// Any JSON value whose objects, at every depth, never repeat a key.
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueKeysVisitor)
    }
}

struct UniqueKeysVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueKeys, A::Error> {
        while seq.next_element::<UniqueKeys>()?.is_some() {}
        Ok(UniqueKeys)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(UniqueKeys)
    }
}

/// Parses and validates a manifest body. `content_type` is the request's `Content-Type`.
pub fn parse_manifest(content_type: Option<&str>, body: &[u8]) -> Result<ParsedManifest, ManifestError> {
    if body.len() > MAX_MANIFEST_BYTES {
        return Err(invalid(format!("manifest is larger than {MAX_MANIFEST_BYTES} bytes")));
    }
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim())
        .filter(|c| !c.is_empty());
    if matches!(content_type, Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED)) {
        return Err(ManifestError::Unsupported(
            "Docker schema 1 manifests are not supported; push schema 2 or OCI".into(),
        ));
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
    // Parsers disagree on which of two equal keys wins, so such a manifest could mean one thing
    // to Berth and another to a client that pulls it.
    serde_json::from_slice::<UniqueKeys>(body).map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
    let obj = v.as_object().ok_or_else(|| invalid("manifest is not a JSON object"))?;
    match obj.get("schemaVersion").and_then(Value::as_u64) {
        Some(2) => {}
        Some(1) => {
            return Err(ManifestError::Unsupported(
                "Docker schema 1 manifests are not supported; push schema 2 or OCI".into(),
            ))
        }
        _ => return Err(invalid("schemaVersion must be 2")),
    }
    let body_type = match obj.get("mediaType") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(invalid("mediaType is not a string")),
    };
    let media_type = match (content_type, body_type) {
        (Some(ct), Some(bt)) if is_known(ct) && ct != bt => {
            return Err(invalid(format!("Content-Type {ct} does not match the manifest's mediaType {bt}")))
        }
        (Some(ct), _) if is_known(ct) => ct.to_string(),
        (_, Some(bt)) => bt.to_string(),
        (_, None) if obj.contains_key("manifests") => OCI_INDEX.to_string(),
        (_, None) if obj.contains_key("config") => OCI_MANIFEST.to_string(),
        _ => return Err(invalid("cannot tell the manifest's media type")),
    };
    if !is_known(&media_type) {
        return Err(ManifestError::Unsupported(format!("unsupported manifest media type {media_type}")));
    }

    let annotations = match obj.get("annotations") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                v.as_str()
                    .map(|s| (k.clone(), s.to_string()))
                    .ok_or_else(|| invalid(format!("annotation {k} is not a string")))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("annotations is not an object")),
    };
    let subject = match obj.get("subject") {
        None | Some(Value::Null) => None,
        Some(s) => Some(descriptor_digest(s, "subject")?),
    };
    let mut artifact_type = match obj.get("artifactType") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(invalid("artifactType is not a string")),
    };

    let mut blobs = Vec::new();
    let mut manifests = Vec::new();
    let mut config = None;
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let cfg = obj.get("config").ok_or_else(|| invalid("image manifest has no config"))?;
            let cfg_digest = descriptor_digest(cfg, "config")?;
            if artifact_type.is_none() {
                artifact_type = cfg.get("mediaType").and_then(Value::as_str).map(str::to_string);
            }
            blobs.push(cfg_digest.clone());
            config = Some(cfg_digest);
            let layers = match obj.get("layers") {
                Some(Value::Array(a)) => a.as_slice(),
                None if media_type == OCI_MANIFEST => &[],
                _ => return Err(invalid("layers is not an array")),
            };
            for (i, l) in layers.iter().enumerate() {
                let d = descriptor_digest(l, &format!("layers[{i}]"))?;
                // Foreign (non-distributable) layers live elsewhere and are not checked.
                let foreign = l.get("urls").and_then(Value::as_array).is_some_and(|u| !u.is_empty());
                if !foreign {
                    blobs.push(d);
                }
            }
        }
        _ => {
            let list = match obj.get("manifests") {
                Some(Value::Array(a)) => a,
                _ => return Err(invalid("index has no manifests array")),
            };
            for (i, m) in list.iter().enumerate() {
                manifests.push(descriptor_digest(m, &format!("manifests[{i}]"))?);
            }
        }
    }
    blobs.sort();
    blobs.dedup();
    manifests.sort();
    manifests.dedup();
    Ok(ParsedManifest { media_type, blobs, manifests, subject, artifact_type, annotations, config })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let layer = format!(r#"{{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": "{}", "size": 1}}"#, d('b'));
        let ok = format!(
            r#"{{"schemaVersion": 2, "mediaType": "{OCI_MANIFEST}", "config": {{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "{}", "size": 2}}, "layers": [{layer}]}}"#,
            d('a')
        );
        assert!(parse_manifest(Some(OCI_MANIFEST), ok.as_bytes()).is_ok());
        let top = ok.replacen(r#""schemaVersion": 2,"#, r#""schemaVersion": 2, "schemaVersion": 2,"#, 1);
        let deep = ok.replacen(r#""size": 1}"#, &format!(r#""size": 1, "digest": "{}"}}"#, d('c')), 1);
        let in_annotations = ok.replacen(r#""layers""#, r#""annotations": {"a": "1", "a": "2"}, "layers""#, 1);
        for bad in [top, deep, in_annotations] {
            match parse_manifest(Some(OCI_MANIFEST), bad.as_bytes()) {
                Err(ManifestError::Invalid(m)) => assert!(m.contains("duplicate key"), "{m}"),
                other => panic!("accepted {bad}: {other:?}"),
            }
        }
    }

    proptest::proptest! {
        /// Whatever bytes arrive, parsing answers (no panic) and never accepts a body that is
        /// not a JSON object.
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if parse_manifest(Some(OCI_MANIFEST), &body).is_ok() {
                let v: Value = serde_json::from_slice(&body).unwrap();
                proptest::prop_assert!(v.is_object());
            }
        }
    }

    #[test]
    fn image_manifest() {
        let body = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d('a'), "size": 2},
            "layers": [{"mediaType": "x", "digest": d('b'), "size": 3},
                       {"mediaType": "x", "digest": d('c'), "size": 3, "urls": ["https://example.com"]}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": d('e'), "size": 9},
        });
        let p = parse_manifest(Some(OCI_MANIFEST), body.to_string().as_bytes()).unwrap();
        assert_eq!(p.blobs.len(), 2);
        assert_eq!(p.subject.unwrap().to_string(), d('e'));
        assert_eq!(p.artifact_type.as_deref(), Some("application/vnd.oci.image.config.v1+json"));
    }

    #[test]
    fn refusals() {
        assert!(matches!(parse_manifest(None, b"{"), Err(ManifestError::Invalid(_))));
        assert!(matches!(
            parse_manifest(None, br#"{"schemaVersion":1,"name":"x"}"#),
            Err(ManifestError::Unsupported(_))
        ));
        let idx = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []});
        assert!(parse_manifest(Some(OCI_MANIFEST), idx.to_string().as_bytes()).is_err());
        let bad_digest = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": "sha256:zz", "size": 1}]});
        assert!(parse_manifest(None, bad_digest.to_string().as_bytes()).is_err());
    }
}
