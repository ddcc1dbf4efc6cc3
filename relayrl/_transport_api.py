"""The transport contract: how agents and servers talk, independent of the wire.

A :class:`Transport` links *clients* (agents, one per process or per agent) to one *server* (a
training server or a remote inference server). Each side is opened as an async context manager
that owns its background tasks::

    transport = relayrl.transports.get("inproc")()
    async with transport.open_server() as server, transport.open_client() as client:
        ...

The messages, every transport carries the same ones:

* **Model handshake** -- a client without a model asks (:meth:`TransportClient.request_model`),
  the server answers with the model it published last (a :class:`~relayrl.ModelModule` bundle
  made by :meth:`~relayrl.ModelModule.to_bytes`, integrity-checked on arrival) or "none yet".
* **Trajectory delivery with acknowledgement** -- :meth:`TransportClient.send_trajectories`
  numbers each batch per client (``seq``); the server acknowledges each batch once it has taken
  responsibility for it (:meth:`TransportServer.ack`). Unacknowledged batches stay in a bounded
  client-side buffer and are re-sent after ``retry_interval`` (to the same server, or to the
  next one after a restart); the server drops duplicates it has already acknowledged. A full
  buffer blocks the sender: nothing is lost silently.
* **Model-update broadcast** -- :meth:`TransportServer.publish_model` sends a versioned bundle
  to every client; versions are strictly increasing (a lower or equal version is refused).
  Clients see only the newest version (a slow client skips intermediate ones) through
  :meth:`TransportClient.receive_model`.
* **Notices** -- client ids, router scaling (warning/complete) and shutdown
  (:meth:`TransportClient.notify`, delivered to the server as :class:`Notice`).
* **Inference request and reply** -- :meth:`TransportClient.infer` sends observations for some
  actor ids; a server answers with :meth:`TransportServer.reply` (used by a remote inference
  server).

Cancellation: every ``async`` method is a checkpoint and may be cancelled; a cancelled
:meth:`~TransportClient.send_trajectories` either buffered the batch (it will be delivered) or
did not (the caller still owns it). No method takes a ``timeout``: use :func:`trio.fail_after`.

Implementations register in the ``relayrl.transports`` entry-point group; the built-in
``inproc`` transport (:class:`relayrl.transports.InprocTransport`) implements everything over
bounded trio memory channels inside one trio run.

.. versionadded:: 0.1
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Final, Literal

import attrs
import numpy as np
import numpy.typing as npt

from ._errors import ModelError
from ._model import ModelModule
from ._trajectory import Trajectory

__all__ = [
    "NOTICE_KINDS",
    "Ack",
    "ClientStatistics",
    "InferenceReply",
    "InferenceRequest",
    "ModelUpdate",
    "Notice",
    "NoticeKind",
    "ServerMessage",
    "ServerStatistics",
    "TrajectoryBatch",
    "Transport",
    "TransportClient",
    "TransportServer",
]

Array = npt.NDArray[Any]

NoticeKind = Literal["client_ids", "scaling_warning", "scaling_complete", "shutdown"]
#: The notice kinds a client may send.
NOTICE_KINDS: Final = ("client_ids", "scaling_warning", "scaling_complete", "shutdown")


@attrs.frozen(kw_only=True, eq=False)
class TrajectoryBatch:
    """Trajectories sent by one client in one message (acknowledged as a whole).

    .. versionadded:: 0.1
    """

    #: The sending client.
    client_id: uuid.UUID
    #: Per-client sequence number, from 0, increasing by one per batch.
    seq: int
    #: The trajectories, in emission order.
    trajectories: tuple[Trajectory, ...]

    @property
    def steps(self) -> int:
        """Total number of steps in the batch."""
        return sum(len(t) for t in self.trajectories)


@attrs.frozen(kw_only=True)
class Ack:
    """The server's acknowledgement of one :class:`TrajectoryBatch`.

    .. versionadded:: 0.1
    """

    client_id: uuid.UUID
    seq: int


@attrs.frozen(kw_only=True)
class ModelUpdate:
    """A versioned model bundle as it travels (handshake answer or broadcast).

    .. versionadded:: 0.1
    """

    #: The version the server stamped on the model (0 for the first, then +1 per update).
    version: int
    #: :meth:`ModelModule.to_bytes` of the model (integrity-protected by its sha256).
    bundle: bytes
    #: In-process transports only (never serialised): the published object itself. When the
    #: bundle decodes to a module equal to it, :meth:`model` returns this object, whose loaded
    #: policy is already cached, instead of a copy that would load and validate again.
    source: ModelModule | None = attrs.field(default=None, eq=False, repr=False)

    @classmethod
    def from_model(cls, model: ModelModule, *, in_process: bool = False) -> ModelUpdate:
        """Pack a model that carries a version (``in_process`` keeps a reference to it as :attr:`source`).

        Raises:
            ModelError: the model has no version.
        """
        if model.version is None:
            raise ModelError("a published model needs a version (use ModelModule.with_version)")
        return cls(version=model.version, bundle=model.to_bytes(), source=model if in_process else None)

    def model(self, *, validate: bool = False) -> ModelModule:
        """Unpack the bundle, verifying its checksum (and the stamped version).

        Raises:
            IntegrityError: the bundle is corrupted.
            ModelError: it describes an invalid model, or its version differs from :attr:`version`.
        """
        module = ModelModule.from_bytes(self.bundle, validate=False)
        if module.version != self.version:
            raise ModelError(f"model bundle carries version {module.version}, message says {self.version}")
        if self.source is not None and module == self.source:
            module = self.source
        if validate:
            module.validate()
        return module


@attrs.frozen(kw_only=True)
class Notice:
    """A client notice: its actor ids, router scaling, or shutdown.

    .. versionadded:: 0.1
    """

    client_id: uuid.UUID
    #: One of :data:`NOTICE_KINDS`.
    kind: NoticeKind
    #: Actor ids concerned (``client_ids``: every actor the client has).
    actor_ids: tuple[uuid.UUID, ...] = ()
    #: Free-form detail (for example ``"scale_out 2"``).
    detail: str = ""


@attrs.frozen(kw_only=True, eq=False)
class InferenceRequest:
    """Observations for which a client wants actions from a remote inference server.

    .. versionadded:: 0.1
    """

    client_id: uuid.UUID
    #: Per-client request number (replies are matched on it).
    request_id: int
    actor_ids: tuple[uuid.UUID, ...]
    #: ``[len(actor_ids), *obs_shape]``.
    obs: Array
    #: ``[len(actor_ids), mask_dim]`` bool, or None.
    mask: Array | None = None
    deterministic: bool = False


@attrs.frozen(kw_only=True, eq=False)
class InferenceReply:
    """Actions for an :class:`InferenceRequest` (columnar), or the error that prevented them.

    .. versionadded:: 0.1
    """

    request_id: int
    act: Array | None = None
    logp: Array | None = None
    value: Array | None = None
    model_version: Array | None = None
    #: ``"ExceptionType: message"`` when the server could not serve the request.
    error: str | None = None

    @classmethod
    def failure(cls, request: InferenceRequest, exc: BaseException) -> InferenceReply:
        """A reply that reports ``exc`` to the client instead of actions."""
        return cls(request_id=request.request_id, error=f"{type(exc).__name__}: {exc}")

    def __attrs_post_init__(self) -> None:
        if self.error is None and self.act is None:
            raise ValueError("an InferenceReply carries either actions or an error")

    @property
    def ok(self) -> bool:
        """Whether it carries actions."""
        return self.error is None

    def arrays(self) -> tuple[Array, Array, Array, Array]:
        """``(act, logp, value, model_version)``; NaN values where the server sent none."""
        if self.act is None:
            raise ModelError(f"inference failed on the server: {self.error}")
        n = len(self.act)
        nan = np.full(n, np.nan, np.float32)
        return (self.act,
                self.logp if self.logp is not None else nan,
                self.value if self.value is not None else nan,
                self.model_version if self.model_version is not None else np.full(n, -1, np.int64))


#: What :meth:`TransportServer.receive` returns.
ServerMessage = TrajectoryBatch | Notice | InferenceRequest


@attrs.frozen(kw_only=True)
class ClientStatistics:
    """Counters of one transport client.

    .. versionadded:: 0.1
    """

    #: Batches handed to :meth:`TransportClient.send_trajectories`.
    batches_sent: int
    #: Batches the server acknowledged.
    batches_acked: int
    #: Re-sends of unacknowledged batches.
    retries: int
    #: Batches waiting for their acknowledgement (bounded by ``max_unacked``).
    unacked: int
    #: Steps in those batches.
    unacked_steps: int
    #: Model updates received (handshakes included).
    models_received: int
    #: Newest model version received, -1 if none.
    model_version: int


@attrs.frozen(kw_only=True)
class ServerStatistics:
    """Counters of one transport server.

    .. versionadded:: 0.1
    """

    #: Connected clients.
    clients: int
    #: Trajectory batches received (duplicates excluded).
    batches_received: int
    #: Duplicate batches dropped (re-sends of batches already acknowledged).
    duplicates: int
    #: Messages queued for :meth:`TransportServer.receive`.
    queued: int
    #: Newest published model version, -1 if none.
    model_version: int
    #: Handshakes answered.
    handshakes: int


class TransportClient(abc.ABC):
    """The client side of a transport (one per agent), opened by :meth:`Transport.open_client`.

    .. versionadded:: 0.1
    """

    @property
    @abc.abstractmethod
    def client_id(self) -> uuid.UUID:
        """This client's id (unique per client; the server keys acknowledgements by it)."""

    @abc.abstractmethod
    async def request_model(self) -> ModelModule | None:
        """Model handshake: the server's current model (with its version), or None if it has none yet.

        The bundle's integrity is verified; the model is not validated (the agent validates it
        when it installs it). Waits while no server is reachable.

        Raises:
            IntegrityError: the bundle arrived corrupted.
        """

    @abc.abstractmethod
    async def receive_model(self) -> ModelModule:
        """Wait for a model newer than any this client has received (latest wins), and return it.

        Raises:
            IntegrityError: the bundle arrived corrupted (the next update is still received).
            trio.ClosedResourceError: the client was closed.
        """

    @abc.abstractmethod
    async def send_trajectories(self, trajectories: Sequence[Trajectory]) -> int:
        """Queue one batch for delivery and return its sequence number.

        Returns as soon as the batch is in the bounded unacknowledged buffer (it has usually
        also been handed to the server); blocks while that buffer is full. Use :meth:`flush`
        to wait for the acknowledgements.

        Raises:
            trio.ClosedResourceError: the client was closed.
        """

    @abc.abstractmethod
    async def flush(self) -> None:
        """Wait until every batch sent so far has been acknowledged (re-sending as needed)."""

    @abc.abstractmethod
    async def notify(self, kind: NoticeKind, *, actor_ids: Sequence[uuid.UUID] = (), detail: str = "") -> None:
        """Send a :class:`Notice` to the server (client ids, scaling, shutdown).

        Raises:
            ValueError: ``kind`` is not one of :data:`NOTICE_KINDS`.
        """

    @abc.abstractmethod
    async def infer(self, actor_ids: Sequence[uuid.UUID], obs: Array, *, mask: Array | None = None,
                    deterministic: bool = False) -> InferenceReply:
        """Ask the server for actions; returns its reply (which may carry an error instead)."""

    @abc.abstractmethod
    def statistics(self) -> ClientStatistics:
        """A snapshot of this client's counters."""


