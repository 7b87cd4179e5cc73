//! ms-xdp: operate the MemoryStreamer XDP program.
//!
//! ```text
//! ms-xdp [--netns NS] attach    --iface IF --port P [--mode native|skb] [--default-allow]
//! ms-xdp              counters  --iface IF
//! ms-xdp              allow|deny|forget --iface IF --source IP --stream S
//! ms-xdp              ratelimit --iface IF --source IP (--rate R --burst B | --clear)
//! ms-xdp              config    --iface IF [--port P] [--default-allow true|false]
//! ms-xdp [--netns NS] send      --dst IP --port P --kind K --count N [--stream S]
//! ms-xdp [--netns NS] recv      --bind IP --port P --count N --timeout-ms T
//! ms-xdp              cost      [--repeat N]   (program cost per packet, BPF_PROG_TEST_RUN)
//! ms-xdp [--netns NS] loss      --iface IF --ppm N [--seed S] [--direction egress|ingress|both]
//!                               [--exit-on-stdin-eof]
//! ```
//! `loss` makes a lossy link (netem-style, for kernels without `sch_netem`): a tc
//! program drops N parts per million of the interface's IPv4/UDP packets until
//! SIGINT/SIGTERM (or stdin EOF with the flag), then prints `loss dropped=D passed=P` and detaches.
//! `--netns` switches only the network namespace (setns), so the pins stay in
//! the host's bpffs where other processes find them. `attach` runs until
//! SIGINT/SIGTERM (or stdin EOF with `--exit-on-stdin-eof`), then detaches
//! and removes its pins. `send` and `recv` are bounded in count and time.
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use xdp_programs::abi::{Config, Verdict, CONFIG_FLAG_DEFAULT_ALLOW};
use xdp_programs::frame::{FrameHeader, FrameType, HEADER_BYTES};
use xdp_programs::{AttachMode, PolicyMaps, XdpProgram};

/// Most frames one `send` emits.
const SEND_COUNT_MAX: u64 = 1_000_000;
/// Most frames one `recv` waits for.
const RECV_COUNT_MAX: u64 = 1_000_000;
/// Longest `send`/`recv` run.
const RUN_TIMEOUT_MS_MAX: u64 = 600_000;
/// Body bytes of a generated DATA frame, at most.
const BODY_BYTES_MAX: usize = 65_000;
/// How often `attach` checks for a stop request.
const ATTACH_POLL_MS: u64 = 50;

