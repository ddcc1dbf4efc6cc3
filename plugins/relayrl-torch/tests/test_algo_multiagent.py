"""IPPO and MAPPO: parameter sharing, the centralised critic, and learning on multi-agent envs."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _algo_rollout import random_multi_return, run_multi
from relayrl_torch.algorithms import IPPO, MAPPO

from relayrl import ModelModule, ObservationError, Trajectory
from relayrl.envs import coop_nav
from relayrl.spaces import Box, Discrete

OBS = Box(low=-1.0, high=1.0, shape=(4,))


def traj(n: int = 5, *, state: Any = "default", agent: str = "a0", version: int = 0) -> Trajectory:
    rng = np.random.default_rng(n)
    extras = {} if state is None else {"state": rng.standard_normal((n, 6)).astype(np.float32)
                                       if isinstance(state, str) else state}
    return Trajectory(
        obs=rng.standard_normal((n, 4)).astype(np.float32), act=rng.integers(0, 3, n),
        reward=rng.standard_normal(n).astype(np.float32), done=np.zeros(n, bool),
        logp=np.full(n, np.log(1 / 3), np.float32), value=np.full(n, np.nan, np.float32),
        model_version=np.full(n, version, np.int64), actor_id=uuid.uuid4(), env_id=agent, truncated=True,
        final_obs=rng.standard_normal(4).astype(np.float32), extras=extras,
    )


def test_mappo_needs_the_global_state() -> None:
    algo = MAPPO(OBS, Discrete(3))
    with pytest.raises(ObservationError, match="state"):
        algo.receive_trajectory(traj(state=None))
    assert algo.buffered_steps == 0
    with pytest.raises(ObservationError, match="rows"):
        algo.receive_trajectory(traj(state=np.zeros((2, 6), np.float32)))
    algo.receive_trajectory(traj())
    algo.train()  # the critic is built now: state rows have 6 values
    assert algo._critic_dim == 6 + 4  # state + own observation
    with pytest.raises(ObservationError, match="6"):
        algo.receive_trajectory(traj(state=np.zeros((5, 7), np.float32)))
    assert algo.buffered_steps == 0
    only_state = MAPPO(OBS, Discrete(3), config={"critic_input": "state", "state_dim": 6})
    assert only_state._critic_dim == 6


def test_mappo_exports_the_actor_only_and_ippo_keeps_a_value() -> None:
    m = MAPPO(OBS, Discrete(3), config={"normalize_obs": True})
    i = IPPO(OBS, Discrete(3), config={"normalize_obs": True})
    for algo in (m, i):
        for k in range(3):
            algo.receive_trajectory(traj(6 + k, agent=f"a{k}"))
        stats = algo.train()
        assert np.isfinite(stats["value_loss"])
    mm, im = m.export_model(), i.export_model()
    assert not mm.metadata.value_output
    assert im.metadata.value_output
    mm = ModelModule.from_bytes(mm.to_bytes())
    obs = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    import torch

    with torch.no_grad():
        logits, value = m.torch_policy()(torch.as_tensor(obs))
    assert value is None
    np.testing.assert_allclose(mm.policy().forward(obs).logits, logits.numpy(), atol=1e-5)


def test_mappo_save_load_with_its_lazy_critic(tmp_path: Path) -> None:
    a = MAPPO(OBS, Discrete(3), config={"normalize_obs": True, "max_staleness": None}, seed=4)
    batch = [traj(6 + k, agent=f"a{k}") for k in range(3)]
    for t in batch:
        a.receive_trajectory(t)
    a.train()
    a.save_state(tmp_path)
    b = MAPPO(OBS, Discrete(3), config={"normalize_obs": True, "max_staleness": None}, seed=4)
    b.load_state(tmp_path)
    assert b._critic_dim == a._critic_dim
    for t in batch:
        a.receive_trajectory(t)
        b.receive_trajectory(t)
    assert a.train() == b.train()
    assert a.export_model().data == b.export_model().data


@pytest.mark.parametrize("cls", [IPPO, MAPPO])
def test_beats_random_on_coop_nav(cls: type[IPPO]) -> None:
    env = coop_nav()
    agent = env.possible_agents[0]
    algo = cls(env.observation_space(agent), env.action_space(agent), seed=0)
    col = run_multi(algo, coop_nav, 12_000, seed=0)
    random = random_multi_return(coop_nav, 100)
    trained = col.mean_return(100)
    assert trained > random + 3.0, (trained, random)  # random: about -14.5 per agent and episode


def _spread() -> Any:
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    from mpe2 import simple_spread_v3  # type: ignore[import-untyped]

    return simple_spread_v3.parallel_env(N=2, max_cycles=25, continuous_actions=False)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [IPPO, MAPPO])
@pytest.mark.parametrize("env_name", ["coop_nav", "simple_spread"])
def test_clearly_beats_random(cls: type[IPPO], env_name: str) -> None:
    if env_name == "simple_spread":
        pytest.importorskip("mpe2")
    make = coop_nav if env_name == "coop_nav" else _spread
    env = make()
    agent = env.possible_agents[0]
    algo = cls(env.observation_space(agent), env.action_space(agent), seed=0)
    col = run_multi(algo, make, 60_000, seed=0)
    random = random_multi_return(make, 200)
    trained = col.mean_return(200)
    print(f"{cls.name} on {env_name}: mean return of the last 200 episodes after {col.total_steps} env steps "
          f"{trained:.2f}; uniformly random policy {random:.2f}")
    # coop_nav: about -16 -> -6 in 60k steps; simple_spread (harder): about -20.5 -> -14.5
    assert trained > random + (0.3 if env_name == "coop_nav" else 0.2) * abs(random), (trained, random)
