"""Fleet migrations over the REST API on the real local plane: checkpoint-guarded rollouts with
a canary, halting and rolling on, resuming after a crash without applying twice, baselines for
new sessions, dry runs that leave no branch, and rollbacks with and without `down`."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from agentdb.runtime import Runtime
from meta_schema import AgentSession

from .conftest import ADMIN, Tenant, assert_problem, bearer, make_tenant, runtime_with

pytestmark = pytest.mark.asyncio(loop_scope="session")

runtime = runtime_with("fleet", sql_statement_timeout_s=30)

TERMINAL = {"finished", "halted", "cancelled", "rolled_back"}


async def wait_for(
    http: httpx.AsyncClient, migration_id: str, statuses: set[str] = TERMINAL, limit: float = 240
) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while True:
        got = await http.get(f"/v1/migrations/{migration_id}", headers=ADMIN)
        assert got.status_code == 200, got.text
        view: dict[str, Any] = got.json()
        if view["status"] in statuses:
            return view
        assert time.monotonic() < deadline, view
        await asyncio.sleep(0.2)


async def results(
    http: httpx.AsyncClient, migration_id: str, status: str | None = None
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if status is not None:
            params["status"] = status
        if after is not None:
            params["after"] = after
        page = await http.get(
            f"/v1/migrations/{migration_id}/sessions", params=params, headers=ADMIN
        )
        assert page.status_code == 200, page.text
        rows: list[dict[str, Any]] = page.json()["results"]
        found += rows
        if len(rows) < 500:
            return found
        after = rows[-1]["session_id"]


async def sql(http: httpx.AsyncClient, session_id: str, statement: str) -> list[list[Any]]:
    answer = await http.post(
        f"/v1/sessions/{session_id}/sql", json={"sql": statement}, headers=ADMIN
    )
    assert answer.status_code == 200, answer.text
    rows: list[list[Any]] = answer.json()["rows"]
    return rows


async def start(http: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    answer = await http.post("/v1/migrations", json=body, headers=ADMIN)
    assert answer.status_code == 201, answer.text
    assert answer.headers["location"] == f"/v1/migrations/{answer.json()['id']}"
    view: dict[str, Any] = answer.json()
    return view


async def sessions_of(http: httpx.AsyncClient, tenant: Tenant, more: int) -> list[str]:
    """The tenant's session and `more` new ones, each with a table `items` of three rows."""
    ids = [tenant.session_id]
    for _ in range(more):
        made = await http.post("/v1/sessions", json={}, headers=tenant.user_token)
        assert made.status_code == 201, made.text
        ids.append(made.json()["id"])
    for sid in ids:
        await sql(
            http,
            sid,
            "create table items (id int primary key, v text);"
            " insert into items values (1, 'a'), (2, 'b'), (3, 'c')",
        )
    return ids


async def checkpoint_labels(http: httpx.AsyncClient, session_id: str) -> list[str]:
    tree = await http.get(f"/v1/sessions/{session_id}/checkpoints", headers=ADMIN)
    return [c["label"] for c in tree.json()["checkpoints"]]


