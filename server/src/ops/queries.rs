//! The coordinator's query log: every statement it runs while it runs, and a bounded history of
//! the ones that ended.
//!
//! Contract:
//! * the front door opens an entry ([`QueryLog::start`]) when a statement starts running (a
//!   query's `DoGet`, an update's `GetFlightInfo`/`DoPut`) and the entry ends exactly once: with
//!   its result's end, its error (its gRPC code), or, when the client hangs up, `cancelled`;
//! * the engine tells an entry when it waits for and gets an admission slot, and which physical
//!   plan and task placements each attempt runs with ([`QueryHandle`]); the progress poller
//!   ([`super::progress`]) adds the executors' running tasks, so a running query shows, per stage,
//!   tasks done of total and rows;
//! * [`QueryLog::cancel`] stops a running query: its user or an admin may (anyone when
//!   authentication is off); others get `PermissionDenied`, an unknown id `NotFound`;
//! * the history keeps at most [`HISTORY_ENTRIES`] ended queries for at most [`HISTORY_AGE`];
//!   SQL text and plans are cut to [`MAX_TEXT_BYTES`];
//! * observers (metrics) are told of every start and end.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use datafusion::physical_plan::ExecutionPlan;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use url::Url;

use crate::cluster::distributed::{self, RunningTask, TaskPlacements};
use crate::error::{QuiverError, Result};

/// Ended queries kept in the history.
pub(crate) const HISTORY_ENTRIES: usize = 1000;
/// How long an ended query stays in the history.
pub(crate) const HISTORY_AGE: Duration = Duration::from_secs(3600);
/// Longest SQL text or plan kept per query.
pub(crate) const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Who asks to see or stop a query.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// `None`: authentication is off, and everyone may stop every query.
    pub user: Option<String>,
    pub admin: bool,
}

/// Told of every query's start and end.
pub(crate) trait QueryObserver: Send + Sync + 'static {
    fn query_started(&self, info: &QueryInfo);
    /// `info.state` is "finished", "failed" or "cancelled"; `info.error_code` the gRPC code
    /// name of a failure or cancellation, `None` on success.
    fn query_ended(&self, info: &QueryInfo);
}

/// Running queries first (oldest first), then ended ones (newest first).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QueryLogSnapshot {
    pub running: Vec<QueryInfo>,
    pub recent: Vec<QueryInfo>,
}

/// One query as operators see it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QueryInfo {
    pub id: String,
    pub user: Option<String>,
    pub sql: String,
    /// "queued", "running", "finished", "failed" or "cancelled".
    pub state: &'static str,
    pub started_unix_ms: u64,
    pub duration_ms: u64,
    /// Rows and bytes sent to the client so far (for an update: rows written, no bytes).
    pub rows: u64,
    pub bytes: u64,
    /// The gRPC code name ("NOT_FOUND", ...) of a failure or cancellation.
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// Worker URLs the query's tasks were placed on.
    pub executors: Vec<String>,
    /// The stages that run on executors, updated while the query runs.
    pub stages: Vec<StageProgress>,
    /// The plan as it ran, with its metrics, once the query ended.
    pub explain_analyze: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct StageProgress {
    pub stage: u64,
    pub tasks_total: u64,
    pub tasks_done: u64,
    pub tasks_running: u64,
    /// Rows the stage's tasks produced so far (as last reported while they ran).
    pub rows: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Queued,
    Running,
    Finished,
    Failed,
    Cancelled,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Finished => "finished",
            State::Failed => "failed",
            State::Cancelled => "cancelled",
        }
    }
}

/// The attempt of a query that runs now (the last one, after a rerun).
struct AttemptView {
    physical: Arc<dyn ExecutionPlan>,
    placements: Arc<TaskPlacements>,
    /// The crate's query id of the plan and its remote stages (number, tasks).
    crate_query: Option<Vec<u8>>,
    stages: Vec<(u64, u64)>,
    /// Rows last reported per (stage, task), for every task seen running.
    seen: HashMap<(u64, u64), u64>,
    running: HashSet<(u64, u64)>,
}

