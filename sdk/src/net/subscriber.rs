//! The remote subscriber: a sans-IO receiver core ([`ReceiverCore`]) and its
//! kernel UDP adapter ([`UdpSubscriber`]).
//!
//! The core accepts SETUP from publishers (one session per source, session id,
//! stream and partition, at most [`SESSIONS_MAX`]), delivers the records of each
//! session in order and exactly once, and answers with STATUS (acknowledged
//! offset and receive window) and NAK.
//!
//! To receive a partition from a node, [`UdpSubscriber::subscribe`] sends a
//! SETUP with `FLAG_SUBSCRIBE` to the node's data port (repeated every
//! [`SUBSCRIBE_RETRY_NS`] until the node's SETUP for that session id arrives);
//! the node then acts as the publisher of that session, from its sender port.
//! [`UdpSubscriber::subscribe_from`] names where to start (the SETUP body's
//! start kind and the header offset, see [`super::wire::SubscribeStart`]).
//!
//! Loss handling is go-back-N ([`LossDetector`], the node uses the same): a
//! DATA frame that starts after the next expected offset is dropped (counted)
//! and the receiver NAKs `[expected, highest end seen)` at once; the publisher
//! re-sends that range and the frames behind it follow in order. A HEARTBEAT
//! whose offset is ahead of `expected` reveals a lost tail the same way. A NAK
//! is repeated every `nak_retry_ns` while no progress is made.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Instant;

use abi::frame::{FrameHeader, FrameType};

use super::wire::{
    decode_setup, encode_nak, encode_subscribe, RecordBatch, StatusBody, SubscribeStart,
    FLAGS_KNOWN, FLAG_END_OF_SESSION, FLAG_REPLY_REQUESTED, FLAG_SETUP_ACK, FLAG_SUBSCRIBE,
    HEADER_BYTES, PRINCIPAL_BYTES_MAX,
};
use super::{LossDetector, NetConfigError, FRAME_RECV_BYTES};

/// Publisher sessions one receiver tracks at once.
pub const SESSIONS_MAX: usize = 16;
/// Default receive window announced in STATUS.
pub const WINDOW_BYTES_DEFAULT: u32 = 1 << 20;
pub const WINDOW_BYTES_MIN: u32 = 16 * 1024;
/// Default interval between unsolicited STATUS frames of an active session.
pub const STATUS_INTERVAL_NS_DEFAULT: u64 = 5_000_000;
/// Default delay before a NAK that brought no progress is repeated.
pub const NAK_RETRY_NS_DEFAULT: u64 = 2_000_000;
/// Datagrams one `UdpSubscriber::poll` receives at most per call is its
/// `frames_max` argument, capped by this.
pub const RECV_BATCH_MAX: usize = 256;

/// Subscriptions one `UdpSubscriber` asks nodes for.
pub const SUBSCRIPTIONS_MAX: usize = 16;
/// Interval between SUBSCRIBE requests until the node's SETUP arrives.
pub const SUBSCRIBE_RETRY_NS: u64 = 100_000_000;

const _: () = assert!(WINDOW_BYTES_MIN <= WINDOW_BYTES_DEFAULT);
const _: () = assert!(SUBSCRIPTIONS_MAX <= SESSIONS_MAX);

/// How a receiver acknowledges.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    pub window_bytes: u32,
    pub status_interval_ns: u64,
    pub nak_retry_ns: u64,
    /// Sent in STATUS so a publisher can tell receivers apart.
    pub receiver_id: u64,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            window_bytes: WINDOW_BYTES_DEFAULT,
            status_interval_ns: STATUS_INTERVAL_NS_DEFAULT,
            nak_retry_ns: NAK_RETRY_NS_DEFAULT,
            receiver_id: 1,
        }
    }
}

