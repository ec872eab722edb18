//! The backlog between draining the ring buffer and rebuilding lifetimes: the drain side
//! only copies records out (as `record` does) and never waits; the rebuild side takes them
//! in order on a thread of its own. A burst that rebuilding cannot keep up with waits here
//! instead of in the ring buffer, where it would be lost. Bounded in bytes: only a full
//! backlog drops a record, counted (`backlog_full`). Memory is taken as records arrive, in
//! chunks, and each chunk is freed once rebuilt.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex},
};

/// Records are handed over in chunks of about this many bytes (fewer at each drain tick).
const CHUNK_BYTES: usize = 256 << 10;

/// What the drain side hands the rebuild side, in the order it happened.
#[derive(Debug, PartialEq)]
pub enum Item<T> {
    /// Raw records, each a native-endian u32 length then its bytes (see [`records`]).
    Records(Vec<u8>),
    /// Anything else the rebuild side must see at this point in the stream (a drain
    /// tick, a namespace's port range).
    Note(T),
}

struct State<T> {
    items: VecDeque<Item<T>>,
    /// Bytes of record chunks queued (their capacity: what they hold in memory).
    bytes: usize,
    /// The drain side is gone: what is queued is all there will be.
    closed: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The drain side.
pub struct BacklogSender<T> {
    shared: Arc<Shared<T>>,
    limit: usize,
    /// Records not handed over yet.
    chunk: Vec<u8>,
    /// Records dropped because the backlog was full, over the run.
    dropped: u64,
}

/// The rebuild side.
pub struct BacklogReceiver<T> {
    shared: Arc<Shared<T>>,
}

/// A backlog of at most `limit_bytes` of records (at least one chunk's worth).
pub fn backlog<T>(limit_bytes: usize) -> (BacklogSender<T>, BacklogReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            bytes: 0,
            closed: false,
        }),
        ready: Condvar::new(),
    });
    (
        BacklogSender {
            shared: shared.clone(),
            limit: limit_bytes.max(CHUNK_BYTES),
            chunk: Vec::new(),
            dropped: 0,
        },
        BacklogReceiver { shared },
    )
}

impl<T> BacklogSender<T> {
    /// Copies `record` into the backlog; false (and counted) if the backlog is full.
    pub fn push_record(&mut self, record: &[u8]) -> bool {
        let need = 4 + record.len();
        if self.chunk.len() + need > self.chunk.capacity() {
            // The chunk must grow (or be handed over and a new one begun): check the
            // bound against what that would hold.
            if self.chunk.len() + need > CHUNK_BYTES {
                self.hand_over();
            }
            let queued = self.shared.lock().bytes;
            let used = self.chunk.len() + need;
            let grown = (self.chunk.capacity() * 2).clamp(used, CHUNK_BYTES.max(used));
            if queued + grown > self.limit {
                self.dropped += 1;
                return false;
            }
            self.chunk.reserve_exact(grown - self.chunk.len());
        }
        self.chunk
            .extend_from_slice(&(record.len() as u32).to_ne_bytes());
        self.chunk.extend_from_slice(record);
        true
    }

    /// Hands over the records copied so far, then `note`.
    pub fn push_note(&mut self, note: T) {
        self.hand_over_with(Some(note));
    }

    /// Hands over the records copied so far.
    pub fn hand_over(&mut self) {
        self.hand_over_with(None);
    }

    fn hand_over_with(&mut self, note: Option<T>) {
        let chunk = (!self.chunk.is_empty()).then(|| std::mem::take(&mut self.chunk));
        if chunk.is_none() && note.is_none() {
            return;
        }
        let mut s = self.shared.lock();
        if let Some(chunk) = chunk {
            s.bytes += chunk.capacity();
            s.items.push_back(Item::Records(chunk));
        }
        if let Some(note) = note {
            s.items.push_back(Item::Note(note));
        }
        drop(s);
        self.shared.ready.notify_one();
    }

    /// Records dropped so far because the backlog was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes queued now (records handed over and not yet taken).
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }
}

