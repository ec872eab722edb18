//! Any bytes as a trace file: header, every block, every record decoded; as they are and
//! with checksums repaired. Nothing may panic, and every error must point inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use port_tracer::trace_check::check_reader_input;

fuzz_target!(|data: &[u8]| {
    let problems = check_reader_input(data);
    assert!(problems.is_empty(), "{problems:#?}");
});
