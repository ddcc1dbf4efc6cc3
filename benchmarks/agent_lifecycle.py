"""Agent lifecycle benchmarks: model hot-swap latency and hot-path stalls, shutdown with flush.

1. Hot swap with 256 actors served by a busy loop of batched ``request_action`` calls: the time
   from ``update_model`` being called (with a model just received as bytes, so decoding and
   validation in a worker thread are included) to the first action of *every* actor on the new
   version; and the longest gap between two consecutive requests of the loop (the hot-path
   stall), next to the same loop without swaps. Independent and shared modes.
2. Shutdown with flush: 256 actors each with an in-progress trajectory of 100 steps; the time
   from leaving the ``async with open_agent()`` block to being out of it, with every trajectory
   in a MemorySink.

Run: ``.venv/bin/python benchmarks/agent_lifecycle.py [--quick]``.
"""

from __future__ import annotations

import argparse
import logging
import time

import _common  # noqa: F401  (sets thread limits first)
import numpy as np
import trio
from _common import median, percentile, table

import relayrl
from relayrl.sinks import MemorySink

N_ACTORS = 256


def _model(seed: int) -> relayrl.ModelModule:
    return relayrl.mlp_policy(4, relayrl.spaces.Discrete(2), hidden=(64, 64), seed=seed)


class _SwapState:
    def __init__(self) -> None:
        self.target = -1
        self.t0 = 0.0
        self.done = trio.Event()


async def swap_run(mode: str, swaps: int, with_swaps: bool = True, prevalidated: bool = False,
                   ) -> tuple[list[float], float, int]:
    """Swap latencies (s), the longest gap between consecutive hot-loop requests (s), requests made.

    ``prevalidated``: hand over modules already decoded and validated (the swap alone);
    otherwise bytes, decoded and validated inside the timed section.
    """
    bundles = [_model(seed).to_bytes() for seed in range(1, swaps + 1)]
    ready = [relayrl.ModelModule.from_bytes(b) for b in bundles] if prevalidated else []
    obs = np.random.default_rng(0).standard_normal((N_ACTORS, 4)).astype(np.float32)
    latencies: list[float] = []
    max_gap = 0.0
    requests = 0
    sink = MemorySink(4, overflow="drop_oldest")  # trajectories are emitted every 1000 steps, as usual
    async with relayrl.open_agent(_model(0), actors=N_ACTORS, model_mode=mode, seed=0,  # type: ignore[arg-type]
                                  sinks=[sink]) as agent:
        ids = agent.actor_ids
        state = _SwapState()
        stop = False

        async def hot_loop() -> None:
            nonlocal max_gap, requests
            last = time.perf_counter()
            while not stop:
                batch = await agent.request_action(ids, obs, reward=1.0)
                now = time.perf_counter()
                max_gap = max(max_gap, now - last)
                last = now
                requests += 1
                if state.target >= 0 and (batch.model_version == state.target).all():
                    latencies.append(now - state.t0)
                    state.target = -1
                    state.done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hot_loop)
            await trio.sleep(0.05)
            for k, data in enumerate(bundles):
                if with_swaps:
                    state.done = trio.Event()
                    state.t0 = time.perf_counter()
                    state.target = k + 1
                    if prevalidated:
                        module = ready[k]
                    else:
                        module = relayrl.ModelModule.from_bytes(data, validate=False)  # just received
                    await agent.update_model(module)
                    await state.done.wait()
                await trio.sleep(0.002)
            stop = True
    return latencies, max_gap, requests


async def shutdown_run(steps: int) -> tuple[float, int]:
    """Seconds from leaving the block to being out of it, and the trajectories the sink holds."""
    sink = MemorySink(10)
    obs = np.zeros((N_ACTORS, 4), dtype=np.float32)
    async with relayrl.open_agent(_model(0), actors=N_ACTORS, sinks=[sink]) as agent:
        for _ in range(steps):
            await agent.request_action(agent.actor_ids, obs, reward=1.0)
        t0 = time.perf_counter()
    elapsed = time.perf_counter() - t0
    return elapsed, len(sink.drain())


async def main(quick: bool) -> None:
    swaps = 40 if quick else 200
    rows = []
    for mode in ("independent", "shared"):
        _, base_gap, _ = await swap_run(mode, swaps, with_swaps=False)
        for prevalidated in (False, True):
            lat, gap, _ = await swap_run(mode, swaps, prevalidated=prevalidated)
            rows.append([mode, "validated module" if prevalidated else "bytes (decode+validate)", len(lat),
                         median(lat) * 1e3, percentile(lat, 99) * 1e3, max(lat) * 1e3, gap * 1e3, base_gap * 1e3])
    table(f"Hot swap, {N_ACTORS} actors: update_model called -> first action of every actor on the new version (ms)",
          ["mode", "update given as", "swaps", "p50", "p99", "max", "longest stall (swaps)",
           "longest stall (no swaps)"], rows)

    times = []
    held = 0
    for _ in range(5 if quick else 20):
        t, held = await shutdown_run(100)
        times.append(t)
    table(f"Shutdown with flush, {N_ACTORS} actors x 100 steps in progress (ms)",
          ["runs", "p50", "max", "trajectories flushed"], [[len(times), median(times) * 1e3, max(times) * 1e3, held]])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = parser.parse_args()
    logging.getLogger("relayrl.sinks").setLevel(logging.ERROR)  # the MemorySink's drops are on purpose here
    trio.run(main, args.quick)
