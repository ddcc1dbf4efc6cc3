"""The built-in in-process transport: bounded trio memory channels inside one trio run.

An :class:`InprocTransport` instance is the meeting point: the server and the clients opened
from the *same instance* are connected. At most one server is open at a time; a server may be
closed and a new one opened (a training server restarting from its checkpoint), and clients
re-send their unacknowledged batches to it.

What travels how:

* trajectory batches, notices and inference requests: into the server's bounded inbox
  (``capacity`` messages; a full inbox blocks senders);
* acknowledgements and inference replies: straight into the client's state (they are tiny and
  bounded by the client's own outstanding batches and requests);
* models: as :meth:`~relayrl.ModelModule.to_bytes` bundles, verified on arrival, through a
  latest-wins slot (a slow client skips intermediate versions). The message also carries the
  published object: when the verified bundle equals it, the client gets that object, whose
  loaded policy is cached, so an update costs no second load and validation.

.. versionadded:: 0.1
"""

from __future__ import annotations

import itertools
import logging
import math
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, ClassVar

import attrs
import numpy as np
import trio

from ._errors import ConfigError, ModelError
from ._model import ModelModule
from ._trajectory import Trajectory
from ._transport_api import (
    NOTICE_KINDS,
    ClientStatistics,
    InferenceReply,
    InferenceRequest,
    ModelUpdate,
    Notice,
    NoticeKind,
    ServerMessage,
    ServerStatistics,
    TrajectoryBatch,
    Transport,
    TransportClient,
    TransportServer,
)

__all__ = ["InprocTransport"]

logger = logging.getLogger("relayrl.transports.inproc")


@contextmanager
def unwrap_single_group() -> Iterator[None]:
    """Re-raise the only exception of a group raised by an internal nursery, unwrapped.

    The nursery is an implementation detail of our context managers: a user's exception from
    the body comes out as itself (with the group as ``__context__``), as trio-websocket does.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def _positive(name: str, value: Any, *, integer: bool) -> Any:
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else isinstance(value, int | float)
    if not ok or value <= 0 or (not integer and not math.isfinite(value)):
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return value


class InprocTransport(Transport):
    """In-process transport: one server and any number of clients in one trio run.

    Args:
        capacity: Messages the server's inbox holds before senders block.
        max_unacked: Trajectory batches a client keeps waiting for acknowledgement before
            :meth:`~relayrl.abc.TransportClient.send_trajectories` blocks.
        retry_interval: Seconds after which an unacknowledged batch is sent again (it is
            also re-sent at once when a new server opens).
        close_grace: Seconds a closing client waits for its last acknowledgements.

    Raises:
        ConfigError: a setting is not a positive number.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "inproc"

    def __init__(self, *, capacity: int = 64, max_unacked: int = 64, retry_interval: float = 1.0,
                 close_grace: float = 5.0) -> None:
        self.capacity: int = _positive("capacity", capacity, integer=True)
        self.max_unacked: int = _positive("max_unacked", max_unacked, integer=True)
        self.retry_interval: float = float(_positive("retry_interval", retry_interval, integer=False))
        self.close_grace: float = float(_positive("close_grace", close_grace, integer=False))
        self._server: _InprocServer | None = None
        self._server_changed = trio.Event()
        self._clients: dict[uuid.UUID, _InprocClient] = {}
        self._latest: ModelUpdate | None = None
        self._model_changed = trio.Event()

    def __repr__(self) -> str:
        return f"InprocTransport(server={'open' if self._server else 'none'}, clients={len(self._clients)})"

    def _set_server(self, server: _InprocServer | None) -> None:
        self._server = server
        self._server_changed.set()
        self._server_changed = trio.Event()

    def _publish(self, update: ModelUpdate) -> None:
        self._latest = update
        self._model_changed.set()
        self._model_changed = trio.Event()

    async def _wait_server(self) -> _InprocServer:
        while True:
            server, event = self._server, self._server_changed
            if server is not None:
                return server
            await event.wait()

    @asynccontextmanager
    async def open_server(self) -> AsyncIterator[TransportServer]:
        """Open the server side (see :meth:`relayrl.abc.Transport.open_server`).

        Raises:
            RuntimeError: a server is already open on this transport.
        """
        if self._server is not None:
            raise RuntimeError("an inproc server is already open on this transport")
        server = _InprocServer(self)
        self._set_server(server)
        try:
            yield server
        finally:
            server._close()
            if self._server is server:
                self._set_server(None)

    @asynccontextmanager
    async def open_client(self, *, client_id: uuid.UUID | None = None) -> AsyncIterator[TransportClient]:
        """Open a client (see :meth:`relayrl.abc.Transport.open_client`).

        Raises:
            RuntimeError: a client with that id is already open.
        """
        cid = client_id if client_id is not None else uuid.uuid4()
        if cid in self._clients:
            raise RuntimeError(f"a client with id {cid} is already open on this transport")
        client = _InprocClient(self, cid)
        self._clients[cid] = client
        try:
            with unwrap_single_group():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client._retransmit_loop)
                    try:
                        yield client
                    finally:
                        with trio.move_on_after(self.close_grace, shield=True):
                            await client._close()
                        nursery.cancel_scope.cancel()
        finally:
            client._closed = True
            client._wake()
            self._clients.pop(cid, None)


