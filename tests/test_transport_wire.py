"""The wire format: every message round-trips through encode/decode; malformed frames raise
ProtocolError naming the problem and never execute anything."""

from __future__ import annotations

import uuid

import msgpack  # type: ignore[import-untyped]
import numpy as np
import pytest

import relayrl
from relayrl._transport_api import Ack, InferenceReply, InferenceRequest, ModelUpdate, Notice, TrajectoryBatch
from relayrl._wire import WIRE_VERSION, decode, encode


def traj(n: int, *, mask: bool, extras: bool, truncated: bool) -> relayrl.Trajectory:
    rng = np.random.default_rng(n)
    return relayrl.Trajectory(
        obs=rng.normal(size=(n, 2, 3)).astype(np.float32), act=rng.integers(0, 4, size=(n, 2)),
        reward=rng.normal(size=n).astype(np.float32), done=np.zeros(n, bool),
        logp=rng.normal(size=n).astype(np.float32), value=np.full(n, np.nan, np.float32),
        model_version=np.arange(n, dtype=np.int64), mask=rng.random((n, 8)) > 0.5 if mask else None,
        actor_id=uuid.uuid4(), episode=3, env_id="0/agent_1" if extras else None, truncated=truncated,
        final_obs=rng.normal(size=(1, 2, 3)).astype(np.float32) if truncated else None,
        start_time=1.5, end_time=2.25, extras={"state": rng.normal(size=(n, 5)).astype(np.float64)} if extras else {})


def test_trajectory_batches_round_trip_exactly() -> None:
    trajs = (traj(4, mask=True, extras=True, truncated=True), traj(1, mask=False, extras=False, truncated=False),
             traj(0, mask=False, extras=False, truncated=False))
    batch = TrajectoryBatch(client_id=uuid.uuid4(), seq=7, trajectories=trajs)
    msg, headers = decode(encode(batch, headers={"traceparent": "00-abc-def-01"}))
    assert isinstance(msg, TrajectoryBatch) and headers == {"traceparent": "00-abc-def-01"}
    assert (msg.client_id, msg.seq) == (batch.client_id, 7)
    assert msg.trajectories == trajs  # Trajectory.__eq__ compares every column (NaN-aware), ids, flags, times


def test_other_messages_round_trip() -> None:
    cid, a = uuid.uuid4(), uuid.uuid4()
    model = relayrl.mlp_policy(3, relayrl.spaces.Discrete(2), hidden=(4,)).with_version(2)
    assert decode(encode(Ack(client_id=cid, seq=3)))[0] == Ack(client_id=cid, seq=3)
    update = decode(encode(ModelUpdate.from_model(model, in_process=True)))[0]
    assert isinstance(update, ModelUpdate) and update.source is None and update.model() == model
    note = Notice(client_id=cid, kind="client_ids", actor_ids=(a,), detail="x")
    assert decode(encode(note))[0] == note
    req = InferenceRequest(client_id=cid, request_id=9, actor_ids=(a,), obs=np.ones((1, 3), np.float32),
                           mask=np.array([[True, False]]), deterministic=True)
    got = decode(encode(req))[0]
    assert isinstance(got, InferenceRequest) and got.actor_ids == (a,) and got.deterministic
    assert got.mask is not None and req.mask is not None
    assert np.array_equal(got.obs, req.obs) and got.obs.dtype == np.float32 and np.array_equal(got.mask, req.mask)
    reply = InferenceReply(request_id=9, act=np.array([1]), logp=np.array([-0.5], np.float32))
    back = decode(encode(reply))[0]
    assert isinstance(back, InferenceReply) and back.value is None and back.act is not None
    assert np.array_equal(back.act, [1])
    err = decode(encode(InferenceReply(request_id=1, error="boom")))[0]
    assert isinstance(err, InferenceReply) and err.error == "boom" and not err.ok


def frame(**over: object) -> bytes:
    base: dict[str, object] = {"v": WIRE_VERSION, "type": "ack", "headers": {},
                               "payload": {"client_id": uuid.uuid4().bytes, "seq": 1}}
    base.update(over)
    data: bytes = msgpack.packb(base, use_bin_type=True)
    return data


@pytest.mark.parametrize(("data", "match"), [
    (b"\xc1garbage", "not a relayrl frame"),
    (msgpack.packb([1, 2]), "expected a map"),
    (frame(v=99), "wire version 99"),
    (frame(type="exec"), "unknown message type 'exec'"),
    (frame(payload={"seq": 1}), "missing field 'client_id'"),
    (frame(payload={"client_id": b"short", "seq": 1}), "16 bytes"),
    (frame(payload={"client_id": uuid.uuid4().bytes, "seq": "1"}), "ack.seq"),
    (frame(headers={"a": 1}), "headers"),
    (frame(type="notice", payload={"client_id": uuid.uuid4().bytes, "kind": "reboot", "actor_ids": [],
                                   "detail": ""}), "unknown kind 'reboot'"),
    (frame(type="infer", payload={"client_id": uuid.uuid4().bytes, "request_id": 1, "actor_ids": [],
                                  "obs": {"dtype": "object", "shape": [1], "data": b"x"}, "deterministic": False}),
     "dtype 'object' is not allowed"),
    (frame(type="infer", payload={"client_id": uuid.uuid4().bytes, "request_id": 1, "actor_ids": [],
                                  "obs": {"dtype": "float32", "shape": [2], "data": b"x"}, "deterministic": False}),
     "do not fill shape"),
    (frame(type="reply", payload={"request_id": 1}), "neither actions nor an error"),
])
def test_malformed_frames_raise_protocol_error(data: bytes, match: str) -> None:
    with pytest.raises(relayrl.ProtocolError, match=match):
        decode(data)


def test_truncated_frames_and_inconsistent_trajectories() -> None:
    good = encode(TrajectoryBatch(client_id=uuid.uuid4(), seq=0,
                                  trajectories=(traj(3, mask=False, extras=False, truncated=False),)))
    for cut in (1, len(good) // 2, len(good) - 1):
        with pytest.raises(relayrl.ProtocolError):
            decode(good[:cut])
    raw = msgpack.unpackb(good, raw=False)
    raw["payload"]["trajectories"][0]["reward"] = {"dtype": "float32", "shape": [2], "data": b"\0" * 8}
    with pytest.raises(relayrl.ProtocolError, match=r"trajectories\[0\]\.obs: 3 rows, the trajectory has 2 steps"):
        decode(msgpack.packb(raw, use_bin_type=True))


def test_encode_refuses_non_messages_and_object_arrays() -> None:
    with pytest.raises(TypeError, match="not a transport message"):
        encode("hello")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dtype"):
        encode(InferenceReply(request_id=1, act=np.array([object()])))
