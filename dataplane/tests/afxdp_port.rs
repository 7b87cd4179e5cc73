//! The AF_XDP backend on a real veth pair with the real XDP program: a remote
//! `sdk::net::UdpPublisher` (peer namespace) sends to an `XskPort` (node
//! namespace) whose frames are handled by `sdk::net::ReceiverCore`; STATUS and
//! NAK go back out through the port's TX ring. Needs root; addresses from
//! 198.18.0.0/15 only; everything is removed on drop.

use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use dataplane::net::afxdp::{XskConfig, XskPort};
use dataplane::testnet::TestNet;
use sdk::net::{NetOfferError, PublisherConfig, ReceiverConfig, ReceiverCore, UdpPublisher};
use xdp_programs::abi_consts::CONFIG_FLAG_DEFAULT_ALLOW;
use xdp_programs::{AttachMode, Config, Verdict, XdpProgram};

const PORT: u16 = 7447;
const WAIT_MAX: Duration = Duration::from_secs(30);
const RECORDS: u64 = 20_000;

/// What root is for here; with `ip`, all these tests need (`testkit::require!`).
const NEEDS: &str = "netns, XDP, AF_XDP";

fn payload(i: u64) -> Vec<u8> {
    let mut p = vec![(i % 251) as u8; 16 + (i % 64) as usize];
    p[..8].copy_from_slice(&i.to_le_bytes());
    p
}

#[test]
fn remote_publisher_to_afxdp_port_in_order_exactly_once() {
    testkit::require!(testkit::netns(NEEDS));
    let net = TestNet::create("msd-xsk", 201).expect("test network");
    let node = SocketAddrV4::new(net.node_ip, PORT);
    let node_if = net.node_if.clone();
    let receiver = TestNet::spawn_in(&net.node_ns, move || {
        let config = Config {
            data_port: PORT,
            reserved: 0,
            flags: CONFIG_FLAG_DEFAULT_ALLOW,
        };
        let xdp =
            XdpProgram::load_and_attach(&node_if, AttachMode::Native, config).expect("attach XDP");
        let mut cfg = XskConfig::new(&node_if, node);
        cfg.frames_per_queue = 4096;
        let mut port = XskPort::open(&cfg).expect("AF_XDP port");
        let describe = port.describe();
        let mut core = ReceiverCore::new(ReceiverConfig::default()).expect("config");
        let clock = Instant::now();
        let mut got: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut frame = Vec::new();
        let deadline = Instant::now() + WAIT_MAX;
        while Instant::now() < deadline && !core.is_ended(5) {
            let now = clock.elapsed().as_nanos() as u64;
            port.poll_rx(64, &mut |src, bytes| {
                core.handle(now, src, bytes, &mut |r| {
                    got.push((r.offset, r.payload.to_vec()))
                });
            });
            while let Some(dst) = core.poll_transmit(now, &mut frame) {
                assert!(port.send(dst, &frame), "TX frame available");
            }
            port.flush_tx();
        }
        let counters = xdp.maps().expect("maps").counters().expect("counters");
        (got, describe, port.stats(), port.xsk_stats(), counters)
    });
    let publisher = TestNet::spawn_in(&net.peer_ns, move || {
        let mut cfg = PublisherConfig::new(3, 0, 5, "tester");
        cfg.buffer_bytes = 1 << 20;
        let any: SocketAddr = "0.0.0.0:0".parse().expect("addr");
        let mut p = UdpPublisher::new(any, SocketAddr::V4(node), cfg).expect("publisher");
        let deadline = Instant::now() + WAIT_MAX;
        let mut offered = 0;
        while offered < RECORDS && Instant::now() < deadline {
            match p.offer(0, &payload(offered)) {
                Ok(_) => offered += 1,
                Err(NetOfferError::BackPressured) => {
                    p.do_work();
                }
                Err(e) => panic!("offer: {e}"),
            }
            if offered % 32 == 0 {
                p.do_work();
            }
        }
        let closed = p.close(WAIT_MAX);
        (offered, closed, p.session().stats())
    });
    let (offered, closed, pstats) = publisher
        .join()
        .expect("publisher thread")
        .expect("enter peer netns");
    let (got, describe, stats, xstats, counters) = receiver
        .join()
        .expect("receiver thread")
        .expect("enter node netns");
    assert_eq!(offered, RECORDS);
    assert!(
        closed,
        "publisher saw every record acknowledged: {pstats:?}"
    );
    assert_eq!(got.len() as u64, RECORDS, "{stats:?} {xstats:?}");
    let mut offset = 0;
    for (i, (o, bytes)) in got.iter().enumerate() {
        assert_eq!(*o, offset, "record {i}");
        assert_eq!(bytes, &payload(i as u64), "record {i}");
        offset += sdk::net::wire::record_bytes(bytes.len()) as u64;
    }
    // veth refuses zero-copy: the port must say it runs in copy mode and why.
    assert!(
        describe.contains("copy-mode (zero-copy refused"),
        "{describe}"
    );
    // Every frame the port received was redirected by XDP into its socket.
    assert!(
        counters.get(Verdict::Redirect) >= stats.rx_datagrams,
        "{counters:?}"
    );
    assert!(stats.tx_datagrams > 0, "STATUS went out through AF_XDP TX");
}

