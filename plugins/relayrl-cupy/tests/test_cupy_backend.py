"""The cupy backend as a relayrl plugin: discovery, errors without a GPU, model conversion and
checking, the CUDA source compiling, and (on a GPU) the conformance kit and device heads."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import relayrl_cupy
from relayrl_cupy import CUDA_SOURCE, CupyBackend, make_device_head, parse_npz, to_cupy

import relayrl
from relayrl import BackendUnavailableError, ModelError, ModelModule, make_head, numpy_mlp
from relayrl.spaces import Box, Discrete
from relayrl.testing import REFERENCE_CASES, BackendConformance, ReferenceCase

CUDA = relayrl_cupy.cuda_available()
without_gpu = pytest.mark.skipif(CUDA, reason="checks the errors raised where no CUDA GPU is usable")


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _module(data: bytes, *, obs: tuple[int, ...] = (4,), space: Any = None, value: bool = False,
            backend: str = "cupy") -> ModelModule:
    return ModelModule.create(backend=backend, model_file="policy.npz", data=data, obs_shape=obs,
                              action_space=space or Discrete(3), value_output=value, validate=False)


def _good_arrays() -> dict[str, Any]:
    return {"activation": np.asarray("tanh"), "pi.0.weight": np.ones((8, 4), np.float32),
            "pi.0.bias": np.zeros(8, np.float32), "pi.1.weight": np.ones((3, 8), np.float32),
            "pi.1.bias": np.zeros(3, np.float32)}


# -- plugin discovery ----------------------------------------------------------------------------


def test_registered_and_available_without_cupy_imported() -> None:
    code = ("import sys, relayrl; a = relayrl.backends.available(); "
            "assert 'cupy' in a, a; assert relayrl.backends.get('cupy').name == 'cupy'; "
            "assert 'cupy' not in sys.modules, 'importing the plugin imported cupy'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backend_class() -> None:
    backend = relayrl.backends.get("cupy")
    assert isinstance(backend, CupyBackend)
    assert backend.distribution == "relayrl-cupy"


@pytest.mark.skipif(not os.environ.get("RELAYRL_REQUIRE_GPU"), reason="set RELAYRL_REQUIRE_GPU=1 where a GPU must work")
def test_gpu_is_usable_where_required() -> None:
    # On a GPU machine the GPU tests would otherwise skip quietly if CuPy could not start; this
    # fails instead, with CuPy's reason (missing wheel, driver mismatch, NVRTC/cuBLAS missing).
    from relayrl_cupy._backend import _DeviceState

    _DeviceState.get("cuda")
    assert relayrl_cupy.cuda_available()


# -- without a GPU: clear errors -----------------------------------------------------------------


@without_gpu
def test_load_without_gpu_raises_backend_unavailable() -> None:
    module = to_cupy(relayrl.mlp_policy(4, Discrete(3)))
    with pytest.raises(BackendUnavailableError, match=r"relayrl-cupy\[cuda12\]|cupy.cuda.is_available|CUDA"):
        module.validate("cuda")
    with pytest.raises(BackendUnavailableError):
        CupyBackend().load(module, "cuda:0")
    with pytest.raises(BackendUnavailableError):
        make_device_head(module.metadata)
    assert CupyBackend().devices() == []
    assert not relayrl_cupy.cuda_available()


@without_gpu
def test_bundle_loads_on_cpu_but_rejects_when_validated_without_gpu() -> None:
    module = to_cupy(relayrl.mlp_policy(4, Discrete(3)))
    assert ModelModule.from_bytes(module.to_bytes(), validate=False) == module
    with pytest.raises(BackendUnavailableError):
        ModelModule.from_bytes(module.to_bytes(), device="cuda")


@pytest.mark.parametrize("device", ["cpu", "gpu", "cuda:x", "cuda:-1", "cuda0", ""])
def test_device_names_are_checked(device: str) -> None:
    module = to_cupy(relayrl.mlp_policy(4, Discrete(3)))
    with pytest.raises(BackendUnavailableError, match="'cuda' or 'cuda:N'"):
        CupyBackend().load(module, device)


def test_broken_model_is_a_model_error_even_without_gpu() -> None:
    module = _module(b"\x00not an npz\xff" * 8)
    with pytest.raises(ModelError, match=r"not an \.npz MLP"):
        CupyBackend().load(module, "cuda")
    with pytest.raises(ModelError):
        module.validate("cuda")


# -- to_cupy and parse_npz ------------------------------------------------------------------------


def test_to_cupy_relabels_and_round_trips(tmp_path: Path) -> None:
    src = relayrl.mlp_policy(4, Box(-1.0, 1.0, (2,)), seed=3).with_version(7)
    module = to_cupy(src)
    assert module.backend == "cupy"
    assert module.data == src.data and module.metadata.checksum == src.metadata.checksum
    assert attrs.evolve(module.metadata, backend="numpy") == src.metadata
    assert module.version == 7
    assert to_cupy(module) is module
    module.save(tmp_path / "m")
    assert ModelModule.load(tmp_path / "m", validate=False) == module
    weights = parse_npz(module)
    assert weights.in_dim == 4 and weights.out_dim == 2 and weights.log_std is not None


def test_to_cupy_rejects_other_backends_and_broken_files() -> None:
    with pytest.raises(ModelError, match="numpy-backend"):
        to_cupy(_module(_npz(**_good_arrays()), backend="onnx"))
    with pytest.raises(ModelError, match=r"not an \.npz"):
        to_cupy(_module(b"garbage", backend="numpy"))


def _without(key: str) -> dict[str, Any]:
    arrays = _good_arrays()
    del arrays[key]
    return arrays


BAD_MODELS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("no-activation", _without("activation"), {}, "no 'activation'"),
    ("bad-activation", {**_good_arrays(), "activation": np.asarray("gelu")}, {}, "activation 'gelu'"),
    ("no-bias", _without("pi.1.bias"), {}, "missing 'pi.1.bias'"),
    ("bias-shape", {**_good_arrays(), "pi.0.bias": np.zeros(7, np.float32)}, {}, "do not fit"),
    ("chain", {**_good_arrays(), "pi.1.weight": np.ones((3, 9), np.float32)}, {}, "previous layer gives 8"),
    ("no-layers", {"activation": np.asarray("tanh")}, {}, "no policy layers"),
    ("in-dim", _good_arrays(), {"obs": (5,)}, "takes 4 inputs"),
    ("out-dim", _good_arrays(), {"space": Discrete(4)}, "gives 3 outputs"),
    ("no-value-net", _good_arrays(), {"value": True}, "no 'vf' layers"),
    ("value-net-shape", {**_good_arrays(), "vf.0.weight": np.ones((2, 4), np.float32),
                         "vf.0.bias": np.zeros(2, np.float32)}, {"value": True}, "end in one unit"),
    ("no-log-std", _good_arrays(), {"space": Box(-1.0, 1.0, (3,))}, "needs a 'log_std'"),
    ("log-std-size", {**_good_arrays(), "log_std": np.zeros(2, np.float32)}, {"space": Box(-1.0, 1.0, (3,))},
     "'log_std' has 2 values"),
    ("mean-no-std", {**_good_arrays(), "obs_mean": np.zeros(4, np.float32)}, {}, "no 'obs_std'"),
    ("mean-size", {**_good_arrays(), "obs_mean": np.zeros(3, np.float32), "obs_std": np.ones(4, np.float32)}, {},
     "'obs_mean' has 3 values"),
]


@pytest.mark.parametrize(("arrays", "kwargs", "match"), [pytest.param(a, k, m, id=i) for i, a, k, m in BAD_MODELS])
def test_parse_npz_rejects(arrays: dict[str, Any], kwargs: dict[str, Any], match: str) -> None:
    module = _module(_npz(**arrays), **kwargs)
    with pytest.raises(ModelError, match=match):
        parse_npz(module)
    with pytest.raises(ModelError, match=match):
        CupyBackend().load(module, "cuda")  # checked on the host before any GPU is needed
    # the module itself is untouched and still describes the same bytes
    assert ModelModule(module.metadata, module.data) == module


def test_parse_npz_reads_normalisation_and_drops_undeclared_value_net() -> None:
    rng = np.random.default_rng(0)
    pi = [(rng.normal(size=(3, 4)).astype(np.float32), np.zeros(3, np.float32))]
    vf = [(rng.normal(size=(1, 4)).astype(np.float32), np.zeros(1, np.float32))]
    module = numpy_mlp(4, Discrete(3), pi, value_layers=vf, obs_mean=np.ones(4), obs_std=2.0, obs_clip=5.0)
    w = parse_npz(module)
    assert w.obs_norm is not None
    np.testing.assert_array_equal(w.obs_norm[1], np.full(4, 2.0, np.float32))
    assert w.obs_norm[2] == 5.0 and len(w.vf) == 1
    no_value = ModelModule(attrs.evolve(module.metadata, value_output=False), module.data)
    assert parse_npz(no_value).vf == ()


# -- the CUDA source ------------------------------------------------------------------------------

NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) is not installed")
def test_cuda_source_compiles_with_nvcc(tmp_path: Path) -> None:
    src = tmp_path / "kernels.cu"
    src.write_text(CUDA_SOURCE)
    assert NVCC is not None
    res = subprocess.run([NVCC, "-std=c++11", "-ptx", "-Werror", "all-warnings", str(src), "-o",
                          str(tmp_path / "k.ptx")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    ptx = (tmp_path / "k.ptx").read_text()
    for name in relayrl_cupy._kernels.KERNEL_NAMES:
        assert f".entry {name}(" in ptx


def _nvrtc() -> Any:
    """CuPy's NVRTC bindings when CuPy and an NVRTC library are installed (no GPU needed), else None."""
    try:
        from cupy.cuda import nvrtc

        nvrtc.getVersion()
    except Exception:
        return None
    return nvrtc


