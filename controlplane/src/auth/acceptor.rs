//! The node's TLS listener (Raft and admin gRPC share it).
//!
//! tonic's own TLS refuses a missing, expired or foreign-CA client
//! certificate in the handshake: the caller sees a bare TLS alert, and no
//! service sees the attempt, so it cannot be audited. Here the handshake
//! asks for a client certificate but does not require one, and checks only
//! that the client holds the private key of what it presents (the TLS
//! signature). The chain is then judged against the cluster CA once, right
//! after the handshake, and the verdict travels with every request of the
//! connection as a [`PeerIdentity`]. `principal_of` turns a refused verdict
//! into UNAUTHENTICATED with a message that says what to do, and the admin
//! service writes the refusal to the audit log. No request is ever served on
//! a refused verdict: both services take their principal from it.
//!
//! Handshakes run on their own tasks (bounded by [`HANDSHAKE_TIMEOUT`]) so a
//! slow or hostile client cannot hold up the accept loop.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::tls::{read_pem, TlsConfigError};
use crate::certs::CertPair;

/// Longest TLS handshake accepted.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections handshaken but not yet taken by the gRPC server.
const ACCEPTED_QUEUE: usize = 64;

/// What the TLS layer established about a peer; every request of the
/// connection carries it (tonic puts it in the request extensions).
#[derive(Clone, Debug)]
pub struct PeerIdentity {
    /// The client's certificate chain (leaf first) when it chains to the
    /// cluster CA, else why it was refused, in words that say what to do.
    pub verdict: Result<Arc<Vec<CertificateDer<'static>>>, String>,
    pub remote: SocketAddr,
}

/// The node's TLS configuration: its identity and the cluster CA.
#[derive(Clone)]
pub struct NodeTls {
    acceptor: TlsAcceptor,
    ca: Arc<dyn ClientCertVerifier>,
}

impl NodeTls {
    /// Reads the node's certificate and key and the CA (PEM files).
    pub fn new(identity: &CertPair, ca: &Path) -> Result<Self, TlsConfigError> {
        let invalid = |path: &Path, what: &'static str, detail: String| TlsConfigError::Invalid {
            path: path.to_path_buf(),
            what,
            detail,
        };
        let cert_pem = read_pem(&identity.cert, "certificate")?;
        let key_pem = read_pem(&identity.key, "private key")?;
        let ca_pem = read_pem(ca, "CA certificate")?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&identity.cert, "certificate", e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| invalid(&identity.key, "private key", e.to_string()))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca_pem) {
            let cert = cert.map_err(|e| invalid(ca, "CA certificate", e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| invalid(ca, "CA certificate", e.to_string()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| invalid(ca, "CA certificate", e.to_string()))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(&identity.cert, "certificate", e.to_string()))?
            .with_client_cert_verifier(Arc::new(JudgeLater {
                ca: ca_verifier.clone(),
            }))
            .with_single_cert(chain, key)
            .map_err(|e| invalid(&identity.key, "private key", e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            ca: ca_verifier,
        })
    }

    /// The verdict on a handshaken client's certificate chain.
    fn judge(
        &self,
        chain: Option<&[CertificateDer<'_>]>,
    ) -> Result<Arc<Vec<CertificateDer<'static>>>, String> {
        let Some((leaf, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return Err("no client certificate: connect over mTLS with a certificate signed by \
                        the cluster CA (msctl --cert/--key/--ca; `memstreamer certs` makes dev ones)"
                .into());
        };
        match self
            .ca
            .verify_client_cert(leaf, intermediates, UnixTime::now())
        {
            Ok(_) => Ok(Arc::new(
                std::iter::once(leaf)
                    .chain(intermediates)
                    .map(|c| c.clone().into_owned())
                    .collect(),
            )),
            Err(e) => Err(explain(&e)),
        }
    }

    /// Accepts connections on `listener` until `shutdown` turns true; the
    /// stream yields handshaken connections for tonic's `serve_with_incoming`.
    pub fn incoming(
        &self,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) -> ReceiverStream<io::Result<TlsConn>> {
        let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
        let tls = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = tokio::select! {
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = async { shutdown.wait_for(|s| *s).await.map(|_| ()) } => return,
                };
                if tx.is_closed() {
                    return;
                }
                let _ = tcp.set_nodelay(true);
                let (tls, tx) = (tls.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(tcp)).await {
                        Ok(Ok(io)) => {
                            let verdict = tls.judge(io.get_ref().1.peer_certificates());
                            if let Err(why) = &verdict {
                                tracing::info!("client {remote}: certificate refused: {why}");
                            }
                            let identity = PeerIdentity { verdict, remote };
                            let _ = tx.send(Ok(TlsConn { io, identity })).await;
                        }
                        Ok(Err(e)) => tracing::info!("TLS handshake with {remote} failed: {e}"),
                        Err(_) => tracing::info!(
                            "TLS handshake with {remote} took over {HANDSHAKE_TIMEOUT:?}; closed"
                        ),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

/// Why a client certificate was refused, and what to do about it.
fn explain(e: &rustls::Error) -> String {
    let what = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "it has expired: issue a new one from the cluster CA (`memstreamer certs`)"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "it is not valid yet: check this node's and the issuer's clocks"
            }
            // A foreign CA with the same name as ours shows up as a bad signature.
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                "it is not signed by this cluster's CA: use a certificate issued by the CA the \
                 nodes trust (the --ca file)"
            }
            CertificateError::Revoked => "it has been revoked",
            CertificateError::BadEncoding => {
                "it could not be parsed: reissue it (`memstreamer certs`)"
            }
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "it is not a client certificate (extended key usage): issue a client certificate"
            }
            _ => "",
        },
        _ => "",
    };
    if what.is_empty() {
        format!(
            "the client certificate was refused ({e}): use a certificate signed by the cluster CA"
        )
    } else {
        format!("the client certificate was refused: {what}")
    }
}

/// The handshake's verifier: asks for a client certificate, does not require
/// one, and checks only the TLS signatures (that the client holds the
/// certificate's private key); the chain is judged after the handshake.
#[derive(Debug)]
struct JudgeLater {
    ca: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for JudgeLater {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.ca.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Judged in NodeTls::judge once the handshake is done; the verdict
        // rides with every request of the connection.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.ca.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.ca.supported_verify_schemes()
    }
}

/// A handshaken connection and what it proved.
pub struct TlsConn {
    io: tokio_rustls::server::TlsStream<TcpStream>,
    identity: PeerIdentity,
}

impl Connected for TlsConn {
    type ConnectInfo = PeerIdentity;

    fn connect_info(&self) -> PeerIdentity {
        self.identity.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
