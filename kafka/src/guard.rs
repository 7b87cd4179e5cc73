//! A structural walk of a request body before `kafka-protocol` decodes it.
//!
//! `kafka-protocol` 0.18 sizes each array with `Vec::with_capacity(count)` straight from the
//! wire (upstream kafka-protocol-rs PRs #152/#161/#200, open): a 10-byte request declaring
//! 2^31 elements makes it ask for tens of GiB, and a failed allocation aborts the process —
//! no error, no panic to catch. So every request of an API we serve is first walked here,
//! field by field for its version: every array's elements, string and byte lengths are
//! checked against the bytes present. A body that walks cleanly declares nothing it does not
//! contain, so decoding allocates no more than the frame holds. Flexible versions (compact
//! lengths, tagged fields) are walked too.

use kafka_protocol::messages::ApiKey;

/// Why a request body is malformed (the connection is closed, as Kafka does).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("request truncated at byte {at}: {needed} more bytes needed")]
    Truncated { at: usize, needed: usize },
    #[error("invalid length {len} at byte {at}")]
    Length { at: usize, len: i64 },
    #[error("varint longer than 5 bytes at byte {at}")]
    Varint { at: usize },
    #[error("{extra} bytes follow the request body")]
    Trailing { extra: usize },
    #[error("API {api:?} v{version} has no walk: it is not served")]
    NotServed { api: ApiKey, version: i16 },
}

struct Walk<'a> {
    b: &'a [u8],
    at: usize,
    flexible: bool,
}

