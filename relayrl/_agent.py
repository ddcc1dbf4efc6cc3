"""The agent runtime: :func:`open_agent`, :class:`Agent`, :class:`ActionBatch`.

Structure (see ``docs/agent.md`` and ``docs/cancellation.md``):

* :func:`open_agent` owns a nursery. In it run the sinks' writer tasks, the routers and one
  emitter task per actor.
* A batched ``request_action(ids, obs)`` runs inline in the caller's task: ids are resolved
  (cached while the same ids come back and nothing changed), the rows are grouped by model
  handle, each group gets one forward and one vectorised sampling, and the steps are written
  into columnar trajectory stores (:mod:`relayrl._actor`).
* A single-actor request runs inline too when it looks alone (a lone caller pays no routing
  cost). When there is evidence of concurrent requesters (other tasks ready to run, another
  task's request moments ago, a recent multi-request router batch) it is queued to its actor's
  router, which lets the other ready tasks queue theirs, drains its queue, serves everything
  as one batch and reschedules each waiter (dynamic batching).
* A big batch (``THREAD_BATCH_ROWS`` rows) for a backend that releases the GIL runs its
  forward on a worker thread; everything else stays on the event loop.
* Finished trajectories are handed to the actor's emitter task over a bounded channel; the
  emitter puts them into every sink, so a slow sink never stalls the hot path until that
  channel is full (then the producer waits: backpressure, nothing is lost).
"""

from __future__ import annotations

import collections.abc
import logging
import math
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Literal, overload

import attrs
import numpy as np
import numpy.typing as npt
import trio

from ._actor import Actor, Layout, ModelCell, ModelHandle, TrajectoryStore, make_layout
from ._backends import get as get_backend
from ._errors import (
    AgentClosedError,
    ConfigError,
    ModelError,
    NoModelError,
    ObservationError,
    UnknownActorError,
)
from ._heads import make_head
from ._model import ModelModule
from ._telemetry import (
    ATTR_ACTOR_COUNT,
    ATTR_BACKEND,
    ATTR_BATCH_SIZE,
    ATTR_DEVICE,
    ATTR_MODEL_VERSION,
    ATTR_OUTCOME,
    ATTR_ROUTER,
    METRIC_QUEUE_DEPTH,
    OUTCOME_ERROR,
    OUTCOME_OK,
    SPAN_INFER_POLICY,
    SPAN_REFRESH_MODEL,
    Telemetry,
)
from ._trajectory import Trajectory

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import TracerProvider

    from ._sinks import TrajectorySink

__all__ = ["Action", "ActionBatch", "Agent", "AgentStatistics", "open_agent"]

logger = logging.getLogger("relayrl.agent")

Array = npt.NDArray[Any]
ModelMode = Literal["independent", "shared"]

#: Requests a router queues before callers wait (backpressure).
ROUTER_QUEUE_SIZE: Final = 4096
#: Two single-actor requests from different tasks this close (s) count as concurrent: batch them.
CONCURRENCY_WINDOW: Final = 0.002
#: Longest time (s) a loop of inline requests runs without a trio schedule point.
SCHEDULE_INTERVAL: Final = 0.0005
#: Models whose file is at most this big (bytes) are loaded and validated on the event loop;
#: bigger ones in a worker thread.
INLINE_LOAD_BYTES: Final = 256 * 1024
#: A batched request of at least this many rows, for a policy that releases the GIL (torch,
#: onnxruntime), runs its forward in a worker thread so the event loop keeps serving.
THREAD_BATCH_ROWS: Final = 1024
#: Trajectories queued per actor between the hot path and its emitter task.
OUTBOX_SIZE: Final = 64

_EMPTY_F32 = np.zeros(0, dtype=np.float32)


def _runq_probe() -> collections.abc.Sized | None:
    """The scheduler's run queue, to ask cheaply whether other tasks are ready to run.

    ``trio.lowlevel.current_statistics().tasks_runnable`` gives the same number but costs
    about 3 us per call; the run queue's length costs 0.05 us. If trio's internals change,
    fall back to the public call.
    """
    try:
        runner = trio._core._run.GLOBAL_RUN_CONTEXT.runner
        runq = runner.runq
        len(runq)
    except (AttributeError, TypeError):  # pragma: no cover - depends on trio's internals
        return None
    return runq


class _PublicStats(collections.abc.Sized):
    def __len__(self) -> int:
        return int(trio.lowlevel.current_statistics().tasks_runnable)


# -- results ----------------------------------------------------------------------------------------


@attrs.frozen(slots=True)
class Action:
    """One actor's action from an :class:`ActionBatch` (a view of one row).

    .. versionadded:: 0.1
    """

    #: The actor.
    actor_id: uuid.UUID
    #: The action (a numpy scalar for discrete spaces, an array for vector actions).
    act: Any
    #: Log-probability of the action under the acting policy.
    logp: float
    #: Value estimate (NaN when the model has no value output).
    value: float
    #: Version of the model that chose it.
    model_version: int


class ActionBatch(collections.abc.Sequence[Action]):
    """The result of :meth:`Agent.request_action`: columns plus per-actor views.

    Columns (row ``i`` belongs to ``actor_ids[i]``, in the order of the request's ids):
    ``act`` ``[n, *action_shape]``, ``logp`` ``[n]`` float32, ``value`` ``[n]`` float32 (NaN
    without a value output) and ``model_version`` ``[n]`` int64. Iterating or indexing gives
    :class:`Action` views.

    .. versionadded:: 0.1
    """

    __slots__ = ("act", "actor_ids", "logp", "model_version", "value")

    def __init__(self, actor_ids: list[uuid.UUID], act: Array, logp: Array, value: Array,
                 model_version: Array) -> None:
        #: Actor ids, one per row.
        self.actor_ids = actor_ids
        #: Actions ``[n, *action_shape]``.
        self.act = act
        #: Log-probabilities ``[n]``.
        self.logp = logp
        #: Value estimates ``[n]``.
        self.value = value
        #: Model versions ``[n]``.
        self.model_version = model_version

    def __len__(self) -> int:
        return len(self.actor_ids)

    @overload
    def __getitem__(self, index: int) -> Action: ...

    @overload
    def __getitem__(self, index: slice) -> list[Action]: ...

    def __getitem__(self, index: int | slice) -> Action | list[Action]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = range(len(self.actor_ids))[index]
        return Action(self.actor_ids[i], self.act[i], float(self.logp[i]), float(self.value[i]),
                      int(self.model_version[i]))

    def __repr__(self) -> str:
        return f"ActionBatch(n={len(self)}, act={self.act!r}, model_version={self.model_version!r})"


@attrs.frozen(kw_only=True)
class AgentStatistics:
    """A snapshot of an agent's counters, from :meth:`Agent.statistics`.

    .. versionadded:: 0.1
    """

    #: Actors registered.
    actors: int
    #: Routers running.
    routers: int
    #: Requests queued in each router, in router order.
    queue_depths: tuple[int, ...]
    #: ``request_action`` calls served (successfully).
    requests: int
    #: Actions served (one per actor per request).
    actions: int
    #: Forward batches run (one per model group per request or router batch).
    batches: int
    #: Mean number of rows per forward batch.
    mean_batch_size: float
    #: Requests that went through a router (dynamically batched).
    routed_requests: int
    #: Steps recorded into trajectories.
    steps_recorded: int
    #: Trajectories emitted to the sinks.
    trajectories_emitted: int
    #: Steps lost: a sink failed to accept them, or the shutdown deadline passed before delivery.
    steps_dropped: int
    #: Requests that raised (bad input, failed forward).
    failures: int
    #: Model swaps (one per model slot updated).
    refreshes: int
    #: Whether the agent is closed.
    closed: bool


# -- internal request plumbing ---------------------------------------------------------------------


@attrs.define(eq=False, slots=True)
class _Group:
    handle: ModelHandle
    store: TrajectoryStore
    rows: Array | None  # None: every row of the request
    slots: Array


@attrs.define(eq=False, slots=True)
class _Resolved:
    key: tuple[uuid.UUID, ...]
    epoch: int  # of the id -> actor mapping (removals, renames)
    model_epoch: int  # of the actor -> model handle and slot mapping (swaps, moves)
    actors: list[Actor]
    groups: list[_Group]
    layout: Layout