impl ReceiverConfig {
    pub fn validate(&self) -> Result<(), NetConfigError> {
        if self.window_bytes < WINDOW_BYTES_MIN {
            return Err(NetConfigError::WindowBytes {
                value: self.window_bytes,
                min: WINDOW_BYTES_MIN,
            });
        }
        for (name, value) in [
            ("status_interval_ns", self.status_interval_ns),
            ("nak_retry_ns", self.nak_retry_ns),
        ] {
            if value == 0 {
                return Err(NetConfigError::ZeroInterval { name });
            }
        }
        Ok(())
    }
}

/// One delivered record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetRecord<'a> {
    pub src: SocketAddr,
    pub stream_id: u32,
    pub partition: u16,
    pub session_id: u32,
    pub offset: u64,
    pub record_type: u16,
    pub payload: &'a [u8],
}

/// Counters of a receiver; every dropped frame lands in exactly one of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub frames_received: u64,
    pub records_delivered: u64,
    /// Header failed `FrameHeader::decode` (magic, version, type, length, CRC).
    pub drop_bad_header: u64,
    /// Unknown flag bits, bad body size or records that fail validation.
    pub drop_bad_body: u64,
    /// DATA/HEARTBEAT for a session without SETUP, or an unexpected frame type.
    pub drop_unknown_session: u64,
    /// Epoch older than the session's.
    pub drop_stale_epoch: u64,
    /// Already delivered (retransmitted or duplicated).
    pub drop_duplicate: u64,
    /// Ahead of the next expected offset (a gap): NAKed.
    pub drop_out_of_order: u64,
    /// SETUP refused because SESSIONS_MAX sessions are active.
    pub drop_sessions_full: u64,
    pub naks_sent: u64,
    pub status_sent: u64,
}

#[derive(Clone, Copy, Debug)]
struct Session {
    src: SocketAddr,
    stream_id: u32,
    partition: u16,
    session_id: u32,
    epoch: u32,
    loss: LossDetector,
    last_status_ns: u64,
    status_offset_sent: u64,
    status_due: bool,
    setup_ack_due: bool,
    ended: bool,
    last_heard_ns: u64,
}

/// The sans-IO receiver.
pub struct ReceiverCore {
    cfg: ReceiverConfig,
    sessions: [Option<Session>; SESSIONS_MAX],
    stats: ReceiverStats,
    cursor: usize,
}

