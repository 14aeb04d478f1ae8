//! Identity, replicated through Raft so every node agrees: users, projects and their members,
//! personal access tokens, deploy tokens, CI job tokens and the keys that sign registry
//! tokens. Secrets are stored hashed (passwords with bcrypt, tokens with SHA-256: they are
//! random and long, so a fast hash is enough); token signing keys are the exception, as
//! every node must be able to sign.
//!
//! The records and the changes live here because they cross process boundaries; the state
//! machine applies changes in `raft-store`, and `api` decides access from a copy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// GitLab's access levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// 10: pulls internal projects.
    Guest,
    /// 20: pulls.
    Reporter,
    /// 30: pushes, deletes single tags through the API.
    Developer,
    /// 40: also deletes manifests and repositories, manages policies and deploy tokens.
    Maintainer,
    /// 50: everything in the project.
    Owner,
}

impl Role {
    /// GitLab's numeric `access_level`.
    pub fn access_level(self) -> u32 {
        match self {
            Role::Guest => 10,
            Role::Reporter => 20,
            Role::Developer => 30,
            Role::Maintainer => 40,
            Role::Owner => 50,
        }
    }

    /// The role of a numeric `access_level`.
    pub fn from_access_level(level: u64) -> Option<Role> {
        Some(match level {
            10 => Role::Guest,
            20 => Role::Reporter,
            30 => Role::Developer,
            40 => Role::Maintainer,
            50 => Role::Owner,
            _ => return None,
        })
    }
}

/// Who may pull a project's repositories without being a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Visibility {
    /// Anyone, anonymous included.
    Public,
    /// Any signed-in user.
    Internal,
    /// Members (Reporter and up).
    Private,
}

impl Visibility {
    /// GitLab's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Internal => "internal",
            Visibility::Private => "private",
        }
    }

    /// From GitLab's spelling.
    pub fn parse(s: &str) -> Option<Visibility> {
        Some(match s {
            "public" => Visibility::Public,
            "internal" => Visibility::Internal,
            "private" => Visibility::Private,
            _ => return None,
        })
    }
}

/// Token scopes Berth understands (GitLab's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TokenScope {
    /// The whole API, and registry pull, push and delete.
    Api,
    /// Registry pull.
    ReadRegistry,
    /// Registry push.
    WriteRegistry,
}

impl TokenScope {
    /// GitLab's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenScope::Api => "api",
            TokenScope::ReadRegistry => "read_registry",
            TokenScope::WriteRegistry => "write_registry",
        }
    }

    /// From GitLab's spelling.
    pub fn parse(s: &str) -> Option<TokenScope> {
        Some(match s {
            "api" => TokenScope::Api,
            "read_registry" => TokenScope::ReadRegistry,
            "write_registry" => TokenScope::WriteRegistry,
            _ => return None,
        })
    }
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Id, never reused.
    pub id: u64,
    /// Login name.
    pub username: String,
    /// bcrypt hash of the password; `None`: tokens only.
    pub password_hash: Option<String>,
    /// Administrators may do everything.
    pub admin: bool,
    /// When created (ms since epoch).
    pub created_ms: u64,
}

/// A project: a path prefix owning the repositories below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// Id, never reused.
    pub id: u64,
    /// `group/sub/project`, lowercase.
    pub path: String,
    /// Who may pull without being a member.
    pub visibility: Visibility,
    /// When created (ms since epoch).
    pub created_ms: u64,
}

/// A group: a path prefix whose members and deploy tokens reach every project below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Id, never reused (shared with users, projects and tokens).
    pub id: u64,
    /// `group` or `group/subgroup`, lowercase.
    pub path: String,
    /// When created (ms since epoch).
    pub created_ms: u64,
}

/// A secret that authenticates as someone, stored as its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Id, never reused.
    pub id: u64,
    /// What it is.
    pub kind: TokenKind,
    /// A name for people.
    pub name: String,
    /// SHA-256 of the secret.
    #[serde(with = "serde_bytes")]
    pub hash: Vec<u8>,
    /// What it may do.
    pub scopes: Vec<TokenScope>,
    /// When created (ms since epoch).
    pub created_ms: u64,
    /// Stops working after this (ms since epoch).
    pub expires_ms: Option<u64>,
    /// Revoked (or, for a job token, its job ended).
    pub revoked: bool,
}

/// Whose a token is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenKind {
    /// A user's personal access token.
    Personal {
        /// The user.
        user: u64,
    },
    /// A project's deploy token, used with its own username.
    Deploy {
        /// The project.
        project: u64,
        /// The username it logs in with (`gitlab+deploy-token-N` unless given).
        username: String,
    },
    /// A CI job's token (`gitlab-ci-token`): its project, as its user, while the job runs.
    Job {
        /// The project the job runs in.
        project: u64,
        /// The user the job runs as.
        user: u64,
    },
    /// A group's deploy token: every project below the group, used with its own username.
    GroupDeploy {
        /// The group.
        group: u64,
        /// The username it logs in with (`gitlab+deploy-token-N` unless given).
        username: String,
    },
}

