use std::path::PathBuf;

use ratatui::{backend::TestBackend, Terminal};

use super::{
    draw::{bar, draw, sparkline},
    state::{Action, Grouping, Input, Sort, Ui},
    view::{Owner, View},
    *,
};
use crate::{
    cgroups::Cgroups, rebuild::RebuildConfig, replay::replay_with, trace_file::TraceReader,
};

const CONTAINER: &str = "4f2c1b0a9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a291807f6e5d4c3b2a19080";
const POD: &str = "0b8c7f8e-2f3a-4c9e-9d1a-5e6f7a8b9c0d";

fn owner(pid: u32, comm: &str, allocations: u64) -> Owner {
    Owner {
        pid,
        comm: comm.into(),
        cgroup_id: 1,
        allocations,
        ..Owner::default()
    }
}

fn in_pod(mut o: Owner) -> Owner {
    o.cgroup_id = 7;
    o.container_id = Some(CONTAINER.into());
    o.container_name = Some("web".into());
    o.pod_uid = Some(POD.into());
    o.pod_name = Some("web-0".into());
    o.pod_namespace = Some("shop".into());
    o
}

fn in_unit(mut o: Owner) -> Owner {
    o.cgroup_id = 9;
    o.unit = Some("nginx.service".into());
    o
}

fn view(elapsed_s: f64, owners: Vec<Owner>) -> View {
    View {
        elapsed_s,
        now_ns: (elapsed_s * 1e9) as u64,
        allocations: owners.iter().map(|o| o.allocations).sum(),
        events: owners.iter().map(|o| o.allocations * 2).sum(),
        owners,
        ..View::default()
    }
}

fn names(ui: &Ui) -> Vec<(&str, u64)> {
    ui.rows()
        .iter()
        .map(|r| (r.name.as_str(), r.allocations))
        .collect()
}

/// Two processes of one container in a pod, one host service, one of neither.
fn busy_ui() -> Ui {
    let mut ui = Ui::new(Grouping::Process);
    ui.update(view(
        1.0,
        vec![
            in_pod(owner(10, "api", 100)),
            in_pod(owner(11, "worker", 20)),
            in_unit(owner(20, "nginx", 50)),
            owner(30, "curl", 5),
        ],
    ));
    ui
}

#[test]
fn owners_group_by_process_container_and_pod() {
    let mut ui = busy_ui();
    assert_eq!(
        names(&ui),
        [
            ("10 api", 100),
            ("20 nginx", 50),
            ("11 worker", 20),
            ("30 curl", 5)
        ]
    );
    assert_eq!(ui.rows()[0].detail, "4f2c1b0a9e8d web pod=shop/web-0");
    assert_eq!(ui.key(Input::Char('g')), Action::Redraw);
    assert_eq!(ui.grouping, Grouping::Container);
    assert_eq!(
        names(&ui),
        [
            ("4f2c1b0a9e8d web", 120),
            ("nginx.service", 50),
            ("(no container or unit)", 5)
        ]
    );
    assert_eq!(ui.rows()[0].processes, 2);
    assert_eq!(ui.rows()[0].detail, "shop/web-0");
    ui.key(Input::Char('g'));
    assert_eq!(ui.grouping, Grouping::Pod);
    assert_eq!(names(&ui), [("shop/web-0", 120), ("(not in a pod)", 55)]);
    ui.key(Input::Char('g'));
    assert_eq!(ui.grouping, Grouping::Process);
}

#[test]
fn rates_and_sparklines_come_from_successive_views() {
    let mut ui = Ui::new(Grouping::Process);
    // The first view's rate is since the start.
    ui.update(view(2.0, vec![owner(1, "a", 10), owner(2, "b", 4)]));
    assert_eq!(ui.rows()[0].per_second, Some(5.0));
    ui.update(view(4.0, vec![owner(1, "a", 12), owner(2, "b", 24)]));
    // Sorted by rate: b made 20 in 2 s, a 2.
    assert_eq!(names(&ui), [("2 b", 24), ("1 a", 12)]);
    assert_eq!(ui.rows()[0].per_second, Some(10.0));
    assert_eq!(ui.rows()[1].per_second, Some(1.0));
    assert_eq!(ui.rows()[0].history, [4, 20]);
    assert_eq!(ui.events_per_second(), Some(22.0));
    // A history no longer than the sparkline.
    for i in 0..100u32 {
        ui.update(view(
            5.0 + f64::from(i),
            vec![owner(1, "a", 13 + u64::from(i))],
        ));
    }
    assert_eq!(ui.rows()[0].history.len(), state::HISTORY);
    assert!(ui.rows()[0].history.iter().all(|&n| n == 1));
}

