"""The reconciler on the embedded PostgreSQL and the in-process local plane. Crashes are
simulated deterministically: the tests write the rows a killed process would leave, and do on
the control plane what it would have done, then check the meta DB, the control plane and the
session's data after a run."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
import sqlalchemy as sa
from litestar import Litestar
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

import meta_schema
from agentdb.neon import NeonClient, NeonNotFound
from agentdb.services import Secrets, SessionLocks
from agentdb.services.checkpoints import CheckpointService
from agentdb.services.jobs import JobRunner
from agentdb.services.reconcile import Reconciler, ReconcileReport
from agentdb.services.sessions import SessionService
from meta_schema import (
    AgentSession,
    Branch,
    BranchKind,
    BranchStatus,
    Checkpoint,
    CheckpointStatus,
    Event,
    SessionStatus,
)

from .conftest import execute, failing_neon, fetch

Sessions = async_sessionmaker[AsyncSession]
ROWS = "SELECT n FROM items ORDER BY n"


@pytest.fixture(scope="module")
def org_id() -> str:
    """This module's own organization: the orphan sweep lists only the orgs of known
    sessions, so other modules' projects on the shared local plane stay out of sight."""
    return f"org-reconcile-{secrets.token_hex(4)}"


@pytest_asyncio.fixture(loop_scope="session")
async def owner(meta_sessions: Sessions, org_id: str) -> uuid.UUID:
    user = meta_schema.User(
        name="grace", email=f"grace-{uuid.uuid4()}@example.com", tier="free", org_id=org_id
    )
    async with meta_sessions(expire_on_commit=False) as db:
        db.add(user)
        await db.commit()
    return user.id


@pytest.fixture
def reconciler(
    meta_sessions: Sessions, neon: NeonClient, box: Secrets, locks: SessionLocks
) -> Reconciler:
    # No grace: the simulated crashes are only milliseconds old.
    return Reconciler(meta_sessions, neon, box, locks=locks, grace=timedelta(0))


async def load(meta_sessions: Sessions, session_id: uuid.UUID) -> AgentSession:
    async with meta_sessions() as db:
        row = await db.get(AgentSession, session_id)
        assert row is not None
        return row


async def crash(meta_sessions: Sessions, session_id: uuid.UUID, **fields: Any) -> AgentSession:
    """Leaves the session's row as a killed workflow would have."""
    async with meta_sessions(expire_on_commit=False) as db:
        row = await db.get(AgentSession, session_id)
        assert row is not None
        for name, value in fields.items():
            setattr(row, name, value)
        await db.commit()
        return row


async def pending_checkpoint(meta_sessions: Sessions, session_id: uuid.UUID) -> uuid.UUID:
    row = await load(meta_sessions, session_id)
    checkpoint = Checkpoint(session_id=session_id, parent_id=row.head_checkpoint_id, label="lost")
    async with meta_sessions(expire_on_commit=False) as db:
        db.add(checkpoint)
        await db.commit()
    return checkpoint.id


async def checkpoint_row(meta_sessions: Sessions, checkpoint_id: uuid.UUID) -> Checkpoint:
    async with meta_sessions() as db:
        row = await db.get(Checkpoint, checkpoint_id)
        assert row is not None
        return row


async def repairs_of(meta_sessions: Sessions, session_id: uuid.UUID) -> list[str]:
    """The repairs recorded for a session, in order; each must be agentdb's own."""
    async with meta_sessions() as db:
        found = list(
            await db.scalars(
                sa.select(Event)
                .where(col(Event.session_id) == session_id, col(Event.action).like("reconcile.%"))
                .order_by(col(Event.id))
            )
        )
    assert all(e.actor == "system" for e in found)
    return [e.details["repair"] for e in found]


async def project_exists(neon: NeonClient, project_id: str) -> bool:
    try:
        await neon.get_project(project_id)
    except NeonNotFound:
        return False
    return True


async def assert_nothing_left(reconciler: Reconciler) -> None:
    again = await reconciler.run_once()
    assert again.repairs == 0, again
    assert again.errors == ()


