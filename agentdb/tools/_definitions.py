"""The agent's tools, one definition each: the name, the description an LLM reads to decide
when to call it, the pydantic model of its input (the source of every JSON schema and of the
dispatcher's validation) and the handler, which calls the SDK exactly as a REST client would.

Results are compact JSON without secrets: connection URIs never reach the agent. No tool
deletes the session or a checkpoint or turns Neon Auth or the Data API off: those are the
platform's calls (a user or admin token). Each tool names the least token mode that may call it
(`read_only` for the reading tools and run_sql, whose SQL a read-only token runs read-only;
`read_write` for the rest), and a toolbox offers only what its token's mode allows.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from agentdb.sdk import (
    AgentDB,
    Auth,
    Branch,
    Checkpoint,
    ConflictError,
    DataApi,
    Diff,
    Extension,
    InvalidRequestError,
    Role,
    Session,
    SqlResult,
    Usage,
)
from agentdb.wire import (
    MAX_CODE_REF,
    MAX_ROLE_NAME,
    MAX_SQL_ROWS,
    MAX_SQL_TIMEOUT_SECONDS,
    ROLE_NAME_PATTERN,
    SessionStatus,
    TokenMode,
)

#: Most rows and longest timeout one SQL call may ask for (the API's own limits).
MAX_ROWS = MAX_SQL_ROWS
MAX_TIMEOUT_SECONDS = MAX_SQL_TIMEOUT_SECONDS
SESSION_ID_DESCRIPTION = "The agent session whose database to work on."
#: Who owns the sessions the admin token's `create_session` opens when it names no user.
LOCAL_USER = "mcp@agentdb.local"


class ToolInput(BaseModel):
    """Every tool's input: unknown arguments are refused (a typo is named, not ignored), and
    `session_id` is filled in by a toolbox bound to one session."""

    model_config = ConfigDict(extra="forbid")

    session_id: uuid.UUID | None = Field(default=None, description=SESSION_ID_DESCRIPTION)


class RunSql(ToolInput):
    sql: str = Field(
        min_length=1,
        description="SQL to run. Several statements separated by ';' are allowed when `params` "
        "is not given; the result is the last statement's.",
    )
    params: list[JsonValue] | None = Field(
        default=None,
        description="Values for $1, $2, ... in `sql` (then `sql` must be one statement).",
    )
    max_rows: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ROWS,
        description="Most rows to return (default: the server's, usually 1000).",
    )
    timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        le=MAX_TIMEOUT_SECONDS,
        description="Statement timeout (default: the server's, usually 30 s).",
    )


class ReadSql(RunSql):
    """run_sql's input for a read-only token: one statement, which never writes."""

    sql: str = Field(
        min_length=1,
        description="One SQL statement that reads: SELECT, WITH ... SELECT, EXPLAIN, SHOW. "
        "It runs in a read-only transaction that is rolled back, so it never changes "
        "anything; a statement that would write fails.",
    )


class CreateCheckpoint(ToolInput):
    label: str | None = Field(
        default=None, description="Short name for this state, e.g. 'users table created'."
    )
    message: str | None = Field(
        default=None, description="What you just did and why (your step or the user's prompt)."
    )
    metadata: dict[str, JsonValue] | None = Field(
        default=None, description="Free-form JSON to keep with it, e.g. {'commit': 'abc123'}."
    )
    code_ref: str | None = Field(
        default=None,
        max_length=MAX_CODE_REF,
        description="The code this database state goes with, e.g. the git commit of the app "
        "you are generating ('git:4f2a9c1'): restoring the checkpoint returns it as "
        "`restored_code_ref`, so the code can be put back to match.",
    )


class NoArguments(ToolInput):
    pass


class OneCheckpoint(ToolInput):
    checkpoint_id: uuid.UUID = Field(description="The checkpoint's id (see list_checkpoints).")


