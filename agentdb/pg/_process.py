"""Run PostgreSQL's programs (initdb, pg_ctl, useradd) without blocking the event loop."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

# A fixed environment keeps the caller's PGDATA/PGPORT/LANG from steering initdb or pg_ctl.
_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


@dataclass(frozen=True)
class RunAs:
    """The unprivileged account that runs PostgreSQL when agentdb runs as root."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Completed:
    returncode: int
    output: str


async def run_program(
    argv: list[str | Path], *, run_as: RunAs | None = None, wait_s: float = 120.0
) -> Completed:
    """Run `argv` to completion and return its exit code and combined output.

    Output goes to a temporary file, not a pipe: the postmaster that `pg_ctl start` forks
    would inherit a pipe and keep it open, so reading it to EOF would hang.
    """
    output = await asyncio.to_thread(tempfile.TemporaryFile)
    try:
        process = await asyncio.create_subprocess_exec(
            *(str(arg) for arg in argv),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd="/",
            env=_ENV,
            umask=0o077,
            user=run_as.uid if run_as else None,
            group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None,
        )
        try:
            returncode = await asyncio.wait_for(process.wait(), wait_s)
        except BaseException:  # timeout or cancellation: never leave initdb/pg_ctl behind
            if process.returncode is None:
                process.kill()
                await asyncio.shield(process.wait())
            raise
        text = await asyncio.to_thread(_read_all, output)
    finally:
        await asyncio.to_thread(output.close)
    return Completed(returncode, text)


def _read_all(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read().decode("utf-8", errors="replace")
