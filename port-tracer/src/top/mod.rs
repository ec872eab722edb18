//! `port-tracer top`: a full-screen view that refreshes, live or from a recorded trace.
//! The engine's thread builds a [`View`] when the screen asks ([`Feed`]); [`state`] keeps
//! what the screen shows (grouping, sort, filter, history), [`draw`] draws it.

pub mod draw;
pub mod state;
pub mod view;

use std::{
    fs::File,
    io::{self, BufReader, IsTerminal, Write},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use port_tracer_common::lost;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use serde::Serialize;

pub use self::{
    state::{Grouping, Input, Ui},
    view::View,
};
use crate::{
    cgroups::{Cgroups, Lookup},
    event::Event as PortEvent,
    lifetime::Lifetime,
    live::{self, LiveConfig},
    output::Printer,
    rebuild::RebuildConfig,
    replay::{replay_with, Progress},
    summary::Summary,
    trace_file::TraceReader,
};

/// Where `top`'s events come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// The kernel, traced now (only `rebuild`, `load`, `drain`, `runtime_state` and
    /// `backlog_bytes` of the config matter).
    Live(Box<LiveConfig>),
    /// A recorded trace; `speed`: trace seconds per second on screen, None: as fast as it
    /// reads.
    Replay {
        trace: PathBuf,
        speed: Option<f64>,
        rebuild: RebuildConfig,
    },
}

/// What `top` does.
#[derive(Clone, Debug)]
pub struct TopConfig {
    pub source: Source,
    /// How often the screen refreshes.
    pub refresh: Duration,
    pub grouping: Grouping,
    /// Print one view as JSON and exit (live: after one refresh; a replay: at its end).
    pub once: bool,
}

/// Between the engine's thread and the screen's: the screen asks for a view, the engine
/// builds one at its next tick.
#[derive(Clone, Default)]
pub struct Feed(Arc<Shared>);

#[derive(Default)]
struct Shared {
    wanted: AtomicBool,
    latest: Mutex<Option<View>>,
    arrived: Condvar,
    started: AtomicBool,
    ended: AtomicBool,
    quit: AtomicBool,
}

impl Feed {
    /// The screen wants a view.
    pub fn want(&self) {
        self.0.wanted.store(true, Ordering::Relaxed);
    }

    /// Whether a view is wanted (the engine's side; the request is taken).
    pub fn wanted(&self) -> bool {
        self.0.wanted.swap(false, Ordering::Relaxed)
    }

    pub fn publish(&self, view: View) {
        *self.0.latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(view);
        self.0.arrived.notify_all();
    }

    /// The view published since the last take, if any; waits up to `wait` for one.
    pub fn take(&self, wait: Duration) -> Option<View> {
        let latest = self.0.latest.lock().unwrap_or_else(|e| e.into_inner());
        let (mut latest, _) = self
            .0
            .arrived
            .wait_timeout_while(latest, wait, |v| v.is_none() && !self.ended())
            .unwrap_or_else(|e| e.into_inner());
        latest.take()
    }

    /// Tracing started: the screen may take the terminal.
    pub fn start(&self) {
        self.0.started.store(true, Ordering::Relaxed);
    }

    pub fn started(&self) -> bool {
        self.0.started.load(Ordering::Relaxed)
    }

    /// No more views will come.
    pub fn end(&self) {
        self.0.ended.store(true, Ordering::Relaxed);
        self.0.arrived.notify_all();
    }

    pub fn ended(&self) -> bool {
        self.0.ended.load(Ordering::Relaxed)
    }

    /// The screen quits: tracing stops.
    pub fn quit(&self) {
        self.0.quit.store(true, Ordering::Relaxed);
    }

    pub fn quitting(&self) -> bool {
        self.0.quit.load(Ordering::Relaxed)
    }
}

