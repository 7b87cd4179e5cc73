//! Subscribe requests: a remote subscriber's SUBSCRIBE (from the receiver) becomes a
//! [`NewSubscriber`] for the sender — its outbound session (retransmit window), and where it
//! starts: live, from a private ring reader, or from a log reader the archiver opens.

use std::net::SocketAddr;

use sdk::net::wire::SubscribeStart;
use shm_ring::StartAt;

use super::Conductor;
use crate::counters::Counter;
use crate::proxy::{
    ArchiverCommand, NewSubscriber, PendingSubscribe, SenderCommand, SubscriberStart,
};
use crate::session::SubscribeRequest;

/// Settings of the outbound sessions the conductor builds for remote subscribers.
#[derive(Clone, Debug)]
pub struct SubscriptionSettings {
    pub partitions: Vec<(u32, u16)>,
    pub retransmit_window_bytes: usize,
    pub heartbeat_interval_ns: u64,
    pub session_timeout_ns: u64,
    pub principal: String,
    /// The sender builds Ethernet frames on this interface (AF_XDP): a subscriber's MAC must
    /// be in its neighbour table. None: the kernel resolves (UDP backend).
    pub neighbour_interface: Option<String>,
}

/// Bytes of the storage read buffer of one remote subscriber while it catches up from storage.
pub const CATCH_UP_BUF_BYTES: usize = 2 * crate::archive::BATCH_BYTES_MAX as usize;

impl Conductor {
    pub(super) fn session_config(&self, r: &SubscribeRequest) -> sdk::net::PublisherConfig {
        let frame_max = xdp_programs::abi_consts::FRAME_BYTES_MAX;
        let mut cfg = sdk::net::PublisherConfig::new(
            r.stream_id,
            r.partition,
            r.session_id,
            &self.settings.principal,
        );
        cfg.epoch = r.epoch;
        cfg.frame_bytes = (r.frame_bytes_max.min(frame_max) & !7) as usize;
        cfg.buffer_bytes = self.settings.retransmit_window_bytes;
        cfg.heartbeat_interval_ns = self.settings.heartbeat_interval_ns;
        cfg.status_timeout_ns = self.settings.session_timeout_ns;
        cfg
    }

    pub(super) fn subscribe(&mut self, r: SubscribeRequest) {
        let Some(p) = self.registry.live.get(&(r.stream_id, r.partition)) else {
            self.counters.add(Counter::ConductorSubscribeRefused, 1);
            return;
        };
        let (slot, archived) = (p.slot, p.archived);
        if self.session_config(&r).validate().is_err() {
            self.counters.add(Counter::ConductorSubscribeRefused, 1);
            return;
        }
        let behind = r.start != SubscribeStart::Latest;
        match self.registry.archiver.as_mut() {
            // Records older than the ring come from the log: ask the archiver for a reader.
            Some(archiver) if behind && archived => {
                let open = ArchiverCommand::OpenReader {
                    slot,
                    request: Box::new(PendingSubscribe {
                        request: r,
                        slot,
                        reader: None,
                    }),
                };
                if archiver.push(open).is_err() {
                    self.outbox_full();
                }
            }
            _ => self.finish_subscribe(r, slot, None),
        }
    }

