"""Telemetry names and helpers: every span name, attribute key and instrument name in one place.

relayrl depends on the OpenTelemetry *API* only. Components take an optional
``tracer_provider`` / ``meter_provider``; without one they use the global providers. When no
SDK is configured (the global provider is the API's proxy or no-op provider), :class:`Telemetry`
reports ``tracing = False`` / ``metering = False`` and the hot paths skip telemetry entirely,
so the cost is one attribute test.

Span names follow ``{verb} {object}`` and are low-cardinality; ids and versions are attributes.
The OpenTelemetry API is imported lazily (when a :class:`Telemetry` is built), so ``import
relayrl`` stays light.

Other components (the training server, transports) import the constants from here.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import attrs

from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = [
    "ATTR_ACTOR_COUNT",
    "ATTR_ACTOR_ID",
    "ATTR_BACKEND",
    "ATTR_BATCH_SIZE",
    "ATTR_DEVICE",
    "ATTR_ERROR_TYPE",
    "ATTR_MODEL_VERSION",
    "ATTR_OUTCOME",
    "ATTR_ROUTER",
    "ATTR_STEPS",
    "INSTRUMENTATION_NAME",
    "METRIC_ACTIONS",
    "METRIC_BATCH_SIZE",
    "METRIC_DROPPED_STEPS",
    "METRIC_FAILURES",
    "METRIC_QUEUE_DEPTH",
    "METRIC_REFRESHES",
    "METRIC_REFRESH_DURATION",
    "METRIC_REQUESTS",
    "METRIC_REQUEST_DURATION",
    "METRIC_TRAJECTORIES",
    "OUTCOME_ERROR",
    "OUTCOME_OK",
    "SPAN_INFER_POLICY",
    "SPAN_REFRESH_MODEL",
    "SPAN_SEND_TRAJECTORY",
    "SPAN_TRAIN_EPOCH",
    "Telemetry",
    "get_meter",
    "get_tracer",
]

logger = logging.getLogger("relayrl.telemetry")

#: Instrumentation scope name of every tracer and meter relayrl creates.
INSTRUMENTATION_NAME: Final = "relayrl"

# -- span names -------------------------------------------------------------------------------------

#: One span per forward batch (inline batched request, router batch).
SPAN_INFER_POLICY: Final = "infer policy"
#: One span per model swap (per actor group in independent mode, per device in shared mode).
SPAN_REFRESH_MODEL: Final = "refresh model"
#: One span per trajectory batch sent through a transport.
SPAN_SEND_TRAJECTORY: Final = "send trajectory"
#: One span per training epoch of an algorithm.
SPAN_TRAIN_EPOCH: Final = "train epoch"

# -- attribute keys ---------------------------------------------------------------------------------

#: Number of rows in one forward batch.
ATTR_BATCH_SIZE: Final = "rl.batch.size"
#: Number of actors concerned (served by a batch, refreshed by a swap).
ATTR_ACTOR_COUNT: Final = "rl.actor.count"
#: An actor id (string form of the UUID); only on low-volume spans.
ATTR_ACTOR_ID: Final = "rl.actor.id"
#: Model version served or installed.
ATTR_MODEL_VERSION: Final = "rl.model.version"
#: Inference backend name (``numpy``, ``torch``, ...).
ATTR_BACKEND: Final = "rl.backend"
#: Device the model runs on.
ATTR_DEVICE: Final = "rl.device"
#: ``"ok"`` or ``"error"``.
ATTR_OUTCOME: Final = "rl.outcome"
#: Index of the router that served a batch (absent for inline requests).
ATTR_ROUTER: Final = "rl.router"
#: Number of steps (in trajectories sent, in an epoch).
ATTR_STEPS: Final = "rl.steps"
#: Semantic-convention key for the error class name, set on failures only.
ATTR_ERROR_TYPE: Final = "error.type"

#: Value of :data:`ATTR_OUTCOME` on success.
OUTCOME_OK: Final = "ok"
#: Value of :data:`ATTR_OUTCOME` on failure.
OUTCOME_ERROR: Final = "error"

# -- metric instrument names ------------------------------------------------------------------------

#: Counter: ``request_action`` calls (attribute ``rl.outcome``).
METRIC_REQUESTS: Final = "relayrl.agent.requests"
#: Counter: actions served (one per actor per request).
METRIC_ACTIONS: Final = "relayrl.agent.actions"
#: Histogram (s): ``request_action`` latency, from call to result.
METRIC_REQUEST_DURATION: Final = "relayrl.agent.request.duration"
#: Histogram (rows): forward batch sizes.
METRIC_BATCH_SIZE: Final = "relayrl.agent.batch.size"
#: Counter: model swaps (attribute ``rl.outcome``).
METRIC_REFRESHES: Final = "relayrl.model.refreshes"
#: Histogram (s): validation plus swap time of ``update_model``.
METRIC_REFRESH_DURATION: Final = "relayrl.model.refresh.duration"
#: Counter: failures while serving requests or emitting trajectories (attribute ``error.type``).
METRIC_FAILURES: Final = "relayrl.agent.failures"
#: Counter: steps lost (a sink failed, or the shutdown deadline passed before they were delivered).
METRIC_DROPPED_STEPS: Final = "relayrl.agent.dropped.steps"
#: Counter: trajectories emitted to the sinks.
METRIC_TRAJECTORIES: Final = "relayrl.agent.trajectories"
#: Observable gauge: requests queued per router (attribute ``rl.router``).
METRIC_QUEUE_DEPTH: Final = "relayrl.router.queue.depth"


def get_tracer(tracer_provider: TracerProvider | None = None) -> Tracer:
    """The relayrl tracer from ``tracer_provider``, or from the global provider when None.

    .. versionadded:: 0.1
    """
    from opentelemetry import trace

    return trace.get_tracer(INSTRUMENTATION_NAME, __version__, tracer_provider)


def get_meter(meter_provider: MeterProvider | None = None) -> Meter:
    """The relayrl meter from ``meter_provider``, or from the global provider when None.

    .. versionadded:: 0.1
    """
    from opentelemetry import metrics

    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    return provider.get_meter(INSTRUMENTATION_NAME, __version__)


def _tracing_enabled(tracer_provider: TracerProvider | None) -> bool:
    from opentelemetry import trace

    provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _metering_enabled(meter_provider: MeterProvider | None) -> bool:
    from opentelemetry import metrics
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    return not isinstance(provider, _ProxyMeterProvider | metrics.NoOpMeterProvider)


@attrs.define(eq=False)
class Telemetry:
    """The tracer and instruments of one component, resolved once.

    ``tracing`` / ``metering`` are False when the provider (injected, or else the global one at
    construction time) is the API's proxy or no-op provider; callers test them before doing any
    telemetry work. Every method swallows (and logs) exceptions: telemetry never raises into
    the runtime.

    .. versionadded:: 0.1
    """

    tracer: Tracer
    meter: Meter
    tracing: bool
    metering: bool
    requests: Counter
    actions: Counter
    request_duration: Histogram
    batch_size: Histogram
    refreshes: Counter
    refresh_duration: Histogram
    failures: Counter
    dropped_steps: Counter
    trajectories: Counter

    @classmethod
    def create(
        cls, tracer_provider: TracerProvider | None = None, meter_provider: MeterProvider | None = None
    ) -> Telemetry:
        """Resolve the tracer, the meter and the instruments from the given (or global) providers."""
        meter = get_meter(meter_provider)
        return cls(
            tracer=get_tracer(tracer_provider),
            meter=meter,
            tracing=_tracing_enabled(tracer_provider),
            metering=_metering_enabled(meter_provider),
            requests=meter.create_counter(METRIC_REQUESTS, unit="{request}",
                                          description="request_action calls"),
            actions=meter.create_counter(METRIC_ACTIONS, unit="{action}", description="actions served"),
            request_duration=meter.create_histogram(METRIC_REQUEST_DURATION, unit="s",
                                                    description="request_action latency"),
            batch_size=meter.create_histogram(METRIC_BATCH_SIZE, unit="{row}", description="forward batch sizes"),
            refreshes=meter.create_counter(METRIC_REFRESHES, unit="{swap}", description="model swaps"),
            refresh_duration=meter.create_histogram(METRIC_REFRESH_DURATION, unit="s",
                                                    description="model validation and swap time"),
            failures=meter.create_counter(METRIC_FAILURES, unit="{error}",
                                          description="failures while serving or emitting"),
            dropped_steps=meter.create_counter(METRIC_DROPPED_STEPS, unit="{step}",
                                               description="steps lost to sink failures or the shutdown deadline"),
            trajectories=meter.create_counter(METRIC_TRAJECTORIES, unit="{trajectory}",
                                              description="trajectories emitted"),
        )

    def start_span(self, name: str, attributes: dict[str, Any]) -> Span | None:
        """Start a span (not made current) when tracing is on; None otherwise or on error."""
        if not self.tracing:
            return None
        try:
            return self.tracer.start_span(name, attributes=attributes)
        except Exception:  # pragma: no cover - telemetry must never raise
            logger.exception("could not start span %r", name)
            return None

    @staticmethod
    def end_span(span: Span | None, error: BaseException | None = None, **attributes: Any) -> None:
        """Set the outcome (and ``error.type`` on failure) and end ``span`` (None is ignored)."""
        if span is None:
            return
        try:
            if attributes:
                span.set_attributes(attributes)
            if error is None:
                span.set_attribute(ATTR_OUTCOME, OUTCOME_OK)
            else:
                from opentelemetry.trace import Status, StatusCode

                span.set_attribute(ATTR_OUTCOME, OUTCOME_ERROR)
                span.set_attribute(ATTR_ERROR_TYPE, type(error).__qualname__)
                span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
            span.end()
        except Exception:  # pragma: no cover
            logger.exception("could not end span")

    def count_failure(self, error: BaseException) -> None:
        """Count one failure of the error's type (when metering)."""
        if not self.metering:
            return
        try:
            self.failures.add(1, {ATTR_ERROR_TYPE: type(error).__qualname__})
        except Exception:  # pragma: no cover
            logger.exception("could not record a failure")
