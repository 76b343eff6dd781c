"""Client-side rate limits (700/min overall, 30/min on consumption) and transfer batches."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from agentdb.neon import NeonClient
from agentdb.neon._limits import SlidingWindowLimiter

from .spec_bodies import SpecMock

T0 = datetime(2026, 6, 1, tzinfo=UTC)


class FakeClock:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_the_call_over_the_limit_waits_for_the_window() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(3, 60.0, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        assert await limiter.acquire() == 0
    clock.now += 10
    assert await limiter.acquire() == pytest.approx(50.0)  # the first start leaves the window
    assert clock.slept == [pytest.approx(50.0)]
    clock.now += 60
    assert await limiter.acquire() == 0


async def test_no_window_ever_holds_more_than_the_limit() -> None:
    clock = FakeClock()
    limiter = SlidingWindowLimiter(5, 1.0, clock=clock, sleep=clock.sleep)
    starts: list[float] = []

    async def call() -> None:
        await limiter.acquire()
        starts.append(clock.now)

    await asyncio.gather(*(call() for _ in range(23)))
    assert len(starts) == 23
    for start in starts:
        assert sum(1 for s in starts if start <= s < start + 1.0) <= 5


def test_limits_need_sensible_numbers() -> None:
    with pytest.raises(ValueError, match="limit"):
        SlidingWindowLimiter(0, 60)


async def test_the_client_defaults_are_neons_limits() -> None:
    async with NeonClient(api_key="k") as client:
        assert [(lim.limit, lim.period) for lim in client._limiters] == [(700, 60.0), (40, 1.0)]
        limiter = client._consumption_limiter
        assert (limiter.limit, limiter.period) == (30, 60.0)


async def test_consumption_calls_have_their_own_lower_limit(
    mocked: NeonClient, spec_mock: SpecMock
) -> None:
    clock = FakeClock()
    mocked._consumption_limiter = SlidingWindowLimiter(2, 60.0, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await mocked.consumption_history(
            org_id="org-1",
            from_=T0,
            to=T0 + timedelta(hours=1),
            granularity="hourly",
            metrics=["compute_unit_seconds"],
        )
    assert clock.slept == [pytest.approx(60.0)]
    await mocked.get_project("proj-1")  # other calls do not count against it
    assert clock.slept == [pytest.approx(60.0)]
    assert len(spec_mock.requests) == 4


async def test_transfers_go_in_batches_of_at_most_400(
    mocked: NeonClient, spec_mock: SpecMock
) -> None:
    ids = [f"proj-{n:04d}" for n in range(850)]
    batches = await mocked.transfer_projects(
        source_org_id="org-src-1", destination_org_id="org-dst-1", project_ids=ids
    )
    assert batches == 3
    sent = [r.body["project_ids"] for r in spec_mock.requests]
    assert [len(batch) for batch in sent] == [400, 400, 50]
    assert [i for batch in sent for i in batch] == ids
    assert {r.body["destination_org_id"] for r in spec_mock.requests} == {"org-dst-1"}


async def test_consumption_refuses_more_than_100_project_ids(mocked: NeonClient) -> None:
    with pytest.raises(ValueError, match="at most 100"):
        await mocked.consumption_history(
            org_id="org-1",
            from_=T0,
            to=T0 + timedelta(hours=1),
            granularity="hourly",
            metrics=["compute_unit_seconds"],
            project_ids=[f"p-{n}" for n in range(101)],
        )