struct Progress {
    state: State,
    rows: u64,
    bytes: u64,
    attempt: Option<AttemptView>,
}

/// One running query's entry.
struct Entry {
    id: String,
    user: Option<String>,
    sql: String,
    started: SystemTime,
    clock: Instant,
    token: CancellationToken,
    progress: Mutex<Progress>,
}

impl Entry {
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn info(&self, ended: Option<(State, Option<&QuiverEnd>)>) -> QueryInfo {
        let progress = self.progress();
        let state = ended.map(|(s, _)| s).unwrap_or(progress.state);
        let (error_code, error_message) = match ended.and_then(|(_, e)| e) {
            Some(end) => (Some(end.code.clone()), Some(end.message.clone())),
            None => (None, None),
        };
        let (executors, stages, explain_analyze) = match &progress.attempt {
            None => (Vec::new(), Vec::new(), None),
            Some(attempt) => {
                let executors = attempt
                    .placements
                    .executors()
                    .iter()
                    .map(|u| u.as_str().trim_end_matches('/').to_string())
                    .collect();
                let done_all = state == State::Finished;
                let stages = attempt
                    .stages
                    .iter()
                    .map(|&(stage, tasks_total)| {
                        let in_stage = |key: &&(u64, u64)| key.0 == stage;
                        let running = attempt.running.iter().filter(in_stage).count() as u64;
                        let seen = attempt.seen.keys().filter(in_stage).count() as u64;
                        let rows = attempt
                            .seen
                            .iter()
                            .filter(|(k, _)| k.0 == stage)
                            .map(|(_, rows)| *rows)
                            .sum();
                        StageProgress {
                            stage,
                            tasks_total,
                            tasks_done: if done_all {
                                tasks_total
                            } else {
                                seen.saturating_sub(running).min(tasks_total)
                            },
                            tasks_running: if done_all { 0 } else { running },
                            rows,
                        }
                    })
                    .collect();
                let explain = ended.map(|_| {
                    cut(distributed::render_plan_with_metrics(
                        attempt.physical.as_ref(),
                    ))
                });
                (executors, stages, explain)
            }
        };
        QueryInfo {
            id: self.id.clone(),
            user: self.user.clone(),
            sql: self.sql.clone(),
            state: state.name(),
            started_unix_ms: unix_ms(self.started),
            duration_ms: u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX),
            rows: progress.rows,
            bytes: progress.bytes,
            error_code,
            error_message,
            executors,
            stages,
            explain_analyze,
        }
    }
}

/// How a query that did not succeed ended.
struct QuiverEnd {
    code: String,
    message: String,
}

#[derive(Default)]
struct LogState {
    running: HashMap<String, Arc<Entry>>,
    /// Newest last.
    recent: VecDeque<(Instant, QueryInfo)>,
}

/// Every statement the coordinator runs; see the module docs.
#[derive(Default)]
pub(crate) struct QueryLog {
    state: Mutex<LogState>,
    observers: RwLock<Vec<Arc<dyn QueryObserver>>>,
}

impl std::fmt::Debug for QueryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryLog").finish_non_exhaustive()
    }
}