impl ReceiverCore {
    pub fn new(cfg: ReceiverConfig) -> Result<Self, NetConfigError> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            sessions: [None; SESSIONS_MAX],
            stats: ReceiverStats::default(),
            cursor: 0,
        })
    }

    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// Next expected offset of a session, if it is known.
    pub fn expected_offset(&self, session_id: u32) -> Option<u64> {
        self.sessions
            .iter()
            .flatten()
            .find(|s| s.session_id == session_id)
            .map(|s| s.loss.expected())
    }

    /// True when the session announced END_OF_SESSION and everything was delivered.
    pub fn is_ended(&self, session_id: u32) -> bool {
        self.sessions
            .iter()
            .flatten()
            .any(|s| s.session_id == session_id && s.ended)
    }

    fn find(&self, src: SocketAddr, h: &FrameHeader) -> Option<usize> {
        self.sessions.iter().position(|s| {
            s.as_ref().is_some_and(|s| {
                s.src == src
                    && s.session_id == h.session_id
                    && s.stream_id == h.stream_id
                    && s.partition == h.partition
            })
        })
    }

    /// Processes one datagram from `src`; delivers in-order records to
    /// `deliver` and returns how many.
    pub fn handle(
        &mut self,
        now_ns: u64,
        src: SocketAddr,
        datagram: &[u8],
        deliver: &mut impl FnMut(&NetRecord<'_>),
    ) -> usize {
        self.stats.frames_received += 1;
        let Ok(h) = FrameHeader::decode(datagram) else {
            self.stats.drop_bad_header += 1;
            return 0;
        };
        if h.flags & !FLAGS_KNOWN != 0 {
            self.stats.drop_bad_body += 1;
            return 0;
        }
        let body = &datagram[HEADER_BYTES..];
        if h.frame_type == FrameType::Setup {
            self.handle_setup(now_ns, src, &h, body);
            return 0;
        }
        let Some(slot) = self.find(src, &h) else {
            self.stats.drop_unknown_session += 1;
            return 0;
        };
        let s = self.sessions[slot].as_mut().expect("found");
        if h.epoch < s.epoch {
            self.stats.drop_stale_epoch += 1;
            return 0;
        }
        if h.epoch > s.epoch {
            // A newer incarnation must SETUP first.
            self.stats.drop_unknown_session += 1;
            return 0;
        }
        s.last_heard_ns = now_ns;
        if h.flags & FLAG_REPLY_REQUESTED != 0 {
            s.status_due = true;
        }
        match h.frame_type {
            FrameType::Data => {
                let Ok(batch) = RecordBatch::parse(body, h.offset) else {
                    self.stats.drop_bad_body += 1;
                    return 0;
                };
                let end = batch.end_offset();
                if end <= s.loss.expected() {
                    self.stats.drop_duplicate += 1;
                    s.status_due = true;
                    return 0;
                }
                if h.offset > s.loss.expected() {
                    self.stats.drop_out_of_order += 1;
                    s.loss.on_gap(end, now_ns);
                    return 0;
                }
                // offset <= expected < end: a record must start at `expected`.
                let expected = s.loss.expected();
                if !batch.iter().any(|r| r.offset == expected) {
                    self.stats.drop_bad_body += 1;
                    return 0;
                }
                let mut delivered = 0;
                let session = *s;
                for r in batch.iter().filter(|r| r.offset >= expected) {
                    delivered += 1;
                    deliver(&NetRecord {
                        src,
                        stream_id: session.stream_id,
                        partition: session.partition,
                        session_id: session.session_id,
                        offset: r.offset,
                        record_type: r.record_type,
                        payload: r.payload,
                    });
                }
                let s = self.sessions[slot].as_mut().expect("found");
                s.loss.on_progress(end, now_ns);
                if h.flags & FLAG_END_OF_SESSION != 0 {
                    s.ended = true;
                    s.status_due = true;
                }
                if s.loss.expected() - s.status_offset_sent >= u64::from(self.cfg.window_bytes / 4)
                {
                    s.status_due = true;
                }
                self.stats.records_delivered += delivered;
                delivered as usize
            }
            FrameType::Heartbeat => {
                if !body.is_empty() {
                    self.stats.drop_bad_body += 1;
                    return 0;
                }
                s.loss.on_gap(h.offset, now_ns);
                if h.flags & FLAG_END_OF_SESSION != 0 && h.offset == s.loss.expected() {
                    s.ended = true;
                    s.status_due = true;
                }
                0
            }
            FrameType::Status
            | FrameType::Nak
            | FrameType::Setup
            | FrameType::Fetch
            | FrameType::Report => {
                self.stats.drop_unknown_session += 1;
                0
            }
        }
    }

    fn handle_setup(&mut self, now_ns: u64, src: SocketAddr, h: &FrameHeader, body: &[u8]) {
        if decode_setup(body).is_none() || !h.offset.is_multiple_of(8) {
            self.stats.drop_bad_body += 1;
            return;
        }
        let fresh = Session {
            src,
            stream_id: h.stream_id,
            partition: h.partition,
            session_id: h.session_id,
            epoch: h.epoch,
            // NAK a gap at once (no reordering delay): the publisher is one hop away or a node.
            loss: LossDetector::new(h.offset, 0, self.cfg.nak_retry_ns),
            last_status_ns: now_ns,
            status_offset_sent: h.offset,
            status_due: false,
            setup_ack_due: true,
            ended: false,
            last_heard_ns: now_ns,
        };
        if let Some(slot) = self.find(src, h) {
            let s = self.sessions[slot].as_mut().expect("found");
            if h.epoch < s.epoch {
                self.stats.drop_stale_epoch += 1;
            } else if h.epoch > s.epoch {
                *s = fresh;
            } else {
                // Same incarnation set up again (lost ack or publisher
                // re-setup): keep our position, acknowledge it.
                s.setup_ack_due = true;
                s.ended = false;
                s.last_heard_ns = now_ns;
            }
            return;
        }
        let free = self.sessions.iter().position(Option::is_none).or_else(|| {
            self.sessions
                .iter()
                .position(|s| s.as_ref().is_some_and(|s| s.ended))
        });
        match free {
            Some(slot) => self.sessions[slot] = Some(fresh),
            None => self.stats.drop_sessions_full += 1,
        }
    }

    /// Writes the next control frame (STATUS or NAK) into `out` and returns its
    /// destination, or None when nothing is due.
    pub fn poll_transmit(&mut self, now_ns: u64, out: &mut Vec<u8>) -> Option<SocketAddr> {
        for i in 0..SESSIONS_MAX {
            let slot = (self.cursor + i) % SESSIONS_MAX;
            let Some(s) = self.sessions[slot].as_mut() else {
                continue;
            };
            let header = |frame_type, flags, offset| FrameHeader {
                frame_type,
                flags,
                stream_id: s.stream_id,
                partition: s.partition,
                session_id: s.session_id,
                offset,
                epoch: s.epoch,
            };
            if let Some((offset, len)) = s.loss.poll_nak(now_ns) {
                header(FrameType::Nak, 0, offset)
                    .encode(&encode_nak(len), out)
                    .expect("NAK fits");
                self.stats.naks_sent += 1;
                self.cursor = slot + 1;
                return Some(s.src);
            }
            let periodic =
                !s.ended && now_ns.saturating_sub(s.last_status_ns) >= self.cfg.status_interval_ns;
            if s.setup_ack_due || s.status_due || periodic {
                let flags = if s.setup_ack_due { FLAG_SETUP_ACK } else { 0 };
                s.setup_ack_due = false;
                s.status_due = false;
                s.last_status_ns = now_ns;
                s.status_offset_sent = s.loss.expected();
                let body = StatusBody {
                    durable_offset: 0,
                    window_bytes: self.cfg.window_bytes,
                    receiver_id: self.cfg.receiver_id,
                };
                header(FrameType::Status, flags, s.loss.expected())
                    .encode(&body.encode(), out)
                    .expect("STATUS fits");
                self.stats.status_sent += 1;
                self.cursor = slot + 1;
                return Some(s.src);
            }
        }
        None
    }
}

