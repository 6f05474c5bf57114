//! The appliance's own certificate authority: it signs each node's Docker Engine server
//! certificate and the deployer's client certificate, so Kiln reaches `tcp://node:2376` over
//! mutual TLS (dockerd `--tlsverify`).
//!
//! Layout of the CA directory (created 0700 if missing):
//! `ca.pem` (0644), `ca-key.pem` (0600), `client.pem` (0644) and `client-key.pem` (0600) for the
//! deployer, and `.lock`. Every file is written to a temp file, fsynced and renamed into place,
//! the key before its certificate, and all of it under an exclusive `flock` on `.lock`; so a crash
//! leaves nothing, a lone key (the CA certificate is rebuilt from it, see below) or a complete
//! pair, and a second process waits and then loads what the first one wrote.
//!
//! rcgen is built without its X.509 parser, so a stored CA certificate cannot be turned back into
//! an rcgen issuer; the issuer is rebuilt from the key instead. That works because the CA's
//! subject is a function of its key: CN `Kiln appliance CA <12 hex digits of the key
//! identifier>`, which is as random as the key (two appliances' CAs differ) and needs no extra
//! file. Loading checks, with webpki, that a certificate signed by the rebuilt issuer chains to
//! the stored `ca.pem`, so a foreign or mismatched pair is refused rather than silently producing
//! certificates nobody trusts.
//!
//! Lifetimes: the CA is valid for 30 years and leaves for 10, all backdated one day for nodes
//! whose clock lags. A lab appliance has no renewal path on the nodes and no revocation (no CRL);
//! rotating means deleting the directory and reprovisioning. Keys are ECDSA P-256, which Docker's
//! Go TLS stack accepts. Everything here blocks (files, `flock`, key generation): async callers
//! should use `spawn_blocking`.

use crate::model::Secret;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
pub const CLIENT_CERT_FILE: &str = "client.pem";
pub const CLIENT_KEY_FILE: &str = "client-key.pem";
/// Common name of the deployer's client certificate.
pub const DEPLOYER_CN: &str = "kiln-deployer";
const LOCK_FILE: &str = ".lock";
const CA_CN_PREFIX: &str = "Kiln appliance CA";

const DAY: Duration = Duration::from_secs(86_400);
const CA_VALIDITY: Duration = Duration::from_secs(30 * 365 * 86_400);
const LEAF_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
/// A stored deployer certificate that expires within this margin is replaced on load.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot {op} '{path}'")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock '{path}'")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::errno::Errno,
    },
    /// No source on purpose: PEM and DER parser errors may quote bytes of the file, a secret here.
    #[error("'{path}' does not hold a PKCS#8 PEM private key Kiln can use")]
    BadKey { path: PathBuf },
    #[error("'{path}' does not hold a PEM certificate")]
    BadCert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("certificate '{cert}' does not match the key in '{key}'")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "'{path}' is not the Kiln CA certificate for its key; certificates it signs would not verify"
    )]
    ForeignCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("'{path}' does not verify against this CA for the next 30 days")]
    StaleCert {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "CA certificate '{cert}' exists but its key '{key}' does not; restore the key, or remove \
         both to create a new CA (nodes trusting the old one must then be reprovisioned)"
    )]
    MissingCaKey { cert: PathBuf, key: PathBuf },
    #[error("'{0}' is not a DNS hostname a certificate can name")]
    InvalidHostname(String),
    #[error("'{0}' is not a usable common name (1 to 64 printable ASCII characters)")]
    InvalidCommonName(String),
    #[error("cannot {op} for '{subject}'")]
    Sign {
        op: &'static str,
        subject: String,
        #[source]
        source: rcgen::Error,
    },
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CaError {
    let path = path.to_path_buf();
    move |source| CaError::Io { op, path, source }
}

/// A certificate and its private key, both PEM; the key is PKCS#8 ("PRIVATE KEY"), which Docker,
/// openssl and rustls all read. `Debug` shows the certificate and masks the key.
#[derive(Clone, Debug)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: Secret,
}

impl IssuedCert {
    /// Certificate followed by key in one PEM blob, the form `reqwest::Identity::from_pem` reads.
    pub fn identity_pem(&self) -> Secret {
        Secret::new(format!("{}{}", self.cert_pem, self.key_pem.expose()))
    }
}

