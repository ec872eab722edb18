//! Records of trace format versions 1 to 3, which had one fixed layout for every event
//! (the kernel side's record before format 4): 128 bytes in version 3; versions 1 (104
//! bytes: no thread name, and `comm` was the thread's name) and 2 (120 bytes: no time
//! inside the allocator) lack the fields at its end, read as zero. No task's parent was
//! recorded: `ppid` is unknown.

use port_tracer_common::{Head, COMM_LEN};

use crate::event::{DecodeError, Event, Raw, Task};

/// One record of format versions 1 to 3.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct LegacyRecord {
    pub ts_ns: u64,
    pub sock_id: u64,
    pub cgroup_id: u64,
    pub netns: u32,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    pub lport: u16,
    pub rport: u16,
    pub kind: u8,
    pub origin: u8,
    pub proto: u8,
    pub family: u8,
    pub errno: i32,
    pub flags: u8,
    pub more_flags: u8,
    pub _pad: [u8; 2],
    pub comm: [u8; COMM_LEN],
    pub thread: [u8; COMM_LEN],
    pub alloc_ns: u32,
    pub own_port_range: u32,
}

const _: () = assert!(std::mem::size_of::<LegacyRecord>() == SIZE_V3);

/// Bytes of a record in format versions 1, 2 and 3.
pub const SIZE_V1: usize = 104;
pub const SIZE_V2: usize = 120;
pub const SIZE_V3: usize = 128;

/// The record size of format `version` (1 to 3).
pub fn size_of_version(version: u16) -> usize {
    match version {
        1 => SIZE_V1,
        2 => SIZE_V2,
        _ => SIZE_V3,
    }
}

impl LegacyRecord {
    /// The record in `bytes` (a version's whole record; shorter ones read as zero at the
    /// end).
    pub fn read(bytes: &[u8]) -> LegacyRecord {
        let mut full = [0u8; SIZE_V3];
        let n = bytes.len().min(SIZE_V3);
        full[..n].copy_from_slice(&bytes[..n]);
        // SAFETY: SIZE_V3 bytes of plain integers with explicit padding (any bit pattern
        // is valid); read_unaligned copes with any alignment.
        unsafe { std::ptr::read_unaligned(full.as_ptr().cast()) }
    }

    /// The bytes of this record, as version 3 wrote them (tests).
    pub fn bytes(&self) -> [u8; SIZE_V3] {
        // SAFETY: plain integers with explicit padding, fully initialised.
        unsafe { std::mem::transmute_copy(self) }
    }

    pub fn event(&self) -> Result<Event, DecodeError> {
        Raw {
            head: Head {
                ts_ns: self.ts_ns,
                sock_id: self.sock_id,
                netns: self.netns,
                lport: self.lport,
                rport: self.rport,
                kind: self.kind,
                origin: self.origin,
                flags: self.flags,
                more_flags: self.more_flags,
                proto: self.proto,
                family: self.family,
                ..Head::default()
            },
            laddr: &self.laddr,
            raddr: &self.raddr,
            task: Task {
                pid: self.pid,
                tid: self.tid,
                uid: self.uid,
                ppid: None,
                cgroup_id: self.cgroup_id,
                comm: crate::event::Comm(self.comm),
                thread: crate::event::Comm(self.thread),
            },
            errno: self.errno,
            alloc_ns: self.alloc_ns,
            own_port_range: self.own_port_range,
        }
        .event()
    }
}

/// Decodes one record of a version 1 to 3 trace.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    LegacyRecord::read(bytes).event()
}
