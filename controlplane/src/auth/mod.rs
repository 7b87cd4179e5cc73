//! Authentication and authorization of admin calls: mTLS configuration
//! ([`tls`]), the node's TLS listener that judges client certificates after
//! the handshake ([`acceptor`]), the principal from the client certificate
//! ([`principal`]) and ACL evaluation ([`acl`]).

pub mod acceptor;
pub mod acl;
pub mod principal;
pub mod tls;

pub use acceptor::{NodeTls, PeerIdentity};
pub use acl::{authorize, Decision, Resource};
pub use principal::{principal_from_der, principal_of, PrincipalExtractError};
pub use tls::{client_tls_config, server_tls_config, TlsConfigError};

/// Principals allowed everything when no configuration names others: the
/// dev `admin` client certificate and the nodes themselves.
pub fn default_superusers() -> Vec<String> {
    vec![
        crate::certs::ADMIN_PRINCIPAL.to_string(),
        crate::certs::NODE_PRINCIPAL.to_string(),
    ]
}
