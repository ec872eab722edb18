//! The recorded trace file (`port-tracer record`): the kernel's raw records plus what
//! analysis needs later, in a compact binary form that stays readable up to its last
//! complete block after a crash or `kill -9`. Pure: reads and writes any `Read`/`Write`.
//!
//! ```text
//! file   = header block*
//! header = magic "PTRACE\r\n" | version u16 | reserved u16 | meta_len u32 | meta (JSON) | crc32 u32
//! block  = tag u8 | encoding u8 | reserved [u8; 2] | len u32 | crc32 u32 | payload [len]
//! ```
//!
//! Integers are little-endian; each CRC-32 covers what precedes it in its header or block
//! (after the magic), payload included, as stored. `encoding` (version 6) says how the
//! payload is stored: 0 as it is, 1 as one zstd frame that gives its content size (the
//! writer compresses every block that shrinks by it; each frame stands alone, so a cut
//! file still reads up to its last whole block). What follows describes payloads as
//! they are once decoded. Blocks: `EVENTS` (raw kernel records,
//! `port_tracer_common::Record`, back to back as the ring buffer delivered them; each is as
//! long as its head's `len`: 40 bytes for an IPv4 release, 104 for an assignment), `LOST` (the kernel's cumulative
//! lost-event counters, one u64 per reason), `HELD` (sockets holding ports at start, JSON),
//! `RANGES` (ephemeral ranges of namespaces first seen after the start, JSON, written
//! before the events of those namespaces), `CGROUPS` (version 5: the paths of the
//! cgroups that owners' ids name, JSON `[{"id", "path"}]` with the runtime's names where
//! known (`container_name`, `pod_name`, `pod_namespace`), written before the first event
//! naming each), `END` (a clean end, with the monotonic time recording stopped as a u64; a
//! file without it was cut short).
//!
//! Version 5 is version 6 with every payload stored as it is (the byte after the tag
//! reserved, 0); version 4 is version 5 without `CGROUPS` blocks. Versions 1 to 3, whose records had one fixed size for every event (104, 120 and 128
//! bytes), are still read ([`legacy`]).

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::event::{DecodeError, Endpoints, Event, Family, Proto, Task, HEAD_LEN};
use crate::lifetime::HeldAtStart;
pub use crate::port_range::PortRange;

pub mod legacy;
pub mod set;

pub const MAGIC: [u8; 8] = *b"PTRACE\r\n";
/// The format version this build writes and the newest it reads.
pub const VERSION: u16 = 6;
/// The first version whose blocks say how their payload is stored.
const ENCODED_SINCE: u16 = 6;
/// The metadata's `record_size` of this version: 0, records are as long as their heads say
/// (versions 1 to 3 had one size, given there).
pub const RECORD_SIZE_VARIABLE: u32 = 0;
/// Where a record's head gives its length.
const LEN_AT: usize = std::mem::offset_of!(port_tracer_common::Head, len);
/// Blocks larger than this are refused as corrupt (the writer never makes them).
const MAX_BLOCK: u32 = 64 << 20;
/// Payloads shorter than this are stored as they are: a zstd frame's own overhead (about
/// a dozen bytes) eats what so little would save.
const MIN_COMPRESSED: usize = 64;

/// How a block's payload is stored (version 6 on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Encoding {
    Raw = 0,
    Zstd = 1,
}

/// How a writer stores its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Every payload as it is (what versions 1 to 5 wrote).
    None,
    /// Each payload that shrinks, as a zstd frame at this level.
    Zstd(i32),
}

impl Compression {
    /// What `record` uses: zstd's fastest regular level, about 7x smaller on a TCP storm's
    /// records at some 450 MB/s on one core (BENCHMARKS.md, section 13).
    pub const DEFAULT: Compression = Compression::Zstd(1);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    Events = 1,
    Lost = 2,
    Held = 3,
    End = 4,
    Ranges = 5,
    Cgroups = 6,
}

