//! The recording side that `record` and live `--record` share: raw records to a trace file
//! ([`crate::trace_file`]), each namespace's range and each cgroup's path before the first
//! record naming it, the kernel's lost counts; with a [`Rotation`], a ring of files in a
//! directory (`tcpdump -C/-W`), each readable alone.

use std::{
    fs::File,
    io::{self, BufWriter},
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::{
    cgroups::Entry,
    lifetime::HeldAtStart,
    output::file,
    trace_file::{Compression, Metadata, Part, PortRange, TraceWriter},
};

/// Where a recording goes.
#[derive(Clone, Debug)]
pub struct RecordTarget {
    /// The trace file; with a rotation, the directory of the ring.
    pub path: PathBuf,
    /// Replace the trace file if it exists (not with a rotation, whose files are new).
    pub force: bool,
    pub rotate: Option<Rotation>,
    pub compression: Compression,
}

/// A ring of trace files: a new one when the current one reaches `size` bytes, the oldest
/// removed beyond `keep`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    pub size: u64,
    pub keep: usize,
}

/// Records waiting in memory are written as a block once they reach this size, between
/// the timer's flushes.
pub const BLOCK_BYTES: usize = 4 << 20;

/// What the name of a ring's file looks like: `trace-20261207T031200Z-000001.ptrace`
/// (the recording's start in UTC, then the part's number), so names sort oldest first.
const PREFIX: &str = "trace-";
const SUFFIX: &str = ".ptrace";

/// The first file, opened before the programs load (a refused path costs no loading).
pub struct Opened {
    target: RecordTarget,
    file: File,
    path: PathBuf,
    created: Option<file::Created>,
    ring_prefix: Option<String>,
}

impl Opened {
    pub fn open(target: RecordTarget) -> Result<Opened> {
        let (path, ring_prefix) = match target.rotate {
            None => (target.path.clone(), None),
            Some(r) => {
                if r.keep == 0 || r.size == 0 {
                    bail!("--rotate and --keep take numbers above 0");
                }
                ensure_directory(&target.path)?;
                let prefix = format!("{PREFIX}{}-", utc_stamp(crate::clock::realtime_ns()));
                (target.path.join(part_name(&prefix, 1)), Some(prefix))
            }
        };
        let file = file::create(&path, target.force && ring_prefix.is_none(), "trace file")?;
        let created = file::Created::of(&path, &file);
        Ok(Opened {
            target,
            file,
            path,
            created,
            ring_prefix,
        })
    }

    /// Removes the file if nothing was written to it (the programs did not load).
    pub fn abandon(self) {
        if let Some(c) = self.created {
            c.remove_if_empty()
        }
    }

    /// Starts the trace: header, the cgroups of the sockets held at start, those sockets.
    pub fn start(
        self,
        mut meta: Metadata,
        held: &[HeldAtStart],
        cgroups: Vec<Entry>,
    ) -> Result<Recorder> {
        if self.ring_prefix.is_some() {
            meta.part = Some(Part {
                seq: 1,
                started_ns: meta.started_ns,
            });
        }
        let writing = format!("writing to {}", self.path.display());
        let w = TraceWriter::with_compression(
            BufWriter::with_capacity(BLOCK_BYTES, self.file),
            &meta,
            self.target.compression,
        )
        .context(writing.clone())?;
        let mut rec = Recorder {
            ring: self.ring_prefix.map(|prefix| Ring {
                dir: self.target.path.clone(),
                prefix,
                removed: 0,
            }),
            target: self.target,
            meta,
            w,
            current: self.path,
            cgroups: Vec::new(),
            ranges: Vec::new(),
            lost_written: Vec::new(),
            records: 0,
            bytes_in: 0,
            bytes_out: 0,
            parts: 1,
        };
        rec.cgroups(cgroups).context(writing.clone())?;
        rec.w.write_held(held).context(writing.clone())?;
        rec.w.flush().context(writing)?;
        Ok(rec)
    }
}

