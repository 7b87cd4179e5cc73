//! Seeded fault injection through the [`IoBackend`] seam (tests only): torn writes followed by
//! a "power cut", EIO, ENOSPC, short writes and failing fdatasync. The real backends are
//! io_uring and pwrite; this one performs real pwrites on the real files, then lies or fails
//! as the seed decides.

use std::collections::VecDeque;
use std::io;
use std::os::unix::io::RawFd;
use std::path::Path;

use crate::io::{AlignedBuf, IoBackend};
use crate::layout::BLOCK_BYTES;

/// Unit of a device's atomic write.
const SECTOR_BYTES: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    /// Some blocks written, the next one torn at a sector boundary, then every later op fails.
    TornThenCut,
    /// Some blocks written, then -EIO.
    Eio,
    /// Nothing written, -ENOSPC.
    Enospc,
    /// Some blocks written, the short count returned.
    Short,
    /// fdatasync fails with -EIO.
    SyncEio,
}

pub(crate) struct FaultIo {
    rng: u64,
    per_mille: u64,
    done: VecDeque<(u64, i32)>,
    cut: bool,
    scratch: AlignedBuf,
    pub injected: Vec<Fault>,
    pub fail_open: Option<i32>,
    /// Offer RWF_DSYNC writes (a write fault, or on success a sync fault, as for the pair).
    pub dsync: bool,
}

impl FaultIo {
    pub fn new(seed: u64, per_mille: u64, write_bytes_max: usize) -> Self {
        Self {
            rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            per_mille,
            done: VecDeque::new(),
            cut: false,
            scratch: AlignedBuf::new(write_bytes_max + 2 * BLOCK_BYTES as usize).expect("scratch"),
            injected: Vec::new(),
            fail_open: None,
            dsync: false,
        }
    }
    fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
    fn pwrite(&self, fd: RawFd, len: usize, pos: u64) -> i32 {
        // SAFETY: scratch holds at least `len` bytes (len <= the gathered length).
        let n = unsafe {
            libc::pwrite(
                fd,
                self.scratch.as_slice().as_ptr().cast(),
                len,
                pos as libc::off_t,
            )
        };
        if n < 0 {
            -io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO)
        } else {
            n as i32
        }
    }
}

