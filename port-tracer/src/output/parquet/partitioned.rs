//! `export --format parquet --output-dir DIR`: many hosts' lifetimes as one Parquet
//! dataset, in the Hive-style partitions that DuckDB, Spark, Trino and pyarrow read as
//! columns:
//!
//! ```text
//! DIR/host=HOST/date=YYYY-MM-DD/part-N.parquet
//! ```
//!
//! - HOST is the run's host (`--host`, or the name the trace recorded), escaped as Hive and
//!   Spark escape partition values ([`host_dir`]): a recorded name is whatever the traced
//!   host called itself, and `/`, `=`, `%` or a control character in it must neither leave
//!   DIR nor change what readers parse. No host known: Hive's null partition,
//!   `host=__HIVE_DEFAULT_PARTITION__`, which readers take as null, as the rows' `host` is.
//! - date is the UTC day the trace first saw the lifetime ([`first_seen_ns`]).
//! - The rows keep their `host` column: a file read alone is what `--output` writes, and
//!   readers given both take the directory's value (DuckDB and Spark, tested), the same.
//! - A new part once one reaches about `--max-file-size` bytes ([`SizeModel`]). Each is
//!   written under a hidden name (`.part-N.parquet.tmp`: readers skip names starting with
//!   `.`, and `*.parquet` does not match it) and renamed when the export ends, to a number
//!   no file there has: nothing is replaced, so exports of other hosts, or of the same host
//!   later, add files. An export that fails removes what it wrote: readers see all of an
//!   export or none of it.
//! - Nothing made under DIR is reached through a symbolic link: each directory is opened
//!   from its parent's descriptor with `O_NOFOLLOW`, each file created with `O_EXCL`.
//! - Access ([`Modes`]): private by default, as every output is (directories 0700, files
//!   0600). A DIR with its set-group-id bit (`chgrp GROUP DIR; chmod 2750 DIR`) shares
//!   what is made under it with its group: read and search, never write.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::{DirBuilderExt, MetadataExt},
    },
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};

use super::{ParquetTable, TableSizes, ROW_GROUP_ROWS};
use crate::{
    cgroups::{Cgroups, Lookup},
    event::{Event, Origin},
    lifetime::Lifetime,
    output::{columns::Row, printable, Partitioning, Printer, RunInfo, WallClock},
    summary::Summary,
};

/// `--max-file-size` unless given.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 128 << 20;

/// Parts open at once, one per date being written: a trace crossing midnight writes two
/// dates at once (lifetimes end in order, and are dated by their start). When another
/// date comes, the part written least recently is closed; each open part buffers up to a
/// row group.
const MAX_OPEN: usize = 4;

/// The name Hive, Spark and DuckDB read as a null partition value.
pub const NULL_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// Longest name of a directory entry (Linux's NAME_MAX).
const NAME_MAX: usize = 255;

/// `value` as a partition directory's value: the characters Hive and Spark escape
/// (`FileUtils.escapePathName`, `ExternalCatalogUtils.escapePathName`), and every ASCII
/// control character, as `%XX`; both read it back unescaped, and so does DuckDB. What is
/// left holds no `/`, `=` or NUL: one directory name, whose value is `value`.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let special = c.is_ascii_control()
            || matches!(
                c,
                '"' | '#' | '%' | '\'' | '*' | '/' | ':' | '=' | '?' | '\\' | '{' | '[' | ']' | '^'
            );
        if special {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    // Written as it is, a host of this name would read as null.
    if out == NULL_PARTITION {
        out.replace_range(..1, "%5F");
    }
    out
}

/// The directory of `host`'s partitions: `host=` and its name escaped; no name (or an
/// empty one), the null partition. Refused: a name too long for a directory once escaped.
pub fn host_dir(host: Option<&str>) -> Result<String, String> {
    let name = match host.filter(|h| !h.is_empty()) {
        Some(h) => format!("host={}", escape(h)),
        None => format!("host={NULL_PARTITION}"),
    };
    if name.len() > NAME_MAX {
        return Err(format!(
            "the host name `{}` is too long for a partition directory ({} bytes escaped, \
             {} at most): name the host with --host NAME",
            printable(host.unwrap_or_default()),
            name.len() - "host=".len(),
            NAME_MAX - "host=".len()
        ));
    }
    Ok(name)
}

