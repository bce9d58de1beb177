//! Seeded random SQL over the TPC-H tables, run on one cluster and on single-node DataFusion.
//!
//! Contract: for a seed (`QUIVER_RANDOM_SQL_SEED`, default [`DEFAULT_SEED`]) the generator
//! produces the same `QUIVER_RANDOM_SQL_QUERIES` (default [`DEFAULT_QUERIES`]) queries on every
//! machine; each must give the same result on a coordinator with two executors as on the oracle
//! (`compare`: floats within a tolerance; as multisets unless the query has a total ORDER BY).
//! Every fourth query goes through a prepared statement, the others through a plain statement.
//! `QUIVER_RANDOM_SQL_INDEX=<i>` runs only query `i` of the seed, to reproduce one failure;
//! `QUIVER_RANDOM_SQL_VERBOSE=1` prints every query; `QUIVER_RANDOM_SQL_TARGET_PARTITIONS=<n>`
//! starts the cluster with `n` target partitions per node instead of one per core.
//!
//! The columns, their types and the literals come from the oracle's catalog and data at run
//! time; only the unique keys and the foreign-key join edges are written down here. A query the
//! oracle rejects is a generator bug and fails the test at once.
//!
//! Shapes: projections with arithmetic, string functions, CASE, CAST and uncorrelated scalar
//! subqueries; WHERE with AND/OR/NOT, comparisons, BETWEEN, IN lists (up to 500 values), LIKE,
//! IS [NOT] NULL, [NOT] IN/EXISTS subqueries (uncorrelated, and EXISTS correlated along a foreign
//! key) and scalar subqueries; GROUP BY with count/sum/min/max/avg/count(DISTINCT) and HAVING;
//! ROLLUP and CUBE; inner/left/right/full joins of two or three tables along foreign keys, and
//! of a grouped subquery with the table its key refers to; DISTINCT; UNION ALL,
//! UNION, INTERSECT, EXCEPT [ALL]; window functions (row_number/rank/dense_rank/sum/count/lag,
//! partitioned or not, ROWS frames); ORDER BY ... LIMIT ... OFFSET, also inside a subquery that
//! is then aggregated (the limit must be global, not per partition).
//!
//! Determinism rules the generator keeps, so that a difference is a real bug and not noise:
//! * an ORDER BY that the comparison relies on sorts by every output column, so ties are rows
//!   that are equal anyway; a LIMIT under an order that is not total (or no order at all) is
//!   checked by its row count only;
//! * row_number/lag/ROWS frames order by the table's unique key; rank/sum over a non-unique
//!   order use peers, which are deterministic;
//! * aggregates never take floating-point arguments (decimal and integer sums are exact
//!   whatever the partial-aggregation order), and there is no division (`%` by constants only).
//!
//! Left out on purpose, because single-node DataFusion 55 itself rejects them (planner bugs,
//! not Quiver's): the same expression twice in one select list (ordering `x, x` in opposite
//! directions fails its SanityCheckPlan under a UNION), and GROUP BY keys over the same column
//! (`x, CAST(x AS BIGINT)` under an EXISTS fails `eliminate_group_by_constant`); and a CASE
//! with a non-null ELSE over an outer join (its nullability differs between the logical and the
//! physical plan, see [`Generator::case`]): there the ELSE is NULL.

use std::fmt::Write as _;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;
use quiver_tests::compare::compare;
use quiver_tests::oracle::{self, tpch_dataset};
use quiver_tests::{ClusterOptions, TestCluster, within};

use crate::QUERY_LIMIT;

/// The seed a plain `cargo test` uses.
const DEFAULT_SEED: u64 = 0x5157_4552_2024;
/// Queries per run: a few hundred keep the test under a minute on two cores (debug build).
const DEFAULT_QUERIES: usize = 300;
/// At most this many sample literals per column.
const POOL_SIZE: usize = 64;
/// A column with at most this many distinct values is a grouping and partitioning column.
const GROUP_CARDINALITY: usize = 200;

/// Each table's unique key (for row_number/lag orders that leave no ties).
const UNIQUE_KEYS: &[(&str, &[&str])] = &[
    ("nation", &["n_nationkey"]),
    ("region", &["r_regionkey"]),
    ("part", &["p_partkey"]),
    ("supplier", &["s_suppkey"]),
    ("partsupp", &["ps_partkey", "ps_suppkey"]),
    ("customer", &["c_custkey"]),
    ("orders", &["o_orderkey"]),
    ("lineitem", &["l_orderkey", "l_linenumber"]),
];

/// Foreign keys: `(table, column) -> (table, column)`.
const EDGES: &[(&str, &str, &str, &str)] = &[
    ("orders", "o_custkey", "customer", "c_custkey"),
    ("lineitem", "l_orderkey", "orders", "o_orderkey"),
    ("lineitem", "l_partkey", "part", "p_partkey"),
    ("lineitem", "l_suppkey", "supplier", "s_suppkey"),
    ("partsupp", "ps_partkey", "part", "p_partkey"),
    ("partsupp", "ps_suppkey", "supplier", "s_suppkey"),
    ("supplier", "s_nationkey", "nation", "n_nationkey"),
    ("customer", "c_nationkey", "nation", "n_nationkey"),
    ("nation", "n_regionkey", "region", "r_regionkey"),
];

/// Join paths whose results stay small at SF0.01 (no many-to-many fan-out through part).
const JOIN_SETS: &[&[&str]] = &[
    &["orders", "customer"],
    &["lineitem", "orders"],
    &["lineitem", "orders", "customer"],
    &["lineitem", "part"],
    &["lineitem", "supplier"],
    &["lineitem", "supplier", "nation"],
    &["partsupp", "part"],
    &["partsupp", "supplier"],
    &["partsupp", "part", "supplier"],
    &["supplier", "nation"],
    &["nation", "region"],
    &["supplier", "nation", "region"],
    &["customer", "nation"],
    &["customer", "nation", "region"],
    &["orders", "customer", "nation"],
];

/// Tables too large to return whole in a debug build: their plain projections get a LIMIT.
const LARGE_TABLES: &[&str] = &["lineitem", "orders", "partsupp"];

