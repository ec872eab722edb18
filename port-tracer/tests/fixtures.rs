//! Traces recorded by an earlier build report as they did then: each `*.ptrace` of
//! `tests/fixtures` (recorded by 7af1017, trace format version 3, with
//! `fixtures/record-fixtures.sh` on the cgroup and tracepoint tiers) goes through `report`
//! and `export` with the arguments its `*.cases` file lists, and every output must equal,
//! byte for byte, what that build wrote (`fixtures/expected/`), but for the changes made on
//! purpose since, each named with its reason in [`since_7af1017`]. It guards every change of
//! the per-event path (records, decoding, reconstruction, analyses, printers) against
//! changing what a user reads. No root needed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// What changed on purpose since the build that wrote the expected outputs, applied to
/// the expected lines before they are compared; each change says why.
fn since_7af1017(lines: Vec<String>, host: &str) -> Vec<String> {
    let mut uid_column = None;
    lines
        .into_iter()
        .enumerate()
        .map(|(i, line)| {
            // Live tracing's backlog (issue 22) counts the records it drops beside the
            // kernel's lost events: `backlog_full`, 0 in every report.
            if let Some(rest) = line.strip_prefix("  lost events: ") {
                if let Some((total, reasons)) = rest.split_once(" (") {
                    return format!("  lost events: {total} (backlog_full 0, {reasons}");
                }
            }
            if line.starts_with('{') && line.contains("\"type\":\"summary\"") {
                let mut v: serde_json::Value = serde_json::from_str(&line).expect("a summary");
                v["lost"]["backlog_full"] = 0.into();
                // Owners' cgroups named (issue 23): none looked for in a trace without a
                // cgroup table.
                v["cgroups"] = serde_json::json!({"resolved": 0, "unresolved": 0});
                v["churn"]["by_container"] = serde_json::json!([]);
                // The same by container and unit for range occupancy, connect headroom
                // and failures; holders of refused ports and anti-patterns name theirs
                // (issue 23): none here either.
                for g in v["occupancy"].as_array_mut().into_iter().flatten() {
                    g["top_containers_at_peak"] = serde_json::json!([]);
                }
                for d in v["destinations"].as_array_mut().into_iter().flatten() {
                    d["top_containers_at_min"] = serde_json::json!([]);
                }
                v["failures"]["by_container"] = serde_json::json!([]);
                for g in v["failures"]["groups"].as_array_mut().into_iter().flatten() {
                    for h in g["holders"].as_array_mut().into_iter().flatten() {
                        h["container_id"] = serde_json::Value::Null;
                        h["unit"] = serde_json::Value::Null;
                    }
                }
                for f in v["anti_patterns"].as_array_mut().into_iter().flatten() {
                    f["container_id"] = serde_json::Value::Null;
                    f["unit"] = serde_json::Value::Null;
                }
                return v.to_string();
            }
            // Records name the owner's parent process (`ppid`, issue 22), unknown in
            // traces recorded before it was; and its cgroup's path, container, pod and
            // unit (issue 23), which traces before format 5 do not carry.
            if line.starts_with('{') {
                if let Some(at) = line.find("\"uid\":") {
                    let end = at + line[at..].find(',').expect("a field after uid");
                    let line = format!("{},\"ppid\":null{}", &line[..end], &line[end..]);
                    let at = line.find("\"cgroup_id\":").expect("cgroup_id with uid");
                    let end = at + line[at..].find(',').expect("a field after cgroup_id");
                    let line = format!(
                        "{},\"cgroup\":null,\"container_id\":null,\"pod_uid\":null,\"unit\":null,\
                         \"container_name\":null,\"pod_name\":null,\"pod_namespace\":null{}",
                        &line[..end],
                        &line[end..]
                    );
                    // Lifetime rows name the host recorded and its boot (issue 24), which
                    // traces before it do not carry.
                    if line.starts_with("{\"type\":\"lifetime\"") {
                        let open = line.strip_suffix('}').expect("an object");
                        return format!("{open},\"host\":\"{host}\",\"boot_id\":null}}");
                    }
                    return line;
                }
            }
            if i == 0 && line.starts_with("proto,family,") {
                let mut fields = csv_fields(&line);
                let uid = fields
                    .iter()
                    .position(|f| f == "uid")
                    .expect("a uid column");
                uid_column = Some(uid);
                fields.insert(uid + 1, "ppid".into());
                let cgroup_id = fields
                    .iter()
                    .position(|f| f == "cgroup_id")
                    .expect("cgroup_id");
                let names = [
                    "cgroup",
                    "container_id",
                    "pod_uid",
                    "unit",
                    "container_name",
                    "pod_name",
                    "pod_namespace",
                ];
                for (i, name) in names.iter().enumerate() {
                    fields.insert(cgroup_id + 1 + i, name.to_string());
                }
                fields.extend(["host".into(), "boot_id".into()]);
                return fields.join(",");
            }
            if let Some(uid) = uid_column {
                // Rows re-quoted as written: a field with a comma or a quote was quoted.
                let mut fields: Vec<String> = csv_fields(&line)
                    .into_iter()
                    .map(|f| {
                        if f.contains([',', '"']) {
                            format!("\"{}\"", f.replace('"', "\"\""))
                        } else {
                            f
                        }
                    })
                    .collect();
                fields.insert(uid + 1, String::new());
                // cgroup_id is 3 columns after ppid (comm, thread between).
                for _ in 0..7 {
                    fields.insert(uid + 5, String::new());
                }
                fields.extend([host.to_string(), String::new()]);
                return fields.join(",");
            }
            line
        })
        .collect()
}

