//! The live progress line `quiver sql` draws on a terminal while a statement runs.
//!
//! While a [`Progress`] lives it redraws one line on standard error a few times a second:
//! elapsed time, rows received, and — once the coordinator answers the `QueryStatus` action for
//! the statement's query id — stages and tasks done. A server without that action gets elapsed
//! time and rows only. The line is erased before anything else prints ([`Progress::clear`]) and
//! when the `Progress` drops; its tasks are owned and aborted on drop, so no redraw outlives
//! the statement.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::{QueryStatus, QuiverClient};

/// How often the line is redrawn.
const REDRAW: Duration = Duration::from_millis(200);
/// A statement quicker than this never shows a line.
const FIRST_DRAW: Duration = Duration::from_millis(300);
/// How often the coordinator is asked, and how long one answer may take.
const POLL: Duration = Duration::from_millis(500);
const POLL_LIMIT: Duration = Duration::from_secs(2);
/// Erase the current terminal line and return to its start.
const ERASE: &str = "\r\x1b[2K";

/// A task aborted when its handle drops.
struct OwnedTask(tokio::task::JoinHandle<()>);

impl Drop for OwnedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
struct Shared {
    started: Instant,
    rows: u64,
    status: Option<QueryStatus>,
    /// Whether the line is on the screen now.
    drawn: bool,
    /// Set while something else prints, so a redraw waits.
    paused: bool,
}

impl Shared {
    fn draw(&mut self) {
        let line = render(self.started.elapsed(), self.rows, self.status.as_ref());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{ERASE}{line}");
        let _ = err.flush();
        self.drawn = true;
    }

    fn erase(&mut self) {
        if self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "{ERASE}");
            let _ = err.flush();
            self.drawn = false;
        }
    }
}

/// The progress line of one running statement (inert when disabled: not a terminal).
pub(crate) struct Progress {
    shared: Arc<Mutex<Shared>>,
    enabled: bool,
    ticker: Option<OwnedTask>,
    poller: Option<OwnedTask>,
}

impl Progress {
    pub(crate) fn start(enabled: bool, started: Instant) -> Self {
        let shared = Arc::new(Mutex::new(Shared {
            started,
            rows: 0,
            status: None,
            drawn: false,
            paused: false,
        }));
        let ticker = enabled.then(|| {
            let shared = Arc::clone(&shared);
            OwnedTask(tokio::spawn(async move {
                tokio::time::sleep(FIRST_DRAW.saturating_sub(started.elapsed())).await;
                let mut tick = tokio::time::interval(REDRAW);
                loop {
                    tick.tick().await;
                    let mut shared = lock(&shared);
                    if !shared.paused {
                        shared.draw();
                    }
                }
            }))
        });
        Self {
            shared,
            enabled,
            ticker,
            poller: None,
        }
    }

    /// Asks the coordinator about query `id` from now on, for stages and tasks.
    pub(crate) fn watch(&mut self, client: &QuiverClient, id: String) {
        if !self.enabled {
            return;
        }
        let mut client = client.clone();
        let shared = Arc::clone(&self.shared);
        self.poller = Some(OwnedTask(tokio::spawn(async move {
            loop {
                match tokio::time::timeout(POLL_LIMIT, client.query_status(&id)).await {
                    Ok(Ok(status)) => lock(&shared).status = Some(status),
                    // An older server: elapsed time and rows are all there is.
                    Ok(Err(e))
                        if e.status().map(|s| s.code()) == Some(tonic::Code::Unimplemented) =>
                    {
                        return;
                    }
                    // A slow or failed answer: keep the last one and ask again.
                    Ok(Err(_)) | Err(_) => {}
                }
                tokio::time::sleep(POLL).await;
            }
        })));
    }

    pub(crate) fn add_rows(&self, rows: usize) {
        lock(&self.shared).rows += rows as u64;
    }

    /// Erases the line until [`Progress::resume`], for output that prints now.
    pub(crate) fn clear(&self) {
        let mut shared = lock(&self.shared);
        shared.erase();
        shared.paused = true;
    }

    pub(crate) fn resume(&self) {
        lock(&self.shared).paused = false;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.ticker = None;
        self.poller = None;
        lock(&self.shared).erase();
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Drawing cannot leave the state half-updated, so a poisoned lock is still usable.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The line's text: short enough for an 80-column terminal, so that it never wraps (a wrapped
/// line would not be erased by the next redraw).
pub(crate) fn render(elapsed: Duration, rows: u64, status: Option<&QueryStatus>) -> String {
    let mut line = format!("{:.1} s  {} rows", elapsed.as_secs_f64(), thousands(rows));
    if let Some(status) = status.filter(|s| !s.stages.is_empty()) {
        let (stages_done, stages) = status.stages_done();
        let (tasks_done, tasks) = status.tasks_done();
        line.push_str(&format!(
            "  stages {stages_done}/{stages}  tasks {tasks_done}/{tasks}"
        ));
        let running = status.tasks_running();
        if running > 0 {
            line.push_str(&format!(" ({running} running)"));
        }
    }
    line.push_str("  (Ctrl-C cancels)");
    line
}

/// `1234567` as `1,234,567`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StageStatus;

    #[test]
    fn the_line_shows_elapsed_rows_and_progress() {
        assert_eq!(
            render(Duration::from_millis(1234), 1_234_567, None),
            "1.2 s  1,234,567 rows  (Ctrl-C cancels)"
        );
        let status = QueryStatus {
            stages: vec![
                StageStatus {
                    stage: 1,
                    tasks_total: 2,
                    tasks_done: 2,
                    tasks_running: 0,
                    rows: 0,
                },
                StageStatus {
                    stage: 2,
                    tasks_total: 3,
                    tasks_done: 1,
                    tasks_running: 2,
                    rows: 0,
                },
            ],
            ..QueryStatus::default()
        };
        let line = render(Duration::from_secs(12), 0, Some(&status));
        assert_eq!(
            line,
            "12.0 s  0 rows  stages 1/2  tasks 3/5 (2 running)  (Ctrl-C cancels)"
        );
        assert!(line.len() < 80);
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }
}
