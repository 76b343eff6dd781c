"""Tiers: the TOML file and its errors, a session created with its user's tier (organization,
compute, quota, history retention on the local plane), the sessions-per-user limit, and
checkpoint retention (oldest unpinned pruned with their snapshots; head and root kept)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from agentdb.neon import DefaultEndpointSettings, NeonClient
from agentdb.runtime import StartupError, load_configured_tiers
from agentdb.services import Secrets, SessionLocks
from agentdb.services._errors import (
    CheckpointNotFound,
    Conflict,
    InvalidInput,
    LimitExceeded,
)
from agentdb.services.checkpoints import CheckpointService
from agentdb.services.sessions import SessionService
from agentdb.services.users import UserService
from agentdb.settings import Settings
from agentdb.tiers import BUILTIN_TIERS, Tier, Tiers, TiersError, load_tiers
from meta_schema import AgentSession, Checkpoint, CheckpointStatus, Event, SessionStatus, User

TIERS_TOML = """
default = "basic"

[tiers.basic]
org_id = "org-basic-1"
compute_max_cu = 1
suspend_timeout_s = 120
logical_size_bytes = 104857600
active_time_seconds = 3600
max_sessions_per_user = 2
max_checkpoints_per_session = 3
history_retention_seconds = 3600

[tiers.max]
compute_min_cu = 1
compute_max_cu = 4
"""

SETTINGS_COMPUTE = DefaultEndpointSettings(
    autoscaling_limit_min_cu=0.25, autoscaling_limit_max_cu=2, suspend_timeout_seconds=300
)


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory) -> Tiers:
    path = tmp_path_factory.mktemp("tiers") / "tiers.toml"
    path.write_text(TIERS_TOML)
    return load_tiers(path)


@pytest.fixture
def sessions(
    meta_sessions: async_sessionmaker[AsyncSession],
    neon: NeonClient,
    box: Secrets,
    locks: SessionLocks,
    tiers: Tiers,
) -> SessionService:
    return SessionService(
        meta_sessions, neon, box, locks=locks, endpoint_settings=SETTINGS_COMPUTE, tiers=tiers
    )


@pytest.fixture
def checkpoints(
    meta_sessions: async_sessionmaker[AsyncSession],
    neon: NeonClient,
    locks: SessionLocks,
    tiers: Tiers,
) -> CheckpointService:
    return CheckpointService(meta_sessions, neon, locks=locks, tiers=tiers)


async def new_user(meta_sessions: async_sessionmaker[AsyncSession], tier: str) -> uuid.UUID:
    user = User(name="ada", email=f"ada-{uuid.uuid4()}@example.com", tier=tier)
    created = user.id
    async with meta_sessions() as db:
        db.add(user)
        await db.commit()
    return created


async def project_of(meta_sessions: async_sessionmaker[AsyncSession], session_id: uuid.UUID) -> str:
    async with meta_sessions() as db:
        row = await db.get(AgentSession, session_id)
        assert row is not None
        assert row.project_id is not None
        return row.project_id


# --- the configuration -------------------------------------------------------------------------


def test_the_file_defines_the_tiers_and_the_default(tiers: Tiers) -> None:
    assert tiers.names == ("basic", "max")
    assert tiers.default == "basic"
    basic = tiers.find("basic")
    assert basic is not None
    assert (basic.org_id, basic.max_sessions_per_user, basic.max_checkpoints_per_session) == (
        "org-basic-1",
        2,
        3,
    )
    assert tiers.find("free") is None  # a file replaces the built-in tiers


def test_without_a_file_the_built_in_tiers_apply() -> None:
    tiers = load_configured_tiers(Settings())
    assert tiers == BUILTIN_TIERS
    assert tiers.names == ("free", "pro", "enterprise")
    assert tiers.default == "free"
    free = tiers.find("free")
    assert free is not None
    assert free.max_sessions_per_user == 10
    # Compute is left to the AGENTDB_COMPUTE_* settings.
    assert free.endpoint_settings(SETTINGS_COMPUTE) == SETTINGS_COMPUTE


def test_tier_values_take_precedence_over_the_settings(tiers: Tiers) -> None:
    basic, top = tiers.find("basic"), tiers.find("max")
    assert basic is not None
    assert top is not None
    assert basic.endpoint_settings(SETTINGS_COMPUTE) == DefaultEndpointSettings(
        autoscaling_limit_min_cu=0.25, autoscaling_limit_max_cu=1, suspend_timeout_seconds=120
    )
    assert top.endpoint_settings(SETTINGS_COMPUTE) == DefaultEndpointSettings(
        autoscaling_limit_min_cu=1, autoscaling_limit_max_cu=4, suspend_timeout_seconds=300
    )
    assert top.project_settings() is None  # no quota set: none sent
    settings = basic.project_settings()
    assert settings is not None
    assert settings.quota is not None
    assert (settings.quota.logical_size_bytes, settings.quota.active_time_seconds) == (
        104_857_600,
        3600,
    )
    assert settings.quota.compute_time_seconds is None


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('colour = "red"\n[tiers.a]\n', "colour: unknown key"),
        ("[tiers.a]\nmax_session_per_user = 3\n", "tiers.a.max_session_per_user: unknown key"),
        ("[tiers.a]\nmax_sessions_per_user = 0\n", "tiers.a.max_sessions_per_user: Input should"),
        ('[tiers.a]\ncompute_max_cu = "big"\n', "tiers.a.compute_max_cu: Input should"),
        ("[tiers.a]\ncompute_max_cu = 100\n", "tiers.a.compute_max_cu: Input should"),
        ("[tiers.a]\nsuspend_timeout_s = -5\n", "tiers.a.suspend_timeout_s: Input should"),
        ("[tiers.a]\nwarm_pool_size = -1\n", "tiers.a.warm_pool_size: Input should"),
        ("[tiers.a]\nwarm_pool_size = 101\n", "tiers.a.warm_pool_size: Input should"),
        (
            "[tiers.a]\ncompute_min_cu = 4\ncompute_max_cu = 1\n",
            "tiers.a: compute_min_cu must not exceed compute_max_cu",
        ),
        ("[tiers.Gold]\n", "tiers.Gold.name: String should match pattern"),
        ('[tiers.a]\nname = "b"\n', "tiers.a.name: unknown key"),
        ("[tiers.a]\nlogical_size_bytes = -1\n", "tiers.a.logical_size_bytes: Input should"),
        ('default = "b"\n[tiers.a]\n', "default tier 'b' is not one of a"),
        ('default = "a"\n', "tiers: at least one [tiers.<name>] table is needed"),
        ("tiers = 3\n", "tiers: at least one [tiers.<name>] table is needed"),
        ("[tiers]\na = 3\n", "tiers.a: must be a table"),
        ("[tiers.a\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_a_startup_error_naming_file_and_key(
    tmp_path: Path, toml: str, message: str
) -> None:
    path = tmp_path / "tiers.toml"
    path.write_text(toml)
    with pytest.raises(StartupError) as raised:
        load_configured_tiers(Settings(tiers_file=path))
    assert f"AGENTDB_TIERS_FILE {path}: " in str(raised.value)
    assert message in str(raised.value)


def test_a_missing_file_is_a_startup_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(StartupError, match=f"{path}: cannot be read"):
        load_configured_tiers(Settings(tiers_file=path))


def test_a_tier_range_that_clashes_with_the_settings_is_refused_up_front(
    meta_sessions: async_sessionmaker[AsyncSession], neon: NeonClient, box: Secrets
) -> None:
    # min 4 CU from the tier against max 2 CU from the settings.
    tiers = Tiers(default="a", tiers=(Tier(name="a", compute_min_cu=4),))
    with pytest.raises(TiersError, match="tier a: its compute range"):
        SessionService(meta_sessions, neon, box, endpoint_settings=SETTINGS_COMPUTE, tiers=tiers)


# --- users -------------------------------------------------------------------------------------


async def test_users_get_only_configured_tiers(
    meta_sessions: async_sessionmaker[AsyncSession], tiers: Tiers
) -> None:
    users = UserService(meta_sessions, tiers=tiers)
    created = await users.create(f"u-{uuid.uuid4()}@example.com")
    assert created.tier == "basic"  # the file's default
    assert (await users.create(f"v-{uuid.uuid4()}@example.com", tier="max")).tier == "max"
    with pytest.raises(InvalidInput, match="tier: must be one of basic, max"):
        await users.create(f"w-{uuid.uuid4()}@example.com", tier="free")


# --- sessions ----------------------------------------------------------------------------------


async def test_a_session_gets_its_users_tier(
    sessions: SessionService,
    meta_sessions: async_sessionmaker[AsyncSession],
    neon: NeonClient,
) -> None:
    user = await new_user(meta_sessions, "basic")
    view = await sessions.create(user, "tiered")
    assert view.status == SessionStatus.READY
    assert view.tier == "basic"
    project = await neon.get_project(await project_of(meta_sessions, view.id))
    assert project.org_id == "org-basic-1"
    assert project.history_retention_seconds == 3600
    assert project.default_endpoint_settings is not None
    assert project.default_endpoint_settings.autoscaling_limit_max_cu == 1
    assert project.default_endpoint_settings.suspend_timeout_seconds == 120
    assert project.settings is not None
    assert project.settings.quota is not None
    assert project.settings.quota.logical_size_bytes == 104_857_600
    assert project.settings.quota.active_time_seconds == 3600
    await sessions.delete(view.id)


async def test_the_settings_fill_in_what_a_tier_leaves_out(
    sessions: SessionService,
    meta_sessions: async_sessionmaker[AsyncSession],
    neon: NeonClient,
) -> None:
    user = await new_user(meta_sessions, "max")
    view = await sessions.create(user, "big")
    project = await neon.get_project(await project_of(meta_sessions, view.id))
    assert project.org_id == "org-local"  # no tier org, no AGENTDB_NEON_ORG_ID: the default
    endpoint = project.default_endpoint_settings
    assert endpoint is not None
    assert (endpoint.autoscaling_limit_min_cu, endpoint.autoscaling_limit_max_cu) == (1, 4)
    assert endpoint.suspend_timeout_seconds == 300  # the settings' value
    await sessions.delete(view.id)


async def test_sessions_beyond_the_tier_limit_are_refused_and_write_nothing(
    sessions: SessionService, meta_sessions: async_sessionmaker[AsyncSession]
) -> None:
    user = await new_user(meta_sessions, "basic")
    first = await sessions.create(user, "one", idempotency_key="k1")
    await sessions.create(user, "two")
    with pytest.raises(LimitExceeded) as raised:
        await sessions.create(user, "three")
    assert (raised.value.limit, raised.value.allowed) == ("max_sessions_per_user", 2)
    assert "the basic tier allows 2 sessions per user" in str(raised.value)
    async with meta_sessions() as db:
        count = await db.scalar(sa.select(sa.func.count()).where(col(AgentSession.user_id) == user))
        creates = await db.scalar(
            sa.select(sa.func.count()).where(
                col(Event.action) == "session.create",
                col(Event.details)["phase"].astext == "requested",
                col(Event.session_id).in_(
                    sa.select(col(AgentSession.id)).where(col(AgentSession.user_id) == user)
                ),
            )
        )
    assert (count, creates) == (2, 2)
    # Replaying a create that got through still answers at the limit.
    assert (await sessions.create(user, "one", idempotency_key="k1")).id == first.id
    # A deleted session frees its place.
    await sessions.delete(first.id)
    third = await sessions.create(user, "three")
    assert third.status == SessionStatus.READY
    for view in await sessions.list(user):
        await sessions.delete(view.id)


async def test_a_user_whose_tier_is_no_longer_configured_gets_a_clear_conflict(
    sessions: SessionService, meta_sessions: async_sessionmaker[AsyncSession]
) -> None:
    user = await new_user(meta_sessions, "gold")
    with pytest.raises(Conflict, match="tier 'gold' is not configured"):
        await sessions.create(user)
    assert await sessions.list(user, include_deleted=True) == []


# --- retention ---------------------------------------------------------------------------------


async def states(
    meta_sessions: async_sessionmaker[AsyncSession], session_id: uuid.UUID
) -> dict[str | None, CheckpointStatus]:
    async with meta_sessions() as db:
        rows = await db.scalars(
            sa.select(Checkpoint).where(col(Checkpoint.session_id) == session_id)
        )
        return {row.label: row.status for row in rows}


async def test_the_oldest_unpinned_checkpoints_are_pruned_with_their_snapshots(
    sessions: SessionService,
    checkpoints: CheckpointService,
    meta_sessions: async_sessionmaker[AsyncSession],
    neon: NeonClient,
) -> None:
    user = await new_user(meta_sessions, "basic")  # keeps 3 checkpoints
    session = await sessions.create(user, "retention")
    one = await checkpoints.create(session.id, "one")
    pinned = await checkpoints.pin(session.id, one.id)
    assert pinned.pinned
    two = await checkpoints.create(session.id, "two")
    assert (await states(meta_sessions, session.id)) == {
        "root": CheckpointStatus.READY,
        "one": CheckpointStatus.READY,
        "two": CheckpointStatus.READY,
    }
    await checkpoints.create(session.id, "three")
    # root kept (the empty database), "one" pinned: "two" is the oldest that may go.
    assert (await states(meta_sessions, session.id))["two"] == CheckpointStatus.DELETED
    assert not (await checkpoints.pin(session.id, one.id, pinned=False)).pinned
    four = await checkpoints.create(session.id, "four")
    assert await states(meta_sessions, session.id) == {
        "root": CheckpointStatus.READY,
        "one": CheckpointStatus.DELETED,
        "two": CheckpointStatus.DELETED,
        "three": CheckpointStatus.READY,
        "four": CheckpointStatus.READY,
    }
    tree = await checkpoints.list(session.id)
    assert tree.head_id == four.id
    assert [c.label for c in tree.checkpoints] == ["root", "three", "four"]
    # The pruned checkpoints' snapshots are gone from the control plane.
    snapshots = {
        s.name for s in await neon.list_snapshots(await project_of(meta_sessions, session.id))
    }
    assert str(one.id) not in snapshots
    assert str(two.id) not in snapshots
    assert str(four.id) in snapshots
    async with meta_sessions() as db:
        pruned = list(
            await db.scalars(
                sa.select(Event)
                .where(
                    col(Event.session_id) == session.id,
                    col(Event.action) == "checkpoint.delete",
                    col(Event.details)["phase"].astext == "succeeded",
                )
                .order_by(col(Event.at))
            )
        )
        pins = list(
            await db.scalars(
                sa.select(col(Event.action))
                .where(
                    col(Event.session_id) == session.id,
                    col(Event.action).in_(("checkpoint.pin", "checkpoint.unpin")),
                )
                .order_by(col(Event.at))
            )
        )
    assert [(e.target_id, e.details["reason"]) for e in pruned] == [
        (str(two.id), "retention"),
        (str(one.id), "retention"),
    ]
    assert pins == ["checkpoint.pin", "checkpoint.unpin"]
    await sessions.delete(session.id)


async def test_pinned_checkpoints_stay_even_beyond_the_limit(
    sessions: SessionService,
    checkpoints: CheckpointService,
    meta_sessions: async_sessionmaker[AsyncSession],
) -> None:
    user = await new_user(meta_sessions, "basic")
    session = await sessions.create(user, "pins")
    for label in ("a", "b", "c"):
        taken = await checkpoints.create(session.id, label)
        await checkpoints.pin(session.id, taken.id)
    again = await checkpoints.pin(session.id, taken.id)  # pinning twice changes nothing
    assert again.pinned
    assert set((await states(meta_sessions, session.id)).values()) == {CheckpointStatus.READY}
    assert len((await checkpoints.list(session.id)).checkpoints) == 4  # root + 3 pinned
    async with meta_sessions() as db:
        pin_events = await db.scalar(
            sa.select(sa.func.count()).where(
                col(Event.session_id) == session.id, col(Event.action) == "checkpoint.pin"
            )
        )
    assert pin_events == 3
    await sessions.delete(session.id)


async def test_pinning_an_unknown_checkpoint_is_not_found(
    sessions: SessionService,
    checkpoints: CheckpointService,
    meta_sessions: async_sessionmaker[AsyncSession],
) -> None:
    user = await new_user(meta_sessions, "max")
    session = await sessions.create(user, "unknown")
    with pytest.raises(CheckpointNotFound):
        await checkpoints.pin(session.id, uuid.uuid4())
    await sessions.delete(session.id)


async def test_without_a_limit_nothing_is_pruned(
    sessions: SessionService,
    checkpoints: CheckpointService,
    meta_sessions: async_sessionmaker[AsyncSession],
) -> None:
    user = await new_user(meta_sessions, "max")  # no max_checkpoints_per_session
    session = await sessions.create(user, "unlimited")
    for label in ("a", "b", "c", "d"):
        await checkpoints.create(session.id, label)
    assert await checkpoints.prune(session.id) == []
    assert len((await checkpoints.list(session.id)).checkpoints) == 5
    await sessions.delete(session.id)
