"""The extension and owner statements generated apps start with, run as a session's owner
through agentdb's SQL and through the session's connection string: each succeeds, or fails
with an error that says what to do instead (through agentdb, a hint naming the API and the
agent tool; through the connection string, PostgreSQL's own error with the same SQLSTATE).
Also the roles API that stands in for CREATE ROLE, and the extensions listing."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import psycopg
import pytest

from .conftest import Tenant, assert_problem, bearer, make_tenant, sql_runner


@dataclass(frozen=True)
class Refused:
    """A statement a session runs another way: its SQLSTATE, and a word agentdb's hint says."""

    sqlstate: str
    instead: str
    #: Through the connection string, when it differs (agentdb runs a call in a transaction).
    direct_sqlstate: str | None = None


OK = None
# The 30 most common, in the order a generated migration writes them.
STATEMENTS: list[tuple[str, Refused | None]] = [
    ("CREATE EXTENSION IF NOT EXISTS vector", OK),
    ("CREATE EXTENSION IF NOT EXISTS pg_trgm", OK),
    ('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"', OK),
    ("CREATE EXTENSION IF NOT EXISTS pgcrypto", OK),
    ("CREATE EXTENSION IF NOT EXISTS citext", OK),
    ("CREATE EXTENSION IF NOT EXISTS hstore", OK),
    ("CREATE EXTENSION IF NOT EXISTS btree_gist", OK),
    ("CREATE EXTENSION IF NOT EXISTS btree_gin", OK),
    ("CREATE EXTENSION IF NOT EXISTS unaccent", OK),
    ("CREATE EXTENSION IF NOT EXISTS fuzzystrmatch", OK),
    ("CREATE EXTENSION IF NOT EXISTS ltree", OK),
    ("CREATE EXTENSION IF NOT EXISTS vector WITH SCHEMA public", OK),
    ("CREATE EXTENSION IF NOT EXISTS plpgsql", OK),
    ("SELECT uuid_generate_v4(), gen_random_uuid(), digest('x', 'sha256')", OK),
    ("CREATE SCHEMA IF NOT EXISTS app", OK),
    ("GRANT USAGE ON SCHEMA app TO PUBLIC", OK),
    ("GRANT ALL ON SCHEMA public TO CURRENT_USER", OK),
    ("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO PUBLIC", OK),
    ("REVOKE CREATE ON SCHEMA public FROM PUBLIC", OK),
    (
        (
            "CREATE TABLE IF NOT EXISTS app.docs (id uuid PRIMARY KEY DEFAULT uuid_generate_v4(), "
            "title citext, embedding vector(3))"
        ),
        OK,
    ),
    ("CREATE INDEX IF NOT EXISTS docs_title ON app.docs USING gin (title gin_trgm_ops)", OK),
    (
        (
            "CREATE INDEX IF NOT EXISTS docs_embedding ON app.docs "
            "USING hnsw (embedding vector_cosine_ops)"
        ),
        OK,
    ),
    ("COMMENT ON EXTENSION vector IS 'embeddings'", OK),
    ("DROP EXTENSION IF EXISTS hstore", OK),
    ("CREATE ROLE app_user LOGIN PASSWORD 'app-password-1'", Refused("42501", "create_role")),
    ("CREATE USER app_reader WITH PASSWORD 'app-password-2'", Refused("42501", "create_role")),
    ("CREATE DATABASE app_test", Refused("25001", "create_branch", direct_sqlstate="42501")),
    (
        "GRANT ALL PRIVILEGES ON DATABASE neondb TO CURRENT_USER",
        Refused("3D000", "current_database"),
    ),
    ("ALTER DATABASE neondb SET timezone TO 'UTC'", Refused("3D000", "current_database")),
    ("CREATE EXTENSION IF NOT EXISTS postgis", Refused("0A000", "list_extensions")),
    ("CREATE EXTENSION IF NOT EXISTS dblink", Refused("42501", "list_extensions")),
    ("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", Refused("42501", "list_extensions")),
]


