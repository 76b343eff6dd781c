"""What the services share: who acts, the clock, the per-session workflow lock and the audit
log."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import sqlalchemy as sa
from pydantic import JsonValue
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentdb import _kill, wire
from agentdb.neon import Snapshot, WithOperations
from meta_schema import (
    ActorScope,
    AgentSession,
    BranchKind,
    Checkpoint,
    CheckpointStatus,
    Event,
    SessionStatus,
)

from ._errors import InvalidInput, SessionNotFound

Clock = Callable[[], datetime]
SessionFactory = async_sessionmaker[AsyncSession]

# Bounds on what callers may store; the edges report them as 4xx with the field's name.
MAX_NAME = 200
#: The most items one page of a list returns.
MAX_PAGE = 500
MAX_MESSAGE = 10_000
MAX_IDEMPOTENCY_KEY = 200
MAX_CODE_REF = wire.MAX_CODE_REF


class WorkflowKillSwitch(_kill.KillSwitch):
    """The services' kill points, armed by `AGENTDB_KILL_AT` (crash tests only): one after
    each step of a workflow that a crash could cut it off at, named `<workflow>.<step done>`."""

    POINTS = frozenset(
        {
            "session_create.requested",
            "session_create.project_created",
            "session_create.project_recorded",
            "session_create.snapshot_taken",
            "session_delete.requested",
            "session_delete.project_deleted",
            "checkpoint.requested",
            "checkpoint.snapshot_taken",
            "restore.requested",
            "restore.restored",
            "restore.recorded",
            "branch.requested",
            "branch.created",
        }
    )
    SETTING = "AGENTDB_KILL_AT"


def system_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for a change, as the audit log records it: a token's id and scope, or agentdb."""

    id: str
    scope: ActorScope
    request_id: str | None = None
    #: The token's name, when it has one.
    token_name: str | None = None
    #: What the agent said it was doing (`AGENT_CONTEXT_KEYS`): every event of the request
    #: records it.
    context: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def system(cls) -> Actor:
        return cls("system", ActorScope.SYSTEM)


SYSTEM = Actor.system()


class SessionLocks:
    """One mutating workflow per agent session at a time.

    An `asyncio.Lock` per session serializes this process's workflows without holding a
    database connection per waiter; a transaction-scoped advisory lock keyed by the session id
    serializes processes. A row lock on `agent_sessions` would not do: the workflow itself
    updates that row from other transactions (intent, then result), which would wait on it.
    Different sessions take different keys, so they never wait on each other (a hash collision
    would only make two sessions take turns).
    """

    def __init__(self, sessions: SessionFactory, *, purpose: bytes = b"agentdb.session") -> None:
        """`purpose` keys a separate family of locks (at most 16 bytes), e.g. credential
        resets, which must not wait on a session's workflows."""
        self._sessions = sessions
        self._purpose = purpose
        # Entries vanish once no workflow holds or awaits their lock.
        self._locks: weakref.WeakValueDictionary[uuid.UUID, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )

    def advisory_key(self, session_id: uuid.UUID) -> int:
        digest = hashlib.blake2b(session_id.bytes, digest_size=8, person=self._purpose).digest()
        return int.from_bytes(digest, "big", signed=True)

    @asynccontextmanager
    async def hold(self, session_id: uuid.UUID) -> AsyncIterator[None]:
        lock = self._locks.get(session_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[session_id] = lock
        async with lock, self._sessions() as holder:
            await holder.execute(
                sa.select(sa.func.pg_advisory_xact_lock(self.advisory_key(session_id)))
            )
            try:
                yield
            finally:
                # Ending the transaction releases the advisory lock.
                await holder.rollback()


@dataclass
class _Gate:
    changed: asyncio.Condition
    users: int = 0  # calls and workflows holding or awaiting it: it is forgotten at 0
    running: int = 0
    closed: bool = False


class SessionGate:
    """In this process, SQL calls through agentdb and the workflows that copy or swap a
    session's live database (checkpoint, restore, a branch or reset from the live database)
    take turns, so no call agentdb runs is broken by one: a call waits while such a workflow
    has the database (up to `wait`, then goes on and meets the closed database as before),
    and the workflow first lets the calls already running finish, up to `drain` seconds (a
    longer one is ended by the copy, as before). Direct connections are not agentdb's to hold:
    they are ended and reconnect. Other agentdb processes do not see this gate."""

    def __init__(self, *, drain: float = 5.0) -> None:
        self._drain = drain
        self._gates: dict[uuid.UUID, _Gate] = {}

    @asynccontextmanager
    async def _use(self, session_id: uuid.UUID) -> AsyncIterator[_Gate]:
        gate = self._gates.get(session_id)
        if gate is None:
            gate = self._gates[session_id] = _Gate(asyncio.Condition())
        gate.users += 1
        try:
            yield gate
        finally:
            gate.users -= 1
            if not gate.users:
                del self._gates[session_id]

    @asynccontextmanager
    async def query(self, session_id: uuid.UUID, *, wait: float) -> AsyncIterator[None]:
        """Holds the session's database open for one SQL call, after waiting (at most `wait`
        seconds) for a workflow that has it closed."""
        async with self._use(session_id) as gate:
            async with gate.changed:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await gate.changed.wait_for(lambda: not gate.closed)
                gate.running += 1
            try:
                yield
            finally:
                async with gate.changed:
                    gate.running -= 1
                    gate.changed.notify_all()

    @asynccontextmanager
    async def closed(self, session_id: uuid.UUID) -> AsyncIterator[None]:
        """Holds new SQL calls of the session back and lets the running ones finish (at most
        `drain` seconds) before the block; lets them in again after it."""
        async with self._use(session_id) as gate:
            async with gate.changed:
                await gate.changed.wait_for(lambda: not gate.closed)
                gate.closed = True
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._drain):
                        await gate.changed.wait_for(lambda: not gate.running)
            try:
                yield
            finally:
                async with gate.changed:
                    gate.closed = False
                    gate.changed.notify_all()

    def __len__(self) -> int:
        """Sessions with a call or workflow at the gate (for tests: none are kept after)."""
        return len(self._gates)


