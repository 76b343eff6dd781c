"""Everything `agentdb serve` runs, wired from settings: the PostgreSQL server, the migrated meta
database, the control plane (Neon cloud or the in-process local plane), the services and their
background jobs. The REST API, and later the MCP server and the CLI, are built over a `Runtime`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, Literal

import psycopg
import structlog
from litestar import Litestar
from opentelemetry import metrics, trace
from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
from psycopg import errors as pg_errors
from psycopg import sql
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

import meta_schema
from agentdb._tracing import tracer_provider_from_env
from agentdb.localplane import LocalPlane, running
from agentdb.localplane import create_app as create_localplane
from agentdb.neon import DefaultEndpointSettings, NeonClient
from agentdb.pg import (
    EmbeddedPostgres,
    PostgresSupervisor,
    ServerInfo,
    open_server,
    probe_server,
)
from agentdb.services import (
    AddonService,
    BranchService,
    CatalogService,
    CheckpointService,
    CredentialService,
    EventService,
    FleetMigrationService,
    IdempotencyService,
    IdleConnections,
    JobRunner,
    ProcessLease,
    Readiness,
    ReadPace,
    Reconciler,
    Secrets,
    SessionGate,
    SessionLocks,
    SessionService,
    SqlService,
    TierChangeService,
    TokenService,
    UsageService,
    UserService,
    WarmPool,
    WorkflowKillSwitch,
    project_name,
    project_spec,
)
from agentdb.settings import Settings
from agentdb.tiers import Tier, Tiers, TiersError, load_tiers

log = structlog.get_logger("agentdb.runtime")

LOCAL_PLANE_REQUESTS_PER_MIN = 1_000_000
SECRET_KEY_FILE = "secret.key"  # noqa: S105 - a file name


#: None while PostgreSQL answers, else why not.
DatabaseHealth = Callable[[], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class Runtime:
    """The running services, as the interfaces (REST, MCP, CLI) call them."""

    settings: Settings
    tiers: Tiers
    control_plane: Literal["local", "neon"]
    neon: NeonClient
    meta: async_sessionmaker[AsyncSession]
    secrets: Secrets
    users: UserService
    tokens: TokenService
    sessions: SessionService
    checkpoints: CheckpointService
    branches: BranchService
    catalog: CatalogService
    sql: SqlService
    addons: AddonService
    events: EventService
    usage: UsageService
    tier_changes: TierChangeService
    fleet: FleetMigrationService
    reconciler: Reconciler
    idempotency: IdempotencyService
    jobs: JobRunner
    warm: WarmPool
    readiness: Readiness
    #: The in-process local control plane (None on Neon cloud, or with a given client).
    plane: LocalPlane | None
    #: Its ASGI app, which also serves the add-on URLs it hands out (`ADDON_PATHS`).
    plane_app: Litestar | None
    #: Where spans go (`agentdb._tracing`); None: no traces.
    tracer_provider: trace.TracerProvider | None
    #: This process's liveness, as the others sharing the meta DB see it.
    lease: ProcessLease
    #: None while PostgreSQL answers, else why it does not (one line, no secrets).
    database_health: DatabaseHealth
    #: An admin token generated at this start (none was configured or stored): show it once.
    new_admin_token: SecretStr | None = None


async def _supervised_health(supervisor: PostgresSupervisor) -> str | None:
    """What the supervisor last saw (it looks every second and restarts a dead server)."""
    health = supervisor.health
    return None if health.ok else (health.cause or f"PostgreSQL is {health.status}")


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    server: ServerInfo | None = None,
    neon: NeonClient | None = None,
    start_jobs: bool = True,
    tracer_provider: trace.TracerProvider | None = None,
) -> AsyncIterator[Runtime]:
    """Starts (or attaches to) PostgreSQL, migrates the meta database, opens the control plane
    and builds the services; with `start_jobs`, the reconciler has run once before this yields
    and the periodic jobs run until it exits. `neon` replaces the control plane the settings
    choose (the caller keeps it open). Spans go to `tracer_provider`, else to OTLP when the
    environment asks (`agentdb._tracing`)."""
    kill = _kill_switch(settings)
    async with AsyncExitStack() as stack:
        if tracer_provider is None and (exporting := tracer_provider_from_env()) is not None:
            stack.callback(exporting.shutdown)  # last out: flushes every span
            tracer_provider = exporting
        server, database_health = await _open_postgres(settings, server, stack)
        meta = await _open_meta(server, settings.meta_database, stack, tracer_provider)
        secrets = load_secrets(settings)
        tiers = load_configured_tiers(settings)
        control_plane: Literal["local", "neon"] = "neon" if settings.uses_neon_cloud else "local"
        plane_app: Litestar | None = None
        if neon is None:
            client, plane_app = await _control_plane(
                settings, server, tiers, stack, tracer_provider
            )
            neon = await stack.enter_async_context(client)
        runtime = _runtime(
            settings,
            meta,
            neon,
            secrets,
            tiers,
            kill,
            control_plane=control_plane,
            plane_app=plane_app,
            database_health=database_health,
        )
        runtime = replace(runtime, tracer_provider=tracer_provider)
        # Alive to the other processes sharing the meta DB until the stack unwinds.
        await stack.enter_async_context(runtime.lease)
        # Closed before PostgreSQL stops (the stack unwinds last in, first out).
        stack.push_async_callback(runtime.sql.close)
        runtime = replace(
            runtime, new_admin_token=await runtime.tokens.ensure_admin_token(settings.admin_token)
        )
        _schedule_jobs(runtime)
        if start_jobs:
            # Whatever a crash left half-done is settled before the first request.
            await runtime.jobs.run_now("reconcile")
            await stack.enter_async_context(runtime.jobs)
        log.info("agentdb.started", control_plane=control_plane)
        yield runtime


async def _open_postgres(
    settings: Settings, server: ServerInfo | None, stack: AsyncExitStack
) -> tuple[ServerInfo, DatabaseHealth]:
    """The PostgreSQL agentdb runs on, and how to tell whether it answers: the embedded one
    (started and supervised here: agentdb restarts it if it dies) unless the settings or the
    caller name another."""
    if server is None and settings.database_url is None:
        embedded = EmbeddedPostgres(settings.data_dir / "pg", port=settings.pg_port)
        server = await stack.enter_async_context(embedded)
        supervisor = await stack.enter_async_context(PostgresSupervisor(embedded).watch())
        return server, partial(_supervised_health, supervisor)
    if server is None:
        server = await stack.enter_async_context(open_server(settings))
    return server, partial(probe_server, server)


def _runtime(  # noqa: PLR0917 - the parts open_runtime opened, in the order it opens them
    settings: Settings,
    meta: async_sessionmaker[AsyncSession],
    neon: NeonClient,
    secrets: Secrets,
    tiers: Tiers,
    kill: WorkflowKillSwitch,
    *,
    control_plane: Literal["local", "neon"],
    plane_app: Litestar | None,
    database_health: DatabaseHealth,
) -> Runtime:
    """The services over the meta database and the control plane, wired to each other."""
    endpoint_settings = DefaultEndpointSettings(
        autoscaling_limit_min_cu=settings.compute_min_cu,
        autoscaling_limit_max_cu=settings.compute_max_cu,
        suspend_timeout_seconds=settings.compute_suspend_timeout_s,
    )
    locks = SessionLocks(meta)
    jobs = JobRunner(meta)
    lease = ProcessLease(meta, jobs.runner)
    # SQL calls and the workflows that copy or swap a live database take turns (per session).
    gate = SessionGate()
    warm = WarmPool(
        meta,
        neon,
        secrets,
        tiers=tiers,
        size=partial(_warm_pool_size, tiers, settings.warm_pool_size),
        spec=partial(_project_spec, endpoint_settings),
        name=partial(project_name, prefix=settings.project_prefix),
        default_org_id=settings.neon_org_id,
        refill_soon=partial(jobs.kick, "fill_warm_pool"),
    )
    try:
        sessions = SessionService(
            meta,
            neon,
            secrets,
            locks=locks,
            default_org_id=settings.neon_org_id,
            project_prefix=settings.project_prefix,
            endpoint_settings=endpoint_settings,
            tiers=tiers,
            kill=kill,
            warm=warm,
        )
    except TiersError as error:
        raise StartupError(f"{_tiers_source(settings)}: {error}") from None
    addons = AddonService(meta, neon, secrets, locks=locks)
    usage = UsageService(
        meta, neon, tiers=tiers, min_interval=seconds(settings.usage_poll_interval_s)
    )
    sql = SqlService(
        meta,
        secrets,
        statement_timeout=seconds(settings.sql_statement_timeout_s),
        max_rows=settings.sql_max_rows,
        max_result_bytes=settings.sql_max_result_bytes,
        # DDL run through agentdb keeps the Data API's schema cache fresh.
        after_ddl=addons.refresh_after_ddl,
        # A refused connection or write says which quota is used up, if one is.
        explain_quota=usage.quota_problem,
        # A password an agent changed from SQL is reset through the control plane.
        recover_credentials=CredentialService(meta, neon, secrets).recover,
        read_pace=ReadPace(settings.sql_user_read_rate),
        idle=IdleConnections(settings.sql_idle_connections),
        gate=gate,
        audit_chars=settings.audit_sql_max_chars,
    )
    checkpoints = CheckpointService(
        meta,
        neon,
        locks=locks,
        tiers=tiers,
        kill=kill,
        gate=gate,
        # Retention's deletes run after the checkpoint has answered.
        prune_soon=partial(jobs.kick, "prune_checkpoints"),
    )
    branches = BranchService(
        meta,
        neon,
        secrets,
        locks=locks,
        default_ttl=timedelta(seconds=settings.branch_ttl_s),
        kill=kill,
        gate=gate,
    )
    fleet = FleetMigrationService(
        meta,
        secrets,
        checkpoints=checkpoints,
        branches=branches,
        locks=locks,
        runner=jobs.runner,
        kick=partial(jobs.kick, "fleet_migrations"),
    )
    # A session just created takes the fleet's baseline migrations before it is handed out.
    sessions.after_create = fleet.apply_baseline
    return Runtime(
        settings=settings,
        tiers=tiers,
        control_plane=control_plane,
        neon=neon,
        meta=meta,
        secrets=secrets,
        plane=None if plane_app is None else plane_app.state.plane,
        plane_app=plane_app,
        tracer_provider=None,
        lease=lease,
        database_health=database_health,
        users=UserService(meta, tiers=tiers),
        tokens=TokenService(
            meta,
            session_ttl=seconds(settings.session_token_ttl_s),
            session_max_ttl=seconds(settings.session_token_max_ttl_s),
        ),
        sessions=sessions,
        checkpoints=checkpoints,
        branches=branches,
        fleet=fleet,
        sql=sql,
        catalog=CatalogService(meta, neon, secrets, sql, locks=locks),
        addons=addons,
        events=EventService(meta),
        usage=usage,
        tier_changes=TierChangeService(
            meta,
            neon,
            tiers=tiers,
            endpoint_settings=endpoint_settings,
            default_org_id=settings.neon_org_id,
        ),
        # Every workflow holds its session's lock from before its intent row is written, so
        # the reconciler needs no grace period: a row it can lock is truly abandoned.
        reconciler=Reconciler(
            meta,
            neon,
            secrets,
            locks=locks,
            project_prefix=settings.project_prefix,
            grace=timedelta(0),
            # Listing every project is the one part that grows with the fleet.
            orphans_every=timedelta(minutes=10),
        ),
        idempotency=IdempotencyService(meta, secrets, lease=lease),
        jobs=jobs,
        warm=warm,
        readiness=Readiness(meta, neon, database_health, org_id=settings.neon_org_id),
    )


def _warm_pool_size(tiers: Tiers, default: int, tier: Tier) -> int:
    return tiers.warm_pool_size(tier, default)


def _project_spec(fallback: DefaultEndpointSettings, tier: Tier) -> dict[str, Any]:
    return project_spec(tier, fallback)


def _schedule_jobs(runtime: Runtime) -> None:
    """The periodic jobs: repairs, expiries, cleanups, usage polls."""
    settings, jobs = runtime.settings, runtime.jobs
    jobs.add("reconcile", runtime.reconciler.run_once, every=seconds(settings.reconcile_interval_s))
    jobs.add("expire_branches", runtime.branches.expire, every=seconds(settings.expiry_interval_s))
    jobs.add(
        "cleanup_replaced_branches",
        runtime.checkpoints.cleanup_replaced,
        every=seconds(settings.expiry_interval_s),
    )
    # Resumes tier changes that a crash or a failed Neon call left unfinished; a new change
    # kicks it.
    jobs.add(
        "tier_changes",
        runtime.tier_changes.run_pending,
        every=seconds(settings.reconcile_interval_s),
    )
    # Fleet migrations: started, resumed, cancelled and rolled back from their rows (a new
    # one or a change kicks it); one process at a time across replicas.
    jobs.add(
        "fleet_migrations",
        runtime.fleet.run_pending,
        every=seconds(settings.reconcile_interval_s),
    )
    # No jitter: Neon refreshes consumption every 15 minutes, and polls must not come sooner
    # (`usage` also checks the last poll's time, for other processes' polls).
    jobs.add(
        "poll_usage",
        runtime.usage.poll,
        every=seconds(settings.usage_poll_interval_s),
        jitter=0,
        run_at_start=False,
    )
    jobs.add(
        "prune_checkpoints",
        runtime.checkpoints.prune_pending,
        every=seconds(settings.expiry_interval_s),
    )
    # Ready projects for instant creates; a create that took one kicks it.
    jobs.add("fill_warm_pool", runtime.warm.fill, every=seconds(settings.reconcile_interval_s))
    jobs.add(
        "expire_idempotency_keys",
        runtime.idempotency.delete_expired,
        every=seconds(settings.expiry_interval_s),
    )
    # A session nobody calls any more gives its kept SQL connections (and backends) back.
    jobs.add("close_idle_sql_connections", runtime.sql.close_idle, every=seconds(10))


async def _open_meta(
    server: ServerInfo,
    name: str,
    stack: AsyncExitStack,
    tracer_provider: trace.TracerProvider | None = None,
) -> async_sessionmaker[AsyncSession]:
    """The meta database, made and migrated if need be, behind a pool `stack` closes; each
    statement a span of `tracer_provider` when there is one."""
    meta_dsn = await ensure_database(server, name)
    await meta_schema.upgrade(meta_dsn)
    engine = create_async_engine(
        meta_schema.database_url(meta_dsn),
        # Connections are made ahead and kept: a connection made for a burst and closed
        # after it costs a SCRAM handshake each, which a flood of requests (even ones
        # answered 429) would pay hundreds of times a second.
        pool_size=40,
        max_overflow=10,
        pool_recycle=1800,
        # After a PostgreSQL restart the pool's connections are dead: test before use.
        pool_pre_ping=True,
    )
    stack.push_async_callback(engine.dispose)
    if tracer_provider is not None:
        # SQLAlchemy's instrumentation, for this engine only (its `instrument()` is once per
        # process and patches every engine made after it).
        # Its pool figures go to the process's meter (a no-op: `/metrics` has its own).
        usage = metrics.get_meter("agentdb.meta").create_up_down_counter(
            "db.client.connections.usage"
        )
        EngineTracer(  # type: ignore[no-untyped-call]
            tracer_provider.get_tracer("agentdb.meta"), engine.sync_engine, usage
        )
    return async_sessionmaker(engine)


def _kill_switch(settings: Settings) -> WorkflowKillSwitch:
    try:
        return WorkflowKillSwitch(settings.kill_at)
    except ValueError as error:
        raise StartupError(str(error)) from None


async def _control_plane(
    settings: Settings,
    server: ServerInfo,
    tiers: Tiers,
    stack: AsyncExitStack,
    tracer_provider: trace.TracerProvider | None,
) -> tuple[NeonClient, Litestar | None]:
    """The client of the control plane the settings choose, and the in-process local plane's
    app when that is the one."""
    if settings.neon_api_key is not None:
        api_key = settings.neon_api_key.get_secret_value()
        client = NeonClient(settings.neon_api_url, api_key=api_key, tracer_provider=tracer_provider)
        return client, None
    # The tiers' organizations exist in the local plane from the start, so moving a user to
    # another tier has somewhere to transfer their projects to.
    organizations = [tier.org_id for tier in tiers.tiers if tier.org_id is not None]
    if settings.neon_org_id is not None:
        organizations.append(settings.neon_org_id)
    app = await stack.enter_async_context(
        running(create_localplane(settings, server=server, organizations=organizations))
    )
    key = settings.localplane_api_key
    # Neon's request limits guard Neon's servers; the local plane answers in-process, where
    # they would only queue agentdb behind itself (20 sessions checkpointing at once need
    # more than 40 requests a second).
    client = NeonClient.for_app(
        app,
        api_key=key.get_secret_value() if key else "local",
        rate_limit_per_min=LOCAL_PLANE_REQUESTS_PER_MIN,
        burst_per_s=None,
        tracer_provider=tracer_provider,
    )
    return client, app


def seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


async def ensure_database(server: ServerInfo, name: str) -> str:
    """Creates the meta database if it is missing (closed to PUBLIC, like every database in the
    cluster) and returns its DSN."""
    async with await psycopg.AsyncConnection.connect(server.conninfo(), autocommit=True) as conn:
        found = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if await found.fetchone() is None:
            with contextlib.suppress(pg_errors.DuplicateDatabase):  # another process won
                await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            await conn.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name))
            )
    return server.dsn(name)


class StartupError(Exception):
    """agentdb cannot start with these settings; the message says which and why."""


def load_configured_tiers(settings: Settings) -> Tiers:
    """The tiers of AGENTDB_TIERS_FILE, else the built-in ones; `StartupError` naming the
    file and the key when the file is unusable."""
    try:
        return load_tiers(settings.tiers_file)
    except TiersError as error:
        raise StartupError(f"AGENTDB_TIERS_FILE {error}") from None


def _tiers_source(settings: Settings) -> str:
    return f"AGENTDB_TIERS_FILE {settings.tiers_file}" if settings.tiers_file else "built-in tiers"


def load_secrets(settings: Settings) -> Secrets:
    """The Fernet key: AGENTDB_SECRET_KEY, else the one generated into the data dir on first
    start (readable by its owner only)."""
    if settings.secret_key is not None:
        source, key = "AGENTDB_SECRET_KEY", settings.secret_key.get_secret_value()
    else:
        path = Path(settings.data_dir) / SECRET_KEY_FILE
        source, key = str(path), _read_or_create_key(path)
    try:
        return Secrets(key)
    except ValueError as error:
        raise StartupError(f"{source}: {error}") from None


def _read_or_create_key(path: Path) -> str:
    with contextlib.suppress(FileNotFoundError):
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside, then linked into place: link() fails if the name exists, so two processes
    # starting at once agree on the first key, and nobody ever reads a half-written file.
    draft = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(Secrets.generate_key() + "\n")
    try:
        os.link(draft, path)
        log.info("agentdb.secret_key_generated", path=str(path))
    except FileExistsError:
        pass
    finally:
        draft.unlink()
    return path.read_text().strip()


__all__ = [
    "Runtime",
    "StartupError",
    "ensure_database",
    "load_configured_tiers",
    "load_secrets",
    "open_runtime",
]