    /// Builds the subscriber's outbound session and where it starts reading; hands it to the
    /// sender. `reader` (a log reader) is there when the request starts behind the ring.
    pub(super) fn finish_subscribe(
        &mut self,
        r: SubscribeRequest,
        slot: usize,
        reader: Option<Box<storage_nvme::Reader>>,
    ) {
        let Some(p) = self.registry.live.get(&(r.stream_id, r.partition)) else {
            self.counters.add(Counter::ConductorSubscribeRefused, 1);
            return;
        };
        if p.slot != slot {
            // The partition was removed and made again meanwhile: the request is stale.
            self.counters.add(Counter::ConductorSubscribeRefused, 1);
            return;
        }
        let ring = p.ring.clone();
        let Ok(session) = sdk::net::PublisherSession::new(self.session_config(&r)) else {
            self.counters.add(Counter::ConductorSubscribeRefused, 1);
            return;
        };
        let Some(start) = subscriber_start(&r, &ring, reader) else {
            self.counters.add(Counter::ConductorSubscribeRefused, 1);
            return;
        };
        let Ok(dst_mac) = self.neighbour_mac(r.src) else {
            return;
        };
        let add = SenderCommand::Add(Box::new(NewSubscriber {
            dst: r.src,
            slot,
            session,
            start,
            dst_mac,
        }));
        if self.registry.sender.push(add).is_err() {
            self.outbox_full();
        }
    }

    /// The subscriber's MAC address when the sender builds Ethernet frames itself (AF_XDP);
    /// Err (counted, logged at powers of two) when the neighbour table has none.
    fn neighbour_mac(&mut self, src: SocketAddr) -> Result<Option<[u8; 6]>, ()> {
        let Some(iface) = &self.settings.neighbour_interface else {
            return Ok(None);
        };
        let mac = match src {
            SocketAddr::V4(v4) => crate::net::afxdp::kernel_neighbour(iface, *v4.ip()),
            SocketAddr::V6(_) => None,
        };
        if mac.is_some() {
            return Ok(mac);
        }
        // Fail clearly: the AF_XDP sender cannot address a frame without it. The subscriber
        // repeats its SUBSCRIBE, so a later ARP/ND entry lets it in.
        self.counters.add(Counter::ConductorSubscribeRefused, 1);
        self.counters.add(Counter::TxNoNeighbour, 1);
        self.no_neighbour += 1;
        if self.no_neighbour.is_power_of_two() {
            eprintln!("memstreamer: remote subscriber {src} refused: no resolved neighbour entry for it on `{iface}` (the AF_XDP sender needs its MAC address; check `ip neigh show dev {iface}`; IPv6 subscribers need --backend udp)");
        }
        Err(())
    }

    /// A subscribe request refused because the agent's queue and outbox are full (the
    /// subscriber repeats its SUBSCRIBE until the node's SETUP arrives, so it comes back).
    fn outbox_full(&mut self) {
        self.counters.add(Counter::ConductorSubscribeRefused, 1);
        self.counters.add(Counter::ConductorOutboxFull, 1);
    }
}

/// Where the subscriber starts: live, from the log (`reader`, positioned at its offset, and a
/// read buffer), or from a private ring reader. None when no buffer or ring reader is to be had.
fn subscriber_start(
    r: &SubscribeRequest,
    ring: &shm_ring::Ring,
    reader: Option<Box<storage_nvme::Reader>>,
) -> Option<SubscriberStart> {
    let from = match r.start {
        SubscribeStart::Latest => return Some(SubscriberStart::Live),
        SubscribeStart::Earliest => 0,
        SubscribeStart::Offset(x) => x,
    };
    let Some(mut reader) = reader else {
        let reader = Box::new(ring.subscriber(StartAt::Earliest).ok()?);
        return Some(SubscriberStart::Ring { from, reader });
    };
    // An offset beyond what is durable starts at the durable tail (the records below `from` are
    // skipped as they arrive); one below the log's start, at it.
    let target = from.min(reader.end_offset());
    if target > reader.next_offset() {
        if let Err(e) = reader.seek_offset(target) {
            eprintln!(
                "memstreamer: subscriber {} from offset {from}: {e}; reading the log from its start",
                r.src
            );
        }
    }
    let buf = match storage_nvme::AlignedBuf::new(CATCH_UP_BUF_BYTES) {
        Ok(b) => Box::new(b),
        Err(e) => {
            eprintln!("memstreamer: no read buffer for a catching-up subscriber: {e}");
            return None;
        }
    };
    Some(SubscriberStart::Storage { from, reader, buf })
}
