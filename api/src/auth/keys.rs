//! Public keys that token signatures are checked against, and the ids a token names them by.
//!
//! A key from `rootcertbundle` is found by its libtrust id (what GitLab and Distribution 2.x
//! put in `kid`) and by its RFC 7638 thumbprint (Distribution 3.x); a key from a JWKS file
//! by its own `kid`. A token may instead carry an `x5c` chain, which must end at a
//! certificate of the bundle.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use x509_parser::prelude::{FromDer as _, X509Certificate};

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_ED25519: &str = "1.3.101.112";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

/// A public key's material, as a JWK describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyMaterial {
    /// RSA modulus and exponent (big-endian, no leading zeros).
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An EC point on P-256 or P-384.
    Ec { crv: &'static str, x: Vec<u8>, y: Vec<u8> },
    /// An Ed25519 key.
    Ed25519 { x: Vec<u8> },
}

/// A key that verifies tokens.
pub struct PublicKey {
    /// Its material.
    pub material: KeyMaterial,
    /// The verifier jsonwebtoken uses.
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey").field("material", &self.material).finish()
    }
}

fn strip_zeros(b: &[u8]) -> Vec<u8> {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len().saturating_sub(1));
    b[i..].to_vec()
}

impl PublicKey {
    /// Builds a key from its material.
    pub fn new(material: KeyMaterial) -> Result<PublicKey, String> {
        let decoding = match &material {
            KeyMaterial::Rsa { n, e } => {
                if n.len() < 256 {
                    return Err(format!("RSA key of {} bits is too small (2048 at least)", n.len() * 8));
                }
                DecodingKey::from_rsa_raw_components(n, e)
            }
            KeyMaterial::Ec { crv, x, y } => {
                let len = if *crv == "P-256" { 32 } else { 48 };
                if x.len() > len || y.len() > len {
                    return Err(format!("EC point does not fit {crv}"));
                }
                let mut point = vec![4u8];
                for c in [x, y] {
                    point.extend(std::iter::repeat_n(0, len - c.len()));
                    point.extend_from_slice(c);
                }
                DecodingKey::from_ec_der(&point)
            }
            KeyMaterial::Ed25519 { x } => DecodingKey::from_ed_der(x),
        };
        Ok(PublicKey { material, decoding })
    }

