"""relayrl.envs: make() for every kind of input, autoreset/final_obs semantics, seeding, masks, clipping, bad input."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from _envs_toys import CountEnv, StaggerEnv, count_vec
from gymnasium.vector import AutoresetMode

import relayrl.envs as E
from relayrl import ConfigError, ObservationError
from relayrl.spaces import Box, Discrete


def _gym(env: E.VecEnv) -> E.GymVecEnv:
    assert isinstance(env, E.GymVecEnv)
    return env


def _collect(env: E.VecEnv, steps: int) -> dict[int, list[tuple[list[float], list[float], str, float]]]:
    """Per slot: finished episodes as (observations acted on, rewards, end kind, final obs)."""
    cur = env.reset(seed=0)
    open_obs: dict[int, list[float]] = {s: [] for s in range(env.num_slots)}
    open_rew: dict[int, list[float]] = {s: [] for s in range(env.num_slots)}
    episodes: dict[int, list[tuple[list[float], list[float], str, float]]] = {s: [] for s in range(env.num_slots)}
    for _ in range(steps):
        active = np.ones(env.num_slots, bool) if cur.active is None else cur.active
        for s in np.flatnonzero(active).tolist():
            open_obs[s].append(float(cur.obs[s, 0]))
        nxt = env.step(np.zeros(env.num_slots, np.int64))
        for s in np.flatnonzero(active).tolist():
            open_rew[s].append(float(nxt.reward[s]))
        for s in np.flatnonzero(~active).tolist():
            assert nxt.reward[s] == 0.0 and not nxt.terminated[s] and not nxt.truncated[s]
        for s in np.flatnonzero(nxt.terminated | nxt.truncated).tolist():
            assert nxt.final_obs is not None
            kind = "terminated" if nxt.terminated[s] else "truncated"
            episodes[s].append((open_obs[s], open_rew[s], kind, float(nxt.final_obs[s, 0])))
            open_obs[s], open_rew[s] = [], []
        cur = nxt
    return episodes


# --------------------------------------------------------------------------------------- make()


def test_make_gym_id_uses_the_native_vector_entry_point() -> None:
    with _gym(E.make("CartPole-v1", num_envs=4, seed=1)) as env:
        assert isinstance(env, E.GymVecEnv)
        assert type(env.env).__name__ == "CartPoleVectorEnv"
        assert env.autoreset_mode == "next_step"
        assert env.num_slots == 4 and not env.multi_agent
        assert env.observation_space.shape == (4,) and env.observation_space.dtype == np.float32
        assert env.action_space == Discrete(2)
        assert env.reward_threshold == 475.0
        assert env.slot_labels == ("0", "1", "2", "3")
        first = env.reset()
        assert first.obs.shape == (4, 4) and first.obs.dtype == np.float32 and first.mask is None


def test_make_gym_id_sync_vectorization_is_same_step() -> None:
    with _gym(E.make("CartPole-v1", num_envs=3, seed=1, vectorization="sync")) as env:
        assert type(env.env).__name__ == "SyncVectorEnv"
        assert env.autoreset_mode == "same_step"


def test_make_gym_id_without_vector_entry_point_falls_back_to_sync() -> None:
    with _gym(E.make("Pendulum-v1", num_envs=2, seed=0)) as env:
        assert type(env.env).__name__ == "SyncVectorEnv"
        assert env.autoreset_mode == "same_step"
        assert isinstance(env.action_space, Box) and env.reward_threshold is None
    with pytest.raises(ConfigError, match="no vector entry point"):
        E.make("Pendulum-v1", vectorization="vector_entry_point")


def test_make_env_kwargs_reach_the_env() -> None:
    with E.make("CartPole-v1", num_envs=2, env_kwargs={"max_episode_steps": 5}) as env:
        env.reset(seed=0)
        ended = [env.step(np.zeros(2, np.int64)).truncated for _ in range(5)]
        assert ended[-1].all() and not any(e.any() for e in ended[:-1])


def test_make_module_callable_returning_a_gym_env() -> None:
    with _gym(E.make("gymnasium.envs.classic_control.cartpole:CartPoleEnv", num_envs=3, seed=0)) as env:
        assert env.num_envs == 3 and env.autoreset_mode == "same_step"
        assert env.reset().obs.shape == (3, 4)


def test_make_module_callable_returning_a_vector_env() -> None:
    with _gym(E.make("gymnasium.envs.classic_control.cartpole:CartPoleVectorEnv", env_kwargs={"num_envs": 5})) as env:
        assert env.num_envs == 5 and env.autoreset_mode == "next_step"
    with pytest.raises(ConfigError, match="num_envs=2"):
        E.make("gymnasium.envs.classic_control.cartpole:CartPoleVectorEnv", num_envs=2, env_kwargs={"num_envs": 5})


def test_make_instances_and_callables() -> None:
    with E.make(gym.make("CartPole-v1"), seed=0) as env:
        assert env.num_envs == 1 and env.name == "CartPole-v1" and env.reward_threshold == 475.0
    with E.make(gym.make_vec("CartPole-v1", num_envs=2)) as env:
        assert env.num_envs == 2
    with E.make(lambda: CountEnv(3), num_envs=2) as env:
        assert env.num_envs == 2
    with E.make(E.CoopNavEnv()) as env:
        assert isinstance(env, E.ParallelVecEnv) and env.num_slots == 2
    vec = E.make("CartPole-v1")
    assert E.make(vec) is vec


def test_make_pettingzoo_parallel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    with E.make("pettingzoo.classic.rps.rps:parallel_env", num_envs=2, seed=3) as env:
        assert isinstance(env, E.ParallelVecEnv) and env.multi_agent
        assert env.agent_ids == ("player_0", "player_1")
        assert env.slot_labels == ("0/player_0", "0/player_1", "1/player_0", "1/player_1")
        assert env.observation_space.shape == (4,)  # Discrete(4) observations, one-hot
        assert env.action_space == Discrete(3)
        assert env.state_shape == (8,)
        first = env.reset()
        assert first.obs.shape == (4, 4) and np.all(first.obs.sum(axis=1) == 1.0)
        assert first.state is not None and first.state.shape == (4, 8)
        # rock vs paper, scissors vs rock: rewards per slot
        out = env.step(np.array([0, 1, 2, 0]))
        assert out.reward.tolist() == [-1.0, 1.0, -1.0, 1.0]
        assert out.env_steps == 2


def test_make_pettingzoo_registry_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    with E.make("pettingzoo:classic/rps-v2", num_envs=3, seed=0, env_kwargs={"max_cycles": 4}) as env:
        assert isinstance(env, E.ParallelVecEnv) and env.num_slots == 6 and env.name == "pettingzoo:classic/rps-v2"
        env.reset()
        ended = [env.step(np.zeros(6, np.int64)).truncated.all() for _ in range(4)]
        assert ended == [False, False, False, True]
    with pytest.raises(ConfigError, match="unknown PettingZoo environment id"):
        E.make("pettingzoo:classic/nope-v1")


def test_make_coop_nav_by_id() -> None:
    with E.make("relayrl.envs:coop_nav", num_envs=3, seed=0, env_kwargs={"n_agents": 3}) as env:
        assert env.num_slots == 9 and env.agent_ids == ("agent_0", "agent_1", "agent_2")
        assert env.reward_threshold == E.CoopNavEnv.reward_threshold
        assert env.state_shape == (12,)
        first = env.reset()
        assert first.state is not None and first.state.shape == (9, 12)
        # every slot of one env sees that env's state
        assert np.array_equal(first.state[0], first.state[2]) and not np.array_equal(first.state[0], first.state[3])


@pytest.mark.parametrize(
    ("env", "kwargs", "match"),
    [
        ("NoSuchEnv-v0", {}, "unknown environment id"),
        ("no_such_module_xyz:make", {}, "cannot import module"),
        ("relayrl.envs:not_there", {}, "unknown environment id"),
        ("relayrl.envs:__all__", {}, "not a callable"),
        (":make", {}, "malformed"),
        ("", {}, "non-empty"),
        ("CartPole-v1", {"num_envs": 0}, "num_envs"),
        ("CartPole-v1", {"num_envs": True}, "num_envs"),
        ("CartPole-v1", {"vectorization": "threads"}, "vectorization"),
        ("CartPole-v1", {"seed": 1.5}, "seed"),
        ("relayrl.envs:coop_nav", {"env_kwargs": {"bogus": 1}}, "env_kwargs"),
        ("relayrl.envs:coop_nav", {"env_kwargs": {"n_agents": 9}}, "n_agents"),
        ("pettingzoo.classic.rps.rps:env", {}, "AEC"),
        ("gymnasium.envs.classic_control.cartpole:CartPoleEnv.metadata", {}, "not a callable"),
        ("relayrl.spaces:space_from_dict", {"env_kwargs": {"data": {"type": "discrete", "n": 2}}}, "not a gymnasium"),
        (42, {}, "cannot make an environment from int"),
    ],
)
def test_make_bad_inputs_raise_config_error(env: Any, kwargs: dict[str, Any], match: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    with pytest.raises(ConfigError, match=match):
        E.make(env, **kwargs)


def test_make_instances_cannot_be_copied() -> None:
    with pytest.raises(ConfigError, match="cannot be copied"):
        E.make(gym.make("CartPole-v1"), num_envs=2)
    with pytest.raises(ConfigError, match="cannot be copied"):
        E.make(E.CoopNavEnv(), num_envs=2)


def test_make_rejects_spaces_it_cannot_encode() -> None:
    class DictObs(CountEnv):
        def __init__(self) -> None:
            super().__init__()
            self.observation_space = gym.spaces.Dict({"a": gym.spaces.Discrete(2)})  # type: ignore[assignment]

    with pytest.raises(ConfigError, match="Dict observation space"):
        E.make(DictObs)


def test_make_rejects_agents_with_different_spaces() -> None:
    class Hetero(E.CoopNavEnv):
        def action_space(self, agent: str) -> Discrete:
            return Discrete(5 if agent == "agent_0" else 3)

    with pytest.raises(ConfigError, match="must share one observation and one action space"):
        E.make(Hetero())


# ---------------------------------------------------------------------- autoreset and final_obs


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
def test_every_autoreset_mode_gives_the_same_episodes(mode: AutoresetMode) -> None:
    with E.make(count_vec(mode)) as env:
        episodes = _collect(env, 20)
    # env 0: 3-step episodes that terminate; env 1: 10-step episodes cut at 4 steps by a time limit
    assert len(episodes[0]) >= 4 and len(episodes[1]) >= 3
    for ep in episodes[0]:
        assert ep == ([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], "terminated", 3.0)
    for ep in episodes[1]:
        assert ep == ([0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0], "truncated", 4.0)


def test_episode_statistics_and_env_steps() -> None:
    with E.make(count_vec(AutoresetMode.NEXT_STEP)) as env:
        env.reset()
        returns: list[float] = []
        lengths: list[int] = []
        total = 0
        for _ in range(12):
            out = env.step(np.zeros(2, np.int64))
            returns += out.episode_returns.tolist()
            lengths += out.episode_lengths.tolist()
            total += out.env_steps
    # env 0: 3-step episodes end at steps 3, 7, 11; env 1: 4-step episodes end at steps 4 and 9
    assert sorted(zip(returns, lengths, strict=True)) == [(6.0, 3)] * 3 + [(10.0, 4)] * 2
    # NEXT_STEP spends one env step per episode on the reset (steps 4, 8, 12 and 5, 10): not counted
    assert total == 24 - 5


def test_native_cartpole_final_obs_against_hand_stepped_raw_env() -> None:
    """Episode boundaries and final observations of the native NEXT_STEP CartPole vector env."""
    n, steps = 4, 300
    rng = np.random.default_rng(5)
    actions = rng.integers(0, 2, size=(steps, n))
    raw = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point")
    raw_obs, _ = raw.reset(seed=11)
    with E.make("CartPole-v1", num_envs=n, seed=11) as env:
        cur = env.reset()
        assert np.array_equal(cur.obs, raw_obs)
        pending = np.zeros(n, bool)
        ended = 0
        for t in range(steps):
            a = actions[t].copy()
            out = env.step(a)
            raw_obs, _raw_r, raw_term, raw_trunc, _ = raw.step(a)
            assert np.array_equal(out.obs[~pending], raw_obs[~pending])
            # envs reset by this step give no reward and no flags
            assert np.all(out.reward[pending] == 0) and not out.terminated[pending].any()
            done = raw_term | raw_trunc
            assert np.array_equal(out.terminated, raw_term & ~pending)
            if done.any():
                assert out.final_obs is not None
                assert np.array_equal(out.final_obs[done], raw_obs[done])
                x, theta = out.final_obs[raw_term, 0], out.final_obs[raw_term, 2]
                assert np.all((np.abs(x) > 2.4) | (np.abs(theta) > 12 * 2 * np.pi / 360))
                assert out.active is not None and np.array_equal(out.active, ~done)
                ended += int(done.sum())
            pending = done
        assert ended > 10
    raw.close()


def test_same_step_sync_env_matches_independent_hand_stepped_envs() -> None:
    n, steps, seed = 3, 200, 21
    rng = np.random.default_rng(0)
    actions = rng.integers(0, 2, size=(steps, n))
    refs = [gym.make("CartPole-v1") for _ in range(n)]
    ref_obs = [r.reset(seed=seed + i)[0] for i, r in enumerate(refs)]
    with E.make("CartPole-v1", num_envs=n, seed=seed, vectorization="sync") as env:
        cur = env.reset()
        assert np.allclose(cur.obs, np.stack(ref_obs))
        for t in range(steps):
            out = env.step(actions[t])
            for i, r in enumerate(refs):
                o, rew, term, trunc, _ = r.step(int(actions[t, i]))
                assert out.reward[i] == rew and out.terminated[i] == term and out.truncated[i] == trunc
                if term or trunc:
                    assert out.final_obs is not None and np.array_equal(out.final_obs[i], o)
                    o, _ = r.reset()
                assert np.array_equal(out.obs[i], o)
            assert out.active is None
    for r in refs:
        r.close()


# ---------------------------------------------------------------------------- seeding, masks, clipping


def _rollout(env: E.VecEnv, steps: int, seed: int | None) -> np.ndarray:
    rng = np.random.default_rng(0)
    obs = [env.reset(seed).obs]
    for _ in range(steps):
        obs.append(env.step(rng.integers(0, int(env.action_space.flat_dim), size=env.num_slots)).obs)
    return np.stack(obs)


@pytest.mark.parametrize("spec", ["CartPole-v1", "relayrl.envs:coop_nav"])
def test_same_seed_same_episodes(spec: str) -> None:
    a = _rollout(E.make(spec, num_envs=3, seed=4), 120, None)
    b = _rollout(E.make(spec, num_envs=3, seed=4), 120, None)
    c = _rollout(E.make(spec, num_envs=3, seed=5), 120, None)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # reset(seed) overrides make()'s seed
    d = _rollout(E.make(spec, num_envs=3, seed=5), 120, 4)
    assert np.array_equal(a, d)


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
def test_info_action_masks(mode: AutoresetMode) -> None:
    with E.make(count_vec(mode, mask=True)) as env:
        cur = env.reset()
        for _ in range(15):
            assert cur.mask is not None and cur.mask.dtype == bool and cur.mask.shape == (2, 2)
            active = np.ones(2, bool) if cur.active is None else cur.active
            for s in np.flatnonzero(active):
                t = int(cur.obs[s, 0])
                assert cur.mask[s].tolist() == [True, t % 2 == 0]
            cur = env.step(np.zeros(2, np.int64))


def test_box_actions_are_clipped_to_the_bounds() -> None:
    with E.make("Pendulum-v1", num_envs=1, seed=3) as env, E.make("Pendulum-v1", num_envs=1, seed=3) as ref:
        env.reset()
        ref.reset()
        for a in (5.0, -7.0, 0.5):
            out = env.step(np.array([[a]], np.float32))
            expected = ref.step(np.array([[np.clip(a, -2.0, 2.0)]], np.float32))
            assert np.array_equal(out.obs, expected.obs) and np.array_equal(out.reward, expected.reward)


@pytest.mark.parametrize(
    ("actions", "match"),
    [
        (np.zeros(3, np.int64), r"shape \(4,\)"),
        (np.zeros((4, 1), np.int64), r"shape \(4,\)"),
        (np.zeros(4, np.float32), "integers"),
        (np.array([0, 1, 2, 0]), "out of range"),
        (np.array([0, -1, 0, 0]), "out of range"),
    ],
)
def test_bad_actions_raise_observation_error_and_do_not_step(actions: np.ndarray, match: str) -> None:
    with E.make("CartPole-v1", num_envs=4, seed=0) as env, E.make("CartPole-v1", num_envs=4, seed=0) as ref:
        env.reset()
        ref.reset()
        with pytest.raises(ObservationError, match=match):
            env.step(actions)
        good = np.array([1, 0, 1, 0])
        assert np.array_equal(env.step(good).obs, ref.step(good).obs)


def test_bad_box_actions() -> None:
    with E.make("Pendulum-v1", num_envs=2) as env:
        env.reset(seed=0)
        with pytest.raises(ObservationError, match=r"shape \(2, 1\)"):
            env.step(np.zeros(2, np.float32))
        with pytest.raises(ObservationError, match="numeric"):
            env.step(np.array([["a"], ["b"]]))


def test_multi_binary_and_multi_discrete_spaces_round_trip() -> None:
    class Multi(CountEnv):
        def __init__(self) -> None:
            super().__init__()
            self.observation_space = gym.spaces.MultiDiscrete([3, 2])
            self.action_space = gym.spaces.MultiBinary(3)  # type: ignore[assignment]
            self.seen: list[np.ndarray] = []

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
                  ) -> tuple[Any, dict[str, Any]]:
            self.t = 0
            return np.array([2, 1]), {}

        def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
            self.seen.append(np.asarray(action))
            return np.array([0, 1]), 0.0, False, False, {}

    inner = Multi()
    with E.make(inner) as env:
        assert env.observation_space.shape == (5,)
        assert env.reset().obs.tolist() == [[0, 0, 1, 0, 1]]
        out = env.step(np.array([[1, 0, 1]]))
        assert out.obs.tolist() == [[1, 0, 0, 0, 1]]
        assert inner.seen[-1].tolist() == [1, 0, 1]
        with pytest.raises(ObservationError, match="out of range"):
            env.step(np.array([[2, 0, 1]]))


# -------------------------------------------------------------------------------- multi-agent


def test_parallel_env_with_agents_finishing_at_different_times() -> None:
    inner = StaggerEnv()
    with E.make(inner) as env:
        assert env.state_shape == (4,)
        cur = env.reset()
        assert cur.active is None and cur.mask is not None and cur.mask.tolist() == [[1, 1, 0], [1, 1, 0]]
        seen = []
        for _ in range(8):
            cur = env.step(np.array([1, 2]))
            seen.append(cur)
        # step 2: agent_0 terminates (reward 2), agent_1 goes on
        s2 = seen[1]
        assert s2.terminated.tolist() == [True, False] and s2.reward.tolist() == [2.0, 4.0]
        assert s2.final_obs is not None and s2.final_obs[0].tolist() == [2.0, 1.0]
        assert s2.active is not None and s2.active.tolist() == [False, True]
        # the dead agent's row of the concatenated state is zeros
        assert s2.state is not None and s2.state[1].tolist() == [0.0, 0.0, 2.0, 2.0]
        # steps 3-4: only agent_1 acts and gets reward
        assert seen[2].reward.tolist() == [0.0, 6.0] and seen[3].reward.tolist() == [0.0, 8.0]
        assert seen[3].truncated.tolist() == [False, True] and seen[3].final_obs is not None
        assert seen[3].final_obs[1].tolist() == [4.0, 2.0]
        # the env was reset in the same step: both agents act again
        assert seen[3].active is None and seen[3].obs.tolist() == [[0.0, 1.0], [0.0, 2.0]]
        assert seen[3].episode_returns.tolist() == [(3.0 + 20.0) / 2] and seen[3].episode_lengths.tolist() == [4]
        assert seen[0].mask is not None and seen[0].mask.tolist() == [[1, 1, 1], [1, 1, 1]]
        assert seen[1].mask is not None and seen[1].mask[1].tolist() == [1, 0, 1]
    assert inner.received[2] == {"agent_1": 2}


def test_coop_nav_random_policy_is_much_worse_than_the_oracle() -> None:
    env = E.CoopNavEnv()
    rng = np.random.default_rng(0)
    results = {}
    for policy in ("random", "oracle"):
        total = 0.0
        for ep in range(200):
            env.reset(seed=ep)
            while env.agents:
                acts = env.oracle_actions() if policy == "oracle" else {a: int(rng.integers(5)) for a in env.agents}
                _, rew, *_ = env.step(acts)
                total += rew["agent_0"]
        results[policy] = total / 200
    assert results["random"] < -15.0
    assert results["oracle"] > 0.0
    assert results["random"] < E.CoopNavEnv.reward_threshold < results["oracle"]


def test_coop_nav_api_shape() -> None:
    env = E.CoopNavEnv(n_agents=3, size=4, max_steps=5)
    obs, infos = env.reset(seed=1)
    assert set(obs) == set(env.possible_agents) == set(infos)
    assert all(env.observation_space(a).contains(o) for a, o in obs.items())
    assert env.state().shape == env.state_space.shape
    for _t in range(5):
        obs, _rew, term, _trunc, _ = env.step(dict.fromkeys(env.possible_agents, 0))
        if any(term.values()):
            break
    assert not env.agents
    with pytest.raises(RuntimeError, match="reset"):
        env.step({})
    with pytest.raises(ConfigError):
        E.CoopNavEnv(size=1)
    with pytest.raises(ConfigError, match="reward_mode"):
        E.CoopNavEnv(reward_mode="sparse")
    with pytest.raises(ValueError, match="options"):
        E.CoopNavEnv().reset(options={"agents": [(0, 0)]})


def test_coop_nav_rewards_splitting_up() -> None:
    env = E.CoopNavEnv(size=5, collision_penalty=0.5)
    stay = dict.fromkeys(env.possible_agents, 0)
    # both agents next to landmark (0, 0), the other landmark at (4, 4): the best assignment
    # sends one of them 7 cells away -> (1 + 7) / (2 agents * 4)
    env.reset(options={"agents": [(1, 0), (0, 1)], "landmarks": [(0, 0), (4, 4)]})
    _, rew, term, _, _ = env.step(stay)
    assert rew == {"agent_0": -1.0, "agent_1": -1.0} and not any(term.values())
    # moving both onto (0, 0): a collision and one landmark still 8 away
    env.reset(options={"agents": [(1, 0), (0, 1)], "landmarks": [(0, 0), (4, 4)]})
    _, rew, _, _, _ = env.step({"agent_0": 3, "agent_1": 2})
    assert rew["agent_0"] == pytest.approx(-8 / 8 - 0.5)
    # covering both landmarks ends the episode with the bonus
    env.reset(options={"agents": [(1, 0), (4, 3)], "landmarks": [(0, 0), (4, 4)]})
    _, rew, term, trunc, _ = env.step({"agent_0": 3, "agent_1": 1})
    assert rew["agent_0"] == 1.0 and all(term.values()) and not any(trunc.values()) and not env.agents
    with pytest.raises(ConfigError):
        E.CoopNavEnv(max_steps=0)


def test_async_vectorization_gives_the_same_episodes_as_sync() -> None:
    with _gym(E.make("CartPole-v1", num_envs=2, seed=8, vectorization="async")) as env:
        assert type(env.env).__name__ == "AsyncVectorEnv" and env.autoreset_mode == "same_step"
        a = _rollout(env, 60, None)
    b = _rollout(E.make("CartPole-v1", num_envs=2, seed=8, vectorization="sync"), 60, None)
    assert np.array_equal(a, b)


def test_parallel_env_observation_dicts_with_action_masks() -> None:
    class DictObs(StaggerEnv):
        def observation_space(self, agent: str) -> Any:
            return gym.spaces.Dict({"observation": gym.spaces.Box(-10.0, 10.0, (2,)),
                                    "action_mask": gym.spaces.MultiBinary(3)})

        def _obs(self, agent: str) -> Any:
            return {"observation": super()._obs(agent), "action_mask": np.array([1, 0, self.t % 2], np.int8)}

    with E.make(DictObs()) as env:
        assert env.observation_space.shape == (2,)
        cur = env.reset()
        assert cur.obs.tolist() == [[0.0, 1.0], [0.0, 2.0]]
        assert cur.mask is not None and cur.mask.tolist() == [[True, False, False]] * 2
        cur = env.step(np.array([0, 0]))
        assert cur.mask is not None and cur.mask.tolist() == [[True, False, True]] * 2
        assert cur.state is not None and cur.state[0].tolist() == [1.0, 1.0, 1.0, 2.0]
