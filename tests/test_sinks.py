"""MemorySink and the TrajectorySink contract (overflow policies, close, statistics)."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from _sinks_data import ACTORS, make_traj

import relayrl
from relayrl.sinks import MemorySink, SinkStatistics, TrajectorySink


def test_public_names() -> None:
    assert relayrl.TrajectorySink is TrajectorySink
    assert relayrl.abc.TrajectorySink is TrajectorySink
    assert relayrl.sinks.MemorySink is MemorySink
    assert MemorySink.__module__ == "relayrl.sinks"
    assert issubclass(MemorySink, TrajectorySink)


@pytest.mark.parametrize("overflow", ["Block", "drop", "", None, 3])
def test_bad_overflow_is_a_config_error(overflow: object) -> None:
    with pytest.raises(relayrl.ConfigError, match="overflow"):
        MemorySink(3, overflow=overflow)  # type: ignore[arg-type]


@pytest.mark.parametrize("capacity", [0, -1, 1.5, True, "3"])
def test_bad_capacity_is_a_config_error(capacity: object) -> None:
    with pytest.raises(relayrl.ConfigError, match="capacity"):
        MemorySink(capacity)  # type: ignore[arg-type]


def test_capacity_keyword_is_capacity_per_actor() -> None:
    assert MemorySink(capacity=7).capacity == 7
    assert MemorySink(7, capacity=7).capacity == 7
    with pytest.raises(relayrl.ConfigError, match="not both"):
        MemorySink(5, capacity=7)
    with pytest.raises(relayrl.ConfigError, match="capacity"):
        MemorySink(capacity=0)


def test_defaults() -> None:
    sink = MemorySink()
    assert sink.capacity == 1000
    assert sink.overflow == "drop_oldest"
    assert sink.statistics() == SinkStatistics(capacity=1000, overflow="drop_oldest")


async def test_drain_returns_everything_in_emission_order() -> None:
    sink = MemorySink(10)
    trajs = [make_traj(3, actor=i % 3, episode=i, seed=i) for i in range(9)]
    for t in trajs:
        await sink.put(t)
    assert len(sink) == 9
    assert sink.statistics().queued == 9
    assert sink.statistics().written == 9
    assert sink.statistics().steps_written == 27
    assert sink.drain(ACTORS[1]) == [trajs[1], trajs[4], trajs[7]]
    assert sink.drain(ACTORS[3]) == []
    assert sink.drain() == [t for i, t in enumerate(trajs) if i % 3 != 1]
    assert sink.drain() == []
    assert sink.statistics().queued == 0


async def test_put_rejects_non_trajectories() -> None:
    sink = MemorySink(2)
    with pytest.raises(TypeError, match="Trajectory"):
        await sink.put({"obs": []})  # type: ignore[arg-type]
    assert sink.statistics().written == 0


async def test_drop_oldest_evicts_per_actor_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    sink = MemorySink(2, overflow="drop_oldest")
    a = [make_traj(2, actor=0, episode=i, seed=i) for i in range(5)]
    b = make_traj(4, actor=1, seed=99)
    with caplog.at_level(logging.WARNING, logger="relayrl.sinks"):
        for t in a:
            await sink.put(t)
        await sink.put(b)
    stats = sink.statistics()
    assert (stats.dropped, stats.dropped_steps, stats.written, stats.queued) == (3, 6, 6, 3)
    assert sink.drain() == [a[3], a[4], b]
    assert sum("dropped" in r.getMessage() for r in caplog.records) == 1  # logged once, not per drop


async def test_drop_newest_keeps_the_first() -> None:
    sink = MemorySink(2, overflow="drop_newest")
    a = [make_traj(2, actor=0, episode=i, seed=i) for i in range(4)]
    for t in a:
        sink.put_nowait(t)
    stats = sink.statistics()
    assert (stats.dropped, stats.written, stats.queued) == (2, 2, 2)
    assert sink.drain() == a[:2]


async def test_block_waits_until_drain(autojump_clock: trio.testing.MockClock) -> None:
    sink = MemorySink(2, overflow="block")
    a = [make_traj(2, actor=0, episode=i, seed=i) for i in range(4)]
    other = make_traj(2, actor=1, seed=7)
    done: list[int] = []

    async def producer() -> None:
        for i, t in enumerate(a):
            await sink.put(t)
            done.append(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.sleep(10)
        assert done == [0, 1]  # the third put is blocked
        with pytest.raises(trio.WouldBlock):
            sink.put_nowait(a[2])
        await sink.put(other)  # another actor has room
        assert sink.drain(ACTORS[0]) == a[:2]
        await trio.sleep(10)
        assert done == [0, 1, 2, 3]
    assert sink.drain() == [other, a[2], a[3]]
    assert sink.statistics().dropped == 0


async def test_cancelled_blocked_put_accepts_nothing(autojump_clock: trio.testing.MockClock) -> None:
    sink = MemorySink(1, overflow="block")
    first, second = make_traj(2, seed=1), make_traj(2, seed=2)
    await sink.put(first)
    with trio.move_on_after(5) as scope:
        await sink.put(second)
    assert scope.cancelled_caught
    assert sink.drain() == [first]
    assert sink.statistics().written == 1


async def test_put_after_aclose_raises_and_aclose_is_idempotent() -> None:
    sink = MemorySink(4)
    t = make_traj(3)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        await sink.put(t)
        await sink.aclose()
    await sink.aclose()
    with pytest.raises(relayrl.AgentClosedError):
        await sink.put(make_traj(2))
    with pytest.raises(relayrl.AgentClosedError):
        sink.put_nowait(make_traj(2))
    assert sink.drain() == [t]  # held data survives the close
    assert sink.statistics().written == 1


async def test_aclose_waits_for_blocked_puts(autojump_clock: trio.testing.MockClock) -> None:
    sink = MemorySink(1, overflow="block")
    first, second = make_traj(2, seed=1), make_traj(2, seed=2)
    await sink.put(first)
    closed = trio.Event()

    async def closer() -> None:
        await sink.aclose()
        closed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sink.put, second)
        await trio.sleep(1)
        nursery.start_soon(closer)
        await trio.sleep(1)
        assert not closed.is_set()  # a put that started before aclose is still delivered
        assert sink.drain() == [first]
    assert closed.is_set()
    assert sink.drain() == [second]


async def test_run_twice_is_an_error() -> None:
    sink = MemorySink(1)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        with pytest.raises(RuntimeError, match="already started"):
            await sink.run()
        await sink.aclose()


async def test_async_with_standalone() -> None:
    sink = MemorySink(3)
    async with sink:
        await sink.put(make_traj(2))
    with pytest.raises(relayrl.AgentClosedError):
        await sink.put(make_traj(2))
    assert len(sink.drain()) == 1
