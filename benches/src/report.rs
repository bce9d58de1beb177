//! The benchmark report: what was measured, on what, and how to print it (tables, or `--json`).
//!
//! Contract: every figure here comes from this run; medians are of the timed runs (the warm-up
//! is never counted); totals are sums of per-query medians over the queries that succeeded on
//! every engine; a ratio is Quiver's figure over the baseline's (for time: below 1 is faster).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::cgroup::{Budget, Throttling};
use crate::{Options, Suite};

/// Progress goes to stderr, so `--json` output stays clean.
pub(crate) fn progress(line: impl AsRef<str>) {
    eprintln!("[quiver-bench] {}", line.as_ref());
}

/// The middle value (the mean of the two middle ones for an even count; 0 for none).
pub(crate) fn median(values: &[f64]) -> f64 {
    let sorted = sorted(values);
    match sorted.len() {
        0 => 0.0,
        n if n.is_multiple_of(2) => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        n => sorted[n / 2],
    }
}

/// Nearest-rank percentile, `p` in (0, 1] (0 for no values).
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    let sorted = sorted(values);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    pub(crate) cpus: usize,
    pub(crate) cpu_model: String,
    pub(crate) memory_bytes: u64,
}

impl Machine {
    fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu_model,
            memory_bytes,
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    pub(crate) scale_factor: f64,
    pub(crate) dataset: String,
    pub(crate) executors: usize,
    pub(crate) target_partitions: usize,
    pub(crate) runs: usize,
    pub(crate) suite: Suite,
    pub(crate) tpch: Option<TpchReport>,
    /// `--suite tpcds`: the same comparison on TPC-DS (rendered as markdown).
    pub(crate) tpcds: Option<TpchReport>,
    pub(crate) micro: Option<MicroReport>,
    pub(crate) writes: Option<WritesReport>,
    pub(crate) scaling: Option<ScalingReport>,
    pub(crate) concurrency: Option<ConcurrencyReport>,
}

impl Report {
    pub(crate) fn new(options: &Options, dataset: &Path) -> Self {
        Self {
            machine: Machine::detect(),
            scale_factor: options.scale_factor,
            dataset: dataset.display().to_string(),
            executors: options.executors,
            target_partitions: options.target_partitions,
            runs: options.runs,
            suite: options.suite,
            tpch: None,
            tpcds: None,
            micro: None,
            writes: None,
            scaling: None,
            concurrency: None,
        }
    }

