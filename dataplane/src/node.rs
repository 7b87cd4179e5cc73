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
    AgentInvoker, AgentRunner, AgentRunnerStartError, AgentSlot, Clock, CommandQueue,
    DutyCycleSlot, ThreadingMode,
};
use crate::archiver::{self, ArchiveOpenError, Archiver};
use crate::conductor::{Conductor, SubscriptionSettings};
use crate::config::{Config, Threading};
use crate::counters::{duty_cycle_counter, Counter, Counters, CountersFile, CountersFileError};
use crate::net::{afxdp, udp, Backend, NetPort, NetPortOpenError};
use crate::receiver::{Receiver, RingSink};
use crate::sender::Sender;
use crate::session::{SessionConfig, SessionTable};

/// Why a node could not start; each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum NodeStartError {
    #[error("cannot create the ring of stream {stream} partition {partition}: {detail}")]
    Ring {
        stream: u32,
        partition: u16,
        detail: String,
    },
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

/// What the node built, before threads run it.
pub struct NodeParts {
    pub agents: Vec<AgentSlot>,
    pub counters: Counters,
    pub data_addr: SocketAddr,
    pub sender_addr: SocketAddr,
    pub describe: String,
    pub replayed_records: u64,
    rings: Vec<(Ring, bool)>,
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

        // Rings: a fresh ring gets the storage tail replayed into it.
        let mut ctx = sdk::Context::builder()
            .capacity_bytes(config.ring_capacity_bytes)
            .mode(Mode::Reliable)
            .publisher_kind(PublisherKind::Shared);
        if let Some(dir) = &config.shm_dir {
            ctx = ctx.dir(dir.clone());
        }
        let ring_cfg = ctx.build().ring_config();
        let mut rings = Vec::with_capacity(partitions.len());
        let mut replayed_records = 0;
        for &(stream, partition) in &partitions {
            let name = sdk::ring_name(stream, partition);
            let ring_err = |detail: String| NodeStartError::Ring {
                stream,
                partition,
                detail,
            };
            let (ring, fresh) = match Ring::create(&name, &ring_cfg) {
                Ok(r) => (r, true),
                Err(RingCreateError::Exists { .. }) => (
                    Ring::open(&name, ring_cfg.dir.as_deref())
                        .map_err(|e| ring_err(e.to_string()))?,
                    false,
                ),
                Err(e) => return Err(ring_err(e.to_string())),
            };
            if ring.max_payload_len() < xdp_programs::abi_consts::FRAME_BYTES_MAX as usize {
                return Err(ring_err(format!(
                    "ring_capacity_bytes {} is too small for a frame",
                    config.ring_capacity_bytes
                )));
            }
            if let (Some(dir), true) = (&config.storage_dir, fresh) {
                replayed_records += archiver::replay(
                    &archiver::log_dir(dir, stream, partition),
                    &ring,
                    config.replay_records_max,
                )?;
            }
            rings.push((ring, fresh));
        }
        counters.add(Counter::ArchiverReplayedRecords, replayed_records);
        let ring_list = || rings.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>();

        // Ports.
        let mut xdp = None;
        let data_port = match config.backend {
            Backend::Udp => NetPort::Udp(
                udp::UdpPort::bind(
                    config.listen,
                    config.rx_batch_max as usize,
                    config.tx_queue_max as usize,
                )
                .map_err(NetPortOpenError::from)?,
            ),
            Backend::Afxdp => {
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
                xdp = Some(handle);
                let mut xsk = afxdp::XskConfig::new(&iface, local);
                xsk.queues = config.queues;
                NetPort::AfXdp(afxdp::XskPort::open(&xsk).map_err(NetPortOpenError::from)?)
            }
        };
        // The sender answers from its own kernel UDP port on the same address (see sender.rs).
        let sender_port = NetPort::Udp(
            udp::UdpPort::bind(
                SocketAddr::new(config.listen.ip(), 0),
                config.rx_batch_max as usize,
                config.tx_queue_max as usize,
            )
            .map_err(NetPortOpenError::from)?,
        );
        let data_addr = data_port.local_addr();
        let sender_addr = sender_port.local_addr();
        let describe = format!(
            "data port {} | sender port {}",
            data_port.describe(),
            sender_port.describe()
        );

