"""The transport contract on the built-in in-process transport: handshake, acknowledged delivery
with retries, model broadcast with integrity, notices, inference request/reply, and TransportSink."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import trio

import relayrl
from relayrl import transports
from relayrl._transport_api import InferenceReply, InferenceRequest, ModelUpdate, Notice, TrajectoryBatch
from relayrl.abc import Transport
from relayrl.testing import TransportConformance


def make_traj(n: int = 3, *, reward: float = 1.0, actor: uuid.UUID | None = None) -> relayrl.Trajectory:
    return relayrl.Trajectory(
        obs=np.arange(n * 4, dtype=np.float32).reshape(n, 4), act=np.zeros(n, np.int64),
        reward=np.full(n, reward, np.float32), done=np.eye(1, n, n - 1, dtype=bool)[0],
        logp=np.zeros(n, np.float32), value=np.zeros(n, np.float32), model_version=np.zeros(n, np.int64),
        actor_id=actor or uuid.uuid4())


def policy(seed: int = 0) -> relayrl.ModelModule:
    return relayrl.mlp_policy(4, relayrl.spaces.Discrete(2), hidden=(8,), seed=seed)


def test_registry_finds_the_builtin_inproc() -> None:
    assert "inproc" in transports.names()
    cls = transports.get("inproc")
    assert cls is transports.InprocTransport
    assert issubclass(cls, Transport)
    assert transports.status()["inproc"] == "ok"


def test_unknown_transport_names_the_distribution() -> None:
    with pytest.raises(relayrl.UnknownPluginError, match="relayrl-zmq"):
        transports.get("zmq")


@pytest.mark.parametrize(("key", "value"), [("capacity", 0), ("max_unacked", -1), ("retry_interval", 0.0),
                                            ("capacity", 1.5), ("close_grace", float("nan"))])
def test_bad_settings_raise_config_error(key: str, value: object) -> None:
    with pytest.raises(relayrl.ConfigError, match=key):
        transports.InprocTransport(**{key: value})  # type: ignore[arg-type]


async def test_handshake_without_and_with_a_model() -> None:
    t = transports.InprocTransport()
    async with t.open_server() as server, t.open_client() as client:
        assert await client.request_model() is None
        await server.publish_model(policy().with_version(0))
        got = await client.request_model()
        assert got is not None and got.version == 0 and got == policy().with_version(0)
        assert server.statistics().handshakes == 2
        assert client.statistics().model_version == 0


async def test_handshake_waits_for_a_server(autojump_clock: trio.abc.Clock) -> None:
    t = transports.InprocTransport()
    async with t.open_client() as client, trio.open_nursery() as nursery:
        got: list[relayrl.ModelModule | None] = []

        async def ask() -> None:
            got.append(await client.request_model())

        nursery.start_soon(ask)
        await trio.sleep(5)
        assert got == []
        async with t.open_server() as server:
            await server.publish_model(policy().with_version(3))
            await trio.sleep(1)
        assert got and got[0] is not None and got[0].version == 3


async def test_delivery_is_acknowledged_and_flush_waits() -> None:
    t = transports.InprocTransport()
    async with t.open_server() as server, t.open_client() as client:
        trajs = [make_traj(2), make_traj(5)]
        seq = await client.send_trajectories(trajs)
        assert seq == 0
        assert client.statistics().unacked == 1 and client.statistics().unacked_steps == 7
        msg = await server.receive()
        assert isinstance(msg, TrajectoryBatch)
        assert msg.seq == 0 and msg.client_id == client.client_id and list(msg.trajectories) == trajs
        assert msg.steps == 7
        with trio.move_on_after(0.05):
            await client.flush()
            pytest.fail("flush returned before the acknowledgement")
        await server.ack(msg)
        await client.flush()
        s = client.statistics()
        assert (s.batches_sent, s.batches_acked, s.unacked) == (1, 1, 0)


async def test_full_unacked_buffer_blocks_the_sender(autojump_clock: trio.abc.Clock) -> None:
    t = transports.InprocTransport(max_unacked=2, capacity=8)
    async with t.open_server() as server, t.open_client() as client:
        await client.send_trajectories([make_traj()])
        await client.send_trajectories([make_traj()])
        with trio.move_on_after(10) as scope:
            await client.send_trajectories([make_traj()])
        assert scope.cancelled_caught  # blocked: nothing dropped, the caller still owns the batch
        assert client.statistics().batches_sent == 2
        first = await server.receive()
        assert isinstance(first, TrajectoryBatch)
        await server.ack(first)
        with trio.fail_after(1):
            assert await client.send_trajectories([make_traj()]) == 2


async def test_unacked_batches_are_resent_to_a_restarted_server(autojump_clock: trio.abc.Clock) -> None:
    t = transports.InprocTransport(retry_interval=1.0)
    async with t.open_client() as client:
        async with t.open_server() as server:
            await client.send_trajectories([make_traj(4)])
            msg = await server.receive()  # received, but the server "dies" before acknowledging
            assert isinstance(msg, TrajectoryBatch)
        # No server: sending keeps the batch in the buffer.
        await client.send_trajectories([make_traj(2)])
        assert client.statistics().unacked == 2
        async with t.open_server() as server2:
            got: list[TrajectoryBatch] = []
            with trio.fail_after(5):
                while len(got) < 2:
                    m = await server2.receive()
                    assert isinstance(m, TrajectoryBatch)
                    got.append(m)
                    await server2.ack(m)
                await client.flush()
            assert sorted(m.seq for m in got) == [0, 1]
            assert client.statistics().retries >= 1


async def test_resends_are_deduplicated(autojump_clock: trio.abc.Clock) -> None:
    t = transports.InprocTransport(retry_interval=1.0)
    async with t.open_server() as server, t.open_client() as client:
        await client.send_trajectories([make_traj()])
        await trio.sleep(3.5)  # several retry intervals pass while the first copy waits in the inbox
        msg = await server.receive()
        assert isinstance(msg, TrajectoryBatch)
        await server.ack(msg)
        await client.flush()
        with trio.move_on_after(5):
            await server.receive()
            pytest.fail("a duplicate reached the server")
        assert server.statistics().duplicates >= 1
        assert server.statistics().batches_received == 1


async def test_broadcast_is_latest_wins_and_versions_increase() -> None:
    t = transports.InprocTransport()
    async with t.open_server() as server, t.open_client() as a, t.open_client() as b:
        await server.publish_model(policy(0).with_version(0))
        assert (await a.receive_model()).version == 0
        await server.publish_model(policy(1).with_version(1))
        await server.publish_model(policy(2).with_version(2))
        got_a = await a.receive_model()
        got_b = await b.receive_model()
        assert got_a.version == got_b.version == 2 and got_a == policy(2).with_version(2)
        with pytest.raises(relayrl.ModelError, match="increase"):
            await server.publish_model(policy(3).with_version(2))
        with pytest.raises(relayrl.ModelError, match="version"):
            await server.publish_model(policy(3))
        assert server.model_version == 2


async def test_corrupted_bundle_is_rejected_and_next_update_arrives() -> None:
    good = ModelUpdate.from_model(policy().with_version(5))
    bad = ModelUpdate(version=5, bundle=good.bundle[:-3] + b"xyz")
    with pytest.raises(relayrl.IntegrityError):
        bad.model()
    mismatched = ModelUpdate(version=6, bundle=good.bundle)
    with pytest.raises(relayrl.ModelError, match="version"):
        mismatched.model()
    assert good.model() == policy().with_version(5)


async def test_notices_reach_the_server() -> None:
    t = transports.InprocTransport()
    ids = [uuid.uuid4(), uuid.uuid4()]
    async with t.open_server() as server:
        async with t.open_client() as client:
            await client.notify("client_ids", actor_ids=ids)
            await client.notify("scaling_warning", detail="scale_out 1")
            with pytest.raises(ValueError, match="unknown notice kind"):
                await client.notify("reboot")  # type: ignore[arg-type]
            cid = client.client_id
        msgs = [await server.receive() for _ in range(3)]
    assert msgs == [Notice(client_id=cid, kind="client_ids", actor_ids=tuple(ids)),
                    Notice(client_id=cid, kind="scaling_warning", detail="scale_out 1"),
                    Notice(client_id=cid, kind="shutdown")]


async def test_inference_request_and_reply() -> None:
    t = transports.InprocTransport()
    model = policy()
    head = relayrl.make_head(model.metadata)
    async with t.open_server() as server, t.open_client() as client, trio.open_nursery() as nursery:

        async def serve() -> None:
            while True:
                req = await server.receive()
                assert isinstance(req, InferenceRequest)
                if req.obs.shape[1:] != model.obs_shape:
                    await server.reply(req, InferenceReply.failure(req, ValueError("bad obs shape")))
                    continue
                out = model.policy().forward(req.obs)
                act, logp = head.sample(out, np.random.default_rng(0), deterministic=req.deterministic)
                await server.reply(req, InferenceReply(
                    request_id=req.request_id, act=act, logp=logp, value=out.value,
                    model_version=np.zeros(len(act), np.int64)))

        nursery.start_soon(serve)
        ids = [uuid.uuid4(), uuid.uuid4(), uuid.uuid4()]
        obs = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
        reply = await client.infer(ids, obs, deterministic=True)
        assert reply.ok
        act, logp, value, ver = reply.arrays()
        assert logp.shape == (3,) and np.all(logp <= 0)
        expected = np.argmax(model.policy().forward(obs).logits, axis=1)
        assert np.array_equal(act, expected) and value.shape == (3,) and list(ver) == [0, 0, 0]
        bad = await client.infer(ids[:1], np.zeros((1, 5), np.float32))
        assert not bad.ok and "bad obs shape" in (bad.error or "")
        with pytest.raises(relayrl.ModelError, match="bad obs shape"):
            bad.arrays()
        with pytest.raises(ValueError, match="one row per actor"):
            await client.infer(ids, obs[:2])
        nursery.cancel_scope.cancel()


async def test_pending_inference_fails_when_the_server_closes(autojump_clock: trio.abc.Clock) -> None:
    t = transports.InprocTransport()
    async with t.open_client() as client:
        async with trio.open_nursery() as nursery:
            replies: list[InferenceReply] = []

            async def ask() -> None:
                replies.append(await client.infer([uuid.uuid4()], np.zeros((1, 4), np.float32)))

            async with t.open_server() as server:
                nursery.start_soon(ask)
                assert isinstance(await server.receive(), InferenceRequest)
        assert len(replies) == 1 and not replies[0].ok and "closed" in (replies[0].error or "")


async def test_one_server_at_a_time_and_unique_client_ids() -> None:
    t = transports.InprocTransport()
    cid = uuid.uuid4()
    async with t.open_server(), t.open_client(client_id=cid) as client:
        assert client.client_id == cid
        with pytest.raises(RuntimeError, match="already open"):
            async with t.open_server():
                pass
        with pytest.raises(RuntimeError, match="already open"):
            async with t.open_client(client_id=cid):
                pass


async def test_closed_client_and_server_raise() -> None:
    t = transports.InprocTransport()
    async with t.open_server() as server:
        async with t.open_client() as client:
            pass
        with pytest.raises(trio.ClosedResourceError):
            await client.send_trajectories([make_traj()])
        with pytest.raises(trio.ClosedResourceError):
            await client.receive_model()
        with pytest.raises(TypeError):
            async with t.open_client() as c2:
                await c2.send_trajectories(["not a trajectory"])  # type: ignore[list-item]
    with pytest.raises(trio.ClosedResourceError):
        await server.receive()
    with pytest.raises(trio.ClosedResourceError):
        await server.publish_model(policy().with_version(9))


# -- TransportSink -------------------------------------------------------------------------------------


async def test_transport_sink_delivers_everything_and_waits_for_acks() -> None:
    t = transports.InprocTransport()
    trajs = [make_traj(i + 1, reward=float(i)) for i in range(10)]
    async with t.open_server() as server, t.open_client() as client:
        received: list[relayrl.Trajectory] = []

        async def consume() -> None:
            while True:
                m = await server.receive()
                if isinstance(m, TrajectoryBatch):
                    received.extend(m.trajectories)
                    await server.ack(m)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            sink = relayrl.TransportSink(client, capacity=4, max_batch=3)
            await nursery.start(sink.run)
            for tr in trajs:
                await sink.put(tr)
            await sink.aclose()
            assert client.statistics().unacked == 0
            nursery.cancel_scope.cancel()
        assert received == trajs
        st = sink.statistics()
        assert (st.written, st.steps_written, st.dropped, st.queued) == (10, 55, 0, 0)
        with pytest.raises(relayrl.AgentClosedError):
            await sink.put(make_traj())


async def test_transport_sink_drop_policies_count_drops() -> None:
    t = transports.InprocTransport()
    async with t.open_client() as client:
        newest = relayrl.TransportSink(client, capacity=2, overflow="drop_newest")
        a, b, c = make_traj(1), make_traj(2), make_traj(3)
        for tr in (a, b, c):
            await newest.put(tr)
        assert newest.statistics().dropped == 1 and newest.statistics().dropped_steps == 3
        oldest = relayrl.TransportSink(client, capacity=2, overflow="drop_oldest")
        for tr in (a, b, c):
            oldest.put_nowait(tr)
        assert oldest.statistics().dropped == 1 and oldest.statistics().dropped_steps == 1
        blocking = relayrl.TransportSink(client, capacity=1)
        blocking.put_nowait(a)
        with pytest.raises(trio.WouldBlock):
            blocking.put_nowait(b)
        with pytest.raises(TypeError):
            await blocking.put("nope")  # type: ignore[arg-type]
        with pytest.raises(relayrl.ConfigError):
            relayrl.TransportSink(client, overflow="lose")  # type: ignore[arg-type]
        with pytest.raises(relayrl.ConfigError):
            relayrl.TransportSink(client, max_batch=0)
        # Never-started sinks send inline on close (to a server that acknowledges).
        async with t.open_server() as server, trio.open_nursery() as nursery:

            async def consume() -> None:
                while True:
                    m = await server.receive()
                    assert isinstance(m, TrajectoryBatch)
                    await server.ack(m)

            nursery.start_soon(consume)
            await oldest.aclose()
            assert oldest.statistics().written == 2
            nursery.cancel_scope.cancel()


async def test_in_process_updates_reuse_the_published_object_only_after_verification() -> None:
    published = policy(4).with_version(1)
    published.validate()
    t = transports.InprocTransport()
    async with t.open_server() as server, t.open_client() as client:
        await server.publish_model(published)
        assert await client.receive_model() is published  # verified, equal: the loaded policy is reused
    tampered = ModelUpdate(version=1, bundle=published.to_bytes()[:-1] + b"\x00", source=published)
    with pytest.raises(relayrl.IntegrityError):
        tampered.model()
    other = ModelUpdate(version=1, bundle=policy(5).with_version(1).to_bytes(), source=published)
    got = other.model()
    assert got is not published and got == policy(5).with_version(1)


async def test_transport_sink_fails_with_sink_error_when_its_client_closes() -> None:
    t = transports.InprocTransport()
    async with t.open_client() as client:
        sink = relayrl.TransportSink(client)

    async def write_one() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run)
            await sink.put(make_traj())

    with pytest.RaisesGroup(pytest.RaisesExc(relayrl.SinkError, match="went away")):
        await write_one()
    with pytest.raises(relayrl.SinkError):
        await sink.put(make_traj())


class TestInprocConformance(TransportConformance):
    def make_transport(self) -> transports.InprocTransport:
        return transports.InprocTransport(retry_interval=0.05)


async def test_transport_sink_traces_each_batch() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    t = transports.InprocTransport()
    async with t.open_server() as server, t.open_client() as client, trio.open_nursery() as nursery:

        async def consume() -> None:
            while True:
                m = await server.receive()
                assert isinstance(m, TrajectoryBatch)
                await server.ack(m)

        nursery.start_soon(consume)
        sink = relayrl.TransportSink(client, tracer_provider=provider)
        await sink.put(make_traj(2))
        await sink.put(make_traj(3))
        await sink.aclose()  # never started: sent inline as one batch
        nursery.cancel_scope.cancel()
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "send trajectory"]
    assert span.attributes is not None
    attrs = span.attributes
    assert (attrs["rl.batch.size"], attrs["rl.steps"], attrs["rl.outcome"]) == (2, 5, "ok")
    provider.shutdown()