async def session_with_items(
    session_service: SessionService, owner: uuid.UUID
) -> tuple[uuid.UUID, str]:
    session = await session_service.create(owner)
    uri = await session_service.connection_uri(session.id)
    await execute(uri, "CREATE TABLE items (n int)", "INSERT INTO items VALUES (1)")
    return session.id, uri


async def test_interrupted_creates_are_undone(
    *,
    meta_sessions: Sessions,
    neon: NeonClient,
    reconciler: Reconciler,
    owner: uuid.UUID,
    org_id: str,
) -> None:
    # Killed after Neon created the project, before its id was recorded: found by name.
    lost = AgentSession(
        user_id=owner, name="lost", status=SessionStatus.PROVISIONING, tier="free", org_id=org_id
    )
    # Killed after the project was recorded and the root checkpoint written.
    recorded = AgentSession(
        user_id=owner, name="rec", status=SessionStatus.PROVISIONING, tier="free", org_id=org_id
    )
    # Killed before the control plane was called at all.
    early = AgentSession(
        user_id=owner, name="early", status=SessionStatus.PROVISIONING, tier="free", org_id=org_id
    )
    lost_project = await neon.create_project(name=f"agentdb-{lost.id}", org_id=org_id)
    recorded_project = await neon.create_project(name=f"agentdb-{recorded.id}", org_id=org_id)
    recorded.project_id = recorded_project.project.id
    recorded.live_branch_id = recorded_project.branch.id
    recorded.encrypted_connection_secret = b"sealed"
    root = Checkpoint(session_id=recorded.id, label="root")
    async with meta_sessions(expire_on_commit=False) as db:
        db.add_all([lost, recorded, early])
        await db.flush()
        db.add(root)
        await db.commit()

    report = await reconciler.run_once()

    assert report.sessions_failed == 3
    assert report.orphan_projects_deleted == 0
    assert report.errors == ()
    assert not await project_exists(neon, lost_project.project.id)
    assert not await project_exists(neon, recorded_project.project.id)
    for session in (lost, recorded, early):
        row = await load(meta_sessions, session.id)
        assert row.status == SessionStatus.FAILED
        assert row.error is not None
        assert "reconciler undid" in row.error
        assert row.project_id is None
        assert row.encrypted_connection_secret is None
        assert await repairs_of(meta_sessions, session.id) == ["create_undone"]
    assert (await checkpoint_row(meta_sessions, root.id)).status == CheckpointStatus.FAILED
    await assert_nothing_left(reconciler)


async def test_interrupted_checkpoint_completes_if_the_snapshot_was_taken_else_fails(
    *,
    meta_sessions: Sessions,
    neon: NeonClient,
    reconciler: Reconciler,
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    owner: uuid.UUID,
) -> None:
    taken_id, uri = await session_with_items(session_service, owner)
    missed_id, _ = await session_with_items(session_service, owner)
    missed_head = (await load(meta_sessions, missed_id)).head_checkpoint_id

    taken = await pending_checkpoint(meta_sessions, taken_id)
    row = await crash(meta_sessions, taken_id, status=SessionStatus.CHECKPOINTING)
    assert row.project_id is not None
    assert row.live_branch_id is not None
    await neon.create_snapshot(row.project_id, row.live_branch_id, name=str(taken))
    missed = await pending_checkpoint(meta_sessions, missed_id)
    await crash(meta_sessions, missed_id, status=SessionStatus.CHECKPOINTING)

    report = await reconciler.run_once()

    assert (report.checkpoints_completed, report.checkpoints_failed) == (1, 1)
    completed = await checkpoint_row(meta_sessions, taken)
    assert completed.status == CheckpointStatus.READY
    assert completed.snapshot_id is not None
    assert completed.taken_at is not None
    after = await load(meta_sessions, taken_id)
    assert (after.status, after.head_checkpoint_id) == (SessionStatus.READY, taken)
    failed = await checkpoint_row(meta_sessions, missed)
    assert failed.status == CheckpointStatus.FAILED
    after = await load(meta_sessions, missed_id)
    assert (after.status, after.head_checkpoint_id) == (SessionStatus.READY, missed_head)
    assert await repairs_of(meta_sessions, taken_id) == ["checkpoint_completed"]
    assert await repairs_of(meta_sessions, missed_id) == ["checkpoint_failed"]
    await assert_nothing_left(reconciler)

    # The completed checkpoint is a real one: restoring it brings its data back.
    await execute(uri, "INSERT INTO items VALUES (2)")
    await checkpoint_service.restore(taken_id, taken)
    assert await fetch(uri, ROWS) == [(1,)]


