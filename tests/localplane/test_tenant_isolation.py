"""Tenant isolation on the local plane: what a tenant (the database owner, running any SQL) sets
up before the plane works in its database never runs with the plane's rights, the plane's own
schemas cannot be pre-empted, other tenants' activity stays out of sight, and the server log
carries no statement text."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import pytest_asyncio
from contract.openapi import NeonSpec
from litestar import Litestar
from support import client_for

from agentdb.pg import ServerInfo

from .helpers import create_project, direct, execute, fetch, physical, wait_ops

# The reproducer: a users_sync whose trigger makes the inserting session superuser.
PWN_USERS_SYNC = """
create schema neon_auth;
create table neon_auth.users_sync(raw_json jsonb not null, id text primary key, name text,
  email text, email_verified boolean not null default false, signed_in_at timestamptz,
  created_at timestamptz not null default now(), updated_at timestamptz, deleted_at timestamptz);
create function neon_auth.pwn() returns trigger language plpgsql as $f$
begin execute format($q$alter role %I superuser$q$, session_user); return new; end $f$;
create trigger pwn before insert on neon_auth.users_sync
  for each row execute function neon_auth.pwn();
"""

# Records who runs the tenant's code; anyone may insert, so any caller leaves a trace.
SPY = """
create table public.seen (current_name text, session_name text, what text);
grant insert on public.seen to public;
create function public.spy(what text) returns void language plpgsql security invoker as $f$
begin
  insert into public.seen values (current_user, session_user, what);
  begin execute format('alter role %I superuser', session_user);
  exception when others then null; end;
end $f$;
"""

# Stand-ins for built-ins the plane's statements use, and look-alikes of the plane's tables.
SHADOWS = """
create function public.lower(text) returns text language plpgsql as $f$
begin perform public.spy('lower'); return pg_catalog.lower($1); end $f$;
create function public.now() returns timestamptz language plpgsql as $f$
begin perform public.spy('now'); return pg_catalog.now(); end $f$;
create function public.name_nomatch(name, name) returns boolean language plpgsql as $f$
begin perform public.spy('!~'); return $1::text !~ $2::text; end $f$;
create operator public.!~ (leftarg = name, rightarg = name, function = public.name_nomatch);
create function public.spy_trigger() returns trigger language plpgsql as $f$
begin perform public.spy(tg_table_name); return new; end $f$;
create table public.users_sync (id text, email text);
create table public.account (user_id text, password_hash text);
create trigger spy before insert or update on public.users_sync
  for each row execute function public.spy_trigger();
create trigger spy before insert or update on public.account
  for each row execute function public.spy_trigger();
