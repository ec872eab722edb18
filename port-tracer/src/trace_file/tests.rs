//! The trace format, written and read back; every way a file can be damaged.

use super::*;
use crate::event::{Comm, Kind};

fn meta() -> Metadata {
    Metadata {
        boot_id: None,
        part: None,
        recorded_only: None,
        host: "h".into(),
        kernel_release: "6.1.0".into(),
        tier: "tracepoint".into(),
        port_tracer_version: "0.1.0".into(),
        record_size: RECORD_SIZE_VARIABLE,
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
    crate::testing::event(Kind::Release, n.into(), n.into(), 1000).encode()
}

fn records(n: u8) -> Records {
    Records::current(record(n))
}

fn held() -> HeldAtStart {
    HeldAtStart {
        ends: crate::testing::ends(8080),
        owner: Task {
            pid: 7,
            tid: 7,
            ppid: Some(1),
            cgroup_id: 1,
            comm: Comm::new("nginx"),
            ..Task::default()
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
fn cgroup() -> crate::cgroups::Entry {
    crate::cgroups::Entry {
        id: 4242,
        path: "/system.slice/a \"quoted\"\n.service".into(),
        runtime: crate::cgroups::RuntimeNames {
            container_name: Some("web".into()),
            ..Default::default()
        },
    }
}

fn sample() -> Vec<u8> {
    let mut w = TraceWriter::new(Vec::new(), &meta()).unwrap();
    w.write_held(&[held()]).unwrap();
    w.push_record(&record(1));
    w.write_ranges(&[range()]).unwrap();
    w.push_record(&record(2));
    w.write_cgroups(&[cgroup()]).unwrap();
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
            Block::Events(records(1)),
            Block::Ranges(vec![range()]),
            Block::Events(records(2)),
            Block::Cgroups(vec![cgroup()]),
            Block::Lost(vec![0, 3]),
            Block::Events(records(3)),
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
    assert!(
        e.contains("record size 96 in the metadata, version 6 traces have 0"),
        "{e}"
    );
}

#[test]
fn a_block_that_does_not_parse_is_reported_at_its_start() {
    // Checksums hold, the payload does not parse: before the fix the reader's offset had
    // already moved past the block, so `report` called the bad block "good bytes".
    let mut w = TraceWriter::new(Vec::new(), &meta()).unwrap();
    let start = w.out.len() as u64;
    w.block(Tag::Held, b"[{\"not\": \"a socket\"}]").unwrap();
    // A record head that says the record has no bytes.
    w.block(Tag::Events, &[0u8; 41]).unwrap();
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
fn records_are_read_whole_at_their_own_lengths() {
    let mut six = crate::testing::event(Kind::Assign, 5, 6, 7);
    six.ends.family = Family::Ipv6;
    six.ends.laddr = "::1".parse().unwrap();
    six.ends.raddr = "::1".parse().unwrap();
    six.task.pid = 3;
    six.task.ppid = Some(1);
    let mut w = TraceWriter::new(Vec::new(), &meta()).unwrap();
    let (a, b) = (record(1), six.encode());
    w.push_record(&a);
    w.push_record(&b);
    w.finish(9).unwrap();
    let mut r = TraceReader::new(&w.out[..]).unwrap();
    let Some(Block::Events(events)) = r.next_block().unwrap() else {
        panic!("an events block first")
    };
    let got: Vec<&[u8]> = events.iter().collect();
    assert_eq!(got, [&a[..], &b[..]]);
    assert_eq!(events.decode(got[1]), Ok(six));
    // A record cut in the middle, or claiming more than the block holds, is damage.
    for bad in [&a[..39], &[a.clone(), b[..60].to_vec()].concat()[..]] {
        let mut w = TraceWriter::new(Vec::new(), &meta()).unwrap();
        let start = w.out.len() as u64;
        w.block(Tag::Events, bad).unwrap();
        let e = TraceReader::new(&w.out[..])
            .unwrap()
            .next_block()
            .unwrap_err();
        assert!(
            matches!(&e, TraceError::Corrupt { offset, what } if *offset == start
                && what.contains("of the events block")),
            "{e}"
        );
    }
}

#[test]
fn older_traces_are_read_in_their_own_layout() {
    // Version 1: before records carried the thread's name (104 bytes); version 2: before
    // they carried the time inside the allocator (120 bytes); version 3: 128 bytes. None
    // carried the owner's parent.
    let mut rec = legacy::LegacyRecord {
        ts_ns: 11,
        sock_id: 0x10,
        cgroup_id: 1,
        netns: 7,
        pid: 5,
        tid: 6,
        uid: 0,
        lport: 40000,
        rport: 80,
        kind: port_tracer_common::EventKind::Assign as u8,
        origin: port_tracer_common::Origin::Connect as u8,
        proto: port_tracer_common::IPPROTO_TCP,
        family: port_tracer_common::AF_INET,
        flags: port_tracer_common::flags::ALLOC_TIMED,
        alloc_ns: 1500,
        ..Default::default()
    };
    rec.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    rec.raddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    rec.comm[..4].copy_from_slice(b"curl");
    rec.thread[..2].copy_from_slice(b"w1");
    for (version, size) in [
        (1u16, legacy::SIZE_V1),
        (2, legacy::SIZE_V2),
        (3, legacy::SIZE_V3),
    ] {
        let mut old = meta();
        old.record_size = size as u32;
        // Versions before 3 had no time to mark.
        rec.flags = if version == 3 {
            port_tracer_common::flags::ALLOC_TIMED
        } else {
            0
        };
        let mut w = TraceWriter::with_compression(Vec::new(), &old, Compression::None).unwrap();
        w.push_record(&rec.bytes()[..size]);
        w.push_record(&rec.bytes()[..size]);
        w.finish(7).unwrap();
        let mut bytes = w.out;
        bytes[8..10].copy_from_slice(&version.to_le_bytes());
        let bytes = crate::trace_check::repair_checksums(&bytes);
        let mut r = TraceReader::new(&bytes[..]).unwrap();
        let Some(Block::Events(events)) = r.next_block().unwrap() else {
            panic!("an events block first")
        };
        let got: Vec<Event> = events.iter().map(|b| events.decode(b).unwrap()).collect();
        assert_eq!(got.len(), 2);
        let ev = got[0];
        assert_eq!((ev.ts_ns, ev.ends.lport, ev.task.pid), (11, 40000, 5));
        assert_eq!(ev.task.comm.as_str(), "curl");
        assert_eq!(ev.task.ppid, None);
        assert_eq!(
            ev.task.thread.as_str(),
            if version == 1 { "" } else { "w1" }
        );
        assert_eq!(ev.alloc_ns, (version == 3).then_some(1500));
        assert_eq!(r.next_block().unwrap(), Some(Block::End(Some(7))));

        // An older trace claiming another record size is corrupt.
        let mut wrong = meta();
        wrong.record_size = 99;
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

#[test]
fn blocks_are_compressed_and_version_5_still_reads() {
    let compressed = sample();
    let mut w = TraceWriter::with_compression(Vec::new(), &meta(), Compression::None).unwrap();
    w.write_held(&[held()]).unwrap();
    w.push_record(&record(1));
    w.write_ranges(&[range()]).unwrap();
    w.push_record(&record(2));
    w.write_cgroups(&[cgroup()]).unwrap();
    w.write_lost(&[0, 3]).unwrap();
    w.push_record(&record(3));
    w.finish(99).unwrap();
    let raw = w.out;
    assert!(
        compressed.len() < raw.len(),
        "{} >= {}",
        compressed.len(),
        raw.len()
    );
    // The same blocks either way.
    assert_eq!(read_all(&compressed).0.unwrap(), read_all(&raw).0.unwrap());
    // Version 5 wrote every payload as it is, the byte after the tag 0: read as before.
    let mut v5 = raw.clone();
    v5[8..10].copy_from_slice(&5u16.to_le_bytes());
    let v5 = crate::trace_check::repair_checksums(&v5);
    let (blocks, end) = read_all(&v5);
    assert_eq!(blocks.unwrap(), read_all(&raw).0.unwrap());
    assert_eq!(end, v5.len() as u64);
}

/// The first block of a trace whose only block is `payload`, stored with `encoding`.
fn one_block(encoding: u8, payload: &[u8]) -> Result<Option<Block>, TraceError> {
    let w = TraceWriter::with_compression(Vec::new(), &meta(), Compression::None).unwrap();
    let mut bytes = w.out;
    let mut head = [Tag::Events as u8, encoding, 0, 0, 0, 0, 0, 0];
    head[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    crc.update(payload);
    bytes.extend_from_slice(&head);
    bytes.extend_from_slice(&crc.finalize().to_le_bytes());
    bytes.extend_from_slice(payload);
    let mut r = TraceReader::new(&bytes[..]).unwrap();
    r.next_block()
}

#[test]
fn compressed_blocks_that_lie_are_corrupt() {
    let records: Vec<u8> = [record(1), record(2)].concat();
    let frame = zstd::bulk::compress(&records, 1).unwrap();
    assert_eq!(
        one_block(1, &frame).unwrap(),
        Some(Block::Events(Records::current(records.clone())))
    );
    let what = |r: Result<Option<Block>, TraceError>| match r {
        Err(TraceError::Corrupt { what, .. }) => what,
        other => panic!("not corrupt: {other:?}"),
    };
    // An encoding this version does not know.
    assert!(what(one_block(2, &frame)).contains("unknown block encoding 2"));
    // Not zstd at all.
    assert!(what(one_block(1, &records)).contains("compressed block"));
    // A frame cut short, and one whose content is not whole records.
    assert!(what(one_block(1, &frame[..frame.len() - 3])).contains("compressed block"));
    let half = zstd::bulk::compress(&records[..records.len() - 5], 1).unwrap();
    assert!(what(one_block(1, &half)).contains("record of"));
    // A frame that claims more than a block may hold is refused before any allocation.
    // (A frame header by hand: magic, single segment with an 8-byte content size, then
    // one empty last raw block.)
    let claimed = u64::from(MAX_BLOCK) + 1;
    let mut huge = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
    huge.extend_from_slice(&claimed.to_le_bytes());
    huge.extend_from_slice(&[1, 0, 0]);
    assert!(what(one_block(1, &huge)).contains(&format!("compressed block of {claimed} bytes")));
}
