//! `ms-ring`: operator tool for shm-ring files, plus the child-process roles
//! the crash tests use.
//!
//! ```text
//! ms-ring inspect <file>                           header, tail, owner and subscriber table
//! ms-ring publish <dir> <name> <count> <len>       offer <count> pattern records (retrying back-pressure)
//! ms-ring subscribe <dir> <name> <count>           read <count> records from Earliest, verify the pattern
//! ms-ring hold-subscriber <dir> <name>             attach a subscriber, keep it alive, never poll (kill -9 tests)
//! ms-ring claim-and-hang <dir> <name>              claim a record, never commit (for kill -9 tests)
//! ms-ring create-and-hang <dir> <name> <capacity>  create a ring and keep it (for stale-file tests)
//! ms-ring bench [messages]                         cross-process throughput (32 B) and paced latency (64 B)
//! ```
//! Roles print one line ("ready ...", "ok ...") on stdout when they reach their state.

#[cfg(not(loom))]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = imp::run(&args) {
        eprintln!("ms-ring: {e}");
        std::process::exit(1);
    }
}

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
mod imp {
    use std::io::Write;
    use std::path::Path;
    use std::time::{Duration, Instant};

    use shm_ring::*;

    /// Upper bound on how long a role waits for progress before giving up.
    const ROLE_DEADLINE: Duration = Duration::from_secs(60);

    /// Byte k of pattern record i.
    pub fn pattern(i: u64, k: usize) -> u8 {
        (i as usize).wrapping_mul(31).wrapping_add(k) as u8
    }

    fn usage() -> String {
        "usage: ms-ring inspect <file> | publish <dir> <name> <count> <len> | subscribe <dir> <name> <count> \
         | hold-subscriber <dir> <name> | claim-and-hang <dir> <name> | create-and-hang <dir> <name> <capacity>"
            .into()
    }

    fn num(s: Option<&String>) -> Result<u64, String> {
        s.ok_or_else(usage)?
            .parse()
            .map_err(|e| format!("bad number: {e}"))
    }

    fn ready(line: &str) {
        println!("{line}");
        let _ = std::io::stdout().flush();
    }