impl<T> Drop for BacklogSender<T> {
    /// What was copied goes over; the rebuild side then sees the end.
    fn drop(&mut self) {
        self.hand_over();
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
    }
}

impl<T> BacklogReceiver<T> {
    /// The next item, waiting for one; None once the drain side is gone and everything it
    /// handed over was taken. A chunk's bytes leave the bound as it is taken.
    pub fn recv(&self) -> Option<Item<T>> {
        let mut s = self.shared.lock();
        loop {
            if let Some(item) = s.items.pop_front() {
                if let Item::Records(chunk) = &item {
                    s.bytes -= chunk.capacity();
                }
                return Some(item);
            }
            if s.closed {
                return None;
            }
            s = self.shared.ready.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Whether nothing waits now.
    pub fn is_empty(&self) -> bool {
        self.shared.lock().items.is_empty()
    }

    /// Bytes of records waiting now.
    pub fn queued_bytes(&self) -> usize {
        self.shared.lock().bytes
    }
}

/// The records of a chunk, in the order they were pushed.
pub fn records(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = chunk;
    std::iter::from_fn(move || {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_ne_bytes(*len) as usize;
        let (record, tail) = tail.split_at(len);
        rest = tail;
        Some(record)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(rx: &BacklogReceiver<u32>) -> Vec<String> {
        let mut out = Vec::new();
        while !rx.is_empty() {
            match rx.recv().unwrap() {
                Item::Records(c) => {
                    out.extend(records(&c).map(|r| String::from_utf8_lossy(r).into_owned()))
                }
                Item::Note(n) => out.push(format!("note {n}")),
            }
        }
        out
    }

    #[test]
    fn records_and_notes_arrive_in_order() {
        let (mut tx, rx) = backlog::<u32>(1 << 20);
        assert!(tx.push_record(b"a"));
        assert!(tx.push_record(b"bb"));
        tx.push_note(1);
        tx.push_note(2);
        assert!(tx.push_record(b""));
        assert!(tx.push_record(b"ccc"));
        tx.hand_over();
        assert_eq!(drain(&rx), ["a", "bb", "note 1", "note 2", "", "ccc"]);
        drop(tx);
        assert_eq!(rx.recv(), None, "the end, once the sender is gone");
    }

    #[test]
    fn a_full_backlog_drops_and_counts_and_takes_again_once_rebuilt() {
        let limit = 4 * CHUNK_BYTES;
        let (mut tx, rx) = backlog::<u32>(limit);
        let record = [7u8; 124];
        let (mut kept, mut dropped) = (0u64, 0u64);
        for _ in 0..100_000 {
            if tx.push_record(&record) {
                kept += 1;
            } else {
                dropped += 1;
            }
        }
        tx.hand_over();
        assert_eq!(tx.dropped(), dropped);
        assert!(dropped > 0 && kept > 0);
        // Never more than the limit held: records of 128 bytes with their length.
        assert!(kept * 128 <= limit as u64, "{kept} records kept");
        assert!(tx.queued_bytes() <= limit);
        // Rebuilt: memory given back, room again.
        let got = drain(&rx).len() as u64;
        assert_eq!(got, kept);
        assert_eq!(tx.queued_bytes(), 0);
        assert!(tx.push_record(&record));
        assert_eq!(tx.dropped(), dropped, "no drop once there is room");
    }

    #[test]
    fn the_receiver_waits_for_the_sender() {
        let (mut tx, rx) = backlog::<u32>(1 << 20);
        let t = std::thread::spawn(move || {
            let mut n = 0;
            while let Some(item) = rx.recv() {
                if let Item::Records(c) = item {
                    n += records(&c).count();
                }
            }
            n
        });
        for i in 0..10_000u32 {
            tx.push_record(&i.to_ne_bytes());
            if i % 1000 == 0 {
                tx.push_note(i);
            }
        }
        drop(tx);
        assert_eq!(t.join().unwrap(), 10_000);
    }
}