impl QueryLog {
    fn state(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn add_observer(&self, observer: Arc<dyn QueryObserver>) {
        self.observers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(observer);
    }

    fn observers(&self) -> Vec<Arc<dyn QueryObserver>> {
        self.observers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Opens the entry of a statement that starts running now. The entry ends when the
    /// returned handle says so, or as cancelled when the last clone of it is dropped first.
    pub(crate) fn start(
        self: &Arc<Self>,
        id: &str,
        user: Option<String>,
        sql: &str,
    ) -> QueryHandle {
        let entry = Arc::new(Entry {
            id: id.to_string(),
            user,
            sql: cut(sql.to_string()),
            started: SystemTime::now(),
            clock: Instant::now(),
            token: CancellationToken::new(),
            progress: Mutex::new(Progress {
                state: State::Running,
                rows: 0,
                bytes: 0,
                attempt: None,
            }),
        });
        self.state()
            .running
            .insert(entry.id.clone(), Arc::clone(&entry));
        let info = entry.info(None);
        for observer in self.observers() {
            observer.query_started(&info);
        }
        QueryHandle(Arc::new(HandleInner {
            log: Arc::clone(self),
            entry,
            ended: Mutex::new(false),
        }))
    }

    pub(crate) fn snapshot(&self) -> QueryLogSnapshot {
        let mut state = self.state();
        expire(&mut state.recent);
        let mut running: Vec<Arc<Entry>> = state.running.values().cloned().collect();
        let recent = state.recent.iter().rev().map(|(_, i)| i.clone()).collect();
        drop(state);
        running.sort_by_key(|e| e.clock);
        QueryLogSnapshot {
            running: running.iter().map(|e| e.info(None)).collect(),
            recent,
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<QueryInfo> {
        let state = self.state();
        if let Some(entry) = state.running.get(id) {
            let entry = Arc::clone(entry);
            drop(state);
            return Some(entry.info(None));
        }
        state
            .recent
            .iter()
            .rev()
            .find(|(_, info)| info.id == id)
            .map(|(_, info)| info.clone())
    }

    /// Cancels a running query (see the module docs for who may).
    pub(crate) fn cancel(&self, id: &str, caller: &Caller) -> Result<()> {
        let entry = {
            let state = self.state();
            match state.running.get(id) {
                Some(entry) => Arc::clone(entry),
                None if state.recent.iter().any(|(_, i)| i.id == id) => {
                    return Err(QuiverError::FailedPrecondition(format!(
                        "query {id} is not running any more"
                    )));
                }
                None => return Err(QuiverError::NotFound(format!("no query with id {id}"))),
            }
        };
        let allowed = caller.user.is_none() || caller.admin || caller.user == entry.user;
        if !allowed {
            return Err(QuiverError::PermissionDenied(format!(
                "query {id} belongs to another user: only its user or an administrator may cancel it"
            )));
        }
        tracing::info!(query_id = %id, by = caller.user.as_deref().unwrap_or("-"), "cancelling query on request");
        entry.token.cancel();
        Ok(())
    }

    /// The running queries' current attempts: their crate query ids and executors.
    pub(crate) fn polled_attempts(&self) -> Vec<(Vec<u8>, Vec<Url>)> {
        let entries: Vec<Arc<Entry>> = self.state().running.values().cloned().collect();
        entries
            .iter()
            .filter_map(|e| {
                let progress = e.progress();
                let attempt = progress.attempt.as_ref()?;
                let query = attempt.crate_query.clone()?;
                Some((query, attempt.placements.executors()))
            })
            .collect()
    }

    /// Records the tasks executors reported running now (`reported`: every task of every
    /// polled executor, for the queries in `polled`).
    pub(crate) fn observe(&self, polled: &[Vec<u8>], reported: &[RunningTask]) {
        let entries: Vec<Arc<Entry>> = self.state().running.values().cloned().collect();
        for entry in entries {
            let mut progress = entry.progress();
            let Some(attempt) = progress.attempt.as_mut() else {
                continue;
            };
            let Some(query) = &attempt.crate_query else {
                continue;
            };
            if !polled.contains(query) {
                continue;
            }
            attempt.running.clear();
            for task in reported.iter().filter(|t| &t.query == query) {
                let key = (task.stage, task.task);
                attempt.running.insert(key);
                let rows = attempt.seen.entry(key).or_default();
                *rows = (*rows).max(task.output_rows);
            }
        }
    }

    fn end(&self, entry: &Arc<Entry>, state: State, failure: Option<QuiverEnd>) {
        let info = entry.info(Some((state, failure.as_ref())));
        {
            let mut log = self.state();
            log.running.remove(&entry.id);
            log.recent.push_back((Instant::now(), info.clone()));
            while log.recent.len() > HISTORY_ENTRIES {
                log.recent.pop_front();
            }
            expire(&mut log.recent);
        }
        for observer in self.observers() {
            observer.query_ended(&info);
        }
    }
}

fn expire(recent: &mut VecDeque<(Instant, QueryInfo)>) {
    while recent
        .front()
        .is_some_and(|(ended, _)| ended.elapsed() > HISTORY_AGE)
    {
        recent.pop_front();
    }
}

struct HandleInner {
    log: Arc<QueryLog>,
    entry: Arc<Entry>,
    ended: Mutex<bool>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        // Dropped before it ended: the client went away (or the server stopped serving it).
        let ended = self.ended.get_mut().unwrap_or_else(|e| e.into_inner());
        if !*ended {
            *ended = true;
            self.log.end(
                &self.entry,
                State::Cancelled,
                Some(QuiverEnd {
                    code: quiver_client::status_code_name(Code::Cancelled).into(),
                    message: "the client went away before the result ended".into(),
                }),
            );
        }
    }
}

/// A running query's entry, as the front door and the engine update it. Clones share it.
#[derive(Clone)]
pub(crate) struct QueryHandle(Arc<HandleInner>);

impl std::fmt::Debug for QueryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("QueryHandle")
            .field(&self.0.entry.id)
            .finish()
    }
}

impl QueryHandle {
    /// Completes when someone cancels the query through the log.
    pub(crate) fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.0.entry.token.clone().cancelled_owned()
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.entry.token.is_cancelled()
    }

