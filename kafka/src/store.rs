//! Kafka partition logs: one storage-nvme [`Log`] per topic partition, each written by a
//! thread of its own (the log's I/O blocks; tokio tasks never wait on it).
//!
//! Stored format (the narrow first slice, see docs/ARCHITECTURE.md): a produced Kafka record
//! batch v2 is one storage batch of `recordCount` records, so storage offsets are Kafka
//! offsets. Record 0 carries the Kafka batch bytes exactly as produced (compressed or not),
//! with the broker's base offset and leader epoch written in; records 1.. are empty
//! placeholders that keep offsets dense. The storage batch's CRC32C covers it on disk, and
//! Fetch serves the Kafka bytes as they are, so every codec is stored and served unchanged.
//! Directory: `<kafka data dir>/s<stream id>-p<partition>`.
//!
//! An append is acknowledged once the group commit covering it is durable
//! (`Log::poll`), and only durable batches are readable: the partition's
//! [`Marks::high_watermark`] is today this node's durable log end.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use storage_nvme::layout::{BATCH_HEADER_BYTES, RECORD_HEADER_BYTES, RECORD_LENGTH_OFFSET};
use storage_nvme::{AlignedBuf, AppendError, Log, LogConfig, Reader, Record, RetentionPolicy};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::batch::{self, BatchInfo};

/// Appends queued per partition before producers wait.
pub const APPEND_QUEUE_MAX: usize = 1024;
/// Idle readers (each with its read buffer) kept per partition for the next fetch.
pub const READERS_CACHED_MAX: usize = 4;
/// Longest wait of a partition thread for a durability completion before it looks at its
/// queue again.
const DURABLE_WAIT: Duration = Duration::from_millis(1);
/// Interval of retention enforcement on each partition thread.
const RETENTION_INTERVAL: Duration = Duration::from_secs(10);

/// Storage sizes of every Kafka partition log.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub dir: PathBuf,
    pub segment_bytes: u64,
    pub write_buffer_bytes: u64,
    /// Largest Kafka batch accepted (Kafka's `message.max.bytes`).
    pub batch_bytes_max: u32,
    /// Largest record count of one Kafka batch (each costs a 16-byte placeholder record).
    pub batch_records_max: u32,
    /// Open partition logs at most (each has a thread and a write buffer).
    pub partitions_open_max: usize,
}

impl StoreConfig {
    /// Bytes of the storage batch that holds a Kafka batch at the limits.
    pub fn storage_batch_bytes_max(&self) -> u64 {
        let frame = |len: u64| (RECORD_HEADER_BYTES as u64 + len).next_multiple_of(8);
        BATCH_HEADER_BYTES as u64
            + frame(u64::from(self.batch_bytes_max))
            + frame(0) * u64::from(self.batch_records_max)
    }

    fn log_config(&self, stream: u32, partition: u16, retention: RetentionPolicy) -> LogConfig {
        let write_bytes_max = 1 << 20;
        let batch = self.storage_batch_bytes_max();
        LogConfig {
            stream,
            partition,
            segment_bytes: self.segment_bytes,
            write_buffer_bytes: self
                .write_buffer_bytes
                .max(2 * batch)
                .next_multiple_of(write_bytes_max),
            write_bytes_max,
            batch_bytes_max: batch,
            retention,
            ..LogConfig::default()
        }
    }
}

/// A partition's positions, published after every durable advance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// First offset still stored (retention moves it).
    pub log_start: u64,
    /// Offsets below it are readable and acknowledged. Today: the durable end of this node's
    /// log (one replica). Replication (#11) publishes the replicated high watermark here.
    pub high_watermark: u64,
}

/// Why a partition cannot take a batch or serve a read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the partition log {dir}: {reason}")]
    Open { dir: PathBuf, reason: String },
    #[error("the partition log failed and stopped: {0}")]
    Failed(String),
    #[error("{0} partition logs are open already (partitions_open_max)")]
    TooManyPartitions(usize),
    #[error("offset {offset} is outside the log ({start}..={end})")]
    OutOfRange { offset: u64, start: u64, end: u64 },
    #[error("the log holds bytes that are not a Kafka batch at offset {0}")]
    Corrupt(u64),
    #[error("the partition is closing")]
    Closed,
}

