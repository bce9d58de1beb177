"""Quiver through raw pyarrow.flight calls (the C++ Flight client), with Flight SQL commands built
by hand: the handshake and bearer tokens, error codes, big headers, concurrent and abandoned
streams. Environment: see quiver_env.py."""

import base64
import threading
import time

import pyarrow as pa
import pyarrow.flight as flight
import pytest

import quiver_env as q
from quiver_env import needs_auth, needs_no_auth


@pytest.fixture(scope="module")
def client():
    c = q.flight_client()
    yield c
    c.close()


@pytest.fixture(scope="module")
def headers(client):
    return q.auth_headers(client)


def run_threads(targets, timeout=q.CALL_TIMEOUT + 30):
    """Runs the callables in threads; returns their results, re-raising the first error."""
    results, errors = [None] * len(targets), []

    def call(i, target):
        try:
            results[i] = target()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i, t), daemon=True) for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a call did not finish in time"
    if errors:
        raise errors[0]
    return results


# ---- handshake and tokens ------------------------------------------------------------------


@needs_auth
def test_padded_basic_handshake_returns_bearer_header(client):
    # pyarrow sends `authorization: Basic <padded base64>` and reads the token from the headers.
    key, value = client.authenticate_basic_token(q.USER, q.PASSWORD, q.options())
    assert key.lower() == b"authorization"
    assert value.startswith(b"Bearer ") and len(value) > len(b"Bearer ")


@needs_auth
def test_token_works_on_a_second_connection(client):
    bearer = client.authenticate_basic_token(q.USER, q.PASSWORD, q.options())
    other = q.flight_client()
    try:
        info, tables = q.flight_sql_query(other, "SELECT count(*) AS n FROM nation", [bearer])
        assert tables[0].column("n").to_pylist() == [25]
    finally:
        other.close()


@needs_auth
def test_token_as_basic_password_with_any_user(client):
    _, bearer = client.authenticate_basic_token(q.USER, q.PASSWORD, q.options())
    token = bearer[len(b"Bearer ") :].decode()
    other = q.flight_client()
    try:
        pair = other.authenticate_basic_token("any-user-name", token, q.options())
        assert pair[1].startswith(b"Bearer ")
        _, tables = q.flight_sql_query(other, "SELECT 1 AS one", [pair])
        assert tables[0].column("one").to_pylist() == [1]
    finally:
        other.close()


class _NoMessages(flight.ClientAuthHandler):
    """A handshake that sends no HandshakeRequest messages: only the call's headers speak."""

    def authenticate(self, outgoing, incoming):
        pass

    def get_token(self):
        return b""


@needs_auth
def test_handshake_with_bearer_header(client):
    # JDBC with `token=` calls Handshake with `authorization: Bearer <token>`; it must succeed.
    bearer = client.authenticate_basic_token(q.USER, q.PASSWORD, q.options())
    other = q.flight_client()
    try:
        other.authenticate(_NoMessages(), q.options([bearer]))
        _, tables = q.flight_sql_query(other, "SELECT 4 AS four", [bearer])
        assert tables[0].column("four").to_pylist() == [4]
    finally:
        other.close()


@needs_auth
def test_handshake_with_unpadded_basic_and_no_messages():
    # What ADBC sends: unpadded base64, zero HandshakeRequest messages.
    c = q.flight_client()
    try:
        c.authenticate(_NoMessages(), q.options([q.basic_header(q.USER, q.PASSWORD, padded=False)]))
    finally:
        c.close()


@needs_auth
@pytest.mark.parametrize("padded", [True, False])
def test_basic_header_on_a_data_call(client, padded):
    # Every call accepts `Basic` too, padded or not (ADBC sends it unpadded).
    header = q.basic_header(q.USER, q.PASSWORD, padded=padded)
    _, tables = q.flight_sql_query(client, "SELECT 2 AS two", [header])
    assert tables[0].column("two").to_pylist() == [2]


@needs_auth
def test_bad_password_is_unauthenticated():
    c = q.flight_client()
    try:
        with pytest.raises(flight.FlightUnauthenticatedError):
            c.authenticate_basic_token(q.USER, q.PASSWORD + "-wrong", q.options())
    finally:
        c.close()


@needs_auth
def test_data_call_without_credentials_is_unauthenticated():
    c = q.flight_client()
    try:
        with pytest.raises(flight.FlightUnauthenticatedError):
            q.flight_sql_query(c, "SELECT 1")
        with pytest.raises(flight.FlightUnauthenticatedError):
            list(c.list_actions(q.options()))
    finally:
        c.close()


@needs_auth
def test_forged_bearer_is_unauthenticated(client):
    forged = (b"authorization", b"Bearer " + base64.b64encode(b"not a token"))
    with pytest.raises(flight.FlightUnauthenticatedError):
        q.flight_sql_query(client, "SELECT 1", [forged])


@needs_no_auth
def test_data_call_without_credentials_works_without_auth():
    c = q.flight_client()
    try:
        _, tables = q.flight_sql_query(c, "SELECT 3 AS three")
        assert tables[0].column("three").to_pylist() == [3]
    finally:
        c.close()


