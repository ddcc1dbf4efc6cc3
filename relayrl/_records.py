"""Trajectory file formats: Arrow IPC stream, Parquet and CSV, written as one "long" table.

Every format stores the same table, one row per step, trajectories one after the other (see
``docs/trajectories.md`` for the full schema):

=================  ==========================  ===========================================================
column             Arrow type                  meaning
=================  ==========================  ===========================================================
``traj``           int64                       trajectory number within the run (the order of ``put``)
``step``           int32                       step index; ``-1`` marks the one placeholder row of an
                                               empty trajectory (its per-step columns are zeros)
``steps``          int32                       the trajectory's length (a truncated file is detected)
``actor_id``       fixed_size_binary(16)       the actor's UUID bytes (CSV: the UUID string)
``episode``        int64
``env_id``         string (nullable)
``truncated``      bool
``start_time``     float64
``end_time``       float64
``obs`` ...        numpy dtype, or a           per-step columns: ``obs``, ``act``, ``reward``, ``done``,
                   fixed_size_list of it       ``logp``, ``value``, ``model_version``, ``mask`` (only when
                                               present), ``extra.<name>`` for each extra; a column with a
                                               per-step shape is flattened (CSV: one column per element,
                                               ``obs.0``, ``obs.1`` ...)
``final_obs``      list<obs type>              one element on the trajectory's last row when it has a
                                               final observation, empty otherwise (CSV: nullable columns)
=================  ==========================  ===========================================================

In Arrow files the trajectory-level columns (``traj``, ``steps``, ``actor_id``, ``episode``,
``env_id``, ``truncated``, the times) are run-end encoded, one run per trajectory, so they cost
nothing per step; Parquet and CSV repeat them on every row.

The exact dtypes and shapes live in the schema metadata under ``relayrl.trajectories`` (a JSON
object; for CSV, on the first line after ``#relayrl-trajectories``), so :func:`read_trajectories`
restores arrays equal to the ones written. Trajectories whose columns differ in dtype or shape
(another model, another agent's space) go to separate files.

pyarrow is imported lazily: ``import relayrl`` never imports it.
"""

from __future__ import annotations

import importlib.util
import json
import operator
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ._errors import BackendUnavailableError, SinkError
from ._trajectory import Trajectory

__all__ = ["FORMATS", "Encoder", "check_pyarrow", "read_trajectories", "require_pyarrow", "signature"]

FORMAT_NAME: Final = "relayrl.trajectories"
FORMAT_VERSION: Final = 1
META_KEY: Final = b"relayrl.trajectories"
CSV_MAGIC: Final = b"#relayrl-trajectories "
PARQUET_MAGIC: Final = b"PAR1"
IPC_MAGIC: Final = b"\xff\xff\xff\xff"  # the continuation marker every IPC stream message starts with
#: File extensions by format name.
FORMATS: Final = {"arrow": ".arrow", "parquet": ".parquet", "csv": ".csv"}

STEP_FIELDS: Final = ("obs", "act", "reward", "done", "logp", "value", "model_version")
EXTRA_PREFIX: Final = "extra."

Array = npt.NDArray[Any]
#: (column name, dtype, per-step shape) for every per-step column, then the final_obs (dtype, shape).
Signature = tuple[tuple[tuple[str, np.dtype[Any], tuple[int, ...]], ...], tuple[np.dtype[Any], tuple[int, ...]]]


_NO_PYARROW: Final = (
    "writing or reading trajectory files needs pyarrow: pip install pyarrow (or pip install 'relayrl[arrow]')"
)


def require_pyarrow() -> Any:
    """Import pyarrow or raise an error that says how to install it."""
    try:
        import pyarrow
        import pyarrow.ipc
    except ImportError as exc:
        raise BackendUnavailableError(_NO_PYARROW) from exc
    return pyarrow


def check_pyarrow() -> None:
    """Raise the error of :func:`require_pyarrow` if pyarrow is missing, without importing it (that takes ~0.3 s)."""
    if "pyarrow" in sys.modules:
        missing = sys.modules["pyarrow"] is None
    else:
        try:
            missing = importlib.util.find_spec("pyarrow") is None
        except (ImportError, ValueError):
            missing = True
    if missing:
        raise BackendUnavailableError(_NO_PYARROW)


