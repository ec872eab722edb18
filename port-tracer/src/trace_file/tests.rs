//! The trace format, written and read back; every way a file can be damaged.

use super::*;

fn meta() -> Metadata {
    Metadata {
        host: "h".into(),
        kernel_release: "6.1.0".into(),
        tier: "tracepoint".into(),
        port_tracer_version: "0.1.0".into(),
        record_size: RECORD_SIZE as u32,
        lost_reasons: vec!["ringbuf_full".into(), "map_full".into()],
        realtime_offset_ns: 1_700_000_000_000_000_000,
        started_ns: 42,
        port_ranges: vec![PortRange {
            netns: 4026531840,
            low: 32768,
            high: 60999,
            reserved: "8080".into(),
        }],
    }
}

fn record(n: u8) -> Vec<u8> {
    vec![n; RECORD_SIZE]
}

fn held() -> HeldAtStart {
    HeldAtStart {
        ends: crate::testing::ends(8080),
        owner: Task {
            pid: 7,
            tid: 7,
            uid: 0,
            cgroup_id: 1,
            comm: Comm::new("nginx"),
            thread: Comm::default(),
        },
        listening: true,
        time_wait: false,
        seen_ns: 0,
    }
}

fn range() -> PortRange {
    PortRange {
        netns: 4026532000,
        low: 40000,
        high: 40009,
        reserved: String::new(),
    }
}

/// A trace with a held block, three event blocks, a range block written between the
/// records it splits, a lost block, and the end.
fn sample() -> Vec<u8> {
    let mut w = TraceWriter::new(Vec::new(), &meta()).unwrap();
    w.write_held(&[held()]).unwrap();
    w.push_record(&record(1));
    w.write_ranges(&[range()]).unwrap();
    w.push_record(&record(2));
    w.write_events().unwrap();
    w.write_events().unwrap(); // nothing pending: no block
    w.write_lost(&[0, 3]).unwrap();
    w.push_record(&record(3));
    w.finish(99).unwrap();
    w.out
}

fn read_all(bytes: &[u8]) -> (Result<Vec<Block>, TraceError>, u64) {
    let mut r = match TraceReader::new(bytes) {
        Ok(r) => r,
        Err(e) => return (Err(e), 0),
    };
    let mut blocks = Vec::new();
    loop {
        match r.next_block() {
            Ok(Some(b)) => blocks.push(b),
            Ok(None) => return (Ok(blocks), r.offset),
            Err(e) => return (Err(e), r.offset),
        }
    }
}

#[test]
fn round_trip() {
    let bytes = sample();
    let r = TraceReader::new(&bytes[..]).unwrap();
    assert_eq!(r.meta, meta());
    let (blocks, end) = read_all(&bytes);
    assert_eq!(end, bytes.len() as u64);
    assert_eq!(
        blocks.unwrap(),
        vec![
            Block::Held(vec![held()]),
            Block::Events(record(1)),
            Block::Ranges(vec![range()]),
            Block::Events(record(2)),
            Block::Lost(vec![0, 3]),
            Block::Events(record(3)),
            Block::End(Some(99)),
        ]
    );
}

#[test]
fn a_cut_file_reads_up_to_its_last_whole_block() {
    let bytes = sample();
    let (whole, _) = read_all(&bytes);
    let whole = whole.unwrap();
    let header_len = TraceReader::new(&bytes[..]).unwrap().offset as usize;
    for cut in 0..bytes.len() {
        let (got, offset) = read_all(&bytes[..cut]);
        if cut < header_len {
            assert!(
                matches!(
                    got,
                    Err(TraceError::NotATrace | TraceError::Truncated { .. })
                ),
                "cut {cut}: {got:?}"
            );
            continue;
        }
        // Whatever came before the cut is intact; the cut block is reported, not guessed.
        match got {
            Ok(blocks) => {
                assert_eq!(
                    offset, cut as u64,
                    "only a cut on a block boundary ends cleanly"
                );
                assert_eq!(blocks[..], whole[..blocks.len()]);
            }
            Err(TraceError::Truncated { offset: at }) => {
                assert_eq!(at, offset);
                assert!(at <= cut as u64);
            }
            Err(e) => panic!("cut {cut}: {e}"),
        }
    }
}

#[test]
fn flipped_bits_are_refused_with_their_offset() {
    let bytes = sample();
    let header_len = TraceReader::new(&bytes[..]).unwrap().offset as usize;
    for at in 8..bytes.len() {
        let mut bad = bytes.clone();
        bad[at] ^= 0x40;
        let (got, _) = read_all(&bad);
        match got {
            Err(TraceError::Corrupt { offset, .. }) => assert!(offset as usize <= at),
            // A flipped length can make a block claim more than the file holds.
            Err(TraceError::Truncated { .. }) => {}
            Err(TraceError::NewerVersion(_)) => assert!(at < header_len),
            other => panic!("flip at {at} went unnoticed: {other:?}"),
        }
    }
}

