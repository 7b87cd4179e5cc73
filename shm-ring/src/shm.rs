//! Ring files: create (temp name, then rename), open and validate, map.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering as StdOrdering};

use crate::clock::{self, Calibration};
use crate::error::{RingCreateError, RingOpenError};
use crate::layout::*;
use crate::liveness;
use crate::ring::{Params, LIVENESS_TIMEOUT_MIN_NS};
use crate::{
    Backing, BackingKind, Mode, PublisherKind, RingConfig, RING_CAPACITY_MAX, RING_CAPACITY_MIN,
};

/// Default directory on hugetlbfs.
pub const HUGETLBFS_DIR: &str = "/dev/hugepages/memstreamer";
/// Default directory on tmpfs.
pub const DEV_SHM_DIR: &str = "/dev/shm/memstreamer";
/// statfs f_type of hugetlbfs.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
/// Longest ring name.
pub const RING_NAME_LEN_MAX: usize = 64;

/// A shared mapping of a whole ring file; unmapped on drop.
pub(crate) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; the ring protocol governs access.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: &std::fs::File, len: u64) -> io::Result<Mapping> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        // SAFETY: a fresh shared mapping of an open file; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr as *mut u8,
            len,
        })
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap; the length is the file
        // length, a multiple of the page size (2 MiB on hugetlbfs), so munmap
        // releases the whole mapping.
        let rc = unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
        debug_assert_eq!(rc, 0, "munmap of a ring mapping failed");
    }
}

/// Names are [A-Za-z0-9._-]{1,64}, not starting with '.' (temp files do).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= RING_NAME_LEN_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn is_hugetlbfs(dir: &Path) -> bool {
    let Ok(c) = cstr(dir) else { return false };
    // SAFETY: statfs writes into a zeroed, properly sized struct.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == HUGETLBFS_MAGIC
    }
}

/// Free 2 MiB pages in the default pool (free minus reserved), if readable.
fn hugepages_free() -> u64 {
    let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    if field("Hugepagesize:") != HUGE_PAGE_BYTES / 1024 {
        return 0;
    }
    field("HugePages_Free:").saturating_sub(field("HugePages_Rsvd:"))
}