#: The dtypes files can hold, once checked (a cache: ``signature`` runs in every ``put``).
_DTYPES_OK: set[np.dtype[Any]] = set()


def _check_dtype(name: str, dtype: np.dtype[Any]) -> np.dtype[Any]:
    if dtype not in _DTYPES_OK:
        if dtype.kind not in "biuf" or not dtype.isnative:
            raise ValueError(f"trajectory column {name!r} has dtype {dtype}; file sinks store native bool, int, "
                             "uint and float arrays")
        _DTYPES_OK.add(dtype)
    return dtype


def _spec(name: str, arr: object, steps: int) -> tuple[str, np.dtype[Any], tuple[int, ...]]:
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"trajectory column {name!r} must be a numpy array, got {type(arr).__name__}")
    shape = arr.shape
    if not shape or shape[0] != steps:
        raise ValueError(f"trajectory column {name!r} has shape {shape}, expected {steps} steps")
    if len(shape) > 1 and 0 in shape[1:]:
        raise ValueError(f"trajectory column {name!r} has a zero-sized per-step shape {shape[1:]}")
    return name, _check_dtype(name, arr.dtype), shape[1:]


_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

#: Signatures already validated, by the key :func:`signature` computes quickly (bounded).
_SIGNATURES: dict[tuple[Any, ...], Signature] = {}
_ndarray = np.ndarray


def signature(traj: Trajectory) -> Signature:
    """The dtypes and shapes that decide which file (schema) a trajectory goes to.

    It runs in every ``put``, so the common case (plain numpy arrays, no extras, a signature seen
    before) is a cache lookup on a key built from the arrays' dtypes and shapes.

    Raises:
        ValueError: If a column is not a numpy array, has an unsupported dtype, a length other
            than the trajectory's, or a zero-sized per-step shape.
    """
    o, a, r, d, lp, v, m = traj.obs, traj.act, traj.reward, traj.done, traj.logp, traj.value, traj.model_version
    mask, final, episode = traj.mask, traj.final_obs, traj.episode
    if (type(o) is _ndarray and type(a) is _ndarray and type(r) is _ndarray and type(d) is _ndarray
            and type(lp) is _ndarray and type(v) is _ndarray and type(m) is _ndarray and not traj.extras
            and (mask is None or type(mask) is _ndarray) and (final is None or type(final) is _ndarray)
            and type(traj.actor_id) is uuid.UUID and type(episode) is int and _INT64_MIN <= episode <= _INT64_MAX
            and (traj.env_id is None or type(traj.env_id) is str)
            and type(traj.start_time) is float and type(traj.end_time) is float):
        so, sa, sr, sd, sl, sv, sm = o.shape, a.shape, r.shape, d.shape, lp.shape, v.shape, m.shape
        if sr and so and sa and sd and sl and sv and sm:
            n = sr[0]
            if so[0] == n and sa[0] == n and sd[0] == n and sl[0] == n and sv[0] == n and sm[0] == n:
                key = (o.dtype, so[1:], a.dtype, sa[1:], r.dtype, sr[1:], d.dtype, sd[1:], lp.dtype, sl[1:],
                       v.dtype, sv[1:], m.dtype, sm[1:],
                       None if mask is None else (mask.dtype, mask.shape[1:], mask.shape[:1] == (n,)),
                       None if final is None else (final.dtype, final.shape))
                sig = _SIGNATURES.get(key)
                if sig is not None:
                    return sig
                sig = _signature(traj)  # validates everything, raises for bad input
                if len(_SIGNATURES) >= 1024:
                    _SIGNATURES.clear()
                _SIGNATURES[key] = sig
                return sig
    return _signature(traj)