"""


@pytest_asyncio.fixture(loop_scope="session")
async def raw(localplane_app: Litestar, neon_spec: NeonSpec) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(localplane_app, neon_spec, validate_requests=False) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def web(localplane_app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=localplane_app)) as client:
        yield client


async def _project(neon_http: httpx.AsyncClient) -> tuple[str, str, str, str]:
    created = await create_project(neon_http)
    uri = created["connection_uris"][0]["connection_uri"]
    role, _ = await physical(uri)
    return created["project"]["id"], created["branch"]["id"], uri, role


async def _is_superuser(pg_server: ServerInfo, role: str) -> bool:
    rows = await fetch(pg_server.dsn(), "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,))
    assert rows, role
    return bool(rows[0][0])


async def _sign_up(web: httpx.AsyncClient, base_url: str) -> dict[str, Any]:
    resp = await web.post(
        f"{base_url}/sign-up/email",
        json={"email": f"{uuid.uuid4().hex[:8]}@example.com", "password": "correct horse 1"},
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def test_a_pre_created_users_sync_with_a_superuser_trigger_is_refused(
    neon_http: httpx.AsyncClient,
    raw: httpx.AsyncClient,
    web: httpx.AsyncClient,
    pg_server: ServerInfo,
) -> None:
    project_id, branch_id, uri, role = await _project(neon_http)
    await execute(uri, PWN_USERS_SYNC)
    path = f"/projects/{project_id}/branches/{branch_id}/auth"

    refused = await raw.post(path, json={"auth_provider": "better_auth"})
    assert refused.status_code == 409, refused.text
    message = refused.json()["message"]
    assert "schema neon_auth already exists and is owned by" in message
    assert role in message
    assert "drop or rename it" in message
    assert (await raw.get(path)).status_code == 404  # nothing was enabled
    assert not await _is_superuser(pg_server, role)

    # Once the tenant's schema is gone, the plane's own one is made and sign-up is harmless.
    await execute(uri, "drop schema neon_auth cascade")
    enabled = await raw.post(path, json={"auth_provider": "better_auth"})
    assert enabled.status_code == 201, enabled.text
    await _sign_up(web, enabled.json()["base_url"])
    assert not await _is_superuser(pg_server, role)
    owners = await fetch(
        pg_server.dsn(await role_db(uri)),
        "SELECT n.nspowner::regrole::text, c.relowner::regrole::text FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'neon_auth' AND c.relname = 'users_sync'",
    )
    assert len(owners) == 1
    assert owners[0][0] == owners[0][1]
    assert owners[0][0] == f"lpa_{role.rsplit('_', 1)[-1]}_service"

    # The tenant cannot take over the plane's tables afterwards either.
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        for statement in (
            (
                "create trigger pwn before insert on neon_auth.users_sync"
                " for each row execute function pg_catalog.suppress_redundant_updates_trigger()"
            ),
            "create table neon_auth.extra (n int)",
            "select * from neon_auth.account",
            f"set role {owners[0][0]}",
            "alter table neon_auth.users_sync enable row level security",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(statement)
        cur = await conn.execute("select count(*) from neon_auth.users_sync")
        assert await cur.fetchone() == (1,)


async def role_db(uri: str) -> str:
    """The database behind `uri` inside the cluster."""
    _, database = await physical(uri)
    return database


async def test_a_schema_or_object_the_tenant_took_first_is_refused_for_every_add_on(
    neon_http: httpx.AsyncClient, raw: httpx.AsyncClient, pg_server: ServerInfo
) -> None:
    project_id, branch_id, uri, role = await _project(neon_http)
    await execute(
        uri,
        "create schema auth",
        "create function auth.user_id() returns text language plpgsql as $f$ begin"
        " execute format('alter role %I superuser', session_user); return null; end $f$",
    )
    data_api = f"/projects/{project_id}/branches/{branch_id}/data-api/neondb"
    refused = await raw.post(data_api, json={"auth_provider": "neon_auth"})
    assert refused.status_code == 409, refused.text
    assert "schema auth already exists and is owned by" in refused.json()["message"]
    assert (await raw.get(data_api)).status_code == 404
    assert not await _is_superuser(pg_server, role)

    # Without the plane's `auth` schema the tenant's own one is the tenant's business.
    skipped = await raw.post(
        data_api, json={"auth_provider": "neon_auth", "skip_auth_schema": True}
    )
    assert skipped.status_code == 201, skipped.text
    status = await raw.get(data_api)
    assert status.status_code == 200, status.text
    assert not await _is_superuser(pg_server, role)

    # An empty neon_auth schema of the tenant's is refused just the same.
    await execute(uri, "create schema neon_auth")
    auth = await raw.post(
        f"/projects/{project_id}/branches/{branch_id}/auth", json={"auth_provider": "better_auth"}
    )
    assert auth.status_code == 409, auth.text
    assert "schema neon_auth" in auth.json()["message"]


async def test_nothing_of_the_tenant_runs_during_set_up_sign_up_and_sign_in(
    neon_http: httpx.AsyncClient,
    raw: httpx.AsyncClient,
    web: httpx.AsyncClient,
    pg_server: ServerInfo,
) -> None:
    project_id, branch_id, uri, role = await _project(neon_http)
    await execute(
        uri,
        SPY,
        SHADOWS,
        # The owner's own settings follow it everywhere it logs in; never into the plane's.
        "alter role current_user set search_path = public, pg_catalog",
    )
    # The tenant's spy works: it sees its own calls.
    await execute(uri, "select public.lower('X')", "delete from public.seen")

    base = f"/projects/{project_id}/branches/{branch_id}"
    enabled = await raw.post(f"{base}/auth", json={"auth_provider": "better_auth"})
    assert enabled.status_code == 201, enabled.text
    base_url = enabled.json()["base_url"]
    user = await _sign_up(web, base_url)
    signed_in = await web.post(
        f"{base_url}/sign-in/email",
        json={"email": user["user"]["email"], "password": "correct horse 1"},
    )
    assert signed_in.status_code == 200, signed_in.text
    wrong = await web.post(
        f"{base_url}/sign-in/email", json={"email": user["user"]["email"], "password": "wrong one!"}
    )
    assert wrong.status_code == 401
    created = await raw.post(
        f"{base}/data-api/neondb", json={"auth_provider": "neon_auth", "add_default_grants": True}
    )
    assert created.status_code == 201, created.text
    described = await raw.get(f"{base}/data-api/neondb")
    assert described.status_code == 200, described.text
    assert "public" in described.json()["available_schemas"]
    patched = await raw.patch(f"{base}/data-api/neondb", json={"settings": {"db_max_rows": 5}})
    assert patched.is_success, patched.text
    disabled = await raw.request("DELETE", f"{base}/auth", json={"delete_data": True})
    assert disabled.is_success, disabled.text

    assert await fetch(uri, "select * from public.seen") == []
    assert await fetch(uri, "select count(*) from public.users_sync") == [(0,)]
    assert not await _is_superuser(pg_server, role)
    # The plane's service role is an ordinary role, member of no role of the tenant's.
    name = f"lpa_{role.rsplit('_', 1)[-1]}_service"
    service = await fetch(
        pg_server.dsn(),
        "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolinherit"
        " FROM pg_roles WHERE rolname = %s",
        (name,),
    )
    assert len(service) == 1, service
    assert service[0][1:] == (False, False, False, False, False)
    can_become = await fetch(
        uri, "select pg_has_role(current_user, %s, 'MEMBER')", (service[0][0],)
    )
    assert can_become == [(False,)]


async def test_a_tenant_sees_no_other_tenants_activity(
    neon_http: httpx.AsyncClient, raw: httpx.AsyncClient, pg_server: ServerInfo
) -> None:
    _, _, uri_a, _ = await _project(neon_http)
    project_b, branch_b, uri_b, _ = await _project(neon_http)
    db_b = await role_db(uri_b)
    async with (
        await psycopg.AsyncConnection.connect(uri_b, autocommit=True) as busy_b,
        await psycopg.AsyncConnection.connect(uri_a, autocommit=True) as a,
    ):
        await busy_b.execute("select 'tenant b is here'")
        oid_b = (
            await fetch(pg_server.dsn(), "select oid from pg_database where datname = %s", (db_b,))
        )[0][0]
        for query, params in (
            ("select pid, query from pg_stat_activity", ()),
            ("select * from pg_stat_get_activity(null)", ()),
            ("select * from pg_stat_database", ()),
            ("select * from pg_stat_database_conflicts", ()),
            ("select pg_stat_get_db_xact_commit(%s)", (oid_b,)),
            ("select pg_stat_get_db_numbackends(%s)", (oid_b,)),
            ("select * from pg_locks", ()),
            ("select * from pg_prepared_xacts", ()),
            ("select * from pg_stat_ssl", ()),
            ("select * from pg_stat_progress_vacuum", ()),
            ("select pg_blocking_pids(pg_backend_pid())", ()),
            ("select pg_stat_get_backend_idset()", ()),
            ("select pg_tablespace_size('pg_default')", ()),
            ("select pg_database_size(%s)", (db_b,)),
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await a.execute(query, params)
        # What a shared cluster cannot hide (listed in docs/SECURITY.md): names.
        cur = await a.execute("select datname from pg_database where datname = %s", (db_b,))
        assert await cur.fetchone() == (db_b,)

    # A branch's database (copied from the project's) keeps the same hygiene.
    branch = await raw.post(
        f"/projects/{project_b}/branches", json={"endpoints": [{"type": "read_write"}]}
    )
    assert branch.status_code == 201, branch.text
    await wait_ops(raw, project_b, branch.json()["operations"])
    branch_uri = branch.json()["connection_uris"][0]["connection_uri"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await fetch(branch_uri, "select * from pg_stat_activity")
    assert branch_b != branch.json()["branch"]["id"]


async def test_hygiene_is_restored_in_a_database_that_lost_it(
    neon_http: httpx.AsyncClient, localplane_app: Litestar, pg_server: ServerInfo
) -> None:
    """What the plane does at start for databases made before catalog hygiene existed."""
    _, _, uri, _ = await _project(neon_http)
    db = await role_db(uri)
    await execute(
        pg_server.dsn(db),
        "grant select on pg_catalog.pg_stat_activity to public",
        "grant execute on function pg_catalog.pg_stat_get_activity(integer) to public",
    )
    assert await fetch(uri, "select count(*) >= 1 from pg_stat_activity") == [(True,)]
    await localplane_app.state.plane._engine.hide_other_tenants(db)
    await localplane_app.state.plane._engine.hide_other_tenants(db)  # idempotent
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await fetch(uri, "select * from pg_stat_activity")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await fetch(uri, "select * from pg_stat_get_activity(null)")


async def test_the_server_log_carries_no_statement_text_or_values(
    neon_http: httpx.AsyncClient, pg_server: ServerInfo, data_dir: Path
) -> None:
    log_file = data_dir / "pg" / "postgres.log"
    if not pg_server.embedded or not log_file.is_file():
        pytest.skip("the suite runs against an external server, whose log agentdb does not own")
    _, _, uri, _ = await _project(neon_http)
    marker = f"marker{uuid.uuid4().hex}"
    before = log_file.stat().st_size
    async with await psycopg.AsyncConnection.connect(uri, autocommit=True) as conn:
        await conn.execute(f"create table t_{marker} (k text primary key)")
        await conn.execute(f"insert into t_{marker} values ('{marker}')")
        for failing in (
            f"select '{marker}'::int",
            f"select * from missing_{marker}",
            f"insert into t_{marker} values ('{marker}')",
            f"do $$ begin raise warning '{marker}'; raise exception '{marker}'; end $$",
            f"selct '{marker}'",
        ):
            with pytest.raises(psycopg.Error):
                await conn.execute(failing)
    # A line written after the tenant's errors: the log is read past them (writes to it are
    # synchronous, so whatever the errors logged is already there).
    barrier = f"barrier{uuid.uuid4().hex}"
    await execute(pg_server.dsn(), f"do $$ begin raise log '{barrier}'; end $$")
    with log_file.open("rb") as log:
        log.seek(before)
        written = log.read().decode("utf-8", errors="replace")
    assert barrier in written
    assert marker not in written
    settings = dict(
        await fetch(
            pg_server.dsn(),
            "select name, setting from pg_settings where name in"
            " ('log_min_error_statement', 'log_error_verbosity', 'log_statement')",
        )
    )
    assert settings == {
        "log_min_error_statement": "panic",
        "log_error_verbosity": "terse",
        "log_statement": "none",
    }


async def test_a_neon_auth_schema_an_earlier_version_made_as_superuser_is_handed_over(
    neon_http: httpx.AsyncClient,
    raw: httpx.AsyncClient,
    web: httpx.AsyncClient,
    pg_server: ServerInfo,
) -> None:
    project_id, branch_id, uri, role = await _project(neon_http)
    enabled = await raw.post(
        f"/projects/{project_id}/branches/{branch_id}/auth", json={"auth_provider": "better_auth"}
    )
    assert enabled.status_code == 201, enabled.text
    superuser = pg_server.superuser
    await execute(
        pg_server.dsn(await role_db(uri)),
        f'ALTER SCHEMA neon_auth OWNER TO "{superuser}"',
        f'ALTER TABLE neon_auth.users_sync OWNER TO "{superuser}"',
        f'ALTER TABLE neon_auth.account OWNER TO "{superuser}"',
    )
    await _sign_up(web, enabled.json()["base_url"])
    service = f"lpa_{role.rsplit('_', 1)[-1]}_service"
    owners = await fetch(
        pg_server.dsn(await role_db(uri)),
        "SELECT DISTINCT relowner::regrole::text FROM pg_class"
        " WHERE relnamespace = 'neon_auth'::regnamespace"
        " UNION SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'neon_auth'",
    )
    assert owners == [(service,)]
    assert await fetch(uri, "select count(*) from neon_auth.users_sync") == [(1,)]

    # A schema holding anything of the tenant's is never handed over: sign-up is refused.
    await execute(pg_server.dsn(await role_db(uri)), f'ALTER SCHEMA neon_auth OWNER TO "{role}"')
    refused = await web.post(
        f"{enabled.json()['base_url']}/sign-up/email",
        json={"email": "late@example.com", "password": "correct horse 1"},
    )
    assert refused.status_code == 409, refused.text
    assert "schema neon_auth is owned by" in refused.text
    assert not await _is_superuser(pg_server, role)


async def test_a_new_copy_takes_no_connection_until_opened_to_its_project(
    neon_http: httpx.AsyncClient, plane: Any, pg_server: ServerInfo
) -> None:
    """`CREATE DATABASE` gives PUBLIC CONNECT: until the plane revoked it, any tenant's role
    could reach a copy of another's data. Every copy is made closed and opened by the grant."""
    victim = await create_project(neon_http)
    victim_uri = victim["connection_uris"][0]["connection_uri"]
    await execute(victim_uri, "CREATE TABLE secret (s text)", "INSERT INTO secret VALUES ('x')")
    _, victim_db = await physical(victim_uri)
    other = await create_project(neon_http)
    other_uri = other["connection_uris"][0]["connection_uri"]
    target = f"lps_probe_{uuid.uuid4().hex[:10]}"
    engine = plane._engine  # the copy's first instant, before any grant
    async with engine._conn() as conn:
        await engine._create_from_template(conn, target, victim_db)
    try:
        rows = await fetch(
            pg_server.conninfo("postgres"),
            "SELECT datallowconn FROM pg_database WHERE datname = %s",
            (target,),
        )
        assert rows == [(False,)]
        other_dsn = psycopg.conninfo.make_conninfo(
            await direct(other_uri, pg_server), dbname=target
        )
        with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
            await fetch(other_dsn, "SELECT 1")
    finally:
        await engine.discard_database(target)
