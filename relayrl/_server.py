"""The training server: trajectories in through a transport, versioned models out.

:func:`open_training_server` runs a trio service around an :class:`~relayrl.abc.Algorithm`:

* a *receiver* task takes trajectory batches from the transport, hands each trajectory to
  ``algorithm.receive_trajectory`` (on the trio thread; it is cheap) and acknowledges the batch;
* a *trainer* task waits until the algorithm says an update is ready, runs ``algorithm.train``
  in a worker thread (the receiver keeps receiving meanwhile), exports the new policy, stamps
  it with the next version (0, 1, 2, ...; :meth:`~relayrl.ModelModule.with_version`) and
  publishes it to every client; clients that connect later get it through the handshake;
* every ``checkpoint_every`` updates (and when the service exits cleanly) it writes a
  checkpoint: the algorithm's state plus the server's counters, written into a fresh directory
  and switched to by an atomic rename of the ``LATEST`` pointer file.

Started on a ``checkpoint_dir`` that holds a checkpoint, it resumes: the algorithm state is
loaded and the version lineage continues -- the first model it publishes is the restored one
under the checkpointed version (or, if later versions had been published before the crash,
under the next version after them); versions never go back.

.. versionadded:: 0.1
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from ._errors import ConfigError, RelayRLError
from ._inproc import unwrap_single_group
from ._model import ModelModule
from ._telemetry import ATTR_MODEL_VERSION, ATTR_STEPS, SPAN_TRAIN_EPOCH, Telemetry
from ._transport_api import InferenceReply, InferenceRequest, Notice, TrajectoryBatch, Transport, TransportServer

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

    from ._algorithm_api import Algorithm

__all__ = ["TrainingServer", "TrainingServerStatistics", "UpdateRecord", "open_training_server"]

logger = logging.getLogger("relayrl.server")

#: Name of the pointer file that names the newest complete checkpoint.
LATEST_FILE: Final = "LATEST"
#: Name of the small file recording the newest published version (written after each publish).
PUBLISHED_FILE: Final = "published.json"
_FORMAT: Final = 1


@attrs.frozen(kw_only=True)
class UpdateRecord:
    """One training update as the server saw it.

    .. versionadded:: 0.1
    """

    #: Version published after the update.
    version: int
    #: What ``algorithm.train`` returned.
    stats: Mapping[str, float]
    #: Steps received since the previous update.
    steps: int
    #: Steps received in total (resumed runs include the checkpointed count).
    total_steps: int
    #: Seconds ``train`` + export took.
    train_time: float
    #: Unix time the version was published.
    published_at: float


@attrs.frozen(kw_only=True)
class TrainingServerStatistics:
    """A snapshot of the training server's counters.

    .. versionadded:: 0.1
    """

    #: Newest published version.
    version: int
    #: Updates since the (first) start, resumed runs included.
    updates: int
    #: Trajectories and steps accepted (resumed runs included).
    trajectories: int
    steps: int
    #: Trajectories the algorithm rejected (logged, acknowledged, not trained on).
    rejected: int
    #: Whether an update is running or about to run.
    update_pending: bool
    #: Checkpoints written by this server, and the version of the newest one on disk (-1 if none).
    checkpoints: int
    checkpoint_version: int
    #: Periodic checkpoints that failed with an OSError (logged; training went on).
    checkpoint_failures: int
    #: Clients that announced themselves.
    clients: int


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} does not hold a JSON object")
    return data


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dict(data), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def latest_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint directory under ``checkpoint_dir``, or None.

    .. versionadded:: 0.1
    """
    root = Path(checkpoint_dir)
    try:
        name = (root / LATEST_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    path = root / name
    if not name or not (path / "server.json").is_file():
        raise ConfigError(f"{root / LATEST_FILE} names {name!r}, which is not a complete checkpoint")
    return path


class TrainingServer:
    """The handle :func:`open_training_server` yields.

    .. versionadded:: 0.1
    """

    def __init__(self, algorithm: Algorithm, transport_server: TransportServer, *, checkpoint_dir: Path | None,
                 checkpoint_every: int, keep_checkpoints: int, telemetry: Telemetry,
                 on_update: Callable[[UpdateRecord], None] | None) -> None:
        self.algorithm = algorithm
        self.transport_server = transport_server
        self.checkpoint_dir = checkpoint_dir
        self._every = checkpoint_every
        self._keep = keep_checkpoints
        self._telemetry = telemetry
        self._on_update = on_update
        self._version = -1
        self._model: ModelModule | None = None
        self._updates = self._trajectories = self._steps = self._rejected = 0
        self._steps_since = 0
        self._received_steps = 0
        self._steps_changed = trio.Event()
        self._checkpoints = 0
        self._checkpoint_failures = 0
        self._checkpoint_version = -1
        self._ready = trio.Event()
        self._pending = False
        self._version_changed = trio.Event()
        self._clients: set[Any] = set()
        self._lock = trio.Lock()
        self._held: list[tuple[Any, Any]] | None = None
        #: Every update since this server started, oldest first.
        self.history: list[UpdateRecord] = []

    def __repr__(self) -> str:
        return f"<TrainingServer version={self._version} updates={self._updates}>"

    @property
    def version(self) -> int:
        """Newest published model version."""
        return self._version

    @property
    def model(self) -> ModelModule | None:
        """Newest published model."""
        return self._model

    @property
    def update_pending(self) -> bool:
        """True from the moment the algorithm reports an update ready until its model is published."""
        return self._pending

    def statistics(self) -> TrainingServerStatistics:
        """A snapshot of the counters."""
        return TrainingServerStatistics(
            version=self._version, updates=self._updates, trajectories=self._trajectories, steps=self._steps,
            rejected=self._rejected, update_pending=self._pending, checkpoints=self._checkpoints,
            checkpoint_version=self._checkpoint_version, checkpoint_failures=self._checkpoint_failures,
            clients=len(self._clients))

    @property
    def received_steps(self) -> int:
        """Steps received by this server (accepted or rejected), resumed runs excluded."""
        return self._received_steps

    async def wait_for_steps(self, steps: int) -> None:
        """Wait until this server has received (and handed to the algorithm) ``steps`` steps in total.

        Counts accepted and rejected steps, so a producer can wait for its deliveries.
        """
        while self._received_steps < steps:
            await self._steps_changed.wait()
        await trio.lowlevel.checkpoint()

    async def wait_for_version(self, version: int) -> int:
        """Wait until a model of at least ``version`` has been published; return the newest version."""
        while self._version < version:
            await self._version_changed.wait()
        await trio.lowlevel.checkpoint()
        return self._version

    # -- publishing and checkpoints ---------------------------------------------------------------------

    def _record_published(self, version: int) -> None:
        # Written *before* the model goes out (in the same worker-thread call as train and
        # export): after a crash, a restarted server never reuses a version clients may have.
        if self.checkpoint_dir is not None:
            _write_json(self.checkpoint_dir / PUBLISHED_FILE, {"version": version})

    async def _publish(self, model: ModelModule, version: int) -> None:
        model = model.with_version(version)
        await self.transport_server.publish_model(model)
        self._model, self._version = model, version
        self._version_changed.set()
        self._version_changed = trio.Event()

    def _server_state(self) -> dict[str, Any]:
        return {"format": _FORMAT, "version": self._version, "updates": self._updates,
                "trajectories": self._trajectories, "steps": self._steps, "rejected": self._rejected,
                "algorithm": getattr(self.algorithm, "name", type(self.algorithm).__name__),
                "time": time.time()}

    async def checkpoint(self) -> Path | None:
        """Write a checkpoint now (None without a ``checkpoint_dir``); returns its directory.

        The algorithm's ``save_state`` runs in a worker thread, never during an update (it
        waits for a running one to publish); the checkpoint appears atomically (``LATEST`` is
        switched by a rename once everything is written).
        """
        if self.checkpoint_dir is None:
            await trio.lowlevel.checkpoint()
            return None
        async with self._lock:
            state = self._server_state()
            model = self._model
            path = await trio.to_thread.run_sync(self._write_checkpoint, state, model)
            self._checkpoints += 1
            self._checkpoint_version = int(state["version"])
            return path

    def _write_checkpoint(self, state: dict[str, Any], model: ModelModule | None) -> Path:
        root = self.checkpoint_dir
        assert root is not None
        name = f"ckpt-{state['version']:08d}-{state['updates']:08d}"
        tmp = root / f".{name}.tmp"
        final = root / name
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            self._fill_checkpoint(tmp, state, model)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written checkpoint behind
            raise
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = root / (LATEST_FILE + ".tmp")
        pointer.write_text(name + "\n", encoding="utf-8")
        os.replace(pointer, root / LATEST_FILE)
        # Prune older checkpoints, newest first kept.
        older = sorted((p for p in root.glob("ckpt-*") if p.is_dir() and p.name != name), reverse=True)
        for old in older[max(self._keep - 1, 0):]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _fill_checkpoint(self, tmp: Path, state: dict[str, Any], model: ModelModule | None) -> None:
        self.algorithm.save_state(tmp / "algorithm")
        if model is not None:
            model.save(tmp / "model")
        _write_json(tmp / "server.json", state)

    async def _resume(self) -> int:
        """Load the newest checkpoint if any; return the version to publish the initial model under."""
        if self.checkpoint_dir is None:
            return 0
        path = await trio.to_thread.run_sync(latest_checkpoint, self.checkpoint_dir)
        published = await trio.to_thread.run_sync(_read_json, self.checkpoint_dir / PUBLISHED_FILE)
        last_published = int(published["version"]) if published and "version" in published else -1
        if path is None:
            # Nothing to resume, but never reuse a version that clients may already have.
            return last_published + 1
        state = await trio.to_thread.run_sync(_read_json, path / "server.json")
        assert state is not None
        await trio.to_thread.run_sync(self.algorithm.load_state, path / "algorithm")
        self._updates = int(state.get("updates", 0))
        self._trajectories = int(state.get("trajectories", 0))
        self._steps = int(state.get("steps", 0))
        self._rejected = int(state.get("rejected", 0))
        version = int(state["version"])
        self._checkpoint_version = version
        logger.info("resumed from %s (version %d, %d updates)", path, version, self._updates)
        return version if last_published <= version else last_published + 1

    # -- ordered delivery -----------------------------------------------------------------------------------

    def hold(self) -> None:
        """Hold received trajectories (acknowledged, counted) until :meth:`release`.

        Trajectories reach the server in an order that depends on task scheduling (trio runs
        ready tasks in a randomised order). A producer that knows when a batch of collection is
        complete (``relayrl.train``'s sync loop) holds, collects, waits for the steps
        (:meth:`wait_for_steps`) and releases: the algorithm then receives the batch in a
        canonical order, so the same seed gives the same training run.
        """
        if self._held is None:
            self._held = []

    def release(self) -> None:
        """Hand every held trajectory to the algorithm, ordered by (client, env id, actor id, episode, start time)."""
        held, self._held = self._held, None
        if held:
            held.sort(key=lambda item: item[0])
            self._deliver([t for _, t in held], held[0][0][0])

    def _deliver(self, trajectories: list[Any], client_id: Any) -> None:
        ready = False
        for traj in trajectories:
            try:
                ready = self.algorithm.receive_trajectory(traj) or ready
            except RelayRLError as exc:
                self._rejected += 1
                logger.warning("trajectory from client %s rejected: %s", client_id, exc)
                continue
            self._trajectories += 1
            self._steps += len(traj)
            self._steps_since += len(traj)
        if ready:
            self._pending = True
            self._ready.set()

    # -- tasks --------------------------------------------------------------------------------------------

    async def _receiver(self) -> None:
        while True:
            try:
                msg = await self.transport_server.receive()
            except (trio.ClosedResourceError, trio.EndOfChannel):
                return
            if isinstance(msg, TrajectoryBatch):
                if self._held is not None:
                    self._held.extend(((str(msg.client_id), t.env_id or "", t.actor_id.int, t.episode, t.start_time),
                                       t) for t in msg.trajectories)
                else:
                    self._deliver(list(msg.trajectories), msg.client_id)
                self._received_steps += msg.steps
                self._steps_changed.set()
                self._steps_changed = trio.Event()
                await self.transport_server.ack(msg)
            elif isinstance(msg, Notice):
                if msg.kind == "shutdown":
                    self._clients.discard(msg.client_id)
                else:
                    self._clients.add(msg.client_id)
            elif isinstance(msg, InferenceRequest):
                await self.transport_server.reply(msg, InferenceReply.failure(
                    msg, RelayRLError("a training server does not serve inference requests")))

    async def _trainer(self) -> None:
        while True:
            await self._ready.wait()
            self._ready = trio.Event()
            await self._update()

    async def _update(self) -> None:
        next_version = self._version + 1
        steps, self._steps_since = self._steps_since, 0
        span = self._telemetry.start_span(SPAN_TRAIN_EPOCH, {ATTR_MODEL_VERSION: next_version, ATTR_STEPS: steps})
        t0 = time.perf_counter()

        def work() -> tuple[Mapping[str, float], ModelModule]:
            # One worker-thread hand-over per update: each costs up to a GIL switch interval.
            stats = self.algorithm.train()
            model = self.algorithm.export_model(version=next_version)
            self._record_published(next_version)
            return stats, model

        # The lock keeps a checkpoint (save_state in another worker thread) out of a running update.
        async with self._lock:
            try:
                stats, model = await trio.to_thread.run_sync(work)
            except BaseException as exc:
                self._telemetry.end_span(span, exc)
                raise
            train_time = time.perf_counter() - t0
            self._telemetry.end_span(span)
            self._updates += 1
            await self._publish(model, next_version)
        if not self._ready.is_set():
            self._pending = False
        record = UpdateRecord(version=next_version, stats=dict(stats), steps=steps, total_steps=self._steps,
                              train_time=train_time, published_at=time.time())
        self.history.append(record)
        if self._on_update is not None:
            self._on_update(record)
        if self.checkpoint_dir is not None and self._updates % self._every == 0:
            try:
                await self.checkpoint()
            except OSError as exc:
                # A full or read-only disk must not stop training: report it, keep the last good checkpoint.
                self._checkpoint_failures += 1
                logger.error("checkpoint after update %d failed (training goes on): %s", self._updates, exc)


@asynccontextmanager
async def open_training_server(
    algorithm: Algorithm,
    *,
    transport: Transport,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 10,
    keep_checkpoints: int = 2,
    on_update: Callable[[UpdateRecord], None] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> AsyncIterator[TrainingServer]:
    """Run a training server for ``algorithm`` on ``transport`` while the context is open.

    On entry it resumes from ``checkpoint_dir`` when that holds a checkpoint, opens the
    transport's server side and publishes the initial model (version 0 on a fresh start);
    the yielded :class:`TrainingServer` is then serving. When the body finishes normally it
    writes a final checkpoint (shielded from cancellation, bounded to 60 s); when the body
    raises or is cancelled, or training fails, no final checkpoint is written (the last
    periodic one stands), as after a crash. The transport server is closed either way;
    clients keep their unacknowledged batches for the next server.

    A span ``train epoch`` (attributes ``rl.model.version``, ``rl.steps``) covers each update.

    Args:
        algorithm: The algorithm instance (it must match the agents' spaces).
        transport: Where clients connect (e.g. ``relayrl.transports.InprocTransport()``).
        checkpoint_dir: Directory for checkpoints (created if needed); None disables them.
        checkpoint_every: Checkpoint after every this many updates.
        keep_checkpoints: How many checkpoints to keep on disk (the newest).
        on_update: Called (on the trio thread) with each :class:`UpdateRecord`.
        tracer_provider: OpenTelemetry tracer provider (default: the global one).

    Raises:
        ConfigError: bad settings, or an unreadable checkpoint.
        Exception: whatever ``algorithm.train``/``export_model`` raise ends the service and
            propagates (strict exception groups are unwrapped when there is a single error).

    .. versionadded:: 0.1
    """
    for key, value, low in (("checkpoint_every", checkpoint_every, 1), ("keep_checkpoints", keep_checkpoints, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}")
    ckpt = None if checkpoint_dir is None else Path(checkpoint_dir)
    if ckpt is not None:
        ckpt.mkdir(parents=True, exist_ok=True)
    async with transport.open_server() as tserver:
        server = TrainingServer(algorithm, tserver, checkpoint_dir=ckpt, checkpoint_every=checkpoint_every,
                                keep_checkpoints=keep_checkpoints, telemetry=Telemetry.create(tracer_provider),
                                on_update=on_update)
        initial = await server._resume()

        def first() -> ModelModule:
            model = algorithm.export_model(version=initial)
            server._record_published(initial)
            return model

        await server._publish(await trio.to_thread.run_sync(first), initial)
        clean = False
        try:
            with unwrap_single_group():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(server._receiver)
                    nursery.start_soon(server._trainer)
                    try:
                        yield server
                    finally:
                        nursery.cancel_scope.cancel()
            clean = True
        finally:
            if clean and ckpt is not None:
                with trio.move_on_after(60, shield=True):
                    await server.checkpoint()
