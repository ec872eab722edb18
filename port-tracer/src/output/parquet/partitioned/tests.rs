use std::os::unix::fs::PermissionsExt;

use ::parquet::file::reader::{FileReader, SerializedFileReader};

use super::*;
use crate::{
    analysis::Span,
    event::Task,
    lifetime::{time, Counters},
    summary::{Lost, Stats},
    testing::ends,
};

const SEC: u64 = 1_000_000_000;

/// A fresh directory for test `name` (not made: the printer makes DIR).
fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "port-tracer-partitions-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The clock of a trace whose monotonic 0 was `wall_s` seconds after the epoch.
fn clock(wall_s: u64) -> WallClock {
    WallClock {
        offset_ns: i128::from(wall_s) * i128::from(SEC),
    }
}

fn printer(dir: &Path, max_file_size: u64, clock: WallClock) -> Partitioned {
    let p = Partitioning {
        dir: dir.to_path_buf(),
        max_file_size,
    };
    Partitioned::open(&p, clock, Cgroups::recorded()).unwrap()
}

fn run(host: Option<&str>, started_ns: u64) -> RunInfo {
    RunInfo {
        host: host.map(String::from),
        boot_id: None,
        started_ns: Some(started_ns),
    }
}

/// A connect's lifetime of port `lport`, from `from` to `to` (monotonic ns).
fn lifetime(lport: u16, from: u64, to: u64) -> Lifetime {
    Lifetime {
        assigned: time(from),
        released: time(to),
        ..Lifetime::new(
            ends(lport),
            Task::default(),
            Origin::Connect,
            u64::from(lport),
        )
    }
}

fn end(p: &mut Partitioned) -> io::Result<()> {
    let summary = Summary::new(
        &Stats::new(0),
        &Counters::default(),
        Lost::default(),
        Span::default(),
        10,
    );
    p.summary(&summary)
}

/// Every file under `dir` (not directories), relative to it, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Rows of the Parquet file at `path`, and the `host` of each.
fn rows(path: &Path) -> Vec<Option<String>> {
    let r = SerializedFileReader::new(File::open(path).unwrap()).expect("a Parquet file");
    r.get_row_iter(None)
        .unwrap()
        .map(|row| {
            let row = row.unwrap();
            row.get_column_iter()
                .find(|(n, _)| n.as_str() == "host")
                .and_then(|(_, f)| match f {
                    ::parquet::record::Field::Str(s) => Some(s.clone()),
                    _ => None,
                })
        })
        .collect()
}

/// A partition value as Spark reads it back (`unescapePathName`): `%XX` is the character XX.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '%' {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(char::from(b));
                chars.nth(1);
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[test]
fn hostile_host_names_stay_one_directory_of_their_own_value() {
    for (host, dir) in [
        ("web-1.example.com", "host=web-1.example.com"),
        ("../../etc", "host=..%2F..%2Fetc"),
        ("..", "host=.."),
        ("x=y/z", "host=x%3Dy%2Fz"),
        ("50%", "host=50%25"),
        ("%2F", "host=%252F"),
        ("a\nb\0c\x7f", "host=a%0Ab%00c%7F"),
        (
            "back\\slash:*?\"'#{[]^",
            "host=back%5Cslash%3A%2A%3F%22%27%23%7B%5B%5D%5E",
        ),
        ("ünï café", "host=ünï café"),
        // Hive's null partition is the null host only.
        (
            "__HIVE_DEFAULT_PARTITION__",
            "host=%5F_HIVE_DEFAULT_PARTITION__",
        ),
    ] {
        let got = host_dir(Some(host)).unwrap();
        assert_eq!(got, dir, "{host:?}");
        let value = got.strip_prefix("host=").unwrap();
        assert!(!value.contains(['/', '=', '\0']), "{got:?}");
        assert_eq!(unescape(value), host, "read back as it was");
    }
    for none in [None, Some("")] {
        assert_eq!(host_dir(none).unwrap(), "host=__HIVE_DEFAULT_PARTITION__");
    }
    // As long as a directory's name can be once escaped, and no longer.
    assert!(host_dir(Some(&"a".repeat(250))).is_ok());
    let e = host_dir(Some(&"a".repeat(251))).unwrap_err();
    assert!(e.contains("too long") && e.contains("--host NAME"), "{e}");
    let e = host_dir(Some(&"/\n".repeat(42))).unwrap_err();
    assert!(e.contains("252 bytes escaped") && e.contains("\\n"), "{e}");
}

