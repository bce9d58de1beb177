"""The admin HTTP port of a cluster's nodes: /metrics read with the Prometheus text parser of
`prometheus_client`, /healthz and /readyz.

Runs when the Rust test gives the ports (python.rs, `python_metrics_against_a_cluster`):
  QUIVER_HTTP_COORDINATOR   HOST:PORT of the coordinator's admin port
  QUIVER_HTTP_EXECUTORS     comma-separated HOST:PORT of every executor's admin port
  QUIVER_EXECUTOR_MEMORY_LIMIT   the executors' --memory-limit, in bytes
Elsewhere it skips. Nothing else runs queries on that cluster meanwhile, so counters move by
exactly what these tests do.
"""

import os
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import quiver_env

COORDINATOR = os.environ.get("QUIVER_HTTP_COORDINATOR")
EXECUTORS = [a for a in os.environ.get("QUIVER_HTTP_EXECUTORS", "").split(",") if a]
MEMORY_LIMIT = int(os.environ.get("QUIVER_EXECUTOR_MEMORY_LIMIT", "0"))

pytestmark = pytest.mark.skipif(
    COORDINATOR is None, reason="no admin HTTP port given (QUIVER_HTTP_COORDINATOR unset)"
)

# A query's end is recorded as its stream ends, a moment after the client has its last batch.
SETTLE_SECONDS = 10


def get(addr, path):
    """(status, body, headers) of GET http://addr/path."""
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=30) as response:
            return response.status, response.read().decode(), response.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers


def scrape(addr):
    """{(sample name, sorted label pairs): value} of a node's /metrics, and its families' types."""
    status, body, headers = get(addr, "/metrics")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain"), headers["Content-Type"]
    samples, types = {}, {}
    for family in text_string_to_metric_families(body):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, types


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before, after, name, **labels):
    return value(after, name, **labels) - value(before, name, **labels)


