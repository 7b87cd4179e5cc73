//! The remote publisher: a sans-IO session ([`PublisherSession`]) and its
//! kernel UDP adapter ([`UdpPublisher`]).
//!
//! The session keeps the bytes of every record from the last acknowledged
//! position to the last offered one in a power-of-two byte ring (the
//! retransmit buffer, like an Aeron term buffer), laid out exactly as the
//! records travel in DATA bodies. New DATA frames and retransmissions are both
//! cut from that ring at record boundaries, so a retransmission may group
//! records differently from the original frames.
//!
//! ```text
//!   released            sent                 end
//!      |  sent, unacked   |  offered, unsent   |   free  ...
//!      +------------------+--------------------+------------
//!      <------------ at most buffer_bytes ---------------->
//!   STATUS.offset moves `released` (record by record, so it stays a boundary);
//!   STATUS.offset + window_bytes caps what DATA may cover (flow control);
//!   a NAK [offset, offset + len) re-sends the records that overlap it.
//! ```

use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use abi::frame::{FrameHeader, FrameType};

use super::wire::{
    self, decode_nak, encode_setup, payload_bytes_max, record_bytes, StatusBody, FLAGS_KNOWN,
    FLAG_END_OF_SESSION, FLAG_REPLY_REQUESTED, FLAG_RETRANSMIT, FLAG_SETUP_ACK, FRAME_BYTES_MIN,
    HEADER_BYTES, PRINCIPAL_BYTES_MAX, RECORD_PAYLOAD_OFFSET, SETUP_BODY_BYTES_MAX,
};
use super::{NetConfigError, FRAME_RECV_BYTES};

/// Smallest and largest retransmit buffer.
pub const BUFFER_BYTES_MIN: usize = 64 * 1024;
pub const BUFFER_BYTES_MAX: usize = 1 << 30;
/// Default retransmit buffer: 4 MiB.
pub const BUFFER_BYTES_DEFAULT: usize = 4 << 20;
/// Default interval between heartbeats when no DATA was sent.
pub const HEARTBEAT_INTERVAL_NS_DEFAULT: u64 = 10_000_000;
/// Default interval between SETUP attempts until the node acknowledges.
pub const SETUP_RETRY_NS_DEFAULT: u64 = 50_000_000;
/// Default time without any STATUS after which the session is set up again
/// (the node restarted or lost it).
pub const STATUS_TIMEOUT_NS_DEFAULT: u64 = 2_000_000_000;
/// Datagrams one `UdpPublisher::do_work` receives at most.
pub const RECV_BATCH_MAX: usize = 64;
/// Frames one `UdpPublisher::do_work` sends at most.
pub const SEND_BATCH_MAX: usize = 64;

const _: () = assert!(BUFFER_BYTES_MIN.is_power_of_two() && BUFFER_BYTES_MAX.is_power_of_two());
const _: () = assert!(BUFFER_BYTES_DEFAULT >= BUFFER_BYTES_MIN);
const _: () = assert!(BUFFER_BYTES_DEFAULT <= BUFFER_BYTES_MAX);
const _: () = assert!(BUFFER_BYTES_MIN >= abi::frame_consts::FRAME_BYTES_MAX as usize);

/// What a remote publisher sends and how.
#[derive(Clone, Debug)]
pub struct PublisherConfig {
    pub stream_id: u32,
    pub partition: u16,
    /// Unique per (stream, partition) at the node.
    pub session_id: u32,
    /// Increment when the same session id starts again.
    pub epoch: u32,
    /// Principal named in SETUP (1..=255 bytes).
    pub principal: String,
    /// Largest frame to send (from the path MTU): 1472 for a 1500-byte MTU over IPv4.
    pub frame_bytes: usize,
    /// Retransmit buffer, a power of two in BUFFER_BYTES_MIN..=BUFFER_BYTES_MAX.
    pub buffer_bytes: usize,
    pub heartbeat_interval_ns: u64,
    pub setup_retry_ns: u64,
    pub status_timeout_ns: u64,
    /// Offset of the session's first record (normally 0).
    pub initial_offset: u64,
    /// When records leave the retransmit buffer: once the node has them
    /// ([`Release::Consumed`], the default), or once the node reports them on
    /// its storage ([`Release::Durable`]: the node's disk, or, for a
    /// replicated partition whose default ack mode is `all`, the partition's
    /// high watermark: every in-sync replica holds it; #11).
    pub release: Release,
}

