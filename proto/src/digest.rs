//! Content digests (`sha256:<64 hex>`, `sha512:<128 hex>`), validated on construction.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::ValidationError;

/// A digest algorithm Berth accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    /// SHA-256, the canonical algorithm for OCI content.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl Algorithm {
    /// The algorithm's name as it appears before the colon.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Number of hex characters in an encoded digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated content digest. Only lowercase hex is accepted, so a digest has one spelling
/// and can be used as a storage path component.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

impl Digest {
    /// Parses `algorithm:hex`.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        let (alg, hex) = s
            .split_once(':')
            .ok_or_else(|| ValidationError::Digest(format!("{s:?} has no algorithm prefix")))?;
        let algorithm = match alg {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => {
                return Err(ValidationError::Digest(format!(
                    "unsupported digest algorithm {other:?}"
                )))
            }
        };
        if hex.len() != algorithm.hex_len()
            || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(ValidationError::Digest(format!(
                "{s:?} is not {} lowercase hex characters",
                algorithm.hex_len()
            )));
        }
        Ok(Digest { algorithm, hex: hex.to_owned() })
    }

    /// Builds a digest from raw hash output.
    pub fn from_raw(algorithm: Algorithm, raw: &[u8]) -> Self {
        Digest { algorithm, hex: hex::encode(raw) }
    }

    /// SHA-256 of a byte slice (manifests and small blobs).
    pub fn sha256_of(bytes: &[u8]) -> Self {
        Self::from_raw(Algorithm::Sha256, &sha2::Sha256::digest(bytes))
    }

    /// The digest of `bytes` under this digest's algorithm.
    pub fn same_algorithm_of(&self, bytes: &[u8]) -> Self {
        match self.algorithm {
            Algorithm::Sha256 => Self::sha256_of(bytes),
            Algorithm::Sha512 => Self::from_raw(Algorithm::Sha512, &sha2::Sha512::digest(bytes)),
        }
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex encoding.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = ValidationError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&good).unwrap().to_string(), good);
        assert!(Digest::parse(&format!("sha512:{}", "0".repeat(128))).is_ok());
        for bad in [
            "sha256:".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("md5:{}", "a".repeat(32)),
            format!("sha256:../{}", "a".repeat(61)),
            "a".repeat(64),
        ] {
            assert!(Digest::parse(&bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn serde_validates() {
        let r: Result<Digest, _> = serde_json::from_str("\"sha256:xyz\"");
        assert!(r.is_err());
    }

    proptest::proptest! {
        /// Any text is a digest that prints back exactly, with a hex part of its algorithm's
        /// length, or it is refused; never a panic.
        #[test]
        fn digests_parse_or_refuse(s in "(sha256|sha512|md5|)(:|)[0-9a-fA-F]{0,130}|\\PC{0,80}") {
            if let Ok(d) = Digest::parse(&s) {
                proptest::prop_assert_eq!(d.to_string(), s.clone());
                let want = match d.algorithm() { Algorithm::Sha256 => 64, Algorithm::Sha512 => 128 };
                proptest::prop_assert_eq!(d.hex().len(), want);
                proptest::prop_assert!(d.hex().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            }
        }
    }
}
