//! Who may do what to which repository, from identity, as GitLab decides it
//! (`container_registry_authentication_service.rb` and the project policy):
//!
//! | role | pull | push | delete |
//! |---|---|---|---|
//! | Guest, Reporter | yes (Guest only on internal and public projects) | no | no |
//! | Developer | yes | yes | no |
//! | Maintainer, Owner, admin | yes | yes | yes |
//!
//! Public projects are pulled by anyone, internal ones by any signed-in user. A token's
//! scopes cut further: `read_registry` pulls, `write_registry` pushes, `api` does all; deploy
//! tokens never delete; a group's deploy token reaches every project below the group, as a
//! group member's role does. A CI job token acts in its own project while the job runs. A
//! repository under a user's name (`alice/...`) outside any project belongs to that user.

use berth_proto::identity::{Identity, Role, TokenKind, TokenRecord, TokenScope, Visibility};
use serde::{Deserialize, Serialize};

/// Who is asking, once credentials are checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Principal {
    /// No credentials.
    Anonymous,
    /// A user, by password (`token: None`) or by a personal access token.
    User {
        /// User id.
        user: u64,
        /// The personal access token used, if any.
        token: Option<u64>,
    },
    /// A project's deploy token.
    Deploy {
        /// Token id.
        token: u64,
    },
    /// A CI job's token.
    Job {
        /// Token id.
        token: u64,
    },
}

impl Principal {
    /// The token this principal authenticated with, if any.
    pub fn token(&self) -> Option<u64> {
        match self {
            Principal::Anonymous => None,
            Principal::User { token, .. } => *token,
            Principal::Deploy { token } | Principal::Job { token } => Some(*token),
        }
    }

    /// The user acting, if any (a job acts as its user).
    pub fn user(&self, id: &Identity) -> Option<u64> {
        match self {
            Principal::User { user, .. } => Some(*user),
            Principal::Job { token } => match id.tokens.get(token)?.kind {
                TokenKind::Job { user, .. } => Some(user),
                _ => None,
            },
            _ => None,
        }
    }

    /// The name GitLab puts in `sub` (none for deploy tokens and anonymous).
    pub fn subject(&self, id: &Identity) -> Option<String> {
        match self {
            Principal::User { .. } | Principal::Job { .. } => Some(id.users.get(&self.user(id)?)?.username.clone()),
            _ => None,
        }
    }

    /// True while its credentials still hold (the user exists, the token is unrevoked and
    /// unexpired).
    pub fn still_valid(&self, id: &Identity, now_ms: u64) -> bool {
        let token_ok = |t: &u64| id.tokens.get(t).is_some_and(|t| t.active(now_ms));
        match self {
            Principal::Anonymous => true,
            Principal::User { user, token } => id.users.contains_key(user) && token.as_ref().is_none_or(token_ok),
            Principal::Deploy { token } | Principal::Job { token } => token_ok(token),
        }
    }

    /// Is an administrator (with a credential that carries that power).
    pub fn is_admin(&self, id: &Identity) -> bool {
        match self {
            Principal::User { user, token } => {
                id.users.get(user).is_some_and(|u| u.admin) && token_scopes(id, *token).is_none_or(|s| s.contains(&TokenScope::Api))
            }
            _ => false,
        }
    }
}

fn token_scopes(id: &Identity, token: Option<u64>) -> Option<Vec<TokenScope>> {
    token.map(|t| id.tokens.get(&t).map(|t| t.scopes.clone()).unwrap_or_default())
}

/// What a set of scopes lets a credential do (`None` scopes: a password, no limit).
fn scope_allows(scopes: Option<&[TokenScope]>, action: &str) -> bool {
    let Some(scopes) = scopes else { return true };
    scopes.iter().any(|s| match s {
        TokenScope::Api => true,
        TokenScope::ReadRegistry => action == "pull",
        TokenScope::WriteRegistry => action == "push",
    })
}

/// The role `user` holds over `repo` (their own or through a group above its project), and
/// the repository's visibility: a project's, or the
/// user namespace `<username>/...` (private, its user the owner).
fn standing(id: &Identity, user: Option<u64>, repo: &str) -> Option<(Visibility, Option<Role>, Option<u64>)> {
    if let Some(p) = id.project_of(repo) {
        return Some((p.visibility, user.and_then(|u| id.access(p.id, u)), Some(p.id)));
    }
    let first = repo.split('/').next()?;
    let owner = id.user_by_name(first)?;
    Some((Visibility::Private, (user == Some(owner.id)).then_some(Role::Owner), None))
}

