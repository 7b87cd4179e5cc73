//! DPDK's Environment Abstraction Layer: once per process, from the node's config.
//!
//! - EAL can be initialized once per process (DPDK does not support a second `rte_eal_init`,
//!   even after `rte_eal_cleanup`): [`Eal::init`] refuses a second call with a clear error, so
//!   a node restart is a process restart (as systemd does it).
//! - Memory comes from the project's hugepage pool (`scripts/hugepages.sh`, hugetlbfs at
//!   `huge_dir`) with `--huge-unlink`: the files are unlinked right after mapping, so nothing is
//!   left in hugetlbfs even after SIGKILL. The pool is checked first: too few free pages is a
//!   clear error, never a half-initialized EAL.
//! - `--file-prefix` is per node; the runtime directory DPDK makes for it
//!   (`/var/run/dpdk/<prefix>`) is removed at cleanup.
//! - One lcore (the main one, the thread that calls init) on the cores of the config, or on
//!   every CPU this process may use: no dedicated core is taken; the caller's CPU affinity is
//!   restored after init (EAL pins the main thread), so the agents' threads are placed by the
//!   node's threading mode as for the other backends.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use super::sys;

/// 2 MiB pages: the only size the project's pool uses.
pub const HUGEPAGE_BYTES: u64 = 2 << 20;
/// Smallest and largest EAL memory (MiB).
pub const MEMORY_MB_MIN: u32 = 16;
pub const MEMORY_MB_MAX: u32 = 16 << 10;
/// Longest `--file-prefix` (DPDK puts it in socket paths).
pub const FILE_PREFIX_BYTES_MAX: usize = 32;
/// Where DPDK keeps a primary process's runtime files (as root).
pub const RUNTIME_DIR_ROOT: &str = "/var/run/dpdk";

const _: () = assert!(MEMORY_MB_MIN as u64 * (1 << 20) >= 8 * HUGEPAGE_BYTES);

/// EAL's life in this process: 0 never started, 1 running, 2 failed or cleaned up.
static EAL_STATE: AtomicU8 = AtomicU8::new(0);
const EAL_NEVER: u8 = 0;
const EAL_RUNNING: u8 = 1;
const EAL_SPENT: u8 = 2;

/// What EAL starts with.
#[derive(Clone, Debug)]
pub struct EalConfig {
    /// `--file-prefix`: unique per node on a host.
    pub file_prefix: String,
    /// hugetlbfs mount of the project's pool (`--huge-dir`).
    pub huge_dir: PathBuf,
    /// `-m`: MiB of hugepage memory EAL reserves at start.
    pub memory_mb: u32,
    /// CPUs the main lcore may run on (empty: every CPU this process may use).
    pub cores: Vec<usize>,
    /// `--vdev` devices (e.g. `net_af_packet0,iface=veth0`).
    pub vdevs: Vec<String>,
    /// `-a` PCI devices (bound to vfio-pci); none: `--no-pci` (no bus scan).
    pub pci: Vec<String>,
}

/// Why EAL did not start. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum EalInitError {
    #[error("EAL was already initialized in this process (DPDK allows it once per process): run one DPDK node per process; restart the process to restart the node")]
    AlreadyInitialized,
    #[error("memory_mb {0} not in {MEMORY_MB_MIN}..={MEMORY_MB_MAX}")]
    Memory(u32),
    #[error("file prefix {0:?} must be 1..={FILE_PREFIX_BYTES_MAX} characters of [A-Za-z0-9_-]")]
    FilePrefix(String),
    #[error("{} is not a hugetlbfs mount: run `scripts/hugepages.sh reserve` (it mounts the pool there), or set dpdk_huge_dir", .0.display())]
    HugeDir(PathBuf),
    #[error("DPDK needs {need} free 2 MiB hugepages for {memory_mb} MiB, {free} are free: run `scripts/hugepages.sh reserve`, or lower dpdk_memory_mb")]
    NoHugepages {
        need: u64,
        free: u64,
        memory_mb: u32,
    },
    #[error("an EAL argument contains a NUL byte: {0:?}")]
    Argument(String),
    #[error("rte_eal_init failed: {detail} (EAL arguments: {args}); check the DPDK log above, the device names and `scripts/hugepages.sh status`")]
    Init { detail: String, args: String },
}