async def test_a_migration_checkpoints_each_session_then_applies_up_once(
    http: httpx.AsyncClient,
) -> None:
    tenant = await make_tenant(http, "fleet-basic")
    ids = await sessions_of(http, tenant, 3)
    view = await start(
        http,
        name=f"add-flag-{uuid.uuid4().hex[:6]}",
        up="alter table items add column flag boolean not null default false;"
        " create index items_flag on items (flag)",
        target={"user_ids": [tenant.user_id]},
        rollout={"canary": 1, "concurrency": 2},
    )
    assert view["status"] in {"pending", "canary", "rolling", "finished"}
    done = await wait_for(http, view["id"])
    assert done["status"] == "finished", done
    assert done["counts"]["applied"] == 4
    assert done["total"] == 4
    rows = await results(http, view["id"])
    assert sorted(r["session_id"] for r in rows) == sorted(ids)
    assert [r["canary"] for r in rows].count(True) == 1
    for row in rows:
        assert row["status"] == "applied"
        assert row["checkpoint_id"] is not None
        assert row["checkpoint_ms"] is not None
        assert row["apply_ms"] is not None
    for sid in ids:
        assert await sql(http, sid, "select count(*) from items where not flag") == [[3]]
        assert f"before migration {view['name']}" in await checkpoint_labels(http, sid)
        carried = await sql(http, sid, "select name from agentdb.fleet_migrations")
        assert carried == [[view["name"]]]
        events = await http.get(f"/v1/sessions/{sid}/events", headers=ADMIN)
        actions = [e["action"] for e in events.json()["events"]]
        assert "fleet_migration.apply" in actions
        checkpoints = [e for e in events.json()["events"] if e["action"] == "checkpoint.create"]
        assert any(e["details"].get("reason") == "fleet_migration" for e in checkpoints)
    # The same name again is refused, and nothing new is written.
    again = await http.post(
        "/v1/migrations", json={"name": view["name"], "up": "select 1"}, headers=ADMIN
    )
    assert_problem(again, 409, "name")


async def test_bad_input_names_the_field_and_writes_nothing(http: httpx.AsyncClient) -> None:
    before = (await http.get("/v1/migrations", headers=ADMIN)).json()["migrations"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"up": "select 1"}, "name"),
        ({"name": "x", "up": "   "}, "up"),
        ({"name": "x y", "up": "select 1"}, "name"),
        ({"name": "x", "up": "begin; alter table t add c int; commit"}, "up"),
        ({"name": "x", "up": "select 1", "rollout": {"canary": "150%"}}, "rollout.canary"),
        ({"name": "x", "up": "select 1", "rollout": {"canary": "abc"}}, "rollout.canary"),
        ({"name": "x", "up": "select 1", "rollout": {"concurrency": 0}}, "rollout.concurrency"),
        ({"name": "x", "up": "select 1", "rollout": {"wave_size": "0%"}}, "rollout.wave_size"),
        ({"name": "x", "up": "select 1", "rollout": {"concurrency": "8"}}, "rollout.concurrency"),
        ({"name": "x", "up": "select 1", "target": {"all": True, "tiers": ["free"]}}, "target"),
        ({"name": "x", "up": "select 1", "target": {"user_ids": ["nope"]}}, "target.user_ids.0"),
        ({"name": "x", "up": "select 1", "surprise": 1}, "surprise"),
        ({"name": "x", "up": "select 1", "tested_by": str(uuid.uuid4())}, "tested_by"),
    ]
    for body, field in cases:
        answer = await http.post("/v1/migrations", json=body, headers=ADMIN)
        assert answer.status_code in {400, 422}, (body, answer.text)
        assert_problem(answer, answer.status_code, field)
    after = (await http.get("/v1/migrations", headers=ADMIN)).json()["migrations"]
    assert after == before
    missing = await http.get(f"/v1/migrations/{uuid.uuid4()}", headers=ADMIN)
    assert_problem(missing, 404)


async def test_only_the_admin_token_reaches_migrations(http: httpx.AsyncClient) -> None:
    tenant = await make_tenant(http, "fleet-guard")
    for headers in (tenant.user_token, tenant.session_token, {}, bearer("adb_nonsense")):
        listed = await http.get("/v1/migrations", headers=headers)
        assert listed.status_code in {401, 403}, listed.text
        made = await http.post(
            "/v1/migrations", json={"name": "evil", "up": "drop table items"}, headers=headers
        )
        assert made.status_code in {401, 403}, made.text


