"""The wire format every out-of-process transport uses: a versioned msgpack envelope.

One frame is ``msgpack({"v": WIRE_VERSION, "type": <message type>, "headers": {str: str},
"payload": {...}})``. ``headers`` carries cross-cutting metadata such as W3C trace context
(``traceparent``); the payload is the message's fields, with numpy arrays as
``{"dtype", "shape", "data"}`` (raw little-endian bytes, no pickles) and UUIDs as 16 bytes.
Transport plugins (ZeroMQ, NATS) send :func:`encode` output and hand received bytes to
:func:`decode`; codec stages (compression, encryption, chunking) wrap these bytes.

Decoding never executes anything from the frame: a malformed, truncated or foreign frame
raises :class:`~relayrl.ProtocolError` naming what is wrong.

.. versionadded:: 0.1
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Final

import numpy as np

from ._errors import ProtocolError
from ._trajectory import Trajectory
from ._transport_api import (
    NOTICE_KINDS,
    Ack,
    InferenceReply,
    InferenceRequest,
    ModelUpdate,
    Notice,
    TrajectoryBatch,
)

__all__ = ["MESSAGE_TYPES", "WIRE_VERSION", "Message", "decode", "encode"]

#: Version of the envelope; a frame of another version is refused.
WIRE_VERSION: Final = 1

Message = TrajectoryBatch | Ack | ModelUpdate | Notice | InferenceRequest | InferenceReply

#: Wire names of the message types.
MESSAGE_TYPES: Final[dict[type[Any], str]] = {
    TrajectoryBatch: "trajectories", Ack: "ack", ModelUpdate: "model", Notice: "notice",
    InferenceRequest: "infer", InferenceReply: "reply",
}
_BY_NAME: Final = {v: k for k, v in MESSAGE_TYPES.items()}
#: Array dtypes a frame may carry (no object arrays, ever).
_DTYPES: Final = frozenset({"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                            "float16", "float32", "float64"})
_TRAJ_ARRAYS: Final = ("obs", "act", "reward", "done", "logp", "value", "model_version")


def _msgpack() -> Any:
    try:
        import msgpack  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - msgpack is a dependency
        from ._errors import PluginUnavailableError

        raise PluginUnavailableError("the relayrl wire format needs msgpack: `pip install msgpack`") from exc
    return msgpack


# -- encoding ---------------------------------------------------------------------------------------------


def _arr(a: Any) -> dict[str, Any]:
    a = np.asarray(a)
    if a.dtype.name not in _DTYPES:
        raise TypeError(f"arrays of dtype {a.dtype} cannot go on the wire")
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.tobytes()}


def _opt_arr(a: Any) -> dict[str, Any] | None:
    return None if a is None else _arr(a)


def _traj(t: Trajectory) -> dict[str, Any]:
    out: dict[str, Any] = {k: _arr(getattr(t, k)) for k in _TRAJ_ARRAYS}
    out.update(mask=_opt_arr(t.mask), final_obs=_opt_arr(t.final_obs), actor_id=t.actor_id.bytes,
               episode=int(t.episode), env_id=t.env_id, truncated=bool(t.truncated),
               start_time=float(t.start_time), end_time=float(t.end_time),
               extras={str(k): _arr(v) for k, v in t.extras.items()})
    return out


def _payload(msg: Message) -> dict[str, Any]:
    if isinstance(msg, TrajectoryBatch):
        return {"client_id": msg.client_id.bytes, "seq": msg.seq, "trajectories": [_traj(t) for t in msg.trajectories]}
    if isinstance(msg, Ack):
        return {"client_id": msg.client_id.bytes, "seq": msg.seq}
    if isinstance(msg, ModelUpdate):
        return {"version": msg.version, "bundle": msg.bundle}
    if isinstance(msg, Notice):
        return {"client_id": msg.client_id.bytes, "kind": msg.kind, "actor_ids": [a.bytes for a in msg.actor_ids],
                "detail": msg.detail}
    if isinstance(msg, InferenceRequest):
        return {"client_id": msg.client_id.bytes, "request_id": msg.request_id,
                "actor_ids": [a.bytes for a in msg.actor_ids], "obs": _arr(msg.obs), "mask": _opt_arr(msg.mask),
                "deterministic": msg.deterministic}
    return {"request_id": msg.request_id, "act": _opt_arr(msg.act), "logp": _opt_arr(msg.logp),
            "value": _opt_arr(msg.value), "model_version": _opt_arr(msg.model_version), "error": msg.error}


def encode(msg: Message, *, headers: Mapping[str, str] | None = None) -> bytes:
    """One frame for ``msg`` (see the module documentation).

    Raises:
        TypeError: ``msg`` is not a transport message, or it holds arrays of an unsupported dtype.

    .. versionadded:: 0.1
    """
    name = MESSAGE_TYPES.get(type(msg))
    if name is None:
        raise TypeError(f"not a transport message: {type(msg).__name__}")
    frame = {"v": WIRE_VERSION, "type": name, "headers": {str(k): str(v) for k, v in (headers or {}).items()},
             "payload": _payload(msg)}
    data: bytes = _msgpack().packb(frame, use_bin_type=True)
    return data


# -- decoding ---------------------------------------------------------------------------------------------


class _Reader:
    """Typed access to a decoded payload; every failure is a ProtocolError naming the field."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise ProtocolError(f"{where}: expected a map, got {type(data).__name__}")
        self.data, self.where = data, where

    def get(self, key: str, kind: type[Any] | tuple[type[Any], ...], *, optional: bool = False) -> Any:
        if key not in self.data:
            if optional:
                return None
            raise ProtocolError(f"{self.where}: missing field {key!r}")
        value = self.data[key]
        if value is None and optional:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ProtocolError(f"{self.where}.{key}: expected {kind}, got {type(value).__name__}")
        return value

    def uuid(self, key: str) -> uuid.UUID:
        return _uuid(self.get(key, bytes), f"{self.where}.{key}")

    def array(self, key: str, *, optional: bool = False) -> Any:
        raw = self.get(key, dict, optional=optional)
        return None if raw is None else _array(raw, f"{self.where}.{key}")