def _signature(traj: Trajectory) -> Signature:
    reward = traj.reward
    if not isinstance(reward, np.ndarray) or reward.ndim == 0:
        raise ValueError(f"trajectory column 'reward' must be a 1-d numpy array, got {type(reward).__name__}")
    steps = reward.shape[0]
    cols = [_spec("obs", traj.obs, steps), _spec("act", traj.act, steps), _spec("reward", reward, steps),
            _spec("done", traj.done, steps), _spec("logp", traj.logp, steps), _spec("value", traj.value, steps),
            _spec("model_version", traj.model_version, steps)]
    if traj.mask is not None:
        cols.append(_spec("mask", traj.mask, steps))
    if traj.extras:
        cols.extend(_spec(EXTRA_PREFIX + k, traj.extras[k], steps) for k in sorted(traj.extras))
    final = traj.final_obs
    if final is None:
        final_spec = cols[0][1:]
    else:
        if not isinstance(final, np.ndarray):
            raise ValueError(f"final_obs must be a numpy array, got {type(final).__name__}")
        if 0 in final.shape:
            raise ValueError(f"final_obs has a zero-sized shape {final.shape}")
        final_spec = (_check_dtype("final_obs", final.dtype), final.shape)
    if traj.env_id is not None and not isinstance(traj.env_id, str):
        raise ValueError(f"env_id must be a str or None, got {type(traj.env_id).__name__}")
    if not isinstance(traj.actor_id, uuid.UUID):
        raise ValueError(f"actor_id must be a uuid.UUID, got {type(traj.actor_id).__name__}")
    episode = traj.episode
    if not isinstance(episode, int | np.integer) or not _INT64_MIN <= episode <= _INT64_MAX:
        raise ValueError(f"episode must be an int64, got {episode!r}")
    if not isinstance(traj.start_time, float | int) or not isinstance(traj.end_time, float | int):
        raise ValueError(f"start_time and end_time must be numbers, got {traj.start_time!r}, {traj.end_time!r}")
    return tuple(cols), final_spec



def _arrow_array(pa: Any, flat: Array, shape: tuple[int, ...]) -> Any:
    """``flat`` is ``[rows, *shape]``; a per-step shape becomes a fixed_size_list of the flattened elements."""
    if not shape:
        return pa.array(flat)
    size = int(np.prod(shape))
    return pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), size)


