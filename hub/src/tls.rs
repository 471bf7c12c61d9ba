//! TLS of the HTTP API: the self-signed certificate `init` makes, loading the
//! certificate and key the API serves, their fingerprint, the server's rustls
//! configuration, and the two ways a client trusts the hub (the exact
//! certificate pinned, or a CA file).
//!
//! Always rustls with the *ring* provider, named explicitly rather than taken
//! from the process default, so an aws-lc-rs provider pulled in by some other
//! crate can never be the one in use.
//!
//! The certificate is made with `rcgen`: pure Rust over ring (the provider we
//! already use), from the rustls project, and already in the workspace (the
//! test fixtures make their throwaway CAs with it); no `openssl` binary or C
//! library is needed on the hub's machine.

use crate::config::DataDir;
use crate::signing::{write_private, KeyFileError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a certificate or key could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot generate the API certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(transparent)]
    Write(#[from] KeyFileError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a usable PEM {what}: {problem}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        problem: String,
    },
    #[error("the certificate {cert} and key {key} cannot be served together: {source}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("the TLS client configuration for {path} is unusable: {source}")]
    Client {
        path: PathBuf,
        source: rustls::Error,
    },
}

/// The ring provider, named rather than taken from the process default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What [`create_self_signed`] made.
#[derive(Debug, Clone)]
pub struct CreatedCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SHA-256 of the certificate (DER), as [`fingerprint`] prints it.
    pub fingerprint: String,
    /// The names and addresses it is valid for.
    pub names: Vec<String>,
}

/// The names a self-signed API certificate is made for: `localhost`, the
/// loopback addresses and, if known, this machine's hostname.
pub fn default_names(hostname: Option<&str>) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Some(h) = hostname.map(str::trim).filter(|h| !h.is_empty()) {
        if !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    names
}

/// This machine's hostname (Linux), if it can be read.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Make a self-signed certificate (ECDSA P-256) for `names` and write it to the
/// data directory's `api.crt` (0600 like every file there) and its key to
/// `api.key` (0600). Refuses to overwrite either.
pub fn create_self_signed(dir: &DataDir, names: Vec<String>) -> Result<CreatedCert, TlsError> {
    let made = rcgen::generate_simple_self_signed(names.clone())?;
    let (cert, key) = (dir.api_cert(), dir.api_key());
    write_private(&key, made.signing_key.serialize_pem().as_bytes())?;
    write_private(&cert, made.cert.pem().as_bytes())?;
    Ok(CreatedCert {
        fingerprint: fingerprint(made.cert.der()),
        cert,
        key,
        names,
    })
}

/// SHA-256 of a certificate's DER bytes as colon-separated upper-case hex, the
/// form `openssl x509 -noout -fingerprint -sha256` prints, for comparing by eye.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The certificates of a PEM file, in order (the first is the one served).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |problem: String| TlsError::Pem {
        path: path.to_path_buf(),
        what: "certificate",
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("it holds no -----BEGIN CERTIFICATE----- section".into()));
    }
    Ok(certs)
}

/// The first private key of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    // Errors never quote the file: it is a secret.
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        what: "private key",
        problem: e.to_string(),
    })
}

/// The server side: serve `cert` (with its chain) and `key`, TLS 1.2 and 1.3,
/// HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = load_certs(cert)?;
    let private = load_key(key)?;
    let err = |source| TlsError::Config {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        source,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(err)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The last pin mismatch a pinned client saw, so the caller can report it in
/// words (rustls carries it only as a debug-printed "other" error).
pub type MismatchSeen = Arc<std::sync::Mutex<Option<PinMismatch>>>;

/// A client that trusts exactly the certificate in `cert` (the first one of
/// the file): the hub's own, read from its data directory. Names are not
/// checked, since the certificate itself is what is trusted.
pub fn pinned_client(cert: &Path) -> Result<(rustls::ClientConfig, MismatchSeen), TlsError> {
    let pinned = load_certs(cert)?.swap_remove(0);
    let provider = provider();
    let seen = MismatchSeen::default();
    let verifier = Arc::new(PinnedCert {
        fingerprint: fingerprint(&pinned),
        pinned,
        path: cert.to_path_buf(),
        provider: Arc::clone(&provider),
        seen: Arc::clone(&seen),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Client {
            path: cert.to_path_buf(),
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok((config, seen))
}

/// A client that trusts the CA certificates of the PEM file `ca` (checking
/// the chain and the name in the URL as browsers do). The hub's self-signed
/// `api.crt` works as such a file too: it is its own CA.
pub fn ca_client(ca: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in load_certs(ca)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: ca.to_path_buf(),
            what: "CA certificate",
            problem: format!("certificate #{} cannot be a trust anchor: {e}", i + 1),
        })?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Client {
            path: ca.to_path_buf(),
            source,
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Accepts the one pinned certificate and nothing else; the handshake's
/// signatures are still checked against it.
#[derive(Debug)]
struct PinnedCert {
    pinned: CertificateDer<'static>,
    fingerprint: String,
    path: PathBuf,
    provider: Arc<CryptoProvider>,
    seen: MismatchSeen,
}

/// The hub presented another certificate than the pinned one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the hub's certificate (SHA-256 {got}) is not the one pinned from {path} (SHA-256 {want}); \
     is this the hub of that data directory? (--ca-file or OUTPOST_HUB_CA trusts another)"
)]
pub struct PinMismatch {
    pub got: String,
    pub want: String,
    pub path: PathBuf,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = PinMismatch {
            got: fingerprint(end_entity),
            want: self.fingerprint.clone(),
            path: self.path.clone(),
        };
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(mismatch.clone());
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(mismatch)),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_always_cover_loopback_and_add_the_hostname_once() {
        assert_eq!(
            default_names(Some("gw-1\n")),
            ["localhost", "127.0.0.1", "::1", "gw-1"]
        );
        assert_eq!(default_names(Some("localhost")).len(), 3);
        assert_eq!(default_names(None).len(), 3);
    }

    #[test]
    fn a_made_certificate_loads_serves_and_prints_its_fingerprint() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let made = create_self_signed(&dir, default_names(Some("gw-1"))).unwrap();
        let certs = load_certs(&made.cert).unwrap();
        assert_eq!(fingerprint(&certs[0]), made.fingerprint);
        // 32 bytes, two hex digits each, colon separated.
        assert_eq!(made.fingerprint.len(), 32 * 3 - 1);
        server_config(&made.cert, &made.key).unwrap();
        pinned_client(&made.cert).unwrap();
        ca_client(&made.cert).unwrap();
        // Never overwritten.
        assert!(create_self_signed(&dir, default_names(None)).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&made.key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn unusable_files_are_errors_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.pem");
        std::fs::write(&path, "not pem").unwrap();
        let e = load_certs(&path).unwrap_err().to_string();
        assert!(e.contains("x.pem") && e.contains("certificate"), "{e}");
        let e = load_key(&path).unwrap_err().to_string();
        assert!(e.contains("x.pem") && e.contains("private key"), "{e}");
        let e = load_certs(&tmp.path().join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
