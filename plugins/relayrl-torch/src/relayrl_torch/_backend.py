"""The ``torch`` inference backend: TorchScript modules, torch.export programs, RelayRL 0.4 policies.

How the model file is read:

* its format is ``metadata.extra["torch_format"]`` (``"torchscript"`` or ``"export"``) when relayrl
  wrote it; otherwise it is detected: a ``.pt2`` file name or a zip holding ``archive_format`` /
  ``models/`` is a torch.export program, a zip holding ``code/`` is a TorchScript archive;
* the method that computes the head parameters is picked in this order (first match wins):

  1. a ``logits(obs)`` method;
  2. a RelayRL 0.4 policy network saved by itself (it has ``_distribution``; its ``forward``
     returns ``(probs, logits, logp)``): ``_distribution(obs, mask)``;
  3. ``forward(obs)`` (or ``forward(obs, mask)``: it then gets an all-ones float mask);
  4. RelayRL 0.4 policies (``step(obs, mask)`` scripts such as ``PolicyWithoutBaseline``):
     ``policy._distribution(obs, mask)``, whose second result is the logits (an all-ones mask
     is passed, so they are unmasked), then a ``pi_network`` submodule (of the module or of its
     ``policy``);

  ``step`` itself samples inside the model and is never used: if none of the above exists the
  model is rejected with :class:`~relayrl.ModelError` (relayrl never makes logits up);
* what it returns is read as: a tensor (the logits, or the mean for a Gaussian head, which then
  needs ``log_std``); a dict with the keys ``logits`` / ``mean``, ``log_std``, ``value``; or a
  tuple/list in the order ``(logits[, value])`` or ``(mean, log_std[, value])``. A value of shape
  ``[B, 1]`` is flattened to ``[B]``; every output is returned as float32 numpy.
"""

from __future__ import annotations

import io
import threading
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from relayrl import BackendUnavailableError, ModelError, ModelModule
from relayrl.abc import HeadOutputs, InferenceBackend, Policy

from ._threads import ensure_configured

__all__ = ["FORMATS", "TorchBackend", "TorchPolicy", "detect_format"]

#: Values of ``metadata.extra["torch_format"]``.
FORMATS = ("torchscript", "export")

Array = npt.NDArray[Any]
Call = Callable[[torch.Tensor], Any]

# warnings.catch_warnings is process-global state: serialise our loads so they cannot interleave.
_LOAD_LOCK = threading.Lock()


def detect_format(module: ModelModule) -> str:
    """The torch file format of ``module``: ``"torchscript"`` or ``"export"``.

    Raises:
        ModelError: the declared format is unknown, or the file is neither kind of archive.
    """
    meta = module.metadata
    declared = meta.extra.get("torch_format")
    if declared is not None:
        if declared not in FORMATS:
            raise ModelError(f"unknown torch_format {declared!r} in the model metadata; expected one of {FORMATS}")
        return str(declared)
    if meta.model_file.lower().endswith(".pt2"):
        return "export"
    try:
        with zipfile.ZipFile(io.BytesIO(module.data)) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, ValueError) as exc:
        raise ModelError(f"{meta.model_file!r} is neither a TorchScript archive nor a torch.export program "
                         f"(not a zip archive)") from exc
    inner = [n.split("/", 1)[1] if "/" in n else n for n in names]
    if any(n.startswith("code/") for n in inner):
        return "torchscript"
    if any(n == "archive_format" or n.startswith("models/") for n in inner):
        return "export"
    raise ModelError(f"{meta.model_file!r} is a zip archive but neither a TorchScript module (no code/) nor a "
                     f"torch.export program (no archive_format)")


