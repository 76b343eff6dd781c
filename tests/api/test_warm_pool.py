"""The warm pool through REST: a runtime with `AGENTDB_WARM_POOL_SIZE=1` fills its pool in the
background, `POST /v1/sessions` hands out the ready project (a working session with its root
checkpoint), and the pool is refilled after the take without anyone asking."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import sqlalchemy as sa

from agentdb.runtime import Runtime
from meta_schema import WarmProject

from .conftest import ADMIN, bearer, runtime_with


async def drain(runtime: Runtime) -> None:
    """The test's meta database goes, the plane stays: no project of the pool may outlive it
    (and no refill may race the drain)."""
    await runtime.jobs.__aexit__(None, None, None)
    await runtime.warm.drain()


runtime = runtime_with("api-warm", warm_pool_size=1, before_close=drain)


async def ready_ids(runtime: Runtime) -> set[uuid.UUID]:
    """The pool's ready projects once it has one (the fill job runs in the background)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        async with runtime.meta() as db:
            found = set(await db.scalars(sa.select(WarmProject.id).where(WarmProject.ready)))
        if found:
            return found
        await asyncio.sleep(0.05)
    return set()


async def test_a_session_create_takes_the_warm_project_and_the_pool_refills(
    http: httpx.AsyncClient, runtime: Runtime
) -> None:
    warm = await ready_ids(runtime)
    assert len(warm) == 1
    user = await http.post(
        "/v1/users", json={"email": f"w-{uuid.uuid4().hex[:8]}@example.com"}, headers=ADMIN
    )
    token = bearer(
        (await http.post(f"/v1/users/{user.json()['id']}/tokens", json={}, headers=ADMIN)).json()[
            "token"
        ]
    )
    created = await http.post("/v1/sessions", json={"name": "warm"}, headers=token)
    assert created.status_code == 201, created.text
    session = created.json()
    assert session["status"] == "ready"
    assert {uuid.UUID(session["id"])} == warm
    ran = await http.post(
        f"/v1/sessions/{session['id']}/sql", json={"sql": "select 1 as one"}, headers=token
    )
    assert ran.status_code == 200, ran.text
    assert ran.json()["rows"] == [[1]]
    listed = await http.get(f"/v1/sessions/{session['id']}/checkpoints", headers=token)
    assert [c["label"] for c in listed.json()["checkpoints"]] == ["root"]
    # The take kicked the fill job: a new project is ready soon, without a request.
    refilled = await ready_ids(runtime)
    assert len(refilled) == 1
    assert refilled != warm
    deleted = await http.delete(f"/v1/sessions/{session['id']}", headers=token)
    assert deleted.status_code == 200, deleted.text