@attrs.define
class _Outgoing:
    batch: TrajectoryBatch
    sent_to: object | None = None
    sent_at: float = -math.inf


class _InprocClient(TransportClient):
    def __init__(self, transport: InprocTransport, client_id: uuid.UUID) -> None:
        self._t = transport
        self._id = client_id
        self._seq = itertools.count()
        self._req = itertools.count()
        self._outbox: dict[int, _Outgoing] = {}
        self._changed = trio.Event()
        self._pending: dict[int, list[Any]] = {}  # request id -> [Event, reply | None]
        self._seen_version = -1
        self._closed = False
        self._sent = self._acked = self._retries = self._models = 0

    @property
    def client_id(self) -> uuid.UUID:
        return self._id

    def __repr__(self) -> str:
        return f"<inproc client {self._id} unacked={len(self._outbox)}>"

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the transport client is closed")

    # -- models -------------------------------------------------------------------------------------

    def _take(self, update: ModelUpdate) -> ModelModule:
        self._seen_version = max(self._seen_version, update.version)
        self._models += 1
        return update.model(validate=False)

    async def request_model(self) -> ModelModule | None:
        self._check_open()
        server = await self._t._wait_server()
        self._check_open()
        update = server._latest
        server._handshakes += 1
        await trio.lowlevel.checkpoint()
        return None if update is None else self._take(update)

    async def receive_model(self) -> ModelModule:
        while True:
            self._check_open()
            latest, model_event, closed_event = self._t._latest, self._t._model_changed, self._changed
            if latest is not None and latest.version > self._seen_version:
                await trio.lowlevel.checkpoint()
                return self._take(latest)
            async with trio.open_nursery() as nursery:
                # Wake on a new model or on close.
                async def wait(event: trio.Event) -> None:
                    await event.wait()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(wait, model_event)
                nursery.start_soon(wait, closed_event)

    # -- trajectories -------------------------------------------------------------------------------

    async def send_trajectories(self, trajectories: Sequence[Trajectory]) -> int:
        trajs = tuple(trajectories)
        for t in trajs:
            if not isinstance(t, Trajectory):
                raise TypeError(f"expected relayrl.Trajectory objects, got {type(t).__name__}")
        while True:
            self._check_open()
            if len(self._outbox) < self._t.max_unacked:
                break
            await self._changed.wait()
        seq = next(self._seq)
        out = _Outgoing(TrajectoryBatch(client_id=self._id, seq=seq, trajectories=trajs))
        self._outbox[seq] = out
        self._sent += 1
        server = self._t._server
        if server is not None:
            await self._deliver(server, out)
        else:
            await trio.lowlevel.checkpoint()
        return seq

    async def _deliver(self, server: _InprocServer, out: _Outgoing) -> None:
        if out.sent_to is not None:
            self._retries += 1
        out.sent_to, out.sent_at = server, trio.current_time()
        try:
            await server._deliver_batch(out.batch)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            out.sent_to = None  # that server went away; the batch waits for the next one

    def _on_ack(self, seq: int) -> None:
        if self._outbox.pop(seq, None) is not None:
            self._acked += 1
            self._wake()

    async def flush(self) -> None:
        while self._outbox:
            self._check_open()
            await self._changed.wait()
        await trio.lowlevel.checkpoint()

    async def _retransmit_loop(self) -> None:
        while True:
            server_event = self._t._server_changed
            with trio.move_on_after(self._t.retry_interval):
                await server_event.wait()
            server = self._t._server
            if server is None:
                continue
            now = trio.current_time()
            for out in list(self._outbox.values()):
                if out.batch.seq in self._outbox and (out.sent_to is not server
                                                      or now - out.sent_at >= self._t.retry_interval):
                    await self._deliver(server, out)

    # -- notices and inference ------------------------------------------------------------------------

    async def notify(self, kind: NoticeKind, *, actor_ids: Sequence[uuid.UUID] = (), detail: str = "") -> None:
        if kind not in NOTICE_KINDS:
            raise ValueError(f"unknown notice kind {kind!r}; expected one of {', '.join(NOTICE_KINDS)}")
        self._check_open()
        notice = Notice(client_id=self._id, kind=kind, actor_ids=tuple(actor_ids), detail=detail)
        server = self._t._server
        if server is None:
            # Notices are informational: with no server to hear them they are dropped (logged).
            logger.debug("no inproc server: dropped %s notice from %s", kind, self._id)
            await trio.lowlevel.checkpoint()
            return
        try:
            await server._deliver(notice)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            logger.debug("inproc server closed: dropped %s notice from %s", kind, self._id)

    async def infer(self, actor_ids: Sequence[uuid.UUID], obs: Any, *, mask: Any = None,
                    deterministic: bool = False) -> InferenceReply:
        self._check_open()
        ids = tuple(actor_ids)
        obs_arr = np.asarray(obs)
        if obs_arr.ndim == 0 or len(obs_arr) != len(ids):
            raise ValueError(f"obs must have one row per actor id ({len(ids)}), got shape {obs_arr.shape}")
        rid = next(self._req)
        slot: list[Any] = [trio.Event(), None]
        self._pending[rid] = slot
        request = InferenceRequest(client_id=self._id, request_id=rid, actor_ids=ids, obs=obs_arr,
                                   mask=None if mask is None else np.asarray(mask, dtype=bool),
                                   deterministic=deterministic)
        try:
            while slot[1] is None:
                server = await self._t._wait_server()
                # Register before delivering: a server that closes while the request is in flight
                # (even before this task runs again) must find us and fail the request.
                server._inference_waiters.add(self._id)
                try:
                    await server._deliver(request)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    continue
                await slot[0].wait()
        finally:
            del self._pending[rid]
        reply: InferenceReply = slot[1]
        return reply

    def _on_reply(self, reply: InferenceReply) -> None:
        slot = self._pending.get(reply.request_id)
        if slot is not None and slot[1] is None:
            slot[1] = reply
            slot[0].set()

    def _fail_pending(self, reason: str) -> None:
        for rid, slot in self._pending.items():
            if slot[1] is None:
                slot[1] = InferenceReply(request_id=rid, error=reason)
                slot[0].set()

    # -- life cycle -----------------------------------------------------------------------------------

    async def _close(self) -> None:
        # Last acknowledgements first (only useful while a server is there), then say goodbye.
        if self._outbox and self._t._server is not None:
            await self.flush()
        if self._outbox:
            steps = sum(o.batch.steps for o in self._outbox.values())
            logger.warning("inproc client %s closed with %d unacknowledged batches (%d steps)",
                           self._id, len(self._outbox), steps)
        await self.notify("shutdown")
        self._closed = True
        self._fail_pending("the transport client is closed")
        self._wake()

    def statistics(self) -> ClientStatistics:
        return ClientStatistics(
            batches_sent=self._sent, batches_acked=self._acked, retries=self._retries,
            unacked=len(self._outbox), unacked_steps=sum(o.batch.steps for o in self._outbox.values()),
            models_received=self._models, model_version=self._seen_version,
        )


