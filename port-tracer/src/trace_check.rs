//! Reads a whole trace from bytes and checks what every reader of a damaged or foreign
//! file relies on: no panic, and an error that says what is wrong at an offset inside the
//! input. The fuzz targets (`port-tracer/fuzz`) and the corpus regression test
//! (`tests/fuzz_corpus.rs`) call these same functions, so what the fuzzer finds is
//! reproduced by a plain `cargo test` on stable.

use std::{
    io::{self, Write},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use crate::{
    cgroups::Cgroups,
    filter::Filter,
    output::{buffered, Format, WallClock},
    rebuild::RebuildConfig,
    replay::replay,
    trace_file::{Block, TraceError, TraceReader, MAGIC, VERSION},
};

mod synthetic;

pub use synthetic::synthesize;

/// What reading a trace found.
#[derive(Debug, Default)]
pub struct TraceCheck {
    /// Blocks read intact.
    pub blocks: u64,
    /// Records in `EVENTS` blocks, and those of them that did not decode.
    pub records: u64,
    pub undecodable: u64,
    /// Bytes before the damage: the whole input when there is none.
    pub good_bytes: u64,
    /// Why reading stopped before the end of the input, if it did.
    pub error: Option<TraceError>,
    /// Events the tracker processed ([`replay_trace`] only), and what it emitted.
    pub tracked_events: Option<u64>,
    pub outputs: u64,
    /// Bytes written: the report as JSONL, and its summary as text ([`replay_trace`] only).
    pub written_bytes: usize,
}

/// Limits of the rebuild engine: small ones make eviction and early release reachable.
#[derive(Clone, Copy, Debug)]
pub struct ReplayLimits {
    pub reorder_delay_ns: u64,
    /// Most events the reorder window holds before letting the oldest go.
    pub max_reorder_held: usize,
    /// Most lifetimes the tracker keeps open.
    pub max_open: usize,
}

impl Default for ReplayLimits {
    fn default() -> Self {
        ReplayLimits {
            reorder_delay_ns: 1_000_000,
            max_reorder_held: 64,
            max_open: 16,
        }
    }
}

/// What the `trace_reader` fuzz target checks of one input: `data` read as a trace, as it
/// is and with its checksums repaired. Returns the problems found (empty: all is well).
pub fn check_reader_input(data: &[u8]) -> Vec<String> {
    let mut problems = read_trace(data).problems(data);
    let repaired = repair_checksums(data);
    problems.extend(read_trace(&repaired).problems(&repaired));
    problems
}

/// What the `trace_replay` fuzz target checks of one input: an input with the trace magic
/// is replayed as it is and with its checksums repaired; any other becomes a synthetic
/// trace ([`synthesize`]), which must also read without error.
pub fn check_replay_input(data: &[u8]) -> Vec<String> {
    if data.starts_with(&MAGIC) {
        let limits = ReplayLimits::default();
        let mut problems = replay_trace(data, &limits).problems(data);
        let repaired = repair_checksums(data);
        problems.extend(replay_trace(&repaired, &limits).problems(&repaired));
        return problems;
    }
    let (trace, limits) = synthesize(data);
    let check = replay_trace(&trace, &limits);
    let mut problems = check.problems(&trace);
    if let Some(e) = check.error {
        problems.push(format!("a synthetic trace does not read: {e}"));
    }
    problems
}

/// Reads every block of `bytes` and decodes every record, as `report` does before
/// rebuilding.
pub fn read_trace(bytes: &[u8]) -> TraceCheck {
    let mut check = TraceCheck::default();
    let mut reader = match TraceReader::new(bytes) {
        Ok(r) => r,
        Err(e) => {
            check.error = Some(e);
            return check;
        }
    };
    loop {
        match reader.next_block() {
            Ok(Some(block)) => {
                check.blocks += 1;
                if let Block::Events(raw) = &block {
                    for rec in raw.iter() {
                        check.records += 1;
                        if raw.decode(rec).is_err() {
                            check.undecodable += 1;
                        }
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                check.error = Some(e);
                break;
            }
        }
    }
    check.good_bytes = reader.offset;
    check
}

/// Counts the bytes written through it.
struct Counted(Arc<AtomicUsize>);

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.fetch_add(buf.len(), Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Replays `bytes` as `report --format jsonl` does ([`replay`]: the reorder window, the
/// tracker and the summary's analyses to the end, every record and the summary written),
/// then writes the summary as text too.
pub fn replay_trace(bytes: &[u8], limits: &ReplayLimits) -> TraceCheck {
    let mut check = TraceCheck::default();
    let reader = match TraceReader::new(bytes) {
        Ok(r) => r,
        Err(e) => {
            check.error = Some(e);
            return check;
        }
    };
    let clock = WallClock {
        offset_ns: reader.meta.realtime_offset_ns.into(),
    };
    let written = Arc::new(AtomicUsize::new(0));
    let config = RebuildConfig {
        reorder_delay_ns: limits.reorder_delay_ns,
        max_reorder_held: limits.max_reorder_held,
        max_open: limits.max_open,
        filter: Filter::default(),
        top: 10,
    };
    let cgroups = Cgroups::recorded();
    let mut jsonl = Format::Jsonl.printer(
        buffered(Box::new(Counted(written.clone()))),
        clock,
        cgroups.clone(),
    );
    match replay(reader, config, &mut *jsonl, &cgroups) {
        Ok(done) => {
            let c = &done.summary.stats;
            check.blocks = done.blocks;
            check.records = done.records;
            check.undecodable = done.summary.lost.undecodable;
            check.good_bytes = done.good_bytes;
            check.error = done.damage;
            check.tracked_events = Some(done.summary.tracker.events);
            check.outputs = c.events + c.lifetimes_ended + c.lifetimes_open;
            let mut text =
                Format::Text.printer(buffered(Box::new(Counted(written.clone()))), clock, cgroups);
            text.summary(&done.summary).expect("writing to memory");
            text.flush().expect("writing to memory");
        }
        // Only an I/O error of the reader, which a byte slice never has.
        Err(e) => check.error = Some(e),
    }
    check.written_bytes = written.load(Ordering::Relaxed);
    check
}

impl TraceCheck {
    /// What is wrong with this result for input `bytes`: an error that points outside the
    /// input or away from where reading stopped, or that is not one line; records lost
    /// between the reader and the tracker. Empty when all is well.
    pub fn problems(&self, bytes: &[u8]) -> Vec<String> {
        let len = bytes.len() as u64;
        let mut problems = Vec::new();
        let mut fail = |p: String| problems.push(p);
        if self.good_bytes > len {
            fail(format!(
                "good prefix {} beyond the input ({len} bytes)",
                self.good_bytes
            ));
        }
        let decodable = self.records.saturating_sub(self.undecodable);
        if let Some(tracked) = self.tracked_events.filter(|&n| n != decodable) {
            fail(format!(
                "tracker saw {tracked} events of {decodable} decoded"
            ));
        }
        let Some(e) = &self.error else {
            if self.good_bytes != len {
                fail(format!(
                    "no error, yet only {} of {len} bytes read",
                    self.good_bytes
                ));
            }
            return problems;
        };
        let text = e.to_string();
        if text.is_empty() || text.contains('\n') {
            fail(format!("error message is not one line: {text:?}"));
        }
        // Where the header ends (if it was read): block errors point at the block.
        let header_read = self.good_bytes > 0;
        match *e {
            TraceError::Io(_) => fail(format!("I/O error reading a byte slice: {text}")),
            TraceError::NotATrace if bytes.starts_with(&MAGIC) => {
                fail("NotATrace for an input with the magic".into())
            }
            TraceError::NotATrace => {}
            TraceError::NewerVersion(v) => {
                if v <= VERSION || bytes.get(8..10) != Some(&v.to_le_bytes()[..]) {
                    fail(format!("NewerVersion({v}) is not the version in the input"));
                }
            }
            TraceError::Corrupt { offset, .. } if offset >= len => fail(format!(
                "corrupt at {offset}, beyond the input ({len} bytes)"
            )),
            TraceError::Truncated { offset } if offset > len => fail(format!(
                "truncated at {offset}, beyond the input ({len} bytes)"
            )),
            TraceError::Corrupt { offset, .. } | TraceError::Truncated { offset }
                if header_read && offset != self.good_bytes =>
            {
                fail(format!(
                    "damage reported at {offset}, but reading stopped at {}",
                    self.good_bytes
                ))
            }
            TraceError::Corrupt { .. } | TraceError::Truncated { .. } => {}
        }
        problems
    }
}

/// A copy of `bytes` with the CRC-32 of the header and of every whole block recomputed, so
/// that payload mutations reach the parsers behind the checksums. Inputs without the
/// magic, or cut inside a length field, are returned unchanged from there on.
pub fn repair_checksums(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if !out.starts_with(&MAGIC) || out.len() < 16 {
        return out;
    }
    let meta_len = u32::from_le_bytes([out[12], out[13], out[14], out[15]]) as usize;
    let crc_at = 16usize.saturating_add(meta_len);
    if crc_at.saturating_add(4) > out.len() {
        return out;
    }
    let crc = crc32fast::hash(&out[8..crc_at]);
    out[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    let mut at = crc_at + 4;
    while at + 12 <= out.len() {
        let len = u32::from_le_bytes([out[at + 4], out[at + 5], out[at + 6], out[at + 7]]) as usize;
        let end = at + 12 + len;
        if end > out.len() {
            break;
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&out[at..at + 8]);
        crc.update(&out[at + 12..end]);
        out[at + 8..at + 12].copy_from_slice(&crc.finalize().to_le_bytes());
        at = end;
    }
    out
}

#[cfg(test)]
mod tests;
