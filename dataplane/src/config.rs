//! Node configuration: TOML with defaults for every key, `MS_<KEY>` environment overrides, validated.
//!
//! ```toml
//! backend = "udp"                 # or "afxdp" (never a silent fallback)
//! listen = "127.0.0.1:7447"       # data port (UDP backend binds it; AF_XDP filters on its port)
//! interface = "veth0"             # AF_XDP only
//! threading = "shared"            # "dedicated" (one pinned busy-polling thread per agent) | "shared"
//! cores = [2, 3, 4, 5]            # dedicated: core per agent (receiver, sender, archiver, conductor)
//! storage_dir = "/var/lib/memstreamer"   # omit: no archiver (and no restart recovery)
//! counters_file = "/dev/shm/memstreamer-counters"  # read by `memstreamer stat`
//! [[streams]]
//! id = 7
//! partitions = 1
//! ```
//!
//! Every scalar key can be overridden by an environment variable named `MS_` + the key in upper case,
//! e.g. `MS_BACKEND=afxdp`, `MS_LISTEN=198.18.100.1:7447`, `MS_RING_CAPACITY_BYTES=16777216`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
    pub backend: Backend,
    pub listen: SocketAddr,
    pub interface: Option<String>,
    /// AF_XDP: RX queues 0..queues get a receiver socket; the sender transmits on queue
    /// `queues`, so the interface needs queues + 1 TX queues.
    pub queues: u32,
    pub threading: Threading,
    pub cores: Vec<usize>,
    pub idle: Idle,
    /// Directory of the shared-memory rings (None: the SDK's default, hugetlbfs or /dev/shm).
    pub shm_dir: Option<PathBuf>,
    pub ring_capacity_bytes: u64,
    /// Storage directory of the archiver (None: no archiver).
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: Backend::Udp,
            listen: SocketAddr::from(([127, 0, 0, 1], 7447)),
            interface: None,
            queues: 1,
            threading: Threading::Shared,
            cores: Vec::new(),
            idle: Idle::BusySpin,
            shm_dir: None,
            ring_capacity_bytes: 16 << 20,
            storage_dir: None,
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

impl Config {
    /// Reads `path` (TOML), applies `MS_*` overrides from the process environment, validates.
    pub fn load(path: &Path) -> Result<Config, ConfigLoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigLoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml_with_env(&text, &path.display().to_string(), std::env::vars())
    }

    /// Defaults plus `MS_*` overrides (no file).
    pub fn from_env() -> Result<Config, ConfigLoadError> {
        Self::from_toml_with_env("", "defaults", std::env::vars())
    }

    /// Parses `text`, applies overrides from `env` (pairs of name, value), validates.
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
        let config: Config = table.try_into().map_err(parse)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and relations; the message says which value to change.
    pub fn validate(&self) -> Result<(), ConfigLoadError> {
        fn bad(key: &'static str, message: String) -> Result<(), ConfigLoadError> {
            Err(ConfigLoadError::Invalid { key, message })
        }
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
        if !(1..=QUEUES_MAX).contains(&self.queues) {
            return bad("queues", format!("{} not in 1..={QUEUES_MAX}", self.queues));
        }
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
        if !self.ring_capacity_bytes.is_power_of_two() || self.ring_capacity_bytes < 64 << 10 {
            return bad(
                "ring_capacity_bytes",
                format!(
                    "{} must be a power of two >= 65536",
                    self.ring_capacity_bytes
                ),
            );
        }
        if !(1..=SESSIONS_MAX).contains(&self.sessions_max) {
            return bad(
                "sessions_max",
                format!("{} not in 1..={SESSIONS_MAX}", self.sessions_max),
            );
        }
        if !(1..=SUBSCRIBERS_MAX).contains(&self.subscribers_max) {
            return bad(
                "subscribers_max",
                format!("{} not in 1..={SUBSCRIBERS_MAX}", self.subscribers_max),
            );
        }
        if !(1..=crate::net::udp::UDP_BATCH_MAX as u32).contains(&self.rx_batch_max) {
            return bad(
                "rx_batch_max",
                format!(
                    "{} not in 1..={}",
                    self.rx_batch_max,
                    crate::net::udp::UDP_BATCH_MAX
                ),
            );
        }
        if !(1..=crate::net::udp::UDP_TX_QUEUE_MAX as u32).contains(&self.tx_queue_max) {
            return bad(
                "tx_queue_max",
                format!(
                    "{} not in 1..={}",
                    self.tx_queue_max,
                    crate::net::udp::UDP_TX_QUEUE_MAX
                ),
            );
        }
        let frame = xdp_programs::abi_consts::FRAME_BYTES_MAX;
        if self.window_bytes < frame || self.window_bytes > WINDOW_BYTES_MAX {
            return bad(
                "window_bytes",
                format!("{} not in {frame}..={WINDOW_BYTES_MAX}", self.window_bytes),
            );
        }
        if self.retransmit_window_bytes < u64::from(frame)
            || self.retransmit_window_bytes > RETRANSMIT_WINDOW_BYTES_MAX
        {
            return bad(
                "retransmit_window_bytes",
                format!(
                    "{} not in {frame}..={RETRANSMIT_WINDOW_BYTES_MAX}",
                    self.retransmit_window_bytes
                ),
            );
        }
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
        if !(1..=crate::agent::COMMAND_QUEUE_DEPTH_MAX as u32).contains(&self.command_queue_depth) {
            return bad(
                "command_queue_depth",
                format!(
                    "{} not in 1..={}",
                    self.command_queue_depth,
                    crate::agent::COMMAND_QUEUE_DEPTH_MAX
                ),
            );
        }
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
    "backend",
    "listen",
    "interface",
    "queues",
    "threading",
    "idle",
    "shm_dir",
    "ring_capacity_bytes",
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
