"""The agent runtime: requests, recording, rewards, models, actors, routers, errors, shutdown.

Real components throughout: numpy-backend models, the MemorySink, real trio tasks. Time-based
tests use ``autojump_clock``.
"""

from __future__ import annotations

import math
import threading
import uuid
from typing import Any

import numpy as np
import pytest
import trio

import relayrl
from relayrl import spaces
from relayrl.abc import HeadOutputs, Policy
from relayrl.sinks import MemorySink, SinkStatistics, TrajectorySink

OBS = (4,)


def model(seed: int = 0, version: int | None = None) -> relayrl.ModelModule:
    m = relayrl.mlp_policy(4, spaces.Discrete(3), hidden=(16,), seed=seed)
    return m if version is None else m.with_version(version)


def obs_for(n: int, t: float = 0.0) -> np.ndarray:
    return (np.arange(n * 4, dtype=np.float32).reshape(n, 4) / 10 + t).astype(np.float32)


def by_actor(trajs: list[relayrl.Trajectory]) -> dict[uuid.UUID, list[relayrl.Trajectory]]:
    out: dict[uuid.UUID, list[relayrl.Trajectory]] = {}
    for t in trajs:
        out.setdefault(t.actor_id, []).append(t)
    return out


# -- basic loop -------------------------------------------------------------------------------------


async def test_batched_request_records_steps_rewards_and_versions() -> None:
    sink = MemorySink(100)
    async with relayrl.open_agent(model(), actors=3, seed=1, sinks=[sink]) as agent:
        ids = agent.actor_ids
        assert len(ids) == 3 and all(isinstance(i, uuid.UUID) for i in ids)
        acts = []
        for t in range(4):
            batch = await agent.request_action(ids, obs_for(3, t), reward=None if t == 0 else [t, 10 * t, 100 * t])
            assert isinstance(batch, relayrl.ActionBatch) and len(batch) == 3
            assert batch.actor_ids == ids
            assert batch.act.shape == (3,) and batch.act.dtype == np.int64
            assert batch.logp.dtype == np.float32 and batch.value.shape == (3,)
            assert list(batch.model_version) == [0, 0, 0]
            views = list(batch)
            assert [v.actor_id for v in views] == ids
            assert views[1].act == batch.act[1] and views[1].logp == pytest.approx(float(batch.logp[1]))
            acts.append(batch.act.copy())
        await agent.flag_last_action(ids, reward=np.array([7.0, 8.0, 9.0]))
        await trio.testing.wait_all_tasks_blocked()  # the emitter tasks deliver
        trajs = by_actor(sink.drain())
    assert set(trajs) == set(ids)
    for k, actor_id in enumerate(ids):
        (traj,) = trajs[actor_id]
        assert len(traj) == 4 and traj.episode == 0 and not traj.truncated and traj.terminated
        np.testing.assert_array_equal(traj.done, [False, False, False, True])
        scale = [1, 10, 100][k]
        np.testing.assert_allclose(traj.reward, [1 * scale, 2 * scale, 3 * scale, [7, 8, 9][k]])
        np.testing.assert_array_equal(traj.act, [a[k] for a in acts])
        np.testing.assert_allclose(traj.obs, np.stack([obs_for(3, t)[k] for t in range(4)]))
        np.testing.assert_array_equal(traj.model_version, [0] * 4)
        assert traj.mask is None and traj.start_time <= traj.end_time


async def test_single_observation_is_broadcast_to_all_ids() -> None:
    sink = MemorySink(10)
    async with relayrl.open_agent(model(), actors=2, sinks=[sink]) as agent:
        await agent.request_action(agent.actor_ids, np.ones(4, dtype=np.float64))  # float64 casts to float32
        await agent.flag_last_action(agent.actor_ids)
    trajs = sink.drain()
    assert len(trajs) == 2
    for t in trajs:
        assert t.obs.dtype == np.float32
        np.testing.assert_array_equal(t.obs, np.ones((1, 4)))


async def test_reward_for_first_step_is_ignored_and_empty_trajectories_are_never_emitted() -> None:
    sink = MemorySink(10)
    async with relayrl.open_agent(model(), actors=1, sinks=[sink]) as agent:
        (a,) = agent.actor_ids
        await agent.flag_last_action([a], reward=5.0)  # nothing recorded: nothing emitted
        await agent.request_action([a], obs_for(1), reward=3.0)  # no previous step: ignored
        await agent.flag_last_action([a], reward=1.0)
        await agent.flag_last_action([a], reward=2.0)  # empty again
    (traj,) = sink.drain()
    np.testing.assert_array_equal(traj.reward, [1.0])
    assert traj.episode == 0


