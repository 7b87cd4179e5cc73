//! Loading and attaching `memstreamer_xdp` with aya, pinning its maps, and
//! `PolicyMaps`: the pinned maps opened from any process (the control plane,
//! `ms-xdp`), to allow/deny sources, set rate limits and read counters.
//!
//! Pins live at `/sys/fs/bpf/memstreamer/<iface>/<map>`. bpffs is per mount
//! namespace, so a loader working in another network namespace must switch
//! only its network namespace (`setns(CLONE_NEWNET)`, as `ms-xdp --netns`
//! does), not use `ip netns exec` (which also makes a new mount namespace).

use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, XskMap};
use aya::programs::{ProgramError, Xdp, XdpMode};
use aya::{Ebpf, EbpfError, EbpfLoader};
use thiserror::Error;

use crate::abi::*;

/// The compiled program object, built by build.rs.
pub static PROGRAM_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/memstreamer_xdp.o"));

/// Magic number of bpffs in `statfs.f_type`.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// Where the program runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver, before an skb is allocated (veth, most NICs).
    Native,
    /// Generic XDP after skb allocation: works on every interface, slower.
    Skb,
}

impl AttachMode {
    fn aya(self) -> XdpMode {
        match self {
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        }
    }
}

#[derive(Debug, Error)]
pub enum XdpLoadError {
    #[error("`{iface}` is not a valid interface name (1..={IFACE_NAME_BYTES_MAX} bytes, no `/`)")]
    InvalidInterfaceName { iface: String },
    #[error(
        "interface `{iface}` not found in this network namespace: check `ip link`, or run in \
         the interface's namespace (`ms-xdp --netns <ns> attach ...`)"
    )]
    UnknownInterface { iface: String },
    #[error(
        "not permitted to {action}: run as root or grant CAP_BPF, CAP_NET_ADMIN and \
         CAP_SYS_ADMIN (for bpffs): {source}"
    )]
    NotPermitted {
        action: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "bpffs is not mounted at {BPFFS_MOUNT} and mounting it failed ({source}): run \
         `mount -t bpf bpf {BPFFS_MOUNT}` as root"
    )]
    BpffsMount { source: nix::Error },
    #[error(
        "maps are already pinned at {}: another ms-xdp is attached to this interface, or one \
         crashed; stop it, or remove the stale pins with `rm -r {}`",
        path.display(), path.display()
    )]
    AlreadyPinned { path: PathBuf },
    #[error("could not create the pin directory {}: {source}", path.display())]
    PinDir { path: PathBuf, source: io::Error },
    #[error("could not pin map `{map}`: {source}")]
    Pin {
        map: &'static str,
        source: aya::pin::PinError,
    },
    #[error("the program object has no `{name}`: rebuild xdp-programs (stale build?)")]
    MissingInObject { name: &'static str },
    #[error("could not load the BPF object (maps, BTF): {0}")]
    Object(#[source] EbpfError),
    #[error(
        "the kernel verifier rejected {PROGRAM_NAME} ({io_error}); needs Linux 5.12+ with \
         BPF atomics. Verifier log:\n{verifier_log}"
    )]
    Verifier {
        io_error: io::Error,
        verifier_log: String,
    },
    #[error(
        "could not attach to `{iface}` in {mode:?} mode: {source}; if another XDP program is \
         attached remove it (`ip link set dev {iface} xdp off`), or try --mode skb"
    )]
    Attach {
        iface: String,
        mode: AttachMode,
        source: ProgramError,
    },
    #[error("could not write the initial config: {0}")]
    Config(#[source] PolicyMapsError),
}

