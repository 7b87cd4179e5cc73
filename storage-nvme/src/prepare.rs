//! The log's helper thread: file work kept out of a segment roll.
//!
//! A roll used to do, while `append_batch` waited: write and fsync the sealed segment's two
//! index files, then create, fallocate and fsync the next segment file. Measured under a
//! saturating append load on ext4/virtio that was 20-30 ms of a 30-40 ms roll. Now:
//!
//! * the next segment file is preallocated ahead, right after the previous roll (or the open),
//!   under a temporary name (`PREPARED_STEM.tmp-segment`), fallocated and fsynced; a roll only
//!   writes its header, renames it into place and fsyncs the directory ([`finalize_segment`]).
//!   If the helper has not finished (or failed), the roll waits for it or creates the file
//!   itself, as before.
//! * the sealed segment's indexes are written here after the roll. They are an optimisation:
//!   if the process dies first, the next open scans that segment and rebuilds them.
//!
//! Jobs run in order on one thread; [`Preparer::barrier`] waits until every job sent so far is
//! done (retention calls it before deleting a segment whose index may still be written).
//! Nothing here is on the append path: jobs are sent only at open, roll, retention and close.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::index::IndexCheckpoint;
use crate::layout::{SegmentHeader, SEGMENT_HEADER_BYTES};
use crate::segment::{
    create_preallocated, ferr, save_indexes, segment_path, sync_dir, FileError, TEMP_SEGMENT_SUFFIX,
};

/// Base offset used for the prepared file's name: never a real segment's (a segment at
/// `u64::MAX` could hold no record). Recovery removes it like any temporary segment.
pub const PREPARED_STEM: u64 = u64::MAX;

/// Jobs queued to the helper at most (sends block beyond; in practice there are one or two).
const JOBS_MAX: usize = 8;

/// Where the next segment is prepared.
pub fn prepared_path(dir: &Path) -> PathBuf {
    segment_path(dir, PREPARED_STEM).with_extension(&TEMP_SEGMENT_SUFFIX[1..])
}

enum Job {
    Prepare {
        path: PathBuf,
        bytes: u64,
    },
    SaveIndexes {
        dir: PathBuf,
        cp: IndexCheckpoint,
        offs: Vec<(u64, u64)>,
        times: Vec<(u64, u64)>,
    },
    Barrier,
}

enum Done {
    Prepared(Result<PathBuf, FileError>),
    Saved(Result<(), FileError>),
    Barrier,
}

/// Counters of the helper's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrepareStats {
    /// Rolls that found the next segment prepared, and those that created it themselves.
    pub prepared_rolls: u64,
    pub unprepared_rolls: u64,
    /// Sealed-segment index saves done by the helper, and those that failed (rebuilt at open).
    pub index_saves: u64,
    pub index_save_errors: u64,
}

pub(crate) struct Preparer {
    tx: Option<SyncSender<Job>>,
    rx: Receiver<Done>,
    thread: Option<JoinHandle<()>>,
    /// A Prepare job is queued or running.
    preparing: bool,
    /// A prepared file ready for the next roll.
    ready: Option<PathBuf>,
    pub stats: PrepareStats,
}

impl Preparer {
    /// Starts the helper thread; `None` (and the log does all file work itself) if the thread
    /// cannot be spawned.
    pub fn start(dir: &Path) -> Option<Self> {
        let (tx, jobs) = mpsc::sync_channel::<Job>(JOBS_MAX);
        let (done_tx, rx) = mpsc::channel::<Done>();
        let name = format!(
            "ms-log-prep-{}",
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("log")
        );
        let thread = std::thread::Builder::new()
            .name(name.chars().take(15).collect())
            .spawn(move || {
                let mut scratch = Vec::new();
                for job in jobs {
                    let done = match job {
                        Job::Prepare { path, bytes } => {
                            Done::Prepared(preallocate(&path, bytes).map(|()| path))
                        }
                        Job::SaveIndexes {
                            dir,
                            cp,
                            offs,
                            times,
                        } => Done::Saved(save_indexes(&dir, &cp, &offs, &times, &mut scratch)),
                        Job::Barrier => Done::Barrier,
                    };
                    if done_tx.send(done).is_err() {
                        return;
                    }
                }
            })
            .ok()?;
        Some(Self {
            tx: Some(tx),
            rx,
            thread: Some(thread),
            preparing: false,
            ready: None,
            stats: PrepareStats::default(),
        })
    }

