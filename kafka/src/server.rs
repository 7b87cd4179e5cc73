//! The TCP listener and one task per connection.
//!
//! A connection reads a frame (size, then body), answers it, and reads the next: responses
//! go out in request order, as Kafka clients expect. Limits: a frame larger than
//! `request_bytes_max` or with a negative size closes the connection before its body is read;
//! the body is read as it arrives (never allocated from the size field alone); a frame must
//! arrive within `request_read_timeout` once its first byte did, and a connection idle for
//! `idle_timeout` is closed. A client that disconnects mid-request ends its task at the
//! failed read. At most `connections_max` connections are served; more are closed at accept.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::api::{handle, Broker, ANONYMOUS_PRINCIPAL};
use crate::codec::{api_versions_unsupported, decode_request, encode_response, RequestDecodeError};

/// Connection limits.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    pub request_bytes_max: u32,
    pub connections_max: u64,
    pub idle_timeout: Duration,
    pub request_read_timeout: Duration,
}

struct Open(Arc<Broker>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0
            .stats
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until the listener fails.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    limits: ConnLimits,
) -> std::io::Result<()> {
    loop {
        let (sock, peer) = listener.accept().await?;
        let stats = &broker.stats;
        if stats.connections_open.load(Ordering::Relaxed) >= limits.connections_max {
            stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            drop(sock);
            continue;
        }
        stats.connections_open.fetch_add(1, Ordering::Relaxed);
        stats.connections_total.fetch_add(1, Ordering::Relaxed);
        let open = Open(broker.clone());
        let limits = limits.clone();
        tokio::spawn(async move {
            let _ = sock.set_nodelay(true);
            if let Err(why) = connection(sock, &open.0, &limits).await {
                if !why.is_empty() {
                    eprintln!("memstreamer kafka: closed {peer}: {why}");
                }
            }
            drop(open);
        });
    }
}

/// Serves one connection; `Err` says why it was closed (empty: the client left).
async fn connection(
    mut sock: TcpStream,
    b: &Arc<Broker>,
    limits: &ConnLimits,
) -> Result<(), String> {
    loop {
        let size = match tokio::time::timeout(limits.idle_timeout, sock.read_i32()).await {
            Err(_) => return Err(format!("idle for {:?}", limits.idle_timeout)),
            Ok(Err(_)) => return Err(String::new()),
            Ok(Ok(size)) => size,
        };
        let len = match u32::try_from(size) {
            Ok(n) if n <= limits.request_bytes_max => n as usize,
            _ => {
                b.stats.requests_refused.fetch_add(1, Ordering::Relaxed);
                return Err(format!(
                    "request size {size} is outside 0..={} (request_bytes_max)",
                    limits.request_bytes_max
                ));
            }
        };
        let mut frame = Vec::new();
        let mut body = (&mut sock).take(len as u64);
        match tokio::time::timeout(limits.request_read_timeout, body.read_to_end(&mut frame)).await
        {
            Ok(Ok(n)) if n == len => {}
            Ok(_) => return Err(String::new()),
            Err(_) => {
                return Err(format!(
                    "request not complete within {:?}",
                    limits.request_read_timeout
                ))
            }
        }
        let reply = match decode_request(frame.into()) {
            Ok(req) => {
                let (api, version, id) = (req.api, req.version, req.correlation_id);
                match handle(b, ANONYMOUS_PRINCIPAL, req).await {
                    None => continue,
                    Some(body) => {
                        encode_response(api, version, id, &body).map_err(|e| e.to_string())?
                    }
                }
            }
            Err(RequestDecodeError::ApiVersionsVersion { correlation_id, .. }) => {
                api_versions_unsupported(correlation_id).map_err(|e| e.to_string())?
            }
            Err(e) => {
                b.stats.requests_refused.fetch_add(1, Ordering::Relaxed);
                return Err(e.to_string());
            }
        };
        match tokio::time::timeout(limits.request_read_timeout, sock.write_all(&reply)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(String::new()),
            Err(_) => {
                return Err(format!(
                    "response not taken within {:?}",
                    limits.request_read_timeout
                ))
            }
        }
    }
}

/// Binds the listener (port 0 picks a free one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