/// The first time the trace saw the lifetime (CLOCK_MONOTONIC ns): its assignment; for a
/// socket held when tracing started, the start, when the snapshot saw it; for one whose
/// assignment was not seen (events lost), the first of its TIME_WAIT and its release;
/// none of those known, the start. None: nothing known.
pub fn first_seen_ns(lt: &Lifetime, started_ns: Option<u64>) -> Option<u64> {
    if let Some(ns) = lt.assigned_ns() {
        return Some(ns);
    }
    if lt.origin == Origin::Preexisting {
        return started_ns.or(lt.time_wait_start_ns()).or(lt.released_ns());
    }
    lt.time_wait_start_ns().or(lt.released_ns()).or(started_ns)
}

/// `YYYY-MM-DD`: the UTC day of `wall_ns` (ns since the Unix epoch).
pub fn utc_date(wall_ns: i128) -> String {
    let days = wall_ns.div_euclid(86_400_000_000_000) as i64;
    // Howard Hinnant's civil_from_days: the proleptic Gregorian calendar, no time zone.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The directory of a lifetime's date: `date=` and the UTC day it was first seen (see
/// [`first_seen_ns`]); nothing known, the null partition.
pub fn date_dir(lt: &Lifetime, run: &RunInfo, clock: &WallClock) -> String {
    match first_seen_ns(lt, run.started_ns) {
        Some(ns) => format!("date={}", utc_date(clock.wall_ns(ns))),
        None => format!("date={NULL_PARTITION}"),
    }
}

/// The number of a part file (`part-N.parquet`) or of one being written
/// (`.part-N.parquet.tmp`).
fn part_number(name: &str) -> Option<u64> {
    let n = name
        .strip_prefix("part-")
        .and_then(|r| r.strip_suffix(".parquet"))
        .or_else(|| {
            name.strip_prefix(".part-")
                .and_then(|r| r.strip_suffix(".parquet.tmp"))
        })?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The first number after every part among `names` (0 when there is none).
fn next_free<S: AsRef<str>>(names: &[S]) -> u64 {
    names
        .iter()
        .filter_map(|n| part_number(n.as_ref()))
        .max()
        .map_or(0, |n| n.saturating_add(1))
}

/// A part's numbers tried, at most, before giving up: only other writers taking them
/// meanwhile uses more than one.
const TRIES: u32 = 1_000;

/// The modes of what is made under DIR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modes {
    pub dir: u32,
    pub file: u32,
}

impl Modes {
    /// Under a directory of mode `base`: private (0700, 0600), unless `base` has its
    /// set-group-id bit, the mark of a directory shared with its group: then the group's
    /// read (and search) access of `base` too, and the bit, so that directories made later
    /// keep it. Never write access but the owner's.
    pub fn under(base: u32) -> Modes {
        if base & 0o2000 == 0 {
            return Modes {
                dir: 0o700,
                file: 0o600,
            };
        }
        Modes {
            dir: 0o2700 | (base & 0o050),
            file: 0o600 | (base & 0o040),
        }
    }
}

/// The size a part would have if it ended now, from what has been written: files compress
/// better the more rows they hold, and carry a footer, so the last file closed is the best
/// guide to the next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SizeModel {
    /// Bytes of the part this export closed last, its footer included.
    bytes: u64,
    /// The unencoded size of its rows.
    raw: u64,
}

impl SizeModel {
    /// A part closed: `bytes` in its file for `raw` bytes of rows unencoded.
    pub fn closed(&mut self, bytes: u64, raw: u64) {
        (self.bytes, self.raw) = (bytes, raw);
    }

    /// What the part whose table is at `t` would take: what it wrote, and its buffered
    /// rows at the ratio of bytes to unencoded size of the last part closed, or of its own
    /// row groups before one was (1:1 before anything was written).
    pub fn estimate(&self, t: TableSizes) -> u64 {
        let (bytes, raw) = if self.raw > 0 {
            (self.bytes, self.raw)
        } else {
            (t.written, t.written_raw)
        };
        let buffered = if raw == 0 {
            t.buffered_raw
        } else {
            (u128::from(t.buffered_raw) * u128::from(bytes) / u128::from(raw)) as u64
        };
        t.written + buffered
    }
}

/// A directory opened without following a link to it; what is made in it is made from its
/// descriptor, never through a path that could change meanwhile.
struct Dir {
    fd: OwnedFd,
    /// For messages.
    path: PathBuf,
}

/// `name` for the C calls: names made here never hold NUL (escaped).
fn c_name(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a name"))
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// `e`, naming `path`.
fn at(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(last_error())
    } else {
        Ok(())
    }
}