/// Whether an error chain bottoms out in EPERM/EACCES.
fn is_permission_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::PermissionDenied
                || io.raw_os_error() == Some(nix::libc::EPERM)
            {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn object_error(e: EbpfError) -> XdpLoadError {
    if is_permission_error(&e) {
        XdpLoadError::NotPermitted {
            action: "create BPF maps",
            source: Box::new(e),
        }
    } else {
        XdpLoadError::Object(e)
    }
}

fn validate_iface(iface: &str) -> Result<(), XdpLoadError> {
    let ok = !iface.is_empty()
        && iface.len() <= IFACE_NAME_BYTES_MAX
        && !iface.contains('/')
        && iface != "."
        && iface != ".."
        && !iface.chars().any(|c| c.is_whitespace() || c == '\0');
    if ok {
        Ok(())
    } else {
        Err(XdpLoadError::InvalidInterfaceName {
            iface: iface.to_string(),
        })
    }
}

/// Mounts bpffs at /sys/fs/bpf unless it already is.
pub fn ensure_bpffs() -> Result<(), XdpLoadError> {
    let mounted = nix::sys::statfs::statfs(BPFFS_MOUNT)
        .map(|s| s.filesystem_type().0 as u64 == BPF_FS_MAGIC)
        .unwrap_or(false);
    if mounted {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        BPFFS_MOUNT,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| XdpLoadError::BpffsMount { source })
}

/// Attempts to create the pin directory when a concurrent `XdpHandle` drop
/// removes the (then empty) pin root between our two `mkdir`s.
const PIN_DIR_ATTEMPTS_MAX: u32 = 4;

/// Creates `<PIN_ROOT>/<iface>` with a plain `mkdir`, so exactly one of two
/// concurrent loaders for the same interface owns it (the other gets
/// `AlreadyExists`).
fn create_pin_dir(dir: &Path) -> io::Result<()> {
    let mut attempt = 1;
    loop {
        std::fs::create_dir_all(PIN_ROOT)?;
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < PIN_DIR_ATTEMPTS_MAX => {
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The XDP program of this crate.
pub struct XdpProgram;

impl XdpProgram {
    /// Loads the program, pins its maps under `/sys/fs/bpf/memstreamer/<iface>/`,
    /// writes `config`, then attaches to `iface` (of the caller's network
    /// namespace) through a bpf_link. Dropping the handle detaches and unpins.
    pub fn load_and_attach(
        iface: &str,
        mode: AttachMode,
        config: Config,
    ) -> Result<XdpHandle, XdpLoadError> {
        validate_iface(iface)?;
        if nix::net::if_::if_nametoindex(iface).is_err() {
            return Err(XdpLoadError::UnknownInterface {
                iface: iface.to_string(),
            });
        }
        ensure_bpffs()?;
        let dir = pin_dir(iface);
        if dir.exists() {
            return Err(XdpLoadError::AlreadyPinned { path: dir });
        }
        let mut ebpf = EbpfLoader::new()
            .load(PROGRAM_OBJECT)
            .map_err(object_error)?;

        create_pin_dir(&dir).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                XdpLoadError::AlreadyPinned { path: dir.clone() }
            } else if source.kind() == io::ErrorKind::PermissionDenied {
                XdpLoadError::NotPermitted {
                    action: "create pins",
                    source: Box::new(source),
                }
            } else {
                XdpLoadError::PinDir {
                    path: dir.clone(),
                    source,
                }
            }
        })?;
        // From here on, the handle owns the pin directory and removes it on any error.
        let mut handle = XdpHandle {
            iface: iface.to_string(),
            pin_dir: dir,
            mode,
            attached: true,
            ebpf: None,
        };
        for name in MAP_NAMES {
            let map = ebpf
                .map(name)
                .ok_or(XdpLoadError::MissingInObject { name })?;
            map.pin(handle.pin_dir.join(name))
                .map_err(|source| XdpLoadError::Pin { map: name, source })?;
        }
        PolicyMaps::open(iface)
            .and_then(|mut maps| maps.set_config(config))
            .map_err(XdpLoadError::Config)?;

        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(XdpLoadError::MissingInObject { name: PROGRAM_NAME })?
            .try_into()
            .map_err(|_| XdpLoadError::MissingInObject { name: PROGRAM_NAME })?;
        program.load().map_err(load_error)?;
        program.attach(iface, mode.aya()).map_err(|source| {
            if is_permission_error(&source) {
                XdpLoadError::NotPermitted {
                    action: "attach XDP programs",
                    source: Box::new(source),
                }
            } else if matches!(source, ProgramError::UnknownInterface { .. }) {
                XdpLoadError::UnknownInterface {
                    iface: iface.to_string(),
                }
            } else {
                XdpLoadError::Attach {
                    iface: iface.to_string(),
                    mode,
                    source,
                }
            }
        })?;
        handle.ebpf = Some(ebpf);
        Ok(handle)
    }
}

impl XdpProgram {
    /// Creates the program's maps and pins them under `/sys/fs/bpf/memstreamer/<name>/` with
    /// `config` written, without loading or attaching the program: for a data plane that
    /// enforces the same policy itself (the DPDK backend, where no XDP program can run on the
    /// port). `name` is the key the control plane writes policy under (`PolicyMaps::open`); it
    /// need not be a kernel interface (a vfio-bound NIC has none). Dropping the handle unpins.
    pub fn pin_maps(name: &str, config: Config) -> Result<XdpHandle, XdpLoadError> {
        validate_iface(name)?;
        ensure_bpffs()?;
        let dir = pin_dir(name);
        if dir.exists() {
            return Err(XdpLoadError::AlreadyPinned { path: dir });
        }
        let ebpf = EbpfLoader::new()
            .load(PROGRAM_OBJECT)
            .map_err(object_error)?;
        create_pin_dir(&dir).map_err(|source| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                XdpLoadError::AlreadyPinned { path: dir.clone() }
            } else {
                XdpLoadError::PinDir {
                    path: dir.clone(),
                    source,
                }
            }
        })?;
        // From here on, the handle owns the pin directory and removes it on any error.
        let mut handle = XdpHandle {
            iface: name.to_string(),
            pin_dir: dir,
            mode: AttachMode::Skb,
            attached: false,
            ebpf: None,
        };
        for map_name in MAP_NAMES {
            let map = ebpf
                .map(map_name)
                .ok_or(XdpLoadError::MissingInObject { name: map_name })?;
            map.pin(handle.pin_dir.join(map_name))
                .map_err(|source| XdpLoadError::Pin {
                    map: map_name,
                    source,
                })?;
        }
        PolicyMaps::open(name)
            .and_then(|mut maps| maps.set_config(config))
            .map_err(XdpLoadError::Config)?;
        handle.ebpf = Some(ebpf);
        Ok(handle)
    }
}

