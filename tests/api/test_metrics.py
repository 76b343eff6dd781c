"""`/metrics`: Prometheus' text format for the admin token or the scraper's own token (which
opens nothing else), requests counted by route template (no ids in labels), and the figures
read at scrape time (sessions by status and tier, jobs, the warm pool, kept connections)."""

from __future__ import annotations

import re
import uuid

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ADMIN, assert_problem, bearer, runtime_with

SCRAPER = "scraper-" + "s" * 40


# Like the suite's runtime, with a metrics token.
runtime = runtime_with("api-metrics", metrics_token=SCRAPER)


def sample(body: str, name: str, **labels: str) -> float | None:
    """The value of one series in Prometheus' text format, or None."""
    for line in body.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


async def test_metrics_need_the_scraper_or_admin_token(http: httpx.AsyncClient) -> None:
    assert_problem(await http.get("/metrics"), 401)
    assert_problem(await http.get("/metrics", headers=bearer("x" * 40)), 401)
    user = await http.post(
        "/v1/users", json={"email": f"m-{uuid.uuid4().hex[:8]}@x.dev"}, headers=ADMIN
    )
    token = await http.post(f"/v1/users/{user.json()['id']}/tokens", json={}, headers=ADMIN)
    assert_problem(await http.get("/metrics", headers=bearer(token.json()["token"])), 403)
    for good in (ADMIN, bearer(SCRAPER)):
        scraped = await http.get("/metrics", headers=good)
        assert scraped.status_code == 200, scraped.text
        assert scraped.headers["content-type"].startswith("text/plain")
    # The scraper's token opens /metrics and nothing else.
    assert_problem(await http.get("/v1/sessions", headers=bearer(SCRAPER)), 401)


async def test_requests_are_counted_by_route_template_and_state_is_read_at_scrape(
    http: httpx.AsyncClient,
) -> None:
    user = await http.post(
        "/v1/users", json={"email": f"n-{uuid.uuid4().hex[:8]}@x.dev"}, headers=ADMIN
    )
    made = await http.post("/v1/sessions", json={"user_id": user.json()["id"]}, headers=ADMIN)
    assert made.status_code == 201, made.text
    session_id = made.json()["id"]
    for _ in range(3):
        assert (await http.get(f"/v1/sessions/{session_id}", headers=ADMIN)).status_code == 200
    body = (await http.get("/metrics", headers=bearer(SCRAPER))).text
    route = "/v1/sessions/{session_id}"
    assert (
        sample(body, "agentdb_http_requests_total", method="GET", route=route, status="200") or 0
    ) >= 3
    assert (
        sample(
            body, "agentdb_http_request_duration_seconds_count", method="POST", route="/v1/sessions"
        )
        is not None
    )
    assert session_id not in body  # ids never become labels
    assert (sample(body, "agentdb_sessions", status="ready", tier="free") or 0) >= 1
    assert sample(body, "agentdb_job_runs", job="reconcile") is not None
    assert sample(body, "agentdb_sql_kept_connections") is not None


async def test_control_plane_calls_are_counted_by_path_template_and_status(
    http: httpx.AsyncClient,
) -> None:
    user = await http.post(
        "/v1/users", json={"email": f"c-{uuid.uuid4().hex[:8]}@x.dev"}, headers=ADMIN
    )
    made = await http.post("/v1/sessions", json={"user_id": user.json()["id"]}, headers=ADMIN)
    assert made.status_code == 201, made.text
    checkpoint = await http.post(
        f"/v1/sessions/{made.json()['id']}/checkpoints", json={}, headers=ADMIN
    )
    assert checkpoint.status_code == 201, checkpoint.text
    body = (await http.get("/metrics", headers=bearer(SCRAPER))).text
    families = {f.name: f for f in text_string_to_metric_families(body)}
    requests = families["agentdb_control_plane_requests"]
    assert requests.type == "counter"
    counted = {
        (s.labels["method"], s.labels["path"], s.labels["status"]): s.value
        for s in requests.samples
        if s.name.endswith("_total")
    }
    assert counted[("POST", "/projects/{id}/branches/{id}/snapshot", "200")] >= 1
    assert counted[("GET", "/projects/{id}/operations/{id}", "200")] >= 1
    # Ids never become labels: every segment naming a resource is `{id}`.
    assert not [
        path for _, path, _ in counted if re.search(r"/(projects|branches)/(?!\{id\})", path)
    ]
    for name in (
        "agentdb_control_plane_retries",
        "agentdb_control_plane_rate_limit_waits",
        "agentdb_control_plane_rate_limit_wait_seconds",
    ):
        assert families[name].type == "counter"
