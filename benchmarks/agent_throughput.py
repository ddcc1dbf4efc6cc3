"""Agent hot-path benchmarks, side by side in one run.

1. One actor: bare ``policy.forward`` + head sampling vs ``agent.request_action`` (with the
   step recorded and the reward credited).
2. Batched ``request_action`` for 1, 16, 64 and 256 actors (trajectories recorded and emitted
   to a MemorySink), next to the bare batched forward + sampling.
3. 64 concurrent single-actor requesters: dynamic batching by the routers vs each task
   calling its own forward + sampling.

Each measurement is the best of several repeats, the compared loops interleaved, so that a
busy machine penalises both sides alike. Times are wall-clock; the "cpu" columns use the
process CPU time (everything here runs on one thread), which is what the code costs when
other processes compete for the cores.

Run: ``.venv/bin/python benchmarks/agent_throughput.py [--quick]``. The model is a
CartPole-sized numpy MLP (4 inputs, 64x64 tanh, 2 actions, value head).
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable

import _common  # noqa: F401  (sets thread limits first)
import numpy as np
import trio
from _common import table

import relayrl
from relayrl.sinks import MemorySink

REPEATS = 5


class Best:
    """Best (smallest) wall and CPU time per unit over repeats."""

    def __init__(self) -> None:
        self.wall = float("inf")
        self.cpu = float("inf")

    def start(self) -> None:
        self._w, self._c = time.perf_counter(), time.process_time()

    def stop(self, units: int) -> None:
        self.wall = min(self.wall, (time.perf_counter() - self._w) / units)
        self.cpu = min(self.cpu, max(time.process_time() - self._c, 1e-9) / units)


def _model() -> relayrl.ModelModule:
    return relayrl.mlp_policy(4, relayrl.spaces.Discrete(2), hidden=(64, 64))


def bare_runner(model: relayrl.ModelModule, n_rows: int) -> Callable[[int], None]:
    """A function running ``iters`` calls of forward + sample on ``n_rows`` rows."""
    policy = model.policy("cpu")
    head = relayrl.make_head(model.metadata)
    rng = np.random.default_rng(0)
    obs = np.random.default_rng(1).standard_normal((n_rows, 4)).astype(np.float32)

    def run(iters: int) -> None:
        for _ in range(iters):
            head.sample(policy.forward(obs), rng)

    return run


async def batched(model: relayrl.ModelModule, n_actors: int, iters: int) -> tuple[Best, Best, int]:
    """Per-call times of bare forward+sample and of batched request_action, interleaved."""
    sink = MemorySink(1_000_000, overflow="drop_oldest")
    obs = np.random.default_rng(1).standard_normal((n_actors, 4)).astype(np.float32)
    bare = bare_runner(model, n_actors)
    b_bare, b_agent = Best(), Best()
    async with relayrl.open_agent(model, actors=n_actors, seed=0, sinks=[sink]) as agent:
        ids = agent.actor_ids
        for _ in range(REPEATS):
            b_bare.start()
            bare(iters)
            b_bare.stop(iters)
            b_agent.start()
            for _ in range(iters):
                await agent.request_action(ids, obs, reward=1.0)
            b_agent.stop(iters)
        emitted = agent.statistics().trajectories_emitted
    return b_bare, b_agent, emitted


async def concurrent(model: relayrl.ModelModule, n_tasks: int, iters: int) -> tuple[Best, Best, float]:
    """Per-action times of n tasks each requesting for its own actor vs each running its own forward."""
    sink = MemorySink(1_000_000, overflow="drop_oldest")
    obs1 = np.random.default_rng(1).standard_normal(4).astype(np.float32)
    policy = model.policy("cpu")
    head = relayrl.make_head(model.metadata)
    rng = np.random.default_rng(0)
    obs = obs1[None]
    b_bare, b_agent = Best(), Best()
    async with relayrl.open_agent(model, actors=n_tasks, seed=0, sinks=[sink]) as agent:

        async def requester(actor_id: uuid.UUID) -> None:
            ids = [actor_id]
            for _ in range(iters):
                await agent.request_action(ids, obs1, reward=1.0)

        async def worker() -> None:
            for _ in range(iters):
                head.sample(policy.forward(obs), rng)
                await trio.lowlevel.checkpoint()

        for _ in range(REPEATS):
            b_bare.start()
            async with trio.open_nursery() as nursery:
                for _ in range(n_tasks):
                    nursery.start_soon(worker)
            b_bare.stop(n_tasks * iters)
            b_agent.start()
            async with trio.open_nursery() as nursery:
                for actor_id in agent.actor_ids:
                    nursery.start_soon(requester, actor_id)
            b_agent.stop(n_tasks * iters)
        mean_batch = agent.statistics().mean_batch_size
    return b_bare, b_agent, mean_batch


async def main(quick: bool) -> None:
    model = _model()
    scale = 0.2 if quick else 1.0

    iters = int(20000 * scale)
    bare, agent_t, _ = await batched(model, 1, iters)
    table("One actor: request_action vs bare forward + sampling (us per call)",
          ["path", "wall", "ratio (wall)", "cpu", "ratio (cpu)"], [
              ["bare policy.forward + head.sample", bare.wall * 1e6, 1.0, bare.cpu * 1e6, 1.0],
              ["agent.request_action([id], obs, reward=1.0)", agent_t.wall * 1e6, agent_t.wall / bare.wall,
               agent_t.cpu * 1e6, agent_t.cpu / bare.cpu],
          ])

    rows = []
    for n in (1, 16, 64, 256):
        it = max(50, int(scale * 100000 / max(n, 10)))
        b, a, emitted = await batched(model, n, it)
        rows.append([n, n / b.wall, n / a.wall, a.wall / b.wall, n / a.cpu, emitted])
    table("Batched request_action, trajectories recorded (emitted every 1000 steps) (actions/s)",
          ["actors", "bare (wall)", "agent (wall)", "time ratio", "agent (cpu)", "trajectories emitted"], rows)

    iters = int(2000 * scale)
    b, a, mean_batch = await concurrent(model, 64, iters)
    table("64 concurrent single-actor requesters (actions/s)", ["path", "wall", "cpu", "mean batch size"], [
        ["each task: own forward + sample + checkpoint", 1 / b.wall, 1 / b.cpu, 1.0],
        ["agent.request_action (dynamic batching)", 1 / a.wall, 1 / a.cpu, mean_batch],
    ])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    args = parser.parse_args()
    trio.run(main, args.quick)
