"""The local Data API, driven by the real PostgREST client (`postgrest` on PyPI): CRUD, filters,
ordering, counts, row-level security with Neon Auth JWTs, PostgREST-shaped errors; and the
Neon-shaped endpoints that turn it on, checked against the OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from contract.openapi import NeonSpec
from litestar import Litestar
from postgrest import APIError, AsyncPostgrestClient, CountMethod, ReturnMethod
from support import client_for

from agentdb.localplane import LocalPlane, _rest
from agentdb.neon import NeonClient, NeonHTTPError, NeonNotFound
from agentdb.neon._models_platform import DataAPISettings
from agentdb.pg import ServerInfo

from .helpers import create_project, execute, fetch, wait_ops

PASSWORD = "correct horse 1"


@pytest_asyncio.fixture(loop_scope="session")
async def neon(localplane_app: Litestar, neon_spec: NeonSpec) -> AsyncIterator[NeonClient]:
    hooks = {"request": [neon_spec.request_hook()], "response": [neon_spec.response_hook()]}
    async with NeonClient.for_app(localplane_app, api_key="test-key", event_hooks=hooks) as client:
        yield client


@dataclass
class App:
    """A project with Neon Auth, two signed-up users and the Data API on `neondb`."""

    localplane: Litestar
    project_id: str
    branch_id: str
    uri: str
    url: str
    alice: dict[str, Any]
    bob: dict[str, Any]

    def rest(self, token: str | None = None, url: str | None = None) -> AsyncPostgrestClient:
        client = AsyncPostgrestClient(
            url or self.url,
            http_client=httpx.AsyncClient(transport=httpx.ASGITransport(self.localplane)),
        )
        return client.auth(token) if token else client


async def make_app(
    localplane_app: Litestar, neon_http: httpx.AsyncClient, neon: NeonClient, *, schema: str = ""
) -> App:
    created = await create_project(neon_http)
    project_id, branch_id = created["project"]["id"], created["branch"]["id"]
    uri = created["connection_uris"][0]["connection_uri"]
    await execute(uri, "CREATE TABLE earlier (n int)", "INSERT INTO earlier VALUES (1)")
    enabled = await neon.enable_neon_auth(project_id, branch_id)
    users = []
    async with httpx.AsyncClient(transport=httpx.ASGITransport(localplane_app)) as web:
        for email in ("alice@example.com", "bob@example.com"):
            resp = await web.post(
                f"{enabled.base_url}/sign-up/email", json={"email": email, "password": PASSWORD}
            )
            assert resp.status_code == 200, resp.text
            users.append(resp.json())
    url = await neon.create_data_api(
        project_id, branch_id, "neondb", auth_provider="neon_auth", add_default_grants=True
    )
    if schema:  # after the Data API: it uses `auth.user_id()`, and default grants apply
        await execute(uri, schema)
    return App(localplane_app, project_id, branch_id, uri, url, *users)


TODOS = """
CREATE TABLE todos (
    id serial PRIMARY KEY,
    title text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    priority int,
    tag text
);
"""


async def test_crud_filters_ordering_and_counts(
    localplane_app: Litestar, neon_http: httpx.AsyncClient, neon: NeonClient
) -> None:
    app = await make_app(localplane_app, neon_http, neon, schema=TODOS)
    # Like Neon's `https://<endpoint>.apirest.<region>/<database>/rest/v1`: it names the
    # branch's compute endpoint, which a finalized restore moves to the restored branch.
    (endpoint,) = await neon.list_endpoints(app.project_id, branch_id=app.branch_id)
    assert app.url == f"http://localplane/data-api/{endpoint.id}/neondb/rest/v1"
    async with app.rest(app.alice["token"]) as rest:
        one = await rest.table("todos").insert({"title": "write tests", "priority": 1}).execute()
        assert one.data == [
            {"id": 1, "title": "write tests", "done": False, "priority": 1, "tag": None}
        ]
        many = await (
            rest.table("todos")
            .insert(
                [
                    {"title": "Fix bug", "priority": 3, "tag": "work", "done": False},
                    {"title": "fix roof", "priority": 2, "tag": "home", "done": True},
                    {"title": "read", "tag": "home", "done": False},
                ]
            )
            .execute()
        )
        assert [r["id"] for r in many.data] == [2, 3, 4]
        assert many.data[2]["priority"] is None  # missing from a row of a bulk insert: null

        async def titles(query: Any) -> list[str]:
            return [r["title"] for r in (await query.execute()).data]

        todos = rest.table("todos")
        assert await titles(todos.select("title").eq("tag", "home").order("id")) == [
            "fix roof",
            "read",
        ]
        assert await titles(todos.select("title").neq("tag", "home").order("id")) == ["Fix bug"]
        assert await titles(todos.select("title").gt("priority", 1).order("id")) == [
            "Fix bug",
            "fix roof",
        ]
        assert await titles(todos.select("title").gte("priority", 2).lt("priority", 3)) == [
            "fix roof"
        ]
        assert await titles(todos.select("title").lte("priority", 1)) == ["write tests"]
        assert await titles(todos.select("title").like("title", "fix*")) == ["fix roof"]
        assert await titles(todos.select("title").ilike("title", "fix*").order("id")) == [
            "Fix bug",
            "fix roof",
        ]
        assert await titles(todos.select("title").in_("id", [1, 3]).order("id")) == [
            "write tests",
            "fix roof",
        ]
        assert await titles(todos.select("title").is_("tag", "null")) == ["write tests"]
        assert await titles(todos.select("title").is_("done", "true")) == ["fix roof"]
        assert await titles(todos.select("title").not_.is_("tag", "null").order("id")) == [
            "Fix bug",
            "fix roof",
            "read",
        ]
        ordered = await titles(
            todos.select("title").order("priority", desc=True, nullsfirst=True).order("id")
        )
        assert ordered == ["read", "Fix bug", "fix roof", "write tests"]

        page = await (
            todos.select("id, name:title", count=CountMethod.exact)
            .order("id")
            .limit(2)
            .offset(1)
            .execute()
        )
        assert page.data == [{"id": 2, "name": "Fix bug"}, {"id": 3, "name": "fix roof"}]
        assert page.count == 4
        single = await todos.select("title").eq("id", 4).single().execute()
        assert single.data == {"title": "read"}

        updated = await todos.update({"done": True}).eq("tag", "work").execute()
        assert [(r["id"], r["done"]) for r in updated.data] == [(2, True)]
        upserted = await todos.upsert({"id": 4, "title": "read a book", "done": False}).execute()
        assert upserted.data[0]["title"] == "read a book"
        deleted = await todos.delete(count=CountMethod.exact).eq("done", "true").execute()
        assert sorted(r["id"] for r in deleted.data) == [2, 3]
        quiet = await todos.delete(returning=ReturnMethod.minimal).eq("id", 1).execute()
        assert quiet.data == []
    assert await fetch(app.uri, "SELECT id, title FROM todos ORDER BY id") == [(4, "read a book")]


NOTES = """
CREATE TABLE notes (
    id serial PRIMARY KEY,
    owner_id text NOT NULL DEFAULT auth.user_id(),
    body text NOT NULL
);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_notes ON notes TO authenticated
    USING (owner_id = current_setting('request.jwt.claims', true)::json->>'sub')
    WITH CHECK (owner_id = current_setting('request.jwt.claims', true)::json->>'sub');