async def test_finalized_restore_is_recorded_and_its_old_branch_kept_for_retention(
    *,
    meta_sessions: Sessions,
    neon: NeonClient,
    reconciler: Reconciler,
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    owner: uuid.UUID,
) -> None:
    session_id, uri = await session_with_items(session_service, owner)
    one = await checkpoint_service.create(session_id, label="one")
    await execute(uri, "INSERT INTO items VALUES (2)")
    row = await crash(
        meta_sessions, session_id, status=SessionStatus.RESTORING, restore_target_id=one.id
    )
    assert row.project_id is not None
    old_live = row.live_branch_id
    assert old_live is not None
    snapshot_id = (await checkpoint_row(meta_sessions, one.id)).snapshot_id
    assert snapshot_id is not None
    restored = await neon.restore_snapshot(
        row.project_id, snapshot_id, target_branch_id=old_live, finalize_restore=True
    )

    report = await reconciler.run_once()

    assert (report.restores_completed, report.restores_rolled_back) == (1, 0)
    after = await load(meta_sessions, session_id)
    assert after.status == SessionStatus.READY
    assert after.live_branch_id == restored.branch.id
    assert after.head_checkpoint_id == one.id
    assert after.restore_target_id is None
    assert await fetch(uri, ROWS) == [(1,)]
    async with meta_sessions() as db:
        replaced = (
            await db.scalars(sa.select(Branch).where(col(Branch.session_id) == session_id))
        ).one()
    # The root and `one` were taken from the old live branch: it stays for retention.
    assert (replaced.kind, replaced.branch_id) == (BranchKind.REPLACED, old_live)
    assert replaced.status == BranchStatus.READY
    assert replaced.name.startswith("main (old")
    assert old_live in {b.id async for b in neon.iter_branches(row.project_id)}
    assert await repairs_of(meta_sessions, session_id) == ["restore_completed"]
    await assert_nothing_left(reconciler)

    # The recorded live branch is right: the next checkpoint and restore work on it.
    await execute(uri, "INSERT INTO items VALUES (3)")
    two = await checkpoint_service.create(session_id)
    await checkpoint_service.restore(session_id, one.id)
    await checkpoint_service.restore(session_id, two.id)
    assert await fetch(uri, ROWS) == [(1,), (3,)]


async def test_finalized_restore_deletes_an_unneeded_old_branch(
    *,
    meta_sessions: Sessions,
    neon: NeonClient,
    reconciler: Reconciler,
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    owner: uuid.UUID,
) -> None:
    session_id, uri = await session_with_items(session_service, owner)
    one = await checkpoint_service.create(session_id)
    # After one restore, no checkpoint comes from the live branch: the next replaces it for good.
    await checkpoint_service.restore(session_id, one.id)
    row = await crash(
        meta_sessions, session_id, status=SessionStatus.RESTORING, restore_target_id=one.id
    )
    assert row.project_id is not None
    assert row.live_branch_id is not None
    snapshot_id = (await checkpoint_row(meta_sessions, one.id)).snapshot_id
    assert snapshot_id is not None
    await neon.restore_snapshot(
        row.project_id, snapshot_id, target_branch_id=row.live_branch_id, finalize_restore=True
    )

    report = await reconciler.run_once()

    assert report.restores_completed == 1
    assert report.replaced_branches_deleted == 1
    async with meta_sessions() as db:
        replaced = await db.scalar(
            sa.select(Branch).where(col(Branch.branch_id) == row.live_branch_id)
        )
    assert replaced is not None
    assert (replaced.kind, replaced.status) == (BranchKind.REPLACED, BranchStatus.DELETED)
    assert row.live_branch_id not in {b.id async for b in neon.iter_branches(row.project_id)}
    async with meta_sessions() as db:
        recorded = await db.scalar(
            sa.select(Event).where(
                col(Event.session_id) == session_id, col(Event.action) == "reconcile.restore"
            )
        )
    assert recorded is not None
    assert recorded.details["replaced_branch"] == row.live_branch_id
    assert recorded.details["replaced_branch_outcome"] == "deleted"
    assert await fetch(uri, ROWS) == [(1,)]
    await assert_nothing_left(reconciler)