#[test]
fn two_rx_queues_each_get_a_socket_and_traffic() {
    testkit::require!(testkit::netns(NEEDS));
    let net = TestNet::create_with_queues("msd-xq", 209, 2).expect("test network");
    let node = SocketAddrV4::new(net.node_ip, PORT);
    let node_if = net.node_if.clone();
    const FLOWS: u16 = 32;
    const PER_FLOW: usize = 4;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = TestNet::spawn_in(&net.node_ns, move || {
        let config = Config {
            data_port: PORT,
            reserved: 0,
            flags: CONFIG_FLAG_DEFAULT_ALLOW,
        };
        let _xdp =
            XdpProgram::load_and_attach(&node_if, AttachMode::Native, config).expect("attach XDP");
        let mut cfg = XskConfig::new(&node_if, node);
        cfg.queues = 2;
        cfg.frames_per_queue = 2048;
        let mut port = XskPort::open(&cfg).expect("AF_XDP port on 2 queues");
        ready_tx.send(()).expect("test alive");
        let mut sources = std::collections::BTreeSet::new();
        let deadline = Instant::now() + WAIT_MAX;
        let mut got = 0;
        while got < usize::from(FLOWS) * PER_FLOW && Instant::now() < deadline {
            got += port.poll_rx(64, &mut |src, bytes| {
                assert!(xdp_programs::frame::FrameHeader::decode(bytes).is_ok());
                sources.insert(src);
            });
        }
        (
            got,
            sources.len(),
            port.rx_frames_per_queue(),
            port.describe(),
        )
    });
    ready_rx.recv_timeout(WAIT_MAX).expect("port ready");
    let peer_ip = net.peer_ip;
    TestNet::spawn_in(&net.peer_ns, move || {
        let mut frame = Vec::new();
        xdp_programs::frame::FrameHeader {
            frame_type: xdp_programs::frame::FrameType::Heartbeat,
            flags: 0,
            stream_id: 3,
            partition: 0,
            session_id: 1,
            offset: 0,
            epoch: 0,
        }
        .encode(&[], &mut frame)
        .expect("fits");
        // One socket per flow: the sending veth hashes each flow to a TX queue,
        // which is the RX queue it arrives on at the other end.
        let sockets: Vec<std::net::UdpSocket> = (0..FLOWS)
            .map(|_| std::net::UdpSocket::bind(SocketAddrV4::new(peer_ip, 0)).expect("bind"))
            .collect();
        for _ in 0..PER_FLOW {
            for s in &sockets {
                s.send_to(&frame, node).expect("send");
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    })
    .join()
    .expect("sender thread")
    .expect("enter peer netns");
    let (got, flows, per_queue, describe) = receiver
        .join()
        .expect("receiver thread")
        .expect("enter node netns");
    assert_eq!(got, usize::from(FLOWS) * PER_FLOW, "{describe}");
    assert_eq!(flows, usize::from(FLOWS));
    assert_eq!(per_queue.len(), 2);
    assert!(
        per_queue.iter().all(|&n| n > 0),
        "both RX queues delivered frames: {per_queue:?}"
    );
}