#[derive(Parser)]
#[command(
    name = "ms-xdp",
    about = "Attach and operate the MemoryStreamer XDP program"
)]
struct Cli {
    /// Network namespace (name under /run/netns) to enter before the command.
    #[arg(long, global = true)]
    netns: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Mode {
    Native,
    Skb,
}

#[derive(Clone, Copy, ValueEnum)]
enum Direction {
    Egress,
    Ingress,
    Both,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Kind {
    /// A well-formed DATA frame.
    Valid,
    /// Wrong magic.
    BadMagic,
    /// Unknown version.
    BadVersion,
    /// Frame type 0.
    BadType,
    /// Non-zero reserved field.
    BadReserved,
    /// UDP payload shorter than the frame header.
    Short,
    /// Empty UDP payload.
    Empty,
    /// Frame length field disagrees with the datagram.
    BadLengthField,
    /// Raw IPv4 packet whose UDP header is cut short (4 bytes).
    RawUdpTruncated,
    /// Raw IPv4 packet whose UDP length field exceeds the IP payload.
    RawUdpBadLength,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load, pin maps, attach; run until SIGINT/SIGTERM, then detach and unpin.
    Attach {
        #[arg(long)]
        iface: String,
        /// UDP port of data frames.
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum, default_value = "native")]
        mode: Mode,
        /// Allow sources that have no policy entry (default: deny).
        #[arg(long)]
        default_allow: bool,
        /// Also stop when stdin reaches EOF (for supervisors and tests).
        #[arg(long)]
        exit_on_stdin_eof: bool,
    },
    /// Drop a seeded share of an interface's IPv4/UDP packets (a lossy link) until
    /// SIGINT/SIGTERM or stdin EOF; then print the drop counts and detach.
    Loss {
        #[arg(long)]
        iface: String,
        /// Parts per million dropped (1..=500000; 50000 = 5 %).
        #[arg(long)]
        ppm: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, value_enum, default_value = "both")]
        direction: Direction,
        /// Also stop when stdin reaches EOF (for supervisors and tests).
        #[arg(long)]
        exit_on_stdin_eof: bool,
    },
    /// Print the verdict counters (summed over CPUs).
    Counters {
        #[arg(long)]
        iface: String,
    },
    /// Allow SOURCE to send frames of STREAM.
    Allow(PolicyArgs),
    /// Deny SOURCE for STREAM (explicit entry).
    Deny(PolicyArgs),
    /// Remove the entry: the default policy applies.
    Forget(PolicyArgs),
    /// Set or clear the per-source token bucket.
    Ratelimit {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        source: IpAddr,
        /// Refill rate, frames per second (0 = no refill).
        #[arg(long, required_unless_present = "clear")]
        rate: Option<u64>,
        /// Bucket size in frames.
        #[arg(long, required_unless_present = "clear")]
        burst: Option<u64>,
        #[arg(long, conflicts_with_all = ["rate", "burst"])]
        clear: bool,
    },
    /// Show or change the program's config.
    Config {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        default_allow: Option<bool>,
    },
    /// Send COUNT frames of one kind (bounded by count and --timeout-ms).
    Send {
        #[arg(long)]
        dst: Ipv4Addr,
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 1)]
        stream: u32,
        #[arg(long, default_value_t = 64)]
        body_bytes: usize,
        /// Pause between frames.
        #[arg(long, default_value_t = 0)]
        interval_us: u64,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
    },
    /// Receive up to COUNT datagrams on a UDP socket; prints `ready`, then totals.
    Recv {
        #[arg(long)]
        bind: Ipv4Addr,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 5_000)]
        timeout_ms: u64,
    },
    /// Measure the program's cost per packet on each main path (BPF_PROG_TEST_RUN,
    /// no interface needed; figures only).
    Cost {
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
    },
}

#[derive(clap::Args)]
struct PolicyArgs {
    #[arg(long)]
    iface: String,
    #[arg(long)]
    source: IpAddr,
    #[arg(long)]
    stream: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(ns) = &cli.netns {
        if let Err(e) = enter_netns(ns) {
            eprintln!("ms-xdp: {e}");
            return ExitCode::from(2);
        }
    }
    match run(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ms-xdp: {e}");
            ExitCode::FAILURE
        }
    }
}

type CmdResult = Result<(), Box<dyn std::error::Error>>;

fn enter_netns(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('/') {
        return Err(format!("`{name}` is not a network namespace name"));
    }
    let path = format!("/run/netns/{name}");
    let file = std::fs::File::open(&path)
        .map_err(|e| format!("cannot open {path} ({e}): create it with `ip netns add {name}`"))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        format!("cannot enter network namespace {name} ({e}): needs root or CAP_SYS_ADMIN")
    })
}

