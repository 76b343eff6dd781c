"""A PostgREST-compatible subset over one database: what the local Data API serves.

Reads: `select` (columns, `alias:column`), filters (`eq neq gt gte lt lte like ilike match imatch
in is`, each optionally `not.`), `order`, `limit`/`offset`, `Prefer: count=exact`
(`Content-Range`), `Accept: application/vnd.pgrst.object+json`. Writes: POST (one object or an
array, `columns`, upserts with `Prefer: resolution=...` and `on_conflict`), PATCH and DELETE
with filters, `Prefer: return=representation|minimal`. Errors have PostgREST's shape
`{code, message, details, hint}`.

Each request is one transaction on a connection of the project's authenticator, which switches
to the request's role with `SET LOCAL ROLE` and puts the JWT's claims in `request.jwt.claims`
(`set_config(..., true)`), so row-level security sees them. SQL is composed with
`psycopg.sql` identifiers, and every value is a bound parameter.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from joserfc import jwt
from joserfc.errors import ExpiredTokenError, JoseError
from psycopg import AsyncConnection, sql

from ._data_api import DataApiTarget
from ._rest_sql import (
    PostgrestError,
    Prefer,
    Table,
    filters,
    insert_statement,
    json_body,
    non_negative,
    order_by,
    select_list,
    update_statement,
)

JSON = dict[str, Any]
_SINGLE = "application/vnd.pgrst.object+json"
_STATEMENT_TIMEOUT = "30s"
# A read answers at most this much JSON: rows past it are left for the next page (206 with a
# Content-Range, as for `db_max_rows`), so one request cannot make agentdb hold a whole table.
MAX_RESPONSE_BYTES = 16 * 2**20
# Rows a read's server-side cursor brings over per round trip.
_FETCH_ROWS = 100
_STATUS_BY_CODE = {
    "23503": 409,
    "23505": 409,
    "25006": 405,
    "42883": 404,
    "42P01": 404,
    "42501": 403,
    "P0001": 400,
}
_STATUS_BY_CLASS = {"08": 503, "09": 500, "0L": 403, "0P": 403, "22": 400, "23": 400, "42": 400}


@dataclass(frozen=True)
class RestRequest:
    """One Data API request as the route received it; header names in lower case."""

    method: str
    #: What follows `/rest/v1/`: a table or view name, `rpc/<function>`, or "" for the root.
    path: str
    query: list[tuple[str, str]]
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


# --- authentication -----------------------------------------------------------------------


def authenticate(target: DataApiTarget, authorization: str | None) -> tuple[str, JSON]:
    """The role a request runs as and its claims: `authenticated` with a valid token of the
    branch's Neon Auth, `anonymous` without a token."""
    if not authorization:
        return target.anonymous_role, {"role": "anonymous"}
    scheme, _, raw = authorization.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise _jwt_error("PGRST301", "Authorization must be 'Bearer <JWT>'")
    if target.keys is None:
        raise _jwt_error("PGRST301", "no JWT is accepted: Neon Auth is not enabled on the branch")
    try:
        token = jwt.decode(raw.strip(), target.keys, algorithms=["ES256"])
    except (JoseError, ValueError) as exc:
        raise _jwt_error("PGRST301", f"JWT could not be verified: {exc}") from None
    claims: JSON = dict(token.claims)
    _validate_claims(target, claims)
    return _role_for(target, claims), claims


def _validate_claims(target: DataApiTarget, claims: JSON) -> None:
    options: dict[str, Any] = {"exp": {"essential": True}}
    if target.audience is not None and "aud" in claims:
        # PostgREST rejects a different audience but accepts tokens without one.
        options["aud"] = {"essential": True, "value": target.audience}
    try:
        jwt.JWTClaimsRegistry(**options).validate(claims)
    except ExpiredTokenError:
        raise _jwt_error("PGRST303", "JWT expired") from None
    except JoseError as exc:
        raise _jwt_error("PGRST303", f"JWT claims validation failed: {exc}") from None