impl Dir {
    /// DIR: made (0700) when missing; refused when it is a symbolic link or not a
    /// directory, or when it cannot be written.
    fn base(path: &Path) -> anyhow::Result<Dir> {
        let shown = path.display();
        let made = match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(path)
                    .with_context(|| format!("cannot create output directory {shown}"))?;
                true
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot use output directory {shown}"))
            }
            Ok(m) if m.file_type().is_symlink() => {
                bail!("{shown} is a symbolic link: not followed (name the directory itself)")
            }
            Ok(m) if !m.is_dir() => bail!("{shown} is not a directory"),
            Ok(_) => false,
        };
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .with_context(|| format!("{shown}: a NUL in the path"))?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a valid C string; the descriptor returned is owned here.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd < 0 {
            let e = last_error();
            if e.raw_os_error() == Some(libc::ELOOP) {
                bail!("{shown} is a symbolic link: not followed (name the directory itself)");
            }
            return Err(e).with_context(|| format!("cannot open output directory {shown}"));
        }
        let dir = Dir {
            // SAFETY: just opened, owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        };
        if made {
            dir.chmod(0o700)
                .with_context(|| format!("cannot set the mode of {shown}"))?;
        }
        // SAFETY: a valid descriptor and C string.
        let rc = unsafe {
            libc::faccessat(
                dir.fd.as_raw_fd(),
                c".".as_ptr(),
                libc::W_OK | libc::X_OK,
                libc::AT_EACCESS,
            )
        };
        check(rc).with_context(|| format!("cannot write in output directory {shown}"))?;
        Ok(dir)
    }

    fn mode(&self) -> io::Result<u32> {
        let file = std::mem::ManuallyDrop::new(
            // SAFETY: borrowed for the call only; ManuallyDrop keeps it from being closed.
            unsafe { File::from_raw_fd(self.fd.as_raw_fd()) },
        );
        Ok(file.metadata()?.mode())
    }

    fn chmod(&self, mode: u32) -> io::Result<()> {
        // SAFETY: a valid descriptor.
        check(unsafe { libc::fchmod(self.fd.as_raw_fd(), mode) })
    }

    /// Its subdirectory `name`, made with `mode` when missing; an existing one is used as
    /// it is. Refused: a symbolic link, anything not a directory.
    fn subdir(&self, name: &str, mode: u32) -> io::Result<Dir> {
        let path = self.path.join(name);
        let c = c_name(name)?;
        // SAFETY: a valid descriptor and C string.
        let made = unsafe { libc::mkdirat(self.fd.as_raw_fd(), c.as_ptr(), 0o700) } == 0;
        if !made {
            let e = last_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(at(&path, e));
            }
        }
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a valid descriptor and C string; the descriptor returned is owned here.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags) };
        if fd < 0 {
            let e = last_error();
            let link = self.is_link(&c);
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP | libc::ENOTDIR) if link => io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: a symbolic link: not followed", path.display()),
                ),
                Some(libc::ENOTDIR) => io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: not a directory", path.display()),
                ),
                _ => at(&path, e),
            });
        }
        let dir = Dir {
            // SAFETY: just opened, owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path,
        };
        if made {
            // The mode asked for, whatever the umask.
            dir.chmod(mode).map_err(|e| at(&dir.path, e))?;
        }
        Ok(dir)
    }

    fn is_link(&self, c: &CString) -> bool {
        // SAFETY: plain integers, filled by fstatat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor, C string and buffer.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        rc == 0 && st.st_mode & libc::S_IFMT == libc::S_IFLNK
    }

    /// A new file `name` of mode `mode` (whatever the umask); None when the name is taken.
    fn create(&self, name: &str, mode: u32) -> io::Result<Option<File>> {
        let c = c_name(name)?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a valid descriptor and C string; the descriptor returned is owned here.
        let fd = unsafe { libc::openat(self.fd.as_raw_fd(), c.as_ptr(), flags, mode) };
        if fd < 0 {
            let e = last_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                return Ok(None);
            }
            return Err(at(&self.path.join(name), e));
        }
        // SAFETY: just opened, owned by nothing else.
        let file = unsafe { File::from_raw_fd(fd) };
        // SAFETY: a valid descriptor.
        check(unsafe { libc::fchmod(fd, mode) }).map_err(|e| at(&self.path.join(name), e))?;
        Ok(Some(file))
    }

    /// Renames `from` to `to`, never replacing `to` (an error of kind AlreadyExists).
    fn rename_new(&self, from: &str, to: &str) -> io::Result<()> {
        let (f, t) = (c_name(from)?, c_name(to)?);
        let fd = self.fd.as_raw_fd();
        // SAFETY: valid descriptors and C strings.
        let rc = unsafe { libc::renameat2(fd, f.as_ptr(), fd, t.as_ptr(), libc::RENAME_NOREPLACE) };
        if rc == 0 {
            return Ok(());
        }
        let e = last_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
            return Err(at(&self.path.join(to), e));
        }
        // A file system without RENAME_NOREPLACE (NFS): a new link fails just the same
        // when the name is taken.
        // SAFETY: valid descriptors and C strings.
        check(unsafe { libc::linkat(fd, f.as_ptr(), fd, t.as_ptr(), 0) })
            .map_err(|e| at(&self.path.join(to), e))?;
        self.remove(from)
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let c = c_name(name)?;
        // SAFETY: a valid descriptor and C string.
        check(unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) })
            .map_err(|e| at(&self.path.join(name), e))
    }

    /// The names in it: where part numbers start. Only a hint (`O_EXCL` and
    /// `RENAME_NOREPLACE` keep every name from being taken twice), so without /proc its
    /// path does.
    fn names(&self) -> io::Result<Vec<String>> {
        let list = |dir: &Path| -> io::Result<Vec<String>> {
            std::fs::read_dir(dir)?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect()
        };
        // The descriptor's own directory, whatever its path has become.
        let here = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        list(&here)
            .or_else(|_| list(&self.path))
            .map_err(|e| at(&self.path, e))
    }

    fn sync(&self) -> io::Result<()> {
        // SAFETY: a valid descriptor.
        check(unsafe { libc::fsync(self.fd.as_raw_fd()) }).map_err(|e| at(&self.path, e))
    }
}

