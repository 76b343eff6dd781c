"""The embedded SDK is a library: in a host program that configured no logging it prints only
what the host prints, and in one that did, agentdb's lines follow the host's settings
(through the standard library's `logging`), secrets redacted."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from support import RUN_TIMEOUT, clean_env

HOST = """
import asyncio
import logging
import sys

from agentdb.sdk import AgentDB

if sys.argv[2] == "configured":
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="HOST %(name)s %(message)s")


async def main() -> None:
    async with AgentDB.local(data_dir=sys.argv[1]) as db:
        user = await db.create_user("quiet@example.com")
        session = await db.create_session(user_id=user.id, name="quiet")
        await db.sql(session.id, "create table t (n int)")
        await db.create_checkpoint(session.id, label="empty")
        print("result", (await db.sql(session.id, "select count(*) from t")).rows)


asyncio.run(main())
"""


def run_host(tmp_path: Path, logging_: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "host.py"
    script.write_text(textwrap.dedent(HOST))
    return subprocess.run(  # noqa: S603 - this interpreter, our own script
        [sys.executable, str(script), str(tmp_path / "data"), logging_],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=RUN_TIMEOUT,
        check=False,
    )


def test_a_host_that_configured_no_logging_sees_only_its_own_output(tmp_path: Path):
    ran = run_host(tmp_path, "unconfigured")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "result [[0]]\n"
    assert ran.stderr == ""


def test_a_host_that_configured_logging_gets_agentdbs_lines_there(tmp_path: Path):
    ran = run_host(tmp_path, "configured")
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert "result [[0]]" in lines
    # The embedded PostgreSQL's start, at INFO, through the host's handler and format.
    assert any(line.startswith("HOST agentdb.pg") and "pg_started" in line for line in lines)
    assert not any("adb_admin_" in line or "password=" in line for line in lines)
    assert ran.stderr == ""
