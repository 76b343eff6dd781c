"""The meta database's tables and alembic migrations (users, agent sessions, checkpoints)."""

__all__: list[str] = []
