//! Statements: SQL planned without side effects, classified, and bound to parameter values.
//!
//! [`Statement::plan`] turns SQL into a logical plan and decides what kind of statement it is
//! ([`StatementKind`]), which decides how clients run it: queries and `EXPLAIN` return rows,
//! DDL and writes return none (an empty schema, so JDBC runs them as updates). Planning runs
//! nothing, DDL included. `?` placeholders become `$1..$n`; each is announced as one nullable
//! field, typed where DataFusion inferred a type and Utf8 otherwise. `CREATE TABLE … PARTITIONED
//! BY (col, …)` (Hive syntax, which DataFusion does not plan) is taken apart here: the partition
//! columns are kept on the statement and the rest planned as usual. Statements Quiver does not
//! run are refused here with a code that says why: `SET`/`RESET` are `PermissionDenied`,
//! temporary objects, other DDL and DML `Unimplemented`. `CALL system.cancel_query('id')` is a
//! [`Procedure`]: planned here, run by the front door (which knows who calls it) as an update.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::execution::SessionState;
use datafusion::logical_expr::EmptyRelation;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, Statement as LogicalStatement, WriteOp};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    DataType as SqlDataType, Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments,
    HiveDistributionStyle, Statement as SqlStatement, Value as SqlValue,
};

use crate::arrow_compat::{plain_schema, plain_type};
use crate::error::{QuiverError, Result};

use super::placeholders::number_placeholders;
use super::scalar_subqueries;

/// What a statement does, which decides how clients run it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StatementKind {
    /// Returns rows.
    Query,
    /// Changes the catalog; returns no rows and an empty schema.
    Ddl,
    /// Writes data (`CREATE TABLE`, `INSERT`, `COPY`); returns a row count, not rows.
    Write,
    /// `EXPLAIN` / `EXPLAIN ANALYZE`: returns the plan as rows.
    Explain { analyze: bool },
}

impl StatementKind {
    /// DDL and writes: no result rows, an empty schema, run once as an update.
    pub(crate) fn is_update(self) -> bool {
        matches!(self, Self::Ddl | Self::Write)
    }
}

/// A built-in procedure (`CALL system.…`); the front door runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Procedure {
    /// `CALL system.cancel_query('id')`.
    CancelQuery(String),
}

/// A planned statement.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub(crate) sql: String,
    pub(crate) kind: StatementKind,
    /// A `CALL` of a built-in procedure (then `kind` is `Ddl` and `plan` empty).
    pub(crate) procedure: Option<Procedure>,
    /// The query log's entry of the statement's run, set by the front door when it runs it.
    pub(crate) tracker: Option<crate::ops::queries::QueryHandle>,
    /// The schema clients receive.
    pub(crate) schema: SchemaRef,
    /// Placeholders still to bind, in position order (`$1`, `$2`, ...).
    pub(crate) parameters: Vec<Field>,
    /// Per parameter: whether DataFusion inferred its type (else it is announced as Utf8 and a
    /// bound value keeps its own type).
    typed: Vec<bool>,
    pub(super) plan: LogicalPlan,
    /// `CREATE TABLE … PARTITIONED BY (…)`: the partition columns, in order.
    pub(super) partition_by: Vec<String>,
    /// The roll size of the files a write makes, when the client's session sets one.
    pub(super) target_file_bytes: Option<u64>,
}

impl Statement {
    /// Plans `sql` without running it or changing anything.
    pub(super) async fn plan(state: &SessionState, sql: &str) -> Result<Self> {
        let numbered = number_placeholders(sql);
        let dialect = state.config().options().sql_parser.dialect;
        let mut parsed = state.sql_to_statement(&numbered, &dialect)?;
        if let Some(procedure) = procedure(&parsed)? {
            let plan = LogicalPlan::EmptyRelation(EmptyRelation {
                produce_one_row: false,
                schema: Arc::new(datafusion::common::DFSchema::empty()),
            });
            return Ok(Self {
                sql: sql.to_string(),
                kind: StatementKind::Ddl,
                procedure: Some(procedure),
                tracker: None,
                schema: Arc::new(Schema::empty()),
                parameters: Vec::new(),
                typed: Vec::new(),
                plan,
                partition_by: Vec::new(),
                target_file_bytes: None,
            });
        }
        let partition_by = take_partition_by(&mut parsed)?;
        let plan = state.statement_to_plan(parsed).await?;
        let kind = classify(&plan)?;
        let schema = match kind {
            StatementKind::Ddl | StatementKind::Write => Arc::new(Schema::empty()),
            StatementKind::Explain { .. } => explain_schema(),
            StatementKind::Query => query_schema(&plan),
        };
        let (parameters, typed) = parameter_fields(&plan)?.into_iter().unzip();
        Ok(Self {
            sql: sql.to_string(),
            kind,
            procedure: None,
            tracker: None,
            schema,
            parameters,
            typed,
            plan,
            partition_by,
            target_file_bytes: None,
        })
    }

