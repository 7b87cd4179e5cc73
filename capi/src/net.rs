//! `ms_net_publisher_t` / `ms_net_subscriber_t`: the UDP client of
//! docs/protocol.md (sdk::net), one non-blocking socket each, driven by the
//! caller's duty cycle.

use std::ffi::{c_char, c_int, c_void};
use std::net::SocketAddr;
use std::time::Duration;

use sdk::net::{NetOfferError, PublisherConfig, ReceiverConfig, UdpPublisher, UdpSubscriber};

use crate::error::{bytes, guard, ms_result_t, str_arg, write_opt, write_out, Error};
use crate::handle::{self, Handle};

/// A buffer of this many bytes holds every socket address text with its NUL
/// (`ms_net_subscriber_local_addr`).
pub const MS_ADDR_BYTES_MAX: usize = 64;

/// A network publisher (opaque). Open with `ms_net_publisher_open`, free
/// with `ms_net_publisher_close`.
/// Threading: one thread at a time (it owns a non-blocking socket and is
/// driven by the caller's duty cycle); it may move between threads.
pub struct ms_net_publisher_t {
    h: Handle<UdpPublisher>,
}

opaque!(
    ms_net_publisher_t,
    UdpPublisher,
    c"the network publisher is NULL (not opened, or closed)"
);

/// A network subscriber (opaque). Open with `ms_net_subscriber_open`, free
/// with `ms_net_subscriber_close`.
/// Threading: one thread at a time (it owns a non-blocking socket and is
/// driven by the caller's duty cycle); it may move between threads.
pub struct ms_net_subscriber_t {
    h: Handle<UdpSubscriber>,
}

opaque!(
    ms_net_subscriber_t,
    UdpSubscriber,
    c"the network subscriber is NULL (not opened, or closed)"
);

/// What a network poll callback learns about a record besides its payload.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ms_net_record_header_t {
    pub stream_id: u32,
    pub session_id: u32,
    /// The record's offset in its session.
    pub offset: u64,
    pub partition: u16,
    /// Application record type.
    pub record_type: u16,
}

/// Called once per record, in order per session. `payload` (`len` bytes) and
/// `header` are valid only until the callback returns. Must return normally.
pub type ms_net_fragment_handler_t = Option<
    unsafe extern "C" fn(
        clientd: *mut c_void,
        payload: *const u8,
        len: usize,
        header: *const ms_net_record_header_t,
    ),
>;

/// # Safety
/// `s` is NULL or NUL-terminated.
unsafe fn addr_arg(s: *const c_char, what: &'static str) -> Result<SocketAddr, Error> {
    // SAFETY: forwarded caller's contract.
    let text = unsafe { str_arg(s, what) }?;
    text.parse().map_err(|_| {
        Error::invalid(format!(
            "{what} {text:?} is not an IP:port address (e.g. \"127.0.0.1:40100\")"
        ))
    })
}

fn net_offer_error(e: NetOfferError) -> Error {
    match e {
        NetOfferError::BackPressured => Error::fixed(
            ms_result_t::MS_ERR_BACK_PRESSURED,
            c"retransmit buffer full until the receiver acknowledges: run ms_net_publisher_do_work and retry",
        ),
        e @ NetOfferError::TooLarge { .. } => Error::new(ms_result_t::MS_ERR_TOO_LARGE, e.to_string()),
        NetOfferError::Closed => Error::fixed(ms_result_t::MS_ERR_CLOSED, c"the session was closed: open a new publisher"),
        e @ NetOfferError::Refused { .. } => Error::new(ms_result_t::MS_ERR_REFUSED, e.to_string()),
    }
}

fn nanos(ns: u64) -> Duration {
    Duration::from_nanos(ns)
}

/// Opens a network publisher of `stream`/`partition`, session `session_id`,
/// bound to `local_addr` (e.g. "0.0.0.0:0") and sending to `node_addr` (a
/// node's data port, or a network subscriber). SETUP goes out on the first
/// `ms_net_publisher_do_work`. Ownership: `*out` belongs to the caller; free
/// it with `ms_net_publisher_close`.
///
/// Errors: MS_ERR_INVALID_ARGUMENT (addresses, principal of 1..=255 bytes),
/// MS_ERR_IO (bind).
///
/// # Safety
/// The strings are NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ms_net_publisher_open(
    local_addr: *const c_char,
    node_addr: *const c_char,
    stream: u32,
    partition: u16,
    session_id: u32,
    principal: *const c_char,
    out: *mut *mut ms_net_publisher_t,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        // SAFETY: forwarded caller's contract (three strings).
        let (local, node, principal) = unsafe {
            (
                addr_arg(local_addr, "local_addr")?,
                addr_arg(node_addr, "node_addr")?,
                str_arg(principal, "principal")?,
            )
        };
        let cfg = PublisherConfig::new(stream, partition, session_id, principal);
        let p = UdpPublisher::new(local, node, cfg).map_err(|e| {
            let code = match e {
                sdk::net::UdpPublisherCreateError::Config(_) => {
                    ms_result_t::MS_ERR_INVALID_ARGUMENT
                }
                _ => ms_result_t::MS_ERR_IO,
            };
            Error::new(code, e.to_string())
        })?;
        let ptr = handle::into_raw::<ms_net_publisher_t>(p);
        // SAFETY: `out` is non-NULL (checked) and writable (caller's contract).
        unsafe { write_out(out, c"out is NULL", ptr) }?;
        Ok(0)
    })
}

