//! Secrets sealed to one device: the device's X25519 encryption key, the
//! sealed form a manifest carries ([`SealedSecret`] inside a [`SecretMount`]),
//! and the HPKE seal/open that moves a secret's value from the hub to exactly
//! one device.
//!
//! RFC 9180 HPKE, base mode, DHKEM(X25519, HKDF-SHA256) + HKDF-SHA256 +
//! ChaCha20-Poly1305 (the `hpke` crate). Base mode because the sender is
//! already authenticated: the whole manifest is signed by the hub, so an
//! attacker cannot swap a sealed blob without breaking that signature. The
//! HPKE `info` binds the device id, the app and the secret's name, and the
//! AEAD's associated data binds its version: a blob sealed for one device,
//! app or name does not open as another (an honest hub never does that, but a
//! copied blob must fail closed, not leak into the wrong place).
//!
//! The plaintext never enters a manifest, and equality of [`SecretMount`]s
//! ignores the ciphertext: each render seals with fresh randomness, and a
//! renewal with the same secret versions must not look like a change.

use crate::topics::DeviceId;
use hpke::{
    aead::ChaCha20Poly1305, kdf::HkdfSha256, kem::X25519HkdfSha256, Deserializable, Kem as _,
    OpModeR, OpModeS, Serializable,
};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

type Kem = X25519HkdfSha256;

/// Largest secret value, in bytes. A manifest carries each secret once per
/// app that uses it, and a manifest is at most `MAX_MESSAGE_BYTES` (256 KiB).
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Most secrets one app may mount.
pub const MAX_SECRETS_PER_APP: usize = 16;
/// X25519 encapsulated key length.
pub const ENCAPPED_LEN: usize = 32;
/// ChaCha20-Poly1305 tag length.
pub const TAG_LEN: usize = 16;
const INFO_TAG: &[u8] = b"outpost secret v1\0";

/// Why a secret could not be sealed or opened, or a key not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret {name:?} is {size} bytes; the limit is {MAX_SECRET_BYTES}")]
    TooLarge { name: String, size: usize },
    #[error("encryption key {0:?} is not 64 hex digits (an X25519 public key)")]
    BadPublicKey(String),
    #[error("device decryption key is not 32 bytes")]
    BadPrivateKey,
    #[error("could not gather randomness to seal secret {name:?}")]
    Random { name: String },
    #[error("sealing secret {name:?} for device {device} failed")]
    Seal { device: String, name: String },
    /// Wrong device key, a blob moved to another device/app/name/version, or
    /// tampered bytes: HPKE cannot tell these apart, and neither do we.
    #[error(
        "secret {name:?} (version {version}) of app {app:?} does not open with the key of \
         device {device}: sealed for another device, app or version, or corrupted"
    )]
    Open {
        device: String,
        app: String,
        name: String,
        version: u64,
    },
}

/// A device's public X25519 key: what the hub seals secrets to. Registered
/// with `outpost-hub device add --encryption-key HEX`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EncryptionKey(pub [u8; 32]);

impl fmt::Display for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionKey({self})")
    }
}

impl FromStr for EncryptionKey {
    type Err = SecretError;
    fn from_str(s: &str) -> Result<Self, SecretError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s.trim(), &mut out)
            .map_err(|_| SecretError::BadPublicKey(s.into()))?;
        Ok(EncryptionKey(out))
    }
}

/// A device's private X25519 key (32 bytes in a 0600 file on the device).
/// Never serialised into any message; `Debug` hides it.
#[derive(Clone)]
pub struct DecryptionKey {
    sk: <Kem as hpke::Kem>::PrivateKey,
}

impl fmt::Debug for DecryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DecryptionKey(public {})", self.public_key())
    }
}

