//! Thin file adapters around the sans-IO pieces: creating segment files, listing a partition
//! directory, loading/saving index files, scanning a segment file and truncating a torn tail.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::index::{decode_index, encode_index, IndexCheckpoint, IndexCursor, SparseIndex};
use crate::layout::*;
use crate::scan::{scan_window, ScanStop};

/// A file-level error naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct FileError {
    pub what: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

pub(crate) fn ferr<'p>(
    what: &'static str,
    path: &'p Path,
) -> impl FnOnce(io::Error) -> FileError + 'p {
    move |source| FileError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What a partition directory holds.
#[derive(Debug, Default)]
pub struct DirListing {
    /// Segment base offsets, ascending.
    pub segments: Vec<u64>,
    /// Index files (base, ext) found.
    pub index_files: Vec<(u64, String)>,
    /// Temporary index files of ours left by a crash mid-write.
    pub temp: Vec<PathBuf>,
    /// Files that are not ours.
    pub foreign: Vec<PathBuf>,
}

/// Lists a partition directory.
pub fn list_dir(dir: &Path) -> Result<DirListing, FileError> {
    let mut out = DirListing::default();
    for e in fs::read_dir(dir).map_err(ferr("cannot list directory", dir))? {
        let e = e.map_err(ferr("cannot list directory", dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            out.foreign.push(e.path());
            continue;
        };
        // The lock, the leader-epoch history and a truncation intent (with the temporary
        // names their atomic replace uses) are ours and not segment files.
        if [
            LOCK_FILE_NAME,
            EPOCH_FILE_NAME,
            EPOCH_TEMP_FILE_NAME,
            TRUNCATE_FILE_NAME,
            TRUNCATE_TEMP_FILE_NAME,
        ]
        .contains(&name)
        {
            continue;
        }
        let temp_stem = name
            .strip_suffix(TEMP_INDEX_SUFFIX)
            .or_else(|| name.strip_suffix(TEMP_SEGMENT_SUFFIX));
        if let Some(stem) = temp_stem {
            if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
                out.temp.push(e.path());
                continue;
            }
        }
        match parse_file_name(name) {
            Some((base, SEGMENT_EXT)) => out.segments.push(base),
            Some((base, ext)) => out.index_files.push((base, ext.to_string())),
            None => out.foreign.push(e.path()),
        }
    }
    out.segments.sort_unstable();
    Ok(out)
}

/// Suffix of an index file being written (renamed into place when complete).
pub const TEMP_INDEX_SUFFIX: &str = ".tmp-index";
/// Suffix of a segment being created (renamed into place once its header is durable).
pub const TEMP_SEGMENT_SUFFIX: &str = ".tmp-segment";

pub fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(file_name(base, SEGMENT_EXT))
}
pub fn offset_index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(file_name(base, OFFSET_INDEX_EXT))
}
pub fn time_index_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(file_name(base, TIME_INDEX_EXT))
}

/// Replaces `dir/name` with `bytes` atomically: writes `dir/tmp_name`, fdatasyncs it, renames
/// it over `name` and fsyncs the directory. A crash leaves the old file or the new one (and
/// possibly the temporary file, which its owner removes at open).
pub fn replace_file(dir: &Path, tmp_name: &str, name: &str, bytes: &[u8]) -> Result<(), FileError> {
    let tmp = dir.join(tmp_name);
    let path = dir.join(name);
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_data()))
        .map_err(ferr("cannot write temporary file", &tmp))?;
    fs::rename(&tmp, &path).map_err(ferr("cannot rename into place", &path))?;
    sync_dir(dir)
}

/// Fsyncs a directory so created/removed names are durable.
pub fn sync_dir(dir: &Path) -> Result<(), FileError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ferr("cannot fsync directory", dir))
}

