//! Parses `/v2/...` paths into a typed endpoint before dispatch. Repository names contain
//! slashes, so the path is matched from its right end (a reference never contains `/`).

use axum::http::Method;

/// A distribution API endpoint, with the raw (not yet validated) path parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags { name: String },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: String, reference: String },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: String, digest: String },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { name: String },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { name: String, id: String },
    /// `/v2/<name>/referrers/<digest>`
    Referrers { name: String, digest: String },
}

impl Endpoint {
    /// Parses a request path; `None` if it is not a distribution API path.
    pub fn parse(path: &str) -> Option<Endpoint> {
        let rest = path.strip_prefix("/v2")?;
        if rest.is_empty() || rest == "/" {
            return Some(Endpoint::Base);
        }
        let rest = rest.strip_prefix('/')?;
        if rest == "_catalog" {
            return Some(Endpoint::Catalog);
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Some(Endpoint::Tags { name: name.to_string() });
        }
        if let Some(name) = rest.strip_suffix("/blobs/uploads/").or_else(|| rest.strip_suffix("/blobs/uploads")) {
            return Some(Endpoint::UploadStart { name: name.to_string() });
        }
        let (head, last) = rest.rsplit_once('/')?;
        let (name, kind) = head.rsplit_once('/')?;
        match kind {
            "manifests" => Some(Endpoint::Manifest { name: name.into(), reference: last.into() }),
            "referrers" => Some(Endpoint::Referrers { name: name.into(), digest: last.into() }),
            "blobs" => Some(Endpoint::Blob { name: name.into(), digest: last.into() }),
            "uploads" => {
                let name = name.strip_suffix("/blobs")?;
                Some(Endpoint::Upload { name: name.into(), id: last.into() })
            }
            _ => None,
        }
    }

    /// A stable label for metrics and logs.
    pub fn label(&self, method: &Method) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags { .. } => "tags",
            Endpoint::Manifest { .. } => "manifest",
            Endpoint::Blob { .. } => "blob",
            Endpoint::UploadStart { .. } => "blob_upload",
            Endpoint::Upload { .. } if method == Method::PATCH => "blob_upload_chunk",
            Endpoint::Upload { .. } => "blob_upload",
            Endpoint::Referrers { .. } => "referrers",
        }
    }

    /// The methods the endpoint answers, as an `Allow` header lists them.
    pub fn methods(&self) -> &'static [Method] {
        match self {
            Endpoint::Base | Endpoint::Catalog | Endpoint::Tags { .. } | Endpoint::Referrers { .. } => &[Method::GET, Method::HEAD],
            Endpoint::Manifest { .. } => &[Method::GET, Method::HEAD, Method::PUT, Method::DELETE],
            Endpoint::Blob { .. } => &[Method::GET, Method::HEAD, Method::DELETE],
            Endpoint::UploadStart { .. } => &[Method::POST],
            Endpoint::Upload { .. } => &[Method::GET, Method::PATCH, Method::PUT, Method::DELETE],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(Endpoint::parse("/v2/"), Some(Endpoint::Base));
        assert_eq!(Endpoint::parse("/v2"), Some(Endpoint::Base));
        assert_eq!(Endpoint::parse("/v2/_catalog"), Some(Endpoint::Catalog));
        assert_eq!(Endpoint::parse("/v2/a/b/tags/list"), Some(Endpoint::Tags { name: "a/b".into() }));
        assert_eq!(
            Endpoint::parse("/v2/a/manifests/b/manifests/latest"),
            Some(Endpoint::Manifest { name: "a/manifests/b".into(), reference: "latest".into() })
        );
        assert_eq!(Endpoint::parse("/v2/x/blobs/uploads/"), Some(Endpoint::UploadStart { name: "x".into() }));
        assert_eq!(
            Endpoint::parse("/v2/x/y/blobs/uploads/abc"),
            Some(Endpoint::Upload { name: "x/y".into(), id: "abc".into() })
        );
        assert_eq!(
            Endpoint::parse("/v2/x/blobs/sha256:00"),
            Some(Endpoint::Blob { name: "x".into(), digest: "sha256:00".into() })
        );
        assert_eq!(
            Endpoint::parse("/v2/x/referrers/sha256:00"),
            Some(Endpoint::Referrers { name: "x".into(), digest: "sha256:00".into() })
        );
        assert_eq!(Endpoint::parse("/v3/x"), None);
        assert_eq!(Endpoint::parse("/v2/x/other/y"), None);
    }
}
