"""More of Quiver through the real ADBC Flight SQL driver (adbc-driver-flightsql, Go core):
credentials and TLS, metadata calls, `?` parameters, DDL/DML through the DB-API, bulk ingest and
a large result. Environment: see quiver_env.py."""

import datetime
import decimal
import json
import os
import uuid

import adbc_driver_flightsql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from adbc_driver_manager import AdbcStatusCode

import quiver_env as q
from quiver_env import needs_auth, needs_no_auth, needs_tls

scalar = q.adbc_scalar


def unique(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def lineitem_entry(objects):
    for catalog in objects:
        for schema in catalog["catalog_db_schemas"] or []:
            for table in schema["db_schema_tables"] or []:
                if table["table_name"] == "lineitem":
                    return catalog["catalog_name"], schema["db_schema_name"], table
    raise AssertionError("lineitem not in get_objects")


def table_names(conn, **filters):
    objects = conn.adbc_get_objects(depth="tables", **filters).read_all().to_pylist()
    return {
        t["table_name"]
        for c in objects
        for s in c["catalog_db_schemas"] or []
        for t in s["db_schema_tables"] or []
    }


def drop_quietly(conn, kind, name):
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP {kind} IF EXISTS {name}")
    except adbc_driver_manager.Error:
        pass


# ---- connecting ----------------------------------------------------------------------------


@needs_no_auth
def test_connect_without_credentials():
    with q.adbc_connect(credentials=False) as conn:
        assert scalar(conn, "SELECT 1") == 1


@needs_auth
def test_connect_with_credentials():
    with q.adbc_connect() as conn:
        assert scalar(conn, "SELECT count(*) FROM region") == 5


@needs_auth
def test_connect_without_credentials_is_unauthenticated():
    with pytest.raises(adbc_driver_manager.Error) as info:
        with q.adbc_connect(credentials=False) as conn:
            scalar(conn, "SELECT 1")
    assert info.value.status_code == AdbcStatusCode.UNAUTHENTICATED, info.value


@needs_auth
def test_wrong_password_is_unauthenticated():
    with pytest.raises(adbc_driver_manager.Error) as info:
        with q.adbc_connect(username=q.USER, password=q.PASSWORD + "-wrong") as conn:
            scalar(conn, "SELECT 1")
    assert info.value.status_code == AdbcStatusCode.UNAUTHENTICATED, info.value


@needs_auth
def test_bearer_token_as_authorization_header():
    # A token from a (pyarrow, padded Basic) handshake, given to ADBC as a ready header.
    client = q.flight_client()
    try:
        _, bearer = client.authenticate_basic_token(q.USER, q.PASSWORD, q.options())
    finally:
        client.close()
    db_kwargs = q.adbc_db_kwargs(credentials=False)
    db_kwargs[adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value] = bearer.decode()
    with adbc_driver_flightsql.dbapi.connect(q.URL, db_kwargs=db_kwargs) as conn:
        assert scalar(conn, "SELECT count(*) FROM nation") == 25


@needs_tls
def test_tls_connection(adbc_conn):
    assert scalar(adbc_conn, "SELECT count(*) FROM nation") == 25


@needs_tls
def test_plaintext_client_on_tls_port_fails():
    db_kwargs = q.adbc_db_kwargs()
    db_kwargs.pop(adbc_driver_flightsql.DatabaseOptions.TLS_ROOT_CERTS.value, None)
    db_kwargs[adbc_driver_flightsql.DatabaseOptions.TIMEOUT_QUERY.value] = "15"
    with pytest.raises(adbc_driver_manager.Error):
        with adbc_driver_flightsql.dbapi.connect(q.plaintext_url(), db_kwargs=db_kwargs) as conn:
            scalar(conn, "SELECT 1")


@needs_tls
def test_tls_without_trusting_the_server_certificate_fails():
    db_kwargs = q.adbc_db_kwargs()
    db_kwargs.pop(adbc_driver_flightsql.DatabaseOptions.TLS_ROOT_CERTS.value, None)
    db_kwargs[adbc_driver_flightsql.DatabaseOptions.TIMEOUT_QUERY.value] = "15"
    with pytest.raises(adbc_driver_manager.Error):
        with adbc_driver_flightsql.dbapi.connect(q.URL, db_kwargs=db_kwargs) as conn:
            scalar(conn, "SELECT 1")


# ---- metadata ------------------------------------------------------------------------------


def test_get_info(adbc_conn):
    info = adbc_conn.adbc_get_info()
    assert info["vendor_name"] == "Quiver"
    assert info["vendor_version"]
    assert info["vendor_arrow_version"]
    assert info["driver_name"].startswith("ADBC Flight SQL Driver")


def test_get_table_types(adbc_conn):
    assert {"TABLE", "VIEW"} <= set(adbc_conn.adbc_get_table_types())


@pytest.mark.parametrize("depth", ["columns", "all"])
def test_get_objects_columns_have_xdbc_type_names(adbc_conn, depth):
    objects = adbc_conn.adbc_get_objects(depth=depth).read_all().to_pylist()
    catalog, schema, table = lineitem_entry(objects)
    assert (catalog, schema, table["table_type"]) == ("quiver", "public", "TABLE")
    columns = table["table_columns"]
    assert len(columns) == 16
    assert [c["ordinal_position"] for c in columns] == list(range(1, 17))
    assert all(c["xdbc_type_name"] for c in columns), [c["column_name"] for c in columns if not c["xdbc_type_name"]]
    by_name = {c["column_name"]: c for c in columns}
    assert by_name["l_orderkey"]["xdbc_type_name"] == "BIGINT"
    assert by_name["l_orderkey"]["xdbc_data_type"] == -5  # java.sql.Types.BIGINT


def test_get_objects_filters(adbc_conn):
    assert q.TPCH_TABLES <= table_names(adbc_conn, catalog_filter="quiver", db_schema_filter="public")
    assert table_names(adbc_conn, table_name_filter="line%") == {"lineitem"}
    assert table_names(adbc_conn, table_name_filter="line_tem") == {"lineitem"}
    assert q.TPCH_TABLES <= table_names(adbc_conn, table_types_filter=["TABLE"])
    assert q.TPCH_TABLES <= table_names(adbc_conn, table_types_filter=["BASE TABLE"])
    assert not q.TPCH_TABLES & table_names(adbc_conn, table_types_filter=["VIEW"])
    assert table_names(adbc_conn, catalog_filter="no_such_catalog") == set()
    objects = adbc_conn.adbc_get_objects(
        depth="columns", table_name_filter="lineitem", column_name_filter="l_%key"
    ).read_all().to_pylist()
    _, _, table = lineitem_entry(objects)
    assert [c["column_name"] for c in table["table_columns"]] == ["l_orderkey", "l_partkey", "l_suppkey"]


def test_get_table_schema(adbc_conn):
    schema = adbc_conn.adbc_get_table_schema("lineitem")
    assert len(schema) == 16
    assert schema.field("l_orderkey").type == pa.int64()
    assert schema.field("l_comment").type == pa.string()  # never Utf8View
    assert pa.types.is_decimal(schema.field("l_quantity").type)
    assert schema.field("l_shipdate").type == pa.date32()
    qualified = adbc_conn.adbc_get_table_schema("lineitem", catalog_filter="quiver", db_schema_filter="public")
    assert qualified.names == schema.names


def test_get_table_schema_of_missing_table(adbc_conn):
    with pytest.raises(adbc_driver_manager.Error):
        adbc_conn.adbc_get_table_schema("no_such_table_here")


def test_execute_schema(adbc_conn):
    with adbc_conn.cursor() as cur:
        schema = cur.adbc_execute_schema(
            "SELECT l_orderkey, l_comment, l_extendedprice * 2 AS twice FROM lineitem WHERE l_orderkey < 0"
        )
        assert schema.names == ["l_orderkey", "l_comment", "twice"]
        assert schema.field("l_orderkey").type == pa.int64()
        assert schema.field("l_comment").type == pa.string()
        # The schema is what the query then streams.
        cur.execute("SELECT l_orderkey, l_comment, l_extendedprice * 2 AS twice FROM lineitem WHERE l_orderkey < 0")
        table = cur.fetch_arrow_table()
        assert table.num_rows == 0 and table.schema.names == schema.names
        assert [f.type for f in table.schema] == [f.type for f in schema]


def test_current_catalog_and_schema():
    with q.adbc_connect() as conn:
        conn.adbc_current_catalog = "quiver"
        conn.adbc_current_db_schema = "public"
        assert (conn.adbc_current_catalog, conn.adbc_current_db_schema) == ("quiver", "public")


# ---- parameters ----------------------------------------------------------------------------


def test_parameters_of_several_types(adbc_conn):
    cases = [
        ("l_shipdate <= ?", (datetime.date(1995, 1, 1),), "l_shipdate <= DATE '1995-01-01'"),
        ("l_quantity > ?", (decimal.Decimal("30"),), "l_quantity > 30"),
        ("l_discount > ?", (0.05,), "l_discount > 0.05"),
        ("l_returnflag = ? AND l_linenumber = ?", ("R", 3), "l_returnflag = 'R' AND l_linenumber = 3"),
        ("l_shipmode IN (?, ?)", ("AIR", "RAIL"), "l_shipmode IN ('AIR', 'RAIL')"),
    ]
    for where, params, literal in cases:
        bound = scalar(adbc_conn, f"SELECT count(*) FROM lineitem WHERE {where}", params)
        expected = scalar(adbc_conn, f"SELECT count(*) FROM lineitem WHERE {literal}")
        assert bound == expected and expected > 0, (where, params)


def test_null_parameter(adbc_conn):
    assert scalar(adbc_conn, "SELECT count(*) FROM nation WHERE n_nationkey = ?", (None,)) == 0


def test_same_statement_with_new_parameters(adbc_conn):
    with adbc_conn.cursor() as cur:
        names = []
        for key in (0, 7, 24):
            cur.execute("SELECT n_name FROM nation WHERE n_nationkey = ?", (key,))
            names.append(cur.fetchone()[0])
    assert names == ["ALGERIA", "GERMANY", "UNITED STATES"]


def test_untyped_parameters_take_the_bound_types(adbc_conn):
    with adbc_conn.cursor() as cur:
        cur.execute("SELECT ? AS a, ? AS b, ? AS c", (1, "x", 2.5))
        assert cur.fetchall() == [(1, "x", 2.5)]
        cur.execute("SELECT ? + ? AS s", (1, 2))
        assert cur.fetchall() == [(3,)]


def test_bad_parameter_type_is_programming_error(adbc_conn):
    with adbc_conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.ProgrammingError):
            cur.execute("SELECT n_name FROM nation WHERE n_nationkey = ?", ("not a number",))