#[test]
fn a_hostile_recorded_host_writes_under_dir_only() {
    let dir = temp("hostile");
    let mut p = printer(&dir, DEFAULT_MAX_FILE_SIZE, clock(1_798_761_599));
    p.set_run(&run(Some("../../x=y/z"), 1));
    p.lifetime(&lifetime(40000, 2, 3)).unwrap();
    end(&mut p).unwrap();
    drop(p);
    assert_eq!(
        files(&dir),
        ["host=..%2F..%2Fx%3Dy%2Fz/date=2026-12-31/part-0.parquet"]
    );
    let part = dir.join("host=..%2F..%2Fx%3Dy%2Fz/date=2026-12-31/part-0.parquet");
    assert_eq!(
        rows(&part),
        [Some("../../x=y/z".to_string())],
        "the row's own host"
    );

    // No host known: the null partition, and a null column.
    let mut p = printer(&dir, DEFAULT_MAX_FILE_SIZE, clock(1_798_761_599));
    p.set_run(&run(None, 1));
    p.lifetime(&lifetime(40000, 2, 3)).unwrap();
    end(&mut p).unwrap();
    let part = dir.join("host=__HIVE_DEFAULT_PARTITION__/date=2026-12-31/part-0.parquet");
    assert_eq!(rows(&part), [None]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dates_are_utc_days() {
    let s = |secs: i128| secs * i128::from(SEC);
    assert_eq!(utc_date(0), "1970-01-01");
    assert_eq!(utc_date(-1), "1969-12-31");
    assert_eq!(utc_date(s(1_709_208_000)), "2024-02-29");
    assert_eq!(utc_date(s(951_868_800)), "2000-03-01");
    assert_eq!(utc_date(s(4_107_456_000)), "2100-02-28");
    assert_eq!(utc_date(s(1_798_761_600) - 1), "2026-12-31");
    assert_eq!(utc_date(s(1_798_761_600)), "2027-01-01");
}

#[test]
fn a_lifetime_crossing_midnight_utc_is_dated_by_its_start() {
    // Monotonic 0 is 2026-12-31 23:59:00 UTC; tracing started then.
    let clock = clock(1_798_761_540);
    let run = run(Some("h"), SEC);
    let before = lifetime(40000, 59 * SEC + SEC / 2, 61 * SEC);
    assert_eq!(date_dir(&before, &run, &clock), "date=2026-12-31");
    let after = lifetime(40001, 60 * SEC, 61 * SEC);
    assert_eq!(date_dir(&after, &run, &clock), "date=2027-01-01");
    // Held when tracing started and released after midnight: the day tracing started.
    let held = Lifetime {
        released: time(90 * SEC),
        ..Lifetime::new(ends(8080), Task::default(), Origin::Preexisting, 0)
    };
    assert_eq!(date_dir(&held, &run, &clock), "date=2026-12-31");
    // Its assignment not seen (events lost): its TIME_WAIT, else its release.
    let unseen = Lifetime {
        time_wait_start: time(70 * SEC),
        released: time(90 * SEC),
        ..Lifetime::new(ends(40002), Task::default(), Origin::Unknown, 1)
    };
    assert_eq!(date_dir(&unseen, &run, &clock), "date=2027-01-01");
    // Nothing known at all: the null partition.
    let nothing = Lifetime::new(ends(40003), Task::default(), Origin::Preexisting, 0);
    let unknown_start = RunInfo {
        started_ns: None,
        ..run.clone()
    };
    assert_eq!(
        date_dir(&nothing, &unknown_start, &clock),
        "date=__HIVE_DEFAULT_PARTITION__"
    );
    assert_eq!(date_dir(&nothing, &run, &clock), "date=2026-12-31");

    // Written: one part per day, ending in the other day's order.
    let dir = temp("midnight");
    let mut p = printer(&dir, DEFAULT_MAX_FILE_SIZE, clock);
    p.set_run(&run);
    for lt in [&after, &before, &held, &unseen] {
        p.lifetime(lt).unwrap();
    }
    end(&mut p).unwrap();
    assert_eq!(
        files(&dir),
        [
            "host=h/date=2026-12-31/part-0.parquet",
            "host=h/date=2027-01-01/part-0.parquet"
        ]
    );
    assert_eq!(
        rows(&dir.join("host=h/date=2026-12-31/part-0.parquet")).len(),
        2
    );
    assert_eq!(
        rows(&dir.join("host=h/date=2027-01-01/part-0.parquet")).len(),
        2
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn parts_rotate_by_size() {
    let dir = temp("rotate");
    let max = 16 << 10;
    let mut p = printer(&dir, max, clock(1_798_000_000));
    p.set_run(&run(Some("h"), 1));
    let n = 3_000;
    for i in 0..n {
        p.lifetime(&lifetime(i as u16, 10 + i, 20 + i)).unwrap();
    }
    end(&mut p).unwrap();
    let parts = files(&dir);
    assert!(parts.len() >= 4, "{parts:?}");
    let mut total = 0;
    for (i, part) in parts.iter().enumerate() {
        assert!(
            part.starts_with("host=h/date=2026-12-2") && part.ends_with(".parquet"),
            "{part}"
        );
        let path = dir.join(part);
        total += rows(&path).len();
        let size = std::fs::metadata(&path).unwrap().len();
        // Each ends once its estimate reaches the size: about it, never far over.
        assert!(size <= max + max / 2, "{part}: {size} bytes");
        if i + 1 < parts.len() {
            assert!(size >= max / 3, "{part}: {size} bytes");
        }
    }
    assert_eq!(total, n as usize, "every row in one part or another");
    std::fs::remove_dir_all(&dir).unwrap();

    let mut model = SizeModel::default();
    let t = |written, written_raw, buffered_raw| TableSizes {
        written,
        written_raw,
        buffered_raw,
        rows: 0,
    };
    assert_eq!(model.estimate(t(0, 0, 1_000)), 1_000, "1:1 before any file");
    assert_eq!(
        model.estimate(t(100, 1_000, 1_000)),
        200,
        "its own row groups"
    );
    model.closed(500, 10_000);
    assert_eq!(model.estimate(t(0, 0, 1_000)), 50, "the last file closed");
    model.closed(300, 1_000);
    assert_eq!(model.estimate(t(100, 1_000, 1_000)), 400);
}

#[test]
fn parts_appear_only_once_the_export_ends() {
    let dir = temp("hidden");
    let mut p = printer(&dir, 4 << 10, clock(1_798_000_000)).with_row_group_rows(16);
    p.set_run(&run(Some("h"), 1));
    for i in 0..500 {
        p.lifetime(&lifetime(i, 10, 20)).unwrap();
    }
    let during = files(&dir);
    assert!(during.len() >= 2, "{during:?}");
    for f in &during {
        let name = f.rsplit('/').next().unwrap();
        assert!(
            name.starts_with(".part-") && name.ends_with(".parquet.tmp"),
            "hidden while written: {during:?}"
        );
    }
    end(&mut p).unwrap();
    let after = files(&dir);
    assert_eq!(after.len(), during.len());
    for f in &after {
        let name = f.rsplit('/').next().unwrap();
        assert!(
            name.starts_with("part-") && name.ends_with(".parquet"),
            "{after:?}"
        );
    }
    // Private, whatever the umask: DIR made 0700, what is under it 0700 and 0600.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("host=h")), 0o700);
    assert_eq!(mode(&dir.join(&after[0])), 0o600);
    // Ended twice (summary, then a flush): nothing more happens.
    end(&mut p).unwrap();
    drop(p);
    assert_eq!(files(&dir), after);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_export_that_does_not_end_leaves_nothing() {
    let dir = temp("abandoned");
    let mut p = printer(&dir, 4 << 10, clock(1_798_000_000)).with_row_group_rows(16);
    p.set_run(&run(Some("h"), 1));
    for i in 0..300 {
        p.lifetime(&lifetime(i, 10, 20)).unwrap();
    }
    assert!(files(&dir).len() >= 2);
    // An error stops the replay before the summary; the printer is dropped.
    drop(p);
    assert_eq!(files(&dir), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn parts_never_replace_files_already_there() {
    let dir = temp("numbers");
    let day = dir.join("host=h/date=2026-12-23");
    std::fs::create_dir_all(&day).unwrap();
    for (name, text) in [
        ("part-0.parquet", "keep 0"),
        ("part-7.parquet", "keep 7"),
        // Left by an export that was killed.
        (".part-8.parquet.tmp", "keep 8"),
        ("notes.txt", "keep"),
    ] {
        std::fs::write(day.join(name), text).unwrap();
    }
    let export = |lport: u16, meanwhile: &dyn Fn()| {
        let mut p = printer(&dir, DEFAULT_MAX_FILE_SIZE, clock(1_798_000_000));
        p.set_run(&run(Some("h"), 1));
        p.lifetime(&lifetime(lport, 10, 20)).unwrap();
        meanwhile();
        end(&mut p).unwrap();
    };
    export(1, &|| ());
    export(2, &|| ());
    // Another writer takes the number being written meanwhile: the next one free.
    export(3, &|| {
        std::fs::write(day.join("part-11.parquet"), "keep 11").unwrap()
    });
    assert_eq!(
        files(&dir),
        [
            "host=h/date=2026-12-23/.part-8.parquet.tmp",
            "host=h/date=2026-12-23/notes.txt",
            "host=h/date=2026-12-23/part-0.parquet",
            "host=h/date=2026-12-23/part-10.parquet",
            "host=h/date=2026-12-23/part-11.parquet",
            "host=h/date=2026-12-23/part-12.parquet",
            "host=h/date=2026-12-23/part-7.parquet",
            "host=h/date=2026-12-23/part-9.parquet",
        ]
    );
    for (name, text) in [
        ("part-0.parquet", "keep 0"),
        ("part-7.parquet", "keep 7"),
        (".part-8.parquet.tmp", "keep 8"),
        ("part-11.parquet", "keep 11"),
    ] {
        assert_eq!(std::fs::read_to_string(day.join(name)).unwrap(), text);
    }
    assert_eq!(rows(&day.join("part-12.parquet")).len(), 1);
    assert_eq!(part_number("part-12.parquet"), Some(12));
    assert_eq!(part_number(".part-3.parquet.tmp"), Some(3));
    for other in [
        "part-.parquet",
        "part-1a.parquet",
        "xpart-1.parquet",
        "part-1.parquet.tmp",
    ] {
        assert_eq!(part_number(other), None, "{other}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn links_under_dir_are_not_followed() {
    let dir = temp("links");
    let elsewhere = temp("links-target");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("host=h")).unwrap();
    let mut p = printer(&dir, DEFAULT_MAX_FILE_SIZE, clock(1_798_000_000));
    p.set_run(&run(Some("h"), 1));
    let e = p.lifetime(&lifetime(1, 10, 20)).unwrap_err().to_string();
    assert!(e.contains("host=h: a symbolic link: not followed"), "{e}");
    drop(p);
    assert!(files(&elsewhere).is_empty());

    // A date directory that is a file, or a link.
    std::fs::remove_file(dir.join("host=h")).unwrap();
    std::fs::create_dir(dir.join("host=h")).unwrap();
    std::fs::write(dir.join("host=h/date=2026-12-23"), "").unwrap();
    let mut p = printer(&dir, DEFAULT_MAX_FILE_SIZE, clock(1_798_000_000));
    p.set_run(&run(Some("h"), 1));
    let e = p.lifetime(&lifetime(1, 10, 20)).unwrap_err().to_string();
    assert!(e.contains("date=2026-12-23: not a directory"), "{e}");

    // DIR itself: a link, or a file.
    let link = temp("links-dir");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let open = |d: &Path| {
        let p = Partitioning {
            dir: d.to_path_buf(),
            max_file_size: 1,
        };
        Partitioned::open(&p, clock(0), Cgroups::recorded()).map(|_| ())
    };
    let e = open(&link).unwrap_err().to_string();
    assert!(e.contains("is a symbolic link: not followed"), "{e}");
    let e = open(&dir.join("host=h/date=2026-12-23"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not a directory"), "{e}");
    let e = open(&dir.join("missing/below")).unwrap_err().to_string();
    assert!(e.contains("cannot create output directory"), "{e}");
    for d in [&dir, &elsewhere, &link] {
        let _ = std::fs::remove_dir_all(d);
        let _ = std::fs::remove_file(d);
    }
}

#[test]
fn a_set_group_id_dir_shares_reading_with_its_group_only() {
    assert_eq!(
        Modes::under(0o755),
        Modes {
            dir: 0o700,
            file: 0o600
        },
        "a plain directory: private"
    );
    assert_eq!(Modes::under(0o700), Modes::under(0o777));
    for shared in [0o2750, 0o2770, 0o2777] {
        assert_eq!(
            Modes::under(shared),
            Modes {
                dir: 0o2750,
                file: 0o640
            },
            "{shared:o}: read, never write"
        );
    }
    assert_eq!(Modes::under(0o2710).file, 0o600);

    let dir = temp("shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2750)).unwrap();
    let mut p = printer(&dir, DEFAULT_MAX_FILE_SIZE, clock(1_798_000_000));
    p.set_run(&run(Some("h"), 1));
    p.lifetime(&lifetime(1, 10, 20)).unwrap();
    end(&mut p).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dir.join("host=h")), 0o2750);
    assert_eq!(mode(&dir.join("host=h/date=2026-12-23")), 0o2750);
    assert_eq!(
        mode(&dir.join("host=h/date=2026-12-23/part-0.parquet")),
        0o640
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn more_dates_than_parts_open_close_the_least_recent() {
    let dir = temp("dates");
    let day = 86_400 * SEC;
    let mut p = printer(&dir, DEFAULT_MAX_FILE_SIZE, clock(1_798_000_000)).with_max_open(1);
    p.set_run(&run(Some("h"), 1));
    for (i, start) in [0, day, 0, 0].into_iter().enumerate() {
        p.lifetime(&lifetime(i as u16, start + 1, start + 2))
            .unwrap();
    }
    end(&mut p).unwrap();
    let parts = files(&dir);
    assert_eq!(
        parts,
        [
            "host=h/date=2026-12-23/part-0.parquet",
            "host=h/date=2026-12-23/part-1.parquet",
            "host=h/date=2026-12-24/part-0.parquet"
        ]
    );
    let counts: Vec<usize> = parts.iter().map(|f| rows(&dir.join(f)).len()).collect();
    assert_eq!(counts, [1, 2, 1]);
    std::fs::remove_dir_all(&dir).unwrap();
}
