//! Plans made at `GetFlightInfo`, kept for the `DoGet` of the same ticket: a query is planned
//! once.
//!
//! Clients run a statement as `GetFlightInfo` (which must plan it, to announce its schema) and
//! then `DoGet` of the ticket it returned, usually within milliseconds. `GetFlightInfo` of a
//! query (not of an update, which already ran there) keeps the engine's planned query, physical
//! plan included, under the ticket's [`QueryId`]; `DoGet` takes it out and runs it without
//! planning again. Contract:
//! * tickets stay stateless for correctness: the cache only saves work. A ticket whose entry is
//!   missing (served by another coordinator, after a restart, expired, evicted, already used)
//!   or does not match is a miss, and `DoGet` plans from the ticket's SQL as it would without
//!   the cache;
//! * an entry serves only the ticket it was made for: the same SQL text, the same bound
//!   parameter values and the same user ([`PlanKey`]); anything else (a hand-made or tampered
//!   ticket reusing an id) is a miss;
//! * an entry is used at most once: taking it removes it, whether it matched or not (a ticket
//!   fetched twice plans again the second time, as every ticket did before);
//! * bounded in number ([`MAX_ENTRIES`], the oldest evicted first) and in age ([`MAX_AGE`]);
//!   expired entries are dropped lazily, when an entry is added, and are never served;
//! * memory: a physical plan holds no data, only its operators, expressions and file lists;
//!   statements whose SQL and parameters together exceed [`MAX_STATEMENT_BYTES`] are not kept
//!   (the plan holds the text and the values too), so the cache holds a few hundred MiB at the
//!   very worst and typically a few KiB;
//! * hits and misses are counted (and logged at debug level), so tests can tell a plan was
//!   reused.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;

use super::handles::BoundSql;
use crate::ids::QueryId;

/// Most plans kept at once. A client fetches its ticket right after `GetFlightInfo`, so live
/// entries are about the queries being started right now, far fewer than this; the rest are
/// tickets never fetched (a client that failed or only wanted the schema), which must not pile
/// up.
pub(super) const MAX_ENTRIES: usize = 1024;

/// How long a plan is kept for its `DoGet`. Clients fetch within milliseconds; a minute covers a
/// slow or paused client, and keeps a plan from outliving by much the catalog it was made
/// against (a later `DoGet` plans afresh).
pub(super) const MAX_AGE: Duration = Duration::from_secs(60);

/// Statements with more SQL and parameter bytes than this are planned again at `DoGet` rather
/// than kept, so that [`MAX_ENTRIES`] entries stay small whatever clients send.
pub(super) const MAX_STATEMENT_BYTES: usize = 64 * 1024;

/// What an entry was made for; a `DoGet` must present the same to use it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PlanKey {
    pub(super) sql: String,
    pub(super) parameters: Option<RecordBatch>,
    /// The authenticated user (`None` when authentication is off). Not the session: session
    /// options do not change a query's plan, and a client may switch from a password to its
    /// token (a new session key) between the two calls.
    pub(super) user: Option<String>,
}

impl PlanKey {
    /// What `bound`, run by `user`, presents.
    pub(super) fn new(bound: &BoundSql, user: Option<String>) -> Self {
        Self {
            sql: bound.sql.clone(),
            parameters: bound.parameters.clone(),
            user,
        }
    }

    /// Whether a statement this large is worth keeping (see [`MAX_STATEMENT_BYTES`]).
    fn fits(&self) -> bool {
        let parameters = self
            .parameters
            .as_ref()
            .map_or(0, RecordBatch::get_array_memory_size);
        self.sql.len().saturating_add(parameters) <= MAX_STATEMENT_BYTES
    }
}

/// Why a `DoGet` planned again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Miss {
    /// No entry under the ticket's id (another coordinator, a restart, evicted, used, no id).
    Unknown,
    /// The entry was older than [`MAX_AGE`].
    Expired,
    /// The ticket's SQL, parameters or user differ from the entry's.
    Mismatch,
    /// The engine says the plan is out of date (a table it reads changed).
    Stale,
}

impl Miss {
    fn reason(self) -> &'static str {
        match self {
            Self::Unknown => "no plan kept for this ticket",
            Self::Expired => "the kept plan expired",
            Self::Mismatch => "the ticket differs from the one the plan was made for",
            Self::Stale => "a table the plan reads changed since it was made",
        }
    }
}

/// How often `DoGet` reused a plan.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PlanCacheStats {
    pub(super) hits: u64,
    pub(super) misses: u64,
}

