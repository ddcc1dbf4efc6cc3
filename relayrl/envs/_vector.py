"""One vector-environment interface over gymnasium and PettingZoo environments.

Every environment is seen as ``num_slots`` *slots*: one per vector-env index for single-agent
gymnasium environments, one per ``(env index, agent id)`` for PettingZoo parallel environments.
Each slot is one actor of the agent. :meth:`VecEnv.step` takes one action row per slot and
returns an :class:`EnvStep` with the same-step semantics whatever the environment does natively:

* ``reward[s]``, ``terminated[s]`` and ``truncated[s]`` belong to the action slot ``s`` just took;
* when a slot's episode ended (``terminated | truncated``), ``final_obs[s]`` is the observation
  after its last step (for bootstrapping) and ``obs[s]`` is already the first observation of the
  next episode, unless ``active[s]`` is False: then the slot takes no action at the next step
  (a gymnasium ``NEXT_STEP`` autoreset is pending, or a PettingZoo agent is dead until the
  episode of its environment ends) and the row it gets back from that step carries no reward.

gymnasium and PettingZoo are imported lazily (inside functions), so ``import relayrl.envs`` is light.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Literal, Self, TypeAlias

import attrs
import numpy as np
import numpy.typing as npt

from .._errors import ConfigError, ObservationError
from .._spaces import Box, Discrete, Space
from ._spaces_codec import ActionCodec, ObsCodec, action_codec, obs_codec

__all__ = ["EnvStep", "GymVecEnv", "ParallelVecEnv", "VecEnv", "Vectorization", "make"]

Array = npt.NDArray[Any]
Vectorization: TypeAlias = Literal["auto", "vector_entry_point", "sync", "async"]
_VECTORIZATIONS = ("auto", "vector_entry_point", "sync", "async")
_EMPTY_F = np.zeros(0, dtype=np.float64)
_EMPTY_I = np.zeros(0, dtype=np.int64)


@attrs.define(eq=False, kw_only=True)
class EnvStep:
    """What :meth:`VecEnv.reset` and :meth:`VecEnv.step` return; every array has one row per slot.

    .. versionadded:: 0.1
    """

    #: Observations ``[S, *obs_shape]`` float32 (the next observation of each active slot).
    obs: Array
    #: Rewards ``[S]`` float32 for the action each slot just took (0 for slots that did not act).
    reward: Array
    #: ``[S]`` bool: the slot's episode ended in a terminal state at this step.
    terminated: Array
    #: ``[S]`` bool: the slot's episode was cut short (time limit) at this step (never both flags).
    truncated: Array
    #: ``[S, *obs_shape]`` observations after the last step of slots that ended, or None if none ended.
    final_obs: Array | None = None
    #: ``[S]`` bool: the slots that take an action at the next step; None means all of them.
    active: Array | None = None
    #: ``[S, mask_dim]`` bool action masks (True = allowed), or None when the env provides none.
    mask: Array | None = None
    #: ``[S, *state_shape]`` float32 global state (multi-agent environments only), else None.
    state: Array | None = None
    #: Returns of the episodes that finished at this step (multi-agent: mean per-agent return).
    episode_returns: Array = _EMPTY_F
    #: Lengths (environment steps) of the episodes that finished at this step.
    episode_lengths: Array = _EMPTY_I
    #: Environment transitions this step represents (slots that acted; envs stepped for multi-agent).
    env_steps: int = 0


class VecEnv(abc.ABC):
    """A batch of environments seen as slots (one actor each); see the module docstring.

    Use it as a context manager (or call :meth:`close`) to close the underlying environments.

    .. versionadded:: 0.1
    """

    #: Number of environment copies.
    num_envs: int
    #: Number of slots (actors): ``num_envs`` or ``num_envs * len(agent_ids)``.
    num_slots: int
    #: Whether the slots are PettingZoo agents.
    multi_agent: bool
    #: The possible agents of one environment (``("agent",)`` for single-agent environments).
    agent_ids: tuple[str, ...]
    #: A label per slot, ``"3"`` or ``"3/agent_1"`` (recorded as ``Trajectory.env_id``).
    slot_labels: tuple[str, ...]
    #: Env index of each slot, ``[S]`` int64.
    slot_env: Array
    #: Shape of the global state (multi-agent), or None.
    state_shape: tuple[int, ...] | None = None
    #: The reward threshold at which the task counts as solved, or None.
    reward_threshold: float | None = None
    #: The environment's name (gymnasium id or callable name).
    name: str = ""
    #: Seed used by the first :meth:`reset` when it is called without one.
    seed: int | None = None
    _obs: ObsCodec
    _act: ActionCodec

    @property
    def observation_space(self) -> Box:
        """The observation space of one slot as the agent sees it (a float32 Box)."""
        return self._obs.space

    @property
    def action_space(self) -> Space:
        """The action space of one slot."""
        return self._act.space

    @property
    def mask_dim(self) -> int:
        """Width of an action mask row (the action space's ``flat_dim``)."""
        return int(self._act.space.flat_dim)

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> EnvStep:
        """Reset every environment; the same ``seed`` gives the same episodes.

        ``seed=None`` uses :attr:`seed` on the first reset and continues the random streams after.
        """

    @abc.abstractmethod
    def step(self, actions: Any) -> EnvStep:
        """Apply one action row per slot (rows of inactive slots are ignored).

        Raises:
            ObservationError: ``actions`` has the wrong shape or dtype, or a discrete action is out of range.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Close the underlying environments."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.name!r} num_envs={self.num_envs} slots={self.num_slots} "
                f"obs={self.observation_space.shape} act={self.action_space}>")


def _info_mask(info: dict[str, Any], n: int, width: int) -> Array | None:
    """Masks from a gymnasium vector info dict (``action_mask`` plus its ``_action_mask`` flags)."""
    raw = info.get("action_mask")
    if raw is None:
        return None
    m = np.asarray(raw)
    if m.dtype == object:
        out = np.ones((n, width), dtype=bool)
        for i, row in enumerate(m):
            if row is not None:
                out[i] = np.asarray(row, dtype=bool).reshape(width)
        return out
    try:
        out = m.astype(bool).reshape(n, width)
    except ValueError as exc:
        raise ObservationError(f"info['action_mask'] of shape {m.shape} does not fit {n} envs x {width} actions") \
            from exc
    has = info.get("_action_mask")
    if has is not None:
        out[~np.asarray(has, dtype=bool)] = True
    return out


class GymVecEnv(VecEnv):
    """A gymnasium vector environment (any autoreset mode) behind the :class:`VecEnv` interface.

    ``NEXT_STEP`` (gymnasium's default, and the native CartPole vector env's only mode): a slot
    whose episode ended is inactive for one step while the env resets it. ``SAME_STEP``: the
    final observation comes from ``info["final_obs"]``. ``DISABLED``: ended envs are reset here
    with ``reset(options={"reset_mask": ...})``.

    .. versionadded:: 0.1
    """

    multi_agent = False
    agent_ids = ("agent",)

    def __init__(self, env: Any, *, name: str = "", seed: int | None = None,
                 reward_threshold: float | None = None) -> None:
        from gymnasium.vector import AutoresetMode

        self.env = env
        self.num_envs = int(env.num_envs)
        self.num_slots = self.num_envs
        self.slot_labels = tuple(str(i) for i in range(self.num_envs))
        self.slot_env = np.arange(self.num_envs, dtype=np.int64)
        self.name = name
        self.seed = seed
        self.reward_threshold = reward_threshold
        self._obs = obs_codec(env.single_observation_space)
        self._act = action_codec(env.single_action_space)
        mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        #: "next_step", "same_step" or "disabled".
        self.autoreset_mode: str = {AutoresetMode.NEXT_STEP: "next_step", AutoresetMode.SAME_STEP: "same_step",
                                    AutoresetMode.DISABLED: "disabled"}[AutoresetMode(mode)]
        self._pending: Array | None = None
        self._ret = np.zeros(self.num_envs, dtype=np.float64)
        self._len = np.zeros(self.num_envs, dtype=np.int64)
        self._reset_done = False
        self._closed = False

    def reset(self, seed: int | None = None) -> EnvStep:
        if seed is None and not self._reset_done:
            seed = self.seed
        obs, info = self.env.reset(seed=seed)
        self._reset_done = True
        self._pending = None
        self._ret[:] = 0.0
        self._len[:] = 0
        n = self.num_envs
        return EnvStep(obs=self._obs.encode(obs), reward=np.zeros(n, np.float32), terminated=np.zeros(n, bool),
                       truncated=np.zeros(n, bool), mask=_info_mask(info, n, self.mask_dim))

    def step(self, actions: Any) -> EnvStep:
        n = self.num_envs
        pending = self._pending
        if pending is not None:
            actions = np.array(actions, copy=True)
            if actions.shape[:1] == (n,):
                actions[pending] = self._act.noop
        native = self._act.decode(actions, n)
        obs, reward, terminated, truncated, info = self.env.step(native)
        reward = np.asarray(reward, dtype=np.float32)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool) & ~terminated
        enc = self._obs.encode(obs)
        mask = _info_mask(info, n, self.mask_dim)
        if pending is not None:
            # These envs were reset by this step: nothing they return belongs to an action.
            reward[pending] = 0.0
            terminated[pending] = False
            truncated[pending] = False
            acted = ~pending
            self._len += acted
            env_steps = int(acted.sum())
        else:
            self._len += 1
            env_steps = n
        self._ret += reward
        done = terminated | truncated
        final_obs: Array | None = None
        active: Array | None = None
        self._pending = None
        returns, lengths = _EMPTY_F, _EMPTY_I
        if done.any():
            idx = np.flatnonzero(done)
            returns, lengths = self._ret[idx].copy(), self._len[idx].copy()
            self._ret[idx] = 0.0
            self._len[idx] = 0
            final_obs = np.zeros_like(enc)
            if self.autoreset_mode == "next_step":
                final_obs[idx] = enc[idx]
                active = ~done
                self._pending = done
            elif self.autoreset_mode == "same_step":
                raw = info.get("final_obs")
                if raw is None:
                    raise ConfigError(f"{self.name}: a SAME_STEP vector env returned no info['final_obs']")
                for i in idx:
                    final_obs[i] = self._obs.encode_one(raw[i])
            else:  # disabled: reset the ended envs ourselves
                final_obs[idx] = enc[idx]
                robs, rinfo = self.env.reset(options={"reset_mask": done})
                renc = self._obs.encode(robs)
                enc[idx] = renc[idx]
                rmask = _info_mask(rinfo, n, self.mask_dim)
                if rmask is not None:
                    mask = np.ones((n, self.mask_dim), dtype=bool) if mask is None else mask
                    mask[idx] = rmask[idx]
        return EnvStep(obs=enc, reward=reward, terminated=terminated, truncated=truncated, final_obs=final_obs,
                       active=active, mask=mask, episode_returns=returns, episode_lengths=lengths,
                       env_steps=env_steps)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.env.close()


def _unwrap_obs_space(space: Any) -> tuple[Any, bool]:
    """PettingZoo classic envs observe ``{"observation": ..., "action_mask": ...}``."""
    if type(space).__name__ == "Dict" and "observation" in space.spaces and "action_mask" in space.spaces:
        return space.spaces["observation"], True
    return space, False


class ParallelVecEnv(VecEnv):
    """``num_envs`` PettingZoo parallel environments, one slot per ``(env, possible agent)``.

    Every agent must have the same observation and action space (one model serves all slots).
    Agents may finish at different times: a finished agent's slot is inactive until every agent
    of its environment is done, then the environment is reset and all its slots act again.
    Masks come from ``{"observation", "action_mask"}`` observation dicts or ``info["action_mask"]``.
    The global state (for MAPPO) is ``env.state()`` when the env implements it, else the
    concatenation of all agents' observations in ``possible_agents`` order (zeros for dead agents).
    Episode returns are the mean over ``possible_agents`` of each agent's return.

    .. versionadded:: 0.1
    """

    multi_agent = True

    def __init__(self, envs: Sequence[Any], *, name: str = "", seed: int | None = None,
                 reward_threshold: float | None = None) -> None:
        if not envs:
            raise ConfigError("ParallelVecEnv needs at least one environment")
        self.envs = list(envs)
        first = self.envs[0]
        self.agent_ids = tuple(str(a) for a in first.possible_agents)
        self._agents = list(first.possible_agents)
        if not self._agents:
            raise ConfigError(f"{name}: the environment has no possible_agents")
        a = len(self._agents)
        self.num_envs = len(self.envs)
        self.num_slots = self.num_envs * a
        self.slot_labels = tuple(f"{i}/{ag}" for i in range(self.num_envs) for ag in self.agent_ids)
        self.slot_env = np.repeat(np.arange(self.num_envs, dtype=np.int64), a)
        self._slot = {ag: j for j, ag in enumerate(self._agents)}
        self.name = name
        self.seed = seed
        self.reward_threshold = reward_threshold
        obs_spaces = [_unwrap_obs_space(first.observation_space(ag)) for ag in self._agents]
        self._dict_obs = obs_spaces[0][1]
        codecs = [obs_codec(s) for s, _ in obs_spaces]
        acts = [action_codec(first.action_space(ag)) for ag in self._agents]
        for ag, c, ac in zip(self._agents, codecs, acts, strict=True):
            if c.space != codecs[0].space or ac.space != acts[0].space:
                raise ConfigError(f"{name}: agent {ag!r} has observation space {c.space} and action space "
                                  f"{ac.space}, but {self._agents[0]!r} has {codecs[0].space} and {acts[0].space}; "
                                  "all agents must share one observation and one action space")
        self._obs = codecs[0]
        self._act = acts[0]
        # "env": env.state(); "concat": all agents' observations; "probe": decide at the first reset.
        self._state_mode = "concat"
        self.state_shape = (a * self._obs.space.flat_dim,)
        if callable(getattr(first, "state", None)):
            state_space = getattr(first, "state_space", None)
            if state_space is not None:
                self._state_mode = "env"
                self.state_shape = tuple(int(s) for s in np.atleast_1d(state_space.shape))
            else:
                self._state_mode = "probe"
        obs_shape = self._obs.space.shape
        self._buf_obs = np.zeros((self.num_slots, *obs_shape), dtype=np.float32)
        self._alive = np.zeros(self.num_slots, dtype=bool)
        self._live = [False] * self.num_slots  # the same as _alive, as a list (cheap per-slot access)
        self._ret = [0.0] * self.num_slots
        self._len = [0] * self.num_envs
        self._mask: Array | None = None
        self._reset_done = False
        self._closed = False

    def _split(self, raw: Any, info: dict[str, Any] | None) -> tuple[Any, Array | None]:
        """(native observation, mask or None) of one agent."""
        if self._dict_obs:
            return raw["observation"], np.asarray(raw["action_mask"], dtype=bool)
        m = None if not info else info.get("action_mask")
        return raw, None if m is None else np.asarray(m, dtype=bool)

    def _encode(self, raws: list[Any]) -> Array:
        try:
            return self._obs.encode(np.stack([np.asarray(r) for r in raws]))
        except (ValueError, IndexError) as exc:
            raise ObservationError(f"{self.name}: observations do not fit {self._obs.space}: {exc}") from exc

    def _set_mask(self, s: int, m: Array | None) -> None:
        if m is None:
            if self._mask is not None:
                self._mask[s] = True
            return
        if self._mask is None:
            self._mask = np.ones((self.num_slots, self.mask_dim), dtype=bool)
        try:
            self._mask[s] = m.reshape(self.mask_dim)
        except ValueError as exc:
            raise ObservationError(f"{self.name}: action mask of shape {m.shape} for slot {self.slot_labels[s]} "
                                   f"does not fit {self.mask_dim} actions") from exc

    def _reset_env(self, i: int, seed: int | None, rows: list[tuple[int, Any, Array | None]]) -> None:
        """Reset env ``i``; its slots' first observations are appended to ``rows``."""
        a = len(self._agents)
        obs, infos = self.envs[i].reset(seed=seed)
        infos = infos or {}
        base = i * a
        live = self._live
        for j in range(a):
            live[base + j] = False
            self._ret[base + j] = 0.0
        self._len[i] = 0
        for ag, raw in obs.items():
            s = base + self._slot[ag]
            o, m = self._split(raw, infos.get(ag))
            rows.append((s, o, m))
            live[s] = True

    def _write_rows(self, rows: list[tuple[int, Any, Array | None]]) -> None:
        if rows:
            idx = [s for s, _, _ in rows]
            self._buf_obs[idx] = self._encode([o for _, o, _ in rows])
            for s, _, m in rows:
                self._set_mask(s, m)
        self._alive = np.array(self._live, dtype=bool)

    def _states(self) -> Array:
        a = len(self._agents)
        if self._state_mode == "probe":
            try:
                probe = np.asarray(self.envs[0].state(), dtype=np.float32)
            except (NotImplementedError, AttributeError, TypeError):
                # PettingZoo's base raises NotImplementedError; its wrappers of envs without state() fail oddly.
                self._state_mode = "concat"
            else:
                self._state_mode = "env"
                self.state_shape = tuple(probe.shape)
        if self._state_mode == "env":
            rows = np.stack([np.asarray(env.state(), dtype=np.float32) for env in self.envs])
            if rows.shape[1:] != self.state_shape:
                raise ObservationError(f"{self.name}: state() returned shape {rows.shape[1:]}, "
                                       f"expected {self.state_shape}")
        else:
            flat = self._buf_obs.reshape(self.num_envs, a, -1) * self._alive.reshape(self.num_envs, a, 1)
            rows = flat.reshape(self.num_envs, -1).astype(np.float32, copy=False)
        return np.repeat(rows, a, axis=0)

    def reset(self, seed: int | None = None) -> EnvStep:
        if seed is None and not self._reset_done:
            seed = self.seed
        self._reset_done = True
        self._mask = None
        self._buf_obs[:] = 0.0
        rows: list[tuple[int, Any, Array | None]] = []
        for i in range(self.num_envs):
            self._reset_env(i, None if seed is None else seed + i, rows)
        self._write_rows(rows)
        s = self.num_slots
        return EnvStep(obs=self._buf_obs.copy(), reward=np.zeros(s, np.float32), terminated=np.zeros(s, bool),
                       truncated=np.zeros(s, bool), active=None if self._alive.all() else self._alive.copy(),
                       mask=None if self._mask is None else self._mask.copy(), state=self._states())

    def step(self, actions: Any) -> EnvStep:
        a = len(self._agents)
        n_slots = self.num_slots
        live = self._live
        if not all(live):
            actions = np.array(actions, copy=True)
            if actions.shape[:1] == (n_slots,):
                actions[~self._alive] = self._act.noop
        native = self._act.decode(actions, n_slots)
        acts: list[Any] = native.tolist() if isinstance(self._act.space, Discrete) else list(native)
        reward = [0.0] * n_slots
        terminated = [False] * n_slots
        truncated = [False] * n_slots
        finals: list[tuple[int, Any]] = []  # (slot, native final observation or None)
        rows: list[tuple[int, Any, Array | None]] = []  # next observations to write
        returns: list[float] = []
        lengths: list[int] = []
        agents = self._agents
        ret = self._ret
        for i, env in enumerate(self.envs):
            base = i * a
            obs, rew, term, trunc, infos = env.step(
                {ag: acts[base + j] for j, ag in enumerate(agents) if live[base + j]})
            infos = infos or {}
            self._len[i] += 1
            env_rows: list[tuple[int, Any, Array | None]] = []
            for j, ag in enumerate(agents):
                s = base + j
                if not live[s]:
                    continue
                r = float(rew.get(ag, 0.0))
                reward[s] = r
                ret[s] += r
                raw = obs.get(ag)
                t, u = bool(term.get(ag, False)), bool(trunc.get(ag, False))
                if raw is None and not (t or u):
                    u = True  # the env dropped a live agent without saying why: cut short
                if t or u:
                    terminated[s] = t
                    truncated[s] = u and not t
                    finals.append((s, None if raw is None else self._split(raw, None)[0]))
                    live[s] = False
                else:
                    o, m = self._split(raw, infos.get(ag))
                    env_rows.append((s, o, m))
            if env_rows and getattr(env, "agents", True):
                rows += env_rows
                continue
            for s, o, _ in env_rows:  # the env ended while these agents were live: truncated
                truncated[s] = True
                finals.append((s, o))
                live[s] = False
            returns.append(sum(ret[base:base + a]) / a)
            lengths.append(int(self._len[i]))
            self._reset_env(i, None, rows)
        final_obs: Array | None = None
        if finals:
            final_obs = np.zeros_like(self._buf_obs)
            have = [(s, o) for s, o in finals if o is not None]
            if have:
                final_obs[[s for s, _ in have]] = self._encode([o for _, o in have])
            self._buf_obs[[s for s, _ in finals]] = 0.0
        self._write_rows(rows)
        active = None if all(live) else self._alive.copy()
        return EnvStep(obs=self._buf_obs.copy(), reward=np.array(reward, np.float32),
                       terminated=np.array(terminated, bool), truncated=np.array(truncated, bool),
                       final_obs=final_obs, active=active, mask=None if self._mask is None else self._mask.copy(),
                       state=self._states(),
                       episode_returns=np.array(returns, dtype=np.float64) if returns else _EMPTY_F,
                       episode_lengths=np.array(lengths, dtype=np.int64) if lengths else _EMPTY_I,
                       env_steps=self.num_envs)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for env in self.envs:
                close = getattr(env, "close", None)
                if callable(close):
                    close()


# --------------------------------------------------------------------------------------------- make


def _is_parallel_env(obj: Any) -> bool:
    return (hasattr(obj, "possible_agents") and callable(getattr(obj, "observation_space", None))
            and callable(getattr(obj, "action_space", None)) and hasattr(obj, "step") and hasattr(obj, "reset"))


def _is_aec_env(obj: Any) -> bool:
    return hasattr(obj, "possible_agents") and callable(getattr(obj, "agent_iter", None)) \
        and callable(getattr(obj, "last", None))


def _threshold_of(*objs: Any) -> float | None:
    for obj in objs:
        value = getattr(obj, "reward_threshold", None)
        if value is not None:
            return float(value)
        spec = getattr(obj, "spec", None)
        value = getattr(spec, "reward_threshold", None) if spec is not None else None
        if value is not None:
            return float(value)
    return None


def _constant(env: Any) -> Callable[[], Any]:
    return lambda: env


def _same_step_sync(fns: list[Callable[[], Any]]) -> Any:
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)