impl Tag {
    fn from_u8(v: u8) -> Option<Tag> {
        Some(match v {
            1 => Tag::Events,
            2 => Tag::Lost,
            3 => Tag::Held,
            4 => Tag::End,
            5 => Tag::Ranges,
            6 => Tag::Cgroups,
            _ => return None,
        })
    }
}

/// What the recording host and run were; written once, in the header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub host: String,
    pub kernel_release: String,
    pub tier: String,
    pub port_tracer_version: String,
    pub record_size: u32,
    /// Names of the lost-event counters, in the order of `LOST` blocks.
    pub lost_reasons: Vec<String>,
    /// Wall clock minus the kernel's monotonic clock, ns: wall time of a record's
    /// `ts_ns` is `ts_ns + realtime_offset_ns`.
    pub realtime_offset_ns: i64,
    /// Monotonic time when recording started.
    pub started_ns: u64,
    /// The ephemeral port range of each network namespace read at start.
    pub port_ranges: Vec<PortRange>,
    /// `/proc/sys/kernel/random/boot_id` of the boot recorded (absent in traces recorded
    /// before it was: old readers skip it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// Which file of a ring (`record --rotate`) this is: absent in a recording of one
    /// file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<Part>,
    /// The sockets `record` kept (its `--port`, `--proto`, `--netns`): the trace holds
    /// nothing else, sockets held at start included. Absent: every socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded_only: Option<RecordedFilter>,
}

/// What `record` was told to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<(u16, u16)>,
    /// "tcp" or "udp".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
}

impl RecordedFilter {
    /// The socket part of `f`, or None when it keeps every socket.
    pub fn of(f: &crate::filter::Filter) -> Option<RecordedFilter> {
        let r = RecordedFilter {
            ports: f.ports,
            proto: f.proto.map(|p| p.as_str().to_string()),
            netns: f.netns,
        };
        (r != RecordedFilter::default()).then_some(r)
    }

    /// As the flags that asked for it: `--port 8000-8099 --proto tcp --netns 4026531840`.
    pub fn flags(&self) -> String {
        let mut out = Vec::new();
        match self.ports {
            Some((lo, hi)) if lo == hi => out.push(format!("--port {lo}")),
            Some((lo, hi)) => out.push(format!("--port {lo}-{hi}")),
            None => {}
        }
        if let Some(p) = &self.proto {
            out.push(format!("--proto {p}"));
        }
        if let Some(n) = self.netns {
            out.push(format!("--netns {n}"));
        }
        out.join(" ")
    }

    /// What in `f` asks for sockets this recording did not keep: one line each.
    pub fn excluded_by(&self, f: &crate::filter::Filter) -> Vec<String> {
        let mut out = Vec::new();
        if let (Some((lo, hi)), Some((a, b))) = (self.ports, f.ports) {
            if b < lo || a > hi {
                out.push(format!(
                    "--port {} selects nothing here: the trace was recorded with {}",
                    if a == b {
                        a.to_string()
                    } else {
                        format!("{a}-{b}")
                    },
                    self.flags()
                ));
            }
        }
        if let (Some(p), Some(q)) = (&self.proto, f.proto) {
            if p != q.as_str() {
                out.push(format!(
                    "--proto {} selects nothing here: the trace was recorded with {}",
                    q.as_str(),
                    self.flags()
                ));
            }
        }
        if let (Some(n), Some(m)) = (self.netns, f.netns) {
            if n != m {
                out.push(format!(
                    "--netns {m} selects nothing here: the trace was recorded with {}",
                    self.flags()
                ));
            }
        }
        out
    }
}

/// One file of a recording kept as a ring of files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// 1 for the first file of the recording, then one more for each.
    pub seq: u32,
    /// Monotonic time this file began (the recording's start for the first).
    pub started_ns: u64,
}

