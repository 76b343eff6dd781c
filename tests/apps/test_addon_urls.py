"""The Neon Auth and Data API URLs a session hands out answer on `agentdb serve`'s own listener,
and keep answering with the live data across a restore (they name the session's endpoint, which
the restore moves to the new live branch)."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from .conftest import PASSWORD, AppSession, Served


def _sign_up(web: httpx.Client, base_url: str, email: str) -> str:
    done = web.post(f"{base_url}/sign-up/email", json={"email": email, "password": PASSWORD})
    assert done.status_code == 200, done.text
    token: str = done.json()["token"]
    return token


def _rows(web: httpx.Client, url: str, token: str) -> list[str]:
    got = web.get(f"{url}/notes?select=body&order=id", headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200, got.text
    return [row["body"] for row in got.json()]


def test_the_handed_out_urls_answer_on_the_listener_and_follow_a_restore(
    served: Served, app_session: AppSession
) -> None:
    listener = urlsplit(served.url)
    for url in (app_session.auth_url, app_session.jwks_url, app_session.data_api_url):
        assert urlsplit(url).netloc == listener.netloc, url
    s = app_session
    with httpx.Client(timeout=60) as web:  # an app: no agentdb token anywhere
        assert web.get(s.jwks_url).json()["keys"]
        alice = _sign_up(web, s.auth_url, "alice@example.com")
        bob = _sign_up(web, s.auth_url, "bob@example.com")
        s.sql(
            """CREATE TABLE notes (id serial PRIMARY KEY,
                                   owner text NOT NULL DEFAULT auth.user_id(), body text);
               ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
               CREATE POLICY own ON notes TO authenticated
                   USING (owner = auth.user_id()) WITH CHECK (owner = auth.user_id());
               GRANT SELECT, INSERT ON notes TO authenticated;
               GRANT USAGE ON SEQUENCE notes_id_seq TO authenticated"""
        )
        wrote = web.post(
            f"{s.data_api_url}/notes",
            json={"body": "alice 1"},
            headers={"Authorization": f"Bearer {alice}"},
        )
        assert wrote.status_code == 201, wrote.text
        checkpoint = s.api.post(f"/v1/sessions/{s.id}/checkpoints", json={"label": "one note"})
        assert checkpoint.status_code == 201, checkpoint.text
        # A row written through the connection string, after the checkpoint.
        s.sql(
            "INSERT INTO notes (owner, body) SELECT id::text, 'alice 2' FROM neon_auth.users_sync"
            " WHERE email = 'alice@example.com'"
        )
        assert _rows(web, s.data_api_url, alice) == ["alice 1", "alice 2"]
        assert _rows(web, s.data_api_url, bob) == []  # RLS: Bob sees none of Alice's rows

        restored = s.api.post(f"/v1/sessions/{s.id}/checkpoints/{checkpoint.json()['id']}/restore")
        assert restored.status_code == 200, restored.text
        # The same URLs, the restored data; Alice's token from before the restore still works.
        assert _rows(web, s.data_api_url, alice) == ["alice 1"]
        again = web.post(
            f"{s.auth_url}/sign-in/email",
            json={"email": "bob@example.com", "password": PASSWORD},
        )
        assert again.status_code == 200, again.text
        assert _rows(web, s.data_api_url, again.json()["token"]) == []
        shown = s.api.get(f"/v1/sessions/{s.id}/data-api").json()
        assert shown["url"] == s.data_api_url
        assert s.api.get(f"/v1/sessions/{s.id}/auth").json()["base_url"] == s.auth_url


def test_only_the_add_on_paths_reach_the_plane(served: Served, app_session: AppSession) -> None:
    with httpx.Client(base_url=served.url, timeout=60) as web:
        # The plane's own API is not served on agentdb's listener, however the path is spelled.
        for path in (
            "/api/v2/projects",
            "/data-api/../api/v2/projects",
            "/neon-auth/x/../../api/v2/projects",
        ):
            answer = web.get(path)
            assert answer.status_code == 404, (path, answer.text)
            assert "projects" not in answer.json()  # a problem, never Neon's project list
        # An address nobody has is a PostgREST-shaped 404, not a server error.
        missing = web.get("/data-api/ep-nobody-12345678/neondb/rest/v1/notes")
        assert missing.status_code == 404
        assert set(missing.json()) >= {"code", "message"}
        # agentdb's tokens mean nothing there: a wrong bearer is the Data API's 401, and it
        # does not count toward agentdb's wrong-token throttle.
        for _ in range(3):
            refused = web.get(
                f"{app_session.data_api_url}/notes", headers={"Authorization": "Bearer adb_nope"}
            )
            assert refused.status_code == 401, refused.text
            assert refused.json()["code"] == "PGRST301"
