"""REINFORCE with a value baseline: Monte-Carlo returns, bootstrapping, checkpoints, learning."""

from __future__ import annotations

import uuid
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from _algo_rollout import Collector, run
from relayrl_torch.algorithms import REINFORCE

from relayrl import ObservationError, Trajectory
from relayrl.spaces import Box, Discrete

OBS = Box(low=-10.0, high=10.0, shape=(2,))


def traj(rewards: list[float], *, done: bool, final_obs: np.ndarray | None = None, version: int = 0) -> Trajectory:
    n = len(rewards)
    d = np.zeros(n, dtype=bool)
    d[-1] = done
    return Trajectory(
        obs=np.arange(2 * n, dtype=np.float32).reshape(n, 2) / 10, act=np.zeros(n, np.int64),
        reward=np.asarray(rewards, np.float32), done=d, logp=np.full(n, -0.69, np.float32),
        value=np.zeros(n, np.float32), model_version=np.full(n, version, np.int64), actor_id=uuid.uuid4(),
        truncated=not done, final_obs=final_obs,
    )


def test_returns_are_monte_carlo_with_bootstrap_on_truncation() -> None:
    algo = REINFORCE(OBS, Discrete(2), config={"gamma": 0.5})
    assert algo.vf is not None
    last = algo.vf[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(4.0)  # V(s) = 4 everywhere
    b = algo._make_batch([traj([1.0, 1.0, 1.0], done=True)])
    np.testing.assert_allclose(b.ret, [1.75, 1.5, 1.0])  # G_t, no bootstrap after a terminal state
    np.testing.assert_allclose(b.adv, b.ret - 4.0)
    b = algo._make_batch([traj([1.0, 1.0, 1.0], done=False, final_obs=np.zeros(2, np.float32))])
    np.testing.assert_allclose(b.ret, [2.25, 2.5, 3.0])  # ... + gamma^k V(final_obs)


def test_one_policy_step_per_update_and_stale_steps_dropped() -> None:
    algo = REINFORCE(OBS, Discrete(2), config={"num_envs": 1, "n_steps": 3})
    before = [p.detach().clone() for p in algo.pi.parameters()]
    assert algo.receive_trajectory(traj([1.0, 0.0, 2.0], done=True))
    stats = algo.train()
    assert stats["steps"] == 3.0 and np.isfinite(stats["policy_loss"]) and np.isfinite(stats["value_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, algo.pi.parameters()))
    algo.export_model(version=3)
    assert not algo.receive_trajectory(traj([1.0, 1.0, 1.0], done=True, version=1))  # older than 3 - 1
    assert algo.buffered_steps == 0
    with pytest.raises(ObservationError):
        algo.receive_trajectory(traj([1.0], done=True, final_obs=np.zeros(5, np.float32)))


def test_save_load_resumes_exactly(tmp_path: Path) -> None:
    env = gym.make("CartPole-v1")
    a = REINFORCE(env.observation_space, env.action_space, config={"max_staleness": None}, seed=3)
    col = Collector("CartPole-v1", 4, 0)
    for t in col.collect(a.export_model(), 64):
        a.receive_trajectory(t)
    a.train()
    a.save_state(tmp_path)
    b = REINFORCE(env.observation_space, env.action_space, config={"max_staleness": None}, seed=3)
    b.load_state(tmp_path)
    assert b.export_model().data == a.export_model().data
    for t in col.collect(a.export_model(), 64):
        a.receive_trajectory(t)
        b.receive_trajectory(t)
    assert a.train() == b.train()
    assert a.export_model().data == b.export_model().data


def test_reinforce_improves_on_cartpole() -> None:
    env = gym.make("CartPole-v1")
    algo = REINFORCE(env.observation_space, env.action_space, seed=0)
    res = run(algo, "CartPole-v1", 30_000, seed=0)
    assert float(np.mean(res["returns"][-20:])) > 60  # random: ~22


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_reinforce_solves_cartpole(seed: int) -> None:
    env = gym.make("CartPole-v1")
    algo = REINFORCE(env.observation_space, env.action_space, config=REINFORCE.preset_for("CartPole-v1"), seed=seed)
    res = run(algo, "CartPole-v1", 1_000_000, seed=seed, target=475.0, window=100)
    print(f"REINFORCE CartPole-v1 seed {seed}: solved at {res['solved_at']} steps, {res['seconds']:.1f} s")
    assert res["solved_at"] is not None, res["mean_return"]
