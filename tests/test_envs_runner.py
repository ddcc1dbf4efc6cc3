"""relayrl.envs.EnvRunner end to end with the real agent and a MemorySink."""

from __future__ import annotations

import uuid
from collections import defaultdict

import gymnasium as gym
import numpy as np
import pytest
import trio
from _envs_toys import CountEnv, StaggerEnv, count_vec
from gymnasium.vector import AutoresetMode

import relayrl
import relayrl.envs as E
from relayrl import ConfigError, ObservationError, Trajectory
from relayrl.sinks import MemorySink
from relayrl.spaces import Discrete


def _policy(obs_dim: int, n: int = 2) -> relayrl.ModelModule:
    return relayrl.mlp_policy(obs_dim, Discrete(n), hidden=(16,), seed=1)


def _by_actor(trajs: list[Trajectory]) -> dict[uuid.UUID, list[Trajectory]]:
    out: dict[uuid.UUID, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        out[t.actor_id].append(t)
    return out


async def test_cartpole_every_step_accounted_for_against_a_hand_stepped_env() -> None:
    n, seed = 4, 17
    sink = MemorySink(100_000)
    env = E.make("CartPole-v1", num_envs=n, seed=seed)
    async with relayrl.open_agent(_policy(4), seed=0, sinks=[sink]) as agent:
        runner = E.EnvRunner(env, agent)
        stats = await runner.run(1500)
        ids = runner.actor_ids
    trajs = sink.drain()
    assert stats.steps >= 1500 and stats.steps == stats.agent_steps == sum(len(t) for t in trajs)
    assert stats.episodes > 20 and stats.episodes == sum(t.terminated for t in trajs)
    assert np.isclose(stats.mean_return, stats.mean_length) and stats.steps_per_second > 0
    # CartPole pays 1 for every real step: a reward on the wrong step would show up as 0 or 2
    assert all(np.all(t.reward == 1.0) for t in trajs)
    per_actor = _by_actor(trajs)
    assert set(per_actor) == set(ids)
    for actor_trajs in per_actor.values():
        *body, last = actor_trajs
        assert all(t.terminated and not t.truncated and t.done[-1] and not t.done[:-1].any() for t in body)
        # the run ended mid-episode: the open trajectory was cut, with its final observation (or the
        # episode happened to end at the very last step)
        assert (last.truncated and not last.done.any() and last.final_obs is not None) or last.terminated
    # replay the same actions in a raw NEXT_STEP vector env: observations and boundaries must match
    raw = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point")
    obs, _ = raw.reset(seed=seed)
    queues = []
    for actor in ids:
        ts = per_actor[actor]
        queues.append([(t.obs[i], int(t.act[i]), bool(t.done[i])) for t in ts for i in range(len(t))])
    pos = [0] * n
    pending = np.zeros(n, bool)
    while any(pos[e] < len(queues[e]) for e in range(n)):
        act = np.zeros(n, np.int64)
        for e in range(n):
            if not pending[e]:
                o, a, _ = queues[e][pos[e]]
                assert np.array_equal(o, obs[e])
                act[e] = a
        obs, _, term, trunc, _ = raw.step(act)
        for e in range(n):
            if not pending[e]:
                assert bool(term[e]) == queues[e][pos[e]][2]
                pos[e] += 1
        pending = term | trunc
    raw.close()
    for e, actor in enumerate(ids):
        last = per_actor[actor][-1]
        if last.truncated:
            assert last.final_obs is not None and np.array_equal(last.final_obs, obs[e])


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
async def test_rewards_land_on_the_step_that_earned_them(mode: AutoresetMode) -> None:
    sink = MemorySink(10_000)
    env = E.make(count_vec(mode))
    async with relayrl.open_agent(_policy(1), seed=0, sinks=[sink], max_traj_length=1000) as agent:
        runner = E.EnvRunner(env, agent)
        await runner.run(40)
        ids = runner.actor_ids
    per_actor = _by_actor(sink.drain())
    # slot 0: 3-step episodes that terminate; slot 1: 10-step episodes cut at 4 by a time limit
    for t in per_actor[ids[0]][:-1]:
        assert t.obs[:, 0].tolist() == [0.0, 1.0, 2.0] and t.reward.tolist() == [1.0, 2.0, 3.0]
        assert t.done.tolist() == [False, False, True] and not t.truncated
    for t in per_actor[ids[1]][:-1]:
        assert t.obs[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0] and t.reward.tolist() == [1.0, 2.0, 3.0, 4.0]
        assert t.truncated and not t.done.any() and t.final_obs is not None and t.final_obs.tolist() == [4.0]
    for actor in ids:
        last = per_actor[actor][-1]
        n = len(last)
        assert last.reward.tolist() == [float(i + 1) for i in range(n)]
        assert last.final_obs is not None and last.final_obs.tolist() == [float(n)]


async def test_max_traj_length_splits_keep_every_reward() -> None:
    sink = MemorySink(10_000)
    env = E.make(count_vec(AutoresetMode.NEXT_STEP))
    async with relayrl.open_agent(_policy(1), seed=0, sinks=[sink], max_traj_length=2) as agent:
        runner = E.EnvRunner(env, agent)
        stats = await runner.run(40)
    trajs = sink.drain()
    assert sum(len(t) for t in trajs) == stats.agent_steps
    for t in trajs:
        assert t.reward.tolist() == (t.obs[:, 0] + 1).tolist()


async def test_runs_continue_without_cut_and_the_pending_reward_is_credited_later() -> None:
    sink = MemorySink(10_000)
    env = E.make(count_vec(AutoresetMode.SAME_STEP))
    async with relayrl.open_agent(_policy(1), seed=0, sinks=[sink]) as agent:
        runner = E.EnvRunner(env, agent)
        await runner.run(2, cut=False)  # one vector step: both slots have one step open
        assert len(sink.drain()) == 0
        await runner.run(4, cut=False)
        await runner.run(0)  # cut now
        ids = runner.actor_ids
    per_actor = _by_actor(sink.drain())
    first = per_actor[ids[0]][0]
    assert first.reward.tolist() == [1.0, 2.0, 3.0] and first.terminated
    assert per_actor[ids[1]][0].reward.tolist() == [1.0, 2.0, 3.0] and per_actor[ids[1]][0].truncated


async def test_until_and_on_episodes() -> None:
    env = E.make("CartPole-v1", num_envs=8, seed=0)
    seen: list[tuple[float, int]] = []

    def on_episodes(returns: np.ndarray, lengths: np.ndarray) -> None:
        seen.extend(zip(returns.tolist(), lengths.tolist(), strict=True))

    async with relayrl.open_agent(_policy(4), seed=0) as agent:
        runner = E.EnvRunner(env, agent, window=5)
        stats = await runner.run(until=lambda s: s.episodes >= 10, on_episodes=on_episodes)
    assert 10 <= stats.episodes == len(seen) < 10 + 8
    assert stats.mean_return == pytest.approx(np.mean([r for r, _ in seen[-5:]]))
    assert stats.last_return == seen[-1][0]


async def test_cancellation_cuts_open_trajectories_and_loses_nothing() -> None:
    sink = MemorySink(100_000)
    env = E.make("CartPole-v1", num_envs=4, seed=2)
    async with relayrl.open_agent(_policy(4), seed=0, sinks=[sink]) as agent:
        runner = E.EnvRunner(env, agent)
        with trio.CancelScope() as cs:

            def stop(s: E.RunnerStatistics) -> bool:
                if s.steps >= 200:
                    cs.cancel()
                return False

            await runner.run(until=stop)
        assert cs.cancelled_caught
        stats = runner.statistics()
    trajs = sink.drain()
    assert sum(len(t) for t in trajs) == stats.agent_steps
    assert all(np.all(t.reward == 1.0) for t in trajs)
    per_actor = _by_actor(trajs)
    assert len(per_actor) == 4
    for actor_trajs in per_actor.values():
        last = actor_trajs[-1]
        assert (last.truncated and last.final_obs is not None) or last.terminated


async def test_deterministic_evaluation_is_reproducible_and_greedy() -> None:
    model = _policy(4)
    results = []
    for _ in range(2):
        sink = MemorySink(10_000)
        async with relayrl.open_agent(model, seed=None, sinks=[sink]) as agent:
            runner = E.EnvRunner(E.make("CartPole-v1", num_envs=2, seed=9), agent, deterministic=True)
            await runner.run(100)
            ids = runner.actor_ids
        per_actor = _by_actor(sink.drain())
        results.append([t for actor in ids for t in per_actor[actor]])  # in slot order
    a, b = results
    assert len(a) == len(b) and all(np.array_equal(x.act, y.act) and np.array_equal(x.obs, y.obs)
                                    for x, y in zip(a, b, strict=True))
    policy = model.policy("cpu")
    for t in a:
        assert np.array_equal(t.act, np.argmax(policy.forward(t.obs).logits, axis=1))


async def test_masks_from_info_reach_the_agent() -> None:
    sink = MemorySink(10_000)
    env = E.make(gym.vector.SyncVectorEnv([lambda: CountEnv(6, mask=True)]))
    async with relayrl.open_agent(_policy(1), seed=0, sinks=[sink]) as agent:
        await E.EnvRunner(env, agent).run(30)
    for t in sink.drain():
        assert t.mask is not None
        assert t.mask[:, 1].tolist() == (t.obs[:, 0] % 2 == 0).tolist()
        # masked actions are never taken
        assert not np.any((t.act == 1) & ~t.mask[:, 1])


async def test_pettingzoo_rps_through_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    sink = MemorySink(10_000)
    env = E.make("pettingzoo.classic.rps.rps:parallel_env", num_envs=2, seed=0, env_kwargs={"max_cycles": 10})
    async with relayrl.open_agent(relayrl.mlp_policy(4, Discrete(3), hidden=(8,)), seed=0, sinks=[sink]) as agent:
        runner = E.EnvRunner(env, agent)
        stats = await runner.run(45)
        ids = runner.actor_ids
        labels = runner.slot_of()
    trajs = sink.drain()
    assert len(ids) == 4 and sorted(labels.values()) == ["0/player_0", "0/player_1", "1/player_0", "1/player_1"]
    assert stats.steps == 46 and stats.agent_steps == 92 == sum(len(t) for t in trajs)
    assert stats.episodes == 4 and np.isclose(stats.mean_return, 0.0)  # zero-sum: mean per-agent return is 0
    per_actor = _by_actor(trajs)
    for t in trajs:
        assert t.extras["state"].shape == (len(t), 8)
        assert set(np.unique(t.reward)) <= {-1.0, 0.0, 1.0}
    # zero-sum game: the two players of one env get opposite rewards at every step
    for e in range(2):
        p0 = np.concatenate([t.reward for t in per_actor[ids[2 * e]]])
        p1 = np.concatenate([t.reward for t in per_actor[ids[2 * e + 1]]])
        assert np.array_equal(p0, -p1)
        # episodes of 10 cycles are truncated (with a final observation), then the open ones cut at the end
        assert [len(t) for t in per_actor[ids[2 * e]]] == [10, 10, 3]
        assert all(t.truncated and t.final_obs is not None for t in per_actor[ids[2 * e]])


async def test_dead_agents_act_no_more_and_the_state_goes_to_extras() -> None:
    sink = MemorySink(10_000)
    inner = StaggerEnv()
    env = E.make(inner)
    model = relayrl.mlp_policy(2, Discrete(3), hidden=(8,))
    async with relayrl.open_agent(model, seed=0, sinks=[sink]) as agent:
        runner = E.EnvRunner(env, agent)
        stats = await runner.run(8)
        ids = runner.actor_ids
    per_actor = _by_actor(sink.drain())
    a0, a1 = per_actor[ids[0]], per_actor[ids[1]]
    assert [len(t) for t in a0] == [2, 2] and all(t.terminated for t in a0)
    assert a0[0].reward.tolist() == [1.0, 2.0] and a1[0].reward.tolist() == [2.0, 4.0, 6.0, 8.0]
    assert a1[0].truncated and a1[0].final_obs is not None and a1[0].final_obs.tolist() == [4.0, 2.0]
    # agent_1's state column: both observations, then zeros where agent_0 is dead
    assert a1[0].extras["state"].tolist() == [[0, 1, 0, 2], [1, 1, 1, 2], [0, 0, 2, 2], [0, 0, 3, 2]]
    assert stats.episodes == 2 and stats.agent_steps == 12
    # masks from infos were used: action 2 is never taken where it is masked
    for t in a0 + a1:
        assert t.mask is not None and not np.any(~t.mask[np.arange(len(t)), t.act])
    assert all(len(acts) == 1 for acts in inner.received[2:4])


async def test_coop_nav_through_the_runner() -> None:
    sink = MemorySink(10_000)
    env = E.make("relayrl.envs:coop_nav", num_envs=4, seed=0)
    model = relayrl.mlp_policy(env.observation_space.shape, env.action_space, hidden=(16,))
    async with relayrl.open_agent(model, seed=0, sinks=[sink]) as agent:
        stats = await E.EnvRunner(env, agent).run(400)
    trajs = sink.drain()
    assert stats.agent_steps == 2 * stats.steps == sum(len(t) for t in trajs)
    assert stats.episodes >= 12 and stats.mean_return < E.CoopNavEnv.reward_threshold
    assert all(t.extras["state"].shape == (len(t), 8) for t in trajs)


async def test_runner_bad_inputs() -> None:
    env = E.make("CartPole-v1", num_envs=2)
    async with relayrl.open_agent(_policy(4), seed=0) as agent:
        with pytest.raises(ConfigError, match="VecEnv"):
            E.EnvRunner(gym.make("CartPole-v1"), agent)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="one actor id per slot"):
            E.EnvRunner(env, agent, ids=[uuid.uuid4()])
        with pytest.raises(ConfigError, match="window"):
            E.EnvRunner(env, agent, window=0)
        runner = E.EnvRunner(env, agent)
        with pytest.raises(ConfigError, match="steps"):
            await runner.run(-1)
    # a model that does not fit the env: a typed error, nothing recorded
    sink = MemorySink(100)
    async with relayrl.open_agent(_policy(3), seed=0, sinks=[sink]) as agent:
        runner = E.EnvRunner(env, agent)
        with pytest.raises(ObservationError):
            await runner.run(10)
        assert runner.statistics().agent_steps == 0
    assert len(sink.drain()) == 0