/// When the publisher forgets a record (frees its bytes in the retransmit
/// buffer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Release {
    /// At the STATUS consumed offset: the record is in the node's ring. A node
    /// crash can lose records that were not yet archived.
    #[default]
    Consumed,
    /// At the STATUS durable offset: the record is on the node's storage, so a
    /// node crash loses nothing this publisher still could resend. For an
    /// unreplicated partition this is one node's disk, like Kafka's `acks=1`
    /// with a flushed leader; for a replicated partition whose default ack mode
    /// is `all`, the leader's durable offset is also held at the partition's
    /// high watermark (every in-sync replica holds the record). Use only
    /// with nodes that archive the stream; otherwise the durable offset never
    /// moves and `offer` stays back-pressured once the buffer is full.
    Durable,
}

impl PublisherConfig {
    pub fn new(stream_id: u32, partition: u16, session_id: u32, principal: &str) -> Self {
        Self {
            stream_id,
            partition,
            session_id,
            epoch: 0,
            principal: principal.to_string(),
            frame_bytes: abi::frame_consts::FRAME_BYTES_MTU1500_IPV4 as usize,
            buffer_bytes: BUFFER_BYTES_DEFAULT,
            heartbeat_interval_ns: HEARTBEAT_INTERVAL_NS_DEFAULT,
            setup_retry_ns: SETUP_RETRY_NS_DEFAULT,
            status_timeout_ns: STATUS_TIMEOUT_NS_DEFAULT,
            initial_offset: 0,
            release: Release::Consumed,
        }
    }

    pub fn validate(&self) -> Result<(), NetConfigError> {
        let frame_max = abi::frame_consts::FRAME_BYTES_MAX as usize;
        if !(FRAME_BYTES_MIN..=frame_max).contains(&self.frame_bytes)
            || !self.frame_bytes.is_multiple_of(8)
        {
            return Err(NetConfigError::FrameBytes {
                value: self.frame_bytes,
                min: FRAME_BYTES_MIN,
                max: frame_max,
            });
        }
        if self.frame_bytes < HEADER_BYTES + SETUP_BODY_BYTES_MAX {
            return Err(NetConfigError::FrameBytes {
                value: self.frame_bytes,
                min: HEADER_BYTES + SETUP_BODY_BYTES_MAX,
                max: frame_max,
            });
        }
        if !self.buffer_bytes.is_power_of_two()
            || !(BUFFER_BYTES_MIN..=BUFFER_BYTES_MAX).contains(&self.buffer_bytes)
        {
            return Err(NetConfigError::BufferBytes {
                value: self.buffer_bytes,
                min: BUFFER_BYTES_MIN,
                max: BUFFER_BYTES_MAX,
            });
        }
        if !(1..=PRINCIPAL_BYTES_MAX).contains(&self.principal.len()) {
            return Err(NetConfigError::Principal {
                len: self.principal.len(),
            });
        }
        if !self.initial_offset.is_multiple_of(8) {
            return Err(NetConfigError::InitialOffset {
                value: self.initial_offset,
            });
        }
        for (name, value) in [
            ("heartbeat_interval_ns", self.heartbeat_interval_ns),
            ("setup_retry_ns", self.setup_retry_ns),
            ("status_timeout_ns", self.status_timeout_ns),
        ] {
            if value == 0 {
                return Err(NetConfigError::ZeroInterval { name });
            }
        }
        Ok(())
    }
}

/// Why `offer` did not take a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetOfferError {
    #[error("payload of {len} bytes exceeds {max} for the configured frame size: split it or raise frame_bytes")]
    TooLarge { len: usize, max: usize },
    #[error("retransmit buffer full until the receiver acknowledges: poll and retry")]
    BackPressured,
    #[error("the session was closed")]
    Closed,
    /// The node refused the record at session offset `offset` (it is larger than the
    /// partition's ring takes) and ended the session (STATUS with END_OF_SESSION).
    #[error("the node refused the record at session offset {offset} (larger than the partition's ring takes) and ended the session: send smaller records or recreate the partition's ring larger")]
    Refused { offset: u64 },
}

/// Counters of one publisher session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublisherStats {
    pub data_frames: u64,
    pub retransmit_frames: u64,
    pub heartbeats: u64,
    pub setups: u64,
    pub status_received: u64,
    pub naks_received: u64,
    /// NAKs for bytes already released or never sent (not served).
    pub naks_ignored: u64,
    /// Frames that failed validation or were not for this session.
    pub frames_dropped: u64,
    pub back_pressured: u64,
    /// Times the session was set up again after STATUS stopped.
    pub resetups: u64,
}

