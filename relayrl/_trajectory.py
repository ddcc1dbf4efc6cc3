"""Columnar trajectories."""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

__all__ = ["Trajectory"]

Array = npt.NDArray[Any]


def _eq_opt(a: Array | None, b: Array | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=a.dtype.kind == "f"))


@attrs.define(eq=False, kw_only=True)
class Trajectory:
    """One actor's steps, stored column by column (one numpy array per field).

    Step ``t`` is ``obs[t]``, the action ``act[t]`` taken in it (with ``logp[t]``, ``value[t]``
    and the ``model_version[t]`` that produced it, and ``mask[t]`` if one was given) and the
    ``reward[t]`` that followed. ``done[t]`` is True only on the terminal step of an episode
    that ended in a terminal state. A trajectory cut short (by ``max_traj_length``, removal of
    its actor, shutdown, or an environment time limit) has ``truncated=True`` and, when known,
    ``final_obs``: the observation after the last step, for bootstrapping.

    .. versionadded:: 0.1
    """

    #: Observations ``[T, *obs_shape]``.
    obs: Array
    #: Actions ``[T, *action_shape]`` (int64 for discrete spaces, float32 for boxes).
    act: Array
    #: Rewards ``[T]`` float32.
    reward: Array
    #: Terminal flags ``[T]`` bool.
    done: Array
    #: Log-probability of each action under the acting policy, ``[T]`` float32.
    logp: Array
    #: Value estimates ``[T]`` float32 (NaN where the model has no value output).
    value: Array
    #: Version of the model that chose each action, ``[T]`` int64.
    model_version: Array
    #: Action masks ``[T, mask_dim]`` bool, or None when no mask was given.
    mask: Array | None = None
    #: The actor that produced it.
    actor_id: uuid.UUID
    #: Episode counter of that actor (a long episode split by ``max_traj_length`` keeps its number).
    episode: int = 0
    #: Free-form environment label (vector-env index, PettingZoo agent id, ...).
    env_id: str | None = None
    #: Whether the trajectory ends without a terminal state.
    truncated: bool = False
    #: Observation after the last step (for bootstrapping a truncated trajectory), or None.
    final_obs: Array | None = None
    #: Unix time of the first step.
    start_time: float = 0.0
    #: Unix time the trajectory was emitted.
    end_time: float = 0.0
    #: Extra per-step columns ``name -> [T, ...]`` (for example a global ``"state"`` for MAPPO's critic).
    extras: dict[str, Array] = attrs.field(factory=dict)

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    @property
    def terminated(self) -> bool:
        """Whether the episode ended in a terminal state on the last step."""
        return bool(len(self) and self.done[-1])

    @property
    def total_reward(self) -> float:
        """Sum of the rewards."""
        return float(self.reward.sum(dtype=np.float64))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trajectory):
            return NotImplemented
        return (
            self.actor_id == other.actor_id
            and self.episode == other.episode
            and self.env_id == other.env_id
            and self.truncated == other.truncated
            and self.start_time == other.start_time
            and self.end_time == other.end_time
            and all(_eq_opt(getattr(self, f), getattr(other, f))
                    for f in ("obs", "act", "reward", "done", "logp", "value", "model_version", "mask", "final_obs"))
            and self.extras.keys() == other.extras.keys()
            and all(_eq_opt(v, other.extras[k]) for k, v in self.extras.items())
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Trajectory(actor_id={self.actor_id}, episode={self.episode}, steps={len(self)}, "
                f"total_reward={self.total_reward:.3f}, terminated={self.terminated}, truncated={self.truncated})")
