"""Crash safety of the services' workflows: an agentdb process (services and the in-process
local plane together, as `agentdb serve` runs them) SIGKILLed after each step of session create,
checkpoint, restore, branch, preview and session delete. A restarted agentdb (its local plane
resumes the plane's jobs, its reconciler runs before the first request) leaves the session
reachable with its last acknowledged data (or the restore's target), no row pending, and no
orphan project, database or role."""

from __future__ import annotations

import json
import secrets
import textwrap
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql as pgsql
from pydantic import SecretStr
from support import run_until_killed, server_payload, wait_runner_gone

from agentdb.localplane import LocalPlane
from agentdb.pg import ServerInfo
from agentdb.runtime import Runtime, open_runtime
from agentdb.settings import Settings
from meta_schema import (
    AgentSession,
    Branch,
    BranchKind,
    BranchStatus,
    Checkpoint,
    CheckpointStatus,
    SessionStatus,
)

ADMIN_TOKEN = "adb_admin_kill-point-tests-0123456789abcdef"

# The doomed agentdb: sets a session up (every call acknowledged and printed), then runs the
# workflow whose kill point AGENTDB_KILL_AT arms, and is SIGKILLed there.
_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from pydantic import SecretStr
    from agentdb.pg import ServerInfo
    from agentdb.runtime import open_runtime
    from agentdb.settings import Settings

    def said(**fields):
        print(json.dumps(fields), flush=True)

    async def main():
        cfg = json.loads(sys.stdin.read())
        s = cfg["server"]
        server = ServerInfo(host=s["host"], port=s["port"], superuser=s["superuser"],
                            password=s["password"], bin_dir=Path(s["bin_dir"]), embedded=True)
        settings = Settings(admin_token=SecretStr(cfg["admin_token"]), **cfg["settings"])
        async with open_runtime(settings, server=server) as rt:
            said(runner_id=rt.plane.runner_id)
            user = await rt.users.create(cfg["email"])
            said(user_id=str(user.id))
            action = cfg["action"]
            if action == "session_create":
                await rt.sessions.create(user.id)
                said(survived=True)
                return
            session = await rt.sessions.create(user.id)
            await rt.sql.run(session.id, "CREATE TABLE t (n int); INSERT INTO t VALUES (1)")
            first = await rt.checkpoints.create(session.id, label="one")
            await rt.sql.run(session.id, "INSERT INTO t VALUES (2)")
            said(session_id=str(session.id), checkpoint_id=str(first.id), rows=[1, 2])
            if action == "session_delete":
                await rt.sessions.delete(session.id)
            elif action == "checkpoint":
                await rt.checkpoints.create(session.id, label="two")
            elif action == "restore":
                # Away from the head, so the head tells which content the session has.
                second = await rt.checkpoints.create(session.id, label="two")
                said(head_id=str(second.id))
                await rt.checkpoints.restore(session.id, first.id)
            elif action == "branch":
                await rt.branches.create(session.id)
            elif action == "preview":
                await rt.branches.preview(session.id, first.id)
            said(survived=True)

    asyncio.run(main())
    """
)

# (workflow the child runs, the kill point armed). The setup takes one checkpoint, so the
# checkpoint workflow's points are armed for their second pass.
_KILLS = [
    ("session_create", "session_create.requested"),
    ("session_create", "session_create.project_created"),
    ("session_create", "session_create.project_recorded"),
    ("session_create", "session_create.snapshot_taken"),
    ("checkpoint", "checkpoint.requested:2"),
    ("checkpoint", "checkpoint.snapshot_taken:2"),
    ("restore", "restore.requested"),
    ("restore", "restore.restored"),
    ("restore", "restore.recorded"),
    ("branch", "branch.requested"),
    ("branch", "branch.created"),
    ("preview", "branch.requested"),
    ("preview", "branch.created"),
    ("session_delete", "session_delete.requested"),
    ("session_delete", "session_delete.project_deleted"),
]


def _settings(data_dir: Path, tag: str, **more: Any) -> dict[str, Any]:
    return {
        "data_dir": str(data_dir),
        "meta_database": f"kill_meta_{tag}",
        "project_prefix": f"kill-{tag}-",
        # Only the restart's own first pass repairs: no periodic job runs during the checks.
        "reconcile_interval_s": 3600,
        "expiry_interval_s": 3600,
        **more,
    }


async def _run_until_killed(
    server: ServerInfo, settings: dict[str, Any], action: str
) -> dict[str, Any]:
    """Runs the doomed agentdb; returns what it said (merged) once it died of SIGKILL."""
    payload = {
        "server": server_payload(server),
        "settings": settings,
        "admin_token": ADMIN_TOKEN,
        "email": f"{action}@example.com",
        "action": action,
    }
    said: dict[str, Any] = {}
    for line in (await run_until_killed(_CHILD, payload)).splitlines():
        if line.startswith("{"):
            said.update(json.loads(line))
    assert "survived" not in said
    return said


@asynccontextmanager
async def _restarted(
    server: ServerInfo, settings: dict[str, Any], plane: LocalPlane, runner_id: int
) -> AsyncIterator[Runtime]:
    """agentdb started again: its plane takes the dead one's jobs over, its reconciler has
    run once; yields it once the plane's resumed jobs are done and a second pass found the
    rest (a restore the plane finished after the first pass, say)."""
    await wait_runner_gone(plane, runner_id)
    async with open_runtime(
        Settings(admin_token=SecretStr(ADMIN_TOKEN), **settings), server=server
    ) as runtime:
        assert runtime.plane is not None
        await runtime.plane.drain()
        await runtime.reconciler.run_once()
        await runtime.plane.drain()
        again = await runtime.reconciler.run_once()
        assert again.repairs == 0, again
        assert again.errors == ()
        yield runtime


async def _rows(runtime: Runtime, session_id: uuid.UUID) -> list[int]:
    result = await runtime.sql.run(session_id, "SELECT n FROM t ORDER BY n")
    return [int(str(row[0])) for row in result.rows]


async def _reachable(uri: str) -> bool:
    try:
        async with await psycopg.AsyncConnection.connect(uri, connect_timeout=10) as conn:
            await conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


async def _assert_settled(runtime: Runtime, prefix: str) -> None:
    """No row in a workflow's intermediate state, every ready session and branch reachable,
    and the control plane holding exactly the projects and branches the rows name."""
    async with runtime.meta() as db:
        sessions = list(await db.scalars(sa.select(AgentSession)))
        checkpoints = list(await db.scalars(sa.select(Checkpoint)))
        branches = list(await db.scalars(sa.select(Branch)))
    settled = {SessionStatus.READY, SessionStatus.FAILED, SessionStatus.DELETED}
    assert {s.status for s in sessions} <= settled, sessions
    assert {c.status for c in checkpoints} <= {
        CheckpointStatus.READY,
        CheckpointStatus.FAILED,
        CheckpointStatus.DELETED,
    }, checkpoints
    assert {b.status for b in branches} <= {
        BranchStatus.READY,
        BranchStatus.FAILED,
        BranchStatus.DELETED,
    }, branches
    owned = {s.project_id for s in sessions if s.status != SessionStatus.DELETED} - {None}
    projects = {
        p.id async for p in runtime.neon.iter_projects(search=prefix) if p.name.startswith(prefix)
    }
    assert projects == owned, (projects, owned)
    for session in sessions:
        if session.status != SessionStatus.READY:
            continue
        assert session.project_id is not None
        assert await _reachable(await runtime.sessions.connection_uri(session.id))
        kept = {session.live_branch_id} | {
            b.branch_id
            for b in branches
            if b.session_id == session.id and b.status == BranchStatus.READY
        }
        on_plane = {b.id async for b in runtime.neon.iter_branches(session.project_id)}
        assert on_plane == kept, (on_plane, kept)
        snapshots = {s.id for s in await runtime.neon.list_snapshots(session.project_id)}
        taken = {
            c.snapshot_id
            for c in checkpoints
            if c.session_id == session.id and c.status == CheckpointStatus.READY
        }
        assert snapshots == taken, (snapshots, taken)
        for branch in branches:
            if (
                branch.session_id == session.id
                and branch.status == BranchStatus.READY
                and branch.kind in {BranchKind.DEV, BranchKind.PREVIEW}
            ):
                uri = await runtime.branches.connection_uri(session.id, branch.id)
                assert await _reachable(uri)
    assert runtime.plane is not None
    assert await runtime.plane.collect_orphans() == []


async def _drop_meta(server: ServerInfo, name: str) -> None:
    async with await psycopg.AsyncConnection.connect(server.conninfo(), autocommit=True) as conn:
        await conn.execute(
            pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(pgsql.Identifier(name))
        )


@pytest.mark.parametrize("case", _KILLS, ids=[f"{a}-{k}" for a, k in _KILLS])
async def test_a_workflow_killed_after_a_step_is_repaired_on_restart(
    pg_server: ServerInfo,
    plane: LocalPlane,
    neon_http: httpx.AsyncClient,
    tmp_path: Path,
    case: tuple[str, str],
) -> None:
    action, kill_at = case
    tag = secrets.token_hex(4)
    settings = _settings(tmp_path, tag)
    try:
        said = await _run_until_killed(pg_server, {**settings, "kill_at": kill_at}, action)
        async with _restarted(pg_server, settings, plane, said["runner_id"]) as runtime:
            await _assert_settled(runtime, settings["project_prefix"])
            if action == "session_create":
                # Never acknowledged: made whole or undone, never left half-made.
                (view,) = await runtime.sessions.list(uuid.UUID(said["user_id"]))
                assert view.status in {"ready", "failed"}, view
                if view.status == "ready":
                    run = await runtime.sql.run(view.id, "SELECT 1")
                    assert run.rows == [[1]]
                return
            session_id = uuid.UUID(said["session_id"])
            view = await runtime.sessions.get(session_id)
            if action == "session_delete":
                assert view.status in {"ready", "deleted"}, view
                if view.status == "ready":
                    assert await _rows(runtime, session_id) == said["rows"]
                return
            assert view.status == "ready", view
            rows = await _rows(runtime, session_id)
            if action == "restore":
                # The restore was never acknowledged: either state, and the head says which.
                target = uuid.UUID(said["checkpoint_id" if rows == [1] else "head_id"])
                assert rows in ([1, 2], [1]), rows
                assert view.head_checkpoint_id == target, (rows, view)
            else:
                assert rows == said["rows"]
            # The session still works end to end after its repair.
            again = await runtime.checkpoints.create(session_id, label="after")
            await runtime.sql.run(session_id, "INSERT INTO t VALUES (3)")
            await runtime.checkpoints.restore(session_id, again.id)
            assert await _rows(runtime, session_id) == rows
    finally:
        await _cleanup(pg_server, neon_http, settings)
        await plane.drain()


async def _cleanup(
    server: ServerInfo, neon_http: httpx.AsyncClient, settings: dict[str, Any]
) -> None:
    """Deletes the test's projects from the plane, then its meta database."""
    prefix = settings["project_prefix"]
    try:
        found = await neon_http.get("/projects", params={"search": prefix})
        for project in found.json()["projects"]:
            if project["name"].startswith(prefix):
                await neon_http.delete(f"/projects/{project['id']}")
    finally:
        await _drop_meta(server, settings["meta_database"])
