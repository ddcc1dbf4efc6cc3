"""Trajectory sinks: steps/s and bytes written, Arrow vs Parquet vs CSV, side by side in one run.

N CartPole-like trajectories (obs ``(4,)`` float32, discrete action, 200 steps each, every column
made in numpy beforehand) are pushed through each sink inside trio, by one producer task calling
``await sink.put(traj)``, the way the agent's emitters do. The clock runs from the first ``put``
until ``aclose()`` returned (everything written, files closed). Reported per sink:

* steps/s end to end and MB written;
* the event loop's CPU per step (``time.thread_time`` of the trio thread: ``put`` calls, the
  writer task's scheduling and batching), i.e. what the sink takes from the hot path directly;
* the writer thread's CPU per step (process CPU time minus the event loop's: encoding and file
  writes, off the event loop but competing for the GIL and the 2 cores);
* both as a share of a 1 µs/step hot path (the agent's goal is >= 1,000,000 actions/s);
* how fast ``relayrl.read_trajectories`` reads the files back (first repeat).

A second table puts the sinks behind a real agent: 256 actors, batched ``request_action`` on a
CartPole-sized numpy MLP (4 -> 64 -> 64 -> 2, value head), trajectories emitted every 200 steps
(``max_traj_length=200``), actions/s of the request loop with no sink and with each sink,
configurations interleaved, best of R rounds; "sink cost" is the loss of actions/s.

Run: ``.venv/bin/python benchmarks/sink_arrow.py [--trajectories N] [--repeats R] [--steps S] [--only-arrow]``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
import uuid
from typing import Any

import _common  # noqa: F401  (sets thread limits first)
import numpy as np
import trio
from _common import median, table

import relayrl
from relayrl.sinks import ArrowSink, CsvSink, MemorySink, ParquetSink, TrajectorySink

STEPS = 200
HOT_PATH_NS_PER_STEP = 1000.0  # the agent's batched goal: 1,000,000 actions/s


def make_trajectories(n: int, seed: int = 0) -> list[relayrl.Trajectory]:
    """``n`` distinct CartPole-like trajectories of ``STEPS`` steps from 16 actors."""
    rng = np.random.default_rng(seed)
    actors = [uuid.uuid4() for _ in range(16)]
    obs = rng.standard_normal((n, STEPS, 4)).astype(np.float32)
    act = rng.integers(0, 2, size=(n, STEPS)).astype(np.int64)
    logp = np.log(rng.uniform(0.3, 0.7, size=(n, STEPS))).astype(np.float32)
    value = rng.standard_normal((n, STEPS)).astype(np.float32)
    out = []
    for i in range(n):
        done = np.zeros(STEPS, dtype=bool)
        done[-1] = True
        out.append(relayrl.Trajectory(
            obs=obs[i], act=act[i], reward=np.ones(STEPS, dtype=np.float32), done=done, logp=logp[i],
            value=value[i], model_version=np.full(STEPS, 1, dtype=np.int64), actor_id=actors[i % 16],
            episode=i // 16, env_id=f"env-{i % 16}", start_time=1.7e9 + i, end_time=1.7e9 + i + 0.5,
        ))
    return out


async def push(sink: TrajectorySink, trajs: list[relayrl.Trajectory]) -> tuple[float, float, float]:
    """Return (wall seconds, process CPU seconds, event-loop thread CPU seconds)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        wall0, cpu0, loop0 = time.perf_counter(), time.process_time(), time.thread_time()
        for t in trajs:
            await sink.put(t)
        await sink.aclose()
        wall, cpu, loop = time.perf_counter() - wall0, time.process_time() - cpu0, time.thread_time() - loop0
    return wall, cpu, loop


def measure(name: str, factory: Any, trajs: list[relayrl.Trajectory], repeats: int,
            **kwargs: Any) -> list[object]:
    walls, cpus, loops, sizes = [], [], [], []
    read_s = float("nan")
    for _ in range(repeats):
        tmp = tempfile.mkdtemp(prefix="relayrl-sink-bench-")
        try:
            sink = factory(**kwargs) if factory is MemorySink else factory(tmp, **kwargs)
            wall, cpu, loop = trio.run(push, sink, trajs)
            stats = sink.statistics()
            assert stats.written == len(trajs) and stats.dropped == 0 and stats.abandoned == 0, stats
            walls.append(wall)
            cpus.append(cpu)
            loops.append(loop)
            sizes.append(stats.bytes_written)
            if _ == 0 and isinstance(sink, MemorySink):
                back = sink.drain()
                assert len(back) == len(trajs) and back[0] is trajs[0]
            elif _ == 0:  # check the data once
                r0 = time.perf_counter()
                back = relayrl.read_trajectories(tmp)
                read_s = time.perf_counter() - r0
                assert len(back) == len(trajs) and back[0] == trajs[0] and back[-1] == trajs[-1]
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    steps = len(trajs) * STEPS
    wall, cpu, loop = median(walls), median(cpus), median(loops)
    loop_ns, writer_ns = loop / steps * 1e9, max(cpu - loop, 0.0) / steps * 1e9
    return [name, len(trajs), steps, steps / wall, f"{min(walls) * 1e3:.0f}-{max(walls) * 1e3:.0f}",
            sizes[0] / 1e6, loop_ns, writer_ns, f"{100 * loop_ns / HOT_PATH_NS_PER_STEP:.1f} %",
            f"{100 * (loop_ns + writer_ns) / HOT_PATH_NS_PER_STEP:.1f} %",
            "-" if read_s != read_s else f"{steps / read_s:,.0f}"]


