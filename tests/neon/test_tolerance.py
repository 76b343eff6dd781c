"""Neon adds fields and enum values often: the client keeps working (where the official SDK
raises or silently drops them)."""

from __future__ import annotations

import httpx
from contract.openapi import NeonSpec

from agentdb.neon import NeonClient

from .spec_bodies import Captured, SpecMock, deep_update, example_response

OPERATION = "/projects/{project_id}/operations/{operation_id}"


async def test_unknown_enum_values_and_fields_pass(
    spec_mock: SpecMock, neon_spec: NeonSpec
) -> None:
    _status, body = example_response(neon_spec, "GET", "/api/v2/projects/p-1/operations/op-1")
    body = deep_update(
        body,
        {
            "operation": {
                "id": "op-1",
                "action": "brand_new_action",
                "status": "brand_new_status",
                "brand_new_field": {"nested": [1, 2]},
            }
        },
    )
    calls = 0

    def answer(_request: Captured) -> httpx.Response:
        nonlocal calls
        calls += 1
        status = "brand_new_status" if calls == 1 else "finished"
        return httpx.Response(200, json=deep_update(body, {"operation": {"status": status}}))

    spec_mock.answers[OPERATION] = answer
    # No contract hooks: the spec's closed enums would reject the answer before the client.
    async with NeonClient(
        "http://neon.test/api/v2",
        api_key="k",
        transport=spec_mock.transport(),
        operation_poll_interval=0.001,
    ) as raw:
        operation = await raw.get_operation("p-1", "op-1")
        assert (operation.action, operation.status) == ("brand_new_action", "brand_new_status")
        assert operation.model_extra == {"brand_new_field": {"nested": [1, 2]}}
        assert "brand_new_field" not in repr(operation)
        # An unknown status is neither success nor failure: it is polled on.
        final = await raw.wait_for_operations("p-1", [operation])
        assert final[0].status == "finished"


async def test_every_field_of_a_created_project_is_kept(
    mocked: NeonClient, neon_spec: NeonSpec
) -> None:
    # neon-api 0.3.0 keeps only `project` of this answer; here nothing is lost.
    created = await mocked.create_project(name="p")
    _status, body = example_response(neon_spec, "POST", "/api/v2/projects")
    assert created.roles[0].name == body["roles"][0]["name"]
    assert (
        created.connection_uris[0].connection_parameters.host
        == (body["connection_uris"][0]["connection_parameters"]["host"])
    )
    assert len(created.operations) == len(body["operations"])
    assert created.endpoints[0].id == body["endpoints"][0]["id"]
    # Fields the models do not name are still there.
    assert created.project.model_extra
    assert "platform_id" in created.project.model_extra