impl TokenKind {
    /// The username a deploy token (project or group) logs in with.
    pub fn deploy_username(&self) -> Option<&str> {
        match self {
            TokenKind::Deploy { username, .. } | TokenKind::GroupDeploy { username, .. } => Some(username),
            _ => None,
        }
    }
}

impl TokenRecord {
    /// True when it may be used at `now_ms`.
    pub fn active(&self, now_ms: u64) -> bool {
        !self.revoked && self.expires_ms.is_none_or(|e| now_ms < e)
    }
}

/// A key that signs registry tokens (ES256), and when it stopped being used to sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    /// Key id (`kid`).
    pub kid: String,
    /// PKCS#8 DER private key.
    #[serde(with = "serde_bytes")]
    pub pkcs8: Vec<u8>,
    /// When added (ms since epoch).
    pub created_ms: u64,
    /// When a newer key replaced it; it keeps verifying until tokens it signed expire.
    pub retired_ms: Option<u64>,
}

/// All of it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Bumped by every change, so copies know when they are stale.
    pub version: u64,
    /// The next id to give out (users, projects and tokens share one sequence).
    pub next_id: u64,
    /// Users by id.
    pub users: BTreeMap<u64, User>,
    /// Projects by id.
    pub projects: BTreeMap<u64, Project>,
    /// (project, user) -> role.
    pub members: BTreeMap<(u64, u64), Role>,
    /// Tokens by id.
    pub tokens: BTreeMap<u64, TokenRecord>,
    /// Signing keys, oldest first; the last unretired one signs.
    pub signing_keys: Vec<SigningKey>,
    /// Groups by id.
    pub groups: BTreeMap<u64, Group>,
    /// (group, user) -> role, inherited by every project below the group.
    pub group_members: BTreeMap<(u64, u64), Role>,
}

/// A change to identity; the proposer hashes secrets before proposing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdentityChange {
    /// A new user (`Conflict` if the name is taken).
    CreateUser {
        /// Login name.
        username: String,
        /// bcrypt hash.
        password_hash: Option<String>,
        /// Administrator.
        admin: bool,
    },
    /// The first administrator, only if there is no user yet (`Unchanged` otherwise).
    BootstrapAdmin {
        /// Login name.
        username: String,
        /// bcrypt hash.
        password_hash: String,
    },
    /// Changes a user's password or admin flag.
    UpdateUser {
        /// The user.
        user: u64,
        /// New bcrypt hash, if changing.
        password_hash: Option<String>,
        /// New admin flag, if changing.
        admin: Option<bool>,
    },
    /// Deletes a user, their memberships and their tokens.
    DeleteUser {
        /// The user.
        user: u64,
    },
    /// A new project (`Conflict` if the path is taken or nests in another project).
    CreateProject {
        /// `group/project`.
        path: String,
        /// Visibility.
        visibility: Visibility,
        /// Made Owner of it, if any.
        owner: Option<u64>,
    },
    /// Changes a project's visibility.
    UpdateProject {
        /// The project.
        project: u64,
        /// New visibility.
        visibility: Visibility,
    },
    /// Deletes a project record (its repositories stay), its members and deploy tokens.
    DeleteProject {
        /// The project.
        project: u64,
    },
    /// Adds or changes a member.
    SetMember {
        /// The project.
        project: u64,
        /// The user.
        user: u64,
        /// Their role.
        role: Role,
    },
    /// Removes a member.
    RemoveMember {
        /// The project.
        project: u64,
        /// The user.
        user: u64,
    },
    /// A new token of any kind.
    CreateToken {
        /// Whose.
        kind: TokenKind,
        /// Name.
        name: String,
        /// SHA-256 of the secret.
        #[serde(with = "serde_bytes")]
        hash: Vec<u8>,
        /// Scopes.
        scopes: Vec<TokenScope>,
        /// Expiry.
        expires_ms: Option<u64>,
    },
    /// Revokes a token (ends a job).
    RevokeToken {
        /// The token.
        token: u64,
    },
    /// Adds a signing key and retires the one that signed before it.
    AddSigningKey {
        /// Key id.
        kid: String,
        /// PKCS#8 DER.
        #[serde(with = "serde_bytes")]
        pkcs8: Vec<u8>,
    },
    /// Forgets keys retired before `before_ms` (their tokens have all expired).
    DropRetiredKeys {
        /// Cut-off (ms since epoch).
        before_ms: u64,
    },
    /// A new group (`Conflict` if the path is taken or lies at or below a project).
    CreateGroup {
        /// `group` or `group/subgroup`.
        path: String,
        /// Made Owner of it, if any.
        owner: Option<u64>,
    },
    /// Deletes a group record, its members and its deploy tokens (projects stay).
    DeleteGroup {
        /// The group.
        group: u64,
    },
    /// Adds or changes a group member.
    SetGroupMember {
        /// The group.
        group: u64,
        /// The user.
        user: u64,
        /// Their role, in the group and every project below it.
        role: Role,
    },
    /// Removes a group member.
    RemoveGroupMember {
        /// The group.
        group: u64,
        /// The user.
        user: u64,
    },
}

