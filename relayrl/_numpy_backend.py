"""The built-in ``numpy`` backend: a multi-layer perceptron stored as ``.npz``.

It is the reference every other backend is checked against, and the default for examples
and tests. It registers through the ``relayrl.backends`` entry point like any plugin.

File format (``numpy.savez``, no pickles):

* ``activation``: 0-d unicode array, one of :data:`ACTIVATIONS`;
* ``pi.{i}.weight`` ``[out, in]`` and ``pi.{i}.bias`` ``[out]`` for the policy layers
  (the activation follows every layer but the last);
* optionally ``vf.{i}.weight`` / ``vf.{i}.bias``: a separate value network ending in one unit;
* optionally ``log_std`` ``[action_dim]``: state-independent log standard deviation (Gaussian);
* optionally ``obs_mean``, ``obs_std`` and ``obs_clip`` (0-d): observation normalisation
  ``clip((obs - mean) / std, -clip, clip)`` applied before both networks.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt

from ._backend_api import HeadOutputs, InferenceBackend, Policy
from ._errors import ConfigError, ModelError
from ._model import ModelModule, default_head
from ._spaces import Box, Discrete, MultiDiscrete, Space, from_gymnasium

__all__ = ["ACTIVATIONS", "MLPWeights", "NumpyBackend", "NumpyMLPPolicy", "mlp_policy", "numpy_mlp", "read_npz_mlp"]

Array = npt.NDArray[Any]
Layer = tuple[Array, Array]


def _leaky_relu(x: Array) -> Array:
    return np.where(x > 0, x, x * np.float32(0.01))


def _elu(x: Array) -> Array:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))


def _sigmoid(x: Array) -> Array:
    return 1.0 / (1.0 + np.exp(-x))


def _silu(x: Array) -> Array:
    return x / (1.0 + np.exp(-x))


def _relu(x: Array) -> Array:
    return np.maximum(x, 0, out=x)


def _tanh(x: Array) -> Array:
    return np.tanh(x, out=x)


#: Activation functions the numpy MLP supports (names as in ``torch.nn``, lower-case).
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": _tanh,
    "relu": _relu,
    "leaky_relu": _leaky_relu,
    "elu": _elu,
    "sigmoid": _sigmoid,
    "silu": _silu,
    "identity": lambda x: x,
}


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


# The header numpy writes for a plain (non-object) array: {'descr': '<f4', 'fortran_order': False, 'shape': (64, 4), }
_NPY_HEADER = re.compile(r"\{'descr': '([<>|=][a-zA-Z]\d*)', 'fortran_order': False, 'shape': \(([\d, ]*)\), \}\s*$")


def _read_npz(data: bytes) -> dict[str, Array]:
    """Read every array of an ``.npz`` file (no pickles).

    ``numpy.load`` parses each array header with ``ast.literal_eval``, which made reading a
    small MLP cost about 1 ms, most of a hot swap from received bytes. Headers in the form numpy
    writes for plain arrays are parsed with one regular expression here; anything else goes
    through ``numpy.lib.format.read_array``.
    """
    arrays: dict[str, Array] = {}
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            raw = zf.read(name)
            key = name[:-4] if name.endswith(".npy") else name
            match = None
            if raw[:6] == b"\x93NUMPY" and raw[6] == 1:
                (hlen,) = struct.unpack_from("<H", raw, 8)
                match = _NPY_HEADER.match(raw[10:10 + hlen].decode("latin1"))
                start = 10 + hlen
            if match is None:
                arrays[key] = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
                continue
            dtype = np.dtype(match.group(1))
            shape = tuple(int(v) for v in match.group(2).replace(" ", "").split(",") if v)
            count = math.prod(shape)
            if dtype.hasobject or len(raw) - start != count * dtype.itemsize:
                raise ValueError(f"array {key!r} in the .npz has {len(raw) - start} data bytes, expected "
                                 f"{count * dtype.itemsize}")
            arrays[key] = np.frombuffer(raw, dtype=dtype, count=count, offset=start).reshape(shape)
    return arrays


def read_npz_mlp(module: ModelModule) -> MLPWeights:
    """Read and check a module's ``.npz`` MLP against its metadata (shared by every backend of the format).

    Raises:
        ModelError: the file is not an ``.npz`` MLP, or it does not fit the metadata.
    """
    try:
        arrays = _read_npz(module.data)
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


class NumpyMLPPolicy(Policy):
    """A loaded numpy MLP. Weights are stored transposed and contiguous for fast matmuls."""

    def __init__(
        self,
        pi: Sequence[Layer],
        vf: Sequence[Layer],
        activation: str,
        gaussian: bool,
        log_std: Array | None,
        obs_norm: tuple[Array, Array, float] | None,
    ) -> None:
        self._pi = [(np.ascontiguousarray(w.T), b) for w, b in pi]
        self._vf = [(np.ascontiguousarray(w.T), b) for w, b in vf]
        self._act = ACTIVATIONS[activation]
        self._gaussian = gaussian
        self._log_std = log_std
        self._norm = obs_norm
        self.in_dim = pi[0][0].shape[1]

    @staticmethod
    def _run(x: Array, layers: list[Layer], act: Callable[[Array], Array]) -> Array:
        last = len(layers) - 1
        for i, (wt, b) in enumerate(layers):
            x = x @ wt
            x += b
            if i != last:
                x = act(x)
        return x

    def forward(self, obs: Array, mask: Array | None = None) -> HeadOutputs:
        x = obs.reshape(obs.shape[0], -1)
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        if x.shape[1] != self.in_dim:
            raise ModelError(f"numpy MLP takes {self.in_dim} inputs per observation, got {x.shape[1]}")
        if self._norm is not None:
            mean, std, clip = self._norm
            x = np.clip((x - mean) / std, -clip, clip)
        out = self._run(x, self._pi, self._act)
        value = self._run(x, self._vf, self._act)[:, 0] if self._vf else None
        if self._gaussian:
            return HeadOutputs(mean=out, log_std=self._log_std, value=value)
        return HeadOutputs(logits=out, value=value)


def limit_blas_threads() -> int | None:
    """Limit numpy's BLAS to ``RELAYRL_BLAS_THREADS`` threads (default 1); return the limit applied.

    Policy MLPs are small: a multi-threaded BLAS spends more on waking and spinning its threads
    than on the matrix product, and on a busy 2-core machine a 256-row forward measured about
    1.9 ms with OpenBLAS's default threads against 0.04 ms with one. ``RELAYRL_BLAS_THREADS=0``
    leaves the BLAS alone. Needs ``threadpoolctl`` (a dependency of relayrl); the limit is
    process-wide, like ``OPENBLAS_NUM_THREADS``, which it overrides after numpy was imported.
    """
    raw = os.environ.get("RELAYRL_BLAS_THREADS", "1").strip()
    try:
        n = int(raw)
    except ValueError as exc:
        raise ConfigError(f"RELAYRL_BLAS_THREADS must be an integer, got {raw!r}") from exc
    if n <= 0:
        return None
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return None
    threadpool_limits(limits=n, user_api="blas")
    return n


class NumpyBackend(InferenceBackend):
    """Runs ``.npz`` MLPs with numpy on the CPU.

    Creating the backend (which relayrl does once, on first use) limits numpy's BLAS threads,
    see :func:`limit_blas_threads`.
    """

    name = "numpy"
    distribution = "relayrl"

    def __init__(self) -> None:
        self.blas_threads = limit_blas_threads()

    def load(self, module: ModelModule, device: str = "cpu") -> NumpyMLPPolicy:
        if device != "cpu":
            from ._errors import BackendUnavailableError

            raise BackendUnavailableError(f"the numpy backend runs on 'cpu' only, not {device!r}")
        w = read_npz_mlp(module)
        return NumpyMLPPolicy(w.pi, w.vf, w.activation, module.metadata.policy_head == "gaussian", w.log_std,
                              w.obs_norm)


def _obs_shape(obs: int | Sequence[int] | Any) -> tuple[int, ...]:
    if isinstance(obs, int | np.integer):
        return (int(obs),)
    if isinstance(obs, tuple | list):
        return tuple(int(v) for v in obs)
    space = from_gymnasium(obs)
    if not isinstance(space, Box):
        raise ConfigError(f"observation space must be a Box (or a dimension), got {space!r}")
    return space.shape


def numpy_mlp(
    obs_space: int | Sequence[int] | Any,
    action_space: Space | Any,
    pi_layers: Sequence[tuple[Any, Any]],
    *,
    value_layers: Sequence[tuple[Any, Any]] | None = None,
    activation: str = "tanh",
    log_std: Any = None,
    obs_mean: Any = None,
    obs_std: Any = None,
    obs_clip: float | None = None,
    version: int | None = None,
    extra: dict[str, Any] | None = None,
    validate: bool = True,
) -> ModelModule:
    """Package MLP weights as a numpy-backend model module.

    Args:
        obs_space: observation dimension, shape, or a (relayrl or gymnasium) ``Box``.
        action_space: a relayrl or gymnasium ``Discrete``, ``MultiDiscrete`` or 1-D ``Box``.
        pi_layers: ``(weight [out, in], bias [out])`` per policy layer, as in ``torch.nn.Linear``.
        value_layers: the same for a separate value network ending in one unit.
        activation: one of :data:`ACTIVATIONS`, applied after every hidden layer.
        log_std: per-dimension log standard deviation (required for ``Box`` actions).
        obs_mean, obs_std, obs_clip: optional observation normalisation baked into the model.

    Raises:
        ModelError, ConfigError: the weights do not fit the spaces or each other.

    .. versionadded:: 0.1
    """
    space = from_gymnasium(action_space)
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
    arrays: dict[str, Array] = {"activation": np.asarray(activation)}
    for prefix, layers in (("pi", pi_layers), ("vf", value_layers or ())):
        for i, (w, b) in enumerate(layers):
            arrays[f"{prefix}.{i}.weight"] = np.asarray(w, dtype=np.float32)
            arrays[f"{prefix}.{i}.bias"] = np.asarray(b, dtype=np.float32)
    if log_std is not None:
        arrays["log_std"] = np.asarray(log_std, dtype=np.float32).reshape(-1)
    if obs_mean is not None:
        arrays["obs_mean"] = np.asarray(obs_mean, dtype=np.float32)
        arrays["obs_std"] = np.asarray(obs_std if obs_std is not None else 1.0, dtype=np.float32)
        arrays["obs_std"] = np.broadcast_to(arrays["obs_std"], arrays["obs_mean"].shape).copy()
        arrays["obs_clip"] = np.asarray(math.inf if obs_clip is None else float(obs_clip), dtype=np.float64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return ModelModule.create(
        backend="numpy",
        model_file="policy.npz",
        data=buf.getvalue(),
        obs_shape=_obs_shape(obs_space),
        action_space=space,
        policy_head=default_head(space),
        value_output=bool(value_layers),
        version=version,
        extra=extra,
        validate=validate,
    )


def _orthogonal(rng: np.random.Generator, out_dim: int, in_dim: int, gain: float) -> Array:
    a = rng.standard_normal((max(out_dim, in_dim), min(out_dim, in_dim)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    w = q if out_dim >= in_dim else q.T
    return (gain * w[:out_dim, :in_dim]).astype(np.float32)


def _init_layers(rng: np.random.Generator, sizes: Sequence[int], out_gain: float) -> list[Layer]:
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        gain = out_gain if i == len(sizes) - 2 else math.sqrt(2.0)
        layers.append((_orthogonal(rng, n_out, n_in, gain), np.zeros(n_out, dtype=np.float32)))
    return layers


def mlp_policy(
    obs_dim_or_space: int | Sequence[int] | Any,
    action_space: Space | Any,
    hidden: Sequence[int] = (64, 64),
    activation: str = "tanh",
    value_head: bool = True,
    seed: int = 0,
    *,
    log_std_init: float = 0.0,
) -> ModelModule:
    """A randomly initialised numpy-backend MLP policy (orthogonal init), ready to serve.

    Hidden layers get gain sqrt(2), the policy output 0.01 and the value output 1.0, the
    initialisation PPO implementations use. The same ``seed`` gives the same weights.

    .. versionadded:: 0.1
    """
    space = from_gymnasium(action_space)
    obs_shape = _obs_shape(obs_dim_or_space)
    in_dim = int(np.prod(obs_shape, dtype=np.int64))
    if isinstance(space, Discrete | MultiDiscrete):
        out_dim = space.flat_dim
    elif len(space.shape) == 1:
        out_dim = space.shape[0]
    else:
        raise ConfigError(f"Box action spaces must be 1-D, got shape {space.shape}")
    rng = np.random.default_rng(seed)
    sizes = [in_dim, *[int(h) for h in hidden]]
    pi = _init_layers(rng, [*sizes, out_dim], 0.01)
    vf = _init_layers(rng, [*sizes, 1], 1.0) if value_head else None
    log_std = np.full(out_dim, log_std_init, dtype=np.float32) if isinstance(space, Box) else None
    return numpy_mlp(obs_shape, space, pi, value_layers=vf, activation=activation, log_std=log_std)
