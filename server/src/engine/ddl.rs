//! Catalog DDL: `CREATE EXTERNAL TABLE`, `CREATE VIEW`, `DROP TABLE`, `DROP VIEW`.
//!
//! Contract: under the catalog lock, a statement changes the planning session and then the
//! catalog file (atomic, fsynced); what could not be persisted is undone in the session, so
//! memory and disk agree. Tables defined by `--table` flags cannot be changed with SQL. An
//! external location must be absolute (every executor resolves it alike) and inside the
//! `[locations]` policy when there is one. Dropping or replacing a managed table deletes the
//! files it no longer references.

use std::sync::Arc;

use datafusion::logical_expr::{DdlStatement, DropTable, DropView, LogicalPlan};
use datafusion::prelude::SessionContext;

use crate::config::LocationPolicy;
use crate::error::{QuiverError, Result};
use crate::storage::catalog::{Catalog, TableDef};
use crate::storage::object_stores;

use super::writes::TableWriter;
use super::{Statement, table_name};

pub(super) async fn run(
    ctx: &SessionContext,
    catalog: &Arc<Catalog>,
    locations: Option<&LocationPolicy>,
    writer: &TableWriter,
    statement: &Statement,
) -> Result<()> {
    let LogicalPlan::Ddl(ddl) = &statement.plan else {
        return Err(QuiverError::Internal("not a catalog statement".into()));
    };
    // What the statement names, and for creations the location recorded in the catalog.
    let (reference, created_at) = match ddl {
        DdlStatement::CreateExternalTable(cmd) => (
            &cmd.name,
            Some(external_location(locations, &cmd.locations)?),
        ),
        DdlStatement::CreateView(cmd) => (&cmd.name, Some(String::new())),
        DdlStatement::DropTable(DropTable { name, .. })
        | DdlStatement::DropView(DropView { name, .. }) => (name, None),
        other => {
            return Err(QuiverError::Internal(format!(
                "not a catalog statement: {}",
                other.name()
            )));
        }
    };
    let name = table_name(reference)?;
    let mut guard = catalog.lock().await;
    if guard.is_flag_table(&name) {
        return Err(QuiverError::InvalidArgument(format!(
            "table '{name}' is defined by a --table flag: change the flag instead of using SQL"
        )));
    }
    let previous = guard.get(&name).cloned();
    let Some(url) = created_at else {
        let existed = ctx.table_exist(reference.clone())?;
        ctx.execute_logical_plan(statement.plan.clone()).await?;
        guard.remove(&name)?;
        drop(guard);
        if let Some(previous) = previous {
            writer.discard_files(&previous).await;
        }
        if existed {
            tracing::info!(table = %name, "dropped");
        }
        return Ok(());
    };
    if let Some(root) = object_stores::store_root(&url)? {
        let options = guard.store_options(&root);
        object_stores::ensure_registered(ctx.runtime_env().as_ref(), &root, &options)?;
    }
    let existed = ctx.table_exist(reference.clone())?;
    ctx.execute_logical_plan(statement.plan.clone()).await?;
    let replaced = matches!(ddl, DdlStatement::CreateExternalTable(c) if c.or_replace)
        || matches!(ddl, DdlStatement::CreateView(c) if c.or_replace);
    if existed && !replaced {
        // IF NOT EXISTS on an existing table: nothing changed.
        return Ok(());
    }
    let def = TableDef {
        name: name.clone(),
        url,
        format: None,
        options: Default::default(),
        ddl: Some(statement.sql.clone()),
        managed: false,
        files: Vec::new(),
        partition_by: Vec::new(),
        schema: None,
    };
    if let Err(e) = guard.add(def) {
        // Keep memory and disk in agreement: what is not persisted does not exist.
        let _ = ctx.deregister_table(reference.clone());
        return Err(e);
    }
    drop(guard);
    if let Some(previous) = previous {
        writer.discard_files(&previous).await;
    }
    tracing::info!(table = %name, "created");
    Ok(())
}

/// The one location of `CREATE EXTERNAL TABLE`, which every executor must resolve alike.
fn external_location(policy: Option<&LocationPolicy>, locations: &[String]) -> Result<String> {
    let [location] = locations else {
        return Err(QuiverError::Unsupported(
            "CREATE EXTERNAL TABLE with several locations is not supported".into(),
        ));
    };
    let remote = object_stores::store_root(location)?.is_some();
    if !remote && !location.starts_with("file://") && !location.starts_with('/') {
        return Err(QuiverError::InvalidArgument(format!(
            "LOCATION '{location}' must be an absolute path or a URL: every executor resolves it"
        )));
    }
    if let Some(policy) = policy {
        policy.check(location)?;
    }
    Ok(location.clone())
}