async def test_the_statements_generated_apps_start_with(http: httpx.AsyncClient) -> None:
    through_agentdb = await make_tenant(http, "gen-api")
    through_uri = await make_tenant(http, "gen-uri")
    for statement, refused in STATEMENTS:
        answer = await http.post(
            f"/v1/sessions/{through_agentdb.session_id}/sql",
            json={"sql": statement},
            headers=through_agentdb.session_token,
        )
        if refused is None:
            assert answer.status_code == 200, (statement, answer.text)
        else:
            body = assert_problem(answer, 422)
            assert body["sqlstate"] == refused.sqlstate, (statement, body)
            assert refused.instead in (body["hint"] or ""), (statement, body)

    async with await psycopg.AsyncConnection.connect(
        through_uri.session["connection_uri"], autocommit=True
    ) as conn:
        for statement, refused in STATEMENTS:
            if refused is None:
                await conn.execute(statement)
                continue
            with pytest.raises(psycopg.Error) as error:
                await conn.execute(statement)
            expected = refused.direct_sqlstate or refused.sqlstate
            assert error.value.sqlstate == expected, (statement, error.value)

    # Both sessions ended with the same extensions.
    listed = []
    for tenant in (through_agentdb, through_uri):
        run = sql_runner(http, tenant.session_id, tenant.session_token)
        listed.append(await run("SELECT extname FROM pg_extension ORDER BY 1"))
    assert listed[0] == listed[1]
    assert ["hstore"] not in listed[0]
    assert ["uuid-ossp"] in listed[0]


