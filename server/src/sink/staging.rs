//! The write journal and the collector of what failed, cancelled or crashed writes left behind.
//!
//! Contract:
//! * every write is recorded in the catalog file's journal ([`PendingWrite`]) before any of its
//!   files exist, with where it writes: a managed table's directory (its files carry the write's
//!   id in their names: `part-<write id>-…`) or a `COPY` target (its files sit under
//!   `<target>/_staging/<write id>/` until the commit moves them);
//! * [`StagingCollector::collect`] removes, for every journaled write that is not running in this
//!   process, the files it left: in a table directory, its files the catalog does not reference
//!   (a committed write's files are referenced and stay); under a `COPY` target, its staging
//!   directory. It never deletes a file a table references, and never touches a write still
//!   running here. An entry is kept for a grace period after its write started, so a task that
//!   was still finishing a file on a lost or partitioned executor is collected on a later pass;
//!   after the grace period the entry is dropped;
//! * the coordinator collects on start (a crash's leftovers go at once: no write of the previous
//!   process can commit any more) and then periodically.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datafusion::execution::runtime_env::RuntimeEnv;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::files::store_error;
use crate::error::Result;
use crate::ids::WriteId;
use crate::storage::catalog::{Catalog, PendingKind, PendingWrite};
use crate::storage::managed_table::data_file_path;
use crate::storage::object_stores::{self, StoreOptions};
use crate::task::{self, AbortOnDrop};

/// Where a `COPY` stages its files, under its target.
pub(crate) const STAGING_DIR: &str = "_staging";

/// Keeps the journal and collects leftovers; see the module contract.
#[derive(Debug)]
pub(crate) struct StagingCollector {
    catalog: Arc<Catalog>,
    runtime: Arc<RuntimeEnv>,
    /// Writes of this process that have not ended.
    running: Arc<Mutex<HashSet<String>>>,
    grace: Duration,
}

/// A write in progress: it stays in the running set until dropped. One dropped before it was
/// settled (its caller went away: a client that hung up) has its leftovers removed at once, in
/// a task of their own.
#[derive(Debug)]
pub(crate) struct RunningWrite {
    id: WriteId,
    running: Arc<Mutex<HashSet<String>>>,
    collector: Weak<StagingCollector>,
    settled: bool,
}

impl RunningWrite {
    pub(crate) fn id(&self) -> &WriteId {
        &self.id
    }

    /// The write ended and whatever it left was dealt with: nothing to do when dropped.
    pub(crate) fn settle(&mut self) {
        self.settled = true;
    }
}

impl Drop for RunningWrite {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.id.as_str());
        if self.settled {
            return;
        }
        if let Some(collector) = self.collector.upgrade() {
            let id = self.id.clone();
            task::detach("removing an abandoned write's files", async move {
                collector.discard_leftovers(&id).await;
            });
        }
    }
}

impl StagingCollector {
    pub(crate) fn new(catalog: Arc<Catalog>, runtime: Arc<RuntimeEnv>, grace: Duration) -> Self {
        Self {
            catalog,
            runtime,
            running: Arc::default(),
            grace,
        }
    }

