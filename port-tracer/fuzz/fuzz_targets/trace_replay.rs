//! Any bytes through the reorder window and the tracker to the end: trace files as they
//! are and with checksums repaired, other inputs as synthetic traces of arbitrary event
//! sequences. Nothing may panic (the tracker's `expect`s included).
#![no_main]

use libfuzzer_sys::fuzz_target;
use port_tracer::trace_check::check_replay_input;

fuzz_target!(|data: &[u8]| {
    let problems = check_replay_input(data);
    assert!(problems.is_empty(), "{problems:#?}");
});
