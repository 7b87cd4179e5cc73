//! Helpers shared by the tests that run `memstreamer node` as a process.

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a process may take to stop after SIGTERM before [`stop_or_kill`] kills it.
pub const STOP_WAIT_MAX: Duration = Duration::from_secs(15);

/// For a test that failed half-way: SIGTERM to `child` unless it already exited (a supervisor
/// stops its children; they also get SIGTERM from the kernel when it dies), SIGKILL after
/// [`STOP_WAIT_MAX`]; always reaps.
pub fn stop_or_kill(child: &mut Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_WAIT_MAX;
    while Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The lines `child` writes to its (piped) stdout, read on a thread.
pub fn stdout_lines(child: &mut Child) -> Receiver<String> {
    let (tx, lines) = channel();
    let out = child.stdout.take().expect("stdout is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}