/// A date's directory, and the next part number to try in it.
struct DateDir {
    name: String,
    dir: Dir,
    next: u64,
}

/// A part being written.
struct Part {
    /// In `dates`.
    date: usize,
    n: u64,
    tmp: String,
    /// For messages.
    path: PathBuf,
    file: File,
    table: ParquetTable,
    /// When a row was last added (a count of rows).
    used: u64,
}

/// A part closed, hidden until published.
struct Closed {
    date: usize,
    n: u64,
    tmp: String,
    /// Its name once published.
    published: Option<String>,
}

/// Writes lifetimes into Hive-style partitions under a directory (see the module).
pub struct Partitioned {
    base: Dir,
    modes: Modes,
    max_file_size: u64,
    max_open: usize,
    row_group_rows: usize,
    clock: WallClock,
    cgroups: Lookup,
    run: RunInfo,
    host: Option<Dir>,
    dates: Vec<DateDir>,
    open: Vec<Part>,
    closed: Vec<Closed>,
    model: SizeModel,
    rows: u64,
    /// Every part published: nothing to take back.
    ended: bool,
}

impl Partitioned {
    /// Partitions under `p.dir` (made when missing): refused now, before anything is read,
    /// when it cannot be used.
    pub fn open(p: &Partitioning, clock: WallClock, cgroups: Cgroups) -> anyhow::Result<Self> {
        let base = Dir::base(&p.dir)?;
        let modes = Modes::under(
            base.mode()
                .with_context(|| format!("cannot read the mode of {}", p.dir.display()))?,
        );
        Ok(Partitioned {
            base,
            modes,
            max_file_size: p.max_file_size.max(1),
            max_open: MAX_OPEN,
            row_group_rows: ROW_GROUP_ROWS,
            clock,
            cgroups: Lookup::new(cgroups),
            run: RunInfo::default(),
            host: None,
            dates: Vec::new(),
            open: Vec::new(),
            closed: Vec::new(),
            model: SizeModel::default(),
            rows: 0,
            ended: false,
        })
    }

    /// At most `n` parts open at once (tests).
    #[cfg(test)]
    fn with_max_open(mut self, n: usize) -> Self {
        self.max_open = n.max(1);
        self
    }

    /// Row groups of at most `n` rows (tests).
    #[cfg(test)]
    fn with_row_group_rows(mut self, n: usize) -> Self {
        self.row_group_rows = n;
        self
    }