def _uuid(raw: bytes, where: str) -> uuid.UUID:
    if len(raw) != 16:
        raise ProtocolError(f"{where}: a UUID is 16 bytes, got {len(raw)}")
    return uuid.UUID(bytes=raw)


def _array(raw: dict[str, Any], where: str) -> Any:
    r = _Reader(raw, where)
    dtype = r.get("dtype", str)
    if dtype not in _DTYPES:
        raise ProtocolError(f"{where}: dtype {dtype!r} is not allowed on the wire")
    shape = r.get("shape", list)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"{where}: bad shape {shape!r}")
    data = r.get("data", bytes)
    dt = np.dtype(dtype).newbyteorder("<")
    if len(data) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
        raise ProtocolError(f"{where}: {len(data)} bytes do not fill shape {shape} of {dtype}")
    return np.frombuffer(data, dtype=dt).astype(dt.newbyteorder("="), copy=True).reshape(shape)


def _read_traj(raw: Any, where: str) -> Trajectory:
    r = _Reader(raw, where)
    cols = {k: r.array(k) for k in _TRAJ_ARRAYS}
    n = len(cols["reward"])
    for k, v in cols.items():
        if v.ndim == 0 or len(v) != n:
            raise ProtocolError(f"{where}.{k}: {len(v) if v.ndim else 0} rows, the trajectory has {n} steps")
    extras = r.get("extras", dict)
    return Trajectory(
        **cols, mask=r.array("mask", optional=True), final_obs=r.array("final_obs", optional=True),
        actor_id=r.uuid("actor_id"), episode=r.get("episode", int), env_id=r.get("env_id", str, optional=True),
        truncated=r.get("truncated", bool), start_time=float(r.get("start_time", (int, float))),
        end_time=float(r.get("end_time", (int, float))),
        extras={str(k): _array(v, f"{where}.extras.{k}") for k, v in extras.items()},
    )


def _read(name: str, p: _Reader) -> Message:
    if name == "trajectories":
        trajs = p.get("trajectories", list)
        return TrajectoryBatch(client_id=p.uuid("client_id"), seq=p.get("seq", int),
                               trajectories=tuple(_read_traj(t, f"trajectories[{i}]") for i, t in enumerate(trajs)))
    if name == "ack":
        return Ack(client_id=p.uuid("client_id"), seq=p.get("seq", int))
    if name == "model":
        return ModelUpdate(version=p.get("version", int), bundle=p.get("bundle", bytes))
    if name == "notice":
        kind = p.get("kind", str)
        if kind not in NOTICE_KINDS:
            raise ProtocolError(f"notice: unknown kind {kind!r}")
        return Notice(client_id=p.uuid("client_id"), kind=kind,
                      actor_ids=tuple(_uuid(a, "notice.actor_ids") for a in p.get("actor_ids", list)),
                      detail=p.get("detail", str))
    if name == "infer":
        return InferenceRequest(client_id=p.uuid("client_id"), request_id=p.get("request_id", int),
                                actor_ids=tuple(_uuid(a, "infer.actor_ids") for a in p.get("actor_ids", list)),
                                obs=p.array("obs"), mask=p.array("mask", optional=True),
                                deterministic=p.get("deterministic", bool))
    error = p.get("error", str, optional=True)
    act = p.array("act", optional=True)
    if error is None and act is None:
        raise ProtocolError("reply: neither actions nor an error")
    return InferenceReply(request_id=p.get("request_id", int), act=act, logp=p.array("logp", optional=True),
                          value=p.array("value", optional=True),
                          model_version=p.array("model_version", optional=True), error=error)


def decode(data: bytes) -> tuple[Message, dict[str, str]]:
    """The message and headers of one frame.

    Raises:
        ProtocolError: the frame is not msgpack, not a relayrl envelope, of another wire
            version, of an unknown type, or has a missing or mistyped field (named).

    .. versionadded:: 0.1
    """
    msgpack = _msgpack()
    try:
        frame = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"not a relayrl frame: {type(exc).__name__}: {exc}") from exc
    env = _Reader(frame, "frame")
    version = env.get("v", int)
    if version != WIRE_VERSION:
        raise ProtocolError(f"wire version {version} is not supported (this relayrl speaks {WIRE_VERSION})")
    name = env.get("type", str)
    if name not in _BY_NAME:
        raise ProtocolError(f"unknown message type {name!r}")
    headers = env.get("headers", dict)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ProtocolError("frame.headers: keys and values must be strings")
    try:
        msg = _read(name, _Reader(env.get("payload", dict), name))
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{name}: {exc}") from exc
    return msg, dict(headers)
