"""Deleting the branches a restore (or a branch reset) replaced. Neon refuses to delete a branch
that has child branches: agentdb's own children that are done with (expired, failed, deleted
or replaced themselves) are deleted first; any other child blocks the cleanup, which is then
reported once and tried again only when something changed."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from agentdb.neon import Branch as NeonBranch
from agentdb.neon import NeonClient, NeonError, NeonNotFound
from meta_schema import AgentSession, Branch, BranchKind, BranchStatus, Checkpoint

from ._common import (
    REPLACED_BRANCH_NAME,
    RETAINED,
    SYSTEM,
    Clock,
    describe,
    event,
    operation_ids,
)

log = structlog.get_logger(__name__)

#: How a blocked cleanup's `error` starts; the rest names the children in the way.
BLOCKED = "cleanup blocked: the branch has child branches"


@dataclass(frozen=True)
class _Blocked:
    """What kept a replaced branch: agentdb's own child rows still in use (with the earliest
    time one expires) and whether a child agentdb does not know of is in the way."""

    own: frozenset[uuid.UUID]
    expires: datetime | None
    foreign: bool
    checked_at: datetime


def replaced_row(
    session_id: uuid.UUID, branch_id: str, created_at: datetime, name: str = REPLACED_BRANCH_NAME
) -> Branch:
    """The row that records a live branch a restore replaced (`ReplacedBranches.drop` then
    deletes or keeps it): made by the restore itself, or by the reconciler finishing one."""
    return Branch(
        session_id=session_id,
        kind=BranchKind.REPLACED,
        name=name,
        status=BranchStatus.READY,
        branch_id=branch_id,
        created_at=created_at,
    )


class ReplacedBranches:
    """Deletes replaced branches, their finished children first; remembers blocked ones."""

    def __init__(self, neon: NeonClient, clock: Clock, *, recheck: timedelta) -> None:
        """`recheck`: how often a cleanup blocked by a child agentdb does not manage is
        looked at again (agentdb cannot see such a child go)."""
        self._neon = neon
        self._clock = clock
        self._recheck = recheck
        self._blocked: dict[uuid.UUID, _Blocked] = {}

    async def still_blocked(self, db: AsyncSession, old: Branch) -> bool:
        """Whether the last try at `old` was blocked and nothing changed since: none of the
        children in the way has ended or expired, and an unknown child was looked at lately."""
        blocked = self._blocked.get(old.id)
        if blocked is None or not (old.error or "").startswith(BLOCKED):
            return False
        now = self._clock()
        if blocked.expires is not None and blocked.expires <= now:
            return False
        if blocked.foreign and now - blocked.checked_at >= self._recheck:
            return False
        if not blocked.own:
            return True
        in_use = await db.scalar(
            sa.select(sa.func.count())
            .select_from(Branch)
            .where(col(Branch.id).in_(blocked.own), col(Branch.status) == BranchStatus.READY)
        )
        return in_use == len(blocked.own)

    async def drop(self, db: AsyncSession, row: AgentSession, old: Branch) -> list[str]:
        """Deletes a replaced branch unless a retained checkpoint's snapshot was taken from it
        (whether Neon keeps such snapshots without their branch is unconfirmed; the local
        plane does). Leaves `old` deleted, ready (kept, or blocked by child branches: `error`
        says which) or deleting (failed, with the error; retried later) and returns the
        control plane's operation ids."""
        assert old.branch_id is not None  # noqa: S101 - replaced rows always name their branch
        needed = await db.scalar(
            sa.select(sa.func.count())
            .select_from(Checkpoint)
            .where(
                col(Checkpoint.session_id) == row.id,
                col(Checkpoint.source_branch_id) == old.branch_id,
                col(Checkpoint.status).in_(RETAINED),
            )
        )
        if needed:
            old.status = BranchStatus.READY
            return []
        operations: list[str] = []
        try:
            if row.project_id is not None:
                if await self._clear_children(db, row, old):
                    return []
                operations = operation_ids(
                    await self._neon.delete_branch(row.project_id, old.branch_id)
                )
        except NeonNotFound:
            pass
        except NeonError as error:
            old.status = BranchStatus.DELETING
            old.error = describe(error)
            return []
        self._blocked.pop(old.id, None)
        old.status = BranchStatus.DELETED
        old.error = None
        return operations

    async def _clear_children(self, db: AsyncSession, row: AgentSession, old: Branch) -> bool:
        """Deletes `old`'s children that agentdb is done with; True (and `old` marked
        blocked, reported once) if others remain."""
        assert row.project_id is not None  # noqa: S101 - checked by the caller
        children = [
            b
            async for b in self._neon.iter_branches(row.project_id)
            if b.parent_id == old.branch_id
        ]
        if not children:
            return False
        rows = {
            r.branch_id: r
            for r in await db.scalars(
                sa.select(Branch).where(
                    col(Branch.session_id) == row.id,
                    col(Branch.branch_id).in_([c.id for c in children]),
                    col(Branch.id) != old.id,
                )
            )
        }
        now = self._clock()
        in_the_way: list[str] = []
        own: set[uuid.UUID] = set()
        expires: list[datetime] = []
        foreign = False
        for child in sorted(children, key=lambda b: b.id):
            mine = rows.get(child.id)
            if mine is None:
                foreign = True
                in_the_way.append(f"{child.id} ({child.name!r}, not agentdb's)")
            elif await self._done_with(db, row, mine, now):
                problem = await self._delete_child(db, row, mine, child)
                if problem is not None:
                    foreign = True  # nothing agentdb does will change; look again later
                    in_the_way.append(f"{child.id} (could not be deleted: {problem})")
            else:
                own.add(mine.id)
                if mine.expires_at is not None:
                    expires.append(mine.expires_at)
                until = f", until {mine.expires_at.isoformat()}" if mine.expires_at else ""
                in_the_way.append(f"{child.id} ({mine.kind.value} branch {mine.id}{until})")
        if not in_the_way:
            return False
        reason = f"{BLOCKED}: {', '.join(in_the_way)}"
        self._blocked[old.id] = _Blocked(
            own=frozenset(own), expires=min(expires, default=None), foreign=foreign, checked_at=now
        )
        old.status = BranchStatus.READY
        if old.error != reason:
            # Reported when the reason is new, not on every run of the cleanup job.
            old.error = reason
            log.warning(
                "branch.cleanup_blocked",
                session_id=str(row.id),
                branch=old.branch_id,
                reason=reason,
            )
            db.add(
                event(
                    SYSTEM,
                    "branch.cleanup_blocked",
                    at=now,
                    session_id=row.id,
                    target_kind="branch",
                    target_id=old.id,
                    details={"kind": old.kind.value, "status": old.status.value, "error": reason},
                )
            )
        return True

    async def _done_with(
        self, db: AsyncSession, row: AgentSession, child: Branch, now: datetime
    ) -> bool:
        if child.kind == BranchKind.REPLACED:
            needed = await db.scalar(
                sa.select(sa.func.count())
                .select_from(Checkpoint)
                .where(
                    col(Checkpoint.session_id) == row.id,
                    col(Checkpoint.source_branch_id) == child.branch_id,
                    col(Checkpoint.status).in_(RETAINED),
                )
            )
            return not needed
        if child.status != BranchStatus.READY:
            return child.status != BranchStatus.PENDING  # failed, deleting, or deleted already
        return child.expires_at is not None and child.expires_at <= now

    async def _delete_child(
        self, db: AsyncSession, row: AgentSession, mine: Branch, child: NeonBranch
    ) -> str | None:
        """Deletes one of agentdb's own children of a replaced branch; why not, if it failed."""
        assert row.project_id is not None  # noqa: S101 - checked by the caller
        try:
            deleted = await self._neon.delete_branch(row.project_id, child.id)
        except NeonNotFound:
            deleted = None
        except NeonError as error:
            return describe(error)
        mine.status = BranchStatus.DELETED
        mine.error = None
        mine.encrypted_connection_secret = None
        db.add(
            event(
                SYSTEM,
                "branch.delete",
                at=self._clock(),
                session_id=row.id,
                target_kind="branch",
                target_id=mine.id,
                details={
                    "kind": mine.kind.value,
                    "status": mine.status.value,
                    "reason": "its parent, a replaced branch, is being deleted",
                },
                operation_ids=operation_ids(deleted),
            )
        )
        return None