# ---- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM no_such_table_here",
        "SELEC 1",
        "SELECT no_such_column FROM nation",
        "SELECT 1 / 0",
    ],
)
def test_sql_errors_are_programming_errors(adbc_conn, sql):
    with adbc_conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.ProgrammingError) as info:
            cur.execute(sql)
            cur.fetchall()
    assert info.value.status_code in (AdbcStatusCode.INVALID_ARGUMENT, AdbcStatusCode.NOT_FOUND), info.value
    # The connection is still usable.
    assert scalar(adbc_conn, "SELECT 1") == 1


# ---- DDL and DML through the DB-API --------------------------------------------------------


def test_create_and_drop_view(adbc_conn):
    name = unique("py_view")
    try:
        with adbc_conn.cursor() as cur:
            cur.execute(f"CREATE VIEW {name} AS SELECT n_name, n_regionkey FROM nation WHERE n_regionkey = 3")
            assert name in table_names(adbc_conn, table_types_filter=["VIEW"])
            assert scalar(adbc_conn, f"SELECT count(*) FROM {name}") == 5
            # Created exactly once: creating it again fails.
            with pytest.raises(adbc_driver_manager.Error):
                cur.execute(f"CREATE VIEW {name} AS SELECT 1 AS one")
            cur.execute(f"DROP VIEW {name}")
        assert name not in table_names(adbc_conn)
        with pytest.raises(adbc_driver_manager.ProgrammingError):
            scalar(adbc_conn, f"SELECT count(*) FROM {name}")
    finally:
        drop_quietly(adbc_conn, "VIEW", name)


