//! The hub's certificate authority for an external broker (Mosquitto), which
//! cannot check our signed device logins: it issues client certificates
//! (devices, the hub's two links), server certificates (the broker), keeps a
//! ledger of what it issued, and writes the CRL that revokes a removed
//! device's certificates. Files live in `<data dir>/broker-ca/` ([`CaFiles`]).
//!
//! - The CA key is ECDSA P-256 (what every TLS stack verifies, Mosquitto's
//!   OpenSSL and rustls alike), signed with rcgen's ring backend: the hub has
//!   no aws-lc-rs anywhere (PITFALLS.md: awkward to cross-compile).
//! - A device certificate certifies the device's existing ed25519 key (the
//!   one registered at `device add`): the hub never sees a device's private
//!   key, and the device presents its own key file with it.
//! - The CA's name ends in a fingerprint of its key, so reloading needs the
//!   key alone, and two hubs' CAs never share a name.
//! - The ledger (`ledger`, append-only lines, fsynced before a certificate is
//!   handed out) is what revocation reads: every certificate issued for a
//!   device is revoked when it is removed. Its parsing and the CRL's content
//!   are pure ([`Ledger::parse`], [`Ledger::revoked`]).

use outpost_protocol::{DeviceId, PublicKey};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevocationReason, RevokedCertParams, SanType, SerialNumber, SignatureAlgorithm,
};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// How long an `on_revoke` command may run before it is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a CRL stays valid. OpenSSL refuses every client certificate
/// once the CRL's next-update time has passed, so it is far away; the hub
/// writes a fresh CRL at every start and every revocation.
const CRL_VALIDITY_DAYS: i64 = 3650;

/// What went wrong with the CA, naming the file or the input.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("broker CA: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("broker CA: cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("broker CA: {path} is not a usable CA key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("broker CA: cannot issue a certificate for {subject:?}: {detail}")]
    Issue { subject: String, detail: String },
    #[error("broker CA: cannot sign the CRL: {0}")]
    Crl(String),
    #[error("broker CA: the system random source failed")]
    Random,
    #[error("the CRL {crl} is written, but the on_revoke command {command:?} failed: {detail}")]
    Hook {
        crl: PathBuf,
        command: Vec<String>,
        detail: String,
    },
}

/// Where the CA's files are.
#[derive(Debug, Clone)]
pub struct CaFiles {
    pub root: PathBuf,
}

impl CaFiles {
    pub fn new(root: impl Into<PathBuf>) -> CaFiles {
        CaFiles { root: root.into() }
    }
    /// The CA certificate: the broker's `cafile`, the clients' CA.
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    /// The CRL (PEM) the broker's `crlfile` names.
    pub fn crl(&self) -> PathBuf {
        self.root.join("crl.pem")
    }
    pub fn ledger(&self) -> PathBuf {
        self.root.join("ledger")
    }
    /// The hub's ingest link's client certificate and key.
    pub fn ingest_cert(&self) -> (PathBuf, PathBuf) {
        (
            self.root.join("hub-ingest.pem"),
            self.root.join("hub-ingest.key"),
        )
    }
    /// The hub's publish link's client certificate and key.
    pub fn publish_cert(&self) -> (PathBuf, PathBuf) {
        (
            self.root.join("hub-publish.pem"),
            self.root.join("hub-publish.key"),
        )
    }
}

/// A certificate the CA issued (PEM) and its serial (hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub serial: String,
    pub cert_pem: String,
}

/// A certificate and the private key made for it (PEM): the hub's links and
/// the broker's server certificate.
#[derive(Debug, Clone)]
pub struct IssuedWithKey {
    pub issued: Issued,
    pub key_pem: String,
}

/// One certificate in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The subject's common name (a device id).
    pub subject: String,
    pub issued_at: u64,
    pub revoked_at: Option<u64>,
}

/// The ledger: serial (hex) → what was issued and whether it is revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub entries: BTreeMap<String, LedgerEntry>,
    /// Lines read: grows with every issue and revocation (the CRL number).
    pub lines: u64,
}

