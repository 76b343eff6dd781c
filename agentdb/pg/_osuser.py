"""The unprivileged account PostgreSQL runs as when agentdb runs as root (postgres refuses root)."""

from __future__ import annotations

import asyncio
import os
import pwd
import stat
from typing import TYPE_CHECKING

import structlog

from agentdb.pg._errors import PostgresStartError
from agentdb.pg._process import RunAs, run_program

if TYPE_CHECKING:
    from pathlib import Path

SERVICE_USER = "agentdb-pg"
_FALLBACK_USER = "nobody"

_log = structlog.get_logger(__name__)


async def resolve_run_as(cluster_dir: Path) -> RunAs | None:
    """Who runs initdb/pg_ctl: None when not root; the cluster's owner if it has one; else ours."""
    if os.geteuid() != 0:
        return None
    existing = await asyncio.to_thread(_cluster_owner, cluster_dir)
    if existing is not None:
        return existing
    entry = await _ensure_service_user()
    return RunAs(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


def _cluster_owner(cluster_dir: Path) -> RunAs | None:
    try:
        info = cluster_dir.stat()
    except FileNotFoundError:
        return None
    if info.st_uid == 0:
        return None
    # Keep running an existing cluster as whoever created it (e.g. `nobody` after a fallback).
    try:
        entry = pwd.getpwuid(info.st_uid)
    except KeyError:
        return RunAs(name=str(info.st_uid), uid=info.st_uid, gid=info.st_gid)
    return RunAs(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)


async def _ensure_service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pass
    argv: list[str | Path] = [
        "useradd",
        "--system",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        SERVICE_USER,
    ]
    try:
        result = await run_program(argv, wait_s=60)
        output = result.output.strip()
    except FileNotFoundError:
        output = "useradd not found"
    try:
        # Looked up again either way: a concurrent agentdb may have created it first.
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        _log.warning("pg_service_user_fallback", user=_FALLBACK_USER, useradd_output=output)
    else:
        _log.info("pg_service_user_created", user=SERVICE_USER, uid=entry.pw_uid)
        return entry
    try:
        return pwd.getpwnam(_FALLBACK_USER)
    except KeyError:
        raise PostgresStartError(
            f"PostgreSQL cannot run as root and user {SERVICE_USER!r} could not be created "
            f"({output}): create it, or run agentdb as a non-root user"
        ) from None


def grant_traverse(targets: list[Path], run_as: RunAs) -> list[Path]:
    """Add o+x (never o+r/o+w) to each directory on the way to `targets` that `run_as` can't cross.

    Returns the directories changed. Group and owner bits are judged against the account's
    primary group only, because PostgreSQL runs without supplementary groups.
    """
    changed: list[Path] = []
    seen: set[Path] = set()
    for target in targets:
        resolved = target.resolve()
        for directory in [*reversed(resolved.parents), resolved]:
            if directory in seen:
                continue
            seen.add(directory)
            mode = directory.stat()
            if not _can_traverse(mode, run_as):
                directory.chmod(stat.S_IMODE(mode.st_mode) | stat.S_IXOTH)
                changed.append(directory)
    return changed


def _can_traverse(info: os.stat_result, run_as: RunAs) -> bool:
    if info.st_uid == run_as.uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == run_as.gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)