def test_create_table_as_select_insert_and_drop(adbc_conn):
    name = unique("py_ctas")
    try:
        with adbc_conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {name} AS SELECT n_nationkey AS k, n_name AS v FROM nation")
            assert scalar(adbc_conn, f"SELECT count(*) FROM {name}") == 25
            assert name in table_names(adbc_conn, table_types_filter=["TABLE"])

            # INSERT ... VALUES through execute(): if the server answers DataFusion's one-row
            # `count` result, it must say how many rows went in.
            cur.execute(f"INSERT INTO {name} VALUES (100, 'x'), (101, 'y')")
            if cur.description:
                assert cur.fetchall() == [(2,)]
            assert scalar(adbc_conn, f"SELECT count(*) FROM {name}") == 27

            # INSERT ... SELECT as an update (DoPut(CommandPreparedStatementUpdate), the JDBC
            # executeUpdate path): rowcount is the number of rows inserted.
            cur.executemany(f"INSERT INTO {name} SELECT n_nationkey + 1000, n_name FROM nation WHERE n_regionkey = 0", None)
            assert cur.rowcount == 5
            assert scalar(adbc_conn, f"SELECT count(*) FROM {name}") == 32
            assert scalar(adbc_conn, f"SELECT v FROM {name} WHERE k = 101") == "y"
            assert scalar(adbc_conn, f"SELECT sum(k) FROM {name} WHERE k >= 1000") == sum(
                1000 + k for k in (0, 5, 14, 15, 16)
            )

            cur.execute(f"DROP TABLE {name}")
        assert name not in table_names(adbc_conn)
        with pytest.raises(adbc_driver_manager.ProgrammingError):
            scalar(adbc_conn, f"SELECT count(*) FROM {name}")
    finally:
        drop_quietly(adbc_conn, "TABLE", name)