@attrs.define(eq=False, slots=True)
class _Request:
    actor: Actor
    obs: Array  # [1, *obs_shape], validated
    mask: Array | None
    reward: float | None
    deterministic: bool
    extras: dict[str, Array] | None
    task: trio.lowlevel.Task
    key: tuple[Any, ...]
    result: tuple[Array, Array, Array, Array] | None = None
    error: BaseException | None = None
    abandoned: bool = False

    def abort(self, _: Any) -> trio.lowlevel.Abort:
        """Abort function for ``wait_task_rescheduled``: cancelled before the router served it.

        The router then skips the request: nothing is recorded.
        """
        self.abandoned = True
        return trio.lowlevel.Abort.SUCCEEDED


@attrs.define(eq=False)
class _Router:
    index: int
    send: trio.MemorySendChannel[_Request]
    recv: trio.MemoryReceiveChannel[_Request]
    done: trio.Event = attrs.Factory(trio.Event)


# -- validation helpers -----------------------------------------------------------------------------


def _as_obs(obs: Any, n: int, layout: Layout, what: str = "observations", check_finite: bool = True) -> Array:
    a = obs if isinstance(obs, np.ndarray) else np.asarray(obs)
    shape = layout.obs_shape
    if a.dtype != layout.obs_dtype:
        if a.dtype.kind not in "biuf" or not np.can_cast(a.dtype, layout.obs_dtype, "same_kind"):
            raise ObservationError(f"{what} have dtype {a.dtype}, expected {layout.obs_dtype} "
                                   "(or a dtype that casts to it within its kind)")
        a = a.astype(layout.obs_dtype)
    if a.shape[1:] != shape or a.shape[0] != n:
        if a.shape == shape:
            a = a[None] if n == 1 else np.broadcast_to(a, (n, *shape))
        else:
            raise ObservationError(f"{what} have shape {a.shape}, expected {(n, *shape)} (or {shape}, "
                                   f"broadcast to all {n} actors)")
    if check_finite and a.dtype.kind == "f" and not np.isfinite(a).all():
        raise ObservationError(f"{what} contain NaN or infinite values")
    return a


def _as_mask(mask: Any, n: int, layout: Layout) -> Array:
    if layout.mask_dim == 0:
        raise ObservationError("an action mask was given but the model's action space takes none "
                               "(masks apply to discrete action spaces)")
    m = mask if isinstance(mask, np.ndarray) else np.asarray(mask)
    if m.dtype != np.bool_:
        if m.dtype.kind not in "biuf":
            raise ObservationError(f"action mask has dtype {m.dtype}, expected bool (or 0/1 numbers)")
        m = m != 0
    width = layout.mask_dim
    if m.shape != (n, width):
        if m.shape == (width,):
            m = m[None] if n == 1 else np.broadcast_to(m, (n, width))
        else:
            raise ObservationError(f"action mask has shape {m.shape}, expected {(n, width)} (or ({width},))")
    if not m.any(axis=1).all():
        row = int(np.flatnonzero(~m.any(axis=1))[0])
        raise ObservationError(f"action mask row {row} masks out every action")
    return m


def _scalar_reward(reward: Any) -> float:
    """A single actor's reward as a float (fast path for Python and numpy scalars)."""
    if type(reward) is float or type(reward) is int:
        r = float(reward)
        if not math.isfinite(r):
            raise ObservationError("reward contains NaN or infinite values")
        return r
    return float(_as_reward(reward, 1)[0])


def _as_reward(reward: Any, n: int, what: str = "reward") -> Array:
    r = reward if isinstance(reward, np.ndarray) else np.asarray(reward)
    if r.dtype.kind not in "biuf":
        raise ObservationError(f"{what} has dtype {r.dtype}, expected a number or an array of numbers")
    if r.shape != (n,):
        if r.shape in ((), (1,)):
            r = np.full(n, r.reshape(()), dtype=np.float32)
        else:
            raise ObservationError(f"{what} has shape {r.shape}, expected a scalar or ({n},)")
    r = r.astype(np.float32, copy=False)
    if not np.isfinite(r).all():
        raise ObservationError(f"{what} contains NaN or infinite values")
    return r


def _as_extras(extras: Mapping[str, Any], n: int) -> dict[str, Array]:
    out: dict[str, Array] = {}
    for name, value in extras.items():
        if not isinstance(name, str):
            raise ObservationError(f"extra names must be strings, got {name!r}")
        a = value if isinstance(value, np.ndarray) else np.asarray(value)
        if a.ndim == 0 or a.shape[0] != n:
            raise ObservationError(f"extra {name!r} has shape {a.shape}, expected ({n}, ...) (one row per id)")
        if a.dtype.kind not in "biuf":
            raise ObservationError(f"extra {name!r} has dtype {a.dtype}, expected a numeric or bool dtype")
        out[name] = a
    return out


def _check_extras(groups: Iterable[_Group], extras: dict[str, Array]) -> None:
    """Check extras against the columns already recorded, before anything is written."""
    for g in groups:
        for name, value in extras.items():
            col = g.store.extras.get(name)
            if col is not None and col.shape[2:] != value.shape[1:]:
                raise ObservationError(f"extra {name!r} has per-step shape {value.shape[1:]}, "
                                       f"expected {col.shape[2:]} (as recorded before)")


def _wake(batch: list[_Request]) -> None:
    """Reschedule the callers of served (or failed) requests; abandoned ones are gone already."""
    for req in batch:
        if not req.abandoned:
            req.abandoned = True  # never wake a task twice
            trio.lowlevel.reschedule(req.task)


def _ids_list(ids: Any) -> list[uuid.UUID]:
    if isinstance(ids, uuid.UUID):
        return [ids]
    return list(ids)


# -- the agent --------------------------------------------------------------------------------------