class _InprocServer(TransportServer):
    def __init__(self, transport: InprocTransport) -> None:
        self._t = transport
        self._send, self._recv = trio.open_memory_channel[ServerMessage](transport.capacity)
        self._latest: ModelUpdate | None = None
        self._acked_below: dict[uuid.UUID, int] = {}
        self._acked_above: dict[uuid.UUID, set[int]] = {}
        self._inflight: set[tuple[uuid.UUID, int]] = set()
        self._inference_waiters: set[uuid.UUID] = set()
        self._received = self._duplicates = self._handshakes = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"<inproc server version={self.model_version} queued={self._recv.statistics().current_buffer_used}>"

    def _is_acked(self, client_id: uuid.UUID, seq: int) -> bool:
        return seq < self._acked_below.get(client_id, 0) or seq in self._acked_above.get(client_id, ())

    async def _deliver_batch(self, batch: TrajectoryBatch) -> None:
        key = (batch.client_id, batch.seq)
        if key in self._inflight or self._is_acked(*key):
            self._duplicates += 1
            client = self._t._clients.get(batch.client_id)
            if client is not None and self._is_acked(*key):
                client._on_ack(batch.seq)  # the client missed the acknowledgement
            await trio.lowlevel.checkpoint()
            return
        self._inflight.add(key)
        try:
            await self._send.send(batch)
        except BaseException:
            self._inflight.discard(key)
            raise

    async def _deliver(self, message: Notice | InferenceRequest) -> None:
        await self._send.send(message)

    async def receive(self) -> ServerMessage:
        if self._closed:
            raise trio.ClosedResourceError("the transport server is closed")
        msg = await self._recv.receive()
        if isinstance(msg, TrajectoryBatch):
            self._received += 1
        return msg

    async def ack(self, batch: TrajectoryBatch) -> None:
        cid, seq = batch.client_id, batch.seq
        self._inflight.discard((cid, seq))
        if not self._is_acked(cid, seq):
            above = self._acked_above.setdefault(cid, set())
            above.add(seq)
            below = self._acked_below.get(cid, 0)
            while below in above:
                above.discard(below)
                below += 1
            self._acked_below[cid] = below
        client = self._t._clients.get(cid)
        if client is not None:
            client._on_ack(seq)
        await trio.lowlevel.checkpoint()

    @property
    def model_version(self) -> int:
        return -1 if self._latest is None else self._latest.version

    async def publish_model(self, model: ModelModule) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the transport server is closed")
        update = ModelUpdate.from_model(model, in_process=True)
        if update.version <= self.model_version:
            raise ModelError(f"model versions must increase: got {update.version} after {self.model_version}")
        self._latest = update
        self._t._publish(update)
        await trio.lowlevel.checkpoint()

    async def reply(self, request: InferenceRequest, reply: InferenceReply) -> None:
        if reply.request_id != request.request_id:
            raise ValueError(f"reply {reply.request_id} does not answer request {request.request_id}")
        client = self._t._clients.get(request.client_id)
        if client is not None:
            client._on_reply(reply)
        await trio.lowlevel.checkpoint()

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            clients=len(self._t._clients), batches_received=self._received, duplicates=self._duplicates,
            queued=self._recv.statistics().current_buffer_used, model_version=self.model_version,
            handshakes=self._handshakes,
        )

    def _close(self) -> None:
        self._closed = True
        self._recv.close()
        self._send.close()
        # Queued batches were never acknowledged: their clients still hold them and re-send them.
        for cid in self._inference_waiters:
            client = self._t._clients.get(cid)
            if client is not None:
                client._fail_pending("the inference server closed before replying")

