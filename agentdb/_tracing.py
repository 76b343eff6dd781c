"""Traces with OpenTelemetry: a server span per API request (Litestar's plugin), child spans for
each meta-database statement (SQLAlchemy's instrumentation) and each control-plane call (the
Neon client's own spans), with the request id and session id as attributes.

Off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set:
then spans go over OTLP/HTTP, batched, with OpenTelemetry's standard variables for the rest
(`OTEL_SERVICE_NAME`, default `agentdb`; headers, timeouts). A caller may hand `open_runtime` a
provider of its own instead (tests use an in-memory exporter). No span carries a token, a
password or a statement's parameters: the ASGI instrumentation records no headers unless told,
and SQLAlchemy's records statements with their placeholders.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def tracer_provider_from_env(environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """A provider exporting over OTLP/HTTP when the environment names an endpoint, else None
    (no spans are made at all). Its owner shuts it down, which flushes what is batched."""
    env = os.environ if environ is None else environ
    if not any(env.get(name) for name in _ENDPOINTS):
        return None
    # Imported only when used: the exporter brings protobuf and requests.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or "agentdb"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider
