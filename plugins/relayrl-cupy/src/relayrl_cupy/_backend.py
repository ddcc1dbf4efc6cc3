"""The ``cupy`` inference backend: ``.npz`` MLPs on a CUDA GPU."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import attrs

from relayrl import BackendUnavailableError, Head, ModelError, ModelMetadata, ModelModule
from relayrl.abc import InferenceBackend

from ._heads import make_array_head
from ._kernels import CupyKernels
from ._mlp import ArrayMLPPolicy, parse_npz

__all__ = ["CupyBackend", "CupyMLPPolicy", "cuda_available", "make_device_head", "to_cupy"]

_INSTALL_HINT = ("install a CuPy wheel matching your CUDA driver: `pip install relayrl-cupy[cuda12]` "
                 "(cupy-cuda12x[ctk]) or `pip install relayrl-cupy[cuda13]` (cupy-cuda13x[ctk]); with a local "
                 "CUDA toolkit, [cuda12-local] or [cuda13-local]")


def _import_cupy() -> Any:
    """The ``cupy`` module, or BackendUnavailableError saying why it cannot be used."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken install failing in its own import
        raise BackendUnavailableError(f"the cupy backend needs CuPy, which cannot be imported "
                                      f"({type(exc).__name__}: {exc}); {_INSTALL_HINT}") from exc
    try:
        ok = bool(cupy.cuda.is_available())
    except Exception as exc:  # a driver/runtime mismatch raises CUDARuntimeError here
        raise BackendUnavailableError(f"CuPy cannot reach a CUDA device ({type(exc).__name__}: {exc})") from exc
    if not ok:
        raise BackendUnavailableError("CuPy is installed but finds no CUDA device (cupy.cuda.is_available() is "
                                      "False): the cupy backend needs an NVIDIA GPU and driver")
    return cupy


def cuda_available() -> bool:
    """Whether CuPy imports and sees at least one CUDA device (never raises).

    .. versionadded:: 0.1
    """
    try:
        _import_cupy()
    except BackendUnavailableError:
        return False
    return True


def _device_index(device: str) -> int:
    name, _, index = device.partition(":")
    if name != "cuda" or (index and not index.isdigit()):
        raise BackendUnavailableError(f"the cupy backend runs on CUDA devices ('cuda' or 'cuda:N'), not {device!r}")
    return int(index or 0)


class _DeviceState:
    """CuPy, one device and its compiled kernels (compiled once per device, then shared)."""

    _lock = threading.Lock()
    _cache: ClassVar[dict[int, _DeviceState]] = {}

    def __init__(self, cp: Any, index: int) -> None:
        self.cp = cp
        self.index = index
        self.device = cp.cuda.Device(index)
        try:
            with self.device:
                # Compiling the kernels needs NVRTC and the matmuls need cuBLAS: both come with the
                # CUDA toolkit (or the wheel's [ctk] extra). Find out now, not in the first forward.
                self.kernels = CupyKernels(cp)
                probe = cp.ones((2, 2), dtype=cp.float32)
                self.kernels.bias_act(probe @ probe, cp.zeros(2, dtype=cp.float32), "tanh")
                cp.cuda.Device(index).synchronize()
        except Exception as exc:
            raise BackendUnavailableError(
                f"CuPy cannot run the relayrl-cupy kernels on cuda:{index} ({type(exc).__name__}: {exc}); "
                "NVRTC and cuBLAS come with a CUDA toolkit or with the CuPy wheel's [ctk] extra: "
                f"{_INSTALL_HINT}") from exc

    @classmethod
    def get(cls, device: str) -> _DeviceState:
        index = _device_index(device)
        cp = _import_cupy()
        with cls._lock:
            state = cls._cache.get(index)
            if state is None:
                try:
                    count = int(cp.cuda.runtime.getDeviceCount())
                except Exception as exc:
                    raise BackendUnavailableError(f"CuPy cannot count CUDA devices: {exc}") from exc
                if index >= count:
                    raise BackendUnavailableError(f"no CUDA device {device!r}: this machine has {count}")
                state = cls(cp, index)
                cls._cache[index] = state
            return state


