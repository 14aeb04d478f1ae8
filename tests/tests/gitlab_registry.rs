//! GitLab's container registry API (`/api/v4/projects/:id/registry/...`) against a real node:
//! images pushed with skopeo by a project's Developer, listed, inspected and deleted through
//! the API by roles that may, refused to roles that may not, and cleaned up in bulk by
//! GitLab's rules.

use std::process::Command;
use std::time::{Duration, Instant};

use berth_tests::gitlab::{admin_token, V4};
use berth_tests::{init_tracing, random_bytes, require_tool, run, write_oci_layout_created, Berth};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN_PASSWORD: &str = "correct-horse-battery";

fn names(v: &Value, key: &str) -> Vec<String> {
    let mut out: Vec<String> = v.as_array().unwrap().iter().map(|e| e[key].as_str().unwrap().to_string()).collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projects_repositories_and_tags_are_listed_shown_and_deleted_by_role() {
    init_tracing();
    if !require_tool("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let env = [("REGISTRY_AUTH_TOKEN_SERVICE", "container_registry"), ("REGISTRY_BERTH_ADMIN_PASSWORD", ADMIN_PASSWORD)];
    let node = Berth::start(&dir.path().join("data"), None, &env);
    let root = V4 { http: reqwest::Client::new(), base: node.url.clone(), token: admin_token(&node) };
    let pid = root.post("/projects", json!({"path": "grp/app", "visibility": "private"})).await["id"].as_u64().unwrap();
    let mut pat = |user: &str, level: u64| {
        let root = &root;
        let user = user.to_string();
        async move {
            let id = root.post("/users", json!({"username": user, "password": format!("{user}-password-1")})).await["id"].as_u64().unwrap();
            if level > 0 {
                root.post(&format!("/projects/{pid}/members"), json!({"user_id": id, "access_level": level})).await;
            }
            root.post(&format!("/users/{id}/personal_access_tokens"), json!({"name": "api", "scopes": ["api"]})).await["token"].as_str().unwrap().to_string()
        }
    };
    let dev = root.with_token(&pat("dev", 30).await);
    let maint = root.with_token(&pat("maint", 40).await);
    let rep = root.with_token(&pat("rep", 20).await);
    let stranger = root.with_token(&pat("stranger", 0).await);
    let _ = &mut pat;

    tracing::info!("a Developer pushes five tags and a second repository with skopeo");
    let push = |repo: &str, tag: &str, seed: u64, created: Option<&str>| {
        let src = dir.path().join(format!("src-{seed}"));
        let digest = write_oci_layout_created(&src, tag, &[random_bytes(seed, 3000 + seed as usize)], created);
        run(Command::new("skopeo").args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            "dev:dev-password-1",
            &format!("oci:{}:{tag}", src.display()),
            &format!("docker://{}/{repo}:{tag}", node.addr),
        ]));
        digest
    };
    let v1 = push("grp/app", "v1", 1, Some("2020-01-01T00:00:00Z"));
    push("grp/app", "v2", 2, Some("2020-01-02T00:00:00Z"));
    push("grp/app", "v3", 3, None);
    push("grp/app", "latest", 4, Some("2020-01-01T00:00:00Z"));
    push("grp/app", "keep-me", 5, Some("2020-01-01T00:00:00Z"));
    push("grp/app/sub", "x", 6, None);

    tracing::info!("a Reporter lists the project's repositories; a stranger sees no project");
    let (s, repos) = rep.call(Method::GET, &format!("/projects/{pid}/registry/repositories?tags_count=true"), None).await;
    assert_eq!(s, StatusCode::OK, "{repos}");
    assert_eq!(names(&repos, "path"), vec!["grp/app", "grp/app/sub"]);
    let app = repos.as_array().unwrap().iter().find(|r| r["path"] == "grp/app").unwrap().clone();
    let sub = repos.as_array().unwrap().iter().find(|r| r["path"] == "grp/app/sub").unwrap().clone();
    assert_eq!((app["name"].clone(), app["tags_count"].clone(), app["project_id"].clone()), (json!(""), json!(5), json!(pid)));
    assert_eq!((sub["name"].clone(), sub["tags_count"].clone()), (json!("sub"), json!(1)));
    assert_eq!(app["location"], format!("{}/grp/app", node.addr));
    let (rid, sub_rid) = (app["id"].as_u64().unwrap(), sub["id"].as_u64().unwrap());
    assert_eq!(stranger.call(Method::GET, &format!("/projects/{pid}/registry/repositories"), None).await.0, StatusCode::NOT_FOUND);
    let (s, one) = rep.call(Method::GET, &format!("/registry/repositories/{rid}?tags=true"), None).await;
    assert_eq!(s, StatusCode::OK, "{one}");
    assert_eq!(names(&one["tags"], "name"), vec!["keep-me", "latest", "v1", "v2", "v3"]);
    assert_eq!(stranger.call(Method::GET, &format!("/registry/repositories/{rid}"), None).await.0, StatusCode::NOT_FOUND);

    tracing::info!("storage used, deduplicated: the sub repository's blobs, and the project's");
    // What the registry holds for grp/app/sub:x, from its manifest: the config and the layer.
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "rep:rep-password-1",
        &format!("docker://{}/grp/app/sub:x", node.addr),
    ]));
    let m: Value = serde_json::from_str(&raw).unwrap();
    let sub_blobs = m["config"]["size"].as_u64().unwrap() + m["layers"].as_array().unwrap().iter().map(|l| l["size"].as_u64().unwrap()).sum::<u64>();
    let (_, one_sub) = rep.call(Method::GET, &format!("/registry/repositories/{sub_rid}?size=true"), None).await;
    assert_eq!(one_sub["size"], json!(sub_blobs), "{one_sub}");
    let (_, proj) = rep.call(Method::GET, &format!("/projects/{pid}?statistics=true"), None).await;
    let total = proj["statistics"]["container_registry_size"].as_u64().unwrap();
    assert!(total > 5 * 3000 + sub_blobs, "{proj}");

    tracing::info!("tags, paged as GitLab pages, and one tag's details");
    let (s, h, tags) = rep.call_with_headers(Method::GET, &format!("/projects/{pid}/registry/repositories/{rid}/tags?per_page=2"), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!((h["x-total"].to_str().unwrap(), h["x-total-pages"].to_str().unwrap(), tags.as_array().unwrap().len()), ("5", "3", 2));
    assert_eq!(tags[0]["path"], "grp/app:keep-me");
    let (s, t) = rep.call(Method::GET, &format!("/projects/{pid}/registry/repositories/{rid}/tags/v1"), None).await;
    assert_eq!(s, StatusCode::OK, "{t}");
    // The digest the registry serves the tag under (skopeo may rewrite the layout's manifest).
    let served = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        "rep:rep-password-1",
        "--format",
        "{{.Digest}}",
        &format!("docker://{}/grp/app:v1", node.addr),
    ]));
    assert_eq!(t["digest"], served.trim());
    let _ = v1;
    assert_eq!(t["created_at"], "2020-01-01T00:00:00Z");
    assert_eq!(t["short_revision"].as_str().unwrap(), &t["revision"].as_str().unwrap()[..9]);
    assert!(t["total_size"].as_u64().unwrap() > 3000, "{t}");
    assert_eq!(rep.call(Method::GET, &format!("/projects/{pid}/registry/repositories/{rid}/tags/nope"), None).await.0, StatusCode::NOT_FOUND);

    tracing::info!("a Reporter may not delete a tag; a Developer may");
    let tag_path = format!("/projects/{pid}/registry/repositories/{rid}/tags/v2");
    assert_eq!(rep.call(Method::DELETE, &tag_path, None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(dev.call(Method::DELETE, &tag_path, None).await.0, StatusCode::OK);
    assert_eq!(rep.call(Method::GET, &tag_path, None).await.0, StatusCode::NOT_FOUND);

    tracing::info!("bulk delete by GitLab's rules: keep wins, latest never goes, undated tags are spared by older_than");
    let bulk = format!("/projects/{pid}/registry/repositories/{rid}/tags");
    let rules = json!({"name_regex_delete": ".*", "name_regex_keep": "keep-.*", "older_than": "30d"});
    assert_eq!(dev.call(Method::DELETE, &bulk, Some(rules.clone())).await.0, StatusCode::FORBIDDEN, "bulk delete is a Maintainer's");
    let (s, v) = maint.call(Method::DELETE, &bulk, Some(rules.clone())).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, tags) = rep.call(Method::GET, &format!("{bulk}?per_page=100"), None).await;
        if names(&tags, "name") == vec!["keep-me", "latest", "v3"] {
            break;
        }
        assert!(Instant::now() < deadline, "bulk delete left {tags}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (s, v) = maint.call(Method::DELETE, &bulk, Some(rules)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["message"].as_str().unwrap().contains("at most once an hour"), "{v}");
    assert_eq!(maint.call(Method::DELETE, &bulk, Some(json!({"keep_n": 1}))).await.0, StatusCode::BAD_REQUEST, "no delete pattern");

    tracing::info!("deleting a repository (a Maintainer's): 202, and it goes in the background");
    let sub_path = format!("/projects/{pid}/registry/repositories/{sub_rid}");
    assert_eq!(dev.call(Method::DELETE, &sub_path, None).await.0, StatusCode::FORBIDDEN);
    let (s, _) = maint.call(Method::DELETE, &format!("/projects/{pid}/registry/repositories/{sub_rid}"), None).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, repos) = rep.call(Method::GET, &format!("/projects/{pid}/registry/repositories"), None).await;
        if names(&repos, "path") == vec!["grp/app"] {
            break;
        }
        assert!(Instant::now() < deadline, "the repository is still listed: {repos}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