    /// Reads a DER SubjectPublicKeyInfo.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, String> {
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der).map_err(|e| format!("malformed public key: {e}"))?;
        Self::from_spki(&spki)
    }

    /// Reads the key of a DER SubjectPublicKeyInfo's parts.
    fn from_spki(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<PublicKey, String> {
        let alg = spki.algorithm.algorithm.to_id_string();
        let data: &[u8] = &spki.subject_public_key.data;
        let material = match alg.as_str() {
            OID_RSA => match spki.parsed() {
                Ok(x509_parser::public_key::PublicKey::RSA(k)) => {
                    KeyMaterial::Rsa { n: strip_zeros(k.modulus), e: strip_zeros(k.exponent) }
                }
                _ => return Err("malformed RSA public key".into()),
            },
            OID_EC => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                let (crv, len) = match curve.as_str() {
                    OID_P256 => ("P-256", 32),
                    OID_P384 => ("P-384", 48),
                    other => return Err(format!("EC curve {other} is not supported (P-256 and P-384 are)")),
                };
                if data.len() != 1 + 2 * len || data[0] != 4 {
                    return Err("EC public key is not an uncompressed point".into());
                }
                KeyMaterial::Ec { crv, x: data[1..1 + len].to_vec(), y: data[1 + len..].to_vec() }
            }
            OID_ED25519 => KeyMaterial::Ed25519 { x: data.to_vec() },
            other => return Err(format!("public key algorithm {other} is not supported")),
        };
        PublicKey::new(material)
    }

    /// The signature algorithms this key can verify; HMAC is never among them, so a token
    /// "signed" with the public key as an HMAC secret is refused.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        use Algorithm::*;
        match &self.material {
            KeyMaterial::Rsa { .. } => vec![RS256, RS384, RS512, PS256, PS384, PS512],
            KeyMaterial::Ec { crv: "P-256", .. } => vec![ES256],
            KeyMaterial::Ec { .. } => vec![ES384],
            KeyMaterial::Ed25519 { .. } => vec![EdDSA],
        }
    }

    /// RFC 7638 thumbprints: the standard one and, where it differs, the one Distribution 3.x
    /// computes from EC coordinates without their leading zeros.
    pub fn thumbprints(&self) -> Vec<String> {
        let b = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let forms = match &self.material {
            KeyMaterial::Rsa { n, e } => vec![format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b(e), b(n))],
            KeyMaterial::Ec { crv, x, y } => {
                let len = if *crv == "P-256" { 32 } else { 48 };
                let pad = |c: &[u8]| {
                    let mut v = vec![0u8; len - c.len()];
                    v.extend_from_slice(c);
                    v
                };
                let mut f = vec![format!(r#"{{"crv":"{crv}","kty":"EC","x":"{}","y":"{}"}}"#, b(&pad(x)), b(&pad(y)))];
                let short = format!(r#"{{"crv":"{crv}","kty":"EC","x":"{}","y":"{}"}}"#, b(&strip_zeros(x)), b(&strip_zeros(y)));
                if short != f[0] {
                    f.push(short);
                }
                f
            }
            KeyMaterial::Ed25519 { x } => vec![format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b(x))],
        };
        forms.iter().map(|f| URL_SAFE_NO_PAD.encode(Sha256::digest(f.as_bytes()))).collect()
    }

    /// Reads a key from a JWK (`kty` RSA, EC or OKP).
    pub fn from_jwk(jwk: &serde_json::Value) -> Result<PublicKey, String> {
        let field = |k: &str| -> Result<Vec<u8>, String> {
            let s = jwk.get(k).and_then(|v| v.as_str()).ok_or_else(|| format!("JWK without `{k}`"))?;
            URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).map_err(|_| format!("JWK `{k}` is not base64url"))
        };
        let material = match jwk.get("kty").and_then(|v| v.as_str()) {
            Some("RSA") => KeyMaterial::Rsa { n: strip_zeros(&field("n")?), e: strip_zeros(&field("e")?) },
            Some("EC") => {
                let crv = match jwk.get("crv").and_then(|v| v.as_str()) {
                    Some("P-256") => "P-256",
                    Some("P-384") => "P-384",
                    other => return Err(format!("JWK curve {other:?} is not supported")),
                };
                KeyMaterial::Ec { crv, x: field("x")?, y: field("y")? }
            }
            Some("OKP") if jwk.get("crv").and_then(|v| v.as_str()) == Some("Ed25519") => {
                KeyMaterial::Ed25519 { x: field("x")? }
            }
            other => return Err(format!("JWK key type {other:?} is not supported")),
        };
        PublicKey::new(material)
    }
}

/// Distribution 2.x's (libtrust's) key id: the first 240 bits of SHA-256 over the DER
/// SubjectPublicKeyInfo, base32 without padding, in twelve groups of four joined by `:`.
pub fn libtrust_id(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let hash = Sha256::digest(spki_der);
    let bytes = &hash[..30];
    let mut out = String::with_capacity(59);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    // 30 bytes are exactly 48 base32 characters: nothing is left over.
    let chars: Vec<char> = out.chars().collect();
    chars.chunks(4).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>().join(":")
}

/// The keys a token may be signed with.
#[derive(Default)]
pub struct TrustedKeys {
    by_id: HashMap<String, Arc<PublicKey>>,
    roots: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKeys").field("ids", &self.by_id.len()).field("roots", &self.roots.len()).finish()
    }
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<serde_json::Value>,
}

