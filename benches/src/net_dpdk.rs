//! The DPDK column of `ms-bench net`. DPDK's EAL starts once per process, so each DPDK phase runs
//! in a child `ms-bench child net <role>` started from a thread inside the node namespace (a
//! forked child keeps that thread's network namespace and nothing else changes):
//!
//! - `dpdk-node NODE_IP NODE_IF DIR CORE|-`: the real node (`NodeParts`, the bench's node config
//!   with `backend = "dpdk"` on `net_af_packet` over the node's veth end); prints `ready`, runs
//!   until a line or EOF on stdin, stops, prints `stopped`.
//! - `dpdk-drain NODE_IP NODE_IF DIR FRAMES`: the receiver core over a DPDK port, as the other
//!   backends' drain: waits for the sender's SETUP, prints `ready`, waits for `filled` on stdin,
//!   drains with rte_eth_rx_burst -> classify/policy -> session table -> ring append, prints
//!   `result FRAMES RECORDS SECONDS` and `describe ...`.
//!
//! Without the `dpdk` feature the roles say so and fail (the parent never starts them then).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddrV4;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use dataplane::testnet::TestNet;

use crate::net::{Drain, PHASE_TIMEOUT, PORT, STREAM};

/// EAL memory of the bench's DPDK processes (MiB) and the mbuf pool.
pub const MEMORY_MB: u32 = 64;
pub const MBUFS: u32 = 8191;
/// Frames of each af_packet ring (the drain's pre-fill must fit: 16,000 frames).
const AF_PACKET_FRAMES: u32 = 16_384;

/// The vdev over `iface`: two queue pairs (receiver's RX + TX, the sender's TX).
pub fn vdev(iface: &str) -> String {
    format!("net_af_packet0,iface={iface},qpairs=2,blocksz=4096,framesz=2048,framecnt={AF_PACKET_FRAMES}")
}

/// A child process in the node namespace, stdin/stdout piped.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::io::Lines<BufReader<ChildStdout>>,
}

