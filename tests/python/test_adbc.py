"""Quiver through the real ADBC Flight SQL driver (adbc-driver-flightsql from PyPI).

Run by the Rust test `python::adbc_driver_runs_tpch_and_lists_objects`, which starts a coordinator
and two executor processes and sets:
  QUIVER_URL           grpc://host:port of the coordinator
  QUIVER_EXPECTED      directory of qN.arrow files: single-node DataFusion results
  QUIVER_TPCH_QUERIES  directory of the qN.sql query texts
and, when the server has them, QUIVER_USER/QUIVER_PASSWORD and QUIVER_TLS_ROOT (see quiver_env.py).
"""

import decimal
import math
import os
import pathlib

import adbc_driver_manager
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

import quiver_env

EXPECTED = pathlib.Path(os.environ["QUIVER_EXPECTED"])
QUERIES = pathlib.Path(os.environ["QUIVER_TPCH_QUERIES"])
TPCH_TABLES = {"nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem"}


@pytest.fixture(scope="module")
def conn():
    connection = quiver_env.adbc_connect()
    yield connection
    connection.close()


def statements(n):
    text = (QUERIES / f"q{n}.sql").read_text()
    return [s.strip() for s in text.split(";") if s.strip()]


def run(conn, sqls):
    """Runs each statement through the DB-API; returns the last result with columns."""
    result = None
    with conn.cursor() as cur:
        for sql in sqls:
            cur.execute(sql)
            if cur.description:
                result = cur.fetch_arrow_table()
    return result


def rows(table):
    columns = [c.to_pylist() for c in table.columns]
    return [tuple(r) for r in zip(*columns)]


def sort_key(row):
    return tuple(
        (0, "") if v is None else (1, f"{v:.4f}" if isinstance(v, float) else str(v)) for v in row
    )


def same(a, b):
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def assert_same(expected, actual, ordered):
    assert expected.column_names == actual.column_names
    exp, act = rows(expected), rows(actual)
    assert len(exp) == len(act), f"expected {len(exp)} rows, got {len(act)}"
    if not ordered:
        exp.sort(key=sort_key)
        act.sort(key=sort_key)
    for i, (e, a) in enumerate(zip(exp, act)):
        assert len(e) == len(a) and all(same(x, y) for x, y in zip(e, a)), f"row {i}: {e} != {a}"


def test_get_objects_lists_tables_and_columns(conn):
    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    catalogs = {c["catalog_name"]: c for c in objects}
    assert "quiver" in catalogs
    schemas = {s["db_schema_name"]: s for s in catalogs["quiver"]["catalog_db_schemas"]}
    tables = {t["table_name"]: t for t in schemas["public"]["db_schema_tables"]}
    assert TPCH_TABLES <= set(tables)
    columns = [c["column_name"] for c in tables["lineitem"]["table_columns"]]
    assert len(columns) == 16 and columns[0] == "l_orderkey"


def test_get_info_and_table_types(conn):
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "Quiver"
    assert {"TABLE", "VIEW"} <= set(conn.adbc_get_table_types())


@pytest.mark.parametrize("n", range(1, 23))
def test_tpch_query_matches_single_node_datafusion(conn, n):
    sqls = statements(n)
    actual = run(conn, sqls)
    with ipc.open_file(EXPECTED / f"q{n}.arrow") as reader:
        expected = reader.read_all()
    ordered = any("order by" in s.lower() for s in sqls)
    assert_same(expected, actual, ordered)


def test_q1_values(conn):
    table = run(conn, statements(1))
    assert table.num_rows == 4
    flags = [(r["l_returnflag"], r["l_linestatus"]) for r in table.to_pylist()]
    assert flags == [("A", "F"), ("N", "F"), ("N", "O"), ("R", "F")]
    # Rows q1 aggregates: the same WHERE clause, counted directly.
    q1 = statements(1)[0].lower()
    where = q1[q1.index("where") : q1.index("group by")]
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM lineitem {where}")
        (shipped,) = cur.fetchone()
    assert sum(r["count_order"] for r in table.to_pylist()) == shipped
    assert all(isinstance(r["sum_qty"], decimal.Decimal) and r["sum_qty"] > 0 for r in table.to_pylist())


def test_q3_top_orders(conn):
    table = run(conn, statements(3))
    assert table.num_rows == 10
    revenue = table.column("revenue").to_pylist()
    assert revenue == sorted(revenue, reverse=True)
    assert table.schema.field("l_orderkey").type == pa.int64()


def test_parameters_bind_by_position(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT n_name FROM nation WHERE n_nationkey = ? AND n_regionkey = ?", (7, 3))
        assert cur.fetchall() == [("GERMANY",)]
        cur.execute("SELECT count(*) FROM nation WHERE n_name LIKE ?", ("%AN%",))
        (count,) = cur.fetchone()
        cur.execute("SELECT count(*) FROM nation WHERE n_name LIKE '%AN%'")
        assert cur.fetchone() == (count,)
        with pytest.raises(adbc_driver_manager.ProgrammingError):
            cur.execute("SELECT n_name FROM nation WHERE n_nationkey = ?", ("not a number",))


def test_sql_errors_are_programming_errors(conn):
    with conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.ProgrammingError):
            cur.execute("SELECT * FROM no_such_table")
        with pytest.raises(adbc_driver_manager.ProgrammingError):
            cur.execute("SELEC 1")