impl TrustedKeys {
    /// How many distinct ids find a key.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Adds every certificate of a PEM bundle: its key under its libtrust id and thumbprints,
    /// and the certificate as a root for `x5c` chains.
    pub fn add_cert_bundle(&mut self, pem: &[u8]) -> Result<usize, String> {
        let mut n = 0;
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let der = cert.map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
            let (_, parsed) = X509Certificate::from_der(&der).map_err(|e| format!("certificate {}: {e}", n + 1))?;
            let spki = parsed.public_key();
            let key = Arc::new(PublicKey::from_spki(spki).map_err(|e| format!("certificate {}: {e}", n + 1))?);
            self.by_id.insert(libtrust_id(spki.raw), key.clone());
            for t in key.thumbprints() {
                self.by_id.insert(t, key.clone());
            }
            self.roots.push(der.into_owned());
            n += 1;
        }
        if n == 0 {
            return Err("no certificate in the bundle".into());
        }
        Ok(n)
    }

    /// Adds every key of a JWKS document under its `kid` (and its thumbprint).
    pub fn add_jwks(&mut self, json: &[u8]) -> Result<usize, String> {
        let set: Jwks = serde_json::from_slice(json).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut n = 0;
        for (i, jwk) in set.keys.iter().enumerate() {
            let key = Arc::new(PublicKey::from_jwk(jwk).map_err(|e| format!("key {}: {e}", i + 1))?);
            if let Some(kid) = jwk.get("kid").and_then(|v| v.as_str()) {
                self.by_id.insert(kid.to_string(), key.clone());
            }
            for t in key.thumbprints() {
                self.by_id.insert(t, key.clone());
            }
            n += 1;
        }
        Ok(n)
    }

    /// Adds one key under an id (Berth's own signing keys).
    pub fn insert(&mut self, id: String, key: Arc<PublicKey>) {
        self.by_id.insert(id, key);
    }

    /// The key with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<PublicKey>> {
        self.by_id.get(id)
    }

    /// The leaf key of an `x5c` chain (base64 DER, leaf first) that ends at a trusted
    /// certificate and is valid at `now`.
    pub fn verify_chain(&self, x5c: &[String], now: std::time::SystemTime) -> Result<PublicKey, String> {
        if self.roots.is_empty() {
            return Err("x5c given but no rootcertbundle is configured".into());
        }
        let certs: Vec<Vec<u8>> = x5c
            .iter()
            .map(|c| base64::engine::general_purpose::STANDARD.decode(c).map_err(|_| "x5c entry is not base64".to_string()))
            .collect::<Result<_, _>>()?;
        let (leaf, intermediates) = certs.split_first().ok_or("empty x5c chain")?;
        let leaf_der = CertificateDer::from(leaf.as_slice());
        let inter: Vec<CertificateDer<'_>> = intermediates.iter().map(|c| CertificateDer::from(c.as_slice())).collect();
        let anchors: Vec<TrustAnchor<'_>> =
            self.roots.iter().filter_map(|r| webpki::anchor_from_trusted_cert(r).ok()).collect();
        let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| format!("x5c leaf: {e}"))?;
        let time = UnixTime::since_unix_epoch(now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default());
        ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &anchors, &inter, time, AnyUsage, None, None)
            .map_err(|e| format!("x5c chain not trusted: {e}"))?;
        let (_, parsed) = X509Certificate::from_der(leaf).map_err(|e| format!("x5c leaf: {e}"))?;
        PublicKey::from_spki(parsed.public_key())
    }
}

/// Distribution accepts a signing certificate whatever extended key usage it names.
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, _: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtrust_id_has_the_docker_shape() {
        let id = libtrust_id(b"anything");
        assert_eq!(id.len(), 59);
        assert_eq!(id.split(':').count(), 12);
        assert!(id.split(':').all(|g| g.len() == 4 && g.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))));
    }

    #[test]
    fn rfc7638_example_thumbprint() {
        // RFC 7638 section 3.1.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let jwk = serde_json::json!({"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"});
        let key = PublicKey::from_jwk(&jwk).unwrap();
        assert_eq!(key.thumbprints(), vec!["NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs".to_string()]);
        let mut keys = TrustedKeys::default();
        keys.add_jwks(serde_json::json!({"keys": [jwk]}).to_string().as_bytes()).unwrap();
        assert!(keys.get("2011-04-29").is_some());
        assert!(keys.get("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs").is_some());
    }

    #[test]
    fn small_rsa_keys_and_unknown_types_are_refused() {
        let jwk = serde_json::json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"});
        assert!(PublicKey::from_jwk(&jwk).unwrap_err().contains("too small"));
        assert!(PublicKey::from_jwk(&serde_json::json!({"kty": "oct", "k": "AA"})).is_err());
        assert!(TrustedKeys::default().add_cert_bundle(b"not pem").is_err());
    }
}
