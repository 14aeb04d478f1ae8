//! `/api/v4/projects`: projects (a path owning the repositories below it) and their
//! visibility. Members and deploy tokens are in `members.rs` and `tokens.rs`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use berth_proto::cleanup::{CleanupChange, CleanupPolicy, CleanupState};
use berth_proto::identity::{IdentityChange, Project, Role, Visibility};
use berth_proto::{Command, Outcome, RepoName};
use serde_json::{json, Value};

use super::namespace::Namespace;
use super::{body, change, created_id, paged, time, Session, V4Error, V4Result};
use crate::Api;

/// `container_expiration_policy` as GitLab shows it (its defaults for a project that never
/// saved one), with what Berth adds: runs started and how the last one went.
fn policy_json(state: Option<&CleanupState>) -> Value {
    let default = CleanupPolicy::default();
    let policy = state.map_or(&default, |s| &s.policy);
    let mut v = json!({
        "cadence": policy.cadence,
        "enabled": policy.enabled,
        "keep_n": policy.keep_n,
        "older_than": policy.older_than,
        "name_regex": policy.name_regex,
        "name_regex_delete": policy.name_regex,
        "name_regex_keep": policy.name_regex_keep,
        "next_run_at": state.and_then(|s| s.next_run_ms).map(time),
        "runs": state.map_or(0, |s| s.runs),
        "current_run": state.and_then(|s| s.run.as_ref()).map(|r| json!({
            "started_at": time(r.started_ms),
            "repositories_done": r.repositories,
            "tags_deleted": r.deleted,
        })),
        "last_run": state.and_then(|s| s.last.as_ref()).map(|r| json!({
            "started_at": time(r.started_ms),
            "finished_at": time(r.finished_ms),
            "repositories": r.repositories,
            "tags_deleted": r.deleted,
            "error": r.error,
        })),
    });
    if state.is_none() {
        v["next_run_at"] = Value::Null;
    }
    v
}

fn project_json(p: &Project, policies: &Policies) -> Value {
    let name = p.path.rsplit('/').next().unwrap_or(&p.path);
    let namespace = p.path.rsplit_once('/').map_or("", |(n, _)| n);
    json!({
        "id": p.id,
        "name": name,
        "path": name,
        "path_with_namespace": p.path,
        "namespace": {"full_path": namespace},
        "visibility": p.visibility.as_str(),
        "container_registry_access_level": "enabled",
        "container_registry_enabled": true,
        "created_at": time(p.created_ms),
        "container_expiration_policy": policy_json(policies.get(&p.id)),
    })
}

type Policies = std::collections::BTreeMap<u64, CleanupState>;

/// A saved policy from `container_expiration_policy_attributes` over the current one (keys
/// left out keep their value); saving an enabled policy schedules its next run a cadence
/// from now, as GitLab does.
fn policy_from(attrs: &Value, current: Option<&CleanupState>) -> Result<(CleanupPolicy, Option<u64>), V4Error> {
    let Value::Object(m) = attrs else { return Err(V4Error::bad("400 Bad request - container_expiration_policy_attributes must be an object")) };
    let mut p = current.map(|s| s.policy.clone()).unwrap_or_default();
    let bad = |k: &str| V4Error::bad(format!("400 Bad request - container_expiration_policy_attributes[{k}] is invalid"));
    let text = |k: &str, v: &Value| -> Result<Option<String>, V4Error> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            _ => Err(bad(k)),
        }
    };
    for (k, v) in m {
        match k.as_str() {
            "enabled" => p.enabled = v.as_bool().or_else(|| v.as_str().and_then(|s| s.parse().ok())).ok_or_else(|| bad(k))?,
            "cadence" => p.cadence = text(k, v)?.ok_or_else(|| bad(k))?,
            "keep_n" => {
                p.keep_n = match v {
                    Value::Null => None,
                    _ => Some(v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).and_then(|n| u32::try_from(n).ok()).ok_or_else(|| bad(k))?),
                }
            }
            "older_than" => p.older_than = text(k, v)?,
            "name_regex" | "name_regex_delete" => p.name_regex = text(k, v)?,
            "name_regex_keep" => p.name_regex_keep = text(k, v)?,
            _ => return Err(V4Error::bad(format!("400 Bad request - container_expiration_policy_attributes does not have a valid value for {k}"))),
        }
    }
    if let Some(why) = p.invalid() {
        return Err(V4Error::bad(format!("400 Bad request - container_expiration_policy_attributes: {why}")));
    }
    for re in [&p.name_regex, &p.name_regex_keep].into_iter().flatten() {
        crate::cleanup::check_regex(re).map_err(|e| V4Error::bad(format!("400 Bad request - container_expiration_policy_attributes: {e}")))?;
    }
    let next = p.cadence_ms().map(|c| berth_proto::now_ms() + c).filter(|_| p.enabled);
    Ok((p, next))
}

fn visibility_of(b: &Value) -> Result<Option<Visibility>, V4Error> {
    match b["visibility"].as_str() {
        Some(v) => Visibility::parse(v).map(Some).ok_or_else(|| V4Error::bad("visibility must be private, internal or public")),
        None => Ok(None),
    }
}