/// The registry actions (`pull`, `push`, `delete`) `who` may take on `repo`.
pub fn allowed(id: &Identity, who: &Principal, repo: &str, now_ms: u64) -> Vec<&'static str> {
    if !who.still_valid(id, now_ms) {
        return vec![];
    }
    let mut out = vec![];
    for action in ["pull", "push", "delete"] {
        if allows(id, who, repo, action) {
            out.push(action);
        }
    }
    out
}

fn allows(id: &Identity, who: &Principal, repo: &str, action: &str) -> bool {
    let standing = standing(id, who.user(id), repo);
    let public_pull = action == "pull" && standing.is_some_and(|(v, _, _)| v == Visibility::Public);
    match who {
        Principal::Anonymous => public_pull,
        Principal::User { user, token } => {
            let scopes = token_scopes(id, *token);
            if !scope_allows(scopes.as_deref(), action) {
                return false;
            }
            if id.users.get(user).is_some_and(|u| u.admin) {
                return true;
            }
            role_allows(standing, action)
        }
        Principal::Deploy { token } => {
            let Some(TokenRecord { kind, scopes, .. }) = id.tokens.get(token) else { return false };
            if action == "delete" || !scope_allows(Some(scopes), action) {
                return false;
            }
            let project = standing.and_then(|(_, _, p)| p).and_then(|p| id.projects.get(&p));
            let reaches = match kind {
                TokenKind::Deploy { project: own, .. } => project.is_some_and(|p| p.id == *own),
                // A group's token reaches every project below the group.
                TokenKind::GroupDeploy { group, .. } => {
                    project.zip(id.groups.get(group)).is_some_and(|(p, g)| berth_proto::identity::within(&p.path, &g.path))
                }
                _ => false,
            };
            public_pull || reaches
        }
        Principal::Job { token } => {
            let Some(TokenRecord { kind: TokenKind::Job { project, .. }, .. }) = id.tokens.get(token) else { return false };
            match standing {
                // Its own project: pull, push and delete while the job runs.
                Some((_, _, Some(p))) if p == *project => true,
                // Elsewhere: what its user may pull.
                _ => action == "pull" && role_allows(standing, action),
            }
        }
    }
}

