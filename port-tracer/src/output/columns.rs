//! The lifetime table that CSV and Parquet share: one row per lifetime, the JSONL lifetime
//! fields as columns, in the JSONL schema's order and with its values (addresses and
//! `sock_id` as text). One definition, so the two formats cannot drift apart.

use std::borrow::Cow;

use crate::lifetime::Lifetime;

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
    pub value: for<'a> fn(&'a Lifetime) -> Value<'a>,
}

const fn column(
    name: &'static str,
    ty: ColumnType,
    value: for<'a> fn(&'a Lifetime) -> Value<'a>,
) -> Column {
    Column { name, ty, value }
}

fn text(s: &str) -> Value<'_> {
    Value::Text(Cow::Borrowed(s))
}

fn owned(s: String) -> Value<'static> {
    Value::Text(Cow::Owned(s))
}

use ColumnType::*;

/// The columns, in the JSONL lifetime record's order.
pub const LIFETIME_COLUMNS: &[Column] = &[
    column("proto", Text, |lt| text(lt.ends.proto.as_str())),
    column("family", Text, |lt| text(lt.ends.family.as_str())),
    column("laddr", Text, |lt| owned(lt.ends.laddr.to_string())),
    column("lport", U16, |lt| Value::Uint(lt.ends.lport.into())),
    column("raddr", Text, |lt| owned(lt.ends.raddr.to_string())),
    column("rport", U16, |lt| Value::Uint(lt.ends.rport.into())),
    column("netns", U32, |lt| Value::Uint(lt.ends.netns.into())),
    column("pid", U32, |lt| Value::Uint(lt.owner.pid.into())),
    column("tid", U32, |lt| Value::Uint(lt.owner.tid.into())),
    column("uid", U32, |lt| Value::Uint(lt.owner.uid.into())),
    column("ppid", OptionalU32, |lt| {
        lt.owner.ppid.map(u64::from).into()
    }),
    column("comm", Text, |lt| Value::Text(lt.owner.comm.as_str())),
    column("thread", Text, |lt| Value::Text(lt.owner.thread.as_str())),
    column("cgroup_id", U64, |lt| Value::Uint(lt.owner.cgroup_id)),
    column("origin", Text, |lt| text(lt.origin.as_str())),
    column("sock_id", Text, |lt| owned(format!("{:#x}", lt.sock_id))),
    column("assigned_ns", OptionalU64, |lt| lt.assigned_ns().into()),
    column("released_ns", OptionalU64, |lt| lt.released_ns().into()),
    column("duration_ns", OptionalU64, |lt| lt.duration_ns().into()),
    column("time_wait_start_ns", OptionalU64, |lt| {
        lt.time_wait_start_ns().into()
    }),
    column("time_wait_ns", OptionalU64, |lt| lt.time_wait_ns().into()),
    column("alloc_ns", OptionalU64, |lt| {
        lt.alloc_ns.map(u64::from).into()
    }),
    column("lossy", Bool, |lt| Value::Bool(lt.lossy)),
];
