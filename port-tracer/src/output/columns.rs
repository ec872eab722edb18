//! The lifetime table that CSV and Parquet share: one row per lifetime, the JSONL lifetime
//! fields as columns, in the JSONL schema's order and with its values (addresses and
//! `sock_id` as text). One definition, so the two formats cannot drift apart.

use std::borrow::Cow;

use super::RunInfo;
use crate::{cgroups::Cgroup, lifetime::Lifetime};

/// A lifetime as a row: with its owner's cgroup, if resolved, and the host it was on.
#[derive(Clone, Copy, Debug)]
pub struct Row<'a> {
    pub lt: &'a Lifetime,
    pub cgroup: Option<&'a Cgroup>,
    pub run: &'a RunInfo,
}

/// No host or boot known.
static UNKNOWN_RUN: RunInfo = RunInfo {
    host: None,
    boot_id: None,
    started_ns: None,
};

impl<'a> Row<'a> {
    /// A row without a cgroup or a host.
    pub fn of(lt: &'a Lifetime) -> Row<'a> {
        Row {
            lt,
            cgroup: None,
            run: &UNKNOWN_RUN,
        }
    }
}

/// What a column holds; Parquet types follow from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    U16,
    U32,
    U64,
    /// Unsigned 32-bit, null when unknown (the parent of a process not known).
    OptionalU32,
    /// Unsigned 64-bit, null when unknown (times not seen, lifetimes not ended, allocator
    /// time on a tier that does not measure it).
    OptionalU64,
    /// Text, null when unknown (names from the owner's cgroup).
    OptionalText,
    Bool,
}

/// One cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value<'a> {
    Text(Cow<'a, str>),
    /// Any of the unsigned column types.
    Uint(u64),
    Null,
    Bool(bool),
}

impl From<Option<u64>> for Value<'_> {
    fn from(v: Option<u64>) -> Self {
        v.map_or(Value::Null, Value::Uint)
    }
}

/// A column: its JSONL field name, its type and how a lifetime gives its cell.
pub struct Column {
    pub name: &'static str,
    pub ty: ColumnType,
    pub value: for<'a> fn(&Row<'a>) -> Value<'a>,
}

const fn column(
    name: &'static str,
    ty: ColumnType,
    value: for<'a> fn(&Row<'a>) -> Value<'a>,
) -> Column {
    Column { name, ty, value }
}

fn text(s: &str) -> Value<'_> {
    Value::Text(Cow::Borrowed(s))
}

fn owned(s: String) -> Value<'static> {
    Value::Text(Cow::Owned(s))
}

fn opt_text(s: Option<&str>) -> Value<'_> {
    s.map_or(Value::Null, text)
}

use ColumnType::*;

/// The columns, in the JSONL lifetime record's order.
pub const LIFETIME_COLUMNS: &[Column] = &[
    column("proto", Text, |r| text(r.lt.ends.proto.as_str())),
    column("family", Text, |r| text(r.lt.ends.family.as_str())),
    column("laddr", Text, |r| owned(r.lt.ends.laddr.to_string())),
    column("lport", U16, |r| Value::Uint(r.lt.ends.lport.into())),
    column("raddr", Text, |r| owned(r.lt.ends.raddr.to_string())),
    column("rport", U16, |r| Value::Uint(r.lt.ends.rport.into())),
    column("netns", U32, |r| Value::Uint(r.lt.ends.netns.into())),
    column("pid", U32, |r| Value::Uint(r.lt.owner.pid.into())),
    column("tid", U32, |r| Value::Uint(r.lt.owner.tid.into())),
    column("uid", U32, |r| Value::Uint(r.lt.owner.uid.into())),
    column("ppid", OptionalU32, |r| {
        r.lt.owner.ppid.map(u64::from).into()
    }),
    column("comm", Text, |r| Value::Text(r.lt.owner.comm.as_str())),
    column("thread", Text, |r| Value::Text(r.lt.owner.thread.as_str())),
    column("cgroup_id", U64, |r| Value::Uint(r.lt.owner.cgroup_id)),
    column("cgroup", OptionalText, |r| {
        opt_text(r.cgroup.map(|c| c.path.as_str()))
    }),
    column("container_id", OptionalText, |r| {
        opt_text(r.cgroup.and_then(|c| c.naming.container_id.as_deref()))
    }),
    column("pod_uid", OptionalText, |r| {
        opt_text(r.cgroup.and_then(|c| c.naming.pod_uid.as_deref()))
    }),
    column("unit", OptionalText, |r| {
        opt_text(r.cgroup.and_then(|c| c.naming.unit.as_deref()))
    }),
    column("container_name", OptionalText, |r| {
        opt_text(r.cgroup.and_then(|c| c.runtime.container_name.as_deref()))
    }),
    column("pod_name", OptionalText, |r| {
        opt_text(r.cgroup.and_then(|c| c.runtime.pod_name.as_deref()))
    }),
    column("pod_namespace", OptionalText, |r| {
        opt_text(r.cgroup.and_then(|c| c.runtime.pod_namespace.as_deref()))
    }),
    column("origin", Text, |r| text(r.lt.origin.as_str())),
    column("sock_id", Text, |r| owned(format!("{:#x}", r.lt.sock_id))),
    column("assigned_ns", OptionalU64, |r| r.lt.assigned_ns().into()),
    column("released_ns", OptionalU64, |r| r.lt.released_ns().into()),
    column("duration_ns", OptionalU64, |r| r.lt.duration_ns().into()),
    column("time_wait_start_ns", OptionalU64, |r| {
        r.lt.time_wait_start_ns().into()
    }),
    column("time_wait_ns", OptionalU64, |r| r.lt.time_wait_ns().into()),
    column("alloc_ns", OptionalU64, |r| {
        r.lt.alloc_ns.map(u64::from).into()
    }),
    column("lossy", Bool, |r| Value::Bool(r.lt.lossy)),
    column("host", OptionalText, |r| opt_text(r.run.host.as_deref())),
    column("boot_id", OptionalText, |r| {
        opt_text(r.run.boot_id.as_deref())
    }),
];
