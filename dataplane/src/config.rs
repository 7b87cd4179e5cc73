//! Node configuration: TOML with defaults for every key, `MS_<KEY>` environment overrides, validated.
//!
//! ```toml
//! profile = "default"             # or "low-latency" (see below)
//! backend = "udp"                 # or "afxdp", or "dpdk" (never a silent fallback)
//! listen = "127.0.0.1:7447"       # data port (UDP backend binds it; AF_XDP filters on its port)
//! interface = "veth0"             # AF_XDP: the interface; DPDK: the policy maps' name
//! dpdk_device = "net_af_packet0,iface=veth0,qpairs=2"   # DPDK only: a vdev or a PCI address
//! dpdk_memory_mb = 64             # DPDK: EAL hugepage memory (from scripts/hugepages.sh's pool)
//! dpdk_mbufs = 8191               # DPDK: mbufs in the pool
//! dpdk_huge_dir = "/dev/hugepages"   # DPDK: the pool's hugetlbfs mount
//! dpdk_file_prefix = "ms-7447"    # DPDK: EAL --file-prefix (default memstreamer-<data port>)
//! threading = "shared"            # "dedicated" (one thread per agent) | "shared" (one thread)
//! cores = [2, 3, 4, 5]            # pinning: dedicated = core per agent (receiver, sender,
//!                                 # archiver, conductor), shared = the first entry
//! idle = "backoff"                # "busy_spin" | "yielding" | "backoff"
//! data_dir = "/var/lib/memstreamer"   # the node's data directory
//! storage_dir = "/var/lib/memstreamer/storage"   # default <data_dir>/storage; false: no storage
//! counters_file = "/dev/shm/memstreamer-counters"  # read by `memstreamer stat`
//! node_id = 1                     # the control plane's id of this node (0: none, assignments
//!                                 # are refused); partition assignments name the node they are for
//! replica_lag_time_max_ns = 2000000000   # a follower behind longer leaves the ISR (leader side)
//! [[streams]]
//! id = 7
//! partitions = 1
//! ```
//!
//! A **profile** picks the defaults of the keys that trade CPU for latency; a key set in the
//! file or the environment always wins over its profile:
//!
//! | profile       | idle        | threading   | for                                            |
//! |---------------|-------------|-------------|------------------------------------------------|
//! | `default`     | `backoff`   | `shared`    | a polite embedded node: ~0 CPU when idle, wakes |
//! |               |             |             | within 1 ms (Aeron's default idle strategy)    |
//! | `low-latency` | `busy_spin` | `dedicated` | tuned hosts: one busy-polling thread per agent, |
//! |               |             |             | pinned to `cores` (list 4 free cores)           |
//!
//! Both profiles persist: storage is on by default, in `<data_dir>/storage`
//! (`storage_dir = false` runs without an archiver, so nothing survives a restart).
//!
//! Every scalar key can be overridden by an environment variable named `MS_` + the key in upper case,
//! e.g. `MS_PROFILE=low-latency`, `MS_BACKEND=afxdp`, `MS_LISTEN=198.18.100.1:7447`,
//! `MS_STORAGE_DIR=false`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::net::Backend;

/// Most streams one node serves.
pub const STREAMS_MAX: usize = 1024;
/// Most partitions per stream.
pub const PARTITIONS_MAX: u16 = 256;
/// Most concurrent remote publisher sessions.
pub const SESSIONS_MAX: u32 = 4096;
/// Most remote subscribers (all streams together).
pub const SUBSCRIBERS_MAX: u32 = 1024;
/// Largest receive window advertised in STATUS (bytes).
pub const WINDOW_BYTES_MAX: u32 = 1 << 30;
/// Largest sender retransmit window per partition (bytes).
pub const RETRANSMIT_WINDOW_BYTES_MAX: u64 = sdk::net::BUFFER_BYTES_MAX as u64;
/// Most AF_XDP queues (mirrors the XSKMAP size of xdp-programs).
pub const QUEUES_MAX: u32 = xdp_programs::abi_consts::XSK_QUEUES_MAX;
/// Longest configurable interval of any timer (ns): one minute.
pub const INTERVAL_NS_MAX: u64 = 60_000_000_000;
/// The node's data directory unless `data_dir` says otherwise (the control plane's default
/// data directory, `controlplane::node`, is `<this>/cp`).
pub const DATA_DIR_DEFAULT: &str = "/var/lib/memstreamer";
/// The storage directory's name under `data_dir` unless `storage_dir` says otherwise.
pub const STORAGE_SUBDIR: &str = "storage";

