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
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final, Literal, TypeAlias

import attrs
import trio

from ._errors import AgentClosedError, ConfigError
from ._trajectory import Trajectory

__all__ = [
    "OVERFLOW_POLICIES",
    "MemorySink",
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

    Every trajectory handed to :meth:`~TrajectorySink.put` and accepted ends up in exactly one
    of ``written``, ``dropped``, ``queued`` or ``abandoned``.

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
        capacity_per_actor: How many trajectories are held per actor id.
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

    def __init__(self, capacity_per_actor: int = 1000, *, overflow: Overflow = "drop_oldest") -> None:
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