    pub(crate) fn has_mismatches(&self) -> bool {
        self.tpch
            .as_ref()
            .is_some_and(|t| t.queries.iter().any(|q| q.rows_differ))
            || self
                .tpcds
                .as_ref()
                .is_some_and(|t| t.queries.iter().any(|q| q.rows_differ))
            || self
                .scaling
                .as_ref()
                .is_some_and(|t| t.queries.iter().any(|q| q.rows_differ))
            || self
                .writes
                .as_ref()
                .is_some_and(|w| w.statements.iter().any(|s| s.rows_differ))
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let _ = write!(
            out,
            "machine: {} CPUs ({}), {:.1} GiB",
            m.cpus,
            m.cpu_model,
            m.memory_bytes as f64 / (1u64 << 30) as f64,
        );
        // The scaling and concurrency benchmarks state their own setup.
        if self.tpch.is_some()
            || self.tpcds.is_some()
            || self.micro.is_some()
            || self.writes.is_some()
        {
            let _ = write!(
                out,
                "; {} SF{}; {} executors; target_partitions {}; warm-up + {} runs",
                self.suite.title(),
                self.scale_factor,
                self.executors,
                if self.target_partitions == 0 {
                    "one per core".to_string()
                } else {
                    self.target_partitions.to_string()
                },
                self.runs
            );
        }
        out.push('\n');
        if let Some(tpch) = &self.tpch {
            out.push('\n');
            tpch.render(&mut out);
        }
        if let Some(tpcds) = &self.tpcds {
            out.push('\n');
            tpcds.render_markdown("TPC-DS", &mut out);
        }
        if let Some(micro) = &self.micro {
            out.push('\n');
            micro.render(&mut out);
        }
        if let Some(writes) = &self.writes {
            out.push('\n');
            writes.render(&mut out);
        }
        if let Some(scaling) = &self.scaling {
            out.push('\n');
            scaling.render(&mut out);
        }
        if let Some(concurrency) = &self.concurrency {
            out.push('\n');
            concurrency.render(&mut out);
        }
        out
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct QueryFigures {
    pub(crate) query: usize,
    /// Per engine: rows of the statement that returns rows (None until it ran).
    pub(crate) rows: Vec<Option<u64>>,
    /// Per engine: every timed run, ms.
    pub(crate) times_ms: Vec<Vec<f64>>,
    /// Per engine: median of `times_ms`.
    pub(crate) median_ms: Vec<f64>,
    pub(crate) errors: Vec<Option<String>>,
    /// Row counts differ between engines, or between runs of one engine.
    pub(crate) rows_differ: bool,
}

impl QueryFigures {
    pub(crate) fn new(query: usize, engines: usize) -> Self {
        Self {
            query,
            rows: vec![None; engines],
            times_ms: vec![Vec::new(); engines],
            median_ms: vec![0.0; engines],
            errors: vec![None; engines],
            rows_differ: false,
        }
    }

    pub(crate) fn record_rows(&mut self, engine: usize, rows: u64) {
        if self.rows.iter().flatten().any(|&r| r != rows) {
            self.rows_differ = true;
        }
        self.rows[engine].get_or_insert(rows);
    }

    fn ok(&self) -> bool {
        self.errors.iter().all(Option::is_none)
    }
}

/// Fills in every query's medians; returns the totals (sums of medians) and every timed run's
/// totals, per engine, over the queries that succeeded on every engine.
fn summarize(queries: &mut [QueryFigures], engines: usize) -> (Vec<f64>, Vec<Vec<f64>>) {
    for q in queries.iter_mut() {
        q.median_ms = q.times_ms.iter().map(|t| median(t)).collect();
    }
    let ok: Vec<&QueryFigures> = queries.iter().filter(|q| q.ok()).collect();
    let total_ms = (0..engines)
        .map(|e| ok.iter().map(|q| q.median_ms[e]).sum())
        .collect();
    let runs = ok
        .iter()
        .flat_map(|q| q.times_ms.iter().map(Vec::len))
        .min()
        .unwrap_or(0);
    let run_total_ms = (0..runs)
        .map(|r| {
            (0..engines)
                .map(|e| ok.iter().map(|q| q.times_ms[e][r]).sum())
                .collect()
        })
        .collect();
    (total_ms, run_total_ms)
}

/// The geometric mean (0 for none).
fn geomean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    (values.iter().map(|r| r.ln()).sum::<f64>() / values.len() as f64).exp()
}

#[derive(Debug, Serialize)]
pub(crate) struct Ratio {
    pub(crate) baseline: String,
    /// Quiver's total over the baseline's total.
    pub(crate) total: f64,
    /// Geometric mean of the per-query ratios.
    pub(crate) geomean: f64,
    /// Queries Quiver takes more than twice as long on.
    pub(crate) above_2x: usize,
    /// The query with the highest ratio, and that ratio.
    pub(crate) worst: Option<(usize, f64)>,
    /// Queries the baseline answers in under [`SMALL_QUERY_MS`].
    pub(crate) small_queries: usize,
    /// Over those: Quiver's mean extra time (its median minus the baseline's), ms.
    pub(crate) small_mean_extra_ms: f64,
}

/// A query the baseline answers faster than this is small: what Quiver adds to it is fixed cost.
pub(crate) const SMALL_QUERY_MS: f64 = 100.0;

#[derive(Debug, Serialize)]
pub(crate) struct TpchReport {
    /// Engine 0 is Quiver; the others are baselines.
    pub(crate) engines: Vec<String>,
    pub(crate) queries: Vec<QueryFigures>,
    pub(crate) total_ms: Vec<f64>,
    /// Per timed run, per engine: the sum of that run's times (shows the spread between runs).
    pub(crate) run_total_ms: Vec<Vec<f64>>,
    pub(crate) ratios: Vec<Ratio>,
    /// RSS of each Quiver process after the runs.
    pub(crate) memory: Vec<NodeMemory>,
}

impl TpchReport {
    pub(crate) fn new(
        engines: Vec<String>,
        mut queries: Vec<QueryFigures>,
        memory: Vec<NodeMemory>,
    ) -> Self {
        let (total_ms, run_total_ms) = summarize(&mut queries, engines.len());
        let ratios = (1..engines.len())
            .map(|b| {
                let per_query: Vec<(usize, f64)> = queries
                    .iter()
                    .filter(|q| q.ok() && q.median_ms[b] > 0.0)
                    .map(|q| (q.query, q.median_ms[0] / q.median_ms[b]))
                    .collect();
                let ratios: Vec<f64> = per_query.iter().map(|&(_, r)| r).collect();
                let small: Vec<f64> = queries
                    .iter()
                    .filter(|q| q.ok() && q.median_ms[b] < SMALL_QUERY_MS)
                    .map(|q| q.median_ms[0] - q.median_ms[b])
                    .collect();
                Ratio {
                    baseline: engines[b].clone(),
                    total: total_ms[0] / total_ms[b],
                    geomean: geomean(&ratios),
                    above_2x: ratios.iter().filter(|&&r| r > 2.0).count(),
                    worst: per_query.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1)),
                    small_queries: small.len(),
                    small_mean_extra_ms: if small.is_empty() {
                        0.0
                    } else {
                        small.iter().sum::<f64>() / small.len() as f64
                    },
                }
            })
            .collect();
        Self {
            engines,
            queries,
            total_ms,
            run_total_ms,
            ratios,
            memory,
        }
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "TPC-H, median ms per query (DF-quiver: single-node DataFusion with Quiver's settings; \
             DF-stock: with DataFusion's defaults; Q/x: Quiver / x; ! marks differing row counts)"
        );
        let mut header = format!("{:<6}{:>10}", "query", "rows");
        for e in &self.engines {
            let _ = write!(header, "{:>14}", e);
        }
        for e in &self.engines[1..] {
            let _ = write!(header, "{:>14}", format!("Q/{e}"));
        }
        let _ = writeln!(out, "{header}");
        for q in &self.queries {
            let rows = q.rows[0]
                .or(q.rows.iter().flatten().next().copied())
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into());
            let mark = if q.rows_differ { "!" } else { "" };
            let mut line = format!("{:<6}{:>10}", format!("q{}{mark}", q.query), rows);
            for (e, median) in q.median_ms.iter().enumerate() {
                let cell = if q.errors[e].is_some() {
                    "error".to_string()
                } else {
                    format!("{median:.1}")
                };
                let _ = write!(line, "{cell:>14}");
            }
            for b in 1..self.engines.len() {
                let cell = if q.ok() && q.median_ms[b] > 0.0 {
                    format!("{:.2}", q.median_ms[0] / q.median_ms[b])
                } else {
                    "-".into()
                };
                let _ = write!(line, "{cell:>14}");
            }
            let _ = writeln!(out, "{line}");
        }
        let mut line = format!("{:<16}", "total");
        for t in &self.total_ms {
            let _ = write!(line, "{t:>14.1}");
        }
        for r in &self.ratios {
            let _ = write!(line, "{:>14.3}", r.total);
        }
        let _ = writeln!(out, "{line}");
        for r in &self.ratios {
            let _ = writeln!(
                out,
                "Quiver / {}: total {:.3}, geometric mean of per-query ratios {:.3}",
                r.baseline, r.total, r.geomean
            );
        }
        for (r, totals) in self.run_total_ms.iter().enumerate() {
            let ratios: Vec<String> = totals[1..]
                .iter()
                .zip(&self.engines[1..])
                .map(|(t, e)| format!("Quiver / {e} {:.3}", totals[0] / t))
                .collect();
            let _ = writeln!(out, "run {}: {}", r + 1, ratios.join(", "));
        }
        for q in &self.queries {
            for (e, err) in q.errors.iter().enumerate() {
                if let Some(err) = err {
                    let _ = writeln!(out, "q{} failed on {}: {err}", q.query, self.engines[e]);
                }
            }
            if q.rows_differ {
                let _ = writeln!(out, "q{}: row counts differ: {:?}", q.query, q.rows);
            }
        }
        for node in &self.memory {
            let _ = writeln!(
                out,
                "{}: peak RSS {:.0} MiB after the TPC-H runs",
                node.node,
                mib(node.peak_rss_bytes)
            );
        }
    }
}