/// Which defaults the CPU/latency keys (`idle`, `threading`) take; see the module docs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Backoff idle strategy, one shared agent thread: ~0 CPU when idle.
    #[default]
    Default,
    /// Busy-spinning agents, one (pinned) thread each: lowest latency, a core per agent.
    LowLatency,
}

impl Profile {
    /// The values this profile gives the keys it decides.
    fn values(self) -> (Idle, Threading) {
        match self {
            Profile::Default => (Idle::Backoff, Threading::Shared),
            Profile::LowLatency => (Idle::BusySpin, Threading::Dedicated),
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Default => "default",
            Profile::LowLatency => "low-latency",
        })
    }
}

/// A profile name was not `default` or `low-latency`.
#[derive(Debug, thiserror::Error)]
#[error("unknown profile {0:?}: use \"default\" or \"low-latency\"")]
pub struct ProfileParseError(String);

impl FromStr for Profile {
    type Err = ProfileParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(Profile::Default),
            "low-latency" => Ok(Profile::LowLatency),
            other => Err(ProfileParseError(other.chars().take(64).collect())),
        }
    }
}

/// How agents are mapped to threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Threading {
    Dedicated,
    Shared,
}

/// What an agent thread does when a duty cycle found no work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Idle {
    BusySpin,
    Yielding,
    Backoff,
}

impl Idle {
    pub fn strategy(self) -> sdk::IdleStrategy {
        match self {
            Idle::BusySpin => sdk::IdleStrategy::busy_spin(),
            Idle::Yielding => sdk::IdleStrategy::yielding(),
            Idle::Backoff => sdk::IdleStrategy::backoff(),
        }
    }

    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Idle::BusySpin => "busy_spin",
            Idle::Yielding => "yielding",
            Idle::Backoff => "backoff",
        }
    }
}

/// One stream the node accepts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub id: u32,
    #[serde(default = "one")]
    pub partitions: u16,
}

fn one() -> u16 {
    1
}

