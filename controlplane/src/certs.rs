//! Development certificates (rcgen): a dev CA, a node certificate and client
//! certificates, so a single node with embedded defaults runs with mTLS out of
//! the box (`memstreamer certs`, or on first start of a node).
//!
//! Layout of a certificate directory (keys are written with mode 0600,
//! certificates 0644, each file written to a temporary name and renamed):
//!
//! ```text
//! <dir>/ca.pem  ca.key        dev CA (CN "memstreamer dev CA")
//! <dir>/node.pem node.key     node certificate: server + client auth, SANs
//!                             localhost, 127.0.0.1, ::1, NODE_TLS_NAME and
//!                             the node's own addresses
//! <dir>/<name>.pem <name>.key client certificate, CN = <name> (the principal)
//! ```
//!
//! Every node of a dev cluster uses the same CA. Clients connect with the TLS
//! server name [`NODE_TLS_NAME`] (which every node certificate carries), so a
//! certificate does not have to list every address a node is reached at.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

/// TLS server name every node certificate carries; clients verify it.
pub const NODE_TLS_NAME: &str = "memstreamer-node";
/// Principal (CN) of the node certificate, used when nodes call each other.
pub const NODE_PRINCIPAL: &str = "memstreamer-node";
/// Principal (CN) of the dev client certificate; a superuser by default.
pub const ADMIN_PRINCIPAL: &str = "admin";
/// Where `msctl` and a node without configuration look for the dev certificates.
pub const DEV_CERT_DIR_DEFAULT: &str = "/var/lib/memstreamer/cp/certs";

pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const NODE_CERT_FILE: &str = "node.pem";
pub const NODE_KEY_FILE: &str = "node.key";

/// Validity of the dev CA.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Validity of node and client certificates.
pub const LEAF_VALIDITY_DAYS: i64 = 825;
/// Longest client name (it becomes a file name and the principal).
pub const CLIENT_NAME_BYTES_MAX: usize = 64;

const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

#[derive(Debug, Error)]
pub enum CertsGenerateError {
    #[error("could not create the certificate directory {}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
    #[error("could not write {}: {source}; check permissions and free space", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("could not read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{} is not a usable PEM CA certificate or key ({source}); remove the directory's ca.* \
         files to make a new dev CA (all certificates must then be reissued)",
        path.display()
    )]
    BadCa { path: PathBuf, source: rcgen::Error },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "`{name}` is not a valid client name: use 1..={CLIENT_NAME_BYTES_MAX} characters of \
         [a-zA-Z0-9._-], not starting with `.`"
    )]
    BadClientName { name: String },
}

/// Paths of one certificate + key pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The files of a dev certificate directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevCerts {
    pub dir: PathBuf,
    pub ca: CertPair,
    pub node: CertPair,
    /// The `admin` client certificate.
    pub admin: CertPair,
}

impl DevCerts {
    /// The paths inside `dir` (whether or not the files exist).
    pub fn paths(dir: &Path) -> DevCerts {
        DevCerts {
            dir: dir.to_path_buf(),
            ca: CertPair {
                cert: dir.join(CA_CERT_FILE),
                key: dir.join(CA_KEY_FILE),
            },
            node: CertPair {
                cert: dir.join(NODE_CERT_FILE),
                key: dir.join(NODE_KEY_FILE),
            },
            admin: client_paths(dir, ADMIN_PRINCIPAL),
        }
    }
}

