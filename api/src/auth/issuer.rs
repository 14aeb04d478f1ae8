//! Berth as its own token issuer (GitLab's `/jwt/auth`): checks a login against identity,
//! grants the intersection of what was asked and what the policy allows, and signs a token
//! (ES256, or RS256 with an RSA key an operator brought) with the cluster's current key. The token names the credential it came from, so a
//! revoked token, or a finished job, stops working at once on every node, not when the JWT
//! expires.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use berth_proto::identity::{Identity, TokenKind};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::keys::TrustedKeys;
use super::signing::SigningPair;
use super::policy::{self, Principal};
use super::scope::Scope;

/// How long an issued token lives (GitLab's default).
pub const TOKEN_LIFETIME_SECS: u64 = 300;
/// The username CI job tokens log in with.
pub const JOB_USER: &str = "gitlab-ci-token";

/// SHA-256 of a token secret, as identity stores it.
pub fn token_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A new random token secret with a prefix saying what it is (secret scanners can find them).
pub fn new_secret(prefix: &str) -> String {
    let bytes: [u8; 24] = rand::random();
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Identity prepared for deciding requests: verification keys by id, tokens by hash, and
/// the current signing key. Built once per identity version.
pub struct IdentityView {
    /// The identity it was built from.
    pub identity: Arc<Identity>,
    /// Every signing key's public half, by `kid`.
    pub keys: TrustedKeys,
    signer: Option<(String, SigningPair)>,
    by_hash: HashMap<Vec<u8>, u64>,
    /// A bcrypt hash checked when the user is unknown, so timing does not tell.
    decoy: Arc<str>,
}

/// The outcome of a login before any password hash is checked.
pub enum Login {
    /// Decided: this principal.
    Principal(Principal),
    /// The password must match this bcrypt hash to be this user.
    Password {
        /// The user.
        user: u64,
        /// Their bcrypt hash.
        hash: String,
    },
    /// No such credential (a decoy hash is still checked, for timing).
    Unknown {
        /// A hash of the usual cost.
        decoy: Arc<str>,
    },
}

impl IdentityView {
    /// Prepares `identity`; `decoy` is a bcrypt hash of the usual cost.
    pub fn new(identity: Arc<Identity>, decoy: Arc<str>) -> IdentityView {
        let mut keys = TrustedKeys::default();
        for k in &identity.signing_keys {
            match SigningPair::from_pkcs8(&k.pkcs8).and_then(|p| p.public()) {
                Ok(p) => keys.insert(k.kid.clone(), Arc::new(p)),
                Err(e) => tracing::warn!(kid = %k.kid, "a token signing key in the cluster state is unusable: {e}"),
            }
        }
        let signer = identity.current_key().and_then(|k| Some((k.kid.clone(), SigningPair::from_pkcs8(&k.pkcs8).ok()?)));
        let by_hash = identity.tokens.values().map(|t| (t.hash.clone(), t.id)).collect();
        IdentityView { identity, keys, signer, by_hash, decoy }
    }

    /// The active token whose secret this is.
    pub fn token_by_secret(&self, secret: &str, now_ms: u64) -> Option<&berth_proto::identity::TokenRecord> {
        self.by_hash.get(&token_hash(secret)).and_then(|t| self.identity.tokens.get(t)).filter(|t| t.active(now_ms))
    }

    /// Which principal `user`/`secret` names, as GitLab tries them: a job token (user
    /// `gitlab-ci-token`), a personal access token (user ignored), a deploy token (its own
    /// user), then the user's password.
    pub fn login(&self, user: &str, secret: &str, now_ms: u64) -> Login {
        let id = &self.identity;
        let unknown = Login::Unknown { decoy: self.decoy.clone() };
        let token = self.token_by_secret(secret, now_ms);
        if user == JOB_USER {
            return match token {
                Some(t) if matches!(t.kind, TokenKind::Job { .. }) => Login::Principal(Principal::Job { token: t.id }),
                _ => unknown,
            };
        }
        if let Some(t) = token {
            match &t.kind {
                TokenKind::Personal { user: u } => return Login::Principal(Principal::User { user: *u, token: Some(t.id) }),
                k if k.deploy_username() == Some(user) => return Login::Principal(Principal::Deploy { token: t.id }),
                _ => {}
            }
        }
        match id.user_by_name(user) {
            Some(u) => match &u.password_hash {
                Some(h) => Login::Password { user: u.id, hash: h.clone() },
                None => unknown,
            },
            None => unknown,
        }
    }

    /// What `who` gets of `requested`: each repository scope cut to the allowed actions
    /// (`*` only with pull, push and delete all allowed), `registry:catalog:*` for
    /// administrators only (as GitLab: the catalog names every repository); scopes left with no
    /// action are dropped.
    pub fn grant(&self, who: &Principal, requested: &[Scope], now_ms: u64) -> Vec<Scope> {
        let id = &self.identity;
        let mut out: Vec<Scope> = vec![];
        for s in requested {
            let actions: Vec<String> = match s.kind.as_str() {
                "repository" => {
                    let allowed = policy::allowed(id, who, &s.name, now_ms);
                    s.actions
                        .iter()
                        .filter(|a| allowed.contains(&a.as_str()) || (a.as_str() == "*" && allowed.len() == 3))
                        .cloned()
                        .collect()
                }
                "registry" if s.name == "catalog" && who.is_admin(id) && who.still_valid(id, now_ms) => {
                    s.actions.iter().filter(|a| *a == "*").cloned().collect()
                }
                _ => vec![],
            };
            if actions.is_empty() {
                continue;
            }
            match out.iter_mut().find(|o| o.kind == s.kind && o.name == s.name) {
                Some(o) => o.actions.extend(actions.into_iter().filter(|a| !o.actions.contains(a)).collect::<Vec<_>>()),
                None => out.push(Scope { kind: s.kind.clone(), name: s.name.clone(), actions }),
            }
        }
        out
    }

    /// Signs a token for `who` granting `access`, or `None` when the cluster has no key yet.
    pub fn mint(&self, issuer: &str, service: &str, who: &Principal, access: &[Scope], now_secs: u64) -> Option<String> {
        let (kid, key) = self.signer.as_ref()?;
        let claims = MintedClaims {
            iss: issuer,
            sub: who.subject(&self.identity),
            aud: service,
            iat: now_secs,
            nbf: now_secs.saturating_sub(5),
            exp: now_secs + TOKEN_LIFETIME_SECS,
            jti: format!("{:032x}", rand::random::<u128>()),
            access: access.iter().map(|s| AccessClaim { kind: &s.kind, name: &s.name, actions: &s.actions }).collect(),
            berth: who,
        };
        key.sign_jws(kid, &serde_json::to_vec(&claims).ok()?).ok()
    }
}

#[derive(Serialize)]
struct AccessClaim<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    name: &'a str,
    actions: &'a [String],
}