    /// The query waits for an admission slot.
    pub(crate) fn queued(&self) {
        self.0.entry.progress().state = State::Queued;
    }

    /// The query got its admission slot.
    pub(crate) fn admitted(&self) {
        self.0.entry.progress().state = State::Running;
    }

    /// An attempt of the query starts with this plan and placement log.
    pub(crate) fn attempt(
        &self,
        physical: &Arc<dyn ExecutionPlan>,
        placements: &Arc<TaskPlacements>,
    ) {
        let (crate_query, stages) = distributed::stage_shapes(physical);
        self.0.entry.progress().attempt = Some(AttemptView {
            physical: Arc::clone(physical),
            placements: Arc::clone(placements),
            crate_query,
            stages,
            seen: HashMap::new(),
            running: HashSet::new(),
        });
    }

    /// `rows` more rows (in `bytes` bytes) went to the client.
    pub(crate) fn sent(&self, rows: u64, bytes: u64) {
        let mut progress = self.0.entry.progress();
        progress.rows = progress.rows.saturating_add(rows);
        progress.bytes = progress.bytes.saturating_add(bytes);
    }

    /// Ends the entry: `Ok` finished, `Err` failed (or cancelled, by its code). Later calls do
    /// nothing.
    pub(crate) fn end(&self, outcome: std::result::Result<(), &tonic::Status>) {
        {
            let mut ended = self.0.ended.lock().unwrap_or_else(|e| e.into_inner());
            if *ended {
                return;
            }
            *ended = true;
        }
        match outcome {
            Ok(()) => self.0.log.end(&self.0.entry, State::Finished, None),
            Err(status) => {
                let state = if status.code() == Code::Cancelled {
                    State::Cancelled
                } else {
                    State::Failed
                };
                self.0.log.end(
                    &self.0.entry,
                    state,
                    Some(QuiverEnd {
                        code: quiver_client::status_code_name(status.code()).into(),
                        message: cut(status.message().to_string()),
                    }),
                );
            }
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `text` cut to [`MAX_TEXT_BYTES`] at a character boundary.
fn cut(mut text: String) -> String {
    if text.len() > MAX_TEXT_BYTES {
        let mut end = MAX_TEXT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(" …");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(user: Option<&str>, admin: bool) -> Caller {
        Caller {
            user: user.map(str::to_string),
            admin,
        }
    }

    #[test]
    fn an_entry_runs_then_ends_once_in_the_history() {
        let log = Arc::new(QueryLog::default());
        let handle = log.start("q1", Some("alice".into()), "SELECT 1");
        assert_eq!(log.snapshot().running.len(), 1);
        handle.sent(3, 100);
        handle.sent(2, 50);
        handle.end(Ok(()));
        handle.end(Err(&tonic::Status::internal("late")));
        drop(handle);
        let snapshot = log.snapshot();
        assert!(snapshot.running.is_empty());
        assert_eq!(snapshot.recent.len(), 1);
        let info = &snapshot.recent[0];
        assert_eq!((info.state, info.rows, info.bytes), ("finished", 5, 150));
        assert_eq!(info.error_code, None);
        assert_eq!(log.get("q1").map(|i| i.state), Some("finished"));
    }

    #[test]
    fn failures_keep_their_code_and_a_dropped_handle_is_cancelled() {
        let log = Arc::new(QueryLog::default());
        log.start("q1", None, "SELECT x")
            .end(Err(&tonic::Status::not_found("table 'x' not found")));
        drop(log.start("q2", None, "SELECT 2"));
        let q1 = log.get("q1").unwrap();
        assert_eq!(
            (q1.state, q1.error_code.as_deref()),
            ("failed", Some("NOT_FOUND"))
        );
        let q2 = log.get("q2").unwrap();
        assert_eq!(
            (q2.state, q2.error_code.as_deref()),
            ("cancelled", Some("CANCELLED"))
        );
    }

    #[test]
    fn only_the_user_or_an_admin_may_cancel() {
        let log = Arc::new(QueryLog::default());
        let handle = log.start("q1", Some("alice".into()), "SELECT 1");
        let denied = log.cancel("q1", &caller(Some("bob"), false)).unwrap_err();
        assert!(
            matches!(denied, QuiverError::PermissionDenied(_)),
            "{denied:?}"
        );
        assert!(!handle.is_cancelled());
        log.cancel("q1", &caller(Some("root"), true)).unwrap();
        assert!(handle.is_cancelled());
        let unknown = log.cancel("nope", &caller(None, false)).unwrap_err();
        assert!(matches!(unknown, QuiverError::NotFound(_)), "{unknown:?}");
        handle.end(Err(&tonic::Status::cancelled("cancelled")));
        let ended = log.cancel("q1", &caller(None, false)).unwrap_err();
        assert!(
            matches!(ended, QuiverError::FailedPrecondition(_)),
            "{ended:?}"
        );
    }

    #[test]
    fn the_history_is_bounded() {
        let log = Arc::new(QueryLog::default());
        for i in 0..HISTORY_ENTRIES + 10 {
            log.start(&format!("q{i}"), None, "SELECT 1").end(Ok(()));
        }
        let recent = log.snapshot().recent;
        assert_eq!(recent.len(), HISTORY_ENTRIES);
        assert_eq!(recent[0].id, format!("q{}", HISTORY_ENTRIES + 9));
        assert!(log.get("q0").is_none());
        assert_eq!(
            cut("é".repeat(MAX_TEXT_BYTES)).len(),
            MAX_TEXT_BYTES + " …".len()
        );
    }

    struct Counting(Mutex<(usize, Vec<String>)>);

    impl QueryObserver for Counting {
        fn query_started(&self, _: &QueryInfo) {
            self.0.lock().unwrap().0 += 1;
        }
        fn query_ended(&self, info: &QueryInfo) {
            self.0
                .lock()
                .unwrap()
                .1
                .push(info.error_code.clone().unwrap_or_else(|| "OK".into()));
        }
    }

    #[test]
    fn observers_see_every_start_and_end() {
        let log = Arc::new(QueryLog::default());
        let counting = Arc::new(Counting(Mutex::new((0, Vec::new()))));
        log.add_observer(Arc::clone(&counting) as Arc<dyn QueryObserver>);
        log.start("a", None, "SELECT 1").end(Ok(()));
        log.start("b", None, "SELECT 1")
            .end(Err(&tonic::Status::invalid_argument("bad")));
        let seen = counting.0.lock().unwrap().clone();
        assert_eq!(seen, (2, vec!["OK".to_string(), "INVALID_ARGUMENT".into()]));
    }
}