fn run(cmd: Cmd) -> CmdResult {
    match cmd {
        Cmd::Attach {
            iface,
            port,
            mode,
            default_allow,
            exit_on_stdin_eof,
        } => attach(&iface, port, mode, default_allow, exit_on_stdin_eof),
        Cmd::Loss {
            iface,
            ppm,
            seed,
            direction,
            exit_on_stdin_eof,
        } => loss(&iface, ppm, seed, direction, exit_on_stdin_eof),
        Cmd::Counters { iface } => {
            let counts = PolicyMaps::open(&iface)?.counters()?;
            for v in Verdict::ALL {
                println!("{:<20} {}", v.label(), counts.get(v));
            }
            Ok(())
        }
        Cmd::Allow(a) => Ok(PolicyMaps::open(&a.iface)?.allow(a.source, a.stream)?),
        Cmd::Deny(a) => Ok(PolicyMaps::open(&a.iface)?.deny(a.source, a.stream)?),
        Cmd::Forget(a) => Ok(PolicyMaps::open(&a.iface)?.forget(a.source, a.stream)?),
        Cmd::Ratelimit {
            iface,
            source,
            rate,
            burst,
            clear,
        } => {
            let mut maps = PolicyMaps::open(&iface)?;
            match (clear, rate, burst) {
                (true, _, _) => maps.clear_rate_limit(source)?,
                (false, Some(rate), Some(burst)) => maps.set_rate_limit(source, rate, burst)?,
                _ => return Err("give --rate and --burst, or --clear".into()),
            }
            Ok(())
        }
        Cmd::Config {
            iface,
            port,
            default_allow,
        } => {
            let mut maps = PolicyMaps::open(&iface)?;
            let mut cfg = maps.config()?;
            if let Some(port) = port {
                cfg.data_port = port;
            }
            match default_allow {
                Some(true) => cfg.flags |= CONFIG_FLAG_DEFAULT_ALLOW,
                Some(false) => cfg.flags &= !CONFIG_FLAG_DEFAULT_ALLOW,
                None => {}
            }
            if port.is_some() || default_allow.is_some() {
                maps.set_config(cfg)?;
            }
            println!(
                "data_port {} default_allow {}",
                cfg.data_port,
                cfg.default_allow()
            );
            Ok(())
        }
        Cmd::Send {
            dst,
            port,
            kind,
            count,
            stream,
            body_bytes,
            interval_us,
            timeout_ms,
        } => send(
            dst,
            port,
            kind,
            count,
            stream,
            body_bytes,
            interval_us,
            timeout_ms,
        ),
        Cmd::Recv {
            bind,
            port,
            count,
            timeout_ms,
        } => recv(bind, port, count, timeout_ms),
        Cmd::Cost { repeat } => cost(repeat),
    }
}

fn attach(iface: &str, port: u16, mode: Mode, default_allow: bool, stdin_eof: bool) -> CmdResult {
    let mode = match mode {
        Mode::Native => AttachMode::Native,
        Mode::Skb => AttachMode::Skb,
    };
    let flags = if default_allow {
        CONFIG_FLAG_DEFAULT_ALLOW
    } else {
        0
    };
    let config = Config {
        data_port: port,
        reserved: 0,
        flags,
    };
    let stop = stop_flag()?;
    let handle = XdpProgram::load_and_attach(iface, mode, config)?;
    println!(
        "attached iface={} mode={:?} port={port} default_allow={default_allow} pins={}",
        handle.iface(),
        handle.mode(),
        handle.pin_dir().display()
    );
    std::io::stdout().flush()?;
    if stdin_eof {
        stop_on_stdin_eof(&stop);
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(ATTACH_POLL_MS));
    }
    drop(handle);
    println!("detached iface={iface}");
    Ok(())
}

/// A flag raised by SIGINT/SIGTERM.
fn stop_flag() -> Result<Arc<AtomicBool>, std::io::Error> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    Ok(stop)
}

/// Raises `stop` when stdin reaches EOF (the parent closed it or exited).
fn stop_on_stdin_eof(stop: &Arc<AtomicBool>) {
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read_line(&mut line), Ok(n) if n > 0) {
            line.clear();
        }
        stop.store(true, Ordering::Relaxed);
    });
}