class Encoder:
    """Builds Arrow record batches from trajectories (one signature per encoder)."""

    def __init__(self, sig: Signature, run_id: str, *, run_end_encoded: bool = False) -> None:
        self.pa = require_pyarrow()
        self.sig = sig
        self.run_id = run_id
        self.run_end_encoded = run_end_encoded
        pa = self.pa
        cols, (final_dtype, final_shape) = sig

        def per_traj(t: Any) -> Any:
            # One run per trajectory: the value is stored once, not once per step.
            return pa.run_end_encoded(pa.int32(), t) if run_end_encoded else t

        fields = [
            pa.field("traj", per_traj(pa.int64()), nullable=False),
            pa.field("step", pa.int32(), nullable=False),
            pa.field("steps", per_traj(pa.int32()), nullable=False),
            pa.field("actor_id", per_traj(pa.binary(16)), nullable=False),
            pa.field("episode", per_traj(pa.int64()), nullable=False),
            pa.field("env_id", per_traj(pa.string())),
            pa.field("truncated", per_traj(pa.bool_()), nullable=False),
            pa.field("start_time", per_traj(pa.float64()), nullable=False),
            pa.field("end_time", per_traj(pa.float64()), nullable=False),
        ]
        for name, dtype, shape in cols:
            fields.append(pa.field(name, _arrow_type(pa, np.dtype(dtype), shape), nullable=False))
        fields.append(pa.field("final_obs", pa.list_(_arrow_type(pa, np.dtype(final_dtype), final_shape)),
                               nullable=False))
        meta = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "run_id": run_id,
            "columns": {name: {"dtype": dtype.str, "shape": list(shape)} for name, dtype, shape in cols},
            "final_obs": {"dtype": final_dtype.str, "shape": list(final_shape)},
        }
        self.meta_json = json.dumps(meta, separators=(",", ":"))
        self.schema = pa.schema(fields, metadata={META_KEY: self.meta_json.encode()})

    def encode(self, trajs: Sequence[Trajectory], first_seq: Sequence[int] | Array) -> Any:
        """One RecordBatch holding ``trajs`` (numbered ``first_seq[i]``), one row per step."""
        pa = self.pa
        n = len(trajs)
        lengths = np.fromiter((len(t) for t in trajs), dtype=np.int64, count=n)
        rows_per = np.maximum(lengths, 1)  # an empty trajectory keeps one placeholder row
        has_empty = bool((lengths == 0).any())
        rows = int(rows_per.sum())
        starts = np.zeros(n, dtype=np.int64)
        np.cumsum(rows_per[:-1], out=starts[1:])
        # Trajectory-level values repeated once per row: np.repeat is much faster than fancy indexing.
        step = np.arange(rows, dtype=np.int32) - np.repeat(starts.astype(np.int32), rows_per)
        if has_empty:
            step[starts[lengths == 0]] = -1
        ids = np.frombuffer(b"".join([t.actor_id.bytes for t in trajs]), dtype=np.complex128)  # 16 bytes each
        seq = np.asarray(first_seq, dtype=np.int64)
        episode = np.fromiter((t.episode for t in trajs), dtype=np.int64, count=n)
        truncated = np.fromiter((t.truncated for t in trajs), dtype=bool, count=n)
        start_time = np.fromiter((t.start_time for t in trajs), dtype=np.float64, count=n)
        end_time = np.fromiter((t.end_time for t in trajs), dtype=np.float64, count=n)
        env_ids = [t.env_id for t in trajs]
        if self.run_end_encoded:
            run_ends = pa.array((starts + rows_per).astype(np.int32))

            def ree(values: Any) -> Any:
                return pa.RunEndEncodedArray.from_arrays(run_ends, values)

            traj_cols = [
                ree(pa.array(seq)), pa.array(step), ree(pa.array(lengths.astype(np.int32))),
                ree(pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(ids)])),
                ree(pa.array(episode)), ree(pa.array(env_ids, type=pa.string())), ree(pa.array(truncated)),
                ree(pa.array(start_time)), ree(pa.array(end_time)),
            ]
        else:
            # Repeated once per row: np.repeat is much faster than fancy indexing.
            traj_cols = [
                pa.array(np.repeat(seq, rows_per)), pa.array(step),
                pa.array(np.repeat(lengths.astype(np.int32), rows_per)),
                pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), rows,
                                                     [None, pa.py_buffer(np.repeat(ids, rows_per))]),
                pa.array(np.repeat(episode, rows_per)), _repeat_strings(pa, env_ids, rows_per, rows),
                pa.array(np.repeat(truncated, rows_per)), pa.array(np.repeat(start_time, rows_per)),
                pa.array(np.repeat(end_time, rows_per)),
            ]
        arrays = traj_cols
        cols, (final_dtype, final_shape) = self.sig
        for name, dtype, shape in cols:
            if name.startswith(EXTRA_PREFIX):
                key = name[len(EXTRA_PREFIX):]
                parts = [t.extras[key] for t in trajs]
            else:
                parts = list(map(operator.attrgetter(name), trajs))
            if has_empty:
                parts = [p if len(p) else np.zeros((1, *shape), dtype=dtype) for p in parts]
            arrays.append(_arrow_array(pa, parts[0] if n == 1 else np.concatenate(parts), shape))
        arrays.append(self._final_obs(trajs, starts + rows_per - 1, rows, np.dtype(final_dtype), final_shape))
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _final_obs(self, trajs: Sequence[Trajectory], last_rows: Array, rows: int, dtype: np.dtype[Any],
                   shape: tuple[int, ...]) -> Any:
        pa = self.pa
        have = [i for i, t in enumerate(trajs) if t.final_obs is not None]
        counts = np.zeros(rows + 1, dtype=np.int32)
        counts[last_rows[have] + 1] = 1
        offsets = np.cumsum(counts, dtype=np.int32)
        values = (np.stack([trajs[i].final_obs for i in have])  # type: ignore[misc]
                  if have else np.zeros((0, *shape), dtype=dtype))
        return pa.ListArray.from_arrays(pa.array(offsets), _arrow_array(pa, values, shape))

    def to_csv_table(self, batch: Any) -> Any:
        """The same rows with every list column split into one column per element (CSV has no lists)."""
        pa = self.pa
        names: list[str] = []
        arrays: list[Any] = []
        for field, col in zip(batch.schema, batch.columns):
            name = field.name
            if name == "actor_id":
                raw = np.frombuffer(col.buffers()[1], dtype=np.uint8)[: len(col) * 16].reshape(-1, 16)
                uniq, inv = np.unique(raw, axis=0, return_inverse=True)
                strs = pa.array([str(uuid.UUID(bytes=u.tobytes())) for u in uniq], type=pa.string())
                arrays.append(strs.take(pa.array(inv.reshape(-1))))
                names.append(name)
            elif name == "final_obs":
                dtype, shape = np.dtype(self.sig[1][0]), self.sig[1][1]
                size = int(np.prod(shape))
                present = np.asarray(col.value_lengths()) > 0
                flat = np.zeros((len(col), size), dtype=dtype)
                flat[present] = _to_numpy(col.flatten(), dtype, shape).reshape(-1, size)
                for k in range(size):
                    arrays.append(pa.array(flat[:, k], mask=~present))
                    names.append(f"final_obs.{k}")
            elif pa.types.is_fixed_size_list(field.type):
                size = field.type.list_size
                values = np.asarray(col.flatten().to_numpy(zero_copy_only=False)).reshape(-1, size)
                for k in range(size):
                    arrays.append(pa.array(values[:, k]))
                    names.append(f"{name}.{k}")
            else:
                arrays.append(col)
                names.append(name)
        return pa.Table.from_arrays(arrays, names=names)


