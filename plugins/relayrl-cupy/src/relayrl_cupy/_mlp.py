"""Reading the numpy backend's ``.npz`` MLP format, and running it on any Array API namespace.

The format is the one documented in ``relayrl._numpy_backend`` (``activation``, ``pi.{i}``,
optional ``vf.{i}``, ``log_std``, ``obs_mean``/``obs_std``/``obs_clip``). Parsing and checking
happen on the host with numpy; :class:`ArrayMLPPolicy` then keeps the weights in its
namespace (on the GPU for CuPy) and runs the forward through a :class:`~relayrl_cupy.Kernels`.
"""

from __future__ import annotations

import io
import math
import zipfile
from typing import Any, ClassVar

import attrs
import numpy as np
import numpy.typing as npt

from relayrl import ModelError, ModelModule
from relayrl.abc import HeadOutputs, Policy

from ._kernels import ACTIVATIONS, Kernels

__all__ = ["ArrayMLPPolicy", "MLPWeights", "parse_npz"]

Array = npt.NDArray[Any]
Layer = tuple[Array, Array]


@attrs.frozen(kw_only=True)
class MLPWeights:
    """A checked ``.npz`` MLP on the host: ``(weight [out, in], bias [out])`` float32 layers."""

    activation: str
    pi: tuple[Layer, ...]
    vf: tuple[Layer, ...]
    log_std: Array | None
    #: ``(mean [in], std [in], clip)`` or None.
    obs_norm: tuple[Array, Array, float] | None

    @property
    def in_dim(self) -> int:
        """Number of values in one (flattened) observation."""
        return int(self.pi[0][0].shape[1])

    @property
    def out_dim(self) -> int:
        """Width of the policy output (logits or Gaussian mean)."""
        return int(self.pi[-1][0].shape[0])


def _layers(arrays: dict[str, Array], prefix: str) -> tuple[Layer, ...]:
    layers: list[Layer] = []
    while f"{prefix}.{len(layers)}.weight" in arrays:
        i = len(layers)
        bias_key = f"{prefix}.{i}.bias"
        if bias_key not in arrays:
            raise ModelError(f".npz MLP is missing {bias_key!r}")
        w = np.asarray(arrays[f"{prefix}.{i}.weight"], dtype=np.float32)
        b = np.asarray(arrays[bias_key], dtype=np.float32)
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ModelError(f".npz MLP layer {prefix}.{i}: weight {w.shape} and bias {b.shape} do not fit")
        if layers and layers[-1][0].shape[0] != w.shape[1]:
            raise ModelError(f".npz MLP layer {prefix}.{i} takes {w.shape[1]} inputs but the previous layer "
                             f"gives {layers[-1][0].shape[0]}")
        layers.append((w, b))
    return tuple(layers)