fn loss(iface: &str, ppm: u32, seed: u64, direction: Direction, stdin_eof: bool) -> CmdResult {
    use xdp_programs::link_loss::{LinkLoss, LossDirection};
    let stop = stop_flag()?;
    let direction = match direction {
        Direction::Egress => LossDirection::Egress,
        Direction::Ingress => LossDirection::Ingress,
        Direction::Both => LossDirection::Both,
    };
    let link = LinkLoss::attach(iface, direction, ppm, seed)?;
    println!("loss attached iface={iface} ppm={ppm} seed={seed} direction={direction:?}");
    std::io::stdout().flush()?;
    if stdin_eof {
        stop_on_stdin_eof(&stop);
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(ATTACH_POLL_MS));
    }
    let (dropped, passed) = link.counts()?;
    drop(link);
    println!("loss dropped={dropped} passed={passed}");
    Ok(())
}

/// The UDP payload of one frame of `kind`.
fn frame_bytes(kind: Kind, stream: u32, seq: u64, body_bytes: usize) -> Vec<u8> {
    let header = FrameHeader {
        frame_type: FrameType::Data,
        flags: 0,
        stream_id: stream,
        partition: 0,
        session_id: 1,
        offset: seq * body_bytes as u64,
        epoch: 1,
    };
    let body: Vec<u8> = (0..body_bytes).map(|i| (i as u64 + seq) as u8).collect();
    let mut out = Vec::new();
    header
        .encode(&body, &mut out)
        .expect("body_bytes checked against FRAME_BYTES_MAX");
    match kind {
        Kind::Valid | Kind::RawUdpTruncated | Kind::RawUdpBadLength => {}
        Kind::BadMagic => out[0] ^= 0xff,
        Kind::BadVersion => out[4] = xdp_programs::frame::VERSION.wrapping_add(1),
        Kind::BadType => out[5] = 0,
        Kind::BadReserved => out[14] = 1,
        Kind::Short => out.truncate(HEADER_BYTES / 2),
        Kind::Empty => out.clear(),
        Kind::BadLengthField => out[20] = out[20].wrapping_add(1),
    }
    out
}

/// A UDP header (checksum 0 = none, allowed over IPv4) followed by `payload`.
fn raw_udp(src_port: u16, dst_port: u16, udp_len_field: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + payload.len());
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&udp_len_field.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

#[allow(clippy::too_many_arguments)]
fn send(
    dst: Ipv4Addr,
    port: u16,
    kind: Kind,
    count: u64,
    stream: u32,
    body_bytes: usize,
    interval_us: u64,
    timeout_ms: u64,
) -> CmdResult {
    if count > SEND_COUNT_MAX || timeout_ms > RUN_TIMEOUT_MS_MAX || body_bytes > BODY_BYTES_MAX {
        return Err(format!(
            "limits: --count <= {SEND_COUNT_MAX}, --timeout-ms <= {RUN_TIMEOUT_MS_MAX}, \
             --body-bytes <= {BODY_BYTES_MAX}"
        )
        .into());
    }
    if HEADER_BYTES + body_bytes > xdp_programs::abi::FRAME_BYTES_MAX as usize {
        return Err("--body-bytes too large for FRAME_BYTES_MAX".into());
    }
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let raw = matches!(kind, Kind::RawUdpTruncated | Kind::RawUdpBadLength);
    let udp = if raw {
        None
    } else {
        Some(UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?)
    };
    let raw_sock = if raw {
        use socket2::{Domain, Protocol, Socket, Type};
        Some(Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP))?)
    } else {
        None
    };
    let mut sent = 0;
    for seq in 0..count {
        if Instant::now() >= deadline {
            break;
        }
        match (&udp, &raw_sock) {
            (Some(sock), _) => {
                sock.send_to(&frame_bytes(kind, stream, seq, body_bytes), (dst, port))?;
            }
            (None, Some(sock)) => {
                let frame = frame_bytes(Kind::Valid, stream, seq, body_bytes);
                let packet = if kind == Kind::RawUdpTruncated {
                    raw_udp(40_000, port, 8, &[])[..4].to_vec()
                } else {
                    let real = 8 + frame.len();
                    raw_udp(40_000, port, (real + 10) as u16, &frame)
                };
                let to = socket2::SockAddr::from(SocketAddr::V4(SocketAddrV4::new(dst, 0)));
                sock.send_to(&packet, &to)?;
            }
            (None, None) => unreachable!("one socket is always open"),
        }
        sent += 1;
        if interval_us > 0 {
            std::thread::sleep(Duration::from_micros(interval_us));
        }
    }
    println!("sent {sent}");
    Ok(())
}

