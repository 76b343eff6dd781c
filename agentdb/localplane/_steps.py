"""The steps of a local-plane job, one type each: what a mutation asks the engine to do once its
transaction commits (`Mutation.steps`, run by `PlaneBase._step`).

A job is stored with its operations so that a restarted plane finishes it; there a step is a
JSON list, its kind first and its fields after in the order the type declares them
(`["copy", source, target, group, true, false]`), which `encode` writes and `decode` reads
back, checking every field's type. Every step is idempotent: running one again after a crash
cut it off does what running it once would have.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class Copy:
    """`target` made a copy of `source` (CREATE DATABASE ... TEMPLATE). A live source is
    closed to new connections for the copy and reopened as it was; `allow_connections`
    says whether the copy takes connections (a branch) or not (a snapshot)."""

    kind: ClassVar[str] = "copy"
    source: str
    target: str
    group: str
    source_is_live: bool
    allow_connections: bool


@dataclass(frozen=True)
class Snapshot:
    """The snapshot `snapshot_id`'s copy of `source`'s database `name`, into `target`; not
    made if `source` is unchanged since `empty_since` (its content a new database's) up to
    `upto`, the WAL position when the snapshot was taken (the snapshot then records the
    database as `empty`). Run again after a crash, it decides the same."""

    kind: ClassVar[str] = "snapshot"
    source: str
    target: str
    group: str
    snapshot_id: str
    name: str
    empty_since: str
    upto: str


@dataclass(frozen=True)
class Schema:
    """`target` made anew with `source`'s schema and no rows, restored by `owner` (the
    tenant's role: the dump may run the tenant's code)."""

    kind: ClassVar[str] = "schema"
    source: str
    target: str
    owner: str
    group: str


@dataclass(frozen=True)
class Create:
    """An empty database `target` owned by `owner`."""

    kind: ClassVar[str] = "create"
    target: str
    owner: str
    group: str


@dataclass(frozen=True)
class Swap:
    """`replacement` takes `live`'s name (and so its connection URI); `live` is parked under
    `parked` and reopened there."""

    kind: ClassVar[str] = "swap"
    live: str
    replacement: str
    parked: str
    allow_connections: bool


@dataclass(frozen=True)
class Drop:
    """`name` closed and moved to the trash (dropped in the background)."""

    kind: ClassVar[str] = "drop"
    name: str


@dataclass(frozen=True)
class Connections:
    """`name` opened to connections or closed to them (a compute started or suspended)."""

    kind: ClassVar[str] = "connections"
    name: str
    allowed: bool


@dataclass(frozen=True)
class Role:
    """The role `physical` exists, in `group`, with its stored password."""

    kind: ClassVar[str] = "role"
    physical: str
    group: str
    login: bool


@dataclass(frozen=True)
class Password:
    """The role `physical` gets its stored password."""

    kind: ClassVar[str] = "password"
    physical: str


@dataclass(frozen=True)
class SnapshotSize:
    """The snapshot's size measured and recorded."""

    kind: ClassVar[str] = "snapshot_size"
    snapshot_id: str


Step = (
    Copy | Snapshot | Schema | Create | Swap | Drop | Connections | Role | Password | SnapshotSize
)
_TYPES: dict[str, type[Step]] = {
    t.kind: t
    for t in (
        Copy,
        Snapshot,
        Schema,
        Create,
        Swap,
        Drop,
        Connections,
        Role,
        Password,
        SnapshotSize,
    )
}


def encode(step: Step) -> list[Any]:
    """The step as a job stores it: its kind, then its fields in order."""
    return [step.kind, *(getattr(step, f.name) for f in dataclasses.fields(step))]


def decode(raw: list[Any]) -> Step:
    """A stored step; `ValueError` for an unknown kind or fields of the wrong number or type."""
    kind, *values = raw
    step_type = _TYPES.get(kind)
    if step_type is None:
        raise ValueError(f"unknown step {kind!r}")
    fields = dataclasses.fields(step_type)
    wanted = [bool if f.type in {"bool", bool} else str for f in fields]
    if len(values) != len(fields) or not all(
        type(v) is t for v, t in zip(values, wanted, strict=False)
    ):
        raise ValueError(f"malformed {kind} step: {raw!r}")
    return step_type(*values)


__all__ = [
    "Connections",
    "Copy",
    "Create",
    "Drop",
    "Password",
    "Role",
    "Schema",
    "Snapshot",
    "SnapshotSize",
    "Step",
    "Swap",
    "decode",
    "encode",
]
