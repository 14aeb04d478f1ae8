//! Docker token scopes (`repository:group/app:pull,push`) and the access each request needs.
//!
//! Grammar (Distribution `docs/spec/auth/scope.md`): `type[(class)]:name:action[,action]*`,
//! several separated by spaces. The name may carry a registry host with a port, so a scope is
//! split at its first colon and its last one, never on every colon.

use std::fmt;

use axum::http::Method;

use crate::endpoint::Endpoint;

/// One resource and the actions wanted on (or granted for) it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `repository` or `registry` (a `(class)` suffix is dropped, as Distribution does).
    pub kind: String,
    /// The repository path, or `catalog`.
    pub name: String,
    /// `pull`, `push`, `delete`, `*`, ...
    pub actions: Vec<String>,
}

impl Scope {
    /// A repository scope.
    pub fn repository(name: &str, actions: &[&str]) -> Scope {
        Scope { kind: "repository".into(), name: name.into(), actions: actions.iter().map(|a| a.to_string()).collect() }
    }

    /// `registry:catalog:*`.
    pub fn catalog() -> Scope {
        Scope { kind: "registry".into(), name: "catalog".into(), actions: vec!["*".into()] }
    }

    /// Parses one `type:name:actions` scope; `None` if it is malformed.
    pub fn parse(s: &str) -> Option<Scope> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        let kind = match kind.split_once('(') {
            Some((k, class)) if class.ends_with(')') => k,
            Some(_) => return None,
            None => kind,
        };
        if kind.is_empty()
            || !kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            || name.is_empty()
            || name.len() > 512
        {
            return None;
        }
        let actions: Vec<String> = actions.split(',').filter(|a| !a.is_empty()).map(str::to_string).collect();
        if actions.iter().any(|a| a != "*" && !a.bytes().all(|b| b.is_ascii_lowercase())) {
            return None;
        }
        Some(Scope { kind: kind.into(), name: name.into(), actions })
    }

    /// Parses every scope of `scope` query values, each of which may hold several separated by
    /// spaces (Docker sends one per value, OAuth clients one value for all). Malformed ones
    /// are dropped.
    pub fn parse_all<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Scope> {
        values.into_iter().flat_map(|v| v.split(' ')).filter(|s| !s.is_empty()).filter_map(Scope::parse).collect()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.kind, self.name, self.actions.join(","))
    }
}

/// What a request needs: `required` must all be granted or the request is refused;
/// `optional` is asked for in the challenge but only changes the outcome (a mount from a
/// repository the caller cannot pull becomes an ordinary upload, as in Distribution).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// Scopes that must be granted.
    pub required: Vec<Scope>,
    /// Scopes that are asked for but not required.
    pub optional: Vec<Scope>,
}

impl Needs {
    /// Every scope to name in a `WWW-Authenticate` challenge.
    pub fn all(&self) -> impl Iterator<Item = &Scope> {
        self.required.iter().chain(self.optional.iter())
    }
}

/// The access a request needs, as Distribution decides it: GET/HEAD pull; POST, PUT and PATCH
/// pull and push; DELETE delete; the catalog `registry:catalog:*`; `/v2/` only a valid
/// identity. `from` is the source of a cross-repository mount.
pub fn needs(ep: &Endpoint, method: &Method, from: Option<&str>) -> Needs {
    let name = match ep {
        Endpoint::Base => return Needs::default(),
        Endpoint::Catalog => return Needs { required: vec![Scope::catalog()], optional: vec![] },
        Endpoint::Tags { name }
        | Endpoint::Manifest { name, .. }
        | Endpoint::Blob { name, .. }
        | Endpoint::UploadStart { name }
        | Endpoint::Upload { name, .. }
        | Endpoint::Referrers { name, .. } => name,
    };
    let actions: &[&str] = match *method {
        Method::GET | Method::HEAD | Method::OPTIONS => &["pull"],
        Method::DELETE => &["delete"],
        _ => &["pull", "push"],
    };
    let mut needs = Needs { required: vec![Scope::repository(name, actions)], optional: vec![] };
    if let (Endpoint::UploadStart { .. }, Some(from)) = (ep, from) {
        if from != name {
            needs.optional.push(Scope::repository(from, &["pull"]));
        }
    }
    needs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_grammar() {
        assert_eq!(Scope::parse("repository:a/b:pull,push"), Some(Scope::repository("a/b", &["pull", "push"])));
        // A host with a port in the name: split at the first and the last colon.
        assert_eq!(
            Scope::parse("repository:localhost:5000/a:pull"),
            Some(Scope::repository("localhost:5000/a", &["pull"]))
        );
        assert_eq!(Scope::parse("repository(plugin):a:pull"), Some(Scope::repository("a", &["pull"])));
        assert_eq!(Scope::parse("registry:catalog:*"), Some(Scope::catalog()));
        assert_eq!(Scope::parse("repository:a:"), Some(Scope::repository("a", &[])));
        for bad in ["", "repository", "repository:a", "Repo:a:pull", ":a:pull", "repository::pull", "repository:a:PULL"] {
            assert_eq!(Scope::parse(bad), None, "{bad}");
        }
        let all = Scope::parse_all(["repository:a:pull repository:b:push", "registry:catalog:*", "junk"]);
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].to_string(), "repository:b:push");
    }

    #[test]
    fn needs_follow_the_method() {
        let m = Endpoint::Manifest { name: "a/b".into(), reference: "t".into() };
        assert_eq!(needs(&m, &Method::GET, None).required, vec![Scope::repository("a/b", &["pull"])]);
        assert_eq!(needs(&m, &Method::PUT, None).required, vec![Scope::repository("a/b", &["pull", "push"])]);
        assert_eq!(needs(&m, &Method::DELETE, None).required, vec![Scope::repository("a/b", &["delete"])]);
        assert_eq!(needs(&Endpoint::Base, &Method::GET, None), Needs::default());
        assert_eq!(needs(&Endpoint::Catalog, &Method::GET, None).required, vec![Scope::catalog()]);
        let up = Endpoint::UploadStart { name: "a".into() };
        let n = needs(&up, &Method::POST, Some("src"));
        assert_eq!(n.optional, vec![Scope::repository("src", &["pull"])]);
        assert_eq!(n.all().count(), 2);
    }
}