async def test_a_role_made_through_the_api_logs_in_and_reads_what_it_is_granted(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    run = sql_runner(http, tenant.session_id, tenant.session_token)
    await run("CREATE TABLE notes (body text); INSERT INTO notes VALUES ('hello')")
    roles = f"/v1/sessions/{tenant.session_id}/roles"

    # An agent makes the role; its password goes to the platform only.
    by_agent = await http.post(roles, json={"name": "app_reader"}, headers=tenant.session_token)
    assert by_agent.status_code == 201, by_agent.text
    reader = by_agent.json()
    assert reader["name"] == "app_reader"
    assert reader["owner"] is False
    assert reader["connection_uri"] is None
    by_user = await http.post(roles, json={"name": "app_writer"}, headers=tenant.user_token)
    assert by_user.status_code == 201, by_user.text
    writer = by_user.json()
    assert writer["connection_uri"]

    listed = (await http.get(roles, headers=tenant.session_token)).json()["roles"]
    own = listed[0]
    assert own["owner"] is True
    assert [r["name"] for r in listed[1:]] == ["app_reader", "app_writer"]
    assert own["sql_name"] == (await run("SELECT current_user"))[0][0]

    async with await psycopg.AsyncConnection.connect(
        writer["connection_uri"], autocommit=True
    ) as conn:
        cur = await conn.execute("SELECT current_user")
        assert await cur.fetchone() == (writer["sql_name"],)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT body FROM notes")
        # The owner grants by the role's SQL name, through agentdb's SQL.
        await run(f"GRANT SELECT ON notes TO {writer['sql_name']}")
        cur = await conn.execute("SELECT body FROM notes")
        assert await cur.fetchall() == [("hello",)]
        # It is no superuser, and reaches no other role's powers.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("CREATE ROLE sneaky")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute(f"SET ROLE {own['sql_name']}")

    # Governed like the session's own role: the same connection limit and role defaults.
    limits = await run(
        "SELECT rolname = current_user, rolconnlimit, rolconfig FROM pg_roles "
        f"WHERE rolname IN (current_user, '{writer['sql_name']}') ORDER BY 1"
    )
    assert [row[1:] for row in limits] == [limits[0][1:], limits[0][1:]]
    assert limits[0][1] > 0

    # The agent's tool-level answers never carry the URI, and the SQL error points at the API.
    refused = await http.post(
        f"/v1/sessions/{tenant.session_id}/sql",
        json={"sql": "CREATE ROLE app_user LOGIN"},
        headers=tenant.session_token,
    )
    assert "/roles" in assert_problem(refused, 422)["hint"]


async def test_bad_role_requests_are_refused_naming_the_field(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    roles = f"/v1/sessions/{tenant.session_id}/roles"
    token = tenant.session_token
    for name in ["App-User", "1st", "", "x" * 41, "robert'); drop table t;--", 7, None]:
        answer = await http.post(roles, json={"name": name}, headers=token)
        assert_problem(answer, 400, "name")
    reserved = ["pg_monitor", "neon_superuser", "neondb_owner", "authenticator", "postgres"]
    for name in reserved:
        answer = await http.post(roles, json={"name": name}, headers=token)
        assert_problem(answer, 400, "name")
    assert_problem(await http.post(roles, json={}, headers=token), 400, "name")
    assert_problem(await http.post(roles, json={"name": "a", "extra": 1}, headers=token), 400)
    made = await http.post(roles, json={"name": "twice"}, headers=token)
    assert made.status_code == 201, made.text
    assert_problem(await http.post(roles, json={"name": "twice"}, headers=token), 409)
    listed = (await http.get(roles, headers=token)).json()["roles"]
    own = listed[0]["name"]
    assert_problem(await http.post(roles, json={"name": own}, headers=token), 409)
    # Another user's token reaches neither the session's roles nor its extensions.
    stranger = await make_tenant(http, "stranger")
    for answer in [
        await http.post(roles, json={"name": "mine"}, headers=stranger.session_token),
        await http.get(roles, headers=stranger.user_token),
        await http.get(f"/v1/sessions/{tenant.session_id}/extensions", headers=bearer("nope")),
    ]:
        assert answer.status_code in {401, 403, 404}, answer.text
    names = [r["name"] for r in (await http.get(roles, headers=token)).json()["roles"]]
    assert names == [own, "twice"]


async def test_a_session_has_a_bounded_number_of_roles(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    roles = f"/v1/sessions/{tenant.session_id}/roles"
    for n in range(10):
        made = await http.post(roles, json={"name": f"r{n}"}, headers=tenant.session_token)
        assert made.status_code == 201, made.text
    body = assert_problem(
        await http.post(roles, json={"name": "r10"}, headers=tenant.session_token), 409
    )
    assert "most" in body["detail"]


async def test_the_extensions_listing_says_what_is_installed_and_installable(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    run = sql_runner(http, tenant.session_id, tenant.session_token)
    await run("CREATE EXTENSION IF NOT EXISTS citext")
    answer = await http.get(
        f"/v1/sessions/{tenant.session_id}/extensions", headers=tenant.session_token
    )
    assert answer.status_code == 200, answer.text
    found = {e["name"]: e for e in answer.json()["extensions"]}
    assert found["citext"]["installed_version"]
    assert found["vector"]["installable"] is True
    assert found["vector"]["installed_version"] is None
    assert found["uuid-ossp"]["installable"] is True
    for untrusted in ["dblink", "postgres_fdw", "file_fdw", "pg_stat_statements"]:
        assert found[untrusted]["installable"] is False, untrusted
    assert found["plpgsql"]["installed_version"]

    # The same, inline in the session on request; a plain GET does not read the database.
    session = f"/v1/sessions/{tenant.session_id}"
    inline = await http.get(session, params={"include": "extensions"}, headers=tenant.user_token)
    assert inline.status_code == 200, inline.text
    assert {e["name"]: e for e in inline.json()["extensions"]} == found
    assert (await http.get(session, headers=tenant.user_token)).json()["extensions"] is None
    assert_problem(
        await http.get(session, params={"include": "everything"}, headers=tenant.user_token),
        400,
        "include",
    )
