"""The ``onnx`` inference backend: one onnxruntime session per loaded model.

Expected model interface (what :func:`relayrl_torch.export_policy` writes):

* input ``obs``: the observation batch ``[batch, *obs_shape]`` with a dynamic batch axis, of
  the metadata's input dtype. A model with a single input may name it anything (RelayRL models
  call it ``input``); a model whose input has a fixed batch size of 1 is run row by row;
* optional input ``mask`` (``[batch, flat_dim]``): fed with the action mask (1 = allowed) in the
  input's dtype, or all ones when the caller gives no mask;
* outputs ``logits`` ``[batch, flat_dim]`` (categorical and multi-categorical heads) or ``mean``
  ``[batch, action_dim]`` and ``log_std`` (``[batch, action_dim]`` or ``[action_dim]``) for the
  Gaussian head, plus ``value`` (``[batch]`` or ``[batch, 1]``) when the metadata declares a value
  output. Models without these names are read by position in that order: the first output is
  the logits (or the mean, then log_std), the next one the value.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from relayrl import BackendUnavailableError, ConfigError, ModelError, ModelModule
from relayrl.abc import HeadOutputs, InferenceBackend, Policy

__all__ = ["ENV_VAR", "OnnxBackend", "OnnxPolicy", "get_num_threads", "session_options", "set_num_threads"]

#: Environment variable with the default intra-op thread count of new sessions.
ENV_VAR = "RELAYRL_ONNX_THREADS"

Array = npt.NDArray[Any]

_ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}

_lock = threading.Lock()
_threads: int | None = None


def set_num_threads(n: int) -> None:
    """Set the intra-op thread count of onnxruntime sessions created from now on.

    Sessions already loaded keep theirs. Without a call, new sessions use
    ``$RELAYRL_ONNX_THREADS`` or 1 (inter-op parallelism is always 1: sequential execution).

    Raises:
        ConfigError: ``n`` is not a positive integer.

    .. versionadded:: 0.1
    """
    global _threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the onnxruntime thread count must be a positive integer, got {n!r}")
    with _lock:
        _threads = n


def get_num_threads() -> int:
    """The intra-op thread count new sessions get (:func:`set_num_threads`, the env var, or 1).

    Raises:
        ConfigError: ``$RELAYRL_ONNX_THREADS`` is set but not a positive integer.

    .. versionadded:: 0.1
    """
    if _threads is not None:
        return _threads
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return 1
    try:
        n = int(raw)
    except ValueError:
        raise ConfigError(f"${ENV_VAR} must be a positive integer, got {raw!r}") from None
    if n < 1:
        raise ConfigError(f"${ENV_VAR} must be a positive integer, got {raw!r}")
    return n


def session_options() -> ort.SessionOptions:
    """The options every session gets: N intra-op threads, 1 inter-op, sequential, all optimisations.

    .. versionadded:: 0.1
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = get_num_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: no warnings on stderr for every load
    return opts


def _providers(device: str) -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailableError(f"device {device!r} needs onnxruntime's CUDAExecutionProvider "
                                          f"(install onnxruntime-gpu); available here: {', '.join(available)}")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise BackendUnavailableError(f"the onnx backend runs on 'cpu' and 'cuda[:N]', not {device!r}")