/// The node's configuration (see the module docs for the file format).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Which defaults `idle` and `threading` take (applied when the config is loaded; see
    /// [`Config::with_profile`] for configs built in code).
    pub profile: Profile,
    pub backend: Backend,
    pub listen: SocketAddr,
    pub interface: Option<String>,
    /// AF_XDP: RX queues 0..queues get a receiver socket; the sender transmits on queue
    /// `queues`, so the interface needs queues + 1 TX queues. DPDK: the port gets queues + 1
    /// queue pairs; the receiver polls every RX queue, the sender has the last TX queue.
    pub queues: u32,
    pub threading: Threading,
    pub cores: Vec<usize>,
    pub idle: Idle,
    /// Directory of the shared-memory rings (None: the SDK's default, hugetlbfs or /dev/shm).
    pub shm_dir: Option<PathBuf>,
    pub ring_capacity_bytes: u64,
    /// The node's data directory: storage goes to `<data_dir>/storage` unless `storage_dir`
    /// is set.
    pub data_dir: PathBuf,
    /// Storage directory of the archiver (None: no archiver; `storage_dir = false` in TOML).
    #[serde(deserialize_with = "dir_or_off")]
    pub storage_dir: Option<PathBuf>,
    pub counters_file: PathBuf,
    pub streams: Vec<StreamConfig>,
    pub sessions_max: u32,
    pub subscribers_max: u32,
    pub rx_batch_max: u32,
    pub tx_queue_max: u32,
    pub window_bytes: u32,
    /// Each remote subscriber's retransmit buffer: used as the largest power of two not above
    /// it, and at least `sdk::net::BUFFER_BYTES_MIN` (see [`Config::subscriber_buffer_bytes`]).
    pub retransmit_window_bytes: u64,
    pub nak_delay_ns: u64,
    pub nak_retry_ns: u64,
    pub status_interval_ns: u64,
    pub heartbeat_interval_ns: u64,
    pub session_timeout_ns: u64,
    pub archive_commit_interval_ns: u64,
    pub command_queue_depth: u32,
    /// Records of each partition's stored tail copied into a freshly created ring at start.
    pub replay_records_max: u64,
    /// AF_XDP: let sources without a policy entry through the XDP program (labs and tests only;
    /// production leaves it false and the control plane writes the policy map).
    pub xdp_default_allow: bool,
    /// The control plane's id of this node; partition assignments (#11) for another id are
    /// refused and counted. 0: the node has no id and refuses every assignment.
    pub node_id: u64,
    /// Replication: a follower last caught up longer ago than this leaves the ISR (the leader
    /// proposes it; see `replication` for why the default is 2 s).
    pub replica_lag_time_max_ns: u64,
    /// DPDK: the port, a vdev (`net_af_packet0,iface=veth0,qpairs=2`) or a PCI address bound
    /// to vfio-pci (`0000:01:00.0`).
    pub dpdk_device: Option<String>,
    /// DPDK: MiB of hugepage memory EAL takes from the pool at start (`-m`).
    pub dpdk_memory_mb: u32,
    /// DPDK: mbufs in the pool (RX descriptors of every queue + TX in flight + headroom).
    pub dpdk_mbufs: u32,
    /// DPDK: the hugetlbfs mount of the pool (`--huge-dir`).
    pub dpdk_huge_dir: PathBuf,
    /// DPDK: EAL `--file-prefix` (None: `memstreamer-<data port>`, one per node on a host).
    pub dpdk_file_prefix: Option<String>,
    /// DPDK: the UDP port the sender's STATUS/NAK come back to (0: data port + 1).
    pub dpdk_feedback_port: u16,
}

/// `storage_dir`: a directory, or `false` for none.
fn dir_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    struct DirOrOff;
    impl serde::de::Visitor<'_> for DirOrOff {
        type Value = Option<PathBuf>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a directory, or false for no storage")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(PathBuf::from(v)))
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
            if v {
                Err(E::custom(
                    "storage_dir = true: give a directory (default <data_dir>/storage), or false for no storage",
                ))
            } else {
                Ok(None)
            }
        }
    }
    d.deserialize_any(DirOrOff)
}

impl Default for Config {
    /// The `default` profile, storage in [`DATA_DIR_DEFAULT`]`/storage`.
    fn default() -> Self {
        let (idle, threading) = Profile::Default.values();
        Config {
            profile: Profile::Default,
            backend: Backend::Udp,
            listen: SocketAddr::from(([127, 0, 0, 1], 7447)),
            interface: None,
            queues: 1,
            threading,
            cores: Vec::new(),
            idle,
            shm_dir: None,
            ring_capacity_bytes: 16 << 20,
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            storage_dir: Some(Path::new(DATA_DIR_DEFAULT).join(STORAGE_SUBDIR)),
            counters_file: PathBuf::from("/dev/shm/memstreamer-counters"),
            streams: vec![StreamConfig {
                id: 7,
                partitions: 1,
            }],
            sessions_max: 256,
            subscribers_max: 64,
            rx_batch_max: 64,
            tx_queue_max: 1024,
            window_bytes: 4 << 20,
            retransmit_window_bytes: 4 << 20,
            nak_delay_ns: 50_000,
            nak_retry_ns: 1_000_000,
            status_interval_ns: 1_000_000,
            heartbeat_interval_ns: 100_000_000,
            session_timeout_ns: 5_000_000_000,
            archive_commit_interval_ns: 1_000_000,
            command_queue_depth: 1024,
            replay_records_max: 65_536,
            xdp_default_allow: false,
            node_id: 0,
            replica_lag_time_max_ns: crate::replication::REPLICA_LAG_TIME_MAX_NS_DEFAULT,
            dpdk_device: None,
            dpdk_memory_mb: 64,
            dpdk_mbufs: 8191,
            dpdk_huge_dir: PathBuf::from("/dev/hugepages"),
            dpdk_file_prefix: None,
            dpdk_feedback_port: 0,
        }
    }
}