/// The sans-IO publisher: feed it received frames with [`handle`](Self::handle),
/// take frames to send from [`poll_transmit`](Self::poll_transmit).
pub struct PublisherSession {
    cfg: PublisherConfig,
    buf: Vec<u8>,
    mask: u64,
    released: u64,
    /// Highest durable offset the node reported (never beyond `sent`).
    durable: u64,
    sent: u64,
    end: u64,
    window_limit: u64,
    connected: bool,
    closing: bool,
    end_announced: bool,
    /// The node refused the record at this offset and ended the session.
    refused: Option<u64>,
    setup_next_ns: u64,
    last_send_ns: u64,
    last_status_ns: u64,
    retransmit: Option<(u64, u64)>,
    reply_requested: bool,
    body: Vec<u8>,
    stats: PublisherStats,
}

impl PublisherSession {
    pub fn new(cfg: PublisherConfig) -> Result<Self, NetConfigError> {
        cfg.validate()?;
        let start = cfg.initial_offset;
        Ok(Self {
            buf: vec![0; cfg.buffer_bytes],
            mask: cfg.buffer_bytes as u64 - 1,
            released: start,
            durable: start,
            sent: start,
            end: start,
            window_limit: start,
            connected: false,
            closing: false,
            end_announced: false,
            refused: None,
            setup_next_ns: 0,
            last_send_ns: 0,
            last_status_ns: 0,
            retransmit: None,
            reply_requested: false,
            body: Vec::with_capacity(cfg.frame_bytes),
            stats: PublisherStats::default(),
            cfg,
        })
    }

    pub fn config(&self) -> &PublisherConfig {
        &self.cfg
    }
    pub fn stats(&self) -> PublisherStats {
        self.stats
    }
    /// True once the receiver acknowledged the SETUP.
    pub fn is_connected(&self) -> bool {
        self.connected
    }
    /// Offset the next offered record gets.
    pub fn end_offset(&self) -> u64 {
        self.end
    }
    /// Every byte below this was acknowledged by the receiver.
    pub fn acked_offset(&self) -> u64 {
        self.released
    }

    /// Every record below this offset is on the node's storage (STATUS
    /// durable offset): an application may acknowledge those to its users.
    pub fn durable_offset(&self) -> u64 {
        self.durable
    }

    /// Largest payload `offer` accepts.
    pub fn payload_bytes_max(&self) -> usize {
        payload_bytes_max(self.cfg.frame_bytes)
    }
    /// True when everything offered was acknowledged.
    pub fn is_drained(&self) -> bool {
        self.released == self.end
    }