/// Free and total 2 MiB pages of the default pool (from /proc/meminfo).
pub fn hugepages_free() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/meminfo") else {
        return 0;
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let size_kb = field("Hugepagesize:");
    if size_kb * 1024 != HUGEPAGE_BYTES {
        return 0;
    }
    field("HugePages_Free:").saturating_sub(field("HugePages_Rsvd:"))
}

fn is_hugetlbfs(dir: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts.lines().any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() > 2 && cols[2] == "hugetlbfs" && Path::new(cols[1]) == dir
    })
}

/// The EAL arguments for `cfg` (argv[0] first).
pub fn eal_args(cfg: &EalConfig, allowed_cpus: &[usize]) -> Vec<String> {
    let cpus = if cfg.cores.is_empty() {
        allowed_cpus
    } else {
        &cfg.cores
    };
    let set = cpus
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec![
        "memstreamer".to_string(),
        format!("--file-prefix={}", cfg.file_prefix),
        "--huge-unlink".to_string(),
        format!("--huge-dir={}", cfg.huge_dir.display()),
        "-m".to_string(),
        cfg.memory_mb.to_string(),
        // One lcore, floating over the allowed CPUs: no core is dedicated to DPDK.
        format!("--lcores=0@({set})"),
        "--no-telemetry".to_string(),
        "--log-level=*:warning".to_string(),
    ];
    for v in &cfg.vdevs {
        args.push(format!("--vdev={v}"));
    }
    if cfg.pci.is_empty() {
        args.push("--no-pci".to_string());
    }
    for p in &cfg.pci {
        args.push(format!("--allow={p}"));
    }
    args
}

fn allowed_cpus() -> (Vec<usize>, Option<nix::sched::CpuSet>) {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok();
    let cpus = match &set {
        Some(s) => (0..nix::sched::CpuSet::count())
            .filter(|&c| s.is_set(c).unwrap_or(false))
            .collect(),
        None => vec![0],
    };
    (cpus, set)
}

/// The running EAL of this process; [`Eal::cleanup`] ends it (once).
#[derive(Debug)]
pub struct Eal {
    file_prefix: String,
    args: String,
}

impl Eal {
    /// Checks the pool, then runs `rte_eal_init` with [`eal_args`]; once per process.
    pub fn init(cfg: &EalConfig) -> Result<Eal, EalInitError> {
        Self::check(cfg)?;
        if EAL_STATE
            .compare_exchange(EAL_NEVER, EAL_RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(EalInitError::AlreadyInitialized);
        }
        let (cpus, saved_affinity) = allowed_cpus();
        let args = eal_args(cfg, &cpus);
        let joined = args.join(" ");
        let c_args = match args
            .iter()
            .map(|a| CString::new(a.as_str()))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(v) => v,
            Err(_) => {
                EAL_STATE.store(EAL_SPENT, Ordering::Release);
                return Err(EalInitError::Argument(joined));
            }
        };
        let mut argv: Vec<*mut std::os::raw::c_char> =
            c_args.iter().map(|a| a.as_ptr().cast_mut()).collect();
        // SAFETY: argv holds argc valid NUL-terminated strings that outlive the call (EAL may
        // permute the pointer array, which is ours and writable; it does not keep the strings
        // past init except by copying); EAL_STATE guarantees this runs at most once per process.
        let rc = unsafe { sys::rte_eal_init(argv.len() as i32, argv.as_mut_ptr()) };
        if let Some(set) = saved_affinity {
            // EAL pinned this thread to the main lcore's CPUs: give the node its placement back.
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
        }
        if rc < 0 {
            EAL_STATE.store(EAL_SPENT, Ordering::Release);
            remove_runtime_dir(&cfg.file_prefix);
            return Err(EalInitError::Init {
                detail: errno_text(),
                args: joined,
            });
        }
        Ok(Eal {
            file_prefix: cfg.file_prefix.clone(),
            args: joined,
        })
    }

    fn check(cfg: &EalConfig) -> Result<(), EalInitError> {
        if !(MEMORY_MB_MIN..=MEMORY_MB_MAX).contains(&cfg.memory_mb) {
            return Err(EalInitError::Memory(cfg.memory_mb));
        }
        let p = &cfg.file_prefix;
        if p.is_empty()
            || p.len() > FILE_PREFIX_BYTES_MAX
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(EalInitError::FilePrefix(p.clone()));
        }
        if !is_hugetlbfs(&cfg.huge_dir) {
            return Err(EalInitError::HugeDir(cfg.huge_dir.clone()));
        }
        let need = (u64::from(cfg.memory_mb) << 20).div_ceil(HUGEPAGE_BYTES);
        let free = hugepages_free();
        if free < need {
            return Err(EalInitError::NoHugepages {
                need,
                free,
                memory_mb: cfg.memory_mb,
            });
        }
        Ok(())
    }

    /// The arguments EAL started with (for `describe`).
    pub fn args(&self) -> &str {
        &self.args
    }

    /// `rte_eal_cleanup` and the runtime directory; call after every port is closed and every
    /// mempool freed.
    pub fn cleanup(self) {
        // SAFETY: EAL is running (an `Eal` exists only after a successful init, and cleanup
        // consumes it); the caller closed the ports and freed the pools first.
        unsafe {
            sys::rte_eal_cleanup();
        }
        EAL_STATE.store(EAL_SPENT, Ordering::Release);
        remove_runtime_dir(&self.file_prefix);
    }
}