async def test_episodes_count_up_and_truncation_keeps_final_obs() -> None:
    sink = MemorySink(10)
    async with relayrl.open_agent(model(), actors=2, sinks=[sink]) as agent:
        ids = agent.actor_ids
        await agent.request_action(ids, obs_for(2))
        await agent.flag_last_action(ids, reward=1.0, truncated=True, final_obs=obs_for(2, 5.0))
        await agent.request_action(ids, obs_for(2))
        await agent.flag_last_action(ids)
    trajs = by_actor(sink.drain())
    for k, actor_id in enumerate(ids):
        first, second = trajs[actor_id]
        assert (first.episode, second.episode) == (0, 1)
        assert first.truncated and not first.terminated and not first.done.any()
        np.testing.assert_allclose(first.final_obs, obs_for(2, 5.0)[k])  # type: ignore[arg-type]
        assert second.terminated and second.final_obs is None


async def test_max_traj_length_splits_and_credits_the_held_back_reward() -> None:
    sink = MemorySink(10)
    async with relayrl.open_agent(model(), actors=1, max_traj_length=3, sinks=[sink]) as agent:
        (a,) = agent.actor_ids
        for t in range(7):
            await agent.request_action([a], obs_for(1, t), reward=None if t == 0 else float(t))
        await agent.flag_last_action([a], reward=7.0)
    first, second, third = sink.drain()
    np.testing.assert_array_equal(first.reward, [1, 2, 3])  # reward 3 arrived with the 4th request
    assert first.truncated and not first.done.any()
    np.testing.assert_allclose(first.final_obs, obs_for(1, 3)[0])  # type: ignore[arg-type]
    np.testing.assert_array_equal(second.reward, [4, 5, 6])
    assert second.truncated
    np.testing.assert_array_equal(third.reward, [7])
    assert third.terminated and not third.truncated
    assert first.episode == second.episode == third.episode == 0


async def test_batched_max_traj_length_split_with_many_actors() -> None:
    sink = MemorySink(100)
    async with relayrl.open_agent(model(), actors=5, max_traj_length=2, sinks=[sink]) as agent:
        ids = agent.actor_ids
        for t in range(5):
            await agent.request_action(ids, obs_for(5, t), reward=np.arange(5) + 10 * t)
        await agent.flag_last_action(ids, reward=-1.0)
    trajs = by_actor(sink.drain())
    for k, actor_id in enumerate(ids):
        lens = [len(t) for t in trajs[actor_id]]
        assert lens == [2, 2, 1]
        rewards = np.concatenate([t.reward for t in trajs[actor_id]])
        np.testing.assert_array_equal(rewards, [10 + k, 20 + k, 30 + k, 40 + k, -1])


# -- masks, extras, continuous actions, determinism --------------------------------------------------


async def test_masks_are_applied_and_recorded() -> None:
    sink = MemorySink(10)
    mask = np.array([[False, True, False], [True, False, False]])
    async with relayrl.open_agent(model(), actors=2, sinks=[sink], seed=3) as agent:
        ids = agent.actor_ids
        for _ in range(20):
            batch = await agent.request_action(ids, obs_for(2), mask=mask)
            assert list(batch.act) == [1, 0]
        await agent.flag_last_action(ids)
    for traj in sink.drain():
        assert traj.mask is not None and traj.mask.shape == (20, 3)


async def test_extras_are_recorded_per_step() -> None:
    sink = MemorySink(10)
    async with relayrl.open_agent(model(), actors=2, sinks=[sink]) as agent:
        ids = agent.actor_ids
        for t in range(3):
            await agent.request_action(ids, obs_for(2), extras={"state": np.full((2, 6), t, dtype=np.float32)})
        await agent.request_action(ids[:1], obs_for(1), extras={"state": np.full((1, 6), 9, dtype=np.float32)})
        await agent.request_action(ids[1:], obs_for(1))  # no extras: zero row
        await agent.flag_last_action(ids)
    trajs = by_actor(sink.drain())
    np.testing.assert_array_equal(trajs[ids[0]][0].extras["state"][:, 0], [0, 1, 2, 9])
    np.testing.assert_array_equal(trajs[ids[1]][0].extras["state"][:, 0], [0, 1, 2, 0])


async def test_gaussian_actions() -> None:
    m = relayrl.mlp_policy(3, spaces.Box(-1.0, 1.0, shape=(2,)), hidden=(8,))
    sink = MemorySink(10)
    async with relayrl.open_agent(m, actors=4, sinks=[sink]) as agent:
        batch = await agent.request_action(agent.actor_ids, np.zeros((4, 3)))
        assert batch.act.shape == (4, 2) and batch.act.dtype == np.float32
        single = await agent.request_action(agent.actor_ids[:1], np.zeros(3), deterministic=True)
        np.testing.assert_array_equal(single.act, np.zeros((1, 2)))  # the mean of a zero input
        with pytest.raises(relayrl.ObservationError, match="mask"):
            await agent.request_action(agent.actor_ids, np.zeros((4, 3)), mask=np.ones((4, 2)))
        await agent.flag_last_action(agent.actor_ids)
    assert sorted(len(t) for t in sink.drain()) == [1, 1, 1, 2]