class PreviewCheckpoint(OneCheckpoint):
    ttl_seconds: int | None = Field(
        default=None, gt=0, description="Lifetime of the preview (default: the server's, a day)."
    )


class DiffCheckpoints(OneCheckpoint):
    against: str = Field(
        default="HEAD",
        description="'HEAD' (the live database as it is now, the default) or another "
        "checkpoint's id.",
    )


class CreateBranch(ToolInput):
    name: str | None = Field(default=None, description="A name for the branch.")
    checkpoint_id: uuid.UUID | None = Field(
        default=None,
        description="Copy this checkpoint (default: the live database as it is now).",
    )
    ttl_seconds: int | None = Field(
        default=None, gt=0, description="Lifetime of the branch (default: the server's, a day)."
    )


class OneBranch(ToolInput):
    branch_id: uuid.UUID = Field(description="The branch's id (from create_branch).")


class CreateRole(ToolInput):
    name: str = Field(
        min_length=1,
        max_length=MAX_ROLE_NAME,
        pattern=ROLE_NAME_PATTERN,
        description="The role's name: lowercase letters, digits and '_', e.g. 'app_user'.",
    )


class EnableDataApi(ToolInput):
    add_default_grants: bool = Field(
        default=True,
        description="Grant signed-in users (role `authenticated`) SELECT, INSERT, UPDATE and "
        "DELETE on the public schema's tables, now and later (default true). With false, "
        "GRANT what the API may reach yourself.",
    )


class PlatformInput(BaseModel):
    """Input of a platform tool: it works on no one session, so it takes no `session_id`."""

    model_config = ConfigDict(extra="forbid")


class CreateSession(PlatformInput):
    name: str | None = Field(default=None, description="A name for the session.")
    user_id: uuid.UUID | None = Field(
        default=None,
        description="The user who owns it. With a user token, leave it out (yours). With "
        f"the admin token (embedded `agentdb mcp`), leave it out to use the user {LOCAL_USER}.",
    )


class ListSessions(PlatformInput):
    status: SessionStatus | None = Field(
        default=None, description="Only sessions in this status (default: all but deleted)."
    )


InputT = TypeVar("InputT", bound=ToolInput)
Handler = Callable[[AgentDB, uuid.UUID, InputT], Awaitable[JsonValue]]
PlatformInputT = TypeVar("PlatformInputT", bound=PlatformInput)
PlatformHandler = Callable[[AgentDB, PlatformInputT], Awaitable[JsonValue]]


@dataclass(frozen=True, slots=True)
class Tool(Generic[InputT]):
    """One tool: what the agent sees (`name`, `description`, the schema of `input_model`) and
    what runs (`handler`, given the SDK client, the session and the validated input).
    `read_only` tools change nothing; `destructive` ones can lose data of the live database or
    a branch (MCP clients may ask the user first); calling an `idempotent` one again with the
    same arguments changes nothing more. `mode` is the least token mode that may call it;
    `read_only_variant` is how a tool that may write reads to a read-only token, whose calls
    of it the API keeps from writing (run_sql)."""

    name: str
    description: str
    input_model: type[InputT]
    handler: Handler[InputT]
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False
    mode: TokenMode = TokenMode.READ_WRITE
    read_only_variant: Tool[InputT] | None = None

    def for_mode(self, mode: TokenMode) -> Tool[InputT] | None:
        """The tool as a token of `mode` gets it, or None when that token may not call it."""
        if not mode.allows(self.mode):
            return None
        if mode == TokenMode.READ_ONLY and not self.read_only:
            return self.read_only_variant
        return self


@dataclass(frozen=True, slots=True)
class PlatformTool(Generic[PlatformInputT]):
    """A tool for the platform's tokens (admin or user), which work on no one session: opening
    and listing sessions. A toolbox bound to a session (a session token) never offers them."""

    name: str
    description: str
    input_model: type[PlatformInputT]
    handler: PlatformHandler[PlatformInputT]
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False
    mode: TokenMode = TokenMode.READ_WRITE

    def for_mode(self, mode: TokenMode) -> PlatformTool[PlatformInputT] | None:
        return self if mode.allows(self.mode) else None


