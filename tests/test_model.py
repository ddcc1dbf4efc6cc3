"""Model modules: directory and bundle round trips, integrity, validation, RelayRL compatibility."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import attrs
import numpy as np
import pytest

import relayrl
from relayrl import IntegrityError, ModelError, ModelModule, RelayRLError, mlp_policy, numpy_mlp
from relayrl.spaces import Box, Discrete, MultiDiscrete

EXAMPLE = Path(__file__).resolve().parents[2] / "shared" / "compat" / "relayrl-example-model"


@pytest.fixture
def model() -> ModelModule:
    return mlp_policy(4, Discrete(2), seed=3)


def _obs(n: int = 32, dim: int = 4) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)


def _same_outputs(a: ModelModule, b: ModelModule) -> None:
    oa, ob = a.policy().forward(_obs()), b.policy().forward(_obs())
    np.testing.assert_array_equal(oa.logits, ob.logits)
    np.testing.assert_array_equal(oa.value, ob.value)


def test_save_load_round_trip_is_bit_identical(model: ModelModule, tmp_path: Path) -> None:
    d = model.save(tmp_path / "m")
    assert sorted(os.listdir(d)) == ["policy.npz", "relayrl-model.json"]
    for path in (d, d / "relayrl-model.json"):
        loaded = ModelModule.load(path)
        assert loaded == model
        assert loaded.metadata == model.metadata
        _same_outputs(model, loaded)


def test_bytes_round_trip_is_bit_identical(model: ModelModule, tmp_path: Path) -> None:
    data = model.to_bytes()
    loaded = ModelModule.from_bytes(data)
    assert loaded == model and loaded.to_bytes() == data
    _same_outputs(model, loaded)
    (tmp_path / "model.bundle").write_bytes(data)
    assert ModelModule.load(tmp_path / "model.bundle") == model


def test_every_flipped_byte_of_a_bundle_is_rejected(model: ModelModule) -> None:
    data = model.to_bytes()
    for pos in range(0, len(data), max(1, len(data) // 97)):
        bad = bytearray(data)
        bad[pos] ^= 0x01
        with pytest.raises(RelayRLError):
            ModelModule.from_bytes(bytes(bad))


@pytest.mark.parametrize("cut", [0, 5, 20, -1, -33])
def test_truncated_bundle_is_rejected(model: ModelModule, cut: int) -> None:
    data = model.to_bytes()
    with pytest.raises(IntegrityError):
        ModelModule.from_bytes(data[:cut])


def test_tampered_model_file_fails_checksum(model: ModelModule, tmp_path: Path) -> None:
    d = model.save(tmp_path / "m")
    raw = bytearray((d / "policy.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (d / "policy.npz").write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match="checksum"):
        ModelModule.load(d)


def test_declared_shape_mismatch_is_rejected(model: ModelModule) -> None:
    meta = attrs.evolve(model.metadata, input=relayrl.TensorSpec(shape=(7,)))
    with pytest.raises(ModelError, match="7"):
        ModelModule(meta, model.data).validate()
    # output width that does not match the weights
    wrong_space = attrs.evolve(model.metadata, action_space=Discrete(3), output=relayrl.TensorSpec(shape=(3,)))
    with pytest.raises(ModelError, match="gives 2 outputs but the metadata declares 3"):
        ModelModule(wrong_space, model.data).validate()


def test_nan_producing_model_is_rejected() -> None:
    w = np.ones((2, 4), np.float32)
    b = np.array([np.nan, 0.0], np.float32)
    with pytest.raises(ModelError, match="finite"):
        numpy_mlp(4, Discrete(2), [(w, b)])
    inf_w = np.full((2, 4), np.inf, np.float32)
    with pytest.raises(ModelError, match="finite"):
        numpy_mlp(4, Discrete(2), [(inf_w, np.zeros(2, np.float32))])


def test_garbage_model_file_is_rejected(tmp_path: Path, model: ModelModule) -> None:
    d = model.save(tmp_path / "m")
    (d / "policy.npz").write_bytes(b"not an npz at all")
    meta = json.loads((d / "relayrl-model.json").read_text())
    import hashlib

    meta["checksum"] = hashlib.sha256(b"not an npz at all").hexdigest()
    (d / "relayrl-model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="npz"):
        ModelModule.load(d)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: m.pop("backend"), "backend"),
        (lambda m: m.update(format_version=99), "newer"),
        (lambda m: m.update(model_file="../escape.npz"), "plain file name"),
        (lambda m: m.update(policy_head="gaussian"), "Box"),
        (lambda m: m.update(action_space={"type": "weird"}), "action_space"),
        (lambda m: m.update(input="nope"), "malformed"),
    ],
)
def test_bad_metadata_is_rejected_with_a_named_problem(model: ModelModule, tmp_path: Path, mutate: object,
                                                        match: str) -> None:
    d = model.save(tmp_path / "m")
    meta = json.loads((d / "relayrl-model.json").read_text())
    mutate(meta)  # type: ignore[operator]
    (d / "relayrl-model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=match):
        ModelModule.load(d)


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no model module"):
        ModelModule.load(tmp_path / "absent")
    with pytest.raises(ModelError, match="holds neither"):
        ModelModule.load(tmp_path)


def test_versions_and_extra(model: ModelModule) -> None:
    assert model.version is None
    v3 = model.with_version(3)
    assert v3.version == 3 and v3.data == model.data and v3 != model
    assert ModelModule.from_bytes(v3.to_bytes()).version == 3
    tagged = model.with_extra(run="abc")
    assert ModelModule.from_bytes(tagged.to_bytes()).metadata.extra["run"] == "abc"


@pytest.mark.parametrize(
    "space", [Discrete(3), MultiDiscrete((2, 3)), Box(-1.0, 1.0, (2,))], ids=["discrete", "multi", "box"]
)
def test_mlp_policy_shapes_and_seed(space: object) -> None:
    a = mlp_policy(5, space, hidden=(8,), seed=1)
    b = mlp_policy(5, space, hidden=(8,), seed=1)
    c = mlp_policy(5, space, hidden=(8,), seed=2)
    assert a == b and a != c
    out = a.policy().forward(_obs(6, 5))
    assert out.value is not None and out.value.shape == (6,)


def test_mlp_policy_obs_normalisation_is_applied() -> None:
    w = np.eye(2, dtype=np.float32)
    m = numpy_mlp(2, Discrete(2), [(w, np.zeros(2, np.float32))], obs_mean=[1.0, 2.0], obs_std=[2.0, 4.0], obs_clip=1.0)
    out = m.policy().forward(np.array([[3.0, 2.0], [100.0, -100.0]], np.float32))
    np.testing.assert_allclose(out.logits, [[1.0, 0.0], [1.0, -1.0]])


def test_relayrl_example_model_metadata_loads() -> None:
    m = ModelModule.load(EXAMPLE, validate=False)
    assert m.backend == "torch"
    assert m.obs_shape == (4,)
    assert m.action_space == Discrete(2)
    assert m.metadata.policy_head == "categorical"
    assert m.metadata.extra["relayrl_metadata"]["model_file"] == "client_model.pt"
    assert ModelModule.load(EXAMPLE / "metadata.json", validate=False) == m


def test_missing_backend_names_the_distribution_to_install() -> None:
    # With every third-party plugin hidden, validating a torch model says what to install.
    code = (
        "import relayrl, sys\n"
        f"m = relayrl.ModelModule.load({str(EXAMPLE)!r}, validate=False)\n"
        "try:\n    m.validate()\n"
        "except relayrl.UnknownBackendError as e:\n    print(type(e).__name__, isinstance(e, LookupError), e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "RELAYRL_PLUGINS": ""})
    assert out.stdout.startswith("UnknownBackendError True")
    assert "relayrl-torch" in out.stdout


@pytest.mark.parametrize(("setting", "start", "expected"), [(None, "2", "1"), ("2", "1", "2"), ("0", "2", "untouched")])
def test_numpy_backend_limits_blas_threads(setting: str | None, start: str, expected: str) -> None:
    code = (
        "import threadpoolctl, relayrl\n"
        "before = [i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas']\n"
        "relayrl.backends.get('numpy')\n"
        "after = [i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas']\n"
        "print('untouched' if after == before else ','.join(map(str, sorted(set(after)))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env["OPENBLAS_NUM_THREADS"] = start  # a known starting point (this machine has 2 cores)
    if setting is not None:
        env["RELAYRL_BLAS_THREADS"] = setting
    else:
        env.pop("RELAYRL_BLAS_THREADS", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == expected


def test_bad_blas_thread_setting_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from relayrl._numpy_backend import limit_blas_threads

    monkeypatch.setenv("RELAYRL_BLAS_THREADS", "many")
    with pytest.raises(relayrl.ConfigError, match="RELAYRL_BLAS_THREADS"):
        limit_blas_threads()


def test_npz_reader_matches_numpy_and_rejects_short_arrays() -> None:
    import io
    import zipfile

    from relayrl._numpy_backend import _read_npz

    buf = io.BytesIO()
    np.savez(buf, a=np.arange(6, dtype=np.float32).reshape(2, 3), f=np.asfortranarray(np.ones((2, 2))),
             s=np.asarray("tanh"), i=np.int64(7))
    arrays = _read_npz(buf.getvalue())
    assert arrays["a"].tolist() == [[0, 1, 2], [3, 4, 5]] and arrays["a"].dtype == np.float32
    assert arrays["f"].shape == (2, 2) and str(arrays["s"]) == "tanh" and int(arrays["i"]) == 7
    # an array whose data is shorter than its header says
    out = io.BytesIO()
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            raw = src.read(name)
            dst.writestr(name, raw[:-4] if name == "a.npy" else raw)
    with pytest.raises(ValueError, match="data bytes"):
        _read_npz(out.getvalue())
