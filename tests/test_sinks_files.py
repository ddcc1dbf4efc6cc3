"""ArrowSink, ParquetSink, CsvSink and read_trajectories: round trips, rotation, backpressure, bad input."""

# The tests read and corrupt small files in tmp_path directly from async test functions.
# ruff: noqa: ASYNC240

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet as pq
import pytest
import trio
import trio.testing
from _sinks_data import ACTORS, make_traj

import relayrl
from relayrl import Trajectory, read_trajectories
from relayrl.sinks import ArrowSink, CsvSink, ParquetSink

SINKS = [ArrowSink, ParquetSink, CsvSink]
FileSink = type[ArrowSink] | type[ParquetSink] | type[CsvSink]


def variety() -> list[Trajectory]:
    """Every kind of column the sinks must round-trip, from several actors, in one run."""
    return [
        make_traj(5, actor=0, seed=1, kind="discrete", mask=True, final_obs=True, truncated=True, env_id="env-0"),
        make_traj(4, actor=1, seed=2, kind="discrete"),
        make_traj(6, actor=2, seed=3, kind="multidiscrete", mask=True, env_id=""),
        make_traj(3, actor=0, seed=4, kind="box", value_nan=True, episode=7, env_id="ünï,\"q\"\n"),
        make_traj(4, actor=1, seed=5, obs_shape=(2, 3), obs_dtype=np.uint8, final_obs=True, truncated=True),
        make_traj(3, actor=3, seed=6, obs_shape=(), kind="box",
                  extras={"state": np.arange(9, dtype=np.float16).reshape(3, 3), "flag": np.array([1, 0, 1], bool)}),
        make_traj(2, actor=2, seed=7, extras={}),
        make_traj(0, actor=1, seed=8, final_obs=True, truncated=True),  # an empty trajectory
        make_traj(0, actor=3, seed=9, kind="box"),
        make_traj(5, actor=0, seed=10, kind="discrete", mask=True, final_obs=True, episode=8),
        make_traj(3, actor=2, seed=11, obs_shape=(2, 3), obs_dtype=np.float64, kind="box",
                  extras={"state": np.ones((3, 2, 2), np.int16)}),
    ]


async def until(condition: Any) -> None:
    """Wait for a writer thread without letting the autojump clock advance (it jumps while threads run)."""
    while not condition():
        await trio.lowlevel.checkpoint()


