//! The upload's identity carried in the `Location` URL's `_state` parameter and signed with
//! the cluster HTTP secret, so any node can continue any upload. It names the upload and the
//! offset the response that issued it reported; it decides nothing about content: the
//! upload's real offset and running hash live beside its bytes in the blob store.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use berth_proto::RepoName;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Where an upload stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadState {
    /// Repository the upload belongs to.
    pub repo: String,
    /// Upload id (hex).
    pub id: String,
    /// The upload's offset when this state was issued: where a chunk sent without
    /// `Content-Range` to this URL must start.
    pub offset: u64,
    /// When the upload started (ms since epoch).
    pub started_ms: u64,
}

impl UploadState {
    /// A fresh upload.
    pub fn new(repo: &RepoName, id: String) -> Self {
        UploadState {
            repo: repo.to_string(),
            id,
            offset: 0,
            started_ms: berth_proto::now_ms(),
        }
    }

    /// `payload.signature`, both base64url.
    pub fn sign(&self, secret: &[u8]) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("state serializes"));
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("hmac takes any key length");
        mac.update(payload.as_bytes());
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// Verifies the signature (in constant time) and decodes.
    pub fn verify(token: &str, secret: &[u8]) -> Option<UploadState> {
        let (payload, sig) = token.split_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
        mac.update(payload.as_bytes());
        mac.verify_slice(&sig).ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let mut s = UploadState::new(&RepoName::parse("a/b").unwrap(), "00ff".into());
        s.offset = 5;
        let tok = s.sign(b"secret");
        assert_eq!(UploadState::verify(&tok, b"secret"), Some(s.clone()));
        assert_eq!(UploadState::verify(&tok, b"other"), None);
        let mut forged = s.clone();
        forged.offset = 0;
        let (_, sig) = tok.split_once('.').unwrap();
        let fake = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap()));
        assert_eq!(UploadState::verify(&fake, b"secret"), None);
    }
}
