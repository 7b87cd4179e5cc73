//! Process identity for owner and subscriber slots: pid plus the process
//! start time from `/proc/<pid>/stat` (field 22, clock ticks since boot), so a
//! recycled pid is not mistaken for the original process.

/// This process: (pid, start ticks).
#[cfg(not(loom))]
pub(crate) fn this_process() -> (u32, u64) {
    let pid = std::process::id();
    (pid, start_ticks(pid).map(|(t, _)| t).unwrap_or(0))
}

#[cfg(loom)]
pub(crate) fn this_process() -> (u32, u64) {
    (1, 1)
}

/// True when the process `pid` that started at `start` still runs.
/// Zombies (killed, not yet reaped) count as dead. Pid 0 is never alive.
#[cfg(not(loom))]
pub(crate) fn is_alive(pid: u64, start: u64) -> bool {
    let Ok(pid) = u32::try_from(pid) else {
        return false;
    };
    if pid == 0 {
        return false;
    }
    match start_ticks(pid) {
        Some((ticks, state)) => ticks == start && state != 'Z' && state != 'X',
        None => false,
    }
}

#[cfg(loom)]
pub(crate) fn is_alive(_pid: u64, _start: u64) -> bool {
    true
}

/// (start ticks, state char) of `pid`, or None when there is no such process.
#[cfg(not(loom))]
fn start_ticks(pid: u32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

#[cfg(any(test, not(loom)))]
/// Parses `/proc/<pid>/stat`. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted after the last ')'.
fn parse_stat(stat: &str) -> Option<(u64, char)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3) come fields 4..; start time is field 22.
    let ticks = fields.nth(22 - 4)?.parse().ok()?;
    Some((ticks, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "42 (a b) c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(parse_stat(stat), Some((123456, 'S')));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[cfg(not(loom))]
    #[test]
    fn this_process_is_alive_and_pid_reuse_is_detected() {
        let (pid, start) = this_process();
        assert!(is_alive(u64::from(pid), start));
        assert!(
            !is_alive(u64::from(pid), start + 1),
            "different start time = a different process"
        );
        assert!(!is_alive(0, 0));
        assert!(!is_alive(u64::MAX, 0));
    }
}