    /// Copies one record into the retransmit buffer; it goes out with the next
    /// `poll_transmit` that the flow-control window allows. Returns its offset.
    pub fn offer(&mut self, record_type: u16, payload: &[u8]) -> Result<u64, NetOfferError> {
        if let Some(offset) = self.refused {
            return Err(NetOfferError::Refused { offset });
        }
        if self.closing {
            return Err(NetOfferError::Closed);
        }
        let max = self.payload_bytes_max();
        if payload.len() > max {
            return Err(NetOfferError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        let bytes = record_bytes(payload.len()) as u64;
        if self.end + bytes - self.released > self.buf.len() as u64 {
            self.stats.back_pressured += 1;
            return Err(NetOfferError::BackPressured);
        }
        let at = self.end;
        let mut header = [0u8; RECORD_PAYLOAD_OFFSET];
        header[wire::RECORD_PAYLOAD_LEN_OFFSET..][..4]
            .copy_from_slice(&(payload.len() as u32).to_le_bytes());
        header[wire::RECORD_TYPE_OFFSET..][..2].copy_from_slice(&record_type.to_le_bytes());
        self.write_ring(at, &header);
        self.write_ring(at + RECORD_PAYLOAD_OFFSET as u64, payload);
        let pad = bytes as usize - RECORD_PAYLOAD_OFFSET - payload.len();
        self.write_ring(
            at + (RECORD_PAYLOAD_OFFSET + payload.len()) as u64,
            &[0u8; 8][..pad],
        );
        self.end += bytes;
        Ok(at)
    }

    /// Stops taking records; after everything is acknowledged the next
    /// heartbeat carries END_OF_SESSION.
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// True after the END_OF_SESSION heartbeat went out, or once the node refused the session.
    pub fn is_closed(&self) -> bool {
        self.end_announced || self.refused.is_some()
    }

    /// The session offset of the record the node refused (it ended the session), if it did.
    pub fn refused_at(&self) -> Option<u64> {
        self.refused
    }

    fn write_ring(&mut self, at: u64, bytes: &[u8]) {
        let pos = (at & self.mask) as usize;
        let first = bytes.len().min(self.buf.len() - pos);
        self.buf[pos..pos + first].copy_from_slice(&bytes[..first]);
        self.buf[..bytes.len() - first].copy_from_slice(&bytes[first..]);
    }

    fn read_ring_into_body(&mut self, at: u64, len: usize) {
        let pos = (at & self.mask) as usize;
        let first = len.min(self.buf.len() - pos);
        self.body.extend_from_slice(&self.buf[pos..pos + first]);
        self.body.extend_from_slice(&self.buf[..len - first]);
    }

    /// Bytes of the record that starts at `at` (which must be a boundary in [released, end)).
    fn record_bytes_at(&self, at: u64) -> u64 {
        let pos = (at & self.mask) as usize;
        let mut len = [0u8; 4];
        for (i, b) in len.iter_mut().enumerate() {
            *b = self.buf[(pos + i) & self.mask as usize];
        }
        record_bytes(u32::from_le_bytes(len) as usize) as u64
    }

    /// The record boundary at or below `offset` (offset in [released, sent]).
    fn boundary_at_or_before(&self, offset: u64) -> u64 {
        let mut at = self.released;
        loop {
            if at >= self.sent {
                return at;
            }
            let next = at + self.record_bytes_at(at);
            if next > offset {
                return at;
            }
            at = next;
        }
    }

    /// Processes one datagram from the receiver (STATUS or NAK).
    pub fn handle(&mut self, now_ns: u64, datagram: &[u8]) {
        let Ok(h) = FrameHeader::decode(datagram) else {
            self.stats.frames_dropped += 1;
            return;
        };
        if h.flags & !FLAGS_KNOWN != 0
            || h.stream_id != self.cfg.stream_id
            || h.partition != self.cfg.partition
            || h.session_id != self.cfg.session_id
            || h.epoch != self.cfg.epoch
        {
            self.stats.frames_dropped += 1;
            return;
        }
        let body = &datagram[HEADER_BYTES..];
        match h.frame_type {
            FrameType::Status => {
                let Some(status) = StatusBody::decode(body) else {
                    self.stats.frames_dropped += 1;
                    return;
                };
                if h.offset > self.sent || h.offset < self.cfg.initial_offset {
                    self.stats.frames_dropped += 1;
                    return;
                }
                self.stats.status_received += 1;
                self.last_status_ns = now_ns;
                if h.flags & FLAG_SETUP_ACK != 0 && !self.connected {
                    self.connected = true;
                    // Everything after the acknowledged position is sent again.
                    self.sent = self
                        .sent
                        .min(self.boundary_at_or_before(h.offset.max(self.released)));
                }
                if !self.connected {
                    return;
                }
                if h.flags & FLAG_END_OF_SESSION != 0 {
                    // The node refused the record at h.offset: nothing more is sent.
                    self.refused = Some(h.offset);
                }
                self.durable = self.durable.max(status.durable_offset.min(h.offset));
                let release_to = match self.cfg.release {
                    Release::Consumed => h.offset,
                    Release::Durable => self.durable,
                };
                while self.released < release_to {
                    let next = self.released + self.record_bytes_at(self.released);
                    if next > release_to {
                        break;
                    }
                    self.released = next;
                }
                if let Some((from, to)) = self.retransmit {
                    self.retransmit =
                        (from.max(self.released) < to).then_some((from.max(self.released), to));
                }
                self.window_limit = self
                    .window_limit
                    .max(h.offset.saturating_add(u64::from(status.window_bytes)));
            }
            FrameType::Nak => {
                let Some(len) = decode_nak(body) else {
                    self.stats.frames_dropped += 1;
                    return;
                };
                self.stats.naks_received += 1;
                let to = h.offset.saturating_add(u64::from(len)).min(self.sent);
                let from = h.offset.max(self.released);
                if len == 0 || from >= to {
                    self.stats.naks_ignored += 1;
                    return;
                }
                let from = self.boundary_at_or_before(from);
                self.retransmit = Some(match self.retransmit {
                    Some((f, t)) => (f.min(from), t.max(to)),
                    None => (from, to),
                });
            }
            FrameType::Data
            | FrameType::Setup
            | FrameType::Heartbeat
            | FrameType::Fetch
            | FrameType::Report => {
                self.stats.frames_dropped += 1;
            }
        }
        if h.flags & FLAG_REPLY_REQUESTED != 0 {
            self.reply_requested = true;
        }
    }

    /// Writes the next frame to send into `out` and returns true, or returns
    /// false when nothing is due. Order: SETUP (until acknowledged),
    /// retransmissions, new DATA within the window, heartbeat.
    pub fn poll_transmit(&mut self, now_ns: u64, out: &mut Vec<u8>) -> bool {
        if self.refused.is_some() {
            return false;
        }
        if self.connected
            && now_ns.saturating_sub(self.last_status_ns) >= self.cfg.status_timeout_ns
        {
            // The receiver went silent (restart): set the session up again.
            self.connected = false;
            self.setup_next_ns = now_ns;
            self.stats.resetups += 1;
        }
        if !self.connected {
            if now_ns < self.setup_next_ns {
                return false;
            }
            self.setup_next_ns = now_ns + self.cfg.setup_retry_ns;
            self.last_status_ns = now_ns;
            encode_setup(
                self.cfg.frame_bytes as u32,
                &self.cfg.principal,
                &mut self.body,
            );
            self.encode(FrameType::Setup, 0, self.released, out);
            self.stats.setups += 1;
            return true;
        }
        if let Some((from, to)) = self.retransmit {
            let next = self.cut_frame(from, to, self.sent);
            if next > from {
                self.retransmit = (next < to).then_some((next, to));
                self.encode(FrameType::Data, FLAG_RETRANSMIT, from, out);
                self.stats.retransmit_frames += 1;
                self.last_send_ns = now_ns;
                return true;
            }
            self.retransmit = None;
        }
        if self.sent < self.end {
            let from = self.sent;
            let next = self.cut_frame(from, self.end, self.window_limit.min(self.end));
            if next > from {
                self.sent = next;
                self.encode(FrameType::Data, 0, from, out);
                self.stats.data_frames += 1;
                self.last_send_ns = now_ns;
                return true;
            }
        }
        let idle = now_ns.saturating_sub(self.last_send_ns) >= self.cfg.heartbeat_interval_ns;
        let closing_done = self.closing && self.released == self.end && !self.end_announced;
        if idle || self.reply_requested || closing_done {
            self.reply_requested = false;
            let mut flags = FLAG_REPLY_REQUESTED;
            if closing_done {
                flags |= FLAG_END_OF_SESSION;
                self.end_announced = true;
            }
            self.body.clear();
            self.encode(FrameType::Heartbeat, flags, self.sent, out);
            self.stats.heartbeats += 1;
            self.last_send_ns = now_ns;
            return true;
        }
        false
    }

    /// Copies whole records starting at `from` (a boundary) into `self.body`:
    /// records that start below `start_before` and end at or below `end_max`,
    /// up to the frame size. Returns the offset after the last record taken.
    fn cut_frame(&mut self, from: u64, start_before: u64, end_max: u64) -> u64 {
        self.body.clear();
        let body_max = self.cfg.frame_bytes - HEADER_BYTES;
        let mut at = from;
        while at < start_before {
            let bytes = self.record_bytes_at(at);
            if at + bytes > end_max || self.body.len() + bytes as usize > body_max {
                break;
            }
            self.read_ring_into_body(at, bytes as usize);
            at += bytes;
        }
        at
    }

    fn encode(&self, frame_type: FrameType, flags: u16, offset: u64, out: &mut Vec<u8>) {
        let header = FrameHeader {
            frame_type,
            flags,
            stream_id: self.cfg.stream_id,
            partition: self.cfg.partition,
            session_id: self.cfg.session_id,
            offset,
            epoch: self.cfg.epoch,
        };
        header
            .encode(&self.body, out)
            .expect("frame_bytes is validated <= FRAME_BYTES_MAX");
    }
}

/// Why a UDP publisher could not start.
#[derive(Debug, thiserror::Error)]
pub enum UdpPublisherCreateError {
    #[error(transparent)]
    Config(#[from] NetConfigError),
    #[error("cannot bind a UDP socket to {addr}: {source} (choose a free local address/port)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot resolve or use node address: {0}")]
    Node(#[source] io::Error),
}

/// A [`PublisherSession`] over a non-blocking kernel UDP socket. Drive it with
/// [`do_work`](Self::do_work) (a duty cycle) between offers.
pub struct UdpPublisher {
    session: PublisherSession,
    socket: UdpSocket,
    node: SocketAddr,
    clock: Instant,
    tx: Vec<u8>,
    rx: Vec<u8>,
    send_errors: u64,
}

impl UdpPublisher {
    /// Binds `local` (e.g. `0.0.0.0:0`) and sends to `node`; SETUP goes out on
    /// the first `do_work`.
    pub fn new(
        local: SocketAddr,
        node: impl ToSocketAddrs,
        cfg: PublisherConfig,
    ) -> Result<Self, UdpPublisherCreateError> {
        let session = PublisherSession::new(cfg)?;
        let node = node
            .to_socket_addrs()
            .map_err(UdpPublisherCreateError::Node)?
            .next()
            .ok_or_else(|| {
                UdpPublisherCreateError::Node(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "no address",
                ))
            })?;
        let socket = UdpSocket::bind(local).map_err(|source| UdpPublisherCreateError::Bind {
            addr: local,
            source,
        })?;
        socket
            .set_nonblocking(true)
            .map_err(|source| UdpPublisherCreateError::Bind {
                addr: local,
                source,
            })?;
        Ok(Self {
            session,
            socket,
            node,
            clock: Instant::now(),
            tx: Vec::with_capacity(FRAME_RECV_BYTES),
            rx: vec![0; FRAME_RECV_BYTES],
            send_errors: 0,
        })
    }

    pub fn session(&self) -> &PublisherSession {
        &self.session
    }
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
    /// Sends that the kernel refused (e.g. ENOBUFS); the protocol recovers them.
    pub fn send_errors(&self) -> u64 {
        self.send_errors
    }

    fn now_ns(&self) -> u64 {
        self.clock.elapsed().as_nanos() as u64
    }

    pub fn offer(&mut self, record_type: u16, payload: &[u8]) -> Result<u64, NetOfferError> {
        self.session.offer(record_type, payload)
    }

    /// One duty cycle: receive STATUS/NAK, send what is due. Returns work done.
    pub fn do_work(&mut self) -> usize {
        let mut work = 0;
        for _ in 0..RECV_BATCH_MAX {
            match self.socket.recv_from(&mut self.rx) {
                Ok((n, src)) => {
                    work += 1;
                    if src == self.node {
                        let now = self.now_ns();
                        self.session.handle(now, &self.rx[..n]);
                    } else {
                        self.session.stats.frames_dropped += 1;
                    }
                }
                Err(_) => break,
            }
        }
        for _ in 0..SEND_BATCH_MAX {
            let now = self.now_ns();
            if !self.session.poll_transmit(now, &mut self.tx) {
                break;
            }
            work += 1;
            if self.socket.send_to(&self.tx, self.node).is_err() {
                self.send_errors += 1;
            }
        }
        work
    }

    /// Runs duty cycles until the SETUP is acknowledged or `timeout` passes.
    pub fn wait_connected(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.session.is_connected() && Instant::now() < deadline {
            if self.do_work() == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        self.session.is_connected()
    }

    /// Offers with retries (running duty cycles) until accepted or `timeout`.
    pub fn offer_blocking(
        &mut self,
        record_type: u16,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<u64, NetOfferError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.session.offer(record_type, payload) {
                Err(NetOfferError::BackPressured) if Instant::now() < deadline => {
                    if self.do_work() == 0 {
                        std::thread::yield_now();
                    }
                }
                r => return r,
            }
        }
    }

    /// Stops taking records without waiting (see [`close`](Self::close)).
    pub fn session_mut_close(&mut self) {
        self.session.close();
    }

    /// Runs duty cycles until everything offered is acknowledged, then sends
    /// END_OF_SESSION; false when `timeout` passed first.
    pub fn close(&mut self, timeout: Duration) -> bool {
        self.session.close();
        let deadline = Instant::now() + timeout;
        while !self.session.is_closed() && Instant::now() < deadline {
            if self.do_work() == 0 {
                std::thread::sleep(Duration::from_micros(50));
            }
        }
        self.session.is_closed()
    }
}