def _from_gym_id(env_id: str, num_envs: int, seed: int | None, vectorization: str,
                 env_kwargs: dict[str, Any]) -> GymVecEnv:
    import gymnasium
    from gymnasium.vector import AutoresetMode

    try:
        spec = gymnasium.spec(env_id)
    except gymnasium.error.Error as exc:
        raise ConfigError(f"unknown environment id {env_id!r}: {exc}") from exc
    mode = vectorization
    if mode == "auto":
        mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
    if mode == "vector_entry_point" and spec.vector_entry_point is None:
        raise ConfigError(f"{env_id} has no vector entry point; use vectorization='sync'")
    vector_kwargs = {} if mode == "vector_entry_point" else {"autoreset_mode": AutoresetMode.SAME_STEP}
    try:
        env = gymnasium.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode, vector_kwargs=vector_kwargs,
                                 **env_kwargs)
    except TypeError as exc:
        raise ConfigError(f"cannot make {env_id!r} with env_kwargs {env_kwargs!r}: {exc}") from exc
    except gymnasium.error.Error as exc:
        raise ConfigError(f"cannot make {env_id!r}: {exc}") from exc
    return GymVecEnv(env, name=env_id, seed=seed, reward_threshold=spec.reward_threshold)


def _from_factory(factory: Callable[..., Any], name: str, num_envs: int, seed: int | None,
                  env_kwargs: dict[str, Any]) -> VecEnv:
    import gymnasium

    def call() -> Any:
        try:
            return factory(**env_kwargs)
        except TypeError as exc:
            raise ConfigError(f"cannot call {name} with env_kwargs {env_kwargs!r}: {exc}") from exc

    first = call()
    threshold = _threshold_of(first, factory)
    if isinstance(first, gymnasium.vector.VectorEnv):
        if num_envs not in (1, first.num_envs):
            first.close()
            raise ConfigError(f"{name} returned a vector env of {first.num_envs} envs, but num_envs={num_envs}")
        return GymVecEnv(first, name=name, seed=seed, reward_threshold=threshold)
    if isinstance(first, gymnasium.Env):
        envs = [first, *(call() for _ in range(num_envs - 1))]
        return GymVecEnv(_same_step_sync([_constant(e) for e in envs]), name=name, seed=seed,
                         reward_threshold=threshold)
    if _is_aec_env(first):
        raise ConfigError(f"{name} returned a PettingZoo AEC env; relayrl runs parallel envs "
                          "(use the module's parallel_env() or pettingzoo.utils.conversions.aec_to_parallel)")
    if _is_parallel_env(first):
        envs = [first, *(call() for _ in range(num_envs - 1))]
        return ParallelVecEnv(envs, name=name, seed=seed, reward_threshold=threshold)
    raise ConfigError(f"{name} returned {type(first).__name__}, not a gymnasium Env, a gymnasium VectorEnv or a "
                      "PettingZoo ParallelEnv")


