//! Network namespaces + a veth pair for tests, the demo and the net bench
//! (one implementation for all three).
//!
//! ```text
//!   netns <prefix>-n (node)                    netns <prefix>-p (peer)
//!   <node_if> 198.18.S.1/30  <---- veth ---->  <peer_if> 198.18.S.2/30
//! ```
//! Addresses come only from 198.18.0.0/15 (RFC 2544 benchmarking). Both ends
//! get permanent neighbour entries (no ARP needed) and IPv6 off (no stray
//! router/neighbour solicitations). Dropping the [`TestNet`] deletes both
//! namespaces, which deletes the veth pair with them. Needs root
//! (CAP_NET_ADMIN, CAP_SYS_ADMIN) and `ip` (iproute2).

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::Command;

/// Most queues per veth end a test network creates (the XSKMAP has 64 slots).
pub const QUEUES_MAX: u32 = 16;

/// Why the test network could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TestNetCreateError {
    #[error("`ip {args}` failed: {detail} (needs root and iproute2)")]
    Ip { args: String, detail: String },
    #[error(
        "subnet index {0} must be in 0..=255 of 198.18.S.0/30 (and unique among concurrent users)"
    )]
    Subnet(u32),
    #[error("queues {0} must be in 1..={QUEUES_MAX}")]
    Queues(u32),
}

/// Why a thread could not enter a namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsEnterError {
    #[error("cannot open /run/netns/{name}: {source} (was the namespace created?)")]
    Open {
        name: String,
        source: std::io::Error,
    },
    #[error("setns({name}) failed: {source} (needs CAP_SYS_ADMIN)")]
    Setns { name: String, source: nix::Error },
}

/// Runs `ip args...`; Err with stderr when it fails.
pub fn ip(args: &[&str]) -> Result<(), TestNetCreateError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| TestNetCreateError::Ip {
            args: args.join(" "),
            detail: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(TestNetCreateError::Ip {
            args: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Moves the calling thread (only it) into network namespace `name`.
pub fn enter_netns(name: &str) -> Result<(), NetnsEnterError> {
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path).map_err(|source| NetnsEnterError::Open {
        name: name.to_string(),
        source,
    })?;
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
        NetnsEnterError::Setns {
            name: name.to_string(),
            source,
        }
    })
}

/// Two namespaces joined by a veth pair; removed on drop.
#[derive(Debug)]
pub struct TestNet {
    pub node_ns: String,
    pub peer_ns: String,
    pub node_if: String,
    pub peer_if: String,
    pub node_ip: Ipv4Addr,
    pub peer_ip: Ipv4Addr,
    pub node_mac: [u8; 6],
    pub peer_mac: [u8; 6],
    created: Vec<String>,
}

fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl TestNet {
    /// Creates `<tag>-<pid>-<subnet>-n` / `-p` and the veth pair with
    /// 198.18.`subnet`.1 (node) and .2 (peer). `subnet` must be unique among
    /// concurrent users on the machine (tests pick distinct ones).
    pub fn create(tag: &str, subnet: u32) -> Result<TestNet, TestNetCreateError> {
        Self::create_with_queues(tag, subnet, 1)
    }

    /// Like [`TestNet::create`] with `queues` RX queues on the node's end and
    /// `queues` TX queues on the peer's (the peer's flows are spread over them by
    /// their hash); the node's end has one TX queue more, for the AF_XDP sender.
    pub fn create_with_queues(
        tag: &str,
        subnet: u32,
        queues: u32,
    ) -> Result<TestNet, TestNetCreateError> {
        if !(1..=QUEUES_MAX).contains(&queues) {
            return Err(TestNetCreateError::Queues(queues));
        }
        let q = queues.to_string();
        let s = u8::try_from(subnet).map_err(|_| TestNetCreateError::Subnet(subnet))?;
        let pid = std::process::id();
        let prefix = format!("{tag}-{pid}-{s}");
        // Interface names are at most 15 bytes: "ms" + 6 pid digits + n|p + 3 digits.
        let short = format!("ms{}", pid % 1_000_000);
        let mut net = TestNet {
            node_ns: format!("{prefix}-n"),
            peer_ns: format!("{prefix}-p"),
            node_if: format!("{short}n{s}"),
            peer_if: format!("{short}p{s}"),
            node_ip: Ipv4Addr::new(198, 18, s, 1),
            peer_ip: Ipv4Addr::new(198, 18, s, 2),
            node_mac: [0x02, 0x00, 0xc6, 0x12, s, 0x01],
            peer_mac: [0x02, 0x00, 0xc6, 0x12, s, 0x02],
            created: Vec::new(),
        };
        for ns in [net.node_ns.clone(), net.peer_ns.clone()] {
            ip(&["netns", "add", &ns])?;
            net.created.push(ns.clone());
            for knob in ["all", "default"] {
                let path = format!("/proc/sys/net/ipv6/conf/{knob}/disable_ipv6");
                ip(&[
                    "netns",
                    "exec",
                    &ns,
                    "sh",
                    "-c",
                    &format!("echo 1 > {path}"),
                ])?;
            }
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let (nmac, pmac) = (mac_string(&net.node_mac), mac_string(&net.peer_mac));
        // One TX queue more than RX queues on the node's end: the AF_XDP sender transmits on
        // queue `queues` (after the receiver's), and the peer's end receives on it.
        let q1 = (queues + 1).to_string();
        #[rustfmt::skip]
        ip(&["link", "add", &net.node_if, "address", &nmac, "netns", &net.node_ns,
             "numtxqueues", &q1, "numrxqueues", &q, "type", "veth",
             "peer", "name", &net.peer_if, "address", &pmac, "netns", &net.peer_ns,
             "numtxqueues", &q, "numrxqueues", &q1])?;
        let (nip, pip) = (net.node_ip.to_string(), net.peer_ip.to_string());
        for (ns, dev, addr, other, other_mac) in [
            (&net.node_ns, &net.node_if, &nip, &pip, &pmac),
            (&net.peer_ns, &net.peer_if, &pip, &nip, &nmac),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/30"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            #[rustfmt::skip]
            ip(&["-n", ns, "neigh", "replace", other, "lladdr", other_mac, "dev", dev, "nud", "permanent"])?;
        }
        Ok(net)
    }

    /// Spawns a thread that enters `ns` and runs `f` there.
    pub fn spawn_in<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<Result<T, NetnsEnterError>> {
        let ns = ns.to_string();
        std::thread::spawn(move || {
            enter_netns(&ns)?;
            Ok(f())
        })
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for ns in self.created.drain(..) {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}
