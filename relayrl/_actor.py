"""Actor state for the agent runtime: model handles, actors and columnar trajectory stores.

Nothing here awaits. The agent (``relayrl._agent``) owns these objects and mutates them only
from the trio thread, synchronously, so every change is atomic with respect to other tasks.

Recording is columnar: a :class:`TrajectoryStore` holds, for every actor whose model has the
same observation/action :class:`Layout`, one row per actor ("slot") of preallocated numpy
buffers ``[slots, capacity, ...]``. A batched request writes all its steps with one fancy-index
assignment per column; no Python object is created per step. The time capacity grows
geometrically up to ``max_traj_length``, so memory follows the trajectories actually recorded.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import numpy.typing as npt

from ._errors import ObservationError
from ._heads import Head
from ._model import ModelModule
from ._trajectory import Trajectory

if TYPE_CHECKING:
    import trio

    from ._backend_api import Policy

__all__ = ["Actor", "Layout", "ModelCell", "ModelHandle", "TrajectoryStore"]

Array = npt.NDArray[Any]

_INITIAL_SLOTS = 8
_INITIAL_STEPS = 64


@attrs.frozen
class Layout:
    """What one step of an actor looks like: observation and action shapes and dtypes, mask width."""

    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype[Any]
    act_shape: tuple[int, ...]
    act_dtype: np.dtype[Any]
    mask_dim: int


@attrs.frozen(eq=False)
class ModelHandle:
    """A loaded model at one version on one device: immutable, shared by every actor serving it.

    A model swap replaces the handle a :class:`ModelCell` points to (one reference), so an
    actor never sees half a model.
    """

    module: ModelModule
    policy: Policy
    head: Head
    version: int
    device: str
    layout: Layout
    backend: str


@attrs.define(eq=False, slots=True)
class ModelCell:
    """The hot-swappable model slot of one actor (independent mode) or of one device (shared mode)."""

    device: str
    handle: ModelHandle | None = None
    #: The last version installed (-1: none yet), from which unstamped models count on.
    version: int = -1


@attrs.define(eq=False, slots=True)
class Actor:
    """One actor: its id, model slot, trajectory slot, router and emitter task channel."""

    id: uuid.UUID
    cell: ModelCell
    router: Any
    outbox: trio.MemorySendChannel[Trajectory]
    done: trio.Event
    store: TrajectoryStore | None = None
    slot: int = -1
    episode: int = 0
    #: Label copied into every trajectory's ``env_id`` (vector-env slot, agent id), or None.
    env_id: str | None = None
    #: Steps handed to the emitter task and not yet through every sink.
    pending_steps: int = 0
    removed: bool = False


def make_layout(module: ModelModule, head: Head) -> Layout:
    """The step layout of a model with its head."""
    return Layout(
        obs_shape=tuple(module.obs_shape),
        obs_dtype=np.dtype(module.metadata.input.dtype),
        act_shape=tuple(head.action_shape),
        act_dtype=np.dtype(head.action_dtype),
        mask_dim=int(head.mask_dim),
    )


class TrajectoryStore:
    """Columnar in-progress trajectories of every actor sharing one :class:`Layout`.

    ``pos[slot]`` is the number of steps recorded in that slot's current trajectory. A slot
    with ``pos == max_len`` is full and waits for the reward of its last step (it is emitted by
    the next request, flag, removal or shutdown).
    """

    def __init__(self, layout: Layout, max_len: int) -> None:
        self.layout = layout
        self.max_len = max_len
        self.cap = min(_INITIAL_STEPS, max_len)
        self.n_slots = _INITIAL_SLOTS
        self.free: list[int] = list(range(self.n_slots - 1, -1, -1))
        s, c = self.n_slots, self.cap
        self.pos = np.zeros(s, dtype=np.intp)
        self.start = np.zeros(s, dtype=np.float64)
        self.had_mask = np.zeros(s, dtype=np.bool_)
        self.obs: Array = np.zeros((s, c, *layout.obs_shape), dtype=layout.obs_dtype)
        self.act: Array = np.zeros((s, c, *layout.act_shape), dtype=layout.act_dtype)
        self.reward: Array = np.zeros((s, c), dtype=np.float32)
        self.logp: Array = np.zeros((s, c), dtype=np.float32)
        self.value: Array = np.zeros((s, c), dtype=np.float32)
        self.version: Array = np.zeros((s, c), dtype=np.int64)
        self.mask: Array | None = (np.ones((s, c, layout.mask_dim), dtype=np.bool_) if layout.mask_dim else None)
        self.extras: dict[str, Array] = {}
        self._flat_views()

    def _flat_views(self) -> None:
        # Views ``[slots * capacity, ...]`` of the columns: indexing them with one flat index
        # array is several times faster than indexing ``[slots, capacity]`` with two.
        s, c = self.n_slots, self.cap
        self.obs_f: Array = self.obs.reshape(s * c, *self.obs.shape[2:])
        self.act_f: Array = self.act.reshape(s * c, *self.act.shape[2:])
        self.reward_f: Array = self.reward.reshape(s * c)
        self.logp_f: Array = self.logp.reshape(s * c)
        self.value_f: Array = self.value.reshape(s * c)
        self.version_f: Array = self.version.reshape(s * c)
        self.mask_f: Array | None = None if self.mask is None else self.mask.reshape(s * c, self.mask.shape[2])

    # -- capacity ------------------------------------------------------------------------------

    def _columns(self) -> list[tuple[str, Array]]:
        cols = [(name, getattr(self, name)) for name in ("obs", "act", "reward", "logp", "value", "version")]
        if self.mask is not None:
            cols.append(("mask", self.mask))
        return cols

    def _resize(self, n_slots: int, cap: int) -> None:
        for name, col in self._columns():
            new = (np.ones if name == "mask" else np.zeros)((n_slots, cap, *col.shape[2:]), dtype=col.dtype)
            new[: col.shape[0], : col.shape[1]] = col
            setattr(self, name, new)
        for name, col in list(self.extras.items()):
            new = np.zeros((n_slots, cap, *col.shape[2:]), dtype=col.dtype)
            new[: col.shape[0], : col.shape[1]] = col
            self.extras[name] = new
        if n_slots != self.n_slots:
            for name in ("pos", "start", "had_mask"):
                old = getattr(self, name)
                new1 = np.zeros(n_slots, dtype=old.dtype)
                new1[: old.shape[0]] = old
                setattr(self, name, new1)
            self.free.extend(range(n_slots - 1, self.n_slots - 1, -1))
            self.n_slots = n_slots
        self.cap = cap
        self._flat_views()

    def ensure_steps(self, needed: int) -> None:
        """Grow the time capacity so that index ``needed - 1`` exists."""
        if needed > self.cap:
            cap = self.cap
            while cap < needed:
                cap *= 2
            self._resize(self.n_slots, min(cap, self.max_len))

    def alloc(self) -> int:
        """A free slot (grows the store when none is left)."""
        if not self.free:
            self._resize(self.n_slots * 2, self.cap)
        slot = self.free.pop()
        self.pos[slot] = 0
        self.had_mask[slot] = False
        return slot

    def release(self, slot: int) -> None:
        """Give a slot back (its trajectory must have been taken)."""
        self.pos[slot] = 0
        self.free.append(slot)

    def extra_column(self, name: str, value: Array) -> Array:
        """The buffer of extra column ``name`` (created on first use) for per-row values like ``value[0]``."""
        col = self.extras.get(name)
        shape = value.shape[1:]
        if col is None:
            if value.dtype.kind not in "biuf":
                raise ObservationError(f"extra {name!r} has dtype {value.dtype}, expected a numeric or bool dtype")
            col = np.zeros((self.n_slots, self.cap, *shape), dtype=value.dtype)
            self.extras[name] = col
        elif col.shape[2:] != shape:
            raise ObservationError(f"extra {name!r} has per-step shape {shape}, expected {col.shape[2:]} "
                                   "(as recorded before)")
        return col

    # -- emission ------------------------------------------------------------------------------

    def take(
        self,
        slot: int,
        actor: Actor,
        *,
        terminal: bool,
        truncated: bool,
        final_obs: Array | None,
        now: float,
    ) -> Trajectory | None:
        """Copy the slot's trajectory out (None if empty) and reset the slot for the next one."""
        n = int(self.pos[slot])
        if n == 0:
            return None
        done = np.zeros(n, dtype=np.bool_)
        if terminal:
            done[n - 1] = True
        mask = self.mask[slot, :n].copy() if self.mask is not None and self.had_mask[slot] else None
        traj = Trajectory(
            obs=self.obs[slot, :n].copy(),
            act=self.act[slot, :n].copy(),
            reward=self.reward[slot, :n].copy(),
            done=done,
            logp=self.logp[slot, :n].copy(),
            value=self.value[slot, :n].copy(),
            model_version=self.version[slot, :n].copy(),
            mask=mask,
            actor_id=actor.id,
            episode=actor.episode,
            env_id=actor.env_id,
            truncated=truncated,
            final_obs=None if final_obs is None else np.array(final_obs, dtype=self.layout.obs_dtype, copy=True),
            start_time=float(self.start[slot]),
            end_time=now,
            extras={name: col[slot, :n].copy() for name, col in self.extras.items()},
        )
        self.pos[slot] = 0
        self.had_mask[slot] = False
        return traj

    def take_many(
        self,
        actors: Sequence[Actor],
        *,
        terminal: bool,
        truncated: bool,
        final_obs: Array | None,
        now: float,
    ) -> list[tuple[Actor, Trajectory]]:
        """:meth:`take` for many actors of this store at once (the empty ones are skipped).

        Trajectories of the same length are copied out together, one copy per column, and each
        gets views of its rows: for hundreds of actors this is several times cheaper than one
        copy per column per actor. ``final_obs`` is ``[len(actors), *obs_shape]`` or None.
        """
        if not actors:
            return []
        slots = np.fromiter((a.slot for a in actors), dtype=np.intp, count=len(actors))
        lens = self.pos[slots]
        out: list[tuple[Actor, Trajectory]] = []
        fo_all = None if final_obs is None else np.asarray(final_obs, dtype=self.layout.obs_dtype)
        for n in np.unique(lens).tolist():
            if n == 0:
                continue
            sel = np.flatnonzero(lens == n)
            s = slots[sel]
            obs = self.obs[s, :n]
            act = self.act[s, :n]
            reward = self.reward[s, :n]
            logp = self.logp[s, :n]
            value = self.value[s, :n]
            version = self.version[s, :n]
            had = self.had_mask[s]
            mask = self.mask[s, :n] if self.mask is not None and had.any() else None
            extras = {name: col[s, :n] for name, col in self.extras.items()}
            done = np.zeros((len(s), n), dtype=np.bool_)
            if terminal:
                done[:, n - 1] = True
            fo = None if fo_all is None else fo_all[sel].copy()
            starts = self.start[s].tolist()
            for j, i in enumerate(sel.tolist()):
                actor = actors[i]
                out.append((actor, Trajectory(
                    obs=obs[j], act=act[j], reward=reward[j], done=done[j], logp=logp[j], value=value[j],
                    model_version=version[j], mask=mask[j] if mask is not None and had[j] else None,
                    actor_id=actor.id, episode=actor.episode, env_id=actor.env_id, truncated=truncated,
                    final_obs=None if fo is None else fo[j], start_time=starts[j], end_time=now,
                    extras={name: col[j] for name, col in extras.items()},
                )))
        self.pos[slots] = 0
        self.had_mask[slots] = False
        return out