async def test_sql_that_cannot_run_in_a_transaction_runs_statement_by_statement(
    http: httpx.AsyncClient,
) -> None:
    tenant = await make_tenant(http, "fleet-concurrently")
    ids = await sessions_of(http, tenant, 1)
    # The second session's duplicate values make its unique index fail: its checkpoint is
    # restored, so the column the first statement added is gone again.
    await sql(http, ids[1], "insert into items values (4, 'a')")
    view = await start(
        http,
        name=f"concurrently-{uuid.uuid4().hex[:6]}",
        up="alter table items add column w int;"
        " create unique index concurrently items_v on items (v)",
        target={"session_ids": ids},
        rollout={"concurrency": 2, "halt_after_failures": None},
    )
    done = await wait_for(http, view["id"])
    assert done["status"] == "finished", done
    by_session = {r["session_id"]: r for r in await results(http, view["id"])}
    assert by_session[ids[0]]["status"] == "applied"
    assert by_session[ids[1]]["status"] == "failed"
    assert "restored" in by_session[ids[1]]["error"]
    assert await sql(
        http, ids[0], "select count(*) from pg_indexes where indexname = 'items_v'"
    ) == [[1]]
    columns = "select count(*) from information_schema.columns where column_name = 'w'"
    assert await sql(http, ids[0], columns) == [[1]]
    assert await sql(http, ids[1], columns) == [[0]]
    assert await sql(http, ids[1], "select count(*) from items") == [[4]]


async def test_dry_run_leaves_no_branch_and_a_tested_run_must_match_its_sql(
    http: httpx.AsyncClient, runtime: Runtime
) -> None:
    tenant = await make_tenant(http, "fleet-dry")
    ids = await sessions_of(http, tenant, 1)
    up = "alter table items add column dry int default 7"
    name = f"dry-{uuid.uuid4().hex[:6]}"
    dry = await start(
        http, name=name, up=up, target={"session_ids": ids}, dry_run=True, rollout={"canary": 1}
    )
    done = await wait_for(http, dry["id"])
    assert done["status"] == "finished", done
    assert done["counts"]["tested"] == 2
    for sid in ids:
        # The live database is untouched, and no branch is left.
        assert await sql(
            http, sid, "select count(*) from information_schema.columns where column_name='dry'"
        ) == [[0]]
        branches = await http.get(f"/v1/sessions/{sid}/branches", headers=ADMIN)
        assert [b for b in branches.json()["branches"] if b["status"] != "deleted"] == []
        # Nor on the control plane: the project has its live branch only.
        async with runtime.meta() as db:
            row = await db.get(AgentSession, uuid.UUID(sid))
        assert row is not None
        assert row.project_id is not None
        on_plane = await runtime.neon.list_branches(row.project_id)
        assert [b.id for b in on_plane.branches] == [row.live_branch_id]
    # Other SQL under the dry run's name is refused; the tested SQL goes through.
    other = await http.post(
        "/v1/migrations",
        json={"name": name, "up": up + " ", "tested_by": dry["id"]},
        headers=ADMIN,
    )
    assert_problem(other, 409)
    real = await start(http, name=name, up=up, target={"session_ids": ids}, tested_by=dry["id"])
    finished = await wait_for(http, real["id"])
    assert finished["counts"]["applied"] == 2, finished
    assert await sql(http, ids[0], "select distinct dry from items") == [[7]]


async def test_a_baseline_migration_reaches_a_session_created_after_it(
    http: httpx.AsyncClient,
) -> None:
    tenant = await make_tenant(http, "fleet-baseline")
    await sql(http, tenant.session_id, "create table items (id int primary key)")
    view = await start(
        http,
        name=f"platform-table-{uuid.uuid4().hex[:6]}",
        up="create table platform_settings (key text primary key, value text);"
        " insert into platform_settings values ('theme', 'dark')",
        target={"user_ids": [tenant.user_id]},
        baseline=True,
    )
    done = await wait_for(http, view["id"])
    assert done["counts"]["applied"] == 1, done
    made = await http.post("/v1/sessions", json={}, headers=tenant.user_token)
    assert made.status_code == 201, made.text
    new_id = made.json()["id"]
    # At once, as the create answers: the new session starts at the fleet's schema.
    assert await sql(http, new_id, "select value from platform_settings") == [["dark"]]
    assert "baseline migrations" in await checkpoint_labels(http, new_id)
    rows = {r["session_id"]: r["status"] for r in await results(http, view["id"])}
    assert rows[new_id] == "applied"
    # Another user's new session is not a target.
    stranger = await make_tenant(http, "fleet-baseline-other")
    assert stranger.session_id not in {r["session_id"] for r in await results(http, view["id"])}