// ---------------------------------------------------------------------------------------------
// Catalog: read from the oracle.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Int,
    Dec,
    Float,
    Date,
    Str,
}

#[derive(Debug)]
struct Column {
    table: &'static str,
    name: String,
    kind: Kind,
    /// Sample values as SQL literals, in ascending order.
    literals: Vec<String>,
    /// The same samples, unquoted (patterns for LIKE are cut from these).
    raw: Vec<String>,
    distinct: usize,
}

impl Column {
    fn groupable(&self) -> bool {
        self.distinct <= GROUP_CARDINALITY
    }
    fn numeric(&self) -> bool {
        matches!(self.kind, Kind::Int | Kind::Dec)
    }
}

#[derive(Debug)]
struct Table {
    name: &'static str,
    columns: Vec<Column>,
    key: &'static [&'static str],
}

#[derive(Debug)]
struct Catalog {
    tables: Vec<Table>,
}

impl Catalog {
    fn table(&self, name: &str) -> &Table {
        self.tables
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no table {name}"))
    }
    fn column(&self, name: &str) -> &Column {
        self.tables
            .iter()
            .flat_map(|t| &t.columns)
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    }

    /// Every column of every TPC-H table, with its kind, cardinality and sample literals.
    async fn load(ctx: &SessionContext) -> Self {
        let mut tables = Vec::new();
        for name in quiver_server::tpch::TABLES {
            let provider = ctx.table_provider(name).await.expect("oracle table");
            let mut columns = Vec::new();
            for field in provider.schema().fields() {
                let kind = match field.data_type() {
                    DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32
                    | DataType::UInt64 => Kind::Int,
                    DataType::Decimal128(..) | DataType::Decimal256(..) => Kind::Dec,
                    DataType::Float32 | DataType::Float64 => Kind::Float,
                    DataType::Date32 | DataType::Date64 => Kind::Date,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Kind::Str,
                    other => panic!("{name}.{}: unexpected type {other}", field.name()),
                };
                let sql = format!(
                    "SELECT DISTINCT {0} FROM {name} WHERE {0} IS NOT NULL ORDER BY {0}",
                    field.name()
                );
                let batches = match ctx.sql(&sql).await {
                    Ok(df) => df.collect().await,
                    Err(e) => Err(e),
                }
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
                let values = strings(&batches);
                let distinct = values.len();
                // Evenly spaced samples, smallest and largest included.
                let raw: Vec<String> = if distinct <= POOL_SIZE {
                    values
                } else {
                    (0..POOL_SIZE)
                        .map(|i| values[i * (distinct - 1) / (POOL_SIZE - 1)].clone())
                        .collect()
                };
                let literals = raw.iter().map(|v| literal(kind, v)).collect();
                columns.push(Column {
                    table: name,
                    name: field.name().clone(),
                    kind,
                    literals,
                    raw,
                    distinct,
                });
            }
            let key = UNIQUE_KEYS
                .iter()
                .find(|(t, _)| *t == name)
                .map(|(_, k)| *k)
                .expect("unique key");
            tables.push(Table { name, columns, key });
        }
        let catalog = Self { tables };
        // The written-down schema knowledge must agree with the real catalog.
        for (table, key) in UNIQUE_KEYS {
            for column in *key {
                assert_eq!(catalog.column(column).table, *table, "{column}");
            }
        }
        for (a, ac, b, bc) in EDGES {
            assert_eq!(catalog.column(ac).table, *a, "{ac}");
            assert_eq!(catalog.column(bc).table, *b, "{bc}");
            assert_eq!(catalog.column(ac).kind, catalog.column(bc).kind);
        }
        catalog
    }
}

/// The single column of `batches`, each value formatted as text.
fn strings(batches: &[RecordBatch]) -> Vec<String> {
    let options = FormatOptions::default();
    let mut out = Vec::new();
    for batch in batches {
        let formatter = ArrayFormatter::try_new(batch.column(0).as_ref(), &options).unwrap();
        for row in 0..batch.num_rows() {
            out.push(formatter.value(row).to_string());
        }
    }
    out
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn literal(kind: Kind, value: &str) -> String {
    match kind {
        Kind::Int | Kind::Float => value.to_string(),
        // A bare `12.34` is a Float64 literal in DataFusion; keep decimal comparisons exact.
        Kind::Dec => format!("CAST({value} AS DECIMAL(15, 2))"),
        Kind::Date => format!("DATE {}", quote(value)),
        Kind::Str => quote(value),
    }
}

// ---------------------------------------------------------------------------------------------
// Generator.

/// splitmix64: tiny, seedable, and identical everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability `percent`%.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'t, T>(&mut self, items: &'t [T]) -> &'t T {
        &items[self.below(items.len())]
    }
}

/// How a query's result is compared with the oracle's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Check {
    /// Row for row: the query has a total ORDER BY.
    Ordered,
    /// As multisets.
    Unordered,
    /// Only the number of rows (a LIMIT without a total order picks any rows).
    RowCount,
}

struct Query {
    sql: String,
    check: Check,
}

/// The columns a query may reference.
type Scope<'c> = Vec<&'c Column>;

struct Generator<'c> {
    rng: Rng,
    catalog: &'c Catalog,
    /// Whether the current query's FROM has an outer join (see [`Generator::case`]).
    outer_join: bool,
}

impl<'c> Generator<'c> {
    fn new(seed: u64, catalog: &'c Catalog) -> Self {
        Self {
            rng: Rng(seed),
            catalog,
            outer_join: false,
        }
    }

    fn query(&mut self) -> Query {
        self.outer_join = false;
        match self.rng.below(100) {
            0..=17 => self.projection(),
            18..=41 => self.aggregate(),
            42..=49 => self.global_aggregate(),
            50..=58 => self.distinct(),
            59..=68 => self.set_operation(),
            69..=79 => self.window(),
            80..=87 => self.join_projection(),
            88..=91 => self.limited_subquery(),
            92..=95 => self.derived_join(),
            _ => self.loose_limit(),
        }
    }

    // --- FROM ---------------------------------------------------------------------------------

