"""Waiting on operations: `finished`/`skipped` succeed, `failed` is polled on (Neon retries it),
`error`/`cancelled` fail with Neon's text, and the deadline is kept."""

from __future__ import annotations

import httpx
import pytest
from contract.openapi import NeonSpec
from structlog.testing import capture_logs

from agentdb.neon import NeonClient, NeonOperationFailed, NeonTimeout, Operation

from .spec_bodies import Captured, SpecMock, deep_update, example_response

OPERATION = "/projects/{project_id}/operations/{operation_id}"
PROJECT_ID = "proj-1"


def _operation(spec: NeonSpec, op_id: str, status: str, **fields: object) -> dict[str, object]:
    path = f"/api/v2/projects/{PROJECT_ID}/operations/{op_id}"
    _status, body = example_response(spec, "GET", path)
    body = deep_update(body, {"operation": {"id": op_id, "status": status, **fields}})
    spec.validate_response("GET", path, 200, body)
    return body["operation"]


State = tuple[str, str | None]  # (status, error text)


def _play(spec: NeonSpec, mock: SpecMock, timeline: dict[str, list[State]]) -> None:
    """Each GET of an operation answers that operation's next state (the last one repeats)."""

    def answer(request: Captured) -> httpx.Response:
        op_id = request.path.rsplit("/", 1)[1]
        states = timeline[op_id]
        status, text = states.pop(0) if len(states) > 1 else states[0]
        extra = {"error": text} if text else {}
        return httpx.Response(200, json={"operation": _operation(spec, op_id, status, **extra)})

    mock.answers[OPERATION] = answer


def _started(spec: NeonSpec, *op_ids: str) -> list[Operation]:
    return [Operation.model_validate(_operation(spec, op_id, "running")) for op_id in op_ids]


async def test_failed_is_not_terminal_and_every_operation_is_polled(
    mocked: NeonClient, spec_mock: SpecMock, neon_spec: NeonSpec
) -> None:
    _play(
        neon_spec,
        spec_mock,
        {
            "op-a": [("running", None), ("failed", "flaky"), ("finished", None)],
            "op-b": [("scheduling", None), ("skipped", None)],
        },
    )
    with capture_logs() as logs:
        final = await mocked.wait_for_operations(PROJECT_ID, _started(neon_spec, "op-a", "op-b"))
    assert [(op.id, op.status) for op in final] == [("op-a", "finished"), ("op-b", "skipped")]
    assert [r.path.rsplit("/", 1)[1] for r in spec_mock.requests].count("op-a") == 3
    assert any(entry["event"] == "neon.operation_failed_will_retry" for entry in logs)


@pytest.mark.parametrize("status", ["error", "cancelled"])
async def test_error_and_cancelled_fail_with_the_operations_text(
    mocked: NeonClient, spec_mock: SpecMock, neon_spec: NeonSpec, status: str
) -> None:
    _play(
        neon_spec,
        spec_mock,
        {"op-a": [("running", None), (status, "disk quota exceeded")]},
    )
    with pytest.raises(NeonOperationFailed, match="disk quota exceeded") as caught:
        await mocked.wait_for_operations(PROJECT_ID, _started(neon_spec, "op-a"))
    assert caught.value.operation.status == status
    assert caught.value.message == "disk quota exceeded"


async def test_the_deadline_raises_timeout_naming_what_is_pending(
    mocked: NeonClient, spec_mock: SpecMock, neon_spec: NeonSpec
) -> None:
    _play(neon_spec, spec_mock, {"op-a": [("running", None)], "op-b": [("finished", None)]})
    with pytest.raises(NeonTimeout, match="op-a") as caught:
        await mocked.wait_for_operations(
            PROJECT_ID, _started(neon_spec, "op-a", "op-b"), timeout=0.05
        )
    assert [op.id for op in caught.value.pending] == ["op-a"]


async def test_settled_operations_are_not_polled(mocked: NeonClient, spec_mock: SpecMock) -> None:
    done = Operation(id="op-done", project_id=PROJECT_ID, action="create_branch", status="finished")
    assert await mocked.wait_for_operations(PROJECT_ID, [done]) == [done]
    assert spec_mock.requests == []


async def test_mutations_wait_unless_told_not_to(
    mocked: NeonClient, spec_mock: SpecMock, neon_spec: NeonSpec
) -> None:
    def running_snapshot(_request: Captured) -> httpx.Response:
        path = f"/api/v2/projects/{PROJECT_ID}/branches/br-1/snapshot"
        _status, body = example_response(neon_spec, "POST", path)
        body["operations"] = [_operation(neon_spec, "op-s", "running")]
        return httpx.Response(200, json=body)

    spec_mock.answers["/projects/{project_id}/branches/{branch_id}/snapshot"] = running_snapshot
    _play(neon_spec, spec_mock, {"op-s": [("running", None), ("finished", None)]})

    unsettled = await mocked.create_snapshot(PROJECT_ID, "br-1", wait=False)
    assert [op.status for op in unsettled.operations] == ["running"]
    assert len(spec_mock.requests) == 1

    settled = await mocked.create_snapshot(PROJECT_ID, "br-1")
    assert [op.status for op in settled.operations] == ["finished"]
    assert [r.template for r in spec_mock.requests].count(OPERATION) == 2
