//! The fuzzers' committed corpus and crash reproducers, replayed on stable without
//! cargo-fuzz: every file goes through the same checks as in its fuzz target
//! (`port_tracer::trace_check`), so a fixed crash stays fixed. Host-only, no root.

use std::path::{Path, PathBuf};

use port_tracer::trace_check::{check_reader_input, check_replay_input};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `dir`; fails when there are none, so the test cannot pass on nothing.
fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e} (the committed corpus is missing)", dir.display()));
    let mut files: Vec<_> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    assert!(!files.is_empty(), "{} holds no inputs", dir.display());
    files.sort();
    files
}

/// Runs `check` on every input in `dirs`; names each one that has problems.
fn replay(dirs: &[PathBuf], check: fn(&[u8]) -> Vec<String>) {
    let mut failed = Vec::new();
    for dir in dirs {
        for (path, bytes) in inputs(dir) {
            let problems = check(&bytes);
            if !problems.is_empty() {
                failed.push(format!("{}: {problems:?}", path.display()));
            }
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}

#[test]
fn trace_reader_corpus_and_regressions() {
    let fuzz = fuzz_dir();
    replay(
        &[
            fuzz.join("corpus/trace_reader"),
            fuzz.join("regressions/trace_reader"),
        ],
        check_reader_input,
    );
}

#[test]
fn trace_replay_corpus_and_regressions() {
    let fuzz = fuzz_dir();
    replay(
        &[
            fuzz.join("corpus/trace_replay"),
            fuzz.join("regressions/trace_replay"),
        ],
        check_replay_input,
    );
}