/// Most repetitions of one `BPF_PROG_TEST_RUN` call.
pub const TEST_RUN_REPEAT_MAX: u32 = 10_000_000;

/// A loaded but unattached instance with private (unpinned) maps, run on
/// packets given by the caller through the kernel's `BPF_PROG_TEST_RUN`: the
/// real program on the real verifier/JIT, fed with packets no interface could
/// carry (IPv6 without configured addresses, truncated IP, IP options, VLAN).
/// Used by tests and to measure the program's cost per packet.
pub struct TestRunProgram {
    ebpf: Ebpf,
    maps: PolicyMaps,
}

/// What one test run returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRunOutcome {
    /// The XDP action (`XDP_DROP` = 1, `XDP_PASS` = 2, `XDP_REDIRECT` = 4).
    pub action: u32,
    /// Mean kernel-measured run time per repetition.
    pub duration_ns_mean: u64,
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;

#[derive(Debug, Error)]
pub enum TestRunError {
    #[error("repeat must be 1..={TEST_RUN_REPEAT_MAX}, got {repeat}")]
    BadRepeat { repeat: u32 },
    #[error(
        "BPF_PROG_TEST_RUN failed ({0}); packets must be at least 14 bytes and fit one page, \
         and the caller needs CAP_BPF"
    )]
    Run(#[source] ProgramError),
}

impl XdpProgram {
    /// Loads the program without attaching or pinning (see [`TestRunProgram`]).
    pub fn load_for_test_run(config: Config) -> Result<TestRunProgram, XdpLoadError> {
        let mut ebpf = EbpfLoader::new()
            .load(PROGRAM_OBJECT)
            .map_err(object_error)?;
        let mut take = |name: &'static str| {
            ebpf.take_map(name)
                .ok_or(XdpLoadError::MissingInObject { name })
        };
        let (counters, config_map, policy, rate, xsks) = (
            take(MAP_COUNTERS)?,
            take(MAP_CONFIG)?,
            take(MAP_POLICY)?,
            take(MAP_RATE)?,
            take(MAP_XSKS)?,
        );
        let typed = |name: &'static str| {
            move |source| {
                XdpLoadError::Config(PolicyMapsError::Open {
                    path: PathBuf::from(name),
                    source,
                })
            }
        };
        let mut maps = PolicyMaps {
            counters: counters.try_into().map_err(typed(MAP_COUNTERS))?,
            config: config_map.try_into().map_err(typed(MAP_CONFIG))?,
            policy: policy.try_into().map_err(typed(MAP_POLICY))?,
            rate: rate.try_into().map_err(typed(MAP_RATE))?,
            xsks: xsks.try_into().map_err(typed(MAP_XSKS))?,
        };
        maps.set_config(config).map_err(XdpLoadError::Config)?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(XdpLoadError::MissingInObject { name: PROGRAM_NAME })?
            .try_into()
            .map_err(|_| XdpLoadError::MissingInObject { name: PROGRAM_NAME })?;
        program.load().map_err(load_error)?;
        Ok(TestRunProgram { ebpf, maps })
    }
}