/// Plans by query id; see the module contract. `T` is the engine's planned query.
pub(super) struct PlanCache<T> {
    state: Mutex<State<T>>,
    max_entries: usize,
    max_age: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct State<T> {
    entries: HashMap<QueryId, Entry<T>>,
    /// Insertion order: sequence number to id, oldest first.
    order: BTreeMap<u64, QueryId>,
    next: u64,
}

struct Entry<T> {
    key: PlanKey,
    planned: T,
    made: Instant,
    /// Its place in [`State::order`].
    seq: u64,
}

impl<T> Default for PlanCache<T> {
    fn default() -> Self {
        Self::with_limits(MAX_ENTRIES, MAX_AGE)
    }
}

impl<T> std::fmt::Debug for PlanCache<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanCache")
            .field("entries", &self.state().entries.len())
            .finish_non_exhaustive()
    }
}

impl<T> PlanCache<T> {
    pub(super) fn with_limits(max_entries: usize, max_age: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                entries: HashMap::new(),
                order: BTreeMap::new(),
                next: 0,
            }),
            max_entries,
            max_age,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `planned` for the `DoGet` of ticket `id`, made for `key`. Drops expired entries,
    /// then the oldest ones while full. A statement too large to keep is not kept.
    pub(super) fn insert(&self, id: QueryId, key: PlanKey, planned: T) {
        if !key.fits() || self.max_entries == 0 {
            return;
        }
        let now = Instant::now();
        let mut state = self.state();
        let State {
            entries,
            order,
            next,
        } = &mut *state;
        // Oldest first: stop at the first entry still young enough to keep.
        while let Some(entry) = order.first_key_value().and_then(|(_, id)| entries.get(id)) {
            if now.duration_since(entry.made) < self.max_age && entries.len() < self.max_entries {
                break;
            }
            if let Some((_, oldest)) = order.pop_first() {
                entries.remove(&oldest);
            }
        }
        let seq = *next;
        *next += 1;
        order.insert(seq, id.clone());
        if let Some(replaced) = entries.insert(
            id,
            Entry {
                key,
                planned,
                made: now,
                seq,
            },
        ) {
            // Ids are random, so this is a ticket planned twice under one id: the newer wins.
            order.remove(&replaced.seq);
        }
    }

    /// Takes the entry of ticket `id` out (whether it serves `key` or not): the plan if it was
    /// made for `key` and has not expired.
    pub(super) fn take(&self, id: &QueryId, key: &PlanKey) -> Result<T, Miss> {
        let entry = {
            let mut state = self.state();
            let entry = state.entries.remove(id).ok_or(Miss::Unknown)?;
            state.order.remove(&entry.seq);
            entry
        };
        if entry.made.elapsed() >= self.max_age {
            return Err(Miss::Expired);
        }
        if &entry.key != key {
            return Err(Miss::Mismatch);
        }
        Ok(entry.planned)
    }

    /// Forgets ticket `id`'s plan (its query was cancelled before `DoGet`).
    pub(super) fn remove(&self, id: &QueryId) {
        let mut state = self.state();
        if let Some(entry) = state.entries.remove(id) {
            state.order.remove(&entry.seq);
        }
    }

    /// Counts and logs what a `DoGet` of ticket `id` found; the plan on a hit.
    pub(super) fn counted(&self, id: Option<&QueryId>, outcome: Result<T, Miss>) -> Option<T> {
        let query_id = id.map(QueryId::as_str).unwrap_or_default();
        match outcome {
            Ok(planned) => {
                let hits = self.hits.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(query_id, hits, "DoGet runs the plan made at GetFlightInfo");
                Some(planned)
            }
            Err(miss) => {
                let misses = self.misses.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(
                    query_id,
                    misses,
                    reason = miss.reason(),
                    "DoGet plans the ticket's SQL again"
                );
                None
            }
        }
    }

    /// Hits and misses so far.
    #[cfg(test)]
    pub(super) fn stats(&self) -> PlanCacheStats {
        PlanCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// Entries kept now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        let state = self.state();
        debug_assert_eq!(state.entries.len(), state.order.len());
        state.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};

    use super::*;

    fn key(sql: &str) -> PlanKey {
        PlanKey {
            sql: sql.into(),
            parameters: None,
            user: None,
        }
    }

    #[test]
    fn a_plan_serves_its_own_ticket_once() {
        let cache = PlanCache::default();
        let id = QueryId::random();
        cache.insert(id.clone(), key("SELECT 1"), 1);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.take(&id, &key("SELECT 1")), Ok(1));
        // Removed on use: a second DoGet of the ticket plans again.
        assert_eq!(cache.take(&id, &key("SELECT 1")), Err(Miss::Unknown));
        assert_eq!(cache.len(), 0);
        assert_eq!(
            cache.take(&QueryId::random(), &key("SELECT 1")),
            Err(Miss::Unknown)
        );
    }

    #[test]
    fn another_sql_parameter_or_user_is_a_miss_and_uses_the_entry_up() {
        let values = |v: i64| {
            RecordBatch::try_from_iter(vec![("0", Arc::new(Int64Array::from(vec![v])) as _)])
                .unwrap()
        };
        let made_for = PlanKey {
            sql: "SELECT $1".into(),
            parameters: Some(values(7)),
            user: Some("alice".into()),
        };
        let others = [
            PlanKey {
                sql: "SELECT $1 + 1".into(),
                ..made_for.clone()
            },
            PlanKey {
                parameters: Some(values(8)),
                ..made_for.clone()
            },
            PlanKey {
                parameters: None,
                ..made_for.clone()
            },
            PlanKey {
                user: Some("mallory".into()),
                ..made_for.clone()
            },
            PlanKey {
                user: None,
                ..made_for.clone()
            },
        ];
        let cache = PlanCache::default();
        for other in others {
            let id = QueryId::random();
            cache.insert(id.clone(), made_for.clone(), "plan");
            assert_eq!(cache.take(&id, &other), Err(Miss::Mismatch), "{other:?}");
            // The mismatch used the entry up: not even its own ticket finds it now.
            assert_eq!(cache.take(&id, &made_for), Err(Miss::Unknown));
        }
        let id = QueryId::random();
        cache.insert(id.clone(), made_for.clone(), "plan");
        assert_eq!(cache.take(&id, &made_for.clone()), Ok("plan"));
    }

    #[test]
    fn full_evicts_the_oldest_first() {
        let cache = PlanCache::with_limits(3, MAX_AGE);
        let ids: Vec<QueryId> = (0..5).map(|_| QueryId::random()).collect();
        for (i, id) in ids.iter().enumerate() {
            cache.insert(id.clone(), key("SELECT 1"), i);
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.len(), 3);
        for (i, id) in ids.iter().enumerate() {
            let expected = if i < 2 { Err(Miss::Unknown) } else { Ok(i) };
            assert_eq!(cache.take(id, &key("SELECT 1")), expected, "entry {i}");
        }
        // Taking entries frees their places: nothing younger is evicted for them.
        let cache = PlanCache::with_limits(2, MAX_AGE);
        let (a, b, c) = (QueryId::random(), QueryId::random(), QueryId::random());
        cache.insert(a.clone(), key("a"), 'a');
        cache.insert(b.clone(), key("b"), 'b');
        assert_eq!(cache.take(&a, &key("a")), Ok('a'));
        cache.insert(c.clone(), key("c"), 'c');
        assert_eq!(cache.take(&b, &key("b")), Ok('b'));
        assert_eq!(cache.take(&c, &key("c")), Ok('c'));
    }

    #[test]
    fn expired_entries_are_never_served_and_dropped_on_insert() {
        let cache = PlanCache::with_limits(MAX_ENTRIES, Duration::from_millis(20));
        let (old, older) = (QueryId::random(), QueryId::random());
        cache.insert(older.clone(), key("SELECT 1"), 1);
        cache.insert(old.clone(), key("SELECT 1"), 2);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.take(&old, &key("SELECT 1")), Err(Miss::Expired));
        assert_eq!(cache.len(), 1);
        // Adding an entry drops the expired ones.
        let fresh = QueryId::random();
        cache.insert(fresh.clone(), key("SELECT 1"), 3);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.take(&older, &key("SELECT 1")), Err(Miss::Unknown));
        assert_eq!(cache.take(&fresh, &key("SELECT 1")), Ok(3));
    }

    #[test]
    fn large_statements_are_not_kept_and_cancelled_ones_forgotten() {
        let cache = PlanCache::default();
        let id = QueryId::random();
        let long = key(&format!("SELECT '{}'", "x".repeat(MAX_STATEMENT_BYTES)));
        cache.insert(id.clone(), long.clone(), ());
        assert_eq!(cache.take(&id, &long), Err(Miss::Unknown));
        let big_values = PlanKey {
            parameters: Some(
                RecordBatch::try_from_iter(vec![(
                    "0",
                    Arc::new(StringArray::from(vec!["x".repeat(MAX_STATEMENT_BYTES)])) as _,
                )])
                .unwrap(),
            ),
            ..key("SELECT $1")
        };
        cache.insert(id.clone(), big_values.clone(), ());
        assert_eq!(cache.take(&id, &big_values), Err(Miss::Unknown));

        cache.insert(id.clone(), key("SELECT 1"), ());
        cache.remove(&id);
        assert_eq!(cache.take(&id, &key("SELECT 1")), Err(Miss::Unknown));
    }

    #[test]
    fn hits_and_misses_are_counted() {
        let cache = PlanCache::default();
        let id = QueryId::random();
        cache.insert(id.clone(), key("SELECT 1"), 1);
        assert_eq!(
            cache.counted(Some(&id), cache.take(&id, &key("SELECT 1"))),
            Some(1)
        );
        assert_eq!(
            cache.counted(Some(&id), cache.take(&id, &key("SELECT 1"))),
            None
        );
        assert_eq!(cache.counted(None, Err(Miss::Stale)), None);
        assert_eq!(cache.stats(), PlanCacheStats { hits: 1, misses: 2 });
    }
}