def event(
    actor: Actor,
    action: str,
    *,
    at: datetime,
    session_id: uuid.UUID | None,
    target_kind: str | None = None,
    target_id: uuid.UUID | str | None = None,
    details: dict[str, JsonValue] | None = None,
    operation_ids: Sequence[str] = (),
) -> Event:
    """An audit-log row for `action` ("<noun>.<verb>", e.g. "checkpoint.create")."""
    return Event(
        at=at,
        actor=actor.id,
        actor_scope=actor.scope,
        token_name=actor.token_name,
        agent_context=dict(actor.context),
        request_id=actor.request_id,
        session_id=session_id,
        action=action,
        target_kind=target_kind,
        target_id=None if target_id is None else str(target_id),
        details=details or {},
        neon_operation_ids=list(operation_ids),
    )


def check_limit(limit: int) -> None:
    """A page size: raises `InvalidInput` naming `limit` outside 1 to `MAX_PAGE`."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput("limit", f"must be between 1 and {MAX_PAGE}")


def check_text(field: str, value: str | None, limit: int) -> None:
    if value is None:
        return
    if not value.strip():
        raise InvalidInput(field, "must not be blank")
    if len(value) > limit:
        raise InvalidInput(field, f"must be at most {limit} characters")
    if "\x00" in value:
        raise InvalidInput(field, "must not contain NUL characters")


def describe(error: BaseException) -> str:
    """An error as its owner may read it: the type and message, which the Neon client keeps
    free of secrets."""
    return f"{type(error).__name__}: {error}"


#: The name of every session's live branch; a finalized restore keeps it (the replaced branch
#: becomes "main (old)"), so it finds the live branch when a restore's outcome is unknown.
LIVE_BRANCH_NAME = "main"
#: What a restore calls the live branch it replaced (Neon renames it "main (old)"), when the
#: control plane does not say.
REPLACED_BRANCH_NAME = f"{LIVE_BRANCH_NAME} (old)"
#: Session states that mean a workflow is running: found under the session's lock, or left
#: long enough for the reconciler, one was interrupted.
UNFINISHED = (
    SessionStatus.PROVISIONING,
    SessionStatus.CHECKPOINTING,
    SessionStatus.RESTORING,
    SessionStatus.DELETING,
)


def neon_branch_name(kind: BranchKind, branch_id: uuid.UUID) -> str:
    """The control plane's name for a dev or preview branch ("<kind>-<row id>"): how a lost
    create is found again."""
    return f"{kind.value}-{branch_id}"


#: Checkpoints whose snapshot is (or may be) kept, so their source branch must stay.
RETAINED = (CheckpointStatus.PENDING, CheckpointStatus.READY, CheckpointStatus.DELETING)


def fill_from_snapshot(row: Checkpoint, snapshot: Snapshot, source_branch_id: str) -> None:
    """Copies what the control plane says about a snapshot onto its checkpoint: its id, the
    branch it was taken from, and its LSN, time and size (Neon's clock, never ours)."""
    row.snapshot_id = snapshot.id
    row.source_branch_id = snapshot.source_branch_id or source_branch_id
    row.lsn = snapshot.lsn
    row.taken_at = snapshot.timestamp or snapshot.created_at
    row.size_bytes = snapshot.full_size
    row.status = CheckpointStatus.READY
    row.error = None


async def load_session(db: AsyncSession, session_id: uuid.UUID) -> AgentSession:
    row = await db.get(AgentSession, session_id, populate_existing=True)
    if row is None:
        raise SessionNotFound(session_id)
    return row


def operation_ids(*results: WithOperations | None) -> list[str]:
    return [op.id for result in results if result is not None for op in result.operations]
