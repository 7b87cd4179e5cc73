//! The I/O edge: aligned (hugepage-backed when possible) buffers and the write backends.
//!
//! [`IoBackend`] is the seam between the log and the kernel. The log is generic over it (no
//! trait object on the hot path). The real backends are [`UringIo`] (O_DIRECT writes and
//! fdatasync through io_uring) and [`PwriteIo`] (synchronous `pwrite`/`fdatasync`, used only when
//! io_uring is unavailable); [`SysIo`] picks one at start-up. Tests add a fault-injecting backend.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;
use std::ptr::NonNull;

use crate::layout::BLOCK_BYTES;

/// Size of one huge page (x86-64 default), the rounding unit for hugepage mappings.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Where an [`AlignedBuf`]'s memory comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufBacking {
    /// MAP_HUGETLB anonymous mapping (2 MiB pages).
    HugePages,
    /// Ordinary anonymous mapping (4 KiB pages).
    Pages,
}

/// What a reader last loaded into a buffer (so a buffer can serve several batches per read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BufTag {
    pub reader_id: u64,
    pub segment_base: u64,
    pub file_pos: u64,
    pub len: usize,
    pub durable_at_load: u64,
}

/// A zero-initialised buffer aligned to [`BLOCK_BYTES`], suitable for O_DIRECT. Buffers of
/// 2 MiB or more are backed by huge pages when the pool has room, else by ordinary pages.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    map_len: usize,
    backing: BufBacking,
    pub(crate) tag: Option<BufTag>,
}

// SAFETY: AlignedBuf owns its mapping exclusively (like a Box<[u8]>); moving it between threads
// moves that ownership.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` bytes rounded up to a whole block.
    pub fn new(len: usize) -> io::Result<Self> {
        let len = (len.max(1) as u64).next_multiple_of(BLOCK_BYTES) as usize;
        if len >= HUGE_PAGE_BYTES {
            let map_len = len.next_multiple_of(HUGE_PAGE_BYTES);
            if let Some(ptr) = map_anon(map_len, libc::MAP_HUGETLB) {
                return Ok(Self {
                    ptr,
                    len,
                    map_len,
                    backing: BufBacking::HugePages,
                    tag: None,
                });
            }
        }
        match map_anon(len, 0) {
            Some(ptr) => Ok(Self {
                ptr,
                len,
                map_len: len,
                backing: BufBacking::Pages,
                tag: None,
            }),
            None => Err(io::Error::last_os_error()),
        }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn backing(&self) -> BufBacking {
        self.backing
    }
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr points to a live mapping of at least `len` initialised (zero-filled) bytes
        // owned by self; the shared borrow of self prevents concurrent mutation.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.tag = None;
        self.raw_mut()
    }
    pub(crate) fn raw_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice; the exclusive borrow of self makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: ptr/map_len describe exactly the mapping created in `new`, unmapped only here.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.map_len);
        }
    }
}

fn map_anon(len: usize, extra_flags: i32) -> Option<NonNull<u8>> {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
    // result is checked against MAP_FAILED before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        None
    } else {
        NonNull::new(p.cast())
    }
}

/// The file system holding `path`: statfs `f_type` and a name for the common ones. O_DIRECT
/// needs a block file system (ext4, xfs, btrfs); tmpfs figures would say nothing about disks.
pub fn fs_type(path: &Path) -> io::Result<(u64, &'static str)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs is plain data; all-zero is a valid value for it.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and s a valid, writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let magic = s.f_type as u64;
    let name = match magic {
        0xEF53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x0102_1994 => "tmpfs",
        0x794C_7630 => "overlayfs",
        0x6573_5546 => "fuse",
        _ => "other",
    };
    Ok((magic, name))
}

