//! The distribution-spec push/pull suite, run against a live registry. The same checks run
//! on every storage backend.

use anyhow::ensure;
use berth_proto::Digest;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::{image_manifest, random_bytes, Registry, R, OCI_MANIFEST};

async fn error_code(r: reqwest::Response) -> R<String> {
    let v: Value = r.json().await?;
    Ok(v["errors"][0]["code"].as_str().unwrap_or_default().to_string())
}

/// Starts an upload session; returns the Location.
async fn start_upload(reg: &Registry, repo: &str) -> R<String> {
    let r = reg.http.post(reg.abs(&format!("/v2/{repo}/blobs/uploads/"))).send().await?;
    ensure!(r.status() == StatusCode::ACCEPTED, "POST upload: {}", r.status());
    ensure!(r.headers().contains_key("docker-upload-uuid"));
    ensure!(r.headers()["range"] == "0-0");
    Ok(r.headers()["location"].to_str()?.to_string())
}

fn with_param(loc: &str, k: &str, v: &str) -> String {
    format!("{loc}{}{k}={v}", if loc.contains('?') { "&" } else { "?" })
}

/// Base endpoint and error shape for unknown things.
pub async fn base_and_errors(reg: &Registry) -> R<()> {
    tracing::info!("base endpoint");
    let r = reg.http.get(reg.abs("/v2/")).send().await?;
    ensure!(r.status() == 200);
    ensure!(r.headers()["docker-distribution-api-version"] == "registry/2.0");
    ensure!(r.text().await? == "{}");
    let r = reg.http.get(reg.abs("/v2/NotValid/tags/list")).send().await?;
    ensure!(r.status() == 400);
    ensure!(error_code(r).await? == "NAME_INVALID");
    let r = reg.http.get(reg.abs("/v2/no/such/repo/tags/list")).send().await?;
    ensure!(r.status() == 404);
    ensure!(error_code(r).await? == "NAME_UNKNOWN");
    let r = reg.http.get(reg.abs("/v2/x/manifests/latest")).send().await?;
    ensure!(r.status() == 404 && error_code(r).await? == "MANIFEST_UNKNOWN");
    let d = Digest::sha256_of(b"nothing");
    let r = reg.http.get(reg.abs(&format!("/v2/x/blobs/{d}"))).send().await?;
    ensure!(r.status() == 404 && error_code(r).await? == "BLOB_UNKNOWN");
    let r = reg.http.get(reg.abs("/v2/x/blobs/sha256:abc")).send().await?;
    ensure!(r.status() == 400 && error_code(r).await? == "DIGEST_INVALID");
    // Encoded dots reach the server as sent (a client normalises only literal `..`, so
    // path traversal in raw bytes is tried in tests/hostile.rs): the name grammar refuses them.
    for p in ["/v2/a/%2e%2e/b/tags/list", "/v2/a/..%2fb/blobs/uploads/"] {
        let r = reg.http.get(reg.abs(p)).send().await?;
        ensure!(r.status().is_client_error(), "{p}: {}", r.status());
    }
    Ok(())
}

