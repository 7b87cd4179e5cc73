//! The follower's side of replication, sans-IO: when to send FETCH and REPORT to the partition
//! leader (#11). The receiver agent drives it once per duty cycle per followed partition with
//! the clock, whether the leader's session towards this node is alive, and the replica's
//! received and durable log offsets; it writes the frame to send, if any.
//!
//! How records arrive: a FETCH names where the follower's log ends; the leader serves it as a
//! remote subscriber starting at that partition offset (storage, then ring, then live), so the
//! leader's sender opens a session towards the follower's data port and the follower's receiver
//! appends its DATA to the partition ring like any publisher's, in order, with NAK recovery and
//! STATUS flow control. The archiver appends the ring to the log, so every record lands at the
//! leader's offset.
//!
//! * FETCH goes out while no session from the leader is alive, at most every
//!   [`FETCH_RETRY_NS`]; each FETCH is a new incarnation (the header's epoch counts up), so the
//!   leader replaces a session it still holds and the follower's receiver drops frames of the
//!   old one.
//! * REPORT goes out when the received or durable offset moved (at most every
//!   [`REPORT_MIN_INTERVAL_NS`]) and at least every [`REPORT_INTERVAL_NS`] while idle (well
//!   under a quarter of the default lag time, as the leader's ISR rule asks).

use std::net::SocketAddr;

use abi::frame::{FrameHeader, FrameType};
use abi::replication::{FetchBody, ReplicaHeader, ReportBody, NO_EPOCH};

use super::NodeId;

/// Interval between FETCH retries while the leader's session is not alive (ns).
pub const FETCH_RETRY_NS: u64 = 20_000_000;
/// Interval between REPORTs while nothing moves (ns).
pub const REPORT_INTERVAL_NS: u64 = 10_000_000;
/// Smallest interval between REPORTs on progress (ns).
pub const REPORT_MIN_INTERVAL_NS: u64 = 50_000;

/// The follower's fetch state for one partition (one leader, one leader epoch).
#[derive(Clone, Debug)]
pub struct FollowerFetch {
    stream_id: u32,
    partition: u16,
    node: NodeId,
    leader_epoch: u64,
    leader: SocketAddr,
    /// Session id the leader's session towards this node uses (chosen here).
    session_id: u32,
    /// Incarnation of the session, bumped per FETCH.
    fetch_epoch: u32,
    window_bytes: u32,
    next_fetch_ns: u64,
    last_report_ns: Option<u64>,
    last_reported: (u64, u64),
    fetches: u64,
    reports: u64,
}

impl FollowerFetch {
    /// `node` follows `leader` (its data address) for (stream, partition) in `leader_epoch`;
    /// `window_bytes` is what its receiver's sessions advertise.
    pub fn new(
        (stream_id, partition): (u32, u16),
        node: NodeId,
        leader_epoch: u64,
        leader: SocketAddr,
        window_bytes: u32,
    ) -> FollowerFetch {
        FollowerFetch {
            stream_id,
            partition,
            node,
            leader_epoch,
            leader,
            session_id: replica_session_id(node, stream_id, partition),
            fetch_epoch: 0,
            window_bytes,
            next_fetch_ns: 0,
            last_report_ns: None,
            last_reported: (0, 0),
            fetches: 0,
            reports: 0,
        }
    }

    /// The session id of the leader's session towards this follower (its receiver's table
    /// knows it once the leader's SETUP arrived).
    pub fn session_id(&self) -> u32 {
        self.session_id
    }

    /// (stream, partition) it follows.
    pub fn partition_key(&self) -> (u32, u16) {
        (self.stream_id, self.partition)
    }

    pub fn leader(&self) -> SocketAddr {
        self.leader
    }

    pub fn leader_epoch(&self) -> u64 {
        self.leader_epoch
    }

    /// The incarnation of the latest FETCH (0 before the first): the leader's session towards
    /// this follower must carry it.
    pub fn fetch_epoch(&self) -> u32 {
        self.fetch_epoch
    }

    /// FETCHes and REPORTs written so far.
    pub fn sent(&self) -> (u64, u64) {
        (self.fetches, self.reports)
    }

    fn replica_header(&self) -> ReplicaHeader {
        ReplicaHeader {
            stream_id: self.stream_id,
            partition: self.partition,
            replica_id: self.node,
            leader_epoch: self.leader_epoch,
        }
    }

    fn header(&self, frame_type: FrameType, offset: u64) -> FrameHeader {
        FrameHeader {
            frame_type,
            flags: 0,
            stream_id: self.stream_id,
            partition: self.partition,
            session_id: self.session_id,
            offset,
            epoch: self.fetch_epoch,
        }
    }