    /// The statement with the roll size its session asks of writes (`None`: the server's).
    pub(crate) fn with_target_file_bytes(self, target_file_bytes: Option<u64>) -> Self {
        Self {
            target_file_bytes,
            ..self
        }
    }

    /// Binds the first row of `values` to the statement's placeholders, by position.
    pub(super) fn bind(self, values: &RecordBatch) -> Result<Self> {
        let mut statement = self;
        if values.num_columns() != statement.parameters.len() {
            return Err(QuiverError::InvalidArgument(format!(
                "the statement has {} parameter(s), {} value(s) were bound",
                statement.parameters.len(),
                values.num_columns()
            )));
        }
        if values.num_rows() != 1 {
            return Err(QuiverError::InvalidArgument(format!(
                "bind exactly one row of parameter values per execution, got {}",
                values.num_rows()
            )));
        }
        let scalars = values
            .columns()
            .iter()
            .zip(&statement.parameters)
            .zip(&statement.typed)
            .map(|((column, field), typed)| {
                let value = ScalarValue::try_from_array(column, 0)?;
                if !typed || value.is_null() || &value.data_type() == field.data_type() {
                    return Ok(value);
                }
                value.cast_to(field.data_type()).map_err(|e| {
                    QuiverError::InvalidArgument(format!(
                        "parameter {}: cannot use {} as {}: {e}",
                        field.name(),
                        value.data_type(),
                        field.data_type()
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        statement.plan = statement.plan.with_param_values(scalars)?;
        statement.parameters.clear();
        statement.typed.clear();
        if statement.kind == StatementKind::Query {
            // Columns that are bare placeholders (`SELECT ? AS a`) take the bound value's type.
            let plan = statement.plan.recompute_schema()?;
            statement.schema = query_schema(&plan);
            statement.plan = plan;
        }
        Ok(statement)
    }

    /// The same statement running `plan` (what an `EXPLAIN` explains).
    pub(super) fn with_plan(self, plan: LogicalPlan) -> Self {
        Self { plan, ..self }
    }

    /// One nullable field per placeholder, named `$1..$n`; a type DataFusion could not infer from
    /// the query is announced as Utf8 (strings coerce to the type the query needs).
    pub(crate) fn parameter_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(self.parameters.clone()))
    }
}

/// The schema a query announces: its plan's, in plain types. DataFusion declares a scalar
/// subquery as nullable as its one column, but a subquery with no row is NULL: the columns of a
/// query with one are all announced nullable (which no client holds against a value).
fn query_schema(plan: &LogicalPlan) -> SchemaRef {
    let schema = plain_schema(plan.schema().as_arrow());
    if !scalar_subqueries::any(plan) {
        return schema;
    }
    let fields = schema
        .fields()
        .iter()
        .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
        .collect::<Vec<_>>();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

pub(super) fn classify(plan: &LogicalPlan) -> Result<StatementKind> {
    let unsupported = |what: &str| {
        Err(QuiverError::Unsupported(format!(
            "{what} is not supported; Quiver runs queries, EXPLAIN, CREATE [EXTERNAL] TABLE, CREATE TABLE AS, INSERT INTO/OVERWRITE, COPY TO, CREATE VIEW and DROP TABLE/VIEW"
        )))
    };
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(cmd)) if cmd.temporary => {
            unsupported("CREATE TEMPORARY TABLE")
        }
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(_)) => Ok(StatementKind::Write),
        LogicalPlan::Dml(dml) if matches!(dml.op, WriteOp::Insert(_)) => Ok(StatementKind::Write),
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)) if cmd.temporary => {
            unsupported("CREATE TEMPORARY EXTERNAL TABLE")
        }
        LogicalPlan::Ddl(DdlStatement::CreateView(cmd)) if cmd.temporary => {
            unsupported("CREATE TEMPORARY VIEW")
        }
        LogicalPlan::Ddl(
            DdlStatement::CreateExternalTable(_)
            | DdlStatement::DropTable(_)
            | DdlStatement::CreateView(_)
            | DdlStatement::DropView(_),
        ) => Ok(StatementKind::Ddl),
        LogicalPlan::Ddl(other) => unsupported(other.name()),
        LogicalPlan::Dml(dml) => unsupported(&dml.op.to_string()),
        // COPY writes where the server's location policy allows, checked when it runs.
        LogicalPlan::Copy(_) => Ok(StatementKind::Write),
        // SET changes the shared session's runtime settings for every client: not a client's
        // to do.
        LogicalPlan::Statement(
            LogicalStatement::SetVariable(_) | LogicalStatement::ResetVariable(_),
        ) => {
            Err(QuiverError::PermissionDenied(
                "changing runtime settings with SET/RESET is not allowed; the server's settings apply to every query".into(),
            ))
        }
        LogicalPlan::Statement(_) => {
            unsupported("PREPARE / EXECUTE / transaction statements")
        }
        LogicalPlan::Explain(_) => Ok(StatementKind::Explain { analyze: false }),
        LogicalPlan::Analyze(_) => Ok(StatementKind::Explain { analyze: true }),
        _ => Ok(StatementKind::Query),
    }
}

