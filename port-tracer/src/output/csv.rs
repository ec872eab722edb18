//! CSV: one row per lifetime, the JSONL lifetime field names as columns (RFC 4180 quoting).

use std::{
    fmt::Write as _,
    io::{self, Write},
};

use super::{
    columns::{Row, Value, LIFETIME_COLUMNS},
    Printer, RunInfo, Spec,
};
use crate::{
    cgroups::{Cgroups, Lookup},
    event::Event,
    lifetime::Lifetime,
    summary::Summary,
};

pub const SPEC: Spec = Spec {
    name: "csv",
    help: "CSV: one row per lifetime, the JSONL lifetime fields as columns",
    binary: false,
    for_tools: true,
    printer: |out, _, cgroups| Box::new(Csv::new(out).with_cgroups(cgroups)),
    partitioned: None,
};

pub struct Csv<W: Write> {
    out: W,
    header_done: bool,
    cgroups: Lookup,
    run: RunInfo,
}

impl<W: Write> Csv<W> {
    pub fn new(out: W) -> Self {
        Csv {
            out,
            header_done: false,
            cgroups: Lookup::default(),
            run: RunInfo::default(),
        }
    }

    /// Owners' cgroups named from `cgroups`.
    pub fn with_cgroups(mut self, cgroups: Cgroups) -> Self {
        self.cgroups = Lookup::new(cgroups);
        self
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.header_done {
            self.header_done = true;
            writeln!(self.out, "{}", csv_header())?;
        }
        Ok(())
    }
}

impl<W: Write> Printer for Csv<W> {
    fn set_run(&mut self, run: &RunInfo) {
        self.run = run.clone();
    }

    /// Events are in the lifetimes' rows.
    fn event(&mut self, _: &Event) -> io::Result<()> {
        Ok(())
    }

    fn lifetime(&mut self, lt: &Lifetime) -> io::Result<()> {
        self.header()?;
        let cgroup = self.cgroups.get(lt.owner.cgroup_id);
        let row = Row {
            lt,
            cgroup: cgroup.as_deref(),
            run: &self.run,
        };
        self.out.write_all(csv_row(&row).as_bytes())
    }

    /// No summary record: an empty run still gets its header.
    fn summary(&mut self, _: &Summary) -> io::Result<()> {
        self.header()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The CSV header line: the lifetime table's column names.
pub fn csv_header() -> String {
    let names: Vec<&str> = LIFETIME_COLUMNS.iter().map(|c| c.name).collect();
    names.join(",")
}

/// A CSV field: quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// One CSV row (with its line break) for a lifetime; unknown values are empty fields.
pub fn csv_row(r: &Row<'_>) -> String {
    let mut row = String::new();
    for (i, column) in LIFETIME_COLUMNS.iter().enumerate() {
        if i > 0 {
            row.push(',');
        }
        match (column.value)(r) {
            Value::Text(s) => row.push_str(&csv_field(&s)),
            Value::Uint(v) => {
                let _ = write!(row, "{v}");
            }
            Value::Null => {}
            Value::Bool(b) => {
                let _ = write!(row, "{b}");
            }
        }
    }
    row.push('\n');
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::lifetime as lt;

    #[test]
    fn csv_rows_have_the_header_columns_and_quote_what_needs_it() {
        let row = csv_row(&Row::of(&lt()));
        assert_eq!(
            row,
            "tcp,ipv4,127.0.0.1,40000,127.0.0.1,80,7,9,10,0,8,\"a,\"\"b\",w 1,0,,,,,,,,connect,0x10,1000,5000,4000,3000,2000,1500,false,,\n"
        );
        // The host and boot, when known, end the row.
        let run = RunInfo {
            host: Some("web-1".into()),
            boot_id: Some("4f0c2e6a-6d1b-4c8e-9a57-1f2b3c4d5e6f".into()),
            started_ns: None,
        };
        let one = lt();
        let row = csv_row(&Row {
            run: &run,
            ..Row::of(&one)
        });
        assert!(
            row.ends_with(",false,web-1,4f0c2e6a-6d1b-4c8e-9a57-1f2b3c4d5e6f\n"),
            "{row}"
        );
        assert_eq!(
            csv_header(),
            "proto,family,laddr,lport,raddr,rport,netns,pid,tid,uid,ppid,comm,thread,cgroup_id,cgroup,container_id,pod_uid,unit,container_name,pod_name,pod_namespace,origin,sock_id,assigned_ns,released_ns,duration_ns,time_wait_start_ns,time_wait_ns,alloc_ns,lossy,host,boot_id"
        );
        let mut open = Lifetime {
            released: None,
            alloc_ns: None,
            ..lt()
        };
        open.owner.ppid = None;
        assert!(csv_row(&Row::of(&open)).contains(",1000,,,3000,,,false"));
        assert!(
            csv_row(&Row::of(&open)).contains(",10,0,,\"a,"),
            "no parent: an empty field"
        );
    }
}
