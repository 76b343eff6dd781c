"""A stateful property test: hypothesis drives random writes, checkpoints and restores through
the REST API of a served `agentdb serve`, keeping a model of what every checkpoint holds; after
every restore the database must equal the model of the restored checkpoint, and the tree must
keep every checkpoint (restoring to 3 of 7 keeps 4-7 restorable)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from support import API_LINE, clean_env, serving

ADMIN_TOKEN = "adb_admin_stateful-test-token-0123456789"
KEYS = st.integers(min_value=0, max_value=5)
VALUES = st.integers(min_value=-1000, max_value=1000)


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("stateful") / "data"
    with serving(clean_env(AGENTDB_ADMIN_TOKEN=ADMIN_TOKEN), data_dir, ("serve",), API_LINE) as url:
        yield url


class CheckpointMachine(RuleBasedStateMachine):
    """One agent session per example; `live` models its table, `saved` each checkpoint."""

    url: str
    checkpoints = Bundle("checkpoints")
    #: Restores checked over all examples: the run must have exercised the property.
    restores_checked = 0

    def __init__(self) -> None:
        super().__init__()
        self.http = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=120
        )
        self.live: dict[int, int] = {}
        self.saved: dict[str, dict[int, int]] = {}

    @initialize(target=checkpoints)
    def open_session(self) -> str:
        user = self.http.post("/v1/users", json={"email": f"{uuid.uuid4().hex}@example.com"})
        assert user.status_code == 201, user.text
        user_id = user.json()["id"]
        session = self.http.post("/v1/sessions", json={"user_id": user_id})
        assert session.status_code == 201, session.text
        self.session = session.json()["id"]
        self.sql("CREATE TABLE kv (k int PRIMARY KEY, v int NOT NULL)")
        return self.checkpoint_now()

    def sql(self, statement: str, params: list[int] | None = None) -> list[list[int]]:
        response = self.http.post(
            f"/v1/sessions/{self.session}/sql", json={"sql": statement, "params": params}
        )
        assert response.status_code == 200, response.text
        rows: list[list[int]] = response.json()["rows"]
        return rows

    def checkpoint_now(self) -> str:
        response = self.http.post(f"/v1/sessions/{self.session}/checkpoints", json={})
        assert response.status_code == 201, response.text
        checkpoint: str = response.json()["id"]
        self.saved[checkpoint] = dict(self.live)
        return checkpoint

    @rule(k=KEYS, v=VALUES)
    def write(self, k: int, v: int) -> None:
        self.sql(
            "INSERT INTO kv VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v", [k, v]
        )
        self.live[k] = v

    @rule(k=KEYS)
    def delete(self, k: int) -> None:
        self.sql("DELETE FROM kv WHERE k = $1", [k])
        self.live.pop(k, None)

    @rule(target=checkpoints)
    def checkpoint(self) -> str:
        return self.checkpoint_now()

    @precondition(lambda self: self.saved)
    @rule(checkpoint=checkpoints)
    def restore(self, checkpoint: str) -> None:
        response = self.http.post(f"/v1/sessions/{self.session}/checkpoints/{checkpoint}/restore")
        assert response.status_code == 200, response.text
        assert response.json()["head_checkpoint_id"] == checkpoint
        self.live = dict(self.saved[checkpoint])
        CheckpointMachine.restores_checked += 1
        # The property: the database is exactly what the checkpoint held.
        assert dict(map(tuple, self.sql("SELECT k, v FROM kv ORDER BY k"))) == self.live

    @invariant()
    def every_checkpoint_is_kept(self) -> None:
        if not hasattr(self, "session"):
            return
        tree = self.http.get(f"/v1/sessions/{self.session}/checkpoints").json()
        assert {c["id"] for c in tree["checkpoints"]} >= set(self.saved)

    def teardown(self) -> None:
        if hasattr(self, "session"):
            # The final state too, whatever the last step was.
            assert dict(map(tuple, self.sql("SELECT k, v FROM kv ORDER BY k"))) == self.live
            self.http.delete(f"/v1/sessions/{self.session}")
        self.http.close()


def test_restores_always_match_the_model(api_url: str) -> None:
    CheckpointMachine.url = api_url
    CheckpointMachine.restores_checked = 0
    run_state_machine_as_test(
        CheckpointMachine,
        settings=settings(
            max_examples=10,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
            # The same programs every run: how many restores random programs reach varies,
            # and the check below must not depend on luck.
            derandomize=True,
        ),
    )
    assert CheckpointMachine.restores_checked >= 3, CheckpointMachine.restores_checked