/// A recording under way.
pub struct Recorder {
    target: RecordTarget,
    meta: Metadata,
    w: TraceWriter<BufWriter<File>>,
    /// The file being written.
    current: PathBuf,
    ring: Option<Ring>,
    /// What a new file of the ring repeats so that it reads alone.
    cgroups: Vec<Entry>,
    ranges: Vec<PortRange>,
    lost_written: Vec<u64>,
    /// Records written, and bytes before and after compression (files rotated away
    /// included).
    pub records: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// Files written.
    pub parts: u32,
}

struct Ring {
    dir: PathBuf,
    prefix: String,
    /// Files removed beyond `keep`.
    removed: u64,
}

/// What a recording came to.
#[derive(Debug)]
pub struct Recorded {
    pub records: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub parts: u32,
    pub removed: u64,
}

impl Recorder {
    /// What errors name: the file being written.
    pub fn writing(&self) -> String {
        format!("writing to {}", self.current.display())
    }

    /// One raw kernel record; a block is written once enough wait.
    pub fn push(&mut self, record: &[u8]) -> io::Result<()> {
        self.w.push_record(record);
        self.records += 1;
        if self.w.pending_bytes() >= BLOCK_BYTES {
            self.w.write_events()?;
            self.rotate_if_full()?;
        }
        Ok(())
    }

    /// The range of a namespace first seen, before its records.
    pub fn range(&mut self, range: PortRange) -> io::Result<()> {
        self.w.write_ranges(std::slice::from_ref(&range))?;
        self.ranges.push(range);
        Ok(())
    }

    /// Cgroups first named, before their records.
    pub fn cgroups(&mut self, entries: Vec<Entry>) -> io::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.w.write_cgroups(&entries)?;
        self.cgroups.extend(entries);
        Ok(())
    }

    /// At each drain: the records so far as a block, the lost counts if they changed,
    /// flushed (a crash loses at most this tick's records), then a new file if this one is
    /// full.
    pub fn tick(&mut self, lost: &[u64]) -> io::Result<()> {
        self.w.write_events()?;
        if lost != self.lost_written.as_slice() {
            self.w.write_lost(lost)?;
            self.lost_written = lost.to_vec();
        }
        self.w.flush()?;
        self.rotate_if_full()
    }

    /// Ends the recording cleanly at monotonic `end_ns`.
    pub fn finish(mut self, lost: &[u64], end_ns: u64) -> io::Result<Recorded> {
        self.w.write_lost(lost)?;
        self.w.finish(end_ns)?;
        self.account();
        Ok(Recorded {
            records: self.records,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            parts: self.parts,
            removed: self.ring.as_ref().map_or(0, |r| r.removed),
        })
    }

    fn account(&mut self) {
        self.bytes_in += std::mem::take(&mut self.w.bytes_in);
        self.bytes_out += std::mem::take(&mut self.w.bytes_out);
    }

    /// With a rotation: once this file holds `size` bytes, ends it and goes on in the next,
    /// which repeats the cgroups, ranges and lost counts so far; then removes the oldest
    /// files beyond `keep`.
    fn rotate_if_full(&mut self) -> io::Result<()> {
        let (Some(ring), Some(rotation)) = (&mut self.ring, self.target.rotate) else {
            return Ok(());
        };
        if self.w.bytes_out < rotation.size {
            return Ok(());
        }
        let now = crate::clock::monotonic_ns();
        let seq = self.parts + 1;
        let path = ring.dir.join(part_name(&ring.prefix, seq));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_0600()
            .open(&path)?;
        let mut meta = self.meta.clone();
        meta.part = Some(Part {
            seq,
            started_ns: now,
        });
        let mut next = TraceWriter::with_compression(
            BufWriter::with_capacity(BLOCK_BYTES, file),
            &meta,
            self.target.compression,
        )?;
        if !self.cgroups.is_empty() {
            next.write_cgroups(&self.cgroups)?;
        }
        if !self.ranges.is_empty() {
            next.write_ranges(&self.ranges)?;
        }
        if !self.lost_written.is_empty() {
            next.write_lost(&self.lost_written)?;
        }
        next.flush()?;
        // The old file ends only once the new one holds what it repeats: a reader of the
        // ring never finds neither.
        let mut old = std::mem::replace(&mut self.w, next);
        old.finish(now)?;
        self.bytes_in += old.bytes_in;
        self.bytes_out += old.bytes_out;
        self.current = path;
        self.parts = seq;
        ring.removed += prune(&ring.dir, rotation.keep)?;
        Ok(())
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
    }
}

