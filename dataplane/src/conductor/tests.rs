use sdk::net::wire::SubscribeStart;
use shm_ring::{Ring, RingConfig};

use super::*;

use crate::agent::{spsc, SpscConsumer, COMMAND_QUEUE_DEPTH_MAX, OUTBOX_PENDING_MAX};
use crate::proxy::{ReceiverCommand, SenderCommand};
use crate::session::SubscribeRequest;

/// Settings for remote subscribers of the configured partition (7, 0).
fn settings(heartbeat_interval_ns: u64, session_timeout_ns: u64) -> SubscriptionSettings {
    SubscriptionSettings {
        partitions: vec![(7, 0)],
        retransmit_window_bytes: 1 << 16,
        heartbeat_interval_ns,
        session_timeout_ns,
        principal: "n".into(),
        neighbour_interface: None,
    }
}

/// A conductor over [`registry`], with its command queue (`depth`) and the agents' queues.
struct Test {
    conductor: Conductor,
    counters: Counters,
    commands: CommandQueue<ConductorCommand>,
    receiver: SpscConsumer<ReceiverCommand>,
    sender: SpscConsumer<SenderCommand>,
}

fn conductor(dir: &std::path::Path, settings: SubscriptionSettings, depth: usize) -> Test {
    let counters = Counters::new(&[(7, 0)]);
    let file = CountersFile::create(&dir.join("c"), &counters).unwrap();
    let (reg, receiver, sender) = registry(dir);
    let commands = CommandQueue::new(depth);
    let conductor = Conductor::new(commands.clone(), reg, counters.clone(), file, settings);
    Test {
        conductor,
        counters,
        commands,
        receiver,
        sender,
    }
}

/// A SUBSCRIBE from 198.18.0.2:9 for partition 0 of `stream_id`, starting at the live tail.
fn request(stream_id: u32, session_id: u32, frame_bytes_max: u32) -> SubscribeRequest {
    SubscribeRequest {
        src: "198.18.0.2:9".parse().unwrap(),
        stream_id,
        partition: 0,
        session_id,
        epoch: 0,
        frame_bytes_max,
        start: SubscribeStart::Latest,
    }
}

/// A registry over one configured partition (7, 0) with a real ring in `dir`.
fn registry(
    dir: &std::path::Path,
) -> (
    PartitionRegistry,
    SpscConsumer<ReceiverCommand>,
    SpscConsumer<SenderCommand>,
) {
    let cfg = RingConfig {
        capacity_bytes: 1 << 16,
        backing: shm_ring::Backing::DevShm,
        dir: Some(dir.to_path_buf()),
        ..RingConfig::default()
    };
    let ring = Ring::create(&sdk::ring_name(7, 0), &cfg).unwrap();
    let (rtx, rrx) = spsc(16);
    let (stx, srx) = spsc(16);
    let reg = PartitionRegistry::new(vec![(7, 0, ring)], 8, None, 0, rtx, stx, None);
    (reg, rrx, srx)
}

#[test]
fn stalled_agents_are_counted_once_per_stall() {
    let dir = tempfile::tempdir().unwrap();
    let t = conductor(dir.path(), settings(1, 2), 4);
    let (mut c, counters) = (t.conductor, t.counters);
    c.watch(&["receiver"]);
    let step = LIVENESS_CHECK_INTERVAL_NS;
    let mut now = 1;
    for _ in 0..(AGENT_STALL_NS / step) + 3 {
        c.do_work(now);
        now += step;
    }
    assert_eq!(counters.get(Counter::AgentStalls), 1, "reported once");
    counters.bump_single_writer(Counter::AgentCyclesReceiver);
    for _ in 0..3 {
        c.do_work(now);
        now += step;
    }
    assert_eq!(
        counters.get(Counter::AgentStalls),
        1,
        "progress clears the stall"
    );
}

#[test]
fn subscribe_requests_become_sender_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let t = conductor(dir.path(), settings(1_000_000, 5_000_000), 4);
    let (mut c, counters, commands, sender) = (t.conductor, t.counters, t.commands, t.sender);
    for r in [request(7, 1, 1472), request(8, 1, 1472), request(7, 1, 16)] {
        assert!(commands.offer(ConductorCommand::Subscribe(r)).is_ok());
    }
    c.do_work(1);
    assert_eq!(sender.len(), 1, "only the valid request reaches the sender");
    assert_eq!(
        counters.get(Counter::ConductorSubscribeRefused),
        2,
        "unknown stream, frame too small"
    );
}

/// The sender's queue and the conductor's outbox for it are bounded: a subscribe request
/// beyond them is refused and counted (the subscriber repeats it).
#[test]
fn subscribes_beyond_the_senders_outbox_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(1_000_000, 5_000_000);
    let t = conductor(dir.path(), settings, COMMAND_QUEUE_DEPTH_MAX);
    let (mut c, counters, commands, sender) = (t.conductor, t.counters, t.commands, t.sender);
    let extra = 3;
    let total = 16 + OUTBOX_PENDING_MAX + extra;
    for session_id in 0..total as u32 {
        let r = request(7, session_id, 1472);
        assert!(commands.offer(ConductorCommand::Subscribe(r)).is_ok());
    }
    for _ in 0..total.div_ceil(COMMANDS_PER_CYCLE_MAX) {
        c.do_work(1);
    }
    assert_eq!(sender.len(), 16, "the sender's queue is full");
    assert_eq!(c.registry.sender.backlog(), OUTBOX_PENDING_MAX);
    assert_eq!(counters.get(Counter::ConductorOutboxFull), extra as u64);
    assert_eq!(
        counters.get(Counter::ConductorSubscribeRefused),
        extra as u64
    );
}

