"""Backpressure with trajectory sinks: "block" vs "drop_oldest" vs "drop_newest".

Run: ``.venv/bin/python docs/examples/sinks_backpressure.py`` (needs pyarrow for the ArrowSink part).
Every number printed is checked with an ``assert``: this file is also run by the test suite.
"""

from __future__ import annotations

import tempfile
import uuid

import numpy as np
import trio

import relayrl
from relayrl.sinks import ArrowSink, MemorySink

ACTOR = uuid.UUID(int=1)


def trajectory(i: int, steps: int = 50) -> relayrl.Trajectory:
    """A CartPole-sized trajectory (what an agent emits when an episode ends)."""
    done = np.zeros(steps, dtype=bool)
    done[-1] = True
    return relayrl.Trajectory(
        obs=np.full((steps, 4), i, dtype=np.float32), act=np.zeros(steps, dtype=np.int64),
        reward=np.ones(steps, dtype=np.float32), done=done, logp=np.zeros(steps, dtype=np.float32),
        value=np.full(steps, np.nan, dtype=np.float32), model_version=np.zeros(steps, dtype=np.int64),
        actor_id=ACTOR, episode=i,
    )


async def block_to_files(directory: str) -> None:
    """The default: a full sink makes the producer wait until the writer caught up. Nothing is lost."""
    sink = ArrowSink(directory, capacity=8, overflow="block")
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)  # the writer task
        for i in range(100):
            await sink.put(trajectory(i))  # waits whenever 8 trajectories are queued
        # What the agent does at shutdown: drain and close, bounded by a grace period.
        with trio.move_on_after(5, shield=True):
            await sink.aclose()
    stats = sink.statistics()
    print("block:      ", stats)
    assert (stats.written, stats.dropped, stats.abandoned) == (100, 0, 0)
    assert [t.episode for t in relayrl.read_trajectories(directory)] == list(range(100))


async def drop_oldest_in_memory() -> None:
    """A window on the most recent data: old trajectories are evicted, and counted."""
    sink = MemorySink(capacity_per_actor=10)  # overflow="drop_oldest" is MemorySink's default
    for i in range(25):
        await sink.put(trajectory(i))
    stats = sink.statistics()
    print("drop_oldest:", stats)
    assert (stats.written, stats.dropped, stats.dropped_steps, stats.queued) == (25, 15, 750, 10)
    assert [t.episode for t in sink.drain()] == list(range(15, 25))


async def drop_newest_with_a_slow_consumer() -> None:
    """Never wait: what does not fit is rejected and counted; the first ones are kept."""
    sink = MemorySink(capacity_per_actor=5, overflow="drop_newest")
    for i in range(12):
        sink.put_nowait(trajectory(i))  # never raises trio.WouldBlock with a drop policy
    stats = sink.statistics()
    print("drop_newest:", stats)
    assert (stats.dropped, stats.queued) == (7, 5)
    assert [t.episode for t in sink.drain()] == [0, 1, 2, 3, 4]


async def block_in_memory_with_a_consumer() -> None:
    """A MemorySink that loses nothing: producers wait until the consumer drains."""
    sink = MemorySink(capacity_per_actor=4, overflow="block")
    received: list[int] = []

    async def consumer() -> None:
        while len(received) < 20:
            await trio.sleep(0.001)  # a slow learner
            received.extend(t.episode for t in sink.drain())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        for i in range(20):
            await sink.put(trajectory(i))  # blocks while 4 are held
    stats = sink.statistics()
    print("block (mem):", stats)
    assert received == list(range(20)) and stats.dropped == 0


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        await block_to_files(directory)
    await drop_oldest_in_memory()
    await drop_newest_with_a_slow_consumer()
    await block_in_memory_with_a_consumer()


if __name__ == "__main__":
    trio.run(main)