impl Proc {
    fn spawn(net: &TestNet, role: &str, args: Vec<String>) -> anyhow::Result<Proc> {
        let exe = std::env::current_exe().context("locating ms-bench")?;
        let role = role.to_string();
        let mut child = TestNet::spawn_in(&net.node_ns, move || {
            Command::new(exe)
                .args(["child", "net", &role])
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("spawn thread panicked"))??
        .context("starting the DPDK child process")?;
        let stdout = child.stdout.take().context("child stdout")?;
        Ok(Proc {
            stdin: child.stdin.take(),
            lines: BufReader::new(stdout).lines(),
            child,
        })
    }

    /// The next stdout line that starts with `prefix` (others are printed); Err at EOF.
    fn expect(&mut self, prefix: &str) -> anyhow::Result<String> {
        for line in self.lines.by_ref() {
            let line = line?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
            println!("  dpdk child: {line}");
        }
        bail!("the DPDK child exited before `{prefix}`")
    }

    fn say(&mut self, line: &str) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("child stdin")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    fn wait(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + PHASE_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!("the DPDK child failed: {status}");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the DPDK child did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if self.child.try_wait().ok().flatten().is_none() {
            // It stops at stdin EOF; give it the phase timeout, then kill it.
            let deadline = Instant::now() + PHASE_TIMEOUT;
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The e2e phases' node, in its own process.
pub struct NodeChild(Proc);

impl NodeChild {
    pub fn start(
        net: &TestNet,
        dir: &std::path::Path,
        core: Option<usize>,
    ) -> anyhow::Result<NodeChild> {
        let args = vec![
            net.node_ip.to_string(),
            net.node_if.clone(),
            dir.display().to_string(),
            core.map_or("-".to_string(), |c| c.to_string()),
        ];
        let mut p = Proc::spawn(net, "dpdk-node", args)?;
        p.expect("ready").context("DPDK node start")?;
        Ok(NodeChild(p))
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        self.0.say("stop")?;
        self.0.expect("stopped")?;
        self.0.wait()
    }
}

/// The drain of the DPDK backend: the child drains, this process sends.
pub fn drain(net: &TestNet, dir: &std::path::Path, frames: u64) -> anyhow::Result<Drain> {
    let args = vec![
        net.node_ip.to_string(),
        net.node_if.clone(),
        dir.display().to_string(),
        frames.to_string(),
    ];
    let mut p = Proc::spawn(net, "dpdk-drain", args)?;
    let node = SocketAddrV4::new(net.node_ip, PORT);
    let ready = Arc::new(AtomicBool::new(false));
    let filled = Arc::new(AtomicBool::new(false));
    let (ready_s, filled_s) = (ready.clone(), filled.clone());
    let sender = TestNet::spawn_in(&net.peer_ns, move || {
        crate::net::drain_sender(node, (&ready_s, &filled_s), frames)
    });
    let waited = p.expect("ready");
    ready.store(true, Ordering::Release);
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))??
        .context("drain sender")?;
    waited?;
    p.say("filled")?;
    let result = p.expect("result")?;
    let describe = p.expect("describe")?;
    p.wait()?;
    let f: Vec<&str> = result.split_whitespace().collect();
    if f.len() != 4 {
        bail!("bad result line from the DPDK child: {result}");
    }
    let _ = sdk::Context::builder().dir(dir).build().remove(STREAM, 1);
    Ok(Drain {
        describe: describe.trim_start_matches("describe ").to_string(),
        frames: f[1].parse()?,
        records: f[2].parse()?,
        seconds: f[3].parse()?,
        kernel_note: String::new(),
    })
}

/// `ms-bench child net <role> ...`.
pub fn child(role: &str, rest: &[String]) -> anyhow::Result<()> {
    #[cfg(feature = "dpdk")]
    {
        match role {
            "dpdk-node" => run::node(rest),
            "dpdk-drain" => run::drain(rest),
            other => bail!("unknown net child role {other:?}"),
        }
    }
    #[cfg(not(feature = "dpdk"))]
    {
        let _ = rest;
        bail!("net child {role:?}: ms-bench was built without the `dpdk` feature")
    }
}

#[cfg(feature = "dpdk")]
mod run {
    use std::io::BufRead;
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::path::Path;
    use std::time::{Duration, Instant};

    use anyhow::{bail, Context as _};
    use dataplane::net::dpdk::{self, DpdkConfig, DpdkPort};
    use dataplane::net::NetPort;
    use dataplane::session::SessionTable;

    use crate::net::{
        drain_rx, node_cycle, ring_context, session_config, warm_ring, Backend, RingSink,
        PHASE_TIMEOUT, PORT, STREAM,
    };

    fn line() -> String {
        let mut s = String::new();
        let _ = std::io::stdin().lock().read_line(&mut s);
        s
    }

    pub fn node(rest: &[String]) -> anyhow::Result<()> {
        let [ip, iface, dir, core] = rest else {
            bail!("dpdk-node NODE_IP NODE_IF DIR CORE|-");
        };
        let ip: Ipv4Addr = ip.parse()?;
        let core = core.parse::<usize>().ok();
        let cfg = crate::net::node_config(Backend::Dpdk, (ip, iface), Path::new(dir), core);
        let handle = dataplane::NodeParts::build(&cfg)
            .and_then(|p| p.start(&cfg))
            .context("DPDK node")?;
        println!("ready {}", handle.describe);
        let _ = line();
        let panicked = handle.stop();
        println!("stopped");
        if panicked > 0 {
            bail!("{panicked} node agent thread(s) panicked");
        }
        Ok(())
    }

    pub fn drain(rest: &[String]) -> anyhow::Result<()> {
        let [ip, iface, dir, frames] = rest else {
            bail!("dpdk-drain NODE_IP NODE_IF DIR FRAMES");
        };
        let ip: Ipv4Addr = ip.parse()?;
        let frames: u64 = frames.parse()?;
        let ctx = ring_context(Path::new(dir));
        let _ = ctx.remove(STREAM, 1);
        let mut ring = ctx.publisher(STREAM, 1)?;
        warm_ring(&mut ring);
        let mut sink = RingSink(ring);
        let local = SocketAddrV4::new(ip, PORT);
        let cfg = DpdkConfig {
            device: super::vdev(iface),
            local,
            feedback_port: PORT + 1,
            policy_name: iface.clone(),
            default_allow: true,
            rx_queues: 1,
            mbufs: super::MBUFS,
            eal: dpdk::eal::EalConfig {
                file_prefix: format!("ms-bench-drain-{}", std::process::id()),
                huge_dir: "/dev/hugepages".into(),
                memory_mb: super::MEMORY_MB,
                cores: vec![],
                vdevs: vec![super::vdev(iface)],
                pci: vec![],
            },
        };
        let (rx, _tx) = DpdkPort::open(&cfg)?;
        let mut port = NetPort::Dpdk(Box::new(rx));
        let describe = port.describe();
        let mut table = SessionTable::new(session_config(), &[(STREAM, 1)]);
        let mut out = Vec::with_capacity(2048);
        let deadline = Instant::now() + PHASE_TIMEOUT;
        while table.sessions_active() == 0 && Instant::now() < deadline {
            node_cycle(&mut port, &mut table, &mut sink, &mut out, 64);
        }
        if table.sessions_active() == 0 {
            bail!("no SETUP arrived");
        }
        println!("ready");
        let _ = line();
        // Let the kernel finish moving the last frames into the af_packet ring.
        std::thread::sleep(Duration::from_millis(200));
        let before = table.stats().records_appended;
        let (got, seconds) = drain_rx(&mut port, &mut table, &mut sink, frames);
        let records = table.stats().records_appended - before;
        println!("result {got} {records} {seconds}");
        println!("describe {describe}");
        Ok(())
    }
}