/// A socket holding a port at start, as stored in a `HELD` block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct HeldSocket {
    proto: u8,
    family: u8,
    netns: u32,
    laddr: std::net::IpAddr,
    lport: u16,
    raddr: std::net::IpAddr,
    rport: u16,
    /// A process that had it open (fields an older version did not write are their
    /// defaults: `thread` before version 4, `ppid` before version 4 and when not known).
    #[serde(flatten)]
    owner: Task,
    listening: bool,
    /// A TIME_WAIT socket (absent in version 1 traces, which did not record it).
    #[serde(default)]
    time_wait: bool,
    /// When the snapshot found it (monotonic ns; absent in version 1 traces).
    #[serde(default)]
    seen_ns: u64,
}

impl HeldSocket {
    fn of(h: &HeldAtStart) -> Self {
        HeldSocket {
            proto: match h.ends.proto {
                Proto::Tcp => 6,
                Proto::Udp => 17,
            },
            family: match h.ends.family {
                Family::Ipv4 => 4,
                Family::Ipv6 => 6,
            },
            netns: h.ends.netns,
            laddr: h.ends.laddr,
            lport: h.ends.lport,
            raddr: h.ends.raddr,
            rport: h.ends.rport,
            owner: h.owner,
            listening: h.listening,
            time_wait: h.time_wait,
            seen_ns: h.seen_ns,
        }
    }

    fn held(&self) -> Option<HeldAtStart> {
        Some(HeldAtStart {
            ends: Endpoints {
                proto: match self.proto {
                    6 => Proto::Tcp,
                    17 => Proto::Udp,
                    _ => return None,
                },
                family: match self.family {
                    4 => Family::Ipv4,
                    6 => Family::Ipv6,
                    _ => return None,
                },
                netns: self.netns,
                laddr: self.laddr,
                lport: self.lport,
                raddr: self.raddr,
                rport: self.rport,
            },
            owner: self.owner,
            listening: self.listening,
            time_wait: self.time_wait,
            seen_ns: self.seen_ns,
        })
    }
}

/// Writes a trace: the header at creation, then blocks. Each block is one `write_all`, so
/// a crash leaves at most one partial block at the end, which readers skip.
pub struct TraceWriter<W: Write> {
    out: W,
    /// Raw records waiting for the next `EVENTS` block.
    pending: Vec<u8>,
    /// One context for every block (zstd's allocations are made once).
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// The block being written: head and stored payload, one `write_all`.
    frame: Vec<u8>,
    /// A payload compressed.
    packed: Vec<u8>,
    /// Payload bytes given and bytes written (header included).
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl<W: Write> TraceWriter<W> {
    /// A trace whose blocks are compressed as [`Compression::DEFAULT`] says.
    pub fn new(out: W, meta: &Metadata) -> io::Result<Self> {
        Self::with_compression(out, meta, Compression::DEFAULT)
    }

    pub fn with_compression(
        mut out: W,
        meta: &Metadata,
        compression: Compression,
    ) -> io::Result<Self> {
        let compressor = match compression {
            Compression::None => None,
            Compression::Zstd(level) => {
                let mut c = zstd::bulk::Compressor::new(level)?;
                // The reader sizes its buffer by it, and refuses frames without it.
                c.include_contentsize(true)?;
                c.include_checksum(false)?;
                Some(c)
            }
        };
        let json = serde_json::to_vec(meta).expect("metadata serializes");
        let mut h = Vec::with_capacity(json.len() + 20);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&0u16.to_le_bytes());
        h.extend_from_slice(&(json.len() as u32).to_le_bytes());
        h.extend_from_slice(&json);
        let crc = crc32fast::hash(&h);
        out.write_all(&MAGIC)?;
        out.write_all(&h)?;
        out.write_all(&crc.to_le_bytes())?;
        Ok(TraceWriter {
            out,
            pending: Vec::with_capacity(1 << 20),
            compressor,
            frame: Vec::new(),
            packed: Vec::new(),
            bytes_in: 0,
            bytes_out: (MAGIC.len() + h.len() + 4) as u64,
        })
    }

    /// Adds one raw kernel record to the next `EVENTS` block.
    pub fn push_record(&mut self, record: &[u8]) {
        self.pending.extend_from_slice(record);
    }

