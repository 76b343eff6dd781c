"""What the services return: typed, frozen views without secrets (a connection URI is only
ever returned by `SessionService.connection_uri`)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from meta_schema import AgentSession, Checkpoint, CheckpointStatus, SessionStatus


class _View(BaseModel):
    model_config = ConfigDict(frozen=True)


class SessionView(_View):
    """An agent session as its owner sees it."""

    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    status: SessionStatus
    tier: str
    database_name: str | None
    role_name: str | None
    head_checkpoint_id: uuid.UUID | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    @classmethod
    def of(cls, row: AgentSession) -> SessionView:
        return cls(
            id=row.id,
            user_id=row.user_id,
            name=row.name,
            status=row.status,
            tier=row.tier,
            database_name=row.database_name,
            role_name=row.role_name,
            head_checkpoint_id=row.head_checkpoint_id,
            error=row.error,
            created_at=row.created_at,
            updated_at=row.updated_at,
            deleted_at=row.deleted_at,
        )


class CheckpointView(_View):
    """One checkpoint: a node of its session's tree. `taken_at` is the control plane's time."""

    id: uuid.UUID
    session_id: uuid.UUID
    parent_id: uuid.UUID | None
    status: CheckpointStatus
    label: str | None
    message: str | None
    metadata: dict[str, JsonValue]
    taken_at: datetime | None
    size_bytes: int | None
    pinned: bool
    error: str | None
    created_at: datetime

    @classmethod
    def of(cls, row: Checkpoint) -> CheckpointView:
        return cls(
            id=row.id,
            session_id=row.session_id,
            parent_id=row.parent_id,
            status=row.status,
            label=row.label,
            message=row.message,
            metadata=row.meta,
            taken_at=row.taken_at,
            size_bytes=row.size_bytes,
            pinned=row.pinned,
            error=row.error,
            created_at=row.created_at,
        )


class CheckpointTree(_View):
    """A session's checkpoints, oldest first, with the one its database now descends from.
    History forks after a restore: every branch of it stays."""

    session_id: uuid.UUID
    head_id: uuid.UUID | None
    checkpoints: list[CheckpointView] = Field(default_factory=list)

    def children(self, checkpoint_id: uuid.UUID | None) -> list[CheckpointView]:
        """The checkpoints whose parent is `checkpoint_id` (None: the roots)."""
        return [c for c in self.checkpoints if c.parent_id == checkpoint_id]
