"""`GET /v1/sessions`: the admin token lists every user's sessions a page at a time, filtered by
user and status; a user token still sees only its own, a session token only its one."""

from __future__ import annotations

from typing import Any

import httpx

from .conftest import ADMIN, Tenant, assert_problem, make_tenant


async def all_pages(
    http: httpx.AsyncClient, headers: dict[str, str], **params: str | int
) -> list[dict[str, Any]]:
    """Every session the listing gives, following `next_after` a page of 2 at a time."""
    found: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        query: dict[str, str | int] = {**params, "limit": 2}
        if after is not None:
            query["after"] = after
        page = await http.get("/v1/sessions", params=query, headers=headers)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["sessions"]) <= 2
        found += body["sessions"]
        after = body["next_after"]
        if after is None:
            return found


async def test_the_admin_lists_every_users_sessions_paged(http: httpx.AsyncClient):
    ada, bob = await make_tenant(http, "ada"), await make_tenant(http, "bob")
    second = await http.post("/v1/sessions", json={"name": "two"}, headers=ada.user_token)
    assert second.status_code == 201, second.text
    mine = {ada.session_id, bob.session_id, second.json()["id"]}

    listed = await all_pages(http, ADMIN)
    ids = [s["id"] for s in listed]
    assert mine <= set(ids)
    assert len(ids) == len(set(ids))  # no session on two pages
    assert ids == sorted(ids)  # oldest first: ids are UUIDv7
    # Narrowed to one user.
    adas = await all_pages(http, ADMIN, user_id=ada.user_id)
    assert {s["id"] for s in adas} == {ada.session_id, second.json()["id"]}


async def test_the_listing_filters_by_status(http: httpx.AsyncClient):
    tenant = await make_tenant(http, "status")
    gone = await http.post("/v1/sessions", json={"name": "gone"}, headers=tenant.user_token)
    deleted = await http.delete(f"/v1/sessions/{gone.json()['id']}", headers=tenant.user_token)
    assert deleted.status_code == 200, deleted.text

    default = await all_pages(http, ADMIN, user_id=tenant.user_id)
    assert [s["id"] for s in default] == [tenant.session_id]  # deleted ones left out
    only_deleted = await all_pages(http, ADMIN, user_id=tenant.user_id, status="deleted")
    assert [s["id"] for s in only_deleted] == [gone.json()["id"]]
    ready = await all_pages(http, ADMIN, status="ready")
    assert tenant.session_id in {s["id"] for s in ready}
    assert all(s["status"] == "ready" for s in ready)


async def test_user_and_session_tokens_see_only_their_own(http: httpx.AsyncClient, tenant: Tenant):
    other = await make_tenant(http, "other")
    by_user = await all_pages(http, tenant.user_token)
    assert [s["id"] for s in by_user] == [tenant.session_id]
    by_session = await all_pages(http, tenant.session_token)
    assert [s["id"] for s in by_session] == [tenant.session_id]
    none_ready = await http.get(
        "/v1/sessions", params={"status": "failed"}, headers=tenant.session_token
    )
    assert none_ready.json() == {"sessions": [], "next_after": None}
    # Another user's id is not a way in.
    stranger = await http.get(
        "/v1/sessions", params={"user_id": other.user_id}, headers=tenant.user_token
    )
    assert_problem(stranger, 404)


async def test_bad_listing_input_names_the_field(http: httpx.AsyncClient):
    for params, field in (
        ({"status": "sleeping"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"after": "not-a-uuid"}, "after"),
        ({"user_id": "nobody"}, "user_id"),
    ):
        answer = await http.get("/v1/sessions", params=params, headers=ADMIN)
        assert_problem(answer, 400, field)
