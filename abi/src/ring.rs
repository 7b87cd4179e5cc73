//! Ring names: the file names, in a node's ring directory (hugetlbfs or
//! /dev/shm), of the shm-rings that processes open by name. The SDK, the data
//! plane and the control plane all derive them here, so they meet at the same
//! file.
//!
//! - `stream-<id>-<partition>`: one ring per stream partition ([`ring_name`]).
//! - [`COMMAND_RING_NAME`]: the control plane -> data plane command ring
//!   (records of [`crate::command`]).

/// Longest ring name [`ring_name`] produces: `stream-4294967295-65535`.
pub const RING_NAME_BYTES_MAX: usize = "stream-4294967295-65535".len();
/// Prefix of every partition ring's name.
pub const PARTITION_RING_PREFIX: &str = "stream-";
/// Name of the control plane -> data plane command ring (in the node's ring directory).
pub const COMMAND_RING_NAME: &str = "memstreamer-commands";
/// Longest name shm-ring accepts (it takes names of 1..=64 bytes).
pub const SHM_RING_NAME_BYTES_MAX: usize = 64;

const _: () = assert!(RING_NAME_BYTES_MAX <= SHM_RING_NAME_BYTES_MAX);
const _: () = assert!(COMMAND_RING_NAME.len() <= SHM_RING_NAME_BYTES_MAX);

/// The ring file name of one stream partition: `stream-<id>-<partition>`.
pub fn ring_name(stream: u32, partition: u16) -> String {
    format!("{PARTITION_RING_PREFIX}{stream}-{partition}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_names_are_valid_and_bounded() {
        assert_eq!(ring_name(7, 0), "stream-7-0");
        let longest = ring_name(u32::MAX, u16::MAX);
        assert_eq!(longest.len(), RING_NAME_BYTES_MAX);
        assert!(longest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }

    #[test]
    fn the_command_ring_never_shares_a_name_with_a_partition_ring() {
        assert!(!COMMAND_RING_NAME.starts_with(PARTITION_RING_PREFIX));
    }

    proptest::proptest! {
        #[test]
        fn ring_names_are_distinct_per_partition(
            a in (proptest::prelude::any::<u32>(), proptest::prelude::any::<u16>()),
            b in (proptest::prelude::any::<u32>(), proptest::prelude::any::<u16>()),
        ) {
            proptest::prop_assert_eq!(ring_name(a.0, a.1) == ring_name(b.0, b.1), a == b);
            proptest::prop_assert!(ring_name(a.0, a.1).len() <= RING_NAME_BYTES_MAX);
        }
    }
}