enum Op {
    Append {
        batch: Vec<u8>,
        info: BatchInfo,
        leader_epoch: i32,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Reader(oneshot::Sender<Reader>),
}

/// One open partition log.
pub struct Partition {
    ops: Mutex<Option<mpsc::Sender<Op>>>,
    marks: watch::Receiver<Marks>,
    idle: Mutex<Vec<(Reader, AlignedBuf)>>,
    read_buffer_bytes: usize,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    dir: PathBuf,
}

/// An append on its way to durability.
pub struct Appended(oneshot::Receiver<Result<u64, StoreError>>);

impl Appended {
    /// The base offset once durable.
    pub async fn durable(self) -> Result<u64, StoreError> {
        self.0.await.map_err(|_| StoreError::Closed)?
    }
}

/// Every open Kafka partition log of this listener.
pub struct Stores {
    cfg: StoreConfig,
    open: Mutex<HashMap<(u32, u16), Arc<Partition>>>,
    /// Serializes opening: a second `Log::open` of a directory would wait for its lock.
    opening: tokio::sync::Mutex<()>,
    /// Notified on every durable advance of any partition (Fetch long polls wait on it).
    pub advanced: Arc<Notify>,
}

impl Stores {
    pub fn new(cfg: StoreConfig) -> Stores {
        Stores {
            cfg,
            open: Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
            advanced: Arc::new(Notify::new()),
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    fn dir_of(&self, stream: u32, partition: u16) -> PathBuf {
        self.cfg.dir.join(format!("s{stream}-p{partition}"))
    }

    /// The open log of a partition, opened (and recovered) on first use.
    pub async fn partition(
        &self,
        stream: u32,
        partition: u16,
        retention: RetentionPolicy,
    ) -> Result<Arc<Partition>, StoreError> {
        if let Some(p) = self
            .open
            .lock()
            .expect("stores lock")
            .get(&(stream, partition))
        {
            return Ok(p.clone());
        }
        let _opening = self.opening.lock().await;
        if let Some(p) = self
            .open
            .lock()
            .expect("stores lock")
            .get(&(stream, partition))
        {
            return Ok(p.clone());
        }
        let open_now = self.open.lock().expect("stores lock").len();
        if open_now >= self.cfg.partitions_open_max {
            return Err(StoreError::TooManyPartitions(open_now));
        }
        let dir = self.dir_of(stream, partition);
        let config = self.cfg.log_config(stream, partition, retention);
        let read_buffer_bytes = (config.batch_bytes_max as usize).next_multiple_of(1 << 20);
        let p =
            Arc::new(Partition::open(dir, config, read_buffer_bytes, self.advanced.clone()).await?);
        self.open
            .lock()
            .expect("stores lock")
            .insert((stream, partition), p.clone());
        Ok(p)
    }

    /// Closes the logs of streams that are no longer in the cluster metadata (deleted with
    /// `msctl stream delete`); their directories stay until DeleteTopics or an operator
    /// removes them.
    pub async fn close_absent(&self, present: impl Fn(u32) -> bool) -> usize {
        let parts: Vec<Arc<Partition>> = {
            let mut open = self.open.lock().expect("stores lock");
            let gone: Vec<_> = open.keys().filter(|k| !present(k.0)).copied().collect();
            gone.iter().filter_map(|k| open.remove(k)).collect()
        };
        let n = parts.len();
        if n > 0 {
            let _ = tokio::task::spawn_blocking(move || parts.iter().for_each(|p| p.close())).await;
        }
        n
    }

    /// Closes every partition log (at shutdown).
    pub async fn close_all(&self) {
        let parts: Vec<Arc<Partition>> = self
            .open
            .lock()
            .expect("stores lock")
            .drain()
            .map(|(_, p)| p)
            .collect();
        let _ = tokio::task::spawn_blocking(move || parts.iter().for_each(|p| p.close())).await;
    }

    /// Closes every partition log of `stream` and deletes their directories (the stream was
    /// deleted). Returns the directories removed.
    pub async fn remove_stream(&self, stream: u32) -> Vec<PathBuf> {
        let parts: Vec<Arc<Partition>> = {
            let mut open = self.open.lock().expect("stores lock");
            let keys: Vec<_> = open.keys().filter(|k| k.0 == stream).copied().collect();
            keys.iter().filter_map(|k| open.remove(k)).collect()
        };
        let prefix = format!("s{stream}-p");
        let dir = self.cfg.dir.clone();
        tokio::task::spawn_blocking(move || {
            for p in parts {
                p.close();
            }
            let mut removed = Vec::new();
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix)
                    && std::fs::remove_dir_all(e.path()).is_ok()
                {
                    removed.push(e.path());
                }
            }
            removed
        })
        .await
        .unwrap_or_default()
    }
}

impl Partition {
    async fn open(
        dir: PathBuf,
        config: LogConfig,
        read_buffer_bytes: usize,
        advanced: Arc<Notify>,
    ) -> Result<Partition, StoreError> {
        let (ops_tx, ops_rx) = mpsc::channel(APPEND_QUEUE_MAX);
        let (marks_tx, marks_rx) = watch::channel(Marks::default());
        let (opened_tx, opened_rx) = oneshot::channel();
        let thread_dir = dir.clone();
        let thread = std::thread::Builder::new()
            .name(format!("kafka-log-{}-{}", config.stream, config.partition))
            .spawn(move || {
                let log = match Log::open(&thread_dir, config) {
                    Ok((log, _report)) => log,
                    Err(e) => {
                        let _ = opened_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = opened_tx.send(Ok(()));
                let mut w = Writer {
                    log,
                    waiting: Vec::new(),
                    marks: marks_tx,
                    advanced,
                };
                w.publish();
                w.run(ops_rx);
            })
            .map_err(|e| StoreError::Open {
                dir: dir.clone(),
                reason: e.to_string(),
            })?;
        let opened = opened_rx
            .await
            .unwrap_or_else(|_| Err("the log thread ended".into()));
        if let Err(reason) = opened {
            let _ = thread.join();
            return Err(StoreError::Open { dir, reason });
        }
        Ok(Partition {
            ops: Mutex::new(Some(ops_tx)),
            marks: marks_rx,
            idle: Mutex::new(Vec::new()),
            read_buffer_bytes,
            thread: Mutex::new(Some(thread)),
            dir,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The partition's positions now.
    pub fn marks(&self) -> Marks {
        *self.marks.borrow()
    }

    /// Queues one validated Kafka batch; the receiver resolves to its base offset once it is
    /// durable. Queue first, await later: the appends of one request share a group commit.
    pub async fn submit(
        &self,
        batch: Vec<u8>,
        info: BatchInfo,
        leader_epoch: i32,
    ) -> Result<Appended, StoreError> {
        let (reply, done) = oneshot::channel();
        self.sender()?
            .send(Op::Append {
                batch,
                info,
                leader_epoch,
                reply,
            })
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(Appended(done))
    }

    /// Reads whole Kafka batches from the one holding `offset` on, below the high watermark,
    /// until `bytes_max` is reached. With `first_whole` the first batch is returned even when
    /// larger than `bytes_max` (Kafka's rule for the first non-empty partition of a fetch, so
    /// a consumer makes progress past a batch larger than its limit).
    pub async fn read(
        self: &Arc<Self>,
        offset: u64,
        bytes_max: usize,
        first_whole: bool,
    ) -> Result<Vec<Bytes>, StoreError> {
        let marks = self.marks();
        if offset < marks.log_start || offset > marks.high_watermark {
            return Err(StoreError::OutOfRange {
                offset,
                start: marks.log_start,
                end: marks.high_watermark,
            });
        }
        if offset == marks.high_watermark || (bytes_max == 0 && !first_whole) {
            return Ok(Vec::new());
        }
        let (reader, buf) = self.take_reader().await?;
        let me = self.clone();
        let hw = marks.high_watermark;
        let (reader, buf, out) = tokio::task::spawn_blocking(move || {
            let (mut reader, mut buf) = (reader, buf);
            let out = read_batches(&mut reader, &mut buf, offset, hw, bytes_max, first_whole);
            (reader, buf, out)
        })
        .await
        .map_err(|e| StoreError::Failed(e.to_string()))?;
        let mut idle = me.idle.lock().expect("readers lock");
        if idle.len() < READERS_CACHED_MAX {
            idle.push((reader, buf));
        }
        out
    }

    /// The first offset whose stored timestamp is at or after `timestamp_ms` and its
    /// timestamp, or `None` when every record is older. Batch-granular: records 1.. of a batch
    /// carry the batch's max timestamp, so the answer can be early within the batch that holds
    /// the exact record, never late (a consumer starting there sees every record it asked for).
    pub async fn offset_for_timestamp(
        self: &Arc<Self>,
        timestamp_ms: i64,
    ) -> Result<Option<(u64, i64)>, StoreError> {
        let marks = self.marks();
        if marks.high_watermark == marks.log_start {
            return Ok(None);
        }
        let (reader, buf) = self.take_reader().await?;
        let hw = marks.high_watermark;
        let ns = u64::try_from(timestamp_ms)
            .unwrap_or(0)
            .saturating_mul(1_000_000);
        let (reader, buf, out) = tokio::task::spawn_blocking(move || {
            let (mut reader, mut buf) = (reader, buf);
            let out = find_timestamp(&mut reader, &mut buf, ns, hw);
            (reader, buf, out)
        })
        .await
        .map_err(|e| StoreError::Failed(e.to_string()))?;
        let mut idle = self.idle.lock().expect("readers lock");
        if idle.len() < READERS_CACHED_MAX {
            idle.push((reader, buf));
        }
        out
    }

    async fn take_reader(&self) -> Result<(Reader, AlignedBuf), StoreError> {
        if let Some(r) = self.idle.lock().expect("readers lock").pop() {
            return Ok(r);
        }
        let (tx, rx) = oneshot::channel();
        self.sender()?
            .send(Op::Reader(tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        let reader = rx.await.map_err(|_| StoreError::Closed)?;
        let buf = AlignedBuf::new(self.read_buffer_bytes)
            .map_err(|e| StoreError::Failed(e.to_string()))?;
        Ok((reader, buf))
    }

    /// Stops the log thread (it closes the log) and waits for it. Blocking.
    fn close(&self) {
        // Dropping the sender ends the thread's loop once in-flight sends are done.
        drop(self.ops.lock().expect("ops lock").take());
        if let Some(t) = self.thread.lock().expect("thread lock").take() {
            let _ = t.join();
        }
    }

    fn sender(&self) -> Result<mpsc::Sender<Op>, StoreError> {
        self.ops
            .lock()
            .expect("ops lock")
            .clone()
            .ok_or(StoreError::Closed)
    }
}

/// Reads batches into `out` (see [`Partition::read`]).
fn read_batches(
    reader: &mut Reader,
    buf: &mut AlignedBuf,
    offset: u64,
    high_watermark: u64,
    bytes_max: usize,
    first_whole: bool,
) -> Result<Vec<Bytes>, StoreError> {
    let failed = |e: &dyn std::fmt::Display| StoreError::Failed(e.to_string());
    reader.seek_offset(offset).map_err(|e| failed(&e))?;
    let mut out: Vec<Bytes> = Vec::new();
    let mut bytes = 0usize;
    while bytes < bytes_max || (out.is_empty() && first_whole) {
        let Some(view) = reader.read_batch(buf).map_err(|e| failed(&e))? else {
            break;
        };
        if view.base_offset() >= high_watermark {
            break;
        }
        let kafka = kafka_bytes(view.as_bytes()).ok_or(StoreError::Corrupt(view.base_offset()))?;
        if batch::stored_range(kafka) != Some((view.base_offset(), view.record_count())) {
            return Err(StoreError::Corrupt(view.base_offset()));
        }
        if (!out.is_empty() || !first_whole) && bytes + kafka.len() > bytes_max {
            break;
        }
        bytes += kafka.len();
        out.push(Bytes::copy_from_slice(kafka));
    }
    Ok(out)
}

fn find_timestamp(
    reader: &mut Reader,
    buf: &mut AlignedBuf,
    ns: u64,
    high_watermark: u64,
) -> Result<Option<(u64, i64)>, StoreError> {
    let failed = |e: &dyn std::fmt::Display| StoreError::Failed(e.to_string());
    match reader.seek_timestamp(ns) {
        Ok(()) => {}
        Err(storage_nvme::SeekError::BeyondEnd { .. }) => return Ok(None),
        Err(e) => return Err(failed(&e)),
    }
    let Some(view) = reader.read_batch(buf).map_err(|e| failed(&e))? else {
        return Ok(None);
    };
    let Some(r) = view.records().next() else {
        return Ok(None);
    };
    if r.offset >= high_watermark || r.timestamp_ns < ns {
        return Ok(None);
    }
    Ok(Some((r.offset, (r.timestamp_ns / 1_000_000) as i64)))
}

/// The payload of record 0 of a verified storage batch: the Kafka batch.
fn kafka_bytes(storage_batch: &[u8]) -> Option<&[u8]> {
    let at = BATCH_HEADER_BYTES;
    let len_at = at + RECORD_LENGTH_OFFSET;
    let len = u32::from_le_bytes(storage_batch.get(len_at..len_at + 4)?.try_into().ok()?) as usize;
    storage_batch.get(at + RECORD_HEADER_BYTES..at + RECORD_HEADER_BYTES + len)
}

struct Waiting {
    end_offset: u64,
    base_offset: u64,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

/// The partition thread's state: the log and the appends waiting to be durable.
struct Writer {
    log: Log,
    waiting: Vec<Waiting>,
    marks: watch::Sender<Marks>,
    advanced: Arc<Notify>,
}

impl Writer {
    /// Takes operations until every sender is gone, group-committing appends: everything
    /// queued is appended, then one flush covers it, and replies go out once it is durable.
    fn run(&mut self, mut ops: mpsc::Receiver<Op>) {
        let mut next_retention = std::time::Instant::now() + RETENTION_INTERVAL;
        loop {
            let op = if self.waiting.is_empty() {
                match ops.blocking_recv() {
                    Some(op) => op,
                    None => break,
                }
            } else {
                match ops.try_recv() {
                    Ok(op) => op,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.commit();
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        self.commit();
                        continue;
                    }
                }
            };
            self.handle(op);
            if std::time::Instant::now() >= next_retention {
                next_retention += RETENTION_INTERVAL;
                self.retain();
            }
        }
        let _ = self.log.sync();
        self.publish();
    }

    fn handle(&mut self, op: Op) {
        match op {
            Op::Reader(reply) => {
                let _ = reply.send(self.log.reader());
            }
            Op::Append {
                mut batch,
                info,
                leader_epoch,
                reply,
            } => {
                if let Some(e) = self.log.failure() {
                    let _ = reply.send(Err(StoreError::Failed(e.to_string())));
                    return;
                }
                let base = self.log.next_offset();
                batch::assign(&mut batch, base, leader_epoch);
                match self.append(&batch, &info, base) {
                    Ok(end_offset) => self.waiting.push(Waiting {
                        end_offset,
                        base_offset: base,
                        reply,
                    }),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    fn append(&mut self, batch: &[u8], info: &BatchInfo, base: u64) -> Result<u64, StoreError> {
        let ns = |ms: i64| u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000);
        let mut records = Vec::with_capacity(info.record_count as usize);
        records.push(Record {
            timestamp_ns: ns(info.base_timestamp_ms),
            payload: batch,
        });
        let placeholder = Record {
            timestamp_ns: ns(info.max_timestamp_ms),
            payload: &[],
        };
        records.resize(info.record_count as usize, placeholder);
        loop {
            match self.log.append_batch(base, &records) {
                Ok(pos) => return Ok(pos.next_offset),
                Err(AppendError::BackPressured) => self.commit(),
                Err(e) => return Err(StoreError::Failed(e.to_string())),
            }
            if let Some(e) = self.log.failure() {
                return Err(StoreError::Failed(e.to_string()));
            }
        }
    }

    /// Flushes, waits a little for durability, answers the appends it covers.
    fn commit(&mut self) {
        let durable = self
            .log
            .flush()
            .and_then(|()| self.log.wait_timeout(DURABLE_WAIT));
        match durable {
            Ok(durable) => {
                let (done, rest): (Vec<_>, Vec<_>) = self
                    .waiting
                    .drain(..)
                    .partition(|w| w.end_offset <= durable);
                self.waiting = rest;
                if !done.is_empty() {
                    self.publish();
                }
                for w in done {
                    let _ = w.reply.send(Ok(w.base_offset));
                }
            }
            Err(e) => {
                for w in self.waiting.drain(..) {
                    let _ = w.reply.send(Err(StoreError::Failed(e.to_string())));
                }
            }
        }
    }

    fn retain(&mut self) {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        if let Err(e) = self.log.enforce_retention(now_ns) {
            eprintln!(
                "memstreamer kafka: retention of {}: {e}",
                self.log.dir().display()
            );
        }
        self.publish();
    }

    fn publish(&self) {
        self.marks.send_replace(Marks {
            log_start: self.log.start_offset(),
            high_watermark: self.log.durable_offset(),
        });
        self.advanced.notify_waiters();
    }
}
