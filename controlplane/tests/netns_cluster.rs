//! Three `ms-controlplane` processes, each in its own network namespace with
//! a 198.18.0.0/15 address, joined by a bridge that lives in a fourth
//! ("client") namespace where the test's own client thread runs. Nothing
//! touches the root namespace's network. Needs root and `ip`; everything the
//! test creates (namespaces, veths, bridge, processes, files) is removed by
//! `Drop` guards.
//!
//! Covered: election, replicated writes read back on every node, kill -9 of
//! the leader (new leader serves writes, no acknowledged write lost), restart
//! from disk, and a cut link (the cut leader cannot commit, the majority
//! continues, the cut member catches up after the link is back).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Stdio};
use std::time::{Duration, Instant};

use controlplane::certs::{self, DevCerts};
use controlplane::cluster::{ClusterError, NodeStatus, ReadStateRequest};
use controlplane::network::{PeerCallError, PeerPool, Rpc};
use controlplane::types::{ClusterState, Command, CommandResponse, StreamMode};

const NODES: usize = 3;
const PORT: u16 = 7450;
const WAIT_MAX: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

fn addr(i: usize) -> String {
    format!("198.18.0.{}:{PORT}", i + 1)
}

fn ip(args: &[&str]) {
    let out = Proc::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces, links, processes and files of one test; all removed on drop.
struct Net {
    tag: String,
    dir: tempfile::TempDir,
    certs: DevCerts,
    procs: Vec<Option<Child>>,
}

impl Net {
    fn client_ns(&self) -> String {
        format!("{}c", self.tag)
    }

    fn node_ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    fn new(name: &str) -> Net {
        let tag = format!("mscp{}{name}", std::process::id() % 100_000);
        let dir = tempfile::tempdir().unwrap();
        let certs = certs::generate_dev(&dir.path().join("certs")).unwrap();
        let net = Net {
            tag,
            dir,
            certs,
            procs: (0..NODES).map(|_| None).collect(),
        };
        let c = net.client_ns();
        ip(&["netns", "add", &c]);
        ip(&["-n", &c, "link", "set", "lo", "up"]);
        ip(&["-n", &c, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &c, "addr", "add", "198.18.0.254/24", "dev", "br0"]);
        ip(&["-n", &c, "link", "set", "br0", "up"]);
        for i in 0..NODES {
            let n = net.node_ns(i);
            let (v, e) = (format!("v{i}"), format!("e{i}"));
            ip(&["netns", "add", &n]);
            ip(&["-n", &n, "link", "set", "lo", "up"]);
            ip(&[
                "-n", &c, "link", "add", &v, "type", "veth", "peer", "name", &e, "netns", &n,
            ]);
            ip(&["-n", &c, "link", "set", &v, "master", "br0", "up"]);
            ip(&[
                "-n",
                &n,
                "addr",
                "add",
                &format!("198.18.0.{}/24", i + 1),
                "dev",
                &e,
            ]);
            ip(&["-n", &n, "link", "set", &e, "up"]);
        }
        net
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}"))
    }

    fn start(&mut self, i: usize, join: bool) {
        assert!(self.procs[i].is_none());
        let cfg = self.dir.path().join(format!("n{i}.toml"));
        std::fs::write(
            &cfg,
            "[liveness]\nheartbeat_interval_ms = 100\nnode_timeout_ms = 1000\n",
        )
        .unwrap();
        let mut cmd = Proc::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.node_ns(i),
            env!("CARGO_BIN_EXE_ms-controlplane"),
        ])
        .arg("--config")
        .arg(&cfg)
        .args(["--id", &(i + 1).to_string(), "--listen", &addr(i)])
        .args(["--data-addr", &format!("198.18.0.{}:7460", i + 1)])
        .arg("--data-dir")
        .arg(self.data_dir(i))
        .arg("--cert-dir")
        .arg(&self.certs.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        if join {
            cmd.args(["--join", &addr(0)]);
        }
        self.procs[i] = Some(cmd.spawn().expect("start ms-controlplane"));
    }

    /// kill -9 (`ip netns exec` execs the node, so the pid is the node's).
    fn kill9(&mut self, i: usize) {
        let mut child = self.procs[i].take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn set_link(&self, i: usize, up: bool) {
        ip(&[
            "-n",
            &self.client_ns(),
            "link",
            "set",
            &format!("v{i}"),
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().flatten() {
            let _ = p.kill();
            let _ = p.wait();
        }
        for i in 0..NODES {
            let _ = Proc::new("ip")
                .args(["netns", "del", &self.node_ns(i)])
                .status();
        }
        let _ = Proc::new("ip")
            .args(["netns", "del", &self.client_ns()])
            .status();
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`.
fn in_netns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|s| {
        s.spawn(|| {
            let fd = std::fs::File::open(Path::new("/run/netns").join(ns)).expect("netns file");
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// A node-certificate client running in the calling thread's namespace.
struct Client {
    rt: tokio::runtime::Runtime,
    pool: std::sync::Arc<PeerPool>,
}

type Reply<T> = Result<Result<T, ClusterError>, PeerCallError>;

impl Client {
    fn new(certs: &DevCerts) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tls = controlplane::auth::client_tls_config(&certs.node, &certs.ca.cert).unwrap();
        Client {
            rt,
            pool: PeerPool::new(tls),
        }
    }

    fn call<Q: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        i: usize,
        rpc: Rpc,
        req: &Q,
        timeout: Duration,
    ) -> Reply<T> {
        self.rt
            .block_on(self.pool.call(&addr(i), rpc, req, timeout))
    }

    fn status(&self, i: usize) -> Option<NodeStatus> {
        match self.call(i, Rpc::Status, &(), Duration::from_millis(500)) {
            Ok(Ok(s)) => Some(s),
            _ => None,
        }
    }

    fn local_state(&self, i: usize) -> Option<ClusterState> {
        let req = ReadStateRequest {
            linearizable: false,
        };
        match self.call(i, Rpc::ReadState, &req, Duration::from_millis(500)) {
            Ok(Ok(s)) => Some(s),
            _ => None,
        }
    }

    /// The leader all reachable `nodes` agree on.
    fn wait_leader(&self, nodes: &[usize]) -> usize {
        let start = Instant::now();
        while start.elapsed() < WAIT_MAX {
            let st: Vec<Option<NodeStatus>> = nodes.iter().map(|&i| self.status(i)).collect();
            if let Some(Some(first)) = st.first() {
                let agreed = st
                    .iter()
                    .all(|s| s.as_ref().is_some_and(|s| s.leader == first.leader));
                if let (true, Some(l)) = (agreed, first.leader) {
                    let l = (l - 1) as usize;
                    if nodes.contains(&l) {
                        return l;
                    }
                }
            }
            std::thread::sleep(POLL);
        }
        panic!("no agreed leader among {nodes:?}");
    }

    /// Writes through whichever of `nodes` leads; retried while leadership moves.
    fn write(&self, nodes: &[usize], cmd: &Command) -> CommandResponse {
        let start = Instant::now();
        while start.elapsed() < WAIT_MAX {
            for &i in nodes {
                if let Ok(Ok(r)) = self.call::<_, CommandResponse>(
                    i,
                    Rpc::ClientWrite,
                    cmd,
                    Duration::from_secs(2),
                ) {
                    return r;
                }
            }
            std::thread::sleep(POLL);
        }
        panic!("write {cmd:?} never committed through {nodes:?}");
    }

    fn wait_streams(&self, i: usize, names: &BTreeSet<String>) {
        let start = Instant::now();
        while start.elapsed() < WAIT_MAX {
            if let Some(s) = self.local_state(i) {
                if names.iter().all(|n| s.streams.contains_key(n)) {
                    return;
                }
            }
            std::thread::sleep(POLL);
        }
        panic!("node {} never had all of {names:?}", i + 1);
    }
}

fn create(name: &str) -> Command {
    Command::CreateStream {
        name: name.into(),
        partitions: 1,
        replication_factor: 1,
        retention_bytes: 0,
        retention_ms: 0,
        mode: StreamMode::Lossy,
        policy: Default::default(),
    }
}

fn write_batch(c: &Client, nodes: &[usize], prefix: &str, n: usize, acked: &mut BTreeSet<String>) {
    for k in 0..n {
        let name = format!("{prefix}-{k}");
        let r = c.write(nodes, &create(&name));
        assert!(
            matches!(r, CommandResponse::StreamCreated { .. }),
            "{name}: {r:?}"
        );
        acked.insert(name);
    }
}

fn start_cluster(net: &mut Net) -> (Client, usize) {
    net.start(0, false);
    let c = Client::new(&net.certs);
    c.wait_leader(&[0]);
    net.start(1, true);
    net.start(2, true);
    let start = Instant::now();
    while start.elapsed() < WAIT_MAX {
        let voters = c
            .status(0)
            .map_or(0, |s| s.members.iter().filter(|m| m.voter).count());
        if voters == NODES {
            break;
        }
        std::thread::sleep(POLL);
    }
    let leader = c.wait_leader(&[0, 1, 2]);
    (c, leader)
}

/// What root is for here; with `ip`, all these tests need (`testkit::require!`).
const NEEDS: &str = "network namespaces";

#[test]
fn netns_kill9_leader_then_restart_from_disk() {
    testkit::require!(testkit::netns(NEEDS));
    let mut net = Net::new("k");
    let ns = net.client_ns();
    let certs = net.certs.clone();
    let all = [0usize, 1, 2];
    let mut acked = BTreeSet::new();
    let leader = in_netns(&ns, || {
        let (c, leader) = start_cluster(&mut net);
        write_batch(&c, &all, "before", 10, &mut acked);
        for i in all {
            c.wait_streams(i, &acked);
        }
        leader
    });

    // kill -9 the leader: the two others elect a leader that serves writes
    // and holds every acknowledged write.
    net.kill9(leader);
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    in_netns(&ns, || {
        let c = Client::new(&certs);
        write_batch(&c, &rest, "after-kill", 5, &mut acked);
        let new_leader = c.wait_leader(&rest);
        assert_ne!(new_leader, leader);
        let req = ReadStateRequest { linearizable: true };
        let state: ClusterState = c
            .call(new_leader, Rpc::ReadState, &req, Duration::from_secs(2))
            .unwrap()
            .unwrap();
        for name in &acked {
            assert!(
                state.streams.contains_key(name),
                "acknowledged write {name} lost"
            );
        }
    });

    // The killed node restarts from its directory and catches up.
    net.start(leader, false);
    in_netns(&ns, || {
        let c = Client::new(&certs);
        c.wait_streams(leader, &acked);
    });

    // Every node killed and restarted from disk: all committed state is back.
    for i in all {
        net.kill9(i);
    }
    for i in all {
        net.start(i, false);
    }
    in_netns(&ns, || {
        let c = Client::new(&certs);
        c.wait_leader(&all);
        write_batch(&c, &all, "after-restart", 1, &mut acked);
        for i in all {
            c.wait_streams(i, &acked);
        }
    });
}

#[test]
fn netns_cut_link_minority_cannot_commit_and_catches_up() {
    testkit::require!(testkit::netns(NEEDS));
    let mut net = Net::new("l");
    let ns = net.client_ns();
    let certs = net.certs.clone();
    let all = [0usize, 1, 2];
    let mut acked = BTreeSet::new();
    let leader = in_netns(&ns, || {
        let (c, leader) = start_cluster(&mut net);
        write_batch(&c, &all, "before", 3, &mut acked);
        leader
    });

    // Cut the leader's link: it is now a minority of one.
    net.set_link(leader, false);
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let minority = in_netns(&net.node_ns(leader), || {
        let c = Client::new(&certs);
        c.call::<_, CommandResponse>(
            leader,
            Rpc::ClientWrite,
            &create("minority"),
            Duration::from_secs(2),
        )
    });
    assert!(
        !matches!(minority, Ok(Ok(_))),
        "a cut-off leader committed a write: {minority:?}"
    );

    // The majority elects a leader and keeps committing.
    in_netns(&ns, || {
        let c = Client::new(&certs);
        write_batch(&c, &rest, "majority", 3, &mut acked);
    });

    // Heal: the cut node catches up and the minority write is gone everywhere.
    net.set_link(leader, true);
    in_netns(&ns, || {
        let c = Client::new(&certs);
        for i in all {
            c.wait_streams(i, &acked);
        }
        c.wait_leader(&all);
        for i in all {
            let s = c.local_state(i).expect("state");
            assert!(
                !s.streams.contains_key("minority"),
                "uncommitted minority write survived on node {}",
                i + 1
            );
        }
    });
}