impl DecryptionKey {
    /// A fresh key from the system's randomness.
    pub fn generate() -> Result<DecryptionKey, SecretError> {
        let mut ikm = zeroize::Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(ikm.as_mut())
            .map_err(|_| SecretError::Random {
                name: "device key".into(),
            })?;
        let (sk, _) = Kem::derive_keypair(ikm.as_ref());
        Ok(DecryptionKey { sk })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<DecryptionKey, SecretError> {
        let sk = <Kem as hpke::Kem>::PrivateKey::from_bytes(bytes)
            .map_err(|_| SecretError::BadPrivateKey)?;
        Ok(DecryptionKey { sk })
    }

    /// The 32 bytes to store (0600).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(self.sk.to_bytes().to_vec())
    }

    pub fn public_key(&self) -> EncryptionKey {
        let pk = Kem::sk_to_pk(&self.sk).to_bytes();
        let mut out = [0u8; 32];
        out.copy_from_slice(&pk);
        EncryptionKey(out)
    }
}

/// What a sealed value is bound to.
#[derive(Debug, Clone, Copy)]
pub struct SecretContext<'a> {
    pub device: &'a DeviceId,
    pub app: &'a str,
    pub name: &'a str,
    pub version: u64,
}

impl SecretContext<'_> {
    fn info(&self) -> Vec<u8> {
        let mut info = INFO_TAG.to_vec();
        for part in [self.device.as_str(), self.app, self.name] {
            info.extend_from_slice(part.as_bytes());
            info.push(0);
        }
        info
    }

    fn aad(&self) -> [u8; 8] {
        self.version.to_be_bytes()
    }
}

/// A secret's value encrypted to one device's [`EncryptionKey`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedSecret {
    /// The HPKE encapsulated key (32 bytes); empty before the hub seals.
    #[serde(with = "serde_bytes")]
    pub enc: Vec<u8>,
    /// ChaCha20-Poly1305 ciphertext with its 16-byte tag.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

impl SealedSecret {
    pub fn is_empty(&self) -> bool {
        self.enc.is_empty() && self.ciphertext.is_empty()
    }
}

/// How [`SecretMount::path`] says "an environment variable" instead of a
/// file: `env:NAME`. An in-band form so manifests keep format version 3: an
/// agent from before it refuses the path as not absolute, by name.
pub const SECRET_ENV_PREFIX: &str = "env:";

/// One secret an app reads as a file, or as an environment variable. In a
/// deployment only `name` and `path` are set; the hub fills `version` when it
/// renders and `sealed` when it signs the device's manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretMount {
    /// The secret's name on the hub (`outpost-hub secret set NAME`).
    pub name: String,
    /// Absolute path inside the container; the file is read-only, mode 0400,
    /// owned by the app's user. Or `env:NAME` ([`SECRET_ENV_PREFIX`]): the
    /// value is the app's environment variable NAME.
    pub path: String,
    /// The hub's version of the secret's value: what decides whether an app
    /// changed (the ciphertext is fresh at every render).
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub sealed: SealedSecret,
}

/// Equal when name, path and version are: the ciphertext differs at every
/// seal of the same value (fresh HPKE randomness), so comparing it would make
/// every manifest renewal look like a change of the app.
impl PartialEq for SecretMount {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.path == other.path && self.version == other.version
    }
}
impl Eq for SecretMount {}

impl SecretMount {
    /// The environment variable this secret becomes, when it is one.
    pub fn env_var(&self) -> Option<&str> {
        self.path.strip_prefix(SECRET_ENV_PREFIX)
    }

    /// The mount with `sealed` cleared: what identifies it (container names,
    /// content digests) independently of the HPKE randomness.
    pub fn unsealed_ref(&self) -> SecretMount {
        SecretMount {
            sealed: SealedSecret::default(),
            ..self.clone()
        }
    }
}

