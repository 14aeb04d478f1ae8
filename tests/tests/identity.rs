//! Berth as its own token issuer: identity through `/api/v4` and `berth admin`, real clients
//! logging in with passwords, personal access tokens, deploy tokens and CI job tokens, roles
//! deciding who pulls and pushes, and revocation reaching every node within a second.

use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::gitlab::{admin_token, V4};
use berth_tests::tokens::registry_token;
use berth_tests::{berth_command, docker_login, init_tracing, random_bytes, require_tool, run, voter_cluster, write_oci_layout, Berth};
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADMIN_PASSWORD: &str = "correct-horse-battery";

fn issuer_env() -> Vec<(&'static str, &'static str)> {
    vec![("REGISTRY_AUTH_TOKEN_SERVICE", "container_registry"), ("REGISTRY_BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD)]
}

fn skopeo_ok(args: &[&str]) {
    run(Command::new("skopeo").args(args));
}

fn skopeo_fails(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(!out.status.success(), "skopeo {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_tokens_with_real_clients() {
    init_tracing();
    if !require_tool("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = issuer_env();
    let node = Berth::start(&dir.path().join("data"), None, &env);
    let http = reqwest::Client::new();

    tracing::info!("the registry challenges with Berth's own realm");
    let r = http.get(format!("{}/v2/", node.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()["www-authenticate"].to_str().unwrap(),
        format!(r#"Bearer realm="http://{}/jwt/auth",service="container_registry""#, node.addr)
    );

    tracing::info!("the administrator from berth.admin sets up users, a project and tokens");
    let root = V4 { http: http.clone(), base: node.url.clone(), token: admin_token(&node) };
    let (s, me) = root.call(reqwest::Method::GET, "/user", None).await;
    assert_eq!((s, me["username"].clone(), me["is_admin"].clone()), (StatusCode::OK, json!("root"), json!(true)));
    let dev = root.post("/users", json!({"username": "dev", "password": "dev-password-1"})).await["id"].as_u64().unwrap();
    let rep = root.post("/users", json!({"username": "rep", "password": "rep-password-1"})).await["id"].as_u64().unwrap();
    let project = root.post("/projects", json!({"path": "grp/app", "visibility": "private"})).await;
    assert_eq!(project["path_with_namespace"], "grp/app");
    let pid = project["id"].as_u64().unwrap();
    root.post(&format!("/projects/{pid}/members"), json!({"user_id": dev, "access_level": 30})).await;
    root.post("/projects/grp%2Fapp/members", json!({"user_id": rep, "access_level": 20})).await;
    let deploy = root.post(&format!("/projects/{pid}/deploy_tokens"), json!({"name": "pull", "scopes": ["read_registry"]})).await;
    let deploy_user = deploy["username"].as_str().unwrap().to_string();
    assert_eq!(deploy_user, format!("gitlab+deploy-token-{}", deploy["id"]));
    let deploy_secret = deploy["token"].as_str().unwrap().to_string();
    let read_pat = root.post(&format!("/users/{dev}/personal_access_tokens"), json!({"name": "ro", "scopes": ["read_registry"]})).await;
    let read_pat = read_pat["token"].as_str().unwrap().to_string();
    let api_pat = root.post(&format!("/users/{dev}/personal_access_tokens"), json!({"name": "all", "scopes": ["api"], "expires_at": "2099-01-01"})).await;
    assert_eq!(api_pat["expires_at"], "2099-01-01");
    let api_pat = api_pat["token"].as_str().unwrap().to_string();
    // Secrets are shown once: listing them never does.
    let (_, list) = root.call(reqwest::Method::GET, &format!("/personal_access_tokens?user_id={dev}"), None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(list.to_string().find("berth_pat_").is_none());

    let src = dir.path().join("src");
    write_oci_layout(&src, "v1", &[random_bytes(41, 120_000)]);
    let from = format!("oci:{}:v1", src.display());
    let image = |tag: &str| format!("docker://{}/grp/app:{tag}", node.addr);

    tracing::info!("a Developer pushes with a password; a Reporter and a deploy token pull");
    skopeo_ok(&["copy", "--dest-tls-verify=false", "--dest-creds", "dev:dev-password-1", &from, &image("v1")]);
    skopeo_ok(&["inspect", "--raw", "--tls-verify=false", "--creds", "rep:rep-password-1", &image("v1")]);
    skopeo_ok(&["inspect", "--raw", "--tls-verify=false", "--creds", &format!("{deploy_user}:{deploy_secret}"), &image("v1")]);

    tracing::info!("read-only credentials, wrong users and strangers cannot push");
    for creds in [
        "rep:rep-password-1".to_string(),
        format!("{deploy_user}:{deploy_secret}"),
        format!("dev:{read_pat}"),
        format!("someone-else:{deploy_secret}"),
    ] {
        let err = skopeo_fails(&["copy", "--dest-tls-verify=false", "--dest-creds", &creds, &from, &image("nope")]);
        assert!(err.contains("unauthorized") || err.contains("denied") || err.contains("authentication required"), "{creds}: {err}");
    }
    skopeo_fails(&["inspect", "--raw", "--tls-verify=false", "--no-creds", &image("v1")]);
    skopeo_fails(&["inspect", "--raw", "--tls-verify=false", "--creds", "dev:wrong-password", &image("v1")]);

    tracing::info!("the token endpoint grants the intersection, 200 even when empty");
    let t = registry_token(&http, &node.url, "rep", "rep-password-1", "repository:grp/app:pull,push,delete registry:catalog:*").await;
    let claims: Value = {
        use base64::Engine as _;
        let part = t.split('.').nth(1).unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    };
    // Pull only (a Reporter), and no catalog: as in GitLab, that is for administrators.
    assert_eq!(claims["access"], json!([{"type": "repository", "name": "grp/app", "actions": ["pull"]}]));
    assert_eq!(claims["sub"], "rep");
    let r = http.get(format!("{}/jwt/auth?service=other", node.url)).send().await.unwrap();
    assert_eq!(r.status(), 404, "GitLab answers an unknown service with 404");

    tracing::info!("docker logs in with a personal access token");
    if require_tool("docker") {
        let cfg = dir.path().join("docker-config");
        docker_login(&cfg, &node.addr, "dev", &api_pat);
        let (pushed, pulled) = berth_tests::docker_push_pull(&cfg, dir.path(), 42, &format!("{}/grp/app:docker", node.addr));
        assert_eq!(pushed, pulled);
    }

    tracing::info!("a CI job token pushes to its project until its job ends");
    let dev_api = V4 { http: http.clone(), base: node.url.clone(), token: api_pat.clone() };
    let job = dev_api.post(&format!("/projects/{pid}/job_tokens"), json!({})).await;
    let job_creds = format!("gitlab-ci-token:{}", job["token"].as_str().unwrap());
    skopeo_ok(&["copy", "--dest-tls-verify=false", "--dest-creds", &job_creds, &from, &image("ci")]);
    let (s, _) = dev_api.call(reqwest::Method::DELETE, &format!("/projects/{pid}/job_tokens/{}", job["id"]), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    skopeo_fails(&["inspect", "--raw", "--tls-verify=false", "--creds", &job_creds, &image("ci")]);

    tracing::info!("a Developer cannot manage members or users, nor list the catalog; an administrator lists it all");
    let (s, _) = dev_api.call(reqwest::Method::POST, &format!("/projects/{pid}/members"), Some(json!({"user_id": rep, "access_level": 40}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = dev_api.call(reqwest::Method::POST, "/users", Some(json!({"username": "x", "password": "long-enough"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A repository dev may not see: root pushes a blob to it.
    let root_token = registry_token(&http, &node.url, "root", ADMIN_PASSWORD, "repository:hidden/thing:pull,push").await;
    let blob = random_bytes(43, 100);
    let r = http
        .post(format!("{}/v2/hidden/thing/blobs/uploads/?digest={}", node.url, berth_proto::Digest::sha256_of(&blob)))
        .bearer_auth(&root_token)
        .body(blob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let catalog = |user: &'static str, secret: String| {
        let http = http.clone();
        let url = node.url.clone();
        async move {
            let t = registry_token(&http, &url, user, &secret, "registry:catalog:*").await;
            let r = http.get(format!("{url}/v2/_catalog")).bearer_auth(t).send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap_or(Value::Null)["repositories"].clone())
        }
    };
    assert_eq!(catalog("dev", api_pat.clone()).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(catalog("root", ADMIN_PASSWORD.to_string()).await, (StatusCode::OK, json!(["grp/app", "hidden/thing"])));
    let r = http.get(format!("{}/v2/_catalog", node.url)).send().await.unwrap();
    assert_eq!(r.status(), 401, "anonymous gets no catalog");

    tracing::info!("a public project is pulled anonymously");
    let (s, _) = root.call(reqwest::Method::PUT, &format!("/projects/{pid}"), Some(json!({"visibility": "public"}))).await;
    assert_eq!(s, StatusCode::OK);
    skopeo_ok(&["inspect", "--raw", "--tls-verify=false", "--no-creds", &image("v1")]);
    skopeo_fails(&["copy", "--dest-tls-verify=false", "--dest-creds", "rep:rep-password-1", &from, &image("nope")]);

    tracing::info!("the signing key rotates: tokens signed by the old key keep working until they expire");
    let token_for = |user: &'static str, secret: &'static str| {
        let (http, url) = (http.clone(), node.url.clone());
        async move { registry_token(&http, &url, user, secret, "repository:grp/app:pull").await }
    };
    let kid = |jwt: &str| jsonwebtoken::decode_header(jwt).unwrap().kid.unwrap();
    let before = token_for("rep", "rep-password-1").await;
    let rotated = run(berth_command().args(["admin", "--node", &node.grpc_addr, "rotate-signing-key"]));
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let t = token_for("rep", "rep-password-1").await;
        if kid(&t) != kid(&before) {
            break t;
        }
        assert!(Instant::now() < deadline, "still signing with the old key after: {rotated}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(rotated.contains(&kid(&after)), "{rotated}");

    tracing::info!("an operator's RSA key takes over: tokens become RS256, and the ES256 ones still verify");
    let rsa = dir.path().join("registry.key");
    run(Command::new("openssl").args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"]).arg(&rsa));
    let rotated = run(berth_command().args(["admin", "--node", &node.grpc_addr, "rotate-signing-key", "--key-file"]).arg(&rsa));
    assert!(rotated.contains("RS256"), "{rotated}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let rs256 = loop {
        let t = token_for("rep", "rep-password-1").await;
        if jsonwebtoken::decode_header(&t).unwrap().alg == jsonwebtoken::Algorithm::RS256 {
            break t;
        }
        assert!(Instant::now() < deadline, "not signing with the RSA key after: {rotated}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(rotated.contains(&kid(&rs256)), "{rotated}");
    for t in [&before, &after, &rs256] {
        let r = http.get(format!("{}/v2/grp/app/tags/list", node.url)).bearer_auth(t).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    skopeo_ok(&["inspect", "--raw", "--tls-verify=false", "--creds", "rep:rep-password-1", &image("v1")]);
    // A key too weak, or not a key, is refused before it reaches the cluster.
    let weak = dir.path().join("weak.key");
    run(Command::new("openssl").args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out"]).arg(&weak));
    for bad in [&weak, &dir.path().join("src/index.json")] {
        let out = berth_command().args(["admin", "--node", &node.grpc_addr, "rotate-signing-key", "--key-file"]).arg(bad).output().unwrap();
        assert!(!out.status.success(), "{bad:?} accepted");
    }

    tracing::info!("bad API credentials are refused");
    let (s, _) = V4 { http: http.clone(), base: node.url.clone(), token: "berth_pat_forged".into() }.call(reqwest::Method::GET, "/user", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = V4 { http: http.clone(), base: node.url.clone(), token: read_pat.clone() }.call(reqwest::Method::GET, "/user", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a read_registry token is not an API token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_on_every_node_within_a_second() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let env = issuer_env();
    let nodes = voter_cluster(dir.path(), 3, &env);
    let http = reqwest::Client::new();
    let root = V4 { http: http.clone(), base: nodes[0].url.clone(), token: admin_token(&nodes[0]) };
    let user = root.post("/users", json!({"username": "ci", "password": "ci-password-1"})).await["id"].as_u64().unwrap();
    root.post("/projects", json!({"path": "team/svc"})).await;
    root.post("/projects/team%2Fsvc/members", json!({"user_id": user, "access_level": 30})).await;
    let pat = root.post(&format!("/users/{user}/personal_access_tokens"), json!({"name": "ci", "scopes": ["read_registry", "write_registry"]})).await;
    let (pat_id, secret) = (pat["id"].as_u64().unwrap(), pat["token"].as_str().unwrap().to_string());

    tracing::info!("a registry token from node 2 works on nodes 1, 2 and 3");
    let token_from = |node: &Berth| {
        let (http, url, secret) = (http.clone(), node.url.clone(), secret.clone());
        async move {
            let r = http.get(format!("{url}/jwt/auth?service=container_registry&scope=repository:team/svc:pull")).basic_auth("ci", Some(secret)).send().await.unwrap();
            (r.status(), r.json::<Value>().await.unwrap_or(Value::Null)["token"].as_str().unwrap_or_default().to_string())
        }
    };
    // Node 2 learns of the token within a refresh.
    let deadline = Instant::now() + Duration::from_secs(5);
    let jwt = loop {
        let (s, t) = token_from(&nodes[1]).await;
        if s == 200 && !t.is_empty() {
            break t;
        }
        assert!(Instant::now() < deadline, "node 2 never accepted the new token: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tags = |node: &Berth, jwt: &str| {
        let (http, url, jwt) = (http.clone(), node.url.clone(), jwt.to_string());
        async move { http.get(format!("{url}/v2/team/svc/tags/list")).bearer_auth(jwt).send().await.unwrap().status() }
    };
    for n in &nodes {
        assert_eq!(tags(n, &jwt).await, 404, "authorized (the repository is empty) at {}", n.url);
    }

    tracing::info!("revoked at node 1: every node refuses it within a second");
    let (s, _) = root.call(reqwest::Method::DELETE, &format!("/personal_access_tokens/{pat_id}"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let revoked = Instant::now();
    for n in &nodes {
        loop {
            let status = tags(n, &jwt).await;
            if status == 401 {
                break;
            }
            assert!(revoked.elapsed() < Duration::from_secs(1), "{} still accepts the revoked token after {:?}", n.url, revoked.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(token_from(n).await.0, 401, "a revoked token logs in at {}", n.url);
    }
    tracing::info!("refused everywhere {:?} after the revocation", revoked.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_reach_their_projects() {
    init_tracing();
    if !require_tool("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = Berth::start(&dir.path().join("data"), None, &issuer_env());
    let http = reqwest::Client::new();
    let root = V4 { http: http.clone(), base: node.url.clone(), token: admin_token(&node) };

    tracing::info!("a group with two projects, a Maintainer and a Developer of the group");
    let group = root.post("/groups", json!({"path": "team"})).await;
    assert_eq!((group["full_path"].clone(), group["parent_id"].clone()), (json!("team"), Value::Null));
    let gid = group["id"].as_u64().unwrap();
    for p in ["api", "web"] {
        root.post("/projects", json!({"namespace": "team", "path": p})).await;
    }
    root.post("/projects", json!({"path": "other/app"})).await;
    let user = |name: &'static str| {
        let root = &root;
        async move { root.post("/users", json!({"username": name, "password": format!("{name}-password")})).await["id"].as_u64().unwrap() }
    };
    let (lead, gdev, _stranger) = (user("lead").await, user("gdev").await, user("stranger").await);
    root.post(&format!("/groups/{gid}/members"), json!({"user_id": lead, "access_level": 40})).await;
    root.post("/groups/team/members", json!({"user_id": gdev, "access_level": 30})).await;
    let (_, members) = root.call(reqwest::Method::GET, "/groups/team/members", None).await;
    let levels: Vec<(Value, Value)> = members.as_array().unwrap().iter().map(|m| (m["username"].clone(), m["access_level"].clone())).collect();
    assert_eq!(levels, [(json!("root"), json!(50)), (json!("lead"), json!(40)), (json!("gdev"), json!(30))]);
    // Inherited roles are not direct project members.
    let (s, _) = root.call(reqwest::Method::GET, &format!("/projects/team%2Fapi/members/{gdev}"), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    tracing::info!("group members push to every project below the group, and nowhere else");
    let src = dir.path().join("src");
    write_oci_layout(&src, "v1", &[random_bytes(51, 90_000)]);
    let from = format!("oci:{}:v1", src.display());
    let image = |repo: &str| format!("docker://{}/{repo}:v1", node.addr);
    for repo in ["team/api", "team/web/frontend"] {
        skopeo_ok(&["copy", "--dest-tls-verify=false", "--dest-creds", "gdev:gdev-password", &from, &image(repo)]);
    }
    skopeo_fails(&["copy", "--dest-tls-verify=false", "--dest-creds", "gdev:gdev-password", &from, &image("other/app")]);
    skopeo_fails(&["inspect", "--raw", "--tls-verify=false", "--creds", "stranger:stranger-password", &image("team/api")]);

    tracing::info!("a group Maintainer creates projects and subgroups in it; others cannot");
    let pat_of = |user: u64| {
        let root = &root;
        async move { root.post(&format!("/users/{user}/personal_access_tokens"), json!({"name": "api", "scopes": ["api"]})).await["token"].as_str().unwrap().to_string() }
    };
    let lead_api = V4 { http: http.clone(), base: node.url.clone(), token: pat_of(lead).await };
    let gdev_api = V4 { http: http.clone(), base: node.url.clone(), token: pat_of(gdev).await };
    lead_api.post("/projects", json!({"namespace": "team", "path": "tools"})).await;
    let sub = lead_api.post("/groups", json!({"path": "infra", "parent_id": gid})).await;
    assert_eq!((sub["full_path"].clone(), sub["parent_id"].clone()), (json!("team/infra"), json!(gid)));
    let (s, _) = gdev_api.call(reqwest::Method::POST, "/projects", Some(json!({"namespace": "team", "path": "mine"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a Developer does not create projects in the group");
    let (s, _) = lead_api.call(reqwest::Method::POST, "/groups", Some(json!({"path": "toplevel"}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "top-level groups are for administrators");
    let (s, _) = root.call(reqwest::Method::POST, "/groups", Some(json!({"path": "team/api"}))).await;
    assert_eq!(s, StatusCode::CONFLICT, "a group inside a project");

    tracing::info!("a group deploy token pulls every project below the group; its Owner makes it, a Maintainer cannot");
    let (s, _) = lead_api.call(reqwest::Method::POST, "/groups/team/deploy_tokens", Some(json!({"name": "k8s", "scopes": ["read_registry"]}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let dt = root.post("/groups/team/deploy_tokens", json!({"name": "k8s", "scopes": ["read_registry"]})).await;
    let dt_creds = format!("{}:{}", dt["username"].as_str().unwrap(), dt["token"].as_str().unwrap());
    for repo in ["team/api", "team/web/frontend"] {
        skopeo_ok(&["inspect", "--raw", "--tls-verify=false", "--creds", &dt_creds, &image(repo)]);
    }
    skopeo_fails(&["copy", "--dest-tls-verify=false", "--dest-creds", &dt_creds, &from, &image("team/api")]);
    let t = registry_token(&http, &node.url, dt["username"].as_str().unwrap(), dt["token"].as_str().unwrap(), "repository:other/app:pull").await;
    let r = http.get(format!("{}/v2/other/app/tags/list", node.url)).bearer_auth(&t).send().await.unwrap();
    assert_eq!(r.status(), 401, "a group token outside its group");
    if require_tool("podman") {
        tracing::info!("podman with --creds: a group Developer pushes, the group deploy token pulls and cannot push");
        let rootfs = dir.path().join("rootfs.tar");
        std::fs::write(&rootfs, berth_tests::tar_with_file("p.bin", &random_bytes(52, 80_000))).unwrap();
        let podman = |root: &str, args: &[&str]| {
            Command::new("podman")
                .arg("--storage-driver=vfs")
                .arg("--root")
                .arg(dir.path().join(root))
                .arg("--runroot")
                .arg(dir.path().join(format!("{root}-run")))
                .args(args)
                .output()
                .unwrap()
        };
        let remote = format!("{}/team/web:podman", node.addr);
        assert!(podman("a", &["import", rootfs.to_str().unwrap(), "localhost/groups-test:1"]).status.success());
        let out = podman("a", &["push", "--tls-verify=false", "--creds", "gdev:gdev-password", "localhost/groups-test:1", &remote]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = podman("b", &["pull", "--tls-verify=false", "--creds", &dt_creds, &remote]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = podman("a", &["push", "--tls-verify=false", "--creds", &dt_creds, "localhost/groups-test:1", &format!("{}/team/web:nope", node.addr)]);
        assert!(!out.status.success(), "a read-only group deploy token pushed with podman");
    }
    let (s, list) = lead_api.call(reqwest::Method::GET, "/groups/team/deploy_tokens", None).await;
    assert_eq!((s, list.as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
    assert!(list.to_string().find("berth_dt_").is_none(), "secrets are shown once");

    tracing::info!("administrators list every deploy token");
    root.post("/projects/other%2Fapp/deploy_tokens", json!({"name": "p", "scopes": ["read_registry"]})).await;
    let (s, all) = root.call(reqwest::Method::GET, "/deploy_tokens", None).await;
    assert_eq!((s, all.as_array().map(Vec::len)), (StatusCode::OK, Some(2)));
    let (s, _) = lead_api.call(reqwest::Method::GET, "/deploy_tokens", None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    tracing::info!("deleting the group ends its members' reach and its deploy tokens; projects stay");
    let (s, _) = root.call(reqwest::Method::DELETE, "/groups/team", None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    skopeo_fails(&["inspect", "--raw", "--tls-verify=false", "--creds", &dt_creds, &image("team/api")]);
    skopeo_fails(&["inspect", "--raw", "--tls-verify=false", "--creds", "gdev:gdev-password", &image("team/api")]);
    let (s, _) = root.call(reqwest::Method::GET, "/projects/team%2Fapi", None).await;
    assert_eq!(s, StatusCode::OK);
}

/// A rolling upgrade must not stall the cluster: a command that came with a newer log
/// protocol (groups came with protocol 2) is proposed only when every member has said it
/// reads that protocol. A member never heard from holds it back with a 503 naming the node;
/// older commands go on; once the member answers, the command goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_commands_wait_until_every_member_reads_them() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = voter_cluster(dir.path(), 3, &issuer_env());
    let status = run(berth_command().args(["cluster", "status", "--node", &nodes[0].grpc_addr]));
    assert_eq!(status.matches(&format!("protocol={}", berth_proto::PROTOCOL)).count(), 3, "{status}");
    tracing::info!("node 3 goes down before the leader has asked it anything");
    nodes[2].kill9();
    let root = V4 { http: reqwest::Client::new(), base: nodes[1].url.clone(), token: admin_token(&nodes[0]) };
    let (s, v) = root.call(reqwest::Method::POST, "/groups", Some(json!({"path": "platform"}))).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    let said = v.to_string();
    assert!(said.contains("log protocol 2") && said.contains("node 3"), "{said}");
    tracing::info!("protocol-1 commands are not held back");
    root.post("/projects", json!({"path": "platform-api"})).await;
    tracing::info!("node 3 is back: the group is created");
    nodes[2].restart();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = root.call(reqwest::Method::POST, "/groups", Some(json!({"path": "platform"}))).await;
        if s == StatusCode::CREATED {
            break;
        }
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(Instant::now() < deadline, "still refused: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tracing::info!("known now: node 3 down again does not hold group changes back");
    nodes[2].kill9();
    root.post("/groups", json!({"path": "platform-2"})).await;

    tracing::info!("nor does a dead leader: its successor has the protocol from the log, not from asking");
    nodes[2].restart();
    let leader = berth_tests::cluster_leader(&nodes[0].grpc_addr).expect("a leader") as usize;
    // Node 3 has caught up once it reports the leader the others see.
    let deadline = Instant::now() + Duration::from_secs(15);
    while berth_tests::cluster_leader(&nodes[2].grpc_addr) != Some(leader as u64) {
        assert!(Instant::now() < deadline, "node 3 did not rejoin");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nodes[leader - 1].kill9();
    let alive = (0..3).find(|&i| i != leader - 1).unwrap();
    let api = V4 { http: reqwest::Client::new(), base: nodes[alive].url.clone(), token: root.token.clone() };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, v) = api.call(reqwest::Method::POST, "/groups", Some(json!({"path": "platform-3"}))).await;
        if s == StatusCode::CREATED {
            break;
        }
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(Instant::now() < deadline, "the new leader holds group changes back: {v}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A node whose build reads an older log protocol than entries the log already holds may not
/// join: it could take neither those entries nor a snapshot made after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reading_an_older_protocol_than_the_log_may_not_join() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let nodes = voter_cluster(dir.path(), 1, &issuer_env());
    // A group is a protocol-2 entry.
    let root = V4 { http: reqwest::Client::new(), base: nodes[0].url.clone(), token: admin_token(&nodes[0]) };
    root.post("/groups", json!({"path": "platform"})).await;
    let shared = dir.path().join("blobs");
    let old = Berth::start(
        &dir.path().join("old"),
        None,
        &[
            ("REGISTRY_BERTH_NODEID", "2"),
            ("REGISTRY_BERTH_BOOTSTRAP", "false"),
            ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", shared.to_str().unwrap()),
            ("BERTH_TEST_REPORT_PROTOCOL", "1"),
        ],
    );
    let out = berth_command().args(["cluster", "add-learner", "--node", &nodes[0].grpc_addr, "--id", "2", "--addr", &old.grpc_addr]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("reads log protocol 1") && said.contains("upgrade it first"), "{said}");
    let status = run(berth_command().args(["cluster", "status", "--node", &nodes[0].grpc_addr]));
    assert!(!status.contains("node 2 "), "{status}");
}