async def write_all(cls: FileSink, path: Path, trajs: list[Trajectory], **kwargs: Any) -> Any:
    sink = cls(path, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        for t in trajs:
            await sink.put(t)
        await sink.aclose()
    return sink


@pytest.mark.parametrize("cls", SINKS)
async def test_round_trip_every_kind_of_trajectory(cls: FileSink, tmp_path: Path) -> None:
    trajs = variety()
    sink = await write_all(cls, tmp_path / "out", trajs)
    stats = sink.statistics()
    assert (stats.written, stats.steps_written, stats.dropped, stats.queued, stats.abandoned) == (
        len(trajs), sum(len(t) for t in trajs), 0, 0, 0)
    assert stats.files == len(sink.paths) == len(os.listdir(tmp_path / "out"))
    assert stats.bytes_written == sum(os.path.getsize(p) for p in sink.paths)
    back = read_trajectories(tmp_path / "out")
    assert len(back) == len(trajs)
    for got, want in zip(back, trajs):
        assert got == want, (got, want)
        assert got.obs.dtype == want.obs.dtype and got.obs.shape == want.obs.shape
        arrays = [got.obs, got.act, got.reward, got.done, got.logp, got.value, got.model_version,
                  *got.extras.values()] + [a for a in (got.mask, got.final_obs) if a is not None]
        assert all(a.flags.writeable for a in arrays)  # the caller's own arrays, not views of file memory
        assert (got.mask is None) == (want.mask is None)
        assert (got.final_obs is None) == (want.final_obs is None)
    # One file reads the same as the directory (for that file's trajectories).
    one = read_trajectories(sink.paths[0])
    assert one == [t for t in back if any(t == u for u in one)]


@pytest.mark.parametrize("cls", SINKS)
async def test_empty_sink_writes_no_file(cls: FileSink, tmp_path: Path) -> None:
    sink = await write_all(cls, tmp_path / "out", [])
    assert sink.statistics().files == 0
    assert read_trajectories(tmp_path / "out") == []


@pytest.mark.parametrize("cls", SINKS)
async def test_rotation_by_size_keeps_order(cls: FileSink, tmp_path: Path) -> None:
    trajs = [make_traj(20, actor=i % 3, episode=i, seed=i) for i in range(30)]
    sink = cls(tmp_path, max_file_bytes=2000, batch_steps=40, run_id="run1", prefix="t")
    async with sink:
        for t in trajs:
            await sink.put(t)
    paths = sink.paths
    assert len(paths) > 3
    ext = {ArrowSink: ".arrow", ParquetSink: ".parquet", CsvSink: ".csv"}[cls]
    assert [os.path.basename(p) for p in paths] == [f"t-run1-{n:04d}{ext}" for n in range(len(paths))]
    assert read_trajectories(tmp_path) == trajs
    # Two runs in one directory: ordered by run id.
    later = [make_traj(3, seed=100 + i) for i in range(3)]
    await write_all(cls, tmp_path, later, run_id="run2", prefix="t")
    assert read_trajectories(tmp_path) == trajs + later


async def test_arrow_record_batches_hold_whole_trajectories(tmp_path: Path) -> None:
    trajs = [make_traj(30, seed=i, episode=i) for i in range(10)] + [make_traj(150, seed=99)]
    sink = await write_all(ArrowSink, tmp_path, trajs, batch_steps=100, max_file_bytes=None)
    (path,) = sink.paths
    with pa.OSFile(path, "rb") as f:
        batches = list(pa.ipc.open_stream(f))
    rows = [b.num_rows for b in batches]
    assert sum(rows) == 450
    assert rows[-1] == 150  # a trajectory longer than batch_steps gets a batch of its own
    assert all(n <= 100 and n % 30 == 0 for n in rows[:-1])  # whole trajectories, at most batch_steps rows
    assert read_trajectories(path) == trajs


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
async def test_arrow_compression(compression: str, tmp_path: Path) -> None:
    trajs = variety()
    await write_all(ArrowSink, tmp_path, trajs, compression=compression)
    assert read_trajectories(tmp_path) == trajs


async def test_parquet_uses_zstd(tmp_path: Path) -> None:
    sink = await write_all(ParquetSink, tmp_path, [make_traj(10)])
    meta = pq.ParquetFile(sink.paths[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


async def test_writer_batches_until_batch_steps_or_flush_interval(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sink = ArrowSink(tmp_path, batch_steps=50, flush_interval=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        await sink.put(make_traj(10, seed=1))
        await trio.sleep(4.9)
        assert sink.statistics().written == 0 and sink.statistics().queued == 1  # waits for a fuller batch
        await trio.sleep(0.2)
        await until(lambda: sink.statistics().written == 1)  # the flush interval passed
        assert read_trajectories(tmp_path) == [make_traj(10, seed=1)]  # readable while the sink is open
        t0 = trio.current_time()
        for i in range(5):
            await sink.put(make_traj(10, seed=10 + i))
        await until(lambda: sink.statistics().written == 6)
        assert trio.current_time() - t0 < 1.0  # 50 steps queued: written at once, not after the flush interval
        await sink.aclose()
    assert len(read_trajectories(tmp_path)) == 6


@pytest.mark.parametrize("cls", SINKS)
async def test_block_waits_for_the_writer_and_loses_nothing(
    cls: FileSink, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    trajs = [make_traj(3, seed=i, episode=i) for i in range(7)]
    sink = cls(tmp_path, capacity=3, overflow="block", flush_interval=1000.0)
    progress: list[int] = []

    async def producer() -> None:
        for i, t in enumerate(trajs):
            await sink.put(t)
            progress.append(i)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.sleep(10)
        assert progress == [0, 1, 2]  # no writer yet: the fourth put blocks
        assert sink.statistics().queued == 3
        with pytest.raises(trio.WouldBlock):
            sink.put_nowait(trajs[3])
        await nursery.start(sink.run)  # the writer catches up, the producer goes on
        await until(lambda: len(progress) == 7)
        await sink.aclose()
    stats = sink.statistics()
    assert (stats.written, stats.dropped, stats.abandoned, stats.queued) == (7, 0, 0, 0)
    assert read_trajectories(tmp_path) == trajs


@pytest.mark.parametrize(("overflow", "kept"), [("drop_oldest", slice(4, 7)), ("drop_newest", slice(0, 3))])
async def test_drop_policies_count_drops_and_lose_nothing_else(
    overflow: str, kept: slice, tmp_path: Path
) -> None:
    trajs = [make_traj(4, seed=i, episode=i) for i in range(7)]
    sink = ArrowSink(tmp_path, capacity=3, overflow=overflow)  # type: ignore[arg-type]
    for t in trajs:
        await sink.put(t)  # never blocks: nothing is writing yet
    stats = sink.statistics()
    assert (stats.dropped, stats.dropped_steps, stats.queued) == (4, 16, 3)
    await sink.aclose()  # run() never started: aclose drains inline
    stats = sink.statistics()
    assert (stats.written, stats.dropped, stats.queued, stats.abandoned) == (3, 4, 0, 0)
    assert read_trajectories(tmp_path) == trajs[kept]


async def test_aclose_drains_puts_blocked_before_it(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    trajs = [make_traj(2, seed=i) for i in range(6)]
    sink = ArrowSink(tmp_path, capacity=2)
    async with trio.open_nursery() as nursery:
        for t in trajs:
            nursery.start_soon(sink.put, t)
            await trio.lowlevel.checkpoint()
        await trio.sleep(1)
        assert sink.statistics().queued == 2  # four producers blocked, no writer
        await sink.aclose()  # runs the writer inline and waits for the blocked ones
    assert sink.statistics().written == 6
    assert sorted(read_trajectories(tmp_path), key=lambda t: t.start_time) == trajs


@pytest.mark.parametrize("cls", SINKS)
async def test_put_after_close_raises(cls: FileSink, tmp_path: Path) -> None:
    sink = await write_all(cls, tmp_path, [make_traj(2)])
    await sink.aclose()  # idempotent
    with pytest.raises(relayrl.AgentClosedError):
        await sink.put(make_traj(2))
    with pytest.raises(relayrl.AgentClosedError):
        sink.put_nowait(make_traj(2))
    assert sink.statistics().written == 1
    assert read_trajectories(tmp_path) == [make_traj(2)]


async def test_cancelled_writer_closes_its_files_and_counts_the_rest(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    sink = ArrowSink(tmp_path, flush_interval=100.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        await sink.put(make_traj(3, seed=1))
        await trio.sleep(101)
        await sink.put(make_traj(3, seed=2))
        nursery.cancel_scope.cancel()
    stats = sink.statistics()
    assert (stats.written, stats.abandoned, stats.queued) == (1, 1, 0)
    assert read_trajectories(tmp_path) == [make_traj(3, seed=1)]
    with pytest.raises(relayrl.AgentClosedError):
        await sink.put(make_traj(1))


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (lambda t: setattr(t, "reward", t.reward[:-1]), "expected 2 steps"),
        (lambda t: setattr(t, "obs", t.obs.astype(object)), "dtype"),
        (lambda t: setattr(t, "act", t.act.astype(">i8")), "dtype"),
        (lambda t: setattr(t, "logp", list(t.logp)), "numpy"),
        (lambda t: t.extras.update(s=np.zeros((3, 0), np.float32)), "zero-sized"),
        (lambda t: setattr(t, "final_obs", "x"), "final_obs"),
        (lambda t: setattr(t, "final_obs", np.zeros((4, 0))), "final_obs"),
        (lambda t: setattr(t, "env_id", 3), "env_id"),
        (lambda t: setattr(t, "actor_id", "a"), "actor_id"),
        (lambda t: setattr(t, "episode", 2**64), "episode"),
        (lambda t: setattr(t, "start_time", None), "start_time"),
    ],
)
async def test_malformed_trajectory_is_rejected_at_put(bad: Any, match: str, tmp_path: Path) -> None:
    sink = ArrowSink(tmp_path)
    t = make_traj(3)
    bad(t)
    with pytest.raises(ValueError, match=match):
        await sink.put(t)
    with pytest.raises(TypeError):
        await sink.put("not a trajectory")  # type: ignore[arg-type]
    await sink.put(make_traj(2))
    await sink.aclose()
    assert sink.statistics().written == 1
    assert read_trajectories(tmp_path) == [make_traj(2)]


async def test_unusable_directory_fails_at_start(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    sink = ArrowSink(tmp_path / "file")
    with pytest.RaisesGroup(pytest.RaisesExc(relayrl.SinkError, match="cannot prepare")):
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run)
    with pytest.raises(relayrl.SinkError):
        await sink.put(make_traj(2))


async def test_write_failure_is_a_sink_error_and_counts_the_lost(tmp_path: Path) -> None:
    out = tmp_path / "out"
    sink = ArrowSink(out, max_file_bytes=1, flush_interval=0)  # a new file per batch, written at once
    with pytest.RaisesGroup(pytest.RaisesExc(relayrl.SinkError, match="writing to ArrowSink")):
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run)
            await sink.put(make_traj(2, seed=1))
            while sink.statistics().written < 1:  # noqa: ASYNC110 (no event to wait on: poll the counter)
                await trio.sleep(0.001)
            shutil.rmtree(out)
            out.write_text("now a file")  # the next file cannot be created
            sink.put_nowait(make_traj(2, seed=2))
            sink.put_nowait(make_traj(2, seed=3))
            await trio.sleep_forever()
    stats = sink.statistics()
    assert (stats.written, stats.abandoned, stats.queued) == (1, 2, 0)
    with pytest.raises(relayrl.SinkError):
        await sink.put(make_traj(2))


# -- reading bad input --------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(relayrl.SinkError, match="no trajectory file") as info:
        read_trajectories(tmp_path / "nope")
    assert isinstance(info.value, OSError)


def test_garbage_and_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "junk.arrow").write_bytes(b"hello world, not arrow at all")
    with pytest.raises(relayrl.SinkError, match=r"junk\.arrow"):
        read_trajectories(tmp_path)
    with pytest.raises(relayrl.SinkError, match=r"junk\.arrow"):
        read_trajectories(tmp_path / "junk.arrow")
    (tmp_path / "junk.arrow").unlink()
    # A Parquet file from someone else.
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "other.parquet")
    with pytest.raises(relayrl.SinkError, match=r"other\.parquet.*no relayrl"):
        read_trajectories(tmp_path / "other.parquet")
    # An Arrow IPC *file* (not stream) and an IPC stream without our metadata.
    with pa.ipc.new_file(str(tmp_path / "f.arrow"), pa.schema([("x", pa.int64())])) as w:
        w.write_table(pa.table({"x": [1]}))
    with pytest.raises(relayrl.SinkError, match=r"f\.arrow"):
        read_trajectories(tmp_path / "f.arrow")
    with pa.ipc.new_stream(str(tmp_path / "s.arrow"), pa.schema([("x", pa.int64())])) as w:
        w.write_table(pa.table({"x": [1]}))
    with pytest.raises(relayrl.SinkError, match=r"s\.arrow"):
        read_trajectories(tmp_path / "s.arrow")
    # Files of other kinds in a directory are ignored.
    (tmp_path / "README.txt").write_text("notes")
    for f in ("other.parquet", "f.arrow", "s.arrow"):
        (tmp_path / f).unlink()
    assert read_trajectories(tmp_path) == []


async def test_truncated_arrow_file_prefix_or_error(tmp_path: Path) -> None:
    trajs = [make_traj(10, seed=i, episode=i) for i in range(6)]
    sink = await write_all(ArrowSink, tmp_path, trajs, batch_steps=20, max_file_bytes=None)
    (path,) = sink.paths
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * 0.8)])  # a crash in the middle of the last batch
    with pytest.raises(relayrl.SinkError, match="truncated") as info:
        read_trajectories(path)
    assert os.path.basename(path) in str(info.value)
    prefix = read_trajectories(path, allow_truncated=True)
    assert prefix == trajs[: len(prefix)]
    assert 1 <= len(prefix) < 6
    # Without the end-of-stream marker only (the writer died between batches) everything is there.
    Path(path).write_bytes(data[:-8])
    assert read_trajectories(path) == trajs


@pytest.mark.parametrize("cls", [ParquetSink, CsvSink])
async def test_truncated_parquet_and_csv_raise(cls: FileSink, tmp_path: Path) -> None:
    trajs = [make_traj(10, seed=i) for i in range(4)]
    sink = await write_all(cls, tmp_path, trajs)
    (path,) = sink.paths
    data = Path(path).read_bytes()
    for cut in (len(data) // 2, len(data) - 10):
        Path(path).write_bytes(data[:cut])
        with pytest.raises(relayrl.SinkError, match=os.path.basename(path)):
            read_trajectories(path, allow_truncated=True)


async def test_csv_cut_at_a_line_boundary_is_detected(tmp_path: Path) -> None:
    sink = await write_all(CsvSink, tmp_path, [make_traj(10, seed=1)])
    (path,) = sink.paths
    lines = Path(path).read_bytes().splitlines(keepends=True)
    Path(path).write_bytes(b"".join(lines[:-3]))
    with pytest.raises(relayrl.SinkError, match="expected 10"):
        read_trajectories(path)


async def test_unknown_format_version(tmp_path: Path) -> None:
    sink = await write_all(CsvSink, tmp_path, [make_traj(2)])
    (path,) = sink.paths
    text = Path(path).read_text().replace('"version":1', '"version":99', 1)
    Path(path).write_text(text)
    with pytest.raises(relayrl.SinkError, match="version 99"):
        read_trajectories(path)


# -- configuration and dependencies -------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (ArrowSink, {"compression": "gzip"}, "compression"),
        (ParquetSink, {"compression": "rar"}, "compression"),
        (ArrowSink, {"max_file_bytes": 0}, "max_file_bytes"),
        (CsvSink, {"batch_steps": 0}, "batch_steps"),
        (ArrowSink, {"flush_interval": -1}, "flush_interval"),
        (ArrowSink, {"flush_interval": float("inf")}, "flush_interval"),
        (ArrowSink, {"prefix": "a/b"}, "prefix"),
        (ArrowSink, {"run_id": ""}, "run_id"),
        (ArrowSink, {"overflow": "drop"}, "overflow"),
        (ParquetSink, {"capacity": 0}, "capacity"),
    ],
)
def test_bad_configuration(cls: FileSink, kwargs: dict[str, Any], match: str, tmp_path: Path) -> None:
    with pytest.raises(relayrl.ConfigError, match=match):
        cls(tmp_path, **kwargs)
    assert not os.listdir(tmp_path)


