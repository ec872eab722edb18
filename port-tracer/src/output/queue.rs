//! Live output behind a queue: a thread of its own formats and writes, so a slow reader
//! (a terminal over a slow link, `| pv -L 200k`) never holds up draining the ring buffer or
//! rebuilding lifetimes. The queue is bounded in records; what does not fit is dropped and
//! counted (`output_dropped` in the summary, which is computed before the queue and stays
//! exact), and text output says in place how many lines it skipped.

use std::{
    io,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use super::Printer;
use crate::{
    lifetime::{Output, OutputRef},
    summary::Summary,
};

/// Records sent to the writer thread at once: amortises the channel, bounds the latency.
const BATCH: usize = 4096;

enum Msg {
    Outputs(Vec<Output>),
    /// Records dropped since the last batch that got through.
    Skipped(u64),
    Summary(Box<Summary>),
}

/// The collector's end of the queue.
pub struct OutputQueue {
    tx: Option<mpsc::Sender<Msg>>,
    writer: Option<JoinHandle<io::Result<()>>>,
    /// Records sent and not yet written.
    queued: Arc<AtomicUsize>,
    /// The writer failed (closed pipe, full disk): stop tracing.
    failed: Arc<AtomicBool>,
    limit: usize,
    batch: Vec<Output>,
    /// Records dropped over the run, and since the last batch that got through.
    dropped: u64,
    skipped: u64,
    warned: bool,
}

impl OutputQueue {
    /// Moves `printer` to a writer thread; at most `limit` records wait for it.
    pub fn start(mut printer: Box<dyn Printer + Send>, limit: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Msg>();
        let queued = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicBool::new(false));
        let (q, f) = (queued.clone(), failed.clone());
        let writer = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || {
                let r = write_all(&mut *printer, &rx, &q);
                if r.is_err() {
                    f.store(true, Ordering::Relaxed);
                }
                r
            })
            .expect("spawning the output thread");
        OutputQueue {
            tx: Some(tx),
            writer: Some(writer),
            queued,
            failed,
            limit: limit.max(1),
            batch: Vec::with_capacity(BATCH),
            dropped: 0,
            skipped: 0,
            warned: false,
        }
    }

    /// A queue that writes nothing (a placeholder while one is being set up).
    pub fn idle() -> Self {
        OutputQueue {
            tx: None,
            writer: None,
            queued: Arc::default(),
            failed: Arc::default(),
            limit: 1,
            batch: Vec::new(),
            dropped: 0,
            skipped: 0,
            warned: false,
        }
    }

    /// Queues a copy of `o` for the writer thread.
    pub fn push(&mut self, o: OutputRef<'_>) {
        self.batch.push(o.to_owned());
        if self.batch.len() >= BATCH {
            self.send(false);
        }
    }

    /// Sends what is batched, or drops it (counted) if the queue is full; at the end
    /// (`wait`) waits for room instead: no kernel event waits on it any more.
    fn send(&mut self, wait: bool) {
        if self.batch.is_empty() || self.failed() {
            self.batch.clear();
            return;
        }
        let n = self.batch.len();
        while wait && self.queued.load(Ordering::Relaxed) + n > self.limit && !self.failed() {
            std::thread::sleep(Duration::from_millis(1));
        }
        if self.queued.load(Ordering::Relaxed) + n > self.limit {
            self.dropped += n as u64;
            self.skipped += n as u64;
            self.batch.clear();
            if !self.warned {
                self.warned = true;
                eprintln!(
                    "port-tracer: the output cannot keep up: records are dropped (counted in \
                     the summary as output_dropped; the summary itself is exact); on busy \
                     hosts use --output FILE or `port-tracer record`"
                );
            }
            return;
        }
        let Some(tx) = &self.tx else { return };
        if self.skipped > 0 {
            let _ = tx.send(Msg::Skipped(std::mem::take(&mut self.skipped)));
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        let _ = tx.send(Msg::Outputs(batch));
    }

    /// Hands what is batched to the writer (a drain tick).
    pub fn flush(&mut self) {
        self.send(false);
    }

    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Records dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Writes what is left, then the summary, and waits for the writer: its first error.
    pub fn finish(mut self, summary: Summary) -> io::Result<()> {
        self.send(true);
        if let Some(tx) = self.tx.take() {
            if self.skipped > 0 {
                let _ = tx.send(Msg::Skipped(self.skipped));
            }
            let _ = tx.send(Msg::Summary(Box::new(summary)));
        }
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the output thread panicked")),
            None => Ok(()),
        }
    }

    /// Ends the queue before finishing (the records go unwritten).
    fn close(&mut self) {
        self.tx.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for OutputQueue {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: writes every message; flushes whenever it has caught up.
fn write_all(
    printer: &mut (dyn Printer + Send),
    rx: &mpsc::Receiver<Msg>,
    queued: &AtomicUsize,
) -> io::Result<()> {
    let mut next = rx.recv().ok();
    while let Some(msg) = next {
        match msg {
            Msg::Outputs(batch) => {
                for o in &batch {
                    printer.write(o.as_ref())?;
                }
                queued.fetch_sub(batch.len(), Ordering::Relaxed);
            }
            Msg::Skipped(n) => printer.skipped(n)?,
            Msg::Summary(s) => printer.summary(&s)?,
        }
        next = match rx.try_recv() {
            Ok(m) => Some(m),
            Err(mpsc::TryRecvError::Empty) => {
                printer.flush()?;
                rx.recv().ok()
            }
            Err(mpsc::TryRecvError::Disconnected) => None,
        };
    }
    printer.flush()
}