    /// A single table, or a join along foreign keys; returns the clause, the columns in scope
    /// and the tables.
    fn from(&mut self, join_percent: usize) -> (String, Scope<'c>, Vec<&'static str>) {
        if !self.rng.chance(join_percent) {
            let table = self.catalog.tables[self.rng.below(self.catalog.tables.len())].name;
            return (table.to_string(), self.scope(&[table]), vec![table]);
        }
        let mut pending: Vec<&'static str> = self.rng.pick(JOIN_SETS).to_vec();
        let first = pending.remove(self.rng.below(pending.len()));
        let mut joined = vec![first];
        let mut sql = first.to_string();
        while !pending.is_empty() {
            // The next table must share an edge with one already joined.
            let candidates: Vec<usize> = (0..pending.len())
                .filter(|&i| joined.iter().any(|j| edge(j, pending[i]).is_some()))
                .collect();
            let next = pending.remove(*self.rng.pick(&candidates));
            let (left, right) = joined
                .iter()
                .find_map(|j| edge(j, next))
                .expect("connected");
            let kind = match self.rng.below(100) {
                0..=54 => "JOIN",
                55..=84 => "LEFT JOIN",
                85..=92 => "RIGHT JOIN",
                _ => "FULL JOIN",
            };
            self.outer_join |= kind != "JOIN";
            let mut on = format!("{left} = {right}");
            // An extra condition on the joined table leaves unmatched rows for outer joins.
            if kind != "JOIN" && self.rng.chance(40) {
                let scope = self.scope(&[next]);
                on = format!("{on} AND {}", self.simple_predicate(&scope));
            }
            write!(sql, " {kind} {next} ON {on}").unwrap();
            joined.push(next);
        }
        let scope = self.scope(&joined);
        (sql, scope, joined)
    }