pub(crate) fn validate_config(cfg: &RingConfig) -> Result<Params, RingCreateError> {
    let bad = |reason: String| Err(RingCreateError::InvalidConfig { reason });
    let cap = cfg.capacity_bytes;
    if !cap.is_power_of_two() || !(RING_CAPACITY_MIN..=RING_CAPACITY_MAX).contains(&cap) {
        return bad(format!(
            "capacity_bytes {cap} must be a power of two in {RING_CAPACITY_MIN}..={RING_CAPACITY_MAX}"
        ));
    }
    if cfg.subscribers_max == 0 || cfg.subscribers_max > SUBSCRIBERS_MAX {
        return bad(format!(
            "subscribers_max {} must be in 1..={SUBSCRIBERS_MAX}",
            cfg.subscribers_max
        ));
    }
    if cfg.liveness_timeout_ns < LIVENESS_TIMEOUT_MIN_NS {
        return bad(format!(
            "liveness_timeout_ns {} must be at least {LIVENESS_TIMEOUT_MIN_NS} (10 heartbeat intervals)",
            cfg.liveness_timeout_ns
        ));
    }
    if cfg.claim_timeout_ns == 0 && !cfg!(loom) {
        return bad("claim_timeout_ns must be > 0".into());
    }
    Ok(Params {
        capacity: cap,
        descriptors: descriptors_for(cap),
        mode: cfg.mode,
        kind: cfg.publishers,
        subscribers_max: cfg.subscribers_max,
        liveness_timeout_ns: cfg.liveness_timeout_ns,
        claim_timeout_ns: cfg.claim_timeout_ns,
    })
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

fn file_bytes(cap: u64, kind: BackingKind) -> u64 {
    let page = if kind == BackingKind::Hugetlbfs {
        HUGE_PAGE_BYTES
    } else {
        4096
    };
    round_up(file_bytes_min(cap), page)
}

/// Create a ring file per `cfg`. Returns the mapping, path and backing used.
pub(crate) fn create(
    name: &str,
    cfg: &RingConfig,
    p: Params,
) -> Result<(Mapping, PathBuf, BackingKind), RingCreateError> {
    let huge_bytes = file_bytes(p.capacity, BackingKind::Hugetlbfs);
    let (dir, kind, fallback) = match (cfg.backing, &cfg.dir) {
        (Backing::DevShm, dir) => (
            dir.clone().unwrap_or_else(|| DEV_SHM_DIR.into()),
            BackingKind::DevShm,
            false,
        ),
        (Backing::Hugetlbfs, dir) => (
            dir.clone().unwrap_or_else(|| HUGETLBFS_DIR.into()),
            BackingKind::Hugetlbfs,
            false,
        ),
        (Backing::Auto, Some(dir)) => {
            ensure_dir(dir)?;
            let kind = if is_hugetlbfs(dir) {
                BackingKind::Hugetlbfs
            } else {
                BackingKind::DevShm
            };
            (dir.clone(), kind, false)
        }
        (Backing::Auto, None) => {
            let parent = Path::new(HUGETLBFS_DIR).parent().unwrap_or(Path::new("/"));
            if !is_hugetlbfs(parent) {
                eprintln!(
                    "shm-ring: {} is not a hugetlbfs mount; ring {name:?} uses /dev/shm",
                    parent.display()
                );
                (DEV_SHM_DIR.into(), BackingKind::DevShm, false)
            } else if hugepages_free() * HUGE_PAGE_BYTES < huge_bytes {
                eprintln!(
                    "shm-ring: hugepage pool has {} free 2 MiB pages, ring {name:?} needs {}; using /dev/shm",
                    hugepages_free(),
                    huge_bytes / HUGE_PAGE_BYTES
                );
                (DEV_SHM_DIR.into(), BackingKind::DevShm, false)
            } else {
                (HUGETLBFS_DIR.into(), BackingKind::Hugetlbfs, true)
            }
        }
    };
    match create_in(&dir, name, p, kind) {
        Err(e @ (RingCreateError::NoHugepages { .. } | RingCreateError::NoSpace { .. }))
            if fallback =>
        {
            eprintln!("shm-ring: {e}; ring {name:?} falls back to /dev/shm");
            let dir = PathBuf::from(DEV_SHM_DIR);
            create_in(&dir, name, p, BackingKind::DevShm)
                .map(|(m, path)| (m, path, BackingKind::DevShm))
        }
        r => r.map(|(m, path)| (m, path, kind)),
    }
    .inspect(|(_, path, kind)| {
        let what = match kind {
            BackingKind::Hugetlbfs => "hugetlbfs (2 MiB pages)",
            BackingKind::DevShm => "/dev/shm (tmpfs, 4 KiB pages)",
        };
        eprintln!("shm-ring: created ring {} on {what}", path.display());
    })
}

fn ensure_dir(dir: &Path) -> Result<(), RingCreateError> {
    match std::fs::create_dir_all(dir) {
        Ok(()) => {}
        Err(e) => {
            return Err(match errno(&e) {
                libc::ENOTDIR | libc::EEXIST => RingCreateError::NotADirectory { path: dir.into() },
                libc::EACCES | libc::EPERM | libc::EROFS => {
                    RingCreateError::PermissionDenied { path: dir.into() }
                }
                _ => RingCreateError::Io {
                    op: "create directory",
                    path: dir.into(),
                    source: e,
                },
            })
        }
    }
    if !dir.is_dir() {
        return Err(RingCreateError::NotADirectory { path: dir.into() });
    }
    Ok(())
}

/// Removes the temp file unless disarmed.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

static TEMP_COUNTER: StdAtomicU64 = StdAtomicU64::new(0);

fn create_in(
    dir: &Path,
    name: &str,
    p: Params,
    kind: BackingKind,
) -> Result<(Mapping, PathBuf), RingCreateError> {
    if kind == BackingKind::Hugetlbfs && !dir.exists() {
        // Do not create a directory on some other filesystem first.
        let parent = dir.parent().unwrap_or(Path::new("/"));
        if !is_hugetlbfs(parent) {
            return Err(RingCreateError::NoHugepages {
                path: dir.into(),
                reason: format!("{} is not a hugetlbfs mount", parent.display()),
            });
        }
    }
    ensure_dir(dir)?;
    if kind == BackingKind::Hugetlbfs && !is_hugetlbfs(dir) {
        return Err(RingCreateError::NoHugepages {
            path: dir.into(),
            reason: "the directory is not on a hugetlbfs mount".into(),
        });
    }
    let path = dir.join(name);
    check_existing(&path)?;
    remove_stale_temps(dir, name);
    let bytes = file_bytes(p.capacity, kind);
    let (pid, start_ticks) = liveness::this_process();
    let tmp = dir.join(format!(
        ".{name}.{pid}.{}.tmp",
        TEMP_COUNTER.fetch_add(1, StdOrdering::Relaxed)
    ));
    let io_err = |op: &'static str, path: &Path, e: io::Error| match errno(&e) {
        libc::EACCES | libc::EPERM | libc::EROFS => {
            RingCreateError::PermissionDenied { path: path.into() }
        }
        libc::ENOSPC | libc::EDQUOT | libc::EFBIG if kind == BackingKind::DevShm => {
            RingCreateError::NoSpace {
                dir: dir.into(),
                bytes,
            }
        }
        libc::ENOSPC | libc::ENOMEM if kind == BackingKind::Hugetlbfs => {
            RingCreateError::NoHugepages {
                path: path.into(),
                reason: format!(
                    "{op} of {} 2 MiB pages failed: {e}",
                    bytes / HUGE_PAGE_BYTES
                ),
            }
        }
        _ => RingCreateError::Io {
            op,
            path: path.into(),
            source: e,
        },
    };
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&tmp)
            .map_err(|e| io_err("create", &tmp, e))?
    };
    let mut guard = TempFile(Some(tmp.clone()));
    file.set_len(bytes)
        .map_err(|e| io_err("ftruncate", &tmp, e))?;
    {
        use std::os::fd::AsRawFd;
        // Reserve the memory now: a full tmpfs or an empty pool must fail here
        // with an error, not later with SIGBUS on first touch.
        // SAFETY: plain syscall on an open fd.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, bytes as libc::off_t) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if errno(&e) != libc::EOPNOTSUPP {
                return Err(io_err("fallocate", &tmp, e));
            }
        }
    }
    let map = Mapping::new(&file, bytes).map_err(|e| io_err("mmap", &tmp, e))?;
    let cal = clock::calibration();
    // SAFETY: the mapping is `bytes` >= file_bytes_min long, private to us
    // (the file is not yet visible under its name), 4 KiB aligned.
    unsafe { init_header(map.base(), p, kind, bytes, pid, start_ticks, cal) };
    let (from, to) = (
        cstr(&tmp).map_err(|e| io_err("rename", &tmp, e))?,
        cstr(&path).map_err(|e| io_err("rename", &path, e))?,
    );
    // SAFETY: valid NUL-terminated paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if errno(&e) == libc::EEXIST {
            // Another process created the ring between our check and now.
            check_existing(&path)?;
            return Err(RingCreateError::Exists { path, pid: 0 });
        }
        return Err(io_err("rename", &path, e));
    }
    guard.0 = None; // renamed into place: keep it
    Ok((map, path))
}

