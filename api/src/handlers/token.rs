//! `GET /jwt/auth`: Berth's token endpoint, shaped like GitLab's. Basic credentials (a
//! password, a personal access token, a deploy token or a CI job token), or none for
//! anonymous; `scope` repeated or space-separated; the answer is 200 with whatever part of
//! the request was granted, possibly nothing, as Docker token auth requires.

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

use crate::auth::{Caller, Scope};
use crate::error::{ApiError, Code};
use crate::Api;

/// Serves a token request.
pub async fn issue(State(api): State<Arc<Api>>, req: axum::extract::Request) -> Response {
    let (parts, _) = req.into_parts();
    let (method, uri, headers): (&Method, &Uri, &HeaderMap) = (&parts.method, &parts.uri, &parts.headers);
    let client = api.config.trusted_proxies.client_of(&parts.extensions, &parts.headers);
    let Some((issuer, service)) = api.auth.issuer() else {
        return ApiError::new(Code::Unsupported, "this registry does not issue tokens").status(StatusCode::NOT_FOUND).into_response();
    };
    let pairs: Vec<(String, String)> =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    let asked_service = pairs.iter().find(|(k, _)| k == "service").map(|(_, v)| v.as_str());
    if asked_service.is_some_and(|s| s != service) {
        // GitLab answers an unknown service with 404.
        return ApiError::new(Code::Unsupported, "unknown service").status(StatusCode::NOT_FOUND).into_response();
    }
    let scopes = Scope::parse_all(pairs.iter().filter(|(k, _)| k == "scope").map(|(_, v)| v.as_str()));
    let caller = Caller { headers, client, method, path: uri.path() };
    let (who, view) = match api.auth.login(caller, api.meta.as_ref()).await {
        Ok(found) => found,
        Err(refused) => return refused,
    };
    let now_ms = berth_proto::now_ms();
    let granted = view.grant(&who, &scopes, now_ms);
    let Some(token) = view.mint(issuer, service, &who, &granted, now_ms / 1000) else {
        return ApiError::new(Code::Unavailable, "the cluster has no token signing key yet").into_response();
    };
    let subject = who.subject(&view.identity);
    if let Some(name) = &subject {
        crate::access_log::note_user(&parts.extensions, name);
    }
    api.auth.audit_issued(caller, subject.as_deref(), &granted);
    let issued_at = humantime_rfc3339(now_ms);
    let body = json!({
        "token": token,
        "access_token": token,
        "expires_in": crate::auth::issuer::TOKEN_LIFETIME_SECS,
        "issued_at": issued_at,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// RFC 3339 in UTC with seconds, from milliseconds since the epoch.
pub fn humantime_rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::humantime_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::humantime_rfc3339(1_764_000_000_000), "2025-11-24T16:00:00Z");
        assert_eq!(super::humantime_rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
