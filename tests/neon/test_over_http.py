"""The client over real HTTP: the session's local plane served by uvicorn on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import uvicorn
from contract.openapi import NeonSpec
from litestar import Litestar

from agentdb.neon import NeonClient, NeonNotFound

from .conftest import API_KEY, FAST_RETRY, spec_hooks


@pytest_asyncio.fixture(loop_scope="session")
async def served_url(localplane_app: Litestar) -> AsyncIterator[str]:
    # The fixture's app already runs its lifespan (and owns the plane): uvicorn must not.
    server = uvicorn.Server(
        uvicorn.Config(
            localplane_app, host="127.0.0.1", port=0, lifespan="off", log_level="warning"
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        assert not serving.done(), "uvicorn did not start"
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/api/v2"
    finally:
        server.should_exit = True
        await serving


async def test_checkpoint_flow_over_http(served_url: str, neon_spec: NeonSpec) -> None:
    async with NeonClient(
        served_url,
        api_key=API_KEY,
        operation_poll_interval=0.02,
        retry=FAST_RETRY,
        event_hooks=spec_hooks(neon_spec),
    ) as neon:
        created = await neon.create_project(name="over-http")
        project_id, main_id = created.project.id, created.branch.id
        snapshot = await neon.create_snapshot(project_id, main_id, name="first")
        restored = await neon.restore_snapshot(
            project_id, snapshot.snapshot.id, target_branch_id=main_id, finalize_restore=True
        )
        assert all(op.succeeded for op in restored.operations)
        dev = await neon.create_branch(project_id, parent_id=restored.branch.id, name="dev")
        await neon.delete_branch(project_id, dev.branch.id)
        await neon.delete_project(project_id)
        with pytest.raises(NeonNotFound) as gone:
            await neon.get_project(project_id)
        assert gone.value.request_id
