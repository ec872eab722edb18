//! The files of one recording read as one trace: a single file, or the ring that
//! `record --rotate` leaves (named one by one, or by their directory), in order, with what
//! is missing where older files were rotated away.

use std::{
    fs::File,
    io::BufReader,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use super::{Block, Blocks, Metadata, TraceError, TraceReader};

/// A file of the set, as its header says.
#[derive(Debug)]
pub struct SetFile {
    pub path: PathBuf,
    pub meta: Metadata,
    pub version: u16,
    pub size: u64,
}

impl SetFile {
    fn seq(&self) -> u32 {
        self.meta.part.map_or(1, |p| p.seq)
    }

    fn started_ns(&self) -> u64 {
        self.meta
            .part
            .map_or(self.meta.started_ns, |p| p.started_ns)
    }
}

/// The recording's files, read in order as one trace.
pub struct TraceSet {
    files: Vec<SetFile>,
    /// The file being read, and its reader once opened.
    at: usize,
    reader: Option<TraceReader<BufReader<File>>>,
    /// Earlier files that ended without their end mark (their recorder was killed, and yet
    /// a later file of the same recording exists: only by hand).
    pub unended: Vec<PathBuf>,
}

/// Where the files of a set leave holes.
#[derive(Debug, PartialEq, Eq)]
pub struct Coverage {
    pub files: usize,
    /// The first and last file's number in the recording.
    pub first_seq: u32,
    pub last_seq: u32,
    /// Monotonic: when the recording began, and when the first file here began.
    pub recording_started_ns: u64,
    pub first_started_ns: u64,
    /// Numbers between the first and the last that are not here.
    pub gaps: Vec<u32>,
}

impl TraceSet {
    /// The trace files `paths` name (a directory stands for its `*.ptrace` files), which
    /// must be of one recording.
    pub fn open(paths: &[PathBuf]) -> Result<TraceSet> {
        let mut names = Vec::new();
        for p in paths {
            if std::fs::metadata(p).is_ok_and(|m| m.is_dir()) {
                let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                    .with_context(|| format!("cannot read the directory {}", p.display()))?
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.path())
                    .filter(|q| q.extension().is_some_and(|x| x == "ptrace"))
                    .collect();
                if inside.is_empty() {
                    bail!(
                        "{}: no trace files (*.ptrace) in this directory",
                        p.display()
                    );
                }
                inside.sort();
                names.extend(inside);
            } else {
                names.push(p.clone());
            }
        }
        let mut files = Vec::with_capacity(names.len());
        for path in names {
            let file = File::open(&path)
                .with_context(|| format!("cannot open trace {}", path.display()))?;
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            let r = TraceReader::new(BufReader::new(file))
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            files.push(SetFile {
                path,
                meta: r.meta,
                version: r.version,
                size,
            });
        }
        check_one_recording(&mut files)?;
        Ok(TraceSet {
            files,
            at: 0,
            reader: None,
            unended: Vec::new(),
        })
    }

    /// The file being read (or the first, before reading).
    pub fn path(&self) -> &Path {
        &self.files[self.at.min(self.files.len() - 1)].path
    }

    /// Its size.
    pub fn size(&self) -> u64 {
        self.files[self.at.min(self.files.len() - 1)].size
    }

    pub fn coverage(&self) -> Coverage {
        let (first, last) = (&self.files[0], &self.files[self.files.len() - 1]);
        let present: Vec<u32> = self.files.iter().map(SetFile::seq).collect();
        Coverage {
            files: self.files.len(),
            first_seq: first.seq(),
            last_seq: last.seq(),
            recording_started_ns: first.meta.started_ns,
            first_started_ns: first.started_ns(),
            gaps: (first.seq()..last.seq())
                .filter(|s| !present.contains(s))
                .collect(),
        }
    }
}

/// Sorts `files` by their number in the recording; refuses files of several recordings,
/// and one file twice.
fn check_one_recording(files: &mut [SetFile]) -> Result<()> {
    let key = |f: &SetFile| {
        (
            f.meta.boot_id.clone(),
            f.meta.started_ns,
            f.meta.host.clone(),
        )
    };
    let first = key(&files[0]);
    if let Some(other) = files.iter().find(|f| key(f) != first) {
        bail!(
            "{} and {} are files of two recordings (started at different times): report \
             one recording at a time (a ring's files share the name's \
             trace-YYYYMMDDTHHMMSSZ- prefix)",
            files[0].path.display(),
            other.path.display()
        );
    }
    files.sort_by_key(SetFile::seq);
    if let Some(w) = files.windows(2).find(|w| w[0].seq() == w[1].seq()) {
        bail!(
            "{} and {} are the same file of one recording (part {}): name it once",
            w[0].path.display(),
            w[1].path.display(),
            w[0].seq()
        );
    }
    Ok(())
}

impl Blocks for TraceSet {
    fn meta(&self) -> &Metadata {
        &self.files[0].meta
    }

    fn version(&self) -> u16 {
        self.files[0].version
    }

    fn next_block(&mut self) -> Result<Option<Block>, TraceError> {
        loop {
            let last = self.at + 1 == self.files.len();
            if self.reader.is_none() {
                let path = &self.files[self.at].path;
                let file = File::open(path).map_err(|e| {
                    TraceError::Io(format!("cannot open trace {}: {e}", path.display()))
                })?;
                self.reader = Some(TraceReader::new(BufReader::with_capacity(1 << 20, file))?);
            }
            let r = self.reader.as_mut().expect("opened above");
            match r.next_block()? {
                // An earlier file's end is where the next one goes on.
                Some(Block::End(_)) if !last => self.next_file(true),
                Some(block) => return Ok(Some(block)),
                None if last => return Ok(None),
                None => self.next_file(false),
            }
        }
    }

    fn good_bytes(&self) -> u64 {
        self.reader.as_ref().map_or(0, |r| r.offset)
    }
}

impl TraceSet {
    fn next_file(&mut self, ended: bool) {
        if !ended {
            self.unended.push(self.files[self.at].path.clone());
        }
        self.reader = None;
        self.at += 1;
    }
}
