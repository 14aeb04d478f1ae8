//! Bearer token validation as Distribution does it (`registry/auth/token`): the key named by
//! the token's header, the signature, then issuer, audience and times with 60 s of leeway.

use std::time::{SystemTime, UNIX_EPOCH};

pub use jsonwebtoken::Algorithm;
use jsonwebtoken::Validation;
use serde::Deserialize;

use super::keys::{PublicKey, TrustedKeys};
use super::scope::Scope;

/// Clock skew forgiven on `exp` and `nbf`, as in Distribution.
pub const LEEWAY_SECS: u64 = 60;

/// An algorithm by its JOSE name; HMAC is refused (a shared secret is not something a
/// registry can hold without being able to mint tokens itself).
pub fn algorithm(name: &str) -> Result<Algorithm, String> {
    use Algorithm::*;
    Ok(match name {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        "HS256" | "HS384" | "HS512" => return Err(format!("{name}: HMAC algorithms are not accepted")),
        other => return Err(format!("{other}: unknown or unsupported algorithm")),
    })
}

/// Why a token was refused; the label of the refusal metric and audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT, or an algorithm that is not known (`none` among them).
    Malformed,
    /// No trusted key has the id the header names, or an `x5c` chain is not trusted.
    UnknownKey,
    /// The algorithm does not fit the key (HMAC with a public key) or is not allowed.
    Algorithm,
    /// The signature does not verify.
    Signature,
    /// `iss` is not the configured issuer.
    Issuer,
    /// `aud` does not name this service.
    Audience,
    /// Past `exp` (plus leeway), or no `exp` at all.
    Expired,
    /// Before `nbf` (less leeway).
    NotYetValid,
}

impl TokenError {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::UnknownKey => "token_unknown_key",
            TokenError::Algorithm => "token_algorithm",
            TokenError::Signature => "token_signature",
            TokenError::Issuer => "token_issuer",
            TokenError::Audience => "token_audience",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
        }
    }

    /// The `error=` of the challenge: Distribution sends `invalid_token` for everything but a
    /// signature that does not verify.
    pub fn challenge_error(self) -> Option<&'static str> {
        match self {
            TokenError::Signature => None,
            _ => Some("invalid_token"),
        }
    }
}

/// An `access` claim entry.
#[derive(Debug, Clone, Deserialize)]
struct AccessEntry {
    #[serde(rename = "type")]
    kind: String,
    name: String,
    #[serde(default)]
    actions: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct RawClaims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    access: Vec<AccessEntry>,
    #[serde(default)]
    berth: Option<serde_json::Value>,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The subject (`None` for anonymous and deploy-token grants from GitLab).
    pub subject: Option<String>,
    /// The access granted.
    pub access: Vec<Scope>,
    /// Expiry, seconds since the epoch.
    pub expires: u64,
    /// The credential behind a token Berth issued itself.
    pub berth: Option<serde_json::Value>,
}

/// Checks tokens for one service and issuer.
#[derive(Debug)]
pub struct TokenVerifier {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud` (the `service`).
    pub service: String,
    /// `signingalgorithms`: when set, only these.
    pub algorithms: Option<Vec<Algorithm>>,
}

impl TokenVerifier {
    /// Validates `token` at `now` against `keys`.
    pub fn verify(&self, keys: &TrustedKeys, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        let chain_key;
        let key: &PublicKey = if let Some(x5c) = header.x5c.as_ref().filter(|c| !c.is_empty()) {
            chain_key = keys.verify_chain(x5c, now).map_err(|_| TokenError::UnknownKey)?;
            &chain_key
        } else if let Some(jwk) = &header.jwk {
            let embedded = serde_json::to_value(jwk).map_err(|_| TokenError::Malformed)?;
            if let Some(x5c) = embedded.get("x5c").and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok()) {
                chain_key = keys.verify_chain(&x5c, now).map_err(|_| TokenError::UnknownKey)?;
                &chain_key
            } else {
                // A key the token carries is never trusted for itself: it only names a trusted
                // one, which must be the same key.
                let given = PublicKey::from_jwk(&embedded).map_err(|_| TokenError::UnknownKey)?;
                let ids = jwk.common.key_id.iter().cloned().chain(given.thumbprints());
                let found = ids.filter_map(|id| keys.get(&id)).next().ok_or(TokenError::UnknownKey)?;
                if found.material != given.material {
                    return Err(TokenError::UnknownKey);
                }
                found
            }
        } else if let Some(kid) = &header.kid {
            keys.get(kid).ok_or(TokenError::UnknownKey)?
        } else {
            return Err(TokenError::UnknownKey);
        };
        if !key.algorithms().contains(&header.alg) || self.algorithms.as_ref().is_some_and(|a| !a.contains(&header.alg)) {
            return Err(TokenError::Algorithm);
        }
        let mut v = Validation::new(header.alg);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<RawClaims>(token, &key.decoding, &v).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::Signature,
            jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => TokenError::Algorithm,
            _ => TokenError::Malformed,
        })?;
        let c = data.claims;
        if c.iss.as_deref() != Some(self.issuer.as_str()) {
            return Err(TokenError::Issuer);
        }
        let aud_ok = match &c.aud {
            Some(serde_json::Value::String(s)) => *s == self.service,
            Some(serde_json::Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(self.service.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(TokenError::Audience);
        }
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        let exp = c.exp.ok_or(TokenError::Expired)?;
        if now > exp + LEEWAY_SECS as f64 {
            return Err(TokenError::Expired);
        }
        if c.nbf.is_some_and(|nbf| now < nbf - LEEWAY_SECS as f64) {
            return Err(TokenError::NotYetValid);
        }
        let access = c
            .access
            .into_iter()
            .map(|a| Scope {
                // `repository(plugin)` is the same resource as `repository` to Distribution.
                kind: a.kind.split('(').next().unwrap_or_default().to_string(),
                name: a.name,
                actions: a.actions,
            })
            .collect();
        Ok(Claims { subject: c.sub.filter(|s| !s.is_empty()), access, expires: exp.max(0.0) as u64, berth: c.berth })
    }
}
