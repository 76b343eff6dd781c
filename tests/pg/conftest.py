"""Fixtures for agentdb.pg: one shared embedded cluster for the read-mostly tests."""

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from agentdb.pg import EmbeddedPostgres, ServerInfo


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def shared_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[EmbeddedPostgres, ServerInfo]]:
    pg = EmbeddedPostgres(tmp_path_factory.mktemp("pg-shared") / "pg")
    info = await pg.start()
    yield pg, info
    await pg.stop()


@pytest.fixture
def server(shared_cluster: tuple[EmbeddedPostgres, ServerInfo]) -> ServerInfo:
    return shared_cluster[1]
