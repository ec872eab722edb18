//! What the `top` screen is showing and how: grouping, sort, filter, selection, and the
//! recent history behind rates and sparklines. Plain state, changed by [`Ui::key`] and
//! [`Ui::update`], read by the drawing and by `--once`; no terminal in sight.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use super::view::{Owner, View};

/// Refreshes a sparkline covers.
pub const HISTORY: usize = 30;

/// What churn is grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Grouping {
    /// Each process (pid and name).
    Process,
    /// Each container, or systemd unit on the host.
    Container,
    /// Each Kubernetes pod.
    Pod,
}

impl Grouping {
    pub const ALL: [Grouping; 3] = [Grouping::Process, Grouping::Container, Grouping::Pod];

    fn next(self) -> Grouping {
        match self {
            Grouping::Process => Grouping::Container,
            Grouping::Container => Grouping::Pod,
            Grouping::Pod => Grouping::Process,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Grouping::Process => "process",
            Grouping::Container => "container",
            Grouping::Pod => "pod",
        }
    }

    /// The group an owner is in: (identity, name shown, what else is known of it).
    fn of(self, o: &Owner) -> (String, String, String) {
        let container = || match (&o.container_id, &o.unit) {
            (Some(id), _) => {
                let short = id.get(..12).unwrap_or(id);
                match &o.container_name {
                    Some(n) => format!("{short} {n}"),
                    None => short.to_string(),
                }
            }
            (None, Some(unit)) => unit.clone(),
            (None, None) => String::new(),
        };
        let pod = || match (&o.pod_namespace, &o.pod_name, &o.pod_uid) {
            (Some(ns), Some(name), _) => format!("{ns}/{name}"),
            (None, Some(name), _) => name.clone(),
            (_, _, Some(uid)) => uid.clone(),
            _ => String::new(),
        };
        match self {
            Grouping::Process => {
                let mut detail = container();
                let p = pod();
                if !p.is_empty() {
                    detail = format!("{detail} pod={p}");
                }
                (
                    format!("{} {}", o.pid, o.comm),
                    format!("{} {}", o.pid, o.comm),
                    detail,
                )
            }
            Grouping::Container => match (&o.container_id, &o.unit) {
                (Some(id), _) => (id.clone(), container(), pod()),
                (None, Some(unit)) => (format!("unit {unit}"), unit.clone(), String::new()),
                (None, None) => (
                    String::new(),
                    "(no container or unit)".into(),
                    String::new(),
                ),
            },
            Grouping::Pod => match &o.pod_uid {
                Some(uid) => (uid.clone(), pod(), uid.clone()),
                None => (String::new(), "(not in a pod)".into(), String::new()),
            },
        }
    }
}

/// How churn rows are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sort {
    /// Allocations per second over the last refresh, most first.
    Rate,
    /// Allocations since the start, most first.
    Total,
    /// By name.
    Name,
}

impl Sort {
    fn next(self) -> Sort {
        match self {
            Sort::Rate => Sort::Total,
            Sort::Total => Sort::Name,
            Sort::Name => Sort::Rate,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Sort::Rate => "rate",
            Sort::Total => "total",
            Sort::Name => "name",
        }
    }
}

/// A key, as the UI understands it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    Char(char),
    Enter,
    Esc,
    Backspace,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    /// Ctrl-C: quits, also while typing.
    Interrupt,
}

/// What a key asks of the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    Redraw,
    Nothing,
}

/// One group's churn.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    /// What it is (escaped when drawn).
    pub name: String,
    /// What else is known of it: the container or pod of a process, the pod of a container.
    pub detail: String,
    /// Processes (pid and name) in it.
    pub processes: usize,
    pub allocations: u64,
    /// Over the last refresh (the first: since the start).
    pub per_second: Option<f64>,
    /// Allocations per refresh, oldest first (up to [`HISTORY`]).
    #[serde(skip)]
    pub history: Vec<u64>,
}

/// Allocations so far per group, for every grouping, at one refresh.
#[derive(Clone, Debug, Default)]
struct Tick {
    elapsed_s: f64,
    events: u64,
    totals: [HashMap<String, u64>; 3],
}

/// The screen's state.
#[derive(Clone, Debug)]
pub struct Ui {
    pub grouping: Grouping,
    pub sort: Sort,
    /// Rows whose name or detail contain it (any case) are shown.
    pub filter: String,
    /// The filter being typed after `/`: Enter keeps it, Esc drops it.
    pub editing: Option<String>,
    /// The selected row among those shown.
    pub selected: usize,
    /// Rows a page scrolls (the drawing sets it from the screen's height).
    pub page: usize,
    pub view: View,
    ticks: VecDeque<Tick>,
    /// Rows for the grouping, filter and sort now (kept in step by every change).
    rows: Vec<Row>,
}

impl Ui {
    pub fn new(grouping: Grouping) -> Ui {
        Ui {
            grouping,
            sort: Sort::Rate,
            filter: String::new(),
            editing: None,
            selected: 0,
            page: 10,
            view: View::default(),
            // Nothing was allocated before the start: the first view's rates are since then.
            ticks: VecDeque::from([Tick::default()]),
            rows: Vec::new(),
        }
    }