async def test_restore_that_did_not_happen_keeps_the_head_and_drops_its_stray_branch(
    *,
    meta_sessions: Sessions,
    neon: NeonClient,
    reconciler: Reconciler,
    session_service: SessionService,
    checkpoint_service: CheckpointService,
    owner: uuid.UUID,
) -> None:
    session_id, uri = await session_with_items(session_service, owner)
    one = await checkpoint_service.create(session_id)
    await execute(uri, "INSERT INTO items VALUES (2)")
    row = await crash(
        meta_sessions, session_id, status=SessionStatus.RESTORING, restore_target_id=one.id
    )
    assert row.project_id is not None
    assert row.live_branch_id is not None
    snapshot_id = (await checkpoint_row(meta_sessions, one.id)).snapshot_id
    assert snapshot_id is not None
    # Killed between a restore's new branch and its finalize.
    stray = await neon.restore_snapshot(
        row.project_id, snapshot_id, target_branch_id=row.live_branch_id
    )

    report = await reconciler.run_once()

    assert (report.restores_completed, report.restores_rolled_back) == (0, 1)
    assert report.restore_branches_deleted == 1
    after = await load(meta_sessions, session_id)
    assert after.status == SessionStatus.READY
    assert after.live_branch_id == row.live_branch_id
    assert after.head_checkpoint_id == one.id  # it was already the head
    assert after.restore_target_id is None
    assert after.error is not None
    branches = {b.id async for b in neon.iter_branches(row.project_id)}
    assert stray.branch.id not in branches
    assert row.live_branch_id in branches
    assert await fetch(uri, ROWS) == [(1,), (2,)]
    assert sorted(await repairs_of(meta_sessions, session_id)) == [
        "restore_branch_deleted",
        "restore_rolled_back",
    ]
    await assert_nothing_left(reconciler)


async def test_a_failed_session_whose_cleanup_failed_gets_its_project_deleted(
    *,
    meta_sessions: Sessions,
    neon: NeonClient,
    reconciler: Reconciler,
    owner: uuid.UUID,
    org_id: str,
) -> None:
    """`SessionService` keeps the project id of a failed create only when deleting it failed."""
    failed = AgentSession(
        user_id=owner,
        name="undone",
        status=SessionStatus.FAILED,
        tier="free",
        org_id=org_id,
        error="creating session failed",
    )
    project = await neon.create_project(name=f"agentdb-{failed.id}", org_id=org_id)
    failed.project_id = project.project.id
    async with meta_sessions(expire_on_commit=False) as db:
        db.add(failed)
        await db.commit()

    report = await reconciler.run_once()

    assert report.failed_projects_deleted == 1
    assert report.orphan_projects_deleted == 0
    assert not await project_exists(neon, project.project.id)
    after = await load(meta_sessions, failed.id)
    assert (after.status, after.project_id) == (SessionStatus.FAILED, None)
    assert after.error == "creating session failed"
    assert await repairs_of(meta_sessions, failed.id) == ["failed_project_deleted"]
    await assert_nothing_left(reconciler)


