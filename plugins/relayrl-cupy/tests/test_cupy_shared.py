"""The CuPy backend's policy, kernels and heads on every namespace: numpy and array-api-strict
(the Array API reference), the CUDA source compiled for the host (emulated), and CuPy on a GPU.

Everything is checked against relayrl's built-in numpy backend and host heads.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest
import relayrl_cupy
from array_api_compat import array_namespace
from cupy_kernel_emulator import CXX, EmulatedKernels
from hypothesis import given, settings
from hypothesis import strategies as st
from relayrl_cupy import ArrayKernels, ArrayMLPPolicy, Kernels, make_array_head, parse_npz

from relayrl import ModelModule, ObservationError, make_head, numpy_mlp
from relayrl.spaces import Box, Discrete, MultiDiscrete
from relayrl.testing import REFERENCE_CASES, ReferenceCase

HAS_STRICT = importlib.util.find_spec("array_api_strict") is not None
CUDA = relayrl_cupy.cuda_available()
ACTIVATIONS = ["tanh", "relu", "leaky_relu", "elu", "sigmoid", "silu", "identity"]


def _make_kernels(name: str) -> Kernels:
    if name == "numpy":
        return ArrayKernels(array_namespace(np.empty(0)))
    if name == "strict":
        import array_api_strict

        return ArrayKernels(array_api_strict)
    if name == "emulated":
        return EmulatedKernels()
    import cupy
    from relayrl_cupy._backend import _DeviceState

    assert cupy.cuda.is_available()
    return _DeviceState.get("cuda").kernels


KERNELS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("strict", id="strict",
                 marks=pytest.mark.skipif(not HAS_STRICT, reason="array-api-strict is not installed")),
    pytest.param("emulated", id="emulated",
                 marks=pytest.mark.skipif(CXX is None, reason="no host C++ compiler to build the CUDA source")),
    pytest.param("cupy", id="cupy",
                 marks=[pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="no CUDA GPU / cupy unavailable")]),
]


@pytest.fixture(params=KERNELS)
def kernels(request: pytest.FixtureRequest) -> Kernels:
    return _make_kernels(str(request.param))


@pytest.fixture(params=list(REFERENCE_CASES))
def case(request: pytest.FixtureRequest) -> ReferenceCase:
    return REFERENCE_CASES[str(request.param)]


def _obs(case: ReferenceCase, batch: int, seed: int = 7) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal((batch, *case.obs_shape)).astype(np.float32)


def _host_outputs(k: Kernels, out: Any) -> dict[str, np.ndarray[Any, Any]]:
    return {name: k.to_host(getattr(out, name)) for name in ("logits", "mean", "log_std", "value")
            if getattr(out, name) is not None}


def _policy(module: ModelModule, k: Kernels) -> ArrayMLPPolicy:
    return ArrayMLPPolicy(parse_npz(module), k, gaussian=module.metadata.policy_head == "gaussian")


def _mask(rng: np.random.Generator, batch: int, nvec: tuple[int, ...]) -> np.ndarray[Any, Any]:
    mask = rng.random((batch, sum(nvec))) < 0.5
    start = 0
    for n in nvec:  # at least one allowed action per row and component
        mask[np.arange(batch), start + rng.integers(0, n, batch)] = True
        start += n
    return mask


def _nvec(space: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in space.nvec) if isinstance(space, MultiDiscrete) else (int(space.n),)


# -- forward -------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 33, 300])
def test_forward_matches_numpy_backend(kernels: Kernels, case: ReferenceCase, batch: int) -> None:
    module = case.numpy_module()
    obs = _obs(case, batch)
    ref = _host_outputs(kernels, module.policy().forward(obs))
    got = _host_outputs(kernels, _policy(module, kernels).forward(obs))
    assert got.keys() == ref.keys()
    for name, expected in ref.items():
        assert got[name].shape == expected.shape, name
        np.testing.assert_allclose(got[name], expected, atol=1e-5, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("obs_clip", [1.5, None])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_and_obs_normalisation(kernels: Kernels, activation: str, obs_clip: float | None) -> None:
    rng = np.random.default_rng(11)
    layers = [(rng.normal(0, 1, (8, 6)).astype(np.float32), rng.normal(0, 0.5, 8).astype(np.float32)),
              (rng.normal(0, 1, (3, 8)).astype(np.float32), rng.normal(0, 0.5, 3).astype(np.float32))]
    vf = [(rng.normal(0, 1, (1, 6)).astype(np.float32), np.zeros(1, np.float32))]
    module = numpy_mlp((2, 3), Discrete(3), layers, value_layers=vf, activation=activation,
                       obs_mean=rng.normal(0, 1, 6), obs_std=rng.uniform(0.5, 2, 6), obs_clip=obs_clip)
    obs = rng.normal(0, 3, (257, 2, 3)).astype(np.float32)  # many values beyond the clip
    ref = _host_outputs(kernels, module.policy().forward(obs))
    got = _host_outputs(kernels, _policy(module, kernels).forward(obs))
    for name, expected in ref.items():
        np.testing.assert_allclose(got[name], expected, atol=1e-5, rtol=1e-5, err_msg=name)


def test_forward_accepts_other_dtypes_and_rejects_wrong_width(kernels: Kernels) -> None:
    case = REFERENCE_CASES["discrete"]
    module = case.numpy_module()
    pol = _policy(module, kernels)
    obs = np.arange(8, dtype=np.int64).reshape(2, 4)
    np.testing.assert_allclose(kernels.to_host(pol.forward(obs).logits),
                               module.policy().forward(obs.astype(np.float32)).logits, atol=1e-5)
    from relayrl import ModelError

    with pytest.raises(ModelError, match="takes 4 inputs"):
        pol.forward(np.zeros((2, 5), np.float32))
    with pytest.raises(ModelError, match="batch axis"):
        pol.forward(np.float32(1.0))  # type: ignore[arg-type]


# -- heads ---------------------------------------------------------------------------------------


def _discrete_cases() -> list[str]:
    return [n for n, c in REFERENCE_CASES.items() if not isinstance(c.action_space, Box)]


@pytest.mark.parametrize("name", _discrete_cases())
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
def test_categorical_heads_match_relayrl_heads(kernels: Kernels, name: str, masked: bool, deterministic: bool) -> None:
    case = REFERENCE_CASES[name]
    module = case.numpy_module()
    obs = _obs(case, 512, seed=3)
    out = module.policy().forward(obs)
    mask = _mask(np.random.default_rng(5), 512, _nvec(case.action_space)) if masked else None
    ref_act, ref_logp = make_head(module.metadata).sample(out, np.random.default_rng(9), mask=mask,
                                                          deterministic=deterministic)
    head = make_array_head(module.metadata, kernels)
    act, logp = head.sample(_policy(module, kernels).forward(obs), np.random.default_rng(9), mask=mask,
                            deterministic=deterministic)
    assert isinstance(act, np.ndarray) and isinstance(logp, np.ndarray)
    assert act.dtype == np.int64 and logp.dtype == np.float32
    assert act.shape == ref_act.shape and logp.shape == (512,)
    # Same seed, same draws: the same actions (GPU exp may differ in the last bit, which can move
    # a draw lying exactly on a CDF boundary, hence the tolerance of a few rows there only).
    mismatches = int(np.sum(np.any(act.reshape(512, -1) != ref_act.reshape(512, -1), axis=1)))
    assert mismatches <= (3 if kernels.on_device else 0)
    same = np.all(act.reshape(512, -1) == ref_act.reshape(512, -1), axis=1)
    np.testing.assert_allclose(logp[same], ref_logp[same], atol=1e-5, rtol=1e-5)


def test_categorical_start_offset(kernels: Kernels) -> None:
    module = numpy_mlp(3, Discrete(4, start=10), [(np.eye(4, 3, dtype=np.float32), np.zeros(4, np.float32))])
    obs = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
    head = make_array_head(module.metadata, kernels)
    act, _ = head.sample(_policy(module, kernels).forward(obs), np.random.default_rng(1))
    ref, _ = make_head(module.metadata).sample(module.policy().forward(obs), np.random.default_rng(1))
    np.testing.assert_array_equal(act, ref)
    assert act.min() >= 10 and act.max() <= 13


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
def test_gaussian_head_matches_relayrl_head(kernels: Kernels, clip: bool, deterministic: bool) -> None:
    case = REFERENCE_CASES["gaussian"]
    module = case.numpy_module()
    obs = _obs(case, 300)
    ref_act, ref_logp = make_head(module.metadata, clip=clip).sample(
        module.policy().forward(obs), np.random.default_rng(4), deterministic=deterministic)
    head = make_array_head(module.metadata, kernels, clip=clip)
    act, logp = head.sample(_policy(module, kernels).forward(obs), np.random.default_rng(4),
                            deterministic=deterministic)
    assert act.dtype == np.float32 and act.shape == (300, 2) and logp.dtype == np.float32
    np.testing.assert_allclose(act, ref_act, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(logp, ref_logp, atol=1e-4, rtol=1e-5)
    if clip:
        assert act.min() >= -1.0 and act.max() <= 1.0
    with pytest.raises(ObservationError, match="discrete"):
        head.sample(_policy(module, kernels).forward(obs), np.random.default_rng(4), mask=np.ones((300, 2), bool))


def test_gaussian_head_takes_per_row_log_std(kernels: Kernels) -> None:
    from relayrl.abc import HeadOutputs

    rng = np.random.default_rng(2)
    mean = rng.normal(0, 1, (50, 3)).astype(np.float32)
    log_std = rng.normal(-0.5, 0.3, (50, 3)).astype(np.float32)
    module = numpy_mlp(2, Box(-2.0, 2.0, (3,)), [(np.ones((3, 2), np.float32), np.zeros(3, np.float32))],
                       log_std=np.zeros(3))
    out = HeadOutputs(mean=mean, log_std=log_std)
    ref = make_head(module.metadata).sample(out, np.random.default_rng(8))
    got = make_array_head(module.metadata, kernels).sample(out, np.random.default_rng(8))
    np.testing.assert_allclose(got[0], ref[0], atol=1e-5)
    np.testing.assert_allclose(got[1], ref[1], atol=1e-4)


def test_masked_actions_are_never_sampled(kernels: Kernels) -> None:
    case = REFERENCE_CASES["multidiscrete"]
    module = case.numpy_module()
    obs = _obs(case, 2000)
    mask = _mask(np.random.default_rng(1), 2000, (3, 2, 4))
    head = make_array_head(module.metadata, kernels)
    out = _policy(module, kernels).forward(obs)
    rng = np.random.default_rng(0)
    for deterministic in (False, True):
        act, logp = head.sample(out, rng, mask=mask, deterministic=deterministic)
        offsets = np.array([0, 3, 5])
        assert np.all(mask[np.arange(2000)[:, None], act + offsets[None, :]])
        assert np.all(np.isfinite(logp)) and np.all(logp <= 0)


def test_sampling_follows_the_softmax(kernels: Kernels) -> None:
    from relayrl.abc import HeadOutputs

    logits = np.tile(np.array([[0.5, -1.0, 2.0, 0.0, 1.0]], np.float32), (20000, 1))
    mask = np.ones_like(logits, dtype=bool)
    mask[:, 3] = False
    module = numpy_mlp(1, Discrete(5), [(np.zeros((5, 1), np.float32), np.zeros(5, np.float32))], validate=False)
    head = make_array_head(module.metadata, kernels)
    act, logp = head.sample(HeadOutputs(logits=logits), np.random.default_rng(123), mask=mask)
    p = np.exp(logits[0] - logits[0][mask[0]].max()) * mask[0]
    p /= p.sum()
    freq = np.bincount(act, minlength=5) / act.size
    np.testing.assert_allclose(freq, p, atol=0.015)
    np.testing.assert_allclose(logp, np.log(p[act]), atol=1e-5)


def test_seeded_sampling_is_deterministic(kernels: Kernels, case: ReferenceCase) -> None:
    module = case.numpy_module()
    out = _policy(module, kernels).forward(_obs(case, 256))
    head = make_array_head(module.metadata, kernels)
    a1, lp1 = head.sample(out, np.random.default_rng(42))
    a2, lp2 = head.sample(out, np.random.default_rng(42))
    a3, _ = head.sample(out, np.random.default_rng(43))
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(lp1, lp2)
    assert not np.array_equal(a1, a3)


@pytest.mark.parametrize("name", ["discrete", "multidiscrete"])
def test_bad_masks_raise_and_consume_no_randomness(kernels: Kernels, name: str) -> None:
    case = REFERENCE_CASES[name]
    module = case.numpy_module()
    out = _policy(module, kernels).forward(_obs(case, 8))
    head = make_array_head(module.metadata, kernels)
    width = head.mask_dim
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    full = np.ones((8, width), bool)
    empty_row = full.copy()
    empty_row[6] = False
    bad: list[tuple[Any, str]] = [
        (np.ones((8, width + 1), bool), "shape"),
        (np.ones((7, width), bool), "shape"),
        (np.full((8, width), "x"), "dtype"),
        (empty_row, "row 6"),
    ]
    if name == "multidiscrete":
        one_component = full.copy()
        one_component[2, 3:5] = False  # the second component (2 actions) of row 2
        bad.append((one_component, "row 2 masks out every action of component starting at logit 3"))
    for mask, match in bad:
        with pytest.raises(ObservationError, match=match):
            head.sample(out, rng, mask=mask)
        assert rng.bit_generator.state == state  # nothing drawn, nothing lost
    # 0/1 numbers work as a mask
    act, _ = head.sample(out, rng, mask=full.astype(np.uint8))
    assert act.shape[0] == 8


def test_log_prob_agrees_with_sample(kernels: Kernels, case: ReferenceCase) -> None:
    module = case.numpy_module()
    out = _policy(module, kernels).forward(_obs(case, 64))
    head = make_array_head(module.metadata, kernels)
    act, logp = head.sample(out, np.random.default_rng(1))
    np.testing.assert_allclose(head.log_prob(out, act), logp, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 9),
    batch=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(0.0, 30.0),
)
def test_categorical_kernels_match_host_head_property(
    data: st.DataObject, n: int, batch: int, seed: int, scale: float
) -> None:
    from relayrl.abc import HeadOutputs

    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((batch, n)) * scale).astype(np.float32)
    mask = rng.random((batch, n)) < data.draw(st.floats(0.0, 1.0))
    mask[np.arange(batch), rng.integers(0, n, batch)] = True
    module = numpy_mlp(1, Discrete(n), [(np.zeros((n, 1), np.float32), np.zeros(n, np.float32))], validate=False)
    ref = make_head(module.metadata).sample(HeadOutputs(logits=logits), np.random.default_rng(seed), mask=mask)
    names = ["numpy", "emulated"] if CXX is not None else ["numpy"]
    for name in names:
        head = make_array_head(module.metadata, _make_kernels(name))
        act, logp = head.sample(HeadOutputs(logits=logits), np.random.default_rng(seed), mask=mask)
        np.testing.assert_array_equal(act, ref[0], err_msg=name)
        np.testing.assert_allclose(logp, ref[1], atol=1e-5, rtol=1e-5, err_msg=name)
        assert np.all(mask[np.arange(batch), act])


# -- the kernels themselves ----------------------------------------------------------------------


@pytest.mark.skipif(CXX is None, reason="no host C++ compiler to build the CUDA source")
def test_emulated_kernels_ignore_threads_past_the_end() -> None:
    k = EmulatedKernels()
    size = 1000  # not a multiple of the block size: 24 idle threads in the last block
    buf = np.full(size + 300, 7.0, np.float32)
    x = np.ones(size, np.float32)
    k._launch("relayrl_bias_act", size, (x, np.zeros(10, np.float32), buf, np.int64(size), np.int32(10),
                                         np.int32(6)))
    np.testing.assert_array_equal(buf[:size], 1.0)
    np.testing.assert_array_equal(buf[size:], 7.0)


@pytest.mark.parametrize("name", ["emulated", pytest.param("cupy", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="no CUDA GPU / cupy unavailable")])])
def test_fused_categorical_column_window(name: str) -> None:
    if name == "emulated" and CXX is None:
        pytest.skip("no host C++ compiler to build the CUDA source")
    fused, ref = _make_kernels(name), ArrayKernels(array_namespace(np.empty(0)))
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((700, 9)).astype(np.float32)
    mask = rng.random((700, 9)) < 0.6
    mask[:, 4] = True
    u = rng.random(700)
    for m, uu in ((None, None), (mask, None), (None, u), (mask, u)):
        got = fused.categorical(fused.to_device(logits), 2, 5, None if m is None else fused.to_device(m),
                                None if uu is None else fused.to_device(uu))
        want = ref.categorical(logits, 2, 5, m, uu)
        np.testing.assert_array_equal(fused.to_host(got[0]), want[0])
        np.testing.assert_allclose(fused.to_host(got[1]), want[1], atol=1e-5)