#[derive(Serialize)]
struct MintedClaims<'a> {
    iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    aud: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: String,
    access: Vec<AccessClaim<'a>>,
    /// The credential behind the token, checked again on every request.
    berth: &'a Principal,
}

/// Reads the `berth` claim of a token Berth issued.
pub fn principal_of(claim: Option<&serde_json::Value>) -> Option<Principal> {
    serde_json::from_value(claim?.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::TokenVerifier;
    use berth_proto::identity::{Project, Role, TokenRecord, TokenScope, User, Visibility};

    #[test]
    fn login_grant_mint_verify() {
        let (kid, pkcs8) = crate::auth::signing::generate_key();
        assert_eq!(kid.len(), 59);
        let mut id = Identity::default();
        id.users.insert(1, User { id: 1, username: "dev".into(), password_hash: Some("$2y$04$x".into()), admin: false, created_ms: 0 });
        id.projects.insert(2, Project { id: 2, path: "grp/app".into(), visibility: Visibility::Private, created_ms: 0 });
        id.members.insert((2, 1), Role::Developer);
        let secret = new_secret("berth_pat_");
        id.tokens.insert(3, TokenRecord {
            id: 3,
            kind: TokenKind::Personal { user: 1 },
            name: "ci".into(),
            hash: token_hash(&secret),
            scopes: vec![TokenScope::ReadRegistry],
            created_ms: 0,
            expires_ms: None,
            revoked: false,
        });
        id.signing_keys.push(berth_proto::identity::SigningKey { kid: kid.clone(), pkcs8, created_ms: 0, retired_ms: None });
        let view = IdentityView::new(Arc::new(id), Arc::from("$2y$04$decoy"));
        let Login::Principal(who) = view.login("anything", &secret, 1) else { panic!("PAT not found") };
        assert_eq!(who, Principal::User { user: 1, token: Some(3) });
        assert!(matches!(view.login("dev", "password", 1), Login::Password { user: 1, .. }));
        assert!(matches!(view.login("nobody", "password", 1), Login::Unknown { .. }));
        assert!(matches!(view.login(JOB_USER, &secret, 1), Login::Unknown { .. }), "a PAT is not a job token");
        let asked = Scope::parse_all(["repository:grp/app:pull,push", "repository:other:pull", "registry:catalog:*"]);
        let granted = view.grant(&who, &asked, 1);
        assert_eq!(granted, vec![Scope::repository("grp/app", &["pull"])], "no catalog for a non-administrator");
        let token = view.mint("berth", "container_registry", &who, &granted, 1_700_000_000).unwrap();
        let v = TokenVerifier { issuer: "berth".into(), service: "container_registry".into(), algorithms: None };
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_010);
        let claims = v.verify(&view.keys, &token, at).unwrap();
        assert_eq!(claims.subject.as_deref(), Some("dev"));
        assert_eq!(claims.access, granted);
        assert_eq!(principal_of(claims.berth.as_ref()), Some(who));
    }
}