impl<'a> Walk<'a> {
    fn skip(&mut self, n: usize) -> Result<(), GuardError> {
        let left = self.b.len() - self.at;
        if n > left {
            return Err(GuardError::Truncated {
                at: self.at,
                needed: n - left,
            });
        }
        self.at += n;
        Ok(())
    }
    fn int(&mut self, n: usize) -> Result<i64, GuardError> {
        let at = self.at;
        self.skip(n)?;
        let mut v: i64 = if self.b[at] & 0x80 != 0 { -1 } else { 0 };
        for &x in &self.b[at..at + n] {
            v = (v << 8) | i64::from(x);
        }
        Ok(v)
    }
    fn uvarint(&mut self) -> Result<u64, GuardError> {
        let start = self.at;
        let mut v = 0u64;
        for i in 0..5 {
            let at = self.at;
            self.skip(1)?;
            let x = self.b[at];
            v |= u64::from(x & 0x7f) << (7 * i);
            if x & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(GuardError::Varint { at: start })
    }
    /// A length whose null value is -1 (classic) or 0 (compact); returns the byte count.
    fn len(&mut self, classic_bytes: usize) -> Result<usize, GuardError> {
        let at = self.at;
        let len = if self.flexible {
            self.uvarint()? as i64 - 1
        } else {
            self.int(classic_bytes)?
        };
        match len {
            -1 => Ok(0),
            n if n >= 0 => Ok(n as usize),
            n => Err(GuardError::Length { at, len: n }),
        }
    }
    fn string(&mut self) -> Result<(), GuardError> {
        let n = self.len(2)?;
        self.skip(n)
    }
    fn bytes(&mut self) -> Result<(), GuardError> {
        let n = self.len(4)?;
        self.skip(n)
    }
    /// An array's element count, at most the bytes left (each element takes at least one).
    fn array(&mut self) -> Result<usize, GuardError> {
        let at = self.at;
        let n = self.len(4)?;
        if n > self.b.len() - self.at {
            return Err(GuardError::Length { at, len: n as i64 });
        }
        Ok(n)
    }
    fn tagged(&mut self) -> Result<(), GuardError> {
        if !self.flexible {
            return Ok(());
        }
        let count = self.uvarint()?;
        for _ in 0..count {
            self.uvarint()?;
            let size = self.uvarint()? as usize;
            self.skip(size)?;
        }
        Ok(())
    }
    fn each(
        &mut self,
        mut f: impl FnMut(&mut Self) -> Result<(), GuardError>,
    ) -> Result<(), GuardError> {
        for _ in 0..self.array()? {
            f(self)?;
        }
        Ok(())
    }
}

/// First flexible version of each API we serve (compact lengths and tagged fields).
fn flexible_from(api: ApiKey) -> i16 {
    match api {
        ApiKey::Produce => 9,
        ApiKey::Fetch => 12,
        ApiKey::ListOffsets => 6,
        ApiKey::Metadata => 9,
        ApiKey::CreateTopics => 5,
        ApiKey::DeleteTopics => 4,
        ApiKey::ApiVersions => 3,
        _ => i16::MAX,
    }
}

/// Walks `body` (the request after its header) as `api` version `version`.
pub fn check_body(api: ApiKey, version: i16, body: &[u8]) -> Result<(), GuardError> {
    let mut w = Walk {
        b: body,
        at: 0,
        flexible: version >= flexible_from(api),
    };
    let v = version;
    match api {
        ApiKey::ApiVersions => api_versions(&mut w, v),
        ApiKey::Metadata if v <= 9 => metadata(&mut w, v),
        ApiKey::Produce if (3..=9).contains(&v) => produce(&mut w),
        ApiKey::Fetch if (4..=12).contains(&v) => fetch(&mut w, v),
        ApiKey::ListOffsets if (1..=6).contains(&v) => list_offsets(&mut w, v),
        ApiKey::CreateTopics if (2..=5).contains(&v) => create_topics(&mut w),
        ApiKey::DeleteTopics if (1..=5).contains(&v) => delete_topics(&mut w),
        _ => Err(GuardError::NotServed { api, version }),
    }?;
    match body.len() - w.at {
        0 => Ok(()),
        extra => Err(GuardError::Trailing { extra }),
    }
}

fn api_versions(w: &mut Walk<'_>, v: i16) -> Result<(), GuardError> {
    if v >= 3 {
        w.string()?;
        w.string()?;
    }
    w.tagged()
}

fn metadata(w: &mut Walk<'_>, v: i16) -> Result<(), GuardError> {
    w.each(|w| {
        w.string()?;
        w.tagged()
    })?;
    if v >= 4 {
        w.skip(1)?;
    }
    if v >= 8 {
        w.skip(2)?;
    }
    w.tagged()
}

fn produce(w: &mut Walk<'_>) -> Result<(), GuardError> {
    w.string()?; // transactional id
    w.skip(2 + 4)?; // acks, timeout
    w.each(|w| {
        w.string()?;
        w.each(|w| {
            w.skip(4)?;
            w.bytes()?;
            w.tagged()
        })?;
        w.tagged()
    })?;
    w.tagged()
}

fn fetch(w: &mut Walk<'_>, v: i16) -> Result<(), GuardError> {
    w.skip(4 + 4 + 4 + 4 + 1)?; // replica, max wait, min bytes, max bytes, isolation
    if v >= 7 {
        w.skip(4 + 4)?; // session id, epoch
    }
    w.each(|w| {
        w.string()?;
        w.each(|w| {
            w.skip(4)?; // partition
            if v >= 9 {
                w.skip(4)?; // current leader epoch
            }
            w.skip(8)?; // fetch offset
            if v >= 12 {
                w.skip(4)?; // last fetched epoch
            }
            if v >= 5 {
                w.skip(8)?; // log start offset
            }
            w.skip(4)?; // partition max bytes
            w.tagged()
        })?;
        w.tagged()
    })?;
    if v >= 7 {
        w.each(|w| {
            w.string()?;
            let n = w.array()?;
            w.skip(4 * n)?;
            w.tagged()
        })?;
    }
    if v >= 11 {
        w.string()?; // rack id
    }
    w.tagged()
}

fn list_offsets(w: &mut Walk<'_>, v: i16) -> Result<(), GuardError> {
    w.skip(4)?; // replica id
    if v >= 2 {
        w.skip(1)?; // isolation level
    }
    w.each(|w| {
        w.string()?;
        w.each(|w| {
            w.skip(4)?;
            if v >= 4 {
                w.skip(4)?;
            }
            w.skip(8)?;
            w.tagged()
        })?;
        w.tagged()
    })?;
    w.tagged()
}

fn create_topics(w: &mut Walk<'_>) -> Result<(), GuardError> {
    w.each(|w| {
        w.string()?;
        w.skip(4 + 2)?; // partitions, replication factor
        w.each(|w| {
            w.skip(4)?;
            let n = w.array()?;
            w.skip(4 * n)?;
            w.tagged()
        })?;
        w.each(|w| {
            w.string()?;
            w.string()?;
            w.tagged()
        })?;
        w.tagged()
    })?;
    w.skip(4 + 1)?; // timeout, validate only
    w.tagged()
}

fn delete_topics(w: &mut Walk<'_>) -> Result<(), GuardError> {
    w.each(|w| w.string())?;
    w.skip(4)?;
    w.tagged()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_declared_array_is_refused_before_decoding() {
        // Metadata v0: topics array declaring 54,265,856 entries in 5 bytes.
        let body = [0x03, 0x3c, 0x0c, 0x00, 0xb6];
        assert!(matches!(
            check_body(ApiKey::Metadata, 0, &body),
            Err(GuardError::Length { at: 0, .. })
        ));
        // Compact (v9): the same trick with a varint count.
        let body = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(check_body(ApiKey::Metadata, 9, &body).is_err());
    }

    #[test]
    fn well_formed_bodies_walk_to_their_end() {
        // Metadata v1, topics ["ab"]; then a null topic list.
        assert_eq!(
            check_body(ApiKey::Metadata, 1, &[0, 0, 0, 1, 0, 2, b'a', b'b']),
            Ok(())
        );
        assert_eq!(
            check_body(ApiKey::Metadata, 1, &[0xff, 0xff, 0xff, 0xff]),
            Ok(())
        );
        assert_eq!(
            check_body(ApiKey::Metadata, 1, &[0, 0, 0, 0, 9]),
            Err(GuardError::Trailing { extra: 1 })
        );
        assert_eq!(check_body(ApiKey::ApiVersions, 0, &[]), Ok(()));
        assert!(matches!(
            check_body(ApiKey::Produce, 2, &[]),
            Err(GuardError::NotServed { .. })
        ));
    }
}