async def test_rollback_runs_down_where_given(http: httpx.AsyncClient) -> None:
    tenant = await make_tenant(http, "fleet-down")
    ids = await sessions_of(http, tenant, 1)
    view = await start(
        http,
        name=f"with-down-{uuid.uuid4().hex[:6]}",
        up="alter table items add column d int default 1",
        down="alter table items drop column d",
        target={"session_ids": ids},
    )
    assert (await wait_for(http, view["id"]))["status"] == "finished"
    # Written after the migration: `down` keeps it, a restore would not.
    await sql(http, ids[0], "insert into items values (10, 'after')")
    back = await http.post(f"/v1/migrations/{view['id']}/rollback", headers=ADMIN)
    assert back.status_code == 202, back.text
    done = await wait_for(http, view["id"], {"rolled_back"})
    assert done["counts"]["rolled_back"] == 2, done
    assert done["error"] is None
    columns = "select count(*) from information_schema.columns where column_name = 'd'"
    for sid in ids:
        assert await sql(http, sid, columns) == [[0]]
        assert await sql(http, sid, "select count(*) from agentdb.fleet_migrations") == [[0]]
    assert await sql(http, ids[0], "select v from items where id = 10") == [["after"]]


async def test_rollback_without_down_restores_only_where_nothing_was_written_after(
    http: httpx.AsyncClient,
) -> None:
    tenant = await make_tenant(http, "fleet-restore")
    ids = await sessions_of(http, tenant, 1)
    before = await http.get(f"/v1/sessions/{ids[1]}", headers=ADMIN)
    view = await start(
        http,
        name=f"no-down-{uuid.uuid4().hex[:6]}",
        up="alter table items add column nd int default 1; update items set v = v || '!'",
        target={"session_ids": ids},
    )
    assert (await wait_for(http, view["id"]))["status"] == "finished"
    await sql(http, ids[0], "insert into items values (10, 'after')")
    back = await http.post(f"/v1/migrations/{view['id']}/rollback", headers=ADMIN)
    assert back.status_code == 202, back.text
    done = await wait_for(http, view["id"], {"rolled_back"})
    assert done["counts"]["rolled_back"] == 1, done
    assert done["counts"]["not_rolled_back"] == 1, done
    assert "not_rolled_back" in done["error"]
    left = await results(http, view["id"], "not_rolled_back")
    assert [r["session_id"] for r in left] == [ids[0]]
    assert "written after the migration" in left[0]["error"]
    # The untouched one is back exactly as before, with its connection string unchanged.
    assert await sql(http, ids[1], "select v from items order by id") == [["a"], ["b"], ["c"]]
    after = await http.get(f"/v1/sessions/{ids[1]}", headers=ADMIN)
    assert after.json()["connection_uri"] == before.json()["connection_uri"]
    # The written one keeps both the migration and the write.
    assert await sql(http, ids[0], "select count(*) from items where nd = 1") == [[4]]


async def test_the_event_stream_ends_with_done(http: httpx.AsyncClient) -> None:
    tenant = await make_tenant(http, "fleet-stream")
    ids = await sessions_of(http, tenant, 1)
    view = await start(
        http,
        name=f"streamed-{uuid.uuid4().hex[:6]}",
        up="alter table items add column s int",
        target={"session_ids": ids},
    )
    events: list[tuple[str, str]] = []
    async with http.stream("GET", f"/v1/migrations/{view['id']}/events", headers=ADMIN) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = ""
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name, line.split(":", 1)[1].strip()))
    assert events[-1][0] == "done"
    assert '"status":"finished"' in events[-1][1]
    missing = await http.get(f"/v1/migrations/{uuid.uuid4()}/events", headers=ADMIN)
    assert_problem(missing, 404)