/// Seal `plaintext` to `recipient`, bound to `ctx`.
pub fn seal(
    recipient: &EncryptionKey,
    ctx: &SecretContext<'_>,
    plaintext: &[u8],
) -> Result<SealedSecret, SecretError> {
    if plaintext.len() > MAX_SECRET_BYTES {
        return Err(SecretError::TooLarge {
            name: ctx.name.into(),
            size: plaintext.len(),
        });
    }
    let seal_err = || SecretError::Seal {
        device: ctx.device.to_string(),
        name: ctx.name.into(),
    };
    let pk = <Kem as hpke::Kem>::PublicKey::from_bytes(&recipient.0).map_err(|_| seal_err())?;
    let mut rng = RingRng::default();
    let (enc, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &pk,
        &ctx.info(),
        plaintext,
        &ctx.aad(),
        &mut rng,
    )
    .map_err(|_| seal_err())?;
    if rng.failed {
        return Err(SecretError::Random {
            name: ctx.name.into(),
        });
    }
    Ok(SealedSecret {
        enc: enc.to_bytes().to_vec(),
        ciphertext,
    })
}

/// Open a sealed secret with the device's key. The plaintext is zeroed when
/// dropped.
pub fn open(
    key: &DecryptionKey,
    ctx: &SecretContext<'_>,
    sealed: &SealedSecret,
) -> Result<zeroize::Zeroizing<Vec<u8>>, SecretError> {
    let open_err = || SecretError::Open {
        device: ctx.device.to_string(),
        app: ctx.app.into(),
        name: ctx.name.into(),
        version: ctx.version,
    };
    if sealed.ciphertext.len() > MAX_SECRET_BYTES + TAG_LEN {
        return Err(SecretError::TooLarge {
            name: ctx.name.into(),
            size: sealed.ciphertext.len().saturating_sub(TAG_LEN),
        });
    }
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&sealed.enc).map_err(|_| open_err())?;
    hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Kem>(
        &OpModeR::Base,
        &key.sk,
        &enc,
        &ctx.info(),
        &sealed.ciphertext,
        &ctx.aad(),
    )
    .map(zeroize::Zeroizing::new)
    .map_err(|_| open_err())
}

/// `rand_core` over ring's system randomness (the crate's one source of
/// randomness, as for signing keys). A failure is remembered and turns the
/// seal into an error rather than a panic.
struct RingRng {
    rng: SystemRandom,
    failed: bool,
}

impl Default for RingRng {
    fn default() -> Self {
        RingRng {
            rng: SystemRandom::new(),
            failed: false,
        }
    }
}

impl hpke::rand_core::RngCore for RingRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if self.rng.fill(dest).is_err() {
            self.failed = true;
        }
    }
}