def settle(check):
    """Scrapes the coordinator until `check(samples)` holds (or the time is up); the last scrape."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        samples, _ = scrape(COORDINATOR)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def run(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_health_and_readiness():
    for addr in [COORDINATOR, *EXECUTORS]:
        assert get(addr, "/healthz")[0] == 200, addr
        status, body, _ = get(addr, "/readyz")
        assert status == 200, (addr, body)
    assert len(EXECUTORS) >= 1


def test_query_counters_move_by_what_ran(adbc_conn):
    before, _ = scrape(COORDINATOR)
    exec_before = [scrape(a)[0] for a in EXECUTORS]

    for _ in range(3):
        assert len(run(adbc_conn, "SELECT count(*) FROM lineitem")) == 1
    assert len(run(adbc_conn, "SELECT l_orderkey FROM lineitem ORDER BY l_orderkey LIMIT 7")) == 7

    after = settle(lambda s: delta(before, s, "quiver_queries_finished_total", code="OK") >= 4)
    _, types = scrape(COORDINATOR)
    assert types["quiver_queries_started"] == "counter"
    assert types["quiver_queries_finished"] == "counter"
    assert types["quiver_query_duration_seconds"] == "histogram"
    assert types["quiver_queries_running"] == "gauge"
    assert delta(before, after, "quiver_queries_started_total") == 4
    assert delta(before, after, "quiver_queries_finished_total", code="OK") == 4
    assert delta(before, after, "quiver_query_duration_seconds_count") == 4
    assert delta(before, after, "quiver_query_duration_seconds_sum") > 0
    assert delta(before, after, "quiver_client_rows_sent_total") == 3 + 7
    assert delta(before, after, "quiver_client_bytes_sent_total") > 0
    assert value(after, "quiver_queries_running") == 0
    assert value(after, "quiver_queries_queued") == 0
    assert value(after, "quiver_tasks_running") == 0
    assert value(after, "quiver_executors_live") == len(EXECUTORS)
    # Results came to the coordinator from the executors over the worker protocol.
    assert delta(before, after, "quiver_shuffle_received_bytes_total") > 0
    assert delta(before, after, "quiver_shuffle_sent_bytes_total") > 0
    sent = sum(
        delta(b, scrape(a)[0], "quiver_shuffle_sent_bytes_total")
        for a, b in zip(EXECUTORS, exec_before)
    )
    assert sent > 0


def test_a_failed_query_counts_under_its_code(adbc_conn):
    """A query that fails while it runs (a division by zero on the executors) counts once, under
    INVALID_ARGUMENT, the code its client got."""
    before, _ = scrape(COORDINATOR)
    with pytest.raises(Exception) as failure:
        run(adbc_conn, "SELECT l_orderkey / (l_linenumber - l_linenumber) FROM lineitem")
    assert "zero" in str(failure.value).lower(), failure.value
    assert "INVALID_ARGUMENT" in str(failure.value) or "InvalidArgument" in type(failure.value).__name__ or "INVALID" in str(failure.value).upper(), failure.value

    after = settle(lambda s: delta(before, s, "quiver_queries_finished_total", code="INVALID_ARGUMENT") >= 1)
    assert delta(before, after, "quiver_queries_finished_total", code="INVALID_ARGUMENT") == 1
    assert delta(before, after, "quiver_queries_finished_total", code="OK") == 0
    assert delta(before, after, "quiver_queries_started_total") == 1


def test_a_query_refused_at_planning_counts_under_its_code():
    """An unknown table fails at GetFlightInfo (CommandStatementQuery) with NOT_FOUND: it counts
    there, once."""
    client = quiver_env.flight_client()
    headers = quiver_env.auth_headers(client)
    before, _ = scrape(COORDINATOR)
    with pytest.raises(Exception) as failure:
        quiver_env.flight_sql_query(client, "SELECT * FROM no_such_table", headers)
    assert "no_such_table" in str(failure.value), failure.value

    after = settle(lambda s: delta(before, s, "quiver_queries_finished_total", code="NOT_FOUND") >= 1)
    assert delta(before, after, "quiver_queries_finished_total", code="NOT_FOUND") == 1
    assert delta(before, after, "quiver_queries_finished_total", code="OK") == 0
    assert delta(before, after, "quiver_client_rows_sent_total") == 0


def test_a_statement_refused_at_prepare_counts_under_its_code(adbc_conn):
    """ADBC prepares every statement: an unknown table fails at CreatePreparedStatement, and
    counts there, once."""
    before, _ = scrape(COORDINATOR)
    with pytest.raises(Exception) as failure:
        run(adbc_conn, "SELECT * FROM no_such_table")
    assert "no_such_table" in str(failure.value), failure.value
    after = settle(lambda s: delta(before, s, "quiver_queries_finished_total", code="NOT_FOUND") >= 1)
    assert delta(before, after, "quiver_queries_finished_total", code="NOT_FOUND") == 1
    assert delta(before, after, "quiver_queries_finished_total", code="OK") == 0


def test_executors_report_memory_tasks_and_heartbeats():
    assert EXECUTORS
    for addr in EXECUTORS:
        samples, types = scrape(addr)
        for gauge in [
            "quiver_memory_used_bytes",
            "quiver_memory_limit_bytes",
            "quiver_spill_bytes",
            "quiver_tasks_running",
        ]:
            assert types[gauge] == "gauge", (addr, gauge)
            assert (gauge, ()) in samples, (addr, gauge)
        assert value(samples, "quiver_memory_limit_bytes") == MEMORY_LIMIT
        assert 0 <= value(samples, "quiver_memory_used_bytes") <= MEMORY_LIMIT
        assert value(samples, "quiver_tasks_running") == 0
        assert types["quiver_heartbeats_missed"] == "counter"
        assert value(samples, "quiver_heartbeats_missed_total") == 0
        assert types["quiver_shuffle_sent_bytes"] == "counter"
        # Coordinator-only series stay on the coordinator.
        assert "quiver_queries_started" not in types


def test_executor_task_gauges_follow_a_running_query():
    """While a long query runs its tasks show in the executors' gauges; once it is cancelled they
    leave them."""
    client = quiver_env.flight_client()
    headers = quiver_env.auth_headers(client)
    sql = "SELECT count(*) FROM lineitem a, lineitem b WHERE a.l_comment < b.l_comment"
    info = client.get_flight_info(quiver_env.statement_query_descriptor(sql), quiver_env.options(headers))
    reader = client.do_get(info.endpoints[0].ticket, quiver_env.options(headers))

    def running():
        return sum(value(scrape(a)[0], "quiver_tasks_running") for a in EXECUTORS)

    deadline = time.monotonic() + 60
    while running() == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running() > 0
    before, _ = scrape(COORDINATOR)
    assert value(before, "quiver_queries_running") == 1
    assert value(before, "quiver_tasks_running") == 1
    reader.cancel()

    deadline = time.monotonic() + 30
    while running() > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running() == 0
    after = settle(lambda s: delta(before, s, "quiver_queries_finished_total", code="CANCELLED") >= 1)
    assert delta(before, after, "quiver_queries_finished_total", code="CANCELLED") == 1
    assert value(after, "quiver_queries_running") == 0