NVRTC = _nvrtc()


@pytest.mark.skipif(NVRTC is None, reason="CuPy with an NVRTC library is not installed")
@pytest.mark.parametrize("arch", ["compute_70", "compute_90"])
def test_cuda_source_compiles_with_cupys_nvrtc(arch: str) -> None:
    # NVRTC is what cupy.RawModule uses; unlike nvcc it includes no host headers (no math.h).
    prog = NVRTC.createProgram(CUDA_SOURCE, "relayrl_cupy.cu", (), ())
    try:
        NVRTC.compileProgram(prog, ("-std=c++11", f"-arch={arch}"))
        ptx = NVRTC.getPTX(prog)
    except NVRTC.NVRTCError as exc:
        pytest.fail(f"NVRTC rejected the source: {exc}\n{NVRTC.getProgramLog(prog)}")
    finally:
        NVRTC.destroyProgram(prog)
    text = ptx.decode() if isinstance(ptx, bytes) else str(ptx)
    for name in relayrl_cupy._kernels.KERNEL_NAMES:
        assert f".entry {name}(" in text


# -- on a GPU -------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA GPU / cupy unavailable")
class TestCupyConformance(BackendConformance):
    backend = "cupy"
    device = "cuda"

    def convert(self, case: ReferenceCase) -> ModelModule:
        return to_cupy(case.numpy_module(validate=False))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="no CUDA GPU / cupy unavailable")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