def _role_for(target: DataApiTarget, claims: JSON) -> str:
    """The physical role for the token's role claim (`jwt_role_claim_key`, `.role`)."""
    role: Any = claims
    for part in target.role_claim_path:
        role = role.get(part) if isinstance(role, dict) else None
    if role is None or role == "anonymous":
        return target.anonymous_role
    if role == "authenticated":
        return target.authenticated_role
    raise _jwt_error("PGRST303", f"role {role!r} is not available to the Data API")


def _jwt_error(code: str, message: str) -> PostgrestError:
    return PostgrestError(401, code, message, None, None)


# --- execution --------------------------------------------------------------------------------


async def serve(target: DataApiTarget, request: RestRequest) -> Reply:
    headers = request.headers
    role, claims = authenticate(target, headers.get("authorization"))
    reading = request.method == "GET"
    profile = headers.get("accept-profile" if reading else "content-profile")
    schema = profile or target.schemas[0]
    if schema not in target.schemas:
        raise PostgrestError(
            406,
            "PGRST106",
            f"The schema must be one of the following: {', '.join(target.schemas)}",
        )
    prefer = Prefer.parse(headers.get("prefer", ""))
    try:
        async with await AsyncConnection.connect(target.conninfo) as conn, conn.transaction():
            await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            await conn.execute(
                "SELECT set_config('request.jwt.claims', %s, true),"
                " set_config('request.method', %s, true),"
                " set_config('statement_timeout', %s, true)",
                (json.dumps(claims), request.method, _STATEMENT_TIMEOUT),
            )
            table = await _table(conn, schema, request.path)
            if reading:
                reply = await _read(conn, table, target, request.query, prefer)
            else:
                reply = await _write(conn, table, request, prefer)
            if headers.get("accept", "").startswith(_SINGLE):
                reply = _single(reply)  # raises, so a write is rolled back
            target.count_sent(len(reply.body))
            return reply
    except psycopg.OperationalError as exc:
        if exc.sqlstate is None:
            raise PostgrestError(
                503, "PGRST001", "the database is not reachable", str(exc).strip()[:300]
            ) from None
        raise _from_postgres(exc, anonymous=False) from None
    except psycopg.Error as exc:
        raise _from_postgres(exc, anonymous=role == target.anonymous_role) from None


def _from_postgres(exc: psycopg.Error, *, anonymous: bool) -> PostgrestError:
    code = exc.sqlstate or "XX000"
    status = _STATUS_BY_CODE.get(code) or _STATUS_BY_CLASS.get(code[:2], 500)
    if code == "42501" and anonymous:
        status = 401  # PostgREST: "permission denied" asks an anonymous client to sign in
    diag = exc.diag
    return PostgrestError(
        status, code, diag.message_primary or str(exc), diag.message_detail, diag.message_hint
    )


async def _table(conn: AsyncConnection[Any], schema: str, name: str) -> Table:
    cur = await conn.execute(
        """SELECT c.oid, a.attname
             FROM pg_class c
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'v', 'm', 'f', 'p')
            ORDER BY a.attnum""",
        (schema, name),
    )
    rows = await cur.fetchall()
    if not rows:
        raise PostgrestError(
            404,
            "PGRST205",
            f"Could not find the table '{schema}.{name}' in the schema cache",
        )
    cur = await conn.execute(
        """SELECT a.attname FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
            WHERE i.indrelid = %s AND i.indisprimary""",
        (rows[0][0],),
    )
    return Table(schema, name, [str(r[1]) for r in rows], [str(r[0]) for r in await cur.fetchall()])


