"""Neon Auth and the Data API on agent sessions, over the real local plane: enable (twice),
status, the app's users, OAuth providers, RLS through the real PostgREST client, the schema
cache refreshed after DDL, restore, failures recorded, bad input refused."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa
from joserfc import jwt
from joserfc.jwk import KeySet
from litestar import Litestar
from postgrest import AsyncPostgrestClient
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from agentdb.neon import NeonClient
from agentdb.services import (
    CheckpointService,
    Conflict,
    ControlPlaneFailed,
    InvalidInput,
    Secrets,
    SessionLocks,
    SessionService,
)
from agentdb.services.addons import AddonService
from agentdb.services.sql import SqlService, is_ddl
from meta_schema import AddonKind, AddonStatus, AgentSession, Event, SessionAddon

from .conftest import failing_neon

PASSWORD = "correct horse 1"


@pytest.fixture
def addons(
    meta_sessions: async_sessionmaker[AsyncSession],
    neon: NeonClient,
    box: Secrets,
    locks: SessionLocks,
) -> AddonService:
    return AddonService(meta_sessions, neon, box, locks=locks)


@pytest_asyncio.fixture(loop_scope="session")
async def web(localplane_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """The local plane's auth service and Data API, at the absolute URLs agentdb hands out."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=localplane_app)) as client:
        yield client


