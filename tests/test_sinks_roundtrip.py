"""Property test: any trajectory the file sinks accept reads back equal, in every format."""

from __future__ import annotations

import tempfile
import uuid
from typing import Any

import numpy as np
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relayrl import Trajectory, read_trajectories
from relayrl.sinks import ArrowSink, CsvSink, ParquetSink

DTYPES = [np.float32, np.float64, np.float16, np.uint8, np.int16, np.int64, np.uint64, np.bool_]
SHAPES = [(), (3,), (2, 2), (1, 2, 1)]


def _values(rng: np.random.Generator, shape: tuple[int, ...], dtype: Any) -> np.ndarray[Any, Any]:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        pool = np.array([0.0, -0.0, 1.5, -2.25, 1e-7, np.nan, np.inf, -np.inf, np.finfo(dt).max, np.finfo(dt).tiny,
                         1 / 3], dtype=dt)
        return np.asarray(rng.choice(pool, size=shape), dtype=dt)
    if dt.kind == "b":
        return np.asarray(rng.random(shape) < 0.5)
    info = np.iinfo(dt)
    return np.asarray(rng.choice(np.array([info.min, info.max, 0, 1, 7], dtype=dt), size=shape), dtype=dt)


@st.composite
def trajectories(draw: st.DrawFn) -> Trajectory:
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    steps = draw(st.integers(0, 5))
    obs_shape = draw(st.sampled_from(SHAPES))
    obs_dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["discrete", "multi", "box"]))
    act = (rng.integers(0, 5, size=steps) if kind == "discrete"
           else rng.integers(0, 5, size=(steps, 3)) if kind == "multi"
           else _values(rng, (steps, 2), np.float32))
    extras = {name: _values(rng, (steps, *draw(st.sampled_from(SHAPES))), draw(st.sampled_from(DTYPES)))
              for name in draw(st.lists(st.sampled_from(["state", "a b", "ü", "x.y"]), max_size=2, unique=True))}
    return Trajectory(
        obs=_values(rng, (steps, *obs_shape), obs_dtype),
        act=np.asarray(act),
        reward=_values(rng, (steps,), np.float32),
        done=rng.random(steps) < 0.3,
        logp=_values(rng, (steps,), np.float32),
        value=_values(rng, (steps,), np.float32),
        model_version=rng.integers(-5, 2**40, size=steps),
        mask=rng.random((steps, 4)) < 0.5 if draw(st.booleans()) else None,
        actor_id=uuid.UUID(int=draw(st.integers(0, 2**128 - 1))),
        episode=draw(st.integers(-(2**63), 2**63 - 1)),
        env_id=draw(st.none() | st.text(max_size=6)),
        truncated=draw(st.booleans()),
        final_obs=_values(rng, obs_shape, obs_dtype) if draw(st.booleans()) else None,
        start_time=draw(st.floats(allow_nan=False, allow_infinity=False)),
        end_time=draw(st.floats(allow_nan=False, allow_infinity=False)),
        extras=extras,
    )


async def _write(cls: Any, directory: str, trajs: list[Trajectory]) -> None:
    async with cls(directory, batch_steps=4) as sink:
        for t in trajs:
            await sink.put(t)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(trajectories(), max_size=5))
def test_every_format_round_trips(trajs: list[Trajectory]) -> None:
    for cls in (ArrowSink, ParquetSink, CsvSink):
        with tempfile.TemporaryDirectory() as directory:
            trio.run(_write, cls, directory, trajs)
            back = read_trajectories(directory)
            assert len(back) == len(trajs)
            for got, want in zip(back, trajs):
                assert got == want, (cls.__name__, got, want)