/// Monolithic and POST-then-PUT uploads, blob reads, ranges, HEAD, delete.
pub async fn blob_uploads_and_reads(reg: &Registry) -> R<()> {
    tracing::info!("monolithic upload");
    let repo = "suite/blobs";
    let data = random_bytes(1, 100_000);
    let d = reg.push_blob(repo, &data).await?;
    ensure!(reg.get_blob(repo, &d).await? == data);
    let r = reg.http.head(reg.abs(&format!("/v2/{repo}/blobs/{d}"))).send().await?;
    ensure!(r.status() == 200);
    ensure!(r.headers()["content-length"] == "100000");
    ensure!(r.headers()["docker-content-digest"] == d.to_string().as_str());

    tracing::info!("range reads");
    let r = reg.http.get(reg.abs(&format!("/v2/{repo}/blobs/{d}"))).header("Range", "bytes=10-19").send().await?;
    ensure!(r.status() == 206);
    ensure!(r.headers()["content-range"] == "bytes 10-19/100000");
    ensure!(r.bytes().await?.as_ref() == &data[10..20]);
    let r = reg.http.get(reg.abs(&format!("/v2/{repo}/blobs/{d}"))).header("Range", "bytes=200000-").send().await?;
    ensure!(r.status() == 416);

    tracing::info!("POST then PUT with body");
    let data2 = random_bytes(2, 5000);
    let d2 = Digest::sha256_of(&data2);
    let loc = start_upload(reg, repo).await?;
    let r = reg.http.put(reg.abs(&with_param(&loc, "digest", &d2.to_string()))).body(data2.clone()).send().await?;
    ensure!(r.status() == 201, "PUT: {}", r.status());
    ensure!(r.headers()["location"] == format!("/v2/{repo}/blobs/{d2}").as_str());
    ensure!(reg.get_blob(repo, &d2).await? == data2);

    tracing::info!("digest mismatch stores nothing");
    let wrong = Digest::sha256_of(b"something else");
    let r = reg.http.post(reg.abs(&format!("/v2/{repo}/blobs/uploads/?digest={wrong}"))).body(b"actual".to_vec()).send().await?;
    ensure!(r.status() == 400 && error_code(r).await? == "DIGEST_INVALID");
    let r = reg.http.head(reg.abs(&format!("/v2/{repo}/blobs/{wrong}"))).send().await?;
    ensure!(r.status() == 404);
    let r = reg.http.head(reg.abs(&format!("/v2/{repo}/blobs/{}", Digest::sha256_of(b"actual")))).send().await?;
    ensure!(r.status() == 404);

    tracing::info!("sha512 monolithic and chunked");
    let sha512 = {
        use sha2::Digest as _;
        Digest::from_raw(berth_proto::Algorithm::Sha512, &sha2::Sha512::digest(&data2))
    };
    let r = reg.http.post(reg.abs(&format!("/v2/{repo}/blobs/uploads/?digest={sha512}"))).body(data2.clone()).send().await?;
    ensure!(r.status() == 201, "sha512 monolithic: {}", r.status());
    ensure!(reg.get_blob(repo, &sha512).await? == data2);
    let loc = start_upload(reg, "suite/sha512").await?;
    let r = reg.http.patch(reg.abs(&loc)).body(data2[..100].to_vec()).send().await?;
    let loc = r.headers()["location"].to_str()?.to_string();
    let r = reg.http.put(reg.abs(&with_param(&loc, "digest", &sha512.to_string()))).body(data2[100..].to_vec()).send().await?;
    ensure!(r.status() == 201, "sha512 chunked: {}", r.status());

    tracing::info!("blob delete");
    let r = reg.http.delete(reg.abs(&format!("/v2/{repo}/blobs/{d2}"))).send().await?;
    ensure!(r.status() == 202);
    let r = reg.http.get(reg.abs(&format!("/v2/{repo}/blobs/{d2}"))).send().await?;
    ensure!(r.status() == 404);
    let r = reg.http.delete(reg.abs(&format!("/v2/{repo}/blobs/{d2}"))).send().await?;
    ensure!(r.status() == 404 && error_code(r).await? == "BLOB_UNKNOWN");
    Ok(())
}

