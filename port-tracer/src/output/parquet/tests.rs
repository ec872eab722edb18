use ::parquet::{
    file::reader::{FileReader, SerializedFileReader},
    record::Field,
};

use super::*;
use crate::lifetime::time;
use crate::{
    event::{Comm, Endpoints, Family, Origin, Proto, Task},
    testing::ends,
};

/// A TCP connect that went through TIME_WAIT, every field known.
fn time_wait() -> Lifetime {
    Lifetime {
        owner: Task {
            pid: 9,
            tid: 10,
            uid: 1000,
            ppid: Some(1),
            comm: Comm::new("curl"),
            thread: Comm::new("curl-worker"),
            cgroup_id: u64::MAX - 1,
        },
        assigned: time(1_000),
        released: time(5_000),
        time_wait_start: time(3_000),
        ..Lifetime::new(
            ends(40000),
            Task::default(),
            Origin::Connect,
            0xffff_8881_02da_e5c0,
        )
    }
}

/// An IPv6 UDP socket still held at the end: no release, no TIME_WAIT.
fn open_ipv6() -> Lifetime {
    Lifetime {
        ends: Endpoints {
            proto: Proto::Udp,
            family: Family::Ipv6,
            netns: u32::MAX,
            laddr: "::1".parse().unwrap(),
            lport: 65535,
            raddr: "fe80::1:2".parse().unwrap(),
            rport: 0,
        },
        owner: Task {
            pid: 7,
            comm: Comm::new("ünï,\"x"),
            ..Default::default()
        },
        assigned: time(2_000),
        lossy: true,
        ..Lifetime::new(ends(0), Task::default(), Origin::BindEphemeral, 0x10)
    }
}

/// Held before tracing started: released, but when it was assigned is unknown.
fn preexisting() -> Lifetime {
    Lifetime {
        origin: Origin::Preexisting,
        sock_id: 0,
        assigned: None,
        time_wait_start: None,
        ..time_wait()
    }
}

fn write(lifetimes: &[Lifetime], max_rows: usize) -> Vec<u8> {
    let mut table = ParquetTable::new(max_rows);
    let mut out = Vec::new();
    for lt in lifetimes {
        table.push(&Row::of(lt), &mut out).unwrap();
    }
    table.finish(&mut out).unwrap();
    out
}

fn reader(bytes: Vec<u8>) -> SerializedFileReader<bytes::Bytes> {
    SerializedFileReader::new(bytes::Bytes::from(bytes)).expect("a valid Parquet file")
}

/// Every row as (column name, value) pairs.
fn rows(bytes: Vec<u8>) -> Vec<Vec<(String, Field)>> {
    let r = reader(bytes);
    let rows = r.get_row_iter(None).unwrap();
    rows.map(|row| row.unwrap().into_columns()).collect()
}

fn get<'a>(row: &'a [(String, Field)], name: &str) -> &'a Field {
    &row.iter().find(|(n, _)| n == name).unwrap().1
}

fn s(v: &str) -> Field {
    Field::Str(v.to_string())
}

#[test]
fn values_and_nulls_read_back() {
    let rows = rows(write(&[time_wait(), open_ipv6(), preexisting()], 100));
    assert_eq!(rows.len(), 3);
    let names: Vec<&str> = rows[0].iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names.join(","),
        crate::output::csv::csv_header(),
        "the CSV's columns, in its order"
    );

    let tw = &rows[0];
    for (name, want) in [
        ("proto", s("tcp")),
        ("family", s("ipv4")),
        ("laddr", s("127.0.0.1")),
        ("lport", Field::UShort(40000)),
        ("rport", Field::UShort(80)),
        ("netns", Field::UInt(7)),
        ("pid", Field::UInt(9)),
        ("tid", Field::UInt(10)),
        ("uid", Field::UInt(1000)),
        ("comm", s("curl")),
        ("cgroup_id", Field::ULong(u64::MAX - 1)),
        ("origin", s("connect")),
        ("sock_id", s("0xffff888102dae5c0")),
        ("assigned_ns", Field::ULong(1_000)),
        ("released_ns", Field::ULong(5_000)),
        ("duration_ns", Field::ULong(4_000)),
        ("time_wait_start_ns", Field::ULong(3_000)),
        ("time_wait_ns", Field::ULong(2_000)),
        ("lossy", Field::Bool(false)),
    ] {
        assert_eq!(get(tw, name), &want, "{name}");
    }

    let open = &rows[1];
    for (name, want) in [
        ("proto", s("udp")),
        ("family", s("ipv6")),
        ("laddr", s("::1")),
        ("raddr", s("fe80::1:2")),
        ("lport", Field::UShort(65535)),
        ("netns", Field::UInt(u32::MAX)),
        ("comm", s("ünï,\"x")),
        ("origin", s("bind_ephemeral")),
        ("sock_id", s("0x10")),
        ("assigned_ns", Field::ULong(2_000)),
        ("released_ns", Field::Null),
        ("duration_ns", Field::Null),
        ("time_wait_start_ns", Field::Null),
        ("time_wait_ns", Field::Null),
        ("lossy", Field::Bool(true)),
    ] {
        assert_eq!(get(open, name), &want, "{name}");
    }

    let pre = &rows[2];
    for (name, want) in [
        ("origin", s("preexisting")),
        ("assigned_ns", Field::Null),
        ("released_ns", Field::ULong(5_000)),
        ("duration_ns", Field::Null),
        ("time_wait_ns", Field::Null),
    ] {
        assert_eq!(get(pre, name), &want, "{name}");
    }
}

