//! Retiring agent resources: what an agent gives up (an ended subscription and its retransmit
//! buffer, a finished catch-up phase with its storage reader and read buffer, a removed
//! partition's ring mapping and handles) goes over an SPSC queue to the conductor, which frees it
//! on its own thread. munmap and its TLB shootdowns, closing files and large frees stay off the
//! busy-polling cores (Aeron's conductor does the same). Only when the queue is full is the
//! resource freed on the agent's thread, and counted (`TxFreedOnAgent`, `RxFreedOnAgent`).

use crate::agent::SpscProducer;

/// Something an agent no longer uses, freed by the conductor.
pub enum Retired {
    /// Anything already on the heap (an ended subscription, a log reader, a read buffer, a
    /// private ring reader): a `Box<T>` becomes a `Box<dyn Send>` without allocating.
    Boxed(Box<dyn Send>),
    Ring(shm_ring::Ring),
    RingReader(shm_ring::Subscriber),
    RingPublisher(shm_ring::Publisher),
}

/// One agent's way to the conductor for what it retires; frees here only when the queue is full.
pub struct Graveyard {
    queue: Option<SpscProducer<Retired>>,
    /// Freed on the agent's thread (no queue, or the queue was full).
    pub freed_here: u64,
}

impl Graveyard {
    pub fn new(queue: Option<SpscProducer<Retired>>) -> Graveyard {
        Graveyard {
            queue,
            freed_here: 0,
        }
    }

    pub fn bury(&mut self, r: Retired) {
        let back = match self.queue.as_mut() {
            Some(q) => q.offer(r).err(),
            None => Some(r),
        };
        if let Some(r) = back {
            self.freed_here += 1;
            drop(r);
        }
    }

    /// Retires something already on the heap.
    pub fn bury_box<T: Send + 'static>(&mut self, boxed: Box<T>) {
        self.bury(Retired::Boxed(boxed));
    }
}
