//! Draws the `top` screen from its state: a health line, the ranges and destinations
//! closest to running out, churn by the chosen grouping, the latest failures, the keys.
//! Names a traced process controls are escaped and cut, as text output does.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Style, Stylize},
    text::Line,
    widgets::{Block, Cell, Paragraph, Row, Table, TableState},
    Frame,
};

use super::{
    state::{Ui, HISTORY},
    view::View,
};
use crate::output::{endpoint, text::name};

/// Rows the ranges and destinations boxes show at most.
const TOP_ROWS: usize = 6;
/// Failures shown at most.
const FAILURE_ROWS: usize = 5;
/// Width of a bar: the ranges', and the narrower destinations'.
const BAR: usize = 20;
const DESTINATION_BAR: usize = 10;

/// Draws the whole screen; `title` ends the health line (the source: live or a replay).
pub fn draw(frame: &mut Frame, ui: &mut Ui, title: &str) {
    let area = frame.area();
    let view = &ui.view;
    let top_rows = view
        .ranges
        .len()
        .max(view.destinations.len())
        .clamp(1, TOP_ROWS) as u16;
    let failure_rows = view.failures.len().clamp(1, FAILURE_ROWS) as u16;
    let [health, upper, churn, failures, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(top_rows + 3),
        Constraint::Min(5),
        Constraint::Length(failure_rows + 3),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(health_line(ui, title)), health);
    let [ranges, destinations] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(upper);
    draw_ranges(frame, &ui.view, ranges);
    draw_destinations(frame, &ui.view, destinations);
    draw_churn(frame, ui, churn);
    draw_failures(frame, &ui.view, failures);
    frame.render_widget(Paragraph::new(keys_line(ui)), keys);
}

fn health_line(ui: &Ui, title: &str) -> Line<'static> {
    let v = &ui.view;
    let rate = ui
        .events_per_second()
        .map(|r| format!(" ({}/s)", thousands(r.round() as u64)))
        .unwrap_or_default();
    let lost = v.lost_total();
    let lost_text = if lost == 0 {
        "lost 0".to_string()
    } else {
        let reasons: Vec<String> = v
            .lost
            .iter()
            .filter(|l| l.events > 0)
            .map(|l| format!("{} {}", l.reason, thousands(l.events)))
            .collect();
        format!("LOST {} ({})", thousands(lost), reasons.join(", "))
    };
    let tw = v
        .time_wait_share
        .map(|s| format!("{:.1}%", s * 100.0))
        .unwrap_or_else(|| "-".into());
    let text = format!(
        " port-tracer top | {} | tier {} | up {} | events {}{rate} | {lost_text} | sockets {}, TIME_WAIT {} ({tw})",
        title,
        v.tier.as_deref().unwrap_or("?"),
        seconds(v.elapsed_s),
        thousands(v.events),
        thousands(v.sockets),
        thousands(v.time_wait),
    );
    let line = Line::from(text);
    if lost > 0 {
        line.red().bold()
    } else {
        line.bold()
    }
}

fn keys_line(ui: &Ui) -> Line<'static> {
    match &ui.editing {
        Some(text) => Line::from(format!(
            " filter: {}_   (Enter keeps it, Esc drops it)",
            name(text)
        )),
        None => {
            let filter = if ui.filter.is_empty() {
                String::new()
            } else {
                format!(" [{}]", name(&ui.filter))
            };
            Line::from(format!(
                " q quit | g group: {} | / filter{filter} | s sort: {} | arrows, PgUp, PgDn scroll",
                ui.grouping.as_str(),
                ui.sort.as_str()
            ))
        }
    }
    .reversed()
}