async def _run_actions(seed: int) -> list[np.ndarray]:
    out = []
    async with relayrl.open_agent(model(), actors=3, seed=seed) as agent:
        ids = agent.actor_ids
        for t in range(5):
            out.append((await agent.request_action(ids, obs_for(3, t))).act)
            out.append((await agent.request_action(ids[:1], obs_for(1, t))).act)
    return out


async def test_same_seed_same_actions() -> None:
    a, b, c = await _run_actions(11), await _run_actions(11), await _run_actions(12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


async def test_parity_with_direct_sampling_numpy_backend() -> None:
    m = relayrl.mlp_policy(4, spaces.Discrete(5), hidden=(32, 32), seed=4)
    policy = m.policy("cpu")
    head = relayrl.make_head(m.metadata)
    rng = np.random.default_rng(123)
    observations = [np.random.default_rng(t).standard_normal((6, 4)).astype(np.float32) for t in range(10)]
    async with relayrl.open_agent(m, actors=6, seed=123) as agent:
        for o in observations:
            got = await agent.request_action(agent.actor_ids, o)
            out = policy.forward(o)
            act, logp = head.sample(out, rng)
            np.testing.assert_array_equal(got.act, act)
            np.testing.assert_allclose(got.logp, logp, rtol=1e-6)
            np.testing.assert_allclose(got.value, out.value, rtol=1e-6)
            # a single actor, inline, draws from the same generator too
            one = await agent.request_action(agent.actor_ids[2:3], o[2])
            act1, _ = head.sample(policy.forward(o[2:3]), rng)
            np.testing.assert_array_equal(one.act, act1)


# -- typed errors: nothing is recorded --------------------------------------------------------------


async def test_bad_requests_raise_typed_errors_and_record_nothing() -> None:
    sink = MemorySink(10)
    async with relayrl.open_agent(model(), actors=2, sinks=[sink]) as agent:
        ids = agent.actor_ids
        await agent.request_action(ids, obs_for(2))
        before = agent.statistics().steps_recorded
        unknown = uuid.uuid4()
        with pytest.raises(relayrl.UnknownActorError) as info:
            await agent.request_action([ids[0], unknown], obs_for(2), reward=5.0)
        assert isinstance(info.value, KeyError) and str(unknown) in str(info.value)
        with pytest.raises(KeyError):
            await agent.request_action([unknown], obs_for(1))
        bad: list[tuple[dict[str, Any], str]] = [
            ({"obs": np.zeros((2, 5))}, r"shape \(2, 5\), expected \(2, 4\)"),
            ({"obs": np.zeros((3, 4))}, r"shape \(3, 4\), expected \(2, 4\)"),
            ({"obs": np.array([["a"] * 4] * 2)}, "dtype <U1, expected float32"),
            ({"obs": np.full((2, 4), np.nan)}, "NaN"),
            ({"obs": obs_for(2), "mask": np.ones((2, 2), bool)}, r"mask has shape \(2, 2\), expected \(2, 3\)"),
            ({"obs": obs_for(2), "mask": np.zeros((2, 3), bool)}, "masks out every action"),
            ({"obs": obs_for(2), "mask": np.array([["x"] * 3] * 2)}, "mask has dtype"),
            ({"obs": obs_for(2), "reward": [1.0, 2.0, 3.0]}, r"reward has shape \(3,\), expected a scalar or \(2,\)"),
            ({"obs": obs_for(2), "reward": math.nan}, "NaN"),
            ({"obs": obs_for(2), "extras": {"s": np.zeros((3, 2))}}, r"extra 's' has shape \(3, 2\)"),
        ]
        for kwargs, message in bad:
            with pytest.raises(relayrl.ObservationError, match=message) as err:
                await agent.request_action(ids, **kwargs)
            assert isinstance(err.value, ValueError)
        bad_single: list[dict[str, Any]] = [  # the same for one actor (inline path)
            {"obs": np.zeros((1, 5))}, {"obs": np.zeros((2, 4))}, {"obs": np.array(["a"] * 4)},
            {"obs": np.full(4, np.inf)}, {"obs": obs_for(1), "mask": np.ones(2, bool)},
            {"obs": obs_for(1), "mask": np.zeros(3, bool)}, {"obs": obs_for(1), "reward": [1.0, 2.0]},
            {"obs": obs_for(1), "reward": math.inf}, {"obs": obs_for(1), "reward": "x"},
            {"obs": obs_for(1), "extras": {"s": np.zeros((2, 2))}},
        ]
        for kwargs in bad_single:
            with pytest.raises(relayrl.ObservationError):
                await agent.request_action(ids[:1], **kwargs)
        with pytest.raises(relayrl.ObservationError, match="distinct"):
            await agent.request_action([ids[0], ids[0]], obs_for(2))
        with pytest.raises(relayrl.ObservationError, match="at least one"):
            await agent.request_action([], obs_for(2))
        with pytest.raises(relayrl.ObservationError, match="truncated"):
            await agent.flag_last_action(ids, final_obs=obs_for(2))
        with pytest.raises(relayrl.UnknownActorError):
            await agent.flag_last_action([unknown], reward=1.0)
        with pytest.raises(relayrl.ObservationError):
            await agent.flag_last_action(ids, reward=[1.0, 2.0, 3.0])
        assert agent.statistics().steps_recorded == before
        assert agent.statistics().failures >= len(bad)
        # still serving, and the rewards of the rejected requests were not credited
        await agent.request_action(ids, obs_for(2), reward=[1.0, 2.0])
        await agent.flag_last_action(ids)
    trajs = by_actor(sink.drain())
    for k, actor_id in enumerate(ids):
        (traj,) = trajs[actor_id]
        np.testing.assert_array_equal(traj.reward, [[1.0, 2.0][k], 0.0])


class FlakyPolicy(Policy):
    """A real policy that fails on observations whose first value is 13 (a model bug stand-in)."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner

    def forward(self, obs: np.ndarray, mask: np.ndarray | None = None) -> HeadOutputs:
        if (obs[:, 0] == 13).any():
            raise RuntimeError("model failure on 13")
        return self.inner.forward(obs, mask)


def flaky_model() -> relayrl.ModelModule:
    m = model(seed=9)
    m._policies["cpu"] = FlakyPolicy(m.policy("cpu"))  # the cached validated policy, wrapped
    return m


async def test_forward_error_goes_to_the_caller_and_the_agent_keeps_serving() -> None:
    sink = MemorySink(10)
    async with relayrl.open_agent(flaky_model(), actors=3, sinks=[sink]) as agent:
        ids = agent.actor_ids
        bad = obs_for(3)
        bad[1, 0] = 13
        with pytest.raises(RuntimeError, match="13"):
            await agent.request_action(ids, bad)
        with pytest.raises(RuntimeError, match="13"):
            await agent.request_action(ids[1:2], bad[1])
        assert agent.statistics().steps_recorded == 0

        # concurrent single-actor requests through the router: only the culprit fails
        results: dict[int, Any] = {}

        async def one(k: int) -> None:
            try:
                results[k] = await agent.request_action(ids[k:k + 1], bad[k])
            except RuntimeError as exc:
                results[k] = exc

        for _ in range(3):
            async with trio.open_nursery() as nursery:
                for k in range(3):
                    nursery.start_soon(one, k)
            assert isinstance(results[1], RuntimeError)
            assert isinstance(results[0], relayrl.ActionBatch) and isinstance(results[2], relayrl.ActionBatch)
        assert agent.statistics().routed_requests > 0
        await agent.flag_last_action(ids)
    assert sorted(len(t) for t in sink.drain()) == [3, 3]


async def test_no_model() -> None:
    async with relayrl.open_agent() as agent:
        a = await agent.new_actor()
        assert await agent.get_model_version([a]) == {a: -1}
        with pytest.raises(relayrl.NoModelError) as info:
            await agent.request_action([a], obs_for(1))
        assert isinstance(info.value, LookupError)
        with pytest.raises(relayrl.NoModelError):
            await agent.request_action([a, await agent.new_actor()], obs_for(2))
        await agent.update_model(model())
        assert await agent.get_model_version([a]) == {a: 0}
        await agent.request_action([a], obs_for(1))


# -- models -------------------------------------------------------------------------------------------


async def test_update_model_versions_and_rejection() -> None:
    sink = MemorySink(10)
    async with relayrl.open_agent(model(), actors=3, sinks=[sink]) as agent:
        ids = agent.actor_ids
        await agent.request_action(ids, obs_for(3))
        await agent.update_model(model(1), ids[:1])
        assert await agent.get_model_version(ids) == {ids[0]: 1, ids[1]: 0, ids[2]: 0}
        b = await agent.request_action(ids, obs_for(3))
        assert list(b.model_version) == [1, 0, 0]
        assert agent.statistics().batches == 3  # two groups: two forwards
        # a broken model is rejected and the old one keeps serving
        broken = relayrl.ModelModule(model().metadata, model().data)
        object.__setattr__(broken, "_data", b"not an npz")
        with pytest.raises(relayrl.ModelError):
            await agent.update_model(broken)
        assert await agent.get_model_version(ids) == {ids[0]: 1, ids[1]: 0, ids[2]: 0}
        # a producer-stamped version is taken as is
        await agent.update_model(model(2, version=41))
        assert set((await agent.get_model_version(ids)).values()) == {41}
        await agent.update_model(model(3))
        assert set((await agent.get_model_version(ids)).values()) == {42}
        b = await agent.request_action(ids, obs_for(3), reward=1.0)
        assert list(b.model_version) == [42] * 3
        with pytest.raises(relayrl.UnknownActorError):
            await agent.update_model(model(4), [uuid.uuid4()])
        await agent.flag_last_action(ids)
    trajs = by_actor(sink.drain())
    np.testing.assert_array_equal(trajs[ids[0]][0].model_version, [0, 1, 42])
    np.testing.assert_array_equal(trajs[ids[1]][0].model_version, [0, 0, 42])


async def test_update_model_with_another_layout_flushes_in_progress_trajectories() -> None:
    sink = MemorySink(10)
    async with relayrl.open_agent(model(), actors=2, sinks=[sink]) as agent:
        ids = agent.actor_ids
        await agent.request_action(ids, obs_for(2))
        wide = relayrl.mlp_policy(6, spaces.Discrete(2), hidden=(8,))
        await agent.update_model(wide)
        with pytest.raises(relayrl.ObservationError):
            await agent.request_action(ids, obs_for(2))
        await agent.request_action(ids, np.zeros((2, 6)))
        await agent.flag_last_action(ids)
    trajs = sink.drain()
    assert sorted((t.obs.shape[1], t.truncated) for t in trajs) == [(4, True), (4, True), (6, False), (6, False)]


async def test_shared_mode_one_model_per_device() -> None:
    async with relayrl.open_agent(model(), actors=4, model_mode="shared") as agent:
        ids = agent.actor_ids
        assert agent.model_mode == "shared"
        await agent.update_model(model(1), ids[:1])  # shared: the whole device
        assert set((await agent.get_model_version(ids)).values()) == {1}
        late = await agent.new_actor()
        assert (await agent.get_model_version([late]))[late] == 1
        with pytest.raises(relayrl.ConfigError, match="update_model"):
            await agent.new_actor(model=model(5))
        await agent.request_action([*ids, late], obs_for(5))
        assert agent.statistics().batches == 1
        assert agent.statistics().refreshes == 2


async def test_open_agent_validates_the_model_and_arguments() -> None:
    broken = relayrl.ModelModule(model().metadata, model().data)
    object.__setattr__(broken, "_data", b"junk")
    with pytest.raises(relayrl.ModelError):
        async with relayrl.open_agent(broken):
            pass  # pragma: no cover
    for kwargs in ({"routers": 0}, {"max_traj_length": 0}, {"actors": -1}, {"model_mode": "x"},
                   {"shutdown_grace": 0}, {"sinks": [object()]}):
        with pytest.raises(relayrl.ConfigError):
            async with relayrl.open_agent(model(), **kwargs):
                pass  # pragma: no cover


# -- actors and routers -------------------------------------------------------------------------------


async def test_new_remove_and_rename_actors() -> None:
    sink = MemorySink(10)
    async with relayrl.open_agent(model(), sinks=[sink]) as agent:
        assert agent.actor_ids == []
        a = await agent.new_actor()
        more = await agent.new_actors(2, model=model(1))
        assert agent.actor_ids == [a, *more]
        with pytest.raises(relayrl.ConfigError):
            await agent.new_actors(0)
        await agent.request_action([a, *more], obs_for(3))
        await agent.remove_actor(more[0])
        assert agent.actor_ids == [a, more[1]]
        with pytest.raises(relayrl.UnknownActorError):
            await agent.request_action([more[0]], obs_for(1))
        with pytest.raises(relayrl.UnknownActorError):
            await agent.remove_actors([more[0]])
        with pytest.raises(relayrl.ConfigError):
            await agent.remove_actors([])
        renamed = uuid.uuid4()
        await agent.set_actor_id(a, renamed)
        assert agent.actor_ids == [renamed, more[1]]
        with pytest.raises(relayrl.UnknownActorError):
            await agent.request_action([a], obs_for(1))
        with pytest.raises(relayrl.ConfigError):
            await agent.set_actor_id(renamed, more[1])
        await agent.request_action([renamed, more[1]], obs_for(2))
        await agent.update_model(model(2), [renamed])
        assert await agent.get_model_version([renamed, more[1]]) == {renamed: 1, more[1]: 0}
        await agent.request_action([renamed], obs_for(1))
    trajs = by_actor(sink.drain())
    assert set(trajs) == {renamed, more[0], more[1]}  # the renamed actor's whole trajectory follows it
    assert [len(t) for t in trajs[renamed]] == [3] and trajs[renamed][0].truncated
    np.testing.assert_array_equal(trajs[renamed][0].model_version, [0, 0, 1])
    assert [len(t) for t in trajs[more[0]]] == [1] and trajs[more[0]][0].truncated


async def test_scale_throughput() -> None:
    async with relayrl.open_agent(model(), actors=6, routers=2) as agent:
        assert agent.statistics().routers == 2
        with pytest.raises(relayrl.ConfigError):
            await agent.scale_throughput(0)
        with pytest.raises(relayrl.ConfigError):
            await agent.scale_throughput(-2)
        assert await agent.scale_throughput(3) == 5
        assert len(agent.statistics().queue_depths) == 5
        assert await agent.scale_throughput(-4) == 1
        await _concurrent_requests(agent, rounds=3)
        assert agent.statistics().routed_requests > 0


async def _concurrent_requests(agent: relayrl.Agent, rounds: int) -> list[relayrl.ActionBatch]:
    results: list[relayrl.ActionBatch] = []

    async def requester(actor_id: uuid.UUID) -> None:
        for t in range(rounds):
            results.append(await agent.request_action([actor_id], obs_for(1, t), reward=1.0))

    async with trio.open_nursery() as nursery:
        for actor_id in agent.actor_ids:
            nursery.start_soon(requester, actor_id)
    return results


async def test_concurrent_single_requests_are_batched_and_recorded() -> None:
    sink = MemorySink(10)
    async with relayrl.open_agent(model(), actors=16, routers=2, sinks=[sink]) as agent:
        results = await _concurrent_requests(agent, rounds=10)
        stats = agent.statistics()
        assert len(results) == 160 and all(len(r) == 1 for r in results)
        assert stats.routed_requests > 100
        assert stats.mean_batch_size > 2
        assert stats.actions == stats.steps_recorded == 160
        await agent.flag_last_action(agent.actor_ids, reward=2.0)
    trajs = sink.drain()
    assert len(trajs) == 16
    for t in trajs:
        np.testing.assert_array_equal(t.reward, [1.0] * 9 + [2.0])
        np.testing.assert_allclose(t.obs[:, 0], np.arange(10))


async def test_cancelled_routed_request_records_nothing() -> None:
    async with relayrl.open_agent(model(), actors=2) as agent:
        ids = agent.actor_ids

        async def requester(actor_id: uuid.UUID, cancel: bool) -> None:
            with trio.CancelScope() as scope:
                if cancel:
                    scope.cancel()
                await agent.request_action([actor_id], obs_for(1))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(requester, ids[0], True)
            nursery.start_soon(requester, ids[1], False)
        assert agent.statistics().steps_recorded == 1


# -- shutdown -----------------------------------------------------------------------------------------


async def test_shutdown_flushes_in_progress_trajectories_and_closes() -> None:
    sink = MemorySink(10)
    async with relayrl.open_agent(model(), actors=3, sinks=[sink]) as agent:
        ids = agent.actor_ids
        await agent.request_action(ids, obs_for(3))
        await agent.request_action(ids[:2], obs_for(2), reward=4.0)
    trajs = by_actor(sink.drain())
    assert [len(trajs[i][0]) for i in ids] == [2, 2, 1]
    assert all(t[0].truncated and not t[0].done.any() for t in trajs.values())
    np.testing.assert_array_equal(trajs[ids[0]][0].reward, [4.0, 0.0])
    assert agent.closed and agent.statistics().closed
    for call in (agent.request_action(ids, obs_for(3)), agent.flag_last_action(ids), agent.new_actor(),
                 agent.update_model(model()), agent.scale_throughput(1), agent.get_model_version(ids)):
        with pytest.raises(relayrl.AgentClosedError):
            await call
    assert sink.statistics().written == 3


async def test_body_exception_propagates_unwrapped_after_flush() -> None:
    sink = MemorySink(10)

    async def body() -> None:
        async with relayrl.open_agent(model(), actors=1, sinks=[sink]) as agent:
            await agent.request_action(agent.actor_ids, obs_for(1))
            raise ZeroDivisionError("user error")

    with pytest.raises(ZeroDivisionError, match="user error") as info:
        await body()
    assert not isinstance(info.value, BaseExceptionGroup)
    assert len(sink.drain()) == 1


async def test_outer_cancellation_still_flushes(autojump_clock: trio.abc.Clock) -> None:
    sink = MemorySink(10)
    with trio.move_on_after(1) as scope:
        async with relayrl.open_agent(model(), actors=2, sinks=[sink]) as agent:
            await agent.request_action(agent.actor_ids, obs_for(2))
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert len(sink.drain()) == 2


class StuckSink(TrajectorySink):
    """A sink whose writer never accepts anything (a hung network peer)."""

    def __init__(self) -> None:
        super().__init__(capacity=1)
        self.closed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self.closed.wait()

    async def put(self, traj: relayrl.Trajectory) -> None:
        await trio.sleep_forever()

    def put_nowait(self, traj: relayrl.Trajectory) -> None:
        raise trio.WouldBlock

    async def aclose(self) -> None:
        self.closed.set()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> SinkStatistics:
        return SinkStatistics()


class FailingSink(StuckSink):
    async def put(self, traj: relayrl.Trajectory) -> None:
        raise relayrl.SinkError("disk full")


async def test_shutdown_deadline_bounds_a_stuck_sink_and_counts_drops(autojump_clock: trio.abc.Clock) -> None:
    memory = MemorySink(10)
    async with relayrl.open_agent(model(), actors=2, sinks=[StuckSink(), memory], shutdown_grace=2.0) as agent:
        await agent.request_action(agent.actor_ids, obs_for(2))
        await agent.request_action(agent.actor_ids, obs_for(2))
        start = trio.current_time()
    assert trio.current_time() - start == pytest.approx(2.0)
    assert agent.statistics().steps_dropped == 4
    assert agent.statistics().trajectories_emitted == 2


async def test_failing_sink_is_counted_and_other_sinks_still_get_everything(caplog: pytest.LogCaptureFixture) -> None:
    memory = MemorySink(10)
    async with relayrl.open_agent(model(), actors=2, sinks=[FailingSink(), memory]) as agent:
        await agent.request_action(agent.actor_ids, obs_for(2))
        await agent.flag_last_action(agent.actor_ids)
        await agent.request_action(agent.actor_ids, obs_for(2))
    assert len(memory.drain()) == 4
    stats = agent.statistics()
    assert stats.steps_dropped == 4 and stats.trajectories_emitted == 4
    assert "disk full" in caplog.text


async def test_lone_caller_stays_inline() -> None:
    sink = MemorySink(100)
    async with relayrl.open_agent(model(), actors=1, max_traj_length=5, sinks=[sink]) as agent:
        ids = agent.actor_ids
        for t in range(60):
            await agent.request_action(ids, obs_for(1, t), reward=1.0)
        stats = agent.statistics()
    # an emission wakes the actor's task, which may route the next request; nothing else does
    assert stats.trajectories_emitted == 11
    assert stats.routed_requests <= stats.trajectories_emitted
    assert stats.requests == 60


async def test_removal_emits_a_full_held_back_trajectory_with_its_last_reward() -> None:
    sink = MemorySink(10)
    async with relayrl.open_agent(model(), actors=2, max_traj_length=2, sinks=[sink]) as agent:
        ids = agent.actor_ids
        await agent.request_action(ids, obs_for(2))
        await agent.request_action(ids, obs_for(2), reward=1.0)
        # both trajectories are full and wait for the reward of their last step
        await agent.request_action(ids[:1], obs_for(1), reward=2.0)  # credits, emits, starts anew
        await agent.remove_actor(ids[1])  # emits the held-back one without that reward
    trajs = by_actor(sink.drain())
    assert [list(t.reward) for t in trajs[ids[0]]] == [[1.0, 2.0], [0.0]]
    assert [list(t.reward) for t in trajs[ids[1]]] == [[1.0, 0.0]]
    assert all(t.truncated for t in trajs[ids[0]] + trajs[ids[1]])
    assert trajs[ids[0]][0].final_obs is not None and trajs[ids[1]][0].final_obs is None


async def test_update_model_with_a_repeated_id_swaps_once() -> None:
    async with relayrl.open_agent(model(), actors=2) as agent:
        a, b = agent.actor_ids
        await agent.update_model(model(1), [a, a, b])
        assert await agent.get_model_version([a, b]) == {a: 1, b: 1}


class GilReleasingPolicy(Policy):
    """The numpy policy declared as releasing the GIL (as torch and onnxruntime policies are).

    Its forward waits (in the worker thread) until ``gate`` is set, so the test can check that
    the event loop keeps serving meanwhile.
    """

    releases_gil = True

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.threads: set[int] = set()

    def forward(self, obs: np.ndarray, mask: np.ndarray | None = None) -> HeadOutputs:
        self.threads.add(threading.get_ident())
        if obs.shape[0] >= 8:
            assert self.gate.wait(30), "the event loop did not serve the other request"
        return self.inner.forward(obs, mask)


async def test_big_batches_of_gil_releasing_backends_run_in_a_worker_thread() -> None:
    m = model(seed=6)
    reference = m.policy("cpu")
    policy = GilReleasingPolicy(reference)
    m._policies["cpu"] = policy
    sink = MemorySink(10)
    head = relayrl.make_head(m.metadata)
    rng = np.random.default_rng(77)
    async with relayrl.open_agent(m, actors=10, seed=77, sinks=[sink]) as agent:
        agent._thread_rows = 8
        ids = agent.actor_ids
        o = obs_for(8)
        got: list[relayrl.ActionBatch] = []

        async def big() -> None:
            got.append(await agent.request_action(ids[:8], o, reward=1.0))

        with trio.fail_after(30):  # a hang guard, not a timing assertion
            async with trio.open_nursery() as nursery:
                nursery.start_soon(big)
                await trio.testing.wait_all_tasks_blocked()
                small = await agent.request_action(ids[8:], obs_for(2))  # served while the big one computes
                assert agent.statistics().requests == 1 and len(small) == 2
                policy.gate.set()
        assert threading.get_ident() in policy.threads  # the small batch, inline
        assert len(policy.threads) == 2  # ... and the big one, in a worker thread
        # sampling stayed on the event loop, in call order
        small_act, _ = head.sample(reference.forward(obs_for(2)), rng)
        big_act, _ = head.sample(reference.forward(o), rng)
        np.testing.assert_array_equal(small.act, small_act)
        np.testing.assert_array_equal(got[0].act, big_act)
        # an actor removed while the batch computes: the request fails, nothing recorded
        policy.gate.clear()
        before = agent.statistics().steps_recorded
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                errors: list[BaseException] = []

                async def doomed() -> None:
                    try:
                        await agent.request_action(ids[:8], o)
                    except relayrl.UnknownActorError as exc:
                        errors.append(exc)

                nursery.start_soon(doomed)
                await trio.testing.wait_all_tasks_blocked()
                await agent.remove_actor(ids[0])
                policy.gate.set()
        assert len(errors) == 1 and agent.statistics().steps_recorded == before
        await agent.flag_last_action(ids[1:8])
    assert sorted(len(t) for t in sink.drain()) == [1] * 10


class GatedSink(TrajectorySink):
    """Accepts trajectories only while its gate is open (a slow disk); keeps them all."""

    def __init__(self) -> None:
        super().__init__(capacity=1)
        self.gate = trio.Event()
        self.got: list[relayrl.Trajectory] = []
        self.closed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self.closed.wait()

    async def put(self, traj: relayrl.Trajectory) -> None:
        await self.gate.wait()
        self.got.append(traj)

    def put_nowait(self, traj: relayrl.Trajectory) -> None:
        raise trio.WouldBlock

    async def aclose(self) -> None:
        self.closed.set()
        await trio.lowlevel.checkpoint()

    def statistics(self) -> SinkStatistics:
        return SinkStatistics(written=len(self.got))


async def test_a_slow_sink_backpressures_the_producer_and_loses_nothing() -> None:
    from relayrl._agent import OUTBOX_SIZE

    sink = GatedSink()
    async with relayrl.open_agent(model(), actors=1, sinks=[sink]) as agent:
        ids = agent.actor_ids
        produced = 0
        blocked = False

        async def producer() -> None:
            nonlocal produced
            for t in range(OUTBOX_SIZE + 5):
                await agent.request_action(ids, obs_for(1, t))
                await agent.flag_last_action(ids, reward=float(t))
                produced += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(producer)
            await trio.testing.wait_all_tasks_blocked()
            # the emitter holds one trajectory, its channel OUTBOX_SIZE more: the producer waits
            blocked = produced < OUTBOX_SIZE + 5
            assert produced == OUTBOX_SIZE + 1
            sink.gate.set()
        assert blocked
    assert [t.reward[0] for t in sink.got] == [float(t) for t in range(OUTBOX_SIZE + 5)]
    assert agent.statistics().steps_dropped == 0


async def test_a_group_raised_by_the_body_is_not_unwrapped_further() -> None:
    async def body() -> None:
        async with relayrl.open_agent(model(), actors=1):
            raise ExceptionGroup("mine", [ValueError("a")])

    with pytest.raises(ExceptionGroup) as info:
        await body()
    assert info.value.message == "mine"
    assert isinstance(info.value.exceptions[0], ValueError)


async def test_env_ids_label_every_trajectory_of_an_actor() -> None:
    sink = relayrl.sinks.MemorySink()
    model = relayrl.mlp_policy(4, relayrl.spaces.Discrete(2), seed=0)
    async with relayrl.open_agent(model, seed=0, sinks=[sink], max_traj_length=2) as agent:
        ids = await agent.new_actors(2, env_ids=["env-0", "env-1"])
        solo = await agent.new_actor(env_id="solo")
        plain = await agent.new_actor()
        with pytest.raises(relayrl.ConfigError, match="2 env_ids for 3 actors"):
            await agent.new_actors(3, env_ids=["a", "b"])
        every = [*ids, solo, plain]
        for _ in range(3):  # the max_traj_length cut keeps the label too
            await agent.request_action(every, np.zeros(4, np.float32), reward=1.0)
        renamed = uuid.uuid4()
        await agent.set_actor_id(solo, renamed)
        await agent.flag_last_action([*ids, renamed, plain], reward=1.0)
        assert len(agent.actor_ids) == 4  # the bad call created nothing
    labels: dict[uuid.UUID, set[str | None]] = {}
    for t in sink.drain():
        labels.setdefault(t.actor_id, set()).add(t.env_id)
    assert labels == {ids[0]: {"env-0"}, ids[1]: {"env-1"}, solo: {"solo"}, renamed: {"solo"}, plain: {None}}
