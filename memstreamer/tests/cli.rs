//! The `memstreamer` binary as a process: `node` with the UDP backend on loopback, a remote
//! sdk::net publisher, a local SDK subscriber, `stat --once`, SIGTERM; and `demo` in its own
//! namespaces (root only).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sdk::net::{PublisherConfig, UdpPublisher};

const BIN: &str = env!("CARGO_BIN_EXE_memstreamer");

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn node_process_delivers_and_stat_reads_its_counters() {
    let dir = tempfile::tempdir().unwrap();
    let shm = dir.path().join("shm");
    let counters = dir.path().join("counters");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "backend = \"udp\"\nlisten = \"127.0.0.1:0\"\nidle = \"yielding\"\nstorage_dir = false\nring_capacity_bytes = 1048576\nshm_dir = \"{}\"\ncounters_file = \"{}\"\n[[streams]]\nid = 7\n",
            shm.display(),
            counters.display()
        ),
    )
    .unwrap();
    let mut child = Kill(
        Command::new(BIN)
            .args(["dataplane", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    // "memstreamer dataplane: data port udp 127.0.0.1:PORT (kernel ..."
    let addr: SocketAddr = first.split_whitespace().nth(5).unwrap().parse().unwrap();
    let _ = lines.next();

    let count = 2000u64;
    let mut p = UdpPublisher::new(
        "127.0.0.1:0".parse().unwrap(),
        addr,
        PublisherConfig::new(7, 0, 1, "cli"),
    )
    .unwrap();
    assert!(p.wait_connected(Duration::from_secs(10)));
    let mut sub = sdk::Context::builder().dir(&shm).build().subscriber(7, 0);
    let (mut next, mut got) = (0u64, Vec::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while (got.len() as u64) < count && Instant::now() < deadline {
        while next < count && p.offer(0, &next.to_le_bytes()).is_ok() {
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

    // stat reads the counters file; the conductor refreshes it every 10 ms.
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = Command::new(BIN)
            .args(["stat", "--once", "--counters-file"])
            .arg(&counters)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let appended = text
            .lines()
            .find(|l| l.contains("receiver: records appended to rings"))
            .and_then(|l| l.split_whitespace().next_back().map(str::to_owned));
        if appended.as_deref() == Some(&count.to_string()) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(out.contains("running"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("receiver: records appended to rings")
                && l.trim_end().ends_with(&count.to_string())),
        "{out}"
    );

    // SIGTERM: clean stop, counters file and ring removed.
    let pid = nix::unistd::Pid::from_raw(child.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success());
    assert!(!counters.exists());
    assert!(!shm.join("stream-7-0").exists());
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "backend = \"afxdp\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["dataplane", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interface"), "{err}");
    // A missing interface is a clear error that names it and the way out; nothing is left behind.
    let shm = dir.path().join("shm");
    let text = format!(
        "backend = \"afxdp\"\ninterface = \"msnoif0\"\nlisten = \"198.18.250.1:7447\"\nshm_dir = \"{}\"\n",
        shm.display()
    );
    std::fs::write(&config, text).unwrap();
    let out = Command::new(BIN)
        .args(["dataplane", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("msnoif0") && err.contains("--backend udp"),
        "{err}"
    );
    assert!(!err.contains("Caused by"), "{err}");
    assert!(
        !shm.join("stream-7-0").exists(),
        "a failed start removes the rings it created"
    );
    let out = Command::new(BIN)
        .args(["stat", "--once", "--counters-file"])
        .arg(dir.path().join("none"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a node running"));
}

#[test]
fn example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/node.example.toml");
    let out = Command::new(BIN)
        .args(["check-config", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What root is for in the demo tests; with `ip`, all they need (`testkit::require!`).
const DEMO_NEEDS: &str = "the demo's netns and veth";

/// `memstreamer demo` end to end in its own namespaces, with each backend.
fn demo(backend: &str, subnet: &str) {
    let out = Command::new(BIN)
        .args([
            "demo",
            "--backend",
            backend,
            "--messages",
            "20000",
            "--rate",
            "50000",
            "--timeout-s",
            "60",
            "--subnet",
            subnet,
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("received 20000 out-of-order 0"), "{text}");
    assert!(text.contains("p99.9"), "{text}");
    let leftovers = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let ns = String::from_utf8_lossy(&leftovers.stdout);
    assert!(
        !ns.contains(&format!("-{subnet}-n")),
        "namespaces left behind: {ns}"
    );
}

#[test]
fn demo_udp_backend() {
    testkit::require!(testkit::netns(DEMO_NEEDS));
    demo("udp", "211");
}

#[cfg(feature = "dpdk")]
#[test]
fn demo_dpdk_backend() {
    testkit::require!(testkit::netns(DEMO_NEEDS), testkit::hugepages_free(32));
    demo("dpdk", "167");
}

#[test]
fn demo_afxdp_backend() {
    testkit::require!(testkit::netns(DEMO_NEEDS));
    demo("afxdp", "212");
}
