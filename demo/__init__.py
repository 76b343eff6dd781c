"""agentdb's chat demo: a person chats with a codegen agent that builds its session's database
through agentdb's tools; every turn that changed the database becomes a checkpoint the person
can restore, preview and diff in the browser, once signed in with an agentdb admin or user
token. `agentdb demo` runs it alone, `agentdb serve` serves it at `/demo`."""

from ._agents import Agent, AnthropicAgent, OfflineAgent, OpenAIAgent, Tools, choose_agent
from ._app import PREFIX, create_demo_app, open_demo, with_demo
from ._auth import SIGN_IN_COOKIE, SignIns, listen_refusal
from ._chat import Busy, Chat, Demo, DemoError, SessionCapReached, Turn
from ._commands import COMMANDS_HELP, CommandError, parse

__all__ = [
    "COMMANDS_HELP",
    "PREFIX",
    "SIGN_IN_COOKIE",
    "Agent",
    "AnthropicAgent",
    "Busy",
    "Chat",
    "CommandError",
    "Demo",
    "DemoError",
    "OfflineAgent",
    "OpenAIAgent",
    "SessionCapReached",
    "SignIns",
    "Tools",
    "Turn",
    "choose_agent",
    "create_demo_app",
    "listen_refusal",
    "open_demo",
    "parse",
    "with_demo",
]
