//! Typed zero-copy messages with rkyv 0.8.
//!
//! A [`TypedPublisher<T>`] archives a `T` into a ring record tagged with a
//! `type_id`; a [`TypedSubscriber<T>`] hands the handler an `&Archived<T>` that
//! points into the ring itself, after bytecheck validation (`rkyv::access`).
//! Bytes that do not validate are counted in [`TypedStats::invalid`], never
//! a panic; records with another `type_id` are counted and skipped.
//!
//! Two ways to publish:
//! - [`TypedPublisher::publish`] (in place): a sizing pass (a writer that
//!   only counts bytes), then claim exactly that length and serialize straight
//!   into the claimed ring buffer (no copy). The ring needs the exact length
//!   at claim time and rkyv only knows it after serializing, hence the sizing
//!   pass.
//! - [`TypedPublisher::publish_via_scratch`]: serialize into a reusable
//!   16-byte-aligned scratch buffer, then claim and copy it in (one
//!   serialization + one memcpy).
//!
//! `benches/benches/ring.rs` compares the two; in place was faster for both a
//! flat 40-byte struct and a struct with a string and a 10-element vector.
//!
//! Neither allocates per message after warm-up: the scratch buffer and
//! rkyv's arena keep their capacity.
//!
//! Alignment: rkyv lays the archive out relative to the start of the record
//! payload. When a payload's address is not a multiple of the archived type's
//! alignment, the subscriber copies it into an aligned scratch buffer first
//! (counted in [`TypedStats::realigned`]) instead of failing.

use std::marker::PhantomData;

use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor::{self, Failure};
use rkyv::ser::allocator::{Arena, ArenaHandle};
use rkyv::ser::writer::Positional;
use rkyv::ser::Writer;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Portable, Serialize};
use shm_ring::{CommitError, OfferError, Record};

use crate::{Publisher, Subscriber, SubscriberPollError};

/// Alignment of the scratch buffers (rkyv's default; covers u128/f64 archives).
pub const SCRATCH_ALIGN_BYTES: usize = 16;

type Scratch = AlignedVec<SCRATCH_ALIGN_BYTES>;
type Ser<'a, W> = HighSerializer<W, ArenaHandle<'a>, rancor::Error>;

/// Types a [`TypedPublisher`] can archive (any `#[derive(rkyv::Archive, rkyv::Serialize)]`).
pub trait Publishable:
    Archive
    + for<'a> Serialize<Ser<'a, Scratch>>
    + for<'a> Serialize<Ser<'a, SizeCounter>>
    + for<'a, 'b> Serialize<Ser<'a, SliceWriter<'b>>>
{
}
impl<T> Publishable for T where
    T: Archive
        + for<'a> Serialize<Ser<'a, Scratch>>
        + for<'a> Serialize<Ser<'a, SizeCounter>>
        + for<'a, 'b> Serialize<Ser<'a, SliceWriter<'b>>>
{
}

/// Types a [`TypedSubscriber`] can validate and read in place
/// (`#[derive(rkyv::Archive)]` with rkyv's default `bytecheck` feature).
pub trait Readable:
    Archive<Archived: Portable + for<'a> CheckBytes<HighValidator<'a, Failure>>>
{
}
impl<T> Readable for T where
    T: Archive<Archived: Portable + for<'a> CheckBytes<HighValidator<'a, Failure>>>
{
}

/// Why a typed publish failed. `Offer(BackPressured)` is the usual one: retry.
#[derive(Debug, thiserror::Error)]
pub enum TypedPublishError {
    #[error("rkyv could not serialize the value: {0} (check the type's Serialize impl)")]
    Serialize(rancor::Error),
    #[error(transparent)]
    Offer(#[from] OfferError),
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error("archive changed size between the sizing pass ({sized} bytes) and the write ({written} bytes); the type's Serialize impl is not deterministic")]
    SizeChanged { sized: usize, written: usize },
}

