"""The core of the local control plane: job scheduling, mutations, lookups.

Each mutation records its resources and operations in one transaction (423 while earlier
operations run, as on Neon), then a background job does the physical work and finishes the
operations. Jobs are stored with their operations, so a restart finishes what a crash cut off.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, assert_never

import psycopg
import stamina
import structlog

from agentdb.pg import ServerInfo

from . import _render as render
from . import _steps as step
from ._engine import Engine, EngineError
from ._errors import BadRequest, Locked, NotFound
from ._models import (
    BranchRecord,
    DatabaseRecord,
    EndpointRecord,
    OperationRecord,
    ProjectRecord,
    RoleRecord,
    SnapshotRecord,
    SnapshotRestoreBody,
    now,
)
from ._store import Store, Tx
from ._tls import TlsFiles

JSON = dict[str, Any]
log = structlog.get_logger(__name__)

# A job whose server connection broke (PostgreSQL killed and restarting) is run again, from the
# step it was in, for this long before its operations are marked failed.
_SERVER_LOST_RETRY_S = 120.0
#: Deleted projects whose databases and roles are dropped at once.
_CLEANUPS_AT_ONCE = 2
_SERVER_LOST_PAUSE_S = (0.5, 5.0)


class _LeftForRestartError(Exception):
    """A job the plane stopped while its server was away: the next process resumes it."""


class Mutation:
    """One mutating request: its transaction and the jobs to start once it commits."""

    def __init__(self, tx: Tx, project_id: str, runner: int) -> None:
        self.tx = tx
        self.project_id = project_id
        self.runner = runner
        self.jobs: list[tuple[str, JSON]] = []
        self.steps: list[step.Step] = []

    async def start(self, ops: list[OperationRecord], kind: str, **args: object) -> None:
        """Records `ops` as one batch carrying the job `kind`; it runs after the commit. A
        `steps` job's steps (`args["steps"]`) are stored encoded (`_steps.encode`)."""
        batch = ops[0].batch
        for op in ops:
            op.batch = batch
            op.runner = self.runner
        if kind == "steps":
            typed = args["steps"]
            assert isinstance(typed, list)  # noqa: S101 - the mutations pass a list of steps
            args = {**args, "steps": [step.encode(s) for s in typed]}
        job = {"kind": kind, "args": args}
        ops[0].job = job
        await self.tx.put(*ops)
        self.jobs.append((batch, job))


def check_cu(settings: JSON, field: str) -> None:
    low = settings.get("autoscaling_limit_min_cu")
    high = settings.get("autoscaling_limit_max_cu")
    if low is not None and high is not None and low > high:
        raise BadRequest(
            f"{field}.autoscaling_limit_min_cu: must not exceed autoscaling_limit_max_cu"
        )


NO_PITR = (
    "point-in-time branching and restore (LSN or timestamp) are not available on the local "
    "control plane, whose branches share one PostgreSQL cluster; take a snapshot "
    "(POST /projects/{project_id}/branches/{branch_id}/snapshot) and restore it instead"
)


