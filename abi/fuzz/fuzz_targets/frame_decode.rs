//! Fuzzes the frame header decoder with arbitrary datagrams: it must never
//! panic, what it accepts must re-encode to the same bytes, and any single
//! corrupted byte of a valid frame must be rejected.
#![no_main]

use abi::frame::{FrameHeader, FrameType, FRAME_BYTES_MAX, HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = FrameHeader::decode(data) {
        let mut out = Vec::new();
        h.encode(&data[HEADER_BYTES..], &mut out)
            .expect("accepted frames fit");
        assert_eq!(out, data);
    }

    // Build a valid frame from the input, then corrupt one byte.
    if data.len() < 24 {
        return;
    }
    let u = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
    let types = [
        FrameType::Data,
        FrameType::Status,
        FrameType::Nak,
        FrameType::Setup,
        FrameType::Heartbeat,
    ];
    let h = FrameHeader {
        frame_type: types[data[0] as usize % types.len()],
        flags: u16::from_le_bytes([data[1], data[2]]),
        stream_id: u(4),
        partition: u16::from_le_bytes([data[8], data[9]]),
        session_id: u(10),
        offset: u64::from(u(14)) << 32 | u64::from(u(18)),
        epoch: u(20),
    };
    let body = &data[24..data.len().min(24 + FRAME_BYTES_MAX as usize - HEADER_BYTES)];
    let mut frame = Vec::new();
    h.encode(body, &mut frame).expect("sized to fit");
    assert_eq!(FrameHeader::decode(&frame), Ok(h));
    let at = u(0) as usize % frame.len();
    let flip = data[3] | 1;
    frame[at] ^= flip;
    assert!(
        FrameHeader::decode(&frame).is_err(),
        "corruption at byte {at} not detected"
    );
});