/// Why a subscription was not registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetSubscribeError {
    #[error(
        "already {SUBSCRIPTIONS_MAX} subscriptions on this subscriber: use another UdpSubscriber"
    )]
    Full,
    #[error("principal must be 1..=255 bytes of UTF-8, got {len} bytes")]
    Principal { len: usize },
}

/// A partition asked from a node, until the node's SETUP arrives.
struct Subscription {
    node: SocketAddr,
    header: FrameHeader,
    body: Vec<u8>,
    next_send_ns: u64,
}

/// Why a UDP subscriber could not start.
#[derive(Debug, thiserror::Error)]
pub enum UdpSubscriberCreateError {
    #[error(transparent)]
    Config(#[from] NetConfigError),
    #[error("cannot bind a UDP socket to {addr}: {source} (choose a free local address/port)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// A [`ReceiverCore`] over a non-blocking kernel UDP socket: publishers send
/// SETUP and DATA to its address.
pub struct UdpSubscriber {
    core: ReceiverCore,
    subscriptions: Vec<Subscription>,
    socket: UdpSocket,
    clock: Instant,
    rx: Vec<u8>,
    tx: Vec<u8>,
    send_errors: u64,
}

impl UdpSubscriber {
    pub fn bind(local: SocketAddr, cfg: ReceiverConfig) -> Result<Self, UdpSubscriberCreateError> {
        let core = ReceiverCore::new(cfg)?;
        let socket = UdpSocket::bind(local).map_err(|source| UdpSubscriberCreateError::Bind {
            addr: local,
            source,
        })?;
        socket
            .set_nonblocking(true)
            .map_err(|source| UdpSubscriberCreateError::Bind {
                addr: local,
                source,
            })?;
        Ok(Self {
            core,
            subscriptions: Vec::with_capacity(SUBSCRIPTIONS_MAX),
            socket,
            clock: Instant::now(),
            rx: vec![0; FRAME_RECV_BYTES],
            tx: Vec::with_capacity(FRAME_RECV_BYTES),
            send_errors: 0,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
    pub fn core(&self) -> &ReceiverCore {
        &self.core
    }
    pub fn stats(&self) -> ReceiverStats {
        self.core.stats()
    }
    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }

    /// Asks the node whose data port is `node` for (stream, partition): the
    /// node becomes the publisher of session `session_id` toward this socket.
    /// The request is repeated by `poll` until the node's SETUP arrives.
    pub fn subscribe(
        &mut self,
        node: SocketAddr,
        stream_id: u32,
        partition: u16,
        session_id: u32,
        principal: &str,
    ) -> Result<(), NetSubscribeError> {
        self.subscribe_from(
            node,
            stream_id,
            partition,
            session_id,
            principal,
            SubscribeStart::Latest,
        )
    }

    /// Like [`UdpSubscriber::subscribe`], starting at `start`: the node serves records older
    /// than its ring from its storage, then continues live without a gap or a duplicate
    /// (docs/protocol.md, "Remote subscribers").
    pub fn subscribe_from(
        &mut self,
        node: SocketAddr,
        stream_id: u32,
        partition: u16,
        session_id: u32,
        principal: &str,
        start: SubscribeStart,
    ) -> Result<(), NetSubscribeError> {
        if !(1..=PRINCIPAL_BYTES_MAX).contains(&principal.len()) {
            return Err(NetSubscribeError::Principal {
                len: principal.len(),
            });
        }
        if self.subscriptions.len() == SUBSCRIPTIONS_MAX {
            return Err(NetSubscribeError::Full);
        }
        let mut body = Vec::new();
        let offset = encode_subscribe(
            abi::frame_consts::FRAME_BYTES_MTU1500_IPV4,
            principal,
            start,
            &mut body,
        );
        self.subscriptions.push(Subscription {
            node,
            header: FrameHeader {
                frame_type: FrameType::Setup,
                flags: FLAG_SUBSCRIBE,
                stream_id,
                partition,
                session_id,
                offset,
                epoch: 0,
            },
            body,
            next_send_ns: 0,
        });
        Ok(())
    }

    /// True once the node's SETUP for a subscription's session arrived.
    pub fn is_subscribed(&self, session_id: u32) -> bool {
        self.core.expected_offset(session_id).is_some()
    }

    /// One duty cycle: receives up to `frames_max` datagrams (capped by
    /// RECV_BATCH_MAX), delivers records in order, sends due STATUS/NAK.
    /// Returns records delivered.
    pub fn poll(&mut self, mut deliver: impl FnMut(&NetRecord<'_>), frames_max: usize) -> usize {
        let mut delivered = 0;
        for _ in 0..frames_max.min(RECV_BATCH_MAX) {
            match self.socket.recv_from(&mut self.rx) {
                Ok((n, src)) => {
                    let now = self.clock.elapsed().as_nanos() as u64;
                    delivered += self.core.handle(now, src, &self.rx[..n], &mut deliver);
                }
                Err(_) => break,
            }
        }
        let now = self.clock.elapsed().as_nanos() as u64;
        for sub in &mut self.subscriptions {
            if now < sub.next_send_ns || self.core.expected_offset(sub.header.session_id).is_some()
            {
                continue;
            }
            sub.next_send_ns = now + SUBSCRIBE_RETRY_NS;
            if sub.header.encode(&sub.body, &mut self.tx).is_err()
                || self.socket.send_to(&self.tx, sub.node).is_err()
            {
                self.send_errors += 1;
            }
        }
        for _ in 0..SESSIONS_MAX * 2 {
            let now = self.clock.elapsed().as_nanos() as u64;
            let Some(dst) = self.core.poll_transmit(now, &mut self.tx) else {
                break;
            };
            if self.socket.send_to(&self.tx, dst).is_err() {
                self.send_errors += 1;
            }
        }
        delivered
    }
}
