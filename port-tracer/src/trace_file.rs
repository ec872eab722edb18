//! The recorded trace file (`port-tracer record`): the kernel's raw records plus what
//! analysis needs later, in a compact binary form that stays readable up to its last
//! complete block after a crash or `kill -9`. Pure: reads and writes any `Read`/`Write`.
//!
//! ```text
//! file   = header block*
//! header = magic "PTRACE\r\n" | version u16 | reserved u16 | meta_len u32 | meta (JSON) | crc32 u32
//! block  = tag u8 | reserved [u8; 3] | len u32 | crc32 u32 | payload [len]
//! ```
//!
//! Integers are little-endian; each CRC-32 covers what precedes it in its header or block
//! (after the magic), payload included. Blocks: `EVENTS` (raw kernel records,
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
//! Version 4 is version 5 without `CGROUPS` blocks. Versions 1 to 3, whose records had one fixed size for every event (104, 120 and 128
//! bytes), are still read ([`legacy`]).

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::event::{DecodeError, Endpoints, Event, Family, Proto, Task, HEAD_LEN};
use crate::lifetime::HeldAtStart;
pub use crate::port_range::PortRange;

pub mod legacy;

pub const MAGIC: [u8; 8] = *b"PTRACE\r\n";
/// The format version this build writes and the newest it reads.
pub const VERSION: u16 = 5;
/// The metadata's `record_size` of this version: 0, records are as long as their heads say
/// (versions 1 to 3 had one size, given there).
pub const RECORD_SIZE_VARIABLE: u32 = 0;
/// Where a record's head gives its length.
const LEN_AT: usize = std::mem::offset_of!(port_tracer_common::Head, len);
/// Blocks larger than this are refused as corrupt (the writer never makes them).
const MAX_BLOCK: u32 = 64 << 20;

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
}

impl<W: Write> TraceWriter<W> {
    pub fn new(mut out: W, meta: &Metadata) -> io::Result<Self> {
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
        let mut head = [0u8; 12];
        head[0] = tag as u8;
        head[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head[..8]);
        crc.update(payload);
        head[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
        // One write for the whole block: a crash cuts at most this block.
        let mut all = Vec::with_capacity(12 + payload.len());
        all.extend_from_slice(&head);
        all.extend_from_slice(payload);
        self.out.write_all(&all)
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
        self.offset = at + 12 + len as u64;
        Ok(Some(block))
    }
}

#[cfg(test)]
mod tests;
