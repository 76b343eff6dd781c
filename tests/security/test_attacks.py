"""An agent holding a session token is an untrusted SQL author. Each attack here comes in over
real HTTP with that token only, and each must fail with nothing changed: the role stays an
ordinary one, no other tenant's row or backend is seen, no file is read, agentdb keeps its
credentials, and nothing answers 500."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from conftest import Stack, Tenant, is_superuser, open_tenant, run_sql
from support import physical_names_sync

ROLE_ATTRIBUTES = (
    "select rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolinherit"
    " from pg_roles where rolname = current_user"
)

# The reproducer: a trigger on a table the plane's Neon Auth would write.
PRE_CREATED_NEON_AUTH = """
create schema neon_auth;
create table neon_auth.users_sync(raw_json jsonb not null, id text primary key, name text,
  email text, email_verified boolean not null default false, signed_in_at timestamptz,
  created_at timestamptz not null default now(), updated_at timestamptz,
  deleted_at timestamptz);
create function neon_auth.pwn() returns trigger language plpgsql as $f$
begin execute format($q$alter role %I superuser$q$, session_user); return new; end $f$;
create trigger pwn before insert on neon_auth.users_sync
  for each row execute function neon_auth.pwn();
"""

# Each must be refused by PostgreSQL (or agentdb) as the session's own role.
REFUSED = {
    "superuser": "alter role current_user superuser",
    "createrole": "alter role current_user createrole",
    "createdb": "alter role current_user createdb",
    "replication": "alter role current_user replication",
    "bypassrls": "alter role current_user bypassrls",
    "set role": "set role {superuser}",
    "set session authorization": "set session authorization {superuser}",
    "copy to program": "copy (select 1) to program 'id'",
    "copy from program": "create temp table t (x text); copy t from program 'id'",
    "copy from file": "create temp table t (x text); copy t from '/etc/passwd'",
    "pg_read_file": "select pg_read_file('/etc/passwd')",
    "pg_read_binary_file": "select pg_read_binary_file('/etc/hostname')",
    "pg_ls_dir": "select pg_ls_dir('.')",
    "pg_stat_file": "select pg_stat_file('postgresql.conf')",
    "lo_import": "select lo_import('/etc/passwd')",
    "lo_export": "select lo_export(lo_create(0), '/tmp/agentdb-pwned')",
    "dblink": "create extension dblink",
    "postgres_fdw": "create extension postgres_fdw",
    "file_fdw": "create extension file_fdw",
    "untrusted language": "create language plpython3u",
    "c function": "create function f() returns int language c as 'libc.so.6', 'getpid'",
    "internal function": "create function f(oid) returns text language internal as 'pg_read_file'",
    "alter system": "alter system set log_statement = 'all'",
    "event trigger": (
        "create function et() returns event_trigger language plpgsql as $$ begin end $$;"
        " create event trigger et on ddl_command_start execute function et()"
    ),
    "reload conf": "select pg_reload_conf()",
    "rotate log": "select pg_rotate_logfile()",
    "load library": "load 'auto_explain'",
    "grant on database": "grant connect on database postgres to public",
    "cluster settings": "set log_min_error_statement = 'debug5'",
    "temp file limit": "set temp_file_limit = -1",
    "session_preload": "alter role current_user set session_preload_libraries = 'auto_explain'",
}


def superuser_name(stack: Stack, tenant: Tenant) -> str:
    answer = run_sql(stack, tenant, "select rolname from pg_roles where rolsuper limit 1")
    assert answer.status_code == 200, answer.text
    return str(answer.json()["rows"][0][0])


def attributes(stack: Stack, tenant: Tenant) -> list[object]:
    answer = run_sql(stack, tenant, ROLE_ATTRIBUTES)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["rows"][0])


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_privileged_sql_is_refused(stack: Stack, attacker: Tenant, name: str) -> None:
    before = attributes(stack, attacker)
    sql = REFUSED[name].format(superuser=superuser_name(stack, attacker))
    answer = run_sql(stack, attacker, sql)
    assert answer.status_code == 422, (name, answer.status_code, answer.text)
    assert answer.headers["content-type"].startswith("application/problem+json")
    # 42501 insufficient privilege; 58P01/42704/0A000 the extension or language is not there;
    # 25001 ALTER SYSTEM cannot run in the one transaction every call is.
    assert answer.json()["sqlstate"] in {"42501", "58P01", "42704", "0A000", "25001"}, answer.text
    assert attributes(stack, attacker) == before
    assert before[:5] == [False, False, False, False, False]


def test_the_reproducer_fails_closed_and_sign_up_runs_nothing_of_the_tenant(
    stack: Stack,
) -> None:
    tenant = open_tenant(stack, "trigger@example.com")
    made = run_sql(stack, tenant, PRE_CREATED_NEON_AUTH)
    assert made.status_code == 200, made.text

    with stack.client(tenant.session_token) as http:
        enabled = http.post(f"/v1/sessions/{tenant.session_id}/auth")
        assert 400 <= enabled.status_code < 500, enabled.text
        assert "neon_auth" in enabled.text
    assert not is_superuser(stack, tenant)

    # With the squatted schema gone, Neon Auth comes up and an anonymous sign-up works, while
    # functions the tenant planted to shadow built-ins never run as anyone else.
    cleanup = run_sql(
        stack,
        tenant,
        """drop schema neon_auth cascade;
           create table public.calls (who text, fn text);
           grant insert on public.calls to public;
           create function public.lower(text) returns text language plpgsql as $f$
             begin insert into public.calls values (current_user, 'lower');
                   return pg_catalog.lower($1); end $f$;
           create function public.now() returns timestamptz language plpgsql as $f$
             begin insert into public.calls values (current_user, 'now');
                   return pg_catalog.now(); end $f$;
           create function public.gen_random_uuid() returns uuid language plpgsql as $f$
             begin insert into public.calls values (current_user, 'uuid');
                   return pg_catalog.gen_random_uuid(); end $f$;
           create function public.spy() returns setof text language plpgsql as $f$
             begin insert into public.calls values (current_user, 'view');
                   return next 'x'; end $f$;
           create view public.users_sync as select public.spy() as id;
           create view public.account as select public.spy() as user_id;
           create table public.pg_class (x int);
           alter role current_user set search_path = public, pg_catalog""",
    )
    assert cleanup.status_code == 200, cleanup.text
    with stack.client(tenant.session_token) as http:
        enabled = http.post(f"/v1/sessions/{tenant.session_id}/auth")
        assert enabled.status_code == 200, enabled.text
        base_url = enabled.json()["base_url"]
    stack.keep(enabled.json().get("secret_server_key"))
    with stack.client(None, base=base_url) as anonymous:
        signed_up = anonymous.post(
            "/sign-up/email",
            json={"email": "app-user@example.com", "password": "a-long-password", "name": "A"},
        )
        assert signed_up.status_code == 200, signed_up.text
        signed_in = anonymous.post(
            "/sign-in/email",
            json={"email": "APP-USER@example.com", "password": "a-long-password"},
        )
        assert signed_in.status_code == 200, signed_in.text
        stack.keep(signed_up.json()["token"], signed_in.json()["token"])
    assert not is_superuser(stack, tenant)
    calls = run_sql(stack, tenant, "select who, fn from public.calls")
    assert calls.json()["rows"] == [], calls.text

    # The plane's tables are not the tenant's to change.
    for sql in (
        (
            "create trigger pwn before insert on neon_auth.users_sync"
            " for each row execute function pg_catalog.suppress_redundant_updates_trigger()"
        ),
        "alter table neon_auth.users_sync owner to current_user",
        "select password_hash from neon_auth.account",
        "insert into neon_auth.users_sync (raw_json, id) values ('{}', 'x')",
    ):
        refused = run_sql(stack, tenant, sql)
        assert refused.status_code == 422, (sql, refused.text)
        assert refused.json()["sqlstate"] == "42501", (sql, refused.text)
    users = run_sql(stack, tenant, "select email from neon_auth.users_sync")
    assert users.json()["rows"] == [["app-user@example.com"]]


def test_a_squatted_auth_schema_stops_the_data_api(stack: Stack) -> None:
    tenant = open_tenant(stack, "squatter@example.com")
    made = run_sql(
        stack,
        tenant,
        """create schema auth;
           create function auth.user_id() returns text language plpgsql as $f$
             begin execute format('alter role %I superuser', session_user); return 'x'; end $f$;
           create function auth.session() returns jsonb language sql as $f$ select '{}'::jsonb $f$
        """,
    )
    assert made.status_code == 200, made.text
    with stack.client(tenant.session_token) as http:
        enabled = http.post(f"/v1/sessions/{tenant.session_id}/data-api", json={})
        assert 400 <= enabled.status_code < 500, enabled.text
        assert "auth" in enabled.text
    assert not is_superuser(stack, tenant)


def test_another_tenants_backends_and_counters_stay_hidden(
    stack: Stack, attacker: Tenant, victim: Tenant
) -> None:
    sleeper = threading.Thread(target=run_sql, args=(stack, victim, "select pg_sleep(4)"))
    sleeper.start()
    try:
        time.sleep(1)
        for sql in (
            (
                "select count(*) from pg_stat_activity where datname is distinct from"
                " current_database() and backend_type = 'client backend'"
            ),
            (
                "select count(*) from pg_stat_database where datname <> current_database()"
                " and xact_commit > 0"
            ),
            (
                "select count(*) from pg_locks where database is not null and database <>"
                " (select oid from pg_database where datname = current_database())"
            ),
        ):
            seen = run_sql(stack, attacker, sql)
            if seen.status_code == 422:
                assert seen.json()["sqlstate"] == "42501", seen.text
            else:
                assert seen.status_code == 200, seen.text
                assert seen.json()["rows"] == [[0]], (sql, seen.text)
    finally:
        sleeper.join()
    # No way into the victim's database: no dblink, no CONNECT, no superuser.
    read = run_sql(stack, attacker, "select * from secrets")
    assert read.status_code == 422
    assert read.json()["sqlstate"] == "42P01"


def test_a_password_changed_from_sql_is_taken_back(stack: Stack) -> None:
    tenant = open_tenant(stack, "locksmith@example.com")
    changed = run_sql(stack, tenant, "alter role current_user password 'agent-chosen-pw-1'")
    assert changed.status_code == 200, changed.text
    # agentdb still reaches the database, with a password of its own.
    assert run_sql(stack, tenant, "select 1").json()["rows"] == [[1]]
    with stack.client(tenant.user_token) as http:
        session = http.get(f"/v1/sessions/{tenant.session_id}").json()
        events = http.get(f"/v1/sessions/{tenant.session_id}/events").json()
    fresh = session["connection_uri"]
    stack.keep(fresh)
    assert fresh != tenant.connection_uri
    assert "agent-chosen-pw-1" not in fresh
    with psycopg.connect(fresh, connect_timeout=10) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    actions = [event["action"] for event in events["events"]]
    assert "session.credentials_reset" in actions


def test_role_settings_the_agent_persists_do_not_lift_agentdbs_limits(stack: Stack) -> None:
    tenant = open_tenant(stack, "settings@example.com")
    persisted = run_sql(
        stack,
        tenant,
        "alter role current_user set statement_timeout = 0;"
        " alter role current_user set idle_in_transaction_session_timeout = 0",
    )
    assert persisted.status_code == 200, persisted.text
    with stack.client(tenant.session_token) as http:
        slow = http.post(
            f"/v1/sessions/{tenant.session_id}/sql",
            json={"sql": "select pg_sleep(10)", "timeout_seconds": 1},
        )
    assert slow.status_code == 422, slow.text
    assert slow.json()["sqlstate"] == "57014"


def test_deeply_nested_results_and_inputs_answer_without_a_500(
    stack: Stack, attacker: Tenant
) -> None:
    deep = run_sql(stack, attacker, "select (repeat('[',3000)||repeat(']',3000))::jsonb")
    assert deep.status_code == 200, deep.text
    assert isinstance(deep.json()["rows"][0][0], str)
    # Written by hand: Python's own encoder cannot nest this deep either.
    nested = "[" * 1000 + "1" + "]" * 1000
    with stack.client(attacker.session_token) as http:
        answer = http.post(
            f"/v1/sessions/{attacker.session_id}/sql",
            content=f'{{"sql": "select $1::jsonb", "params": [{{"a": {nested}}}]}}',
            headers={"Content-Type": "application/json"},
        )
        assert 400 <= answer.status_code < 500, answer.text
        checkpoint = http.post(
            f"/v1/sessions/{attacker.session_id}/checkpoints",
            json={"label": "nul", "metadata": {"k": "a\u0000b"}},
        )
        assert 400 <= checkpoint.status_code < 500, checkpoint.text
        listed = http.get(f"/v1/sessions/{attacker.session_id}/checkpoints").json()
        assert all(c.get("label") != "nul" for c in listed["checkpoints"])


def test_no_other_role_can_be_taken_on(stack: Stack, attacker: Tenant, victim: Tenant) -> None:
    """`SET ROLE` and `SET SESSION AUTHORIZATION` to every role the catalog shows that is not
    the attacker's: the plane's service roles (which own Neon Auth's tables), other tenants'
    roles, the superuser, PostgreSQL's predefined roles."""
    with stack.client(attacker.user_token) as user:
        # Neon Auth on: the project gets its service role.
        enabled = user.post(f"/v1/sessions/{attacker.session_id}/auth", json={})
        assert enabled.status_code in {200, 201}, enabled.text
    listed = run_sql(
        stack,
        attacker,
        # Its own project's group role is the attacker's to take on (it holds only the
        # project's database privileges); every role it is not a member of is someone else's.
        "select rolname from pg_roles where not pg_has_role(current_user, oid, 'MEMBER')"
        " order by 1",
    )
    assert listed.status_code == 200, listed.text
    others = [str(row[0]) for row in listed.json()["rows"]]
    victim_role, _ = physical_names_sync(victim.connection_uri)
    assert victim_role in others
    assert any(name.endswith("_service") for name in others), others
    for name in others:
        for sql in (f'set role "{name}"', f'set session authorization "{name}"'):
            answer = run_sql(stack, attacker, sql)
            assert answer.status_code == 422, (sql, answer.text)
            assert answer.json()["sqlstate"] == "42501", (sql, answer.text)


def test_the_tenants_credentials_open_no_other_database(
    stack: Stack, attacker: Tenant, victim: Tenant
) -> None:
    """The attacker's own role and password (as a user token sees them), pointed at the victim's
    database and at the cluster's own: refused, and no row of the victim's is read."""
    _, theirs = physical_names_sync(victim.connection_uri)
    for dbname in (theirs, "postgres", "template1"):
        target = psycopg.conninfo.make_conninfo(attacker.connection_uri, dbname=dbname)
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(target, connect_timeout=10).close()
        # The proxy looks names up on the attacker's endpoint only; PostgreSQL would refuse
        # CONNECT behind it (tests/services/test_sql.py checks that login straight to it).
        assert "does not exist" in str(refused.value), str(refused.value)
