"""How the Python tests reach the Quiver server under test: the environment contract, and
connection helpers for ADBC, pyarrow.flight and hand-built Flight SQL commands.

Environment (set by the Rust test that starts the server and runs pytest):
  QUIVER_URL                     grpc://HOST:PORT or grpc+tls://HOST:PORT (required)
  QUIVER_USER, QUIVER_PASSWORD   set when the server requires authentication; unset = no auth
  QUIVER_TLS_ROOT                path of the PEM CA/certificate to trust (with grpc+tls URLs)
  QUIVER_MODE                    "cluster" or "serve" (informational)
"""

import base64
import os
import urllib.parse

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow.flight as flight
import pytest

URL = os.environ["QUIVER_URL"]
USER = os.environ.get("QUIVER_USER") or None
PASSWORD = os.environ.get("QUIVER_PASSWORD", "") if USER is not None else None
TLS_ROOT = os.environ.get("QUIVER_TLS_ROOT") or None
MODE = os.environ.get("QUIVER_MODE", "")
# The coordinator's warehouse directory, when the tests may look into it (cluster mode).
WAREHOUSE = os.environ.get("QUIVER_WAREHOUSE") or None

AUTH = USER is not None
TLS = URL.startswith("grpc+tls://")

# Bound on every single client call (seconds). A per-test watchdog in conftest.py bounds the rest.
CALL_TIMEOUT = 180.0

TPCH_TABLES = {"nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem"}

needs_auth = pytest.mark.skipif(not AUTH, reason="server runs without authentication (QUIVER_USER unset)")
needs_no_auth = pytest.mark.skipif(AUTH, reason="server requires authentication (QUIVER_USER set)")
needs_tls = pytest.mark.skipif(not TLS, reason="plaintext server (QUIVER_URL is not grpc+tls)")


def host_port():
    parsed = urllib.parse.urlsplit(URL)
    return parsed.hostname, parsed.port


def tls_root_pem():
    """The trusted root certificate (PEM bytes), or None."""
    if TLS_ROOT is None:
        return None
    with open(TLS_ROOT, "rb") as f:
        return f.read()


def plaintext_url():
    host, port = host_port()
    return f"grpc://{host}:{port}"


# ---------------------------------------------------------------------------------------------
# ADBC


def adbc_db_kwargs(credentials=True, username=None, password=None, **extra):
    """Database options for adbc_driver_flightsql: credentials (when the server has auth), the
    trusted root (with TLS), call timeouts, and any `extra` driver options."""
    options = adbc_driver_flightsql.DatabaseOptions
    kwargs = {
        options.TIMEOUT_QUERY.value: str(CALL_TIMEOUT),
        options.TIMEOUT_FETCH.value: str(CALL_TIMEOUT),
        options.TIMEOUT_UPDATE.value: str(CALL_TIMEOUT),
        **extra,
    }
    if credentials and (username is not None or AUTH):
        kwargs["username"] = USER if username is None else username
        kwargs["password"] = PASSWORD if password is None else password
    pem = tls_root_pem()
    if TLS and pem is not None:
        kwargs[options.TLS_ROOT_CERTS.value] = pem.decode()
    return kwargs


def adbc_connect(credentials=True, url=None, **kwargs):
    """An ADBC DB-API connection to the server under test (credentials/TLS per the environment)."""
    return flight_sql.connect(url or URL, db_kwargs=adbc_db_kwargs(credentials, **kwargs))


def adbc_scalar(conn, sql, parameters=None):
    """The single value of a one-row, one-column query."""
    with conn.cursor() as cur:
        cur.execute(sql, parameters)
        rows = cur.fetchall()
    assert len(rows) == 1 and len(rows[0]) == 1, rows
    return rows[0][0]


# ---------------------------------------------------------------------------------------------
# pyarrow.flight


def flight_client(url=None):
    """A raw pyarrow FlightClient (trusting QUIVER_TLS_ROOT with TLS); no credentials yet."""
    url = url or URL
    kwargs = {}
    pem = tls_root_pem()
    if url.startswith("grpc+tls://") and pem is not None:
        kwargs["tls_root_certs"] = pem
    return flight.FlightClient(url, **kwargs)


def options(headers=(), timeout=CALL_TIMEOUT):
    return flight.FlightCallOptions(timeout=timeout, headers=list(headers))


def basic_header(user, password, padded=True):
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    if not padded:
        token = token.rstrip("=")
    return (b"authorization", f"Basic {token}".encode())


def auth_headers(client):
    """Headers a data call needs: the Bearer pair from a Basic handshake when the server has
    auth, none otherwise."""
    if not AUTH:
        return []
    return [client.authenticate_basic_token(USER, PASSWORD, options())]


# Hand-written protobuf: just enough to build Flight SQL commands without generated code.


def _varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def pb_bytes_field(number, value):
    """A length-delimited protobuf field (wire type 2): string, bytes or embedded message."""
    if isinstance(value, str):
        value = value.encode()
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def pb_any(type_name, message):
    """google.protobuf.Any{type_url = 1, value = 2}."""
    return pb_bytes_field(1, "type.googleapis.com/" + type_name) + pb_bytes_field(2, message)


def pb_fields(data):
    """Decodes a protobuf message into {field number: [values]} (varints as int, others bytes)."""
    fields = {}
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 2:
            length, i = _read_varint(data, i)
            value, i = data[i : i + length], i + length
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _read_varint(data, i):
    shift = result = 0
    while True:
        byte = data[i]
        i += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, i


def statement_query_descriptor(sql):
    """FlightDescriptor for CommandStatementQuery{query = 1}, packed in an Any."""
    command = pb_any("arrow.flight.protocol.sql.CommandStatementQuery", pb_bytes_field(1, sql))
    return flight.FlightDescriptor.for_command(command)


def flight_sql_query(client, sql, headers=()):
    """Runs sql through GetFlightInfo(CommandStatementQuery) + DoGet; returns (info, table)."""
    info = client.get_flight_info(statement_query_descriptor(sql), options(headers))
    tables = [client.do_get(e.ticket, options(headers)).read_all() for e in info.endpoints]
    return info, tables