def _check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise BackendUnavailableError(f"the torch backend cannot use device {device!r}: {exc}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BackendUnavailableError(f"device {device!r} requested but torch.cuda.is_available() is false "
                                          f"(no CUDA device, or a CPU-only torch build: {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BackendUnavailableError(f"device {device!r} does not exist ({torch.cuda.device_count()} CUDA "
                                          f"device(s) here)")
    elif dev.type != "cpu":
        raise BackendUnavailableError(f"the torch backend runs on 'cpu' and 'cuda[:N]', not {device!r}")
    return dev


def _script_methods(module: Any) -> set[str]:
    c = getattr(module, "_c", None)
    names = getattr(c, "_method_names", None)
    return set(names()) if callable(names) else set()


def _required_args(method: Any) -> int:
    schema = getattr(method, "schema", None)
    if schema is None:
        return 1
    return sum(1 for a in list(schema.arguments)[1:] if not a.has_default_value())


def _ones_mask(x: torch.Tensor, n: int) -> torch.Tensor:
    return torch.ones((x.shape[0], n), dtype=torch.float32, device=x.device)


def _with_mask(fn: Callable[..., Any], n_args: int, out_dim: int, what: str) -> Call:
    if n_args == 1:
        return fn
    if n_args == 2:
        return lambda x: fn(x, _ones_mask(x, out_dim))
    raise ModelError(f"{what} takes {n_args} required arguments; relayrl can call it with (obs) or (obs, mask)")


def _distribution_logits(dist: Callable[..., Any], out_dim: int) -> Call:
    def logits(x: torch.Tensor) -> Any:
        # (probs, logits); the all-ones mask leaves the logits unmasked (relayrl masks them itself).
        return dist(x, _ones_mask(x, out_dim))[1]

    return logits


def _torchscript_entry(sm: Any, module: ModelModule) -> tuple[Call, str]:
    meta = module.metadata
    out_dim = meta.output.shape[0]
    methods = _script_methods(sm)
    if "logits" in methods:
        return _with_mask(sm.logits, _required_args(sm.logits), out_dim, "logits()"), "logits"
    policy = getattr(sm, "policy", None) if "policy" in dict(sm.named_children()) else None
    # A RelayRL 0.4 policy network saved by itself has _distribution() next to a forward() that
    # returns (probs, logits, logp): read its _distribution() rather than misread that tuple.
    for owner, prefix in ((sm, ""), (None if "forward" in methods else policy, "policy.")):
        if owner is None or "_distribution" not in _script_methods(owner):
            continue
        if meta.policy_head != "categorical":
            raise ModelError(f"RelayRL 0.4 policies are served with a categorical head, but the metadata "
                             f"declares {meta.policy_head!r}")
        return _distribution_logits(owner._distribution, out_dim), prefix + "_distribution"
    if "forward" in methods:
        return _with_mask(sm.forward, _required_args(sm.forward), out_dim, "forward()"), "forward"
    for owner, prefix in ((sm, ""), (policy, "policy.")):
        if owner is None:
            continue
        children = dict(owner.named_children())
        if "pi_network" in children and "forward" in _script_methods(children["pi_network"]):
            return children["pi_network"], prefix + "pi_network"
    which = ", ".join(sorted(methods)) or "none"
    raise ModelError(f"cannot obtain logits from the TorchScript module {meta.model_file!r}: it has no logits() or "
                     f"forward() method and no RelayRL 0.4 policy._distribution() or pi_network (its methods: "
                     f"{which}); step() samples inside the model and is not used")


def _export_entry(program: Any, module: ModelModule, device: torch.device) -> tuple[Call, str]:
    gm = program.module()
    if device.type != "cpu":
        gm = gm.to(device)
    n_inputs = len(program.graph_signature.user_inputs)
    return _with_mask(gm, n_inputs, module.metadata.output.shape[0], "the exported program"), "export"


def _host(t: Any, name: str) -> Array:
    if not isinstance(t, torch.Tensor):
        raise ModelError(f"model output {name!r} is a {type(t).__name__}, not a tensor")
    if t.device.type != "cpu":
        t = t.cpu()
    if t.dtype != torch.float32:
        t = t.float()
    arr: Array = t.numpy()
    return arr


class TorchPolicy(Policy):
    """A loaded torch model. ``entry`` names the method that computes the head parameters."""

    releases_gil = True

    def __init__(self, fn: Call, *, module: ModelModule, device: torch.device, entry: str, fmt: str) -> None:
        meta = module.metadata
        self._fn = fn
        self._device = device
        self._cpu = device.type == "cpu"
        self._dtype = np.dtype(meta.input.dtype)
        self._gaussian = meta.policy_head == "gaussian"
        self._value = meta.value_output
        self.entry = entry
        self.format = fmt

    def forward(self, obs: Array, mask: npt.NDArray[np.bool_] | None = None) -> HeadOutputs:
        if obs.dtype != self._dtype:
            obs = obs.astype(self._dtype)
        elif not (obs.flags.writeable and obs.flags.c_contiguous):
            # torch.from_numpy warns on read-only arrays and rejects negative strides
            obs = np.array(obs, order="C")
        x = torch.from_numpy(obs)
        if not self._cpu:
            x = x.to(self._device)
        with torch.inference_mode():
            return self._outputs(self._fn(x))

    def _outputs(self, raw: Any) -> HeadOutputs:
        first = "mean" if self._gaussian else "logits"
        params: dict[str, Any] = {}
        if isinstance(raw, torch.Tensor):
            params[first] = raw
        elif isinstance(raw, Mapping):
            params = {k: raw[k] for k in ("logits", "mean", "log_std", "value") if k in raw}
        elif isinstance(raw, Sequence) and not isinstance(raw, str | bytes):
            names = [first, "log_std", "value"] if self._gaussian else [first, "value"]
            params = dict(zip(names, raw))
        else:
            raise ModelError(f"the model returned a {type(raw).__name__}; expected a tensor, a tuple or a dict")
        out = HeadOutputs()
        if self._gaussian:
            out.mean = _host(params.get("mean"), "mean")
            if "log_std" not in params:
                raise ModelError("a Gaussian torch model must return (mean, log_std) or a dict with 'log_std'")
            out.log_std = _host(params["log_std"], "log_std")
        else:
            out.logits = _host(params.get("logits"), "logits")
        if self._value:
            if "value" not in params:
                raise ModelError("the metadata declares a value output but the model returns none")
            v = _host(params["value"], "value")
            out.value = v.reshape(v.shape[0]) if v.ndim == 2 and v.shape[1] == 1 else v
        return out


class TorchBackend(InferenceBackend):
    """Runs TorchScript modules, torch.export programs and RelayRL 0.4 policies with torch.

    Inference runs under ``torch.inference_mode``; observations enter through
    ``torch.from_numpy`` and head parameters come back as float32 numpy arrays. The CPU thread
    count is :func:`relayrl_torch.set_num_threads` or ``$RELAYRL_TORCH_THREADS`` (default 1).

    .. versionadded:: 0.1
    """

    name = "torch"
    distribution = "relayrl-torch"

    def load(self, module: ModelModule, device: str = "cpu") -> TorchPolicy:
        dev = _check_device(device)
        ensure_configured()
        fmt = detect_format(module)
        with _LOAD_LOCK, warnings.catch_warnings():
            # torch.jit.load is deprecated in torch 2.13 (DeprecationWarning); still what 0.4 models need.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            try:
                if fmt == "torchscript":
                    sm = torch.jit.load(io.BytesIO(module.data), map_location=dev)  # type: ignore[no-untyped-call]
                    sm.eval()
                    fn, entry = _torchscript_entry(sm, module)
                else:
                    program = torch.export.load(io.BytesIO(module.data))
                    fn, entry = _export_entry(program, module, dev)
            except ModelError:
                raise
            except Exception as exc:
                raise ModelError(f"torch cannot load {module.metadata.model_file!r} as a {fmt} model: "
                                 f"{type(exc).__name__}: {exc}") from exc
        return TorchPolicy(fn, module=module, device=dev, entry=entry, fmt=fmt)

    def devices(self) -> list[str]:
        return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