impl TestRunProgram {
    /// The instance's maps (not pinned; only this process sees them).
    pub fn maps(&mut self) -> &mut PolicyMaps {
        &mut self.maps
    }

    /// Runs the program once on `packet` (an Ethernet frame).
    pub fn run(&self, packet: &[u8]) -> Result<u32, TestRunError> {
        self.run_repeat(packet, 1).map(|o| o.action)
    }

    /// Runs the program `repeat` times on `packet` in one syscall.
    pub fn run_repeat(&self, packet: &[u8], repeat: u32) -> Result<TestRunOutcome, TestRunError> {
        use aya::programs::{TestRun, TestRunOptions};
        if repeat == 0 || repeat > TEST_RUN_REPEAT_MAX {
            return Err(TestRunError::BadRepeat { repeat });
        }
        let program: &Xdp = self
            .ebpf
            .program(PROGRAM_NAME)
            .expect("loaded in load_for_test_run")
            .try_into()
            .expect("an XDP program");
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat,
                ..Default::default()
            })
            .map_err(TestRunError::Run)?;
        Ok(TestRunOutcome {
            action: result.return_value,
            duration_ns_mean: result.duration.as_nanos() as u64,
        })
    }
}

fn load_error(e: ProgramError) -> XdpLoadError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            if io_error.raw_os_error() == Some(nix::libc::EPERM) {
                XdpLoadError::NotPermitted {
                    action: "load BPF programs",
                    source: Box::new(io_error),
                }
            } else {
                XdpLoadError::Verifier {
                    io_error,
                    verifier_log: verifier_log.to_string(),
                }
            }
        }
        other => XdpLoadError::Object(EbpfError::ProgramError(other)),
    }
}

/// An attached program. Drop detaches it (the bpf_link closes with the
/// program) and removes the pins.
pub struct XdpHandle {
    iface: String,
    pin_dir: PathBuf,
    mode: AttachMode,
    /// False for [`XdpProgram::pin_maps`]: maps only, no program on any interface.
    attached: bool,
    ebpf: Option<Ebpf>,
}

impl XdpHandle {
    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The attach mode (meaningful only when [`XdpHandle::is_attached`]).
    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// False when only the maps are pinned ([`XdpProgram::pin_maps`]).
    pub fn is_attached(&self) -> bool {
        self.attached
    }

    /// The pinned maps of this attachment.
    pub fn maps(&self) -> Result<PolicyMaps, PolicyMapsError> {
        PolicyMaps::open(&self.iface)
    }
}

impl Drop for XdpHandle {
    fn drop(&mut self) {
        for name in MAP_NAMES {
            let _ = std::fs::remove_file(self.pin_dir.join(name));
        }
        let _ = std::fs::remove_dir(&self.pin_dir);
        // Only succeeds when no other interface is pinned (see create_pin_dir).
        let _ = std::fs::remove_dir(PIN_ROOT);
        // Detach: dropping the Ebpf drops the program and closes its bpf_link.
        self.ebpf.take();
    }
}

#[derive(Debug, Error)]
pub enum PolicyMapsError {
    #[error(
        "no maps pinned at {}: attach the program first (`ms-xdp attach --iface <iface>`), \
         and check the interface name",
        path.display()
    )]
    NotPinned { path: PathBuf },
    #[error("not permitted to open pinned BPF maps: run as root or grant CAP_BPF: {0}")]
    NotPermitted(#[source] MapError),
    #[error("pinned map {}: {source}", path.display())]
    Open { path: PathBuf, source: MapError },
    #[error("BPF map `{map}` {action} failed: {source}")]
    Map {
        map: &'static str,
        action: &'static str,
        source: MapError,
    },
    #[error("rate {rate_per_sec}/s exceeds RATE_PER_SEC_MAX ({RATE_PER_SEC_MAX})")]
    RateTooHigh { rate_per_sec: u64 },
    #[error("RX queue {queue} is out of range: the XSKMAP has {XSK_QUEUES_MAX} slots")]
    QueueOutOfRange { queue: u32 },
    #[error(
        "the kernel refused the socket for RX queue {queue}: it must be an AF_XDP socket bound \
         to this interface and queue, with an RX ring ({source})"
    )]
    XskRejected { queue: u32, source: MapError },
    #[error("burst {burst} must be 1..={RATE_BURST_MAX} frames (and tokens <= burst)")]
    BadBurst { burst: u64 },
}

