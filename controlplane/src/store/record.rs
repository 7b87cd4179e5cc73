//! On-disk framing shared by the log file and snapshot files.
//!
//! Every file starts with a 16-byte header, then length-prefixed records:
//!
//! ```text
//! file header (16 bytes)
//! +--------+--------+---------+----------+
//! | 0..8   | 8..12  | 12..16  |          |
//! | magic  | version| reserved|          |
//! +--------+--------+---------+----------+
//!
//! record (12-byte header + payload)
//! +------------+-----------+------+----------+---------------------+
//! | 0..4       | 4..8      | 8    | 9..12    | 12..12+payload_len  |
//! | payload_len| crc32     | kind | reserved | payload (JSON)      |
//! +------------+-----------+------+----------+---------------------+
//! ```
//!
//! All integers are little-endian. The CRC-32 covers the kind byte and the
//! payload. A record whose length runs past the end of the file or whose CRC
//! does not match ends the readable file: it is a torn write that was never
//! acknowledged (acknowledgement follows `fdatasync`).

use std::io::{self, Read, Write};

/// Offset of the magic in the file header.
pub const FILE_MAGIC_OFFSET: usize = 0;
/// Offset of the format version in the file header.
pub const FILE_VERSION_OFFSET: usize = 8;
/// Offset of the reserved word in the file header.
pub const FILE_RESERVED_OFFSET: usize = 12;
/// File header size.
pub const FILE_HEADER_BYTES: usize = 16;

/// Offset of the payload length in a record header.
pub const RECORD_LEN_OFFSET: usize = 0;
/// Offset of the CRC-32 in a record header.
pub const RECORD_CRC_OFFSET: usize = 4;
/// Offset of the kind byte in a record header.
pub const RECORD_KIND_OFFSET: usize = 8;
/// Offset of the first payload byte.
pub const RECORD_PAYLOAD_OFFSET: usize = 12;
/// Largest record payload we write or accept.
pub const RECORD_PAYLOAD_BYTES_MAX: u32 = 64 << 20;

/// Format version of every control-plane file.
pub const FORMAT_VERSION: u32 = 1;

const _: () = assert!(FILE_RESERVED_OFFSET + 4 == FILE_HEADER_BYTES);
const _: () = assert!(FILE_MAGIC_OFFSET + 8 == FILE_VERSION_OFFSET);
const _: () = assert!(RECORD_KIND_OFFSET + 4 == RECORD_PAYLOAD_OFFSET);
const _: () = assert!(RECORD_LEN_OFFSET + 4 == RECORD_CRC_OFFSET);

/// Builds the file header for `magic`.
pub fn file_header(magic: &[u8; 8]) -> [u8; FILE_HEADER_BYTES] {
    let mut h = [0u8; FILE_HEADER_BYTES];
    h[FILE_MAGIC_OFFSET..FILE_VERSION_OFFSET].copy_from_slice(magic);
    h[FILE_VERSION_OFFSET..FILE_RESERVED_OFFSET].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Checks a file header.
pub fn check_file_header(h: &[u8], magic: &[u8; 8]) -> io::Result<()> {
    if h.len() < FILE_HEADER_BYTES || &h[FILE_MAGIC_OFFSET..FILE_VERSION_OFFSET] != magic {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a control-plane file (bad magic): point data_dir at a control-plane directory",
        ));
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&h[FILE_VERSION_OFFSET..FILE_RESERVED_OFFSET]);
    let version = u32::from_le_bytes(v);
    if version != FORMAT_VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file format version {version}, this build reads {FORMAT_VERSION}: use a matching build"),
        ));
    }
    Ok(())
}

fn crc(kind: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    h.finalize()
}

/// Appends one record to `buf`.
pub fn encode(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= RECORD_PAYLOAD_BYTES_MAX)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "record larger than 64 MiB"))?;
    let start = buf.len();
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&crc(kind, payload).to_le_bytes());
    buf.extend_from_slice(&[kind, 0, 0, 0]);
    buf.extend_from_slice(payload);
    debug_assert_eq!(buf.len() - start, RECORD_PAYLOAD_OFFSET + payload.len());
    Ok(())
}

/// Decodes the records of `data` (file content after the header). Returns the
/// records and the number of bytes that hold valid records.
pub fn decode(data: &[u8]) -> (Vec<(u8, &[u8])>, usize) {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while data.len() - pos >= RECORD_PAYLOAD_OFFSET {
        let h = &data[pos..pos + RECORD_PAYLOAD_OFFSET];
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let sum = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let kind = h[RECORD_KIND_OFFSET];
        if len > RECORD_PAYLOAD_BYTES_MAX {
            break;
        }
        let end = pos + RECORD_PAYLOAD_OFFSET + len as usize;
        if end > data.len() {
            break;
        }
        let payload = &data[pos + RECORD_PAYLOAD_OFFSET..end];
        if crc(kind, payload) != sum {
            break;
        }
        out.push((kind, payload));
        pos = end;
    }
    (out, pos)
}

/// Writes a whole file (header + one record) durably: temp file, fsync,
/// rename, fsync of the directory.
pub fn write_file_atomic(
    path: &std::path::Path,
    magic: &[u8; 8],
    kind: u8,
    payload: &[u8],
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(FILE_HEADER_BYTES + RECORD_PAYLOAD_OFFSET + payload.len());
    buf.extend_from_slice(&file_header(magic));
    encode(&mut buf, kind, payload)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// Reads a file written by [`write_file_atomic`]; `Ok(None)` if absent.
pub fn read_file(path: &std::path::Path, magic: &[u8; 8], kind: u8) -> io::Result<Option<Vec<u8>>> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut data = Vec::new();
    f.read_to_end(&mut data)?;
    check_file_header(&data, magic)?;
    let (recs, _) = decode(&data[FILE_HEADER_BYTES..]);
    match recs.first() {
        Some((k, p)) if *k == kind => Ok(Some(p.to_vec())),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is damaged (no valid record): restore it from a peer by removing it",
                path.display()
            ),
        )),
    }
}

/// fsyncs the directory holding `path` so a rename or create is durable.
pub fn sync_dir(path: &std::path::Path) -> io::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_and_corrupt_tails_end_the_log() {
        let mut buf = Vec::new();
        encode(&mut buf, 1, b"hello").unwrap();
        encode(&mut buf, 2, b"world").unwrap();
        let full = buf.len();
        let (recs, valid) = decode(&buf);
        assert_eq!(recs, vec![(1, &b"hello"[..]), (2, &b"world"[..])]);
        assert_eq!(valid, full);
        let (recs, valid) = decode(&buf[..full - 1]);
        assert_eq!(recs.len(), 1);
        assert_eq!(valid, RECORD_PAYLOAD_OFFSET + 5);
        buf[full - 1] ^= 0xff;
        assert_eq!(decode(&buf).0.len(), 1);
    }
}
