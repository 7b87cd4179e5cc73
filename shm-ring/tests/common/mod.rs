//! Test helpers: a per-test ring directory under /dev/shm that is removed on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use shm_ring::{Backing, Mode, PublisherKind, RingConfig};

/// A directory for one test's ring files; removed (with its files) on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(test: &str) -> TestDir {
        Self::under(Path::new("/dev/shm"), test)
    }

    pub fn under(parent: &Path, test: &str) -> TestDir {
        let dir = parent.join(format!("ms-ring-test-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        TestDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn cfg(&self, capacity_bytes: u64, mode: Mode, publishers: PublisherKind) -> RingConfig {
        RingConfig {
            capacity_bytes,
            mode,
            publishers,
            subscribers_max: 8,
            liveness_timeout_ns: 200_000_000,
            claim_timeout_ns: 50_000_000,
            backing: Backing::DevShm,
            dir: Some(self.0.clone()),
        }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic payload for record `i` of length `len`.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (i as usize).wrapping_mul(31).wrapping_add(k) as u8)
        .collect()
}
