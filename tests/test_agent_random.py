"""Random sequences of agent operations: every step the test caused ends up in the sink exactly once.

A seeded generator picks operations (batched and concurrent single-actor requests, terminal and
truncated flags, new, removed and renamed actors, model updates, router scaling, bad requests)
and a ledger records what the sink must hold. Short trajectories (``max_traj_length=3``) make
the held-back-reward path common.
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

MAX_LEN = 3


class Ledger:
    """Expected steps per actor (keyed by a stable number that survives renames)."""

    def __init__(self) -> None:
        self.key: dict[uuid.UUID, int] = {}
        self.current: dict[int, list[dict[str, Any]]] = {}
        self.done: dict[int, list[tuple[list[dict[str, Any]], str]]] = {}
        self.marker = 0.0

    def add(self, actor_id: uuid.UUID) -> None:
        k = len(self.done)
        self.key[actor_id] = k
        self.current[k] = []
        self.done[k] = []

    def next_marker(self) -> float:
        self.marker += 1
        return self.marker

    def step(self, actor_id: uuid.UUID, marker: float, version: int, reward: float | None) -> None:
        k = self.key[actor_id]
        cur = self.current[k]
        if reward is not None and cur:
            cur[-1]["reward"] = reward
        if len(cur) == MAX_LEN:  # the held-back trajectory is emitted, truncated
            self.done[k].append((cur, "cut"))
            cur = self.current[k] = []
        cur.append({"marker": marker, "reward": 0.0, "version": version})

    def end(self, actor_id: uuid.UUID, reward: float | None, how: str) -> None:
        k = self.key[actor_id]
        cur = self.current[k]
        if not cur:
            return
        if reward is not None:
            cur[-1]["reward"] = reward
        self.done[k].append((cur, how))
        self.current[k] = []


async def run_random(seed: int, n_ops: int, mode: str) -> None:
    rng = np.random.default_rng(seed)
    sink = MemorySink(capacity_per_actor=1000, overflow="block")
    ledger = Ledger()
    models = [relayrl.mlp_policy(4, spaces.Discrete(3), hidden=(8,), seed=s) for s in range(3)]
    async with relayrl.open_agent(models[0], actors=6, routers=2, max_traj_length=MAX_LEN, seed=seed,
                                  sinks=[sink], model_mode=mode) as agent:  # type: ignore[arg-type]
        for a in agent.actor_ids:
            ledger.add(a)
        for _ in range(n_ops):
            ids = agent.actor_ids
            op = rng.choice(["batch", "batch", "batch", "concurrent", "flag", "new", "remove", "rename",
                             "update", "scale", "bad"])
            if op == "batch" and ids:
                chosen = list(rng.choice(len(ids), size=int(rng.integers(1, len(ids) + 1)), replace=False))
                sel = [ids[i] for i in chosen]
                versions = await agent.get_model_version(sel)
                o = np.zeros((len(sel), 4), dtype=np.float32)
                o[:, 0] = [ledger.next_marker() for _ in sel]
                r = rng.integers(1, 100, size=len(sel)).astype(np.float32) if rng.random() < 0.8 else None
                batch = await agent.request_action(sel, o, reward=r)
                assert list(batch.model_version) == [versions[a] for a in sel]
                for k, a in enumerate(sel):
                    ledger.step(a, float(o[k, 0]), versions[a], None if r is None else float(r[k]))
            elif op == "concurrent" and ids:
                versions = await agent.get_model_version(ids)

                async def one(a: uuid.UUID, marker: float, reward: float, version: int) -> None:
                    b = await agent.request_action([a], np.array([marker, 0, 0, 0], dtype=np.float32),
                                                   reward=reward)
                    assert b[0].model_version == version
                    ledger.step(a, marker, version, reward)

                async with trio.open_nursery() as nursery:
                    for a in ids:
                        nursery.start_soon(one, a, ledger.next_marker(), float(rng.integers(1, 100)), versions[a])
            elif op == "flag" and ids:
                sel = [a for a in ids if rng.random() < 0.5] or ids[:1]
                truncated = bool(rng.random() < 0.3)
                end_rewards = [float(x) for x in rng.integers(1, 100, size=len(sel))]
                await agent.flag_last_action(sel, reward=end_rewards, truncated=truncated,
                                             final_obs=np.zeros((len(sel), 4)) if truncated else None)
                for a, rew in zip(sel, end_rewards):
                    ledger.end(a, rew, "truncated" if truncated else "terminal")
            elif op == "new":
                for a in await agent.new_actors(int(rng.integers(1, 3))):
                    ledger.add(a)
            elif op == "remove" and len(ids) > 1:
                a = ids[int(rng.integers(len(ids)))]
                await agent.remove_actor(a)
                ledger.end(a, None, "truncated")
            elif op == "rename" and ids:
                a = ids[int(rng.integers(len(ids)))]
                new = uuid.uuid4()
                await agent.set_actor_id(a, new)
                ledger.key[new] = ledger.key[a]  # trajectories emitted before keep the old id
            elif op == "update" and ids:
                some = [a for a in ids if rng.random() < 0.5] or None
                await agent.update_model(models[int(rng.integers(len(models)))], some)
            elif op == "scale":
                routers = agent.statistics().routers
                delta = 1 if routers == 1 or rng.random() < 0.5 else -1
                await agent.scale_throughput(delta)
            elif op == "bad" and ids:
                before = agent.statistics().steps_recorded
                if rng.random() < 0.5:
                    with pytest.raises(relayrl.UnknownActorError):
                        await agent.request_action([*ids, uuid.uuid4()], np.zeros((len(ids) + 1, 4)), reward=5.0)
                else:
                    with pytest.raises(relayrl.ObservationError):
                        await agent.request_action(ids, np.zeros((len(ids), 3)), reward=5.0)
                assert agent.statistics().steps_recorded == before
        final_ids = agent.actor_ids
    for a in final_ids:
        ledger.end(a, None, "truncated")

    got = sink.drain()
    stats = agent.statistics()
    assert stats.steps_dropped == 0 and stats.trajectories_emitted == len(got)
    by_key: dict[int, list[relayrl.Trajectory]] = {}
    for traj in got:
        by_key.setdefault(ledger.key[traj.actor_id], []).append(traj)
    for k, expected in ledger.done.items():
        trajs = by_key.get(k, [])
        assert len(trajs) == len(expected), f"actor {k}: {len(trajs)} trajectories, expected {len(expected)}"
        for traj, (steps, how) in zip(trajs, expected):
            np.testing.assert_array_equal(traj.obs[:, 0], [s["marker"] for s in steps])
            np.testing.assert_array_equal(traj.reward, np.array([s["reward"] for s in steps], dtype=np.float32))
            np.testing.assert_array_equal(traj.model_version, [s["version"] for s in steps])
            assert traj.terminated == (how == "terminal")
            assert traj.truncated == (how != "terminal")
    assert stats.steps_recorded == sum(len(s) for e in ledger.done.values() for s, _ in e)
    # the run exercised what it is meant to
    hows = [how for e in ledger.done.values() for _, how in e]
    assert {"cut", "terminal", "truncated"} <= set(hows)
    assert stats.routed_requests > 0 and stats.refreshes > 2 and len(ledger.done) > 6


@pytest.mark.parametrize("mode", ["independent", "shared"])
@pytest.mark.parametrize("seed", range(5))
async def test_random_operations_account_for_every_step(seed: int, mode: str) -> None:
    await run_random(seed, n_ops=150, mode=mode)
