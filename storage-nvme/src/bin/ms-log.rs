//! `ms-log`: operate a storage-nvme partition log from the shell.
//!
//! ```text
//! ms-log append <dir> [--records N] [--seed S] [--payload-max B] [--batch-records N]
//!                     [--segment-bytes B] [--buffer-bytes B] [--write-bytes B]
//!                     [--checkpoint-bytes B] [--pwrite]
//!     Appends N deterministic records (storage_nvme::pattern) after the log's end, one flush
//!     per batch, printing `durable <offset>` each time the durable offset advances.
//! ms-log dump <dir> [--from OFFSET] [--timestamp NS]
//!     Prints one line per batch: base offset, records, bytes, max timestamp.
//! ms-log verify <dir> [--seed S --payload-max B]
//!     Reads every batch (CRC32C-checked); with --seed also checks each payload against the
//!     pattern. Exit status 1 on any error.
//! ms-log truncate <dir> --to OFFSET [--segment-bytes B]
//!     Cuts every record at or after OFFSET (at a batch boundary at or below it) and the
//!     leader epochs starting there, crash-safe (`Log::close_and_truncate`); prints
//!     `opened <end>`, then `truncated <new end>`. A replica's divergent suffix, cut by hand.
//! ```
#![forbid(unsafe_code)]

use std::io::Write;
use std::process::ExitCode;

use storage_nvme::{pattern, AlignedBuf, IoMode, Log, LogConfig, Reader, Record};

struct Args {
    positional: Vec<String>,
    flags: Vec<(String, Option<String>)>,
}