impl TpchReport {
    /// The report as markdown: one table row per query, then the totals and the headline
    /// figures against each baseline.
    fn render_markdown(&self, suite: &str, out: &mut String) {
        let _ = writeln!(
            out,
            "## {suite}, median ms per query\n\nDF-quiver: single-node DataFusion with Quiver's \
             settings; DF-stock: with DataFusion's defaults; Q/x: Quiver / x; ! marks differing \
             row counts.\n"
        );
        let mut header = "| query | rows |".to_string();
        let mut rule = "|---|---:|".to_string();
        for e in &self.engines {
            let _ = write!(header, " {e} |");
            rule.push_str("---:|");
        }
        for e in &self.engines[1..] {
            let _ = write!(header, " Q/{e} |");
            rule.push_str("---:|");
        }
        let _ = writeln!(out, "{header}\n{rule}");
        for q in &self.queries {
            let rows = q.rows[0]
                .or(q.rows.iter().flatten().next().copied())
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into());
            let mark = if q.rows_differ { "!" } else { "" };
            let mut line = format!("| q{}{mark} | {rows} |", q.query);
            for (e, median) in q.median_ms.iter().enumerate() {
                if q.errors[e].is_some() {
                    line.push_str(" error |");
                } else {
                    let _ = write!(line, " {median:.1} |");
                }
            }
            for b in 1..self.engines.len() {
                if q.ok() && q.median_ms[b] > 0.0 {
                    let _ = write!(line, " {:.2} |", q.median_ms[0] / q.median_ms[b]);
                } else {
                    line.push_str(" - |");
                }
            }
            let _ = writeln!(out, "{line}");
        }
        let ok = self.queries.iter().filter(|q| q.ok()).count();
        let mut line = format!("| total ({ok} queries) | |");
        for t in &self.total_ms {
            let _ = write!(line, " {t:.1} |");
        }
        for r in &self.ratios {
            let _ = write!(line, " {:.3} |", r.total);
        }
        let _ = writeln!(out, "{line}\n");
        for r in &self.ratios {
            let worst = r
                .worst
                .map(|(q, ratio)| format!("q{q} {ratio:.2}×"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "- Quiver / {}: total {:.3}, geometric mean of per-query ratios {:.3}, {} queries \
                 above 2×, worst {worst}; for the {} queries {} answers under {SMALL_QUERY_MS} ms: \
                 Quiver's mean extra time {:.1} ms",
                r.baseline,
                r.total,
                r.geomean,
                r.above_2x,
                r.small_queries,
                r.baseline,
                r.small_mean_extra_ms
            );
        }
        for (r, totals) in self.run_total_ms.iter().enumerate() {
            let ratios: Vec<String> = totals[1..]
                .iter()
                .zip(&self.engines[1..])
                .map(|(t, e)| format!("Quiver / {e} {:.3}", totals[0] / t))
                .collect();
            let _ = writeln!(out, "- run {}: {}", r + 1, ratios.join(", "));
        }
        for q in &self.queries {
            for (e, err) in q.errors.iter().enumerate() {
                if let Some(err) = err {
                    // Decode errors repeat a whole plan path: the head says what failed, and
                    // `--json` keeps all of it.
                    let mut err = err.replace('\n', " ");
                    if let Some((cut, _)) = err.char_indices().nth(400) {
                        err.truncate(cut);
                        err.push_str(" …");
                    }
                    let _ = writeln!(
                        out,
                        "- q{} failed on {} (left out of the totals): {err}",
                        q.query, self.engines[e],
                    );
                }
            }
            if q.rows_differ {
                let _ = writeln!(out, "- q{}: row counts differ: {:?}", q.query, q.rows);
            }
        }
        for node in &self.memory {
            let _ = writeln!(
                out,
                "- {}: peak RSS {:.0} MiB after the runs",
                node.node,
                mib(node.peak_rss_bytes)
            );
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    pub(crate) iterations: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) mean_ms: f64,
    pub(crate) max_ms: f64,
}

impl Latency {
    pub(crate) fn from_samples(samples: Vec<f64>) -> Self {
        Self {
            iterations: samples.len(),
            p50_ms: median(&samples),
            p99_ms: percentile(&samples, 0.99),
            mean_ms: samples.iter().sum::<f64>() / samples.len().max(1) as f64,
            max_ms: samples.iter().copied().fold(0.0, f64::max),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct DoGetFigures {
    pub(crate) sql: String,
    pub(crate) rows: u64,
    pub(crate) ipc_bytes: u64,
    pub(crate) plain_ipc_bytes: u64,
    pub(crate) quiver_gb_per_s: f64,
    pub(crate) plain_gb_per_s: f64,
    /// Quiver / plain.
    pub(crate) ratio: f64,
    pub(crate) quiver_runs: Vec<f64>,
    pub(crate) plain_runs: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct NodeMemory {
    pub(crate) node: String,
    pub(crate) peak_rss_bytes: u64,
    pub(crate) current_rss_bytes: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct SlowClientFigures {
    pub(crate) sql_copies_of_lineitem: u64,
    pub(crate) rows: u64,
    pub(crate) ipc_bytes: u64,
    pub(crate) seconds: f64,
    pub(crate) client_mb_per_s: f64,
    pub(crate) coordinator_idle_rss_bytes: u64,
    pub(crate) coordinator_peak_rss_bytes: u64,
    pub(crate) nodes: Vec<NodeMemory>,
}

#[derive(Debug, Serialize)]
pub(crate) struct MicroReport {
    pub(crate) select1: Latency,
    pub(crate) doget: DoGetFigures,
    pub(crate) slow_client: SlowClientFigures,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

impl MicroReport {
    fn render(&self, out: &mut String) {
        let s = &self.select1;
        let _ = writeln!(
            out,
            "SELECT 1 round trip ({} iterations): p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms, max {:.2} ms",
            s.iterations, s.p50_ms, s.p99_ms, s.mean_ms, s.max_ms
        );
        let d = &self.doget;
        let _ = writeln!(
            out,
            "DoGet `{}` ({} rows, {:.2} GB of Arrow IPC): Quiver {:.2} GB/s, plain arrow-flight {:.2} GB/s, ratio {:.2}",
            d.sql,
            d.rows,
            d.ipc_bytes as f64 / 1e9,
            d.quiver_gb_per_s,
            d.plain_gb_per_s,
            d.ratio
        );
        let c = &self.slow_client;
        let _ = writeln!(
            out,
            "Slow client: {} rows, {:.2} GB of Arrow IPC ({} copies of lineitem) in {:.1} s ({:.0} MB/s)",
            c.rows,
            c.ipc_bytes as f64 / 1e9,
            c.sql_copies_of_lineitem,
            c.seconds,
            c.client_mb_per_s
        );
        let _ = writeln!(
            out,
            "  coordinator RSS idle {:.0} MiB",
            mib(c.coordinator_idle_rss_bytes)
        );
        for n in &c.nodes {
            let _ = writeln!(
                out,
                "  {}: peak RSS {:.0} MiB (now {:.0} MiB)",
                n.node,
                mib(n.peak_rss_bytes),
                mib(n.current_rss_bytes)
            );
        }
    }
}

/// What one write left on disk, read back from the files.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct WriteOutput {
    pub(crate) files: u64,
    pub(crate) bytes: u64,
    /// From the Parquet footers.
    pub(crate) rows: u64,
    /// Directories holding files (1 unpartitioned; one per value partitioned).
    pub(crate) directories: u64,
}

/// One write statement on Quiver against DataFusion's `COPY … TO` of the same query.
#[derive(Debug, Serialize)]
pub(crate) struct WriteFigures {
    pub(crate) statement: String,
    pub(crate) quiver_sql: String,
    pub(crate) datafusion_sql: String,
    /// Every timed run, s.
    pub(crate) quiver_s: Vec<f64>,
    pub(crate) datafusion_s: Vec<f64>,
    pub(crate) quiver_median_s: f64,
    pub(crate) datafusion_median_s: f64,
    /// Quiver's median over DataFusion's.
    pub(crate) ratio: f64,
    /// Per timed run: CPU seconds (user + system) of the coordinator during the write.
    pub(crate) coordinator_cpu_s: Vec<f64>,
    /// Per timed run: CPU seconds of all executors together.
    pub(crate) executors_cpu_s: Vec<f64>,
    /// Per timed run, per executor.
    pub(crate) per_executor_cpu_s: Vec<Vec<f64>>,
    /// Per timed run: CPU seconds of the harness process during DataFusion's write.
    pub(crate) datafusion_cpu_s: Vec<f64>,
    pub(crate) coordinator_cpu_median_s: f64,
    pub(crate) executors_cpu_median_s: f64,
    /// The coordinator's median CPU over the executors' median.
    pub(crate) coordinator_cpu_share: f64,
    pub(crate) datafusion_cpu_median_s: f64,
    /// The last timed run's files.
    pub(crate) quiver_output: WriteOutput,
    pub(crate) datafusion_output: WriteOutput,
    /// The last timed run: distinct tasks among Quiver's file names.
    pub(crate) quiver_tasks: usize,
    /// The last timed run: files each executor logged writing.
    pub(crate) executor_files: Vec<u64>,
    /// Row counts differ between the engines (or from what `COPY` answered) in some run.
    pub(crate) rows_differ: bool,
}

#[derive(Debug, Serialize)]
pub(crate) struct WritesReport {
    pub(crate) compression: String,
    pub(crate) statements: Vec<WriteFigures>,
}

impl WritesReport {
    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "Writes, median s (Quiver: CREATE TABLE … AS SELECT * FROM lineitem through Flight SQL; \
             DF: single-node DataFusion COPY (same query) TO … with Quiver's settings; both {}; \
             CPU: user + system seconds during the write; ! marks differing row counts)",
            self.compression
        );
        let _ = writeln!(
            out,
            "{:<34}{:>10}{:>10}{:>8}{:>12}{:>11}{:>11}{:>8}{:>9}",
            "statement",
            "Quiver s",
            "DF s",
            "Q/DF",
            "files Q/DF",
            "coord CPU",
            "exec CPU",
            "coord%",
            "DF CPU"
        );
        for s in &self.statements {
            let mark = if s.rows_differ { "!" } else { "" };
            let _ = writeln!(
                out,
                "{:<34}{:>10.2}{:>10.2}{:>8.2}{:>12}{:>11.2}{:>11.2}{:>8.2}{:>9.2}",
                format!("{}{mark}", s.statement),
                s.quiver_median_s,
                s.datafusion_median_s,
                s.ratio,
                format!("{}/{}", s.quiver_output.files, s.datafusion_output.files),
                s.coordinator_cpu_median_s,
                s.executors_cpu_median_s,
                s.coordinator_cpu_share * 100.0,
                s.datafusion_cpu_median_s
            );
        }
        for s in &self.statements {
            let runs: Vec<String> = s
                .quiver_s
                .iter()
                .zip(&s.datafusion_s)
                .map(|(q, d)| format!("{q:.2}/{d:.2}"))
                .collect();
            let per_executor: Vec<String> = s
                .per_executor_cpu_s
                .iter()
                .map(|run| {
                    let cpus: Vec<String> = run.iter().map(|c| format!("{c:.2}")).collect();
                    cpus.join("+")
                })
                .collect();
            let _ = writeln!(
                out,
                "{}: runs Quiver/DF s {}; executors' CPU s per run {}; Quiver {} rows, {:.0} MiB in {} files \
                 ({} directories, {} tasks, per executor {:?}); DF {} rows, {:.0} MiB in {} files ({} directories)",
                s.statement,
                runs.join(", "),
                per_executor.join(", "),
                s.quiver_output.rows,
                mib(s.quiver_output.bytes),
                s.quiver_output.files,
                s.quiver_output.directories,
                s.quiver_tasks,
                s.executor_files,
                s.datafusion_output.rows,
                mib(s.datafusion_output.bytes),
                s.datafusion_output.files,
                s.datafusion_output.directories
            );
        }
    }
}

/// One process's CPU use over a measured stretch.
#[derive(Debug, Serialize)]
pub(crate) struct ProcessCpu {
    pub(crate) node: String,
    /// Its CPU budget (None: the whole machine).
    pub(crate) budget_cpus: Option<f64>,
    /// User + system, s.
    pub(crate) cpu_s: f64,
    /// `cpu_s` over the stretch's wall time: at most the budget where the budget holds.
    pub(crate) cpu_per_wall_s: f64,
    /// From its cgroup's `cpu.stat`, over its whole life (warm-up included).
    pub(crate) throttling: Option<Throttling>,
}

impl ProcessCpu {
    fn render(&self) -> String {
        let mut text = format!(
            "{} {:.2} CPU s ({:.2} per wall s",
            self.node, self.cpu_s, self.cpu_per_wall_s
        );
        if let Some(budget) = self.budget_cpus {
            let _ = write!(text, ", budget {budget}");
        }
        if let Some(t) = &self.throttling {
            let _ = write!(
                text,
                ", throttled in {} of {} periods, {:.1} s",
                t.throttled_periods, t.periods, t.throttled_s
            );
        }
        text.push(')');
        text
    }
}

/// One contender's CPU during its timed runs.
#[derive(Debug, Serialize)]
pub(crate) struct EngineCpu {
    pub(crate) engine: String,
    /// The sum of its timed runs' wall times, s.
    pub(crate) timed_wall_s: f64,
    pub(crate) processes: Vec<ProcessCpu>,
}

/// A cluster's speedup over a baseline.
#[derive(Debug, Serialize)]
pub(crate) struct Speedup {
    pub(crate) baseline: String,
    pub(crate) engine: String,
    pub(crate) executors: usize,
    /// The baseline's total over the cluster's (above 1: the cluster is faster).
    pub(crate) total: f64,
    /// Geometric mean of the per-query speedups.
    pub(crate) geomean: f64,
    /// What perfect scaling would give: the executor count.
    pub(crate) ideal: f64,
}

/// What the scaling benchmark ran on.
#[derive(Debug, Serialize)]
pub(crate) struct ScalingSetup {
    pub(crate) scale_factor: f64,
    /// Timed runs, after one warm-up.
    pub(crate) runs: usize,
    /// How budgets were enforced; `none` without budgets (`--node-cpus 0`).
    pub(crate) cgroups: String,
    pub(crate) budget: Option<Budget>,
    /// Every node's and the baseline's.
    pub(crate) target_partitions: usize,
    pub(crate) baselines: Vec<String>,
    pub(crate) executor_counts: Vec<usize>,
}

#[derive(Debug, Serialize)]
pub(crate) struct ScalingReport {
    #[serde(flatten)]
    pub(crate) setup: ScalingSetup,
    /// The baselines first, then one cluster per executor count.
    pub(crate) engines: Vec<String>,
    pub(crate) queries: Vec<QueryFigures>,
    pub(crate) total_ms: Vec<f64>,
    /// Per timed run, per engine: the sum of that run's times.
    pub(crate) run_total_ms: Vec<Vec<f64>>,
    pub(crate) speedups: Vec<Speedup>,
    pub(crate) cpu: Vec<EngineCpu>,
}

impl ScalingReport {
    pub(crate) fn new(
        setup: ScalingSetup,
        engines: Vec<String>,
        mut queries: Vec<QueryFigures>,
        cpu: Vec<EngineCpu>,
    ) -> Self {
        let (total_ms, run_total_ms) = summarize(&mut queries, engines.len());
        let baselines = setup.baselines.len();
        let mut speedups = Vec::new();
        for b in 0..baselines {
            for (c, &executors) in setup.executor_counts.iter().enumerate() {
                let e = baselines + c;
                let per_query: Vec<f64> = queries
                    .iter()
                    .filter(|q| q.ok() && q.median_ms[e] > 0.0)
                    .map(|q| q.median_ms[b] / q.median_ms[e])
                    .collect();
                speedups.push(Speedup {
                    baseline: engines[b].clone(),
                    engine: engines[e].clone(),
                    executors,
                    total: total_ms[b] / total_ms[e],
                    geomean: geomean(&per_query),
                    ideal: executors as f64,
                });
            }
        }
        Self {
            setup,
            engines,
            queries,
            total_ms,
            run_total_ms,
            speedups,
            cpu,
        }
    }

    fn render(&self, out: &mut String) {
        let s = &self.setup;
        let budget = match s.budget {
            Some(b) => format!(
                "every process on its own CPU budget (executors and baseline {} CPUs, coordinator {}; {})",
                b.executor_cpus, b.coordinator_cpus, s.cgroups
            ),
            None => "no CPU budgets".to_string(),
        };
        let first = &self.engines[0];
        let _ = writeln!(
            out,
            "Scaling: TPC-H SF{}, warm-up + {} runs, median ms per query; {budget}; target_partitions {} \
             everywhere; S-n = {first} / Quiver-n, the speedup of n executors (ideal: n); ! marks differing row counts",
            s.scale_factor, s.runs, s.target_partitions
        );
        let baselines = s.baselines.len();
        let mut header = format!("{:<6}{:>10}", "query", "rows");
        for e in &self.engines {
            let _ = write!(header, "{e:>12}");
        }
        for n in &s.executor_counts {
            let _ = write!(header, "{:>8}", format!("S-{n}"));
        }
        let _ = writeln!(out, "{header}");
        for q in &self.queries {
            let rows = q
                .rows
                .iter()
                .flatten()
                .next()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into());
            let mark = if q.rows_differ { "!" } else { "" };
            let mut line = format!("{:<6}{:>10}", format!("q{}{mark}", q.query), rows);
            for (e, median) in q.median_ms.iter().enumerate() {
                let cell = if q.errors[e].is_some() {
                    "error".to_string()
                } else {
                    format!("{median:.1}")
                };
                let _ = write!(line, "{cell:>12}");
            }
            for c in 0..s.executor_counts.len() {
                let e = baselines + c;
                let cell = if q.ok() && q.median_ms[e] > 0.0 {
                    format!("{:.2}", q.median_ms[0] / q.median_ms[e])
                } else {
                    "-".into()
                };
                let _ = write!(line, "{cell:>8}");
            }
            let _ = writeln!(out, "{line}");
        }
        let mut line = format!("{:<16}", "total");
        for t in &self.total_ms {
            let _ = write!(line, "{t:>12.1}");
        }
        for c in 0..s.executor_counts.len() {
            let _ = write!(
                line,
                "{:>8.2}",
                self.total_ms[0] / self.total_ms[baselines + c]
            );
        }
        let _ = writeln!(out, "{line}");
        for sp in &self.speedups {
            let _ = writeln!(
                out,
                "{} over {}: speedup {:.2} in total, geometric mean of per-query speedups {:.2} (ideal {}; {:.0} % of it)",
                sp.engine,
                sp.baseline,
                sp.total,
                sp.geomean,
                sp.ideal,
                sp.total / sp.ideal * 100.0
            );
        }
        for (r, totals) in self.run_total_ms.iter().enumerate() {
            let cells: Vec<String> = self
                .engines
                .iter()
                .zip(totals)
                .map(|(e, t)| format!("{e} {t:.0}"))
                .collect();
            let _ = writeln!(out, "run {} totals, ms: {}", r + 1, cells.join(", "));
        }
        let _ = writeln!(out, "CPU during the timed runs:");
        for engine in &self.cpu {
            let processes: Vec<String> = engine.processes.iter().map(ProcessCpu::render).collect();
            let _ = writeln!(
                out,
                "  {} ({:.1} s): {}",
                engine.engine,
                engine.timed_wall_s,
                processes.join("; ")
            );
        }
        for q in &self.queries {
            for (e, err) in q.errors.iter().enumerate() {
                if let Some(err) = err {
                    let _ = writeln!(out, "q{} failed on {}: {err}", q.query, self.engines[e]);
                }
            }
            if q.rows_differ {
                let _ = writeln!(out, "q{}: row counts differ: {:?}", q.query, q.rows);
            }
        }
    }
}

/// One query's latencies in a concurrency run.
#[derive(Debug, Serialize)]
pub(crate) struct QueryLatency {
    pub(crate) query: usize,
    pub(crate) count: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
}

/// One configuration of the concurrency benchmark.
#[derive(Debug, Serialize)]
pub(crate) struct ConcurrencyRun {
    pub(crate) label: String,
    pub(crate) executors: usize,
    /// None: no budgets.
    pub(crate) budget: Option<Budget>,
    pub(crate) target_partitions: usize,
    /// From the first query sent to the last answer, s.
    pub(crate) elapsed_s: f64,
    /// Successful queries.
    pub(crate) queries: u64,
    pub(crate) queries_per_s: f64,
    /// Of the successful queries.
    pub(crate) latency: Latency,
    pub(crate) per_query: Vec<QueryLatency>,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    /// Coordinator first.
    pub(crate) nodes: Vec<ProcessCpu>,
    /// The coordinator's and the executors' CPU s together.
    pub(crate) cluster_cpu_s: f64,
    /// The coordinator's CPU over the cluster's.
    pub(crate) coordinator_cpu_share: f64,
    /// The harness (the clients) meanwhile, s.
    pub(crate) harness_cpu_s: f64,
}

/// A budgeted configuration's throughput over the first budgeted one's.
#[derive(Debug, Serialize)]
pub(crate) struct ThroughputRatio {
    pub(crate) executors: usize,
    pub(crate) over_executors: usize,
    pub(crate) queries_per_s_ratio: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct ConcurrencyReport {
    pub(crate) scale_factor: f64,
    pub(crate) clients: usize,
    pub(crate) duration_s: f64,
    pub(crate) queries: Vec<usize>,
    /// How budgets were enforced; `none` without budgets.
    pub(crate) cgroups: String,
    pub(crate) runs: Vec<ConcurrencyRun>,
    pub(crate) ratios: Vec<ThroughputRatio>,
}

impl ConcurrencyReport {
    pub(crate) fn new(
        options: &Options,
        queries: Vec<usize>,
        cgroups: Option<&str>,
        runs: Vec<ConcurrencyRun>,
    ) -> Self {
        let budgeted: Vec<&ConcurrencyRun> = runs.iter().filter(|r| r.budget.is_some()).collect();
        let ratios = budgeted
            .iter()
            .skip(1)
            .filter_map(|r| {
                let first = budgeted.first()?;
                Some(ThroughputRatio {
                    executors: r.executors,
                    over_executors: first.executors,
                    queries_per_s_ratio: r.queries_per_s / first.queries_per_s,
                })
            })
            .collect();
        Self {
            scale_factor: options.concurrency_scale_factor,
            clients: options.clients,
            duration_s: options.duration_secs,
            queries,
            cgroups: cgroups.unwrap_or("none").to_string(),
            runs,
            ratios,
        }
    }

    fn render(&self, out: &mut String) {
        let queries: Vec<String> = self.queries.iter().map(|q| format!("q{q}")).collect();
        let _ = writeln!(
            out,
            "Concurrency: {} clients looping over TPC-H SF{} {} for {} s per configuration \
             (budgets: {}; CPU: user + system s over the run; coord %: the coordinator's share of the cluster's CPU)",
            self.clients,
            self.scale_factor,
            queries.join(","),
            self.duration_s,
            self.cgroups
        );
        let _ = writeln!(
            out,
            "{:<64}{:>9}{:>9}{:>9}{:>8}{:>11}{:>11}{:>8}{:>11}",
            "configuration",
            "q/s",
            "p50 ms",
            "p99 ms",
            "errors",
            "coord CPU",
            "exec CPU",
            "coord%",
            "client CPU"
        );
        for r in &self.runs {
            let coordinator = r.nodes.first().map_or(0.0, |n| n.cpu_s);
            let _ = writeln!(
                out,
                "{:<64}{:>9.1}{:>9.1}{:>9.1}{:>8}{:>11.1}{:>11.1}{:>8.1}{:>11.1}",
                r.label,
                r.queries_per_s,
                r.latency.p50_ms,
                r.latency.p99_ms,
                r.errors,
                coordinator,
                r.cluster_cpu_s - coordinator,
                r.coordinator_cpu_share * 100.0,
                r.harness_cpu_s
            );
        }
        for r in &self.runs {
            let nodes: Vec<String> = r.nodes.iter().map(ProcessCpu::render).collect();
            let per_query: Vec<String> = r
                .per_query
                .iter()
                .map(|q| format!("q{} {}× p50 {:.1}", q.query, q.count, q.p50_ms))
                .collect();
            let _ = writeln!(
                out,
                "{}: {} queries in {:.1} s; {}; per query (ms): {}",
                r.label,
                r.queries,
                r.elapsed_s,
                nodes.join("; "),
                per_query.join(", ")
            );
            if let Some(e) = &r.first_error {
                let _ = writeln!(out, "  first error: {e}");
            }
        }
        for ratio in &self.ratios {
            let _ = writeln!(
                out,
                "budgeted, {} executors over {}: queries/s × {:.2}",
                ratio.executors, ratio.over_executors, ratio.queries_per_s_ratio
            );
        }
    }
}
