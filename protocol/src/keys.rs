//! ed25519 keys (ring) and the key ids that name them on the wire.
//!
//! A key id is derived from the public key (first 8 bytes of its sha256, in hex), so
//! it cannot disagree with the key it names and needs no registry of its own.

use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Why a key could not be generated, loaded or parsed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("could not generate an ed25519 key: the system random source failed")]
    Generate,
    #[error("key material is not a valid ed25519 PKCS#8 document")]
    BadPkcs8,
    #[error("public key {0:?} is not 64 hex characters (32 bytes)")]
    BadPublicKey(String),
}

/// Short, stable name of a public key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn key_id(&self) -> KeyId {
        let d = ring::digest::digest(&ring::digest::SHA256, &self.0);
        KeyId(hex::encode(&d.as_ref()[..8]))
    }

    /// Constant-time-ish verification through ring; `false` on any mismatch.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| KeyError::BadPublicKey(s.into()))?;
        Ok(PublicKey(out))
    }
}

/// A private ed25519 key with its PKCS#8 encoding (which is what gets stored).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl SigningKey {
    pub fn generate() -> Result<Self, KeyError> {
        let doc =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8(doc.as_ref())
    }

    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| KeyError::BadPkcs8)?;
        Ok(SigningKey {
            pair,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// The PKCS#8 document to persist (keep it private: mode 0600).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    pub fn public_key(&self) -> PublicKey {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(out)
    }

    pub fn key_id(&self) -> KeyId {
        self.public_key().key_id()
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let sig = self.pair.sign(message);
        let mut out = [0u8; 64];
        out.copy_from_slice(sig.as_ref());
        out
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.key_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_pkcs8_and_hex() {
        let k = SigningKey::generate().unwrap();
        let again = SigningKey::from_pkcs8(k.pkcs8()).unwrap();
        assert_eq!(k.public_key(), again.public_key());
        let pk: PublicKey = k.public_key().to_string().parse().unwrap();
        assert_eq!(pk, k.public_key());
        assert_eq!(pk.key_id().0.len(), 16);
        let sig = k.sign(b"hello");
        assert!(pk.verify(b"hello", &sig));
        assert!(!pk.verify(b"hellp", &sig));
    }

    #[test]
    fn refuses_garbage_keys() {
        assert!(matches!(
            SigningKey::from_pkcs8(b"nope"),
            Err(KeyError::BadPkcs8)
        ));
        assert!("zz".parse::<PublicKey>().is_err());
    }
}