    fn scope(&self, tables: &[&str]) -> Scope<'c> {
        tables
            .iter()
            .flat_map(|t| &self.catalog.table(t).columns)
            .collect()
    }

    fn column(
        &mut self,
        scope: &Scope<'c>,
        filter: impl Fn(&Column) -> bool,
    ) -> Option<&'c Column> {
        let matching: Vec<&'c Column> = scope.iter().copied().filter(|c| filter(c)).collect();
        (!matching.is_empty()).then(|| *self.rng.pick(&matching))
    }

    fn any_column(&mut self, scope: &Scope<'c>) -> &'c Column {
        scope[self.rng.below(scope.len())]
    }

    // --- literals and predicates --------------------------------------------------------------

    fn literal(&mut self, column: &Column) -> String {
        if column.kind == Kind::Int && self.rng.chance(30) {
            // Not only values that occur: also ones in between.
            let lo: i64 = column.raw[0].parse().unwrap();
            let hi: i64 = column.raw[column.raw.len() - 1].parse().unwrap();
            let span = (hi - lo + 1).max(1) as u64;
            return (lo + (self.rng.next() % span) as i64).to_string();
        }
        self.rng.pick(&column.literals).clone()
    }

    fn like_pattern(&mut self, column: &Column) -> String {
        let value: Vec<char> = self.rng.pick(&column.raw).chars().collect();
        let n = value.len();
        let cut = |a: usize, b: usize| value[a..b].iter().collect::<String>();
        let pattern = match self.rng.below(4) {
            0 => format!("{}%", cut(0, self.rng.range(0, n.min(4)))),
            1 => format!("%{}", cut(n - self.rng.range(0, n.min(3)), n)),
            2 => {
                let a = self.rng.below(n.max(1));
                let b = (a + self.rng.range(1, 5)).min(n);
                format!("%{}%", cut(a.min(b), b))
            }
            _ => {
                let mut chars = value.clone();
                if n > 0 {
                    chars[self.rng.below(n)] = '_';
                }
                chars.into_iter().collect()
            }
        };
        quote(&pattern)
    }

    /// One comparison-like condition on a column of `scope`.
    fn simple_predicate(&mut self, scope: &Scope<'c>) -> String {
        let column = self.any_column(scope);
        let name = &column.name;
        match self.rng.below(if column.kind == Kind::Str { 9 } else { 7 }) {
            0 | 1 => {
                let op = self.rng.pick(&["=", "<>", "<", "<=", ">", ">="]);
                format!("{name} {op} {}", self.literal(column))
            }
            2 => {
                let a = self.rng.below(column.literals.len());
                let b = self.rng.below(column.literals.len());
                let (a, b) = (a.min(b), a.max(b));
                let not = if self.rng.chance(20) { "NOT " } else { "" };
                format!(
                    "{name} {not}BETWEEN {} AND {}",
                    column.literals[a], column.literals[b]
                )
            }
            3 | 4 => {
                let n = if self.rng.chance(15) {
                    500
                } else {
                    self.rng.range(1, 8)
                };
                let values: Vec<String> = (0..n).map(|_| self.literal(column)).collect();
                let not = if self.rng.chance(25) { "NOT " } else { "" };
                format!("{name} {not}IN ({})", values.join(", "))
            }
            5 => {
                let not = if self.rng.chance(50) { " NOT" } else { "" };
                format!("{name} IS{not} NULL")
            }
            6 => {
                // Two columns of one kind (l_shipdate < l_commitdate, ...).
                let kind = column.kind;
                let other = self.column(scope, |c| c.kind == kind).expect("itself");
                let op = self.rng.pick(&["=", "<>", "<", ">="]);
                format!("{name} {op} {}", other.name)
            }
            _ => {
                let not = if self.rng.chance(20) { "NOT " } else { "" };
                format!("{name} {not}LIKE {}", self.like_pattern(column))
            }
        }
    }

    /// A boolean tree of conditions; with `subqueries`, some leaves are IN/EXISTS/scalar
    /// subqueries (uncorrelated).
    fn predicate(&mut self, scope: &Scope<'c>, depth: usize, subqueries: bool) -> String {
        if depth > 0 && self.rng.chance(45) {
            let a = self.predicate(scope, depth - 1, subqueries);
            let b = self.predicate(scope, depth - 1, subqueries);
            let op = if self.rng.chance(55) { "AND" } else { "OR" };
            let tree = format!("({a} {op} {b})");
            return if self.rng.chance(15) {
                format!("NOT {tree}")
            } else {
                tree
            };
        }
        if subqueries
            && self.rng.chance(20)
            && let Some(p) = self.subquery_predicate(scope)
        {
            return p;
        }
        self.simple_predicate(scope)
    }

    /// A column of `scope` with a foreign-key link, and the (table, key) it links to; `None`
    /// if no column has one.
    fn pick_linked(
        &mut self,
        scope: &Scope<'c>,
    ) -> Option<(&'c Column, (&'static str, &'static str))> {
        let linked: Vec<(&'c Column, (&'static str, &'static str))> = scope
            .iter()
            .filter_map(|c| linked_key(&c.name).map(|k| (*c, k)))
            .collect();
        if linked.is_empty() {
            return None;
        }
        Some(*self.rng.pick(&linked))
    }

    fn subquery_predicate(&mut self, scope: &Scope<'c>) -> Option<String> {
        match self.rng.below(4) {
            3 => {
                // Correlated [NOT] EXISTS along a foreign key (decorrelated into a semi join).
                let (column, (table, key)) = self.pick_linked(scope)?;
                let inner = self.scope(&[table]);
                let filter = self.predicate(&inner, 1, false);
                let not = if self.rng.chance(25) { "NOT " } else { "" };
                Some(format!(
                    "{not}EXISTS (SELECT 1 FROM {table} WHERE {key} = {} AND {filter})",
                    column.name
                ))
            }
            0 => {
                // column [NOT] IN (SELECT referenced key ...), along a foreign key either way.
                let (column, (table, key)) = self.pick_linked(scope)?;
                let inner = self.scope(&[table]);
                let filter = self.predicate(&inner, 1, false);
                let not = if self.rng.chance(25) { "NOT " } else { "" };
                Some(format!(
                    "{} {not}IN (SELECT {key} FROM {table} WHERE {filter})",
                    column.name
                ))
            }
            1 => {
                let table = self.catalog.tables[self.rng.below(self.catalog.tables.len())].name;
                let inner = self.scope(&[table]);
                let filter = self.predicate(&inner, 1, false);
                let not = if self.rng.chance(25) { "NOT " } else { "" };
                Some(format!(
                    "{not}EXISTS (SELECT 1 FROM {table} WHERE {filter})"
                ))
            }
            _ => {
                // A scalar subquery over the same column's table.
                let column = self.column(scope, |c| c.numeric())?;
                let inner = self.scope(&[column.table]);
                let filter = self.predicate(&inner, 0, false);
                let agg = self.rng.pick(&["avg", "min", "max"]);
                let op = self.rng.pick(&["<", ">=", "="]);
                Some(format!(
                    "{0} {op} (SELECT {agg}({0}) FROM {1} WHERE {filter})",
                    column.name, column.table
                ))
            }
        }
    }

    // --- scalar expressions -------------------------------------------------------------------

    /// An expression over `scope`; returns its SQL and kind.
    fn expr(&mut self, scope: &Scope<'c>, depth: usize) -> (String, Kind) {
        let column = self.any_column(scope);
        let name = column.name.clone();
        if depth == 0 || self.rng.chance(35) {
            return (name, column.kind);
        }
        match column.kind {
            Kind::Int => match self.rng.below(6) {
                0 => (format!("{name} + {}", self.rng.range(1, 100)), Kind::Int),
                1 => (format!("{name} * {}", self.rng.range(2, 9)), Kind::Int),
                2 => (format!("{name} % {}", self.rng.range(2, 13)), Kind::Int),
                3 => (format!("CAST({name} AS VARCHAR)"), Kind::Str),
                4 => (format!("CAST({name} AS DECIMAL(12, 2))"), Kind::Dec),
                _ => self.case(scope, name, Kind::Int),
            },
            Kind::Dec => {
                let other = self.column(scope, |c| c.kind == Kind::Dec).expect("itself");
                match self.rng.below(8) {
                    0 => (format!("{name} * (1 - {})", other.name), Kind::Dec),
                    1 => (format!("{name} + {}", other.name), Kind::Dec),
                    2 => (format!("{name} * {}", self.rng.range(2, 5)), Kind::Dec),
                    3 => (format!("round({name}, {})", self.rng.below(2)), Kind::Dec),
                    4 => (format!("abs({name} - {})", self.literal(column)), Kind::Dec),
                    5 => (format!("CAST({name} AS DOUBLE) * 1.5"), Kind::Float),
                    6 => (format!("CAST({name} AS BIGINT)"), Kind::Int),
                    _ => self.case(scope, name, Kind::Dec),
                }
            }
            Kind::Float => (format!("{name} * 2"), Kind::Float),
            Kind::Date => match self.rng.below(5) {
                0 => (format!("extract(year FROM {name})"), Kind::Int),
                1 => (format!("date_part('month', {name})"), Kind::Int),
                2 => (
                    format!("{name} + INTERVAL '{} days'", self.rng.range(1, 90)),
                    Kind::Date,
                ),
                3 => (format!("CAST({name} AS VARCHAR)"), Kind::Str),
                _ => self.case(scope, name, Kind::Date),
            },
            Kind::Str => match self.rng.below(9) {
                0 => (format!("upper({name})"), Kind::Str),
                1 => (format!("lower({name})"), Kind::Str),
                2 => (
                    format!(
                        "substr({name}, {}, {})",
                        self.rng.range(1, 4),
                        self.rng.range(1, 6)
                    ),
                    Kind::Str,
                ),
                3 => (format!("character_length({name})"), Kind::Int),
                4 => {
                    let (other, _) = self.expr(scope, 0);
                    (format!("concat({name}, '-', {other})"), Kind::Str)
                }
                5 => (format!("{name} || '/'"), Kind::Str),
                6 => (format!("trim({name})"), Kind::Str),
                7 => (format!("replace({name}, 'a', 'A')"), Kind::Str),
                _ => self.case(scope, name, Kind::Str),
            },
        }
    }

    /// `CASE WHEN <condition> THEN <column> ELSE <something of the same kind> END`.
    ///
    /// Over an outer join the ELSE is NULL: DataFusion 55 infers `CASE WHEN x <> y THEN x ELSE
    /// 'other' END` as non-nullable in the logical plan but nullable in the physical one when `x`
    /// comes from the outer side, and fails such a query (under DISTINCT/GROUP BY) with "Physical
    /// input schema should be the same as the one converted from logical input schema".
    fn case(&mut self, scope: &Scope<'c>, name: String, kind: Kind) -> (String, Kind) {
        let condition = self.predicate(scope, 1, false);
        let other = match self.column(scope, |c| c.kind == kind) {
            _ if self.outer_join => "NULL".into(),
            Some(c) if self.rng.chance(50) => c.name.clone(),
            _ => match kind {
                Kind::Int => "-1".into(),
                Kind::Dec => "CAST(0 AS DECIMAL(15, 2))".into(),
                Kind::Float => "0.5".into(),
                Kind::Date => "DATE '1970-01-01'".into(),
                Kind::Str => "'other'".into(),
            },
        };
        (
            format!("CASE WHEN {condition} THEN {name} ELSE {other} END"),
            kind,
        )
    }

    /// An aggregate call whose result is deterministic whatever the order of partial sums.
    fn aggregate_call(&mut self, scope: &Scope<'c>) -> String {
        let column = self.any_column(scope);
        let name = &column.name;
        match self.rng.below(9) {
            0 => "count(*)".into(),
            1 => format!("count({name})"),
            2 => format!("count(DISTINCT {name})"),
            3 => format!("min({name})"),
            4 => format!("max({name})"),
            5 | 6 => match self.column(scope, |c| c.numeric()) {
                Some(c) => {
                    let f = self.rng.pick(&["sum", "avg"]);
                    format!("{f}({})", c.name)
                }
                None => format!("max({name})"),
            },
            7 => match self.column(scope, |c| c.kind == Kind::Dec) {
                // Revenue-style: decimal * (1 - decimal) stays decimal, so the sum is exact.
                Some(c) => {
                    let other = self.column(scope, |c| c.kind == Kind::Dec).unwrap();
                    format!("sum({} * (1 - {}))", c.name, other.name)
                }
                None => "count(*)".into(),
            },
            _ => {
                let condition = self.predicate(scope, 1, false);
                format!("sum(CASE WHEN {condition} THEN 1 ELSE 0 END)")
            }
        }
    }

    /// `ORDER BY 1, 2, ... n` with random directions: total, since equal sort keys mean equal
    /// rows.
    fn order_all(&mut self, n: usize) -> String {
        let keys: Vec<String> = (1..=n)
            .map(|i| {
                let dir = if self.rng.chance(30) { " DESC" } else { "" };
                let nulls = match self.rng.below(6) {
                    0 => " NULLS FIRST",
                    1 => " NULLS LAST",
                    _ => "",
                };
                format!("{i}{dir}{nulls}")
            })
            .collect();
        format!(" ORDER BY {}", keys.join(", "))
    }

    /// Projected expressions, some with aliases.
    fn select_list(&mut self, scope: &Scope<'c>, n: usize) -> Vec<String> {
        let mut exprs = Vec::new();
        for _ in 0..n {
            let (e, _) = self.expr(scope, 2);
            // Each expression once: DataFusion 55 fails the plan's sanity check when one
            // column is ordered twice in opposite directions (`ORDER BY 1, 2 DESC` over `x, x`).
            if !exprs.contains(&e) {
                exprs.push(e);
            }
        }
        exprs
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                if e.contains('(') || e.contains(' ') || self.rng.chance(30) {
                    format!("{e} AS c{i}")
                } else {
                    e
                }
            })
            .collect()
    }

    /// An optional order plus limit: a total order (compared row for row) or a LIMIT alone
    /// (row count only).
    fn finish(&mut self, sql: &mut String, width: usize, must_limit: bool) -> Check {
        let limit = must_limit || self.rng.chance(40);
        if self.rng.chance(if limit { 85 } else { 40 }) {
            sql.push_str(&self.order_all(width));
            if limit {
                write!(sql, " LIMIT {}", self.rng.range(1, 50)).unwrap();
                if self.rng.chance(25) {
                    write!(sql, " OFFSET {}", self.rng.range(1, 30)).unwrap();
                }
            }
            Check::Ordered
        } else if limit {
            write!(sql, " LIMIT {}", self.rng.range(1, 50)).unwrap();
            Check::RowCount
        } else {
            Check::Unordered
        }
    }

    // --- query shapes -------------------------------------------------------------------------

    fn projection(&mut self) -> Query {
        let (from, scope, tables) = self.from(0);
        let width = self.rng.range(1, 5);
        let mut list = self.select_list(&scope, width);
        if self.rng.chance(15) {
            // An uncorrelated scalar subquery as a column.
            let table = self.catalog.tables[self.rng.below(self.catalog.tables.len())].name;
            let inner = self.scope(&[table]);
            let call = self.aggregate_call(&inner);
            let filter = self.predicate(&inner, 1, false);
            list.push(format!("(SELECT {call} FROM {table} WHERE {filter}) AS sq"));
        }
        let width = list.len();
        let mut sql = format!("SELECT {} FROM {from}", list.join(", "));
        if self.rng.chance(85) {
            write!(sql, " WHERE {}", self.predicate(&scope, 2, true)).unwrap();
        }
        // Now and then a whole large table, so results span many Flight batches.
        let large = tables.iter().any(|t| LARGE_TABLES.contains(t)) && !self.rng.chance(10);
        let check = self.finish(&mut sql, width, large);
        Query { sql, check }
    }

    fn join_projection(&mut self) -> Query {
        let (from, scope, _) = self.from(100);
        let width = self.rng.range(2, 5);
        let list = self.select_list(&scope, width);
        let width = list.len();
        let mut sql = format!(
            "SELECT {} FROM {from} WHERE {}",
            list.join(", "),
            self.predicate(&scope, 2, true)
        );
        let check = self.finish(&mut sql, width, true);
        Query { sql, check }
    }

    fn aggregate(&mut self) -> Query {
        let (from, scope, _) = self.from(55);
        let mut keys: Vec<String> = (0..self.rng.range(1, 3))
            .map(|_| {
                if self.rng.chance(70) {
                    match self.column(&scope, |c| c.groupable()) {
                        Some(c) => c.name.clone(),
                        None => self.expr(&scope, 1).0,
                    }
                } else {
                    self.expr(&scope, 1).0
                }
            })
            .collect();
        // One key per column: DataFusion 55's `eliminate_group_by_constant` fails the plan
        // (duplicate names) for keys like `x, CAST(x AS BIGINT)` under an EXISTS.
        let mut seen: Vec<&str> = Vec::new();
        keys.retain(|k| {
            let columns: Vec<&str> = scope
                .iter()
                .map(|c| c.name.as_str())
                .filter(|c| k.contains(c))
                .collect();
            let new = !columns.iter().any(|c| seen.contains(c));
            seen.extend(columns);
            new
        });
        let aggs: Vec<String> = (0..self.rng.range(1, 4))
            .map(|_| self.aggregate_call(&scope))
            .collect();
        let mut list: Vec<String> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k} AS g{i}"))
            .collect();
        list.extend(aggs.iter().enumerate().map(|(i, a)| format!("{a} AS a{i}")));
        if self.rng.chance(15) {
            // A window over the aggregates: rank's peers make it deterministic.
            list.push(format!("rank() OVER (ORDER BY {} DESC) AS r", aggs[0]));
        }
        let mut sql = format!("SELECT {} FROM {from}", list.join(", "));
        if self.rng.chance(70) {
            write!(sql, " WHERE {}", self.predicate(&scope, 2, true)).unwrap();
        }
        let keys = keys.join(", ");
        match self.rng.below(10) {
            0 => write!(sql, " GROUP BY ROLLUP ({keys})").unwrap(),
            1 => write!(sql, " GROUP BY CUBE ({keys})").unwrap(),
            _ => write!(sql, " GROUP BY {keys}").unwrap(),
        }
        if self.rng.chance(35) {
            let having = match self.rng.below(3) {
                0 => format!("count(*) > {}", self.rng.range(1, 20)),
                1 => {
                    let c = self.any_column(&scope);
                    format!("min({}) < {}", c.name, self.literal(c))
                }
                _ => {
                    let c = self.any_column(&scope);
                    format!("max({}) >= {}", c.name, self.literal(c))
                }
            };
            write!(sql, " HAVING {having}").unwrap();
        }
        let check = self.finish(&mut sql, list.len(), false);
        Query { sql, check }
    }

    fn global_aggregate(&mut self) -> Query {
        let (from, scope, _) = self.from(40);
        let aggs: Vec<String> = (0..self.rng.range(1, 4))
            .map(|_| self.aggregate_call(&scope))
            .collect();
        // Unaliased, so the output names are DataFusion's own; a repeat needs an alias.
        let aggs: Vec<String> = aggs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if aggs[..i].contains(a) {
                    format!("{a} AS a{i}")
                } else {
                    a.clone()
                }
            })
            .collect();
        let sql = format!(
            "SELECT {} FROM {from} WHERE {}",
            aggs.join(", "),
            self.predicate(&scope, 2, true)
        );
        Query {
            sql,
            check: Check::Unordered,
        }
    }

    fn distinct(&mut self) -> Query {
        let (from, scope, _) = self.from(40);
        let mut exprs: Vec<String> = Vec::new();
        for _ in 0..self.rng.range(1, 3) {
            let e = match self.column(&scope, |c| c.groupable()) {
                Some(c) if self.rng.chance(70) => c.name.clone(),
                _ => self.expr(&scope, 1).0,
            };
            if !exprs.contains(&e) {
                exprs.push(e);
            }
        }
        let width = exprs.len();
        let list: Vec<String> = exprs
            .iter()
            .enumerate()
            .map(|(i, e)| format!("{e} AS d{i}"))
            .collect();
        let mut sql = format!("SELECT DISTINCT {} FROM {from}", list.join(", "));
        if self.rng.chance(60) {
            write!(sql, " WHERE {}", self.predicate(&scope, 2, true)).unwrap();
        }
        let check = self.finish(&mut sql, width, false);
        Query { sql, check }
    }

    fn set_operation(&mut self) -> Query {
        // Two tables (possibly the same), column for column of the same kind.
        let left = self.catalog.tables[self.rng.below(self.catalog.tables.len())].name;
        let right = self.catalog.tables[self.rng.below(self.catalog.tables.len())].name;
        let (ls, rs) = (self.scope(&[left]), self.scope(&[right]));
        let mut lcols = Vec::new();
        let mut rcols = Vec::new();
        // Each column once per side (see `select_list`).
        let (mut lused, mut rused): (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
        for _ in 0..self.rng.range(1, 3) {
            let l = self.any_column(&ls);
            if lused.contains(&l.name.as_str()) {
                continue;
            }
            let kind = l.kind;
            let i = lcols.len();
            if let Some(r) =
                self.column(&rs, |c| c.kind == kind && !rused.contains(&c.name.as_str()))
            {
                lcols.push(format!("{} AS u{i}", l.name));
                rcols.push(format!("{} AS u{i}", r.name));
                rused.push(&r.name);
            } else if let Some(r) = self.column(&rs, |c| !rused.contains(&c.name.as_str())) {
                lcols.push(format!("CAST({} AS VARCHAR) AS u{i}", l.name));
                rcols.push(format!("CAST({} AS VARCHAR) AS u{i}", r.name));
                rused.push(&r.name);
            } else {
                continue;
            }
            lused.push(&l.name);
        }
        let width = lcols.len();
        let lp = self.predicate(&ls, 1, false);
        let rp = self.predicate(&rs, 1, false);
        let op = match self.rng.below(10) {
            0..=5 => "UNION ALL",
            6 => "UNION",
            7 => "INTERSECT",
            8 => "EXCEPT",
            _ => "EXCEPT ALL",
        };
        let union = format!(
            "SELECT {} FROM {left} WHERE {lp} {op} SELECT {} FROM {right} WHERE {rp}",
            lcols.join(", "),
            rcols.join(", ")
        );
        if self.rng.chance(40) {
            // Aggregate over the union.
            let mut sql = format!("SELECT u0, count(*) AS n FROM ({union}) AS u GROUP BY u0");
            let check = self.finish(&mut sql, 2, false);
            return Query { sql, check };
        }
        let mut sql = union;
        let large = [left, right].iter().any(|t| LARGE_TABLES.contains(t));
        let check = self.finish(&mut sql, width, large);
        Query { sql, check }
    }

    fn window(&mut self) -> Query {
        let table = self
            .catalog
            .table(self.catalog.tables[self.rng.below(self.catalog.tables.len())].name);
        let scope = self.scope(&[table.name]);
        let partition = self
            .column(&scope, |c| c.groupable())
            .unwrap_or_else(|| scope[0]);
        let key = table.key.join(", ");
        let value = self.any_column(&scope);
        let numeric = self
            .column(&scope, |c| c.numeric())
            .expect("every table has a numeric column");
        let mut list = vec![format!("{} AS p", partition.name)];
        list.extend(table.key.iter().map(|k| k.to_string()));
        list.push(format!("{} AS v", value.name));
        let functions = [
            format!(
                "row_number() OVER (PARTITION BY {} ORDER BY {key})",
                partition.name
            ),
            format!(
                "rank() OVER (PARTITION BY {} ORDER BY {} DESC)",
                partition.name, value.name
            ),
            format!(
                "dense_rank() OVER (PARTITION BY {} ORDER BY {})",
                partition.name, value.name
            ),
            format!(
                "sum({}) OVER (PARTITION BY {} ORDER BY {key})",
                numeric.name, partition.name
            ),
            format!(
                "sum({}) OVER (PARTITION BY {} ORDER BY {})",
                numeric.name, partition.name, value.name
            ),
            format!("count(*) OVER (PARTITION BY {})", partition.name),
            format!(
                "lag({}) OVER (PARTITION BY {} ORDER BY {key})",
                value.name, partition.name
            ),
            // No partition: the whole (filtered) table is one window.
            format!("row_number() OVER (ORDER BY {key})"),
            format!(
                "sum({}) OVER (ORDER BY {key} ROWS BETWEEN 2 PRECEDING AND CURRENT ROW)",
                numeric.name
            ),
        ];
        // row_number first, so the top-N filter below has a deterministic `w0`.
        list.push(format!("{} AS w0", functions[0]));
        let mut picked: Vec<&String> = Vec::new();
        for _ in 0..self.rng.range(1, 3) {
            let f = self.rng.pick(&functions[1..]);
            if !picked.contains(&f) {
                picked.push(f);
            }
        }
        for (i, f) in picked.into_iter().enumerate() {
            list.push(format!("{f} AS w{}", i + 1));
        }
        let width = list.len();
        let mut inner = format!("SELECT {} FROM {}", list.join(", "), table.name);
        if self.rng.chance(60) {
            write!(inner, " WHERE {}", self.predicate(&scope, 1, false)).unwrap();
        }
        let mut sql = format!(
            "SELECT * FROM ({inner}) AS w WHERE w0 <= {}",
            self.rng.range(1, 5)
        );
        let large = LARGE_TABLES.contains(&table.name);
        let check = self.finish(&mut sql, width, large);
        Query { sql, check }
    }

    /// Aggregates over a subquery with a total ORDER BY and a LIMIT: the limit must be global,
    /// not per partition or per executor.
    fn limited_subquery(&mut self) -> Query {
        let (from, scope, _) = self.from(40);
        let mut columns: Vec<&'c Column> = Vec::new();
        for _ in 0..self.rng.range(2, 4) {
            let c = self.any_column(&scope);
            if !columns.iter().any(|x| x.name == c.name) {
                columns.push(c);
            }
        }
        let list: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} AS s{i}", c.name))
            .collect();
        let mut inner = format!("SELECT {} FROM {from}", list.join(", "));
        if self.rng.chance(50) {
            write!(inner, " WHERE {}", self.predicate(&scope, 1, false)).unwrap();
        }
        inner.push_str(&self.order_all(list.len()));
        write!(inner, " LIMIT {}", self.rng.range(1, 300)).unwrap();
        let last = columns.len() - 1;
        let mut sql =
            format!("SELECT s0, count(*) AS n, max(s{last}) AS m FROM ({inner}) AS s GROUP BY s0");
        let check = self.finish(&mut sql, 3, false);
        Query { sql, check }
    }

    /// A grouped subquery joined back to the table its key refers to.
    fn derived_join(&mut self) -> Query {
        let (t1, c1, t2, c2) = *self.rng.pick(EDGES);
        let (s1, s2) = (self.scope(&[t1]), self.scope(&[t2]));
        let call = self.aggregate_call(&s1);
        let mut inner = format!("SELECT {c1} AS k, count(*) AS n, {call} AS m FROM {t1}");
        if self.rng.chance(60) {
            write!(inner, " WHERE {}", self.predicate(&s1, 1, false)).unwrap();
        }
        write!(inner, " GROUP BY {c1}").unwrap();
        let other = self.column(&s2, |c| c.name != c2).unwrap_or(s2[0]);
        let join = if self.rng.chance(60) {
            "JOIN"
        } else {
            "LEFT JOIN"
        };
        let mut sql = format!(
            "SELECT d.k, d.n, d.m, {} AS o FROM ({inner}) AS d {join} {t2} ON d.k = {c2}",
            other.name
        );
        if self.rng.chance(50) {
            write!(sql, " WHERE {}", self.predicate(&s2, 1, false)).unwrap();
        }
        let check = self.finish(&mut sql, 4, false);
        Query { sql, check }
    }

    /// ORDER BY a non-unique column with a LIMIT (or a LIMIT alone): any rows may come back, so
    /// only their number is checked.
    fn loose_limit(&mut self) -> Query {
        let (from, scope, _) = self.from(40);
        let width = self.rng.range(1, 4);
        let list = self.select_list(&scope, width);
        let mut sql = format!("SELECT {} FROM {from}", list.join(", "));
        if self.rng.chance(50) {
            write!(sql, " WHERE {}", self.predicate(&scope, 1, false)).unwrap();
        }
        if self.rng.chance(60) {
            let c = self.any_column(&scope);
            write!(sql, " ORDER BY {}", c.name).unwrap();
        }
        write!(sql, " LIMIT {}", self.rng.range(0, 100)).unwrap();
        Query {
            sql,
            check: Check::RowCount,
        }
    }
}

