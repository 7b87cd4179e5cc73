//! testkit: the one place that decides what a test does when something it needs is missing:
//! root, a tool such as `ip`, a kernel file system or a hugepage pool.
//!
//! - [`REQUIRE_ENV`] (`MS_REQUIRE_PRIVILEGED`) set to anything but empty or `0`, as
//!   `make test` (`scripts/test.sh`) and so CI do: the test **fails**, naming what is missing
//!   and what to install or do.
//! - unset (a developer's `cargo test` as a normal user): the test prints `skipped: ...` and
//!   returns (it passes without having run).
//!
//! A test that does run appends one line to the file named by [`LOG_ENV`]
//! (`MS_PRIVILEGED_LOG`), when set: the call site (`file:line`) and the test's name.
//! `scripts/test.sh` checks that every [`require!`] call site in the tree is in that file, so
//! a suite where privileged tests quietly stop running is red.
//!
//! Each privileged test calls [`require!`] once, first, with every need; each need is an
//! `Option<String>`: `None` when present, else why the test cannot run here.
//! ```
//! // #[test]
//! fn veth_pair_end_to_end() {
//!     testkit::require!(
//!         testkit::netns("network namespaces, XDP"),
//!         testkit::tool("ethtool", "--version", "ethtool"),
//!     );
//!     // ... the test proper: here root and `ip` and `ethtool` are present ...
//! }
//! ```
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Set (not empty, not `0`) where privileged tests are expected to run: a missing need fails.
pub const REQUIRE_ENV: &str = "MS_REQUIRE_PRIVILEGED";
/// Names a file that gets one line per privileged test that ran (appended; never truncated here).
pub const LOG_ENV: &str = "MS_PRIVILEGED_LOG";

/// What a test does, from whether its needs are met and whether they must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Everything is present: the test runs (and is recorded).
    Run,
    /// Something is missing and privileged tests are not required here: print and return.
    Skip,
    /// Something is missing and privileged tests are required here: the test fails.
    Fail,
}

/// The decision for a test whose first missing need is `missing`, with privileged tests
/// required (`required`) or not.
pub fn decide(missing: Option<&str>, required: bool) -> Decision {
    match (missing, required) {
        (None, _) => Decision::Run,
        (Some(_), false) => Decision::Skip,
        (Some(_), true) => Decision::Fail,
    }
}

/// Whether privileged tests must run here: [`REQUIRE_ENV`] set to anything but empty or `0`.
pub fn required() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// The decision point behind [`require!`]: `true` when the test `test` (a name for the log and
/// messages) should run. Returns `false` (after printing why) when it should skip, and panics
/// with what is missing and what to do when privileged tests are [`required`] here.
#[track_caller]
pub fn require(test: &str, missing: Option<&str>) -> bool {
    match decide(missing, required()) {
        Decision::Run => {
            if let Some(log) = std::env::var_os(LOG_ENV) {
                if let Err(e) = record(Path::new(&log), test) {
                    panic!("{test}: cannot append to {LOG_ENV}={log:?}: {e}");
                }
            }
            true
        }
        Decision::Skip => {
            eprintln!(
                "skipped: {test}: {} (set {REQUIRE_ENV}=1 to make this a failure)",
                missing.unwrap_or_default()
            );
            false
        }
        Decision::Fail => panic!(
            "{test} cannot run: {}. {REQUIRE_ENV} is set (make test / CI expects every \
             privileged test to run): run as root after `scripts/setup.sh --test` and \
             `scripts/hugepages.sh reserve`, or unset {REQUIRE_ENV} to let it skip",
            missing.unwrap_or_default()
        ),
    }
}

/// Appends `test` as one line to `log` (one `write` call, so parallel tests do not interleave).
pub fn record(log: &Path, test: &str) -> std::io::Result<()> {
    let line = format!("{}\n", test.replace('\n', " "));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?
        .write_all(line.as_bytes())
}

/// `site` (`file:line` of the [`require!`] call, the file relative to the workspace root as in
/// `dataplane/tests/netns_node.rs:299`) followed by the running test's name: libtest names each
/// test's thread after the test. `scripts/test.sh` matches the sites against the source.
pub fn test_name(site: &str) -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => format!("{site} {name}"),
        _ => site.to_owned(),
    }
}

/// `None` when the process runs as root (effective uid 0), else that `purpose` needs it.
pub fn root(purpose: &str) -> Option<String> {
    // The effective uid is the second number of the `Uid:` line.
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        });
    match euid.as_deref() {
        Some("0") => None,
        _ => Some(format!("needs root ({purpose})")),
    }
}