# --- results: compact, no secrets -----------------------------------------------------------


def session_result(session: Session) -> dict[str, JsonValue]:
    out: dict[str, JsonValue] = {
        "id": str(session.id),
        "name": session.name,
        "status": session.status.value,
        "head_checkpoint_id": _id(session.head_checkpoint_id),
        "database_name": session.database_name,
        "created_at": session.created_at.isoformat(),
    }
    if session.error:
        out["error"] = session.error
    return out


def checkpoint_result(checkpoint: Checkpoint) -> dict[str, JsonValue]:
    out: dict[str, JsonValue] = {
        "id": str(checkpoint.id),
        "parent_id": _id(checkpoint.parent_id),
        "status": checkpoint.status.value,
        "label": checkpoint.label,
        "message": checkpoint.message,
        "taken_at": None if checkpoint.taken_at is None else checkpoint.taken_at.isoformat(),
        "size_bytes": checkpoint.size_bytes,
    }
    if checkpoint.code_ref is not None:
        out["code_ref"] = checkpoint.code_ref
    if checkpoint.metadata:
        out["metadata"] = checkpoint.metadata
    if checkpoint.error:
        out["error"] = checkpoint.error
    return out


def branch_result(branch: Branch) -> dict[str, JsonValue]:
    out: dict[str, JsonValue] = {
        "id": str(branch.id),
        "kind": branch.kind.value,
        "name": branch.name,
        "status": branch.status.value,
        "source_checkpoint_id": _id(branch.source_checkpoint_id),
        "expires_at": None if branch.expires_at is None else branch.expires_at.isoformat(),
    }
    if branch.error:
        out["error"] = branch.error
    return out


def role_result(role: Role) -> dict[str, JsonValue]:
    # Never the connection URI: the app's platform fetches that with its own token.
    return {"name": role.name, "sql_name": role.sql_name, "owner": role.owner}


def extension_result(extension: Extension) -> dict[str, JsonValue]:
    return {
        "name": extension.name,
        "installed_version": extension.installed_version,
        "installable": extension.installable,
    }


def sql_result(result: SqlResult) -> dict[str, JsonValue]:
    return {
        "command": result.command,
        "columns": [{"name": c.name, "type": c.type} for c in result.columns],
        "rows": list(result.rows),
        "row_count": result.row_count,
        "truncated": result.truncated,
    }


def diff_result(diff: Diff) -> dict[str, JsonValue]:
    """The summary, and only the tables that differ in some way (schema, row count or data)."""
    tables: list[JsonValue] = [
        t.model_dump(mode="json", exclude_defaults=True)
        for t in diff.tables
        if t.change != "unchanged" or t.rows_from != t.rows_to or t.data_changed
    ]
    return {
        "from_checkpoint_id": str(diff.from_checkpoint_id),
        "to": "HEAD" if diff.to_checkpoint_id is None else str(diff.to_checkpoint_id),
        "summary": diff.summary.model_dump(mode="json"),
        "tables": tables,
        "objects": [o.model_dump(mode="json") for o in diff.objects],
    }


def auth_result(auth: Auth) -> dict[str, JsonValue]:
    """Neon Auth's URLs and publishable key; the server key never reaches the agent."""
    out: dict[str, JsonValue] = {"enabled": auth.enabled, "status": auth.status.value}
    if auth.enabled and auth.base_url:
        out |= {
            "provider": auth.provider,
            "base_url": auth.base_url,
            "jwks_url": auth.jwks_url,
            "sign_up_url": f"{auth.base_url}/sign-up/email",
            "sign_in_url": f"{auth.base_url}/sign-in/email",
            "users_table": "neon_auth.users_sync",
            "pub_client_key": auth.pub_client_key,
        }
    if auth.error:
        out["error"] = auth.error
    return out


