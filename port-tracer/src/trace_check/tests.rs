//! The checker itself: that it reads deep into valid traces, and that it does flag a
//! malformed result (a checker that cannot fail would make the fuzzers useless).

use super::*;

/// Bytes that make a synthetic trace with every kind of block and event.
fn busy_input() -> Vec<u8> {
    (0..4000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

#[test]
fn a_synthetic_trace_is_valid_and_reaches_the_tracker() {
    let (bytes, limits) = synthesize(&busy_input());
    let check = replay_trace(&bytes, &limits);
    assert_eq!(check.error, None);
    assert_eq!(check.good_bytes, bytes.len() as u64);
    assert!(check.records > 100, "{check:?}");
    assert!(
        check.undecodable > 0 && check.undecodable < check.records,
        "{check:?}"
    );
    assert_eq!(
        check.tracked_events,
        Some(check.records - check.undecodable)
    );
    assert!(check.outputs > 0, "{check:?}");
    assert_eq!(check.problems(&bytes), Vec::<String>::new());
    // The decoding-only pass agrees on what is there.
    let read = read_trace(&bytes);
    assert_eq!(
        (read.records, read.undecodable),
        (check.records, check.undecodable)
    );
    assert_eq!(read.tracked_events, None);
}

#[test]
fn repaired_checksums_let_a_changed_payload_through() {
    let (bytes, _) = synthesize(&busy_input());
    let mut changed = bytes.clone();
    // The last block is END (empty): change the last record's comm, inside an EVENTS block.
    let at = changed.len() - 12 - 8;
    changed[at] ^= 0x55;
    assert!(matches!(
        read_trace(&changed).error,
        Some(TraceError::Corrupt { .. })
    ));
    let repaired = repair_checksums(&changed);
    assert_eq!(read_trace(&repaired).error, None);
    assert_eq!(
        repair_checksums(&bytes),
        bytes,
        "a valid trace is left as it is"
    );
    assert_eq!(repair_checksums(b"PTRACE\r\n\x01"), b"PTRACE\r\n\x01");
}

#[test]
fn damaged_inputs_give_well_formed_errors() {
    let (bytes, limits) = synthesize(&busy_input());
    for cut in [0, 5, 8, 15, 40, bytes.len() / 2, bytes.len() - 1] {
        let check = replay_trace(&bytes[..cut], &limits);
        assert!(check.error.is_some(), "cut at {cut}");
        assert_eq!(
            check.problems(&bytes[..cut]),
            Vec::<String>::new(),
            "cut at {cut}"
        );
    }
}

#[test]
fn malformed_results_are_flagged() {
    let bytes = b"PTRACE\r\n\x01\x00\x00\x00";
    let flagged = |check: TraceCheck| {
        let problems = check.problems(bytes);
        assert!(!problems.is_empty(), "{check:?} passed");
    };
    flagged(TraceCheck {
        error: Some(TraceError::Truncated { offset: 13 }),
        ..TraceCheck::default()
    });
    flagged(TraceCheck {
        error: Some(TraceError::Corrupt {
            offset: 12,
            what: "at the very end".into(),
        }),
        ..TraceCheck::default()
    });
    flagged(TraceCheck {
        error: Some(TraceError::NotATrace),
        ..TraceCheck::default()
    });
    flagged(TraceCheck {
        error: Some(TraceError::NewerVersion(1)),
        ..TraceCheck::default()
    });
    flagged(TraceCheck {
        error: Some(TraceError::Corrupt {
            offset: 8,
            what: "two\nlines".into(),
        }),
        ..TraceCheck::default()
    });
    // Reading stopped at 40 but the damage is said to be elsewhere.
    flagged(TraceCheck {
        good_bytes: 4,
        error: Some(TraceError::Truncated { offset: 8 }),
        ..TraceCheck::default()
    });
    // No error, yet not everything was read; and events lost on the way to the tracker.
    flagged(TraceCheck::default());
    flagged(TraceCheck {
        good_bytes: bytes.len() as u64,
        records: 3,
        tracked_events: Some(2),
        ..TraceCheck::default()
    });
}