    /// Bytes of records waiting for the next block.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    fn block(&mut self, tag: Tag, payload: &[u8]) -> io::Result<()> {
        let frame = &mut self.frame;
        frame.clear();
        frame.resize(12, 0);
        let mut encoding = Encoding::Raw;
        if let Some(c) = self
            .compressor
            .as_mut()
            .filter(|_| payload.len() >= MIN_COMPRESSED)
        {
            // (A Vec is written from its start, so not in `frame` after the head.)
            let packed = &mut self.packed;
            packed.clear();
            packed.reserve(zstd::zstd_safe::compress_bound(payload.len()));
            c.compress_to_buffer(payload, packed)?;
            if packed.len() < payload.len() {
                encoding = Encoding::Zstd;
                frame.extend_from_slice(packed);
            }
        }
        if encoding == Encoding::Raw {
            frame.extend_from_slice(payload);
        }
        let stored = (frame.len() - 12) as u32;
        frame[0] = tag as u8;
        frame[1] = encoding as u8;
        frame[4..8].copy_from_slice(&stored.to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&frame[..8]);
        crc.update(&frame[12..]);
        let crc = crc.finalize().to_le_bytes();
        frame[8..12].copy_from_slice(&crc);
        self.bytes_in += payload.len() as u64;
        self.bytes_out += frame.len() as u64;
        // One write for the whole block: a crash cuts at most this block.
        self.out.write_all(frame)
    }

    /// Writes the records pushed since the last block as one `EVENTS` block.
    pub fn write_events(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let payload = std::mem::take(&mut self.pending);
        let r = self.block(Tag::Events, &payload);
        self.pending = payload;
        self.pending.clear();
        r
    }

    /// The kernel's cumulative lost-event counters.
    pub fn write_lost(&mut self, counts: &[u64]) -> io::Result<()> {
        let payload: Vec<u8> = counts.iter().flat_map(|c| c.to_le_bytes()).collect();
        self.block(Tag::Lost, &payload)
    }

    /// Sockets that held ports when tracing started.
    pub fn write_held(&mut self, held: &[HeldAtStart]) -> io::Result<()> {
        let list: Vec<HeldSocket> = held.iter().map(HeldSocket::of).collect();
        let payload = serde_json::to_vec(&list).expect("held sockets serialize");
        self.block(Tag::Held, &payload)
    }

    /// Ephemeral ranges of namespaces not in the metadata; pending records go first, so
    /// the ranges come before the events that follow.
    pub fn write_ranges(&mut self, ranges: &[PortRange]) -> io::Result<()> {
        self.write_events()?;
        let payload = serde_json::to_vec(ranges).expect("ranges serialize");
        self.block(Tag::Ranges, &payload)
    }

    /// Cgroups that the events to come name (pending records go first).
    pub fn write_cgroups(&mut self, cgroups: &[crate::cgroups::Entry]) -> io::Result<()> {
        self.write_events()?;
        let payload = serde_json::to_vec(cgroups).expect("cgroups serialize");
        self.block(Tag::Cgroups, &payload)
    }

    /// Ends the trace cleanly at monotonic `end_ns` (pending records first) and flushes.
    pub fn finish(&mut self, end_ns: u64) -> io::Result<()> {
        self.write_events()?;
        self.block(Tag::End, &end_ns.to_le_bytes())?;
        self.out.flush()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Why a trace cannot be read (further).
#[derive(Debug, PartialEq, Eq)]
pub enum TraceError {
    Io(String),
    /// Not a port-tracer trace at all.
    NotATrace,
    /// Written by a newer port-tracer.
    NewerVersion(u16),
    /// Bytes that are not what they claim to be.
    Corrupt {
        offset: u64,
        what: String,
    },
    /// The file ends inside the header or a block (a recording cut short).
    Truncated {
        offset: u64,
    },
}

impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TraceError::Io(e) => write!(f, "{e}"),
            TraceError::NotATrace => write!(f, "not a port-tracer trace (no PTRACE magic at offset 0)"),
            TraceError::NewerVersion(v) => write!(
                f,
                "trace format version {v} is newer than this port-tracer reads (version {VERSION}): upgrade port-tracer"
            ),
            TraceError::Corrupt { offset, what } => write!(f, "corrupt trace at offset {offset}: {what}"),
            TraceError::Truncated { offset } => {
                write!(f, "trace cut short at offset {offset} (recording interrupted?)")
            }
        }
    }
}