fn draw_ranges(frame: &mut Frame, v: &View, area: Rect) {
    let rows: Vec<Row> = v
        .ranges
        .iter()
        .take(TOP_ROWS)
        .map(|r| {
            let laddr = r.laddr.map_or_else(|| "*".to_string(), |a| a.to_string());
            let used = match r.size {
                Some(size) => format!("{}/{}", r.ports, size),
                None => format!("{}/?", r.ports),
            };
            Row::new([
                Cell::from(r.netns.to_string()),
                Cell::from(r.proto),
                Cell::from(laddr),
                Cell::from(bar(r.ratio)),
                Cell::from(used),
                Cell::from(percent(r.ratio)),
                Cell::from(percent(r.peak_ratio)),
            ])
        })
        .collect();
    let empty = rows.is_empty();
    let table = Table::new(
        rows,
        [
            Constraint::Length(10),
            Constraint::Length(5),
            Constraint::Min(9),
            Constraint::Length(BAR as u16),
            Constraint::Length(11),
            Constraint::Length(6),
            Constraint::Length(6),
        ],
    )
    .header(
        Row::new([
            "NETNS",
            "PROTO",
            "ADDRESS",
            "EPHEMERAL RANGE",
            "HELD",
            "NOW",
            "PEAK",
        ])
        .bold(),
    )
    .block(Block::bordered().title(" Range occupancy "));
    frame.render_widget(table, area);
    if empty {
        note(frame, area, "no ports held in a known range yet");
    }
}

fn draw_destinations(frame: &mut Frame, v: &View, area: Rect) {
    let rows: Vec<Row> = v
        .destinations
        .iter()
        .take(TOP_ROWS)
        .map(|d| {
            let used = (d.size > 0).then(|| f64::from(d.size - d.left) / f64::from(d.size));
            Row::new([
                Cell::from(d.netns.to_string()),
                Cell::from(format!("{} -> {}", d.laddr, endpoint(d.raddr, d.rport))),
                Cell::from(bar_of(used, DESTINATION_BAR)),
                Cell::from(d.left.to_string()),
                Cell::from(format!("{}/{}", d.in_use, d.size)),
            ])
        })
        .collect();
    let empty = rows.is_empty();
    let table = Table::new(
        rows,
        [
            Constraint::Length(10),
            Constraint::Min(30),
            Constraint::Length(DESTINATION_BAR as u16),
            Constraint::Length(6),
            Constraint::Length(11),
        ],
    )
    .header(Row::new(["NETNS", "CONNECT FROM -> TO", "USED", "LEFT", "IN USE"]).bold())
    .block(Block::bordered().title(" Destinations closest to running out (connect) "));
    frame.render_widget(table, area);
    if empty {
        note(frame, area, "no connect() seen yet");
    }
}

fn draw_churn(frame: &mut Frame, ui: &mut Ui, area: Rect) {
    // Borders and the header take three rows.
    ui.page = usize::from(area.height.saturating_sub(3)).max(1);
    let v = &ui.view;
    let hidden = if v.owners_not_shown > 0 {
        format!(
            " ({} owners with {} allocations not shown)",
            v.owners_not_shown, v.allocations_not_shown
        )
    } else {
        String::new()
    };
    let title = format!(
        " Churn by {}: {} allocations{hidden} ",
        ui.grouping.as_str(),
        thousands(v.allocations)
    );
    let rows: Vec<Row> = ui
        .rows()
        .iter()
        .map(|r| {
            Row::new([
                Cell::from(name(&r.name)),
                Cell::from(name(&r.detail)),
                Cell::from(r.processes.to_string()),
                Cell::from(thousands(r.allocations)),
                Cell::from(
                    r.per_second
                        .map_or_else(|| "-".into(), |p| format!("{p:.1}")),
                ),
                Cell::from(sparkline(&r.history)),
            ])
        })
        .collect();
    let empty = rows.is_empty();
    let table = Table::new(
        rows,
        [
            Constraint::Fill(2),
            Constraint::Fill(3),
            Constraint::Length(6),
            Constraint::Length(11),
            Constraint::Length(9),
            Constraint::Length(HISTORY as u16),
        ],
    )
    .header(
        Row::new([
            "NAME",
            "CONTAINER / POD / UNIT",
            "PROCS",
            "ALLOCS",
            "PER SEC",
            "LAST REFRESHES",
        ])
        .bold(),
    )
    .row_highlight_style(Style::new().reversed())
    .block(Block::bordered().title(title));
    let mut state = TableState::default().with_selected((!empty).then_some(ui.selected));
    frame.render_stateful_widget(table, area, &mut state);
    if empty {
        note(frame, area, "no allocations yet (or none match the filter)");
    }
}

