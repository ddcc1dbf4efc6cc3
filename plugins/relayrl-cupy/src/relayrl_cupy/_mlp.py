"""Reading the numpy backend's ``.npz`` MLP format, and running it on any Array API namespace.

The format is the one documented in ``relayrl._numpy_backend`` (``activation``, ``pi.{i}``,
optional ``vf.{i}``, ``log_std``, ``obs_mean``/``obs_std``/``obs_clip``). Parsing and checking
happen on the host with numpy; :class:`ArrayMLPPolicy` then keeps the weights in its
namespace (on the GPU for CuPy) and runs the forward through a :class:`~relayrl_cupy.Kernels`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from relayrl import ModelError
from relayrl._numpy_backend import MLPWeights, read_npz_mlp
from relayrl.abc import HeadOutputs, Policy

from ._kernels import Kernels

#: Kept under its old name: the parser lives in relayrl, next to the format it reads.
parse_npz = read_npz_mlp

__all__ = ["ArrayMLPPolicy", "MLPWeights", "parse_npz"]

Array = npt.NDArray[Any]
Layer = tuple[Array, Array]


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
