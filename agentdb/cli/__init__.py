"""agentdb's command line: `agentdb localplane serve`, and more as the product grows."""

from ._main import app, main

__all__ = ["app", "main"]
