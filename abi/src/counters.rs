//! The data plane's counters file: the closed set of counters (stable numeric ids, labels and
//! kinds), the file layout, and the seqlocked reader that `memstreamer stat` and the control
//! plane's `/metrics` use without touching the node process. The writer (the node's conductor,
//! `dataplane::counters::CountersFile`) fills the file with the encoders here.
//!
//! Seqlock: the writer writes `seq` odd, the snapshot, then `seq` even; a reader retries until it
//! reads the same even `seq` before and after the snapshot. The file is written with `pwrite`
//! only; readers never block the writer.
//!
//! ```text
//!  counters file, version 1 (all little-endian)
//!  +------------------------------------------------------------------+
//!  |  0 magic u32 "MCNT" | 4 version u32                               |
//!  |  8 seq u64 (odd while the conductor writes)                      |
//!  | 16 pid u32          | 20 counters_count u32                      |
//!  | 24 partitions_count u32 | 28 reserved u32 (0)                    |
//!  | 32 updated_unix_ns u64                                           |
//!  | 40 started_unix_ns u64                                           |
//!  | 48 reserved (16 bytes, 0), pads the header to one cache line     |
//!  +------------------------------------------------------------------+
//!  | 64 value u64 x counters_count, indexed by Counter id             |
//!  +------------------------------------------------------------------+
//!  | partitions_offset = 64 + align64(8 * counters_count)              |
//!  |   per partition (32 bytes): +0 stream u32 | +4 partition u16 |    |
//!  |   +6 reserved u16 | +8 archived_records u64 |                     |
//!  |   +16 durable_records u64 | +24 durable_ring_mark u64             |
//!  +------------------------------------------------------------------+
//! ```
//!
//! The per-partition table lists the node's configured partitions, then the partitions the control
//! plane made live at run time, by (stream, partition); at most [`PARTITIONS_MAX`] rows (a
//! partition beyond that counts only in the node-wide counters). `partitions_count` is rewritten
//! with every snapshot: rows come and go with run-time partitions.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::le::{u16_at, u32_at, u64_at};

pub const COUNTERS_MAGIC: u32 = u32::from_le_bytes(*b"MCNT");
pub const COUNTERS_VERSION: u32 = 1;
pub const MAGIC_OFFSET: usize = 0;
pub const VERSION_OFFSET: usize = 4;
pub const SEQ_OFFSET: usize = 8;
pub const PID_OFFSET: usize = 16;
pub const COUNTERS_COUNT_OFFSET: usize = 20;
pub const PARTITIONS_COUNT_OFFSET: usize = 24;
pub const RESERVED_OFFSET: usize = 28;
pub const UPDATED_UNIX_NS_OFFSET: usize = 32;
pub const STARTED_UNIX_NS_OFFSET: usize = 40;
pub const HEADER_BYTES: usize = 64;
pub const PARTITION_ENTRY_BYTES: usize = 32;
pub const PARTITION_STREAM_OFFSET: usize = 0;
pub const PARTITION_PARTITION_OFFSET: usize = 4;
pub const PARTITION_RESERVED_OFFSET: usize = 6;
pub const PARTITION_ARCHIVED_OFFSET: usize = 8;
pub const PARTITION_DURABLE_OFFSET: usize = 16;
pub const PARTITION_RING_MARK_OFFSET: usize = 24;
/// Most partitions recorded in the file (configured ones first, then run-time ones).
pub const PARTITIONS_MAX: usize = 4096;
/// Most counter slots a file may declare (a newer writer may know more ids than this build).
pub const COUNTERS_COUNT_MAX: usize = 65536;
/// Read attempts before a reader reports a writer that never finishes.
pub const READ_ATTEMPTS_MAX: u32 = 1000;

const _: () = assert!(STARTED_UNIX_NS_OFFSET + 8 <= HEADER_BYTES);
const _: () = assert!(PARTITION_RING_MARK_OFFSET + 8 == PARTITION_ENTRY_BYTES);
const _: () = assert!(Counter::ALL.len() <= COUNTERS_COUNT_MAX);

/// How a counter's value reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    /// Monotonic count.
    Total,
    /// Current value.
    Gauge,
    /// Largest value seen.
    Max,
}

