//! Policy push: turns the replicated [`ClusterState`] into the pinned eBPF
//! maps of xdp-programs on every local data interface.
//!
//! [`desired`] computes what the maps should hold (pure); [`PolicyPusher`]
//! diffs that against what each interface holds and writes only the
//! difference through `xdp_programs::PolicyMaps`. When an interface's maps
//! are (re)opened, their current contents are read back first, so entries a
//! previous control-plane run wrote that the state no longer wants are
//! removed (no stale allow survives a restart). An interface whose program
//! is not attached yet is retried on every push.

pub mod desired;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use thiserror::Error;
use xdp_programs::abi::{
    pin_dir, source_addr_from_bytes, PolicyKey, PolicyValue, RateBucket, MAP_POLICY, MAP_RATE,
    POLICY_ACTION_ALLOW, POLICY_KEY_BYTES, POLICY_VALUE_BYTES, RATE_BUCKET_BYTES, SOURCE_KEY_BYTES,
};
use xdp_programs::{PolicyMaps, PolicyMapsError};

pub use desired::{desired_policy, diff, DesiredPolicy, PolicyDiff, RateLimit};

use crate::types::ClusterState;

/// Most data interfaces one node pushes policy to.
pub const DATA_IFACES_MAX: usize = 16;
/// Most entries read back from a map when (re)opening it (the maps' own
/// capacity is far below this).
pub const READBACK_ENTRIES_MAX: usize = 1 << 20;

#[derive(Debug, Error)]
pub enum PolicyPushError {
    #[error("interface `{iface}`: {source}")]
    Maps {
        iface: String,
        source: Box<PolicyMapsError>,
    },
    #[error(
        "interface `{iface}`: could not read back the pinned map {}: {reason}; restart \
         `ms-xdp attach` on it",
        path.display()
    )]
    Readback {
        iface: String,
        path: PathBuf,
        reason: String,
    },
}

#[derive(Debug, Error)]
#[error(
    "{count} data interfaces configured, at most {DATA_IFACES_MAX}: list only the interfaces \
     the data plane receives on"
)]
pub struct PolicyPusherNewError {
    pub count: usize,
}

/// The outcome of one push on one interface.
#[derive(Debug)]
pub struct IfacePush {
    pub iface: String,
    /// Map writes done, or why the interface was not updated.
    pub result: Result<usize, PolicyPushError>,
}

/// The outcome of one push.
#[derive(Debug)]
pub struct PushReport {
    pub ifaces: Vec<IfacePush>,
    /// Time from the start of the push until every interface was written.
    pub elapsed: Duration,
    /// CIDRs too large to expand (see [`desired`]).
    pub skipped_cidrs: Vec<String>,
}

impl PushReport {
    pub fn all_ok(&self) -> bool {
        self.ifaces.iter().all(|i| i.result.is_ok())
    }
}

struct Iface {
    name: String,
    maps: Option<PolicyMaps>,
    applied: DesiredPolicy,
}

/// Keeps the XDP maps of the local data interfaces in line with the state.
pub struct PolicyPusher {
    ifaces: Vec<Iface>,
}

impl PolicyPusher {
    pub fn new(ifaces: &[String]) -> Result<PolicyPusher, PolicyPusherNewError> {
        if ifaces.len() > DATA_IFACES_MAX {
            return Err(PolicyPusherNewError {
                count: ifaces.len(),
            });
        }
        Ok(PolicyPusher {
            ifaces: ifaces
                .iter()
                .map(|name| Iface {
                    name: name.clone(),
                    maps: None,
                    applied: DesiredPolicy::default(),
                })
                .collect(),
        })
    }

    pub fn ifaces(&self) -> impl Iterator<Item = &str> {
        self.ifaces.iter().map(|i| i.name.as_str())
    }

    /// Brings every interface's maps to the policy of `state`.
    pub fn push(&mut self, state: &ClusterState) -> PushReport {
        let start = Instant::now();
        let want = desired_policy(state);
        let ifaces = self
            .ifaces
            .iter_mut()
            .map(|iface| IfacePush {
                iface: iface.name.clone(),
                result: push_iface(iface, &want),
            })
            .collect();
        PushReport {
            ifaces,
            elapsed: start.elapsed(),
            skipped_cidrs: want.skipped.iter().cloned().collect(),
        }
    }
}

fn push_iface(iface: &mut Iface, want: &DesiredPolicy) -> Result<usize, PolicyPushError> {
    let maps_err = |source| PolicyPushError::Maps {
        iface: iface.name.clone(),
        source: Box::new(source),
    };
    if iface.maps.is_none() {
        let maps = PolicyMaps::open(&iface.name).map_err(maps_err)?;
        iface.applied = read_back(&iface.name)?;
        iface.maps = Some(maps);
    }
    let change = diff(&iface.applied, want);
    let maps = iface.maps.as_mut().expect("opened above");
    let result = apply(maps, &change);
    match result {
        Ok(()) => {
            iface.applied = DesiredPolicy {
                entries: want.entries.clone(),
                rates: want.rates.clone(),
                skipped: Default::default(),
            };
            Ok(change.len())
        }
        Err(source) => {
            // Re-open and re-read on the next push (the program may have been
            // re-attached with fresh maps).
            iface.maps = None;
            iface.applied = DesiredPolicy::default();
            Err(PolicyPushError::Maps {
                iface: iface.name.clone(),
                source: Box::new(source),
            })
        }
    }
}