class Agent:
    """Many actors sharing hot-swappable models, recording trajectories. Made by :func:`open_agent`.

    All methods must be called from the trio thread that runs the agent. Methods are
    async unless marked; each is a checkpoint. After the ``open_agent`` block is left, every
    method raises :class:`~relayrl.AgentClosedError`.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        *,
        nursery: trio.Nursery,
        model: ModelModule | None,
        model_mode: ModelMode,
        max_traj_length: int,
        sinks: Sequence[TrajectorySink],
        device: str,
        seed: int | None,
        telemetry: Telemetry,
        shutdown_grace: float,
    ) -> None:
        self._nursery = nursery
        self._default_model = model
        self._mode: ModelMode = model_mode
        self._max_len = max_traj_length
        self._sinks = tuple(sinks)
        self._device = device
        self._rng = np.random.default_rng(seed)
        self._tel = telemetry
        self._tracing = telemetry.tracing
        self._metering = telemetry.metering
        self._grace = shutdown_grace
        self._actors: dict[uuid.UUID, Actor] = {}
        self._retired: list[Actor] = []
        self._background_scopes: set[trio.CancelScope] = set()
        # Big batches for backends that release the GIL run their forward on one worker thread.
        self._thread_rows = THREAD_BATCH_ROWS
        self._forward_limiter = trio.CapacityLimiter(1)
        self._shared_cells: dict[str, ModelCell] = {}
        self._stores: dict[Layout, TrajectoryStore] = {}
        self._routers: list[_Router] = []
        self._next_router = 0
        self._epoch = 0
        self._model_epoch = 0
        self._cache: _Resolved | None = None
        self._closed = False
        self._last_yield = 0.0
        # Evidence of concurrent single-actor requesters (see request_action).
        self._single_task: trio.lowlevel.Task | None = None
        self._single_time = -math.inf
        self._batching_until = -math.inf
        probe = _runq_probe()
        self._runq: collections.abc.Sized = probe if probe is not None else _PublicStats()
        # counters
        self._n_requests = 0
        self._n_actions = 0
        self._n_batches = 0
        self._n_routed = 0
        self._n_steps = 0
        self._n_trajectories = 0
        self._n_dropped = 0
        self._n_failures = 0
        self._n_refreshes = 0

    # -- properties and statistics -----------------------------------------------------------------

    @property
    def actor_ids(self) -> list[uuid.UUID]:
        """Ids of the registered actors, in creation order (a new list each time)."""
        return list(self._actors)

    @property
    def model_mode(self) -> ModelMode:
        """``"independent"`` or ``"shared"``."""
        return self._mode

    @property
    def closed(self) -> bool:
        """Whether the agent was shut down (or is shutting down)."""
        return self._closed

    def statistics(self) -> AgentStatistics:
        """A snapshot of the agent's counters (synchronous)."""
        return AgentStatistics(
            actors=len(self._actors),
            routers=len(self._routers),
            queue_depths=tuple(r.send.statistics().current_buffer_used for r in self._routers),
            requests=self._n_requests,
            actions=self._n_actions,
            batches=self._n_batches,
            mean_batch_size=self._n_actions / self._n_batches if self._n_batches else 0.0,
            routed_requests=self._n_routed,
            steps_recorded=self._n_steps,
            trajectories_emitted=self._n_trajectories,
            steps_dropped=self._n_dropped,
            failures=self._n_failures,
            refreshes=self._n_refreshes,
            closed=self._closed,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise AgentClosedError("the agent is closed")

    def _actor(self, actor_id: uuid.UUID) -> Actor:
        try:
            return self._actors[actor_id]
        except (KeyError, TypeError):
            raise UnknownActorError(f"unknown actor id {actor_id!r}") from None

    # -- models ------------------------------------------------------------------------------------

    async def _load(self, model: ModelModule, device: str) -> tuple[Any, Any, Layout]:
        if not isinstance(model, ModelModule):
            raise TypeError(f"expected a relayrl.ModelModule, got {type(model).__name__}")
        if len(model.data) <= INLINE_LOAD_BYTES:
            # Small models load and validate in well under a millisecond: doing it here is
            # much faster than a worker thread, which must win the GIL from a busy event loop
            # (up to sys.getswitchinterval(), 5 ms, per hand-over).
            policy = model.policy(device)
            await trio.lowlevel.checkpoint()
        else:
            # Loading and validating can take a while for big models: keep the event loop serving.
            policy = await trio.to_thread.run_sync(model.policy, device)
        # A backend may sample on its device (CuPy); otherwise the host heads do.
        head = get_backend(model.backend).make_head(model.metadata, device) or make_head(model.metadata)
        return policy, head, make_layout(model, head)

    def _install(
        self, cells: Iterable[ModelCell], model: ModelModule, loaded: dict[str, tuple[Any, Any, Layout]],
    ) -> list[ModelCell]:
        """Point each cell at a handle of ``model`` (sync, atomic per cell); return the cells changed."""
        handles: dict[tuple[str, int], ModelHandle] = {}
        changed = []
        for cell in cells:
            version = model.version if model.version is not None else cell.version + 1
            key = (cell.device, version)
            handle = handles.get(key)
            if handle is None:
                policy, head, layout = loaded[cell.device]
                handle = ModelHandle(module=model, policy=policy, head=head, version=version, device=cell.device,
                                     layout=layout, backend=model.backend)
                handles[key] = handle
            cell.handle = handle
            cell.version = version
            changed.append(cell)
        return changed

    def _place(self, actor: Actor, now: float, emits: list[tuple[Actor, Trajectory]]) -> None:
        """Move ``actor`` to the store of its model's layout (flushing its trajectory if it changes)."""
        handle = actor.cell.handle
        if handle is None:
            return
        store = actor.store
        if store is not None and store.layout == handle.layout:
            return
        if store is not None:
            traj = store.take(actor.slot, actor, terminal=False, truncated=True, final_obs=None, now=now)
            if traj is not None:
                emits.append((actor, traj))
            store.release(actor.slot)
        new = self._stores.get(handle.layout)
        if new is None:
            new = self._stores[handle.layout] = TrajectoryStore(handle.layout, self._max_len)
        actor.store = new
        actor.slot = new.alloc()

    async def update_model(self, model: ModelModule, ids: Iterable[uuid.UUID] | None = None) -> None:
        """Validate ``model`` and swap it in for ``ids`` (default: every actor).

        Validation (load plus a dummy forward, in a worker thread) happens first: a model that
        cannot serve raises and the old one keeps serving. Then the swap is atomic, in one step
        of the event loop: per actor in independent mode, once per device in shared mode (so
        ``ids`` selects the devices). The new version is ``model.version`` when the model carries
        one, otherwise the slot's previous version plus one (0 for a first model).

        If the new model's observation or action layout differs from the old one, each affected
        actor's in-progress trajectory is emitted as truncated first.

        Raises:
            ModelError: the model does not load or validate (nothing changed).
            BackendUnavailableError: its backend or device is not available (nothing changed).
            UnknownActorError: an id is not registered (nothing changed).
            AgentClosedError: the agent is closed.
        """
        self._check_open()
        actors = list(self._actors.values()) if ids is None else [self._actor(i) for i in _ids_list(ids)]
        t0 = time.perf_counter()
        if self._mode == "shared":
            devices = sorted({a.cell.device for a in actors})
            cells = [self._shared_cells[d] for d in devices]
            if ids is None:
                devices = sorted(set(devices) | set(self._shared_cells))
                cells = [self._shared_cells[d] for d in devices]
        else:
            cells = list({id(a.cell): a.cell for a in actors}.values())  # an id given twice swaps once
            devices = sorted({c.device for c in cells})
        spans = [self._tel.start_span(SPAN_REFRESH_MODEL, {
            ATTR_DEVICE: d, ATTR_BACKEND: model.backend,
            ATTR_ACTOR_COUNT: sum(1 for a in actors if a.cell.device == d)}) for d in devices] if self._tracing else []
        try:
            loaded = {d: await self._load(model, d) for d in devices}
            self._check_open()
        except BaseException as exc:
            for span in spans:
                self._tel.end_span(span, exc)
            if isinstance(exc, Exception):
                if self._metering:
                    self._tel.refreshes.add(1, {ATTR_OUTCOME: OUTCOME_ERROR})
                self._tel.count_failure(exc)
            raise
        # -- atomic part: no await from here until the emits are built --
        # Actors removed while the model was validating are left alone.
        actors = [a for a in actors if not a.removed]
        if self._mode == "independent":
            cells = list({id(a.cell): a.cell for a in actors}.values())
        changed = self._install(cells, model, loaded)
        now = time.time()
        emits: list[tuple[Actor, Trajectory]] = []
        changed_set = set(changed)
        moved = actors if self._mode == "independent" else [a for a in self._actors.values()
                                                            if a.cell in changed_set]
        for actor in moved:
            self._place(actor, now, emits)
        self._model_epoch += 1
        self._n_refreshes += len(changed)
        for span in spans:
            self._tel.end_span(span, None, **{ATTR_MODEL_VERSION: max(c.version for c in changed)} if changed else {})
        if self._metering:
            self._tel.refreshes.add(len(changed), {ATTR_OUTCOME: OUTCOME_OK})
            self._tel.refresh_duration.record(time.perf_counter() - t0)
        await self._deliver(emits)
        await trio.lowlevel.checkpoint()

    async def get_model_version(self, ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
        """The model version each actor serves (-1: it has no model).

        Raises:
            UnknownActorError: an id is not registered.
        """
        self._check_open()
        await trio.lowlevel.checkpoint()
        out = {}
        for i in _ids_list(ids):
            h = self._actor(i).cell.handle
            out[i] = -1 if h is None else h.version
        return out

    # -- actors ------------------------------------------------------------------------------------

    async def new_actor(self, *, model: ModelModule | None = None, device: str | None = None,
                        env_id: str | None = None) -> uuid.UUID:
        """Create one actor and return its id (see :meth:`new_actors`)."""
        (actor_id,) = await self.new_actors(1, model=model, device=device,
                                            env_ids=None if env_id is None else [env_id])
        return actor_id

    async def new_actors(
        self, n: int, *, model: ModelModule | None = None, device: str | None = None,
        env_ids: Sequence[str] | None = None,
    ) -> list[uuid.UUID]:
        """Create ``n`` actors and return their ids.

        Args:
            n: How many (at least 1).
            model: Their model (validated first). Default: the agent's model. In shared mode the
                device's shared model is used; giving a different model for a device that
                already has one is an error (use :meth:`update_model`).
            device: Where their model runs (default: the agent's device).
            env_ids: One label per actor (an environment slot, an agent id), copied into the
                ``env_id`` of every trajectory the actor produces. Default: None.

        Raises:
            ConfigError: ``n < 1``, ``env_ids`` not of length ``n``, or a conflicting model in shared mode.
            ModelError, BackendUnavailableError: the model cannot serve on ``device``.
            AgentClosedError: the agent is closed.
        """
        self._check_open()
        if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"new_actors needs a count of at least 1, got {n!r}")
        labels: list[str | None] = [None] * int(n) if env_ids is None else [str(e) for e in env_ids]
        if len(labels) != n:
            raise ConfigError(f"new_actors got {len(labels)} env_ids for {n} actors")
        dev = self._device if device is None else device
        if self._mode == "shared":
            cell = self._shared_cells.get(dev)
            if model is not None and cell is not None and cell.handle is not None \
                    and cell.handle.module is not model:
                raise ConfigError(f"device {dev!r} already has a shared model; use update_model() to replace it")
            use = model if model is not None else self._default_model
            if cell is None or cell.handle is None:
                loaded = {dev: await self._load(use, dev)} if use is not None else None
                self._check_open()
                cell = self._shared_cells.get(dev)
                if cell is None:
                    cell = self._shared_cells[dev] = ModelCell(dev)
                if loaded is not None and use is not None and cell.handle is None:
                    self._install([cell], use, loaded)
                    self._n_refreshes += 1
            cells = [cell] * int(n)
        else:
            use = model if model is not None else self._default_model
            loaded = {dev: await self._load(use, dev)} if use is not None else None
            self._check_open()
            cells = [ModelCell(dev) for _ in range(int(n))]
            if loaded is not None and use is not None:
                self._install(cells, use, loaded)
                self._n_refreshes += int(n)
        ids = []
        now = time.time()
        emits: list[tuple[Actor, Trajectory]] = []
        for cell, label in zip(cells, labels):
            actor = self._spawn(uuid.uuid4(), cell)
            actor.env_id = label
            self._place(actor, now, emits)
            ids.append(actor.id)
        self._model_epoch += 1
        await trio.lowlevel.checkpoint()
        return ids

    def _spawn(self, actor_id: uuid.UUID, cell: ModelCell) -> Actor:
        send, recv = trio.open_memory_channel[Trajectory](OUTBOX_SIZE)
        router = self._routers[self._next_router % len(self._routers)]
        self._next_router += 1
        actor = Actor(id=actor_id, cell=cell, router=router, outbox=send, done=trio.Event())
        self._actors[actor_id] = actor
        self._nursery.start_soon(self._background, self._emitter, actor, recv, name=f"relayrl actor {actor_id}")
        return actor

    async def _background(
        self, fn: Callable[..., Awaitable[None]], *args: Any,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run a background task (router, actor emitter, sink writer) shielded from outside cancellation.

        A cancelled ``async with open_agent()`` block must still shut down gracefully: finish
        queued requests, flush trajectories and close the sinks, which needs these tasks alive.
        The agent cancels them itself once the shutdown is over (or its grace period ran out).
        """
        with trio.CancelScope(shield=True) as scope:
            self._background_scopes.add(scope)
            try:
                await fn(*args, task_status=task_status)
            finally:
                self._background_scopes.discard(scope)

    def _cancel_background(self) -> None:
        for scope in list(self._background_scopes):
            scope.cancel()

    async def _emitter(
        self, actor: Actor, recv: trio.MemoryReceiveChannel[Trajectory],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """The actor's task: put each of its finished trajectories into every sink, in order."""
        task_status.started()
        try:
            async with recv:
                async for traj in recv:
                    n = len(traj)
                    for sink in self._sinks:
                        try:
                            await sink.put(traj)
                        except Exception as exc:
                            # A failing sink loses this trajectory for that sink: count it, never die.
                            self._count_dropped(n)
                            self._tel.count_failure(exc)
                            logger.error("sink %r rejected a trajectory of actor %s (%d steps): %s: %s",
                                         sink, traj.actor_id, n, type(exc).__name__, exc)
                    actor.pending_steps -= n
        finally:
            actor.done.set()

    async def remove_actor(self, actor_id: uuid.UUID) -> None:
        """Remove one actor (see :meth:`remove_actors`)."""
        await self.remove_actors([actor_id])

    async def remove_actors(self, ids: Iterable[uuid.UUID]) -> None:
        """Remove actors; each non-empty in-progress trajectory is emitted as truncated.

        Requests already queued for them fail with :class:`~relayrl.UnknownActorError`.

        Raises:
            UnknownActorError: an id is not registered (nothing was removed).
            ConfigError: ``ids`` is empty or repeats an id.
        """
        self._check_open()
        id_list = _ids_list(ids)
        if not id_list:
            raise ConfigError("remove_actors needs at least one id")
        actors = [self._actor(i) for i in id_list]
        if len({id(a) for a in actors}) != len(actors):
            raise ConfigError("remove_actors got the same id twice")
        now = time.time()
        emits: list[tuple[Actor, Trajectory]] = []
        for actor in actors:
            if actor.store is not None:
                traj = actor.store.take(actor.slot, actor, terminal=False, truncated=True, final_obs=None, now=now)
                if traj is not None:
                    emits.append((actor, traj))
                actor.store.release(actor.slot)
                actor.store = None
            actor.removed = True
            del self._actors[actor.id]
        self._epoch += 1
        await self._deliver(emits)
        for actor in actors:
            actor.outbox.close()
        # Their emitter tasks finish delivering in the background; shutdown waits for them.
        self._retired = [a for a in self._retired if not a.done.is_set()]
        self._retired.extend(actors)
        await trio.lowlevel.checkpoint()

    async def set_actor_id(self, current: uuid.UUID, new: uuid.UUID) -> None:
        """Rename an actor: later steps, trajectories (including the one in progress) use ``new``.

        Raises:
            UnknownActorError: ``current`` is not registered.
            ConfigError: ``new`` is already registered, or is not a UUID.
        """
        self._check_open()
        actor = self._actor(current)
        if not isinstance(new, uuid.UUID):
            raise ConfigError(f"actor ids are uuid.UUID values, got {type(new).__name__}")
        if new != current:
            if new in self._actors:
                raise ConfigError(f"actor id {new} is already registered")
            # Rebuild the dict to keep creation order.
            self._actors = {(new if k == current else k): v for k, v in self._actors.items()}
            actor.id = new
            self._epoch += 1
        await trio.lowlevel.checkpoint()

    # -- routers -----------------------------------------------------------------------------------

    async def _start_router(self) -> None:
        send, recv = trio.open_memory_channel[_Request](ROUTER_QUEUE_SIZE)
        router = _Router(index=len(self._routers), send=send, recv=recv)
        await self._nursery.start(self._background, self._router_run, router, name=f"relayrl router {router.index}")
        self._routers.append(router)

    async def _router_run(self, router: _Router, *, task_status: trio.TaskStatus[None]) -> None:
        """A router: serve whatever its queue holds as one batch, repeatedly, until closed."""
        task_status.started()
        try:
            async with router.recv:
                while True:
                    try:
                        first = await router.recv.receive()
                    except trio.EndOfChannel:
                        break
                    # Let the tasks already scheduled in this round of the run loop (typically
                    # more requesters about to queue) run first, so the batch is as large as possible.
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    batch = [first]
                    try:
                        while True:
                            batch.append(router.recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        pass
                    emits: list[tuple[Actor, Trajectory]] = []
                    try:
                        self._serve_requests(batch, router, emits)
                    except Exception as exc:  # pragma: no cover - _serve_requests reports per request
                        logger.exception("router %d failed to serve a batch", router.index)
                        for req in batch:
                            if req.result is None and req.error is None:
                                req.error = exc
                    finally:
                        _wake(batch)
                    await self._deliver(emits)
        finally:
            # Cancelled (shutdown deadline): fail whatever is still queued, so no caller hangs.
            leftover = []
            try:
                while True:
                    leftover.append(router.recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                pass
            for req in leftover:
                req.error = AgentClosedError("the agent shut down before serving this request")
            _wake(leftover)
            router.done.set()

    async def scale_throughput(self, delta: int) -> int:
        """Add (``delta > 0``) or remove (``delta < 0``) routers, rebalance actors; return the count.

        Removed routers finish the requests already queued to them.

        Raises:
            ConfigError: ``delta`` is 0, or would leave fewer than one router.
        """
        self._check_open()
        if not isinstance(delta, int | np.integer) or isinstance(delta, bool) or delta == 0:
            raise ConfigError(f"scale_throughput needs a non-zero number of routers to add or remove, got {delta!r}")
        if len(self._routers) + delta < 1:
            raise ConfigError(f"cannot remove {-delta} of {len(self._routers)} routers: at least one must remain")
        removed: list[_Router] = []
        if delta > 0:
            for _ in range(int(delta)):
                await self._start_router()
        else:
            removed = self._routers[delta:]
            del self._routers[delta:]
        for i, actor in enumerate(self._actors.values()):
            actor.router = self._routers[i % len(self._routers)]
        self._next_router = len(self._actors)
        for router in removed:
            router.send.close()
        await trio.lowlevel.checkpoint()
        return len(self._routers)

    # -- the hot path ------------------------------------------------------------------------------

    def _resolve(self, ids: Sequence[uuid.UUID]) -> _Resolved:
        key = tuple(ids)
        cache = self._cache
        if cache is not None and cache.epoch == self._epoch and cache.key == key:
            if cache.model_epoch != self._model_epoch:
                # Only models moved (a swap): the ids still resolve to the same actors; regroup.
                cache.groups, cache.layout = self._group(cache.actors)
                cache.model_epoch = self._model_epoch
            return cache
        actors = [self._actor(i) for i in key]
        if len(set(key)) != len(key):
            raise ObservationError("the ids of one request must be distinct")
        res = self._group(actors)
        self._cache = _Resolved(key=key, epoch=self._epoch, model_epoch=self._model_epoch, actors=actors,
                                groups=res[0], layout=res[1])
        return self._cache

    @staticmethod
    def _group(actors: list[Actor]) -> tuple[list[_Group], Layout]:
        by_handle: dict[int, tuple[ModelHandle, TrajectoryStore, list[int], list[int]]] = {}
        for row, actor in enumerate(actors):
            h = actor.cell.handle
            if h is None:
                raise NoModelError(f"actor {actor.id} has no model yet (give one to open_agent, new_actor or "
                                   "update_model)")
            entry = by_handle.get(id(h))
            if entry is None:
                assert actor.store is not None
                entry = by_handle[id(h)] = (h, actor.store, [], [])
            entry[2].append(row)
            entry[3].append(actor.slot)
        groups = [_Group(handle=h, store=store, rows=np.asarray(rows, dtype=np.intp),
                         slots=np.asarray(slots, dtype=np.intp)) for h, store, rows, slots in by_handle.values()]
        layout = groups[0].handle.layout
        for g in groups[1:]:
            if g.handle.layout != layout:
                raise ObservationError(f"actors of one request must share observation and action layouts: "
                                       f"{layout} vs {g.handle.layout}")
        if len(groups) == 1:
            groups[0].rows = None
        return groups, layout

    async def request_action(
        self,
        ids: Sequence[uuid.UUID],
        obs: Any,
        *,
        mask: Any = None,
        reward: Any = None,
        deterministic: bool = False,
        extras: Mapping[str, Any] | None = None,
    ) -> ActionBatch:
        """Choose actions for ``ids`` from their observations and record the steps.

        Args:
            ids: Distinct actor ids (a sequence, or one ``uuid.UUID``).
            obs: ``[len(ids), *obs_shape]``, or one observation of ``obs_shape`` for all. Any
                numeric dtype that casts to the model's input dtype within its kind (float64 to
                float32, int to float) is accepted; NaN or infinities are rejected.
            mask: Action mask ``[len(ids), mask_dim]`` (or ``[mask_dim]``), True = allowed.
            reward: Reward (scalar or ``[len(ids)]``) credited to each actor's previous step;
                ignored for an actor with no previous step in its current trajectory.
            deterministic: Take the most likely action (the mean for Gaussian heads).
            extras: Extra per-step columns ``name -> [len(ids), ...]`` recorded into
                :attr:`Trajectory.extras` (for example a global state for a centralised critic).
                A column is zero for steps recorded without it.

        Returns:
            An :class:`ActionBatch` in the order of ``ids``.

        The request is validated completely before anything is recorded: a rejected request
        changes nothing. A single-actor request is dynamically batched with concurrent ones
        through its actor's router when several tasks are requesting (other tasks are ready to
        run, or another task requested within ``CONCURRENCY_WINDOW`` seconds); otherwise, and
        always for several ids, it runs inline in the caller's task. A batch of at least
        ``THREAD_BATCH_ROWS`` rows for a backend that releases the GIL runs its forward on a
        worker thread. With a ``seed``, inline requests are reproducible.

        It is a cancellation point; it is a schedule point when other tasks are ready to run
        and at least every ``SCHEDULE_INTERVAL`` seconds (see ``docs/cancellation.md``).

        Raises:
            UnknownActorError: an id is not registered.
            NoModelError: an actor has no model.
            ObservationError: wrong shape or dtype of ``obs``, ``mask``, ``reward`` or ``extras``,
                repeated ids, or actors with different layouts in one request.
            AgentClosedError: the agent is closed.
            Exception: whatever the policy's forward raised (the agent keeps running).
        """
        if self._closed:
            raise AgentClosedError("the agent is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        t0 = time.perf_counter() if self._metering else 0.0
        if isinstance(ids, uuid.UUID):
            ids = [ids]
        try:
            if len(ids) == 1:
                try:
                    actor = self._actors[ids[0]]
                except (KeyError, TypeError):
                    actor = self._actor(ids[0])  # raises UnknownActorError
                # Batch dynamically when requests come from several tasks at once: other tasks are
                # queued to run, or another task made an inline request moments ago. A lone caller
                # is served inline (no routing cost).
                task = trio.lowlevel.current_task()
                now = time.perf_counter()
                last_task, last_time = self._single_task, self._single_time
                self._single_task = task
                self._single_time = now
                if (len(self._runq) or now < self._batching_until
                        or (task is not last_task and now - last_time < CONCURRENCY_WINDOW)):
                    req = self._make_request(actor, task, obs, mask, reward, deterministic, extras)
                    router: _Router = actor.router
                    try:
                        router.send.send_nowait(req)
                    except trio.WouldBlock:
                        await router.send.send(req)
                    except trio.ClosedResourceError:
                        raise AgentClosedError("the agent is closed") from None

                    # The router reschedules this task once the batch is served (cheaper than an Event).
                    await trio.lowlevel.wait_task_rescheduled(req.abort)
                    if req.error is not None:
                        raise req.error
                    act, logp, value, version = req.result  # type: ignore[misc]
                    if self._metering:
                        self._record_request(t0, 1)
                    return ActionBatch([actor.id], act, logp, value, version)
                batch, emits = self._request_one(actor, obs, mask, reward, deterministic, extras)
            else:
                batch, emits = await self._request_many(ids, obs, mask, reward, deterministic, extras)
        except Exception as exc:
            self._n_failures += 1
            if self._metering:
                self._tel.count_failure(exc)
                self._tel.requests.add(1, {ATTR_OUTCOME: OUTCOME_ERROR})
            raise
        if emits:
            await self._deliver(emits)
        if self._metering:
            self._record_request(t0, len(batch))
        # A schedule point when other tasks are ready to run, and at least every
        # SCHEDULE_INTERVAL seconds so that timers and I/O are served during a tight loop of
        # inline requests. A trio schedule point costs several microseconds with nothing else
        # to run, as much as the rest of a small request.
        now = time.perf_counter()
        if len(self._runq) or now - self._last_yield >= SCHEDULE_INTERVAL:
            self._last_yield = now
            await trio.lowlevel.cancel_shielded_checkpoint()
        return batch

    def _record_request(self, t0: float, n: int) -> None:
        try:
            self._tel.requests.add(1, {ATTR_OUTCOME: OUTCOME_OK})
            self._tel.actions.add(n)
            self._tel.request_duration.record(time.perf_counter() - t0)
        except Exception:  # pragma: no cover
            logger.exception("telemetry failed")

    def _forward(self, handle: ModelHandle, obs: Array, mask: Array | None, deterministic: bool,
                 router: int | None) -> tuple[Array, Array, Array | None]:
        span = self._start_infer_span(handle, obs, router)
        try:
            out = handle.policy.forward(obs, mask)
        except BaseException as exc:
            self._tel.end_span(span, exc)
            raise
        return self._sample(handle, out, obs, mask, deterministic, span)

    def _start_infer_span(self, handle: ModelHandle, obs: Array, router: int | None) -> Any:
        if not self._tracing:
            return None
        return self._tel.start_span(SPAN_INFER_POLICY, {
            ATTR_BATCH_SIZE: obs.shape[0], ATTR_MODEL_VERSION: handle.version, ATTR_BACKEND: handle.backend,
            ATTR_DEVICE: handle.device, **({ATTR_ROUTER: router} if router is not None else {}),
        })

    def _sample(self, handle: ModelHandle, out: Any, obs: Array, mask: Array | None, deterministic: bool,
                span: Any) -> tuple[Array, Array, Array | None]:
        """Sample from a forward's outputs (on the event loop: the agent's generator is used in call order)."""
        try:
            act, logp = handle.head.sample(out, self._rng, mask, deterministic)
        except BaseException as exc:
            self._tel.end_span(span, exc)
            raise
        if span is not None:
            self._tel.end_span(span, None, **{ATTR_ACTOR_COUNT: obs.shape[0]})
        if self._metering:
            self._tel.batch_size.record(obs.shape[0])
        value = out.value
        if value is not None and not isinstance(value, np.ndarray):
            value = np.asarray(value.get() if hasattr(value, "get") else value)
        self._n_batches += 1
        return act, logp, value

    def _request_one(
        self, actor: Actor, obs: Any, mask: Any, reward: Any, deterministic: bool,
        extras: Mapping[str, Any] | None,
    ) -> tuple[ActionBatch, list[tuple[Actor, Trajectory]]]:
        """Serve one actor inline (scalar indexing: much cheaper than fancy indexing for one row)."""
        h = actor.cell.handle
        if h is None:
            raise NoModelError(f"actor {actor.id} has no model yet (give one to open_agent, new_actor or "
                               "update_model)")
        lay = h.layout
        o = _as_obs(obs, 1, lay)
        m = None if mask is None else _as_mask(mask, 1, lay)
        r = None if reward is None else _scalar_reward(reward)
        ex = None if extras is None else _as_extras(extras, 1)
        act, logp, value = self._forward(h, o, m, deterministic, None)
        # -- validated and computed: record (no exception expected below) --
        emits: list[tuple[Actor, Trajectory]] = []
        self._record_one(actor, h, o[0], act[0], float(logp[0]), np.nan if value is None else float(value[0]),
                         None if m is None else m[0], r, ex, emits)
        self._n_requests += 1
        self._n_actions += 1
        v = np.array((np.nan,), dtype=np.float32) if value is None else value.astype(np.float32, copy=False)
        return ActionBatch([actor.id], act, logp, v, np.array((h.version,), dtype=np.int64)), emits

    def _record_one(
        self, actor: Actor, h: ModelHandle, obs: Array, act: Any, logp: float, value: float,
        mask: Array | None, reward: float | None, extras: dict[str, Array] | None,
        emits: list[tuple[Actor, Trajectory]], row: int = 0,
    ) -> None:
        store = actor.store
        assert store is not None
        s = actor.slot
        p = int(store.pos[s])
        if reward is not None and p > 0:
            store.reward[s, p - 1] = reward
        if p >= self._max_len:
            traj = store.take(s, actor, terminal=False, truncated=True, final_obs=obs, now=time.time())
            if traj is not None:
                emits.append((actor, traj))
            p = 0
        if p >= store.cap:
            store.ensure_steps(p + 1)
        if p == 0:
            store.start[s] = time.time()
        store.obs[s, p] = obs
        store.act[s, p] = act
        store.logp[s, p] = logp
        store.value[s, p] = value
        store.version[s, p] = h.version
        store.reward[s, p] = 0.0
        if store.mask is not None:
            if mask is None:
                store.mask[s, p] = True
            else:
                store.mask[s, p] = mask
                store.had_mask[s] = True
        if extras is not None or store.extras:
            self._record_extras(store, np.intp(s), np.intp(p), extras, row)
        store.pos[s] = p + 1
        self._n_steps += 1

    @staticmethod
    def _record_extras(store: TrajectoryStore, slots: Any, pos: Any, extras: dict[str, Array] | None,
                       rows: Any) -> None:
        given = extras or {}
        for name, value in given.items():
            col = store.extra_column(name, value)
            col[slots, pos] = value[rows]
        for name, col in store.extras.items():
            if name not in given:
                col[slots, pos] = 0

    async def _request_many(
        self, ids: Sequence[uuid.UUID], obs: Any, mask: Any, reward: Any, deterministic: bool,
        extras: Mapping[str, Any] | None,
    ) -> tuple[ActionBatch, list[tuple[Actor, Trajectory]]]:
        if len(ids) == 0:
            raise ObservationError("request_action needs at least one actor id")
        res = self._resolve(ids)
        n = len(res.actors)
        lay = res.layout
        o = _as_obs(obs, n, lay)
        m = None if mask is None else _as_mask(mask, n, lay)
        r: Array | float | None = None
        if reward is not None:
            r = _scalar_reward(reward) if type(reward) is float or type(reward) is int else _as_reward(reward, n)
        ex = None if extras is None else _as_extras(extras, n)
        if ex:
            _check_extras(res.groups, ex)
        groups = res.groups
        h = groups[0].handle
        if len(groups) == 1 and n >= self._thread_rows and h.policy.releases_gil:
            # A big batch for a backend that releases the GIL: run the forward in the worker
            # thread (one at a time) so the event loop keeps serving meanwhile.
            act, logp, value = await self._forward_threaded(h, o, m, deterministic)
            # Things may have changed during the forward: re-resolve (raises UnknownActorError
            # for an actor removed meanwhile) and record into the actors' current slots; the
            # steps keep the version that computed them.
            if self._closed:
                raise AgentClosedError("the agent closed while the batch was computed")
            res = self._resolve(ids)
            if res.layout != lay:
                raise ModelError("a model update changed the observation/action layout while the batch was "
                                 "computed; nothing was recorded")
            groups = res.groups
            if ex:
                _check_extras(groups, ex)
            v = np.full(n, np.nan, dtype=np.float32) if value is None else value.astype(np.float32, copy=False)
            value, version = v, np.full(n, h.version, dtype=np.int64)
        else:
            act, logp, value, version = self._serve_groups(groups, n, lay, o, m, deterministic, None)
        emits: list[tuple[Actor, Trajectory]] = []
        for g in groups:
            self._record_group(g, res.actors, o, act, logp, value, version, m, r, ex, emits)
        self._n_requests += 1
        self._n_actions += n
        return ActionBatch(list(ids), act, logp, value, version), emits

    async def _forward_threaded(self, handle: ModelHandle, obs: Array, mask: Array | None,
                                deterministic: bool) -> tuple[Array, Array, Array | None]:
        """Like :meth:`_forward`, with the policy's forward in the agent's worker thread."""
        span = self._start_infer_span(handle, obs, None)
        try:
            out = await trio.to_thread.run_sync(handle.policy.forward, obs, mask, limiter=self._forward_limiter)
        except BaseException as exc:
            self._tel.end_span(span, exc)
            raise
        return self._sample(handle, out, obs, mask, deterministic, span)

    def _serve_groups(
        self, groups: list[_Group], n: int, lay: Layout, o: Array, m: Array | None, deterministic: bool,
        router: int | None,
    ) -> tuple[Array, Array, Array, Array]:
        if len(groups) == 1:
            h = groups[0].handle
            act, logp, value = self._forward(h, o, m, deterministic, router)
            v = np.full(n, np.nan, dtype=np.float32) if value is None else value.astype(np.float32, copy=False)
            return act, logp, v, np.full(n, h.version, dtype=np.int64)
        act = np.empty((n, *lay.act_shape), dtype=lay.act_dtype)
        logp = np.empty(n, dtype=np.float32)
        v = np.full(n, np.nan, dtype=np.float32)
        version = np.empty(n, dtype=np.int64)
        for g in groups:
            rows = g.rows
            a, lp, val = self._forward(g.handle, o[rows], None if m is None else m[rows], deterministic, router)
            act[rows] = a
            logp[rows] = lp
            if val is not None:
                v[rows] = val
            version[rows] = g.handle.version
        return act, logp, v, version

    def _record_group(
        self, g: _Group, actors: list[Actor], o: Array, act: Array, logp: Array, value: Array, version: Array,
        m: Array | None, r: Array | float | None, ex: dict[str, Array] | None,
        emits: list[tuple[Actor, Trajectory]],
    ) -> None:
        """Write one group's rows into its store with one fancy-index assignment per column."""
        store = g.store
        rows = g.rows
        sl = g.slots
        p = store.pos[sl]
        # Two reductions answer every question below (any first steps? any full trajectories?).
        pmin = int(p.min())
        pmax = int(p.max())
        if r is not None and pmax > 0:
            rr = r if rows is None or isinstance(r, float) else r[rows]
            if pmin > 0:
                store.reward_f[sl * store.cap + p - 1] = rr
            else:
                has = p > 0
                store.reward_f[(sl * store.cap + p - 1)[has]] = rr if isinstance(rr, float) else rr[has]
        if pmax >= self._max_len:
            # Full trajectories held back for this reward: emit them (truncated, the new
            # observation as final_obs) and start their next piece with this step.
            ks = np.flatnonzero(p >= self._max_len)
            req_rows = ks if rows is None else rows[ks]
            emits.extend(store.take_many([actors[i] for i in req_rows.tolist()], terminal=False, truncated=True,
                                         final_obs=o[req_rows], now=time.time()))
            p = store.pos[sl]
            pmin = int(p.min())
            pmax = int(p.max())
        if pmax + 1 > store.cap:
            store.ensure_steps(pmax + 1)
        if pmin == 0:
            store.start[sl[p == 0]] = time.time()
        flat = sl * store.cap + p
        if rows is None:
            store.obs_f[flat] = o
            store.act_f[flat] = act
            store.logp_f[flat] = logp
            store.value_f[flat] = value
            store.version_f[flat] = version
        else:
            store.obs_f[flat] = o[rows]
            store.act_f[flat] = act[rows]
            store.logp_f[flat] = logp[rows]
            store.value_f[flat] = value[rows]
            store.version_f[flat] = version[rows]
        store.reward_f[flat] = 0.0
        if store.mask_f is not None:
            if m is None:
                store.mask_f[flat] = True
            else:
                store.mask_f[flat] = m if rows is None else m[rows]
                store.had_mask[sl] = True
        if ex is not None or store.extras:
            self._record_extras(store, sl, p, ex, slice(None) if rows is None else rows)
        store.pos[sl] = p + 1
        self._n_steps += len(sl)

    def _make_request(
        self, actor: Actor, task: trio.lowlevel.Task, obs: Any, mask: Any, reward: Any, deterministic: bool,
        extras: Mapping[str, Any] | None,
    ) -> _Request:
        """A validated single-actor request for the actor's router."""
        h = actor.cell.handle
        if h is None:
            raise NoModelError(f"actor {actor.id} has no model yet (give one to open_agent, new_actor or "
                               "update_model)")
        lay = h.layout
        ex = None if extras is None else _as_extras(extras, 1)
        m = None if mask is None else _as_mask(mask, 1, lay)
        r = None if reward is None else _scalar_reward(reward)
        det = bool(deterministic)
        if type(obs) is np.ndarray and obs.shape == lay.obs_shape and (obs.dtype is lay.obs_dtype
                                                                       or obs.dtype == lay.obs_dtype):
            o = obs[None]  # the common case, validated in three comparisons
        else:
            o = _as_obs(obs, 1, lay, check_finite=False)  # finiteness is checked per batch by the router
        # (positional arguments: a third of the cost of keywords for an attrs __init__)
        return _Request(actor, o, m, r, det, ex, task, (det, m is None, r is None,
                                                       None if ex is None else tuple(sorted(ex))))

    def _serve_requests(self, batch: list[_Request], router: _Router, emits: list[tuple[Actor, Trajectory]]) -> None:
        """Serve a router's drained requests: as few forward batches as possible, errors to their callers."""
        pending: list[_Request] = []
        for req in batch:
            if req.abandoned:
                continue
            if req.actor.removed:
                req.error = UnknownActorError(f"actor {req.actor.id} was removed")
                continue
            pending.append(req)
        if not pending:
            return
        key = pending[0].key
        if all(req.key == key for req in pending) and len({id(req.actor) for req in pending}) == len(pending):
            self._serve_sub(pending, router, emits)  # the usual case: one batch
            return
        while pending:
            # One sub-batch per kind of request; an actor appears at most once per sub-batch.
            key = pending[0].key
            sub: list[_Request] = []
            rest: list[_Request] = []
            seen: set[int] = set()
            for req in pending:
                if req.key == key and id(req.actor) not in seen:
                    seen.add(id(req.actor))
                    sub.append(req)
                else:
                    rest.append(req)
            pending = rest
            self._serve_sub(sub, router, emits)

    def _serve_sub(self, sub: list[_Request], router: _Router, emits: list[tuple[Actor, Trajectory]]) -> None:
        try:
            actors = [req.actor for req in sub]
            groups, lay = self._group(actors)
            n = len(sub)
            o = sub[0].obs if n == 1 else np.concatenate([req.obs for req in sub])
            if o.dtype.kind == "f" and not np.isfinite(o).all():
                # Some caller's observation is bad: the per-request retry below finds whose.
                raise ObservationError("observations contain NaN or infinite values")
            first = sub[0]
            m = None if first.mask is None else (first.mask if n == 1 else np.concatenate(
                [req.mask for req in sub]))
            r = None if first.reward is None else np.array([req.reward for req in sub], dtype=np.float32)
            ex = None if first.extras is None else {
                name: np.concatenate([req.extras[name] for req in sub])  # type: ignore[index]
                for name in first.extras}
            if ex:
                _check_extras(groups, ex)
            act, logp, value, version = self._serve_groups(groups, n, lay, o, m, first.deterministic, router.index)
        except Exception as exc:
            if len(sub) > 1:
                # Find the culprit: serve each request alone so only its caller sees the error.
                for req in sub:
                    self._serve_sub([req], router, emits)
                return
            sub[0].error = exc
            return
        for g in groups:
            self._record_group(g, actors, o, act, logp, value, version, m, r, ex, emits)
        if n > 1:
            # Several tasks are requesting concurrently: keep batching their requests for a while.
            self._batching_until = time.perf_counter() + CONCURRENCY_WINDOW
        # Rows as [1, ...] views: index arrays reshaped to [n, 1, ...] (cheaper than slicing).
        act1 = act.reshape(n, 1, *act.shape[1:])
        logp1 = logp.reshape(n, 1)
        value1 = value.reshape(n, 1)
        version1 = version.reshape(n, 1)
        for i, req in enumerate(sub):
            req.result = (act1[i], logp1[i], value1[i], version1[i])
        self._n_requests += len(sub)
        self._n_actions += len(sub)
        self._n_routed += len(sub)

    # -- episodes ----------------------------------------------------------------------------------

    async def flag_last_action(
        self,
        ids: Sequence[uuid.UUID],
        *,
        reward: Any = None,
        truncated: bool = False,
        final_obs: Any = None,
    ) -> None:
        """End the current episode of each actor and emit its trajectory.

        The reward (scalar or ``[len(ids)]``) is credited to the last step; that step is marked
        terminal, or, with ``truncated=True``, the trajectory is marked truncated (``done`` stays
        False) and ``final_obs`` (``[len(ids), *obs_shape]`` or one observation for all) is kept
        for bootstrapping. The next step starts a new episode. An actor with no step recorded
        since its last trajectory emits nothing (and its episode number does not change).

        Raises:
            UnknownActorError, ObservationError: as for :meth:`request_action` (nothing changed).
            AgentClosedError: the agent is closed.
        """
        self._check_open()
        id_list = _ids_list(ids)
        actors = [self._actor(i) for i in id_list]
        if len({id(a) for a in actors}) != len(actors):
            raise ObservationError("the ids of one request must be distinct")
        n = len(actors)
        r = None if reward is None else _as_reward(reward, n)
        fo: Array | None = None
        if final_obs is not None:
            if not truncated:
                raise ObservationError("final_obs is kept for truncated trajectories only; pass truncated=True")
            layouts = {a.store.layout for a in actors if a.store is not None}
            if len(layouts) > 1:
                raise ObservationError("actors of one request must share observation layouts")
            if layouts:
                fo = _as_obs(final_obs, n, next(iter(layouts)), "final observations")
        now = time.time()
        emits: list[tuple[Actor, Trajectory]] = []
        by_store: dict[int, tuple[TrajectoryStore, list[int]]] = {}
        for i, actor in enumerate(actors):
            if actor.store is not None:
                by_store.setdefault(id(actor.store), (actor.store, []))[1].append(i)
        for store, rows in by_store.values():
            idx = np.asarray(rows, dtype=np.intp)
            slots = np.fromiter((actors[i].slot for i in rows), dtype=np.intp, count=len(rows))
            p = store.pos[slots]
            if r is not None:
                has = p > 0
                store.reward[slots[has], p[has] - 1] = r[idx[has]]
            taken = store.take_many([actors[i] for i in rows], terminal=not truncated, truncated=bool(truncated),
                                    final_obs=None if fo is None else fo[idx], now=now)
            for actor, _ in taken:
                actor.episode += 1
            emits.extend(taken)
        await self._deliver(emits)
        await trio.lowlevel.checkpoint()

    async def _deliver(self, emits: list[tuple[Actor, Trajectory]]) -> None:
        """Hand finished trajectories to their actors' emitter tasks (waits only if an outbox is full)."""
        for actor, traj in emits:
            n = len(traj)
            actor.pending_steps += n
            self._n_trajectories += 1
            if self._metering:
                self._tel.trajectories.add(1)
            try:
                try:
                    actor.outbox.send_nowait(traj)
                except trio.WouldBlock:
                    await actor.outbox.send(traj)  # backpressure: the actor's emitter is behind
            except (trio.ClosedResourceError, trio.BrokenResourceError):  # pragma: no cover - defensive
                # The actor was removed while this trajectory waited for room in its channel.
                actor.pending_steps -= n
                self._count_dropped(n)
                logger.error("actor %s was removed before its trajectory (%d steps) could be delivered",
                             actor.id, n)
            except BaseException:
                # Cancelled while waiting for room: the trajectory is lost, and counted.
                actor.pending_steps -= n
                self._count_dropped(n)
                raise

    def _count_dropped(self, n: int) -> None:
        self._n_dropped += n
        if self._metering:
            self._tel.dropped_steps.add(n)

    # -- shutdown ----------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Stop accepting requests, finish queued ones, flush trajectories, close sinks (bounded by the grace)."""
        self._closed = True
        with trio.move_on_after(self._grace, shield=True) as scope:
            # Phase 1: routers serve what was queued before the close, then exit.
            for router in self._routers:
                router.send.close()
            for router in self._routers:
                if not router.done.is_set():  # (waiting on a set Event would still cost a scheduler pass)
                    await router.done.wait()
            # Phase 2: every non-empty in-progress trajectory is emitted as truncated.
            now = time.time()
            emits: list[tuple[Actor, Trajectory]] = []
            by_store: dict[int, tuple[TrajectoryStore, list[Actor]]] = {}
            for actor in self._actors.values():
                if actor.store is not None:
                    by_store.setdefault(id(actor.store), (actor.store, []))[1].append(actor)
            for store, members in by_store.values():
                emits.extend(store.take_many(members, terminal=False, truncated=True, final_obs=None, now=now))
            await self._deliver(emits)
            for actor in self._actors.values():
                actor.outbox.close()
            for actor in [*self._actors.values(), *self._retired]:
                if not actor.done.is_set():
                    await actor.done.wait()
            # Phase 3: sinks drain and close.
            for sink in self._sinks:
                await sink.aclose()
        if scope.cancelled_caught:
            # Steps handed to actor tasks but not through every sink, and steps still in progress
            # if the deadline passed before they could even be flushed.
            lost = sum(max(a.pending_steps, 0) for a in [*self._actors.values(), *self._retired])
            lost += sum(int(a.store.pos[a.slot]) for a in self._actors.values() if a.store is not None)
            if lost:
                self._count_dropped(lost)
            logger.error("agent shutdown passed its %.3g s grace period; %d steps were not delivered",
                         self._grace, lost)



def _queue_depth_callback(ref: weakref.ref[Agent]) -> Callable[[CallbackOptions], Iterable[Observation]]:
    """An observable-gauge callback reporting router queue depths (the meter outlives the agent)."""

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        from opentelemetry.metrics import Observation

        agent = ref()
        if agent is None or agent.closed:
            return []
        return [Observation(r.send.statistics().current_buffer_used, {ATTR_ROUTER: r.index})
                for r in list(agent._routers)]

    return observe


def _unwrap(eg: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The only exception in the nursery's group (itself a group if the body raised one), or None."""
    return eg.exceptions[0] if len(eg.exceptions) == 1 else None


@asynccontextmanager
async def open_agent(
    model: ModelModule | None = None,
    *,
    actors: int = 0,
    model_mode: ModelMode = "independent",
    routers: int = 1,
    max_traj_length: int = 1000,
    sinks: Sequence[TrajectorySink] = (),
    device: str = "cpu",
    seed: int | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    shutdown_grace: float = 5.0,
) -> AsyncIterator[Agent]:
    """Run an :class:`Agent` for the duration of the ``async with`` block.

    Args:
        model: Default model for new actors (validated first).
        actors: Actors to create at start, with ``model``.
        model_mode: ``"independent"`` (one hot-swappable model per actor) or ``"shared"`` (one
            per device, shared by every actor on it).
        routers: Routers for dynamically batched single-actor requests (at least 1).
        max_traj_length: Longest trajectory; a longer episode is emitted in pieces (truncated,
            same episode number).
        sinks: Where trajectories go. Each is started in the agent's nursery and closed at exit.
        device: Default device of new actors.
        seed: Seed of the agent's random generator (the same seed and the same inline calls
            give the same actions).
        tracer_provider, meter_provider: OpenTelemetry providers (default: the global ones, as
            they are when the agent opens). Without an SDK, telemetry costs nothing.
        shutdown_grace: Seconds the shutdown may take (finishing queued requests, flushing
            trajectories, closing sinks) before the rest is abandoned and counted as dropped.

    Leaving the block shuts the agent down gracefully (``docs/cancellation.md``). If the body
    raised, that exception propagates as it is (not wrapped in an ExceptionGroup) when it is the
    only one; otherwise a ``BaseExceptionGroup`` of all of them.

    Raises:
        ConfigError: a bad argument.
        ModelError, BackendUnavailableError: ``model`` cannot serve on ``device``.

    .. versionadded:: 0.1
    """
    if model_mode not in ("independent", "shared"):
        raise ConfigError(f"model_mode must be 'independent' or 'shared', got {model_mode!r}")
    for name, value, low in (("actors", actors, 0), ("routers", routers, 1), ("max_traj_length", max_traj_length, 1)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if not isinstance(shutdown_grace, int | float) or not shutdown_grace > 0 or math.isnan(shutdown_grace):
        raise ConfigError(f"shutdown_grace must be a positive number of seconds, got {shutdown_grace!r}")
    if model is not None and not isinstance(model, ModelModule):
        raise ConfigError(f"model must be a relayrl.ModelModule, got {type(model).__name__}")
    sink_list = list(sinks)
    from ._sinks import TrajectorySink

    for sink in sink_list:
        if not isinstance(sink, TrajectorySink):
            raise ConfigError(f"sinks must be relayrl.sinks.TrajectorySink instances, got {type(sink).__name__}")
    telemetry = Telemetry.create(tracer_provider, meter_provider)
    try:
        async with trio.open_nursery() as nursery:
            agent = Agent(nursery=nursery, model=model, model_mode=model_mode, max_traj_length=int(max_traj_length),
                          sinks=sink_list, device=device, seed=seed, telemetry=telemetry,
                          shutdown_grace=float(shutdown_grace))
            if telemetry.metering:
                telemetry.meter.create_observable_gauge(
                    METRIC_QUEUE_DEPTH, callbacks=[_queue_depth_callback(weakref.ref(agent))], unit="{request}",
                    description="requests queued per router")
            try:
                for sink in sink_list:
                    await nursery.start(agent._background, sink.run, name=f"relayrl sink {sink!r}")
                for _ in range(int(routers)):
                    await agent._start_router()
                if model is not None and model_mode == "shared":
                    loaded = {device: await agent._load(model, device)}
                    cell = agent._shared_cells[device] = ModelCell(device)
                    agent._install([cell], model, loaded)
                    agent._n_refreshes += 1
                elif model is not None:
                    await agent._load(model, device)  # fail fast even with actors=0
                if actors:
                    await agent.new_actors(int(actors))
                yield agent
            finally:
                await agent._shutdown()
                agent._cancel_background()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as eg:
        only = _unwrap(eg)
        if only is None:
            raise
        # Re-raise the only exception as it is, keeping its own context (not the group).
        context = only.__context__
        del eg
        try:
            raise only
        finally:
            only.__context__ = context
            del only