async def test_runner_stops_when_the_agent_closes() -> None:
    env = E.make("CartPole-v1", num_envs=2)
    async with relayrl.open_agent(_policy(4), seed=0) as agent:
        runner = E.EnvRunner(env, agent)
        await runner.run(10)
    with pytest.raises(relayrl.AgentClosedError):
        await runner.run(10)


async def test_a_failing_env_step_cuts_with_reward_zero_and_one_run_at_a_time() -> None:
    class Broken(CountEnv):
        def step(self, action: np.int64) -> tuple[np.ndarray, float, bool, bool, dict[str, object]]:
            if self.t == 2:
                raise RuntimeError("env broke")
            return super().step(action)

    sink = MemorySink(100)
    env = E.make(Broken(10))
    async with relayrl.open_agent(_policy(1), seed=0, sinks=[sink]) as agent:
        runner = E.EnvRunner(env, agent)
        with pytest.raises(RuntimeError, match="env broke"):
            await runner.run(10, cut=False)
        busy = E.EnvRunner(E.make(CountEnv(10)), agent)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(busy.run)
            while busy.statistics().steps == 0:  # until the background run is really inside run()
                await trio.lowlevel.checkpoint()
            with pytest.raises(trio.BusyResourceError):
                await busy.run(5)
            nursery.cancel_scope.cancel()
        ids = runner.actor_ids
    (traj,) = _by_actor(sink.drain())[ids[0]]
    # steps at t=0 and t=1 earned 1 and 2; the step recorded at t=2 never happened: reward 0
    assert traj.obs[:, 0].tolist() == [0.0, 1.0, 2.0] and traj.reward.tolist() == [1.0, 2.0, 0.0]
    assert traj.truncated