    /// Journals a new write into `location` before it writes anything.
    pub(crate) async fn begin(
        self: &Arc<Self>,
        location: &str,
        kind: PendingKind,
    ) -> Result<RunningWrite> {
        let id = WriteId::random();
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.as_str().to_string());
        let mut write = RunningWrite {
            id,
            running: Arc::clone(&self.running),
            collector: Arc::downgrade(self),
            settled: false,
        };
        let entry = PendingWrite {
            id: write.id.as_str().to_string(),
            location: location.to_string(),
            kind,
            started_unix_ms: now_ms(),
        };
        if let Err(e) = self.catalog.lock().await.add_pending(entry) {
            // Nothing was written under it.
            write.settle();
            return Err(e);
        }
        Ok(write)
    }

    /// Removes what `write` left that its commit did not make visible (after a failed attempt,
    /// a failed or cancelled write). Best effort: what it misses, [`Self::collect`] gets later.
    pub(crate) async fn discard_leftovers(&self, write: &WriteId) {
        let entry = {
            let guard = self.catalog.lock().await;
            guard.pending().into_iter().find(|p| p.id == write.as_str())
        };
        if let Some(entry) = entry
            && let Err(e) = self.clean(&entry).await
        {
            tracing::warn!(write = %write, location = %entry.location, error = %e, "could not remove a write's leftover files");
        }
    }

    /// One collection pass over the journal; see the module contract.
    pub(crate) async fn collect(&self) {
        let pending = self.catalog.lock().await.pending();
        for entry in pending {
            let running = self
                .running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&entry.id);
            if running {
                continue;
            }
            match self.clean(&entry).await {
                Ok(removed) if removed > 0 => {
                    tracing::info!(write = %entry.id, location = %entry.location, files = removed, "removed files a failed or interrupted write left");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(write = %entry.id, location = %entry.location, error = %e, "could not collect a write's staging; will retry");
                    continue;
                }
            }
            let age = now_ms().saturating_sub(entry.started_unix_ms);
            if u128::from(age) >= self.grace.as_millis() {
                let removed = self.catalog.lock().await.remove_pending(&entry.id);
                if let Err(e) = removed {
                    tracing::warn!(write = %entry.id, error = %e, "could not drop a write from the journal");
                }
            }
        }
    }

    /// Collects now and then every `every`, until the handle is dropped.
    pub(crate) fn run_periodically(self: Arc<Self>, every: Duration) -> AbortOnDrop {
        AbortOnDrop::spawn_named("staging collector", async move {
            loop {
                self.collect().await;
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Deletes what the journaled write left; returns the number of files removed.
    async fn clean(&self, entry: &PendingWrite) -> Result<usize> {
        let (store, base) = self.resolve(&entry.location).await?;
        match entry.kind {
            PendingKind::Copy => {
                let staging = data_file_path(&base, &format!("{STAGING_DIR}/{}", entry.id))?;
                delete_all(store.as_ref(), &staging, |_| true).await
            }
            PendingKind::Table => {
                let referenced: HashSet<ObjectPath> = {
                    let guard = self.catalog.lock().await;
                    guard
                        .referenced_files(&entry.location)
                        .into_iter()
                        .filter_map(|rel| data_file_path(&base, &rel).ok())
                        .collect()
                };
                let marker = format!("part-{}-", entry.id);
                delete_all(store.as_ref(), &base, |path| {
                    path.filename()
                        .is_some_and(|name| name.starts_with(&marker))
                        && !referenced.contains(path)
                })
                .await
            }
        }
    }

    /// The store of `location` and the location's path in it.
    async fn resolve(&self, location: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath)> {
        let options: StoreOptions = match object_stores::store_root(location)? {
            Some(root) => self.catalog.lock().await.store_options(&root),
            None => StoreOptions::new(),
        };
        object_stores::resolve(self.runtime.as_ref(), location, &options)
    }
}

/// Deletes every object under `prefix` that `doomed` picks; returns how many it deleted.
async fn delete_all(
    store: &dyn ObjectStore,
    prefix: &ObjectPath,
    doomed: impl Fn(&ObjectPath) -> bool,
) -> Result<usize> {
    let listed: Vec<ObjectPath> = match store.list(Some(prefix)).try_collect::<Vec<_>>().await {
        Ok(objects) => objects.into_iter().map(|o| o.location).collect(),
        // A directory that was never created holds nothing to collect.
        Err(object_store::Error::NotFound { .. }) => return Ok(0),
        Err(e) => return Err(store_error(e)),
    };
    let mut deleted = 0;
    for path in listed.iter().filter(|p| doomed(p)) {
        match store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
            Err(e) => return Err(store_error(e)),
        }
    }
    Ok(deleted)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::storage::catalog::{ManagedFile, TableDef};

    fn touch(path: &std::path::Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"data").unwrap();
    }

    #[tokio::test]
    async fn collects_what_failed_writes_left_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let catalog =
            Arc::new(Catalog::load(Some(dir.path().join("catalog.toml")), vec![]).unwrap());
        let table = format!("{}/t/", dir.path().display());
        let target = format!("{}/out/", dir.path().display());
        let collector = Arc::new(StagingCollector::new(
            Arc::clone(&catalog),
            Arc::new(RuntimeEnv::default()),
            Duration::from_secs(3600),
        ));

        // A write that committed one file and left another (a dead attempt's).
        let mut committed = collector.begin(&table, PendingKind::Table).await.unwrap();
        let id = committed.id().as_str().to_string();
        let kept = format!("p=a%2Fb/part-{id}-x-0-0-0.parquet");
        let left = format!("p=a%2Fb/part-{id}-y-0-0-0.parquet");
        let other = "part-someone-else-0-0-0.parquet";
        for f in [&kept, &left, &other.to_string()] {
            touch(&dir.path().join("t").join(f));
        }
        let schema = Schema::new(vec![
            Field::new("v", DataType::Int64, true),
            Field::new("p", DataType::Utf8, true),
        ]);
        let def = TableDef::managed(
            "t",
            &table,
            vec![ManagedFile {
                path: kept.clone(),
                rows: 1,
                bytes: 4,
            }],
            &schema,
            vec!["p".into()],
        )
        .unwrap();
        catalog.lock().await.add(def).unwrap();

        // A COPY that crashed before its commit.
        let mut copy = collector.begin(&target, PendingKind::Copy).await.unwrap();
        let staged = dir
            .path()
            .join("out")
            .join(STAGING_DIR)
            .join(copy.id().as_str())
            .join("part-1.csv");
        touch(&staged);
        let result = dir.path().join("out").join("old-result.csv");
        touch(&result);

        // Running writes are never touched.
        collector.collect().await;
        assert!(dir.path().join("t").join(&left).exists());
        assert!(staged.exists());

        // Settled writes leave their leftovers to the collector.
        committed.settle();
        copy.settle();
        drop(committed);
        drop(copy);
        collector.collect().await;
        assert!(dir.path().join("t").join(&kept).exists(), "referenced");
        assert!(!dir.path().join("t").join(&left).exists(), "unreferenced");
        assert!(dir.path().join("t").join(other).exists(), "another write's");
        assert!(!staged.exists());
        assert!(result.exists(), "files outside the staging directory stay");
        // Within the grace period the entries stay (a late file is collected next time).
        assert_eq!(catalog.lock().await.pending().len(), 2);

        // A write dropped unsettled (its client hung up) has its leftovers removed at once.
        let abandoned = collector.begin(&table, PendingKind::Table).await.unwrap();
        let orphan = dir
            .path()
            .join("t")
            .join(format!("part-{}-z-0-0-0.parquet", abandoned.id()));
        touch(&orphan);
        drop(abandoned);
        for _ in 0..100 {
            if !orphan.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!orphan.exists(), "an abandoned write's file stayed");
        assert!(dir.path().join("t").join(&kept).exists());

        let impatient = StagingCollector::new(
            Arc::clone(&catalog),
            Arc::new(RuntimeEnv::default()),
            Duration::ZERO,
        );
        impatient.collect().await;
        assert!(catalog.lock().await.pending().is_empty());
        let persisted = std::fs::read_to_string(dir.path().join("catalog.toml")).unwrap();
        assert!(!persisted.contains("pending_writes"), "{persisted}");
    }
}