class TransportServer(abc.ABC):
    """The server side of a transport, opened by :meth:`Transport.open_server`.

    The server answers model handshakes by itself with the last published model; everything
    else reaches the owner through :meth:`receive`.

    .. versionadded:: 0.1
    """

    @abc.abstractmethod
    async def receive(self) -> ServerMessage:
        """The next message from any client (trajectory batch, notice or inference request).

        Raises:
            trio.ClosedResourceError: the server was closed.
        """

    @abc.abstractmethod
    async def ack(self, batch: TrajectoryBatch) -> None:
        """Acknowledge a batch: the server has taken responsibility for its trajectories."""

    @abc.abstractmethod
    async def publish_model(self, model: ModelModule) -> None:
        """Broadcast a model to every client and answer later handshakes with it.

        Raises:
            ModelError: the model has no version, or its version is not greater than the last one.
        """

    @abc.abstractmethod
    async def reply(self, request: InferenceRequest, reply: InferenceReply) -> None:
        """Answer an inference request (a reply for a client that has gone is dropped)."""

    @property
    @abc.abstractmethod
    def model_version(self) -> int:
        """Version of the last published model, -1 if none."""

    @abc.abstractmethod
    def statistics(self) -> ServerStatistics:
        """A snapshot of this server's counters."""


class Transport(abc.ABC):
    """A way for agents and servers to exchange models, trajectories and requests.

    Plugins register a subclass in the ``relayrl.transports`` entry-point group;
    :func:`relayrl.transports.get` returns the class, and its constructor takes the transport's
    settings (addresses, codecs, ...) as keywords.

    .. versionadded:: 0.1
    """

    #: The name it registers under.
    name: ClassVar[str]

    @abc.abstractmethod
    def open_server(self) -> AbstractAsyncContextManager[TransportServer]:
        """Bind the server side; leaving the context closes it (clients keep their unacked batches)."""

    @abc.abstractmethod
    def open_client(self, *, client_id: uuid.UUID | None = None) -> AbstractAsyncContextManager[TransportClient]:
        """Connect a client; leaving the context sends a ``shutdown`` notice and closes it."""