macro_rules! counters {
    ($($name:ident = $id:literal, $kind:ident, $label:literal;)*) => {
        /// Every counter of the node. Ids are stable: only append, never renumber.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum Counter { $($name = $id,)* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];

            pub const fn id(self) -> u32 {
                self as u32
            }

            pub const fn label(self) -> &'static str {
                match self { $(Counter::$name => $label,)* }
            }

            pub const fn kind(self) -> CounterKind {
                match self { $(Counter::$name => CounterKind::$kind,)* }
            }

            pub fn from_id(id: u32) -> Option<Counter> {
                match id { $($id => Some(Counter::$name),)* _ => None }
            }
        }
    };
}

counters! {
    RxFramesAccepted = 0, Total, "receiver: frames accepted";
    RxRecordsAppended = 1, Total, "receiver: records appended to rings";
    RxBytesAppended = 2, Total, "receiver: payload bytes appended";
    RxDropMalformed = 3, Total, "receiver drop: malformed header/CRC";
    RxDropBadBody = 4, Total, "receiver drop: bad body/flags/records";
    RxDropUnknownStream = 5, Total, "receiver drop: unknown stream";
    RxDropUnknownSession = 6, Total, "receiver drop: unknown session";
    RxDropStaleEpoch = 7, Total, "receiver drop: stale epoch";
    RxDropSessionConflict = 8, Total, "receiver drop: session id from another source";
    RxDropDuplicate = 9, Total, "receiver drop: duplicate";
    RxDropOutOfOrder = 10, Total, "receiver drop: after a gap (NAKed)";
    RxDropOutOfWindow = 11, Total, "receiver drop: beyond the window";
    RxDropSessionsFull = 12, Total, "receiver drop: session table full";
    RxDropUnexpectedType = 13, Total, "receiver drop: STATUS/NAK on the data port";
    RxDropSubscribeQueueFull = 14, Total, "receiver drop: subscribe queue full";
    RxRingBackPressured = 15, Total, "receiver: ring back-pressure events";
    RxNaksSent = 16, Total, "receiver: NAKs sent";
    RxStatusSent = 17, Total, "receiver: STATUS sent";
    RxSessionsActive = 18, Gauge, "receiver: sessions active";
    RxSessionsOpened = 19, Total, "receiver: sessions opened";
    RxSessionsClosed = 20, Total, "receiver: sessions closed";
    RxSessionsTimedOut = 21, Total, "receiver: sessions timed out";
    RxSubscribeRequests = 22, Total, "receiver: subscribe requests";
    PortRxDatagrams = 23, Total, "data port: datagrams received";
    PortRxTruncated = 24, Total, "data port drop: truncated datagrams";
    PortRxErrors = 25, Total, "data port: receive errors";
    PortTxDatagrams = 26, Total, "data port: datagrams sent";
    PortTxErrors = 27, Total, "data port: send errors";
    PortTxQueueFull = 28, Total, "data port drop: TX queue full";
    TxRecords = 29, Total, "sender: records read from rings";
    TxDataFrames = 30, Total, "sender: DATA frames sent";
    TxRetransmitFrames = 31, Total, "sender: DATA frames retransmitted";
    TxNaksReceived = 32, Total, "sender: NAKs received";
    TxStatusReceived = 33, Total, "sender: STATUS received";
    TxSubscribersActive = 34, Gauge, "sender: remote subscribers";
    TxSubscriberBackPressured = 35, Total, "sender: ring reads paused by a full subscriber buffer";
    TxSubscribersEvicted = 36, Total, "sender: subscribers evicted (silent)";
    TxDropMalformed = 37, Total, "sender drop: malformed or unknown frames";
    TxPortDatagrams = 38, Total, "sender port: datagrams sent";
    TxPortErrors = 39, Total, "sender port: send errors and full TX queue";
    ArchivedRecords = 40, Total, "archiver: records appended to storage";
    ArchivedDurableRecords = 41, Gauge, "archiver: durable records (all partitions)";
    ArchiverBackPressured = 42, Total, "archiver: storage back-pressure events";
    ArchiverErrors = 43, Total, "archiver: storage errors (partition stopped)";
    ArchiverReplayedRecords = 44, Total, "archiver: records replayed from storage at start";
    RingRecordsLost = 45, Total, "ring: records lost to node subscribers";
    DutyCycleMaxReceiverNs = 46, Max, "max duty cycle ns: receiver";
    DutyCycleMaxSenderNs = 47, Max, "max duty cycle ns: sender";
    DutyCycleMaxArchiverNs = 48, Max, "max duty cycle ns: archiver";
    DutyCycleMaxConductorNs = 49, Max, "max duty cycle ns: conductor";
    ConductorCommands = 50, Total, "conductor: commands processed";
    ConductorCommandsDropped = 51, Total, "conductor: commands dropped (queue full)";
    TxDropOversizeRecords = 52, Total, "sender drop: record larger than a subscriber's frame";
    ConductorSubscribeRefused = 53, Total, "conductor: subscribe requests refused (bad frame size)";
    AgentCyclesReceiver = 54, Total, "duty cycles: receiver";
    AgentCyclesSender = 55, Total, "duty cycles: sender";
    AgentCyclesArchiver = 56, Total, "duty cycles: archiver";
    AgentCyclesConductor = 57, Total, "duty cycles: conductor";
    AgentStalls = 58, Total, "conductor: agents seen without a duty cycle for 1 s";
    ConductorPartitionsAdded = 59, Total, "conductor: partitions made live at run time";
    ConductorPartitionsRemoved = 60, Total, "conductor: run-time partitions removed";
    ConductorPartitionErrors = 61, Total, "conductor: run-time partitions not served (storage/ring/slots)";
    TxReplayRecords = 62, Total, "sender: records served to remote subscribers from storage";
    TxNoNeighbour = 63, Total, "conductor: subscribers refused, no neighbour entry (AF_XDP sender)";
    TxFreedOnAgent = 64, Total, "sender: retired resources freed on its own thread (conductor queue full)";
    ConductorFreed = 65, Total, "conductor: resources freed for the receiver and sender";
    RxFreedOnAgent = 66, Total, "receiver: retired resources freed on its own thread (conductor queue full)";
    ArchiverReplayReads = 67, Total, "archiver: log reads for catching-up remote subscribers";
    RxDropRecordTooLarge = 68, Total, "receiver drop: record larger than the partition's ring (session refused)";
    ConductorOutboxFull = 69, Total, "conductor: commands refused, an agent's queue and outbox full";
    ReplAssignmentsApplied = 70, Total, "replication: partition assignments applied";
    ReplAssignmentsRefused = 71, Total, "replication: assignments refused (another node's, older epoch, bad record)";
    ReplPartitionsNotServed = 72, Total, "replication: assigned partitions not served (no ring / no storage)";
    ReplStreamCreatesIgnored = 73, Total, "replication: stream creates ignored (partitions are placed by assignment)";
    ReplStatusWritten = 74, Total, "replication: replica status records written";
    ReplStatusDropped = 75, Total, "replication: replica status records dropped (status ring full)";
    ReplFetchesServed = 76, Total, "replication: follower fetches served";
    ReplFetchRefusedEpoch = 77, Total, "replication: fetches refused, stale or forged leader epoch";
    ReplFetchRefusedNotMember = 78, Total, "replication: fetches refused, not a replica of the partition";
    ReplFetchRefusedNotLeader = 79, Total, "replication: fetches refused, this node does not lead the partition";
    ReplFetchRefusedLog = 80, Total, "replication: fetches refused, the follower's log does not continue ours";
    ReplReportsAccepted = 81, Total, "replication: follower reports accepted";
    ReplReportsRefused = 82, Total, "replication: follower reports refused (epoch, membership, offsets)";
    ReplHwReplicated = 83, Gauge, "replication: replicated high watermark (sum over led partitions)";
    ReplHwPersisted = 84, Gauge, "replication: persisted high watermark (sum over led partitions)";
    ReplFollowerLagMax = 85, Gauge, "replication: largest follower lag behind the leader's log end (records)";
    ReplIsrProposals = 86, Total, "replication: ISR changes proposed to the control plane";
    ReplFetchesSent = 87, Total, "replication: fetches sent to leaders (as a follower)";
    ReplReportsSent = 88, Total, "replication: reports sent to leaders (as a follower)";
    ReplFramesDropped = 89, Total, "replication: FETCH/REPORT frames dropped (bad body, queue full)";
    NicRxPackets = 90, Total, "DPDK port: packets received (rte_eth_stats ipackets)";
    NicTxPackets = 91, Total, "DPDK port: packets sent (opackets)";
    NicRxMissed = 92, Total, "DPDK port drop: RX queue full in the NIC (imissed)";
    NicRxErrors = 93, Total, "DPDK port: erroneous packets received (ierrors)";
    NicRxNoMbuf = 94, Total, "DPDK port drop: no mbuf for a received packet (rx_nombuf)";
    NicTxErrors = 95, Total, "DPDK port: failed transmissions (oerrors)";
    MbufPoolInUse = 96, Gauge, "DPDK port: mbufs in use (pool use)";
    MbufPoolSize = 97, Gauge, "DPDK port: mbufs in the pool";
    NicRxFeedbackDropped = 98, Total, "DPDK port drop: STATUS/NAK for the sender, its queue full";
    NicTxNoMbuf = 99, Total, "DPDK port drop: no mbuf to send a frame (pool empty)";
}

