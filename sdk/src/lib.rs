//! sdk (being written).