def _repeat_strings(pa: Any, values: list[str | None], repeats: Array, rows: int) -> Any:
    """A string array holding ``values[i]`` ``repeats[i]`` times, built from buffers (``take`` is slow)."""
    if all(v is None for v in values):
        return pa.nulls(rows, pa.string())
    encoded = [b"" if v is None else v.encode() for v in values]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.repeat(lengths, repeats), out=offsets[1:])
    if offsets[-1] >= 2**31:
        raise ValueError("env_id strings exceed 2 GiB in one record batch")
    data = b"".join([e * int(r) for e, r in zip(encoded, repeats)])
    validity = None
    if any(v is None for v in values):
        valid = np.repeat(np.fromiter((v is not None for v in values), dtype=bool, count=len(values)), repeats)
        validity = pa.array(valid).buffers()[1]
    return pa.StringArray.from_buffers(rows, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data), validity)


def _arrow_type(pa: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Any:
    base = pa.from_numpy_dtype(dtype)
    return pa.list_(base, int(np.prod(shape))) if shape else base


def _to_numpy(arr: Any, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Array:
    """An Arrow (chunked) array of ``rows`` elements of ``shape`` -> ``[rows, *shape]`` numpy of ``dtype``."""
    pa = require_pyarrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    rows = len(arr)
    if shape:
        arr = arr.flatten()
    out = np.asarray(arr.to_numpy(zero_copy_only=False))
    if out.dtype != dtype:
        out = out.astype(dtype)
    result: Array = out.reshape(rows, *shape)
    return result


# --------------------------------------------------------------------------------------------
# Reading


def read_trajectories(path: str | os.PathLike[str], *, allow_truncated: bool = False) -> list[Trajectory]:
    """Read trajectories written by an :class:`~relayrl.sinks.ArrowSink`, ``ParquetSink`` or ``CsvSink``.

    Args:
        path: One file, or a directory: every ``.arrow``, ``.parquet`` and ``.csv`` file in it
            (not in subdirectories) is read; other files are ignored.
        allow_truncated: A writer that crashed can leave an Arrow file whose last record batch
            is incomplete. By default that raises :class:`~relayrl.SinkError`; with
            ``allow_truncated=True`` the complete batches before it are returned (every batch
            holds whole trajectories, so no trajectory is cut). Parquet and CSV files cannot be
            read partially and always raise.

    Returns:
        The trajectories, in the order they were handed to the sink (runs ordered by run id,
        which starts with the UTC time the sink was created), each equal (``==``) to the one
        written: the same arrays (dtype, shape, NaN included), ``mask`` or None, ``extras``,
        ids, episode, env id, flags, final observation and timestamps. The arrays are writable
        and owned by the caller (slices of one array per column and file, not of file memory).

    Raises:
        SinkError: (an :class:`OSError`) If the path does not exist, or a file is not a relayrl
            trajectory file, is corrupt or truncated; the message names the file.
        BackendUnavailableError: If pyarrow is not installed.

    .. versionadded:: 0.1
    """
    require_pyarrow()
    root = os.fspath(path)
    if os.path.isdir(root):
        files = sorted(os.path.join(root, f) for f in os.listdir(root)
                       if os.path.splitext(f)[1] in FORMATS.values() and os.path.isfile(os.path.join(root, f)))
    elif os.path.exists(root):
        files = [root]
    else:
        raise SinkError(f"no trajectory file or directory at {root}")
    keyed: list[tuple[str, int, Trajectory]] = []
    for file in files:
        keyed.extend(_read_file(file, allow_truncated))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [t for _, _, t in keyed]


def _read_file(file: str, allow_truncated: bool) -> list[tuple[str, int, Trajectory]]:
    try:
        with open(file, "rb") as f:
            head = f.read(len(CSV_MAGIC))
    except OSError as exc:
        raise SinkError(f"cannot read trajectory file {file}: {exc}") from exc
    try:
        if head.startswith(PARQUET_MAGIC):
            table, meta = _read_parquet(file)
        elif head.startswith(CSV_MAGIC):
            table, meta = _read_csv(file)
        elif head.startswith(IPC_MAGIC):
            table, meta = _read_ipc(file, allow_truncated)
        else:
            raise SinkError(f"{file} is not a relayrl trajectory file (Arrow IPC stream, Parquet or CSV)")
        return _decode(table, meta, file)
    except SinkError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ValueError, KeyError ... for corrupt input
        raise SinkError(f"cannot read trajectory file {file}: {type(exc).__name__}: {exc}") from exc


def _parse_meta(raw: bytes | str | None, file: str) -> dict[str, Any]:
    if raw is None:
        raise SinkError(f"{file} has no relayrl.trajectories metadata: it was not written by a relayrl sink")
    meta = json.loads(raw)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise SinkError(f"{file} is not a relayrl trajectory file")
    if meta.get("version") != FORMAT_VERSION:
        raise SinkError(f"{file} has trajectory format version {meta.get('version')!r}; "
                        f"this relayrl reads version {FORMAT_VERSION}")
    return meta


def _read_ipc(file: str, allow_truncated: bool) -> tuple[Any, dict[str, Any]]:
    pa = require_pyarrow()
    batches = []
    # A memory map: no read into a buffer first (decoding copies what it keeps, so the map is not kept alive).
    with pa.memory_map(file, "r") as source:
        reader = pa.ipc.open_stream(source)
        meta = _parse_meta((reader.schema.metadata or {}).get(META_KEY), file)
        while True:
            try:
                batches.append(reader.read_next_batch())
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError, EOFError) as exc:
                if not allow_truncated:
                    raise SinkError(
                        f"{file} is truncated or corrupt after {len(batches)} complete record batches ({exc}); "
                        "read_trajectories(..., allow_truncated=True) returns what is before it"
                    ) from exc
                break
    return pa.Table.from_batches(batches, schema=reader.schema), meta


def _read_parquet(file: str) -> tuple[Any, dict[str, Any]]:
    require_pyarrow()
    import pyarrow.parquet as pq

    table = pq.read_table(file)
    meta = _parse_meta((table.schema.metadata or {}).get(META_KEY), file)
    return table, meta


def _read_csv(file: str) -> tuple[Any, dict[str, Any]]:
    pa = require_pyarrow()
    import pyarrow.csv as pcsv

    with open(file, "rb") as f:
        first = f.readline()
    meta = _parse_meta(first[len(CSV_MAGIC):].decode("utf-8"), file)
    types: dict[str, Any] = {
        "traj": pa.int64(), "step": pa.int32(), "steps": pa.int32(), "actor_id": pa.string(), "episode": pa.int64(),
        "env_id": pa.string(), "truncated": pa.bool_(), "start_time": pa.float64(), "end_time": pa.float64(),
    }
    specs = dict(meta["columns"])
    specs["final_obs"] = meta["final_obs"]
    for name, spec in specs.items():
        dtype = np.dtype(spec["dtype"])
        # pyarrow's CSV reader has no float16; float32 holds every float16 exactly.
        t = pa.float32() if dtype == np.float16 else pa.from_numpy_dtype(dtype)
        size = int(np.prod(spec["shape"]))
        if spec["shape"] or name == "final_obs":  # final_obs is always split: final_obs.0 ...
            types.update({f"{name}.{k}": t for k in range(size)})
        else:
            types[name] = t
    table = pcsv.read_csv(
        file,
        read_options=pcsv.ReadOptions(skip_rows=1, block_size=1 << 24),
        # Only an empty unquoted field is null ("nan" is a float, a quoted "" an empty env_id).
        convert_options=pcsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=True,
                                            quoted_strings_can_be_null=False),
    )
    missing = set(types) - set(table.column_names)
    if missing:
        raise SinkError(f"{file} lacks the columns {sorted(missing)}")
    return table, meta