#[test]
fn sort_cycles_through_rate_total_and_name() {
    let mut ui = Ui::new(Grouping::Process);
    ui.update(view(1.0, vec![owner(1, "zeta", 50), owner(2, "alpha", 10)]));
    ui.update(view(2.0, vec![owner(1, "zeta", 51), owner(2, "alpha", 30)]));
    assert_eq!(ui.sort, Sort::Rate);
    assert_eq!(names(&ui), [("2 alpha", 30), ("1 zeta", 51)]);
    ui.key(Input::Char('s'));
    assert_eq!(ui.sort, Sort::Total);
    assert_eq!(names(&ui), [("1 zeta", 51), ("2 alpha", 30)]);
    ui.key(Input::Char('s'));
    assert_eq!(ui.sort, Sort::Name);
    assert_eq!(names(&ui), [("1 zeta", 51), ("2 alpha", 30)]);
    ui.key(Input::Char('s'));
    assert_eq!(ui.sort, Sort::Rate);
}

#[test]
fn a_filter_typed_after_slash_is_kept_by_enter_and_dropped_by_esc() {
    let mut ui = busy_ui();
    ui.key(Input::Char('/'));
    for c in "WEB".chars() {
        ui.key(Input::Char(c));
    }
    // Applied while typing, any case, to the name or the detail; `q` is text here.
    assert_eq!(names(&ui), [("10 api", 100), ("11 worker", 20)]);
    assert_eq!(ui.key(Input::Char('q')), Action::Redraw);
    assert_eq!(ui.editing.as_deref(), Some("WEBq"));
    assert_eq!(names(&ui), []);
    ui.key(Input::Backspace);
    ui.key(Input::Enter);
    assert_eq!(ui.filter, "WEB");
    assert_eq!(ui.editing, None);
    assert_eq!(names(&ui), [("10 api", 100), ("11 worker", 20)]);
    // Kept across refreshes and groupings.
    ui.key(Input::Char('g'));
    assert_eq!(names(&ui), [("4f2c1b0a9e8d web", 120)]);
    // Esc drops the edit, not the filter in force.
    ui.key(Input::Char('/'));
    ui.key(Input::Backspace);
    ui.key(Input::Backspace);
    ui.key(Input::Backspace);
    assert_eq!(names(&ui).len(), 3);
    ui.key(Input::Esc);
    assert_eq!(ui.filter, "WEB");
    assert_eq!(names(&ui), [("4f2c1b0a9e8d web", 120)]);
}

#[test]
fn selection_moves_within_the_rows() {
    let mut ui = busy_ui();
    assert_eq!(ui.selected, 0);
    ui.key(Input::Up);
    assert_eq!(ui.selected, 0);
    ui.key(Input::Down);
    ui.key(Input::Down);
    assert_eq!(ui.selected, 2);
    ui.key(Input::End);
    assert_eq!(ui.selected, 3);
    ui.key(Input::Down);
    assert_eq!(ui.selected, 3);
    ui.page = 2;
    ui.key(Input::PageUp);
    assert_eq!(ui.selected, 1);
    ui.key(Input::PageDown);
    ui.key(Input::PageDown);
    assert_eq!(ui.selected, 3);
    ui.key(Input::Home);
    assert_eq!(ui.selected, 0);
    // Fewer rows (a new grouping): the selection stays on one.
    ui.key(Input::End);
    ui.key(Input::Char('g'));
    ui.key(Input::End);
    ui.key(Input::Char('g'));
    assert_eq!(ui.rows().len(), 2);
    assert!(ui.selected < 2);
}

#[test]
fn q_esc_and_ctrl_c_quit() {
    for key in [Input::Char('q'), Input::Esc, Input::Interrupt] {
        assert_eq!(busy_ui().key(key), Action::Quit);
    }
    let mut ui = busy_ui();
    ui.key(Input::Char('/'));
    assert_eq!(ui.key(Input::Interrupt), Action::Quit);
    assert_eq!(ui.key(Input::Char('x')), Action::Redraw);
    assert_eq!(busy_ui().key(Input::Char('x')), Action::Nothing);
}

#[test]
fn bars_and_sparklines() {
    assert_eq!(bar(Some(0.0)), "░".repeat(20));
    assert_eq!(bar(Some(0.001)), format!("█{}", "░".repeat(19)));
    assert_eq!(
        bar(Some(0.5)),
        format!("{}{}", "█".repeat(10), "░".repeat(10))
    );
    assert_eq!(bar(Some(1.5)), "█".repeat(20));
    assert_eq!(bar(None), " ".repeat(20));
    assert_eq!(sparkline(&[0, 1, 7, 14]), " ▁▄█");
    assert_eq!(sparkline(&[]), "");
}

