//! Counters, live in the node as atomics and published to a shared-memory file (tmpfs,
//! `/dev/shm/...`) that `memstreamer stat` and the control plane read without touching the node
//! process. The counter ids, labels and the file layout (and its reader) are `abi::counters`,
//! re-exported here; this module is the node's side: the cells and the file's writer.
//!
//! Agents update their cells with relaxed atomics (one cache line per cell, so agents on different
//! cores never share a line). The conductor copies every cell into the file on a timer with the
//! sequence lock of `abi::counters`. The file is written with `pwrite` only (no `unsafe` mapping
//! in this crate); readers never block the writer.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use abi::counters::*;

#[repr(align(64))]
#[derive(Default)]
struct Cell(AtomicU64);

/// Per-partition values shared between agents (archiver writes, receiver and conductor read).
pub struct PartitionCells {
    pub archived_records: AtomicU64,
    pub durable_records: AtomicU64,
    /// Every ring record with an offset below this mark is durable (u64::MAX: no archiver yet).
    pub durable_ring_mark: AtomicU64,
    /// Ring offset + `log_delta` (wrapping) = the record's offset in the partition's log, for
    /// records archived since the archiver opened the log (0 without storage).
    pub log_delta: AtomicU64,
    /// 1 while this node follows a leader for the partition and the leader's session towards
    /// it is alive (the receiver writes it; the conductor reports Serving vs CatchingUp).
    pub replica_connected: AtomicU64,
    /// Replication gate of remote publishers' durable acknowledgements (#11): every ring
    /// record with an offset below this mark is committed by the partition's ack policy (the
    /// stream's default mode `all`: the high watermark of its kind). The conductor writes it
    /// for partitions this node leads with an `all` default; u64::MAX otherwise (no gate:
    /// durable on this node's disk is enough).
    pub commit_ring_mark: AtomicU64,
}

impl Default for PartitionCells {
    fn default() -> Self {
        PartitionCells {
            archived_records: AtomicU64::new(0),
            durable_records: AtomicU64::new(0),
            durable_ring_mark: AtomicU64::new(0),
            log_delta: AtomicU64::new(0),
            replica_connected: AtomicU64::new(0),
            commit_ring_mark: AtomicU64::new(u64::MAX),
        }
    }
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

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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
        // Room for every row up front: publishing never allocates.
        let mut buf = vec![0u8; file_bytes(PARTITIONS_MAX)];
        encode_header(&mut buf, std::process::id(), unix_ns());
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
            self.buf[value_offset(c.id())..][..8].copy_from_slice(&counters.get(*c).to_le_bytes());
        }
        let base = partitions_offset(Counter::ALL.len());
        let configured = counters.partitions().iter().map(|(s, p, c)| (*s, *p, &**c));
        let mut rows = 0;
        for (i, (stream, partition, cells)) in
            configured.chain(runtime).take(PARTITIONS_MAX).enumerate()
        {
            rows = i + 1;
            let row = PartitionSnapshot {
                stream,
                partition,
                archived_records: cells.archived_records.load(Ordering::Relaxed),
                durable_records: cells.durable_records.load(Ordering::Relaxed),
                durable_ring_mark: cells.durable_ring_mark.load(Ordering::Relaxed),
            };
            row.encode(&mut self.buf[base + i * PARTITION_ENTRY_BYTES..][..PARTITION_ENTRY_BYTES]);
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
