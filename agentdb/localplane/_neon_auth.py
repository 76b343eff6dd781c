"""Neon Auth on the local control plane: the `neon_auth` schema in a branch's database, a real
ES256 key pair per branch whose public half is served as a JWKS, and local email/password
sign-up and sign-in that issue signed JWTs (`sub`, `email`, `role: authenticated`, `exp`).

Users and password hashes live in the database (`neon_auth.users_sync`, `neon_auth.account`), so
they branch, snapshot and restore with it; the key pair lives in plane state (see `_addons`).
The schema belongs to the project's service role, which also runs sign-up and sign-in: nothing
there runs as a superuser or as the tenant, and the tenant cannot add triggers or rules to it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import psycopg
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet
from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field

from ._addons import AddonRecord, AddonsBase, SchemaTaken, Unauthorized, service_role
from ._errors import Conflict, LocalPlaneError, NotFound
from ._models import now
from ._store import Tx

JSON = dict[str, Any]
ALGORITHM = "ES256"
SCHEMA = "neon_auth"
USERS_TABLE = "users_sync"
TOKEN_LIFETIME_S = 3600
# scrypt with n=2**14, r=8, p=1 (16 MiB, ~50 ms here): the interactive-login parameters of the
# scrypt paper, as Better Auth uses for its own password hashes.
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_MIN_PASSWORD, _MAX_PASSWORD = 8, 128
OAuthId = Literal["google", "github", "microsoft", "vercel"]

# Run by the service role after `_claim_schema`, with search_path = pg_catalog, pg_temp.
_DDL = """
CREATE TABLE IF NOT EXISTS neon_auth.users_sync (
    raw_json jsonb NOT NULL,
    id text PRIMARY KEY,
    name text,
    email text,
    email_verified boolean NOT NULL DEFAULT false,
    signed_in_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz,
    deleted_at timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS users_sync_email_key
    ON neon_auth.users_sync (pg_catalog.lower(email)) WHERE deleted_at IS NULL;
CREATE INDEX IF NOT EXISTS users_sync_deleted_at_idx ON neon_auth.users_sync (deleted_at);
CREATE TABLE IF NOT EXISTS neon_auth.account (
    user_id text PRIMARY KEY REFERENCES neon_auth.users_sync (id) ON DELETE CASCADE,
    provider_id text NOT NULL DEFAULT 'credential',
    password_hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON SCHEMA neon_auth FROM PUBLIC;
"""
# The service owns `neon_auth` (as on Neon); the database owner reads the users and may pass
# that on (e.g. to `authenticated`), but never sees the password hashes.
_OWNER_GRANTS = """
GRANT USAGE ON SCHEMA neon_auth TO {owner};
GRANT SELECT ON neon_auth.users_sync TO {owner} WITH GRANT OPTION;
"""


class UserExists(LocalPlaneError):  # noqa: N818 - named like NotFound and Conflict
    status = 422
    code = "USER_ALREADY_EXISTS"


class NeonAuthRecord(AddonRecord):
    """Neon Auth on one branch; `id` is the branch id. The private key never leaves it."""

    kind: ClassVar[str] = "neon_auth"

    db_name: str
    auth_provider: str
    provider_project_id: str
    private_jwk: JSON = Field(repr=False)
    pub_client_key: str
    secret_server_key: str = Field(repr=False)
    oauth_providers: dict[str, JSON] = Field(default_factory=dict)

    def key(self) -> ECKey:
        return ECKey.import_key(self.private_jwk)

    def jwks(self) -> JSON:
        public = self.key().as_dict(private=False)
        return {"keys": [{**public, "alg": ALGORITHM, "use": "sig"}]}

    def public_keys(self) -> KeySet:
        return KeySet([ECKey.import_key(self.key().as_dict(private=False))])


# --- request bodies -------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class NeonAuthCreateBody(_Body):
    auth_provider: Literal["mock", "stack", "better_auth"]
    database_name: str | None = Field(default=None, min_length=1, max_length=63)


class NeonAuthDeleteBody(_Body):
    delete_data: bool = False


class OAuthProviderBody(_Body):
    id: OAuthId
    client_id: str | None = None
    client_secret: str | None = None
    microsoft_tenant_id: str | None = None


class OAuthProviderUpdateBody(_Body):
    client_id: str | None = None
    client_secret: str | None = None
    microsoft_tenant_id: str | None = None


class SignUpBody(_Body):
    email: str = Field(min_length=3, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    password: str = Field(min_length=_MIN_PASSWORD, max_length=_MAX_PASSWORD, repr=False)
    name: str = Field(default="", max_length=256)


class SignInBody(_Body):
    email: str = Field(min_length=1, max_length=254)
    password: str = Field(min_length=1, max_length=_MAX_PASSWORD, repr=False)


# --- passwords ------------------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    n, r, p = _SCRYPT["n"], _SCRYPT["r"], _SCRYPT["p"]
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    expected = _unb64(digest)
    actual = hashlib.scrypt(
        password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
    )
    return hmac.compare_digest(actual, expected)


# A hash to check against when the email is unknown, so both failures take the same time.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(12))


def auth_base_url(root: str, address: str, database: str) -> str:
    """Like Neon's `https://<endpoint>.neonauth.<region>/<database>/auth`: it names the
    endpoint (`AddonsBase._address`), not the branch, so it follows restores; it is also the
    JWTs' issuer, so tokens stay valid across them."""
    return f"{root.rstrip('/')}/neon-auth/{address}/{quote(database, safe='')}/auth"


class NeonAuthMixin(AddonsBase):
    # --- Neon API ------------------------------------------------------------------------

    async def enable_neon_auth(
        self, project_id: str, branch_id: str, body: NeonAuthCreateBody, *, root: str
    ) -> JSON:
        async with self._mutation(project_id) as m:
            await self._branch(m.tx, project_id, branch_id)
            if await m.tx.get(NeonAuthRecord, branch_id) is not None:
                raise Conflict(f"Neon Auth is already enabled on branch {branch_id}")
            p = await self._project(m.tx, project_id)
            d = await self._database(m.tx, project_id, branch_id, body.database_name)
            owner = await self._owner_physical(m.tx, project_id, d)
            login = await self._ensure_service(m.tx, p)
            async with await self._service_connect(p, login, d.physical) as conn:
                await self._create_auth_schema(conn, service_role(p.key), owner)
            record = NeonAuthRecord(
                id=branch_id,
                project_id=project_id,
                branch_id=branch_id,
                db_name=d.name,
                auth_provider=body.auth_provider,
                provider_project_id=str(uuid.uuid4()),
                private_jwk=ECKey.generate_key("P-256", auto_kid=True).as_dict(private=True),
                pub_client_key=f"pck_{secrets.token_urlsafe(24)}",
                secret_server_key=f"ssk_{secrets.token_urlsafe(32)}",
            )
            await m.tx.put(record)
            address = await self._address(m.tx, project_id, branch_id)
        base = auth_base_url(root, address, record.db_name)
        return {
            "auth_provider": record.auth_provider,
            "auth_provider_project_id": record.provider_project_id,
            "pub_client_key": record.pub_client_key,
            "secret_server_key": record.secret_server_key,
            "jwks_url": f"{base}/.well-known/jwks.json",
            "schema_name": SCHEMA,
            "table_name": USERS_TABLE,
            "base_url": base,
        }

    async def _create_auth_schema(
        self, conn: psycopg.AsyncConnection, role: str, owner: str
    ) -> None:
        async with conn.transaction():
            await self._claim_schema(conn, SCHEMA, role)
            await conn.execute(_DDL)
            await conn.execute(sql.SQL(_OWNER_GRANTS).format(owner=sql.Identifier(owner)))

    async def get_neon_auth(self, project_id: str, branch_id: str, *, root: str) -> JSON:
        async with self._store.tx() as tx:
            p = await self._project(tx, project_id)
            record = await self._auth(tx, project_id, branch_id)
            address = await self._address(tx, project_id, branch_id)
        base = auth_base_url(root, address, record.db_name)
        return {
            "auth_provider": record.auth_provider,
            "auth_provider_project_id": record.provider_project_id,
            "branch_id": branch_id,
            "db_name": record.db_name,
            "created_at": record.created_at.isoformat().replace("+00:00", "Z"),
            "owned_by": "user",
            "jwks_url": f"{base}/.well-known/jwks.json",
            "base_url": base,
            "name": p.name,
        }

    async def disable_neon_auth(
        self, project_id: str, branch_id: str, body: NeonAuthDeleteBody
    ) -> JSON:
        async with self._mutation(project_id) as m:
            record = await self._auth(m.tx, project_id, branch_id)
            if body.delete_data:
                d = await self._database(m.tx, project_id, branch_id, record.db_name)
                p = await self._project(m.tx, project_id)
                login = await self._ensure_service(m.tx, p)
                async with await self._service_connect(p, login, d.physical) as conn:
                    cur = await conn.execute(
                        "SELECT nspowner::pg_catalog.regrole::text FROM pg_catalog.pg_namespace"
                        " WHERE nspname = %s",
                        (SCHEMA,),
                    )
                    row = await cur.fetchone()
                    if row is not None and row[0] != service_role(p.key):
                        raise SchemaTaken(
                            f"schema {SCHEMA} is owned by {row[0]}, not by the control plane: "
                            "it was not deleted"
                        )
                    await conn.execute("DROP SCHEMA IF EXISTS neon_auth CASCADE")
            await m.tx.delete(record)
        return {}

    async def list_oauth_providers(self, project_id: str, branch_id: str) -> JSON:
        async with self._store.tx() as tx:
            record = await self._auth(tx, project_id, branch_id)
        return {"providers": [_provider(p) for p in record.oauth_providers.values()]}

    async def add_oauth_provider(
        self, project_id: str, branch_id: str, body: OAuthProviderBody
    ) -> JSON:
        async with self._store.tx(project_id) as tx:
            record = await self._auth(tx, project_id, branch_id)
            if body.id in record.oauth_providers:
                raise Conflict(f"OAuth provider {body.id!r} is already configured")
            provider = body.model_dump(exclude_none=True)
            record.oauth_providers[body.id] = provider
            record.updated_at = now()
            await tx.put(record)
        return _provider(provider)

    async def update_oauth_provider(
        self, project_id: str, branch_id: str, provider_id: str, body: OAuthProviderUpdateBody
    ) -> JSON:
        async with self._store.tx(project_id) as tx:
            record = await self._auth(tx, project_id, branch_id)
            provider = record.oauth_providers.get(provider_id)
            if provider is None:
                raise NotFound(f"OAuth provider {provider_id!r} is not configured")
            provider.update(body.model_dump(exclude_none=True))
            record.updated_at = now()
            await tx.put(record)
        return _provider(provider)

    async def delete_oauth_provider(
        self, project_id: str, branch_id: str, provider_id: str
    ) -> JSON:
        async with self._store.tx(project_id) as tx:
            record = await self._auth(tx, project_id, branch_id)
            if record.oauth_providers.pop(provider_id, None) is None:
                raise NotFound(f"OAuth provider {provider_id!r} is not configured")
            record.updated_at = now()
            await tx.put(record)
        return {}

    # --- the auth service: JWKS, sign-up, sign-in ----------------------------------------

    async def auth_jwks(self, address: str, database: str) -> JSON:
        record, _ = await self._auth_at(address, database)
        return record.jwks()

    async def sign_up(self, address: str, database: str, body: SignUpBody, *, root: str) -> JSON:
        record, physical = await self._auth_at(address, database)
        project_id = record.project_id
        password_hash = await asyncio.to_thread(hash_password, body.password)
        stamp = now()
        user = {
            "id": str(uuid.uuid4()),
            "email": body.email.strip().lower(),
            "name": body.name,
            "email_verified": False,
            "created_at": stamp.isoformat(),
        }
        try:
            async with self._auth_service(project_id, physical) as conn, conn.transaction():
                await conn.execute(
                    """INSERT INTO neon_auth.users_sync
                         (raw_json, id, name, email, email_verified, signed_in_at, created_at,
                          updated_at)
                       VALUES (%s, %s, %s, %s, false, %s, %s, %s)""",
                    (Jsonb(user), user["id"], body.name, user["email"], stamp, stamp, stamp),
                )
                await conn.execute(
                    "INSERT INTO neon_auth.account (user_id, password_hash) VALUES (%s, %s)",
                    (user["id"], password_hash),
                )
        except psycopg.errors.UniqueViolation:
            raise UserExists(f"a user with email {user['email']!r} already exists") from None
        return self._session(record, user, issuer=auth_base_url(root, address, record.db_name))

    async def sign_in(self, address: str, database: str, body: SignInBody, *, root: str) -> JSON:
        record, physical = await self._auth_at(address, database)
        project_id = record.project_id
        email = body.email.strip().lower()
        async with self._auth_service(project_id, physical) as conn:
            cur = await conn.execute(
                """SELECT u.id, u.name, u.email, u.email_verified, u.created_at, a.password_hash
                     FROM neon_auth.users_sync u JOIN neon_auth.account a ON a.user_id = u.id
                    WHERE pg_catalog.lower(u.email) = %s AND u.deleted_at IS NULL""",
                (email,),
            )
            row = await cur.fetchone()
            stored = str(row[5]) if row else _DUMMY_HASH
            valid = await asyncio.to_thread(verify_password, body.password, stored)
            if row is None or not valid:
                raise Unauthorized("invalid email or password")
            await conn.execute(
                "UPDATE neon_auth.users_sync"
                " SET signed_in_at = pg_catalog.now(), updated_at = pg_catalog.now()"
                " WHERE id = %s",
                (row[0],),
            )
        user = {
            "id": row[0],
            "email": row[2],
            "name": row[1],
            "email_verified": row[3],
            "created_at": row[4].isoformat(),
        }
        return self._session(record, user, issuer=auth_base_url(root, address, record.db_name))

    def _session(self, record: NeonAuthRecord, user: JSON, *, issuer: str) -> JSON:
        issued = int(time.time())
        claims = {
            "iss": issuer,
            "aud": issuer,
            "sub": user["id"],
            "email": user["email"],
            "name": user["name"],
            "role": "authenticated",
            "iat": issued,
            "exp": issued + TOKEN_LIFETIME_S,
        }
        key = record.key()
        token = jwt.encode({"alg": ALGORITHM, "kid": key.kid, "typ": "JWT"}, claims, key)
        return {"token": token, "expires_at": claims["exp"], "user": user}

    @asynccontextmanager
    async def _auth_service(self, project_id: str, physical: str) -> AsyncIterator[AsyncConnection]:
        """The service role's connection, with `neon_auth` handed over to it first if an
        earlier agentdb made it as the superuser."""
        async with self._service(project_id, physical) as conn:
            cur = await conn.execute(
                "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s", (SCHEMA,)
            )
            row = await cur.fetchone()
            role = str(conn.info.user)
            if row is not None and row[0] != role and not await self._adopt(conn, SCHEMA, role):
                raise SchemaTaken(
                    f"schema {SCHEMA} is owned by {row[0]}, not by the control plane: "
                    "disable Neon Auth, drop or rename the schema, then enable it again"
                )
            yield conn

    async def _auth_at(self, address: str, database: str) -> tuple[NeonAuthRecord, str]:
        """Neon Auth at `auth_base_url(..., address, database)` and its database's physical
        name: the branch `address` names now."""
        project_id, branch_id = await self.locate(address)
        record, physical = await self._auth_database(project_id, branch_id)
        if record.db_name != database:
            raise NotFound(f"Neon Auth is not enabled on database {database!r}")
        return record, physical

    async def _auth_database(self, project_id: str, branch_id: str) -> tuple[NeonAuthRecord, str]:
        async with self._store.tx() as tx:
            record = await self._auth(tx, project_id, branch_id)
            d = await self._database(tx, project_id, branch_id, record.db_name)
        return record, d.physical

    async def _auth(self, tx: Tx, project_id: str, branch_id: str) -> NeonAuthRecord:
        await self._branch(tx, project_id, branch_id)
        record = await tx.get(NeonAuthRecord, branch_id)
        if record is None:
            raise NotFound(f"Neon Auth is not enabled on branch {branch_id}")
        return record


def _provider(provider: JSON) -> JSON:
    """A provider as the API shows it: `shared` (Neon's keys) without own credentials; the
    client secret is never returned."""
    shown: JSON = {
        "id": provider["id"],
        "type": "standard" if provider.get("client_id") else "shared",
    }
    if provider.get("client_id"):
        shown["client_id"] = provider["client_id"]
    return shown
