//! Access control against a real `berth`: htpasswd with real clients, token auth with tokens
//! minted the way GitLab mints them, and every forged token or bad credential refused with
//! the status and challenge Distribution would give.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_tests::tokens::{gitlab_claims, gitlab_header, now, Signer, TokenServer};
use berth_tests::{init_tracing, random_bytes, require_tool, run, write_oci_layout, Berth};
use jsonwebtoken::{Algorithm, Header};
use reqwest::StatusCode;
use serde_json::json;

const ISSUER: &str = "gitlab-issuer";
const SERVICE: &str = "container_registry";

fn htpasswd_line(user: &str, password: &str) -> String {
    format!("{user}:{}\n", bcrypt::hash(password, 5).unwrap())
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// A client whose connections come from `ip` (another loopback address).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(ip.parse::<std::net::IpAddr>().unwrap()).build().unwrap()
}

fn www_authenticate(r: &reqwest::Response) -> String {
    r.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_challenges_admits_and_rereads() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, htpasswd_line("alice", "wonderland")).unwrap();
    let node = Berth::start(
        &dir.path().join("data"),
        None,
        &[("REGISTRY_AUTH_HTPASSWD_PATH", file.to_str().unwrap()), ("REGISTRY_AUTH_HTPASSWD_REALM", "Berth Registry")],
    );
    let http = client();
    let url = |p: &str| format!("{}{p}", node.url);

    tracing::info!("no credentials: 401, a Basic challenge, UNAUTHORIZED with the access needed");
    let r = http.get(url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(www_authenticate(&r), r#"Basic realm="Berth Registry""#);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["errors"][0]["code"], "UNAUTHORIZED");
    let r = http.get(url("/v2/a/b/manifests/latest")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["detail"], json!([{"Type": "repository", "Name": "a/b", "Action": "pull"}]));
    // Even an unknown repository's push is refused before anything is stored.
    let r = http.post(url("/v2/a/b/blobs/uploads/")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    tracing::info!("wrong password and unknown user: 401; the right one: in");
    for (u, p) in [("alice", "wrong"), ("mallory", "wonderland"), ("", "")] {
        let r = http.get(url("/v2/")).basic_auth(u, Some(p)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{u}:{p}");
    }
    let r = http.get(url("/v2/_catalog")).basic_auth("alice", Some("wonderland")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    tracing::info!("the file changes: the old user is out, the new one in, within seconds");
    std::fs::write(&file, htpasswd_line("bob", "builder")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let old = http.get(url("/v2/")).basic_auth("alice", Some("wonderland")).send().await.unwrap().status();
        let new = http.get(url("/v2/")).basic_auth("bob", Some("builder")).send().await.unwrap().status();
        if old == StatusCode::UNAUTHORIZED && new == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "htpasswd not reread: alice {old}, bob {new}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    tracing::info!("a guesser gets 429 with Retry-After; bob from another address still gets in");
    let mut limited = None;
    for i in 0..40 {
        let r = http.get(url("/v2/")).basic_auth("bob", Some(&format!("guess{i}"))).send().await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = limited.expect("failed logins are limited");
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["errors"][0]["code"], "TOOMANYREQUESTS");
    // Even the right password is not tried from the guessing address...
    let r = http.get(url("/v2/")).basic_auth("bob", Some("builder")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // ...but bob, from an address that has not failed, is not locked out.
    let r = client_from("127.0.0.2").get(url("/v2/")).basic_auth("bob", Some("builder")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    tracing::info!("refusals are counted by reason and audited");
    let log = std::fs::read_to_string(&node.log).unwrap();
    assert!(log.contains("decision=\"refused\"") || log.contains("decision=refused"), "no audit line for refusals");
    assert!(log.contains("bad_credentials") && log.contains("rate_limited"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_with_skopeo_and_docker() {
    init_tracing();
    if !require_tool("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("htpasswd");
    std::fs::write(&file, htpasswd_line("ci", "s3cret")).unwrap();
    let node = Berth::start(&dir.path().join("data"), None, &[("REGISTRY_AUTH_HTPASSWD_PATH", file.to_str().unwrap())]);
    let src = dir.path().join("src");
    write_oci_layout(&src, "v1", &[random_bytes(11, 200_000)]);
    let addr = &node.addr;
    let from = format!("oci:{}:v1", src.display());
    let to = format!("docker://{addr}/team/app:v1");

    tracing::info!("skopeo without credentials is refused; with them it pushes and pulls");
    let out = Command::new("skopeo").args(["copy", "--dest-tls-verify=false", &from, &to]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("unauthorized") || err.contains("authentication required"), "{err}");
    run(Command::new("skopeo").args(["copy", "--dest-tls-verify=false", "--dest-creds", "ci:s3cret", &from, &to]));
    let back = dir.path().join("back");
    run(Command::new("skopeo").args(["copy", "--src-tls-verify=false", "--src-creds", "ci:s3cret", &to]).arg(format!("dir:{}", back.display())));
    assert!(back.join("manifest.json").exists());
    let out = Command::new("skopeo").args(["inspect", "--tls-verify=false", "--creds", "ci:wrong", &to]).output().unwrap();
    assert!(!out.status.success());

    if !require_tool("docker") {
        return;
    }
    tracing::info!("docker login, push, pull");
    let cfg = dir.path().join("docker-config");
    berth_tests::docker_login(&cfg, addr, "ci", "s3cret");
    let (pushed, pulled) = berth_tests::docker_push_pull(&cfg, dir.path(), 12, &format!("{addr}/team/docker:1"));
    assert_eq!(pushed, pulled);
}

/// A node in token mode trusting `bundle` (certificates) and/or `jwks`.
fn token_node(dir: &Path, realm: &str, bundle: Option<&Path>, jwks: Option<&Path>) -> Berth {
    let mut env = vec![
        ("REGISTRY_AUTH_TOKEN_REALM", realm.to_string()),
        ("REGISTRY_AUTH_TOKEN_SERVICE", SERVICE.to_string()),
        ("REGISTRY_AUTH_TOKEN_ISSUER", ISSUER.to_string()),
    ];
    if let Some(b) = bundle {
        env.push(("REGISTRY_AUTH_TOKEN_ROOTCERTBUNDLE", b.display().to_string()));
    }
    if let Some(j) = jwks {
        env.push(("REGISTRY_AUTH_TOKEN_JWKS", j.display().to_string()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Berth::start(&dir.join("data"), None, &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_and_bad_credentials_are_refused() {
    init_tracing();
    if !require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gitlab = Signer::rsa(d, "gitlab");
    let ca = Signer::rsa(d, "token-ca");
    let chained = Signer::issued_by(&ca, d, "chained");
    let jwks_signer = Signer::rsa(d, "jwks");
    let stranger = Signer::rsa(d, "stranger");
    let bundle = d.join("bundle.pem");
    let mut pem = std::fs::read(&gitlab.cert).unwrap();
    pem.extend(std::fs::read(&ca.cert).unwrap());
    std::fs::write(&bundle, pem).unwrap();
    let jwks = d.join("jwks.json");
    std::fs::write(&jwks, jwks_signer.jwks("jwks-key-1").to_string()).unwrap();
    let realm = "https://gitlab.example.com/jwt/auth";
    let node = token_node(d, realm, Some(&bundle), Some(&jwks));
    let http = client();
    let url = |p: &str| format!("{}{p}", node.url);

    tracing::info!("no token: a Bearer challenge naming realm, service and scope, no error");
    let r = http.get(url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(www_authenticate(&r), format!(r#"Bearer realm="{realm}",service="{SERVICE}""#));
    let r = http.get(url("/v2/grp/app/manifests/v1")).send().await.unwrap();
    assert_eq!(
        www_authenticate(&r),
        format!(r#"Bearer realm="{realm}",service="{SERVICE}",scope="repository:grp/app:pull""#)
    );
    let r = http.post(url("/v2/grp/app/blobs/uploads/?mount=sha256:aa&from=other/repo")).send().await.unwrap();
    assert_eq!(
        www_authenticate(&r),
        format!(r#"Bearer realm="{realm}",service="{SERVICE}",scope="repository:grp/app:pull,push repository:other/repo:pull""#)
    );
    // Basic credentials mean nothing to a token registry.
    let r = http.get(url("/v2/")).basic_auth("root", Some("root")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let pull = |name: &str| gitlab_claims(ISSUER, SERVICE, Some("dev"), &[(name, &["pull"])]);
    let good = gitlab.sign(&gitlab_header(&gitlab), &pull("grp/app"));
    let with = |claims: serde_json::Value| gitlab.sign(&gitlab_header(&gitlab), &claims);
    let b64 = |v: &serde_json::Value| {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let t = now();

    // Each case: a token, the request, and the status and `error=` it must get.
    let mut cases: Vec<(&str, String, &str, u16, Option<&str>)> = vec![];
    cases.push(("GitLab-shaped token, libtrust kid", good.clone(), "/v2/grp/app/tags/list", 404, None));
    cases.push(("the same token at /v2/", good.clone(), "/v2/", 200, None));
    {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(gitlab.libtrust_kid.clone());
        let parts: Vec<&str> = good.split('.').collect();
        let none_header = json!({"alg": "none", "typ": "JWT", "kid": gitlab.libtrust_kid});
        cases.push(("alg none, no signature", format!("{}.{}.", b64(&none_header), parts[1]), "/v2/grp/app/tags/list", 401, Some("invalid_token")));
        let hs = json!({"alg": "HS256", "typ": "JWT", "kid": gitlab.libtrust_kid});
        let signing_input = format!("{}.{}", b64(&hs), parts[1]);
        let mac = {
            use hmac::{Hmac, Mac};
            let mut m = Hmac::<sha2::Sha256>::new_from_slice(&gitlab.public_pem()).unwrap();
            m.update(signing_input.as_bytes());
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
        };
        cases.push(("HS256 keyed with the public key", format!("{signing_input}.{mac}"), "/v2/grp/app/tags/list", 401, Some("invalid_token")));
        // The payload changed after signing: the signature no longer verifies (no error=).
        let mut forged_claims = pull("grp/app");
        forged_claims["access"][0]["actions"] = json!(["pull", "push", "delete"]);
        cases.push(("payload swapped after signing", format!("{}.{}.{}", parts[0], b64(&forged_claims), parts[2]), "/v2/grp/app/tags/list", 401, None));
    }
    let mut stranger_h = Header::new(Algorithm::RS256);
    stranger_h.kid = Some(stranger.libtrust_kid.clone());
    cases.push(("signed by an unknown key", stranger.sign(&stranger_h, &pull("grp/app")), "/v2/grp/app/tags/list", 401, Some("invalid_token")));
    let mut lying = Header::new(Algorithm::RS256);
    lying.kid = Some(gitlab.libtrust_kid.clone());
    cases.push(("unknown key claiming a trusted kid", stranger.sign(&lying, &pull("grp/app")), "/v2/grp/app/tags/list", 401, None));
    cases.push(("no kid at all", gitlab.sign(&Header::new(Algorithm::RS256), &pull("grp/app")), "/v2/grp/app/tags/list", 401, Some("invalid_token")));
    let mut c = pull("grp/app");
    c["exp"] = json!(t - 120);
    cases.push(("expired two minutes ago", with(c), "/v2/grp/app/tags/list", 401, Some("invalid_token")));
    let mut c = pull("grp/app");
    c["exp"] = json!(t - 30);
    cases.push(("expired within the 60 s skew", with(c), "/v2/grp/app/tags/list", 404, None));
    let mut c = pull("grp/app");
    c.as_object_mut().unwrap().remove("exp");
    cases.push(("no exp", with(c), "/v2/grp/app/tags/list", 401, Some("invalid_token")));
    let mut c = pull("grp/app");
    c["nbf"] = json!(t + 600);
    cases.push(("not valid for ten minutes", with(c), "/v2/grp/app/tags/list", 401, Some("invalid_token")));
    let mut c = pull("grp/app");
    c["aud"] = json!("another_registry");
    cases.push(("wrong audience", with(c), "/v2/grp/app/tags/list", 401, Some("invalid_token")));
    let mut c = pull("grp/app");
    c["aud"] = json!(["another_registry", SERVICE]);
    cases.push(("audience list naming us", with(c), "/v2/grp/app/tags/list", 404, None));
    let mut c = pull("grp/app");
    c["iss"] = json!("evil-issuer");
    cases.push(("wrong issuer", with(c), "/v2/grp/app/tags/list", 401, Some("invalid_token")));
    cases.push(("another repository's scope", good.clone(), "/v2/grp/other/tags/list", 401, Some("insufficient_scope")));
    cases.push(("a prefix of the granted name", good.clone(), "/v2/grp/tags/list", 401, Some("insufficient_scope")));
    cases.push(("pull token pushing", good.clone(), "/v2/grp/app/blobs/uploads/", 401, Some("insufficient_scope")));
    cases.push(("pull token on the catalog", good.clone(), "/v2/_catalog", 401, Some("insufficient_scope")));
    cases.push(("garbage", "not-a-jwt".into(), "/v2/", 401, Some("invalid_token")));
    let catalog = json!({"iss": ISSUER, "aud": SERVICE, "exp": t + 60, "access": [{"type": "registry", "name": "catalog", "actions": ["*"]}]});
    cases.push(("registry:catalog:*", with(catalog), "/v2/_catalog", 200, None));
    // GitLab's deploy-token grants carry no `sub`.
    cases.push(("no sub (deploy token)", with(gitlab_claims(ISSUER, SERVICE, None, &[("grp/app", &["pull"])])), "/v2/grp/app/tags/list", 404, None));

    tracing::info!("x5c chains to a bundle certificate; a self-signed chain does not");
    let mut h = Header::new(Algorithm::ES256);
    h.x5c = Some(vec![chained.x5c_entry()]);
    cases.push(("x5c leaf signed by a bundle CA", chained.sign(&h, &pull("grp/app")), "/v2/grp/app/tags/list", 404, None));
    let rogue_ca = Signer::rsa(d, "rogue-ca");
    let rogue = Signer::issued_by(&rogue_ca, d, "rogue");
    let mut h = Header::new(Algorithm::ES256);
    h.x5c = Some(vec![rogue.x5c_entry(), rogue_ca.x5c_entry()]);
    cases.push(("x5c chain to an unknown CA", rogue.sign(&h, &pull("grp/app")), "/v2/grp/app/tags/list", 401, Some("invalid_token")));

    tracing::info!("a JWKS kid and an RFC 7638 thumbprint both find their key");
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("jwks-key-1".into());
    cases.push(("JWKS kid", jwks_signer.sign(&h, &pull("grp/app")), "/v2/grp/app/tags/list", 404, None));

    for (what, token, path, status, error) in cases {
        let req = if path.ends_with("/uploads/") { http.post(url(path)) } else { http.get(url(path)) };
        let r = req.bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}: {}", r.text().await.unwrap_or_default());
        if status == 401 {
            let challenge = www_authenticate(&r);
            assert!(challenge.starts_with(&format!(r#"Bearer realm="{realm}",service="{SERVICE}""#)), "{what}: {challenge}");
            match error {
                Some(e) => assert!(challenge.ends_with(&format!(r#",error="{e}""#)), "{what}: {challenge}"),
                None => assert!(!challenge.contains("error="), "{what}: {challenge}"),
            }
        }
    }

    tracing::info!("a mount without pull on its source quietly becomes an upload");
    let blob = random_bytes(31, 1000);
    let digest = berth_proto::Digest::sha256_of(&blob).to_string();
    let owner = with(gitlab_claims(ISSUER, SERVICE, Some("o"), &[("other/src", &["pull", "push"])]));
    let r = http.post(url(&format!("/v2/other/src/blobs/uploads/?digest={digest}"))).bearer_auth(&owner).body(blob).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let mount = format!("/v2/grp/app/blobs/uploads/?mount={digest}&from=other/src");
    let push_only = with(gitlab_claims(ISSUER, SERVICE, Some("d"), &[("grp/app", &["pull", "push"])]));
    let r = http.post(url(&mount)).bearer_auth(&push_only).send().await.unwrap();
    assert_eq!(r.status(), 202, "mounted without pull on the source");
    let r = http.head(url(&format!("/v2/grp/app/blobs/{digest}"))).bearer_auth(&push_only).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let both = with(gitlab_claims(ISSUER, SERVICE, Some("d"), &[("grp/app", &["pull", "push"]), ("other/src", &["pull"])]));
    let r = http.post(url(&mount)).bearer_auth(&both).send().await.unwrap();
    assert_eq!(r.status(), 201);

    tracing::info!("refusals counted by reason");
    let log = std::fs::read_to_string(&node.log).unwrap();
    for reason in ["token_expired", "token_issuer", "token_audience", "token_unknown_key", "insufficient_scope", "token_signature"] {
        assert!(log.contains(reason), "no audit line for {reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7638_thumbprint_kid_is_trusted() {
    init_tracing();
    if !require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let signer = Signer::rsa(dir.path(), "v3");
    // Distribution 3.x names keys by thumbprint; compute it independently of Berth.
    let jwk = signer.jwks("x")["keys"][0].clone();
    let canonical = format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, jwk["e"].as_str().unwrap(), jwk["n"].as_str().unwrap());
    let thumb = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
    };
    let node = token_node(dir.path(), "https://auth.example/token", Some(&signer.cert), None);
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(thumb);
    let token = signer.sign(&h, &gitlab_claims(ISSUER, SERVICE, Some("u"), &[("a", &["pull"])]));
    let r = client().get(format!("{}/v2/a/tags/list", node.url)).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 404, "authorized, and the repository is empty");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_through_a_gitlab_style_token_realm() {
    init_tracing();
    if !require_tool("skopeo") || !require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let signer = Signer::rsa(d, "gitlab");
    let mut grants = HashMap::new();
    let writer: HashMap<String, Vec<String>> =
        [("grp/app".to_string(), vec!["pull".to_string(), "push".to_string()])].into_iter().collect();
    let reader: HashMap<String, Vec<String>> = [("grp/app".to_string(), vec!["pull".to_string()])].into_iter().collect();
    grants.insert("dev".to_string(), ("devpass".to_string(), writer));
    grants.insert("gitlab+deploy-token-1".to_string(), ("readonly".to_string(), reader));
    let server = TokenServer::start(signer.clone(), ISSUER, grants).await;
    // Berth knows the signer only from its certificate, as a registry behind GitLab does.
    let node = token_node(d, &server.realm, Some(&signer.cert), None);
    let src = d.join("src");
    write_oci_layout(&src, "v1", &[random_bytes(21, 150_000)]);
    let from = format!("oci:{}:v1", src.display());
    let to = format!("docker://{}/grp/app:v1", node.addr);

    tracing::info!("a developer pushes and pulls through the realm");
    run(Command::new("skopeo").args(["copy", "--dest-tls-verify=false", "--dest-creds", "dev:devpass", &from, &to]));
    let raw = run(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", "--creds", "dev:devpass", &to]));
    assert!(raw.contains("layers"));

    tracing::info!("a read-only deploy token pulls and cannot push");
    run(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", "--creds", "gitlab+deploy-token-1:readonly", &to]));
    let out = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", "--dest-creds", "gitlab+deploy-token-1:readonly", &from])
        .arg(format!("docker://{}/grp/app:v2", node.addr))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a pull-only token pushed");
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("unauthorized") || err.contains("denied") || err.contains("authentication required"), "{err}");
    let r = client().get(format!("{}/v2/grp/app/manifests/v2", node.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);

    tracing::info!("anonymous gets nothing: the realm grants no scope");
    let out = Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", "--no-creds", &to]).output().unwrap();
    assert!(!out.status.success());
}