/// The pinned maps of one interface, opened from any process.
pub struct PolicyMaps {
    counters: PerCpuArray<MapData, u64>,
    config: Array<MapData, [u8; CONFIG_BYTES as usize]>,
    policy: HashMap<MapData, [u8; POLICY_KEY_BYTES as usize], [u8; POLICY_VALUE_BYTES as usize]>,
    rate: HashMap<MapData, [u8; SOURCE_KEY_BYTES as usize], [u8; RATE_BUCKET_BYTES as usize]>,
    xsks: XskMap<MapData>,
}

fn open_pinned<T: TryFrom<Map, Error = MapError>>(
    dir: &Path,
    name: &'static str,
) -> Result<T, PolicyMapsError> {
    let path = dir.join(name);
    if !path.exists() {
        return Err(PolicyMapsError::NotPinned {
            path: dir.to_path_buf(),
        });
    }
    let data = MapData::from_pin(&path).map_err(|source| {
        if is_permission_error(&source) {
            PolicyMapsError::NotPermitted(source)
        } else {
            PolicyMapsError::Open {
                path: path.clone(),
                source,
            }
        }
    })?;
    let map = Map::from_map_data(data).map_err(|source| PolicyMapsError::Open {
        path: path.clone(),
        source,
    })?;
    T::try_from(map).map_err(|source| PolicyMapsError::Open { path, source })
}

impl PolicyMaps {
    /// Opens the maps pinned for `iface` (by `XdpProgram::load_and_attach` in any process).
    pub fn open(iface: &str) -> Result<PolicyMaps, PolicyMapsError> {
        let dir = pin_dir(iface);
        if validate_iface(iface).is_err() || !dir.is_dir() {
            return Err(PolicyMapsError::NotPinned { path: dir });
        }
        Ok(PolicyMaps {
            counters: open_pinned(&dir, MAP_COUNTERS)?,
            config: open_pinned(&dir, MAP_CONFIG)?,
            policy: open_pinned(&dir, MAP_POLICY)?,
            rate: open_pinned(&dir, MAP_RATE)?,
            xsks: open_pinned(&dir, MAP_XSKS)?,
        })
    }

    fn set_policy(
        &mut self,
        source: IpAddr,
        stream_id: u32,
        action: u32,
    ) -> Result<(), PolicyMapsError> {
        let key = PolicyKey::new(source, stream_id).to_bytes();
        let value = PolicyValue {
            action,
            reserved: 0,
        }
        .to_bytes();
        self.policy
            .insert(key, value, 0)
            .map_err(|source| PolicyMapsError::Map {
                map: MAP_POLICY,
                action: "insert",
                source,
            })
    }

    /// Lets `source` publish/send frames of `stream_id`.
    pub fn allow(&mut self, source: IpAddr, stream_id: u32) -> Result<(), PolicyMapsError> {
        self.set_policy(source, stream_id, POLICY_ACTION_ALLOW)
    }

    /// Drops frames of `stream_id` from `source` (explicit entry: holds even when
    /// the default policy is allow).
    pub fn deny(&mut self, source: IpAddr, stream_id: u32) -> Result<(), PolicyMapsError> {
        self.set_policy(source, stream_id, POLICY_ACTION_DENY)
    }

    /// Removes the entry: the default policy (config flag) applies again.
    pub fn forget(&mut self, source: IpAddr, stream_id: u32) -> Result<(), PolicyMapsError> {
        match self
            .policy
            .remove(&PolicyKey::new(source, stream_id).to_bytes())
        {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(PolicyMapsError::Map {
                map: MAP_POLICY,
                action: "remove",
                source,
            }),
        }
    }

