"""Benchmark of the client's start-up: what a user waits for each command, before and after.

Three measures, each the median of `--runs` runs of the real console script in a subprocess:
`agentdb --help`; a remote `agentdb sessions ls --json` against an `agentdb serve` this script
starts (admin token, a fresh data dir); and `agentdb mcp` with a URL, from start until it
answers the MCP `initialize` request on stdin (what a desktop agent client waits for).

"Before" is another revision of agentdb (`--before`, default `HEAD~1`): checked out in a
temporary git worktree and put first on `PYTHONPATH`, so the same virtual environment and
console script run its code. "After" is this checkout.

Usage: `.venv/bin/python benchmarks/cli.py [--before REV] [--runs 5] [--json out.json]`
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _common import JSON, machine_facts, markdown_table, seconds

ROOT = Path(__file__).resolve().parent.parent
AGENTDB = Path(sys.executable).with_name("agentdb")
ADMIN = "adb_admin_" + "cli-benchmark-token-0123456789"
API_LINE = re.compile(r"^agentdb API: (http://127\.0\.0\.1:\d+)/v1 ")
TARGETS = {"--help": 0.3, "sessions ls (remote)": 0.6, "mcp (remote) to initialized": 1.0}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "agentdb-cli-benchmark", "version": "1"},
    },
}
TIMEOUT_S = 120


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTDB_")}
    env.pop("PYTHONPATH", None)
    return {**env, **extra}


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """`revision` checked out in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="agentdb-cli-before-") as tmp:
        path = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), revision],
            check=True,
        )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                check=False,
            )


@contextmanager
def served(data_dir: Path) -> Iterator[str]:
    """`agentdb serve` (this checkout's) on `data_dir` until the block ends; yields its URL."""
    proc = subprocess.Popen(
        [str(AGENTDB), "serve", "--port", "0", "--data-dir", str(data_dir)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=clean_env(AGENTDB_ADMIN_TOKEN=ADMIN),
        text=True,
    )
    assert proc.stdout is not None  # noqa: S101
    try:
        for line in proc.stdout:
            if match := API_LINE.match(line):
                threading.Thread(target=proc.stdout.read, daemon=True).start()
                yield match.group(1)
                return
        raise RuntimeError(f"agentdb serve exited: {proc.wait()}")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def timed_run(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(
        [str(AGENTDB), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=env,
        timeout=TIMEOUT_S,
        check=True,
    )
    return time.perf_counter() - started


def mcp_initialized(env: dict[str, str]) -> float:
    """Seconds from starting `agentdb mcp` until its answer to `initialize`."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(AGENTDB), "mcp"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    assert proc.stdin is not None  # noqa: S101
    assert proc.stdout is not None  # noqa: S101
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout or ()], daemon=True).start()
    proc.stdin.write(json.dumps(INITIALIZE) + "\n")
    proc.stdin.flush()
    try:
        while True:
            answer = json.loads(lines.get(timeout=TIMEOUT_S))
            if answer.get("id") == 1:
                if "result" not in answer:
                    raise RuntimeError(f"initialize failed: {answer}")
                return time.perf_counter() - started
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def measure(url: str, runs: int, pythonpath: Path | None) -> dict[str, float]:
    extra = {"PYTHONPATH": str(pythonpath)} if pythonpath is not None else {}
    env = clean_env(AGENTDB_URL=url, AGENTDB_TOKEN=ADMIN, **extra)
    samples: dict[str, list[float]] = {name: [] for name in TARGETS}
    for _ in range(runs):
        samples["--help"].append(timed_run(["--help"], env))
        samples["sessions ls (remote)"].append(timed_run(["sessions", "ls", "--json"], env))
        samples["mcp (remote) to initialized"].append(mcp_initialized(env))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="HEAD~1", help="the revision to compare with")
    parser.add_argument("--runs", type=int, default=5, help="runs per measure (the median)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    print(json.dumps(machine_facts()))
    with (
        tempfile.TemporaryDirectory(prefix="agentdb-cli-bench-") as tmp,
        served(Path(tmp) / "data") as url,
        worktree(args.before) as before_tree,
    ):
        before = measure(url, args.runs, before_tree)
        after = measure(url, args.runs, None)
    rows = [
        [name, seconds(before[name]), seconds(after[name]), f"{target:g} s"]
        for name, target in TARGETS.items()
    ]
    print()
    print(f"median of {args.runs} runs; before: {args.before}")
    print(markdown_table(["command", "before", "after", "target"], rows))
    if args.json is not None:
        result: JSON = {"machine": machine_facts(), "before": before, "after": after}
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
