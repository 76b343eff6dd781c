"""Tiers over REST, with a runtime started from an AGENTDB_TIERS_FILE: users get only the file's
tiers, a session beyond the tier's limit is a 409 problem naming the limit, and pinned
checkpoints survive retention while the oldest unpinned ones are pruned."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx

from .conftest import ADMIN, assert_problem, bearer, runtime_with

TIERS_TOML = """
default = "hobby"

[tiers.hobby]
max_sessions_per_user = 2
max_checkpoints_per_session = 3

[tiers.team]
compute_max_cu = 4
"""


# Like the suite's runtime, with a tiers file.
runtime = runtime_with("api-tiers", tiers_toml=TIERS_TOML)


async def user_token(http: httpx.AsyncClient, tier: str | None = None) -> dict[str, str]:
    body = {"email": f"t-{uuid.uuid4().hex[:8]}@example.com"}
    if tier is not None:
        body["tier"] = tier
    user = await http.post("/v1/users", json=body, headers=ADMIN)
    assert user.status_code == 201, user.text
    token = await http.post(f"/v1/users/{user.json()['id']}/tokens", json={}, headers=ADMIN)
    return bearer(token.json()["token"])


async def test_users_get_the_files_tiers(http: httpx.AsyncClient) -> None:
    user = await http.post(
        "/v1/users", json={"email": f"d-{uuid.uuid4().hex[:8]}@example.com"}, headers=ADMIN
    )
    assert user.json()["tier"] == "hobby"
    refused = await http.post(
        "/v1/users", json={"email": "p@example.com", "tier": "pro"}, headers=ADMIN
    )
    body = assert_problem(refused, 400, "tier")
    assert "must be one of hobby, team" in body["detail"]


async def test_a_session_beyond_the_tier_limit_is_a_409_naming_the_limit(
    http: httpx.AsyncClient,
) -> None:
    token = await user_token(http)
    made = [await http.post("/v1/sessions", json={"name": n}, headers=token) for n in "ab"]
    assert [r.status_code for r in made] == [201, 201]
    refused = await http.post("/v1/sessions", json={"name": "c"}, headers=token)
    body = assert_problem(refused, 409)
    assert body["type"].endswith("/limit-exceeded")
    assert (body["limit"], body["allowed"]) == ("max_sessions_per_user", 2)
    assert "the hobby tier allows 2 sessions per user" in body["detail"]
    listed = await http.get("/v1/sessions", headers=token)
    assert len(listed.json()["sessions"]) == 2
    # Deleting one makes room.
    deleted = await http.delete(f"/v1/sessions/{made[0].json()['id']}", headers=token)
    assert deleted.status_code == 200, deleted.text
    again = await http.post("/v1/sessions", json={"name": "c"}, headers=token)
    assert again.status_code == 201, again.text


async def labels_once_pruned(
    http: httpx.AsyncClient, base: str, token: dict[str, str], limit: int
) -> list[str]:
    """The session's checkpoint labels once retention has brought them down to `limit` (or
    after 30 s, so the caller's assertion shows what was left)."""
    deadline = time.monotonic() + 30
    while True:
        listed = (await http.get(base, headers=token)).json()["checkpoints"]
        if len(listed) <= limit or time.monotonic() > deadline:
            return [c["label"] for c in listed]
        await asyncio.sleep(0.05)


async def test_pinned_checkpoints_survive_retention(http: httpx.AsyncClient) -> None:
    token = await user_token(http)
    session = await http.post("/v1/sessions", json={"name": "keep"}, headers=token)
    base = f"/v1/sessions/{session.json()['id']}/checkpoints"
    one = (await http.post(base, json={"label": "one"}, headers=token)).json()
    pinned = await http.post(f"{base}/{one['id']}/pin", headers=token)
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["pinned"] is True
    for label in ("two", "three"):
        await http.post(base, json={"label": label}, headers=token)
    # Retention runs just after the checkpoint answers (the `prune_checkpoints` job).
    # "two" is pruned: the oldest unpinned, not root.
    assert await labels_once_pruned(http, base, token, 3) == ["root", "one", "three"]
    unpinned = await http.post(f"{base}/{one['id']}/unpin", headers=token)
    assert unpinned.json()["pinned"] is False
    await http.post(base, json={"label": "four"}, headers=token)
    assert await labels_once_pruned(http, base, token, 3) == ["root", "three", "four"]
    gone = await http.post(f"{base}/{one['id']}/pin", headers=token)
    assert_problem(gone, 404)


async def test_another_users_checkpoint_cannot_be_pinned(http: httpx.AsyncClient) -> None:
    owner, stranger = await user_token(http, "team"), await user_token(http, "team")
    session = await http.post("/v1/sessions", json={"name": "mine"}, headers=owner)
    base = f"/v1/sessions/{session.json()['id']}/checkpoints"
    taken = (await http.post(base, json={"label": "x"}, headers=owner)).json()
    refused = await http.post(f"{base}/{taken['id']}/pin", headers=stranger)
    assert_problem(refused, 404)
    shown = await http.get(f"{base}/{taken['id']}", headers=owner)
    assert shown.json()["pinned"] is False
