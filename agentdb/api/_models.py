"""Request bodies and response shapes of the REST API. Bodies refuse unknown fields, so a typo
is an error that names it rather than a value silently ignored."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from agentdb.services import (
    AuthUserView,
    AuthView,
    BranchView,
    CheckpointView,
    EventView,
    OAuthProviderView,
    SessionView,
    TierChangeView,
    UserView,
)
from meta_schema import TokenScope

#: Ten years: long-lived tokens are the platform's choice, endless ones are not offered.
MAX_TTL_SECONDS = 10 * 365 * 86_400


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateUser(Body):
    email: str = Field(max_length=254)
    name: str | None = None
    tier: str | None = None


class ChangeTier(Body):
    tier: str = Field(max_length=32, description="The tier to move the user to.")


class TierChangeList(BaseModel):
    tier_changes: list[TierChangeView]


class CreateToken(Body):
    name: str | None = None
    ttl_seconds: int | None = Field(default=None, gt=0, le=MAX_TTL_SECONDS)


class CreateSession(Body):
    user_id: uuid.UUID | None = Field(
        default=None, description="Required with the admin token; a user token creates its own."
    )
    name: str | None = None


class RunSql(Body):
    sql: str
    params: list[JsonValue] | None = Field(
        default=None, description="Values for $1, $2, ... (one statement only when given)."
    )
    max_rows: int | None = Field(default=None, ge=1, le=10_000)
    timeout_seconds: float | None = Field(default=None, gt=0, le=3600)


class CreateCheckpoint(Body):
    label: str | None = None
    message: str | None = Field(default=None, description="The agent's message or prompt.")
    metadata: dict[str, JsonValue] | None = Field(
        default=None, description="Free-form JSON, e.g. {'commit': '...'}."
    )


class CreateBranch(Body):
    name: str | None = None
    checkpoint_id: uuid.UUID | None = Field(
        default=None, description="Start from this checkpoint (default: the live database now)."
    )
    ttl_seconds: int | None = Field(default=None, gt=0)


class CreatePreview(Body):
    ttl_seconds: int | None = Field(default=None, gt=0)


class TokenOut(BaseModel):
    """A new bearer token: `token` is shown this once."""

    id: uuid.UUID
    token: str
    scope: TokenScope
    user_id: uuid.UUID | None
    session_id: uuid.UUID | None
    name: str | None
    prefix: str
    created_at: datetime
    expires_at: datetime | None


class SessionOut(SessionView):
    connection_uri: str | None = Field(
        default=None, description="Only for admin and user tokens, never for session tokens."
    )


class BranchOut(BranchView):
    connection_uri: str | None = Field(
        default=None, description="Only for admin and user tokens, never for session tokens."
    )


class UserList(BaseModel):
    users: list[UserView]


class SessionList(BaseModel):
    sessions: list[SessionOut]


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
    status: str
    control_plane: str
    jobs: dict[str, JsonValue]


# --- add-ons: Neon Auth and the Data API ----------------------------------------------------


class AuthOut(AuthView):
    secret_server_key: str | None = Field(
        default=None, description="Only for admin and user tokens, never for session tokens."
    )


class AuthUserList(BaseModel):
    users: list[AuthUserView]


class AddOAuthProvider(Body):
    provider: str = Field(description="google, github, microsoft or vercel.")
    client_id: str | None = Field(
        default=None, description="Your OAuth app's id (with client_secret); none: Neon's keys."
    )
    client_secret: str | None = Field(default=None, description="Never shown again.")


class OAuthProviderList(BaseModel):
    providers: list[OAuthProviderView]


class EnableDataApi(Body):
    add_default_grants: bool = Field(
        default=True,
        description="Let signed-in users read and write the public schema's tables (RLS "
        "policies then separate users' rows).",
    )