async def test_interrupted_delete_is_finished_and_stray_checkpoints_fail(
    *,
    meta_sessions: Sessions,
    neon: NeonClient,
    reconciler: Reconciler,
    session_service: SessionService,
    owner: uuid.UUID,
) -> None:
    deleting = await session_service.create(owner)
    ready = await session_service.create(owner)
    row = await crash(meta_sessions, deleting.id, status=SessionStatus.DELETING)
    assert row.project_id is not None
    dev = Branch(
        session_id=deleting.id,
        kind=BranchKind.DEV,
        name="dev",
        status=BranchStatus.READY,
        branch_id="br-in-the-project-123456",
        encrypted_connection_secret=b"sealed",
    )
    async with meta_sessions(expire_on_commit=False) as db:
        db.add(dev)
        await db.commit()
    stray = await pending_checkpoint(meta_sessions, ready.id)

    report = await reconciler.run_once()

    assert (report.sessions_deleted, report.checkpoints_failed) == (1, 1)
    after = await load(meta_sessions, deleting.id)
    assert after.status == SessionStatus.DELETED
    assert after.deleted_at is not None
    assert after.encrypted_connection_secret is None
    assert not await project_exists(neon, row.project_id)
    async with meta_sessions() as db:
        branch = await db.get(Branch, dev.id)
    assert branch is not None
    assert (branch.status, branch.encrypted_connection_secret) == (BranchStatus.DELETED, None)
    assert (await checkpoint_row(meta_sessions, stray)).status == CheckpointStatus.FAILED
    assert (await load(meta_sessions, ready.id)).status == SessionStatus.READY
    await assert_nothing_left(reconciler)


async def test_stuck_dev_and_preview_branches_are_cleaned_up(
    *,
    meta_sessions: Sessions,
    neon: NeonClient,
    reconciler: Reconciler,
    session_service: SessionService,
    owner: uuid.UUID,
) -> None:
    session = await session_service.create(owner)
    row = await load(meta_sessions, session.id)
    assert row.project_id is not None
    made = Branch(session_id=session.id, kind=BranchKind.DEV, name="made")
    never = Branch(session_id=session.id, kind=BranchKind.DEV, name="never made")
    dropping = Branch(
        session_id=session.id, kind=BranchKind.PREVIEW, name="drop", status=BranchStatus.DELETING
    )
    gone = Branch(
        session_id=session.id,
        kind=BranchKind.PREVIEW,
        name="gone",
        status=BranchStatus.DELETING,
        branch_id="br-already-gone-123456",
    )
    # A failed create whose cleanup failed kept the Neon branch's id for the reconciler.
    kept = Branch(
        session_id=session.id,
        kind=BranchKind.DEV,
        name="kept",
        status=BranchStatus.FAILED,
        error="creating it failed",
    )
    leftover = await neon.create_branch(
        row.project_id, name=f"dev-{kept.id}", parent_id=row.live_branch_id
    )
    kept.branch_id = leftover.branch.id
    # Killed after Neon made the dev branch, before its id was recorded: found by its name.
    await neon.create_branch(row.project_id, name=f"dev-{made.id}", parent_id=row.live_branch_id)
    preview = await neon.create_branch(
        row.project_id, name=f"preview-{dropping.id}", parent_id=row.live_branch_id
    )
    dropping.branch_id = preview.branch.id
    async with meta_sessions(expire_on_commit=False) as db:
        db.add_all([made, never, dropping, gone, kept])
        await db.commit()

    report = await reconciler.run_once()

    assert (report.branches_failed, report.branches_deleted) == (2, 2)
    assert report.failed_branches_deleted == 1
    assert report.errors == ()
    async with meta_sessions() as db:
        statuses = {
            b.id: b.status
            for b in await db.scalars(sa.select(Branch).where(col(Branch.session_id) == session.id))
        }
    assert statuses == {
        made.id: BranchStatus.FAILED,
        never.id: BranchStatus.FAILED,
        dropping.id: BranchStatus.DELETED,
        gone.id: BranchStatus.DELETED,
        kept.id: BranchStatus.FAILED,
    }
    names = {b.name async for b in neon.iter_branches(row.project_id)}
    assert names == {"main"}
    await assert_nothing_left(reconciler)


