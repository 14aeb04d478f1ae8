//! Upload session state carried in the `Location` URL's `_state` parameter and signed with
//! the cluster HTTP secret, so any node can continue any upload and clients cannot forge it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use berth_proto::{ResumableSha256, RepoName};
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
    /// Bytes received so far.
    pub offset: u64,
    /// Encoded [`ResumableSha256`] over those bytes.
    pub hash: String,
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
            hash: URL_SAFE_NO_PAD.encode(ResumableSha256::new().encode()),
            started_ms: berth_proto::now_ms(),
        }
    }

    /// The running hash.
    pub fn hasher(&self) -> Option<ResumableSha256> {
        let raw = URL_SAFE_NO_PAD.decode(&self.hash).ok()?;
        let h = ResumableSha256::decode(&raw).ok()?;
        (h.len() == self.offset).then_some(h)
    }

    /// Records a new running hash (and offset).
    pub fn set_hasher(&mut self, h: &ResumableSha256) {
        self.offset = h.len();
        self.hash = URL_SAFE_NO_PAD.encode(h.encode());
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
        let mut h = s.hasher().unwrap();
        h.update(b"hello");
        s.set_hasher(&h);
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