/// Errors loading or validating a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigLoadError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("environment variable {var}={value:?} is not valid: {message}")]
    Env {
        var: String,
        value: String,
        message: String,
    },
    #[error("config value `{key}` is invalid: {message}")]
    Invalid { key: &'static str, message: String },
}

fn bad(key: &'static str, message: String) -> Result<(), ConfigLoadError> {
    Err(ConfigLoadError::Invalid { key, message })
}

/// `Err` naming `key` unless `value` lies in `range`.
fn in_range<T: PartialOrd + fmt::Display>(
    key: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), ConfigLoadError> {
    if range.contains(&value) {
        Ok(())
    } else {
        bad(
            key,
            format!("{value} not in {}..={}", range.start(), range.end()),
        )
    }
}

impl Config {
    /// The low-latency profile (busy-spin, dedicated threads) over the other defaults.
    pub fn low_latency() -> Config {
        Config::default().with_profile(Profile::LowLatency)
    }

    /// `self` with `profile` and every value that profile decides.
    pub fn with_profile(mut self, profile: Profile) -> Config {
        self.profile = profile;
        (self.idle, self.threading) = profile.values();
        self
    }

    /// Reads `path` (TOML), applies `MS_*` overrides from the process environment, validates.
    pub fn load(path: &Path) -> Result<Config, ConfigLoadError> {
        Self::load_with(Some(path), [])
    }

    /// Defaults plus `MS_*` overrides (no file).
    pub fn from_env() -> Result<Config, ConfigLoadError> {
        Self::load_with(None, [])
    }