/// Removes `/var/run/dpdk/<prefix>` (its files and the directory; nothing else).
fn remove_runtime_dir(prefix: &str) {
    let dir = Path::new(RUNTIME_DIR_ROOT).join(prefix);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(&dir);
}

/// `rte_strerror(rte_errno)` of the calling thread.
pub fn errno_text() -> String {
    // SAFETY: reads the calling thread's rte_errno (a TLS int).
    let errno = unsafe { sys::ms_dpdk_errno() };
    code_text(errno)
}

/// The text of a DPDK or POSIX error number (positive or negative).
pub fn code_text(code: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string
    // for any int; it is copied out before anything else runs on this thread.
    let text = unsafe { CStr::from_ptr(sys::rte_strerror(code.abs())) };
    format!("{} (errno {})", text.to_string_lossy(), code.abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_carry_prefix_unlink_memory_and_devices() {
        let cfg = EalConfig {
            file_prefix: "ms-test".into(),
            huge_dir: "/dev/hugepages".into(),
            memory_mb: 64,
            cores: vec![],
            vdevs: vec!["net_af_packet0,iface=veth0".into()],
            pci: vec![],
        };
        let a = eal_args(&cfg, &[0, 1]).join(" ");
        for want in [
            "--file-prefix=ms-test",
            "--huge-unlink",
            "--huge-dir=/dev/hugepages",
            "-m 64",
            "--lcores=0@(0,1)",
            "--vdev=net_af_packet0,iface=veth0",
            "--no-pci",
        ] {
            assert!(a.contains(want), "{want} in {a}");
        }
        let pci = EalConfig {
            cores: vec![3],
            vdevs: vec![],
            pci: vec!["0000:01:00.0".into()],
            ..cfg
        };
        let a = eal_args(&pci, &[0, 1]).join(" ");
        assert!(
            a.contains("--allow=0000:01:00.0") && !a.contains("--no-pci"),
            "{a}"
        );
        assert!(a.contains("--lcores=0@(3)"), "{a}");
    }

    #[test]
    fn bad_prefix_memory_and_huge_dir_are_refused_before_eal_runs() {
        let cfg = EalConfig {
            file_prefix: "ms-test".into(),
            huge_dir: "/nonexistent-hugetlbfs".into(),
            memory_mb: 64,
            cores: vec![],
            vdevs: vec![],
            pci: vec![],
        };
        assert!(matches!(Eal::check(&cfg), Err(EalInitError::HugeDir(_))));
        let bad = EalConfig {
            file_prefix: "a/b".into(),
            ..cfg.clone()
        };
        assert!(matches!(Eal::check(&bad), Err(EalInitError::FilePrefix(_))));
        let bad = EalConfig {
            memory_mb: 1,
            ..cfg
        };
        assert!(matches!(Eal::check(&bad), Err(EalInitError::Memory(1))));
    }
}
