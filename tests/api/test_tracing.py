"""Traces: a checkpoint request through the API is one trace, its server span carrying the
request id and session id, with child spans for the meta database's statements and each
control-plane call (here the local plane, in process), all exported to an in-memory exporter
given to the runtime as its tracer provider."""

from __future__ import annotations

import httpx
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from .conftest import Tenant, runtime_with

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))


async def _shut(_: object) -> None:
    provider.shutdown()


runtime = runtime_with("api-tracing", tracer_provider=provider, before_close=_shut)


def _ancestors(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[ReadableSpan]:
    found = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        found.append(span)
    return found


async def test_a_checkpoint_request_is_one_trace_with_meta_and_control_plane_spans(
    http: httpx.AsyncClient, tenant: Tenant
) -> None:
    exporter.clear()
    done = await http.post(
        f"/v1/sessions/{tenant.session_id}/checkpoints",
        json={"label": "traced"},
        headers={**tenant.session_token, "X-Request-ID": "trace-me-0001"},
    )
    assert done.status_code == 201, done.text
    spans = exporter.get_finished_spans()
    (server,) = [
        s
        for s in spans
        if s.kind == SpanKind.SERVER
        and (s.attributes or {}).get("agentdb.request_id") == "trace-me-0001"
    ]
    assert server.name == "POST /v1/sessions/{session_id}/checkpoints"  # no ids in names
    attributes = server.attributes or {}
    assert attributes["http.route"] == "/v1/sessions/{session_id}/checkpoints"
    assert attributes["agentdb.session_id"] == tenant.session_id
    assert attributes["http.status_code"] == 201
    assert server.context is not None
    trace_id = server.context.trace_id
    mine = [s for s in spans if s.context is not None and s.context.trace_id == trace_id]
    by_id = {s.context.span_id: s for s in mine if s.context is not None}
    # Every span of the trace descends from the request's server span.
    assert all(server in _ancestors(s, by_id) for s in mine if s is not server)
    neon = [s for s in mine if s.name.startswith("neon ")]
    assert "neon POST /projects/{id}/branches/{id}/snapshot" in {s.name for s in neon}
    assert all(s.kind == SpanKind.CLIENT for s in neon)
    assert all((s.attributes or {}).get("http.response.status_code") for s in neon)
    meta = [s for s in mine if (s.attributes or {}).get("db.system") == "postgresql"]
    assert meta, [s.name for s in mine]
    statements = " ".join(str((s.attributes or {}).get("db.statement", "")) for s in meta)
    assert "checkpoints" in statements
    # No secret rides along: no token, no header value, no bound parameter.
    text = repr([(s.name, dict(s.attributes or {})) for s in mine])
    for secret in (tenant.session_token["Authorization"].split()[1], "Bearer"):
        assert secret not in text
    assert "traced" not in statements  # the label is a parameter, never in the statement


async def test_probes_and_scrapes_make_no_span(http: httpx.AsyncClient) -> None:
    exporter.clear()
    assert (await http.get("/healthz")).status_code == 200
    assert not [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
