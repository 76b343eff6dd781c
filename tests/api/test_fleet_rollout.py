"""A fleet migration across 200 sessions on the real local plane: `up` fails on the three
sessions whose data conflicts with it; the rollout halts in the canary, as its rule says,
leaving those sessions exactly as they were and no later wave started; told to continue, it
rolls on through the waves and finishes everywhere else."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from agentdb.runtime import Runtime
from meta_schema import AgentSession

from .conftest import ADMIN, make_tenant, runtime_with
from .test_fleet import results, sql, start, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

SESSIONS = 200
CONFLICTING = 3


async def _delete_everything(running: Runtime) -> None:
    """The 200 sessions' databases go as the module ends, not with the suite's plane."""
    async with running.meta() as db:
        ids = list(await db.scalars(sa.select(AgentSession.id)))
    gate = asyncio.Semaphore(8)

    async def delete(session_id: uuid.UUID) -> None:
        async with gate:
            await running.sessions.delete(session_id)

    await asyncio.gather(*(delete(session_id) for session_id in ids))


runtime = runtime_with(
    "fleet-rollout",
    unlimited_client=True,
    sql_statement_timeout_s=30,
    before_close=_delete_everything,
)


async def _fleet(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    """200 sessions of 20 users (the free tier's 10 each), oldest first, each with a table of
    three rows."""
    tenants = [await make_tenant(http, f"fleet-{n}") for n in range(SESSIONS // 10)]
    gate = asyncio.Semaphore(8)

    async def one(index: int, sid: str | None) -> None:
        tenant = tenants[index % len(tenants)]
        async with gate:
            if sid is None:
                made = await http.post("/v1/sessions", json={}, headers=tenant.user_token)
                assert made.status_code == 201, made.text
                sid = made.json()["id"]
            await sql(
                http,
                sid,
                "create table items (id int primary key, v text);"
                f" insert into items values (1, 'a{index}'), (2, 'b{index}'), (3, 'c{index}')",
            )

    await asyncio.gather(
        *(one(index, None) for index in range(SESSIONS - len(tenants))),
        *(one(-1 - n, tenant.session_id) for n, tenant in enumerate(tenants)),
    )
    views: list[dict[str, Any]] = []
    for tenant in tenants:
        listed = await http.get("/v1/sessions", params={"limit": 500}, headers=tenant.user_token)
        views += listed.json()["sessions"]
    assert len(views) == SESSIONS
    return sorted(views, key=lambda view: (view["created_at"], view["id"]))


# About 70 s on a quiet 2-core machine; the suite's 300 s would be near on a loaded one.
@pytest.mark.timeout(900)
async def test_two_hundred_sessions_halt_in_the_canary_then_roll_on_when_told(
    http: httpx.AsyncClient,
) -> None:
    fleet = await _fleet(http)
    # The canary is the oldest tenth; three of those hold duplicate values, which the
    # migration's unique constraint refuses.
    conflicting = [view["id"] for view in fleet[2 : 2 + CONFLICTING]]
    for sid in conflicting:
        await sql(http, sid, "insert into items values (4, (select v from items where id = 1))")
    before = {sid: await sql(http, sid, "select * from items order by id") for sid in conflicting}

    view = await start(
        http,
        name=f"unique-v-{uuid.uuid4().hex[:6]}",
        up="alter table items add column tag text not null default 'new';"
        " alter table items add constraint items_v_unique unique (v)",
        rollout={
            "canary": "10%",
            "concurrency": 8,
            "wave_size": "50%",
            "halt_after_failures": CONFLICTING,
        },
    )
    halted = await wait_for(http, view["id"], limit=600)
    assert halted["status"] == "halted", halted
    assert halted["counts"]["failed"] == CONFLICTING, halted
    assert "3 session(s) failed" in halted["error"]
    rows = await results(http, view["id"])
    assert len(rows) == SESSIONS
    assert sum(row["canary"] for row in rows) == SESSIONS // 10
    # Halted in the canary: no session of a later wave was touched.
    assert {row["status"] for row in rows if not row["canary"]} == {"pending"}
    failed = await results(http, view["id"], "failed")
    assert sorted(row["session_id"] for row in failed) == sorted(conflicting)
    for row in failed:
        assert "could not create unique index" in row["error"], row
    # The failed sessions keep their pre-migration data and schema exactly.
    for sid in conflicting:
        assert await sql(http, sid, "select * from items order by id") == before[sid]
        assert await sql(
            http, sid, "select count(*) from information_schema.columns where column_name='tag'"
        ) == [[0]]

    resumed = await http.post(
        f"/v1/migrations/{view['id']}/resume", json={"continue": True}, headers=ADMIN
    )
    assert resumed.status_code == 202, resumed.text
    done = await wait_for(http, view["id"], limit=900)
    assert done["status"] == "finished", done
    assert done["counts"]["applied"] == SESSIONS - CONFLICTING, done
    assert done["counts"]["failed"] == CONFLICTING, done
    waves = {row["wave"] for row in await results(http, view["id"])}
    assert waves == {0, 1, 2}
    # Each migrated session carries it once; the conflicting ones are still untouched.
    for sid in [view["id"] for view in fleet[::20]]:
        if sid in conflicting:
            continue
        assert await sql(http, sid, "select count(*) from agentdb.fleet_migrations") == [[1]]
        assert await sql(http, sid, "select distinct tag from items") == [["new"]]
    for sid in conflicting:
        assert await sql(http, sid, "select * from items order by id") == before[sid]
