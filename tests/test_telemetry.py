"""Telemetry of the agent: spans and metrics through injected SDK providers (never the global one)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import trio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import relayrl
from relayrl import _telemetry as tel
from relayrl import spaces
from relayrl.abc import HeadOutputs, Policy


@pytest.fixture
def traces() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def metrics() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


def model(seed: int = 0) -> relayrl.ModelModule:
    return relayrl.mlp_policy(4, spaces.Discrete(2), hidden=(8,), seed=seed)


def collect(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == tel.INSTRUMENTATION_NAME
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def total(points: list[Any], **attrs: Any) -> float:
    return float(sum(p.value for p in points if all(p.attributes.get(k) == v for k, v in attrs.items())))


def attr(span: Any, key: str) -> Any:
    return dict(span.attributes or {})[key]


async def test_infer_and_refresh_spans(traces: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = traces
    async with relayrl.open_agent(model(), actors=5, tracer_provider=provider) as agent:
        ids = agent.actor_ids
        await agent.request_action(ids, np.zeros((5, 4)))
        await agent.update_model(model(1), ids[:2])
        await agent.request_action(ids, np.zeros((5, 4)))
    spans = exporter.get_finished_spans()
    infer = [s for s in spans if s.name == tel.SPAN_INFER_POLICY]
    refresh = [s for s in spans if s.name == tel.SPAN_REFRESH_MODEL]
    assert len(infer) == 3  # one batch, then two model groups
    assert dict(infer[0].attributes or {}) == {
        tel.ATTR_BATCH_SIZE: 5, tel.ATTR_ACTOR_COUNT: 5, tel.ATTR_MODEL_VERSION: 0, tel.ATTR_BACKEND: "numpy",
        tel.ATTR_DEVICE: "cpu", tel.ATTR_OUTCOME: tel.OUTCOME_OK,
    }
    assert sorted(attr(s, tel.ATTR_BATCH_SIZE) for s in infer[1:]) == [2, 3]
    assert sorted(attr(s, tel.ATTR_MODEL_VERSION) for s in infer[1:]) == [0, 1]
    (r,) = refresh
    attrs = dict(r.attributes or {})
    assert attrs[tel.ATTR_ACTOR_COUNT] == 2 and attrs[tel.ATTR_MODEL_VERSION] == 1
    assert attrs[tel.ATTR_OUTCOME] == tel.OUTCOME_OK and tel.ATTR_ERROR_TYPE not in attrs


class BrokenPolicy(Policy):
    def forward(self, obs: np.ndarray, mask: np.ndarray | None = None) -> HeadOutputs:
        raise FloatingPointError("broken")


async def test_failures_are_recorded_on_spans_and_counters(
    traces: tuple[TracerProvider, InMemorySpanExporter], metrics: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    (tp, exporter), (mp, reader) = traces, metrics
    broken = model(2)
    broken._policies["cpu"] = BrokenPolicy()
    bad_bundle = relayrl.ModelModule(model().metadata, model().data)
    object.__setattr__(bad_bundle, "_data", b"junk")
    async with relayrl.open_agent(broken, actors=2, tracer_provider=tp, meter_provider=mp) as agent:
        with pytest.raises(FloatingPointError):
            await agent.request_action(agent.actor_ids, np.zeros((2, 4)))
        with pytest.raises(relayrl.ModelError):
            await agent.update_model(bad_bundle)
        with pytest.raises(relayrl.ObservationError):
            await agent.request_action(agent.actor_ids, np.zeros((2, 3)))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    infer = dict(spans[tel.SPAN_INFER_POLICY].attributes or {})
    assert infer[tel.ATTR_OUTCOME] == tel.OUTCOME_ERROR and infer[tel.ATTR_ERROR_TYPE] == "FloatingPointError"
    refresh = dict(spans[tel.SPAN_REFRESH_MODEL].attributes or {})
    assert refresh[tel.ATTR_OUTCOME] == tel.OUTCOME_ERROR and refresh[tel.ATTR_ERROR_TYPE] == "ModelError"
    m = collect(reader)
    assert total(m[tel.METRIC_FAILURES], **{tel.ATTR_ERROR_TYPE: "FloatingPointError"}) == 1
    assert total(m[tel.METRIC_FAILURES], **{tel.ATTR_ERROR_TYPE: "ModelError"}) == 1
    assert total(m[tel.METRIC_FAILURES], **{tel.ATTR_ERROR_TYPE: "ObservationError"}) == 1
    assert total(m[tel.METRIC_REQUESTS], **{tel.ATTR_OUTCOME: tel.OUTCOME_ERROR}) == 2
    assert total(m[tel.METRIC_REFRESHES], **{tel.ATTR_OUTCOME: tel.OUTCOME_ERROR}) == 1


async def test_request_metrics(metrics: tuple[MeterProvider, InMemoryMetricReader]) -> None:
    mp, reader = metrics
    async with relayrl.open_agent(model(), actors=4, routers=2, meter_provider=mp, max_traj_length=2) as agent:
        ids = agent.actor_ids
        for _ in range(3):
            await agent.request_action(ids, np.zeros((4, 4)))
        await agent.request_action(ids[:1], np.zeros(4))
        await agent.update_model(model(1))
        m = collect(reader)
        depths = m[tel.METRIC_QUEUE_DEPTH]
        assert sorted(p.attributes[tel.ATTR_ROUTER] for p in depths) == [0, 1]
        assert all(p.value == 0 for p in depths)
    m = collect(reader)
    assert total(m[tel.METRIC_REQUESTS], **{tel.ATTR_OUTCOME: tel.OUTCOME_OK}) == 4
    assert total(m[tel.METRIC_ACTIONS]) == 13
    (duration,) = m[tel.METRIC_REQUEST_DURATION]
    assert duration.count == 4 and duration.sum > 0
    (sizes,) = m[tel.METRIC_BATCH_SIZE]
    assert sizes.count == 4 and sizes.sum == 13
    assert total(m[tel.METRIC_REFRESHES], **{tel.ATTR_OUTCOME: tel.OUTCOME_OK}) == 4
    assert total(m[tel.METRIC_TRAJECTORIES]) == agent.statistics().trajectories_emitted == 8  # 4 cut + 4 flushed


async def test_no_provider_means_no_telemetry_work() -> None:
    t = tel.Telemetry.create()
    assert not t.tracing and not t.metering
    assert t.start_span(tel.SPAN_INFER_POLICY, {}) is None
    tel.Telemetry.end_span(None)
    async with relayrl.open_agent(model(), actors=1) as agent:
        assert not agent._tracing and not agent._metering
        await agent.request_action(agent.actor_ids, np.zeros(4))


async def test_router_batches_are_traced(traces: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = traces
    async with relayrl.open_agent(model(), actors=8, tracer_provider=provider) as agent:

        async def one(actor_id: Any) -> None:
            await agent.request_action([actor_id], np.zeros(4))

        async with trio.open_nursery() as nursery:
            for actor_id in agent.actor_ids:
                nursery.start_soon(one, actor_id)
        routed = agent.statistics().routed_requests
    spans = [s for s in exporter.get_finished_spans() if s.name == tel.SPAN_INFER_POLICY]
    assert sum(attr(s, tel.ATTR_BATCH_SIZE) for s in spans) == 8
    assert routed == sum(attr(s, tel.ATTR_BATCH_SIZE) for s in spans if tel.ATTR_ROUTER in (s.attributes or {}))
    assert routed > 0


def test_names_are_low_cardinality_constants() -> None:
    for name in (tel.SPAN_INFER_POLICY, tel.SPAN_REFRESH_MODEL, tel.SPAN_SEND_TRAJECTORY, tel.SPAN_TRAIN_EPOCH):
        verb, obj = name.split(" ")
        assert verb.isalpha() and obj.isalpha()
    assert tel.get_tracer(TracerProvider()) is not None
    assert tel.get_meter(MeterProvider()) is not None
