"""No secret reaches a log: after a flow that causes errors of every kind, neither agentdb's
log (at debug level), nor the served plane's, nor either PostgreSQL's log holds any token,
password or connection URI that was handed out, or any tenant's statement text."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import structlog
from conftest import PLANE_KEY, Stack, Tenant, open_tenant, run_sql

from agentdb._logging import configure_logging
from agentdb.localplane import create_app as create_plane_app
from agentdb.settings import Settings

MARKER = "statement-text-marker-7f3a"


def logs_of(stack: Stack) -> dict[Path, str]:
    found: dict[Path, str] = {}
    for data_dir in stack.data_dirs:
        found[data_dir] = data_dir.with_name(data_dir.name + ".stderr").read_text()
        for log in data_dir.rglob("*.log"):
            found[log] = log.read_text(errors="replace")
    return found


def cause_errors(stack: Stack, tenant: Tenant) -> None:
    """Errors of every kind an agent, a user or a stranger can cause."""
    sid = tenant.session_id
    # SQL errors, some echoing what the agent wrote (a token, a password, a URI).
    for sql in (
        f"select '{tenant.session_token}'::int",
        f"select '{MARKER}'::int",
        f"create role intruder password '{MARKER}-pw'",
        f"alter role current_user password '{MARKER}-pw2'",
        "select 1/0",
        "select * from no_such_table",
        f"select '{tenant.connection_uri}'::int",
        "select pg_sleep(3)",
        "select (repeat('[',3000)||repeat(']',3000))::jsonb",
    ):
        run_sql(stack, tenant, sql)
    with stack.client(tenant.session_token) as http:
        http.post(
            f"/v1/sessions/{sid}/sql", json={"sql": "select pg_sleep(3)", "timeout_seconds": 1}
        )
        http.post(f"/v1/sessions/{sid}/sql", json={"sql": 42})
        http.post(f"/v1/sessions/{sid}/sql", content=b"{not json")
        http.post(f"/v1/sessions/{sid}/checkpoints", json={"metadata": {"k": "a\u0000b"}})
        http.get("/v1/users")  # a session token may not
        http.delete(f"/v1/sessions/{sid}")  # nor this
    # Wrong and malformed tokens, and none at all.
    for token in (
        tenant.session_token[:-4] + "XXXX",
        "adb_admin_" + "x" * 43,
        stack.admin_token + "tail",
        None,
    ):
        with stack.client(token) as http:
            http.get(f"/v1/sessions/{sid}")
    # Foreign ids and the plane's own API with a wrong key.
    with stack.client(tenant.user_token) as http:
        http.get("/v1/sessions/00000000-0000-0000-0000-000000000000")
    with stack.client("wrong-" + PLANE_KEY, base=stack.plane) as http:
        http.get("/projects")


def test_no_secret_and_no_statement_text_in_any_log(stack: Stack) -> None:
    tenant = open_tenant(stack, "logs@example.com")
    cause_errors(stack, tenant)
    with stack.client(tenant.user_token) as http:
        stack.keep(http.get(f"/v1/sessions/{tenant.session_id}").json()["connection_uri"])

    secrets = {value for value in stack.handed_out if len(value) >= 8}
    secrets.add(PLANE_KEY)
    for value in list(secrets):
        if value.startswith("postgresql://"):
            password = urlsplit(value).password
            assert password
            secrets.add(password)
    secrets.update({f"{MARKER}-pw", f"{MARKER}-pw2"})
    logs = logs_of(stack)
    assert len(logs) >= 3, sorted(logs)
    leaks = [
        (path.name, secret[:12] + "...")
        for path, text in logs.items()
        for secret in secrets
        if secret in text
    ]
    assert leaks == []
    statements = [path.name for path, text in logs.items() if MARKER in text]
    assert statements == []


@pytest.fixture
def redacted_log() -> Iterator[io.StringIO]:
    """agentdb's logging set up into a buffer, and the test process's own set back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = structlog.get_config()
    stream = io.StringIO()
    configure_logging(logging.DEBUG, stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        structlog.configure(**saved)


def test_building_the_plane_app_keeps_library_lines_redacted(
    redacted_log: io.StringIO, tmp_path: Path
) -> None:
    """The offline `agentdb serve` builds the local plane's app in its own process: building it
    must not put a handler of its own (Litestar's default logging) in place of agentdb's."""
    create_plane_app(Settings(data_dir=tmp_path))
    password, token = "plane-log-secret-pw", "adb_sess_" + "s" * 43
    # A library's logger (one no other test configures: uvicorn's may have handlers of its own
    # from an in-process server earlier in the run), whose lines reach the root handler.
    logging.getLogger("agentdb_tests.a_library").error(
        "cannot reach postgresql://owner:%s@127.0.0.1/db for Bearer %s", password, token
    )
    written = redacted_log.getvalue()
    assert "cannot reach" in written
    assert password not in written
    assert token not in written


def _connect_and_fail(uri: str, authorization: str) -> None:
    raise RuntimeError(f"cannot connect to {uri} ({authorization.split(maxsplit=1)[0]})")


def test_tracebacks_carry_no_local_variables_and_no_secret(redacted_log: io.StringIO) -> None:
    """An unexpected error's traceback, from structlog and from the stdlib: the frames' local
    variables (a URI, a request's Authorization header) are never printed, and a secret in the
    exception's own message is redacted."""
    password, token = "traceback-secret-pw", "adb_user_" + "t" * 43
    uri = f"postgresql://owner:{password}@127.0.0.1/db"
    for log in (structlog.get_logger("agentdb.test"), logging.getLogger("agentdb.test")):
        try:
            _connect_and_fail(uri, f"Bearer {token}")
        except RuntimeError:
            log.exception("unexpected")
    written = redacted_log.getvalue()
    assert written.count("_connect_and_fail") >= 2  # both tracebacks are there
    assert password not in written
    assert token not in written
