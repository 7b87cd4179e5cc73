//! Counters: a closed enum with stable numeric ids and labels, live in the node as atomics and
//! published to a shared-memory file (tmpfs, `/dev/shm/...`) that `memstreamer stat` reads without
//! touching the node process.
//!
//! Agents update their cells with relaxed atomics (one cache line per cell, so agents on different
//! cores never share a line). The conductor copies every cell into the file on a timer with a
//! sequence lock: it writes `seq` odd, the snapshot, then `seq` even; readers retry until they read
//! the same even `seq` before and after the snapshot. The file is written with `pwrite` only
//! (no `unsafe` mapping in this crate); readers never block the writer.
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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
pub const PARTITION_ARCHIVED_OFFSET: usize = 8;
pub const PARTITION_DURABLE_OFFSET: usize = 16;
pub const PARTITION_RING_MARK_OFFSET: usize = 24;
/// Most partitions recorded in the file (configured ones first, then run-time ones).
pub const PARTITIONS_MAX: usize = 4096;
/// Read attempts before a reader reports a writer that never finishes.
pub const READ_ATTEMPTS_MAX: u32 = 1000;

const _: () = assert!(STARTED_UNIX_NS_OFFSET + 8 <= HEADER_BYTES);
const _: () = assert!(PARTITION_RING_MARK_OFFSET + 8 == PARTITION_ENTRY_BYTES);

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

#[repr(align(64))]
#[derive(Default)]
struct Cell(AtomicU64);

/// Per-partition values shared between agents (archiver writes, receiver and conductor read).
#[derive(Default)]
pub struct PartitionCells {
    pub archived_records: AtomicU64,
    pub durable_records: AtomicU64,
    /// Every ring record with an offset below this mark is durable (u64::MAX: no archiver yet).
    pub durable_ring_mark: AtomicU64,
    /// Ring offset + `log_delta` (wrapping) = the record's offset in the partition's log, for
    /// records archived since the archiver opened the log (0 without storage).
    pub log_delta: AtomicU64,
}

struct Inner {
    cells: Box<[Cell]>,
    partitions: Box<[(u32, u16, Arc<PartitionCells>)]>,
}

/// The node's live counters; cheap to clone.
#[derive(Clone)]
pub struct Counters {
    inner: Arc<Inner>,
}

impl Counters {
    pub fn new(partitions: &[(u32, u16)]) -> Counters {
        let cells = (0..Counter::ALL.len()).map(|_| Cell::default()).collect();
        let partitions = partitions
            .iter()
            .map(|&(s, p)| (s, p, Arc::new(PartitionCells::default())))
            .collect();
        Counters {
            inner: Arc::new(Inner { cells, partitions }),
        }
    }

