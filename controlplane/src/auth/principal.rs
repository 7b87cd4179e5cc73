//! The principal of a caller: the subject CN of its client certificate, or
//! when there is none its first URI or DNS SAN.

use tonic::Request;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Longest principal name accepted from a certificate.
pub const PRINCIPAL_BYTES_MAX: usize = 249;

/// Why no principal could be taken from a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrincipalExtractError {
    #[error(
        "no client certificate: connect over mTLS with a certificate signed by the cluster CA \
         (msctl --cert/--key/--ca)"
    )]
    NoCertificate,
    #[error("the client certificate could not be parsed: reissue it (`memstreamer certs`)")]
    Malformed,
    #[error(
        "the client certificate names no principal (no subject CN, URI or DNS SAN of 1..=249 \
         bytes): reissue it with a CN"
    )]
    NoName,
    /// The node's TLS listener refused the certificate (see `acceptor`).
    #[error("{0}")]
    Refused(String),
}

/// Principal of a DER certificate.
pub fn principal_from_der(der: &[u8]) -> Result<String, PrincipalExtractError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| PrincipalExtractError::Malformed)?;
    let valid = |s: &str| !s.is_empty() && s.len() <= PRINCIPAL_BYTES_MAX;
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .find(|s| valid(s))
    {
        return Ok(cn.to_string());
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(s) | GeneralName::DNSName(s) if valid(s) => {
                    return Ok(s.to_string())
                }
                _ => {}
            }
        }
    }
    Err(PrincipalExtractError::NoName)
}

/// Principal of the peer of a tonic request (its leaf certificate): from the
/// verdict of the node's TLS listener ([`super::PeerIdentity`]), or from
/// tonic's own TLS (which refuses bad certificates in the handshake).
pub fn principal_of<T>(request: &Request<T>) -> Result<String, PrincipalExtractError> {
    if let Some(id) = request.extensions().get::<super::PeerIdentity>() {
        let chain = id
            .verdict
            .as_ref()
            .map_err(|why| PrincipalExtractError::Refused(why.clone()))?;
        let leaf = chain.first().ok_or(PrincipalExtractError::NoCertificate)?;
        return principal_from_der(leaf.as_ref());
    }
    let certs = request
        .peer_certs()
        .ok_or(PrincipalExtractError::NoCertificate)?;
    let leaf = certs.first().ok_or(PrincipalExtractError::NoCertificate)?;
    principal_from_der(leaf.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{generate_dev, ADMIN_PRINCIPAL};

    #[test]
    fn principal_is_the_common_name() {
        let dir = tempfile::tempdir().unwrap();
        let certs = generate_dev(dir.path()).unwrap();
        let pem = std::fs::read(&certs.admin.cert).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
        assert_eq!(principal_from_der(&pem.contents).unwrap(), ADMIN_PRINCIPAL);
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for bytes in [&b""[..], b"\x30\x03\x02\x01", b"not a certificate"] {
            assert_eq!(
                principal_from_der(bytes),
                Err(PrincipalExtractError::Malformed)
            );
        }
    }

    #[test]
    fn request_without_certificate_has_no_principal() {
        let req = Request::new(());
        assert_eq!(
            principal_of(&req),
            Err(PrincipalExtractError::NoCertificate)
        );
    }
}