/// Removes the Hive `PARTITIONED BY (col, …)` clause of a `CREATE TABLE` (DataFusion refuses to
/// plan it) and returns its column names. Types given there must be the column's own: the
/// columns are declared in the column list (or come from the query).
/// The built-in procedure a `CALL` statement names; `None` for every other statement.
fn procedure(statement: &DFStatement) -> Result<Option<Procedure>> {
    let DFStatement::Statement(inner) = statement else {
        return Ok(None);
    };
    let SqlStatement::Call(call) = inner.as_ref() else {
        return Ok(None);
    };
    let name = call.name.to_string().to_ascii_lowercase();
    if name != "system.cancel_query" && name != "quiver.system.cancel_query" {
        return Err(QuiverError::NotFound(format!(
            "no procedure {}: the one procedure is system.cancel_query('<query id>')",
            call.name
        )));
    }
    let usage = || {
        QuiverError::InvalidArgument(
            "system.cancel_query takes one argument, the query id as a string literal".into(),
        )
    };
    let FunctionArguments::List(list) = &call.args else {
        return Err(usage());
    };
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Value(value)))] = list.args.as_slice()
    else {
        return Err(usage());
    };
    match &value.value {
        SqlValue::SingleQuotedString(id) => Ok(Some(Procedure::CancelQuery(id.clone()))),
        _ => Err(usage()),
    }
}

fn take_partition_by(statement: &mut DFStatement) -> Result<Vec<String>> {
    let inner = match statement {
        DFStatement::Statement(inner) => inner,
        // `EXPLAIN CREATE TABLE … PARTITIONED BY`: the clause of the statement it explains.
        DFStatement::Explain(explain) => return take_partition_by(explain.statement.as_mut()),
        _ => return Ok(Vec::new()),
    };
    let SqlStatement::CreateTable(create) = inner.as_mut() else {
        return Ok(Vec::new());
    };
    let HiveDistributionStyle::PARTITIONED { columns } =
        std::mem::replace(&mut create.hive_distribution, HiveDistributionStyle::NONE)
    else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = Vec::new();
    for column in columns {
        let name = column.name.value.clone();
        if names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            return Err(QuiverError::InvalidArgument(format!(
                "PARTITIONED BY names column '{name}' twice"
            )));
        }
        let declared = create
            .columns
            .iter()
            .find(|c| c.name.value.eq_ignore_ascii_case(&name));
        match (declared, &column.data_type) {
            // Hive style: the partition column is declared here only; move it to the columns.
            (None, data_type)
                if create.query.is_none() && !matches!(data_type, SqlDataType::Unspecified) =>
            {
                create.columns.push(column.clone());
            }
            _ => {}
        }
        names.push(name);
    }
    Ok(names)
}

/// The statement's placeholders as `$1..$n` fields, in position order, each with whether its
/// type was inferred.
fn parameter_fields(plan: &LogicalPlan) -> Result<Vec<(Field, bool)>> {
    let mut found: Vec<(usize, Field, bool)> = Vec::new();
    for (name, field) in plan.get_parameter_fields()? {
        let position = name
            .strip_prefix('$')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                QuiverError::InvalidArgument(format!(
                    "placeholder {name}: use ? or $1, $2, ... (named placeholders are not supported)"
                ))
            })?;
        let inferred = field
            .map(|f| f.data_type().clone())
            .filter(|t| t != &DataType::Null);
        let typed = inferred.is_some();
        let data_type = inferred.unwrap_or(DataType::Utf8);
        found.push((
            position,
            Field::new(name, plain_type(&data_type), true),
            typed,
        ));
    }
    found.sort_by_key(|(position, _, _)| *position);
    if found
        .iter()
        .enumerate()
        .any(|(i, (position, _, _))| *position != i + 1)
    {
        return Err(QuiverError::InvalidArgument(
            "placeholders must be numbered $1..$n without gaps".into(),
        ));
    }
    Ok(found
        .into_iter()
        .map(|(_, field, typed)| (field, typed))
        .collect())
}

pub(super) fn explain_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("plan_type", DataType::Utf8, false),
        Field::new("plan", DataType::Utf8, false),
    ]))
}
