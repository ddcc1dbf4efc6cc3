"""Training-data mode: an agent that ships its trajectories to a server and takes its models.

Two pieces connect an agent to a :class:`~relayrl.abc.TransportClient`:

* :class:`TransportSink` -- a :class:`~relayrl.sinks.TrajectorySink` that sends emitted
  trajectories to the server in batches (acknowledged; see the transport contract);
* :func:`connect_agent` -- a service task that performs the model handshake, then applies
  every model update the server broadcasts with ``agent.update_model``.

Together::

    async with transport.open_client() as client:
        async with relayrl.open_agent(sinks=[relayrl.TransportSink(client)]) as agent:
            ids = await agent.new_actors(8)
            async with trio.open_nursery() as nursery:
                await nursery.start(relayrl.connect_agent, agent, client)
                ...  # request_action / flag_last_action as usual
                nursery.cancel_scope.cancel()

.. versionadded:: 0.1
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ._errors import AgentClosedError, RelayRLError, SinkError
from ._model import ModelModule
from ._sinks import Overflow, SinkStatistics, TrajectorySink, _check_capacity
from ._telemetry import ATTR_BATCH_SIZE, ATTR_STEPS, SPAN_SEND_TRAJECTORY, Telemetry
from ._trajectory import Trajectory
from ._transport_api import TransportClient

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["TransportSink", "connect_agent"]

logger = logging.getLogger("relayrl.transports")


class TransportSink(TrajectorySink):
    """Sends trajectories to a server through a transport client.

    The writer task takes everything queued at once (up to ``max_batch`` trajectories) and
    sends it as one batch; the client keeps it until the server acknowledges it.
    :meth:`aclose` sends what is queued, then waits for every acknowledgement. The client must
    stay open until :meth:`aclose` returns (open the client outside the agent).

    Args:
        client: An open transport client.
        capacity: Trajectories queued between the agent and the writer.
        overflow: ``"block"`` (default: nothing is lost), ``"drop_oldest"`` or ``"drop_newest"``.
        max_batch: The most trajectories per batch.
        tracer_provider: OpenTelemetry tracer provider for the ``send trajectory`` span of each
            batch (attributes ``rl.batch.size``, ``rl.steps``, ``rl.outcome``); default: the
            global one (no spans without an SDK).

    Raises:
        ConfigError: a bad ``capacity``, ``overflow`` or ``max_batch``.

    .. versionadded:: 0.1
    """

    def __init__(self, client: TransportClient, *, capacity: int = 256, overflow: Overflow = "block",
                 max_batch: int = 256, tracer_provider: TracerProvider | None = None) -> None:
        super().__init__(capacity=capacity, overflow=overflow)
        self._client = client
        self._telemetry = Telemetry.create(tracer_provider)
        self._max_batch = _check_capacity(max_batch, "max_batch")
        self._send, self._recv = trio.open_memory_channel[Trajectory](self.capacity)
        self._closed = False
        self._started = False
        self._done = trio.Event()
        self._error: BaseException | None = None
        self._written = self._steps = self._dropped = self._dropped_steps = 0

    def __repr__(self) -> str:
        return f"TransportSink(client={self._client.client_id}, written={self._written})"

    @property
    def client(self) -> TransportClient:
        """The transport client it sends through."""
        return self._client

    def _check(self, traj: object) -> Trajectory:
        if not isinstance(traj, Trajectory):
            raise TypeError(f"expected a relayrl.Trajectory, got {type(traj).__name__}")
        if self._error is not None:
            raise SinkError(f"the transport sink failed: {self._error}") from self._error
        if self._closed:
            raise AgentClosedError("the transport sink is closed")
        return traj

    def _drop(self, traj: Trajectory) -> None:
        self._dropped += 1
        self._dropped_steps += len(traj)

    async def put(self, traj: Trajectory) -> None:
        traj = self._check(traj)
        if self.overflow == "block":
            await self._send.send(traj)
            return
        await trio.lowlevel.checkpoint()
        self.put_nowait(traj)

    def put_nowait(self, traj: Trajectory) -> None:
        traj = self._check(traj)
        try:
            self._send.send_nowait(traj)
        except trio.WouldBlock:
            if self.overflow == "block":
                raise
            if self.overflow == "drop_newest":
                self._drop(traj)
                return
            self._drop(self._recv.receive_nowait())
            self._send.send_nowait(traj)

    async def _send_batch(self, batch: list[Trajectory]) -> None:
        steps = sum(len(t) for t in batch)
        span = self._telemetry.start_span(SPAN_SEND_TRAJECTORY, {ATTR_BATCH_SIZE: len(batch), ATTR_STEPS: steps})
        try:
            await self._client.send_trajectories(batch)
        except BaseException as exc:
            self._telemetry.end_span(span, exc)
            raise
        self._telemetry.end_span(span)
        self._written += len(batch)
        self._steps += steps

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._started:
            raise RuntimeError("the transport sink was already started")
        self._started = True
        task_status.started()
        try:
            async for first in self._recv:
                batch = [first]
                while len(batch) < self._max_batch:
                    try:
                        batch.append(self._recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                await self._send_batch(batch)
            await self._client.flush()
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            # The sink contract: a failed writer raises SinkError (and put raises it from then on).
            self._error = SinkError(f"the transport client went away: {exc or type(exc).__name__}")
            raise self._error from exc
        except Exception as exc:
            self._error = exc
            raise
        finally:
            self._done.set()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._send.close()
        if self._started:
            await self._done.wait()
            return
        # Never started: send what is queued inline.
        batch = []
        while True:
            try:
                batch.append(self._recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        if batch:
            await self._send_batch(batch)
        await self._client.flush()

    def statistics(self) -> SinkStatistics:
        return SinkStatistics(written=self._written, steps_written=self._steps, dropped=self._dropped,
                              dropped_steps=self._dropped_steps,
                              queued=self._recv.statistics().current_buffer_used,
                              capacity=self.capacity, overflow=self.overflow)


class _UpdatableAgent(Protocol):
    @property
    def actor_ids(self) -> Any: ...

    async def update_model(self, model: ModelModule, ids: Any = None) -> Any: ...


async def connect_agent(agent: _UpdatableAgent, client: TransportClient, *,
                        task_status: trio.TaskStatus[ModelModule | None] = trio.TASK_STATUS_IGNORED) -> None:
    """Keep an agent's models in sync with a server (a service: start it with ``nursery.start``).

    It performs the model handshake (installing the server's current model, if it has one,
    with ``agent.update_model``), announces the agent's actor ids, reports ``started`` with the
    model it installed (or None), then applies every model update the server broadcasts until
    cancelled. An update that fails to arrive intact or to validate is logged and skipped;
    the agent keeps serving the model it had.

    Raises:
        ModelError: the handshake model is rejected by the agent (nothing was started).

    .. versionadded:: 0.1
    """
    model = await client.request_model()
    if model is not None:
        await agent.update_model(model)
    await client.notify("client_ids", actor_ids=list(agent.actor_ids))
    task_status.started(model)
    while True:
        try:
            update = await client.receive_model()
            await agent.update_model(update)
        except (trio.ClosedResourceError, AgentClosedError):
            return
        except RelayRLError as exc:
            logger.warning("model update rejected: %s", exc)