class CupyMLPPolicy(ArrayMLPPolicy):
    """An ``.npz`` MLP resident on one GPU: outputs are CuPy arrays on that device.

    .. versionadded:: 0.1
    """

    #: The outputs (:class:`relayrl.abc.HeadOutputs`) are CuPy device arrays. relayrl's own heads
    #: copy them to the host; :func:`make_device_head` samples them where they are.
    device_arrays: ClassVar[bool] = True

    def __init__(self, weights: Any, state: _DeviceState, *, gaussian: bool) -> None:
        self._device = state.device
        with self._device:
            super().__init__(weights, state.kernels, gaussian=gaussian)

    def forward(self, obs: Any, mask: Any = None) -> Any:
        with self._device:
            return super().forward(obs, mask)


class _OnDevice(Head):
    """Runs a device head with its GPU current (for machines with several)."""

    def __init__(self, head: Head, state: _DeviceState) -> None:
        self._head = head
        self._device = state.device
        self.action_shape = head.action_shape
        self.action_dtype = head.action_dtype
        self.mask_dim = head.mask_dim

    def sample(self, out: Any, rng: Any, mask: Any = None, deterministic: bool = False) -> Any:
        with self._device:
            return self._head.sample(out, rng, mask, deterministic)

    def log_prob(self, out: Any, act: Any, mask: Any = None) -> Any:
        return self._head.log_prob(out, act, mask)


def make_device_head(metadata: ModelMetadata, device: str = "cuda", *, clip: bool | None = None) -> Head:
    """A head that samples on the GPU, for policies of the cupy backend.

    Same interface as :func:`relayrl.make_head`: ``.sample(out, rng, mask=None,
    deterministic=False)`` returns host numpy ``(actions, log_probs)``. The random numbers come
    from ``rng`` (drawn on the host in the same order as relayrl's heads, then copied), so a
    seed gives the same actions as the host heads. Head outputs may be CuPy or numpy arrays.

    Raises:
        BackendUnavailableError: CuPy or the device is not available.
        ModelError: the metadata names an unknown head.

    .. versionadded:: 0.1
    """
    state = _DeviceState.get(device)
    with state.device:
        head = make_array_head(metadata, state.kernels, clip=clip)
    return _OnDevice(head, state) if state.index else head


def to_cupy(module: ModelModule) -> ModelModule:
    """Re-label a numpy-backend ``.npz`` MLP module for the cupy backend (same file, same checksum).

    The file is checked against the metadata on the host (no GPU needed); the full validation
    (a forward on the device) happens when the module is loaded on a GPU.

    Raises:
        ModelError: the module is not an ``.npz`` MLP of the numpy (or cupy) backend.

    .. versionadded:: 0.1
    """
    if module.backend not in ("numpy", "cupy"):
        raise ModelError(f"to_cupy converts numpy-backend .npz MLPs, not {module.backend!r} models")
    parse_npz(module)
    if module.backend == "cupy":
        return module
    return ModelModule(attrs.evolve(module.metadata, backend="cupy"), module.data)


class CupyBackend(InferenceBackend):
    """Runs the numpy backend's ``.npz`` MLP format on a CUDA GPU with fused CuPy kernels.

    Importing this class needs no CuPy; :meth:`load` raises
    :class:`~relayrl.BackendUnavailableError` when CuPy or a CUDA device is missing. Devices
    are ``"cuda"`` (device 0) or ``"cuda:N"``. The model file is parsed and checked on the host
    first, so a broken model raises :class:`~relayrl.ModelError` even without a GPU.

    .. versionadded:: 0.1
    """

    name = "cupy"
    distribution = "relayrl-cupy"

    def load(self, module: ModelModule, device: str = "cuda") -> CupyMLPPolicy:
        weights = parse_npz(module)
        state = _DeviceState.get(device)
        return CupyMLPPolicy(weights, state, gaussian=module.metadata.policy_head == "gaussian")

    def devices(self) -> list[str]:
        """``["cuda:0", ...]`` for each CUDA device CuPy sees (empty without one)."""
        try:
            cp = _import_cupy()
            count = int(cp.cuda.runtime.getDeviceCount())
        except Exception:
            return []
        return [f"cuda:{i}" for i in range(count)]

    def make_head(self, metadata: ModelMetadata, device: str = "cuda") -> Head:
        """The GPU head for this backend's policies (see :func:`make_device_head`)."""
        return make_device_head(metadata, device)
