"""`agentdb.services.__all__` is its whole public surface."""

from __future__ import annotations

import types

import agentdb.services


def test_all_matches_the_public_names() -> None:
    public = {
        name
        for name, value in vars(agentdb.services).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert sorted(agentdb.services.__all__) == sorted(public)