async def _read(
    conn: AsyncConnection[Any],
    table: Table,
    target: DataApiTarget,
    query: list[tuple[str, str]],
    prefer: Prefer,
) -> Reply:
    params = dict(query)
    projection = select_list(table, params.get("select"))
    args: list[str] = []
    where = filters(table, query, args, qualify=False)
    limit = non_negative(params, "limit")
    offset = non_negative(params, "offset") or 0
    if target.max_rows is not None:
        limit = target.max_rows if limit is None else min(limit, target.max_rows)
    statement = sql.SQL(
        "SELECT row_to_json(pgrst_row)::text FROM "
        "(SELECT {} FROM {} WHERE {}{} LIMIT {} OFFSET {}) pgrst_row"
    ).format(
        projection,
        table.ident,
        where,
        order_by(table, params.get("order")),
        sql.Literal(limit) if limit is not None else sql.SQL("ALL"),
        sql.Literal(offset),
    )
    rows, cut = await _rows_within(conn, statement, args, MAX_RESPONSE_BYTES)
    returned = len(rows)
    rows_json = b"[" + b",".join(rows) + b"]"
    total: int | None = None
    if prefer.count:
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {}").format(table.ident, where), args
        )
        counted = await cur.fetchone()
        total = int(counted[0]) if counted else 0
    shown = "*" if returned == 0 else f"{offset}-{offset + returned - 1}"
    partial = cut or (total is not None and returned < total)
    return Reply(
        206 if partial else 200,
        rows_json,
        {"Content-Range": f"{shown}/{'*' if total is None else total}"},
    )


async def _rows_within(
    conn: AsyncConnection[Any], statement: sql.Composed, args: list[str], budget: int
) -> tuple[list[bytes], bool]:
    """Each row's JSON, read through a server-side cursor until the next row would take the
    total past `budget` bytes; and whether rows were left unread. A first row alone past it
    is an error: no page could hold it."""
    rows: list[bytes] = []
    size = 2  # the brackets
    async with conn.cursor(name="pgrst_read") as cur:
        await cur.execute(statement, args)
        while chunk := await cur.fetchmany(_FETCH_ROWS):
            for (text,) in chunk:
                data = str(text).encode()
                size += len(data) + 1
                if size > budget:
                    if not rows:
                        raise PostgrestError(
                            400,
                            "54000",
                            f"a row is larger than the {budget // 2**20} MiB a response may hold",
                            None,
                            "select fewer or smaller columns",
                        )
                    return rows, True
                rows.append(data)
    return rows, False


async def _write(
    conn: AsyncConnection[Any], table: Table, request: RestRequest, prefer: Prefer
) -> Reply:
    method, query = request.method, request.query
    params = dict(query)
    payload = json_body(request.body) if method in {"POST", "PATCH"} else None
    args: list[str] = []
    statement: sql.Composable | None
    if method == "POST":
        statement = insert_statement(table, params, payload, prefer, args)
        status = 201
    elif method == "PATCH":
        statement = update_statement(table, query, payload, args)
        status = 200 if prefer.representation else 204
    else:
        statement = sql.SQL("DELETE FROM {} WHERE {} RETURNING {}.*").format(
            table.ident, filters(table, query, args, qualify=True), table.ident
        )
        status = 200 if prefer.representation else 204
    if statement is None:
        return Reply(status, b"[]" if prefer.representation else b"", {"Content-Range": "*/0"})
    projection = select_list(table, params.get("select")) if prefer.representation else sql.SQL("1")
    wrapped = sql.SQL(
        "WITH pgrst_source AS ({}) SELECT coalesce(json_agg(pgrst_row), '[]')::text, count(*)"
        " FROM (SELECT {} FROM pgrst_source) pgrst_row"
    ).format(statement, projection)
    cur = await conn.execute(wrapped, args)
    row = await cur.fetchone()
    rows_json, affected = (str(row[0]), int(row[1])) if row else ("[]", 0)
    headers = {"Content-Range": f"*/{affected if prefer.count else '*'}"}
    if not prefer.representation:
        return Reply(status if method == "POST" else 204, b"", headers)
    return Reply(status, rows_json.encode(), headers)


def _single(reply: Reply) -> Reply:
    rows = json.loads(reply.body or b"[]")
    if len(rows) != 1:
        raise PostgrestError(
            406,
            "PGRST116",
            "JSON object requested, multiple (or no) rows returned",
            f"The result contains {len(rows)} rows",
        )
    return Reply(reply.status, json.dumps(rows[0]).encode(), reply.headers)