impl hpke::rand_core::CryptoRng for RingRng {}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(s: &str) -> DeviceId {
        s.parse().unwrap()
    }

    fn ctx<'a>(
        device: &'a DeviceId,
        app: &'a str,
        name: &'a str,
        version: u64,
    ) -> SecretContext<'a> {
        SecretContext {
            device,
            app,
            name,
            version,
        }
    }

    #[test]
    fn sealed_for_a_device_opens_there_and_nowhere_else() {
        let a_key = DecryptionKey::generate().unwrap();
        let b_key = DecryptionKey::generate().unwrap();
        let (a, b) = (dev("pi-a"), dev("pi-b"));
        let marker = b"s3cret-marker-8f2a";
        let sealed = seal(&a_key.public_key(), &ctx(&a, "web", "db", 3), marker).unwrap();
        assert!(!sealed.ciphertext.windows(marker.len()).any(|w| w == marker));
        let opened = open(&a_key, &ctx(&a, "web", "db", 3), &sealed).unwrap();
        assert_eq!(opened.as_slice(), marker);

        // Device B's key, even told it is device A: refused.
        let err = open(&b_key, &ctx(&a, "web", "db", 3), &sealed).unwrap_err();
        assert!(matches!(err, SecretError::Open { .. }), "{err}");
        // B's own context with A's blob: refused.
        assert!(open(&b_key, &ctx(&b, "web", "db", 3), &sealed).is_err());
    }

    #[test]
    fn a_blob_moved_to_another_device_app_name_or_version_does_not_open() {
        let key = DecryptionKey::generate().unwrap();
        let (a, b) = (dev("pi-a"), dev("pi-b"));
        let sealed = seal(&key.public_key(), &ctx(&a, "web", "db", 3), b"v").unwrap();
        // Same key on two devices (a cloned image) still cannot swap blobs.
        for (what, c) in [
            ("device", ctx(&b, "web", "db", 3)),
            ("app", ctx(&a, "api", "db", 3)),
            ("name", ctx(&a, "web", "token", 3)),
            ("version", ctx(&a, "web", "db", 2)),
        ] {
            assert!(open(&key, &c, &sealed).is_err(), "moved {what} opened");
        }
        let mut flipped = sealed.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(open(&key, &ctx(&a, "web", "db", 3), &flipped).is_err());
        let mut short = sealed;
        short.enc.truncate(5);
        assert!(open(&key, &ctx(&a, "web", "db", 3), &short).is_err());
    }

    #[test]
    fn each_seal_is_fresh_but_mounts_compare_by_version() {
        let key = DecryptionKey::generate().unwrap();
        let a = dev("pi-a");
        let s1 = seal(&key.public_key(), &ctx(&a, "web", "db", 1), b"v").unwrap();
        let s2 = seal(&key.public_key(), &ctx(&a, "web", "db", 1), b"v").unwrap();
        assert_ne!(s1.ciphertext, s2.ciphertext);
        let m = |version, sealed| SecretMount {
            name: "db".into(),
            path: "/run/secrets/db".into(),
            version,
            sealed,
        };
        assert_eq!(m(1, s1.clone()), m(1, s2));
        assert_ne!(m(1, s1.clone()), m(2, s1));
    }

    #[test]
    fn a_secret_as_an_environment_variable_is_checked_by_the_app() {
        let mount = |name: &str, path: &str| SecretMount {
            name: name.into(),
            path: path.into(),
            version: 1,
            sealed: SealedSecret::default(),
        };
        let image = "reg/x@sha256:0000000000000000000000000000000000000000000000000000000000000000"
            .parse()
            .unwrap();
        let mut app = crate::AppSpec::new("web", image);
        app.env.insert("MODE".into(), "x".into());
        app.secrets = vec![
            mount("db", "env:DB_PASSWORD"),
            mount("tls", "/run/secrets/tls"),
        ];
        assert!(app.validate().is_ok());
        assert_eq!(app.secrets[0].env_var(), Some("DB_PASSWORD"));
        assert_eq!(app.secrets[1].env_var(), None);
        for (path, why) in [
            ("env:", "empty"),
            ("env:A=B", "'='"),
            ("env:MODE", "another variable of the app"),
            ("env:DB_PASSWORD", "the same variable twice"),
            ("DB_PASSWORD", "neither absolute nor env:"),
        ] {
            let mut bad = app.clone();
            bad.secrets.push(mount("other", path));
            let e = bad.validate().unwrap_err().to_string();
            assert!(e.contains("other"), "{why}: {e}");
        }
    }

    #[test]
    fn size_limit_and_bad_keys_are_named() {
        let key = DecryptionKey::generate().unwrap();
        let a = dev("pi-a");
        let big = vec![0u8; MAX_SECRET_BYTES + 1];
        let err = seal(&key.public_key(), &ctx(&a, "web", "db", 1), &big).unwrap_err();
        assert_eq!(
            err,
            SecretError::TooLarge {
                name: "db".into(),
                size: MAX_SECRET_BYTES + 1
            }
        );
        assert!(seal(&key.public_key(), &ctx(&a, "web", "db", 1), &big[1..]).is_ok());
        assert!(matches!(
            "zz".parse::<EncryptionKey>(),
            Err(SecretError::BadPublicKey(_))
        ));
        assert!(DecryptionKey::from_bytes(&[1, 2, 3]).is_err());
        let back = DecryptionKey::from_bytes(&key.to_bytes()).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        let text = key.public_key().to_string();
        assert_eq!(text.parse::<EncryptionKey>().unwrap(), key.public_key());
        assert!(!format!("{key:?}").contains(&hex::encode(key.to_bytes().as_slice())));
    }
}
