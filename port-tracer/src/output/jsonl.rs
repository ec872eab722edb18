//! JSON Lines: event, lifetime and summary records. Event and lifetime lines are built by
//! hand: the live output writes one line per event at storm rates, where `write!` with
//! `Display` for every integer and address cost the collector more than decoding and
//! reconstruction together.

use std::{
    io::{self, Write},
    net::IpAddr,
};

use super::{Printer, RunInfo, Spec, WallClock};
use crate::{
    cgroups::{Cgroups, Lookup},
    event::{errno_name, Comm, Endpoints, Event, Kind, Origin, Task},
    lifetime::Lifetime,
    summary::Summary,
};

pub const SPEC: Spec = Spec {
    name: "jsonl",
    help: "JSON Lines: event, lifetime and summary records",
    binary: false,
    for_tools: true,
    printer: |out, clock, cgroups| Box::new(Jsonl::new(out, clock).with_cgroups(cgroups)),
    partitioned: None,
};

pub struct Jsonl<W: Write> {
    out: W,
    /// For the summary's `realtime_offset_ns`.
    clock: WallClock,
    /// Lines not yet written.
    line: Line,
    /// Parts of the last records, kept as written: consecutive records mostly repeat them.
    memo: Memo,
    cgroups: Lookup,
    /// The end of every lifetime line: its host and boot, as JSON (see [`Printer::set_run`]).
    run: Vec<u8>,
}

/// The owners, addresses and namespace of the last records, as JSON: written once, copied
/// after. Owners alternate (a client's connect, the listener's accepted socket), so the
/// last few are kept.
#[derive(Default)]
pub struct Memo {
    owners: [Option<(Task, Vec<u8>)>; OWNERS],
    /// The slot the next new owner takes.
    next_owner: usize,
    laddr: Option<(IpAddr, Vec<u8>)>,
    raddr: Option<(IpAddr, Vec<u8>)>,
    netns: Option<(u32, Vec<u8>)>,
}

/// Owners kept written.
const OWNERS: usize = 4;

/// Copies what `key` was written as last time (into `memo`), or writes it with `write`
/// and keeps that.
#[inline(always)]
fn memoized<K: PartialEq + Copy>(
    line: &mut Line,
    memo: &mut Option<(K, Vec<u8>)>,
    key: K,
    write: impl FnOnce(&mut Line),
) {
    if let Some((k, bytes)) = memo {
        if *k == key {
            line.0.extend_from_slice(bytes);
            return;
        }
    }
    let at = line.0.len();
    write(line);
    let bytes = line.0[at..].to_vec();
    *memo = Some((key, bytes));
}

/// `,"host":...,"boot_id":...}` and the line's end: how every lifetime line ends.
fn run_fields(run: &RunInfo) -> Vec<u8> {
    let mut l = Line(Vec::new());
    let field = |l: &mut Line, name: &str, v: &Option<String>| {
        l.raw(name);
        match v {
            Some(s) => l.str(s),
            None => l.raw("null"),
        }
    };
    field(&mut l, ",\"host\":", &run.host);
    field(&mut l, ",\"boot_id\":", &run.boot_id);
    l.raw("}\n");
    l.0
}

impl<W: Write> Jsonl<W> {
    /// Lines go out in blocks of this many bytes: one copy less than line by line through
    /// a `BufWriter`.
    const BLOCK: usize = 1 << 16;

    pub fn new(out: W, clock: WallClock) -> Self {
        Jsonl {
            out,
            clock,
            line: Line(Vec::with_capacity(Self::BLOCK + 1024)),
            memo: Memo::default(),
            cgroups: Lookup::default(),
            run: run_fields(&RunInfo::default()),
        }
    }

    /// Owners' cgroups named from `cgroups`.
    pub fn with_cgroups(mut self, cgroups: Cgroups) -> Self {
        self.cgroups = Lookup::new(cgroups);
        self
    }

    #[cfg(test)]
    pub fn into_inner(mut self) -> W {
        let _ = self.write_pending();
        self.out
    }

