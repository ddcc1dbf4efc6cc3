"""Trajectory sinks: where emitted trajectories go.

A sink is a small trio service with a bounded queue in front of it. Producers (the agent's
actors, or user code) hand trajectories over with :meth:`TrajectorySink.put`; a writer task,
:meth:`TrajectorySink.run`, takes everything queued at once and writes it in one go, off the
event loop. :meth:`TrajectorySink.aclose` stops accepting, waits until everything accepted was
written, and closes the files.

Backpressure is explicit (see ``docs/backpressure.md``): with ``overflow="block"`` a full sink
makes the producer wait and nothing is lost; ``"drop_oldest"`` and ``"drop_newest"`` never wait
and count every trajectory they discard in :attr:`SinkStatistics.dropped`.
"""

from __future__ import annotations

import abc
import collections
import itertools
import logging
import math
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar, Final, Literal, TypeAlias, cast

import attrs
import trio

from . import _records
from ._errors import AgentClosedError, ConfigError, SinkError
from ._trajectory import Trajectory

__all__ = [
    "OVERFLOW_POLICIES",
    "ArrowSink",
    "CsvSink",
    "MemorySink",
    "ParquetSink",
    "Overflow",
    "SinkStatistics",
    "TrajectorySink",
]

logger = logging.getLogger("relayrl.sinks")

#: The names an ``overflow=`` argument accepts.
Overflow: TypeAlias = Literal["block", "drop_oldest", "drop_newest"]
OVERFLOW_POLICIES: Final[tuple[str, ...]] = ("block", "drop_oldest", "drop_newest")


