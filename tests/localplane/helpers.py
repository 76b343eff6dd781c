"""Helpers for local-plane tests: wait for operations, connect, read rows."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from agentdb.pg import ServerInfo

TERMINAL_OK = {"finished", "skipped"}


async def wait_ops(
    client: httpx.AsyncClient,
    project_id: str,
    operations: list[dict[str, Any]],
    timeout: float = 60,
) -> None:
    """Polls every operation until it finished; fails on error/cancelled or at the deadline."""
    deadline = time.monotonic() + timeout
    pending = [op["id"] for op in operations]
    while pending:
        still = []
        for op_id in pending:
            resp = await client.get(f"/projects/{project_id}/operations/{op_id}")
            assert resp.status_code == 200, resp.text
            op = resp.json()["operation"]
            assert op["status"] not in {"error", "cancelled"}, op
            if op["status"] not in TERMINAL_OK:
                still.append(op_id)
        pending = still
        if pending:
            assert time.monotonic() < deadline, f"operations still running: {pending}"
            await asyncio.sleep(0.02)


async def create_project(client: httpx.AsyncClient, **spec: Any) -> dict[str, Any]:
    resp = await client.post("/projects", json={"project": spec})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    await wait_ops(client, body["project"]["id"], body["operations"])
    return body


async def physical(uri: str) -> tuple[str, str]:
    """The role and database behind a connection string inside the cluster: the strings carry
    Neon's names (`neondb_owner`, `neondb`), which the plane's proxy maps to these."""
    ((role, database),) = await fetch(uri, "SELECT current_user, current_database()")
    return str(role), str(database)


async def direct(uri: str, server: ServerInfo) -> str:
    """The same login as `uri`, straight to PostgreSQL with the cluster's names (no proxy)."""
    role, database = await physical(uri)
    password = conninfo_to_dict(uri).get("password") or ""
    return make_conninfo(
        host=server.host, port=server.port, user=role, password=password, dbname=database
    )


async def fetch(uri: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def execute(uri: str, *statements: str) -> None:
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        for statement in statements:
            await conn.execute(statement)


async def snapshot(
    neon_http: httpx.AsyncClient, project_id: str, branch_id: str, **params: str
) -> dict[str, Any]:
    """A snapshot of the branch (`params`: name, expires_at...), once its operations finished."""
    resp = await neon_http.post(
        f"/projects/{project_id}/branches/{branch_id}/snapshot", params=params
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    await wait_ops(neon_http, project_id, body["operations"])
    found: dict[str, Any] = body["snapshot"]
    return found


async def restore(
    neon_http: httpx.AsyncClient, project_id: str, snapshot_id: str, target_id: str
) -> str:
    """Restores the snapshot over the branch `target_id`; returns the live branch's new id."""
    resp = await neon_http.post(
        f"/projects/{project_id}/snapshots/{snapshot_id}/restore",
        json={"finalize_restore": True, "target_branch_id": target_id},
    )
    assert resp.status_code == 200, resp.text
    await wait_ops(neon_http, project_id, resp.json()["operations"])
    return str(resp.json()["branch"]["id"])
