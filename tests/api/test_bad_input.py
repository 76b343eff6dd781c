"""Bad input on every route: a 4xx problem+json naming the field, and nothing written."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import ADMIN, Tenant, assert_problem

LONG = "x" * 20_000
NUL = "a\u0000b"


def nested(depth: int, leaf: Any = 1) -> Any:
    """A JSON value `depth` levels deep: objects and arrays in turn."""
    for level in range(depth):
        leaf = {"k": leaf} if level % 2 else [leaf]
    return leaf


def deep_text(body_start: str, depth: int, body_end: str) -> str:
    """A JSON body too deep for any decoder's recursion, as text."""
    return body_start + "[" * depth + "1" + "]" * depth + body_end


def cases(t: Tenant, checkpoint_id: str) -> list[tuple[str, str, Any, int, str | None]]:
    s = f"/v1/sessions/{t.session_id}"
    c = f"{s}/checkpoints/{checkpoint_id}"
    return [
        ("POST", "/v1/users", {}, 400, "email"),
        ("POST", "/v1/users", {"email": "not-an-address"}, 400, "email"),
        ("POST", "/v1/users", {"email": 42}, 400, "email"),
        ("POST", "/v1/users", {"email": "a@example.com", "tier": "gold"}, 400, "tier"),
        ("POST", "/v1/users", {"email": "a@example.com", "colour": "red"}, 400, "colour"),
        ("POST", "/v1/users", "not json", 400, None),
        ("POST", "/v1/users", [], 400, "body"),
        ("GET", "/v1/users?limit=0", None, 400, "limit"),
        ("GET", "/v1/users?after=yesterday", None, 400, "after"),
        ("POST", f"/v1/users/{t.user_id}/tokens", {"ttl_seconds": 0}, 400, "ttl_seconds"),
        ("POST", f"/v1/users/{t.user_id}/tokens", {"ttl_seconds": "soon"}, 400, "ttl_seconds"),
        # No coercion: a boolean, a numeric string or a fraction is not a whole number.
        ("POST", f"/v1/users/{t.user_id}/tokens", {"ttl_seconds": True}, 400, "ttl_seconds"),
        ("POST", f"/v1/users/{t.user_id}/tokens", {"ttl_seconds": "60"}, 400, "ttl_seconds"),
        ("POST", f"/v1/users/{t.user_id}/tokens", {"ttl_seconds": 1.5}, 400, "ttl_seconds"),
        ("POST", f"/v1/users/{t.user_id}/tokens", {"ttl_seconds": 10**18}, 400, "ttl_seconds"),
        ("POST", f"/v1/users/{t.user_id}/tokens", {"name": NUL}, 400, "name"),
        ("GET", f"/v1/users/{t.user_id}/tokens?limit=0", None, 400, "limit"),
        ("GET", f"/v1/users/{t.user_id}/tokens?limit=true", None, 400, "limit"),
        ("GET", f"/v1/users/{t.user_id}/tokens?after=first", None, 400, "after"),
        ("GET", f"/v1/users/{t.user_id}/tokens?include_inactive=maybe", None, 400, None),
        ("POST", "/v1/users", {"email": "a\u0000@example.com"}, 400, "email"),
        ("POST", "/v1/users", {"email": "n@example.com", "name": NUL}, 400, "name"),
        ("POST", f"/v1/users/{t.user_id}/tier", {}, 400, "tier"),
        ("POST", f"/v1/users/{t.user_id}/tier", {"tier": "gold"}, 400, "tier"),
        ("POST", f"/v1/users/{t.user_id}/tier", {"tier": 3}, 400, "tier"),
        ("POST", f"/v1/users/{t.user_id}/tier", {"tier": "pro", "now": True}, 400, "now"),
        ("GET", f"/v1/users/{t.user_id}/usage?periods=0", None, 400, "periods"),
        ("GET", f"/v1/users/{t.user_id}/tier-changes/not-a-uuid", None, 404, None),
        ("POST", "/v1/sessions", {"user_id": "nobody"}, 400, "user_id"),
        ("POST", "/v1/sessions", {"user_id": t.user_id, "name": " "}, 400, "name"),
        ("POST", "/v1/sessions", {"user_id": t.user_id, "name": LONG}, 400, "name"),
        ("POST", "/v1/sessions", {}, 400, "user_id"),  # the admin must say whose
        # Listing needs no user with the admin token (every user's sessions); its filters
        # and page still name what is wrong.
        ("GET", "/v1/sessions?status=sleeping", None, 400, "status"),
        ("GET", "/v1/sessions?limit=0", None, 400, "limit"),
        ("GET", "/v1/sessions?after=first", None, 400, "after"),
        ("GET", "/v1/sessions?user_id=nobody", None, 400, "user_id"),
        ("POST", f"{s}/tokens", {"ttl_seconds": -5}, 400, "ttl_seconds"),
        ("POST", f"{s}/tokens", {"ttl_seconds": True}, 400, "ttl_seconds"),
        ("POST", f"{s}/tokens", {"ttl_seconds": 10 * 365 * 86_400}, 400, "ttl_seconds"),
        ("GET", f"{s}/tokens?limit=501", None, 400, "limit"),
        ("POST", f"{s}/sql", {"sql": "SELECT 1", "max_rows": True}, 400, "max_rows"),
        ("POST", f"{s}/sql", {"sql": "SELECT 1", "max_rows": "5"}, 400, "max_rows"),
        ("POST", f"{s}/sql", {"sql": "SELECT 1", "timeout_seconds": True}, 400, "timeout_seconds"),
        ("POST", f"{s}/sql", {"sql": "SELECT 1", "timeout_seconds": "1"}, 400, "timeout_seconds"),
        ("POST", f"{s}/sql", {"sql": "SELECT 'a\u0000b'"}, 400, "sql"),
        ("POST", f"{s}/sql", {"sql": "SELECT $1", "params": [NUL]}, 400, "params"),
        ("POST", f"{s}/sql", {"sql": "SELECT $1", "params": [{NUL: 1}]}, 400, "params"),
        ("POST", f"{s}/sql", {"sql": "SELECT $1", "params": [nested(40)]}, 400, "params"),
        (
            "POST",
            f"{s}/sql",
            deep_text('{"sql": "SELECT $1", "params": [', 1000, "]}"),
            400,
            "body",
        ),
        ("GET", f"{s}/events?after={10**20}", None, 400, "after"),
        ("GET", f"{s}/events?limit=true", None, 400, "limit"),
        ("POST", f"{s}/sql", {}, 400, "sql"),
        ("POST", f"{s}/sql", {"sql": ""}, 400, "sql"),
        ("POST", f"{s}/sql", {"sql": "SELECT $1", "params": "one"}, 400, "params"),
        ("POST", f"{s}/sql", {"sql": "SELECT 1", "max_rows": 0}, 400, "max_rows"),
        ("POST", f"{s}/sql", {"sql": "SELECT 1", "timeout_seconds": 0}, 400, "timeout_seconds"),
        ("POST", f"{s}/sql", {"sql": "SELECT 1; SELECT $1", "params": [1]}, 400, "sql"),
        ("GET", f"{s}/events?limit=501", None, 400, "limit"),
        ("GET", f"{s}/events?after=-1", None, 400, "after"),
        ("GET", f"{s}/usage?periods=25", None, 400, "periods"),
        ("GET", f"{s}/usage?periods=many", None, 400, "periods"),
        ("POST", f"{s}/checkpoints", {"label": ""}, 400, "label"),
        ("POST", f"{s}/checkpoints", {"metadata": "commit abc"}, 400, "metadata"),
        ("POST", f"{s}/checkpoints", {"message": LONG}, 400, "message"),
        ("POST", f"{s}/checkpoints", {"label": "x", "parent": "y"}, 400, "parent"),
        ("POST", f"{s}/checkpoints", {"label": NUL}, 400, "label"),
        ("POST", f"{s}/checkpoints", {"message": NUL}, 400, "message"),
        ("POST", f"{s}/checkpoints", {"metadata": {"k": NUL}}, 400, "metadata"),
        ("POST", f"{s}/checkpoints", {"metadata": {NUL: "v"}}, 400, "metadata"),
        ("POST", f"{s}/checkpoints", {"metadata": {"k": [[{"deep": NUL}]]}}, 400, "metadata"),
        ("POST", f"{s}/checkpoints", {"metadata": {"k": nested(40)}}, 400, "metadata"),
        ("POST", f"{s}/checkpoints", deep_text('{"metadata": {"k": ', 1000, "}}"), 400, "body"),
        ("POST", f"{s}/data-api", {"add_default_grants": 1}, 400, "add_default_grants"),
        ("POST", f"{s}/data-api", {"add_default_grants": "true"}, 400, "add_default_grants"),
        ("POST", f"{c}/preview", {"ttl_seconds": 0}, 400, "ttl_seconds"),
        ("POST", f"{c}/preview", {"ttl_seconds": 10**9}, 400, "ttl_seconds"),
        ("POST", f"{c}/preview", {"ttl_seconds": 10**18}, 400, "ttl_seconds"),
        ("POST", f"{c}/preview", {"ttl_seconds": True}, 400, "ttl_seconds"),
        ("GET", f"{c}/diff?against=yesterday", None, 400, "against"),
        ("POST", f"{s}/branches", {"checkpoint_id": "latest"}, 400, "checkpoint_id"),
        ("POST", f"{s}/branches", {"ttl_seconds": -1}, 400, "ttl_seconds"),
        ("POST", f"{s}/branches", {"name": ""}, 400, "name"),
        ("POST", f"{s}/branches", {"name": NUL}, 400, "name"),
        ("POST", f"{s}/branches", {"ttl_seconds": 10**18}, 400, "ttl_seconds"),
        ("POST", f"{s}/branches", {"ttl_seconds": "3600"}, 400, "ttl_seconds"),
        # Well-formed ids that do not exist.
        ("GET", "/v1/users/01a20000-0000-7000-8000-000000000000", None, 404, None),
        (
            "POST",
            "/v1/users/01a20000-0000-7000-8000-000000000000/tier",
            {"tier": "pro"},
            404,
            None,
        ),
        (
            "GET",
            f"/v1/users/{t.user_id}/tier-changes/01a20000-0000-7000-8000-000000000000",
            None,
            404,
            None,
        ),
        ("POST", "/v1/sessions", {"user_id": "01a20000-0000-7000-8000-000000000000"}, 404, None),
        ("GET", f"{s}/checkpoints/01a20000-0000-7000-8000-000000000000", None, 404, None),
        ("POST", f"{s}/checkpoints/01a20000-0000-7000-8000-000000000000/restore", None, 404, None),
        (
            "POST",
            f"{s}/branches",
            {"checkpoint_id": "01a20000-0000-7000-8000-000000000000"},
            404,
            None,
        ),
        ("POST", f"{s}/branches/01a20000-0000-7000-8000-000000000000/reset", None, 404, None),
        ("DELETE", f"{s}/branches/01a20000-0000-7000-8000-000000000000", None, 404, None),
        ("GET", "/v1/tokens/01a20000-0000-7000-8000-000000000000", None, 404, None),
        ("DELETE", "/v1/tokens/01a20000-0000-7000-8000-000000000000", None, 404, None),
        ("GET", "/v1/sessions/not-a-uuid", None, 404, None),
        ("GET", "/v1/nowhere", None, 404, None),
        ("PUT", s, {}, 405, None),
    ]


