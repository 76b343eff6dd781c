"""`agentdb.neon` exports exactly what users import."""

from __future__ import annotations

import agentdb.neon


def test_all_names_exist_and_nothing_private_is_exported() -> None:
    exported = set(agentdb.neon.__all__)
    assert len(exported) == len(agentdb.neon.__all__)
    for name in exported:
        assert not name.startswith("_")
        assert getattr(agentdb.neon, name) is not None
    public = {n for n in vars(agentdb.neon) if not n.startswith("_")}
    assert public == exported
