"""Request bodies and response shapes of the REST API. Bodies refuse unknown fields, so a typo
is an error that names it rather than a value silently ignored, and take values only of their
own JSON type: `true` is not a number, "5" is not 5. Numbers are bounded, text and JSON may not
hold NUL characters (PostgreSQL's text and jsonb cannot store them) and JSON nests at most
`MAX_JSON_DEPTH` levels."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, JsonValue

from ._enums import TokenMode
from ._limits import MAX_SQL_ROWS, MAX_SQL_TIMEOUT_SECONDS
from ._views import (
    AuthUserView,
    AuthView,
    BranchView,
    CheckpointView,
    EventView,
    ExtensionView,
    OAuthProviderView,
    RoleView,
    SessionView,
    TierChangeView,
    TokenView,
    UserView,
)

#: Longest `code_ref` a checkpoint keeps (a commit hash, a build id, a tag).
MAX_CODE_REF = 200
#: Ten years: long-lived tokens are the platform's choice, endless ones are not offered.
MAX_TTL_SECONDS = 10 * 365 * 86_400
#: A year: more than any branch lives (the service's own maximum is lower), small enough that
#: no date computed from it overflows.
MAX_BRANCH_TTL_SECONDS = 365 * 86_400
#: Deeper JSON in `params` or `metadata` is refused (nothing legitimate nests that far, and
#: every recursive walk of it would cost stack).
MAX_JSON_DEPTH = 32
NUL_MESSAGE = "must not contain NUL characters (\\u0000): PostgreSQL cannot store them"


def _whole_number(value: object) -> object:
    # Litestar validates bodies in pydantic's lax mode, which turns true into 1 and "5" into 5.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number (not a string, a boolean or a fraction)")  # noqa: TRY004 - pydantic's way to fail a value
    return value


def _number(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number (not a string or a boolean)")  # noqa: TRY004
    return value


def _boolean(value: object) -> object:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")  # noqa: TRY004
    return value


def _text(value: str) -> str:
    if "\x00" in value:
        raise ValueError(NUL_MESSAGE)
    return value


def _json(value: object) -> object:
    """Walks a JSON document without recursion: at most `MAX_JSON_DEPTH` levels, no NUL in
    any string or key."""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, dict | list) and depth > MAX_JSON_DEPTH:
            raise ValueError(f"must not nest deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(node, dict):
            for key, item in node.items():
                if isinstance(key, str) and "\x00" in key:
                    raise ValueError(NUL_MESSAGE)
                pending.append((item, depth + 1))
        elif isinstance(node, list):
            pending.extend((item, depth + 1) for item in node)
        elif isinstance(node, str) and "\x00" in node:
            raise ValueError(NUL_MESSAGE)
    return value


WholeNumber = Annotated[int, BeforeValidator(_whole_number)]
Number = Annotated[float, BeforeValidator(_number)]
Boolean = Annotated[bool, BeforeValidator(_boolean)]
Text = Annotated[str, AfterValidator(_text)]
JsonObject = Annotated[dict[str, JsonValue], BeforeValidator(_json)]
JsonList = Annotated[list[JsonValue], BeforeValidator(_json)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateUser(Body):
    email: Text = Field(max_length=254)
    name: Text | None = None
    tier: Text | None = None


class ChangeTier(Body):
    tier: Text = Field(max_length=32, description="The tier to move the user to.")


class TierChangeList(BaseModel):
    tier_changes: list[TierChangeView]


class CreateToken(Body):
    name: Text | None = None
    mode: TokenMode | None = Field(
        default=None,
        description="A session token's mode: read_only, read_write (the default) or full. "
        "User tokens are full.",
    )
    ttl_seconds: WholeNumber | None = Field(
        default=None,
        gt=0,
        le=MAX_TTL_SECONDS,
        description="Lifetime in seconds. Default: none for user tokens, the server's "
        "AGENTDB_SESSION_TOKEN_TTL_S (a day) for session tokens, which may not live longer "
        "than AGENTDB_SESSION_TOKEN_MAX_TTL_S.",
    )


class CreateSession(Body):
    user_id: uuid.UUID | None = Field(
        default=None, description="Required with the admin token; a user token creates its own."
    )
    name: Text | None = None


class RunSql(Body):
    sql: Text
    params: JsonList | None = Field(
        default=None, description="Values for $1, $2, ... (one statement only when given)."
    )
    max_rows: WholeNumber | None = Field(default=None, ge=1, le=MAX_SQL_ROWS)
    timeout_seconds: Number | None = Field(default=None, gt=0, le=MAX_SQL_TIMEOUT_SECONDS)


class CreateCheckpoint(Body):
    label: Text | None = None
    message: Text | None = Field(default=None, description="The agent's message or prompt.")
    metadata: JsonObject | None = Field(
        default=None, description="Free-form JSON, e.g. {'commit': '...'}."
    )
    code_ref: Text | None = Field(
        default=None,
        max_length=MAX_CODE_REF,
        description="The generated code this state goes with (a git commit, a build id): a "
        "restore answers it, so the platform can check out the matching code.",
    )


class CreateBranch(Body):
    name: Text | None = None
    checkpoint_id: uuid.UUID | None = Field(
        default=None, description="Start from this checkpoint (default: the live database now)."
    )
    ttl_seconds: WholeNumber | None = Field(default=None, gt=0, le=MAX_BRANCH_TTL_SECONDS)


#: A role name agentdb creates: lowercase, so SQL needs no quotes; short enough for the local
#: plane's suffix to keep it within PostgreSQL's 63 bytes.
ROLE_NAME_PATTERN = r"^[a-z_][a-z0-9_]*$"
MAX_ROLE_NAME = 40


class CreateRole(Body):
    name: str = Field(
        min_length=1,
        max_length=MAX_ROLE_NAME,
        pattern=ROLE_NAME_PATTERN,
        description="The role's name: lowercase letters, digits and '_', not starting with a "
        "digit, e.g. 'app_user'.",
    )


class CreatePreview(Body):
    ttl_seconds: WholeNumber | None = Field(default=None, gt=0, le=MAX_BRANCH_TTL_SECONDS)


class TokenOut(TokenView):
    """A new bearer token: the token's view and, this once, the token itself."""

    token: str = Field(description="The bearer token; shown this once and stored nowhere.")