    fn write_pending(&mut self) -> io::Result<()> {
        if !self.line.0.is_empty() {
            self.out.write_all(&self.line.0)?;
            self.line.clear();
        }
        Ok(())
    }

    fn line_done(&mut self) -> io::Result<()> {
        if self.line.0.len() >= Self::BLOCK {
            self.write_pending()?;
        }
        Ok(())
    }
}

impl<W: Write> Printer for Jsonl<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        let l = &mut self.line;
        l.raw("{\"type\":\"");
        l.raw(ev.kind.as_str());
        l.raw("\",\"ts_ns\":");
        l.u64(ev.ts_ns);
        let (memo, cgroups) = (&mut self.memo, &mut self.cgroups);
        l.socket(&ev.ends, &ev.task, ev.origin, ev.sock_id, memo, cgroups);
        if matches!(ev.kind, Kind::Assign | Kind::AllocFailure) {
            l.raw(",\"alloc_ns\":");
            l.opt_u64(ev.alloc_ns.map(u64::from));
            match ev.own_port_range {
                Some((low, high)) => {
                    l.raw(",\"own_port_range\":{\"low\":");
                    l.u64(low.into());
                    l.raw(",\"high\":");
                    l.u64(high.into());
                    l.raw("}");
                }
                None => l.raw(",\"own_port_range\":null"),
            }
        }
        if ev.kind == Kind::AllocFailure {
            l.raw(",\"errno\":");
            l.i64(ev.errno.into());
            l.raw(",\"error\":\"");
            l.raw(errno_name(ev.errno));
            l.raw("\"");
        }
        if ev.time_wait_sock {
            l.raw(",\"time_wait_sock\":true");
        }
        l.raw("}\n");
        self.line_done()
    }

    fn lifetime(&mut self, lt: &Lifetime) -> io::Result<()> {
        let l = &mut self.line;
        l.raw("{\"type\":\"lifetime\"");
        let (memo, cgroups) = (&mut self.memo, &mut self.cgroups);
        l.socket(&lt.ends, &lt.owner, lt.origin, lt.sock_id, memo, cgroups);
        l.raw(",\"assigned_ns\":");
        l.opt_u64(lt.assigned_ns());
        l.raw(",\"released_ns\":");
        l.opt_u64(lt.released_ns());
        l.raw(",\"duration_ns\":");
        l.opt_u64(lt.duration_ns());
        l.raw(",\"time_wait_start_ns\":");
        l.opt_u64(lt.time_wait_start_ns());
        l.raw(",\"time_wait_ns\":");
        l.opt_u64(lt.time_wait_ns());
        l.raw(",\"alloc_ns\":");
        l.opt_u64(lt.alloc_ns.map(u64::from));
        if lt.seen_at_close {
            l.raw(",\"seen_at_close\":true");
        }
        if lt.ended_at_close {
            l.raw(",\"ended_at_close\":true");
        }
        l.raw(if lt.lossy {
            ",\"lossy\":true"
        } else {
            ",\"lossy\":false"
        });
        l.0.extend_from_slice(&self.run);
        self.line_done()
    }

    fn set_run(&mut self, run: &RunInfo) {
        self.run = run_fields(run);
    }

    fn summary(&mut self, s: &Summary) -> io::Result<()> {
        self.write_pending()?;
        let mut v = serde_json::to_value(s).expect("summary serializes");
        let obj = v.as_object_mut().expect("summary is an object");
        obj.insert("type".into(), "summary".into());
        let mut lost = serde_json::Map::new();
        for (k, n) in &s.lost.by_reason {
            lost.insert((*k).into(), (*n).into());
        }
        lost.insert("undecodable".into(), s.lost.undecodable.into());
        lost.insert("total".into(), s.lost.total().into());
        obj.insert("lost".into(), lost.into());
        // Times in the summary are monotonic ns, as everywhere in the JSONL.
        obj.insert(
            "realtime_offset_ns".into(),
            (self.clock.offset_ns as i64).into(),
        );
        writeln!(self.out, "{v}")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.out.flush()
    }
}