    fn hang() -> ! {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    pub fn run(args: &[String]) -> Result<(), String> {
        let open = |i: usize| -> Result<Ring, String> {
            let dir = args.get(i).ok_or_else(usage)?;
            let name = args.get(i + 1).ok_or_else(usage)?;
            Ring::open(name, Some(Path::new(dir))).map_err(|e| e.to_string())
        };
        match args.first().map(String::as_str) {
            Some("inspect") => inspect(Path::new(args.get(1).ok_or_else(usage)?)),
            Some("publish") => publish(&open(1)?, num(args.get(3))?, num(args.get(4))? as usize),
            Some("subscribe") => subscribe(&open(1)?, num(args.get(3))?),
            Some("hold-subscriber") => hold_subscriber(&open(1)?),
            Some("claim-and-hang") => claim_and_hang(&open(1)?),
            Some("create-and-hang") => {
                let dir = args.get(1).ok_or_else(usage)?;
                let name = args.get(2).ok_or_else(usage)?;
                create_and_hang(dir, name, num(args.get(3))?)
            }
            Some("bench") => bench::run(
                args.get(1)
                    .map(|s| s.parse())
                    .transpose()
                    .map_err(|e| format!("{e}"))?,
            ),
            Some("bench-pub") => bench::publisher(&open(1)?, args),
            _ => Err(usage()),
        }
    }

    /// `publish`: offers `count` pattern records of `len` bytes, retrying back-pressure.
    fn publish(ring: &Ring, count: u64, len: usize) -> Result<(), String> {
        let mut publ = ring.publisher().map_err(|e| e.to_string())?;
        let deadline = Instant::now() + ROLE_DEADLINE;
        let mut buf = vec![0u8; len];
        for i in 0..count {
            buf.iter_mut()
                .enumerate()
                .for_each(|(k, b)| *b = pattern(i, k));
            loop {
                match publ.offer(&buf) {
                    Ok(_) => break,
                    Err(OfferError::BackPressured) if Instant::now() < deadline => {
                        std::hint::spin_loop()
                    }
                    Err(e) => return Err(format!("offer {i}: {e}")),
                }
            }
        }
        ready(&format!("ok published {count}"));
        Ok(())
    }

    /// `subscribe`: reads `count` records from the earliest, checking each one's pattern.
    fn subscribe(ring: &Ring, count: u64) -> Result<(), String> {
        let mut sub = ring
            .subscriber(StartAt::Earliest)
            .map_err(|e| e.to_string())?;
        ready("ready");
        let deadline = Instant::now() + ROLE_DEADLINE;
        let (mut n, mut bad) = (0u64, 0u64);
        while n < count {
            if Instant::now() > deadline {
                return Err(format!("timed out after {n} of {count} records"));
            }
            sub.poll(
                |r| {
                    let ok = r.offset == n
                        && r.payload
                            .iter()
                            .enumerate()
                            .all(|(k, b)| *b == pattern(r.offset, k));
                    bad += u64::from(!ok);
                    n += 1;
                },
                1024,
            )
            .map_err(|e| e.to_string())?;
        }
        ready(&format!(
            "ok received {n} bad {bad} lost {}",
            sub.lost_records()
        ));
        Ok(())
    }

    /// `hold-subscriber`: a live, idle subscriber: heartbeats, never consumes.
    fn hold_subscriber(ring: &Ring) -> Result<(), String> {
        let mut sub = ring.subscriber(StartAt::Tail).map_err(|e| e.to_string())?;
        ready(&format!("ready at {}", sub.next_offset()));
        loop {
            sub.keepalive();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `claim-and-hang`: claims a record and never commits it.
    fn claim_and_hang(ring: &Ring) -> Result<(), String> {
        let mut publ = ring.publisher().map_err(|e| e.to_string())?;
        let mut claim = publ.claim(8).map_err(|e| e.to_string())?;
        claim.buffer().copy_from_slice(b"unfinish");
        ready(&format!("ready claimed {}", claim.offset()));
        hang()
    }

    /// `create-and-hang`: creates a ring in /dev/shm-backed `dir` and keeps it.
    fn create_and_hang(dir: &str, name: &str, capacity_bytes: u64) -> Result<(), String> {
        let cfg = RingConfig {
            capacity_bytes,
            backing: Backing::DevShm,
            dir: Some(dir.into()),
            ..RingConfig::default()
        };
        let _ring = Ring::create(name, &cfg).map_err(|e| e.to_string())?;
        ready("ready created");
        hang()
    }

    /// A quick health check of the ring between two processes (not the
    /// project's benchmark suite, which is `ms-bench shm`).
    mod bench {
        use super::*;
        use std::process::{Command, Stdio};

        /// Gap between latency messages, so each is drained before the next.
        const PACE_NS: u64 = 5_000;
        const LATENCY_MSGS: u64 = 200_000;
        const CORE_PUB: usize = 0;
        const CORE_SUB: usize = 1;

        fn pin(core: usize) {
            // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it;
            // sched_setaffinity(0, ..) only affects this thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(core, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
        }

        pub fn run(messages: Option<u64>) -> Result<(), String> {
            let messages = messages.unwrap_or(50_000_000);
            let name = format!("ms-ring-bench-{}", std::process::id());
            let cfg = RingConfig {
                capacity_bytes: 8 << 20,
                publishers: PublisherKind::Exclusive,
                ..RingConfig::default()
            };
            let ring = Ring::create(&name, &cfg).map_err(|e| e.to_string())?;
            let dir = ring.dir();
            let result = (|| {
                pin(CORE_SUB);
                single_thread(&ring)?;
                let mut sub = ring.subscriber(StartAt::Tail).map_err(|e| e.to_string())?;
                let spawn = |what: &str, count: u64| {
                    Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
                        .arg("bench-pub")
                        .arg(&dir)
                        .args([name.as_str(), what, &count.to_string()])
                        .stdout(Stdio::null())
                        .spawn()
                        .map_err(|e| e.to_string())
                };
                // Throughput: 32-byte records, as fast as the publisher can,
                // with offer() and with offer_batch() of 64 records.
                for what in ["throughput", "throughput-batch"] {
                    let mut child = spawn(what, messages)?;
                    let (mut n, mut first, mut last) = (0u64, 0u64, 0u64);
                    let deadline = Instant::now() + ROLE_DEADLINE;
                    while n < messages && Instant::now() < deadline {
                        let p = sub.poll(|_| n += 1, 4096).map_err(|e| e.to_string())?;
                        if p.records > 0 {
                            last = clock::now_ns();
                            if first == 0 {
                                first = last;
                            }
                        }
                    }
                    let _ = child.wait();
                    let secs = (last - first) as f64 / 1e9;
                    println!(
                        "{what} 32 B: {n} records in {secs:.3} s = {:.1} M records/s",
                        n as f64 / secs / 1e6
                    );
                }
                // Latency: 64-byte records, one every PACE_NS, stamped with the ring clock.
                let mut child = spawn("latency", LATENCY_MSGS)?;
                let mut lat = Vec::with_capacity(LATENCY_MSGS as usize);
                let deadline = Instant::now() + ROLE_DEADLINE;
                while (lat.len() as u64) < LATENCY_MSGS && Instant::now() < deadline {
                    sub.poll(
                        |r| {
                            let sent =
                                u64::from_le_bytes(r.payload[..8].try_into().unwrap_or([0; 8]));
                            lat.push(clock::now_ns().saturating_sub(sent));
                        },
                        64,
                    )
                    .map_err(|e| e.to_string())?;
                }
                let _ = child.wait();
                let warm = lat.len() / 10;
                let mut l = lat.split_off(warm);
                l.sort_unstable();
                let q = |f: f64| {
                    l.get(((l.len() as f64 * f) as usize).min(l.len().saturating_sub(1)))
                        .copied()
                        .unwrap_or(0)
                };
                println!(
                    "latency 64 B one-way (n = {}, paced {PACE_NS} ns): p50 {} ns  p99 {} ns  p99.9 {} ns  max {} ns",
                    l.len(),
                    q(0.5),
                    q(0.99),
                    q(0.999),
                    l.last().copied().unwrap_or(0)
                );
                Ok(())
            })();
            let _ = ring.unlink();
            result
        }

        /// Cost per record on one thread (no cache-line transfers): offer,
        /// offer_batch of 64, and poll, 32-byte payloads, 4096 records per round.
        fn single_thread(ring: &Ring) -> Result<(), String> {
            const ROUNDS: usize = 2_000;
            const BATCH: usize = 4096;
            let mut sub = ring.subscriber(StartAt::Tail).map_err(|e| e.to_string())?;
            let mut publ = ring.publisher().map_err(|e| e.to_string())?;
            let msg = [7u8; 32];
            let refs: Vec<&[u8]> = vec![&msg; 64];
            for batched in [false, true] {
                let (mut offer_ns, mut poll_ns, mut n) = (0u128, 0u128, 0usize);
                for _ in 0..ROUNDS {
                    let t = Instant::now();
                    let mut k = 0;
                    while k < BATCH {
                        k += if batched {
                            publ.offer_batch(0, &refs).map_err(|e| e.to_string())?.1
                        } else {
                            publ.offer(&msg).map_err(|e| e.to_string())?;
                            1
                        };
                    }
                    offer_ns += t.elapsed().as_nanos();
                    let t = Instant::now();
                    n += sub
                        .poll(
                            |r| {
                                std::hint::black_box(r.payload.len());
                            },
                            usize::MAX,
                        )
                        .map_err(|e| e.to_string())?
                        .records;
                    poll_ns += t.elapsed().as_nanos();
                }
                let name = if batched { "offer_batch(64)" } else { "offer" };
                println!(
                    "one thread: {name} {:.1} ns/record, poll {:.1} ns/record ({n} records)",
                    offer_ns as f64 / n as f64,
                    poll_ns as f64 / n as f64
                );
            }
            Ok(())
        }

        pub fn publisher(ring: &Ring, args: &[String]) -> Result<(), String> {
            pin(CORE_PUB);
            let what = args.get(3).ok_or_else(usage)?;
            let count = num(args.get(4))?;
            let mut publ = ring.publisher().map_err(|e| e.to_string())?;
            let deadline = Instant::now() + ROLE_DEADLINE;
            if what == "throughput-batch" {
                let msg = [7u8; 32];
                let batch: Vec<&[u8]> = vec![&msg; 64];
                let mut i = 0;
                while i < count && Instant::now() < deadline {
                    let want = (count - i).min(64) as usize;
                    if let Ok((_, n)) = publ.offer_batch(0, &batch[..want]) {
                        i += n as u64;
                    }
                }
                return Ok(());
            }
            if what == "throughput" {
                let msg = [7u8; 32];
                let mut i = 0;
                while i < count && Instant::now() < deadline {
                    for _ in 0..1024 {
                        if i < count && publ.offer(&msg).is_ok() {
                            i += 1;
                        }
                    }
                }
                return Ok(());
            }
            let mut next = clock::now_ns();
            let mut msg = [0u8; 64];
            for _ in 0..count {
                next += PACE_NS;
                while clock::now_ns() < next {
                    std::hint::spin_loop();
                }
                msg[..8].copy_from_slice(&clock::now_ns().to_le_bytes());
                while publ.offer(&msg).is_err() {
                    if Instant::now() > deadline {
                        return Err("latency publisher timed out".into());
                    }
                }
            }
            Ok(())
        }
    }

    fn inspect(path: &Path) -> Result<(), String> {
        let h = read_header_info(path).map_err(|e| e.to_string())?;
        println!("file              {}", path.display());
        println!("version           {}", h.version);
        println!("capacity_bytes    {}", h.capacity_bytes);
        println!("descriptors       {}", h.descriptors);
        println!("file_bytes        {}", h.file_bytes);
        println!("mode              {:?}", h.mode);
        println!("publishers        {:?}", h.publishers);
        println!(
            "backing           {}",
            if h.hugetlbfs { "hugetlbfs" } else { "/dev/shm" }
        );
        println!("subscribers_max   {}", h.subscribers_max);
        println!("liveness_timeout  {} ns", h.liveness_timeout_ns);
        println!("claim_timeout     {} ns", h.claim_timeout_ns);
        println!(
            "creator           pid {} (start ticks {})",
            h.creator_pid, h.creator_start_ticks
        );
        println!(
            "clock             tsc_base {} ns_base {} mult {}",
            h.clock.tsc_base, h.clock.ns_base, h.clock.mult
        );
        let dir = path.parent().ok_or("the file has no directory")?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or("bad file name")?;
        let ring = Ring::open(name, Some(dir)).map_err(|e| e.to_string())?;
        let (pos, seq) = ring.tail();
        println!("tail              position {pos} next_offset {seq}");
        if h.publishers == PublisherKind::Exclusive {
            let o = ring.owner_slot();
            println!(
                "owner             {} gen {} pid {} heartbeat_ns {}",
                o.state, o.generation, o.pid, o.heartbeat_ns
            );
        }
        println!(
            "slot  state      gen  pid      next_offset  position  lag_records  heartbeat_age_ms"
        );
        let now = clock::now_ns();
        for s in ring.subscriber_slots() {
            if s.state == "free" && s.generation == 0 {
                continue;
            }
            println!(
                "{:<5} {:<10} {:<4} {:<8} {:<12} {:<9} {:<12} {}",
                s.index,
                s.state,
                s.generation,
                s.pid,
                s.next_sequence,
                s.position,
                seq.saturating_sub(s.next_sequence),
                now.saturating_sub(s.heartbeat_ns) / 1_000_000
            );
        }
        Ok(())
    }
}