CREATE TABLE announcements (id int PRIMARY KEY, body text);
"""
ANON_GRANTS = """
GRANT SELECT ON notes, announcements TO anonymous;
INSERT INTO announcements VALUES (1, 'hello, world');
"""


async def test_row_level_security_separates_users_and_the_anonymous(
    localplane_app: Litestar, neon_http: httpx.AsyncClient, neon: NeonClient
) -> None:
    app = await make_app(localplane_app, neon_http, neon, schema=NOTES)
    await execute(app.uri, ANON_GRANTS)
    alice_id, bob_id = app.alice["user"]["id"], app.bob["user"]["id"]
    async with app.rest(app.alice["token"]) as alice, app.rest(app.bob["token"]) as bob:
        mine = await alice.table("notes").insert({"body": "alice's secret"}).execute()
        assert mine.data[0]["owner_id"] == alice_id  # auth.user_id() as the column default
        await bob.table("notes").insert([{"body": "bob 1"}, {"body": "bob 2"}]).execute()

        seen_by_alice = await alice.table("notes").select("body", count=CountMethod.exact).execute()
        assert [r["body"] for r in seen_by_alice.data] == ["alice's secret"]
        assert seen_by_alice.count == 1
        bob_rows = await bob.table("notes").select("id, owner_id").execute()
        assert {r["owner_id"] for r in bob_rows.data} == {bob_id}

        # Alice cannot change or delete Bob's rows: they are invisible to her.
        bob_note = bob_rows.data[0]["id"]
        changed = await alice.table("notes").update({"body": "pwned"}).eq("id", bob_note).execute()
        assert changed.data == []
        removed = await alice.table("notes").delete().eq("id", bob_note).execute()
        assert removed.data == []
        # Nor write a row in his name.
        with pytest.raises(APIError) as forged:
            await alice.table("notes").insert({"body": "forged", "owner_id": bob_id}).execute()
        assert forged.value.code == "42501"
        assert "row-level security" in (forged.value.message or "")

    async with app.rest() as anonymous:
        assert (await anonymous.table("notes").select("*").execute()).data == []
        hello = await anonymous.table("announcements").select("body").execute()
        assert hello.data == [{"body": "hello, world"}]
        with pytest.raises(APIError) as denied:
            await anonymous.table("notes").insert({"body": "spam", "owner_id": "x"}).execute()
        assert denied.value.code == "42501"

    assert await fetch(app.uri, "SELECT owner_id, body FROM notes ORDER BY id") == [
        (alice_id, "alice's secret"),
        (bob_id, "bob 1"),
        (bob_id, "bob 2"),
    ]


async def test_bad_requests_get_postgrest_errors(
    localplane_app: Litestar, neon_http: httpx.AsyncClient, neon: NeonClient
) -> None:
    app = await make_app(localplane_app, neon_http, neon, schema=TODOS)
    async with app.rest(app.alice["token"]) as rest:
        cases = [
            (rest.table("todos").select("nope"), "42703"),
            (rest.table("todos").select("*").eq("nope", 1), "42703"),
            (rest.table("todos").select("*").filter("id", "between", "1"), "PGRST100"),
            (rest.table("todos").select("*").order("id.sideways"), "PGRST100"),
            (rest.table("todos").select("*").is_("tag", "maybe"), "PGRST100"),
            (rest.table("missing").select("*"), "PGRST205"),
            (rest.table("todos").select("*").eq("id", "not-a-number"), "22P02"),
            (rest.table("todos").insert({"title": None}), "23502"),
            (rest.table("todos").insert({"nope": 1}), "PGRST204"),
            (rest.table("todos").select("*").eq("id", 99).single(), "PGRST116"),
        ]
        for query, code in cases:
            with pytest.raises(APIError) as error:
                await query.execute()
            assert error.value.code == code, (code, error.value.json())
            assert error.value.message
    async with httpx.AsyncClient(transport=httpx.ASGITransport(localplane_app)) as web:
        bad_token = await web.get(f"{app.url}/todos", headers={"Authorization": "Bearer not.a.jwt"})
        assert bad_token.status_code == 401
        assert set(bad_token.json()) == {"code", "message", "details", "hint"}
        assert bad_token.json()["code"] == "PGRST301"
        tampered = app.alice["token"][:-6] + "AAAAAA"
        forged = await web.get(f"{app.url}/todos", headers={"Authorization": f"Bearer {tampered}"})
        assert forged.status_code == 401
        bad_filter = await web.get(f"{app.url}/todos", params={"id": "eq"})
        assert bad_filter.status_code == 400
        assert bad_filter.json()["code"] == "PGRST100"
        wrong_schema = await web.get(f"{app.url}/todos", headers={"Accept-Profile": "neon_auth"})
        assert wrong_schema.status_code == 406
        assert wrong_schema.json()["code"] == "PGRST106"
    # The failed insert left nothing behind.
    assert await fetch(app.uri, "SELECT count(*) FROM todos") == [(0,)]


BIG = """
CREATE TABLE big (n int PRIMARY KEY, s text);
INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, 200) AS g;
INSERT INTO big VALUES (1000, repeat('y', 60000));
"""


async def test_a_read_answers_at_most_its_byte_budget_and_pages_on(
    localplane_app: Litestar,
    neon_http: httpx.AsyncClient,
    neon: NeonClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = await make_app(localplane_app, neon_http, neon, schema=BIG)
    monkeypatch.setattr(_rest, "MAX_RESPONSE_BYTES", 50_000)
    async with app.rest(app.alice["token"]) as rest:
        big = rest.table("big")
        first = await big.select("*", count=CountMethod.exact).lt("n", 1000).order("n").execute()
        # About 48 rows of 1 kB fit; the rest is the next page, as with db_max_rows.
        got = [row["n"] for row in first.data]
        assert 0 < len(got) < 200
        assert got == list(range(1, len(got) + 1))
        assert first.count == 200
        assert len(json.dumps(first.data, separators=(",", ":"))) <= 50_000
        rest_of = await big.select("n").lt("n", 1000).order("n").range(len(got), 199).execute()
        assert rest_of.data[0]["n"] == len(got) + 1
        # A row that no page could hold is an error naming the limit, not a 500.
        with pytest.raises(APIError) as error:
            await big.select("*").eq("n", 1000).execute()
        assert error.value.code == "54000", error.value.json()
        assert "MiB" in (error.value.message or "")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(localplane_app)) as web:
        raw = await web.get(
            f"{app.url}/big",
            params={"select": "n", "order": "n", "n": "lt.1000"},
            headers={"Authorization": f"Bearer {app.alice['token']}"},
        )
        assert raw.status_code == 200, raw.text  # 200 rows of 10 bytes fit
        assert len(raw.json()) == 200


async def test_tokens_of_one_project_do_not_open_another(
    localplane_app: Litestar, neon_http: httpx.AsyncClient, neon: NeonClient
) -> None:
    first = await make_app(localplane_app, neon_http, neon, schema=TODOS)
    second = await make_app(localplane_app, neon_http, neon, schema=TODOS)
    async with second.rest(first.alice["token"]) as stranger:
        with pytest.raises(APIError) as error:
            await stranger.table("todos").select("*").execute()
        assert error.value.code == "PGRST301"
    # Each project's Data API login reaches only its own project's databases.
    first_db = (await fetch(first.uri, "SELECT current_database()"))[0][0]
    second_db = (await fetch(second.uri, "SELECT current_database()"))[0][0]
    rows = await fetch(
        first.uri,
        "SELECT r.rolname, has_database_privilege(r.rolname, %s, 'CONNECT'),"
        " has_database_privilege(r.rolname, %s, 'CONNECT')"
        " FROM pg_roles r WHERE r.rolname LIKE 'lpa\\_%%authenticator' ORDER BY 1",
        (first_db, second_db),
    )
    access = {(own, other) for _name, own, other in rows}
    assert len(rows) >= 2
    assert (True, True) not in access


async def test_neon_endpoints_enable_describe_refresh_and_disable(
    localplane_app: Litestar,
    neon_spec: NeonSpec,
    neon_http: httpx.AsyncClient,
    neon: NeonClient,
) -> None:
    app = await make_app(localplane_app, neon_http, neon)
    status = await neon.get_data_api(app.project_id, app.branch_id, "neondb")
    assert status.url == app.url
    assert status.status == "ready"
    assert status.settings is not None
    assert status.settings.db_schemas == ["public"]
    assert status.available_schemas is not None
    assert {"public", "neon_auth", "auth"} <= set(status.available_schemas)

    # Default grants reach tables created later; the cache refresh (PATCH) keeps settings.
    await execute(app.uri, "CREATE TABLE later (n int)", "INSERT INTO later VALUES (7)")
    await neon.update_data_api(
        app.project_id, app.branch_id, "neondb", settings=DataAPISettings(db_max_rows=10)
    )
    refreshed = await neon.get_data_api(app.project_id, app.branch_id, "neondb")
    assert refreshed.settings is not None
    assert refreshed.settings.db_max_rows == 10
    async with app.rest(app.bob["token"]) as rest:
        assert (await rest.table("later").select("n").execute()).data == [{"n": 7}]
        assert (await rest.table("earlier").select("n").execute()).data == [{"n": 1}]

    with pytest.raises(NeonHTTPError) as twice:
        await neon.create_data_api(app.project_id, app.branch_id, "neondb")
    assert twice.value.status == 409
    with pytest.raises(NeonNotFound):
        await neon.create_data_api(app.project_id, app.branch_id, "nodb")
    async with client_for(localplane_app, neon_spec, validate_requests=False) as raw:
        path = f"/projects/{app.project_id}/branches/{app.branch_id}/data-api/neondb"
        bad = await raw.patch(path, json={"settings": {"db_anon_role": "postgres"}})
        assert bad.status_code == 400
        assert "db_anon_role" in bad.json()["message"]

    await neon.delete_data_api(app.project_id, app.branch_id, "neondb")
    with pytest.raises(NeonNotFound):
        await neon.get_data_api(app.project_id, app.branch_id, "neondb")
    async with app.rest(app.bob["token"]) as rest:
        with pytest.raises(APIError) as gone:
            await rest.table("later").select("n").execute()
        assert gone.value.code == "NOT_FOUND"


async def test_restores_and_branches_keep_the_data_api_and_project_deletion_drops_its_roles(
    localplane_app: Litestar,
    neon_http: httpx.AsyncClient,
    neon: NeonClient,
    plane: LocalPlane,
    pg_server: ServerInfo,
) -> None:
    app = await make_app(localplane_app, neon_http, neon, schema=NOTES)
    async with app.rest(app.alice["token"]) as alice:
        await alice.table("notes").insert({"body": "before the checkpoint"}).execute()
    snap = await neon_http.post(f"/projects/{app.project_id}/branches/{app.branch_id}/snapshot")
    assert snap.status_code == 200, snap.text
    await wait_ops(neon_http, app.project_id, snap.json()["operations"])
    async with app.rest(app.alice["token"]) as alice:
        await alice.table("notes").insert({"body": "after the checkpoint"}).execute()

    restored = await neon_http.post(
        f"/projects/{app.project_id}/snapshots/{snap.json()['snapshot']['id']}/restore",
        json={"target_branch_id": app.branch_id, "finalize_restore": True},
    )
    assert restored.status_code == 200, restored.text
    await wait_ops(neon_http, app.project_id, restored.json()["operations"])
    live_id = restored.json()["branch"]["id"]
    live = await neon.get_data_api(app.project_id, live_id, "neondb")
    assert live.url == app.url.replace(app.branch_id, live_id)
    # The same token (same signing key), the same policies: Alice sees her checkpointed note.
    async with (
        app.rest(app.alice["token"], live.url) as alice,
        app.rest(app.bob["token"], live.url) as bob,
        app.rest(url=live.url) as anonymous,
    ):
        mine = await alice.table("notes").select("body").execute()
        assert mine.data == [{"body": "before the checkpoint"}]
        assert (await bob.table("notes").select("*").execute()).data == []
        with pytest.raises(APIError) as denied:  # no grant to `anonymous` on this table
            await anonymous.table("notes").select("*").execute()
        assert denied.value.code == "42501"

    child = await neon_http.post(
        f"/projects/{app.project_id}/branches", json={"branch": {"parent_id": live_id}}
    )
    assert child.status_code == 201, child.text
    await wait_ops(neon_http, app.project_id, child.json()["operations"])
    child_api = await neon.get_data_api(app.project_id, child.json()["branch"]["id"], "neondb")
    async with app.rest(app.alice["token"], child_api.url) as alice:
        assert len((await alice.table("notes").select("id").execute()).data) == 1

    owner = (await fetch(app.uri, "SELECT current_user"))[0][0]
    key = owner.rsplit("_", 1)[-1]  # the project's physical suffix
    roles_sql = "SELECT rolname FROM pg_roles WHERE rolname LIKE %s ORDER BY 1"
    admin = pg_server.dsn("postgres")
    assert [r for (r,) in await fetch(admin, roles_sql, (f"lpa\\_{key}\\_%",))] == [
        f"lpa_{key}_anonymous",
        f"lpa_{key}_authenticated",
        f"lpa_{key}_authenticator",
        f"lpa_{key}_service",
    ]
    deleted = await neon_http.delete(f"/projects/{app.project_id}")
    assert deleted.status_code == 200, deleted.text
    await plane.drain()
    assert await fetch(admin, roles_sql, (f"lpa\\_{key}\\_%",)) == []