    fn send(&mut self, job: Job) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }

    fn on_done(&mut self, done: Done) {
        match done {
            Done::Prepared(Ok(p)) => {
                self.preparing = false;
                self.ready = Some(p);
            }
            Done::Prepared(Err(_)) => self.preparing = false,
            Done::Saved(Ok(())) => self.stats.index_saves += 1,
            Done::Saved(Err(_)) => self.stats.index_save_errors += 1,
            Done::Barrier => {}
        }
    }

    /// Takes what the helper finished, without waiting.
    pub fn collect(&mut self) {
        while let Ok(d) = self.rx.try_recv() {
            self.on_done(d);
        }
    }

    /// Asks for the next segment file to be preallocated (unless one is ready or coming).
    pub fn prepare(&mut self, dir: &Path, bytes: u64) {
        self.collect();
        if self.preparing || self.ready.is_some() {
            return;
        }
        let path = prepared_path(dir);
        self.preparing = self.send(Job::Prepare { path, bytes });
    }

    /// The prepared file, waiting for a preparation in progress; `None` if there is none.
    pub fn take_prepared(&mut self) -> Option<PathBuf> {
        while self.preparing && self.ready.is_none() {
            match self.rx.recv() {
                Ok(d) => self.on_done(d),
                Err(_) => self.preparing = false,
            }
        }
        self.collect();
        self.ready.take()
    }

    /// Queues the index save of a sealed segment; false if the helper is gone.
    pub fn save_indexes(
        &mut self,
        dir: &Path,
        cp: IndexCheckpoint,
        offs: &[(u64, u64)],
        times: &[(u64, u64)],
    ) -> bool {
        self.send(Job::SaveIndexes {
            dir: dir.to_path_buf(),
            cp,
            offs: offs.to_vec(),
            times: times.to_vec(),
        })
    }

    /// Waits until every job sent so far is done.
    pub fn barrier(&mut self) {
        if !self.send(Job::Barrier) {
            return;
        }
        while let Ok(d) = self.rx.recv() {
            if matches!(d, Done::Barrier) {
                return;
            }
            self.on_done(d);
        }
    }

    /// Finishes every job, stops the thread and removes an unused prepared file.
    pub fn shutdown(&mut self) {
        self.barrier();
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.collect();
        if let Some(p) = self.ready.take() {
            let _ = fs::remove_file(p);
        }
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Creates `path` (replacing a leftover), fallocates `bytes` and makes it durable.
fn preallocate(path: &Path, bytes: u64) -> Result<(), FileError> {
    let res = (|| {
        let f = create_preallocated(path, bytes)?;
        f.sync_all()
            .map_err(ferr("cannot sync preallocated segment", path))
    })();
    if res.is_err() {
        let _ = fs::remove_file(path);
    }
    res
}

/// Turns a prepared file into the segment `header` names: writes the header, makes it durable,
/// renames the file into place and makes the name durable. The prepared file is consumed
/// (removed on failure; the caller then creates the segment the slow way).
pub fn finalize_segment(
    dir: &Path,
    prepared: &Path,
    header: &SegmentHeader,
) -> Result<PathBuf, FileError> {
    let path = segment_path(dir, header.base_offset);
    let res = (|| {
        let f = OpenOptions::new()
            .write(true)
            .open(prepared)
            .map_err(ferr("cannot open prepared segment", prepared))?;
        let len = f
            .metadata()
            .map_err(ferr("cannot stat prepared segment", prepared))?
            .len();
        if len != header.segment_bytes {
            return Err(FileError {
                what: "prepared segment has another size than",
                path: prepared.to_path_buf(),
                source: std::io::ErrorKind::InvalidData.into(),
            });
        }
        let mut block = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        header.encode(&mut block);
        f.write_all_at(&block, 0)
            .and_then(|_| f.sync_data())
            .map_err(ferr("cannot write segment header", prepared))?;
        if path.exists() {
            return Err(FileError {
                what: "segment already exists",
                path: path.clone(),
                source: std::io::ErrorKind::AlreadyExists.into(),
            });
        }
        fs::rename(prepared, &path).map_err(ferr("cannot rename new segment", &path))?;
        sync_dir(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(prepared);
    }
    res.map(|()| path)
}
