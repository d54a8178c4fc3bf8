"""OpenTelemetry for every Feedline process: on when the standard ``OTEL_*`` env says so.

One convention shared by the services (chassis), the subscriber and the
operator, which import no other first-party package than this one
(docs/architecture.md, "Telemetry"):

- **Off by default.** Spans and metrics are exported over OTLP/HTTP (protobuf)
  only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the signal's own
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``..._METRICS_ENDPOINT``) is set;
  ``OTEL_SDK_DISABLED=true`` turns everything off, and
  ``OTEL_TRACES_EXPORTER=none`` / ``OTEL_METRICS_EXPORTER=none`` one signal.
  Off, :func:`telemetry_from_env` returns None and the SDK is not even
  imported: the processes keep only the W3C trace context (ids in logs,
  ``traceparent`` headers, the events' ``traceparent``), built from the API.
- **Resource.** ``service.name`` defaults to the process's own name (the
  service, ``feedline-subscriber``, ``feedline-operator``);
  ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` override it and add to it.
- **The exporters** read the rest of the standard env themselves (headers,
  timeouts, compression, ``OTEL_BSP_*``, ``OTEL_METRIC_EXPORT_INTERVAL``).
- **The W3C trace context** is parsed and written with OTel's
  ``TraceContextTextMapPropagator`` (:func:`span_context_of`,
  :func:`traceparent_of`), whatever ``OTEL_PROPAGATORS`` says: Feedline's
  headers and events carry ``traceparent`` only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

__all__ = [
    "MAX_LINKS_PER_SPAN",
    "Telemetry",
    "metrics_enabled",
    "span_context_of",
    "telemetry_from_env",
    "traceparent_of",
    "traces_enabled",
]

# A span links to at most this many other spans (the subscriber's batch span to
# the requests that raised its events): a 10,000-event page would otherwise make
# a span too large for exporters and viewers. The SDK's own default cap is 128 too.
MAX_LINKS_PER_SPAN = 128
# At shutdown, wait at most this long for the last spans and metrics to leave.
FLUSH_TIMEOUT_MILLIS = 5_000

PROPAGATOR = TraceContextTextMapPropagator()
TRACEPARENT = "traceparent"


def _set(environ: Mapping[str, str], name: str) -> bool:
    return bool(environ.get(name, "").strip())


def _disabled(environ: Mapping[str, str]) -> bool:
    return environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def _exporter_off(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() == "none"


def traces_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Spans are exported: an OTLP endpoint is set, and neither the SDK nor traces are off."""
    env = os.environ if environ is None else environ
    return (
        not _disabled(env)
        and not _exporter_off(env, "OTEL_TRACES_EXPORTER")
        and (
            _set(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
            or _set(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
    )


def metrics_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Metrics are exported: as :func:`traces_enabled`, for the metrics signal."""
    env = os.environ if environ is None else environ
    return (
        not _disabled(env)
        and not _exporter_off(env, "OTEL_METRICS_EXPORTER")
        and (
            _set(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
            or _set(env, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        )
    )


@dataclass
class Telemetry:
    """One process's (or one app's) providers; ``tracer``/``meter`` are None for a signal off."""

    tracer: trace.Tracer | None
    meter: Meter | None
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    _closed: bool = field(default=False, repr=False)

    def shutdown(self) -> None:
        """Export what is left and stop the exporters' threads (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush(FLUSH_TIMEOUT_MILLIS)
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown(timeout_millis=FLUSH_TIMEOUT_MILLIS)


def telemetry_from_env(
    service_name: str,
    attributes: Mapping[str, Any] | None = None,
    *,
    instrumentation: str = "feedline",
) -> Telemetry | None:
    """The providers the ``OTEL_*`` env asks for, or None when it asks for none.

    The providers are this call's own (not installed as OTel's globals): a
    process may hold several (tests build many apps), and each exports with
    its own resource. ``attributes`` are added to the resource (e.g. the
    subscriber's ``feedline.subscription``). Everything is read from ``os.environ``
    (the SDK's exporters and resource detector read it too).
    """
    want_traces, want_metrics = traces_enabled(), metrics_enabled()
    if not (want_traces or want_metrics):
        return None
    # Imported only when on: a process with telemetry off never loads the SDK.
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource

    resource = Resource.create({"service.name": service_name, **(attributes or {})}).merge(
        OTELResourceDetector().detect()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES win
    )
    telemetry = Telemetry(tracer=None, meter=None)
    if want_traces:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import SpanLimits, TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        tracer_provider = TracerProvider(
            resource=resource,
            span_limits=SpanLimits(max_links=MAX_LINKS_PER_SPAN),
            shutdown_on_exit=True,
        )
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        telemetry.tracer_provider = tracer_provider
        telemetry.tracer = tracer_provider.get_tracer(instrumentation)
    if want_metrics:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        meter_provider = MeterProvider(
            resource=resource,
            metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())],
            shutdown_on_exit=True,
        )
        telemetry.meter_provider = meter_provider
        telemetry.meter = meter_provider.get_meter(instrumentation)
    return telemetry


def span_context_of(traceparent: str | None) -> SpanContext | None:
    """The (remote) span context a ``traceparent`` value names, or None if it is not valid."""
    if not traceparent or not isinstance(traceparent, str):
        return None
    context = PROPAGATOR.extract({TRACEPARENT: traceparent})
    span_context = trace.get_current_span(context).get_span_context()
    return span_context if span_context.is_valid else None


def traceparent_of(span_context: SpanContext | None = None) -> str | None:
    """The ``traceparent`` of ``span_context`` (default: the current span's), if it is valid."""
    if span_context is None:
        span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier, trace.set_span_in_context(trace.NonRecordingSpan(span_context)))
    return carrier.get(TRACEPARENT)