def _check_capacity(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    return value


def _check_overflow(value: object) -> Overflow:
    if value == "block":
        return "block"
    if value == "drop_oldest":
        return "drop_oldest"
    if value == "drop_newest":
        return "drop_newest"
    raise ConfigError(f"overflow must be one of {', '.join(map(repr, OVERFLOW_POLICIES))}, got {value!r}")


def _check_trajectory(traj: object) -> Trajectory:
    if not isinstance(traj, Trajectory):
        raise TypeError(f"a sink accepts relayrl.Trajectory objects, got {type(traj).__name__}")
    return traj


@attrs.frozen(kw_only=True)
class SinkStatistics:
    """A snapshot of a sink's counters, returned by :meth:`TrajectorySink.statistics`.

    For a sink with a writer (files, transport) every trajectory handed to
    :meth:`~TrajectorySink.put` ends up in exactly one of ``written``, ``dropped``, ``queued`` or
    ``abandoned`` (or was refused with an exception). For :class:`MemorySink`, ``written`` counts
    the trajectories stored, ``dropped`` the ones rejected (``"drop_newest"``) or evicted later
    (``"drop_oldest"``), and ``queued`` the ones held now.

    .. versionadded:: 0.1
    """

    #: Trajectories written (for :class:`MemorySink`: stored in memory, including ones later evicted).
    written: int = 0
    #: Steps in those trajectories.
    steps_written: int = 0
    #: Trajectories discarded by the overflow policy (``"drop_oldest"`` evictions, ``"drop_newest"`` rejections).
    dropped: int = 0
    #: Steps in those trajectories.
    dropped_steps: int = 0
    #: Trajectories accepted but not written yet (for :class:`MemorySink`: held in memory now).
    queued: int = 0
    #: Trajectories still queued when the writer was cancelled or failed; they were never written.
    abandoned: int = 0
    #: Bytes written to files (0 for :class:`MemorySink`).
    bytes_written: int = 0
    #: Files created so far (0 for :class:`MemorySink`).
    files: int = 0
    #: The sink's capacity (trajectories; per actor for :class:`MemorySink`).
    capacity: int = 0
    #: The overflow policy.
    overflow: str = "block"


class TrajectorySink(abc.ABC):
    """Base class of every trajectory sink.

    Args:
        capacity: The most trajectories queued between the producers and the writer (for
            :class:`MemorySink`, held per actor). Memory is bounded by it.
        overflow: What :meth:`put` does when the sink is full, chosen by name:

            * ``"block"``: wait until the writer made room. Nothing is lost.
            * ``"drop_oldest"``: discard the oldest queued trajectory and accept the new one.
            * ``"drop_newest"``: discard the new trajectory.

            Discarded trajectories are counted in :attr:`SinkStatistics.dropped`. Anything else
            raises :class:`~relayrl.ConfigError`.

    Life cycle, as the agent uses it::

        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run)       # the writer task
            await sink.put(trajectory)          # from any task, any number of times
            with trio.move_on_after(grace, shield=True):
                await sink.aclose()             # drain, flush, close; run() then returns

    ``async with sink:`` does the same for standalone use: it starts :meth:`run` in a nursery of
    its own and calls :meth:`aclose` on exit.

    All methods must be called from the trio thread that runs the sink.

    .. versionadded:: 0.1
    """

    def __init__(self, *, capacity: int, overflow: Overflow = "block") -> None:
        self._capacity = _check_capacity(capacity, "capacity")
        self._overflow: Overflow = _check_overflow(overflow)
        self._standalone: AbstractAsyncContextManager[None] | None = None

    @property
    def capacity(self) -> int:
        """The sink's capacity (see the constructor)."""
        return self._capacity

    @property
    def overflow(self) -> Overflow:
        """The overflow policy (see the constructor)."""
        return self._overflow

    @abc.abstractmethod
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task: start it with ``await nursery.start(sink.run)``.

        It calls ``task_status.started()`` once the sink is ready, then writes whatever
        :meth:`put` queues, in batches, until :meth:`aclose` is called and everything accepted
        was written; then it closes its files and returns. If it is cancelled, it still closes
        its files (under a shielded grace period) and counts what was left unwritten in
        :attr:`SinkStatistics.abandoned`. A write error is raised as :class:`~relayrl.SinkError`,
        after which :meth:`put` raises it too.

        Raises:
            RuntimeError: If the sink was already started.
            SinkError: If writing failed.
        """

    @abc.abstractmethod
    async def put(self, traj: Trajectory) -> None:
        """Hand over a trajectory, applying the overflow policy.

        This is a checkpoint. With ``overflow="block"`` it waits while the sink is full; if it
        is cancelled while waiting, the trajectory was not accepted. ``put`` calls that started
        before :meth:`aclose` are still accepted and written.

        Raises:
            TypeError: If ``traj`` is not a :class:`~relayrl.Trajectory`.
            AgentClosedError: If :meth:`aclose` was called (the trajectory is not accepted).
            SinkError: If the writer failed.
        """

    @abc.abstractmethod
    def put_nowait(self, traj: Trajectory) -> None:
        """Like :meth:`put` but never waits.

        Raises:
            trio.WouldBlock: If the sink is full and its policy is ``"block"`` (nothing was accepted).
            TypeError: If ``traj`` is not a :class:`~relayrl.Trajectory`.
            AgentClosedError: If :meth:`aclose` was called.
            SinkError: If the writer failed.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop accepting, then wait until everything accepted was written and the files closed.

        Idempotent. If :meth:`run` was never started, ``aclose`` does its work inline. Callers
        bound it with ``trio.move_on_after(grace, shield=True)``; if it is cancelled the sink
        stays closed to new trajectories and the writer keeps draining.
        """

    @abc.abstractmethod
    def statistics(self) -> SinkStatistics:
        """Return a snapshot of the counters (see :class:`SinkStatistics`)."""

    async def __aenter__(self) -> TrajectorySink:
        if self._standalone is not None:
            raise RuntimeError(f"{type(self).__name__} is already open")
        cm = _open_standalone(self)
        await cm.__aenter__()
        self._standalone = cm
        return self

    async def __aexit__(self, *exc_info: object) -> bool | None:
        cm, self._standalone = self._standalone, None
        assert cm is not None
        return await cm.__aexit__(*exc_info)  # type: ignore[arg-type]


@asynccontextmanager
async def _open_standalone(sink: TrajectorySink) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        try:
            yield
        finally:
            # Drain even when the body is cancelled or raised; bounded so a stuck writer cannot hang forever.
            with trio.move_on_after(_STANDALONE_CLOSE_GRACE, shield=True):
                await sink.aclose()
            nursery.cancel_scope.cancel()


#: How long ``async with sink:`` waits for the drain when its body is cancelled (seconds).
_STANDALONE_CLOSE_GRACE: Final = 60.0


class MemorySink(TrajectorySink):
    """Keeps the most recent trajectories of each actor in memory, for :meth:`drain`.

    Args:
        capacity_per_actor: How many trajectories are held per actor id (``capacity=`` is accepted
            as the same, the keyword every sink takes).
        overflow: What happens when an actor already has ``capacity_per_actor`` trajectories
            held. The default, ``"drop_oldest"``, evicts that actor's oldest one: a memory sink
            is a window on the most recent data, and nobody may be draining it, so it must not
            stall the actors. Evictions are counted in :attr:`SinkStatistics.dropped` and the
            first one is logged (logger ``relayrl.sinks``) so the loss is never silent. Choose
            ``"block"`` to lose nothing: a producer then waits until :meth:`drain` frees room.

    It needs no writer: :meth:`put` stores directly, and :meth:`run` only waits for
    :meth:`aclose` (it exists so the agent can treat every sink alike). Trajectories held at
    :meth:`aclose` stay available to :meth:`drain`.

    .. versionadded:: 0.1
    """

    def __init__(self, capacity_per_actor: int = 1000, *, overflow: Overflow = "drop_oldest",
                 capacity: int | None = None) -> None:
        if capacity is not None:  # the keyword every sink takes; here it means the same
            if capacity_per_actor not in (1000, capacity):
                raise ConfigError(f"give capacity_per_actor or capacity, not both ({capacity_per_actor} != {capacity})")
            capacity_per_actor = capacity
        super().__init__(capacity=_check_capacity(capacity_per_actor, "capacity_per_actor"), overflow=overflow)
        self._held: dict[uuid.UUID, collections.deque[tuple[int, Trajectory]]] = {}
        self._seq = itertools.count()
        self._space = trio.lowlevel.ParkingLot()  # producers waiting for drain() (overflow="block")
        self._settled = trio.lowlevel.ParkingLot()  # aclose() waiting for those producers
        self._pending = 0
        self._closing = False
        self._closed = trio.Event()
        self._started = False
        self._written = self._steps_written = 0
        self._dropped = self._dropped_steps = 0
        self._logged_drop = False

    # -- producer side -------------------------------------------------------------------------

    def _room(self, actor_id: uuid.UUID) -> bool:
        held = self._held.get(actor_id)
        return held is None or len(held) < self._capacity

    def _accept(self, traj: Trajectory) -> bool:
        """Store ``traj`` unless the policy forbids it; return False if it must wait (``"block"``)."""
        if not self._room(traj.actor_id):
            if self._overflow == "block":
                return False
            if self._overflow == "drop_newest":
                self._count_drop(traj)
                return True
            _, oldest = self._held[traj.actor_id].popleft()
            self._count_drop(oldest)
        self._held.setdefault(traj.actor_id, collections.deque()).append((next(self._seq), traj))
        self._written += 1
        self._steps_written += len(traj)
        return True

    def _count_drop(self, traj: Trajectory) -> None:
        self._dropped += 1
        self._dropped_steps += len(traj)
        if not self._logged_drop:
            self._logged_drop = True
            logger.warning("MemorySink is full for actor %s (capacity_per_actor=%d, overflow=%r): "
                           "trajectories are being dropped; see statistics().dropped",
                           traj.actor_id, self._capacity, self._overflow)

    def _check_open(self, traj: object) -> Trajectory:
        traj = _check_trajectory(traj)
        if self._closing:
            raise AgentClosedError("the MemorySink is closed")
        return traj

    async def put(self, traj: Trajectory) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        traj = self._check_open(traj)
        if self._accept(traj):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        self._pending += 1
        try:
            while not self._room(traj.actor_id):
                await self._space.park()
        finally:
            self._pending -= 1
            if not self._pending:
                self._settled.unpark_all()
        accepted = self._accept(traj)
        assert accepted

    def put_nowait(self, traj: Trajectory) -> None:
        traj = self._check_open(traj)
        if not self._accept(traj):
            raise trio.WouldBlock

    # -- consumer side -------------------------------------------------------------------------

    def drain(self, actor_id: uuid.UUID | None = None) -> list[Trajectory]:
        """Remove and return the trajectories held, in the order they were put.

        Args:
            actor_id: Only this actor's (an unknown id gives an empty list). ``None``: everyone's.

        Returns:
            The trajectories, oldest first. Blocked producers (``overflow="block"``) wake up.
        """
        if actor_id is None:
            entries = sorted(itertools.chain.from_iterable(self._held.values()), key=lambda e: e[0])
            self._held.clear()
        else:
            entries = list(self._held.pop(actor_id, ()))
        if entries:
            self._space.unpark_all()
        return [traj for _, traj in entries]

    def __len__(self) -> int:
        """The number of trajectories held."""
        return sum(len(held) for held in self._held.values())

    # -- life cycle ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._started:
            raise RuntimeError("this MemorySink was already started")
        self._started = True
        task_status.started()
        await self._closed.wait()

    async def aclose(self) -> None:
        self._closing = True
        while self._pending:
            await self._settled.park()
        self._closed.set()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> SinkStatistics:
        return SinkStatistics(
            written=self._written, steps_written=self._steps_written, dropped=self._dropped,
            dropped_steps=self._dropped_steps, queued=len(self), capacity=self._capacity, overflow=self._overflow,
        )

    def __repr__(self) -> str:
        return (f"MemorySink(capacity_per_actor={self._capacity}, overflow={self._overflow!r}, held={len(self)}, "
                f"dropped={self._dropped})")



# ------------------------------------------------------------------------------------------------
# Sinks with a writer task


class _BufferedSink(TrajectorySink):
    """A bounded queue in front of a writer task that writes batches in a worker thread.

    Subclasses implement :meth:`_prepare`, :meth:`_write` and :meth:`_finish` (all run in a
    worker thread, never concurrently) and may override :meth:`_validate` (runs in ``put``).
    """

    def __init__(self, *, capacity: int, overflow: Overflow, batch_steps: int, flush_interval: float) -> None:
        super().__init__(capacity=capacity, overflow=overflow)
        self._batch_steps = _check_capacity(batch_steps, "batch_steps")
        if (isinstance(flush_interval, bool) or not isinstance(flush_interval, int | float)
                or not flush_interval >= 0 or math.isinf(flush_interval)):
            raise ConfigError(f"flush_interval must be a finite number of seconds >= 0, got {flush_interval!r}")
        self._flush_interval = float(flush_interval)
        self._queue: collections.deque[tuple[int, object, Trajectory]] = collections.deque()
        self._queued_steps = 0
        self._in_flight = 0
        self._seq = itertools.count()
        self._space = trio.lowlevel.ParkingLot()  # producers waiting for room (overflow="block")
        self._wakeup = trio.lowlevel.ParkingLot()  # the writer waiting for work
        self._pending = 0  # producers parked in _space
        self._closing = False
        self._started = False
        self._finished = trio.Event()
        self._error: SinkError | None = None
        self._written = self._steps_written = 0
        self._dropped = self._dropped_steps = 0
        self._abandoned = 0
        self._bytes = 0
        self._files = 0

    # -- hooks ------------------------------------------------------------------------------------

    def _validate(self, traj: Trajectory) -> object:
        """Check ``traj`` in ``put`` (raise ValueError to reject it); the result travels with it to ``_write``."""
        return None

    @abc.abstractmethod
    def _prepare(self) -> None:
        """Create directories (worker thread, once, before ``run`` reports started)."""

    @abc.abstractmethod
    def _write(self, entries: list[tuple[int, object, Trajectory]]) -> None:
        """Write ``(seq, validate result, trajectory)`` entries (worker thread)."""

    @abc.abstractmethod
    def _finish(self) -> None:
        """Flush and close every file (worker thread)."""

    @abc.abstractmethod
    def _describe(self) -> str:
        """What the sink writes to, for error messages."""

    # -- producer side ----------------------------------------------------------------------------

    def _check_open(self, traj: object) -> tuple[Trajectory, object]:
        traj = _check_trajectory(traj)
        if self._error is not None:
            raise SinkError(str(self._error)) from self._error
        if self._closing or self._finished.is_set():
            raise AgentClosedError(f"the {type(self).__name__} is closed")
        return traj, self._validate(traj)

    def _offer(self, traj: Trajectory, info: object) -> bool:
        """Queue ``traj`` unless the policy forbids it; return False if it must wait (``"block"``)."""
        if len(self._queue) >= self._capacity:
            if self._overflow == "block":
                return False
            if self._overflow == "drop_newest":
                self._count_drop(traj)
                return True
            _, _, oldest = self._queue.popleft()
            self._queued_steps -= len(oldest)
            self._count_drop(oldest)
        self._enqueue(traj, info)
        return True

    def _enqueue(self, traj: Trajectory, info: object) -> None:
        self._queue.append((next(self._seq), info, traj))
        self._queued_steps += len(traj)
        # Wake the writer only when it has something new to decide on.
        if (len(self._queue) == 1 or self._queued_steps >= self._batch_steps or len(self._queue) >= self._capacity
                or self._closing):
            self._wakeup.unpark_all()

    def _count_drop(self, traj: Trajectory) -> None:
        self._dropped += 1
        self._dropped_steps += len(traj)

    async def put(self, traj: Trajectory) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        traj, info = self._check_open(traj)
        if self._offer(traj, info):
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        self._pending += 1
        self._wakeup.unpark_all()  # a full queue with a waiting producer is written at once
        try:
            while len(self._queue) >= self._capacity and not self._finished.is_set():
                await self._space.park()
        finally:
            self._pending -= 1
            if not self._pending:
                self._wakeup.unpark_all()
        if self._finished.is_set():
            if self._error is not None:
                raise SinkError(str(self._error)) from self._error
            raise AgentClosedError(f"the {type(self).__name__} stopped before it could accept the trajectory")
        self._enqueue(traj, info)

    def put_nowait(self, traj: Trajectory) -> None:
        traj, info = self._check_open(traj)
        if not self._offer(traj, info):
            raise trio.WouldBlock

    # -- writer side ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._started:
            raise RuntimeError(f"this {type(self).__name__} was already started")
        self._started = True
        await self._serve(task_status)

    async def _next_batch(self) -> list[tuple[int, object, Trajectory]] | None:
        deadline = math.inf
        while True:
            if self._queue:
                if (self._closing or self._pending or self._queued_steps >= self._batch_steps
                        or len(self._queue) >= self._capacity or trio.current_time() >= deadline):
                    batch = list(self._queue)
                    self._queue.clear()
                    self._queued_steps = 0
                    self._in_flight = len(batch)
                    self._space.unpark_all()
                    return batch
                if deadline == math.inf:
                    deadline = trio.current_time() + self._flush_interval
                    continue
            elif self._closing and not self._pending:
                return None
            else:
                deadline = math.inf
            with trio.move_on_at(deadline):
                await self._wakeup.park()

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        try:
            try:
                await trio.to_thread.run_sync(self._prepare)
            except OSError as exc:
                raise SinkError(f"cannot prepare {self._describe()}: {exc}") from exc
            task_status.started()
            while (batch := await self._next_batch()) is not None:
                try:
                    await trio.to_thread.run_sync(self._write, batch)
                except OSError as exc:
                    raise SinkError(f"writing to {self._describe()} failed: {exc}") from exc
                self._in_flight = 0
                self._written += len(batch)
                self._steps_written += sum(len(t) for _, _, t in batch)
        except SinkError as exc:
            self._abandon(exc)
            raise
        except Exception as exc:  # a bug or an unexpected library error: still a typed error, nothing silent
            error = SinkError(f"writing to {self._describe()} failed: {type(exc).__name__}: {exc}")
            self._abandon(error)
            raise error from exc
        except BaseException:  # cancelled
            self._abandon(None)
            raise
        finally:
            try:
                with trio.move_on_after(_CLOSE_GRACE, shield=True):
                    await trio.to_thread.run_sync(self._finish)
            except Exception as exc:
                error = SinkError(f"closing {self._describe()} failed: {type(exc).__name__}: {exc}")
                self._error = self._error or error
                raise error from exc
            finally:
                self._finished.set()
                self._space.unpark_all()

    def _abandon(self, error: SinkError | None) -> None:
        """The writer stops early: count what it will never write."""
        self._error = error
        self._abandoned += self._in_flight + len(self._queue)
        self._in_flight = 0
        self._queue.clear()
        self._queued_steps = 0
        if self._abandoned:
            logger.error("%s: %d trajectories were not written (%s)", self._describe(), self._abandoned,
                         "cancelled" if error is None else error)

    async def aclose(self) -> None:
        self._closing = True
        self._wakeup.unpark_all()
        if not self._started:
            self._started = True
            await self._serve(trio.TASK_STATUS_IGNORED)
            return
        await self._finished.wait()

    def statistics(self) -> SinkStatistics:
        return SinkStatistics(
            written=self._written, steps_written=self._steps_written, dropped=self._dropped,
            dropped_steps=self._dropped_steps, queued=len(self._queue) + self._in_flight, abandoned=self._abandoned,
            bytes_written=self._bytes, files=self._files, capacity=self._capacity, overflow=self._overflow,
        )


#: How long the writer may take to close its files once cancelled (seconds).
_CLOSE_GRACE: Final = 30.0


class _Output(abc.ABC):
    """One open file of one schema."""

    path: str

    @abc.abstractmethod
    def __init__(self, path: str, encoder: _records.Encoder, compression: str | None) -> None: ...

    @abc.abstractmethod
    def write(self, batch: Any) -> None: ...

    @abc.abstractmethod
    def tell(self) -> int: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class _IpcOutput(_Output):
    def __init__(self, path: str, encoder: _records.Encoder, compression: str | None) -> None:
        pa = encoder.pa
        self.path = path
        self._file = pa.OSFile(path, "wb")
        try:
            options = pa.ipc.IpcWriteOptions(compression=compression)
            self._writer = pa.ipc.new_stream(self._file, encoder.schema, options=options)
        except BaseException:
            self._file.close()
            raise

    def write(self, batch: Any) -> None:
        self._writer.write_batch(batch)

    def tell(self) -> int:
        return int(self._file.tell())

    def close(self) -> None:
        try:
            self._writer.close()
        finally:
            self._file.close()


class _ParquetOutput(_Output):
    def __init__(self, path: str, encoder: _records.Encoder, compression: str | None) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self._file = encoder.pa.OSFile(path, "wb")
        try:
            self._writer = pq.ParquetWriter(self._file, encoder.schema, compression=compression or "none")
        except BaseException:
            self._file.close()
            raise

    def write(self, batch: Any) -> None:
        self._writer.write_batch(batch, row_group_size=batch.num_rows)

    def tell(self) -> int:
        return int(self._file.tell())

    def close(self) -> None:
        try:
            self._writer.close()
        finally:
            self._file.close()


class _CsvOutput(_Output):
    def __init__(self, path: str, encoder: _records.Encoder, compression: str | None) -> None:
        self.path = path
        self._encoder = encoder
        self._file = encoder.pa.OSFile(path, "wb")
        self._writer: Any = None
        try:
            self._file.write(_records.CSV_MAGIC + encoder.meta_json.encode() + b"\n")
        except BaseException:
            self._file.close()
            raise

    def write(self, batch: Any) -> None:
        import pyarrow.csv as pcsv

        table = self._encoder.to_csv_table(batch)
        if self._writer is None:
            self._writer = pcsv.CSVWriter(self._file, table.schema)
        self._writer.write_table(table)

    def tell(self) -> int:
        return int(self._file.tell())

    def close(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            self._file.close()


class _FileSink(_BufferedSink):
    _format: ClassVar[str]
    _output: ClassVar[type[_Output]]

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        capacity: int = 1024,
        overflow: Overflow = "block",
        max_file_bytes: int | None = 256 * 1024 * 1024,
        batch_steps: int = 65536,
        flush_interval: float = 1.0,
        compression: str | None = None,
        prefix: str = "trajectories",
        run_id: str | None = None,
    ) -> None:
        _records.check_pyarrow()  # imported by the writer thread: never on the event loop
        super().__init__(capacity=capacity, overflow=overflow, batch_steps=batch_steps, flush_interval=flush_interval)
        self._dir = os.fspath(path)
        if max_file_bytes is not None:
            max_file_bytes = _check_capacity(max_file_bytes, "max_file_bytes")
        self._max_file_bytes = max_file_bytes
        self._compression = compression
        if not prefix or os.sep in prefix or (os.altsep and os.altsep in prefix):
            raise ConfigError(f"prefix must be a non-empty file name part, got {prefix!r}")
        self._prefix = prefix
        if run_id is None:
            run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)
        elif not run_id or os.sep in run_id or (os.altsep and os.altsep in run_id):
            raise ConfigError(f"run_id must be a non-empty file name part, got {run_id!r}")
        self._run_id = run_id
        self._encoders: dict[object, _records.Encoder] = {}
        self._open: dict[object, _Output] = {}
        self._closed_bytes = 0
        self._paths: list[str] = []

    @property
    def directory(self) -> str:
        """The directory the files are written to."""
        return self._dir

    @property
    def run_id(self) -> str:
        """This sink's run id (part of every file name)."""
        return self._run_id

    @property
    def paths(self) -> list[str]:
        """The files created so far, in order."""
        return list(self._paths)

    def _describe(self) -> str:
        return f"{type(self).__name__}({self._dir!r})"

    def _validate(self, traj: Trajectory) -> object:
        return _records.signature(traj)

    def _prepare(self) -> None:
        _records.require_pyarrow()
        os.makedirs(self._dir, exist_ok=True)

    def _write(self, entries: list[tuple[int, object, Trajectory]]) -> None:
        groups: dict[object, list[tuple[int, object, Trajectory]]] = {}
        for entry in entries:
            groups.setdefault(entry[1], []).append(entry)
        for sig, group in groups.items():
            encoder = self._encoders.get(sig)
            if encoder is None:
                encoder = self._encoders[sig] = _records.Encoder(
                    cast(_records.Signature, sig), self._run_id, run_end_encoded=self._format == "arrow")
            # Record batches of whole trajectories, at most batch_steps rows each (one if a trajectory is longer).
            start = 0
            while start < len(group):
                stop, rows = start, 0
                while stop < len(group) and (stop == start or rows + max(len(group[stop][2]), 1) <= self._batch_steps):
                    rows += max(len(group[stop][2]), 1)
                    stop += 1
                chunk = group[start:stop]
                batch = encoder.encode([t for _, _, t in chunk], [s for s, _, _ in chunk])
                self._write_batch(sig, encoder, batch)
                start = stop

    def _write_batch(self, sig: object, encoder: _records.Encoder, batch: Any) -> None:
        out = self._open.get(sig)
        if out is None:
            path = os.path.join(self._dir, f"{self._prefix}-{self._run_id}-{self._files:04d}"
                                           f"{_records.FORMATS[self._format]}")
            # Never overwrite a file: another sink may have used this run id in this directory.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            out = self._open[sig] = self._output(path, encoder, self._compression)
            self._files += 1
            self._paths.append(path)
        out.write(batch)
        size = out.tell()
        self._bytes = self._closed_bytes + sum(o.tell() for o in self._open.values())
        if self._max_file_bytes is not None and size >= self._max_file_bytes:
            del self._open[sig]
            out.close()
            self._closed_bytes += os.path.getsize(out.path)
            self._bytes = self._closed_bytes + sum(o.tell() for o in self._open.values())

    def _finish(self) -> None:
        errors: list[BaseException] = []
        while self._open:
            _, out = self._open.popitem()
            try:
                out.close()
            except Exception as exc:
                errors.append(exc)
            self._closed_bytes += os.path.getsize(out.path) if os.path.exists(out.path) else 0
        self._bytes = self._closed_bytes
        if errors:
            raise errors[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._dir!r}, run_id={self._run_id!r}, overflow={self._overflow!r})"