/// True when the caller may create a project or group at `path`: administrators anywhere,
/// users below their own name and below groups where they are at least Maintainer.
pub(super) fn may_create_at(s: &Session, path: &str) -> bool {
    let own = s.id().users.get(&s.user).map(|u| u.username.to_ascii_lowercase()).unwrap_or_default();
    s.admin()
        || path.starts_with(&format!("{own}/"))
        || s.id().groups_above(path).any(|g| s.id().group_role(g.id, s.user) >= Some(Role::Maintainer))
}

/// `GET /projects`: the projects the caller can see.
pub async fn list(State(api): State<Arc<Api>>, s: Session, uri: Uri) -> V4Result {
    let policies = api.meta.cleanup_policies().await?;
    let items = s.id().projects.values().filter(|p| Project::find(&s, &p.id.to_string()).is_ok()).map(|p| project_json(p, &policies)).collect();
    Ok(paged(&uri, items))
}

/// `GET /projects/:id`; with `statistics=true`, `statistics.container_registry_size`: the
/// bytes of the blobs its repositories link, each counted once.
pub async fn one(State(api): State<Arc<Api>>, s: Session, Path(key): Path<String>, uri: Uri) -> V4Result {
    let p = Project::find(&s, &key)?;
    let mut v = project_json(&p, &*api.meta.cleanup_policies().await?);
    if crate::handlers::query(&uri).get("statistics").is_some_and(|v| v == "true" || v == "1") {
        let repos = crate::inventory::repositories_of(&api, &p.path).await?;
        v["statistics"] = json!({"container_registry_size": crate::inventory::usage(&api, &repos).await?});
    }
    Ok(axum::Json(v).into_response())
}

/// `POST /projects`: `path` (`group/project`, or `namespace` + `path`), `visibility`
/// (private unless given). The creator becomes its Owner.
pub async fn create(State(api): State<Arc<Api>>, s: Session, req_body: Body) -> V4Result {
    let b = body(req_body).await?;
    let leaf = b["path"].as_str().or(b["name"].as_str()).ok_or_else(|| V4Error::bad("path is missing"))?;
    let path = match b["namespace"].as_str() {
        Some(ns) => format!("{ns}/{leaf}"),
        None => leaf.to_string(),
    }
    .to_ascii_lowercase();
    RepoName::parse(&path).map_err(|e| V4Error::bad(format!("path is invalid: {e}")))?;
    let visibility = visibility_of(&b)?.unwrap_or(Visibility::Private);
    if !may_create_at(&s, &path) {
        return Err(V4Error::forbidden());
    }
    let id = created_id(change(&api, IdentityChange::CreateProject { path, visibility, owner: Some(s.user) }).await?)?;
    let now = api.meta.identity();
    let p = now.projects.get(&id).ok_or_else(|| V4Error::not_found("Project"))?;
    Ok((StatusCode::CREATED, axum::Json(project_json(p, &Policies::new()))).into_response())
}

/// `PUT /projects/:id`: `visibility` (Owner), `container_expiration_policy_attributes`
/// (Maintainer).
pub async fn update(State(api): State<Arc<Api>>, s: Session, Path(key): Path<String>, req_body: Body) -> V4Result {
    let p = Project::find(&s, &key)?;
    let b = body(req_body).await?;
    let visibility = visibility_of(&b)?;
    let attrs = b.get("container_expiration_policy_attributes");
    p.require(&s, if visibility.is_some() || attrs.is_none() { Role::Owner } else { Role::Maintainer })?;
    if let Some(attrs) = attrs {
        let (policy, next_run_ms) = policy_from(attrs, api.meta.cleanup_policies().await?.get(&p.id))?;
        match api.meta.apply(Command::Cleanup(CleanupChange::Set { project: p.id, policy, next_run_ms })).await? {
            Outcome::Done => {}
            Outcome::NotFound => return Err(V4Error::not_found("Project")),
            other => return Err(V4Error::new(StatusCode::INTERNAL_SERVER_ERROR, format!("unexpected outcome {other:?}"))),
        }
    }
    if let Some(visibility) = visibility {
        change(&api, IdentityChange::UpdateProject { project: p.id, visibility }).await?;
    }
    let now = api.meta.identity();
    let project = now.projects.get(&p.id).ok_or_else(|| V4Error::not_found("Project"))?;
    Ok(axum::Json(project_json(project, &*api.meta.cleanup_policies().await?)).into_response())
}

/// `DELETE /projects/:id` (Owner): the project record, its members and deploy tokens; its
/// repositories stay until deleted through the registry.
pub async fn delete(State(api): State<Arc<Api>>, s: Session, Path(key): Path<String>) -> V4Result {
    let p = Project::find(&s, &key)?;
    p.require(&s, Role::Owner)?;
    change(&api, IdentityChange::DeleteProject { project: p.id }).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"message": "202 Accepted"}))).into_response())
}