    /// Reads `path` (TOML; None: no file), applies the `MS_*` overrides of the process
    /// environment and then `overrides` (also `MS_<KEY>` pairs: command-line flags), validates.
    pub fn load_with(
        path: Option<&Path>,
        overrides: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigLoadError> {
        let (text, origin) = match path {
            Some(path) => (
                std::fs::read_to_string(path).map_err(|source| ConfigLoadError::Read {
                    path: path.to_owned(),
                    source,
                })?,
                path.display().to_string(),
            ),
            None => (String::new(), "defaults".to_string()),
        };
        Self::from_toml_with_env(&text, &origin, std::env::vars().chain(overrides))
    }

    /// Parses `text`, applies overrides from `env` (pairs of name, value; a later pair wins),
    /// then the profile's values to the keys neither set, then `<data_dir>/storage` as
    /// `storage_dir` unless set; validates.
    pub fn from_toml_with_env(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigLoadError> {
        let parse = |e: toml::de::Error| ConfigLoadError::Parse {
            origin: origin.to_owned(),
            message: e.to_string(),
        };
        let mut table: toml::Table = toml::from_str(text).map_err(parse)?;
        for (var, value) in env {
            let Some(key) = var.strip_prefix("MS_") else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if !SCALAR_KEYS.contains(&key.as_str()) {
                continue;
            }
            table.insert(key, env_value(&var, &value)?);
        }
        let set: BTreeSet<String> = table.keys().cloned().collect();
        let mut config: Config = table.try_into().map_err(parse)?;
        let (idle, threading) = config.profile.values();
        if !set.contains("idle") {
            config.idle = idle;
        }
        if !set.contains("threading") {
            config.threading = threading;
        }
        if !set.contains("storage_dir") {
            config.storage_dir = Some(config.data_dir.join(STORAGE_SUBDIR));
        }
        config.validate()?;
        Ok(config)
    }

    /// One line for the start-up log: the profile and the values it decides, as in effect.
    pub fn describe_profile(&self) -> String {
        let threading = match (self.threading, self.cores.as_slice()) {
            (Threading::Dedicated, []) => "dedicated threads (unpinned)".to_string(),
            (Threading::Dedicated, cores) => format!("dedicated threads pinned to cores {cores:?}"),
            (Threading::Shared, []) => "one shared thread".to_string(),
            (Threading::Shared, cores) => format!("one shared thread pinned to core {}", cores[0]),
        };
        let storage = match &self.storage_dir {
            Some(dir) => format!("storage on in {}", dir.display()),
            None => "storage off (storage_dir = false: nothing survives a restart)".to_string(),
        };
        format!(
            "profile {}: idle {}, {threading}, {storage}",
            self.profile,
            self.idle.name()
        )
    }

    /// Checks ranges and relations; the message says which value to change.
    pub fn validate(&self) -> Result<(), ConfigLoadError> {
        self.validate_backend()?;
        self.validate_streams()?;
        self.validate_sizes()?;
        self.validate_intervals()?;
        self.validate_threads_and_dirs()
    }

    fn validate_backend(&self) -> Result<(), ConfigLoadError> {
        if self.backend == Backend::Afxdp && self.interface.is_none() {
            return bad(
                "interface",
                "backend \"afxdp\" needs `interface` (e.g. \"veth0\")".into(),
            );
        }
        if self.listen.port() == 0 && self.backend == Backend::Afxdp {
            return bad(
                "listen",
                "backend \"afxdp\" needs a fixed data port (not 0)".into(),
            );
        }
        if self.backend == Backend::Dpdk {
            self.validate_dpdk()?;
        }
        in_range("queues", self.queues, 1..=QUEUES_MAX)
    }

    fn validate_dpdk(&self) -> Result<(), ConfigLoadError> {
        if self.dpdk_device.is_none() {
            return bad(
                "dpdk_device",
                "backend \"dpdk\" needs `dpdk_device`: a vdev such as \"net_af_packet0,iface=veth0,qpairs=2\" or a PCI address bound to vfio-pci".into(),
            );
        }
        if self.interface.is_none() {
            return bad(
                "interface",
                "backend \"dpdk\" needs `interface`: the name its policy maps are pinned under (the control plane writes policy there)".into(),
            );
        }
        if !self.listen.is_ipv4() || self.listen.port() == 0 {
            return bad(
                "listen",
                "backend \"dpdk\" needs an IPv4 `listen` address with a fixed port".into(),
            );
        }
        if self.dpdk_feedback_port != 0 && self.dpdk_feedback_port == self.listen.port() {
            return bad(
                "dpdk_feedback_port",
                "must differ from the data port (0 picks data port + 1)".into(),
            );
        }
        in_range("queues", self.queues, 1..=16)?;
        in_range("dpdk_memory_mb", self.dpdk_memory_mb, 16..=16 << 10)?;
        in_range("dpdk_mbufs", self.dpdk_mbufs, 1023..=1 << 20)
    }

    /// The port the DPDK sender's STATUS/NAK come back to.
    pub fn dpdk_feedback_port(&self) -> u16 {
        match self.dpdk_feedback_port {
            0 => self
                .listen
                .port()
                .checked_add(1)
                .unwrap_or(self.listen.port() - 1),
            p => p,
        }
    }

    /// The EAL `--file-prefix` of this node.
    pub fn dpdk_file_prefix(&self) -> String {
        self.dpdk_file_prefix
            .clone()
            .unwrap_or_else(|| format!("memstreamer-{}", self.listen.port()))
    }

    fn validate_streams(&self) -> Result<(), ConfigLoadError> {
        if self.streams.is_empty() || self.streams.len() > STREAMS_MAX {
            return bad(
                "streams",
                format!(
                    "need 1..={STREAMS_MAX} [[streams]] entries, got {}",
                    self.streams.len()
                ),
            );
        }
        for (i, s) in self.streams.iter().enumerate() {
            if !(1..=PARTITIONS_MAX).contains(&s.partitions) {
                return bad(
                    "streams",
                    format!(
                        "stream {} has {} partitions, not in 1..={PARTITIONS_MAX}",
                        s.id, s.partitions
                    ),
                );
            }
            if self.streams[..i].iter().any(|o| o.id == s.id) {
                return bad("streams", format!("stream {} is listed twice", s.id));
            }
        }
        Ok(())
    }

    /// Ring, table, batch, queue and window sizes.
    fn validate_sizes(&self) -> Result<(), ConfigLoadError> {
        if !self.ring_capacity_bytes.is_power_of_two() || self.ring_capacity_bytes < 64 << 10 {
            return bad(
                "ring_capacity_bytes",
                format!(
                    "{} must be a power of two >= 65536",
                    self.ring_capacity_bytes
                ),
            );
        }
        in_range("sessions_max", self.sessions_max, 1..=SESSIONS_MAX)?;
        in_range("subscribers_max", self.subscribers_max, 1..=SUBSCRIBERS_MAX)?;
        let udp_batch_max = crate::net::udp::UDP_BATCH_MAX as u32;
        in_range("rx_batch_max", self.rx_batch_max, 1..=udp_batch_max)?;
        let udp_tx_queue_max = crate::net::udp::UDP_TX_QUEUE_MAX as u32;
        in_range("tx_queue_max", self.tx_queue_max, 1..=udp_tx_queue_max)?;
        let frame = xdp_programs::abi_consts::FRAME_BYTES_MAX;
        in_range("window_bytes", self.window_bytes, frame..=WINDOW_BYTES_MAX)?;
        in_range(
            "retransmit_window_bytes",
            self.retransmit_window_bytes,
            u64::from(frame)..=RETRANSMIT_WINDOW_BYTES_MAX,
        )?;
        let depth_max = crate::agent::COMMAND_QUEUE_DEPTH_MAX as u32;
        in_range(
            "command_queue_depth",
            self.command_queue_depth,
            1..=depth_max,
        )
    }

    fn validate_intervals(&self) -> Result<(), ConfigLoadError> {
        for (key, v) in [
            ("nak_delay_ns", self.nak_delay_ns),
            ("nak_retry_ns", self.nak_retry_ns),
            ("status_interval_ns", self.status_interval_ns),
            ("heartbeat_interval_ns", self.heartbeat_interval_ns),
            ("session_timeout_ns", self.session_timeout_ns),
            (
                "archive_commit_interval_ns",
                self.archive_commit_interval_ns,
            ),
            ("replica_lag_time_max_ns", self.replica_lag_time_max_ns),
        ] {
            if v == 0 || v > INTERVAL_NS_MAX {
                return bad(key, format!("{v} not in 1..={INTERVAL_NS_MAX} ns"));
            }
        }
        if self.session_timeout_ns <= self.heartbeat_interval_ns {
            return bad(
                "session_timeout_ns",
                "must exceed heartbeat_interval_ns, or idle sessions are dropped".into(),
            );
        }
        Ok(())
    }

    fn validate_threads_and_dirs(&self) -> Result<(), ConfigLoadError> {
        if self.threading == Threading::Dedicated && !self.cores.is_empty() && self.cores.len() < 4
        {
            return bad(
                "cores",
                format!(
                    "dedicated threading pins 4 agents; list 4 cores or none (got {})",
                    self.cores.len()
                ),
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "is empty: give a directory".into());
        }
        if self
            .storage_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return bad(
                "storage_dir",
                "is empty: give a directory, or false for no storage".into(),
            );
        }
        Ok(())
    }

    /// The retransmit buffer of a remote subscriber's session: `retransmit_window_bytes`
    /// rounded down to a power of two, within the SDK's buffer limits (any accepted value
    /// works; before, values that were not such a power of two refused every subscriber).
    pub fn subscriber_buffer_bytes(&self) -> usize {
        let w = usize::try_from(self.retransmit_window_bytes).unwrap_or(usize::MAX);
        let pow2 = if w.is_power_of_two() {
            w
        } else {
            w.checked_next_power_of_two()
                .map_or(1 << (usize::BITS - 1), |p| p / 2)
        };
        pow2.clamp(sdk::net::BUFFER_BYTES_MIN, sdk::net::BUFFER_BYTES_MAX)
    }

    /// Whether `stream`/`partition` is served by this node.
    pub fn serves(&self, stream: u32, partition: u16) -> bool {
        self.streams
            .iter()
            .any(|s| s.id == stream && partition < s.partitions)
    }
}

/// Keys that `MS_<KEY>` may override (scalars only; `streams` and `cores` come from the file).
const SCALAR_KEYS: &[&str] = &[
    "dpdk_device",
    "dpdk_memory_mb",
    "dpdk_mbufs",
    "dpdk_huge_dir",
    "dpdk_file_prefix",
    "dpdk_feedback_port",
    "profile",
    "backend",
    "listen",
    "interface",
    "queues",
    "threading",
    "idle",
    "shm_dir",
    "ring_capacity_bytes",
    "data_dir",
    "storage_dir",
    "counters_file",
    "sessions_max",
    "subscribers_max",
    "rx_batch_max",
    "tx_queue_max",
    "window_bytes",
    "retransmit_window_bytes",
    "nak_delay_ns",
    "nak_retry_ns",
    "status_interval_ns",
    "heartbeat_interval_ns",
    "session_timeout_ns",
    "archive_commit_interval_ns",
    "command_queue_depth",
    "replay_records_max",
    "xdp_default_allow",
    "node_id",
    "replica_lag_time_max_ns",
];

fn env_value(var: &str, value: &str) -> Result<toml::Value, ConfigLoadError> {
    if value.is_empty() {
        return Err(ConfigLoadError::Env {
            var: var.into(),
            value: value.into(),
            message: "empty".into(),
        });
    }
    if value == "true" || value == "false" {
        return Ok(toml::Value::Boolean(value == "true"));
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return value
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|e| ConfigLoadError::Env {
                var: var.into(),
                value: value.into(),
                message: e.to_string(),
            });
    }
    Ok(toml::Value::String(value.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigLoadError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_toml_with_env(text, "test", env)
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(load("", &[]).unwrap(), Config::default());
    }

    #[test]
    fn the_default_profile_idles_politely_and_persists() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.profile, Profile::Default);
        assert_eq!((c.idle, c.threading), (Idle::Backoff, Threading::Shared));
        assert_eq!(
            c.storage_dir.as_deref(),
            Some(Path::new("/var/lib/memstreamer/storage"))
        );
        let c = load("data_dir = \"/tmp/ms-x\"", &[]).unwrap();
        assert_eq!(
            c.storage_dir.as_deref(),
            Some(Path::new("/tmp/ms-x/storage"))
        );
        assert!(c
            .describe_profile()
            .starts_with("profile default: idle backoff, "));
        assert!(c
            .describe_profile()
            .contains("storage on in /tmp/ms-x/storage"));
    }

    #[test]
    fn the_low_latency_profile_busy_spins_unless_a_key_says_otherwise() {
        let c = load("profile = \"low-latency\"", &[]).unwrap();
        assert_eq!(c, Config::low_latency());
        assert_eq!(
            (c.idle, c.threading),
            (Idle::BusySpin, Threading::Dedicated)
        );
        assert!(
            c.storage_dir.is_some(),
            "the profile does not turn storage off"
        );
        let c = load("profile = \"low-latency\"\nthreading = \"shared\"", &[]).unwrap();
        assert_eq!((c.idle, c.threading), (Idle::BusySpin, Threading::Shared));
        // The environment (and so a command-line flag, passed as MS_PROFILE) picks it too, and
        // a later pair wins.
        let c = load(
            "idle = \"yielding\"",
            &[("MS_PROFILE", "default"), ("MS_PROFILE", "low-latency")],
        )
        .unwrap();
        assert_eq!(c.profile, Profile::LowLatency);
        assert_eq!(
            (c.idle, c.threading),
            (Idle::Yielding, Threading::Dedicated)
        );
        let e = load("profile = \"fast\"", &[]).unwrap_err().to_string();
        assert!(e.contains("fast"), "{e}");
        assert_eq!(
            "low-latency".parse::<Profile>().unwrap(),
            Profile::LowLatency
        );
        assert!("fast"
            .parse::<Profile>()
            .unwrap_err()
            .to_string()
            .contains("low-latency"));
    }

    #[test]
    fn storage_is_a_directory_or_false() {
        assert_eq!(load("storage_dir = false", &[]).unwrap().storage_dir, None);
        assert_eq!(
            load("", &[("MS_STORAGE_DIR", "false")])
                .unwrap()
                .storage_dir,
            None
        );
        let c = load("storage_dir = \"/srv/log\"\ndata_dir = \"/x\"", &[]).unwrap();
        assert_eq!(c.storage_dir.as_deref(), Some(Path::new("/srv/log")));
        assert!(c.describe_profile().contains("storage on in /srv/log"));
        let c = load("storage_dir = false", &[]).unwrap();
        assert!(c.describe_profile().contains("storage off"));
        for bad in [
            "storage_dir = true",
            "storage_dir = \"\"",
            "storage_dir = 3",
            "data_dir = \"\"",
        ] {
            let e = load(bad, &[]).unwrap_err().to_string();
            assert!(
                e.contains("storage_dir") || e.contains("data_dir") || e.contains("directory"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn file_values_and_env_overrides() {
        let text =
            "backend = \"udp\"\nlisten = \"127.0.0.1:9000\"\n[[streams]]\nid = 3\npartitions = 2\n";
        let c = load(
            text,
            &[
                ("MS_LISTEN", "127.0.0.1:9100"),
                ("MS_SESSIONS_MAX", "12"),
                ("OTHER", "x"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9100);
        assert_eq!(c.sessions_max, 12);
        assert!(c.serves(3, 1) && !c.serves(3, 2) && !c.serves(7, 0));
    }

    #[test]
    fn subscriber_buffer_is_a_usable_power_of_two() {
        for (window, buffer) in [
            (9000, sdk::net::BUFFER_BYTES_MIN),
            (100_000, sdk::net::BUFFER_BYTES_MIN),
            (200_000, 128 << 10),
            (4 << 20, 4 << 20),
            (RETRANSMIT_WINDOW_BYTES_MAX, sdk::net::BUFFER_BYTES_MAX),
        ] {
            let c = load(&format!("retransmit_window_bytes = {window}"), &[]).unwrap();
            assert_eq!(c.subscriber_buffer_bytes(), buffer, "{window}");
        }
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let e = load("backend = \"afxdp\"", &[]).unwrap_err().to_string();
        assert!(e.contains("interface"), "{e}");
        let e = load("backend = \"dpdk\"", &[]).unwrap_err().to_string();
        assert!(e.contains("dpdk"), "{e}");
        let e = load("ring_capacity_bytes = 1000", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("power of two"), "{e}");
        let e = load("typo_key = 1", &[]).unwrap_err().to_string();
        assert!(e.contains("typo_key"), "{e}");
        let e = load("", &[("MS_SESSIONS_MAX", "0")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("sessions_max"), "{e}");
        let e = load("", &[("MS_QUEUES", "")]).unwrap_err().to_string();
        assert!(e.contains("MS_QUEUES"), "{e}");
        let e = load("[[streams]]\nid = 1\n[[streams]]\nid = 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
    }
}
