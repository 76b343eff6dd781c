"""Fixtures for the Neon client: over the in-process local plane with every request and
response checked against Neon's OpenAPI document, or over a spec-driven mock transport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from contract.openapi import NeonSpec
from litestar import Litestar

from agentdb.neon import NeonClient, RetryPolicy

from .spec_bodies import SpecMock

API_KEY = "neon-test-key-do-not-log-4711"
MOCK_URL = "http://neon.test/api/v2"
#: Retries as in production, only thousands of times faster.
FAST_RETRY = RetryPolicy(
    attempts=40,
    timeout=60,
    wait_initial=0.001,
    wait_max=0.01,
    wait_jitter=0.002,
    retry_after_max=0.5,
)


def spec_hooks(spec: NeonSpec) -> dict[str, list[Callable[..., Any]]]:
    """httpx event hooks checking every request and response against Neon's spec."""
    return {"request": [spec.request_hook()], "response": [spec.response_hook()]}


@pytest_asyncio.fixture(loop_scope="session")
async def neon(localplane_app: Litestar, neon_spec: NeonSpec) -> AsyncIterator[NeonClient]:
    """A client of the session's local plane; every call is validated against the spec."""
    async with NeonClient.for_app(
        localplane_app, api_key=API_KEY, retry=FAST_RETRY, event_hooks=spec_hooks(neon_spec)
    ) as client:
        yield client


@pytest.fixture
def spec_mock(neon_spec: NeonSpec) -> SpecMock:
    return SpecMock(neon_spec)


@pytest_asyncio.fixture(loop_scope="session")
async def mocked(spec_mock: SpecMock, neon_spec: NeonSpec) -> AsyncIterator[NeonClient]:
    """A client whose 'Neon' is `spec_mock`: spec-checked requests, spec-generated answers."""
    async with NeonClient(
        MOCK_URL,
        api_key=API_KEY,
        transport=spec_mock.transport(),
        retry=FAST_RETRY,
        operation_poll_interval=0.001,
        event_hooks=spec_hooks(neon_spec),
    ) as client:
        yield client
