"""The surface of agentdb's `uuid-ossp` and `pgcrypto` stand-ins against upstream's scripts
(uuid-ossp 1.1, pgcrypto 1.3): same functions, signatures, volatility, strictness and
parallel safety, so a migration written for the real ones finds every function it calls, and
each function that needs OpenSSL fails with 0A000 saying what to do instead. What they compute
is checked in test_stand_in_extensions.py."""

from __future__ import annotations

import hmac
import secrets
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from agentdb.pg import ServerInfo

# Upstream's functions: identity arguments -> (provolatile, proisstrict, proparallel).
UUID_OSSP = {
    "uuid_nil()": ("i", True, "s"),
    "uuid_ns_dns()": ("i", True, "s"),
    "uuid_ns_url()": ("i", True, "s"),
    "uuid_ns_oid()": ("i", True, "s"),
    "uuid_ns_x500()": ("i", True, "s"),
    "uuid_generate_v1()": ("v", True, "s"),
    "uuid_generate_v1mc()": ("v", True, "s"),
    "uuid_generate_v3(namespace uuid, name text)": ("i", True, "s"),
    "uuid_generate_v4()": ("v", True, "s"),
    "uuid_generate_v5(namespace uuid, name text)": ("i", True, "s"),
}
PGCRYPTO_COMPUTED = {
    "digest(text, text)": ("i", True, "s"),
    "digest(bytea, text)": ("i", True, "s"),
    "hmac(text, text, text)": ("i", True, "s"),
    "hmac(bytea, bytea, text)": ("i", True, "s"),
    "gen_random_bytes(integer)": ("v", True, "s"),
}
# Need OpenSSL: present, raising.
PGCRYPTO_REFUSED = {
    "crypt(text, text)": ("i", True, "s"),
    "gen_salt(text)": ("v", True, "s"),
    "gen_salt(text, integer)": ("v", True, "s"),
    "encrypt(bytea, bytea, text)": ("i", True, "s"),
    "decrypt(bytea, bytea, text)": ("i", True, "s"),
    "encrypt_iv(bytea, bytea, bytea, text)": ("i", True, "s"),
    "decrypt_iv(bytea, bytea, bytea, text)": ("i", True, "s"),
    "pgp_sym_encrypt(text, text)": ("v", True, "s"),
    "pgp_sym_encrypt(text, text, text)": ("v", True, "s"),
    "pgp_sym_encrypt_bytea(bytea, text)": ("v", True, "s"),
    "pgp_sym_encrypt_bytea(bytea, text, text)": ("v", True, "s"),
    "pgp_sym_decrypt(bytea, text)": ("i", True, "s"),
    "pgp_sym_decrypt(bytea, text, text)": ("i", True, "s"),
    "pgp_sym_decrypt_bytea(bytea, text)": ("i", True, "s"),
    "pgp_sym_decrypt_bytea(bytea, text, text)": ("i", True, "s"),
    "pgp_pub_encrypt(text, bytea)": ("v", True, "s"),
    "pgp_pub_encrypt(text, bytea, text)": ("v", True, "s"),
    "pgp_pub_encrypt_bytea(bytea, bytea)": ("v", True, "s"),
    "pgp_pub_encrypt_bytea(bytea, bytea, text)": ("v", True, "s"),
    "pgp_pub_decrypt(bytea, bytea)": ("i", True, "s"),
    "pgp_pub_decrypt(bytea, bytea, text)": ("i", True, "s"),
    "pgp_pub_decrypt(bytea, bytea, text, text)": ("i", True, "s"),
    "pgp_pub_decrypt_bytea(bytea, bytea)": ("i", True, "s"),
    "pgp_pub_decrypt_bytea(bytea, bytea, text)": ("i", True, "s"),
    "pgp_pub_decrypt_bytea(bytea, bytea, text, text)": ("i", True, "s"),
}
# Upstream's pgcrypto also has gen_random_uuid() (core since PostgreSQL 13) and armor(),
# dearmor(), pgp_armor_headers() and pgp_key_id(), which the stand-in leaves out.
LITERALS = {"text": "'x'", "bytea": "'\\x00'::bytea", "integer": "6"}

SURFACE = """
    SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
           p.provolatile, p.proisstrict, p.proparallel
    FROM pg_proc p
    JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
    JOIN pg_extension e ON e.oid = d.refobjid
    WHERE e.extname = %s AND p.proname NOT LIKE '\\_%%'
"""


@pytest_asyncio.fixture(loop_scope="session")
async def owner(server: ServerInfo) -> AsyncIterator[psycopg.AsyncConnection]:
    """A connection as the owner of a database of its own, with no other privilege."""
    name = f"shim_{secrets.token_hex(4)}"
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


async def surface(conn: psycopg.AsyncConnection, extension: str) -> dict[str, tuple[str, ...]]:
    cur = await conn.execute(SURFACE, (extension,))
    return {row[0]: tuple(row[1:]) for row in await cur.fetchall()}


async def test_the_stand_ins_have_upstreams_functions(owner: psycopg.AsyncConnection) -> None:
    await owner.execute("CREATE SCHEMA extensions")
    await owner.execute('CREATE EXTENSION IF NOT EXISTS "uuid-ossp" SCHEMA extensions')
    await owner.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto SCHEMA extensions")
    assert await surface(owner, "uuid-ossp") == UUID_OSSP
    assert await surface(owner, "pgcrypto") == {**PGCRYPTO_COMPUTED, **PGCRYPTO_REFUSED}
    # Their helpers call each other by schema: they work with the schema off the search_path.
    await owner.execute("SET search_path = ''")
    cur = await owner.execute(
        "SELECT extensions.uuid_generate_v5(extensions.uuid_ns_url(), 'a')::text,"
        " encode(extensions.hmac('m', 'k', 'sha1'), 'hex')"
    )
    assert await cur.fetchone() == (
        str(uuid.uuid5(uuid.NAMESPACE_URL, "a")),
        hmac.new(b"k", b"m", "sha1").hexdigest(),
    )
    await owner.execute('DROP EXTENSION "uuid-ossp", pgcrypto')
    cur = await owner.execute(
        "SELECT count(*) FROM pg_proc WHERE pronamespace = 'extensions'::regnamespace"
    )
    assert await cur.fetchone() == (0,)


async def test_what_needs_openssl_raises_0a000_with_a_hint(
    owner: psycopg.AsyncConnection,
) -> None:
    await owner.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
    for signature in PGCRYPTO_REFUSED:
        name, arguments = signature.rstrip(")").split("(")
        call = f"{name}({', '.join(LITERALS[a] for a in arguments.split(', '))})"
        with pytest.raises(psycopg.errors.FeatureNotSupported) as refused:
            await owner.execute(f"SELECT {call}")
        message = str(refused.value)
        assert f"{name}() is not available in agentdb's local plane" in message, call
        assert "no OpenSSL" in message, call
        hint = refused.value.diag.message_hint or ""
        assert "bcrypt or argon2" in hint, call
        assert "Neon" in hint, call