def data_files(table):
    """The data files of a managed table in the warehouse (partition directories included)."""
    root = os.path.join(q.WAREHOUSE, table)
    return [
        os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".parquet")
    ]


@pytest.mark.skipif(q.WAREHOUSE is None, reason="the warehouse directory is not visible")
def test_session_option_sets_the_roll_size_of_writes():
    """`quiver.target_file_bytes` set through the driver's session options makes that session's
    writes roll small files; another session keeps the server's 128 MiB."""
    small, default = unique("py_small"), unique("py_default")
    select = "SELECT * FROM lineitem"
    # Without credentials a session is the server's cookie, which the driver keeps only with
    # its cookie middleware.
    cookies = {"adbc.flight.sql.rpc.with_cookie_middleware": "true"}
    with q.adbc_connect(**cookies) as conn, q.adbc_connect(**cookies) as other:
        try:
            conn.adbc_connection.set_options(
                **{"adbc.flight.sql.session.option.quiver.target_file_bytes": "64KiB"}
            )
            options = json.loads(
                conn.adbc_connection.get_option("adbc.flight.sql.session.options")
            )
            assert int(options["quiver.target_file_bytes"]) == 64 * 1024, options
            with pytest.raises(adbc_driver_manager.Error):
                conn.adbc_connection.set_options(
                    **{"adbc.flight.sql.session.option.quiver.target_file_bytes": "1KiB"}
                )
            with conn.cursor() as cur:
                cur.execute(f"CREATE TABLE {small} PARTITIONED BY (l_returnflag) AS {select}")
            with other.cursor() as cur:
                cur.execute(f"CREATE TABLE {default} AS {select}")
            expected = scalar(conn, "SELECT count(*) FROM lineitem")
            assert scalar(conn, f"SELECT count(*) FROM {small}") == expected
            assert scalar(other, f"SELECT count(*) FROM {default}") == expected
            assert scalar(conn, f"SELECT count(*) FROM {small} WHERE l_returnflag = 'R'") == scalar(
                conn, "SELECT count(*) FROM lineitem WHERE l_returnflag = 'R'"
            )
            small_files, default_files = data_files(small), data_files(default)
            assert len(small_files) > 3 * len(default_files), (small_files, default_files)
            assert all(os.path.getsize(f) <= 64 * 1024 for f in small_files)
            assert {os.path.basename(os.path.dirname(f)) for f in small_files} == {
                "l_returnflag=A",
                "l_returnflag=N",
                "l_returnflag=R",
            }
        finally:
            drop_quietly(conn, "TABLE", small)
            drop_quietly(other, "TABLE", default)


def test_insert_with_bound_parameters(adbc_conn):
    name = unique("py_params")
    try:
        with adbc_conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {name} AS SELECT n_nationkey AS k, n_name AS v FROM nation WHERE 1 = 0")
            cur.executemany(f"INSERT INTO {name} VALUES (?, ?)", [(1, "one"), (2, "two"), (3, "three")])
            assert cur.rowcount in (3, -1)
            cur.execute(f"SELECT k, v FROM {name} ORDER BY k")
            assert cur.fetchall() == [(1, "one"), (2, "two"), (3, "three")]
    finally:
        drop_quietly(adbc_conn, "TABLE", name)


def test_statement_update_without_prepare(adbc_conn):
    # CommandStatementUpdate (ADBC's non-prepared update path).
    name = unique("py_upd")
    try:
        with adbc_conn.cursor() as cur:
            stmt = cur.adbc_statement
            stmt.set_sql_query(f"CREATE TABLE {name} AS SELECT r_regionkey AS k FROM region")
            stmt.execute_update()
            stmt.set_sql_query(f"INSERT INTO {name} VALUES (10), (11), (12)")
            assert stmt.execute_update() == 3
        assert scalar(adbc_conn, f"SELECT count(*) FROM {name}") == 8
    finally:
        drop_quietly(adbc_conn, "TABLE", name)


# ---- bulk ingest ---------------------------------------------------------------------------