async def snapshot(http: httpx.AsyncClient, t: Tenant) -> dict[str, Any]:
    s = f"/v1/sessions/{t.session_id}"
    return {
        "users": len((await http.get("/v1/users?limit=500", headers=ADMIN)).json()["users"]),
        "user": (await http.get(f"/v1/users/{t.user_id}", headers=ADMIN)).json(),
        "tier_changes": (
            await http.get(f"/v1/users/{t.user_id}/tier-changes", headers=ADMIN)
        ).json(),
        "sessions": (await http.get(f"/v1/sessions?user_id={t.user_id}", headers=ADMIN)).json(),
        "checkpoints": (await http.get(f"{s}/checkpoints", headers=ADMIN)).json(),
        "tokens": (await http.get(f"/v1/users/{t.user_id}/tokens", headers=ADMIN)).json(),
        "data_api": (await http.get(f"{s}/data-api", headers=ADMIN)).json(),
        "branches": (await http.get(f"{s}/branches", headers=ADMIN)).json(),
        "tables": (
            await http.post(
                f"{s}/sql",
                json={"sql": "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"},
                headers=ADMIN,
            )
        ).json()["rows"],
    }


async def test_every_route_names_the_bad_field_and_writes_nothing(
    http: httpx.AsyncClient, tenant: Tenant
):
    head = tenant.session["head_checkpoint_id"]
    before = await snapshot(http, tenant)
    for method, path, body, status, field in cases(tenant, head):
        kwargs: dict[str, Any] = (
            {"content": body, "headers": {**ADMIN, "content-type": "application/json"}}
            if isinstance(body, str)
            else {"json": body, "headers": ADMIN}
        )
        response = await http.request(method, path, **kwargs)
        problem = assert_problem(response, status, field)
        assert "Traceback" not in problem["detail"], (method, path)
    after = await snapshot(http, tenant)
    # Each of the snapshots' own GET/POST calls leaves the rows as they were.
    assert after == before