/// Write a fresh header. The rest of the file is zero (fresh file): tail
/// (0, 0), all slots FREE, all descriptors EMPTY.
///
/// # Safety
/// `base` points at a writable mapping of at least HEADER_BYTES bytes that no
/// other process can see yet.
unsafe fn init_header(
    base: *mut u8,
    p: Params,
    kind: BackingKind,
    bytes: u64,
    pid: u32,
    start: u64,
    cal: Calibration,
) {
    let put64 = |off: usize, v: u64| {
        // SAFETY: off + 8 <= HEADER_BYTES (layout.rs constants); aligned.
        unsafe { std::ptr::write(base.add(off) as *mut u64, v.to_le()) }
    };
    let put32 = |off: usize, v: u32| {
        // SAFETY: as put64.
        unsafe { std::ptr::write(base.add(off) as *mut u32, v.to_le()) }
    };
    put32(VERSION_OFFSET, VERSION);
    put32(HEADER_BYTES_OFFSET, HEADER_BYTES as u32);
    put64(CAPACITY_BYTES_OFFSET, p.capacity);
    put64(DESCRIPTORS_OFFSET, p.descriptors);
    put64(FILE_BYTES_OFFSET, bytes);
    put32(
        MODE_OFFSET,
        if p.mode == Mode::Reliable {
            MODE_RELIABLE
        } else {
            MODE_LOSSY
        },
    );
    put32(
        PUBLISHER_KIND_OFFSET,
        if p.kind == PublisherKind::Exclusive {
            KIND_EXCLUSIVE
        } else {
            KIND_SHARED
        },
    );
    put32(SUBSCRIBERS_MAX_OFFSET, p.subscribers_max);
    put32(
        FLAGS_OFFSET,
        if kind == BackingKind::Hugetlbfs {
            FLAG_HUGETLBFS
        } else {
            0
        },
    );
    put64(LIVENESS_TIMEOUT_NS_OFFSET, p.liveness_timeout_ns);
    put64(CLAIM_TIMEOUT_NS_OFFSET, p.claim_timeout_ns);
    put64(CREATOR_PID_OFFSET, u64::from(pid));
    put64(CREATOR_START_TICKS_OFFSET, start);
    let unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    put64(CREATED_UNIX_NS_OFFSET, unix_ns);
    put64(CLOCK_TSC_BASE_OFFSET, cal.tsc_base);
    put64(CLOCK_NS_BASE_OFFSET, cal.ns_base);
    put64(CLOCK_MULT_OFFSET, cal.mult);
    put64(MAGIC_OFFSET, MAGIC);
}