def _runs(pa: Any, col: Any) -> tuple[Any, Array] | None:
    """For a run-end encoded column: (the value of each run, the rows of each run); else None."""
    if not pa.types.is_run_end_encoded(col.type):
        return None
    values, lengths = [], []
    for chunk in col.chunks:
        if chunk.offset != 0 or len(chunk) == 0:
            return None  # a slice: not worth special-casing
        run_ends = np.asarray(chunk.run_ends.to_numpy(), dtype=np.int64)
        if run_ends.size == 0 or run_ends[-1] != len(chunk):
            return None
        values.append(chunk.values)
        lengths.append(np.diff(run_ends, prepend=0))
    if not values:
        return None
    return pa.concat_arrays(values), np.concatenate(lengths)


def _decode(table: Any, meta: dict[str, Any], file: str) -> list[tuple[str, int, Trajectory]]:
    pa = require_pyarrow()
    import pyarrow.compute as pc
    run_id = str(meta.get("run_id", ""))
    n_rows = table.num_rows
    if n_rows == 0:
        return []
    step = table.column("step").to_numpy()
    csv = pa.types.is_string(table.schema.field("actor_id").type)
    runs = _runs(pa, table.column("traj"))
    if runs is not None:  # Arrow files: trajectory-level columns are run-end encoded, one run per trajectory
        traj_arrow, run_lengths = runs
        traj = np.asarray(traj_arrow.to_numpy())
        first = np.concatenate([[True], traj[1:] != traj[:-1]])
        if not first.all():  # a trajectory split across record batches by another writer: merge its runs
            run_lengths = np.bincount(np.cumsum(first) - 1, weights=run_lengths).astype(np.int64)
            traj = traj[first]
        starts = np.concatenate([[0], np.cumsum(run_lengths)[:-1]]).astype(np.int64)
        ends = starts + run_lengths
    else:
        traj_rows = table.column("traj").to_numpy()
        bounds = np.flatnonzero(np.diff(traj_rows)) + 1
        starts = np.concatenate([[0], bounds]).astype(np.int64)
        ends = np.concatenate([bounds, [n_rows]]).astype(np.int64)
        traj = traj_rows[starts]

    def per_traj_arrow(name: str) -> Any:
        col = table.column(name)
        runs = _runs(pa, col)
        if runs is not None and np.array_equal(runs[1], ends - starts):
            return runs[0]
        if pa.types.is_run_end_encoded(col.type):
            col = pc.run_end_decode(col)
        return col.take(pa.array(starts))

    def per_traj(name: str) -> Array:
        picked: Array = np.asarray(per_traj_arrow(name).to_numpy(zero_copy_only=False))
        return picked

    steps = per_traj("steps")
    expected = np.maximum(steps, 1)
    bad = np.flatnonzero(ends - starts != expected)
    if bad.size:
        i = int(bad[0])
        raise SinkError(f"{file}: trajectory {int(traj[i])} has {int(ends[i] - starts[i])} rows, "
                        f"expected {int(expected[i])} (the file is truncated or corrupt)")

    if csv:
        actor_ids = [uuid.UUID(s) for s in per_traj_arrow("actor_id").to_pylist()]
    else:
        col = per_traj_arrow("actor_id")
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        raw = np.frombuffer(col.buffers()[1], dtype=np.uint8)[col.offset * 16: (col.offset + len(col)) * 16]
        actor_ids = [uuid.UUID(bytes=raw[i * 16:(i + 1) * 16].tobytes()) for i in range(len(col))]
    episodes = per_traj("episode")
    env_ids = per_traj_arrow("env_id").to_pylist()
    truncated = per_traj("truncated")
    start_time = per_traj("start_time")
    end_time = per_traj("end_time")

    # Per-step columns, without the placeholder rows of empty trajectories.
    real = step >= 0
    all_real = bool(real.all())
    columns: dict[str, Array] = {}
    for name, spec in meta["columns"].items():
        dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
        if csv and shape:
            size = int(np.prod(shape))
            flat = np.stack([np.asarray(table.column(f"{name}.{k}").to_numpy(zero_copy_only=False))
                             for k in range(size)], axis=1)
            values = flat.astype(dtype, copy=False).reshape(n_rows, *shape)
        else:
            values = _to_numpy(table.column(name), dtype, shape)
        if not all_real:
            values = values[real]  # a copy
        elif not values.flags.writeable:  # a read-only view of Arrow memory: give the caller its own arrays
            values = values.copy()
        columns[name] = values
    real_starts = np.cumsum(np.concatenate([[0], steps[:-1]]))
    lengths = steps

    fdtype, fshape = np.dtype(meta["final_obs"]["dtype"]), tuple(meta["final_obs"]["shape"])
    last = ends - 1
    if csv:
        size = int(np.prod(fshape))
        cols = [table.column(f"final_obs.{k}").take(pa.array(last)) for k in range(size)]
        present = ~np.asarray(cols[0].is_null().to_numpy(zero_copy_only=False)) if cols else np.zeros(0, bool)
        fin = np.stack([np.asarray(c.fill_null(False if pa.types.is_boolean(c.type) else 0)
                                   .to_numpy(zero_copy_only=False)) for c in cols], axis=1)
        fin = fin.astype(fdtype, copy=False).reshape(len(last), *fshape)
        final_obs = [fin[i] if present[i] else None for i in range(len(last))]
    else:
        fcol = table.column("final_obs").take(pa.array(last)).combine_chunks()
        present = np.asarray(fcol.value_lengths().to_numpy(zero_copy_only=False)) > 0
        fin = _to_numpy(fcol.flatten(), fdtype, fshape).copy()
        where = np.cumsum(present) - 1
        final_obs = [fin[where[i]] if present[i] else None for i in range(len(last))]

    out: list[tuple[str, int, Trajectory]] = []
    for i in range(len(starts)):
        a, b = int(real_starts[i]), int(real_starts[i] + lengths[i])
        step_cols = {name: values[a:b] for name, values in columns.items()}
        extras = {name[len(EXTRA_PREFIX):]: v for name, v in step_cols.items() if name.startswith(EXTRA_PREFIX)}
        out.append((run_id, int(traj[i]), Trajectory(
            obs=step_cols["obs"], act=step_cols["act"], reward=step_cols["reward"], done=step_cols["done"],
            logp=step_cols["logp"], value=step_cols["value"], model_version=step_cols["model_version"],
            mask=step_cols.get("mask"), actor_id=actor_ids[i], episode=int(episodes[i]), env_id=env_ids[i],
            truncated=bool(truncated[i]), final_obs=final_obs[i], start_time=float(start_time[i]),
            end_time=float(end_time[i]), extras=extras,
        )))
    return out