    /// The explicit policy entry for (source, stream), if any: `Some(true)` = allow.
    pub fn policy(&self, source: IpAddr, stream_id: u32) -> Result<Option<bool>, PolicyMapsError> {
        match self
            .policy
            .get(&PolicyKey::new(source, stream_id).to_bytes(), 0)
        {
            Ok(v) => Ok(Some(
                PolicyValue::from_bytes(&v).action == POLICY_ACTION_ALLOW,
            )),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(PolicyMapsError::Map {
                map: MAP_POLICY,
                action: "get",
                source,
            }),
        }
    }

    /// Limits `source` to `rate_per_sec` frames/s with bursts of `burst`;
    /// the bucket starts full. Rewriting it refills it.
    pub fn set_rate_limit(
        &mut self,
        source: IpAddr,
        rate_per_sec: u64,
        burst: u64,
    ) -> Result<(), PolicyMapsError> {
        self.write_rate_bucket(source, RateBucket::full(rate_per_sec, burst))
    }

    /// Writes a bucket as is (state included), e.g. to restore one; the same
    /// limits as [`PolicyMaps::set_rate_limit`] apply, and `tokens <= burst`.
    pub fn write_rate_bucket(
        &mut self,
        source: IpAddr,
        bucket: RateBucket,
    ) -> Result<(), PolicyMapsError> {
        if bucket.rate_per_sec > RATE_PER_SEC_MAX {
            return Err(PolicyMapsError::RateTooHigh {
                rate_per_sec: bucket.rate_per_sec,
            });
        }
        if bucket.burst == 0 || bucket.burst > RATE_BURST_MAX || bucket.tokens > bucket.burst {
            return Err(PolicyMapsError::BadBurst {
                burst: bucket.burst,
            });
        }
        let key = SourceKey::new(source).to_bytes();
        self.rate
            .insert(key, bucket.to_bytes(), 0)
            .map_err(|source| PolicyMapsError::Map {
                map: MAP_RATE,
                action: "insert",
                source,
            })
    }