/// Everything `open` and `inspect` learn from a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderInfo {
    pub version: u32,
    pub capacity_bytes: u64,
    pub descriptors: u64,
    pub file_bytes: u64,
    pub mode: Mode,
    pub publishers: PublisherKind,
    pub subscribers_max: u32,
    pub hugetlbfs: bool,
    pub liveness_timeout_ns: u64,
    pub claim_timeout_ns: u64,
    pub creator_pid: u64,
    pub creator_start_ticks: u64,
    pub created_unix_ns: u64,
    pub clock: Calibration,
}

/// Why a header is unusable (mapped to the caller's error type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    Foreign(String),
    Version(u32),
    Corrupt(&'static str, String),
}

/// Parse and validate a header read from an untrusted file of `file_len` bytes.
pub fn parse_header(buf: &[u8], file_len: u64) -> Result<HeaderInfo, HeaderError> {
    let u64_at = |off: usize| {
        buf.get(off..off + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    };
    let u32_at = |off: usize| {
        buf.get(off..off + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    };
    let corrupt = |f: &'static str, r: String| Err(HeaderError::Corrupt(f, r));
    if buf.len() < TAIL_OFFSET || file_len < HEADER_BYTES {
        return Err(HeaderError::Foreign(format!(
            "file of {file_len} bytes is too short for a ring header"
        )));
    }
    if u64_at(MAGIC_OFFSET) != Some(MAGIC) {
        return Err(HeaderError::Foreign("bad magic".into()));
    }
    let version = u32_at(VERSION_OFFSET).unwrap_or(0);
    if version != VERSION {
        return Err(HeaderError::Version(version));
    }
    let g64 = |off| u64_at(off).unwrap_or(0);
    let g32 = |off| u32_at(off).unwrap_or(0);
    if g32(HEADER_BYTES_OFFSET) as u64 != HEADER_BYTES {
        return corrupt(
            "header_bytes",
            format!("is {}, expected {HEADER_BYTES}", g32(HEADER_BYTES_OFFSET)),
        );
    }
    let cap = g64(CAPACITY_BYTES_OFFSET);
    if !cap.is_power_of_two() || !(RING_CAPACITY_MIN..=RING_CAPACITY_MAX).contains(&cap) {
        return corrupt(
            "capacity_bytes",
            format!("{cap} is not a power of two in range"),
        );
    }
    let descriptors = g64(DESCRIPTORS_OFFSET);
    if descriptors != descriptors_for(cap) {
        return corrupt(
            "descriptors",
            format!("{descriptors} does not match capacity {cap}"),
        );
    }
    let fb = g64(FILE_BYTES_OFFSET);
    if fb != file_len || fb < file_bytes_min(cap) {
        return corrupt(
            "file_bytes",
            format!(
                "header says {fb}, file has {file_len}, ring needs {}",
                file_bytes_min(cap)
            ),
        );
    }
    let mode = match g32(MODE_OFFSET) {
        MODE_RELIABLE => Mode::Reliable,
        MODE_LOSSY => Mode::Lossy,
        m => return corrupt("mode", format!("{m} is not a known mode")),
    };
    let publishers = match g32(PUBLISHER_KIND_OFFSET) {
        KIND_EXCLUSIVE => PublisherKind::Exclusive,
        KIND_SHARED => PublisherKind::Shared,
        k => return corrupt("publisher_kind", format!("{k} is not a known kind")),
    };
    let subscribers_max = g32(SUBSCRIBERS_MAX_OFFSET);
    if subscribers_max == 0 || subscribers_max > SUBSCRIBERS_MAX {
        return corrupt(
            "subscribers_max",
            format!("{subscribers_max} not in 1..={SUBSCRIBERS_MAX}"),
        );
    }
    let flags = g32(FLAGS_OFFSET);
    if flags & !FLAG_HUGETLBFS != 0 {
        return corrupt("flags", format!("{flags:#x} has unknown bits"));
    }
    let liveness_timeout_ns = g64(LIVENESS_TIMEOUT_NS_OFFSET);
    if liveness_timeout_ns < LIVENESS_TIMEOUT_MIN_NS {
        return corrupt(
            "liveness_timeout_ns",
            format!("{liveness_timeout_ns} is below {LIVENESS_TIMEOUT_MIN_NS}"),
        );
    }
    let claim_timeout_ns = g64(CLAIM_TIMEOUT_NS_OFFSET);
    if claim_timeout_ns == 0 {
        return corrupt("claim_timeout_ns", "is 0".into());
    }
    let clock = Calibration {
        tsc_base: g64(CLOCK_TSC_BASE_OFFSET),
        ns_base: g64(CLOCK_NS_BASE_OFFSET),
        mult: g64(CLOCK_MULT_OFFSET),
    };
    if !clock.is_valid() {
        return corrupt(
            "clock_mult",
            format!("{} is outside the plausible TSC range", clock.mult),
        );
    }
    Ok(HeaderInfo {
        version,
        capacity_bytes: cap,
        descriptors,
        file_bytes: fb,
        mode,
        publishers,
        subscribers_max,
        hugetlbfs: flags & FLAG_HUGETLBFS != 0,
        liveness_timeout_ns,
        claim_timeout_ns,
        creator_pid: g64(CREATOR_PID_OFFSET),
        creator_start_ticks: g64(CREATOR_START_TICKS_OFFSET),
        created_unix_ns: g64(CREATED_UNIX_NS_OFFSET),
        clock,
    })
}

impl HeaderInfo {
    pub(crate) fn params(&self) -> Params {
        Params {
            capacity: self.capacity_bytes,
            descriptors: self.descriptors,
            mode: self.mode,
            kind: self.publishers,
            subscribers_max: self.subscribers_max,
            liveness_timeout_ns: self.liveness_timeout_ns,
            claim_timeout_ns: self.claim_timeout_ns,
        }
    }
}

/// Read the first HEADER_BYTES of a file (pread works on hugetlbfs too).
fn read_header(file: &std::fs::File) -> io::Result<(Vec<u8>, u64)> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; HEADER_BYTES.min(len) as usize];
    file.read_exact_at(&mut buf, 0)?;
    Ok((buf, len))
}

