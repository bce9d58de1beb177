"""Quiver through influxdata's flightsql-dbapi (PyPI `flightsql-dbapi`): its DB-API 2 module and
its SQLAlchemy 1.4 dialect `datafusion+flightsql://` (what Superset uses). Environment: see
quiver_env.py.

flightsql-dbapi 0.2.2 URL: `datafusion+flightsql://[user:password@]host:port[?options]`;
  user:password  => Basic handshake (pyarrow `authenticate_basic_token`), then its Bearer token;
  token=T        => `authorization: Bearer T` on every call (without user: `Bearer None`!);
  insecure=true  => plaintext (grpc+tcp) (any non-empty value, even "false"); otherwise TLS with
                    the system roots;
  disable_server_verification=true => TLS without verifying the server;
  feature-sqlalchemy-prepared-statements=on => real prepared statements for bound parameters
                    (default: SQLAlchemy renders bind values into the SQL text, which works for
                    Core expressions but turns `text("... :k")` binds into NULL: a client bug);
  any other query parameter => a gRPC header on every call.
A custom CA cannot be named in the URL: the engine then gets its connections from `creator`.
"""

import urllib.parse

import pyarrow as pa
import pyarrow.flight as flight
import pytest
import sqlalchemy
from sqlalchemy import MetaData, Table, create_engine, func, inspect, select, text

import flightsql
import flightsql.sqlalchemy  # noqa: F401 - registers the datafusion+flightsql dialect
import quiver_env as q
from quiver_env import needs_auth, needs_no_auth, needs_tls

LINEITEM_COLUMNS = [
    "l_orderkey", "l_partkey", "l_suppkey", "l_linenumber", "l_quantity", "l_extendedprice",
    "l_discount", "l_tax", "l_returnflag", "l_linestatus", "l_shipdate", "l_commitdate",
    "l_receiptdate", "l_shipinstruct", "l_shipmode", "l_comment",
]  # fmt: skip

CREDENTIALS = (q.USER, q.PASSWORD) if q.AUTH else (None, None)
CUSTOM_CA = q.TLS and q.TLS_ROOT is not None


def engine_url(user=None, password=None, **query):
    host, port = q.host_port()
    userinfo = ""
    if user is not None:
        userinfo = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password or '', safe='')}@"
    if not q.TLS:
        query.setdefault("insecure", "true")
    suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
    return f"datafusion+flightsql://{userinfo}{host}:{port}{suffix}"


def dbapi_client(user=None, password=None, token=None, **query):
    """A flightsql.FlightSQLClient built as the dialect builds it from engine_url(...), but
    trusting QUIVER_TLS_ROOT (which no URL option can name)."""
    features = {k[len("feature-") :]: v for k, v in query.items() if k.startswith("feature-")}
    metadata = {k: v for k, v in query.items() if not k.startswith("feature-")}
    host, port = q.host_port()
    kwargs = {"tls_root_certs": q.tls_root_pem()} if CUSTOM_CA else {}
    return flightsql.FlightSQLClient(
        host=host,
        port=port,
        user=user,
        password=password,
        token=token,
        insecure=not q.TLS,
        metadata=metadata,
        features=features,
        **kwargs,
    )


def make_engine(user=None, password=None, token=None, **query):
    """A datafusion+flightsql engine: from the URL alone, or (TLS with a custom CA) with the
    dialect's connections made by `creator`."""
    if CUSTOM_CA:
        # create_engine still builds (but does not use) a client from the URL: keep credentials
        # out of it, or it would try a handshake without the CA.
        return create_engine(
            engine_url(**query),
            creator=lambda: flightsql.connect(dbapi_client(user, password, token, **query)),
        )
    if token is not None:
        query["token"] = token
    return create_engine(engine_url(user, password, **query))


@pytest.fixture(scope="module")
def engine():
    e = make_engine(*CREDENTIALS)
    yield e
    e.dispose()


def test_dialect_is_registered():
    assert sqlalchemy.__version__.startswith("1.4.")
    dialect = sqlalchemy.engine.URL.create("datafusion+flightsql").get_dialect()
    assert dialect.__name__ == "DataFusionDialect"


def test_inspector_lists_tpch_tables(engine):
    inspector = inspect(engine)
    assert "public" in inspector.get_schema_names()
    assert q.TPCH_TABLES <= set(inspector.get_table_names())
    assert q.TPCH_TABLES <= set(inspector.get_table_names(schema="public"))
    assert inspector.has_table("lineitem")


def test_inspector_lists_lineitem_columns(engine):
    columns = inspect(engine).get_columns("lineitem")
    assert [c["name"] for c in columns] == LINEITEM_COLUMNS
    types = {c["name"]: c["type"] for c in columns}
    assert isinstance(types["l_orderkey"], sqlalchemy.types.BIGINT)
    assert isinstance(types["l_quantity"], sqlalchemy.types.DECIMAL)
    assert isinstance(types["l_shipdate"], sqlalchemy.types.DATE)
    # Utf8View would come back as BLOB (and break Superset): strings must be plain Utf8.
    assert isinstance(types["l_comment"], sqlalchemy.types.TEXT)