#[test]
fn foreign_and_newer_files_are_refused() {
    assert_eq!(read_all(b"").0.unwrap_err(), TraceError::NotATrace);
    assert_eq!(
        read_all(b"{\"type\":\"assign\"}\n").0.unwrap_err(),
        TraceError::NotATrace
    );
    let mut newer = sample();
    newer[8..10].copy_from_slice(&(VERSION + 1).to_le_bytes());
    assert_eq!(
        read_all(&newer).0.unwrap_err(),
        TraceError::NewerVersion(VERSION + 1)
    );
    let e = TraceError::NewerVersion(2).to_string();
    assert!(e.contains("upgrade"), "{e}");

    let mut other_size = meta();
    other_size.record_size = 96;
    let w = TraceWriter::new(Vec::new(), &other_size).unwrap();
    let e = TraceReader::new(&w.out[..]).err().unwrap().to_string();
    assert!(e.contains("records of 96 bytes"), "{e}");
}

#[test]
fn a_block_that_does_not_parse_is_reported_at_its_start() {
    // Checksums hold, the payload does not parse: before the fix the reader's offset had
    // already moved past the block, so `report` called the bad block "good bytes".
    let mut w = TraceWriter::new(Vec::new(), &meta()).unwrap();
    let start = w.out.len() as u64;
    w.block(Tag::Held, b"[{\"not\": \"a socket\"}]").unwrap();
    w.block(Tag::Events, &[0u8; RECORD_SIZE + 1]).unwrap();
    let bytes = w.out;
    let mut r = TraceReader::new(&bytes[..]).unwrap();
    let e = r.next_block().unwrap_err();
    assert!(
        matches!(e, TraceError::Corrupt { offset, .. } if offset == start),
        "{e}"
    );
    assert_eq!(r.offset, start);
}

#[test]
fn a_length_beyond_the_file_is_truncation_at_the_block() {
    let mut bytes = sample();
    let header_len = TraceReader::new(&bytes[..]).unwrap().offset as usize;
    bytes.truncate(header_len + 12);
    // A block claiming 60 MiB in a file that ends after its head.
    bytes[header_len + 4..header_len + 8].copy_from_slice(&(60u32 << 20).to_le_bytes());
    let mut r = TraceReader::new(&bytes[..]).unwrap();
    assert_eq!(
        r.next_block().unwrap_err(),
        TraceError::Truncated {
            offset: header_len as u64
        }
    );
}

#[test]
fn older_traces_are_read_with_their_records_widened() {
    // Version 1: before records carried the thread's name (104 bytes); version 2: before
    // they carried the time inside the allocator (120 bytes).
    for (version, size, lacks) in [
        (1u16, RECORD_SIZE_V1, "no thread name"),
        (2, RECORD_SIZE_V2, "no allocator time"),
    ] {
        let mut old = meta();
        old.record_size = size as u32;
        let mut w = TraceWriter::new(Vec::new(), &old).unwrap();
        let rec: Vec<u8> = (0..size).map(|i| i as u8).collect();
        w.push_record(&rec);
        w.push_record(&rec);
        w.finish(7).unwrap();
        let mut bytes = w.out;
        bytes[8..10].copy_from_slice(&version.to_le_bytes());
        let bytes = crate::trace_check::repair_checksums(&bytes);
        let mut r = TraceReader::new(&bytes[..]).unwrap();
        let Some(Block::Events(events)) = r.next_block().unwrap() else {
            panic!("an events block first")
        };
        assert_eq!(events.len(), 2 * RECORD_SIZE);
        for got in events.chunks_exact(RECORD_SIZE) {
            assert_eq!(&got[..size], &rec[..]);
            assert!(got[size..].iter().all(|&b| b == 0), "{lacks}");
        }
        assert_eq!(r.next_block().unwrap(), Some(Block::End(Some(7))));

        // An older trace claiming this version's record size is corrupt.
        let mut wrong = meta();
        wrong.record_size = RECORD_SIZE as u32;
        let mut bytes = TraceWriter::new(Vec::new(), &wrong).unwrap().out;
        bytes[8..10].copy_from_slice(&version.to_le_bytes());
        let bytes = crate::trace_check::repair_checksums(&bytes);
        let e = TraceReader::new(&bytes[..]).err().unwrap().to_string();
        assert!(
            e.contains(&format!("version {version} traces have {size}")),
            "{e}"
        );
    }
}