class TokenList(BaseModel):
    """Tokens without their secrets: what a platform needs to tell them apart and revoke them."""

    tokens: list[TokenView]
    next_after: uuid.UUID | None = Field(
        description="Pass as `after` for the next page; null when this page was the last."
    )


class SessionOut(SessionView):
    connection_uri: str | None = Field(
        default=None, description="Only for admin and user tokens, never for session tokens."
    )
    restored_code_ref: str | None = Field(
        default=None,
        description="After a restore: the `code_ref` of the checkpoint it put back (check out "
        "that code).",
    )
    extensions: list[ExtensionView] | None = Field(
        default=None,
        description="With `?include=extensions`: the extensions the server offers, installed "
        "or installable (reads the database, so it wakes a suspended compute).",
    )


class BranchOut(BranchView):
    connection_uri: str | None = Field(
        default=None, description="Only for admin and user tokens, never for session tokens."
    )


class RoleOut(RoleView):
    """A role; to the session's owner (a user or admin token) also its connection URI."""

    connection_uri: str | None = Field(
        default=None,
        description="postgresql:// URI that logs in as this role (password included); only "
        "when a role is created, and only for user and admin tokens.",
    )


class RoleList(BaseModel):
    roles: list[RoleView]


class ExtensionList(BaseModel):
    extensions: list[ExtensionView]


class UserList(BaseModel):
    users: list[UserView]


class SessionList(BaseModel):
    sessions: list[SessionOut]
    next_after: uuid.UUID | None = Field(
        default=None,
        description="Pass as `after` for the next page; null when this page was the last.",
    )


class CheckpointList(BaseModel):
    head_id: uuid.UUID | None
    checkpoints: list[CheckpointView]


class BranchList(BaseModel):
    branches: list[BranchOut]


class EventList(BaseModel):
    events: list[EventView]
    next_after: int | None = Field(
        description="Pass as `after` for the next page; null when this page was the last."
    )


class Health(BaseModel):
    #: "ok", "degraded" (a background job keeps failing) or "down" (PostgreSQL unreachable).
    status: str
    control_plane: str
    #: Why PostgreSQL is unreachable; null while it answers.
    database: str | None = None
    jobs: dict[str, JsonValue]


class Ready(BaseModel):
    #: "ready", or "not_ready" (with the status code 503) when a check failed.
    status: str
    #: Each check (`meta_database`, `control_plane`, `postgres`): null when it passed, else why
    #: it failed (one line, no secrets).
    checks: dict[str, str | None]


# --- add-ons: Neon Auth and the Data API ----------------------------------------------------


class AuthOut(AuthView):
    secret_server_key: str | None = Field(
        default=None, description="Only for admin and user tokens, never for session tokens."
    )


class AuthUserList(BaseModel):
    users: list[AuthUserView]


class AddOAuthProvider(Body):
    provider: Text = Field(description="google, github, microsoft or vercel.")
    client_id: Text | None = Field(
        default=None, description="Your OAuth app's id (with client_secret); none: Neon's keys."
    )
    client_secret: Text | None = Field(default=None, description="Never shown again.")


class OAuthProviderList(BaseModel):
    providers: list[OAuthProviderView]


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]{1,253}(:[0-9]{1,5})?")


def _origins(value: list[str]) -> list[str]:
    """Browser origins (scheme, host, optional port; no path), or "*" alone for any."""
    for origin in value:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise ValueError(
                f"{origin[:80]!r} is not an origin: give scheme, host and optional port, "
                'like "https://app.example.com" or "http://localhost:5173", or "*" for any'
            )
    if "*" in value and len(value) > 1:
        raise ValueError('"*" (any origin) stands alone')
    return list(dict.fromkeys(value))


Origins = Annotated[list[str], Field(min_length=1, max_length=50), AfterValidator(_origins)]


class EnableDataApi(Body):
    add_default_grants: Boolean = Field(
        default=True,
        description="Let signed-in users read and write the public schema's tables (RLS "
        "policies then separate users' rows).",
    )
    cors_allowed_origins: Origins | None = Field(
        default=None,
        description="Browser origins the Data API answers (CORS), e.g. "
        '["http://localhost:5173"]; absent or ["*"]: any origin.',
    )


class UpdateDataApi(Body):
    cors_allowed_origins: Origins | None = Field(
        default=None,
        description='Browser origins the Data API answers (CORS); ["*"]: any origin; absent: '
        "unchanged.",
    )
