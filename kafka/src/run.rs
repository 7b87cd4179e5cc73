//! `memstreamer kafka`: configuration, start-up checks and the process's main loop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{Broker, Limits, ANONYMOUS_PRINCIPAL};
use crate::cluster::{ControlConfig, Metadata};
use crate::server::{serve, ConnLimits};
use crate::store::{StoreConfig, Stores};

/// Where a node serves Kafka unless told otherwise (plaintext: loopback only).
pub const LISTEN_DEFAULT: &str = "127.0.0.1:9092";
/// Largest request frame (Kafka's `socket.request.max.bytes` is 100 MiB; ours is smaller).
pub const REQUEST_BYTES_MAX_DEFAULT: u32 = 16 << 20;
/// Largest produced batch (Kafka's `message.max.bytes` default, 1 MiB + overhead).
pub const BATCH_BYTES_MAX_DEFAULT: u32 = 1_048_588;
/// Largest record count of one produced batch (librdkafka's default batch is 10,000).
pub const BATCH_RECORDS_MAX_DEFAULT: u32 = 100_000;
/// Open connections at most.
pub const CONNECTIONS_MAX_DEFAULT: u64 = 1024;
/// Kafka's `connections.max.idle.ms` default.
pub const IDLE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(600);
/// A request must arrive whole within this once its size did (and a response be taken).
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest Fetch long poll.
pub const FETCH_WAIT_MS_MAX: u32 = 30_000;
/// Segment size of each Kafka partition log.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Interval of closing the logs of streams deleted outside Kafka.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);
/// Partition logs open at once at most.
pub const PARTITIONS_OPEN_MAX: usize = 1024;
const _: () = assert!(BATCH_BYTES_MAX_DEFAULT < REQUEST_BYTES_MAX_DEFAULT);

/// `memstreamer kafka` flags (the supervisor passes them).
#[derive(clap::Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Address to serve Kafka on (port 0: any free port, printed at start).
    #[arg(long, default_value = LISTEN_DEFAULT)]
    pub listen: SocketAddr,
    /// host:port clients are told to connect to (default: the bound address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Serve plaintext without authentication on a non-loopback address. TLS and SASL are
    /// not implemented yet, so without this flag such an address is refused.
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Directory of the Kafka partition logs.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The local control plane's admin address.
    #[arg(long)]
    pub control_endpoint: String,
    /// The node's certificate directory (node.pem, node.key, ca.pem).
    #[arg(long)]
    pub cert_dir: PathBuf,
    /// This node's id.
    #[arg(long)]
    pub node_id: u64,
    /// Largest request frame in bytes; a larger one closes the connection.
    #[arg(long, default_value_t = REQUEST_BYTES_MAX_DEFAULT)]
    pub request_bytes_max: u32,
}

/// A Kafka listener configuration that is refused.
#[derive(Debug, thiserror::Error)]
pub enum KafkaConfigError {
    #[error(
        "the Kafka listener would serve {0} in plaintext without authentication: TLS and SASL \
         are not implemented yet. Listen on 127.0.0.1 (the default), or pass \
         --kafka-insecure-plaintext to serve plaintext anyway, or --kafka-listen off"
    )]
    Insecure(SocketAddr),
    #[error("request_bytes_max {0} must be at least the batch limit {BATCH_BYTES_MAX_DEFAULT} plus headers")]
    RequestBytes(u32),
}

/// The checked configuration.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub args: KafkaArgs,
}

impl KafkaConfig {
    /// Checks the flags: a non-loopback plaintext listener needs `insecure_plaintext`.
    pub fn new(args: KafkaArgs) -> Result<KafkaConfig, KafkaConfigError> {
        if !args.listen.ip().is_loopback() && !args.insecure_plaintext {
            return Err(KafkaConfigError::Insecure(args.listen));
        }
        if args.request_bytes_max < BATCH_BYTES_MAX_DEFAULT + 4096 {
            return Err(KafkaConfigError::RequestBytes(args.request_bytes_max));
        }
        Ok(KafkaConfig { args })
    }
}

fn advertised(advertise: Option<&str>, bound: SocketAddr) -> (String, u16) {
    advertise
        .and_then(|a| {
            let (h, p) = a.rsplit_once(':')?;
            Some((h.to_string(), p.parse().ok()?))
        })
        .unwrap_or_else(|| (bound.ip().to_string(), bound.port()))
}

