//! Token-auth fixtures: signing keys and certificates made with openssl, tokens minted the
//! way GitLab and Distribution's token servers mint them, and a small token server (the
//! realm) that real clients (skopeo, docker) are sent to.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::run;

/// A signing key and its certificate.
#[derive(Clone)]
pub struct Signer {
    /// PEM private key.
    pub key: PathBuf,
    /// PEM certificate.
    pub cert: PathBuf,
    /// The key id GitLab would put in `kid`, computed with openssl and coreutils (not Berth).
    pub libtrust_kid: String,
}

fn sh(script: &str) -> String {
    run(Command::new("sh").arg("-c").arg(script)).trim().to_string()
}

impl Signer {
    /// A self-signed RSA 2048 signer, as GitLab's `registry.key` / `registry.crt`.
    pub fn rsa(dir: &Path, name: &str) -> Signer {
        let (key, cert) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.crt")));
        sh(&format!(
            "openssl req -x509 -days 2 -subj /CN={name} -newkey rsa:2048 -nodes -keyout {} -out {} 2>/dev/null",
            key.display(),
            cert.display()
        ));
        Signer::from_files(key, cert)
    }

    /// A P-256 key whose certificate `ca` signs (for `x5c` chains).
    pub fn issued_by(ca: &Signer, dir: &Path, name: &str) -> Signer {
        let (key, cert, csr, ext) = (
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.csr")),
            dir.join(format!("{name}.ext")),
        );
        std::fs::write(&ext, "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n").unwrap();
        sh(&format!(
            "openssl req -subj /CN={name} -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {k} -out {csr} 2>/dev/null && \
             openssl x509 -req -days 1 -in {csr} -CA {cac} -CAkey {cak} -CAcreateserial -extfile {ext} -out {c} 2>/dev/null",
            k = key.display(),
            csr = csr.display(),
            cac = ca.cert.display(),
            cak = ca.key.display(),
            ext = ext.display(),
            c = cert.display()
        ));
        Signer::from_files(key, cert)
    }