/// The loaded CA: its certificate and the issuer (subject and signing key) rebuilt from its key.
pub struct CertificateAuthority {
    dir: PathBuf,
    common_name: String,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("dir", &self.dir)
            .field("common_name", &self.common_name)
            .field("key", &"********")
            .finish()
    }
}

impl CertificateAuthority {
    /// Loads `dir/ca.pem` and `dir/ca-key.pem`, creating whichever is missing (see the module
    /// notes). Refuses a certificate without its key and a pair that does not belong together.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        ensure_private_dir(dir)?;
        let _lock = lock(dir)?;
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let stored_cert = read_optional(&cert_path)?;
        let key = match read_optional(&key_path)?.map(Secret::new) {
            Some(pem) => {
                tighten_key_mode(&key_path)?;
                KeyPair::from_pem(pem.expose()).map_err(|_| CaError::BadKey {
                    path: key_path.clone(),
                })?
            }
            None if stored_cert.is_some() => {
                return Err(CaError::MissingCaKey {
                    cert: cert_path,
                    key: key_path,
                });
            }
            None => {
                let key = generate_key(CA_CN_PREFIX)?;
                let pem = Secret::new(key.serialize_pem());
                write_atomically(dir, CA_KEY_FILE, pem.expose().as_bytes(), 0o600)?;
                key
            }
        };
        let (params, common_name) = ca_params(&key);
        let cert_pem = match stored_cert {
            Some(pem) => pem,
            None => {
                let cert = params.self_signed(&key).map_err(|source| CaError::Sign {
                    op: "self-sign the CA certificate",
                    subject: common_name.clone(),
                    source,
                })?;
                write_atomically(dir, CA_CERT_FILE, cert.pem().as_bytes(), 0o644)?;
                tracing::info!(dir = %dir.display(), ca = %common_name, "created the appliance CA");
                cert.pem()
            }
        };
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|source| {
            CaError::BadCert {
                path: cert_path.clone(),
                source,
            }
        })?;
        let ca = Self {
            dir: dir.to_path_buf(),
            common_name,
            cert_pem,
            cert_der,
            issuer: Issuer::new(params, key),
        };
        ca.check_pair(&cert_path, &key_path)?;
        Ok(ca)
    }

    /// The CA certificate, PEM: what nodes and clients put in their trust store (`--tlscacert`).
    pub fn ca_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn ca_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA's subject common name, unique per appliance.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// A Docker Engine server certificate: CN and DNS SAN `hostname`, one IP SAN per address,
    /// EKU serverAuth. Go ignores the CN, so every name the deployer dials must be a SAN.
    pub fn issue_server(&self, hostname: &str, ips: &[IpAddr]) -> Result<IssuedCert, CaError> {
        let invalid = || CaError::InvalidHostname(hostname.to_string());
        if hostname.ends_with('.') || rustls::pki_types::DnsName::try_from(hostname).is_err() {
            return Err(invalid());
        }
        let mut sans = vec![SanType::DnsName(
            hostname.try_into().map_err(|_| invalid())?,
        )];
        for ip in ips {
            if !sans.contains(&SanType::IpAddress(*ip)) {
                sans.push(SanType::IpAddress(*ip));
            }
        }
        let params = leaf_params(hostname, sans, ExtendedKeyUsagePurpose::ServerAuth);
        Ok(self.sign(&params, hostname)?.0)
    }

    /// A client certificate with subject CN `common_name` and EKU clientAuth.
    pub fn issue_client(&self, common_name: &str) -> Result<IssuedCert, CaError> {
        let printable = common_name
            .bytes()
            .all(|b| b.is_ascii_graphic() || b == b' ');
        if common_name.is_empty() || common_name.len() > 64 || !printable {
            return Err(CaError::InvalidCommonName(common_name.to_string()));
        }
        let params = leaf_params(common_name, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth);
        Ok(self.sign(&params, common_name)?.0)
    }

    /// The deployer's client certificate ([`DEPLOYER_CN`]), kept as `client.pem` and
    /// `client-key.pem`. A stored pair is returned as long as it matches, chains to this CA and
    /// stays valid for 30 more days; otherwise (or when absent) a new one is issued and stored.
    pub fn deployer_client(&self) -> Result<IssuedCert, CaError> {
        let _lock = lock(&self.dir)?;
        let cert_path = self.dir.join(CLIENT_CERT_FILE);
        let key_path = self.dir.join(CLIENT_KEY_FILE);
        let cert_pem = read_optional(&cert_path)?;
        let key_pem = read_optional(&key_path)?.map(Secret::new);
        if let (Some(cert_pem), Some(key_pem)) = (cert_pem, key_pem) {
            tighten_key_mode(&key_path)?;
            let stored = IssuedCert { cert_pem, key_pem };
            match self.check_stored_client(&stored, &cert_path, &key_path) {
                Ok(()) => return Ok(stored),
                Err(err) => tracing::warn!(
                    error = &err as &dyn std::error::Error,
                    "replacing the deployer's client certificate"
                ),
            }
        }
        let issued = self.issue_client(DEPLOYER_CN)?;
        write_atomically(
            &self.dir,
            CLIENT_KEY_FILE,
            issued.key_pem.expose().as_bytes(),
            0o600,
        )?;
        write_atomically(
            &self.dir,
            CLIENT_CERT_FILE,
            issued.cert_pem.as_bytes(),
            0o644,
        )?;
        Ok(issued)
    }

    fn sign(
        &self,
        params: &CertificateParams,
        subject: &str,
    ) -> Result<(IssuedCert, CertificateDer<'static>), CaError> {
        let key = generate_key(subject)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CaError::Sign {
                op: "sign the certificate",
                subject: subject.to_string(),
                source,
            })?;
        let issued = IssuedCert {
            cert_pem: cert.pem(),
            key_pem: Secret::new(key.serialize_pem()),
        };
        Ok((issued, cert.der().clone()))
    }

    /// The stored certificate must carry the stored key, and what the rebuilt issuer signs must
    /// verify against it (same subject, same key, a CA certificate).
    fn check_pair(&self, cert_path: &Path, key_path: &Path) -> Result<(), CaError> {
        let key_der = PrivatePkcs8KeyDer::from(self.issuer.key().serialize_der());
        keys_match(&self.cert_der, key_der.into()).map_err(|source| CaError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            source,
        })?;
        let probe = leaf_params(
            "kiln-ca-self-check",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let (_, probe_der) = self.sign(&probe, "kiln-ca-self-check")?;
        self.verify_client(&probe_der, UnixTime::now())
            .map_err(|source| CaError::ForeignCa {
                path: cert_path.to_path_buf(),
                source,
            })
    }

    fn check_stored_client(
        &self,
        stored: &IssuedCert,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<(), CaError> {
        let cert_der =
            CertificateDer::from_pem_slice(stored.cert_pem.as_bytes()).map_err(|source| {
                CaError::BadCert {
                    path: cert_path.to_path_buf(),
                    source,
                }
            })?;
        let key_der =
            PrivateKeyDer::from_pem_slice(stored.key_pem.expose().as_bytes()).map_err(|_| {
                CaError::BadKey {
                    path: key_path.to_path_buf(),
                }
            })?;
        keys_match(&cert_der, key_der).map_err(|source| CaError::KeyMismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            source,
        })?;
        let horizon = SystemTime::now() + RENEW_BEFORE;
        let horizon = UnixTime::since_unix_epoch(
            horizon.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO),
        );
        self.verify_client(&cert_der, horizon)
            .map_err(|source| CaError::StaleCert {
                path: cert_path.to_path_buf(),
                source,
            })
    }

    /// webpki's verdict on `leaf` as a client certificate of this CA at time `at`.
    fn verify_client(&self, leaf: &CertificateDer<'_>, at: UnixTime) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone())?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_client_cert(leaf, &[], at).map(|_| ())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn keys_match(
    cert: &CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<(), rustls::Error> {
    let certified = rustls::sign::CertifiedKey::from_der(vec![cert.clone()], key, &provider())?;
    certified.keys_match()
}

fn generate_key(subject: &str) -> Result<KeyPair, CaError> {
    KeyPair::generate().map_err(|source| CaError::Sign {
        op: "generate a P-256 key",
        subject: subject.to_string(),
        source,
    })
}

/// The CA's parameters, all but validity and serial determined by its key (see module notes).
fn ca_params(key: &KeyPair) -> (CertificateParams, String) {
    let mut params = CertificateParams::default();
    let suffix: String = params
        .key_identifier(key)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    let common_name = format!("{CA_CN_PREFIX} {suffix}");
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Kiln");
    name.push(DnType::CommonName, common_name.clone());
    params.distinguished_name = name;
    // Path length 0: the CA signs leaves only, never an intermediate.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, CA_VALIDITY);
    (params, common_name)
}

fn leaf_params(
    common_name: &str,
    sans: Vec<SanType>,
    usage: ExtendedKeyUsagePurpose,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY);
    params
}