async def sign_up(web: httpx.AsyncClient, base_url: str, email: str) -> dict[str, Any]:
    resp = await web.post(
        f"{base_url}/sign-up/email", json={"email": email, "password": PASSWORD, "name": email}
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def sign_in(web: httpx.AsyncClient, base_url: str, email: str) -> str:
    resp = await web.post(f"{base_url}/sign-in/email", json={"email": email, "password": PASSWORD})
    assert resp.status_code == 200, resp.text
    return str(resp.json()["token"])


def rest(localplane_app: Litestar, url: str, token: str | None) -> AsyncPostgrestClient:
    client = AsyncPostgrestClient(
        url, http_client=httpx.AsyncClient(transport=httpx.ASGITransport(localplane_app))
    )
    return client.auth(token) if token else client


async def addon_rows(
    meta_sessions: async_sessionmaker[AsyncSession], session_id: uuid.UUID
) -> dict[AddonKind, SessionAddon]:
    async with meta_sessions() as db:
        rows = await db.scalars(
            sa.select(SessionAddon).where(col(SessionAddon.session_id) == session_id)
        )
        return {row.kind: row for row in rows}


async def actions(
    meta_sessions: async_sessionmaker[AsyncSession], session_id: uuid.UUID, prefix: str
) -> list[tuple[str, str]]:
    async with meta_sessions() as db:
        rows = await db.scalars(
            sa.select(Event)
            .where(col(Event.session_id) == session_id, col(Event.action).startswith(prefix))
            .order_by(col(Event.id))
        )
        return [(e.action, e.details["phase"]) for e in rows]


async def test_enable_auth_twice_stores_keys_encrypted_lists_users_and_disables(
    session_service: SessionService,
    addons: AddonService,
    user_id: uuid.UUID,
    web: httpx.AsyncClient,
    meta_sessions: async_sessionmaker[AsyncSession],
) -> None:
    session = await session_service.create(user_id)
    off = await addons.get_auth(session.id)
    assert (off.enabled, off.status, off.base_url) == (False, AddonStatus.DISABLED, None)

    auth = await addons.enable_auth(session.id)
    assert auth.enabled
    assert auth.status == AddonStatus.ENABLED
    assert auth.database_name == "app"
    assert auth.base_url is not None
    assert auth.jwks_url == f"{auth.base_url}/.well-known/jwks.json"
    assert auth.pub_client_key
    secret = await addons.auth_secret_key(session.id)
    assert secret
    assert secret not in repr(auth)
    stored = (await addon_rows(meta_sessions, session.id))[AddonKind.AUTH]
    assert stored.encrypted_secret is not None
    assert secret.encode() not in stored.encrypted_secret

    again = await addons.enable_auth(session.id)
    assert again.base_url == auth.base_url
    assert await addons.auth_secret_key(session.id) == secret
    assert await actions(meta_sessions, session.id, "auth.") == [
        ("auth.enable", "requested"),
        ("auth.enable", "succeeded"),
    ]

    assert await addons.list_auth_users(session.id) == []
    alice = await sign_up(web, auth.base_url, "alice@example.com")
    bob = await sign_up(web, auth.base_url, "bob@example.com")
    users = await addons.list_auth_users(session.id)
    assert sorted((u.id, u.email) for u in users) == sorted(
        [
            (alice["user"]["id"], "alice@example.com"),
            (bob["user"]["id"], "bob@example.com"),
        ]
    )
    assert users[0].created_at is not None
    assert not users[0].email_verified
    assert len(await addons.list_auth_users(session.id, limit=1)) == 1
    jwks = KeySet.import_key_set((await web.get(auth.jwks_url)).json())
    assert jwt.decode(bob["token"], jwks, algorithms=["ES256"]).claims["sub"] == bob["user"]["id"]

    disabled = await addons.disable_auth(session.id)
    assert (disabled.enabled, disabled.status) == (False, AddonStatus.DISABLED)
    assert await addons.auth_secret_key(session.id) is None
    assert (await web.get(auth.jwks_url)).status_code == 404
    with pytest.raises(Conflict, match="not enabled"):
        await addons.list_auth_users(session.id)
    assert (await addons.disable_auth(session.id)).enabled is False  # twice is fine
    assert (await addon_rows(meta_sessions, session.id))[AddonKind.AUTH].encrypted_secret is None


async def test_data_api_serves_rls_per_user_refreshes_after_ddl_and_survives_restore(  # noqa: PLR0915, PLR0917
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    addons: AddonService,
    meta_sessions: async_sessionmaker[AsyncSession],
    box: Secrets,
    user_id: uuid.UUID,
    web: httpx.AsyncClient,
    localplane_app: Litestar,
) -> None:
    refreshed: list[bool] = []

    async def after_ddl(session_id: uuid.UUID) -> None:
        refreshed.append(await addons.refresh_after_ddl(session_id))

    sql = SqlService(meta_sessions, box, after_ddl=after_ddl)
    session = await session_service.create(user_id)
    await sql.run(session.id, "CREATE TABLE before_api (n int)")
    assert refreshed == [False]  # DDL, but no Data API yet

    api = await addons.enable_data_api(session.id)  # turns on Neon Auth as well
    assert api.enabled
    assert api.url is not None
    assert api.schemas == ["public"]
    assert api.default_grants is True
    auth = await addons.get_auth(session.id)
    assert auth.enabled
    assert auth.base_url is not None
    assert api.jwks_url == auth.jwks_url
    assert (await addons.enable_data_api(session.id)).url == api.url  # twice is fine
    with pytest.raises(Conflict, match="disable the Data API first"):
        await addons.disable_auth(session.id)

    alice = await sign_up(web, auth.base_url, "alice@example.com")
    bob = await sign_up(web, auth.base_url, "bob@example.com")
    await sql.run(
        session.id,
        """CREATE TABLE todos (
               id serial PRIMARY KEY,
               owner text NOT NULL DEFAULT auth.user_id(),
               title text NOT NULL);
           ALTER TABLE todos ENABLE ROW LEVEL SECURITY;
           CREATE POLICY own ON todos TO authenticated
               USING (owner = auth.user_id()) WITH CHECK (owner = auth.user_id())""",
    )
    assert refreshed[-1] is True
    await sql.run(session.id, "SELECT 1")
    assert len(refreshed) == 2  # a query is not DDL

    for person, titles in ((alice, ["a1", "a2"]), (bob, ["b1"])):
        async with rest(localplane_app, api.url, person["token"]) as client:
            await client.table("todos").insert([{"title": t} for t in titles]).execute()
    async with rest(localplane_app, api.url, alice["token"]) as client:
        mine = await client.table("todos").select("title,owner").order("id").execute()
        assert mine.data == [
            {"title": "a1", "owner": alice["user"]["id"]},
            {"title": "a2", "owner": alice["user"]["id"]},
        ]
        changed = await client.table("todos").update({"title": "x"}).eq("title", "b1").execute()
        assert changed.data == []  # bob's row is out of alice's reach
    async with rest(localplane_app, api.url, None) as anonymous:
        with pytest.raises(Exception, match="permission denied"):
            await anonymous.table("todos").select("*").execute()

    checkpoint = await checkpoint_service.create(session.id, label="todos")
    async with rest(localplane_app, api.url, bob["token"]) as client:
        await client.table("todos").insert({"title": "after checkpoint"}).execute()

    await checkpoint_service.restore(session.id, checkpoint.id)
    restored = await addons.get_data_api(session.id)
    assert restored.enabled
    assert restored.url is not None
    # The live database moved to a new branch; the URLs name the endpoint, which moved with it.
    assert restored.url == api.url
    auth_now = await addons.get_auth(session.id)
    assert auth_now.enabled
    assert auth_now.base_url is not None
    assert auth_now.base_url == auth.base_url
    assert await addons.auth_secret_key(session.id) == await addons.auth_secret_key(session.id)
    assert {u.email for u in await addons.list_auth_users(session.id)} == {
        "alice@example.com",
        "bob@example.com",
    }
    bob_token = await sign_in(web, auth_now.base_url, "bob@example.com")
    async with rest(localplane_app, restored.url, bob_token) as client:
        rows = await client.table("todos").select("title").execute()
        assert rows.data == [{"title": "b1"}]
    await sql.run(session.id, "ALTER TABLE todos ADD COLUMN done boolean DEFAULT false")
    assert refreshed[-1] is True  # on the new live branch
    assert (await addons.refresh_data_api(session.id)).url == restored.url

    disabled = await addons.disable_data_api(session.id)
    assert (disabled.enabled, disabled.url) == (False, None)
    async with rest(localplane_app, restored.url, bob_token) as client:
        with pytest.raises(Exception, match="not enabled"):
            await client.table("todos").select("*").execute()
    assert (await addons.disable_data_api(session.id)).enabled is False
    assert (await addons.disable_auth(session.id)).enabled is False
    assert await actions(meta_sessions, session.id, "data_api.") == [
        ("data_api.enable", "requested"),
        ("data_api.enable", "succeeded"),
        ("data_api.refresh", "succeeded"),
        ("data_api.disable", "requested"),
        ("data_api.disable", "succeeded"),
    ]


async def test_oauth_providers_are_added_listed_and_removed_without_showing_secrets(
    session_service: SessionService, addons: AddonService, user_id: uuid.UUID
) -> None:
    session = await session_service.create(user_id)
    with pytest.raises(Conflict, match="enable it first"):
        await addons.list_oauth_providers(session.id)
    await addons.enable_auth(session.id)
    assert await addons.list_oauth_providers(session.id) == []

    shared = await addons.add_oauth_provider(session.id, "google")
    assert (shared.id, shared.type, shared.client_id) == ("google", "shared", None)
    own = await addons.add_oauth_provider(
        session.id, "github", client_id="gh-client", client_secret="gh-secret-value"
    )
    assert (own.type, own.client_id) == ("standard", "gh-client")
    listed = await addons.list_oauth_providers(session.id)
    assert sorted(p.id for p in listed) == ["github", "google"]
    assert "gh-secret-value" not in repr(listed)
    with pytest.raises(Conflict, match="already set up"):
        await addons.add_oauth_provider(session.id, "google")

    await addons.delete_oauth_provider(session.id, "google")
    await addons.delete_oauth_provider(session.id, "google")  # gone already: fine
    assert [p.id for p in await addons.list_oauth_providers(session.id)] == ["github"]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda a, s: a.add_oauth_provider(s, "facebook"), "provider"),
        (lambda a, s: a.add_oauth_provider(s, "github", client_id="x"), "client_secret"),
        (lambda a, s: a.add_oauth_provider(s, "github", client_secret="x"), "client_id"),
        (
            lambda a, s: a.add_oauth_provider(s, "github", client_id=" ", client_secret="x"),
            "client_id",
        ),
        (lambda a, s: a.delete_oauth_provider(s, "myspace"), "provider"),
        (lambda a, s: a.list_auth_users(s, limit=0), "limit"),
        (lambda a, s: a.list_auth_users(s, limit=1001), "limit"),
        (lambda a, s: a.enable_data_api(s, add_default_grants="yes"), "add_default_grants"),
    ],
)
async def test_bad_input_names_the_field_and_changes_nothing(  # noqa: PLR0917
    session_service: SessionService,
    addons: AddonService,
    user_id: uuid.UUID,
    meta_sessions: async_sessionmaker[AsyncSession],
    call: Any,
    field: str,
) -> None:
    session = await session_service.create(user_id)
    with pytest.raises(InvalidInput) as refused:
        await call(addons, session.id)
    assert refused.value.field == field
    assert await addon_rows(meta_sessions, session.id) == {}
    assert await actions(meta_sessions, session.id, "auth") == []
    assert await actions(meta_sessions, session.id, "data_api") == []


