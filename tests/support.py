"""Test support shared across packages: a validating client of the in-process local plane,
and the real `agentdb` command in a subprocess."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from contract.openapi import NeonSpec
from litestar import Litestar

from agentdb.localplane import LocalPlane
from agentdb.pg import ServerInfo


def client_for(
    app: Litestar,
    spec: NeonSpec,
    token: str | None = "test-key",  # noqa: S107
    *,
    validate_requests: bool = True,
) -> httpx.AsyncClient:
    """A client of the in-process local plane that checks every response against Neon's
    OpenAPI document, and every request too unless the test sends bad requests on purpose."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    hooks = {
        "request": [spec.request_hook()] if validate_requests else [],
        "response": [spec.response_hook()],
    }
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://localplane/api/v2",
        headers=headers,
        timeout=60,
        event_hooks=hooks,
    )


AGENTDB = Path(sys.executable).with_name("agentdb")
URL_LINE = re.compile(r"^agentdb local control plane: (http://127\.0\.0\.1:\d+/api/v2)$")
RUN_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0


def clean_env(**overrides: str) -> dict[str, str]:
    """The current environment without any AGENTDB_* setting of the developer's, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTDB_")}
    # No warm pool unless a test asks (tests/conftest.py says why).
    env["AGENTDB_WARM_POOL_SIZE"] = "0"
    env.update(overrides)
    return env


def agentdb(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own console script, fixed arguments
        [str(AGENTDB), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """A failed command: exit code != 0, no traceback, exactly one line on stderr."""
    lines = result.stderr.strip().splitlines()
    shown = "\n".join(lines if len(lines) <= 10 else ["...", *lines[-6:]])
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, (
        f"a traceback on stderr (exit code {result.returncode}), not one line:\n{shown}"
    )
    assert len(lines) == 1, f"{len(lines)} lines on stderr, not one:\n{shown}"
    assert lines[0].startswith("agentdb: error: "), (
        f"not agentdb's error line (exit code {result.returncode}): {lines[0]}"
    )
    return lines[0]


def _drain(stream: Any, lines: queue.Queue[str | None]) -> None:
    # structlog also writes to stdout, so the pipe is read to the end or the server could block.
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


API_LINE = re.compile(r"^agentdb API: (http://127\.0\.0\.1:\d+)/v1 ")


@contextmanager
def serving(
    env: dict[str, str],
    data_dir: Path,
    command: tuple[str, ...] = ("localplane", "serve"),
    url_line: re.Pattern[str] = URL_LINE,
    printed: list[str] | None = None,
    *,
    process: list[subprocess.Popen[str]] | None = None,
) -> Iterator[str]:
    """`agentdb localplane serve --port 0` (or another serving `command`) until the block ends
    (SIGTERM, then kill); yields the URL `url_line` finds in its output, and adds the lines
    printed before it to `printed`. Also checks that SIGTERM stops it cleanly, unless the block
    SIGKILLed it (the process is appended to `process` for that)."""
    stderr_path = data_dir.with_name(data_dir.name + ".stderr")
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(  # noqa: S603
            [str(AGENTDB), *command, "--port", "0", "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
        )
    if process is not None:
        process.append(proc)
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_drain, args=(proc.stdout, lines), daemon=True)
    reader.start()
    stopped_in_time = True
    try:
        url = None
        deadline = time.monotonic() + RUN_TIMEOUT
        while url is None:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                pytest.fail(f"no URL within {RUN_TIMEOUT:.0f} s:\n{stderr_path.read_text()}")
            if line is None:
                pytest.fail(f"serve exited ({proc.wait()}):\n{stderr_path.read_text()}")
            if match := url_line.match(line):
                url = match.group(1)
            elif printed is not None:
                printed.append(line)
        yield url
    finally:
        killed = proc.poll() == -signal.SIGKILL
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            stopped_in_time = False
            proc.kill()
            proc.wait()
        reader.join(timeout=STOP_TIMEOUT)
        assert proc.stdout is not None
        proc.stdout.close()
    if killed:
        return
    assert stopped_in_time, f"serve ignored SIGTERM for {STOP_TIMEOUT:.0f} s"
    # uvicorn re-raises the captured SIGTERM once it has shut down.
    assert proc.returncode in {0, -signal.SIGTERM}, proc.returncode
    assert "Traceback" not in stderr_path.read_text(), stderr_path.read_text()


def server_payload(server: ServerInfo) -> dict[str, Any]:
    """What a child process needs to reach `server` (its password included: tests only)."""
    return {
        "host": server.host,
        "port": server.port,
        "superuser": server.superuser,
        "password": server.password,
        "bin_dir": str(server.bin_dir),
    }


async def run_until_killed(script: str, payload: dict[str, Any], *, wait_s: float = 180) -> str:
    """Runs `script` (`python -c`) with `payload` as JSON on stdin; returns its stdout once it
    died of SIGKILL, as a crash test's doomed process must."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(payload).encode()), wait_s)
    assert proc.returncode == -signal.SIGKILL, (out.decode(), err.decode()[-3000:])
    return out.decode()


async def wait_runner_gone(plane: LocalPlane, runner_id: int) -> None:
    """Until the killed plane's runner lock is released: the dead process's advisory lock goes
    when its server backend notices the closed socket."""
    deadline = time.monotonic() + 30
    while await plane._store.runner_alive(runner_id):
        assert time.monotonic() < deadline, "the killed plane's lock was never released"
        await asyncio.sleep(0.05)


JS_DIR = Path(__file__).parent / "js"
NODE_TIMEOUT = 120.0


@functools.cache
def js_clients() -> Path:
    """tests/js's node_modules, installed from its lock file on first use (`.ci/run` installs it
    first; `npm ci` is what the README's test command falls back on)."""
    modules = JS_DIR / "node_modules"
    with (JS_DIR / ".install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two pytest runs at once install once
        if not (modules / ".package-lock.json").exists():
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],  # noqa: S607
                cwd=JS_DIR,
                check=True,
                timeout=600,
            )
    return modules


def run_node(script: str, *, env: dict[str, str] | None = None) -> Any:
    """Runs `script` (an ES module, cwd tests/js so it imports the pinned clients) with node and
    returns what it printed last as JSON; fails the test with node's output otherwise."""
    js_clients()
    result = subprocess.run(  # noqa: S603 - the test's own script
        ["node", "--input-type=module", "-e", script],  # noqa: S607
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"node exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "null"
    return json.loads(last)


async def physical_names(uri: str) -> tuple[str, str]:
    """The role and database behind a session's connection string inside the cluster: the
    local plane's strings carry Neon's names (`neondb_owner`, `neondb`), which its proxy maps."""
    async with await psycopg.AsyncConnection.connect(uri) as conn:
        row = await (await conn.execute("SELECT current_user, current_database()")).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


def physical_names_sync(uri: str) -> tuple[str, str]:
    """`physical_names`, for tests without an event loop."""
    with psycopg.connect(uri, connect_timeout=30) as conn:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


async def direct_uri(uri: str, server: ServerInfo) -> str:
    """The same login as `uri`, straight to PostgreSQL with the cluster's names (no proxy)."""
    role, database = await physical_names(uri)
    password = psycopg.conninfo.conninfo_to_dict(uri).get("password") or ""
    return psycopg.conninfo.make_conninfo(
        host=server.host, port=server.port, user=role, password=str(password), dbname=database
    )
