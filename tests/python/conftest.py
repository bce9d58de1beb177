"""Shared fixtures for the Python client tests (see quiver_env.py for the environment contract)."""

import faulthandler
import os

import pytest

import quiver_env

# No test may hang: past this many seconds the whole pytest process dumps every thread's stack
# and exits non-zero (pytest-timeout is not a dependency; faulthandler is in the stdlib).
TEST_WATCHDOG_SECONDS = 300
_real_stderr = None


def pytest_configure(config):
    # Output capture is paused while plugins configure: fd 2 is the real stderr here, whereas
    # during a test it is pytest's capture file, which a hard exit would throw away.
    global _real_stderr
    _real_stderr = os.fdopen(os.dup(2), "w")


@pytest.fixture(autouse=True)
def _watchdog():
    faulthandler.dump_traceback_later(TEST_WATCHDOG_SECONDS, exit=True, file=_real_stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def adbc_conn():
    """One ADBC connection for read-only checks, with credentials/TLS per the environment."""
    connection = quiver_env.adbc_connect()
    yield connection
    connection.close()


@pytest.fixture(scope="session")
def lineitem_count(adbc_conn):
    """SELECT count(*) FROM lineitem through ADBC: the reference the other clients compare to."""
    return quiver_env.adbc_scalar(adbc_conn, "SELECT count(*) FROM lineitem")