/// Preallocates the first `bytes` of `f` (unwritten extents: they read as zeros).
pub fn fallocate(f: &File, bytes: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(bytes).map_err(io::Error::other)?;
    // SAFETY: fallocate on an open fd with a non-negative range has no memory-safety
    // preconditions.
    if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a file for O_DIRECT reading and writing.
pub fn open_direct(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(path)
}

/// The storage seam: submits O_DIRECT writes and data syncs, reports completions by token.
pub trait IoBackend {
    /// A short name for logs and reports ("io_uring", "pwrite", ...).
    fn name(&self) -> &'static str;
    /// Opens an existing segment file for O_DIRECT writing.
    fn open_segment(&mut self, path: &Path) -> io::Result<File> {
        open_direct(path, true)
    }
    /// Queues a gathering write of the `iovcnt` buffers at `iov` to file position `pos`.
    ///
    /// With `dsync` (only when [`dsync_writes`](Self::dsync_writes) says so) it is an
    /// `RWF_DSYNC` write: when it completes successfully, its data and that of every write of
    /// `fd` completed before it was queued are durable, as if an fdatasync had followed (one
    /// operation instead of two; the file system flushes the device cache, or uses FUA).
    ///
    /// # Safety
    /// `iov` must point to `iovcnt` iovecs, and each must describe readable memory aligned for
    /// O_DIRECT; the iovecs and that memory must stay valid and unmodified until the completion
    /// carrying `token` has been reaped, and `fd` must stay open until then.
    unsafe fn submit_writev(
        &mut self,
        fd: RawFd,
        iov: *const libc::iovec,
        iovcnt: u32,
        pos: u64,
        dsync: bool,
        token: u64,
    ) -> io::Result<()>;
    /// Whether `submit_writev` takes `dsync = true`.
    fn dsync_writes(&self) -> bool {
        false
    }
    /// Queues an fdatasync of `fd`. It covers only writes that completed before it was queued.
    fn submit_fdatasync(&mut self, fd: RawFd, token: u64) -> io::Result<()>;
    /// Hands queued operations to the kernel.
    fn submit(&mut self) -> io::Result<()>;
    /// Calls `on_done(token, result)` for each completed operation (`result` = bytes written,
    /// 0 for a sync, or `-errno`). `wait` says whether to block until at least one completes.
    fn reap<F: FnMut(u64, i32)>(&mut self, wait: Wait, on_done: F) -> io::Result<()>;
}

/// How long [`IoBackend::reap`] may block for a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    No,
    Forever,
    /// At most this long (callers pass their time to the next deadline).
    Timeout(std::time::Duration),
}

/// Synchronous `pwrite`/`fdatasync` backend: operations run at submission.
pub struct PwriteIo {
    done: VecDeque<(u64, i32)>,
}

impl PwriteIo {
    pub fn new(inflight_max: usize) -> Self {
        Self {
            done: VecDeque::with_capacity(inflight_max + 2),
        }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

impl IoBackend for PwriteIo {
    fn name(&self) -> &'static str {
        "pwrite"
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
        let flags = if dsync { libc::RWF_DSYNC } else { 0 };
        // SAFETY: the caller guarantees iov describes iovcnt readable buffers and fd is open.
        let n = unsafe { libc::pwritev2(fd, iov, iovcnt as i32, pos as libc::off_t, flags) };
        self.done
            .push_back((token, if n < 0 { -errno() } else { n as i32 }));
        Ok(())
    }
    fn dsync_writes(&self) -> bool {
        true
    }
    fn submit_fdatasync(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        // SAFETY: fdatasync on any fd value is memory-safe; errors are returned.
        let r = unsafe { libc::fdatasync(fd) };
        self.done
            .push_back((token, if r < 0 { -errno() } else { 0 }));
        Ok(())
    }
    fn submit(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn reap<F: FnMut(u64, i32)>(&mut self, _wait: Wait, mut on_done: F) -> io::Result<()> {
        while let Some((t, r)) = self.done.pop_front() {
            on_done(t, r);
        }
        Ok(())
    }
}

/// io_uring backend: O_DIRECT writes and fdatasync as ring operations.
pub struct UringIo {
    ring: io_uring::IoUring,
    queued: u32,
    inflight: u32,
}

impl UringIo {
    pub fn new(entries: u32) -> io::Result<Self> {
        Ok(Self {
            ring: io_uring::IoUring::new(entries.next_power_of_two().max(8))?,
            queued: 0,
            inflight: 0,
        })
    }

    fn push(&mut self, e: &io_uring::squeue::Entry) -> io::Result<()> {
        if self.ring.submission().is_full() {
            self.ring.submit()?;
        }
        // SAFETY: the entry's iovecs and buffers are kept valid by the caller of submit_writev (or it
        // has no buffer, for fsync); the SQ has room (checked/flushed above).
        unsafe { self.ring.submission().push(e) }
            .map_err(|_| io::Error::other("io_uring submission queue full"))?;
        self.queued += 1;
        self.inflight += 1;
        Ok(())
    }
}

impl IoBackend for UringIo {
    fn name(&self) -> &'static str {
        "io_uring"
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
        let e = io_uring::opcode::Writev::new(io_uring::types::Fd(fd), iov, iovcnt)
            .offset(pos)
            .rw_flags(if dsync { libc::RWF_DSYNC } else { 0 })
            .build()
            .user_data(token);
        self.push(&e)
    }
    fn dsync_writes(&self) -> bool {
        true
    }
    fn submit_fdatasync(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        let e = io_uring::opcode::Fsync::new(io_uring::types::Fd(fd))
            .flags(io_uring::types::FsyncFlags::DATASYNC)
            .build()
            .user_data(token);
        self.push(&e)
    }
    fn submit(&mut self) -> io::Result<()> {
        if self.queued > 0 {
            self.ring.submit()?;
            self.queued = 0;
        }
        Ok(())
    }
    fn reap<F: FnMut(u64, i32)>(&mut self, wait: Wait, mut on_done: F) -> io::Result<()> {
        let idle = self.inflight > 0 && self.ring.completion().is_empty();
        // Entering the kernel also runs the task work that posts completions of operations
        // finished by io_uring's workers (fsync, and O_DIRECT writes that had to block).
        let res = match wait {
            Wait::Forever => self.ring.submit_and_wait(1),
            Wait::No if idle => self.ring.submit_and_wait(0),
            Wait::Timeout(d) if idle => {
                let ts = io_uring::types::Timespec::from(d);
                let args = io_uring::types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            _ => Ok(0),
        };
        match res {
            Ok(_) => self.queued = 0,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR) | Some(libc::ETIME) | Some(libc::EBUSY)
                ) => {}
            Err(e) => return Err(e),
        }
        for cqe in self.ring.completion() {
            self.inflight = self.inflight.saturating_sub(1);
            on_done(cqe.user_data(), cqe.result());
        }
        Ok(())
    }
}