_FILE_SINK_ARGS = """
    Args:
        path: The directory to write to (created if needed). Files are named
            ``<prefix>-<run_id>-<n><ext>``, ``n`` counting from ``0000`` within the run.
        capacity: The most trajectories queued for the writer (plus one batch being written).
        overflow: ``"block"`` (the default: nothing is lost), ``"drop_oldest"`` or ``"drop_newest"``;
            see :class:`~relayrl.sinks.TrajectorySink`.
        max_file_bytes: Start a new file once the current one reached this size (checked after
            each record batch, so a file can exceed it by one batch). ``None``: never rotate.
        batch_steps: The writer waits until this many steps are queued (or the queue is full,
            a producer is blocked, ``flush_interval`` passed since the oldest queued trajectory
            arrived, or the sink is closing), then writes everything queued; a record batch holds
            at most this many rows (whole trajectories; a longer trajectory gets one of its own).
        flush_interval: Seconds a queued trajectory may wait for a batch to fill up.
        prefix: The first part of every file name.
        run_id: The second part (default: the UTC time, then 6 random hex digits). Runs sort by it.
"""

_FILE_SINK_TAIL = """
    Raises:
        BackendUnavailableError: If pyarrow is not installed (``pip install pyarrow``).
        ConfigError: For a bad argument.

    :meth:`put` raises :class:`ValueError` for a trajectory whose columns are not numpy
    bool/int/uint/float arrays of its length (it is not accepted). Trajectories whose dtypes or
    per-step shapes differ go to separate files (one schema per file).
"""