impl IoBackend for FaultIo {
    fn name(&self) -> &'static str {
        "fault-injection"
    }
    fn open_segment(&mut self, path: &Path) -> io::Result<std::fs::File> {
        match self.fail_open {
            Some(errno) => Err(io::Error::from_raw_os_error(errno)),
            None => crate::io::open_direct(path, true),
        }
    }
    unsafe fn submit_writev(
        &mut self,
        fd: RawFd,
        iov: *const libc::iovec,
        iovcnt: u32,
        pos: u64,
        dsync: bool,
        token: u64,
    ) -> io::Result<()> {
        // Gather the iovecs into the aligned scratch buffer (zero-ahead writes may be larger
        // than write_bytes_max).
        let len: usize = (0..iovcnt as usize)
            // SAFETY: the caller guarantees `iov` points to `iovcnt` valid iovecs.
            .map(|i| unsafe { (*iov.add(i)).iov_len })
            .sum();
        if len + BLOCK_BYTES as usize > self.scratch.len() {
            self.scratch = AlignedBuf::new(len + 2 * BLOCK_BYTES as usize)?;
        }
        let mut total = 0usize;
        for i in 0..iovcnt as usize {
            // SAFETY: the caller guarantees `iov` points to `iovcnt` valid iovecs.
            let v = unsafe { *iov.add(i) };
            // SAFETY: each iovec describes readable memory (submit_writev's contract).
            let src = unsafe { std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len) };
            self.scratch.raw_mut()[total..total + src.len()].copy_from_slice(src);
            total += src.len();
        }
        if self.cut {
            self.done.push_back((token, -libc::EIO));
            return Ok(());
        }
        let blocks = total / BLOCK_BYTES as usize;
        let fault = if self.next() % 1000 < self.per_mille {
            Some(match self.next() % 4 {
                0 => Fault::TornThenCut,
                1 => Fault::Eio,
                2 => Fault::Enospc,
                _ => Fault::Short,
            })
        } else {
            None
        };
        let k = (self.next() as usize) % blocks.max(1);
        let res = match fault {
            None => self.pwrite(fd, total, pos),
            Some(Fault::TornThenCut) => {
                if k > 0 {
                    self.pwrite(fd, k * BLOCK_BYTES as usize, pos);
                }
                if k < blocks {
                    // Block k is torn. Devices write 512-byte sectors atomically, so a sector
                    // holds old or new bytes. The first block of a write may hold durable bytes
                    // (the partial tail rewritten whole): there only a prefix of new sectors
                    // lands. Later blocks hold no durable bytes: there the rest is garbage.
                    let at = k * BLOCK_BYTES as usize;
                    let sectors = 1 + (self.next() % 7) as usize;
                    let new_bytes = sectors * SECTOR_BYTES;
                    let garbage = k > 0;
                    let g = self.next();
                    let buf = self.scratch.raw_mut();
                    if garbage {
                        for (i, b) in buf[at + new_bytes..at + BLOCK_BYTES as usize]
                            .iter_mut()
                            .enumerate()
                        {
                            *b = (g >> (i % 8 * 8)) as u8 ^ i as u8;
                        }
                    }
                    buf.copy_within(at..at + BLOCK_BYTES as usize, 0);
                    let len = if garbage {
                        BLOCK_BYTES as usize
                    } else {
                        new_bytes
                    };
                    // SAFETY: scratch holds at least `len` bytes at its start.
                    unsafe {
                        libc::pwrite(
                            fd,
                            self.scratch.as_slice().as_ptr().cast(),
                            len,
                            (pos + at as u64) as libc::off_t,
                        )
                    };
                }
                self.cut = true;
                -libc::EIO
            }
            Some(Fault::Eio) => {
                if k > 0 {
                    self.pwrite(fd, k * BLOCK_BYTES as usize, pos);
                }
                -libc::EIO
            }
            Some(Fault::Enospc) => -libc::ENOSPC,
            Some(Fault::Short) => {
                if k > 0 {
                    self.pwrite(fd, k * BLOCK_BYTES as usize, pos)
                } else {
                    0
                }
            }
            Some(Fault::SyncEio) => unreachable!("not a write fault"),
        };
        if let Some(f) = fault {
            self.injected.push(f);
        }
        if dsync && fault.is_none() && res >= 0 && res as usize == total {
            // RWF_DSYNC: the write landed whole, now the implied fdatasync, which may fail too.
            self.submit_fdatasync(fd, token)?;
            if let Some(last) = self.done.back_mut() {
                if last.1 == 0 {
                    last.1 = res;
                }
            }
            return Ok(());
        }
        self.done.push_back((token, res));
        Ok(())
    }
    fn dsync_writes(&self) -> bool {
        self.dsync
    }
    fn submit_fdatasync(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        let res = if self.cut {
            -libc::EIO
        } else if self.next() % 1000 < self.per_mille / 2 {
            self.injected.push(Fault::SyncEio);
            -libc::EIO
        } else {
            // SAFETY: fdatasync has no memory-safety preconditions.
            if unsafe { libc::fdatasync(fd) } == 0 {
                0
            } else {
                -libc::EIO
            }
        };
        self.done.push_back((token, res));
        Ok(())
    }
    fn submit(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn reap<F: FnMut(u64, i32)>(
        &mut self,
        _wait: crate::io::Wait,
        mut on_done: F,
    ) -> io::Result<()> {
        while let Some((t, r)) = self.done.pop_front() {
            on_done(t, r);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pattern, AlignedBuf, AppendError, Log, LogConfig, LogOpenError, Record};

    const PAYLOAD_MAX: usize = 200;
    const SEED: u64 = 3;

    fn cfg() -> LogConfig {
        LogConfig {
            segment_bytes: 128 << 10,
            write_buffer_bytes: 64 << 10,
            write_bytes_max: 16 << 10,
            batch_bytes_max: 16 << 10,
            index_interval_bytes: 4 << 10,
            ..LogConfig::default()
        }
    }

    fn tempdir() -> tempfile::TempDir {
        // Not tmpfs: the log needs O_DIRECT.
        tempfile::Builder::new()
            .prefix("storage-nvme-fault-")
            .tempdir_in("/var/tmp")
            .expect("temp dir")
    }

    /// Checks every record of the log against the pattern; returns the end offset.
    fn verify(log: &Log<FaultIo>) -> u64 {
        let mut r = log.reader();
        let start = log.start_offset();
        r.seek_offset(start).expect("seek");
        let mut buf = AlignedBuf::new(64 << 10).expect("buf");
        let mut expect = [0u8; PAYLOAD_MAX];
        let mut next = start;
        while let Some(b) = r
            .read_batch(&mut buf)
            .expect("no corrupt bytes may be served")
        {
            for rec in b.records() {
                assert_eq!(rec.offset, next);
                let l = pattern::payload_len(SEED, rec.offset, PAYLOAD_MAX);
                pattern::fill(SEED, rec.offset, &mut expect[..l]);
                assert_eq!(rec.payload, &expect[..l], "record {} corrupted", rec.offset);
                next += 1;
            }
        }
        next
    }

    /// Appends pattern batches until `batches` are in or the log fails; returns the highest
    /// durable offset the log acknowledged.
    fn append_until_failure(
        log: &mut Log<FaultIo>,
        batches: u32,
        seed: u64,
    ) -> (u64, Option<String>) {
        let mut acked = log.durable_offset();
        let mut payloads = vec![0u8; 8 * PAYLOAD_MAX];
        for i in 0..batches {
            let base = log.next_offset();
            let n = 1 + ((seed + u64::from(i)) % 8) as usize;
            let mut spans = [(0usize, 0usize); 8];
            let mut at = 0;
            for (j, s) in spans.iter_mut().enumerate().take(n) {
                let o = base + j as u64;
                let l = pattern::payload_len(SEED, o, PAYLOAD_MAX);
                pattern::fill(SEED, o, &mut payloads[at..at + l]);
                *s = (at, l);
                at += l;
            }
            let recs: Vec<Record<'_>> = spans[..n]
                .iter()
                .enumerate()
                .map(|(j, &(a, l))| Record {
                    timestamp_ns: pattern::timestamp_ns(base + j as u64),
                    payload: &payloads[a..a + l],
                })
                .collect();
            let mut tries = 0;
            let res = loop {
                match log.append_batch(base, &recs) {
                    Err(AppendError::BackPressured) if tries < 1000 => {
                        tries += 1;
                        if let Err(e) = log.poll() {
                            break Err(AppendError::Failed(e));
                        }
                    }
                    other => break other,
                }
            };
            if let Err(e) = res {
                return (acked, Some(e.to_string()));
            }
            if i % 5 == 0 {
                if let Err(e) = log.flush() {
                    return (acked, Some(e.to_string()));
                }
            }
            match log.poll() {
                Ok(d) => {
                    assert!(d >= acked, "durable offset went backwards");
                    acked = d;
                }
                Err(e) => return (acked, Some(e.to_string())),
            }
        }
        match log.sync() {
            Ok(d) => (d, None),
            Err(e) => (acked, Some(e.to_string())),
        }
    }

    #[test]
    fn seeded_faults_lose_no_acknowledged_record_and_accept_no_corruption() {
        let seeds: Vec<u64> = match std::env::var("MS_FAULT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            Some(s) => vec![s],
            None => (0..24).collect(),
        };
        let mut kinds_seen = Vec::new();
        for seed in seeds {
            let dir = tempdir();
            let mut acked = 0u64;
            for life in 0..6u64 {
                let per_mille = if life == 5 { 0 } else { 60 };
                let mut io =
                    FaultIo::new(seed * 100 + life, per_mille, cfg().write_bytes_max as usize);
                // Odd seeds commit with RWF_DSYNC writes, even ones with write + fdatasync.
                io.dsync = seed % 2 == 1;
                let (mut log, report) = Log::open_with(dir.path(), cfg(), io)
                    .unwrap_or_else(|e| panic!("seed {seed} life {life}: open failed: {e}"));
                assert!(
                    report.next_offset >= acked,
                    "seed {seed} life {life}: acknowledged {acked} but recovered only {}",
                    report.next_offset
                );
                assert_eq!(verify(&log), report.next_offset, "seed {seed} life {life}");
                let (a, err) = append_until_failure(&mut log, 100, seed + life);
                if std::env::var("MS_FAULT_DEBUG").is_ok() {
                    eprintln!("seed {seed} life {life}: report {report:?} acked {a} next {} err {err:?} faults {:?}", log.next_offset(), log.backend().injected);
                }
                acked = acked.max(a);
                if let Some(e) = &err {
                    assert!(e.contains(".log"), "error must name the segment file: {e}");
                    // Once failed, nothing more is accepted or acknowledged.
                    let d = log.durable_offset();
                    assert!(matches!(
                        log.append_batch(
                            log.next_offset(),
                            &[Record {
                                timestamp_ns: 0,
                                payload: b"x"
                            }]
                        ),
                        Err(AppendError::Failed(_))
                    ));
                    assert!(log.poll().is_err());
                    assert_eq!(log.durable_offset(), d);
                } else if life == 5 {
                    assert_eq!(
                        acked,
                        log.next_offset(),
                        "a clean life makes everything durable"
                    );
                }
                kinds_seen.extend(log.backend().injected.iter().copied());
            }
        }
        for k in [
            Fault::TornThenCut,
            Fault::Eio,
            Fault::Enospc,
            Fault::Short,
            Fault::SyncEio,
        ] {
            assert!(
                kinds_seen.contains(&k) || std::env::var("MS_FAULT_SEED").is_ok(),
                "fault {k:?} never injected: widen the seeds"
            );
        }
    }

    #[test]
    fn read_only_directory_is_a_clear_open_error() {
        // Injected through the seam: as root, chmod does not stop writes.
        let dir = tempdir();
        let mut io = FaultIo::new(1, 0, 16 << 10);
        io.fail_open = Some(libc::EROFS);
        let err = match Log::open_with(dir.path(), cfg(), io) {
            Err(e) => e,
            Ok(_) => panic!("open must fail"),
        };
        let msg = err.to_string();
        assert!(matches!(err, LogOpenError::File(_)), "{msg}");
        assert!(
            msg.contains("00000000000000000000.log") && msg.contains("Read-only"),
            "{msg}"
        );
    }
}