/// The fields of a CSV line (RFC 4180 quoting).
fn csv_fields(line: &str) -> Vec<String> {
    let (mut fields, mut field, mut quoted, mut chars) =
        (Vec::new(), String::new(), false, line.chars().peekable());
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    fields.push(field);
    fields
}

/// Whether `got` is `expected`: byte for byte, but for JSON summaries (one line of many
/// fields in the map's order), compared as JSON.
fn same_line(expected: &str, got: &str) -> bool {
    if expected == got {
        return true;
    }
    let json = |l: &str| serde_json::from_str::<serde_json::Value>(l).ok();
    expected.contains("\"type\":\"summary\"")
        && json(expected).is_some()
        && json(expected) == json(got)
}

/// Where `expected` and `got` first differ, with the lines around it.
fn first_difference(expected: &[u8], got: &[u8], host: &str) -> Option<String> {
    let (e, g) = (
        String::from_utf8_lossy(expected),
        String::from_utf8_lossy(got),
    );
    let el = since_7af1017(e.lines().map(String::from).collect(), host);
    let gl: Vec<&str> = g.lines().collect();
    if el.len() == gl.len() && el.iter().zip(&gl).all(|(a, b)| same_line(a, b)) {
        return None;
    }
    Some(
        match el.iter().zip(&gl).position(|(a, b)| !same_line(a, b)) {
            Some(i) => format!(
                "line {}:\n  expected: {}\n  got:      {}",
                i + 1,
                el[i],
                gl[i]
            ),
            None => format!("{} lines expected, {} written", el.len(), gl.len()),
        },
    )
}

/// Runs every case of `tier`'s fixture trace; names each output that differs.
fn check_tier(tier: &str) {
    let dir = fixtures();
    let trace = dir.join(format!("{tier}.ptrace"));
    let cases = std::fs::read_to_string(dir.join(format!("{tier}.cases")))
        .unwrap_or_else(|e| panic!("{tier}.cases: {e}"));
    let out_dir = std::env::temp_dir().join(format!("pt-fixtures-{}-{tier}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut failed = Vec::new();
    let mut ran = 0;
    // The hostname the trace recorded: the `host` of its lifetime rows.
    let file = std::fs::File::open(&trace).unwrap();
    let host = port_tracer::trace_file::TraceReader::new(std::io::BufReader::new(file))
        .unwrap()
        .meta
        .host;
    for line in cases.lines().filter(|l| !l.trim().is_empty()) {
        let (name, args) = line.split_once('\t').expect("NAME<TAB>ARGS");
        let mut args = args.split_whitespace();
        let cmd = args.next().expect("report or export");
        let mut c = Command::new(env!("CARGO_BIN_EXE_port-tracer"));
        c.env("TZ", "UTC").arg(cmd).arg(&trace).args(args);
        let out_file = out_dir.join(name);
        if cmd == "export" {
            let _ = std::fs::remove_file(&out_file);
            c.arg("-o").arg(&out_file);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{tier} {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got = if cmd == "export" {
            std::fs::read(&out_file).unwrap()
        } else {
            out.stdout
        };
        let expected = std::fs::read(dir.join("expected").join(format!("{tier}.{name}"))).unwrap();
        if let Some(diff) = first_difference(&expected, &got, &host) {
            failed.push(format!("{tier} {name}: {diff}"));
        }
        ran += 1;
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(ran >= 10, "{tier}: only {ran} cases");
    assert!(failed.is_empty(), "outputs changed:\n{}", failed.join("\n"));
}

#[test]
fn a_cgroup_tier_trace_of_format_3_reports_as_before() {
    check_tier("cgroup");
}

#[test]
fn a_tracepoint_tier_trace_of_format_3_reports_as_before() {
    check_tier("tracepoint");
}
