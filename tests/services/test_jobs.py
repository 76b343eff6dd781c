"""The background job runner on the embedded PostgreSQL: periodic runs, kicks, failures that
never stop it, one run of a job at a time across runners sharing a meta DB, prompt shutdown."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from agentdb.services import InvalidInput
from agentdb.services._errors import JobBusy, JobNotFound
from agentdb.services.jobs import JobRunner
from meta_schema import JobRun

Sessions = async_sessionmaker[AsyncSession]
FAST = timedelta(milliseconds=50)
NEVER = timedelta(hours=1)


class Counter:
    """A job that counts its runs and returns the count."""

    def __init__(self, *, fail: bool = False, takes: float = 0.0) -> None:
        self.runs = 0
        self.fail = fail
        self.takes = takes

    async def __call__(self) -> int:
        self.runs += 1
        if self.takes:
            await asyncio.sleep(self.takes)
        if self.fail:
            raise RuntimeError(f"run {self.runs} broke")
        return self.runs


async def eventually(condition, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_jobs_run_at_start_and_then_periodically(meta_sessions: Sessions) -> None:
    counter = Counter()
    runner = JobRunner(meta_sessions)
    runner.add("tick", counter, every=FAST, jitter=0.2)
    async with runner:
        # The runner's own count, not the job's: a run is counted once its record is written.
        await eventually(lambda: runner.status()["tick"].runs >= 4)
    status = runner.status()["tick"]
    assert status.runs >= 4
    assert status.failures == 0
    assert status.last_result == status.runs
    assert status.last_succeeded_at is not None
    assert not status.running


async def test_kick_runs_a_sleeping_job_soon(meta_sessions: Sessions) -> None:
    counter = Counter()
    runner = JobRunner(meta_sessions)
    runner.add("cleanup", counter, every=NEVER, run_at_start=False)
    async with runner:
        await asyncio.sleep(0.2)
        assert counter.runs == 0
        runner.kick("cleanup")
        await eventually(lambda: counter.runs == 1, timeout=2)
        runner.kick("cleanup")
        await eventually(lambda: counter.runs == 2, timeout=2)
    with pytest.raises(JobNotFound):
        runner.kick("nope")


async def test_run_now_returns_the_result_or_raises_the_error(meta_sessions: Sessions) -> None:
    runner = JobRunner(meta_sessions)
    runner.add("count", Counter(), every=NEVER)
    runner.add("broken", Counter(fail=True), every=NEVER)
    assert await runner.run_now("count") == 1
    assert await runner.run_now("count") == 2
    with pytest.raises(RuntimeError, match="run 1 broke"):
        await runner.run_now("broken")
    broken = runner.status()["broken"]
    assert (broken.runs, broken.failures, broken.consecutive_failures) == (1, 1, 1)
    assert broken.last_error == "RuntimeError: run 1 broke"
    with pytest.raises(JobNotFound):
        await runner.run_now("nope")


async def test_a_failing_job_is_retried_and_never_stops_the_runner(
    meta_sessions: Sessions,
) -> None:
    broken, healthy = Counter(fail=True), Counter()
    runner = JobRunner(meta_sessions)
    runner.add("broken", broken, every=FAST)
    runner.add("healthy", healthy, every=FAST)
    async with runner:
        # The runner's own counts: a run is counted once its record is written.
        await eventually(
            lambda: (
                runner.status()["broken"].consecutive_failures >= 3
                and runner.status()["healthy"].runs >= 3
            )
        )
        status = runner.status()
        assert status["broken"].consecutive_failures >= 3
        assert status["broken"].last_succeeded_at is None
        assert status["healthy"].failures == 0
    # Once it works again, its failure streak ends.
    broken.fail = False
    await runner.run_now("broken")
    assert runner.status()["broken"].consecutive_failures == 0
    assert runner.status()["broken"].last_error is None


async def test_two_runners_on_one_meta_db_never_overlap_a_job(meta_sessions: Sessions) -> None:
    """Two processes: separate runners, one meta DB. The advisory lock makes one skip."""
    active, most = 0, 0
    runs = 0

    async def exclusive() -> None:
        nonlocal active, most, runs
        active += 1
        most = max(most, active)
        await asyncio.sleep(0.1)
        active -= 1
        runs += 1

    mine, theirs = JobRunner(meta_sessions), JobRunner(meta_sessions)
    for runner in (mine, theirs):
        runner.add("meter-usage", exclusive, every=timedelta(milliseconds=20), jitter=0)
    async with mine, theirs:
        await eventually(lambda: runs >= 6)
    assert most == 1
    skipped = mine.status()["meter-usage"].skipped + theirs.status()["meter-usage"].skipped
    assert skipped >= 1
    # The record says so too: each run by one runner, from start to end, none overlapping.
    async with meta_sessions() as db:
        rows = (
            await db.execute(
                sa.select(JobRun.runner, JobRun.started_at, JobRun.finished_at, JobRun.error)
                .where(JobRun.job == "meter-usage")
                .order_by(JobRun.started_at)
            )
        ).all()
    assert len(rows) >= 6
    assert {row.runner for row in rows} <= {mine.runner, theirs.runner}
    assert mine.runner != theirs.runner
    assert all(row.error is None for row in rows)
    # Leaving `async with` cancels a run in flight: only the last run can be unfinished.
    assert all(row.finished_at is not None for row in rows[:-1])
    for before, after in itertools.pairwise(rows):
        assert after.started_at >= before.finished_at


async def test_a_failed_run_is_recorded_with_its_error(meta_sessions: Sessions) -> None:
    runner = JobRunner(meta_sessions)
    runner.add("breaks-on-record", Counter(fail=True), every=NEVER, run_at_start=False)
    with pytest.raises(RuntimeError, match="run 1 broke"):
        await runner.run_now("breaks-on-record")
    async with meta_sessions() as db:
        (row,) = (
            await db.execute(sa.select(JobRun).where(JobRun.job == "breaks-on-record"))
        ).scalars()
    assert row.runner == runner.runner
    assert row.finished_at is not None
    assert row.error is not None
    assert "run 1 broke" in row.error


async def test_run_now_waits_for_another_process_or_gives_up(meta_sessions: Sessions) -> None:
    slow = Counter(takes=0.5)
    mine, theirs = JobRunner(meta_sessions), JobRunner(meta_sessions)
    mine.add("migrate", slow, every=NEVER)
    theirs.add("migrate", slow, every=NEVER)
    async with mine:
        await eventually(lambda: mine.status()["migrate"].running)
        with pytest.raises(JobBusy):
            await theirs.run_now("migrate", wait=timedelta(milliseconds=100))
        assert await theirs.run_now("migrate") == 2  # after the other run finished
    assert mine.status()["migrate"].runs == 1


async def test_shutdown_is_prompt_mid_run_and_mid_sleep_and_frees_the_lock(
    meta_sessions: Sessions,
) -> None:
    long_run = Counter(takes=60)
    runner = JobRunner(meta_sessions)
    runner.add("long", long_run, every=NEVER)
    runner.add("sleepy", Counter(), every=NEVER)
    async with runner:
        await eventually(lambda: runner.status()["long"].running)
        started = time.monotonic()
    assert time.monotonic() - started < 1
    # The cancelled run released its advisory lock: another runner gets it at once.
    other = JobRunner(meta_sessions)
    other.add("long", Counter(), every=NEVER)
    assert await other.run_now("long", wait=timedelta(milliseconds=200)) == 1


async def test_bad_job_definitions_name_the_field(meta_sessions: Sessions) -> None:
    runner = JobRunner(meta_sessions)
    runner.add("ok", Counter(), every=NEVER)
    cases = [
        ({"name": "ok", "every": NEVER}, "name"),
        ({"name": " ", "every": NEVER}, "name"),
        ({"name": "zero", "every": timedelta(0)}, "every"),
        ({"name": "wobbly", "every": NEVER, "jitter": 1.5}, "jitter"),
    ]
    for kwargs, field in cases:
        with pytest.raises(InvalidInput) as raised:
            runner.add(run=Counter(), **kwargs)  # type: ignore[arg-type]
        assert raised.value.field == field
    assert set(runner.status()) == {"ok"}


async def test_jobs_added_while_running_start_too(meta_sessions: Sessions) -> None:
    counter = Counter()
    runner = JobRunner(meta_sessions)
    async with runner:
        runner.add("late", counter, every=FAST)
        await eventually(lambda: counter.runs >= 2)
        with pytest.raises(RuntimeError):
            await runner.__aenter__()


async def test_a_kick_as_the_runner_stops_does_not_hold_it_up(meta_sessions: Sessions) -> None:
    """A cancel that lands just as a kick wakes a sleeping job ends it (Python 3.11's wait_for
    returned the wake-up instead, and the job slept a whole period more)."""
    counter = Counter()
    runner = JobRunner(meta_sessions)
    runner.add("refill", counter, every=NEVER, run_at_start=False)
    await runner.__aenter__()
    await asyncio.sleep(0.1)  # the job sleeps until kicked
    runner.kick("refill")
    stopping = asyncio.create_task(runner.__aexit__(None, None, None))
    done, _ = await asyncio.wait([stopping], timeout=30)
    assert done, "the runner did not stop"
    assert counter.runs == 0


async def test_a_cancel_is_not_lost_when_the_lock_connection_died(meta_sessions: Sessions) -> None:
    """Shutdown cancels a run whose meta-DB connection died meanwhile (PostgreSQL restarted):
    the failed unlock on the way out must not turn the cancel into a logged error after which
    the job sleeps on."""
    started = asyncio.Event()

    async def lose_the_lock_then_wait() -> None:
        async with meta_sessions() as db:
            await db.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
                )
            )
        started.set()
        await asyncio.sleep(3600)

    runner = JobRunner(meta_sessions)
    runner.add("stuck", lose_the_lock_then_wait, every=NEVER)
    await runner.__aenter__()
    await asyncio.wait_for(started.wait(), 30)
    stopping = asyncio.create_task(runner.__aexit__(None, None, None))
    done, _ = await asyncio.wait([stopping], timeout=30)
    assert done, "the runner did not stop"