    /// A new view, one refresh after the last.
    pub fn update(&mut self, view: View) {
        let mut tick = Tick {
            elapsed_s: view.elapsed_s,
            events: view.events,
            ..Tick::default()
        };
        for (i, g) in Grouping::ALL.into_iter().enumerate() {
            for o in &view.owners {
                *tick.totals[i].entry(g.of(o).0).or_default() += o.allocations;
            }
        }
        self.ticks.push_back(tick);
        while self.ticks.len() > HISTORY + 1 {
            self.ticks.pop_front();
        }
        self.view = view;
        self.refresh_rows();
    }

    /// Handles a key.
    pub fn key(&mut self, input: Input) -> Action {
        if input == Input::Interrupt {
            return Action::Quit;
        }
        if let Some(text) = &mut self.editing {
            match input {
                Input::Char(c) if !c.is_control() => text.push(c),
                Input::Backspace => {
                    text.pop();
                }
                Input::Enter => {
                    self.filter = self.editing.take().unwrap_or_default();
                    self.selected = 0;
                }
                Input::Esc => self.editing = None,
                _ => return Action::Nothing,
            }
            self.refresh_rows();
            return Action::Redraw;
        }
        let last = self.rows.len().saturating_sub(1);
        match input {
            Input::Char('q') | Input::Esc => return Action::Quit,
            Input::Char('g') => {
                self.grouping = self.grouping.next();
                self.selected = 0;
            }
            Input::Char('s') => self.sort = self.sort.next(),
            Input::Char('/') => self.editing = Some(self.filter.clone()),
            Input::Up => self.selected = self.selected.saturating_sub(1),
            Input::Down => self.selected = (self.selected + 1).min(last),
            Input::PageUp => self.selected = self.selected.saturating_sub(self.page.max(1)),
            Input::PageDown => self.selected = (self.selected + self.page.max(1)).min(last),
            Input::Home => self.selected = 0,
            Input::End => self.selected = last,
            _ => return Action::Nothing,
        }
        self.refresh_rows();
        Action::Redraw
    }

    /// The churn rows shown: grouped, filtered and sorted as asked.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// The rows of `grouping`, unfiltered, by the sort in use (for `--once`).
    pub fn rows_of(&self, grouping: Grouping) -> Vec<Row> {
        let mut rows = self.grouped(grouping);
        sort(&mut rows, self.sort);
        rows
    }

    /// Events per second over the last refresh.
    pub fn events_per_second(&self) -> Option<f64> {
        let (prev, now) = self.last_two()?;
        let dt = now.elapsed_s - prev.elapsed_s;
        (dt > 0.0).then(|| now.events.saturating_sub(prev.events) as f64 / dt)
    }

    fn last_two(&self) -> Option<(&Tick, &Tick)> {
        let n = self.ticks.len();
        (n >= 2).then(|| (&self.ticks[n - 2], &self.ticks[n - 1]))
    }

    fn refresh_rows(&mut self) {
        let needle = self
            .editing
            .as_deref()
            .unwrap_or(&self.filter)
            .to_lowercase();
        let mut rows = self.grouped(self.grouping);
        if !needle.is_empty() {
            rows.retain(|r| {
                r.name.to_lowercase().contains(&needle) || r.detail.to_lowercase().contains(&needle)
            });
        }
        sort(&mut rows, self.sort);
        self.selected = self.selected.min(rows.len().saturating_sub(1));
        self.rows = rows;
    }

    /// The owners of the last view in `grouping`'s groups, with their rates and history.
    fn grouped(&self, grouping: Grouping) -> Vec<Row> {
        let i = Grouping::ALL
            .iter()
            .position(|&g| g == grouping)
            .unwrap_or(0);
        let mut by: HashMap<String, Row> = HashMap::new();
        for o in &self.view.owners {
            let (key, name, detail) = grouping.of(o);
            let row = by.entry(key).or_insert_with(|| Row {
                name,
                detail,
                processes: 0,
                allocations: 0,
                per_second: None,
                history: Vec::new(),
            });
            row.processes += 1;
            row.allocations += o.allocations;
        }
        let mut rows: Vec<Row> = by
            .into_iter()
            .map(|(key, mut row)| {
                let totals: Vec<u64> = self
                    .ticks
                    .iter()
                    .map(|t| t.totals[i].get(&key).copied().unwrap_or(0))
                    .collect();
                row.history = totals
                    .windows(2)
                    .map(|w| w[1].saturating_sub(w[0]))
                    .collect();
                if let Some((prev, now)) = self.last_two() {
                    let dt = now.elapsed_s - prev.elapsed_s;
                    if dt > 0.0 {
                        let before = prev.totals[i].get(&key).copied().unwrap_or(0);
                        row.per_second = Some(row.allocations.saturating_sub(before) as f64 / dt);
                    }
                }
                row
            })
            .collect();
        // Stable ties: the map iterates in a random order.
        rows.sort_by(|a, b| (&a.name, &a.detail).cmp(&(&b.name, &b.detail)));
        rows
    }
}

fn sort(rows: &mut [Row], by: Sort) {
    let rate = |r: &Row| r.per_second.unwrap_or(0.0);
    match by {
        Sort::Rate => rows.sort_by(|a, b| {
            rate(b)
                .total_cmp(&rate(a))
                .then(b.allocations.cmp(&a.allocations))
        }),
        Sort::Total => rows.sort_by_key(|r| std::cmp::Reverse(r.allocations)),
        Sort::Name => rows.sort_by(|a, b| a.name.cmp(&b.name)),
    }
}
