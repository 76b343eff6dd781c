"""The API key and passwords never show in reprs or logs, retries and errors included."""

from __future__ import annotations

import httpx
import pytest
from contract.openapi import NeonSpec
from structlog.testing import capture_logs

from agentdb.neon import NeonClient, NeonNotFound

from .conftest import API_KEY, MOCK_URL
from .spec_bodies import Captured, SpecMock, error, example_response, script

PASSWORD = "pw-very-secret-123"
URI = f"postgresql://app_owner:{PASSWORD}@ep-1.example.neon.tech/app?sslmode=require"


def test_the_api_key_is_not_in_the_clients_repr() -> None:
    client = NeonClient(MOCK_URL, api_key=API_KEY)
    assert API_KEY not in repr(client)
    assert API_KEY not in repr(vars(client))
    assert API_KEY not in repr(client._http.auth)
    assert API_KEY not in repr(vars(client._http.auth))
    assert repr(client) == "NeonClient(base_url='http://neon.test/api/v2')"


async def test_nothing_secret_reaches_logs_or_reprs(neon_spec: NeonSpec) -> None:
    mock = SpecMock(neon_spec)
    _status, body = example_response(neon_spec, "POST", "/api/v2/projects")
    body["roles"][0]["password"] = PASSWORD
    body["connection_uris"][0]["connection_uri"] = URI
    body["connection_uris"][0]["connection_parameters"]["password"] = PASSWORD
    mock.answers["/projects"] = script(
        error(429, "RATE_LIMITED", "slow down"), httpx.Response(201, json=body)
    )
    mock.answers["/projects/{project_id}"] = script(error(404, "NOT_FOUND", "no such project"))
    authorizations: list[str] = []

    def reveal(request: Captured) -> httpx.Response:
        authorizations.append(request.headers["authorization"])
        return httpx.Response(200, json={"password": PASSWORD})

    mock.answers[
        "/projects/{project_id}/branches/{branch_id}/roles/{role_name}/reveal_password"
    ] = reveal
    async with NeonClient(
        MOCK_URL, api_key=API_KEY, transport=mock.transport(), operation_poll_interval=0.001
    ) as neon:
        with capture_logs() as logs:
            created = await neon.create_project(name="p")
            revealed = await neon.reveal_password("proj-1", "br-1", "app_owner")
            with pytest.raises(NeonNotFound) as caught:
                await neon.get_project("proj-1")
    # The key was sent, and the secrets arrived...
    assert authorizations == [f"Bearer {API_KEY}"]
    assert revealed.get_secret_value() == PASSWORD
    assert created.connection_uris[0].connection_uri.get_secret_value() == URI
    # ...but show nowhere.
    assert any(e["event"] == "stamina.retry_scheduled" for e in logs)
    shown = repr(logs) + repr(created) + repr(revealed) + repr(caught.value) + str(caught.value)
    shown += repr(created.model_dump())
    for secret in (API_KEY, PASSWORD):
        assert secret not in shown