async def test_a_duplicate_email_is_a_409_naming_email(http: httpx.AsyncClient):
    first = await http.post("/v1/users", json={"email": "twice@example.com"}, headers=ADMIN)
    assert first.status_code == 201
    again = await http.post("/v1/users", json={"email": "TWICE@example.com"}, headers=ADMIN)
    assert_problem(again, 409, "email")


async def test_failing_sql_is_a_422_with_sqlstate_and_position(
    http: httpx.AsyncClient, tenant: Tenant
):
    response = await http.post(
        f"/v1/sessions/{tenant.session_id}/sql",
        json={"sql": "SELECT nope FROM nowhere"},
        headers=tenant.session_token,
    )
    problem = assert_problem(response, 422)
    assert problem["sqlstate"] == "42P01"
    assert problem["position"] == 18
    assert "nowhere" in problem["detail"]


@pytest.mark.parametrize("key", [b"", b"x" * 201, "caf\u00e9".encode("latin-1"), b"a\tb"])
async def test_bad_idempotency_keys_are_refused(
    http: httpx.AsyncClient, tenant: Tenant, key: bytes
):
    response = await http.post(
        f"/v1/sessions/{tenant.session_id}/checkpoints",
        json={},
        headers={**tenant.user_token, "Idempotency-Key": key},
    )
    assert_problem(response, 400, "Idempotency-Key")