impl Ledger {
    /// Parse the ledger's text: `issued SERIAL SUBJECT UNIX` and `revoked
    /// SERIAL UNIX` lines. A last line without its newline (a crash while
    /// appending) is ignored, as are lines this version does not know.
    pub fn parse(text: &str) -> Ledger {
        let mut l = Ledger::default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        for line in complete.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["issued", serial, subject, at] => {
                    if let Ok(at) = at.parse() {
                        l.entries.insert(
                            (*serial).to_string(),
                            LedgerEntry {
                                subject: (*subject).to_string(),
                                issued_at: at,
                                revoked_at: None,
                            },
                        );
                    }
                }
                ["revoked", serial, at] => {
                    if let (Some(e), Ok(at)) = (l.entries.get_mut(*serial), at.parse()) {
                        e.revoked_at.get_or_insert(at);
                    }
                }
                _ => continue,
            }
            l.lines += 1;
        }
        l
    }

    /// Serials of `subject`'s certificates not yet revoked.
    pub fn live_for(&self, subject: &str) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| e.subject == subject && e.revoked_at.is_none())
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Every revoked serial with its revocation time: the CRL's content.
    pub fn revoked(&self) -> Vec<(String, u64)> {
        self.entries
            .iter()
            .filter_map(|(s, e)| e.revoked_at.map(|at| (s.clone(), at)))
            .collect()
    }
}

/// The device's ed25519 key as rcgen wants a subject key: the hub signs a
/// certificate for it without holding the private half.
struct DeviceKey<'a>(&'a [u8; 32]);

impl PublicKeyData for DeviceKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

/// The CA, loaded.
pub struct BrokerCa {
    files: CaFiles,
    issuer: Issuer<'static, KeyPair>,
    /// Serialises ledger appends and CRL writes within this process.
    ledger: Mutex<()>,
    /// Run after every revocation (`[mqtt] on_revoke`): Mosquitto rereads
    /// its CRL only when told (SIGHUP), so this is how a revocation reaches it.
    on_revoke: Vec<String>,
    /// Where else the CRL is written (`[mqtt] crl_file`): the file the
    /// broker reads, outside the hub's private data directory.
    crl_copy: Option<PathBuf>,
}

impl std::fmt::Debug for BrokerCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerCa")
            .field("root", &self.files.root)
            .finish_non_exhaustive()
    }
}

fn at(secs: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Certificates are valid from a day before `now` (clocks of devices and
/// brokers disagree) to the end of 9999 (RFC 5280's "no expiry"): a
/// certificate ends by revocation, not by a date an offline device cannot
/// renew before.
fn validity(params: &mut CertificateParams, now: u64) {
    params.not_before = at(now.saturating_sub(86_400));
    params.not_after = rcgen::date_time_ymd(9999, 12, 31);
}

fn random_serial() -> Result<SerialNumber, CaError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CaError::Random)?;
    // Positive and 16 bytes long in DER: top bit clear, first byte non-zero.
    b[0] = (b[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&b))
}