def data_api_result(api: DataApi) -> dict[str, JsonValue]:
    out: dict[str, JsonValue] = {"enabled": api.enabled, "status": api.status.value}
    if api.enabled:
        out |= {
            "url": api.url,
            "jwks_url": api.jwks_url,
            "schemas": list(api.schemas),
            "default_grants": api.default_grants,
        }
    if api.error:
        out["error"] = api.error
    return out


def usage_result(usage: Usage) -> dict[str, JsonValue]:
    period = usage.periods[0] if usage.periods else None
    return {
        "tier": usage.tier,
        "period_start": period.period_start.isoformat() if period else None,
        "period_end": period.period_end.isoformat() if period else None,
        "polled_at": usage.polled_at.isoformat() if usage.polled_at else None,
        "metrics": [
            {
                "metric": m.metric,
                "unit": m.unit,
                "value": m.value,
                "quota": m.quota,
                "used_fraction": m.used_fraction,
            }
            for m in (period.metrics if period else [])
        ],
    }


def _id(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)


# --- handlers -------------------------------------------------------------------------------


async def run_sql(db: AgentDB, session_id: uuid.UUID, args: RunSql) -> JsonValue:
    result = await db.sql(
        session_id,
        args.sql,
        args.params,
        max_rows=args.max_rows,
        timeout_seconds=args.timeout_seconds,
    )
    return sql_result(result)


async def create_checkpoint(
    db: AgentDB, session_id: uuid.UUID, args: CreateCheckpoint
) -> JsonValue:
    checkpoint = await db.create_checkpoint(
        session_id,
        label=args.label,
        message=args.message,
        metadata=args.metadata,
        code_ref=args.code_ref,
    )
    return checkpoint_result(checkpoint)


async def list_checkpoints(db: AgentDB, session_id: uuid.UUID, _: NoArguments) -> JsonValue:
    tree = await db.list_checkpoints(session_id)
    return {
        "head_id": _id(tree.head_id),
        "checkpoints": [checkpoint_result(c) for c in tree.checkpoints],
    }


async def restore_checkpoint(db: AgentDB, session_id: uuid.UUID, args: OneCheckpoint) -> JsonValue:
    session = await db.restore_checkpoint(session_id, args.checkpoint_id)
    # None too: "this checkpoint named no code" is an answer the agent acts on.
    return session_result(session) | {"restored_code_ref": session.restored_code_ref}


async def preview_checkpoint(
    db: AgentDB, session_id: uuid.UUID, args: PreviewCheckpoint
) -> JsonValue:
    branch = await db.preview_checkpoint(
        session_id, args.checkpoint_id, ttl_seconds=args.ttl_seconds
    )
    return branch_result(branch)


async def diff_checkpoints(db: AgentDB, session_id: uuid.UUID, args: DiffCheckpoints) -> JsonValue:
    return diff_result(await db.diff_checkpoints(session_id, args.checkpoint_id, args.against))


async def create_branch(db: AgentDB, session_id: uuid.UUID, args: CreateBranch) -> JsonValue:
    branch = await db.create_branch(
        session_id, name=args.name, checkpoint_id=args.checkpoint_id, ttl_seconds=args.ttl_seconds
    )
    return branch_result(branch)


async def reset_branch(db: AgentDB, session_id: uuid.UUID, args: OneBranch) -> JsonValue:
    return branch_result(await db.reset_branch(session_id, args.branch_id))


async def delete_branch(db: AgentDB, session_id: uuid.UUID, args: OneBranch) -> JsonValue:
    return branch_result(await db.delete_branch(session_id, args.branch_id))


async def get_session(db: AgentDB, session_id: uuid.UUID, _: NoArguments) -> JsonValue:
    return session_result(await db.get_session(session_id))


async def enable_auth(db: AgentDB, session_id: uuid.UUID, _: NoArguments) -> JsonValue:
    return auth_result(await db.enable_auth(session_id))