/// A writer that only counts bytes: the sizing pass of `TypedPublisher::publish`.
#[derive(Debug, Default)]
pub struct SizeCounter {
    len: usize,
}

impl Positional for SizeCounter {
    fn pos(&self) -> usize {
        self.len
    }
}

impl<E> Writer<E> for SizeCounter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.len += bytes.len();
        Ok(())
    }
}

/// A writer into a fixed slice (the claimed ring buffer).
#[derive(Debug)]
pub struct SliceWriter<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("archive does not fit the claimed {0} bytes")]
struct SliceFull(usize);

impl Positional for SliceWriter<'_> {
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E: rancor::Source> Writer<E> for SliceWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        let end = self.pos + bytes.len();
        let Some(dst) = self.buf.get_mut(self.pos..end) else {
            return Err(E::new(SliceFull(self.buf.len())));
        };
        dst.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }
}

/// Publishes archived `T`s tagged with `type_id`.
pub struct TypedPublisher<T> {
    publisher: Publisher,
    type_id: u16,
    scratch: Scratch,
    arena: Arena,
    _t: PhantomData<fn(&T)>,
}

impl<T: Publishable> TypedPublisher<T> {
    pub fn new(publisher: Publisher, type_id: u16) -> Self {
        Self {
            publisher,
            type_id,
            scratch: Scratch::new(),
            arena: Arena::new(),
            _t: PhantomData,
        }
    }

    /// Serializes into the reusable scratch buffer, then claims exactly that
    /// length and copies it in; returns the offset.
    pub fn publish_via_scratch(&mut self, value: &T) -> Result<u64, TypedPublishError> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let buf = rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(
            value,
            buf,
            self.arena.acquire(),
        )
        .map_err(TypedPublishError::Serialize)?;
        let result = match self.publisher.claim(buf.len()) {
            Ok(mut claim) => {
                claim.set_type(self.type_id);
                claim.buffer().copy_from_slice(&buf);
                claim.commit().map_err(TypedPublishError::from)
            }
            Err(e) => Err(e.into()),
        };
        self.scratch = buf;
        result
    }

    /// Sizes the archive (a counting pass), claims exactly that length and
    /// serializes straight into the claimed ring buffer; returns the offset.
    /// The default: faster than `publish_via_scratch` in `benches/benches/ring.rs`.
    pub fn publish(&mut self, value: &T) -> Result<u64, TypedPublishError> {
        let sized = rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(
            value,
            SizeCounter::default(),
            self.arena.acquire(),
        )
        .map_err(TypedPublishError::Serialize)?
        .len;
        let mut claim = self.publisher.claim(sized)?;
        claim.set_type(self.type_id);
        let writer = SliceWriter {
            buf: claim.buffer(),
            pos: 0,
        };
        // On error the claim is dropped, which aborts it (no hole in the ring).
        let written = rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(
            value,
            writer,
            self.arena.acquire(),
        )
        .map_err(TypedPublishError::Serialize)?
        .pos;
        if written != sized {
            return Err(TypedPublishError::SizeChanged { sized, written });
        }
        Ok(claim.commit()?)
    }

    pub fn type_id(&self) -> u16 {
        self.type_id
    }

    pub fn publisher(&mut self) -> &mut Publisher {
        &mut self.publisher
    }
}

/// What a typed subscriber saw, cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TypedStats {
    /// Records validated and handed to the handler.
    pub delivered: u64,
    /// Records with this subscriber's type id whose bytes failed validation.
    pub invalid: u64,
    /// Records with another type id (skipped).
    pub wrong_type: u64,
    /// Records copied to an aligned buffer before validation.
    pub realigned: u64,
}

/// Reads archived `T`s in place: the handler gets the raw record and `&Archived<T>`.
pub struct TypedSubscriber<T> {
    subscriber: Subscriber,
    type_id: u16,
    realign: Scratch,
    stats: TypedStats,
    _t: PhantomData<fn() -> T>,
}

