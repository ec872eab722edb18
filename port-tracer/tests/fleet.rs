//! A fleet's traces as one dataset: two real recordings under two host names, exported into
//! one directory of Hive-style partitions (`export --format parquet --output-dir`), then
//! read back by DuckDB and by Spark (pyspark, local mode), which must count per host what
//! the JSONL exports of the same traces hold. Host only (root, and the Python readers and
//! the Java runtime that `cargo xtask setup` installs): the VM matrix does not build this
//! file.

mod support;

use std::{
    collections::BTreeMap,
    net::{TcpListener, TcpStream, UdpSocket},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use support::*;

/// Reads the partitions under `argv[1]` with DuckDB and with Spark, the queries as the
/// README shows them; prints, per reader and host, the rows and those of pid `argv[2]`,
/// and the partition columns' types, as one JSON line.
const READ_FLEET: &str = r#"
import json, sys
import duckdb
from pyspark.sql import SparkSession, functions as F

DIR, pid, scratch = sys.argv[1], int(sys.argv[2]), sys.argv[3]

# DuckDB, as the README shows it.
con = duckdb.connect()
fleet = f"read_parquet('{DIR}/**/*.parquet', hive_partitioning = true)"
duck = {host: {"rows": n, "mine": mine, "dates": dates} for host, n, mine, dates in con.execute(
    f"select host, count(*), count(*) filter (where pid = ?), list(distinct date::varchar) "
    f"from {fleet} group by host", [pid]).fetchall()}
duck_types = {r[0]: r[1] for r in con.execute(f"describe select host, date from {fleet}").fetchall()}
shown = con.sql(f"select host, count(*) as lifetimes from {fleet} group by host order by host")

# Spark, as the README shows it (scratch space and no web UI for the test).
spark = (SparkSession.builder.master("local[1]")
         .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
         .config("spark.ui.enabled", "false")
         .config("spark.local.dir", scratch)
         .config("spark.sql.warehouse.dir", scratch + "/warehouse")
         .getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
df = spark.read.option("basePath", DIR).parquet(DIR)
counts = df.groupBy("host").agg(
    F.count("*").alias("rows"),
    F.sum((F.col("pid") == pid).cast("long")).alias("mine")).collect()
sparked = {r["host"]: {"rows": r["rows"], "mine": r["mine"]} for r in counts}
spark_types = {f.name: f.dataType.simpleString() for f in df.schema.fields if f.name in ("host", "date")}
spark_shown = df.groupBy("host").count().orderBy("host")._jdf.showString(20, 20, False)
spark.stop()

print(json.dumps({"duckdb": duck, "duckdb_types": duck_types, "duckdb_shown": str(shown),
                  "spark": sparked, "spark_types": spark_types, "spark_shown": spark_shown}))
"#;

/// What a workload did: the lifetimes of this process it leaves in a trace.
struct Workload {
    lifetimes: u64,
}

/// A listener, `connections` clients connected to it and accepted (reset, so no
/// TIME_WAIT), and `udp` UDP sockets bound to port 0, all on loopback and closed again: a
/// lifetime for the listener, two for each connection (the client's, the accepted
/// socket's), one for each UDP socket.
fn workload(connections: u64, udp: u64) -> Workload {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = port_of(l.local_addr().unwrap());
    for _ in 0..connections {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (a, _) = l.accept().unwrap();
        reset_close(c);
        drop(a);
    }
    drop(l);
    for _ in 0..udp {
        drop(UdpSocket::bind("127.0.0.1:0").unwrap());
    }
    Workload {
        lifetimes: 1 + 2 * connections + udp,
    }
}

/// Runs `port-tracer export TRACE ARGS...`, failing the test with its stderr if it fails.
fn export_with(trace: &Path, args: &[&str]) {
    let run = Command::new(env!("CARGO_BIN_EXE_port-tracer"))
        .arg("export")
        .arg(trace)
        .args(args)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "export {args:?}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
}

/// Every file under `dir`, relative to it, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The UTC day now, `YYYY-MM-DD`.
fn utc_today() -> String {
    let out = Command::new("date").args(["-u", "+%F"]).output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn two_hosts_exported_into_one_directory_read_the_same_in_duckdb_and_spark() {
    require_root!();
    let dir = std::env::temp_dir().join(format!("port-tracer-fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fleet = dir.join("fleet");
    let first_day = utc_today();

    // Two hosts: a name of the kind FQDNs have, and one Spark would read as a number
    // if it inferred the partition's type.
    let hosts = [("fleet-a.example", 300, 20), ("007", 40, 5)];
    let mut expected = BTreeMap::new();
    for (host, connections, udp) in hosts {
        let trace = dir.join(format!("{host}.ptrace"));
        let done = record_with(&trace, &["--host", host], || workload(connections, udp));
        // Into one directory, the second export adding to the first; with parts of 8K,
        // the busier host's rows take several files.
        export_with(
            &trace,
            &[
                "--format",
                "parquet",
                "--output-dir",
                fleet.to_str().unwrap(),
                "--max-file-size",
                "8K",
            ],
        );
        let jsonl = dir.join(format!("{host}.jsonl"));
        export_with(
            &trace,
            &["--format", "jsonl", "--output", jsonl.to_str().unwrap()],
        );
        let lifetimes: Vec<Value> = std::fs::read_to_string(&jsonl)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["type"] == "lifetime")
            .collect();
        assert!(lifetimes.iter().all(|l| l["host"] == host));
        let mine = lifetimes
            .iter()
            .filter(|l| l["pid"] == std::process::id())
            .count() as u64;
        assert_eq!(
            mine, done.lifetimes,
            "{host}: the workload's lifetimes in JSONL"
        );
        expected.insert(host.to_string(), (lifetimes.len() as u64, mine));
    }
    let parts = files(&fleet);
    let busier = parts
        .iter()
        .filter(|f| f.starts_with("host=fleet-a.example"))
        .count();
    assert!(busier >= 3, "{parts:?}");
    let last_day = utc_today();

    // Only closed parts, visible, private; none left hidden.
    for f in files(&fleet) {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with("part-") && name.ends_with(".parquet"),
            "{}",
            f.display()
        );
        let host = f.iter().next().unwrap().to_str().unwrap();
        assert!(
            ["host=fleet-a.example", "host=007"].contains(&host),
            "{}",
            f.display()
        );
        let mode = std::fs::metadata(fleet.join(&f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", f.display());
    }

    let scratch = dir.join("spark");
    std::fs::create_dir_all(&scratch).unwrap();
    let out = python(
        READ_FLEET,
        &[
            fleet.to_str().unwrap(),
            &std::process::id().to_string(),
            scratch.to_str().unwrap(),
        ],
    );
    let read: Value =
        serde_json::from_str(out.lines().last().unwrap()).unwrap_or_else(|e| panic!("{e}: {out}"));
    eprintln!(
        "{}\n{}\n{}",
        fleet.display(),
        read["duckdb_shown"].as_str().unwrap(),
        read["spark_shown"].as_str().unwrap()
    );
    for reader in ["duckdb", "spark"] {
        let counts = read[reader].as_object().unwrap();
        assert_eq!(counts.len(), 2, "{reader}: two hosts: {counts:?}");
        for (host, (rows, mine)) in &expected {
            let c = &counts[host];
            assert_eq!(c["rows"], *rows, "{reader}, {host}: every lifetime");
            assert_eq!(c["mine"], *mine, "{reader}, {host}: the workload's");
        }
    }
    // The partition columns' types: text hosts (none made a number), dates.
    assert_eq!(read["duckdb_types"]["host"], "VARCHAR");
    assert_eq!(read["duckdb_types"]["date"], "DATE");
    assert_eq!(read["spark_types"]["host"], "string");
    for (host, c) in read["duckdb"].as_object().unwrap() {
        for date in c["dates"].as_array().unwrap() {
            assert!(
                date == first_day.as_str() || date == last_day.as_str(),
                "{host}: {date} is not the UTC day of the recording"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