async def get_usage(db: AgentDB, session_id: uuid.UUID, _: NoArguments) -> JsonValue:
    return usage_result(await db.get_session_usage(session_id, periods=1))


async def enable_data_api(db: AgentDB, session_id: uuid.UUID, args: EnableDataApi) -> JsonValue:
    return data_api_result(
        await db.enable_data_api(session_id, add_default_grants=args.add_default_grants)
    )


async def create_role(db: AgentDB, session_id: uuid.UUID, args: CreateRole) -> JsonValue:
    return role_result(await db.create_role(session_id, args.name))


async def list_roles(db: AgentDB, session_id: uuid.UUID, _: NoArguments) -> JsonValue:
    return {"roles": [role_result(r) for r in await db.list_roles(session_id)]}


async def list_extensions(db: AgentDB, session_id: uuid.UUID, _: NoArguments) -> JsonValue:
    return {"extensions": [extension_result(e) for e in await db.list_extensions(session_id)]}


async def create_session(db: AgentDB, args: CreateSession) -> JsonValue:
    try:
        session = await db.create_session(user_id=args.user_id, name=args.name)
    except InvalidRequestError as exc:
        if args.user_id is not None or "user_id" not in exc.fields:
            raise
        # The admin token must name an owner: embedded, that is agentdb's local user.
        session = await db.create_session(user_id=await _local_user(db), name=args.name)
    return session_result(session)


async def _local_user(db: AgentDB) -> uuid.UUID:
    try:
        return (await db.create_user(LOCAL_USER, name="agentdb mcp")).id
    except ConflictError:
        after = None
        while page := await db.list_users(after=after):
            for user in page:
                if user.email == LOCAL_USER:
                    return user.id
            after = page[-1].id
        raise


async def list_sessions(db: AgentDB, args: ListSessions) -> JsonValue:
    found = await db.list_sessions(status=None if args.status is None else args.status.value)
    return {"sessions": [session_result(s) for s in found]}


# --- the tools, as the agent reads them -------------------------------------------------------

