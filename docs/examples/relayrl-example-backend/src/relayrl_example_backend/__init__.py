"""relayrl-example-backend: a complete, minimal third-party inference backend for relayrl.

It registers ``example-json`` in the ``relayrl.backends`` entry-point group and runs multi-layer
perceptrons stored as one JSON document, computing in float64 with numpy.

Model file format (``policy.json``, UTF-8)::

    {
      "format": "relayrl-example-json-mlp",
      "version": 1,
      "activation": "tanh",                       # one of ACTIVATIONS, after every layer but the last
      "policy": [{"weight": [[...]], "bias": [...]}, ...],   # weight [out][in], as torch.nn.Linear
      "value": [{"weight": ..., "bias": ...}, ...] or null,  # separate value network ending in 1 unit
      "log_std": [...] or null                    # Gaussian heads: state-independent log std
    }

:func:`export_json_mlp` writes one from plain weight lists; :func:`from_reference_case` from a
:class:`relayrl.testing.ReferenceCase` (what the conformance test uses).

.. versionadded:: 0.1
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from relayrl import BackendUnavailableError, ModelError, ModelModule
from relayrl.abc import HeadOutputs, InferenceBackend, Policy
from relayrl.spaces import Space

if TYPE_CHECKING:
    from relayrl.testing import ReferenceCase

__all__ = ["ACTIVATIONS", "FORMAT", "JsonMLPBackend", "JsonMLPPolicy", "export_json_mlp", "from_reference_case"]

Array = npt.NDArray[Any]
Layer = tuple[Array, Array]

#: The ``format`` tag of the model file.
FORMAT = "relayrl-example-json-mlp"

#: Supported activations.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "identity": lambda x: x,
}


def _layers(raw: Any, what: str) -> list[Layer]:
    if not isinstance(raw, list) or not raw:
        raise ModelError(f"{what!r} must be a non-empty list of layers")
    layers: list[Layer] = []
    for i, layer in enumerate(raw):
        if not isinstance(layer, dict) or set(layer) != {"weight", "bias"}:
            raise ModelError(f"{what}[{i}] must be an object with exactly 'weight' and 'bias'")
        try:
            w = np.asarray(layer["weight"], dtype=np.float64)
            b = np.asarray(layer["bias"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{what}[{i}] is not numeric: {exc}") from exc
        if w.ndim != 2 or b.shape != (w.shape[0],):
            raise ModelError(f"{what}[{i}]: weight {w.shape} and bias {b.shape} do not fit")
        if layers and layers[-1][0].shape[0] != w.shape[1]:
            raise ModelError(f"{what}[{i}] takes {w.shape[1]} inputs but {what}[{i - 1}] gives "
                             f"{layers[-1][0].shape[0]}")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ModelError(f"{what}[{i}] has weights that are not finite (NaN or inf)")
        layers.append((w, b))
    return layers


class JsonMLPPolicy(Policy):
    """A loaded JSON MLP: float64 numpy math, float32 outputs."""

    def __init__(self, pi: list[Layer], vf: list[Layer] | None, activation: str, log_std: Array | None) -> None:
        self._pi = [(np.ascontiguousarray(w.T), b) for w, b in pi]
        self._vf = None if vf is None else [(np.ascontiguousarray(w.T), b) for w, b in vf]
        self._act = ACTIVATIONS[activation]
        self._log_std = None if log_std is None else log_std.astype(np.float32)
        self.in_dim = pi[0][0].shape[1]

    def _run(self, x: Array, layers: list[Layer]) -> Array:
        for i, (wt, b) in enumerate(layers):
            x = x @ wt + b
            if i != len(layers) - 1:
                x = self._act(x)
        return x

    def forward(self, obs: Array, mask: Array | None = None) -> HeadOutputs:
        x = np.asarray(obs, dtype=np.float64).reshape(len(obs), -1)  # copies: keeps no reference to obs
        if x.shape[1] != self.in_dim:
            raise ModelError(f"the JSON MLP takes {self.in_dim} inputs per observation, got {x.shape[1]}")
        out = self._run(x, self._pi).astype(np.float32)
        value = None if self._vf is None else self._run(x, self._vf)[:, 0].astype(np.float32)
        if self._log_std is not None:
            return HeadOutputs(mean=out, log_std=self._log_std, value=value)
        return HeadOutputs(logits=out, value=value)


class JsonMLPBackend(InferenceBackend):
    """Runs ``relayrl-example-json-mlp`` files on the CPU."""

    name = "example-json"
    distribution = "relayrl-example-backend"

    def load(self, module: ModelModule, device: str = "cpu") -> JsonMLPPolicy:
        if device != "cpu":
            raise BackendUnavailableError(f"the example-json backend runs on 'cpu' only, not {device!r}")
        try:
            doc = json.loads(module.data.decode("utf-8"))
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise ModelError(f"{module.metadata.model_file!r} is not a JSON document: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ModelError(f"{module.metadata.model_file!r} is not a {FORMAT!r} file")
        if doc.get("version") != 1:
            raise ModelError(f"unsupported {FORMAT} version {doc.get('version')!r} (this backend reads version 1)")
        activation = doc.get("activation")
        if activation not in ACTIVATIONS:
            raise ModelError(f"activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
        meta = module.metadata
        pi = _layers(doc.get("policy"), "policy")
        vf = None if doc.get("value") is None else _layers(doc["value"], "value")
        in_dim = math.prod(meta.input.shape)
        if pi[0][0].shape[1] != in_dim:
            raise ModelError(f"the JSON MLP takes {pi[0][0].shape[1]} inputs but the metadata declares "
                             f"observations of shape {meta.input.shape}")
        if pi[-1][0].shape[0] != meta.output.shape[0]:
            raise ModelError(f"the JSON MLP gives {pi[-1][0].shape[0]} outputs, the metadata declares "
                             f"{meta.output.shape[0]}")
        if meta.value_output != (vf is not None):
            raise ModelError("the metadata's value_output does not match the file's 'value' network")
        if vf is not None and (vf[0][0].shape[1] != in_dim or vf[-1][0].shape[0] != 1):
            raise ModelError("the value network must take the observation and end in one unit")
        log_std = None
        if meta.policy_head == "gaussian":
            log_std = np.asarray(doc.get("log_std") or [], dtype=np.float64)
            if log_std.shape != (meta.output.shape[0],):
                raise ModelError(f"a Gaussian JSON MLP needs 'log_std' with {meta.output.shape[0]} values")
        return JsonMLPPolicy(pi, vf, activation, log_std)


def _to_lists(layers: Sequence[tuple[Any, Any]]) -> list[dict[str, Any]]:
    return [{"weight": np.asarray(w, dtype=np.float64).tolist(), "bias": np.asarray(b, dtype=np.float64).tolist()}
            for w, b in layers]


def export_json_mlp(
    obs_shape: tuple[int, ...],
    action_space: Space,
    pi_layers: Sequence[tuple[Any, Any]],
    *,
    value_layers: Sequence[tuple[Any, Any]] | None = None,
    activation: str = "tanh",
    log_std: Any = None,
    version: int | None = None,
    validate: bool = True,
) -> ModelModule:
    """Package MLP weights (``(weight [out, in], bias [out])`` per layer) as an ``example-json`` module.

    Raises:
        ModelError: (with ``validate``) the weights do not fit the spaces or each other.
    """
    doc = {
        "format": FORMAT,
        "version": 1,
        "activation": activation,
        "policy": _to_lists(pi_layers),
        "value": None if value_layers is None else _to_lists(value_layers),
        "log_std": None if log_std is None else np.asarray(log_std, dtype=np.float64).reshape(-1).tolist(),
    }
    return ModelModule.create(backend="example-json", model_file="policy.json",
                              data=json.dumps(doc).encode("utf-8"), obs_shape=tuple(obs_shape),
                              action_space=action_space, value_output=value_layers is not None,
                              version=version, validate=validate)


def from_reference_case(case: ReferenceCase, *, validate: bool = False) -> ModelModule:
    """Export a :class:`relayrl.testing.ReferenceCase` (the conformance kit's reference MLPs)."""
    return export_json_mlp(case.obs_shape, case.action_space, case.pi_layers, value_layers=case.value_layers,
                           activation=case.activation, log_std=case.log_std, validate=validate)
