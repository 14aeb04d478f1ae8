//! A SHA-256 whose state can be saved and resumed.
//!
//! An upload's running hash is saved beside its staged bytes between requests (and read by
//! whichever node takes the next chunk), so it must be serializable. `sha2` exposes its block function (`compress256`,
//! which uses SHA-NI where the CPU has it); this module adds the buffering, padding and a
//! compact encoding around it.

use sha2::digest::generic_array::{typenum::U64, GenericArray};

use crate::{Algorithm, Digest, ValidationError};

const BLOCK: usize = 64;
const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// A running SHA-256 over a byte stream that can be encoded with [`ResumableSha256::encode`]
/// and resumed with [`ResumableSha256::decode`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ResumableSha256 {
    state: [u32; 8],
    /// Total bytes fed so far.
    len: u64,
    /// Bytes not yet forming a whole block (always shorter than 64).
    pending: Vec<u8>,
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        Self::new()
    }
}

fn compress(state: &mut [u32; 8], data: &[u8]) {
    debug_assert_eq!(data.len() % BLOCK, 0);
    // SAFETY: `GenericArray<u8, U64>` is `repr(transparent)` over `[u8; 64]` (alignment 1),
    // and `data` holds exactly `data.len() / 64` such arrays.
    let blocks: &[GenericArray<u8, U64>] =
        unsafe { std::slice::from_raw_parts(data.as_ptr().cast(), data.len() / BLOCK) };
    sha2::compress256(state, blocks);
}

impl ResumableSha256 {
    /// A hash over zero bytes.
    pub fn new() -> Self {
        ResumableSha256 { state: H0, len: 0, pending: Vec::with_capacity(BLOCK) }
    }

    /// Number of bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing has been hashed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Feeds bytes.
    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.pending.is_empty() {
            let take = (BLOCK - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() < BLOCK {
                return;
            }
            let block = std::mem::take(&mut self.pending);
            compress(&mut self.state, &block);
            self.pending = block;
            self.pending.clear();
        }
        let whole = data.len() - data.len() % BLOCK;
        if whole > 0 {
            compress(&mut self.state, &data[..whole]);
        }
        self.pending.extend_from_slice(&data[whole..]);
    }

    /// The digest of everything fed so far (the running state is left untouched).
    pub fn digest(&self) -> Digest {
        let mut state = self.state;
        let mut tail = self.pending.clone();
        tail.push(0x80);
        while tail.len() % BLOCK != 56 {
            tail.push(0);
        }
        tail.extend_from_slice(&(self.len.wrapping_mul(8)).to_be_bytes());
        compress(&mut state, &tail);
        let mut out = [0u8; 32];
        for (i, word) in state.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
        }
        Digest::from_raw(Algorithm::Sha256, &out)
    }

    /// Compact binary form: 32 bytes of state, 8 bytes of length, then the pending bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.pending.len());
        for w in self.state {
            out.extend_from_slice(&w.to_be_bytes());
        }
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(&self.pending);
        out
    }

    /// Inverse of [`encode`](Self::encode); checks that the pending bytes agree with the length.
    pub fn decode(b: &[u8]) -> Result<Self, ValidationError> {
        let bad = || ValidationError::HashState("malformed hash state".into());
        if b.len() < 40 || b.len() >= 40 + BLOCK {
            return Err(bad());
        }
        let mut state = [0u32; 8];
        for (i, w) in state.iter_mut().enumerate() {
            *w = u32::from_be_bytes(b[i * 4..i * 4 + 4].try_into().unwrap());
        }
        let len = u64::from_be_bytes(b[32..40].try_into().unwrap());
        let pending = b[40..].to_vec();
        if (len % BLOCK as u64) as usize != pending.len() {
            return Err(bad());
        }
        Ok(ResumableSha256 { state, len, pending })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha2::Digest as _;

    #[test]
    fn known_vectors() {
        assert_eq!(
            ResumableSha256::new().digest().to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut h = ResumableSha256::new();
        h.update(b"abc");
        assert_eq!(
            h.digest().hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    proptest! {
        /// Any split of any input, with an encode/decode round trip between pieces, gives the
        /// same digest as sha2's own Sha256.
        #[test]
        fn matches_sha2(data in proptest::collection::vec(any::<u8>(), 0..600),
                        cuts in proptest::collection::vec(0usize..600, 0..6)) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort();
            let mut h = ResumableSha256::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([data.len()]) {
                h.update(&data[at..c]);
                at = c;
                h = ResumableSha256::decode(&h.encode()).unwrap();
            }
            let got = h.digest();
            prop_assert_eq!(got.hex(), hex::encode(sha2::Sha256::digest(&data)));
        }
    }

    #[test]
    fn decode_rejects_inconsistent_state() {
        let mut h = ResumableSha256::new();
        h.update(b"hello");
        let mut e = h.encode();
        e.pop();
        assert!(ResumableSha256::decode(&e).is_err());
        assert!(ResumableSha256::decode(&[0u8; 10]).is_err());
    }
}