/// Backdated a day, valid for `lifetime` from now, with a random positive 128-bit serial.
fn set_validity(params: &mut CertificateParams, lifetime: Duration) {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    // rcgen re-exports no clock, but its epoch plus a std Duration is a `time::OffsetDateTime`.
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - DAY;
    params.not_after = now + lifetime;
    let mut serial: [u8; 16] = rand::random();
    serial[0] = (serial[0] & 0x7f) | 0x40;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

fn ensure_private_dir(dir: &Path) -> Result<(), CaError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error("create directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io_error("set the mode of", dir))
}

/// Exclusive lock on `dir/.lock`, released when the returned value drops.
fn lock(dir: &Path) -> Result<nix::fcntl::Flock<fs::File>, CaError> {
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_error("open lock file", &path))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, source)| CaError::Lock { path, source })
}

fn read_optional(path: &Path) -> Result<Option<String>, CaError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", path)(e)),
    }
}

/// A key file that someone made group- or world-readable is put back to 0600.
fn tighten_key_mode(path: &Path) -> Result<(), CaError> {
    let mode = fs::metadata(path)
        .map_err(io_error("stat", path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format!("{:o}", mode & 0o777),
            "private key was readable by others; setting mode 0600"
        );
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(io_error("set the mode of", path))?;
    }
    Ok(())
}