/// One JSON line under construction (bytes, reused between records).
#[derive(Default)]
pub struct Line(pub Vec<u8>);

/// "00" to "99".
const TWO_DIGITS: &[u8; 200] = b"0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

impl Line {
    pub fn clear(&mut self) {
        self.0.clear();
    }

    #[inline(always)]
    pub fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    /// Decimal digits written straight into the line, two at a time, from the last: no
    /// intermediate buffer and no copy of variable length (a call to `memcpy` each).
    #[inline(always)]
    pub fn u64(&mut self, mut v: u64) {
        let len = v.checked_ilog10().map_or(1, |l| l as usize + 1);
        self.0.reserve(len);
        let at = self.0.len();
        let digits = &mut self.0.spare_capacity_mut()[..len];
        let mut end = len;
        while v >= 100 {
            let d = (v % 100) as usize * 2;
            v /= 100;
            end -= 2;
            digits[end].write(TWO_DIGITS[d]);
            digits[end + 1].write(TWO_DIGITS[d + 1]);
        }
        if v >= 10 {
            let d = v as usize * 2;
            digits[0].write(TWO_DIGITS[d]);
            digits[1].write(TWO_DIGITS[d + 1]);
        } else {
            digits[0].write(b'0' + v as u8);
        }
        // SAFETY: the `len` bytes after `at` were reserved and every one written above
        // (`len` is the digit count, so the loop ends with 1 or 2 left at the front).
        unsafe { self.0.set_len(at + len) };
    }

    #[inline(always)]
    pub fn i64(&mut self, v: i64) {
        if v < 0 {
            self.0.push(b'-');
        }
        self.u64(v.unsigned_abs());
    }