#[test]
fn schema_says_unsigned_strings_and_nullable() {
    let r = reader(write(&[time_wait()], 100));
    let schema = r.metadata().file_metadata().schema_descr_ptr();
    let column = |name: &str| {
        let i = (0..schema.num_columns())
            .find(|&i| schema.column(i).name() == name)
            .unwrap();
        schema.column(i)
    };
    assert_eq!(schema.num_columns(), LIFETIME_COLUMNS.len());
    let lport = column("lport");
    assert_eq!(lport.physical_type(), PhysicalType::INT32);
    assert_eq!(
        lport.logical_type_ref(),
        Some(&LogicalType::integer(16, false))
    );
    assert_eq!(lport.max_def_level(), 0, "required");
    let comm = column("comm");
    assert_eq!(comm.physical_type(), PhysicalType::BYTE_ARRAY);
    assert_eq!(comm.logical_type_ref(), Some(&LogicalType::String));
    let released = column("released_ns");
    assert_eq!(released.physical_type(), PhysicalType::INT64);
    assert_eq!(released.max_def_level(), 1, "nullable");
    assert_eq!(column("lossy").physical_type(), PhysicalType::BOOLEAN);
}

#[test]
fn row_groups_are_split_at_the_bound_and_written_as_they_fill() {
    let mut table = ParquetTable::new(3);
    let mut out = Vec::new();
    let mut written = Vec::new();
    for port in 1..=7 {
        table
            .push(
                &Row::of(&Lifetime {
                    ends: ends(port),
                    ..time_wait()
                }),
                &mut out,
            )
            .unwrap();
        written.push(out.len());
    }
    // Nothing before the first group fills; then a group leaves at every third row.
    assert_eq!(written[0], written[1]);
    assert!(written[2] > written[1]);
    assert_eq!(written[3], written[4]);
    assert!(written[5] > written[4]);
    assert_eq!(written[6], written[5]);
    // What it wrote, and what its unwritten row takes unencoded.
    let sizes = table.sizes();
    assert_eq!(sizes.written, out.len() as u64);
    assert_eq!(sizes.rows, 7);
    assert!(
        sizes.buffered_raw > 100 && sizes.written_raw > 6 * 100,
        "{sizes:?}"
    );
    table.finish(&mut out).unwrap();
    assert_eq!(table.sizes().written, out.len() as u64, "the footer too");
    assert_eq!(table.sizes().buffered_raw, 0);

    let r = reader(out.clone());
    // zstd, every column chunk.
    for g in r.metadata().row_groups() {
        for c in g.columns() {
            assert!(
                matches!(c.compression(), ::parquet::basic::Compression::ZSTD(_)),
                "{:?}",
                c.compression()
            );
        }
    }
    let sizes: Vec<i64> = r
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows())
        .collect();
    assert_eq!(sizes, [3, 3, 1]);
    let ports: Vec<Field> = rows(out).iter().map(|r| get(r, "lport").clone()).collect();
    assert_eq!(ports, (1..=7).map(Field::UShort).collect::<Vec<_>>());
}

#[test]
fn an_empty_run_is_a_valid_file_with_the_schema() {
    let bytes = write(&[], 100);
    let r = reader(bytes.clone());
    assert_eq!(r.metadata().file_metadata().num_rows(), 0);
    assert_eq!(
        r.metadata().file_metadata().schema_descr().num_columns(),
        LIFETIME_COLUMNS.len()
    );
    assert!(rows(bytes).is_empty());
}

/// A disk that is full.
struct Full;

impl Write for Full {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn write_errors_are_returned() {
    let mut table = ParquetTable::new(1);
    let e = table.push(&Row::of(&time_wait()), &mut Full).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    let mut table = ParquetTable::new(10);
    table.push(&Row::of(&time_wait()), &mut Full).unwrap();
    let e = table.finish(&mut Full).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
}
