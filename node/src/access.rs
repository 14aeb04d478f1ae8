//! Builds the request authorizer from `auth:`: reads the htpasswd file, the certificate
//! bundle and the JWKS file, so that a key or file Berth cannot use stops the start.

use anyhow::{anyhow, bail, Context};
use berth_api::auth::{self, Authorizer, Htpasswd, LoginLimits, Mode, Realm, TokenVerifier};

use crate::config::auth::{AuthConfig, AuthKind};

/// The authorizer the configuration asks for, with its counters in `registry`.
/// `tls`: the HTTP listener serves TLS (the scheme of a realm derived from requests).
pub fn authorizer(cfg: &AuthConfig, tls: bool, registry: &prometheus::Registry) -> anyhow::Result<Authorizer> {
    let mode = match cfg.kind()? {
        AuthKind::Default | AuthKind::None => Mode::Open,
        AuthKind::Htpasswd(h) => {
            let file = Htpasswd::open(&h.path).map_err(|e| anyhow!("auth.htpasswd.path: {e}"))?;
            Mode::Htpasswd { realm: h.realm.unwrap_or_else(|| "basic-realm".into()), file }
        }
        AuthKind::Issuer(t) => {
            // No outside keys: Berth is the issuer, with keys kept in Raft.
            let realm = match &t.realm {
                Some(r) => Realm::Fixed(r.clone()),
                None => Realm::FromRequest { scheme: if tls { "https".into() } else { "http".into() }, path: "/jwt/auth".into() },
            };
            let verifier = TokenVerifier {
                issuer: t.issuer.clone().unwrap_or_else(|| "berth".into()),
                service: t.service.clone().unwrap_or_else(|| "container_registry".into()),
                // The algorithms of the keys Berth signs with.
                algorithms: Some(vec![auth::token::Algorithm::ES256, auth::token::Algorithm::RS256]),
            };
            tracing::info!(issuer = %verifier.issuer, service = %verifier.service, "Berth issues registry tokens at /jwt/auth");
            Mode::Issuer { realm, verifier }
        }
        AuthKind::External(e) => {
            let t = &e.token;
            let mut keys = auth::keys::TrustedKeys::default();
            if let Some(p) = &t.rootcertbundle {
                let pem = std::fs::read(p).with_context(|| format!("auth.token.rootcertbundle: {}", p.display()))?;
                let n = keys.add_cert_bundle(&pem).map_err(|e| anyhow!("auth.token.rootcertbundle: {}: {e}", p.display()))?;
                tracing::info!(certificates = n, "token signing certificates loaded");
            }
            if let Some(p) = &t.jwks {
                let json = std::fs::read(p).with_context(|| format!("auth.token.jwks: {}", p.display()))?;
                let n = keys.add_jwks(&json).map_err(|e| anyhow!("auth.token.jwks: {}: {e}", p.display()))?;
                tracing::info!(keys = n, "token signing keys loaded");
            }
            if keys.is_empty() {
                bail!("auth.token: no key found in rootcertbundle or jwks");
            }
            let realm = if t.autoredirect == Some(true) {
                Realm::FromRequest { scheme: "https".into(), path: t.autoredirectpath.clone().unwrap_or_else(|| "/auth/token".into()) }
            } else {
                Realm::Fixed(e.realm.clone())
            };
            let verifier = TokenVerifier { issuer: e.issuer.clone(), service: e.service.clone(), algorithms: e.algorithms.clone() };
            Mode::Token { realm, verifier, keys }
        }
    };
    Ok(Authorizer::new(mode, LoginLimits::default(), registry)?)
}