    #[inline(always)]
    pub fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            Some(v) => self.u64(v),
            None => self.raw("null"),
        }
    }

    /// `"0x..."`, lower-case hex as `{:#x}` writes it.
    #[inline(always)]
    pub fn hex(&mut self, v: u64) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        self.raw("\"0x");
        let n = (64 - v.leading_zeros()).div_ceil(4).max(1) as usize;
        self.0.reserve(n + 1);
        let at = self.0.len();
        let out = &mut self.0.spare_capacity_mut()[..n + 1];
        for (i, d) in out[..n].iter_mut().enumerate() {
            d.write(DIGITS[((v >> (4 * (n - 1 - i))) & 0xf) as usize]);
        }
        out[n].write(b'"');
        // SAFETY: the `n + 1` bytes after `at` were reserved and all written above.
        unsafe { self.0.set_len(at + n + 1) };
    }

    /// A quoted address: IPv4 written digit by digit, IPv6 (rarer) by its `Display`.
    #[inline(always)]
    pub fn ip(&mut self, a: IpAddr) {
        self.0.push(b'"');
        match a {
            IpAddr::V4(a) => {
                for (i, o) in a.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.0.push(b'.');
                    }
                    self.u64(o.into());
                }
            }
            IpAddr::V6(a) => {
                use std::io::Write;
                let _ = write!(self.0, "{a}");
            }
        }
        self.0.push(b'"');
    }

    /// A JSON string; plain ASCII (every comm in practice) is copied as is.
    #[inline(always)]
    pub fn str(&mut self, s: &str) {
        if s.bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            self.0.push(b'"');
            self.raw(s);
            self.0.push(b'"');
        } else {
            serde_json::to_writer(&mut self.0, s).expect("strings serialize");
        }
    }

    /// A JSON string, or null.
    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.raw("null"),
        }
    }

    /// A task name as a JSON string: its bytes as they are when they are printable ASCII
    /// without quotes or backslashes (every name in practice), else as `str` writes it.
    #[inline(always)]
    pub fn comm(&mut self, c: &Comm) {
        let end = c.0.iter().position(|&b| b == 0).unwrap_or(c.0.len());
        let name = &c.0[..end];
        if name
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            self.0.push(b'"');
            self.0.extend_from_slice(name);
            self.0.push(b'"');
        } else {
            self.str(&c.as_str());
        }
    }

    /// The fields every record about a socket has, after at least one field. Keys are
    /// written with their punctuation as one literal: fewer, longer copies.
    pub fn socket(
        &mut self,
        e: &Endpoints,
        task: &Task,
        origin: Origin,
        sock_id: u64,
        memo: &mut Memo,
        cgroups: &mut Lookup,
    ) {
        self.raw(",\"proto\":\"");
        self.raw(e.proto.as_str());
        self.raw("\",\"family\":\"");
        self.raw(e.family.as_str());
        self.raw("\",\"laddr\":");
        memoized(self, &mut memo.laddr, e.laddr, |l| l.ip(e.laddr));
        self.raw(",\"lport\":");
        self.u64(e.lport.into());
        self.raw(",\"raddr\":");
        memoized(self, &mut memo.raddr, e.raddr, |l| l.ip(e.raddr));
        self.raw(",\"rport\":");
        self.u64(e.rport.into());
        self.raw(",\"netns\":");
        memoized(self, &mut memo.netns, e.netns, |l| l.u64(e.netns.into()));
        let slot = match memo
            .owners
            .iter()
            .position(|o| o.as_ref().is_some_and(|(t, _)| t == task))
        {
            Some(i) => i,
            None => {
                let i = memo.next_owner;
                memo.next_owner = (i + 1) % OWNERS;
                memo.owners[i] = None;
                i
            }
        };
        memoized(self, &mut memo.owners[slot], *task, |l| {
            l.raw(",\"pid\":");
            l.u64(task.pid.into());
            l.raw(",\"tid\":");
            l.u64(task.tid.into());
            l.raw(",\"uid\":");
            l.u64(task.uid.into());
            l.raw(",\"ppid\":");
            l.opt_u64(task.ppid.map(u64::from));
            l.raw(",\"comm\":");
            l.comm(&task.comm);
            l.raw(",\"thread\":");
            l.comm(&task.thread);
            l.raw(",\"cgroup_id\":");
            l.u64(task.cgroup_id);
            // Fixed for an id once noted: kept written with the owner.
            let cg = cgroups.get(task.cgroup_id);
            let n = cg.as_ref().map(|c| &c.naming);
            l.raw(",\"cgroup\":");
            l.opt_str(cg.as_ref().map(|c| c.path.as_str()));
            l.raw(",\"container_id\":");
            l.opt_str(n.and_then(|n| n.container_id.as_deref()));
            l.raw(",\"pod_uid\":");
            l.opt_str(n.and_then(|n| n.pod_uid.as_deref()));
            l.raw(",\"unit\":");
            l.opt_str(n.and_then(|n| n.unit.as_deref()));
            let r = cg.as_ref().map(|c| &c.runtime);
            l.raw(",\"container_name\":");
            l.opt_str(r.and_then(|r| r.container_name.as_deref()));
            l.raw(",\"pod_name\":");
            l.opt_str(r.and_then(|r| r.pod_name.as_deref()));
            l.raw(",\"pod_namespace\":");
            l.opt_str(r.and_then(|r| r.pod_namespace.as_deref()));
        });
        self.raw(",\"origin\":\"");
        self.raw(origin.as_str());
        self.raw("\",\"sock_id\":");
        self.hex(sock_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::columns::{Value as Cell, LIFETIME_COLUMNS};

    /// A JSON object's fields in the order they were written.
    struct Ordered(Vec<(String, serde_json::Value)>);

    impl<'de> serde::Deserialize<'de> for Ordered {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Fields;
            impl<'de> serde::de::Visitor<'de> for Fields {
                type Value = Ordered;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Ordered, A::Error> {
                    let mut out = Vec::new();
                    while let Some(kv) = map.next_entry()? {
                        out.push(kv);
                    }
                    Ok(Ordered(out))
                }
            }
            d.deserialize_map(Fields)
        }
    }

    /// The JSONL lifetime record and the CSV/Parquet table (`columns`) are one schema: the
    /// same fields in the same order with the same values. A field added to one only fails
    /// here.
    #[test]
    fn lifetime_lines_are_the_tables_columns_in_order() {
        let cgroups = crate::cgroups::Cgroups::recorded();
        cgroups.insert(crate::cgroups::Entry {
            id: 77,
            path: format!("/system.slice/docker-{}.scope", "ab".repeat(32)),
            runtime: Default::default(),
        });
        cgroups.note(77);
        for lt in [crate::testing::lifetime(), {
            let mut open = crate::testing::lifetime();
            open.released = None;
            open.alloc_ns = None;
            open.owner.ppid = None;
            open.owner.cgroup_id = 77;
            open
        }] {
            let mut j =
                Jsonl::new(Vec::new(), WallClock { offset_ns: 0 }).with_cgroups(cgroups.clone());
            // A name a recording stored: anything, escaped as JSON.
            let run = RunInfo {
                host: Some("web-\"7\"\n".into()),
                boot_id: Some("4f0c2e6a-6d1b-4c8e-9a57-1f2b3c4d5e6f".into()),
                started_ns: None,
            };
            j.set_run(&run);
            j.lifetime(&lt).unwrap();
            let cg = cgroups.get(lt.owner.cgroup_id);
            let row = crate::output::columns::Row {
                lt: &lt,
                cgroup: cg.as_deref(),
                run: &run,
            };
            let line = String::from_utf8(j.into_inner()).unwrap();
            let Ordered(fields) = serde_json::from_str(&line).unwrap();
            assert_eq!(fields[0], ("type".to_string(), "lifetime".into()));
            let want: Vec<(String, serde_json::Value)> = LIFETIME_COLUMNS
                .iter()
                .map(|c| {
                    let v = match (c.value)(&row) {
                        Cell::Text(s) => s.into_owned().into(),
                        Cell::Uint(n) => n.into(),
                        Cell::Null => serde_json::Value::Null,
                        Cell::Bool(b) => b.into(),
                    };
                    (c.name.to_string(), v)
                })
                .collect();
            assert_eq!(fields[1..], want[..], "{line}");
        }
    }

    fn line(f: impl FnOnce(&mut Line)) -> String {
        let mut l = Line::default();
        f(&mut l);
        String::from_utf8(l.0).unwrap()
    }

    #[test]
    fn values_match_display_and_serde() {
        for v in [0u64, 1, 0xf, 0x10, 0xffff888102dae5c0, u64::MAX] {
            assert_eq!(line(|l| l.hex(v)), format!("\"{v:#x}\""));
            assert_eq!(line(|l| l.u64(v)), v.to_string());
        }
        // Every digit count, and each side of a power of ten.
        let mut p = 1u64;
        for _ in 0..20 {
            for v in [p - 1, p, p + 1, p.saturating_mul(7).saturating_add(3)] {
                assert_eq!(line(|l| l.u64(v)), v.to_string());
            }
            p = p.saturating_mul(10);
        }
        for v in [0i64, 7, -1, -98, 12345, i64::MIN, i64::MAX] {
            assert_eq!(line(|l| l.i64(v)), v.to_string());
        }
        for name in ["storm", "", "a\"b", "tab\there", "x123456789012345"] {
            let c = Comm::new(name);
            assert_eq!(
                line(|l| l.comm(&c)),
                serde_json::to_string(&c.as_str()).unwrap()
            );
        }
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(b"\xff\\ok");
        let c = Comm(raw);
        assert_eq!(
            line(|l| l.comm(&c)),
            serde_json::to_string(&c.as_str()).unwrap()
        );
        for a in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fe80::1:2",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(line(|l| l.ip(ip)), format!("\"{ip}\""));
        }
        for s in ["storm", "", "a\"b", "back\\slash", "tab\there", "ünï"] {
            assert_eq!(line(|l| l.str(s)), serde_json::to_string(s).unwrap());
        }
        assert_eq!(line(|l| l.opt_u64(None)), "null");
    }
}