        // Agents.
        let depth = config.command_queue_depth as usize;
        let conductor_q = CommandQueue::new(depth);
        let sender_q = CommandQueue::new(depth);
        let session_cfg = SessionConfig {
            sessions_max: config.sessions_max as usize,
            window_bytes: config.window_bytes,
            nak_delay_ns: config.nak_delay_ns,
            nak_retry_ns: config.nak_retry_ns,
            status_interval_ns: config.status_interval_ns,
            session_timeout_ns: config.session_timeout_ns,
            receiver_id: u64::from(data_addr.port()) | (u64::from(std::process::id()) << 16),
        };
        let sink = RingSink::new(ring_list()).map_err(|e| NodeStartError::Ring {
            stream: 0,
            partition: 0,
            detail: e.to_string(),
        })?;
        let receiver = Receiver::new(
            data_port,
            SessionTable::new(session_cfg, &partitions),
            sink,
            counters.clone(),
            conductor_q.clone(),
            config.storage_dir.is_some(),
            config.rx_batch_max as usize,
        );
        let sender = Sender::new(
            sender_port,
            ring_list(),
            config.subscribers_max as usize,
            config.session_timeout_ns,
            sender_q.clone(),
            counters.clone(),
        )
        .map_err(|e| NodeStartError::Ring {
            stream: 0,
            partition: 0,
            detail: e.to_string(),
        })?;
        let file = CountersFile::create(&config.counters_file, &counters)?;
        let conductor = Conductor::new(
            conductor_q,
            sender_q,
            counters.clone(),
            file,
            SubscriptionSettings {
                partitions: partitions.clone(),
                retransmit_window_bytes: config.retransmit_window_bytes as usize,
                heartbeat_interval_ns: config.heartbeat_interval_ns,
                session_timeout_ns: config.session_timeout_ns,
                principal: format!("node-{}", data_addr.port()),
            },
        );
        let mut agents: Vec<Box<dyn crate::agent::Agent>> =
            vec![Box::new(receiver), Box::new(sender)];
        if let Some(dir) = &config.storage_dir {
            agents.push(Box::new(Archiver::open(
                dir,
                ring_list(),
                counters.clone(),
                config.archive_commit_interval_ns,
            )?));
        }
        agents.push(Box::new(conductor));
        let agents = agents
            .into_iter()
            .map(|a| {
                let duty = duty_cycle_counter(a.role()).map(|counter| DutyCycleSlot {
                    counters: counters.clone(),
                    counter,
                });
                AgentSlot::new(a, duty)
            })
            .collect();
        Ok(NodeParts {
            agents,
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

/// A running (or invoker-driven) node. Dropping it stops the agents, detaches XDP and removes the
/// rings the node created.
pub struct NodeHandle {
    pub counters: Counters,
    pub data_addr: SocketAddr,
    pub sender_addr: SocketAddr,
    pub describe: String,
    pub replayed_records: u64,
    rings: Vec<(Ring, bool)>,
    xdp: Option<xdp_programs::XdpHandle>,
    runner: Option<AgentRunner>,
}

impl NodeHandle {
    /// False when an agent thread died (it panicked): stop the node and report.
    pub fn is_healthy(&self) -> bool {
        self.runner.as_ref().is_none_or(|r| r.is_healthy())
    }

    /// The ring files of the node's partitions.
    pub fn ring_paths(&self) -> Vec<PathBuf> {
        self.rings
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
        for (ring, created) in &self.rings {
            if *created {
                let _ = ring.unlink();
            }
        }
    }
}
