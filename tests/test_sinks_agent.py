"""Sinks behind a real agent: gymnasium CartPole episodes go to Arrow, Parquet and memory at once."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

import relayrl
from relayrl import spaces
from relayrl.sinks import ArrowSink, MemorySink, ParquetSink


def key(t: relayrl.Trajectory) -> tuple[str, int, float]:
    return (str(t.actor_id), t.episode, t.start_time)


async def test_agent_writes_the_same_trajectories_to_every_sink(tmp_path: Path) -> None:
    model = relayrl.mlp_policy(4, spaces.Discrete(2), hidden=(16,), seed=3)
    memory = MemorySink(1000, overflow="block")
    arrow = ArrowSink(tmp_path / "arrow", capacity=4)  # small queue: backpressure on the emitters
    parquet = ParquetSink(tmp_path / "parquet")
    envs = [gym.make("CartPole-v1") for _ in range(3)]
    try:
        async with relayrl.open_agent(model, actors=3, seed=0, sinks=[memory, arrow, parquet],
                                      max_traj_length=50) as agent:
            ids = agent.actor_ids
            obs = np.stack([env.reset(seed=i)[0] for i, env in enumerate(envs)])
            rewards: list[float] | None = None
            for _ in range(150):
                batch = await agent.request_action(ids, obs, reward=rewards)
                rewards = []
                for k, env in enumerate(envs):
                    o, r, term, trunc, _ = env.step(int(batch.act[k]))
                    rewards.append(float(r))
                    if term or trunc:
                        await agent.flag_last_action([ids[k]], reward=r, truncated=trunc and not term,
                                                     final_obs=o if trunc and not term else None)
                        rewards[k] = 0.0  # credited already; the next step starts a new episode
                        o, _ = env.reset()
                    obs[k] = o
        # Leaving the block flushed the unfinished trajectories (truncated) and closed every sink.
        stats = agent.statistics()
    finally:
        for env in envs:
            env.close()
    held = memory.drain()
    from_arrow = relayrl.read_trajectories(tmp_path / "arrow")
    from_parquet = relayrl.read_trajectories(tmp_path / "parquet")
    assert len(held) == stats.trajectories_emitted > 3  # 50-step pieces and finished episodes
    assert sum(len(t) for t in held) == stats.steps_recorded == 450
    assert stats.steps_dropped == 0
    for sink in (memory, arrow, parquet):
        s = sink.statistics()
        assert (s.dropped, s.abandoned) == (0, 0)
    assert arrow.statistics().written == parquet.statistics().written == len(held)
    # Every sink got every trajectory, equal array for array (the order across actors may differ).
    assert sorted(from_arrow, key=key) == sorted(held, key=key) == sorted(from_parquet, key=key)
    assert any(t.truncated for t in held)
