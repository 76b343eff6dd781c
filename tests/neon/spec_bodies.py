"""Response bodies generated from the response schemas of Neon's OpenAPI document, and an
`httpx.MockTransport` handler that answers any Neon call with one.

For the calls the local plane does not serve (Neon Auth, Data API, consumption, organizations,
transfer), tests answer with these instead of hand-typed guesses: every declared property is
filled (enums take their first value, formats and patterns a fitting string), then the test
overrides what it checks and validates the result with `NeonSpec.validate_response`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from contract.openapi import NeonSpec

_MAX_DEPTH = 8
_STRINGS_BY_FORMAT = {
    "date-time": "2026-06-09T12:00:00Z",
    "uuid": "0b0b7d2c-5a34-4c2e-9a51-6f1c2b7e0001",
    "uri": "https://example.neon.test/path",
    "email": "someone@example.com",
}
_ID_PATTERN_VALUE = "gen-id-0001"


def _deref(document: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = document
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def example(document: dict[str, Any], schema: Any, depth: int = 0) -> Any:
    """An instance of an OpenAPI 3.0 schema with every property filled (only the required
    ones past a nesting depth, to stop on recursive schemas)."""
    schema = _deref(document, schema)
    if not isinstance(schema, dict):
        schema = {}  # e.g. `additionalProperties: true`: any value, {} will do
    if "allOf" in schema:
        return _all_of(document, schema, depth)
    alternatives = schema.get("oneOf") or schema.get("anyOf")
    if alternatives:
        return example(document, alternatives[0], depth)
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type") or ("object" if "properties" in schema else None)
    if kind == "object":
        required = set(schema.get("required", []))
        return {
            name: example(document, sub, depth + 1)
            for name, sub in schema.get("properties", {}).items()
            if depth < _MAX_DEPTH or name in required
        }
    if kind == "array":
        count = max(1, schema.get("minItems", 1))
        return [example(document, schema.get("items", {}), depth + 1) for _ in range(count)]
    return _scalar(kind, schema)


def _all_of(document: dict[str, Any], schema: dict[str, Any], depth: int) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    own = {k: v for k, v in schema.items() if k != "allOf"}
    for sub in [*schema["allOf"], *([own] if own.get("properties") else [])]:
        value = example(document, sub, depth)
        if isinstance(value, dict):
            merged.update(value)
    return merged


def _string(schema: dict[str, Any]) -> str:
    if schema.get("format") in _STRINGS_BY_FORMAT:
        return _STRINGS_BY_FORMAT[schema["format"]]
    if "pattern" in schema:
        return _ID_PATTERN_VALUE
    return "x" * max(int(schema.get("minLength", 0)), 7)


_SCALARS: dict[str | None, Callable[[dict[str, Any]], Any]] = {
    "string": _string,
    "integer": lambda schema: int(schema.get("minimum", 1)),
    "number": lambda schema: float(schema.get("minimum", 1.0)),
    "boolean": lambda _schema: True,
}


def _scalar(kind: str | None, schema: dict[str, Any]) -> Any:
    make = _SCALARS.get(kind)
    return make(schema) if make else {}


def success_status(spec: NeonSpec, method: str, path: str) -> int:
    _template, raw = spec.match(method, path)
    return min(int(key) for key in raw["responses"] if key.isdigit() and key.startswith("2"))


def example_response(
    spec: NeonSpec, method: str, path: str, status: int | None = None
) -> tuple[int, Any]:
    """(status, body) for a call: the lowest declared 2xx unless `status` is given; body None
    when the response declares no JSON content."""
    _template, raw = spec.match(method, path)
    status = status or success_status(spec, method, path)
    declared = raw["responses"].get(str(status)) or raw["responses"]["default"]
    response = _deref(spec.document, declared)
    media = (response.get("content") or {}).get("application/json")
    if media is None:
        return status, None
    return status, example(spec.document, media.get("schema", {}))


def deep_update(body: Any, changes: Mapping[str, Any]) -> Any:
    """`body` with `changes` merged in (nested dicts merged, everything else replaced)."""
    result = copy.deepcopy(body)
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), dict):
            result[key] = deep_update(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def finish_operations(body: Any) -> Any:
    """Marks every operation in a body `finished`, so callers do not poll a generated one."""
    if isinstance(body, dict):
        if {"action", "status", "failures_count"} <= body.keys():
            body["status"] = "finished"
        for value in body.values():
            finish_operations(value)
    elif isinstance(body, list):
        for value in body:
            finish_operations(value)
    return body


@dataclass
class Captured:
    method: str
    path: str
    template: str
    query: dict[str, list[str]]
    body: Any
    headers: httpx.Headers


Answer = Callable[[Captured], httpx.Response | None]


@dataclass
class SpecMock:
    """Answers any Neon call with a spec-generated success body (operations finished), after
    checking the request against the spec; `answers["METHOD template"]` or `answers[template]`
    overrides one call or every method of one path."""

    spec: NeonSpec
    answers: dict[str, Answer] = field(default_factory=dict)
    requests: list[Captured] = field(default_factory=list)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode("ascii").split("?", 1)[0]
        template, _raw = self.spec.match(request.method, path)
        query: dict[str, list[str]] = {}
        for name, value in request.url.params.multi_items():
            query.setdefault(name, []).append(value)
        body = json.loads(request.content) if request.content else None
        self.spec.validate_request(request.method, path, query, body)
        captured = Captured(request.method, path, template, query, body, request.headers)
        self.requests.append(captured)
        answer = self.answers.get(f"{request.method} {template}") or self.answers.get(template)
        if answer is not None:
            response = answer(captured)
            if response is not None:
                return response
        status, generated = example_response(self.spec, request.method, path)
        if generated is None:
            return httpx.Response(status)
        return httpx.Response(status, json=finish_operations(generated))


def script(*steps: httpx.Response | Exception | None) -> Answer:
    """An answer that plays `steps` in order (an exception is raised, as a transport would;
    None falls through to the spec-generated body), then repeats the last one."""
    queue = list(steps)

    def answer(_request: Captured) -> httpx.Response | None:
        step = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(step, Exception):
            raise step
        return step

    return answer


def error(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    """A Neon error answer (`GeneralError`) without a request id of its own."""
    return httpx.Response(status, json={"code": code, "message": message}, headers=headers)
