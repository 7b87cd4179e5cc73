//! The data plane of a MemoryStreamer node, in the shape of Aeron's media driver.
//!
//! Agents with a duty cycle ([`agent`]) move records between the network ([`net`]: kernel UDP or
//! AF_XDP), the streams' shared-memory rings (read by local SDK subscribers) and storage-nvme.
//! `unsafe` is confined to [`net`] (socket syscalls, AF_XDP rings); every other module denies it.
//!
//! Code map:
//! * [`node`]: builds a node from its [`config`] (rings, storage replay, ports, agents, threads).
//! * [`receiver`] (agent) over [`session`] (sans-IO: sessions, DATA decode, gap -> NAK, epochs,
//!   STATUS with durable offset and a window that shrinks while the ring is full).
//! * [`sender`] (agent): rings -> remote subscribers (SUBSCRIBE convention of docs/protocol.md,
//!   start positions), retransmits from a bounded window; AF_XDP TX with `--backend afxdp`.
//! * [`catchup`]: a subscriber's storage -> ring -> live catch-up as a sans-IO state machine.
//! * [`archiver`] (agent) over [`archive`] (one partition: ring -> storage-nvme, group commit,
//!   durable ring marks; replay at start); [`replay`]: the sender's log reads, run by the archiver.
//! * [`conductor`] (agent, one file per concern): the control plane's stream commands, partitions
//!   made live or removed at run time, subscribe requests, agent liveness, the counters file.
//! * [`proxy`]: the commands the agents exchange (no agent module imports another).
//! * [`agent`]: the Agent trait, threading modes (dedicated / shared / invoker), command queues
//!   (bounded MPMC, and SPSC with a bounded conductor-side outbox).
//! * [`replication`]: the replica-set core of replicated partitions (sans-IO: ISR by lag time,
//!   high watermarks, strict min ISR, acks, epoch fencing, divergence). Exists as a library;
//!   wired into the data path: planned (#11).
//! * [`retire`]: what agents give up goes to the conductor to be freed off their cores.
//! * [`counters`]: closed counter enum, shared-memory counters file read by `memstreamer stat`.
//! * [`net`]: the [`NetPort`] enum over the kernel UDP backend and the AF_XDP backend; the
//!   sender's [`net::SenderPort`].
//! * [`testnet`]: network namespaces + veth for tests, the demo and the net bench.
//!
//! Architecture invariants: no allocation, lock or syscall other than the port's batched I/O on
//! the receiver's duty cycle after start-up; every byte from the network is validated and a bad
//! frame is a counted drop, never a panic; the backend is chosen explicitly, never by fallback;
//! every queue is bounded; no agent module imports another (tests/agent_imports.rs).

#![deny(unsafe_code)]

pub mod agent;
pub mod archive;
pub mod archiver;
pub mod catchup;
pub mod conductor;
pub mod config;
pub mod counters;
#[allow(unsafe_code)]
pub mod net;
pub mod node;
pub mod proxy;
pub mod receiver;
pub mod replay;
pub mod replication;
pub mod retire;
pub mod sender;
pub mod session;
pub mod testnet;

pub use agent::{Agent, AgentInvoker, AgentRunner, AgentSlot, Clock, CommandQueue, ThreadingMode};
pub use config::{Config, ConfigLoadError};
pub use net::{Backend, NetPort, NetPortOpenError};
pub use node::{NodeHandle, NodeParts, NodeStartError};