/// The join condition between two tables, if they share a foreign key.
fn edge(a: &str, b: &str) -> Option<(&'static str, &'static str)> {
    EDGES.iter().find_map(|(t1, c1, t2, c2)| {
        if (*t1, *t2) == (a, b) || (*t1, *t2) == (b, a) {
            Some((*c1, *c2))
        } else {
            None
        }
    })
}

/// The column at the other end of `column`'s foreign key (either direction): `(table, column)`.
fn linked_key(column: &str) -> Option<(&'static str, &'static str)> {
    EDGES.iter().find_map(|(t1, c1, t2, c2)| {
        if *c1 == column {
            Some((*t2, *c2))
        } else if *c2 == column {
            Some((*t1, *c1))
        } else {
            None
        }
    })
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    let parsed = match value.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16)
            .ok()
            .and_then(|v| v.to_string().parse().ok()),
        None => value.parse().ok(),
    };
    Some(parsed.unwrap_or_else(|| panic!("{name}={value} is not a number")))
}

fn row_count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_queries_match_single_node_datafusion() {
    let seed: u64 = env_number("QUIVER_RANDOM_SQL_SEED").unwrap_or(DEFAULT_SEED);
    let count: usize = env_number("QUIVER_RANDOM_SQL_QUERIES").unwrap_or(DEFAULT_QUERIES);
    let only: Option<usize> = env_number("QUIVER_RANDOM_SQL_INDEX");
    assert!(
        only.is_none_or(|i| i < count),
        "QUIVER_RANDOM_SQL_INDEX >= the query count"
    );
    let verbose = std::env::var_os("QUIVER_RANDOM_SQL_VERBOSE").is_some();
    let target_partitions: usize = env_number("QUIVER_RANDOM_SQL_TARGET_PARTITIONS").unwrap_or(0);
    let started = Instant::now();

    let data = tpch_dataset();
    let ctx = oracle::tpch_context(&data).await;
    let catalog = Catalog::load(&ctx).await;
    let options = ClusterOptions {
        target_partitions,
        ..ClusterOptions::tpch(&data)
    };
    let cluster = TestCluster::start(options).await;
    let mut client = cluster.client().await;
    let mut generator = Generator::new(seed, &catalog);
    let reproduce = |i: usize| format!("QUIVER_RANDOM_SQL_SEED={seed} QUIVER_RANDOM_SQL_INDEX={i}");

    let mut failures = Vec::new();
    let mut checks = [0usize; 3];
    let mut empty = 0;
    for i in 0..count {
        let query = generator.query();
        if only.is_some_and(|only| only != i) {
            continue;
        }
        let sql = &query.sql;
        // The oracle accepting every query is part of the generator's contract.
        let expected = within(QUERY_LIMIT, sql, async {
            match ctx.sql(sql).await {
                Ok(df) => df.collect().await,
                Err(e) => Err(e),
            }
        })
        .await
        .unwrap_or_else(|e| {
            panic!(
                "generator bug: DataFusion rejects query {i} of seed {seed} ({}): {e}\n{sql}",
                reproduce(i)
            )
        });
        checks[query.check as usize] += 1;
        empty += usize::from(row_count(&expected) == 0);
        if verbose {
            eprintln!(
                "[{i}] {:?}, {} rows: {sql}",
                query.check,
                row_count(&expected)
            );
        }
        // Every fourth query goes through a prepared statement, the path JDBC and ADBC take.
        let prepared = i % 4 == 3;
        let result = if prepared {
            within(QUERY_LIMIT, sql, client.prepare_and_query(sql)).await
        } else {
            within(QUERY_LIMIT, sql, client.query(sql)).await
        };
        let outcome = match result {
            Ok(result) => match query.check {
                Check::Ordered => compare(&expected, &result.batches, true),
                Check::Unordered => compare(&expected, &result.batches, false),
                Check::RowCount => {
                    let (e, a) = (row_count(&expected), result.num_rows());
                    if e == a {
                        Ok(())
                    } else {
                        Err(format!("expected {e} rows, got {a}"))
                    }
                }
            },
            Err(e) => Err(format!("quiver failed: {e}")),
        };
        if let Err(diff) = outcome {
            failures.push(format!(
                "seed {seed}, query {i} ({}), {:?}{}:\n  {sql}\n  {diff}",
                reproduce(i),
                query.check,
                if prepared { ", prepared" } else { "" }
            ));
        }
    }
    eprintln!(
        "random SQL: seed {seed}, {count} queries ({} ordered, {} unordered, {} row count only, {empty} \
         with no rows) in {:.1?}",
        checks[0],
        checks[1],
        checks[2],
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} of {count} random queries differ from DataFusion:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A seed names one query sequence: reproducing a failure by seed and index depends on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sql_generator_is_deterministic() {
    let ctx = oracle::tpch_context(&tpch_dataset()).await;
    let catalog = Catalog::load(&ctx).await;
    let sequence = |seed| {
        let mut generator = Generator::new(seed, &catalog);
        (0..200).map(|_| generator.query().sql).collect::<Vec<_>>()
    };
    assert_eq!(sequence(7), sequence(7));
    assert_ne!(sequence(7), sequence(8));
    // Every shape turns up in a default-sized run.
    let all = sequence(DEFAULT_SEED).join("\n");
    for shape in [
        " JOIN ",
        "LEFT JOIN",
        "GROUP BY",
        "HAVING",
        "DISTINCT",
        "UNION ALL",
        "OVER (",
        "LIMIT",
        " LIKE ",
        " IN (SELECT",
        "EXISTS (",
        "BETWEEN",
        "IS NULL",
        "CASE WHEN",
        "CAST(",
    ] {
        assert!(
            all.contains(shape),
            "no {shape:?} in 200 queries of the default seed"
        );
    }
}
