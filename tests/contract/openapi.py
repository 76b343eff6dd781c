"""Contract checks of HTTP traffic against Neon's OpenAPI v2 document.

The document is vendored next to this module (``neon-openapi-v2.json``, OpenAPI 3.0.3). It is
loaded and converted once per test run (`NeonSpec.load` is cached); JSON Schema validators are
built lazily, one per (operation, request body / parameter / response status), and cached.

OpenAPI 3.0 schema objects are converted to JSON Schema draft 4 (which 3.0 is derived from):

* ``nullable: true`` becomes ``anyOf: [{"type": "null"}, <schema>]``, so it composes with
  ``allOf``/``oneOf``/``anyOf`` and ``$ref``-only schemas;
* siblings of ``$ref`` are dropped (OpenAPI 3.0 ignores them), and every ``#/...`` reference is
  made absolute so that it resolves against the whole document through a ``referencing``
  registry;
* ``example``, ``discriminator``, ``readOnly``/``writeOnly``, ``deprecated`` and ``x-*`` are
  dropped; ``additionalProperties`` is left as written (absent means "allowed");
* ``format`` is informational, except ``date-time``, which must look like RFC 3339 (a ``T``
  separator and an explicit offset such as ``Z`` or ``+00:00``).

Statuses: a status must be declared by the operation (exactly, as ``2XX``-style range, or through
``default``). Every operation in Neon's document declares ``default`` as ``GeneralError``, so by
default it only covers error statuses (>= 400): an undeclared 2xx is reported as such instead of
as a confusing "'code' is a required property". Set ``default_covers_success = True`` on the
instance to get the literal OpenAPI reading.

Use the httpx hooks to validate every call a client makes::

    spec = NeonSpec.load()
    async with httpx.AsyncClient(base_url=..., **spec.validating_client_kwargs()) as client:
        ...
    spec.seen  # {(method, template, status), ...} validated by the hooks
"""

from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias
from urllib.parse import unquote, urlsplit

from jsonschema import Draft4Validator, FormatChecker
from jsonschema.exceptions import best_match, relevance
from referencing import Registry
from referencing.jsonschema import DRAFT4

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Mapping

    import httpx
    from jsonschema.exceptions import ValidationError

__all__ = ["API_PREFIX", "SPEC_PATH", "ContractError", "NeonSpec"]

SPEC_PATH: Final = Path(__file__).with_name("neon-openapi-v2.json")
API_PREFIX: Final = "/api/v2"
_API_MARK: Final = API_PREFIX + "/"
_DOC_URI: Final = "urn:neon-openapi-v2"
_HTTP_METHODS: Final = frozenset({"get", "put", "post", "delete", "patch", "head", "options"})
_DROPPED_KEYWORDS: Final = frozenset(
    {
        "nullable",
        "example",
        "examples",
        "discriminator",
        "readOnly",
        "writeOnly",
        "deprecated",
        "description",
        "xml",
        "externalDocs",
    }
)
_SCHEMA_LISTS: Final = frozenset({"allOf", "oneOf", "anyOf"})
_SCHEMA_VALUES: Final = frozenset({"items", "not", "additionalProperties"})
_MAX_FAILURES_SHOWN: Final = 5
_MAX_MESSAGE_CHARS: Final = 300
_RFC3339: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_INTEGER: Final = re.compile(r"[+-]?\d+", re.ASCII)
_NUMBER: Final = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_BOOLEANS: Final = {"true": True, "false": False}
_FIRST_ERROR_STATUS: Final = 400

JSONSchema: TypeAlias = dict[str, Any] | bool


class ContractError(AssertionError):
    """HTTP traffic that Neon's OpenAPI document does not allow.

    ``str(error)`` reads ``POST /projects/{project_id}/branches -> 201: $.branch.name: ...``;
    the parts are kept as attributes for programmatic checks.
    """

    def __init__(
        self,
        method: str,
        target: str,
        failures: list[str],
        *,
        status: int | None = None,
        template: str | None = None,
    ) -> None:
        self.method = method.upper()
        self.template = template
        self.status = status
        self.failures = failures
        head = f"{self.method} {template or target}"
        head += f" -> {status}" if status is not None else " request" if template else ""
        shown = failures[:_MAX_FAILURES_SHOWN]
        more = len(failures) - len(shown)
        lines = [f"{head}: {shown[0]}", *shown[1:]]
        if more:
            lines.append(f"(+{more} more)")
        super().__init__("\n  ".join(lines))


