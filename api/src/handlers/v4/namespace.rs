//! What projects and groups share under `/api/v4`: both are paths with members and deploy
//! tokens, so the member and deploy-token endpoints are written once, for either.

use berth_proto::identity::{Group, IdentityChange, Project, Role, TokenKind, Visibility};

use super::{Session, V4Error};

/// A project or a group, as the member and deploy-token endpoints see it.
pub trait Namespace: Clone + Send + Sync + 'static {
    /// The least role that creates and revokes deploy tokens (GitLab: Maintainer in a
    /// project, Owner in a group).
    const DEPLOY_ADMIN: Role;

    /// By numeric id or (URL-encoded) path; one the caller may not see does not exist.
    fn find(s: &Session, key: &str) -> Result<Self, V4Error>;
    /// Its direct members.
    fn members(&self, s: &Session) -> Vec<(u64, Role)>;
    /// The role the caller holds here, inherited ones included (administrators: Owner).
    fn caller_role(&self, s: &Session) -> Option<Role>;
    /// A user's direct membership.
    fn member(&self, s: &Session, user: u64) -> Option<Role>;
    /// The change that makes `user` a member with `role`.
    fn set_member(&self, user: u64, role: Role) -> IdentityChange;
    /// The change that removes `user`.
    fn remove_member(&self, user: u64) -> IdentityChange;
    /// A deploy token of its own, logging in as `username` (empty: the default name).
    fn deploy_kind(&self, username: String) -> TokenKind;
    /// True for its own deploy tokens.
    fn owns(&self, kind: &TokenKind) -> bool;

    /// Requires at least `min` here.
    fn require(&self, s: &Session, min: Role) -> Result<(), V4Error> {
        if self.caller_role(s) >= Some(min) {
            Ok(())
        } else {
            Err(V4Error::forbidden())
        }
    }
}

fn by_key<'a, T>(key: &str, by_id: impl Fn(u64) -> Option<&'a T>, by_path: impl Fn(&str) -> Option<&'a T>) -> Option<&'a T> {
    match key.parse::<u64>() {
        Ok(n) => by_id(n),
        Err(_) => by_path(&key.to_ascii_lowercase()),
    }
}

impl Namespace for Project {
    const DEPLOY_ADMIN: Role = Role::Maintainer;

    fn find(s: &Session, key: &str) -> Result<Self, V4Error> {
        let id = s.id();
        by_key(key, |n| id.projects.get(&n), |p| id.project_by_path(p))
            // Private projects the caller has no part in do not exist, as in GitLab.
            .filter(|p| p.visibility != Visibility::Private || p.caller_role(s).is_some())
            .cloned()
            .ok_or_else(|| V4Error::not_found("Project"))
    }
    fn members(&self, s: &Session) -> Vec<(u64, Role)> {
        s.id().members.iter().filter(|((p, _), _)| *p == self.id).map(|((_, u), r)| (*u, *r)).collect()
    }
    fn caller_role(&self, s: &Session) -> Option<Role> {
        if s.admin() {
            return Some(Role::Owner);
        }
        s.id().access(self.id, s.user)
    }
    fn member(&self, s: &Session, user: u64) -> Option<Role> {
        s.id().role(self.id, user)
    }
    fn set_member(&self, user: u64, role: Role) -> IdentityChange {
        IdentityChange::SetMember { project: self.id, user, role }
    }
    fn remove_member(&self, user: u64) -> IdentityChange {
        IdentityChange::RemoveMember { project: self.id, user }
    }
    fn deploy_kind(&self, username: String) -> TokenKind {
        TokenKind::Deploy { project: self.id, username }
    }
    fn owns(&self, kind: &TokenKind) -> bool {
        matches!(kind, TokenKind::Deploy { project, .. } if *project == self.id)
    }
}

impl Namespace for Group {
    const DEPLOY_ADMIN: Role = Role::Owner;

    fn find(s: &Session, key: &str) -> Result<Self, V4Error> {
        let id = s.id();
        by_key(key, |n| id.groups.get(&n), |p| id.group_by_path(p))
            // Groups are seen by their members (direct or through a parent) and administrators.
            .filter(|g| g.caller_role(s).is_some())
            .cloned()
            .ok_or_else(|| V4Error::not_found("Group"))
    }
    fn members(&self, s: &Session) -> Vec<(u64, Role)> {
        s.id().group_members.iter().filter(|((g, _), _)| *g == self.id).map(|((_, u), r)| (*u, *r)).collect()
    }
    fn caller_role(&self, s: &Session) -> Option<Role> {
        if s.admin() {
            return Some(Role::Owner);
        }
        s.id().group_role(self.id, s.user)
    }
    fn member(&self, s: &Session, user: u64) -> Option<Role> {
        s.id().group_members.get(&(self.id, user)).copied()
    }
    fn set_member(&self, user: u64, role: Role) -> IdentityChange {
        IdentityChange::SetGroupMember { group: self.id, user, role }
    }
    fn remove_member(&self, user: u64) -> IdentityChange {
        IdentityChange::RemoveGroupMember { group: self.id, user }
    }
    fn deploy_kind(&self, username: String) -> TokenKind {
        TokenKind::GroupDeploy { group: self.id, username }
    }
    fn owns(&self, kind: &TokenKind) -> bool {
        matches!(kind, TokenKind::GroupDeploy { group, .. } if *group == self.id)
    }
}