/// Pids of processes using a ring: its creator, exclusive owner and active
/// subscribers, read from a header buffer (slots are plain u64s here).
fn users(buf: &[u8], info: &HeaderInfo) -> Vec<(u64, u64)> {
    let g = |off: usize| {
        buf.get(off..off + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .unwrap_or(0)
    };
    let mut out = vec![(info.creator_pid, info.creator_start_ticks)];
    let mut slot = |base: usize| {
        let st = g(base + SLOT_STATE_OFFSET) & 0xff;
        if st == SLOT_ACTIVE {
            out.push((g(base + SLOT_PID_OFFSET), g(base + SLOT_START_TICKS_OFFSET)));
        }
    };
    slot(OWNER_SLOT_OFFSET);
    for i in 0..info.subscribers_max as usize {
        slot(SUBSCRIBER_TABLE_OFFSET + i * SLOT_BYTES);
    }
    out
}

/// An existing file at the ring's path: live ring -> Exists; ring whose users
/// are all dead -> removed; anything else -> Foreign (left alone).
fn check_existing(path: &Path) -> Result<(), RingCreateError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if errno(&e) == libc::ENOENT => return Ok(()),
        Err(e) if matches!(errno(&e), libc::EACCES | libc::EPERM) => {
            return Err(RingCreateError::PermissionDenied { path: path.into() })
        }
        Err(e) => {
            return Err(RingCreateError::Io {
                op: "open existing",
                path: path.into(),
                source: e,
            })
        }
    };
    let (buf, len) = read_header(&file).map_err(|e| RingCreateError::Io {
        op: "read header of",
        path: path.into(),
        source: e,
    })?;
    let info = match parse_header(&buf, len) {
        Ok(i) => i,
        Err(HeaderError::Foreign(r)) => {
            return Err(RingCreateError::Foreign {
                path: path.into(),
                reason: r,
            })
        }
        Err(HeaderError::Version(v)) => {
            return Err(RingCreateError::Foreign {
                path: path.into(),
                reason: format!("ring layout version {v}, this build writes {VERSION}"),
            })
        }
        Err(HeaderError::Corrupt(f, r)) => {
            return Err(RingCreateError::Foreign {
                path: path.into(),
                reason: format!("corrupt header: {f} {r}"),
            })
        }
    };
    if let Some(&(pid, _)) = users(&buf, &info)
        .iter()
        .find(|(pid, start)| liveness::is_alive(*pid, *start))
    {
        return Err(RingCreateError::Exists {
            path: path.into(),
            pid: pid as u32,
        });
    }
    eprintln!(
        "shm-ring: removing stale ring file {} (creator pid {} and all its users are gone)",
        path.display(),
        info.creator_pid
    );
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == libc::ENOENT => Ok(()),
        Err(e) => Err(RingCreateError::Io {
            op: "remove stale",
            path: path.into(),
            source: e,
        }),
    }
}

