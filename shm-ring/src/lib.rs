//! shm-ring (being written).