impl std::error::Error for TraceError {}

/// How the records of a trace are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `port_tracer_common::Record`s, each as long as its head says (version 4).
    Current,
    /// Version 1 to 3 records of this many bytes each ([`legacy`]).
    Legacy(usize),
}

/// The records of an `EVENTS` block, whole (checked when the block was read).
#[derive(Debug, PartialEq, Eq)]
pub struct Records {
    pub bytes: Vec<u8>,
    pub layout: Layout,
}

impl Records {
    /// Records of the current layout (tests).
    pub fn current(bytes: Vec<u8>) -> Records {
        Records {
            bytes,
            layout: Layout::Current,
        }
    }

    /// Each record's bytes, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let (layout, mut rest) = (self.layout, &self.bytes[..]);
        std::iter::from_fn(move || {
            let len = match layout {
                Layout::Current => usize::from(*rest.get(LEN_AT)?),
                Layout::Legacy(size) => size,
            };
            let (record, tail) = rest.split_at_checked(len)?;
            rest = tail;
            Some(record)
        })
    }

    /// Decodes one of these records.
    pub fn decode(&self, record: &[u8]) -> Result<Event, DecodeError> {
        match self.layout {
            Layout::Current => Event::decode(record),
            Layout::Legacy(_) => legacy::decode(record),
        }
    }
}

/// Whether `payload` is whole records of `layout`; what is wrong otherwise.
fn check_framing(payload: &[u8], layout: Layout) -> Result<(), String> {
    match layout {
        Layout::Legacy(size) if !payload.len().is_multiple_of(size) => Err(format!(
            "events block of {} bytes is not whole {size}-byte records",
            payload.len()
        )),
        Layout::Legacy(_) => Ok(()),
        Layout::Current => {
            let mut at = 0;
            while at < payload.len() {
                let Some(&len) = payload.get(at + LEN_AT) else {
                    return Err(format!("events block ends inside a record head at {at}"));
                };
                let len = usize::from(len);
                if len < HEAD_LEN || at + len > payload.len() {
                    return Err(format!("record of {len} bytes at {at} of the events block"));
                }
                at += len;
            }
            Ok(())
        }
    }
}

/// One block read back.
#[derive(Debug, PartialEq, Eq)]
pub enum Block {
    /// Raw kernel records.
    Events(Records),
    Lost(Vec<u64>),
    Held(Vec<HeldAtStart>),
    Ranges(Vec<PortRange>),
    Cgroups(Vec<crate::cgroups::Entry>),
    /// A clean end, with when recording stopped (monotonic ns).
    End(Option<u64>),
}

/// What a replay reads blocks from: one trace ([`TraceReader`]), or the files of one
/// recording in order ([`set::TraceSet`]).
pub trait Blocks {
    fn meta(&self) -> &Metadata;
    /// The format version.
    fn version(&self) -> u16;
    /// The next block; `Ok(None)` at the end.
    fn next_block(&mut self) -> Result<Option<Block>, TraceError>;
    /// Bytes read intact so far (of the file being read).
    fn good_bytes(&self) -> u64;
}

impl<B: Blocks + ?Sized> Blocks for &mut B {
    fn meta(&self) -> &Metadata {
        (**self).meta()
    }

    fn version(&self) -> u16 {
        (**self).version()
    }

    fn next_block(&mut self) -> Result<Option<Block>, TraceError> {
        (**self).next_block()
    }

    fn good_bytes(&self) -> u64 {
        (**self).good_bytes()
    }
}

impl<R: Read> Blocks for TraceReader<R> {
    fn meta(&self) -> &Metadata {
        &self.meta
    }

    fn version(&self) -> u16 {
        self.version
    }