/// `None` when `program` can be started (run with `probe_arg`, e.g. `--version`; its exit
/// status does not matter), else that it is missing and which Debian package has it.
pub fn tool(program: &str, probe_arg: &str, package: &str) -> Option<String> {
    match Command::new(program).arg(probe_arg).output() {
        Ok(_) => None,
        Err(e) => Some(format!(
            "needs `{program}` ({e}): install the Debian package {package} \
             (scripts/setup.sh --test does)"
        )),
    }
}

/// Root and iproute2's `ip`: what every test that builds network namespaces and veth pairs
/// needs. `purpose` says what the test does with root.
pub fn netns(purpose: &str) -> Option<String> {
    root(purpose).or_else(|| tool("ip", "-V", "iproute2"))
}

/// `None` when the kernel knows the file system `fstype` (listed in /proc/filesystems).
pub fn filesystem(fstype: &str) -> Option<String> {
    let known = std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| {
        s.lines()
            .any(|l| l.split_whitespace().last() == Some(fstype))
    });
    (!known).then(|| format!("needs a kernel with the {fstype} file system"))
}

/// `None` when at least `pages` default-size hugepages are free and unreserved.
pub fn hugepages_free(pages: u64) -> Option<String> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let free = field("HugePages_Free:").saturating_sub(field("HugePages_Rsvd:"));
    (free < pages).then(|| {
        format!(
            "needs {pages} free hugepages, {free} are: run `scripts/hugepages.sh reserve` as root"
        )
    })
}

/// Runs `cmd` (a set-up step of a privileged test, e.g. `mount`) and returns its stdout;
/// panics with the command and its stderr unless it exits with status 0.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the rest of the calling test only when every need is met; see the crate docs.
///
/// Each argument is an `Option<String>` (`None`: present), evaluated in order until the first
/// missing one. When one is missing the calling function returns (skip) or panics (when
/// [`REQUIRE_ENV`] is set). When none is, the test is recorded in [`LOG_ENV`]'s file.
/// Call it first in each privileged test (`scripts/test.sh` checks that every call site ran).
#[macro_export]
macro_rules! require {
    ($($need:expr),+ $(,)?) => {
        let mut missing: ::std::option::Option<::std::string::String> = ::std::option::Option::None;
        $(
            if missing.is_none() {
                missing = $need;
            }
        )+
        let test = $crate::test_name(concat!(file!(), ":", line!()));
        if !$crate::require(&test, missing.as_deref()) {
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ok_returns_stdout_and_fails_loudly() {
        assert_eq!(run_ok(Command::new("echo").arg("hi")), "hi\n");
        let r = std::panic::catch_unwind(|| run_ok(&mut Command::new("false")));
        assert!(r.is_err());
    }

    #[test]
    fn missing_needs_skip_unless_required_then_fail() {
        assert_eq!(decide(None, false), Decision::Run);
        assert_eq!(decide(None, true), Decision::Run);
        assert_eq!(decide(Some("needs root"), false), Decision::Skip);
        assert_eq!(decide(Some("needs root"), true), Decision::Fail);
    }

    #[test]
    fn a_missing_tool_names_its_package() {
        let why = tool("ms-no-such-tool-x7", "--version", "iproute2").expect("missing");
        assert!(
            why.contains("ms-no-such-tool-x7") && why.contains("iproute2"),
            "{why}"
        );
        assert_eq!(tool("cargo", "--version", "cargo"), None);
    }

    #[test]
    fn an_unknown_file_system_and_an_impossible_pool_are_missing() {
        assert!(filesystem("ms-no-such-fs").is_some());
        assert_eq!(filesystem("proc"), None);
        assert!(hugepages_free(u64::MAX).is_some());
    }

    #[test]
    fn each_run_appends_one_line_with_the_test_name() {
        let log = std::env::temp_dir().join(format!("testkit-log-{}", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let name = test_name("testkit/src/lib.rs:1");
        assert!(name.contains("each_run_appends_one_line"), "{name}");
        record(&log, &name).unwrap();
        record(&log, "second\nline").unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_file(&log).unwrap();
        assert_eq!(text, format!("{name}\nsecond line\n"));
    }

    fn runs_only_with(need: Option<String>, ran: &mut bool) {
        crate::require!(None, need);
        *ran = true;
    }

    #[test]
    fn the_macro_returns_early_when_a_need_is_missing() {
        // Only the missing case: a test that runs would be recorded in the suite's log.
        let mut ran = false;
        if required() {
            let r =
                std::panic::catch_unwind(move || runs_only_with(Some("needs x".into()), &mut ran));
            assert!(
                r.is_err(),
                "a missing need must fail where privileged tests are required"
            );
        } else {
            runs_only_with(Some("needs x".into()), &mut ran);
            assert!(!ran, "a missing need must skip the rest of the test");
        }
    }
}