/// Chunked uploads: Content-Range, out of order, replay, streamed, status, cancel, forgery.
pub async fn chunked_uploads(reg: &Registry) -> R<()> {
    tracing::info!("chunked upload with Content-Range");
    let repo = "suite/chunked";
    let data = random_bytes(3, 300_000);
    let d = Digest::sha256_of(&data);
    let loc0 = start_upload(reg, repo).await?;
    let r = reg
        .http
        .patch(reg.abs(&loc0))
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", "0-99999")
        .body(data[..100_000].to_vec())
        .send()
        .await?;
    ensure!(r.status() == 202, "PATCH 1: {}", r.status());
    ensure!(r.headers()["range"] == "0-99999");
    let loc1 = r.headers()["location"].to_str()?.to_string();

    tracing::info!("status");
    let r = reg.http.get(reg.abs(&loc1)).send().await?;
    ensure!(r.status() == 204);
    ensure!(r.headers()["range"] == "0-99999");

    tracing::info!("out-of-order chunk is 416");
    let r = reg.http.patch(reg.abs(&loc1)).header("Content-Range", "150000-199999").body(data[150_000..200_000].to_vec()).send().await?;
    ensure!(r.status() == 416, "out of order: {}", r.status());
    tracing::info!("replayed (overlapping) chunk is 416 and corrupts nothing");
    let r = reg.http.patch(reg.abs(&loc0)).header("Content-Range", "0-99999").body(vec![0u8; 100_000]).send().await?;
    ensure!(r.status() == 416, "replay: {}", r.status());

    tracing::info!("an empty PATCH changes nothing");
    let r = reg.http.patch(reg.abs(&loc1)).body(Vec::<u8>::new()).send().await?;
    ensure!(r.status() == 202 && r.headers()["range"] == "0-99999", "empty PATCH: {}", r.status());

    tracing::info!("streamed PATCH without Content-Range, then PUT");
    let r = reg.http.patch(reg.abs(&loc1)).body(data[100_000..250_000].to_vec()).send().await?;
    ensure!(r.status() == 202);
    let loc2 = r.headers()["location"].to_str()?.to_string();
    let r = reg
        .http
        .put(reg.abs(&with_param(&loc2, "digest", &d.to_string())))
        .header("Content-Range", "250000-299999")
        .body(data[250_000..].to_vec())
        .send()
        .await?;
    ensure!(r.status() == 201, "final PUT: {}", r.status());
    ensure!(reg.get_blob(repo, &d).await? == data);
    let r = reg.http.get(reg.abs(&loc2)).send().await?;
    ensure!(r.status() == 404, "finished upload still known: {}", r.status());

    tracing::info!("cancel");
    let loc = start_upload(reg, repo).await?;
    let r = reg.http.delete(reg.abs(&loc)).send().await?;
    ensure!(r.status() == 204);
    let r = reg.http.get(reg.abs(&loc)).send().await?;
    ensure!(r.status() == 404 && error_code(r).await? == "BLOB_UPLOAD_UNKNOWN");

    tracing::info!("forged or foreign state is refused");
    let loc = start_upload(reg, repo).await?;
    let forged = loc.replace("_state=", "_state=x");
    let r = reg.http.get(reg.abs(&forged)).send().await?;
    ensure!(r.status() == 404 && error_code(r).await? == "BLOB_UPLOAD_UNKNOWN");
    let other_repo = loc.replace(repo, "suite/other");
    let r = reg.http.patch(reg.abs(&other_repo)).body(b"x".to_vec()).send().await?;
    ensure!(r.status() == 404, "foreign repo: {}", r.status());

    tracing::info!("final PUT with the wrong digest");
    let r = reg.http.patch(reg.abs(&loc)).body(b"abc".to_vec()).send().await?;
    let loc = r.headers()["location"].to_str()?.to_string();
    let wrong = Digest::sha256_of(b"abd");
    let r = reg.http.put(reg.abs(&with_param(&loc, "digest", &wrong.to_string()))).send().await?;
    ensure!(r.status() == 400 && error_code(r).await? == "DIGEST_INVALID");
    let r = reg.http.head(reg.abs(&format!("/v2/{repo}/blobs/{wrong}"))).send().await?;
    ensure!(r.status() == 404);
    Ok(())
}

/// Cross-repository mount.
pub async fn mounts(reg: &Registry) -> R<()> {
    tracing::info!("cross-repository mount");
    let data = random_bytes(4, 1000);
    let d = reg.push_blob("suite/mount-src", &data).await?;
    let r = reg.http.post(reg.abs(&format!("/v2/suite/mount-dst/blobs/uploads/?mount={d}&from=suite/mount-src"))).send().await?;
    ensure!(r.status() == 201, "mount: {}", r.status());
    ensure!(r.headers()["docker-content-digest"] == d.to_string().as_str());
    ensure!(reg.get_blob("suite/mount-dst", &d).await? == data);
    let missing = Digest::sha256_of(b"missing");
    let r = reg.http.post(reg.abs(&format!("/v2/suite/mount-dst/blobs/uploads/?mount={missing}&from=suite/mount-src"))).send().await?;
    ensure!(r.status() == 202, "unmountable: {}", r.status());
    let r = reg.http.post(reg.abs(&format!("/v2/suite/mount-dst2/blobs/uploads/?mount={d}&from=suite/nothing"))).send().await?;
    ensure!(r.status() == 202);
    Ok(())
}

/// Pushes a config + layer into `repo`; returns (config, layer) digests and sizes.
async fn push_image_blobs(reg: &Registry, repo: &str, seed: u64) -> R<((Digest, usize), (Digest, usize))> {
    let cfg = serde_json::to_vec(&json!({"architecture": "amd64", "os": "linux", "seed": seed}))?;
    let layer = random_bytes(seed, 2000);
    let c = reg.push_blob(repo, &cfg).await?;
    let l = reg.push_blob(repo, &layer).await?;
    Ok(((c, cfg.len()), (l, layer.len())))
}