    /// Writes the frame due at `now_ns` into `out` and returns where it goes (the leader), or
    /// None. `session_alive`: the leader's session towards this node exists in the receiver;
    /// `received` / `durable`: the replica's log end and durable offset (`durable <= received`).
    pub fn poll(
        &mut self,
        now_ns: u64,
        session_alive: bool,
        (received, durable): (u64, u64),
        out: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        let durable = durable.min(received);
        if !session_alive && now_ns >= self.next_fetch_ns {
            self.fetch_epoch = self.fetch_epoch.wrapping_add(1);
            self.next_fetch_ns = now_ns + FETCH_RETRY_NS;
            let body = FetchBody {
                replica: self.replica_header(),
                fetch_offset: received,
                // The epoch of the follower's last record. The follower keeps no epoch history
                // of its own yet (divergence resolution is planned), so it vouches only for
                // records of the epoch it follows.
                last_fetched_epoch: if received == 0 {
                    NO_EPOCH
                } else {
                    self.leader_epoch
                },
                window_bytes: self.window_bytes,
            };
            let h = self.header(FrameType::Fetch, received);
            h.encode(&body.encode(), out).ok()?;
            self.fetches += 1;
            return Some(self.leader);
        }
        let moved = (received, durable) != self.last_reported;
        let due = match self.last_report_ns {
            None => true,
            Some(t) if moved => now_ns >= t + REPORT_MIN_INTERVAL_NS,
            Some(t) => now_ns >= t + REPORT_INTERVAL_NS,
        };
        if !due {
            return None;
        }
        let body = ReportBody {
            replica: self.replica_header(),
            received_offset: received,
            durable_offset: durable,
        };
        self.header(FrameType::Report, received)
            .encode(&body.encode(), out)
            .ok()?;
        self.last_report_ns = Some(now_ns);
        self.last_reported = (received, durable);
        self.reports += 1;
        Some(self.leader)
    }
}

/// The session id of the leader's session towards replica `node` of (stream, partition): high
/// bit set, so it does not meet the ids remote subscribers usually pick (small counters).
pub fn replica_session_id(node: NodeId, stream_id: u32, partition: u16) -> u32 {
    let mix = (node as u32)
        .wrapping_mul(0x9E37_79B1)
        .wrapping_add(stream_id.wrapping_mul(0x85EB_CA77))
        .wrapping_add(u32::from(partition));
    mix | 0x8000_0000
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::frame::HEADER_BYTES;

    fn follower() -> FollowerFetch {
        FollowerFetch::new((7, 0), 2, 5, "198.18.0.1:9".parse().unwrap(), 1 << 20)
    }

    fn decode(out: &[u8]) -> FrameHeader {
        FrameHeader::decode(out).unwrap()
    }

    #[test]
    fn fetches_until_the_session_is_alive_with_a_new_incarnation_each_time() {
        let mut f = follower();
        let mut out = Vec::new();
        assert!(f.poll(0, false, (0, 0), &mut out).is_some());
        let h = decode(&out);
        assert_eq!((h.frame_type, h.epoch), (FrameType::Fetch, 1));
        let b = FetchBody::decode(&out[HEADER_BYTES..]).unwrap();
        assert_eq!(
            (b.fetch_offset, b.last_fetched_epoch, b.replica.replica_id),
            (0, NO_EPOCH, 2)
        );
        assert_eq!(b.replica.leader_epoch, 5);
        // Not again before the retry interval: a REPORT (the first one) goes instead.
        assert!(f.poll(1, false, (0, 0), &mut out).is_some());
        assert_eq!(decode(&out).frame_type, FrameType::Report);
        assert!(f.poll(2, false, (0, 0), &mut out).is_none());
        assert!(f.poll(FETCH_RETRY_NS, false, (10, 4), &mut out).is_some());
        let h = decode(&out);
        assert_eq!((h.frame_type, h.epoch, h.offset), (FrameType::Fetch, 2, 10));
        let b = FetchBody::decode(&out[HEADER_BYTES..]).unwrap();
        assert_eq!((b.fetch_offset, b.last_fetched_epoch), (10, 5));
        assert_eq!(f.sent(), (2, 1));
    }

    #[test]
    fn reports_on_progress_and_periodically_when_idle() {
        let mut f = follower();
        let mut out = Vec::new();
        let t0 = 1_000_000_000;
        assert!(f.poll(t0, true, (3, 1), &mut out).is_some());
        let r = ReportBody::decode(&out[HEADER_BYTES..]).unwrap();
        assert_eq!((r.received_offset, r.durable_offset), (3, 1));
        // Progress, but within the minimum interval: wait.
        assert!(f.poll(t0 + 1, true, (4, 1), &mut out).is_none());
        assert!(f
            .poll(t0 + REPORT_MIN_INTERVAL_NS, true, (4, 1), &mut out)
            .is_some());
        // Idle: nothing until the report interval.
        let t1 = t0 + REPORT_MIN_INTERVAL_NS;
        assert!(f.poll(t1 + 1_000_000, true, (4, 1), &mut out).is_none());
        assert!(f
            .poll(t1 + REPORT_INTERVAL_NS, true, (4, 9), &mut out)
            .is_some());
        // A durable offset above received is never reported.
        let r = ReportBody::decode(&out[HEADER_BYTES..]).unwrap();
        assert_eq!((r.received_offset, r.durable_offset), (4, 4));
        assert_eq!(f.sent(), (0, 3));
    }

    #[test]
    fn replica_session_ids_differ_per_node_and_set_the_high_bit() {
        let a = replica_session_id(1, 7, 0);
        let b = replica_session_id(2, 7, 0);
        assert_ne!(a, b);
        assert!(a & 0x8000_0000 != 0 && b & 0x8000_0000 != 0);
    }
}