/// What the screen shows, line by line.
fn screen(ui: &mut Ui, width: u16, height: u16, title: &str) -> String {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|f| draw(f, ui, title)).unwrap();
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..height {
        let line: String = (0..width).map(|x| buffer[(x, y)].symbol()).collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[test]
fn names_a_process_controls_are_escaped_and_cut_on_screen() {
    let mut ui = Ui::new(Grouping::Process);
    let mut o = in_pod(owner(66, "evil\x1b[2J\x07", 3));
    o.container_name = Some(format!("n\r\n{}", "x".repeat(100)));
    ui.update(view(1.0, vec![o]));
    let shown = screen(&mut ui, 200, 30, "live");
    assert!(shown.contains(r"66 evil\x1b[2J\x07"), "{shown}");
    assert!(!shown.contains('\x1b'));
    let line = shown.lines().find(|l| l.contains("66 evil")).unwrap();
    assert!(line.contains(r"4f2c1b0a9e8d n\r\nxxxx"), "{line}");
    assert!(
        line.contains("..."),
        "a long name is cut, the cut marked: {line}"
    );
    assert!(!line.contains(&"x".repeat(60)), "{line}");
}

/// The recorded fixture traces, built in: the VM guests run these tests without the
/// source tree.
fn fixture(name: &str) -> &'static [u8] {
    match name {
        "tracepoint.ptrace" => include_bytes!("../../tests/fixtures/tracepoint.ptrace"),
        "cgroup.ptrace" => include_bytes!("../../tests/fixtures/cgroup.ptrace"),
        _ => panic!("no fixture {name}"),
    }
}

/// The screen after a recorded trace's first second and at its end, drawn as `top
/// --replay` draws it.
fn replayed_screen(trace: &str) -> (String, Ui) {
    let r = TraceReader::new(fixture(trace)).unwrap();
    let tier = r.meta.tier.clone();
    let cgroups = Cgroups::recorded();
    let mut names = Lookup::new(cgroups.clone());
    let mut ui = Ui::new(Grouping::Process);
    let mut first_view_at = None;
    replay_with(
        r,
        RebuildConfig::default(),
        &mut Discard,
        &cgroups,
        &mut |p| {
            let at = *first_view_at.get_or_insert(p.engine.start_ns() + 1_000_000_000);
            if p.end || p.newest_ns >= at && ui.view.now_ns == 0 {
                let lost = lost_by_reason(&p);
                ui.update(View::of(
                    p.engine,
                    p.newest_ns,
                    Some(&tier),
                    &lost,
                    &mut names,
                ));
            }
            true
        },
    )
    .unwrap();
    (screen(&mut ui, 160, 40, &format!("replay of {trace}")), ui)
}

/// Compares `shown` with the snapshot `want` (built in, as the fixtures are: the VM
/// guests have no source tree), which is `name` under src/top/snapshots;
/// PORT_TRACER_UPDATE_SNAPSHOTS=1 rewrites that file instead (the next build compares).
fn check_snapshot(name: &str, want: &str, shown: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/top/snapshots")
        .join(name);
    if std::env::var_os("PORT_TRACER_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, shown).unwrap();
        return;
    }
    assert_eq!(
        shown,
        want,
        "the screen differs from {} (PORT_TRACER_UPDATE_SNAPSHOTS=1 rewrites it)",
        path.display()
    );
}

#[test]
fn a_recorded_trace_is_drawn_as_its_snapshot() {
    let (shown, ui) = replayed_screen("tracepoint.ptrace");
    // What the trace holds, so a snapshot written wrong cannot pass for right: the
    // workload's main process made 196 allocations, its failures were EADDRINUSE and
    // EADDRNOTAVAIL, and every range it used is in its own namespace.
    assert_eq!(ui.view.allocations, 210);
    assert_eq!(ui.view.failures_total, 6);
    assert!(shown.contains("8178 fixture-main"), "{shown}");
    assert!(
        shown.contains("EADDRNOTAVAIL") && shown.contains("EADDRINUSE"),
        "{shown}"
    );
    assert!(shown.contains("127.0.0.1 -> 127.0.0.1:8080"), "{shown}");
    check_snapshot(
        "tracepoint.txt",
        include_str!("snapshots/tracepoint.txt"),
        &shown,
    );
}

#[test]
fn the_screen_fits_a_small_terminal() {
    let (_, mut ui) = replayed_screen("cgroup.ptrace");
    let shown = screen(&mut ui, 80, 24, "live");
    assert_eq!(shown.lines().count(), 24);
    assert!(shown.lines().last().unwrap().contains("q quit"), "{shown}");
    assert!(shown.contains("Churn by process"), "{shown}");
}