    fn from_files(key: PathBuf, cert: PathBuf) -> Signer {
        // libtrust: base32 of the first 30 bytes of SHA-256 over the DER public key, in groups
        // of four.
        let b32 = sh(&format!(
            "openssl x509 -in {} -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256 -binary | head -c 30 | base32 -w0",
            cert.display()
        ));
        let libtrust_kid = b32.trim_end_matches('=').as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).to_string()).collect::<Vec<_>>().join(":");
        Signer { key, cert, libtrust_kid }
    }

    /// The certificate, DER, base64 (an `x5c` entry).
    pub fn x5c_entry(&self) -> String {
        let pem = std::fs::read_to_string(&self.cert).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        b64
    }

    /// Signs `claims` with this key under `header`.
    pub fn sign(&self, header: &Header, claims: &Value) -> String {
        let pem = std::fs::read(&self.key).unwrap();
        let key = match header.alg {
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        jsonwebtoken::encode(header, claims, &key).unwrap()
    }

    /// The public key as PEM (what an attacker knows).
    pub fn public_pem(&self) -> Vec<u8> {
        run(Command::new("openssl").args(["x509", "-pubkey", "-noout", "-in"]).arg(&self.cert)).into_bytes()
    }

    /// A JWKS document with this RSA key under `kid`.
    pub fn jwks(&self, kid: &str) -> Value {
        let modulus = sh(&format!("openssl x509 -in {} -noout -modulus | cut -d= -f2", self.cert.display()));
        let n = hex::decode(modulus).unwrap();
        let b = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        json!({"keys": [{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b(&n), "e": b(&[1, 0, 1])}]})
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Claims as GitLab's `JSONWebToken::RSAToken` writes them: `aud` a string, `nbf` five seconds
/// back, `access[].meta`, and `sub` only for a user.
pub fn gitlab_claims(issuer: &str, service: &str, sub: Option<&str>, access: &[(&str, &[&str])]) -> Value {
    let t = now();
    let access: Vec<Value> = access
        .iter()
        .map(|(name, actions)| {
            json!({"type": "repository", "name": name, "actions": actions,
                   "meta": {"project_path": name, "project_id": 7, "root_namespace_id": 3}})
        })
        .collect();
    let mut c = json!({"iss": issuer, "aud": service, "iat": t, "nbf": t - 5, "exp": t + 300,
                       "jti": format!("{:x}", rand::random::<u128>()), "access": access, "auth_type": "gitlab_or_ldap"});
    if let Some(s) = sub {
        c["sub"] = json!(s);
    }
    c
}

/// GitLab's header: RS256, `typ: JWT`, the libtrust `kid`.
pub fn gitlab_header(signer: &Signer) -> Header {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(signer.libtrust_kid.clone());
    h
}

/// A token server for tests: `GET /jwt/auth?service=..&scope=..` with Basic auth, granting each
/// user the intersection of what they ask for and what `grants` gives them, the way GitLab's
/// `/jwt/auth` does (an empty grant is still 200).
pub struct TokenServer {
    /// Its realm URL.
    pub realm: String,
}

impl TokenServer {
    /// Starts serving on a loopback port; `grants` maps user -> (password, repository -> actions).
    pub async fn start(signer: Signer, issuer: &str, grants: HashMap<String, (String, HashMap<String, Vec<String>>)>) -> TokenServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let realm = format!("http://{}/jwt/auth", listener.local_addr().unwrap());
        let issuer = issuer.to_string();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let (signer, issuer, grants) = (signer.clone(), issuer.clone(), grants.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16384];
                    let mut got = 0;
                    while !buf[..got].windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf[got..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got += n,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..got]).to_string();
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let query = target.split_once('?').map(|(_, q)| q.to_string()).unwrap_or_default();
                    let mut service = String::new();
                    let mut scopes = vec![];
                    for pair in query.split('&') {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        let v = urldecode(v);
                        match k {
                            "service" => service = v,
                            "scope" => scopes.extend(v.split(' ').map(str::to_string)),
                            _ => {}
                        }
                    }
                    let user = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Authorization: Basic ").or_else(|| l.strip_prefix("authorization: Basic ")))
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
                        .and_then(|b| String::from_utf8(b).ok())
                        .and_then(|up| {
                            let (u, p) = up.split_once(':')?;
                            let (pw, _) = grants.get(u)?;
                            (pw == p).then(|| u.to_string())
                        });
                    let has_basic = head.to_ascii_lowercase().contains("authorization: basic");
                    let (status, body) = if has_basic && user.is_none() {
                        ("401 Unauthorized", json!({"errors": [{"code": "UNAUTHORIZED", "message": "HTTP Basic: Access denied"}]}).to_string())
                    } else {
                        let mut access: Vec<(String, Vec<String>)> = vec![];
                        for sc in &scopes {
                            let mut parts = sc.splitn(3, ':');
                            let (Some("repository"), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next()) else { continue };
                            let allowed = user.as_ref().and_then(|u| grants[u].1.get(name)).cloned().unwrap_or_default();
                            let granted: Vec<String> = actions.split(',').filter(|a| allowed.iter().any(|x| x == a)).map(str::to_string).collect();
                            if !granted.is_empty() {
                                access.push((name.to_string(), granted));
                            }
                        }
                        let refs: Vec<(&str, Vec<&str>)> = access.iter().map(|(n, a)| (n.as_str(), a.iter().map(String::as_str).collect())).collect();
                        let refs2: Vec<(&str, &[&str])> = refs.iter().map(|(n, a)| (*n, a.as_slice())).collect();
                        let claims = gitlab_claims(&issuer, &service, user.as_deref(), &refs2);
                        ("200 OK", json!({"token": signer.sign(&gitlab_header(&signer), &claims)}).to_string())
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        TokenServer { realm }
    }
}

fn urldecode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

/// A registry token from `/jwt/auth` at `url` for `user`/`secret` and `scopes`
/// (space-separated), as a client would ask for it.
pub async fn registry_token(http: &reqwest::Client, url: &str, user: &str, secret: &str, scopes: &str) -> String {
    let scope: String = scopes.split(' ').map(|s| format!("&scope={s}")).collect();
    let t: Value = http
        .get(format!("{url}/jwt/auth?service=container_registry{scope}"))
        .basic_auth(user, Some(secret))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    t["token"].as_str().expect("a token").to_string()
}