TOOLS: tuple[Tool[Any], ...] = (
    Tool(
        "run_sql",
        "Run SQL on the session's own PostgreSQL database (PostgreSQL 18) and get the "
        "result: DDL, inserts, updates, queries. It runs as the session's own role, which "
        "owns the database's schema but is not a superuser: CREATE EXTENSION works for the "
        "common ones (vector, pg_trgm, citext, hstore, btree_gist, unaccent, uuid-ossp, "
        "pgcrypto, ...; list_extensions shows them all), CREATE ROLE does not (use "
        "create_role, then GRANT to its sql_name), and a session has one database (for a "
        "copy use create_branch). Each call is one transaction: if any statement fails, "
        "nothing of the call is kept. Pass values as parameters $1, $2, ... in `params` "
        "rather than pasting them into the SQL. At most `max_rows` rows come back "
        "(`truncated` says when more existed) and every statement has a timeout. After each "
        "meaningful change (a migration, a data load, a fix), call create_checkpoint so you "
        "can go back to it.",
        RunSql,
        run_sql,
        destructive=True,
        # A read-only token calls it too: the API runs its SQL read-only, rolled back.
        mode=TokenMode.READ_ONLY,
        read_only_variant=Tool(
            "run_sql",
            "Query the session's own PostgreSQL database (PostgreSQL 18), read-only: this "
            "connection may read but never change anything. Each call is ONE statement "
            "(SELECT, WITH ... SELECT, EXPLAIN, SHOW), run in a read-only transaction that is "
            "always rolled back, so it never writes: INSERT, UPDATE, DELETE, DDL, sequences "
            "and functions that write fail (SQLSTATE 25006). Pass values as parameters $1, "
            "$2, ... in `params` rather than pasting them into the SQL. At most `max_rows` "
            "rows come back (`truncated` says when more existed) and every statement has a "
            "timeout. Tables and columns: query information_schema or pg_catalog.",
            ReadSql,
            run_sql,
            read_only=True,
            idempotent=True,
            mode=TokenMode.READ_ONLY,
        ),
    ),
    Tool(
        "create_checkpoint",
        "Save the database as it is now, as a checkpoint you can restore later. Call it after "
        "every meaningful step (schema change, data load, finished task) and before anything "
        "risky; give it a label and a message saying what the step did. Checkpoints form a "
        "tree: the new one becomes the head, a child of the previous head. Takes about a "
        "second; the database is paused briefly while it is taken.",
        CreateCheckpoint,
        create_checkpoint,
    ),
    Tool(
        "list_checkpoints",
        "List the session's checkpoints, oldest first, each with its parent, label and "
        "message, and `head_id`: the checkpoint the live database descends from now. After a "
        "restore, history forks: every checkpoint stays listed and restorable.",
        NoArguments,
        list_checkpoints,
        read_only=True,
        mode=TokenMode.READ_ONLY,
    ),
    Tool(
        "restore_checkpoint",
        "Put the session's database back to a checkpoint, in place: all data and schema "
        "become exactly what they were when it was taken, and everything since is gone from "
        "the live database. The connection string stays the same (open connections are "
        "closed; reconnect). Later checkpoints are kept and stay restorable, so a restore can "
        "be undone by restoring a later one; the next checkpoint you create hangs under the "
        "restored one. Use diff_checkpoints first to see what would change. Checkpoints are "
        "never deleted by the agent (only the platform can), so every one stays restorable.",
        OneCheckpoint,
        restore_checkpoint,
        destructive=True,
    ),
    Tool(
        "preview_checkpoint",
        "Open a checkpoint as a separate copy (a preview branch) without touching the live "
        "database, e.g. for the user or the platform to look at an earlier state. "
        "It is a different database from the one run_sql works on, and it expires on its own "
        "(`expires_at`); delete it with delete_branch when done.",
        PreviewCheckpoint,
        preview_checkpoint,
    ),
    Tool(
        "diff_checkpoints",
        "Compare a checkpoint with the live database ('HEAD') or with another checkpoint: "
        "tables, columns, indexes and constraints added, removed or changed, views, types and "
        "functions that differ, and row counts. Only tables that differ are listed. Changes "
        "nothing.",
        DiffCheckpoints,
        diff_checkpoints,
        read_only=True,
        mode=TokenMode.READ_ONLY,
    ),
    Tool(
        "create_branch",
        "Make a dev branch: a separate, writable copy of the live database as it is now, or "
        "of a checkpoint, for trying something without touching the live database. It is a "
        "different database from the one run_sql works on, and it expires on its own "
        "(`expires_at`). To change the live database, use run_sql and restore_checkpoint "
        "instead.",
        CreateBranch,
        create_branch,
    ),
    Tool(
        "reset_branch",
        "Put a dev or preview branch back to where it started (the database it was copied "
        "from, or its checkpoint); what was written on the branch is gone. The live database "
        "is not touched.",
        OneBranch,
        reset_branch,
        destructive=True,
    ),
    Tool(
        "delete_branch",
        "Delete a dev or preview branch and its database. The live database and the "
        "checkpoints are not touched.",
        OneBranch,
        delete_branch,
        destructive=True,
        idempotent=True,
    ),
    Tool(
        "list_extensions",
        "List the PostgreSQL extensions the session's server offers: for each, whether it is "
        "installed in the session's database and whether you may install it with "
        "CREATE EXTENSION (run_sql).",
        NoArguments,
        list_extensions,
        read_only=True,
        mode=TokenMode.READ_ONLY,
    ),
    Tool(
        "create_role",
        "Create a login role in the session's database, e.g. a separate user for the app "
        "(CREATE ROLE in SQL is refused: roles are made here). It may connect and create "
        "objects; GRANT it what it should read or write with run_sql, naming it by the "
        "`sql_name` this returns (the same as `name` on Neon). Its password is not shown to "
        "you: the platform gets the role's connection string.",
        CreateRole,
        create_role,
    ),
    Tool(
        "list_roles",
        "List the roles of the session's database, the session's own first, each with the "
        "`sql_name` to use in GRANT statements.",
        NoArguments,
        list_roles,
        read_only=True,
        mode=TokenMode.READ_ONLY,
    ),
    Tool(
        "get_session",
        "Show the session: its status (ready, checkpointing, restoring ...), its database's "
        "name and its head checkpoint (the one the live database descends from).",
        NoArguments,
        get_session,
        read_only=True,
        mode=TokenMode.READ_ONLY,
    ),
    Tool(
        "get_usage",
        "Show what the session's database consumed this billing period against its plan's "
        "quotas: active and compute time (seconds), data written and transferred, and its "
        "size (bytes), each with `quota` and `used_fraction` (null: no quota). Figures are "
        "polled from the control plane every 15 minutes, so they lag. Over a time or transfer "
        "quota the database stops accepting connections; over the size quota writes fail: "
        "free space (restore a smaller checkpoint) or ask the user to upgrade.",
        NoArguments,
        get_usage,
        read_only=True,
        mode=TokenMode.READ_ONLY,
    ),
    Tool(
        "enable_auth",
        "Turn on sign-up and sign-in (Neon Auth, managed Better Auth) for the app you are "
        "building; calling it again just returns the current state. You get `base_url` (what "
        "the app's auth client needs; email sign-up is POST {base_url}/sign-up/email with "
        "{email, password, name}, sign-in POST {base_url}/sign-in/email), and `jwks_url`, "
        "the public keys that verify the JWTs it issues (the user's id is the `sub` claim). "
        "Signed-up users appear in the table neon_auth.users_sync (id, email, name, ...) of "
        "the session's database, readable with run_sql; don't add foreign keys into it. "
        "Auth and its users survive checkpoints and restores. Turning it off is not a tool: "
        "that is the platform's call.",
        NoArguments,
        enable_auth,
        idempotent=True,
    ),
    Tool(
        "enable_data_api",
        "Serve the session's database as a REST API (PostgREST-compatible: GET/POST/PATCH/"
        "DELETE {url}/{table} with filters like ?id=eq.1, select, order, limit) for the app's "
        "frontend; turns on enable_auth's sign-in too. Calling it again returns the current "
        "state. You get `url` and `jwks_url`. A request with `Authorization: Bearer <JWT "
        "from sign-in>` runs as role `authenticated` with the token's claims in "
        "current_setting('request.jwt.claims'); `auth.user_id()` returns the user's id "
        "(text). Without a token it runs as `anonymous`. Protect per-user rows with row-level "
        "security, e.g. ALTER TABLE todos ENABLE ROW LEVEL SECURITY; CREATE POLICY own ON todos "
        "TO authenticated USING (user_id = auth.user_id()) WITH CHECK (user_id = "
        "auth.user_id()). Schema changes made with run_sql are picked up automatically. "
        "Survives checkpoints and restores; turning it off is the platform's call, not a tool.",
        EnableDataApi,
        enable_data_api,
        idempotent=True,
    ),
)

PLATFORM_TOOLS: tuple[PlatformTool[Any], ...] = (
    PlatformTool(
        "create_session",
        "Open a new agent session: its own PostgreSQL database, with a root checkpoint. "
        "Returns its id: pass it as `session_id` to the other tools.",
        CreateSession,
        create_session,
    ),
    PlatformTool(
        "list_sessions",
        "List the agent sessions this token reaches, oldest first, each with its id, name and "
        "status: pass an id as `session_id` to the other tools.",
        ListSessions,
        list_sessions,
        read_only=True,
        mode=TokenMode.READ_ONLY,
    ),
)