/// Creates a preallocated segment file with its header, durable (file and directory).
pub fn create_segment(dir: &Path, header: &SegmentHeader) -> Result<PathBuf, FileError> {
    let path = segment_path(dir, header.base_offset);
    let tmp = path.with_extension(&TEMP_SEGMENT_SUFFIX[1..]);
    let res = (|| {
        let f = create_preallocated(&tmp, header.segment_bytes)?;
        let mut block = vec![0u8; SEGMENT_HEADER_BYTES as usize];
        header.encode(&mut block);
        f.write_all_at(&block, 0)
            .and_then(|_| f.sync_all())
            .map_err(ferr("cannot write segment header", &tmp))?;
        if path.exists() {
            return Err(FileError {
                what: "segment already exists",
                path: path.clone(),
                source: io::ErrorKind::AlreadyExists.into(),
            });
        }
        fs::rename(&tmp, &path).map_err(ferr("cannot rename new segment", &path))?;
        sync_dir(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res.map(|()| path)
}

/// Reads and validates a segment's header.
pub fn read_segment_header(
    f: &File,
) -> io::Result<Result<SegmentHeader, SegmentHeaderDecodeError>> {
    let mut b = [0u8; SEG_HEADER_USED_BYTES];
    let n = read_full_at(f, &mut b, 0)?;
    Ok(SegmentHeader::decode(&b[..n]))
}

/// Opens segment `base` of `dir` for reading and writing and reads its header: the outer error
/// is I/O, the inner one says why the header is not a segment header, and a header whose base
/// offset is not the file name's is refused as well.
pub fn open_segment_with_header(
    dir: &Path,
    base: u64,
) -> Result<(PathBuf, File, Result<SegmentHeader, String>), FileError> {
    let path = segment_path(dir, base);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(ferr("cannot open segment", &path))?;
    let header = match read_segment_header(&file).map_err(ferr("cannot read segment", &path))? {
        Ok(h) if h.base_offset == base => Ok(h),
        Ok(h) => Err(format!(
            "header base offset {} does not match the file name",
            h.base_offset
        )),
        Err(e) => Err(e.to_string()),
    };
    Ok((path, file, header))
}

/// Reads until `buf` is full or end of file; returns bytes read.
pub fn read_full_at(f: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Loads both index files of a segment, or says why they cannot be used.
pub fn load_indexes(
    dir: &Path,
    base: u64,
) -> Result<(IndexCheckpoint, SparseIndex, SparseIndex), String> {
    let op = offset_index_path(dir, base);
    let tp = time_index_path(dir, base);
    let ob = fs::read(&op).map_err(|e| format!("{}: {e}", op.display()))?;
    let tb = fs::read(&tp).map_err(|e| format!("{}: {e}", tp.display()))?;
    let (cp, offs) = decode_index(&ob, OFFSET_INDEX_MAGIC, true)
        .map_err(|e| format!("{}: {e}", op.display()))?;
    let (cp2, times) =
        decode_index(&tb, TIME_INDEX_MAGIC, false).map_err(|e| format!("{}: {e}", tp.display()))?;
    if cp != cp2 || cp.base_offset != base {
        return Err(format!(
            "{}: checkpoint does not match {}",
            tp.display(),
            op.display()
        ));
    }
    Ok((cp, offs, times))
}

/// Writes both index files (via a temporary name and rename, so a crash leaves old or new).
pub fn save_indexes(
    dir: &Path,
    cp: &IndexCheckpoint,
    offs: &[(u64, u64)],
    times: &[(u64, u64)],
    scratch: &mut Vec<u8>,
) -> Result<(), FileError> {
    for (path, magic, idx) in [
        (
            offset_index_path(dir, cp.base_offset),
            OFFSET_INDEX_MAGIC,
            offs,
        ),
        (
            time_index_path(dir, cp.base_offset),
            TIME_INDEX_MAGIC,
            times,
        ),
    ] {
        encode_index(scratch, magic, cp, idx);
        let tmp = path.with_extension(&TEMP_INDEX_SUFFIX[1..]);
        let res = fs::write(&tmp, &scratch[..])
            .and_then(|_| File::open(&tmp)?.sync_all())
            .and_then(|_| fs::rename(&tmp, &path));
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(FileError {
                what: "cannot write index",
                path,
                source: e,
            });
        }
    }
    Ok(())
}

/// Result of scanning a segment file.
#[derive(Clone, Copy, Debug)]
pub struct SegmentScan {
    pub stop: ScanStop,
    /// File position right after the last valid batch.
    pub end_position: u64,
    /// Offset after the last valid batch.
    pub next_offset: u64,
}

/// Scans a segment file from `position` (expecting `next_offset`), verifying every batch and
/// extending the indexes. Reads through a window of `window_bytes`.
pub fn scan_segment(
    f: &File,
    file_len: u64,
    position: u64,
    next_offset: u64,
    window_bytes: usize,
    (cursor, offs, times): (&mut IndexCursor, &mut SparseIndex, &mut SparseIndex),
) -> io::Result<SegmentScan> {
    let window_bytes = window_bytes
        .max(BATCH_BYTES_MAX.min(1 << 20))
        .max(BLOCK_BYTES as usize);
    let mut window = vec![0u8; window_bytes];
    let (mut pos, mut next) = (position, next_offset);
    loop {
        let want = (file_len.saturating_sub(pos) as usize).min(window.len());
        let n = read_full_at(f, &mut window[..want], pos)?;
        let (stop, p, o) = scan_window(&window[..n], pos, pos, next, file_len, |b| {
            cursor.note_batch(
                offs,
                times,
                b.base_offset,
                b.position,
                b.batch_bytes,
                b.max_timestamp_ns,
            );
        });
        match stop {
            ScanStop::NeedMore { batch_bytes, .. } => {
                if p > pos {
                    pos = p;
                    next = o;
                    continue;
                }
                // No progress: the batch at `pos` does not fit in what was read.
                let needed = batch_bytes.unwrap_or(BATCH_HEADER_BYTES as u64) as usize;
                if needed > window.len() {
                    window.resize(needed.next_multiple_of(BLOCK_BYTES as usize), 0);
                    continue;
                }
                // The window could hold it: the file ends mid-batch.
                return Ok(SegmentScan {
                    stop: ScanStop::PastLimit { position: p },
                    end_position: p,
                    next_offset: o,
                });
            }
            stop => {
                return Ok(SegmentScan {
                    stop,
                    end_position: p,
                    next_offset: o,
                })
            }
        }
    }
}

/// End (exclusive) of the last non-zero byte in `[from, to)` of the file, if any.
pub fn last_nonzero(f: &File, from: u64, to: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = from;
    let mut last = None;
    while pos < to {
        let want = ((to - pos) as usize).min(buf.len());
        let n = read_full_at(f, &mut buf[..want], pos)?;
        if n == 0 {
            break;
        }
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            last = Some(pos + i as u64 + 1);
        }
        pos += n as u64;
    }
    Ok(last)
}

/// Cuts a segment back to `end` and preallocates it again to `segment_bytes`, so everything
/// after `end` reads as zeros; durable on return.
pub fn truncate_tail(f: &File, path: &Path, end: u64, segment_bytes: u64) -> Result<(), FileError> {
    f.set_len(end)
        .map_err(ferr("cannot truncate torn tail of", path))?;
    fallocate(f, path, segment_bytes)?;
    f.sync_all().map_err(ferr("cannot fsync segment", path))
}

/// Creates (or truncates) `path` and preallocates `bytes` of it. Not yet durable.
pub fn create_preallocated(path: &Path, bytes: u64) -> Result<File, FileError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(ferr("cannot create segment", path))?;
    fallocate(&f, path, bytes)?;
    Ok(f)
}

/// Preallocates `bytes` of `f` (unwritten extents: they read as zeros). Not yet durable.
pub fn fallocate(f: &File, path: &Path, bytes: u64) -> Result<(), FileError> {
    crate::io::fallocate(f, bytes).map_err(ferr("cannot preallocate segment", path))
}
