//! Assembles a node from its [`Config`]: rings, storage replay, ports, agents, threads.
//!
//! ```text
//!  remote publishers --DATA--> data port --> receiver --> ring(stream, partition) --> local SDK subscribers
//!          ^                    (udp|afxdp)     |  NAK/STATUS       |        |
//!          +----------------------------------- +                   |        +--> archiver --> storage-nvme
//!  remote subscribers <--DATA-- sender port <-- sender <------------+              (durable ring mark
//!          |  SETUP+SUBSCRIBE -> data port -> receiver -> conductor -> sender       -> receiver STATUS)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use shm_ring::{Mode, PublisherKind, Ring, RingCreateError};

use crate::agent::{
    spsc, Agent, AgentInvoker, AgentRunner, AgentRunnerStartError, AgentSlot, Clock, CommandQueue,
    DutyCycleSlot, SpscConsumer, SpscProducer, ThreadingMode,
};
use crate::archive::{self, ArchiveOpenError};
use crate::archiver::Archiver;
use crate::conductor::{
    Conductor, PartitionRegistry, Placement, StreamRings, SubscriptionSettings,
    COMMAND_RING_CAPACITY_BYTES, COMMAND_RING_NAME,
};
use crate::config::{Config, Threading};
use crate::counters::{
    cycles_counter, duty_cycle_counter, Counter, Counters, CountersFile, CountersFileError,
};
use crate::net::{afxdp, udp, Backend, NetPort, NetPortOpenError, SenderPort};
use crate::proxy::{ArchiverCommand, ConductorCommand, ReceiverCommand, SenderCommand};
use crate::receiver::{Receiver, RingSink};
use crate::replay::{ReplayClient, ReplayServer};
use crate::retire::Retired;
use crate::sender::Sender;
use crate::session::{SessionConfig, SessionTable};