async def test_a_refused_enable_is_recorded_and_a_retry_succeeds(  # noqa: PLR0917
    session_service: SessionService,
    addons: AddonService,
    meta_sessions: async_sessionmaker[AsyncSession],
    box: Secrets,
    locks: SessionLocks,
    user_id: uuid.UUID,
    localplane_app: Litestar,
) -> None:
    session = await session_service.create(user_id)
    refusing = failing_neon(
        localplane_app,
        lambda r: r.method == "POST" and r.url.path.endswith("/auth"),
        status=400,
    )
    async with refusing:
        with pytest.raises(ControlPlaneFailed):
            await AddonService(meta_sessions, refusing, box, locks=locks).enable_data_api(
                session.id
            )
    rows = await addon_rows(meta_sessions, session.id)
    assert rows[AddonKind.AUTH].status == AddonStatus.FAILED
    assert "injected failure" in (rows[AddonKind.AUTH].error or "")
    assert AddonKind.DATA_API not in rows  # never got that far
    failed = await addons.get_auth(session.id)
    assert (failed.enabled, failed.status) == (False, AddonStatus.FAILED)
    assert await actions(meta_sessions, session.id, "auth.") == [
        ("auth.enable", "requested"),
        ("auth.enable", "failed"),
    ]

    assert (await addons.enable_data_api(session.id)).enabled
    rows = await addon_rows(meta_sessions, session.id)
    assert rows[AddonKind.AUTH].status == rows[AddonKind.DATA_API].status == AddonStatus.ENABLED
    assert rows[AddonKind.AUTH].error is None


