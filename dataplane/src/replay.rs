//! Storage reads for remote subscribers that catch up, done off the sender's thread.
//!
//! A subscriber that starts behind the ring reads the partition's log ([`crate::catchup`]).
//! Its log reader and read buffer travel to the archiver, which already does the node's storage
//! I/O, as a [`ReplayRequest`]; the archiver reads the next batch into the buffer (an O_DIRECT
//! read when the buffer does not hold it yet) and sends both back as a [`ReplayReply`] that says
//! where in the buffer the batch is. The sender then sends the batch's records from memory. So
//! the sender's duty cycle never waits on the disk while it also feeds live subscribers.
//!
//! ```text
//!  sender ──ReplayRequest{id, reader, buf, seek}──► archiver: reader.read_batch(buf)
//!  sender ◄──ReplayReply{id, reader, buf, Batch{start, end} | AtTail{end} | Failed}──
//! ```
//!
//! At most one request per subscription is in flight (the reader travels with it), so queues of
//! `subscribers_max` entries never overflow; the archiver takes a request only when the reply
//! queue has room, and never blocks.

use storage_nvme::{AlignedBuf, Reader};

use crate::agent::{SpscConsumer, SpscProducer};

/// Replay requests served per archiver duty cycle at most.
pub const REPLAY_READS_PER_CYCLE_MAX: usize = 4;

/// Read the next batch of a subscriber's log for it.
pub struct ReplayRequest {
    /// The subscription that asks (the sender's id for it).
    pub id: u64,
    pub reader: Box<Reader>,
    pub buf: Box<AlignedBuf>,
    /// Position the reader at this log offset first (at the durable end if it is beyond):
    /// a subscriber whose ring reader was overrun goes back to storage there.
    pub seek: Option<u64>,
}

/// What a read found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplayOutcome {
    /// Bytes `start..end` of the buffer hold the next batch.
    Batch { start: usize, end: usize },
    /// Nothing more is durable yet; `end` was the log's durable end at the read.
    AtTail { end: u64 },
    /// The log cannot be read (names the file and position); the subscription ends.
    Failed(String),
}

/// A request answered: the reader and buffer come back with the outcome.
pub struct ReplayReply {
    pub id: u64,
    pub reader: Box<Reader>,
    pub buf: Box<AlignedBuf>,
    pub outcome: ReplayOutcome,
}

/// Reads the next batch of `reader` into `buf` (blocking I/O when `buf` does not hold it),
/// after positioning the reader at `seek` when given.
pub fn read_one(reader: &mut Reader, buf: &mut AlignedBuf, seek: Option<u64>) -> ReplayOutcome {
    let end = reader.end_offset();
    if let Some(offset) = seek {
        if let Err(e) = reader.seek_offset(offset.min(end)) {
            return ReplayOutcome::Failed(e.to_string());
        }
    }
    let (at, len) = match reader.read_batch(buf) {
        Ok(Some(b)) => (b.as_bytes().as_ptr() as usize, b.as_bytes().len()),
        Ok(None) => return ReplayOutcome::AtTail { end },
        Err(e) => return ReplayOutcome::Failed(e.to_string()),
    };
    let base = buf.as_slice().as_ptr() as usize;
    match at.checked_sub(base) {
        Some(start) if start + len <= buf.as_slice().len() => ReplayOutcome::Batch {
            start,
            end: start + len,
        },
        _ => ReplayOutcome::Failed("a batch outside the read buffer".into()),
    }
}

/// The archiver's side: takes requests, reads, answers.
pub struct ReplayServer {
    requests: SpscConsumer<ReplayRequest>,
    replies: SpscProducer<ReplayReply>,
    /// Reads done (batches, tails and failures).
    pub reads: u64,
}

impl ReplayServer {
    pub fn new(
        requests: SpscConsumer<ReplayRequest>,
        replies: SpscProducer<ReplayReply>,
    ) -> ReplayServer {
        ReplayServer {
            requests,
            replies,
            reads: 0,
        }
    }

    /// Serves up to `max` requests; returns how many.
    pub fn serve(&mut self, max: usize) -> usize {
        let mut served = 0;
        while served < max && !self.replies.is_full() {
            let replies = &mut self.replies;
            let n = self.requests.drain(1, |mut r| {
                let outcome = read_one(&mut r.reader, &mut r.buf, r.seek);
                let reply = ReplayReply {
                    id: r.id,
                    reader: r.reader,
                    buf: r.buf,
                    outcome,
                };
                // Cannot be refused: room was checked and this is the queue's only producer.
                let _ = replies.offer(reply);
            });
            if n == 0 {
                break;
            }
            served += n;
        }
        self.reads += served as u64;
        served
    }
}

