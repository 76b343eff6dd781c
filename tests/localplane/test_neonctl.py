"""Neon's own CLI, neonctl, against `agentdb localplane serve`: projects, branches, computes,
databases, roles and connection strings as a developer or an agent platform drives them."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from support import clean_env, js_clients, serving

from agentdb.pg import ServerInfo

NEONCTL_TIMEOUT = 60


class Neonctl:
    """Runs neonctl against one served plane, in its own config directory and working one."""

    def __init__(self, binary: Path, api_host: str, home: Path) -> None:
        self.binary = binary
        self.api_host = api_host
        self.home = home

    def run(self, *args: str) -> Any:
        result = subprocess.run(  # noqa: S603 - the pinned neonctl, the test's own arguments
            [
                str(self.binary),
                *args,
                "--api-host",
                self.api_host,
                "--api-key",
                "agentdb-local",
                "--config-dir",
                str(self.home / "config"),
                "--context-file",
                str(self.home / "context"),
                "--output",
                "json",
                "--no-analytics",
                "--no-color",
            ],
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=NEONCTL_TIMEOUT,
            env={**os.environ, "HOME": str(self.home), "CI": "true"},
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"neonctl {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
        printed = result.stdout.strip()
        # connection-string prints the bare URI whatever the output format.
        return json.loads(printed) if printed[:1] in {"{", "["} else printed


@pytest.fixture(scope="module")
def neonctl(pg_server: ServerInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Neonctl]:
    binary = js_clients() / ".bin" / "neonctl"
    home = tmp_path_factory.mktemp("neonctl")
    env = clean_env(AGENTDB_DATABASE_URL=pg_server.dsn())
    with serving(env, home / "data") as url:
        yield Neonctl(binary, url, home)


def test_projects_branches_computes_and_connection_strings(neonctl: Neonctl) -> None:
    made = neonctl.run("projects", "create", "--name", "from-neonctl")
    project_id = made["project"]["id"]
    listed = neonctl.run("projects", "list")
    # neonctl lists the account's projects and the ones shared with it (none here).
    assert project_id in {p["id"] for p in listed["projects"]}
    assert listed["shared_with_you"] == []

    neonctl.run("branches", "create", "--project-id", project_id, "--name", "dev")
    branches = neonctl.run("branches", "list", "--project-id", project_id)
    assert {b["name"] for b in branches} >= {"dev"}
    assert len(branches) == 2  # the default branch and dev

    databases = neonctl.run("databases", "list", "--project-id", project_id, "--branch", "dev")
    assert [d["name"] for d in databases] == ["neondb"]
    roles = neonctl.run("roles", "list", "--project-id", project_id, "--branch", "dev")
    assert "neondb_owner" in {r["name"] for r in roles}

    # neonctl builds the URI itself from the endpoint's host and the branch's logical role and
    # database names, as Neon's proxy routes them; the local plane has no such proxy (its
    # clients connect with the physical names `connection_uri` answers), so these URIs are
    # checked for what neonctl read from the plane, not connected to.
    uri = urlsplit(_connection_string(neonctl, project_id))
    assert (uri.username, uri.path, uri.hostname) == ("neondb_owner", "/neondb", "127.0.0.1")
    assert uri.password

    replica = neonctl.run(
        "branches", "add-compute", "dev", "--project-id", project_id, "--type", "read_only"
    )
    assert [e["type"] for e in _endpoints(replica)] == ["read_only"]
    read_only = urlsplit(_connection_string(neonctl, project_id, "--endpoint-type", "read_only"))
    assert read_only.username == "neondb_owner"
    endpoints = neonctl.run("branches", "get", "dev", "--project-id", project_id)
    assert endpoints["name"] == "dev"

    neonctl.run("branches", "delete", "dev", "--project-id", project_id)
    remaining = neonctl.run("branches", "list", "--project-id", project_id)
    assert "dev" not in {b["name"] for b in remaining}


def _connection_string(neonctl: Neonctl, project_id: str, *more: str) -> str:
    printed = neonctl.run(
        "connection-string",
        "dev",
        "--project-id",
        project_id,
        "--database-name",
        "neondb",
        "--role-name",
        "neondb_owner",
        "--ssl",
        "omit",
        *more,
    )
    return str(printed["connection_string"] if isinstance(printed, dict) else printed)


def _endpoints(printed: Any) -> list[dict[str, Any]]:
    if isinstance(printed, dict) and "type" in printed:
        return [printed]
    if isinstance(printed, dict):
        found = printed.get("endpoints", [printed.get("endpoint")])
        return [e for e in found if e]
    return list(printed)