# --- schema conversion ----------------------------------------------------------------------------


def _absolute_ref(ref: str) -> str:
    return _DOC_URI + ref if ref.startswith("#") else ref


def _convert(schema: Any) -> Any:
    """Turn one OpenAPI 3.0 schema object into JSON Schema draft 4 (see the module docstring)."""
    if not isinstance(schema, dict):
        return schema  # ``additionalProperties: true`` and the like
    if "$ref" in schema:
        return {"$ref": _absolute_ref(schema["$ref"])}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED_KEYWORDS or key.startswith("x-"):
            continue
        if key == "properties":
            out[key] = {name: _convert(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS:
            out[key] = [_convert(sub) for sub in value]
        elif key in _SCHEMA_VALUES:
            out[key] = _convert(value)
        else:
            out[key] = value
    if schema.get("nullable") is True:
        return {"anyOf": [{"type": "null"}, out]}
    return out


def _is_rfc3339(instance: object) -> bool:
    if not isinstance(instance, str):
        return True
    if not _RFC3339.fullmatch(instance):
        return False
    datetime.fromisoformat(instance.upper())  # ValueError on e.g. month 13
    return True


_FORMAT_CHECKER: Final = FormatChecker(formats=())
_FORMAT_CHECKER.checks("date-time", raises=ValueError)(_is_rfc3339)


# --- the document model ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    location: str
    required: bool
    schema: JSONSchema
    kind: str | None  # JSON type used to coerce string values
    item_kind: str | None  # for arrays


@dataclass(frozen=True, slots=True)
class _Response:
    key: str
    has_content: bool
    json_schema: JSONSchema | None  # None: content without an application/json schema


@dataclass(frozen=True, slots=True)
class _Operation:
    method: str
    template: str
    raw: dict[str, Any]
    params: dict[tuple[str, str], _Param]
    body: JSONSchema | None  # None: the operation declares no request body
    body_required: bool
    responses: dict[str, _Response]


@dataclass(slots=True)
class _Route:
    template: str
    segments: tuple[str | None, ...]  # None where the template has a parameter
    names: tuple[str | None, ...]
    operations: dict[str, _Operation] = field(default_factory=dict)

    @property
    def specificity(self) -> tuple[int, ...]:
        return tuple(0 if segment is not None else 1 for segment in self.segments)


def _pointer(document: dict[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise ValueError(f"only local references are supported, got {ref!r}")
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _deref(document: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = _pointer(document, node["$ref"])
    return node


def _json_type(document: dict[str, Any], schema: Any) -> str | None:
    schema = _deref(document, schema)
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("type"), str):
        return str(schema["type"])
    for sub in schema.get("allOf", ()):
        found = _json_type(document, sub)
        if found:
            return found
    return None


def _split_template(template: str) -> tuple[tuple[str | None, ...], tuple[str | None, ...]]:
    segments: list[str | None] = []
    names: list[str | None] = []
    for segment in template.strip("/").split("/"):
        if segment.startswith("{") and segment.endswith("}"):
            segments.append(None)
            names.append(segment[1:-1])
        else:
            segments.append(segment)
            names.append(None)
    return tuple(segments), tuple(names)


def _api_relative(path: str) -> str:
    """``/api/v2/projects/x?y=1`` (or a full URL, or ``/projects/x``) -> ``/projects/x``."""
    if "://" in path:
        path = urlsplit(path).path
    path = path.split("?", 1)[0].split("#", 1)[0]
    index = path.find(_API_MARK)
    if index >= 0:
        return path[index + len(API_PREFIX) :]
    if path.endswith(API_PREFIX):
        return "/"
    return path if path.startswith("/") else "/" + path


def _media_schema(content: dict[str, Any]) -> tuple[bool, Any]:
    """(has any content, the raw application/json schema or None)."""
    for media_type, media in content.items():
        if media_type.split(";")[0].strip().lower() in {"application/json", "*/*"}:
            return True, media.get("schema", {})
    return bool(content), None


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    if len(text) <= _MAX_MESSAGE_CHARS:
        return text
    return text[: _MAX_MESSAGE_CHARS - 1] + "…"


def _coerce(raw: str, kind: str | None) -> object:
    """A query/path string as the declared JSON type; left as is when it does not parse."""
    if kind == "integer" and _INTEGER.fullmatch(raw):
        return int(raw)
    if kind == "number" and _NUMBER.fullmatch(raw):
        return float(raw)
    if kind == "boolean" and raw in _BOOLEANS:
        return _BOOLEANS[raw]
    return raw


def _decode_body(content: bytes, content_type: str | None, what: str) -> tuple[object | None, str]:
    """(decoded JSON or None for no body, failure text or "")."""
    if not content:
        return None, ""
    if content_type and "json" not in content_type.lower():
        return None, f"{what} is {content_type!r}, not JSON: {_shorten(repr(content[:200]))}"
    try:
        return json.loads(content), ""
    except ValueError as error:
        return None, f"{what} is not valid JSON ({error}): {_shorten(repr(content[:200]))}"


class NeonSpec:
    """Neon's OpenAPI v2 document, ready to validate requests and responses."""

    def __init__(self, document: dict[str, Any], *, source: Path | None = None) -> None:
        started = time.perf_counter()
        self.document = document
        self.source = source
        self.seen: set[tuple[str, str, int]] = set()
        #: OpenAPI's literal reading of ``default`` (see the module docstring).
        self.default_covers_success = False
        schemas = document.get("components", {}).get("schemas", {})
        converted = {"components": {"schemas": {n: _convert(s) for n, s in schemas.items()}}}
        self._registry: Registry[Any] = Registry().with_resource(
            _DOC_URI, DRAFT4.create_resource(converted)
        )
        self._validators: dict[int, Draft4Validator] = {}
        self._routes: dict[int, list[_Route]] = {}
        self.operations: dict[str, tuple[str, str]] = {}  # operationId -> (METHOD, template)
        for template, item in document.get("paths", {}).items():
            self._add_route(template, item)
        for routes in self._routes.values():
            routes.sort(key=lambda route: route.specificity)
        self.load_seconds = time.perf_counter() - started

    @classmethod
    def load(cls, path: Path | None = None) -> NeonSpec:
        """The vendored document (or ``path``), parsed and converted once per process."""
        return _load((path or SPEC_PATH).resolve())

    # --- building ------------------------------------------------------------------------------

    def _add_route(self, template: str, item: dict[str, Any]) -> None:
        segments, names = _split_template(template)
        route = _Route(template, segments, names)
        shared = item.get("parameters", [])
        for method, raw in item.items():
            if method not in _HTTP_METHODS:
                continue
            operation = self._operation(method.upper(), template, raw, shared)
            route.operations[operation.method] = operation
            if "operationId" in raw:
                self.operations[raw["operationId"]] = (operation.method, template)
        self._routes.setdefault(len(segments), []).append(route)

    def _operation(
        self, method: str, template: str, raw: dict[str, Any], shared: list[Any]
    ) -> _Operation:
        document = self.document
        params: dict[tuple[str, str], _Param] = {}
        for declared in [*shared, *raw.get("parameters", [])]:  # operation-level ones override
            param = _deref(document, declared)
            schema = param.get("schema", {})
            kind = _json_type(document, schema)
            item_kind = None
            if kind == "array":
                item_kind = _json_type(document, _deref(document, schema).get("items", {}))
            params[param["in"], param["name"]] = _Param(
                name=param["name"],
                location=param["in"],
                required=bool(param.get("required")) or param["in"] == "path",
                schema=_convert(schema),
                kind=kind,
                item_kind=item_kind,
            )
        body: JSONSchema | None = None
        body_required = False
        if "requestBody" in raw:
            request_body = _deref(document, raw["requestBody"])
            _, raw_schema = _media_schema(request_body.get("content", {}))
            body = True if raw_schema is None else _convert(raw_schema)
            body_required = bool(request_body.get("required"))
        responses: dict[str, _Response] = {}
        for key, declared in raw.get("responses", {}).items():
            response = _deref(document, declared)
            has_content, raw_schema = _media_schema(response.get("content") or {})
            schema = None if raw_schema is None else _convert(raw_schema)
            responses[str(key).upper()] = _Response(str(key), has_content, schema)
        return _Operation(method, template, raw, params, body, body_required, responses)

    def _validator(self, schema: JSONSchema) -> Draft4Validator:
        # Converted schemas live as long as the spec, so their id is a stable cache key.
        validator = self._validators.get(id(schema))
        if validator is None:
            validator = Draft4Validator(
                schema, registry=self._registry, format_checker=_FORMAT_CHECKER
            )
            self._validators[id(schema)] = validator
        return validator

    def _failures(self, schema: JSONSchema, instance: object, where: str = "") -> list[str]:
        """Schema failures, most relevant first, as ``<where><JSON path>: <reason>``.

        ``where`` is "" for response bodies (``$.a.b``), ``"body "`` for request bodies
        (``body $.a.b``) and e.g. ``"query 'ids'"`` for parameters (``query 'ids'[2]``).
        """
        errors: Iterable[ValidationError] = self._validator(schema).iter_errors(instance)
        failures = []
        for error in sorted(errors, key=relevance, reverse=True):
            best = best_match([error]) or error
            path = best.json_path
            location = where + path[1:] if where.endswith("'") else where + path
            failures.append(f"{location}: {_shorten(best.message)}")
        return failures

    # --- matching ------------------------------------------------------------------------------

    def _resolve(self, method: str, path: str) -> tuple[_Operation, dict[str, str]]:
        method = method.upper()
        relative = _api_relative(path)
        parts = relative.strip("/").split("/") if relative.strip("/") else []
        if relative.endswith("/") and relative != "/":
            parts.append("")  # a trailing slash is a different path
        allowed: list[str] = []
        for route in self._routes.get(len(parts), []):
            values: dict[str, str] = {}
            for literal, name, part in zip(route.segments, route.names, parts, strict=True):
                if literal is None and part:
                    values[str(name)] = unquote(part)
                elif literal != unquote(part):
                    break
            else:
                operation = route.operations.get(method)
                if operation is not None:
                    return operation, values
                allowed.extend(f"{m} {route.template}" for m in route.operations)
        reason = (
            f"method not declared; the path matches {', '.join(allowed)}"
            if allowed
            else "no path template of the Neon OpenAPI document matches"
        )
        raise ContractError(method, relative, [reason])

    def match(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        """(path template, raw operation object) for a request path; literal segments win."""
        operation, _ = self._resolve(method, path)
        return operation.template, operation.raw

    def operation_for(self, operation_id: str) -> tuple[str, str]:
        """(METHOD, template) of an ``operationId``."""
        return self.operations[operation_id]

    # --- requests ------------------------------------------------------------------------------

    def validate_request(
        self,
        method: str,
        url_path: str,
        query: Mapping[str, str | list[str]],
        body: object | None,
    ) -> None:
        """Check path and query parameters and the JSON body (``None``: no body) of a request."""
        operation, path_values = self._resolve(method, url_path)
        failures = self._parameter_failures(operation, path_values, query)
        if operation.body is None:
            if body is not None:
                failures.append("body: the operation declares no request body")
        elif body is None:
            if operation.body_required:
                failures.append("body: the request body is required")
        else:
            failures.extend(self._failures(operation.body, body, "body "))
        if failures:
            raise ContractError(operation.method, url_path, failures, template=operation.template)

    def _parameter_failures(
        self,
        operation: _Operation,
        path_values: Mapping[str, str],
        query: Mapping[str, str | list[str]],
    ) -> list[str]:
        failures: list[str] = []
        supplied: dict[tuple[str, str], list[str]] = {
            ("path", name): [value] for name, value in path_values.items()
        }
        for name, values in query.items():
            supplied["query", name] = [values] if isinstance(values, str) else list(values)
        for key in supplied.keys() - operation.params.keys():
            declared = sorted(name for where, name in operation.params if where == key[0])
            failures.append(
                f"{key[0]} {key[1]!r}: unknown parameter (declared: {', '.join(declared) or '-'})"
            )
        for key, param in operation.params.items():
            raw = supplied.get(key)
            if raw is None:
                if param.required:
                    failures.append(f"{param.location} {param.name!r}: required but missing")
                continue
            value: object
            if param.kind == "array":
                items = [item for text in raw for item in text.split(",")]
                value = [_coerce(item, param.item_kind) for item in items]
            elif len(raw) > 1:
                failures.append(f"{param.location} {param.name!r}: given {len(raw)} times")
                continue
            else:
                value = _coerce(raw[0], param.kind)
            failures.extend(self._failures(param.schema, value, f"{param.location} {param.name!r}"))
        return failures

    # --- responses -----------------------------------------------------------------------------

    def _response_for(self, operation: _Operation, status: int) -> _Response | str:
        """The declared response for a status, or why there is none."""
        responses = operation.responses
        response = responses.get(str(status)) or responses.get(f"{status // 100}XX")
        if response is not None:
            return response
        default = responses.get("DEFAULT")
        declared = ", ".join(r.key for r in responses.values())
        if default is not None and (status >= _FIRST_ERROR_STATUS or self.default_covers_success):
            return default
        if default is not None:
            return (
                f"status {status} is not declared (declared: {declared}; "
                "`default` only describes errors)"
            )
        return f"status {status} is not declared (declared: {declared})"

    def validate_response(
        self, method: str, url_path: str, status: int, body: object | None
    ) -> None:
        """Check that a status is declared and the JSON body (``None``: empty) matches it."""
        self._validate_response(method, url_path, status, body)

    def _validate_response(
        self, method: str, url_path: str, status: int, body: object | None
    ) -> str:
        operation, _ = self._resolve(method, url_path)
        response = self._response_for(operation, status)
        if isinstance(response, str):
            failures = [response]
        elif not response.has_content:
            failures = [] if body is None else [f"$: expected no body, got {_shorten(repr(body))}"]
        elif body is None:
            failures = ["$: expected a JSON body, got none"]
        elif response.json_schema is None:
            failures = []  # only non-JSON content declared: nothing to check here
        else:
            failures = self._failures(response.json_schema, body)
        if failures:
            raise ContractError(
                operation.method,
                url_path,
                failures,
                status=status,
                template=operation.template,
            )
        return operation.template

    # --- httpx ---------------------------------------------------------------------------------

    def request_hook(self) -> Callable[[httpx.Request], Awaitable[None]]:
        """An ``httpx.AsyncClient`` request event hook validating requests to ``/api/v2/``."""

        async def validate(request: httpx.Request) -> None:
            if _API_MARK not in request.url.path:
                return
            await request.aread()
            path = request.url.raw_path.decode("ascii").split("?", 1)[0]
            body, failure = _decode_body(
                request.content, request.headers.get("content-type"), "body"
            )
            if failure:
                raise ContractError(request.method, path, [failure])
            query: dict[str, list[str]] = {}
            for name, value in request.url.params.multi_items():
                query.setdefault(name, []).append(value)
            self.validate_request(request.method, path, query, body)

        return validate

    def response_hook(self) -> Callable[[httpx.Response], Awaitable[None]]:
        """An ``httpx.AsyncClient`` response event hook validating responses from ``/api/v2/``.

        Validated ``(method, template, status)`` triples are added to `seen`.
        """

        async def validate(response: httpx.Response) -> None:
            request = response.request
            if _API_MARK not in request.url.path:
                return
            await response.aread()
            path = request.url.raw_path.decode("ascii").split("?", 1)[0]
            body, failure = _decode_body(
                response.content, response.headers.get("content-type"), "$"
            )
            if failure:
                raise ContractError(request.method, path, [failure], status=response.status_code)
            template = self._validate_response(request.method, path, response.status_code, body)
            self.seen.add((request.method, template, response.status_code))

        return validate

    def validating_client_kwargs(self) -> dict[str, Any]:
        """``httpx.AsyncClient(**spec.validating_client_kwargs())`` validates every call."""
        return {
            "event_hooks": {"request": [self.request_hook()], "response": [self.response_hook()]}
        }


@functools.cache
def _load(path: Path) -> NeonSpec:
    started = time.perf_counter()
    document = json.loads(path.read_bytes())
    spec = NeonSpec(document, source=path)
    spec.load_seconds = time.perf_counter() - started
    return spec