/// The CA certificate's parameters, all derived from its key.
fn ca_params(key: &KeyPair) -> CertificateParams {
    let fp = ring::digest::digest(
        &ring::digest::SHA256,
        &rcgen::PublicKeyData::subject_public_key_info(key),
    );
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Outpost");
    dn.push(
        DnType::CommonName,
        format!("Outpost hub CA {}", hex::encode(&fp.as_ref()[..8])),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.key_identifier_method = KeyIdMethod::Sha256;
    p
}

fn write_private(path: &Path, text: &str) -> Result<(), CaError> {
    let err = |source| CaError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(err)
}

/// Write `text` to `path` through a temporary file and a rename: a reader
/// (Mosquitto reading its CRL) sees the old file or the new one.
fn replace(path: &Path, text: &str, mode: u32) -> Result<(), CaError> {
    let err = |source| CaError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl BrokerCa {
    /// Load the CA from `files`, creating it (key, certificate, empty CRL)
    /// if this data directory has none yet. Two processes creating it at
    /// once (a `serve` and a `broker-config`) end with one CA: it is made in
    /// a temporary directory renamed into place.
    pub fn open_or_create(
        files: CaFiles,
        now: u64,
        on_revoke: Vec<String>,
    ) -> Result<BrokerCa, CaError> {
        if !files.ca_key().exists() {
            Self::create(&files, now)?;
        }
        let key_path = files.ca_key();
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| CaError::BadKey {
            path: key_path.clone(),
            detail: e.to_string(),
        })?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err(CaError::BadKey {
                path: key_path,
                detail: "not an ECDSA P-256 key".into(),
            });
        }
        let ca = BrokerCa {
            issuer: Issuer::new(ca_params(&key), key),
            files,
            ledger: Mutex::new(()),
            on_revoke,
            crl_copy: None,
        };
        Ok(ca)
    }

    fn create(files: &CaFiles, now: u64) -> Result<(), CaError> {
        let parent = files.root.parent().unwrap_or(Path::new("."));
        let tmp = parent.join(format!(".broker-ca.tmp-{}", std::process::id()));
        let werr = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CaError::Write { path, source }
        };
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).map_err(werr(&tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))
            .map_err(werr(&tmp))?;
        let made = (|| {
            let t = CaFiles::new(&tmp);
            let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| {
                CaError::Issue {
                    subject: "CA".into(),
                    detail: e.to_string(),
                }
            })?;
            let mut params = ca_params(&key);
            validity(&mut params, now);
            params.serial_number = Some(random_serial()?);
            let cert = params.self_signed(&key).map_err(|e| CaError::Issue {
                subject: "CA".into(),
                detail: e.to_string(),
            })?;
            write_private(&t.ca_key(), &key.serialize_pem())?;
            replace(&t.ca_cert(), &cert.pem(), 0o644)?;
            replace(&t.ledger(), "", 0o600)?;
            let issuer = Issuer::new(ca_params(&key), key);
            replace(&t.crl(), &crl_pem(&issuer, &Ledger::default(), now)?, 0o644)
        })();
        let placed = made.and_then(|()| match std::fs::rename(&tmp, &files.root) {
            Ok(()) => Ok(()),
            // Someone else's CA got there first: use theirs.
            Err(_) if files.ca_key().exists() => Ok(()),
            Err(source) => Err(CaError::Write {
                path: files.root.clone(),
                source,
            }),
        });
        let _ = std::fs::remove_dir_all(&tmp);
        if placed.is_ok() {
            tracing::info!(dir = %files.root.display(), "broker CA created");
        }
        placed
    }

    /// The same CA also writing its CRL to `path` (`[mqtt] crl_file`).
    pub fn with_crl_copy(mut self, path: Option<PathBuf>) -> BrokerCa {
        self.crl_copy = path;
        self
    }

    /// Write `ledger`'s CRL to the data directory and to the copy.
    fn put_crl(&self, ledger: &Ledger, now: u64) -> Result<(), CaError> {
        let pem = crl_pem(&self.issuer, ledger, now)?;
        replace(&self.files.crl(), &pem, 0o644)?;
        if let Some(copy) = &self.crl_copy {
            replace(copy, &pem, 0o644)?;
        }
        Ok(())
    }

    pub fn files(&self) -> &CaFiles {
        &self.files
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> Result<String, CaError> {
        read(&self.files.ca_cert())
    }

    /// The ledger as it is on disk.
    pub fn ledger(&self) -> Result<Ledger, CaError> {
        Ok(Ledger::parse(&read(&self.files.ledger())?))
    }

    fn append(&self, line: &str) -> Result<(), CaError> {
        let path = self.files.ledger();
        let err = |source| CaError::Write {
            path: path.clone(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(err)?;
        f.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(err)
    }

    /// A client certificate for `device`'s ed25519 `key`: CN = the device
    /// id, client authentication only, recorded in the ledger before it is
    /// returned (so it can always be revoked).
    pub fn issue_device(
        &self,
        device: &DeviceId,
        key: &PublicKey,
        now: u64,
    ) -> Result<Issued, CaError> {
        let serial = random_serial()?;
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, device.as_str());
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        p.serial_number = Some(serial.clone());
        validity(&mut p, now);
        let cert = p
            .signed_by(&DeviceKey(&key.0), &self.issuer)
            .map_err(|e| CaError::Issue {
                subject: device.to_string(),
                detail: e.to_string(),
            })?;
        let serial = hex::encode(serial.to_bytes());
        {
            let _g = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
            self.append(&format!("issued {serial} {device} {now}"))?;
        }
        Ok(Issued {
            serial,
            cert_pem: cert.pem(),
        })
    }

    fn issue_with_key(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        usage: ExtendedKeyUsagePurpose,
        now: u64,
    ) -> Result<IssuedWithKey, CaError> {
        let fail = |e: rcgen::Error| CaError::Issue {
            subject: common_name.to_string(),
            detail: e.to_string(),
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
        let serial = random_serial()?;
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, common_name);
        p.subject_alt_names = sans;
        p.extended_key_usages = vec![usage];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        p.serial_number = Some(serial.clone());
        validity(&mut p, now);
        let cert = p.signed_by(&key, &self.issuer).map_err(fail)?;
        Ok(IssuedWithKey {
            issued: Issued {
                serial: hex::encode(serial.to_bytes()),
                cert_pem: cert.pem(),
            },
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate with its own new key, for one of the hub's
    /// links (CN = the link's client id).
    pub fn issue_client(&self, client_id: &str, now: u64) -> Result<IssuedWithKey, CaError> {
        self.issue_with_key(
            client_id,
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
            now,
        )
    }

    /// A server certificate for the broker at `host` (a DNS name or an IP
    /// address). Server authentication only: a broker's certificate cannot
    /// log in as a client (OpenSSL checks the purpose).
    pub fn issue_server(&self, host: &str, now: u64) -> Result<IssuedWithKey, CaError> {
        let san = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => {
                SanType::DnsName(host.try_into().map_err(|e: rcgen::Error| CaError::Issue {
                    subject: host.to_string(),
                    detail: e.to_string(),
                })?)
            }
        };
        self.issue_with_key(host, vec![san], ExtendedKeyUsagePurpose::ServerAuth, now)
    }

    /// The hub's two link certificates (`[ingest, publish]` client ids),
    /// made if missing; returns their (certificate, key) paths.
    pub fn ensure_link_certs(
        &self,
        client_ids: [&str; 2],
        now: u64,
    ) -> Result<[(PathBuf, PathBuf); 2], CaError> {
        let paths = [self.files.ingest_cert(), self.files.publish_cert()];
        for (id, (cert, key)) in client_ids.iter().zip(&paths) {
            if cert.exists() && key.exists() {
                continue;
            }
            let made = self.issue_client(id, now)?;
            let _ = std::fs::remove_file(key);
            write_private(key, &made.key_pem)?;
            replace(cert, &made.issued.cert_pem, 0o644)?;
        }
        Ok(paths)
    }

    /// Write the CRL from the ledger (at start: a fresh next-update time).
    pub fn write_crl(&self, now: u64) -> Result<(), CaError> {
        let _g = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let ledger = self.ledger()?;
        self.put_crl(&ledger, now)
    }

    /// Revoke every certificate issued for `subject` and rewrite the CRL;
    /// returns the serials revoked (none: nothing written).
    pub fn revoke_subject(&self, subject: &str, now: u64) -> Result<Vec<String>, CaError> {
        let _g = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let serials = self.ledger()?.live_for(subject);
        if serials.is_empty() {
            return Ok(serials);
        }
        for s in &serials {
            self.append(&format!("revoked {s} {now}"))?;
        }
        let ledger = self.ledger()?;
        self.put_crl(&ledger, now)?;
        Ok(serials)
    }

    /// Whether an `on_revoke` command is configured.
    pub fn has_hook(&self) -> bool {
        !self.on_revoke.is_empty()
    }

    /// Run the `on_revoke` command (blocking; at most [`HOOK_TIMEOUT`]).
    pub fn run_hook(&self) -> Result<(), CaError> {
        let Some((program, args)) = self.on_revoke.split_first() else {
            return Ok(());
        };
        let fail = |detail: String| CaError::Hook {
            crl: self.crl_copy.clone().unwrap_or_else(|| self.files.crl()),
            command: self.on_revoke.clone(),
            detail,
        };
        let mut child = std::process::Command::new(program)
            .args(args)
            .env(
                "OUTPOST_CRL",
                self.crl_copy.clone().unwrap_or_else(|| self.files.crl()),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot start it: {e}")))?;
        let deadline = std::time::Instant::now() + HOOK_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(fail(format!(
                        "still running after {HOOK_TIMEOUT:?}; killed"
                    )));
                }
                Err(e) => return Err(fail(e.to_string())),
            }
        };
        if status.success() {
            tracing::info!(command = ?self.on_revoke, "on_revoke command done");
            return Ok(());
        }
        let mut err = String::new();
        if let Some(mut s) = child.stderr.take() {
            use std::io::Read;
            let _ = s.read_to_string(&mut err);
        }
        let err: String = err.trim().chars().take(500).collect();
        Err(fail(format!("{status}: {err}")))
    }
}

/// The CRL (PEM) revoking what `ledger` says is revoked, issued `now`.
fn crl_pem(issuer: &Issuer<'_, KeyPair>, ledger: &Ledger, now: u64) -> Result<String, CaError> {
    let revoked_certs = ledger
        .revoked()
        .into_iter()
        .filter_map(|(serial, at_)| {
            let bytes = hex::decode(&serial).ok()?;
            Some(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                revocation_time: at(at_),
                reason_code: Some(RevocationReason::CessationOfOperation),
                invalidity_date: None,
            })
        })
        .collect();
    let this_update = at(now);
    let params = CertificateRevocationListParams {
        this_update,
        next_update: this_update + time::Duration::days(CRL_VALIDITY_DAYS),
        crl_number: SerialNumber::from(ledger.lines.max(1)),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    params
        .signed_by(issuer)
        .and_then(|crl| crl.pem())
        .map_err(|e| CaError::Crl(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_reads_issues_and_revocations_and_ignores_a_torn_line() {
        let text = "issued 4a01 dev-a 10\nissued 4a02 dev-b 11\nissued 4a03 dev-a 12\n\
                    revoked 4a01 20\nrevoked 4a01 25\nmystery line\nrevoked 4a99 30\nissued 4a04 dev-c 1";
        let l = Ledger::parse(text);
        assert_eq!(l.entries.len(), 3, "{l:?}");
        assert_eq!(l.entries["4a01"].revoked_at, Some(20));
        assert_eq!(l.live_for("dev-a"), vec!["4a03".to_string()]);
        assert_eq!(l.live_for("dev-b"), vec!["4a02".to_string()]);
        assert!(
            l.live_for("dev-c").is_empty(),
            "a torn line is no certificate"
        );
        assert_eq!(l.revoked(), vec![("4a01".to_string(), 20)]);
        assert_eq!(Ledger::parse(""), Ledger::default());
    }

    #[test]
    fn a_ca_is_made_once_issues_for_device_keys_and_revokes_by_subject() {
        let tmp = tempfile::tempdir().unwrap();
        let files = CaFiles::new(tmp.path().join("broker-ca"));
        let ca = BrokerCa::open_or_create(files.clone(), 1_700_000_000, vec![]).unwrap();
        let pem = ca.ca_pem().unwrap();
        // Opened again: the same CA (same name, same key).
        let again = BrokerCa::open_or_create(files.clone(), 1_700_000_100, vec![]).unwrap();
        assert_eq!(again.ca_pem().unwrap(), pem);
        let mode = std::fs::metadata(files.ca_key())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private");

        let key = outpost_protocol::SigningKey::generate().unwrap();
        let dev: DeviceId = "dev-a".parse().unwrap();
        let one = ca
            .issue_device(&dev, &key.public_key(), 1_700_000_000)
            .unwrap();
        let two = again
            .issue_device(&dev, &key.public_key(), 1_700_000_001)
            .unwrap();
        assert_ne!(one.serial, two.serial);
        // The certificate carries the device's own ed25519 key.
        let der = pem_der(&one.cert_pem);
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend_from_slice(&key.public_key().0);
        assert!(der.windows(spki.len()).any(|w| w == spki.as_slice()));

        let crl_before = std::fs::read_to_string(files.crl()).unwrap();
        let mut revoked = ca.revoke_subject("dev-a", 1_700_000_050).unwrap();
        revoked.sort();
        let mut want = vec![one.serial.clone(), two.serial.clone()];
        want.sort();
        assert_eq!(revoked, want);
        assert!(ca
            .revoke_subject("dev-a", 1_700_000_060)
            .unwrap()
            .is_empty());
        let crl_after = std::fs::read_to_string(files.crl()).unwrap();
        assert_ne!(crl_before, crl_after);
        let crl_der = pem_der(&crl_after);
        for s in &want {
            let serial = hex::decode(s).unwrap();
            assert!(crl_der
                .windows(serial.len())
                .any(|w| w == serial.as_slice()));
        }
    }

    #[test]
    fn a_failing_on_revoke_command_is_reported_with_its_output() {
        let tmp = tempfile::tempdir().unwrap();
        let files = CaFiles::new(tmp.path().join("broker-ca"));
        let ok = BrokerCa::open_or_create(files.clone(), 1, vec!["true".into()]).unwrap();
        ok.run_hook().unwrap();
        let bad = BrokerCa::open_or_create(
            files,
            1,
            vec![
                "sh".into(),
                "-c".into(),
                "echo no broker here >&2; exit 3".into(),
            ],
        )
        .unwrap();
        let e = bad.run_hook().unwrap_err().to_string();
        assert!(e.contains("no broker here") && e.contains("crl.pem"), "{e}");
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64_decode(&body)
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut buf, mut bits) = (0u32, 0);
        for c in s.bytes().filter(|c| *c != b'=') {
            let v = A.iter().position(|a| *a == c).unwrap() as u32;
            buf = (buf << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((buf >> bits) as u8);
            }
        }
        out
    }
}