impl Args {
    fn parse() -> Self {
        let mut positional = Vec::new();
        let mut flags = Vec::new();
        let mut it = std::env::args().skip(1).peekable();
        while let Some(a) = it.next() {
            if let Some(name) = a.strip_prefix("--") {
                let value = if it.peek().is_some_and(|v| !v.starts_with("--")) {
                    it.next()
                } else {
                    None
                };
                flags.push((name.to_string(), value));
            } else {
                positional.push(a);
            }
        }
        Self { positional, flags }
    }
    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == name)
    }
    fn num(&self, name: &str, default: u64) -> Result<u64, String> {
        match self.flags.iter().find(|(n, _)| n == name) {
            None => Ok(default),
            Some((_, Some(v))) => v
                .parse()
                .map_err(|_| format!("--{name}: not a number: {v}")),
            Some((_, None)) => Err(format!("--{name} needs a value")),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let res = match args.positional.first().map(String::as_str) {
        Some("append") => append(&args),
        Some("dump") => dump(&args),
        Some("verify") => verify(&args),
        Some("truncate") => truncate(&args),
        _ => Err(
            "usage: ms-log append|dump|verify|truncate <dir> [options] (see the crate docs)"
                .to_string(),
        ),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ms-log: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dir(args: &Args) -> Result<&str, String> {
    args.positional
        .get(1)
        .map(String::as_str)
        .ok_or_else(|| "missing <dir>".to_string())
}

fn truncate(args: &Args) -> Result<(), String> {
    if !args.has("to") {
        return Err("truncate needs --to OFFSET".to_string());
    }
    let to = args.num("to", 0)?;
    let segment_bytes = args.num("segment-bytes", 64 << 20)?;
    // Nothing is appended: the batch limit only has to fit the segment.
    let cfg = LogConfig {
        segment_bytes,
        batch_bytes_max: (segment_bytes / 4).min(1 << 20),
        ..LogConfig::default()
    };
    let (log, _) = Log::open(dir(args)?, cfg).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "opened {}", log.next_offset()).and_then(|()| out.flush());
    let end = log.close_and_truncate(to).map_err(|e| e.to_string())?;
    let _ = writeln!(out, "truncated {end}").and_then(|()| out.flush());
    Ok(())
}

fn append(args: &Args) -> Result<(), String> {
    let records = args.num("records", 1000)?;
    let seed = args.num("seed", 1)?;
    let payload_max = args.num("payload-max", 200)? as usize;
    let batch_records = args.num("batch-records", 16)?.clamp(1, 4096) as usize;
    let mut cfg = LogConfig {
        segment_bytes: args.num("segment-bytes", 64 << 20)?,
        ..LogConfig::default()
    };
    cfg.write_buffer_bytes = args.num("buffer-bytes", 2 << 20)?;
    cfg.write_bytes_max = args.num("write-bytes", 256 << 10)?;
    cfg.checkpoint_interval_bytes = args.num("checkpoint-bytes", 64 << 20)?;
    cfg.batch_bytes_max = (batch_records * (payload_max + 32) + 64).next_multiple_of(4096) as u64;
    if args.has("pwrite") {
        cfg.io_mode = IoMode::Pwrite;
    }
    let (mut log, report) = Log::open(dir(args)?, cfg).map_err(|e| e.to_string())?;
    let out = std::io::stdout();
    let mut out = out.lock();
    let w = |out: &mut std::io::StdoutLock<'_>, s: String| {
        let _ = writeln!(out, "{s}");
        let _ = out.flush();
    };
    w(
        &mut out,
        format!(
            "open next={} dropped_bytes={} backend={} actions={:?}",
            report.next_offset,
            report.dropped_bytes(),
            log.backend_name(),
            report.actions
        ),
    );
    let mut payloads = vec![0u8; batch_records * payload_max];
    let end = log.next_offset() + records;
    let mut reported = log.durable_offset();
    while log.next_offset() < end {
        let base = log.next_offset();
        let n = ((end - base) as usize).min(batch_records);
        let mut lens = [0usize; 4096];
        let mut at = 0;
        for (i, l) in lens.iter_mut().enumerate().take(n) {
            let o = base + i as u64;
            *l = pattern::payload_len(seed, o, payload_max);
            pattern::fill(seed, o, &mut payloads[at..at + *l]);
            at += *l;
        }
        let mut recs: Vec<Record<'_>> = Vec::with_capacity(n);
        let mut at = 0;
        for (i, &l) in lens.iter().enumerate().take(n) {
            recs.push(Record {
                timestamp_ns: pattern::timestamp_ns(base + i as u64),
                payload: &payloads[at..at + l],
            });
            at += l;
        }
        loop {
            match log.append_batch(base, &recs) {
                Ok(_) => break,
                Err(storage_nvme::AppendError::BackPressured) => {
                    log.wait().map_err(|e| e.to_string())?;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        log.flush().map_err(|e| e.to_string())?;
        let d = log.poll().map_err(|e| e.to_string())?;
        if d > reported {
            reported = d;
            w(&mut out, format!("durable {d}"));
        }
    }
    let d = log.sync().map_err(|e| e.to_string())?;
    if d > reported {
        w(&mut out, format!("durable {d}"));
    }
    log.close().map_err(|e| e.to_string())?;
    w(&mut out, "closed".to_string());
    Ok(())
}

fn open_reader(args: &Args, buf_bytes: usize) -> Result<(Reader, AlignedBuf), String> {
    let mut r = Reader::open(dir(args)?).map_err(|e| e.to_string())?;
    if args.has("from") {
        r.seek_offset(args.num("from", 0)?)
            .map_err(|e| e.to_string())?;
    }
    if args.has("timestamp") {
        r.seek_timestamp(args.num("timestamp", 0)?)
            .map_err(|e| e.to_string())?;
    }
    let buf = AlignedBuf::new(buf_bytes).map_err(|e| e.to_string())?;
    Ok((r, buf))
}

fn dump(args: &Args) -> Result<(), String> {
    let (mut r, mut buf) = open_reader(args, 16 << 20)?;
    let out = std::io::stdout();
    let mut out = out.lock();
    while let Some(b) = r.read_batch(&mut buf).map_err(|e| e.to_string())? {
        let first = b.records().next().map_or(b.base_offset(), |x| x.offset);
        let _ = writeln!(
            out,
            "batch base={} first={} records={} bytes={} max_ts={}",
            b.base_offset(),
            first,
            b.record_count(),
            b.batch_bytes(),
            b.max_timestamp_ns()
        );
    }
    let _ = writeln!(out, "end {}", r.end_offset());
    Ok(())
}

fn verify(args: &Args) -> Result<(), String> {
    let (mut r, mut buf) = open_reader(args, 16 << 20)?;
    let seed = if args.has("seed") {
        Some(args.num("seed", 0)?)
    } else {
        None
    };
    let payload_max = args.num("payload-max", 200)? as usize;
    let mut expect = vec![0u8; payload_max];
    let (mut batches, mut records) = (0u64, 0u64);
    while let Some(b) = r.read_batch(&mut buf).map_err(|e| e.to_string())? {
        batches += 1;
        for rec in b.records() {
            records += 1;
            if let Some(seed) = seed {
                let l = pattern::payload_len(seed, rec.offset, payload_max);
                pattern::fill(seed, rec.offset, &mut expect[..l]);
                if rec.payload != &expect[..l]
                    || rec.timestamp_ns != pattern::timestamp_ns(rec.offset)
                {
                    return Err(format!("record {} does not match the pattern", rec.offset));
                }
            }
        }
    }
    println!(
        "ok batches={batches} records={records} end={}",
        r.end_offset()
    );
    Ok(())
}
