//! mTLS configuration (rustls through tonic's `tls-ring`): clients present
//! their certificate and verify the server against the CA with the server
//! name [`NODE_TLS_NAME`]. The node's own listener is `super::acceptor`
//! (it judges client certificates after the handshake, so refusals are
//! answered and audited); [`server_tls_config`] is tonic's stricter variant,
//! which refuses a missing, expired, malformed or foreign-CA certificate in
//! the handshake itself.

use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::certs::{CertPair, NODE_TLS_NAME};

/// Longest PEM file read (certificates and keys are a few KiB).
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum TlsConfigError {
    #[error(
        "could not read {}: {source}; create dev certificates with `memstreamer certs` or \
         pass --cert/--key/--ca",
        path.display()
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is not PEM ({what}); pass a PEM file (-----BEGIN ...) of at most \
         {PEM_FILE_BYTES_MAX} bytes",
        path.display()
    )]
    NotPem { path: PathBuf, what: &'static str },
    #[error(
        "{} is not a usable {what} ({detail}); create dev certificates with `memstreamer certs` \
         or pass --cert/--key/--ca",
        path.display()
    )]
    Invalid {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
}

/// Reads a PEM file, checking size and the PEM armour (tonic would accept
/// garbage and fail later with a less helpful message).
pub fn read_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsConfigError> {
    let read_err = |source| TlsConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = fs::metadata(path).map_err(read_err)?.len();
    if len > PEM_FILE_BYTES_MAX {
        return Err(TlsConfigError::NotPem {
            path: path.to_path_buf(),
            what,
        });
    }
    let bytes = fs::read(path).map_err(read_err)?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(TlsConfigError::NotPem {
            path: path.to_path_buf(),
            what,
        });
    }
    Ok(bytes)
}

/// Server side: our identity, client certificates required from `ca`.
pub fn server_tls_config(
    identity: &CertPair,
    ca: &Path,
) -> Result<ServerTlsConfig, TlsConfigError> {
    let cert = read_pem(&identity.cert, "certificate")?;
    let key = read_pem(&identity.key, "private key")?;
    let ca = read_pem(ca, "CA certificate")?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(false))
}

/// Client side: present `identity`, trust only `ca`, expect [`NODE_TLS_NAME`].
pub fn client_tls_config(
    identity: &CertPair,
    ca: &Path,
) -> Result<ClientTlsConfig, TlsConfigError> {
    let cert = read_pem(&identity.cert, "certificate")?;
    let key = read_pem(&identity.key, "private key")?;
    let ca = read_pem(ca, "CA certificate")?;
    Ok(ClientTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(NODE_TLS_NAME))
}
