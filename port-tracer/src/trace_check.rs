//! Reads a whole trace from bytes and checks what every reader of a damaged or foreign
//! file relies on: no panic, and an error that says what is wrong at an offset inside the
//! input. The fuzz targets (`port-tracer/fuzz`) and the corpus regression test
//! (`tests/fuzz_corpus.rs`) call these same functions, so what the fuzzer finds is
//! reproduced by a plain `cargo test` on stable.

use crate::{
    analysis::Span,
    event::Event,
    lifetime::{Output, Tracker},
    output::{Format, Sink, WallClock},
    reorder::Reorderer,
    summary::{Lost, Stats, Summary},
    trace_file::{Block, Metadata, TraceError, TraceReader, MAGIC, RECORD_SIZE, VERSION},
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
    /// Size of the summary written as text and JSON ([`replay_trace`] only).
    pub summary_bytes: usize,
}

/// Limits of the replay pipeline: small ones make eviction and early release reachable.
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
    walk(bytes, |check, _, block| {
        if let Block::Events(raw) = block {
            for rec in raw.chunks_exact(RECORD_SIZE) {
                if Event::decode(rec).is_err() {
                    check.undecodable += 1;
                }
            }
        }
    })
}

/// Counts an output and feeds it to the summary's analyses.
fn sink<'a>(outputs: &'a mut u64, stats: &'a mut Stats) -> impl FnMut(Output) + 'a {
    move |o| {
        *outputs += 1;
        stats.observe(&o);
    }
}

/// Reads `bytes` and sends the decoded events through the reorder window and the tracker
/// to the end, then the summary's analyses, as `report` does (outputs are counted, not
/// written).
pub fn replay_trace(bytes: &[u8], limits: &ReplayLimits) -> TraceCheck {
    let mut reorder = Reorderer::new(limits.reorder_delay_ns);
    let mut tracker = Tracker::with_max_open(limits.max_open);
    let mut outputs = 0u64;
    let mut stats: Option<Stats> = None;
    let (mut newest, mut lost_seen, mut started, mut offset) = (0u64, 0u64, 0u64, 0i64);
    let mut check = walk(bytes, |check, meta, block| {
        (started, offset) = (meta.started_ns, meta.realtime_offset_ns);
        let stats = stats.get_or_insert_with(|| {
            let mut s = Stats::new(meta.started_ns);
            for r in &meta.port_ranges {
                s.analysis.set_range(r.clone());
            }
            s
        });
        match block {
            Block::Events(raw) => {
                for rec in raw.chunks_exact(RECORD_SIZE) {
                    match Event::decode(rec) {
                        Ok(ev) => {
                            newest = newest.max(ev.ts_ns);
                            reorder.push(ev);
                        }
                        Err(_) => check.undecodable += 1,
                    }
                }
                let mut emit = sink(&mut outputs, stats);
                reorder
                    .release_excess(limits.max_reorder_held, |ev| tracker.process(ev, &mut emit));
                reorder.release(newest, |ev| tracker.process(ev, &mut emit));
                tracker.advance(newest.saturating_sub(reorder.delay_ns()), &mut emit);
            }
            Block::Lost(counts) => {
                // Counters from a damaged file can be anything: add them without overflow.
                let total = counts.iter().fold(0u64, |sum, &c| sum.saturating_add(c));
                if total > lost_seen {
                    lost_seen = total;
                    tracker.mark_lossy();
                }
            }
            Block::Held(held) => {
                for h in &held {
                    stats.analysis.held_at_start(h);
                }
                tracker.set_held_at_start(held);
            }
            Block::Ranges(ranges) => {
                for r in ranges {
                    stats.analysis.set_range(r);
                }
            }
            Block::End(end) => newest = newest.max(end.unwrap_or(0)),
        }
    });
    if let Some(stats) = &mut stats {
        {
            let mut emit = sink(&mut outputs, stats);
            reorder.release_all(|ev| tracker.process(ev, &mut emit));
            tracker.finish(&mut emit);
        }
        let span = Span {
            start_ns: started,
            end_ns: newest.max(started),
        };
        let summary = Summary::new(stats, &tracker.counters, Lost::default(), span, 10);
        let clock = WallClock {
            offset_ns: offset.into(),
        };
        for format in [Format::Text, Format::Jsonl] {
            let mut out = Sink::new(Vec::new(), format, clock);
            out.summary(&summary).expect("writing to memory");
            check.summary_bytes += out.into_inner().len();
        }
    }
    check.tracked_events = Some(tracker.counters.events);
    check.outputs = outputs;
    check
}

/// Reads `bytes` block by block, handing each intact one to `on_block`.
fn walk(bytes: &[u8], mut on_block: impl FnMut(&mut TraceCheck, &Metadata, Block)) -> TraceCheck {
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
                    check.records += (raw.len() / RECORD_SIZE) as u64;
                }
                on_block(&mut check, &reader.meta, block);
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