/// Manifests: by tag and digest, HEAD, validation, indexes, deletes.
pub async fn manifests(reg: &Registry) -> R<()> {
    let repo = "suite/manifests";
    let ((c, cs), (l, ls)) = push_image_blobs(reg, repo, 10).await?;
    let body = image_manifest((&c, cs), &[(&l, ls)]);
    let md = Digest::sha256_of(&body);

    tracing::info!("PUT by tag, GET by tag and digest, HEAD");
    ensure!(reg.push_manifest(repo, "v1", &body, OCI_MANIFEST).await? == md);
    let r = reg.http.get(reg.abs(&format!("/v2/{repo}/manifests/v1"))).header("Accept", OCI_MANIFEST).send().await?;
    ensure!(r.status() == 200);
    ensure!(r.headers()["content-type"] == OCI_MANIFEST);
    ensure!(r.headers()["docker-content-digest"] == md.to_string().as_str());
    ensure!(r.bytes().await?.as_ref() == body.as_slice());
    ensure!(reg.get_manifest(repo, &md.to_string()).await?.1 == body);
    let r = reg.http.head(reg.abs(&format!("/v2/{repo}/manifests/v1"))).send().await?;
    ensure!(r.status() == 200 && r.headers()["content-length"] == body.len().to_string().as_str());

    tracing::info!("PUT by digest must match");
    let r = reg.http.put(reg.abs(&format!("/v2/{repo}/manifests/{}", Digest::sha256_of(b"x")))).header("Content-Type", OCI_MANIFEST).body(body.clone()).send().await?;
    ensure!(r.status() == 400 && error_code(r).await? == "DIGEST_INVALID");
    ensure!(reg.push_manifest(repo, &md.to_string(), &body, OCI_MANIFEST).await? == md);

    tracing::info!("missing blobs, invalid, schema1, too large");
    let ghost = Digest::sha256_of(b"ghost");
    let bad = image_manifest((&c, cs), &[(&ghost, 5)]);
    let r = reg.http.put(reg.abs(&format!("/v2/{repo}/manifests/bad"))).header("Content-Type", OCI_MANIFEST).body(bad).send().await?;
    ensure!(r.status() == 400 && error_code(r).await? == "MANIFEST_BLOB_UNKNOWN");
    let r = reg.http.put(reg.abs(&format!("/v2/{repo}/manifests/bad"))).header("Content-Type", OCI_MANIFEST).body("{not json").send().await?;
    ensure!(r.status() == 400 && error_code(r).await? == "MANIFEST_INVALID");
    let s1 = json!({"schemaVersion": 1, "name": repo, "tag": "old", "fsLayers": []});
    let r = reg
        .http
        .put(reg.abs(&format!("/v2/{repo}/manifests/old")))
        .header("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")
        .body(serde_json::to_vec(&s1)?)
        .send()
        .await?;
    ensure!(r.status() == 400 && error_code(r).await? == "MANIFEST_INVALID");
    let huge = vec![b' '; 4 * 1024 * 1024 + 10];
    let r = reg.http.put(reg.abs(&format!("/v2/{repo}/manifests/huge"))).header("Content-Type", OCI_MANIFEST).body(huge).send().await?;
    ensure!(r.status() == 413, "huge manifest: {}", r.status());
    let r = reg.http.put(reg.abs(&format!("/v2/{repo}/manifests/-badtag"))).header("Content-Type", OCI_MANIFEST).body(body.clone()).send().await?;
    ensure!(r.status() == 400);

    tracing::info!("image index needs its children");
    let idx = |children: &[(&Digest, usize)]| {
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": children.iter().map(|(d, s)| json!({"mediaType": OCI_MANIFEST, "digest": d.to_string(), "size": s,
                "platform": {"architecture": "amd64", "os": "linux"}})).collect::<Vec<_>>()}))
        .unwrap()
    };
    let r = reg.http.put(reg.abs(&format!("/v2/{repo}/manifests/idx"))).header("Content-Type", "application/vnd.oci.image.index.v1+json").body(idx(&[(&ghost, 10)])).send().await?;
    ensure!(r.status() == 400 && error_code(r).await? == "MANIFEST_BLOB_UNKNOWN");
    let ib = idx(&[(&md, body.len())]);
    reg.push_manifest(repo, "idx", &ib, "application/vnd.oci.image.index.v1+json").await?;

    tracing::info!("content negotiation");
    let r = reg.http.get(reg.abs(&format!("/v2/{repo}/manifests/idx"))).header("Accept", OCI_MANIFEST).send().await?;
    ensure!(r.status() == 200 && r.headers()["docker-content-digest"] == md.to_string().as_str(), "index fallback: {}", r.status());
    let r = reg.http.get(reg.abs(&format!("/v2/{repo}/manifests/v1"))).header("Accept", "application/vnd.docker.distribution.manifest.v2+json").send().await?;
    ensure!(r.status() == 404, "unacceptable type served: {}", r.status());
    let r = reg.http.get(reg.abs(&format!("/v2/{repo}/manifests/v1"))).header("Accept", "*/*").send().await?;
    ensure!(r.status() == 200);

    tracing::info!("Docker schema 2 manifest");
    let docker = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": c.to_string(), "size": cs},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": l.to_string(), "size": ls}]}))?;
    reg.push_manifest(repo, "docker", &docker, "application/vnd.docker.distribution.manifest.v2+json").await?;
    let r = reg.http.get(reg.abs(&format!("/v2/{repo}/manifests/docker"))).header("Accept", "application/vnd.docker.distribution.manifest.v2+json").send().await?;
    ensure!(r.headers()["content-type"] == "application/vnd.docker.distribution.manifest.v2+json");

    tracing::info!("tag delete keeps the manifest; manifest delete removes its tags");
    reg.push_manifest(repo, "v2", &body, OCI_MANIFEST).await?;
    let r = reg.http.delete(reg.abs(&format!("/v2/{repo}/manifests/v2"))).send().await?;
    ensure!(r.status() == 202);
    ensure!(reg.get_manifest(repo, "v2").await?.0 == 404);
    ensure!(reg.get_manifest(repo, "v1").await?.0 == 200);
    let r = reg.http.delete(reg.abs(&format!("/v2/{repo}/manifests/{md}"))).send().await?;
    ensure!(r.status() == 202);
    ensure!(reg.get_manifest(repo, "v1").await?.0 == 404);
    ensure!(reg.get_manifest(repo, &md.to_string()).await?.0 == 404);
    // A retry whose first answer was lost gets that answer again; a manifest that never was
    // is unknown.
    let r = reg.http.delete(reg.abs(&format!("/v2/{repo}/manifests/{md}"))).send().await?;
    ensure!(r.status() == 202, "retried delete: {}", r.status());
    let never = Digest::sha256_of(b"never pushed");
    let r = reg.http.delete(reg.abs(&format!("/v2/{repo}/manifests/{never}"))).send().await?;
    ensure!(r.status() == 404 && error_code(r).await? == "MANIFEST_UNKNOWN");
    Ok(())
}

