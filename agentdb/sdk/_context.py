"""What an agent says it is doing (the tool it called, the call's id, its model, the prompt
behind it), sent with each request as the `X-Agent-*` headers so that every audit event of the
request records it. `AgentDB.agent_context` sets it for the code inside a `with` block."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from urllib.parse import quote

from agentdb.wire import AGENT_CONTEXT_HEADERS, MAX_AGENT_CONTEXT, MAX_PROMPT_EXCERPT

#: Control characters the server refuses in a header's value (tabs and newlines pass).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class AgentContext:
    """The agent's context for requests: each field left None is not sent. `tool`,
    `tool_call_id` and `model` are at most 200 characters of text (a longer one raises
    `ValueError` here, as the server would refuse every request carrying it); `prompt` is sent
    as the excerpt the server keeps (its first 500 characters, line breaks as `\\n`)."""

    tool: str | None = None
    tool_call_id: str | None = None
    model: str | None = None
    prompt: str | None = None

    def __post_init__(self) -> None:
        for key in ("tool", "tool_call_id", "model"):
            value = getattr(self, key)
            if value is None:
                continue
            if len(value) > MAX_AGENT_CONTEXT:
                raise ValueError(f"{key}: at most {MAX_AGENT_CONTEXT} characters")
            if _CONTROL.search(value):
                raise ValueError(f"{key}: must not hold control characters")

    def over(self, base: AgentContext) -> AgentContext:
        """This context with `base`'s values where it has none (an inner block over the outer
        one)."""
        return dataclasses.replace(base, **{k: v for k, v in self.fields().items() if v})

    def fields(self) -> dict[str, str | None]:
        """The four fields by name, as `AgentDB.agent_context` takes them."""
        return {
            "tool": self.tool,
            "tool_call_id": self.tool_call_id,
            "model": self.model,
            "prompt": self.prompt,
        }

    def headers(self) -> dict[str, str]:
        """The `X-Agent-*` headers, percent-encoded UTF-8."""
        found = {}
        for key, value in self.fields().items():
            if not value or not value.strip():
                continue
            text = _excerpt(value) if key == "prompt" else value
            found[AGENT_CONTEXT_HEADERS[key]] = quote(text, safe="")
        return found


NO_CONTEXT = AgentContext()


def _excerpt(prompt: str) -> str:
    # A prompt is free text (pasted, from Windows): its CRs and other control characters
    # would make the server refuse the request, and only its start is kept anyway.
    text = prompt.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub(" ", text)[:MAX_PROMPT_EXCERPT]


#: The contexts `with client.agent_context(...)` blocks set, per client (each client's key):
#: a context variable, so concurrent tasks each see their own.
ACTIVE: ContextVar[Mapping[object, AgentContext]] = ContextVar(
    "agentdb_agent_context", default=MappingProxyType({})
)
