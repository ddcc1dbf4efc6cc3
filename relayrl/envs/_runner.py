"""EnvRunner: drive a :class:`~relayrl.envs.VecEnv` through an agent, one batched request per step."""

from __future__ import annotations

import collections
import math
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import numpy.typing as npt
import trio

from .._errors import AgentClosedError, ConfigError
from ._vector import EnvStep, VecEnv

if TYPE_CHECKING:
    from .._agent import Agent

__all__ = ["EnvRunner", "RunnerStatistics"]

Array = npt.NDArray[Any]

#: Seconds a cancelled run may spend ending its open trajectories.
CUT_GRACE = 2.0


@attrs.frozen(kw_only=True)
class RunnerStatistics:
    """A snapshot of an :class:`EnvRunner`'s counters (:meth:`EnvRunner.statistics`).

    .. versionadded:: 0.1
    """

    #: Environment transitions stepped (for multi-agent envs: env steps, not agent steps).
    steps: int = 0
    #: Actions requested from the agent (one per acting slot and step).
    agent_steps: int = 0
    #: Episodes finished.
    episodes: int = 0
    #: Mean return of the last ``window`` episodes (NaN before the first one).
    mean_return: float = math.nan
    #: Mean length of the last ``window`` episodes (NaN before the first one).
    mean_length: float = math.nan
    #: Return of the most recent episode (NaN before the first one).
    last_return: float = math.nan
    #: Seconds spent inside :meth:`EnvRunner.run`.
    elapsed: float = 0.0
    #: ``steps / elapsed``.
    steps_per_second: float = 0.0