def test_missing_pyarrow_names_the_install_command(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "import relayrl\n"
        "from relayrl.sinks import ArrowSink\n"
        "for f in (lambda: ArrowSink(sys.argv[1]), lambda: relayrl.read_trajectories(sys.argv[1])):\n"
        "    try:\n"
        "        f()\n"
        "    except relayrl.BackendUnavailableError as e:\n"
        "        print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.count("pip install pyarrow") == 2, out.stdout + out.stderr


def test_importing_the_sinks_does_not_import_pyarrow(tmp_path: Path) -> None:
    # Creating a file sink checks that pyarrow exists; the writer thread imports it, never the event loop.
    code = ("import sys, relayrl, relayrl.sinks; relayrl.sinks.MemorySink(); relayrl.sinks.ArrowSink(sys.argv[1]); "
            "print('pyarrow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_actor_ids_survive(tmp_path: Path) -> None:
    assert len(set(ACTORS)) == 4


@pytest.mark.parametrize("overflow", ["block", "drop_oldest", "drop_newest"])
async def test_many_producers_small_queue(overflow: str, tmp_path: Path) -> None:
    """8 producers against a 2-slot queue: every trajectory is written or counted, each producer's in order."""
    sink = ArrowSink(tmp_path, capacity=2, overflow=overflow, flush_interval=0)  # type: ignore[arg-type]
    per_producer = 25

    async def producer(p: int) -> None:
        for i in range(per_producer):
            await sink.put(make_traj(1 + i % 3, actor=p % 4, episode=p * 1000 + i, seed=i))

    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        async with trio.open_nursery() as producers:
            for p in range(8):
                producers.start_soon(producer, p)
        await sink.aclose()
    stats = sink.statistics()
    back = read_trajectories(tmp_path)
    assert stats.written == len(back) and stats.queued == 0 and stats.abandoned == 0
    assert stats.written + stats.dropped == 8 * per_producer
    if overflow == "block":
        assert stats.dropped == 0
    for p in range(8):
        episodes = [t.episode for t in back if t.episode // 1000 == p]
        assert episodes == sorted(episodes)


async def test_an_existing_file_is_never_overwritten(tmp_path: Path) -> None:
    first = await write_all(ArrowSink, tmp_path, [make_traj(3, seed=1)], run_id="same")
    again = ArrowSink(tmp_path, run_id="same")
    with pytest.RaisesGroup(pytest.RaisesExc(relayrl.SinkError, match="exists")):
        async with trio.open_nursery() as nursery:
            await nursery.start(again.run)
            await again.put(make_traj(3, seed=2))
            await again.aclose()
    assert again.statistics().abandoned == 1
    assert read_trajectories(first.paths[0]) == [make_traj(3, seed=1)]


async def test_arrow_trajectory_columns_are_run_end_encoded_and_plain_files_read_too(tmp_path: Path) -> None:
    import pyarrow.compute as pc

    trajs = variety()
    sink = await write_all(ArrowSink, tmp_path / "ree", trajs)
    first = sink.paths[0]
    with pa.OSFile(first, "rb") as f:
        table = pa.ipc.open_stream(f).read_all()
    assert pa.types.is_run_end_encoded(table.schema.field("actor_id").type)
    assert not pa.types.is_run_end_encoded(table.schema.field("step").type)
    assert len(table["episode"].to_numpy()) == table.num_rows  # plain pyarrow reads it like any column
    # The same table with every column decoded (what another tool might write back) reads the same.
    plain = pa.table({name: pc.run_end_decode(col) if pa.types.is_run_end_encoded(col.type) else col
                      for name, col in zip(table.column_names, table.columns)}).replace_schema_metadata(
                          table.schema.metadata)
    (tmp_path / "plain").mkdir()
    with pa.ipc.new_stream(str(tmp_path / "plain" / "t.arrow"), plain.schema) as w:
        w.write_table(plain, max_chunksize=7)  # chunks that cut trajectories in two
    assert read_trajectories(tmp_path / "plain" / "t.arrow") == read_trajectories(first)
    # Run-end encoded record batches sliced mid-run (another writer's chunking) read the same too.
    with pa.ipc.new_stream(str(tmp_path / "plain" / "sliced.arrow"), table.schema) as w:
        w.write_table(table, max_chunksize=7)
    assert read_trajectories(tmp_path / "plain" / "sliced.arrow") == read_trajectories(first)


async def test_validation_cache_still_rejects_bad_trajectories(tmp_path: Path) -> None:
    sink = ArrowSink(tmp_path)
    good = make_traj(3, mask=True, final_obs=True)
    await sink.put(good)  # its signature is now cached
    for bad in (make_traj(3, mask=True, final_obs=True), make_traj(3, mask=True, final_obs=True)):
        assert bad.mask is not None
        bad.mask = bad.mask[:2]  # same dtypes and per-step shapes as the cached one, wrong length
        with pytest.raises(ValueError, match="mask"):
            await sink.put(bad)
    odd = make_traj(3, mask=True, final_obs=True, episode=4)
    odd.episode = np.int64(4)  # type: ignore[assignment]  # not the fast path, still fine
    await sink.put(odd)
    await sink.aclose()
    assert read_trajectories(tmp_path) == [good, make_traj(3, mask=True, final_obs=True, episode=4)]
