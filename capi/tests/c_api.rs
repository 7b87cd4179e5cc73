//! The C tests (tests/c/*.c) and the example (examples/pubsub.c), compiled
//! with the system C compiler (`cc`, or `$CC`) against the committed header
//! and the static library cargo built for this test run, then run. A missing
//! compiler fails the test: install one (scripts/setup.sh installs gcc).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A C program or child that runs longer than this is a failure.
const RUN_TIMEOUT_S: u64 = 60;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/<profile>/libmemstreamer.a: this test binary lives in
/// target/<profile>/deps. `cargo test --workspace` builds the crate's rlib for
/// the tests but not always its staticlib, so the first caller builds the
/// library with cargo (same profile, same target directory; cargo releases its
/// build lock before it runs tests).
fn static_lib() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test binary path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("test binary is in target/<profile>/deps");
            let mut build = Command::new(env!("CARGO"));
            build.args(["build", "--locked", "-p", env!("CARGO_PKG_NAME"), "--lib"]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo to build the C library");
            assert!(status.success(), "cargo build of the C library failed");
            let lib = profile_dir.join("libmemstreamer.a");
            assert!(
                lib.exists(),
                "{} is missing after cargo build --lib",
                lib.display()
            );
            lib
        })
        .clone()
}

/// Compiles one C file into `out_dir`; panics with the compiler's output on failure.
fn compile(source: &Path, out_dir: &Path) -> PathBuf {
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let exe = out_dir.join(source.file_stem().expect("a file name"));
    let output = Command::new(&cc)
        .args(["-std=c11", "-D_POSIX_C_SOURCE=200809L", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-pthread"])
        .arg("-I")
        .arg(crate_dir().join("include"))
        .arg("-I")
        .arg(crate_dir().join("tests/c"))
        .arg(source)
        .arg(static_lib())
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run the C compiler {cc:?}: {e}; install one (scripts/setup.sh installs gcc)")
        });
    assert!(
        output.status.success(),
        "compiling {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

/// Waits for `child` (bounded), killing it on timeout.
fn wait(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + Duration::from_secs(RUN_TIMEOUT_S);
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "{what} did not finish within {RUN_TIMEOUT_S} s; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles `tests/c/<name>.c`, runs it with `args`, and checks it exits 0
/// printing `<name> ok`.
fn run_c_test(name: &str, args: &[&Path]) {
    let work = tempfile::tempdir().expect("tempdir");
    let exe = compile(&crate_dir().join(format!("tests/c/{name}.c")), work.path());
    let child = Command::new(&exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the C test");
    let out = wait(child, name);
    assert_success(&out, name);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("{name} ok")),
        "{name} did not finish its checks"
    );
}

#[test]
fn offer_poll_round_trip() {
    let rings = tempfile::tempdir().expect("tempdir");
    run_c_test("shm_roundtrip", &[rings.path()]);
}

#[test]
fn claim_commit_abort() {
    let rings = tempfile::tempdir().expect("tempdir");
    run_c_test("claim", &[rings.path()]);
}

#[test]
fn bad_input_gets_error_codes() {
    let rings = tempfile::tempdir().expect("tempdir");
    run_c_test("bad_input", &[rings.path()]);
}

#[test]
fn network_publisher_to_subscriber_over_loopback() {
    run_c_test("net_loopback", &[]);
}

/// Kills a child on drop unless it was waited for.
struct Reaped(Option<Child>);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn read_line(child: &mut Child) -> String {
    let out = child.stdout.as_mut().expect("piped stdout");
    let mut line = String::new();
    // One byte at a time: a BufReader would swallow later output.
    let mut byte = [0u8; 1];
    while !line.ends_with('\n') {
        match std::io::Read::read(out, &mut byte) {
            Ok(1) => line.push(byte[0] as char),
            _ => break,
        }
    }
    line.trim().to_string()
}

#[test]
fn publisher_process_to_subscriber_process() {
    const RECORDS: &str = "100000";
    let work = tempfile::tempdir().expect("tempdir");
    let rings = tempfile::tempdir().expect("tempdir");
    let exe = compile(&crate_dir().join("tests/c/two_process.c"), work.path());
    let spawn = |role: &str| {
        Command::new(&exe)
            .arg(role)
            .arg(rings.path())
            .arg(RECORDS)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a C process")
    };
    let mut publisher = Reaped(Some(spawn("pub")));
    let p = publisher.0.as_mut().expect("publisher");
    assert_eq!(read_line(p), "ready", "the publisher created the ring");
    let mut subscriber = Reaped(Some(spawn("sub")));
    let s = subscriber.0.as_mut().expect("subscriber");
    assert_eq!(read_line(s), "attached", "the subscriber mapped the ring");
    p.stdin
        .as_mut()
        .expect("piped stdin")
        .write_all(b"go\n")
        .expect("release the publisher");
    let pub_out = wait(publisher.0.take().expect("publisher"), "publisher process");
    let sub_out = wait(
        subscriber.0.take().expect("subscriber"),
        "subscriber process",
    );
    assert_success(&pub_out, "publisher process");
    assert_success(&sub_out, "subscriber process");
    assert!(String::from_utf8_lossy(&pub_out.stdout).contains(&format!("pub sent {RECORDS}")));
    assert!(String::from_utf8_lossy(&sub_out.stdout).contains(&format!("sub received {RECORDS}")));
}

#[test]
fn example_pubsub_runs() {
    let work = tempfile::tempdir().expect("tempdir");
    let rings = tempfile::tempdir().expect("tempdir");
    let exe = compile(&crate_dir().join("examples/pubsub.c"), work.path());
    let child = Command::new(&exe)
        .arg(rings.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the example");
    let out = wait(child, "examples/pubsub");
    assert_success(&out, "examples/pubsub");
    let lines: Vec<String> = BufReader::new(&out.stdout[..])
        .lines()
        .map_while(Result::ok)
        .collect();
    assert_eq!(
        lines.last().map(String::as_str),
        Some("received 10 of 10"),
        "{lines:?}"
    );
}

#[test]
fn bench_latency_program_compiles_and_prints_json() {
    let work = tempfile::tempdir().expect("tempdir");
    let rings = tempfile::tempdir().expect("tempdir");
    let exe = compile(&crate_dir().join("bench/latency.c"), work.path());
    let child = Command::new(&exe)
        .arg(rings.path())
        .args(["2000", "500", "5000", "131072"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bench/latency");
    let out = wait(child, "bench/latency");
    assert_success(&out, "bench/latency");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    for key in ["\"c_p50_ns\":", "\"c_p99_ns\":", "\"msgs_per_s\":"] {
        assert!(
            line.starts_with('{') && line.contains(key),
            "{line:?} lacks {key}"
        );
    }
}