# ---- Flight SQL by hand ------------------------------------------------------------------------


def test_statement_query_one_endpoint_no_location_same_schema(client, headers, lineitem_count):
    info, tables = q.flight_sql_query(client, "SELECT count(*) AS n FROM lineitem", headers)
    assert len(info.endpoints) == 1
    assert list(info.endpoints[0].locations) == []
    assert tables[0].schema == info.schema
    assert tables[0].column("n").to_pylist() == [lineitem_count]


def test_empty_result_still_has_schema(client, headers):
    info, tables = q.flight_sql_query(client, "SELECT n_name, n_nationkey FROM nation WHERE 1 = 0", headers)
    table = pa.concat_tables(tables)
    assert table.num_rows == 0
    assert table.schema.names == ["n_name", "n_nationkey"]
    assert table.schema == info.schema


@pytest.mark.parametrize(
    "sql, error",
    [
        ("SELECT * FROM no_such_table_here", pa.ArrowKeyError),  # NOT_FOUND
        ("SELEC 1", pa.ArrowInvalid),  # INVALID_ARGUMENT
        ("SELECT 1 / 0", pa.ArrowInvalid),
    ],
)
def test_sql_errors_have_client_error_codes(client, headers, sql, error):
    # Not INTERNAL/UNKNOWN (FlightInternalError/FlightServerError), and not a hung stream.
    with pytest.raises(error):
        q.flight_sql_query(client, sql, headers)


def test_unknown_action_is_unimplemented(client, headers):
    # pyarrow 26 has no FlightUnimplementedError: gRPC UNIMPLEMENTED surfaces as
    # ArrowNotImplementedError ("Flight returned unimplemented error, ...").
    with pytest.raises(pa.ArrowNotImplementedError, match="unimplemented"):
        list(client.do_action(flight.Action("NoSuchActionType", b""), q.options(headers)))


def test_thirty_kib_header_is_accepted(client, headers):
    big = (b"x-quiver-test-big-header", b"v" * (30 * 1024))
    _, tables = q.flight_sql_query(client, "SELECT count(*) AS n FROM region", [*headers, big])
    assert tables[0].column("n").to_pylist() == [5]


def test_two_concurrent_do_gets_on_one_client(client, headers, adbc_conn):
    expected = {t: q.adbc_scalar(adbc_conn, f"SELECT count(*) FROM {t}") for t in ("lineitem", "orders")}
    infos = {
        t: client.get_flight_info(q.statement_query_descriptor(f"SELECT * FROM {t}"), q.options(headers))
        for t in expected
    }
    # Open both streams before reading either, then drain them in parallel.
    readers = {t: client.do_get(infos[t].endpoints[0].ticket, q.options(headers)) for t in expected}
    counted = run_threads([lambda r=readers[t]: r.read_all().num_rows for t in expected])
    assert dict(zip(expected, counted)) == expected


def test_concurrent_queries_from_threads(client, headers):
    sqls = [f"SELECT count(*) AS n FROM lineitem WHERE l_linenumber = {i}" for i in range(1, 5)]
    results = run_threads([lambda s=s: q.flight_sql_query(client, s, headers)[1][0] for s in sqls])
    total = sum(t.column("n")[0].as_py() for t in results)
    _, tables = q.flight_sql_query(client, "SELECT count(*) AS n FROM lineitem WHERE l_linenumber <= 4", headers)
    assert total == tables[0].column("n")[0].as_py()


def test_stream_dropped_after_first_batch_leaves_server_healthy(client, headers, lineitem_count):
    # A result far bigger than what the client will read: the server must notice the hang-up.
    sql = "SELECT value, value * 2 AS twice FROM range(200000000)"
    info = client.get_flight_info(q.statement_query_descriptor(sql), q.options(headers))
    reader = client.do_get(info.endpoints[0].ticket, q.options(headers))
    chunk = reader.read_chunk()
    assert chunk.data.num_rows > 0
    reader.cancel()
    del reader

    # The same client and a fresh one both still get answers, promptly.
    started = time.monotonic()
    _, tables = q.flight_sql_query(client, "SELECT count(*) AS n FROM lineitem", headers)
    assert tables[0].column("n").to_pylist() == [lineitem_count]
    other = q.flight_client()
    try:
        _, tables = q.flight_sql_query(other, "SELECT count(*) AS n FROM lineitem", q.auth_headers(other))
        assert tables[0].column("n").to_pylist() == [lineitem_count]
    finally:
        other.close()
    assert time.monotonic() - started < 60


def test_many_abandoned_streams_then_query(client, headers):
    sql = "SELECT value FROM range(50000000)"
    for _ in range(5):
        info = client.get_flight_info(q.statement_query_descriptor(sql), q.options(headers))
        reader = client.do_get(info.endpoints[0].ticket, q.options(headers))
        reader.read_chunk()
        reader.cancel()
    _, tables = q.flight_sql_query(client, "SELECT count(*) AS n FROM nation", headers)
    assert tables[0].column("n").to_pylist() == [25]