fn recv(bind: Ipv4Addr, port: u16, count: u64, timeout_ms: u64) -> CmdResult {
    if count > RECV_COUNT_MAX || timeout_ms > RUN_TIMEOUT_MS_MAX {
        return Err(format!(
            "limits: --count <= {RECV_COUNT_MAX}, --timeout-ms <= {RUN_TIMEOUT_MS_MAX}"
        )
        .into());
    }
    let sock = UdpSocket::bind((bind, port))?;
    println!("ready");
    std::io::stdout().flush()?;
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut buf = vec![0u8; 65_536];
    let (mut received, mut valid) = (0u64, 0u64);
    while received < count {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        sock.set_read_timeout(Some(deadline - now))?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                received += 1;
                if FrameHeader::decode(&buf[..n]).is_ok() {
                    valid += 1;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => return Err(e.into()),
        }
    }
    println!("received {received} valid {valid}");
    Ok(())
}

/// Ethernet + IPv4 (198.18.0.1 -> 198.18.0.2) + UDP to `port` around `payload`.
fn ipv4_udp_packet(proto: u8, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    let tot = (20 + 8 + payload.len()) as u16;
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&tot.to_be_bytes());
    p.extend_from_slice(&[0, 1, 0, 0, 64, proto, 0, 0, 198, 18, 0, 1, 198, 18, 0, 2]);
    p.extend_from_slice(&40_000u16.to_be_bytes());
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn cost(repeat: u32) -> CmdResult {
    const PORT: u16 = 47_000;
    let config = Config {
        data_port: PORT,
        reserved: 0,
        flags: 0,
    };
    let mut prog = XdpProgram::load_for_test_run(config)?;
    let source = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1));
    prog.maps().allow(source, 1)?;
    prog.maps()
        .set_rate_limit(source, xdp_programs::abi::RATE_PER_SEC_MAX, 1 << 32)?;
    let valid = frame_bytes(Kind::Valid, 1, 0, 1024);
    let cases = [
        (
            "accept: policy allow + token bucket (redirect_no_socket)",
            ipv4_udp_packet(17, PORT, &valid),
        ),
        (
            "drop_policy (stream not allowed)",
            ipv4_udp_packet(17, PORT, &frame_bytes(Kind::Valid, 2, 0, 1024)),
        ),
        (
            "drop_bad_header (bad magic)",
            ipv4_udp_packet(17, PORT, &frame_bytes(Kind::BadMagic, 1, 0, 1024)),
        ),
        ("pass_other_port", ipv4_udp_packet(17, PORT + 1, &valid)),
        ("pass_not_udp (TCP)", ipv4_udp_packet(6, PORT, &valid)),
    ];
    let len = cases[0].1.len();
    println!(
        "memstreamer_xdp cost per packet: BPF_PROG_TEST_RUN, {repeat} repeats, {len}-byte packets"
    );
    for (name, packet) in cases {
        let out = prog.run_repeat(&packet, repeat)?;
        println!(
            "{:>6} ns  action={}  {name}",
            out.duration_ns_mean, out.action
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_frames_have_the_intended_defect() {
        let ok = frame_bytes(Kind::Valid, 3, 0, 16);
        assert!(FrameHeader::decode(&ok).is_ok());
        for kind in [
            Kind::BadMagic,
            Kind::BadVersion,
            Kind::BadType,
            Kind::BadReserved,
            Kind::Short,
            Kind::Empty,
            Kind::BadLengthField,
        ] {
            assert!(FrameHeader::decode(&frame_bytes(kind, 3, 0, 16)).is_err());
        }
    }
}
