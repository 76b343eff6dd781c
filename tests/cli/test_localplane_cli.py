"""The real `agentdb` command in a subprocess: help, one-line errors with a non-zero exit code,
and `localplane serve` answering HTTP with and without AGENTDB_LOCALPLANE_API_KEY."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentdb.pg import ServerInfo

AGENTDB = Path(sys.executable).with_name("agentdb")
URL_LINE = re.compile(r"^agentdb local control plane: (http://127\.0\.0\.1:\d+/api/v2)$")
RUN_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0


def clean_env(**overrides: str) -> dict[str, str]:
    """The current environment without any AGENTDB_* setting of the developer's, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTDB_")}
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


@contextmanager
def serving(env: dict[str, str], data_dir: Path) -> Iterator[str]:
    """`agentdb localplane serve --port 0` until the block ends (SIGTERM, then kill); yields the
    printed `/api/v2` URL. Also checks that SIGTERM stops it cleanly."""
    stderr_path = data_dir.with_name(data_dir.name + ".stderr")
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(  # noqa: S603
            [str(AGENTDB), "localplane", "serve", "--port", "0", "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            text=True,
        )
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
            if match := URL_LINE.match(line):
                url = match.group(1)
        yield url
    finally:
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
    assert stopped_in_time, f"serve ignored SIGTERM for {STOP_TIMEOUT:.0f} s"
    # uvicorn re-raises the captured SIGTERM once it has shut down.
    assert proc.returncode in {0, -signal.SIGTERM}, proc.returncode
    assert "Traceback" not in stderr_path.read_text(), stderr_path.read_text()


def test_help_mentions_localplane(tmp_path: Path) -> None:
    result = agentdb("--help", env=clean_env(AGENTDB_DATA_DIR=str(tmp_path)))
    assert result.returncode == 0, result
    assert "localplane" in result.stdout


def test_port_out_of_range_is_one_line(tmp_path: Path) -> None:
    result = agentdb(
        "localplane",
        "serve",
        "--port",
        "70000",
        "--data-dir",
        str(tmp_path),
        env=clean_env(),
    )
    assert "65535" in assert_one_line_error(result)


@pytest.mark.parametrize(
    ("name", "value"),
    [("AGENTDB_LOCALPLANE_FAULTS", "bogus"), ("AGENTDB_PG_PORT", "0")],
)
def test_bad_setting_is_one_line_naming_it(tmp_path: Path, name: str, value: str) -> None:
    result = agentdb(
        "localplane",
        "serve",
        "--port",
        "0",
        "--data-dir",
        str(tmp_path),
        env=clean_env(**{name: value}),
    )
    assert name in assert_one_line_error(result)


def test_data_dir_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("not a directory\n")
    # No AGENTDB_DATABASE_URL: the embedded cluster is what lives in the data directory.
    result = agentdb(
        "localplane", "serve", "--port", "0", "--data-dir", str(not_a_dir), env=clean_env()
    )
    line = assert_one_line_error(result)
    assert str(not_a_dir) in line
    assert not_a_dir.read_text() == "not a directory\n"


def test_http_port_in_use_is_one_line(pg_server: ServerInfo, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = agentdb(
            "localplane",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
            env=clean_env(AGENTDB_DATABASE_URL=pg_server.dsn()),
        )
    assert str(port) in assert_one_line_error(result)


def test_serve_any_token_accepted(pg_server: ServerInfo, tmp_path: Path) -> None:
    env = clean_env(AGENTDB_DATABASE_URL=pg_server.dsn())
    with serving(env, tmp_path / "data") as url, httpx.Client(base_url=url, timeout=30) as http:
        anonymous = http.get("/projects")
        assert anonymous.status_code == 401, anonymous.text
        assert anonymous.json()["code"] == "UNAUTHORIZED"
        any_token = http.get("/projects", headers={"Authorization": "Bearer x"})
        assert any_token.status_code == 200, any_token.text
        assert isinstance(any_token.json()["projects"], list)


def test_serve_with_api_key(pg_server: ServerInfo, tmp_path: Path) -> None:
    env = clean_env(AGENTDB_DATABASE_URL=pg_server.dsn(), AGENTDB_LOCALPLANE_API_KEY="secret")
    with serving(env, tmp_path / "data") as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/projects").status_code == 401
        wrong = http.get("/projects", headers={"Authorization": "Bearer not-the-secret"})
        assert wrong.status_code == 401, wrong.text
        right = http.get("/projects", headers={"Authorization": "Bearer secret"})
        assert right.status_code == 200, right.text