async def test_orphan_projects_are_deleted_and_nothing_else(
    *,
    meta_sessions: Sessions,
    neon: NeonClient,
    reconciler: Reconciler,
    session_service: SessionService,
    owner: uuid.UUID,
    org_id: str,
) -> None:
    ready = await session_service.create(owner)
    ready_project = (await load(meta_sessions, ready.id)).project_id
    assert ready_project is not None
    failed = AgentSession(
        user_id=owner, name="f", status=SessionStatus.FAILED, tier="free", org_id=org_id
    )
    async with meta_sessions(expire_on_commit=False) as db:
        db.add(failed)
        await db.commit()
    unknown = await neon.create_project(name=f"agentdb-{uuid.uuid4()}", org_id=org_id)
    of_failed = await neon.create_project(name=f"agentdb-{failed.id}", org_id=org_id)
    foreign = await neon.create_project(name="someone-elses-project", org_id=org_id)
    odd = await neon.create_project(name="agentdb-not-a-session", org_id=org_id)
    upper = await neon.create_project(name=f"agentdb-{str(uuid.uuid4()).upper()}", org_id=org_id)

    report = await reconciler.run_once()

    assert report.orphan_projects_deleted == 2
    assert not await project_exists(neon, unknown.project.id)
    assert not await project_exists(neon, of_failed.project.id)
    for kept in (ready_project, foreign.project.id, odd.project.id, upper.project.id):
        assert await project_exists(neon, kept)
    assert await repairs_of(meta_sessions, failed.id) == ["orphan_project_deleted"]
    await assert_nothing_left(reconciler)
    for project in (foreign, odd, upper):
        await neon.delete_project(project.project.id)


async def test_orphan_projects_are_looked_for_at_most_as_often_as_asked(
    *, meta_sessions: Sessions, neon: NeonClient, box: Secrets, locks: SessionLocks, org_id: str
) -> None:
    """Listing every project grows with the fleet: a reconciler told to look every hour does
    so on its first run and not on the next, while its session repairs run every time."""
    hourly = Reconciler(
        meta_sessions, neon, box, locks=locks, grace=timedelta(0), orphans_every=timedelta(hours=1)
    )
    first = await neon.create_project(name=f"agentdb-{uuid.uuid4()}", org_id=org_id)
    assert (await hourly.run_once()).orphan_projects_deleted == 1
    second = await neon.create_project(name=f"agentdb-{uuid.uuid4()}", org_id=org_id)
    assert (await hourly.run_once()).orphan_projects_deleted == 0
    assert await project_exists(neon, second.project.id)
    assert not await project_exists(neon, first.project.id)
    eager = Reconciler(meta_sessions, neon, box, locks=locks, grace=timedelta(0))
    assert (await eager.run_once()).orphan_projects_deleted == 1
    assert not await project_exists(neon, second.project.id)


async def test_control_plane_errors_for_one_session_do_not_stop_the_others(
    *,
    localplane_app: Litestar,
    meta_sessions: Sessions,
    neon: NeonClient,
    reconciler: Reconciler,
    session_service: SessionService,
    box: Secrets,
    locks: SessionLocks,
    owner: uuid.UUID,
) -> None:
    broken_session = await session_service.create(owner)
    fine_session = await session_service.create(owner)
    broken = await crash(meta_sessions, broken_session.id, status=SessionStatus.DELETING)
    fine = await crash(meta_sessions, fine_session.id, status=SessionStatus.DELETING)
    assert broken.project_id is not None
    assert fine.project_id is not None
    broken_project = broken.project_id

    def fails(request: httpx.Request) -> bool:
        return broken_project in request.url.path

    async with failing_neon(localplane_app, fails) as flaky:
        report = await Reconciler(
            meta_sessions, flaky, box, locks=locks, grace=timedelta(0)
        ).run_once()

    assert report.sessions_deleted == 1
    assert len(report.errors) == 1
    assert str(broken_session.id) in report.errors[0]
    assert "injected failure" in report.errors[0]
    assert (await load(meta_sessions, fine_session.id)).status == SessionStatus.DELETED
    assert (await load(meta_sessions, broken_session.id)).status == SessionStatus.DELETING
    assert await project_exists(neon, broken_project)

    # With the control plane back, the next run finishes it.
    assert (await reconciler.run_once()).sessions_deleted == 1
    assert not await project_exists(neon, broken_project)
    await assert_nothing_left(reconciler)