/// Referrers API with subject and artifactType filtering.
pub async fn referrers(reg: &Registry) -> R<()> {
    tracing::info!("subject and referrers");
    let repo = "suite/referrers";
    let ((c, cs), (l, ls)) = push_image_blobs(reg, repo, 20).await?;
    let body = image_manifest((&c, cs), &[(&l, ls)]);
    let subject = reg.push_manifest(repo, "app", &body, OCI_MANIFEST).await?;
    let empty = reg.push_blob(repo, b"{}").await?;
    let mut referrers = Vec::new();
    for (i, at) in ["application/vnd.example.sbom", "application/vnd.example.sig"].iter().enumerate() {
        let art = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": at,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.to_string(), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.to_string(), "size": 2}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.to_string(), "size": body.len()},
            "annotations": {"n": i.to_string()}}))?;
        let r = reg.http.put(reg.abs(&format!("/v2/{repo}/manifests/{}", Digest::sha256_of(&art)))).header("Content-Type", OCI_MANIFEST).body(art.clone()).send().await?;
        ensure!(r.status() == 201, "artifact: {}", r.status());
        ensure!(r.headers()["oci-subject"] == subject.to_string().as_str());
        referrers.push(Digest::sha256_of(&art));
    }
    let r = reg.http.get(reg.abs(&format!("/v2/{repo}/referrers/{subject}"))).send().await?;
    ensure!(r.status() == 200);
    ensure!(r.headers()["content-type"] == "application/vnd.oci.image.index.v1+json");
    let v: Value = r.json().await?;
    ensure!(v["manifests"].as_array().unwrap().len() == 2, "{v}");
    let r = reg.http.get(reg.abs(&format!("/v2/{repo}/referrers/{subject}?artifactType=application/vnd.example.sig"))).send().await?;
    ensure!(r.headers()["oci-filters-applied"] == "artifactType");
    let v: Value = r.json().await?;
    ensure!(v["manifests"].as_array().unwrap().len() == 1);
    ensure!(v["manifests"][0]["artifactType"] == "application/vnd.example.sig");
    ensure!(v["manifests"][0]["digest"] == referrers[1].to_string().as_str());
    ensure!(v["manifests"][0]["annotations"]["n"] == "1");
    let none = Digest::sha256_of(b"no subject");
    let v: Value = reg.http.get(reg.abs(&format!("/v2/{repo}/referrers/{none}"))).send().await?.json().await?;
    ensure!(v["manifests"].as_array().unwrap().is_empty());
    let r = reg.http.get(reg.abs(&format!("/v2/{repo}/referrers/sha256:bad"))).send().await?;
    ensure!(r.status() == 400);
    // Deleting a referrer removes it from the listing.
    reg.http.delete(reg.abs(&format!("/v2/{repo}/manifests/{}", referrers[0]))).send().await?;
    let v: Value = reg.http.get(reg.abs(&format!("/v2/{repo}/referrers/{subject}"))).send().await?.json().await?;
    ensure!(v["manifests"].as_array().unwrap().len() == 1);
    Ok(())
}

