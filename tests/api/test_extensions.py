"""The extensions generated code asks for, as a session's owner on the embedded PostgreSQL:
trusted contrib extensions and pgvector install through agentdb's SQL and through the session's
connection string, ones that reach outside the database are refused naming the privilege, and a
checkpoint and restore keep them working (they live in the database)."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from .conftest import Tenant, sql_runner

# What generated apps start with, most common first.
INSTALLABLE = [
    "vector",
    "pg_trgm",
    "citext",
    "hstore",
    "btree_gist",
    "btree_gin",
    "unaccent",
    "fuzzystrmatch",
    "ltree",
    "cube",
    "intarray",
    "tablefunc",
    "isn",
    "seg",
    "lo",
    "tsm_system_rows",
    "uuid-ossp",  # agentdb's SQL stand-ins (tests/pg/test_stand_in_extensions.py)
    "pgcrypto",
]
# Never: they reach other databases, files or the server's internals.
REFUSED = ["dblink", "postgres_fdw", "file_fdw", "pageinspect", "pg_buffercache", "adminpack"]
# Not in the embedded build (on Neon it is): the error says the extension is not available.
ABSENT = ["postgis"]

SMOKE = """SELECT '[1,2]'::vector <-> '[2,3]', similarity('agentdb', 'agentdbs') > 0.5,
                  'Neon'::citext = 'NEON', ('a=>1'::hstore) -> 'a', unaccent('crème'),
                  levenshtein('kitten', 'sitting'), 'top.a'::ltree @> 'top.a.b'"""


async def test_owner_installs_the_extensions_generated_code_uses(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    run = sql_runner(http, tenant.session_id, tenant.session_token)
    # Through agentdb's SQL, as the agent runs it.
    for name in INSTALLABLE[:8]:
        await run(f'CREATE EXTENSION IF NOT EXISTS "{name}"')
    # Through the connection string, as the app runs it.
    async with await psycopg.AsyncConnection.connect(
        tenant.session["connection_uri"], autocommit=True
    ) as conn:
        for name in INSTALLABLE[8:]:
            await conn.execute(f'CREATE EXTENSION IF NOT EXISTS "{name}"')
        for name in REFUSED:
            with pytest.raises(psycopg.Error) as refused:
                await conn.execute(f'CREATE EXTENSION "{name}"')
            # Not trusted: only a superuser may, and the message says so. (Or not shipped.)
            assert refused.value.sqlstate in {"42501", "0A000"}, (name, refused.value)
        for name in ABSENT:
            with pytest.raises(psycopg.Error) as missing:
                await conn.execute(f'CREATE EXTENSION "{name}"')
            assert missing.value.sqlstate == "0A000", (name, missing.value)
            assert "is not available" in str(missing.value)
        # gen_random_uuid() and uuidv7() are built in: what uuid-ossp is mostly used for.
        cur = await conn.execute("SELECT gen_random_uuid() IS NOT NULL, uuidv7() IS NOT NULL")
        assert await cur.fetchone() == (True, True)
    installed = await run("SELECT extname FROM pg_extension ORDER BY 1")
    assert {row[0] for row in installed} >= {*INSTALLABLE, "plpgsql"}
    expected = [1.4142135623730951, True, True, "1", "creme", 3, True]
    assert (await run(SMOKE)) == [expected]

    # They live in the database: a checkpoint and a restore keep them, working.
    await run(
        "CREATE TABLE docs (id int PRIMARY KEY, title citext, embedding vector(2));"
        "CREATE INDEX ON docs USING gin (title gin_trgm_ops);"
        "INSERT INTO docs VALUES (1, 'Checkpoints', '[1,0]'), (2, 'Branches', '[0,1]')"
    )
    made = await http.post(
        f"/v1/sessions/{tenant.session_id}/checkpoints",
        json={"label": "extensions"},
        headers=tenant.session_token,
    )
    assert made.status_code == 201, made.text
    await run("DROP TABLE docs; DROP EXTENSION hstore")
    restored = await http.post(
        f"/v1/sessions/{tenant.session_id}/checkpoints/{made.json()['id']}/restore",
        headers=tenant.session_token,
    )
    assert restored.status_code == 200, restored.text
    assert (await run(SMOKE)) == [expected]
    nearest = await run(
        "SELECT id FROM docs WHERE title = 'CHECKPOINTS' ORDER BY embedding <-> '[1,0.1]' LIMIT 1"
    )
    assert nearest == [[1]]

    # A dev branch and a preview are copies of the database: the extensions come along.
    branch = await http.post(
        f"/v1/sessions/{tenant.session_id}/branches", json={}, headers=tenant.user_token
    )
    assert branch.status_code == 201, branch.text
    preview = await http.post(
        f"/v1/sessions/{tenant.session_id}/checkpoints/{made.json()['id']}/preview",
        json={},
        headers=tenant.user_token,
    )
    assert preview.status_code == 201, preview.text
    for copy in (branch.json(), preview.json()):
        async with await psycopg.AsyncConnection.connect(copy["connection_uri"]) as conn:
            cur = await conn.execute(SMOKE)
            assert list(await cur.fetchone() or ()) == expected, copy["kind"]
