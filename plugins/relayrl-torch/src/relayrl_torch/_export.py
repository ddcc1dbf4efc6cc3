"""``export_policy``: package a torch policy network as a relayrl model module."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from relayrl import ConfigError, ModelError, ModelModule, numpy_mlp
from relayrl.spaces import Box, Discrete, MultiDiscrete, Space, from_gymnasium

__all__ = ["EXPORT_FORMATS", "ONNX_INPUT", "export_policy"]

#: Formats :func:`export_policy` writes.
EXPORT_FORMATS = ("torchscript", "export", "onnx", "numpy")
#: Name of the observation input of exported ONNX models.
ONNX_INPUT = "obs"

ExportFormat = Literal["torchscript", "export", "onnx", "numpy"]

# Warning filters and logger levels are process-global: one export at a time changes them.
_EXPORT_LOCK = threading.Lock()

# The activations the numpy MLP can run: torch module type -> (numpy name, required parameters).
_NUMPY_ACTIVATIONS: dict[type[nn.Module], str] = {
    nn.Tanh: "tanh",
    nn.ReLU: "relu",
    nn.LeakyReLU: "leaky_relu",
    nn.ELU: "elu",
    nn.Sigmoid: "sigmoid",
    nn.SiLU: "silu",
    nn.Identity: "identity",
}


# -- wrappers: one fixed signature per head/value combination (TorchScript needs static types) -------


class _Logits(nn.Module):
    def __init__(self, pi: nn.Module) -> None:
        super().__init__()
        self.pi = pi

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.pi(obs)  # type: ignore[no-any-return]


class _LogitsValue(nn.Module):
    def __init__(self, pi: nn.Module, vf: nn.Module) -> None:
        super().__init__()
        self.pi = pi
        self.vf = vf

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pi(obs), self.vf(obs).reshape(-1)


class _Gaussian(nn.Module):
    def __init__(self, pi: nn.Module, log_std: torch.Tensor) -> None:
        super().__init__()
        self.pi = pi
        # Not named "log_std": the ONNX exporter would clash with the output of that name.
        self.register_buffer("log_std_param", log_std)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pi(obs), self.log_std_param.clone()  # type: ignore[operator]


class _GaussianValue(nn.Module):
    def __init__(self, pi: nn.Module, vf: nn.Module, log_std: torch.Tensor) -> None:
        super().__init__()
        self.pi = pi
        self.vf = vf
        self.register_buffer("log_std_param", log_std)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.pi(obs), self.log_std_param.clone(), self.vf(obs).reshape(-1)  # type: ignore[operator]


# -- helpers ------------------------------------------------------------------------------------------


def _obs_shape(obs_space: Any) -> tuple[int, ...]:
    if isinstance(obs_space, int):
        return (obs_space,)
    if isinstance(obs_space, tuple | list):
        return tuple(int(v) for v in obs_space)
    space = from_gymnasium(obs_space)
    if not isinstance(space, Box):
        raise ConfigError(f"export_policy needs a Box observation space (or a shape), got {space!r}")
    return space.shape


def _prepare(module: nn.Module, name: str) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise ConfigError(f"{name} must be a torch.nn.Module, got {type(module).__name__}")
    # A CPU float32 copy in eval mode: the caller's module (maybe on a GPU, in training) is untouched.
    return copy.deepcopy(module).to(device="cpu", dtype=torch.float32).eval()


def _log_std_tensor(log_std: Any, module: nn.Module, action_dim: int) -> torch.Tensor:
    source = log_std if log_std is not None else getattr(module, "log_std", None)
    if source is None:
        raise ConfigError("a Box action space needs a state-independent log_std: pass log_std=... or give the "
                          "module a `log_std` parameter")
    t = source.detach() if isinstance(source, torch.Tensor) else torch.as_tensor(np.asarray(source))
    t = t.to(device="cpu", dtype=torch.float32).reshape(-1).clone()
    if t.numel() == 1 and action_dim != 1:
        t = t.expand(action_dim).clone()
    if t.shape != (action_dim,):
        raise ConfigError(f"log_std has {t.numel()} values but the action space has {action_dim} dimensions")
    return t


def _numpy_layers(module: nn.Module, what: str) -> tuple[list[tuple[Any, Any]], str | None]:
    """Linear layers and the one activation of a plain MLP (``nn.Sequential``)."""
    if isinstance(module, nn.Linear):
        mods: list[nn.Module] = [module]
    elif isinstance(module, nn.Sequential):
        mods = list(module)
    else:
        raise ModelError(f"format='numpy' needs {what} to be an nn.Sequential of Linear layers and activations, "
                         f"got {type(module).__name__}")
    if mods and isinstance(mods[0], nn.Flatten):
        mods = mods[1:]  # the numpy MLP flattens observations itself
    layers: list[tuple[Any, Any]] = []
    gaps: list[list[nn.Module]] = []
    current: list[nn.Module] = []
    for m in mods:
        if isinstance(m, nn.Linear):
            if layers:
                gaps.append(current)
            elif current:
                raise ModelError(f"format='numpy': {what} must start with a Linear layer, not {current[0]}")
            current = []
            w = m.weight.detach().cpu().float().numpy().copy()
            b = (m.bias.detach().cpu().float().numpy().copy() if m.bias is not None
                 else np.zeros(w.shape[0], dtype=np.float32))
            layers.append((w, b))
        elif type(m) in _NUMPY_ACTIVATIONS:
            current.append(m)
        else:
            raise ModelError(f"format='numpy' cannot represent the {type(m).__name__} layer in {what}; supported: "
                             f"Linear, {', '.join(t.__name__ for t in _NUMPY_ACTIVATIONS)}")
    if not layers:
        raise ModelError(f"format='numpy': {what} has no Linear layer")
    if current:
        raise ModelError(f"format='numpy': {what} must end with a Linear layer (the numpy MLP applies no output "
                         f"activation), but it ends with {current[-1]}")
    names: set[str] = set()
    for gap in gaps:
        real = [m for m in gap if not isinstance(m, nn.Identity)]
        if len(real) > 1:
            raise ModelError(f"format='numpy': {what} stacks several activations between two Linear layers")
        m = real[0] if real else nn.Identity()
        if isinstance(m, nn.LeakyReLU) and m.negative_slope != 0.01:
            raise ModelError(f"format='numpy' supports LeakyReLU(0.01) only, got slope {m.negative_slope}")
        if isinstance(m, nn.ELU) and m.alpha != 1.0:
            raise ModelError(f"format='numpy' supports ELU(alpha=1.0) only, got alpha {m.alpha}")
        names.add(_NUMPY_ACTIVATIONS[type(m)])
    if len(names) > 1:
        raise ModelError(f"format='numpy' needs one activation throughout, but {what} uses {sorted(names)}")
    return layers, (names.pop() if names else None)


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence torch's deprecation warnings and exporter log chatter during an export."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    with _EXPORT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _example(obs_shape: tuple[int, ...]) -> torch.Tensor:
    # torch.export specialises a dynamic dimension whose example size is 0 or 1: use a batch of 2.
    return torch.zeros((2, *obs_shape), dtype=torch.float32)


def _torchscript_bytes(wrapper: nn.Module, obs_shape: tuple[int, ...]) -> bytes:
    with _quiet_export():
        try:
            scripted = torch.jit.script(wrapper)
        except Exception:
            # Not scriptable (dynamic Python): trace it; the batch axis stays generic for MLP-like code.
            scripted = torch.jit.trace(wrapper, (_example(obs_shape),), check_trace=False)  # type: ignore[no-untyped-call]
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
    return buf.getvalue()


def _batch_dim() -> Any:
    return torch.export.Dim("batch", min=1)


def _export_bytes(wrapper: nn.Module, obs_shape: tuple[int, ...]) -> bytes:
    with _quiet_export():
        program = torch.export.export(wrapper, (_example(obs_shape),), dynamic_shapes=({0: _batch_dim()},))
        buf = io.BytesIO()
        torch.export.save(program, buf)
    return buf.getvalue()


def _onnx_bytes(wrapper: nn.Module, obs_shape: tuple[int, ...], outputs: Sequence[str]) -> bytes:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
    except ImportError as exc:
        from relayrl import BackendUnavailableError

        raise BackendUnavailableError("format='onnx' needs onnxscript and onnx: "
                                      "`pip install -c constraints.txt relayrl-torch[onnx]`") from exc
    with _quiet_export():
        program = torch.onnx.export(
            wrapper,
            (_example(obs_shape),),
            dynamo=True,
            external_data=False,
            input_names=[ONNX_INPUT],
            output_names=list(outputs),
            dynamic_shapes=({0: _batch_dim()},),
            verbose=False,
            report=False,
        )
        if program is None:  # pragma: no cover - the dynamo exporter always returns a program
            raise ModelError("torch.onnx.export returned no program")
        proto = program.model_proto
    return bytes(proto.SerializeToString())


def export_policy(
    module: nn.Module,
    *,
    obs_space: Any,
    action_space: Space | Any,
    format: ExportFormat = "torchscript",
    value_module: nn.Module | None = None,
    log_std: Any = None,
    version: int | None = None,
    validate: bool = True,
) -> ModelModule:
    """Package a torch policy network as a model module for the torch, onnx or numpy backend.

    ``module`` maps an observation batch ``[B, *obs_shape]`` (float32) to the head parameters:
    the logits ``[B, n]`` for ``Discrete(n)``, the concatenated logits ``[B, sum(nvec)]`` for
    ``MultiDiscrete``, the mean ``[B, action_dim]`` for a 1-D ``Box``. ``value_module`` (optional)
    maps the same batch to values ``[B, 1]`` or ``[B]``. A Gaussian policy's log standard
    deviation is state-independent: the ``log_std`` argument (tensor, array or float) if given,
    otherwise the module's ``log_std`` attribute (an ``nn.Parameter``), otherwise
    :class:`~relayrl.ConfigError`. Both modules are copied to the CPU in float32 and eval mode;
    the originals are not modified.

    Formats:

    * ``"torchscript"``: ``torch.jit.script`` (falling back to ``torch.jit.trace``), ``policy.pt``;
    * ``"export"``: a ``torch.export`` program with a dynamic batch axis, ``policy.pt2``;
    * ``"onnx"``: the dynamo ONNX exporter (needs ``relayrl-torch[onnx]``), one self-contained
      ``policy.onnx`` for the ``onnx`` backend with input ``obs`` (dynamic batch) and outputs
      ``logits`` or ``mean`` + ``log_std`` (``[action_dim]``, state-independent), then ``value`` (``[B]``);
    * ``"numpy"``: a plain MLP only (``nn.Sequential`` of ``Linear`` and one kind of activation
      between them: Tanh, ReLU, LeakyReLU(0.01), ELU(1.0), Sigmoid, SiLU or Identity; a leading
      ``Flatten`` is allowed), written through :func:`relayrl.numpy_mlp`.

    The torch formats record ``extra["torch_format"]``; the module's forward returns ``logits``,
    ``(logits, value)``, ``(mean, log_std)`` or ``(mean, log_std, value)``.

    Args:
        module: the policy network.
        obs_space: observation shape, dimension, or (relayrl or gymnasium) ``Box``.
        action_space: relayrl or gymnasium ``Discrete``, ``MultiDiscrete`` or 1-D ``Box``.
        format: one of :data:`EXPORT_FORMATS`.
        value_module: optional critic, exported next to the policy as the ``value`` output.
        log_std: Gaussian log standard deviation (see above); ignored for discrete spaces.
        version: version stamped on the module.
        validate: load the result with its backend and check it on dummy batches (needs the
            target backend installed; the ``onnx`` format needs ``relayrl-onnx``).

    Returns:
        The model module (not saved anywhere: call :meth:`~relayrl.ModelModule.save`).

    Raises:
        ConfigError: bad arguments (unknown format, missing log_std, wrong spaces).
        ModelError: the module cannot be exported in that format, or the result fails validation.
        BackendUnavailableError: the exporter (onnxscript) or, with ``validate``, the target
            backend is missing.

    .. versionadded:: 0.1
    """
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"unknown export format {format!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    space = from_gymnasium(action_space)
    obs_shape = _obs_shape(obs_space)
    if isinstance(space, Box) and len(space.shape) != 1:
        raise ConfigError(f"Box action spaces must be 1-D, got shape {space.shape}")
    if not isinstance(space, Discrete | MultiDiscrete | Box):
        raise ConfigError(f"unsupported action space {space!r}")
    gaussian = isinstance(space, Box)
    std = _log_std_tensor(log_std, module, space.flat_dim) if gaussian else None
    pi = _prepare(module, "module")
    vf = _prepare(value_module, "value_module") if value_module is not None else None
    extra: dict[str, Any] = {"exported_by": "relayrl_torch.export_policy", "torch_version": torch.__version__}

    if format == "numpy":
        pi_layers, act_pi = _numpy_layers(pi, "module")
        vf_layers, act_vf = _numpy_layers(vf, "value_module") if vf is not None else (None, None)
        acts = {a for a in (act_pi, act_vf) if a is not None}
        if len(acts) > 1:
            raise ModelError(f"format='numpy' needs the same activation in the policy and value networks, got "
                             f"{sorted(acts)}")
        return numpy_mlp(obs_shape, space, pi_layers, value_layers=vf_layers, activation=acts.pop() if acts else "tanh",
                         log_std=None if std is None else std.numpy(), version=version, extra=extra,
                         validate=validate)

    if std is not None:
        wrapper: nn.Module = _GaussianValue(pi, vf, std) if vf is not None else _Gaussian(pi, std)
        outputs = ["mean", "log_std"]
    else:
        wrapper = _LogitsValue(pi, vf) if vf is not None else _Logits(pi)
        outputs = ["logits"]
    if vf is not None:
        outputs.append("value")
    wrapper.eval()
    try:
        if format == "torchscript":
            data, backend, model_file = _torchscript_bytes(wrapper, obs_shape), "torch", "policy.pt"
            extra["torch_format"] = "torchscript"
        elif format == "export":
            data, backend, model_file = _export_bytes(wrapper, obs_shape), "torch", "policy.pt2"
            extra["torch_format"] = "export"
        else:
            data, backend, model_file = _onnx_bytes(wrapper, obs_shape, outputs), "onnx", "policy.onnx"
            extra["onnx_input"] = ONNX_INPUT
            extra["onnx_outputs"] = outputs
    except (ConfigError, ModelError, ImportError):
        raise
    except Exception as exc:
        raise ModelError(f"cannot export the module as {format!r}: {type(exc).__name__}: {exc}") from exc
    return ModelModule.create(backend=backend, model_file=model_file, data=data, obs_shape=obs_shape,
                              action_space=space, value_output=vf is not None, version=version, extra=extra,
                              validate=validate)