class ArrowSink(_FileSink):
    __doc__ = (
        """Writes trajectories to Arrow IPC **stream** files (``.arrow``), one row per step.

    The format is described in ``docs/trajectories.md``; :func:`relayrl.read_trajectories` reads
    it back. Record batches hold many trajectories each and are written off the event loop.
    """
        + _FILE_SINK_ARGS
        + """        compression: ``None`` (default), ``"lz4"`` or ``"zstd"`` (Arrow IPC buffer compression).
"""
        + _FILE_SINK_TAIL
        + """
    .. versionadded:: 0.1
    """
    )

    _format = "arrow"
    _output = _IpcOutput

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        capacity: int = 1024,
        overflow: Overflow = "block",
        max_file_bytes: int | None = 256 * 1024 * 1024,
        batch_steps: int = 65536,
        flush_interval: float = 1.0,
        compression: str | None = None,
        prefix: str = "trajectories",
        run_id: str | None = None,
    ) -> None:
        if compression not in (None, "lz4", "zstd"):
            raise ConfigError(f"compression must be None, 'lz4' or 'zstd', got {compression!r}")
        super().__init__(path, capacity=capacity, overflow=overflow, max_file_bytes=max_file_bytes,
                         batch_steps=batch_steps, flush_interval=flush_interval, compression=compression,
                         prefix=prefix, run_id=run_id)


