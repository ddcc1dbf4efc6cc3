"""Trajectories for the sink tests (shared by tests/test_sinks*.py)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np

from relayrl import Trajectory

ACTORS = [uuid.UUID(int=i + 1) for i in range(4)]


def make_traj(
    steps: int = 5,
    *,
    actor: int | uuid.UUID = 0,
    episode: int = 0,
    obs_shape: tuple[int, ...] = (4,),
    obs_dtype: Any = np.float32,
    kind: str = "discrete",
    mask: bool = False,
    extras: dict[str, np.ndarray[Any, Any]] | None = None,
    final_obs: bool = False,
    truncated: bool = False,
    env_id: str | None = None,
    value_nan: bool = False,
    seed: int = 0,
) -> Trajectory:
    """A trajectory with random but reproducible content."""
    rng = np.random.default_rng(seed)
    obs = (rng.standard_normal((steps, *obs_shape)) * 10).astype(obs_dtype)
    if kind == "discrete":
        act = rng.integers(0, 3, size=steps).astype(np.int64)
        mask_arr = rng.random((steps, 3)) < 0.7 if mask else None
    elif kind == "multidiscrete":
        act = rng.integers(0, 3, size=(steps, 2)).astype(np.int64)
        mask_arr = rng.random((steps, 6)) < 0.7 if mask else None
    elif kind == "box":
        act = rng.standard_normal((steps, 2)).astype(np.float32)
        mask_arr = None
    else:
        raise ValueError(kind)
    value = rng.standard_normal(steps).astype(np.float32)
    if value_nan:
        value[:] = np.nan
    done = np.zeros(steps, dtype=bool)
    if steps and not truncated:
        done[-1] = True
    return Trajectory(
        obs=obs,
        act=act,
        reward=rng.standard_normal(steps).astype(np.float32),
        done=done,
        logp=rng.standard_normal(steps).astype(np.float32),
        value=value,
        model_version=np.full(steps, 3, dtype=np.int64),
        mask=mask_arr,
        actor_id=actor if isinstance(actor, uuid.UUID) else ACTORS[actor],
        episode=episode,
        env_id=env_id,
        truncated=truncated,
        final_obs=(rng.standard_normal(obs_shape) * 10).astype(obs_dtype) if final_obs else None,
        start_time=1_700_000_000.123456 + seed,
        end_time=1_700_000_001.654321 + seed,
        extras=dict(extras or {}),
    )
