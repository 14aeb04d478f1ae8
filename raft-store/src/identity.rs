//! Applies identity changes (users, projects, members, tokens, signing keys) in log order.
//! Deterministic: ids come from a counter in the state, time from the proposer.

use berth_proto::identity::{within, Group, Identity, IdentityChange, SigningKey, TokenKind, User};
use berth_proto::Outcome;

fn conflict(reason: impl Into<String>) -> Outcome {
    Outcome::Conflict { reason: reason.into() }
}

fn next_id(id: &mut Identity) -> u64 {
    id.next_id = id.next_id.max(1);
    let n = id.next_id;
    id.next_id += 1;
    n
}

/// True when one path is the other or holds it.
fn nests(a: &str, b: &str) -> bool {
    within(a, b) || within(b, a)
}

/// Applies one change at `at_ms`.
pub fn apply(id: &mut Identity, change: &IdentityChange, at_ms: u64) -> Outcome {
    let outcome = apply_inner(id, change, at_ms);
    if !matches!(outcome, Outcome::Unchanged | Outcome::NotFound | Outcome::Conflict { .. }) {
        id.version += 1;
    }
    outcome
}

fn apply_inner(id: &mut Identity, change: &IdentityChange, at_ms: u64) -> Outcome {
    match change {
        IdentityChange::CreateUser { username, password_hash, admin } => {
            if id.user_by_name(username).is_some() {
                return conflict(format!("username {username} is taken"));
            }
            let n = next_id(id);
            id.users.insert(n, User { id: n, username: username.clone(), password_hash: password_hash.clone(), admin: *admin, created_ms: at_ms });
            Outcome::Created { id: n }
        }
        IdentityChange::BootstrapAdmin { username, password_hash } => {
            if !id.users.is_empty() {
                return Outcome::Unchanged;
            }
            let n = next_id(id);
            id.users.insert(n, User { id: n, username: username.clone(), password_hash: Some(password_hash.clone()), admin: true, created_ms: at_ms });
            Outcome::Created { id: n }
        }
        IdentityChange::UpdateUser { user, password_hash, admin } => {
            let Some(u) = id.users.get_mut(user) else { return Outcome::NotFound };
            if let Some(h) = password_hash {
                u.password_hash = Some(h.clone());
            }
            if let Some(a) = admin {
                u.admin = *a;
            }
            Outcome::Done
        }
        IdentityChange::DeleteUser { user } => {
            if id.users.remove(user).is_none() {
                return Outcome::NotFound;
            }
            id.members.retain(|(_, u), _| u != user);
            id.group_members.retain(|(_, u), _| u != user);
            id.tokens.retain(|_, t| !matches!(t.kind, TokenKind::Personal { user: u } | TokenKind::Job { user: u, .. } if u == *user));
            Outcome::Done
        }
        IdentityChange::CreateProject { path, visibility, owner } => {
            if let Some(p) = id.projects.values().find(|p| nests(&p.path, path)) {
                return conflict(format!("{path} overlaps project {}", p.path));
            }
            if let Some(g) = id.groups.values().find(|g| within(&g.path, path)) {
                return conflict(format!("{path} would hold group {}", g.path));
            }
            if owner.is_some_and(|o| !id.users.contains_key(&o)) {
                return Outcome::NotFound;
            }
            let n = next_id(id);
            id.projects.insert(n, berth_proto::identity::Project { id: n, path: path.clone(), visibility: *visibility, created_ms: at_ms });
            if let Some(o) = owner {
                id.members.insert((n, *o), berth_proto::identity::Role::Owner);
            }
            Outcome::Created { id: n }
        }
        IdentityChange::UpdateProject { project, visibility } => {
            let Some(p) = id.projects.get_mut(project) else { return Outcome::NotFound };
            p.visibility = *visibility;
            Outcome::Done
        }
        IdentityChange::DeleteProject { project } => {
            if id.projects.remove(project).is_none() {
                return Outcome::NotFound;
            }
            id.members.retain(|(p, _), _| p != project);
            id.tokens.retain(|_, t| !matches!(t.kind, TokenKind::Deploy { project: p, .. } | TokenKind::Job { project: p, .. } if p == *project));
            Outcome::Done
        }
        IdentityChange::SetMember { project, user, role } => {
            if !id.projects.contains_key(project) || !id.users.contains_key(user) {
                return Outcome::NotFound;
            }
            id.members.insert((*project, *user), *role);
            Outcome::Done
        }
        IdentityChange::RemoveMember { project, user } => match id.members.remove(&(*project, *user)) {
            Some(_) => Outcome::Done,
            None => Outcome::NotFound,
        },
        IdentityChange::CreateToken { kind, name, hash, scopes, expires_ms } => {
            let owner_exists = match kind {
                TokenKind::Personal { user } => id.users.contains_key(user),
                TokenKind::Deploy { project, .. } => id.projects.contains_key(project),
                TokenKind::Job { project, user } => id.projects.contains_key(project) && id.users.contains_key(user),
                TokenKind::GroupDeploy { group, .. } => id.groups.contains_key(group),
            };
            if !owner_exists {
                return Outcome::NotFound;
            }
            if let Some(username) = kind.deploy_username() {
                if id.user_by_name(username).is_some() {
                    return conflict(format!("username {username} belongs to a user"));
                }
            }
            let n = next_id(id);
            // An empty username asks for the default, which needs the id.
            let kind = match kind {
                TokenKind::Deploy { project, username } if username.is_empty() => {
                    TokenKind::Deploy { project: *project, username: format!("gitlab+deploy-token-{n}") }
                }
                TokenKind::GroupDeploy { group, username } if username.is_empty() => {
                    TokenKind::GroupDeploy { group: *group, username: format!("gitlab+deploy-token-{n}") }
                }
                k => k.clone(),
            };
            id.tokens.insert(
                n,
                berth_proto::identity::TokenRecord {
                    id: n,
                    kind,
                    name: name.clone(),
                    hash: hash.clone(),
                    scopes: scopes.clone(),
                    created_ms: at_ms,
                    expires_ms: *expires_ms,
                    revoked: false,
                },
            );
            Outcome::Created { id: n }
        }
        IdentityChange::RevokeToken { token } => match id.tokens.get_mut(token) {
            Some(t) if t.revoked => Outcome::Unchanged,
            Some(t) => {
                t.revoked = true;
                Outcome::Done
            }
            None => Outcome::NotFound,
        },
        IdentityChange::AddSigningKey { kid, pkcs8 } => {
            if id.signing_keys.iter().any(|k| k.kid == *kid) {
                return Outcome::Unchanged;
            }
            for k in id.signing_keys.iter_mut().filter(|k| k.retired_ms.is_none()) {
                k.retired_ms = Some(at_ms);
            }
            id.signing_keys.push(SigningKey { kid: kid.clone(), pkcs8: pkcs8.clone(), created_ms: at_ms, retired_ms: None });
            Outcome::Done
        }
        IdentityChange::DropRetiredKeys { before_ms } => {
            let before = id.signing_keys.len();
            id.signing_keys.retain(|k| k.retired_ms.is_none_or(|r| r >= *before_ms));
            if id.signing_keys.len() == before {
                Outcome::Unchanged
            } else {
                Outcome::Done
            }
        }
        IdentityChange::CreateGroup { path, owner } => {
            if id.group_by_path(path).is_some() {
                return conflict(format!("group {path} exists"));
            }
            if let Some(p) = id.projects.values().find(|p| within(path, &p.path)) {
                return conflict(format!("{path} lies within project {}", p.path));
            }
            if owner.is_some_and(|o| !id.users.contains_key(&o)) {
                return Outcome::NotFound;
            }
            let n = next_id(id);
            id.groups.insert(n, Group { id: n, path: path.clone(), created_ms: at_ms });
            if let Some(o) = owner {
                id.group_members.insert((n, *o), berth_proto::identity::Role::Owner);
            }
            Outcome::Created { id: n }
        }
        IdentityChange::DeleteGroup { group } => {
            if id.groups.remove(group).is_none() {
                return Outcome::NotFound;
            }
            id.group_members.retain(|(g, _), _| g != group);
            id.tokens.retain(|_, t| !matches!(t.kind, TokenKind::GroupDeploy { group: g, .. } if g == *group));
            Outcome::Done
        }
        IdentityChange::SetGroupMember { group, user, role } => {
            if !id.groups.contains_key(group) || !id.users.contains_key(user) {
                return Outcome::NotFound;
            }
            id.group_members.insert((*group, *user), *role);
            Outcome::Done
        }
        IdentityChange::RemoveGroupMember { group, user } => match id.group_members.remove(&(*group, *user)) {
            Some(_) => Outcome::Done,
            None => Outcome::NotFound,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::identity::{Role, TokenScope, Visibility};

    #[test]
    fn users_projects_tokens_and_keys() {
        let mut id = Identity::default();
        let Outcome::Created { id: admin } = apply(&mut id, &IdentityChange::BootstrapAdmin { username: "root".into(), password_hash: "h".into() }, 1) else { panic!() };
        assert_eq!(apply(&mut id, &IdentityChange::BootstrapAdmin { username: "other".into(), password_hash: "h".into() }, 2), Outcome::Unchanged);
        assert!(matches!(apply(&mut id, &IdentityChange::CreateUser { username: "root".into(), password_hash: None, admin: false }, 3), Outcome::Conflict { .. }));
        let Outcome::Created { id: dev } = apply(&mut id, &IdentityChange::CreateUser { username: "dev".into(), password_hash: None, admin: false }, 3) else { panic!() };
        let Outcome::Created { id: p } = apply(&mut id, &IdentityChange::CreateProject { path: "grp/app".into(), visibility: Visibility::Private, owner: Some(admin) }, 4) else { panic!() };
        for nested in ["grp", "grp/app/sub", "grp/app"] {
            let o = apply(&mut id, &IdentityChange::CreateProject { path: nested.into(), visibility: Visibility::Private, owner: None }, 5);
            assert!(matches!(o, Outcome::Conflict { .. }), "{nested}");
        }
        assert!(matches!(apply(&mut id, &IdentityChange::CreateProject { path: "grp/apple".into(), visibility: Visibility::Public, owner: None }, 5), Outcome::Created { .. }));
        assert_eq!(apply(&mut id, &IdentityChange::SetMember { project: p, user: dev, role: Role::Developer }, 6), Outcome::Done);
        assert_eq!(id.role(p, dev), Some(Role::Developer));
        assert_eq!(id.role(p, admin), Some(Role::Owner));
        let tok = |kind| IdentityChange::CreateToken { kind, name: "t".into(), hash: vec![1; 32], scopes: vec![TokenScope::ReadRegistry], expires_ms: None };
        let Outcome::Created { id: dt } = apply(&mut id, &tok(TokenKind::Deploy { project: p, username: String::new() }), 7) else { panic!() };
        assert_eq!(id.tokens[&dt].kind, TokenKind::Deploy { project: p, username: format!("gitlab+deploy-token-{dt}") });
        let Outcome::Created { id: pat } = apply(&mut id, &tok(TokenKind::Personal { user: dev }), 8) else { panic!() };
        assert!(id.tokens[&pat].active(9));
        assert_eq!(apply(&mut id, &IdentityChange::RevokeToken { token: pat }, 9), Outcome::Done);
        assert!(!id.tokens[&pat].active(10));
        let v = id.version;
        assert_eq!(apply(&mut id, &IdentityChange::RevokeToken { token: pat }, 10), Outcome::Unchanged);
        assert_eq!(id.version, v, "no change, no new version");
        // Deleting the user takes their memberships and tokens with them.
        assert_eq!(apply(&mut id, &IdentityChange::DeleteUser { user: dev }, 11), Outcome::Done);
        assert_eq!(id.role(p, dev), None);
        assert!(!id.tokens.contains_key(&pat));
        assert!(id.tokens.contains_key(&dt));
        // Keys rotate: the old one is retired, not forgotten, until told.
        apply(&mut id, &IdentityChange::AddSigningKey { kid: "a".into(), pkcs8: vec![1] }, 12);
        apply(&mut id, &IdentityChange::AddSigningKey { kid: "b".into(), pkcs8: vec![2] }, 13);
        assert_eq!(id.current_key().unwrap().kid, "b");
        assert_eq!(id.signing_keys[0].retired_ms, Some(13));
        assert_eq!(apply(&mut id, &IdentityChange::DropRetiredKeys { before_ms: 13 }, 14), Outcome::Unchanged);
        assert_eq!(apply(&mut id, &IdentityChange::DropRetiredKeys { before_ms: 14 }, 14), Outcome::Done);
        assert_eq!(id.signing_keys.len(), 1);
    }

    #[test]
    fn groups_hold_projects_members_and_deploy_tokens() {
        let mut id = Identity::default();
        let Outcome::Created { id: u } = apply(&mut id, &IdentityChange::CreateUser { username: "u".into(), password_hash: None, admin: false }, 1) else { panic!() };
        let Outcome::Created { id: p } = apply(&mut id, &IdentityChange::CreateProject { path: "grp/app".into(), visibility: Visibility::Private, owner: None }, 2) else { panic!() };
        // A group above a project is fine; at or inside one is not; nor a project holding a group.
        let Outcome::Created { id: g } = apply(&mut id, &IdentityChange::CreateGroup { path: "grp".into(), owner: Some(u) }, 3) else { panic!() };
        for bad in ["grp", "grp/app", "grp/app/x"] {
            assert!(matches!(apply(&mut id, &IdentityChange::CreateGroup { path: bad.into(), owner: None }, 4), Outcome::Conflict { .. }), "{bad}");
        }
        let Outcome::Created { .. } = apply(&mut id, &IdentityChange::CreateGroup { path: "top/sub".into(), owner: None }, 4) else { panic!() };
        assert!(matches!(apply(&mut id, &IdentityChange::CreateProject { path: "top".into(), visibility: Visibility::Private, owner: None }, 5), Outcome::Conflict { .. }));
        assert_eq!(id.access(p, u), Some(Role::Owner), "the group's owner owns its projects");
        assert_eq!(apply(&mut id, &IdentityChange::SetGroupMember { group: g, user: u, role: Role::Reporter }, 6), Outcome::Done);
        assert_eq!(id.access(p, u), Some(Role::Reporter));
        let tok = IdentityChange::CreateToken {
            kind: TokenKind::GroupDeploy { group: g, username: String::new() },
            name: "t".into(), hash: vec![2; 32], scopes: vec![TokenScope::ReadRegistry], expires_ms: None,
        };
        let Outcome::Created { id: t } = apply(&mut id, &tok, 7) else { panic!() };
        assert_eq!(id.tokens[&t].kind.deploy_username(), Some(format!("gitlab+deploy-token-{t}").as_str()));
        // Deleting the group takes its members and tokens; the project stays.
        assert_eq!(apply(&mut id, &IdentityChange::DeleteGroup { group: g }, 8), Outcome::Done);
        assert_eq!(id.access(p, u), None);
        assert!(!id.tokens.contains_key(&t));
        assert!(id.projects.contains_key(&p));
    }
}