@pytest.mark.parametrize("name", list(REFERENCE_CASES))
def test_gpu_policy_returns_device_arrays_and_device_heads_match(device: str, name: str) -> None:
    import cupy

    case = REFERENCE_CASES[name]
    module = to_cupy(case.numpy_module())
    pol = module.policy(device)
    assert type(pol).device_arrays is True
    obs = np.random.default_rng(0).standard_normal((1024, *case.obs_shape)).astype(np.float32)
    out = pol.forward(obs)
    for v in (out.logits, out.mean, out.log_std, out.value):
        assert v is None or isinstance(v, cupy.ndarray)
    ref_out = case.numpy_module().policy().forward(obs)
    head = make_device_head(module.metadata, device)
    act, logp = head.sample(out, np.random.default_rng(5))
    ref_act, ref_logp = make_head(module.metadata).sample(ref_out, np.random.default_rng(5))
    assert isinstance(act, np.ndarray) and act.shape == ref_act.shape
    if isinstance(case.action_space, Box):
        np.testing.assert_allclose(act, ref_act, atol=1e-5)
        np.testing.assert_allclose(logp, ref_logp, atol=1e-4)
    else:
        same = np.all(act.reshape(1024, -1) == ref_act.reshape(1024, -1), axis=1)
        assert same.mean() >= 0.995
        np.testing.assert_allclose(logp[same], ref_logp[same], atol=1e-5)
    assert CupyBackend().devices()[0] == "cuda:0"
