//! The API's one error type and its mapping to HTTP: status, OCI error code, headers and body.
//! Converting has no side effects; the request middleware logs errors.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::backend::{BlobError, MetaError};

/// OCI distribution (and Docker registry) error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Blob unknown to registry.
    BlobUnknown,
    /// Blob upload invalid.
    BlobUploadInvalid,
    /// Blob upload unknown to registry.
    BlobUploadUnknown,
    /// Provided digest did not match uploaded content.
    DigestInvalid,
    /// Manifest references a blob unknown to the repository.
    ManifestBlobUnknown,
    /// Manifest invalid.
    ManifestInvalid,
    /// Manifest unknown.
    ManifestUnknown,
    /// Invalid repository name.
    NameInvalid,
    /// Repository name not known to registry.
    NameUnknown,
    /// Provided length did not match content length.
    SizeInvalid,
    /// Invalid tag.
    TagInvalid,
    /// Invalid pagination number.
    PaginationNumberInvalid,
    /// The requested byte range cannot be served.
    RangeInvalid,
    /// The operation is unsupported.
    Unsupported,
    /// The operation is refused.
    Denied,
    /// Authentication is required.
    Unauthorized,
    /// Too many requests (failed logins) from this client or for this account.
    TooManyRequests,
    /// Service unavailable.
    Unavailable,
    /// Unknown error.
    Unknown,
}

impl Code {
    /// The code's wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::TagInvalid => "TAG_INVALID",
            Code::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Code::RangeInvalid => "RANGE_INVALID",
            Code::Unsupported => "UNSUPPORTED",
            Code::Denied => "DENIED",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::Unavailable => "UNAVAILABLE",
            Code::Unknown => "UNKNOWN",
        }
    }

    fn default_status(self) -> StatusCode {
        match self {
            Code::BlobUnknown | Code::BlobUploadUnknown | Code::ManifestUnknown | Code::NameUnknown => {
                StatusCode::NOT_FOUND
            }
            Code::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Code::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            Code::Denied => StatusCode::FORBIDDEN,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// OCI code.
    pub code: Code,
    /// Human-readable message.
    pub message: String,
    /// Structured detail.
    pub detail: Value,
    /// Extra headers (Range, Location, Retry-After, ...).
    pub headers: Vec<(HeaderName, String)>,
}

/// Stashed in the response so the middleware can log what went wrong.
#[derive(Debug, Clone)]
pub struct ErrorNote(pub String);

impl ApiError {
    /// The refusal of a change to `repo` that one of the registry's limits does not allow.
    pub fn limit_reached(repo: &berth_proto::RepoName, limit: berth_proto::LimitKind, max: u64) -> Self {
        use berth_proto::LimitKind;
        let what = match limit {
            LimitKind::TagsPerRepository => format!("repository {repo} holds {max} tags"),
            LimitKind::RepositoriesPerNamespace => {
                format!("namespace {} holds {max} repositories", berth_proto::namespace_of(repo.as_str()))
            }
        };
        ApiError::new(Code::Denied, format!("{what}, the most {} allows: delete some, or ask an operator to raise it", limit.key()))
            .detail(json!({"limit": limit.key(), "max": max}))
    }

    /// The refusal of a change naming content that garbage collection is deleting right now
    /// (a second or so): the client sends the same request again and it goes through.
    pub fn being_collected(digest: &berth_proto::Digest) -> Self {
        ApiError::new(Code::Unavailable, format!("{digest} is being deleted by garbage collection: send the request again in a moment"))
            .header(axum::http::header::RETRY_AFTER, "1")
            .detail(json!({"digest": digest.to_string()}))
    }

    /// An error with the code's usual status.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError { status: code.default_status(), code, message: message.into(), detail: Value::Null, headers: vec![] }
    }
    /// Overrides the status.
    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }
    /// Adds structured detail.
    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
    /// Adds a header.
    pub fn header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"errors": [{"code": self.code.as_str(), "message": self.message, "detail": self.detail}]});
        let mut resp = (self.status, axum::Json(body)).into_response();
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().append(name, v);
            }
        }
        resp.extensions_mut().insert(ErrorNote(format!("{}: {}", self.code.as_str(), self.message)));
        resp
    }
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Unavailable(m) | MetaError::Outdated(m) => {
                ApiError::new(Code::Unavailable, format!("registry metadata unavailable: {m}")).header(axum::http::header::RETRY_AFTER, "1")
            }
            MetaError::Internal(m) => ApiError::new(Code::Unknown, m),
            MetaError::Full(m) => BlobError::Full(m).into(),
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        use axum::http::header;
        match e {
            BlobError::NotFound => ApiError::new(Code::BlobUnknown, "blob unknown to registry"),
            BlobError::UploadUnknown => ApiError::new(Code::BlobUploadUnknown, "blob upload unknown to registry"),
            BlobError::OffsetMismatch { at } => {
                ApiError::new(Code::BlobUploadInvalid, format!("the upload is at offset {at}; send the next chunk from there"))
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::RANGE, format!("0-{}", at.saturating_sub(1)))
            }
            BlobError::UploadBusy => ApiError::new(Code::BlobUploadInvalid, "another request is writing to this upload")
                .status(StatusCode::RANGE_NOT_SATISFIABLE),
            BlobError::DigestMismatch { expected, actual } => {
                ApiError::new(Code::DigestInvalid, "provided digest did not match uploaded content")
                    .detail(json!({"expected": expected.to_string(), "actual": actual.to_string()}))
            }
            BlobError::Body(m) => ApiError::new(Code::BlobUploadInvalid, format!("request body: {m}")),
            BlobError::Full(m) => ApiError::new(Code::Unavailable, format!("storage full, writes resume when space returns: {m}"))
                .status(StatusCode::INSUFFICIENT_STORAGE)
                .header(header::RETRY_AFTER, "30"),
            BlobError::Unavailable(m) => ApiError::new(Code::Unavailable, format!("storage unavailable: {m}"))
                .header(header::RETRY_AFTER, "5"),
            BlobError::Storage(m) => ApiError::new(Code::Unknown, format!("storage: {m}")),
        }
    }
}

impl From<berth_proto::ValidationError> for ApiError {
    fn from(e: berth_proto::ValidationError) -> Self {
        use berth_proto::ValidationError as V;
        let code = match &e {
            V::Digest(_) => Code::DigestInvalid,
            V::Name(_) => Code::NameInvalid,
            V::Tag(_) => Code::TagInvalid,
            V::HashState(_) => Code::BlobUploadInvalid,
        };
        ApiError::new(code, e.to_string())
    }
}