    #[inline]
    fn cell(&self, c: Counter) -> &AtomicU64 {
        &self.inner.cells[c as usize].0
    }

    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        if n != 0 {
            self.cell(c).fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Adds 1 to a counter that only the calling thread writes (no atomic read-modify-write).
    #[inline]
    pub fn bump_single_writer(&self, c: Counter) {
        let cell = self.cell(c);
        cell.store(cell.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Sets a gauge, or a total that an agent accumulates itself.
    #[inline]
    pub fn set(&self, c: Counter, v: u64) {
        self.cell(c).store(v, Ordering::Relaxed);
    }

    #[inline]
    pub fn record_max(&self, c: Counter, v: u64) {
        let cell = self.cell(c);
        if v > cell.load(Ordering::Relaxed) {
            cell.fetch_max(v, Ordering::Relaxed);
        }
    }

    pub fn get(&self, c: Counter) -> u64 {
        self.cell(c).load(Ordering::Relaxed)
    }

    pub fn partitions(&self) -> &[(u32, u16, Arc<PartitionCells>)] {
        &self.inner.partitions
    }

    /// The cells of partition index `i` (the node's partition order).
    pub fn partition(&self, i: usize) -> &PartitionCells {
        &self.inner.partitions[i].2
    }

    /// A shared handle on the cells of configured partition `i`; agents keep one per partition
    /// slot (partitions created at run time get their own cells, not listed in the file).
    pub fn partition_cells(&self, i: usize) -> Arc<PartitionCells> {
        self.inner.partitions[i].2.clone()
    }
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
    Format { path: PathBuf, reason: String },
    #[error(
        "counters file {path} stayed mid-update for {READ_ATTEMPTS_MAX} reads: is the node wedged?"
    )]
    Busy { path: PathBuf },
    #[error("counters file {path} belongs to a running node (pid {pid}): stop it, or give this node another `counters_file`")]
    InUse { path: PathBuf, pid: u32 },
    #[error("too many partitions for the counters file: {count} > {PARTITIONS_MAX}")]
    TooManyPartitions { count: usize },
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn partitions_offset(counters_count: usize) -> usize {
    HEADER_BYTES + (8 * counters_count).div_ceil(64) * 64
}

/// The writer side of the counters file (owned by the conductor); removes the file on drop.
pub struct CountersFile {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    seq: u64,
}

impl CountersFile {
    pub fn create(path: &Path, counters: &Counters) -> Result<CountersFile, CountersFileError> {
        let parts = counters.partitions().len();
        if parts > PARTITIONS_MAX {
            return Err(CountersFileError::TooManyPartitions { count: parts });
        }
        if let Ok(old) = CountersSnapshot::read(path) {
            if old.pid != std::process::id() && old.writer_alive() {
                return Err(CountersFileError::InUse {
                    path: path.into(),
                    pid: old.pid,
                });
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| CountersFileError::Create {
                path: path.into(),
                source,
            })?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|source| CountersFileError::Create {
                path: path.into(),
                source,
            })?;
        let n = Counter::ALL.len();
        // Room for every row up front: publishing never allocates.
        let len = partitions_offset(n) + PARTITIONS_MAX * PARTITION_ENTRY_BYTES;
        let mut buf = vec![0u8; len];
        buf[MAGIC_OFFSET..][..4].copy_from_slice(&COUNTERS_MAGIC.to_le_bytes());
        buf[VERSION_OFFSET..][..4].copy_from_slice(&COUNTERS_VERSION.to_le_bytes());
        buf[PID_OFFSET..][..4].copy_from_slice(&std::process::id().to_le_bytes());
        buf[COUNTERS_COUNT_OFFSET..][..4].copy_from_slice(&(n as u32).to_le_bytes());
        buf[STARTED_UNIX_NS_OFFSET..][..8].copy_from_slice(&unix_ns().to_le_bytes());
        let mut f = CountersFile {
            path: path.to_owned(),
            file,
            buf,
            seq: 0,
        };
        f.publish(counters)?;
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Copies every counter and the configured partitions' rows into the file.
    pub fn publish(&mut self, counters: &Counters) -> Result<(), CountersFileError> {
        self.publish_with(counters, std::iter::empty())
    }

    /// Copies every counter into the file (seqlock protocol in the module docs), with a row per
    /// configured partition and then per `runtime` partition, up to [`PARTITIONS_MAX`] rows. No
    /// allocation.
    pub fn publish_with<'a>(
        &mut self,
        counters: &'a Counters,
        runtime: impl Iterator<Item = (u32, u16, &'a PartitionCells)>,
    ) -> Result<(), CountersFileError> {
        let write = |source| CountersFileError::Write {
            path: self.path.clone(),
            source,
        };
        self.seq += 1; // odd: writing
        self.file
            .write_all_at(&self.seq.to_le_bytes(), SEQ_OFFSET as u64)
            .map_err(write)?;
        self.buf[SEQ_OFFSET..][..8].copy_from_slice(&self.seq.to_le_bytes());
        self.buf[UPDATED_UNIX_NS_OFFSET..][..8].copy_from_slice(&unix_ns().to_le_bytes());
        for c in Counter::ALL {
            let at = HEADER_BYTES + 8 * c.id() as usize;
            self.buf[at..at + 8].copy_from_slice(&counters.get(*c).to_le_bytes());
        }
        let base = partitions_offset(Counter::ALL.len());
        let configured = counters.partitions().iter().map(|(s, p, c)| (*s, *p, &**c));
        let mut rows = 0;
        for (i, (stream, partition, cells)) in
            configured.chain(runtime).take(PARTITIONS_MAX).enumerate()
        {
            let e = base + i * PARTITION_ENTRY_BYTES;
            rows = i + 1;
            self.buf[e + PARTITION_STREAM_OFFSET..][..4].copy_from_slice(&stream.to_le_bytes());
            self.buf[e + PARTITION_PARTITION_OFFSET..][..2]
                .copy_from_slice(&partition.to_le_bytes());
            let v = [
                (
                    PARTITION_ARCHIVED_OFFSET,
                    cells.archived_records.load(Ordering::Relaxed),
                ),
                (
                    PARTITION_DURABLE_OFFSET,
                    cells.durable_records.load(Ordering::Relaxed),
                ),
                (
                    PARTITION_RING_MARK_OFFSET,
                    cells.durable_ring_mark.load(Ordering::Relaxed),
                ),
            ];
            for (off, value) in v {
                self.buf[e + off..][..8].copy_from_slice(&value.to_le_bytes());
            }
        }
        self.buf[PARTITIONS_COUNT_OFFSET..][..4].copy_from_slice(&(rows as u32).to_le_bytes());
        let write = |source| CountersFileError::Write {
            path: self.path.clone(),
            source,
        };
        let used = base + rows * PARTITION_ENTRY_BYTES;
        self.file
            .write_all_at(&self.buf[..used], 0)
            .map_err(write)?;
        self.seq += 1; // even: consistent
        self.file
            .write_all_at(&self.seq.to_le_bytes(), SEQ_OFFSET as u64)
            .map_err(write)?;
        Ok(())
    }
}

impl Drop for CountersFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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

    /// Reads a consistent snapshot, retrying while the writer is mid-update.
    pub fn read(path: &Path) -> Result<CountersSnapshot, CountersFileError> {
        let read = |source| CountersFileError::Read {
            path: path.into(),
            source,
        };
        let format = |reason: String| CountersFileError::Format {
            path: path.into(),
            reason,
        };
        let file = File::open(path).map_err(read)?;
        for _ in 0..READ_ATTEMPTS_MAX {
            let buf = std::fs::read(path).map_err(read)?;
            if buf.len() < HEADER_BYTES {
                return Err(format(format!(
                    "{} bytes, shorter than the header",
                    buf.len()
                )));
            }
            let u32_at =
                |at: usize| u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
            let u64_at =
                |at: usize| u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
            if u32_at(MAGIC_OFFSET) != COUNTERS_MAGIC {
                return Err(format("bad magic".into()));
            }
            if u32_at(VERSION_OFFSET) != COUNTERS_VERSION {
                return Err(format(format!("version {}", u32_at(VERSION_OFFSET))));
            }
            let seq = u64_at(SEQ_OFFSET);
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
            let n = u32_at(COUNTERS_COUNT_OFFSET) as usize;
            let parts = u32_at(PARTITIONS_COUNT_OFFSET) as usize;
            let base = partitions_offset(n);
            if parts > PARTITIONS_MAX || buf.len() < base + parts * PARTITION_ENTRY_BYTES {
                return Err(format(format!(
                    "{} bytes for {n} counters and {parts} partitions",
                    buf.len()
                )));
            }
            let values = (0..n)
                .filter_map(|id| {
                    Counter::from_id(id as u32).map(|c| (c, u64_at(HEADER_BYTES + 8 * id)))
                })
                .collect();
            let partitions = (0..parts)
                .map(|i| {
                    let e = base + i * PARTITION_ENTRY_BYTES;
                    PartitionSnapshot {
                        stream: u32_at(e + PARTITION_STREAM_OFFSET),
                        partition: u16::from_le_bytes([
                            buf[e + PARTITION_PARTITION_OFFSET],
                            buf[e + PARTITION_PARTITION_OFFSET + 1],
                        ]),
                        archived_records: u64_at(e + PARTITION_ARCHIVED_OFFSET),
                        durable_records: u64_at(e + PARTITION_DURABLE_OFFSET),
                        durable_ring_mark: u64_at(e + PARTITION_RING_MARK_OFFSET),
                    }
                })
                .collect();
            return Ok(CountersSnapshot {
                pid: u32_at(PID_OFFSET),
                updated_unix_ns: u64_at(UPDATED_UNIX_NS_OFFSET),
                started_unix_ns: u64_at(STARTED_UNIX_NS_OFFSET),
                values,
                partitions,
            });
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
    }

    #[test]
    fn file_round_trip_and_removal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counters");
        let counters = Counters::new(&[(7, 0), (7, 1)]);
        let mut file = CountersFile::create(&path, &counters).unwrap();
        counters.add(Counter::RxRecordsAppended, 5);
        counters.record_max(Counter::DutyCycleMaxSenderNs, 900);
        counters.record_max(Counter::DutyCycleMaxSenderNs, 100);
        counters
            .partition(1)
            .durable_records
            .store(3, Ordering::Relaxed);
        file.publish(&counters).unwrap();
        let snap = CountersSnapshot::read(&path).unwrap();
        assert_eq!(snap.pid, std::process::id());
        assert!(snap.writer_alive());
        assert_eq!(snap.get(Counter::RxRecordsAppended), Some(5));
        assert_eq!(snap.get(Counter::DutyCycleMaxSenderNs), Some(900));
        assert_eq!(snap.partitions.len(), 2);
        assert_eq!(
            (
                snap.partitions[1].stream,
                snap.partitions[1].partition,
                snap.partitions[1].durable_records
            ),
            (7, 1, 3)
        );
        // A second node may not take over the file of a live one.
        let mut other = std::fs::read(&path).unwrap();
        other[PID_OFFSET..PID_OFFSET + 4].copy_from_slice(&1u32.to_le_bytes()); // pid 1 is alive
        let taken = dir.path().join("taken");
        std::fs::write(&taken, &other).unwrap();
        assert!(matches!(
            CountersFile::create(&taken, &counters),
            Err(CountersFileError::InUse { pid: 1, .. })
        ));
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn run_time_partitions_are_listed_after_the_configured_ones_and_leave_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counters");
        let counters = Counters::new(&[(7, 0)]);
        let mut file = CountersFile::create(&path, &counters).unwrap();
        let (a, b) = (PartitionCells::default(), PartitionCells::default());
        a.archived_records.store(11, Ordering::Relaxed);
        b.durable_records.store(22, Ordering::Relaxed);
        file.publish_with(&counters, [(9, 0, &a), (9, 1, &b)].into_iter())
            .unwrap();
        let rows = |snap: &CountersSnapshot| {
            snap.partitions
                .iter()
                .map(|p| (p.stream, p.partition, p.archived_records, p.durable_records))
                .collect::<Vec<_>>()
        };
        let snap = CountersSnapshot::read(&path).unwrap();
        assert_eq!(rows(&snap), [(7, 0, 0, 0), (9, 0, 11, 0), (9, 1, 0, 22)]);
        // Partition (9, 0) removed: its row goes, the next takes its place.
        file.publish_with(&counters, [(9, 1, &b)].into_iter())
            .unwrap();
        let snap = CountersSnapshot::read(&path).unwrap();
        assert_eq!(rows(&snap), [(7, 0, 0, 0), (9, 1, 0, 22)]);
        // More partitions than the file holds: the first PARTITIONS_MAX rows, no error.
        let many: Vec<PartitionCells> = (0..PARTITIONS_MAX)
            .map(|_| PartitionCells::default())
            .collect();
        file.publish_with(
            &counters,
            many.iter().enumerate().map(|(i, c)| (10, i as u16, c)),
        )
        .unwrap();
        let snap = CountersSnapshot::read(&path).unwrap();
        assert_eq!(snap.partitions.len(), PARTITIONS_MAX);
        assert_eq!(
            snap.partitions[PARTITIONS_MAX - 1].partition,
            (PARTITIONS_MAX - 2) as u16
        );
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
            Err(CountersFileError::Format { .. })
        ));
        std::fs::write(&path, [0u8; 128]).unwrap();
        assert!(matches!(
            CountersSnapshot::read(&path),
            Err(CountersFileError::Format { .. })
        ));
    }
}