fn draw_failures(frame: &mut Frame, v: &View, area: Rect) {
    let rows: Vec<Row> = v
        .failures
        .iter()
        .take(FAILURE_ROWS)
        .map(|f| {
            let ago = v.now_ns.saturating_sub(f.last_ns) as f64 / 1e9;
            let holders = match &f.holders {
                Some(h) if !h.is_empty() => h
                    .iter()
                    .take(3)
                    .map(|h| format!("{} {} ({})", h.pid, name(&h.comm), h.state.as_str()))
                    .collect::<Vec<_>>()
                    .join(", "),
                Some(_) => "no holder seen".into(),
                None => match &f.headroom {
                    Some(h) => format!("{} of {} ports left", h.headroom, h.range_size),
                    None => String::new(),
                },
            };
            let wanted = if f.rport != 0 {
                endpoint(f.raddr, f.rport)
            } else {
                endpoint(f.laddr, f.lport)
            };
            Row::new([
                Cell::from(format!("{}s ago", seconds_short(ago))),
                Cell::from(f.error),
                Cell::from(f.proto),
                Cell::from(format!("{} {}", f.pid, name(&f.comm))),
                Cell::from(wanted),
                Cell::from(f.count.to_string()),
                Cell::from(holders),
            ])
        })
        .collect();
    let empty = rows.is_empty();
    let table = Table::new(
        rows,
        [
            Constraint::Length(9),
            Constraint::Length(14),
            Constraint::Length(5),
            Constraint::Length(24),
            Constraint::Length(24),
            Constraint::Length(7),
            Constraint::Min(10),
        ],
    )
    .header(
        Row::new([
            "LAST",
            "ERROR",
            "PROTO",
            "PROCESS",
            "PORT / DESTINATION",
            "TIMES",
            "HELD BY / HEADROOM",
        ])
        .bold(),
    )
    .block(Block::bordered().title(format!(
        " Latest allocation failures: {} in all ",
        thousands(v.failures_total)
    )));
    frame.render_widget(table, area);
    if empty {
        note(frame, area, "none");
    }
}

/// A grey line inside an empty box, below its header.
fn note(frame: &mut Frame, area: Rect, text: &'static str) {
    if area.height > 3 && area.width > 4 {
        let at = Rect::new(area.x + 2, area.y + 2, area.width - 4, 1);
        frame.render_widget(Paragraph::new(text).dark_gray(), at);
    }
}

/// A bar of [`BAR`] cells, filled to `ratio`.
pub fn bar(ratio: Option<f64>) -> String {
    bar_of(ratio, BAR)
}

fn bar_of(ratio: Option<f64>, width: usize) -> String {
    let Some(r) = ratio else {
        return " ".repeat(width);
    };
    let filled = ((r.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    // Something held shows, however little.
    let filled = if r > 0.0 { filled.max(1) } else { filled };
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

/// Counts as block heights, scaled to their largest.
pub fn sparkline(counts: &[u64]) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let most = counts.iter().copied().max().unwrap_or(0);
    counts
        .iter()
        .map(|&n| match n {
            0 => ' ',
            _ => LEVELS[((n * 7) / most.max(1)) as usize],
        })
        .collect()
}

fn percent(r: Option<f64>) -> String {
    r.map_or_else(|| "-".into(), |r| format!("{:.1}%", r * 100.0))
}

fn seconds(s: f64) -> String {
    let s = s.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

fn seconds_short(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1}")
    } else {
        format!("{:.0}", s)
    }
}

/// `n` with thousands separated by commas.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
