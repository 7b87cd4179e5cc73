//! Bad input: foreign and corrupt ring files, hostile writes into a live
//! ring, full /dev/shm, empty hugepage pools, permission problems. Each gets
//! a clear error; nothing panics; nothing half-created is left behind.

mod common;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use common::TestDir;
use shm_ring::layout::*;
use shm_ring::*;

fn write_at(path: &Path, off: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
}

/// A ring file, closed again, that the test may corrupt. The creating Ring is
/// dropped, so its pid (ours) still counts as a live creator for `create`.
fn ring_file(dir: &TestDir, name: &str) -> std::path::PathBuf {
    let ring = Ring::create(name, &dir.cfg(4096, Mode::Reliable, PublisherKind::Shared)).unwrap();
    ring.path().to_path_buf()
}

#[test]
fn corrupt_headers_are_refused_with_the_field_named() {
    let dir = TestDir::new("corrupt");
    let cases: Vec<(&str, usize, Vec<u8>, &str)> = vec![
        (
            "magic",
            MAGIC_OFFSET,
            b"NOTARING".to_vec(),
            "not a MemoryStreamer ring",
        ),
        (
            "version",
            VERSION_OFFSET,
            99u32.to_le_bytes().to_vec(),
            "layout version 99",
        ),
        (
            "capacity",
            CAPACITY_BYTES_OFFSET,
            3000u64.to_le_bytes().to_vec(),
            "capacity_bytes",
        ),
        (
            "capacity-big",
            CAPACITY_BYTES_OFFSET,
            (1u64 << 40).to_le_bytes().to_vec(),
            "capacity_bytes",
        ),
        (
            "descriptors",
            DESCRIPTORS_OFFSET,
            7u64.to_le_bytes().to_vec(),
            "descriptors",
        ),
        (
            "file-bytes",
            FILE_BYTES_OFFSET,
            1u64.to_le_bytes().to_vec(),
            "file_bytes",
        ),
        ("mode", MODE_OFFSET, 9u32.to_le_bytes().to_vec(), "mode"),
        (
            "kind",
            PUBLISHER_KIND_OFFSET,
            0u32.to_le_bytes().to_vec(),
            "publisher_kind",
        ),
        (
            "subs",
            SUBSCRIBERS_MAX_OFFSET,
            1000u32.to_le_bytes().to_vec(),
            "subscribers_max",
        ),
        (
            "flags",
            FLAGS_OFFSET,
            0x80u32.to_le_bytes().to_vec(),
            "flags",
        ),
        (
            "liveness",
            LIVENESS_TIMEOUT_NS_OFFSET,
            5u64.to_le_bytes().to_vec(),
            "liveness_timeout_ns",
        ),
        (
            "claim",
            CLAIM_TIMEOUT_NS_OFFSET,
            0u64.to_le_bytes().to_vec(),
            "claim_timeout_ns",
        ),
        (
            "clock",
            CLOCK_MULT_OFFSET,
            1u64.to_le_bytes().to_vec(),
            "clock_mult",
        ),
    ];
    for (name, off, bytes, needle) in cases {
        let path = ring_file(&dir, name);
        write_at(&path, off as u64, &bytes);
        let e = Ring::open(name, Some(dir.path())).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(needle), "{name}: {msg}");
        assert!(
            msg.contains("recreate") || msg.contains("check the name"),
            "{name}: says what to do: {msg}"
        );
    }
}

#[test]
fn truncated_grown_and_foreign_files_are_refused() {
    let dir = TestDir::new("sizes");
    let path = ring_file(&dir, "short");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(8192)
        .unwrap();
    assert!(matches!(
        Ring::open("short", Some(dir.path())),
        Err(RingOpenError::Corrupt {
            field: "file_bytes",
            ..
        })
    ));
    let path = ring_file(&dir, "long");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    assert!(matches!(
        Ring::open("long", Some(dir.path())),
        Err(RingOpenError::Corrupt {
            field: "file_bytes",
            ..
        })
    ));
    std::fs::write(dir.path().join("tiny"), b"MSRING").unwrap();
    assert!(matches!(
        Ring::open("tiny", Some(dir.path())),
        Err(RingOpenError::Foreign { .. })
    ));
    std::fs::write(dir.path().join("empty"), b"").unwrap();
    assert!(matches!(
        Ring::open("empty", Some(dir.path())),
        Err(RingOpenError::Foreign { .. })
    ));
    std::fs::create_dir(dir.path().join("adir")).unwrap();
    assert!(Ring::open("adir", Some(dir.path())).is_err());
}

