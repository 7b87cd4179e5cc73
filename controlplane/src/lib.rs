//! MemoryStreamer's control plane: cluster metadata replicated with Raft
//! (openraft over a tonic/mTLS transport) and turned into data-plane policy.
//! It is never on the packet path.
//!
//! Layout follows openraft's `raft-kv-memstore-grpc` example: [`types`] (the
//! data model and Raft type config), [`store`] (durable log + state machine),
//! [`network`] (Raft RPC over tonic), [`cluster`] (membership, partition
//! leader election from the ISR), [`replicas`] (replica status from the data
//! plane), [`node`] (a running node).
#![forbid(unsafe_code)]

pub mod cluster;
pub mod network;
pub mod node;
pub mod store;
pub mod types;

// Admin surface.
pub mod audit;
pub mod auth;
pub mod certs;
pub mod dataplane_link;
pub mod grpc;
pub mod http;
pub mod policy;
pub mod replicas;

/// Generated protobuf/tonic code.
pub mod pb {
    /// Raft transport between control-plane nodes.
    pub mod raft {
        tonic::include_proto!("msraft");
    }
    /// Admin API (streams, ACLs, principals, membership, status).
    pub mod admin {
        tonic::include_proto!("msadmin");
    }
}