def ingest_batch(rows, start=0):
    ids = pa.array(range(start, start + rows), type=pa.int64())
    text = pa.array([f"row-{i:010d}-{'x' * 24}" for i in range(start, start + rows)], type=pa.string())
    return pa.RecordBatch.from_arrays([ids, text], names=["id", "s"])


def test_ingest_create_append_replace(adbc_conn):
    name = unique("py_ingest")
    big = ingest_batch(200_000)
    assert big.nbytes > 4 * 1024 * 1024  # one IPC message above tonic's default 4 MiB limit
    try:
        with adbc_conn.cursor() as cur:
            assert cur.adbc_ingest(name, big, mode="create") in (200_000, -1)
            assert scalar(adbc_conn, f"SELECT count(*) FROM {name}") == 200_000
            assert scalar(adbc_conn, f"SELECT sum(id) FROM {name}") == sum(range(200_000))
            assert scalar(adbc_conn, f"SELECT s FROM {name} WHERE id = 123456") == big.column(1)[123456].as_py()

            with pytest.raises(adbc_driver_manager.Error):
                cur.adbc_ingest(name, ingest_batch(10), mode="create")  # exists already

            cur.adbc_ingest(name, ingest_batch(1_000, start=200_000), mode="append")
            assert scalar(adbc_conn, f"SELECT count(*) FROM {name}") == 201_000

            cur.adbc_ingest(name, ingest_batch(500, start=300_000), mode="create_append")
            assert scalar(adbc_conn, f"SELECT count(*) FROM {name}") == 201_500

            cur.adbc_ingest(name, ingest_batch(42, start=7), mode="replace")
            assert scalar(adbc_conn, f"SELECT count(*) FROM {name}") == 42
            assert scalar(adbc_conn, f"SELECT min(id) FROM {name}") == 7
    finally:
        drop_quietly(adbc_conn, "TABLE", name)


def test_ingest_create_append_on_a_new_table(adbc_conn):
    name = unique("py_ingest_ca")
    try:
        with adbc_conn.cursor() as cur:
            cur.adbc_ingest(name, ingest_batch(1234), mode="create_append")
        assert scalar(adbc_conn, f"SELECT count(*) FROM {name}") == 1234
    finally:
        drop_quietly(adbc_conn, "TABLE", name)


def test_ingest_append_to_missing_table_fails(adbc_conn):
    with adbc_conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.Error) as info:
            cur.adbc_ingest(unique("py_missing"), ingest_batch(10), mode="append")
    assert info.value.status_code != AdbcStatusCode.NOT_IMPLEMENTED, info.value


def test_ingest_many_batches(adbc_conn):
    name = unique("py_ingest_multi")
    reader = pa.RecordBatchReader.from_batches(
        ingest_batch(1).schema, (ingest_batch(10_000, start=i * 10_000) for i in range(20))
    )
    try:
        with adbc_conn.cursor() as cur:
            cur.adbc_ingest(name, reader, mode="create")
        assert scalar(adbc_conn, f"SELECT count(*) FROM {name}") == 200_000
        assert scalar(adbc_conn, f"SELECT count(DISTINCT id) FROM {name}") == 200_000
    finally:
        drop_quietly(adbc_conn, "TABLE", name)


# ---- large results -------------------------------------------------------------------------


def test_two_million_rows_as_arrow(adbc_conn):
    n = 2_000_000
    with adbc_conn.cursor() as cur:
        cur.execute(f"SELECT value, value * 2 AS twice FROM range({n})")
        table = cur.fetch_arrow_table()
    assert table.num_rows == n
    assert table.schema.names == ["value", "twice"]
    assert table.nbytes > 16 * 1024 * 1024  # more than ADBC's per-message receive limit in total
    assert pc.sum(table.column("value")).as_py() == n * (n - 1) // 2
    assert pc.sum(table.column("twice")).as_py() == n * (n - 1)


def test_large_result_streams_in_batches(adbc_conn):
    with adbc_conn.cursor() as cur:
        cur.execute("SELECT l_orderkey, l_comment FROM lineitem")
        reader = cur.fetch_record_batch()
        batches = rows = 0
        for batch in reader:
            batches += 1
            rows += batch.num_rows
    assert rows == scalar(adbc_conn, "SELECT count(*) FROM lineitem")
    assert batches > 1


def test_fetchmany_then_close_early(adbc_conn):
    # A cursor closed with most of a big result unread must not wedge the connection.
    with adbc_conn.cursor() as cur:
        cur.execute("SELECT value FROM range(100000000)")
        assert len(cur.fetchmany(10)) == 10
    assert scalar(adbc_conn, "SELECT count(*) FROM region") == 5