def test_count_matches_adbc(engine, lineitem_count):
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM lineitem")).scalar() == lineitem_count


def test_reflected_table_and_core_select(engine, adbc_conn):
    with engine.connect() as conn:
        nation = Table("nation", MetaData(), autoload_with=conn)
        assert [c.name for c in nation.columns][:2] == ["n_nationkey", "n_name"]
        # The dialect renders bound values into the SQL text (no prepared statements by default).
        rows = conn.execute(select(nation.c.n_name).where(nation.c.n_nationkey == 7)).fetchall()
        assert rows == [("GERMANY",)]
        count = conn.execute(select(func.count()).select_from(nation).where(nation.c.n_name.like("%AN%"))).scalar()
    assert count == q.adbc_scalar(adbc_conn, "SELECT count(*) FROM nation WHERE n_name LIKE '%AN%'")


def test_result_types(engine):
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT n_name, n_nationkey, CAST(1.5 AS DOUBLE) AS d FROM nation WHERE n_nationkey = 0")
        ).one()
    assert row == ("ALGERIA", 0, 1.5)
    assert isinstance(row[0], str)


def test_prepared_statement_parameters():
    e = make_engine(*CREDENTIALS, **{"feature-sqlalchemy-prepared-statements": "on"})
    try:
        with e.connect() as conn:
            rows = conn.execute(text("SELECT n_name FROM nation WHERE n_nationkey = :k"), {"k": 7}).fetchall()
        assert rows == [("GERMANY",)]
    finally:
        e.dispose()


def test_dbapi_cursor():
    client = dbapi_client(*CREDENTIALS)
    conn = flightsql.connect(client)
    try:
        cur = conn.cursor()
        cur.execute("SELECT r_regionkey, r_name FROM region ORDER BY r_regionkey")
        assert [d[0] for d in cur.description] == ["r_regionkey", "r_name"]
        rows = cur.fetchall()
        assert len(rows) == 5 and rows[0] == [0, "AFRICA"]
    finally:
        conn.close()
        client.close()


def test_sql_errors_surface_as_pyarrow_errors(engine):
    # flightsql-dbapi does not translate Flight errors into DB-API classes: pyarrow's own error
    # class for the gRPC code surfaces (NOT_FOUND => ArrowKeyError, INVALID_ARGUMENT => ArrowInvalid).
    with engine.connect() as conn:
        with pytest.raises((pa.ArrowKeyError, pa.ArrowInvalid), match="no_such_table_here"):
            conn.execute(text("SELECT * FROM no_such_table_here")).fetchall()
        with pytest.raises(pa.ArrowInvalid):
            conn.execute(text("SELEC 1")).fetchall()
        assert conn.execute(text("SELECT 1")).scalar() == 1


def bearer_token():
    client = q.flight_client()
    try:
        _, bearer = client.authenticate_basic_token(q.USER, q.PASSWORD, q.options())
    finally:
        client.close()
    assert bearer.startswith(b"Bearer ")
    return bearer[len(b"Bearer ") :].decode()


@needs_auth
def test_token_query_parameter():
    e = make_engine(token=bearer_token())
    try:
        with e.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM region")).scalar() == 5
    finally:
        e.dispose()


@needs_auth
def test_without_credentials_is_unauthenticated():
    # With neither user/password nor token the client sends `authorization: Bearer None`.
    e = make_engine()
    try:
        with pytest.raises(flight.FlightUnauthenticatedError):
            with e.connect() as conn:
                conn.execute(text("SELECT 1")).fetchall()
    finally:
        e.dispose()


@needs_auth
def test_wrong_password_is_unauthenticated():
    # The dialect's Basic handshake runs inside create_engine (or inside `creator`).
    with pytest.raises(flight.FlightUnauthenticatedError):
        e = make_engine(q.USER, q.PASSWORD + "-wrong")
        try:
            with e.connect() as conn:
                conn.execute(text("SELECT 1")).fetchall()
        finally:
            e.dispose()


@needs_no_auth
def test_stray_bearer_none_is_ignored_without_auth():
    # Given no credentials the client sends `authorization: Bearer None`; a server without auth
    # must not reject it.
    e = make_engine()
    try:
        with e.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM region")).scalar() == 5
    finally:
        e.dispose()


@needs_tls
def test_url_only_tls_without_server_verification():
    # What a Superset user can type: TLS, no custom CA, server verification off.
    e = create_engine(engine_url(*CREDENTIALS, disable_server_verification="true"))
    try:
        with e.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM region")).scalar() == 5
    finally:
        e.dispose()


def test_extra_query_parameters_become_headers():
    e = make_engine(*CREDENTIALS, **{"x-quiver-client": "superset"})
    try:
        with e.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        e.dispose()
