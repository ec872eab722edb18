//! Our data files as other tools read them: a real workload recorded by the real tracer,
//! exported, then read back by pyarrow (what pandas reads Parquet with) and DuckDB.
//! Host only (root, and the Python readers `cargo xtask setup` installs): the VM matrix does
//! not build this file.

mod support;

use std::net::TcpListener;

use serde_json::{json, Value};
use support::*;

/// Reads a Parquet file with pyarrow and with DuckDB; prints, per reader, the row count, the
/// column types and the rows of one pid.
const READ_BOTH: &str = r#"
import json, sys
import duckdb, pyarrow.parquet as pq

path, pid = sys.argv[1], int(sys.argv[2])
cols = ["proto", "lport", "rport", "origin", "pid", "ppid", "comm", "thread", "cgroup", "released_ns",
        "host", "boot_id"]

table = pq.read_table(path)
arrow = {
    "count": table.num_rows,
    "types": {f.name: [str(f.type), f.nullable] for f in table.schema},
    "mine": [r for r in table.select(cols).to_pylist() if r["pid"] == pid],
}

con = duckdb.connect()
src = "read_parquet('%s')" % path.replace("'", "''")
duck = {
    "count": con.execute(f"select count(*) from {src}").fetchone()[0],
    "types": {r[0]: r[1] for r in con.execute(f"describe select * from {src}").fetchall()},
    "mine": [dict(zip(cols, r)) for r in con.execute(
        f"select {', '.join(cols)} from {src} where pid = ?", [pid]).fetchall()],
}
print(json.dumps({"pyarrow": arrow, "duckdb": duck}))
"#;

/// The ports the workload got, from getsockname.
struct Ports {
    listener: u16,
    client: u16,
    udp: u16,
    /// A listener still open when recording stops: its release is unknown (null).
    held: u16,
}

#[test]
fn parquet_export_reads_back_in_pyarrow_and_duckdb() {
    require_root!();
    let dir = std::env::temp_dir().join(format!("port-tracer-readers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("t.ptrace");
    let mut still_open = None;
    let ports = record_with(&trace, &["--host", "fleet-a.example"], || {
        // Bound first, so that no other socket here gets its port.
        let h = TcpListener::bind("127.0.0.1:0").unwrap();
        let held = port_of(h.local_addr().unwrap());
        still_open = Some(h);
        let (listener, client, udp) = listener_client_udp();
        Ports {
            listener,
            client,
            udp,
            held,
        }
    });
    drop(still_open);

    let parquet = dir.join("t.parquet");
    export(&trace, "parquet", &parquet);
    let jsonl = dir.join("t.jsonl");
    export(&trace, "jsonl", &jsonl);
    let lifetimes = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("{\"type\":\"lifetime\""))
        .count();
    assert!(lifetimes >= 4, "{lifetimes} lifetimes in the JSONL export");

    let pid = std::process::id();
    let read: Value = serde_json::from_str(&python(
        READ_BOTH,
        &[parquet.to_str().unwrap(), &pid.to_string()],
    ))
    .unwrap();
    for reader in ["pyarrow", "duckdb"] {
        let r = &read[reader];
        assert_eq!(r["count"], lifetimes, "{reader}: one row per lifetime");
        let mine = r["mine"].as_array().unwrap();
        let row = |proto: &str, port: u16, origin: &str| -> &Value {
            let rows: Vec<&Value> = mine
                .iter()
                .filter(|l| l["proto"] == proto && l["lport"] == port && l["origin"] == origin)
                .collect();
            assert_eq!(
                rows.len(),
                1,
                "{reader}: {proto} port {port} by {origin}: {mine:#?}"
            );
            rows[0]
        };
        let (comm, thread) = (process_comm(), thread_comm());
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        let boot_id = boot_id.trim();
        // This process's cgroup v2 path, as the kernel shows it.
        let cgroup = std::fs::read_to_string("/proc/self/cgroup")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("0::").map(String::from))
            .expect("a cgroup v2 line");
        for (proto, port, origin) in [
            ("tcp", ports.listener, "bind_ephemeral"),
            ("tcp", ports.listener, "inherited"),
            ("tcp", ports.client, "connect"),
            ("udp", ports.udp, "bind_ephemeral"),
            ("tcp", ports.held, "bind_ephemeral"),
        ] {
            let lt = row(proto, port, origin);
            assert_eq!(lt["pid"], pid, "{reader}: {lt}");
            assert_eq!(lt["comm"], comm.as_str(), "{reader}: {lt}");
            assert_eq!(lt["thread"], thread.as_str(), "{reader}: {lt}");
            // The parent, as the kernel knew it (getppid()), on every tier.
            assert_eq!(lt["ppid"], unsafe { libc::getppid() }, "{reader}: {lt}");
            assert_eq!(lt["cgroup"], cgroup.as_str(), "{reader}: {lt}");
            // The host and boot recorded (`record --host`), on every row.
            assert_eq!(lt["host"], "fleet-a.example", "{reader}: {lt}");
            assert_eq!(lt["boot_id"], boot_id, "{reader}: {lt}");
        }
        let client = row("tcp", ports.client, "connect");
        assert_eq!(client["rport"], ports.listener, "{reader}: {client}");
        assert!(client["released_ns"].is_u64(), "{reader}: {client}");
        let accepted = row("tcp", ports.listener, "inherited");
        assert_eq!(accepted["rport"], ports.client, "{reader}: {accepted}");
        let held = row("tcp", ports.held, "bind_ephemeral");
        assert!(held["released_ns"].is_null(), "{reader}: {held}");
    }

    // Types as each reader sees them: unsigned integers, strings, nullable where unknown.
    let arrow = &read["pyarrow"]["types"];
    assert_eq!(arrow["lport"], json!(["uint16", false]));
    assert_eq!(arrow["pid"], json!(["uint32", false]));
    assert_eq!(arrow["cgroup_id"], json!(["uint64", false]));
    assert_eq!(arrow["comm"], json!(["string", false]));
    assert_eq!(arrow["laddr"], json!(["string", false]));
    assert_eq!(arrow["released_ns"], json!(["uint64", true]));
    assert_eq!(arrow["lossy"], json!(["bool", false]));
    assert_eq!(arrow["alloc_ns"], json!(["uint64", true]));
    assert_eq!(arrow["ppid"], json!(["uint32", true]));
    assert_eq!(arrow["container_id"], json!(["string", true]));
    let duck = &read["duckdb"]["types"];
    assert_eq!(duck["lport"], "USMALLINT");
    assert_eq!(duck["pid"], "UINTEGER");
    assert_eq!(duck["released_ns"], "UBIGINT");
    assert_eq!(duck["comm"], "VARCHAR");
    assert_eq!(duck["thread"], "VARCHAR");
    assert_eq!(duck["sock_id"], "VARCHAR");
    assert_eq!(duck["lossy"], "BOOLEAN");
    assert_eq!(duck["alloc_ns"], "UBIGINT");
    assert_eq!(duck["ppid"], "UINTEGER");
    assert_eq!(duck["cgroup"], "VARCHAR");
    assert_eq!(duck["host"], "VARCHAR");
    assert_eq!(duck["boot_id"], "VARCHAR");
    assert_eq!(
        duck.as_object().unwrap().keys().len(),
        32,
        "the JSONL lifetime fields: {duck}"
    );

    let _ = std::fs::remove_dir_all(&dir);
}
