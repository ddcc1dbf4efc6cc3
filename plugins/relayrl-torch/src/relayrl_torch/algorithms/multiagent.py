"""Multi-agent PPO with parameter sharing: IPPO (decentralised critic) and MAPPO (centralised critic).

All agents share one policy (and, for IPPO, one critic), so their observation spaces and action
spaces must be identical. The runner gives each agent its own actor; ``Trajectory.env_id``
carries the agent id. MAPPO's critic reads the environment's global state from
``traj.extras["state"]`` (one row per step: the PettingZoo env's ``state()`` or all agents'
observations concatenated in a fixed order); exported models contain only the actor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import attrs
import numpy as np

from relayrl import ConfigError, ObservationError, Trajectory
from relayrl.spaces import from_gymnasium

from ._common import RunningMeanStd
from .ppo import PPO, PPOConfig, _positive

__all__ = ["IPPO", "IPPOConfig", "MAPPO", "MAPPOConfig", "shared_space"]


def shared_space(space: Any, what: str) -> Any:
    """The one space all agents share: ``space`` itself, or the common value of an ``{agent: space}`` mapping.

    Raises:
        ConfigError: the agents' spaces differ (parameter sharing needs homogeneous agents).
    """
    if not isinstance(space, Mapping):
        return space
    if not space:
        raise ConfigError(f"{what}: the mapping of agents to spaces is empty")
    items = list(space.items())
    first_agent, first = items[0]
    ref = from_gymnasium(first)
    for agent, s in items[1:]:
        if from_gymnasium(s) != ref:
            raise ConfigError(f"{what}: agent {agent!r} has {from_gymnasium(s)!r} but agent {first_agent!r} has "
                              f"{ref!r}; parameter sharing needs identical spaces for every agent")
    return first


@attrs.frozen(kw_only=True)
class IPPOConfig(PPOConfig):
    """IPPO hyperparameters: PPO's, with defaults for small cooperative multi-agent tasks.

    .. versionadded:: 0.1
    """

    #: Parallel environments (each with several agents) the runner should use.
    num_envs: int = attrs.field(default=4, validator=_positive)
    n_steps: int = attrs.field(default=128, validator=_positive)
    lr: float = attrs.field(default=1e-3, validator=_positive)
    total_steps: int | None = attrs.field(default=300_000, validator=_positive)
    ent_coef: float = 0.01
    n_epochs: int = attrs.field(default=5, validator=_positive)
    target_kl: float | None = attrs.field(default=None, validator=_positive)


@attrs.frozen(kw_only=True)
class MAPPOConfig(IPPOConfig):
    """MAPPO hyperparameters: IPPO's plus the critic's input.

    .. versionadded:: 0.1
    """

    #: ``"state"``: the global state only; ``"state+obs"``: the state and the agent's own observation
    #: (the "agent-specific global state" that works best in the MAPPO paper).
    critic_input: Literal["state", "state+obs"] = "state+obs"
    #: Width of the global state (None: taken from the first trajectory).
    state_dim: int | None = attrs.field(default=None, validator=_positive)


class IPPO(PPO):
    """Independent PPO with parameter sharing: one policy and one critic on each agent's own observation.

    ``obs_space`` and ``action_space`` are one space or an ``{agent_id: space}`` mapping of
    identical spaces.

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "ippo"
    config_class: ClassVar[type[Any]] = IPPOConfig
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(
        self,
        obs_space: Any,
        action_space: Any,
        *,
        config: Mapping[str, Any] | Any | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(shared_space(obs_space, "observation spaces"), shared_space(action_space, "action spaces"),
                         config=config, seed=seed)


class MAPPO(IPPO):
    """MAPPO: a shared actor on each agent's observation and a centralised critic on the global state.

    Every trajectory must carry ``extras["state"]`` (``[T, *state_shape]``). A truncated
    trajectory is bootstrapped from the critic's value of its last step (the state after the
    last step is not part of a trajectory). Exported models hold the actor only (no value output).

    .. versionadded:: 0.1
    """

    name: ClassVar[str] = "mappo"
    config_class: ClassVar[type[Any]] = MAPPOConfig
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    critic_rms: RunningMeanStd | None

    def _initial_critic_dim(self) -> int | None:
        self.critic_rms = None
        sd = self._cfg.state_dim
        if sd is None:
            return None
        return int(sd) + (self._obs_dim if self._cfg.critic_input == "state+obs" else 0)

    def _check(self, traj: Trajectory) -> None:
        super()._check(traj)
        state = traj.extras.get("state")
        if state is None:
            raise ObservationError("MAPPO needs the global state in traj.extras['state'] (one row per step)")
        if state.shape[0] != len(traj):
            raise ObservationError(f"traj.extras['state'] has {state.shape[0]} rows, expected {len(traj)}")
        width = int(np.prod(state.shape[1:], dtype=np.int64))
        want = self._state_width()
        if want is not None and width != want:
            raise ObservationError(f"traj.extras['state'] rows have {width} values, expected {want}")

    def _state_width(self) -> int | None:
        if self._critic_dim is None:
            return None
        return self._critic_dim - (self._obs_dim if self._cfg.critic_input == "state+obs" else 0)

    def _critic_input(self, traj: Trajectory) -> Any:
        n = len(traj)
        state = traj.extras["state"].reshape(n, -1).astype(np.float32, copy=False)
        if self._cfg.critic_input == "state":
            return state
        return np.concatenate([state, traj.obs.reshape(n, -1).astype(np.float32, copy=False)], axis=1)

    def _critic_final(self, traj: Trajectory) -> Any:
        return None

    def _normalise_critic(self, x: Any, update: bool) -> Any:
        x = x.astype(np.float64, copy=False)
        if not self._cfg.normalize_obs:
            return x.astype(np.float32)
        if self.critic_rms is None:
            self.critic_rms = RunningMeanStd((x.shape[1],))
        if update:
            self.critic_rms.update(x)
        clip = self._cfg.obs_clip
        return np.clip((x - self.critic_rms.mean) / self.critic_rms.std(), -clip, clip).astype(np.float32)

    def _export_value(self) -> bool:
        return False

    def _extra_state(self) -> dict[str, Any]:
        return {"critic_rms": None if self.critic_rms is None else self.critic_rms.state()}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        saved = state.get("critic_rms")
        if saved is not None:
            self.critic_rms = RunningMeanStd(tuple(saved["mean"].shape))
            self.critic_rms.load(saved)
