//! xdp-programs (being written).