/// Why a node could not start; each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum NodeStartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigLoadError),
    #[error("cannot attach the {agent} to the rings: {detail} (another process may hold every slot; raise subscribers_max of the rings' creator)")]
    Attach { agent: &'static str, detail: String },
    #[error("cannot create the ring of stream {stream} partition {partition}: {detail}")]
    Ring {
        stream: u32,
        partition: u16,
        detail: String,
    },
    #[error("cannot create the control-plane command ring `{}`: {detail} (another data plane may use the same ring directory: give each node its own shm_dir)", crate::conductor::COMMAND_RING_NAME)]
    CommandRing { detail: String },
    #[error(transparent)]
    Storage(#[from] ArchiveOpenError),
    #[error("data port: {0}")]
    Port(#[from] NetPortOpenError),
    #[error("cannot attach the XDP program to `{iface}`: {source} (needs root/CAP_NET_ADMIN+CAP_BPF and a kernel with XDP; or use --backend udp)")]
    Xdp {
        iface: String,
        source: Box<xdp_programs::loader::XdpLoadError>,
    },
    #[error("backend afxdp needs an IPv4 `listen` address on the interface, got {0}")]
    AfxdpAddress(SocketAddr),
    #[error(transparent)]
    Counters(#[from] CountersFileError),
    #[error(transparent)]
    Threads(#[from] AgentRunnerStartError),
}

/// The partition rings; the ones this node created are removed on drop (every path, also a
/// failed start).
struct NodeRings(Vec<(Ring, bool)>);

impl Drop for NodeRings {
    fn drop(&mut self) {
        for (ring, created) in &self.0 {
            if *created {
                let _ = ring.unlink();
            }
        }
    }
}

/// What the node built, before threads run it.
pub struct NodeParts {
    pub agents: Vec<AgentSlot>,
    pub counters: Counters,
    pub data_addr: SocketAddr,
    pub sender_addr: SocketAddr,
    pub describe: String,
    pub replayed_records: u64,
    rings: NodeRings,
    xdp: Option<xdp_programs::XdpHandle>,
}

impl NodeParts {
    /// Builds every agent (threading mode Invoker: the caller drives them).
    pub fn build(config: &Config) -> Result<NodeParts, NodeStartError> {
        config.validate().map_err(|e| NodeStartError::Ring {
            stream: 0,
            partition: 0,
            detail: e.to_string(),
        })?;
        let partitions: Vec<(u32, u16)> = config
            .streams
            .iter()
            .flat_map(|s| (0..s.partitions).map(move |p| (s.id, p)))
            .collect();
        let counters = Counters::new(&partitions);
        let ring_cfg = partition_ring_config(config);
        let (mut rings, replayed_records) = open_rings(config, &ring_cfg, &partitions)?;
        counters.add(Counter::ArchiverReplayedRecords, replayed_records);
        let stream_rings = open_command_ring(&ring_cfg, &partitions, &mut rings)?;
        let (data_port, sender_port, xdp) = open_ports(config)?;
        let (data_addr, sender_addr) = (data_port.local_addr(), sender_port.local_addr());
        let describe = format!(
            "data port {} | sender port {}",
            data_port.describe(),
            sender_port.describe()
        );
        let parts = AgentParts {
            config,
            counters: &counters,
            partitions: &partitions,
            rings: rings.partition_rings(partitions.len()),
            data_addr,
        };
        let agents = parts.build(Queues::new(config), data_port, sender_port, stream_rings)?;
        Ok(NodeParts {
            agents: duty_slots(agents, &counters),
            counters,
            data_addr,
            sender_addr,
            describe,
            replayed_records,
            rings,
            xdp,
        })
    }

    /// Runs the agents on the caller's thread (tests).
    pub fn into_invoker(self) -> (AgentInvoker, NodeHandle) {
        let NodeParts {
            agents,
            counters,
            data_addr,
            sender_addr,
            describe,
            replayed_records,
            rings,
            xdp,
        } = self;
        let invoker = AgentInvoker::new(agents, Clock::new());
        (
            invoker,
            NodeHandle {
                counters,
                data_addr,
                sender_addr,
                describe,
                replayed_records,
                rings,
                xdp,
                runner: None,
            },
        )
    }

    /// Starts threads per the config's threading mode.
    pub fn start(self, config: &Config) -> Result<NodeHandle, NodeStartError> {
        let mode = match config.threading {
            Threading::Dedicated => ThreadingMode::Dedicated {
                cores: config.cores.clone(),
            },
            Threading::Shared => ThreadingMode::Shared {
                core: config.cores.first().copied(),
            },
        };
        let NodeParts {
            agents,
            counters,
            data_addr,
            sender_addr,
            describe,
            replayed_records,
            rings,
            xdp,
        } = self;
        let runner = AgentRunner::start(&mode, agents, config.idle.strategy(), Clock::new())?;
        Ok(NodeHandle {
            counters,
            data_addr,
            sender_addr,
            describe,
            replayed_records,
            rings,
            xdp,
            runner: Some(runner),
        })
    }
}

impl NodeRings {
    /// Handles of the first `n` rings (the configured partitions, in order).
    fn partition_rings(&self, n: usize) -> Vec<Ring> {
        self.0.iter().take(n).map(|(r, _)| r.clone()).collect()
    }
}

/// The ring settings of the node's partitions (reliable, shared publishers).
fn partition_ring_config(config: &Config) -> shm_ring::RingConfig {
    let mut ctx = sdk::Context::builder()
        .capacity_bytes(config.ring_capacity_bytes)
        .mode(Mode::Reliable)
        .publisher_kind(PublisherKind::Shared);
    if let Some(dir) = &config.shm_dir {
        ctx = ctx.dir(dir.clone());
    }
    ctx.build().ring_config()
}

/// Creates (or opens) the configured partitions' rings; a fresh ring gets the tail of its
/// partition's log replayed into it. Returns the rings and the records replayed.
fn open_rings(
    config: &Config,
    ring_cfg: &shm_ring::RingConfig,
    partitions: &[(u32, u16)],
) -> Result<(NodeRings, u64), NodeStartError> {
    let mut rings = NodeRings(Vec::with_capacity(partitions.len() + 1));
    let mut replayed_records = 0;
    for &(stream, partition) in partitions {
        let name = sdk::ring_name(stream, partition);
        let ring_err = |detail: String| NodeStartError::Ring {
            stream,
            partition,
            detail,
        };
        let (ring, fresh) = match Ring::create(&name, ring_cfg) {
            Ok(r) => (r, true),
            Err(RingCreateError::Exists { .. }) => (
                Ring::open(&name, ring_cfg.dir.as_deref()).map_err(|e| ring_err(e.to_string()))?,
                false,
            ),
            Err(e) => return Err(ring_err(e.to_string())),
        };
        rings.0.push((ring.clone(), fresh));
        if ring.max_payload_len() < xdp_programs::abi_consts::FRAME_BYTES_MAX as usize {
            return Err(ring_err(format!(
                "ring_capacity_bytes {} is too small for a frame",
                config.ring_capacity_bytes
            )));
        }
        if let (Some(dir), true) = (&config.storage_dir, fresh) {
            replayed_records += archive::replay(
                &archive::log_dir(dir, stream, partition),
                &ring,
                config.replay_records_max,
            )?;
        }
    }
    Ok((rings, replayed_records))
}

/// Creates the control plane's command ring (see conductor/streams.rs; small, so never on
/// hugepages) and the conductor's reader of it; the ring goes with the node's rings.
fn open_command_ring(
    ring_cfg: &shm_ring::RingConfig,
    partitions: &[(u32, u16)],
    rings: &mut NodeRings,
) -> Result<StreamRings, NodeStartError> {
    let command_err = |detail: String| NodeStartError::CommandRing { detail };
    let command_cfg = shm_ring::RingConfig {
        capacity_bytes: COMMAND_RING_CAPACITY_BYTES,
        backing: shm_ring::Backing::DevShm,
        ..ring_cfg.clone()
    };
    let command_ring =
        Ring::create(COMMAND_RING_NAME, &command_cfg).map_err(|e| command_err(e.to_string()))?;
    rings.0.push((command_ring.clone(), true));
    // The replica status ring (#11): lossy, so a control plane that does not read it never
    // holds the conductor back.
    let status_cfg = shm_ring::RingConfig {
        capacity_bytes: abi::assign::STATUS_RING_CAPACITY_BYTES,
        mode: Mode::Lossy,
        ..command_cfg.clone()
    };
    let status_ring = Ring::create(abi::assign::STATUS_RING_NAME, &status_cfg)
        .map_err(|e| command_err(format!("status ring: {e}")))?;
    rings.0.push((status_ring, true));
    StreamRings::new(&command_ring, ring_cfg.clone(), partitions.to_vec())
        .map_err(|e| command_err(e.to_string()))
}

/// The data port and the sender's port of the configured backend (and the XDP attachment).
#[allow(clippy::type_complexity)]
fn open_ports(
    config: &Config,
) -> Result<(NetPort, SenderPort, Option<xdp_programs::XdpHandle>), NodeStartError> {
    if config.backend == Backend::Dpdk {
        return open_dpdk_ports(config);
    }
    let (data_port, xdp) = open_data_port(config)?;
    let sender_port = open_sender_port(config)?;
    Ok((data_port, sender_port, xdp))
}

/// DPDK: one port, RX queues + the receiver's TX queue, and the sender's own TX queue; the
/// policy maps pinned under `interface` and enforced in user space (see net::dpdk).
#[cfg(feature = "dpdk")]
#[allow(clippy::type_complexity)]
fn open_dpdk_ports(
    config: &Config,
) -> Result<(NetPort, SenderPort, Option<xdp_programs::XdpHandle>), NodeStartError> {
    use crate::net::dpdk;
    let SocketAddr::V4(local) = config.listen else {
        return Err(NodeStartError::AfxdpAddress(config.listen));
    };
    let device = config
        .dpdk_device
        .clone()
        .expect("validated: dpdk has a device");
    let (vdevs, pci) = if dpdk::is_vdev(&device) {
        (vec![device.clone()], vec![])
    } else {
        (vec![], vec![device.clone()])
    };
    let cfg = dpdk::DpdkConfig {
        device,
        local,
        feedback_port: config.dpdk_feedback_port(),
        policy_name: config
            .interface
            .clone()
            .expect("validated: dpdk has an interface"),
        default_allow: config.xdp_default_allow,
        rx_queues: config.queues as u16,
        mbufs: config.dpdk_mbufs,
        eal: dpdk::eal::EalConfig {
            file_prefix: config.dpdk_file_prefix(),
            huge_dir: config.dpdk_huge_dir.clone(),
            memory_mb: config.dpdk_memory_mb,
            cores: config.cores.clone(),
            vdevs,
            pci,
        },
    };
    let (rx, tx) = dpdk::DpdkPort::open(&cfg).map_err(NetPortOpenError::from)?;
    Ok((
        NetPort::Dpdk(Box::new(rx)),
        SenderPort::Dpdk(Box::new(tx)),
        None,
    ))
}

#[cfg(not(feature = "dpdk"))]
#[allow(clippy::type_complexity)]
fn open_dpdk_ports(
    _config: &Config,
) -> Result<(NetPort, SenderPort, Option<xdp_programs::XdpHandle>), NodeStartError> {
    Err(NetPortOpenError::BackendUnavailable(Backend::Dpdk).into())
}

/// The data port: a kernel UDP socket, or XDP + AF_XDP sockets on the interface.
fn open_data_port(
    config: &Config,
) -> Result<(NetPort, Option<xdp_programs::XdpHandle>), NodeStartError> {
    let Backend::Afxdp = config.backend else {
        let port = udp::UdpPort::bind(
            config.listen,
            config.rx_batch_max as usize,
            config.tx_queue_max as usize,
        )
        .map_err(NetPortOpenError::from)?;
        return Ok((NetPort::Udp(port), None));
    };
    let iface = config
        .interface
        .clone()
        .expect("validated: afxdp has an interface");
    let SocketAddr::V4(local) = config.listen else {
        return Err(NodeStartError::AfxdpAddress(config.listen));
    };
    let flags = if config.xdp_default_allow {
        xdp_programs::abi_consts::CONFIG_FLAG_DEFAULT_ALLOW
    } else {
        0
    };
    let xdp_cfg = xdp_programs::Config {
        data_port: local.port(),
        reserved: 0,
        flags,
    };
    let handle = xdp_programs::XdpProgram::load_and_attach(
        &iface,
        xdp_programs::AttachMode::Native,
        xdp_cfg,
    )
    .map_err(|source| NodeStartError::Xdp {
        iface: iface.clone(),
        source: Box::new(source),
    })?;
    let mut xsk = afxdp::XskConfig::new(&iface, local);
    xsk.queues = config.queues;
    let port = afxdp::XskPort::open(&xsk).map_err(NetPortOpenError::from)?;
    Ok((NetPort::AfXdp(port), Some(handle)))
}

/// The sender answers from its own port on the same address (see sender.rs): a kernel UDP
/// socket; with AF_XDP it receives STATUS/NAK there and transmits through a TX-only AF_XDP
/// socket on the queue after the receiver's, with that socket's port as source.
fn open_sender_port(config: &Config) -> Result<SenderPort, NodeStartError> {
    let sender_udp = udp::UdpPort::bind(
        SocketAddr::new(config.listen.ip(), 0),
        config.rx_batch_max as usize,
        config.tx_queue_max as usize,
    )
    .map_err(NetPortOpenError::from)?;
    match (config.backend, sender_udp.local_addr()) {
        (Backend::Afxdp, SocketAddr::V4(feedback_addr)) => {
            let iface = config.interface.as_deref().expect("validated");
            let xsk = afxdp::XskConfig::new(iface, feedback_addr);
            let tx =
                afxdp::XskPort::open_tx(&xsk, config.queues).map_err(NetPortOpenError::from)?;
            Ok(SenderPort::AfXdp {
                tx: Box::new(tx),
                feedback: sender_udp,
            })
        }
        _ => Ok(SenderPort::Udp(sender_udp)),
    }
}

/// The bounded queues between the agents (module docs of [`crate::proxy`]).
struct Queues {
    conductor: CommandQueue<ConductorCommand>,
    receiver: (SpscProducer<ReceiverCommand>, SpscConsumer<ReceiverCommand>),
    sender: (SpscProducer<SenderCommand>, SpscConsumer<SenderCommand>),
    archiver: (SpscProducer<ArchiverCommand>, SpscConsumer<ArchiverCommand>),
    /// What the sender and the receiver retire, to the conductor.
    tx_graveyard: (SpscProducer<Retired>, SpscConsumer<Retired>),
    rx_graveyard: (SpscProducer<Retired>, SpscConsumer<Retired>),
    replay: (ReplayClient, ReplayServer),
}

impl Queues {
    fn new(config: &Config) -> Queues {
        let depth = config.command_queue_depth as usize;
        Queues {
            conductor: CommandQueue::new(depth),
            receiver: spsc(depth),
            sender: spsc(depth),
            archiver: spsc(depth),
            tx_graveyard: spsc(depth),
            rx_graveyard: spsc(depth),
            // One storage read per catching-up subscriber in flight at most: room for all of them.
            replay: crate::replay::replay_channel(depth.max(config.subscribers_max as usize)),
        }
    }
}

/// What the agents are built from. Configured partitions are slots 0..n; slots n.. are for
/// partitions the control plane creates at run time (the conductor hands them to the agents).
struct AgentParts<'a> {
    config: &'a Config,
    counters: &'a Counters,
    partitions: &'a [(u32, u16)],
    rings: Vec<Ring>,
    data_addr: SocketAddr,
}

impl AgentParts<'_> {
    fn slots_max(&self) -> usize {
        self.partitions.len() + crate::conductor::DYNAMIC_RINGS_MAX
    }

    fn cells(&self) -> Vec<std::sync::Arc<crate::counters::PartitionCells>> {
        (0..self.partitions.len())
            .map(|i| self.counters.partition_cells(i))
            .collect()
    }

    /// Receiver, sender, archiver (with storage), conductor, in that order.
    fn build(
        self,
        queues: Queues,
        data_port: NetPort,
        sender_port: SenderPort,
        stream_rings: StreamRings,
    ) -> Result<Vec<Box<dyn Agent>>, NodeStartError> {
        let neighbour_interface = sender_port.neighbour_interface();
        let Queues {
            conductor,
            receiver,
            sender,
            archiver,
            tx_graveyard,
            rx_graveyard,
            replay,
        } = queues;
        let mut agents: Vec<Box<dyn Agent>> = vec![
            Box::new(self.receiver(data_port, receiver.1, rx_graveyard.0, &conductor)?),
            Box::new(self.sender(sender_port, sender.1, tx_graveyard.0, replay.0)?),
        ];
        let storage = self.config.storage_dir.is_some();
        if let Some(dir) = &self.config.storage_dir {
            let archiver_agent = Archiver::open_with_slots(
                dir,
                self.rings.clone(),
                self.counters.clone(),
                self.config.archive_commit_interval_ns,
                self.slots_max(),
            )?
            .with_commands(archiver.1, conductor.clone())
            .with_replay(replay.1);
            agents.push(Box::new(archiver_agent));
        }
        let registry = PartitionRegistry::new(
            self.partitions
                .iter()
                .zip(self.rings.iter().cloned())
                .map(|(&(s, p), r)| (s, p, r))
                .collect(),
            self.slots_max(),
            self.config.storage_dir.clone(),
            self.config.replay_records_max,
            receiver.0,
            sender.0,
            storage.then_some(archiver.0),
        )
        .with_fixed_cells(self.cells());
        let file = CountersFile::create(&self.config.counters_file, self.counters)?;
        let mut conductor = Conductor::new(
            conductor,
            registry,
            self.counters.clone(),
            file,
            self.subscription_settings(neighbour_interface),
        )
        .with_stream_commands(stream_rings)
        .with_placement(self.placement()?)
        .with_graveyard(tx_graveyard.1)
        .with_graveyard(rx_graveyard.1);
        let roles: Vec<&'static str> = agents.iter().map(|a| a.role()).collect();
        conductor.watch(&roles);
        agents.push(Box::new(conductor));
        Ok(agents)
    }

    fn receiver(
        &self,
        data_port: NetPort,
        commands: SpscConsumer<ReceiverCommand>,
        graveyard: SpscProducer<Retired>,
        conductor: &CommandQueue<ConductorCommand>,
    ) -> Result<Receiver, NodeStartError> {
        let config = self.config;
        let session_cfg = SessionConfig {
            sessions_max: config.sessions_max as usize,
            window_bytes: config.window_bytes,
            nak_delay_ns: config.nak_delay_ns,
            nak_retry_ns: config.nak_retry_ns,
            status_interval_ns: config.status_interval_ns,
            session_timeout_ns: config.session_timeout_ns,
            receiver_id: u64::from(self.data_addr.port()) | (u64::from(std::process::id()) << 16),
        };
        let sink = RingSink::with_slots(self.rings.clone(), self.slots_max())
            .map_err(|e| attach_err("receiver", e))?;
        Ok(Receiver::new(
            data_port,
            SessionTable::with_slots(session_cfg, self.partitions, self.slots_max()),
            sink,
            self.cells(),
            self.counters.clone(),
            conductor.clone(),
            config.storage_dir.is_some(),
            config.rx_batch_max as usize,
        )
        .with_partition_commands(commands)
        .with_graveyard(graveyard))
    }

    fn sender(
        &self,
        port: SenderPort,
        commands: SpscConsumer<SenderCommand>,
        graveyard: SpscProducer<Retired>,
        replay: ReplayClient,
    ) -> Result<Sender, NodeStartError> {
        let config = self.config;
        let sender = Sender::new(
            port,
            self.rings.clone(),
            self.cells(),
            self.slots_max(),
            config.subscribers_max as usize,
            config.session_timeout_ns,
            commands,
            self.counters.clone(),
        )
        .map_err(|e| attach_err("sender", e))?
        .with_graveyard(graveyard);
        Ok(match config.storage_dir {
            Some(_) => sender.with_replay(replay),
            None => sender,
        })
    }

    /// Partition placement (#11), writing replica status records to the node's status ring.
    fn placement(&self) -> Result<Placement, NodeStartError> {
        let config = self.config;
        let status_ring = Ring::open(
            abi::assign::STATUS_RING_NAME,
            partition_ring_config(config).dir.as_deref(),
        )
        .map_err(|e| NodeStartError::CommandRing {
            detail: format!("status ring: {e}"),
        })?;
        Placement::new(
            config.node_id,
            config.replica_lag_time_max_ns,
            config.window_bytes,
            Some(&status_ring),
        )
        .map_err(|e| attach_err("conductor", e))
    }

    fn subscription_settings(&self, neighbour_interface: Option<String>) -> SubscriptionSettings {
        let config = self.config;
        SubscriptionSettings {
            partitions: self.partitions.to_vec(),
            retransmit_window_bytes: config.subscriber_buffer_bytes(),
            heartbeat_interval_ns: config.heartbeat_interval_ns,
            session_timeout_ns: config.session_timeout_ns,
            principal: format!("node-{}", self.data_addr.port()),
            neighbour_interface,
        }
    }
}

fn attach_err(agent: &'static str, e: impl std::fmt::Display) -> NodeStartError {
    NodeStartError::Attach {
        agent,
        detail: e.to_string(),
    }
}

/// Each agent with the counters of its longest duty cycle and its duty-cycle count.
fn duty_slots(agents: Vec<Box<dyn Agent>>, counters: &Counters) -> Vec<AgentSlot> {
    agents
        .into_iter()
        .map(|a| {
            let duty = duty_cycle_counter(a.role()).map(|counter| DutyCycleSlot {
                counters: counters.clone(),
                counter,
                cycles: cycles_counter(a.role()),
            });
            AgentSlot::new(a, duty)
        })
        .collect()
}

/// A running (or invoker-driven) node. Dropping it stops the agents, detaches XDP and removes the
/// rings the node created.
pub struct NodeHandle {
    pub counters: Counters,
    pub data_addr: SocketAddr,
    pub sender_addr: SocketAddr,
    pub describe: String,
    pub replayed_records: u64,
    rings: NodeRings,
    xdp: Option<xdp_programs::XdpHandle>,
    runner: Option<AgentRunner>,
}

impl NodeHandle {
    /// False when an agent thread died (it panicked): stop the node and report.
    pub fn is_healthy(&self) -> bool {
        self.runner.as_ref().is_none_or(|r| r.is_healthy())
    }

    /// The ring files of the node's configured partitions, then the command ring.
    pub fn ring_paths(&self) -> Vec<PathBuf> {
        self.rings
            .0
            .iter()
            .map(|(r, _)| r.path().to_owned())
            .collect()
    }

    /// Stops the agent threads (each agent's on_close runs: logs are closed durable); returns how
    /// many agent threads had panicked.
    pub fn stop(mut self) -> usize {
        self.runner.take().map_or(0, |r| r.stop())
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        if let Some(r) = self.runner.take() {
            r.stop();
        }
        self.xdp.take();
        // The rings field then removes the rings this node created.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::CountersSnapshot;
    use crate::session::FLAG_SUBSCRIBE;
    use sdk::net::{PublisherConfig, ReceiverConfig, ReceiverCore, UdpPublisher};
    use std::net::UdpSocket;
    use std::path::Path;
    use xdp_programs::frame::{FrameHeader, FrameType};

    /// Duty cycles a test runs at most before it gives up (each is non-blocking).
    const CYCLES_MAX: usize = 2_000_000;

    fn config(dir: &Path, storage: bool) -> Config {
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            shm_dir: Some(dir.join("shm")),
            storage_dir: storage.then(|| dir.join("storage")),
            counters_file: dir.join("counters"),
            ring_capacity_bytes: 1 << 20,
            ..Config::default()
        }
    }

    fn local_subscriber(dir: &Path) -> sdk::Subscriber {
        sdk::Context::builder()
            .dir(dir.join("shm"))
            .build()
            .subscriber(7, 0)
    }

    /// Sends `count` records from a remote sdk::net publisher through the node; returns the node.
    fn publish_through(
        node: &mut AgentInvoker,
        data_addr: SocketAddr,
        count: u64,
        mut on_cycle: impl FnMut(),
    ) -> UdpPublisher {
        let cfg = PublisherConfig::new(7, 0, 42, "test");
        let mut p = UdpPublisher::new("127.0.0.1:0".parse().unwrap(), data_addr, cfg).unwrap();
        let mut next = 0u64;
        for _ in 0..CYCLES_MAX {
            while next < count && p.offer(1, &next.to_le_bytes()).is_ok() {
                next += 1;
            }
            p.do_work();
            node.invoke();
            on_cycle();
            if next == count && p.session().is_drained() {
                break;
            }
        }
        assert!(
            p.session().is_drained(),
            "publisher drained {} of {count}",
            p.session().acked_offset()
        );
        p
    }

    #[test]
    fn remote_publisher_to_local_subscriber_in_order_with_storage_and_stat() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), true);
        let (mut node, handle) = NodeParts::build(&cfg).unwrap().into_invoker();
        let mut sub = local_subscriber(dir.path());
        let mut got = Vec::new();
        let count = 20_000u64;
        let mut poll = |got: &mut Vec<u64>| {
            sub.poll(
                |r| got.push(u64::from_le_bytes(r.payload[..8].try_into().unwrap())),
                256,
            )
            .unwrap();
        };
        let _p = publish_through(&mut node, handle.data_addr, count, || poll(&mut got));
        for _ in 0..CYCLES_MAX {
            if got.len() as u64 == count
                && handle.counters.get(Counter::ArchivedDurableRecords) == count
            {
                break;
            }
            node.invoke();
            poll(&mut got);
        }
        assert_eq!(
            got,
            (0..count).collect::<Vec<_>>(),
            "in order, exactly once"
        );
        assert_eq!(handle.counters.get(Counter::RxRecordsAppended), count);
        assert_eq!(handle.counters.get(Counter::ArchivedDurableRecords), count);
        // `stat` reads the file without the node: counters are there after a publish interval.
        let snap = (0..CYCLES_MAX)
            .find_map(|_| {
                node.invoke();
                let s = CountersSnapshot::read(&cfg.counters_file).unwrap();
                (s.get(Counter::ArchivedDurableRecords) == Some(count)).then_some(s)
            })
            .expect("counters file catches up");
        assert_eq!(snap.get(Counter::RxRecordsAppended), Some(count));
        assert_eq!(snap.partitions[0].durable_records, count);
        assert!(snap.get(Counter::DutyCycleMaxReceiverNs).unwrap() > 0);
        node.close();
        drop(handle);
        assert!(
            !cfg.counters_file.exists(),
            "counters file removed with the node"
        );
        assert!(
            !dir.path().join("shm").join(sdk::ring_name(7, 0)).exists(),
            "ring removed with the node"
        );
    }

    #[test]
    fn dedicated_threads_run_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), true);
        cfg.threading = Threading::Dedicated;
        cfg.idle = crate::config::Idle::Yielding;
        let node = NodeParts::build(&cfg).unwrap().start(&cfg).unwrap();
        let mut p = UdpPublisher::new(
            "127.0.0.1:0".parse().unwrap(),
            node.data_addr,
            PublisherConfig::new(7, 0, 9, "t"),
        )
        .unwrap();
        assert!(p.wait_connected(std::time::Duration::from_secs(10)));
        let mut sub = local_subscriber(dir.path());
        let (count, mut next, mut got) = (500u64, 0u64, Vec::new());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while (got.len() as u64) < count && std::time::Instant::now() < deadline {
            while next < count && p.offer(1, &next.to_le_bytes()).is_ok() {
                next += 1;
            }
            p.do_work();
            sub.poll(
                |r| got.push(u64::from_le_bytes(r.payload[..8].try_into().unwrap())),
                256,
            )
            .unwrap();
        }
        assert_eq!(got, (0..count).collect::<Vec<_>>());
        assert!(node.is_healthy());
        assert_eq!(node.stop(), 0, "no agent thread panicked");
    }

    #[test]
    fn restart_recovers_the_stream_from_storage() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), true);
        let count = 1000u64;
        {
            let (mut node, handle) = NodeParts::build(&cfg).unwrap().into_invoker();
            let _p = publish_through(&mut node, handle.data_addr, count, || {});
            node.invoke_until(CYCLES_MAX, || {
                handle.counters.get(Counter::ArchivedDurableRecords) == count
            });
            node.close();
        }
        let (mut node, handle) = NodeParts::build(&cfg).unwrap().into_invoker();
        assert_eq!(handle.replayed_records, count);
        let mut sub = sdk::Context::builder()
            .dir(dir.path().join("shm"))
            .start_at(shm_ring::StartAt::Earliest)
            .build()
            .subscriber(7, 0);
        let mut got = Vec::new();
        for _ in 0..1000 {
            sub.poll(
                |r| got.push(u64::from_le_bytes(r.payload[..8].try_into().unwrap())),
                256,
            )
            .unwrap();
            if got.len() as u64 == count {
                break;
            }
        }
        assert_eq!(got, (0..count).collect::<Vec<_>>());
        // New records continue after the recovered ones, and are archived after them.
        let mut p = UdpPublisher::new("127.0.0.1:0".parse().unwrap(), handle.data_addr, {
            let mut c = PublisherConfig::new(7, 0, 43, "test");
            c.epoch = 1;
            c
        })
        .unwrap();
        p.offer(1, &count.to_le_bytes()).unwrap();
        for _ in 0..CYCLES_MAX {
            p.do_work();
            node.invoke();
            if handle.counters.get(Counter::ArchivedDurableRecords) == count + 1 {
                break;
            }
        }
        assert_eq!(
            handle.counters.get(Counter::ArchivedDurableRecords),
            count + 1
        );
        node.close();
    }

    /// The same remote publisher keeps publishing across a node restart on the same address:
    /// it sets its session up again, and the restarted node (recovered from storage) ends up with
    /// every record once, in order.
    #[test]
    fn publisher_continues_across_a_node_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), true);
        let (mut node, handle) = NodeParts::build(&cfg).unwrap().into_invoker();
        cfg.listen = handle.data_addr;
        let mut pcfg = PublisherConfig::new(7, 0, 44, "test");
        pcfg.status_timeout_ns = 50_000_000;
        pcfg.setup_retry_ns = 5_000_000;
        let mut p =
            UdpPublisher::new("127.0.0.1:0".parse().unwrap(), handle.data_addr, pcfg).unwrap();
        let (half, count) = (500u64, 1000u64);
        let mut next = 0u64;
        for _ in 0..CYCLES_MAX {
            while next < half && p.offer(1, &next.to_le_bytes()).is_ok() {
                next += 1;
            }
            p.do_work();
            node.invoke();
            if next == half && p.session().is_drained() {
                break;
            }
        }
        assert!(p.session().is_drained());
        node.close(); // clean stop: the archiver drains the ring and closes the log durable
        drop(handle);

        let (mut node, handle) = NodeParts::build(&cfg).unwrap().into_invoker();
        assert_eq!(handle.replayed_records, half);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            while next < count && p.offer(1, &next.to_le_bytes()).is_ok() {
                next += 1;
            }
            p.do_work();
            node.invoke();
            if next == count && p.session().is_drained() {
                break;
            }
        }
        assert!(
            p.session().is_drained(),
            "the publisher re-set up its session with the new node"
        );
        let mut sub = sdk::Context::builder()
            .dir(dir.path().join("shm"))
            .start_at(shm_ring::StartAt::Earliest)
            .build()
            .subscriber(7, 0);
        let mut got = Vec::new();
        for _ in 0..1000 {
            sub.poll(
                |r| got.push(u64::from_le_bytes(r.payload[..8].try_into().unwrap())),
                256,
            )
            .unwrap();
        }
        assert_eq!(
            got,
            (0..count).collect::<Vec<_>>(),
            "every record once, in order"
        );
        node.close();
    }

    /// Without storage, EARLIEST starts at the oldest record in the ring: records published
    /// before the SUBSCRIBE arrive first (private ring reader), then live ones, once each.
    #[test]
    fn remote_subscriber_from_earliest_without_storage_reads_the_ring_then_live() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), false);
        let (mut node, handle) = NodeParts::build(&cfg).unwrap().into_invoker();
        let mut local = sdk::Context::builder()
            .dir(dir.path().join("shm"))
            .build()
            .publisher(7, 0)
            .unwrap();
        let (before, after) = (300u64, 700u64);
        for i in 0..before {
            local.offer(&i.to_le_bytes()).unwrap();
        }
        let mut sub = sdk::net::UdpSubscriber::bind(
            "127.0.0.1:0".parse().unwrap(),
            ReceiverConfig::default(),
        )
        .unwrap();
        sub.subscribe_from(
            handle.data_addr,
            7,
            0,
            6,
            "sub",
            sdk::net::wire::SubscribeStart::Earliest,
        )
        .unwrap();
        let (mut next, mut got) = (before, Vec::new());
        for _ in 0..CYCLES_MAX {
            if sub.is_subscribed(6)
                && next < before + after
                && local.offer(&next.to_le_bytes()).is_ok()
            {
                next += 1;
            }
            node.invoke();
            sub.poll(
                |r| got.push(u64::from_le_bytes(r.payload[..8].try_into().unwrap())),
                64,
            );
            if got.len() as u64 == before + after {
                break;
            }
        }
        assert_eq!(got, (0..before + after).collect::<Vec<_>>());
        node.close();
    }

    /// With storage and a ring smaller than what was published, EARLIEST reads the log (records
    /// the ring no longer holds), then the ring, then live records, once each and in order; no
    /// root needed (loopback, invoker threading).
    #[test]
    fn remote_subscriber_from_earliest_reads_storage_then_ring_then_live() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), true);
        cfg.ring_capacity_bytes = 64 << 10;
        let (mut node, handle) = NodeParts::build(&cfg).unwrap().into_invoker();
        let mut local = sdk::Context::builder()
            .dir(dir.path().join("shm"))
            .build()
            .publisher(7, 0)
            .unwrap();
        // More than the ring holds: the archiver (a reliable reader) lets the publisher on.
        let (before, after) = (8_000u64, 500u64);
        let mut next = 0u64;
        for _ in 0..CYCLES_MAX {
            while next < before && local.offer(&next.to_le_bytes()).is_ok() {
                next += 1;
            }
            node.invoke();
            if handle.counters.get(Counter::ArchivedDurableRecords) == before {
                break;
            }
        }
        assert_eq!(handle.counters.get(Counter::ArchivedDurableRecords), before);
        let mut sub = sdk::net::UdpSubscriber::bind(
            "127.0.0.1:0".parse().unwrap(),
            ReceiverConfig::default(),
        )
        .unwrap();
        let start = sdk::net::wire::SubscribeStart::Earliest;
        sub.subscribe_from(handle.data_addr, 7, 0, 8, "sub", start)
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..CYCLES_MAX {
            if sub.is_subscribed(8)
                && next < before + after
                && local.offer(&next.to_le_bytes()).is_ok()
            {
                next += 1;
            }
            node.invoke();
            sub.poll(
                |r| got.push(u64::from_le_bytes(r.payload[..8].try_into().unwrap())),
                64,
            );
            if got.len() as u64 == before + after {
                break;
            }
        }
        assert_eq!(got, (0..before + after).collect::<Vec<_>>());
        let replayed = || handle.counters.get(Counter::TxReplayRecords) > 0;
        assert!(node.invoke_until(CYCLES_MAX, replayed), "read from storage");
        node.close();
    }

    #[test]
    fn remote_subscriber_receives_ring_records_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), false);
        let (mut node, handle) = NodeParts::build(&cfg).unwrap().into_invoker();
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_nonblocking(true).unwrap();
        let mut core = ReceiverCore::new(ReceiverConfig::default()).unwrap();
        // SETUP with FLAG_SUBSCRIBE on the data port.
        let mut body = Vec::new();
        sdk::net::wire::encode_setup(1472, "sub", &mut body);
        let h = FrameHeader {
            frame_type: FrameType::Setup,
            flags: FLAG_SUBSCRIBE,
            stream_id: 7,
            partition: 0,
            session_id: 5,
            offset: 0,
            epoch: 0,
        };
        let mut frame = Vec::new();
        h.encode(&body, &mut frame).unwrap();
        socket.send_to(&frame, handle.data_addr).unwrap();
        assert!(node.invoke_until(CYCLES_MAX, || handle
            .counters
            .get(Counter::TxSubscribersActive)
            == 1));
        let mut local = sdk::Context::builder()
            .dir(dir.path().join("shm"))
            .build()
            .publisher(7, 0)
            .unwrap();
        let count = 5000u64;
        let (mut next, mut got) = (0u64, Vec::new());
        let clock = Clock::new();
        let mut buf = vec![0u8; 9000];
        let mut out = Vec::new();
        for _ in 0..CYCLES_MAX {
            // Publish only after the node's SETUP reached the subscriber (it starts at the live tail).
            if core.expected_offset(5).is_some()
                && next < count
                && local.offer(&next.to_le_bytes()).is_ok()
            {
                next += 1;
            }
            node.invoke();
            while let Ok((n, src)) = socket.recv_from(&mut buf) {
                core.handle(clock.now_ns(), src, &buf[..n], &mut |r| {
                    got.push(u64::from_le_bytes(r.payload[..8].try_into().unwrap()))
                });
            }
            while let Some(dst) = core.poll_transmit(clock.now_ns(), &mut out) {
                socket.send_to(&out, dst).unwrap();
            }
            if got.len() as u64 == count {
                break;
            }
        }
        assert_eq!(got, (0..count).collect::<Vec<_>>());
        node.close();
    }
}