#[test]
fn hostile_writes_into_a_live_ring_are_reported_not_trusted() {
    let dir = TestDir::new("hostile");
    let ring = Ring::create(
        "h",
        &dir.cfg(4096, Mode::Reliable, PublisherKind::Exclusive),
    )
    .unwrap();
    let path = ring.path().to_path_buf();
    let desc = |seq: u64| {
        DESCRIPTOR_TABLE_OFFSET as u64 + (seq % descriptors_for(4096)) * DESCRIPTOR_BYTES
    };
    // Records of 16 payload bytes are 48 bytes; none wraps in these few offers.
    let record = |seq: u64| data_offset(4096) + seq * 48;
    let desc_bytes = |tag: u64, word1: u64| [tag.to_le_bytes(), word1.to_le_bytes()].concat();
    type Corrupt = Box<dyn Fn(&Path, u64)>;
    let cases: Vec<(&str, Corrupt)> = vec![
        (
            "far position",
            Box::new(move |p, q| write_at(p, desc(q), &desc_bytes(q, (1 << 40) | DESC_COMMITTED))),
        ),
        (
            "position behind",
            Box::new(move |p, q| write_at(p, desc(q), &desc_bytes(q, DESC_COMMITTED))),
        ),
        (
            "unknown state",
            Box::new(move |p, q| write_at(p, desc(q), &desc_bytes(q, 7))),
        ),
        (
            "length",
            Box::new(move |p, q| write_at(p, record(q) + 8, &u64::MAX.to_le_bytes())),
        ),
        (
            "sequence",
            Box::new(move |p, q| write_at(p, record(q), &(q + 1000).to_le_bytes())),
        ),
        (
            "descriptor ahead",
            Box::new(move |p, q| write_at(p, desc(q), &desc_bytes(q + 64, DESC_COMMITTED))),
        ),
    ];
    let mut publ = ring.publisher().unwrap();
    publ.offer(&[5; 16]).unwrap(); // so that "position behind" (0) is behind
    for (what, corrupt) in cases {
        let mut sub = ring.subscriber(StartAt::Tail).unwrap();
        let q = publ.offer(&[5; 16]).unwrap();
        corrupt(&path, q);
        let e = sub.poll(|_| {}, 10).unwrap_err();
        assert!(matches!(e, PollError::Corrupt { .. }), "{what}: {e:?}");
        assert!(e.to_string().contains("recreate"), "{what}: {e}");
    }
}

#[test]
fn dir_that_is_a_file_and_unwritable_paths_get_clear_errors() {
    let dir = TestDir::new("perm");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let mut cfg = dir.cfg(4096, Mode::Reliable, PublisherKind::Shared);
    cfg.dir = Some(file.clone());
    let e = Ring::create("r", &cfg).unwrap_err();
    assert!(matches!(e, RingCreateError::NotADirectory { .. }), "{e}");
    assert!(e.to_string().contains("set RingConfig::dir"));
    cfg.dir = Some(file.join("sub"));
    let e = Ring::create("r", &cfg).unwrap_err();
    assert!(matches!(e, RingCreateError::NotADirectory { .. }), "{e}");
    // Read-only filesystem: /proc is never writable, even for root.
    cfg.dir = Some("/proc/memstreamer-test".into());
    let e = Ring::create("r", &cfg).unwrap_err();
    assert!(
        matches!(
            e,
            RingCreateError::PermissionDenied { .. } | RingCreateError::Io { .. }
        ),
        "{e}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "nothing left behind"
    );
}

