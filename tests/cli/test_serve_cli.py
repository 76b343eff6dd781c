"""`agentdb serve` in a subprocess: zero configuration, the admin token printed once, the API
answering over HTTP, one-line errors for bad settings, and Neon-cloud mode selected by
AGENTDB_NEON_API_KEY (pointed at a served local plane, the only Neon reachable offline)."""

from __future__ import annotations

import stat
from pathlib import Path

import httpx
import pytest
from support import API_LINE, agentdb, assert_one_line_error, clean_env, serving

TOKEN_PREFIX = "agentdb admin token (shown once, keep it): "


def serve_api(env: dict[str, str], data_dir: Path, printed: list[str]):
    return serving(env, data_dir, ("serve",), API_LINE, printed)


def test_zero_config_serve_prints_the_admin_token_once_and_answers(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    printed: list[str] = []
    with serve_api(clean_env(), data_dir, printed) as url:
        tokens = [
            line.removeprefix(TOKEN_PREFIX) for line in printed if line.startswith(TOKEN_PREFIX)
        ]
        assert len(tokens) == 1, printed
        admin = {"Authorization": f"Bearer {tokens[0]}"}
        with httpx.Client(base_url=url, headers=admin, timeout=60) as http:
            assert http.get("/healthz").json()["control_plane"] == "local"
            user = http.post("/v1/users", json={"email": "zero@example.com"})
            assert user.status_code == 201, user.text
            session = http.post("/v1/sessions", json={"user_id": user.json()["id"]})
            assert session.status_code == 201, session.text
            sid = session.json()["id"]
            run = http.post(f"/v1/sessions/{sid}/sql", json={"sql": "SELECT 40 + 2 AS answer"})
            assert run.json()["rows"] == [[42]]
    key_file = data_dir / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    printed.clear()
    with serve_api(clean_env(), data_dir, printed) as url:
        assert not [line for line in printed if line.startswith(TOKEN_PREFIX)]
        with httpx.Client(base_url=url, headers=admin, timeout=60) as http:
            # The same admin token, the same session, its secret readable with the kept key.
            again = http.get(f"/v1/sessions/{sid}")
            assert again.status_code == 200, again.text
            assert again.json()["connection_uri"] == session.json()["connection_uri"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AGENTDB_SECRET_KEY", "not-a-fernet-key"),
        ("AGENTDB_ADMIN_TOKEN", "short"),
        ("AGENTDB_META_DATABASE", "Bad-Name"),
        ("AGENTDB_SQL_MAX_ROWS", "0"),
        ("AGENTDB_KILL_AT", "restore.nowhere"),
        ("AGENTDB_WARM_POOL_SIZE", "-1"),
        ("AGENTDB_METRICS_TOKEN", "short"),
        ("AGENTDB_LOG_FORMAT", "xml"),
    ],
)
def test_bad_settings_are_one_line_naming_them(tmp_path: Path, name: str, value: str) -> None:
    result = agentdb(
        "serve", "--port", "0", "--data-dir", str(tmp_path / "data"), env=clean_env(**{name: value})
    )
    assert name in assert_one_line_error(result)


def test_neon_cloud_mode_uses_the_configured_api(tmp_path: Path) -> None:
    key = "cloud-key-for-tests"
    plane_env = clean_env(AGENTDB_LOCALPLANE_API_KEY=key)
    with serving(plane_env, tmp_path / "neon") as neon_url:
        env = clean_env(
            AGENTDB_NEON_API_KEY=key,
            AGENTDB_NEON_API_URL=neon_url,
            AGENTDB_ADMIN_TOKEN="adb_admin_cloud-mode-test-token-0123456789",
        )
        with serve_api(env, tmp_path / "agentdb", []) as url:
            admin = {"Authorization": "Bearer adb_admin_cloud-mode-test-token-0123456789"}
            with httpx.Client(base_url=url, headers=admin, timeout=60) as http:
                assert http.get("/healthz").json()["control_plane"] == "neon"
                user = http.post("/v1/users", json={"email": "cloud@example.com"}).json()
                session = http.post("/v1/sessions", json={"user_id": user["id"]})
                assert session.status_code == 201, session.text
            # The project lives on the "cloud" plane, found there by its name.
            with httpx.Client(
                base_url=neon_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
            ) as neon:
                names = [p["name"] for p in neon.get("/projects").json()["projects"]]
                assert f"agentdb-{session.json()['id']}" in names
