"""`agentdb checkpoints` and `agentdb branches`: a session's history (drawn as a tree with the
head marked), restores, previews, diffs, and its dev branches."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from typing import Annotated

import cyclopts
from cyclopts import Parameter
from pydantic import JsonValue
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from agentdb.sdk import Checkpoint, CheckpointTree, Diff

from ._base import HELP
from ._remote import (
    NO_OPTIONS,
    Remote,
    Secrets,
    connected,
    details,
    emit,
    listing,
    shown,
    usage_error,
    working,
)

Seconds = Annotated[int, Parameter(validator=cyclopts.validators.Number(gt=0))]

checkpoints = cyclopts.App(name="checkpoints", help=HELP["checkpoints"])
branches = cyclopts.App(name="branches", help=HELP["branches"])

BRANCH_COLUMNS = ("id", "kind", "name", "status", "source_checkpoint_id", "expires_at")


# --- checkpoints -------------------------------------------------------------------------------


@checkpoints.command(name="create")
async def create_checkpoint(
    session_id: uuid.UUID,
    /,
    *,
    label: str | None = None,
    message: str | None = None,
    metadata: str | None = None,
    code_ref: str | None = None,
    options: Remote = NO_OPTIONS,
) -> None:
    """Checkpoint the session's database as it is now; the new checkpoint becomes the head.

    Parameters
    ----------
    session_id
        The session.
    label
        A short name, e.g. "schema v1".
    message
        The agent's message or prompt that led here.
    metadata
        A JSON object to keep with it, e.g. '{"commit": "abc123"}'.
    code_ref
        The code this state goes with (a git commit, a build id, a tag): restoring the
        checkpoint prints it, to check that code out.
    """
    extra = _metadata(metadata)
    async with connected(options) as db:
        with working("Checkpointing"):
            checkpoint = await db.create_checkpoint(
                session_id, label=label, message=message, metadata=extra, code_ref=code_ref
            )
    emit(options, checkpoint, lambda: details(checkpoint))


def _metadata(text: str | None) -> dict[str, JsonValue] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise usage_error(f"--metadata: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise usage_error('--metadata: must be a JSON object, e.g. \'{"commit": "abc123"}\'')
    return value


@checkpoints.command(name="ls")
async def list_checkpoints(session_id: uuid.UUID, /, *, options: Remote = NO_OPTIONS) -> None:
    """Show the session's checkpoints as a tree (each under the one it was taken after), with
    the head (the checkpoint the database last came from) marked.

    Parameters
    ----------
    session_id
        The session.
    """
    async with connected(options) as db:
        tree = await db.list_checkpoints(session_id)
    emit(options, tree, lambda: draw_tree(session_id, tree))


def draw_tree(session_id: uuid.UUID, tree: CheckpointTree) -> Tree:
    known = {c.id for c in tree.checkpoints}
    children: defaultdict[uuid.UUID | None, list[Checkpoint]] = defaultdict(list)
    for checkpoint in sorted(tree.checkpoints, key=lambda c: c.created_at):
        parent = checkpoint.parent_id if checkpoint.parent_id in known else None
        children[parent].append(checkpoint)
    top = Tree(Text(f"session {session_id}", style="bold"))
    pending: list[tuple[Tree, uuid.UUID | None]] = [(top, None)]
    while pending:
        node, parent_id = pending.pop()
        pending.extend(
            (node.add(_node(checkpoint, tree.head_id)), checkpoint.id)
            for checkpoint in children[parent_id]
        )
    if not tree.checkpoints:
        top.add(Text("no checkpoints", style="dim"))
    return top


def _node(checkpoint: Checkpoint, head_id: uuid.UUID | None) -> Text:
    line = Text(str(checkpoint.id), style="cyan")
    line.append(f"  {checkpoint.label}" if checkpoint.label else "  (no label)")
    if checkpoint.status.value != "ready":
        line.append(f"  [{checkpoint.status.value}]", style="yellow")
    line.append(f"  {shown(checkpoint.taken_at or checkpoint.created_at)}", style="dim")
    if checkpoint.code_ref is not None:
        line.append(f"  code {checkpoint.code_ref}", style="magenta")
    if checkpoint.id == head_id:
        line.append("  (HEAD)", style="bold green")
    return line


@checkpoints.command(name="restore")
async def restore_checkpoint(
    session_id: uuid.UUID,
    checkpoint_id: uuid.UUID,
    /,
    *,
    secrets: Secrets = False,
    options: Remote = NO_OPTIONS,
) -> None:
    """Put the session's database back to a checkpoint, in place: the connection URI stays the
    same (open connections are ended), later checkpoints are kept, and the checkpoint becomes
    the head. Prints the checkpoint's code_ref (restored_code_ref): the code to check out.

    Parameters
    ----------
    session_id
        The session.
    checkpoint_id
        The checkpoint to go back to.
    secrets
        Also print the connection URI (hidden by default).
    """
    async with connected(options) as db:
        with working("Restoring"):
            session = await db.restore_checkpoint(session_id, checkpoint_id)
    title = f"restored to checkpoint {checkpoint_id}"
    if session.restored_code_ref is not None:
        title += f" (code_ref {session.restored_code_ref})"
    emit(options, session, lambda: details(session, secrets=secrets, title=title), secrets=secrets)


@checkpoints.command(name="preview")
async def preview_checkpoint(
    session_id: uuid.UUID,
    checkpoint_id: uuid.UUID,
    /,
    *,
    ttl: Seconds | None = None,
    secrets: Secrets = False,
    options: Remote = NO_OPTIONS,
) -> None:
    """Open a checkpoint as a separate preview branch with its own connection URI, leaving the
    session's database alone.

    Parameters
    ----------
    session_id
        The session.
    checkpoint_id
        The checkpoint to look at.
    ttl
        Lifetime in seconds (default: the server's AGENTDB_BRANCH_TTL_S).
    secrets
        Also print the branch's connection URI (hidden by default).
    """
    async with connected(options) as db:
        with working("Opening the preview"):
            branch = await db.preview_checkpoint(session_id, checkpoint_id, ttl_seconds=ttl)
    emit(options, branch, lambda: details(branch, secrets=secrets), secrets=secrets)


@checkpoints.command(name="diff")
async def diff_checkpoints(
    session_id: uuid.UUID,
    checkpoint_id: uuid.UUID,
    /,
    *,
    against: str = "HEAD",
    options: Remote = NO_OPTIONS,
) -> None:
    """What changed from a checkpoint: tables, columns, indexes, constraints, other objects,
    and row counts.

    Parameters
    ----------
    session_id
        The session.
    checkpoint_id
        The checkpoint to compare from.
    against
        HEAD (the live database) or another checkpoint's id.
    """
    async with connected(options) as db:
        diff = await db.diff_checkpoints(session_id, checkpoint_id, against)
    emit(options, diff, lambda: draw_diff(diff))


def draw_diff(diff: Diff) -> RenderableType:
    s = diff.summary
    to = diff.to_checkpoint_id or "HEAD (the live database)"
    head = Text(f"{diff.from_checkpoint_id} -> {to}: ", style="bold")
    if s.identical:
        return head.append("identical", style="green")
    head.append(
        f"{s.tables_added} tables added, {s.tables_removed} removed, {s.tables_changed} "
        f"changed, {s.tables_unchanged} unchanged; {s.objects_changed} other objects changed"
    )
    parts: list[RenderableType] = [head]
    tables = Table(box=None, header_style="bold", pad_edge=False)
    for name in ("table", "change", "rows", "what changed"):
        tables.add_column(name)
    for table in diff.tables:
        if table.change == "unchanged" and not table.data_changed:
            continue
        rows = f"{shown(table.rows_from)} -> {shown(table.rows_to)}"
        if not table.rows_exact:
            rows += " (estimated)"
        changes = _changes(
            [
                (
                    "columns",
                    table.columns_added,
                    table.columns_removed,
                    [c.name for c in table.columns_changed],
                ),
                ("indexes", table.indexes_added, table.indexes_removed, table.indexes_changed),
                (
                    "constraints",
                    table.constraints_added,
                    table.constraints_removed,
                    table.constraints_changed,
                ),
            ],
            data_changed=bool(table.data_changed),
        )
        tables.add_row(table.name, table.change, rows, changes or "-")
    if tables.row_count:
        parts.append(tables)
    parts.extend(Text(f"{o.kind} {o.name}: {o.change}") for o in diff.objects)
    return Group(*parts)


def _changes(
    groups: list[tuple[str, list[str], list[str], list[str]]], *, data_changed: bool
) -> str:
    words = []
    for what, added, removed, changed in groups:
        for sign, names in (("+", added), ("-", removed), ("~", changed)):
            if names:
                words.append(f"{what} {sign}{', '.join(names)}")
    if data_changed:
        words.append("data changed")
    return "; ".join(words)


@checkpoints.command(name="rm")
async def delete_checkpoint(
    session_id: uuid.UUID, checkpoint_id: uuid.UUID, /, *, options: Remote = NO_OPTIONS
) -> None:
    """Delete a checkpoint (not the head); its children stay in the tree.

    Parameters
    ----------
    session_id
        The session.
    checkpoint_id
        The checkpoint.
    """
    async with connected(options) as db:
        checkpoint = await db.delete_checkpoint(session_id, checkpoint_id)
    emit(options, checkpoint, lambda: details(checkpoint, title="deleted"))


@checkpoints.command(name="pin")
async def pin_checkpoint(
    session_id: uuid.UUID,
    checkpoint_id: uuid.UUID,
    /,
    *,
    unpin: bool = False,
    options: Remote = NO_OPTIONS,
) -> None:
    """Pin a checkpoint: the tier's retention never prunes a pinned one.

    Parameters
    ----------
    session_id
        The session.
    checkpoint_id
        The checkpoint.
    unpin
        Unpin it instead (retention may prune it again).
    """
    async with connected(options) as db:
        checkpoint = await db.pin_checkpoint(session_id, checkpoint_id, pinned=not unpin)
    emit(options, checkpoint, lambda: details(checkpoint, title="unpinned" if unpin else "pinned"))


# --- branches ----------------------------------------------------------------------------------


@branches.command(name="create")
async def create_branch(
    session_id: uuid.UUID,
    /,
    *,
    from_: Annotated[uuid.UUID | None, Parameter(name="--from")] = None,
    name: str | None = None,
    ttl: Seconds | None = None,
    secrets: Secrets = False,
    options: Remote = NO_OPTIONS,
) -> None:
    """Branch a writable dev copy of the session's database, with its own connection URI.

    Parameters
    ----------
    session_id
        The session.
    from_
        Start from this checkpoint (default: the live database as it is now).
    name
        A name for the branch.
    ttl
        Lifetime in seconds (default: the server's AGENTDB_BRANCH_TTL_S).
    secrets
        Also print the branch's connection URI (hidden by default).
    """
    async with connected(options) as db:
        with working("Creating the branch"):
            branch = await db.create_branch(
                session_id, name=name, checkpoint_id=from_, ttl_seconds=ttl
            )
    emit(options, branch, lambda: details(branch, secrets=secrets), secrets=secrets)


@branches.command(name="ls")
async def list_branches(
    session_id: uuid.UUID, /, *, secrets: Secrets = False, options: Remote = NO_OPTIONS
) -> None:
    """List the session's dev and preview branches.

    Parameters
    ----------
    session_id
        The session.
    secrets
        With --json, also the connection URIs (hidden by default).
    """
    async with connected(options) as db:
        found = await db.list_branches(session_id)
    emit(
        options,
        found,
        lambda: listing(found, BRANCH_COLUMNS, empty="no branches"),
        secrets=secrets,
    )


@branches.command(name="reset")
async def reset_branch(
    session_id: uuid.UUID, branch_id: uuid.UUID, /, *, options: Remote = NO_OPTIONS
) -> None:
    """Reset a branch to where it began, dropping its changes (same connection URI).

    Parameters
    ----------
    session_id
        The session.
    branch_id
        The branch.
    """
    async with connected(options) as db:
        with working("Resetting the branch"):
            branch = await db.reset_branch(session_id, branch_id)
    emit(options, branch, lambda: details(branch, title="reset to where it began"))


@branches.command(name="rm")
async def delete_branch(
    session_id: uuid.UUID, branch_id: uuid.UUID, /, *, options: Remote = NO_OPTIONS
) -> None:
    """Delete a branch and its database.

    Parameters
    ----------
    session_id
        The session.
    branch_id
        The branch.
    """
    async with connected(options) as db:
        branch = await db.delete_branch(session_id, branch_id)
    emit(options, branch, lambda: details(branch, title="deleted"))