async def test_an_enable_whose_answer_was_lost_is_found_on_the_control_plane(
    session_service: SessionService,
    addons: AddonService,
    neon: NeonClient,
    meta_sessions: async_sessionmaker[AsyncSession],
    user_id: uuid.UUID,
) -> None:
    session = await session_service.create(user_id)
    async with meta_sessions() as db:
        row = await db.get(AgentSession, session.id)
        assert row is not None
        project_id, branch_id = row.project_id, row.live_branch_id
    assert project_id is not None
    assert branch_id is not None
    # As if agentdb died after Neon enabled it: the control plane has it, the meta DB not.
    await neon.enable_neon_auth(project_id, branch_id, database_name="app")
    auth = await addons.enable_auth(session.id)
    assert auth.enabled
    assert auth.base_url is not None
    assert await addons.auth_secret_key(session.id) is None  # Neon showed the keys only once


def test_ddl_is_recognized_by_command_tag_or_keyword() -> None:
    assert is_ddl("create table t (x int)", "CREATE TABLE")
    assert is_ddl("CREATE TABLE t (x int); INSERT INTO t VALUES (1)", "INSERT 0 1")
    assert is_ddl("grant select on t to authenticated", "GRANT")
    assert is_ddl("COMMENT ON TABLE t IS 'x'", "COMMENT")
    assert not is_ddl("SELECT * FROM todos", "SELECT 3")
    assert not is_ddl("INSERT INTO created_items VALUES (1)", "INSERT 0 1")