fn part_name(prefix: &str, seq: u32) -> String {
    format!("{prefix}{seq:06}{SUFFIX}")
}

/// Whether `name` is a file of a ring (any recording's).
pub fn is_part_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(PREFIX)
        .and_then(|r| r.strip_suffix(SUFFIX))
    else {
        return false;
    };
    // 20261207T031200Z-000001
    let b = rest.as_bytes();
    b.len() == 23
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[16] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 8 | 15 | 16) || c.is_ascii_digit())
}

/// Removes the oldest files of rings in `dir` beyond `keep` (names sort oldest first);
/// how many. Only names of ring files are touched; unlinking never follows a link.
fn prune(dir: &Path, keep: usize) -> io::Result<u64> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| is_part_name(n))
        .collect();
    if names.len() <= keep {
        return Ok(0);
    }
    names.sort();
    let mut removed = 0;
    for name in &names[..names.len() - keep] {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => removed += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(removed)
}

/// `path` as the directory of a ring: created (mode 0700) if missing; refused if it is a
/// symbolic link or not a directory.
fn ensure_directory(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!(
                "{} is a symbolic link: not followed (name the directory itself)",
                path.display()
            )
        }
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!(
            "{} is not a directory: with --rotate, --output names the directory of the \
             trace files",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .with_context(|| format!("cannot create the directory {}", path.display())),
        Err(e) => Err(e).with_context(|| format!("cannot use {}", path.display())),
    }
}

/// `YYYYMMDDTHHMMSSZ` of a wall time in ns.
fn utc_stamp(wall_ns: u64) -> String {
    let secs = (wall_ns / 1_000_000_000) as libc::time_t;
    // SAFETY: tm is plain integers; gmtime_r fills it from a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::gmtime_r(&secs, &mut tm) };
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        i64::from(tm.tm_year) + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // A recording dropped without `finish` (an error) still hands what it has to the
        // file: readable up to here, without its end mark.
        let _ = self.w.write_events();
        let _ = self.w.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_names_sort_and_are_recognised() {
        let p = format!("{PREFIX}{}-", utc_stamp(1_796_000_000_000_000_000));
        assert_eq!(p, "trace-20261130T005320Z-");
        let a = part_name(&p, 9);
        let b = part_name(&p, 10);
        assert!(a < b && is_part_name(&a) && is_part_name(&b), "{a} {b}");
        for not in [
            "trace-x.ptrace",
            "notes.txt",
            "trace-20261208T042000Z-000001.ptrace.tmp",
        ] {
            assert!(!is_part_name(not), "{not}");
        }
    }

    #[test]
    fn pruning_keeps_the_newest_and_touches_nothing_else() {
        let dir = std::env::temp_dir().join(format!("pt-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let names: Vec<String> = (1..=5)
            .map(|i| part_name("trace-20261208T042000Z-", i))
            .collect();
        for n in &names {
            std::fs::write(dir.join(n), b"x").unwrap();
        }
        std::fs::write(dir.join("mine.txt"), b"keep me").unwrap();
        assert_eq!(prune(&dir, 2).unwrap(), 3);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["mine.txt".to_string(), names[3].clone(), names[4].clone()]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
