"""Retry rules: 423, 429 and 503 are retried for every method; 5xx and lost answers only for
GET (a mutation may have run); nothing that reached Neon is re-sent blindly."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
from contract.openapi import NeonSpec
from structlog.testing import capture_logs

from agentdb.neon import (
    NeonClient,
    NeonLocked,
    NeonRateLimited,
    NeonServerError,
    NeonTransportError,
    RetryPolicy,
)

from .conftest import API_KEY, MOCK_URL
from .spec_bodies import SpecMock, error, script

BRANCHES = "/projects/{project_id}/branches"
PROJECT = "/projects/{project_id}"


def _sent(mock: SpecMock, template: str) -> int:
    return sum(1 for r in mock.requests if r.template == template)


@pytest.mark.parametrize(
    "refusal",
    [
        error(423, "LOCKED", "project already has running conflicting operations"),
        error(429, "RATE_LIMITED", "too many requests"),
        error(503, "SERVICE_UNAVAILABLE", "try again"),
    ],
    ids=["423", "429", "503"],
)
async def test_a_post_is_retried_when_neon_refused_it(
    mocked: NeonClient, spec_mock: SpecMock, refusal: httpx.Response
) -> None:
    spec_mock.answers[BRANCHES] = script(refusal, refusal, None)
    created = await mocked.create_branch("proj-1", name="dev")
    assert created.branch.id
    assert _sent(spec_mock, BRANCHES) == 3


async def test_a_post_is_not_retried_on_500(mocked: NeonClient, spec_mock: SpecMock) -> None:
    spec_mock.answers[BRANCHES] = script(error(500, "INTERNAL_ERROR", "boom"), None)
    with pytest.raises(NeonServerError) as caught:
        await mocked.create_branch("proj-1", name="dev")
    assert caught.value.maybe_applied
    assert _sent(spec_mock, BRANCHES) == 1


async def test_a_post_is_not_retried_after_a_timeout(
    mocked: NeonClient, spec_mock: SpecMock
) -> None:
    spec_mock.answers[BRANCHES] = script(httpx.ReadTimeout("timed out"), None)
    with pytest.raises(NeonTransportError) as caught:
        await mocked.create_branch("proj-1", name="dev")
    assert caught.value.sent
    assert caught.value.maybe_applied
    assert _sent(spec_mock, BRANCHES) == 1


async def test_a_post_that_never_left_is_retried(mocked: NeonClient, spec_mock: SpecMock) -> None:
    spec_mock.answers[BRANCHES] = script(httpx.ConnectError("connection refused"), None)
    await mocked.create_branch("proj-1", name="dev")
    assert _sent(spec_mock, BRANCHES) == 2


@pytest.mark.parametrize(
    "failure",
    [
        error(500, "INTERNAL_ERROR", "boom"),
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
    ids=["500", "connect", "read-timeout", "disconnect"],
)
async def test_a_get_is_retried_on_5xx_and_connection_errors(
    mocked: NeonClient, spec_mock: SpecMock, failure: httpx.Response | Exception
) -> None:
    spec_mock.answers[PROJECT] = script(failure, failure, None)
    project = await mocked.get_project("proj-1")
    assert project.id
    assert _sent(spec_mock, PROJECT) == 3


async def test_retries_stop_after_the_attempts(neon_spec: NeonSpec) -> None:
    mock = SpecMock(neon_spec)
    mock.answers[BRANCHES] = script(error(423, "LOCKED", "busy"))
    policy = RetryPolicy(attempts=3, wait_initial=0.001, wait_max=0.001, wait_jitter=0)
    async with NeonClient(
        MOCK_URL, api_key=API_KEY, transport=mock.transport(), retry=policy
    ) as neon:
        with pytest.raises(NeonLocked):
            await neon.create_branch("proj-1")
    assert _sent(mock, BRANCHES) == 3


async def test_retry_after_is_honoured(neon_spec: NeonSpec) -> None:
    mock = SpecMock(neon_spec)
    mock.answers[PROJECT] = script(
        error(429, "RATE_LIMITED", "slow down", **{"Retry-After": "7"}), None
    )
    # A Retry-After of 7 s, capped at 0.2 s by the policy so the test stays fast; without the
    # header the wait would be about wait_initial (1 ms).
    policy = RetryPolicy(wait_initial=0.001, wait_max=0.001, wait_jitter=0, retry_after_max=0.2)
    async with NeonClient(
        MOCK_URL, api_key=API_KEY, transport=mock.transport(), retry=policy
    ) as neon:
        started = time.monotonic()
        with capture_logs() as logs:
            await neon.get_project("proj-1")
        elapsed = time.monotonic() - started
    scheduled = [e for e in logs if e["event"] == "stamina.retry_scheduled"]
    assert [e["wait_for"] for e in scheduled] == [0.2]
    assert elapsed >= 0.2
    failed = [e for e in logs if e["event"] == "neon.error_answer"]
    assert failed[0]["retry_after"] == 7.0


async def test_each_attempt_has_its_own_request_id(mocked: NeonClient, spec_mock: SpecMock) -> None:
    spec_mock.answers[PROJECT] = script(error(503, "SERVICE_UNAVAILABLE", "later"), None)
    await mocked.get_project("proj-1")
    ids = [r.headers["x-request-id"] for r in spec_mock.requests]
    assert len(set(ids)) == 2
    assert all(uuid.UUID(i) for i in ids)


BRANCH = "/projects/{project_id}/branches/{branch_id}"


async def test_a_delete_is_sent_again_after_a_500(mocked: NeonClient, spec_mock: SpecMock) -> None:
    # A DELETE is idempotent: sent again, it deletes or answers 404 (which callers take as done).
    spec_mock.answers[BRANCH] = script(error(500, "INTERNAL_ERROR", "boom"), None)
    await mocked.delete_branch("proj-1", "br-1")
    assert _sent(spec_mock, BRANCH) == 2


async def test_a_retry_after_past_the_deadline_ends_the_waiting_at_once(
    neon_spec: NeonSpec,
) -> None:
    mock = SpecMock(neon_spec)
    mock.answers[PROJECT] = script(
        error(429, "RATE_LIMITED", "slow down", **{"Retry-After": "30"}), None
    )
    policy = RetryPolicy(timeout=5, wait_initial=0.001, wait_max=0.001, retry_after_max=60)
    async with NeonClient(
        MOCK_URL, api_key=API_KEY, transport=mock.transport(), retry=policy
    ) as neon:
        with pytest.raises(NeonRateLimited) as caught:
            await neon.get_project("proj-1")
    assert caught.value.retry_after == 30.0
    assert _sent(mock, PROJECT) == 1


async def test_423_is_waited_out_until_the_deadline_not_a_count_of_tries(
    neon_spec: NeonSpec,
) -> None:
    mock = SpecMock(neon_spec)
    locked = [error(423, "LOCKED", "running conflicting operations") for _ in range(25)]
    mock.answers[BRANCHES] = script(*locked, None)
    policy = RetryPolicy(wait_initial=0.001, wait_max=0.002, wait_jitter=0)
    async with NeonClient(
        MOCK_URL, api_key=API_KEY, transport=mock.transport(), retry=policy
    ) as neon:
        await neon.create_branch("proj-1", name="dev")
    assert _sent(mock, BRANCHES) == 26
