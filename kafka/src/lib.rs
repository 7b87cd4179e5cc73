//! # kafka: the Kafka API listener of a node
//!
//! `memstreamer kafka` (started by `memstreamer node` as a third supervised child) serves
//! unmodified Kafka clients over TCP with tokio, in a process of its own: neither the control
//! plane nor the data plane's busy-poll agents carry Kafka traffic.
//!
//! - [`codec`] frames requests, checks API and version, walks the body ([`guard`]) and decodes
//!   it with `kafka-protocol`; it is the one parser of client bytes (fuzzed in `kafka/fuzz`).
//! - [`batch`] validates produced record batches v2 (CRC32C, format, codec, counts).
//! - [`store`] keeps each topic partition in a storage-nvme log of its own, Kafka batches stored
//!   as produced (every codec stored and served unchanged).
//! - [`cluster`] reads topics (streams), brokers (nodes), assignments and ACLs from the control
//!   plane's admin API, and creates/deletes streams through it.
//! - [`api`] answers ApiVersions, Metadata, Produce, Fetch (long poll), ListOffsets,
//!   CreateTopics and DeleteTopics; [`server`] owns sockets and connection tasks.
//!
//! Without the `listener` feature only `batch`, `guard` and `codec` are built (what the fuzz
//! target links).

#![forbid(unsafe_code)]

pub mod batch;
pub mod codec;
pub mod guard;

#[cfg(feature = "listener")]
pub mod api;
#[cfg(feature = "listener")]
pub mod cluster;
#[cfg(feature = "listener")]
pub mod run;
#[cfg(feature = "listener")]
pub mod server;
#[cfg(feature = "listener")]
pub mod store;

#[cfg(feature = "listener")]
pub use run::{run, KafkaArgs, KafkaConfig, KafkaConfigError, LISTEN_DEFAULT};
