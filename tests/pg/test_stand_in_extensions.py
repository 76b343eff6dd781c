"""agentdb's SQL stand-ins for `uuid-ossp` and `pgcrypto` on the embedded PostgreSQL: a database
owner who is not a superuser creates them, and they answer as the real ones do (checked
against Python's uuid, hashlib and hmac), or, for what needs OpenSSL, fail saying what to do
instead."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from agentdb.pg import ServerInfo

NAMES = ["", "python.org", "www.example.com/a?b=c", "crème brûlée ✓", "x" * 200]
NAMESPACES = {
    "uuid_ns_dns": uuid.NAMESPACE_DNS,
    "uuid_ns_url": uuid.NAMESPACE_URL,
    "uuid_ns_oid": uuid.NAMESPACE_OID,
    "uuid_ns_x500": uuid.NAMESPACE_X500,
}
ALGORITHMS = ["md5", "sha1", "sha224", "sha256", "sha384", "sha512"]
MESSAGES = [b"", b"abc", b"a" * 55, b"a" * 56, b"a" * 64, b"\x00\xff" * 300]


@pytest_asyncio.fixture(loop_scope="session")
async def owner(server: ServerInfo) -> AsyncIterator[psycopg.AsyncConnection]:
    """A connection as the owner of a database of its own, with no other privilege."""
    name = f"standin_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    async with await psycopg.AsyncConnection.connect(server.conninfo(), autocommit=True) as su:
        await su.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        await su.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(name)
            )
        )
        try:
            async with await psycopg.AsyncConnection.connect(
                host=server.host,
                port=server.port,
                user=name,
                password=password,
                dbname=name,
                autocommit=True,
            ) as conn:
                yield conn
        finally:
            await su.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            await su.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


async def one(conn: psycopg.AsyncConnection, query: str, *params: object) -> object:
    cur = await conn.execute(query, params or None)
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def test_uuid_ossp_answers_as_upstream(owner: psycopg.AsyncConnection) -> None:
    await owner.execute('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"')
    assert await one(owner, "SELECT uuid_nil()") == uuid.UUID(int=0)
    for function, namespace in NAMESPACES.items():
        assert await one(owner, f"SELECT {function}()") == namespace
        for name in NAMES:
            v3 = await one(owner, f"SELECT uuid_generate_v3({function}(), %s)", name)
            v5 = await one(owner, f"SELECT uuid_generate_v5({function}(), %s)", name)
            assert (v3, v5) == (uuid.uuid3(namespace, name), uuid.uuid5(namespace, name))
    v4 = await one(owner, "SELECT uuid_generate_v4()")
    assert isinstance(v4, uuid.UUID)
    assert v4.version == 4
    # Time-based: version 1, the RFC's variant, timestamps that do not go back.
    cur = await owner.execute(
        "SELECT uuid_generate_v1() FROM generate_series(1, 50) UNION ALL "
        "SELECT uuid_generate_v1mc()"
    )
    made = [row[0] for row in await cur.fetchall()]
    assert all(u.version == 1 and u.variant == uuid.RFC_4122 for u in made)
    assert [u.time for u in made[:50]] == sorted(u.time for u in made[:50])
    assert len(set(made)) == len(made)
    # In the table definitions generated code writes.
    await owner.execute(
        "CREATE TABLE things (id uuid PRIMARY KEY DEFAULT uuid_generate_v4(), n int);"
        "INSERT INTO things (n) SELECT generate_series(1, 3)"
    )
    assert await one(owner, "SELECT count(DISTINCT id) FROM things") == 3
    await owner.execute('DROP TABLE things; DROP EXTENSION "uuid-ossp"')
    assert await one(owner, "SELECT count(*) FROM pg_proc WHERE proname LIKE 'uuid_generate%'") == 0


async def test_pgcrypto_digest_hmac_and_random_bytes(owner: psycopg.AsyncConnection) -> None:
    await owner.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
    # Both stand-ins in one schema: each has its own helpers.
    await owner.execute('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"')
    for algorithm in ALGORITHMS:
        for message in MESSAGES:
            digest = await one(owner, "SELECT digest(%s::bytea, %s)", message, algorithm)
            assert bytes(digest) == hashlib.new(algorithm, message).digest(), algorithm  # type: ignore[arg-type]
            for key in [b"", b"key", b"k" * 64, b"k" * 200]:
                mac = await one(
                    owner, "SELECT hmac(%s::bytea, %s::bytea, %s)", message, key, algorithm
                )
                expected = hmac.new(key, message, algorithm).digest()
                assert bytes(mac) == expected, (algorithm, len(message), len(key))  # type: ignore[arg-type]
    text = await one(owner, "SELECT encode(digest('crème', 'SHA256'), 'hex')")
    assert text == hashlib.sha256("crème".encode()).hexdigest()
    with pytest.raises(psycopg.errors.InvalidParameterValue, match='Cannot use "sha3"'):
        await owner.execute("SELECT digest('x', 'sha3')")

    sizes = await one(
        owner, "SELECT array[length(gen_random_bytes(1)), length(gen_random_bytes(1024))]"
    )
    assert sizes == [1, 1024]
    assert await one(owner, "SELECT gen_random_bytes(16) <> gen_random_bytes(16)") is True
    for bad in (0, 1025):
        with pytest.raises(psycopg.errors.ExternalRoutineInvocationException, match="Length"):
            await owner.execute("SELECT gen_random_bytes(%s)", (bad,))


async def test_what_needs_openssl_says_what_to_do_instead(owner: psycopg.AsyncConnection) -> None:
    await owner.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
    for call in [
        "crypt('secret', gen_salt('bf'))",
        "crypt('secret', '$2a$06$abcdefghijklmnopqrstuv')",
        "gen_salt('bf', 8)",
        "pgp_sym_encrypt('data', 'key')",
        "pgp_sym_decrypt('\\x00'::bytea, 'key')",
        "encrypt('data', 'key', 'aes')",
        "decrypt('data', 'key', 'aes')",
    ]:
        with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
            await owner.execute(f"SELECT {call}")
        assert "not available in agentdb's local plane" in str(refused.value), call
        assert refused.value.diag.message_hint
        assert "bcrypt" in refused.value.diag.message_hint
        assert "Neon" in refused.value.diag.message_hint
    await owner.execute("DROP EXTENSION pgcrypto")
