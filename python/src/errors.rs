//! The exceptions of the `memstreamer` package and the mapping from the SDK's
//! error values to them. Every message says what to do next.

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use sdk::net::{NetOfferError, UdpPublisherCreateError, UdpSubscriberCreateError};
use sdk::{CommitError, OfferError, PublisherCreateError, SubscriberPollError};

create_exception!(
    memstreamer,
    MemstreamerError,
    PyException,
    "Base class of every error this package raises."
);
create_exception!(
    memstreamer,
    BackPressured,
    MemstreamerError,
    "The ring or the retransmit buffer is full until subscribers catch up: retry, or pass a timeout."
);
create_exception!(
    memstreamer,
    NotConnected,
    MemstreamerError,
    "A network publisher got no answer from its subscriber or node in time."
);
create_exception!(
    memstreamer,
    Closed,
    MemstreamerError,
    "The handle was closed (or its session ended): create a new one."
);
create_exception!(
    memstreamer,
    RecordTooLarge,
    MemstreamerError,
    "A record larger than the ring (or the frame) takes: split it or use a larger ring."
);
create_exception!(
    memstreamer,
    RingError,
    MemstreamerError,
    "A ring could not be created, opened or attached to."
);
create_exception!(
    memstreamer,
    Evicted,
    MemstreamerError,
    "The subscriber missed heartbeats and lost its place: create a new Subscriber."
);
create_exception!(
    memstreamer,
    ClaimExpired,
    MemstreamerError,
    "A claim was held past the ring's claim timeout and aborted: offer the record again."
);
create_exception!(
    memstreamer,
    RecordViewEscaped,
    MemstreamerError,
    "A buffer taken from a record view outlived the callback: copy with bytes(view) instead."
);
create_exception!(
    memstreamer,
    Busy,
    MemstreamerError,
    "The handle is in use by another call (its own callback, or another thread)."
);
create_exception!(
    memstreamer,
    NetworkError,
    MemstreamerError,
    "A socket could not be set up (address, port, configuration)."
);

/// Registers the exception classes on the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("MemstreamerError", py.get_type::<MemstreamerError>())?;
    m.add("BackPressured", py.get_type::<BackPressured>())?;
    m.add("NotConnected", py.get_type::<NotConnected>())?;
    m.add("Closed", py.get_type::<Closed>())?;
    m.add("RecordTooLarge", py.get_type::<RecordTooLarge>())?;
    m.add("RingError", py.get_type::<RingError>())?;
    m.add("Evicted", py.get_type::<Evicted>())?;
    m.add("ClaimExpired", py.get_type::<ClaimExpired>())?;
    m.add("RecordViewEscaped", py.get_type::<RecordViewEscaped>())?;
    m.add("Busy", py.get_type::<Busy>())?;
    m.add("NetworkError", py.get_type::<NetworkError>())?;
    Ok(())
}

pub fn closed(what: &str) -> PyErr {
    Closed::new_err(format!("this {what} is closed: create a new one"))
}

pub fn busy(what: &str) -> PyErr {
    Busy::new_err(format!(
        "this {what} is in use by another call (its own callback, or another thread): \
         use one {what} per thread and do not call it from its own callback"
    ))
}

pub fn offer(e: OfferError) -> PyErr {
    match e {
        OfferError::BackPressured => BackPressured::new_err(e.to_string()),
        OfferError::MessageTooLarge { .. } => RecordTooLarge::new_err(e.to_string()),
        OfferError::PublisherEvicted => Closed::new_err(e.to_string()),
    }
}

pub fn commit(e: CommitError) -> PyErr {
    ClaimExpired::new_err(e.to_string())
}

pub fn create(e: PublisherCreateError) -> PyErr {
    RingError::new_err(e.to_string())
}

pub fn poll(e: SubscriberPollError) -> PyErr {
    match e {
        SubscriberPollError::Ring {
            source: sdk::PollError::Evicted,
            ..
        } => Evicted::new_err(e.to_string()),
        _ => RingError::new_err(e.to_string()),
    }
}

pub fn net_offer(e: NetOfferError) -> PyErr {
    match e {
        NetOfferError::TooLarge { .. } => RecordTooLarge::new_err(e.to_string()),
        NetOfferError::BackPressured => BackPressured::new_err(e.to_string()),
        NetOfferError::Closed | NetOfferError::Refused { .. } => Closed::new_err(e.to_string()),
    }
}

pub fn net_publisher(e: UdpPublisherCreateError) -> PyErr {
    NetworkError::new_err(e.to_string())
}

pub fn net_subscriber(e: UdpSubscriberCreateError) -> PyErr {
    NetworkError::new_err(e.to_string())
}