/// Writes `dir/name` via a fsynced temp file and a rename, then fsyncs `dir`. The temp name is
/// fixed, which is safe because every writer holds the directory lock.
fn write_atomically(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("remove stale temp file", &tmp)(e)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_error("create", &tmp))?;
    // The umask may have cleared bits of `mode` (0644 under umask 077): set it exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_error("set the mode of", &tmp))?;
    file.write_all(contents).map_err(io_error("write", &tmp))?;
    file.sync_all().map_err(io_error("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(io_error("rename into place", &path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn ca_subject_follows_from_the_key() {
        let key = KeyPair::generate().unwrap();
        let (a, cn_a) = ca_params(&key);
        let (b, cn_b) = ca_params(&key);
        assert_eq!(cn_a, cn_b);
        assert_eq!(a.distinguished_name, b.distinguished_name);
        assert!(cn_a.starts_with("Kiln appliance CA "));
        assert_eq!(cn_a.len(), "Kiln appliance CA ".len() + 12);
        let (_, other) = ca_params(&KeyPair::generate().unwrap());
        assert_ne!(cn_a, other);
    }

    #[test]
    fn lone_key_gets_its_certificate_back() {
        let dir = tempfile::tempdir().unwrap();
        let first = CertificateAuthority::load_or_create(dir.path()).unwrap();
        fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap();
        let second = CertificateAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(first.common_name(), second.common_name());
        // A leaf from the first instance verifies against the rebuilt certificate.
        let leaf = first.issue_client("someone").unwrap();
        let der = CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        second.verify_client(&der, UnixTime::now()).unwrap();
    }

    #[test]
    fn certificate_without_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(dir.path()).unwrap();
        fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let err = CertificateAuthority::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, CaError::MissingCaKey { .. }), "{err:?}");
        assert!(dir.path().join(CA_CERT_FILE).exists());
    }

    #[test]
    fn pair_from_two_cas_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(a.path()).unwrap();
        CertificateAuthority::load_or_create(b.path()).unwrap();
        fs::copy(b.path().join(CA_CERT_FILE), a.path().join(CA_CERT_FILE)).unwrap();
        let err = CertificateAuthority::load_or_create(a.path()).unwrap_err();
        assert!(matches!(err, CaError::KeyMismatch { .. }), "{err:?}");
        assert!(!err.to_string().contains("PRIVATE KEY"));
    }

    #[test]
    fn self_signed_certificate_with_another_subject_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(dir.path()).unwrap();
        let key =
            KeyPair::from_pem(&fs::read_to_string(dir.path().join(CA_KEY_FILE)).unwrap()).unwrap();
        let (mut params, _) = ca_params(&key);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "Kiln appliance CA impostor");
        let cert = params.self_signed(&key).unwrap();
        fs::write(dir.path().join(CA_CERT_FILE), cert.pem()).unwrap();
        let err = CertificateAuthority::load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, CaError::ForeignCa { .. }), "{err:?}");
    }

    #[test]
    fn garbage_key_error_names_the_file_but_not_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join(CA_KEY_FILE);
        fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = CertificateAuthority::load_or_create(dir.path()).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(text.contains("ca-key.pem"), "{text}");
        assert!(!text.contains("c2VjcmV0"), "{text}");
    }

    #[test]
    fn loose_key_mode_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(dir.path()).unwrap();
        let key = dir.path().join(CA_KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        CertificateAuthority::load_or_create(dir.path()).unwrap();
        assert_eq!(mode(&key), 0o600);
    }

    #[test]
    fn stale_deployer_certificate_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let foreign = CertificateAuthority::load_or_create(other.path())
            .unwrap()
            .issue_client(DEPLOYER_CN)
            .unwrap();
        fs::write(dir.path().join(CLIENT_CERT_FILE), &foreign.cert_pem).unwrap();
        fs::write(dir.path().join(CLIENT_KEY_FILE), foreign.key_pem.expose()).unwrap();
        let replaced = ca.deployer_client().unwrap();
        assert_ne!(replaced.cert_pem, foreign.cert_pem);
        let der = CertificateDer::from_pem_slice(replaced.cert_pem.as_bytes()).unwrap();
        ca.verify_client(&der, UnixTime::now()).unwrap();
        assert_eq!(ca.deployer_client().unwrap().cert_pem, replaced.cert_pem);
    }

    #[test]
    fn expiring_deployer_certificate_is_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        let mut params = leaf_params(DEPLOYER_CN, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth);
        params.not_after = rcgen::date_time_ymd(1970, 1, 1)
            + SystemTime::now().duration_since(UNIX_EPOCH).unwrap()
            + 10 * DAY;
        let (expiring, _) = ca.sign(&params, DEPLOYER_CN).unwrap();
        fs::write(dir.path().join(CLIENT_CERT_FILE), &expiring.cert_pem).unwrap();
        fs::write(dir.path().join(CLIENT_KEY_FILE), expiring.key_pem.expose()).unwrap();
        let renewed = ca.deployer_client().unwrap();
        assert_ne!(renewed.cert_pem, expiring.cert_pem);
        assert_eq!(
            fs::read_to_string(dir.path().join(CLIENT_CERT_FILE)).unwrap(),
            renewed.cert_pem
        );
    }

    #[test]
    fn invalid_names_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(dir.path()).unwrap();
        for bad in ["", "10.0.0.1", "node 1", "-node", "node.", "a..b", "*.lab"] {
            assert!(
                matches!(ca.issue_server(bad, &[]), Err(CaError::InvalidHostname(_))),
                "{bad:?} accepted"
            );
        }
        assert!(ca.issue_server("node-1.lab", &[]).is_ok());
        for bad in ["", "tab\there", &"x".repeat(65)] {
            assert!(matches!(
                ca.issue_client(bad),
                Err(CaError::InvalidCommonName(_))
            ));
        }
    }

    #[test]
    fn serials_are_random_and_positive() {
        let mut a = CertificateParams::default();
        let mut b = CertificateParams::default();
        set_validity(&mut a, LEAF_VALIDITY);
        set_validity(&mut b, LEAF_VALIDITY);
        let (a, b) = (a.serial_number.unwrap(), b.serial_number.unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert!(a.to_bytes()[0] & 0x80 == 0);
    }
}
