//! Fuzzes the receiver's session table with a sequence of datagrams from a few sources. Each
//! datagram is cut from the input by a 1-byte length; its header fields come from the input but
//! magic, version, length and CRC32C are made valid so the fuzzer reaches the session logic.
//! The table must never panic and every frame it transmits is at least a header.
#![no_main]

use std::net::SocketAddr;

use abi::frame::{
    crc32c, FRAME_CRC32C_OFFSET, FRAME_LENGTH_OFFSET, FRAME_MAGIC, FRAME_VERSION, HEADER_BYTES,
};
use dataplane::session::{AppendRefusal, RecordSink, SessionConfig, SessionTable};
use libfuzzer_sys::fuzz_target;

struct CountSink(u64);

impl RecordSink for CountSink {
    fn append(
        &mut self,
        _partition: usize,
        _record_type: u16,
        payload: &[u8],
    ) -> Result<u64, AppendRefusal> {
        self.0 += 1;
        // Back-pressure now and then; a ring smaller than some records.
        if payload.len() > 1000 {
            return Err(AppendRefusal::TooLarge);
        }
        (self.0 % 17 != 0)
            .then_some(self.0 * 64)
            .ok_or(AppendRefusal::BackPressured)
    }
}

fuzz_target!(|data: &[u8]| {
    let cfg = SessionConfig {
        sessions_max: 4,
        window_bytes: 1 << 16,
        nak_delay_ns: 3,
        nak_retry_ns: 7,
        status_interval_ns: 11,
        session_timeout_ns: 1000,
        receiver_id: 1,
    };
    let mut table = SessionTable::new(cfg, &[(0, 0), (1, 0)]);
    let mut sink = CountSink(0);
    let mut out = Vec::new();
    let mut rest = data;
    let mut now = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let len = (len as usize).min(tail.len());
        let (raw, next) = tail.split_at(len);
        rest = next;
        now += 1;
        let src: SocketAddr = SocketAddr::from((
            [198, 18, 0, 2],
            5000 + u16::from(raw.first().copied().unwrap_or(0) & 1),
        ));
        let mut frame = raw.to_vec();
        if frame.len() >= HEADER_BYTES {
            frame[..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
            frame[4] = FRAME_VERSION as u8;
            frame[12..16].fill(0); // partition 0, reserved 0
            let len = frame.len() as u32;
            let at = FRAME_LENGTH_OFFSET as usize;
            frame[at..at + 4].copy_from_slice(&len.to_le_bytes());
            let at = FRAME_CRC32C_OFFSET as usize;
            frame[at..at + 4].fill(0);
            let crc = crc32c(&frame);
            frame[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        }
        table.handle(now, src, &frame, &mut sink);
        for _ in 0..8 {
            if table
                .poll_transmit(now, Some(&[now * 64, 0]), &mut out)
                .is_none()
            {
                break;
            }
            assert!(out.len() >= HEADER_BYTES);
        }
    }
});
