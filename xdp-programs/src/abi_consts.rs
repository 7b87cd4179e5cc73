// The numbers shared by the C XDP program and Rust. With the frame header's
// numbers (`abi/src/frame_consts.rs`, the wire format every process shares)
// this is the single source of truth: `build.rs` reads both files and writes
// every constant into the generated C header `memstreamer_abi.h`; the C
// program checks its struct layouts against these numbers with
// `_Static_assert`, and the Rust tests in `abi.rs` check the `#[repr(C)]`
// mirrors against the same numbers.
// Only plain `pub const NAME: u32|u64 = LITERAL;` items here (build.rs parses them).

// ---- Maps -------------------------------------------------------------------

/// `ms_config` array: one entry.
pub const CONFIG_ENTRIES: u32 = 1;
pub const CONFIG_BYTES: u32 = 8;
pub const CONFIG_DATA_PORT_OFFSET: u32 = 0;
pub const CONFIG_RESERVED_OFFSET: u32 = 2;
pub const CONFIG_FLAGS_OFFSET: u32 = 4;
/// Config flag: a source with no policy entry for a stream is allowed (default: denied).
pub const CONFIG_FLAG_DEFAULT_ALLOW: u32 = 1;

/// `ms_policy` hash: (source address, stream id) -> action.
pub const POLICY_ENTRIES_MAX: u32 = 65536;
pub const POLICY_KEY_BYTES: u32 = 20;
pub const POLICY_KEY_ADDR_OFFSET: u32 = 0;
pub const POLICY_KEY_STREAM_ID_OFFSET: u32 = 16;
pub const POLICY_VALUE_BYTES: u32 = 8;
pub const POLICY_VALUE_ACTION_OFFSET: u32 = 0;
pub const POLICY_VALUE_RESERVED_OFFSET: u32 = 4;
pub const POLICY_ACTION_DENY: u32 = 0;
pub const POLICY_ACTION_ALLOW: u32 = 1;

/// `ms_rate` hash: source address -> token bucket.
pub const RATE_ENTRIES_MAX: u32 = 16384;
pub const SOURCE_KEY_BYTES: u32 = 16;
pub const RATE_BUCKET_BYTES: u32 = 32;
pub const RATE_BUCKET_RATE_OFFSET: u32 = 0;
pub const RATE_BUCKET_BURST_OFFSET: u32 = 8;
pub const RATE_BUCKET_TOKENS_OFFSET: u32 = 16;
pub const RATE_BUCKET_LAST_NS_OFFSET: u32 = 24;
/// Highest accepted refill rate (frames per second); keeps elapsed_ns * rate in u64.
pub const RATE_PER_SEC_MAX: u64 = 100_000_000;
/// Elapsed time after which a bucket is simply refilled to `burst` (also bounds the u64 product).
pub const RATE_REFILL_ELAPSED_NS_MAX: u64 = 10_000_000_000;
/// Largest burst (frames).
pub const RATE_BURST_MAX: u64 = 4_294_967_296;
/// Compare-and-swap attempts per frame before the frame counts as rate limited.
pub const RATE_CAS_ATTEMPTS_MAX: u32 = 4;

/// `ms_xsks` XSKMAP: RX queue index -> AF_XDP socket.
pub const XSK_QUEUES_MAX: u32 = 64;

// ---- Verdicts (stable ids: never renumber, only append) ---------------------

pub const VERDICT_PASS_NOT_IP: u32 = 0;
pub const VERDICT_PASS_NOT_UDP: u32 = 1;
pub const VERDICT_PASS_IP_FRAGMENT: u32 = 2;
pub const VERDICT_PASS_OTHER_PORT: u32 = 3;
pub const VERDICT_DROP_TRUNCATED: u32 = 4;
pub const VERDICT_DROP_BAD_HEADER: u32 = 5;
pub const VERDICT_DROP_BAD_LENGTH: u32 = 6;
pub const VERDICT_DROP_POLICY: u32 = 7;
pub const VERDICT_DROP_RATE_LIMITED: u32 = 8;
pub const VERDICT_REDIRECT: u32 = 9;
pub const VERDICT_REDIRECT_NO_SOCKET: u32 = 10;
/// Number of verdict slots in `ms_counters`.
pub const VERDICT_COUNT: u32 = 11;