/// The duty-cycle count counter of an agent role.
pub fn cycles_counter(role: &str) -> Option<Counter> {
    match role {
        "receiver" => Some(Counter::AgentCyclesReceiver),
        "sender" => Some(Counter::AgentCyclesSender),
        "archiver" => Some(Counter::AgentCyclesArchiver),
        "conductor" => Some(Counter::AgentCyclesConductor),
        _ => None,
    }
}

/// The duty-cycle counter of an agent role.
pub fn duty_cycle_counter(role: &str) -> Option<Counter> {
    match role {
        "receiver" => Some(Counter::DutyCycleMaxReceiverNs),
        "sender" => Some(Counter::DutyCycleMaxSenderNs),
        "archiver" => Some(Counter::DutyCycleMaxArchiverNs),
        "conductor" => Some(Counter::DutyCycleMaxConductorNs),
        _ => None,
    }
}

/// Where partition rows start in a file with `counters_count` counter slots.
pub const fn partitions_offset(counters_count: usize) -> usize {
    HEADER_BYTES + (8 * counters_count).div_ceil(64) * 64
}

/// Where counter `id`'s value sits.
pub const fn value_offset(id: u32) -> usize {
    HEADER_BYTES + 8 * id as usize
}

/// Bytes of a file of this build with `partitions` rows.
pub const fn file_bytes(partitions: usize) -> usize {
    partitions_offset(Counter::ALL.len()) + partitions * PARTITION_ENTRY_BYTES
}