    /// The open part of `date`, opened (and another closed, if too many are) if need be.
    fn part_of(&mut self, date: &str) -> io::Result<usize> {
        if let Some(i) = self
            .open
            .iter()
            .position(|p| self.dates[p.date].name == date)
        {
            return Ok(i);
        }
        if self.open.len() >= self.max_open {
            let lru = (0..self.open.len())
                .min_by_key(|&i| self.open[i].used)
                .expect("parts open");
            self.close(lru)?;
        }
        if self.host.is_none() {
            let name = host_dir(self.run.host.as_deref())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            self.host = Some(self.base.subdir(&name, self.modes.dir)?);
        }
        let host = self.host.as_ref().expect("opened");
        let d = match self.dates.iter().position(|d| d.name == date) {
            Some(d) => d,
            None => {
                let dir = host.subdir(date, self.modes.dir)?;
                let next = next_free(&dir.names()?);
                self.dates.push(DateDir {
                    name: date.to_string(),
                    dir,
                    next,
                });
                self.dates.len() - 1
            }
        };
        let dd = &mut self.dates[d];
        for _ in 0..TRIES {
            let n = dd.next;
            dd.next = dd.next.saturating_add(1);
            let tmp = format!(".part-{n}.parquet.tmp");
            if let Some(file) = dd.dir.create(&tmp, self.modes.file)? {
                self.open.push(Part {
                    date: d,
                    n,
                    path: dd.dir.path.join(&tmp),
                    tmp,
                    file,
                    table: ParquetTable::new(self.row_group_rows),
                    used: self.rows,
                });
                return Ok(self.open.len() - 1);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{}: {TRIES} part numbers from {} taken by other writers",
                dd.dir.path.display(),
                dd.next.saturating_sub(u64::from(TRIES))
            ),
        ))
    }

    /// Ends open part `i`: its last rows, its footer, on disk; hidden until published.
    fn close(&mut self, i: usize) -> io::Result<()> {
        let mut part = self.open.swap_remove(i);
        // Listed first: a part that fails to close is removed like the others.
        self.closed.push(Closed {
            date: part.date,
            n: part.n,
            tmp: part.tmp.clone(),
            published: None,
        });
        part.table
            .finish(&mut part.file)
            .and_then(|()| part.file.sync_all())
            .map_err(|e| at(&part.path, e))?;
        let sizes = part.table.sizes();
        self.model.closed(sizes.written, sizes.written_raw);
        Ok(())
    }

    /// Closes every part and gives each its visible name: its own number, or, when a file
    /// took that meanwhile, the next one free.
    fn publish(&mut self) -> io::Result<()> {
        while !self.open.is_empty() {
            self.close(self.open.len() - 1)?;
        }
        for c in &mut self.closed {
            let dd = &mut self.dates[c.date];
            let mut n = c.n;
            let mut tries = 0;
            let name = loop {
                let name = format!("part-{n}.parquet");
                match dd.dir.rename_new(&c.tmp, &name) {
                    Ok(()) => break name,
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < TRIES => {
                        tries += 1;
                        n = next_free(&dd.dir.names()?).max(n.saturating_add(1));
                    }
                    Err(e) => return Err(e),
                }
            };
            c.published = Some(name);
        }
        for dd in &self.dates {
            dd.dir.sync()?;
        }
        if let Some(host) = &self.host {
            host.sync()?;
        }
        self.base.sync()
    }
}

impl Printer for Partitioned {
    fn set_run(&mut self, run: &RunInfo) {
        self.run = run.clone();
    }

    /// Events are in the lifetimes' rows.
    fn event(&mut self, _: &Event) -> io::Result<()> {
        Ok(())
    }

    fn lifetime(&mut self, lt: &Lifetime) -> io::Result<()> {
        let date = date_dir(lt, &self.run, &self.clock);
        let i = self.part_of(&date)?;
        self.rows += 1;
        let cgroup = self.cgroups.get(lt.owner.cgroup_id);
        let part = &mut self.open[i];
        part.used = self.rows;
        let row = Row {
            lt,
            cgroup: cgroup.as_deref(),
            run: &self.run,
        };
        part.table
            .push(&row, &mut part.file)
            .map_err(|e| at(&part.path, e))?;
        if self.model.estimate(part.table.sizes()) >= self.max_file_size {
            self.close(i)?;
        }
        Ok(())
    }

    /// No summary: the parts end, and appear.
    fn summary(&mut self, _: &Summary) -> io::Result<()> {
        if !self.ended {
            self.publish()?;
            self.ended = true;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Partitioned {
    /// An export that did not end (an error, a panic) takes back what it wrote: the parts
    /// being written, those closed, and those it had published.
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        for p in &self.open {
            let _ = self.dates[p.date].dir.remove(&p.tmp);
        }
        for c in &self.closed {
            let name = c.published.as_deref().unwrap_or(&c.tmp);
            let _ = self.dates[c.date].dir.remove(name);
        }
    }
}

#[cfg(test)]
mod tests;
