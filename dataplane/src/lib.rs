//! The data plane of a MemoryStreamer node, in the shape of Aeron's media driver.
//!
//! Agents with a duty cycle ([`agent`]) move records between the network ([`net`]: kernel UDP or
//! AF_XDP), the streams' shared-memory rings (read by local SDK subscribers) and storage-nvme.
//! `unsafe` is confined to [`net`] (socket syscalls, AF_XDP rings); every other module denies it.

#![deny(unsafe_code)]

pub mod agent;
pub mod archiver;
pub mod conductor;
pub mod config;
pub mod counters;
#[allow(unsafe_code)]
pub mod net;
pub mod node;
pub mod receiver;
pub mod sender;
pub mod session;
pub mod testnet;

pub use agent::{Agent, AgentInvoker, AgentRunner, AgentSlot, Clock, CommandQueue, ThreadingMode};
pub use config::{Config, ConfigLoadError};
pub use net::{Backend, NetPort, NetPortOpenError};
pub use node::{NodeHandle, NodeParts, NodeStartError};
