//! controlplane (being written).