class ParquetSink(_FileSink):
    __doc__ = (
        """Writes trajectories to Parquet files (``.parquet``, one row group per record batch), for archives.

    The table is the one :class:`ArrowSink` writes; :func:`relayrl.read_trajectories` reads it back.
    """
        + _FILE_SINK_ARGS
        + """        compression: A Parquet codec name (default ``"zstd"``; ``None`` for none).
"""
        + _FILE_SINK_TAIL
        + """
    .. versionadded:: 0.1
    """
    )

    _format = "parquet"
    _output = _ParquetOutput

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        capacity: int = 1024,
        overflow: Overflow = "block",
        max_file_bytes: int | None = 256 * 1024 * 1024,
        batch_steps: int = 65536,
        flush_interval: float = 1.0,
        compression: str | None = "zstd",
        prefix: str = "trajectories",
        run_id: str | None = None,
    ) -> None:
        if compression is not None and compression.lower() not in ("none", "snappy", "gzip", "brotli", "lz4", "zstd"):
            raise ConfigError(f"compression must be a Parquet codec (snappy, gzip, brotli, lz4, zstd) or None, "
                              f"got {compression!r}")
        super().__init__(path, capacity=capacity, overflow=overflow, max_file_bytes=max_file_bytes,
                         batch_steps=batch_steps, flush_interval=flush_interval, compression=compression,
                         prefix=prefix, run_id=run_id)


class CsvSink(_FileSink):
    __doc__ = (
        """Writes trajectories to CSV files (``.csv``), one row per step, for a quick look in any tool.

    The first line is ``#relayrl-trajectories {json}`` (the dtypes and shapes), then a header;
    a column with a per-step shape becomes one column per element (``obs.0``, ``obs.1`` ...).
    Floats are written in their shortest exact form, so :func:`relayrl.read_trajectories`
    restores equal arrays. CSV is much slower and larger than Arrow: use it for small data.
    """
        + _FILE_SINK_ARGS
        + _FILE_SINK_TAIL
        + """
    .. versionadded:: 0.1
    """
    )

    _format = "csv"
    _output = _CsvOutput

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        capacity: int = 1024,
        overflow: Overflow = "block",
        max_file_bytes: int | None = 256 * 1024 * 1024,
        batch_steps: int = 65536,
        flush_interval: float = 1.0,
        prefix: str = "trajectories",
        run_id: str | None = None,
    ) -> None:
        super().__init__(path, capacity=capacity, overflow=overflow, max_file_bytes=max_file_bytes,
                         batch_steps=batch_steps, flush_interval=flush_interval, compression=None,
                         prefix=prefix, run_id=run_id)