/// One duty cycle: receives STATUS/NAK, sends SETUP/DATA/heartbeats that are
/// due. Returns the work done (>= 0) or a negative code.
///
/// # Safety
/// `publisher` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn ms_net_publisher_do_work(publisher: *mut ms_net_publisher_t) -> c_int {
    // SAFETY: forwarded caller's contract.
    guard(|| unsafe {
        handle::with(publisher, |p| {
            Ok(p.do_work().min(c_int::MAX as usize) as c_int)
        })
    })
}

/// 1 when the receiver acknowledged the session, 0 before (or a negative code).
///
/// # Safety
/// `publisher` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn ms_net_publisher_is_connected(
    publisher: *mut ms_net_publisher_t,
) -> c_int {
    // SAFETY: forwarded caller's contract.
    guard(|| unsafe { handle::with(publisher, |p| Ok(c_int::from(p.session().is_connected()))) })
}

/// Runs duty cycles until the session is acknowledged or `timeout_ns`
/// passes: MS_OK, or MS_ERR_NOT_CONNECTED.
///
/// # Safety
/// `publisher` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn ms_net_publisher_wait_connected(
    publisher: *mut ms_net_publisher_t,
    timeout_ns: u64,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded caller's contract.
        unsafe {
            handle::with(publisher, |p| {
                if p.wait_connected(nanos(timeout_ns)) {
                    Ok(0)
                } else {
                    Err(Error::fixed(
                        ms_result_t::MS_ERR_NOT_CONNECTED,
                        c"no acknowledgement from the receiver within the timeout: check the node address and that it runs",
                    ))
                }
            })
        }
    })
}

/// Copies `len` bytes at `buf` into the retransmit buffer as one record of
/// `record_type`; it is sent by the following duty cycles. Writes its session
/// offset to `*offset` when not NULL.
///
/// Errors: MS_ERR_NOT_CONNECTED (no acknowledged session yet: run
/// `ms_net_publisher_do_work` and retry), MS_ERR_BACK_PRESSURED (run duty
/// cycles and retry), MS_ERR_TOO_LARGE (larger than a frame takes),
/// MS_ERR_CLOSED, MS_ERR_REFUSED, MS_ERR_NULL_HANDLE, MS_ERR_INVALID_ARGUMENT.
///
/// # Safety
/// `publisher` is NULL or live; `buf` is NULL or readable for `len` bytes;
/// `offset` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ms_net_publisher_offer(
    publisher: *mut ms_net_publisher_t,
    record_type: u16,
    buf: *const u8,
    len: usize,
    offset: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded caller's contract.
        let payload = unsafe { bytes(buf, len) }?;
        // SAFETY: forwarded caller's contract.
        let at = unsafe {
            handle::with(publisher, |p| {
                let session = p.session();
                if !session.is_connected() && !session.is_closed() && session.refused_at().is_none()
                {
                    return Err(Error::fixed(
                        ms_result_t::MS_ERR_NOT_CONNECTED,
                        c"not connected: run ms_net_publisher_do_work (or wait_connected) and retry",
                    ));
                }
                p.offer(record_type, payload).map_err(net_offer_error)
            })
        }?;
        // SAFETY: `offset` is NULL or writable (caller's contract).
        unsafe { write_opt(offset, at) };
        Ok(0)
    })
}

/// Closes the session: runs duty cycles until everything offered is
/// acknowledged (at most `linger_ns`), sends END_OF_SESSION, frees the
/// publisher and sets `*publisher` to NULL. Returns MS_OK, or
/// MS_ERR_TIMED_OUT when records were still unacknowledged (the handle is
/// freed either way). MS_OK when `*publisher` is already NULL.
///
/// # Safety
/// `publisher` is NULL or points to NULL or to a live network publisher.
#[no_mangle]
pub unsafe extern "C" fn ms_net_publisher_close(
    publisher: *mut *mut ms_net_publisher_t,
    linger_ns: u64,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded caller's contract.
        unsafe {
            handle::close(publisher, |p| {
                if p.close(nanos(linger_ns)) {
                    Ok(())
                } else {
                    Err(Error::fixed(
                        ms_result_t::MS_ERR_TIMED_OUT,
                        c"closed before the receiver acknowledged every record (linger timeout)",
                    ))
                }
            })
        }
        .map(|()| 0)
    })
}

