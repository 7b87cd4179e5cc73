//! `memstreamer node` as a new user first runs it: no config file, no profile, idle or storage
//! setting. It says which profile it runs (`default`), stores what is published in its data
//! directory (a record published through the SDK is archived, and after a restart the node
//! replays it into the new ring), and its idle data plane does not busy-spin a core. A
//! storage directory it cannot make is an error that names the ways out.
//!
//! Only placement is given, so the test runs next to others: `--data-dir` (a temp dir, in
//! place of /var/lib/memstreamer), free ports, and the ring directory and counters file in the
//! temp dir (`MS_*` variables). Loopback only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_memstreamer");
/// Upper bound of every wait in this test.
const WAIT_MAX: Duration = Duration::from_secs(60);
/// How long the idle data plane's CPU use is watched.
const IDLE_WATCH: Duration = Duration::from_secs(2);
/// Most CPU an idle data plane may use, in CPU seconds per second: a busy-spinning one uses a
/// whole core (1.0), or its fair share of one on a crowded machine; backoff stays near 0.
const IDLE_CPU_SHARE_MAX: f64 = 0.25;
const PAYLOAD: &[u8] = b"published before the restart";

/// A running `memstreamer node`; SIGTERM (then SIGKILL) on drop.
struct Node {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        support::stop_or_kill(&mut self.child);
    }
}

impl Node {
    fn start(dir: &Path) -> Node {
        let mut child = Command::new(BIN)
            .arg("node")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args([
                "--control-listen",
                &format!("127.0.0.1:{}", support::free_port()),
            ])
            .args(["--http-listen", ""])
            .env("MS_LISTEN", "127.0.0.1:0")
            .env("MS_KAFKA_LISTEN", "127.0.0.1:0")
            .env("MS_SHM_DIR", dir.join("shm"))
            .env("MS_COUNTERS_FILE", dir.join("counters"))
            .env("MS_RING_CAPACITY_BYTES", "1048576")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = support::stdout_lines(&mut child);
        Node {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first output line starting with `prefix` (waits for it).
    fn line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            if let Some(l) = self.seen.iter().find(|l| l.starts_with(prefix)) {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line starting with {prefix:?} in {:?}",
                self.seen
            );
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(l);
            }
        }
    }

    fn stop(mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + WAIT_MAX;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the node did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}");
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A counter's value from `memstreamer stat --once` (0 while the node is not up yet).
fn counter(counters: &Path, label: &str) -> u64 {
    let out = Command::new(BIN)
        .args(["stat", "--once", "--counters-file"])
        .arg(counters)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains(label))
        .and_then(|l| l.split_whitespace().next_back()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time (ns) of every thread of `pid` so far.
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn node_without_flags_persists_and_idles_politely() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (shm, counters) = (dir.path().join("shm"), dir.path().join("counters"));
    let mut node = Node::start(dir.path());
    let profile = node.line("memstreamer node: profile ");
    assert_eq!(
        profile,
        format!(
            "memstreamer node: profile default: idle backoff, one shared thread, storage on in {}",
            data.join("storage").display()
        )
    );
    let dp_pid: u32 = node
        .line("memstreamer node: data plane started, pid ")
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap();
    node.line("memstreamer dataplane: streams");
    let log_dir: PathBuf = data.join("storage").join("stream-7-0");
    assert!(
        log_dir.is_dir(),
        "the partition's log is in the data directory"
    );

    // Storage is on: a record published through the SDK is archived.
    let ctx = sdk::Context::builder().dir(&shm).build();
    let mut publisher = ctx.publisher(7, 0).unwrap();
    wait_for("the record to be offered", || {
        publisher.offer(PAYLOAD).is_ok()
    });
    wait_for("the record to be archived", || {
        counter(&counters, "archiver: durable records") >= 1
    });
    assert_eq!(
        counter(&counters, "archiver: records appended to storage"),
        1
    );
    drop(publisher);

    // Idle: nothing arrives, and the data plane leaves the core to others.
    let (cpu0, t0) = (cpu_ns(dp_pid), Instant::now());
    std::thread::sleep(IDLE_WATCH);
    let share = (cpu_ns(dp_pid) - cpu0) as f64 / t0.elapsed().as_nanos() as f64;
    assert!(
        share < IDLE_CPU_SHARE_MAX,
        "the idle data plane used {share:.2} of a core"
    );
    node.stop();

    // After a restart the record is replayed from storage into the new ring.
    let mut node = Node::start(dir.path());
    let started = node.line("memstreamer dataplane: streams");
    assert!(started.contains("replayed 1 records"), "{started}");
    let mut subscriber = sdk::Context::builder()
        .dir(&shm)
        .start_at(sdk::StartAt::Earliest)
        .build()
        .subscriber(7, 0);
    let mut got = Vec::new();
    wait_for("the replayed record", || {
        subscriber
            .poll(|r| got.push(r.payload.to_vec()), 16)
            .unwrap();
        !got.is_empty()
    });
    assert_eq!(got, [PAYLOAD.to_vec()]);
    drop(subscriber);
    node.stop();
}

#[test]
fn a_storage_directory_that_cannot_be_made_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A data directory below a regular file: not even root can make it.
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let out = Command::new(BIN)
        .arg("dataplane")
        .arg("--data-dir")
        .arg(file.join("data"))
        .env("MS_LISTEN", "127.0.0.1:0")
        .env("MS_SHM_DIR", dir.path().join("shm"))
        .env("MS_COUNTERS_FILE", dir.path().join("counters"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot create the storage directory")
            && err.contains("--data-dir")
            && err.contains("storage_dir = false"),
        "{err}"
    );
}
