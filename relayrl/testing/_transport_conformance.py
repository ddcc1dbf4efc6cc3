"""The transport conformance kit: one test class any transport plugin subclasses.

::

    # tests/test_zmq_conformance.py in relayrl-zmq
    from relayrl.testing import TransportConformance
    from relayrl_zmq import ZmqTransport

    class TestZmqConformance(TransportConformance):
        def make_transport(self):
            return ZmqTransport(address="tcp://127.0.0.1:0", retry_interval=0.05)

The tests run real servers and clients of the transport (pytest-trio, ``trio_mode``); every wait
is bounded by :attr:`TransportConformance.deadline` so a broken transport fails instead of
hanging. ``make_transport`` must return a fresh transport whose clients reach its server and
that re-sends unacknowledged batches within a fraction of a second.

.. versionadded:: 0.1
"""

from __future__ import annotations

import abc
import uuid
from typing import ClassVar

import numpy as np
import pytest
import trio

from .._errors import ModelError
from .._model import ModelModule
from .._numpy_backend import mlp_policy
from .._spaces import Discrete
from .._trajectory import Trajectory
from .._transport_api import (
    InferenceReply,
    InferenceRequest,
    Notice,
    TrajectoryBatch,
    Transport,
    TransportServer,
)

__all__ = ["TransportConformance"]


def _traj(n: int, reward: float = 1.0) -> Trajectory:
    return Trajectory(
        obs=np.arange(n * 4, dtype=np.float32).reshape(n, 4), act=np.zeros(n, np.int64),
        reward=np.full(n, reward, np.float32), done=np.eye(1, n, n - 1, dtype=bool)[0],
        logp=np.full(n, -0.5, np.float32), value=np.full(n, np.nan, np.float32),
        model_version=np.zeros(n, np.int64), actor_id=uuid.uuid4(), episode=1, env_id="0")


def _model(seed: int, version: int) -> ModelModule:
    return mlp_policy(4, Discrete(2), hidden=(8,), seed=seed).with_version(version)


async def _next_batch(server: TransportServer) -> TrajectoryBatch:
    while True:
        msg = await server.receive()
        if isinstance(msg, TrajectoryBatch):
            return msg


