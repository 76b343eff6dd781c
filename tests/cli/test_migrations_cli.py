"""`agentdb migrations` run as the real command in subprocesses against one `agentdb serve` for the
module: an apply with a canary that finishes (its live progress on a terminal, its summary of
counts), listing, showing and rolling it back; a failure that halts it (exit 1, the failed
session and its error in the summary) and a resume with --continue that rolls on; and bad input
refused as one line before anything is posted. Each test migrates its own user's few sessions,
made over the REST API (quicker than a command per session)."""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support import API_LINE, agentdb, assert_one_line_error, clean_env, serving

ADMIN = "adb_admin_cli-migrations-test-token-0123456789"
#: What a terminal's control sequences look like (the progress bar redraws itself with them).
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("cli-migrations") / "data"
    with serving(clean_env(AGENTDB_ADMIN_TOKEN=ADMIN), data_dir, ("serve",), API_LINE) as served:
        yield served


@pytest.fixture(scope="module")
def admin(url: str) -> dict[str, str]:
    return clean_env(AGENTDB_URL=url, AGENTDB_TOKEN=ADMIN)


def rest(url: str) -> httpx.Client:
    """The REST API as the admin, for what the tests set up and check besides the command."""
    return httpx.Client(
        base_url=f"{url}/v1", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60
    )


def sessions_of_a_new_user(url: str, count: int) -> tuple[str, list[str]]:
    """A user with `count` sessions, each with a `todo` table."""
    with rest(url) as api:
        user = api.post("/users", json={"email": f"{uuid.uuid4().hex[:10]}@example.com"})
        user_id = user.raise_for_status().json()["id"]
        sids = []
        for _ in range(count):
            session = api.post("/sessions", json={"user_id": user_id}).raise_for_status().json()
            made = api.post(
                f"/sessions/{session['id']}/sql",
                json={"sql": "create table todo (id int primary key, title text)"},
            )
            made.raise_for_status()
            sids.append(session["id"])
    return user_id, sids


def run_all(
    *runs: tuple[tuple[str, ...], dict[str, str]],
) -> list[subprocess.CompletedProcess[str]]:
    """Independent runs in parallel (each costs ~1.7 s of Python start-up)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda run: agentdb(*run[0], env=run[1]), runs))


def stdout_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result
    assert result.stderr == "", result.stderr
    return result.stdout


def counts_in(text: str) -> dict[str, int]:
    """The summary's `status  sessions` rows."""
    return {
        parts[0]: int(parts[1])
        for line in text.splitlines()
        if len(parts := line.split()) == 2 and parts[1].isdigit()
    }


def id_of(summary: str) -> str:
    """The migration's id, as the summary shows it."""
    match = re.search(r"^id ([0-9a-f-]{36})$", summary, re.MULTILINE)
    assert match, summary
    return match.group(1)


def sql_file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_apply_with_a_canary_shows_progress_sums_up_and_rolls_back(
    url: str, admin: dict[str, str], tmp_path: Path
) -> None:
    user_id, sids = sessions_of_a_new_user(url, 3)
    up = sql_file(tmp_path, "up.sql", "alter table todo add column done bool default false;\n")
    down = sql_file(tmp_path, "down.sql", "alter table todo drop column done;\n")
    name = f"add_done_{uuid.uuid4().hex[:8]}"
    # As on a terminal: the progress bar draws on stderr (colourless, for the assertions).
    terminal = {**admin, "TTY_COMPATIBLE": "1", "NO_COLOR": "1", "COLUMNS": "160"}
    applied = agentdb(
        "migrations",
        "apply",
        up,
        "--name",
        name,
        "--down",
        down,
        "--canary",
        "33%",
        "--concurrency",
        "2",
        "--user",
        user_id,
        env=terminal,
    )
    assert applied.returncode == 0, applied
    progress = ANSI.sub("", applied.stderr)
    assert name in progress
    assert "3/3" in progress
    assert "applied 3 · failed 0 · skipped 0" in progress
    assert "finished" in progress
    summary = ANSI.sub("", applied.stdout)
    assert f"migration {name} finished: 3 of 3 sessions done" in summary
    assert counts_in(summary) == {"applied": 3}

    mid = id_of(summary)
    listed, shown, details, results, cancelled = run_all(
        (("migrations", "ls", "--json"), admin),
        (("migrations", "ls"), admin),
        (("migrations", "show", mid), admin),
        (("migrations", "sessions", "--json", mid), admin),
        (("migrations", "cancel", mid), admin),
    )
    (migration,) = [m for m in json.loads(stdout_of(listed)) if m["name"] == name]
    assert migration["id"] == mid
    assert (migration["status"], migration["total"], migration["counts"]["applied"]) == (
        "finished",
        3,
        3,
    )
    assert migration["rollout"]["canary"] == "33%"
    assert any(
        line.startswith(mid) and name in line and "finished" in line
        for line in stdout_of(shown).splitlines()
    )
    per_session = json.loads(stdout_of(results))
    assert sorted(r["session_id"] for r in per_session) == sorted(sids)
    assert {r["status"] for r in per_session} == {"applied"}
    assert sum(r["canary"] for r in per_session) == 1
    # A finished migration has nothing to cancel: one line, exit 1.
    assert cancelled.returncode == 1
    assert "nothing to cancel" in assert_one_line_error(cancelled)

    assert re.search(r"^counts\s+applied 3$", stdout_of(details), re.MULTILINE)

    text = stdout_of(agentdb("migrations", "rollback", mid, env=admin))
    assert f"migration {name} rolled_back: 3 of 3 sessions done" in text
    assert counts_in(text) == {"rolled_back": 3}