/// Which backend [`SysIo::new`] uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoMode {
    /// io_uring, or pwrite (said on stderr) when io_uring cannot be set up.
    #[default]
    Auto,
    Uring,
    Pwrite,
}

/// The production backend, chosen at start-up.
pub enum SysIo {
    Uring(Box<UringIo>),
    Pwrite(PwriteIo),
}

impl SysIo {
    pub fn new(mode: IoMode, inflight_max: u32) -> io::Result<Self> {
        match mode {
            IoMode::Pwrite => Ok(Self::Pwrite(PwriteIo::new(inflight_max as usize))),
            IoMode::Uring => Ok(Self::Uring(Box::new(UringIo::new(inflight_max + 2)?))),
            IoMode::Auto => match UringIo::new(inflight_max + 2) {
                Ok(u) => Ok(Self::Uring(Box::new(u))),
                Err(e) => {
                    eprintln!("storage-nvme: io_uring unavailable ({e}); using the pwrite backend (slower, synchronous)");
                    Ok(Self::Pwrite(PwriteIo::new(inflight_max as usize)))
                }
            },
        }
    }
}

impl IoBackend for SysIo {
    fn name(&self) -> &'static str {
        match self {
            Self::Uring(u) => u.name(),
            Self::Pwrite(p) => p.name(),
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
        match self {
            // SAFETY: forwarded; the caller upholds submit_writev's contract.
            Self::Uring(u) => unsafe { u.submit_writev(fd, iov, iovcnt, pos, dsync, token) },
            // SAFETY: forwarded; the caller upholds submit_writev's contract.
            Self::Pwrite(p) => unsafe { p.submit_writev(fd, iov, iovcnt, pos, dsync, token) },
        }
    }
    fn dsync_writes(&self) -> bool {
        match self {
            Self::Uring(u) => u.dsync_writes(),
            Self::Pwrite(p) => p.dsync_writes(),
        }
    }
    fn submit_fdatasync(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        match self {
            Self::Uring(u) => u.submit_fdatasync(fd, token),
            Self::Pwrite(p) => p.submit_fdatasync(fd, token),
        }
    }
    fn submit(&mut self) -> io::Result<()> {
        match self {
            Self::Uring(u) => u.submit(),
            Self::Pwrite(p) => p.submit(),
        }
    }
    fn reap<F: FnMut(u64, i32)>(&mut self, wait: Wait, on_done: F) -> io::Result<()> {
        match self {
            Self::Uring(u) => u.reap(wait, on_done),
            Self::Pwrite(p) => p.reap(wait, on_done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buf_is_aligned_and_zeroed() {
        for len in [1, 4096, 5000, 3 << 20] {
            let b = AlignedBuf::new(len).unwrap();
            assert_eq!(b.as_slice().as_ptr() as usize % BLOCK_BYTES as usize, 0);
            assert!(b.len() >= len);
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
    }
}