class TransportConformance(abc.ABC):
    """Subclass in a test module and implement :meth:`make_transport`.

    .. versionadded:: 0.1
    """

    #: Upper bound (seconds) on any single wait in these tests.
    deadline: ClassVar[float] = 20.0

    @abc.abstractmethod
    def make_transport(self) -> Transport:
        """A fresh transport (its own address); unacknowledged batches re-sent within ~0.2 s."""

    async def test_handshake_answers_the_last_published_model(self) -> None:
        t = self.make_transport()
        with trio.fail_after(self.deadline):
            async with t.open_server() as server, t.open_client() as client:
                assert await client.request_model() is None
                await server.publish_model(_model(1, 0))
                await server.publish_model(_model(2, 1))
                got = await client.request_model()
                assert got is not None and got.version == 1 and got == _model(2, 1)
                assert server.model_version == 1

    async def test_batches_arrive_intact_and_are_acknowledged(self) -> None:
        t = self.make_transport()
        trajs = [_traj(3, 0.5), _traj(1, 2.0)]
        with trio.fail_after(self.deadline):
            async with t.open_server() as server, t.open_client() as client:
                seq = await client.send_trajectories(trajs)
                batch = await _next_batch(server)
                assert batch.client_id == client.client_id and batch.seq == seq
                assert list(batch.trajectories) == trajs
                await server.ack(batch)
                await client.flush()
                stats = client.statistics()
                assert stats.unacked == 0 and stats.batches_acked >= 1

    async def test_sequence_numbers_increase(self) -> None:
        t = self.make_transport()
        with trio.fail_after(self.deadline):
            async with t.open_server() as server, t.open_client() as client:
                seqs = [await client.send_trajectories([_traj(1)]) for _ in range(5)]
                assert seqs == sorted(seqs) and len(set(seqs)) == 5
                got: set[int] = set()
                while len(got) < 5:
                    batch = await _next_batch(server)
                    got.add(batch.seq)
                    await server.ack(batch)
                await client.flush()
                assert got == set(seqs)

    async def test_unacknowledged_batches_reach_a_restarted_server(self) -> None:
        t = self.make_transport()
        with trio.fail_after(self.deadline):
            async with t.open_client() as client:
                async with t.open_server() as server:
                    await client.send_trajectories([_traj(2)])
                    await _next_batch(server)  # received, never acknowledged: the server "crashes"
                async with t.open_server() as server:
                    batch = await _next_batch(server)
                    assert len(batch.trajectories) == 1 and len(batch.trajectories[0]) == 2
                    await server.ack(batch)
                    await client.flush()
                    assert client.statistics().retries >= 1

    async def test_broadcast_is_latest_wins_and_monotonic(self) -> None:
        t = self.make_transport()
        with trio.fail_after(self.deadline):
            async with t.open_server() as server, t.open_client() as a, t.open_client() as b:
                await server.publish_model(_model(0, 0))
                assert (await a.receive_model()).version == 0
                for v in (1, 2, 3):
                    await server.publish_model(_model(v, v))
                while True:  # a client may see intermediate versions, never an older one
                    got = await a.receive_model()
                    if got.version == 3:
                        break
                assert got == _model(3, 3)
                first_b = await b.receive_model()
                assert first_b.version is not None and first_b.version >= 0
                with pytest.raises(ModelError):
                    await server.publish_model(_model(9, 3))
                with pytest.raises(ModelError):
                    await server.publish_model(mlp_policy(4, Discrete(2), hidden=(8,)))

    async def test_notices_arrive_in_order(self) -> None:
        t = self.make_transport()
        ids = (uuid.uuid4(), uuid.uuid4())
        with trio.fail_after(self.deadline):
            async with t.open_server() as server:
                async with t.open_client() as client:
                    await client.notify("client_ids", actor_ids=ids)
                    await client.notify("scaling_complete", detail="scale_out 1")
                    cid = client.client_id
                got: list[Notice] = []
                while len(got) < 3:
                    msg = await server.receive()
                    if isinstance(msg, Notice):
                        got.append(msg)
        assert got == [Notice(client_id=cid, kind="client_ids", actor_ids=ids),
                       Notice(client_id=cid, kind="scaling_complete", detail="scale_out 1"),
                       Notice(client_id=cid, kind="shutdown")]

    async def test_inference_request_and_reply(self) -> None:
        t = self.make_transport()
        ids = [uuid.uuid4(), uuid.uuid4()]
        obs = np.ones((2, 4), np.float32)
        with trio.fail_after(self.deadline):
            async with t.open_server() as server, t.open_client() as client, trio.open_nursery() as nursery:

                async def serve() -> None:
                    while True:
                        req = await server.receive()
                        if isinstance(req, InferenceRequest):
                            assert req.actor_ids == tuple(ids) and np.array_equal(req.obs, obs)
                            await server.reply(req, InferenceReply(
                                request_id=req.request_id, act=np.array([1, 0]),
                                logp=np.array([-0.1, -0.2], np.float32), model_version=np.array([4, 4])))

                nursery.start_soon(serve)
                reply = await client.infer(ids, obs)
                act, logp, value, version = reply.arrays()
                assert reply.ok and list(act) == [1, 0] and list(version) == [4, 4] and np.isnan(value).all()
                assert np.allclose(logp, [-0.1, -0.2])
                nursery.cancel_scope.cancel()

    async def test_closed_client_refuses_work(self) -> None:
        t = self.make_transport()
        with trio.fail_after(self.deadline):
            async with t.open_server(), t.open_client() as client:
                pass
            with pytest.raises(trio.ClosedResourceError):
                await client.send_trajectories([_traj(1)])