class PlaneBase:
    """State, jobs and lookups shared by the resource modules (`_projects`, `_branches`, ...)."""

    def __init__(
        self, store: Store, engine: Engine, server: ServerInfo, *, operation_delay_s: float = 0
    ) -> None:
        self._store = store
        self._engine = engine
        self._server = server
        self._delay = operation_delay_s
        self._tasks: set[asyncio.Task[None]] = set()
        #: Set when the plane shuts down: jobs waiting for their server give up at once.
        self._stopping = asyncio.Event()
        self._project_chain: dict[str, asyncio.Task[None]] = {}
        # Deleted projects' databases and roles are dropped a few at a time: a thousand
        # deletes at once must not queue a thousand drops on the engine's connections.
        self._cleanups = asyncio.Semaphore(_CLEANUPS_AT_ONCE)
        #: A cleanup gave up: the next sweep collects the orphans it left.
        self.orphans_suspected = False
        self.last_swap_downtime_s: float | None = None
        #: Where the connection proxy listens, when it runs (`LocalPlane.open(proxy=...)`).
        self.proxy_address: tuple[str, int] | None = None
        #: The proxy's CA and certificate, when it runs.
        self.tls_files: TlsFiles | None = None
        # Operations carry the id of the process that runs them; a process holds an advisory lock
        # on its id while alive, so a restart only takes over jobs whose runner is gone.
        self.runner_id = secrets.randbelow(2**31 - 1) + 1
        # Bytes sent to clients per project since the meter last collected them.
        self._transfer: defaultdict[str, int] = defaultdict(int)

    def count_transfer(self, project_id: str, size: int) -> None:
        """Counts bytes sent to a client of the project (Data API response bodies)."""
        self._transfer[project_id] += size

    @property
    def host(self) -> str:
        return self._server.host

    # --- jobs ------------------------------------------------------------------------------

    def _schedule(self, project_id: str, batch: str, job: JSON) -> None:
        previous = self._project_chain.get(project_id)
        task = asyncio.create_task(self._run_job(project_id, batch, job, previous))
        self._project_chain[project_id] = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_job(
        self, project_id: str, batch: str, job: JSON, previous: asyncio.Task[None] | None
    ) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])
        started = time.perf_counter()
        status, error = "finished", None
        try:
            await self._while_server_lost(job["kind"], lambda: self._run_job_once(batch, job))
        except _LeftForRestartError:
            return
        except Exception as exc:
            log.exception("localplane.job_failed", kind=job["kind"], project_id=project_id)
            status, error = "error", f"{type(exc).__name__}: {exc}"[:1000]
        if self._delay:
            await asyncio.sleep(self._delay)
        self._engine.kill.point("job.before_finish")
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        try:
            # An operation left running would lock its project (423) until a restart.
            await self._while_server_lost(
                "finish",
                lambda: self._finish_operations(project_id, batch, status, error, elapsed_ms),
            )
        except _LeftForRestartError:
            return
        if status == "error":
            # A failed step may have left a database closed (its server went away mid-copy);
            # if the server is still gone, the plane's guard reopens it later.
            try:
                await self.reopen_doors([project_id])
            except Exception:
                log.exception("localplane.reopen_after_failure_failed", project_id=project_id)

    async def _finish_operations(
        self, project_id: str, batch: str, status: str, error: str | None, elapsed_ms: int
    ) -> None:
        async with self._store.tx(project_id) as tx:
            for op in await tx.list(OperationRecord, project_id):
                if op.batch == batch and op.status == "running":
                    op.status, op.error, op.updated_at = status, error, now()
                    op.total_duration_ms = elapsed_ms
                    await tx.put(op)

    async def _run_job_once(self, batch: str, job: JSON) -> None:
        if job["kind"] == "steps":
            await self._job_steps(job["args"], batch=batch)
        else:
            handler: Callable[[JSON], Awaitable[None]] = getattr(self, f"_job_{job['kind']}")
            await handler(job["args"])

    async def _while_server_lost(self, what: str, run: Callable[[], Awaitable[None]]) -> None:
        """Runs `run` again while its server connection breaks (PostgreSQL killed and
        restarting), for up to `_SERVER_LOST_RETRY_S`. Every step of a job is idempotent and
        finished steps are recorded, so running it again resumes it. Once the plane stops,
        raises `_LeftForRestartError` instead of waiting: the operation stays running under this
        process's runner id, and the next process resumes it (`recover`)."""
        deadline = time.monotonic() + _SERVER_LOST_RETRY_S
        pause, max_pause = _SERVER_LOST_PAUSE_S
        while True:
            try:
                await run()
            except psycopg.OperationalError as exc:
                if self._stopping.is_set():
                    log.info("localplane.job_left_for_restart", kind=what)
                    raise _LeftForRestartError from exc
                if time.monotonic() + pause > deadline:
                    raise
                log.warning(
                    "localplane.job_server_lost",
                    kind=what,
                    retry_in_s=pause,
                    error=f"{type(exc).__name__}: {exc}"[:300],
                )
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), pause)
                pause = min(pause * 2, max_pause)
            else:
                return

    @asynccontextmanager
    async def _mutation(
        self, project_id: str, *, check_idle: bool = True
    ) -> AsyncIterator[Mutation]:
        """A transaction serialized per project; jobs started in it run after the commit."""
        async with self._store.tx(project_id) as tx:
            if check_idle and await tx.running_operations(project_id):
                raise Locked
            mutation = Mutation(tx, project_id, self.runner_id)
            yield mutation
        for batch, job in mutation.jobs:
            self._schedule(project_id, batch, job)

    async def recover(self) -> None:
        """Re-runs the jobs of operations a previous process left running, then drops orphans."""
        async with self._store.tx() as tx:
            ops = await tx.list(OperationRecord)
        batches: dict[str, tuple[str, JSON]] = {}
        alive: dict[int, bool] = {}
        for op in ops:
            if op.status != "running" or op.job is None:
                continue
            if op.runner not in alive:
                alive[op.runner] = await self._store.runner_alive(op.runner)
            if not alive[op.runner]:
                batches[op.batch] = (op.project_id, op.job)
        for batch, (project_id, job) in batches.items():
            log.info("localplane.resume_job", kind=job["kind"], project_id=project_id)
            async with self._store.tx(project_id) as tx:
                for op in await tx.list(OperationRecord, project_id):
                    if op.batch == batch:
                        op.runner = self.runner_id
                        await tx.put(op)
            self._schedule(project_id, batch, job)

    # --- hooks -----------------------------------------------------------------------------
    # The core's calls run these once their mutation has committed. The add-ons override them
    # (`AddonLineage`) instead of wrapping the core's methods, so no order of the plane's
    # classes matters.

    async def _branch_created(self, project_id: str, parent_id: str, branch_id: str) -> None:
        """A branch was made from `parent_id`."""

    async def _snapshot_restored(
        self, project_id: str, snapshot: SnapshotRecord, body: SnapshotRestoreBody, branch_id: str
    ) -> None:
        """`snapshot` was restored as `branch_id` (finalized or not, as `body` asked)."""

    async def _restore_finalized(self, project_id: str, target_id: str, branch_id: str) -> None:
        """The restored `branch_id` took the place of `target_id`."""

    async def _project_deleted(self, project: ProjectRecord) -> None:
        """`project`'s records are gone; its databases are being dropped in the background."""

    async def _more_orphans(self) -> list[str]:
        """Drops what else nothing refers to any more, after the core's orphans; their names."""
        return []

    async def collect_orphans(self) -> list[str]:
        """Drops physical databases and project roles that nothing refers to any more: what a
        crash left behind while a deleted project's databases were being dropped."""
        # Physical objects are listed before records are read: records are always written
        # before the objects they name, so an object created meanwhile is never mistaken.
        databases = await self._engine.list_databases(("lpd_", "lps_"))
        groups = await self._engine.list_roles("lp_")
        async with self._store.tx() as tx:
            referenced = {d.physical for d in await tx.list(DatabaseRecord)}
            for snap in await tx.list(SnapshotRecord):
                referenced |= {phys for _owner, phys in snap.databases.values()}
            keys = {p.key for p in await tx.list(ProjectRecord)}
            unfinished = json.dumps(
                [op.job for op in await tx.list(OperationRecord) if op.status == "running"]
            )
        dropped = [n for n in databases if n not in referenced and n not in unfinished]
        for name in dropped:
            await self._engine.drop_database(name)
        # What a crash left in the trash (not orphans: renamed to be dropped) is dropped in the
        # background, and waited for only before dropping roles that may own objects in it.
        self._engine.empty_trash_soon()
        for group in groups:
            if group.removeprefix("lp_") not in keys:
                await self._engine.drain_trash()
                members = await self._engine.role_members(group)
                await self._engine.drop_roles(*members, group)
                dropped += [*members, group]
        dropped += await self._more_orphans()
        if dropped:
            log.info("localplane.orphans_dropped", count=len(dropped))
        return dropped

    async def drain(self, *, stopping: bool = False) -> None:
        """Waits for every background job, and for the trash to be emptied (used at shutdown
        and by tests). `stopping`: jobs waiting for a lost server stop waiting and are left for
        the next process, so a shutdown is not held up for minutes."""
        if stopping:
            self._stopping.set()
        while self._tasks:
            await asyncio.wait(list(self._tasks))
        await self._engine.drain_trash()

    # --- lookups -----------------------------------------------------------------------------

    @staticmethod
    async def _project(tx: Tx, project_id: str) -> ProjectRecord:
        found = await tx.get(ProjectRecord, project_id)
        if found is None:
            raise NotFound(f"project {project_id} not found")
        return found

    @staticmethod
    async def _branch(tx: Tx, project_id: str, branch_id: str) -> BranchRecord:
        found = await tx.get(BranchRecord, branch_id)
        if found is None or found.project_id != project_id:
            raise NotFound(f"branch {branch_id} not found in project {project_id}")
        return found

    @staticmethod
    async def _endpoint(tx: Tx, project_id: str, endpoint_id: str) -> EndpointRecord:
        found = await tx.get(EndpointRecord, endpoint_id)
        if found is None or found.project_id != project_id:
            raise NotFound(f"endpoint {endpoint_id} not found in project {project_id}")
        return found

    @staticmethod
    async def _snapshot(tx: Tx, project_id: str, snapshot_id: str) -> SnapshotRecord:
        found = await tx.get(SnapshotRecord, snapshot_id)
        if found is None or found.project_id != project_id:
            raise NotFound(f"snapshot {snapshot_id} not found in project {project_id}")
        return found

    @staticmethod
    async def _role(tx: Tx, project_id: str, name: str) -> RoleRecord:
        found = await tx.get(RoleRecord, f"{project_id}/{name}")
        if found is None:
            raise NotFound(f"role {name!r} not found")
        return found

    @staticmethod
    async def _databases(tx: Tx, project_id: str, branch_id: str) -> list[DatabaseRecord]:
        return [d for d in await tx.list(DatabaseRecord, project_id) if d.branch_id == branch_id]

    @staticmethod
    async def _branch_endpoints(tx: Tx, project_id: str, branch_id: str) -> list[EndpointRecord]:
        return [e for e in await tx.list(EndpointRecord, project_id) if e.branch_id == branch_id]

    def _endpoint_json(self, e: EndpointRecord, p: ProjectRecord) -> JSON:
        return render.endpoint(e, host=self.host, region_id=p.region_id)

    def _details(self, r: RoleRecord, d: DatabaseRecord, endpoint_id: str | None = None) -> JSON:
        """Connection details for `r` on `d`: through the proxy with Neon's names when it
        runs (and `endpoint_id` is known), else straight to PostgreSQL with physical names."""
        if self.proxy_address is not None and endpoint_id is not None:
            host, port = self.proxy_address
            return render.proxy_connection_details(
                role=r.name,
                password=r.password or "",
                host=host,
                port=port,
                dbname=d.name,
                endpoint_id=endpoint_id,
            )
        return render.connection_details(
            role_physical=r.physical,
            password=r.password or "",
            host=self.host,
            port=self._server.port,
            db_physical=d.physical,
        )

    async def _mark_ready(self, project_id: str, *, branch_ids: set[str] | None = None) -> None:
        """Branches become ready, endpoints in `init` active, and branch sizes are measured."""
        async with self._store.tx(project_id) as tx:
            dbs = await tx.list(DatabaseRecord, project_id)
            for b in await tx.list(BranchRecord, project_id):
                if branch_ids is not None and b.id not in branch_ids:
                    continue
                if b.current_state != "ready":
                    b.current_state, b.state_changed_at = "ready", now()
                sizes = [await self._engine.size(d.physical) for d in dbs if d.branch_id == b.id]
                b.logical_size = sum(s or 0 for s in sizes)
                b.updated_at = now()
                await tx.put(b)
            for e in await tx.list(EndpointRecord, project_id):
                if e.current_state == "init":
                    e.current_state, e.started_at = "active", now()
                    await tx.put(e)

    def _schedule_cleanup(self, project_id: str, databases: list[str], roles: list[str]) -> None:
        """Drops a deleted project's databases and roles in the background, a few projects at
        a time, retrying while the server is busy or restarting; what still fails is left to
        `collect_orphans` (at start, and at the next sweep after a cleanup gave up), never
        lost."""
        previous = self._project_chain.get(project_id)

        async def drop() -> None:
            for name in databases:
                await self._engine.drop_database(name)
            # The project's branches and snapshots deleted before it may still be in the trash,
            # holding objects its roles own.
            await self._engine.drain_trash()
            await self._engine.drop_roles(*roles)

        async def cleanup() -> None:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            try:
                async with self._cleanups:
                    async for attempt in stamina.retry_context(
                        on=psycopg.OperationalError, attempts=5, wait_initial=0.5, wait_max=10
                    ):
                        with attempt:
                            await drop()
            except psycopg.Error as error:
                self.orphans_suspected = True
                log.warning(
                    "localplane.cleanup_failed", project_id=project_id, error=type(error).__name__
                )

        task = asyncio.create_task(cleanup())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the one physical job: a list of idempotent steps -------------------------------------

    async def _job_steps(self, args: JSON, *, batch: str | None = None) -> None:
        """Runs the job's steps in order. Each finished step is recorded with the job, so a
        job resumed after a crash skips the steps that finished and re-runs only the one the
        crash cut off; re-running a finished step could undo a later one (a copy made again
        after its swap would swap the live database out a second time)."""
        project_id: str = args["project_id"]
        steps = [step.decode(raw) for raw in args["steps"]]
        done = int(args.get("done", 0))
        for index in range(done, len(steps)):
            await self._step(project_id, steps[index])
            if batch is not None and index + 1 < len(steps):
                await self._record_progress(project_id, batch, index + 1)
                args["done"] = index + 1
            self._engine.kill.point("job.step_done")
        await self._mark_ready(project_id, branch_ids=set(args.get("ready", [])))

    async def _record_progress(self, project_id: str, batch: str, done: int) -> None:
        async with self._store.tx() as tx:
            for op in await tx.list(OperationRecord, project_id):
                if op.batch == batch and op.job is not None:
                    op.job["args"]["done"] = done
                    await tx.put(op)

    async def _role_password(self, project_id: str, physical: str) -> str:
        """The password of the project's role named `physical` in the cluster."""
        async with self._store.tx() as tx:
            for role in await tx.list(RoleRecord, project_id):
                if role.physical == physical and role.password:
                    return role.password
        raise EngineError(f"role {physical} of project {project_id} has no password")

    async def _door_open(self, project_id: str, physical: str) -> bool | None:
        """Whether the records say `physical` takes clients: a database of a branch none of
        whose computes is suspended and whose last compute was not deleted. None when no
        database record names it."""
        async with self._store.tx() as tx:
            return await self._door_open_in(tx, project_id, physical)

    async def _door_open_in(self, tx: Tx, project_id: str, physical: str) -> bool | None:
        record = next(
            (d for d in await tx.list(DatabaseRecord, project_id) if d.physical == physical), None
        )
        if record is None:
            return None
        branch = await tx.get(BranchRecord, record.branch_id)
        if branch is not None and branch.computeless:
            return False
        endpoints = await self._branch_endpoints(tx, project_id, record.branch_id)
        return not any(e.door_closed for e in endpoints)

    async def reopen_doors(self, project_ids: list[str] | None = None) -> list[str]:
        """Reopens project databases that refuse clients although their records say they take
        them and no operation of their project is in flight: what a crash or a server death
        mid-copy left behind. Returns the databases reopened."""
        closed = set(await self._engine.closed_databases("lpd_"))
        if not closed:
            return []
        async with self._store.tx() as tx:
            records = (
                await tx.list(DatabaseRecord)
                if project_ids is None
                else await tx.list_in(DatabaseRecord, project_ids)
            )
        projects = sorted({d.project_id for d in records if d.physical in closed})
        reopened: list[str] = []
        for project_id in projects:
            # Under the project's lock: no mutation can start a job while this looks.
            async with self._store.tx(project_id) as tx:
                if await tx.running_operations(project_id):
                    continue
                # A job that finished since `closed` was read has reopened its databases.
                still = set(await self._engine.closed_databases("lpd_")) & closed
                for d in await tx.list(DatabaseRecord, project_id):
                    if d.physical not in still:
                        continue
                    if await self._door_open_in(tx, project_id, d.physical):
                        await self._engine.set_connections(d.physical, allowed=True)
                        reopened.append(d.physical)
        if reopened:
            log.warning("localplane.databases_reopened", databases=reopened)
        return reopened

    async def _step(self, project_id: str, job_step: step.Step) -> None:  # noqa: C901, PLR0912
        # one case per step kind; a table of handlers would only scatter them
        engine = self._engine
        match job_step:
            case step.Copy(source, target, group, live, allow):
                await engine.copy_database(
                    source,
                    target,
                    group,
                    source_is_live=live,
                    allow_connections=allow,
                    source_open=await self._door_open(project_id, source) if live else None,
                )
            case step.Schema(source, target, owner, group):
                # Unfinished (the job records finished steps): a crash may have cut the schema
                # copy short, so the new, still unused database is made again.
                await engine.drop_database(target)
                await engine.create_database(target, owner, group)
                await engine.copy_schema(
                    source, target, owner, await self._role_password(project_id, owner)
                )
            case step.Snapshot():
                await self._snapshot_database(project_id, job_step)
            case step.Create():
                await self._create_database(project_id, job_step)
            case step.Swap(live, replacement, parked, allow):
                self.last_swap_downtime_s = await engine.swap(
                    live, replacement, parked, allow_connections=allow
                )
                await engine.set_connections(parked, allowed=True)
            case step.Drop(name):
                await engine.discard_database(name)
            case step.Connections(name, allowed):
                await engine.set_connections(name, allowed=allowed)
            case step.Role(physical, group, login):
                async with self._store.tx() as tx:
                    role = next(
                        (
                            r
                            for r in await tx.list(RoleRecord, project_id)
                            if r.physical == physical
                        ),
                        None,
                    )
                if role is not None:
                    await engine.ensure_role(physical, role.password, group, login=login)
            case step.Password(physical):
                async with self._store.tx() as tx:
                    role = next(
                        (
                            r
                            for r in await tx.list(RoleRecord, project_id)
                            if r.physical == physical
                        ),
                        None,
                    )
                if role is not None and role.password:
                    await engine.set_password(physical, role.password)
            case step.SnapshotSize(snapshot_id):
                await self._measure_snapshot(snapshot_id)
            case _:
                assert_never(job_step)

    async def _create_database(self, project_id: str, job_step: step.Create) -> None:
        """Makes the empty database and records from when it is empty (for `Snapshot`)."""
        empty_since = await self._engine.create_database(
            job_step.target, job_step.owner, job_step.group
        )
        if empty_since is None:
            return
        async with self._store.tx(project_id) as tx:
            for d in await tx.list(DatabaseRecord, project_id):
                # A restore's database may already bear the live one's name (`made_as`).
                if job_step.target in {d.physical, d.made_as}:
                    d.empty_since = empty_since
                    await tx.put(d)

    async def _snapshot_database(self, project_id: str, job_step: step.Snapshot) -> None:
        """Copies the database into the snapshot, unless its content is still a new
        database's (then the snapshot records it as `empty`: no copy, no disk)."""
        async with self._store.tx() as tx:
            snap = await tx.get(SnapshotRecord, job_step.snapshot_id)
        if snap is None or job_step.name in snap.empty:
            return
        engine = self._engine
        if not await engine.exists(job_step.target) and await engine.unchanged_since(
            job_step.source, job_step.empty_since, job_step.upto
        ):
            async with self._store.tx(project_id) as tx:
                current = await tx.get(SnapshotRecord, job_step.snapshot_id)
                if current is not None and job_step.name not in current.empty:
                    current.empty.append(job_step.name)
                    await tx.put(current)
            return
        await engine.copy_database(
            job_step.source,
            job_step.target,
            job_step.group,
            source_is_live=True,
            allow_connections=False,
            source_open=await self._door_open(project_id, job_step.source),
        )

    async def _measure_snapshot(self, snapshot_id: str) -> None:
        async with self._store.tx() as tx:
            snap = await tx.get(SnapshotRecord, snapshot_id)
        if snap is None:
            return
        # A database kept as `empty` has the size a new database has (its logical size, as
        # Neon reports it, though no copy takes disk).
        sizes = [
            await self._engine.size("template1" if name in snap.empty else phys)
            for name, (_owner, phys) in snap.databases.items()
        ]
        lsn = await self._engine.current_lsn()
        async with self._store.tx(snap.project_id) as tx:
            current = await tx.get(SnapshotRecord, snapshot_id)
            if current is not None:
                current.full_size = sum(s or 0 for s in sizes)
                current.lsn = lsn
                await tx.put(current)
