//! Throwaway TLS material made in Rust (rcgen, ring backend), instead of the
//! `openssl` command line: a CA per test, server certificates for the names a
//! client dials (`127.0.0.1`, `localhost`), client certificates, and a
//! self-signed ECDSA P-256 signing certificate (what a registry token service
//! signs its tokens with).

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// A certificate and its private key.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
    /// The private key as PKCS#8 DER (what `ring` loads).
    pub key_pkcs8: Vec<u8>,
}

impl CertifiedKey {
    fn new(cert: &rcgen::Certificate, key: &KeyPair) -> CertifiedKey {
        CertifiedKey {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_pkcs8: key.serialize_der(),
        }
    }

    /// Write `<stem>.pem` (certificate) and `<stem>.key` (key) into `dir`;
    /// returns their paths. World-readable: Mosquitto started as root reads
    /// them after dropping to its own user.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        write_readable(&cert, &self.cert_pem)?;
        write_readable(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

fn write_readable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("making {} readable", path.display()))
}

/// A certificate authority that exists for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// A self-signed CA named `common_name`.
    pub fn new(common_name: &str) -> Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(TestCa { issuer })
    }

    /// The CA certificate (PEM): what clients are told to trust.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Write the CA certificate to `path` (world-readable).
    pub fn write_cert(&self, path: &Path) -> Result<()> {
        write_readable(path, &self.cert_pem())
    }

    /// A server certificate for `names`: each an IP address (an IP subject
    /// alternative name) or a DNS name. The first is also the common name.
    pub fn server_cert(&self, names: &[&str]) -> Result<CertifiedKey> {
        self.leaf(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with `common_name`.
    pub fn client_cert(&self, common_name: &str) -> Result<CertifiedKey> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey::new(&cert, &key))
    }

    fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Result<CertifiedKey> {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans)?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey::new(&cert, &key))
    }
}

/// A self-signed ECDSA P-256 certificate named `common_name`, for signing (a
/// registry token service's JWTs, trusted through `rootcertbundle`).
pub fn self_signed_signer(common_name: &str) -> Result<CertifiedKey> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.self_signed(&key)?;
    Ok(CertifiedKey::new(&cert, &key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_and_leaves_are_pem_and_der() -> Result<()> {
        let ca = TestCa::new("outpost test CA")?;
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let server = ca.server_cert(&["127.0.0.1", "localhost"])?;
        assert!(server.key_pem.contains("PRIVATE KEY"));
        assert!(!server.cert_der.is_empty() && !server.key_pkcs8.is_empty());
        let client = ca.client_cert("edge-1")?;
        assert_ne!(client.cert_der, server.cert_der);
        let dir = tempfile::tempdir()?;
        let (cert, key) = server.write(dir.path(), "server")?;
        assert_eq!(std::fs::read_to_string(cert)?, server.cert_pem);
        assert_eq!(std::fs::read_to_string(key)?, server.key_pem);
        let signer = self_signed_signer("token signer")?;
        assert!(signer.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        Ok(())
    }
}