    fn next_block(&mut self) -> Result<Option<Block>, TraceError> {
        TraceReader::next_block(self)
    }

    fn good_bytes(&self) -> u64 {
        self.offset
    }
}

/// Reads a trace block by block.
pub struct TraceReader<R: Read> {
    r: R,
    /// Bytes consumed so far: where the next block starts.
    pub offset: u64,
    pub meta: Metadata,
    /// The file's format version.
    pub version: u16,
    /// How its records are laid out.
    layout: Layout,
    /// For zstd payloads, made at the first.
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` at a clean end of input before any byte.
fn read_full(r: &mut impl Read, buf: &mut [u8], offset: u64) -> Result<bool, TraceError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(TraceError::Truncated { offset }),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(TraceError::Io(e.to_string())),
        }
    }
    Ok(true)
}

/// Reads the `len` bytes of a payload that starts at `offset` (where a shortfall is
/// reported). Grows with what arrives: a corrupt length in a short file must not allocate
/// up to [`MAX_BLOCK`] before finding out.
fn read_payload(r: &mut impl Read, len: u32, offset: u64) -> Result<Vec<u8>, TraceError> {
    let mut payload = Vec::new();
    r.by_ref()
        .take(len.into())
        .read_to_end(&mut payload)
        .map_err(|e| TraceError::Io(e.to_string()))?;
    if payload.len() < len as usize {
        return Err(TraceError::Truncated { offset });
    }
    Ok(payload)
}

impl<R: Read> TraceReader<R> {
    /// Reads and checks the header.
    pub fn new(mut r: R) -> Result<Self, TraceError> {
        let mut magic = [0u8; 8];
        match read_full(&mut r, &mut magic, 0) {
            Ok(true) => {}
            Ok(false) | Err(TraceError::Truncated { .. }) => return Err(TraceError::NotATrace),
            Err(e) => return Err(e),
        }
        if magic != MAGIC {
            return Err(TraceError::NotATrace);
        }
        let mut fixed = [0u8; 8];
        if !read_full(&mut r, &mut fixed, 8)? {
            return Err(TraceError::Truncated { offset: 8 });
        }
        let version = u16::from_le_bytes([fixed[0], fixed[1]]);
        if version > VERSION {
            return Err(TraceError::NewerVersion(version));
        }
        if version == 0 {
            return Err(TraceError::Corrupt {
                offset: 8,
                what: "format version 0".into(),
            });
        }
        let meta_len = u32::from_le_bytes(fixed[4..8].try_into().expect("4 bytes"));
        if meta_len > MAX_BLOCK {
            return Err(TraceError::Corrupt {
                offset: 12,
                what: format!("metadata length {meta_len}"),
            });
        }
        let meta = read_payload(&mut r, meta_len, 16)?;
        let mut crc = [0u8; 4];
        let crc_at = 16 + meta_len as u64;
        if !read_full(&mut r, &mut crc, crc_at)? {
            return Err(TraceError::Truncated { offset: crc_at });
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&fixed);
        h.update(&meta);
        if h.finalize() != u32::from_le_bytes(crc) {
            return Err(TraceError::Corrupt {
                offset: 8,
                what: "header checksum mismatch".into(),
            });
        }
        let meta: Metadata = serde_json::from_slice(&meta).map_err(|e| TraceError::Corrupt {
            offset: 16,
            what: format!("metadata: {e}"),
        })?;
        let (layout, expected) = match version {
            1..=3 => {
                let size = legacy::size_of_version(version);
                (Layout::Legacy(size), size as u32)
            }
            _ => (Layout::Current, RECORD_SIZE_VARIABLE),
        };
        if meta.record_size != expected {
            return Err(TraceError::Corrupt {
                offset: 16,
                what: format!(
                    "record size {} in the metadata, version {version} traces have {expected}",
                    meta.record_size
                ),
            });
        }
        Ok(TraceReader {
            r,
            offset: crc_at + 4,
            meta,
            version,
            layout,
            decompressor: None,
        })
    }

    /// The next block; `Ok(None)` at the end of the input.
    pub fn next_block(&mut self) -> Result<Option<Block>, TraceError> {
        let at = self.offset;
        let mut head = [0u8; 12];
        if !read_full(&mut self.r, &mut head, at)? {
            return Ok(None);
        }
        let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let corrupt = |what: String| TraceError::Corrupt { offset: at, what };
        let tag = Tag::from_u8(head[0])
            .ok_or_else(|| corrupt(format!("unknown block tag {}", head[0])))?;
        if len > MAX_BLOCK {
            return Err(corrupt(format!("block length {len}")));
        }
        let payload = read_payload(&mut self.r, len, at)?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[..8]);
        crc.update(&payload);
        if crc.finalize() != u32::from_le_bytes(head[8..12].try_into().expect("4 bytes")) {
            return Err(corrupt("block checksum mismatch".into()));
        }
        // Versions before 6 wrote 0 there and never read it.
        let encoding = if self.version >= ENCODED_SINCE {
            head[1]
        } else {
            0
        };
        let payload = match encoding {
            0 => payload,
            1 => self.decompress(&payload).map_err(corrupt)?,
            e => return Err(corrupt(format!("unknown block encoding {e}"))),
        };
        let len = payload.len();
        let block = match tag {
            Tag::Events => {
                check_framing(&payload, self.layout).map_err(corrupt)?;
                Block::Events(Records {
                    bytes: payload,
                    layout: self.layout,
                })
            }
            Tag::Lost => {
                if !payload.len().is_multiple_of(8) {
                    return Err(corrupt(format!("lost block of {len} bytes")));
                }
                Block::Lost(
                    payload
                        .chunks_exact(8)
                        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
                        .collect(),
                )
            }
            Tag::Ranges => {
                let ranges: Vec<PortRange> = serde_json::from_slice(&payload)
                    .map_err(|e| corrupt(format!("port ranges: {e}")))?;
                if ranges.iter().any(|r| r.low > r.high) {
                    return Err(corrupt("port range with low above high".into()));
                }
                Block::Ranges(ranges)
            }
            Tag::Cgroups => Block::Cgroups(
                serde_json::from_slice(&payload).map_err(|e| corrupt(format!("cgroups: {e}")))?,
            ),
            Tag::Held => {
                let list: Vec<HeldSocket> = serde_json::from_slice(&payload)
                    .map_err(|e| corrupt(format!("held sockets: {e}")))?;
                Block::Held(
                    list.iter()
                        .map(|h| {
                            h.held()
                                .ok_or_else(|| corrupt("held socket protocol".into()))
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
            Tag::End => Block::End(match payload.len() {
                0 => None,
                8 => Some(u64::from_le_bytes(payload[..].try_into().expect("8 bytes"))),
                len => return Err(corrupt(format!("end block of {len} bytes"))),
            }),
        };
        // Only now: a block whose checksum holds but whose payload does not parse is
        // damage, and `offset` must keep pointing at it (what a reader reports as good).
        self.offset =
            at + 12 + u64::from(u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")));
        Ok(Some(block))
    }

    /// A zstd payload's content: at most [`MAX_BLOCK`] bytes, as long as its frame says
    /// (a frame that claims more, or less than it holds, is damage, not an allocation).
    fn decompress(&mut self, frame: &[u8]) -> Result<Vec<u8>, String> {
        let size = match zstd::zstd_safe::get_frame_content_size(frame) {
            Ok(Some(size)) if size <= u64::from(MAX_BLOCK) => size as usize,
            Ok(Some(size)) => return Err(format!("compressed block of {size} bytes")),
            Ok(None) | Err(_) => return Err("compressed block without its size".into()),
        };
        if self.decompressor.is_none() {
            self.decompressor =
                Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
        }
        let d = self.decompressor.as_mut().expect("made above");
        let mut out = Vec::with_capacity(size);
        let got = d
            .decompress_to_buffer(frame, &mut out)
            .map_err(|e| format!("compressed block: {e}"))?;
        if got != size {
            return Err(format!(
                "compressed block of {got} bytes, its frame says {size}"
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