/// Opens a network subscriber bound to `local_addr` (e.g. "127.0.0.1:0"):
/// publishers send SETUP and DATA to its address. Ownership: `*out` belongs
/// to the caller; free it with `ms_net_subscriber_close`.
///
/// # Safety
/// `local_addr` is NULL or NUL-terminated; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ms_net_subscriber_open(
    local_addr: *const c_char,
    out: *mut *mut ms_net_subscriber_t,
) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(Error::invalid("out is NULL"));
        }
        // SAFETY: forwarded caller's contract.
        let local = unsafe { addr_arg(local_addr, "local_addr") }?;
        let s = UdpSubscriber::bind(local, ReceiverConfig::default())
            .map_err(|e| Error::new(ms_result_t::MS_ERR_IO, e.to_string()))?;
        let ptr = handle::into_raw::<ms_net_subscriber_t>(s);
        // SAFETY: `out` is non-NULL (checked) and writable (caller's contract).
        unsafe { write_out(out, c"out is NULL", ptr) }?;
        Ok(0)
    })
}

/// Writes the bound address ("IP:port", NUL-terminated) into `buf` of `len`
/// bytes (`MS_ADDR_BYTES_MAX` always suffice); returns its length.
///
/// # Safety
/// `subscriber` is NULL or live; `buf` is NULL or writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn ms_net_subscriber_local_addr(
    subscriber: *mut ms_net_subscriber_t,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded caller's contract.
        let addr = unsafe {
            handle::with(subscriber, |s| {
                s.local_addr()
                    .map_err(|e| Error::new(ms_result_t::MS_ERR_IO, format!("local address: {e}")))
            })
        }?
        .to_string();
        if buf.is_null() || len < addr.len() + 1 {
            return Err(Error::invalid(format!(
                "buf must hold {} bytes (MS_ADDR_BYTES_MAX always does)",
                addr.len() + 1
            )));
        }
        // SAFETY: `buf` is writable for `len` >= addr.len() + 1 bytes (length
        // checked above, writability is the caller's contract).
        unsafe {
            std::ptr::copy_nonoverlapping(addr.as_ptr(), buf.cast::<u8>(), addr.len());
            buf.add(addr.len()).write(0);
        }
        Ok(addr.len() as c_int)
    })
}

/// Asks the node whose data port is `node_addr` for `stream`/`partition`:
/// the node becomes the publisher of session `session_id` toward this
/// subscriber (from the latest record). Repeated by polls until the node answers.
///
/// # Safety
/// `subscriber` is NULL or live; the strings are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn ms_net_subscriber_subscribe(
    subscriber: *mut ms_net_subscriber_t,
    node_addr: *const c_char,
    stream: u32,
    partition: u16,
    session_id: u32,
    principal: *const c_char,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded caller's contract.
        let (node, principal) = unsafe {
            (
                addr_arg(node_addr, "node_addr")?,
                str_arg(principal, "principal")?,
            )
        };
        // SAFETY: forwarded caller's contract.
        unsafe {
            handle::with(subscriber, |s| {
                s.subscribe(node, stream, partition, session_id, principal)
                    .map_err(|e| Error::invalid(e.to_string()))?;
                Ok(0)
            })
        }
    })
}

/// One duty cycle: receives up to `frames_max` datagrams, delivers their
/// records in order to `handler` (with `clientd`), sends due STATUS/NAK.
/// Returns the records delivered (>= 0) or a negative code
/// (MS_ERR_INVALID_ARGUMENT for a NULL handler or `frames_max` 0).
///
/// # Safety
/// `subscriber` is NULL or live; `handler` is NULL or a function that is
/// safe to call with `clientd` and returns normally.
#[no_mangle]
pub unsafe extern "C" fn ms_net_subscriber_poll(
    subscriber: *mut ms_net_subscriber_t,
    handler: ms_net_fragment_handler_t,
    clientd: *mut c_void,
    frames_max: usize,
) -> c_int {
    guard(|| {
        let handler = handler.ok_or(Error::fixed(
            ms_result_t::MS_ERR_INVALID_ARGUMENT,
            c"handler is NULL",
        ))?;
        if frames_max == 0 {
            return Err(Error::invalid("frames_max must be > 0"));
        }
        let deliver = |r: &sdk::net::NetRecord<'_>| {
            let header = ms_net_record_header_t {
                stream_id: r.stream_id,
                session_id: r.session_id,
                offset: r.offset,
                partition: r.partition,
                record_type: r.record_type,
            };
            // SAFETY: `handler` is safe to call with `clientd` (caller's
            // contract); payload and header are valid for the call, which is
            // all the header promises.
            unsafe { handler(clientd, r.payload.as_ptr(), r.payload.len(), &header) };
        };
        let poll = |s: &mut UdpSubscriber| Ok(s.poll(deliver, frames_max));
        // SAFETY: forwarded caller's contract.
        let n = unsafe { handle::with(subscriber, poll) }?;
        Ok(n.min(c_int::MAX as usize) as c_int)
    })
}

/// Frees the subscriber and sets `*subscriber` to NULL (MS_OK when already NULL).
///
/// # Safety
/// `subscriber` is NULL or points to NULL or to a live network subscriber.
#[no_mangle]
pub unsafe extern "C" fn ms_net_subscriber_close(
    subscriber: *mut *mut ms_net_subscriber_t,
) -> c_int {
    // SAFETY: forwarded caller's contract.
    guard(|| unsafe { handle::close(subscriber, |_| Ok(())) }.map(|()| 0))
}
