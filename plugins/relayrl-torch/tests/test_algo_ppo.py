"""PPO: GAE and bootstrapping, stale filtering, input checks, export parity, checkpoints, learning."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from _algo_rollout import Collector, evaluate, run
from relayrl_torch.algorithms import PPO

import relayrl
from relayrl import ConfigError, ModelModule, ObservationError, Trajectory
from relayrl.spaces import Box, Discrete, MultiDiscrete

OBS = Box(low=-10.0, high=10.0, shape=(3,))


def traj(
    n: int,
    *,
    rewards: list[float] | None = None,
    done: bool = False,
    truncated: bool = False,
    final_obs: Any = None,
    versions: list[int] | None = None,
    obs_dim: int = 3,
    act: Any = None,
    seed: int = 0,
) -> Trajectory:
    rng = np.random.default_rng(seed)
    d = np.zeros(n, dtype=bool)
    d[-1] = done
    return Trajectory(
        obs=rng.standard_normal((n, obs_dim)).astype(np.float32),
        act=np.zeros(n, dtype=np.int64) if act is None else act,
        reward=np.asarray(rewards if rewards is not None else np.ones(n), dtype=np.float32),
        done=d,
        logp=np.full(n, np.log(0.5), dtype=np.float32),
        value=np.zeros(n, dtype=np.float32),
        model_version=np.asarray(versions if versions is not None else np.zeros(n), dtype=np.int64),
        actor_id=uuid.uuid4(),
        truncated=truncated,
        final_obs=final_obs,
    )


def constant_critic(algo: PPO, c: float) -> None:
    assert algo.vf is not None
    last = algo.vf[-1]
    assert isinstance(last, torch.nn.Linear)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(c)


def test_gae_by_hand_terminal_vs_truncated() -> None:
    algo = PPO(OBS, Discrete(2), config={"gamma": 0.5, "gae_lambda": 0.5})
    constant_critic(algo, 1.0)
    r = [1.0, 2.0, 3.0]
    # Terminal: the last step has no next value.
    # deltas = [1 + .5 - 1, 2 + .5 - 1, 3 + 0 - 1] = [.5, 1.5, 2]; A = [.5 + .25 * 2, 1.5 + .25 * 2, 2]
    b = algo._make_batch([traj(3, rewards=r, done=True)])
    np.testing.assert_allclose(b.adv, [1.0, 2.0, 2.0])
    np.testing.assert_allclose(b.ret, [2.0, 3.0, 3.0])
    # Truncated with final_obs: the last step bootstraps with V(final_obs) = 1, never 0.
    b = algo._make_batch([traj(3, rewards=r, truncated=True, final_obs=np.ones(3, np.float32))])
    np.testing.assert_allclose(b.adv, [1.03125, 2.125, 2.5])
    # Truncated without final_obs: bootstraps from the last step's own value (also 1 here).
    b = algo._make_batch([traj(3, rewards=r, truncated=True)])
    np.testing.assert_allclose(b.adv, [1.03125, 2.125, 2.5])
    # Several trajectories in one batch do not leak into each other.
    b = algo._make_batch([traj(3, rewards=r, done=True), traj(3, rewards=r, truncated=True, final_obs=np.ones(3))])
    np.testing.assert_allclose(b.adv, [1.0, 2.0, 2.0, 1.03125, 2.125, 2.5])


def reference_gae(rewards: np.ndarray, values: np.ndarray, last_next: float, gamma: float, lam: float) -> np.ndarray:
    nxt = np.append(values[1:], last_next)
    adv = np.zeros(len(rewards))
    acc = 0.0
    for t in reversed(range(len(rewards))):
        acc = rewards[t] + gamma * nxt[t] - values[t] + gamma * lam * acc
        adv[t] = acc
    return adv


def test_truncated_bootstraps_with_the_critic_on_final_obs() -> None:
    algo = PPO(OBS, Discrete(2), config={"gamma": 0.9, "gae_lambda": 0.8})
    t = traj(5, rewards=[0.5, -1.0, 2.0, 0.0, 1.0], truncated=True, final_obs=np.full(3, 2.0, np.float32), seed=3)
    v = algo._values(t.obs)
    v_final = float(algo._values(np.full((1, 3), 2.0, np.float32))[0])
    assert abs(v_final - v[-1]) > 1e-4  # the test tells the two bootstraps apart
    b = algo._make_batch([t])
    np.testing.assert_allclose(b.adv, reference_gae(t.reward.astype(np.float64), v, v_final, 0.9, 0.8), rtol=1e-6)
    no_final = algo._make_batch([traj(5, rewards=[0.5, -1.0, 2.0, 0.0, 1.0], truncated=True, seed=3)])
    np.testing.assert_allclose(no_final.adv, reference_gae(t.reward.astype(np.float64), v, v[-1], 0.9, 0.8),
                               rtol=1e-6)
    terminal = algo._make_batch([traj(5, rewards=[0.5, -1.0, 2.0, 0.0, 1.0], done=True, seed=3)])
    np.testing.assert_allclose(terminal.adv, reference_gae(t.reward.astype(np.float64), v, 0.0, 0.9, 0.8), rtol=1e-6)


def test_stale_steps_are_dropped_and_counted() -> None:
    algo = PPO(OBS, Discrete(2), config={"max_staleness": 1, "num_envs": 1, "n_steps": 4})
    algo.export_model(version=5)
    assert algo.version == 5
    # versions 3, 3 are older than 5 - 1: those two steps go, the fresh suffix stays.
    assert not algo.receive_trajectory(traj(3, versions=[3, 3, 4]))  # 1 fresh step
    assert algo.buffered_steps == 1
    assert not algo.receive_trajectory(traj(2, versions=[2, 2]))  # all stale
    assert algo.buffered_steps == 1
    assert algo.receive_trajectory(traj(3, versions=[5, 5, 5]))  # 4 >= steps_per_update
    stats = algo.train()
    assert stats["dropped_stale_steps"] == 4.0
    assert stats["steps"] == 4.0
    assert algo.version == 6
    # Staleness is judged again when training starts: a trajectory that waited too long is dropped then.
    algo.receive_trajectory(traj(2, versions=[5, 5]))
    algo.export_model(version=8)
    stats = algo.train()
    assert stats["dropped_stale_steps"] == 2.0
    assert stats["steps"] == 0.0
    keep_all = PPO(OBS, Discrete(2), config={"max_staleness": None})
    keep_all.export_model(version=100)
    keep_all.receive_trajectory(traj(2, versions=[0, 0]))
    assert keep_all.buffered_steps == 2


def test_non_finite_and_empty_trajectories() -> None:
    algo = PPO(OBS, Discrete(2))
    bad = traj(3)
    bad.reward = np.array([0.0, np.nan, 1.0], np.float32)
    with pytest.raises(ObservationError, match="finite"):
        algo.receive_trajectory(bad)
    bad = traj(3)
    bad.obs[1, 0] = np.inf
    with pytest.raises(ObservationError, match="finite"):
        algo.receive_trajectory(bad)
    assert algo.buffered_steps == 0
    empty = traj(1)
    for k in ("obs", "act", "reward", "done", "logp", "value", "model_version"):
        setattr(empty, k, getattr(empty, k)[:0])
    assert algo.receive_trajectory(empty) is False
    assert algo.buffered_steps == 0
    assert algo.train()["steps"] == 0.0


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (dict(obs=np.zeros((3, 4), np.float32)), "observations have shape"),
        (dict(act=np.zeros((3, 2), np.int64)), "actions have shape"),
        (dict(logp=np.zeros(2, np.float32)), "different lengths"),
        (dict(model_version=np.zeros(2, np.int64)), "model_version"),
        (dict(mask=np.ones((3, 5), bool)), "mask"),
        (dict(final_obs=np.zeros(7, np.float32)), "final_obs"),
    ],
)
def test_bad_trajectories_are_rejected_and_nothing_is_buffered(bad: dict[str, Any], match: str) -> None:
    algo = PPO(OBS, Discrete(2))
    algo.receive_trajectory(traj(3))
    good = traj(3)
    for k, v in bad.items():
        setattr(good, k, v)
    with pytest.raises(ObservationError, match=match):
        algo.receive_trajectory(good)
    assert algo.buffered_steps == 3


def test_receive_during_train_goes_to_the_next_update() -> None:
    started = threading.Event()
    proceed = threading.Event()

    class Slow(PPO):
        def _make_batch(self, trajs: list[Trajectory]) -> Any:
            started.set()
            assert proceed.wait(10)
            return super()._make_batch(trajs)

    algo = Slow(OBS, Discrete(2), config={"num_envs": 1, "n_steps": 4})
    before = algo.export_model()
    algo.receive_trajectory(traj(4))
    result: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: result.update(algo.train()))
    worker.start()
    assert started.wait(10)
    assert algo.receive_trajectory(traj(5)) is True  # received while training: buffered for next time
    during = algo.export_model()  # does not wait for the update: the current version's model
    assert during.version == 0 and during.data == before.data
    proceed.set()
    worker.join(10)
    assert result["steps"] == 4.0
    after = algo.export_model()
    assert after.version == 1 and after.data != before.data
    assert algo.buffered_steps == 5
    assert algo.train()["steps"] == 5.0


def _trained(space: Any, config: dict[str, Any], obs_dim: int = 3, updates: int = 2) -> PPO:
    algo = PPO(Box(low=-10.0, high=10.0, shape=(obs_dim,)), space, config={"n_epochs": 2, **config}, seed=1)
    rng = np.random.default_rng(0)
    for u in range(updates):
        for i in range(3):
            t = traj(20, seed=10 * u + i, obs_dim=obs_dim, done=i == 0, truncated=i != 0,
                     final_obs=np.ones(obs_dim, np.float32), versions=[algo.version] * 20)
            t.obs = t.obs * 3.0 + 1.0
            t.reward = rng.standard_normal(20).astype(np.float32) * 5
            if isinstance(space, Box):
                t.act = rng.standard_normal((20, space.shape[0])).astype(np.float32)
            elif isinstance(space, MultiDiscrete):
                t.act = np.stack([rng.integers(0, n, 20) for n in space.nvec], axis=1)
            else:
                t.act = rng.integers(0, space.n, 20) + space.start
            algo.receive_trajectory(t)
        algo.train()
    return algo


@pytest.mark.parametrize(
    "space", [Discrete(3), Discrete(2, start=1), MultiDiscrete((2, 3)), Box(low=-2.0, high=2.0, shape=(2,))]
)
@pytest.mark.parametrize("norm", [False, True])
def test_export_matches_the_torch_networks(space: Any, norm: bool) -> None:
    algo = _trained(space, {"normalize_obs": norm, "normalize_reward": norm})
    model = algo.export_model()
    assert isinstance(model, ModelModule)
    assert model.backend == "numpy"
    assert model.version == algo.version == 2
    assert model.metadata.value_output
    model = ModelModule.from_bytes(model.to_bytes())  # round-trips and validates
    obs = np.random.default_rng(5).standard_normal((64, 3)).astype(np.float32) * 4
    ref = algo.torch_policy()
    with torch.no_grad():
        out, value = ref(torch.as_tensor(obs))
    got = model.policy().forward(obs)
    np.testing.assert_allclose(got.logits if got.mean is None else got.mean, out.numpy(), atol=1e-5, rtol=1e-5)
    assert value is not None and got.value is not None
    np.testing.assert_allclose(got.value, value.numpy(), atol=1e-4, rtol=1e-5)
    if isinstance(space, Box):
        assert algo.log_std is not None
        np.testing.assert_allclose(got.log_std, algo.log_std.detach().numpy(), atol=1e-7)
    # The model's head reproduces the log-probabilities the algorithm trains with.
    head = relayrl.make_head(model.metadata)
    act, logp = head.sample(got, np.random.default_rng(0))
    with torch.no_grad():
        tl, _ = algo._dist.logp_entropy(out, algo._dist.act_tensor(act), algo.log_std, None)
    np.testing.assert_allclose(logp, tl.numpy(), atol=1e-4)
    if norm:
        assert algo.obs_rms is not None and not np.allclose(algo.obs_rms.mean, 0)


@pytest.mark.parametrize("fmt", ["torch", "onnx"])
@pytest.mark.parametrize("space", [Discrete(3), MultiDiscrete((2, 3)), Box(low=-2.0, high=2.0, shape=(2,))])
def test_export_to_other_backends(fmt: str, space: Any) -> None:
    if fmt not in relayrl.backends.available():
        pytest.skip(f"the {fmt} backend is not installed")
    algo = _trained(space, {"normalize_obs": True, "normalize_reward": True, "export_backend": fmt}, updates=1)
    model = algo.export_model()
    assert model.backend == fmt
    assert model.version == 1
    assert model.metadata.extra["algorithm"] == "ppo"
    model = ModelModule.from_bytes(model.to_bytes())
    obs = np.random.default_rng(5).standard_normal((16, 3)).astype(np.float32) * 3
    with torch.no_grad():
        out, value = algo.torch_policy()(torch.as_tensor(obs))
    got = model.policy().forward(obs)
    np.testing.assert_allclose(got.logits if got.mean is None else got.mean, out.numpy(), atol=1e-5)
    assert value is not None
    np.testing.assert_allclose(np.asarray(got.value).reshape(-1), value.numpy(), atol=1e-4)
    if isinstance(space, Box):
        assert algo.log_std is not None
        np.testing.assert_allclose(np.asarray(got.log_std).reshape(-1), algo.log_std.detach().numpy(), atol=1e-6)


def _batch(seed: int, version: int) -> list[Trajectory]:
    col = Collector("CartPole-v1", 4, seed)
    algo = PPO(gym.make("CartPole-v1").observation_space, Discrete(2), seed=seed)
    return [t for t in col.collect(algo.export_model(version=version), 32)]


@pytest.mark.parametrize("cfg", [{}, {"normalize_obs": True, "normalize_reward": True, "n_epochs": 3}])
def test_save_load_resumes_exactly(tmp_path: Path, cfg: dict[str, Any]) -> None:
    env = gym.make("CartPole-v1")
    a = PPO(env.observation_space, env.action_space, config={"max_staleness": None, **cfg}, seed=7)
    for i in range(3):
        for t in _batch(i, a.version):
            a.receive_trajectory(t)
        a.train()
    a.save_state(tmp_path / "ckpt")
    b = PPO(env.observation_space, env.action_space, config={"max_staleness": None, **cfg}, seed=7)
    assert b.export_model().data != a.export_model().data
    b.load_state(tmp_path / "ckpt")
    assert b.version == a.version
    assert b.export_model().data == a.export_model().data
    nxt = _batch(99, a.version)
    for t in nxt:
        a.receive_trajectory(t)
        b.receive_trajectory(t)
    sa, sb = a.train(), b.train()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k] == sb[k] or (np.isnan(sa[k]) and np.isnan(sb[k])), k
    assert a.export_model().data == b.export_model().data


def test_load_state_rejects_foreign_checkpoints(tmp_path: Path) -> None:
    a = PPO(OBS, Discrete(2))
    a.save_state(tmp_path / "a")
    with pytest.raises(ConfigError, match="spaces"):
        PPO(OBS, Discrete(3)).load_state(tmp_path / "a")
    with pytest.raises(ConfigError, match="hidden"):
        PPO(OBS, Discrete(2), config={"hidden": [8]}).load_state(tmp_path / "a")
    with pytest.raises(ConfigError, match="cannot read"):
        PPO(OBS, Discrete(2)).load_state(tmp_path / "missing")
    from relayrl_torch.algorithms import REINFORCE

    with pytest.raises(ConfigError, match="ppo"):
        REINFORCE(OBS, Discrete(2)).load_state(tmp_path / "a")
    (tmp_path / "a" / "algorithm.pt").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="cannot read"):
        PPO(OBS, Discrete(2)).load_state(tmp_path / "a")


def test_masks_are_respected_in_training() -> None:
    algo = PPO(OBS, Discrete(3), config={"num_envs": 1, "n_steps": 8})
    t = traj(8, act=np.full(8, 2, np.int64))
    t.mask = np.tile(np.array([False, True, True]), (8, 1))
    algo.receive_trajectory(t)
    stats = algo.train()
    assert np.isfinite(stats["policy_loss"]) and np.isfinite(stats["entropy"])
    # entropy of a masked 3-way categorical is at most log(2)
    assert stats["entropy"] <= np.log(2) + 1e-4


def test_ppo_learns_cartpole_quickly() -> None:
    env = gym.make("CartPole-v1")
    algo = PPO(env.observation_space, env.action_space, seed=0)
    res = run(algo, "CartPole-v1", 30_000, seed=0)
    last20 = float(np.mean(res["returns"][-20:]))
    assert last20 > 100, last20  # a random policy averages ~22
    assert evaluate(algo.export_model(), "CartPole-v1", 3) > 50  # the greedy policy too


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ppo_solves_cartpole(seed: int) -> None:
    env = gym.make("CartPole-v1")
    algo = PPO(env.observation_space, env.action_space, config=PPO.preset_for("CartPole-v1"), seed=seed)
    res = run(algo, "CartPole-v1", 200_000, seed=seed, target=475.0, window=100)
    print(f"PPO CartPole-v1 seed {seed}: solved at {res['solved_at']} steps, {res['seconds']:.1f} s "
          f"({res['train_seconds']:.1f} s training, {res['grad_steps']} gradient steps)")
    assert res["solved_at"] is not None, res["mean_return"]


@pytest.mark.slow
def test_ppo_solves_pendulum() -> None:
    env = gym.make("Pendulum-v1")
    preset = PPO.preset_for("Pendulum-v1")
    algo = PPO(env.observation_space, env.action_space, config=preset, seed=0)
    res = run(algo, "Pendulum-v1", preset["total_steps"], seed=0)  # the whole budget, as `relayrl train` does
    last20 = float(np.mean(res["returns"][-20:]))
    greedy = evaluate(algo.export_model(), "Pendulum-v1", 10)
    print(f"PPO Pendulum-v1: after {res['steps']} steps ({res['seconds']:.1f} s) mean of the last 20 returns "
          f"{last20:.1f}, greedy policy over 10 episodes {greedy:.1f}")
    assert last20 > -300
    assert greedy > -300