/// Paths of the client certificate `name` in `dir`.
pub fn client_paths(dir: &Path, name: &str) -> CertPair {
    CertPair {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

/// Validity window of a certificate to issue.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From one hour ago (clock skew) for `days`.
    pub fn days_from_now(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }
}

/// Creates whatever of the dev CA, node certificate and `admin` client
/// certificate is missing in `dir` (existing files are kept, so this is
/// idempotent and safe on every start). `node_addrs` are added to the node
/// certificate's SANs when it is created.
pub fn generate_dev_with(
    dir: &Path,
    node_addrs: &[IpAddr],
) -> Result<DevCerts, CertsGenerateError> {
    let paths = DevCerts::paths(dir);
    fs::create_dir_all(dir).map_err(|source| CertsGenerateError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    if !paths.ca.cert.exists() || !paths.ca.key.exists() {
        let key = KeyPair::generate()?;
        let cert = ca_params(Validity::days_from_now(CA_VALIDITY_DAYS)).self_signed(&key)?;
        write_file(&paths.ca.key, key.serialize_pem().as_bytes(), KEY_MODE)?;
        write_file(&paths.ca.cert, cert.pem().as_bytes(), CERT_MODE)?;
    }
    if !paths.node.cert.exists() || !paths.node.key.exists() {
        issue_node(dir, node_addrs, Validity::days_from_now(LEAF_VALIDITY_DAYS))?;
    }
    if !paths.admin.cert.exists() || !paths.admin.key.exists() {
        issue_client(
            dir,
            ADMIN_PRINCIPAL,
            Validity::days_from_now(LEAF_VALIDITY_DAYS),
        )?;
    }
    Ok(paths)
}

/// [`generate_dev_with`] without extra node addresses.
pub fn generate_dev(dir: &Path) -> Result<DevCerts, CertsGenerateError> {
    generate_dev_with(dir, &[])
}

/// Issues (or replaces) the node certificate of `dir`, signed by its CA.
pub fn issue_node(
    dir: &Path,
    addrs: &[IpAddr],
    validity: Validity,
) -> Result<CertPair, CertsGenerateError> {
    let issuer = load_issuer(dir)?;
    let mut params = leaf_params(NODE_PRINCIPAL, validity);
    params.subject_alt_names = vec![
        SanType::DnsName(NODE_TLS_NAME.try_into()?),
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::IpAddress(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
    ];
    for addr in addrs {
        let san = SanType::IpAddress(*addr);
        if !params.subject_alt_names.contains(&san) {
            params.subject_alt_names.push(san);
        }
    }
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let pair = CertPair {
        cert: dir.join(NODE_CERT_FILE),
        key: dir.join(NODE_KEY_FILE),
    };
    write_file(&pair.key, key.serialize_pem().as_bytes(), KEY_MODE)?;
    write_file(&pair.cert, cert.pem().as_bytes(), CERT_MODE)?;
    Ok(pair)
}

/// Issues (or replaces) a client certificate with CN `name` (the principal)
/// in `dir`, signed by the CA of `dir`.
pub fn issue_client(
    dir: &Path,
    name: &str,
    validity: Validity,
) -> Result<CertPair, CertsGenerateError> {
    validate_client_name(name)?;
    let issuer = load_issuer(dir)?;
    let mut params = leaf_params(name, validity);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    let pair = client_paths(dir, name);
    write_file(&pair.key, key.serialize_pem().as_bytes(), KEY_MODE)?;
    write_file(&pair.cert, cert.pem().as_bytes(), CERT_MODE)?;
    Ok(pair)
}

fn validate_client_name(name: &str) -> Result<(), CertsGenerateError> {
    let ok = !name.is_empty()
        && name.len() <= CLIENT_NAME_BYTES_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CertsGenerateError::BadClientName {
            name: name.to_string(),
        })
    }
}

fn ca_params(validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "memstreamer dev CA");
    dn.push(DnType::OrganizationName, "MemoryStreamer");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params
}

fn leaf_params(common_name: &str, validity: Validity) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "MemoryStreamer");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    params
}

fn load_issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CertsGenerateError> {
    let paths = DevCerts::paths(dir);
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| CertsGenerateError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let key_pem = read(&paths.ca.key)?;
    let cert_pem = read(&paths.ca.cert)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|source| CertsGenerateError::BadCa {
        path: paths.ca.key.clone(),
        source,
    })?;
    Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| CertsGenerateError::BadCa {
        path: paths.ca.cert.clone(),
        source,
    })
}

/// Writes `bytes` to a temporary file with `mode` (set at creation, so a key
/// is never readable by others), fsyncs and renames it over `path`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertsGenerateError> {
    let err = |source| CertsGenerateError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    // The umask may have removed bits; set exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certs_are_created_once_with_private_keys() {
        let dir = tempfile::tempdir().unwrap();
        let certs = generate_dev(dir.path()).unwrap();
        for pair in [&certs.ca, &certs.node, &certs.admin] {
            let key_mode = fs::metadata(&pair.key).unwrap().permissions().mode() & 0o777;
            assert_eq!(key_mode, 0o600, "{}", pair.key.display());
            assert!(fs::read_to_string(&pair.cert)
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE-----"));
        }
        let ca_before = fs::read(&certs.ca.cert).unwrap();
        let again = generate_dev(dir.path()).unwrap();
        assert_eq!(again, certs);
        assert_eq!(fs::read(&certs.ca.cert).unwrap(), ca_before, "CA kept");
    }

    #[test]
    fn node_certificate_names_its_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let addr: IpAddr = "198.18.0.7".parse().unwrap();
        let certs = generate_dev_with(dir.path(), &[addr]).unwrap();
        let pem = fs::read(&certs.node.cert).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        let cert = pem.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names = format!("{:?}", san.value.general_names);
        assert!(names.contains(NODE_TLS_NAME), "{names}");
        assert!(
            names.contains("198.18.0.7") || names.contains("[198, 18, 0, 7]"),
            "{names}"
        );
    }

    #[test]
    fn client_names_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        generate_dev(dir.path()).unwrap();
        for bad in ["", "../x", ".hidden", "a b", &"x".repeat(65)] {
            assert!(matches!(
                issue_client(dir.path(), bad, Validity::days_from_now(1)),
                Err(CertsGenerateError::BadClientName { .. })
            ));
        }
        issue_client(dir.path(), "alice", Validity::days_from_now(1)).unwrap();
    }
}
