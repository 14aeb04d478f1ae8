//! Repository names, tags and manifest references, validated by the OCI distribution grammar.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Digest, ValidationError};

/// Longest repository name accepted (Docker Distribution's limit).
pub const MAX_REPO_NAME_LEN: usize = 255;

/// A repository name such as `library/ubuntu`:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
/// The grammar has no `..`, no leading `/` and no empty component, so a valid name is safe to
/// use as a path.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName(String);

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Checks one path component against `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or "-+", followed by an alphanumeric.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

impl RepoName {
    /// Validates a repository name.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.is_empty() || s.len() > MAX_REPO_NAME_LEN {
            return Err(ValidationError::Name(format!(
                "repository name must be 1 to {MAX_REPO_NAME_LEN} characters"
            )));
        }
        if !s.split('/').all(valid_component) {
            return Err(ValidationError::Name(format!(
                "invalid repository name {s:?}: components must match [a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*"
            )));
        }
        Ok(RepoName(s.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
impl TryFrom<String> for RepoName {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        RepoName::parse(&s)
    }
}
impl From<RepoName> for String {
    fn from(n: RepoName) -> String {
        n.0
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tag(String);

impl Tag {
    /// Validates a tag.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if ok {
            Ok(Tag(s.to_owned()))
        } else {
            Err(ValidationError::Tag(format!(
                "invalid tag {s:?}: must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}"
            )))
        }
    }

    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
impl TryFrom<String> for Tag {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Tag::parse(&s)
    }
}
impl From<Tag> for String {
    fn from(t: Tag) -> String {
        t.0
    }
}

/// What a manifest URL names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reference {
    /// A mutable tag.
    Tag(Tag),
    /// An immutable content digest.
    Digest(Digest),
}

impl Reference {
    /// A reference containing a colon is a digest, otherwise a tag.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        if s.contains(':') {
            Digest::parse(s).map(Reference::Digest)
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repo_names() {
        for good in ["a", "library/ubuntu", "a-b/c__d/e.f", "a---b", "x0/y1/z2", "my_app"] {
            assert!(RepoName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "a/../b", "..", "a..b", "a___b", "-a", "a-", "a_", "a.",
            "a b", "a/.b", "a%2fb",
        ] {
            assert!(RepoName::parse(bad).is_err(), "{bad}");
        }
        assert!(RepoName::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn tags() {
        assert!(Tag::parse("latest").is_ok());
        assert!(Tag::parse("_v1.0-rc").is_ok());
        assert!(Tag::parse(&"a".repeat(128)).is_ok());
        assert!(Tag::parse(&"a".repeat(129)).is_err());
        assert!(Tag::parse(".hidden").is_err());
        assert!(Tag::parse("-x").is_err());
        assert!(Tag::parse("a/b").is_err());
    }

    proptest! {
        /// Every accepted name is a safe relative path.
        #[test]
        fn accepted_names_are_safe_paths(s in "[a-z0-9._/-]{1,40}") {
            if let Ok(n) = RepoName::parse(&s) {
                prop_assert!(!n.as_str().starts_with('/'));
                prop_assert!(n.as_str().split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
            }
        }

        /// Any reference text parses to a tag of the grammar or a valid digest, or is refused;
        /// an accepted one prints back as it came and never contains a path separator.
        #[test]
        fn references_parse_or_refuse(s in "\\PC{0,140}") {
            match Reference::parse(&s) {
                Ok(Reference::Tag(t)) => {
                    prop_assert_eq!(t.as_str(), s.as_str());
                    prop_assert!(s.len() <= 128 && !s.contains('/') && !s.starts_with('.') && !s.starts_with('-'));
                }
                Ok(Reference::Digest(d)) => prop_assert_eq!(d.to_string(), s),
                Err(_) => {}
            }
        }
    }
}
