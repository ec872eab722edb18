//! A socket syscall between its entry and exit (tracepoint tier): the value of the
//! `SYSCALLS` map, by thread.

#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Bind = 1,
    Listen = 2,
    Connect = 3,
    Send = 4,
}

/// A socket syscall between entry and exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub sk: u64,
    /// The caller's sockaddr (bind: local, connect: remote), read only at exit and only
    /// when the outcome needs it: most calls never do.
    pub uaddr: u64,
    /// TCP connect: when the socket entered SYN_SENT during this call (0: it did not).
    /// The port connect chooses is then reported at the syscall's exit, by the task itself.
    pub syn_sent_ns: u64,
    /// The port the socket held at entry.
    pub num_before: u16,
    pub call: Call,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<Pending>() == 32);
