"""Error answers become one exception tree carrying status, Neon's code, message and request id."""

from __future__ import annotations

import uuid

import httpx
import pytest
from contract.openapi import NeonSpec

from agentdb.neon import (
    NeonBadRequest,
    NeonClient,
    NeonConflict,
    NeonError,
    NeonHTTPError,
    NeonLocked,
    NeonNotFound,
    NeonRateLimited,
    NeonServerError,
    NeonUnauthorized,
    NeonUnexpectedResponse,
    RetryPolicy,
)

from .conftest import API_KEY, MOCK_URL
from .spec_bodies import SpecMock, error, example_response, script

PROJECT = "/projects/{project_id}"
NO_RETRY = RetryPolicy(attempts=1)


async def test_404_is_not_found_with_code_message_and_request_id(
    mocked: NeonClient, spec_mock: SpecMock
) -> None:
    spec_mock.answers[PROJECT] = script(
        httpx.Response(
            404,
            json={"code": "NOT_FOUND", "message": "project not found", "request_id": "req-42"},
        )
    )
    with pytest.raises(NeonNotFound) as caught:
        await mocked.get_project("proj-1")
    error_ = caught.value
    assert isinstance(error_, NeonHTTPError)
    assert isinstance(error_, NeonError)
    assert (error_.status, error_.code, error_.message, error_.request_id) == (
        404,
        "NOT_FOUND",
        "project not found",
        "req-42",
    )
    assert (error_.method, error_.path) == ("GET", "/projects/proj-1")
    assert not error_.maybe_applied
    assert "req-42" in repr(error_)
    assert str(error_) == "GET /projects/proj-1 -> 404 NOT_FOUND: project not found"


async def test_without_a_request_id_in_the_body_the_sent_one_is_kept(
    mocked: NeonClient, spec_mock: SpecMock
) -> None:
    spec_mock.answers[PROJECT] = script(error(404, "NOT_FOUND", "gone"))
    with pytest.raises(NeonNotFound) as caught:
        await mocked.get_project("proj-1")
    sent = spec_mock.requests[-1].headers["x-request-id"]
    assert caught.value.request_id == sent
    assert uuid.UUID(sent)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, NeonBadRequest),
        (401, NeonUnauthorized),
        (403, NeonUnauthorized),
        (404, NeonNotFound),
        (406, NeonBadRequest),
        (409, NeonConflict),
        (412, NeonBadRequest),
        (418, NeonHTTPError),
        (422, NeonBadRequest),
        (423, NeonLocked),
        (429, NeonRateLimited),
        (500, NeonServerError),
        (503, NeonServerError),
    ],
)
async def test_each_status_has_its_exception(
    neon_spec: NeonSpec, status: int, kind: type[NeonHTTPError]
) -> None:
    mock = SpecMock(neon_spec)
    mock.answers[PROJECT] = script(error(status, "SOME_CODE", "some message"))
    async with NeonClient(
        MOCK_URL, api_key=API_KEY, transport=mock.transport(), retry=NO_RETRY
    ) as neon:
        with pytest.raises(kind) as caught:
            await neon.get_project("proj-1")
    assert type(caught.value) is kind
    assert caught.value.status == status


async def test_a_failed_mutation_that_may_have_run_says_so(
    mocked: NeonClient, spec_mock: SpecMock
) -> None:
    spec_mock.answers["/projects/{project_id}/branches"] = script(
        error(500, "INTERNAL_ERROR", "boom")
    )
    with pytest.raises(NeonServerError) as caught:
        await mocked.create_branch("proj-1", name="dev")
    assert caught.value.maybe_applied


async def test_a_non_json_error_from_a_proxy_keeps_its_text(neon_spec: NeonSpec) -> None:
    mock = SpecMock(neon_spec)
    mock.answers[PROJECT] = script(httpx.Response(502, text="<html>Bad gateway</html>"))
    async with NeonClient(
        MOCK_URL, api_key=API_KEY, transport=mock.transport(), retry=NO_RETRY
    ) as neon:
        with pytest.raises(NeonServerError) as caught:
            await neon.get_project("proj-1")
    assert (caught.value.code, caught.value.message) == ("", "<html>Bad gateway</html>")


async def test_transfer_error_details_are_kept(
    mocked: NeonClient, spec_mock: SpecMock, neon_spec: NeonSpec
) -> None:
    path = "/api/v2/organizations/org-src-1/projects/transfer"
    _status, limits = example_response(neon_spec, "POST", path, 406)
    neon_spec.validate_response("POST", path, 406, limits)
    spec_mock.answers["/organizations/{source_org_id}/projects/transfer"] = script(
        httpx.Response(406, json=limits)
    )
    with pytest.raises(NeonBadRequest) as caught:
        await mocked.transfer_projects(
            source_org_id="org-src-1", destination_org_id="org-dst-1", project_ids=["p-1"]
        )
    assert caught.value.body == limits


async def test_an_unreadable_success_is_an_unexpected_response(neon_spec: NeonSpec) -> None:
    mock = SpecMock(neon_spec)
    mock.answers[PROJECT] = script(httpx.Response(200, json={"project": {"id": "p"}}))
    # No contract hooks here: they would reject this answer before the client reads it.
    async with NeonClient(MOCK_URL, api_key=API_KEY, transport=mock.transport()) as neon:
        with pytest.raises(NeonUnexpectedResponse, match=r"project\.name"):
            await neon.get_project("proj-1")
        mock.answers[PROJECT] = script(httpx.Response(200, text="<html>not json</html>"))
        with pytest.raises(NeonUnexpectedResponse, match="not JSON"):
            await neon.get_project("proj-1")
