"""Acceptance: 8 actors through 5 steps with everything that can happen to them, every step accounted for.

The test keeps its own ledger of every step it caused (a unique marker in the observation, the
reward it credited, the model version it was served with) and checks that the MemorySink ends
up with exactly those steps: nothing lost, nothing duplicated, rewards and versions right.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest
import trio

import relayrl
from relayrl import spaces
from relayrl.sinks import MemorySink


class Ledger:
    """What the sink must contain: per actor key, its episodes of steps."""

    def __init__(self) -> None:
        self.key_of: dict[uuid.UUID, int] = {}
        self.episodes: dict[int, list[list[dict[str, Any]]]] = {}
        self.ends: dict[int, list[str]] = {}
        self.marker = 0

    def add_actor(self, actor_id: uuid.UUID) -> None:
        key = len(self.key_of) + 1000 * len(self.episodes)
        self.key_of[actor_id] = key
        self.episodes[key] = [[]]
        self.ends[key] = []

    def obs(self, ids: list[uuid.UUID]) -> np.ndarray:
        out = np.zeros((len(ids), 4), dtype=np.float32)
        for k in range(len(ids)):
            self.marker += 1
            out[k, 0] = self.marker
        return out

    def step(self, actor_id: uuid.UUID, marker: float, version: int, reward: float | None) -> None:
        episode = self.episodes[self.key_of[actor_id]][-1]
        if reward is not None and episode:
            episode[-1]["reward"] = reward
        episode.append({"marker": marker, "reward": 0.0, "version": version})

    def end(self, actor_id: uuid.UUID, reward: float | None, how: str) -> None:
        episodes = self.episodes[self.key_of[actor_id]]
        if not episodes[-1]:
            return
        if reward is not None:
            episodes[-1][-1]["reward"] = reward
        self.ends[self.key_of[actor_id]].append(how)
        episodes.append([])


async def test_eight_actors_everything_accounted_for() -> None:
    sink = MemorySink(capacity_per_actor=100, overflow="block")
    ledger = Ledger()
    v0 = relayrl.mlp_policy(4, spaces.Discrete(3), hidden=(16,), seed=0)
    v1 = relayrl.mlp_policy(4, spaces.Discrete(3), hidden=(16,), seed=1)
    rewards = iter(np.arange(1.0, 1000.0))
    renamed_from: dict[uuid.UUID, uuid.UUID] = {}

    async with relayrl.open_agent(v0, actors=8, routers=2, seed=5, sinks=[sink]) as agent:
        ids = agent.actor_ids
        assert len(ids) == 8
        for actor_id in ids:
            ledger.add_actor(actor_id)
        last_reward_given: dict[uuid.UUID, bool] = {}

        async def batched_step(step_ids: list[uuid.UUID], with_reward: bool) -> None:
            o = ledger.obs(step_ids)
            r = np.array([next(rewards) for _ in step_ids], dtype=np.float32) if with_reward else None
            versions = await agent.get_model_version(step_ids)
            batch = await agent.request_action(step_ids, o, reward=r)
            assert batch.actor_ids == step_ids
            for k, actor_id in enumerate(step_ids):
                assert batch.model_version[k] == versions[actor_id]
                ledger.step(actor_id, float(o[k, 0]), versions[actor_id], None if r is None else float(r[k]))
                last_reward_given[actor_id] = True

        async def concurrent_step(step_ids: list[uuid.UUID]) -> None:
            versions = await agent.get_model_version(step_ids)

            async def one(actor_id: uuid.UUID) -> None:
                o = ledger.obs([actor_id])
                r = float(next(rewards))
                batch = await agent.request_action([actor_id], o[0], reward=r)
                assert batch[0].actor_id == actor_id and batch[0].model_version == versions[actor_id]
                ledger.step(actor_id, float(o[0, 0]), versions[actor_id], r)

            async with trio.open_nursery() as nursery:
                for actor_id in step_ids:
                    nursery.start_soon(one, actor_id)

        # step 0 and 1: batched
        await batched_step(ids, with_reward=False)
        await batched_step(ids, with_reward=True)

        # bad requests change nothing
        recorded = agent.statistics().steps_recorded
        with pytest.raises(relayrl.UnknownActorError):
            await agent.request_action([*ids[:3], uuid.uuid4()], np.zeros((4, 4)), reward=99.0)
        with pytest.raises(relayrl.ObservationError):
            await agent.request_action(ids, np.zeros((8, 5)), reward=99.0)
        with pytest.raises(relayrl.ObservationError):
            await agent.request_action(ids[:1], np.full(4, np.nan), reward=99.0)
        with pytest.raises(relayrl.ObservationError):
            await agent.request_action(ids, np.zeros((8, 4)), mask=np.zeros((8, 3), bool), reward=99.0)
        assert agent.statistics().steps_recorded == recorded

        # step 2: concurrent single-actor requests (dynamically batched), on more routers
        assert await agent.scale_throughput(2) == 4
        await concurrent_step(ids)
        assert agent.statistics().routed_requests > 0

        # a model update for half of the actors, fewer routers
        await agent.update_model(v1, ids[:4])
        assert await agent.scale_throughput(-3) == 1

        # step 3
        await batched_step(ids, with_reward=True)

        # two episodes end (terminal), one actor leaves, one is renamed, two join
        end_rewards = [float(next(rewards)), float(next(rewards))]
        await agent.flag_last_action(ids[:2], reward=end_rewards)
        for actor_id, r in zip(ids[:2], end_rewards):
            ledger.end(actor_id, r, "terminal")
        await agent.remove_actor(ids[7])
        ledger.end(ids[7], None, "truncated")
        new_id = uuid.uuid4()
        await agent.set_actor_id(ids[6], new_id)
        ledger.key_of[new_id] = ledger.key_of.pop(ids[6])
        renamed_from[new_id] = ids[6]
        joined = await agent.new_actors(2)
        for actor_id in joined:
            ledger.add_actor(actor_id)
        current = agent.actor_ids
        assert current == [*ids[:6], new_id, *joined]

        # step 4: everyone still here
        await batched_step(current, with_reward=True)
        # (leaving the block flushes every trajectory in progress as truncated)
    for actor_id in current:
        ledger.end(actor_id, None, "truncated")

    stats = agent.statistics()
    got = sink.drain()
    assert sink.statistics().dropped == 0
    total_expected = sum(len(ep) for eps in ledger.episodes.values() for ep in eps)
    assert stats.steps_recorded == total_expected == sum(len(t) for t in got) == 8 * 5 - 1 + 2
    assert stats.trajectories_emitted == len(got) and stats.steps_dropped == 0

    by_key: dict[int, list[relayrl.Trajectory]] = {}
    key_for_final_id = dict(ledger.key_of)
    for traj in got:
        by_key.setdefault(key_for_final_id[traj.actor_id], []).append(traj)
    assert set(by_key) == set(ledger.episodes)
    for key, trajs in by_key.items():
        expected = [ep for ep in ledger.episodes[key] if ep]
        assert len(trajs) == len(expected) == len(ledger.ends[key])
        for n, (traj, ep, how) in enumerate(zip(trajs, expected, ledger.ends[key])):
            assert traj.episode == n
            np.testing.assert_array_equal(traj.obs[:, 0], [s["marker"] for s in ep])
            np.testing.assert_array_equal(traj.reward, np.array([s["reward"] for s in ep], dtype=np.float32))
            np.testing.assert_array_equal(traj.model_version, [s["version"] for s in ep])
            assert traj.truncated == (how == "truncated")
            assert traj.terminated == (how == "terminal")
            assert traj.done.sum() == (how == "terminal")
            # logp is the log-probability of the recorded action under the recorded model
            model = v1 if ep[0]["version"] == 1 else v0
            if all(s["version"] == ep[0]["version"] for s in ep):
                out = model.policy("cpu").forward(traj.obs)
                head = relayrl.make_head(model.metadata)
                np.testing.assert_allclose(head.log_prob(out, traj.act), traj.logp, rtol=1e-5, atol=1e-6)
    # the renamed actor's whole history is under its new id
    assert all(t.actor_id == new_id for t in by_key[ledger.key_of[new_id]])
    assert not any(t.actor_id in renamed_from.values() for t in got)