/// Remove `.<name>.<pid>.<n>.tmp` files left by creators that died mid-create.
fn remove_stale_temps(dir: &Path, name: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let prefix = format!(".{name}.");
    for e in entries.flatten() {
        let f = e.file_name();
        let Some(f) = f.to_str() else { continue };
        let Some(rest) = f.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".tmp")) else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if std::fs::metadata(format!("/proc/{pid}")).is_err() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Open and map an existing ring.
pub(crate) fn open(
    name: &str,
    dir: Option<&Path>,
) -> Result<(Mapping, HeaderInfo, PathBuf), RingOpenError> {
    let dirs: Vec<PathBuf> = match dir {
        Some(d) => vec![d.into()],
        None => vec![HUGETLBFS_DIR.into(), DEV_SHM_DIR.into()],
    };
    for d in &dirs {
        let path = d.join(name);
        let io = |op, e| RingOpenError::Io {
            op,
            path: path.clone(),
            source: e,
        };
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if matches!(errno(&e), libc::ENOENT | libc::ENOTDIR) => continue,
            Err(e) if matches!(errno(&e), libc::EACCES | libc::EPERM | libc::EROFS) => {
                return Err(RingOpenError::PermissionDenied { path })
            }
            Err(e) => return Err(io("open", e)),
        };
        if !file.metadata().map_err(|e| io("stat", e))?.is_file() {
            return Err(RingOpenError::Foreign {
                path,
                reason: "not a regular file".into(),
            });
        }
        let (buf, len) = read_header(&file).map_err(|e| io("read header of", e))?;
        let info = parse_header(&buf, len).map_err(|e| match e {
            HeaderError::Foreign(reason) => RingOpenError::Foreign {
                path: path.clone(),
                reason,
            },
            HeaderError::Version(found) => RingOpenError::VersionMismatch {
                path: path.clone(),
                found,
                expected: VERSION,
            },
            HeaderError::Corrupt(field, reason) => RingOpenError::Corrupt {
                path: path.clone(),
                field,
                reason,
            },
        })?;
        let map = Mapping::new(&file, info.file_bytes).map_err(|e| io("mmap", e))?;
        clock::adopt(info.clock);
        return Ok((map, info, path));
    }
    Err(RingOpenError::NotFound {
        name: name.into(),
        dirs,
    })
}

/// Read a ring file's header without mapping it (for `ms-ring inspect`).
pub fn read_header_info(path: &Path) -> Result<HeaderInfo, RingOpenError> {
    let file = std::fs::File::open(path).map_err(|e| RingOpenError::Io {
        op: "open",
        path: path.into(),
        source: e,
    })?;
    let (buf, len) = read_header(&file).map_err(|e| RingOpenError::Io {
        op: "read",
        path: path.into(),
        source: e,
    })?;
    parse_header(&buf, len).map_err(|e| match e {
        HeaderError::Foreign(reason) => RingOpenError::Foreign {
            path: path.into(),
            reason,
        },
        HeaderError::Version(found) => RingOpenError::VersionMismatch {
            path: path.into(),
            found,
            expected: VERSION,
        },
        HeaderError::Corrupt(field, reason) => RingOpenError::Corrupt {
            path: path.into(),
            field,
            reason,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted() {
        assert!(valid_name("orders.p0-v1_x"));
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