/// Writes the fixed header fields of a new file (magic, version, pid, this build's counter count,
/// start time) into `buf`, at least [`HEADER_BYTES`] long; `seq` and the rest are the writer's.
pub fn encode_header(buf: &mut [u8], pid: u32, started_unix_ns: u64) {
    let n = Counter::ALL.len() as u32;
    buf[MAGIC_OFFSET..][..4].copy_from_slice(&COUNTERS_MAGIC.to_le_bytes());
    buf[VERSION_OFFSET..][..4].copy_from_slice(&COUNTERS_VERSION.to_le_bytes());
    buf[PID_OFFSET..][..4].copy_from_slice(&pid.to_le_bytes());
    buf[COUNTERS_COUNT_OFFSET..][..4].copy_from_slice(&n.to_le_bytes());
    buf[STARTED_UNIX_NS_OFFSET..][..8].copy_from_slice(&started_unix_ns.to_le_bytes());
}

/// Errors creating or reading the counters file.
#[derive(Debug, thiserror::Error)]
pub enum CountersFileError {
    #[error("cannot create counters file {path}: {source} (set `counters_file` to a writable tmpfs path)")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write counters file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot read counters file {path}: {source} (is a node running with this counters_file?)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a version-{COUNTERS_VERSION} counters file: {reason}")]
    Format {
        path: PathBuf,
        reason: CountersDecodeError,
    },
    #[error(
        "counters file {path} stayed mid-update for {READ_ATTEMPTS_MAX} reads: is the node wedged?"
    )]
    Busy { path: PathBuf },
    #[error("counters file {path} belongs to a running node (pid {pid}): stop it, or give this node another `counters_file`")]
    InUse { path: PathBuf, pid: u32 },
    #[error("too many partitions for the counters file: {count} > {PARTITIONS_MAX}")]
    TooManyPartitions { count: usize },
}

/// Why the bytes of a counters file do not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CountersDecodeError {
    #[error("{len} bytes, shorter than the {HEADER_BYTES}-byte header")]
    Short { len: usize },
    #[error("bad magic {found:#010x}")]
    Magic { found: u32 },
    #[error("version {found}")]
    Version { found: u32 },
    #[error("{len} bytes for {counters} counters and {partitions} partitions")]
    Size {
        len: usize,
        counters: u32,
        partitions: u32,
    },
}