/// Tag listing and catalog pagination with Link headers.
pub async fn listing(reg: &Registry) -> R<()> {
    tracing::info!("tag and catalog pagination");
    let repo = "suite/listing";
    let ((c, cs), (l, ls)) = push_image_blobs(reg, repo, 30).await?;
    let body = image_manifest((&c, cs), &[(&l, ls)]);
    for t in ["c", "a", "e", "b", "d"] {
        reg.push_manifest(repo, t, &body, OCI_MANIFEST).await?;
    }
    let v: Value = reg.http.get(reg.abs(&format!("/v2/{repo}/tags/list"))).send().await?.json().await?;
    ensure!(v == json!({"name": repo, "tags": ["a", "b", "c", "d", "e"]}), "{v}");
    let r = reg.http.get(reg.abs(&format!("/v2/{repo}/tags/list?n=2"))).send().await?;
    let link = r.headers()["link"].to_str()?.to_string();
    ensure!(link == format!("</v2/{repo}/tags/list?last=b&n=2>; rel=\"next\""), "{link}");
    let v: Value = r.json().await?;
    ensure!(v["tags"] == json!(["a", "b"]));
    let r = reg.http.get(reg.abs(&format!("/v2/{repo}/tags/list?n=2&last=d"))).send().await?;
    ensure!(!r.headers().contains_key("link"));
    ensure!(r.json::<Value>().await?["tags"] == json!(["e"]));
    let r = reg.http.get(reg.abs(&format!("/v2/{repo}/tags/list?n=0"))).send().await?;
    ensure!(r.json::<Value>().await?["tags"] == json!([]));
    let r = reg.http.get(reg.abs(&format!("/v2/{repo}/tags/list?n=-1"))).send().await?;
    ensure!(r.status() == 400);

    let v: Value = reg.http.get(reg.abs("/v2/_catalog")).send().await?.json().await?;
    let all: Vec<String> = serde_json::from_value(v["repositories"].clone())?;
    ensure!(all.contains(&repo.to_string()));
    let mut sorted = all.clone();
    sorted.sort();
    ensure!(sorted == all);
    let r = reg.http.get(reg.abs("/v2/_catalog?n=1")).send().await?;
    let link = r.headers()["link"].to_str()?.to_string();
    ensure!(link == format!("</v2/_catalog?last={}&n=1>; rel=\"next\"", all[0]), "{link}");
    let r = reg.http.get(reg.abs(&format!("/v2/_catalog?n=1000&last={}", all[0]))).send().await?;
    let rest: Value = r.json().await?;
    ensure!(rest["repositories"].as_array().unwrap().len() == all.len() - 1);
    Ok(())
}

/// Runs every check.
pub async fn all(reg: &Registry) -> R<()> {
    base_and_errors(reg).await?;
    blob_uploads_and_reads(reg).await?;
    chunked_uploads(reg).await?;
    mounts(reg).await?;
    manifests(reg).await?;
    referrers(reg).await?;
    listing(reg).await?;
    Ok(())
}
