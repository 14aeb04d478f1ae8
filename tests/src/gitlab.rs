//! `/api/v4` as a test client: a personal access token made with `berth admin`, and calls
//! with it.

use reqwest::StatusCode;
use serde_json::Value;

use crate::{berth_command, run, Berth};

/// A personal access token with the `api` scope for `root`, made over the cluster plane.
pub fn admin_token(node: &Berth) -> String {
    let out = run(berth_command().args(["admin", "--node", &node.grpc_addr, "create-token", "--username", "root", "--scopes", "api"]));
    out.trim().to_string()
}

/// `/api/v4` as a client with a personal access token.
pub struct V4 {
    /// HTTP client.
    pub http: reqwest::Client,
    /// The node's base URL.
    pub base: String,
    /// The token (`PRIVATE-TOKEN`).
    pub token: String,
}

impl V4 {
    /// One call; the status and the JSON body (`null` if none).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let (s, _, v) = self.call_with_headers(method, path, body).await;
        (s, v)
    }

    /// One call; the status, the headers and the JSON body.
    pub async fn call_with_headers(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut r = self.http.request(method, format!("{}/api/v4{path}", self.base)).header("PRIVATE-TOKEN", &self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let text = resp.text().await.unwrap();
        (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A POST that must answer 201.
    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (s, v) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(s, StatusCode::CREATED, "POST {path}: {v}");
        v
    }

    /// The same client with another token.
    pub fn with_token(&self, token: &str) -> V4 {
        V4 { http: self.http.clone(), base: self.base.clone(), token: token.to_string() }
    }
}