def parse_npz(module: ModelModule) -> MLPWeights:
    """Read and check a module's ``.npz`` MLP against its metadata (host only, no GPU needed).

    Raises:
        ModelError: the file is not an ``.npz`` MLP, or it does not fit the metadata.
    """
    try:
        with np.load(io.BytesIO(module.data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelError(f"{module.metadata.model_file!r} is not an .npz MLP: {exc}") from exc
    if "activation" not in arrays:
        raise ModelError(".npz MLP has no 'activation' entry")
    activation = str(arrays["activation"])
    if activation not in ACTIVATIONS:
        raise ModelError(f".npz MLP activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
    pi, vf = _layers(arrays, "pi"), _layers(arrays, "vf")
    if not pi:
        raise ModelError(".npz MLP has no policy layers ('pi.0.weight')")
    meta = module.metadata
    in_dim = math.prod(meta.input.shape)
    if pi[0][0].shape[1] != in_dim:
        raise ModelError(f".npz MLP's first layer takes {pi[0][0].shape[1]} inputs but the metadata declares "
                         f"observations of shape {meta.input.shape} ({in_dim} values)")
    out_dim = meta.output.shape[0]
    if pi[-1][0].shape[0] != out_dim:
        raise ModelError(f".npz MLP's last layer gives {pi[-1][0].shape[0]} outputs but the metadata declares "
                         f"{out_dim} ({meta.policy_head} head)")
    if vf and (vf[0][0].shape[1] != in_dim or vf[-1][0].shape[0] != 1):
        raise ModelError(".npz MLP's value network must take the observation and end in one unit")
    if meta.value_output and not vf:
        raise ModelError("metadata declares a value output but the .npz MLP has no 'vf' layers")
    log_std = None
    if meta.policy_head == "gaussian":
        if "log_std" not in arrays:
            raise ModelError("a Gaussian .npz MLP needs a 'log_std' array")
        log_std = np.asarray(arrays["log_std"], dtype=np.float32).reshape(-1)
        if log_std.shape != (out_dim,):
            raise ModelError(f".npz MLP 'log_std' has {log_std.size} values, expected {out_dim}")
    norm = None
    if "obs_mean" in arrays:
        if "obs_std" not in arrays:
            raise ModelError(".npz MLP has 'obs_mean' but no 'obs_std'")
        mean = np.asarray(arrays["obs_mean"], dtype=np.float32).reshape(-1)
        std = np.asarray(arrays["obs_std"], dtype=np.float32).reshape(-1)
        for name, a in (("obs_mean", mean), ("obs_std", std)):
            if a.size not in (1, in_dim):
                raise ModelError(f".npz MLP {name!r} has {a.size} values, expected 1 or {in_dim}")
        clip = float(arrays["obs_clip"]) if "obs_clip" in arrays else math.inf
        norm = (np.broadcast_to(mean, (in_dim,)).copy(), np.broadcast_to(std, (in_dim,)).copy(), clip)
    return MLPWeights(activation=activation, pi=pi, vf=vf if meta.value_output else (), log_std=log_std,
                      obs_norm=norm)


class ArrayMLPPolicy(Policy):
    """An ``.npz`` MLP whose weights live in one Array API namespace, run through :class:`Kernels`.

    ``forward`` converts the observations to float32 on the host, copies them to the
    namespace's device once per batch, and returns the outputs as arrays of that namespace
    (``log_std`` is the state-independent ``[action_dim]`` vector).
    """

    #: True when the outputs are device arrays (see :attr:`relayrl.abc.HeadOutputs`).
    device_arrays: ClassVar[bool] = False

    def __init__(self, weights: MLPWeights, kernels: Kernels, *, gaussian: bool) -> None:
        self.kernels = kernels
        self.weights = weights
        self.in_dim = weights.in_dim
        self._activation = weights.activation
        self._gaussian = gaussian
        put = kernels.to_device
        self._pi = [(put(np.ascontiguousarray(w.T)), put(b)) for w, b in weights.pi]
        self._vf = [(put(np.ascontiguousarray(w.T)), put(b)) for w, b in weights.vf]
        self._log_std = None if weights.log_std is None else put(weights.log_std)
        self._norm = None
        if weights.obs_norm is not None:
            mean, std, clip = weights.obs_norm
            self._norm = (put(mean), put(std), clip)

    def _run(self, x: Any, layers: list[tuple[Any, Any]]) -> Any:
        last = len(layers) - 1
        for i, (wt, b) in enumerate(layers):
            x = self.kernels.bias_act(x @ wt, b, "identity" if i == last else self._activation)
        return x

    def forward(self, obs: Array, mask: Array | None = None) -> HeadOutputs:
        host = np.asarray(obs)
        if host.ndim == 0:
            raise ModelError("observations must have a batch axis")
        x = host.reshape(host.shape[0], -1)
        if x.shape[1] != self.in_dim:
            raise ModelError(f"the MLP takes {self.in_dim} inputs per observation, got {x.shape[1]}")
        k = self.kernels
        xd = k.to_device(np.ascontiguousarray(x, dtype=np.float32))
        if self._norm is not None:
            mean, std, clip = self._norm
            xd = k.normalize(xd, mean, std, clip)
        out = self._run(xd, self._pi)
        value = None
        if self._vf:
            v = self._run(xd, self._vf)
            value = k.xp.reshape(v, (v.shape[0],))
        if self._gaussian:
            return HeadOutputs(mean=out, log_std=self._log_std, value=value)
        return HeadOutputs(logits=out, value=value)
