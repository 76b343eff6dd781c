"""The real `agentdb` command in a subprocess: help, one-line errors with a non-zero exit code,
and `localplane serve` answering HTTP with and without AGENTDB_LOCALPLANE_API_KEY."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest
from support import agentdb, assert_one_line_error, clean_env, serving

from agentdb.pg import ServerInfo


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


def test_sigterm_stops_the_embedded_postgres_it_started(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with serving(clean_env(), data_dir) as url:
        assert (
            httpx.get(f"{url}/projects", headers={"Authorization": "Bearer x"}).status_code == 200
        )
        assert _postgres_processes(data_dir)
    deadline = time.monotonic() + 30
    while _postgres_processes(data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _postgres_processes(data_dir) == []


def _postgres_processes(data_dir: Path) -> list[int]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "postgres" and str(data_dir) in cmdline:
            found.append(proc.pid)
    return found
