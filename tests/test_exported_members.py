"""Each package's `__all__` is its public surface: every exported name exists and nothing
public is left out."""

from __future__ import annotations

import importlib
import types

import pytest

PACKAGES = [
    "agentdb",
    "agentdb.api",
    "agentdb.pg",
    "agentdb.sdk",
    "agentdb.tools",
    "agentdb.localplane",
    "agentdb.neon",
    "agentdb.cli",
    "meta_schema",
    "demo",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_matches_the_public_names(name: str) -> None:
    package = importlib.import_module(name)
    public = {
        member
        for member, value in vars(package).items()
        if not member.startswith("_") and not isinstance(value, types.ModuleType)
    }
    # Names a package loads lazily (module __getattr__) are public once asked for.
    assert all(hasattr(package, member) for member in package.__all__)
    assert sorted(package.__all__) == sorted(public | {*package.__all__} - set(vars(package)))