def _from_pettingzoo_id(env_id: str, num_envs: int, seed: int | None, env_kwargs: dict[str, Any]) -> VecEnv:
    try:
        import pettingzoo
        from pettingzoo.env_registry.exceptions import PettingZooRegistryError
    except ImportError as exc:
        raise ConfigError(f"'pettingzoo:{env_id}' needs PettingZoo (pip install pettingzoo): {exc}") from exc
    try:
        envs = [pettingzoo.make("parallel", env_id, **env_kwargs) for _ in range(num_envs)]
    except PettingZooRegistryError as exc:
        raise ConfigError(f"unknown PettingZoo environment id {env_id!r}: {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"cannot make PettingZoo {env_id!r} with env_kwargs {env_kwargs!r}: {exc}") from exc
    return ParallelVecEnv(envs, name=f"pettingzoo:{env_id}", seed=seed, reward_threshold=_threshold_of(envs[0]))


def _resolve_callable(spec: str) -> Callable[..., Any] | None:
    """``module:callable`` -> the callable, or None if the module has no such attribute."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"malformed environment {spec!r}: expected 'module:callable' or a gymnasium id")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} for environment {spec!r}: {exc}") from exc
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    if not callable(obj):
        raise ConfigError(f"{spec!r} names a {type(obj).__name__}, not a callable returning an environment")
    fn: Callable[..., Any] = obj
    return fn


def make(env: Any, *, num_envs: int = 1, seed: int | None = None, vectorization: Vectorization = "auto",
         env_kwargs: dict[str, Any] | None = None) -> VecEnv:
    """Build a :class:`VecEnv` from an id, a factory or an environment object.

    ``env`` may be:

    * ``"pettingzoo:<id>"`` (``"pettingzoo:classic/rps-v2"``): ``num_envs`` parallel envs from
      PettingZoo's registry (``pettingzoo.make("parallel", id, **env_kwargs)``);
    * a gymnasium id (``"CartPole-v1"``): vectorised with the env's native vector entry point when
      it has one (``vectorization="auto"``; CartPole's is a numpy vector env, by far the fastest),
      else with a ``SyncVectorEnv`` in ``SAME_STEP`` autoreset mode. ``"async"`` asks for an
      ``AsyncVectorEnv`` (worth it only for slow envs on machines with spare cores);
    * ``"module:callable"`` (or a callable): called ``num_envs`` times with ``env_kwargs`` and
      returning a gymnasium ``Env`` or a PettingZoo ``ParallelEnv`` (or once, returning a gymnasium
      ``VectorEnv``). A ``module:Env-v0`` gymnasium id whose module registers it works too;
    * a gymnasium ``Env``, a gymnasium ``VectorEnv`` or a PettingZoo ``ParallelEnv`` instance
      (``num_envs`` must then be 1 or the vector env's size).

    ``seed`` seeds the first reset (env ``i`` gets ``seed + i``); the same seed gives the same episodes.

    Raises:
        ConfigError: unknown id, unimportable module, missing callable, wrong kind of object, bad
            ``num_envs`` / ``vectorization`` / ``env_kwargs``, or spaces relayrl cannot encode.

    .. versionadded:: 0.1
    """
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ConfigError(f"num_envs must be an int >= 1, got {num_envs!r}")
    if vectorization not in _VECTORIZATIONS:
        raise ConfigError(f"vectorization must be one of {', '.join(_VECTORIZATIONS)}, got {vectorization!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)):
        raise ConfigError(f"seed must be an int or None, got {seed!r}")
    if seed is not None:
        seed = int(seed)
    kwargs = dict(env_kwargs or {})
    if isinstance(env, str):
        if not env:
            raise ConfigError("environment id must be a non-empty string")
        if env.startswith("pettingzoo:"):
            return _from_pettingzoo_id(env.removeprefix("pettingzoo:"), num_envs, seed, kwargs)
        if ":" in env:
            factory = _resolve_callable(env)
            if factory is not None:
                return _from_factory(factory, env, num_envs, seed, kwargs)
        return _from_gym_id(env, num_envs, seed, vectorization, kwargs)
    if isinstance(env, VecEnv):
        return env
    import gymnasium

    if isinstance(env, gymnasium.vector.VectorEnv):
        if num_envs not in (1, env.num_envs):
            raise ConfigError(f"the vector env has {env.num_envs} envs, but num_envs={num_envs}")
        return GymVecEnv(env, name=_name_of(env), seed=seed, reward_threshold=_threshold_of(env))
    if isinstance(env, gymnasium.Env):
        if num_envs != 1:
            raise ConfigError("an environment instance cannot be copied: pass an id or a factory for num_envs > 1")
        return GymVecEnv(_same_step_sync([lambda: env]), name=_name_of(env), seed=seed,
                         reward_threshold=_threshold_of(env))
    if _is_aec_env(env):
        raise ConfigError("PettingZoo AEC envs are not supported; pass a parallel env "
                          "(pettingzoo.utils.conversions.aec_to_parallel)")
    if _is_parallel_env(env):
        if num_envs != 1:
            raise ConfigError("an environment instance cannot be copied: pass a factory for num_envs > 1")
        return ParallelVecEnv([env], name=_name_of(env), seed=seed, reward_threshold=_threshold_of(env))
    if callable(env):
        return _from_factory(env, getattr(env, "__qualname__", repr(env)), num_envs, seed, kwargs)
    raise ConfigError(f"cannot make an environment from {type(env).__name__}: pass a gymnasium id, 'module:callable', "
                      "a callable, a gymnasium Env or VectorEnv, or a PettingZoo ParallelEnv")


def _name_of(env: Any) -> str:
    spec = getattr(env, "spec", None)
    env_id = getattr(spec, "id", None)
    if env_id:
        return str(env_id)
    meta = getattr(env, "metadata", None)
    if isinstance(meta, dict) and meta.get("name"):
        return str(meta["name"])
    return type(env).__name__