async def test_taxi_info_masks_are_respected_end_to_end() -> None:
    sink = MemorySink(10_000)
    env = E.make("Taxi-v4", num_envs=4, seed=0)
    assert env.observation_space.shape == (500,) and env.reward_threshold == 8.0  # one-hot Discrete(500)
    model = relayrl.mlp_policy(env.observation_space.shape, env.action_space, hidden=(16,))
    async with relayrl.open_agent(model, seed=0, sinks=[sink]) as agent:
        stats = await E.EnvRunner(env, agent).run(600)
    trajs = sink.drain()
    assert sum(len(t) for t in trajs) == stats.agent_steps
    for t in trajs:
        assert t.mask is not None and not t.mask.all()
        assert t.mask[np.arange(len(t)), t.act].all()  # never a masked action


async def test_trajectories_name_their_env_slot() -> None:
    sink = MemorySink(10_000)
    env = E.make("CartPole-v1", num_envs=3, seed=0)
    model = relayrl.mlp_policy(env.observation_space.shape, env.action_space, hidden=(8,))
    async with relayrl.open_agent(model, seed=0, sinks=[sink]) as agent:
        runner = E.EnvRunner(env, agent)
        await runner.run(300)
        slot_of = runner.slot_of()
    trajs = sink.drain()
    assert trajs and {t.env_id for t in trajs} == {"0", "1", "2"}
    assert all(t.env_id == slot_of[t.actor_id] for t in trajs)