/// The header's `seq` after checking length, magic and version (fields a writer never changes).
pub fn decode_seq(buf: &[u8]) -> Result<u64, CountersDecodeError> {
    if buf.len() < HEADER_BYTES {
        return Err(CountersDecodeError::Short { len: buf.len() });
    }
    let magic = u32_at(buf, MAGIC_OFFSET);
    if magic != COUNTERS_MAGIC {
        return Err(CountersDecodeError::Magic { found: magic });
    }
    let version = u32_at(buf, VERSION_OFFSET);
    if version != COUNTERS_VERSION {
        return Err(CountersDecodeError::Version { found: version });
    }
    Ok(u64_at(buf, SEQ_OFFSET))
}

/// One partition's row of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionSnapshot {
    pub stream: u32,
    pub partition: u16,
    pub archived_records: u64,
    pub durable_records: u64,
    pub durable_ring_mark: u64,
}

impl PartitionSnapshot {
    /// Writes the row into `row` ([`PARTITION_ENTRY_BYTES`] long; reserved bytes zeroed).
    pub fn encode(&self, row: &mut [u8]) {
        row[PARTITION_STREAM_OFFSET..][..4].copy_from_slice(&self.stream.to_le_bytes());
        row[PARTITION_PARTITION_OFFSET..][..2].copy_from_slice(&self.partition.to_le_bytes());
        row[PARTITION_RESERVED_OFFSET..][..2].fill(0);
        for (at, v) in [
            (PARTITION_ARCHIVED_OFFSET, self.archived_records),
            (PARTITION_DURABLE_OFFSET, self.durable_records),
            (PARTITION_RING_MARK_OFFSET, self.durable_ring_mark),
        ] {
            row[at..][..8].copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Reads a row ([`PARTITION_ENTRY_BYTES`] long).
    pub fn decode(row: &[u8]) -> PartitionSnapshot {
        PartitionSnapshot {
            stream: u32_at(row, PARTITION_STREAM_OFFSET),
            partition: u16_at(row, PARTITION_PARTITION_OFFSET),
            archived_records: u64_at(row, PARTITION_ARCHIVED_OFFSET),
            durable_records: u64_at(row, PARTITION_DURABLE_OFFSET),
            durable_ring_mark: u64_at(row, PARTITION_RING_MARK_OFFSET),
        }
    }
}

/// A consistent copy of the counters file.
#[derive(Clone, Debug)]
pub struct CountersSnapshot {
    pub pid: u32,
    pub updated_unix_ns: u64,
    pub started_unix_ns: u64,
    /// (counter, value) for every id this build knows; unknown ids of a newer writer are skipped.
    pub values: Vec<(Counter, u64)>,
    pub partitions: Vec<PartitionSnapshot>,
}

impl CountersSnapshot {
    pub fn get(&self, c: Counter) -> Option<u64> {
        self.values.iter().find(|(k, _)| *k == c).map(|(_, v)| *v)
    }

    /// Whether the writing process still exists.
    pub fn writer_alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
    }

    /// Decodes the bytes of a counters file (whatever its `seq`: [`CountersSnapshot::read`] makes
    /// sure they are one consistent snapshot). Every count and size is checked against the bytes.
    pub fn decode(buf: &[u8]) -> Result<CountersSnapshot, CountersDecodeError> {
        decode_seq(buf)?;
        let counters = u32_at(buf, COUNTERS_COUNT_OFFSET);
        let partitions = u32_at(buf, PARTITIONS_COUNT_OFFSET);
        let (n, parts) = (counters as usize, partitions as usize);
        if n > COUNTERS_COUNT_MAX
            || parts > PARTITIONS_MAX
            || buf.len() < partitions_offset(n) + parts * PARTITION_ENTRY_BYTES
        {
            return Err(CountersDecodeError::Size {
                len: buf.len(),
                counters,
                partitions,
            });
        }
        let values = (0..counters)
            .filter_map(|id| Counter::from_id(id).map(|c| (c, u64_at(buf, value_offset(id)))))
            .collect();
        let base = partitions_offset(n);
        let partitions = buf[base..base + parts * PARTITION_ENTRY_BYTES]
            .chunks_exact(PARTITION_ENTRY_BYTES)
            .map(PartitionSnapshot::decode)
            .collect();
        Ok(CountersSnapshot {
            pid: u32_at(buf, PID_OFFSET),
            updated_unix_ns: u64_at(buf, UPDATED_UNIX_NS_OFFSET),
            started_unix_ns: u64_at(buf, STARTED_UNIX_NS_OFFSET),
            values,
            partitions,
        })
    }

    /// Reads a consistent snapshot, retrying while the writer is mid-update.
    pub fn read(path: &Path) -> Result<CountersSnapshot, CountersFileError> {
        let read = |source| CountersFileError::Read {
            path: path.into(),
            source,
        };
        let format = |reason| CountersFileError::Format {
            path: path.into(),
            reason,
        };
        let file = File::open(path).map_err(read)?;
        for _ in 0..READ_ATTEMPTS_MAX {
            let buf = std::fs::read(path).map_err(read)?;
            let seq = decode_seq(&buf).map_err(format)?;
            if seq % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let mut seq_after = [0u8; 8];
            file.read_exact_at(&mut seq_after, SEQ_OFFSET as u64)
                .map_err(read)?;
            if u64::from_le_bytes(seq_after) != seq {
                continue;
            }
            return CountersSnapshot::decode(&buf).map_err(format);
        }
        Err(CountersFileError::Busy { path: path.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_stable_and_labelled() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.id() as usize, i);
            assert_eq!(Counter::from_id(c.id()), Some(*c));
            assert!(!c.label().is_empty());
        }
        // Stable ids: a rename or renumbering of these breaks readers of older files.
        assert_eq!(Counter::RxDropMalformed.id(), 3);
        assert_eq!(Counter::DutyCycleMaxReceiverNs.id(), 46);
        assert_eq!(
            duty_cycle_counter("archiver"),
            Some(Counter::DutyCycleMaxArchiverNs)
        );
        assert_eq!(cycles_counter("sender"), Some(Counter::AgentCyclesSender));
        assert_eq!(cycles_counter("nobody"), None);
    }

    /// A file as a writer of this build lays it out: header, values = id * 10, `rows`.
    fn file(seq: u64, rows: &[PartitionSnapshot]) -> Vec<u8> {
        let mut buf = vec![0u8; file_bytes(rows.len())];
        encode_header(&mut buf, 4242, 77);
        buf[SEQ_OFFSET..][..8].copy_from_slice(&seq.to_le_bytes());
        buf[UPDATED_UNIX_NS_OFFSET..][..8].copy_from_slice(&88u64.to_le_bytes());
        buf[PARTITIONS_COUNT_OFFSET..][..4].copy_from_slice(&(rows.len() as u32).to_le_bytes());
        for c in Counter::ALL {
            buf[value_offset(c.id())..][..8]
                .copy_from_slice(&(u64::from(c.id()) * 10).to_le_bytes());
        }
        let base = partitions_offset(Counter::ALL.len());
        for (i, row) in rows.iter().enumerate() {
            row.encode(&mut buf[base + i * PARTITION_ENTRY_BYTES..][..PARTITION_ENTRY_BYTES]);
        }
        buf
    }

    #[test]
    fn layout_has_the_documented_sizes_and_offsets() {
        let row = PartitionSnapshot {
            stream: 0x0102_0304,
            partition: 0x0506,
            archived_records: 0x1111,
            durable_records: 0x2222,
            durable_ring_mark: 0x3333,
        };
        let buf = file(6, &[row]);
        assert_eq!(&buf[MAGIC_OFFSET..][..4], b"MCNT");
        assert_eq!(&buf[VERSION_OFFSET..][..4], &1u32.to_le_bytes());
        assert_eq!(&buf[PID_OFFSET..][..4], &4242u32.to_le_bytes());
        assert_eq!(
            &buf[COUNTERS_COUNT_OFFSET..][..4],
            &(Counter::ALL.len() as u32).to_le_bytes()
        );
        assert_eq!(&buf[RESERVED_OFFSET..][..4], &[0; 4]);
        assert_eq!(&buf[STARTED_UNIX_NS_OFFSET..][..8], &77u64.to_le_bytes());
        assert_eq!(
            (MAGIC_OFFSET, VERSION_OFFSET, SEQ_OFFSET, PID_OFFSET),
            (0, 4, 8, 16)
        );
        assert_eq!(
            (
                COUNTERS_COUNT_OFFSET,
                PARTITIONS_COUNT_OFFSET,
                RESERVED_OFFSET
            ),
            (20, 24, 28)
        );
        assert_eq!(
            (UPDATED_UNIX_NS_OFFSET, STARTED_UNIX_NS_OFFSET, HEADER_BYTES),
            (32, 40, 64)
        );
        // Values start after the header; rows at the next cache line after the values.
        assert_eq!(value_offset(3), 64 + 24);
        assert_eq!(partitions_offset(1), 128);
        assert_eq!(partitions_offset(8), 128);
        assert_eq!(partitions_offset(9), 192);
        let base = partitions_offset(Counter::ALL.len());
        assert_eq!(base % 64, 0);
        let r = &buf[base..base + PARTITION_ENTRY_BYTES];
        assert_eq!(&r[..8], &[4, 3, 2, 1, 6, 5, 0, 0]);
        assert_eq!(
            &r[PARTITION_ARCHIVED_OFFSET..][..8],
            &0x1111u64.to_le_bytes()
        );
        assert_eq!(
            &r[PARTITION_DURABLE_OFFSET..][..8],
            &0x2222u64.to_le_bytes()
        );
        assert_eq!(
            &r[PARTITION_RING_MARK_OFFSET..][..8],
            &0x3333u64.to_le_bytes()
        );
        let snap = CountersSnapshot::decode(&buf).unwrap();
        assert_eq!(
            (snap.pid, snap.started_unix_ns, snap.updated_unix_ns),
            (4242, 77, 88)
        );
        assert_eq!(snap.get(Counter::RxDropMalformed), Some(30));
        assert_eq!(snap.values.len(), Counter::ALL.len());
        assert_eq!(snap.partitions, [row]);
    }

    #[test]
    fn a_newer_writers_unknown_counters_are_skipped() {
        let mut buf = file(2, &[]);
        // Declare 8 more slots than this build knows (room for them: rows start later).
        let n = Counter::ALL.len() + 8;
        buf[COUNTERS_COUNT_OFFSET..][..4].copy_from_slice(&(n as u32).to_le_bytes());
        buf.resize(partitions_offset(n), 0);
        let snap = CountersSnapshot::decode(&buf).unwrap();
        assert_eq!(snap.values.len(), Counter::ALL.len());
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        assert!(matches!(
            CountersSnapshot::read(&path),
            Err(CountersFileError::Read { .. })
        ));
        std::fs::write(&path, [0u8; 10]).unwrap();
        assert!(matches!(
            CountersSnapshot::read(&path),
            Err(CountersFileError::Format {
                reason: CountersDecodeError::Short { len: 10 },
                ..
            })
        ));
        std::fs::write(&path, [0u8; 128]).unwrap();
        assert!(matches!(
            CountersSnapshot::read(&path),
            Err(CountersFileError::Format {
                reason: CountersDecodeError::Magic { .. },
                ..
            })
        ));
        // More rows declared than the file holds.
        let mut buf = file(2, &[]);
        buf[PARTITIONS_COUNT_OFFSET] = 3;
        std::fs::write(&path, &buf).unwrap();
        assert!(matches!(
            CountersSnapshot::read(&path),
            Err(CountersFileError::Format {
                reason: CountersDecodeError::Size { partitions: 3, .. },
                ..
            })
        ));
        // A writer that never finishes its update.
        std::fs::write(&path, file(3, &[])).unwrap();
        assert!(matches!(
            CountersSnapshot::read(&path),
            Err(CountersFileError::Busy { .. })
        ));
        std::fs::write(&path, file(4, &[])).unwrap();
        assert!(CountersSnapshot::read(&path).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024),
            counters in 0u32..200,
            partitions in 0u32..40,
        ) {
            let _ = CountersSnapshot::decode(&bytes);
            // The same bytes behind a valid header with arbitrary counts.
            let mut buf = file(0, &[]);
            buf.truncate(HEADER_BYTES);
            buf[COUNTERS_COUNT_OFFSET..][..4].copy_from_slice(&counters.to_le_bytes());
            buf[PARTITIONS_COUNT_OFFSET..][..4].copy_from_slice(&partitions.to_le_bytes());
            buf.extend_from_slice(&bytes);
            if let Ok(snap) = CountersSnapshot::decode(&buf) {
                proptest::prop_assert_eq!(snap.partitions.len(), partitions as usize);
            }
        }
    }
}