/// The sender's side of the queues.
pub struct ReplayClient {
    pub requests: SpscProducer<ReplayRequest>,
    pub replies: SpscConsumer<ReplayReply>,
}

/// Both sides, with queues of `depth` entries (at least the sender's subscriber limit).
pub fn replay_channel(depth: usize) -> (ReplayClient, ReplayServer) {
    let (req_tx, req_rx) = crate::agent::spsc(depth);
    let (rep_tx, rep_rx) = crate::agent::spsc(depth);
    (
        ReplayClient {
            requests: req_tx,
            replies: rep_rx,
        },
        ReplayServer::new(req_rx, rep_tx),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage_nvme::{Log, LogConfig, Record};

    fn ask(
        client: &mut ReplayClient,
        server: &mut ReplayServer,
        req: ReplayRequest,
    ) -> ReplayReply {
        assert!(client.requests.offer(req).is_ok());
        assert_eq!(server.serve(REPLAY_READS_PER_CYCLE_MAX), 1);
        let mut reply = None;
        assert_eq!(client.replies.drain(1, |r| reply = Some(r)), 1);
        reply.expect("one reply")
    }

    #[test]
    fn the_archiver_side_reads_batch_after_batch_then_reports_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), LogConfig::default()).unwrap();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100]).collect();
        let records: Vec<Record<'_>> = payloads
            .iter()
            .map(|p| Record {
                timestamp_ns: 1,
                payload: p,
            })
            .collect();
        log.append_batch(0, &records[..4]).unwrap();
        log.append_batch(4, &records[4..]).unwrap();
        assert_eq!(log.sync().unwrap(), 10);
        let (mut client, mut server) = replay_channel(2);
        let mut req = ReplayRequest {
            id: 7,
            reader: Box::new(log.reader()),
            buf: Box::new(AlignedBuf::new(1 << 16).unwrap()),
            seek: None,
        };
        let mut got = Vec::new();
        for _ in 0..3 {
            let r = ask(&mut client, &mut server, req);
            assert_eq!(r.id, 7);
            match r.outcome {
                ReplayOutcome::Batch { start, end } => {
                    let b =
                        storage_nvme::codec::decode_batch(&r.buf.as_slice()[start..end]).unwrap();
                    got.extend(b.records().map(|rec| (rec.offset, rec.payload.to_vec())));
                }
                ReplayOutcome::AtTail { end } => {
                    assert_eq!(end, 10);
                    assert_eq!(got.len(), 10, "the tail after every record");
                }
                ReplayOutcome::Failed(e) => panic!("{e}"),
            }
            req = ReplayRequest {
                id: r.id,
                reader: r.reader,
                buf: r.buf,
                seek: None,
            };
        }
        let want: Vec<(u64, Vec<u8>)> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| (i as u64, p.clone()))
            .collect();
        assert_eq!(got, want);
        assert_eq!(server.reads, 3);
    }

    #[test]
    fn a_log_gone_under_the_reader_is_a_failure_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path(), LogConfig::default()).unwrap();
        let payload = [1u8; 64];
        let rec = [Record {
            timestamp_ns: 1,
            payload: &payload,
        }];
        log.append_batch(0, &rec).unwrap();
        log.sync().unwrap();
        let mut reader = log.reader();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::remove_file(path).unwrap();
            }
        }
        let mut buf = AlignedBuf::new(1 << 16).unwrap();
        assert!(matches!(
            read_one(&mut reader, &mut buf, None),
            ReplayOutcome::Failed(_)
        ));
    }

    #[test]
    fn the_server_takes_no_request_while_the_reply_queue_is_full() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = Log::open(dir.path(), LogConfig::default()).unwrap();
        let (mut client, mut server) = replay_channel(1);
        let req = |id| ReplayRequest {
            id,
            reader: Box::new(log.reader()),
            buf: Box::new(AlignedBuf::new(4096).unwrap()),
            seek: None,
        };
        assert!(client.requests.offer(req(1)).is_ok());
        assert_eq!(server.serve(4), 1);
        assert!(client.requests.offer(req(2)).is_ok());
        // The first reply is still queued: the second request waits.
        assert_eq!(server.serve(4), 0);
        assert_eq!(client.replies.drain(4, drop), 1);
        assert_eq!(server.serve(4), 1);
        let mut ids = Vec::new();
        client.replies.drain(4, |r| ids.push((r.id, r.outcome)));
        assert_eq!(ids, [(2, ReplayOutcome::AtTail { end: 0 })]);
    }
}