async def agent_loop(sink: TrajectorySink | None, iters: int, actors: int = 256) -> tuple[float, float, int]:
    """Return (seconds in the request loop, seconds to leave the agent (flush + close), trajectories written)."""
    model = relayrl.mlp_policy(4, relayrl.spaces.Discrete(2), hidden=(64, 64), seed=0)
    obs = np.random.default_rng(1).standard_normal((actors, 4)).astype(np.float32)
    sinks = [] if sink is None else [sink]
    async with relayrl.open_agent(model, actors=actors, seed=0, sinks=sinks, max_traj_length=STEPS) as agent:
        ids = agent.actor_ids
        for _ in range(20):  # warm up
            await agent.request_action(ids, obs, reward=1.0)
        t0 = time.perf_counter()
        for _ in range(iters):
            await agent.request_action(ids, obs, reward=1.0)
        loop = time.perf_counter() - t0
        t1 = time.perf_counter()
    close = time.perf_counter() - t1
    written = 0 if sink is None else sink.statistics().written
    return loop, close, written


def agent_table(repeats: int) -> None:
    actors, iters = 256, 800
    configs: list[tuple[str, Any]] = [
        ("no sink", lambda tmp: None),
        ("MemorySink(drop_oldest)", lambda tmp: MemorySink(10_000)),
        ("ArrowSink", lambda tmp: ArrowSink(tmp)),
        ("ParquetSink zstd", lambda tmp: ParquetSink(tmp)),
    ]
    best: dict[str, tuple[float, float, int]] = {}
    for _ in range(repeats):
        for name, make in configs:
            tmp = tempfile.mkdtemp(prefix="relayrl-sink-bench-")
            try:
                loop, close, written = trio.run(agent_loop, make(tmp), iters, actors)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            if name not in best or loop < best[name][0]:
                best[name] = (loop, close, written)
    base = actors * iters / best["no sink"][0]
    rows = []
    for name, _ in configs:
        loop, close, written = best[name]
        rate = actors * iters / loop
        rows.append([name, rate, f"{100 * (1 - rate / base):.1f} %", close * 1e3, written])
    table(f"Agent hot path with sinks: {actors} actors x {iters} batched requests, trajectories of {STEPS} steps, "
          f"best of {repeats}",
          ["sink", "actions/s", "sink cost", "exit (flush+close) ms", "trajectories written"], rows)


def main() -> None:
    global STEPS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trajectories", type=int, default=5000, help="trajectories of 200 steps (default 5000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=STEPS, help="steps per trajectory (default 200)")
    parser.add_argument("--only-arrow", action="store_true", help="MemorySink and ArrowSink rows only")
    args = parser.parse_args()
    STEPS = args.steps
    logging.basicConfig(level=logging.WARNING)
    import pyarrow as pa

    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    n = args.trajectories
    trajs = make_trajectories(n)
    small = trajs[: max(1, n // 10)]
    rows = [
        measure("MemorySink (baseline: no writer)", MemorySink, trajs, args.repeats, capacity_per_actor=n),
        measure("ArrowSink", ArrowSink, trajs, args.repeats),
    ]
    if not args.only_arrow:
        rows += [
            measure("ArrowSink lz4", ArrowSink, trajs, args.repeats, compression="lz4"),
            measure("ArrowSink, batch_steps=8192", ArrowSink, trajs, args.repeats, batch_steps=8192),
            measure("ParquetSink zstd", ParquetSink, trajs, args.repeats),
            measure("CsvSink (n/10)", CsvSink, small, args.repeats),
        ]
    table(
        f"Trajectory sinks: {n} x {STEPS}-step CartPole-like trajectories, one producer, median of {args.repeats}",
        ["sink", "trajectories", "steps", "steps/s", "wall ms (min-max)", "MB written", "loop CPU ns/step",
         "writer CPU ns/step", "loop vs 1 µs/step", "all CPU vs 1 µs/step", "read_trajectories steps/s"],
        rows,
    )
    agent_table(args.repeats)


if __name__ == "__main__":
    main()
