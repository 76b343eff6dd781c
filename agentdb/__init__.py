"""agentdb: an isolated, checkpointable Postgres for every AI-agent session, on Neon or on an
embedded local control plane."""

__all__: list[str] = []
