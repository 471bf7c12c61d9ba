//! Broker logins: the MQTT username and password a device presents, and the
//! rule a broker uses to check them.
//!
//! A device logs in with its device id as client id and username, and as
//! password a signature by its own key over a domain tag and its id. The hub
//! already holds every device's public key (registered at `device add`), so
//! the embedded broker checks a login against its store: nothing new is
//! provisioned, and removing the device (its key) revokes the login.
//!
//! The password is deterministic, a bearer secret: whoever reads it on the
//! wire can replay it. That is why a broker reachable beyond loopback must use
//! TLS (docs/security.md). The tag differs from the envelope's
//! (`envelope.rs`), so a login can never be presented as a signed message nor
//! a signed message as a login.

use crate::keys::{PublicKey, SigningKey};
use crate::topics::DeviceId;

/// Signed before the device id; versioned so the scheme can change.
const LOGIN_TAG: &[u8] = b"outpost broker login v1\0";
/// Prefix of every password of this scheme.
const PREFIX: &str = "v1.";

fn message(device: &DeviceId) -> Vec<u8> {
    let mut m = Vec::with_capacity(LOGIN_TAG.len() + device.as_str().len());
    m.extend_from_slice(LOGIN_TAG);
    m.extend_from_slice(device.as_str().as_bytes());
    m
}

/// The broker password of `device`, signed with its key.
pub fn device_password(key: &SigningKey, device: &DeviceId) -> String {
    format!("{PREFIX}{}", hex::encode(key.sign(&message(device))))
}

/// Whether `password` is `device`'s login under `key`. Malformed passwords
/// are simply not valid.
pub fn password_is_valid(key: &PublicKey, device: &DeviceId, password: &str) -> bool {
    let Some(sig) = password.strip_prefix(PREFIX) else {
        return false;
    };
    let mut raw = [0u8; 64];
    if hex::decode_to_slice(sig, &mut raw).is_err() {
        return false;
    }
    key.verify(&message(device), &raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_valid_only_for_its_device_and_key() {
        let k = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let a: DeviceId = "pi-a".parse().unwrap();
        let b: DeviceId = "pi-b".parse().unwrap();
        let pa = device_password(&k, &a);
        assert!(password_is_valid(&k.public_key(), &a, &pa));
        assert!(
            !password_is_valid(&k.public_key(), &b, &pa),
            "bound to the id"
        );
        assert!(
            !password_is_valid(&other.public_key(), &a, &pa),
            "bound to the key"
        );
        assert!(!password_is_valid(&k.public_key(), &a, &pa[3..]));
        assert!(!password_is_valid(&k.public_key(), &a, "v1.zz"));
        assert!(!password_is_valid(&k.public_key(), &a, ""));
    }

    #[test]
    fn a_login_is_not_a_signed_message() {
        // The envelope signs `outpost signed message\0` + header + body; the
        // two tags differ within their common length, so no login message
        // equals any envelope message and neither signature verifies as the
        // other.
        let envelope = b"outpost signed message\0";
        let n = LOGIN_TAG.len().min(envelope.len());
        assert_ne!(LOGIN_TAG[..n], envelope[..n]);
    }
}