class EnvRunner:
    """Steps a vector environment with actions from an :class:`~relayrl.Agent`.

    One actor per slot (per env index, or per ``(env, agent id)`` for PettingZoo envs). Each
    step makes ONE batched :meth:`~relayrl.Agent.request_action` call for all slots that act
    (one forward for all), passes each slot's reward with its next request (so it is credited
    to the step that earned it), steps the environment, and calls
    :meth:`~relayrl.Agent.flag_last_action` for the slots whose episode ended: terminated
    episodes end with a terminal step, truncated ones with ``truncated=True`` and the final
    observation for bootstrapping. PettingZoo envs pass their global state as
    ``extras={"state": ...}`` (recorded in ``Trajectory.extras["state"]``).

    Args:
        env: The environments (see :func:`relayrl.envs.make`).
        agent: An open agent whose model fits ``env.observation_space`` / ``env.action_space``.
        ids: Existing actor ids, one per slot (default: ``agent.new_actors(env.num_slots, env_ids=slot labels)``
            at the first run, so every trajectory's ``env_id`` names its slot).
        deterministic: Take the most likely actions (evaluation).
        seed: Seed of the first reset (default: the env's ``seed``).
        window: Episodes averaged by :attr:`RunnerStatistics.mean_return`.

    .. versionadded:: 0.1
    """

    def __init__(self, env: VecEnv, agent: Agent, *, ids: list[uuid.UUID] | None = None, deterministic: bool = False,
                 seed: int | None = None, window: int = 100) -> None:
        if not isinstance(env, VecEnv):
            raise ConfigError(f"EnvRunner needs a relayrl.envs.VecEnv (from relayrl.envs.make), "
                              f"got {type(env).__name__}")
        if ids is not None and len(ids) != env.num_slots:
            raise ConfigError(f"EnvRunner needs one actor id per slot ({env.num_slots}), got {len(ids)}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConfigError(f"window must be an int >= 1, got {window!r}")
        self.env = env
        self.agent = agent
        self.deterministic = bool(deterministic)
        self._seed = seed
        self._ids: list[uuid.UUID] | None = list(ids) if ids is not None else None
        self._cur: EnvStep | None = None
        self._reward = np.zeros(env.num_slots, dtype=np.float32)
        self._open = np.zeros(env.num_slots, dtype=bool)  # slots with an open trajectory
        self._returns: collections.deque[float] = collections.deque(maxlen=window)
        self._lengths: collections.deque[int] = collections.deque(maxlen=window)
        self._steps = 0
        self._agent_steps = 0
        self._episodes = 0
        self._elapsed = 0.0
        self._mean_return = math.nan
        self._mean_length = math.nan
        self._running = False
        self._sum_return = 0.0  # sums over the window, kept incrementally
        self._sum_length = 0
        self._last_return = math.nan

    @property
    def actor_ids(self) -> list[uuid.UUID]:
        """The actor of each slot (empty before the first run when the runner creates them)."""
        return list(self._ids or [])

    def slot_of(self) -> dict[uuid.UUID, str]:
        """Map each actor id to its slot label (``"3"`` or ``"3/agent_1"``)."""
        return dict(zip(self._ids or [], self.env.slot_labels, strict=False))

    def statistics(self) -> RunnerStatistics:
        """A snapshot of the counters."""
        return RunnerStatistics(steps=self._steps, agent_steps=self._agent_steps, episodes=self._episodes,
                                mean_return=self._mean_return, mean_length=self._mean_length,
                                last_return=self._last_return, elapsed=self._elapsed,
                                steps_per_second=self._steps / self._elapsed if self._elapsed > 0 else 0.0)

    def _record_episodes(self, returns: Array, lengths: Array) -> None:
        window = self._returns.maxlen or 1
        for r, n in zip(returns.tolist(), lengths.tolist(), strict=True):
            if len(self._returns) == window:
                self._sum_return -= self._returns[0]
                self._sum_length -= self._lengths[0]
            self._returns.append(r)
            self._lengths.append(n)
            self._sum_return += r
            self._sum_length += n
        self._episodes += len(returns)
        self._last_return = float(returns[-1])
        k = len(self._returns)
        self._mean_return = self._sum_return / k
        self._mean_length = self._sum_length / k

    async def run(
        self,
        steps: int | None = None,
        *,
        until: Callable[[RunnerStatistics], bool] | None = None,
        on_episodes: Callable[[Array, Array], None] | None = None,
        cut: bool = True,
    ) -> RunnerStatistics:
        """Step the environments until ``steps`` more env steps are done, ``until`` says stop, or cancellation.

        Args:
            steps: Environment steps to run (None: no limit).
            until: Called with the statistics before every step; returning True stops the run.
            on_episodes: Called with ``(returns, lengths)`` arrays whenever episodes finish.
            cut: At the end, end every open trajectory as truncated (crediting its last reward and
                keeping the current observation as ``final_obs``) so that every recorded step
                reaches the sinks with its reward. With ``cut=False`` the trajectories stay open
                and the next :meth:`run` continues them (the pending rewards are credited then).
                A cancelled or failed run always cuts (within :data:`CUT_GRACE` seconds, shielded);
                a step recorded by the agent whose environment step did not happen gets reward 0.

        Returns:
            The statistics at the end.

        Raises:
            ConfigError: bad ``steps``.
            trio.BusyResourceError: another task is inside :meth:`run`.
            AgentClosedError: the agent closed.
            ObservationError, ModelError: the agent rejected a request (the model does not fit the env).
        """
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise ConfigError(f"steps must be an int >= 0 or None, got {steps!r}")
        if self._running:
            raise trio.BusyResourceError("EnvRunner.run() is already running in another task")
        self._running = True
        try:
            return await self._run(steps, until, on_episodes, cut)
        finally:
            self._running = False

    async def _run(self, steps: int | None, until: Callable[[RunnerStatistics], bool] | None,
                   on_episodes: Callable[[Array, Array], None] | None, cut: bool) -> RunnerStatistics:
        agent = self.agent
        env = self.env
        if self._ids is None:
            self._ids = await agent.new_actors(env.num_slots, env_ids=env.slot_labels)
        if self._cur is None:
            self._cur = env.reset(self._seed)
            self._reward[:] = 0.0
        ids = self._ids
        id_arr = np.empty(len(ids), dtype=object)  # fancy-indexable ids
        id_arr[:] = ids
        target = None if steps is None else self._steps + steps
        deterministic = self.deterministic
        start = time.perf_counter()
        recorded = False  # steps were recorded for the current obs and the env has not been stepped yet
        try:
            while target is None or self._steps < target:
                if until is not None and until(self.statistics()):
                    break
                cur = self._cur
                active = cur.active
                extras = None if cur.state is None else {"state": cur.state}
                if active is None:
                    batch = await agent.request_action(ids, cur.obs, mask=cur.mask, reward=self._reward,
                                                       deterministic=deterministic, extras=extras)
                    recorded = True
                    actions = batch.act
                    self._open[:] = True
                    self._agent_steps += len(ids)
                elif not active.any():
                    # every slot waits for a NEXT_STEP autoreset: step without asking for actions
                    actions = np.zeros((env.num_slots, *env.action_space.shape), dtype=env.action_space.dtype)
                else:
                    idx = np.flatnonzero(active)
                    sub = id_arr[idx].tolist()
                    batch = await agent.request_action(
                        sub, cur.obs[idx], mask=None if cur.mask is None else cur.mask[idx],
                        reward=self._reward[idx], deterministic=deterministic,
                        extras=None if extras is None else {"state": extras["state"][idx]})
                    recorded = True
                    actions = np.zeros((env.num_slots, *batch.act.shape[1:]), dtype=batch.act.dtype)
                    actions[idx] = batch.act
                    self._open[idx] = True
                    self._agent_steps += len(idx)
                nxt = env.step(actions)
                self._cur = nxt
                recorded = False
                self._reward = nxt.reward
                self._steps += nxt.env_steps
                term, trunc = nxt.terminated, nxt.truncated
                if nxt.final_obs is not None:
                    # Credit the last rewards and end the episodes; those rewards are not passed again.
                    self._reward = nxt.reward.copy()
                    t_idx = np.flatnonzero(term)
                    u_idx = np.flatnonzero(trunc)
                    if len(t_idx):
                        await agent.flag_last_action(id_arr[t_idx].tolist(), reward=nxt.reward[t_idx])
                    if len(u_idx):
                        await agent.flag_last_action(id_arr[u_idx].tolist(), reward=nxt.reward[u_idx],
                                                     truncated=True, final_obs=nxt.final_obs[u_idx])
                    ended = term | trunc
                    self._reward[ended] = 0.0
                    self._open[ended] = False
                if len(nxt.episode_returns):
                    self._record_episodes(nxt.episode_returns, nxt.episode_lengths)
                    if on_episodes is not None:
                        on_episodes(nxt.episode_returns, nxt.episode_lengths)
        except BaseException as exc:
            self._elapsed += time.perf_counter() - start
            if not isinstance(exc, AgentClosedError) and not agent.closed:
                with trio.move_on_after(CUT_GRACE, shield=True):
                    await self._cut(zero_last=recorded)
            raise
        self._elapsed += time.perf_counter() - start
        if cut:
            await self._cut(zero_last=False)
        return self.statistics()

    async def _cut(self, *, zero_last: bool) -> None:
        """End every open trajectory as truncated at the current observation."""
        cur = self._cur
        if cur is None or self._ids is None or not self._open.any():
            return
        idx = np.flatnonzero(self._open)
        reward = np.zeros(len(idx), np.float32) if zero_last else self._reward[idx]
        await self.agent.flag_last_action([self._ids[i] for i in idx], reward=reward, truncated=True,
                                          final_obs=cur.obs[idx])
        self._reward[idx] = 0.0
        self._open[idx] = False
