"""The backend conformance kit: one test class any backend plugin subclasses."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import pytest

from .._errors import IntegrityError, ModelError, ObservationError, RelayRLError
from .._heads import make_head
from .._model import ModelModule
from .._numpy_backend import _init_layers, numpy_mlp
from .._spaces import Box, Discrete, MultiDiscrete, Space
from ..backends import available, get

__all__ = ["REFERENCE_CASES", "BackendConformance", "ReferenceCase", "reference_case"]


@attrs.frozen(kw_only=True)
class ReferenceCase:
    """Weights of a reference MLP, and the numpy model module built from them.

    A backend's :meth:`BackendConformance.convert` builds its own model computing the same
    function: ``pi_layers`` / ``value_layers`` are ``(weight [out, in], bias [out])`` pairs as in
    ``torch.nn.Linear``, with ``activation`` after every layer but the last; Gaussian cases
    add a state-independent ``log_std``.
    """

    name: str
    obs_shape: tuple[int, ...]
    action_space: Space
    pi_layers: Sequence[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]
    value_layers: Sequence[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] | None
    activation: str
    log_std: np.ndarray[Any, Any] | None = None

    def numpy_module(self, *, validate: bool = True) -> ModelModule:
        """The reference model on the built-in numpy backend."""
        return numpy_mlp(self.obs_shape, self.action_space, self.pi_layers, value_layers=self.value_layers,
                         activation=self.activation, log_std=self.log_std, validate=validate)

    def with_nan(self) -> ReferenceCase:
        """The same case with a NaN in the last policy bias (its model must be rejected)."""
        layers = [(w.copy(), b.copy()) for w, b in self.pi_layers]
        layers[-1][1][0] = np.nan
        return attrs.evolve(self, name=self.name + "-nan", pi_layers=layers)


def reference_case(
    name: str,
    obs_shape: tuple[int, ...],
    action_space: Space,
    *,
    hidden: Sequence[int] = (16, 16),
    activation: str = "tanh",
    value: bool = True,
    seed: int = 0,
) -> ReferenceCase:
    """Build a reference case with random (orthogonal, non-trivial) weights."""
    rng = np.random.default_rng(seed)
    in_dim = int(np.prod(obs_shape))
    out_dim = action_space.flat_dim
    sizes = [in_dim, *hidden]
    pi = _init_layers(rng, [*sizes, out_dim], 1.0)  # gain 1.0: spread-out logits make parity meaningful
    for _, b in pi:
        b[:] = rng.normal(0, 0.1, b.shape)
    vf = _init_layers(rng, [*sizes, 1], 1.0) if value else None
    log_std = rng.normal(-0.5, 0.2, out_dim).astype(np.float32) if isinstance(action_space, Box) else None
    return ReferenceCase(name=name, obs_shape=tuple(obs_shape), action_space=action_space, pi_layers=pi,
                         value_layers=vf, activation=activation, log_std=log_std)


#: The cases every conformant backend is checked on (a plugin may restrict ``cases``).
REFERENCE_CASES: dict[str, ReferenceCase] = {
    c.name: c
    for c in (
        reference_case("discrete", (4,), Discrete(3)),
        reference_case("discrete-relu-novalue", (6,), Discrete(5), activation="relu", value=False, seed=1),
        reference_case("multidiscrete", (5,), MultiDiscrete((3, 2, 4)), seed=2),
        reference_case("gaussian", (3,), Box(-1.0, 1.0, (2,)), seed=3),
        reference_case("matrix-obs", (2, 3), Discrete(2), hidden=(8,), seed=4),
    )
}


class BackendConformance(abc.ABC):
    """Subclass this in a test module (named ``Test...``) to check a backend plugin.

    Set :attr:`backend` to the registered name and implement :meth:`convert`; restrict
    :attr:`cases` if the backend cannot represent some reference models. Every test then runs
    for every case: save/load and bytes round trips, batch shapes, masking, seeded
    determinism, rejection of broken models, and parity with the numpy reference.

    Example::

        from relayrl.testing import BackendConformance

        class TestMyBackend(BackendConformance):
            backend = "mine"

            def convert(self, case):
                return my_export(case.pi_layers, ...)
    """

    #: Registered backend name under test.
    backend: ClassVar[str]
    #: Device the models are loaded on.
    device: ClassVar[str] = "cpu"
    #: Absolute tolerance for parity with the numpy reference.
    atol: ClassVar[float] = 1e-5
    #: Names from :data:`REFERENCE_CASES` to run.
    cases: ClassVar[tuple[str, ...]] = tuple(REFERENCE_CASES)

    @abc.abstractmethod
    def convert(self, case: ReferenceCase) -> ModelModule:
        """Build this backend's model module computing the same function as ``case``."""

    # -- fixtures -----------------------------------------------------------------------------------

    @pytest.fixture(params=list(REFERENCE_CASES))
    def case(self, request: pytest.FixtureRequest) -> ReferenceCase:
        name = str(request.param)
        if name not in self.cases:
            pytest.skip(f"backend {self.backend!r} does not support the {name!r} reference case")
        return REFERENCE_CASES[name]

    @pytest.fixture
    def model(self, case: ReferenceCase) -> ModelModule:
        return self.convert(case)

    # -- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def observations(case: ReferenceCase, batch: int, seed: int = 7) -> np.ndarray[Any, Any]:
        return np.random.default_rng(seed).standard_normal((batch, *case.obs_shape)).astype(np.float32)

    def _outputs(self, module: ModelModule, obs: np.ndarray[Any, Any]) -> Any:
        return module.policy(self.device).forward(obs, None)

    @staticmethod
    def _arrays(out: Any) -> dict[str, np.ndarray[Any, Any]]:
        res = {}
        for name in ("logits", "mean", "log_std", "value"):
            v = getattr(out, name)
            if v is not None:
                get = getattr(v, "get", None)
                res[name] = np.asarray(get() if get is not None and not isinstance(v, np.ndarray) else v)
        return res

    # -- tests --------------------------------------------------------------------------------------

    def test_backend_is_available(self) -> None:
        assert self.backend in available()
        assert get(self.backend).name == self.backend

    def test_metadata_describes_the_model(self, case: ReferenceCase, model: ModelModule) -> None:
        meta = model.metadata
        assert meta.backend == self.backend
        assert meta.input.shape == case.obs_shape
        assert meta.action_space == case.action_space
        assert meta.value_output == (case.value_layers is not None)

    @pytest.mark.parametrize("batch", [1, 7, 64])
    def test_batch_shapes(self, case: ReferenceCase, model: ModelModule, batch: int) -> None:
        out = self._arrays(self._outputs(model, self.observations(case, batch)))
        dim = case.action_space.flat_dim
        if isinstance(case.action_space, Box):
            assert out["mean"].shape == (batch, dim)
            assert out["log_std"].shape in ((batch, dim), (dim,))
        else:
            assert out["logits"].shape == (batch, dim)
        if case.value_layers is not None:
            assert out["value"].shape == (batch,)

    def test_parity_with_numpy_reference(self, case: ReferenceCase, model: ModelModule) -> None:
        obs = self.observations(case, 32)
        ref = self._arrays(case.numpy_module().policy().forward(obs, None))
        got = self._arrays(self._outputs(model, obs))
        for name, expected in ref.items():
            np.testing.assert_allclose(np.broadcast_to(got[name], expected.shape) if name == "log_std" else got[name],
                                       expected, atol=self.atol, rtol=1e-4, err_msg=name)
        head = make_head(model.metadata)
        ref_head = make_head(case.numpy_module().metadata)
        a1, lp1 = head.sample(self._outputs(model, obs), np.random.default_rng(0), deterministic=True)
        a2, lp2 = ref_head.sample(case.numpy_module().policy().forward(obs, None), np.random.default_rng(0),
                                  deterministic=True)
        np.testing.assert_allclose(a1, a2, atol=self.atol)
        np.testing.assert_allclose(lp1, lp2, atol=self.atol)

    def test_save_load_round_trip(self, case: ReferenceCase, model: ModelModule, tmp_path: Path) -> None:
        model.save(tmp_path / "m")
        loaded = ModelModule.load(tmp_path / "m", device=self.device)
        assert loaded == model
        obs = self.observations(case, 5)
        a, b = self._arrays(self._outputs(model, obs)), self._arrays(self._outputs(loaded, obs))
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])

    def test_bytes_round_trip(self, case: ReferenceCase, model: ModelModule) -> None:
        loaded = ModelModule.from_bytes(model.to_bytes(), device=self.device)
        assert loaded == model
        assert loaded.to_bytes() == model.to_bytes()
        obs = self.observations(case, 5)
        a, b = self._arrays(self._outputs(model, obs)), self._arrays(self._outputs(loaded, obs))
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])

    def test_seeded_sampling_is_deterministic(self, case: ReferenceCase, model: ModelModule) -> None:
        obs = self.observations(case, 16)
        head = make_head(model.metadata)
        a1, lp1 = head.sample(self._outputs(model, obs), np.random.default_rng(42))
        a2, lp2 = head.sample(self._outputs(model, obs), np.random.default_rng(42))
        np.testing.assert_array_equal(a1, a2)
        np.testing.assert_array_equal(lp1, lp2)
        assert np.all(np.isfinite(lp1))

    def test_masking(self, case: ReferenceCase, model: ModelModule) -> None:
        if isinstance(case.action_space, Box):
            pytest.skip("masks apply to discrete action spaces")
        obs = self.observations(case, 64)
        head = make_head(model.metadata)
        rng = np.random.default_rng(3)
        mask = rng.random((64, head.mask_dim)) < 0.5
        # keep at least one allowed action per row (and per component for MultiDiscrete)
        nvec = case.action_space.nvec if isinstance(case.action_space, MultiDiscrete) else (head.mask_dim,)
        start = 0
        for n in nvec:
            mask[np.arange(64), start + rng.integers(0, n, 64)] = True
            start += n
        out = self._outputs(model, obs)
        for deterministic in (False, True):
            act, logp = head.sample(out, rng, mask=mask, deterministic=deterministic)
            act2d = act.reshape(64, -1)
            offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]])
            assert np.all(mask[np.arange(64)[:, None], act2d + offsets[None, :]])
            assert np.all(np.isfinite(logp))
        full = mask.copy()
        full[5] = False
        with pytest.raises(ObservationError):
            head.sample(out, rng, mask=full)

    def test_rejects_corrupted_bundle(self, model: ModelModule) -> None:
        data = bytearray(model.to_bytes())
        for pos in (3, len(data) // 2, len(data) - 40):
            bad = bytearray(data)
            bad[pos] ^= 0x10
            with pytest.raises(IntegrityError):
                ModelModule.from_bytes(bytes(bad), device=self.device)

    def test_rejects_declared_shape_mismatch(self, case: ReferenceCase, model: ModelModule) -> None:
        meta = model.metadata
        wrong = attrs.evolve(meta, input=attrs.evolve(meta.input, shape=(*meta.input.shape[:-1],
                                                                         meta.input.shape[-1] + 3)))
        with pytest.raises(ModelError):
            ModelModule(wrong, model.data).validate(self.device)

    def test_rejects_nan_model(self, case: ReferenceCase) -> None:
        with pytest.raises(ModelError, match="finite"):
            self.convert(case.with_nan()).validate(self.device)

    def test_rejects_garbage_model_file(self, model: ModelModule) -> None:
        garbage = b"\x00not a model\xff" * 16
        import hashlib

        meta = attrs.evolve(model.metadata, checksum=hashlib.sha256(garbage).hexdigest())
        with pytest.raises(RelayRLError):
            ModelModule(meta, garbage).validate(self.device)