fn role_allows(standing: Option<(Visibility, Option<Role>, Option<u64>)>, action: &str) -> bool {
    let Some((visibility, role, _)) = standing else { return false };
    match action {
        "pull" => match visibility {
            Visibility::Public | Visibility::Internal => true,
            Visibility::Private => role >= Some(Role::Reporter),
        },
        "push" => role >= Some(Role::Developer),
        "delete" => role >= Some(Role::Maintainer),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::identity::{Project, User};

    fn world() -> Identity {
        let mut id = Identity::default();
        for (uid, name, admin) in [(1, "root", true), (2, "dev", false), (3, "rep", false), (4, "maint", false), (5, "out", false)] {
            id.users.insert(uid, User { id: uid, username: name.into(), password_hash: None, admin, created_ms: 0 });
        }
        for (pid, path, v) in [(10, "grp/app", Visibility::Private), (11, "pub/lib", Visibility::Public), (12, "corp/int", Visibility::Internal)] {
            id.projects.insert(pid, Project { id: pid, path: path.into(), visibility: v, created_ms: 0 });
        }
        id.members.insert((10, 2), Role::Developer);
        id.members.insert((10, 3), Role::Reporter);
        id.members.insert((10, 4), Role::Maintainer);
        let tok = |tid, kind, scopes: &[TokenScope], revoked| TokenRecord {
            id: tid,
            kind,
            name: "t".into(),
            hash: vec![],
            scopes: scopes.to_vec(),
            created_ms: 0,
            expires_ms: Some(1000),
            revoked,
        };
        id.tokens.insert(20, tok(20, TokenKind::Personal { user: 2 }, &[TokenScope::ReadRegistry], false));
        id.tokens.insert(21, tok(21, TokenKind::Deploy { project: 10, username: "gitlab+deploy-token-21".into() }, &[TokenScope::ReadRegistry, TokenScope::WriteRegistry], false));
        id.tokens.insert(22, tok(22, TokenKind::Job { project: 10, user: 3 }, &[], false));
        id.tokens.insert(23, tok(23, TokenKind::Personal { user: 2 }, &[TokenScope::Api], true));
        // Group `grp` holds grp/app; user 5 is a Developer of the group.
        id.groups.insert(30, berth_proto::identity::Group { id: 30, path: "grp".into(), created_ms: 0 });
        id.groups.insert(31, berth_proto::identity::Group { id: 31, path: "gr".into(), created_ms: 0 });
        id.group_members.insert((31, 3), Role::Owner);
        id.tokens.insert(24, tok(24, TokenKind::GroupDeploy { group: 30, username: "gitlab+deploy-token-24".into() }, &[TokenScope::ReadRegistry], false));
        id.tokens.insert(25, tok(25, TokenKind::GroupDeploy { group: 31, username: "gitlab+deploy-token-25".into() }, &[TokenScope::ReadRegistry], false));
        id
    }

    #[test]
    fn groups_reach_the_projects_below_them() {
        let mut id = world();
        let a = |id: &Identity, who: &Principal, repo| allowed(id, who, repo, 10);
        let five = Principal::User { user: 5, token: None };
        assert_eq!(a(&id, &five, "grp/app"), Vec::<&str>::new());
        id.group_members.insert((30, 5), Role::Developer);
        assert_eq!(a(&id, &five, "grp/app/img"), ["pull", "push"]);
        // A higher own role wins over the group's, and the group's over a lower own role.
        id.group_members.insert((30, 4), Role::Reporter);
        assert_eq!(a(&id, &Principal::User { user: 4, token: None }, "grp/app"), ["pull", "push", "delete"]);
        id.group_members.insert((30, 3), Role::Maintainer);
        assert_eq!(a(&id, &Principal::User { user: 3, token: None }, "grp/app"), ["pull", "push", "delete"]);
        // Group `gr` is not above `grp/app`: its Owner gets nothing there from it.
        id.group_members.remove(&(30, 3));
        assert_eq!(a(&id, &Principal::User { user: 3, token: None }, "grp/app"), ["pull"]);
        // A group deploy token pulls every project below its group, and nothing else.
        assert_eq!(a(&id, &Principal::Deploy { token: 24 }, "grp/app/img"), ["pull"]);
        assert_eq!(a(&id, &Principal::Deploy { token: 24 }, "corp/int"), Vec::<&str>::new());
        assert_eq!(a(&id, &Principal::Deploy { token: 25 }, "grp/app"), Vec::<&str>::new());
    }

    #[test]
    fn roles_visibility_and_scopes() {
        let id = world();
        let user = |u| Principal::User { user: u, token: None };
        let a = |who: &Principal, repo| allowed(&id, who, repo, 10);
        assert_eq!(a(&user(2), "grp/app"), ["pull", "push"]);
        assert_eq!(a(&user(2), "grp/app/sub/image"), ["pull", "push"]);
        assert_eq!(a(&user(3), "grp/app"), ["pull"]);
        assert_eq!(a(&user(4), "grp/app"), ["pull", "push", "delete"]);
        assert_eq!(a(&user(5), "grp/app"), Vec::<&str>::new());
        assert_eq!(a(&user(1), "anything/at/all"), ["pull", "push", "delete"]);
        assert_eq!(a(&Principal::Anonymous, "pub/lib"), ["pull"]);
        assert_eq!(a(&Principal::Anonymous, "corp/int"), Vec::<&str>::new());
        assert_eq!(a(&user(5), "corp/int"), ["pull"]);
        assert_eq!(a(&Principal::Anonymous, "grp/app"), Vec::<&str>::new());
        // A personal namespace belongs to its user.
        assert_eq!(a(&user(5), "out/tool"), ["pull", "push", "delete"]);
        assert_eq!(a(&user(2), "out/tool"), Vec::<&str>::new());
        // A read_registry token of a Developer only pulls.
        assert_eq!(a(&Principal::User { user: 2, token: Some(20) }, "grp/app"), ["pull"]);
        // A revoked token does nothing, and an expired one neither.
        assert_eq!(a(&Principal::User { user: 2, token: Some(23) }, "grp/app"), Vec::<&str>::new());
        assert_eq!(allowed(&id, &Principal::User { user: 2, token: Some(20) }, "grp/app", 5000), Vec::<&str>::new());
        // Deploy tokens: their project only, never delete.
        assert_eq!(a(&Principal::Deploy { token: 21 }, "grp/app"), ["pull", "push"]);
        assert_eq!(a(&Principal::Deploy { token: 21 }, "corp/int"), Vec::<&str>::new());
        assert_eq!(a(&Principal::Deploy { token: 21 }, "pub/lib"), ["pull"]);
        // A job: everything in its project, its user's pulls elsewhere.
        assert_eq!(a(&Principal::Job { token: 22 }, "grp/app"), ["pull", "push", "delete"]);
        assert_eq!(a(&Principal::Job { token: 22 }, "corp/int"), ["pull"]);
        assert!(Principal::User { user: 1, token: None }.is_admin(&id));
        assert!(!Principal::User { user: 2, token: None }.is_admin(&id));
        assert_eq!(Principal::Deploy { token: 21 }.subject(&id), None);
        assert_eq!(Principal::Job { token: 22 }.subject(&id).as_deref(), Some("rep"));
    }
}