class OnnxPolicy(Policy):
    """A loaded ONNX model: one :class:`onnxruntime.InferenceSession`.

    ``input_name`` and ``output_map`` (head field -> ONNX output name) say how the model is read.
    """

    releases_gil = True

    def __init__(self, session: ort.InferenceSession, module: ModelModule) -> None:
        meta = module.metadata
        self.session = session
        self._gaussian = meta.policy_head == "gaussian"
        self._value = meta.value_output
        self._mask_dim = meta.output.shape[0]
        inputs = session.get_inputs()
        by_name = {i.name: i for i in inputs}
        if "obs" in by_name:
            obs_in = by_name["obs"]
        elif len(inputs) == 1 or (len(inputs) == 2 and "mask" in by_name):
            obs_in = next(i for i in inputs if i.name != "mask")
        else:
            raise ModelError(f"the ONNX model has inputs {sorted(by_name)}; relayrl feeds 'obs' (and optionally "
                             f"'mask'), or the only input")
        self.input_name: str = obs_in.name
        self._dtype = np.dtype(_ORT_DTYPES.get(obs_in.type, np.float32))
        mask_in = by_name.get("mask") if obs_in.name != "mask" else None
        self._mask_name = mask_in.name if mask_in is not None else None
        self._mask_dtype = np.dtype(_ORT_DTYPES.get(mask_in.type, np.float32)) if mask_in is not None else None
        shape = list(obs_in.shape)
        # RelayRL exports a fixed batch of one ([1, *obs_shape]): run such models row by row.
        self._per_row = len(shape) == len(meta.input.shape) + 1 and shape[0] == 1

        names = [o.name for o in session.get_outputs()]
        fields = ["mean", "log_std"] if self._gaussian else ["logits"]
        if self._value:
            fields.append("value")
        if fields[0] in names:
            missing = [f for f in fields if f not in names]
            if missing:
                raise ModelError(f"the ONNX model lacks the output(s) {missing} (it has {names})")
            chosen = fields
        else:
            if len(names) < len(fields):
                raise ModelError(f"the ONNX model has outputs {names}; relayrl needs {fields} (by name, or by "
                                 f"position in that order)")
            chosen = names[:len(fields)]
        self.output_map: dict[str, str] = dict(zip(fields, chosen))
        self._fetch = list(chosen)

    def _feed(self, obs: Array, mask: Array | None) -> dict[str, Array]:
        feed = {self.input_name: obs}
        if self._mask_name is not None:
            assert self._mask_dtype is not None
            m = (np.ones((obs.shape[0], self._mask_dim), dtype=self._mask_dtype) if mask is None
                 else np.asarray(mask).astype(self._mask_dtype))
            feed[self._mask_name] = m
        return feed

    def _run(self, obs: Array, mask: Array | None) -> list[Array]:
        if not self._per_row or obs.shape[0] == 1:
            return list(self.session.run(self._fetch, self._feed(obs, mask)))
        rows = [self.session.run(self._fetch, self._feed(obs[i:i + 1], None if mask is None else mask[i:i + 1]))
                for i in range(obs.shape[0])]
        return [np.concatenate([r[k] for r in rows]) if np.ndim(rows[0][k]) >= 1 and np.shape(rows[0][k])[0] == 1
                else rows[0][k] for k in range(len(self._fetch))]

    def forward(self, obs: Array, mask: npt.NDArray[np.bool_] | None = None) -> HeadOutputs:
        if obs.dtype != self._dtype:
            obs = obs.astype(self._dtype)
        outs = dict(zip(self.output_map, self._run(obs, mask)))
        res = HeadOutputs()
        for name, value in outs.items():
            arr = np.asarray(value, dtype=np.float32)
            if name == "value" and arr.ndim == 2 and arr.shape[1] == 1:
                arr = arr.reshape(arr.shape[0])
            setattr(res, name, arr)
        return res


class OnnxBackend(InferenceBackend):
    """Runs ONNX models with onnxruntime (CPU, or the CUDA execution provider for ``cuda``).

    .. versionadded:: 0.1
    """

    name = "onnx"
    distribution = "relayrl-onnx"

    def load(self, module: ModelModule, device: str = "cpu") -> OnnxPolicy:
        providers = _providers(device)
        opts = session_options()
        provider_options: list[dict[str, str]] | None = None
        if providers[0] == "CUDAExecutionProvider" and ":" in device:
            provider_options = [{"device_id": device.split(":", 1)[1]}, {}]
        try:
            session = ort.InferenceSession(module.data, sess_options=opts, providers=providers,
                                           provider_options=provider_options)
        except Exception as exc:
            raise ModelError(f"onnxruntime cannot load {module.metadata.model_file!r}: {type(exc).__name__}: "
                             f"{str(exc).strip()}") from exc
        return OnnxPolicy(session, module)

    def devices(self) -> list[str]:
        return ["cpu", "cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else ["cpu"]