fn command_ring(dir: &std::path::Path) -> (Ring, RingConfig) {
    let cfg = RingConfig {
        capacity_bytes: COMMAND_RING_CAPACITY_BYTES,
        backing: shm_ring::Backing::DevShm,
        dir: Some(dir.to_path_buf()),
        ..RingConfig::default()
    };
    let ring = Ring::create(COMMAND_RING_NAME, &cfg).unwrap();
    let part_cfg = RingConfig {
        capacity_bytes: 1 << 16,
        ..cfg
    };
    (ring, part_cfg)
}

#[test]
fn stream_commands_create_and_drop_rings_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let (ring, part_cfg) = command_ring(dir.path());
    let mut streams = StreamRings::new(&ring, part_cfg, vec![(7, 0)]).unwrap();
    let mut publ = ring.publisher().unwrap();
    let path = |s: u32, p: u16| dir.path().join(sdk::ring_name(s, p));
    let create = |stream_id, partitions| StreamCommand::Create {
        stream_id,
        partitions,
    };
    for c in [create(3, 2), create(3, 2)] {
        publ.offer(&c.encode()).unwrap();
    }
    publ.offer(b"garbage").unwrap();
    assert_eq!(streams.drain(STREAM_COMMANDS_PER_CYCLE_MAX), 3);
    assert_eq!(streams.bad_commands(), 1);
    assert_eq!(streams.dynamic_streams(), vec![(3, 2)]);
    assert!(path(3, 0).exists() && path(3, 1).exists());
    // A local SDK publisher and subscriber work on a ring made at run time.
    let ctx = sdk::Context::builder().dir(dir.path()).build();
    let mut sub = ctx.subscriber(3, 1);
    let mut p = ctx.publisher(3, 1).unwrap();
    let mut got = Vec::new();
    for _ in 0..1000 {
        let _ = p.offer(b"hello");
        sub.poll(|r| got.push(r.payload.to_vec()), 16).unwrap();
        if !got.is_empty() {
            break;
        }
    }
    assert_eq!(got[0], b"hello");
    drop((p, sub));
    publ.offer(&StreamCommand::Drop { stream_id: 3 }.encode())
        .unwrap();
    publ.offer(&StreamCommand::Drop { stream_id: 3 }.encode())
        .unwrap();
    assert_eq!(streams.drain(STREAM_COMMANDS_PER_CYCLE_MAX), 2);
    assert!(!path(3, 0).exists() && !path(3, 1).exists());
    assert!(streams.dynamic_streams().is_empty());
    // The node's own stream is opened, never removed by commands.
    let fixed = Ring::create(&sdk::ring_name(7, 0), &part_cfg_of(&streams)).unwrap();
    publ.offer(&create(7, 1).encode()).unwrap();
    publ.offer(&create(8, 1).encode()).unwrap();
    streams.drain(STREAM_COMMANDS_PER_CYCLE_MAX);
    publ.offer(&StreamCommand::Drop { stream_id: 7 }.encode())
        .unwrap();
    streams.drain(STREAM_COMMANDS_PER_CYCLE_MAX);
    assert!(path(7, 0).exists(), "configured ring kept");
    assert!(path(8, 0).exists());
    streams.close();
    assert!(
        !path(8, 0).exists(),
        "rings made at run time go with the node"
    );
    fixed.unlink().unwrap();
    ring.unlink().unwrap();
}

/// A ring an SDK client created smaller than a frame is not made live (clear error,
/// counted): the receiver never appends a remote record to it.
#[test]
fn a_ring_too_small_for_a_frame_is_not_attached() {
    let dir = tempfile::tempdir().unwrap();
    let (ring, part_cfg) = command_ring(dir.path());
    let streams = StreamRings::new(&ring, part_cfg, vec![(7, 0)]).unwrap();
    let ctx = sdk::Context::builder()
        .dir(dir.path())
        .capacity_bytes(shm_ring::RING_CAPACITY_MIN)
        .build();
    let _client = ctx.publisher(9, 0).unwrap();
    let t = conductor(dir.path(), settings(1_000_000, 5_000_000), 4);
    let (counters, receiver, sender) = (t.counters, t.receiver, t.sender);
    let mut c = t.conductor.with_stream_commands(streams);
    let create = StreamCommand::Create {
        stream_id: 9,
        partitions: 1,
    };
    ring.publisher().unwrap().offer(&create.encode()).unwrap();
    c.do_work(1);
    assert_eq!(counters.get(Counter::ConductorPartitionErrors), 1);
    assert_eq!(counters.get(Counter::ConductorPartitionsAdded), 0);
    assert!(
        receiver.is_empty() && sender.is_empty(),
        "no agent serves it"
    );
    ring.unlink().unwrap();
}

fn part_cfg_of(s: &StreamRings) -> RingConfig {
    s.ring_cfg.clone()
}