async def test_a_workflow_running_in_this_process_finishes_first(
    *,
    meta_sessions: Sessions,
    reconciler: Reconciler,
    session_service: SessionService,
    locks: SessionLocks,
    owner: uuid.UUID,
) -> None:
    session = await session_service.create(owner)
    async with locks.hold(session.id):
        # A checkpoint in flight: its intent is written and it holds the session's lock.
        await crash(meta_sessions, session.id, status=SessionStatus.CHECKPOINTING)
        running = asyncio.create_task(reconciler.run_once())
        await asyncio.sleep(0.3)
        assert not running.done()
        await crash(meta_sessions, session.id, status=SessionStatus.READY)
    report = await asyncio.wait_for(running, timeout=30)
    assert report.repairs == 0
    assert await repairs_of(meta_sessions, session.id) == []


async def test_fresh_intent_rows_wait_for_the_grace_period(
    *,
    meta_sessions: Sessions,
    neon: NeonClient,
    box: Secrets,
    locks: SessionLocks,
    reconciler: Reconciler,
    owner: uuid.UUID,
    org_id: str,
) -> None:
    """A create commits its row just before taking the lock: a run must not undo it."""
    fresh = AgentSession(
        user_id=owner, name="new", status=SessionStatus.PROVISIONING, tier="free", org_id=org_id
    )
    async with meta_sessions(expire_on_commit=False) as db:
        db.add(fresh)
        await db.commit()
    patient = Reconciler(meta_sessions, neon, box, locks=locks)
    assert (await patient.run_once()).repairs == 0
    assert (await load(meta_sessions, fresh.id)).status == SessionStatus.PROVISIONING
    assert (await reconciler.run_once()).sessions_failed == 1


async def test_the_job_runner_runs_the_reconciler(
    *, meta_sessions: Sessions, reconciler: Reconciler, session_service: SessionService, owner
) -> None:
    session = await session_service.create(owner)
    await crash(meta_sessions, session.id, status=SessionStatus.DELETING)
    runner = JobRunner(meta_sessions)
    runner.add("reconcile", reconciler.run_once, every=timedelta(minutes=5))
    report = await runner.run_now("reconcile")
    assert isinstance(report, ReconcileReport)
    assert report.sessions_deleted == 1
    assert runner.status()["reconcile"].last_result == report


async def test_two_reconcilers_at_once_repair_each_thing_once(
    *,
    meta_sessions: Sessions,
    neon: NeonClient,
    box: Secrets,
    session_service: SessionService,
    owner: uuid.UUID,
    org_id: str,
) -> None:
    """Two processes (no shared memory): the advisory locks make them take turns."""
    session = await session_service.create(owner)
    await crash(meta_sessions, session.id, status=SessionStatus.DELETING)
    orphan = await neon.create_project(name=f"agentdb-{uuid.uuid4()}", org_id=org_id)

    reports = await asyncio.gather(
        *(
            Reconciler(
                meta_sessions, neon, box, locks=SessionLocks(meta_sessions), grace=timedelta(0)
            ).run_once()
            for _ in range(2)
        )
    )

    assert sum(r.sessions_deleted for r in reports) == 1
    assert sum(r.orphan_projects_deleted for r in reports) == 1
    assert all(r.errors == () for r in reports)
    assert not await project_exists(neon, orphan.project.id)
    assert await repairs_of(meta_sessions, session.id) == ["delete_finished"]
