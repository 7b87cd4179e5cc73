//! A hostile process writes arbitrary bytes over a live ring's tail,
//! descriptors and data; subscribers must report errors or lost records, never
//! panic, read out of bounds or loop forever.
#![no_main]

use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shm_ring::layout::{DESCRIPTOR_TABLE_OFFSET, TAIL_OFFSET};
use shm_ring::*;

struct Fixture {
    rings: Vec<(Ring, std::fs::File)>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir =
            std::path::PathBuf::from(format!("/dev/shm/shm-ring-fuzz-{}", std::process::id()));
        let rings = [Mode::Reliable, Mode::Lossy]
            .into_iter()
            .map(|mode| {
                let cfg = RingConfig {
                    capacity_bytes: 1024,
                    mode,
                    subscribers_max: 4,
                    backing: Backing::DevShm,
                    dir: Some(dir.clone()),
                    ..RingConfig::default()
                };
                let ring = Ring::create(&format!("{mode:?}"), &cfg).expect("create fuzz ring");
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(ring.path())
                    .expect("open ring file");
                // The mappings stay valid after the names are gone.
                let _ = ring.unlink();
                (ring, file)
            })
            .collect();
        let _ = std::fs::remove_dir(&dir);
        Fixture { rings }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let (ring, file) = &fixture().rings[usize::from(data[0] & 1)];
    let (tail, rest) = data[1..].split_at(16);
    file.write_all_at(tail, TAIL_OFFSET as u64).unwrap();
    let rest = &rest[..rest.len().min(16 * 16 + 1024)];
    file.write_all_at(rest, DESCRIPTOR_TABLE_OFFSET as u64)
        .unwrap();
    for start in [StartAt::Tail, StartAt::Earliest] {
        let Ok(mut sub) = ring.subscriber(start) else {
            return;
        };
        for _ in 0..4 {
            let mut n = 0usize;
            match sub.poll(|r| n += r.payload.len(), 64) {
                Ok(p) => assert!(p.records <= 64),
                Err(_) => break,
            }
        }
    }
    if let Ok(mut publ) = ring.publisher() {
        let _ = publ.offer(b"still works");
    }
});
