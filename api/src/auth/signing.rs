//! Keys that sign the registry tokens Berth issues: P-256 keys (ES256) that Berth makes
//! itself, or RSA keys (RS256, 2048 bits and up) an operator brings as PKCS#8, since ring
//! does not make RSA keys. Either is kept in Raft as PKCS#8 DER, named by its libtrust key
//! id, so every node signs and verifies with the same keys.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256};

use super::keys::{libtrust_id, PublicKey};

/// DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] =
    [0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00];
/// DER AlgorithmIdentifier of rsaEncryption (with its NULL parameters).
const RSA_ALGORITHM_ID: [u8; 15] = [0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00];
/// The smallest RSA key accepted.
const MIN_RSA_BITS: usize = 2048;

/// A private key that signs tokens.
pub enum SigningPair {
    /// ES256.
    Ec(EcdsaKeyPair),
    /// RS256.
    Rsa(RsaKeyPair),
}

impl SigningPair {
    /// Reads a PKCS#8 DER key: P-256 or RSA of 2048 bits and up.
    pub fn from_pkcs8(der: &[u8]) -> Result<SigningPair, String> {
        if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new()) {
            return Ok(SigningPair::Ec(k));
        }
        match RsaKeyPair::from_pkcs8(der) {
            Ok(k) if k.public().modulus_len() * 8 >= MIN_RSA_BITS => Ok(SigningPair::Rsa(k)),
            Ok(k) => Err(format!("an RSA key of {} bits is too small ({MIN_RSA_BITS} at least)", k.public().modulus_len() * 8)),
            Err(e) => Err(format!("not a P-256 or RSA private key in PKCS#8 ({e})")),
        }
    }

    /// The JWS algorithm it signs with.
    pub fn algorithm(&self) -> &'static str {
        match self {
            SigningPair::Ec(_) => "ES256",
            SigningPair::Rsa(_) => "RS256",
        }
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    pub fn spki(&self) -> Vec<u8> {
        match self {
            SigningPair::Ec(k) => [P256_SPKI_PREFIX.as_slice(), k.public_key().as_ref()].concat(),
            SigningPair::Rsa(k) => {
                let mut bits = vec![0u8];
                bits.extend_from_slice(k.public().as_ref());
                let body = [RSA_ALGORITHM_ID.to_vec(), der(0x03, &bits)].concat();
                der(0x30, &body)
            }
        }
    }

    /// Its libtrust key id (the `kid` of the tokens it signs).
    pub fn kid(&self) -> String {
        libtrust_id(&self.spki())
    }

    /// Its public half, for verifying.
    pub fn public(&self) -> Result<PublicKey, String> {
        PublicKey::from_spki_der(&self.spki())
    }

    /// Signs `header.payload`, giving the whole compact JWS.
    pub fn sign_jws(&self, kid: &str, claims: &[u8]) -> Result<String, String> {
        let header = serde_json::json!({"alg": self.algorithm(), "typ": "JWT", "kid": kid});
        let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims));
        let rng = SystemRandom::new();
        let sig = match self {
            SigningPair::Ec(k) => k.sign(&rng, input.as_bytes()).map_err(|e| e.to_string())?.as_ref().to_vec(),
            SigningPair::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut sig).map_err(|e| e.to_string())?;
                sig
            }
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }
}

/// A DER element of `tag` around `body`.
fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = body.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let len = n.to_be_bytes();
        let skip = len.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (len.len() - skip) as u8);
        out.extend_from_slice(&len[skip..]);
    }
    out.extend_from_slice(body);
    out
}

/// A new P-256 signing key: (libtrust key id, PKCS#8 DER).
pub fn generate_key() -> (String, Vec<u8>) {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).expect("P-256 key generation");
    let pair = SigningPair::from_pkcs8(pkcs8.as_ref()).expect("key just made");
    (pair.kid(), pkcs8.as_ref().to_vec())
}

/// Reads a PEM private key an operator brings (`openssl genpkey -algorithm RSA
/// -pkeyopt rsa_keygen_bits:3072`, or a P-256 key): (libtrust key id, PKCS#8 DER).
pub fn import_pem(pem: &[u8]) -> Result<(String, Vec<u8>), String> {
    let key = rustls_pemfile::private_key(&mut &pem[..]).map_err(|e| format!("unreadable PEM: {e}"))?.ok_or("no private key in the PEM")?;
    let rustls_pki_types::PrivateKeyDer::Pkcs8(der) = key else {
        return Err("the key is not PKCS#8 (BEGIN PRIVATE KEY); convert it with `openssl pkcs8 -topk8 -nocrypt`".into());
    };
    let pair = SigningPair::from_pkcs8(der.secret_pkcs8_der())?;
    Ok((pair.kid(), der.secret_pkcs8_der().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        assert_eq!(der(0x04, &[1, 2]), [0x04, 2, 1, 2]);
        assert_eq!(&der(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(&der(0x04, &[0; 300])[..4], [0x04, 0x82, 1, 44]);
    }

    #[test]
    fn generated_keys_sign_and_parse() {
        let (kid, pkcs8) = generate_key();
        let pair = SigningPair::from_pkcs8(&pkcs8).unwrap();
        assert_eq!(pair.kid(), kid);
        assert_eq!(pair.algorithm(), "ES256");
        assert!(pair.public().is_ok());
        assert!(SigningPair::from_pkcs8(b"not a key").is_err());
    }
}