def test_a_failure_halts_it_and_resume_with_continue_rolls_on(
    url: str, admin: dict[str, str], tmp_path: Path
) -> None:
    user_id, sids = sessions_of_a_new_user(url, 3)
    odd = sids[0]
    with rest(url) as api:
        api.post(
            f"/sessions/{odd}/sql", json={"sql": "alter table todo add column note text"}
        ).raise_for_status()
    up = sql_file(tmp_path, "note.sql", "alter table todo add column note text")
    name = f"add_note_{uuid.uuid4().hex[:8]}"
    command = ("migrations", "apply", up, "--name", name, "--user", user_id, "--concurrency", "1")

    halted = agentdb(*command, env=admin)
    assert halted.returncode == 1, halted
    line = assert_one_line_error(halted)
    assert f"migration {name} halted: 1 session(s) failed (the rule halts after 1)" in line
    mid = id_of(halted.stdout)
    assert f"migrations resume {mid} --continue" in line
    assert f"migration {name} halted: 1 of 3 sessions done" in halted.stdout  # concurrency 1
    assert counts_in(halted.stdout) == {"pending": 2, "failed": 1}
    assert "failed sessions:" in halted.stdout
    (failed_line,) = [x for x in halted.stdout.splitlines() if x.startswith(odd)]
    assert "note" in failed_line  # PostgreSQL's error: the column exists

    failed, again = run_all(
        (("migrations", "sessions", mid, "--status", "failed", "--json"), admin),
        ((*command, "--json"), admin),
    )
    (result,) = json.loads(stdout_of(failed))
    assert (result["session_id"], result["status"]) == (odd, "failed")
    assert "note" in result["error"]
    assert again.returncode == 1
    assert f"a fleet migration named '{name}' exists" in assert_one_line_error(again)

    resumed = agentdb("migrations", "resume", mid, "--continue", "--json", env=admin)
    # It rolled on and finished, but one session did not take it: exit 1, saying so.
    assert resumed.returncode == 1, resumed
    assert f"migration {name} finished, but 1 session(s) failed" in assert_one_line_error(resumed)
    migration = json.loads(resumed.stdout)
    assert (migration["id"], migration["status"], migration["total"]) == (mid, "finished", 3)
    assert (migration["counts"]["applied"], migration["counts"]["failed"]) == (2, 1)

    # Without a `down`, a rollback restores the two checkpoints (nothing was written since);
    # the session that failed never took it, so nothing is left behind: exit 0.
    rolled_back = json.loads(stdout_of(agentdb("migrations", "rollback", mid, "--json", env=admin)))
    assert rolled_back["status"] == "rolled_back"
    assert (rolled_back["counts"]["rolled_back"], rolled_back["counts"]["failed"]) == (2, 1)


def test_bad_input_is_one_line_and_nothing_is_posted(
    url: str, admin: dict[str, str], tmp_path: Path
) -> None:
    up = sql_file(tmp_path, "up.sql", "create table t (x int)")
    empty = sql_file(tmp_path, "empty.sql", " \n")
    missing = str(tmp_path / "missing.sql")
    some = str(uuid.uuid4())
    bad = f"bad_{uuid.uuid4().hex[:8]}"
    apply = ("migrations", "apply")
    cases: list[tuple[tuple[str, ...], int, str]] = [
        ((*apply, missing, "--name", bad), 2, f"FILE: no such file: {missing}"),
        ((*apply, empty, "--name", bad), 2, f"FILE: {empty} is empty"),
        ((*apply, up, "--name", bad, "--canary", "abc"), 2, "--canary: 'abc' is not a count"),
        ((*apply, up, "--name", bad, "--canary", "150%"), 2, "--canary: '150%' is not a percen"),
        ((*apply, up, "--name", bad, "--tier", "pro", "--session", some), 2, "one kind of target"),
        # agentdb refuses the value: exit 2 too, naming the option.
        ((*apply, up, "--name", "has spaces", "--session", some), 2, "--name: "),
        # The operation fails: exit 1.
        (("migrations", "show", some), 1, f"no fleet migration {some}"),
    ]
    results = run_all(*((args, admin) for args, _, _ in cases))
    for (args, code, wanted), result in zip(cases, results, strict=True):
        line = assert_one_line_error(result)
        assert result.returncode == code, (args, line)
        assert wanted in line, (args, line)
        assert result.stdout == "", (args, result.stdout)
    with rest(url) as api:
        listed = api.get("/migrations", params={"limit": 500}).raise_for_status().json()
    assert not {m["name"] for m in listed["migrations"]} & {bad, "has spaces"}