impl IdentityChange {
    /// The log-entry protocol that introduced this change (see `berth_proto::command::PROTOCOL`).
    pub fn since(&self) -> u32 {
        match self {
            IdentityChange::CreateGroup { .. }
            | IdentityChange::DeleteGroup { .. }
            | IdentityChange::SetGroupMember { .. }
            | IdentityChange::RemoveGroupMember { .. }
            | IdentityChange::CreateToken { kind: TokenKind::GroupDeploy { .. }, .. } => 2,
            _ => 1,
        }
    }
}

impl Identity {
    /// The user with this name.
    pub fn user_by_name(&self, username: &str) -> Option<&User> {
        self.users.values().find(|u| u.username == username)
    }

    /// The project with exactly this path.
    pub fn project_by_path(&self, path: &str) -> Option<&Project> {
        self.projects.values().find(|p| p.path == path)
    }

    /// The project owning repository `repo`: the one whose path is `repo` or a prefix of it
    /// ending at a `/`.
    pub fn project_of(&self, repo: &str) -> Option<&Project> {
        self.projects
            .values()
            .filter(|p| within(repo, &p.path))
            .max_by_key(|p| p.path.len())
    }

    /// A user's own membership of a project (not counting groups).
    pub fn role(&self, project: u64, user: u64) -> Option<Role> {
        self.members.get(&(project, user)).copied()
    }

    /// The group with exactly this path.
    pub fn group_by_path(&self, path: &str) -> Option<&Group> {
        self.groups.values().find(|g| g.path == path)
    }

    /// The groups `path` lies below (strictly), outermost first.
    pub fn groups_above<'a>(&'a self, path: &'a str) -> impl Iterator<Item = &'a Group> + 'a {
        self.groups.values().filter(move |g| within(path, &g.path) && path != g.path)
    }

    /// A user's role in a group: their own, or the highest inherited from a parent group.
    pub fn group_role(&self, group: u64, user: u64) -> Option<Role> {
        let g = self.groups.get(&group)?;
        let inherited = self.groups_above(&g.path).filter_map(|p| self.group_members.get(&(p.id, user)).copied()).max();
        self.group_members.get(&(group, user)).copied().max(inherited)
    }

    /// A user's effective role in a project, as GitLab reckons access: the highest of their
    /// own membership and those of the groups above the project.
    pub fn access(&self, project: u64, user: u64) -> Option<Role> {
        let p = self.projects.get(&project)?;
        let inherited = self.groups_above(&p.path).filter_map(|g| self.group_members.get(&(g.id, user)).copied()).max();
        self.role(project, user).max(inherited)
    }

    /// The key that signs new tokens.
    pub fn current_key(&self) -> Option<&SigningKey> {
        self.signing_keys.iter().rev().find(|k| k.retired_ms.is_none())
    }
}

/// True when `inner` is `outer` or lies below it (at a `/`).
pub fn within(inner: &str, outer: &str) -> bool {
    inner == outer || (inner.starts_with(outer) && inner.as_bytes().get(outer.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_belong_to_the_longest_project_prefix() {
        let mut id = Identity::default();
        for (i, path) in [(1, "grp"), (2, "grp/app"), (3, "grp/application")] {
            id.projects.insert(i, Project { id: i, path: path.into(), visibility: Visibility::Private, created_ms: 0 });
        }
        assert_eq!(id.project_of("grp/app").map(|p| p.id), Some(2));
        assert_eq!(id.project_of("grp/app/sub/image").map(|p| p.id), Some(2));
        assert_eq!(id.project_of("grp/apple").map(|p| p.id), Some(1));
        assert_eq!(id.project_of("grp/application/x").map(|p| p.id), Some(3));
        assert_eq!(id.project_of("other"), None);
        assert_eq!(id.project_of("gr"), None);
    }

    #[test]
    fn group_members_reach_the_projects_below() {
        let mut id = Identity::default();
        id.projects.insert(1, Project { id: 1, path: "grp/sub/app".into(), visibility: Visibility::Private, created_ms: 0 });
        id.projects.insert(2, Project { id: 2, path: "grpx/app".into(), visibility: Visibility::Private, created_ms: 0 });
        id.groups.insert(3, Group { id: 3, path: "grp".into(), created_ms: 0 });
        id.groups.insert(4, Group { id: 4, path: "grp/sub".into(), created_ms: 0 });
        id.group_members.insert((3, 9), Role::Reporter);
        id.group_members.insert((4, 9), Role::Developer);
        id.members.insert((1, 8), Role::Maintainer);
        id.group_members.insert((3, 8), Role::Guest);
        assert_eq!(id.access(1, 9), Some(Role::Developer));
        assert_eq!(id.role(1, 9), None);
        assert_eq!(id.access(1, 8), Some(Role::Maintainer));
        assert_eq!(id.access(2, 9), None, "grpx is not below grp");
        assert_eq!(id.group_role(4, 8), Some(Role::Guest));
        assert_eq!(id.group_role(3, 9), Some(Role::Reporter));
    }
}