#[test]
fn permission_denied_for_another_user() {
    // As root, drop privileges in a child: `setpriv` (util-linux) runs the
    // ms-ring tool as uid/gid 65534 against a ring file of mode 0600.
    testkit::require!(
        testkit::root("to run a child as another user"),
        testkit::tool("setpriv", "--version", "util-linux")
    );
    let dir = TestDir::new("eacces");
    let ring = Ring::create("r", &dir.cfg(4096, Mode::Reliable, PublisherKind::Shared)).unwrap();
    // The directory must be traversable for the other user to reach the file.
    let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_ms-ring"),
            "inspect",
        ])
        .arg(ring.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Permission denied") || err.contains("permission denied"),
        "{err}"
    );
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_ms-ring"),
            "publish",
        ])
        .arg(dir.path())
        .args(["r", "1", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied opening"), "{err}");
}

/// A temporary mount; unmounted (lazily if busy) and removed on drop.
struct Mount(std::path::PathBuf);

/// What mounting a `fstype` needs (`testkit::require!`): root, `mount` and the kernel's support.
fn mount_needs(fstype: &str) -> Option<String> {
    testkit::root(&format!("to mount {fstype}"))
        .or_else(|| testkit::tool("mount", "--version", "mount"))
        .or_else(|| testkit::filesystem(fstype))
}

impl Mount {
    /// Mounts; call it once the test has required [`mount_needs`]: a failure then is a bug.
    fn new(dir: &Path, fstype: &str, opts: &str) -> Mount {
        std::fs::create_dir_all(dir).unwrap();
        testkit::run_ok(
            Command::new("mount")
                .args(["-t", fstype, "-o", opts, "none"])
                .arg(dir),
        );
        Mount(dir.into())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn full_dev_shm_is_a_clear_error_not_sigbus() {
    testkit::require!(mount_needs("tmpfs"));
    let dir = TestDir::new("full");
    let m = Mount::new(&dir.path().join("tmpfs"), "tmpfs", "size=256k");
    let mut cfg = dir.cfg(1 << 20, Mode::Reliable, PublisherKind::Shared);
    cfg.dir = Some(m.0.clone());
    let e = Ring::create("big", &cfg).unwrap_err();
    assert!(matches!(e, RingCreateError::NoSpace { .. }), "{e}");
    assert!(e.to_string().contains("smaller capacity_bytes"));
    assert_eq!(
        std::fs::read_dir(&m.0).unwrap().count(),
        0,
        "no half-created file"
    );
    cfg.capacity_bytes = 64 << 10;
    let ring = Ring::create("small", &cfg).expect("a ring that fits");
    ring.publisher().unwrap().offer(b"fits").unwrap();
}

#[test]
fn hugetlbfs_with_no_pages_fails_clearly() {
    testkit::require!(mount_needs("hugetlbfs"));
    let dir = TestDir::new("nohuge");
    // A hugetlbfs mount limited to 0 pages behaves like an empty pool.
    let m = Mount::new(&dir.path().join("huge"), "hugetlbfs", "pagesize=2M,size=0");
    let mut cfg = dir.cfg(1 << 20, Mode::Reliable, PublisherKind::Shared);
    cfg.backing = Backing::Hugetlbfs;
    cfg.dir = Some(m.0.clone());
    let e = Ring::create("r", &cfg).unwrap_err();
    assert!(matches!(e, RingCreateError::NoHugepages { .. }), "{e}");
    assert!(e.to_string().contains("Backing::Auto"));
    assert_eq!(
        std::fs::read_dir(&m.0).unwrap().count(),
        0,
        "no half-created file"
    );
    // Hugetlbfs requested on a directory that is not hugetlbfs.
    cfg.dir = Some(dir.path().into());
    assert!(matches!(
        Ring::create("r", &cfg),
        Err(RingCreateError::NoHugepages { .. })
    ));
}

#[test]
fn hugetlbfs_ring_works_when_a_pool_exists() {
    testkit::require!(testkit::hugepages_free(4), mount_needs("hugetlbfs"));
    let dir = TestDir::new("huge");
    let m = Mount::new(&dir.path().join("huge"), "hugetlbfs", "pagesize=2M");
    let mut cfg = dir.cfg(1 << 20, Mode::Reliable, PublisherKind::Exclusive);
    cfg.backing = Backing::Hugetlbfs;
    cfg.dir = Some(m.0.clone());
    let ring = Ring::create("r", &cfg).unwrap();
    assert_eq!(ring.backing(), BackingKind::Hugetlbfs);
    assert_eq!(
        std::fs::metadata(ring.path()).unwrap().len() % (2 << 20),
        0,
        "2 MiB multiple"
    );
    let other = Ring::open("r", Some(&m.0)).unwrap();
    assert_eq!(other.backing(), BackingKind::Hugetlbfs);
    let mut sub = other.subscriber(StartAt::Tail).unwrap();
    ring.publisher().unwrap().offer(b"huge").unwrap();
    assert_eq!(
        sub.poll(|r| assert_eq!(r.payload, b"huge"), 1)
            .unwrap()
            .records,
        1
    );
    drop((sub, other));
    ring.unlink().unwrap();
    // Auto on that directory picks hugetlbfs too.
    cfg.backing = Backing::Auto;
    let ring = Ring::create("auto", &cfg).unwrap();
    assert_eq!(ring.backing(), BackingKind::Hugetlbfs);
    ring.unlink().unwrap();
}

#[test]
fn hostile_tail_values_do_not_break_publishers() {
    let dir = TestDir::new("hostile-tail");
    for kind in [PublisherKind::Exclusive, PublisherKind::Shared] {
        for tail in [
            (7u64, 3u64),
            (u64::MAX - 5, u64::MAX),
            (4096 * 1000 + 9, 17),
        ] {
            let name = format!("t-{kind:?}-{}", tail.0);
            let ring = Ring::create(&name, &dir.cfg(4096, Mode::Reliable, kind)).unwrap();
            let bytes = [tail.0.to_le_bytes(), tail.1.to_le_bytes()].concat();
            write_at(ring.path(), TAIL_OFFSET as u64, &bytes);
            let mut sub = ring.subscriber(StartAt::Tail).unwrap();
            let mut publ = ring.publisher().unwrap();
            // Whatever the values: a result, never a panic or a stray write.
            match publ.offer(b"after a hostile tail") {
                Ok(off) => {
                    assert_eq!(off, tail.1);
                    let p = sub.poll(|r| assert_eq!(r.payload, b"after a hostile tail"), 4);
                    assert!(
                        matches!(
                            p,
                            Ok(Poll { records: 1, .. }) | Err(PollError::Corrupt { .. })
                        ),
                        "{p:?}"
                    );
                }
                Err(e) => assert_eq!(
                    e,
                    OfferError::BackPressured,
                    "a tail at the end of the sequence space"
                ),
            }
        }
    }
}