impl<T: Readable> TypedSubscriber<T> {
    pub fn new(subscriber: Subscriber, type_id: u16) -> Self {
        Self {
            subscriber,
            type_id,
            realign: Scratch::new(),
            stats: TypedStats::default(),
            _t: PhantomData,
        }
    }

    /// Delivers up to `limit` records (of any type; only valid ones of this
    /// type reach `handler`); returns how many records were consumed.
    pub fn poll<F>(&mut self, mut handler: F, limit: usize) -> Result<usize, SubscriberPollError>
    where
        F: FnMut(&Record<'_>, &T::Archived),
    {
        let type_id = self.type_id;
        let realign = &mut self.realign;
        let stats = &mut self.stats;
        self.subscriber.poll(
            |r| {
                if r.type_id != type_id {
                    stats.wrong_type += 1;
                    return;
                }
                let align = std::mem::align_of::<T::Archived>();
                let bytes = if r.payload.as_ptr().addr() % align == 0 {
                    r.payload
                } else {
                    stats.realigned += 1;
                    realign.clear();
                    realign.extend_from_slice(r.payload);
                    &realign[..]
                };
                match rkyv::access::<T::Archived, Failure>(bytes) {
                    Ok(value) => {
                        stats.delivered += 1;
                        handler(r, value);
                    }
                    Err(_) => stats.invalid += 1,
                }
            },
            limit,
        )
    }

    pub fn stats(&self) -> TypedStats {
        self.stats
    }

    pub fn subscriber(&mut self) -> &mut Subscriber {
        &mut self.subscriber
    }
}

/// Validates `bytes` as an archived `T` (what the subscriber does per record).
pub fn access<T: Readable>(bytes: &[u8]) -> Option<&T::Archived> {
    rkyv::access::<T::Archived, Failure>(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(rkyv::Archive, rkyv::Serialize, Debug, PartialEq)]
    struct Quote {
        instrument: u32,
        price: i64,
        venue: String,
        levels: Vec<u32>,
    }

    fn sample() -> Quote {
        Quote {
            instrument: 42,
            price: -12_345,
            venue: "XLON".into(),
            levels: vec![1, 2, 3],
        }
    }

    #[test]
    fn size_counter_matches_the_real_archive_length() {
        let mut arena = Arena::new();
        let counted = rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(
            &sample(),
            SizeCounter::default(),
            arena.acquire(),
        )
        .unwrap()
        .len;
        let bytes = rkyv::to_bytes::<rancor::Error>(&sample()).unwrap();
        assert_eq!(counted, bytes.len());
    }

    #[test]
    fn slice_writer_output_validates_and_reports_overflow() {
        let mut arena = Arena::new();
        let len = rkyv::to_bytes::<rancor::Error>(&sample()).unwrap().len();
        let mut buf = Scratch::with_capacity(len);
        buf.resize(len, 0);
        let w = rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(
            &sample(),
            SliceWriter {
                buf: &mut buf[..],
                pos: 0,
            },
            arena.acquire(),
        )
        .unwrap();
        assert_eq!(w.pos, len);
        let q = access::<Quote>(&buf).expect("valid archive");
        assert_eq!(q.venue, "XLON");
        assert_eq!(q.levels.len(), 3);

        let mut small = [0u8; 8];
        let r = rkyv::api::high::to_bytes_in_with_alloc::<_, _, rancor::Error>(
            &sample(),
            SliceWriter {
                buf: &mut small,
                pos: 0,
            },
            arena.acquire(),
        );
        assert!(
            r.is_err(),
            "an archive larger than the slice is an error, not a panic"
        );
    }

    #[test]
    fn garbage_does_not_validate() {
        let mut buf = Scratch::new();
        buf.extend_from_slice(&[0xffu8; 64]);
        assert!(access::<Quote>(&buf).is_none());
        assert!(access::<Quote>(&[]).is_none());
    }
}