fn apply(maps: &mut PolicyMaps, change: &PolicyDiff) -> Result<(), PolicyMapsError> {
    // Denials first, so a window where a source is both forgotten and newly
    // allowed never opens wider than either state.
    for ((addr, stream), allow) in change.set.iter().filter(|(_, a)| !a) {
        debug_assert!(!allow);
        maps.deny(*addr, *stream)?;
    }
    for (addr, stream) in &change.forget {
        maps.forget(*addr, *stream)?;
    }
    for ((addr, stream), _) in change.set.iter().filter(|(_, a)| *a) {
        maps.allow(*addr, *stream)?;
    }
    for (addr, limit) in &change.set_rates {
        maps.set_rate_limit(*addr, limit.rate_per_sec, limit.burst)?;
    }
    for addr in &change.clear_rates {
        maps.clear_rate_limit(*addr)?;
    }
    Ok(())
}

/// The policy and rate entries currently in the pinned maps of `iface`.
fn read_back(iface: &str) -> Result<DesiredPolicy, PolicyPushError> {
    let dir = pin_dir(iface);
    let err = |path: &PathBuf, reason: String| PolicyPushError::Readback {
        iface: iface.to_string(),
        path: path.clone(),
        reason,
    };
    let open = |name: &str| -> Result<Map, PolicyPushError> {
        let path = dir.join(name);
        let data = MapData::from_pin(&path).map_err(|e| err(&path, e.to_string()))?;
        Map::from_map_data(data).map_err(|e| err(&path, e.to_string()))
    };
    let mut out = DesiredPolicy::default();

    let path = dir.join(MAP_POLICY);
    let policy: BpfHashMap<
        MapData,
        [u8; POLICY_KEY_BYTES as usize],
        [u8; POLICY_VALUE_BYTES as usize],
    > = open(MAP_POLICY)?
        .try_into()
        .map_err(|e: aya::maps::MapError| err(&path, e.to_string()))?;
    for (n, item) in policy.iter().enumerate() {
        if n >= READBACK_ENTRIES_MAX {
            return Err(err(
                &path,
                format!("more than {READBACK_ENTRIES_MAX} entries"),
            ));
        }
        let (k, v) = item.map_err(|e| err(&path, e.to_string()))?;
        let key = PolicyKey::from_bytes(&k);
        let allow = PolicyValue::from_bytes(&v).action == POLICY_ACTION_ALLOW;
        out.entries
            .insert((source_addr_from_bytes(key.addr), key.stream_id), allow);
    }

    let path = dir.join(MAP_RATE);
    let rate: BpfHashMap<
        MapData,
        [u8; SOURCE_KEY_BYTES as usize],
        [u8; RATE_BUCKET_BYTES as usize],
    > = open(MAP_RATE)?
        .try_into()
        .map_err(|e: aya::maps::MapError| err(&path, e.to_string()))?;
    let mut rates: BTreeMap<IpAddr, RateLimit> = BTreeMap::new();
    for (n, item) in rate.iter().enumerate() {
        if n >= READBACK_ENTRIES_MAX {
            return Err(err(
                &path,
                format!("more than {READBACK_ENTRIES_MAX} entries"),
            ));
        }
        let (k, v) = item.map_err(|e| err(&path, e.to_string()))?;
        let b = RateBucket::from_bytes(&v);
        rates.insert(
            source_addr_from_bytes(k),
            RateLimit {
                rate_per_sec: b.rate_per_sec,
                burst: b.burst,
            },
        );
    }
    out.rates = rates;
    Ok(out)
}

/// How often interfaces that could not be written are retried (e.g. the
/// data plane attaches its XDP program after the control plane started).
pub const PUSH_RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Pushes policy whenever the state machine applies entries, until
/// `shutdown` turns true. Push latency (applied state seen -> maps written)
/// goes to `metrics.policy_push`; failed interfaces are retried every
/// [`PUSH_RETRY_INTERVAL`] and logged once per failure streak.
pub async fn run(
    view: crate::store::StateView,
    mut pusher: PolicyPusher,
    metrics: std::sync::Arc<crate::http::Metrics>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use std::sync::atomic::Ordering;
    let mut applied = view.applied_index();
    let mut failing = false;
    loop {
        let state = view.cluster_state();
        let report = pusher.push(&state);
        if report.all_ok() {
            metrics.policy_push.observe(report.elapsed);
            if failing {
                tracing::info!("policy push: every data interface is up to date again");
            }
            failing = false;
        } else {
            metrics.policy_push_errors.fetch_add(1, Ordering::Relaxed);
            if !failing {
                for i in &report.ifaces {
                    if let Err(e) = &i.result {
                        tracing::warn!("policy push: {e}");
                    }
                }
            }
            failing = true;
        }
        let retry = tokio::time::sleep(PUSH_RETRY_INTERVAL);
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return; // state machine gone: node shutting down
                }
            }
            _ = retry, if failing => {}
            stop = shutdown.changed() => {
                if stop.is_err() || *shutdown.borrow() {
                    return;
                }
            }
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