    /// Removes the rate limit of `source`.
    pub fn clear_rate_limit(&mut self, source: IpAddr) -> Result<(), PolicyMapsError> {
        match self.rate.remove(&SourceKey::new(source).to_bytes()) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(PolicyMapsError::Map {
                map: MAP_RATE,
                action: "remove",
                source,
            }),
        }
    }

    /// The current bucket of `source`, if limited.
    pub fn rate_limit(&self, source: IpAddr) -> Result<Option<RateBucket>, PolicyMapsError> {
        match self.rate.get(&SourceKey::new(source).to_bytes(), 0) {
            Ok(v) => Ok(Some(RateBucket::from_bytes(&v))),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(PolicyMapsError::Map {
                map: MAP_RATE,
                action: "get",
                source,
            }),
        }
    }

    /// Sends accepted frames of RX `queue` to `socket`, an AF_XDP socket bound
    /// to this interface and queue (with an RX ring). Until then, and after
    /// [`PolicyMaps::clear_xsk`], they go to the kernel (`redirect_no_socket`).
    pub fn set_xsk(&mut self, queue: u32, socket: &impl AsFd) -> Result<(), PolicyMapsError> {
        if queue >= XSK_QUEUES_MAX {
            return Err(PolicyMapsError::QueueOutOfRange { queue });
        }
        self.xsks
            .set(queue, socket.as_fd(), 0)
            .map_err(|source| PolicyMapsError::XskRejected { queue, source })
    }

    /// Removes the AF_XDP socket of RX `queue` (no-op when none is set).
    pub fn clear_xsk(&mut self, queue: u32) -> Result<(), PolicyMapsError> {
        if queue >= XSK_QUEUES_MAX {
            return Err(PolicyMapsError::QueueOutOfRange { queue });
        }
        match self.xsks.unset(queue) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(PolicyMapsError::Map {
                map: MAP_XSKS,
                action: "delete",
                source,
            }),
        }
    }

    pub fn config(&self) -> Result<Config, PolicyMapsError> {
        self.config
            .get(&0, 0)
            .map(|b| Config::from_bytes(&b))
            .map_err(|source| PolicyMapsError::Map {
                map: MAP_CONFIG,
                action: "get",
                source,
            })
    }

    pub fn set_config(&mut self, config: Config) -> Result<(), PolicyMapsError> {
        self.config
            .set(0, config.to_bytes(), 0)
            .map_err(|source| PolicyMapsError::Map {
                map: MAP_CONFIG,
                action: "set",
                source,
            })
    }

    /// Every policy entry: (source, stream, allow). Cold path (one syscall per entry).
    pub fn policy_entries(&self) -> Result<Vec<(IpAddr, u32, bool)>, PolicyMapsError> {
        let mut out = Vec::new();
        for entry in self.policy.iter() {
            let (k, v) = entry.map_err(|source| PolicyMapsError::Map {
                map: MAP_POLICY,
                action: "iterate",
                source,
            })?;
            let key = PolicyKey::from_bytes(&k);
            let allow = PolicyValue::from_bytes(&v).action == POLICY_ACTION_ALLOW;
            out.push((source_addr_from_bytes(key.addr), key.stream_id, allow));
        }
        Ok(out)
    }

    /// Every rate-limited source with its bucket. Cold path (one syscall per entry).
    pub fn rate_entries(&self) -> Result<Vec<(IpAddr, RateBucket)>, PolicyMapsError> {
        let mut out = Vec::new();
        for entry in self.rate.iter() {
            let (k, v) = entry.map_err(|source| PolicyMapsError::Map {
                map: MAP_RATE,
                action: "iterate",
                source,
            })?;
            out.push((source_addr_from_bytes(k), RateBucket::from_bytes(&v)));
        }
        Ok(out)
    }

    /// Stores verdict counts kept in user space (by a data plane that enforces this policy
    /// itself, with no program attached) in CPU 0's slots, the other CPUs' at 0, so
    /// [`PolicyMaps::counters`] and `ms-xdp counters` read them as the program's.
    pub fn store_counters(&mut self, counts: &VerdictCounts) -> Result<(), PolicyMapsError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| PolicyMapsError::Map {
            map: MAP_COUNTERS,
            action: "count CPUs",
            source: MapError::IoError(e),
        })?;
        for v in Verdict::ALL {
            let mut per_cpu = vec![0u64; cpus];
            per_cpu[0] = counts.get(v);
            let values =
                aya::maps::PerCpuValues::try_from(per_cpu).map_err(|e| PolicyMapsError::Map {
                    map: MAP_COUNTERS,
                    action: "build per-CPU values",
                    source: MapError::IoError(e),
                })?;
            self.counters
                .set(v.id(), values, 0)
                .map_err(|source| PolicyMapsError::Map {
                    map: MAP_COUNTERS,
                    action: "set",
                    source,
                })?;
        }
        Ok(())
    }

    /// Verdict counters summed over all CPUs.
    pub fn counters(&self) -> Result<VerdictCounts, PolicyMapsError> {
        let mut counts = VerdictCounts::default();
        for v in Verdict::ALL {
            let per_cpu = self
                .counters
                .get(&v.id(), 0)
                .map_err(|source| PolicyMapsError::Map {
                    map: MAP_COUNTERS,
                    action: "get",
                    source,
                })?;
            counts.0[v.id() as usize] = per_cpu.iter().sum();
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_is_a_bpf_elf_with_the_program_and_maps() {
        assert_eq!(&PROGRAM_OBJECT[..4], b"\x7fELF");
        let obj = aya_obj_names(PROGRAM_OBJECT);
        for name in MAP_NAMES.iter().chain([PROGRAM_NAME].iter()) {
            assert!(obj.iter().any(|n| n == name), "{name} not in object");
        }
    }

    /// Names found in the ELF string tables (enough to catch a stale object).
    fn aya_obj_names(elf: &[u8]) -> Vec<String> {
        elf.split(|&b| b == 0)
            .filter_map(|s| std::str::from_utf8(s).ok())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn interface_names_are_validated() {
        for bad in ["", "a/b", "..", "sixteen_chars_xx", "a b"] {
            assert!(matches!(
                validate_iface(bad),
                Err(XdpLoadError::InvalidInterfaceName { .. })
            ));
        }
        assert!(validate_iface("veth0").is_ok());
    }

    #[test]
    fn open_without_pins_says_to_attach() {
        let err = PolicyMaps::open("msx-nonexist0")
            .err()
            .expect("nothing pinned");
        assert!(err.to_string().contains("ms-xdp attach"), "{err}");
    }
}