/// Runs `top`.
pub async fn run(config: TopConfig) -> Result<()> {
    if !config.once && !io::stdout().is_terminal() {
        bail!(
            "top draws on a terminal and standard output is not one; for scripts, `top \
             --once --format json` prints one view"
        );
    }
    let feed = Feed::default();
    let title = match &config.source {
        Source::Live(_) => "live".to_string(),
        Source::Replay { trace, .. } => format!("replay of {}", trace.display()),
    };
    let screen = {
        let (feed, config) = (feed.clone(), config.clone());
        std::thread::Builder::new()
            .name("screen".into())
            .spawn(move || match config.once {
                true => once(&feed, &config),
                false => interactive(&feed, &config, &crate::output::printable(&title)),
            })
            .context("starting the screen's thread")?
    };
    let traced = match config.source {
        Source::Live(live) => live::run_with(*live, Some(feed.clone())).await,
        Source::Replay {
            trace,
            speed,
            rebuild,
        } => {
            let feed = feed.clone();
            tokio::task::spawn_blocking(move || replay(&trace, speed, rebuild, &feed))
                .await
                .context("the replay's thread failed")?
        }
    };
    feed.end();
    let shown = screen
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the screen's thread panicked")));
    traced?;
    shown
}

/// Plays a recorded trace into `feed`, paced at `speed` trace seconds per second if given,
/// until its end or the screen quits.
fn replay(trace: &PathBuf, speed: Option<f64>, rebuild: RebuildConfig, feed: &Feed) -> Result<()> {
    let file =
        File::open(trace).with_context(|| format!("cannot open trace {}", trace.display()))?;
    let r = TraceReader::new(BufReader::with_capacity(1 << 20, file))
        .map_err(|e| anyhow::anyhow!("{}: {e}", trace.display()))?;
    let tier = r.meta.tier.clone();
    let cgroups = Cgroups::recorded();
    let mut names = Lookup::new(cgroups.clone());
    let mut first_ns: Option<u64> = None;
    let began = Instant::now();
    feed.start();
    let view_of = |p: &Progress<'_>, names: &mut Lookup| {
        let lost = lost_by_reason(p);
        View::of(p.engine, p.newest_ns, Some(&tier), &lost, names)
    };
    let mut last: Option<View> = None;
    let done = replay_with(r, rebuild, &mut Discard, &cgroups, &mut |p: Progress<
        '_,
    >| {
        let first = *first_ns.get_or_insert(p.newest_ns);
        if let (Some(speed), false) = (speed, p.end) {
            // Trace time shown at `speed`: wait for the screen's clock to catch up.
            let due =
                Duration::from_secs_f64(p.newest_ns.saturating_sub(first) as f64 / 1e9 / speed);
            while began.elapsed() < due && !feed.quitting() {
                std::thread::sleep((due - began.elapsed()).min(Duration::from_millis(50)));
            }
        }
        if p.end {
            last = Some(view_of(&p, &mut names));
        } else if feed.wanted() {
            feed.publish(view_of(&p, &mut names));
        }
        !feed.quitting()
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", trace.display()))?;
    // The end of the trace stays on screen until the screen quits.
    if let Some(v) = last {
        feed.publish(v);
    }
    if let Some(e) = done.damage {
        bail!("{}: {e}; shown up to it", trace.display());
    }
    Ok(())
}

/// Events lost by reason in a replay: the kernel's counts as recorded, and what did not
/// decode.
fn lost_by_reason(p: &Progress<'_>) -> Vec<(&'static str, u64)> {
    lost::NAMES
        .iter()
        .copied()
        .zip(p.lost.iter().copied())
        .chain([("undecodable", p.engine.undecodable())])
        .collect()
}

/// A replay's printer for `top`, which shows no records.
struct Discard;

impl Printer for Discard {
    fn event(&mut self, _: &PortEvent) -> io::Result<()> {
        Ok(())
    }
    fn lifetime(&mut self, _: &Lifetime) -> io::Result<()> {
        Ok(())
    }
    fn summary(&mut self, _: &Summary) -> io::Result<()> {
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What `top --once --format json` prints: the view, and churn by every grouping.
#[derive(Serialize)]
struct Once<'a> {
    #[serde(flatten)]
    view: &'a View,
    refresh_s: f64,
    churn: Churn,
}

#[derive(Serialize)]
struct Churn {
    process: Vec<state::Row>,
    container: Vec<state::Row>,
    pod: Vec<state::Row>,
}

/// Waits for tracing to start, takes a view, another one refresh later (a replay: at its
/// end), and prints the last as JSON.
fn once(feed: &Feed, config: &TopConfig) -> Result<()> {
    let mut ui = Ui::new(config.grouping);
    if !wait_started(feed) {
        return Ok(());
    }
    let live = matches!(config.source, Source::Live(_));
    if live {
        feed.want();
        if let Some(v) = feed.take(Duration::from_secs(5)) {
            ui.update(v);
        }
        std::thread::sleep(config.refresh);
    } else {
        while !feed.ended() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    feed.want();
    if let Some(v) = feed.take(Duration::from_secs(5)) {
        ui.update(v);
    }
    feed.quit();
    let out = Once {
        view: &ui.view,
        refresh_s: config.refresh.as_secs_f64(),
        churn: Churn {
            process: ui.rows_of(Grouping::Process),
            container: ui.rows_of(Grouping::Container),
            pod: ui.rows_of(Grouping::Pod),
        },
    };
    let mut stdout = io::stdout().lock();
    serde_json::to_writer(&mut stdout, &out)?;
    writeln!(stdout)?;
    stdout.flush().context("writing the view")
}

/// Whether tracing started (false: it failed first, and says why).
fn wait_started(feed: &Feed) -> bool {
    while !feed.started() {
        if feed.ended() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The full-screen view until `q`, Esc or Ctrl-C (or tracing ends, live).
fn interactive(feed: &Feed, config: &TopConfig, title: &str) -> Result<()> {
    if !wait_started(feed) {
        return Ok(());
    }
    let live = matches!(config.source, Source::Live(_));
    // Restores the terminal on panic too.
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let shown = (|| -> Result<()> {
        let mut ui = Ui::new(config.grouping);
        let mut next = Instant::now();
        let mut dirty = true;
        loop {
            let now = Instant::now();
            if now >= next {
                feed.want();
                next = now + config.refresh;
            }
            if let Some(v) = feed.take(Duration::ZERO) {
                ui.update(v);
                dirty = true;
            }
            if live && feed.ended() {
                return Ok(());
            }
            if dirty {
                let ended = !live && feed.ended();
                let title = if ended {
                    format!("{title} (ended)")
                } else {
                    title.to_string()
                };
                terminal
                    .draw(|f| draw::draw(f, &mut ui, &title))
                    .context("drawing")?;
                dirty = false;
            }
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            if event::poll(wait).context("reading the terminal")? {
                match event::read().context("reading the terminal")? {
                    Event::Key(k) if k.kind != KeyEventKind::Release => {
                        if let Some(input) = input_of(k.code, k.modifiers) {
                            match ui.key(input) {
                                state::Action::Quit => return Ok(()),
                                state::Action::Redraw => dirty = true,
                                state::Action::Nothing => {}
                            }
                        }
                    }
                    Event::Resize(..) => dirty = true,
                    _ => {}
                }
            }
        }
    })();
    feed.quit();
    drop(terminal);
    ratatui::try_restore().context("restoring the terminal")?;
    shown
}

fn input_of(code: KeyCode, modifiers: KeyModifiers) -> Option<Input> {
    Some(match code {
        KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => Input::Interrupt,
        KeyCode::Char(c) => Input::Char(c),
        KeyCode::Enter => Input::Enter,
        KeyCode::Esc => Input::Esc,
        KeyCode::Backspace => Input::Backspace,
        KeyCode::Up => Input::Up,
        KeyCode::Down => Input::Down,
        KeyCode::PageUp => Input::PageUp,
        KeyCode::PageDown => Input::PageDown,
        KeyCode::Home => Input::Home,
        KeyCode::End => Input::End,
        _ => return None,
    })
}

#[cfg(test)]
mod tests;
