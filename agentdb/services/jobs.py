"""The one mechanism for agentdb's background work (reconciling, branch expiry, cleanup, usage
metering): periodic, idempotent scans of meta-DB rows whose state says what is left to do.
The rows are the queue; asyncio tasks in the app's lifespan run the scans, and an advisory
lock per job keeps two processes sharing one meta DB from running the same job at once; each
run is recorded in `job_runs` (which process, from when to when, what failed)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlmodel import col

from meta_schema import JobRun

from ._common import Clock, SessionFactory, describe, system_clock
from ._errors import InvalidInput, JobBusy, JobNotFound

log = structlog.get_logger(__name__)

#: How long `job_runs` keeps a run, and how often (in runs of a job) older ones are deleted.
RUN_RETENTION = timedelta(days=7)
_PRUNE_EVERY = 100

Job = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class JobStatus:
    """One job as a health check sees it. `runs` counts finished runs (failed ones too);
    `skipped` counts rounds another process was running the job."""

    name: str
    every: timedelta
    running: bool
    runs: int
    failures: int
    consecutive_failures: int
    skipped: int
    last_started_at: datetime | None
    last_finished_at: datetime | None
    last_succeeded_at: datetime | None
    last_result: object
    last_error: str | None


@dataclass(slots=True)
class _Job:
    name: str
    run: Job
    every: timedelta
    jitter: float
    run_at_start: bool
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # One run at a time in this process: the periodic loop and `run_now` take turns.
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    running: bool = False
    runs: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    skipped: int = 0
    last_started_at: datetime | None = None
    last_finished_at: datetime | None = None
    last_succeeded_at: datetime | None = None
    last_result: object = None
    last_error: str | None = None

    def status(self) -> JobStatus:
        return JobStatus(
            name=self.name,
            every=self.every,
            running=self.running,
            runs=self.runs,
            failures=self.failures,
            consecutive_failures=self.consecutive_failures,
            skipped=self.skipped,
            last_started_at=self.last_started_at,
            last_finished_at=self.last_finished_at,
            last_succeeded_at=self.last_succeeded_at,
            last_result=self.last_result,
            last_error=self.last_error,
        )


class JobRunner:
    """Runs registered jobs every `every` (± `jitter`), from `async with` until its exit.

    A failing run is logged and retried next period; it never stops the runner. Each run
    holds a session-level `pg_try_advisory_lock` keyed by the job's name on a meta-DB
    connection: another process running the same job makes this one skip the round.
    """

    def __init__(
        self, sessions: SessionFactory, *, clock: Clock = system_clock, lock_poll: float = 0.05
    ) -> None:
        self._sessions = sessions
        self._clock = clock
        self._lock_poll = lock_poll
        self._jobs: dict[str, _Job] = {}
        self._started = False
        #: This process in `job_runs`: host, pid and a random tag.
        self.runner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        # Jitter spreads processes' rounds; it guards nothing, so any generator will do.
        self._random = random.Random()  # noqa: S311

    def add(
        self,
        name: str,
        run: Job,
        *,
        every: timedelta,
        jitter: float = 0.1,
        run_at_start: bool = True,
    ) -> None:
        """Registers `run` under `name` (also its lock's key across processes), to run every
        `every`, each wait stretched or shrunk by up to `jitter` of it."""
        if not name.strip():
            raise InvalidInput("name", "must not be blank")
        if name in self._jobs:
            raise InvalidInput("name", f"a job named {name!r} is already registered")
        if every <= timedelta(0):
            raise InvalidInput("every", "must be positive")
        if not 0 <= jitter < 1:
            raise InvalidInput("jitter", "must be at least 0 and less than 1")
        job = _Job(name=name, run=run, every=every, jitter=jitter, run_at_start=run_at_start)
        self._jobs[name] = job
        if self._started:
            job.task = asyncio.create_task(self._loop(job), name=f"job:{name}")

    async def __aenter__(self) -> Self:
        if self._started:
            raise RuntimeError("the job runner is already running")
        self._started = True
        for job in self._jobs.values():
            job.task = asyncio.create_task(self._loop(job), name=f"job:{job.name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Cancels every job, mid-run or mid-sleep, and waits for them to unwind (a run in
        flight releases its advisory lock on the way out)."""
        self._started = False
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for job in self._jobs.values():
            job.task = None

    def kick(self, name: str) -> None:
        """Runs the job soon (right after its current run, if one is under way), e.g. the
        replaced-branch cleanup right after a restore."""
        self._job(name).wake.set()

    async def run_now(self, name: str, *, wait: timedelta = timedelta(minutes=5)) -> object:
        """Runs the job once, here and now, and returns its result (or raises its error).
        Waits for a run of it in flight here, and up to `wait` for one in another process
        (then `JobBusy`)."""
        job = self._job(name)
        deadline = time.monotonic() + wait.total_seconds()
        async with job.turn, self._sessions() as db:
            conn = await db.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            key = advisory_key(name)
            while not await _try_lock(conn, key):
                if time.monotonic() >= deadline:
                    raise JobBusy(name)
                await asyncio.sleep(self._lock_poll)
            try:
                return await self._execute(job, conn)
            finally:
                await _unlock(conn, key)

    def status(self) -> dict[str, JobStatus]:
        """Every job's counters and last outcome, by name."""
        return {name: job.status() for name, job in self._jobs.items()}

    def _job(self, name: str) -> _Job:
        job = self._jobs.get(name)
        if job is None:
            raise JobNotFound(name)
        return job

    async def _loop(self, job: _Job) -> None:
        if job.run_at_start:
            job.wake.clear()
        else:
            await self._pause(job)
        while True:
            try:
                await self._round(job)
            except Exception as error:  # noqa: BLE001 - e.g. the meta DB is down: next period
                log.warning("job.round_failed", job=job.name, error=describe(error))
            if (task := asyncio.current_task()) is not None and task.cancelling():
                raise asyncio.CancelledError  # a cancel some library turned into an error
            await self._pause(job)

    async def _pause(self, job: _Job) -> None:
        spread = self._random.uniform(-job.jitter, job.jitter)
        delay = job.every.total_seconds() * (1 + spread)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the event's result
        # when a cancel arrives just as a kick set it, and the cancelled loop runs on (a
        # shutdown then waited a whole period for it).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await job.wake.wait()
        job.wake.clear()

    async def _round(self, job: _Job) -> None:
        """One periodic run, unless another process holds the job's lock (then skipped)."""
        async with job.turn, self._sessions() as db:
            # Autocommit: the lock is the session's, and no transaction idles while the job runs.
            conn = await db.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            key = advisory_key(job.name)
            if not await _try_lock(conn, key):
                job.skipped += 1
                log.debug("job.skipped", job=job.name, reason="running in another process")
                return
            try:
                # A failing job is logged by _execute and retried next period.
                with contextlib.suppress(Exception):
                    await self._execute(job, conn)
            finally:
                await _unlock(conn, key)

    async def _execute(self, job: _Job, conn: AsyncConnection) -> object:
        """Runs `job` while `conn` holds its lock, recorded as a `job_runs` row."""
        job.running = True
        job.last_started_at = self._clock()
        run_id = await self._record_start(conn, job)
        try:
            result = await job.run()
        except Exception as error:
            await self._record_end(conn, run_id, describe(error))
            job.runs += 1
            job.failures += 1
            job.consecutive_failures += 1
            job.last_error = describe(error)
            log.warning(
                "job.failed",
                job=job.name,
                error=job.last_error,
                consecutive_failures=job.consecutive_failures,
                exc_info=error,
            )
            raise
        finally:
            job.running = False
            job.last_finished_at = self._clock()
        await self._record_end(conn, run_id, None)
        job.runs += 1
        job.consecutive_failures = 0
        job.last_succeeded_at = job.last_finished_at
        job.last_result = result
        job.last_error = None
        return result

    async def _record_start(self, conn: AsyncConnection, job: _Job) -> int | None:
        """The run's `job_runs` row (None if it could not be written: the job runs anyway);
        every `_PRUNE_EVERY` runs, this job's rows past `RUN_RETENTION` go."""
        try:
            run_id = await conn.scalar(
                sa.insert(JobRun)
                .values(job=job.name, runner=self.runner, started_at=job.last_started_at)
                .returning(col(JobRun.id))
            )
            if (job.runs + 1) % _PRUNE_EVERY == 0:
                await conn.execute(
                    sa.delete(JobRun).where(
                        col(JobRun.job) == job.name,
                        col(JobRun.started_at) < self._clock() - RUN_RETENTION,
                    )
                )
        except Exception as error:  # noqa: BLE001 - the record must not stop the job
            log.info("job.record_failed", job=job.name, error=describe(error))
            return None
        return run_id

    async def _record_end(
        self, conn: AsyncConnection, run_id: int | None, error: str | None
    ) -> None:
        if run_id is None:
            return
        try:
            await conn.execute(
                sa.update(JobRun)
                .where(col(JobRun.id) == run_id)
                .values(finished_at=self._clock(), error=error and error[:500])
            )
        except Exception as failure:  # noqa: BLE001 - the record must not fail the job
            log.info("job.record_failed", run_id=run_id, error=describe(failure))


def advisory_key(name: str) -> int:
    """The job's advisory-lock key: a signed 64-bit hash of its name (another `person` than
    `SessionLocks`' keys, so jobs and sessions never share one)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=b"agentdb.job").digest()
    return int.from_bytes(digest, "big", signed=True)


async def _try_lock(conn: AsyncConnection, key: int) -> bool:
    return bool(await conn.scalar(sa.select(sa.func.pg_try_advisory_lock(key))))


async def _unlock(conn: AsyncConnection, key: int) -> None:
    """Releases the job's lock before the connection goes back to the pool; if that fails,
    the connection is discarded, which ends its database session and so the lock."""
    try:
        await conn.scalar(sa.select(sa.func.pg_advisory_unlock(key)))
    except Exception as error:  # noqa: BLE001 - a dead connection holds no lock
        # Not raised: in a `finally`, it would replace what is on its way out (a cancel at
        # shutdown, which the loop would then log as a failed round and sleep on).
        log.info("job.unlock_failed", error=describe(error))
        await conn.invalidate()
    except BaseException:
        await conn.invalidate()
        raise


__all__ = ["JobRunner", "JobStatus", "advisory_key"]
