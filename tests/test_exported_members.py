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
    "agentdb.localplane",
    "agentdb.neon",
    "agentdb.cli",
    "meta_schema",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_matches_the_public_names(name: str) -> None:
    package = importlib.import_module(name)
    public = {
        member
        for member, value in vars(package).items()
        if not member.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert sorted(package.__all__) == sorted(public)