/// Runs the listener until SIGINT/SIGTERM.
pub fn run(config: KafkaConfig) -> anyhow::Result<()> {
    let a = config.args;
    std::fs::create_dir_all(&a.data_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the Kafka data directory {}: {e}",
            a.data_dir.display()
        )
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("kafka")
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = crate::server::bind(a.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen for Kafka on {}: {e}", a.listen))?;
        let bound = listener.local_addr()?;
        let (host, port) = advertised(a.advertise.as_deref(), bound);
        let broker = Arc::new(Broker {
            metadata: Metadata::new(ControlConfig {
                endpoint: a.control_endpoint.clone(),
                cert_dir: a.cert_dir.clone(),
                node_id: a.node_id,
                advertised_host: host.clone(),
                advertised_port: port,
            }),
            stores: Stores::new(StoreConfig {
                dir: a.data_dir.clone(),
                segment_bytes: SEGMENT_BYTES_DEFAULT,
                write_buffer_bytes: 8 << 20,
                batch_bytes_max: BATCH_BYTES_MAX_DEFAULT,
                batch_records_max: BATCH_RECORDS_MAX_DEFAULT,
                partitions_open_max: PARTITIONS_OPEN_MAX,
            }),
            limits: Limits {
                fetch_wait_ms_max: FETCH_WAIT_MS_MAX,
            },
            stats: Default::default(),
        });
        let tls = if bound.ip().is_loopback() { "plaintext, loopback" } else { "PLAINTEXT (insecure, no TLS/SASL)" };
        println!(
            "memstreamer kafka: listening on {bound} ({tls}; advertised {host}:{port}; principal {ANONYMOUS_PRINCIPAL}; logs in {})",
            a.data_dir.display()
        );
        let limits = ConnLimits {
            request_bytes_max: a.request_bytes_max,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            idle_timeout: IDLE_TIMEOUT_DEFAULT,
            request_read_timeout: REQUEST_READ_TIMEOUT,
        };
        tokio::spawn(close_deleted(broker.clone()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = serve(listener, broker.clone(), limits) => r?,
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        broker.stores.close_all().await;
        println!("memstreamer kafka: stopped");
        Ok(())
    })
}

/// Closes the partition logs of streams deleted behind the listener's back, every
/// [`RECONCILE_INTERVAL`].
async fn close_deleted(broker: Arc<Broker>) {
    loop {
        tokio::time::sleep(RECONCILE_INTERVAL).await;
        if let Ok(view) = broker.metadata.view().await {
            let ids: std::collections::HashSet<u32> =
                view.topics.values().map(|t| t.stream_id).collect();
            let closed = broker.stores.close_absent(|id| ids.contains(&id)).await;
            if closed > 0 {
                println!("memstreamer kafka: closed {closed} partition logs of deleted streams");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(listen: &str, insecure: bool) -> KafkaArgs {
        KafkaArgs {
            listen: listen.parse().unwrap(),
            advertise: None,
            insecure_plaintext: insecure,
            data_dir: "/tmp/x".into(),
            control_endpoint: "127.0.0.1:7450".into(),
            cert_dir: "/tmp/c".into(),
            node_id: 1,
            request_bytes_max: REQUEST_BYTES_MAX_DEFAULT,
        }
    }

    #[test]
    fn plaintext_beyond_loopback_needs_the_explicit_flag() {
        assert!(KafkaConfig::new(args("127.0.0.1:9092", false)).is_ok());
        assert!(KafkaConfig::new(args("[::1]:9092", false)).is_ok());
        assert!(matches!(
            KafkaConfig::new(args("0.0.0.0:9092", false)),
            Err(KafkaConfigError::Insecure(_))
        ));
        assert!(KafkaConfig::new(args("0.0.0.0:9092", true)).is_ok());
        assert_eq!(
            advertised(None, "127.0.0.1:5".parse().unwrap()),
            ("127.0.0.1".into(), 5)
        );
        assert_eq!(
            advertised(Some("h:7"), "127.0.0.1:5".parse().unwrap()),
            ("h".into(), 7)
        );
    }
}
